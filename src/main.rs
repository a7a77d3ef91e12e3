//! `sonitor`: the edge daemon. It listens to machines through a microphone and raises an MQTT alarm when a
//! machine starts to sound wrong.
//!
//! Where the audio goes: capture → features → embed → score → detect → publish. The features and the model
//! contract live in the shared `sonitor-core` crate, so the daemon computes exactly what the trainer evaluated.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "sonitor", version, about = "Acoustic anomaly detection daemon for factory machines")]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "sonitor {}: the daemon's pipeline is being built; use sonitor-train for data, baseline and metrics",
        env!("CARGO_PKG_VERSION")
    );
}
