//! Embedding and scoring: [`Embedder`] runs a bundle's embedding model with tract (through
//! [`sonitor_core::embed`], the loader `sonitor-train eval` uses too: the plan optimised once at start-up and its
//! run state reused for every window; inputs fed by name in the graph's own order, from the feature views the
//! manifest assigns), and the inference thread ([`spawn_inference`]) embeds each window's features and scores the
//! embedding against its section's centroids, with the section's level baseline when the bundle has one
//! ([`sonitor_core::score::window_score`], `eval`'s function). The scores go to the detectors ([`crate::detect`]).
//! A reload gives it a machine's new model ([`model_change`], [`ModelSwap`]) between two windows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use sonitor_core::bundle::{Bundle, Manifest, SectionModel};
use sonitor_core::embed::{EmbeddingGraph, EmbeddingRun};
use sonitor_core::features::{FeatureParams, Features};
use sonitor_core::score::window_score;

use crate::features::FeatureMsg;
use crate::metrics::Metrics;

pub struct Embedder {
    /// The bundle's graph with its run state, kept from window to window.
    run: EmbeddingRun,
    pub model_id: String,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("run", &self.run)
            .finish()
    }
}

impl Embedder {
    /// Loads and optimises the bundle's graph ([`EmbeddingGraph::of_bundle`]: the bytes whose checksum
    /// [`Bundle::load`] verified, the manifest's input shapes and its output by name); fails with the bundle path
    /// and tract's reason.
    pub fn load(bundle: &Bundle) -> anyhow::Result<Self> {
        let graph = Self::graph(bundle)?;
        Self::of_graph(bundle, &graph)
    }

    fn graph(bundle: &Bundle) -> anyhow::Result<EmbeddingGraph> {
        EmbeddingGraph::of_bundle(bundle).with_context(|| format!("{}", bundle.onnx_path.display()))
    }

    fn of_graph(bundle: &Bundle, graph: &EmbeddingGraph) -> anyhow::Result<Self> {
        let run = graph
            .runner()
            .with_context(|| format!("{}", bundle.onnx_path.display()))?;
        Ok(Self {
            run,
            model_id: bundle.manifest.model_id.clone(),
        })
    }

    /// What `sonitor validate` (and a reload, and the start of `run`) asks of a bundle beyond [`Bundle::load`]'s
    /// checks: tract builds the plan `run` would build ([`Embedder::load`]) and runs it once on one window of
    /// all-zero features, which gives `embedding_dim` values. A graph tract cannot read, type, optimise or run
    /// (an operator it lacks, shapes that do not fit the manifest's) is found here, not by a service that then
    /// fails at every start. Returns an embedder of the same plan with a run state that has not run yet, for
    /// `run` to use rather than build the graph again: the state that ran here is dropped here. A state run on
    /// this thread (the controller's) and dropped on the inference thread left about 12 KB of tract's per-thread
    /// memory behind each time, so a reload with a new graph would grow the daemon a little each time.
    pub fn check(bundle: &Bundle) -> anyhow::Result<Self> {
        let graph = Self::graph(bundle)?;
        let mut e = Self::of_graph(bundle, &graph)?;
        let p = &bundle.manifest.features;
        let f = Features {
            log_mel: vec![0.0; p.log_mel_shape().iter().product()],
            spectrum: vec![0.0; p.spectrum_len()],
            band_means: vec![0.0; p.n_mels],
        };
        let mut out = Vec::new();
        e.embed(&f, &mut out).with_context(|| {
            format!(
                "{}: one window of all-zero features",
                bundle.onnx_path.display()
            )
        })?;
        drop(e);
        Self::of_graph(bundle, &graph)
    }

    /// The embedding of one window's features.
    pub fn embed(&mut self, f: &Features, out: &mut Vec<f32>) -> anyhow::Result<()> {
        Ok(self.run.embed_into(f, out)?)
    }

    /// Times every node of one run ([`EmbeddingRun::profile_nodes`], `sonitor-bench window --nodes`).
    pub fn profile_nodes(
        &mut self,
        f: &Features,
        timed: impl FnMut(&str, &str, f64),
    ) -> anyhow::Result<()> {
        Ok(self.run.profile_nodes(f, timed)?)
    }
}

/// A window's score, on its way to the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMsg {
    pub machine: usize,
    pub t_end_ms: u64,
    /// `None`: the window could not be scored (its features failed, counted and logged by the feature thread;
    /// or the model failed on it, or its score was not a finite number, counted and logged by the inference
    /// thread). The controller tells the machine's health from a run of
    /// these ([`crate::detect::NO_SCORES_AFTER`]).
    pub score: Option<f64>,
    /// The window's level (RMS, dBFS), by which the daemon tells a machine that is not running.
    pub level_dbfs: f32,
}

/// What the inference thread needs per machine.
pub struct Scorer {
    /// Index into the embedders.
    pub model: usize,
    /// The machine's section of its bundle: centroids, and the level baseline if the bundle has one; one copy
    /// for the machines scored with the same section.
    pub section: Arc<SectionModel>,
}

/// What a machine is scored with, as the controller knows it: a reload compares the bundle on disk with it
/// ([`model_change`]).
#[derive(Debug, Clone)]
pub struct MachineModel {
    /// Index of its graph among the inference thread's embedders.
    pub embedder: usize,
    pub onnx_sha256: String,
    pub model_id: String,
    pub features: FeatureParams,
    pub section: Arc<SectionModel>,
}

impl MachineModel {
    /// `section` of the bundle whose manifest is `manifest`, run by the graph at `embedder`.
    pub fn of(manifest: &Manifest, section: Arc<SectionModel>, embedder: usize) -> Self {
        Self {
            embedder,
            onnx_sha256: manifest.onnx_sha256.clone(),
            model_id: manifest.model_id.clone(),
            features: manifest.features.clone(),
            section,
        }
    }

    /// What the inference thread scores the machine with.
    pub fn scorer(&self) -> Scorer {
        Scorer {
            model: self.embedder,
            section: self.section.clone(),
        }
    }
}

/// What a reload does with a machine's model, given its bundle's manifest as it is on disk now.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChange {
    /// The bundle holds what the machine is scored with.
    Same,
    /// Applied by the reload (the same feature parameters, so the audio's way up to the graph stays): what
    /// changed, for the log.
    Apply(String),
    /// The feature parameters changed (window, rate, bands; their names): the readers and the feature thread
    /// are built for the running ones, so only a restart applies the bundle.
    Restart(String),
}

/// Compares the model a machine runs with `new`, the one its bundle and section in the file as reloaded give
/// (its `embedder` is not read); `moved` says which other bundle or section the file names, if it does.
pub fn model_change(
    running: &MachineModel,
    new: &MachineModel,
    moved: Option<String>,
) -> ModelChange {
    if new.features != running.features {
        return ModelChange::Restart(
            feature_differences(&running.features, &new.features).join(", "),
        );
    }
    let (old, section) = (&running.section, &new.section);
    let mut what: Vec<String> = moved.into_iter().collect();
    if new.onnx_sha256 != running.onnx_sha256 {
        what.push(format!("model {} → {}", running.model_id, new.model_id));
    }
    if section.centroids != old.centroids {
        what.push(format!(
            "centroids ({} → {})",
            old.centroids.len(),
            section.centroids.len()
        ));
    }
    if section.threshold.value != old.threshold.value {
        what.push(format!(
            "threshold {} → {}",
            old.threshold.value, section.threshold.value
        ));
    } else if section.threshold != old.threshold {
        what.push("the threshold's calibration".into());
    }
    match (&old.baseline, &section.baseline) {
        (None, Some(_)) => what.push("level baseline added".into()),
        (Some(_), None) => what.push("level baseline removed".into()),
        (Some(a), Some(b)) if a != b => what.push("level baseline".into()),
        _ => {}
    }
    if what.is_empty() {
        ModelChange::Same
    } else {
        ModelChange::Apply(what.join(", "))
    }
}

/// The names of the feature parameters that differ (their serialised keys).
fn feature_differences(a: &FeatureParams, b: &FeatureParams) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["features".into()];
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A reload's new models ([`crate::detect::Controller::reload`]), applied by the inference thread before the next
/// window it takes: graphs it did not run (at the indexes the controller gave them), the machines' new scorers,
/// and the graphs no machine is scored with any more, which it drops.
#[derive(Default)]
pub struct ModelSwap {
    pub embedders: Vec<(usize, Embedder)>,
    pub scorers: Vec<(usize, Scorer)>,
    pub dropped: Vec<usize>,
}

impl ModelSwap {
    pub fn is_empty(&self) -> bool {
        self.embedders.is_empty() && self.scorers.is_empty() && self.dropped.is_empty()
    }

    fn apply(self, embedders: &mut Vec<Option<Embedder>>, scorers: &mut [Scorer]) {
        for (k, e) in self.embedders {
            if embedders.len() <= k {
                embedders.resize_with(k + 1, || None);
            }
            embedders[k] = Some(e);
        }
        for (i, sc) in self.scorers {
            if let Some(slot) = scorers.get_mut(i) {
                *slot = sc;
            }
        }
        for k in self.dropped {
            if let Some(e) = embedders.get_mut(k) {
                *e = None;
            }
        }
    }
}

/// The inference thread: embeds each window with the machine's model and scores it.
pub fn spawn_inference(
    embedders: Vec<Embedder>,
    mut scorers: Vec<Scorer>,
    swaps: Receiver<ModelSwap>,
    features: Receiver<FeatureMsg>,
    recycle: Sender<Features>,
    out: Sender<ScoreMsg>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let mut embedders: Vec<Option<Embedder>> = embedders.into_iter().map(Some).collect();
            let mut emb = Vec::new();
            let mut scratch = Vec::new();
            // A swap is taken as it comes, windows or not (an input away for hours does not hold the old graphs
            // in memory), and before the next window in any case.
            let mut swaps = swaps;
            loop {
                let f = crossbeam_channel::select! {
                    recv(swaps) -> s => {
                        match s {
                            Ok(swap) => swap.apply(&mut embedders, &mut scorers),
                            // The controller is gone: the daemon is stopping; the windows still queued are
                            // scored.
                            Err(_) => swaps = crossbeam_channel::never(),
                        }
                        continue;
                    }
                    recv(features) -> f => match f {
                        Ok(f) => f,
                        Err(_) => break,
                    },
                };
                while let Ok(swap) = swaps.try_recv() {
                    swap.apply(&mut embedders, &mut scorers);
                }
                // A slow board, in tests: each window takes the pause.
                crate::fault::pause("inference");
                let started = Instant::now();
                let sc = &scorers[f.machine];
                let m = &metrics.machines[f.machine];
                // A window whose features failed (counted and logged by the feature thread) is not embedded.
                let embedded = (!f.failed).then(|| match embedders.get_mut(sc.model) {
                    Some(Some(e)) => e.embed(&f.features, &mut emb).map(|()| {
                        window_score(&sc.section, &emb, &f.features.band_means, &mut scratch)
                    }),
                    // Not reached: the controller drops a graph only when no machine is scored with it.
                    _ => Err(anyhow::anyhow!("model {} is not loaded", sc.model)),
                });
                // The features are not needed after scoring, whatever happens to the score.
                let _ = recycle.try_send(f.features);
                let score = match embedded {
                    None => None,
                    Some(Err(e)) => {
                        if let Some(n) = m.inference_errors.inc_log_due() {
                            log::error!(
                                "{}: window at {} ms not scored: {e:#}; dropped, {n} so far \
                                 (sonitor_inference_errors_total)",
                                m.name,
                                f.t_end_ms
                            );
                        }
                        None
                    }
                    Some(Ok(score)) => {
                        m.inferences.inc();
                        if score.is_finite() {
                            Some(score)
                        } else {
                            // Non-finite audio (a float stream with huge or NaN samples) or a model that
                            // overflows: such a score would raise or hold an alarm on garbage.
                            if let Some(n) = m.invalid_scores.inc_log_due() {
                                log::warn!(
                                    "{}: window at {} ms scored {score} (not a finite number: the audio or the \
                                     model's output is not finite); dropped, {n} so far \
                                     (sonitor_invalid_scores_total)",
                                    m.name,
                                    f.t_end_ms
                                );
                            }
                            None
                        }
                    }
                };
                // The work the window cost, not its wait in the queues: measured from its cut, a replay as fast
                // as possible counted eleven times the process's CPU time (every window waits its turn there).
                let spent = f.compute_seconds + started.elapsed().as_secs_f64();
                m.inference_seconds_sum
                    .set_f64(m.inference_seconds_sum.get_f64() + spent);
                // An unscored window goes on too (without a score, not to the detector): the controller reports
                // a machine whose windows keep failing (health NO_SCORES) and settles the window.
                let msg = ScoreMsg {
                    machine: f.machine,
                    t_end_ms: f.t_end_ms,
                    score,
                    level_dbfs: f.level_dbfs,
                };
                let sent = if f.lossless {
                    out.send(msg).is_ok()
                } else {
                    out.send_timeout(msg, Duration::from_secs(1)).is_ok()
                };
                if !sent {
                    metrics.scores_dropped.inc();
                    m.settled.inc();
                }
            }
        })
}

/// A machine's model for tests: a pump section of two centroids whose threshold is `threshold`.
#[cfg(test)]
pub(crate) fn test_model(threshold: f64) -> MachineModel {
    MachineModel {
        embedder: 0,
        onnx_sha256: "a".repeat(64),
        model_id: "m1".into(),
        features: FeatureParams::default(),
        section: Arc::new(SectionModel {
            machine_type: "pump".into(),
            section: 0,
            centroids: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            n_source_centroids: 2,
            n_target_centroids: 0,
            threshold: sonitor_core::bundle::Threshold {
                value: threshold,
                method: "gamma-quantile".into(),
                quantile: 0.9,
                gamma_shape: Some(2.0),
                gamma_scale: Some(0.1),
            },
            baseline: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_section(m: &MachineModel, edit: impl FnOnce(&mut SectionModel)) -> MachineModel {
        let mut s = (*m.section).clone();
        edit(&mut s);
        MachineModel {
            section: Arc::new(s),
            ..m.clone()
        }
    }

    #[test]
    fn a_reload_applies_what_changed_behind_the_features_and_names_it() {
        let running = test_model(0.4);
        // The bundle as it was (read again: another copy, another index), and the same under another path.
        let same = MachineModel {
            embedder: usize::MAX,
            ..test_model(0.4)
        };
        assert_eq!(model_change(&running, &same, None), ModelChange::Same);
        assert_eq!(
            model_change(&running, &same, Some("/a x → /b x".into())),
            ModelChange::Apply("/a x → /b x".into())
        );
        // Calibrated again; the calibration alone; other centroids.
        assert_eq!(
            model_change(&running, &test_model(0.5), None),
            ModelChange::Apply("threshold 0.4 → 0.5".into())
        );
        let refit = with_section(&running, |s| s.threshold.gamma_shape = Some(2.5));
        assert_eq!(
            model_change(&running, &refit, None),
            ModelChange::Apply("the threshold's calibration".into())
        );
        let centroids = with_section(&running, |s| s.centroids.push(vec![0.6, 0.8]));
        assert_eq!(
            model_change(&running, &centroids, None),
            ModelChange::Apply("centroids (2 → 3)".into())
        );
        // Trained again: another graph, with every part of its section new.
        let retrained = MachineModel {
            onnx_sha256: "b".repeat(64),
            model_id: "m2".into(),
            ..with_section(&test_model(0.6), |s| s.centroids = vec![vec![0.0, 1.0]])
        };
        assert_eq!(
            model_change(&running, &retrained, None),
            ModelChange::Apply("model m1 → m2, centroids (2 → 1), threshold 0.4 → 0.6".into())
        );
    }

    #[test]
    fn other_feature_parameters_need_a_restart_whatever_else_changed() {
        let running = test_model(0.4);
        let mut new = test_model(0.5);
        new.features.fmax_hz = 7_000.0;
        new.features.log_floor = 1e-3;
        assert_eq!(
            model_change(&running, &new, None),
            ModelChange::Restart("fmax_hz, log_floor".into())
        );
    }

    #[test]
    fn a_swap_replaces_scorers_and_drops_the_graphs_it_names() {
        let section = test_model(0.4).section;
        let scorer = |model| Scorer {
            model,
            section: section.clone(),
        };
        let mut embedders: Vec<Option<Embedder>> = vec![None, None];
        let mut scorers = vec![scorer(0), scorer(1), scorer(1)];
        let swap = ModelSwap {
            embedders: Vec::new(),
            scorers: vec![(1, scorer(0)), (2, scorer(0)), (7, scorer(0))],
            dropped: vec![1, 9],
        };
        assert!(!swap.is_empty() && ModelSwap::default().is_empty());
        swap.apply(&mut embedders, &mut scorers);
        assert_eq!(
            scorers.iter().map(|s| s.model).collect::<Vec<_>>(),
            [0, 0, 0]
        );
        assert_eq!(embedders.len(), 2);
    }
}
