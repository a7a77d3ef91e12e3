//! The acceptance run through real capture and a real broker: a PulseAudio pipe source fed in real time
//! (DESIGN.md §5) plays a recording that is normal, then anomalous, then normal; `sonitor run` captures it with
//! cpal through ALSA's `default` (the pulse plugin), and a subscriber on mosquitto receives `status=online`, the
//! alarm ON then OFF (retained) and matching start/end events; the source then vanishes and comes back (the
//! daemon reopens it and reports it); SIGKILL makes the broker deliver `offline`.
//!
//! Needs Debian's `pulseaudio pulseaudio-utils libasound2-plugins` and `mosquitto` (scripts/test installs them).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric, on, Broker, Daemon, Recorder};

struct Pulse {
    child: Child,
    socket: PathBuf,
    env: Vec<(String, String)>,
}

impl Pulse {
    fn start(dir: &Path) -> Pulse {
        let run = dir.join("pulse-run");
        std::fs::create_dir_all(&run).unwrap();
        let socket = dir.join("pulse.sock");
        let env = vec![
            ("XDG_RUNTIME_DIR".to_string(), run.display().to_string()),
            (
                "PULSE_RUNTIME_PATH".to_string(),
                run.join("pulse").display().to_string(),
            ),
            ("HOME".to_string(), dir.display().to_string()),
            (
                "PULSE_SERVER".to_string(),
                format!("unix:{}", socket.display()),
            ),
            ("PULSE_SOURCE".to_string(), "testmic".to_string()),
        ];
        let child = Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--disable-shm=yes",
                "--log-target=stderr",
                "-L",
            ])
            .arg(format!(
                "module-native-protocol-unix auth-anonymous=1 socket={}",
                socket.display()
            ))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio must be installed (Debian: pulseaudio pulseaudio-utils libasound2-plugins)");
        let p = Pulse { child, socket, env };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !p.pactl(&["info"]).0 {
            assert!(Instant::now() < deadline, "pulseaudio did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn pactl(&self, args: &[&str]) -> (bool, String) {
        match Command::new("pactl")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
        {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            ),
            Err(_) => (false, String::new()),
        }
    }

    /// Loads a pipe source named `testmic` reading s16le 16 kHz mono from `fifo`; returns the module index.
    fn load_pipe(&self, fifo: &Path) -> String {
        let (ok, idx) = self.pactl(&[
            "load-module",
            "module-pipe-source",
            "source_name=testmic",
            &format!("file={}", fifo.display()),
            "format=s16le",
            "rate=16000",
            "channels=1",
        ]);
        assert!(ok, "cannot load module-pipe-source");
        idx
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Writes `first` then the pump clip in a loop into the FIFO, paced in real time, until `stop` or an error
/// (the source was unloaded).
fn feed(fifo: PathBuf, first: Vec<f32>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
            return;
        };
        let pump = common::pump();
        let start = Instant::now();
        let block = 320; // 20 ms
        let mut sent = 0usize;
        let sample = |i: usize| -> f32 {
            if i < first.len() {
                first[i]
            } else {
                pump[(i - first.len()) % pump.len()]
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let due = start + Duration::from_secs_f64(sent as f64 / 16_000.0);
            let now = Instant::now();
            // Stay ~300 ms ahead of real time so the source never runs dry on a busy machine.
            if due > now + Duration::from_millis(300) {
                std::thread::sleep(due - now - Duration::from_millis(300));
            }
            let mut bytes = Vec::with_capacity(block * 2);
            for i in sent..sent + block {
                let v = (sample(i) * 32767.0).round().clamp(-32768.0, 32767.0) as i16;
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            if f.write_all(&bytes).is_err() {
                return;
            }
            sent += block;
        }
    })
}

#[test]
fn real_capture_real_broker_alarm_on_off_reopen_and_offline() {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let broker = Broker::start(&d.path().join("broker"));
    let rec = Recorder::start(broker.port, "recorder-capture");
    let pulse = Pulse::start(d.path());
    let fifo = d.path().join("mic.fifo");
    let module = pulse.load_pipe(&fifo);

    let dev = "[[devices]]\nname = \"mic\"\nsource = \"capture\"\ndevice = \"default\"\nchannels = 1\nsample_rate = 16000\nstall_timeout = \"1s\"\nreopen_min = \"200ms\"\nreopen_max = \"1s\"\n";
    let cfg = common::config(d.path(), dev, &b.dir, broker.port, "");
    let envs: Vec<(&str, &str)> = pulse
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let (code, text) = {
        let o = Command::new(env!("CARGO_BIN_EXE_sonitor"))
            .args(["validate", "--config"])
            .arg(&cfg)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    assert_eq!(code, Some(0), "{text}");

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(fifo.clone(), common::recording(3.0, 3.0, 4.0), stop.clone());
    let daemon = Daemon::start(&cfg, &envs);

    let msgs = rec.wait_for("alarm ON then OFF", Duration::from_secs(40), |m| {
        let a = on(m, "sonitor/t1/pump-1/alarm");
        a.iter()
            .position(|v| v == "ON")
            .is_some_and(|i| a[i..].contains(&"OFF".to_string()))
    });
    assert_eq!(
        on(&msgs, "sonitor/t1/status").first().map(String::as_str),
        Some("online")
    );
    // Retained: a new subscriber gets the alarm's and the status's current values at once.
    let fresh = Recorder::start(broker.port, "fresh-subscriber");
    let retained = fresh.wait_for("retained alarm and status", Duration::from_secs(5), |m| {
        m.iter()
            .any(|x| x.topic == "sonitor/t1/pump-1/alarm" && x.retain)
            && m.iter().any(|x| x.topic == "sonitor/t1/status" && x.retain)
    });
    assert_eq!(on(&retained, "sonitor/t1/pump-1/alarm"), ["OFF"]);
    assert_eq!(on(&retained, "sonitor/t1/status"), ["online"]);
    drop(fresh);
    let mut a = on(&msgs, "sonitor/t1/pump-1/alarm");
    a.dedup();
    assert_eq!(a, ["OFF", "ON", "OFF"], "exactly one alarm for one anomaly");
    let msgs = rec.wait_for("start and end events", Duration::from_secs(10), |m| {
        on(m, "sonitor/t1/pump-1/events").len() >= 2
    });
    let ev: Vec<serde_json::Value> = on(&msgs, "sonitor/t1/pump-1/events")
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(ev[0]["type"], "start");
    assert_eq!(ev[1]["type"], "end");
    assert_eq!(ev[0]["event_id"], ev[1]["event_id"]);
    assert!(ev[1]["peak_score"].as_f64().unwrap() > b.threshold);
    // The evidence clip of the onset is written.
    let clip = PathBuf::from(ev[0]["clip"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clip.exists() {
        assert!(
            Instant::now() < deadline,
            "clip {} was not written",
            clip.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The source vanishes (module unloaded) and comes back: the daemon reopens the stream and says so.
    assert!(pulse.pactl(&["unload-module", &module]).0);
    stop.store(true, Ordering::SeqCst);
    let _ = feeder.join();
    daemon.wait_log("reopening", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let _ = pulse.load_pipe(&fifo);
    let stop2 = Arc::new(AtomicBool::new(false));
    let feeder2 = feed(fifo.clone(), Vec::new(), stop2.clone());
    let m = common::wait_metrics(
        &cfg,
        Duration::from_secs(20),
        "the input was not reopened",
        |m| {
            metric(m, "sonitor_input_reopens_total{input=\"mic\"}").unwrap_or(0.0) >= 1.0
                && metric(m, "sonitor_input_up{input=\"mic\"}") == Some(1.0)
        },
    );
    assert!(metric(&m, "sonitor_audio_frames_total{input=\"mic\"}").unwrap() > 100_000.0);
    rec.wait_for("health back to OK", Duration::from_secs(10), |m| {
        let h = on(m, "sonitor/t1/pump-1/health");
        h.contains(&"NO_AUDIO".to_string()) && h.last().map(String::as_str) == Some("OK")
    });

    // SIGKILL: the broker delivers the last will.
    daemon.sigkill();
    rec.wait_for("status offline", Duration::from_secs(15), |m| {
        on(m, "sonitor/t1/status").last().map(String::as_str) == Some("offline")
    });
    stop2.store(true, Ordering::SeqCst);
    drop(pulse);
    let _ = feeder2.join();
}
