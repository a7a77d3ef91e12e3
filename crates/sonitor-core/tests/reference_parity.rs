//! Parity with the reference implementations a reviewer trusts: librosa for the features, scikit-learn for the
//! metrics, libsndfile for the RF64 files it writes. The reference values are computed at test time by the scripts in `scripts/reference/` (CI installs
//! their requirements), never pasted by hand.
//!
//! Interpreter: see `tests/support/reference.rs`.

use sonitor_core::audio::{read_wav, read_wav_info, ChannelSelect};
use sonitor_core::features::{FeatureExtractor, FeatureParams};
use sonitor_core::metrics::{partial_roc_auc, roc_auc};

mod support {
    pub mod reference;
}
use support::reference::{run_reference, workspace};

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn flatten(rows: &serde_json::Value) -> Vec<f64> {
    rows.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect()
}

/// Log-mel within 1e-4 (natural-log units, i.e. 0.0004 dB; measured: under 4e-6) of librosa on real recordings, for magnitude and power
/// mel spectra; the spectrum view within 1e-4 relative to its peak.
#[test]
fn log_mel_matches_librosa_on_real_audio() {
    let dir = tempfile::tempdir().unwrap();
    for (clip, power) in [
        ("pump_normal.wav", 1.0),
        ("fan_abnormal.wav", 2.0),
        ("valve_normal.wav", 1.0),
    ] {
        let wav = workspace().join("tests/fixtures/mimii").join(clip);
        let params = FeatureParams {
            mel_power: power,
            ..FeatureParams::default()
        };
        let params_path = dir.path().join("params.json");
        std::fs::write(&params_path, serde_json::to_string(&params).unwrap()).unwrap();
        let out_path = dir.path().join("ref.json");
        run_reference("librosa_logmel.py", [&wav, &params_path, &out_path]);
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();

        let (_, audio) = read_wav(&wav, ChannelSelect::Mix).unwrap();
        let mut fx = FeatureExtractor::new(params.clone()).unwrap();
        let mut raw = Vec::new();
        let frames = fx.log_mel_frames(&audio, &mut raw);
        let ref_raw = flatten(&reference["log_mel"]);
        assert_eq!(frames * params.n_mels, ref_raw.len(), "{clip}: frame count");
        let d_raw = max_abs_diff(&raw, &ref_raw);

        let f = fx.extract(&audio[..params.window_samples]).unwrap();
        let d_win = max_abs_diff(&f.log_mel, &flatten(&reference["window_log_mel"]));
        let ref_spec: Vec<f64> = reference["window_spectrum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let peak = ref_spec.iter().cloned().fold(0.0, f64::max);
        let d_spec = max_abs_diff(&f.spectrum, &ref_spec) / peak;
        println!(
            "{clip} (power {power}, librosa {}): max |Δ log-mel| = {d_raw:.2e}, window (mean-subtracted) {d_win:.2e}, spectrum {d_spec:.2e} of peak",
            reference["librosa_version"]
        );
        assert!(
            d_raw < 1e-4,
            "{clip}: log-mel differs from librosa by {d_raw}"
        );
        assert!(
            d_win < 1e-4,
            "{clip}: mean-subtracted log-mel differs by {d_win}"
        );
        assert!(
            d_spec < 1e-4,
            "{clip}: spectrum differs by {d_spec} of its peak"
        );
    }
}

/// AUC and McClish pAUC equal scikit-learn's `roc_auc_score` to 1e-9 on random data with and without ties.
#[test]
fn metrics_match_scikit_learn() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("auc.json");
    run_reference("sklearn_auc.py", [&out_path]);
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 100);
    let (mut worst_auc, mut worst_pauc) = (0.0f64, 0.0f64);
    for (i, c) in cases.iter().enumerate() {
        let labels: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        let scores: Vec<f64> = c["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let auc = roc_auc(&labels, &scores).unwrap();
        let pauc = partial_roc_auc(&labels, &scores, 0.1).unwrap();
        let (ra, rp) = (c["auc"].as_f64().unwrap(), c["pauc"].as_f64().unwrap());
        worst_auc = worst_auc.max((auc - ra).abs());
        worst_pauc = worst_pauc.max((pauc - rp).abs());
        assert!(
            (auc - ra).abs() < 1e-9,
            "case {i}: AUC {auc} vs scikit-learn {ra}"
        );
        assert!(
            (pauc - rp).abs() < 1e-9,
            "case {i}: pAUC {pauc} vs scikit-learn {rp}"
        );
    }
    println!(
        "{} cases, scikit-learn {}: max |Δ AUC| = {worst_auc:.1e}, max |Δ pAUC| = {worst_pauc:.1e}",
        cases.len(),
        reference["sklearn_version"]
    );
}

/// RF64 files written by another producer than this repository's tests (libsndfile, through soundfile: 0xFFFFFFFF
/// in the data chunk's header, the length in the ds64 chunk) read as libsndfile reads them, for every sample type
/// both support.
#[test]
fn rf64_files_written_by_libsndfile_read_as_libsndfile_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    run_reference("libsndfile_rf64.py", [dir.path()]);
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("rf64.json")).unwrap()).unwrap();
    let files = reference["files"].as_array().unwrap();
    assert_eq!(files.len(), 6);
    for file in files {
        let name = file["name"].as_str().unwrap();
        let path = dir.path().join(name);
        assert_eq!(&std::fs::read(&path).unwrap()[..4], b"RF64", "{name}");
        let info = read_wav_info(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                u64::from(info.sample_rate),
                u64::from(info.channels),
                info.frames
            ),
            (
                file["rate"].as_u64().unwrap(),
                file["channels"].as_u64().unwrap(),
                file["frames"].as_u64().unwrap()
            ),
            "{name}"
        );
        let expected: Vec<f64> = file["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for channel in 0..info.channels {
            let (_, samples) = read_wav(&path, ChannelSelect::Index(channel)).unwrap();
            let of_channel: Vec<f64> = expected
                .iter()
                .skip(usize::from(channel))
                .step_by(usize::from(info.channels))
                .copied()
                .collect();
            let d = max_abs_diff(&samples, &of_channel);
            assert!(
                d < 1e-7,
                "{name}, channel {channel}: differs from libsndfile by {d}"
            );
        }
    }
}
