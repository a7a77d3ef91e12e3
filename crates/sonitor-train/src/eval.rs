//! `sonitor-train eval`: scores the test clips of a data set with a model bundle through tract on the ONNX
//! graph (the daemon's inference path, not burn's), writes the DCASE submission files and prints the official
//! metrics.
//!
//! Clip pooling: a clip is cut into the bundle's analysis windows (`window_samples` every
//! `window_hop_samples`); each window's score is the minimum cosine distance of its embedding to the section's
//! centroids (`sonitor_core::score`), and the clip's score is the **mean** of its window scores (the manifest's
//! `clip_pooling`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sonitor_core::audio::{load_mono, ChannelSelect};
use sonitor_core::bundle::{Bundle, FeatureView};
use sonitor_core::dcase::{self, Clip, Condition, Domain, Split};
use sonitor_core::features::FeatureExtractor;
use sonitor_core::plot::{self, RocCurve};
use sonitor_core::{metrics, parallel, score};

use crate::infer::OnnxEmbedder;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model bundle directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Data set root (DCASE layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Print the metrics as one JSON object (the same as `metrics --json`).
    #[arg(long)]
    pub json: bool,
    /// Directory for the submission files (default: BUNDLE/scores).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the ROC curve of every section with the operating point of its calibrated threshold (.png or .svg).
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
    /// Per clip: anomalous or not, when the file name says.
    pub anomalous: Vec<Option<bool>>,
    /// Per clip: its domain, when the file name says.
    pub domain: Vec<Option<Domain>>,
}

/// Loads the bundle's graph with tract, inputs named and shaped by the manifest.
pub fn embedder_of(bundle: &Bundle) -> anyhow::Result<OnnxEmbedder> {
    let m = &bundle.manifest;
    let find = |view: FeatureView| {
        m.inputs.iter().find(|i| i.view == view).with_context(|| {
            format!(
                "{}: the manifest has no {view:?} input",
                bundle.dir.display()
            )
        })
    };
    let (mel, spec) = (find(FeatureView::LogMel)?, find(FeatureView::Spectrum)?);
    let mel_shape: [usize; 3] = mel
        .shape
        .clone()
        .try_into()
        .map_err(|s| anyhow::anyhow!("log-mel input shape {s:?} is not 3-D"))?;
    let spec_shape: [usize; 2] = spec
        .shape
        .clone()
        .try_into()
        .map_err(|s| anyhow::anyhow!("spectrum input shape {s:?} is not 2-D"))?;
    OnnxEmbedder::load(
        &bundle.onnx_path,
        &mel.name,
        mel_shape,
        &spec.name,
        spec_shape,
    )
}

/// Window scores of one clip's audio.
pub fn window_scores(
    embedder: &OnnxEmbedder,
    fx: &mut FeatureExtractor,
    audio: &[f32],
    centroids: &[Vec<f32>],
) -> anyhow::Result<Vec<f32>> {
    Ok(embedder
        .window_embeddings(fx, audio)?
        .iter()
        .map(|e| score::min_cosine_distance(e, centroids))
        .collect())
}

/// Scores every test clip and writes the submission files into `out`. Returns the scores of each section.
pub fn score_dataset(
    bundle: &Bundle,
    data: &dcase::Dataset,
    out: &Path,
) -> anyhow::Result<Vec<SectionScores>> {
    let embedder = embedder_of(bundle)?;
    let params = bundle.manifest.features.clone();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (machine_type, section) in data.sections() {
        let test: Vec<&Clip> = data.clips_of(&machine_type, section, Split::Test).collect();
        if test.is_empty() {
            continue;
        }
        let sm =
            bundle.section(&machine_type, section).with_context(|| {
                format!(
                "{}: the bundle has no model for {machine_type} section {section:02} (it has: {})",
                bundle.dir.display(),
                bundle.manifest.sections.iter().map(|s| s.key()).collect::<Vec<_>>().join(", ")
            )
            })?;
        // Each worker reads, embeds and scores its clips in one pass.
        let scores: Vec<f64> = parallel::map_with_state(
            &test,
            || FeatureExtractor::new(params.clone()).map_err(anyhow::Error::from),
            |fx, c| {
                // Every audio error already starts with the file's path.
                let a = load_mono(&c.path, ChannelSelect::Mix, params.sample_rate)?;
                let w = window_scores(&embedder, fx, &a, &sm.centroids)
                    .with_context(|| format!("scoring {}", c.path.display()))?;
                Ok(w.iter().map(|&v| v as f64).sum::<f64>() / w.len().max(1) as f64)
            },
        )?;
        let rows: Vec<(String, f64)> = test
            .iter()
            .zip(&scores)
            .map(|(c, &s)| (c.file_name().to_string(), s))
            .collect();
        let file = dcase::write_submission(out, &machine_type, section, &rows)?;
        written.push(SectionScores {
            key: sm.key(),
            file,
            threshold: sm.threshold.value,
            scores,
            anomalous: test
                .iter()
                .map(|c| c.name.condition.map(|k| k == Condition::Anomaly))
                .collect(),
            domain: test.iter().map(|c| c.name.domain).collect(),
        });
    }
    anyhow::ensure!(
        !written.is_empty(),
        "{}: no test clips to score",
        data.root.display()
    );
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
    let data = dcase::scan(data_dir)?;
    let sections = score_dataset(&bundle, &data, out)?;
    let labelled = data
        .clips
        .iter()
        .filter(|c| c.split == Split::Test)
        .all(|c| c.name.condition.is_some());
    if !labelled {
        return Ok((None, sections));
    }
    let report = metrics::evaluate_submission(&data, out).with_context(|| {
        format!(
            "evaluating {} against {}",
            out.display(),
            data_dir.display()
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

/// What one threshold per machine does on the test clips, per labelled section: the share of normal clips of each
/// domain whose score is above the section's calibrated threshold (false alarms), and the share of all anomalous
/// clips above it (detected). Clip scores, as [`plot_roc`]'s operating points; `–` where a domain has no normal
/// test clips. Markdown.
pub fn operating_table(sections: &[SectionScores]) -> String {
    let mut t = String::from(
        "| section | threshold | false alarms, source | false alarms, target | anomalies detected |\n|---|---|---|---|---|\n",
    );
    let rate = |r: Option<f64>| r.map_or_else(|| "–".to_string(), |v| format!("{v:.2}"));
    for s in sections {
        let Some(anomalous) = s.anomalous.iter().copied().collect::<Option<Vec<bool>>>() else {
            continue;
        };
        let (src_fa, detected) = domain_point(s, &anomalous, Domain::Source);
        let (tgt_fa, _) = domain_point(s, &anomalous, Domain::Target);
        t += &format!(
            "| {} | {:.4} | {} | {} | {:.2} |\n",
            s.key,
            s.threshold,
            rate(src_fa),
            rate(tgt_fa),
            detected
        );
    }
    t
}

/// The operating point of a section's threshold on the normal clips of domain `d` and every anomalous clip:
/// (false-alarm rate, `None` without such normal clips; detection rate).
fn domain_point(s: &SectionScores, anomalous: &[bool], d: Domain) -> (Option<f64>, f64) {
    let (scores, labels): (Vec<f64>, Vec<bool>) = s
        .scores
        .iter()
        .zip(anomalous)
        .zip(&s.domain)
        .filter(|((_, &a), &dom)| a || dom == Some(d))
        .map(|((&v, &a), _)| (v, a))
        .unzip();
    let (fpr, tpr) = plot::operating_point(&scores, &labels, s.threshold);
    (labels.iter().any(|&a| !a).then_some(fpr), tpr)
}

pub fn run(a: &EvalArgs) -> anyhow::Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.model.join("scores"));
    let started = std::time::Instant::now();
    let (report, sections) = evaluate_with_scores(&a.model, &a.data, &out)?;
    eprintln!(
        "scored in {:.1} s; submission files in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if let Some(p) = &a.plot {
        let title = match &report {
            Some(r) => format!(
                "ROC of clip scores, official score {:.4} (dots: calibrated thresholds)",
                r.official_score
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
                    "\nAt each section's calibrated threshold (clip scores; a clip alarms above it):\n\n{}",
                    operating_table(&sections)
                );
            }
            Ok(())
        }
        None => {
            eprintln!("the test clips carry no labels: no metrics");
            Ok(())
        }
    }
}
