//! The outbox when its filesystem stops taking writes (full, or remounted read-only): the messages it could not
//! write are still delivered, in order, and counted; the log says what happened to each, and never reports a
//! message that was never written as a file that cannot be removed.
//!
//! Linux refuses `unlink` on a read-only mount before it looks the name up, so removing a file that was never
//! written fails there with EROFS, not ENOENT. The first test gets the same kind of failure without privileges
//! (the directory replaced by a regular file: ENOTDIR); the second remounts a tmpfs read-only for real, in a
//! private mount namespace (skipped, with a message, where none can be made).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use sonitor::publish::outbox::{OutMessage, Outbox, Record};

/// Log lines, with the name of the thread that logged them (each test runs on its own thread).
static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        let line = format!("{}: {}", r.level(), r.args());
        LINES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((thread, line));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    if log::set_logger(&Capture).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// What this test's thread logged.
fn my_logs() -> Vec<String> {
    let me = std::thread::current().name().unwrap_or("").to_string();
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(t, _)| *t == me)
        .map(|(_, l)| l.clone())
        .collect()
}

fn m(topic: &str, payload: &str) -> OutMessage {
    OutMessage {
        topic: topic.into(),
        payload: payload.into(),
        retain: true,
    }
}

fn seqs<'a>(it: impl Iterator<Item = &'a Record>) -> Vec<u64> {
    it.map(|r| r.seq).collect()
}

/// Two messages written, the disk broken by `break_disk`, two more pushed (their write fails with
/// `write_error`), then all four acknowledged by the broker: every message is delivered in order, the two
/// unwritten ones are counted, and the log says what happened to each.
fn a_broken_disk_loses_nothing_silently(dir: &Path, break_disk: impl FnOnce(), write_error: &str) {
    capture_logs();
    let mut o = Outbox::open(dir, 100).unwrap();
    o.push(vec![m("a", "ON"), m("e", "start")]).unwrap();
    break_disk();
    let e = o
        .push(vec![m("a", "OFF"), m("e", "end")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("00000000000000000003.json") && e.contains(write_error),
        "{e}"
    );
    // Still waiting, in order, for the publisher; the two that have no file are counted and known.
    assert_eq!(seqs(o.records()), [1, 2, 3, 4]);
    assert_eq!(seqs(o.memory_only()), [3, 4]);
    assert_eq!(o.memory_only_len(), 2);
    assert_eq!(o.unpersisted(), 2);
    for seq in 1..=4 {
        o.ack(seq);
    }
    assert!(o.is_empty());
    assert_eq!(o.memory_only().count(), 0);

    let logs = my_logs();
    let all = logs.join("\n");
    for seq in [3, 4] {
        assert!(
            !logs
                .iter()
                .any(|l| l.contains(&format!("message {seq} ")) && l.contains("remove")),
            "message {seq} never had a file, yet its removal is reported:\n{all}"
        );
        assert!(
            all.contains(&format!(
                "message {seq}, which could not be written to disk, is delivered"
            )),
            "{all}"
        );
    }
    // Message 1 was written: its file really stays behind, and the log says what follows from it.
    assert!(
        logs.iter().any(|l| l.starts_with("WARN")
            && l.contains("message 1 is delivered")
            && l.contains("cannot be removed")
            && l.contains("published again after a restart")),
        "{all}"
    );
}

#[test]
fn messages_never_written_are_not_reported_as_files_that_cannot_be_removed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("outbox");
    a_broken_disk_loses_nothing_silently(
        &dir,
        || {
            // Writes and removals in it now fail with ENOTDIR, for root too.
            std::fs::rename(&dir, d.path().join("moved")).unwrap();
            std::fs::write(&dir, "not a directory").unwrap();
        },
        "Not a directory",
    );
}

#[test]
fn messages_written_again_once_the_disk_is_back_survive_a_restart() {
    capture_logs();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("outbox");
    let aside = d.path().join("moved");
    let mut o = Outbox::open(&dir, 100).unwrap();
    o.push(vec![m("a", "ON")]).unwrap();
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    o.push(vec![m("a", "OFF"), m("e", "end")]).unwrap_err();
    assert_eq!(seqs(o.memory_only()), [2, 3]);
    // The disk is back: the next push writes what was kept in memory first.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    o.push(vec![m("a", "ON")]).unwrap();
    assert_eq!(o.memory_only().count(), 0);
    assert_eq!(o.unpersisted(), 2);
    assert!(
        my_logs()
            .join("\n")
            .contains("2 message(s) kept in memory only are written to disk now"),
        "{:?}",
        my_logs()
    );
    drop(o);
    let o = Outbox::open(&dir, 100).unwrap();
    assert_eq!(seqs(o.records()), [1, 2, 3, 4]);
}

#[test]
fn a_full_outbox_drops_a_message_never_written_without_touching_the_disk() {
    capture_logs();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("outbox");
    let mut o = Outbox::open(&dir, 2).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    o.push(vec![m("a", "ON"), m("a", "OFF"), m("a", "ON")])
        .unwrap_err();
    assert_eq!(o.dropped(), 1);
    assert_eq!(seqs(o.records()), [2, 3]);
    assert_eq!(seqs(o.memory_only()), [2, 3]);
    let all = my_logs().join("\n");
    assert!(
        all.contains("dropping the oldest, message 1 (ON on a), which was never written to disk"),
        "{all}"
    );
    assert!(!all.contains("cannot remove"), "{all}");
}

/// The daemon stops while the outbox's directory still refuses writes and the broker is down: each alarm message
/// it could keep only in memory is named in the log as lost (that line is its only trace), none is claimed to
/// wait on disk, and the exit status says the stop lost them.
#[test]
fn the_daemon_names_every_message_lost_at_a_stop() {
    let d = tempfile::tempdir().unwrap();
    // Normal, anomalous, normal: one alarm raised and cleared, 4 messages (alarm ON, start, OFF, end).
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(6.0, 3.0, 4.0));
    let device = common::file_device(&wav, common::PACED_TO_THE_END);
    // MQTT on, but nothing listens on the port: every message waits in the outbox.
    let cfg = common::config(d.path(), &device, &b.dir, common::free_port(), "");
    let mut daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("running:", std::time::Duration::from_secs(30));
    // The disk stops taking writes in the outbox (ENOTDIR, for root too) before the fault begins at 6 s.
    let outbox = d.path().join("state/outbox");
    std::fs::rename(&outbox, d.path().join("moved")).unwrap();
    std::fs::write(&outbox, "not a directory").unwrap();
    let (code, log) = daemon.wait_exit(std::time::Duration::from_secs(60));
    // Not a clean stop: systemd shows the unit as failed.
    assert_eq!(code, Some(sonitor::daemon::EXIT_LOST), "{log}");
    assert!(
        log.contains(
            "exiting with status 73: 4 alarm message(s) and 0 machine state(s) could not be kept"
        ),
        "{log}"
    );
    assert!(
        log.contains("the transition is kept in memory only"),
        "{log}"
    );
    assert!(
        log.contains("4 alarm message(s) not acknowledged by the broker could not be written to")
            && log.contains("are lost; each follows"),
        "{log}"
    );
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lost alarm message "))
        .collect();
    assert_eq!(lost.len(), 4, "{log}");
    for (line, what) in lost.iter().zip(["1 ON on ", "2 ", "3 OFF on ", "4 "]) {
        assert!(
            line.contains(&format!("lost alarm message {what}")),
            "{line}"
        );
    }
    assert!(lost[0].ends_with("/pump-1/alarm"), "{}", lost[0]);
    assert!(lost[1].ends_with("/pump-1/events"), "{}", lost[1]);
    assert!(!log.contains("for the next start"), "{log}");
}

/// Where the read-only test's tmpfs goes: set only inside the private mount namespace it runs in.
const MOUNT_VAR: &str = "SONITOR_TEST_OUTBOX_TMPFS";

#[test]
fn on_a_read_only_remount_the_log_says_what_happened() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("outbox");
    std::fs::create_dir(&mnt).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = common::private_mount_namespace()
        .arg(exe)
        .args([
            "--exact",
            "read_only_remount_in_a_private_mount_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env(MOUNT_VAR, &mnt)
        .output();
    let text = match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("MOUNTED") => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{text}");
            text
        }
        other => {
            eprintln!(
                "skipped: no tmpfs can be mounted in a private mount namespace here: {other:?}"
            );
            return;
        }
    };
    assert!(text.contains("1 passed"), "{text}");
}

/// Run by the test above, in its own mount namespace; does nothing elsewhere.
#[test]
#[ignore = "run by on_a_read_only_remount_the_log_says_what_happened in a private mount namespace"]
fn read_only_remount_in_a_private_mount_namespace() {
    let Some(dir) = std::env::var_os(MOUNT_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let mount = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount(&["-t", "tmpfs", "-o", "size=1m", "sonitor-test"]) {
        return;
    }
    println!("MOUNTED");
    a_broken_disk_loses_nothing_silently(
        dir,
        // A bind remount: it sets the mount read-only without restating the tmpfs options, which a user
        // namespace may not (`remount,ro` fails there).
        || {
            assert!(
                mount(&["-o", "remount,bind,ro"]),
                "remount read-only failed"
            )
        },
        "Read-only file system",
    );
}
