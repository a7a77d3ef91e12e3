//! `fit` on data sets that cannot give a sound bundle, and options that make no sense: each is refused before
//! any bundle is written, with a message naming the problem (never a panic, never a silently wrong bundle).
//! Also the cases that are sound but used to come out wrong (a section with few training clips).

use std::collections::BTreeMap;
use std::path::Path;

use sonitor_core::bundle::Bundle;
use sonitor_core::dcase::{Condition, Domain, Split};
use sonitor_train::loss::LossKind;
use sonitor_train::train::fit;

#[path = "support/data.rs"]
mod data;
use data::{data_and_bundle, options, Writer};

use Condition::Normal;
use Domain::Source;

fn err(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.unwrap_err())
}

fn no_bundle(out: &Path) {
    assert!(
        !out.join("manifest.json").exists() && !out.join("model.onnx").exists(),
        "a bundle was written to {}",
        out.display()
    );
}

/// A section of 5 source clips (15 windows, k-means 16: every window its own centre) and no target clips gets a
/// real threshold: its windows are scored against the other clips' centres, not their own (which gave 0).
#[test]
fn few_source_clips_give_a_fitted_threshold_and_one_clip_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut w = Writer::new(&data);
    w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 3);
    w.write("fan", 0, Split::Train, Source, Normal, 300.0, "speed_2", 2);
    w.test_clips("fan", 0, 200.0, 300.0);
    let out = d.path().join("b");
    let mut o = options(&data, &out, LossKind::SubclusterAdacos, 1);
    o.kmeans = 16;
    fit(&o).unwrap();
    let b = Bundle::load(&out).unwrap();
    let s = b.section("fan", 0).unwrap();
    assert_eq!((s.n_source_centroids, s.n_target_centroids), (15, 0));
    let t = &s.threshold;
    assert_eq!(t.method, "gamma-quantile", "{t:?}");
    assert!(t.value > 0.0 && t.value < 2.0, "{t:?}");
    assert!(t.gamma_shape.is_some_and(f64::is_finite), "{t:?}");

    // A section with a single training clip has no other clip to score its windows against: refused, naming
    // the section.
    w.write("pump", 0, Split::Train, Source, Normal, 250.0, "speed_1", 1);
    let out = d.path().join("one");
    let mut o = options(&data, &out, LossKind::SubclusterAdacos, 1);
    o.kmeans = 16;
    let e = err(fit(&o));
    assert!(
        e.contains("pump section 00 has only one normal training clip"),
        "{e}"
    );
    no_bundle(&out);
    // Before any training: no checkpoint either (it used to be refused after the last epoch).
    assert!(!out.join("checkpoint").exists());
}

/// One machine in one condition gives one auxiliary class: the angular-margin losses, which learn by telling
/// classes apart, would train nothing (loss 0 from the start) and write a bundle of random weights; refused,
/// saying what to add. The compactness losses need no second class.
#[test]
fn one_auxiliary_class_is_refused_for_the_angular_margin_losses() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut w = Writer::new(&data);
    w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 4);
    // One epoch into `<tmp>/<name>`, k-means 2 (8 windows).
    let opts = |name: &str, loss| {
        let mut o = options(&data, &d.path().join(name), loss, 1);
        o.kmeans = 2;
        o
    };
    for loss in [LossKind::SubclusterAdacos, LossKind::Adacos] {
        let o = opts(loss.as_str(), loss);
        let e = err(fit(&o));
        assert!(
            e.contains("one auxiliary class with --labels attribute ('fan/section_00/speed_1')")
                && e.contains("nothing to tell"),
            "{e}"
        );
        no_bundle(&o.out);
    }
    fit(&opts("ic", LossKind::IcCompactness)).unwrap();
    // A second operating condition is a second class: trained.
    w.write("fan", 0, Split::Train, Source, Normal, 300.0, "speed_2", 4);
    let report = fit(&opts("two", LossKind::SubclusterAdacos)).unwrap();
    assert!(report.epoch_losses.iter().all(|l| *l > 0.0), "{report:?}");
}

/// One training clip gives no batch of 2: refused instead of an epoch with loss NaN and a bundle. `--epochs 0`
/// would write an untrained network: refused.
#[test]
fn one_training_clip_and_zero_epochs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut w = Writer::new(&data);
    w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 1);
    let out = d.path().join("b");
    let e = err(fit(&options(&data, &out, LossKind::SubclusterAdacos, 1)));
    assert!(
        e.contains("1 training clip") && e.contains("at least 2"),
        "{e}"
    );
    no_bundle(&out);

    w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 3);
    let e = err(fit(&options(&data, &out, LossKind::SubclusterAdacos, 0)));
    assert!(e.contains("--epochs 0"), "{e}");
    no_bundle(&out);
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// A header-only WAV (0 samples) has no spectrum: `fit`, `eval` and `baseline` all refuse it, naming the file,
/// with the same message.
#[test]
fn a_header_only_wav_is_refused_everywhere() {
    let (d, data, out) = data_and_bundle();

    let empty = |split: Split, name: &str| {
        let p = data.join("fan").join(split.as_str()).join(name);
        sonitor_core::audio::write_wav_i16(&p, &[], 16_000).unwrap();
        p
    };
    let test = empty(
        Split::Test,
        "section_00_source_test_normal_0900_speed_1.wav",
    );
    let needle =
        "section_00_source_test_normal_0900_speed_1.wav: too short (0 samples) for one STFT frame";
    let e = err(sonitor_train::eval::evaluate(
        &out,
        &data,
        &d.path().join("s"),
    ));
    assert!(e.contains(needle), "{e}");
    let e = err(sonitor_train::baseline::score_dataset(
        &sonitor_core::dcase::scan(&data).unwrap(),
        &d.path().join("bs"),
        &sonitor_core::features::FeatureParams::default(),
    ));
    assert!(e.contains(needle), "{e}");
    std::fs::remove_file(test).unwrap();

    empty(
        Split::Train,
        "section_00_source_train_normal_0900_speed_1.wav",
    );
    let out = d.path().join("b2");
    let e = err(fit(&options(&data, &out, LossKind::SubclusterAdacos, 1)));
    assert!(
        e.contains("section_00_source_train_normal_0900_speed_1.wav: too short (0 samples)"),
        "{e}"
    );
    no_bundle(&out);
}

/// An anomalous clip in train/ would be learned as normal: `fit` and `baseline` refuse it, naming it.
#[test]
fn an_anomalous_training_clip_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut w = Writer::new(&data);
    w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 4);
    let bad = w.write(
        "fan",
        0,
        Split::Train,
        Source,
        Condition::Anomaly,
        200.0,
        "speed_1",
        1,
    );
    w.test_clips("fan", 0, 200.0, 300.0);
    let name = bad[0].file_name().unwrap().to_str().unwrap().to_string();
    let out = d.path().join("b");
    let e = err(fit(&options(&data, &out, LossKind::SubclusterAdacos, 1)));
    assert!(e.contains(&name) && e.contains("normal clips only"), "{e}");
    no_bundle(&out);
    let e = err(sonitor_train::baseline::score_dataset(
        &sonitor_core::dcase::scan(&data).unwrap(),
        &d.path().join("bs"),
        &sonitor_core::features::FeatureParams::default(),
    ));
    assert!(e.contains(&name) && e.contains("normal clips only"), "{e}");
}

/// `--resume` continues the checkpoint's run: an explicitly different `--loss`, `--labels`, `--seed`, `--batch`,
/// `--lr`, mixup, window, `--kmeans`, `--quantile` or `--target-centres` is an error, not silently ignored (and
/// recorded as if used); left out, they are the checkpoint's, `--epochs` included; a run that ended is not resumed.
#[test]
fn resume_refuses_changed_settings_and_takes_the_checkpoints() {
    use sonitor_core::dcase::LabelGranularity;
    use sonitor_train::train::{Arch, DeviceKind, FitArgs, FitOptions, TargetCentres};
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    data::make_dataset(&data);
    // Type labels need a second type: with one class there is nothing to learn (refused, below).
    Writer::new(&data).write("pump", 0, Split::Train, Source, Normal, 700.0, "speed_1", 4);
    let out = d.path().join("b");
    let mut o = options(&data, &out, LossKind::Adacos, 1);
    o.labels = LabelGranularity::Type;
    o.seed = 9;
    o.kmeans = 3;
    o.quantile = 0.95;
    o.target_centres = TargetCentres::Clip;
    fit(&o).unwrap();
    let resume = |f: &dyn Fn(&mut FitOptions)| {
        let mut o = o.clone();
        o.epochs = 2;
        o.resume = true;
        f(&mut o);
        fit(&o)
    };
    let e = err(resume(&|o| o.loss = LossKind::SubclusterAdacos));
    assert!(e.contains("--loss adacos, not subcluster-adacos"), "{e}");
    let e = err(resume(&|o| o.labels = LabelGranularity::Attribute));
    assert!(e.contains("--labels type, not attribute"), "{e}");
    let e = err(resume(&|o| o.seed = 1));
    assert!(e.contains("--seed 9, not 1"), "{e}");
    // Batch, learning rate and mixup too: a resume went back to the defaults (batch 64) without a word, and the
    // provenance recorded them for every epoch.
    let e = err(resume(&|o| o.batch = 3));
    assert!(e.contains("--batch 8, not 3"), "{e}");
    let e = err(resume(&|o| o.lr = 0.01));
    assert!(e.contains("--lr 0.001, not 0.01"), "{e}");
    let e = err(resume(&|o| o.mixup = false));
    assert!(
        e.contains("trained with mixup: leave out --no-mixup"),
        "{e}"
    );
    // Other window flags: the message gives the ones the checkpoint needs.
    let e = err(resume(&|o| o.features.window_hop_samples = 2048));
    assert!(
        e.contains("--window-seconds 0.256 --window-hop-seconds 0.256"),
        "{e}"
    );
    // Another data set (the same classes, other clips): the bundle's provenance would name data its first epoch
    // never saw.
    let other = d.path().join("other");
    data::make_dataset(&other);
    Writer::new(&other).write("pump", 0, Split::Train, Source, Normal, 710.0, "speed_1", 4);
    let e = err(resume(&|o| o.data = other.clone()));
    assert!(
        e.contains("was trained on another data set")
            && e.contains(&format!("--data {}", data.display())),
        "{e}"
    );
    // The same folder with a clip added since: said so, not "resume with --data" the folder just given.
    let added =
        Writer::new(&data).write("pump", 0, Split::Train, Source, Normal, 710.0, "added_1", 1);
    let e = err(resume(&|_| {}));
    assert!(
        e.contains(&format!(
            "the training clips in {} changed since",
            data.display()
        )) && e.contains("Put the clips back")
            && !e.contains("Resume with --data"),
        "{e}"
    );
    std::fs::remove_file(&added[0]).unwrap();
    // The back end's settings too: a resume took the defaults (16 centres, quantile 0.9, one centre per target
    // window) and wrote other centres and thresholds under the same graph.
    let e = err(resume(&|o| o.kmeans = 16));
    assert!(e.contains("--kmeans 3, not 16"), "{e}");
    let e = err(resume(&|o| o.quantile = 0.9));
    assert!(e.contains("--quantile 0.95, not 0.9"), "{e}");
    let e = err(resume(&|o| o.target_centres = TargetCentres::Window));
    assert!(e.contains("--target-centres clip, not window"), "{e}");
    // A run that ended, its bundle written: nothing to continue (a resume without --epochs trained it on to 10
    // epochs and replaced the bundle).
    let e = err(resume(&|o| o.epochs = 1));
    assert!(
        e.contains("ended: its 1 epochs are done") && e.contains("give --epochs more than 1"),
        "{e}"
    );
    // The bundle of the first run is untouched by the refusals.
    assert_eq!(Bundle::load(&out).unwrap().manifest.provenance.epochs, 1);

    // The command line without --loss, --labels, --seed or --arch continues the checkpoint's run.
    let f = data::features();
    let args = FitArgs {
        data: data.clone(),
        out: out.clone(),
        epochs: None,
        batch: None,
        lr: None,
        seed: None,
        loss: None,
        labels: None,
        device: DeviceKind::Cpu,
        resume: true,
        force: false,
        arch: None::<Arch>,
        kmeans: None,
        quantile: None,
        target_centres: None,
        no_mixup: false,
        window_seconds: None,
        window_hop_seconds: None,
    };
    // One window flag given: the other is the checkpoint's, not the default (which made a matching flag refused
    // with a message about input shapes).
    let hop = f.window_hop_samples as f64 / f.sample_rate as f64;
    let same = FitArgs {
        window_hop_seconds: Some(hop),
        ..args.clone()
    };
    assert_eq!(FitOptions::from_args(&same).unwrap().features, f);
    let other = FitArgs {
        window_seconds: Some(1.0),
        ..args.clone()
    };
    let e = err(FitOptions::from_args(&other));
    assert!(e.contains("leave the window flags out"), "{e}");
    // Without --epochs, the run's: this one ended, so there is nothing to resume.
    let ended = FitOptions::from_args(&args).unwrap();
    assert_eq!(ended.epochs, 1);
    let e = err(fit(&FitOptions {
        progress: false,
        ..ended
    }));
    assert!(e.contains("ended"), "{e}");
    let mut from_cli = FitOptions::from_args(&FitArgs {
        epochs: Some(2),
        ..args.clone()
    })
    .unwrap();
    assert_eq!(
        (from_cli.kmeans, from_cli.quantile, from_cli.target_centres),
        (3, 0.95, TargetCentres::Clip)
    );
    assert_eq!(
        (from_cli.loss, from_cli.labels, from_cli.seed),
        (LossKind::Adacos, LabelGranularity::Type, 9)
    );
    assert_eq!(
        (
            from_cli.batch,
            from_cli.lr,
            from_cli.mixup,
            &from_cli.features
        ),
        (8, 1e-3, true, &f)
    );
    from_cli.progress = false;
    fit(&from_cli).unwrap();
    let p = Bundle::load(&out).unwrap().manifest.provenance;
    assert_eq!(
        (p.loss.as_str(), p.labels.as_str(), p.seed, p.epochs),
        ("adacos", "type", 9, 2)
    );
    assert_eq!(
        (&p.model["batch"], &p.model["lr"], &p.model["mixup"]),
        (
            &serde_json::json!(8),
            &serde_json::json!(1e-3),
            &serde_json::json!(true)
        )
    );
}

/// An --out that holds a bundle is refused (it would be overwritten, or mixed with a new checkpoint) unless
/// `--force` clears it; an --out that is a file is refused before training.
#[test]
fn an_existing_bundle_or_a_file_as_out_is_refused() {
    use sonitor_train::train::run;
    let (d, data, out) = data_and_bundle();
    let before = std::fs::read(out.join("model.onnx")).unwrap();
    let mut o = options(&data, &out, LossKind::Adacos, 1);
    let e = err(fit(&o));
    assert!(
        e.contains("already holds a bundle or checkpoint (manifest.json, model.onnx, checkpoint)")
            && e.contains("--force"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("model.onnx")).unwrap(), before);
    // Only a checkpoint (an interrupted run) is refused too.
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    std::fs::remove_file(out.join("model.onnx")).unwrap();
    assert!(err(fit(&o)).contains("(checkpoint)"));

    // `--force` removes the old files (the old model's scores too, `eval`'s and `combine`'s) and trains anew.
    for dir in ["scores", "scores-combined"] {
        std::fs::create_dir(out.join(dir)).unwrap();
        std::fs::write(out.join(dir).join("old.csv"), "x").unwrap();
    }
    let args = force_args(&data, &out);
    run(&args).unwrap();
    assert_eq!(
        Bundle::load(&out).unwrap().manifest.provenance.loss,
        "adacos"
    );
    assert!(!out.join("scores").exists());
    assert!(!out.join("scores-combined").exists());

    // A file as --out: refused before the first epoch, naming it.
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    o.out = file.clone();
    let e = err(fit(&o));
    assert!(e.contains("exists and is not a directory"), "{e}");
    // A file as --data: said to be one, not to be missing.
    let o = options(&file, &d.path().join("from-file"), LossKind::Adacos, 1);
    let e = err(fit(&o));
    assert!(
        e.contains("file: not a directory") && !e.contains("not found"),
        "{e}"
    );
}

/// Every file and directory under `dir`: relative path → content (`None` for a directory).
fn tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                m.insert(rel, None);
                stack.push(p);
            } else {
                m.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    m
}

/// `dir` holds what `before` recorded, file for file and byte for byte; the message names what differs.
fn unchanged(dir: &Path, before: &BTreeMap<String, Option<Vec<u8>>>) {
    let now = tree(dir);
    let differ: Vec<&String> = before
        .keys()
        .chain(now.keys())
        .filter(|k| before.get(*k) != now.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "{}: changed, added or removed: {differ:?}",
        dir.display()
    );
}

/// `fit --force` of the tiny network (adacos, seed 5) from `data` into `out`, through the CLI's entry point.
fn force_args(data: &Path, out: &Path) -> sonitor_train::train::FitArgs {
    use sonitor_train::train::{Arch, DeviceKind, FitArgs, TargetCentres};
    FitArgs {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs: Some(1),
        batch: Some(8),
        lr: Some(1e-3),
        seed: Some(5),
        loss: Some(LossKind::Adacos),
        labels: None,
        device: DeviceKind::Cpu,
        resume: false,
        force: true,
        arch: Some(Arch::Tiny),
        kmeans: Some(4),
        quantile: Some(0.9),
        target_centres: Some(TargetCentres::Window),
        no_mixup: false,
        window_seconds: Some(0.256),
        window_hop_seconds: Some(0.256),
    }
}

/// The tiny data set with one anomalous clip in `train/`, which `fit` refuses once it reads the data.
fn dataset_with_anomalous_train_clip(dir: &Path) {
    data::make_dataset(dir);
    Writer::new(dir).write(
        "fan",
        0,
        Split::Train,
        Source,
        Condition::Anomaly,
        200.0,
        "speed_1",
        1,
    );
}

/// `fit --force` keeps the old bundle until the new one is written: a run that fails on its data (before
/// training) or in the back end (after an epoch wrote its checkpoint) leaves every file of the old bundle, its
/// checkpoint and scores as they were; a run that succeeds replaces them and leaves no backup behind.
#[test]
fn a_forced_fit_that_fails_leaves_the_old_bundle() {
    use sonitor_train::train::run;
    let (d, data, out) = data_and_bundle();
    std::fs::create_dir(out.join("scores")).unwrap();
    std::fs::write(out.join("scores/old.csv"), "x").unwrap();
    let before = tree(&out);

    // An anomalous training clip: refused once the data is read.
    let bad = d.path().join("bad");
    dataset_with_anomalous_train_clip(&bad);
    let e = err(run(&force_args(&bad, &out)));
    assert!(e.contains("normal clips only"), "{e}");
    unchanged(&out, &before);

    // A second section of two identical training clips: an epoch is trained (and checkpointed), then the back
    // end cannot fit that section's threshold (every window scores 0 against the other clip).
    let one = d.path().join("one");
    data::make_dataset(&one);
    let clip =
        Writer::new(&one).write("pump", 0, Split::Train, Source, Normal, 250.0, "speed_1", 1);
    let twin = clip[0].with_file_name(
        clip[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace("_normal_", "_normal_9"),
    );
    std::fs::copy(&clip[0], twin).unwrap();
    let e = err(run(&force_args(&one, &out)));
    assert!(
        e.contains("pump section 00") && e.contains("cannot fit a threshold"),
        "{e}"
    );
    unchanged(&out, &before);

    // A run that succeeds replaces the bundle, its checkpoint and the old scores, and keeps no backup.
    run(&force_args(&data, &out)).unwrap();
    let b = Bundle::load(&out).unwrap();
    assert_eq!(b.manifest.provenance.loss, "adacos");
    let state = sonitor_train::checkpoint::read_state(&out.join("checkpoint")).unwrap();
    assert_eq!(state.loss.kind, LossKind::Adacos);
    let left: Vec<String> = tree(&out)
        .into_keys()
        .filter(|k| !k.starts_with("checkpoint/"))
        .collect();
    assert_eq!(left, ["checkpoint", "manifest.json", "model.onnx"]);
}

/// The library's `force` does what `--force` does. A `--force` run that was killed leaves the old bundle in
/// OUT/.replaced: every later run into OUT refuses it, saying where it is and how to restore or discard it,
/// except `--resume`, which finishes the killed run and then removes the backup.
#[test]
fn the_library_force_and_a_killed_forced_fit() {
    let (d, data, out) = data_and_bundle();
    let before = tree(&out);
    let forced = |data: &Path, loss: LossKind| {
        let mut o = options(data, &out, loss, 1);
        o.force = true;
        o
    };

    // `force` with bad data: refused, the old bundle as it was; with `resume` too: refused at once.
    let bad = d.path().join("bad");
    dataset_with_anomalous_train_clip(&bad);
    let e = err(fit(&forced(&bad, LossKind::Adacos)));
    assert!(e.contains("normal clips only"), "{e}");
    unchanged(&out, &before);
    let mut o = forced(&data, LossKind::Adacos);
    o.resume = true;
    let e = err(fit(&o));
    assert!(e.contains("exclude each other"), "{e}");
    unchanged(&out, &before);

    // `force` that succeeds replaces the bundle.
    fit(&forced(&data, LossKind::Adacos)).unwrap();
    assert_eq!(
        Bundle::load(&out).unwrap().manifest.provenance.loss,
        "adacos"
    );
    assert!(!out.join(".replaced").exists());

    // What a `--force` run (seed 6) killed after its first epoch leaves: the old bundle's checkpoint in
    // .replaced/, its own checkpoint in its place, the old bundle's files still there.
    let other = d.path().join("other");
    let mut o = options(&data, &other, LossKind::SubclusterAdacos, 1);
    o.seed = 6;
    fit(&o).unwrap();
    std::fs::create_dir(out.join(".replaced")).unwrap();
    std::fs::rename(out.join("checkpoint"), out.join(".replaced/checkpoint")).unwrap();
    std::fs::rename(other.join("checkpoint"), out.join("checkpoint")).unwrap();
    let killed = tree(&out);
    for force in [false, true] {
        let mut o = forced(&data, LossKind::Adacos);
        o.force = force;
        let e = err(fit(&o));
        assert!(
            e.contains(&format!("{}", out.join(".replaced").display()))
                && e.contains("a --force run set aside")
                && e.contains("(checkpoint)")
                && e.contains("continue it with `sonitor-train fit --resume --out")
                && e.contains("move everything in")
                && e.contains("To give the old bundle up, remove"),
            "{e}"
        );
        unchanged(&out, &killed);
    }
    // `prune --force` into it: refused the same way. Without the new run's checkpoint (killed before its first
    // epoch) --resume is not offered.
    let mut pa = data::prune_args(&other, &out);
    pa.force = true;
    std::fs::rename(out.join("checkpoint"), other.join("checkpoint")).unwrap();
    let e = err(sonitor_train::prune::run(&pa));
    assert!(
        e.contains("a --force run set aside")
            && e.contains("stopped before it wrote a checkpoint, so it cannot be resumed")
            && !e.contains("--resume"),
        "{e}"
    );
    std::fs::rename(other.join("checkpoint"), out.join("checkpoint")).unwrap();
    unchanged(&out, &killed);
    // Pruning from it (`--model`): the same advice, not "its checkpoint is not the bundle's network; finish it
    // with fit --resume", which a killed prune cannot.
    let e = err(sonitor_train::prune::run(&data::prune_args(
        &out,
        &d.path().join("from-killed"),
    )));
    assert!(
        e.contains("--model")
            && e.contains("a --force run set aside")
            && !e.contains("ModelConfig"),
        "{e}"
    );
    unchanged(&out, &killed);

    // `--resume` finishes the killed run: its bundle, no backup.
    let mut o = options(&data, &out, LossKind::SubclusterAdacos, 2);
    o.seed = 6;
    o.resume = true;
    fit(&o).unwrap();
    let p = Bundle::load(&out).unwrap().manifest.provenance;
    assert_eq!(
        (p.seed, p.epochs, p.loss.as_str()),
        (6, 2, "subcluster-adacos")
    );
    assert!(!out.join(".replaced").exists());
}

/// `prune` refuses a checkpoint that is not the bundle's network, an --out holding a bundle (unless --force), and,
/// without --data, a provenance data set that is gone or has changed.
#[test]
fn prune_checks_its_checkpoint_out_and_data() {
    use sonitor_train::prune::{run, PruneArgs};
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    data::make_dataset(&data);
    let a = d.path().join("a");
    fit(&options(&data, &a, LossKind::SubclusterAdacos, 1)).unwrap();
    let prov = Bundle::load(&a).unwrap().manifest.provenance;
    assert!(
        Path::new(&prov.data_path).is_absolute(),
        "{}",
        prov.data_path
    );
    let args = |out: &str, data: Option<&Path>, force: bool| PruneArgs {
        data: data.map(Path::to_path_buf),
        force,
        ..data::prune_args(&a, &d.path().join(out))
    };
    // Without --data: the provenance's data set, found from any directory.
    run(&args("p", None, false)).unwrap();
    Bundle::load(&d.path().join("p")).unwrap();
    let e = err(run(&args("p", None, false)));
    assert!(e.contains("already holds a bundle"), "{e}");
    run(&args("p", None, true)).unwrap();
    // In place (--out = --model, --force): the checkpoint it prunes is moved aside before the fine-tuning reads
    // its weights, which must already be in memory then (burn read them lazily from the file: a panic).
    let p = d.path().join("p");
    let before = Bundle::load(&p).unwrap().manifest.model_id;
    run(&PruneArgs {
        force: true,
        ..data::prune_args(&p, &p)
    })
    .unwrap();
    let after = Bundle::load(&p).unwrap().manifest;
    assert_ne!(after.model_id, before);
    assert!(p.join("checkpoint/state.json").exists() && !p.join(".replaced").exists());

    // A changed data set, then a moved one.
    let mut w = Writer::new(&data);
    w.write("fan", 0, Split::Train, Source, Normal, 210.0, "speed_1", 1);
    let e = err(run(&args("q", None, false)));
    assert!(
        e.contains("data_sha256") && e.contains("give --data"),
        "{e}"
    );
    std::fs::rename(&data, d.path().join("moved")).unwrap();
    let e = err(run(&args("q", None, false)));
    assert!(e.contains("not a directory here; give --data"), "{e}");
    std::fs::rename(d.path().join("moved"), &data).unwrap();

    // Another run's checkpoint beside the bundle's graph (an interrupted re-fit): refused.
    let b = d.path().join("b");
    let mut o = options(&data, &b, LossKind::SubclusterAdacos, 1);
    o.seed = 6;
    fit(&o).unwrap();
    std::fs::remove_dir_all(a.join("checkpoint")).unwrap();
    std::fs::rename(b.join("checkpoint"), a.join("checkpoint")).unwrap();
    let e = err(run(&args("r", Some(&data), false)));
    assert!(
        e.contains("is not the network of the bundle's model.onnx") && e.contains("seed 6"),
        "{e}"
    );
    no_bundle(&d.path().join("r"));
}

/// Clips shorter than the analysis window still train (each is repeated to fill it), but `fit` counts them and
/// warns: the network then also learns the seams.
#[test]
fn clips_shorter_than_the_window_are_counted() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    data::make_dataset(&data);
    let mut o = options(&data, &d.path().join("long"), LossKind::SubclusterAdacos, 1);
    // 1.25 s windows on the 1 s clips.
    o.features.window_samples = 20_000;
    o.features.window_hop_samples = 10_000;
    let [frames, n_mels] = o.features.log_mel_shape();
    o.model = Some(sonitor_train::model::ModelConfig::tiny(
        frames,
        n_mels,
        o.features.spectrum_len(),
    ));
    let r = fit(&o).unwrap();
    assert_eq!((r.n_short_clips, r.n_clips), (19, 19));
    let r = fit(&options(
        &data,
        &d.path().join("fits"),
        LossKind::SubclusterAdacos,
        1,
    ))
    .unwrap();
    assert_eq!(r.n_short_clips, 0);
}

/// One run at a time writes into a bundle directory: two `fit`s into one `--out` both said they wrote their bundle,
/// and only one survived (or one failed moving its checkpoint). A half-written `checkpoint.new/` alone (a save
/// that met a full disk) no longer blocks the next run, and `--resume` where there is no checkpoint says so.
#[test]
fn one_run_writes_into_a_bundle_directory_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    data::make_dataset(&data);
    let out = d.path().join("b");
    std::fs::create_dir(&out).unwrap();
    let held = std::fs::File::open(&out).unwrap();
    held.try_lock().unwrap();
    let o = options(&data, &out, LossKind::Adacos, 1);
    let e = err(fit(&o));
    assert!(
        e.contains("another sonitor-train run is writing into it"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "written");
    drop(held);

    // Refused, the directory it created is not left behind.
    let fresh = d.path().join("fresh");
    let mut resume = options(&data, &fresh, LossKind::Adacos, 1);
    resume.resume = true;
    let e = err(fit(&resume));
    assert!(
        e.contains("holds no checkpoint to continue") && e.contains("run without --resume"),
        "{e}"
    );
    assert!(!fresh.exists());

    std::fs::create_dir(out.join("checkpoint.new")).unwrap();
    std::fs::write(out.join("checkpoint.new/model.bpk"), b"half").unwrap();
    let mut r = options(&data, &out, LossKind::Adacos, 1);
    r.resume = true;
    let e = err(fit(&r));
    assert!(
        e.contains("what a save that failed left half-written"),
        "{e}"
    );
    fit(&o).unwrap();
    assert!(!out.join("checkpoint.new").exists());
    assert!(Bundle::load(&out).is_ok());
}

/// A learning rate that makes training collapse (every embedding zero) is named as such, not found out as a
/// centroid that is "not unit-norm (norm 0)" when the bundle is written.
#[test]
fn a_collapsed_network_is_named_as_such() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    data::make_dataset(&data);
    let out = d.path().join("b");
    let mut o = options(&data, &out, LossKind::SubclusterAdacos, 2);
    o.lr = 1e6;
    let e = err(fit(&o));
    assert!(
        e.contains("fan section 00: the network gives")
            && e.contains("training collapsed (a learning rate too high?)"),
        "{e}"
    );
    // The run leaves its checkpoint in --out, so the retry it suggests is one with --force (a plain retry is
    // refused, and --resume would continue the collapsed network).
    assert!(
        e.contains("lower --lr and --force (or another --out), not --resume"),
        "{e}"
    );
    assert!(!out.join("manifest.json").exists());
}

/// A training clip of digital silence (a muted input, a dropout): two among twenty doubled a section's calibrated
/// threshold without a word, while `import` leaves such clips out. `fit` and `baseline` refuse it, naming the
/// file; a silent test clip is scored as any other.
#[test]
fn a_training_clip_of_digital_silence_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    data::make_dataset(&data);
    let mut w = Writer::new(&data);
    let silent = w.write("fan", 0, Split::Test, Source, Normal, 200.0, "speed_1", 1);
    sonitor_core::audio::write_wav_i16(&silent[0], &vec![0.0; 16_000], 16_000).unwrap();
    let baseline = |out: &Path| {
        sonitor_train::baseline::run(&sonitor_train::baseline::BaselineArgs {
            data: data.clone(),
            out: out.to_path_buf(),
            json: false,
        })
    };
    baseline(&d.path().join("scores-ok")).unwrap();

    let silent = w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 1);
    // Below 16 bits' resolution counts as silence too (it is written as zeros).
    sonitor_core::audio::write_wav_i16(&silent[0], &vec![1e-6; 16_000], 16_000).unwrap();
    let name = silent[0].file_name().unwrap().to_string_lossy().to_string();
    let out = d.path().join("b");
    let e = err(fit(&options(&data, &out, LossKind::SubclusterAdacos, 1)));
    assert!(
        e.contains(&name) && e.contains("digital silence") && e.contains("Remove it from train/"),
        "{e}"
    );
    no_bundle(&out);
    let e = err(baseline(&d.path().join("scores")));
    assert!(e.contains(&name) && e.contains("digital silence"), "{e}");
}
