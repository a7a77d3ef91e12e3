//! Compiles the C handler that routes ALSA's error messages into the daemon's log (src/capture/alsa_log.c; Linux,
//! where cpal captures through ALSA), and names the commit the binary is built from (`SONITOR_COMMIT`: in
//! `--version`, the start-up log line and a panic's report, so that a report from the field names its source).

use std::process::Command;

/// The commit checked out (12 hex digits), or `SONITOR_COMMIT` as the builder set it (a source tarball has no git),
/// or "unknown". Rebuilt when HEAD moves.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=SONITOR_COMMIT");
    if let Ok(c) = std::env::var("SONITOR_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = std::path::Path::new(&dir);
        // Only files that exist: cargo reruns a script on every build for one that does not.
        let mut watch = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Ok(head) = std::fs::read_to_string(dir.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: ") {
                watch.push(dir.join(r));
            }
        }
        for f in watch.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rustc-env=SONITOR_COMMIT={}", commit());
    println!("cargo:rerun-if-changed=src/capture/alsa_log.c");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        cc::Build::new()
            .file("src/capture/alsa_log.c")
            .warnings(true)
            .extra_warnings(true)
            .compile("sonitor_alsa_log");
    }
}
