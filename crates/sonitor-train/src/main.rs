//! `sonitor-train`: learns what "normal" sounds like and hands the daemon a model bundle.

use clap::{Parser, Subcommand};

mod synth;

#[derive(Parser, Debug)]
#[command(name = "sonitor-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a synthetic factory data set in the DCASE 2023 Task 2 layout.
    Synth(synth::SynthArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Synth(a) => synth::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
