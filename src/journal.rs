//! The daemon's lines on stderr, with their priority where stderr is systemd's journal.
//!
//! Under systemd a service's stderr is a stream to journald, which stores each line at the unit's default
//! priority (info) unless the line begins with a syslog priority in angle brackets (`<3>` error, `<4>` warning,
//! `<6>` info, `<7>` debug: sd-daemon(3)); journald takes the prefix off. With it, `journalctl -u sonitor -p
//! warning` shows the daemon's warnings and errors and nothing else, and a log shipper that forwards errors sees
//! them as errors. Without it every line of the daemon, its refusal to start included, was `info`.
//!
//! systemd says that stderr is the journal by `JOURNAL_STREAM=DEVICE:INODE` (systemd.exec(5)), which a child
//! inherits even where it redirects its stderr elsewhere: the prefix is written only where fd 2 is that very
//! stream, so that `sonitor run … 2>file` started from a service, or in a terminal, gets plain lines.

use std::io::Write as _;
use std::sync::OnceLock;

/// Whether stderr is the journal's stream, as `JOURNAL_STREAM` names it (checked once).
pub fn stderr_is_journal() -> bool {
    static IS: OnceLock<bool> = OnceLock::new();
    *IS.get_or_init(|| {
        let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = stream.to_str().and_then(parse_stream) else {
            return false;
        };
        // SAFETY: fstat on fd 2 with a zeroed stat buffer of the right type; it only writes into that buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(2, &mut st) } != 0 {
            return false;
        }
        st.st_dev as u64 == dev && st.st_ino as u64 == ino
    })
}

/// `DEVICE:INODE`, both decimal, as systemd writes `JOURNAL_STREAM`.
fn parse_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority journald reads at the start of a line: error 3, warning 4, info 6, debug and trace 7.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// `text` as lines for stderr: each line (journald stores each as an entry of its own, a backtrace's too) with
/// the priority prefix when `journal`, else as it is. Ends with a newline.
pub fn lines(level: log::Level, text: &str, journal: bool) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    // A message's own final newline ends its last line, not an empty one more.
    let text = text.strip_suffix('\n').unwrap_or(text);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if journal {
            out.push('<');
            out.push(char::from(b'0' + priority(level)));
            out.push('>');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes `text` to stderr at `level` (see [`lines`]). Errors are ignored, not panicked on as `eprintln!` would:
/// a log collector that died must not stop the daemon.
pub fn write_stderr(level: log::Level, text: &str) {
    let _ = std::io::stderr()
        .lock()
        .write_all(lines(level, text, stderr_is_journal()).as_bytes());
}

/// `eprintln!` with a priority for the journal: `stderr_at!(log::Level::Error, "sonitor: {x}")`.
#[macro_export]
macro_rules! stderr_at {
    ($level:expr, $($arg:tt)*) => {
        $crate::journal::write_stderr($level, &format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_carries_the_priority_only_for_the_journal() {
        assert_eq!(
            lines(log::Level::Warn, "sonitor[WARN]: a\nb", true),
            "<4>sonitor[WARN]: a\n<4>b\n"
        );
        assert_eq!(
            lines(log::Level::Error, "x", true),
            "<3>x\n",
            "errors are 3"
        );
        assert_eq!(lines(log::Level::Info, "x", true), "<6>x\n");
        assert_eq!(lines(log::Level::Trace, "x", true), "<7>x\n");
        assert_eq!(lines(log::Level::Warn, "a\nb", false), "a\nb\n");
        // A message that ends with its own newline (or CRLF): no empty entry after it.
        assert_eq!(lines(log::Level::Info, "a\r\nb\n", true), "<6>a\n<6>b\n");
        assert_eq!(lines(log::Level::Info, "", true), "<6>\n");
    }

    #[test]
    fn the_stream_is_parsed_as_systemd_writes_it() {
        assert_eq!(parse_stream("8:123456"), Some((8, 123_456)));
        for bad in ["", "8", "8:", ":1", "x:1", "8:1:2", "-1:2"] {
            assert_eq!(parse_stream(bad), None, "{bad}");
        }
    }
}
