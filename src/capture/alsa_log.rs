//! ALSA's own error messages, in the daemon's log instead of on stderr.
//!
//! The library prints them itself ("ALSA lib confmisc.c:855:(parse_card) cannot find card '0'" and seven more
//! lines for a `default` device with no sound card behind it), bypassing the logger, its level and its prefix, and
//! once per attempt to open a missing device: at the reopen backoff's 30 s ceiling, eight lines every 30 s put about
//! 46 000 of them into the journal over a weekend that a microphone stays unplugged, each at the journal's default
//! priority. The daemon
//! already says what they mean in one warning ("device 'mic' … not available … trying again with backoff"), so
//! they are logged at `debug`, under the target `alsa`, formatted as ALSA would: `log_level = "debug"` shows them
//! when a device's problem needs ALSA's own words. Before the logger is set up (the configuration check,
//! `validate`, `devices`) they are dropped.
//!
//! ALSA's handler is a C variadic function, which stable Rust cannot define: the C side (alsa_log.c, built by
//! build.rs) formats the message and calls [`sonitor_alsa_message`].

use std::ffi::{c_char, c_int, CStr};

unsafe extern "C" {
    /// alsa_log.c: formats ALSA's message and passes it to [`sonitor_alsa_message`].
    fn sonitor_alsa_error_handler(
        file: *const c_char,
        line: c_int,
        function: *const c_char,
        err: c_int,
        fmt: *const c_char,
        ...
    );
}

/// Sends ALSA's error messages of every thread to the log from now on (the handler is process-wide; cpal's
/// stream threads report through it too). Idempotent.
pub fn route_to_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler is a plain C function with the signature ALSA's `snd_lib_error_handler_t` names; it
        // lives for the whole process.
        unsafe {
            alsa_sys::snd_lib_error_set_handler(Some(sonitor_alsa_error_handler));
        }
    });
}

/// One of ALSA's messages, in the line ALSA would print (`ALSA lib FILE:LINE:(FUNCTION) MESSAGE[: ERROR]`).
fn format_message(
    file: &str,
    line: i32,
    function: &str,
    message: &str,
    error: Option<&str>,
) -> String {
    let mut s = format!("ALSA lib {file}:{line}:({function}) {message}");
    if let Some(e) = error {
        s.push_str(": ");
        s.push_str(e);
    }
    s
}

/// Called by alsa_log.c with ALSA's formatted message. Never unwinds (it is called from C): every pointer may be
/// null, and text that is not UTF-8 is shown lossily.
///
/// # Safety
/// Each pointer is null or a NUL-terminated string valid for the call, as ALSA passes them.
#[no_mangle]
pub unsafe extern "C" fn sonitor_alsa_message(
    file: *const c_char,
    line: c_int,
    function: *const c_char,
    err: c_int,
    message: *const c_char,
) {
    if !log::log_enabled!(target: "alsa", log::Level::Debug) {
        return;
    }
    let text = |p: *const c_char| {
        if p.is_null() {
            std::borrow::Cow::Borrowed("")
        } else {
            // SAFETY: non-null, NUL-terminated (the caller's contract).
            unsafe { CStr::from_ptr(p) }.to_string_lossy()
        }
    };
    // SAFETY: snd_strerror returns a static string for any code.
    let error = (err != 0).then(|| text(unsafe { alsa_sys::snd_strerror(err) }));
    log::debug!(
        target: "alsa",
        "{}",
        format_message(&text(file), line, &text(function), &text(message), error.as_deref())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ALSA's calls of the C handler log: the printf-style message formatted with its arguments, the error
    /// code's text appended, null pointers taken as empty text (not dereferenced).
    #[test]
    fn the_c_handler_formats_the_message_into_the_log() {
        static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        struct Capture;
        impl log::Log for Capture {
            fn enabled(&self, m: &log::Metadata) -> bool {
                m.target() == "alsa"
            }
            fn log(&self, r: &log::Record) {
                if self.enabled(r.metadata()) {
                    LINES
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.level(), r.args()));
                }
            }
            fn flush(&self) {}
        }
        log::set_logger(&Capture).expect("the only logger of the unit tests");
        log::set_max_level(log::LevelFilter::Debug);
        // SAFETY: called as ALSA calls it: NUL-terminated strings (or null), arguments matching the format.
        unsafe {
            sonitor_alsa_error_handler(
                c"confmisc.c".as_ptr(),
                855,
                c"parse_card".as_ptr(),
                0,
                c"cannot find card '%s' (%d)".as_ptr(),
                c"7".as_ptr(),
                7 as c_int,
            );
            sonitor_alsa_error_handler(
                c"conf.c".as_ptr(),
                5180,
                c"_snd_config_evaluate".as_ptr(),
                -libc::ENOENT,
                c"function %s returned error".as_ptr(),
                c"snd_func_card_inum".as_ptr(),
            );
            sonitor_alsa_error_handler(std::ptr::null(), 0, std::ptr::null(), 0, std::ptr::null());
        }
        assert_eq!(
            *LINES.lock().unwrap(),
            [
                "DEBUG ALSA lib confmisc.c:855:(parse_card) cannot find card '7' (7)",
                "DEBUG ALSA lib conf.c:5180:(_snd_config_evaluate) function snd_func_card_inum returned error: \
                 No such file or directory",
                "DEBUG ALSA lib :0:() ",
            ]
        );
    }
}
