//! The shipped example configuration, with each of its settings changed in one wrong way at a time (a zero, a
//! negative, a huge number, an empty string, an absurd duration, a list, the line deleted), as a maintenance
//! engineer's typo would. `sonitor validate` must answer each with 0 or 78 (EX_CONFIG), never a panic; what it
//! accepts, `sonitor run` must start and end on (a short recording, replayed once) without one.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `sonitor CMD --config CONFIG`: its exit status (None: still running after `limit`, then killed) and output.
fn sonitor(cmd: &str, config: &Path, limit: Duration) -> (Option<i32>, String) {
    // In the configuration's directory: a relative `state_dir` ("x") is made there, not in the checkout.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .current_dir(config.parent().unwrap())
        .args([cmd, "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        status,
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// The values a setting is changed to, one at a time, and the deletion of its line (`None`).
const WRONG: [Option<&str>; 7] = [
    Some("0"),
    Some("-1"),
    Some("1e30"),
    Some("\"\""),
    Some("\"99999999999999days\""),
    Some("[]"),
    None,
];

#[test]
fn no_wrong_setting_in_the_example_configuration_panics_validate_or_run() {
    let d = tempfile::tempdir().unwrap();
    let (bundle, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::pump()[..16_000 * 4]);
    // configs/sonitor.toml on this machine: the recording instead of the microphone, the test bundle, a
    // temporary state directory, no broker, a free port for the metrics.
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sonitor.toml"))
            .unwrap();
    let mut base = String::new();
    for line in example.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let line = match key {
            "source" => "source = \"file\"".to_string(),
            "device" if line.contains("\"default\"") => {
                format!(
                    "path = \"{}\"\nrealtime = false\nat_end = \"exit\"",
                    wav.display()
                )
            }
            "bundle" => format!("bundle = \"{}\"", bundle.dir.display()),
            "state_dir" => format!("state_dir = \"{}\"", d.path().join("state").display()),
            "listen" => format!("listen = \"127.0.0.1:{}\"", common::free_port()),
            // Capture settings that a file source does not take.
            "stall_timeout" | "reopen_min" | "reopen_max" | "ring_seconds" => continue,
            _ => line.to_string(),
        };
        base.push_str(&line);
        base.push('\n');
    }
    let base = base.replacen("[mqtt]\nenabled = true", "[mqtt]\nenabled = false", 1);
    let cfg = d.path().join("sonitor.toml");
    std::fs::write(&cfg, &base).unwrap();
    let (code, text) = sonitor("validate", &cfg, Duration::from_secs(60));
    assert_eq!(code, Some(0), "the base configuration:\n{text}\n{base}");
    // The machine's commented examples, uncommented together, are a file that validates: the pair
    // `threshold = 0.042`, `threshold_off = 0.38` was refused (review27).
    let examples = [
        "threshold",
        "threshold_off",
        "idle_below_dbfs",
        "idle_hysteresis_db",
    ];
    let uncommented: String = base
        .lines()
        .map(|l| {
            let body = l.strip_prefix("# ").unwrap_or(l);
            let key = body.split(" = ").next().unwrap_or("");
            if l.starts_with("# ") && examples.contains(&key) {
                format!("{body}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(
        examples
            .iter()
            .filter(|k| uncommented.contains(&format!("\n{k} = ")))
            .count(),
        examples.len(),
        "{uncommented}"
    );
    std::fs::write(&cfg, &uncommented).unwrap();
    let (code, text) = sonitor("validate", &cfg, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "the examples uncommented:\n{text}\n{uncommented}"
    );
    std::fs::write(&cfg, &base).unwrap();

    let lines: Vec<&str> = base.lines().collect();
    let (mut refused, mut ran, mut variants) = (0, 0, 0);
    let mut broken = Vec::new();
    let mut unnamed = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with('#') || t.starts_with('[') || !t.contains(" = ") {
            continue;
        }
        let key = t.split(" = ").next().unwrap();
        // What makes `run` replay the recording once and exit: the harness, not a setting under test.
        if matches!(key, "at_end" | "realtime") {
            continue;
        }
        for wrong in WRONG {
            variants += 1;
            let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            let what = match wrong {
                Some(v) => {
                    changed[i] = format!("{key} = {v}");
                    format!("line {}: {key} = {v}", i + 1)
                }
                None => {
                    changed[i].clear();
                    format!("line {}: {key} deleted", i + 1)
                }
            };
            std::fs::write(&cfg, changed.join("\n")).unwrap();
            let (code, text) = sonitor("validate", &cfg, Duration::from_secs(60));
            match code {
                Some(78) if !text.contains("panicked") => {
                    // The refusal names the setting (alone, or in its path: `machines[0].raise_k`), or the
                    // value it was given (a device name no machine finds, a file that is not there).
                    let value = wrong.map_or("", |v| v.trim_matches('"'));
                    if !text.contains(key) && (value.is_empty() || !text.contains(value)) {
                        unnamed.push(format!("{what}:\n{text}"));
                    }
                    refused += 1;
                    continue;
                }
                Some(0) if !text.contains("panicked") => {}
                _ => {
                    broken.push(format!("{what}: validate exited {code:?}:\n{text}"));
                    continue;
                }
            }
            let _ = std::fs::remove_dir_all(d.path().join("state"));
            let (code, text) = sonitor("run", &cfg, Duration::from_secs(60));
            if matches!(code, Some(0 | 78)) && !text.contains("panicked") {
                ran += 1;
            } else {
                broken.push(format!("{what}: run exited {code:?}:\n{text}"));
            }
        }
    }
    eprintln!(
        "{variants} variants: {refused} refused by validate, {ran} accepted and run, {} broken",
        broken.len()
    );
    assert!(broken.is_empty(), "{}", broken.join("\n\n"));
    assert!(
        unnamed.is_empty(),
        "refusals that do not name the setting:\n{}",
        unnamed.join("\n\n")
    );
    assert!(refused > 0 && ran > 0);
}
