//! Fault injection for the tests of what a bug does to the daemon: [`point`] panics the thread that reaches it
//! when the environment variable `SONITOR_FAULT_PANIC` names it, [`hang`] stops it for good when
//! `SONITOR_FAULT_HANG` does. Only in builds with debug assertions (`cargo test`'s); in a release build the calls
//! are empty and the variables are not read.

/// The variable that names the point to panic at.
pub const VAR: &str = "SONITOR_FAULT_PANIC";

/// The variable that names the point to hang at.
pub const HANG_VAR: &str = "SONITOR_FAULT_HANG";

/// The variable that names the point to pause at ([`pause`]).
pub const PAUSE_VAR: &str = "SONITOR_FAULT_PAUSE";

/// How long [`pause`] stops.
pub const PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the variable `var` (read once, into `cell`) names `name`; always false without debug assertions.
#[inline]
fn named(cell: &std::sync::OnceLock<Option<String>>, var: &str, name: &str) -> bool {
    cfg!(debug_assertions) && cell.get_or_init(|| std::env::var(var).ok()).as_deref() == Some(name)
}

/// Panics here if [`VAR`] names `name` (debug-assertion builds only; the variable is read once).
#[track_caller]
#[inline]
pub fn point(name: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if named(&WANTED, VAR, name) {
        panic!("fault injected at '{name}' ({VAR})");
    }
}

/// Stops here for [`PAUSE`] if [`PAUSE_VAR`] names `name` (debug-assertion builds only; the variable is read
/// once), saying so on stderr first: a test acts at that moment (a signal while the configuration is checked).
#[inline]
pub fn pause(name: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if named(&WANTED, PAUSE_VAR, name) {
        eprintln!("fault: paused at '{name}' for {PAUSE:?} ({PAUSE_VAR})");
        std::thread::sleep(PAUSE);
    }
}

/// Sleeps for ever here if [`HANG_VAR`] names `name` (debug-assertion builds only; the variable is read once),
/// saying so on stderr first: a thread stuck, as in a deadlock, without a panic.
#[inline]
pub fn hang(name: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if named(&WANTED, HANG_VAR, name) {
        eprintln!("fault: held at '{name}' for good ({HANG_VAR})");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
