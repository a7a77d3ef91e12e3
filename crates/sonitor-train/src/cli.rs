//! The `sonitor-train` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sonitor_core::{dcase, metrics};

use crate::{baseline, combine, synth};
use crate::{eval, import, prune, train, upgrade};

#[derive(Parser, Debug)]
#[command(
    name = "sonitor-train",
    version,
    about = "Learns what normal sounds like; evaluates with the DCASE metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a synthetic factory data set in the DCASE 2023 Task 2 layout.
    Synth(synth::SynthArgs),
    /// Write one long recording (normal, a developing fault, normal) and its timeline, for `sonitor demo`.
    SynthDemo(synth::demo::DemoArgs),
    /// Cut long recordings of a machine into the clips of a data set (DCASE layout) for fit, eval and baseline.
    Import(import::ImportArgs),
    /// Score the test clips with the non-learned baseline (mean log-mel + Mahalanobis distance).
    Baseline(baseline::BaselineArgs),
    /// Official DCASE metrics of a directory of submission files.
    Metrics(MetricsArgs),
    /// Train the embedding network, export it to ONNX, fit centroids and thresholds; write a model bundle.
    Fit(train::FitArgs),
    /// Score the test clips with a model bundle (tract on the ONNX graph) and print the official metrics.
    Eval(eval::EvalArgs),
    /// Score the test clips with a model bundle and the baseline together, each on its training clips' scale.
    Combine(combine::CombineArgs),
    /// Remove whole channels of a trained network, fine-tune it and write a smaller bundle.
    Prune(prune::PruneArgs),
    /// Rewrite a bundle's graph, exported by an earlier version, into the current (faster) form; same embedding.
    Upgrade(upgrade::UpgradeArgs),
}

#[derive(clap::Args, Debug)]
struct MetricsArgs {
    /// Data set root (DCASE layout; the test clips' names carry the labels).
    #[arg(long)]
    data: PathBuf,
    /// Directory with `anomaly_score_<type>_section_<SS>_test.csv` files.
    #[arg(long)]
    scores: PathBuf,
    /// Print one JSON object (per-section and per-type table, official_score) instead of a table. A value the
    /// test clips cannot give (no target-domain normals: no AUC (target), so no official score) is null, and its
    /// section's `missing` says why.
    #[arg(long)]
    json: bool,
    /// Also the AUC of each fault kind against the normal clips of its section and domain, from a ground-truth
    /// CSV with the columns file_name and fault (default: DATA/ground_truth.csv, which `synth` writes).
    #[arg(long, value_name = "GROUND_TRUTH", num_args = 0..=1)]
    by_fault: Option<Option<PathBuf>>,
    /// The labels of an evaluation set, whose clip names carry none (`section_00_0000.wav`): the folder that holds
    /// the DCASE evaluator's `ground_truth_data/` and `ground_truth_domain/` (`ground_truth_<type>_section_<SS>_test.csv`,
    /// `file_name,0|1`: normal/anomaly, source/target). Sections without such files keep their names' labels.
    #[arg(long, value_name = "DIR")]
    ground_truth: Option<PathBuf>,
}

/// Prints a metrics report as Markdown, or as JSON with `--json`.
pub fn print_report(report: &metrics::Report, json: bool) -> anyhow::Result<()> {
    // What the test clips cannot give (n/a in the table, null in JSON) is said on stderr too.
    for m in report.missing() {
        eprintln!("warning: {m}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(())
}

fn run_metrics(a: &MetricsArgs) -> anyhow::Result<()> {
    let mut data = dcase::scan(&a.data)?;
    if let Some(dir) = &a.ground_truth {
        let n = dcase::apply_ground_truth(&mut data, dir).context("--ground-truth")?;
        eprintln!(
            "--ground-truth: {n} test clips labelled from {}",
            dir.display()
        );
    }
    let context = || {
        format!(
            "evaluating {} against {}",
            a.scores.display(),
            a.data.display()
        )
    };
    let report = match &a.by_fault {
        None => metrics::evaluate_submission(&data, &a.scores).with_context(context)?,
        Some(file) => {
            let file = file
                .clone()
                .unwrap_or_else(|| a.data.join("ground_truth.csv"));
            let kinds = dcase::FaultKinds::read(&file)
                .context("--by-fault: reading the fault kinds of the anomalous test clips")?;
            if kinds.is_empty() {
                anyhow::bail!(
                    "--by-fault: {} names no fault kind (every row's fault is empty or none)",
                    file.display()
                );
            }
            metrics::evaluate_submission_by_fault(&data, &a.scores, &kinds).with_context(context)?
        }
    };
    print_report(&report, a.json)
}

/// Entry point of the binary: parses the command line, runs, maps errors to a message and exit status 1.
pub fn main() -> std::process::ExitCode {
    // A reader that goes away (`sonitor-train metrics … | head`, `fit … 2>&1 | head`) ends the process quietly by
    // SIGPIPE, as it does any Unix tool, instead of a panic at the next `println!` or `eprintln!` (Rust ignores
    // SIGPIPE, so the write fails). The trainer holds no socket, and what it writes (checkpoints, bundles) is
    // written whole or not at all, so nothing is left half-written.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any other thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // tract's panics on a malformed graph (`eval --model`, `prune`) come back as errors that say what they said.
    sonitor_core::embed::quiet_handled_panics();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Synth(a) => synth::run(a),
        Command::SynthDemo(a) => synth::demo::run(a),
        Command::Import(a) => import::run(a),
        Command::Baseline(a) => baseline::run(a),
        Command::Metrics(a) => run_metrics(a),
        Command::Fit(a) => {
            train::interrupt::catch();
            train::run(a)
        }
        Command::Eval(a) => eval::run(a),
        Command::Combine(a) => combine::run(a),
        Command::Prune(a) => {
            train::interrupt::catch();
            prune::run(a)
        }
        Command::Upgrade(a) => upgrade::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<train::interrupt::Interrupted>().is_some() {
                std::process::ExitCode::from(130)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
