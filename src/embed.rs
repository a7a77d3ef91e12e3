//! Embedding and scoring: [`Embedder`] runs a bundle's embedding model with tract (through
//! [`sonitor_core::embed`], the loader `sonitor-train eval` uses too: the plan optimised once at start-up and its
//! run state reused for every window; inputs fed by name in the graph's own order, from the feature views the
//! manifest assigns), and the inference thread ([`spawn_inference`]) embeds each window's features and scores the
//! embedding against its section's centroids, with the section's level baseline when the bundle has one
//! ([`sonitor_core::score::window_score`], `eval`'s function). The scores go to the detectors ([`crate::detect`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use sonitor_core::bundle::{Bundle, SectionModel};
use sonitor_core::embed::{EmbeddingGraph, EmbeddingRun};
use sonitor_core::features::Features;
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
        let path = bundle.onnx_path.display();
        let run = EmbeddingGraph::of_bundle(bundle)
            .and_then(|g| g.runner())
            .with_context(|| format!("{path}"))?;
        Ok(Self {
            run,
            model_id: bundle.manifest.model_id.clone(),
        })
    }

    /// What `sonitor validate` (and a reload, and the start of `run`) asks of a bundle beyond [`Bundle::load`]'s
    /// checks: tract builds the plan `run` would build ([`Embedder::load`]) and runs it once on one window of
    /// all-zero features, which gives `embedding_dim` values. A graph tract cannot read, type, optimise or run
    /// (an operator it lacks, shapes that do not fit the manifest's) is found here, not by a service that then
    /// fails at every start. Returns the embedder, for `run` to use rather than build it again.
    pub fn check(bundle: &Bundle) -> anyhow::Result<Self> {
        let mut e = Self::load(bundle)?;
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
        Ok(e)
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

/// The inference thread: embeds each window with the machine's model and scores it.
pub fn spawn_inference(
    mut embedders: Vec<Embedder>,
    scorers: Vec<Scorer>,
    features: Receiver<FeatureMsg>,
    recycle: Sender<Features>,
    out: Sender<ScoreMsg>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let mut emb = Vec::new();
            let mut scratch = Vec::new();
            for f in features.iter() {
                let sc = &scorers[f.machine];
                let m = &metrics.machines[f.machine];
                // A window whose features failed (counted and logged by the feature thread) is not embedded.
                let embedded = (!f.failed).then(|| {
                    embedders[sc.model].embed(&f.features, &mut emb).map(|()| {
                        window_score(&sc.section, &emb, &f.features.band_means, &mut scratch)
                    })
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
                            m.score.set_f64(score);
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
                let spent = f.cut_at.elapsed().as_secs_f64();
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
