//! # sonitor-core
//!
//! The code that the trainer (`sonitor-train`) and the daemon (`sonitor`) must share so that what is evaluated
//! is exactly what runs on the factory floor:
//!
//! - [`audio`]: reading WAV files of any common encoding, channel selection, band-limited resampling;
//! - [`features`]: the one and only implementation of the model's input features (log-mel and spectrum views),
//!   with [`power_spectrum`] for the power spectra of its frames and windows;
//! - [`dcase`]: the DCASE 2022/2023 Task 2 data layout, file names, attributes and auxiliary class labels;
//! - [`metrics`]: the official DCASE metrics (AUC, McClish pAUC, harmonic-mean official score);
//! - [`bundle`]: the model bundle (ONNX graph + manifest), the contract between trainer and daemon, verified on
//!   load ([`onnx_graph`] reads the graph's signature);
//! - [`embed`]: the embedding graph run by tract, one loader for the daemon, `eval` and `fit`'s back end;
//! - [`score`]: the anomaly score of an embedding (min cosine distance to a section's centroids);
//! - [`detect`]: the alarm logic of one machine (window scores in, alarm transitions out), the daemon's and
//!   what `sonitor-train eval` replays on test clips;
//! - [`parallel`]: the order-preserving parallel map the trainer uses for loading, embedding and scoring clips;
//! - [`plot`]: score timelines and ROC curves as PNG or SVG;
//! - [`atomic_file`]: files replaced whole or not at all (bundles, the daemon's state and outbox).
//!
//! Library code here never panics on bad input: every fallible operation returns a typed error that names the
//! offending file or value.

pub mod atomic_file;
pub mod audio;
pub mod bundle;
pub mod dcase;
pub mod detect;
pub mod embed;
pub mod features;
pub mod metrics;
pub mod onnx_graph;
pub mod parallel;
pub mod plot;
pub mod power_spectrum;
pub mod regular_file;
pub mod score;

/// The message a panic was raised with (`panic!("…")` gives a `&str` or a `String`), if it has one: for the panic
/// hooks and the `catch_unwind`s that report a panic in words.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
