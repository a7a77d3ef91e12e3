//! Training losses of the seed paper's comparison.
//!
//! - [`LossKind::SubclusterAdacos`]: `C` classes × `K` = [`SUBCLUSTERS`] fixed random unit centres; cosine of the
//!   unit-normalised embedding to every centre, scaled by an adaptive scale `s`, softmax over all `C·K`
//!   logits, probabilities summed per class, cross-entropy against the (mixup) soft labels.
//! - [`LossKind::Adacos`]: the same with `K` = 1.
//! - [`LossKind::IcCompactness`]: `Σ_c y_c ‖φ(x) − c_c‖²` to one fixed random centre per class.
//! - [`LossKind::OneClass`]: `‖φ(x) − c‖²` to one fixed random centre.
//!
//! The adaptive scale follows AdaCos (Zhang et al. 2019): recomputed each batch, before the loss, from the
//! detached cosines: `s = ln(B_avg) / cos(min(π/4, θ_med))` with `B_avg` the batch mean of `Σ exp(s·cos)` over
//! the logits whose (sub-cluster-expanded) label is below 1 (AdaCos's non-target classes), and `θ_med` the
//! median over the batch of each sample's label-weighted mean angle to its classes' centres. The authors'
//! published sub-cluster AdaCos layer sums `B_avg` over all `C·K` logits (its line over the non-target ones is
//! commented out) and `θ` over the `K` centres; ABLATION.md ("Against the authors' published code") measures
//! the two forms against each other.
//!
//! Guarded: a non-finite or non-positive value keeps the previous scale, and the scale is clamped to
//! `[1, max(4·s₀, 4)]` (s₀ the initial `√2·ln(C·K − 1)`), so it cannot blow up when all cosines drift positive.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Sub-clusters per class of the sub-cluster AdaCos loss (the paper's K).
pub const SUBCLUSTERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    SubclusterAdacos,
    Adacos,
    IcCompactness,
    OneClass,
}

impl LossKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubclusterAdacos => "subcluster-adacos",
            Self::Adacos => "adacos",
            Self::IcCompactness => "ic-compactness",
            Self::OneClass => "one-class",
        }
    }
}

/// The loss with its fixed centres and (for AdaCos) the adaptive scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loss {
    pub kind: LossKind,
    pub n_classes: usize,
    /// Centres per class (K).
    pub k: usize,
    pub dim: usize,
    /// Row-major `[n_classes·k, dim]` (AdaCos: unit vectors; compactness: one or `n_classes` centres).
    pub centres: Vec<f32>,
    /// Current adaptive scale (AdaCos only).
    pub scale: f64,
    pub initial_scale: f64,
}

fn initial_scale(n_logits: usize) -> f64 {
    if n_logits > 2 {
        std::f64::consts::SQRT_2 * ((n_logits - 1) as f64).ln()
    } else {
        1.0
    }
}

impl Loss {
    /// Fixed random unit centres drawn from `seed`.
    pub fn new(kind: LossKind, n_classes: usize, dim: usize, seed: u64) -> Self {
        let k = match kind {
            LossKind::SubclusterAdacos => SUBCLUSTERS,
            _ => 1,
        };
        let rows = match kind {
            LossKind::OneClass => 1,
            _ => n_classes * k,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c3e7);
        let mut centres = Vec::with_capacity(rows * dim);
        for _ in 0..rows {
            let v: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            centres.extend(v.iter().map(|x| x / n));
        }
        Self::with_centres(kind, n_classes, k, dim, centres)
    }

    /// Explicit centres (tests; `centres` row-major as in [`Loss::centres`]).
    pub fn with_centres(
        kind: LossKind,
        n_classes: usize,
        k: usize,
        dim: usize,
        centres: Vec<f32>,
    ) -> Self {
        let s0 = initial_scale(n_classes * k);
        Self {
            kind,
            n_classes,
            k,
            dim,
            centres,
            scale: s0,
            initial_scale: s0,
        }
    }

    fn is_adacos(&self) -> bool {
        matches!(self.kind, LossKind::SubclusterAdacos | LossKind::Adacos)
    }

    /// The adaptive scale for a batch of cosines `[batch, C·K]` (row-major) and soft labels `[batch, C]`,
    /// guarded (see the module docs). Pure: does not change `self`.
    pub fn adaptive_scale(&self, cos: &[f32], labels: &[f32]) -> f64 {
        let (c, k) = (self.n_classes, self.k);
        let ck = c * k;
        if ck == 0 || cos.is_empty() {
            return self.scale;
        }
        let batch = cos.len() / ck;
        let mut b_sum = 0.0f64;
        let mut thetas = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = &cos[b * ck..(b + 1) * ck];
            let y = &labels[b * c..(b + 1) * c];
            let ysum: f64 = y.iter().map(|&v| v as f64).sum::<f64>().max(1e-12);
            let mut th = 0.0f64;
            for (j, &cj) in row.iter().enumerate() {
                let yc = y[j / k] as f64;
                let cj = (cj as f64).clamp(-1.0 + 1e-7, 1.0 - 1e-7);
                if yc < 1.0 - 1e-6 {
                    b_sum += (self.scale * cj).exp();
                }
                th += yc / ysum / k as f64 * cj.acos();
            }
            thetas.push(th);
        }
        let b_avg = b_sum / batch as f64;
        thetas.sort_by(f64::total_cmp);
        let n = thetas.len();
        let med = if n % 2 == 1 {
            thetas[n / 2]
        } else {
            0.5 * (thetas[n / 2 - 1] + thetas[n / 2])
        };
        let s = b_avg.ln() / med.min(std::f64::consts::FRAC_PI_4).cos();
        if !s.is_finite() || s <= 0.0 {
            return self.scale;
        }
        s.clamp(1.0, (4.0 * self.initial_scale).max(4.0))
    }

    /// The mean loss over the batch. `emb`: `[batch, dim]`; `labels`: row-major `[batch, n_classes]` soft
    /// labels (rows sum to 1). AdaCos losses first update [`Loss::scale`] from this batch.
    pub fn forward(&mut self, emb: Tensor<2>, labels: &[f32]) -> Tensor<1> {
        let device: Device = emb.device();
        let [batch, dim] = emb.dims();
        let c = self.n_classes;
        let y = Tensor::<2>::from_data(TensorData::new(labels.to_vec(), [batch, c]), &device);
        let rows = self.centres.len() / dim.max(1);
        let centres =
            Tensor::<2>::from_data(TensorData::new(self.centres.clone(), [rows, dim]), &device);
        if self.is_adacos() {
            let norm = emb
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            let unit = emb / norm;
            let cos = unit.matmul(centres.transpose()); // [batch, C·K]
            let host: Vec<f32> = cos.to_data().try_to_vec().unwrap_or_default();
            self.scale = self.adaptive_scale(&host, labels);
            let logits = cos.mul_scalar(self.scale);
            // Stable log-softmax summed per class: log p_c = logsumexp_K(l) − logsumexp_all(l).
            let m = logits.clone().max_dim(1).detach();
            let e = (logits - m).exp(); // [batch, C·K]
            let per_class = e.reshape([batch, c, self.k]).sum_dim(2).reshape([batch, c]);
            let total = per_class.clone().sum_dim(1);
            let log_p = per_class.clamp_min(1e-30).log() - total.log();
            (y * log_p).sum_dim(1).mean().neg()
        } else {
            // Squared distance to each centre: ‖x‖² − 2 x·c + ‖c‖².
            let x2 = emb.clone().powi_scalar(2).sum_dim(1); // [batch, 1]
            let c2 = centres.clone().powi_scalar(2).sum_dim(1).transpose(); // [1, rows]
            let d2 = x2 - emb.matmul(centres.transpose()).mul_scalar(2.0) + c2; // [batch, rows]
            match self.kind {
                LossKind::OneClass => d2.mean(),
                _ => (y * d2).sum_dim(1).mean(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_data().try_to_vec::<f32>().unwrap()[0] as f64
    }

    fn emb(v: &[f32], batch: usize, dim: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [batch, dim]), &Device::flex())
    }

    #[test]
    fn adacos_matches_hand_computation() {
        // Two classes, K = 1, centres e1 and e2; embedding (3, 4) → unit (0.6, 0.8); label class 0.
        let mut l = Loss::with_centres(LossKind::Adacos, 2, 1, 2, vec![1.0, 0.0, 0.0, 1.0]);
        l.scale = 2.0;
        l.initial_scale = 2.0;
        // Scale: B_avg = exp(2·0.8) (only the non-target logit), θ_med = acos(0.6) = 0.927 > π/4,
        // s = ln(e^1.6) / cos(π/4) = 1.6·√2 = 2.2627.
        let loss = scalar(l.forward(emb(&[3.0, 4.0], 1, 2), &[1.0, 0.0]));
        let s = 1.6 * std::f64::consts::SQRT_2;
        assert!((l.scale - s).abs() < 1e-5, "scale {}", l.scale);
        // Cross-entropy: −ln(e^{0.6s} / (e^{0.6s} + e^{0.8s})) = ln(1 + e^{0.2s}).
        let want = (1.0 + (0.2 * s).exp()).ln();
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }

    #[test]
    fn subcluster_adacos_sums_probabilities_per_class() {
        // Two classes × K = 2: class 0 = {e1, e2}, class 1 = {−e1, −e2}; unit embedding (0.6, 0.8).
        let mut l = Loss::with_centres(
            LossKind::SubclusterAdacos,
            2,
            2,
            2,
            vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0],
        );
        l.scale = 1.0;
        l.initial_scale = 10.0;
        // Mixup label (0.5, 0.5): every expanded label < 1, so B_avg = e^.6 + e^.8 + e^-.6 + e^-.8;
        // θ = ¼(acos .6 + acos .8 + acos −.6 + acos −.8) = π/2 → min(π/4, θ) = π/4.
        let loss = scalar(l.forward(emb(&[0.6, 0.8], 1, 2), &[0.5, 0.5]));
        let b: f64 = [0.6f64, 0.8, -0.6, -0.8].iter().map(|c| c.exp()).sum();
        let s = b.ln() / std::f64::consts::FRAC_PI_4.cos();
        assert!((l.scale - s).abs() < 1e-5, "scale {} vs {s}", l.scale);
        let p0 = ((0.6 * s).exp() + (0.8 * s).exp())
            / [0.6f64, 0.8, -0.6, -0.8]
                .iter()
                .map(|c| (c * s).exp())
                .sum::<f64>();
        let want = -(0.5 * p0.ln() + 0.5 * (1.0 - p0).ln());
        assert!((loss - want).abs() < 1e-4, "{loss} vs {want}");
    }

    #[test]
    fn compactness_losses_match_hand_computation() {
        let centres = vec![1.0, 0.0, 0.0, 1.0];
        let x = [3.0, 4.0, 0.0, 0.0];
        // ic: sample 0 class 0 → (3−1)² + 4² = 20; sample 1 half/half → 0.5·1 + 0.5·1 = 1; mean 10.5.
        let mut ic = Loss::with_centres(LossKind::IcCompactness, 2, 1, 2, centres.clone());
        let v = scalar(ic.forward(emb(&x, 2, 2), &[1.0, 0.0, 0.5, 0.5]));
        assert!((v - 10.5).abs() < 1e-5, "{v}");
        // one-class, centre e1: (20 + 1) / 2.
        let mut oc = Loss::with_centres(LossKind::OneClass, 2, 1, 2, centres[..2].to_vec());
        let v = scalar(oc.forward(emb(&x, 2, 2), &[1.0, 0.0, 0.5, 0.5]));
        assert!((v - 10.5).abs() < 1e-5, "{v}");
    }

    #[test]
    fn scale_is_guarded() {
        let mut l = Loss::new(LossKind::Adacos, 3, 2, 1);
        l.scale = 5.0;
        // All cosines 1 for the target and 1 for the others: s would be ln(2e^5)/cos(~0) ≈ 5.7; fine.
        // Absurd input (NaN) keeps the previous scale.
        assert_eq!(
            l.adaptive_scale(&[f32::NAN, f32::NAN, f32::NAN], &[1.0, 0.0, 0.0]),
            5.0
        );
        // Non-targets at cosine 1, target at 0: the raw AdaCos value would be ln(2e^5)/cos(π/4) ≈ 8.05;
        // clamped to max(4·s₀, 4) (s₀ = √2·ln 2 ≈ 0.98 for three logits, so the floor of the cap, 4, applies).
        let big = l.adaptive_scale(&[0.0, 1.0, 1.0], &[1.0, 0.0, 0.0]);
        assert!((big - 4.0).abs() < 1e-9, "{big}");
        // A sane batch is not clamped: 50 classes (s₀ = √2·ln 49), target cosine 0.9, the 49 others 0:
        // B_avg = 49, θ_med = acos 0.9 < π/4, s = ln 49 / 0.9.
        let mut l = Loss::new(LossKind::Adacos, 50, 2, 1);
        l.scale = l.initial_scale;
        let mut cos = vec![0.0f32; 50];
        cos[0] = 0.9;
        let mut y = vec![0.0f32; 50];
        y[0] = 1.0;
        let s = l.adaptive_scale(&cos, &y);
        assert!((s - 49f64.ln() / 0.9).abs() < 1e-5, "{s}");
        assert!(
            Loss::new(LossKind::SubclusterAdacos, 2, 4, 0).centres.len() == 2 * SUBCLUSTERS * 4
        );
    }
}
