//! The official DCASE 2023 Task 2 metrics (nttcslab's evaluator).
//!
//! Per machine type and section:
//! - **AUC(source)**: ROC AUC over the source-domain normal clips and *all* anomalous clips of the section;
//! - **AUC(target)**: the same with the target-domain normal clips;
//! - **pAUC**: McClish-standardised partial AUC for false-positive rates up to `max_fpr = 0.1`, over all clips of
//!   the section (what scikit-learn's `roc_auc_score(y, s, max_fpr=0.1)` returns).
//!
//! The **official score** is the harmonic mean of the flat list of all those values over every type and section.
//! [`roc_auc`] and [`partial_roc_auc`] follow scikit-learn's algorithm step by step (ties included), so they agree
//! with it to rounding; a test checks this against scikit-learn itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dcase::{self, Condition, Dataset, DcaseError, Domain, FaultKinds, Split};

/// The DCASE pAUC limit.
pub const MAX_FPR: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("labels and scores differ in length ({labels} vs {scores})")]
    Length { labels: usize, scores: usize },
    #[error("AUC needs both classes: {positives} anomalous and {negatives} normal clips given")]
    OneClass { positives: usize, negatives: usize },
    #[error("score {index} is not a finite number")]
    NotFinite { index: usize },
    #[error("max_fpr must be in (0, 1], got {0}")]
    MaxFpr(f64),
    #[error(transparent)]
    Data(#[from] DcaseError),
    #[error("{file}: {missing} test clip(s) of {machine_type} section {section:02} have no score (first: {first})")]
    MissingRows {
        file: String,
        machine_type: String,
        section: u16,
        missing: usize,
        first: String,
    },
    #[error(
        "{file}: scores {unknown} clip(s) that are not test clips of this section (first: {first})"
    )]
    UnknownRows {
        file: String,
        unknown: usize,
        first: String,
    },
    #[error(
        "{path}: no submission file for {machine_type} section {section:02} (expected {expected})"
    )]
    MissingFile {
        path: String,
        machine_type: String,
        section: u16,
        expected: String,
    },
    #[error(
        "{machine_type} section {section:02}: test clips carry no normal/anomaly labels (evaluation-set names); \
         `sonitor-train metrics --ground-truth DIR` reads them from the DCASE evaluator's ground_truth_data/ and \
         ground_truth_domain/"
    )]
    Unlabelled { machine_type: String, section: u16 },
    #[error("{machine_type} section {section:02}: no {metric}: {positives} anomalous and {negatives} {normals} test clips (it needs both)")]
    SectionOneClass {
        machine_type: String,
        section: u16,
        /// `AUC (source)`, `AUC (target)` or `pAUC`.
        metric: &'static str,
        /// Which normal clips count: `source-domain normal`, `target-domain normal` or `normal`.
        normals: &'static str,
        positives: usize,
        negatives: usize,
    },
    #[error("{root}: no test clips to score")]
    NoTestClips { root: String },
}

/// ROC curve points (fpr, tpr) at every distinct threshold, descending, starting at (0, 0) — scikit-learn's
/// `roc_curve(drop_intermediate=False)`.
fn roc_points(labels: &[bool], scores: &[f64]) -> Result<(Vec<f64>, Vec<f64>), MetricsError> {
    if labels.len() != scores.len() {
        return Err(MetricsError::Length {
            labels: labels.len(),
            scores: scores.len(),
        });
    }
    if let Some(index) = scores.iter().position(|s| !s.is_finite()) {
        return Err(MetricsError::NotFinite { index });
    }
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricsError::OneClass {
            positives,
            negatives,
        });
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut fpr = vec![0.0];
    let mut tpr = vec![0.0];
    for (i, &k) in order.iter().enumerate() {
        if labels[k] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_threshold = i + 1 == order.len() || scores[order[i + 1]] != scores[k];
        if last_of_threshold {
            fpr.push(fp as f64 / negatives as f64);
            tpr.push(tp as f64 / positives as f64);
        }
    }
    Ok((fpr, tpr))
}

fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(xs, ys)| (xs[1] - xs[0]) * (ys[0] + ys[1]) / 2.0)
        .sum()
}

/// Area under the ROC curve; `labels[i]` is true for an anomaly (the positive class, higher scores expected).
pub fn roc_auc(labels: &[bool], scores: &[f64]) -> Result<f64, MetricsError> {
    let (fpr, tpr) = roc_points(labels, scores)?;
    Ok(trapezoid(&fpr, &tpr))
}

/// McClish-standardised partial AUC up to `max_fpr` (scikit-learn `roc_auc_score(max_fpr=…)`).
pub fn partial_roc_auc(labels: &[bool], scores: &[f64], max_fpr: f64) -> Result<f64, MetricsError> {
    if !(max_fpr > 0.0 && max_fpr <= 1.0) {
        return Err(MetricsError::MaxFpr(max_fpr));
    }
    let (fpr, tpr) = roc_points(labels, scores)?;
    if max_fpr == 1.0 {
        return Ok(trapezoid(&fpr, &tpr));
    }
    // searchsorted(fpr, max_fpr, side="right")
    let stop = fpr.partition_point(|&f| f <= max_fpr);
    let (x0, x1, y0, y1) = (fpr[stop - 1], fpr[stop], tpr[stop - 1], tpr[stop]);
    let y_at = if x1 == x0 {
        y0
    } else {
        y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    };
    let mut xs = fpr[..stop].to_vec();
    let mut ys = tpr[..stop].to_vec();
    xs.push(max_fpr);
    ys.push(y_at);
    let partial = trapezoid(&xs, &ys);
    let min_area = 0.5 * max_fpr * max_fpr;
    let max_area = max_fpr;
    Ok(0.5 * (1.0 + (partial - min_area) / (max_area - min_area)))
}

/// Harmonic mean; values are clamped at a tiny positive number first, as the official evaluator does
/// (a 0 would otherwise make the mean undefined).
pub fn harmonic_mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let eps = f64::EPSILON;
    values.len() as f64 / values.iter().map(|v| 1.0 / v.max(eps)).sum::<f64>()
}

/// The metrics of one machine type and section. A value the test clips cannot give (a plant's own recordings often
/// have no target-domain normal test clips, so no AUC (target)) is `None` (`null` in JSON), and [`Self::missing`]
/// says why and how to get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SectionMetrics {
    pub machine_type: String,
    pub section: u16,
    pub auc_source: Option<f64>,
    pub auc_target: Option<f64>,
    pub pauc: Option<f64>,
    pub n_source_normal: usize,
    pub n_target_normal: usize,
    pub n_anomaly: usize,
    /// Why each value that is `None` could not be computed, and which clips would give it; empty (and left out
    /// of the JSON) when all are there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Harmonic means over the sections of one machine type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeMetrics {
    pub machine_type: String,
    /// Each `None` where a section of the type lacks it.
    pub auc_source: Option<f64>,
    pub auc_target: Option<f64>,
    pub pauc: Option<f64>,
    /// Harmonic mean of this type's AUC(source), AUC(target) and pAUC values; `None` where one is missing.
    pub score: Option<f64>,
}

/// The whole evaluation: what `metrics --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub sections: Vec<SectionMetrics>,
    pub types: Vec<TypeMetrics>,
    /// `None` (`null`) where a section lacks a value ([`SectionMetrics::missing`]): the official score is the
    /// harmonic mean of them all.
    pub official_score: Option<f64>,
    /// Per fault kind, when the evaluation was given them ([`evaluate_submission_by_fault`]); not part of the
    /// official score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_fault: Vec<FaultMetrics>,
    /// Rows of the fault list, of a machine type evaluated, that name no anomalous test clip with a score
    /// (`<type>/<file name>`, sorted): a typo, another data set's list, or a clip labelled normal here. They are in
    /// no `by_fault` row, and said so rather than dropped without a word.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults_unmatched: Vec<String>,
}

/// How well one fault kind is told from normal: the AUC of its anomalous test clips of one domain against the
/// normal test clips of the same section and domain. Not a DCASE metric (the official AUCs take every anomaly of a
/// section); it shows which faults a model catches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultMetrics {
    pub machine_type: String,
    pub section: u16,
    pub domain: Domain,
    /// The kind the ground truth names, or `(not listed)` for anomalous clips it does not list.
    pub fault: String,
    pub n_anomaly: usize,
    pub n_normal: usize,
    /// `None` when the section has no normal test clip of this domain.
    pub auc: Option<f64>,
}

/// What a fault-kind row says for anomalous clips the ground truth does not list.
pub const FAULT_NOT_LISTED: &str = "(not listed)";

/// One scored test clip.
#[derive(Debug, Clone, Copy)]
pub struct LabelledScore {
    pub domain: Domain,
    pub anomaly: bool,
    pub score: f64,
}

/// What a section's value that its test clips cannot give needs, said after the reason.
fn how_to_get(normals: &str) -> String {
    let import = |domain: &str| {
        format!(
            "import normal test recordings with `sonitor-train import --split test --domain {domain}`"
        )
    };
    match normals {
        "target-domain normal" => import("target"),
        "source-domain normal" => import("source"),
        _ => "import anomalous and normal test recordings (`sonitor-train import --split test`)"
            .to_string(),
    }
}

/// Metrics of one section from its labelled scores. A value whose clips lack a class is `None`, with the reason
/// in [`SectionMetrics::missing`]; the section's other values are still computed.
pub fn section_metrics(
    machine_type: &str,
    section: u16,
    clips: &[LabelledScore],
) -> Result<SectionMetrics, MetricsError> {
    // A subset with one class only is named: the section, which AUC, which clips are missing.
    let named = |metric: &'static str, normals: &'static str| {
        move |e: MetricsError| match e {
            MetricsError::OneClass {
                positives,
                negatives,
            } => MetricsError::SectionOneClass {
                machine_type: machine_type.to_string(),
                section,
                metric,
                normals,
                positives,
                negatives,
            },
            e => e,
        }
    };
    let auc_for = |domain: Domain| {
        let (labels, scores): (Vec<bool>, Vec<f64>) = clips
            .iter()
            .filter(|c| c.anomaly || c.domain == domain)
            .map(|c| (c.anomaly, c.score))
            .unzip();
        roc_auc(&labels, &scores)
    };
    let (labels, scores): (Vec<bool>, Vec<f64>) =
        clips.iter().map(|c| (c.anomaly, c.score)).unzip();
    let count = |d: Domain| clips.iter().filter(|c| !c.anomaly && c.domain == d).count();
    let mut missing = Vec::new();
    let mut value = |r: Result<f64, MetricsError>,
                     metric: &'static str,
                     normals: &'static str|
     -> Result<Option<f64>, MetricsError> {
        match r.map_err(named(metric, normals)) {
            Ok(v) => Ok(Some(v)),
            Err(e @ MetricsError::SectionOneClass { .. }) => {
                missing.push(format!("{e}; {}", how_to_get(normals)));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let auc_source = value(
        auc_for(Domain::Source),
        "AUC (source)",
        "source-domain normal",
    )?;
    let auc_target = value(
        auc_for(Domain::Target),
        "AUC (target)",
        "target-domain normal",
    )?;
    let pauc = value(partial_roc_auc(&labels, &scores, MAX_FPR), "pAUC", "normal")?;
    Ok(SectionMetrics {
        machine_type: machine_type.to_string(),
        section,
        auc_source,
        auc_target,
        pauc,
        n_source_normal: count(Domain::Source),
        n_target_normal: count(Domain::Target),
        n_anomaly: clips.iter().filter(|c| c.anomaly).count(),
        missing,
    })
}

/// The harmonic mean of values that are all there; `None` where one is missing.
fn harmonic_mean_of_all(values: &[Option<f64>]) -> Option<f64> {
    let all: Option<Vec<f64>> = values.iter().copied().collect();
    all.map(|v| harmonic_mean(&v))
}

/// A value of the table: 4 decimals, or `n/a` where it could not be computed.
pub fn cell(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.4}"))
}

/// Builds the report from per-section metrics.
pub fn report(sections: Vec<SectionMetrics>) -> Report {
    let mut by_type: BTreeMap<&str, Vec<&SectionMetrics>> = BTreeMap::new();
    for s in &sections {
        by_type.entry(&s.machine_type).or_default().push(s);
    }
    let types = by_type
        .into_iter()
        .map(|(t, ss)| {
            let hm = |f: fn(&SectionMetrics) -> Option<f64>| {
                harmonic_mean_of_all(&ss.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            let flat: Vec<Option<f64>> = ss
                .iter()
                .flat_map(|s| [s.auc_source, s.auc_target, s.pauc])
                .collect();
            TypeMetrics {
                machine_type: t.to_string(),
                auc_source: hm(|s| s.auc_source),
                auc_target: hm(|s| s.auc_target),
                pauc: hm(|s| s.pauc),
                score: harmonic_mean_of_all(&flat),
            }
        })
        .collect();
    let flat: Vec<Option<f64>> = sections
        .iter()
        .flat_map(|s| [s.auc_source, s.auc_target, s.pauc])
        .collect();
    Report {
        official_score: harmonic_mean_of_all(&flat),
        sections,
        types,
        by_fault: Vec::new(),
        faults_unmatched: Vec::new(),
    }
}

/// Evaluates a directory of DCASE submission files against the labelled test clips of a data set. Every test
/// clip must be scored exactly once; a missing file or row is an error naming it.
pub fn evaluate_submission(data: &Dataset, scores_dir: &Path) -> Result<Report, MetricsError> {
    evaluate(data, scores_dir, None)
}

/// [`evaluate_submission`], and per fault kind ([`Report::by_fault`], sorted by type, section, domain and fault).
pub fn evaluate_submission_by_fault(
    data: &Dataset,
    scores_dir: &Path,
    kinds: &FaultKinds,
) -> Result<Report, MetricsError> {
    evaluate(data, scores_dir, Some(kinds))
}

fn evaluate(
    data: &Dataset,
    scores_dir: &Path,
    kinds: Option<&FaultKinds>,
) -> Result<Report, MetricsError> {
    let scored = scored_sections(data, scores_dir)?;
    let sections = scored
        .iter()
        .map(|s| {
            let clips: Vec<LabelledScore> = s.clips.iter().map(|(_, c)| *c).collect();
            section_metrics(&s.machine_type, s.section, &clips)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = report(sections);
    if let Some(kinds) = kinds {
        report.by_fault = scored
            .iter()
            .flat_map(|s| fault_metrics(s, kinds))
            .collect();
        report.faults_unmatched = faults_unmatched(&scored, kinds);
    }
    Ok(report)
}

/// The rows of `kinds` whose machine type was scored but which name none of its anomalous test clips.
fn faults_unmatched(scored: &[ScoredSection], kinds: &FaultKinds) -> Vec<String> {
    let anomalous: BTreeSet<(&str, &str)> = scored
        .iter()
        .flat_map(|s| {
            s.clips
                .iter()
                .filter(|(_, c)| c.anomaly)
                .map(|(name, _)| (s.machine_type.as_str(), name.as_str()))
        })
        .collect();
    let types: BTreeSet<&str> = scored.iter().map(|s| s.machine_type.as_str()).collect();
    let mut rows: Vec<String> = kinds
        .iter()
        .filter(|(t, f, _)| types.contains(t) && !anomalous.contains(&(*t, *f)))
        .map(|(t, f, _)| format!("{t}/{f}"))
        .collect();
    rows.sort();
    rows
}

/// The test clips of one section with their scores: (file name, labelled score).
struct ScoredSection {
    machine_type: String,
    section: u16,
    clips: Vec<(String, LabelledScore)>,
}

/// Reads the submission file of every section with test clips and pairs each test clip with its score.
fn scored_sections(data: &Dataset, scores_dir: &Path) -> Result<Vec<ScoredSection>, MetricsError> {
    if !scores_dir.is_dir() {
        return Err(DcaseError::MissingScores {
            path: scores_dir.to_path_buf(),
        }
        .into());
    }
    let mut sections = Vec::new();
    for (machine_type, section) in data.sections() {
        let test: Vec<_> = data.clips_of(&machine_type, section, Split::Test).collect();
        if test.is_empty() {
            continue;
        }
        let file_name = dcase::submission_file_name(&machine_type, section);
        let path = scores_dir.join(&file_name);
        if !path.is_file() {
            return Err(MetricsError::MissingFile {
                path: scores_dir.display().to_string(),
                machine_type,
                section,
                expected: file_name,
            });
        }
        let mut scores = dcase::read_scores(&path)?;
        let mut labelled = Vec::with_capacity(test.len());
        let mut missing = Vec::new();
        for clip in &test {
            let (Some(domain), Some(cond)) = (clip.name.domain, clip.name.condition) else {
                return Err(MetricsError::Unlabelled {
                    machine_type,
                    section,
                });
            };
            match scores.remove(clip.file_name()) {
                Some(score) => labelled.push((
                    clip.file_name().to_string(),
                    LabelledScore {
                        domain,
                        anomaly: cond == Condition::Anomaly,
                        score,
                    },
                )),
                None => missing.push(clip.file_name().to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(MetricsError::MissingRows {
                file: path.display().to_string(),
                machine_type,
                section,
                missing: missing.len(),
                first: missing[0].clone(),
            });
        }
        if let Some(first) = scores.keys().next() {
            return Err(MetricsError::UnknownRows {
                file: path.display().to_string(),
                unknown: scores.len(),
                first: first.clone(),
            });
        }
        sections.push(ScoredSection {
            machine_type,
            section,
            clips: labelled,
        });
    }
    if sections.is_empty() {
        return Err(MetricsError::NoTestClips {
            root: data.root.display().to_string(),
        });
    }
    Ok(sections)
}

/// One row per (domain, fault kind) of a section's anomalous clips.
fn fault_metrics(s: &ScoredSection, kinds: &FaultKinds) -> Vec<FaultMetrics> {
    let mut groups: BTreeMap<(Domain, &str), Vec<f64>> = BTreeMap::new();
    for (name, c) in s.clips.iter().filter(|(_, c)| c.anomaly) {
        let fault = kinds.of(&s.machine_type, name).unwrap_or(FAULT_NOT_LISTED);
        groups.entry((c.domain, fault)).or_default().push(c.score);
    }
    groups
        .into_iter()
        .map(|((domain, fault), anomalous)| {
            let normal: Vec<f64> = s
                .clips
                .iter()
                .filter(|(_, c)| !c.anomaly && c.domain == domain)
                .map(|(_, c)| c.score)
                .collect();
            let labels: Vec<bool> = std::iter::repeat_n(true, anomalous.len())
                .chain(std::iter::repeat_n(false, normal.len()))
                .collect();
            let scores: Vec<f64> = anomalous.iter().chain(&normal).copied().collect();
            FaultMetrics {
                machine_type: s.machine_type.clone(),
                section: s.section,
                domain,
                fault: fault.to_string(),
                n_anomaly: anomalous.len(),
                n_normal: normal.len(),
                auc: roc_auc(&labels, &scores).ok(),
            }
        })
        .collect()
}

impl Report {
    /// Why each value that is missing could not be computed and how to get it, section by section.
    pub fn missing(&self) -> impl Iterator<Item = &str> {
        self.sections
            .iter()
            .flat_map(|s| s.missing.iter().map(String::as_str))
    }

    /// A Markdown table: one row per type and section, then the official score (`n/a` where a value is missing,
    /// with why).
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| machine type | section | AUC (source) | AUC (target) | pAUC | score (hmean) |\n|---|---|---|---|---|---|\n",
        );
        for t in &self.types {
            for sec in self
                .sections
                .iter()
                .filter(|x| x.machine_type == t.machine_type)
            {
                let flat = [sec.auc_source, sec.auc_target, sec.pauc];
                s.push_str(&format!(
                    "| {} | {:02} | {} | {} | {} | {} |\n",
                    sec.machine_type,
                    sec.section,
                    cell(sec.auc_source),
                    cell(sec.auc_target),
                    cell(sec.pauc),
                    cell(harmonic_mean_of_all(&flat))
                ));
            }
        }
        match self.official_score {
            Some(score) => s.push_str(&format!(
                "\n**Official score** (harmonic mean of all AUC/pAUC values): **{score:.4}**\n"
            )),
            None => {
                s.push_str(
                    "\n**Official score** (harmonic mean of all AUC/pAUC values): **n/a**: the test clips cannot \
                     give every value (n/a above):\n\n",
                );
                for m in self.missing() {
                    s.push_str(&format!("- {m}\n"));
                }
            }
        }
        if !self.by_fault.is_empty() {
            s.push_str(
                "\nBy fault kind (AUC of one kind's anomalous clips against the normal clips of the same section and \
                 domain; not part of the official score):\n\n\
                 | machine type | section | domain | fault | anomalous clips | normal clips | AUC |\n\
                 |---|---|---|---|---|---|---|\n",
            );
            for f in &self.by_fault {
                let auc = f.auc.map_or("–".to_string(), |a| format!("{a:.4}"));
                s.push_str(&format!(
                    "| {} | {:02} | {} | {} | {} | {} | {auc} |\n",
                    f.machine_type,
                    f.section,
                    f.domain.as_str(),
                    f.fault,
                    f.n_anomaly,
                    f.n_normal
                ));
            }
        }
        if let Some(first) = self.faults_unmatched.first() {
            let n = self.faults_unmatched.len();
            s.push_str(&format!(
                "
{n} row(s) of the fault list name no anomalous test clip with a score here (a typo, another data \
                 set's list, or a clip that is normal here), and are in no row above: {first}{}\n",
                if n > 1 {
                    format!(" and {} more (`--json`: faults_unmatched)", n - 1)
                } else {
                    String::new()
                }
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rows_compare_one_kind_with_the_normals_of_its_domain() {
        let clip = |name: &str, domain, anomaly, score| {
            (
                name.to_string(),
                LabelledScore {
                    domain,
                    anomaly,
                    score,
                },
            )
        };
        let (src, tgt) = (Domain::Source, Domain::Target);
        let s = ScoredSection {
            machine_type: "fan".into(),
            section: 0,
            clips: vec![
                clip("n0", src, false, 0.1),
                clip("n1", src, false, 0.3),
                clip("n2", src, false, 0.5),
                clip("t0", tgt, false, 0.9),
                // Above every source normal, then above one of three; the target anomaly above the only target normal.
                clip("a0", src, true, 0.6),
                clip("a1", src, true, 0.2),
                clip("a2", src, true, 0.4),
                clip("a3", tgt, true, 1.0),
            ],
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gt.csv");
        std::fs::write(
            &p,
            "file_name,fault\nfan/test/a0,imbalance\nfan/test/a1,imbalance\nfan/test/a3,imbalance\n",
        )
        .unwrap();
        let rows = fault_metrics(&s, &FaultKinds::read(&p).unwrap());
        let got: Vec<(Domain, &str, usize, usize, Option<f64>)> = rows
            .iter()
            .map(|f| {
                let auc = f.auc.map(|a| (a * 1e9).round() / 1e9);
                (f.domain, f.fault.as_str(), f.n_anomaly, f.n_normal, auc)
            })
            .collect();
        let r9 = |a: f64| Some((a * 1e9).round() / 1e9);
        // Source imbalance {0.6, 0.2} against {0.1, 0.3, 0.5}: 3 + 1 of 6 pairs; a2 is not listed: 2 of 3.
        assert_eq!(
            got,
            vec![
                (src, FAULT_NOT_LISTED, 1, 3, r9(2.0 / 3.0)),
                (src, "imbalance", 2, 3, r9(4.0 / 6.0)),
                (tgt, "imbalance", 1, 1, r9(1.0)),
            ]
        );
        // A domain without normal test clips has no AUC, not an error.
        let only_anomalies = ScoredSection {
            machine_type: s.machine_type.clone(),
            section: s.section,
            clips: s.clips[4..].to_vec(),
        };
        let rows = fault_metrics(&only_anomalies, &FaultKinds::default());
        assert!(rows.iter().all(|f| f.auc.is_none() && f.n_normal == 0));
        let r = Report {
            by_fault: rows,
            ..report(Vec::new())
        };
        assert!(r
            .to_markdown()
            .contains("| fan | 00 | target | (not listed) | 1 | 0 | – |"));

        // Rows naming no anomalous clip of a type scored are said, not dropped: a typo (a9), a normal clip (n0).
        // Another type's rows are not: its clips were not evaluated.
        std::fs::write(
            &p,
            "file_name,fault\nfan/test/a0,imbalance\nfan/test/a9,imbalance\nfan/test/n0,imbalance\n\
             pump/test/a0,clogging\n",
        )
        .unwrap();
        let kinds = FaultKinds::read(&p).unwrap();
        let unmatched = faults_unmatched(std::slice::from_ref(&s), &kinds);
        assert_eq!(unmatched, ["fan/a9", "fan/n0"]);
        let r = Report {
            faults_unmatched: unmatched,
            ..report(Vec::new())
        };
        let text = r.to_markdown();
        assert!(
            text.contains(
                "2 row(s) of the fault list name no anomalous test clip with a score here"
            ) && text.contains("fan/a9 and 1 more (`--json`: faults_unmatched)"),
            "{text}"
        );
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"faults_unmatched\":[\"fan/a9\",\"fan/n0\"]"));
    }

    #[test]
    fn perfect_inverse_and_tied() {
        let l = [false, false, true, true];
        assert_eq!(roc_auc(&l, &[0.1, 0.2, 0.3, 0.4]).unwrap(), 1.0);
        assert_eq!(roc_auc(&l, &[0.4, 0.3, 0.2, 0.1]).unwrap(), 0.0);
        assert_eq!(roc_auc(&l, &[0.5; 4]).unwrap(), 0.5);
        assert_eq!(
            partial_roc_auc(&l, &[0.1, 0.2, 0.3, 0.4], 0.1).unwrap(),
            1.0
        );
        // All tied: the ROC is the diagonal, whose standardised partial AUC is 0.5.
        assert!((partial_roc_auc(&l, &[0.5; 4], 0.1).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn hand_computed_case() {
        // Ranks: scores 0.9(a) 0.8(n) 0.7(a) 0.6(n) 0.5(a) 0.4(n): pairs (a>n): 3+2+1 = 6 of 9.
        let l = [true, false, true, false, true, false];
        let s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
        assert!((roc_auc(&l, &s).unwrap() - 6.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn errors_are_explicit() {
        assert!(matches!(
            roc_auc(&[true, true], &[0.1, 0.2]),
            Err(MetricsError::OneClass { .. })
        ));
        assert!(matches!(
            roc_auc(&[true], &[0.1, 0.2]),
            Err(MetricsError::Length { .. })
        ));
        assert!(matches!(
            roc_auc(&[true, false], &[f64::NAN, 0.2]),
            Err(MetricsError::NotFinite { index: 0 })
        ));
        assert!(partial_roc_auc(&[true, false], &[0.1, 0.2], 0.0).is_err());
    }

    #[test]
    fn harmonic_mean_is_dominated_by_the_worst() {
        assert!((harmonic_mean(&[1.0, 0.5]) - 2.0 / 3.0).abs() < 1e-12);
        assert!(harmonic_mean(&[1.0, 0.0]) < 1e-10);
    }

    #[test]
    fn section_metrics_use_the_dcase_subsets() {
        // Source normals score low, target normals score as high as the anomalies.
        let mut clips = Vec::new();
        for i in 0..10 {
            clips.push(LabelledScore {
                domain: Domain::Source,
                anomaly: false,
                score: i as f64 * 0.01,
            });
            clips.push(LabelledScore {
                domain: Domain::Target,
                anomaly: false,
                score: 1.0 + i as f64 * 0.1,
            });
            clips.push(LabelledScore {
                domain: Domain::Source,
                anomaly: true,
                score: 1.05 + i as f64 * 0.1,
            });
        }
        let m = section_metrics("fan", 0, &clips).unwrap();
        assert_eq!(m.auc_source, Some(1.0));
        let t = m.auc_target.unwrap();
        assert!(t > 0.4 && t < 0.7, "{t}");
        assert_eq!(
            (m.n_source_normal, m.n_target_normal, m.n_anomaly),
            (10, 10, 10)
        );
    }

    /// A plant's own recordings have no target-domain normal test clips: the section's AUC (target) and the
    /// official score are missing (n/a in the table, null in JSON, with the reason and how to get them), the rest
    /// is computed; it was an error that gave nothing.
    #[test]
    fn a_one_class_subset_is_missing_with_why_and_the_rest_is_computed() {
        let clip = |domain, anomaly, score| LabelledScore {
            domain,
            anomaly,
            score,
        };
        // Source normals and anomalies, no target normals.
        let clips = [
            clip(Domain::Source, false, 0.1),
            clip(Domain::Source, false, 0.2),
            clip(Domain::Source, true, 0.9),
            clip(Domain::Target, true, 0.8),
        ];
        let m = section_metrics("fan", 3, &clips).unwrap();
        assert_eq!(m.auc_source, Some(1.0));
        assert_eq!(m.auc_target, None);
        assert_eq!(m.pauc, Some(1.0));
        assert_eq!(
            m.missing,
            vec![
                "fan section 03: no AUC (target): 2 anomalous and 0 target-domain normal test clips (it needs both); \
                 import normal test recordings with `sonitor-train import --split test --domain target`"
                    .to_string()
            ]
        );
        let r = report(vec![m]);
        assert_eq!(r.official_score, None);
        assert_eq!(r.types[0].auc_source, Some(1.0));
        assert_eq!((r.types[0].auc_target, r.types[0].score), (None, None));
        let md = r.to_markdown();
        assert!(
            md.contains("| fan | 03 | 1.0000 | n/a | 1.0000 | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("**Official score** (harmonic mean of all AUC/pAUC values): **n/a**"),
            "{md}"
        );
        assert!(md.contains("- fan section 03: no AUC (target)"), "{md}");
        let v = serde_json::to_value(&r).unwrap();
        assert!(
            v["official_score"].is_null() && v["sections"][0]["auc_target"].is_null(),
            "{v}"
        );
        assert_eq!(v["sections"][0]["auc_source"], 1.0);
        assert!(v["sections"][0]["missing"][0]
            .as_str()
            .unwrap()
            .contains("--domain target"));

        // A complete section: the JSON has no `missing` and numbers where they were.
        let mut all = clips.to_vec();
        all.push(clip(Domain::Target, false, 0.5));
        let v =
            serde_json::to_value(report(vec![section_metrics("fan", 3, &all).unwrap()])).unwrap();
        assert!(v["sections"][0].get("missing").is_none(), "{v}");
        assert!(
            v["official_score"].is_f64() && v["sections"][0]["auc_target"].is_f64(),
            "{v}"
        );
    }

    #[test]
    fn a_data_set_without_test_clips_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let train = d.path().join("fan/train");
        std::fs::create_dir_all(&train).unwrap();
        crate::audio::write_wav_i16(
            &train.join("section_00_source_train_normal_0000_a_1.wav"),
            &[0.0; 2048],
            16_000,
        )
        .unwrap();
        let scores = d.path().join("scores");
        std::fs::create_dir(&scores).unwrap();
        let data = dcase::scan(d.path()).unwrap();
        let e = evaluate_submission(&data, &scores).unwrap_err().to_string();
        assert!(e.ends_with(": no test clips to score"), "{e}");
    }
}
