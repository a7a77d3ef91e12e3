//! Scoring an embedding against a section's centroids: the anomaly score is the smallest cosine distance
//! (1 − cos) between the unit-normalised embedding and the section's (unit-norm) centroids. Shared by the
//! trainer's evaluation and the daemon so that both compute the same number.
//!
//! A section may also carry a [`Baseline`] (written by `sonitor-train combine --bundle`): the non-learned
//! baseline's distance of the window's band means, put on the model's scale and averaged with the cosine
//! distance ([`window_score`]). The learned embedding and the band levels see different faults (ABLATION.md).

use serde::{Deserialize, Serialize};

use crate::bundle::SectionModel;
use crate::features::FeatureParams;

/// The share of the sample rate a level baseline's bands stay within ([`baseline_bands`]): 0.45, the passband of a
/// 16 kHz converter's own anti-aliasing filter (7.2 kHz), below the edge where the daemon's resampling of a
/// 44.1 or 48 kHz input starts to cut (about 7.7 kHz: the 23–44 dB it takes off 7.8–8 kHz raised a combined
/// bundle's normal scores above its threshold when the bundle had scored those bands on audio made at 16 kHz).
pub const BASELINE_BAND_LIMIT: f64 = 0.45;

/// How many of the lowest mel bands a level baseline fitted now scores: those within [`BASELINE_BAND_LIMIT`] of
/// the sample rate, every band when `fmax_hz` is lower, at least one. Which bands reach the features near the
/// Nyquist frequency depends on how the audio was made (a converter's filter, a resampler's, none for
/// synthesised audio): a level baseline would read a different capture chain as a fault.
pub fn baseline_bands(p: &FeatureParams) -> usize {
    p.mel_bands_below(BASELINE_BAND_LIMIT * f64::from(p.sample_rate))
        .max(1)
}

/// Why `t` cannot be a decision threshold on these scores, if it cannot. A cosine distance lies in [0, 2]: a
/// threshold at or below 0 raises on every window, one at or above 2 never raises (or, as the lower threshold
/// of an alarm, never lets it clear). A combined bundle's scores ([`Baseline::combine`]) are on the same scale
/// and can leave that range; its thresholds are held to it all the same.
pub fn threshold_problem(t: f64) -> Option<String> {
    if !t.is_finite() {
        Some(format!("{t} is not a number"))
    } else if t <= 0.0 || t >= 2.0 {
        Some(format!(
            "{t} is outside (0, 2): thresholds are on the scale of a cosine distance, 0 to 2"
        ))
    } else {
        None
    }
}

/// Scales `v` to unit L2 norm in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if n > 0.0 {
        for x in v {
            *x = (*x as f64 / n) as f32;
        }
    }
}

/// Smallest cosine distance of `embedding` (any norm) to unit-norm `centroids`; 1.0 (orthogonal) when the
/// embedding is zero, `f32::INFINITY` when there are no centroids. Each distance is held to [0, 2], where a cosine
/// distance lies: in `f32` an embedding on a centroid's direction can come out a few 1e-7 below 0 (a cosine just
/// over 1), which a dashboard would show as a negative score.
pub fn min_cosine_distance(embedding: &[f32], centroids: &[Vec<f32>]) -> f32 {
    let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return if centroids.is_empty() {
            f32::INFINITY
        } else {
            1.0
        };
    }
    centroids
        .iter()
        .map(|c| {
            (1.0 - c.iter().zip(embedding).map(|(a, b)| a * b).sum::<f32>() / norm).clamp(0.0, 2.0)
        })
        .fold(f32::INFINITY, f32::min)
}

/// A section's level baseline, stored beside its centroids: the Mahalanobis distance of a window's band means
/// ([`crate::features::Features::band_means`]; the lowest [`Self::bands`] of them, [`baseline_bands`] for one
/// fitted now) to the nearer of the normal training windows' per-domain means,
/// each distance less its domain's offset, with the source windows' covariance (shrunk towards a scaled identity
/// when fitted). [`Self::combine`] maps the distance onto the model's score scale, matching the two systems'
/// median and 0.9 quantile over the normal source-domain training windows, and averages it with the model's
/// cosine distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Mean band means of the normal training windows, one vector per domain (the source domain's first), over
    /// the lowest bands: as many as these vectors hold ([`Self::bands`]), the features' every band in bundles
    /// made before [`BASELINE_BAND_LIMIT`].
    pub means: Vec<Vec<f64>>,
    /// Lower-triangular Cholesky factor `L` of the covariance (`Σ = L·Lᵀ`), packed by rows: row `i` holds its
    /// `i + 1` values up to the diagonal.
    pub cholesky: Vec<f64>,
    /// Subtracted from the distance to each of [`Self::means`] before the nearest is taken, one value per mean
    /// (empty: none, as in the bundles written before them). The target domain's mean comes from a few clips,
    /// and its normal windows lie farther from it than the source windows from theirs; its offset, the
    /// difference of the two domains' median distances, puts a target window's distance on the source scale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_offsets: Vec<f64>,
    /// Median of the distance over the normal source-domain training windows.
    pub distance_median: f64,
    /// The distance's 0.9 quantile over those windows, minus its median.
    pub distance_spread: f64,
    /// Median of the model's score over the same windows.
    pub score_median: f64,
    /// The model's 0.9 quantile over those windows, minus its median.
    pub score_spread: f64,
    /// The model's weight `W` in the average, from 0 (the baseline alone) to 1 (the model alone).
    pub weight: f64,
}

impl Baseline {
    /// How many of the lowest mel bands it scores (the length of its means).
    pub fn bands(&self) -> usize {
        self.means.first().map_or(0, Vec::len)
    }

    /// Why this baseline cannot score windows of `n_mels` band means, if it cannot.
    pub fn problem(&self, n_mels: usize) -> Option<String> {
        if self.means.is_empty() {
            return Some("baseline has no means".into());
        }
        let bands = self.bands();
        for (i, m) in self.means.iter().enumerate() {
            if m.is_empty() || m.len() > n_mels {
                return Some(format!(
                    "baseline mean {i} has {} values, the features give {n_mels} mel bands",
                    m.len()
                ));
            }
            if m.len() != bands {
                return Some(format!(
                    "baseline mean {i} has {} values, mean 0 has {bands}: one per band it scores, in each",
                    m.len()
                ));
            }
            if !m.iter().all(|v| v.is_finite()) {
                return Some(format!(
                    "baseline mean {i} has a value that is not a number"
                ));
            }
        }
        if !self.domain_offsets.is_empty() && self.domain_offsets.len() != self.means.len() {
            return Some(format!(
                "baseline domain_offsets has {} values, one per mean ({}) or none",
                self.domain_offsets.len(),
                self.means.len()
            ));
        }
        if !self.domain_offsets.iter().all(|v| v.is_finite()) {
            return Some("baseline domain_offsets has a value that is not a number".into());
        }
        let packed = bands * (bands + 1) / 2;
        if self.cholesky.len() != packed {
            return Some(format!(
                "baseline cholesky has {} values, a packed {bands} × {bands} triangle has {packed}",
                self.cholesky.len()
            ));
        }
        if !self.cholesky.iter().all(|v| v.is_finite()) {
            return Some("baseline cholesky has a value that is not a number".into());
        }
        if let Some(i) = (0..bands).find(|&i| self.cholesky[diagonal(i)] <= 0.0) {
            return Some(format!(
                "baseline cholesky's diagonal value {i} is {}, not positive (not a covariance's factor)",
                self.cholesky[diagonal(i)]
            ));
        }
        for (name, v) in [
            ("distance_median", self.distance_median),
            ("score_median", self.score_median),
        ] {
            if !v.is_finite() {
                return Some(format!("baseline {name} {v} is not a number"));
            }
        }
        for (name, v) in [
            ("distance_spread", self.distance_spread),
            ("score_spread", self.score_spread),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Some(format!("baseline {name} {v} is not a positive number"));
            }
        }
        if !(0.0..=1.0).contains(&self.weight) {
            return Some(format!(
                "baseline weight {} is not between 0 (the baseline alone) and 1 (the model alone)",
                self.weight
            ));
        }
        None
    }

    /// Mahalanobis distance of `band_means` (its lowest [`Self::bands`]) to the nearest of [`Self::means`], each
    /// less its domain offset; `scratch` is reused between calls (no allocation once it has grown).
    pub fn distance(&self, band_means: &[f64], scratch: &mut Vec<f64>) -> f64 {
        mahalanobis_nearest(
            band_means,
            &self.means,
            &self.domain_offsets,
            &self.cholesky,
            scratch,
        )
    }

    /// `sonitor-train combine`'s combined score: each system on its own scale (its median over the normal source
    /// training windows to 0, its 0.9 quantile to 1), then `(1 − W)·baseline + W·model`.
    pub fn scaled(&self, model_score: f64, distance: f64) -> f64 {
        (1.0 - self.weight) * ((distance - self.distance_median) / self.distance_spread)
            + self.weight * ((model_score - self.score_median) / self.score_spread)
    }

    /// The combined score on the model's scale, what the daemon compares with a threshold: [`Self::scaled`]
    /// mapped back by the model's median and spread, which is `W·model + (1 − W)·mapped` with `mapped` the distance
    /// put on the model's scale. An increasing map of [`Self::scaled`], so both rank windows alike. Unlike a cosine
    /// distance it is not bounded: a window far quieter than the training windows in its bands can score below 0,
    /// a loud one above 2.
    pub fn combine(&self, model_score: f64, distance: f64) -> f64 {
        self.score_median + self.score_spread * self.scaled(model_score, distance)
    }
}

/// Index of row `i`'s first value in a lower triangle packed by rows (row `i` holds `i + 1` values).
fn row_start(i: usize) -> usize {
    i * (i + 1) / 2
}

/// Index of row `i`'s diagonal value in a lower triangle packed by rows.
fn diagonal(i: usize) -> usize {
    row_start(i) + i
}

/// Mahalanobis distance of `x` to the nearest of `means`, for the covariance `L·Lᵀ` given by its lower
/// Cholesky factor packed by rows ([`Baseline::cholesky`]): one forward substitution `L·y = x − μ` per mean.
/// Means shorter than `x` (a baseline of the lowest bands) measure its values as far as they go.
/// The distance to `means[i]` is less `offsets[i]` before the nearest is taken (0 where `offsets` has no
/// value). `f64::INFINITY` without means.
pub fn mahalanobis_nearest(
    x: &[f64],
    means: &[Vec<f64>],
    offsets: &[f64],
    cholesky: &[f64],
    scratch: &mut Vec<f64>,
) -> f64 {
    let d = means.first().map_or(x.len(), |m| m.len().min(x.len()));
    scratch.clear();
    scratch.resize(d, 0.0);
    means
        .iter()
        .enumerate()
        .map(|(k, mu)| {
            for i in 0..d {
                let row = &cholesky[row_start(i)..][..=i];
                let s: f64 = row[..i].iter().zip(&scratch[..i]).map(|(l, y)| l * y).sum();
                scratch[i] = (x[i] - mu[i] - s) / row[i];
            }
            scratch.iter().map(|v| v * v).sum::<f64>().sqrt()
                - offsets.get(k).copied().unwrap_or(0.0)
        })
        .fold(f64::INFINITY, f64::min)
}

/// A window's anomaly score in a section: the smallest cosine distance of its embedding to the section's
/// centroids, combined with the section's [`Baseline`] distance of its band means when the bundle has one.
/// What the daemon compares with a threshold and the trainer's `eval` averages per clip.
pub fn window_score(
    section: &SectionModel,
    embedding: &[f32],
    band_means: &[f64],
    scratch: &mut Vec<f64>,
) -> f64 {
    let model = min_cosine_distance(embedding, &section.centroids) as f64;
    match &section.baseline {
        None => model,
        Some(b) => b.combine(model, b.distance(band_means, scratch)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_centroid_wins() {
        let c = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert!((min_cosine_distance(&[2.0, 0.0], &c)).abs() < 1e-6);
        assert!((min_cosine_distance(&[-1.0, 0.0], &c) - 1.0).abs() < 1e-6);
        let d = min_cosine_distance(&[1.0, 1.0], &c);
        assert!((d - (1.0 - std::f32::consts::FRAC_1_SQRT_2)).abs() < 1e-6);
        assert_eq!(min_cosine_distance(&[0.0, 0.0], &c), 1.0);
        assert_eq!(min_cosine_distance(&[1.0, 0.0], &[]), f32::INFINITY);
    }

    /// Found by the daemon's test model: a window whose embedding lies on its centroid scored -1.2e-7.
    #[test]
    fn a_distance_is_never_below_zero_or_above_two() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let mut c: Vec<f32> = (0..64).map(|_| rng.gen_range(-1.0..1.0)).collect();
            normalize(&mut c);
            let scaled: Vec<f32> = c.iter().map(|x| x * 3.7).collect();
            let opposite: Vec<f32> = c.iter().map(|x| -x).collect();
            for (e, want) in [(&c, 0.0), (&scaled, 0.0), (&opposite, 2.0)] {
                let d = min_cosine_distance(e, std::slice::from_ref(&c));
                assert!((0.0..=2.0).contains(&d), "{d}");
                assert!((d - want).abs() < 1e-5, "{d}");
            }
        }
    }

    #[test]
    fn normalize_makes_unit_vectors() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut z = vec![0.0; 3];
        normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    /// A 2-D case by hand: Σ = [[4, 2], [2, 5]] = L·Lᵀ with L = [[2, 0], [1, 2]]. For x − μ = (2, 3):
    /// y = (1, 1), distance √2; Σ⁻¹ = [[5, −2], [−2, 4]] / 16 gives (20 − 24 + 36) / 16 = 2 as well.
    #[test]
    fn mahalanobis_by_hand() {
        let chol = [2.0, 1.0, 2.0];
        let mut scratch = Vec::new();
        let far = vec![-10.0, -10.0];
        let means = [far, vec![1.0, 1.0]];
        let d = mahalanobis_nearest(&[3.0, 4.0], &means, &[], &chol, &mut scratch);
        assert!((d - 2f64.sqrt()).abs() < 1e-12, "{d}");
        assert_eq!(
            mahalanobis_nearest(&[0.0, 0.0], &[], &[], &chol, &mut scratch),
            f64::INFINITY
        );
        // The far mean: y = (6.5, 3.75), distance √56.3125 ≈ 7.504. Offsets move each distance before the
        // nearest is taken: the near one's offset of −1 makes it √2 + 1; the far one's of 7 makes it ≈ 0.504.
        let far = 56.3125f64.sqrt();
        let with = |o: &[f64]| mahalanobis_nearest(&[3.0, 4.0], &means, o, &chol, &mut Vec::new());
        assert!((with(&[0.0, -1.0]) - (2f64.sqrt() + 1.0)).abs() < 1e-12);
        assert!(
            (with(&[7.0, 0.0]) - (far - 7.0)).abs() < 1e-12,
            "{}",
            with(&[7.0, 0.0])
        );
        assert!(
            (with(&[5.0]) - 2f64.sqrt()).abs() < 1e-12,
            "no offset for the second mean: 0"
        );
    }

    /// A baseline of the lowest bands scores those alone: the Mahalanobis distance of the leading block (the
    /// marginal distribution of those bands, whose Cholesky factor is the full one's leading block), whatever the
    /// bands above hold. For the default features it keeps the 123 bands up to 7.2 kHz of 128.
    #[test]
    fn a_baseline_of_the_lowest_bands_ignores_the_bands_above() {
        let mut scratch = Vec::new();
        let low = Baseline {
            means: vec![vec![1.0]],
            cholesky: vec![2.0],
            ..baseline()
        };
        assert_eq!(low.bands(), 1);
        assert_eq!(low.problem(2), None);
        for top in [4.0, -300.0, 1e6] {
            let d = low.distance(&[3.0, top], &mut scratch);
            assert!((d - 1.0).abs() < 1e-12, "{d}");
        }
        let p = FeatureParams::default();
        assert_eq!((p.sample_rate, p.n_mels, p.fmax_hz), (16_000, 128, 8_000.0));
        assert_eq!(baseline_bands(&p), 123);
        assert_eq!(p.mel_bands_below(8_000.0), 128);
        assert_eq!(p.mel_bands_below(0.0), 0);
        // A filterbank that stops below the limit: every band.
        let low_fmax = FeatureParams {
            fmax_hz: 6_000.0,
            ..p
        };
        assert_eq!(baseline_bands(&low_fmax), 128);
    }

    fn baseline() -> Baseline {
        Baseline {
            means: vec![vec![1.0, 1.0]],
            cholesky: vec![2.0, 1.0, 2.0],
            domain_offsets: Vec::new(),
            distance_median: 1.0,
            distance_spread: 2.0,
            score_median: 0.1,
            score_spread: 0.05,
            weight: 0.25,
        }
    }

    #[test]
    fn the_combined_score_maps_the_distance_onto_the_models_scale() {
        let b = baseline();
        // Distance at its median: mapped to the model's median.
        assert!((b.combine(0.3, 1.0) - (0.25 * 0.3 + 0.75 * 0.1)).abs() < 1e-12);
        // Distance at its 0.9 quantile (median + spread): mapped to the model's 0.9 quantile.
        assert!((b.combine(0.3, 3.0) - (0.25 * 0.3 + 0.75 * 0.15)).abs() < 1e-12);
        // An affine map, not held to a cosine distance's [0, 2]: far enough below its median it goes below 0,
        // far above it above 2.
        assert!((b.combine(0.0, -5.0) - 0.75 * (0.1 - 0.05 * 3.0)).abs() < 1e-12);
        assert!(b.combine(0.0, -5.0) < 0.0 && b.combine(2.0, 200.0) > 2.0);
        let mut section = crate::bundle::SectionModel {
            machine_type: "fan".into(),
            section: 0,
            centroids: vec![vec![1.0, 0.0]],
            n_source_centroids: 1,
            n_target_centroids: 0,
            threshold: crate::bundle::Threshold {
                value: 0.5,
                method: "gamma-quantile".into(),
                quantile: 0.9,
                gamma_shape: None,
                gamma_scale: None,
            },
            baseline: None,
        };
        let mut scratch = Vec::new();
        let alone = window_score(&section, &[0.0, 1.0], &[3.0, 4.0], &mut scratch);
        assert!((alone - 1.0).abs() < 1e-6, "{alone}");
        section.baseline = Some(b.clone());
        let both = window_score(&section, &[0.0, 1.0], &[3.0, 4.0], &mut scratch);
        let want = b.combine(1.0, 2f64.sqrt());
        assert!((both - want).abs() < 1e-6, "{both} against {want}");
    }

    #[test]
    fn a_baseline_that_cannot_score_is_named() {
        let check = |edit: fn(&mut Baseline), want: &str| {
            let mut b = baseline();
            edit(&mut b);
            let why = b.problem(2).expect(want);
            assert!(why.contains(want), "{why} (want {want})");
        };
        assert_eq!(baseline().problem(2), None);
        // Fewer bands than the features give: the lowest ones; more: refused.
        assert_eq!(baseline().problem(3), None);
        assert!(baseline().problem(1).unwrap().contains("mel bands"));
        check(|b| b.means.push(vec![1.0]), "mean 0 has 2");
        check(|b| b.means.clear(), "no means");
        check(|b| b.means[0][1] = f64::NAN, "not a number");
        check(|b| b.cholesky.pop().map(drop).unwrap_or(()), "packed");
        check(|b| b.cholesky[2] = 0.0, "diagonal value 1");
        check(|b| b.domain_offsets = vec![0.0, 1.0], "one per mean (1)");
        check(
            |b| b.domain_offsets = vec![f64::NAN],
            "domain_offsets has a value",
        );
        check(|b| b.distance_spread = 0.0, "distance_spread");
        check(|b| b.score_median = f64::INFINITY, "score_median");
        check(|b| b.weight = 1.5, "weight");
    }
}
