//! `sonitor` command line: `run`, `validate`, `reload`, `status`, `devices`, `demo`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sonitor",
    version = sonitor::VERSION,
    about = "Acoustic anomaly detection daemon for factory machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Capture, score and publish alarms until stopped (SIGTERM); SIGHUP reloads thresholds, debounce and models.
    Run {
        #[arg(long, short, default_value = "/etc/sonitor/sonitor.toml")]
        config: PathBuf,
    },
    /// Checks a configuration (files, bundles, sections, channels, devices, addresses; not whether the metrics port
    /// is free, which the running daemon holds); exit status 78 on problems.
    Validate {
        #[arg(long, short, default_value = "/etc/sonitor/sonitor.toml")]
        config: PathBuf,
    },
    /// Asks the running daemon to reload its configuration (SIGHUP) and waits for its answer: exit status 0 when
    /// it applied the file, 78 when it refused it (the running configuration stays) or the file is not the one the
    /// daemon runs, 69 when none runs, 77 when this user may not signal it (it runs as the service's user: use
    /// `sudo systemctl reload sonitor`), 1 when it did not answer within --timeout.
    Reload {
        #[arg(long, short, default_value = "/etc/sonitor/sonitor.toml")]
        config: PathBuf,
        /// The daemon's process id (systemd's $MAINPID); default: the one holding the file's state directory.
        #[arg(long)]
        pid: Option<u32>,
        /// Seconds to wait for the daemon's answer (a reload builds the graphs of new models).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// What the running daemon watches: each machine's alarm, score, threshold, health and model, its inputs and
    /// MQTT (read from its metrics).
    Status {
        #[arg(long, short, default_value = "/etc/sonitor/sonitor.toml")]
        config: PathBuf,
        /// Prints one JSON object with the same fields, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lists capture devices and their supported configurations.
    Devices,
    /// Runs the daemon on a shipped model and its generated recording (normal, a developing fault, normal):
    /// no microphone or broker needed.
    Demo {
        /// Model bundle directory; its `demo.wav` (+ `demo.json`) is the default recording. Default:
        /// `models/default` (the repository's), else the one installed beside the binary
        /// (`<prefix>/share/sonitor/models/default` for `<prefix>/bin/sonitor`, as the Debian package puts it).
        #[arg(long)]
        model: Option<PathBuf>,
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
        /// Print the summary as JSON, alone on stdout (the running commentary goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Before any device is opened: ALSA's own messages go to the log (at debug), not straight to stderr.
    #[cfg(target_os = "linux")]
    sonitor::capture::alsa_log::route_to_log();
    // tract's panics on a malformed graph come back as errors that say what they said (`run` installs its own
    // hook, which asks the same).
    sonitor_core::embed::quiet_handled_panics();
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Run { config } => sonitor::daemon::run(&config),
        Cmd::Validate { config } => {
            stop_quietly_when_stdout_goes();
            sonitor::check::validate(&config)
        }
        Cmd::Reload {
            config,
            pid,
            timeout,
        } => sonitor::reload::reload(&config, pid, std::time::Duration::from_secs(timeout)),
        Cmd::Status { config, json } => {
            stop_quietly_when_stdout_goes();
            sonitor::status::status(&config, json)
        }
        Cmd::Devices => {
            match sonitor::capture::list_devices_within(std::time::Duration::from_secs(15)) {
                Ok(s) => {
                    stop_quietly_when_stdout_goes();
                    print!("{s}");
                    0
                }
                Err(e) => {
                    eprintln!("sonitor: cannot list devices: {e:#}");
                    1
                }
            }
        }
        Cmd::Demo {
            model,
            recording,
            out,
            mqtt,
            realtime,
            quiet,
            json,
        } => {
            // Where the model was looked for: the one given, else every default place.
            let looked = match &model {
                Some(m) => vec![m.clone()],
                None => demo_model_places(),
            };
            let model = model.unwrap_or_else(default_demo_model);
            demo(
                &looked,
                sonitor::demo::DemoOptions {
                    recording: recording.unwrap_or_else(|| model.join("demo.wav")),
                    bundle: model,
                    out,
                    mqtt,
                    realtime,
                    live: !quiet,
                    json,
                },
            )
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The demo's model when none is named: the repository's `models/default` in the working directory, else the
/// one installed beside the binary (`/usr/bin/sonitor` → `/usr/share/sonitor/models/default`), else the first
/// (which the demo then names as missing).
fn default_demo_model() -> PathBuf {
    let places = demo_model_places();
    places
        .iter()
        .find(|p| p.join(sonitor_core::bundle::MANIFEST_FILE).is_file())
        .unwrap_or(&places[0])
        .clone()
}

/// Where the demo looks for its model when none is named, in order: `models/default` in the working directory,
/// then `<prefix>/share/sonitor/models/default` beside the binary (`<prefix>/bin/sonitor`) where the binary's
/// path is known.
fn demo_model_places() -> Vec<PathBuf> {
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/sonitor/models/default")));
    std::iter::once(PathBuf::from("models/default"))
        .chain(installed)
        .collect()
}

/// For the commands that only print and hold no socket while they do (`validate`, `status`, `devices`): a reader that goes away
/// (`sonitor devices | head`) ends the process quietly by SIGPIPE, as it does any Unix tool, instead of a panic
/// at the next `println!` (Rust ignores SIGPIPE, so the write fails). Not for `run` and `demo`, where a broker
/// that resets its connection must be a write error, not the end of the process.
fn stop_quietly_when_stdout_goes() {
    // SAFETY: sets a signal's disposition to its default. Called where nothing writes to a socket any more:
    // `validate` connects to nothing, and `devices` calls it after the devices are listed (ALSA's pulse plugin
    // talks to the sound server while they are).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `looked`: every place the model was looked for (the one `--model` gave, or each default place), named when
/// none holds a bundle.
fn demo(looked: &[PathBuf], o: sonitor::demo::DemoOptions) -> i32 {
    // Only a missing manifest: one that is there but not a file (a directory, a FIFO) is named by the loader.
    if !o.bundle.join(sonitor_core::bundle::MANIFEST_FILE).exists() {
        let places: Vec<String> = looked
            .iter()
            .map(|p| {
                if p.is_relative() {
                    format!("{} (from the working directory)", p.display())
                } else {
                    p.display().to_string()
                }
            })
            .collect();
        eprintln!(
            "sonitor demo: no model bundle at {} (run from the repository root, install the package \
             (scripts/package-deb), or pass --model DIR)",
            places.join(" nor at ")
        );
        return 1;
    }
    match sonitor::demo::run(&o) {
        Ok(s) => {
            // Not `println!`, which panics when the reader has gone (`sonitor demo | head`).
            let mut stdout = std::io::stdout().lock();
            if o.json {
                match s.to_json() {
                    Ok(j) => {
                        let _ = writeln!(stdout, "{j}");
                    }
                    Err(e) => eprintln!("sonitor demo: {e}"),
                }
            } else {
                let _ = writeln!(stdout, "{s}");
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
