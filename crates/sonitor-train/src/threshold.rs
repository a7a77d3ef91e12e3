//! Threshold calibration, DCASE-baseline style: a gamma distribution fitted by maximum likelihood to the anomaly
//! scores of normal training clips, and its quantile (default 0.9) as the default decision threshold.

use serde::{Deserialize, Serialize};
use sonitor_core::bundle::Threshold;

/// A fitted gamma distribution (shape `k`, scale `θ`: mean `kθ`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gamma {
    pub shape: f64,
    pub scale: f64,
}

/// `ln Γ(x)`, x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Digamma ψ(x), x > 0 (recurrence to x ≥ 6, then the asymptotic series).
pub fn digamma(mut x: f64) -> f64 {
    let mut r = 0.0;
    // Recurse up to x ≥ 12 so the truncated asymptotic series is accurate to ~1e-13.
    while x < 12.0 {
        r -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    r + x.ln() - 0.5 / x - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f / 240.0)))
}

/// Trigamma ψ'(x), x > 0.
pub fn trigamma(mut x: f64) -> f64 {
    let mut r = 0.0;
    while x < 12.0 {
        r += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    r + 1.0 / x + f / 2.0 + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f / 42.0))
}

/// Regularised lower incomplete gamma `P(a, x)` (series for x < a + 1, continued fraction otherwise).
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..1000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (sum.ln() - x + a * x.ln() - gln).exp().min(1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (1.0 - (-x + a * x.ln() - gln).exp() * h).max(0.0)
    }
}

impl Gamma {
    /// Maximum-likelihood fit. Scores must be positive and finite; non-positive ones are clamped to a small
    /// fraction of the mean (a score of exactly 0 has zero likelihood under any gamma). Needs ≥ 2 distinct values.
    pub fn fit(scores: &[f64]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            scores.len() >= 2,
            "need at least 2 scores to fit a gamma distribution, got {}",
            scores.len()
        );
        anyhow::ensure!(
            scores.iter().all(|s| s.is_finite()),
            "scores must be finite to fit a gamma distribution"
        );
        let mean0 = scores.iter().sum::<f64>() / scores.len() as f64;
        anyhow::ensure!(
            mean0 > 0.0,
            "scores have a non-positive mean ({mean0}); cannot fit a gamma distribution"
        );
        let floor = mean0 * 1e-6;
        let xs: Vec<f64> = scores.iter().map(|&s| s.max(floor)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let mean_ln = xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64;
        let s = mean.ln() - mean_ln;
        anyhow::ensure!(
            s > 1e-12,
            "all scores are equal ({mean}); cannot fit a gamma distribution"
        );
        // Minka's starting point, then Newton on ln k − ψ(k) = s.
        let mut k = (3.0 - s + ((s - 3.0).powi(2) + 24.0 * s).sqrt()) / (12.0 * s);
        for _ in 0..100 {
            let f = k.ln() - digamma(k) - s;
            let df = 1.0 / k - trigamma(k);
            let next = k - f / df;
            let next = if next > 0.0 { next } else { k / 2.0 };
            if (next - k).abs() < 1e-12 * k {
                k = next;
                break;
            }
            k = next;
        }
        Ok(Self {
            shape: k,
            scale: mean / k,
        })
    }

    pub fn cdf(&self, x: f64) -> f64 {
        gamma_p(self.shape, x / self.scale)
    }

    /// The `q`-quantile (0 < q < 1), by bisection on the CDF.
    pub fn quantile(&self, q: f64) -> f64 {
        let q = q.clamp(1e-12, 1.0 - 1e-12);
        let (mut lo, mut hi) = (0.0, self.shape * self.scale);
        while self.cdf(hi) < q {
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if self.cdf(mid) < q {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }
}

/// A threshold from [`calibrate`], and why the gamma could not be fitted where it could not.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub threshold: Threshold,
    /// Why the gamma distribution could not be fitted (the threshold is then the scores' empirical quantile,
    /// method `percentile`); `None` for a fitted gamma.
    pub gamma_failure: Option<String>,
}

impl Calibration {
    /// The warning to print when the gamma could not be fitted: what failed, why, and what the threshold is
    /// instead. `what` names the scores' owner (`"pump section 00"`).
    pub fn warning(&self, what: &str) -> Option<String> {
        let why = self.gamma_failure.as_ref()?;
        Some(format!(
            "warning: {what}: the gamma distribution could not be fitted to the scores of the normal training \
             windows ({why}); the threshold {} is their empirical {} quantile instead (method \"percentile\" in \
             the manifest). More normal training clips that differ from one another give a fitted threshold.",
            significant(self.threshold.value),
            self.threshold.quantile
        ))
    }
}

/// A decision threshold from normal scores: the `quantile` of their maximum-likelihood gamma fit, or, when the
/// gamma cannot fit them (e.g. all equal), their empirical quantile, with the reason (its
/// [`Calibration::warning`] is for the user). Its value may be NaN (no scores); callers check it against what a
/// threshold must be.
pub fn calibrate(scores: &[f64], quantile: f64) -> Calibration {
    let gamma = Gamma::fit(scores).and_then(|g| {
        anyhow::ensure!(
            g.shape.is_finite() && g.scale.is_finite() && g.shape > 0.0 && g.scale > 0.0,
            "the fit gave no usable parameters (shape {}, scale {})",
            g.shape,
            g.scale
        );
        Ok(g)
    });
    match gamma {
        Ok(g) => Calibration {
            threshold: Threshold {
                value: g.quantile(quantile),
                method: "gamma-quantile".into(),
                quantile,
                gamma_shape: Some(g.shape),
                gamma_scale: Some(g.scale),
            },
            gamma_failure: None,
        },
        Err(e) => {
            // Scores the gamma cannot fit (e.g. all equal): the empirical quantile.
            let mut s = scores.to_vec();
            s.sort_by(f64::total_cmp);
            let i = ((s.len() as f64 - 1.0) * quantile).round() as usize;
            Calibration {
                threshold: Threshold {
                    value: s.get(i).copied().unwrap_or(f64::NAN),
                    method: "percentile".into(),
                    quantile,
                    gamma_shape: None,
                    gamma_scale: None,
                },
                gamma_failure: Some(format!("{e:#}")),
            }
        }
    }
}

/// How a threshold was made, for the line `fit` prints per section: the gamma's parameters where it was fitted,
/// else the empirical quantile (never a "fitted" gamma of NaN parameters).
pub fn describe(t: &Threshold) -> String {
    match (t.gamma_shape, t.gamma_scale) {
        (Some(k), Some(theta)) => format!(
            "threshold {} (gamma k {k:.2} θ {})",
            significant(t.value),
            significant(theta)
        ),
        _ => format!(
            "threshold {} (empirical {} quantile: no gamma fit)",
            significant(t.value),
            t.quantile
        ),
    }
}

/// What the thresholds `fit`, `prune` and `combine` calibrate are, printed beside them: the `quantile` of each
/// section's normal training window scores, and, below 0.99, that an unattended alarm usually wants 0.99 (the
/// default 0.9 is DCASE's evaluation setting: about one normal window in ten lies above it, and the daemon raised two
/// false alarms in 30 s of normal audio with it, without a word).
///
/// The share it names is of the training windows: the network learnt from those clips, and audio it has not heard
/// scores higher (review25: a `--quantile 0.99` bundle of 120 clips a section had 0.8% of its training windows above
/// its threshold and 12.5% of unseen normal ones; `models/default` 3%). The note says so, and where to check.
pub fn quantile_note(quantile: f64) -> String {
    let what = format!(
        "thresholds: the {quantile} quantile of each section's normal training window scores"
    );
    let unseen = "; normal audio the network did not learn from lies above it more often: check on normal \
                  recordings held out of training (`eval` on a data set's test clips, `sonitor demo` or `run` on a \
                  recording)";
    if quantile < 0.99 {
        format!(
            "{what} (about {:.0}% of the training windows lie above it; DCASE's evaluation setting){unseen}; for \
             an unattended alarm --quantile 0.99 (or a per-machine `threshold` in sonitor.toml) is the usual choice",
            (1.0 - quantile) * 100.0
        )
    } else {
        format!("{what}{unseen}")
    }
}

/// `x` to 4 significant digits, for printing a threshold or a gamma scale: `0.1234`, `0.001234`, and in
/// scientific notation outside 0.001–9999 (`3.142e-5`). A fixed `{:.4}` printed the threshold of a network pruned
/// to one channel per layer as 0.0000.
pub fn significant(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if (-3..4).contains(&magnitude) {
        let decimals = (3 - magnitude).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_thresholds_print_with_four_significant_digits() {
        assert_eq!(significant(0.15), "0.1500");
        assert_eq!(significant(0.012346), "0.01235");
        assert_eq!(significant(0.0012341), "0.001234");
        assert_eq!(significant(3.14159e-5), "3.142e-5");
        assert_eq!(significant(12.5), "12.50");
        assert_eq!(significant(0.0), "0");
        assert_eq!(significant(f64::NAN), "NaN");
    }
    use rand::SeedableRng;
    use rand_distr::Distribution;

    #[test]
    fn special_functions() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((digamma(1.0) + 0.577_215_664_901_532_9).abs() < 1e-12);
        assert!((trigamma(1.0) - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-10);
        // P(1, x) = 1 − e^{−x}; P(3, 2) = 1 − e^{−2}(1 + 2 + 2) (scipy: 0.3233235838169366).
        assert!((gamma_p(1.0, 0.7) - (1.0 - (-0.7f64).exp())).abs() < 1e-13);
        assert!((gamma_p(3.0, 2.0) - 0.323_323_583_816_936_6).abs() < 1e-13);
        assert!((gamma_p(3.0, 9.0) - (1.0 - (-9.0f64).exp() * (1.0 + 9.0 + 40.5))).abs() < 1e-13);
    }

    #[test]
    fn fit_recovers_parameters_and_quantile() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let g = rand_distr::Gamma::new(3.0, 0.2).unwrap();
        let xs: Vec<f64> = (0..20_000).map(|_| g.sample(&mut rng)).collect();
        let fit = Gamma::fit(&xs).unwrap();
        assert!((fit.shape - 3.0).abs() < 0.1, "{fit:?}");
        assert!((fit.scale - 0.2).abs() < 0.01, "{fit:?}");
        // scipy.stats.gamma(3, scale=0.2).ppf(0.9) = 1.0644640675668420
        let q = Gamma {
            shape: 3.0,
            scale: 0.2,
        }
        .quantile(0.9);
        assert!((q - 1.064_464_067_566_842).abs() < 1e-9, "{q}");
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        assert!(Gamma::fit(&[1.0]).is_err());
        assert!(Gamma::fit(&[0.5, 0.5, 0.5]).is_err());
        assert!(Gamma::fit(&[0.0, 0.0]).is_err());
        assert!(Gamma::fit(&[1.0, f64::NAN]).is_err());
    }

    /// Scores the gamma cannot fit (two equal ones: a section of one source and one target clip) give the
    /// empirical quantile, with the reason and a warning that says what was used instead; the printed line shows
    /// no gamma parameters (it showed "gamma k NaN θ NaN", as if fitted).
    #[test]
    fn a_failed_gamma_fit_is_said_with_why_and_what_was_used() {
        let c = calibrate(&[0.3531, 0.3531], 0.9);
        assert_eq!(c.threshold.method, "percentile");
        assert_eq!(c.threshold.value, 0.3531);
        let why = c.gamma_failure.as_deref().expect("a reason");
        assert!(why.contains("all scores are equal"), "{why}");
        let w = c.warning("fan section 00").expect("a warning");
        for part in [
            "fan section 00",
            "all scores are equal",
            "empirical 0.9 quantile",
            "0.3531",
        ] {
            assert!(w.contains(part), "{part:?} not in {w:?}");
        }
        let line = describe(&c.threshold);
        assert!(!line.contains("NaN"), "{line}");
        assert!(line.contains("no gamma fit"), "{line}");

        let fitted = calibrate(&[0.1, 0.2, 0.3, 0.25], 0.9);
        assert_eq!(fitted.gamma_failure, None);
        assert_eq!(fitted.warning("fan section 00"), None);
        assert!(describe(&fitted.threshold).contains("gamma k"));
    }

    /// `fit`'s default quantile, 0.9, raised two false alarms in 30 s of normal audio in the daemon and nothing
    /// said so: the note printed beside the thresholds names the quantile and, below 0.99, the usual choice for an
    /// unattended alarm.
    #[test]
    fn the_quantile_note_says_what_the_threshold_is_and_what_an_alarm_wants() {
        let n = quantile_note(0.9);
        for part in [
            "the 0.9 quantile of each section's normal training window scores",
            "about 10% of the training windows",
            "did not learn from lies above it more often",
            "for an unattended alarm --quantile 0.99",
            "per-machine `threshold`",
        ] {
            assert!(n.contains(part), "{part:?} not in {n:?}");
        }
        let n = quantile_note(0.99);
        assert!(
            n.contains("the 0.99 quantile") && n.contains("held out of training"),
            "{n}"
        );
        assert!(!n.contains("unattended"), "{n}");
    }
}
