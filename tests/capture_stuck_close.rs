//! A capture stream whose close never returns: a driver that hangs in `snd_pcm_close` on a USB microphone pulled
//! out mid-stream, or here ALSA's `file` plugin (DESIGN.md §5) whose copy of the captured audio goes into a FIFO
//! that its reader holds open but never reads. Once the pipe is full the plugin's write blocks cpal's capture
//! thread, the frames stop, the supervisor sees a stall and drops the stream, and cpal's drop waits for that
//! thread for good. The supervisor itself was the thread stuck: it fed systemd's watchdog no more (systemd killed
//! and restarted the whole daemon, every machine with it) and a stop waited for it until its deadline (status 70).
//! Now the close runs on a thread of its own: the watchdog is fed while it waits, the log says what holds the
//! input, the input comes back once the close returns, and a stop during the wait is in order.
//!
//! One daemon per test, each with its own ALSA configuration (`ALSA_CONFIG_PATH`, read in the daemon's process).

mod common;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A device `alsa:stickymic` whose audio is `in.raw` (8 s of the pump) and whose plugin copies what it captures
/// into `out.fifo`; the FIFO's read end is returned, open and unread, so that the plugin's writes block once the
/// pipe is full. Returns the configuration, the read end and the ALSA configuration file.
fn stuck_device(dir: &Path) -> (PathBuf, std::fs::File, PathBuf) {
    let b = common::standard_bundle(dir);
    let raw = dir.join("in.raw");
    let bytes: Vec<u8> = common::recording(8.0, 0.0, 0.0)
        .iter()
        .flat_map(|x| ((x * 32767.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
        .collect();
    std::fs::write(&raw, bytes).unwrap();
    let fifo = dir.join("out.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opened for reading before the plugin opens it for writing (which would wait for a reader), and never read.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    // No alsa.conf (see tests/capture_alsa_file.rs).
    let conf = dir.join("asound.conf");
    let pcm = common::file_pcm("stickymic", &raw, &fifo, "a microphone whose close hangs");
    std::fs::write(&conf, pcm).unwrap();
    let device = "[[devices]]\nname = \"mic\"\nsource = \"capture\"\ndevice = \"alsa:stickymic\"\n\
                  channels = 1\nsample_rate = 16000\nstall_timeout = \"1s\"\nreopen_min = \"100ms\"\n\
                  reopen_max = \"300ms\"\n";
    let cfg = common::config(dir, device, &b.dir, 1, "");
    common::edit(&cfg, |t| t.replace("[mqtt]\n", "[mqtt]\nenabled = false\n"));
    (cfg, reader, conf)
}

const STUCK_SAID: &str = "input mic: closing its stream has not returned for";

#[test]
fn a_stream_whose_close_never_returns_does_not_hold_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, reader, conf) = stuck_device(d.path());
    let sock_dir = tempfile::tempdir().unwrap();
    let mut notify = common::Notify::bind(sock_dir.path());
    let mut envs = vec![("ALSA_CONFIG_PATH", conf.to_str().unwrap())];
    envs.extend(notify.envs());
    let daemon = common::Daemon::start(&cfg, &envs);
    // The pipe fills, the frames stop, the stream is closed, and its close hangs in cpal's join of its thread.
    let t0 = Instant::now();
    while !daemon.log.lock().unwrap().contains(STUCK_SAID) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the daemon did not log '{STUCK_SAID}'; log:\n{}",
            daemon.log.lock().unwrap()
        );
        notify.collect_for(Duration::from_millis(200));
    }
    let log = daemon.log.lock().unwrap().clone();
    assert!(
        log.contains("input mic: no frames for 1s; reopening"),
        "{log}"
    );
    // The watchdog (0.4 s) is still fed: the daemon waits for its device's audio stack, as for a device away.
    let before = notify.notes.matches("WATCHDOG=1").count();
    notify.collect_for(Duration::from_secs(3));
    let pings = notify.notes.matches("WATCHDOG=1").count() - before;
    eprintln!("watchdog pings in 3 s with the close stuck: {pings}");
    assert!(
        pings >= 5,
        "{pings} watchdog pings in 3 s: {:?}",
        notify.notes
    );
    notify.keep_draining();
    common::wait_metrics(
        &cfg,
        Duration::from_secs(10),
        "no stuck close counted",
        |m| {
            common::metric(m, "sonitor_input_stuck_closes_total{input=\"mic\"}") == Some(1.0)
                && common::metric(m, "sonitor_input_up{input=\"mic\"}") == Some(0.0)
        },
    );

    // The pipe is read again: the plugin's write returns, cpal's thread ends, the close returns, and the device
    // is opened again and scored (the new stream's copy is read too).
    let drained = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = drained.clone();
    let drain = std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 1 << 16];
        while !d2.load(std::sync::atomic::Ordering::SeqCst) {
            match reader.read(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => break,
            }
        }
    });
    daemon.wait_log(
        "input mic: its stream's close returned after",
        Duration::from_secs(30),
    );
    let scored = |m: &str| common::metric(m, "sonitor_inferences_total{machine=\"pump-1\"}");
    let before = scored(&common::wait_metrics(
        &cfg,
        Duration::from_secs(5),
        "",
        |_| true,
    ));
    common::wait_metrics(
        &cfg,
        Duration::from_secs(30),
        "nothing scored after the close",
        |m| {
            common::metric(m, "sonitor_input_reopens_total{input=\"mic\"}").unwrap_or(0.0) >= 1.0
                && scored(m) > before
        },
    );
    let log = daemon.log.lock().unwrap().clone();
    assert_eq!(
        log.matches(STUCK_SAID).count(),
        1,
        "said once per hang: {log}"
    );
    assert_eq!(daemon.sigterm_and_wait(), 0);
    drained.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = drain.join();
}

/// A stop while the close hangs ends in order (status 0, the state saved) instead of waiting for the supervisor
/// until the stop's deadline and exiting 70.
#[test]
fn a_stop_while_a_close_hangs_is_in_order() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, _reader, conf) = stuck_device(d.path());
    let daemon = common::Daemon::start(&cfg, &[("ALSA_CONFIG_PATH", conf.to_str().unwrap())]);
    daemon.wait_log(STUCK_SAID, Duration::from_secs(60));
    let t0 = Instant::now();
    let code = daemon.sigterm_and_wait();
    assert_eq!(code, 0);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}
