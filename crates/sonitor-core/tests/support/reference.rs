//! Running the Python reference scripts of `scripts/reference/` from a test. Shared by the core's and the
//! trainer's reference tests (the trainer includes this file with `#[path]`).
//!
//! Interpreter: `$SONITOR_PYTHON`, else the workspace's `.venv/bin/python`, else `python3`
//! (`scripts/setup-python` makes the `.venv` with the reference packages).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (two levels above a member crate's manifest directory).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SONITOR_PYTHON") {
        return p.into();
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Runs `scripts/reference/<script> args…`; a missing interpreter or package fails the test with instructions.
pub fn run_reference<I, A>(script: &str, args: I)
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    let script = workspace().join("scripts/reference").join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e}; run scripts/setup-python or set SONITOR_PYTHON",
                python()
            )
        });
    assert!(
        out.status.success(),
        "{} failed (install the reference packages with scripts/setup-python):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
