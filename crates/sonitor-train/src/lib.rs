//! `sonitor-train` as a library: every subcommand's engine, so that tests (and other tools) can drive them
//! without a subprocess.
//!
//! - [`synth`]: the synthetic factory data set generator (DCASE 2023 layout);
//! - [`baseline`]: the non-learned baseline scorer (mean log-mel + Mahalanobis) every model must beat;
//! - [`combine`]: a bundle's score and the baseline's together, each on its training clips' scale (offline);
//! - [`model`], [`loss`], [`data`], [`train`]: the seed paper's network and losses in burn, and `fit`;
//! - [`kmeans`], [`threshold`]: the scoring back end (centroids, gamma-quantile thresholds);
//! - [`export`], [`infer`], [`eval`]: ONNX export, tract inference (the daemon's path), `eval`;
//! - [`import`]: long recordings cut into a data set's clips in the DCASE layout;
//! - [`prune`]: structured channel pruning and fine-tuning for the edge model;
//! - [`replace`]: `--force`, replacing a bundle without losing it to a run that fails;
//! - [`cli`]: the command-line front end of the `sonitor-train` binary.

pub mod baseline;
pub mod checkpoint;
pub mod cli;
pub mod combine;
pub mod data;
pub mod eval;
pub mod export;
pub mod import;
pub mod infer;
pub mod kmeans;
pub mod loss;
pub mod model;
pub mod prune;
pub mod replace;
pub mod synth;
pub mod threshold;
pub mod train;
pub mod upgrade;
