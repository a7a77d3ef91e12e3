//! Tiny generated data sets in the DCASE layout and the `fit` options of the tests (`fit_eval.rs`,
//! `fit_refusals.rs`): tones per attribute value; anomalies add a high tone and crackle.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sonitor_core::audio::write_wav_i16;
use sonitor_core::dcase::{ClipName, Condition, Domain, LabelGranularity, Split};
use sonitor_core::features::FeatureParams;
use sonitor_train::loss::LossKind;
use sonitor_train::model::ModelConfig;
use sonitor_train::prune::{Criterion, PruneArgs};
use sonitor_train::train::{DeviceKind, FitOptions, TargetCentres};

pub const SAMPLE_RATE: usize = 16_000;

/// Writes clips of `seconds` (1 s by default) under `root`, numbered in order, from one seeded generator.
pub struct Writer {
    root: PathBuf,
    rng: ChaCha8Rng,
    idx: u32,
    pub seconds: f32,
}

impl Writer {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            rng: ChaCha8Rng::seed_from_u64(11),
            idx: 0,
            seconds: 1.0,
        }
    }

    fn clip(&mut self, f0: f32, anomaly: bool) -> Vec<f32> {
        let rng = &mut self.rng;
        let phase: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let n = (self.seconds * SAMPLE_RATE as f32) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                let mut x = 0.3 * (std::f32::consts::TAU * f0 * t + phase).sin()
                    + 0.15 * (std::f32::consts::TAU * 2.0 * f0 * t).sin();
                x += 0.05 * rng.gen_range(-1.0f32..1.0);
                if anomaly {
                    x += 0.2 * (std::f32::consts::TAU * 3100.0 * t).sin();
                    if rng.gen_range(0.0..1.0) < 0.01 {
                        x += rng.gen_range(-0.5..0.5);
                    }
                }
                x
            })
            .collect()
    }

    /// `n` clips of `machine` section `section` around `f0` Hz; returns their paths.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        machine: &str,
        section: u16,
        split: Split,
        domain: Domain,
        cond: Condition,
        f0: f32,
        attr: &str,
        n: usize,
    ) -> Vec<PathBuf> {
        let dir = self.root.join(machine).join(split.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        (0..n)
            .map(|_| {
                let name = ClipName::format(section, domain, split, cond, self.idx, attr);
                self.idx += 1;
                let f = f0 + self.rng.gen_range(-5.0..5.0);
                let a = self.clip(f, cond == Condition::Anomaly);
                let path = dir.join(name);
                write_wav_i16(&path, &a, SAMPLE_RATE as u32).unwrap();
                path
            })
            .collect()
    }

    /// Test clips of a section: 4 normal and 4 anomalous per domain.
    pub fn test_clips(&mut self, machine: &str, section: u16, f_source: f32, f_target: f32) {
        use Condition::{Anomaly, Normal};
        use Domain::{Source, Target};
        for (domain, f0, attr) in [(Source, f_source, "speed_1"), (Target, f_target, "speed_3")] {
            for cond in [Normal, Anomaly] {
                self.write(machine, section, Split::Test, domain, cond, f0, attr, 4);
            }
        }
    }
}

/// One machine type (fan), one section, three attribute values (16 source, 3 target training clips of 1 s).
pub fn make_dataset(root: &Path) {
    use Condition::Normal;
    use Domain::{Source, Target};
    let mut w = Writer::new(root);
    w.write("fan", 0, Split::Train, Source, Normal, 200.0, "speed_1", 8);
    w.write("fan", 0, Split::Train, Source, Normal, 300.0, "speed_2", 8);
    w.write("fan", 0, Split::Train, Target, Normal, 450.0, "speed_3", 3);
    w.test_clips("fan", 0, 200.0, 450.0);
}

/// Short windows (4096 samples, no overlap: 3 per 1-s clip) and 32 mel bands.
pub fn features() -> FeatureParams {
    FeatureParams {
        window_samples: 4096,
        window_hop_samples: 4096,
        n_mels: 32,
        ..FeatureParams::default()
    }
}

/// The tiny network on [`features`], batch 8, k-means 4, seed 5.
pub fn options(data: &Path, out: &Path, loss: LossKind, epochs: usize) -> FitOptions {
    let f = features();
    let [frames, n_mels] = f.log_mel_shape();
    FitOptions {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs,
        batch: 8,
        lr: 1e-3,
        seed: 5,
        loss,
        labels: LabelGranularity::Attribute,
        device: DeviceKind::Cpu,
        resume: false,
        force: false,
        model: Some(ModelConfig::tiny(frames, n_mels, f.spectrum_len())),
        features: f,
        kmeans: 4,
        quantile: 0.9,
        target_centres: TargetCentres::Window,
        mixup: true,
        command: "test".into(),
        progress: false,
        start: None,
    }
}

/// `prune` of `model` into `out` to half the channels, one fine-tuning epoch of batch 8, on the provenance's data
/// set (`data: None`) and the bundle's quantile.
pub fn prune_args(model: &Path, out: &Path) -> PruneArgs {
    PruneArgs {
        model: model.to_path_buf(),
        data: None,
        out: out.to_path_buf(),
        force: false,
        keep: 0.5,
        criterion: Criterion::BnScale,
        epochs: 1,
        batch: 8,
        lr: 5e-4,
        device: DeviceKind::Cpu,
        quantile: None,
    }
}

/// A temporary directory with the tiny data set in `data/` and a bundle fitted on it (sub-cluster AdaCos, one
/// epoch) in `b/`: (the directory, data, bundle).
pub fn data_and_bundle() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    make_dataset(&data);
    let out = d.path().join("b");
    sonitor_train::train::fit(&options(&data, &out, LossKind::SubclusterAdacos, 1)).unwrap();
    (d, data, out)
}
