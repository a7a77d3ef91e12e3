//! Prometheus text metrics, served on a loopback HTTP port (`GET /metrics`). Counters are lock-free atomics so
//! that every thread can count without contention; per-machine and per-input values live in small vectors
//! fixed at start-up.
//!
//! Names follow `sonitor_<thing>_<unit>_total` for counters; everything the daemon drops has a counter.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Adds one and returns the new value when it is 1, 2, 4, 8, …: when a line about the event is due in the
    /// log. A fault that recurs on every window (a model that fails on this audio) would otherwise write a line
    /// per window for as long as it lasts.
    pub fn inc_log_due(&self) -> Option<u64> {
        Some(self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1)).filter(|n| n.is_power_of_two())
    }
    /// Adds `n` and returns the new value when a line is due in the log ([`log_due`]): [`Self::inc_log_due`] for a
    /// count that grows by more than one at a time.
    pub fn add_log_due(&self, n: u64) -> Option<u64> {
        let before = self.0.fetch_add(n, Ordering::Relaxed);
        let now = before.saturating_add(n);
        log_due(before, now).then_some(now)
    }
}

/// Whether a count that went from `last` (its value at the last look, or when it was last logged) to `now` is
/// due a line in the log: at its first, then each time it passes another power of two, so that a fault that keeps
/// recurring writes a line per doubling ([`Counter::inc_log_due`] does so one at a time).
pub fn log_due(last: u64, now: u64) -> bool {
    now > last && (last == 0 || now.ilog2() > last.ilog2())
}

/// At most `lines` log lines a `window`: what is beyond them is counted, and the caller sums it up in one line once
/// the window is over ([`Self::roll`]). Doubling ([`log_due`]) suits a fault that lasts; this suits events that
/// recur for as long as the daemon runs (commands, a machine's health that flaps), where a line a year later must
/// still be written.
#[derive(Debug)]
pub struct LogBudget {
    lines: u32,
    window: Duration,
    since: Instant,
    written: u32,
    unlogged: u64,
}

impl LogBudget {
    pub fn new(lines: u32, window: Duration) -> Self {
        Self {
            lines,
            window,
            since: Instant::now(),
            written: 0,
            unlogged: 0,
        }
    }

    /// The window's length (for the summary line).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Once the window is over: how many lines it did not write (`Some` when any, for the caller's summary line),
    /// and a new window. Call it before [`Self::allow`], and now and then while nothing happens, so that the
    /// summary comes when the window ends.
    pub fn roll(&mut self) -> Option<u64> {
        if self.since.elapsed() < self.window {
            return None;
        }
        let unlogged = std::mem::take(&mut self.unlogged);
        self.since = Instant::now();
        self.written = 0;
        (unlogged > 0).then_some(unlogged)
    }

    /// Whether one more line may be written in this window; counts it as not written when it may not.
    pub fn allow(&mut self) -> bool {
        if self.written < self.lines {
            self.written += 1;
            true
        } else {
            self.unlogged += 1;
            false
        }
    }

    /// The lines written in this window so far.
    #[cfg(test)]
    pub fn written(&self) -> u32 {
        self.written
    }

    /// The lines not written in this window so far.
    #[cfg(test)]
    pub fn unlogged(&self) -> u64 {
        self.unlogged
    }

    /// Ends this window now, as if its time had passed.
    #[cfg(test)]
    pub fn end_window(&mut self) {
        self.since = Instant::now()
            .checked_sub(self.window)
            .unwrap_or(self.since);
    }
}

/// A gauge holding a u64 (or an f64's bits via [`Gauge::set_f64`]).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set_f64(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get_f64(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Upper bounds of the buckets of `sonitor_window_score`: ten per decade (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8) from
/// 0.001 to 2, the largest cosine distance. Normal windows of a trained model score about 0.005–0.1 and calibrated
/// thresholds lie at 0.02–0.1, so the fine low end is where a threshold is chosen. Fixed, so that a histogram over
/// a week keeps its meaning through threshold changes.
pub const SCORE_BUCKETS: [f64; 34] = [
    0.001, 0.0012, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.008, //
    0.01, 0.012, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08, //
    0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, //
    1.0, 1.2, 1.5, 2.0,
];

/// The distribution of one machine's window scores: how often each threshold would have been crossed, to choose
/// one from the machine's own history (`histogram_quantile` in Prometheus). One writer (the daemon's controller).
#[derive(Debug)]
pub struct ScoreHistogram {
    /// Scores per bucket of [`SCORE_BUCKETS`] (not cumulative), then those above the last bound.
    buckets: [Counter; SCORE_BUCKETS.len() + 1],
    sum: Gauge,
    count: Counter,
}

impl Default for ScoreHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Gauge::default(),
            count: Counter::default(),
        }
    }
}

impl ScoreHistogram {
    /// Counts a (finite) score in the first bucket whose bound is not below it.
    pub fn observe(&self, score: f64) {
        let i = SCORE_BUCKETS.partition_point(|&bound| bound < score);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.inc();
        }
        self.sum.set_f64(self.sum.get_f64() + score);
        self.count.inc();
    }

    /// The scores counted.
    pub fn count(&self) -> u64 {
        self.count.get()
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last.
    fn cumulative(&self) -> Vec<(String, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c.get();
                let le = SCORE_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), f64::to_string);
                (le, total)
            })
            .collect()
    }
}

/// A machine's health as its retained `health` topic says it, in this order for `sonitor_machine_health`.
pub const HEALTH_VALUES: [&str; 5] = ["OK", "SILENT", "CLIPPING", "NO_AUDIO", "NO_SCORES"];

/// Per capture input (device).
#[derive(Debug, Default)]
pub struct InputMetrics {
    pub name: String,
    /// Frames delivered by the device (or the file source).
    pub frames: Arc<Counter>,
    /// Samples the callback could not store because the ring buffer was full.
    pub dropped_samples: Arc<Counter>,
    pub reopens: Counter,
    pub errors: Counter,
    /// Closes of a stream that had not returned within [`crate::capture::CLOSE_STUCK_AFTER`]: the audio stack
    /// (a driver, an ALSA plugin) held the capture thread that the close waits for.
    pub stuck_closes: Counter,
    /// Overruns (xruns) the device reported and recovered from itself: audio was lost, the stream went on.
    pub xruns: Arc<Counter>,
    /// Breaks in an input's audio (a ring overrun or an xrun) after which its windows started again, so that
    /// no window joins the audio on both sides of a loss.
    pub gaps: Counter,
    /// 1 while the stream delivers frames.
    pub up: Gauge,
    /// Raised by the input's supervisor thread while it waits to reopen the input, or for its device's open to
    /// return: proof for the watchdog that a daemon without audio is waiting for its device, not hung. Not
    /// exported.
    pub retry_beats: Counter,
    /// Raised by the input's reader at every turn of its loop (at least every quarter second while it runs,
    /// audio or not): proof for the watchdog that the reader is not stuck. Not exported.
    pub reader_beats: Counter,
    /// Since when the input's supervisor waits for its device to open (`None` while it does not): an open that
    /// never returns (an ALSA plugin that waits on something) is logged by the main loop. Not exported.
    pub opening_since: std::sync::Mutex<Option<Instant>>,
}

/// Per machine.
#[derive(Debug, Default)]
pub struct MachineMetrics {
    pub name: String,
    pub windows: Counter,
    pub dropped_windows: Counter,
    pub inferences: Counter,
    /// Inferences whose score was not a finite number, dropped before the detector.
    pub invalid_scores: Counter,
    /// Windows the model could not embed (tract's error, or its panic caught on that window), dropped before the
    /// detector.
    pub inference_errors: Counter,
    /// Windows whose features could not be computed (a bug upstream), dropped before the model.
    pub feature_errors: Counter,
    pub inference_seconds_sum: Gauge,
    pub score: Gauge,
    /// Every score judged (not those of windows in which the machine was idle), for `sonitor_window_score`.
    pub scores: ScoreHistogram,
    /// The last window's level (RMS, dBFS; an f64's bits).
    pub window_level: Gauge,
    /// Windows in which the machine was not running (below its `idle_below_dbfs`), not judged.
    pub idle_windows: Counter,
    /// Windows without signal (one value repeated: digital silence, a stuck input), not judged.
    pub no_signal_windows: Counter,
    pub alarm: Gauge,
    pub alarms: Counter,
    /// The threshold in force (an f64's bits): the bundle's, the file's or a command's.
    pub threshold: Gauge,
    /// The threshold below which an alarm on clears (hysteresis; an f64's bits).
    pub threshold_off: Gauge,
    /// The threshold its section's bundle calibrated (an f64's bits): `status` names a threshold in force ten
    /// times or more away from it.
    pub threshold_calibrated: Gauge,
    /// 1 while a mute runs.
    pub muted: Gauge,
    /// 1 while the machine is enabled (its alarms judged).
    pub enabled: Gauge,
    /// 1 while the machine counts as not running (its window level below `idle_below_dbfs`): not judged.
    pub idle: Gauge,
    /// The id of the model it is scored with (a reload can change it).
    pub model_id: std::sync::Mutex<String>,
    /// Its health, an index into [`HEALTH_VALUES`].
    pub health: Gauge,
    /// Why its health is not OK (its retained `state`'s `health_reason`); empty when it is.
    pub health_reason: std::sync::Mutex<String>,
    /// 1 while the machine's input channel is silent / clipping.
    pub silent: Gauge,
    pub clipping: Gauge,
    /// Stream time (ms) of the end of the last window the daemon has handled (its score through the detector,
    /// its alarm's clip asked for): how far behind the reader a file replayed as fast as possible is
    /// (`window::LeadGuard`). Not exported.
    pub handled_ms: std::sync::atomic::AtomicU64,
    /// Windows whose way through the pipeline has ended: handled by the daemon, or dropped anywhere (a queue
    /// full, features or inference failing, a score not finite). `windows` minus this is what is still on its way.
    /// Not exported.
    pub settled: Counter,
    /// Gone from the file at a reload: none of its series is exported any more (`detect::Controller::retire`).
    pub removed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub inputs: Vec<InputMetrics>,
    pub machines: Vec<MachineMetrics>,
    pub mqtt_connected: Gauge,
    /// `[mqtt] enabled`: 0 when MQTT is off (then `sonitor_mqtt_connected` is 0 by design, not a fault).
    pub mqtt_enabled: Gauge,
    /// 1 while connected without this daemon's own announcement delivered back (`mqtt::Session::own_echo`).
    pub mqtt_echo_missing: Gauge,
    pub mqtt_commands_unread: Gauge,
    pub mqtt_ack_stalls: Counter,
    pub mqtt_connects: Counter,
    pub mqtt_published: Counter,
    pub mqtt_dropped: Counter,
    /// Announcements of another daemon publishing under this node's topics (`mqtt::Session::on_node_message`).
    pub mqtt_node_conflicts: Counter,
    pub outbox_depth: Gauge,
    pub outbox_dropped: Gauge,
    /// Alarm messages whose outbox file could not be written (a counter the outbox keeps; set from it).
    pub outbox_unpersisted: Gauge,
    /// Waiting alarm messages that are in memory only.
    pub outbox_memory_only: Gauge,
    /// 1 while the last save of the alarm states failed (`detect::Controller::persist`).
    pub state_unsaved: Gauge,
    pub clips_written: Counter,
    pub clips_dropped: Counter,
    /// Commands received on MQTT that the daemon's queue could not take.
    pub commands_dropped: Counter,
    /// Commands received on MQTT and refused (each logged): unreadable, out of range, retained, or for a machine
    /// not watched here.
    pub commands_rejected: Counter,
    /// Clips the retention deleted (past clips.max_age, max_count or max_bytes).
    pub clips_removed: Counter,
    pub scores_dropped: Counter,
    /// 1 while the kernel says the system clock is synchronised (or cannot tell), 0 while it is not.
    pub clock_synchronized: Gauge,
    /// Jumps of the wall clock seen (alarm times before one are on the old clock).
    pub clock_jumps: Counter,
    /// Raised by the MQTT publisher at every turn of its loop, and by the clip writer at every turn of its own
    /// (at least once a watchdog check while a watchdog applies): proof for the watchdog that neither is stuck.
    /// Not exported.
    pub mqtt_beats: Counter,
    pub clips_beats: Counter,
    /// Reloads asked for (SIGHUP), and those that refused the file and kept the running configuration.
    pub reloads: Counter,
    pub reload_errors: Counter,
    /// 1 when the last reload applied the file (or none was asked for), 0 when it refused it.
    pub last_reload_ok: Gauge,
    /// 1 when the last reload applied left changes of the file for a restart.
    pub restart_pending: Gauge,
    /// The daemon's node_id, exported with its process id (`sonitor_process_id`).
    pub node_id: String,
    /// When these metrics were made, at the daemon's start (Unix seconds; `sonitor_start_time_seconds`): a
    /// restart resets every counter, and this says when it happened.
    pub started_unix: f64,
}

impl MachineMetrics {
    /// Whether windows it cut are still on their way (in features, inference or the score queue): cut and not yet
    /// settled.
    pub fn windows_on_their_way(&self) -> bool {
        self.windows.get() > self.settled.get()
    }

    /// A window dropped on its way (a queue full): counted, and settled. Returns the count when a log line is due
    /// ([`Counter::inc_log_due`]).
    pub fn window_dropped(&self) -> Option<u64> {
        self.settled.inc();
        self.dropped_windows.inc_log_due()
    }
}

impl Metrics {
    pub fn new(inputs: &[String], machines: &[String]) -> Self {
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            started_unix,
            inputs: inputs
                .iter()
                .map(|n| InputMetrics {
                    name: n.clone(),
                    ..Default::default()
                })
                .collect(),
            machines: machines
                .iter()
                .map(|n| MachineMetrics {
                    name: n.clone(),
                    ..Default::default()
                })
                .collect(),
            last_reload_ok,
            ..Default::default()
        }
    }

    /// Counts a reload and what it left: `Some(pending)` when it applied the file (`pending`: changes of it wait
    /// for a restart), `None` when it refused it. The count goes last, with release ordering, and [`Self::render`]
    /// reads it first, with acquire ordering: whoever sees the new count (`sonitor reload` waits for it) sees the
    /// outcome with it, on a weakly ordered CPU too (a Raspberry Pi's).
    pub fn reloaded(&self, restart_pending: Option<bool>) {
        match restart_pending {
            Some(pending) => self.restart_pending.set(u64::from(pending)),
            None => self.reload_errors.inc(),
        }
        self.last_reload_ok
            .set(u64::from(restart_pending.is_some()));
        self.reloads.0.fetch_add(1, Ordering::Release);
    }

    /// The machines whose series are exported: all but those a reload removed.
    fn exported_machines(&self) -> impl Iterator<Item = &MachineMetrics> {
        self.machines
            .iter()
            .filter(|m| !m.removed.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in rows {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let inp = |f: &dyn Fn(&InputMetrics) -> String| -> Vec<(String, String)> {
            self.inputs
                .iter()
                .map(|i| (format!("{{input=\"{}\"}}", label(&i.name)), f(i)))
                .collect()
        };
        let mac = |f: &dyn Fn(&MachineMetrics) -> String| -> Vec<(String, String)> {
            self.exported_machines()
                .map(|m| (format!("{{machine=\"{}\"}}", label(&m.name)), f(m)))
                .collect()
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        family(
            "sonitor_audio_frames_total",
            "counter",
            "Audio frames received per input.",
            inp(&|i| i.frames.get().to_string()),
        );
        family(
            "sonitor_dropped_samples_total",
            "counter",
            "Samples dropped because the capture ring buffer was full.",
            inp(&|i| i.dropped_samples.get().to_string()),
        );
        family(
            "sonitor_input_reopens_total",
            "counter",
            "Times an input was reopened after an error or a stall.",
            inp(&|i| i.reopens.get().to_string()),
        );
        family(
            "sonitor_input_xruns_total",
            "counter",
            "Overruns the capture device reported and recovered from (audio lost, stream kept).",
            inp(&|i| i.xruns.get().to_string()),
        );
        family(
            "sonitor_input_gaps_total",
            "counter",
            "Breaks in an input's audio after which its windows started again: a ring overrun, an xrun, or a looped file starting over.",
            inp(&|i| i.gaps.get().to_string()),
        );
        family(
            "sonitor_input_errors_total",
            "counter",
            "Stream errors reported per input.",
            inp(&|i| i.errors.get().to_string()),
        );
        family(
            "sonitor_input_stuck_closes_total",
            "counter",
            "Stream closes that did not return within 5 s (the audio stack held the stream); the input stays down until the close returns.",
            inp(&|i| i.stuck_closes.get().to_string()),
        );
        family(
            "sonitor_input_up",
            "gauge",
            "1 while the input delivers frames.",
            inp(&|i| i.up.get().to_string()),
        );
        family(
            "sonitor_windows_total",
            "counter",
            "Analysis windows cut per machine.",
            mac(&|m| m.windows.get().to_string()),
        );
        family(
            "sonitor_dropped_windows_total",
            "counter",
            "Windows dropped because features or inference fell behind.",
            mac(&|m| m.dropped_windows.get().to_string()),
        );
        family(
            "sonitor_inferences_total",
            "counter",
            "Windows scored per machine.",
            mac(&|m| m.inferences.get().to_string()),
        );
        family(
            "sonitor_invalid_scores_total",
            "counter",
            "Windows whose score was not a finite number (non-finite audio or model output), dropped before the detector.",
            mac(&|m| m.invalid_scores.get().to_string()),
        );
        family(
            "sonitor_inference_errors_total",
            "counter",
            "Windows the model could not embed (tract's error, or a panic in tract caught on that window), dropped before the detector.",
            mac(&|m| m.inference_errors.get().to_string()),
        );
        family(
            "sonitor_feature_errors_total",
            "counter",
            "Windows whose features could not be computed (a bug in sonitor, logged), dropped before the model.",
            mac(&|m| m.feature_errors.get().to_string()),
        );
        family(
            "sonitor_inference_seconds_total",
            "counter",
            "Time spent computing features and running the model (the work, not the windows' waits in the queues).",
            mac(&|m| format!("{:.6}", m.inference_seconds_sum.get_f64())),
        );
        family(
            "sonitor_score",
            "gauge",
            "Anomaly score of the latest judged window per machine (a window without signal, or of a machine idle, is not judged).",
            mac(&|m| format!("{}", m.score.get_f64())),
        );
        family(
            "sonitor_window_level_dbfs",
            "gauge",
            "Level of the latest window per machine (RMS, dBFS): read it with the machine running and standing to set idle_below_dbfs.",
            mac(&|m| format!("{}", m.window_level.get_f64())),
        );
        family(
            "sonitor_idle_windows_total",
            "counter",
            "Windows in which the machine was not running (level below idle_below_dbfs), not judged against the threshold.",
            mac(&|m| m.idle_windows.get().to_string()),
        );
        family(
            "sonitor_no_signal_windows_total",
            "counter",
            "Windows without signal (digital silence, or an input stuck at one value), not judged against the threshold.",
            mac(&|m| m.no_signal_windows.get().to_string()),
        );
        family(
            "sonitor_alarm",
            "gauge",
            "1 while the machine's alarm is on.",
            mac(&|m| m.alarm.get().to_string()),
        );
        family(
            "sonitor_alarms_total",
            "counter",
            "Alarms raised per machine.",
            mac(&|m| m.alarms.get().to_string()),
        );
        family(
            "sonitor_threshold",
            "gauge",
            "The threshold in force per machine (its bundle's, the file's or a threshold/set command's): an alarm starts above it.",
            mac(&|m| format!("{}", m.threshold.get_f64())),
        );
        family(
            "sonitor_threshold_off",
            "gauge",
            "The threshold per machine below which an alarm on clears (hysteresis: the file's threshold_off, scaled with a threshold/set command; without one, the threshold in force).",
            mac(&|m| format!("{}", m.threshold_off.get_f64())),
        );
        family(
            "sonitor_threshold_calibrated",
            "gauge",
            "The threshold calibrated per machine by its bundle (sonitor-train fit, on its section's normal training scores): the default, and what a threshold in force is compared with (ten times or more away: sonitor status names it).",
            mac(&|m| format!("{}", m.threshold_calibrated.get_f64())),
        );
        family(
            "sonitor_muted",
            "gauge",
            "1 while the machine is muted (a mute/set command): its alarms are not raised.",
            mac(&|m| m.muted.get().to_string()),
        );
        family(
            "sonitor_enabled",
            "gauge",
            "1 while the machine is enabled (the file's enabled or an enabled/set command), 0 while it is not judged.",
            mac(&|m| m.enabled.get().to_string()),
        );
        family(
            "sonitor_idle",
            "gauge",
            "1 while the machine counts as not running (its window level below idle_below_dbfs, until it is idle_hysteresis_db above it again): its windows are not judged.",
            mac(&|m| m.idle.get().to_string()),
        );
        family(
            "sonitor_machine_health",
            "gauge",
            "1 for the machine's health as its retained health topic says it (OK, SILENT, CLIPPING, NO_AUDIO: no audio from its input, NO_SCORES: its windows cannot be scored), 0 for the others: anything but OK means it is not watched as it should be.",
            self.exported_machines()
                .flat_map(|m| {
                    let now = m.health.get();
                    HEALTH_VALUES.iter().enumerate().map(move |(k, h)| {
                        (
                            format!("{{machine=\"{}\",health=\"{h}\"}}", label(&m.name)),
                            u64::from(k as u64 == now).to_string(),
                        )
                    })
                })
                .collect(),
        );
        family(
            "sonitor_model_info",
            "gauge",
            "1 per machine, labelled with the id of the model it is scored with (a reload can change it).",
            self.exported_machines()
                .map(|m| {
                    let id = m.model_id.lock().map(|s| s.clone()).unwrap_or_else(|e| e.into_inner().clone());
                    (
                        format!("{{machine=\"{}\",model_id=\"{}\"}}", label(&m.name), label(&id)),
                        "1".to_string(),
                    )
                })
                .collect(),
        );
        family(
            "sonitor_health_reason_info",
            "gauge",
            "1 per machine whose health is not OK, labelled with why (its retained state's health_reason).",
            self.exported_machines()
                .filter_map(|m| {
                    let why = m
                        .health_reason
                        .lock()
                        .map(|s| s.clone())
                        .unwrap_or_else(|e| e.into_inner().clone());
                    (!why.is_empty()).then(|| {
                        (
                            format!("{{machine=\"{}\",reason=\"{}\"}}", label(&m.name), label(&why)),
                            "1".to_string(),
                        )
                    })
                })
                .collect(),
        );
        family(
            "sonitor_input_silent",
            "gauge",
            "1 while the machine's channel is silent.",
            mac(&|m| m.silent.get().to_string()),
        );
        family(
            "sonitor_input_clipping",
            "gauge",
            "1 while the machine's channel clips.",
            mac(&|m| m.clipping.get().to_string()),
        );
        family(
            "sonitor_mqtt_enabled",
            "gauge",
            "1 when MQTT is on in the configuration ([mqtt] enabled), 0 when it is off.",
            one(self.mqtt_enabled.get()),
        );
        family(
            "sonitor_mqtt_connected",
            "gauge",
            "1 while connected to the broker.",
            one(self.mqtt_connected.get()),
        );
        family(
            "sonitor_mqtt_echo_missing",
            "gauge",
            "1 while connected but the broker has not delivered this daemon's own announcement (<base>/node) back within 10 s: it may drop what this client publishes (an ACL, a message size limit), alarms included; the broker's log says.",
            one(self.mqtt_echo_missing.get()),
        );
        family(
            "sonitor_mqtt_commands_unread",
            "gauge",
            "1 while connected but the broker has not delivered this daemon's probe on its command topics (an empty message on <base>/.probe/mute/set) back within 10 s: commands do not reach it (an ACL that denies it reading <base>/+/+/set); the broker's log says.",
            one(self.mqtt_commands_unread.get()),
        );
        family(
            "sonitor_mqtt_ack_stalls_total",
            "counter",
            "Connections made again because the broker had acknowledged none of the messages in flight (alarm messages, retained values) for 3 × keep_alive (at least 30 s) while answering pings: a faulty broker; the reconnection sends them again.",
            one(self.mqtt_ack_stalls.get()),
        );
        family(
            "sonitor_mqtt_connects_total",
            "counter",
            "Successful broker connections.",
            one(self.mqtt_connects.get()),
        );
        family(
            "sonitor_mqtt_published_messages_total",
            "counter",
            "Publish requests handed to the MQTT client.",
            one(self.mqtt_published.get()),
        );
        family(
            "sonitor_mqtt_dropped_messages_total",
            "counter",
            "Messages the MQTT client's queue could not take, lost (scores, answers to refused commands, wake-ups for new alarm messages, which wait in the outbox for the next one; a retained value such as a state waits for room instead, until the daemon stops: the next start publishes it), and the scores not published while the broker is away.",
            one(self.mqtt_dropped.get()),
        );
        family(
            "sonitor_mqtt_node_conflicts_total",
            "counter",
            "Announcements on <base>/node of another daemon with this node_id (each device needs its own).",
            one(self.mqtt_node_conflicts.get()),
        );
        family(
            "sonitor_outbox_messages",
            "gauge",
            "Alarm messages waiting in the on-disk outbox.",
            one(self.outbox_depth.get()),
        );
        family(
            "sonitor_outbox_dropped_messages_total",
            "counter",
            "Alarm messages dropped because the outbox was full.",
            one(self.outbox_dropped.get()),
        );
        family(
            "sonitor_outbox_unpersisted_messages_total",
            "counter",
            "Alarm messages that could not be written to the outbox on disk (full or read-only filesystem): kept in memory only, still published.",
            one(self.outbox_unpersisted.get()),
        );
        family(
            "sonitor_outbox_memory_only_messages",
            "gauge",
            "Waiting alarm messages that are in memory only: lost if sonitor stops before the broker acknowledges them.",
            one(self.outbox_memory_only.get()),
        );
        family(
            "sonitor_state_unsaved",
            "gauge",
            "1 while the last save of the alarm states (open alarms, mutes, thresholds and enabled flags set over MQTT) failed: a restart now would not know them. Retried every 10 s.",
            one(self.state_unsaved.get()),
        );
        family(
            "sonitor_clips_written_total",
            "counter",
            "Evidence clips written.",
            one(self.clips_written.get()),
        );
        family(
            "sonitor_clips_dropped_total",
            "counter",
            "Evidence clips not written (a queue full, no audio, or a write error).",
            one(self.clips_dropped.get()),
        );
        family(
            "sonitor_commands_dropped_total",
            "counter",
            "Commands received on MQTT and not applied because the daemon's command queue was full.",
            one(self.commands_dropped.get()),
        );
        family(
            "sonitor_commands_rejected_total",
            "counter",
            "Commands received on MQTT and refused (logged): unreadable, out of range, retained, or for a machine not watched here.",
            one(self.commands_rejected.get()),
        );
        family(
            "sonitor_clips_removed_total",
            "counter",
            "Evidence clips deleted by the retention (past clips.max_age, max_count or max_bytes).",
            one(self.clips_removed.get()),
        );
        family(
            "sonitor_scores_dropped_total",
            "counter",
            "Scores the detector thread could not take.",
            one(self.scores_dropped.get()),
        );
        family(
            "sonitor_clock_synchronized",
            "gauge",
            "1 while the system clock is synchronised (NTP), 0 while not: alarm times follow the system clock.",
            one(self.clock_synchronized.get()),
        );
        family(
            "sonitor_clock_jumps_total",
            "counter",
            "Jumps of the system clock by more than 2 s (alarm times before one are on the old clock).",
            one(self.clock_jumps.get()),
        );
        family(
            "sonitor_config_reloads_total",
            "counter",
            "Reloads of the configuration asked for (SIGHUP, systemctl reload).",
            one(self.reloads.0.load(Ordering::Acquire)),
        );
        family(
            "sonitor_config_reload_errors_total",
            "counter",
            "Reloads that refused the file (the log names why) and kept the running configuration.",
            one(self.reload_errors.get()),
        );
        family(
            "sonitor_config_last_reload_successful",
            "gauge",
            "1 when the last reload applied the file (or none was asked for), 0 when it refused it: the file on disk is not the one running.",
            one(self.last_reload_ok.get()),
        );
        family(
            "sonitor_process_id",
            "gauge",
            "This daemon's process id, labelled with its node_id: sonitor status and sonitor reload check that the metrics they read are those of the daemon that holds the state directory.",
            vec![(
                format!("{{node_id=\"{}\"}}", label(&self.node_id)),
                std::process::id().to_string(),
            )],
        );
        family(
            "sonitor_start_time_seconds",
            "gauge",
            "When this daemon started (Unix seconds): a new value means a restart, which resets every counter.",
            vec![(String::new(), format!("{:.3}", self.started_unix))],
        );
        family(
            "sonitor_build_info",
            "gauge",
            "1, labelled with the version and the commit this daemon was built from.",
            vec![(
                format!(
                    "{{version=\"{}\",commit=\"{}\"}}",
                    label(env!("CARGO_PKG_VERSION")),
                    label(env!("SONITOR_COMMIT"))
                ),
                "1".to_string(),
            )],
        );
        family(
            "sonitor_config_restart_pending",
            "gauge",
            "1 when the last reload applied the file but some of its changes wait for a restart (devices, MQTT, a new machine, a bundle with other feature parameters, ...: the log names them), 0 otherwise.",
            one(self.restart_pending.get()),
        );
        let name = "sonitor_window_score";
        s.push_str(&format!(
            "# HELP {name} Window scores per machine (cosine distance to the nearest centroid; windows in which \
             the machine was idle left out), to choose a threshold from the machine's own history.\n# TYPE {name} \
             histogram\n"
        ));
        for m in self.exported_machines() {
            let machine = label(&m.name);
            for (le, n) in m.scores.cumulative() {
                s.push_str(&format!(
                    "{name}_bucket{{machine=\"{machine}\",le=\"{le}\"}} {n}\n"
                ));
            }
            s.push_str(&format!(
                "{name}_sum{{machine=\"{machine}\"}} {}\n{name}_count{{machine=\"{machine}\"}} {}\n",
                m.scores.sum.get_f64(),
                m.scores.count.get()
            ));
        }
        s
    }
}

/// One sample of a scrape: its name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// `GET /metrics` from a sonitor listening on `addr` (loopback): its samples. For the commands that ask a running
/// daemon (`sonitor reload`, `sonitor status`). A connection that is not accepted within 2 s (or `within`), and an
/// answer that does not come within `within`, are errors (`TimedOut` or `WouldBlock`: a stopped or hung process
/// whose socket the kernel still accepts on).
pub fn scrape(addr: SocketAddr, within: Duration) -> std::io::Result<Vec<Sample>> {
    let within = within.max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, within.min(Duration::from_secs(2)))?;
    s.set_read_timeout(Some(within))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    // Another program on the port (the daemon's own endpoint off, its port taken when it started): InvalidData.
    let foreign =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if !text.starts_with("HTTP/1.1 200") {
        return Err(foreign(&format!(
            "{addr} answered {:?}, not sonitor's metrics",
            text.lines().next().unwrap_or("nothing")
        )));
    }
    let samples = parse_samples(&text);
    if !samples.iter().any(|s| s.name.starts_with("sonitor_")) {
        return Err(foreign(&format!(
            "{addr} answered, but with no sonitor metrics"
        )));
    }
    Ok(samples)
}

/// Whose metrics `samples` are: the process id and node_id of `sonitor_process_id` (`None` for a sonitor from
/// before it was exported, or another program).
pub fn served_by(samples: &[Sample]) -> Option<(u32, String)> {
    let s = samples.iter().find(|s| s.name == "sonitor_process_id")?;
    Some((
        s.value as u32,
        s.label("node_id").unwrap_or_default().to_string(),
    ))
}

/// The samples of a text exposition (comments, headers and lines that are not samples are skipped).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut labels = std::collections::BTreeMap::new();
    let mut chars = line[name_end..].chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            // `key="value"` then `,` or `}`; `}` at once for no (more) labels.
            let key: String =
                std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != '}')).collect();
            if chars.next()? == '}' {
                break;
            }
            if chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.trim_start_matches(',').to_string(), value);
        }
    }
    let rest: String = chars.collect();
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped. Machine names are
/// letters, digits, `-` and `_`, but an input's name and a model's id are free text.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Connections served at once; one more is closed at once (a scraper retries at its next interval). Each holds
/// its thread at most [`REQUEST_DEADLINE`] plus the half second of draining after its answer, so that a client
/// that has its answer may still hold a slot for a moment: room for several scrapers and a few idle clients.
const MAX_CONNECTIONS: usize = 16;

/// The most a request may take to arrive, and its largest size: a scrape is one short `GET`.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` on `addr` (loopback) from a background thread; returns the bound address. Each connection
/// gets its own short-lived thread (at most [`MAX_CONNECTIONS`]): a client that connects and sends nothing holds
/// only its own thread until [`REQUEST_DEADLINE`], not every scrape behind it.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning a core.
                        log::warn!("metrics: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (metrics, done) = (metrics.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        answer(stream, &metrics);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(local)
}

/// [`serve`], and when `addr` cannot be bound (another program holds the port), a warning and another try every
/// `retry` from a background thread: the metrics are an aid, and a daemon that stopped for them would watch no
/// machine.
pub fn serve_or_retry(addr: &str, metrics: Arc<Metrics>, retry: Duration) {
    match serve(addr, metrics.clone()) {
        Ok(local) => log::info!("metrics on http://{local}/metrics"),
        Err(e) => {
            log::warn!(
                "{e:#}; the daemon runs without its metrics endpoint and tries again every {} s (another program \
                 on that port? set [metrics] listen)",
                retry.as_secs()
            );
            let addr = addr.to_string();
            let _ = std::thread::Builder::new()
                .name("metrics-bind".into())
                .spawn(move || loop {
                    std::thread::sleep(retry);
                    if let Ok(local) = serve(&addr, metrics.clone()) {
                        log::info!("metrics on http://{local}/metrics (the port is free now)");
                        return;
                    }
                });
        }
    }
}

/// Reads one request (until its blank line, within [`REQUEST_DEADLINE`] and [`MAX_REQUEST`] bytes) and answers
/// it. The request's rest is read before closing, so that the client gets the answer, not a reset.
fn answer(mut stream: TcpStream, metrics: &Metrics) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break false;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break false,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        // The blank line, in HTTP's CRLF or in the bare LF of a hand-typed request (`printf 'GET /metrics\n\n' | nc`).
        if req.windows(4).any(|w| w == b"\r\n\r\n") || req.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if req.len() > MAX_REQUEST {
            break false;
        }
    };
    let text = String::from_utf8_lossy(&req);
    let path = text.split_whitespace().nth(1).unwrap_or("");
    let (status, body, ctype) = if !complete {
        (
            "400 Bad Request",
            "an HTTP GET request, please\n".to_string(),
            "text/plain",
        )
    } else if path == "/metrics" || path == "/" {
        ("200 OK", metrics.render(), "text/plain; version=0.0.4")
    } else {
        (
            "404 Not Found",
            "not found: try /metrics\n".to_string(),
            "text/plain",
        )
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.shutdown(Shutdown::Write);
    // What the client still sends (a body, headers past the limit), briefly, so that closing does not reset the
    // connection before it has read the answer.
    let until = Instant::now() + Duration::from_millis(500);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || Instant::now() > until {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count logged at its first and at each power of two it passes, however much it grows at a time.
    #[test]
    fn a_count_is_due_a_log_line_at_its_first_and_at_each_doubling() {
        let c = Counter::default();
        // 3 (first), 4, 6, 11 (past 8), 12 (still under 16).
        let due = [3, 1, 2, 5, 1].map(|n| c.add_log_due(n));
        assert_eq!(due, [Some(3), Some(4), None, Some(11), None]);
        assert!(log_due(0, 1) && log_due(1, 2) && log_due(3, 8));
        assert!(!log_due(0, 0) && !log_due(5, 5) && !log_due(4, 7));
    }

    /// A budget writes its lines, counts the rest until its window ends, then hands the count over once and writes
    /// again.
    #[test]
    fn a_log_budget_writes_its_lines_then_counts_the_rest_until_its_window_ends() {
        let mut b = LogBudget::new(3, Duration::from_secs(600));
        let allowed = (0..10).map(|_| b.allow()).collect::<Vec<_>>();
        assert_eq!(allowed.iter().filter(|a| **a).count(), 3);
        assert!(
            allowed[..3].iter().all(|a| *a),
            "the first lines are written"
        );
        assert_eq!(b.roll(), None, "the window is not over");
        b.end_window();
        assert_eq!(b.roll(), Some(7));
        assert_eq!(b.roll(), None, "handed over once");
        assert!(b.allow());
        b.end_window();
        assert_eq!(b.roll(), None, "nothing left unwritten");
    }

    /// configs/README.md lists every metric the endpoint serves: 23 of them were named nowhere in the docs.
    #[test]
    fn every_metric_is_in_the_configuration_guide() {
        let guide = include_str!("../configs/README.md");
        let served = Metrics::new(&["mic".into()], &["pump-1".into()]).render();
        let families: Vec<&str> = served
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(families.len() > 50, "{served}");
        let missing: Vec<&&str> = families
            .iter()
            .filter(|f| !guide.contains(&format!("| `{f}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in configs/README.md's table: {missing:?}"
        );
    }

    /// What the server answers to `request`, sent in pieces with a pause between them.
    fn exchange(addr: SocketAddr, pieces: &[&[u8]]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            s.write_all(p).unwrap();
        }
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn idle_clients_split_and_large_requests_do_not_break_a_scrape() {
        let addr = serve("127.0.0.1:0", Arc::new(Metrics::new(&[], &[]))).unwrap();
        // Three clients that connect and say nothing: served one after another (as before), each would hold
        // the next scrape for its 2 s read timeout.
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let t = Instant::now();
        let out = exchange(addr, &[b"GET /metrics HTTP/1.1\r\n\r\n"]);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            t.elapsed() < REQUEST_DEADLINE,
            "the scrape waited {:?} behind idle clients",
            t.elapsed()
        );
        drop(idle);
        // Bare LF line ends.
        let out = exchange(addr, &[b"GET /metrics\n\n"]);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // A request line in two TCP segments.
        let out = exchange(addr, &[b"GET /met", b"rics HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // Headers past one read: the whole answer arrives, not a reset.
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "x".repeat(3000)
        );
        let out = exchange(addr, &[big.as_bytes()]);
        assert!(
            out.starts_with("HTTP/1.1 200") && out.contains("sonitor_outbox_messages"),
            "{out}"
        );
    }

    #[test]
    fn a_busy_port_is_tried_again_instead_of_stopping_the_daemon() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        serve_or_retry(
            &addr.to_string(),
            Arc::new(Metrics::new(&[], &[])),
            Duration::from_millis(100),
        );
        drop(holder);
        let t = Instant::now();
        let out = loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    break out;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(10), "never served");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(out.contains("sonitor_outbox_messages"), "{out}");
    }

    /// The score histogram in Prometheus' form: cumulative buckets (a score on a bound counts in that bound's
    /// bucket), `+Inf` equal to the count, and the sum.
    #[test]
    fn window_scores_are_a_cumulative_histogram() {
        let m = Metrics::new(&[], &["pump".into(), "fan".into()]);
        for v in [0.0, 0.001, 0.0011, 0.05, 0.051, 0.3, 2.0, 2.5] {
            m.machines[0].scores.observe(v);
        }
        let text = m.render();
        let value = |series: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"));
            line[series.len() + 1..].parse().unwrap()
        };
        let bucket = |le: &str| {
            value(&format!(
                "sonitor_window_score_bucket{{machine=\"pump\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.001"), 2.0);
        assert_eq!(bucket("0.0012"), 3.0);
        assert_eq!(bucket("0.05"), 4.0);
        assert_eq!(bucket("0.06"), 5.0);
        assert_eq!(bucket("0.3"), 6.0);
        assert_eq!(bucket("2"), 7.0);
        assert_eq!(bucket("+Inf"), 8.0);
        assert_eq!(value("sonitor_window_score_count{machine=\"pump\"}"), 8.0);
        assert!((value("sonitor_window_score_sum{machine=\"pump\"}") - 4.9031).abs() < 1e-9);
        assert_eq!(value("sonitor_window_score_count{machine=\"fan\"}"), 0.0);
        // Every bucket of each machine, in order, non-decreasing.
        let pump: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("sonitor_window_score_bucket{machine=\"pump\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(pump.len(), SCORE_BUCKETS.len() + 1);
        assert!(pump.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Label values in the text format's escapes: an input's name and a model's id are free text, and a quote
    /// in one would otherwise end the label and break the whole scrape.
    #[test]
    fn free_text_labels_are_escaped() {
        let m = Metrics::new(&["usb \"left\" \\ mic".into()], &["pump".into()]);
        *m.machines[0].model_id.lock().unwrap() = "run \"7\"\nb".into();
        let text = m.render();
        assert!(
            text.contains("sonitor_input_up{input=\"usb \\\"left\\\" \\\\ mic\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "sonitor_model_info{machine=\"pump\",model_id=\"run \\\"7\\\"\\nb\"} 1\n"
            ),
            "{text}"
        );
    }

    /// What `render` writes, `parse_samples` reads back: names, escaped labels, values (the commands that ask a
    /// running daemon read it so).
    #[test]
    fn the_exposition_parses_back() {
        let m = Metrics::new(&["usb \"left\", mic".into()], &["pump".into()]);
        *m.machines[0].model_id.lock().unwrap() = "run=7,\"b\"\\".into();
        m.machines[0].threshold.set_f64(0.0486);
        let samples = parse_samples(&m.render());
        let find = |name: &str| samples.iter().find(|s| s.name == name).unwrap();
        assert_eq!(find("sonitor_threshold").value, 0.0486);
        assert_eq!(find("sonitor_threshold").label("machine"), Some("pump"));
        let info = find("sonitor_model_info");
        assert_eq!(info.label("model_id"), Some("run=7,\"b\"\\"));
        assert_eq!(info.label("machine"), Some("pump"));
        assert_eq!(
            find("sonitor_input_up").label("input"),
            Some("usb \"left\", mic")
        );
        assert_eq!(find("sonitor_outbox_messages").labels.len(), 0);
        let inf = samples
            .iter()
            .find(|s| s.name == "sonitor_window_score_bucket" && s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.value, 0.0);
        assert!(samples.iter().all(|s| !s.name.starts_with('#')));
        assert_eq!(parse_samples("# HELP x y\nbad{a=b} 1\nok 2\n").len(), 1);
    }

    #[test]
    fn renders_and_serves() {
        let m = Arc::new(Metrics::new(&["mic".into()], &["pump".into()]));
        m.inputs[0].dropped_samples.add(7);
        m.machines[0].score.set_f64(0.25);
        let text = m.render();
        assert!(
            text.contains("sonitor_dropped_samples_total{input=\"mic\"} 7"),
            "{text}"
        );
        assert!(text.contains("sonitor_score{machine=\"pump\"} 0.25"));
        assert!(text.contains("# TYPE sonitor_window_score histogram\n"));
        let addr = serve("127.0.0.1:0", m).unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("sonitor_outbox_messages 0"));
        assert!(out.contains("sonitor_outbox_unpersisted_messages_total 0"));
        assert!(out.contains("sonitor_outbox_memory_only_messages 0"));
    }
}
