//! The model's input features: the **one** implementation, used by the trainer and the daemon alike.
//!
//! For one analysis window of `window_samples` mono samples at `sample_rate`:
//!
//! 1. **log-mel view** (the time–frequency branch): frames of `n_fft` samples every `stft_hop` samples, no
//!    padding (librosa's `center=False`), a periodic Hann window, magnitude |STFT| raised to `mel_power`, a
//!    Slaney-style mel filterbank (librosa's default: Slaney mel scale, Slaney area normalisation), then
//!    `ln(mel + log_floor)`, then the per-window temporal mean of every mel bin is subtracted. Shape
//!    `[frames, n_mels]`, row-major (frame after frame).
//! 2. **spectrum view** (the spectrum branch): |DFT| of the whole window, no window function, the first
//!    `window_samples / 2` bins. Shape `[window_samples / 2]`.
//!
//! Every parameter lives in [`FeatureParams`], which is serialised into the model bundle's manifest: a daemon
//! computes exactly what the model was trained on, or refuses to start.
//!
//! [`FeatureExtractor`] plans the FFTs and the filterbank once; [`FeatureExtractor::extract_into`] then runs
//! without allocating, so it can sit in the daemon's feature thread.

use realfft::RealFftPlanner;
use serde::{Deserialize, Serialize};

use crate::power_spectrum::PowerSpectrum;

/// All parameters of the features. Part of the model contract (the bundle manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureParams {
    /// Sample rate the model expects (Hz). Input at other rates is resampled first.
    pub sample_rate: u32,
    /// Length of one analysis window (samples): what one embedding sees.
    pub window_samples: usize,
    /// Step between consecutive analysis windows of a stream (samples).
    pub window_hop_samples: usize,
    /// STFT frame length (samples).
    pub n_fft: usize,
    /// STFT hop (samples).
    pub stft_hop: usize,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest mel-band edge (Hz).
    pub fmin_hz: f32,
    /// Highest mel-band edge (Hz), at most `sample_rate / 2`.
    pub fmax_hz: f32,
    /// Exponent of the STFT magnitude before the mel filterbank: 1 (magnitude) or 2 (power).
    pub mel_power: f32,
    /// Added before the logarithm: `ln(mel + log_floor)`.
    pub log_floor: f32,
}

impl Default for FeatureParams {
    /// The seed paper's front end (16 kHz, n_fft 1024, hop 512, Hann) on 2-second windows with a 1-second hop.
    fn default() -> Self {
        Self {
            sample_rate: 16_000,
            window_samples: 32_000,
            window_hop_samples: 16_000,
            n_fft: 1024,
            stft_hop: 512,
            n_mels: 128,
            fmin_hz: 0.0,
            fmax_hz: 8_000.0,
            mel_power: 1.0,
            log_floor: 1e-5,
        }
    }
}

/// The longest analysis window [`FeatureParams::validate`] accepts (seconds).
pub const MAX_WINDOW_SECONDS: f64 = 60.0;
/// The highest sample rate [`FeatureParams::validate`] accepts (Hz): what audio interfaces offer.
pub const MAX_SAMPLE_RATE: u32 = 384_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid feature parameters: {0}")]
pub struct FeatureParamsError(pub String);

impl FeatureParams {
    /// Checks that the parameters describe a computable feature; names the first bad value.
    pub fn validate(&self) -> Result<(), FeatureParamsError> {
        let bad = |m: String| Err(FeatureParamsError(m));
        if self.sample_rate == 0 || self.sample_rate > MAX_SAMPLE_RATE {
            return bad(format!(
                "sample_rate = {} must be in 1..={MAX_SAMPLE_RATE} Hz",
                self.sample_rate
            ));
        }
        if self.window_seconds() > MAX_WINDOW_SECONDS {
            return bad(format!(
                "window_samples = {} is {:.1} s at {} Hz; an analysis window must be at most {MAX_WINDOW_SECONDS} s \
                 (a longer one holds whole minutes of audio per embedding and its tensors do not fit an edge device)",
                self.window_samples,
                self.window_seconds(),
                self.sample_rate
            ));
        }
        if self.n_fft < 16 {
            return bad(format!("n_fft = {} is too small (at least 16)", self.n_fft));
        }
        if self.stft_hop == 0 {
            return bad("stft_hop must be positive".into());
        }
        if self.window_samples < self.n_fft {
            return bad(format!(
                "window_samples = {} is shorter than n_fft = {}",
                self.window_samples, self.n_fft
            ));
        }
        if self.window_hop_samples == 0 || self.window_hop_samples > self.window_samples {
            return bad(format!(
                "window_hop_samples = {} must be in 1..=window_samples ({})",
                self.window_hop_samples, self.window_samples
            ));
        }
        if self.n_mels == 0 || self.n_mels > self.n_fft / 2 {
            return bad(format!(
                "n_mels = {} must be in 1..={}",
                self.n_mels,
                self.n_fft / 2
            ));
        }
        let nyquist = self.sample_rate as f32 / 2.0;
        if !(self.fmin_hz >= 0.0 && self.fmin_hz < self.fmax_hz && self.fmax_hz <= nyquist) {
            return bad(format!(
                "need 0 <= fmin_hz ({}) < fmax_hz ({}) <= sample_rate/2 ({nyquist})",
                self.fmin_hz, self.fmax_hz
            ));
        }
        if !(self.mel_power == 1.0 || self.mel_power == 2.0) {
            return bad(format!("mel_power = {} must be 1 or 2", self.mel_power));
        }
        if !(self.log_floor > 0.0 && self.log_floor.is_finite()) {
            return bad(format!(
                "log_floor = {} must be a positive number",
                self.log_floor
            ));
        }
        Ok(())
    }

    /// STFT frames in a signal of `len` samples (no padding).
    pub fn frames_in(&self, len: usize) -> usize {
        if len < self.n_fft {
            0
        } else {
            1 + (len - self.n_fft) / self.stft_hop
        }
    }

    /// Shape of the log-mel view of one window: `[frames, n_mels]`.
    pub fn log_mel_shape(&self) -> [usize; 2] {
        [self.frames_in(self.window_samples), self.n_mels]
    }

    /// Length of the spectrum view of one window.
    pub fn spectrum_len(&self) -> usize {
        self.window_samples / 2
    }

    /// Window length in seconds.
    pub fn window_seconds(&self) -> f64 {
        self.window_samples as f64 / self.sample_rate as f64
    }

    /// How many mel bands, counted from the lowest, lie wholly at or below `hz`: those whose upper edge (where
    /// their triangle's weights reach zero) is at most `hz`.
    pub fn mel_bands_below(&self, hz: f64) -> usize {
        // Band i's upper edge is point i + 2.
        mel_points_hz(self)[2..]
            .iter()
            .take_while(|&&upper| upper <= hz * (1.0 + 1e-9))
            .count()
    }
}

/// The two feature views of one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// `[frames, n_mels]`, row-major, mean over frames subtracted per mel bin.
    pub log_mel: Vec<f32>,
    /// `[window_samples / 2]` magnitudes.
    pub spectrum: Vec<f32>,
    /// `[n_mels]`: the mean over frames of the log-mel **before** the mean subtraction (the means subtracted
    /// from `log_mel`), a summary of the window's spectral envelope that a bundle's level baseline scores
    /// ([`crate::score::Baseline`]).
    pub band_means: Vec<f64>,
}

/// Slaney mel scale (librosa `htk=False`).
fn hz_to_mel(f: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = (6.4f64).ln() / 27.0;
    if f >= MIN_LOG_HZ {
        min_log_mel + (f / MIN_LOG_HZ).ln() / logstep
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = (6.4f64).ln() / 27.0;
    if m >= min_log_mel {
        MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
    } else {
        F_SP * m
    }
}

/// One mel band as a run of non-zero weights over consecutive FFT bins (the filterbank is sparse: multiplying
/// by the dense matrix would spend ~95% of the work on zeros).
#[derive(Debug, Clone)]
struct MelBand {
    first_bin: usize,
    weights: Vec<f32>,
}

/// The `n_mels + 2` points (Hz) equally spaced on the mel scale from `fmin_hz` to `fmax_hz`: band `i` rises from
/// point `i`, peaks at `i + 1` and falls to zero at `i + 2`.
fn mel_points_hz(p: &FeatureParams) -> Vec<f64> {
    let (mmin, mmax) = (hz_to_mel(p.fmin_hz as f64), hz_to_mel(p.fmax_hz as f64));
    (0..p.n_mels + 2)
        .map(|i| mel_to_hz(mmin + (mmax - mmin) * i as f64 / (p.n_mels + 1) as f64))
        .collect()
}

/// The Slaney-normalised triangular mel filterbank of librosa (`librosa.filters.mel`, `htk=False`,
/// `norm="slaney"`), computed in f64 and stored in f32 as librosa does.
fn mel_filterbank(p: &FeatureParams) -> Vec<MelBand> {
    let n_bins = p.n_fft / 2 + 1;
    let sr = p.sample_rate as f64;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|k| k as f64 * sr / p.n_fft as f64)
        .collect();
    let mel_f = mel_points_hz(p);
    (0..p.n_mels)
        .map(|i| {
            let (lo, mid, hi) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
            let enorm = 2.0 / (hi - lo);
            let w: Vec<f32> = fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - lo) / (mid - lo);
                    let upper = (hi - f) / (hi - mid);
                    (lower.min(upper).max(0.0) * enorm) as f32
                })
                .collect();
            let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
            let last = w.iter().rposition(|&v| v > 0.0).map_or(first, |l| l + 1);
            MelBand {
                first_bin: first,
                weights: w[first..last].to_vec(),
            }
        })
        .collect()
}

/// Frames whose mel energies are computed together, one per vector lane: the filterbank's weights are then
/// applied to eight frames with one vector multiply-add instead of eight scalar ones.
const LANES: usize = 8;

/// The STFT's window: a periodic Hann of `n` points (scipy `get_window("hann", n, fftbins=True)`, librosa's
/// default), computed in f64.
pub fn periodic_hann(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
        .collect()
}

/// Computes [`Features`] for windows of a fixed length; plans everything once.
pub struct FeatureExtractor {
    params: FeatureParams,
    stft: PowerSpectrum,
    whole: PowerSpectrum,
    hann: Vec<f32>,
    bands: Vec<MelBand>,
    /// |STFT| of up to [`LANES`] frames, bin-major: `mag[k][l]` is bin `k` of the group's frame `l`.
    mag: Vec<[f32; LANES]>,
    /// |STFT| of one frame.
    line: Vec<f32>,
    /// |DFT|² of the whole window.
    whole_power: Vec<f32>,
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("params", &self.params)
            .finish()
    }
}

impl FeatureExtractor {
    pub fn new(params: FeatureParams) -> Result<Self, FeatureParamsError> {
        params.validate()?;
        let mut planner = RealFftPlanner::<f32>::new();
        let stft = PowerSpectrum::new(params.n_fft, &mut planner);
        let whole = PowerSpectrum::new(params.window_samples, &mut planner);
        let n = params.n_fft;
        let hann = periodic_hann(n);
        Ok(Self {
            bands: mel_filterbank(&params),
            mag: vec![[0.0; LANES]; n / 2 + 1],
            line: vec![0.0; n / 2 + 1],
            whole_power: vec![0.0; params.window_samples / 2 + 1],
            stft,
            whole,
            hann,
            params,
        })
    }

    pub fn params(&self) -> &FeatureParams {
        &self.params
    }

    /// A [`Features`] value with buffers of the right size, to reuse with [`Self::extract_into`].
    pub fn new_output(&self) -> Features {
        Features {
            log_mel: vec![0.0; self.params.log_mel_shape().iter().product()],
            spectrum: vec![0.0; self.params.spectrum_len()],
            band_means: vec![0.0; self.params.n_mels],
        }
    }

    /// Log-mel frames of a signal of any length (at least `n_fft`), **without** mean subtraction, appended
    /// to `out` as `[frames, n_mels]` row-major. Returns the number of frames.
    pub fn log_mel_frames(&mut self, signal: &[f32], out: &mut Vec<f32>) -> usize {
        let frames = self.params.frames_in(signal.len());
        let base = out.len();
        out.resize(base + frames * self.params.n_mels, 0.0);
        self.log_mel_into(signal, frames, &mut out[base..]);
        frames
    }

    /// `ln(mel + log_floor)` of the first `frames` frames of `signal` into `out` (`frames * n_mels` values,
    /// row-major). The frames go through the filterbank [`LANES`] at a time; each band's sum runs over its bins
    /// in the same order as a scalar loop would, so the energies do not depend on the grouping.
    fn log_mel_into(&mut self, signal: &[f32], frames: usize, out: &mut [f32]) {
        let (hop, n_fft, n_mels) = (self.params.stft_hop, self.params.n_fft, self.params.n_mels);
        let mut t0 = 0;
        while t0 < frames {
            let n = (frames - t0).min(LANES);
            for l in 0..n {
                let start = (t0 + l) * hop;
                self.magnitudes_into_lane(&signal[start..start + n_fft], l);
            }
            // Lanes n.. of the last group hold an earlier group's magnitudes: summed, then not written.
            for (b, band) in self.bands.iter().enumerate() {
                let mut acc = [0f32; LANES];
                for (bin, &w) in self.mag[band.first_bin..].iter().zip(&band.weights) {
                    for (a, &v) in acc.iter_mut().zip(bin) {
                        *a += w * v;
                    }
                }
                for (l, &e) in acc.iter().enumerate().take(n) {
                    out[(t0 + l) * n_mels + b] = e;
                }
            }
            t0 += n;
        }
        ln_plus_in_place(&mut out[..frames * n_mels], self.params.log_floor);
    }

    /// |STFT|^`mel_power` of one frame of `n_fft` samples into lane `lane` of `mag`.
    fn magnitudes_into_lane(&mut self, samples: &[f32], lane: usize) {
        self.stft.process(samples, Some(&self.hann), &mut self.line);
        // Contiguous first (the square roots vectorise), then into the frame's lane.
        if self.params.mel_power != 2.0 {
            for m in self.line.iter_mut() {
                *m = m.sqrt();
            }
        }
        for (m, &v) in self.mag.iter_mut().zip(&self.line) {
            m[lane] = v;
        }
    }

    /// Both views of one window of exactly `window_samples` samples, written into `out` (see
    /// [`Self::new_output`]). Does not allocate.
    ///
    /// Returns an error (and leaves `out` untouched) when the window has the wrong length.
    pub fn extract_into(
        &mut self,
        window: &[f32],
        out: &mut Features,
    ) -> Result<(), FeatureParamsError> {
        let p = &self.params;
        if window.len() != p.window_samples {
            return Err(FeatureParamsError(format!(
                "window has {} samples, the features expect {}",
                window.len(),
                p.window_samples
            )));
        }
        let [frames, n_mels] = p.log_mel_shape();
        out.log_mel.resize(frames * n_mels, 0.0);
        out.spectrum.resize(p.spectrum_len(), 0.0);
        self.log_mel_into(window, frames, &mut out.log_mel);
        out.band_means.resize(n_mels, 0.0);
        subtract_temporal_mean(&mut out.log_mel, &mut out.band_means);

        self.whole.process(window, None, &mut self.whole_power);
        for (o, &p) in out.spectrum.iter_mut().zip(&self.whole_power) {
            *o = p.sqrt();
        }
        Ok(())
    }

    /// Allocating convenience wrapper around [`Self::extract_into`].
    pub fn extract(&mut self, window: &[f32]) -> Result<Features, FeatureParamsError> {
        let mut out = self.new_output();
        self.extract_into(window, &mut out)?;
        Ok(out)
    }
}

/// Subtracts from each column (mel bin) of a row-major `[frames, n_mels]` matrix its mean over the frames, and
/// leaves the means in `means` (`n_mels` values). The means are summed in f64, frame after frame.
fn subtract_temporal_mean(matrix: &mut [f32], means: &mut [f64]) {
    let n_mels = means.len();
    let frames = matrix.len() / n_mels.max(1);
    if frames == 0 {
        return;
    }
    means.fill(0.0);
    for row in matrix.chunks_exact(n_mels) {
        for (s, &v) in means.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    for s in means.iter_mut() {
        *s /= frames as f64;
    }
    for row in matrix.chunks_exact_mut(n_mels) {
        for (v, &mean) in row.iter_mut().zip(means.iter()) {
            *v -= mean as f32;
        }
    }
}

/// `x ← ln(x + floor)` for every element, in groups of [`LANES`] (then the remainder): see [`ln_plus_group`].
fn ln_plus_in_place(xs: &mut [f32], floor: f32) {
    let mut groups = xs.chunks_exact_mut(LANES);
    for g in &mut groups {
        ln_plus_group(g, floor);
    }
    ln_plus_group(groups.into_remainder(), floor);
}

/// `x ← ln(x + floor)` for a few values through [`ln_normal`], which the compiler vectorises when the group's
/// length is the constant [`LANES`]; a group with a value that is not a positive normal finite number (from NaN
/// or infinite audio) takes `f32::ln` instead, so those keep their IEEE results.
#[inline(always)]
fn ln_plus_group(g: &mut [f32], floor: f32) {
    g.iter_mut().for_each(|x| *x += floor);
    let normal = g.iter().fold(true, |ok, x| {
        ok & (f32::MIN_POSITIVE..f32::INFINITY).contains(x)
    });
    if normal {
        g.iter_mut().for_each(|x| *x = ln_normal(*x));
    } else {
        g.iter_mut().for_each(|x| *x = x.ln());
    }
}

/// Natural logarithm of a positive, normal, finite `f32`, without branches: Cephes' `logf` (S. L. Moshier),
/// `x = m·2^e` with `m ∈ [√½, √2)`, then a degree-9 polynomial in `m − 1`. Within 1 ulp of the correctly
/// rounded result (tested against f64 below); glibc's `logf` is a library call the compiler cannot vectorise.
#[inline(always)]
fn ln_normal(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // in [0.5, 1)
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = (e - i32::from(small)) as f32;
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2_f32;
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        y = y * f + c;
    }
    y *= f * z;
    y += -2.121_944_4e-4 * e;
    y += -0.5 * z;
    (f + y) + (355.0 / 512.0) * e // ln 2 split: 355/512 exactly, plus the term above
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> FeatureParams {
        FeatureParams {
            window_samples: 4096,
            window_hop_samples: 2048,
            n_mels: 32,
            ..FeatureParams::default()
        }
    }

    #[test]
    fn mel_scale_round_trips() {
        for f in [0.0, 100.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-9);
        }
    }

    #[test]
    fn shapes_follow_params() {
        let p = FeatureParams::default();
        assert_eq!(p.log_mel_shape(), [61, 128]);
        assert_eq!(p.spectrum_len(), 16_000);
        let mut fx = FeatureExtractor::new(small()).unwrap();
        let f = fx.extract(&vec![0.1; 4096]).unwrap();
        assert_eq!(f.log_mel.len(), 7 * 32);
        assert_eq!(f.spectrum.len(), 2048);
    }

    #[test]
    fn temporal_mean_is_removed() {
        let mut fx = FeatureExtractor::new(small()).unwrap();
        let x: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let f = fx.extract(&x).unwrap();
        for m in 0..32 {
            let mean: f32 = (0..7).map(|t| f.log_mel[t * 32 + m]).sum::<f32>() / 7.0;
            assert!(mean.abs() < 1e-5, "bin {m} mean {mean}");
        }
        // The means it removed are the band means, those of the raw log-mel frames.
        let mut raw = Vec::new();
        assert_eq!(fx.log_mel_frames(&x, &mut raw), 7);
        for m in 0..32 {
            let mean = (0..7).map(|t| raw[t * 32 + m] as f64).sum::<f64>() / 7.0;
            assert!((f.band_means[m] - mean).abs() < 1e-9, "bin {m}");
        }
    }

    #[test]
    fn a_tone_lands_in_its_mel_band_and_spectrum_bin() {
        let p = small();
        let mut fx = FeatureExtractor::new(p.clone()).unwrap();
        let f0 = 2000.0;
        let x: Vec<f32> = (0..4096)
            .map(|i| (2.0 * std::f32::consts::PI * f0 * i as f32 / 16_000.0).sin())
            .collect();
        let mut raw = Vec::new();
        fx.log_mel_frames(&x, &mut raw);
        let loudest = (0..32).max_by(|&a, &b| raw[a].total_cmp(&raw[b])).unwrap();
        let centre = mel_to_hz(hz_to_mel(0.0) + (hz_to_mel(8000.0)) * (loudest + 1) as f64 / 33.0);
        assert!(
            (centre - f0 as f64).abs() < 250.0,
            "band {loudest} centred at {centre}"
        );
        let spec = fx.extract(&x).unwrap().spectrum;
        let peak = (0..spec.len())
            .max_by(|&a, &b| spec[a].total_cmp(&spec[b]))
            .unwrap();
        assert_eq!(peak, 512, "2 kHz is bin 2000 * 4096 / 16000");
    }

    /// The straightforward per-frame computation (f64 logarithm) the grouped one must equal.
    fn naive_log_mel(fx: &FeatureExtractor, signal: &[f32]) -> Vec<f32> {
        let p = fx.params().clone();
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(p.n_fft);
        let mut out = Vec::new();
        for t in 0..p.frames_in(signal.len()) {
            let mut frame: Vec<f32> = signal[t * p.stft_hop..t * p.stft_hop + p.n_fft]
                .iter()
                .zip(&fx.hann)
                .map(|(x, w)| x * w)
                .collect();
            let mut spec = fft.make_output_vec();
            fft.process(&mut frame, &mut spec).unwrap();
            for band in &fx.bands {
                let e: f32 = band
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * spec[band.first_bin + j].norm())
                    .sum();
                out.push(((e + p.log_floor) as f64).ln() as f32);
            }
        }
        out
    }

    #[test]
    fn frames_in_groups_equal_the_per_frame_computation() {
        // 7 and 21 frames: a group of eight is never full, or the last one is not.
        for len in [4096, 11_264] {
            let mut fx = FeatureExtractor::new(small()).unwrap();
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 211) as f32 / 211.0 - 0.5 + (i as f32 * 0.03).sin())
                .collect();
            let mut grouped = Vec::new();
            let frames = fx.log_mel_frames(&x, &mut grouped);
            let naive = naive_log_mel(&fx, &x);
            assert_eq!(grouped.len(), frames * 32);
            assert_eq!(naive.len(), grouped.len());
            let worst = grouped
                .iter()
                .zip(&naive)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{frames} frames: max |Δ| {worst}");
        }
    }

    #[test]
    fn the_vectorised_logarithm_is_within_one_ulp() {
        let mut x = 1e-30f32;
        let mut worst_ulp = 0f64;
        while x < 1e30 {
            for v in [x, x * 1.000_001, x * 1.37, x * 0.999_999] {
                let got = ln_normal(v) as f64;
                let want = (v as f64).ln();
                let ulp = ((want as f32).abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
                worst_ulp = worst_ulp.max((got - want).abs() / ulp);
            }
            x *= 1.013;
        }
        assert!(worst_ulp <= 1.0, "worst error {worst_ulp} ulp");
        assert_eq!(ln_normal(1.0), 0.0);
    }

    #[test]
    fn the_logarithm_keeps_ieee_results_for_odd_values() {
        let mut xs = [
            1.0,
            2.0,
            0.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            1e-40,
            3.0,
            4.0,
            0.5,
        ];
        ln_plus_in_place(&mut xs, 0.0);
        assert_eq!(xs[0], 0.0);
        assert!((xs[1] - std::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(xs[2], f32::NEG_INFINITY);
        assert!(xs[3].is_nan() && xs[4].is_nan());
        assert_eq!(xs[5], f32::INFINITY);
        assert!((xs[6] as f64 - (1e-40f32 as f64).ln()).abs() < 1e-4);
        assert!((xs[9] + std::f32::consts::LN_2).abs() < 1e-7);
    }

    #[test]
    fn bad_params_are_named() {
        let p = FeatureParams {
            fmax_hz: 9000.0,
            ..FeatureParams::default()
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("fmax_hz"), "{e}");
        let p = FeatureParams {
            window_samples: 100,
            ..FeatureParams::default()
        };
        assert!(FeatureExtractor::new(p).is_err());
        // An absurd window (a manifest's typo, or a graph without shapes that would take any) is refused with
        // its length in seconds and the limit.
        let p = FeatureParams {
            window_samples: 16_000 * 61,
            ..FeatureParams::default()
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(
            e.contains("window_samples = 976000 is 61.0 s") && e.contains("at most 60 s"),
            "{e}"
        );
        let p = FeatureParams {
            window_samples: 16_000 * 60,
            ..FeatureParams::default()
        };
        p.validate().unwrap();
        let p = FeatureParams {
            sample_rate: u32::MAX,
            fmax_hz: 8_000.0,
            ..FeatureParams::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sample_rate"));
    }

    #[test]
    fn wrong_window_length_is_an_error() {
        let mut fx = FeatureExtractor::new(small()).unwrap();
        assert!(fx.extract(&[0.0; 100]).is_err());
    }

    #[test]
    fn params_round_trip_through_json() {
        let p = FeatureParams::default();
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<FeatureParams>(&s).unwrap(), p);
        assert!(serde_json::from_str::<FeatureParams>(&s.replace("n_mels", "n_mel")).is_err());
    }
}
