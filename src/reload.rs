//! `sonitor reload`: asks the running daemon to reload its configuration (SIGHUP) and waits for its answer, so
//! that `systemctl reload sonitor` fails when the daemon refuses the file, instead of succeeding while the daemon
//! keeps its running configuration and says so only in its log. The answer is read where anyone can read it: the
//! daemon's metrics (`sonitor_config_reloads_total`, `sonitor_config_last_reload_successful`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Config, EXIT_CONFIG};

/// Exit status when no daemon could be asked (none runs on the state directory, or the signal failed): EX_UNAVAILABLE.
pub const EXIT_NO_DAEMON: i32 = 69;
/// sysexits' EX_NOPERM: this user may not signal the daemon (it runs as another user, the service's), or read
/// which one runs. Not 69: a daemon does run.
pub const EXIT_NO_PERMISSION: i32 = 77;

/// What to do where this user may not reach the daemon: the service's reload, or this command as root.
const AS_ROOT: &str = "`sudo systemctl reload sonitor` for the service, or this command with sudo";

/// What the metrics say of the reloads: how many were asked for, whether the last one applied the file, and
/// whether changes of it wait for a restart; and whose metrics they are (pid and node_id, when said).
struct Reloads {
    count: u64,
    applied: bool,
    restart_pending: bool,
    served_by: Option<(u32, String)>,
}

/// The reload counters, as the metrics give them, read within `deadline` (at most 5 s).
fn reload_counters(addr: SocketAddr, deadline: Instant) -> std::io::Result<Reloads> {
    let within = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(5));
    let samples = crate::metrics::scrape(addr, within)?;
    let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    match (
        value("sonitor_config_reloads_total"),
        value("sonitor_config_last_reload_successful"),
    ) {
        (Some(n), Some(ok)) => Ok(Reloads {
            count: n as u64,
            applied: ok == 1.0,
            restart_pending: value("sonitor_config_restart_pending") == Some(1.0),
            served_by: crate::metrics::served_by(&samples),
        }),
        _ => Err(std::io::Error::other(
            "no sonitor_config_reloads_total in its metrics (an older sonitor?)",
        )),
    }
}

/// Whether process `pid` is a sonitor, by the name the kernel gives it (`/proc/<pid>/comm`: the executable's,
/// which a thread name of the daemon's main thread keeps). Where /proc cannot tell (not mounted), it is taken to be.
fn a_sonitor(pid: u32) -> Result<(), String> {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if comm.trim() == "sonitor" => Ok(()),
        Ok(comm) => Err(format!("process {pid} is `{}`, not sonitor", comm.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && Path::new("/proc/self").exists() => {
            Err(format!("no process {pid} runs"))
        }
        Err(_) => Ok(()),
    }
}

/// Sends SIGHUP to `pid`.
fn hang_up(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("not a process id"))?;
    // SAFETY: kill(2) with a process id and a signal number; it touches no memory.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `sonitor reload --config FILE [--pid PID] [--timeout T]`: the exit status (0: the daemon applied the file;
/// 78: it refused it, or the file cannot be read; 69: no daemon to ask; 77: this user may not signal it; 1: no
/// answer within `timeout`).
pub fn reload(config_path: &Path, pid: Option<u32>, timeout: Duration) -> i32 {
    // A day is past any reload (a model's graph builds in seconds); longer would overflow the deadline.
    let timeout = timeout.min(Duration::from_secs(86_400));
    let path = config_path.display();
    // The daemon parses the file the same way: a file that does not parse is refused there too, so it is not
    // sent, and the reason is printed here, where the person who ran `systemctl reload` looks.
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            crate::stderr_at!(
                log::Level::Error,
                "sonitor reload: {e}; not sent: a running daemon would refuse it and keep its running configuration"
            );
            return EXIT_CONFIG;
        }
    };
    let holder = crate::state_lock::holder(&cfg.state_dir).unwrap_or_default();
    let pid = match pid.or(holder.pid) {
        Some(p) => p,
        None if crate::state_lock::unreadable(&cfg.state_dir).is_some() => {
            crate::stderr_at!(
                log::Level::Error,
                "sonitor reload: cannot read {}: permission denied, so which sonitor runs there is unknown to \
                 this user, who may not signal a daemon of another user anyway: {AS_ROOT}",
                cfg.state_dir.join(crate::state_lock::LOCK_FILE).display()
            );
            return EXIT_NO_PERMISSION;
        }
        None => {
            crate::stderr_at!(
                log::Level::Error,
                "sonitor reload: no sonitor runs on the state directory {} (or it did not say its pid): nothing \
                 to reload (pass --pid PID for a daemon whose state_dir the file changes)",
                cfg.state_dir.display()
            );
            return EXIT_NO_DAEMON;
        }
    };
    // The daemon re-reads the file it was started with: another file (a copy being edited, another path) would be
    // reported applied while what it says never took effect.
    if Some(pid) == holder.pid {
        if let Some(theirs) = holder.runs_another_file(config_path) {
            crate::stderr_at!(
                log::Level::Error,
                "sonitor reload: sonitor (pid {pid}) on {} runs {}, and a reload re-reads that file, not {path}; \
                 nothing sent: edit {} and reload, or restart the daemon with --config {path}",
                cfg.state_dir.display(),
                theirs.display(),
                theirs.display()
            );
            return EXIT_CONFIG;
        }
    }
    // Checked before anything is sent: SIGHUP ends most other programs. A pid given by hand, or one the lock file
    // kept from an earlier daemon (one started on a read-only filesystem cannot write its own there).
    if let Err(why) = a_sonitor(pid) {
        crate::stderr_at!(log::Level::Error, "sonitor reload: {why}; nothing sent");
        return EXIT_NO_DAEMON;
    }
    // Where the answer will be read: the metrics of the daemon that runs, as it wrote in its lock file (the file
    // may have moved `[metrics] listen` since, which only a restart applies), else the file's.
    let addr = if Some(pid) == holder.pid {
        holder.metrics.or(cfg.metrics.addr())
    } else {
        cfg.metrics.addr()
    };
    let deadline = Instant::now() + timeout;
    let before = addr.map(|a| reload_counters(a, deadline));
    if let Err(e) = hang_up(pid) {
        if e.raw_os_error() == Some(libc::EPERM) {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            crate::stderr_at!(
                log::Level::Error,
                "sonitor reload: this user (uid {uid}) may not signal sonitor (pid {pid}), which runs as another \
                 user: {AS_ROOT}"
            );
            return EXIT_NO_PERMISSION;
        }
        crate::stderr_at!(
            log::Level::Error,
            "sonitor reload: cannot signal sonitor (pid {pid}): {e}"
        );
        return EXIT_NO_DAEMON;
    }
    let Some(addr) = addr else {
        let why = if cfg.metrics.enabled {
            format!(
                "its metrics address {} is not an address:port",
                cfg.metrics.listen
            )
        } else {
            "its metrics are off ([metrics] enabled = false)".into()
        };
        crate::stderr_at!(
            log::Level::Warn,
            "sonitor reload: asked sonitor (pid {pid}) to reload {path}; {why}, so whether it applied the file is \
             only in its log"
        );
        return 0;
    };
    // Metrics that do not answer yet: a daemon still starting (checking the file, building its models) serves
    // them once it runs, and applies the signal then, as its first reload. Whatever else holds that address
    // never gives the answer, and the wait ends at `timeout`.
    // Another daemon's metrics (this one's port was taken when it started) never give its answer.
    let foreign = |r: &std::io::Result<Reloads>| {
        let (q, node) = r.as_ref().ok()?.served_by.clone()?;
        (q != pid).then(|| {
            crate::stderr_at!(
                log::Level::Warn,
                "sonitor reload: asked sonitor (pid {pid}) to reload {path}; {addr} serves the metrics of another \
                 sonitor (pid {q}, node_id {node}), not its own (the port was taken when it started), so whether \
                 it applied the file is only in its log"
            );
        })
    };
    let before = before.unwrap_or_else(|| Err(std::io::Error::other("not read")));
    // Another program's (a web server) never gives it either.
    let not_sonitor = |r: &std::io::Result<Reloads>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            crate::stderr_at!(
                log::Level::Warn,
                "sonitor reload: asked sonitor (pid {pid}) to reload {path}; {e}: another program holds that \
                 port (the daemon's was taken when it started), so whether it applied the file is only in its log"
            );
            true
        }
        _ => false,
    };
    if foreign(&before).is_some() || not_sonitor(&before) {
        return 0;
    }
    let reloads = before.map_or(0, |r| r.count);
    let mut last_error: Option<std::io::Error>;
    loop {
        let read = reload_counters(addr, deadline);
        if foreign(&read).is_some() || not_sonitor(&read) {
            return 0;
        }
        match read {
            Ok(r) if r.count > reloads && r.applied => {
                if r.restart_pending {
                    println!(
                        "sonitor reload: sonitor (pid {pid}) applied {path}, but some of its changes wait for a \
                         restart: its log names them (`journalctl -u sonitor -n 20`), and `systemctl restart \
                         sonitor` applies them"
                    );
                } else {
                    println!("sonitor reload: sonitor (pid {pid}) applied {path}");
                }
                return 0;
            }
            Ok(r) if r.count > reloads => {
                crate::stderr_at!(
                    log::Level::Error,
                    "sonitor reload: sonitor (pid {pid}) refused {path} and keeps its running configuration; its \
                     log says why (`journalctl -u sonitor -n 20`), and `sonitor validate --config {path}` names \
                     the same problems"
                );
                return EXIT_CONFIG;
            }
            Ok(_) => last_error = None,
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            let why = last_error.map_or("still building a model?".to_string(), |e| {
                format!("its metrics at {addr} do not answer: {e}")
            });
            crate::stderr_at!(
                log::Level::Error,
                "sonitor reload: sonitor (pid {pid}) has not answered within {} s ({why}); its log will say \
                 whether it applied {path}",
                timeout.as_secs()
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sleep` under the name `name`, once it runs under it, and what [`a_sonitor`] says of it.
    fn judged(name: &str) -> Result<(), String> {
        let d = tempfile::tempdir().unwrap();
        let program = d.path().join(name);
        std::fs::copy(which("sleep"), &program).unwrap();
        let mut other = std::process::Command::new(&program)
            .arg("30")
            .spawn()
            .unwrap();
        // Until its exec the child is a copy of this test's thread, by its name.
        let comm = format!("/proc/{}/comm", other.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() != name)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let e = a_sonitor(other.id()).map_err(|e| e.replace(&other.id().to_string(), "PID"));
        let _ = other.kill();
        let _ = other.wait();
        e
    }

    fn which(program: &str) -> std::path::PathBuf {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(program))
                    .find(|p| p.is_file())
            })
            .unwrap()
    }

    /// Only a process named `sonitor` is signalled: not another program, nor one whose name starts with it (the
    /// trainer; a pid left in a lock file may be any process's by now).
    #[test]
    fn a_pid_given_by_hand_must_be_a_sonitors() {
        assert_eq!(
            judged("sleep"),
            Err("process PID is `sleep`, not sonitor".into())
        );
        assert_eq!(
            judged("sonitor-train"),
            Err("process PID is `sonitor-train`, not sonitor".into())
        );
        assert_eq!(judged("sonitor"), Ok(()));
        assert!(a_sonitor(u32::MAX - 1).unwrap_err().contains("no process"));
    }
}
