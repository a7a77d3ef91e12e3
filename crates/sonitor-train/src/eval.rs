//! `sonitor-train eval`: scores the test clips of a data set with a model bundle through tract on the ONNX
//! graph (the daemon's inference path, not burn's), writes the DCASE submission files and prints the official
//! metrics.
//!
//! Clip pooling: a clip is cut into the bundle's analysis windows (`window_samples` every
//! `window_hop_samples`); each window's score is the minimum cosine distance of its embedding to the section's
//! centroids, combined with the section's level baseline when the bundle has one (`sonitor_core::score::
//! window_score`, the daemon's function), and the clip's score is the **mean** of its window scores (the
//! manifest's `clip_pooling`).
//!
//! Below the official table, `eval` prints what each section's calibrated threshold does on the test clips, two
//! ways: the clip score above it, and the daemon's default detector (`sonitor_core::detect`, raise on 3 of the last
//! 5 windows above it) replayed over the clip's window scores, which is what an unconfigured machine would do.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sonitor_core::bundle::{Bundle, SectionModel};
use sonitor_core::dcase::{self, Clip, Condition, Domain, Split};
use sonitor_core::detect::{self, Detector, DetectorParams, Transition};
use sonitor_core::features::FeatureExtractor;
use sonitor_core::plot::{self, RocCurve};
use sonitor_core::{metrics, parallel, score};

use crate::infer::window_views;
use sonitor_core::embed::EmbeddingGraph;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model bundle directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Data set root (DCASE layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Print the metrics as one JSON object (the same as `metrics --json`). Test clips without labels give no
    /// metrics: the object then has `official_score`, `sections` and `types` null, `no_metrics` saying why, and
    /// `scores_dir` and `score_files` naming the submission files written. A value the labelled clips cannot give
    /// (no target-domain normal test clips: no AUC (target), so no official score) is null, and its section's
    /// `missing` says why and how to get it.
    #[arg(long)]
    pub json: bool,
    /// Directory for the submission files (default: BUNDLE/scores).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the ROC curve of every section with the operating point of its calibrated threshold (.png or .svg).
    /// Needs labelled test clips: refused before scoring when no section has them.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The clip scores of one section.
#[derive(Debug, Clone)]
pub struct SectionScores {
    /// `"<type>/section_SS"`.
    pub key: String,
    /// The submission file written.
    pub file: PathBuf,
    /// The section's calibrated threshold (from the bundle).
    pub threshold: f64,
    pub scores: Vec<f64>,
    /// Per clip: its window scores, in stream order (the `i`-th window ends at `first_end_ms + i·hop_ms`).
    pub windows: Vec<Vec<f64>>,
    pub first_end_ms: u64,
    pub hop_ms: u64,
    /// Per clip: anomalous or not, when the file name says.
    pub anomalous: Vec<Option<bool>>,
    /// Per clip: its domain, when the file name says.
    pub domain: Vec<Option<Domain>>,
}

/// Loads the bundle's graph with tract, as the daemon does ([`EmbeddingGraph::of_bundle`]: the bytes whose
/// checksum the bundle verified, inputs named and shaped by the manifest, its output the manifest's).
pub fn embedder_of(bundle: &Bundle) -> anyhow::Result<EmbeddingGraph> {
    EmbeddingGraph::of_bundle(bundle)
        .with_context(|| format!("loading {}", bundle.onnx_path.display()))
}

/// Window scores of one clip's audio in a section, as the daemon scores them ([`score::window_score`]: the
/// cosine distance to the centroids, with the section's level baseline when the bundle has one).
pub fn window_scores(
    embedder: &EmbeddingGraph,
    fx: &mut FeatureExtractor,
    audio: &[f32],
    section: &SectionModel,
) -> anyhow::Result<Vec<f64>> {
    let mut scratch = Vec::new();
    Ok(window_views(embedder, fx, audio)?
        .iter()
        .map(|w| score::window_score(section, &w.embedding, &w.band_means, &mut scratch))
        .collect())
}

/// A clip's anomaly score: the mean of its window scores (0 if it has none; `data::windows` always gives one).
pub fn clip_score(windows: &[f64]) -> f64 {
    windows.iter().sum::<f64>() / windows.len().max(1) as f64
}

/// The bundle's model of a section; the error names the sections it has.
pub fn section_model<'a>(
    bundle: &'a Bundle,
    machine_type: &str,
    section: u16,
) -> anyhow::Result<&'a SectionModel> {
    bundle.section(machine_type, section).with_context(|| {
        format!(
            "{}: the bundle has no model for {machine_type} section {section:02} (it has: {})",
            bundle.dir.display(),
            bundle
                .manifest
                .sections
                .iter()
                .map(|s| s.key())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The window scores of each clip in a section ([`window_scores`]), on all cores (each worker reads, embeds and
/// scores its clips in one pass). Errors name the clip.
pub fn clip_window_scores(
    embedder: &EmbeddingGraph,
    params: &sonitor_core::features::FeatureParams,
    clips: &[&Clip],
    section: &SectionModel,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let short = std::sync::atomic::AtomicUsize::new(0);
    let scores = parallel::map_with_state(
        clips,
        || FeatureExtractor::new(params.clone()).map_err(anyhow::Error::from),
        |fx, c| {
            let a = crate::data::load_clip(c, params)?;
            if a.len() < params.window_samples {
                short.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            window_scores(embedder, fx, &a, section)
                .with_context(|| format!("scoring {}", c.path.display()))
        },
    )?;
    // As `fit` says of its training clips: such a clip is scored on itself repeated to fill one window.
    let short = short.into_inner();
    if short > 0 {
        eprintln!(
            "warning: {} section {:02}: {short} of {} test clips are shorter than the {} s analysis window: each is \
             scored on itself repeated to fill it",
            section.machine_type,
            section.section,
            clips.len(),
            params.window_seconds()
        );
    }
    Ok(scores)
}

/// Scores every test clip and writes the submission files into `out`. Returns the scores of each section.
pub fn score_dataset(
    bundle: &Bundle,
    data: &dcase::Dataset,
    out: &Path,
) -> anyhow::Result<Vec<SectionScores>> {
    let embedder = embedder_of(bundle)?;
    let params = bundle.manifest.features.clone();
    // Every section with test clips must have its model, and there must be one, before `out` is made: a refusal
    // leaves no empty folder behind.
    let mut todo = Vec::new();
    for (machine_type, section) in data.sections() {
        if data
            .clips_of(&machine_type, section, Split::Test)
            .next()
            .is_some()
        {
            let sm = section_model(bundle, &machine_type, section)?;
            todo.push((machine_type, section, sm));
        }
    }
    anyhow::ensure!(
        !todo.is_empty(),
        "{}: no test clips to score",
        data.root.display()
    );
    crate::train::make_out_dir(out, "--out", "nothing was scored")?;
    let mut written = Vec::new();
    for (machine_type, section, sm) in todo {
        let test: Vec<&Clip> = data.clips_of(&machine_type, section, Split::Test).collect();
        let windows = clip_window_scores(&embedder, &params, &test, sm)?;
        let scores: Vec<f64> = windows.iter().map(|w| clip_score(w)).collect();
        let rows: Vec<(String, f64)> = test
            .iter()
            .zip(&scores)
            .map(|(c, &s)| (c.file_name().to_string(), s))
            .collect();
        let file = dcase::write_submission(out, &machine_type, section, &rows)?;
        // The decisions at the section's calibrated threshold, as a clip is judged against it.
        let decisions: Vec<(String, bool)> = rows
            .iter()
            .map(|(name, s)| (name.clone(), *s > sm.threshold.value))
            .collect();
        dcase::write_decisions(out, &machine_type, section, &decisions)?;
        written.push(SectionScores {
            key: sm.key(),
            file,
            threshold: sm.threshold.value,
            scores,
            windows,
            first_end_ms: params.window_samples as u64 * 1000 / u64::from(params.sample_rate),
            hop_ms: params.window_hop_samples as u64 * 1000 / u64::from(params.sample_rate),
            anomalous: test
                .iter()
                .map(|c| c.name.condition.map(|k| k == Condition::Anomaly))
                .collect(),
            domain: test.iter().map(|c| c.name.domain).collect(),
        });
    }
    Ok(written)
}

/// Scores and, when the test clips carry labels, evaluates. Returns the report if there is one.
pub fn evaluate(
    bundle_dir: &Path,
    data_dir: &Path,
    out: &Path,
) -> anyhow::Result<Option<metrics::Report>> {
    Ok(evaluate_with_scores(bundle_dir, data_dir, out)?.0)
}

/// [`evaluate`], also returning every section's scores.
pub fn evaluate_with_scores(
    bundle_dir: &Path,
    data_dir: &Path,
    out: &Path,
) -> anyhow::Result<(Option<metrics::Report>, Vec<SectionScores>)> {
    let bundle = Bundle::load(bundle_dir)?;
    evaluate_scanned(&bundle, &dcase::scan(data_dir)?, out)
}

/// [`evaluate_with_scores`] of a loaded bundle and a scanned data set.
fn evaluate_scanned(
    bundle: &Bundle,
    data: &dcase::Dataset,
    out: &Path,
) -> anyhow::Result<(Option<metrics::Report>, Vec<SectionScores>)> {
    let sections = score_dataset(bundle, data, out)?;
    if unlabelled_test_clips(data).0 > 0 {
        return Ok((None, sections));
    }
    let report = metrics::evaluate_submission(data, out).with_context(|| {
        format!(
            "evaluating {} against {}",
            out.display(),
            data.root.display()
        )
    })?;
    Ok((Some(report), sections))
}

/// Draws every labelled section's ROC curve of clip scores, with the operating point of its threshold.
pub fn plot_roc(path: &Path, title: &str, sections: &[SectionScores]) -> anyhow::Result<()> {
    let curves: Vec<RocCurve> = sections
        .iter()
        .filter(|s| s.anomalous.iter().all(Option::is_some))
        .map(|s| {
            let labels: Vec<bool> = s.anomalous.iter().map(|a| a.unwrap_or(false)).collect();
            RocCurve {
                label: s.key.clone(),
                points: plot::roc_points(&s.scores, &labels),
                operating_point: Some(plot::operating_point(&s.scores, &labels, s.threshold)),
            }
        })
        .collect();
    anyhow::ensure!(
        !curves.is_empty(),
        "--plot: no section has labelled test clips"
    );
    plot::roc(path, title, &curves).with_context(|| format!("--plot {}", path.display()))
}

impl SectionScores {
    /// Per clip: whether the daemon's default detector ([`DetectorParams::defaults_with_threshold`] at the
    /// section's calibrated threshold), fed the clip's window scores from a fresh start, raises an alarm.
    pub fn daemon_alarms(&self) -> Vec<bool> {
        let params = DetectorParams::defaults_with_threshold(self.threshold);
        self.windows
            .iter()
            .map(|w| {
                let mut d = Detector::new(params.clone());
                w.iter().enumerate().any(|(i, &v)| {
                    let t = self.first_end_ms + i as u64 * self.hop_ms;
                    matches!(d.update(t, v), Some(Transition::Raised { .. }))
                })
            })
            .collect()
    }
}

/// What one threshold per machine does on the test clips, per labelled section, two ways: a clip alarms when its
/// score is above the section's calibrated threshold (as [`plot_roc`]'s operating points), or when the daemon's
/// default detector raises an alarm over its windows ([`SectionScores::daemon_alarms`]). For each: the share of
/// normal clips of each domain that alarm (false alarms) and the share of all anomalous clips that do (detected);
/// `–` where a domain has no normal test clips. Sections whose clips are too short for the detector to raise at
/// all get no detector row, and a note says so. Markdown.
pub fn operating_table(sections: &[SectionScores]) -> String {
    let mut t = String::from(
        "| section | threshold | a clip alarms when | false alarms, source | false alarms, target | anomalies detected |\n|---|---|---|---|---|---|\n",
    );
    let daemon = format!(
        "the daemon raises ({} of {} windows)",
        detect::DEFAULT_RAISE_K,
        detect::DEFAULT_RAISE_N
    );
    let mut too_short = Vec::new();
    for s in sections {
        let Some(anomalous) = s.anomalous.iter().copied().collect::<Option<Vec<bool>>>() else {
            continue;
        };
        let above: Vec<bool> = s.scores.iter().map(|&v| v > s.threshold).collect();
        let mut ways = vec![("its score is above", above)];
        // A clip shorter than `raise_k` windows can never raise an alarm: a row of zeros would mislead.
        let longest = s.windows.iter().map(Vec::len).max().unwrap_or(0);
        if longest >= detect::DEFAULT_RAISE_K {
            ways.push((daemon.as_str(), s.daemon_alarms()));
        } else {
            too_short.push(format!("{} {longest}", s.key));
        }
        for (how, alarms) in ways {
            let rate = |keep: &dyn Fn(bool, Option<Domain>) -> bool| {
                let picked: Vec<bool> = alarms
                    .iter()
                    .zip(&anomalous)
                    .zip(&s.domain)
                    .filter(|((_, &a), &d)| keep(a, d))
                    .map(|((&x, _), _)| x)
                    .collect();
                if picked.is_empty() {
                    "–".to_string()
                } else {
                    let n = picked.iter().filter(|&&x| x).count();
                    format!("{:.2}", n as f64 / picked.len() as f64)
                }
            };
            t += &format!(
                "| {} | {:.4} | {how} | {} | {} | {} |\n",
                s.key,
                s.threshold,
                rate(&|a, d| !a && d == Some(Domain::Source)),
                rate(&|a, d| !a && d == Some(Domain::Target)),
                rate(&|a, _| a),
            );
        }
    }
    if !too_short.is_empty() {
        t += &format!(
            "\nNo row for the daemon's detector in sections whose test clips all hold fewer than the {} windows it \
             needs above the threshold to raise an alarm (section and its longest clip's windows: {}).\n",
            detect::DEFAULT_RAISE_K,
            too_short.join(", ")
        );
    }
    t
}

/// Where `eval` writes its submission files by default, inside the bundle directory.
pub const DEFAULT_SCORES_DIR: &str = "scores";

pub fn run(a: &EvalArgs) -> anyhow::Result<()> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.join(DEFAULT_SCORES_DIR));
    // Where the scores go, and a picture that cannot be drawn, are refused now, not after every clip is scored.
    crate::train::check_is_dir(&out, "--out")?;
    if let Some(p) = &a.plot {
        sonitor_core::plot::check_target(p).with_context(|| format!("--plot {}", p.display()))?;
    }
    let bundle = Bundle::load(&a.model)?;
    let data = dcase::scan(&a.data)?;
    if a.plot.is_some() {
        check_plottable(&data)?;
    }
    let started = std::time::Instant::now();
    let (report, sections) = evaluate_scanned(&bundle, &data, &out)?;
    eprintln!(
        "scored in {:.1} s; submission files in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if let Some(p) = &a.plot {
        let title = match &report {
            Some(r) => format!(
                "ROC of clip scores, official score {} (dots: calibrated thresholds)",
                metrics::cell(r.official_score)
            ),
            None => "ROC of clip scores".to_string(),
        };
        plot_roc(p, &title, &sections)?;
        eprintln!("ROC curves drawn to {}", p.display());
    }
    match report {
        Some(r) => {
            crate::cli::print_report(&r, a.json)?;
            // `--json` stays the same object as `metrics --json`.
            if !a.json {
                print!(
                    "\nAt each section's calibrated threshold, on the test clips:\n\n{}",
                    operating_table(&sections)
                );
            }
            Ok(())
        }
        None => {
            let files: Vec<&Path> = sections.iter().map(|s| s.file.as_path()).collect();
            print_no_metrics(unlabelled_test_clips(&data), &out, &files, a.json)
        }
    }
}

/// How many test clips of `data` carry no normal/anomaly label in their names, and how many test clips there are.
pub fn unlabelled_test_clips(data: &dcase::Dataset) -> (usize, usize) {
    let test = data.clips.iter().filter(|c| c.split == Split::Test);
    let (mut unlabelled, mut all) = (0, 0);
    for c in test {
        all += 1;
        unlabelled += usize::from(c.name.condition.is_none());
    }
    (unlabelled, all)
}

/// Why test clips give no metrics.
fn why_no_metrics((unlabelled, all): (usize, usize)) -> String {
    format!(
        "{unlabelled} of {all} test clips carry no normal/anomaly label in their names (as on DCASE evaluation sets, \
         section_SS_NNNN.wav); with the evaluator's ground truth, `sonitor-train metrics --scores OUT --data DATA \
         --ground-truth DIR` gives the metrics"
    )
}

/// `--plot` draws ROC curves, which need labels: refused before anything is scored when no section's test
/// clips all carry one.
fn check_plottable(data: &dcase::Dataset) -> anyhow::Result<()> {
    let labelled = data.sections().into_iter().any(|(t, s)| {
        let mut test = data.clips_of(&t, s, Split::Test).peekable();
        test.peek().is_some() && test.all(|c| c.name.condition.is_some())
    });
    anyhow::ensure!(
        labelled,
        "--plot: a ROC curve needs normal and anomalous test clips, but {}; leave out --plot to score them (the \
         submission files need no labels)",
        why_no_metrics(unlabelled_test_clips(data))
    );
    Ok(())
}

/// For test clips without labels (`eval` and `baseline`): says why there are no metrics and, with `--json`,
/// prints the object a script expects instead of empty output: the fields of the metrics object
/// (`metrics --json`) null, `no_metrics` saying why, and where the submission files were written.
pub fn print_no_metrics(
    counts: (usize, usize),
    out: &Path,
    files: &[&Path],
    json: bool,
) -> anyhow::Result<()> {
    print_no_metrics_because(&why_no_metrics(counts), out, files, json)
}

/// As [`print_no_metrics`], for another reason `why`.
pub fn print_no_metrics_because(
    why: &str,
    out: &Path,
    files: &[&Path],
    json: bool,
) -> anyhow::Result<()> {
    eprintln!("{why}: no metrics");
    if json {
        let o = serde_json::json!({
            "sections": null,
            "types": null,
            "official_score": null,
            "no_metrics": why,
            "scores_dir": out.display().to_string(),
            "score_files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&o)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_plot_path_is_refused_before_anything_is_scored() {
        let d = tempfile::tempdir().unwrap();
        for plot in ["roc.txt", "missing/roc.svg"] {
            // The bundle and data do not exist: the --plot error comes first.
            let e = run(&EvalArgs {
                model: d.path().join("no-bundle"),
                data: d.path().join("no-data"),
                json: false,
                out: None,
                plot: Some(d.path().join(plot)),
            })
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(e.starts_with("--plot"), "{e}");
        }
    }

    fn section(
        key: &str,
        windows: Vec<Vec<f64>>,
        anomalous: &[bool],
        domain: &[Domain],
    ) -> SectionScores {
        SectionScores {
            key: key.to_string(),
            file: PathBuf::from("unused.csv"),
            threshold: 0.5,
            scores: windows.iter().map(|w| clip_score(w)).collect(),
            windows,
            first_end_ms: 2000,
            hop_ms: 1000,
            anomalous: anomalous.iter().map(|&a| Some(a)).collect(),
            domain: domain.iter().map(|&d| Some(d)).collect(),
        }
    }

    #[test]
    fn the_operating_table_counts_both_ways_and_names_sections_too_short_for_the_detector() {
        use Domain::{Source, Target};
        // Five windows per clip: normal source, normal target, then two anomalous clips. The clip means are
        // 0.10, 0.42, 0.58, 0.40 against a threshold of 0.5; the detector (3 of 5) raises on the last two.
        let long = section(
            "pump/section_00",
            vec![
                vec![0.1; 5],
                vec![0.9, 0.9, 0.1, 0.1, 0.1],
                vec![0.9, 0.1, 0.9, 0.1, 0.9],
                vec![0.6, 0.6, 0.6, 0.1, 0.1],
            ],
            &[false, false, true, true],
            &[Source, Target, Source, Target],
        );
        // Two windows per clip: the detector can never raise, so no row of zeros for it.
        let short = section(
            "fan/section_00",
            vec![vec![0.9, 0.9], vec![0.1, 0.1]],
            &[true, false],
            &[Source, Source],
        );
        let t = operating_table(&[long, short]);
        assert!(
            t.contains("| pump/section_00 | 0.5000 | its score is above | 0.00 | 0.00 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| pump/section_00 | 0.5000 | the daemon raises (3 of 5 windows) | 0.00 | 0.00 | 1.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| fan/section_00 | 0.5000 | its score is above | 0.00 | – | 1.00 |"),
            "{t}"
        );
        assert!(
            !t.contains("| fan/section_00 | 0.5000 | the daemon raises"),
            "{t}"
        );
        assert!(
            t.contains("(section and its longest clip's windows: fan/section_00 2)"),
            "{t}"
        );
    }
}
