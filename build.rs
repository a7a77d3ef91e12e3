//! Compiles the C handler that routes ALSA's error messages into the daemon's log (src/capture/alsa_log.c; Linux,
//! where cpal captures through ALSA).

fn main() {
    println!("cargo:rerun-if-changed=src/capture/alsa_log.c");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        cc::Build::new()
            .file("src/capture/alsa_log.c")
            .warnings(true)
            .extra_warnings(true)
            .compile("sonitor_alsa_log");
    }
}
