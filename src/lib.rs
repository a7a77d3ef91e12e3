//! `sonitor`: the edge daemon. It listens to machines through a microphone and raises an MQTT alarm when a
//! machine starts to sound wrong.
//!
//! Where the audio goes (DESIGN.md §5), one module per stage: [`capture`] (cpal or a file, into a ring per input)
//! → [`window`] (the reader: windows cut per machine, channel health, clip history) → [`features`] (log-mel and
//! spectrum, shared with the trainer) → [`embed`] (tract, then the min cosine distance to the section's centroids,
//! with its level baseline where the bundle has one)
//! → [`detect`] (per-machine alarm logic and the controller around it) → [`publish`] (durable outbox, then MQTT).
//! Beside them: evidence clips ([`clips`]), Prometheus metrics ([`metrics`]), the configuration ([`config`]) and its
//! [`check`], the systemd [`watchdog`], the log lines' priority for the [`journal`], one daemon per state directory
//! ([`state_lock`]); [`daemon`] wires them and runs the main loop. The features and the model contract live in `sonitor-core`, so the daemon computes
//! exactly what the trainer evaluated.
//!
//! [`demo`] runs all of it on the shipped model and a generated recording; [`bench`](mod@bench) holds what the
//! benchmarks share (`sonitor-bench`, benches/kernels.rs).

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
pub mod check;
pub mod clips;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod detect;
pub mod embed;
pub mod fault;
pub mod features;
pub mod journal;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod state_lock;
pub mod status;
pub mod watchdog;
pub mod window;
