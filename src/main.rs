//! `sonitor` command line: `run`, `validate`, `devices`, `demo`.

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
    /// Runs the daemon on a shipped model and its generated recording (normal, a developing fault, normal):
    /// no microphone or broker needed.
    Demo {
        /// Model bundle directory; its `demo.wav` (+ `demo.json`) is the default recording.
        #[arg(long, default_value = "models/default")]
        model: PathBuf,
        /// Recording to stream (its timeline is the same path with `.json`).
        #[arg(long)]
        recording: Option<PathBuf>,
        /// Where the demo's configuration, state and evidence clips go.
        #[arg(long, default_value = "sonitor-demo")]
        out: PathBuf,
        /// Also publish to this MQTT broker, exactly as `run` does.
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<String>,
        /// Stream in real time instead of as fast as possible.
        #[arg(long)]
        realtime: bool,
        /// Only the alarm transitions and the summary, not a line per window.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Before any device is opened: ALSA's own messages go to the log (at debug), not straight to stderr.
    #[cfg(target_os = "linux")]
    sonitor::capture::alsa_log::route_to_log();
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
        Cmd::Demo {
            model,
            recording,
            out,
            mqtt,
            realtime,
            quiet,
            json,
        } => demo(
            sonitor::demo::DemoOptions {
                recording: recording.unwrap_or_else(|| model.join("demo.wav")),
                bundle: model,
                out,
                mqtt,
                realtime,
                live: !quiet,
            },
            json,
        ),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn demo(o: sonitor::demo::DemoOptions, json: bool) -> i32 {
    if !o.bundle.join(sonitor_core::bundle::MANIFEST_FILE).is_file() {
        eprintln!(
            "sonitor demo: no model bundle at {} (run from the repository root, or pass --model DIR)",
            o.bundle.display()
        );
        return 1;
    }
    match sonitor::demo::run(&o) {
        Ok(s) => {
            if json {
                match serde_json::to_string_pretty(&s) {
                    Ok(j) => println!("{j}"),
                    Err(e) => eprintln!("sonitor demo: {e}"),
                }
            } else {
                println!("{s}");
            }
            if s.ok() {
                0
            } else {
                2
            }
        }
        Err(e) => {
            eprintln!("sonitor demo: {e:#}");
            1
        }
    }
}
