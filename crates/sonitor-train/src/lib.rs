//! `sonitor-train` as a library: every subcommand's engine, so that tests (and other tools) can drive them
//! without a subprocess.
//!
//! - [`synth`]: the synthetic factory data set generator (DCASE 2023 layout);
//! - [`baseline`]: the non-learned baseline scorer (mean log-mel + Mahalanobis) every model must beat;
//! - [`cli`]: the command-line front end of the `sonitor-train` binary.

pub mod baseline;
pub mod cli;
pub mod synth;
