//! End to end on a tiny generated data set: `fit` (tiny network, short windows) writes a bundle that the core
//! loader accepts; `--resume` continues; `eval` scores the test clips through tract and the official metrics come
//! out; `prune` makes a smaller bundle from it; a corrupted or inconsistent bundle is refused with a message naming
//! the problem.

use std::path::Path;

use sonitor_core::bundle::{Bundle, Manifest, MANIFEST_FILE};
use sonitor_core::dcase::Domain;
use sonitor_train::loss::LossKind;
use sonitor_train::prune::PruneArgs;
use sonitor_train::train::fit;

#[path = "support/data.rs"]
mod data;
use data::{data_and_bundle, make_dataset, options, prune_args, Writer};

#[test]
fn fit_resume_eval_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    let out = dir.path().join("bundle");

    let r = fit(&options(&data, &out, LossKind::SubclusterAdacos, 1)).unwrap();
    assert_eq!(r.epoch_losses.len(), 1);
    assert_eq!(r.n_classes, 3);
    let b = Bundle::load(&out).unwrap();
    let s = b.section("fan", 0).unwrap();
    assert_eq!(s.n_source_centroids, 4);
    assert_eq!(s.n_target_centroids, 3 * 3); // 3 clips × 3 windows of 4096 in 1 s
    assert!(
        s.threshold.value > 0.0 && s.threshold.value < 2.0,
        "{:?}",
        s.threshold
    );
    assert_eq!(b.manifest.provenance.loss, "subcluster-adacos");
    // The names `--labels` and `--device` take, so the provenance reads like the command that made it.
    assert_eq!(b.manifest.provenance.labels, "attribute");
    assert_eq!(b.manifest.provenance.model["backend"], "cpu");
    assert!(out.join("checkpoint/model.bpk").exists());

    // Same seed, same result (CPU determinism).
    let out2 = dir.path().join("bundle2");
    fit(&options(&data, &out2, LossKind::SubclusterAdacos, 1)).unwrap();
    let m1 = Bundle::load(&out2).unwrap().manifest;
    assert_eq!(
        m1.onnx_sha256, b.manifest.onnx_sha256,
        "two runs with one seed differ"
    );

    // Resume to 2 epochs, from the state a crash in the middle of the next checkpoint's save leaves: the
    // checkpoint moved aside to checkpoint.old/, a half-written checkpoint.new/ beside it.
    std::fs::rename(out.join("checkpoint"), out.join("checkpoint.old")).unwrap();
    std::fs::create_dir(out.join("checkpoint.new")).unwrap();
    std::fs::write(out.join("checkpoint.new/model.bpk"), b"half").unwrap();
    let mut o = options(&data, &out, LossKind::SubclusterAdacos, 2);
    o.resume = true;
    let r = fit(&o).unwrap();
    assert_eq!(r.epoch_losses.len(), 2);
    assert!(out.join("checkpoint/state.json").exists());
    assert!(!out.join("checkpoint.old").exists() && !out.join("checkpoint.new").exists());
    // The resumed run ends where an uninterrupted one does, to the bit: the checkpoint held the BatchNorm layers'
    // running statistics one batch old (burn keeps the last update pending), so a resumed run ended on other
    // weights and thresholds.
    let straight = dir.path().join("straight");
    fit(&options(&data, &straight, LossKind::SubclusterAdacos, 2)).unwrap();
    assert_eq!(
        Bundle::load(&straight).unwrap().manifest.onnx_sha256,
        Bundle::load(&out).unwrap().manifest.onnx_sha256,
        "a resumed run and an uninterrupted one differ"
    );

    // Eval through tract.
    let scores = dir.path().join("scores");
    let report = sonitor_train::eval::evaluate(&out, &data, &scores)
        .unwrap()
        .unwrap();
    assert_eq!(report.sections.len(), 1);
    let official = report.official_score.unwrap();
    assert!(official > 0.0 && official <= 1.0);
    assert!(scores
        .join("anomaly_score_fan_section_00_test.csv")
        .exists());
    // The decisions at the section's calibrated threshold, one per clip of the score file.
    let threshold = Bundle::load(&out)
        .unwrap()
        .section("fan", 0)
        .unwrap()
        .threshold
        .value;
    let scored =
        sonitor_core::dcase::read_scores(&scores.join("anomaly_score_fan_section_00_test.csv"))
            .unwrap();
    let decided =
        std::fs::read_to_string(scores.join("decision_result_fan_section_00_test.csv")).unwrap();
    assert_eq!(decided.lines().count(), scored.len());
    for line in decided.lines() {
        let (name, d) = line.split_once(',').unwrap();
        assert_eq!(d == "1", scored[name] > threshold, "{line}");
    }
    // `eval --plot`: the ROC of every section with its threshold's operating point.
    let (_, sections) = sonitor_train::eval::evaluate_with_scores(&out, &data, &scores).unwrap();
    assert_eq!(sections[0].scores.len(), sections[0].anomalous.len());
    // The operating table: false alarms per domain and detections, counted by hand from the same scores. A clip
    // alarms when its score is above the threshold, or (the daemon's default detector) when some window is the
    // third of the last five, itself included, above it.
    let sec = &sections[0];
    assert_eq!(sec.windows.len(), sec.scores.len());
    let by_score: Vec<bool> = sec.scores.iter().map(|&v| v > sec.threshold).collect();
    let by_daemon: Vec<bool> = sec
        .windows
        .iter()
        .map(|w| {
            (0..w.len()).any(|i| {
                w[i.saturating_sub(4)..=i]
                    .iter()
                    .filter(|&&v| v > sec.threshold)
                    .count()
                    >= 3
            })
        })
        .collect();
    // The tiny clips must hold enough windows for the detector to raise at all.
    assert!(
        sec.windows.iter().all(|w| w.len() >= 3),
        "{:?}",
        sec.windows
    );
    let rate = |alarms: &[bool], keep: &dyn Fn(bool, Option<Domain>) -> bool| {
        let picked: Vec<bool> = alarms
            .iter()
            .zip(&sec.anomalous)
            .zip(&sec.domain)
            .filter(|((_, a), d)| keep(a.unwrap(), **d))
            .map(|((&x, _), _)| x)
            .collect();
        let n = picked.iter().filter(|&&x| x).count();
        format!("{:.2}", n as f64 / picked.len() as f64)
    };
    let table = sonitor_train::eval::operating_table(&sections);
    for (how, alarms) in [
        ("its score is above", &by_score),
        ("the daemon raises (3 of 5 windows)", &by_daemon),
    ] {
        let row = format!(
            "| fan/section_00 | {:.4} | {how} | {} | {} | {} |",
            sec.threshold,
            rate(alarms, &|a, d| !a && d == Some(Domain::Source)),
            rate(alarms, &|a, d| !a && d == Some(Domain::Target)),
            rate(alarms, &|a, _| a)
        );
        assert!(table.lines().any(|l| l == row), "{row}\n{table}");
    }
    let roc = dir.path().join("roc.svg");
    sonitor_train::eval::plot_roc(&roc, "roc", &sections).unwrap();
    assert!(std::fs::read_to_string(&roc)
        .unwrap()
        .contains("fan/section_00"));

    // Prune to half the channels and fine-tune one epoch: a smaller bundle that still scores.
    let pruned = dir.path().join("pruned");
    sonitor_train::prune::run(&PruneArgs {
        data: Some(data.clone()),
        quantile: Some(0.99),
        ..prune_args(&out, &pruned)
    })
    .unwrap();
    let pm = Bundle::load(&pruned).unwrap().manifest;
    let p = &pm.provenance.model["pruning"];
    assert_eq!(p["keep"], 0.5, "{p}");
    assert!(p["macs_after"].as_u64().unwrap() < p["macs_before"].as_u64().unwrap());
    assert!(p["params_after"].as_u64().unwrap() < p["params_before"].as_u64().unwrap());
    assert_eq!(
        pm.provenance.model["config"]["tf_widths"],
        serde_json::json!([2, 4])
    );
    assert_eq!(pm.sections[0].threshold.quantile, 0.99);
    let size = |d: &Path| std::fs::metadata(d.join("model.onnx")).unwrap().len();
    assert!(
        size(&pruned) < size(&out),
        "{} vs {}",
        size(&pruned),
        size(&out)
    );
    let pr = sonitor_train::eval::evaluate(&pruned, &data, &dir.path().join("pscores"))
        .unwrap()
        .unwrap();
    let official = pr.official_score.unwrap();
    assert!(official > 0.0 && official <= 1.0);
    // Its checkpoint is the fine-tuning of a prune: `fit --resume` would write the network without its pruning
    // record, so it is refused, and a killed `prune --force` is told to run again, not to resume.
    let mut o = options(&data, &pruned, LossKind::SubclusterAdacos, 3);
    o.resume = true;
    o.model =
        Some(pm.provenance.model["config"].clone()).map(|c| serde_json::from_value(c).unwrap());
    let e = format!("{:#}", fit(&o).unwrap_err());
    assert!(
        e.contains("fine-tuning of a `sonitor-train prune` run"),
        "{e}"
    );
    // What a killed `prune --force` set aside (here its old scores).
    std::fs::create_dir_all(pruned.join(".replaced/scores")).unwrap();
    let e = format!(
        "{:#}",
        fit(&options(&data, &pruned, LossKind::SubclusterAdacos, 1)).unwrap_err()
    );
    assert!(
        e.contains("That run was a `prune`, which cannot be continued"),
        "{e}"
    );
    std::fs::remove_dir_all(pruned.join(".replaced")).unwrap();

    // Refusals: a changed ONNX file, a manifest without centroids.
    let onnx = out.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes.push(0);
    std::fs::write(&onnx, &bytes).unwrap();
    let e = sonitor_train::eval::evaluate(&out, &data, &scores).unwrap_err();
    assert!(format!("{e:#}").contains("checksum mismatch"), "{e:#}");
    bytes.pop();
    std::fs::write(&onnx, &bytes).unwrap();
    // A test clip cut short: named once, by the audio error itself.
    let victim = std::fs::read_dir(data.join("fan/test"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let wav = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &wav[..wav.len() / 2]).unwrap();
    let e = format!(
        "{:#}",
        sonitor_train::eval::evaluate(&out, &data, &scores).unwrap_err()
    );
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(e.contains("truncated"), "{e}");
    assert_eq!(e.matches(name).count(), 1, "{e}");
    std::fs::write(&victim, &wav).unwrap();
    // Test clips of a machine type the bundle has no model for: refused before the scores' folder is made.
    let other = dir.path().join("other-type");
    std::fs::create_dir_all(other.join("pump/test")).unwrap();
    std::fs::copy(&victim, other.join("pump/test").join(name)).unwrap();
    let fresh = dir.path().join("other-scores");
    let e = format!(
        "{:#}",
        sonitor_train::eval::evaluate(&out, &other, &fresh).unwrap_err()
    );
    assert!(e.contains("has no model for pump section 00"), "{e}");
    assert!(!fresh.exists(), "a refused eval left {}", fresh.display());
    let mp = out.join(MANIFEST_FILE);
    let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    m.sections[0].centroids.clear();
    std::fs::write(&mp, serde_json::to_string(&m).unwrap()).unwrap();
    let e = Bundle::load(&out).unwrap_err().to_string();
    assert!(e.contains("no centroids"), "{e}");
}

/// The threshold is calibrated on training windows scored as new audio is, against centres their own clip did not
/// help to make, whatever k-means merged: with a few more source windows (48) than centres (40), most centres are a
/// single window, which scored its own window 0 and pulled the gamma fit (and the threshold) down to where most
/// normal clips crossed it. The same network with every window its own centre (k = 48) is the reference.
#[test]
fn the_threshold_does_not_fall_when_k_means_has_almost_one_centre_per_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    let threshold = |k: usize| {
        let out = dir.path().join(format!("k{k}"));
        let mut o = options(&data, &out, LossKind::SubclusterAdacos, 1);
        o.kmeans = k;
        fit(&o).unwrap();
        let b = Bundle::load(&out).unwrap();
        let s = b.section("fan", 0).unwrap();
        (s.n_source_centroids, s.threshold.value)
    };
    let (n40, t40) = threshold(40);
    let (n48, t48) = threshold(48);
    eprintln!("threshold with k = 40: {t40}, with k = 48: {t48}");
    assert_eq!((n40, n48), (40, 48));
    assert!(
        (t40 / t48 - 1.0).abs() < 0.25,
        "k = 40: {t40}, every window its own centre: {t48}"
    );
}

#[test]
fn every_loss_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    for loss in [
        LossKind::Adacos,
        LossKind::IcCompactness,
        LossKind::OneClass,
    ] {
        let out = dir.path().join(loss.as_str());
        let r = fit(&options(&data, &out, loss, 1)).unwrap();
        assert!(
            r.epoch_losses[0].is_finite(),
            "{loss:?}: {:?}",
            r.epoch_losses
        );
        Bundle::load(&out).unwrap();
    }
}

/// Runs the `sonitor-train` binary with `args`, then `--model MODEL --data DATA --out OUT`; returns its exit
/// status, stdout and stderr.
fn trainer(args: &[&str], model: &Path, data: &Path, out: &Path) -> (Option<i32>, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor-train"))
        .args(args)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `eval --json` prints one JSON object on stdout, labelled test clips or not: the metrics object of
/// `metrics --json`, or, for test clips without labels (evaluation-set names), an object with the metric fields
/// null that says why and where the submission files are. Both exit 0.
#[test]
fn eval_json_prints_one_object_with_or_without_labels() {
    let (dir, data, out) = data_and_bundle();
    let eval = |data: &Path, scores: &Path| {
        let (code, stdout, stderr) = trainer(&["eval", "--json"], &out, data, scores);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON object ({e}): {stdout:?}\n{stderr}")
        });
        (v, stderr)
    };

    // Labelled: the object `metrics --json` prints, unchanged.
    let (v, _) = eval(&data, &dir.path().join("s1"));
    let report: sonitor_core::metrics::Report = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(report.sections.len(), 1);
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["official_score", "sections", "types"]
    );

    // The same test clips under evaluation-set names (section_00_NNNN.wav): scored, no metrics.
    let unlabelled = dir.path().join("eval");
    let test = unlabelled.join("fan/test");
    std::fs::create_dir_all(&test).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(data.join("fan/test")).unwrap() {
        std::fs::copy(
            e.unwrap().path(),
            test.join(format!("section_00_{n:04}.wav")),
        )
        .unwrap();
        n += 1;
    }
    let scores = dir.path().join("s2");
    let (v, stderr) = eval(&unlabelled, &scores);
    for k in ["official_score", "sections", "types"] {
        assert!(v[k].is_null(), "{k}: {v}");
    }
    let why = v["no_metrics"].as_str().unwrap();
    assert!(
        why.contains(&format!(
            "{n} of {n} test clips carry no normal/anomaly label"
        )),
        "{why}"
    );
    assert!(stderr.contains(why), "{stderr}");
    assert_eq!(v["scores_dir"], scores.display().to_string());
    let file = scores.join("anomaly_score_fan_section_00_test.csv");
    assert_eq!(
        v["score_files"],
        serde_json::json!([file.display().to_string()])
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), n);

    // `--plot` cannot draw a ROC curve without labels: refused before any clip is scored.
    let scores = dir.path().join("s3");
    let roc = dir.path().join("roc.svg");
    let (code, _, stderr) = trainer(
        &["eval", "--plot", roc.to_str().unwrap()],
        &out,
        &unlabelled,
        &scores,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--plot: a ROC curve needs normal and anomalous test clips")
            && stderr.contains(why)
            && stderr.contains("leave out --plot"),
        "{stderr}"
    );
    assert!(!scores.exists(), "nothing is scored: {stderr}");
    assert!(!roc.exists());

    // An --out that is a file: said so (as `fit` says it) before any clip is scored, not as a failed creation.
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    for command in ["eval", "combine"] {
        let (code, _, stderr) = trainer(&[command], &out, &data, &file);
        assert_eq!(code, Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("--out") && stderr.contains("afile: exists and is not a directory"),
            "{command}: {stderr}"
        );
    }
}

/// `combine` puts the model's and the baseline's scores on their training clips' scales and adds them: with
/// `--weight 1` it ranks the test clips as `eval` does (the same model scores, to the bit), with `--weight 0` as
/// the baseline's scores do; the JSON is `metrics --json`'s object; a weight outside [0, 1] is refused before
/// anything is scored.
#[test]
fn combine_adds_the_two_scores_on_their_training_scales() {
    let (dir, data, model) = data_and_bundle();
    let run = |args: &[&str], out: &Path| trainer(args, &model, &data, out);
    // `combine --windows --bundle BUNDLE` of the model on `data`.
    let combine_into = |data: &Path, bundle: &Path, out: &Path| {
        let args = [
            "combine",
            "--json",
            "--windows",
            "--bundle",
            bundle.to_str().unwrap(),
        ];
        trainer(&args, &model, data, out)
    };
    let report = |stdout: &str| -> sonitor_core::metrics::Report {
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let file = "anomaly_score_fan_section_00_test.csv";

    let eval_out = dir.path().join("eval");
    let (code, stdout, stderr) = run(&["eval", "--json"], &eval_out);
    assert_eq!(code, Some(0), "{stderr}");
    let eval = report(&stdout);

    // Whole clips, and each window as a daemon would score it.
    for (weight, windows, name) in [
        ("1", false, "w1"),
        ("0", false, "w0"),
        ("0.5", false, "w05"),
        ("1", true, "w1-windows"),
        ("0", true, "w0-windows"),
    ] {
        let out = dir.path().join(name);
        let mut args = vec!["combine", "--json", "--weight", weight];
        if windows {
            args.push("--windows");
        }
        let (code, stdout, stderr) = run(&args, &out);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let combined = report(&stdout);
        assert!(
            combined.official_score.unwrap().is_finite(),
            "{name}: {stdout}"
        );
        assert!(
            stderr.contains("official score: level baseline (domain offsets) "),
            "{name}: {stderr}"
        );
        // The model's own scores are `eval`'s, either way.
        assert_eq!(
            std::fs::read_to_string(out.join("model").join(file)).unwrap(),
            std::fs::read_to_string(eval_out.join(file)).unwrap(),
            "{name}"
        );
        let alone = match weight {
            "1" => eval.clone(),
            "0" => sonitor_core::metrics::evaluate_submission(
                &sonitor_core::dcase::scan(&data).unwrap(),
                &out.join("baseline"),
            )
            .unwrap(),
            _ => continue,
        };
        // A scale is increasing and a clip's score the mean of its units, so one system alone ranks the clips as
        // its own scores do.
        let (a, b) = (&combined.sections[0], &alone.sections[0]);
        assert_eq!(
            (a.auc_source, a.auc_target, a.pauc),
            (b.auc_source, b.auc_target, b.pauc),
            "{name}"
        );
    }
    // Per window the baseline is another model (fitted on windows, not clips): other scores.
    assert_ne!(
        std::fs::read_to_string(dir.path().join("w0/baseline").join(file)).unwrap(),
        std::fs::read_to_string(dir.path().join("w0-windows/baseline").join(file)).unwrap()
    );

    // `--bundle`: the daemon's form of the combined score. `eval` on that bundle (the daemon's scoring function)
    // ranks the test clips as `combine` does, and decides as it does: its score is an increasing affine map of
    // `combine`'s per window, so of a clip's mean too.
    let out = dir.path().join("w05-windows");
    let combined_bundle = dir.path().join("combined-bundle");
    let (code, stdout, stderr) = combine_into(&data, &combined_bundle, &out);
    assert_eq!(code, Some(0), "{stderr}");
    let combined = report(&stdout);
    let (code, stdout, stderr) = trainer(
        &["eval", "--json"],
        &combined_bundle,
        &data,
        &dir.path().join("eval-combined"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (a, b) = (&report(&stdout).sections[0], &combined.sections[0]);
    assert_eq!(
        (a.auc_source, a.auc_target, a.pauc),
        (b.auc_source, b.auc_target, b.pauc)
    );
    // And `combine`'s decisions are `eval`'s at the bundle's recalibrated threshold.
    let decisions = "decision_result_fan_section_00_test.csv";
    assert_eq!(
        std::fs::read_to_string(out.join(decisions)).unwrap(),
        std::fs::read_to_string(dir.path().join("eval-combined").join(decisions)).unwrap()
    );
    let section = sonitor_core::bundle::Bundle::load(&combined_bundle).unwrap();
    let features = section.manifest.features.clone();
    let section = section.section("fan", 0).unwrap();
    let baseline = section.baseline.as_ref().unwrap();
    assert_eq!(baseline.weight, 0.5);
    // The bands every capture chain passes, not those up to the Nyquist frequency.
    assert_eq!(
        baseline.bands(),
        sonitor_core::score::baseline_bands(&features)
    );
    assert!(baseline.bands() < features.n_mels, "{}", baseline.bands());
    // Three target clips: the target mean gets its offset (left out one clip at a time), the source none.
    assert_eq!(baseline.means.len(), 2);
    assert_eq!(baseline.domain_offsets[0], 0.0);
    assert!(
        baseline.domain_offsets[1].is_finite(),
        "{:?}",
        baseline.domain_offsets
    );
    assert!(section.threshold.value > 0.0);
    // A user's own data set of normal training clips only: nothing to score, but the bundle is made from the
    // training clips, the same sections as with the test clips there.
    let train_only = dir.path().join("train-only");
    for entry in walk(&data) {
        let rel = entry.strip_prefix(&data).unwrap();
        if rel.components().any(|c| c.as_os_str() == "test") {
            continue;
        }
        let to = train_only.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let alone_bundle = dir.path().join("train-only-bundle");
    let (code, stdout, stderr) = combine_into(
        &train_only,
        &alone_bundle,
        &dir.path().join("train-only-scores"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("the data set has no test clips"),
        "{stdout}"
    );
    let made = sonitor_core::bundle::Bundle::load(&alone_bundle).unwrap();
    let made = made.section("fan", 0).unwrap();
    assert_eq!(made.baseline.as_ref(), Some(baseline));
    assert_eq!(made.threshold, section.threshold);
    // Without `--bundle` there is nothing to do.
    let (code, _, stderr) = trainer(
        &["combine", "--windows"],
        &model,
        &train_only,
        &dir.path().join("train-only-nothing"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no test clips to score"), "{stderr}");

    // A combined bundle is not pruned (it would lose its baseline) nor combined again; `--bundle` without
    // `--windows` is refused by the parser.
    let (code, _, stderr) = trainer(
        &["prune", "--keep", "0.5"],
        &combined_bundle,
        &data,
        &dir.path().join("pruned"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("Prune the bundle it was made from, then combine the pruned one"),
        "{stderr}"
    );
    let (code, _, stderr) = trainer(
        &["combine"],
        &combined_bundle,
        &data,
        &dir.path().join("again"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already combines the model"), "{stderr}");
    let (code, _, stderr) = run(
        &["combine", "--bundle", "x"],
        &dir.path().join("no-windows"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--windows"), "{stderr}");

    // `--bundle` onto a bundle: refused without `--force` (it overwrote any bundle, the `--model` itself
    // included, and wrote into the data set), before anything is scored; with it, replaced whole.
    let before = std::fs::read(model.join("model.onnx")).unwrap();
    let onto = |bundle: &Path, force: bool| {
        let mut args = vec!["combine", "--windows", "--bundle", bundle.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        run(&args, &dir.path().join("onto"))
    };
    let (code, _, stderr) = onto(&model, true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is the --model bundle"), "{stderr}");
    let (code, _, stderr) = onto(&combined_bundle, false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--bundle")
            && stderr.contains("already holds a bundle")
            && stderr.contains("--force")
            && !stderr.contains("--resume"),
        "{stderr}"
    );
    let (code, _, stderr) = onto(&data.join("fan"), false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is inside the data set"), "{stderr}");
    assert!(!data.join("fan/model.onnx").exists());
    assert!(!dir.path().join("onto").exists(), "scored before refusing");
    let (code, _, stderr) = onto(&combined_bundle, true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!combined_bundle.join(".replaced").exists());
    assert!(sonitor_core::bundle::Bundle::load(&combined_bundle).is_ok());
    assert_eq!(std::fs::read(model.join("model.onnx")).unwrap(), before);

    let out = dir.path().join("bad");
    let (code, _, stderr) = run(&["combine", "--weight", "1.5"], &out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--weight 1.5: the model's weight must lie between 0"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written: {stderr}");
}

/// A section with exactly as many source training windows as the bundle's k-means k (4 clips of 3 windows, k =
/// 12) and no target clips: every window is a centroid. `fit` scores each clip against the other clips'
/// centroids; `combine` scored them against all of them, its own too (0 each), and refused the bundle `fit` had
/// written ("no spread"). It combines, by clip and by window, as `fit` scores.
#[test]
fn combine_takes_a_section_with_as_many_source_windows_as_k() {
    use sonitor_core::dcase::{Condition, Split};
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut w = Writer::new(&data);
    for (f0, attr) in [(200.0, "speed_1"), (300.0, "speed_2")] {
        w.write(
            "fan",
            0,
            Split::Train,
            Domain::Source,
            Condition::Normal,
            f0,
            attr,
            2,
        );
    }
    w.test_clips("fan", 0, 200.0, 300.0);
    let model = d.path().join("b");
    let mut o = options(&data, &model, LossKind::SubclusterAdacos, 1);
    o.kmeans = 12;
    fit(&o).unwrap();
    let b = Bundle::load(&model).unwrap();
    let s = b.section("fan", 0).unwrap();
    assert_eq!((s.n_source_centroids, s.n_target_centroids), (12, 0));
    for (args, out) in [
        (&["combine"][..], "clips"),
        (&["combine", "--windows"][..], "windows"),
    ] {
        let (code, _, stderr) = trainer(args, &model, &data, &d.path().join(out));
        assert_eq!(code, Some(0), "{out}: {stderr}");
        assert!(stderr.contains("official score"), "{out}: {stderr}");
    }
}

/// Every file under `root`, depth first.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A plant's own recordings (all imported `--domain source`, plus anomalous test clips) have no target-domain
/// normal test clips, so no AUC (target) and no official score. `eval` gave only an error and exit 1, `combine
/// --bundle` wrote no bundle; now both print what can be computed (AUC (source), pAUC, `eval`'s threshold table)
/// with the rest n/a (null in JSON) and why, exit 0, and the bundle is written. `metrics` does the same.
#[test]
fn eval_combine_and_metrics_work_without_target_domain_normal_test_clips() {
    let (dir, full, model) = data_and_bundle();
    // The data set without its target-domain normal test clips.
    let data = dir.path().join("own");
    for sub in ["fan/train", "fan/test"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
        for e in std::fs::read_dir(full.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if !name.contains("_target_test_normal_") {
                std::fs::copy(&p, data.join(sub).join(&name)).unwrap();
            }
        }
    }
    let why = "fan section 00: no AUC (target): ";
    let how =
        "import normal test recordings with `sonitor-train import --split test --domain target`";

    let scores = dir.path().join("own-scores");
    let (code, stdout, stderr) = trainer(&["eval"], &model, &data, &scores);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("submission files in"), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: {why}")) && stderr.contains(how),
        "{stderr}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| fan | 00 |"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(
        cells[3].parse::<f64>().is_ok() && cells[4] == "n/a" && cells[5].parse::<f64>().is_ok(),
        "{row}"
    );
    assert!(
        stdout.contains("**Official score** (harmonic mean of all AUC/pAUC values): **n/a**"),
        "{stdout}"
    );
    assert!(stdout.contains(why) && stdout.contains(how), "{stdout}");
    assert!(
        stdout.contains("At each section's calibrated threshold, on the test clips:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| fan/section_00 |") && stdout.contains("| – |"),
        "{stdout}"
    );

    let (code, stdout, stderr) = trainer(&["eval", "--json"], &model, &data, &scores);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        v["official_score"].is_null() && v["sections"][0]["auc_target"].is_null(),
        "{v}"
    );
    assert!(
        v["sections"][0]["auc_source"].is_f64() && v["sections"][0]["pauc"].is_f64(),
        "{v}"
    );
    assert!(
        v["sections"][0]["missing"][0]
            .as_str()
            .unwrap()
            .contains(why),
        "{v}"
    );

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor-train"))
        .args(["metrics", "--data"])
        .arg(&data)
        .arg("--scores")
        .arg(&scores)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("**n/a**") && stderr.contains(why),
        "{stdout}\n{stderr}"
    );

    let bundle = dir.path().join("own-combined");
    let args = ["combine", "--windows", "--bundle", bundle.to_str().unwrap()];
    let (code, stdout, stderr) = trainer(&args, &model, &data, &dir.path().join("own-combine"));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("warning: {why}")), "{stderr}");
    assert!(
        stderr.contains("official score: level baseline (domain offsets) n/a"),
        "{stderr}"
    );
    // The recalibrated thresholds say which quantile they are, and what an unattended alarm wants.
    assert!(
        stderr.contains(
            "thresholds: the 0.9 quantile of each section's normal training window scores"
        ) && stderr.contains("for an unattended alarm --quantile 0.99"),
        "{stderr}"
    );
    let b = Bundle::load(&bundle).unwrap();
    assert!(b.manifest.provenance.metrics["official_score"].is_null());
}

/// Ctrl-C while `fit` trains: it stops at the next batch, says which checkpoint is kept and that `--resume`
/// continues from it, and ends with status 130 (it ended without a word: review25); `--resume` then continues.
#[cfg(unix)]
#[test]
fn ctrl_c_during_the_epochs_says_how_to_continue() {
    use std::io::{BufRead, BufReader};
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    make_dataset(&data);
    let out = d.path().join("b");
    let fit_cmd = |epochs: &str, resume: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor-train"));
        c.args(["fit", "--arch", "tiny", "--epochs", epochs, "--batch", "8"])
            .args(["--window-seconds", "0.256", "--window-hop-seconds", "0.256"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out);
        if resume {
            c.arg("--resume");
        }
        c
    };
    // Runs `c` until its second epoch begins (the first epoch's checkpoint is written before), then Ctrl-C: the
    // status, all it said, and the number of the epoch whose checkpoint it says is kept.
    let interrupted = |mut c: std::process::Command| {
        let mut child = c.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut said = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            said.push_str(&line);
            said.push('\n');
            if line.starts_with("epoch 2/100000") {
                break;
            }
        }
        // SAFETY: signalling the child this test started.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        said.extend(lines.map(|l| l.unwrap() + "\n"));
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{said}");
        let last = said.lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("error: interrupted in epoch ")
                && last.contains(&format!("is kept in {}", out.join("checkpoint").display()))
                && last.contains("the same command with --resume continues from it"),
            "{said}"
        );
        let done: usize = last
            .split("the checkpoint of epoch ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        (last, done)
    };
    let (last, done) = interrupted(fit_cmd("100000", false));
    assert!(last.ends_with("the same command with --resume continues from it"));
    assert!(out.join("checkpoint").is_dir() && !out.join(MANIFEST_FILE).exists());
    // The same command with --resume (and the epochs that suffice) continues and writes the bundle.
    let o = fit_cmd(&(done + 1).to_string(), true).output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!("resuming after epoch {done}")),
        "{text}"
    );
    assert!(out.join(MANIFEST_FILE).is_file());

    // A --force run over that bundle, interrupted: its checkpoint is kept as it says (the old bundle's was put
    // back in its place, and --resume went on training the old model from its last epoch: review28), and the
    // old bundle stays usable, its checkpoint set aside in .replaced, until --resume completes the replacement.
    let old_model = std::fs::read(out.join("model.onnx")).unwrap();
    let mut force = fit_cmd("100000", false);
    force.arg("--force");
    let (last, done2) = interrupted(force);
    let backup = out.join(".replaced");
    assert!(
        last.contains(&format!(
            "Until then the bundle it replaces (--force) stays in {}, its checkpoint set aside in {}",
            out.display(),
            backup.display()
        )),
        "{last}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("checkpoint").join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["epochs_done"].as_u64(), Some(done2 as u64), "{state}");
    assert!(std::fs::read(out.join("model.onnx")).unwrap() == old_model);
    assert!(backup.join("checkpoint").join("state.json").is_file());
    let o = fit_cmd(&(done2 + 1).to_string(), true).output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!("resuming after epoch {done2}")),
        "{text}"
    );
    assert!(!backup.exists() && out.join(MANIFEST_FILE).is_file());
}
