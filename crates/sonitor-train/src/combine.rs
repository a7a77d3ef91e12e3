//! `sonitor-train combine`: a model bundle's score and the non-learned baseline's together, offline.
//!
//! The two see different faults on the synthetic set (ABLATION.md, "Which faults it misses"): the learned
//! embedding the changes of a machine's tonal or temporal pattern, the baseline's mean log-mel the steady level
//! of a band (a leak's hiss, a bearing's ringing). `combine` scores every test clip both ways, puts each score on
//! the scale of its own section's normal training clips, and adds them:
//!
//! - the baseline's mean log-mel over the mel bands up to 0.45 of the sample rate
//!   ([`sonitor_core::score::baseline_bands`]: 123 of 128 at 16 kHz), not those up to the Nyquist frequency: a
//!   converter's or the daemon's resampler's filter cuts the top of the band by tens of decibels where audio made at
//!   16 kHz had it, and the baseline read that as a fault on every window;
//! - the baseline's distance to each domain's mean less that domain's offset ([`domain_offsets`]): the target
//!   mean comes from 10 clips, and normal target clips lie farther from it than source clips from theirs, so the
//!   target's offset (its clips' median distance with each clip left out of the mean, less the source's median)
//!   puts both domains on one scale. On the default synthetic set this alone lifts the baseline's score from
//!   0.6982 to 0.7142 (ABLATION.md; 0.7284 over all 128 bands), and it is what `combine` writes into `baseline/`;
//! - each system's scale: `(s − m) / (q − m)`, with `m` the median and `q` the 0.9 quantile of its scores of the
//!   section's **source-domain** normal training clips (the target-domain training clips are centres of the
//!   learned back end, so their own scores are 0 and say nothing of a spread). A source clip's model score leaves
//!   out the centroids that are its own windows, as `fit` scores it: where the section has no more source windows
//!   than the bundle's k-means k, every window is a centroid, and each clip scored 0 against its own. A source
//!   clip's baseline distance is measured by a level model fitted without its clip ([`HeldOut`]: ten folds), as
//!   new audio is: in-sample, 40 training clips made the baseline's 0.9 quantile one that most normal test clips
//!   exceeded;
//! - the combined score: `(1 − W)·baseline + W·model` (`--weight W`, 0.5 by default). On this scale 1 means
//!   "as high as the 0.9 quantile of the normal source clips, for both systems": the decision files mark a clip
//!   anomalous above 1 (with `--windows`, above the threshold calibrated on the combined score, as a bundle
//!   written with `--bundle` has it).
//!
//! By default each system scores whole clips (the baseline the mean log-mel of the clip, the model the mean of its
//! window scores, as `eval` does). With `--windows` both score each analysis window, as a daemon on a stream
//! would: the baseline's mean log-mel and Mahalanobis model per window (fitted on the training clips' windows),
//! both scales on the source training windows, and a clip's score the mean of its windows' combined scores.
//!
//! Nothing of the test clips goes into the scales, so the combined score runs on a stream as it is. With
//! `--windows --bundle OUT`, `combine` writes a copy of the bundle whose sections carry the baseline and the two
//! scales ([`sonitor_core::score::Baseline`]); the daemon and `eval` then score each window with
//! [`sonitor_core::score::window_score`]: the same combined score, put on the model's scale (an increasing
//! affine map of the one above, so it ranks the windows and clips alike). Each section's threshold
//! is calibrated again as `fit` calibrates it, the gamma quantile (the bundle's own quantile) of the combined
//! scores of the normal training windows of both domains ([`with_baseline`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sonitor_core::bundle::{Bundle, SectionModel as BundleSection};
use sonitor_core::dcase::{self, Clip, Split};
use sonitor_core::embed::EmbeddingGraph;
use sonitor_core::features::{FeatureExtractor, FeatureParams};
use sonitor_core::score::{self, Baseline};
use sonitor_core::{metrics, parallel};

use crate::baseline::{mean_log_mel, training_domains, SectionModel};
use crate::eval::{clip_score, embedder_of, section_model};
use crate::infer::window_views;
use crate::replace::Replacement;

#[derive(clap::Args, Debug, Clone)]
pub struct CombineArgs {
    /// Model bundle directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Data set root (DCASE layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Weight of the model's scaled score, from 0 (the baseline alone) to 1 (the model alone); the baseline's is
    /// 1 − W.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub weight: f64,
    /// Directory for the submission files of the combined score; the two systems' own go into its `baseline/`
    /// (the level baseline with its domain offsets) and `model/` (default: BUNDLE/scores-combined).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Score each analysis window both ways, as a daemon would (the baseline's mean log-mel and Mahalanobis
    /// distance per window, its model fitted on the training clips' windows; both scales on the source training
    /// windows), and a clip by the mean of its windows' combined scores. Without it each system scores whole
    /// clips (the baseline's mean log-mel of the clip, the model's mean window score).
    #[arg(long)]
    pub windows: bool,
    /// Print the combined score's metrics as one JSON object (the same as `metrics --json`).
    #[arg(long)]
    pub json: bool,
    /// Also write a bundle that scores as the daemon would with the combined score: a copy of `--model` whose
    /// sections carry the baseline and both scales, its thresholds calibrated again on the combined score.
    /// Needs `--windows` (the daemon scores windows).
    #[arg(long, requires = "windows", value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Replace the bundle (or checkpoint) that the `--bundle` directory holds, as `fit --force` does (without it,
    /// such a directory is refused).
    #[arg(long, requires = "bundle")]
    pub force: bool,
}

/// Where `combine` writes by default, inside the bundle directory.
pub const DEFAULT_OUT_DIR: &str = "scores-combined";

/// Per clip, a system's scores of its units: one for a whole clip, or one per analysis window.
type Units = Vec<Vec<f64>>;

/// What `combine` takes from one clip, read once: the model's window scores and the baseline's mean log-mel
/// vectors, one for the whole clip or, with `per_window`, one per analysis window (its features' band means).
struct ClipUnits {
    model: Vec<f64>,
    level: Vec<Vec<f64>>,
}

/// Which of a section's centroids a clip's windows are scored against, for the model's score (its cosine
/// distance alone).
#[derive(Clone, Copy)]
enum Against<'a> {
    /// None: the model's scores are not needed.
    Nothing,
    /// Every centroid.
    All(&'a [Vec<f32>]),
    /// Every centroid but the clip's own windows: a target-domain training window is a centroid itself (`fit`'s
    /// back end), and so is a source window where the section has no more source windows than k (or k-means left
    /// it a cluster of its own), so its own would score it 0. A centroid counts as the clip's own when it lies
    /// within a cosine distance of [`OWN_CENTRE`] of one of the clip's window embeddings (the same graph on the
    /// same audio gives the same vector).
    Others(&'a [Vec<f32>]),
}

/// See [`Against::Others`].
const OWN_CENTRE: f32 = 1e-6;

/// [`ClipUnits`] of every clip, on all cores; the model's scores as `against` says. Errors name the clip.
fn read_units(
    embedder: &EmbeddingGraph,
    params: &FeatureParams,
    clips: &[&Clip],
    against: Against,
    per_window: bool,
) -> anyhow::Result<Vec<ClipUnits>> {
    parallel::map_with_state(
        clips,
        || anyhow::Ok((FeatureExtractor::new(params.clone())?, Vec::new())),
        |(fx, frames), clip| {
            let audio = crate::data::load_clip(clip, params)?;
            let mut units = || -> anyhow::Result<ClipUnits> {
                let views = if matches!(against, Against::Nothing) && !per_window {
                    Vec::new()
                } else {
                    window_views(embedder, fx, &audio)?
                };
                let others: Vec<Vec<f32>>;
                let centroids = match against {
                    Against::Nothing => None,
                    Against::All(c) => Some(c),
                    Against::Others(c) => {
                        others = c
                            .iter()
                            .filter(|c| {
                                views.iter().all(|v| {
                                    score::min_cosine_distance(
                                        &v.embedding,
                                        std::slice::from_ref(c),
                                    ) > OWN_CENTRE
                                })
                            })
                            .cloned()
                            .collect();
                        Some(others.as_slice())
                    }
                };
                let model = centroids.map_or_else(Vec::new, |c| {
                    views
                        .iter()
                        .map(|v| f64::from(score::min_cosine_distance(&v.embedding, c)))
                        .collect()
                });
                let level = if per_window {
                    views.into_iter().map(|v| v.band_means).collect()
                } else {
                    vec![mean_log_mel(fx, frames, &audio)?]
                };
                Ok(ClipUnits { model, level })
            };
            units().with_context(|| format!("scoring {}", clip.path.display()))
        },
    )
}

/// The quantile of the normal source clips' scores that a scale maps to 1.
pub const SCALE_QUANTILE: f64 = 0.9;

/// The least spread a scale divides by: below it, the scores differ by rounding alone (a cosine distance of a
/// training window to a centroid made of itself is about 1e-8), and dividing by it blows rounding up into scores
/// of 1e5.
pub const MIN_SPREAD: f64 = 1e-6;

/// One system's scale in one section: the median of its normal source-domain training clips' scores goes to 0,
/// their [`SCALE_QUANTILE`] to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub median: f64,
    pub spread: f64,
}

impl Scale {
    /// Fits on the scores of the normal source-domain training clips. Refuses fewer than 2 scores, a score that
    /// is not finite, and scores whose median and quantile coincide (no spread to scale by).
    pub fn fit(scores: &[f64]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            scores.len() >= 2,
            "{} normal source-domain training clip(s); a scale needs at least 2",
            scores.len()
        );
        anyhow::ensure!(
            scores.iter().all(|s| s.is_finite()),
            "a training clip's score is not finite"
        );
        let mut sorted = scores.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = quantile(&sorted, 0.5);
        let spread = quantile(&sorted, SCALE_QUANTILE) - median;
        anyhow::ensure!(
            spread >= MIN_SPREAD,
            "the training clips' scores have no spread (median {median:.3e}, {SCALE_QUANTILE} quantile {:.3e})",
            median + spread
        );
        Ok(Self { median, spread })
    }
}

/// The `q` quantile of sorted values, linearly interpolated between the two nearest ranks (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Where the baseline's and the model's own submission files go, inside `combine`'s output directory.
pub const BASELINE_DIR: &str = "baseline";
pub const MODEL_DIR: &str = "model";

/// What [`score_dataset`] gives back.
pub struct Combined {
    /// The combined score's submission files, one per section with test clips.
    pub files: Vec<PathBuf>,
    /// With `per_window`: each section of the data set, with its [`Baseline`] and a threshold calibrated on the
    /// combined score from its training clips, for a bundle the daemon can run.
    pub sections: Vec<BundleSection>,
}

/// Scores every test clip both ways and writes the three sets of submission files (see the module's docs); with
/// `per_window`, also combines the sections that have no test clips (their training clips are enough).
pub fn score_dataset(
    bundle: &Bundle,
    data: &dcase::Dataset,
    out: &Path,
    weight: f64,
    per_window: bool,
) -> anyhow::Result<Combined> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&weight),
        "--weight {weight}: the model's weight must lie between 0 (the baseline alone) and 1 (the model alone)"
    );
    crate::data::train_clips(data)?;
    let embedder = embedder_of(bundle)?;
    // The baseline's mean log-mel from the features the bundle's graph is fed, as the daemon computes them.
    let params = bundle.manifest.features.clone();
    for dir in [
        out.to_path_buf(),
        out.join(BASELINE_DIR),
        out.join(MODEL_DIR),
    ] {
        crate::train::make_out_dir(&dir, "--out", "nothing was scored")?;
    }
    let mut files = Vec::new();
    let mut sections = Vec::new();
    for (machine_type, section) in data.sections() {
        let test: Vec<&Clip> = data.clips_of(&machine_type, section, Split::Test).collect();
        // A section without test clips has nothing to score, but per window its bundle section is made from the
        // training clips alone: a user's recordings of normal running are enough for a combined bundle.
        if test.is_empty() && !per_window {
            continue;
        }
        let where_ = || format!("{machine_type} section {section:02}");
        let sm = section_model(bundle, &machine_type, section)?;
        let (source, target) = training_domains(data, &machine_type, section);
        let read =
            |clips: &[&Clip], against| read_units(&embedder, &params, clips, against, per_window);
        // A training clip is scored as `fit` scored it, without the centroids that are its own windows (with no
        // more source windows than k, each is one, and every clip scored 0 against its own: no scale).
        let (source_u, test_u) = (
            read(&source, Against::Others(&sm.centroids))?,
            read(&test, Against::All(&sm.centroids))?,
        );
        // The target clips' model scores only go into a bundle's threshold.
        let target_u = read(
            &target,
            if per_window {
                Against::Others(&sm.centroids)
            } else {
                Against::Nothing
            },
        )?;
        // The lowest bands only, those every capture chain passes (`score::baseline_bands`): the distances below
        // read as many bands as the means hold.
        let bands = score::baseline_bands(&params);
        let level_vectors = |units: &[ClipUnits]| -> Vec<Vec<f64>> {
            units
                .iter()
                .flat_map(|u| u.level.iter().map(|v| v[..bands.min(v.len())].to_vec()))
                .collect()
        };
        // The level model on every clip (the bundle's), and the source training units measured as new audio
        // would be: each by a level model fitted without its clip (its fold of the clips), for the scale and the
        // threshold.
        let held_out =
            HeldOut::fit(&source_u, &level_vectors(&target_u), bands).with_context(where_)?;
        let (means, cholesky) = held_out.all.clone();
        let (domain_offsets, baseline_target) = domain_offsets(
            &means,
            &cholesky,
            &held_out.distances(&source_u, false, &[]).concat(),
            &target_u,
        );

        // Each system's scores in units: a clip, or with `per_window` each analysis window of a clip.
        let baseline_units = |units: &[ClipUnits]| -> Units {
            let mut scratch = Vec::new();
            units
                .iter()
                .map(|u| {
                    u.level
                        .iter()
                        .map(|v| {
                            score::mahalanobis_nearest(
                                v,
                                &means,
                                &domain_offsets,
                                &cholesky,
                                &mut scratch,
                            )
                        })
                        .collect()
                })
                .collect()
        };
        let model_units = |units: &[ClipUnits]| -> Units {
            units
                .iter()
                .map(|u| {
                    if per_window {
                        u.model.clone()
                    } else {
                        vec![clip_score(&u.model)]
                    }
                })
                .collect()
        };
        let (baseline_source, baseline_test) = (
            held_out.distances(&source_u, true, &domain_offsets),
            baseline_units(&test_u),
        );
        let (model_source, model_test) = (model_units(&source_u), model_units(&test_u));
        let baseline_scale = Scale::fit(&baseline_source.concat())
            .with_context(|| format!("{}: the baseline's scale", where_()))?;
        let model_scale = Scale::fit(&model_source.concat()).with_context(|| {
            format!(
                "{}: the model's scale, from its {} source training clips each scored against the {} centroids \
                 but its own windows (all of them centroids where the section has no more source training windows \
                 than the bundle's k-means k); record more normal clips of it",
                where_(),
                source.len(),
                sm.centroids.len()
            )
        })?;
        // The combination, as a bundle stores it: one formula for `combine`'s scores and the daemon's.
        let baseline = Baseline {
            means,
            cholesky,
            domain_offsets,
            distance_median: baseline_scale.median,
            distance_spread: baseline_scale.spread,
            score_median: model_scale.median,
            score_spread: model_scale.spread,
            weight,
        };

        let names: Vec<String> = test.iter().map(|c| c.file_name().to_string()).collect();
        let rows = |units: &Units| -> Vec<(String, f64)> {
            names
                .iter()
                .cloned()
                .zip(units.iter().map(|u| clip_score(u)))
                .collect()
        };
        let combined: Units = baseline_test
            .iter()
            .zip(&model_test)
            .map(|(b, m)| {
                b.iter()
                    .zip(m)
                    .map(|(&b, &m)| baseline.scaled(m, b))
                    .collect()
            })
            .collect();
        if per_window {
            sections.push(
                with_baseline(
                    sm,
                    baseline,
                    &[baseline_source.concat(), baseline_target.concat()].concat(),
                    &[model_source.concat(), model_units(&target_u).concat()].concat(),
                )
                .with_context(where_)?,
            );
        }
        // The decisions: by window, at the threshold calibrated on the combined score, on this scale (the bundle's
        // score is `median + spread · combined` of the model's scale, so these are `eval`'s decisions on the
        // bundle); by clip, above 1.
        let decide_above = match sections.last() {
            Some(s) if per_window => (s.threshold.value - model_scale.median) / model_scale.spread,
            _ => 1.0,
        };
        if !test.is_empty() {
            dcase::write_submission(
                &out.join(BASELINE_DIR),
                &machine_type,
                section,
                &rows(&baseline_test),
            )?;
            dcase::write_submission(
                &out.join(MODEL_DIR),
                &machine_type,
                section,
                &rows(&model_test),
            )?;
            let rows = rows(&combined);
            files.push(dcase::write_submission(out, &machine_type, section, &rows)?);
            let decisions: Vec<(String, bool)> = rows
                .iter()
                .map(|(n, s)| (n.clone(), *s > decide_above))
                .collect();
            dcase::write_decisions(out, &machine_type, section, &decisions)?;
        }
        eprintln!(
            "{}: {} source training clips set the scales (baseline median {:.4}, spread {:.4}, {}; model \
             median {:.4}, spread {:.4}), {} test clips scored",
            where_(),
            source.len(),
            baseline_scale.median,
            baseline_scale.spread,
            held_out.said(),
            model_scale.median,
            model_scale.spread,
            test.len()
        );
    }
    Ok(Combined { files, sections })
}

/// Into how many folds a section's source training clips are dealt for [`HeldOut`].
const FOLDS: usize = 10;

/// The level model fitted again without each fold of a section's source training clips (dealt to [`FOLDS`] folds
/// in turn), to measure each source unit as the bundle will measure new audio. Its distance to a model fitted
/// with it is far smaller where there are few clips for the mean log-mel's 123 dimensions: with 40 training clips,
/// a combined bundle's 0.9-quantile threshold put 0.33–0.67 of the normal test clips above it, and `combine`'s
/// decisions 7–12 of 12 (review25). Fewer than 3 source clips leave nothing to fit without one: their distances
/// are then in-sample, and [`HeldOut::said`] says so.
struct HeldOut {
    /// Per fold, the domain means and the covariance factor fitted without its clips; empty: in-sample.
    models: Vec<(Vec<Vec<f64>>, Vec<f64>)>,
    /// The model fitted on every clip: the bundle's, and the in-sample case's.
    all: (Vec<Vec<f64>>, Vec<f64>),
}

impl HeldOut {
    /// `source`'s level vectors (their first `bands`) and `target`'s: the model on all of them, and without each
    /// fold of the source clips.
    fn fit(source: &[ClipUnits], target: &[Vec<f64>], bands: usize) -> anyhow::Result<Self> {
        let k = FOLDS.min(source.len());
        let vectors = |fold: Option<usize>| -> Vec<Vec<f64>> {
            source
                .iter()
                .enumerate()
                .filter(|(i, _)| fold.is_none_or(|f| i % k != f))
                .flat_map(|(_, u)| u.level.iter().map(|v| v[..bands.min(v.len())].to_vec()))
                .collect()
        };
        let all = SectionModel::fit(&vectors(None), target)?.parts();
        let models = if k < 3 {
            Vec::new()
        } else {
            (0..k)
                .map(|f| {
                    SectionModel::fit(&vectors(Some(f)), target)
                        .map(|m| m.parts())
                        .with_context(|| format!("the level model without fold {} of {k}", f + 1))
                })
                .collect::<anyhow::Result<_>>()?
        };
        Ok(Self { models, all })
    }

    /// Each of `source`'s units' distance (the clips `fit` was given, in order): to the source mean alone, or
    /// with `nearest` to the nearer domain mean less its `offsets`, as [`score::mahalanobis_nearest`] measures it.
    fn distances(&self, source: &[ClipUnits], nearest: bool, offsets: &[f64]) -> Units {
        let mut scratch = Vec::new();
        source
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let (means, cholesky) = match self.models.len() {
                    0 => &self.all,
                    k => &self.models[i % k],
                };
                let means = if nearest { &means[..] } else { &means[..1] };
                u.level
                    .iter()
                    .map(|v| score::mahalanobis_nearest(v, means, offsets, cholesky, &mut scratch))
                    .collect()
            })
            .collect()
    }

    /// How the source units were measured, for `combine`'s line on the scales.
    fn said(&self) -> String {
        match self.models.len() {
            0 => "in-sample: too few clips to leave any out".into(),
            k => format!("each clip measured without its fold of {k}"),
        }
    }
}

/// The baseline's [`Baseline::domain_offsets`] for a section whose level model has the domain `means` (the
/// source's first) and the covariance factor `cholesky`, and the target training units' distances, as
/// [`with_baseline`] calibrates on them. `source_d`: the source training units' distances to the source mean,
/// each measured without its own clip ([`HeldOut`]).
///
/// The target mean is fitted on a few clips, so its own clips lie nearer to it than a new normal target clip
/// would: each target unit is measured against the mean of the other target clips (leave one clip out). The
/// target's offset is the median of those distances less the median of `source_d`, so that a normal window of
/// either domain lies at about the same distance. On the default synthetic set the target's median is 0.9–3.7 above the source's
/// (ABLATION.md). Fewer than 2 target clips give no offsets, and the target units' distances with their own clip
/// in the mean.
fn domain_offsets(
    means: &[Vec<f64>],
    cholesky: &[f64],
    source_d: &[f64],
    target: &[ClipUnits],
) -> (Vec<f64>, Units) {
    let mut scratch = Vec::new();
    let mut to = |v: &[f64], means: &[Vec<f64>], offsets: &[f64]| {
        score::mahalanobis_nearest(v, means, offsets, cholesky, &mut scratch)
    };
    let units = target.iter().map(|u| u.level.len());
    let n_target: usize = units.clone().sum();
    if means.len() < 2
        || target.len() < 2
        || source_d.is_empty()
        || units.clone().any(|n| n == n_target)
    {
        let in_sample = target
            .iter()
            .map(|u| u.level.iter().map(|v| to(v, means, &[])).collect())
            .collect();
        return (Vec::new(), in_sample);
    }
    let mut sum = vec![0.0; means[1].len()];
    for v in target.iter().flat_map(|u| &u.level) {
        sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
    }
    let left_out: Units = target
        .iter()
        .map(|u| {
            let others = (n_target - u.level.len()) as f64;
            let mut mean = sum.clone();
            for v in &u.level {
                mean.iter_mut().zip(v).for_each(|(m, x)| *m -= x);
            }
            mean.iter_mut().for_each(|m| *m /= others);
            let mean = [mean];
            u.level.iter().map(|v| to(v, &mean, &[])).collect()
        })
        .collect();
    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        quantile(&v, 0.5)
    };
    let offset = median(left_out.concat()) - median(source_d.to_vec());
    let units = target
        .iter()
        .zip(&left_out)
        .map(|(u, d)| {
            u.level
                .iter()
                .zip(d)
                .map(|(v, d)| to(v, &means[..1], &[]).min(d - offset))
                .collect()
        })
        .collect();
    (vec![0.0, offset], units)
}

/// `section` with `baseline` and a threshold calibrated again (as `fit` calibrates,
/// with the section's own quantile) on the combined scores of the normal training windows of both domains, given
/// as the two systems' scores of each window. A target window's scores leave out its own clip: its model score
/// its clip's centres ([`Against::Others`]), as `fit` does, and its distance its clip's share of the target mean
/// ([`domain_offsets`]). A source window's model score leaves out the centroids that are its clip's windows (all
/// of them where the section has no more source windows than k), as `fit` does, but not a k-means centre its
/// clip's windows helped to make (`fit` makes it again without them, which `combine` cannot: it has the centres,
/// not their windows); its distance is measured by a level model fitted without its clip ([`HeldOut`]).
fn with_baseline(
    section: &BundleSection,
    baseline: Baseline,
    baseline_scores: &[f64],
    model_scores: &[f64],
) -> anyhow::Result<BundleSection> {
    let combined: Vec<f64> = baseline_scores
        .iter()
        .zip(model_scores)
        .map(|(&b, &m)| baseline.combine(m, b))
        .collect();
    let calibration = crate::threshold::calibrate(&combined, section.threshold.quantile);
    if let Some(w) = calibration.warning(&section.key()) {
        eprintln!("{w}");
    }
    let threshold = calibration.threshold;
    if let Some(why) = score::threshold_problem(threshold.value) {
        anyhow::bail!(
            "the combined scores of {} normal training windows give no threshold: the {} quantile is {why}",
            combined.len(),
            threshold.quantile
        );
    }
    Ok(BundleSection {
        threshold,
        baseline: Some(baseline),
        ..section.clone()
    })
}

pub fn run(a: &CombineArgs) -> anyhow::Result<()> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.join(DEFAULT_OUT_DIR));
    crate::train::check_is_dir(&out, "--out")?;
    let bundle = Bundle::load(&a.model)?;
    if let Some(s) = bundle
        .manifest
        .sections
        .iter()
        .find(|s| s.baseline.is_some())
    {
        anyhow::bail!(
            "{}: section {} already combines the model with a level baseline (a bundle `combine --bundle` \
             wrote); combine the bundle it was made from",
            a.model.display(),
            s.key()
        );
    }
    // Before any scoring: where the new bundle goes.
    let _writing = match &a.bundle {
        Some(dir) => {
            anyhow::ensure!(
                crate::train::resolved(dir) != crate::train::resolved(&a.model),
                "--bundle {} is the --model bundle: the combined bundle goes into another directory, so that the \
                 bundle it was made from stays (combine refuses a combined bundle)",
                dir.display()
            );
            Some(crate::train::claim_out(
                dir, "--bundle", None, a.force, &a.data,
            )?)
        }
        None => None,
    };
    let data = dcase::scan(&a.data)?;
    let started = std::time::Instant::now();
    let Combined { files, sections } = score_dataset(&bundle, &data, &out, a.weight, a.windows)?;
    // Without test clips the only thing to make is a bundle.
    anyhow::ensure!(
        !files.is_empty() || (a.bundle.is_some() && !sections.is_empty()),
        "{}: no test clips to score",
        data.root.display()
    );
    let (baseline_dir, model_dir) = (out.join(BASELINE_DIR), out.join(MODEL_DIR));
    if files.is_empty() {
        eprintln!(
            "no test clips; the training clips read in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "scored in {:.1} s; submission files in {} (the baseline's in {}, the model's in {})",
            started.elapsed().as_secs_f64(),
            out.display(),
            baseline_dir.display(),
            model_dir.display()
        );
    }
    // Metrics need labelled test clips; the bundle is written either way (its sections come from the training
    // clips), with the metrics in its provenance when there are some.
    let counts = crate::eval::unlabelled_test_clips(&data);
    let report = if files.is_empty() || counts.0 > 0 {
        None
    } else {
        let evaluate = |dir: &Path| {
            metrics::evaluate_submission(&data, dir).with_context(|| {
                format!(
                    "evaluating {} against {}",
                    dir.display(),
                    data.root.display()
                )
            })
        };
        let report = evaluate(&out)?;
        eprintln!(
            "official score: level baseline (domain offsets) {}, model {}, combined (model weight {}) {}",
            metrics::cell(evaluate(&baseline_dir)?.official_score),
            metrics::cell(evaluate(&model_dir)?.official_score),
            a.weight,
            metrics::cell(report.official_score)
        );
        Some(report)
    };
    if let Some(dir) = &a.bundle {
        if a.force {
            // As `fit --force`: the old bundle and its checkpoint wait in DIR/.replaced until the new one is
            // written, and come back if it cannot be.
            let mut old = Replacement::begin(dir)?;
            match old
                .set_aside_bundle()
                .and_then(|()| write_bundle(&bundle, sections, a.weight, report.as_ref(), dir))
            {
                Ok(()) => old.finish()?,
                Err(e) => return Err(old.undo(e)),
            }
        } else {
            write_bundle(&bundle, sections, a.weight, report.as_ref(), dir)?;
        }
    }
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    match report {
        Some(report) => crate::cli::print_report(&report, a.json),
        None if files.is_empty() => crate::eval::print_no_metrics_because(
            "the data set has no test clips (the bundle's sections come from its training clips)",
            &out,
            &files,
            a.json,
        ),
        None => crate::eval::print_no_metrics(counts, &out, &files, a.json),
    }
}

/// Writes `bundle` again into `dir` with the combined `sections` in place of its own (a section the data set
/// has no clips of keeps its model alone, and is named), a new model id, and the combination recorded in the
/// provenance (`model.combine`, and `metrics` on the data set's test clips, `null` without labelled ones).
fn write_bundle(
    bundle: &Bundle,
    sections: Vec<BundleSection>,
    weight: f64,
    report: Option<&metrics::Report>,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut manifest = bundle.manifest.clone();
    for s in manifest.sections.iter_mut() {
        match sections.iter().find(|c| c.key() == s.key()) {
            Some(c) => *s = c.clone(),
            None => eprintln!(
                "{}: no clips in the data set; its model stays alone in the new bundle",
                s.key()
            ),
        }
    }
    manifest.model_id = format!("{}-combined", manifest.model_id);
    if let Some(obj) = manifest.provenance.model.as_object_mut() {
        obj.insert(
            "combine".into(),
            serde_json::json!({
                "tool": format!("sonitor-train {}", env!("CARGO_PKG_VERSION")),
                "command": std::env::args().collect::<Vec<_>>().join(" "),
                "from_model_id": bundle.manifest.model_id,
                "weight": weight,
                "scale_quantile": SCALE_QUANTILE,
                "baseline_shrinkage": crate::baseline::SHRINKAGE,
                "baseline_bands": score::baseline_bands(&manifest.features),
                "baseline_band_limit": "bands up to 0.45 of the sample rate (score::BASELINE_BAND_LIMIT)",
                "domain_offsets": "the target's median leave-one-clip-out distance less the source's median",
            }),
        );
    }
    manifest.provenance.metrics = serde_json::to_value(report)?;
    Bundle::write(dir, &manifest, bundle.onnx_bytes())
        .with_context(|| format!("writing {}", dir.display()))?;
    // The thresholds below are calibrated again at the bundle's own quantile: which one, and what an alarm wants.
    let mut quantiles: Vec<f64> = manifest
        .sections
        .iter()
        .map(|s| s.threshold.quantile)
        .collect();
    quantiles.sort_by(f64::total_cmp);
    quantiles.dedup();
    for q in quantiles {
        eprintln!("{}", crate::threshold::quantile_note(q));
    }
    for s in &manifest.sections {
        eprintln!(
            "{}: threshold {} on the combined score (the model alone had {})",
            s.key(),
            crate::threshold::significant(s.threshold.value),
            crate::threshold::significant(
                bundle
                    .manifest
                    .section_by_key(&s.key())
                    .map_or(f64::NAN, |o| o.threshold.value)
            )
        );
    }
    eprintln!("combined bundle written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_maps_the_median_to_0_and_the_quantile_to_1() {
        // Sorted: 1 2 3 4 5 6 7 8 9 10 → median 5.5; 0.9 quantile at rank 8.1: 9.1.
        let s = Scale::fit(&[3.0, 1.0, 2.0, 10.0, 4.0, 5.0, 9.0, 6.0, 8.0, 7.0]).unwrap();
        assert!((s.median - 5.5).abs() < 1e-12, "{s:?}");
        assert!((s.spread - 3.6).abs() < 1e-12, "{s:?}");
        let apply = |x: f64| (x - s.median) / s.spread;
        assert!(apply(5.5).abs() < 1e-12);
        assert!((apply(9.1) - 1.0).abs() < 1e-12);
        assert!((apply(1.9) + 1.0).abs() < 1e-12);
    }

    /// One band, the identity covariance: distances are |x − μ|. Source values 0, ±1, ±2 around their mean 0
    /// (median distance 1); target clips at 10, 12, 14, whose mean is 12. Left out, each target clip's distance to
    /// the other two's mean is 3, 0 and 3 (median 3), so the target's offset is 3 − 1 = 2, and each target unit's
    /// distance is the nearer of the source mean's and its left-out one less 2.
    #[test]
    fn the_target_offset_is_the_left_out_median_less_the_source_median() {
        let units = |values: &[f64]| -> Vec<ClipUnits> {
            values
                .iter()
                .map(|&v| ClipUnits {
                    model: Vec::new(),
                    level: vec![vec![v]],
                })
                .collect()
        };
        let source_d = [0.0, 1.0, 1.0, 2.0, 2.0];
        let target = units(&[10.0, 12.0, 14.0]);
        let means = [vec![0.0], vec![12.0]];
        let (offsets, d) = domain_offsets(&means, &[1.0], &source_d, &target);
        assert_eq!(offsets, vec![0.0, 2.0]);
        assert_eq!(d, vec![vec![1.0], vec![-2.0], vec![1.0]]);
        // One target clip: nothing to leave out, so no offsets and the distance with the clip in the mean.
        let (offsets, d) = domain_offsets(&means, &[1.0], &source_d, &target[1..2]);
        assert!(offsets.is_empty());
        assert_eq!(d, vec![vec![0.0]]);
        // No target domain at all.
        let (offsets, d) = domain_offsets(&means[..1], &[1.0], &source_d, &[]);
        assert!(offsets.is_empty() && d.is_empty());
    }

    /// Each source clip is measured by the level model fitted without its fold (clip i in fold i mod 10), which
    /// puts 40 clips in 30 dimensions far from where the model fitted on all of them puts them; with fewer than
    /// 3 clips there is nothing to leave out, and the distances are the in-sample ones.
    #[test]
    fn the_source_clips_are_measured_without_their_fold() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let source: Vec<ClipUnits> = (0..40)
            .map(|_| ClipUnits {
                model: Vec::new(),
                level: vec![(0..30).map(|_| next()).collect()],
            })
            .collect();
        let held_out = HeldOut::fit(&source, &[], 30).unwrap();
        assert_eq!(held_out.said(), "each clip measured without its fold of 10");
        let d = held_out.distances(&source, true, &[]);
        let vectors = |keep: &dyn Fn(usize) -> bool| -> Vec<Vec<f64>> {
            (0..40)
                .filter(|&i| keep(i))
                .map(|i| source[i].level[0].clone())
                .collect()
        };
        let all = SectionModel::fit(&vectors(&|_| true), &[]).unwrap();
        let mut larger = 0;
        for (i, u) in source.iter().enumerate() {
            let without = SectionModel::fit(&vectors(&|j| j % 10 != i % 10), &[]).unwrap();
            assert!(
                (d[i][0] - without.score(&u.level[0])).abs() < 1e-9,
                "clip {i}"
            );
            larger += usize::from(d[i][0] > all.score(&u.level[0]));
        }
        assert_eq!(
            larger, 40,
            "every clip lies farther from a model fitted without it"
        );
        let two = HeldOut::fit(&source[..2], &[], 30).unwrap();
        assert!(two.said().starts_with("in-sample"), "{}", two.said());
        let all_two = SectionModel::fit(&vectors(&|i| i < 2), &[]).unwrap();
        let d = two.distances(&source[..2], true, &[]);
        assert!((d[1][0] - all_two.score(&source[1].level[0])).abs() < 1e-12);
    }

    #[test]
    fn a_scale_refuses_what_it_cannot_scale_by() {
        let e = |v: &[f64]| Scale::fit(v).unwrap_err().to_string();
        assert!(e(&[1.0]).contains("at least 2"), "{}", e(&[1.0]));
        assert!(e(&[1.0, f64::NAN]).contains("not finite"));
        assert!(e(&[0.5; 10]).contains("no spread"), "{}", e(&[0.5; 10]));
        // Rounding noise is no spread either: a score of 1e5 came out of it.
        let noise = [0.0, 1e-9, 3e-9, 2e-9, 0.0, 4e-9, 1e-9, 2e-8];
        assert!(e(&noise).contains("no spread"), "{}", e(&noise));
    }
}
