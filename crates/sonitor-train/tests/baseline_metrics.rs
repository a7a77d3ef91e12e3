//! `synth` → `baseline` → `metrics --json` end to end through the binary, and the bad inputs a user meets on the
//! way: each is a clear error (exit status 1, a message naming the file), never a panic.

use std::path::Path;
use std::process::{Command, Output};

use sonitor_train::synth::{self, BackgroundChoice, MachineType, SynthConfig};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sonitor-train"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tiny_set(dir: &Path) {
    let cfg = SynthConfig {
        clip_seconds: 1.0,
        train_source: 12,
        train_target: 3,
        test_per_domain: 4,
        types: vec![MachineType::Fan, MachineType::Press],
        background: BackgroundChoice::Synthetic,
        ..SynthConfig::new(3)
    };
    synth::generate(&cfg, dir).unwrap();
}

fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
}

#[test]
fn baseline_then_metrics_json() {
    let d = tempfile::tempdir().unwrap();
    let (data, scores) = (d.path().join("data"), d.path().join("scores"));
    tiny_set(&data);
    let out = run(&["baseline", "--data", s(&data), "--out", s(&scores)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in ["fan", "press"] {
        let f = scores.join(format!("anomaly_score_{t}_section_00_test.csv"));
        let score_rows = std::fs::read_to_string(&f).unwrap();
        assert_eq!(score_rows.lines().count(), 16, "{}", f.display());
        // The official evaluator takes a section only with its decision file: the same clips, 0 or 1 each.
        let d = scores.join(format!("decision_result_{t}_section_00_test.csv"));
        let decisions = std::fs::read_to_string(&d).unwrap();
        let names = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split(',').next().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&decisions), names(&score_rows), "{}", d.display());
        assert!(
            decisions
                .lines()
                .all(|l| l.ends_with(",0") || l.ends_with(",1")),
            "{decisions}"
        );
    }
    let metrics = |extra: &[&str]| {
        let mut args = vec!["metrics", "--data", s(&data), "--scores", s(&scores)];
        args.extend(extra);
        run(&args)
    };
    let out = metrics(&["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let official = v["official_score"].as_f64().unwrap();
    assert!(official > 0.0 && official <= 1.0, "{official}");
    assert_eq!(v["types"].as_array().unwrap().len(), 2);
    assert_eq!(v["sections"][0]["n_anomaly"], 8);

    // Per fault kind from synth's ground truth: each section's anomalies split by domain and kind, each row
    // against the 4 normal clips of its domain; the official numbers unchanged.
    let out = metrics(&["--json", "--by-fault"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["official_score"], v["official_score"]);
    let rows = f["by_fault"].as_array().unwrap();
    for t in ["fan", "press"] {
        let of_type: Vec<_> = rows.iter().filter(|r| r["machine_type"] == t).collect();
        let n: u64 = of_type
            .iter()
            .map(|r| r["n_anomaly"].as_u64().unwrap())
            .sum();
        assert_eq!(n, 8, "{t}: {of_type:?}");
        for r in &of_type {
            assert_eq!(r["n_normal"], 4, "{r}");
            let fault = r["fault"].as_str().unwrap();
            assert!(fault != "(not listed)" && fault != "none", "{r}");
            let auc = r["auc"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&auc), "{r}");
        }
    }
    // Markdown: the fault table after the official score; a ground truth that is not there is named.
    let out = run(&[
        "metrics",
        "--data",
        s(&data),
        "--scores",
        s(&scores),
        "--by-fault",
    ]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("By fault kind") && md.contains("| fan | 00 | source |"),
        "{md}"
    );
    let gt = d.path().join("nowhere.csv");
    let out = metrics(&["--by-fault", s(&gt)]);
    assert_fails_with(&out, &["--by-fault", "nowhere.csv: cannot read"]);

    // A reader that has gone (`metrics … | head`): the process ends quietly by SIGPIPE, as any Unix tool does,
    // not with a panic at its first line ("failed printing to stdout", status 101).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor-train"))
        .args(["metrics", "--data", s(&data), "--scores", s(&scores)])
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );

    // A scores file missing rows.
    let f = scores.join("anomaly_score_fan_section_00_test.csv");
    let text = std::fs::read_to_string(&f).unwrap();
    let kept: Vec<&str> = text.lines().skip(2).collect();
    std::fs::write(&f, kept.join("\n")).unwrap();
    let out = metrics(&[]);
    assert_fails_with(
        &out,
        &[
            "anomaly_score_fan_section_00_test.csv",
            "2 test clip(s)",
            "have no score",
        ],
    );

    // A missing scores file.
    std::fs::remove_file(&f).unwrap();
    let out = metrics(&[]);
    assert_fails_with(&out, &["no submission file for fan section 00"]);
}

/// Test clips under evaluation-set names (no normal/anomaly label): scored, and `--json` prints the object
/// `eval --json` prints for them, not empty output.
#[test]
fn baseline_json_without_labels_says_why() {
    let d = tempfile::tempdir().unwrap();
    let (data, scores) = (d.path().join("data"), d.path().join("scores"));
    tiny_set(&data);
    // The labelled set's official score, for the evaluator's ground truth below.
    let labelled = run(&[
        "baseline",
        "--json",
        "--data",
        s(&data),
        "--out",
        s(&d.path().join("l")),
    ]);
    assert!(labelled.status.success());
    let labelled: serde_json::Value = serde_json::from_slice(&labelled.stdout).unwrap();
    // The evaluator's layout: ground_truth_data/ (normal 0, anomaly 1) and ground_truth_domain/ (source 0,
    // target 1), no header, the clips under their evaluation-set names.
    let gt = d.path().join("gt");
    for dir in ["ground_truth_data", "ground_truth_domain"] {
        std::fs::create_dir_all(gt.join(dir)).unwrap();
    }
    for t in ["fan", "press"] {
        let test = data.join(t).join("test");
        let mut names: Vec<_> = std::fs::read_dir(&test)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let (mut labels, mut domains) = (String::new(), String::new());
        for (i, p) in names.iter().enumerate() {
            let new = format!("section_00_{i:04}.wav");
            let old = p.file_name().unwrap().to_str().unwrap();
            labels += &format!("{new},{}\n", u8::from(old.contains("_anomaly_")));
            domains += &format!("{new},{}\n", u8::from(old.contains("_target_")));
            std::fs::rename(p, test.join(new)).unwrap();
        }
        let file = format!("ground_truth_{t}_section_00_test.csv");
        std::fs::write(gt.join("ground_truth_data").join(&file), labels).unwrap();
        std::fs::write(gt.join("ground_truth_domain").join(&file), domains).unwrap();
    }
    let out = run(&[
        "baseline",
        "--json",
        "--data",
        s(&data),
        "--out",
        s(&scores),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    assert!(v["official_score"].is_null(), "{v}");
    let why = v["no_metrics"].as_str().unwrap();
    assert!(
        why.starts_with("32 of 32 test clips carry no normal/anomaly label"),
        "{why}"
    );
    assert!(stderr.contains(why), "{stderr}");
    assert_eq!(v["score_files"].as_array().unwrap().len(), 2, "{v}");
    for t in ["fan", "press"] {
        let f = scores.join(format!("anomaly_score_{t}_section_00_test.csv"));
        assert_eq!(std::fs::read_to_string(&f).unwrap().lines().count(), 16);
    }
    assert!(why.contains("--ground-truth DIR"), "{why}");
    // With the evaluator's ground truth, `metrics` gives the labelled set's numbers.
    let metrics = |gt: &Path| {
        run(&[
            "metrics",
            "--json",
            "--data",
            s(&data),
            "--scores",
            s(&scores),
            "--ground-truth",
            s(gt),
        ])
    };
    let out = metrics(&gt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["official_score"], labelled["official_score"],
        "{v}\n{labelled}"
    );
    assert!(v["official_score"].as_f64().is_some());
    // A ground truth that lacks a clip of the set, or labels one the set lacks, is refused by name.
    let fan = gt.join("ground_truth_data/ground_truth_fan_section_00_test.csv");
    let text = std::fs::read_to_string(&fan).unwrap();
    std::fs::write(
        &fan,
        text.replace("section_00_0003.wav", "section_00_0099.wav"),
    )
    .unwrap();
    let out = metrics(&gt);
    assert_fails_with(&out, &["does not list the test clip section_00_0003.wav"]);
    std::fs::write(&fan, text.clone() + "section_00_0099.wav,1\n").unwrap();
    let out = metrics(&gt);
    assert_fails_with(
        &out,
        &[
            "lists 17 clips, the data set has 16",
            "and no section_00_0099.wav",
        ],
    );
    std::fs::write(&fan, text.replace(",0\n", ",2\n")).unwrap();
    assert_fails_with(&metrics(&gt), &["is neither 0 nor 1"]);
    assert_fails_with(
        &metrics(&d.path().join("nowhere")),
        &["ground_truth_data: not found"],
    );
}

#[test]
fn bad_data_is_named() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let scores = d.path().join("scores");

    let out = run(&["baseline", "--data", s(&data), "--out", s(&scores)]);
    assert_fails_with(&out, &["data directory not found"]);

    tiny_set(&data);
    // A corrupt WAV among the test clips.
    let victim = std::fs::read_dir(data.join("press/test"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&victim, b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    let out = run(&["baseline", "--data", s(&data), "--out", s(&scores)]);
    assert_fails_with(&out, &[victim.file_name().unwrap().to_str().unwrap()]);

    // A file name that is not DCASE-shaped.
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(data.join("press/test/recording 7.wav"), b"").unwrap();
    let out = run(&["metrics", "--data", s(&data), "--scores", s(&scores)]);
    assert_fails_with(&out, &["recording 7.wav", "not DCASE-shaped"]);
    // A scores directory that is not there is named as such, not as the data's.
    std::fs::remove_file(data.join("press/test/recording 7.wav")).unwrap();
    let nowhere = d.path().join("nowhere");
    let out = run(&["metrics", "--data", s(&data), "--scores", s(&nowhere)]);
    assert_fails_with(&out, &["nowhere: scores directory not found"]);
}
