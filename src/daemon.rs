//! `sonitor run`: wires the threads together (capture → window → features → embed → detect → publish, and the
//! clips) and runs the main loop: the scores to the detectors, the sources' events, MQTT's commands, signals
//! (SIGTERM, SIGINT, SIGHUP), a thread that panics, the systemd watchdog and status, and the orderly stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, unbounded, Sender};
use sonitor_core::bundle::{Bundle, SectionModel};
use sonitor_core::detect::{Detector, Transition};

use crate::capture::{SourceEvent, StreamHandle};
use crate::check::check;
use crate::config::{Config, SourceKind};
use crate::detect::{
    enabled_at_start, load_saved_at_start, mute_left_at_start, on_source_event, open_event_clips,
    unix_now, Controller, InputState, MachineRt, Observation, SavedMachine,
};
use crate::embed::{MachineModel, ModelSwap, ScoreMsg};
use crate::metrics::Metrics;
use crate::publish::mqtt::{Command, ToMqtt};
use crate::publish::outbox::Outbox;
use crate::watchdog::{watchdog_fed, watchdog_interval, win_queue_empty, WatchMarks};
use crate::window::{ClipRequest, MachineTap, ReaderEvent};

/// A minimal logger to stderr: where stderr is the journal, journald adds time and unit ([`crate::journal`] the
/// priority); elsewhere (a terminal, a file, another supervisor) each line begins with its UTC time, or nothing
/// would date a fault (review35).
struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // Not `eprintln!`, which panics when stderr is gone (a log collector that died, a closed pipe):
            // the daemon keeps watching its machines without a log rather than stop. With the priority where
            // stderr is the journal (`journalctl -u sonitor -p warning`).
            let line = if crate::journal::stderr_is_journal() {
                format!("sonitor[{}]: {}", r.level(), r.args())
            } else {
                format!(
                    "{} sonitor[{}]: {}",
                    crate::clock::rfc3339(std::time::SystemTime::now(), true),
                    r.level(),
                    r.args()
                )
            };
            crate::journal::write_stderr(r.level(), &line);
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

pub(crate) fn now_rfc3339() -> String {
    crate::clock::rfc3339(SystemTime::now(), true)
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
/// with [`EXIT_INTERNAL`]. If the process has not ended within [`PANIC_EXIT_AFTER`] (the main loop is the thread
/// that panicked, or it hangs before its stop begins), it exits with that status anyway; a stop that begins and
/// then hangs ends sooner, at its own [`STOP_DEADLINE`].
fn panic_hook(
    panicked: Arc<Mutex<Option<String>>>,
    wake: Sender<()>,
) -> Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> {
    let exit_armed = AtomicBool::new(false);
    Box::new(move |info| {
        // tract panicking on a malformed graph while loading it: returned as an error that names the graph.
        if sonitor_core::embed::panic_is_handled() {
            return;
        }
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let message = sonitor_core::panic_message(info.payload()).unwrap_or("(no message)");
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
            crate::stderr_at!(log::Level::Error, "sonitor: {text}");
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
                    crate::stderr_at!(
                        log::Level::Error,
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

/// How long the orderly stop may take before the process ends without it ([`StopDeadline`]). Below the shipped
/// unit's `TimeoutStopSec=15`, so that the log says which part of the stop hung before systemd's SIGKILL, which
/// says nothing of it. The stop of a daemon whose threads all answer takes well under a second; MQTT's last
/// messages wait at most [`crate::publish::mqtt::STOP_TIMEOUT`].
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// How long an input's device may take to open before the log says it has not returned.
const OPEN_STUCK_AFTER: Duration = Duration::from_secs(20);

/// The orderly stop's deadline: armed when the stop begins, told each thing the stop waits for in turn
/// ([`StopDeadline::waiting_for`]), disarmed when dropped. A thread that never ends (a capture device stuck in the
/// kernel, a clip write on a storage card that stopped answering, a deadlock) would otherwise hold the stop for
/// ever: at [`STOP_DEADLINE`] the process logs what it was waiting for, leaves the outbox as a stop that ends
/// does ([`outbox_at_exit`], if the outbox is free), and exits with [`EXIT_INTERNAL`]. The alarm states are saved
/// first thing in the stop, and every other unacknowledged alarm message is already on disk for the next start.
struct StopDeadline {
    waiting_for: Arc<Mutex<String>>,
    _armed: Sender<()>,
}

impl StopDeadline {
    /// `outbox` is the daemon's; `mqtt`: whether it publishes ([`outbox_at_exit`]).
    fn arm(outbox: Arc<Mutex<Outbox>>, mqtt: bool) -> Self {
        let waiting_for = Arc::new(Mutex::new(String::from("the stop to begin")));
        let (armed, disarmed) = bounded::<()>(0);
        let what = waiting_for.clone();
        let spawned = std::thread::Builder::new()
            .name("stop-deadline".into())
            .spawn(move || {
                // Dropping the deadline disconnects the channel: the stop ended in time.
                if disarmed.recv_timeout(STOP_DEADLINE)
                    != Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    return;
                }
                let what = what.lock().map(|w| w.clone()).unwrap_or_default();
                log::error!(
                    "the stop did not end within {} s: still waiting for {what}; exiting with status \
                     {EXIT_INTERNAL} without it",
                    STOP_DEADLINE.as_secs()
                );
                if let Ok(mut o) = outbox.try_lock() {
                    outbox_at_exit(&mut o, mqtt);
                }
                std::process::exit(EXIT_INTERNAL);
            });
        if let Err(e) = spawned {
            log::warn!("the stop has no deadline (cannot start its thread: {e})");
        }
        StopDeadline {
            waiting_for,
            _armed: armed,
        }
    }

    /// What the stop waits for now, as the deadline's log line will name it.
    fn waiting_for(&self, what: impl Into<String>) {
        if let Ok(mut w) = self.waiting_for.lock() {
            *w = what.into();
        }
    }
}

/// How a stop names a thread it waits for: `thread 'reader-mic'`.
fn thread_named<T>(t: &std::thread::JoinHandle<T>) -> String {
    format!("thread '{}'", t.thread().name().unwrap_or("unnamed"))
}

/// Runs the daemon; returns the process exit status.
pub fn run(config_path: &Path) -> i32 {
    let signals = match Signals::take() {
        Ok(s) => s,
        Err(e) => {
            crate::stderr_at!(
                log::Level::Error,
                "sonitor: cannot install the signal handlers: {e}"
            );
            return 1;
        }
    };
    let checked = check(config_path);
    // Stopped while the configuration was checked (`systemctl stop` during a slow start): nothing has been
    // started, nothing to publish or save.
    if signals.stop_asked() {
        crate::stderr_at!(
            log::Level::Info,
            "sonitor: stopped before it started (SIGTERM or SIGINT during the configuration check)"
        );
        return 0;
    }
    let Some(cfg) = checked.cfg.filter(|_| checked.problems.is_empty()) else {
        // One write, every line an error for the journal (`journalctl -u sonitor -p err` shows why it stopped).
        let mut text = format!("sonitor: {} cannot be used:", config_path.display());
        for p in &checked.problems {
            text.push_str(&format!("\n  - {p}"));
        }
        crate::stderr_at!(log::Level::Error, "{text}");
        return crate::config::EXIT_CONFIG;
    };
    init_logging(&cfg.log_level);
    for w in checked.warnings {
        log::warn!("{w}");
    }
    // Before anything in the state directory is read or written; held until `start` returns.
    let lock =
        match crate::state_lock::acquire(&cfg.state_dir, cfg.metrics.addr(), Some(config_path)) {
            Ok(l) => l,
            Err(e) => {
                log::error!("{e}");
                return match e {
                    crate::state_lock::LockError::Held { .. } => crate::state_lock::EXIT_STATE_BUSY,
                    // Not this user's to write: a restart would fail alike (the check above names it first).
                    crate::state_lock::LockError::Io { error, .. }
                        if error.kind() == std::io::ErrorKind::PermissionDenied =>
                    {
                        crate::config::EXIT_CONFIG
                    }
                    crate::state_lock::LockError::Io { .. } => 1,
                };
            }
        };
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
            lock,
        )
    }));
    match started {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            log::error!("{e:#}");
            1
        }
        Err(_) => thread_died(
            "the main loop",
            "it panicked (logged above), and the threads it ran stop with the process",
        ),
    }
}

/// The state directory's lock, checked every second ([`crate::state_lock::StateLock::check`]): taken again when it
/// was deleted (true then); a failure is logged at once, then every 5 minutes while it lasts (`complaints` counts
/// the checks).
fn check_state_lock(
    lock: &mut crate::state_lock::StateLock,
    dir: &Path,
    complaints: &mut u32,
) -> bool {
    use crate::state_lock::LockCheck;
    let said = match lock.check() {
        LockCheck::Held => {
            *complaints = 0;
            return false;
        }
        LockCheck::Retaken => {
            log::warn!(
                "the lock file of the state directory {} was gone (deleted while sonitor runs, or not to be made \
                 on a read-only filesystem until now): taken again, so that no second daemon starts on it",
                dir.display()
            );
            *complaints = 0;
            return true;
        }
        LockCheck::TakenBy(pid) => format!(
            "the lock file of the state directory {} was deleted while sonitor ran, and another {} has taken \
             it since: two daemons now write one state directory (alarm states, outbox, clips). Stop the other \
             one",
            dir.display(),
            crate::state_lock::holder_named(pid)
        ),
        LockCheck::Lost(e) => format!(
            "the lock file of the state directory {} was deleted while sonitor ran and cannot be made again \
             ({e}): a second daemon would not be refused",
            dir.display()
        ),
    };
    if (*complaints).is_multiple_of(300) {
        log::error!("{said}");
    }
    *complaints = complaints.wrapping_add(1);
    false
}

/// How long `sonitor demo --mqtt` waits for the broker before it replays (see [`start`]).
pub const DEMO_BROKER_WAIT: Duration = Duration::from_secs(3);

/// Runs a checked configuration (see [`check`]) until it ends; every scored window, alarm transition and
/// written clip is also sent to `observer`. Returns the exit status. The caller takes the state directory's lock
/// ([`crate::state_lock::acquire`]) before it reads or writes anything there (the demo clears a previous demo's
/// state first); it is held until this returns.
pub fn start(
    cfg: Config,
    config_path: &Path,
    bundles: BTreeMap<PathBuf, Bundle>,
    mut embedders_built: BTreeMap<PathBuf, crate::embed::Embedder>,
    observer: Option<Sender<Observation>>,
    signals: Signals,
    mut state_lock: crate::state_lock::StateLock,
) -> anyhow::Result<i32> {
    let Signals {
        term,
        hup,
        panicked,
        wake: signal_rx,
    } = signals;
    let base = cfg.topic_base();
    let input_names: Vec<String> = cfg.devices.iter().map(|d| d.name.clone()).collect();
    let machine_names: Vec<String> = cfg.machines.iter().map(|m| m.name.clone()).collect();
    let metrics = Arc::new(Metrics {
        node_id: cfg.node_id.clone(),
        ..Metrics::new(&input_names, &machine_names)
    });
    if cfg.metrics.enabled {
        crate::metrics::serve_or_retry(
            &cfg.metrics.listen,
            metrics.clone(),
            Duration::from_secs(30),
        );
    }

    // Models: one embedder per bundle, one scorer per machine.
    let mut bundle_index: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut embedders = Vec::new();
    for (path, b) in &bundles {
        bundle_index.insert(path.clone(), embedders.len());
        embedders.push(match embedders_built.remove(path) {
            Some(e) => e,
            None => crate::embed::Embedder::load(b)?,
        });
        let combined = b
            .manifest
            .sections
            .iter()
            .filter(|s| s.baseline.is_some())
            .count();
        log::info!(
            "model {} from {} ready{}",
            b.manifest.model_id,
            path.display(),
            if combined > 0 {
                format!(
                    " ({combined} of {} section(s) scored with a level baseline too)",
                    b.manifest.sections.len()
                )
            } else {
                String::new()
            }
        );
    }
    let saved_path = cfg.saved_path();
    let saved = load_saved_at_start(&saved_path);
    let mut scorers = Vec::new();
    // One copy of each section in use, shared by the machines scored with it (with a level baseline a section
    // holds a covariance factor of about 66 KB).
    let mut sections: BTreeMap<(&Path, &str), Arc<SectionModel>> = BTreeMap::new();
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
        let section = sections
            .entry((m.bundle.as_path(), m.section.as_str()))
            .or_insert_with(|| Arc::new(section.clone()))
            .clone();
        let model = MachineModel::of(&b.manifest, section, bundle_index[&m.bundle]);
        scorers.push(model.scorer());
        feature_params.push(b.manifest.features.clone());
        let input = cfg
            .devices
            .iter()
            .position(|d| d.name == m.device)
            .ok_or_else(|| anyhow::anyhow!("device {} vanished", m.device))?;
        let mut s = saved.get(&m.name).cloned().unwrap_or_default();
        s.enabled = enabled_at_start(saved.get(&m.name), m.enabled);
        if s.file_threshold_saved {
            let before = s.file_threshold;
            let how = "while sonitor was stopped";
            crate::detect::file_threshold_replaces(
                &m.name,
                &mut s,
                before,
                m.detector.threshold,
                how,
            );
        }
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
        s.since = Some(since_at_start(&s));
        let mut rt = MachineRt {
            cfg: m.clone(),
            input,
            detector: Detector::new(m.detector.params(model.section.threshold.value)),
            model,
            saved: s,
            last_score: None,
            peak_score: None,
            last_t_ms: 0,
            last_score_pub: None,
            idle: false,
            no_signal: false,
            mute_deadline: None,
            removed: false,
            // Until its input has opened: a restart while the microphone is away must not report OK for the
            // moment before the first attempt to open it fails.
            health: "NO_AUDIO".into(),
            unscored: 0,
            last_window: Instant::now(),
            dropped_at_last_window: 0,
            starved: false,
            channel: Default::default(),
            change_log: crate::detect::change_log(),
        };
        let p = Controller::params_of(&rt);
        // A clip the last run had not written yet when it ended (killed, power lost) never will be: its end event
        // names none.
        let lost_clip = rt.saved.event.as_mut().and_then(|e| {
            e.clip
                .take_if(|c| !Path::new(c.as_str()).exists())
                .map(|c| format!(" (its clip {c} was never written: its end names none)"))
        });
        rt.detector = match &rt.saved.event {
            Some(e) => {
                log::warn!(
                    "{}: alarm {} was on when the daemon stopped; resuming it{}",
                    m.name,
                    e.event_id,
                    lost_clip.unwrap_or_default()
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
    // What the machines are scored with is taken: the manifests (every section's centroids and level baseline,
    // used by a machine or not, and the provenance) are not held for the daemon's life.
    drop(bundles);

    // MQTT.
    let outbox = Arc::new(Mutex::new(Outbox::open(
        &cfg.outbox_dir(),
        cfg.mqtt.outbox_max,
    )?));
    let waiting = outbox.lock().map(|o| o.len()).unwrap_or(0);
    metrics.outbox_depth.set(waiting as u64);
    metrics.mqtt_enabled.set(u64::from(cfg.mqtt.enabled));
    if waiting > 0 && cfg.mqtt.enabled {
        log::info!("outbox: {waiting} alarm message(s) from a previous run wait for the broker");
    } else if waiting > 0 {
        log::info!(
            "outbox: {waiting} alarm message(s) wait in {} for a start with MQTT on, which publishes them (remove \
             them before it not to)",
            cfg.outbox_dir().display()
        );
    }
    let (cmd_tx, cmd_rx) = bounded::<Command>(64);
    let (mqtt_tx, mqtt_rx) = bounded::<ToMqtt>(1024);
    // The watchdog's check interval, and the longest the MQTT publisher and the clip writer sleep: half of it, so
    // that every check finds a turn since the one before, whatever their phase (without a watchdog they sleep
    // until there is work).
    let watchdog = watchdog_interval();
    let beat = watchdog.map(|w| w / 2);
    let mqtt_thread = if cfg.mqtt.enabled {
        Some(crate::publish::mqtt::spawn(
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
    // Every machine of an input cuts its window at the same sample, so a hop can bring one window per machine at
    // once: the queues hold `pipeline.queue` more than that. With the queue alone (8), 16 machines on one input
    // lost the same 7 machines' windows at every hop while the CPU idled, and those machines were never watched.
    let queue = cfg.pipeline.queue + cfg.machines.len();
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
        threads.push(crate::window::spawn_reader(
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
    let features_thread = crate::features::spawn_features(
        feature_params,
        win_rx,
        recycle_windows,
        machine_input,
        feat_tx,
        feat_recycle_rx,
        metrics.clone(),
    )?;
    let (swap_tx, swap_rx) = unbounded::<ModelSwap>();
    let inference_thread = crate::embed::spawn_inference(
        embedders,
        scorers,
        swap_rx,
        feat_rx,
        feat_recycle_tx,
        score_tx,
        metrics.clone(),
    )?;

    // Clip writer.
    let (clip_audio_tx, clip_audio_rx) =
        bounded::<crate::window::ClipAudio>(crate::clips::CLIP_QUEUE);
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
                        log::error!("clip not written: {e:#}; the event goes on without it");
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
        swaps: Some(swap_tx),
        unpublished_removals: std::collections::BTreeMap::new(),
        unknown_commands: Default::default(),
        mqtt_unsent: Default::default(),
        held_retained: Default::default(),
        cfg,
    };
    ctl.keep_removed(&saved);
    // The start of an alarm the last run raised without putting it in the outbox, before anything else of it.
    ctl.announce_unannounced();
    // End events, OFF through the outbox, the saved state and the alarm gauge, as for any transition.
    for (i, t) in ended_at_start {
        ctl.on_transition(i, t);
    }
    ctl.clean_up_last_run(&saved);
    ctl.publish_discovery();
    for i in 0..ctl.machines.len() {
        let m = &ctl.machines[i];
        let alarm = if m.detector.is_on() { "ON" } else { "OFF" };
        ctl.retained(format!("{}/{}/alarm", base, m.cfg.name), alarm.into(), true);
        ctl.publish_machine_state(i);
    }
    ctl.persist();

    // The configuration check and the models' loading are done: what they allocated and freed goes back.
    release_free_heap();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut last_wd = Instant::now();
    let mut wd_marks = WatchMarks::default();
    let mut last_status = Instant::now() - Duration::from_secs(60);
    let mut last_clock = Instant::now();
    // Per input: the dropped samples last logged (a line at the first and at each doubling).
    let mut ring_losses_logged = vec![0u64; metrics.inputs.len()];
    // The loop's last long hold-up and when it ended: a file replay or a device catches up over the next seconds,
    // which is when its ring overflows.
    let mut last_hold: Option<(Instant, Duration)> = None;
    let mut lock_complaints = 0u32;
    let mut open_stuck = vec![false; metrics.inputs.len()];
    // The files replayed with `at_end = "exit"`: once every one has been read to its end, the pipeline drains and
    // the daemon exits, whatever its other inputs (a file looped or stopped, a microphone) do. It waited for every
    // input to end, which those never do: the daemon ran on, and the ended file's machines read NO_SCORES.
    let exit_inputs: Vec<bool> = ctl
        .cfg
        .devices
        .iter()
        .map(|d| d.source == SourceKind::File && d.at_end == crate::config::AtEnd::Exit)
        .collect();
    let mut finished_inputs = vec![false; ctl.cfg.devices.len()];
    // Alarm times follow the system clock: say when it cannot be trusted (a Pi before NTP answers) and when it
    // jumps, so that nobody reads a boot-time alarm as one of days ago without being told.
    let mut clock = crate::clock::ClockWatch::start();
    metrics.clock_synchronized.set(clock.synchronized_gauge());
    let publishing = if ctl.cfg.mqtt.enabled {
        format!("topics under {base}")
    } else {
        "MQTT off ([mqtt] enabled = false: alarms kept in the outbox)".to_string()
    };
    log::info!(
        "sonitor {} running: {} machine(s) on {} input(s), {publishing}",
        crate::VERSION,
        ctl.machines.len(),
        ctl.cfg.devices.len()
    );

    // The periodic work (watchdog, status, mute expiry) needs no finer clock; every wake-up costs CPU on a
    // small board. Draining after the last replayed file checks the queues more often.
    let every = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
    let mut tick = crossbeam_channel::tick(every);
    let mut draining_since: Option<Instant> = None;
    // While draining: the windows scored so far, and when that count last grew.
    let mut drain_progress = (0u64, Instant::now());
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
                Ok(ReaderEvent::Health(h)) => ctl.on_channel_health(h.machine, h.silent, h.clipping),
                Ok(ReaderEvent::Fed { machine, unfed }) => ctl.on_channel_fed(machine, unfed),
                // Never blocks the loop: a full queue drops the clip (counted).
                Ok(ReaderEvent::Clip(c)) => ctl.write_clip(c, false),
                Ok(ReaderEvent::ClipDropped { path }) => ctl.on_clip_failed(&path),
                Ok(ReaderEvent::Finished { input }) => {
                    // What the sources said before (the file opened, its end) first: the select takes ready
                    // channels in any order, and the log said "all files replayed" before "input … open".
                    while let Ok(e) = src_rx.try_recv() {
                        on_source_event(&mut ctl, e);
                    }
                    finished_inputs[input] = true;
                    let replayed = |k: usize| !exit_inputs[k] || finished_inputs[k];
                    if (0..exit_inputs.len()).all(replayed) {
                        if exit_inputs.iter().all(|e| *e) {
                            log::info!("all files replayed; finishing the pipeline");
                        } else {
                            log::info!(
                                "all files with at_end = \"exit\" replayed; finishing the pipeline (the other \
                                 inputs stop with it)"
                            );
                        }
                        draining_since = Some(Instant::now());
                        drain_progress = (0, Instant::now());
                        tick = crossbeam_channel::tick(Duration::from_millis(100));
                    } else {
                        // Its machines get no more audio while another such file plays on.
                        ctl.input_down(input, Some("end of file".into()));
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
            release_free_heap();
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
        if term.load(Ordering::SeqCst) {
            log::info!("stopping");
            break;
        }
        if let Some(since) = draining_since {
            // Windows already cut still go through features and inference, for as long as inference goes on:
            // given up only after 10 s without a window scored (a pipeline stuck). A flat 10 s dropped the last
            // windows of a slow machine's queue (the demo on an emulated ARM board lost its last 14 and the
            // alarm's end).
            let idle = win_queue_empty(&metrics);
            let scored: u64 = metrics.machines.iter().map(|m| m.inferences.get()).sum();
            if scored != drain_progress.0 {
                drain_progress = (scored, Instant::now());
            }
            if (idle && since.elapsed() > Duration::from_millis(500))
                || drain_progress.1.elapsed() > Duration::from_secs(10)
            {
                while let Ok(s) = score_rx.try_recv() {
                    ctl.on_score(s);
                }
                break;
            }
        }
        // Watchdog: fed while frames and inferences advance, or while no input is open and every input's
        // supervisor is visibly waiting to reopen it (a microphone unplugged, or whose open has not returned:
        // restarting the daemon would not bring it back, and each restart takes the node offline on MQTT), and
        // in both cases only while every input's reader turns. A reader stuck (its windows stop, so the pipeline
        // looks idle), a supervisor stuck elsewhere in the audio stack (closing a stream), or a pipeline that
        // stops scoring the audio it gets, still starves it.
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
        // The wall clock, at every tick (a second at most): a jump re-saves the mutes' wall-clock ends at once,
        // not up to 10 s later, which a power cut right after NTP's step would have caught with the old ends.
        if last_clock.elapsed() >= Duration::from_secs(1) {
            // A loop held up (a reload building a graph) has windows waiting for it: not a machine without any.
            let held_up = last_clock.elapsed();
            let on_time = held_up < Duration::from_secs(3);
            last_clock = Instant::now();
            if !on_time {
                last_hold = Some((Instant::now(), held_up));
            }
            let recent_hold = last_hold
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(10))
                .map(|(_, d)| d);
            log_ring_losses(&ctl.cfg, &metrics, &mut ring_losses_logged, recent_hold);
            if clock.check_jump() {
                metrics.clock_jumps.inc();
                ctl.on_clock_jump();
            }
            ctl.check_windows_come(!on_time);
            // Retained values the publisher's queue had no room for, once it has.
            ctl.send_held_retained();
            // Every second, not with the 10-s checks below (two stat calls while the file is there): while the
            // directory was deleted (and made again by the next write of the outbox or a clip) but the lock file
            // not yet, `sonitor status` and `reload` found no daemon, and a second daemon would have started.
            if check_state_lock(&mut state_lock, &ctl.cfg.state_dir, &mut lock_complaints) {
                // The saved states and the outbox were deleted with it: written again now, not at the next change.
                ctl.persist();
                ctl.outbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_again_if_gone();
            }
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            // A save that failed (a full or read-only filesystem) is tried again, not only at the next change.
            if metrics.state_unsaved.get() == 1 {
                ctl.persist();
            }
            clock.check_synchronized();
            last_status = Instant::now();
            metrics.clock_synchronized.set(clock.synchronized_gauge());
            let on = ctl.machines.iter().filter(|m| m.detector.is_on()).count();
            let status = format!(
                "{} machine(s), {on} alarm(s) on, mqtt {}",
                ctl.machines.iter().filter(|m| !m.removed).count(),
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
            // A device whose open never returns reports nothing itself: said once per hang.
            for (k, im) in metrics.inputs.iter().enumerate() {
                let since = *im.opening_since.lock().unwrap_or_else(|e| e.into_inner());
                let stuck = since.is_some_and(|t| t.elapsed() >= OPEN_STUCK_AFTER);
                if stuck && !open_stuck[k] {
                    log::warn!(
                        "input {}: opening its device has not returned for {} s (an ALSA plugin that waits on \
                         something: a network, Bluetooth, a FIFO?); its machines get no audio until it does, the \
                         others are watched as before. `systemctl restart sonitor` tries a fresh audio stack",
                        im.name,
                        OPEN_STUCK_AFTER.as_secs()
                    );
                }
                open_stuck[k] = stuck;
            }
        }
    }

    // A replay to its end (a recording tried on a model): what each machine made of it, which a quiet run (no
    // alarm, MQTT off) did not say at all.
    if draining_since.is_some() {
        for (i, m) in ctl.machines.iter().enumerate() {
            // Of the machines on a replayed file: one on a microphone beside it replayed nothing (review33).
            let replayed =
                ctl.cfg.devices.get(m.input).map(|d| &d.source) == Some(&SourceKind::File);
            let Some(mm) = metrics.machines.get(i).filter(|_| !m.removed && replayed) else {
                continue;
            };
            log::info!(
                "replay summary of {}: {} window(s) judged, highest score {}, threshold {:.4}; {} alarm(s) \
                 raised{}",
                m.cfg.name,
                mm.scores.count(),
                m.peak_score.map_or_else(|| "none".to_string(), |p| format!("{p:.4}")),
                m.detector.params().threshold_on,
                mm.alarms.get(),
                if m.detector.is_on() { ", the last still on" } else { "" }
            );
        }
    }
    if exit_code == 0 && ctl.replay_failed {
        log::error!(
            "a replayed file could not be read to its end; exiting with status {EXIT_INPUT}"
        );
        exit_code = EXIT_INPUT;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // The main thread stuck before its stop (the panic hook's timer covers it after a panic).
    crate::fault::hang("stopping");
    let deadline = StopDeadline::arm(ctl.outbox.clone(), ctl.cfg.mqtt.enabled);
    stop.store(true, Ordering::SeqCst);
    // Unblocks a pipeline that waits on the detector (lossless file replay).
    drop(score_rx);
    deadline.waiting_for(format!(
        "the alarm states to be saved to {}",
        ctl.saved_path.display()
    ));
    let mut states_lost = 0;
    if !ctl.persist() {
        // The next start cannot know these: said once more, by machine, as the outbox names its lost messages.
        for lost in ctl.unsaved_summary() {
            log::error!("not saved, so lost at the next start: {lost}");
            states_lost += 1;
        }
    }
    if let Some(t) = &mqtt_thread {
        deadline.waiting_for(format!("{} (the last MQTT messages)", thread_named(t)));
    }
    ctl.forget_held_retained();
    if let Some(tx) = ctl.mqtt.take() {
        let _ = tx.send(ToMqtt::Shutdown);
    }
    drop(mqtt_tx);
    if let Some(t) = mqtt_thread {
        let _ = t.join();
    }
    for t in threads {
        deadline.waiting_for(thread_named(&t));
        let _ = t.join();
    }
    // The readers, stopping, served the clips still waiting for audio with what there was: written before the
    // exit, not lost with the process.
    deadline.waiting_for("thread 'clips' (the clips still waiting to be written)");
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
    deadline.waiting_for("the outbox");
    let mut outbox = ctl.outbox.lock().unwrap_or_else(|e| e.into_inner());
    let messages_lost = outbox_at_exit(&mut outbox, ctl.cfg.mqtt.enabled);
    if exit_code == 0 && (messages_lost > 0 || states_lost > 0) {
        log::error!(
            "exiting with status {EXIT_LOST}: {messages_lost} alarm message(s) and {states_lost} machine state(s) \
             could not be kept (named above); the service manager shows the stop as failed"
        );
        exit_code = EXIT_LOST;
    }
    Ok(exit_code)
}

/// The outbox as the process ends (the stop's end, or its deadline): the messages held only in memory are written
/// if the disk takes them now (clips removed, space freed since the last transition tried); then, with MQTT on,
/// what waits on disk for the next start is counted and each message that could not be written is named, however
/// many: these alarms reach no one, and this log is their only trace. Without MQTT nothing is ever sent from the
/// outbox; the next start with MQTT on sends what is on disk. Returns how many messages are lost.
fn outbox_at_exit(outbox: &mut Outbox, mqtt: bool) -> usize {
    outbox.write_again_if_gone();
    outbox.write_memory_only();
    if !mqtt {
        return 0;
    }
    let lost: Vec<String> = outbox
        .memory_only()
        .map(|r| format!("{} {} on {}", r.seq, r.msg.payload, r.msg.topic))
        .collect();
    let waiting = outbox.len() - lost.len();
    if waiting > 0 {
        log::warn!(
            "{waiting} alarm message(s) not acknowledged by the broker wait in {} for the next start",
            outbox.dir().display()
        );
    }
    if !lost.is_empty() {
        log::error!(
            "{} alarm message(s) not acknowledged by the broker could not be written to {} and are lost; \
             each follows",
            lost.len(),
            outbox.dir().display(),
        );
        for m in &lost {
            log::error!("lost alarm message {m}");
        }
    }
    lost.len()
}

/// The `since` a machine's state is published with at a start: its saved one (the last transition's), else a
/// resumed alarm's start (a state saved by a version that did not record `since`), else the start itself.
fn since_at_start(saved: &SavedMachine) -> String {
    saved
        .since
        .clone()
        .or_else(|| saved.event.as_ref().map(|e| e.started_at.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(now_rfc3339)
}

/// Exit status when a replayed file could not be read to its end (EX_IOERR).
pub const EXIT_INPUT: i32 = 74;

/// Exit status of a stop that otherwise went well but lost what it had to keep (EX_CANTCREAT): alarm messages the
/// broker had not acknowledged that could not be written to the outbox, or alarm states (an open alarm, a mute, a
/// threshold set over MQTT) that could not be saved. systemd then shows the unit as failed, with this status,
/// instead of a clean stop; it does not restart a unit it was asked to stop.
pub const EXIT_LOST: i32 = 73;

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

/// Gives the heap's free pages back to the kernel. glibc keeps what was freed for later allocations, and the
/// check of a configuration (at the start and at every reload) reads and verifies each bundle (its manifest is
/// 1.9 MB of JSON for a combined one; a graph not yet running is also built by tract and run once), then drops
/// what it does not keep: without this those pages stay in the daemon's RSS.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory that no allocation holds; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Logs audio an input's ring dropped (the reader fell behind: the CPU starved, the process stopped), at its first
/// sample and at each doubling of the count. Only `sonitor_dropped_samples_total` said so: 42 s of audio went after
/// a SIGSTOP without a line, health `OK`. `held_up`: how long this loop was held up lately (over 3 s, in the last
/// 10 s), named as the likely cause: the whole process was held, not only the reader.
fn log_ring_losses(cfg: &Config, metrics: &Metrics, logged: &mut [u64], held_up: Option<Duration>) {
    for (i, last) in logged.iter_mut().enumerate() {
        let (Some(input), Some(d)) = (metrics.inputs.get(i), cfg.devices.get(i)) else {
            continue;
        };
        let n = input.dropped_samples.get();
        if !crate::metrics::log_due(*last, n) {
            continue;
        }
        let held = held_up.map_or_else(String::new, |h| {
            format!(
                " (this daemon was held up for {:.0} s: stopped, or starved of CPU)",
                h.as_secs_f64()
            )
        });
        log::warn!(
            "input {}: {n} samples dropped so far: its ring was full, as its reader fell behind the audio{held} \
             (sonitor_dropped_samples_total); the windows across each gap are lost and start again after it; a \
             larger `ring_seconds` (now {} s) rides out longer stalls",
            d.name,
            d.ring_seconds
        );
        *last = n;
    }
}
