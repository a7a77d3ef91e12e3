//! A capture device whose open never returns (an ALSA plugin that waits on something: a network or Bluetooth PCM;
//! here ALSA's `file` plugin reading a FIFO nobody writes to, DESIGN.md §5) held `validate` and `run`'s start for
//! ever, deaf to SIGTERM. The device is asked on a thread of its own and waited for 10 s: `validate` warns and
//! exits 0, as for a device not there, `devices` ends its listing after 15 s saying why, and `run` starts (the
//! machine NO_AUDIO), says the open has not returned, keeps feeding systemd's watchdog, and stops on SIGTERM.
//!
//! One test per file: `ALSA_CONFIG_PATH` is read when ALSA is first used in a process.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_device_whose_open_never_returns_does_not_hold_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let fifo = d.path().join("in.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // No alsa.conf (see tests/capture_alsa_file.rs).
    let conf = d.path().join("asound.conf");
    let pcm = common::file_pcm(
        "stuckmic",
        &fifo,
        std::path::Path::new("/dev/null"),
        "a microphone that never answers",
    );
    std::fs::write(&conf, pcm).unwrap();
    let device = "[[devices]]\nname = \"mic\"\nsource = \"capture\"\ndevice = \"alsa:stuckmic\"\n\
                  channels = 1\nsample_rate = 16000\n";
    let cfg = common::config(d.path(), device, &b.dir, 1, "");
    common::edit(&cfg, |t| t.replace("[mqtt]\n", "[mqtt]\nenabled = false\n"));
    let envs = [("ALSA_CONFIG_PATH", conf.to_str().unwrap())];

    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .envs(envs)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("(alsa:stuckmic): it did not answer within 10 s")
            && said.contains("report health NO_AUDIO until it answers"),
        "{said}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    // The listing asks every device: it ends, saying why.
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .arg("devices")
        .envs(envs)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the listing did not end within 15 s"),
        "{said}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    // Under systemd's watchdog (0.4 s): the open that does not return is the device's trouble, as an unplugged
    // microphone is, so the watchdog is still fed; it starved, and systemd restarted the daemon every ~40 s,
    // which freed nothing and took the node offline each time. The notifications are read all along: a socket
    // left unread holds the daemon's main loop.
    let sock_dir = tempfile::tempdir().unwrap();
    let mut notify = common::Notify::bind(sock_dir.path());
    let mut with_notify = envs.to_vec();
    with_notify.extend(notify.envs());
    let daemon = common::Daemon::start(&cfg, &with_notify);
    let stuck_said = "input mic: opening its device has not returned for 20 s";
    let t0 = Instant::now();
    while !daemon.log.lock().unwrap().contains(stuck_said) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the daemon did not log '{stuck_said}'; log:\n{}",
            daemon.log.lock().unwrap()
        );
        notify.collect_for(Duration::from_millis(200));
    }
    assert!(
        daemon
            .log
            .lock()
            .unwrap()
            .contains("did not answer within 10 s"),
        "{}",
        daemon.log.lock().unwrap()
    );
    let before = notify.notes.matches("WATCHDOG=1").count();
    notify.collect_for(Duration::from_secs(3));
    let pings = notify.notes.matches("WATCHDOG=1").count() - before;
    eprintln!("watchdog pings in 3 s with the open stuck: {pings}");
    assert!(
        pings >= 5,
        "{pings} watchdog pings in 3 s: {:?}",
        notify.notes
    );
    notify.keep_draining();
    let t0 = Instant::now();
    // Its supervisor waits for the open on a thread of its own: the stop is in order.
    let code = daemon.sigterm_and_wait();
    assert_eq!(code, 0);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}
