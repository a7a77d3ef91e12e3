//! `sonitor run` and `sonitor validate`: checks the configuration, wires the threads together and runs the
//! detector/controller loop (scores → detectors → outbox → MQTT, clips, health, commands, SIGHUP, systemd).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, unbounded, Sender};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sonitor_core::bundle::Bundle;
use sonitor_core::detect::{Detector, DetectorParams, Transition};

use crate::capture::{SourceEvent, StreamHandle};
use crate::config::{Config, MachineConfig, MissingDirs, SourceKind};
use crate::metrics::Metrics;
use crate::mqtt::{Command, ToMqtt};
use crate::outbox::{OutMessage, Outbox};
use crate::pipeline::{ClipRequest, MachineTap, ReaderEvent, ScoreMsg, Scorer};

/// What the daemon reports, as it happens, to an observer in the same process (`sonitor demo` draws from it).
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A scored window of a machine, after the detector saw it.
    Score {
        machine: usize,
        t_end_ms: u64,
        score: f64,
        threshold: f64,
        alarm_on: bool,
    },
    /// An alarm transition, after it is in the outbox.
    Alarm {
        machine: usize,
        on: bool,
        t_ms: u64,
        score: f64,
        event_id: String,
        clip: Option<String>,
    },
    /// An evidence clip was written.
    Clip { path: PathBuf },
}

/// A machine whose `threshold_off` lies above the bundle's threshold, the one in force when the machine sets
/// none of its own (with its own, the pair is checked with the file: `Config::static_problems`).
fn threshold_off_above_bundle(m: &MachineConfig, bundle_threshold: f64) -> Option<String> {
    if m.detector.threshold.is_some() {
        return None;
    }
    let off = m
        .detector
        .threshold_off
        .filter(|off| *off > bundle_threshold)?;
    Some(format!(
        "machine '{}': threshold_off ({off}) is above the threshold in force ({bundle_threshold})",
        m.name
    ))
}

/// What [`check`] found.
#[derive(Default)]
pub struct Checked {
    /// `None` when the file could not be read at all.
    pub cfg: Option<Config>,
    /// The loaded bundles, by path.
    pub bundles: BTreeMap<PathBuf, Bundle>,
    /// Their embedders, built and run once by the check ([`crate::model::Embedder::check`]): `start` takes them
    /// instead of building them again.
    pub embedders: BTreeMap<PathBuf, crate::model::Embedder>,
    /// Empty when the configuration is usable.
    pub problems: Vec<String>,
    /// What does not stop it (room on disk: [`Config::disk_check`]; a capture device not there now).
    pub warnings: Vec<String>,
}

/// Loads the configuration and checks everything that can be checked before running: files, bundles,
/// sections, channels, devices, ports, the state directory.
pub fn check(path: &Path) -> Checked {
    check_with(path, None, MissingDirs::Create)
}

/// [`check`] that keeps nothing it writes (`sonitor validate`): a state or clips directory that does not exist
/// yet is left missing, shown only to be one that `run` can create.
pub fn check_leaving_no_trace(path: &Path) -> Checked {
    check_with(path, None, MissingDirs::Probe)
}

/// What a running daemon tells the check of a reload ([`check_with`]).
struct Running<'a> {
    cfg: &'a Config,
    /// The `onnx_sha256` of the graphs it runs: tract has built and run those already.
    graphs: &'a std::collections::BTreeSet<String>,
}

/// [`check`], by a daemon that runs `running` (a reload): a capture device of `running` that the file leaves as
/// it is may be held open by this daemon, so that it cannot be asked for its configurations now; that is a
/// warning, not a problem. A bundle whose graph it runs is not built with tract again (a reload must not stall
/// the controller for each model).
fn check_with(path: &Path, running: Option<&Running>, missing: MissingDirs) -> Checked {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return Checked {
                problems: e.problems(),
                ..Checked::default()
            }
        }
    };
    let mut problems = cfg.static_problems();
    let disk = cfg.disk_check(missing);
    problems.extend(disk.problem);
    let mut warnings = disk.warnings;
    // The MQTT options `run` builds: the password file read, the TLS configuration made from the CA and client
    // files (a file that exists but is no certificate would otherwise stop every start). After the simpler
    // checks of [mqtt], which name a missing file better.
    if cfg.mqtt.enabled && !problems.iter().any(|p| p.starts_with("mqtt")) {
        if let Err(e) = crate::mqtt::options(&cfg) {
            let e = format!("{e:#}");
            problems.push(if e.starts_with("mqtt") {
                e
            } else {
                format!(
                    "mqtt.tls: {e} (ca_file must hold PEM CA certificates, client_cert and client_key the PEM \
                     certificate chain and key of this client)"
                )
            });
        }
    }
    let mut bundles = BTreeMap::new();
    let mut embedders = BTreeMap::new();
    // Bundles already refused: each is loaded (and built by tract) once, however many machines use it.
    let mut refused = std::collections::BTreeSet::new();
    for m in &cfg.machines {
        let at = format!("machine '{}'", m.name);
        if !m.bundle.join(sonitor_core::bundle::MANIFEST_FILE).is_file()
            || refused.contains(&m.bundle)
        {
            continue; // already reported
        }
        if !bundles.contains_key(&m.bundle) {
            // The manifest and its graph agree (Bundle::load), and tract can build and run that graph as `run`
            // will: a bundle tract cannot run is a problem of the configuration (exit 78), not a start that
            // fails (exit 1) and is restarted forever.
            let loaded = Bundle::load(&m.bundle)
                .map_err(|e| format!("{at}: bundle refused: {e}"))
                .and_then(|b| match running {
                    Some(r) if r.graphs.contains(&b.manifest.onnx_sha256) => Ok((b, None)),
                    _ => match crate::model::Embedder::check(&b) {
                        Ok(e) => Ok((b, Some(e))),
                        Err(e) => Err(format!(
                        "{at}: bundle {} refused: {e:#} (re-export the graph with operators and shapes that \
                         tract runs)",
                        m.bundle.display()
                    )),
                    },
                });
            match loaded {
                Ok((b, e)) => {
                    bundles.insert(m.bundle.clone(), b);
                    embedders.extend(e.map(|e| (m.bundle.clone(), e)));
                }
                Err(e) => {
                    problems.push(e);
                    refused.insert(m.bundle.clone());
                    continue;
                }
            }
        }
        let b = &bundles[&m.bundle];
        match b.manifest.section_by_key(&m.section) {
            None => problems.push(format!(
                "{at}: bundle {} has no section '{}' (it has: {})",
                m.bundle.display(),
                m.section,
                b.manifest
                    .sections
                    .iter()
                    .map(|s| s.key())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(s) => problems.extend(threshold_off_above_bundle(m, s.threshold.value)),
        }
    }
    // Channels and devices.
    for d in &cfg.devices {
        let users: Vec<&MachineConfig> =
            cfg.machines.iter().filter(|m| m.device == d.name).collect();
        match d.source {
            SourceKind::File => {
                let Some(p) = d.path.as_ref().filter(|p| p.is_file()) else {
                    continue;
                };
                // The header, then the data to its end: a truncated or corrupt recording is named here, before
                // `run` starts (the file source itself only reads the header).
                match sonitor_core::audio::check_wav(p) {
                    Err(e) => problems.push(format!("device '{}': {e}", d.name)),
                    Ok(info) => {
                        // Played once (not looped), a file shorter than one analysis window is never scored;
                        // an empty one is not even looped.
                        let window = users
                            .iter()
                            .filter_map(|m| bundles.get(&m.bundle))
                            .map(|b| b.manifest.features.window_seconds())
                            .fold(0.0, f64::max);
                        let once = d.at_end != crate::config::AtEnd::Loop;
                        if info.frames == 0 || (once && info.duration_seconds() < window) {
                            problems.push(format!(
                                "device '{}': {} holds {:.2} s of audio, less than one {window} s analysis window: \
                                 nothing would be scored",
                                d.name,
                                p.display(),
                                info.duration_seconds()
                            ));
                        }
                        for m in users {
                            if m.channel >= info.channels {
                                problems.push(format!(
                                    "machine '{}': channel {} does not exist: {} has {} channel(s)",
                                    m.name,
                                    m.channel,
                                    p.display(),
                                    info.channels
                                ));
                            }
                        }
                    }
                }
            }
            SourceKind::Capture => {
                let spec = d.device.as_deref().unwrap_or("default");
                // A device not there now, or not answering now, is waited for.
                let waited_for = |why: String, until: &str| {
                    format!(
                        "device '{}'{why}: its machines ({}) report health NO_AUDIO until it {until}, and \
                         `sonitor run` keeps trying to open it (check the name if it should be there now)",
                        d.name,
                        users.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                };
                match crate::capture::find_device(spec) {
                    // Not a mistake in the file: a microphone unplugged, or not yet there at boot. Refusing to
                    // start (exit 78, which the service does not restart) would leave the machine unwatched
                    // until someone came; `run` starts, reports NO_AUDIO and opens it when it appears.
                    Err(e) if e.is_retryable() => {
                        warnings.push(waited_for(format!(": {e}"), "appears"))
                    }
                    Err(e) => problems.push(format!("device '{}': {e}", d.name)),
                    Ok(dev) => {
                        let rate = users
                            .first()
                            .and_then(|m| bundles.get(&m.bundle))
                            .map_or(16_000, |b| b.manifest.features.sample_rate);
                        match crate::capture::choose_config(&dev, d, rate) {
                            // The daemon holds it open (a hw: device cannot be queried while in use): the same
                            // hardware, whatever else of its settings the new file changes (a larger
                            // buffer_frames, as the overrun warning advises, applies at the next start).
                            Err(e)
                                if running.is_some_and(|r| {
                                    r.cfg.devices.iter().any(|h| {
                                        h.name == d.name && h.source == d.source && h.device == d.device
                                    })
                                }) =>
                            {
                                warnings.push(format!(
                                    "device '{}' ({spec}): {e:#} (it is in use by this daemon: its channels are \
                                     checked again at the next start)",
                                    d.name
                                ))
                            }
                            // The same as a device not found: `default` with no sound card (ALSA always has
                            // a `default` PCM), or a device busy with another program.
                            Err(e) if e.is_retryable() => {
                                warnings.push(waited_for(format!(" ({spec}): {e}"), "answers"))
                            }
                            // ALSA's `default` routed to a sound server (a desktop image's PipeWire or
                            // PulseAudio) that a system service cannot reach.
                            Err(e) if e.is_backend() && spec == "default" => {
                                problems.push(format!(
                                    "device '{}' ({spec}): {e}: ALSA's `default` here may go through a sound \
                                     server (PipeWire, PulseAudio) that does not answer, and a system service \
                                     cannot reach a desktop session's server: name the card instead, as `sonitor \
                                     devices` lists it (e.g. device = \"alsa:plughw:CARD=…,DEV=0\")",
                                    d.name
                                ))
                            }
                            Err(e) => problems.push(format!("device '{}' ({spec}): {e}", d.name)),
                            Ok((sc, _)) => {
                                for m in users {
                                    if m.channel >= sc.channels {
                                        problems.push(format!(
                                            "machine '{}': channel {} does not exist: device '{}' opens with {} channel(s) (set `channels` on the device)",
                                            m.name, m.channel, d.name, sc.channels
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Checked {
        cfg: Some(cfg),
        bundles,
        embedders,
        problems,
        warnings,
    }
}

/// A minimal logger to stderr (journald adds time and unit).
struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // Not `eprintln!`, which panics when stderr is gone (a log collector that died, a closed pipe):
            // the daemon keeps watching its machines without a log rather than stop.
            let _ = writeln!(
                std::io::stderr().lock(),
                "sonitor[{}]: {}",
                r.level(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

pub fn init_logging(level: &str) {
    let filter = match level {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger(filter)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(filter);
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What survives a restart per machine (`<state_dir>/alarms.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SavedMachine {
    pub event: Option<ActiveEvent>,
    pub seq: u64,
    pub enabled: bool,
    /// The configuration file's `enabled` for the machine when this was saved (`None`: saved by a version that
    /// did not record it). A start whose file says otherwise applies the file's value, as SIGHUP does; one whose
    /// file says the same keeps `enabled`, which an `enabled/set` command may have changed since.
    #[serde(default)]
    pub file_enabled: Option<bool>,
    pub threshold_override: Option<f64>,
    /// Wall-clock end of a mute (Unix seconds), as saved for the next start. While the daemon runs, the mute's
    /// end is [`MachineRt::mute_deadline`] and this is written from it.
    pub muted_until_unix: Option<u64>,
    /// When `muted_until_unix` was saved (Unix seconds). A start whose clock reads earlier (a Raspberry Pi
    /// without a real-time clock restores the time of its last shutdown or older until NTP answers) lets the
    /// mute run for what was left then, not for the clock's error on top: see [`mute_left_at_start`].
    #[serde(default)]
    pub muted_saved_unix: Option<u64>,
}

/// How long a mute saved with the state still runs at a start: to its saved end on today's clock, but never
/// longer than what was left when it was saved. A clock that reads earlier than the save (not yet synchronised
/// after a power cut) would otherwise stretch a maintenance mute by its error and keep real alarms quiet.
fn mute_left_at_start(until: u64, saved_at: Option<u64>, now: u64) -> Duration {
    Duration::from_secs(until.saturating_sub(now.max(saved_at.unwrap_or(0))))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActiveEvent {
    pub event_id: String,
    pub started_at: String,
    pub peak: f64,
    pub clip: Option<String>,
}

/// The saved state of every machine. Each machine's entry is read on its own: one that cannot be read (a
/// hand edit, a file from another version) starts that machine fresh, with a warning, and keeps the others.
fn load_saved(path: &Path) -> BTreeMap<String, SavedMachine> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return BTreeMap::new(),
    };
    let entries: BTreeMap<String, serde_json::Value> = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            log::warn!(
                "{}: unreadable ({e}); starting with all alarms off",
                path.display()
            );
            return BTreeMap::new();
        }
    };
    // A mute saved by an older version, or edited by hand, ends within the longest a command may ask for:
    // with the bound in `mqtt::parse_command`, every mute end the daemon handles is a date near now.
    let latest = unix_now().saturating_add(crate::mqtt::MAX_MUTE.as_secs());
    entries
        .into_iter()
        .filter_map(|(name, v)| match serde_json::from_value::<SavedMachine>(v) {
            Ok(mut m) => {
                m.muted_until_unix = m.muted_until_unix.map(|u| u.min(latest));
                // `threshold/set` refuses such a value; a hand edit is dropped rather than obeyed.
                if let Some(why) = m
                    .threshold_override
                    .and_then(sonitor_core::score::threshold_problem)
                {
                    log::warn!(
                        "{}: the saved threshold of machine '{name}' {why}; it uses the configured one",
                        path.display()
                    );
                    m.threshold_override = None;
                }
                Some((name, m))
            }
            Err(e) => {
                log::warn!(
                    "{}: the entry of machine '{name}' is unreadable ({e}); it starts with its alarm off",
                    path.display()
                );
                None
            }
        })
        .collect()
}

struct MachineRt {
    cfg: MachineConfig,
    input: usize,
    detector: Detector,
    bundle_threshold: f64,
    model_id: String,
    saved: SavedMachine,
    last_score: f64,
    last_t_ms: u64,
    last_score_pub: Option<Instant>,
    since: String,
    health: String,
    /// Whether the last window's level was below the machine's `idle_below_dbfs`: the machine is not running.
    idle: bool,
    /// When a mute ends, on the monotonic clock: a wall-clock jump (NTP's first answer on a Pi) neither ends it
    /// early nor stretches it, and neither does an input that is away (stream time stops with the audio). The
    /// detector stays muted until [`Controller::end_mute_if_due`] unmutes it.
    mute_deadline: Option<Instant>,
}

impl MachineRt {
    /// The mute's end on today's wall clock (Unix seconds, rounded up), while one runs.
    fn muted_until_unix(&self) -> Option<u64> {
        let left = self
            .mute_deadline?
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())?;
        Some(unix_now() + left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Starts a mute of `duration` (zero: ends it) at stream time `now_ms`; muting ends an active alarm.
    fn mute(&mut self, now_ms: u64, duration: Duration) -> Option<Transition> {
        self.mute_deadline = if duration.is_zero() {
            None
        } else {
            // Bounded by `mqtt::MAX_MUTE`; an Instant that far out cannot overflow.
            Instant::now().checked_add(duration)
        };
        self.detector
            .set_muted(self.mute_deadline.is_some(), now_ms)
    }
}

/// Whether a machine starts enabled, from its saved state and the file's `enabled` (`file`). The last change
/// wins, as while the daemon runs: a file whose value differs from the one saved with the state (changed while the
/// daemon was stopped) applies its value, as SIGHUP would; otherwise the saved value stands, which an `enabled/set`
/// command may have set. State saved without the file's value (an older version) keeps what that version did: the
/// file can disable, and a saved disable stays.
fn enabled_at_start(saved: Option<&SavedMachine>, file: bool) -> bool {
    match saved {
        None => file,
        Some(s) => match s.file_enabled {
            Some(was) if was != file => file,
            Some(_) => s.enabled,
            None => s.enabled && file,
        },
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where an input stands, as its source's events said.
#[derive(Debug, Clone, PartialEq)]
enum InputState {
    /// Open and delivering (or about to).
    Open,
    /// Not open: why its last attempt to open failed (`None` before any attempt, or after a stall), so that each
    /// new reason is logged once (a device that appears but cannot give the configured channels says so) and
    /// repeats are not.
    Down(Option<String>),
}

struct Controller {
    cfg: Config,
    config_path: PathBuf,
    base: String,
    machines: Vec<MachineRt>,
    outbox: Arc<Mutex<Outbox>>,
    mqtt: Option<Sender<ToMqtt>>,
    clip_tx: Vec<Sender<ClipRequest>>,
    clip_writer: Sender<crate::pipeline::ClipAudio>,
    metrics: Arc<Metrics>,
    saved_path: PathBuf,
    /// Per input: open, or down with why its last attempt failed.
    inputs: Vec<InputState>,
    /// A file source's replay ended on an error (the file changed under it): `run` exits with
    /// [`EXIT_INPUT`] once it stops instead of 0.
    replay_failed: bool,
    observer: Option<Sender<Observation>>,
    /// The clips of the alarm events still on, which the clip retention keeps ([`crate::clips::Retention`]).
    open_clips: Arc<Mutex<std::collections::BTreeSet<PathBuf>>>,
    /// The `onnx_sha256` of the graphs this daemon runs (a reload need not build them again).
    graphs: std::collections::BTreeSet<String>,
}

impl Controller {
    fn observe(&self, o: Observation) {
        if let Some(tx) = &self.observer {
            let _ = tx.send(o);
        }
    }

    fn send(&self, m: ToMqtt) {
        if let Some(tx) = &self.mqtt {
            if tx.try_send(m).is_err() {
                self.metrics.mqtt_dropped.inc();
            }
        }
    }

    fn retained(&self, topic: String, payload: String, publish_now: bool) {
        self.send(ToMqtt::Retained {
            topic,
            payload,
            publish_now,
        });
    }

    fn persist(&self) {
        // Every change of an event passes here: the set the retention keeps follows it.
        if let Ok(mut open) = self.open_clips.lock() {
            *open = open_event_clips(&self.machines);
        }
        let map: BTreeMap<String, SavedMachine> = self
            .machines
            .iter()
            .map(|m| {
                let mut saved = m.saved.clone();
                saved.muted_until_unix = m.muted_until_unix();
                saved.muted_saved_unix = saved.muted_until_unix.map(|_| unix_now());
                saved.file_enabled = Some(m.cfg.enabled);
                (m.cfg.name.clone(), saved)
            })
            .collect();
        let text = serde_json::to_string_pretty(&map).unwrap_or_default();
        if let Err(e) = sonitor_core::atomic_file::write_durable(&self.saved_path, text.as_bytes())
        {
            log::error!("cannot save {}: {e}", self.saved_path.display());
        }
    }

    fn params_of(m: &MachineRt) -> DetectorParams {
        m.cfg
            .detector
            .params_with_override(m.bundle_threshold, m.saved.threshold_override)
    }

    fn state_json(&self, i: usize) -> String {
        let m = &self.machines[i];
        let p = m.detector.params();
        let on = m.detector.is_on();
        json!({
            "state": if on { "ON" } else { "OFF" },
            "score": m.last_score,
            "threshold": p.threshold_on,
            "threshold_off": p.threshold_off,
            "since": m.since,
            "seq": m.saved.seq,
            "model_id": m.model_id,
            "section": m.cfg.section,
            "enabled": m.detector.enabled(),
            "muted_until": m.muted_until_unix()
                .map(|u| humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(u)).to_string()),
            "event_id": m.saved.event.as_ref().map(|e| e.event_id.clone()),
            "health": m.health,
            "idle": m.idle,
        })
        .to_string()
    }

    /// Publishes the retained per-machine topics that are not alarm messages.
    fn publish_machine_state(&self, i: usize) {
        let m = &self.machines[i];
        let t = format!("{}/{}", self.base, m.cfg.name);
        self.retained(format!("{t}/state"), self.state_json(i), true);
        self.retained(
            format!("{t}/threshold"),
            format!("{}", m.detector.params().threshold_on),
            true,
        );
        let muted = m.muted_until_unix().is_some();
        self.retained(
            format!("{t}/mute"),
            if muted { "ON" } else { "OFF" }.into(),
            true,
        );
        self.retained(
            format!("{t}/enabled"),
            if m.detector.enabled() { "ON" } else { "OFF" }.into(),
            true,
        );
        self.retained(format!("{t}/health"), m.health.clone(), true);
    }

    fn publish_discovery(&self) {
        if !self.cfg.mqtt.discovery.enabled {
            return;
        }
        let node = &self.cfg.node_id;
        let dp = self.cfg.mqtt.discovery.prefix.trim_end_matches('/');
        let device = json!({
            "identifiers": [format!("sonitor_{node}")],
            "name": format!("sonitor {node}"),
            "manufacturer": "sonitor",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        for m in &self.machines {
            let name = &m.cfg.name;
            let t = format!("{}/{}", self.base, name);
            let uid = format!("sonitor_{node}_{name}");
            self.retained(
                format!("{dp}/binary_sensor/{uid}_alarm/config"),
                json!({
                    "name": format!("{name} anomaly"),
                    "unique_id": format!("{uid}_alarm"),
                    "state_topic": format!("{t}/alarm"),
                    "payload_on": "ON", "payload_off": "OFF",
                    "device_class": "problem",
                    "availability_topic": format!("{}/status", self.base),
                    "payload_available": "online", "payload_not_available": "offline",
                    "json_attributes_topic": format!("{t}/state"),
                    "device": device,
                })
                .to_string(),
                true,
            );
            self.retained(
                format!("{dp}/sensor/{uid}_score/config"),
                json!({
                    "name": format!("{name} anomaly score"),
                    "unique_id": format!("{uid}_score"),
                    "state_topic": format!("{t}/score"),
                    "state_class": "measurement",
                    "availability_topic": format!("{}/status", self.base),
                    "payload_available": "online", "payload_not_available": "offline",
                    "device": device,
                })
                .to_string(),
                true,
            );
        }
    }

    /// Records a transition: outbox first (durable), then state, then MQTT, clip, metrics.
    fn on_transition(&mut self, i: usize, t: Transition) {
        let base = self.base.clone();
        let node = self.cfg.node_id.clone();
        let clips_enabled = self.cfg.clips.enabled;
        let clips_dir = self.cfg.clips_dir();
        let m = &mut self.machines[i];
        let name = m.cfg.name.clone();
        let topic = format!("{base}/{name}");
        let threshold = m.detector.params().threshold_on;
        m.saved.seq += 1;
        let now = now_rfc3339();
        m.since = now.clone();
        let msgs = match t {
            Transition::Raised { at_ms, score } => {
                let millis = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let event_id = crate::clips::event_id(&node, &name, millis, m.saved.seq);
                let mut clip = clips_enabled.then(|| {
                    crate::clips::clip_path(&clips_dir, &name, &event_id)
                        .display()
                        .to_string()
                });
                if let Some(path) = &clip {
                    let asked = self.clip_tx[m.input].try_send(ClipRequest {
                        machine: i,
                        onset_end_ms: at_ms,
                        pre_seconds: self.cfg.clips.pre_seconds,
                        post_seconds: self.cfg.clips.post_seconds,
                        path: PathBuf::from(path),
                    });
                    // The input's reader has a whole queue of clips still waiting for their audio: this one is
                    // dropped and counted, and its events say `clip: null` rather than name a file never written.
                    if asked.is_err() {
                        self.metrics.clips_dropped.inc();
                        log::warn!(
                            "clip {path}: the input's queue of clips waiting for audio is full; this alarm goes \
                             without a clip"
                        );
                        clip = None;
                    }
                }
                let note = format!(
                    "alarm ON: {name} score {score:.4} > threshold {threshold:.4} (event {event_id})"
                );
                let ev = json!({
                    "event_id": event_id, "type": "start", "machine": name,
                    "score": score, "peak_score": score, "threshold": threshold,
                    "started_at": now, "ended_at": null, "clip": clip,
                    "model_id": m.model_id, "seq": m.saved.seq,
                });
                m.saved.event = Some(ActiveEvent {
                    event_id,
                    started_at: now.clone(),
                    peak: score,
                    clip,
                });
                self.metrics.machines[i].alarm.set(1);
                self.metrics.machines[i].alarms.inc();
                let seen = Observation::Alarm {
                    machine: i,
                    on: true,
                    t_ms: at_ms,
                    score,
                    event_id: ev["event_id"].as_str().unwrap_or_default().to_string(),
                    clip: ev["clip"].as_str().map(String::from),
                };
                vec![("ON".to_string(), ev, note, seen)]
            }
            Transition::Cleared {
                peak,
                reason,
                at_ms,
                ..
            } => {
                let ev_info = m.saved.event.take();
                let (event_id, started_at, clip) = match ev_info {
                    Some(e) => (e.event_id, e.started_at, e.clip),
                    None => (
                        format!("{node}-{name}-unknown-{}", m.saved.seq),
                        String::new(),
                        None,
                    ),
                };
                let note =
                    format!("alarm OFF: {name} ({reason:?}, peak {peak:.4}, event {event_id})");
                let ev = json!({
                    "event_id": event_id, "type": "end", "machine": name,
                    "peak_score": peak, "threshold": threshold,
                    "started_at": started_at, "ended_at": now, "clip": clip,
                    "reason": reason, "model_id": m.model_id, "seq": m.saved.seq,
                });
                self.metrics.machines[i].alarm.set(0);
                let seen = Observation::Alarm {
                    machine: i,
                    on: false,
                    t_ms: at_ms,
                    score: peak,
                    event_id: ev["event_id"].as_str().unwrap_or_default().to_string(),
                    clip: ev["clip"].as_str().map(String::from),
                };
                vec![("OFF".to_string(), ev, note, seen)]
            }
        };
        // The saved state may claim an open event that no message announced yet, never the reverse: a crash
        // between the two writes then resumes the event at restart (its end may come twice) instead of leaving
        // an announced event that never ends, or starting a second one beside it. So a raise is saved before
        // its messages enter the outbox, a clear after.
        let raised = m.saved.event.is_some();
        if raised {
            self.persist();
        }
        let mut out = Vec::new();
        for (alarm, ev, note, seen) in msgs {
            out.push(OutMessage {
                topic: format!("{topic}/alarm"),
                payload: alarm.clone(),
                retain: true,
            });
            out.push(OutMessage {
                topic: format!("{topic}/events"),
                payload: ev.to_string(),
                retain: false,
            });
            let pushed = self
                .outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(std::mem::take(&mut out));
            // Logged once the transition is on disk (or known not to be).
            match pushed {
                Ok(_) => log::warn!("{note}"),
                Err(e) => log::error!(
                    "{note}; {e}: the transition is kept in memory only: it is published when the broker is \
                     reachable, but lost if sonitor stops before that; make the state directory's filesystem writable \
                     again (free space, remount it read-write)"
                ),
            }
            self.retained(format!("{topic}/alarm"), alarm, false);
            self.observe(seen);
        }
        if !raised {
            self.persist();
        }
        self.send(ToMqtt::OutboxChanged);
        self.publish_machine_state(i);
    }

    fn on_score(&mut self, s: ScoreMsg) {
        crate::fault::point("controller");
        let i = s.machine;
        log::debug!(
            "score {} t={} ms: {:.4}",
            self.machines[i].cfg.name,
            s.t_end_ms,
            s.score
        );
        // A window scored after the mute's end counts towards an alarm.
        self.end_mute_if_due(i);
        self.metrics.machines[i]
            .window_level
            .set_f64(f64::from(s.level_dbfs));
        let idle = self.machines[i]
            .cfg
            .detector
            .idle_below_dbfs
            .is_some_and(|below| s.level_dbfs < below);
        if idle != self.machines[i].idle {
            let m = &mut self.machines[i];
            m.idle = idle;
            let below = m.cfg.detector.idle_below_dbfs.unwrap_or_default();
            if idle {
                log::info!(
                    "{}: not running (window level {:.1} dBFS, below idle_below_dbfs {below}): not judged until it \
                     runs again",
                    m.cfg.name,
                    s.level_dbfs
                );
            } else {
                log::info!(
                    "{}: running again (window level {:.1} dBFS)",
                    m.cfg.name,
                    s.level_dbfs
                );
            }
            self.publish_machine_state(i);
        }
        if idle {
            self.metrics.machines[i].idle_windows.inc();
            let m = &mut self.machines[i];
            m.last_t_ms = s.t_end_ms;
            if let Some(t) = m.detector.idle(s.t_end_ms) {
                self.on_transition(i, t);
            }
            self.window_handled(i, s.t_end_ms);
            return;
        }
        self.metrics.machines[i].scores.observe(s.score);
        let t = {
            let m = &mut self.machines[i];
            m.last_score = s.score;
            m.last_t_ms = s.t_end_ms;
            if let Some(e) = m.saved.event.as_mut() {
                e.peak = e.peak.max(s.score);
            }
            m.detector.update(s.t_end_ms, s.score)
        };
        if let Some(t) = t {
            self.on_transition(i, t);
        }
        self.window_handled(i, s.t_end_ms);
        if self.observer.is_some() {
            let m = &self.machines[i];
            self.observe(Observation::Score {
                machine: i,
                t_end_ms: s.t_end_ms,
                score: s.score,
                threshold: m.detector.params().threshold_on,
                alarm_on: m.detector.is_on(),
            });
        }
        // Telemetry is dropped while the broker is away; the interval starts with the first score that can go out
        // (after a (re)connection, the next score is published, not one up to `score_interval` later).
        let interval = self.cfg.mqtt.score_interval;
        let connected = self.metrics.mqtt_connected.get() == 1;
        let m = &mut self.machines[i];
        if connected && m.last_score_pub.is_none_or(|p| p.elapsed() >= interval) {
            m.last_score_pub = Some(Instant::now());
            let topic = format!("{}/{}/score", self.base, m.cfg.name);
            self.send(ToMqtt::Transient {
                topic,
                payload: format!("{:.6}", s.score),
                qos1: false,
            });
        }
    }

    /// Machine `i`'s window ending at `t_end_ms` is handled (through the detector, its alarm's clip asked for):
    /// a replay held back for it may read on (`pipeline::LeadGuard`).
    fn window_handled(&self, i: usize, t_end_ms: u64) {
        let mm = &self.metrics.machines[i];
        mm.handled_ms
            .fetch_max(t_end_ms, std::sync::atomic::Ordering::Release);
        mm.settled.inc();
    }

    fn on_command(&mut self, c: Command) {
        let name = match &c {
            Command::Threshold { machine, .. }
            | Command::Mute { machine, .. }
            | Command::Enabled { machine, .. } => machine.clone(),
        };
        let Some(i) = self.machines.iter().position(|m| m.cfg.name == name) else {
            log::warn!(
                "command for unknown machine {} ignored",
                crate::mqtt::quoted(&name)
            );
            return;
        };
        let now_ms = self.machines[i].last_t_ms;
        let t = match c {
            Command::Threshold { value, .. } => {
                let m = &mut self.machines[i];
                m.saved.threshold_override = value;
                let p = Self::params_of(m);
                m.detector.set_params(p);
                None
            }
            Command::Mute { duration, .. } => self.machines[i].mute(now_ms, duration),
            Command::Enabled { enabled, .. } => {
                let m = &mut self.machines[i];
                m.saved.enabled = enabled;
                m.detector.set_enabled(enabled, now_ms)
            }
        };
        if let Some(t) = t {
            self.on_transition(i, t);
        } else {
            self.persist();
        }
        self.publish_machine_state(i);
    }

    /// SIGHUP: detector settings (thresholds, debounce) and `enabled` from the file; audio keeps flowing. A file
    /// that `sonitor validate` would refuse (the same [`check`]: bundles built by tract, sections, devices, MQTT
    /// credentials, …) is refused whole now, so that a reload never leaves a daemon that cannot restart; settings
    /// that need a restart are named.
    fn reload(&mut self) {
        let path = self.config_path.display().to_string();
        let checked = check_with(
            &self.config_path,
            Some(&Running {
                cfg: &self.cfg,
                graphs: &self.graphs,
            }),
            MissingDirs::Create,
        );
        let Some(new) = checked.cfg else {
            log::error!(
                "reload: {}; keeping the running configuration",
                checked.problems.join("; ")
            );
            return;
        };
        let mut problems = checked.problems;
        for nm in &new.machines {
            let Some(m) = self.machines.iter().find(|m| m.cfg.name == nm.name) else {
                continue;
            };
            // The new settings against the running bundle too (`check` saw the bundle on disk).
            if let Some(p) = threshold_off_above_bundle(nm, m.bundle_threshold) {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
        if !problems.is_empty() {
            log::error!(
                "reload: {path}: {}; keeping the running configuration (`sonitor validate` names the same \
                 problems, and a restart would refuse the file)",
                problems.join("; ")
            );
            return;
        }
        for w in &checked.warnings {
            log::warn!("reload: {w}");
        }
        let mut changed = 0;
        for i in 0..self.machines.len() {
            let name = self.machines[i].cfg.name.clone();
            let Some(nm) = new.machines.iter().find(|m| m.name == name) else {
                log::warn!("reload: machine '{name}' is gone from the file; a restart is needed to remove it");
                continue;
            };
            let m = &mut self.machines[i];
            if m.cfg.detector != nm.detector {
                m.cfg.detector = nm.detector.clone();
                let p = Self::params_of(m);
                m.detector.set_params(p);
                changed += 1;
            }
            let enabled_changed = m.cfg.enabled != nm.enabled;
            m.cfg.enabled = nm.enabled;
            if enabled_changed {
                let now_ms = self.machines[i].last_t_ms;
                let t = self.machines[i].detector.set_enabled(nm.enabled, now_ms);
                self.machines[i].saved.enabled = nm.enabled;
                if let Some(t) = t {
                    self.on_transition(i, t);
                }
            }
            self.publish_machine_state(i);
        }
        for what in crate::config::changes_needing_restart(&self.cfg, &new) {
            log::warn!("reload: {what} changed in {path}; not applied until sonitor restarts");
        }
        self.cfg.mqtt.score_interval = new.mqtt.score_interval;
        self.persist();
        log::info!("reloaded {path}: {changed} machine(s) with new detector settings");
    }

    /// Ends machine `i`'s mute once its deadline has passed: unmutes the detector, publishes the state and saves
    /// it. Called for every score and from the main loop's periodic work (an input that is away sends none).
    fn end_mute_if_due(&mut self, i: usize) {
        let m = &mut self.machines[i];
        if m.mute_deadline.is_none_or(|d| d > Instant::now()) {
            return;
        }
        m.mute_deadline = None;
        m.detector.set_muted(false, m.last_t_ms);
        log::info!("{}: mute ended", m.cfg.name);
        self.publish_machine_state(i);
        self.persist();
    }

    /// Hands clip audio to the clip writer thread ([`crate::clips::hand_over`]). A clip that cannot be handed over
    /// (the writer is a whole queue behind, on a slow or full disk) is counted as dropped, and its event's end says
    /// `clip: null` as for a clip whose write failed.
    fn write_clip(&mut self, c: crate::pipeline::ClipAudio, wait: bool) {
        if let Err((c, why)) = crate::clips::hand_over(&self.clip_writer, c, wait) {
            self.metrics.clips_dropped.inc();
            log::warn!(
                "clip {}: {why}; this one is dropped and its event goes on without it",
                c.path.display()
            );
            self.on_clip_failed(&c.path);
        }
    }

    /// The clip of an open event could not be written: its end event says `clip: null` instead of naming a
    /// file that does not exist (the start event, already sent, named where it would be).
    fn on_clip_failed(&mut self, path: &Path) {
        let path = path.display().to_string();
        let mut changed = false;
        for m in &mut self.machines {
            if let Some(e) = m
                .saved
                .event
                .as_mut()
                .filter(|e| e.clip.as_ref() == Some(&path))
            {
                e.clip = None;
                changed = true;
            }
        }
        if changed {
            self.persist();
        }
    }

    fn set_health(&mut self, i: usize, health: String) {
        if self.machines[i].health != health {
            let level = if health == "OK" {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(level, "health of {}: {health}", self.machines[i].cfg.name);
            self.machines[i].health = health;
            self.publish_machine_state(i);
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, taken from the moment this is made: a thread receives them, raises the flag of
/// each (`term` for the first two) and wakes the main loop at once through `wake`, so that the loop need not poll
/// the flags. Made before the configuration check, which builds and runs the models and reads a file source's WAV
/// to its end (`sonitor validate` of models/default and a 30-minute WAV: 0.03 s on the 2-core build machine; longer
/// on a Pi): a signal that arrives while the daemon starts is taken when its main loop starts, instead of ending
/// the process by the signal's default action.
///
/// A panic in any thread (a bug) is taken the same way ([`panic_hook`]): logged, named in `panicked`, and the
/// loop woken to stop with [`EXIT_INTERNAL`], so that the service manager restarts sonitor instead of leaving it
/// running without that thread (a reader that no longer cuts windows, a clip writer gone: nothing that
/// starves the watchdog).
pub struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    panicked: Arc<Mutex<Option<String>>>,
    wake: crossbeam_channel::Receiver<()>,
}

/// How long after a panic the process is ended whatever the main loop does ([`panic_hook`]): its orderly stop
/// (the detectors' state saved, MQTT's last messages, the clips still waiting written) ended 0.05 s after the
/// panic of the clips thread in a replay of the demo recording in real time, with every other thread answering.
const PANIC_EXIT_AFTER: Duration = Duration::from_secs(20);

/// The process-wide panic hook of [`Signals`]: logs the panic (the thread, where, the message, a backtrace),
/// names the thread in `panicked` and wakes the main loop, which stops in order
/// with [`EXIT_INTERNAL`]. If that stop does not end the process within [`PANIC_EXIT_AFTER`] (the main loop is
/// the thread that panicked, or a thread the stop waits for hangs), the process exits with that status anyway.
fn panic_hook(
    panicked: Arc<Mutex<Option<String>>>,
    wake: Sender<()>,
) -> Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> {
    let exit_armed = AtomicBool::new(false);
    Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let line = format!(
            "thread '{thread}' panicked{at}: {message} (a bug in sonitor {}; please report this line)",
            crate::VERSION
        );
        // Always, whatever RUST_BACKTRACE says: a bug met by an unattended daemon is rarely met again on demand.
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        let backtrace = backtrace.trim_end();
        let text = format!("{line}\nbacktrace of the panic:\n{backtrace}");
        // Before the configuration is read the logger is not set up yet: stderr, which the journal keeps too.
        if log::log_enabled!(log::Level::Error) {
            log::error!("{text}");
        } else {
            eprintln!("sonitor: {text}");
        }
        if let Ok(mut p) = panicked.lock() {
            p.get_or_insert(thread);
        }
        let _ = wake.try_send(());
        if !exit_armed.swap(true, Ordering::SeqCst) {
            let _ = std::thread::Builder::new()
                .name("panic-exit".into())
                .spawn(|| {
                    std::thread::sleep(PANIC_EXIT_AFTER);
                    eprintln!(
                        "sonitor: the stop after a panic did not end within {} s; exiting with status \
                         {EXIT_INTERNAL}",
                        PANIC_EXIT_AFTER.as_secs()
                    );
                    std::process::exit(EXIT_INTERNAL);
                });
        }
    })
}

impl Signals {
    pub fn take() -> std::io::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        let panicked = Arc::new(Mutex::new(None));
        let (wake_tx, wake) = crossbeam_channel::bounded::<()>(4);
        std::panic::set_hook(panic_hook(panicked.clone(), wake_tx.clone()));
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        {
            let (term, hup) = (term.clone(), hup.clone());
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    for sig in signals.forever() {
                        let flag = if sig == SIGHUP { &hup } else { &term };
                        flag.store(true, Ordering::SeqCst);
                        let _ = wake_tx.try_send(());
                    }
                })?;
        }
        Ok(Signals {
            term,
            hup,
            panicked,
            wake,
        })
    }

    /// A SIGTERM or SIGINT has come.
    pub fn stop_asked(&self) -> bool {
        self.term.load(Ordering::SeqCst)
    }
}

/// Runs the daemon; returns the process exit status.
pub fn run(config_path: &Path) -> i32 {
    let signals = match Signals::take() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sonitor: cannot install the signal handlers: {e}");
            return 1;
        }
    };
    let checked = check(config_path);
    // Stopped while the configuration was checked (`systemctl stop` during a slow start): nothing has been
    // started, nothing to publish or save.
    if signals.stop_asked() {
        eprintln!(
            "sonitor: stopped before it started (SIGTERM or SIGINT during the configuration check)"
        );
        return 0;
    }
    let Some(cfg) = checked.cfg.filter(|_| checked.problems.is_empty()) else {
        eprintln!("sonitor: {} cannot be used:", config_path.display());
        for p in &checked.problems {
            eprintln!("  - {p}");
        }
        return crate::config::EXIT_CONFIG;
    };
    init_logging(&cfg.log_level);
    for w in checked.warnings {
        log::warn!("{w}");
    }
    // A panic of the main loop itself (the hook has logged it) ends the process with the status of any other
    // thread's, without the orderly stop that loop would have made.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        start(
            cfg,
            config_path,
            checked.bundles,
            checked.embedders,
            None,
            signals,
        )
    }));
    match started {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            log::error!("{e:#}");
            if let Some(crate::state_lock::LockError::Held { .. }) = e.downcast_ref() {
                crate::state_lock::EXIT_STATE_BUSY
            } else {
                1
            }
        }
        Err(_) => thread_died(
            "the main loop",
            "it panicked (logged above), and the threads it ran stop with the process",
        ),
    }
}

/// The clips of the machines' alarm events still on (the clip retention keeps them).
fn open_event_clips(machines: &[MachineRt]) -> std::collections::BTreeSet<PathBuf> {
    machines
        .iter()
        .filter_map(|m| m.saved.event.as_ref()?.clip.as_ref().map(PathBuf::from))
        .collect()
}

/// How long `sonitor demo --mqtt` waits for the broker before it replays (see [`start`]).
pub const DEMO_BROKER_WAIT: Duration = Duration::from_secs(3);

/// Runs a checked configuration (see [`check`]) until it ends; every scored window, alarm transition and
/// written clip is also sent to `observer`. Returns the exit status.
pub fn start(
    cfg: Config,
    config_path: &Path,
    bundles: BTreeMap<PathBuf, Bundle>,
    mut embedders_built: BTreeMap<PathBuf, crate::model::Embedder>,
    observer: Option<Sender<Observation>>,
    signals: Signals,
) -> anyhow::Result<i32> {
    let Signals {
        term,
        hup,
        panicked,
        wake: signal_rx,
    } = signals;
    // Before anything in the state directory is read or written; held until this function returns.
    let _state_lock = crate::state_lock::acquire(&cfg.state_dir)?;
    let base = cfg.topic_base();
    let input_names: Vec<String> = cfg.devices.iter().map(|d| d.name.clone()).collect();
    let machine_names: Vec<String> = cfg.machines.iter().map(|m| m.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&input_names, &machine_names));
    if cfg.metrics.enabled {
        crate::metrics::serve_or_retry(
            &cfg.metrics.listen,
            metrics.clone(),
            Duration::from_secs(30),
        );
    }

    // Models: one embedder per bundle, one scorer per machine.
    let graphs = bundles
        .values()
        .map(|b| b.manifest.onnx_sha256.clone())
        .collect();
    let mut bundle_index: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut embedders = Vec::new();
    for (path, b) in &bundles {
        bundle_index.insert(path.clone(), embedders.len());
        embedders.push(match embedders_built.remove(path) {
            Some(e) => e,
            None => crate::model::Embedder::load(b)?,
        });
        log::info!(
            "model {} from {} ready",
            b.manifest.model_id,
            path.display()
        );
    }
    let saved_path = cfg.state_dir.join("alarms.json");
    let saved = load_saved(&saved_path);
    let mut scorers = Vec::new();
    let mut feature_params = Vec::new();
    let mut machines = Vec::new();
    // Alarms resumed from the saved state that the start itself ends (the machine disabled, or muted): handled as
    // every transition once the controller exists, so that their events end.
    let mut ended_at_start: Vec<(usize, Transition)> = Vec::new();
    for m in &cfg.machines {
        let b = &bundles[&m.bundle];
        let section = b
            .manifest
            .section_by_key(&m.section)
            .ok_or_else(|| anyhow::anyhow!("section {} vanished", m.section))?;
        scorers.push(Scorer {
            model: bundle_index[&m.bundle],
            centroids: section.centroids.clone(),
        });
        feature_params.push(b.manifest.features.clone());
        let input = cfg
            .devices
            .iter()
            .position(|d| d.name == m.device)
            .ok_or_else(|| anyhow::anyhow!("device {} vanished", m.device))?;
        let mut s = saved.get(&m.name).cloned().unwrap_or_default();
        s.enabled = enabled_at_start(saved.get(&m.name), m.enabled);
        if m.enabled && !s.enabled {
            let by = if saved.get(&m.name).is_some_and(|s| s.file_enabled.is_none()) {
                "an `enabled/set OFF` or an earlier file"
            } else {
                "an `enabled/set OFF`"
            };
            log::warn!(
                "machine '{}' stays disabled as saved in {} (by {by}); `enabled/set ON` enables it",
                m.name,
                saved_path.display()
            );
        }
        let mut rt = MachineRt {
            cfg: m.clone(),
            input,
            detector: Detector::new(m.detector.params(section.threshold.value)),
            bundle_threshold: section.threshold.value,
            model_id: b.manifest.model_id.clone(),
            saved: s,
            last_score: 0.0,
            last_t_ms: 0,
            last_score_pub: None,
            idle: false,
            since: now_rfc3339(),
            mute_deadline: None,
            // Until its input has opened: a restart while the microphone is away must not report OK for the
            // moment before the first attempt to open it fails.
            health: "NO_AUDIO".into(),
        };
        let p = Controller::params_of(&rt);
        rt.detector = match &rt.saved.event {
            Some(e) => {
                log::warn!(
                    "{}: alarm {} was on when the daemon stopped; resuming it",
                    m.name,
                    e.event_id
                );
                metrics.machines[machines.len()].alarm.set(1);
                Detector::resume_on(p, 0, e.peak)
            }
            None => Detector::new(p),
        };
        let i = machines.len();
        if !rt.saved.enabled {
            ended_at_start.extend(rt.detector.set_enabled(false, 0).map(|t| (i, t)));
        }
        // The saved end is on the wall clock (the only clock that survives a restart); from here on the mute runs
        // on the monotonic one.
        if let Some(u) = rt.saved.muted_until_unix.take() {
            let left = mute_left_at_start(u, rt.saved.muted_saved_unix.take(), unix_now());
            if !left.is_zero() {
                ended_at_start.extend(rt.mute(0, left).map(|t| (i, t)));
            }
        }
        machines.push(rt);
    }

    // MQTT.
    let outbox = Arc::new(Mutex::new(Outbox::open(
        &cfg.state_dir.join("outbox"),
        cfg.mqtt.outbox_max,
    )?));
    let waiting = outbox.lock().map(|o| o.len()).unwrap_or(0);
    if waiting > 0 {
        log::info!("outbox: {waiting} alarm message(s) from a previous run wait for the broker");
    }
    let (cmd_tx, cmd_rx) = bounded::<Command>(64);
    let (mqtt_tx, mqtt_rx) = bounded::<ToMqtt>(1024);
    // The watchdog's check interval, and the longest the MQTT publisher and the clip writer sleep: half of it, so
    // that every check finds a turn since the one before, whatever their phase (without a watchdog they sleep
    // until there is work).
    let watchdog = watchdog_interval();
    let beat = watchdog.map(|w| w / 2);
    let mqtt_thread = if cfg.mqtt.enabled {
        Some(crate::mqtt::spawn(
            &cfg,
            outbox.clone(),
            mqtt_rx,
            cmd_tx,
            metrics.clone(),
            beat,
        )?)
    } else {
        None
    };

    // `sonitor demo` replays its recording in a moment, and telemetry goes out only while the session is
    // connected: with a broker to publish to, it gives the session a moment to connect first. The daemon never
    // waits: its microphones start at once, and its alarms wait in the outbox.
    if observer.is_some() && mqtt_thread.is_some() {
        let deadline = Instant::now() + DEMO_BROKER_WAIT;
        while metrics.mqtt_connected.get() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if metrics.mqtt_connected.get() == 0 {
            log::warn!(
                "the broker {}:{} has not answered within {} s; replaying without it (alarms wait in the outbox)",
                cfg.mqtt.host,
                cfg.mqtt.port,
                DEMO_BROKER_WAIT.as_secs()
            );
        }
    }

    // Pipeline.
    let stop = Arc::new(AtomicBool::new(false));
    let queue = cfg.pipeline.queue;
    let (win_tx, win_rx) = bounded(queue);
    let (feat_tx, feat_rx) = bounded(queue);
    let (feat_recycle_tx, feat_recycle_rx) = bounded(queue * 2 + 2);
    let (score_tx, score_rx) = bounded::<ScoreMsg>(256);
    let (src_tx, src_rx) = unbounded::<SourceEvent>();
    let (reader_tx, reader_rx) = bounded::<ReaderEvent>(256);
    let mut recycle_windows = Vec::new();
    let mut clip_tx = Vec::new();
    let mut threads = Vec::new();
    let history = if cfg.clips.enabled {
        cfg.clips.pre_seconds + cfg.clips.post_seconds + 30.0
    } else {
        0.0
    };
    for (di, d) in cfg.devices.iter().enumerate() {
        let taps: Vec<MachineTap> = cfg
            .machines
            .iter()
            .enumerate()
            .filter(|(_, m)| m.device == d.name)
            .map(|(mi, m)| MachineTap {
                machine: mi,
                channel: m.channel as usize,
                features: feature_params[mi].clone(),
                history_seconds: history + feature_params[mi].window_seconds() as f32,
                lossless: d.source == SourceKind::File && !d.realtime,
                // The history reaches `post_seconds + 30 s` behind the reader (before the onset window and
                // its `pre_seconds`): 10 s of it are left as margin.
                max_lead: cfg
                    .clips
                    .enabled
                    .then(|| Duration::from_secs_f32(cfg.clips.post_seconds.max(0.0) + 20.0)),
            })
            .collect();
        let model_rate = taps.first().map_or(16_000, |t| t.features.sample_rate);
        let (stream_tx, stream_rx) = bounded::<StreamHandle>(4);
        let (rec_tx, rec_rx) = bounded::<Vec<f32>>(queue * 2 + 2);
        let (ctx, crx) = bounded::<ClipRequest>(16);
        recycle_windows.push(rec_tx);
        clip_tx.push(ctx);
        threads.push(crate::pipeline::spawn_reader(
            di,
            d.name.clone(),
            taps,
            stream_rx,
            win_tx.clone(),
            rec_rx,
            crx,
            reader_tx.clone(),
            cfg.health.clone(),
            metrics.clone(),
            stop.clone(),
        )?);
        let t = match d.source {
            SourceKind::Capture => crate::capture::spawn_capture(
                di,
                d.clone(),
                model_rate,
                metrics.clone(),
                stream_tx,
                src_tx.clone(),
                stop.clone(),
            )?,
            SourceKind::File => crate::capture::spawn_file(
                di,
                d.clone(),
                metrics.clone(),
                stream_tx,
                src_tx.clone(),
                stop.clone(),
            )?,
        };
        threads.push(t);
    }
    drop(win_tx);
    let machine_input: Vec<usize> = machines.iter().map(|m| m.input).collect();
    let features_thread = crate::pipeline::spawn_features(
        feature_params,
        win_rx,
        recycle_windows,
        machine_input,
        feat_tx,
        feat_recycle_rx,
        metrics.clone(),
    )?;
    let inference_thread = crate::pipeline::spawn_inference(
        embedders,
        scorers,
        feat_rx,
        feat_recycle_tx,
        score_tx,
        metrics.clone(),
    )?;

    // Clip writer.
    let (clip_audio_tx, clip_audio_rx) =
        bounded::<crate::pipeline::ClipAudio>(crate::clips::CLIP_QUEUE);
    let clips_cfg = cfg.clips.clone();
    let clips_dir = cfg.clips_dir();
    let node_id = cfg.node_id.clone();
    // The clips of events resumed from the last run, kept from the retention's first pass on.
    let open_clips = Arc::new(Mutex::new(open_event_clips(&machines)));
    let open_clips_r = open_clips.clone();
    let clip_metrics = metrics.clone();
    let clip_observer = observer.clone();
    // Clips that could not be written, so that the end of their event does not name them.
    let (clip_failed_tx, clip_failed_rx) = bounded::<PathBuf>(8);
    let clip_thread = std::thread::Builder::new()
        .name("clips".into())
        .spawn(move || {
            // The retention runs at start, after every clip, and every `retention_interval` in between: clips
            // past clips.max_age go even when no alarm brings a new clip. Under a watchdog the loop also turns twice
            // per check, to show it is not stuck.
            let every = crate::clips::retention_interval(&clips_cfg);
            let mut retention = crate::clips::Retention::new(&node_id);
            let mut retention_due = Instant::now();
            loop {
                clip_metrics.clips_beats.inc();
                crate::fault::hang("clips");
                if Instant::now() >= retention_due {
                    if clips_cfg.enabled {
                        let open = open_clips_r.lock().map(|o| o.clone()).unwrap_or_default();
                        let removed = retention.enforce(&clips_dir, &clips_cfg, &open);
                        clip_metrics.clips_removed.add(removed as u64);
                    }
                    retention_due = Instant::now() + every;
                }
                let until_due = retention_due.saturating_duration_since(Instant::now());
                let wait = beat.map_or(until_due, |b| until_due.min(b));
                let c = match clip_audio_rx.recv_timeout(wait) {
                    Ok(c) => c,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                crate::fault::point("clips");
                retention_due = Instant::now();
                match crate::clips::write_clip(&c) {
                    Ok(()) => {
                        retention.written(&c.path);
                        clip_metrics.clips_written.inc();
                        log::info!("clip written: {}", c.path.display());
                        if let Some(tx) = &clip_observer {
                            let _ = tx.send(Observation::Clip {
                                path: c.path.clone(),
                            });
                        }
                    }
                    Err(e) => {
                        clip_metrics.clips_dropped.inc();
                        log::error!(
                            "clip {}: {e:#}; the event goes on without it",
                            c.path.display()
                        );
                        let _ = clip_failed_tx.try_send(c.path.clone());
                    }
                }
            }
        })?;

    let mut ctl = Controller {
        base: base.clone(),
        config_path: config_path.to_path_buf(),
        machines,
        outbox,
        mqtt: cfg.mqtt.enabled.then_some(mqtt_tx.clone()),
        clip_tx,
        clip_writer: clip_audio_tx,
        metrics: metrics.clone(),
        saved_path,
        inputs: vec![InputState::Down(None); cfg.devices.len()],
        replay_failed: false,
        observer,
        open_clips,
        graphs,
        cfg,
    };
    // End events, OFF through the outbox, the saved state and the alarm gauge, as for any transition.
    for (i, t) in ended_at_start {
        ctl.on_transition(i, t);
    }
    ctl.publish_discovery();
    for i in 0..ctl.machines.len() {
        let m = &ctl.machines[i];
        let alarm = if m.detector.is_on() { "ON" } else { "OFF" };
        ctl.retained(format!("{}/{}/alarm", base, m.cfg.name), alarm.into(), true);
        ctl.publish_machine_state(i);
    }
    ctl.persist();

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut last_wd = Instant::now();
    let mut wd_marks = WatchMarks::default();
    let mut last_status = Instant::now() - Duration::from_secs(60);
    let mut finished_inputs = vec![false; ctl.cfg.devices.len()];
    let exit_when_finished = ctl
        .cfg
        .devices
        .iter()
        .all(|d| d.source == SourceKind::File && d.at_end == crate::config::AtEnd::Exit);
    // Alarm times follow the system clock: say when it cannot be trusted (a Pi before NTP answers) and when it
    // jumps, so that nobody reads a boot-time alarm as one of days ago without being told.
    let mut clock = crate::clock::ClockWatch::start();
    metrics.clock_synchronized.set(clock.synchronized_gauge());
    log::info!(
        "sonitor {} running: {} machine(s) on {} input(s), topics under {base}",
        crate::VERSION,
        ctl.machines.len(),
        ctl.cfg.devices.len()
    );

    // The periodic work (watchdog, status, mute expiry) needs no finer clock; every wake-up costs CPU on a
    // small board. Draining after the last replayed file checks the queues more often.
    let every = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
    let mut tick = crossbeam_channel::tick(every);
    let mut draining_since: Option<Instant> = None;
    let mut exit_code = 0;
    loop {
        select! {
            recv(score_rx) -> s => match s {
                Ok(s) => ctl.on_score(s),
                // The readers hold the window channel open until `stop`, so the scores only end early if a
                // features or inference thread died; after every replayed file ended it is just the end.
                Err(_) if draining_since.is_some() => break,
                Err(_) => {
                    exit_code = thread_died("the features or inference thread", "no more windows are scored");
                    break;
                }
            },
            recv(src_rx) -> e => if let Ok(e) = e { on_source_event(&mut ctl, e) },
            recv(clip_failed_rx) -> p => match p {
                Ok(p) => ctl.on_clip_failed(&p),
                // The clips thread holds its end until the loop has ended: gone now, it died (and a
                // disconnected channel would wake this loop at once, again and again).
                Err(_) => {
                    exit_code = thread_died("the clips thread", "evidence clips are no longer written");
                    break;
                }
            },
            recv(reader_rx) -> e => match e {
                Ok(ReaderEvent::Health(h)) => {
                    let state = if h.silent { "SILENT" } else if h.clipping { "CLIPPING" } else { "OK" };
                    ctl.set_health(h.machine, state.into());
                }
                // Never blocks the loop: a full queue drops the clip (counted).
                Ok(ReaderEvent::Clip(c)) => ctl.write_clip(c, false),
                Ok(ReaderEvent::ClipDropped { path }) => ctl.on_clip_failed(&path),
                Ok(ReaderEvent::Finished { input }) => {
                    finished_inputs[input] = true;
                    if exit_when_finished && finished_inputs.iter().all(|f| *f) {
                        log::info!("all files replayed; finishing the pipeline");
                        draining_since = Some(Instant::now());
                        tick = crossbeam_channel::tick(Duration::from_millis(100));
                    }
                }
                Err(_) => {}
            },
            recv(cmd_rx) -> c => match c {
                Ok(c) => ctl.on_command(c),
                Err(_) => {
                    exit_code = thread_died("the MQTT thread", "alarms can no longer be published");
                    break;
                }
            },
            recv(signal_rx) -> _ => {},
            recv(tick) -> _ => {},
        }
        if let Some(thread) = panicked_thread(&panicked) {
            exit_code = thread_died(
                &thread,
                "it panicked (logged above), and the daemon does not run on without it",
            );
            break;
        }
        if hup.swap(false, Ordering::SeqCst) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
            ctl.reload();
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
        if term.load(Ordering::SeqCst) {
            log::info!("stopping");
            break;
        }
        if let Some(since) = draining_since {
            // Windows already cut still go through features and inference.
            let idle = win_queue_empty(&metrics);
            if (idle && since.elapsed() > Duration::from_millis(500))
                || since.elapsed() > Duration::from_secs(10)
            {
                while let Ok(s) = score_rx.try_recv() {
                    ctl.on_score(s);
                }
                break;
            }
        }
        // Watchdog: fed while frames and inferences advance, or while no input is open and every input's
        // supervisor is visibly waiting to reopen it (a microphone unplugged: restarting the daemon would not
        // bring it back, and each restart takes the node offline on MQTT), and in both cases only while every
        // input's reader turns. A supervisor stuck in the audio stack, a reader stuck (its windows stop, so the
        // pipeline looks idle), or a pipeline that stops scoring the audio it gets, still starves it.
        if let Some(every) = watchdog {
            if last_wd.elapsed() >= every {
                let now = WatchMarks::read(&metrics, mqtt_thread.is_some());
                // Progress is measured from the last ping, not the last check: a window hop longer than the check
                // interval, or a check that falls between an input's frames and its next inference, only delays
                // the ping; systemd kills the daemon only after a whole WatchdogSec without any.
                let any_open = ctl.inputs.contains(&InputState::Open);
                let idle = win_queue_empty(&metrics);
                if watchdog_fed(&now, &wd_marks, idle, any_open) {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    wd_marks = now;
                }
                last_wd = Instant::now();
            }
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            if clock.check() {
                metrics.clock_jumps.inc();
            }
            metrics.clock_synchronized.set(clock.synchronized_gauge());
            let on = ctl.machines.iter().filter(|m| m.detector.is_on()).count();
            let status = format!(
                "{} machine(s), {on} alarm(s) on, mqtt {}",
                ctl.machines.len(),
                if metrics.mqtt_connected.get() == 1 {
                    "connected"
                } else {
                    "disconnected"
                }
            );
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
            // A mute whose machine gets no audio ends here (the retained state says so).
            for i in 0..ctl.machines.len() {
                ctl.end_mute_if_due(i);
            }
        }
    }

    if exit_code == 0 && ctl.replay_failed {
        log::error!(
            "a replayed file could not be read to its end; exiting with status {EXIT_INPUT}"
        );
        exit_code = EXIT_INPUT;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    crate::fault::hang("stopping");
    stop.store(true, Ordering::SeqCst);
    // Unblocks a pipeline that waits on the detector (lossless file replay).
    drop(score_rx);
    ctl.persist();
    if let Some(tx) = ctl.mqtt.take() {
        let _ = tx.send(ToMqtt::Shutdown);
    }
    drop(mqtt_tx);
    if let Some(t) = mqtt_thread {
        let _ = t.join();
    }
    for t in threads {
        let _ = t.join();
    }
    // The readers, stopping, served the clips still waiting for audio with what there was: written before the
    // exit, not lost with the process.
    while let Ok(e) = reader_rx.try_recv() {
        match e {
            ReaderEvent::Clip(c) => ctl.write_clip(c, true),
            ReaderEvent::ClipDropped { path } => ctl.on_clip_failed(&path),
            _ => {}
        }
    }
    drop(ctl.clip_writer);
    drop(features_thread);
    drop(inference_thread);
    let _ = clip_thread.join();
    // A thread that panicked while the daemon stopped (the loop had ended and no longer looked): the stop is
    // not a clean one either.
    if let Some(thread) = panicked_thread(&panicked).filter(|_| exit_code == 0) {
        exit_code = thread_died(&thread, "it panicked while the daemon stopped");
    }
    let mut outbox = ctl.outbox.lock().unwrap_or_else(|e| e.into_inner());
    // The disk may have room again (clips removed, space freed) since the last transition tried.
    outbox.write_memory_only();
    let lost: Vec<String> = outbox
        .memory_only()
        .map(|r| format!("{} {} on {}", r.seq, r.msg.payload, r.msg.topic))
        .collect();
    let waiting = outbox.len() - lost.len();
    if waiting > 0 && ctl.cfg.mqtt.enabled {
        log::warn!(
            "{waiting} alarm message(s) not acknowledged by the broker wait in {} for the next start",
            ctl.cfg.state_dir.join("outbox").display()
        );
    }
    // Without MQTT nothing is ever sent from the outbox; the next start with MQTT on sends what is on disk.
    if !lost.is_empty() && ctl.cfg.mqtt.enabled {
        log::error!(
            "{} alarm message(s) not acknowledged by the broker could not be written to {} and are lost; \
             each follows",
            lost.len(),
            ctl.cfg.state_dir.join("outbox").display(),
        );
        // Each named, however many: these alarms reach no one, and this log is their only trace.
        for m in lost {
            log::error!("lost alarm message {m}");
        }
    }
    Ok(exit_code)
}

/// Exit status when a replayed file could not be read to its end (EX_IOERR).
pub const EXIT_INPUT: i32 = 74;

/// Exit status when a thread of the daemon itself stopped (EX_SOFTWARE): not a configuration problem, so
/// the service manager restarts sonitor (`Restart=on-failure`).
pub const EXIT_INTERNAL: i32 = 70;

/// The thread the panic hook named (`thread 'NAME'`), taken: each panic ends the loop once.
fn panicked_thread(panicked: &Mutex<Option<String>>) -> Option<String> {
    let name = panicked.lock().ok()?.take()?;
    Some(format!("thread '{name}'"))
}

/// Logs that `thread` stopped unexpectedly and what that means; returns the exit status to stop with.
fn thread_died(thread: &str, consequence: &str) -> i32 {
    log::error!(
        "{thread} stopped unexpectedly: {consequence}; exiting with status {EXIT_INTERNAL} so that the service \
         manager restarts sonitor (the outbox keeps what the broker has not acknowledged)"
    );
    EXIT_INTERNAL
}

/// The counters the watchdog compares with their values at its last ping ([`watchdog_fed`]); the default is
/// every count at zero (before the first ping).
#[derive(Debug, Default)]
struct WatchMarks {
    /// Frames delivered by every input.
    frames: u64,
    /// Windows scored, every machine.
    inferences: u64,
    /// Per input: its supervisor's turns while it waits to reopen it.
    retry_beats: Vec<u64>,
    /// The turns of every thread that must keep turning: each input's reader, then the clip writer, then the
    /// MQTT publisher when there is one.
    turns: Vec<u64>,
}

impl WatchMarks {
    fn read(metrics: &Metrics, with_mqtt: bool) -> Self {
        let readers = metrics.inputs.iter().map(|i| i.reader_beats.get());
        let mqtt = with_mqtt.then(|| metrics.mqtt_beats.get());
        Self {
            frames: metrics.inputs.iter().map(|i| i.frames.get()).sum(),
            inferences: metrics.machines.iter().map(|m| m.inferences.get()).sum(),
            retry_beats: metrics.inputs.iter().map(|i| i.retry_beats.get()).collect(),
            turns: readers
                .chain([metrics.clips_beats.get()])
                .chain(mqtt)
                .collect(),
        }
    }
}

/// Whether the daemon has made progress since the last watchdog ping (`now` against `at_ping`): frames advanced
/// and the pipeline either scored windows or has none waiting (`idle`: a window hop longer than the watchdog
/// period leaves it waiting for audio, not stuck), or no input is open and every input's supervisor has visibly
/// waited to reopen it since. Frames that came before an input went away do not count against the waiting.
/// Either way every input's reader must have turned since: a reader stuck cuts no more windows, which the
/// pipeline alone would take for `idle`. And so must the clip writer and the MQTT publisher: one stuck drops
/// every clip, the other leaves every alarm in the outbox, and neither shows in the audio's progress.
fn watchdog_fed(now: &WatchMarks, at_ping: &WatchMarks, idle: bool, any_open: bool) -> bool {
    // A count the marks at the ping lack (the default's, before the first ping) was zero.
    let advanced = |n: &[u64], t: &[u64]| {
        n.iter()
            .enumerate()
            .all(|(i, n)| *n > t.get(i).copied().unwrap_or(0))
    };
    let scoring = now.frames > at_ping.frames && (now.inferences > at_ping.inferences || idle);
    let waiting = !any_open && advanced(&now.retry_beats, &at_ping.retry_beats);
    (scoring || waiting) && advanced(&now.turns, &at_ping.turns)
}

/// How often the watchdog is checked: a quarter of the systemd watchdog period (`WATCHDOG_USEC`), so that a check
/// that finds no progress yet is followed by three more before systemd gives up (at half, one such check left a
/// gap of a whole period), when the watchdog applies to this process (as `sd_watchdog_enabled(3)`: a
/// `WATCHDOG_PID` naming another process disables it; none means this one).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 4))
}

fn win_queue_empty(metrics: &Metrics) -> bool {
    metrics
        .machines
        .iter()
        .all(|m| m.inferences.get() + m.dropped_windows.get() >= m.windows.get())
}

fn on_source_event(ctl: &mut Controller, e: SourceEvent) {
    match e {
        SourceEvent::Opened { input, description } => {
            log::info!("input {} open: {description}", ctl.cfg.devices[input].name);
            ctl.inputs[input] = InputState::Open;
            for i in 0..ctl.machines.len() {
                if ctl.machines[i].input == input && ctl.machines[i].health == "NO_AUDIO" {
                    ctl.set_health(i, "OK".into());
                }
            }
        }
        SourceEvent::Failed { input, reason } => {
            let was_up = ctl.inputs[input] == InputState::Open;
            let repeated = matches!(&ctl.inputs[input], InputState::Down(Some(r)) if *r == reason);
            let d = &ctl.cfg.devices[input];
            let file = d.source == SourceKind::File;
            if file && d.at_end != crate::config::AtEnd::Loop {
                ctl.replay_failed = true;
                log::error!(
                    "input {}: {reason}; the replay ends here (a file source is read again only with \
                     at_end = \"loop\")",
                    d.name
                );
            } else if was_up {
                let again = if file {
                    "reading the file again with backoff"
                } else {
                    "reopening with backoff"
                };
                log::warn!("input {}: {reason}; {again}", d.name);
            } else if !repeated {
                log::warn!("input {}: {reason}; trying again with backoff", d.name);
            } else {
                log::debug!("input {}: {reason}", d.name);
            }
            ctl.inputs[input] = InputState::Down(Some(reason));
            for i in 0..ctl.machines.len() {
                if ctl.machines[i].input == input {
                    ctl.set_health(i, "NO_AUDIO".into());
                }
            }
        }
        SourceEvent::Stalled { input } => {
            log::warn!(
                "input {}: no frames for {:?}; reopening",
                ctl.cfg.devices[input].name,
                ctl.cfg.devices[input].stall_timeout
            );
            ctl.inputs[input] = InputState::Down(None);
            for i in 0..ctl.machines.len() {
                if ctl.machines[i].input == input {
                    ctl.set_health(i, "NO_AUDIO".into());
                }
            }
        }
        SourceEvent::Ended { input } => {
            log::info!("input {}: end of file", ctl.cfg.devices[input].name);
        }
    }
}

/// `sonitor validate`: prints each problem; returns the exit status (0 or 78).
pub fn validate(config_path: &Path) -> i32 {
    let checked = check_leaving_no_trace(config_path);
    if checked.problems.is_empty() {
        if let Some(cfg) = checked.cfg {
            println!(
                "{}: OK: {} machine(s) on {} input(s), {} bundle(s), topics under {}",
                config_path.display(),
                cfg.machines.len(),
                cfg.devices.len(),
                checked.bundles.len(),
                cfg.topic_base()
            );
            for w in checked.warnings {
                println!("{}: warning: {w}", config_path.display());
            }
            if let Some(pid) = crate::state_lock::holder(&cfg.state_dir) {
                println!(
                    "{}: note: a sonitor{} runs on its state directory {} now: this file takes effect there when \
                     it reloads (SIGHUP, `systemctl reload sonitor`: thresholds, debounce, enabled flags) or restarts",
                    config_path.display(),
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    cfg.state_dir.display()
                );
            }
        }
        0
    } else {
        let problems = checked.problems;
        eprintln!("{}: {} problem(s):", config_path.display(), problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        crate::config::EXIT_CONFIG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_by_scoring_or_by_waiting_for_a_device_that_is_away() {
        let m = |frames, inferences, retry: &[u64], readers: &[u64]| WatchMarks {
            frames,
            inferences,
            retry_beats: retry.to_vec(),
            // The readers' turns, then the clip writer's and the MQTT publisher's: with the first reader's, unless
            // a case sets them.
            turns: [readers, &[readers[0]; 2]].concat(),
        };
        let ping = m(8, 4, &[0], &[5]);
        // Frames and inferences since the last ping: scoring.
        assert!(watchdog_fed(&m(10, 5, &[0], &[9]), &ping, false, true));
        // Frames but no inference since the last ping, windows waiting, the input open: a pipeline that stopped
        // scoring.
        assert!(!watchdog_fed(&m(10, 4, &[0], &[9]), &ping, false, true));
        // Frames, no window waiting: a window hop longer than the period, the next window not yet complete.
        assert!(watchdog_fed(&m(10, 4, &[0], &[9]), &ping, true, true));
        // The same with the reader stuck: no window is waiting because none is cut any more.
        assert!(!watchdog_fed(&m(10, 4, &[0], &[5]), &ping, true, true));
        // No frames at all with the input open (a stalled device, until the supervisor closes it): not fed.
        assert!(!watchdog_fed(&m(8, 4, &[0], &[9]), &ping, true, true));
        // The input went away after some frames came: its supervisor retrying feeds it.
        let ping = m(8, 4, &[3], &[5]);
        assert!(watchdog_fed(&m(10, 4, &[7], &[9]), &ping, false, false));
        // Not with its reader stuck.
        assert!(!watchdog_fed(&m(10, 4, &[7], &[5]), &ping, false, false));
        // A supervisor that stopped retrying (stuck in the audio stack) does not.
        let ping = m(8, 4, &[3, 3], &[5, 5]);
        assert!(!watchdog_fed(
            &m(8, 4, &[7, 3], &[9, 9]),
            &ping,
            false,
            false
        ));
        // Two inputs, one reader stuck: the other input's scoring does not hide it.
        assert!(watchdog_fed(
            &m(10, 5, &[3, 3], &[9, 9]),
            &ping,
            false,
            true
        ));
        assert!(!watchdog_fed(
            &m(10, 5, &[3, 3], &[9, 5]),
            &ping,
            false,
            true
        ));
        // Scoring, every reader turning, and the clip writer or the MQTT publisher stuck: not fed, since one
        // drops every clip and the other keeps every alarm in the outbox.
        let ping = m(8, 4, &[0], &[5]);
        let threads = |beats: &[u64], now: WatchMarks| WatchMarks {
            turns: [&now.turns[..1], beats].concat(),
            ..now
        };
        assert!(watchdog_fed(
            &threads(&[6, 6], m(10, 5, &[0], &[9])),
            &ping,
            false,
            true
        ));
        assert!(!watchdog_fed(
            &threads(&[5, 9], m(10, 5, &[0], &[9])),
            &ping,
            false,
            true
        ));
        assert!(!watchdog_fed(
            &threads(&[9, 5], m(10, 5, &[0], &[9])),
            &ping,
            false,
            true
        ));
        // Before the first ping every count stood at zero: a reader that never turned starves it.
        let start = WatchMarks::default();
        assert!(watchdog_fed(&m(10, 5, &[0], &[9]), &start, false, true));
        assert!(!watchdog_fed(&m(10, 5, &[0], &[0]), &start, false, true));
        // The same while waiting for a device that is away.
        let ping = m(8, 4, &[3], &[5]);
        assert!(!watchdog_fed(
            &threads(&[9, 5], m(10, 4, &[7], &[9])),
            &ping,
            false,
            false
        ));
    }

    /// A mute saved with the state runs to its end on a clock that is right, and never longer than what was left
    /// when it was saved on one that reads earlier (a Pi without a real-time clock before NTP answers).
    #[test]
    fn a_saved_mute_is_not_stretched_by_a_clock_that_reads_earlier_than_the_save() {
        let s = Duration::from_secs;
        // Muted until 10 000, saved at 9 400 (10 minutes left); the daemon restarts at 9 700 by a right clock.
        assert_eq!(mute_left_at_start(10_000, Some(9_400), 9_700), s(300));
        // The same restart by a clock an hour behind (6 100): 10 minutes, not 65.
        assert_eq!(mute_left_at_start(10_000, Some(9_400), 6_100), s(600));
        // Over, or saved by a version without the save time: to the end by today's clock.
        assert_eq!(mute_left_at_start(10_000, Some(9_400), 10_500), s(0));
        assert_eq!(mute_left_at_start(10_000, None, 9_000), s(1_000));
        // What `persist` writes reads back with both times.
        let m = SavedMachine {
            muted_until_unix: Some(10_000),
            muted_saved_unix: Some(9_400),
            ..Default::default()
        };
        let back: SavedMachine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    fn saved(enabled: bool, file_enabled: Option<bool>) -> SavedMachine {
        SavedMachine {
            enabled,
            file_enabled,
            ..Default::default()
        }
    }

    /// The last change wins, from the file (between two runs) or from `enabled/set`, as with SIGHUP.
    #[test]
    fn a_start_applies_a_changed_file_and_keeps_a_command() {
        // No saved state: the file.
        assert!(enabled_at_start(None, true));
        assert!(!enabled_at_start(None, false));
        // Disabled in the file, then enabled in it: enabled (it used to stay disabled for good).
        assert!(enabled_at_start(Some(&saved(false, Some(false))), true));
        // Enabled in the file, then disabled in it.
        assert!(!enabled_at_start(Some(&saved(true, Some(true))), false));
        // `enabled/set OFF` with the file unchanged: stays disabled; `enabled/set ON` over a disabled file too.
        assert!(!enabled_at_start(Some(&saved(false, Some(true))), true));
        assert!(enabled_at_start(Some(&saved(true, Some(false))), false));
        // Saved by a version that did not record the file's value: as that version did.
        assert!(!enabled_at_start(Some(&saved(false, None)), true));
        assert!(!enabled_at_start(Some(&saved(true, None)), false));
        assert!(enabled_at_start(Some(&saved(true, None)), true));
    }

    #[test]
    fn state_saved_by_an_older_version_still_loads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alarms.json");
        std::fs::write(
            &p,
            r#"{"pump": {"event": null, "seq": 3, "enabled": false, "threshold_override": null, "muted_until_unix": null}}"#,
        )
        .unwrap();
        let s = load_saved(&p);
        assert_eq!(s["pump"], saved(false, None).with_seq(3));
    }

    /// A controller for machine `pump-1` on input `mic`, without MQTT, whose input's clip queue holds
    /// `clip_queue` requests (the receiver is returned: nothing takes them).
    fn controller(
        dir: &Path,
        clip_queue: usize,
    ) -> (Controller, crossbeam_channel::Receiver<ClipRequest>) {
        let path = dir.join("sonitor.toml");
        std::fs::write(
            &path,
            format!(
                "node_id = \"n1\"\nstate_dir = \"{}\"\n[[devices]]\nname = \"mic\"\nsource = \"capture\"\n\
                 [[machines]]\nname = \"pump-1\"\ndevice = \"mic\"\nbundle = \"{}\"\nsection = \"pump/section_00\"\n\
                 [mqtt]\nenabled = false\n",
                dir.join("state").display(),
                dir.join("bundle").display()
            ),
        )
        .unwrap();
        let cfg = Config::load_with_env(&path, []).unwrap();
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let m = cfg.machines[0].clone();
        let rt = MachineRt {
            detector: Detector::new(m.detector.params(0.5)),
            cfg: m,
            input: 0,
            bundle_threshold: 0.5,
            model_id: "test".into(),
            saved: SavedMachine {
                enabled: true,
                ..Default::default()
            },
            last_score: 0.0,
            last_t_ms: 0,
            last_score_pub: None,
            idle: false,
            since: String::new(),
            health: "OK".into(),
            mute_deadline: None,
        };
        let (clip_tx, clip_rx) = bounded(clip_queue);
        let (clip_writer, _) = bounded(1);
        let ctl = Controller {
            config_path: path,
            base: cfg.topic_base(),
            machines: vec![rt],
            outbox: Arc::new(Mutex::new(
                Outbox::open(&cfg.state_dir.join("outbox"), 100).unwrap(),
            )),
            mqtt: None,
            clip_tx: vec![clip_tx],
            clip_writer,
            metrics: Arc::new(Metrics::new(&["mic".into()], &["pump-1".into()])),
            saved_path: cfg.state_dir.join("alarms.json"),
            inputs: vec![InputState::Open],
            replay_failed: false,
            observer: None,
            open_clips: Arc::default(),
            graphs: Default::default(),
            cfg,
        };
        (ctl, clip_rx)
    }

    /// The `clip` of the events in the outbox, in order.
    fn event_clips(ctl: &Controller) -> Vec<serde_json::Value> {
        let o = ctl.outbox.lock().unwrap();
        o.records()
            .filter(|r| r.msg.topic.ends_with("/events"))
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.msg.payload).unwrap()["clip"].clone()
            })
            .collect()
    }

    /// An alarm whose clip request the input's queue cannot take: counted as a dropped clip, and its events say
    /// `clip: null` instead of naming a WAV that will never be written (the request used to vanish unseen).
    #[test]
    fn a_clip_request_the_queue_cannot_take_is_counted_and_not_named() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, rx) = controller(d.path(), 1);
        ctl.on_transition(
            0,
            Transition::Raised {
                at_ms: 1000,
                score: 0.9,
            },
        );
        assert_eq!(rx.len(), 1, "the first request is queued");
        assert_eq!(ctl.metrics.clips_dropped.get(), 0);
        assert!(event_clips(&ctl)[0].is_string());
        let clear = |at_ms| Transition::Cleared {
            at_ms,
            since_ms: 1000,
            peak: 0.9,
            reason: sonitor_core::detect::ClearReason::Normal,
        };
        ctl.on_transition(0, clear(2000));
        // The queue is still full: the next alarm's request is dropped.
        ctl.on_transition(
            0,
            Transition::Raised {
                at_ms: 3000,
                score: 0.9,
            },
        );
        assert_eq!(ctl.metrics.clips_dropped.get(), 1);
        assert!(ctl.machines[0].saved.event.as_ref().unwrap().clip.is_none());
        ctl.on_transition(0, clear(4000));
        let clips = event_clips(&ctl);
        assert_eq!(clips.len(), 4);
        assert!(clips[2].is_null() && clips[3].is_null(), "{clips:?}");
    }

    impl SavedMachine {
        fn with_seq(mut self, seq: u64) -> Self {
            self.seq = seq;
            self
        }
    }
}
