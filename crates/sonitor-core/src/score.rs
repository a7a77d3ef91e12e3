//! Scoring an embedding against a section's centroids: the anomaly score is the smallest cosine distance
//! (1 − cos) between the unit-normalised embedding and the section's (unit-norm) centroids. Shared by the
//! trainer's evaluation and the daemon so that both compute the same number.

/// Why `t` cannot be a decision threshold on these scores, if it cannot. A cosine distance lies in [0, 2]: a
/// threshold at or below 0 raises on every window, one at or above 2 never raises (or, as the lower threshold
/// of an alarm, never lets it clear).
pub fn threshold_problem(t: f64) -> Option<String> {
    if !t.is_finite() {
        Some(format!("{t} is not a number"))
    } else if t <= 0.0 || t >= 2.0 {
        Some(format!(
            "{t} is outside (0, 2): scores are cosine distances between 0 and 2"
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
}
