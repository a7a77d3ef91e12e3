//! The feature stage: a thread that turns each cut window ([`WindowMsg`]) into the model's input views with the
//! shared implementation ([`sonitor_core::features`], the one the trainer evaluated), one extractor per machine
//! planned once, buffers recycled. Its output goes to [`crate::embed`].
//!
//! A full queue towards inference drops the window and counts it (`sonitor_dropped_windows_total`), unless the
//! window comes from a lossless file replay, which waits.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use sonitor_core::features::{FeatureExtractor, FeatureParams, Features};

use crate::metrics::Metrics;
use crate::window::{window_level_dbfs, WindowMsg};

/// A window's features, on their way to [`crate::embed`].
pub struct FeatureMsg {
    pub machine: usize,
    pub t_end_ms: u64,
    /// The window's level: RMS over its samples, dBFS ([`window_level_dbfs`]).
    pub level_dbfs: f32,
    pub features: Features,
    pub cut_at: Instant,
    pub lossless: bool,
}

/// The feature thread: one extractor per machine (planned once), buffers reused.
pub fn spawn_features(
    params: Vec<FeatureParams>,
    windows: Receiver<WindowMsg>,
    recycle_windows: Vec<Sender<Vec<f32>>>,
    machine_input: Vec<usize>,
    out: Sender<FeatureMsg>,
    recycled_features: Receiver<Features>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut extractors = Vec::new();
    for p in params {
        extractors.push(FeatureExtractor::new(p)?);
    }
    Ok(std::thread::Builder::new()
        .name("features".into())
        .spawn(move || {
            for w in windows.iter() {
                crate::fault::point("features");
                let fx = &mut extractors[w.machine];
                let mut f = recycled_features
                    .try_recv()
                    .unwrap_or_else(|_| fx.new_output());
                if let Err(e) = fx.extract_into(&w.samples, &mut f) {
                    log::error!("features: {e}");
                    metrics.machines[w.machine].settled.inc();
                    continue;
                }
                let machine = w.machine;
                let msg = FeatureMsg {
                    machine,
                    t_end_ms: w.t_end_ms,
                    level_dbfs: window_level_dbfs(&w.samples),
                    features: f,
                    cut_at: w.cut_at,
                    lossless: w.lossless,
                };
                let sent = if w.lossless {
                    out.send(msg).is_ok()
                } else {
                    out.try_send(msg).is_ok()
                };
                if !sent {
                    metrics.machines[machine].window_dropped();
                }
                if let Some(tx) = machine_input
                    .get(machine)
                    .and_then(|&i| recycle_windows.get(i))
                {
                    let _ = tx.try_send(w.samples);
                }
            }
        })?)
}
