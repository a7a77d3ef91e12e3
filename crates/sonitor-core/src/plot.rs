//! Pictures of scores, drawn with `plotters`: a score timeline with its threshold and shaded intervals (the
//! demo's summary), and ROC curves with the operating point of a threshold (`sonitor-train eval --plot`).
//!
//! The format follows the file's extension, `.png` or `.svg`. Either way plotters lays out its text with a
//! TrueType font found on the system: `$SONITOR_FONT`, else DejaVu Sans or Liberation Sans from the usual Debian
//! paths (`fonts-dejavu-core` provides one); without one, drawing fails with a message that says so.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{0}: unsupported picture format (use .png or .svg)")]
    Format(PathBuf),
    #[error("{0}")]
    Font(String),
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("nothing to plot: {0}")]
    Empty(&'static str),
}

/// Checks, before any work is done, that a picture can be written to `path`: a `.png` or `.svg` name, a directory
/// to put it in, a font for its text.
pub fn check_target(path: &Path) -> Result<(), PlotError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if ext != "png" && ext != "svg" {
        return Err(PlotError::Format(path.to_path_buf()));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(PlotError::Draw {
            path: path.to_path_buf(),
            message: format!("{} is not a directory", parent.display()),
        });
    }
    ensure_font()
}

/// A shaded interval of a timeline.
#[derive(Debug, Clone)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
    /// RGB.
    pub color: (u8, u8, u8),
}

/// One ROC curve: `(false-positive rate, true-positive rate)` points from (0,0) to (1,1).
#[derive(Debug, Clone)]
pub struct RocCurve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// The operating point of the threshold on this curve, if any.
    pub operating_point: Option<(f64, f64)>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
];

/// Registers a system font as plotters' "sans-serif" once.
fn ensure_font() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SONITOR_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{} is not a usable TrueType font", p.display()));
            }
        }
        Err(
            "a picture needs a TrueType font for its text and none was found (install fonts-dejavu-core, or set \
             SONITOR_FONT=/path/to/font.ttf)"
                .to_string(),
        )
    })
    .clone()
    .map_err(PlotError::Font)
}

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Runs `$body` with `$root` bound to a drawing area of the format of `$path`'s extension, then writes it.
macro_rules! with_backend {
    ($path:expr, $size:expr, |$root:ident| $body:block) => {{
        let path: &Path = $path;
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let result: Result<(), Box<dyn Error>> = match ext.as_str() {
            "svg" => {
                ensure_font()?;
                let $root = SVGBackend::new(path, $size).into_drawing_area();
                (|| -> Result<(), Box<dyn Error>> {
                    $body;
                    $root.present()?;
                    Ok(())
                })()
            }
            "png" => {
                ensure_font()?;
                let $root = BitMapBackend::new(path, $size).into_drawing_area();
                (|| -> Result<(), Box<dyn Error>> {
                    $body;
                    $root.present()?;
                    Ok(())
                })()
            }
            _ => return Err(PlotError::Format(path.to_path_buf())),
        };
        result.map_err(|e| PlotError::Draw {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }};
}

/// A score timeline: `points` are `(time s, score)`; a dashed line at `threshold`; `bands` shaded behind.
pub fn score_timeline(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    threshold: f64,
    bands: &[Band],
) -> Result<(), PlotError> {
    if points.is_empty() {
        return Err(PlotError::Empty("no scores"));
    }
    let t_max = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-3);
    let y_max = points
        .iter()
        .map(|p| p.1)
        .chain(std::iter::once(threshold))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        * 1.15;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    with_backend!(path, (1000, 420), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("anomaly score")
            .draw()?;
        for b in bands {
            let c = rgb(b.color);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(b.from.max(0.0), 0.0), (b.to.min(t_max), y_max)],
                    c.mix(0.18).filled(),
                )))?
                .label(b.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.mix(0.4).filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))?
            .label("score per window")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, threshold), (t_max, threshold)],
                8,
                5,
                RED.stroke_width(2),
            ))?
            .label(format!("threshold {threshold:.3}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    })
}

/// ROC curves, one per entry, with the diagonal and each curve's operating point.
pub fn roc(path: &Path, title: &str, curves: &[RocCurve]) -> Result<(), PlotError> {
    if curves.is_empty() {
        return Err(PlotError::Empty("no ROC curves"));
    }
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    with_backend!(path, (640, 600), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0f64, 0.0..1.0f64)?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate")
            .y_desc("true-positive rate")
            .draw()?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            6,
            4,
            BLACK.mix(0.4).stroke_width(1),
        ))?;
        for (i, c) in curves.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(c.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
            if let Some(p) = c.operating_point {
                chart.draw_series(std::iter::once(Circle::new(p, 5, color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    })
}

/// ROC points of scores (higher = more anomalous) with labels (`true` = anomalous), from (0,0) to (1,1); tied
/// scores form one step.
pub fn roc_points(scores: &[f64], anomalous: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..scores.len().min(anomalous.len())).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = idx.iter().filter(|&&i| anomalous[i]).count().max(1) as f64;
    let neg = idx.iter().filter(|&&i| !anomalous[i]).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![(0.0, 0.0)];
    for (k, &i) in idx.iter().enumerate() {
        if anomalous[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = idx.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            out.push((fp / neg, tp / pos));
        }
    }
    out
}

/// `(false-positive rate, true-positive rate)` of flagging scores above `threshold`.
pub fn operating_point(scores: &[f64], anomalous: &[bool], threshold: f64) -> (f64, f64) {
    let (mut tp, mut fp, mut pos, mut neg) = (0.0, 0.0, 0.0f64, 0.0f64);
    for (&s, &a) in scores.iter().zip(anomalous) {
        if a {
            pos += 1.0;
            tp += f64::from(u8::from(s > threshold));
        } else {
            neg += 1.0;
            fp += f64::from(u8::from(s > threshold));
        }
    }
    (fp / neg.max(1.0), tp / pos.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_target_is_refused_before_drawing() {
        let d = tempfile::tempdir().unwrap();
        let e = check_target(&d.path().join("roc.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported picture format"), "{e}");
        let e = check_target(&d.path().join("missing/roc.svg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing is not a directory"), "{e}");
    }

    #[test]
    fn roc_points_of_a_perfect_and_a_tied_scorer() {
        let p = roc_points(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]);
        assert_eq!(
            p,
            vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
        );
        let p = roc_points(&[0.5, 0.5], &[true, false]);
        assert_eq!(p, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(
            operating_point(&[0.9, 0.8, 0.2, 0.1], &[true, false, true, false], 0.5),
            (0.5, 0.5)
        );
    }

    #[test]
    fn svg_timeline_and_roc_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.svg");
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, (i as f64 / 10.0).sin().abs()))
            .collect();
        score_timeline(
            &t,
            "demo",
            &pts,
            0.5,
            &[Band {
                from: 10.0,
                to: 20.0,
                label: "fault".into(),
                color: (255, 160, 0),
            }],
        )
        .unwrap();
        let text = std::fs::read_to_string(&t).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("threshold 0.500"),
            "{}",
            &text[..200.min(text.len())]
        );
        let r = dir.path().join("r.svg");
        roc(
            &r,
            "roc",
            &[RocCurve {
                label: "fan".into(),
                points: roc_points(&[0.9, 0.1, 0.5], &[true, false, true]),
                operating_point: Some((0.0, 1.0)),
            }],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&r).unwrap().contains("fan"));
    }

    #[test]
    fn png_is_written_when_a_font_exists_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e =
            score_timeline(&dir.path().join("t.jpg"), "x", &[(0.0, 1.0)], 0.5, &[]).unwrap_err();
        assert!(e.to_string().contains("unsupported picture format"), "{e}");
        let png = dir.path().join("t.png");
        match score_timeline(&png, "x", &[(0.0, 0.2), (1.0, 0.7)], 0.5, &[]) {
            Ok(()) => {
                let b = std::fs::read(&png).unwrap();
                assert_eq!(&b[1..4], b"PNG");
            }
            // No font on this machine: the error must say how to get one.
            Err(PlotError::Font(m)) => assert!(m.contains("fonts-dejavu-core"), "{m}"),
            Err(e) => panic!("{e}"),
        }
    }
}
