//! `sonitor-train synth` through the binary and through the library API, on tiny sets with the synthetic
//! background (independent of lincity-ng-data being installed).

use std::path::Path;
use std::process::Command;

use sonitor_core::dcase::{self, Domain};
use sonitor_train::synth::{self, BackgroundChoice, MachineType, SynthConfig};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sonitor-train"))
}

fn tiny_args(out: &Path) -> Vec<String> {
    [
        "synth",
        "--out",
        &out.display().to_string(),
        "--seed",
        "5",
        "--clip-seconds",
        "0.5",
        "--train-source",
        "3",
        "--train-target",
        "1",
        "--test-per-domain",
        "2",
        "--types",
        "gearbox,bearing",
        "--background",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn cli_writes_a_scannable_set_and_reports_speed() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("set");
    let o = bin().args(tiny_args(&out)).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("synthetic factory noise"), "{stdout}");
    assert!(stdout.contains("× real time"), "{stdout}");
    let ds = dcase::scan(&out).unwrap();
    assert_eq!(ds.clips.len(), 2 * (3 + 1 + 4 * 2));
    assert_eq!(ds.machine_types(), vec!["bearing", "gearbox"]);
    let manifest = std::fs::read_to_string(out.join("synth.json")).unwrap();
    assert!(manifest.contains("\"seed\": 5"), "{manifest}");

    // Running again over its own output is allowed and reproduces it exactly.
    let before = std::fs::read(out.join("ground_truth.csv")).unwrap();
    let o = bin().args(tiny_args(&out)).output().unwrap();
    assert!(o.status.success());
    assert_eq!(before, std::fs::read(out.join("ground_truth.csv")).unwrap());
}

/// A directory it will not write into (a foreign one, a file) is refused, before the plan is printed, and so are
/// bad options.
#[test]
fn cli_refuses_a_foreign_directory_and_bad_options() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("precious.wav"), b"not mine").unwrap();
    let o = bin().args(tiny_args(d.path())).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not empty") && err.contains("refusing"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(d.path().join("precious.wav")).unwrap(),
        b"not mine"
    );
    // Refused before its plan is printed: no line on stdout announces clips it will not write.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.is_empty(), "{stdout}");
    // Refused the same way, before the plan: the error names `needle`, stdout says nothing.
    let refused = |args: &[String], needle: &str| {
        let o = bin().args(args).output().unwrap();
        let (stdout, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            !o.status.success() && err.contains(needle) && stdout.is_empty(),
            "{stdout}\n{err}"
        );
    };
    // A file in the place of the directory.
    refused(
        &tiny_args(&d.path().join("precious.wav")),
        "not a directory",
    );

    let mut args = tiny_args(&d.path().join("x"));
    args.extend(["--types".into(), "toaster".into()]);
    refused(&args, "unknown machine type 'toaster'");

    let mut args = tiny_args(&d.path().join("y"));
    let i = args.iter().position(|a| a == "--background").unwrap();
    args[i + 1] = d.path().join("nowhere").display().to_string();
    refused(&args, "background directory");
    // A directory without recordings.
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    args[i + 1] = d.path().join("empty").display().to_string();
    refused(&args, "has no WAV files");
}

#[test]
fn library_api_generates_target_with_shifted_attributes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        clip_seconds: 0.25,
        train_source: 6,
        train_target: 2,
        test_per_domain: 1,
        types: vec![MachineType::Pump],
        background: BackgroundChoice::Synthetic,
        ..SynthConfig::new(1)
    };
    let s = synth::generate(&cfg, d.path()).unwrap();
    assert_eq!(s.clips, 12);
    let ds = dcase::scan(d.path()).unwrap();
    let attrs = |dom: Domain| -> std::collections::BTreeSet<String> {
        ds.clips
            .iter()
            .filter(|c| c.name.domain == Some(dom))
            .map(|c| c.attribute_key())
            .collect()
    };
    let (src, tgt) = (attrs(Domain::Source), attrs(Domain::Target));
    assert_eq!(src.len(), 4, "{src:?}");
    assert!(tgt.is_disjoint(&src), "{src:?} {tgt:?}");
}
