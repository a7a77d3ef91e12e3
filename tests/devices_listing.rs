//! `sonitor devices` opens every ALSA PCM to list its configurations. The `jack` plugin's libjack prints on its
//! own when no JACK server runs ("Cannot connect to server socket", "jack server is not running or cannot be
//! started"), where ALSA's error handler does not reach: on a Pi without JACK that read as a failure of the
//! listing. Those lines no longer reach the terminal.
//!
//! One test per file: `ALSA_CONFIG_PATH` is read when ALSA is first used in a process.

use std::process::Command;

#[test]
fn the_listing_keeps_libjacks_own_messages_off_the_terminal() {
    let plugin_dirs = [
        "/usr/lib/x86_64-linux-gnu/alsa-lib",
        "/usr/lib/aarch64-linux-gnu/alsa-lib",
        "/usr/lib/arm-linux-gnueabihf/alsa-lib",
    ];
    if !plugin_dirs.iter().any(|d| {
        std::path::Path::new(d)
            .join("libasound_module_pcm_jack.so")
            .exists()
    }) {
        eprintln!("skipped: ALSA's jack plugin (libasound2-plugins) is not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A JACK input and no JACK server (no alsa.conf: see tests/capture_alsa_file.rs).
    let conf = d.path().join("asound.conf");
    std::fs::write(
        &conf,
        "pcm.jackmic {\n type jack\n capture_ports { 0 system:capture_1 }\n hint { show on description \"a JACK input\" }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .arg("devices")
        .env("ALSA_CONFIG_PATH", &conf)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("host ALSA"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
}
