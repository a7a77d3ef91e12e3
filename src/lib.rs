//! `sonitor`: the edge daemon. It listens to machines through a microphone and raises an MQTT alarm when a
//! machine starts to sound wrong.
//!
//! Where the audio goes (DESIGN.md §5): capture ([`capture`]) → windows, features, inference and scoring
//! ([`pipeline`], [`model`]) → per-machine alarm logic ([`detector`]) → durable outbox ([`outbox`]) and MQTT
//! ([`mqtt`]); evidence clips ([`clips`]), Prometheus metrics ([`metrics`]); all wired by [`daemon`] from the
//! [`config`]. The features and the model contract live in `sonitor-core`, so the daemon computes exactly what
//! the trainer evaluated.
//!
//! [`demo`] runs all of it on the shipped model and a generated recording; [`bench`] holds what the benchmarks
//! share (`sonitor-bench`, benches/kernels.rs).

/// The version and the commit this binary was built from, as `--version`, the start-up log and a panic's report
/// give them: `0.1.0 (commit 0123456789ab)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SONITOR_COMMIT"),
    ")"
);

pub mod bench;
pub mod capture;
pub mod clips;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fault;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod outbox;
pub mod pipeline;
pub mod state_lock;
