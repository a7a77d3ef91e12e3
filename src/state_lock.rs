//! One daemon per state directory. Two daemons on one `state_dir` (the service, and the same configuration run by
//! hand to look at something) would each write the saved alarm states, take each other's messages out of the
//! outbox as they are acknowledged, and number their events, and so name their clips, alike. The first to start
//! holds `<state_dir>/sonitor.lock` with `flock(2)` for its whole life; the kernel releases it when the process
//! ends, however it ends (no stale lock after a crash or SIGKILL). The file holds the holder's pid, for the
//! message that names it, and on a second line the address its metrics listen on (`metrics 127.0.0.1:9470`):
//! `sonitor reload` and `sonitor status` read the running daemon there, even when the file has since moved
//! `[metrics] listen` (which only a restart applies). A last line names the configuration file it runs
//! (`config /etc/sonitor/sonitor.toml`), the one a reload re-reads: `sonitor reload --config` of another file
//! is refused, and `validate` of another file says it does not take effect there.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "sonitor.lock";

/// Exit status when another process holds the state directory: EX_TEMPFAIL, which the shipped unit's
/// `Restart=on-failure` retries, so that the service starts once the other daemon has stopped.
pub const EXIT_STATE_BUSY: i32 = 75;

/// How long [`acquire`] waits for a lock held for a moment only (by [`holder`], for `sonitor validate`) before it
/// calls the directory taken: a daemon holds it for its life, so this only delays that refusal.
const BRIEF_HOLD: std::time::Duration = std::time::Duration::from_millis(500);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The state directory, held until dropped (the process's end).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    dir: PathBuf,
    metrics: Option<SocketAddr>,
    /// The configuration file this process runs (absolute).
    config: Option<PathBuf>,
    /// Whether this process's pid and address are in the file: not when it was locked read-only (a read-only
    /// filesystem), where the file still names the daemon that wrote it last.
    written: bool,
    /// Whether the last check found the file taken by another process.
    taken_by_other: bool,
}

/// What [`StateLock::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockCheck {
    /// The lock file this process holds is still the one at its path.
    Held,
    /// It was gone (the state directory, or the file, deleted while the daemon ran) or replaced, and is taken
    /// again: a second daemon would have started beside this one.
    Retaken,
    /// It was gone, and another process took the new one first.
    TakenBy(Option<u32>),
    /// It was gone and cannot be made again (a read-only filesystem, no permission): the error.
    Lost(String),
}

impl StateLock {
    /// Whether the file this process holds is still the lock file of its state directory, and if not, takes it
    /// again. A daemon whose state directory was deleted (a clean-up of /var/lib/sonitor/*) held a lock on a file
    /// no longer there: a second daemon started beside it, and `sonitor reload` found no daemon.
    pub fn check(&mut self) -> LockCheck {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.dir.join(LOCK_FILE);
        let held = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let there = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        if held.is_some() && held == there {
            if !self.written {
                // Locked read-only, from a daemon before this one: its pid, which `sonitor reload` would signal,
                // is replaced by this one's once the filesystem takes writes again.
                if let Ok(mut f) = OpenOptions::new().write(true).open(&path) {
                    self.written =
                        write_holder(&mut f, self.metrics, self.config.as_deref()).is_ok();
                }
            }
            return LockCheck::Held;
        }
        // The directory itself, locked on a read-only filesystem (`acquire`): held as long as the file cannot be
        // made; once it can, taken (below), or a daemon started after a remount read-write would take it beside
        // this one.
        let dir_held = std::fs::metadata(&self.dir)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if held.is_some() && held == dir_held {
            let made = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path);
            if made.is_err() {
                return LockCheck::Held;
            }
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return LockCheck::Lost(format!("{}: {e}", self.dir.display()));
        }
        // Waited for as at a start (a `sonitor validate` holds it for a moment), but not again once another
        // process was found holding it: that one holds it for its life, and this runs on the daemon's main loop
        // every second.
        let wait = if self.taken_by_other {
            std::time::Duration::ZERO
        } else {
            BRIEF_HOLD
        };
        match acquire_within(&self.dir, self.metrics, self.config.clone(), wait) {
            Ok(new) => {
                *self = new;
                LockCheck::Retaken
            }
            Err(LockError::Held { pid, .. }) => {
                self.taken_by_other = true;
                LockCheck::TakenBy(pid)
            }
            Err(e) => LockCheck::Lost(e.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another {} runs on the state directory {dir}: two daemons on one state directory would overwrite \
         each other's alarm states, outbox and clips. Stop it first (`systemctl stop sonitor` for the service), \
         or give this configuration its own state_dir",
        holder_named(*.pid)
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the state directory with {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The holder of a state directory as the messages name it: `sonitor (pid 1234)`, or `sonitor` when it wrote no
/// pid.
pub fn holder_named(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("sonitor (pid {p})"),
        None => "sonitor".into(),
    }
}

/// Takes the state directory `dir` (which exists) for this process, or says who holds it. `metrics`: where this
/// process serves its metrics, if it does; `config`: the configuration file it runs (made absolute here).
pub fn acquire(
    dir: &Path,
    metrics: Option<SocketAddr>,
    config: Option<&Path>,
) -> Result<StateLock, LockError> {
    let config = config.map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_path_buf()));
    acquire_within(dir, metrics, config, BRIEF_HOLD)
}

/// [`acquire`], waiting up to `brief_hold` for a lock held for a moment.
fn acquire_within(
    dir: &Path,
    metrics: Option<SocketAddr>,
    config: Option<PathBuf>,
    brief_hold: std::time::Duration,
) -> Result<StateLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |error| LockError::Io {
        path: path.clone(),
        error,
    };
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let (mut file, writable) = match opened {
        Ok(f) => (f, true),
        // A filesystem mounted read-only (`run` starts on one, keeping its state in memory): flock needs no
        // write access, so the file an earlier daemon left is locked read-only, or where there is none the
        // directory itself (a second daemon on the read-only directory does the same, and is refused).
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => match File::open(&path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (File::open(dir).map_err(io)?, false)
            }
            Err(e) => return Err(io(e)),
        },
        Err(e) => return Err(io(e)),
    };
    // `holder` (a `sonitor validate`) takes a shared lock for a moment: wait that out rather than refuse a
    // daemon that starts at that very moment (and name, as the holder, the pid an earlier daemon left).
    let give_up = std::time::Instant::now() + brief_hold;
    while !try_flock(&file, libc::LOCK_EX).map_err(io)? {
        if std::time::Instant::now() >= give_up {
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid: holder_of(&mut file).pid,
            });
        }
        std::thread::sleep(LOCK_RETRY);
    }
    // The pid only names the holder in the message above, and the address only helps `reload` and `status` find
    // it: a failure to write them does not stop the daemon (and on a read-only filesystem there is no writing).
    let written = writable && write_holder(&mut file, metrics, config.as_deref()).is_ok();
    Ok(StateLock {
        file,
        dir: dir.to_path_buf(),
        metrics,
        config,
        written,
        taken_by_other: false,
    })
}

/// This process's pid, then the address of its metrics and its configuration file, as the lock file's whole
/// content.
fn write_holder(
    file: &mut File,
    metrics: Option<SocketAddr>,
    config: Option<&Path>,
) -> std::io::Result<()> {
    let mut text = metrics.map_or(String::new(), |a| format!("metrics {a}\n"));
    // A path with a line break in it (possible, never seen) would not read back: left out.
    if let Some(c) = config
        .and_then(|c| c.to_str())
        .filter(|c| !c.contains('\n'))
    {
        text.push_str(&format!("config {c}\n"));
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}\n{text}", std::process::id())
}

/// What the process holding a state directory wrote in its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    /// Its pid; `None` when it could not write it.
    pub pid: Option<u32>,
    /// Where it serves its metrics; `None` when it serves none, or it is a sonitor from before the address was
    /// written.
    pub metrics: Option<SocketAddr>,
    /// The configuration file it runs, which a reload re-reads; `None` when it did not say (a sonitor from before
    /// it was written).
    pub config: Option<PathBuf>,
}

impl Holder {
    /// The configuration file the holder runs when it is known and is not `config_path` (compared as absolute
    /// paths, links resolved): a reload re-reads the holder's file, not `config_path`.
    pub fn runs_another_file(&self, config_path: &Path) -> Option<&Path> {
        let theirs = self.config.as_deref()?;
        let ours = std::fs::canonicalize(config_path).ok()?;
        (ours != theirs).then_some(theirs)
    }
}

/// Whether a process holds the state directory `dir` now, and what it wrote of itself; creates and keeps nothing
/// (`validate` names the daemon that runs on the configuration it checks; `reload` and `status` find its metrics).
/// A shared lock is tried for a moment on the file an earlier daemon left: a daemon that starts at that very moment
/// waits for it ([`acquire`]).
pub fn holder(dir: &Path) -> Option<Holder> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    let taken = try_flock(&file, libc::LOCK_SH).ok()?;
    (!taken).then(|| holder_of(&mut file))
}

/// Who holds the lock on `file` (held by another process): what it wrote of itself, unless the kernel says another
/// process holds it. A daemon that locked the file read-only (its filesystem mounted read-only) could not write its
/// pid there, and the one there is an earlier daemon's (`sonitor reload` signalled it, and a second daemon's
/// refusal named it, whatever process has that pid now).
fn holder_of(file: &mut File) -> Holder {
    let written = holder_in(file);
    match flock_holder(file) {
        Some(pid) if written.pid != Some(pid) => Holder {
            pid: Some(pid),
            ..Holder::default()
        },
        _ => written,
    }
}

/// The pid of the process holding an exclusive `flock` on `file`, as `/proc/locks` lists it; `None` when it
/// cannot be told.
fn flock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let m = file.metadata().ok()?;
    // The kernel prints the device's major and minor in hex, the inode in decimal.
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    let id = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:131075 0 EOF` (a waiter's line has `->` after the number).
        (f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == id)
            .then(|| f[4].parse::<u32>().ok())
            .flatten()
    })
}

/// Whether nothing holds the state directory `dir`, as far as this process can tell: false as well when it cannot
/// read the lock file (a user without access to the service's state directory), where [`holder`] says `None` too.
pub fn known_free(dir: &Path) -> bool {
    match File::open(dir.join(LOCK_FILE)) {
        Ok(_) => holder(dir).is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound && dir.is_dir(),
    }
}

/// Why this process cannot tell who holds `dir`: its lock file is there but cannot be read (a user without access
/// to the service's state directory). `None` when it can tell.
pub fn unreadable(dir: &Path) -> Option<std::io::Error> {
    match File::open(dir.join(LOCK_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(e),
        _ => None,
    }
}

/// `flock(2)` with `op` (`LOCK_EX` or `LOCK_SH`) without waiting: true when taken (until `file` is closed), false
/// when another open file holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor that `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// What the holder wrote into the lock file: its pid on the first line, then `metrics ADDRESS` (either missing:
/// a holder that could not write it, or one from before the address was written).
fn holder_in(file: &mut File) -> Holder {
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return Holder::default();
    }
    Holder {
        pid: text.lines().next().and_then(|l| l.trim().parse().ok()),
        metrics: text
            .lines()
            .find_map(|l| l.strip_prefix("metrics "))
            .and_then(|a| a.trim().parse().ok()),
        config: text
            .lines()
            .find_map(|l| l.strip_prefix("config "))
            .map(PathBuf::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_state_directory_is_refused_with_its_holder_and_free_again_once_released() {
        let d = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:9470".parse().unwrap();
        let held = acquire(d.path(), Some(addr), None).unwrap();
        // flock locks belong to the open file description: a second open in this process conflicts as another
        // process's would.
        let e = acquire(d.path(), None, None).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(e, LockError::Held { pid: Some(p), .. } if p == pid),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&format!("(pid {pid})")), "{msg}");
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert_eq!(
            holder(d.path()),
            Some(Holder {
                pid: Some(pid),
                metrics: Some(addr),
                config: None,
            })
        );
        drop(held);
        // The address of a daemon gone is no one's.
        assert_eq!(holder(d.path()), None);
        let again = acquire(d.path(), None, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join(LOCK_FILE)).unwrap(),
            format!("{pid}\n")
        );
        assert_eq!(holder(d.path()).unwrap().metrics, None);
        drop(again);
        // The configuration file it runs, made absolute: named to `reload` and `validate` of another file.
        let file = d.path().join("sonitor.toml");
        std::fs::write(&file, "").unwrap();
        let relative = d.path().join(".").join("sonitor.toml");
        let again = acquire(d.path(), None, Some(&relative)).unwrap();
        let h = holder(d.path()).unwrap();
        assert_eq!(h.config, Some(std::fs::canonicalize(&file).unwrap()));
        assert_eq!(h.runs_another_file(&relative), None);
        let copy = d.path().join("copy.toml");
        std::fs::write(&copy, "").unwrap();
        assert_eq!(
            h.runs_another_file(&copy),
            Some(std::fs::canonicalize(&file).unwrap().as_path())
        );
        drop(again);
        // The file of a sonitor from before the address was written: its pid alone.
        std::fs::write(d.path().join(LOCK_FILE), format!("{pid}\n")).unwrap();
        let file = File::open(d.path().join(LOCK_FILE)).unwrap();
        assert!(try_flock(&file, libc::LOCK_EX).unwrap());
        assert_eq!(
            holder(d.path()),
            Some(Holder {
                pid: Some(pid),
                ..Holder::default()
            })
        );
    }

    /// `sonitor validate` run as the service starts: its probe's shared lock made the daemon exit 75 (naming the
    /// pid an earlier daemon had left) and start again 5 s later under the unit.
    #[test]
    fn a_daemon_starting_during_validates_probe_waits_for_it() {
        let d = tempfile::tempdir().unwrap();
        drop(acquire(d.path(), None, None).unwrap());
        let probe = File::open(d.path().join(LOCK_FILE)).unwrap();
        // A child that another test forks while the lock is held shares its open file until it execs (a while
        // under qemu-user, where the armv7 suite once found the lock still held here): wait for it.
        let mut tries = 0;
        while !try_flock(&probe, libc::LOCK_SH).unwrap() {
            tries += 1;
            assert!(tries < 300, "the released lock is still held after 3 s");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let released = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(probe);
        });
        let held = acquire(d.path(), None, None);
        released.join().unwrap();
        assert!(held.is_ok(), "{held:?}");
    }

    #[test]
    fn a_state_directory_that_cannot_hold_the_lock_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(holder(d.path()), None);
        let e = acquire(&d.path().join("missing"), None, None).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("sonitor.lock"), "{e}");
    }

    /// A lock file locked read-only (as on a read-only filesystem) still names the daemon that wrote it: the
    /// check writes this process's pid and address there once the file takes writes.
    #[test]
    fn a_lock_taken_read_only_gets_this_pid_once_it_can() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(LOCK_FILE);
        std::fs::write(&path, "999999\n").unwrap();
        let file = File::open(&path).unwrap();
        assert!(try_flock(&file, libc::LOCK_EX).unwrap());
        let addr: SocketAddr = "127.0.0.1:9470".parse().unwrap();
        let mut lock = StateLock {
            file,
            dir: d.path().to_path_buf(),
            metrics: Some(addr),
            config: None,
            written: false,
            taken_by_other: false,
        };
        assert_eq!(lock.check(), LockCheck::Held);
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{pid}\nmetrics 127.0.0.1:9470\n")
        );
        assert_eq!(holder(d.path()).and_then(|h| h.pid), Some(pid));
    }

    /// A lock file that names another pid than the process holding it (one locked read-only could not be
    /// written): the holder is the process the kernel says holds it, with no metrics address (the file's is the
    /// other daemon's).
    #[test]
    fn the_holder_is_the_process_holding_the_lock_not_the_pid_written() {
        let d = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:9470".parse().unwrap();
        let _held = acquire(d.path(), Some(addr), None).unwrap();
        let pid = std::process::id();
        assert_eq!(holder(d.path()).and_then(|h| h.pid), Some(pid));
        std::fs::write(d.path().join(LOCK_FILE), "999999\nmetrics 127.0.0.1:1\n").unwrap();
        assert_eq!(
            holder(d.path()),
            Some(Holder {
                pid: Some(pid),
                ..Holder::default()
            })
        );
        // A second daemon refused names the holder the same way (review24: the pid a daemon before had left, on
        // a read-only state directory where the holder could not write its own).
        match acquire_within(d.path(), None, None, std::time::Duration::ZERO) {
            Err(LockError::Held { pid: held, .. }) => assert_eq!(held, Some(pid)),
            other => panic!("{other:?}"),
        }
    }

    /// A lock file deleted and taken by another process: the check says so, and the checks after it do not wait
    /// for it again (they run on the daemon's main loop; each waited half a second).
    #[test]
    fn a_lock_file_taken_by_another_is_not_waited_for_twice() {
        let d = tempfile::tempdir().unwrap();
        let mut lock = acquire(d.path(), None, None).unwrap();
        std::fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
        let other = acquire(d.path(), None, None).unwrap();
        let t0 = std::time::Instant::now();
        let pid = std::process::id();
        assert_eq!(lock.check(), LockCheck::TakenBy(Some(pid)));
        assert!(t0.elapsed() >= BRIEF_HOLD);
        let t1 = std::time::Instant::now();
        assert_eq!(lock.check(), LockCheck::TakenBy(Some(pid)));
        assert!(t1.elapsed() < BRIEF_HOLD, "{:?}", t1.elapsed());
        // Once the other has gone, it is taken again.
        drop(other);
        assert_eq!(lock.check(), LockCheck::Retaken);
        assert_eq!(lock.check(), LockCheck::Held);
    }
}
