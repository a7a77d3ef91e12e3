//! Offline replay: a 48 kHz stereo recording (the machine on channel 1) replayed as fast as possible is
//! resampled to the model's 16 kHz outside any callback, raises and clears one alarm, writes the evidence clip,
//! reports a silent channel, and the daemon exits 0 at the end of the file (`at_end = "exit"`). No broker:
//! MQTT is disabled, and the alarm messages stay in the outbox for later.

mod common;

use std::time::Duration;

#[test]
fn resampled_multichannel_replay_raises_clears_and_exits() {
    let d = tempfile::tempdir().unwrap();
    // The model is trained on what this input delivers: audio that went through 48 kHz (the band-limited
    // round trip removes a little energy near 8 kHz, which this small test model would otherwise notice).
    let roundtrip = |x: &[f32]| {
        let up = sonitor_core::audio::resample(x, 16_000, 48_000).unwrap();
        sonitor_core::audio::resample(&up, 48_000, 16_000).unwrap()
    };
    let pump = common::pump();
    let b = common::separating_bundle(
        d.path(),
        &roundtrip(&pump),
        &roundtrip(&common::make_anomalous(&pump)),
    );
    let rec16 = common::recording(3.0, 3.0, 4.0);
    let rec48 = sonitor_core::audio::resample(&rec16, 16_000, 48_000).unwrap();
    // Channel 0: digital silence (a dead microphone); channel 1: the machine.
    let wav = d.path().join("stereo48k.wav");
    common::write_wav_channels(&wav, 48_000, 2, &rec48, |x| vec![0.0, x]);

    let cfg = common::offline_config(
        d.path(),
        &wav,
        &b.dir,
        "[health]\nsilence_after = \"2s\"\n\n[[machines]]\nname = \"dead-mic\"\ndevice = \"mic\"\nchannel = 0\nbundle = \"BUNDLE\"\nsection = \"pump/section_00\"\nenabled = false\n",
    );
    common::edit(&cfg, |t| {
        t.replacen("channel = 0\nbundle = \"", "channel = 1\nbundle = \"", 1)
            .replace("BUNDLE", &b.dir.display().to_string())
            .replace("log_level = \"info\"", "log_level = \"debug\"")
    });

    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches("alarm ON: pump-1").count(), 1, "{log}");
    assert_eq!(log.matches("alarm OFF: pump-1").count(), 1, "{log}");
    // Why it ended, in the word of the end event's `reason` (it said "Normal").
    assert!(log.contains("alarm OFF: pump-1 (normal, peak"), "{log}");
    assert!(
        !log.contains("alarm ON: dead-mic"),
        "a disabled machine raises nothing: {log}"
    );
    assert!(log.contains("health of dead-mic: SILENT"), "{log}");
    assert!(log.contains("clip written"), "{log}");
    // What each machine made of the recording, at its end: a quiet run said nothing at all.
    let summary = log
        .lines()
        .find(|l| l.contains("replay summary of pump-1: "))
        .unwrap_or_else(|| panic!("no summary of pump-1: {log}"));
    assert!(
        summary.contains("highest score 0.")
            && summary.contains("1 alarm(s) raised")
            && !summary.contains("still on"),
        "{summary}"
    );
    assert!(
        log.contains("replay summary of dead-mic: 0 window(s) judged, highest score none"),
        "{log}"
    );
    assert!(
        !log.contains("below its model's"),
        "48 kHz is above the model's rate: {log}"
    );
    // The clip: 16 kHz mono, pre 1 s + window 0.5 s + post 1 s.
    let secs = the_clip_seconds(&d.path().join("state"));
    assert!((secs - 2.5).abs() < 0.01, "{secs} s");
    // Alarm ON + start, OFF + end wait in the outbox for a broker.
    assert_eq!(
        std::fs::read_dir(d.path().join("state/outbox"))
            .unwrap()
            .count(),
        4
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("state/alarms.json")).unwrap())
            .unwrap();
    assert!(
        saved["pump-1"]["event"].is_null(),
        "the alarm ended: {saved}"
    );
    assert_eq!(saved["pump-1"]["seq"], 2);
}

/// An input sampled below the model's rate (an 8 kHz recording for a 16 kHz model) leaves the top of the band the
/// model learned empty: `validate` warns, naming the machine and both rates, without refusing (exit 0), and `run`
/// warns once (its start's check; the stream's open said it a second time), and still scores it: here the normal
/// recording, narrowed, raises an alarm. A 48 kHz input is above the rate: no warning
/// (`resampled_multichannel_replay_raises_clears_and_exits` asserts it).
/// A configuration in `dir` replaying `seconds` of normal sound recorded at 8 kHz, below the standard bundle's
/// 16 kHz (a warning at the start), to its end.
fn narrow_8k_replay(dir: &std::path::Path, seconds: f32) -> std::path::PathBuf {
    let b = common::standard_bundle(dir);
    let rec8 = sonitor_core::audio::resample(&common::recording(seconds, 0.0, 0.0), 16_000, 8_000)
        .unwrap();
    let wav = dir.join("narrow8k.wav");
    common::write_wav_channels(&wav, 8_000, 1, &rec8, |x| vec![x]);
    common::offline_config(dir, &wav, &b.dir, "")
}

#[test]
fn an_input_below_the_models_rate_is_warned_about() {
    let d = tempfile::tempdir().unwrap();
    let cfg = narrow_8k_replay(d.path(), 3.0);
    let says = "is sampled at 8000 Hz, below its model's 16000 Hz: the model's band above 4000 Hz gets no sound";

    let (code, out, _) = sonitor_on(&["validate"], &cfg);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("machine 'pump-1': its input (device 'mic', ") && out.contains(says),
        "{out}"
    );

    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("machine 'pump-1': its input (device 'mic', ") && log.contains(says),
        "{log}"
    );
    assert_eq!(log.matches(says).count(), 1, "{log}");
    // With MQTT off the start says so, not which topics it would publish under.
    assert!(
        log.contains("running: 1 machine(s) on 1 input(s), MQTT off")
            && !log.contains("topics under"),
        "{log}"
    );
    // The log in the order things happened: the file opened and ended, then the replay is over.
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no '{what}' in {log}"))
    };
    assert!(
        at("input mic open") < at("input mic: end of file")
            && at("input mic: end of file") < at("all files replayed"),
        "{log}"
    );
    // Still scored: and this normal recording, narrow, scores as a fault (why the warning).
    assert!(log.contains("alarm ON: pump-1"), "{log}");
}

/// Under systemd, stderr is a stream to the journal, which `JOURNAL_STREAM` names (device:inode): each line then
/// begins with its syslog priority (`<4>` a warning), which journald takes off and stores, so that `journalctl -u
/// sonitor -p warning` shows the warnings and errors alone; the refusal of a bad file is an error. All was `info`
/// before. A stderr that is not that stream (a service's child whose stderr went to a file, a terminal) gets the
/// lines as they were. `scripts/systemd-check` checks the same under systemd 252 itself.
#[test]
fn under_systemd_each_line_tells_the_journal_its_priority() {
    use std::os::unix::fs::MetadataExt as _;
    let d = tempfile::tempdir().unwrap();
    // An 8 kHz input: a warning at the start (see the test above), then the replay's information lines.
    let cfg = narrow_8k_replay(d.path(), 2.0);
    let stderr_file = d.path().join("stderr.txt");
    let run = |cfg: &std::path::Path, journal: bool| {
        let f = std::fs::File::create(&stderr_file).unwrap();
        let m = f.metadata().unwrap();
        // Not the journal: the variable names another inode, as where a service's child redirected stderr.
        let ino = if journal { m.ino() } else { m.ino() + 1 };
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
            .args(["run", "--config"])
            .arg(cfg)
            .env("JOURNAL_STREAM", format!("{}:{ino}", m.dev()))
            .stdout(std::process::Stdio::null())
            .stderr(f)
            .status()
            .unwrap();
        let log = std::fs::read_to_string(&stderr_file).unwrap();
        (status.code(), log)
    };

    let (code, log) = run(&cfg, true);
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().all(|l| ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| l.starts_with(p))),
        "a line without its priority:\n{log}"
    );
    let warning = lines
        .iter()
        .find(|l| l.contains("is sampled at 8000 Hz"))
        .unwrap_or_else(|| panic!("no warning of the rate in:\n{log}"));
    assert!(
        warning.starts_with("<4>sonitor[WARN]: machine 'pump-1'"),
        "{warning}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>sonitor[INFO]: ") && l.contains("all files replayed")),
        "{log}"
    );

    // A file the daemon cannot use: the refusal, every line of it, is an error.
    let bad = d.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg).unwrap() + "\nbogus_key = 1\n",
    )
    .unwrap();
    let (code, log) = run(&bad, true);
    assert_eq!(code, Some(78), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].starts_with("<3>sonitor: ") && lines[0].ends_with("bad.toml cannot be used:"),
        "{log}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("<3>  - ") || l.starts_with("<3>    ")),
        "{log}"
    );
    assert!(log.contains("bogus_key"), "{log}");

    // Not the journal's stream: the lines as they always were.
    let (code, log) = run(&cfg, false);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.lines().any(|l| l.starts_with('<')), "{log}");
    assert!(
        log.contains("sonitor[WARN]: machine 'pump-1'") && log.contains("is sampled at 8000 Hz"),
        "{log}"
    );
}

/// The end of a replay waits for every window to be scored, however slow inference is: it gave up 10 s after the
/// file's end, and the demo on an emulated ARM board (about a second a window) lost its last 14 windows and the
/// alarm's end. Here each window takes 2 s (a pause injected in the inference thread, test builds only): 11
/// windows, 22 s, all scored, as many as without the pause. A pipeline that scores nothing for 10 s is still given
/// up on.
#[test]
fn a_replay_ends_only_once_its_last_window_is_scored_however_slow() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "slow.wav", &common::recording(3.0, 0.0, 0.0));
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    common::edit(&cfg, |t| {
        t.replace("log_level = \"info\"", "log_level = \"debug\"")
    });
    let scores = |log: &str| log.matches("sonitor[DEBUG]: score pump-1 t=").count();
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    let all = scores(&log);
    eprintln!("{all} windows");
    assert!(
        all >= 6,
        "{all} windows: more than 10 s of pauses are needed"
    );
    let _ = std::fs::remove_dir_all(d.path().join("state"));
    let mut daemon = common::Daemon::start(&cfg, &[("SONITOR_FAULT_PAUSE", "inference")]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(scores(&log), all, "{log}");
}

/// `at_end = "exit"` beside inputs that do not end (a looped file here, a microphone alike): the daemon exits once
/// every "exit" file has been replayed. It waited for every input to end, which a looped one never does: it ran
/// on, and the ended file's machine read NO_SCORES ("no window for 10 s though input … is open"). An "exit" file
/// that ends while another plays on leaves its machine NO_AUDIO until then.
#[test]
fn the_daemon_exits_once_its_exit_files_are_replayed_whatever_the_other_inputs() {
    let d = tempfile::tempdir().unwrap();
    let (b, short) =
        common::bundle_and_wav(d.path(), "short.wav", &common::recording(2.0, 0.0, 0.0));
    let long = d.path().join("long.wav");
    common::write_wav(&long, &common::recording(6.0, 0.0, 0.0));
    let looped = d.path().join("looped.wav");
    common::write_wav(&looped, &common::recording(3.0, 0.0, 0.0));
    let device = |name: &str, wav: &std::path::Path, at_end: &str| {
        format!(
            "[[devices]]\nname = \"{name}\"\nsource = \"file\"\npath = \"{}\"\nrealtime = true\nat_end = \"{at_end}\"\n",
            wav.display()
        )
    };
    let machine = |name: &str, dev: &str| {
        format!(
            "[[machines]]\nname = \"{name}\"\ndevice = \"{dev}\"\nbundle = \"{}\"\nsection = \"pump/section_00\"\n",
            b.dir.display()
        )
    };
    let devices = [
        device("mic", &short, "exit"),
        device("long", &long, "exit"),
        device("loop", &looped, "loop"),
    ]
    .concat();
    let extra = [machine("pump-2", "long"), machine("pump-3", "loop")].concat();
    let cfg = common::config(d.path(), &devices, &b.dir, 1, &extra);
    common::edit(&cfg, |t| t.replace("[mqtt]\n", "[mqtt]\nenabled = false\n"));
    let t0 = std::time::Instant::now();
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("all files with at_end = \"exit\" replayed; finishing the pipeline"),
        "{log}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no '{what}' in {log}"))
    };
    assert!(
        at("health of pump-1: NO_AUDIO") < at("input long: end of file"),
        "{log}"
    );
    assert!(
        !log.contains("NO_SCORES") && !log.contains("no window for"),
        "{log}"
    );
}

/// A replayed file that is cut short while it plays (`at_end = "exit"`): the error is logged as the end of the
/// replay, not as a reopening that never comes, and the daemon exits with EX_IOERR (74) instead of 0.
#[test]
fn a_file_cut_short_during_the_replay_ends_it_with_status_74() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "live.wav", &common::recording(6.0, 0.0, 0.0));
    let cfg = common::paced_config(d.path(), &wav, &b.dir, "");

    let mut daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(20));
    // Cut in place (the same inode the replay reads): the header still announces 6 s.
    let bytes = std::fs::read(&wav).unwrap();
    std::fs::write(&wav, &bytes[..20_000]).unwrap();
    let (code, log) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(74), "{log}");
    assert!(log.contains("the replay ends here"), "{log}");
    assert!(!log.contains("reopening"), "{log}");
}

/// A file source looped in real time, tried again quickly after a failed pass (the tests of a file that goes bad).
const LOOPED_QUICK_REOPEN: &str =
    "realtime = true\nat_end = \"loop\"\nreopen_min = \"100ms\"\nreopen_max = \"200ms\"\n";

/// A looped replay, paced in real time, whose file is replaced whole (a new file renamed over the old one) by what
/// `bad` writes: the daemon logs `says`, retries with backoff, and comes back once the file is right again. Each
/// failed pass counts in `sonitor_input_errors_total` and the comeback in `sonitor_input_reopens_total` (both
/// stayed 0 for a file), and the replay goes on at its pace from there: it made up for the 2 s away at full speed,
/// overflowed its ring and counted dropped samples.
fn a_looped_file_goes_bad_and_comes_back(bad: impl Fn(&std::path::Path, &[f32]), says: &str) {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let wav = d.path().join("loop.wav");
    let mono = common::recording(2.5, 0.0, 0.0);
    common::write_wav(&wav, &mono);
    let cfg = common::file_config(
        d.path(),
        &wav,
        &b.dir,
        &format!("ring_seconds = 1.0\n{LOOPED_QUICK_REOPEN}"),
        "",
    );

    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(20));
    let tmp = d.path().join("loop.tmp");
    bad(&tmp, &mono);
    std::fs::rename(&tmp, &wav).unwrap();
    daemon.wait_log(says, Duration::from_secs(20));
    daemon.wait_log(
        "reading the file again with backoff",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(2));
    common::write_wav(&tmp, &mono);
    std::fs::rename(&tmp, &wav).unwrap();
    daemon.wait_log("readable again", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let text = common::scrape(&cfg);
    let at_least = |name: &str, min: f64| {
        let v = common::metric(&text, name).unwrap_or(-1.0);
        assert!(v >= min, "{name} {v}: {text}");
    };
    at_least("sonitor_input_errors_total{input=\"mic\"}", 1.0);
    at_least("sonitor_input_reopens_total{input=\"mic\"}", 1.0);
    common::assert_metrics(
        &text,
        &[("sonitor_dropped_samples_total{input=\"mic\"}", 0.0)],
    );
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// A looped file cut short in place (the same inode; review33): the pass that meets the cut fails, and each pass
/// after it is refused at its start while the file stays short, so its machine reads NO_AUDIO throughout. Each pass
/// used to play up to the cut, be called "readable again", and the machine's health went OK and NO_AUDIO in turn
/// (MQTT and the log said so at every pass). Written whole again, the file plays again.
#[test]
fn a_looped_file_cut_short_in_place_stays_down_until_it_is_whole_again() {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let wav = d.path().join("loop.wav");
    common::write_wav(&wav, &common::recording(2.5, 0.0, 0.0));
    let cfg = common::file_config(d.path(), &wav, &b.dir, LOOPED_QUICK_REOPEN, "");
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(20));
    let bytes = std::fs::read(&wav).unwrap();
    // 0.6 s of audio left: each pass would play it before meeting the cut.
    std::fs::write(&wav, &bytes[..44 + 2 * 9_600]).unwrap();
    daemon.wait_log("health of pump-1: NO_AUDIO", Duration::from_secs(20));
    // About twenty passes at the backoff of 100-200 ms.
    std::thread::sleep(Duration::from_secs(4));
    let log = daemon.log.lock().unwrap().clone();
    let after = &log[log.find("health of pump-1: NO_AUDIO").unwrap()..];
    assert!(log.contains("truncated"), "{log}");
    assert!(!after.contains("readable again"), "{log}");
    assert!(!after.contains("health of pump-1: OK"), "{log}");
    let text = common::scrape(&cfg);
    common::assert_metrics(
        &text,
        &[
            (
                "sonitor_machine_health{machine=\"pump-1\",health=\"NO_AUDIO\"}",
                1.0,
            ),
            ("sonitor_input_up{input=\"mic\"}", 0.0),
        ],
    );
    // Why, for `sonitor status` and the retained state.
    let why = text
        .lines()
        .find(|l| {
            l.starts_with("sonitor_health_reason_info{machine=\"pump-1\",reason=\"input mic: ")
        })
        .unwrap_or_else(|| panic!("no reason: {text}"));
    assert!(why.contains("truncated") && why.ends_with(" 1"), "{why}");
    std::fs::write(&wav, &bytes).unwrap();
    daemon.wait_log("readable again", Duration::from_secs(20));
    common::wait_metrics(&cfg, Duration::from_secs(10), "pump-1 not OK again", |m| {
        common::metric(
            m,
            "sonitor_machine_health{machine=\"pump-1\",health=\"OK\"}",
        ) == Some(1.0)
    });
    assert!(!common::scrape(&cfg).contains("sonitor_health_reason_info{"));
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// A looped file absent at the start (a recording not copied yet, a mount not up) is waited for, as a capture
/// device away at the start is: `validate` warns and exits 0, the daemon runs with the machine NO_AUDIO and why,
/// and plays the file once it is there. It exited 78, which systemd does not restart after, so one missing file
/// kept every machine of the node unwatched; a reload was refused as long as it was missing (review35). A file
/// played once (`at_end = "stop"`/`"exit"`) must be there: that replay is the whole job.
#[test]
fn a_looped_file_absent_at_the_start_is_waited_for() {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let wav = d.path().join("later.wav");
    let cfg = common::file_config(d.path(), &wav, &b.dir, LOOPED_QUICK_REOPEN, "");
    let (code, out, _) = sonitor_on(&["validate"], &cfg);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "does not exist (yet): its machines (pump-1) report health NO_AUDIO until it does"
        ),
        "{out}"
    );

    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("the file does not exist (yet)", Duration::from_secs(20));
    let absent = |m: &str| {
        common::metric(
            m,
            "sonitor_machine_health{machine=\"pump-1\",health=\"NO_AUDIO\"}",
        ) == Some(1.0)
            && m.contains("sonitor_health_reason_info{machine=\"pump-1\",reason=\"input mic: ")
    };
    common::wait_metrics(
        &cfg,
        Duration::from_secs(10),
        "not NO_AUDIO with why",
        absent,
    );
    // A reload is taken meanwhile.
    common::edit(&cfg, |t| {
        t.replace("[[machines]]\n", "[[machines]]\nthreshold = 0.5\n")
    });
    let (code, out, _) = sonitor_on(&["reload"], &cfg);
    assert_eq!(code, Some(0), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    let tmp = d.path().join("later.tmp");
    common::write_wav(&tmp, &common::recording(2.5, 0.0, 0.0));
    std::fs::rename(&tmp, &wav).unwrap();
    daemon.wait_log("input mic open", Duration::from_secs(20));
    common::wait_metrics(&cfg, Duration::from_secs(10), "pump-1 not OK", |m| {
        common::metric(
            m,
            "sonitor_machine_health{machine=\"pump-1\",health=\"OK\"}",
        ) == Some(1.0)
    });
    // Scored: its windows come.
    common::wait_metrics(&cfg, Duration::from_secs(20), "no window scored", |m| {
        common::metric(m, "sonitor_window_score_count{machine=\"pump-1\"}").unwrap_or(0.0) >= 1.0
    });
    let log = daemon.log.lock().unwrap().clone();
    assert_eq!(
        log.matches("the file does not exist (yet)").count(),
        1,
        "{log}"
    );
    // Outside the journal each line begins with its time (UTC, to the millisecond), or nothing would date it.
    let line = log.lines().find(|l| l.contains("input mic open")).unwrap();
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && humantime::parse_rfc3339(time).is_ok(),
        "{line}"
    );
    assert!(rest.starts_with("sonitor[INFO]: input mic open"), "{line}");
    assert_eq!(daemon.sigterm_and_wait(), 0);

    // Played once, it must be there.
    common::edit(&cfg, |t| {
        t.replace("at_end = \"loop\"", "at_end = \"stop\"")
    });
    std::fs::remove_file(&wav).unwrap();
    let (code, out, _) = sonitor_on(&["validate"], &cfg);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("does not exist"), "{out}");
}

/// A dead channel stays SILENT through its input's outage (review33): the reader says a channel's state only when
/// it changes, and the input's reopening set every machine's health to OK, so a dead microphone read `OK` for good
/// after any hiccup of its device (here its looped file replaced by a bad one, then put right).
#[test]
fn a_silent_channel_is_silent_again_after_its_input_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let wav = d.path().join("loop.wav");
    let mono = common::recording(2.5, 0.0, 0.0);
    // Channel 0: a dead microphone; channel 1: the pump.
    let stereo = |path: &std::path::Path| {
        common::write_wav_channels(path, 16_000, 2, &mono, |x| vec![0.0, x])
    };
    stereo(&wav);
    let cfg = common::file_config(
        d.path(),
        &wav,
        &b.dir,
        LOOPED_QUICK_REOPEN,
        &format!(
            "[health]\nsilence_after = \"2s\"\n\n[[machines]]\nname = \"dead-mic\"\ndevice = \"mic\"\nchannel = 0\n\
             bundle = \"{}\"\nsection = \"pump/section_00\"\n",
            b.dir.display()
        ),
    );
    common::edit(&cfg, |t| {
        t.replacen("channel = 0\nbundle", "channel = 1\nbundle", 1)
    });
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("health of dead-mic: SILENT", Duration::from_secs(20));
    let tmp = d.path().join("loop.tmp");
    common::write_wav(&tmp, &mono);
    std::fs::rename(&tmp, &wav).unwrap();
    daemon.wait_log("health of dead-mic: NO_AUDIO", Duration::from_secs(20));
    stereo(&tmp);
    std::fs::rename(&tmp, &wav).unwrap();
    daemon.wait_log("readable again", Duration::from_secs(20));
    let back = |m: &str| {
        common::metric(
            m,
            "sonitor_machine_health{machine=\"dead-mic\",health=\"SILENT\"}",
        ) == Some(1.0)
            && common::metric(
                m,
                "sonitor_machine_health{machine=\"pump-1\",health=\"OK\"}",
            ) == Some(1.0)
    };
    common::wait_metrics(
        &cfg,
        Duration::from_secs(10),
        "dead-mic not SILENT again",
        back,
    );
    // Not OK for a moment either, and still SILENT a few blocks later.
    std::thread::sleep(Duration::from_secs(3));
    assert!(back(&common::scrape(&cfg)));
    let log = daemon.log.lock().unwrap().clone();
    let after = &log[log.find("health of dead-mic: NO_AUDIO").unwrap()..];
    assert!(!after.contains("health of dead-mic: OK"), "{log}");
    assert!(after.contains("health of dead-mic: SILENT"), "{log}");
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// A looped file replaced by one of another format: each pass reads the header again, so stereo samples are
/// never read as mono ones; the input is retried with backoff and comes back once the file is right again.
#[test]
fn a_looped_file_replaced_by_another_format_is_refused_until_it_is_right_again() {
    a_looped_file_goes_bad_and_comes_back(
        |tmp, mono| common::write_wav_channels(tmp, 16_000, 2, mono, |x| vec![x, x]),
        "the file changed format since start-up: 2 ch, 16000 Hz, was 1 ch, 16000 Hz",
    );
}

/// A looped file emptied while it runs (a header, no frames): a pass that reads nothing is a failure, retried with
/// backoff, not a reopen at once for ever (a core spinning, nothing in the log).
#[test]
fn a_looped_file_that_holds_no_audio_any_more_is_retried_with_backoff() {
    a_looped_file_goes_bad_and_comes_back(
        |tmp, _| common::write_wav(tmp, &[]),
        "it holds no audio now (0 frames)",
    );
}

/// An evidence clip that cannot be written (here its machine's folder is a file; in the field, a full disk):
/// the alarm goes on, nothing partial is left under the clip's name, and the end event says `clip: null`
/// instead of naming a file that does not exist.
#[test]
fn an_event_whose_clip_could_not_be_written_ends_without_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(
        d.path(),
        "long-fault.wav",
        &common::recording(2.0, 3.0, 3.0),
    );
    // Paced as a sound card delivers it, so that the clip's failure (1 s after the onset) is known before the
    // alarm clears (3 s later). Replayed as fast as possible, the end of the event could be decided before the
    // clip writer had tried, and the end event would rightly still name the clip it was waiting for.
    let cfg = common::paced_config(d.path(), &wav, &b.dir, "");
    std::fs::create_dir_all(d.path().join("state/clips")).unwrap();
    std::fs::write(d.path().join("state/clips/pump-1"), b"in the way").unwrap();

    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("the event goes on without it"), "{log}");
    assert_eq!(log.matches("alarm OFF: pump-1").count(), 1, "{log}");
    let events = outbox_events(&d.path().join("state"));
    let of = |kind: &str| events.iter().find(|e| e["type"] == kind).unwrap();
    assert!(of("start")["clip"].is_string(), "{events:?}");
    assert!(of("end")["clip"].is_null(), "{events:?}");
}

/// Clips past `clips.max_age` are deleted when the daemon starts (and every quarter of `max_age` after), not only
/// when a new alarm writes a clip: a machine that stays healthy for months keeps no recording older than the
/// limit. The temporary file of a clip whose write was cut short (the daemon killed during it) goes too; a recent
/// clip and the user's own recordings in the folder stay.
#[test]
fn clips_past_max_age_go_without_a_new_alarm() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) =
        common::bundle_and_wav(d.path(), "normal.wav", &common::recording(8.0, 0.0, 0.0));
    // Paced, so that the daemon still runs when its metrics are read (on a loaded machine too).
    let cfg = common::paced_config(d.path(), &wav, &b.dir, "max_age = \"1h\"\n");
    let dir = d.path().join("state/clips/pump-1");
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now();
    // (file, age, deleted)
    let files = [
        ("t1-pump-1-1000-1.wav", 7_200, true),
        ("t1-pump-1-2000-2.wav", 60, false),
        ("t1-pump-1-3000-3.wav.tmp", 7_200, true),
        ("my-recording.wav", 7_200, false),
    ];
    for (f, age, _) in files {
        let p = dir.join(f);
        std::fs::write(&p, b"RIFF").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(now - Duration::from_secs(age))
            .unwrap();
    }

    let mut daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("retention removed", Duration::from_secs(30));
    // The counter is raised just after that line is logged.
    common::wait_metrics(
        &cfg,
        Duration::from_secs(5),
        "no removed clip counted",
        |m| common::metric(m, "sonitor_clips_removed_total ") == Some(1.0),
    );
    // Every scored window is in the machine's score histogram (read when no window is between the two counts).
    let m = common::wait_metrics(
        &cfg,
        Duration::from_secs(5),
        "the score histogram does not count the windows scored",
        |m| {
            let scored = common::metric(m, "sonitor_inferences_total{machine=\"pump-1\"}");
            scored >= Some(1.0)
                && common::metric(m, "sonitor_window_score_count{machine=\"pump-1\"}") == scored
                && common::metric(
                    m,
                    "sonitor_window_score_bucket{machine=\"pump-1\",le=\"+Inf\"}",
                ) == scored
        },
    );
    let mean = common::metric(&m, "sonitor_window_score_sum{machine=\"pump-1\"}").unwrap()
        / common::metric(&m, "sonitor_window_score_count{machine=\"pump-1\"}").unwrap();
    assert!((0.0..2.0).contains(&mean), "{m}");
    // The system clock as the kernel sees it, in the metrics and, when not synchronised, in the log.
    let synced = sonitor::clock::synchronized() != Some(false);
    let m = common::scrape(&cfg);
    assert_eq!(
        common::metric(&m, "sonitor_clock_synchronized "),
        Some(if synced { 1.0 } else { 0.0 }),
        "{m}"
    );
    assert_eq!(
        common::metric(&m, "sonitor_clock_jumps_total "),
        Some(0.0),
        "{m}"
    );
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        log.contains("the system clock is not synchronised"),
        !synced,
        "{log}"
    );
    assert!(!log.contains("alarm ON"), "{log}");
    assert!(
        log.contains("retention removed 1 clip(s): 1 older than clips.max_age"),
        "{log}"
    );
    assert!(
        log.contains("t1-pump-1-3000-3.wav.tmp, left by a clip write that never finished"),
        "{log}"
    );
    for (f, _, deleted) in files {
        assert_eq!(dir.join(f).exists(), !deleted, "{f}");
    }
}

/// The length in seconds of the one clip in pump-1's clip folder, which must be 16 kHz mono.
fn the_clip_seconds(state: &std::path::Path) -> f64 {
    let clips: Vec<_> = std::fs::read_dir(state.join("clips/pump-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(clips.len(), 1, "{clips:?}");
    let info = sonitor_core::audio::read_wav_info(&clips[0]).unwrap();
    assert_eq!((info.sample_rate, info.channels), (16_000, 1));
    info.duration_seconds()
}

/// A fault in the last seconds of a replayed file: the alarm's clip asks for 5 s after the onset, which never
/// come. The clip is written with the audio there is before the daemon exits, not lost with the process.
#[test]
fn a_fault_at_the_end_of_the_file_still_gets_its_clip() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(
        d.path(),
        "ends-faulty.wav",
        &common::recording(3.0, 2.0, 0.0),
    );
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    common::edit(&cfg, |t| {
        t.replace("post_seconds = 1.0", "post_seconds = 5.0")
    });

    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches("alarm ON: pump-1").count(), 1, "{log}");
    assert!(
        log.contains("the input's audio ended")
            && log.contains("the clip is written with the audio there is"),
        "{log}"
    );
    assert!(log.contains("clip written"), "{log}");
    // Pre 1 s + the onset window (0.5 s) + what followed it in the file: less than the 5 s asked for.
    let secs = the_clip_seconds(&d.path().join("state"));
    assert!(secs > 1.5 && secs < 3.5, "{secs} s");
}

/// SIGTERM while an alarm's clip still waits for the 30 s after its onset: the daemon writes it with the audio it
/// has before it exits.
#[test]
fn a_daemon_stopped_during_an_alarm_writes_its_waiting_clip() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) =
        common::bundle_and_wav(d.path(), "faulty.wav", &common::recording(2.0, 20.0, 0.0));
    let cfg = common::paced_config(d.path(), &wav, &b.dir, "");
    common::edit(&cfg, |t| {
        t.replace("post_seconds = 1.0", "post_seconds = 30.0")
    });

    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("alarm ON: pump-1", Duration::from_secs(30));
    // A second and a half of the fault after the alarm, then the stop.
    std::thread::sleep(Duration::from_millis(1500));
    let log = daemon.log.clone();
    assert_eq!(daemon.sigterm_and_wait(), 0, "{}", log.lock().unwrap());
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("the daemon stopped")
            && log.contains("the clip is written with the audio there is"),
        "{log}"
    );
    // Pre 1 s + the onset window (0.5 s) + the 1.5 s or so that followed before the stop, and as much again as
    // the windows lagged the audio on a loaded machine: not the 30 s asked for.
    let secs = the_clip_seconds(&d.path().join("state"));
    assert!(secs > 2.5 && secs < 8.0, "{secs} s");
}

/// A machine disabled in the file, then enabled in it while the daemon was stopped, is watched at the next start
/// (as SIGHUP would apply the change). The disable used to be saved and to win over the file for good: the file
/// could only ever force `false`.
#[test]
fn a_machine_enabled_again_in_the_file_is_watched_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "fault.wav", &common::recording(2.0, 3.0, 0.0));
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    common::edit(&cfg, |t| {
        t.replace("clear_n = 4\n", "clear_n = 4\nenabled = false\n")
    });
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("alarm ON"), "disabled: {log}");

    common::edit(&cfg, |t| t.replace("enabled = false\n", ""));
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("alarm ON: pump-1"), "enabled again: {log}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("state/alarms.json")).unwrap())
            .unwrap();
    assert_eq!(saved["pump-1"]["enabled"], true, "{saved}");
}

/// The events (start and end) waiting in the outbox, in order.
fn outbox_events(state: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(state.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap()
        })
        .filter(|r| r["topic"].as_str().unwrap().ends_with("/events"))
        .map(|r| serde_json::from_str::<serde_json::Value>(r["payload"].as_str().unwrap()).unwrap())
        .collect()
}

/// The types of the events of `open`'s event id waiting in the outbox, in order.
fn of_event(state: &std::path::Path, open: &serde_json::Value) -> Vec<String> {
    outbox_events(state)
        .iter()
        .filter(|e| e["event_id"] == open["event_id"])
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// The end events of the outbox, in order.
fn end_events(state: &std::path::Path) -> Vec<serde_json::Value> {
    outbox_events(state)
        .into_iter()
        .filter(|e| e["type"] == "end")
        .collect()
}

fn saved_event(state: &std::path::Path) -> serde_json::Value {
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("alarms.json")).unwrap()).unwrap();
    saved["pump-1"]["event"].clone()
}

/// An alarm still on when the daemon stopped, whose machine is disabled (in the file) or muted (a mute saved
/// with the state) at the next start, ends there: an end event and an OFF in the outbox, no open event left in the
/// saved state. The transition of the start used to be discarded: the event never ended.
#[test]
fn an_alarm_open_at_a_start_that_disables_or_mutes_its_machine_ends() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    // The fault lasts to the end of the file: the alarm is still on when the daemon exits.
    let (b, wav) = common::bundle_and_wav(d.path(), "fault.wav", &common::recording(2.0, 3.0, 0.0));
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    let run = || {
        let mut daemon = common::Daemon::start(&cfg, &[]);
        let (code, log) = daemon.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{log}");
        log
    };
    let log = run();
    assert!(log.contains("alarm ON: pump-1"), "{log}");
    let open = saved_event(&state);
    assert!(
        open["event_id"].is_string() && open["announced"] == true,
        "{open}"
    );
    // As a kill between the messages' entering the outbox and the raise's second save leaves it: saved, not
    // announced, its start waiting in the outbox. It is not put in twice.
    let path = state.join("alarms.json");
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    saved["pump-1"]["event"]["announced"] = false.into();
    std::fs::write(&path, saved.to_string()).unwrap();
    let starts_before = outbox_events(&state)
        .iter()
        .filter(|e| e["event_id"] == open["event_id"] && e["type"] == "start")
        .count();
    assert_eq!(starts_before, 1);

    // Disabled in the file.
    common::edit(&cfg, |t| {
        t.replace("clear_n = 4\n", "clear_n = 4\nenabled = false\n")
    });
    let log = run();
    assert!(log.contains("alarm OFF: pump-1 (disabled"), "{log}");
    assert!(
        log.contains(
            "was saved before its start entered the outbox, where it waits: it is not sent twice"
        ),
        "{log}"
    );
    assert_eq!(of_event(&state, &open), ["start", "end"]);
    assert!(saved_event(&state).is_null(), "{}", saved_event(&state));
    let ends = end_events(&state);
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["event_id"], open["event_id"]);
    assert_eq!(ends[0]["reason"], "disabled");

    // Enabled again, a new alarm left on; then a mute saved with the state (as `mute/set` leaves it at a stop).
    common::edit(&cfg, |t| t.replace("enabled = false\n", ""));
    let log = run();
    assert!(log.contains("alarm ON: pump-1"), "{log}");
    let open = saved_event(&state);
    assert!(open["event_id"].is_string(), "{open}");
    let path = state.join("alarms.json");
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    saved["pump-1"]["muted_until_unix"] = until.into();
    // And its clip gone, as when the daemon was killed before it wrote it: the end names none.
    let clip = open["clip"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&clip).is_file(), "{open}");
    saved["pump-1"]["event"]["clip"] = format!("{clip}.never-written").into();
    // And killed between the raise's first save and its messages' entering the outbox: saved, not announced,
    // nothing of it in the outbox. Its start goes in at the next start, before its end.
    saved["pump-1"]["event"]["announced"] = false.into();
    std::fs::write(&path, saved.to_string()).unwrap();
    for f in std::fs::read_dir(state.join("outbox")).unwrap() {
        let f = f.unwrap().path();
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let payload = rec["payload"].as_str().unwrap();
        let alarm_on = rec["topic"].as_str().unwrap().ends_with("/alarm") && payload == "ON";
        if alarm_on || payload.contains(open["event_id"].as_str().unwrap()) {
            std::fs::remove_file(f).unwrap();
        }
    }
    assert!(of_event(&state, &open).is_empty());
    let log = run();
    assert!(log.contains("alarm OFF: pump-1 (muted"), "{log}");
    assert!(
        log.contains(
            "was raised but not yet in the outbox when the daemon stopped: its start is sent now"
        ),
        "{log}"
    );
    assert_eq!(of_event(&state, &open), ["start", "end"]);
    assert!(
        log.contains(".never-written was never written: its end names none"),
        "{log}"
    );
    assert!(saved_event(&state).is_null(), "{}", saved_event(&state));
    // The mute is saved again with when it was saved, so that the next start cannot stretch it.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let at = saved["pump-1"]["muted_saved_unix"].as_u64();
    assert!(
        at.is_some_and(|at| at + 3600 >= until && at <= until),
        "{saved}"
    );
    assert!(
        saved["pump-1"]["muted_until_unix"]
            .as_u64()
            // Rounded up to the second when saved again.
            .is_some_and(|u| u <= until + 1 && u + 120 >= until),
        "{saved}"
    );
    let ends = end_events(&state);
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert_eq!(ends[1]["event_id"], open["event_id"]);
    assert_eq!(ends[1]["reason"], "muted");
    assert!(
        ends[1]["clip"].is_null() && ends[0]["clip"].is_string(),
        "{ends:?}"
    );
}

/// A machine that stops while it alarms, with `idle_below_dbfs` between its running and its standing level: the
/// alarm ends with reason `idle`, its quiet windows are judged against nothing, and the machine is watched again
/// (and alarms again, the fault still there) once it runs. The same recording without the setting judges every
/// window: its alarm outlasts the stop.
#[test]
fn a_machine_that_stops_is_idle_not_anomalous() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let pump = common::pump();
    let running = sonitor::window::window_level_dbfs(&pump);
    // 2 s running normally, 4 s with the fault, 5 s standing (60 dB quieter: the hall's background), 4 s running
    // with the fault again.
    let fault = common::recording(2.0, 4.0, 0.0);
    let mut audio = fault.clone();
    audio.extend(pump.iter().cycle().take(5 * 16_000).map(|x| x * 1e-3));
    audio.extend(common::make_anomalous(
        &pump
            .iter()
            .cycle()
            .take(4 * 16_000)
            .copied()
            .collect::<Vec<f32>>(),
    ));
    let (b, wav) = common::bundle_and_wav(d.path(), "stop.wav", &audio);
    let gate = running - 20.0;
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    common::edit(&cfg, |t| {
        t.replace(
            "clear_n = 4\n",
            &format!("clear_n = 4\nidle_below_dbfs = {gate:.1}\n"),
        )
    });
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("pump-1: not running (window level"), "{log}");
    assert!(log.contains("pump-1: running again"), "{log}");
    assert_eq!(log.matches("alarm ON: pump-1").count(), 2, "{log}");
    assert!(log.contains("alarm OFF: pump-1 (idle"), "{log}");
    let ends = end_events(&state);
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["reason"], "idle");
    // The second alarm is still on at the end of the file.
    assert!(saved_event(&state)["event_id"].is_string());

    // Without the idle level, every window is judged: no alarm ends while the machine stands.
    std::fs::remove_dir_all(&state).unwrap();
    common::edit(&cfg, |t| {
        t.lines()
            .filter(|l| !l.starts_with("idle_below_dbfs"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("not running"), "{log}");
    assert!(!log.contains("(idle"), "{log}");
}

/// An input without signal (digital silence; a channel stuck at 0.9, or with a bit flipping once) raises no alarm: its windows say nothing of
/// the machine and are not judged. An alarm raised before the input went dead stays as it was.
#[test]
fn an_input_without_signal_is_not_judged() {
    let d = tempfile::tempdir().unwrap();
    // Silence; stuck at 0.9; stuck with one sample a bit off (-129 dBFS over the test model's window).
    for (name, value, blip) in [
        ("silence.wav", 0.0f32, 0.0),
        ("stuck.wav", 0.9, 0.0),
        ("blip.wav", 0.9, 1.0 / 32767.0),
    ] {
        let mut audio = vec![value; 8 * 16_000];
        audio[40_000] += blip;
        let (b, wav) = common::bundle_and_wav(d.path(), name, &audio);
        let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
        let mut daemon = common::Daemon::start(&cfg, &[]);
        let (code, log) = daemon.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{name}: {log}");
        assert!(
            log.contains("pump-1: no signal in its window"),
            "{name}: {log}"
        );
        assert!(!log.contains("alarm ON"), "{name}: {log}");
    }
    let state = d.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    let mut audio = common::recording(2.0, 4.0, 0.0);
    audio.extend(std::iter::repeat_n(0.0, 8 * 16_000));
    let (b, wav) = common::bundle_and_wav(d.path(), "dead.wav", &audio);
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches("alarm ON: pump-1").count(), 1, "{log}");
    assert!(log.contains("pump-1: no signal in its window"), "{log}");
    assert!(!log.contains("alarm OFF"), "{log}");
    assert!(saved_event(&state)["event_id"].is_string());
}

/// A bug that panics one of the daemon's threads ends the daemon with status 70 (EX_SOFTWARE, which the unit's
/// `Restart=on-failure` restarts), also when it panics while the daemon stops, the panic in its log, and the alarm raised before it in the outbox: not a
/// daemon that runs on without that thread (a reader gone cuts no more windows, and nothing then starves the
/// watchdog; a clip writer gone woke the main loop without pause). The panic is injected
/// (`SONITOR_FAULT_PANIC`, read by test builds only).
#[test]
fn a_thread_that_panics_ends_the_daemon_with_status_70() {
    if !common::faults_injectable() {
        return;
    }
    for (point, thread, alarm_first) in [
        ("reader", "reader-mic", false),
        ("features", "features", false),
        ("clips", "clips", true),
        // After the main loop, while the daemon stops at the end of the file.
        ("reader-stopping", "reader-mic", true),
        // The main loop itself, at its first score.
        ("controller", "main", false),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (b, wav) =
            common::bundle_and_wav(d.path(), "rec.wav", &common::recording(2.0, 3.0, 3.0));
        let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
        let mut daemon = common::Daemon::start(&cfg, &[("SONITOR_FAULT_PANIC", point)]);
        let (code, log) = daemon.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(70), "{point}: {log}");
        for needle in [
            format!("thread '{thread}' panicked at "),
            format!("fault injected at '{point}'"),
            "exiting with status 70 so that the service manager restarts sonitor".to_string(),
        ] {
            assert!(log.contains(&needle), "{point}: no '{needle}' in:\n{log}");
        }
        if alarm_first {
            // The clip is asked for by the alarm: its start event waits in the outbox for a broker.
            assert!(log.contains("alarm ON: pump-1"), "{log}");
            let events = outbox_events(&d.path().join("state"));
            assert!(events.iter().any(|e| e["type"] == "start"), "{events:?}");
        }
    }
}

/// A second daemon on the same state directory (the service, and the same configuration run by hand) is refused
/// with status 75, which the unit's `Restart=on-failure` retries, naming the one that holds it; that one runs on
/// untouched, and once it has stopped the second starts.
#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(3.0, 0.0, 0.0));
    let cfg = common::file_config(
        d.path(),
        &wav,
        &b.dir,
        "realtime = true\nat_end = \"loop\"\n",
        "",
    );
    // Its own metrics port: the state directory, not the port, is what the two would share.
    let second_cfg = d.path().join("second.toml");
    std::fs::write(
        &second_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[metrics]\n", "[metrics]\nenabled = false\n"),
    )
    .unwrap();
    let first = common::Daemon::start(&cfg, &[]);
    first.wait_log("input mic open", Duration::from_secs(30));
    let mut second = common::Daemon::start(&second_cfg, &[]);
    let (code, log) = second.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(75), "{log}");
    let state = d.path().join("state");
    for needle in [
        format!(
            "another sonitor (pid {}) runs on the state directory {}",
            first.child.id(),
            state.display()
        ),
        "systemctl stop sonitor".to_string(),
    ] {
        assert!(log.contains(&needle), "no '{needle}' in:\n{log}");
    }
    assert!(!log.contains("input mic open"), "{log}");
    // `validate` of the same file says that a daemon runs on it now, and which.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["validate", "--config"])
        .arg(&second_cfg)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "note: a sonitor (pid {}) runs on its state directory",
            first.child.id()
        )),
        "{said}"
    );
    assert_eq!(first.sigterm_and_wait(), 0);
    let second = common::Daemon::start(&second_cfg, &[]);
    second.wait_log("input mic open", Duration::from_secs(30));
    assert_eq!(second.sigterm_and_wait(), 0);
}

/// A panic whose orderly stop then hangs (a thread the stop waits for, stuck) still ends the process with status
/// 70, by the panic hook's timer 20 s after the panic, instead of leaving a daemon that only systemd's watchdog
/// would end. The reader's panic and the hang in the stop are injected (test builds only).
#[test]
fn a_stop_that_hangs_after_a_panic_still_ends_with_status_70() {
    if !common::faults_injectable() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(2.0, 3.0, 3.0));
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    let started = std::time::Instant::now();
    let mut daemon = common::Daemon::start(
        &cfg,
        &[
            ("SONITOR_FAULT_PANIC", "reader"),
            ("SONITOR_FAULT_HANG", "stopping"),
        ],
    );
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    eprintln!("exited with {code:?} {took:?} after the start");
    assert_eq!(code, Some(70), "{log}");
    assert!(log.contains("fault injected at 'reader'"), "{log}");
    assert!(
        log.contains("the stop after a panic did not end within 20 s; exiting with status 70"),
        "{log}"
    );
    // The timer, not something sooner: the stop itself never ended.
    assert!(took >= Duration::from_secs(20), "{took:?}");
}

/// A thread that never ends held the orderly stop for ever: `systemctl stop` then ended the daemon by SIGKILL at
/// the unit's TimeoutStopSec, and the journal said only that the stop timed out. The stop now has a deadline
/// (`STOP_DEADLINE`, 10 s): it names what it still waits for and exits with status 70, below the unit's 15 s, the
/// alarm states saved. A reader and the MQTT publisher held (`SONITOR_FAULT_HANG`, test builds only), each in its
/// own daemon, both at once.
#[test]
fn a_stop_held_by_a_stuck_thread_ends_at_its_deadline() {
    if !common::faults_injectable() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let broker = common::Broker::start(&d.path().join("broker"));
    let mut runs: Vec<_> = [
        ("reader", "thread 'reader-mic'"),
        ("mqtt", "thread 'mqtt' (the last MQTT messages)"),
    ]
    .into_iter()
    .map(|(point, named)| {
        let dir = d.path().join(point);
        std::fs::create_dir_all(&dir).unwrap();
        let (b, wav) = common::bundle_and_wav(&dir, "rec.wav", &common::recording(3.0, 0.0, 0.0));
        let device = common::file_device(&wav, "realtime = true\nat_end = \"loop\"\n");
        let cfg = common::config(&dir, &device, &b.dir, broker.port, "");
        // Two nodes on one broker: each its own id.
        let daemon = common::Daemon::start(
            &cfg,
            &[("SONITOR_FAULT_HANG", point), ("SONITOR_NODE_ID", point)],
        );
        (named, dir, daemon)
    })
    .collect();
    for (_, _, daemon) in &runs {
        daemon.wait_log("input mic open", Duration::from_secs(30));
    }
    let asked = std::time::Instant::now();
    for (_, _, daemon) in &runs {
        daemon.sigterm();
    }
    for (named, dir, daemon) in &mut runs {
        let (code, log) = daemon.wait_exit(Duration::from_secs(60));
        let took = asked.elapsed();
        eprintln!("{named}: exited with {code:?} {took:?} after SIGTERM");
        assert_eq!(code, Some(70), "{log}");
        assert!(
            log.contains(&format!(
                "the stop did not end within 10 s: still waiting for {named}; exiting with status 70 without it"
            )),
            "{log}"
        );
        // The deadline, not sooner, and before systemd's SIGKILL (TimeoutStopSec=15 in the shipped unit).
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert!(took < Duration::from_secs(15), "{took:?}");
        // Saved before the stop waited for anything.
        assert!(dir.join("state/alarms.json").is_file(), "{log}");
    }
}

/// A thread stuck (as in a deadlock, no panic) starves systemd's watchdog, so that systemd restarts the daemon.
/// A stuck reader's windows stop, and a pipeline with no window waiting looked idle, not stuck; a stuck clip
/// writer or MQTT publisher showed nowhere in the audio's progress: the watchdog was fed for ever. Same looped
/// real-time replay, published to a broker, with and without one thread held (`SONITOR_FAULT_HANG`, test builds
/// only), a 0.4 s watchdog checked every 0.1 s, 3 s of notifications each.
#[test]
fn a_thread_that_hangs_starves_the_watchdog() {
    if !common::faults_injectable() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let broker = common::Broker::start(&d.path().join("broker"));
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(3.0, 0.0, 0.0));
    let device = common::file_device(&wav, "realtime = true\nat_end = \"loop\"\n");
    let cfg = common::config(d.path(), &device, &b.dir, broker.port, "");
    let pings = |hang: Option<&str>| {
        let sock_dir = tempfile::tempdir().unwrap();
        let mut notify = common::Notify::bind(sock_dir.path());
        let mut envs = notify.envs().to_vec();
        if let Some(point) = hang {
            envs.push(("SONITOR_FAULT_HANG", point));
        }
        let daemon = common::Daemon::start(&cfg, &envs);
        daemon.wait_log("input mic open", Duration::from_secs(30));
        notify.collect_for(Duration::from_secs(3));
        if hang.is_some() {
            // Its stop would wait for the stuck thread until the stop's deadline (the next test).
            daemon.sigkill();
        } else {
            assert_eq!(daemon.sigterm_and_wait(), 0);
        }
        notify.notes.matches("WATCHDOG=1").count()
    };
    let healthy = pings(None);
    eprintln!("watchdog pings in 3 s: {healthy} healthy");
    // The reader turns at least every 0.25 s, the others at each check, so a healthy daemon is pinged about 4
    // times a second or more.
    assert!(healthy >= 5, "{healthy} pings in 3 s from a healthy daemon");
    for point in ["reader", "clips", "mqtt"] {
        let stuck = pings(Some(point));
        eprintln!("watchdog pings in 3 s: {stuck} with the {point} thread stuck");
        // The first check may still find the stuck thread's first turn.
        assert!(
            stuck <= 1,
            "{stuck} pings in 3 s with the {point} thread stuck"
        );
    }
}

/// A file replayed to its end with `at_end = "stop"` leaves the daemon running with no more audio for its machine:
/// its health says `NO_AUDIO` and its input is down, not the `OK` of the last window, which hid a machine no
/// longer watched.
#[test]
fn a_replay_that_stops_at_its_end_leaves_its_machine_without_audio() {
    let d = tempfile::tempdir().unwrap();
    let (_b, cfg) = replay_of_normal(d.path(), "realtime = false\nat_end = \"stop\"\n", "");
    // Under systemd's watchdog: the end is as configured, so the watchdog is still fed after it (nothing fed it
    // once the file had ended, and systemd restarted the daemon, which replayed the file again).
    let sock_dir = tempfile::tempdir().unwrap();
    let mut notify = common::Notify::bind(sock_dir.path());
    let daemon = common::Daemon::start(&cfg, &notify.envs());
    // The notifications are read while waiting: unread, they would fill the socket's queue.
    let t0 = std::time::Instant::now();
    while !daemon
        .log
        .lock()
        .unwrap()
        .contains("health of pump-1: NO_AUDIO")
    {
        assert!(t0.elapsed() < Duration::from_secs(35), "no NO_AUDIO");
        notify.collect_for(Duration::from_millis(100));
    }
    daemon.wait_log("its machines get no more audio", Duration::from_secs(1));
    notify.notes.clear();
    notify.collect_for(Duration::from_secs(2));
    let pings = notify.notes.matches("WATCHDOG=1").count();
    assert!(
        pings >= 4,
        "{pings} watchdog pings in 2 s after the end: {:?}",
        notify.notes
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["machines"][0]["health"], "NO_AUDIO", "{json}");
    assert_eq!(j["inputs"][0]["up"], false, "{json}");
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// `sonitor reload` (the shipped unit's ExecReload) gives `systemctl reload` the daemon's answer: 0 when it applied
/// the file, 78 when it refused it (a SIGHUP alone always succeeded, and only the log said the file was refused),
/// 78 without asking for a file that does not parse, and 69 when no daemon runs.
#[test]
fn the_reload_command_reports_whether_the_daemon_applied_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) =
        common::bundle_and_wav(d.path(), "normal.wav", &common::recording(3.0, 0.0, 0.0));
    let keys = "realtime = true\nat_end = \"loop\"\n";
    let cfg = common::file_config(d.path(), &wav, &b.dir, keys, "");
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("metrics on http://", Duration::from_secs(20));
    common::wait_metrics(&cfg, Duration::from_secs(20), "the daemon's metrics", |m| {
        common::metric(m, "sonitor_inferences_total{machine=\"pump-1\"}") >= Some(1.0)
    });
    let sonitor = |args: &[&str]| {
        let (code, text, _) = sonitor_on(args, &cfg);
        (code, text)
    };
    let reload = || sonitor(&["reload", "--timeout", "20"]);
    let (code, text) = reload();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("applied"), "{text}");
    // Another file on the same state directory (a copy being edited): the daemon would re-read its own file, so
    // nothing is sent, where "applied" was said of a file whose threshold never took effect; `validate` of it
    // says so too.
    let other = d.path().join("copy.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("raise_k = 2\n", "raise_k = 2\nthreshold = 0.3\n"),
    )
    .unwrap();
    let runs = std::fs::canonicalize(&cfg).unwrap();
    let (code, text, _) = sonitor_on(&["reload", "--timeout", "20"], &other);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains(&format!(
            "runs {}, and a reload re-reads that file",
            runs.display()
        )) && text.contains("nothing sent"),
        "{text}"
    );
    let (code, text, _) = sonitor_on(&["validate"], &other);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("now with another file, {}", runs.display())),
        "{text}"
    );
    // `status` of it shows the daemon, and says whose file that is: it had said "as last loaded" of the copy.
    let (code, text, _) = sonitor_on(&["status"], &other);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("1 machine(s)")
            && text.contains(&format!(
                "the daemon runs {}, not {}",
                runs.display(),
                other.display()
            )),
        "{text}"
    );
    // A copy with a problem of its own: a restart with it would be refused, a reload would not read it.
    let good = std::fs::read_to_string(&other).unwrap();
    assert!(good.contains("raise_k = 2"), "{good}");
    std::fs::write(&other, good.replace("raise_k = 2", "raise_k = 99")).unwrap();
    let (code, text, _) = sonitor_on(&["status"], &other);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("1 machine(s)")
            && text.contains(&format!(
                "the daemon above runs {}, not this file, and a reload re-reads that one: a restart with this \
                 file would be refused",
                runs.display()
            ))
            && !text.contains("would be refused by a reload"),
        "{text}"
    );
    std::fs::write(&other, good).unwrap();
    let (_, text, _) = sonitor_on(&["validate"], &cfg);
    assert!(
        text.contains("takes effect there when it reloads"),
        "{text}"
    );
    // `sonitor status` reads the same metrics: the machine, its threshold in force and its model.
    let (code, shown) = sonitor(&["status"]);
    assert_eq!(code, Some(0), "{shown}");
    let row = shown
        .lines()
        .find(|l| l.starts_with("pump-1 "))
        .unwrap_or_else(|| panic!("{shown}"));
    let threshold = format!("{:.4}", b.threshold);
    assert!(
        row.contains(&threshold) && row.contains("OK") && row.contains("test-randproj"),
        "{shown}"
    );
    assert!(shown.contains("1 machine(s), 0 alarm(s) on"), "{shown}");
    // Nothing of the machine needs attention: OK, watched, no alarm.
    let attention = shown
        .lines()
        .find(|l| l.starts_with("attention: "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(!attention.contains("pump-1"), "{shown}");
    let (code, json) = sonitor(&["status", "--json"]);
    assert_eq!(code, Some(0), "{json}");
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(j["attention"].is_array(), "{json}");
    assert_eq!(j["machines"][0]["name"], "pump-1", "{json}");
    assert_eq!(j["machines"][0]["threshold"], b.threshold, "{json}");
    assert_eq!(j["machines"][0]["alarm"], false, "{json}");
    assert_eq!(j["pid"], daemon.child.id(), "{json}");

    // Applied, but a change that only a restart applies ([clips]) is pending: said by the command, the metrics and
    // `status`, until a reload of a file without it.
    let good = std::fs::read_to_string(&cfg).unwrap();
    common::edit(&cfg, |t| {
        t.replace("post_seconds = 1.0\n", "post_seconds = 1.5\n")
    });
    let (code, text) = reload();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("applied") && text.contains("wait for a restart"),
        "{text}"
    );
    daemon.wait_log("waiting for a restart: [clips]", Duration::from_secs(5));
    common::assert_metrics(
        &common::scrape(&cfg),
        &[("sonitor_config_restart_pending", 1.0)],
    );
    let (_, shown) = sonitor(&["status"]);
    assert!(shown.contains("wait for a restart"), "{shown}");
    std::fs::write(&cfg, &good).unwrap();
    let (code, text) = reload();
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("restart"), "{text}");
    common::assert_metrics(
        &common::scrape(&cfg),
        &[("sonitor_config_restart_pending", 0.0)],
    );
    // A machine disabled, then enabled, in the file: the reload's line names it (it said "0 machine(s) with new
    // detector settings, 0 with a new model", and nothing else).
    common::edit(&cfg, |t| {
        t.replace("raise_k = 2\n", "raise_k = 2\nenabled = false\n")
    });
    assert_eq!(reload().0, Some(0));
    daemon.wait_log(", 1 disabled (pump-1)", Duration::from_secs(5));
    std::fs::write(&cfg, &good).unwrap();
    assert_eq!(reload().0, Some(0));
    daemon.wait_log(", 1 enabled (pump-1)", Duration::from_secs(5));

    // Refused by the daemon (the same check as `validate`): the running configuration stays, and the exit says so.
    common::edit(&cfg, |t| {
        t.replace(
            "raise_k = 2\n",
            "raise_k = 2\nthreshold = 0.5\nthreshold_off = 0.9\n",
        )
    });
    let (code, text) = reload();
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("refused") && text.contains("keeps its running configuration"),
        "{text}"
    );
    daemon.wait_log("keeping the running configuration", Duration::from_secs(5));
    // `status` on that file (it parses, its settings are refused): 78, the running daemon shown all the same.
    let (code, shown) = sonitor(&["status"]);
    assert_eq!(code, Some(78), "{shown}");
    assert!(
        shown.contains("1 machine(s), 0 alarm(s) on") && shown.contains("would be refused"),
        "{shown}"
    );

    // A file that does not parse is not sent: the reason is printed here, and the daemon is not asked.
    std::fs::write(
        &cfg,
        good.replace("raise_k = 2\n", "raise_k = 2\nraise_kk = 3\n"),
    )
    .unwrap();
    let (code, text) = reload();
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("raise_kk") && text.contains("not sent"),
        "{text}"
    );
    // `status` on that file: 78 for the file, and the running daemon's status all the same (its lock file is in
    // the state directory the file still names), as it is what someone asks right after a refused reload.
    let (code, shown) = sonitor(&["status"]);
    assert_eq!(code, Some(78), "{shown}");
    assert!(
        shown.contains("raise_kk")
            && shown.contains("1 machine(s), 0 alarm(s) on")
            && shown.contains("runs the configuration it loaded before"),
        "{shown}"
    );
    let m = common::scrape(&cfg);
    assert_eq!(
        common::metric(&m, "sonitor_config_reloads_total"),
        Some(6.0),
        "{m}"
    );

    // A file that moves `[metrics] listen` (applied only by a restart): the answer is read where the running
    // daemon serves its metrics, as its lock file says, not at the file's new address where nothing answers.
    let elsewhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let listen = good
        .lines()
        .find(|l| l.starts_with("listen = "))
        .unwrap()
        .to_string();
    let moved = good.replace(&listen, &format!("listen = \"{elsewhere}\""));
    std::fs::write(
        &cfg,
        moved.replace("raise_k = 2\n", "raise_k = 2\nthreshold = 3\n"),
    )
    .unwrap();
    let (code, text) = reload();
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("refused"), "{text}");
    std::fs::write(&cfg, &moved).unwrap();
    let (code, text) = reload();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("applied") && text.contains("wait for a restart"),
        "{text}"
    );
    let (code, shown) = sonitor(&["status"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("wait for a restart"), "{shown}");

    std::fs::write(&cfg, &good).unwrap();
    let (code, text) = reload();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(daemon.sigterm_and_wait(), 0);
    let (code, text) = reload();
    assert_eq!(code, Some(69), "{text}");
    assert!(text.contains("no sonitor runs"), "{text}");
    let (code, shown) = sonitor(&["status"]);
    assert_eq!(code, Some(69), "{shown}");
}

/// `sonitor status` and `sonitor reload` read the daemon of their file: a daemon whose metrics port another sonitor
/// took first (it runs without its endpoint) is not shown as that other one, and once it has stopped, the other's
/// metrics are not shown as its own. A daemon that takes the connection and never answers (stopped) ends `reload`
/// at its `--timeout`, and `status` says it said nothing.
#[test]
fn status_and_reload_read_the_daemon_of_their_file_only() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, wav) =
        common::bundle_and_wav(da.path(), "normal.wav", &common::recording(3.0, 0.0, 0.0));
    let keys = "realtime = true\nat_end = \"loop\"\n";
    let cfg_a = common::file_config(da.path(), &wav, &b.dir, keys, "");
    let cfg_b = common::file_config(db.path(), &wav, &b.dir, keys, "");
    let listen_of = |cfg: &std::path::Path| {
        std::fs::read_to_string(cfg)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("listen = "))
            .unwrap()
            .to_string()
    };
    let (listen_a, listen_b) = (listen_of(&cfg_a), listen_of(&cfg_b));
    common::edit(&cfg_b, |t| {
        t.replace(&listen_b, &listen_a)
            .replace("node_id = \"t1\"", "node_id = \"t2\"")
    });
    let sonitor = sonitor_on;
    let a = common::Daemon::start(&cfg_a, &[]);
    a.wait_log("metrics on http://", Duration::from_secs(20));
    let bd = common::Daemon::start(&cfg_b, &[]);
    bd.wait_log(
        "the daemon runs without its metrics endpoint",
        Duration::from_secs(20),
    );
    let (code, text, _) = sonitor(&["status"], &cfg_b);
    assert_eq!(code, Some(69), "{text}");
    assert!(
        text.contains(&format!(
            "serves the metrics of another sonitor (pid {}, node_id t1)",
            a.child.id()
        )) && text.contains(&format!("sonitor (pid {})", bd.child.id())),
        "{text}"
    );
    let (code, text, took) = sonitor(&["reload", "--timeout", "20"], &cfg_b);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("serves the metrics of another sonitor") && took < Duration::from_secs(10),
        "{text}"
    );
    bd.wait_log(
        &format!("reloaded {}", cfg_b.display()),
        Duration::from_secs(10),
    );
    assert_eq!(bd.sigterm_and_wait(), 0);
    let (code, text, _) = sonitor(&["status"], &cfg_b);
    assert_eq!(code, Some(69), "{text}");
    assert!(
        text.contains("no sonitor runs on the state directory")
            && text.contains("another sonitor's (pid"),
        "{text}"
    );

    // Stopped (SIGSTOP): the kernel still takes the connection, and nothing answers.
    let pid = a.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (code, text, took) = sonitor(&["reload", "--timeout", "1"], &cfg_a);
    assert_eq!(code, Some(1), "{text}");
    assert!(took < Duration::from_secs(4), "{took:?}: {text}");
    let (code, text, _) = sonitor(&["status"], &cfg_a);
    assert_eq!(code, Some(69), "{text}");
    assert!(
        text.contains("said nothing within 5 s (stopped, or hung?"),
        "{text}"
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(a.sigterm_and_wait(), 0);

    // Another program on the port (a web server answering 404): reload only sends the signal (it waited its whole
    // timeout for an answer no web server gives), and status says the daemon runs without its endpoint.
    let addr = listen_a
        .trim_start_matches("listen = ")
        .trim_matches('"')
        .to_string();
    let server = std::net::TcpListener::bind(&addr).unwrap();
    std::thread::spawn(move || {
        for mut s in server.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = std::io::Write::write_all(&mut s, b"HTTP/1.0 404 File not found\r\n\r\n");
        }
    });
    let bd = common::Daemon::start(&cfg_b, &[]);
    bd.wait_log(
        "the daemon runs without its metrics endpoint",
        Duration::from_secs(20),
    );
    let (code, text, took) = sonitor(&["reload", "--timeout", "20"], &cfg_b);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("another program holds that port") && took < Duration::from_secs(10),
        "{took:?}: {text}"
    );
    let (code, text, _) = sonitor(&["status"], &cfg_b);
    assert_eq!(code, Some(69), "{text}");
    assert!(
        text.contains("not sonitor's metrics: another program holds")
            && text.contains("runs without its metrics endpoint"),
        "{text}"
    );
    assert_eq!(bd.sigterm_and_wait(), 0);
}

/// A threshold changed in the file replaces a `threshold/set` override, at a reload and when changed while the
/// daemon was stopped, as a changed `enabled` replaces an `enabled/set`; a file whose threshold stays leaves the
/// override in force (it used to stay whatever the file said, with "0 machine(s) with new detector settings").
#[test]
fn a_threshold_changed_in_the_file_replaces_a_threshold_set() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let (b, wav) =
        common::bundle_and_wav(d.path(), "normal.wav", &common::recording(3.0, 0.0, 0.0));
    let keys = "realtime = true\nat_end = \"loop\"\n";
    let cfg = common::file_config(d.path(), &wav, &b.dir, keys, "");
    common::edit(&cfg, |t| {
        t.replace("raise_k = 2\n", "raise_k = 2\nthreshold = 0.3\n")
    });
    let threshold = |daemon: &common::Daemon, want: f64| {
        daemon.wait_log("metrics on http://", Duration::from_secs(20));
        common::wait_metrics(
            &cfg,
            Duration::from_secs(20),
            &format!("threshold {want}"),
            |m| common::metric(m, "sonitor_threshold{machine=\"pump-1\"}") == Some(want),
        );
    };
    // The override a threshold/set command leaves in the saved state.
    let set_override = |value: f64| {
        let path = state.join("alarms.json");
        let mut saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        saved["pump-1"]["threshold_override"] = value.into();
        std::fs::write(&path, saved.to_string()).unwrap();
    };
    let daemon = common::Daemon::start(&cfg, &[]);
    threshold(&daemon, 0.3);
    assert_eq!(daemon.sigterm_and_wait(), 0);
    set_override(0.5);
    // The file as it was: the override stands, also through a reload of an unchanged threshold.
    let daemon = common::Daemon::start(&cfg, &[]);
    threshold(&daemon, 0.5);
    common::edit(&cfg, |t| t.replace("raise_k = 2\n", "raise_k = 3\n"));
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_log(
        "1 machine(s) with new detector settings",
        Duration::from_secs(10),
    );
    threshold(&daemon, 0.5);
    // A reload of a new threshold: the file's.
    common::edit(&cfg, |t| {
        t.replace("threshold = 0.3\n", "threshold = 0.35\n")
    });
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_log(
        "its threshold in the configuration file changed at this reload (to 0.35); it replaces the threshold 0.5",
        Duration::from_secs(10),
    );
    threshold(&daemon, 0.35);
    assert_eq!(daemon.sigterm_and_wait(), 0);
    // Changed while stopped: the file's again.
    set_override(0.5);
    common::edit(&cfg, |t| {
        t.replace("threshold = 0.35\n", "threshold = 0.4\n")
    });
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log(
        "changed while sonitor was stopped (to 0.4)",
        Duration::from_secs(10),
    );
    threshold(&daemon, 0.4);
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// `sonitor COMMAND … --config cfg`: its exit status, what it printed (stdout, then stderr), and how long it took.
fn sonitor_on(args: &[&str], cfg: &std::path::Path) -> (Option<i32>, String, Duration) {
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text, t0.elapsed())
}

/// Sixteen machines on one input, paced as a sound card paces it: every machine's windows are scored. The queues
/// held 8 windows whatever the number of machines, and a hop brings one window of each at once: the last 7
/// machines lost every window, always the same ones, while the CPU idled; they read NO_SCORES, blamed on gaps in
/// their audio.
#[test]
fn sixteen_machines_on_one_input_lose_no_window() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) =
        common::bundle_and_wav(d.path(), "normal.wav", &common::recording(3.0, 0.0, 0.0));
    let names: Vec<String> = (2..=16).map(|i| format!("pump-{i}")).collect();
    let extra: String = names
        .iter()
        .map(|n| {
            format!(
                "[[machines]]\nname = \"{n}\"\ndevice = \"mic\"\nbundle = \"{}\"\nsection = \"pump/section_00\"\n",
                b.dir.display()
            )
        })
        .collect();
    let cfg = common::file_config(
        d.path(),
        &wav,
        &b.dir,
        "realtime = true\nat_end = \"loop\"\n",
        &format!("enabled = false\n{extra}"),
    );
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(20));
    let all: Vec<String> = std::iter::once("pump-1".to_string()).chain(names).collect();
    let scored = |m: &str, name: &str| {
        common::metric(
            m,
            &format!("sonitor_inferences_total{{machine=\"{name}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let m = common::wait_metrics(
        &cfg,
        Duration::from_secs(30),
        "every machine's windows scored",
        |m| all.iter().all(|n| scored(m, n) >= 6.0),
    );
    for n in &all {
        assert_eq!(
            common::metric(
                &m,
                &format!("sonitor_dropped_windows_total{{machine=\"{n}\"}}")
            ),
            Some(0.0),
            "{m}"
        );
    }
    drop(daemon);
}

/// Audio an input's ring drops while the daemon is held up (a SIGSTOP here; a starved CPU alike) is logged, with
/// how long the daemon was held. Only `sonitor_dropped_samples_total` said so: 42 s of audio went without a line
/// after a SIGSTOP, the machine's health OK.
#[test]
fn audio_dropped_while_the_daemon_was_held_up_is_logged() {
    let d = tempfile::tempdir().unwrap();
    let (_b, cfg) = replay_of_normal(
        d.path(),
        "realtime = true\nat_end = \"loop\"\nring_seconds = 0.5\n",
        "",
    );
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon.child.id() as i32;
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(5));
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    daemon.wait_log("samples dropped so far", Duration::from_secs(10));
    let log = daemon.log.lock().unwrap().clone();
    assert!(log.contains("this daemon was held up for"), "{log}");
    assert!(log.contains("ring_seconds` (now 0.5 s)"), "{log}");
    drop(daemon);
}

/// A daemon configuration (MQTT off) whose device `mic` replays 3 s of normal sound with `device_keys`, `extra`
/// after its `[clips]`; and the bundle it is scored with.
fn replay_of_normal(
    dir: &std::path::Path,
    device_keys: &str,
    extra: &str,
) -> (common::TestBundle, std::path::PathBuf) {
    let (b, wav) = common::bundle_and_wav(dir, "normal.wav", &common::recording(3.0, 0.0, 0.0));
    let cfg = common::file_config(dir, &wav, &b.dir, device_keys, extra);
    (b, cfg)
}
