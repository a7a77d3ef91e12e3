//! The system clock, as the daemon's events see it. Alarm events carry wall-clock times (`started_at`,
//! `ended_at`) and name their clips by them. A Raspberry Pi has no real-time clock: it boots at the time saved at
//! its last shutdown (`fake-hwclock`) and jumps to the true time when NTP answers, which on a factory network that
//! was down can be hours or days later. Events raised before that carry the old clock's times. The daemon cannot
//! correct them, but it says so: a warning at start while the clock is not synchronised, one line for every jump
//! (with its size), and the metrics `sonitor_clock_synchronized` and `sonitor_clock_jumps_total` for a fleet's
//! monitoring. Clip retention does not depend on it ([`crate::clips::Retention`]): the clips of this run are aged on
//! the monotonic clock, and an earlier run's clip whose time is before [`EARLIEST_TRUE_UNIX`] is not aged at all.
//! At a jump the daemon saves its state again (a mute's saved end is a wall-clock date).
//! Times are written by [`rfc3339`], which never panics, whatever the clock reads.

use std::time::{Duration, Instant, SystemTime};

/// The latest time RFC 3339 (four-digit years) writes: 9999-12-31T23:59:59Z.
const LATEST_RFC3339: u64 = 253_402_300_799;

/// A wall-clock time in RFC 3339 (UTC), to the millisecond with `millis`. A clock before 1970 or after 9999 (set
/// by hand, or by a broken RTC) is written clamped to those bounds: humantime panics on them, which ended the
/// daemon (status 70) at every start for as long as the clock read so.
pub fn rfc3339(t: SystemTime, millis: bool) -> String {
    let t = t.clamp(
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_RFC3339),
    );
    if millis {
        humantime::format_rfc3339_millis(t).to_string()
    } else {
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

/// Unix seconds as RFC 3339 ([`rfc3339`]), to the second.
pub fn unix_rfc3339(secs: u64) -> String {
    rfc3339(
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(LATEST_RFC3339)),
        false,
    )
}

/// No clock this software runs on reads a true time before this (2026-01-01T00:00:00Z): a file time earlier than
/// it was written while the clock was wrong (a Raspberry Pi without a real-time clock boots in 1970 until NTP
/// answers), and says nothing of the file's age.
pub const EARLIEST_TRUE_UNIX: u64 = 1_767_225_600;

/// Whether the clock is synchronised: the kernel's clock discipline says so (NTP, chrony, systemd-timesyncd keep
/// it), or, where the kernel cannot be asked, systemd-timesyncd's flag file. `None` where neither can tell.
pub fn synchronized() -> Option<bool> {
    kernel_synchronized().or_else(|| timesyncd_synchronized(std::path::Path::new(TIMESYNC_DIR)))
}

/// Where systemd-timesyncd keeps its state; it creates `synchronized` there once the clock is synchronised.
const TIMESYNC_DIR: &str = "/run/systemd/timesync";

/// systemd-timesyncd's view, from its runtime directory `dir`: synchronised once its `synchronized` file exists,
/// not yet while the directory exists without it; `None` without the directory (another NTP client, or none).
/// Needed under the shipped unit: its system-call filter (`ProtectClock=yes`, `~@privileged`) refuses even the
/// read-only `adjtimex`.
fn timesyncd_synchronized(dir: &std::path::Path) -> Option<bool> {
    if dir.join("synchronized").exists() {
        Some(true)
    } else if dir.is_dir() {
        Some(false)
    } else {
        None
    }
}

/// The kernel's clock discipline; `None` where `adjtimex` is refused (a seccomp filter) or fails.
fn kernel_synchronized() -> Option<bool> {
    // SAFETY: `adjtimex` with `modes = 0` only reads the kernel's state into the zeroed struct it is given.
    let (ret, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let ret = libc::adjtimex(&mut tx);
        (ret, tx.status)
    };
    if ret < 0 {
        return None;
    }
    Some(ret != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0)
}

/// Compares the wall clock with the monotonic clock between calls: a difference of more than [`JUMP_SECONDS`]
/// is a jump of the wall clock (NTP's first answer, a hand-set date).
#[derive(Debug, Clone, Copy)]
pub struct JumpWatch {
    wall: SystemTime,
    mono: Instant,
}

/// A wall-clock step smaller than this is slewing or scheduling noise, not a jump.
pub const JUMP_SECONDS: f64 = 2.0;

impl JumpWatch {
    fn new() -> Self {
        Self::at(SystemTime::now(), Instant::now())
    }

    pub fn at(wall: SystemTime, mono: Instant) -> Self {
        JumpWatch { wall, mono }
    }

    /// The jump of the wall clock since the last call, in seconds (positive: forward), if there was one.
    fn check(&mut self) -> Option<f64> {
        self.check_at(SystemTime::now(), Instant::now())
    }

    pub fn check_at(&mut self, wall: SystemTime, mono: Instant) -> Option<f64> {
        let wall_delta = match wall.duration_since(self.wall) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let mono_delta = mono.saturating_duration_since(self.mono).as_secs_f64();
        *self = JumpWatch { wall, mono };
        let jump = wall_delta - mono_delta;
        (jump.abs() > JUMP_SECONDS).then_some(jump)
    }
}

/// What the daemon watches of the clock: the kernel's synchronisation state and jumps. [`ClockWatch::start`] and
/// [`ClockWatch::check_jump`] and [`ClockWatch::check_synchronized`] log what changed; the caller exports [`ClockWatch::synchronized_gauge`].
#[derive(Debug)]
pub struct ClockWatch {
    jumps: JumpWatch,
    synced: Option<bool>,
}

impl ClockWatch {
    /// Warns when the clock is not synchronised at start.
    pub fn start() -> Self {
        let synced = synchronized();
        if synced == Some(false) {
            log::warn!(
                "the system clock is not synchronised (NTP has not answered yet?): alarm times (started_at, \
                 ended_at) and clip names follow it until it is; the log will say when it jumps"
            );
        }
        ClockWatch {
            jumps: JumpWatch::new(),
            synced,
        }
    }

    /// 1 while the clock is synchronised or the kernel cannot tell, 0 while it is not.
    pub fn synchronized_gauge(&self) -> u64 {
        u64::from(self.synced != Some(false))
    }

    /// Logs a jump of the wall clock since the last call; true if there was one.
    pub fn check_jump(&mut self) -> bool {
        let jump = self.jumps.check();
        if let Some(j) = jump {
            log::warn!(
                "the system clock jumped {}: alarm times before this line are on the old clock",
                describe_jump(j)
            );
        }
        jump.is_some()
    }

    /// Logs a change of whether the clock is synchronised.
    pub fn check_synchronized(&mut self) {
        let synced = synchronized();
        if synced != self.synced {
            match synced {
                Some(true) => log::info!("the system clock is synchronised now"),
                Some(false) => log::warn!(
                    "the system clock is no longer synchronised: alarm times may drift from the true time"
                ),
                None => {}
            }
            self.synced = synced;
        }
    }
}

/// How a jump is told in the log: `+3d 4h 5m 6s`, `-1h 0m 0s`, `+12.5s`.
pub fn describe_jump(seconds: f64) -> String {
    let sign = if seconds < 0.0 { '-' } else { '+' };
    let s = seconds.abs();
    if s < 60.0 {
        return format!("{sign}{s:.1}s");
    }
    let s = s.round() as u64;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{sign}{d}d {h}h {m}m {sec}s")
    } else {
        format!("{sign}{h}h {m}m {sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock before 1970 or after 9999 panicked inside humantime at every start (status 70, a restart loop):
    /// written clamped instead.
    #[test]
    fn times_outside_rfc3339_are_written_clamped() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(20);
        assert_eq!(rfc3339(before, true), "1970-01-01T00:00:00.000Z");
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_RFC3339 + 86_400 * 400);
        assert_eq!(rfc3339(far, false), "9999-12-31T23:59:59Z");
        assert_eq!(unix_rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(unix_rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(EARLIEST_TRUE_UNIX, 1_767_225_600);
    }

    #[test]
    fn timesyncd_says_synchronised_with_its_flag_file_and_nothing_without_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("timesync");
        assert_eq!(timesyncd_synchronized(&dir), None);
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(timesyncd_synchronized(&dir), Some(false));
        std::fs::write(dir.join("synchronized"), b"").unwrap();
        assert_eq!(timesyncd_synchronized(&dir), Some(true));
    }

    #[test]
    fn a_jump_is_the_wall_clock_moving_other_than_the_monotonic_one() {
        let (wall, mono) = (SystemTime::now(), Instant::now());
        let mut w = JumpWatch::at(wall, mono);
        let ten = Duration::from_secs(10);
        // Ten seconds on both clocks, a second of drift or slewing: no jump.
        assert_eq!(w.check_at(wall + ten, mono + ten), None);
        assert_eq!(
            w.check_at(wall + 2 * ten + Duration::from_secs(1), mono + 2 * ten),
            None
        );
        // NTP's first answer, three days late.
        let days = Duration::from_secs(3 * 86_400);
        let j = w.check_at(wall + 3 * ten + days, mono + 3 * ten).unwrap();
        assert!((j - 3.0 * 86_400.0 + 1.0).abs() < 1e-6, "{j}");
        // The next check compares with the new time: no second report.
        assert_eq!(w.check_at(wall + 4 * ten + days, mono + 4 * ten), None);
        // A clock set back an hour.
        let j = w
            .check_at(
                wall + 5 * ten + days - Duration::from_secs(3600),
                mono + 5 * ten,
            )
            .unwrap();
        assert!((j + 3600.0).abs() < 1e-6, "{j}");
    }

    #[test]
    fn jumps_are_told_in_days_hours_minutes_and_seconds() {
        assert_eq!(
            describe_jump(3.0 * 86_400.0 + 4.0 * 3600.0 + 5.0 * 60.0 + 6.0),
            "+3d 4h 5m 6s"
        );
        assert_eq!(describe_jump(-3600.0), "-1h 0m 0s");
        assert_eq!(describe_jump(12.5), "+12.5s");
    }

    #[test]
    fn the_kernel_says_whether_the_clock_is_synchronised() {
        // Either answer is right on some machine; what matters is that Linux answers.
        assert!(synchronized().is_some());
    }
}
