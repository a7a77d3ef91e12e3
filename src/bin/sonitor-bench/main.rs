//! `sonitor-bench`: the numbers of BENCHMARKS.md, measured on the machine it runs on (run it on a Pi to see how
//! many machines the Pi can watch).
//!
//! - `window`: features and inference per window (median, p99), the FFTs' share, inference against the floor;
//! - `floor`: this CPU's single-core matrix-multiply rate through tract;
//! - `e2e`: the real daemon on file sources as fast as possible: CPU per audio second per machine, machines per
//!   core, peak RSS for 1 and N machines, and the Python peer in the same run;
//! - `live`: the daemon paced in real time, as it runs next to a machine: CPU per audio second per machine,
//!   thread by thread;
//! - `latency`: first anomalous sample → alarm at an MQTT subscriber through a real broker.
//!
//! Build with `cargo build --release --bin sonitor --bin sonitor-bench`: `e2e` and `latency` run the `sonitor`
//! binary that sits next to this one.

mod e2e;
mod latency;
mod live;
mod window;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sonitor-bench",
    about = "Benchmarks of the sonitor daemon (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Features and inference per window of one or more bundles, on one thread.
    Window {
        /// Bundle directories [default: models/default].
        bundles: Vec<PathBuf>,
        #[arg(long, default_value_t = 300)]
        runs: usize,
        /// Also print where inference spends its time: the median per node of the optimised plan, by op.
        #[arg(long)]
        nodes: bool,
    },
    /// Single-core sgemm rate through tract (the floor's denominator).
    Floor {
        #[arg(long, default_value_t = sonitor::bench::FLOOR_SGEMM_SIZE)]
        size: usize,
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// The daemon end to end on file sources, for 1 and N machines, and the Python peer.
    E2e(e2e::Options),
    /// The daemon on file sources paced in real time, for 1 and N machines: CPU per audio second, by thread.
    Live(live::Options),
    /// First anomalous sample → alarm ON at an MQTT subscriber (mosquitto on loopback).
    Latency(latency::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Window {
            mut bundles,
            runs,
            nodes,
        } => {
            anyhow::ensure!(runs > 0, "--runs must be positive");
            if bundles.is_empty() {
                bundles.push(PathBuf::from("models/default"));
            }
            window::run(&bundles, runs, nodes)
        }
        Cmd::Floor { size, runs } => {
            let r = sonitor::bench::sgemm_flops_per_second(size, size, size, runs)?;
            println!(
                "single-core sgemm {size}x{size}x{size} through tract: {:.1} GFLOP/s (median of {runs})",
                r / 1e9
            );
            Ok(())
        }
        Cmd::E2e(o) => e2e::run(&o),
        Cmd::Live(o) => live::run(&o),
        Cmd::Latency(o) => latency::run(&o),
    }
}
