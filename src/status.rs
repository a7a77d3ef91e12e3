//! `sonitor status`: what the running daemon watches and how, for someone logged in on the device: each machine's
//! alarm, latest score, the threshold in force, its health, whether it is watched or muted and its model, then the
//! inputs and MQTT. Read from the daemon's metrics, the same numbers a Prometheus scrape gets.

use std::path::Path;

use crate::config::{Config, EXIT_CONFIG};
use crate::metrics::{Sample, HEALTH_VALUES};
use crate::reload::EXIT_NO_DAEMON;

/// The status text from a scrape's samples (`pid`: the daemon's, when known).
pub fn render(samples: &[Sample], pid: Option<u32>) -> String {
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
    let yes = |v: Option<f64>| match v {
        Some(1.0) => "yes",
        Some(_) => "no",
        None => "?",
    };
    let mut rows = vec![[
        "machine",
        "alarm",
        "score",
        "threshold",
        "health",
        "watched",
        "muted",
        "model",
    ]
    .map(String::from)];
    let machines = names("sonitor_alarm", "machine");
    for m in &machines {
        let health = samples
            .iter()
            .find(|s| {
                s.name == "sonitor_machine_health"
                    && s.label("machine") == Some(m)
                    && s.value == 1.0
            })
            .and_then(|s| s.label("health"))
            .filter(|h| HEALTH_VALUES.contains(h))
            .unwrap_or("?");
        let model = samples
            .iter()
            .find(|s| s.name == "sonitor_model_info" && s.label("machine") == Some(m))
            .and_then(|s| s.label("model_id"))
            .unwrap_or("?");
        let number = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.4}"));
        rows.push([
            m.clone(),
            match of("sonitor_alarm", "machine", m) {
                Some(1.0) => "ON".into(),
                Some(_) => "OFF".into(),
                None => "?".into(),
            },
            number(of("sonitor_score", "machine", m)),
            number(of("sonitor_threshold", "machine", m)),
            health.into(),
            yes(of("sonitor_enabled", "machine", m)).into(),
            yes(of("sonitor_muted", "machine", m)).into(),
            model.into(),
        ]);
    }
    let on = machines
        .iter()
        .filter(|m| of("sonitor_alarm", "machine", m) == Some(1.0))
        .count();
    let mut out = format!(
        "{}: {} machine(s), {on} alarm(s) on\n",
        crate::state_lock::holder_named(pid),
        machines.len()
    );
    out.push_str(&table(&rows));
    let mut inputs =
        vec![["input", "up", "dropped samples", "overruns", "reopens"].map(String::from)];
    for i in names("sonitor_input_up", "input") {
        let count = |name: &str| of(name, "input", &i).map_or("?".into(), |v| format!("{v}"));
        inputs.push([
            i.clone(),
            yes(of("sonitor_input_up", "input", &i)).into(),
            count("sonitor_dropped_samples_total"),
            count("sonitor_input_xruns_total"),
            count("sonitor_input_reopens_total"),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&inputs));
    let count = |name: &str| one(name).map_or("?".into(), |v| format!("{v}"));
    out.push_str(&format!(
        "\nMQTT {}; {} alarm message(s) waiting in the outbox ({} dropped)\n",
        match one("sonitor_mqtt_connected") {
            Some(1.0) => "connected",
            Some(_) => "not connected",
            None => "?",
        },
        count("sonitor_outbox_messages"),
        count("sonitor_outbox_dropped_messages_total"),
    ));
    out.push_str(match one("sonitor_config_last_reload_successful") {
        Some(0.0) => {
            "the last reload was refused: the file on disk is not the one running (its log says why)\n"
        }
        _ if one("sonitor_config_restart_pending") == Some(1.0) => {
            "the last reload applied the file, but some of its changes wait for a restart (its log names them)\n"
        }
        _ => "the configuration running is the file's as last loaded\n",
    });
    out
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

/// `sonitor status --config FILE`: the exit status (0: printed; 78: the file cannot be read; 69: no daemon
/// answered on the file's metrics address).
pub fn status(config_path: &Path) -> i32 {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonitor status: {e}");
            return EXIT_CONFIG;
        }
    };
    if !cfg.metrics.enabled {
        eprintln!(
            "sonitor status: the metrics are off ([metrics] enabled = false), and they are what it reads: the \
             retained MQTT topics under {}/ say the same",
            cfg.topic_base()
        );
        return EXIT_NO_DAEMON;
    }
    let pid = crate::state_lock::holder(&cfg.state_dir).flatten();
    let answer = cfg
        .metrics
        .addr()
        .ok_or_else(|| std::io::Error::other("not an address:port"))
        .and_then(crate::metrics::scrape);
    match answer {
        Ok(samples) => {
            print!("{}", render(&samples, pid));
            0
        }
        Err(e) => {
            eprintln!(
                "sonitor status: no sonitor answered on {} ({e}){}",
                cfg.metrics.listen,
                if pid.is_some() {
                    " though one holds the state directory: still starting?"
                } else {
                    ": is it running (`systemctl status sonitor`)?"
                }
            );
            EXIT_NO_DAEMON
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{parse_samples, Metrics};

    #[test]
    fn a_machine_per_row_with_what_is_in_force() {
        let m = Metrics::new(&["mic".into()], &["pump-1".into(), "fan-2".into()]);
        let pump = &m.machines[0];
        pump.alarm.set(1);
        pump.score.set_f64(0.3091);
        pump.threshold.set_f64(0.0486);
        pump.enabled.set(1);
        *pump.model_id.lock().unwrap() = "combined-7".into();
        m.machines[1].health.set(4);
        m.inputs[0].up.set(1);
        m.last_reload_ok.set(0);
        let text = render(&parse_samples(&m.render()), Some(42));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0], "sonitor (pid 42): 2 machine(s), 1 alarm(s) on",
            "{text}"
        );
        let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            words(lines[2]),
            [
                "pump-1",
                "ON",
                "0.3091",
                "0.0486",
                "OK",
                "yes",
                "no",
                "combined-7"
            ],
            "{text}"
        );
        assert_eq!(words(lines[3])[4], "NO_SCORES", "{text}");
        assert!(text.contains("\nmic    yes"), "{text}");
        assert!(text.contains("the last reload was refused"), "{text}");
        m.last_reload_ok.set(1);
        m.restart_pending.set(1);
        let text = render(&parse_samples(&m.render()), None);
        assert!(
            text.contains("some of its changes wait for a restart"),
            "{text}"
        );
    }
}
