//! The trainer's bundle in the daemon (the model contract end to end): a bundle written by
//! `sonitor_train::train::fit` (tiny network, one epoch on a tiny synthetic factory) is accepted by
//! `sonitor validate`, and replaying a recording through `sonitor run` gives, window by window, the scores that
//! `sonitor-train eval` computes for the same audio: same features, same graph, same centroids; and again after
//! `sonitor-train combine --windows --bundle` has added the level baseline to the bundle.

mod common;

use std::time::Duration;

use sonitor_core::bundle::Bundle;
use sonitor_core::dcase::LabelGranularity;
use sonitor_core::features::FeatureExtractor;
use sonitor_train::eval::{embedder_of, window_scores};
use sonitor_train::loss::LossKind;
use sonitor_train::model::ModelConfig;
use sonitor_train::synth::{self, BackgroundChoice, MachineType, SynthConfig};
use sonitor_train::train::{fit, DeviceKind, FitOptions, TargetCentres};

#[test]
fn daemon_scores_equal_the_trainers_eval_on_a_fitted_bundle() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let cfg = SynthConfig {
        clip_seconds: 1.0,
        train_source: 12,
        train_target: 2,
        test_per_domain: 2,
        types: vec![MachineType::Pump, MachineType::Fan],
        background: BackgroundChoice::Synthetic,
        jobs: 1,
        ..SynthConfig::new(3)
    };
    synth::generate(&cfg, &data).unwrap();

    let features = common::test_features();
    let [frames, n_mels] = features.log_mel_shape();
    let bundle_dir = d.path().join("bundle");
    fit(&FitOptions {
        data: data.clone(),
        out: bundle_dir.clone(),
        epochs: 1,
        batch: 8,
        lr: 1e-3,
        seed: 2,
        loss: LossKind::SubclusterAdacos,
        labels: LabelGranularity::Attribute,
        device: DeviceKind::Cpu,
        resume: false,
        force: false,
        model: Some(ModelConfig::tiny(frames, n_mels, features.spectrum_len())),
        features: features.clone(),
        kmeans: 4,
        quantile: 0.9,
        target_centres: TargetCentres::Window,
        mixup: true,
        command: "trainer_bundle test".into(),
        progress: false,
        start: None,
    })
    .unwrap();

    // The recording: every pump test clip (normal and anomalous) back to back.
    let mut test_clips: Vec<_> = std::fs::read_dir(data.join("pump/test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    test_clips.sort();
    let mut audio = Vec::new();
    for c in &test_clips {
        audio.extend(
            sonitor_core::audio::read_wav(c, sonitor_core::audio::ChannelSelect::Mix)
                .unwrap()
                .1,
        );
    }
    let wav = d.path().join("pump.wav");
    common::write_wav(&wav, &audio);
    // What the daemon reads back from the 16-bit file.
    let (_, audio) =
        sonitor_core::audio::read_wav(&wav, sonitor_core::audio::ChannelSelect::Mix).unwrap();

    let alone = daemon_against_eval(d.path(), &bundle_dir, &wav, &audio, "alone");

    // The same bundle combined with the level baseline (`combine --windows --bundle`): the daemon scores its
    // windows as `eval` does, and not as the model alone did.
    let combined_dir = d.path().join("combined");
    sonitor_train::combine::run(&sonitor_train::combine::CombineArgs {
        model: bundle_dir.clone(),
        data: data.clone(),
        weight: 0.5,
        out: Some(d.path().join("combined-scores")),
        windows: true,
        json: false,
        bundle: Some(combined_dir.clone()),
        force: false,
    })
    .unwrap();
    let combined = Bundle::load(&combined_dir).unwrap();
    // Two target clips: the target mean has its offset, so the daemon's comparison with `eval` covers it.
    let offsets = &combined
        .section("pump", 0)
        .unwrap()
        .baseline
        .as_ref()
        .unwrap()
        .domain_offsets;
    assert!(offsets.len() == 2 && offsets[1] != 0.0, "{offsets:?}");
    let both = daemon_against_eval(d.path(), &combined_dir, &wav, &audio, "combined");
    let moved = max_abs_difference(&alone, &both);
    assert!(
        moved > 1e-3,
        "the baseline changed no score: {alone:?} {both:?}"
    );
}

/// Replays `wav` through `sonitor run` with `bundle_dir` and checks its window scores against `eval`'s window
/// scores of `audio` (what the daemon reads from `wav`). Returns `eval`'s scores.
fn daemon_against_eval(
    dir: &std::path::Path,
    bundle_dir: &std::path::Path,
    wav: &std::path::Path,
    audio: &[f32],
    what: &str,
) -> Vec<f64> {
    let bundle = Bundle::load(bundle_dir).unwrap();
    let section = bundle
        .section("pump", 0)
        .expect("pump section 00 in the bundle");
    let embedder = embedder_of(&bundle).unwrap();
    let mut fx = FeatureExtractor::new(bundle.manifest.features.clone()).unwrap();
    let want = window_scores(&embedder, &mut fx, audio, section).unwrap();
    assert!(want.len() >= 10, "{} windows", want.len());

    let run_dir = dir.join(format!("run-{what}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let cfg = common::offline_config(&run_dir, wav, bundle_dir, "");
    common::edit(&cfg, |t| {
        t.replace("log_level = \"info\"", "log_level = \"debug\"")
    });

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate refused the trainer's bundle ({what}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    // The start says whether the bundle's sections carry a baseline.
    assert_eq!(
        log.contains("scored with a level baseline too"),
        section.baseline.is_some(),
        "{what}: {log}"
    );
    // "score pump-1 t=500 ms: 0.1234"
    let got: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("score pump-1 t=").nth(1))
        .filter_map(|rest| rest.rsplit(": ").next())
        .map(|v| v.trim().parse::<f64>().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "window count ({what}); log:\n{log}");
    let worst = max_abs_difference(&got, &want);
    eprintln!(
        "{what}: {} windows, worst |daemon − eval| {worst:.2e} (the daemon logs 4 decimals)",
        got.len()
    );
    assert!(worst <= 1e-4, "{what}: daemon {got:?}\neval {want:?}");
    want
}

fn max_abs_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
