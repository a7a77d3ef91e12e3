//! `sonitor-train` as a library: every subcommand's engine, so that tests (and other tools) can drive them
//! without a subprocess.
//!
//! - [`synth`]: the synthetic factory data set generator (DCASE 2023 layout);
//! - [`baseline`]: the non-learned baseline scorer (mean log-mel + Mahalanobis) every model must beat;
//! - [`model`], [`loss`], [`data`], [`train`]: the seed paper's network and losses in burn, and `fit`;
//! - [`kmeans`], [`threshold`]: the scoring back end (centroids, gamma-quantile thresholds);
//! - [`export`], [`infer`], [`eval`]: ONNX export, tract inference (the daemon's path), `eval`;
//! - [`cli`]: the command-line front end of the `sonitor-train` binary.

pub mod baseline;
pub mod cli;
#[cfg(feature = "wip")]
pub mod data;
#[cfg(feature = "wip")]
pub mod eval;
#[cfg(feature = "wip")]
pub mod export;
#[cfg(feature = "wip")]
pub mod infer;
#[cfg(feature = "wip")]
pub mod kmeans;
#[cfg(feature = "wip")]
pub mod loss;
#[cfg(feature = "wip")]
pub mod model;
pub mod synth;
#[cfg(feature = "wip")]
pub mod threshold;
#[cfg(feature = "wip")]
pub mod train;
