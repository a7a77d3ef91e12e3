//! `sonitor demo` on the shipped bundle and its recording (`models/default`): the alarm is raised while the fault
//! is audible and at no other time, it clears after the repair, an evidence clip and a timeline are written; with
//! `--mqtt` the same transitions reach a real broker as `run` publishes them. The same of the shipped combined
//! bundle (`models/combined`: `models/default` with the level baseline).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{on, Broker, Recorder};

fn shipped() -> PathBuf {
    common::workspace().join("models/default")
}

fn shipped_combined() -> PathBuf {
    common::workspace().join("models/combined")
}

/// `sonitor demo` on the shipped bundle into `out`.
fn demo_command(out: &std::path::Path) -> Command {
    demo_command_on(&shipped(), out)
}

/// `sonitor demo` on `bundle` (and the recording it holds) into `out`.
fn demo_command_on(bundle: &std::path::Path, out: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sonitor"));
    c.arg("demo")
        .arg("--model")
        .arg(bundle)
        .arg("--out")
        .arg(out);
    c
}

fn demo(out: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    demo_on(&shipped(), out, extra)
}

fn demo_on(
    bundle: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let o = demo_command_on(bundle, out)
        .args(["--quiet", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    // With `--json`, stdout is the summary and nothing else (`sonitor demo --json | jq …`): the commentary goes
    // to stderr.
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON summary ({e}):\n{stdout}\n{stderr}"));
    (o.status.code().unwrap_or(-1), summary, stdout + &stderr)
}

/// `sonitor demo --out OUT`, which must fail: its stderr.
fn demo_refused(out: &std::path::Path) -> String {
    let o = demo_command(out).arg("--quiet").output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_ne!(o.status.code(), Some(0), "{stderr}");
    stderr
}

/// The demo's summary says: alarms raised only while the fault is audible, each cleared after the repair, no
/// false alarm, the fault's mean score above the threshold and the normal mean below, exit 0. Returns the alarms.
fn assert_alarm_during_fault_only(
    code: i32,
    s: &serde_json::Value,
    log: &str,
) -> Vec<serde_json::Value> {
    let (start, end) = (
        s["fault_start_s"].as_f64().unwrap(),
        s["fault_end_s"].as_f64().unwrap(),
    );
    let alarms = s["alarms"].as_array().unwrap();
    assert!(!alarms.is_empty(), "no alarm at all:\n{log}");
    for a in alarms {
        let on_s = a["on_s"].as_f64().unwrap();
        assert!(
            on_s > start && on_s < end + 2.0,
            "alarm raised at {on_s} s, outside the fault [{start}, {end}]:\n{log}"
        );
        let off = a["off_s"].as_f64();
        assert!(
            off.is_some_and(|off| off > on_s),
            "alarm not cleared after the repair:\n{log}"
        );
    }
    assert_eq!(s["false_alarms"], 0, "{log}");
    assert_eq!(s["detected"], true, "{log}");
    assert!(
        s["mean_score_fault"].as_f64().unwrap() > s["threshold"].as_f64().unwrap(),
        "{log}"
    );
    assert!(
        s["mean_score_normal"].as_f64().unwrap() < s["threshold"].as_f64().unwrap(),
        "{log}"
    );
    assert_eq!(code, 0, "{log}");
    alarms.clone()
}

#[test]
fn the_shipped_demo_raises_the_alarm_during_the_fault_only() {
    let d = tempfile::tempdir().unwrap();
    let (code, s, log) = demo(d.path(), &[]);
    eprintln!("{log}");
    let alarms = assert_alarm_during_fault_only(code, &s, &log);
    let clips = s["clips"].as_array().unwrap();
    assert_eq!(clips.len(), alarms.len(), "{log}");
    for c in clips {
        let p = PathBuf::from(c.as_str().unwrap());
        let info = sonitor_core::audio::read_wav_info(&p).unwrap();
        assert!(info.frames > 16_000, "{p:?}: {info:?}");
    }
    let csv = std::fs::read_to_string(s["timeline_csv"].as_str().unwrap()).unwrap();
    assert_eq!(
        csv.lines().count() - 1,
        s["windows"].as_u64().unwrap() as usize
    );
    let plot = PathBuf::from(s["plot"].as_str().expect("a timeline picture"));
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000, "{plot:?}");

    // A second run in the same place starts afresh (no alarm carried over from the first).
    let (code2, s2, log2) = demo(d.path(), &[]);
    assert_eq!(code2, 0, "{log2}");
    assert_eq!(s2["alarms"].as_array().unwrap().len(), alarms.len());

    // A daemon's state directory given as --out is refused, and its unsent alarms stay.
    let state = d.path().join("daemon-state");
    std::fs::create_dir_all(state.join("outbox")).unwrap();
    std::fs::write(state.join("alarms.json"), "{}").unwrap();
    let stderr = demo_refused(&state);
    assert!(stderr.contains("daemon's state directory"), "{stderr}");
    assert!(state.join("alarms.json").exists() && state.join("outbox").is_dir());

    // A demo still running on --out (here: the lock held by this test): the second is refused before it touches
    // anything, so the first keeps its configuration, alarm state and outbox.
    let busy = d.path().join("busy");
    std::fs::create_dir_all(busy.join("outbox")).unwrap();
    std::fs::write(busy.join("sonitor-demo.toml"), "# the running demo's\n").unwrap();
    std::fs::write(busy.join("alarms.json"), "{}").unwrap();
    let held = sonitor::state_lock::acquire(&busy, None, None).unwrap();
    let stderr = demo_refused(&busy);
    assert!(
        stderr.contains(&format!("another sonitor (pid {})", std::process::id()))
            && stderr.contains("nothing there was changed")
            && stderr.contains("--out"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("sonitor-demo.toml")).unwrap(),
        "# the running demo's\n"
    );
    assert!(busy.join("alarms.json").exists() && busy.join("outbox").is_dir());
    drop(held);

    // A reader that has gone (`sonitor demo | head`): no panic ("failed printing to stdout", which made it end
    // with the daemon's status 70); the demo runs to its end and writes its files.
    let gone = d.path().join("gone");
    let o = common::output_to_a_gone_reader(&mut demo_command(&gone));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(gone.join("timeline.csv").is_file(), "{stderr}");
}

/// `models/combined` is `models/default` (the same graph) with each section's level baseline: manifest format 2,
/// the network's checksum, two domain means with their offsets, thresholds of its own; on the shipped recording
/// it too alarms during the fault only.
#[test]
fn the_shipped_combined_bundle_alarms_during_the_fault_only() {
    let combined = sonitor_core::bundle::Bundle::load(&shipped_combined()).unwrap();
    let model = sonitor_core::bundle::Bundle::load(&shipped()).unwrap();
    assert_eq!(combined.manifest.format_version, 2);
    assert_eq!(combined.manifest.onnx_sha256, model.manifest.onnx_sha256);
    assert_eq!(
        combined.manifest.model_id,
        format!("{}-combined", model.manifest.model_id)
    );
    assert_eq!(
        combined.manifest.sections.len(),
        model.manifest.sections.len()
    );
    for s in &combined.manifest.sections {
        let b = s
            .baseline
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no baseline", s.key()));
        assert_eq!(
            (b.means.len(), b.domain_offsets.len()),
            (2, 2),
            "{}",
            s.key()
        );
        assert_eq!(b.domain_offsets[0], 0.0, "{}", s.key());
        // The bands every capture chain passes (up to 7.2 kHz), not up to the Nyquist frequency.
        assert_eq!(
            b.bands(),
            sonitor_core::score::baseline_bands(&combined.manifest.features),
            "{}",
            s.key()
        );
        let alone = model.manifest.section_by_key(&s.key()).unwrap();
        assert_eq!(s.centroids, alone.centroids, "{}", s.key());
        assert_ne!(s.threshold.value, alone.threshold.value, "{}", s.key());
    }
    let d = tempfile::tempdir().unwrap();
    let (code, s, log) = demo_on(&shipped_combined(), d.path(), &[]);
    eprintln!("{log}");
    assert_alarm_during_fault_only(code, &s, &log);
    assert_eq!(
        s["model_id"],
        serde_json::json!(combined.manifest.model_id),
        "{log}"
    );

    // The same recording as a 48 kHz microphone would give it: resampled up and, by the daemon, down again, its
    // top band cut by both filters (23–44 dB off 7.8–8 kHz). The bundle combined over all 128 bands raised a
    // false alarm at 4 s on it (normal windows 0.067 on average, the pump's threshold 0.050); now it alarms as on
    // the 16 kHz recording, and the normal windows score as low.
    let (_, samples) = sonitor_core::audio::read_wav(
        &shipped_combined().join("demo.wav"),
        sonitor_core::audio::ChannelSelect::Mix,
    )
    .unwrap();
    let rec = d.path().join("demo48k.wav");
    sonitor_core::audio::write_wav_f32_whole(
        &rec,
        &sonitor_core::audio::resample(&samples, 16_000, 48_000).unwrap(),
        48_000,
    )
    .unwrap();
    std::fs::copy(
        shipped_combined().join("demo.json"),
        d.path().join("demo48k.json"),
    )
    .unwrap();
    let (code, s48, log) = demo_on(
        &shipped_combined(),
        &d.path().join("out48"),
        &["--recording", rec.to_str().unwrap()],
    );
    eprintln!("{log}");
    assert_alarm_during_fault_only(code, &s48, &log);
    let normal = |s: &serde_json::Value| s["mean_score_normal"].as_f64().unwrap();
    assert!(
        (normal(&s48) - normal(&s)).abs() < 0.005,
        "normal windows at 48 kHz {} against {} at 16 kHz",
        normal(&s48),
        normal(&s)
    );
}

#[test]
fn with_mqtt_the_demo_publishes_like_run() {
    let d = tempfile::tempdir().unwrap();
    let broker = Broker::start(&d.path().join("broker"));
    let rec = Recorder::start(broker.port, "demo-recorder");
    let addr = format!("127.0.0.1:{}", broker.port);
    let (code, s, log) = demo(&d.path().join("out"), &["--mqtt", &addr]);
    assert_eq!(code, 0, "{log}");
    let n = s["alarms"].as_array().unwrap().len();
    let topic = format!("sonitor/demo/{}", s["machine"].as_str().unwrap());
    let msgs = rec.wait_for(
        "the demo's alarm transitions",
        Duration::from_secs(20),
        |m| on(m, &format!("{topic}/events")).len() >= 2 * n,
    );
    let alarm: Vec<String> = on(&msgs, &format!("{topic}/alarm"))
        .into_iter()
        .filter(|p| p == "ON" || p == "OFF")
        .collect();
    assert!(alarm.contains(&"ON".to_string()), "{alarm:?}\n{log}");
    assert_eq!(alarm.last().map(String::as_str), Some("OFF"), "{alarm:?}");
    let events = on(&msgs, &format!("{topic}/events"));
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["type"], "start");
    assert_eq!(first["model_id"], s["model_id"]);
    // Telemetry (QoS 0) goes out from the first score after the connection; the demo waits for it before the
    // replay, which is over in well under a second.
    assert!(
        !on(&msgs, &format!("{topic}/score")).is_empty(),
        "no score telemetry; topics: {:?}\n{log}",
        msgs.iter()
            .map(|m| m.topic.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(s["mqtt"]["undelivered"], 0, "{log}");
}

/// `--mqtt` to a broker that is not there: the detection still runs, but the demo does not say OK, counts what
/// was not delivered and exits 2 (as for a missed alarm).
#[test]
fn with_mqtt_to_no_broker_the_demo_says_nothing_was_delivered() {
    let d = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let (code, s, log) = demo(&d.path().join("out"), &["--mqtt", &addr]);
    assert_eq!(code, 2, "{log}");
    // It gave the broker its 3 s before the replay.
    assert!(s["wall_seconds"].as_f64().unwrap() >= 3.0, "{log}");
    assert!(s["mqtt"]["undelivered"].as_u64().unwrap() >= 2, "{log}");
    assert_eq!(s["detected"], true, "{log}");
}

/// Without --model, outside the repository and with no installed model, the error names every place the demo
/// looked: `models/default` in the working directory and `../share/sonitor/models/default` beside the binary
/// (it named the first only).
#[test]
fn a_demo_without_a_model_names_every_place_it_looked() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .current_dir(d.path())
        .args(["demo", "--quiet", "--out", "out"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{said}");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_sonitor")).unwrap();
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("share/sonitor/models/default");
    assert!(
        said.contains("no model bundle at models/default (from the working directory) nor at ")
            && said.contains(&installed.display().to_string()),
        "{said}"
    );
}

/// A bundle directory without a manifest is "no model bundle"; one whose manifest is there but not a file (a
/// FIFO, which an open would wait on for ever) is named as such by the loader, not called missing.
#[test]
fn a_missing_or_unreadable_manifest_is_named() {
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let run = || {
        let o = demo_command_on(&bundle, &d.path().join("out"))
            .arg("--recording")
            .arg(shipped().join("demo.wav"))
            .arg("--quiet")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, said) = run();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no model bundle at"), "{said}");
    let manifest = bundle.join("manifest.json");
    let c = std::ffi::CString::new(manifest.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (code, said) = run();
    assert_ne!(code, Some(0), "{said}");
    assert!(
        !said.contains("no model bundle at") && said.contains("not a regular file"),
        "{said}"
    );
}

/// A model that alarms on everything (here the shipped one with its thresholds edited down to 0.001): its alarm
/// goes on at the first windows and stays on through the fault to the end. The summary gives that alarm the peak of
/// its scores (it showed the score that raised it), does not call the fault "MISSED" while an alarm was on
/// through it, and says `ok: false` beside the daemon's `exit_status` 0, as the demo exits 2.
#[test]
fn an_alarm_on_from_the_start_is_summed_up_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("touchy");
    std::fs::create_dir(&bundle).unwrap();
    for f in ["model.onnx", "demo.wav", "demo.json"] {
        std::fs::copy(shipped().join(f), bundle.join(f)).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped().join("manifest.json")).unwrap()).unwrap();
    for s in m["sections"].as_array_mut().unwrap() {
        s["threshold"]["value"] = 0.001.into();
    }
    std::fs::write(
        bundle.join("manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let (code, s, log) = demo_on(&bundle, &d.path().join("out"), &[]);
    assert_eq!(code, 2, "{log}");
    assert_eq!(s["ok"], false, "{s}");
    assert_eq!(s["exit_status"], 0, "{s}");
    let alarms = s["alarms"].as_array().unwrap();
    assert_eq!(alarms.len(), 1, "{s}");
    assert!(alarms[0]["off_s"].is_null(), "{s}");
    let timeline = std::fs::read_to_string(d.path().join("out/timeline.csv")).unwrap();
    let max = timeline
        .lines()
        .skip(1)
        .filter(|l| l.ends_with(",1,0") || l.ends_with(",1,1"))
        .map(|l| l.split(',').nth(1).unwrap().parse::<f64>().unwrap())
        .fold(0.0, f64::max);
    let peak = alarms[0]["peak"].as_f64().unwrap();
    assert!(
        (peak - max).abs() < 1e-5,
        "peak {peak}, scores while on up to {max}"
    );
    let text = demo_command_on(&bundle, &d.path().join("out2"))
        .arg("--quiet")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&text.stdout);
    assert!(
        said.contains("NOT DETECTED as such") && !said.contains("MISSED"),
        "{said}"
    );
}
