//! `sonitor` command line: `run`, `validate`, `devices`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sonitor",
    version,
    about = "Acoustic anomaly detection daemon for factory machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Capture, score and publish alarms until stopped (SIGTERM); SIGHUP reloads thresholds and debounce.
    Run {
        #[arg(long, short, default_value = "/etc/sonitor/sonitor.toml")]
        config: PathBuf,
    },
    /// Checks a configuration (files, bundles, sections, channels, devices, ports); exit status 78 on problems.
    Validate {
        #[arg(long, short, default_value = "/etc/sonitor/sonitor.toml")]
        config: PathBuf,
    },
    /// Lists capture devices and their supported configurations.
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run { config } => sonitor::daemon::run(&config),
        Cmd::Validate { config } => sonitor::daemon::validate(&config),
        Cmd::Devices => match sonitor::capture::list_devices() {
            Ok(s) => {
                print!("{s}");
                0
            }
            Err(e) => {
                eprintln!("sonitor: cannot list devices: {e:#}");
                1
            }
        },
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
