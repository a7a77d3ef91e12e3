//! `sonitor status`: what the running daemon watches and how, for someone logged in on the device: each machine's
//! alarm, latest score, the threshold in force, its health, whether it is watched or muted and its model, then the
//! inputs and MQTT. Read from the daemon's metrics, the same numbers a Prometheus scrape gets.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, EXIT_CONFIG};
use crate::metrics::{Sample, HEALTH_VALUES};
use crate::reload::EXIT_NO_DAEMON;

/// What `sonitor status` shows, read from a scrape's samples: `None` where the metrics do not say (an older
/// daemon). `--json` prints it as it is.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The daemon's process id, when known.
    pub pid: Option<u32>,
    pub machines: Vec<MachineStatus>,
    pub inputs: Vec<InputStatus>,
    /// `[mqtt] enabled` (`None`: a daemon from before it was exported).
    pub mqtt_enabled: Option<bool>,
    pub mqtt_connected: Option<bool>,
    /// Connected, but the broker has not delivered this daemon's own announcement back: it may drop what the daemon
    /// publishes (`sonitor_mqtt_echo_missing`).
    pub mqtt_echo_missing: Option<bool>,
    /// Connected, but the broker has not delivered the probe on the command topics back: commands do not reach the
    /// daemon (`sonitor_mqtt_commands_unread`).
    pub mqtt_commands_unread: Option<bool>,
    /// Connections made again because the broker acknowledged none of the messages in flight (alarm messages,
    /// retained values; `sonitor_mqtt_ack_stalls_total`).
    pub mqtt_ack_stalls: Option<u64>,
    /// Announcements of another sonitor under this node's topics since the start
    /// (`sonitor_mqtt_node_conflicts_total`).
    pub mqtt_node_conflicts: Option<u64>,
    /// Alarm messages waiting in the outbox for the broker, and those it dropped.
    pub outbox_messages: Option<u64>,
    pub outbox_dropped: Option<u64>,
    /// Whether the last reload applied the file (true when none was asked for).
    pub last_reload_successful: Option<bool>,
    /// Whether changes of the file wait for a restart.
    pub restart_pending: Option<bool>,
    /// Alarm messages waiting in memory only (the outbox could not write them), and whether the last save of the
    /// alarm states failed: what a restart now would lose.
    pub outbox_memory_only: Option<u64>,
    pub state_unsaved: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct MachineStatus {
    pub name: String,
    pub alarm: Option<bool>,
    /// The latest window's score.
    pub score: Option<f64>,
    /// The threshold in force, and the one below which an alarm clears.
    pub threshold: Option<f64>,
    pub threshold_off: Option<f64>,
    /// The threshold its bundle calibrated for its section (`None`: a daemon from before it was exported).
    pub threshold_calibrated: Option<f64>,
    /// `OK`, `SILENT`, `CLIPPING`, `NO_AUDIO` or `NO_SCORES`.
    pub health: Option<String>,
    /// Why it is not `OK` (its retained `state`'s `health_reason`).
    pub health_reason: Option<String>,
    /// Whether it is watched (`enabled`), and muted.
    pub enabled: Option<bool>,
    pub muted: Option<bool>,
    /// Whether it counts as not running (its level below `idle_below_dbfs`): its windows are not judged
    /// (`None`: a daemon from before it was exported).
    pub idle: Option<bool>,
    pub model_id: Option<String>,
    /// Windows judged since the daemon started (`sonitor_window_score_count`), and the score that 99.9 % of them
    /// stayed under ([`SCORE_QUANTILE`]; a bound of the histogram's buckets, so at or just above the true
    /// quantile): after a long normal run, a candidate threshold.
    pub windows_scored: Option<u64>,
    pub score_p999: Option<f64>,
    /// Windows dropped on a full queue since the start (`sonitor_dropped_windows_total`): the features and
    /// inference threads did not keep up, and the machine was not watched over them.
    pub windows_dropped: Option<u64>,
}

/// The quantile of a machine's window scores that `sonitor status` gives.
pub const SCORE_QUANTILE: f64 = 0.999;

/// The upper bound of the first bucket of a cumulative histogram (`(le, count up to le)`, in order) that holds the
/// `q` quantile of `total` observations; `None` without observations.
fn bucket_quantile(buckets: &[(f64, f64)], total: f64, q: f64) -> Option<f64> {
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

#[derive(Debug, Serialize)]
pub struct InputStatus {
    pub name: String,
    pub up: Option<bool>,
    pub dropped_samples: Option<u64>,
    pub overruns: Option<u64>,
    pub reopens: Option<u64>,
    /// Breaks after which its windows started again (`sonitor_input_gaps_total`: lost audio, or a looped file
    /// starting over), and stream errors (`sonitor_input_errors_total`).
    pub gaps: Option<u64>,
    pub errors: Option<u64>,
}

impl Snapshot {
    /// From a scrape's samples (`pid`: the daemon's, when known).
    pub fn of(samples: &[Sample], pid: Option<u32>) -> Self {
        let of = |name: &str, key: &str, who: &str| {
            samples
                .iter()
                .find(|s| s.name == name && s.label(key) == Some(who))
                .map(|s| s.value)
        };
        let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        let names = |name: &str, key: &str| -> Vec<String> {
            samples
                .iter()
                .filter(|s| s.name == name)
                .filter_map(|s| s.label(key).map(String::from))
                .collect()
        };
        let flag = |v: Option<f64>| v.map(|v| v == 1.0);
        let count = |v: Option<f64>| v.map(|v| v as u64);
        let labelled = |name: &str, m: &str, key: &str, value: Option<f64>| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.label("machine") == Some(m)
                        && value.is_none_or(|v| s.value == v)
                })
                .and_then(|s| s.label(key))
                .map(String::from)
        };
        let machines = names("sonitor_alarm", "machine")
            .into_iter()
            .map(|m| {
                let windows = of("sonitor_window_score_count", "machine", &m);
                let buckets: Vec<(f64, f64)> = samples
                    .iter()
                    .filter(|s| {
                        s.name == "sonitor_window_score_bucket" && s.label("machine") == Some(&m)
                    })
                    .filter_map(|s| Some((s.label("le")?.parse().ok()?, s.value)))
                    .collect();
                MachineStatus {
                    alarm: flag(of("sonitor_alarm", "machine", &m)),
                    // None before its first window (the gauge reads 0 then; the retained state says null).
                    score: of("sonitor_score", "machine", &m)
                        .filter(|_| windows.is_none_or(|n| n > 0.0)),
                    threshold: of("sonitor_threshold", "machine", &m),
                    threshold_off: of("sonitor_threshold_off", "machine", &m),
                    threshold_calibrated: of("sonitor_threshold_calibrated", "machine", &m),
                    health: labelled("sonitor_machine_health", &m, "health", Some(1.0))
                        .filter(|h| HEALTH_VALUES.contains(&h.as_str())),
                    health_reason: labelled("sonitor_health_reason_info", &m, "reason", None),
                    enabled: flag(of("sonitor_enabled", "machine", &m)),
                    muted: flag(of("sonitor_muted", "machine", &m)),
                    idle: flag(of("sonitor_idle", "machine", &m)),
                    model_id: labelled("sonitor_model_info", &m, "model_id", None),
                    windows_scored: count(windows),
                    score_p999: windows.and_then(|n| bucket_quantile(&buckets, n, SCORE_QUANTILE)),
                    windows_dropped: count(of("sonitor_dropped_windows_total", "machine", &m)),
                    name: m,
                }
            })
            .collect();
        let inputs = names("sonitor_input_up", "input")
            .into_iter()
            .map(|i| InputStatus {
                up: flag(of("sonitor_input_up", "input", &i)),
                dropped_samples: count(of("sonitor_dropped_samples_total", "input", &i)),
                overruns: count(of("sonitor_input_xruns_total", "input", &i)),
                reopens: count(of("sonitor_input_reopens_total", "input", &i)),
                gaps: count(of("sonitor_input_gaps_total", "input", &i)),
                errors: count(of("sonitor_input_errors_total", "input", &i)),
                name: i,
            })
            .collect();
        Snapshot {
            pid,
            machines,
            inputs,
            mqtt_enabled: flag(one("sonitor_mqtt_enabled")),
            mqtt_connected: flag(one("sonitor_mqtt_connected")),
            mqtt_echo_missing: flag(one("sonitor_mqtt_echo_missing")),
            mqtt_node_conflicts: count(one("sonitor_mqtt_node_conflicts_total")),
            mqtt_commands_unread: flag(one("sonitor_mqtt_commands_unread")),
            mqtt_ack_stalls: count(one("sonitor_mqtt_ack_stalls_total")),
            outbox_messages: count(one("sonitor_outbox_messages")),
            outbox_dropped: count(one("sonitor_outbox_dropped_messages_total")),
            last_reload_successful: flag(one("sonitor_config_last_reload_successful")),
            restart_pending: flag(one("sonitor_config_restart_pending")),
            outbox_memory_only: count(one("sonitor_outbox_memory_only_messages")),
            state_unsaved: flag(one("sonitor_state_unsaved")),
        }
    }

    /// What needs someone's attention now, one item per machine, input or service, in the order of the tables:
    /// an alarm on, a health other than OK, a machine not watched or muted, an input down, MQTT not connected or
    /// not delivering, a reload refused or changes waiting for a restart. Empty when nothing does. Counts since
    /// the start (windows dropped, messages dropped) are history, not a state: the tables show them.
    pub fn attention(&self) -> Vec<String> {
        let mut items = Vec::new();
        for m in &self.machines {
            let mut what = Vec::new();
            if m.alarm == Some(true) {
                what.push("alarm ON".to_string());
            }
            if let Some(h) = m.health.as_deref().filter(|h| *h != "OK") {
                match &m.health_reason {
                    Some(why) => what.push(format!("{h} ({why})")),
                    None => what.push(h.to_string()),
                }
            }
            if m.enabled == Some(false) {
                what.push("not watched".into());
            } else if m.idle == Some(true) {
                // Stopped, or a level that sits under idle_below_dbfs while it runs: either way, not judged.
                what.push("not running (not judged)".into());
            }
            if m.muted == Some(true) {
                what.push("muted".into());
            }
            // A threshold far from the calibrated one (a mistyped `threshold/set`, review29): said while in force.
            if let (Some(t), Some(c)) = (m.threshold, m.threshold_calibrated) {
                if let Some((ratio, above)) = crate::check::how_far(t, c) {
                    what.push(format!(
                        "threshold {t:?} {}× {} its calibrated {c:?} ({})",
                        crate::check::ratio_shown(ratio),
                        if above { "above" } else { "below" },
                        if above {
                            "it may never alarm"
                        } else {
                            "normal sound keeps the alarm on"
                        }
                    ));
                }
            }
            if !what.is_empty() {
                items.push(format!("{} {}", m.name, what.join(", ")));
            }
        }
        for i in &self.inputs {
            if i.up == Some(false) {
                items.push(format!("input {} down", i.name));
            }
        }
        if self.mqtt_enabled != Some(false) {
            match (self.mqtt_connected, self.mqtt_echo_missing) {
                (Some(false), _) => items.push(format!(
                    "MQTT not connected ({} alarm message(s) wait)",
                    self.outbox_messages.unwrap_or(0)
                )),
                (Some(true), Some(true)) => {
                    items.push("MQTT: the broker does not deliver back".into())
                }
                _ => {}
            }
            if self.mqtt_connected == Some(true) && self.mqtt_commands_unread == Some(true) {
                items.push(
                    "MQTT: commands do not reach the daemon (the broker does not deliver its command topics to it)"
                        .into(),
                );
            }
            // A broker that takes alarm messages and acknowledges none (review29): while some still wait.
            if let (Some(n), Some(w)) = (
                self.mqtt_ack_stalls.filter(|n| *n > 0),
                self.outbox_messages.filter(|w| *w > 0),
            ) {
                items.push(format!(
                    "MQTT: the broker has acknowledged no alarm message for long, {n} time(s) since the start, \
                     and {w} wait (faulty broker?)"
                ));
            }
            // Two daemons with one node_id overwrite each other's retained alarms and take each other's
            // connection: the log and a counter said it, `status` did not (review29).
            if let Some(n) = self.mqtt_node_conflicts.filter(|n| *n > 0) {
                items.push(format!(
                    "another sonitor publishes under this node's topics ({n} time(s) since the start; the log \
                     names it): give each device its own node_id"
                ));
            }
        }
        // What a restart now would lose: the state directory takes no write (a full or read-only filesystem,
        // another user's files). The log says why (review24: "attention: none" over it).
        if let Some(n) = self.outbox_memory_only.filter(|n| *n > 0) {
            items.push(format!(
                "{n} alarm message(s) in memory only (the outbox cannot be written)"
            ));
        }
        if self.state_unsaved == Some(true) {
            items.push(
                "the alarm states cannot be saved (a restart now would not know them)".into(),
            );
        }
        if self.last_reload_successful == Some(false) {
            items.push("the last reload was refused".into());
        }
        if self.restart_pending == Some(true) {
            items.push("changes wait for a restart".into());
        }
        items
    }

    /// The snapshot as `--json` prints it: its fields, and [`Self::attention`]'s items as `attention`.
    pub fn json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Shown<'a> {
            #[serde(flatten)]
            snapshot: &'a Snapshot,
            attention: Vec<String>,
        }
        serde_json::to_string_pretty(&Shown {
            snapshot: self,
            attention: self.attention(),
        })
    }

    /// The status as text: a line of what needs attention, a table of the machines, one of the inputs, then MQTT
    /// and the configuration.
    pub fn text(&self) -> String {
        let yes = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let number = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.4}"));
        let count = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        let mut rows = vec![[
            "machine",
            "alarm",
            "score",
            "threshold",
            "health",
            "watched",
            "muted",
            "model",
            "p99.9 (windows)",
            "dropped",
        ]
        .map(String::from)];
        for m in &self.machines {
            rows.push([
                m.name.clone(),
                match m.alarm {
                    Some(true) => "ON",
                    Some(false) => "OFF",
                    None => "?",
                }
                .into(),
                number(m.score),
                number(m.threshold),
                m.health.clone().unwrap_or_else(|| "?".into()),
                match (m.enabled, m.idle) {
                    (Some(true), Some(true)) => "not running".into(),
                    (enabled, _) => yes(enabled).into(),
                },
                yes(m.muted).into(),
                m.model_id.clone().unwrap_or_else(|| "?".into()),
                match (m.score_p999, m.windows_scored) {
                    (Some(p), Some(n)) => format!("{p} ({n})"),
                    _ => "-".into(),
                },
                count(m.windows_dropped),
            ]);
        }
        let on = self
            .machines
            .iter()
            .filter(|m| m.alarm == Some(true))
            .count();
        let attention = self.attention();
        let mut out = format!(
            "{}: {} machine(s), {on} alarm(s) on\n{}\n",
            crate::state_lock::holder_named(self.pid),
            self.machines.len(),
            if attention.is_empty() {
                "attention: none (every machine OK, running and watched, every input up)"
                    .to_string()
            } else {
                format!("attention: {}", attention.join("; "))
            }
        );
        out.push_str(&table(&rows));
        out.push_str(
            "(p99.9: the score 99.9% of its windows since the start stayed under; after a long normal run, a \
             candidate threshold. dropped: windows not scored because the CPU did not keep up)\n",
        );
        let mut inputs = vec![[
            "input",
            "up",
            "dropped samples",
            "overruns",
            "gaps",
            "errors",
            "reopens",
        ]
        .map(String::from)];
        for i in &self.inputs {
            inputs.push([
                i.name.clone(),
                yes(i.up).into(),
                count(i.dropped_samples),
                count(i.overruns),
                count(i.gaps),
                count(i.errors),
                count(i.reopens),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&inputs));
        out.push_str(&format!(
            "\nMQTT {}; {} alarm message(s) waiting in the outbox ({} dropped)\n",
            match (self.mqtt_connected, self.mqtt_echo_missing) {
                _ if self.mqtt_enabled == Some(false) => {
                    "off ([mqtt] enabled = false: the outbox keeps the alarm messages for a start with it on)"
                }
                (Some(true), Some(true)) => {
                    "connected, but the broker does not deliver this daemon's own announcement back: it may drop \
                     what the daemon publishes, alarms included, or only refuse it reading (its ACL, its size \
                     limit; its log says)"
                }
                (Some(true), _) => "connected",
                (Some(false), _) => "not connected",
                (None, _) => "?",
            },
            count(self.outbox_messages),
            count(self.outbox_dropped),
        ));
        out.push_str(match (self.last_reload_successful, self.restart_pending) {
            (Some(false), _) => {
                "the last reload was refused: the file on disk is not the one running (its log says why)\n"
            }
            (_, Some(true)) => {
                "the last reload applied the file, but some of its changes wait for a restart (its log names them)\n"
            }
            _ => "the configuration running is the file's as last loaded\n",
        });
        out
    }
}

/// Rows as columns padded to their widest cell.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `sonitor status --config FILE [--json]`: the exit status (0: printed; 78: the file cannot be used (it does not
/// parse, its settings are refused, a machine's bundle is not there, or the daemon refused it at its last
/// reload), the running daemon's status printed all the same when its lock file can be found; 69: no daemon
/// answered on the running daemon's metrics address, or the file's).
pub fn status(config_path: &Path, json: bool) -> i32 {
    let loaded = Config::load(config_path);
    let cfg = loaded.as_ref().ok();
    // What makes the file unusable: it does not load, or `validate` refuses it without building the models. The
    // moment someone asks is often the moment the file went wrong: `systemctl reload` refused it, and the daemon
    // runs what it loaded before; its lock file, in the state directory the file still names, says where.
    let problems = match &loaded {
        Err(e) => Some(e.to_string()),
        Ok(cfg) => {
            let p = file_problems(cfg);
            (!p.is_empty()).then(|| format!("{}: {}", config_path.display(), p.join("; ")))
        }
    };
    let dir = match cfg {
        Some(c) => Some(c.state_dir.clone()),
        None => Config::state_dir_of(config_path),
    };
    let held = dir.as_deref().and_then(crate::state_lock::holder);
    let holder = held.clone().unwrap_or_default();
    // The daemon runs another file (a copy, a draft, another path): what it shows, a refused reload included, is
    // that file's, not this one's.
    let theirs = holder.runs_another_file(config_path).map(Path::to_path_buf);
    // The running daemon's metrics, where its lock file says (the file may have moved `[metrics] listen` since,
    // which only a restart applies), else the file's.
    let (code, reload_ok) = match (holder.metrics.or(cfg.and_then(|c| c.metrics.addr())), &dir) {
        (Some(addr), _) => {
            let free = held.is_none() && dir.as_deref().is_some_and(crate::state_lock::known_free);
            show(
                addr,
                held,
                free,
                dir.as_deref(),
                cfg.map(|c| c.node_id.as_str()),
                json,
            )
        }
        (None, None) => {
            // A file that does not load says why below, once.
            if problems.is_none() {
                eprintln!(
                    "sonitor status: {} does not say where the state directory is (it has no state_dir), so the \
                     running daemon cannot be found",
                    config_path.display()
                );
            }
            (EXIT_NO_DAEMON, None)
        }
        (None, Some(dir)) => {
            match (holder.pid, cfg) {
                (Some(pid), _) => eprintln!(
                    "sonitor status: sonitor (pid {pid}) runs on {}, with its metrics off, and they are what it \
                     reads",
                    dir.display()
                ),
                (None, Some(c)) if !c.metrics.enabled => eprintln!(
                    "sonitor status: the metrics are off ([metrics] enabled = false), and they are what it reads: \
                     the retained MQTT topics under {}/ say the same",
                    c.topic_base()
                ),
                (None, Some(c)) => eprintln!(
                    "sonitor status: no sonitor answered on {} (not an address:port)",
                    c.metrics.listen
                ),
                (None, None) => eprintln!(
                    "sonitor status: no sonitor runs on the state directory {}",
                    dir.display()
                ),
            }
            (EXIT_NO_DAEMON, None)
        }
    };
    if let Some(p) = problems {
        if dir.is_none() {
            // From the load's own error: opening the file again here would wait for ever on a FIFO.
            let denied = loaded.as_ref().is_err_and(|e| e.permission_denied());
            eprintln!(
                "sonitor status: {p}; no daemon was looked for: it is found through the state directory the file \
                 names, which cannot be read from it{}",
                if denied {
                    format!(" (`sudo sonitor status --config {}` can)", config_path.display())
                } else {
                    String::new()
                }
            );
            return EXIT_CONFIG;
        }
        match (code, &theirs) {
            // A reload re-reads the daemon's own file, never this one: only a restart with it would be refused.
            (0, Some(theirs)) => eprintln!(
                "sonitor status: {p}; the daemon above runs {}, not this file, and a reload re-reads that one: a \
                 restart with this file would be refused (`sonitor validate` names every problem)",
                theirs.display()
            ),
            _ => eprintln!(
                "sonitor status: {p}{}; the file as it is now would be refused by a reload and by a restart \
                 (`sonitor validate` names every problem)",
                if code == 0 {
                    "; the daemon above runs the configuration it loaded before"
                } else {
                    ""
                }
            ),
        }
        return EXIT_CONFIG;
    }
    if let (0, Some(theirs)) = (code, &theirs) {
        eprintln!(
            "sonitor status: the daemon runs {}, not {}: what it shows is that file's; {} takes effect there only \
             if the daemon is restarted with it",
            theirs.display(),
            config_path.display(),
            config_path.display()
        );
    }
    if code == 0 && reload_ok == Some(false) {
        eprintln!(
            "sonitor status: the daemon refused {} at its last reload, and runs what it loaded before (`sonitor \
             validate` names why; the daemon's log too, if the file was mended since: then `sonitor reload` \
             applies it)",
            theirs.as_deref().unwrap_or(config_path).display()
        );
        return EXIT_CONFIG;
    }
    code
}

/// What `validate` refuses in a file that loads, without building the models: settings, and bundles that are not
/// there.
fn file_problems(cfg: &Config) -> Vec<String> {
    let mut problems = cfg.static_problems();
    for m in &cfg.machines {
        if !m.bundle.join(sonitor_core::bundle::MANIFEST_FILE).is_file() {
            problems.push(format!(
                "machine '{}': no bundle in {}",
                m.name,
                m.bundle.display()
            ));
        }
    }
    problems
}

/// Prints the status the daemon's metrics at `addr` give (`held`: what the holder of the state directory `dir`
/// wrote in its lock file; `free`: nothing holds it, as far as can be told; `node`: the file's node_id): 0, or
/// [`EXIT_NO_DAEMON`] when nothing answers there, or the metrics there are another process's; and whether the
/// daemon's last reload applied the file.
fn show(
    addr: std::net::SocketAddr,
    held: Option<crate::state_lock::Holder>,
    free: bool,
    dir: Option<&Path>,
    node: Option<&str>,
    json: bool,
) -> (i32, Option<bool>) {
    let pid = held.and_then(|h| h.pid);
    let dir = dir.map_or(String::new(), |d| d.display().to_string());
    match crate::metrics::scrape(addr, Duration::from_secs(5)) {
        Ok(samples) => {
            // Another daemon's metrics (this one's port was taken when it started), or metrics served while
            // nothing holds the state directory: not this configuration's daemon.
            match (free, pid, crate::metrics::served_by(&samples)) {
                (false, Some(p), Some((q, node))) if p != q => {
                    eprintln!(
                        "sonitor status: {addr} serves the metrics of another sonitor (pid {q}, node_id {node}), not \
                         those of sonitor (pid {p}), which runs on the state directory {dir}: that one runs without \
                         its metrics endpoint (the port was taken when it started; it tries again every 30 s). Give \
                         it a [metrics] listen of its own and restart it"
                    );
                    return (EXIT_NO_DAEMON, None);
                }
                // Who holds the state directory cannot be read here (a user without access to it): the metrics
                // must at least be this file's node's.
                (false, None, Some((q, n))) if node.is_some_and(|node| node != n) => {
                    eprintln!(
                        "sonitor status: {addr} serves the metrics of sonitor node_id {n} (pid {q}), not of this \
                         file's node_id {}: this file's daemon (if one runs: its state directory {dir} cannot be \
                         read here, run `sudo sonitor status`) runs without its metrics endpoint",
                        node.unwrap_or_default()
                    );
                    return (EXIT_NO_DAEMON, None);
                }
                (true, _, served) => {
                    let whose = served.map_or("another program's".to_string(), |(q, node)| {
                        format!("another sonitor's (pid {q}, node_id {node})")
                    });
                    eprintln!(
                        "sonitor status: no sonitor runs on the state directory {dir}; {addr} serves {whose} \
                         metrics, another configuration's"
                    );
                    return (EXIT_NO_DAEMON, None);
                }
                _ => {}
            }
            let snapshot = Snapshot::of(&samples, pid);
            if json {
                match snapshot.json() {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("sonitor status: {e}");
                        return (1, snapshot.last_reload_successful);
                    }
                }
            } else {
                print!("{}", snapshot.text());
            }
            (0, snapshot.last_reload_successful)
        }
        Err(e) => {
            if e.kind() == std::io::ErrorKind::InvalidData {
                eprintln!(
                    "sonitor status: {e}: another program holds {addr}{}",
                    if pid.is_some() {
                        ", so the sonitor that holds the state directory runs without its metrics endpoint (the port \
                         was taken when it started; it tries again every 30 s): give it a [metrics] listen of its \
                         own and restart it"
                    } else {
                        ""
                    }
                );
                return (EXIT_NO_DAEMON, None);
            }
            let silent = matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
            eprintln!(
                "sonitor status: no sonitor answered on {addr} ({e}){}",
                match (pid.is_some(), silent) {
                    (true, true) => " though one holds the state directory: it took the connection and said \
                                     nothing within 5 s (stopped, or hung? `systemctl status sonitor`, its log)",
                    (true, false) => " though one holds the state directory: still starting?",
                    (false, _) => ": is it running (`systemctl status sonitor`)?",
                }
            );
            (EXIT_NO_DAEMON, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{parse_samples, Metrics};

    /// The bound of the bucket the quantile falls in: 999 of 1000 under 0.01 is the 99.9 % quantile there; one
    /// window fewer under it moves it to the next bucket that holds enough.
    #[test]
    fn the_quantile_is_the_bound_of_the_bucket_that_holds_it() {
        let inf = f64::INFINITY;
        let b = [(0.01, 999.0), (0.02, 999.0), (0.5, 1000.0), (inf, 1000.0)];
        assert_eq!(bucket_quantile(&b, 1000.0, 0.999), Some(0.01));
        let b = [(0.01, 998.0), (0.02, 998.0), (0.5, 1000.0), (inf, 1000.0)];
        assert_eq!(bucket_quantile(&b, 1000.0, 0.999), Some(0.5));
        assert_eq!(bucket_quantile(&[(inf, 0.0)], 0.0, 0.999), None);
    }

    /// A threshold in force ten times or more from the one its bundle calibrated is named while it is in force
    /// (review29: a `threshold/set 1e-300` took, and every window alarmed, under `attention: none`); one of the
    /// same order is not.
    #[test]
    fn a_threshold_far_from_the_calibrated_one_needs_attention() {
        let m = Metrics::new(&["mic".into()], &["pump-1".into(), "fan-2".into()]);
        for mm in &m.machines {
            mm.enabled.set(1);
            mm.threshold_calibrated.set_f64(0.042);
        }
        m.inputs[0].up.set(1);
        m.last_reload_ok.set(1);
        m.machines[0].threshold.set_f64(1e-300);
        m.machines[1].threshold.set_f64(0.06);
        let attention = || Snapshot::of(&parse_samples(&m.render()), None).attention();
        assert_eq!(
            attention(),
            ["pump-1 threshold 1e-300 4e298× below its calibrated 0.042 (normal sound keeps the alarm on)"]
        );
        m.machines[0].threshold.set_f64(0.042);
        m.machines[1].threshold.set_f64(0.9);
        assert_eq!(
            attention(),
            ["fan-2 threshold 0.9 21× above its calibrated 0.042 (it may never alarm)"]
        );
    }

    #[test]
    fn a_machine_per_row_with_what_is_in_force() {
        let m = Metrics::new(&["mic".into()], &["pump-1".into(), "fan-2".into()]);
        let pump = &m.machines[0];
        pump.alarm.set(1);
        pump.score.set_f64(0.3091);
        pump.threshold.set_f64(0.0486);
        pump.enabled.set(1);
        *pump.model_id.lock().unwrap() = "combined-7".into();
        for k in 0..1000 {
            pump.scores.observe(if k == 0 { 0.5 } else { 0.01 });
        }
        for _ in 0..3 {
            let _ = pump.window_dropped();
        }
        m.inputs[0].gaps.inc();
        m.machines[1].health.set(4);
        *m.machines[1].health_reason.lock().unwrap() = "the model fails, \"x\"".into();
        m.inputs[0].up.set(1);
        m.last_reload_ok.set(0);
        let text = Snapshot::of(&parse_samples(&m.render()), Some(42)).text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0], "sonitor (pid 42): 2 machine(s), 1 alarm(s) on",
            "{text}"
        );
        assert_eq!(
            lines[1],
            "attention: pump-1 alarm ON; fan-2 NO_SCORES (the model fails, \"x\"), not watched; the last reload \
             was refused",
            "{text}"
        );
        let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            words(lines[3]),
            [
                "pump-1",
                "ON",
                "0.3091",
                "0.0486",
                "OK",
                "yes",
                "no",
                "combined-7",
                "0.01",
                "(1000)",
                "3"
            ],
            "{text}"
        );
        assert_eq!(words(lines[4])[4], "NO_SCORES", "{text}");
        // No model id yet (an empty cell), no p99.9, nothing dropped.
        assert_eq!(words(lines[4])[7..], ["-", "0"], "{text}");
        assert!(text.contains("\nmic    yes"), "{text}");
        // MQTT off ([mqtt] enabled = false) is said as such, not as a connection that failed.
        assert!(
            text.contains("\nMQTT off ([mqtt] enabled = false"),
            "{text}"
        );
        assert!(text.contains("the last reload was refused"), "{text}");
        m.last_reload_ok.set(1);
        m.restart_pending.set(1);
        m.mqtt_enabled.set(1);
        m.mqtt_node_conflicts.inc();
        // Not connected: what the probe says waits for a connection.
        m.mqtt_commands_unread.set(1);
        let snapshot = Snapshot::of(&parse_samples(&m.render()), None);
        let text = snapshot.text();
        assert!(
            text.contains("some of its changes wait for a restart")
                && text.contains("\nMQTT not connected;"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nattention: pump-1 alarm ON; fan-2 NO_SCORES (the model fails, \"x\"), not watched; MQTT not \
                 connected (0 alarm \
                 message(s) wait); another sonitor publishes under this node's topics (1 time(s) since the \
                 start; the log names it): give each device its own node_id; changes wait for a restart\n"
            ),
            "{text}"
        );
        // `--json`: the same, as fields.
        let j: serde_json::Value = serde_json::from_str(&snapshot.json().unwrap()).unwrap();
        assert_eq!(j["attention"][4], "changes wait for a restart");
        assert_eq!(j["pid"], serde_json::Value::Null);
        assert_eq!(j["restart_pending"], true);
        assert_eq!(j["last_reload_successful"], true);
        let pump = &j["machines"][0];
        assert_eq!(pump["name"], "pump-1");
        assert_eq!(pump["alarm"], true);
        assert_eq!(pump["threshold"], 0.0486);
        assert_eq!(pump["health"], "OK");
        assert_eq!(pump["health_reason"], serde_json::Value::Null);
        assert_eq!(pump["model_id"], "combined-7");
        assert_eq!(pump["score_p999"], 0.01);
        assert_eq!(pump["windows_scored"], 1000);
        assert_eq!(j["machines"][1]["score_p999"], serde_json::Value::Null);
        // Not scored yet: no score, not 0.
        assert_eq!(j["machines"][1]["score"], serde_json::Value::Null);
        assert_eq!(j["machines"][1]["health"], "NO_SCORES");
        assert_eq!(j["inputs"][0]["name"], "mic");
        assert_eq!(j["inputs"][0]["up"], true);
        assert_eq!(pump["windows_dropped"], 3);
        assert_eq!(j["inputs"][0]["gaps"], 1);
        assert_eq!(j["inputs"][0]["errors"], 0);
        assert_eq!(pump["idle"], false);

        // A machine that counts as not running (its level under idle_below_dbfs) is not judged: shown as such in
        // its row, in the attention line and in --json (review24: "watched yes" and "attention: none").
        m.machines[0].idle.set(1);
        let snapshot = Snapshot::of(&parse_samples(&m.render()), None);
        let text = snapshot.text();
        assert!(
            text.contains("\nattention: pump-1 alarm ON, not running (not judged);"),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("pump-1")).unwrap();
        assert_eq!(words(row)[4..8], ["OK", "not", "running", "no"], "{row}");
        let j: serde_json::Value = serde_json::from_str(&snapshot.json().unwrap()).unwrap();
        assert_eq!(j["machines"][0]["idle"], true);
        assert_eq!(j["state_unsaved"], false);

        // A state directory that takes no write: what a restart would lose is said (review24: "attention: none").
        m.outbox_memory_only.set(2);
        m.state_unsaved.set(1);
        let snapshot = Snapshot::of(&parse_samples(&m.render()), None);
        assert!(
            snapshot.text().contains(
                "; 2 alarm message(s) in memory only (the outbox cannot be written); the alarm states cannot be \
                 saved (a restart now would not know them);"
            ),
            "{}",
            snapshot.text()
        );
        let j: serde_json::Value = serde_json::from_str(&snapshot.json().unwrap()).unwrap();
        assert_eq!(j["state_unsaved"], true);
        assert_eq!(j["outbox_memory_only"], 2);
    }
}
