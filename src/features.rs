//! The feature stage: a thread that turns each cut window ([`WindowMsg`]) into the model's input views with the
//! shared implementation ([`sonitor_core::features`], the one the trainer evaluated), one extractor per machine
//! planned once, buffers recycled. Its output goes to [`crate::embed`].
//!
//! A full queue towards inference drops the window and counts it (`sonitor_dropped_windows_total`), unless the
//! window comes from a lossless file replay, which waits. A window whose features cannot be computed (a window of
//! another length than the model's: a bug upstream, since the reader cuts every window to that length) is counted
//! (`sonitor_feature_errors_total`), logged at the 1st, 2nd, 4th, 8th, … of its machine, and goes on marked
//! [`FeatureMsg::failed`], so that the controller sees an unscored window, as when the model fails on one.

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
    /// Seconds the features took to compute (with the model's, `sonitor_inference_seconds_total`).
    pub compute_seconds: f64,
    pub lossless: bool,
    /// The features could not be computed: `features` holds no input for the model (only a buffer to recycle),
    /// and the window goes to the detector unscored.
    pub failed: bool,
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
                let started = Instant::now();
                let fx = &mut extractors[w.machine];
                let mut f = recycled_features
                    .try_recv()
                    .unwrap_or_else(|_| fx.new_output());
                let failed = match fx.extract_into(&w.samples, &mut f) {
                    Ok(()) => false,
                    Err(e) => {
                        let m = &metrics.machines[w.machine];
                        if let Some(n) = m.feature_errors.inc_log_due() {
                            log::error!(
                                "{}: window at {} ms not scored: its features could not be computed ({e}); \
                                 {n} so far (sonitor_feature_errors_total). This is a bug in sonitor: please \
                                 report it with this line",
                                m.name,
                                w.t_end_ms
                            );
                        }
                        true
                    }
                };
                let machine = w.machine;
                let t_end_ms = w.t_end_ms;
                let msg = FeatureMsg {
                    machine,
                    t_end_ms,
                    level_dbfs: window_level_dbfs(&w.samples),
                    features: f,
                    compute_seconds: started.elapsed().as_secs_f64(),
                    lossless: w.lossless,
                    failed,
                };
                let sent = if w.lossless {
                    out.send(msg).is_ok()
                } else {
                    out.try_send(msg).is_ok()
                };
                if !sent {
                    let m = &metrics.machines[machine];
                    if let Some(n) = m.window_dropped() {
                        crate::window::log_dropped_window(m, t_end_ms, n, "the model");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of another length than the model's is counted, logged and passed on marked `failed` (so that
    /// the controller sees an unscored window); its buffers are recycled, and the next good window is computed.
    #[test]
    fn a_window_whose_features_fail_goes_on_unscored_and_counted() {
        let params = FeatureParams::default();
        let good_len = params.window_samples;
        let metrics = Arc::new(Metrics::new(&["mic".into()], &["pump-1".into()]));
        let (win_tx, win_rx) = crossbeam_channel::bounded(4);
        let (recycle_tx, recycle_rx) = crossbeam_channel::bounded(4);
        let (out_tx, out_rx) = crossbeam_channel::bounded(4);
        let (_feat_tx, feat_rx) = crossbeam_channel::bounded(4);
        let thread = spawn_features(
            vec![params],
            win_rx,
            vec![recycle_tx],
            vec![0],
            out_tx,
            feat_rx,
            metrics.clone(),
        )
        .unwrap();
        let window = |t_end_ms, len| WindowMsg {
            machine: 0,
            t_end_ms,
            samples: (0..len).map(|i| (i as f32 * 0.01).sin() * 0.1).collect(),
            lossless: true,
        };
        win_tx.send(window(1000, good_len - 1)).unwrap();
        win_tx.send(window(2000, good_len)).unwrap();
        drop(win_tx);
        thread.join().unwrap();

        let bad = out_rx.recv().unwrap();
        assert!(bad.failed);
        assert_eq!(bad.t_end_ms, 1000);
        let good = out_rx.recv().unwrap();
        assert!(!good.failed);
        assert_eq!(good.t_end_ms, 2000);
        assert!(good.features.log_mel.iter().any(|&x| x != 0.0));
        assert!(out_rx.try_recv().is_err());

        let m = &metrics.machines[0];
        assert_eq!(m.feature_errors.get(), 1);
        assert_eq!(m.dropped_windows.get(), 0);
        // Both windows' samples came back for reuse, the short one included.
        let lens: Vec<usize> = recycle_rx.try_iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![good_len - 1, good_len]);
        assert!(metrics
            .render()
            .contains("sonitor_feature_errors_total{machine=\"pump-1\"} 1"));
    }
}
