//! Training data: clips loaded into memory, random window crops, mixup of raw waveforms, and the feature
//! tensors of a batch (computed by the shared `sonitor_core::features`, never here).

use std::path::Path;

use anyhow::Context;
use rand::Rng;
use sha2::{Digest, Sha256};
use sonitor_core::audio::{load_mono, ChannelSelect};
use sonitor_core::dcase::{ClassMap, Clip, Condition, Dataset, Split};
use sonitor_core::features::{FeatureExtractor, FeatureParams, Features};
use sonitor_core::parallel;

/// A training clip in memory.
#[derive(Debug, Clone)]
pub struct TrainClip {
    pub audio: Vec<f32>,
    pub class: usize,
}

/// Loads clips (mono, resampled to the feature rate) on all cores. Errors name the file.
pub fn load_audio(clips: &[&Clip], params: &FeatureParams) -> anyhow::Result<Vec<Vec<f32>>> {
    parallel::map(clips, |c| load_clip(c, params))
}

/// The error of a clip shorter than one STFT frame (a header-only WAV has 0 samples): such a clip has no
/// spectrum to learn from or score, in any subcommand.
pub fn ensure_one_frame(path: &Path, samples: usize, params: &FeatureParams) -> anyhow::Result<()> {
    anyhow::ensure!(
        samples >= params.n_fft,
        "{}: too short ({samples} samples) for one STFT frame of {}",
        path.display(),
        params.n_fft
    );
    Ok(())
}

/// One clip, mono (channels mixed), resampled to the feature rate, at least one STFT frame long. The error names
/// the file: every audio error of `sonitor_core::audio` already starts with its path.
pub fn load_clip(clip: &Clip, params: &FeatureParams) -> anyhow::Result<Vec<f32>> {
    let audio = load_mono(&clip.path, ChannelSelect::Mix, params.sample_rate)?;
    ensure_one_frame(&clip.path, audio.len(), params)?;
    Ok(audio)
}

/// Loads the training clips with their class index.
pub fn load_train_clips(
    clips: &[&Clip],
    classes: &ClassMap,
    params: &FeatureParams,
) -> anyhow::Result<Vec<TrainClip>> {
    let audio = load_audio(clips, params)?;
    clips
        .iter()
        .zip(audio)
        .map(|(c, audio)| {
            let class = classes
                .index_of(c)
                .with_context(|| format!("{}: class not in the class map", c.path.display()))?;
            Ok(TrainClip { audio, class })
        })
        .collect()
}

/// sha256 over the clips' file names and contents (in the given order): the data set's identity in the bundle.
pub fn data_sha256(clips: &[&Clip]) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for c in clips {
        h.update(c.file_name().as_bytes());
        let bytes =
            std::fs::read(&c.path).with_context(|| format!("reading {}", c.path.display()))?;
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A random window of `len` samples; a shorter clip is repeated to length (never an error for short clips).
pub fn random_crop(audio: &[f32], len: usize, rng: &mut impl Rng) -> Vec<f32> {
    if audio.is_empty() {
        return vec![0.0; len];
    }
    if audio.len() >= len {
        let start = rng.gen_range(0..=audio.len() - len);
        audio[start..start + len].to_vec()
    } else {
        audio.iter().copied().cycle().take(len).collect()
    }
}

/// The analysis windows of a clip (start every `window_hop_samples`, each `window_samples` long); a clip shorter
/// than one window gives one window, repeated to length as in training.
pub fn windows(audio: &[f32], p: &FeatureParams) -> Vec<Vec<f32>> {
    let (w, hop) = (p.window_samples, p.window_hop_samples.max(1));
    if audio.len() < w {
        return vec![audio
            .iter()
            .copied()
            .cycle()
            .take(w)
            .chain(std::iter::repeat(0.0))
            .take(w)
            .collect()];
    }
    (0..=(audio.len() - w) / hop)
        .map(|i| audio[i * hop..i * hop + w].to_vec())
        .collect()
}

/// A batch of features and soft labels, row-major.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub size: usize,
    /// `[size, frames, n_mels]`.
    pub log_mel: Vec<f32>,
    /// `[size, spectrum_len]`.
    pub spectrum: Vec<f32>,
    /// `[size, n_classes]`.
    pub labels: Vec<f32>,
}

/// Builds a batch: a random crop of each clip, then (with `mixup`) each crop mixed with the crop of the reversed
/// batch, `λ·x_i + (1 − λ)·x_{B−1−i}` with λ ~ U(0, 1) per sample and the labels mixed alike; then the
/// features of every mixed window.
pub fn make_batch(
    clips: &[TrainClip],
    idx: &[usize],
    n_classes: usize,
    fx: &mut FeatureExtractor,
    mixup: bool,
    rng: &mut impl Rng,
) -> anyhow::Result<Batch> {
    let p = fx.params().clone();
    let crops: Vec<Vec<f32>> = idx
        .iter()
        .map(|&i| random_crop(&clips[i].audio, p.window_samples, rng))
        .collect();
    let n = idx.len();
    let mut labels = vec![0.0f32; n * n_classes];
    let mut mixed = crops.clone();
    for i in 0..n {
        let j = n - 1 - i;
        let lam: f32 = if mixup { rng.gen() } else { 1.0 };
        if mixup {
            for (m, (a, b)) in mixed[i].iter_mut().zip(crops[i].iter().zip(&crops[j])) {
                *m = lam * a + (1.0 - lam) * b;
            }
        }
        labels[i * n_classes + clips[idx[i]].class] += lam;
        labels[i * n_classes + clips[idx[j]].class] += 1.0 - lam;
    }
    let mut out = Features::default();
    let mut batch = Batch {
        size: n,
        labels,
        ..Default::default()
    };
    for w in &mixed {
        fx.extract_into(w, &mut out)?;
        batch.log_mel.extend_from_slice(&out.log_mel);
        batch.spectrum.extend_from_slice(&out.spectrum);
    }
    Ok(batch)
}

/// The training clips of a data set: every clip of a `train/` directory, refused when one is labelled anomalous
/// (DCASE's `train/` holds normal clips only; an anomaly there would be learned as normal).
pub fn train_clips(data: &Dataset) -> anyhow::Result<Vec<&Clip>> {
    let train: Vec<&Clip> = data
        .clips
        .iter()
        .filter(|c| c.split == Split::Train)
        .collect();
    let anomalous: Vec<&&Clip> = train
        .iter()
        .filter(|c| c.name.condition == Some(Condition::Anomaly))
        .collect();
    if let Some(first) = anomalous.first() {
        anyhow::bail!(
            "{}: an anomalous clip among the training clips ({} in all); train/ must hold normal clips only \
             (move anomalous clips to test/)",
            first.path.display(),
            anomalous.len()
        );
    }
    Ok(train)
}

/// Lists the `.wav` files under a directory (for error messages about empty data sets).
pub fn describe_empty(root: &Path) -> String {
    format!(
        "{}: no training clips found (expected <type>/train/section_SS_*.wav)",
        root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crops_and_windows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let a: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let c = random_crop(&a, 10, &mut rng);
        assert_eq!(c.len(), 10);
        assert_eq!(c[9] - c[0], 9.0);
        assert_eq!(
            random_crop(&a[..3], 7, &mut rng),
            vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]
        );
        let p = FeatureParams {
            window_samples: 40,
            window_hop_samples: 20,
            ..FeatureParams::default()
        };
        let w = windows(&a, &p);
        assert_eq!(w.len(), 4);
        assert_eq!(w[3][0], 60.0);
        assert_eq!(windows(&a[..10], &p).len(), 1);
    }

    #[test]
    fn mixup_mixes_labels_of_the_reversed_batch() {
        let p = FeatureParams {
            window_samples: 2048,
            window_hop_samples: 1024,
            n_mels: 16,
            ..FeatureParams::default()
        };
        let mut fx = FeatureExtractor::new(p).unwrap();
        let clips: Vec<TrainClip> = (0..3)
            .map(|k| TrainClip {
                audio: (0..4000)
                    .map(|i| ((i * (k + 1)) as f32 * 0.01).sin())
                    .collect(),
                class: k,
            })
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let b = make_batch(&clips, &[0, 1, 2], 3, &mut fx, true, &mut rng).unwrap();
        assert_eq!(b.log_mel.len(), 3 * 3 * 16);
        assert_eq!(b.spectrum.len(), 3 * 1024);
        for row in b.labels.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Sample 0 mixes classes 0 and 2; the middle sample is mixed with itself.
        assert_eq!(b.labels[1], 0.0);
        assert!((b.labels[4] - 1.0).abs() < 1e-6);
    }
}
