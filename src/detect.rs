//! The detect stage: the controller that takes each window's score to its machine's detector
//! ([`sonitor_core::detect::Detector`]: k-of-n debounce, hysteresis, mute) and acts on what changes. An alarm
//! transition goes into the durable outbox and to MQTT ([`crate::publish::outbox`], [`crate::publish::mqtt`]), with its evidence clip
//! asked of the reader ([`crate::window`]). It also keeps each machine's state across restarts
//! (`<state_dir>/alarms.json`), and takes the commands from MQTT, the channels' health, the inputs' state and a
//! reload. [`crate::daemon`] runs it on its main loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sonitor_core::bundle::SectionModel;
use sonitor_core::detect::{ClearReason, Detector, DetectorParams, Transition};

use crate::capture::SourceEvent;
use crate::check::{check_with, threshold_off_above_bundle, Running};
use crate::config::{Config, MachineConfig, MissingDirs, SourceKind};
use crate::daemon::now_rfc3339;
use crate::embed::{model_change, MachineModel, ModelChange, ModelSwap, ScoreMsg};
use crate::metrics::{LogBudget, Metrics, HEALTH_VALUES};
use crate::publish::mqtt::{Command, ToMqtt};
use crate::publish::outbox::{OutMessage, Outbox};
use crate::window::ClipRequest;

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
    /// The configuration file's `threshold` for the machine when this was saved, if `file_threshold_saved` (false:
    /// saved by a version that did not record it). A start whose file says otherwise drops `threshold_override`,
    /// as SIGHUP does ([`file_threshold_replaces`]).
    #[serde(default)]
    pub file_threshold: Option<f64>,
    #[serde(default)]
    pub file_threshold_saved: bool,
    /// Wall-clock end of a mute (Unix seconds), as saved for the next start. While the daemon runs, the mute's
    /// end is [`MachineRt::mute_deadline`] and this is written from it.
    pub muted_until_unix: Option<u64>,
    /// When `muted_until_unix` was saved (Unix seconds). A start whose clock reads earlier (a Raspberry Pi
    /// without a real-time clock restores the time of its last shutdown or older until NTP answers) lets the
    /// mute run for what was left then, not for the clock's error on top: see [`mute_left_at_start`].
    #[serde(default)]
    pub muted_saved_unix: Option<u64>,
    /// The retained topics the daemon publishes for the machine (its own and its Home Assistant entities'), as
    /// they were when this was saved (`None`: saved by a version that did not record them). A start deletes
    /// those that no longer apply: the machine gone from the file, `node_id`, the topic prefix or discovery
    /// changed ([`Controller::clean_up_last_run`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_topics: Option<Vec<String>>,
    /// When the alarm took its state (RFC 3339, the `since` of `<machine>/state`): set by each transition, and at a
    /// start from what was saved (`None` there: saved by a version that did not record it), so that a resumed
    /// alarm is ON since it was raised, not since the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// How many dB above `idle_below_dbfs` a machine that stands must sound to count as running again, unless the
/// machine's `idle_hysteresis_db` says otherwise.
pub const DEFAULT_IDLE_HYSTERESIS_DB: f32 = 3.0;

/// Space kept in the state directory for the saved state (`alarms.json`): on a filesystem filled by something
/// else (clips elsewhere on the card, a log gone wild), the save that follows is made into it, so that an open
/// alarm, a mute or a threshold set over MQTT survives the next restart. Made again once there is room.
pub const RESERVE_FILE: &str = ".sonitor-reserve";
const RESERVE_BYTES: usize = 64 * 1024;

/// Writes the saved state to `path`, whole and durable. A state directory that is gone (deleted under the daemon)
/// is made again; on a full filesystem the reserve ([`RESERVE_FILE`]) is given up for it. After a save, a missing
/// reserve is made again where there is room.
pub(crate) fn save_state(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use sonitor_core::atomic_file::write_durable;
    let dir = path.parent().unwrap_or(Path::new("."));
    let reserve = dir.join(RESERVE_FILE);
    match write_durable(path, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
            log::warn!(
                "the state directory {} is gone (deleted while sonitor runs): made again",
                dir.display()
            );
            std::fs::create_dir_all(dir)?;
            write_durable(path, bytes)?;
        }
        Err(e) if crate::config::is_full(&e) && reserve.is_file() => {
            std::fs::remove_file(&reserve)?;
            let (said, before) = {
                let mut budget = RESERVE_LOG.lock().unwrap_or_else(|e| e.into_inner());
                let before = budget.roll();
                (budget.allow(), before)
            };
            log::log!(
                if said { log::Level::Warn } else { log::Level::Debug },
                "the state filesystem is full ({e}): the space kept for the saved state ({}) is used for it now; \
                 free space there (said at most once in 10 minutes{})",
                reserve.display(),
                before.map_or_else(String::new, |n| format!("; taken {n} more time(s) since it was last said"))
            );
            write_durable(path, bytes)?;
        }
        r => r?,
    }
    if !reserve.exists() {
        // On a full or read-only filesystem this fails at once; what it wrote is removed.
        if sonitor_core::atomic_file::write(&reserve, &[0u8; RESERVE_BYTES]).is_err() {
            let _ = std::fs::remove_file(&reserve);
        }
    }
    Ok(())
}

/// How often the reserve's use is said. On a filesystem kept full the reserve is made again whenever a little room
/// comes back and taken at the next save: said at each save, it was a line per alarm change (review35).
static RESERVE_LOG: std::sync::LazyLock<Mutex<LogBudget>> =
    std::sync::LazyLock::new(|| Mutex::new(LogBudget::new(1, Duration::from_secs(600))));

/// How long a mute saved with the state still runs at a start: to its saved end on today's clock, but never
/// longer than what was left when it was saved. A clock that reads earlier than the save (not yet synchronised
/// after a power cut) would otherwise stretch a maintenance mute by its error and keep real alarms quiet. An end
/// saved by an older version, or edited by hand, is held to the longest a command may ask for
/// ([`crate::publish::mqtt::MAX_MUTE`]), counted from the same moment: counted from today's clock, a mute saved
/// on a clock more than that ahead (a Pi back in 1970 until NTP answers) was cut to nothing.
pub(crate) fn mute_left_at_start(until: u64, saved_at: Option<u64>, now: u64) -> Duration {
    Duration::from_secs(until.saturating_sub(now.max(saved_at.unwrap_or(0))))
        .min(crate::publish::mqtt::MAX_MUTE)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActiveEvent {
    pub event_id: String,
    pub started_at: String,
    pub peak: f64,
    pub clip: Option<String>,
    /// Whether its `start` event and `alarm ON` are in the outbox. A raise is saved before its messages enter
    /// the outbox, and saved again once they have: a start that finds it false (the last run killed in between)
    /// puts them in then ([`Controller::announce_unannounced`]). State saved without it: announced.
    #[serde(default = "announced_by_default")]
    pub announced: bool,
}

fn announced_by_default() -> bool {
    true
}

/// The saved state of every machine. Each machine's entry is read on its own: one that cannot be read (a
/// hand edit, a file from another version) starts that machine fresh, with a warning, and keeps the others.
pub(crate) fn load_saved(path: &Path) -> BTreeMap<String, SavedMachine> {
    let (saved, problem) = read_saved(path);
    if let Some(p) = problem {
        log::warn!("{p}");
    }
    saved
}

/// [`load_saved`] at a start, which saves over the file soon after: a file not read whole (unparsable, or an
/// entry of a machine that is not) is first moved aside as `alarms.<unix seconds>.bad` beside it, and the log says
/// where, so that what it held (open alarms, mutes, thresholds set over MQTT) can still be read by hand.
pub(crate) fn load_saved_at_start(path: &Path) -> BTreeMap<String, SavedMachine> {
    let (saved, problem) = read_saved(path);
    // A problem means the file was read: it is there to be moved.
    let Some(problem) = problem else {
        return saved;
    };
    let aside = path.with_file_name(format!("alarms.{}.bad", unix_now()));
    match std::fs::rename(path, &aside) {
        Ok(()) => log::warn!("{problem}; the file is kept as {}", aside.display()),
        Err(e) => log::warn!(
            "{problem}; it cannot be kept as {} ({e}): the next save replaces it",
            aside.display()
        ),
    }
    saved
}

/// What `sonitor validate` says of the saved state: `None` when it is absent or read whole.
pub(crate) fn saved_state_warning(path: &Path) -> Option<String> {
    let problem = read_saved(path).1?;
    Some(format!(
        "{problem}; the next start moves it aside as alarms.<unix seconds>.bad beside it (read it there for the \
         open alarms, mutes and thresholds set over MQTT it held)"
    ))
}

/// The saved state at `path` (empty when there is none) and, when it could not be read whole, what went wrong
/// and what the start makes of it.
fn read_saved(path: &Path) -> (BTreeMap<String, SavedMachine>, Option<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), None),
        // `validate` and the start's check refuse it first; a file that went unreadable since is said.
        Err(e) => {
            log::error!(
                "cannot read {}: {e}: every machine starts with its alarm off, an open event of the last run \
                 unended",
                path.display()
            );
            return (BTreeMap::new(), None);
        }
    };
    let entries: BTreeMap<String, serde_json::Value> = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return (
                BTreeMap::new(),
                Some(format!(
                    "{}: unreadable ({e}); starting with all alarms off",
                    path.display()
                )),
            );
        }
    };
    let mut unreadable = Vec::new();
    let saved = entries
        .into_iter()
        .filter_map(|(name, v)| match serde_json::from_value::<SavedMachine>(v) {
            Ok(mut m) => {
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
                unreadable.push(format!("the entry of machine '{name}' is unreadable ({e})"));
                None
            }
        })
        .collect();
    let problem = (!unreadable.is_empty()).then(|| {
        format!(
            "{}: {}; those machines start with their alarm off",
            path.display(),
            unreadable.join("; ")
        )
    });
    (saved, problem)
}

pub(crate) struct MachineRt {
    pub(crate) cfg: MachineConfig,
    pub(crate) input: usize,
    pub(crate) detector: Detector,
    /// What it is scored with: its bundle's graph and section (a reload can change them).
    pub(crate) model: MachineModel,
    pub(crate) saved: SavedMachine,
    pub(crate) last_score: Option<f64>,
    /// The highest score of its windows judged since the start: a replay's summary names it.
    pub(crate) peak_score: Option<f64>,
    pub(crate) last_t_ms: u64,
    pub(crate) last_score_pub: Option<Instant>,
    /// The health of the machine's audio (`OK`, `SILENT`, `CLIPPING`, `NO_AUDIO`); what is published is
    /// [`MachineRt::health`], which can say `NO_SCORES` over it.
    pub(crate) health: String,
    /// Windows in a row that could not be scored (the model failed on them, or scored them as not a number).
    pub(crate) unscored: u32,
    /// When its last window arrived (or its input opened, if later): with its input open, windows that stop
    /// coming make it [`Self::starved`].
    pub(crate) last_window: Instant,
    /// Its windows dropped on a full queue (`sonitor_dropped_windows_total`) when its last window arrived: more
    /// since, and [`Self::starved`] names the queue, not gaps in its audio.
    pub(crate) dropped_at_last_window: u64,
    /// No window for [`MachineRt::starved_after`] though its input is open: audio lost in gaps (device overruns,
    /// a full ring) more often than a window takes, so that no window is ever whole. Health `NO_SCORES`.
    pub(crate) starved: bool,
    /// What its input's reader last said of its channel; [`Controller::audio_health`] makes its health of it.
    pub(crate) channel: ChannelSaid,
    /// Whether the last window's level was below the machine's `idle_below_dbfs`: the machine is not running.
    pub(crate) idle: bool,
    /// Whether the last window held no signal (one value repeated: a muted, dead or stuck input).
    pub(crate) no_signal: bool,
    /// When a mute ends, on the monotonic clock: a wall-clock jump (NTP's first answer on a Pi) neither ends it
    /// early nor stretches it, and neither does an input that is away (stream time stops with the audio). The
    /// detector stays muted until [`Controller::end_mute_if_due`] unmutes it.
    pub(crate) mute_deadline: Option<Instant>,
    /// Gone from the file at a reload ([`Controller::retire`]): no longer judged, published or saved. Its input
    /// and model stay until a restart; its reader cuts no more windows, and those already on their way are dropped
    /// on arrival.
    pub(crate) removed: bool,
    /// Bounds the lines its changes of state (health, signal, running) write ([`CHANGES_LOGGED`]).
    pub(crate) change_log: LogBudget,
}

/// The message of an `end` event (`…/events`): the event `e` of `machine` (its peak score the event's), ended at
/// `ended_at` for `reason`. `threshold` and `model_id` are those in force, where the machine still has them (not
/// for a machine removed from the file).
/// The `start` event of `e`, raised by `score` over `threshold`.
fn start_event(
    machine: &str,
    e: &ActiveEvent,
    score: f64,
    threshold: f64,
    model_id: &str,
    seq: u64,
) -> serde_json::Value {
    json!({
        "event_id": e.event_id, "type": "start", "machine": machine,
        "score": score, "peak_score": e.peak, "threshold": threshold,
        "started_at": e.started_at, "ended_at": null, "clip": e.clip,
        "model_id": model_id, "seq": seq,
    })
}

fn end_event(
    machine: &str,
    e: &ActiveEvent,
    ended_at: &str,
    reason: ClearReason,
    threshold: Option<f64>,
    model_id: Option<&str>,
    seq: u64,
) -> serde_json::Value {
    json!({
        "event_id": e.event_id, "type": "end", "machine": machine,
        "peak_score": e.peak, "threshold": threshold,
        "started_at": e.started_at, "ended_at": ended_at, "clip": e.clip,
        "reason": reason, "model_id": model_id, "seq": seq,
    })
}

/// The id Home Assistant knows machine `name`'s entity `what` by: `sonitor:<node_id>:<name>:<what>`, `:` being
/// in no name, so that no two nodes' entities share one.
fn discovery_unique_id(node: &str, name: &str, what: &str) -> String {
    format!("sonitor:{node}:{name}:{what}")
}

/// The entities Home Assistant's discovery announces per machine: (component, what), its config's topic being
/// `<prefix>/<component>/sonitor_<node>/<machine>_<what>/config`.
pub(crate) const DISCOVERY_ENTITIES: [(&str, &str); 6] = [
    ("binary_sensor", "alarm"),
    ("sensor", "score"),
    ("sensor", "health"),
    ("number", "threshold"),
    ("switch", "enabled"),
    ("switch", "mute"),
];

/// The per-machine retained topics under `<prefix>/<node_id>/<machine>/`.
const RETAINED_TOPICS: [&str; 6] = ["alarm", "state", "threshold", "mute", "enabled", "health"];

/// The first index not in `taken`: where the inference thread puts a graph a reload gives it.
fn free_slot(taken: &BTreeSet<usize>) -> usize {
    (0..taken.len())
        .find(|k| !taken.contains(k))
        .unwrap_or(taken.len())
}

/// At most this many changes of one machine's state (its health, whether its window has signal, whether it runs)
/// are logged a [`CHANGE_LOG_WINDOW`]; one line sums up the others at its end. A state that flaps wrote lines
/// without bound, in which journald's rate limit would have hidden the alarms': a CPU that does not keep up with
/// 600 machines (`NO_SCORES`, then its windows come again, each a warning and a health line), an input level at
/// the edge of `CLIPPING`, a machine's level at its `idle_below_dbfs` (a line each window). What is published is
/// not bounded: the health and state topics and `sonitor status` say every change.
pub(crate) const CHANGES_LOGGED: u32 = 6;
pub(crate) const CHANGE_LOG_WINDOW: Duration = Duration::from_secs(600);

/// A machine's [`MachineRt::change_log`].
pub(crate) fn change_log() -> LogBudget {
    LogBudget::new(CHANGES_LOGGED, CHANGE_LOG_WINDOW)
}

/// What a machine's reader last said of its channel ([`crate::window::ReaderEvent`]): kept, so that the health an
/// input's reopening gives back is the channel's, not `OK` (review33: a dead channel, `SILENT`, then a stall and a
/// reopen, read `OK` for good, since the reader says a channel's state only when it changes).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ChannelSaid {
    pub(crate) silent: bool,
    pub(crate) clipping: bool,
    /// Why the input's stream cannot feed the machine (it lacks the machine's channel, its rate cannot be
    /// converted), while it cannot.
    pub(crate) unfed: Option<String>,
    /// Streams of its input opened (the source's `Opened`), and those the reader has said whether they feed the
    /// machine: until the reader has said it of the last one, nothing is known of it (`NO_AUDIO`). The two come
    /// on different channels, in either order.
    pub(crate) streams_opened: u64,
    pub(crate) streams_fed: u64,
}

/// Windows in a row without a score after which a machine's health is `NO_SCORES`: one failing window is logged
/// and counted; a run of them means the machine is not watched, which its health must not hide as `OK`.
pub(crate) const NO_SCORES_AFTER: u32 = 3;

impl MachineRt {
    /// The threshold of its bundle's section, in force when neither the file nor a command sets one.
    pub(crate) fn bundle_threshold(&self) -> f64 {
        self.model.section.threshold.value
    }

    /// The health published: `NO_SCORES` while its last [`NO_SCORES_AFTER`] or more windows went unscored, or
    /// while no window comes though its input is open, otherwise the audio's.
    pub(crate) fn health(&self) -> &str {
        if self.unscored >= NO_SCORES_AFTER || self.starved {
            "NO_SCORES"
        } else {
            &self.health
        }
    }

    /// Whether a window of this level leaves the machine not running: below `idle_below_dbfs` when it runs, and
    /// below `idle_below_dbfs` + `idle_hysteresis_db` when it does not (a Schmitt trigger: a level at the limit
    /// does not flip it each window).
    pub(crate) fn is_idle_at(&self, level_dbfs: f32) -> bool {
        let d = &self.cfg.detector;
        d.idle_below_dbfs.is_some_and(|below| {
            let limit = if self.idle {
                below + d.idle_hysteresis_db
            } else {
                below
            };
            level_dbfs < limit
        })
    }

    /// How long its input may be open without a window of it before it is [`Self::starved`]: three windows and
    /// hops, and at least 10 s (the first window of an input takes its length, then features and inference).
    pub(crate) fn starved_after(&self) -> Duration {
        let p = &self.model.features;
        let secs = 3.0 * (p.window_samples + p.window_hop_samples) as f64
            / f64::from(p.sample_rate.max(1));
        Duration::from_secs_f64(secs.max(10.0))
    }

    /// The mute's end on today's wall clock (Unix seconds, rounded up), while one runs.
    fn muted_until_unix(&self) -> Option<u64> {
        let left = self
            .mute_deadline?
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())?;
        Some(unix_now() + left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Starts a mute of `duration` (zero: ends it) at stream time `now_ms`; muting ends an active alarm.
    pub(crate) fn mute(&mut self, now_ms: u64, duration: Duration) -> Option<Transition> {
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
pub(crate) fn enabled_at_start(saved: Option<&SavedMachine>, file: bool) -> bool {
    match saved {
        None => file,
        Some(s) => match s.file_enabled {
            Some(was) if was != file => file,
            Some(_) => s.enabled,
            None => s.enabled && file,
        },
    }
}

/// A threshold changed in the file (`before` → `now`) is the newest word on it: it replaces the `threshold/set`
/// override of `saved` (taken from it, and logged; `how`: when the file changed), as a changed `enabled` replaces
/// an `enabled/set`. A file whose threshold stays leaves the override.
pub(crate) fn file_threshold_replaces(
    name: &str,
    saved: &mut SavedMachine,
    before: Option<f64>,
    now: Option<f64>,
    how: &str,
) {
    if before == now {
        return;
    }
    if let Some(o) = saved.threshold_override.take() {
        log::info!(
            "machine '{name}': its threshold in the configuration file changed {how} ({}); it replaces the \
             threshold {o} a threshold/set command had set",
            now.map_or("to the bundle's".into(), |t| format!("to {t}"))
        );
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where an input stands, as its source's events said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InputState {
    /// Open and delivering (or about to).
    Open,
    /// Not open: why its last attempt to open failed (`None` before any attempt, or after a stall), so that each
    /// new reason is logged once (a device that appears but cannot give the configured channels says so) and
    /// repeats are not.
    Down(Option<String>),
}

pub(crate) struct Controller {
    pub(crate) cfg: Config,
    pub(crate) config_path: PathBuf,
    pub(crate) base: String,
    pub(crate) machines: Vec<MachineRt>,
    pub(crate) outbox: Arc<Mutex<Outbox>>,
    pub(crate) mqtt: Option<Sender<ToMqtt>>,
    pub(crate) clip_tx: Vec<Sender<ClipRequest>>,
    pub(crate) clip_writer: Sender<crate::window::ClipAudio>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) saved_path: PathBuf,
    /// Per input: open, or down with why its last attempt failed.
    pub(crate) inputs: Vec<InputState>,
    /// A file source's replay ended on an error (the file changed under it): `run` exits with
    /// [`crate::daemon::EXIT_INPUT`] once it stops instead of 0.
    pub(crate) replay_failed: bool,
    pub(crate) observer: Option<Sender<Observation>>,
    /// The clips of the alarm events still on, which the clip retention keeps ([`crate::clips::Retention`]).
    pub(crate) open_clips: Arc<Mutex<std::collections::BTreeSet<PathBuf>>>,
    /// Where a reload sends the inference thread the machines' new models (`None`: no inference thread, in unit
    /// tests).
    pub(crate) swaps: Option<Sender<ModelSwap>>,
    /// With MQTT off: the saved states of machines no longer watched (gone from the file at a start, or retired
    /// by a reload), kept in the state file for the first start with MQTT, which ends their open alarm and deletes
    /// their retained topics. The first save forgot them, and their `alarm ON` stayed on the broker for good.
    pub(crate) unpublished_removals: BTreeMap<String, SavedMachine>,
    /// Commands received for a machine this daemon does not watch, since the start: logged at 1, 2, 4, 8, …, or a
    /// flood of them (a misconfigured client) would push the alarm lines out of journald's rate limit.
    pub(crate) unknown_commands: crate::metrics::Counter,
    /// Messages this controller could not hand to the MQTT publisher, since the start: logged at 1, 2, 4, 8, …
    /// (the metric also counts the scores the publisher drops in silence while the broker is away).
    pub(crate) mqtt_unsent: crate::metrics::Counter,
    /// Retained values the publisher's queue had no room for, the newest of each topic (with its `publish_now`):
    /// handed to it again each second ([`Controller::send_held_retained`]) and before any later message. Dropped,
    /// such a value was lost for good: the publisher republished the older value it knew at each connection, and
    /// an empty one (a retired machine's topic cleared) left the topic on the broker (review30).
    pub(crate) held_retained: Mutex<BTreeMap<String, (String, bool)>>,
}

impl Controller {
    fn observe(&self, o: Observation) {
        if let Some(tx) = &self.observer {
            let _ = tx.send(o);
        }
    }

    fn send(&self, m: ToMqtt) {
        let Some(tx) = &self.mqtt else {
            return;
        };
        match m {
            // In the place of the retained values that wait: a value of a topic that still waits replaces the one
            // held, and goes when its turn comes.
            ToMqtt::Retained {
                topic,
                payload,
                publish_now,
            } => {
                let held = {
                    let mut h = self.held();
                    h.insert(topic.clone(), (payload, publish_now));
                    h.len()
                };
                if !self.send_held_retained() {
                    // Said at the first and each doubling (as the drops are).
                    if let Some(n) = self.mqtt_unsent.inc_log_due() {
                        log::warn!(
                            "mqtt: the publisher's queue is full (it does not keep up: a slow broker, or many machines \
                             with a large outbox): the retained value of {topic} waits until it takes it ({held} \
                             topic(s) waiting; {n} message(s) not handed to it at once so far)"
                        );
                    }
                }
            }
            // Anything else before them (review32): the held values refilling the queue first would leave no room
            // for a wake-up for new alarm messages, which then waited in the outbox for the next one. Nothing
            // orders these after a retained value (the publisher reads the outbox itself, and a machine's state
            // waits there behind its alarm's transitions).
            m => {
                if let Err(e) = tx.try_send(m) {
                    self.dropped(e);
                }
                self.send_held_retained();
            }
        }
    }

    /// [`Controller::held_retained`], a poisoned lock taken as it is (no panic can happen while it is held).
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, bool)>> {
        self.held_retained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands the publisher the retained values held for lack of room ([`Controller::held_retained`]), as many as
    /// its queue takes; true when none is left waiting. Called each second by the main loop, with each retained
    /// value, and after any other message.
    pub(crate) fn send_held_retained(&self) -> bool {
        let Some(tx) = &self.mqtt else {
            return true;
        };
        let mut held = self.held();
        while let Some((topic, (payload, publish_now))) = held.pop_first() {
            match tx.try_send(ToMqtt::Retained {
                topic,
                payload,
                publish_now,
            }) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(m)) => {
                    if let ToMqtt::Retained {
                        topic,
                        payload,
                        publish_now,
                    } = m
                    {
                        held.insert(topic, (payload, publish_now));
                    }
                    return false;
                }
                // The publisher has ended (the daemon stops with status 70): nothing will take them; counted
                // (the next start publishes every value).
                Err(e) => {
                    self.metrics.mqtt_dropped.add(held.len() as u64);
                    held.clear();
                    drop(held);
                    self.dropped(e);
                    return true;
                }
            }
        }
        true
    }

    /// At the stop: the retained values still held for lack of room are not handed over (the stop does not wait
    /// for them, and the publisher's session drops the retained values it has not sent yet); said, with how many.
    pub(crate) fn forget_held_retained(&self) {
        let mut held = self.held();
        if !held.is_empty() {
            log::info!(
                "mqtt: {} retained value(s) still waited for room in the publisher's queue; not published now, the \
                 next start publishes every value",
                held.len()
            );
            held.clear();
        }
    }

    /// A message the publisher could not be handed, lost: counted and said at the first and each doubling.
    fn dropped(&self, e: crossbeam_channel::TrySendError<ToMqtt>) {
        // Counted, and said at the first and each doubling (review30: only counted): what it cost.
        self.metrics.mqtt_dropped.inc();
        if let Some(n) = self.mqtt_unsent.inc_log_due() {
            let why = if e.is_full() {
                "the publisher's queue is full (it does not keep up: a slow broker, or many machines with a large \
                 outbox)"
            } else {
                "the publisher has ended"
            };
            let lost = match e.into_inner() {
                // Only once the publisher has ended (a full queue holds them): the next start publishes them.
                ToMqtt::Retained { topic, .. } => {
                    format!("the retained value of {topic}, published at the next start")
                }
                ToMqtt::OutboxChanged => {
                    "a wake-up for new alarm messages, which wait in the outbox for the next one"
                        .into()
                }
                ToMqtt::Transient { topic, .. } | ToMqtt::Refused { topic, .. } => {
                    format!("a message for {topic}, lost")
                }
                ToMqtt::Shutdown => "the stop".into(),
            };
            log::warn!(
                "mqtt: {why}: dropped {lost}; {n} message(s) not handed to it so far (counted in \
                 sonitor_mqtt_dropped_messages_total)"
            );
        }
    }

    pub(crate) fn retained(&self, topic: String, payload: String, publish_now: bool) {
        self.send(ToMqtt::Retained {
            topic,
            payload,
            publish_now,
        });
    }

    /// The wall clock jumped. Mutes run on the monotonic clock, but are saved and published as wall-clock ends,
    /// which moved with it: saved again, so that a start after an unclean stop (a watchdog kill, a power cut)
    /// reads them on the new clock (it ended a 1-hour mute after 20 s, or stretched one by a day's step), and
    /// published again for the machines muted now.
    pub(crate) fn on_clock_jump(&self) {
        self.persist();
        for i in 0..self.machines.len() {
            if self.machines[i].muted_until_unix().is_some() {
                self.publish_machine_state(i);
            }
        }
    }

    /// Saves every machine's state ([`save_state`]); false when it could not be saved (logged).
    pub(crate) fn persist(&self) -> bool {
        // Every change of an event passes here: the set the retention keeps follows it.
        if let Ok(mut open) = self.open_clips.lock() {
            *open = open_event_clips(&self.machines);
        }
        let mut map: BTreeMap<String, SavedMachine> = self
            .machines
            .iter()
            .filter(|m| !m.removed)
            .map(|m| {
                let mut saved = m.saved.clone();
                saved.muted_until_unix = m.muted_until_unix();
                saved.muted_saved_unix = saved.muted_until_unix.map(|_| unix_now());
                saved.file_enabled = Some(m.cfg.enabled);
                saved.file_threshold = m.cfg.detector.threshold;
                saved.file_threshold_saved = true;
                (m.cfg.name.clone(), saved)
            })
            .collect();
        for (name, s) in &self.unpublished_removals {
            map.entry(name.clone()).or_insert_with(|| s.clone());
        }
        let text = serde_json::to_string_pretty(&map).unwrap_or_default();
        if let Err(e) = save_state(&self.saved_path, text.as_bytes()) {
            // Said once per run of failures (a retry every 10 s would fill the log), and kept as a gauge.
            if self.metrics.state_unsaved.get() == 0 {
                log::error!(
                    "cannot save {}: {e}; the alarm states are kept in memory and saved again every 10 s until it \
                     works (a restart before that would not know them)",
                    self.saved_path.display()
                );
            }
            self.metrics.state_unsaved.set(1);
            return false;
        }
        if self.metrics.state_unsaved.get() == 1 {
            log::info!("saved {} again", self.saved_path.display());
        }
        self.metrics.state_unsaved.set(0);
        true
    }

    /// What the next start will not know, for the log of a stop whose last save failed: each machine's open
    /// alarm (it starts OFF, and its event gets no end), mute, threshold set over MQTT and `enabled` set by a
    /// command. Empty when nothing but the default state is lost.
    pub(crate) fn unsaved_summary(&self) -> Vec<String> {
        // What the next start will read: the state file as the last save that went through left it.
        let on_disk = load_saved(&self.saved_path);
        self.machines
            .iter()
            .filter(|m| !m.removed)
            .filter_map(|m| {
                let disk = on_disk.get(&m.cfg.name);
                let mut lost = Vec::new();
                let event_on_disk = disk.and_then(|s| s.event.as_ref()).map(|e| &e.event_id);
                match (&m.saved.event, event_on_disk) {
                    (Some(e), on_disk) if on_disk != Some(&e.event_id) => lost.push(format!(
                        "its alarm is ON (event {}): the next start begins it OFF, and the event gets no end",
                        e.event_id
                    )),
                    (None, Some(e)) => lost.push(format!(
                        "its alarm ended (event {e}): the next start finds it ON again"
                    )),
                    _ => {}
                }
                let mute_on_disk = disk
                    .and_then(|s| s.muted_until_unix)
                    .filter(|&until| until > unix_now());
                match (m.muted_until_unix(), mute_on_disk) {
                    (Some(until), on_disk) if on_disk.is_none_or(|d| d.abs_diff(until) > 2) => {
                        lost.push(format!("its mute until {}", crate::clock::unix_rfc3339(until)))
                    }
                    (None, Some(until)) => lost.push(format!(
                        "its mute ended: the next start mutes it again until {}",
                        crate::clock::unix_rfc3339(until)
                    )),
                    _ => {}
                }
                let threshold_on_disk = disk.and_then(|s| s.threshold_override);
                if m.saved.threshold_override != threshold_on_disk {
                    lost.push(match m.saved.threshold_override {
                        Some(t) => format!("its threshold {t} set over MQTT"),
                        None => "its threshold back to the file's or the bundle's".into(),
                    });
                }
                // Not on disk at all: only a value other than the file's is lost.
                let enabled_lost = match disk {
                    Some(s) => s.enabled != m.saved.enabled,
                    None => m.saved.enabled != m.cfg.enabled,
                };
                if enabled_lost {
                    lost.push(format!("enabled = {} set over MQTT", m.saved.enabled));
                }
                (!lost.is_empty()).then(|| format!("machine '{}': {}", m.cfg.name, lost.join("; ")))
            })
            .collect()
    }

    pub(crate) fn params_of(m: &MachineRt) -> DetectorParams {
        m.cfg
            .detector
            .params_with_override(m.bundle_threshold(), m.saved.threshold_override)
    }

    fn state_json(&self, i: usize, health_reason: Option<&str>) -> String {
        let m = &self.machines[i];
        let p = m.detector.params();
        let on = m.detector.is_on();
        json!({
            "state": if on { "ON" } else { "OFF" },
            "score": m.last_score,
            "threshold": p.threshold_on,
            "threshold_off": p.threshold_off,
            "since": m.saved.since,
            "seq": m.saved.seq,
            "model_id": m.model.model_id,
            "section": m.cfg.section,
            "enabled": m.detector.enabled(),
            "muted_until": m.muted_until_unix().map(crate::clock::unix_rfc3339),
            "event_id": m.saved.event.as_ref().map(|e| e.event_id.clone()),
            "health": m.health(),
            "health_reason": health_reason,
            "idle": m.idle,
        })
        .to_string()
    }

    /// Publishes the retained per-machine topics that are not alarm messages, and sets the metrics that say the
    /// same (threshold, mute, enabled, model): every change of them passes here.
    pub(crate) fn publish_machine_state(&self, i: usize) {
        let m = &self.machines[i];
        if m.removed {
            return;
        }
        let (muted, health) = (m.muted_until_unix().is_some(), m.health());
        let reason = self.health_reason(i);
        if let Some(mm) = self.metrics.machines.get(i) {
            let p = m.detector.params();
            mm.threshold.set_f64(p.threshold_on);
            mm.threshold_off.set_f64(p.threshold_off);
            mm.threshold_calibrated.set_f64(m.bundle_threshold());
            mm.muted.set(u64::from(muted));
            mm.enabled.set(u64::from(m.detector.enabled()));
            mm.idle.set(u64::from(m.idle));
            if let Some(k) = HEALTH_VALUES.iter().position(|h| *h == health) {
                mm.health.set(k as u64);
            }
            let mut id = mm.model_id.lock().unwrap_or_else(|e| e.into_inner());
            if *id != m.model.model_id {
                id.clone_from(&m.model.model_id);
            }
            drop(id);
            *mm.health_reason.lock().unwrap_or_else(|e| e.into_inner()) =
                reason.clone().unwrap_or_default();
        }
        let t = format!("{}/{}", self.base, m.cfg.name);
        self.retained(
            format!("{t}/state"),
            self.state_json(i, reason.as_deref()),
            true,
        );
        self.retained(
            format!("{t}/threshold"),
            // `{:?}`: the shortest form that reads back, 1e-300 rather than 300 digits.
            format!("{:?}", m.detector.params().threshold_on),
            true,
        );
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
        self.retained(format!("{t}/health"), health.to_string(), true);
    }

    /// Home Assistant's MQTT discovery, per machine: the alarm (`binary_sensor`, device class `problem`, the
    /// retained `state` as its attributes), the score and the health (`sensor`s), and its settings as controls
    /// that send the daemon's own commands: the threshold (`number`), `enabled` (`switch`) and a mute of
    /// `mqtt.discovery.mute` (`switch`: on mutes, off unmutes, its state the retained `mute`).
    pub(crate) fn publish_discovery(&self) {
        if !self.cfg.mqtt.discovery.enabled {
            return;
        }
        let node = &self.cfg.node_id;
        let device = json!({
            "identifiers": [format!("sonitor_{node}")],
            "name": format!("sonitor {node}"),
            "manufacturer": "sonitor",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        let mute = crate::publish::mqtt::duration_in_days(self.cfg.mqtt.discovery.mute);
        for m in self.machines.iter().filter(|m| !m.removed) {
            let name = &m.cfg.name;
            let t = format!("{}/{}", self.base, name);
            for entity in DISCOVERY_ENTITIES {
                let mut config = match entity.1 {
                    "alarm" => json!({
                        "name": format!("{name} anomaly"),
                        "state_topic": format!("{t}/alarm"),
                        "payload_on": "ON", "payload_off": "OFF",
                        "device_class": "problem",
                        "json_attributes_topic": format!("{t}/state"),
                    }),
                    "score" => json!({
                        "name": format!("{name} anomaly score"),
                        "state_topic": format!("{t}/score"),
                        "state_class": "measurement",
                    }),
                    "health" => json!({
                        "name": format!("{name} audio health"),
                        "state_topic": format!("{t}/health"),
                        "device_class": "enum",
                        "options": HEALTH_VALUES,
                        "entity_category": "diagnostic",
                        // Why it is not OK, as an attribute of the entity beside its value.
                        "json_attributes_topic": format!("{t}/state"),
                        "json_attributes_template": "{{ {'reason': value_json.health_reason} | tojson }}",
                    }),
                    "threshold" => json!({
                        "name": format!("{name} threshold"),
                        "state_topic": format!("{t}/threshold"),
                        "command_topic": format!("{t}/threshold/set"),
                        // Home Assistant refuses a number whose step is below 0.001 (its MQTT number
                        // schema), and the whole entity with it (review26); in box mode any value typed is
                        // sent, finer than the step.
                        "min": 0.0001, "max": 1.9999, "step": 0.001, "mode": "box",
                        "entity_category": "config",
                    }),
                    "enabled" => json!({
                        "name": format!("{name} watched"),
                        "state_topic": format!("{t}/enabled"),
                        "command_topic": format!("{t}/enabled/set"),
                        "payload_on": "ON", "payload_off": "OFF",
                        "entity_category": "config",
                    }),
                    _ => json!({
                        "name": format!("{name} mute for {mute}"),
                        "state_topic": format!("{t}/mute"),
                        "command_topic": format!("{t}/mute/set"),
                        "payload_on": mute, "payload_off": "off",
                        "state_on": "ON", "state_off": "OFF",
                        "icon": "mdi:bell-off",
                    }),
                };
                if let Some(o) = config.as_object_mut() {
                    o.insert(
                        "unique_id".into(),
                        json!(discovery_unique_id(node, name, entity.1)),
                    );
                    o.insert(
                        "availability_topic".into(),
                        json!(format!("{}/status", self.base)),
                    );
                    // `status` is `online`, `offline` (the last will) or `stopped`: Home Assistant ignores a
                    // payload that is neither of the two it compares with, so `stopped` maps to not available.
                    o.insert(
                        "availability_template".into(),
                        json!("{{ 'online' if value == 'online' else 'offline' }}"),
                    );
                    o.insert("payload_available".into(), json!("online"));
                    o.insert("payload_not_available".into(), json!("offline"));
                    o.insert("device".into(), device.clone());
                }
                self.retained(self.discovery_topic(name, entity), config.to_string(), true);
            }
        }
    }

    /// The topic of the config of machine `name`'s Home Assistant entity `(component, what)`:
    /// `<prefix>/<component>/sonitor_<node_id>/<name>_<what>/config`, the node a topic level of its own (Home
    /// Assistant's optional `node_id` level), so that no two nodes' machines meet on one topic whatever `_` their
    /// names hold.
    fn discovery_topic(&self, name: &str, (component, what): (&str, &str)) -> String {
        let dp = self.cfg.mqtt.discovery.prefix.trim_end_matches('/');
        format!(
            "{dp}/{component}/sonitor_{}/{name}_{what}/config",
            self.cfg.node_id
        )
    }

    /// The retained topics the daemon publishes for machine `name` with this configuration: its own under the
    /// topic base, and its Home Assistant entities' configs while discovery is on.
    pub(crate) fn machine_topics(&self, name: &str) -> Vec<String> {
        let mut topics: Vec<String> = RETAINED_TOPICS
            .iter()
            .map(|what| format!("{}/{name}/{what}", self.base))
            .collect();
        if self.cfg.mqtt.discovery.enabled {
            topics.extend(
                DISCOVERY_ENTITIES
                    .iter()
                    .map(|&e| self.discovery_topic(name, e)),
            );
        }
        topics
    }

    /// Whether retained `topic` of machine `name` is this node's to delete: one of its topics under this
    /// `node_id` (with any prefix), or the config of its Home Assistant entity (under any discovery prefix). A
    /// topic of another `node_id` may be another daemon's by now.
    /// Earlier builds put the node and the machine in one level, `sonitor_<node_id>_<name>_<what>`, where `a_b`'s
    /// `c` met `a`'s `b_c`: such topics, recorded by an earlier build, are this node's too, deleted at the start
    /// that replaces them.
    fn owns(&self, name: &str, topic: &str) -> bool {
        let node = &self.cfg.node_id;
        RETAINED_TOPICS
            .iter()
            .any(|what| topic.ends_with(&format!("/{node}/{name}/{what}")))
            || DISCOVERY_ENTITIES.iter().any(|(component, what)| {
                topic.ends_with(&format!("/{component}/sonitor_{node}/{name}_{what}/config"))
                    || topic.ends_with(&format!("/{component}/sonitor_{node}_{name}_{what}/config"))
            })
    }

    /// With MQTT off, the saved records of the machines no longer in the file are kept in the state file for a
    /// start with MQTT, which ends their alarms and clears their topics ([`Self::clean_up_last_run`]). Taken
    /// before the start's first save, or a stop right after it lost them.
    pub(crate) fn keep_removed(&mut self, saved: &BTreeMap<String, SavedMachine>) {
        if self.cfg.mqtt.enabled {
            return;
        }
        self.unpublished_removals = saved
            .iter()
            .filter(|(name, _)| !self.machines.iter().any(|m| &m.cfg.name == *name))
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect();
    }

    /// At a start, what the last run left on the broker that no longer applies (`saved`: its saved state). A
    /// machine the file no longer names (removed or renamed) has an alarm of its still on ended (an `end` event
    /// with reason `removed`) and all its retained topics deleted; a machine still there has those deleted that
    /// it no longer publishes (the topic prefix or discovery's changed, discovery switched off). Only this node's
    /// topics ([`Self::owns`]): those under an earlier `node_id` are named in the log. Deleted with empty retained
    /// messages through the outbox, so that a broker away now gets them later, in order: otherwise dashboards
    /// would show, for ever, a machine nobody watches, its alarm on, or each machine twice. State saved by a
    /// version that did not record the topics stands for this configuration's. Returns the machines removed.
    pub(crate) fn clean_up_last_run(
        &mut self,
        saved: &BTreeMap<String, SavedMachine>,
    ) -> Vec<String> {
        if !self.cfg.mqtt.enabled {
            // Nothing can be deleted now; the topics recorded stay for a start with MQTT, and so do the records
            // of the machines no longer in the file ([`Self::keep_removed`], before the start's first save).
            return Vec::new();
        }
        // What each machine in the file publishes now, recorded for the next start below.
        let current: BTreeMap<String, Vec<String>> = self
            .machines
            .iter()
            .map(|m| (m.cfg.name.clone(), self.machine_topics(&m.cfg.name)))
            .collect();
        let mut removed = Vec::new();
        let mut pushed_any = false;
        for (name, s) in saved {
            let now = current.get(name);
            let present = now.is_some();
            let now = now.map_or(&[][..], Vec::as_slice);
            let before = match &s.retained_topics {
                Some(t) => t.clone(),
                None if present => Vec::new(),
                None => self.machine_topics(name),
            };
            let (stale, foreign): (Vec<&String>, Vec<&String>) = before
                .iter()
                .filter(|t| !now.contains(t))
                .partition(|t| self.owns(name, t));
            if let Some(t) = foreign.first() {
                log::warn!(
                    "machine '{name}': {} retained topic(s) of the last run are under another node_id, such as {t}; \
                     left alone, since another daemon (one cloned from this device's image, say) may publish them \
                     now; if none does, delete each with `mosquitto_pub -r -n -t TOPIC`",
                    foreign.len()
                );
            }
            // An event of a machine whose topics are all another node's was that node's (a cloned state).
            let event = s.event.as_ref().filter(|_| !present && !stale.is_empty());
            let msgs = self.removal_messages(name, event, s.seq + 1, &stale);
            if msgs.is_empty() {
                continue;
            }
            let ended = event
                .map(|e| format!("its alarm event {} ends (reason removed), and ", e.event_id));
            let note = if present {
                format!(
                    "machine '{name}': {} retained topic(s) of the last run no longer apply (a topic prefix or \
                     discovery changed, or an earlier build named them otherwise) and are deleted: {}",
                    stale.len(),
                    stale.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                )
            } else {
                format!(
                    "machine '{name}' of the last run is no longer in {}: {}its retained topics are cleared",
                    self.config_path.display(),
                    ended.unwrap_or_default()
                )
            };
            if !self.queue_clean_up(name, msgs, &note) {
                continue;
            }
            pushed_any = true;
            if !present {
                removed.push(name.clone());
            }
        }
        for m in &mut self.machines {
            m.saved.retained_topics = current.get(&m.cfg.name).cloned();
        }
        if pushed_any {
            self.send(ToMqtt::OutboxChanged);
        }
        removed
    }

    /// What deletes machine `name` from the broker: the `end` event of its alarm `event` still on (reason
    /// `removed`, numbered `seq`) and its `alarm` `OFF`, then an empty retained message for each of its retained
    /// `topics`, its Home Assistant entities' configs first. A script keyed on `alarm` saw `ON`, then the deletion,
    /// never `OFF`; and with the state topics emptied first, Home Assistant read empty payloads for entities it
    /// still had (review26).
    fn removal_messages(
        &self,
        name: &str,
        event: Option<&ActiveEvent>,
        seq: u64,
        topics: &[impl AsRef<str>],
    ) -> Vec<OutMessage> {
        let ended = event.map(|e| OutMessage {
            topic: format!("{}/{name}/events", self.base),
            payload: end_event(
                name,
                e,
                &now_rfc3339(),
                ClearReason::Removed,
                None,
                None,
                seq,
            )
            .to_string(),
            retain: false,
        });
        let off = event.map(|_| OutMessage {
            topic: format!("{}/{name}/alarm", self.base),
            payload: "OFF".into(),
            retain: true,
        });
        let own = format!("{}/", self.base);
        let (states, entities): (Vec<&str>, Vec<&str>) = topics
            .iter()
            .map(AsRef::as_ref)
            .partition(|t| t.starts_with(&own));
        ended
            .into_iter()
            .chain(off)
            .chain(entities.into_iter().chain(states).map(|t| OutMessage {
                topic: t.to_string(),
                payload: String::new(),
                retain: true,
            }))
            .collect()
    }

    /// Queues `msgs`, which clean up after machine `name` ([`Self::removal_messages`]), and logs `note` once
    /// they are in the outbox. Not queued when the outbox has no room for them all, since it drops its oldest
    /// message when full and that must never be an alarm message: the log then says what to delete by hand.
    /// Returns whether they were queued.
    fn queue_clean_up(&self, name: &str, msgs: Vec<OutMessage>, note: &str) -> bool {
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if msgs.len() > outbox.room() {
            log::error!(
                "machine '{name}': the outbox holds {} messages the broker has not taken (outbox_max {}), so the \
                 {} message(s) that would clean up after it are not queued: delete its retained topics by hand \
                 (`mosquitto_pub -r -n -t TOPIC`), such as {}",
                outbox.len(),
                self.cfg.mqtt.outbox_max,
                msgs.len(),
                msgs.iter()
                    .find(|m| m.retain)
                    .map_or("its events", |m| m.topic.as_str())
            );
            return false;
        }
        match outbox.push(msgs) {
            Ok(_) => log::warn!("{note}"),
            Err(e) => log::error!("{note}; {e}: kept in memory only until the broker takes them"),
        }
        true
    }

    /// The index of the machine named `name` that is watched (not removed by a reload).
    fn watched(&self, name: &str) -> Option<usize> {
        self.machines
            .iter()
            .position(|m| m.cfg.name == name && !m.removed)
    }

    /// Machine `i`, gone from the file at a reload, is no longer watched: an alarm of its still on ends (an
    /// `end` event with reason `removed`), its retained topics are deleted as a start deletes those of a machine
    /// removed while the daemon was stopped ([`Self::clean_up_last_run`]), its metrics are no longer exported and
    /// the state file forgets it. Its reader cuts no more windows of it (`window::append_model_audio` reads the
    /// flag set here), and those already on their way are dropped on arrival ([`Self::on_score`]). Its input and
    /// model are freed only by a restart.
    fn retire(&mut self, i: usize) {
        let m = &mut self.machines[i];
        m.removed = true;
        m.mute_deadline = None;
        // Its detector stops; the transition of an alarm on is the `removed` end event below.
        let _ = m.detector.set_enabled(false, m.last_t_ms);
        let (name, event, seq) = (m.cfg.name.clone(), m.saved.event.take(), m.saved.seq + 1);
        if let Some(mm) = self.metrics.machines.get(i) {
            mm.removed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let ended = event.as_ref().map_or(String::new(), |e| {
            format!("its alarm event {} ends (reason removed), ", e.event_id)
        });
        let cleared = if self.cfg.mqtt.enabled {
            "its retained topics are cleared and "
        } else {
            ""
        };
        let note = format!(
            "reload: machine '{name}' is gone from {}: {ended}{cleared}it is no longer watched (no more of its windows \
             are scored; its input and model are freed at the next restart)",
            self.config_path.display()
        );
        if !self.cfg.mqtt.enabled {
            // Its alarm ends now, in the outbox, as with MQTT on (a start with MQTT publishes it); its record is
            // kept in the state file for that start, which clears its topics.
            let pushed = event.as_ref().map_or(Ok(Vec::new()), |e| {
                let ev = end_event(
                    &name,
                    e,
                    &now_rfc3339(),
                    ClearReason::Removed,
                    None,
                    None,
                    seq,
                );
                self.push_transition(&format!("{}/{name}", self.base), "OFF", &ev)
            });
            match pushed {
                Ok(_) => log::warn!("{note}"),
                Err(err) => log::error!("{note}; {err}: its end is kept in memory only"),
            }
            return self.keep_retired(i, name);
        }
        let topics = self.machine_topics(&name);
        // The MQTT thread forgets their values, so that no reconnection publishes them again.
        for t in &topics {
            self.retained(t.clone(), String::new(), false);
        }
        let msgs = self.removal_messages(&name, event.as_ref(), seq, &topics);
        if self.queue_clean_up(&name, msgs, &note) {
            self.send(ToMqtt::OutboxChanged);
        }
    }

    /// With MQTT off, the record of machine `i`, retired by a reload with its alarm ended, kept in the state file
    /// for a start with MQTT, which clears its topics.
    fn keep_retired(&mut self, i: usize, name: String) {
        let kept = SavedMachine {
            event: None,
            ..self.machines[i].saved.clone()
        };
        self.unpublished_removals.insert(name, kept);
        self.persist();
    }

    /// The machine a reload retired ([`Self::retire`]) that the file `nm` names again on the same device and
    /// channel: its input and model were kept, so it can be watched again at once.
    fn returning(&self, nm: &MachineConfig) -> Option<usize> {
        self.machines.iter().position(|m| {
            m.removed
                && m.cfg.name == nm.name
                && m.cfg.device == nm.device
                && m.cfg.channel == nm.channel
        })
    }

    /// Watches again machine `i`, retired by an earlier reload and back in the file (a file caught half-written,
    /// then put right): its reader cuts its windows again, its metrics and retained topics come back (its alarm
    /// OFF; the reload then publishes its state), with its mute gone and what commands set before kept. It waited
    /// for a restart, without a health series to alert on.
    fn reinstate(&mut self, i: usize) {
        let m = &mut self.machines[i];
        m.removed = false;
        m.unscored = 0;
        // Its windows come from its next one on, not from before its removal.
        m.last_window = Instant::now();
        // The retirement dropped its mute's deadline: the detector's mute goes with it.
        let _ = m.detector.set_muted(false, m.last_t_ms);
        let _ = m.detector.set_enabled(m.saved.enabled, m.last_t_ms);
        let name = m.cfg.name.clone();
        if let Some(mm) = self.metrics.machines.get(i) {
            mm.removed
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        log::warn!(
            "reload: machine '{name}', removed by an earlier reload, is back in {}: watched again from its next \
             window",
            self.config_path.display()
        );
        self.unpublished_removals.remove(&name);
        self.retained(format!("{}/{name}/alarm", self.base), "OFF".into(), true);
        self.publish_discovery();
        // Its health was not followed while it was removed (review34: a microphone pulled meanwhile, and it came
        // back `OK`): what its input and channel say now.
        self.set_health(i, self.audio_health(i).into());
    }

    /// Records a transition: outbox first (durable), then state, then MQTT, clip, metrics.
    pub(crate) fn on_transition(&mut self, i: usize, t: Transition) {
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
        m.saved.since = Some(now.clone());
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
                let e = ActiveEvent {
                    event_id,
                    started_at: now.clone(),
                    peak: score,
                    clip,
                    announced: false,
                };
                let ev = start_event(&name, &e, score, threshold, &m.model.model_id, m.saved.seq);
                m.saved.event = Some(e);
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
                let mut e = m.saved.event.take().unwrap_or_else(|| ActiveEvent {
                    event_id: format!("{node}-{name}-unknown-{}", m.saved.seq),
                    started_at: String::new(),
                    peak,
                    clip: None,
                    announced: true,
                });
                e.peak = peak;
                let note = format!(
                    "alarm OFF: {name} ({reason}, peak {peak:.4}, event {})",
                    e.event_id
                );
                let ev = end_event(
                    &name,
                    &e,
                    &now,
                    reason,
                    Some(threshold),
                    Some(&m.model.model_id),
                    m.saved.seq,
                );
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
        // its messages enter the outbox (not announced yet, which the next start mends), and again after; a
        // clear after.
        let raised = m.saved.event.is_some();
        if raised {
            self.persist();
        }
        let mut announced = true;
        for (alarm, ev, note, seen) in msgs {
            let pushed = self.push_transition(&topic, &alarm, &ev);
            announced &= pushed.is_ok();
            // Logged once the transition is on disk (or known not to be).
            match pushed {
                Ok(_) => log::warn!("{note}"),
                Err(e) => log::error!(
                    "{note}; {e}: the transition is kept in memory only: it is published when the broker is \
                     reachable, but lost if sonitor stops before that; {}",
                    if e.source.kind() == std::io::ErrorKind::PermissionDenied {
                        // A folder another user owns (a `sudo sonitor run` before), not a disk problem.
                        "give the outbox folder back to the user sonitor runs as (`sudo chown -R` the state \
                         directory to it)"
                    } else {
                        "make the state directory's filesystem writable again (free space, remount it read-write)"
                    }
                ),
            }
            self.retained(format!("{topic}/alarm"), alarm, false);
            self.observe(seen);
        }
        // A test kills the daemon here: the messages are in the outbox, the state does not say so yet.
        crate::fault::hang("transition-pushed");
        if let Some(e) = self.machines[i].saved.event.as_mut() {
            e.announced = announced;
        }
        self.persist();
        self.send(ToMqtt::OutboxChanged);
        self.publish_machine_state(i);
    }

    /// A transition's messages into the outbox, in order: `alarm` (`ON`/`OFF`, retained) under the machine's
    /// `topic`, then its event `ev`.
    fn push_transition(
        &self,
        topic: &str,
        alarm: &str,
        ev: &serde_json::Value,
    ) -> Result<Vec<u64>, crate::publish::outbox::OutboxError> {
        let msgs = vec![
            OutMessage {
                topic: format!("{topic}/alarm"),
                payload: alarm.into(),
                retain: true,
            },
            OutMessage {
                topic: format!("{topic}/events"),
                payload: ev.to_string(),
                retain: false,
            },
        ];
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let pushed = outbox.push(msgs);
        // With MQTT off no MQTT thread counts them: `status` said 0 while they piled up on disk.
        self.metrics.outbox_depth.set(outbox.len() as u64);
        self.metrics.outbox_dropped.set(outbox.dropped());
        pushed
    }

    /// Alarms the last run saved as raised but had not put in the outbox when it ended (killed, or the power lost,
    /// between the two; or a disk that could not take them): their `start` event and `alarm ON` go in now, before
    /// anything else of theirs, so that no subscriber gets an end without its start. A start still waiting in the
    /// outbox (the run stopped after the messages went in, before the state said so) is not put in again; one the
    /// broker had already taken comes twice: consumers dedupe on `event_id`.
    pub(crate) fn announce_unannounced(&mut self) {
        let mut any = false;
        for i in 0..self.machines.len() {
            let m = &self.machines[i];
            let Some(e) = m.saved.event.as_ref().filter(|e| !e.announced) else {
                continue;
            };
            let name = &m.cfg.name;
            let topic = format!("{}/{name}", self.base);
            if self.start_waits(&format!("{topic}/events"), &e.event_id) {
                log::info!(
                    "{name}: alarm {} was saved before its start entered the outbox, where it waits: it is not sent \
                     twice",
                    e.event_id
                );
                if let Some(e) = self.machines[i].saved.event.as_mut() {
                    e.announced = true;
                }
                any = true;
                continue;
            }
            let threshold = m.detector.params().threshold_on;
            let ev = start_event(name, e, e.peak, threshold, &m.model.model_id, m.saved.seq);
            let pushed = self.push_transition(&topic, "ON", &ev);
            let note = format!(
                "{name}: alarm {} was raised but not yet in the outbox when the daemon stopped",
                e.event_id
            );
            match pushed {
                Ok(_) => log::warn!("{note}: its start is sent now"),
                Err(err) => {
                    log::error!("{note}; {err}: its start is kept in memory only");
                    continue;
                }
            }
            if let Some(e) = self.machines[i].saved.event.as_mut() {
                e.announced = true;
            }
            any = true;
        }
        if any {
            self.persist();
            self.send(ToMqtt::OutboxChanged);
        }
    }

    /// Whether the outbox holds the `start` event of `event_id` on `topic`.
    fn start_waits(&self, topic: &str, event_id: &str) -> bool {
        let outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let waits = outbox.records().any(|r| {
            r.msg.topic == topic
                && serde_json::from_str::<serde_json::Value>(&r.msg.payload)
                    .is_ok_and(|v| v["type"] == "start" && v["event_id"].as_str() == Some(event_id))
        });
        waits
    }

    pub(crate) fn on_score(&mut self, s: ScoreMsg) {
        crate::fault::point("controller");
        let i = s.machine;
        self.machines[i].last_window = Instant::now();
        self.machines[i].dropped_at_last_window = self
            .metrics
            .machines
            .get(i)
            .map_or(0, |m| m.dropped_windows.get());
        if std::mem::take(&mut self.machines[i].starved) && !self.machines[i].removed {
            let line = format!("{}: its windows come again", self.machines[i].cfg.name);
            self.health_changed(i, Some((log::Level::Info, line)));
        }
        if self.machines[i].removed {
            self.window_handled(i, s.t_end_ms);
            return;
        }
        let Some(score) = s.score else {
            self.on_unscored(i, s.t_end_ms);
            return;
        };
        if std::mem::take(&mut self.machines[i].unscored) >= NO_SCORES_AFTER {
            let line = format!("{}: windows are scored again", self.machines[i].cfg.name);
            self.health_changed(i, Some((log::Level::Info, line)));
        }
        log::debug!(
            "score {} t={} ms: {:.4}",
            self.machines[i].cfg.name,
            s.t_end_ms,
            score
        );
        // A window scored after the mute's end counts towards an alarm.
        self.end_mute_if_due(i);
        self.metrics.machines[i]
            .window_level
            .set_f64(f64::from(s.level_dbfs));
        // A window without signal says nothing of the machine, only of its input (health says SILENT once it
        // lasts): not judged, and an alarm stays as it was, as while the input is away.
        let no_signal = s.level_dbfs < crate::window::NO_SIGNAL_BELOW_DBFS;
        if no_signal != self.machines[i].no_signal {
            self.machines[i].no_signal = no_signal;
            let logged = self.change_logged(i);
            let m = &self.machines[i];
            if logged && no_signal {
                log::warn!(
                    "{}: no signal in its window (level {:.1} dBFS, under the {} dBFS of any microphone's own \
                     noise: a muted, dead or stuck input?): not judged until sound returns; an alarm stays as it was",
                    m.cfg.name,
                    s.level_dbfs,
                    crate::window::NO_SIGNAL_BELOW_DBFS
                );
            } else if logged {
                log::info!(
                    "{}: signal again (window level {:.1} dBFS)",
                    m.cfg.name,
                    s.level_dbfs
                );
            }
        }
        if no_signal {
            self.metrics.machines[i].no_signal_windows.inc();
            self.machines[i].last_t_ms = s.t_end_ms;
            self.window_handled(i, s.t_end_ms);
            return;
        }
        let idle = self.machines[i].is_idle_at(s.level_dbfs);
        if idle != self.machines[i].idle {
            self.machines[i].idle = idle;
            let logged = self.change_logged(i);
            let m = &self.machines[i];
            let below = m.cfg.detector.idle_below_dbfs.unwrap_or_default();
            if logged && idle {
                log::info!(
                    "{}: not running (window level {:.1} dBFS, below idle_below_dbfs {below}): not judged until it \
                     runs again",
                    m.cfg.name,
                    s.level_dbfs
                );
            } else if logged {
                let why = match m.cfg.detector.idle_below_dbfs {
                    Some(below) => format!(
                        "at least idle_below_dbfs + idle_hysteresis_db = {}",
                        below + m.cfg.detector.idle_hysteresis_db
                    ),
                    None => "idle_below_dbfs no longer set".to_string(),
                };
                log::info!(
                    "{}: running again (window level {:.1} dBFS, {why})",
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
        // The gauge, like the histogram, holds judged windows only: a dead microphone's windows score high (0.42
        // against a threshold of 0.05 in a review) and a rule `sonitor_score > sonitor_threshold` fired on them.
        self.metrics.machines[i].scores.observe(score);
        self.metrics.machines[i].score.set_f64(score);
        let t = {
            let m = &mut self.machines[i];
            m.last_score = Some(score);
            m.peak_score = Some(m.peak_score.map_or(score, |p| p.max(score)));
            m.last_t_ms = s.t_end_ms;
            if let Some(e) = m.saved.event.as_mut() {
                e.peak = e.peak.max(score);
            }
            m.detector.update(s.t_end_ms, score)
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
                score,
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
                payload: format!("{:.6}", score),
                qos1: false,
            });
        }
    }

    /// Machine `i`'s window ending at `t_end_ms` is handled (through the detector, its alarm's clip asked for):
    /// a replay held back for it may read on (`window::LeadGuard`).
    fn window_handled(&self, i: usize, t_end_ms: u64) {
        let mm = &self.metrics.machines[i];
        mm.handled_ms
            .fetch_max(t_end_ms, std::sync::atomic::Ordering::Release);
        mm.settled.inc();
    }

    pub(crate) fn on_command(&mut self, c: Command) {
        let name = c.machine();
        let Some(i) = self.watched(name) else {
            self.metrics.commands_rejected.inc();
            if let Some(n) = self.unknown_commands.inc_log_due() {
                log::warn!(
                    "command for unknown machine {} ignored ({n} for machines not watched here since the start; \
                     logged at 1, 2, 4, 8, …)",
                    crate::publish::mqtt::quoted(name)
                );
            }
            // Answered where its sender looks (a mistyped name did nothing, in silence, for anyone without the
            // daemon's log), naming the machines that are watched.
            let watched: Vec<&str> = self
                .machines
                .iter()
                .filter(|m| !m.removed)
                .map(|m| m.cfg.name.as_str())
                .collect();
            let shown = watched.len().min(8);
            let more = if watched.len() > shown {
                format!(" and {} more", watched.len() - shown)
            } else {
                String::new()
            };
            self.send(ToMqtt::Refused {
                topic: c.topic(&self.base),
                why: format!(
                    "no machine {} is watched by this node: its machines are {}{more}",
                    crate::publish::mqtt::quoted(name),
                    watched[..shown].join(", ")
                ),
            });
            return;
        };
        let now_ms = self.machines[i].last_t_ms;
        let t = match c {
            Command::Threshold { value, .. } => {
                let m = &mut self.machines[i];
                // In range but far from what the bundle calibrated (review29: `threshold/set 1e-300` took without
                // a word, and every window alarmed): applied, as the engineer asked, and said as `validate` says
                // it of the file; `sonitor status` shows it while it is in force.
                if let Some(far) = value
                    .and_then(|v| crate::check::far_from_calibrated(v, &m.model.section.threshold))
                {
                    log::warn!(
                        "machine '{}': {far}; set by a threshold/set command (`default` goes back to the \
                         bundle's)",
                        m.cfg.name
                    );
                }
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

    /// SIGHUP: detector settings (thresholds, debounce), `enabled` and each machine's model from the file; audio
    /// keeps flowing. A machine's model is its bundle's graph and section as they are on disk now, so a bundle
    /// replaced in place (trained again, its thresholds calibrated again, `combine`d) and a bundle or section the
    /// file names anew are applied ([`Self::apply_models`]), as long as their feature parameters are the ones the
    /// machine's audio is cut and transformed for; otherwise a restart is needed, and named. A file that `sonitor
    /// validate` would refuse (the same [`crate::check::check`]: bundles built by tract, sections, devices, MQTT
    /// credentials, …) is refused whole now, so that a reload never leaves a daemon that cannot restart; settings
    /// that need a restart are named.
    pub(crate) fn reload(&mut self) {
        let waiting = self.reload_file();
        self.metrics.reloaded(waiting.map(|w| !w.is_empty()));
    }

    /// [`Self::reload`]: the changes of the file that wait for a restart (each logged), or `None` when the file
    /// was refused and the running configuration stays.
    fn reload_file(&mut self) -> Option<Vec<String>> {
        let path = self.config_path.display().to_string();
        // The graphs running: tract has built and run those already.
        let graphs = self
            .machines
            .iter()
            .map(|m| m.model.onnx_sha256.clone())
            .collect();
        let checked = check_with(
            &self.config_path,
            Some(&Running {
                cfg: &self.cfg,
                graphs: &graphs,
            }),
            MissingDirs::Create,
        );
        let Some(new) = checked.cfg else {
            log::error!(
                "reload: {}; keeping the running configuration",
                checked.problems.join("; ")
            );
            return None;
        };
        let mut problems = checked.problems;
        // Each machine's model against its bundle on disk (`check` loaded each bundle the file names), one copy
        // of each section for the machines scored with it.
        let mut sections: BTreeMap<(&Path, &str), Arc<SectionModel>> = BTreeMap::new();
        let mut changes = Vec::new();
        for nm in &new.machines {
            let Some(i) = self.watched(&nm.name).or_else(|| self.returning(nm)) else {
                continue;
            };
            let Some((b, section)) = checked
                .bundles
                .get(&nm.bundle)
                .and_then(|b| Some((b, b.manifest.section_by_key(&nm.section)?)))
            else {
                continue;
            };
            let section = sections
                .entry((nm.bundle.as_path(), nm.section.as_str()))
                .or_insert_with(|| Arc::new(section.clone()))
                .clone();
            let candidate = MachineModel::of(&b.manifest, section, usize::MAX);
            let m = &self.machines[i];
            let moved = (m.cfg.bundle != nm.bundle || m.cfg.section != nm.section).then(|| {
                format!(
                    "{} {} → {} {}",
                    m.cfg.bundle.display(),
                    m.cfg.section,
                    nm.bundle.display(),
                    nm.section
                )
            });
            let change = model_change(&m.model, &candidate, moved);
            // `check` saw the threshold of the bundle on disk; one that is not applied stays in force.
            if !matches!(change, ModelChange::Apply(_)) {
                if let Some(p) = threshold_off_above_bundle(nm, m.bundle_threshold()) {
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
            changes.push((i, nm, change, candidate));
        }
        if !problems.is_empty() {
            log::error!(
                "reload: {path}: {}; keeping the running configuration (`sonitor validate` names the same \
                 problems, and a restart would refuse the file)",
                problems.join("; ")
            );
            return None;
        }
        for w in &checked.warnings {
            log::warn!("reload: {w}");
        }
        for i in new
            .machines
            .iter()
            .filter_map(|nm| self.returning(nm))
            .collect::<Vec<_>>()
        {
            self.reinstate(i);
        }
        let mut waiting = Vec::new();
        let models = self.apply_models(changes, checked.embedders, &mut waiting);
        let mut changed = Vec::new();
        let (mut enabled, mut disabled) = (Vec::new(), Vec::new());
        for i in 0..self.machines.len() {
            let name = self.machines[i].cfg.name.clone();
            let nm = new.machines.iter().find(|m| m.name == name);
            if self.machines[i].removed {
                if nm.is_some() {
                    log::warn!(
                        "reload: machine '{name}', removed by an earlier reload, is back in {path} on another \
                         device or channel; it is watched again once sonitor restarts"
                    );
                    waiting.push(format!("machine '{name}' back"));
                }
                continue;
            }
            let Some(nm) = nm else {
                self.retire(i);
                continue;
            };
            let m = &mut self.machines[i];
            file_threshold_replaces(
                &name,
                &mut m.saved,
                m.cfg.detector.threshold,
                nm.detector.threshold,
                "at this reload",
            );
            // New settings in the file (`idle_below_dbfs` too), or a new threshold in the machine's bundle.
            let settings_changed = m.cfg.detector != nm.detector;
            m.cfg.detector = nm.detector.clone();
            let p = Self::params_of(m);
            let params_changed = p != *m.detector.params();
            if params_changed {
                m.detector.set_params(p);
            }
            if settings_changed || params_changed {
                changed.push(name.clone());
            }
            let enabled_changed = m.cfg.enabled != nm.enabled;
            m.cfg.enabled = nm.enabled;
            if enabled_changed {
                if nm.enabled {
                    enabled.push(name.clone());
                } else {
                    disabled.push(name.clone());
                }
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
            waiting.push(what);
        }
        self.cfg.mqtt.score_interval = new.mqtt.score_interval;
        self.persist();
        let after = if waiting.is_empty() {
            String::new()
        } else {
            format!("; waiting for a restart: {}", waiting.join(", "))
        };
        // Each list with its machines' names: the journal after a reload says which machines it changed.
        let named = |v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.join(", "))
            }
        };
        let mut flags = String::new();
        if !enabled.is_empty() {
            flags.push_str(&format!(", {} enabled{}", enabled.len(), named(&enabled)));
        }
        if !disabled.is_empty() {
            flags.push_str(&format!(
                ", {} disabled{}",
                disabled.len(),
                named(&disabled)
            ));
        }
        log::info!(
            "reloaded {path}: {} machine(s) with new detector settings{}, {models} with a new model{flags}{after}",
            changed.len(),
            named(&changed)
        );
        Some(waiting)
    }

    /// A reload's model changes ([`model_change`] of each machine against the model its bundle gives now): an
    /// applied one gives the machine its new section and threshold and, when its graph is new here, the graph
    /// the reload's check built (`built`); the inference thread takes them before its next window
    /// ([`ModelSwap`]), and drops the graphs no machine is scored with any more. The detector's state carries
    /// over: an alarm on stays on until the new model's scores clear it. Returns how many machines have a new
    /// model.
    fn apply_models(
        &mut self,
        changes: Vec<(usize, &MachineConfig, ModelChange, MachineModel)>,
        mut built: BTreeMap<PathBuf, crate::embed::Embedder>,
        waiting: &mut Vec<String>,
    ) -> usize {
        // The inference thread's slots in use; a graph given now takes the first free one (not one dropped now:
        // the thread puts the new graphs in before it drops the old).
        let before: BTreeSet<usize> = self.machines.iter().map(|m| m.model.embedder).collect();
        let mut taken = before.clone();
        // The graphs the inference thread holds, by checksum: those running before this reload (a machine may
        // take the graph another one leaves in the same reload) and those it is given now.
        let mut graphs: BTreeMap<String, usize> = self
            .machines
            .iter()
            .map(|m| (m.model.onnx_sha256.clone(), m.model.embedder))
            .collect();
        let mut swap = ModelSwap::default();
        let mut applied = 0;
        for (i, nm, change, mut model) in changes {
            let name = &nm.name;
            let what = match change {
                ModelChange::Same => continue,
                ModelChange::Restart(why) => {
                    log::warn!(
                        "reload: machine '{name}': the feature parameters of its bundle changed ({why}); the \
                         running model stays until sonitor restarts"
                    );
                    waiting.push(format!("machine '{name}': its bundle's feature parameters"));
                    continue;
                }
                ModelChange::Apply(what) => what,
            };
            // A graph the inference thread holds already, else the one the check built.
            model.embedder = match graphs.get(&model.onnx_sha256) {
                Some(&k) => k,
                None => match built.remove(&nm.bundle) {
                    Some(e) => {
                        let k = free_slot(&taken);
                        taken.insert(k);
                        swap.embedders.push((k, e));
                        graphs.insert(model.onnx_sha256.clone(), k);
                        k
                    }
                    None => {
                        log::error!(
                            "reload: machine '{name}': the graph of {} was not built; the running model stays \
                             until sonitor restarts",
                            nm.bundle.display()
                        );
                        waiting.push(format!("machine '{name}': its bundle's graph"));
                        continue;
                    }
                },
            };
            swap.scorers.push((i, model.scorer()));
            let kept = (nm.detector)
                .threshold_set(self.machines[i].saved.threshold_override)
                .filter(|_| model.section.threshold.value != self.machines[i].bundle_threshold())
                .map(|by| format!("; {by} stays in force"))
                .unwrap_or_default();
            log::info!(
                "reload: machine '{name}' is scored with model {} from {} {} now ({what}){kept}; its alarm state \
                 carries over",
                model.model_id,
                nm.bundle.display(),
                nm.section
            );
            let m = &mut self.machines[i];
            m.model = model;
            m.cfg.bundle = nm.bundle.clone();
            m.cfg.section = nm.section.clone();
            if let Some(c) = self.cfg.machines.iter_mut().find(|c| &c.name == name) {
                c.bundle = nm.bundle.clone();
                c.section = nm.section.clone();
            }
            applied += 1;
        }
        // The graphs no machine is scored with any more go, in the inference thread and here.
        let live: BTreeSet<usize> = self.machines.iter().map(|m| m.model.embedder).collect();
        swap.dropped = before.difference(&live).copied().collect();
        if !swap.is_empty() {
            if let Some(tx) = &self.swaps {
                let _ = tx.send(swap);
            }
        }
        applied
    }

    /// Ends machine `i`'s mute once its deadline has passed: unmutes the detector, publishes the state and saves
    /// it. Called for every score and from the main loop's periodic work (an input that is away sends none).
    pub(crate) fn end_mute_if_due(&mut self, i: usize) {
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
    pub(crate) fn write_clip(&mut self, c: crate::window::ClipAudio, wait: bool) {
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
    pub(crate) fn on_clip_failed(&mut self, path: &Path) {
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

    /// Sets machine `i`'s audio health; logs and publishes the health if that changes what is published. The same
    /// health other than `OK` is published again: its reason may have changed (a stall, then a failed open: both
    /// `NO_AUDIO`), which `state` says (`health_reason`); the publisher drops a value it already published.
    pub(crate) fn set_health(&mut self, i: usize, health: String) {
        let m = &mut self.machines[i];
        if m.removed {
            return;
        }
        if m.health != health {
            m.health = health;
            if m.unscored < NO_SCORES_AFTER && !m.starved {
                self.health_changed(i, None);
            }
        } else if m.health() != "OK" {
            self.publish_machine_state(i);
        }
    }

    /// Machine `i`'s audio health as far as is known now: `NO_AUDIO` while its input is down or its stream cannot
    /// feed it, else its channel's as its reader last said (`SILENT`, `CLIPPING`, `OK`).
    pub(crate) fn audio_health(&self, i: usize) -> &'static str {
        let m = &self.machines[i];
        let c = &m.channel;
        let open = self.inputs.get(m.input) == Some(&InputState::Open);
        if !open || c.unfed.is_some() || c.streams_fed < c.streams_opened {
            "NO_AUDIO"
        } else if c.silent {
            "SILENT"
        } else if c.clipping {
            "CLIPPING"
        } else {
            "OK"
        }
    }

    /// Why machine `i`'s published health is not `OK`, in words for whoever reads its `state` far from the log (the
    /// reason its input failed, the channel its stream lacks): `None` when it is `OK`.
    pub(crate) fn health_reason(&self, i: usize) -> Option<String> {
        let m = &self.machines[i];
        let input = &self.cfg.devices[m.input].name;
        let h = &self.cfg.health;
        let reason = match m.health() {
            "NO_SCORES" if m.unscored >= NO_SCORES_AFTER => format!(
                "its last {NO_SCORES_AFTER} or more windows could not be scored: the model fails on this audio (the \
                 log says how; sonitor_inference_errors_total)"
            ),
            "NO_SCORES" => format!(
                "no whole window for {} s though input {input} is open: gaps in its audio cut every window short \
                 (sonitor_input_gaps_total), or windows dropped on a full queue (sonitor_dropped_windows_total)",
                m.starved_after().as_secs()
            ),
            "NO_AUDIO" => match self.inputs.get(m.input) {
                Some(InputState::Down(Some(why))) => format!("input {input}: {why}"),
                Some(InputState::Down(None)) | None => {
                    format!("input {input} is not open (it stalled, or is being opened again)")
                }
                Some(InputState::Open) => match &m.channel.unfed {
                    Some(why) => format!("input {input}'s stream {why}"),
                    None => format!("input {input}'s stream is starting"),
                },
            },
            "SILENT" => format!(
                "channel {} of input {input} below {} dBFS for {} or more: a dead or unplugged microphone, or a \
                 machine that stopped",
                m.cfg.channel,
                h.silence_dbfs,
                humantime::format_duration(h.silence_after)
            ),
            "CLIPPING" => format!(
                "channel {} of input {input}: over {}% of a second's samples at full scale: lower the gain",
                m.cfg.channel,
                h.clipping_fraction * 100.0
            ),
            _ => return None,
        };
        Some(reason)
    }

    /// The reader's news of machine `i`'s channel: its level (`silent`, `clipping`) changed.
    pub(crate) fn on_channel_health(&mut self, i: usize, silent: bool, clipping: bool) {
        let Some(m) = self.machines.get_mut(i) else {
            return;
        };
        m.channel.silent = silent;
        m.channel.clipping = clipping;
        self.set_health(i, self.audio_health(i).into());
    }

    /// The reader's news of machine `i` at a new stream of its input: `unfed` says why the stream cannot feed it
    /// (`None`: it can). Logged when that changes, naming the machine and what to change.
    pub(crate) fn on_channel_fed(&mut self, i: usize, unfed: Option<String>) {
        let Some(m) = self.machines.get_mut(i) else {
            return;
        };
        let input = &self.cfg.devices[m.input].name;
        match &unfed {
            _ if m.channel.unfed == unfed || m.removed => {}
            Some(why) => log::error!(
                "{}: input {input}'s stream {why}, then restart sonitor (`sonitor devices` lists what the device \
                 offers); until then the machine gets no audio from it (health NO_AUDIO)",
                m.cfg.name
            ),
            None => log::info!("{}: input {input}'s stream feeds it again", m.cfg.name),
        }
        m.channel.unfed = unfed;
        m.channel.streams_fed += 1;
        self.set_health(i, self.audio_health(i).into());
    }

    /// Input `input` is down (`reason`, when there is one to compare the next failure with): its machines get no
    /// audio.
    pub(crate) fn input_down(&mut self, input: usize, reason: Option<String>) {
        self.inputs[input] = InputState::Down(reason);
        for i in 0..self.machines.len() {
            if self.machines[i].input == input {
                // No audio is what its health says now, not that its windows stopped.
                self.machines[i].starved = false;
                // Its windows before the outage do not add up with those after it.
                self.machines[i].detector.forget_recent();
                self.set_health(i, "NO_AUDIO".into());
            }
        }
    }

    /// Logs machine `i`'s new health, after `why` it changed where a line says so, and publishes its state. The
    /// lines are bounded ([`CHANGES_LOGGED`]); what is published is not.
    fn health_changed(&mut self, i: usize, why: Option<(log::Level, String)>) {
        if self.change_logged(i) {
            let m = &self.machines[i];
            if let Some((level, line)) = why {
                log::log!(level, "{line}");
            }
            let health = m.health();
            let level = if health == "OK" {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(level, "health of {}: {health}", m.cfg.name);
        }
        self.publish_machine_state(i);
    }

    /// Whether a line of machine `i`'s change of state (health, signal, running) may be written now, within its
    /// [`MachineRt::change_log`]; counts the change as not logged when it may not.
    fn change_logged(&mut self, i: usize) -> bool {
        self.sum_up_change_log(i);
        self.machines[i].change_log.allow()
    }

    /// Once machine `i`'s [`CHANGE_LOG_WINDOW`] is over: one line for the changes of its state not logged in it.
    /// Called at each change and every second, so that the line comes when the window ends.
    fn sum_up_change_log(&mut self, i: usize) {
        let m = &mut self.machines[i];
        if let Some(n) = m.change_log.roll() {
            log::warn!(
                "{}: its state (health, signal, running) changed {n} more time(s) in the last {} min than the \
                 {CHANGES_LOGGED} logged; now: health {}{}{} (the health and state topics and sonitor status say \
                 each change; a state that keeps changing: an input level at the edge of a limit or of \
                 idle_below_dbfs, or a CPU that does not keep up)",
                m.cfg.name,
                m.change_log.window().as_secs() / 60,
                m.health(),
                if m.no_signal { ", no signal" } else { "" },
                if m.idle { ", not running" } else { "" }
            );
        }
    }

    /// Machines whose input is open and that got no window for [`MachineRt::starved_after`]: their health says
    /// `NO_SCORES` (they are not watched), once. Their health said `OK`, frames flowing, while every window was
    /// cut short by a gap and their alarm stayed as it was. Called every second; `late`: the loop that calls it
    /// was held up (the process stopped, a reload building a graph), and so were the readers: every machine's wait
    /// starts again now.
    pub(crate) fn check_windows_come(&mut self, late: bool) {
        for i in 0..self.machines.len() {
            self.sum_up_change_log(i);
        }
        if late {
            for m in &mut self.machines {
                m.last_window = Instant::now();
            }
            return;
        }
        for i in 0..self.machines.len() {
            let m = &self.machines[i];
            // Its input down, or its stream without its channel: NO_AUDIO says it, not gaps in its audio.
            let no_audio = self.audio_health(i) == "NO_AUDIO";
            if m.removed || m.starved || no_audio || m.last_window.elapsed() < m.starved_after() {
                continue;
            }
            let input = &self.cfg.devices[m.input].name;
            let dropped = self
                .metrics
                .machines
                .get(i)
                .map_or(0, |mm| mm.dropped_windows.get())
                .saturating_sub(m.dropped_at_last_window);
            let line = if dropped > 0 {
                format!(
                    "{}: no window scored for {} s though input {input} is open: its {dropped} window(s) since \
                     were dropped on a full queue (sonitor_dropped_windows_total), as the features and inference \
                     threads do not keep up with the {} machine(s) (see the dropped-window lines above); the \
                     machine is not watched until its windows come again (fewer machines on this CPU or a smaller \
                     model)",
                    m.cfg.name,
                    m.starved_after().as_secs(),
                    self.machines.len()
                )
            } else {
                format!(
                    "{}: no window for {} s though input {input} is open: its audio is cut by gaps (device \
                     overruns, a full ring: sonitor_input_gaps_total, sonitor_dropped_samples_total; a looped file \
                     shorter than a window) more often than a window takes, or its pipeline is stuck; the machine \
                     is not watched until its windows come again (a larger ring_seconds or buffer_frames, or less \
                     load on the CPU)",
                    m.cfg.name,
                    m.starved_after().as_secs()
                )
            };
            self.machines[i].starved = true;
            self.health_changed(i, Some((log::Level::Warn, line)));
        }
    }

    /// Counts machine `i`'s window that could not be scored: at the [`NO_SCORES_AFTER`]th in a row its health
    /// becomes `NO_SCORES` (the reason is in the feature or inference thread's log and counters).
    fn on_unscored(&mut self, i: usize, t_end_ms: u64) {
        let m = &mut self.machines[i];
        m.unscored = m.unscored.saturating_add(1);
        m.last_t_ms = t_end_ms;
        if m.unscored == NO_SCORES_AFTER {
            let line = format!(
                "{}: the last {NO_SCORES_AFTER} windows could not be scored (see the errors above, \
                 sonitor_inference_errors_total, sonitor_invalid_scores_total and sonitor_feature_errors_total): \
                 the machine is not watched until its windows score again",
                m.cfg.name
            );
            self.health_changed(i, Some((log::Level::Warn, line)));
        }
        self.window_handled(i, t_end_ms);
    }
}

/// The clips of the machines' alarm events still on (the clip retention keeps them).
pub(crate) fn open_event_clips(machines: &[MachineRt]) -> std::collections::BTreeSet<PathBuf> {
    machines
        .iter()
        .filter_map(|m| m.saved.event.as_ref()?.clip.as_ref().map(PathBuf::from))
        .collect()
}

pub(crate) fn on_source_event(ctl: &mut Controller, e: SourceEvent) {
    match e {
        SourceEvent::Opened {
            input,
            description,
            new_stream,
        } => {
            log::info!("input {} open: {description}", ctl.cfg.devices[input].name);
            ctl.inputs[input] = InputState::Open;
            for i in 0..ctl.machines.len() {
                if ctl.machines[i].input != input {
                    continue;
                }
                ctl.machines[i].last_window = Instant::now();
                // NO_AUDIO until the reader has the stream and says whether it feeds the machine
                // ([`Controller::on_channel_fed`]; a stream without its channel said OK for a moment), then its
                // channel's health as the reader last said it (it says only changes), not `OK` (review33).
                ctl.machines[i].channel.streams_opened += u64::from(new_stream);
                ctl.set_health(i, ctl.audio_health(i).into());
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
            ctl.input_down(input, Some(reason));
        }
        SourceEvent::Stalled { input } => {
            log::warn!(
                "input {}: no frames for {:?}; reopening",
                ctl.cfg.devices[input].name,
                ctl.cfg.devices[input].stall_timeout
            );
            ctl.input_down(input, None);
        }
        SourceEvent::Ended { input } => {
            let d = &ctl.cfg.devices[input];
            if d.at_end == crate::config::AtEnd::Stop {
                // The daemon runs on, and this input gets no more audio: its machines are no longer watched, as
                // when a microphone is away (with at_end = "exit" the daemon ends once the windows are scored).
                log::info!(
                    "input {}: end of file; its machines get no more audio (at_end = \"stop\")",
                    d.name
                );
                ctl.input_down(input, Some("end of file".into()));
            } else {
                log::info!("input {}: end of file", d.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    /// Machine 0's `state` as it would be published now.
    fn state_of(ctl: &Controller) -> String {
        ctl.state_json(0, ctl.health_reason(0).as_deref())
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

    /// A mute saved on a clock far ahead of the start's (a Pi rebooted into 1970): the bound on mute ends counts
    /// from the save, so the mute keeps what was left then. Counted from the start's clock, it cut every mute saved
    /// more than a year later to nothing, without a word.
    #[test]
    fn a_mute_saved_on_a_clock_years_ahead_keeps_what_was_left() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alarms.json");
        let now = unix_now();
        let saved_at = now + 56 * 365 * 86_400;
        std::fs::write(
            &p,
            format!(
                r#"{{"pump": {{"event": null, "seq": 3, "enabled": true, "threshold_override": null,
                "muted_until_unix": {}, "muted_saved_unix": {saved_at}}}}}"#,
                saved_at + 7_200
            ),
        )
        .unwrap();
        let m = &load_saved(&p)["pump"];
        assert_eq!(m.muted_until_unix, Some(saved_at + 7_200));
        assert_eq!(
            mute_left_at_start(m.muted_until_unix.unwrap(), m.muted_saved_unix, now),
            Duration::from_secs(7_200)
        );
        // A hand-edited end far past the longest mute is still bounded, from the save.
        std::fs::write(
            &p,
            format!(
                r#"{{"pump": {{"event": null, "seq": 3, "enabled": true, "threshold_override": null,
                "muted_until_unix": {}, "muted_saved_unix": {saved_at}}}}}"#,
                u64::MAX / 2
            ),
        )
        .unwrap();
        let m = &load_saved(&p)["pump"];
        assert_eq!(
            mute_left_at_start(m.muted_until_unix.unwrap(), m.muted_saved_unix, now),
            crate::publish::mqtt::MAX_MUTE
        );
    }

    /// A saved state the start cannot read whole is moved aside before the start saves over it (it was
    /// replaced, and the mutes, thresholds and open alarms it held were gone for good); `validate` warns of it.
    #[test]
    fn an_unreadable_saved_state_is_kept_aside_at_a_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alarms.json");
        let bad = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "bad"))
                .collect()
        };
        // None, and one read whole: nothing to say, nothing moved.
        assert!(saved_state_warning(&p).is_none());
        assert!(load_saved_at_start(&p).is_empty());
        let good = r#"{"pump": {"event": null, "seq": 3, "enabled": false, "threshold_override": 0.4,
            "muted_until_unix": null}}"#;
        std::fs::write(&p, good).unwrap();
        assert!(saved_state_warning(&p).is_none());
        assert_eq!(load_saved_at_start(&p)["pump"].seq, 3);
        assert!(p.exists() && bad(d.path()).is_empty());
        // Cut short: warned by validate, then moved aside whole by the start.
        let cut = &good[..40];
        std::fs::write(&p, cut).unwrap();
        let w = saved_state_warning(&p).unwrap();
        assert!(
            w.contains("unreadable") && w.contains("moves it aside"),
            "{w}"
        );
        assert!(p.exists(), "validate moves nothing");
        assert!(load_saved_at_start(&p).is_empty());
        assert!(!p.exists());
        let aside = bad(d.path());
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), cut);
        std::fs::remove_file(&aside[0]).unwrap();
        // One machine's entry unreadable: the others are read, and the file is kept aside too.
        let mixed = r#"{"pump": {"event": null, "seq": 3, "enabled": true, "threshold_override": null,
            "muted_until_unix": null}, "fan": {"seq": "many"}}"#;
        std::fs::write(&p, mixed).unwrap();
        let w = saved_state_warning(&p).unwrap();
        assert!(
            w.contains("the entry of machine 'fan' is unreadable"),
            "{w}"
        );
        let saved = load_saved_at_start(&p);
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["pump"]);
        let aside = bad(d.path());
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), mixed);
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

    /// A retained value the publisher's queue has no room for waits in the controller, the newest of its topic,
    /// and goes once there is room, before what comes after it; it was dropped, and the publisher republished the
    /// older value it knew at each connection (review30). Only what the publisher has ended for is dropped.
    #[test]
    fn retained_values_wait_for_room_in_the_publishers_queue() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        let (tx, rx) = bounded::<ToMqtt>(2);
        ctl.mqtt = Some(tx);
        let value = |t: &str, p: &str| ToMqtt::Retained {
            topic: t.into(),
            payload: p.into(),
            publish_now: true,
        };
        ctl.retained("a".into(), "1".into(), true);
        ctl.retained("b".into(), "1".into(), true);
        // The queue is full: these wait, the later value of `a` in place of the earlier, the empty one (a topic
        // cleared) kept as a value.
        ctl.retained("a".into(), "2".into(), true);
        ctl.retained("c".into(), "".into(), true);
        ctl.retained("a".into(), "3".into(), true);
        assert_eq!(ctl.held_retained.lock().unwrap().len(), 2);
        assert_eq!(ctl.metrics.mqtt_dropped.get(), 0, "nothing is lost");
        // A score meanwhile is lost, as before: counted.
        ctl.send(ToMqtt::Transient {
            topic: "s".into(),
            payload: "0.1".into(),
            qos1: false,
        });
        assert_eq!(ctl.metrics.mqtt_dropped.get(), 1);
        // Room for one: a wake-up for new alarm messages takes it, not what is held (review32: the held values
        // filled the queue first, and the alarm messages waited in the outbox for the next wake-up).
        assert_eq!(rx.try_recv().unwrap(), value("a", "1"));
        ctl.send(ToMqtt::OutboxChanged);
        assert_eq!(ctl.metrics.mqtt_dropped.get(), 1);
        assert_eq!(ctl.held_retained.lock().unwrap().len(), 2);
        assert_eq!(rx.try_recv().unwrap(), value("b", "1"));
        assert_eq!(rx.try_recv().unwrap(), ToMqtt::OutboxChanged);
        // Room again: what is held goes first, and takes it; the next value (of another topic) waits behind.
        ctl.retained("d".into(), "1".into(), true);
        assert_eq!(rx.try_recv().unwrap(), value("a", "3"));
        assert_eq!(rx.try_recv().unwrap(), value("c", ""));
        assert!(rx.try_recv().is_err());
        // The main loop's second: the rest.
        assert!(ctl.send_held_retained());
        assert_eq!(rx.try_recv().unwrap(), value("d", "1"));
        assert!(ctl.held_retained.lock().unwrap().is_empty());
        // A publisher that has ended takes nothing: dropped, counted.
        ctl.retained("e".into(), "1".into(), true);
        drop(rx);
        ctl.retained("f".into(), "1".into(), true);
        assert!(ctl.held_retained.lock().unwrap().is_empty());
        assert_eq!(ctl.metrics.mqtt_dropped.get(), 2);
        // What is held at the stop is let go, with a line.
        ctl.held().insert("g".into(), ("1".into(), true));
        ctl.forget_held_retained();
        assert!(ctl.held_retained.lock().unwrap().is_empty());
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
        let rt = machine(cfg.machines[0].clone(), crate::embed::test_model(0.5));
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
            swaps: None,
            unpublished_removals: BTreeMap::new(),
            unknown_commands: Default::default(),
            mqtt_unsent: Default::default(),
            held_retained: Default::default(),
            cfg,
        };
        (ctl, clip_rx)
    }

    /// Machine `m`, enabled, scored with `model`, on the first input.
    fn machine(m: MachineConfig, model: MachineModel) -> MachineRt {
        MachineRt {
            detector: Detector::new(m.detector.params(model.section.threshold.value)),
            cfg: m,
            input: 0,
            model,
            saved: SavedMachine {
                enabled: true,
                ..Default::default()
            },
            last_score: None,
            peak_score: None,
            last_t_ms: 0,
            last_score_pub: None,
            idle: false,
            no_signal: false,
            health: "OK".into(),
            unscored: 0,
            last_window: Instant::now(),
            dropped_at_last_window: 0,
            starved: false,
            channel: Default::default(),
            mute_deadline: None,
            removed: false,
            change_log: change_log(),
        }
    }

    /// Two machines that take each other's bundle in one reload: each gets the graph the other leaves, which the
    /// inference thread holds (the check builds only graphs not running), and none is dropped.
    #[test]
    fn machines_that_exchange_bundles_exchange_the_graphs_held() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        let (tx, rx) = crossbeam_channel::unbounded();
        ctl.swaps = Some(tx);
        let graph = |sha: &str, embedder| MachineModel {
            onnx_sha256: sha.repeat(64),
            model_id: sha.into(),
            embedder,
            ..crate::embed::test_model(0.5)
        };
        let mut second = ctl.cfg.machines[0].clone();
        second.name = "pump-2".into();
        second.bundle = d.path().join("other");
        ctl.cfg.machines.push(second.clone());
        ctl.machines[0].model = graph("a", 0);
        ctl.machines.push(machine(second, graph("b", 1)));
        let mut new = ctl.cfg.clone();
        let (b0, b1) = (
            new.machines[0].bundle.clone(),
            new.machines[1].bundle.clone(),
        );
        new.machines[0].bundle = b1;
        new.machines[1].bundle = b0;
        let changes = vec![
            (
                0,
                &new.machines[0],
                ModelChange::Apply("b".into()),
                graph("b", usize::MAX),
            ),
            (
                1,
                &new.machines[1],
                ModelChange::Apply("a".into()),
                graph("a", usize::MAX),
            ),
        ];
        assert_eq!(
            ctl.apply_models(changes, BTreeMap::new(), &mut Vec::new()),
            2
        );
        let held: Vec<(String, usize)> = ctl
            .machines
            .iter()
            .map(|m| (m.model.model_id.clone(), m.model.embedder))
            .collect();
        assert_eq!(held, [("b".to_string(), 1), ("a".to_string(), 0)]);
        assert_eq!(ctl.cfg.machines[0].bundle, d.path().join("other"));
        let swap = rx.try_recv().unwrap();
        assert!(swap.embedders.is_empty() && swap.dropped.is_empty());
        let scorers: Vec<(usize, usize)> =
            swap.scorers.iter().map(|(i, s)| (*i, s.model)).collect();
        assert_eq!(scorers, [(0, 1), (1, 0)]);
        // No slot of the inference thread's graphs taken or freed.
        let slots: BTreeSet<usize> = ctl.machines.iter().map(|m| m.model.embedder).collect();
        assert_eq!(slots, BTreeSet::from([0, 1]));
    }

    /// The metrics say what the retained state says, at each change, and a reload that refuses the file is
    /// counted and shown until one applies it.
    #[test]
    fn metrics_follow_the_machine_state_and_the_reloads() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        let m = ctl.metrics.clone();
        // Each line is in the metrics as they render now.
        let shows = |lines: &[&str]| {
            let text = m.render();
            for l in lines {
                assert!(text.contains(&format!("{l}\n")), "no {l} in\n{text}");
            }
        };
        ctl.publish_machine_state(0);
        let id = &ctl.machines[0].model.model_id;
        shows(&[
            "sonitor_threshold{machine=\"pump-1\"} 0.5",
            "sonitor_muted{machine=\"pump-1\"} 0",
            "sonitor_enabled{machine=\"pump-1\"} 1",
            &format!("sonitor_model_info{{machine=\"pump-1\",model_id=\"{id}\"}} 1"),
            "sonitor_config_last_reload_successful 1",
            "sonitor_machine_health{machine=\"pump-1\",health=\"OK\"} 1",
            "sonitor_machine_health{machine=\"pump-1\",health=\"NO_AUDIO\"} 0",
        ]);
        ctl.machines[0].health = "NO_AUDIO".into();
        ctl.publish_machine_state(0);
        shows(&[
            "sonitor_machine_health{machine=\"pump-1\",health=\"OK\"} 0",
            "sonitor_machine_health{machine=\"pump-1\",health=\"NO_AUDIO\"} 1",
        ]);
        ctl.on_command(Command::Threshold {
            machine: "pump-1".into(),
            value: Some(0.25),
        });
        ctl.on_command(Command::Mute {
            machine: "pump-1".into(),
            duration: Duration::from_secs(60),
        });
        ctl.on_command(Command::Enabled {
            machine: "pump-1".into(),
            enabled: false,
        });
        let off = ctl.machines[0].detector.params().threshold_off;
        shows(&[
            "sonitor_threshold{machine=\"pump-1\"} 0.25",
            &format!("sonitor_threshold_off{{machine=\"pump-1\"}} {off}"),
            "sonitor_muted{machine=\"pump-1\"} 1",
            "sonitor_enabled{machine=\"pump-1\"} 0",
        ]);
        // The file names a bundle that is not there: refused, and the running configuration stays.
        ctl.reload();
        shows(&[
            "sonitor_config_reloads_total 1",
            "sonitor_config_reload_errors_total 1",
            "sonitor_config_last_reload_successful 0",
        ]);
        m.reloaded(Some(false));
        shows(&["sonitor_config_last_reload_successful 1"]);
    }

    /// A jump of the wall clock saves the state again: a mute's saved end and save time are on the new clock, so
    /// that a start after an unclean stop reads them right (they stayed on the old one, and a mute of 1 h set in
    /// 1970 ended at once after NTP's step and a watchdog kill).
    #[test]
    fn a_clock_jump_saves_the_mutes_again() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        ctl.on_command(Command::Mute {
            machine: "pump-1".into(),
            duration: Duration::from_secs(3_600),
        });
        std::fs::remove_file(&ctl.saved_path).unwrap();
        ctl.on_clock_jump();
        let m = &load_saved(&ctl.saved_path)["pump-1"];
        let (until, at) = (m.muted_until_unix.unwrap(), m.muted_saved_unix.unwrap());
        assert!((3_598..=3_601).contains(&(until - at)), "{until} {at}");
        assert!(at.abs_diff(unix_now()) <= 2);
    }

    /// A state directory deleted while the daemon runs is made again by the next save, and a save makes the
    /// reserve for the saved state ([`RESERVE_FILE`]) where there is none.
    #[test]
    fn a_save_makes_the_state_directory_and_the_reserve_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("alarms.json");
        save_state(&path, b"{}").unwrap();
        let reserve = dir.join(RESERVE_FILE);
        assert_eq!(
            std::fs::metadata(&reserve).unwrap().len(),
            RESERVE_BYTES as u64
        );
        std::fs::remove_dir_all(&dir).unwrap();
        save_state(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 1}");
        assert!(reserve.is_file());
    }

    /// A stop whose last save fails names, by machine, what the next start will not know, against the state file
    /// as the last save left it: here a mute, a threshold and `enabled` set over MQTT, then an alarm that ended
    /// (the next start would find it on again). Nothing when the file holds what runs.
    #[test]
    fn what_an_unsaved_stop_loses_is_named() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        assert!(ctl.unsaved_summary().is_empty());
        ctl.on_transition(0, raised(1000));
        assert!(
            ctl.unsaved_summary().is_empty(),
            "{:?}",
            ctl.unsaved_summary()
        );
        let saved = std::fs::read(&ctl.saved_path).unwrap();
        ctl.on_command(Command::Mute {
            machine: "pump-1".into(),
            duration: Duration::from_secs(3_600),
        });
        ctl.on_command(Command::Threshold {
            machine: "pump-1".into(),
            value: Some(0.2),
        });
        ctl.on_command(Command::Enabled {
            machine: "pump-1".into(),
            enabled: false,
        });
        ctl.on_transition(0, cleared(2000));
        // The saves since went through; as if they had not: the file the raise left.
        std::fs::write(&ctl.saved_path, &saved).unwrap();
        let lost = ctl.unsaved_summary();
        assert_eq!(lost.len(), 1, "{lost:?}");
        for n in [
            "machine 'pump-1': ",
            "its alarm ended (event ",
            "the next start finds it ON again",
            "its mute until ",
            "its threshold 0.2 set over MQTT",
            "enabled = false set over MQTT",
        ] {
            assert!(lost[0].contains(n), "{n}: {lost:?}");
        }
        // Saved after all: nothing is lost.
        ctl.persist();
        assert!(
            ctl.unsaved_summary().is_empty(),
            "{:?}",
            ctl.unsaved_summary()
        );
    }

    /// A machine removed with its alarm on: its `end` event, `alarm` `OFF` (a consumer keyed on `alarm` saw `ON`
    /// and then the deletion), then its Home Assistant entities' configs deleted before its state topics, so that
    /// Home Assistant removes the entities before their topics empty.
    #[test]
    fn a_removed_machine_ends_its_alarm_then_deletes_its_entities_then_its_topics() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        ctl.cfg.mqtt.enabled = true;
        ctl.cfg.mqtt.discovery.enabled = true;
        let topics = ctl.machine_topics("pump-1");
        let event = ActiveEvent {
            event_id: "n1-pump-1-1".into(),
            started_at: String::new(),
            peak: 0.5,
            clip: None,
            announced: true,
        };
        let msgs = ctl.removal_messages("pump-1", Some(&event), 7, &topics);
        let shown: Vec<(&str, &str)> = msgs
            .iter()
            .map(|m| {
                (
                    m.topic.as_str(),
                    if m.payload.starts_with('{') {
                        "{…}"
                    } else {
                        m.payload.as_str()
                    },
                )
            })
            .collect();
        assert_eq!(shown[0], ("sonitor/n1/pump-1/events", "{…}"), "{shown:?}");
        assert_eq!(shown[1], ("sonitor/n1/pump-1/alarm", "OFF"), "{shown:?}");
        let deleted: Vec<&str> = shown[2..]
            .iter()
            .map(|(t, p)| {
                assert_eq!(*p, "", "{shown:?}");
                *t
            })
            .collect();
        let first_own = deleted
            .iter()
            .position(|t| t.starts_with("sonitor/n1/"))
            .unwrap();
        assert!(first_own > 0, "{deleted:?}");
        assert!(
            deleted[..first_own]
                .iter()
                .all(|t| t.starts_with("homeassistant/")),
            "{deleted:?}"
        );
        assert!(
            deleted[first_own..]
                .iter()
                .all(|t| t.starts_with("sonitor/n1/pump-1/")),
            "{deleted:?}"
        );
        assert_eq!(deleted.len(), topics.len());
        // No alarm on: no end event and no OFF.
        assert_eq!(
            ctl.removal_messages("pump-1", None, 7, &topics).len(),
            topics.len()
        );
    }

    /// What the last run left retained and no longer applies is deleted through the outbox: all the topics of a
    /// machine the file no longer names (recorded by an older version: this configuration's), and those of a
    /// machine still there that it no longer publishes (here its Home Assistant entity, discovery being off now,
    /// and a topic under an earlier prefix), but not those under another node_id, which may be another daemon's now. What it publishes now is left
    /// alone, and recorded for the next start.
    #[test]
    fn retained_topics_of_the_last_run_that_no_longer_apply_are_deleted() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        ctl.cfg.mqtt.enabled = true;
        let now = ctl.machine_topics("pump-1");
        let old = [
            // An earlier build's form of this node's entity (node and machine in one level).
            "homeassistant/switch/sonitor_n1_pump-1_mute/config".to_string(),
            "sonitor/n0/pump-1/alarm".to_string(),
            "ha/switch/sonitor_n0_pump-1_mute/config".to_string(),
            "plant/sonitor/n1/pump-1/state".to_string(),
        ];
        let saved = BTreeMap::from([
            (
                "pump-1".to_string(),
                SavedMachine {
                    retained_topics: Some(now.iter().chain(&old).cloned().collect()),
                    ..Default::default()
                },
            ),
            ("gone".to_string(), SavedMachine::default()),
            // Another node's machine, its alarm on (a state cloned with the device's image): not this node's.
            (
                "other".to_string(),
                SavedMachine {
                    event: Some(ActiveEvent {
                        event_id: "n0-other-1".into(),
                        started_at: String::new(),
                        peak: 0.5,
                        clip: None,
                        announced: true,
                    }),
                    retained_topics: Some(vec!["sonitor/n0/other/alarm".into()]),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(ctl.clean_up_last_run(&saved), ["gone"]);
        let o = ctl.outbox.lock().unwrap();
        let msgs: Vec<(String, String, bool)> = o
            .records()
            .map(|r| (r.msg.topic.clone(), r.msg.payload.clone(), r.msg.retain))
            .collect();
        let gone = RETAINED_TOPICS
            .iter()
            .map(|t| format!("sonitor/n1/gone/{t}"));
        // Those under another node_id (n0) may be another daemon's now: left alone; another prefix is deleted.
        let want: Vec<(String, String, bool)> = gone
            .chain([old[0].clone(), old[3].clone()])
            .map(|t| (t, String::new(), true))
            .collect();
        assert_eq!(msgs, want);
        assert_eq!(ctl.machines[0].saved.retained_topics.as_ref(), Some(&now));
        drop(o);
        // Without MQTT nothing can be deleted: the topics recorded stay for the next start.
        let d = tempfile::tempdir().unwrap();
        let (mut quiet, _clips) = controller(d.path(), 4);
        quiet.machines[0].saved.retained_topics = Some(old.to_vec());
        assert!(quiet.clean_up_last_run(&saved).is_empty());
        assert_eq!(
            quiet.machines[0].saved.retained_topics.as_deref(),
            Some(&old[..])
        );
        // An outbox without room for the clean-up does not drop alarm messages for it.
        quiet.cfg.mqtt.enabled = true;
        let alarm = |k: usize| OutMessage {
            topic: format!("sonitor/n1/pump-1/events/{k}"),
            payload: "{}".into(),
            retain: false,
        };
        let small = d.path().join("small");
        quiet.outbox = Arc::new(Mutex::new(Outbox::open(&small, 10).unwrap()));
        quiet
            .outbox
            .lock()
            .unwrap()
            .push((0..5).map(alarm).collect())
            .unwrap();
        let gone = BTreeMap::from([("gone".to_string(), SavedMachine::default())]);
        assert!(quiet.clean_up_last_run(&gone).is_empty());
        let o = quiet.outbox.lock().unwrap();
        let left: Vec<&str> = o.records().map(|r| r.msg.topic.as_str()).collect();
        assert_eq!(left.len(), 5, "{left:?}");
        assert!(left.iter().all(|t| t.contains("/events/")), "{left:?}");
    }

    #[test]
    fn a_new_graph_takes_the_first_slot_free() {
        assert_eq!(free_slot(&BTreeSet::new()), 0);
        assert_eq!(free_slot(&BTreeSet::from([0, 1])), 2);
        // A slot freed by an earlier reload is taken again: the list of graphs does not grow with reloads.
        assert_eq!(free_slot(&BTreeSet::from([0, 2, 3])), 1);
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
        ctl.on_transition(0, raised(1000));
        assert_eq!(rx.len(), 1, "the first request is queued");
        assert_eq!(ctl.metrics.clips_dropped.get(), 0);
        assert!(event_clips(&ctl)[0].is_string());
        ctl.on_transition(0, cleared(2000));
        // The queue is still full: the next alarm's request is dropped.
        ctl.on_transition(0, raised(3000));
        assert_eq!(ctl.metrics.clips_dropped.get(), 1);
        assert!(ctl.machines[0].saved.event.as_ref().unwrap().clip.is_none());
        ctl.on_transition(0, cleared(4000));
        let clips = event_clips(&ctl);
        assert_eq!(clips.len(), 4);
        assert!(clips[2].is_null() && clips[3].is_null(), "{clips:?}");
        // MQTT is off here: no MQTT thread counts the outbox, the transitions do (`status` said 0 while they
        // waited on disk).
        let waiting = ctl.outbox.lock().unwrap().len() as u64;
        assert_eq!((waiting, ctl.metrics.outbox_depth.get()), (8, 8));
    }

    /// With MQTT off, a machine retired by a reload with its alarm on has that alarm ended at once (`OFF` and an end
    /// event with reason `removed` in the outbox, for a start with MQTT to publish), and stays in the state file
    /// for that start to clear its topics: the first save forgot it, and its `alarm ON` stayed retained on the
    /// broker for good. (Its end waited for that start, or for a reload putting it back, and then carried that
    /// moment as its end.) Put back, it is a watched machine again, whose wait for windows starts then.
    #[test]
    fn a_machine_retired_with_mqtt_off_waits_in_the_state_for_mqtt() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        ctl.on_transition(0, raised(1000));
        let event = ctl.machines[0].saved.event.clone().unwrap().event_id;
        ctl.retire(0);
        {
            let outbox = ctl.outbox.lock().unwrap();
            let last: Vec<&OutMessage> = outbox.records().map(|r| &r.msg).collect();
            let n = last.len();
            assert_eq!(n, 4, "ON, start, OFF, end");
            assert_eq!(
                (last[2].topic.as_str(), last[2].payload.as_str()),
                ("sonitor/n1/pump-1/alarm", "OFF")
            );
            let end: serde_json::Value = serde_json::from_str(&last[3].payload).unwrap();
            assert_eq!(end["event_id"], event.as_str());
            assert_eq!(end["type"], "end");
            assert_eq!(end["reason"], "removed");
        }
        let saved = load_saved(&ctl.saved_path);
        assert!(saved["pump-1"].event.is_none(), "ended");
        // A start with MQTT off keeps what it finds of machines no longer in the file, from before its first save.
        std::fs::create_dir(d.path().join("next")).unwrap();
        let (mut next, _clips) = controller(&d.path().join("next"), 4);
        next.machines[0].cfg.name = "other".into();
        next.keep_removed(&saved);
        next.persist();
        assert!(load_saved(&next.saved_path).contains_key("pump-1"));
        next.clean_up_last_run(&saved);
        next.persist();
        assert!(load_saved(&next.saved_path).contains_key("pump-1"));
        // Back in the file: nothing more to end; watched, its wait for windows from now.
        ctl.machines[0].last_window = Instant::now()
            .checked_sub(ctl.machines[0].starved_after() * 2)
            .unwrap();
        ctl.reinstate(0);
        assert!(ctl.unpublished_removals.is_empty());
        assert_eq!(ctl.outbox.lock().unwrap().len(), 4);
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].health(), "OK");
    }

    /// A machine put back by a reload takes the health its input and channel have now, not the one it had when it
    /// was removed (review34: its microphone pulled meanwhile, and it came back `OK`).
    #[test]
    fn a_machine_put_back_takes_its_inputs_health_now() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 1);
        ctl.retire(0);
        ctl.input_down(0, Some("unplugged".into()));
        assert_eq!(ctl.machines[0].health(), "OK", "not followed while removed");
        ctl.reinstate(0);
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
    }

    /// With MQTT off, an outbox past `outbox_max` drops its oldest messages, and the transitions count them in
    /// `sonitor_outbox_dropped_messages_total` (only the MQTT thread did: `status` said 0 dropped).
    #[test]
    fn drops_of_the_outbox_are_counted_with_mqtt_off() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _clips) = controller(d.path(), 4);
        ctl.outbox = Arc::new(Mutex::new(
            Outbox::open(&d.path().join("small"), 3).unwrap(),
        ));
        ctl.on_transition(0, raised(1000));
        ctl.on_transition(0, cleared(2000));
        assert_eq!(ctl.metrics.outbox_depth.get(), 3);
        assert_eq!(ctl.metrics.outbox_dropped.get(), 1);
    }

    /// An alarm raised at `at_ms` by a score of 0.9.
    fn raised(at_ms: u64) -> Transition {
        Transition::Raised { at_ms, score: 0.9 }
    }

    /// The alarm raised at 1000 ms cleared at `at_ms` (reason normal, peak 0.9).
    fn cleared(at_ms: u64) -> Transition {
        Transition::Cleared {
            at_ms,
            since_ms: 1000,
            peak: 0.9,
            reason: sonitor_core::detect::ClearReason::Normal,
        }
    }

    /// Machine 0's window ending at `t_end_ms`, with its score or without (`None`: not scored), at a running level.
    fn msg(t_end_ms: u64, score: Option<f64>) -> ScoreMsg {
        ScoreMsg {
            machine: 0,
            t_end_ms,
            score,
            level_dbfs: -20.0,
        }
    }

    /// A machine whose input is open and whose windows stop coming (each cut short by a gap) says NO_SCORES after
    /// three windows and hops (at least 10 s), once, until a window comes; not while its input is down (NO_AUDIO).
    #[test]
    fn a_machine_without_windows_on_an_open_input_is_not_ok() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        ctl.on_score(msg(1000, Some(0.1)));
        let after = ctl.machines[0].starved_after();
        assert!(after >= Duration::from_secs(10), "{after:?}");
        let long_ago = |by: Duration| Instant::now().checked_sub(by).unwrap();
        ctl.machines[0].last_window = long_ago(after - Duration::from_secs(1));
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].health(), "OK");
        // A loop held up (the process stopped): not counted, the wait starts again.
        ctl.machines[0].last_window = long_ago(after + Duration::from_secs(1));
        ctl.check_windows_come(true);
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].health(), "OK");
        ctl.machines[0].last_window = long_ago(after + Duration::from_secs(1));
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].health(), "NO_SCORES");
        assert!(state_of(&ctl).contains("\"health\":\"NO_SCORES\""));
        // An audio health change meanwhile does not hide it.
        ctl.set_health(0, "CLIPPING".into());
        assert_eq!(ctl.machines[0].health(), "NO_SCORES");
        ctl.set_health(0, "OK".into());
        ctl.on_score(msg(2000, Some(0.1)));
        assert_eq!(ctl.machines[0].health(), "OK");
        // Its input away: NO_AUDIO says it, and the time without windows is not counted.
        ctl.input_down(0, None);
        ctl.machines[0].last_window = long_ago(after + Duration::from_secs(1));
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
    }

    /// A channel's health survives its input's outage (review33): the reader says it only when it changes, so a
    /// dead channel (`SILENT`) read `OK` for good once its device had stalled and opened again. The reopening gives
    /// back what the reader last said, and the reader's news while the input is down does not hide `NO_AUDIO`.
    #[test]
    fn a_reopened_input_gives_back_its_channels_health_not_ok() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        let opened = |ctl: &mut Controller| {
            on_source_event(
                ctl,
                SourceEvent::Opened {
                    input: 0,
                    description: "test".into(),
                    new_stream: true,
                },
            )
        };
        ctl.on_channel_health(0, true, false);
        assert_eq!(ctl.machines[0].health(), "SILENT");
        on_source_event(&mut ctl, SourceEvent::Stalled { input: 0 });
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        opened(&mut ctl);
        // Until the reader has the new stream: nothing is known of it yet.
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        ctl.on_channel_fed(0, None);
        assert_eq!(ctl.machines[0].health(), "SILENT");
        assert!(state_of(&ctl).contains("\"health\":\"SILENT\""));
        // Clipping, then the input away: news of the channel while it is down leaves it NO_AUDIO.
        ctl.on_channel_health(0, false, true);
        assert_eq!(ctl.machines[0].health(), "CLIPPING");
        ctl.input_down(0, Some("gone".into()));
        ctl.on_channel_health(0, false, false);
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        // The reader's news may come before the source's (the main loop takes ready channels in any order).
        ctl.on_channel_fed(0, None);
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        opened(&mut ctl);
        assert_eq!(ctl.machines[0].health(), "OK");
    }

    /// Why a machine is not OK is in its `state` (`health_reason`, null when OK), and a new reason under the same
    /// health is published too: a stall, then a failed open, are both NO_AUDIO.
    #[test]
    fn the_state_says_why_the_health_is_not_ok() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        let (tx, published) = bounded::<ToMqtt>(256);
        ctl.mqtt = Some(tx);
        let reason = |ctl: &Controller| {
            let state: serde_json::Value = serde_json::from_str(&state_of(ctl)).unwrap();
            state["health_reason"].as_str().map(str::to_string)
        };
        let last_state = || {
            published
                .try_iter()
                .filter_map(|m| match m {
                    ToMqtt::Retained { topic, payload, .. } if topic.ends_with("/state") => {
                        Some(payload)
                    }
                    _ => None,
                })
                .last()
                .unwrap_or_default()
        };
        assert_eq!(reason(&ctl), None);
        ctl.on_channel_health(0, true, false);
        let silent = reason(&ctl).unwrap();
        assert!(
            silent.contains("channel 0 of input mic below -70 dBFS"),
            "{silent}"
        );
        on_source_event(&mut ctl, SourceEvent::Stalled { input: 0 });
        assert!(reason(&ctl).unwrap().contains("input mic is not open"));
        last_state();
        on_source_event(
            &mut ctl,
            SourceEvent::Failed {
                input: 0,
                reason: "hw:CARD=USB: no such device".into(),
            },
        );
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        assert!(
            last_state().contains("\"health_reason\":\"input mic: hw:CARD=USB: no such device\""),
            "the new reason was not published"
        );
        on_source_event(
            &mut ctl,
            SourceEvent::Opened {
                input: 0,
                description: "test".into(),
                new_stream: true,
            },
        );
        assert!(reason(&ctl).unwrap().contains("stream is starting"));
        ctl.on_channel_fed(0, Some("has 2 channel(s), not its channel 3".into()));
        assert_eq!(
            reason(&ctl).unwrap(),
            "input mic's stream has 2 channel(s), not its channel 3"
        );
        assert!(last_state().contains("not its channel 3"));
        ctl.on_channel_fed(0, None);
        assert_eq!(reason(&ctl), Some(silent));
        ctl.on_channel_health(0, false, true);
        assert!(reason(&ctl).unwrap().contains("at full scale"));
        ctl.on_channel_health(0, false, false);
        assert_eq!(reason(&ctl), None);
        assert!(last_state().contains("\"health_reason\":null"));
        for _ in 0..NO_SCORES_AFTER {
            ctl.on_score(msg(1000, None));
        }
        assert!(reason(&ctl).unwrap().contains("could not be scored"));
    }

    /// A stream that lacks the machine's channel (a device that appeared with fewer channels than the machine
    /// needs, review33) is NO_AUDIO from the moment it starts, not OK and then NO_SCORES blamed on gaps; a later
    /// stream that has it gives the machine back.
    #[test]
    fn a_stream_without_the_machines_channel_is_no_audio_not_starved() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        assert_eq!(ctl.machines[0].health(), "OK");
        ctl.on_channel_fed(0, Some("has 2 channel(s), not its channel 3".into()));
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        // No window comes, the input open: it stays NO_AUDIO, not NO_SCORES.
        let after = ctl.machines[0].starved_after() + Duration::from_secs(1);
        ctl.machines[0].last_window = Instant::now().checked_sub(after).unwrap();
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        // A reopening of the same stream shape keeps it so.
        on_source_event(
            &mut ctl,
            SourceEvent::Opened {
                input: 0,
                description: "test".into(),
                new_stream: true,
            },
        );
        ctl.on_channel_fed(0, Some("has 2 channel(s), not its channel 3".into()));
        assert_eq!(ctl.machines[0].health(), "NO_AUDIO");
        ctl.on_channel_fed(0, None);
        assert_eq!(ctl.machines[0].health(), "OK");
    }

    /// A health that flaps (a CPU that does not keep up: no window, then windows again) is followed each time, but
    /// logged only [`CHANGES_LOGGED`] times a window; the others are summed up when the window ends. A level at
    /// `idle_below_dbfs` (running, not running, each window) counts against the same budget.
    #[test]
    fn a_flapping_health_is_followed_each_time_and_logged_within_its_budget() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        let after = ctl.machines[0].starved_after() + Duration::from_secs(1);
        for k in 0..10u64 {
            ctl.machines[0].last_window = Instant::now().checked_sub(after).unwrap();
            ctl.check_windows_come(false);
            assert_eq!(ctl.machines[0].health(), "NO_SCORES");
            ctl.on_score(msg(1000 * (k + 1), Some(0.1)));
            assert_eq!(ctl.machines[0].health(), "OK");
        }
        let log = &mut ctl.machines[0].change_log;
        assert_eq!(log.unlogged(), 20 - u64::from(CHANGES_LOGGED));
        // The window over: the next second's check sums them up, and changes are logged again.
        log.end_window();
        ctl.check_windows_come(false);
        assert_eq!(ctl.machines[0].change_log.unlogged(), 0);
        // A level at the machine's idle_below_dbfs: each change of whether it runs is followed, and counted.
        ctl.machines[0].cfg.detector.idle_below_dbfs = Some(-30.0);
        for k in 0..10u64 {
            let level_dbfs = if k % 2 == 0 { -35.0 } else { -25.0 };
            ctl.on_score(ScoreMsg {
                level_dbfs,
                ..msg(20_000 + 1000 * k, Some(0.1))
            });
            assert_eq!(ctl.machines[0].idle, k % 2 == 0);
        }
        assert_eq!(
            ctl.machines[0].change_log.unlogged(),
            10 - u64::from(CHANGES_LOGGED)
        );
    }

    /// A save of the alarm states that fails is kept as `sonitor_state_unsaved` (for `status`) until one goes
    /// through: the daemon tries again every 10 s.
    #[test]
    fn a_failed_save_is_kept_as_a_gauge_until_one_goes_through() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        let good = ctl.saved_path.clone();
        std::fs::write(d.path().join("file"), "x").unwrap();
        ctl.saved_path = d.path().join("file").join("alarms.json");
        assert!(!ctl.persist());
        assert_eq!(ctl.metrics.state_unsaved.get(), 1);
        assert!(!ctl.persist());
        ctl.saved_path = good;
        assert!(ctl.persist());
        assert_eq!(ctl.metrics.state_unsaved.get(), 0);
    }

    /// A level that hovers at `idle_below_dbfs` does not flip the machine each window: once not running, it runs
    /// again only from `idle_hysteresis_db` above the limit, and once running it stops only below the limit. With
    /// no hysteresis, each crossing counts.
    #[test]
    fn a_level_at_idle_below_dbfs_flips_the_machine_once_not_each_window() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        ctl.machines[0].cfg.detector.idle_below_dbfs = Some(-30.0);
        let mut t = 0;
        let mut feed = |ctl: &mut Controller, level_dbfs: f32| {
            t += 1000;
            ctl.on_score(ScoreMsg {
                level_dbfs,
                ..msg(t, Some(0.1))
            });
            ctl.machines[0].idle
        };
        let hovering = [-30.5, -29.5, -28.0, -30.2, -27.5, -29.0];
        let idle: Vec<bool> = hovering.iter().map(|&l| feed(&mut ctl, l)).collect();
        assert_eq!(idle, [true; 6], "stands until 3 dB above the limit");
        assert_eq!(
            ctl.metrics.machines[0].idle.get(),
            1,
            "sonitor_idle, for status"
        );
        let idle_windows = ctl.metrics.machines[0].idle_windows.get();
        assert_eq!(idle_windows, 6);
        // At -27 (the limit and 3 dB) it runs; then down to the limit it still runs, and judged.
        let idle: Vec<bool> = [-27.0, -29.0, -29.9, -30.0, -30.1]
            .iter()
            .map(|&l| feed(&mut ctl, l))
            .collect();
        assert_eq!(idle, [false, false, false, false, true]);
        assert_eq!(ctl.metrics.machines[0].idle.get(), 1);
        assert_eq!(ctl.metrics.machines[0].idle_windows.get(), idle_windows + 1);
        assert_eq!(
            ctl.machines[0].change_log.unlogged(),
            0,
            "two changes, both logged"
        );
        // No hysteresis: every crossing of the limit counts, as before the setting.
        ctl.machines[0].cfg.detector.idle_hysteresis_db = 0.0;
        let idle: Vec<bool> = [-29.5, -30.5, -29.5]
            .iter()
            .map(|&l| feed(&mut ctl, l))
            .collect();
        assert_eq!(idle, [false, true, false]);
    }

    /// Windows without a score (the model failed on them) are settled but never judged; three in a row make the
    /// machine's health NO_SCORES, over whatever its audio says meanwhile, until a window scores again.
    #[test]
    fn a_run_of_unscored_windows_is_the_machines_health_until_one_scores() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        ctl.on_score(msg(1000, Some(0.1)));
        ctl.on_score(msg(2000, None));
        ctl.on_score(msg(3000, None));
        assert_eq!(ctl.machines[0].health(), "OK");
        ctl.on_score(msg(4000, None));
        assert_eq!(ctl.machines[0].health(), "NO_SCORES");
        assert!(state_of(&ctl).contains("\"health\":\"NO_SCORES\""));
        ctl.set_health(0, "SILENT".into());
        ctl.on_score(msg(5000, None));
        assert_eq!(ctl.machines[0].health(), "NO_SCORES");
        ctl.on_score(msg(6000, Some(0.1)));
        assert_eq!(ctl.machines[0].health(), "SILENT");
        ctl.set_health(0, "OK".into());
        assert_eq!(ctl.machines[0].health(), "OK");
        let m = &ctl.metrics.machines[0];
        assert_eq!(m.settled.get(), 6, "every window settled");
        assert!(
            ctl.metrics
                .render()
                .contains("sonitor_window_score_count{machine=\"pump-1\"} 2"),
            "only the scored windows are judged"
        );
        assert_eq!(ctl.machines[0].last_t_ms, 6000);
    }

    /// Unscored windows neither raise nor clear an alarm: one raised before the model started failing stays on
    /// (with health NO_SCORES beside it) until scored windows clear it.
    #[test]
    fn an_alarm_stays_as_it_was_while_no_window_scores() {
        let d = tempfile::tempdir().unwrap();
        let (mut ctl, _rx) = controller(d.path(), 1);
        let mut t = 0;
        while !ctl.machines[0].detector.is_on() {
            t += 1000;
            assert!(t <= 20_000, "no alarm after 20 windows above the threshold");
            ctl.on_score(msg(t, Some(0.9)));
        }
        assert_eq!(ctl.metrics.machines[0].alarm.get(), 1);
        for _ in 0..10 {
            t += 1000;
            ctl.on_score(msg(t, None));
        }
        assert!(ctl.machines[0].detector.is_on());
        assert_eq!(ctl.metrics.machines[0].alarm.get(), 1);
        assert_eq!(ctl.machines[0].health(), "NO_SCORES");
        let state = state_of(&ctl);
        assert!(
            state.contains("\"state\":\"ON\"") && state.contains("\"health\":\"NO_SCORES\""),
            "{state}"
        );
        while ctl.machines[0].detector.is_on() {
            t += 1000;
            assert!(
                t <= 60_000,
                "the alarm did not clear on scores below the threshold"
            );
            ctl.on_score(msg(t, Some(0.1)));
        }
        assert_eq!(ctl.metrics.machines[0].alarm.get(), 0);
        assert_eq!(ctl.machines[0].health(), "OK");
    }

    impl SavedMachine {
        fn with_seq(mut self, seq: u64) -> Self {
            self.seq = seq;
            self
        }
    }
}
