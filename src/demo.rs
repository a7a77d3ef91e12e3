//! `sonitor demo`: the real daemon — file source, features, tract, centroids, detector, outbox, evidence clip,
//! and MQTT when asked — on the shipped bundle and a generated recording of a machine that runs normally, develops
//! a fault, and is repaired. No microphone, no broker. It streams the recording faster than real time, prints the
//! score of every window as a bar and the alarm transitions as they happen, and ends with a summary that says
//! whether the alarm was raised during the fault and only then.
//!
//! The recording (`demo.wav`) and its timeline (`demo.json`: when the fault is audible) are made by
//! `sonitor-train synth-demo` and shipped beside the bundle in `models/`. The demo writes its configuration, state
//! and clips under `--out`; its configuration file is an ordinary `sonitor run` configuration.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::detect::Observation;

/// The part of the recording's timeline the demo uses (written by `sonitor-train synth-demo`).
#[derive(Debug, Clone, Deserialize)]
pub struct Timeline {
    pub machine_type: String,
    /// Bundle section key, `"<type>/section_SS"`.
    pub section: String,
    pub fault: String,
    pub duration_s: f64,
    pub fault_start_s: f64,
    pub fault_end_s: f64,
}

impl Timeline {
    /// The timeline of a recording: the file of the same path with the extension `.json`.
    pub fn of_recording(recording: &Path) -> anyhow::Result<Timeline> {
        if !recording.is_file() {
            anyhow::bail!(
                "the recording {} is not there: give --recording a WAV file made with its timeline (.json) by \
                 `sonitor-train synth-demo`, or leave it out for the model's own demo.wav",
                recording.display()
            );
        }
        let tpath = recording.with_extension("json");
        if !tpath.exists() {
            // A recording of one's own has none: the demo is not the way to check a bundle on it (review28).
            anyhow::bail!(
                "the recording {} has no timeline {} beside it: --recording takes a recording made with its \
                 timeline by `sonitor-train synth-demo`. To check a bundle on a recording of your own, replay it \
                 with `sonitor run` on a configuration whose device has `source = \"file\"` and \
                 `at_end = \"exit\"`: the log ends with each machine's replay summary (windows judged, highest \
                 score, threshold, alarms raised); see configs/README.md",
                recording.display(),
                tpath.display()
            );
        }
        let text = std::fs::read_to_string(&tpath).with_context(|| {
            format!(
                "reading the recording's timeline {} (made with the recording by `sonitor-train synth-demo`)",
                tpath.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", tpath.display()))
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Model bundle directory.
    pub bundle: PathBuf,
    /// The recording; its timeline is the same path with the extension `.json`.
    pub recording: PathBuf,
    /// Configuration, state, outbox and evidence clips go here.
    pub out: PathBuf,
    /// Also publish to this broker, `HOST:PORT`.
    pub mqtt: Option<String>,
    /// Pace the recording in real time instead of as fast as possible.
    pub realtime: bool,
    /// Print the per-window lines (the summary is always printed).
    pub live: bool,
    /// The caller prints the summary as JSON (`--json`): stdout carries it alone, for a pipe into `jq`, and the
    /// running commentary goes to stderr.
    pub json: bool,
}

/// One line of the demo's running commentary, on stdout or (`json`) stderr. A reader that has gone
/// (`sonitor demo | head`) is not an error and no panic: the demo runs to its end, its files are written.
macro_rules! say {
    ($o:expr, $($arg:tt)*) => {{
        let _ = if $o.json {
            writeln!(std::io::stderr().lock(), $($arg)*)
        } else {
            writeln!(std::io::stdout().lock(), $($arg)*)
        };
    }};
}

/// One alarm, from ON to OFF (or to the end of the recording).
#[derive(Debug, Clone, Serialize)]
pub struct AlarmSpan {
    pub on_s: f64,
    pub off_s: Option<f64>,
    pub peak: f64,
    pub event_id: String,
    /// Raised while the fault was audible (the window that raised it overlaps the fault).
    pub during_fault: bool,
}

/// `--mqtt HOST:PORT` as host and port.
fn broker_address(addr: &str) -> anyhow::Result<(&str, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("--mqtt {addr}: expected HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("--mqtt {addr}: '{port}' is not a port"))?;
    Ok((host, port))
}

/// With `--mqtt`: the broker and how many alarm messages it had not acknowledged when the demo ended (they are
/// left in `OUT/outbox` until the next demo there, which deletes them).
#[derive(Debug, Clone, Serialize)]
pub struct MqttDelivery {
    pub broker: String,
    pub undelivered: usize,
}

/// What the demo saw.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub machine: String,
    pub section: String,
    pub model_id: String,
    pub fault: String,
    pub fault_start_s: f64,
    pub fault_end_s: f64,
    pub threshold: f64,
    pub windows: usize,
    pub audio_seconds: f64,
    pub wall_seconds: f64,
    /// Mean score of the windows entirely outside / entirely inside the fault.
    pub mean_score_normal: f64,
    pub mean_score_fault: f64,
    pub alarms: Vec<AlarmSpan>,
    /// An alarm was raised during the fault.
    pub detected: bool,
    /// Seconds from the fault's start to the alarm.
    pub detection_delay_s: Option<f64>,
    /// Alarms raised while the machine sounded normal.
    pub false_alarms: usize,
    pub clips: Vec<PathBuf>,
    pub timeline_csv: PathBuf,
    /// The score timeline as a picture (PNG), when it could be drawn.
    pub plot: Option<PathBuf>,
    pub config: PathBuf,
    /// The daemon's exit status (0: the replay ended). The demo's own is 0 when [`Summary::ok`], else 2; its
    /// `--json` says `ok` beside this ([`Summary::to_json`]).
    pub exit_status: i32,
    /// With `--mqtt`: what reached the broker.
    pub mqtt: Option<MqttDelivery>,
}

impl Summary {
    /// The demo did what it is for: raised during the fault, never outside it, and cleared after the repair.
    pub fn ok(&self) -> bool {
        self.detected
            && self.false_alarms == 0
            && self.alarms.iter().all(|a| a.off_s.is_some())
            && self.exit_status == 0
            && self.mqtt.as_ref().is_none_or(|m| m.undelivered == 0)
    }

    /// The summary as `--json` prints it: its fields, and `ok` ([`Summary::ok`]: true exactly when the demo exits
    /// 0), which `exit_status` (the daemon's) was taken for.
    pub fn to_json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct WithVerdict<'a> {
            #[serde(flatten)]
            summary: &'a Summary,
            ok: bool,
        }
        serde_json::to_string_pretty(&WithVerdict {
            summary: self,
            ok: self.ok(),
        })
    }
}

/// The `sonitor run` configuration of the demo.
fn config_text(o: &DemoOptions, t: &Timeline, out: &Path) -> anyhow::Result<String> {
    let abs = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `sonitor demo`; `sonitor run --config` this file replays the demo."
    );
    let _ = writeln!(s, "node_id = \"demo\"");
    let _ = writeln!(s, "state_dir = {}", crate::config::toml_path(&abs(out)?));
    let _ = writeln!(s, "log_level = \"error\"\n");
    let _ = writeln!(s, "[[devices]]\nname = \"recording\"\nsource = \"file\"");
    let _ = writeln!(
        s,
        "path = {}",
        crate::config::toml_path(&abs(&o.recording)?)
    );
    let _ = writeln!(s, "realtime = {}\nat_end = \"exit\"\n", o.realtime);
    let _ = writeln!(s, "[[machines]]\nname = \"{}\"", machine_name(t));
    let _ = writeln!(s, "device = \"recording\"");
    let _ = writeln!(s, "bundle = {}", crate::config::toml_path(&abs(&o.bundle)?));
    let _ = writeln!(s, "section = \"{}\"\n", t.section);
    match &o.mqtt {
        Some(addr) => {
            let (host, port) = broker_address(addr)?;
            let _ = writeln!(s, "[mqtt]\nhost = \"{host}\"\nport = {port}\n");
        }
        None => {
            let _ = writeln!(s, "[mqtt]\nenabled = false\n");
        }
    }
    let _ = writeln!(s, "[metrics]\nenabled = false\n");
    let _ = writeln!(
        s,
        "[clips]\nenabled = true\npre_seconds = 4.0\npost_seconds = 4.0"
    );
    Ok(s)
}

fn machine_name(t: &Timeline) -> String {
    format!("{}-demo", t.machine_type)
}

/// A bar of `width` cells for `score`, full scale at twice the threshold, with `|` at the threshold.
pub fn bar(score: f64, threshold: f64, width: usize) -> String {
    let scale = (2.0 * threshold).max(1e-9);
    let filled = ((score / scale).clamp(0.0, 1.0) * width as f64).round() as usize;
    let mark = width / 2;
    (0..width)
        .map(|i| match (i < filled, i == mark) {
            (_, true) => '|',
            (true, false) => '#',
            (false, false) => '.',
        })
        .collect()
}

/// Runs the demo; prints as it goes; returns the summary.
pub fn run(o: &DemoOptions) -> anyhow::Result<Summary> {
    let t = Timeline::of_recording(&o.recording)?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    // Taken before anything below reads or deletes: a demo (or daemon) that runs on this directory now keeps its
    // state and its configuration file.
    let lock = crate::state_lock::acquire(&o.out, None, None).map_err(|e| match e {
        crate::state_lock::LockError::Held { pid, .. } => anyhow::anyhow!(
            "another {} runs on {} now (a demo still replaying, or a daemon whose state directory it is); \
             nothing there was changed. Give --out another directory, or wait for it to end",
            crate::state_lock::holder_named(pid),
            o.out.display()
        ),
        e => e.into(),
    })?;
    // A fresh start: alarm state and outbox of a previous demo would carry its alarm over. Only a previous
    // demo's are removed: a daemon's state directory given as --out keeps its unsent alarms.
    let config = o.out.join("sonitor-demo.toml");
    let state = ["alarms.json", "outbox"].map(|n| o.out.join(n));
    if !config.exists() && state.iter().any(|p| p.exists()) {
        anyhow::bail!(
            "{} holds alarm state (alarms.json or outbox) that no demo wrote: it looks like a daemon's state \
             directory, whose unsent alarms the demo would delete. Give --out an empty or new directory",
            o.out.display()
        );
    }
    for p in &state {
        if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else if p.exists() {
            std::fs::remove_file(p)
        } else {
            Ok(())
        }
        .with_context(|| format!("removing {} of a previous demo", p.display()))?;
    }
    std::fs::write(&config, config_text(o, &t, &o.out)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let checked = crate::check::check(&config);
    let (bundles, embedders) = (checked.bundles, checked.embedders);
    let cfg = match checked.cfg {
        Some(c) if checked.problems.is_empty() => c,
        _ => anyhow::bail!(
            "the demo cannot run ({}):\n  - {}",
            config.display(),
            checked.problems.join("\n  - ")
        ),
    };
    crate::daemon::init_logging(&cfg.log_level);
    let bundle = bundles
        .values()
        .next()
        .context("the demo configuration has no bundle")?;
    let model_id = bundle.manifest.model_id.clone();
    let window_s = bundle.manifest.features.window_seconds();
    let name = machine_name(&t);
    say!(
        o,
        "sonitor demo: {} ({}), model {model_id}",
        t.machine_type,
        t.section
    );
    say!(
        o,
        "recording {}: {:.0} s — normal, then {} from {:.0} s to {:.0} s, then normal again",
        o.recording.display(),
        t.duration_s,
        t.fault,
        t.fault_start_s,
        t.fault_end_s
    );
    if let Some(m) = &o.mqtt {
        say!(
            o,
            "publishing to mqtt://{m} under sonitor/demo/{name}/… (waiting up to {} s for the broker first)",
            crate::daemon::DEMO_BROKER_WAIT.as_secs()
        );
    }

    let (tx, rx) = crossbeam_channel::unbounded::<Observation>();
    let started = std::time::Instant::now();
    let signals = crate::daemon::Signals::take().context("installing the signal handlers")?;
    let daemon = {
        let config = config.clone();
        std::thread::Builder::new()
            .name("daemon".into())
            .spawn(move || {
                crate::daemon::start(cfg, &config, bundles, embedders, Some(tx), signals, lock)
            })
            .context("starting the daemon thread")?
    };
    let mut csv = String::from("t_end_s,score,threshold,alarm,fault\n");
    let (mut normal, mut fault) = (Vec::new(), Vec::new());
    let mut points = Vec::new();
    let mut alarms: Vec<AlarmSpan> = Vec::new();
    let mut clips = Vec::new();
    let mut threshold = f64::NAN;
    let mut windows = 0;
    let in_fault = |end: f64| end > t.fault_start_s && end - window_s < t.fault_end_s;
    for ob in rx.iter() {
        match ob {
            Observation::Score {
                t_end_ms,
                score,
                threshold: th,
                alarm_on,
                ..
            } => {
                windows += 1;
                threshold = th;
                // An alarm's peak so far: one still on at the end has no OFF to say it (it showed its first score).
                if let Some(a) = alarms.iter_mut().rev().find(|a| a.off_s.is_none()) {
                    a.peak = a.peak.max(score);
                }
                let end = t_end_ms as f64 / 1000.0;
                points.push((end, score));
                let f = in_fault(end);
                if end - window_s >= t.fault_start_s && end <= t.fault_end_s {
                    fault.push(score);
                } else if !f {
                    normal.push(score);
                }
                let _ = writeln!(
                    csv,
                    "{end:.3},{score:.6},{th:.6},{},{}",
                    u8::from(alarm_on),
                    u8::from(f)
                );
                if o.live {
                    say!(
                        o,
                        "{end:6.1} s  {score:.4} {} {}{}",
                        bar(score, th, 40),
                        if alarm_on { "ALARM" } else { "     " },
                        if f { "  (fault audible)" } else { "" }
                    );
                }
            }
            Observation::Alarm {
                on,
                t_ms,
                score,
                event_id,
                ..
            } => {
                let at = t_ms as f64 / 1000.0;
                if on {
                    say!(
                        o,
                        ">>> ALARM ON  at {at:.1} s: score {score:.4} > threshold {threshold:.4} (event {event_id})"
                    );
                    alarms.push(AlarmSpan {
                        on_s: at,
                        off_s: None,
                        peak: score,
                        event_id,
                        during_fault: in_fault(at),
                    });
                } else {
                    say!(
                        o,
                        ">>> ALARM OFF at {at:.1} s: peak {score:.4} (event {event_id})"
                    );
                    if let Some(a) = alarms.iter_mut().rev().find(|a| a.off_s.is_none()) {
                        a.off_s = Some(at);
                        a.peak = a.peak.max(score);
                    }
                }
            }
            Observation::Clip { path } => {
                say!(o, ">>> evidence clip written: {}", path.display());
                clips.push(path);
            }
        }
    }
    let exit_status = match daemon.join() {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => return Err(e.context("the daemon stopped")),
        Err(_) => anyhow::bail!("the daemon thread panicked"),
    };
    // The daemon waits a moment for the broker's acknowledgements before it stops; what is left was not
    // delivered (a broker that is down or refuses the connection).
    let mqtt = o.mqtt.clone().map(|broker| MqttDelivery {
        broker,
        undelivered: std::fs::read_dir(o.out.join("outbox")).map_or(0, |d| d.count()),
    });
    let timeline_csv = o.out.join("timeline.csv");
    std::fs::write(&timeline_csv, csv)
        .with_context(|| format!("writing {}", timeline_csv.display()))?;
    let plot = draw_timeline(&o.out, &t, &points, threshold, &alarms);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let first_hit = alarms.iter().find(|a| a.during_fault).map(|a| a.on_s);
    Ok(Summary {
        machine: name,
        section: t.section.clone(),
        model_id,
        fault: t.fault.clone(),
        fault_start_s: t.fault_start_s,
        fault_end_s: t.fault_end_s,
        threshold,
        windows,
        audio_seconds: t.duration_s,
        wall_seconds: started.elapsed().as_secs_f64(),
        mean_score_normal: mean(&normal),
        mean_score_fault: mean(&fault),
        detected: first_hit.is_some(),
        detection_delay_s: first_hit.map(|s| s - t.fault_start_s),
        false_alarms: alarms.iter().filter(|a| !a.during_fault).count(),
        alarms,
        clips,
        timeline_csv,
        plot,
        config,
        exit_status,
        mqtt,
    })
}

/// Draws the score timeline with the fault and the alarms shaded: `OUT/timeline.png`. A picture that cannot be
/// drawn (no font installed) is reported, not fatal.
fn draw_timeline(
    out: &Path,
    t: &Timeline,
    points: &[(f64, f64)],
    threshold: f64,
    alarms: &[AlarmSpan],
) -> Option<PathBuf> {
    use sonitor_core::plot::{score_timeline, Band};
    let end = points.last().map_or(t.duration_s, |p| p.0);
    let mut bands = vec![Band {
        from: t.fault_start_s,
        to: t.fault_end_s,
        label: format!("{} audible", t.fault),
        color: (255, 150, 0),
    }];
    bands.extend(alarms.iter().map(|a| Band {
        from: a.on_s,
        to: a.off_s.unwrap_or(end),
        label: "alarm on".into(),
        color: (220, 0, 0),
    }));
    let title = format!("sonitor demo: {} ({})", t.machine_type, t.section);
    let png = out.join("timeline.png");
    let result = score_timeline(&png, &title, points, threshold, &bands).map(|()| png);
    match result {
        Ok(p) => Some(p),
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "note: no timeline picture: {e}");
            None
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "summary")?;
        writeln!(
            f,
            "  {} windows of {:.0} s of audio in {:.1} s ({:.0}× real time)",
            self.windows,
            self.audio_seconds,
            self.wall_seconds,
            self.audio_seconds / self.wall_seconds.max(1e-9)
        )?;
        writeln!(
            f,
            "  threshold {:.4}; mean score {:.4} while normal, {:.4} during the fault",
            self.threshold, self.mean_score_normal, self.mean_score_fault
        )?;
        writeln!(
            f,
            "  fault ({}) audible from {:.0} s to {:.0} s",
            self.fault, self.fault_start_s, self.fault_end_s
        )?;
        for a in &self.alarms {
            writeln!(
                f,
                "  alarm {}: on at {:.1} s, off at {}, peak {:.4} — {}",
                a.event_id,
                a.on_s,
                a.off_s
                    .map_or("the end (still on)".to_string(), |s| format!("{s:.1} s")),
                a.peak,
                if a.during_fault {
                    "during the fault"
                } else {
                    "FALSE ALARM: the machine sounded normal"
                }
            )?;
        }
        // An alarm raised before the fault (a false one) that is still on through it: no alarm was raised by the
        // fault, but one was on; "no alarm while the fault was audible" said otherwise.
        let on_through = self.alarms.iter().any(|a| {
            a.on_s <= self.fault_start_s && a.off_s.is_none_or(|off| off > self.fault_start_s)
        });
        match self.detection_delay_s {
            Some(d) => writeln!(f, "  detected {d:.1} s after the fault began")?,
            None if on_through => writeln!(
                f,
                "  NOT DETECTED as such: no alarm was raised during the fault; a false alarm raised before it was \
                 still on"
            )?,
            None => writeln!(f, "  MISSED: no alarm while the fault was audible")?,
        }
        for c in &self.clips {
            writeln!(f, "  evidence clip: {}", c.display())?;
        }
        match &self.mqtt {
            Some(m) if m.undelivered == 0 => {
                writeln!(f, "  MQTT: every alarm message acknowledged by {}", m.broker)?
            }
            Some(m) => writeln!(
                f,
                "  MQTT: NOT DELIVERED: {} alarm message(s) never acknowledged by {} (is it running and \
                 reachable?); they are left in {} until the next demo on this directory, which starts afresh and \
                 deletes them",
                m.undelivered,
                m.broker,
                self.config.with_file_name("outbox").display()
            )?,
            None => {}
        }
        // The demo's retained topics stay on the broker (a phantom node `demo` beside the plant's, review26), and
        // its events carry the times they were published at, the recording played as fast as it is scored.
        // The address was checked when the demo's configuration was written. Not said when the alarms did not
        // get through: most often no broker was reached, and the line spoke of topics left on none (review28).
        if let Some((host, port)) = self
            .mqtt
            .as_ref()
            .filter(|m| m.undelivered == 0)
            .and_then(|m| broker_address(&m.broker).ok())
        {
            writeln!(
                f,
                "  MQTT: its retained topics (status, node, alarm, state, …) stay on the broker; remove them with \
                 `mosquitto_sub -h {host} -p {port} -t 'sonitor/demo/#' --remove-retained -W 2`. Its events' times \
                 are when they were published, the recording played as fast as it is scored"
            )?;
        }
        writeln!(
            f,
            "  score timeline: {}{}; configuration: {}",
            self.timeline_csv.display(),
            self.plot
                .as_ref()
                .map_or(String::new(), |p| format!(" and {}", p.display())),
            self.config.display()
        )?;
        write!(
            f,
            "  result: {}",
            if self.ok() {
                "OK — alarm during the fault, none outside it, cleared after the repair"
            } else if self.mqtt.as_ref().is_some_and(|m| m.undelivered > 0) {
                "NOT OK — the alarms were not delivered over MQTT"
            } else if self.detected
                && self.false_alarms == 0
                && self.alarms.iter().any(|a| a.off_s.is_none())
            {
                // Said nowhere above: the alarm came during the fault and is still on at the end of the recording.
                "NOT OK — the alarm did not clear after the repair: it was still on when the recording ended"
            } else if self.exit_status != 0 {
                "NOT OK — the daemon did not end cleanly (its log above says why)"
            } else {
                "NOT OK — see above"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recording that is not there is named as such, not as a timeline that cannot be read.
    #[test]
    fn a_missing_recording_is_named_before_its_timeline() {
        let d = tempfile::tempdir().unwrap();
        let e = Timeline::of_recording(&d.path().join("nope.wav"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.wav is not there"), "{e}");
        assert!(!e.contains("timeline nope.json"), "{e}");
    }

    /// A recording of one's own (no timeline beside it) is pointed to `sonitor run`'s replay, not left with a
    /// file that cannot be read (review28).
    #[test]
    fn a_recording_without_a_timeline_is_pointed_to_run() {
        let d = tempfile::tempdir().unwrap();
        let wav = d.path().join("mine.wav");
        std::fs::write(&wav, b"RIFF").unwrap();
        let e = Timeline::of_recording(&wav).unwrap_err().to_string();
        assert!(
            e.contains("has no timeline") && e.contains("replay it with `sonitor run`"),
            "{e}"
        );
    }

    /// A recording cut before the repair: the alarm came during the fault and is still on at the end. Not OK (it
    /// did not clear), and the verdict says why: it said "see above", where nothing did.
    #[test]
    fn an_alarm_still_on_at_the_end_is_the_reason_given() {
        let mut s = Summary {
            machine: "pump-demo".into(),
            section: "pump/section_00".into(),
            model_id: "m".into(),
            fault: "clogging".into(),
            fault_start_s: 20.0,
            fault_end_s: 44.0,
            threshold: 0.05,
            windows: 45,
            audio_seconds: 46.0,
            wall_seconds: 1.0,
            mean_score_normal: 0.01,
            mean_score_fault: 0.3,
            alarms: vec![AlarmSpan {
                on_s: 27.0,
                off_s: None,
                peak: 0.4,
                event_id: "e1".into(),
                during_fault: true,
            }],
            detected: true,
            detection_delay_s: Some(7.0),
            false_alarms: 0,
            clips: Vec::new(),
            timeline_csv: "t.csv".into(),
            plot: None,
            config: "c.toml".into(),
            exit_status: 0,
            mqtt: None,
        };
        assert!(!s.ok());
        let text = s.to_string();
        assert!(
            text.contains("NOT OK — the alarm did not clear after the repair"),
            "{text}"
        );
        s.alarms[0].off_s = Some(49.0);
        assert!(s.ok() && s.to_string().contains("result: OK"));
        // With --mqtt: how to remove what it left retained on that broker, and what its events' times are.
        assert!(!s.to_string().contains("--remove-retained"));
        s.mqtt = Some(MqttDelivery {
            broker: "10.0.0.5:1884".into(),
            undelivered: 0,
        });
        let text = s.to_string();
        assert!(
            text.contains(
                "mosquitto_sub -h 10.0.0.5 -p 1884 -t 'sonitor/demo/#' --remove-retained -W 2"
            ) && text.contains("the recording played as fast as it is scored"),
            "{text}"
        );
        // Not delivered (no broker there, most often): no topics to remove are spoken of.
        s.mqtt.as_mut().unwrap().undelivered = 4;
        let text = s.to_string();
        assert!(
            text.contains("NOT DELIVERED: 4 alarm message(s)")
                && !text.contains("--remove-retained"),
            "{text}"
        );
    }

    #[test]
    fn bar_marks_the_threshold_in_the_middle() {
        assert_eq!(bar(0.0, 0.5, 10), ".....|....");
        assert_eq!(bar(0.5, 0.5, 10), "#####|....");
        assert_eq!(bar(2.0, 0.5, 10), "#####|####");
    }

    #[test]
    fn config_quotes_paths_and_checks_the_broker_address() {
        let t = Timeline {
            machine_type: "fan".into(),
            section: "fan/section_00".into(),
            fault: "imbalance".into(),
            duration_s: 60.0,
            fault_start_s: 20.0,
            fault_end_s: 44.0,
        };
        let mut o = DemoOptions {
            bundle: "/m/b\"x".into(),
            recording: "/m/demo.wav".into(),
            out: "/tmp/o".into(),
            mqtt: None,
            realtime: false,
            live: true,
            json: false,
        };
        let s = config_text(&o, &t, Path::new("/tmp/o")).unwrap();
        assert!(s.contains("bundle = \"/m/b\\\"x\""), "{s}");
        assert!(s.contains("enabled = false"), "{s}");
        // The daemon's own loader accepts it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, &s).unwrap();
        let c = crate::config::Config::load(&p).unwrap();
        assert_eq!(c.machines[0].section, "fan/section_00");
        assert!(!c.mqtt.enabled);
        o.mqtt = Some("127.0.0.1".into());
        let e = config_text(&o, &t, Path::new("/tmp/o")).unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
    }
}
