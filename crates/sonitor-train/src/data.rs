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
    pub audio: Pcm,
    pub class: usize,
}

/// A clip's samples in memory, as compact as is exact. `fit` holds every training clip for the whole run; a
/// 16-bit recording at the feature rate (DCASE's and most data sets' format) is kept as its 16-bit samples, half
/// the memory of `f32` (DCASE 2022's development set: 6.7 GB instead of 13.4), and read back as the very `f32`
/// values the decoder gave. Anything else (24-bit, float, channels mixed, resampled) stays `f32`.
#[derive(Debug, Clone, PartialEq)]
pub enum Pcm {
    /// Samples `k / 32768`, stored as `k`.
    I16(Vec<i16>),
    F32(Vec<f32>),
}

impl Pcm {
    /// `I16` when every sample is exactly `k / 32768` for a 16-bit `k`, else `F32`.
    pub fn new(samples: Vec<f32>) -> Pcm {
        let exact: Option<Vec<i16>> = samples
            .iter()
            .map(|&v| {
                let k = v * 32768.0;
                (k == k.round() && (-32768.0..=32767.0).contains(&k)).then_some(k as i16)
            })
            .collect();
        exact.map_or(Pcm::F32(samples), Pcm::I16)
    }

    pub fn len(&self) -> usize {
        match self {
            Pcm::I16(v) => v.len(),
            Pcm::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the samples take in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Pcm::I16(v) => v.len() * 2,
            Pcm::F32(v) => v.len() * 4,
        }
    }

    /// Samples `start..start + len` as `f32`.
    pub fn range(&self, start: usize, len: usize) -> Vec<f32> {
        match self {
            Pcm::I16(v) => v[start..start + len]
                .iter()
                .map(|&k| f32::from(k) / 32768.0)
                .collect(),
            Pcm::F32(v) => v[start..start + len].to_vec(),
        }
    }

    /// Every sample as `f32` (borrowed when stored so).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Pcm::I16(_) => std::borrow::Cow::Owned(self.range(0, self.len())),
            Pcm::F32(v) => std::borrow::Cow::Borrowed(v),
        }
    }
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

/// One clip, mono (channels mixed), resampled to the feature rate, at least one STFT frame long, and for a
/// training clip not digital silence. The error names the file: every audio error of `sonitor_core::audio` already
/// starts with its path.
pub fn load_clip(clip: &Clip, params: &FeatureParams) -> anyhow::Result<Vec<f32>> {
    let audio = load_mono(&clip.path, ChannelSelect::Mix, params.sample_rate)?;
    ensure_one_frame(&clip.path, audio.len(), params)?;
    // Two such clips among twenty doubled a section's calibrated threshold without a word (its normal scores'
    // spread grows), while `import` leaves them out: refused in train/, by every command that reads it.
    if clip.split == Split::Train && is_digital_silence(&audio) {
        anyhow::bail!(
            "{}: digital silence (every sample rounds to 0 in 16 bits): a muted input or a dropout, with nothing \
             of the machine to learn, and it would widen the section's threshold. Remove it from train/ \
             (`sonitor-train import` leaves such clips out)",
            clip.path.display()
        );
    }
    Ok(audio)
}

/// Whether every sample rounds to 0 as 16-bit PCM: what `import` leaves out as silence.
pub fn is_digital_silence(audio: &[f32]) -> bool {
    audio.iter().all(|&v| sonitor_core::audio::to_i16(v) == 0)
}

/// Loads the training clips (mono, resampled to the feature rate, each held as [`Pcm`] as soon as it is read) with
/// their class index, on all cores. Errors name the file.
pub fn load_train_clips(
    clips: &[&Clip],
    classes: &ClassMap,
    params: &FeatureParams,
) -> anyhow::Result<Vec<TrainClip>> {
    let audio = parallel::map(clips, |c| load_clip(c, params).map(Pcm::new))?;
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

/// What the training clips will take in memory once loaded as [`Pcm`], from their WAV headers alone (a header that
/// cannot be read counts as nothing: loading the clip names the problem).
pub fn audio_bytes_estimate(clips: &[&Clip], params: &FeatureParams) -> u64 {
    clips
        .iter()
        .filter_map(|c| sonitor_core::audio::read_wav_info(&c.path).ok())
        .map(|i| {
            let same_rate = i.sample_rate == params.sample_rate;
            let frames = if same_rate {
                i.frames
            } else {
                (i.frames as f64 * f64::from(params.sample_rate) / f64::from(i.sample_rate.max(1)))
                    .ceil() as u64
            };
            let exact_16_bit = same_rate && i.channels == 1 && i.bits_per_sample <= 16 && !i.float;
            frames * if exact_16_bit { 2 } else { 4 }
        })
        .sum()
}

/// Memory this process can still take: the kernel's `MemAvailable`, or less when a cgroup (a container, a
/// systemd unit's `MemoryMax`) allows less. `None` where neither can be read.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The warning `fit` prints before loading when the training audio alone would take more than 80% of the memory
/// available: better said up front than a run killed by the kernel minutes later without a word.
pub fn memory_warning(audio_bytes: u64, available: u64) -> Option<String> {
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    (audio_bytes > available / 10 * 8).then(|| {
        format!(
            "warning: the training audio takes about {:.1} GiB in memory and {:.1} GiB is available: the kernel \
             may stop fit for want of memory; train on fewer clips (a data directory with fewer machine types or \
             sections) or on a machine with more memory",
            gib(audio_bytes),
            gib(available)
        )
    })
}

/// The WAV headers of training clips, read once for the warnings `fit` prints of them before loading (a header that
/// cannot be read is left out: loading the clip names it).
pub struct Headers<'a> {
    /// How many clips were given.
    clips: usize,
    /// Each readable clip with its (channels, sample rate).
    read: Vec<(&'a Clip, u16, u32)>,
}

impl<'a> Headers<'a> {
    pub fn read(clips: &[&'a Clip]) -> Self {
        let read = clips
            .iter()
            .filter_map(|c| {
                let i = sonitor_core::audio::read_wav_info(&c.path).ok()?;
                Some((*c, i.channels, i.sample_rate))
            })
            .collect();
        Headers {
            clips: clips.len(),
            read,
        }
    }

    /// When training clips have more than one channel: `fit` learns their mix (the mean of the channels,
    /// [`load_clip`]), while the daemon scores one channel of its input (a machine's `channel`).
    pub fn multichannel_warning(&self) -> Option<String> {
        let multi: Vec<(&Clip, u16)> = self
            .read
            .iter()
            .filter(|(_, channels, _)| *channels > 1)
            .map(|&(c, channels, _)| (c, channels))
            .collect();
        let (first, channels) = multi.first()?;
        Some(format!(
            "warning: {} of {} training clips have more than one channel (e.g. {}: {channels}): fit learns the mean \
             of their channels, while the daemon scores one channel of its input (each machine's `channel`), which \
             hears the machine otherwise; take that channel with `sonitor-train import --channel N` and train on that",
            multi.len(),
            self.clips,
            first.path.display()
        ))
    }

    /// When training clips were recorded below the feature rate `rate`: upsampled, they have nothing above half
    /// their rate, a gap the model learns as normal (`import` and the daemon warn of the same; `fit` said nothing of
    /// an 8 kHz clip among 16 kHz ones: review25).
    pub fn low_rate_warning(&self, rate: u32) -> Option<String> {
        let low: Vec<(&Clip, u32)> = self
            .read
            .iter()
            .filter(|(_, _, r)| *r < rate)
            .map(|&(c, _, r)| (c, r))
            .collect();
        let (first, r) = low.first()?;
        Some(format!(
            "warning: {} of {} training clips were recorded below the features' {rate} Hz (e.g. {}: {r} Hz): \
             upsampled, they have nothing above {} Hz, which the machine's sound at the full rate has; the model \
             learns that gap as normal and may raise false alarms on it: record at {rate} Hz or more, or leave them \
             out",
            low.len(),
            self.clips,
            first.path.display(),
            r / 2
        ))
    }
}

/// Whether every attribute value the CSV gives `clip` is in its name: as whole `_`-separated words, in order
/// (`car_A1_spd_28V_mic_1` holds the values `A1`, `28V` and `1`, and also `car_A1_spd_28V_mic_1` given as one value).
fn name_agrees(clip: &Clip) -> bool {
    let words: Vec<&str> = clip.name.attributes.split('_').collect();
    clip.attribute_values.iter().all(|(_, value)| {
        let v: Vec<&str> = value.split('_').collect();
        value.is_empty() || words.windows(v.len()).any(|w| w == v.as_slice())
    })
}

/// What `fit` warns of in a data set's names and `attributes_SS.csv` files, one line each (review25 found each
/// passed without a word):
/// - clips whose attribute values in the CSV are not in their names ([`name_agrees`]): the CSV's make the class
///   labels, so a CSV edited or copied from another set changes the classes;
/// - clips of a machine type that has CSVs, listed in none: their names' attributes are used;
/// - CSV rows that name no clip of the type;
/// - clips whose names give the same section, domain, split, condition and number: a set merged twice.
pub fn naming_warnings(data: &Dataset) -> Vec<String> {
    let mut out = Vec::new();
    let shown = |c: &Clip| c.path.display().to_string();
    let differ: Vec<&Clip> = data
        .clips
        .iter()
        .filter(|c| !c.name.attributes.is_empty() && !name_agrees(c))
        .collect();
    if let Some(c) = differ.first() {
        out.push(format!(
            "warning: {} clip(s) have attribute values in their attributes_SS.csv that their names do not carry \
             (e.g. {}: `{}` in the CSV, `{}` in the name): the CSV's make the class labels; correct whichever is \
             wrong",
            differ.len(),
            shown(c),
            c.attribute_key(),
            c.name.attributes
        ));
    }
    for (machine_type, csv) in &data.attribute_rows {
        let clips: Vec<&Clip> = data
            .clips
            .iter()
            .filter(|c| c.machine_type == *machine_type)
            .collect();
        let unlisted: Vec<&&Clip> = clips
            .iter()
            .filter(|c| !csv.contains(c.file_name()))
            .collect();
        if let Some(c) = unlisted.first() {
            out.push(format!(
                "warning: {} of {machine_type}'s {} clip(s) are in none of its attributes_SS.csv files (e.g. {}): \
                 their names' attributes are used",
                unlisted.len(),
                clips.len(),
                shown(c)
            ));
        }
        let names: std::collections::HashSet<&str> = clips.iter().map(|c| c.file_name()).collect();
        let absent: Vec<&String> = csv.iter().filter(|k| !names.contains(k.as_str())).collect();
        if let Some(first) = absent.first() {
            out.push(format!(
                "warning: {machine_type}'s attributes_SS.csv files list {} file(s) that are not in {machine_type}/train \
                 or {machine_type}/test (e.g. {first}): clips missing from the data set, or a CSV of another one?",
                absent.len()
            ));
        }
    }
    let mut seen: std::collections::HashMap<_, &Clip> = std::collections::HashMap::new();
    let mut twice: Vec<(&Clip, &Clip)> = Vec::new();
    for c in &data.clips {
        let n = &c.name;
        let key = (
            c.machine_type.as_str(),
            n.section,
            n.domain,
            c.split,
            n.condition,
            n.index,
        );
        if let Some(other) = seen.insert(key, c) {
            twice.push((other, c));
        }
    }
    if let Some((a, b)) = twice.first() {
        out.push(format!(
            "warning: {} clip(s) have the section, domain, split, condition and number of another (e.g. {} and {}): \
             a data set merged twice? Each is used",
            twice.len(),
            shown(a),
            shown(b)
        ));
    }
    out
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
pub fn random_crop(audio: &Pcm, len: usize, rng: &mut impl Rng) -> Vec<f32> {
    if audio.is_empty() {
        return vec![0.0; len];
    }
    if audio.len() >= len {
        let start = rng.gen_range(0..=audio.len() - len);
        audio.range(start, len)
    } else {
        audio.to_f32().iter().copied().cycle().take(len).collect()
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
        let c = random_crop(&Pcm::new(a.clone()), 10, &mut rng);
        assert_eq!(c.len(), 10);
        assert_eq!(c[9] - c[0], 9.0);
        assert_eq!(
            random_crop(&Pcm::new(a[..3].to_vec()), 7, &mut rng),
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
    fn sixteen_bit_audio_is_held_in_half_the_memory_and_read_back_exactly() {
        // A 16-bit WAV decodes to k / 32768: held as k, read back bit for bit, in crops as in whole.
        let d = tempfile::tempdir().unwrap();
        let wav = d.path().join("a.wav");
        let pcm: Vec<f32> = (0..5000)
            .map(|i| ((i as f32 * 0.37).sin() * 0.9 * 32768.0).round() / 32768.0)
            .chain([-1.0, 32767.0 / 32768.0])
            .collect();
        sonitor_core::audio::write_wav_i16(&wav, &pcm, 16_000).unwrap();
        let decoded = load_mono(&wav, ChannelSelect::Mix, 16_000).unwrap();
        let held = Pcm::new(decoded.clone());
        assert!(matches!(held, Pcm::I16(_)));
        assert_eq!(held.bytes(), decoded.len() * 2);
        assert_eq!(held.to_f32().as_ref(), decoded.as_slice());
        assert_eq!(held.range(4000, 1002), decoded[4000..].to_vec());
        let (mut r1, mut r2) = (
            rand_chacha::ChaCha8Rng::seed_from_u64(3),
            rand_chacha::ChaCha8Rng::seed_from_u64(3),
        );
        let as_f32 = Pcm::F32(decoded.clone());
        for _ in 0..20 {
            assert_eq!(
                random_crop(&held, 1000, &mut r1),
                random_crop(&as_f32, 1000, &mut r2)
            );
        }
        // Anything that is not exactly 16-bit stays f32: resampled, mixed, or louder than full scale.
        for other in [vec![0.1f32, 0.2], vec![0.5, 1.0], vec![1.0 / 65536.0]] {
            assert_eq!(Pcm::new(other.clone()), Pcm::F32(other));
        }
    }

    #[test]
    fn the_memory_estimate_is_what_the_loaded_clips_take() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let p = FeatureParams::default();
        let sine =
            |n: usize| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.01).sin() * 0.5).collect() };
        let mut clips = Vec::new();
        // 16-bit mono at the feature rate (2 bytes a sample), stereo (mixed: f32) and 8 kHz (resampled: f32).
        for (rate, channels) in [(16_000, 1u16), (16_000, 2), (8_000, 1)] {
            let path = root.join(format!(
                "section_00_source_train_normal_000{}_x_1.wav",
                clips.len()
            ));
            let spec = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for v in sine(rate as usize / 2 * channels as usize) {
                w.write_sample((v * 32767.0) as i16).unwrap();
            }
            w.finalize().unwrap();
            clips.push(Clip {
                path: path.clone(),
                machine_type: "fan".into(),
                split: Split::Train,
                name: sonitor_core::dcase::ClipName::parse(
                    path.file_name().unwrap().to_str().unwrap(),
                )
                .unwrap(),
                attribute_values: Vec::new(),
            });
        }
        let refs: Vec<&Clip> = clips.iter().collect();
        let loaded: usize = refs
            .iter()
            .map(|c| Pcm::new(load_clip(c, &p).unwrap()).bytes())
            .sum();
        assert_eq!(audio_bytes_estimate(&refs, &p), loaded as u64);
        assert_eq!(loaded, 8000 * 2 + 8000 * 4 + 8000 * 4);
        assert!(memory_available().is_some_and(|b| b > 0));
        assert!(memory_warning(9 << 30, 10 << 30)
            .unwrap()
            .contains("9.0 GiB"));
        assert_eq!(memory_warning(7 << 30, 10 << 30), None);
        // The stereo clip (the second) is the one named.
        let w = Headers::read(&refs).multichannel_warning().unwrap();
        assert!(
            w.contains("1 of 3 training clips have more than one channel")
                && w.contains(&format!("{}: 2)", clips[1].path.display()))
                && w.contains("--channel N"),
            "{w}"
        );
        assert_eq!(
            Headers::read(&[refs[0], refs[2]]).multichannel_warning(),
            None
        );
        // The 8 kHz clip (the third) is named, with what it lacks.
        let w = Headers::read(&refs).low_rate_warning(16_000).unwrap();
        assert!(
            w.contains("1 of 3 training clips were recorded below the features' 16000 Hz")
                && w.contains(&format!("{}: 8000 Hz)", clips[2].path.display()))
                && w.contains("nothing above 4000 Hz"),
            "{w}"
        );
        assert_eq!(Headers::read(&refs[..2]).low_rate_warning(16_000), None);
    }

    /// A CSV that contradicts the names, rows naming no clip, a clip in no CSV and a number given twice: each one
    /// line, naming an example (the files' contents are not read).
    #[test]
    fn names_and_attribute_csvs_that_disagree_are_warned_of() {
        let d = tempfile::tempdir().unwrap();
        let train = d.path().join("pump/train");
        std::fs::create_dir_all(&train).unwrap();
        let names = [
            "section_00_source_train_normal_0000_flow_100.wav",
            "section_00_source_train_normal_0001_flow_50.wav",
            "section_00_source_train_normal_0002_flow_50.wav",
            "section_00_source_train_normal_0002_flow_70.wav",
        ];
        for n in names {
            std::fs::write(train.join(n), b"").unwrap();
        }
        std::fs::write(
            d.path().join("pump/attributes_00.csv"),
            format!(
                "file_name,d1p,d1v\ntrain/{},flow,70\ntrain/{},flow,50\ntrain/{},flow,50\n\
                 train/section_00_source_train_normal_0099_flow_50.wav,flow,50\n",
                names[0], names[1], names[2]
            ),
        )
        .unwrap();
        let data = sonitor_core::dcase::scan(d.path()).unwrap();
        let w = naming_warnings(&data);
        assert_eq!(w.len(), 4, "{w:#?}");
        let has = |parts: &[&str]| w.iter().any(|l| parts.iter().all(|p| l.contains(p)));
        assert!(
            has(&[
                "1 clip(s) have attribute values",
                names[0],
                "`flow_70` in the CSV, `flow_100` in the name"
            ]),
            "{w:#?}"
        );
        assert!(
            has(&["1 of pump's 4 clip(s) are in none", names[3]]),
            "{w:#?}"
        );
        assert!(
            has(&[
                "list 1 file(s) that are not in pump/train",
                "normal_0099_flow_50.wav"
            ]),
            "{w:#?}"
        );
        assert!(
            has(&["1 clip(s) have the section, domain", names[2], names[3]]),
            "{w:#?}"
        );
        // A set whose names and CSV agree, with no CSV row left over: nothing.
        std::fs::remove_file(train.join(names[3])).unwrap();
        std::fs::write(
            d.path().join("pump/attributes_00.csv"),
            format!(
                "file_name,d1p,d1v\ntrain/{},flow,100\ntrain/{},flow,50\ntrain/{},flow,50\n",
                names[0], names[1], names[2]
            ),
        )
        .unwrap();
        let data = sonitor_core::dcase::scan(d.path()).unwrap();
        assert_eq!(naming_warnings(&data), Vec::<String>::new());
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
                audio: Pcm::new(
                    (0..4000)
                        .map(|i| ((i * (k + 1)) as f32 * 0.01).sin())
                        .collect(),
                ),
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
