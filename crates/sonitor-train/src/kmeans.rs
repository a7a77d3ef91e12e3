//! Spherical k-means with k-means++ initialisation on unit vectors (cosine geometry): what the scoring back end
//! uses to summarise a section's source-domain training embeddings into a few centres.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Returns `x / ‖x‖` (a zero vector stays zero).
pub fn normalised(x: &[f32]) -> Vec<f32> {
    let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    if n > 0.0 {
        x.iter().map(|v| v / n).collect()
    } else {
        x.to_vec()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `k` unit centres of the unit vectors `points` (each `dim` long): k-means++ seeding with the cosine distance
/// `1 − cos`, then Lloyd iterations (assign to the most similar centre, centre = normalised mean) until no
/// assignment changes or `max_iter`. With at most `k` points every point is its own centre. Deterministic for
/// a seed.
pub fn spherical_kmeans(
    points: &[Vec<f32>],
    k: usize,
    seed: u64,
    max_iter: usize,
) -> Vec<Vec<f32>> {
    let pts: Vec<Vec<f32>> = points.iter().map(|p| normalised(p)).collect();
    if pts.len() <= k || k == 0 {
        return pts;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centres: Vec<Vec<f32>> = vec![pts[rng.gen_range(0..pts.len())].clone()];
    let mut d: Vec<f32> = pts
        .iter()
        .map(|p| (1.0 - dot(p, &centres[0])).max(0.0))
        .collect();
    while centres.len() < k {
        let total: f64 = d.iter().map(|&v| v as f64 * v as f64).sum();
        let next = if total <= 0.0 {
            rng.gen_range(0..pts.len())
        } else {
            let mut r = rng.gen::<f64>() * total;
            let mut pick = pts.len() - 1;
            for (i, &v) in d.iter().enumerate() {
                r -= v as f64 * v as f64;
                if r <= 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        };
        centres.push(pts[next].clone());
        let c = &centres[centres.len() - 1];
        for (di, p) in d.iter_mut().zip(&pts) {
            *di = di.min((1.0 - dot(p, c)).max(0.0));
        }
    }
    let dim = pts[0].len();
    let mut assign = vec![usize::MAX; pts.len()];
    for _ in 0..max_iter {
        let mut changed = false;
        for (a, p) in assign.iter_mut().zip(&pts) {
            let best = centres
                .iter()
                .enumerate()
                .map(|(j, c)| (j, dot(p, c)))
                .fold((0, f32::NEG_INFINITY), |b, x| if x.1 > b.1 { x } else { b })
                .0;
            if *a != best {
                *a = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![vec![0.0f32; dim]; k];
        for (&a, p) in assign.iter().zip(&pts) {
            for (s, v) in sums[a].iter_mut().zip(p) {
                *s += v;
            }
        }
        for (c, s) in centres.iter_mut().zip(sums) {
            // An emptied cluster keeps its previous centre.
            if s.iter().any(|&v| v != 0.0) {
                *c = normalised(&s);
            }
        }
    }
    centres
}

/// The centres of [`spherical_kmeans`] as they would be without some of the points: each centre is the
/// normalised sum of the points nearest to it (k-means' last step), so leaving points out takes them from their
/// centre's sum. Used to score a clip's training windows as new audio is scored: against centres none of its own
/// windows helped to make (a centre of one clip's windows only would give them a score of about 0).
pub struct LeaveOut {
    centres: Vec<Vec<f32>>,
    /// The nearest centre of each point.
    assign: Vec<usize>,
    sums: Vec<Vec<f32>>,
    counts: Vec<usize>,
}

impl LeaveOut {
    pub fn new(centres: &[Vec<f32>], points: &[Vec<f32>]) -> Self {
        let dim = centres.first().map_or(0, |c| c.len());
        let mut sums = vec![vec![0.0f32; dim]; centres.len()];
        let mut counts = vec![0usize; centres.len()];
        let mut assign = Vec::with_capacity(points.len());
        for p in points {
            let p = normalised(p);
            let best = centres
                .iter()
                .enumerate()
                .map(|(j, c)| (j, dot(&p, c)))
                .fold((0, f32::NEG_INFINITY), |b, x| if x.1 > b.1 { x } else { b })
                .0;
            for (s, v) in sums[best].iter_mut().zip(&p) {
                *s += v;
            }
            counts[best] += 1;
            assign.push(best);
        }
        LeaveOut {
            centres: centres.to_vec(),
            assign,
            sums,
            counts,
        }
    }

    /// The centres without the points for which `left_out(i)` is true: a centre keeps its value where none of
    /// them is nearest to it, is made again from the rest of its points where some are, and is dropped where all
    /// are. A centre that no point is nearest to (a cluster k-means emptied, which still holds the point it
    /// started from) is dropped.
    pub fn centres_without(
        &self,
        points: &[Vec<f32>],
        left_out: impl Fn(usize) -> bool,
    ) -> Vec<Vec<f32>> {
        let mut minus: Vec<Option<(Vec<f32>, usize)>> = vec![None; self.centres.len()];
        for (i, &a) in self.assign.iter().enumerate() {
            if !left_out(i) {
                continue;
            }
            let p = normalised(&points[i]);
            let (sum, n) = minus[a].get_or_insert_with(|| (vec![0.0; p.len()], 0));
            for (s, v) in sum.iter_mut().zip(&p) {
                *s += v;
            }
            *n += 1;
        }
        self.centres
            .iter()
            .enumerate()
            .filter(|&(j, _)| self.counts[j] > 0)
            .filter_map(|(j, c)| match &minus[j] {
                None => Some(c.clone()),
                Some((_, n)) if *n == self.counts[j] => None,
                Some((sum, _)) => {
                    let rest: Vec<f32> = self.sums[j].iter().zip(sum).map(|(a, b)| a - b).collect();
                    Some(normalised(&rest))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_separated_clusters() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let dirs = [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let pts: Vec<Vec<f32>> = (0..90)
            .map(|i| {
                let d = dirs[i % 3];
                d.iter().map(|v| v + rng.gen_range(-0.05..0.05)).collect()
            })
            .collect();
        let c = spherical_kmeans(&pts, 3, 7, 50);
        assert_eq!(c.len(), 3);
        for d in dirs {
            assert!(
                sonitor_core::score::min_cosine_distance(&d, &c) < 0.01,
                "{c:?}"
            );
        }
        // Deterministic.
        assert_eq!(c, spherical_kmeans(&pts, 3, 7, 50));
    }

    #[test]
    fn leaving_points_out_remakes_their_centres_from_the_rest() {
        // Two clusters: around x (points 0-2, point 0 alone from "clip" A, 1-2 from B) and around y (3-4, both
        // from A).
        let pts = vec![
            vec![1.0, 0.1, 0.0],
            vec![1.0, -0.1, 0.0],
            vec![1.0, 0.0, 0.2],
            vec![0.0, 1.0, 0.1],
            vec![0.1, 1.0, 0.0],
        ];
        let centres = spherical_kmeans(&pts, 2, 1, 50);
        assert_eq!(centres.len(), 2);
        let lo = LeaveOut::new(&centres, &pts);
        // Nothing left out: the same centres.
        assert_eq!(lo.centres_without(&pts, |_| false), centres);
        // Clip A (points 0, 3, 4) out: y's cluster is gone, x's is the normalised sum of points 1 and 2.
        let without_a = lo.centres_without(&pts, |i| [0, 3, 4].contains(&i));
        let mut want = vec![0.0f32; 3];
        for p in [&pts[1], &pts[2]] {
            for (w, v) in want.iter_mut().zip(normalised(p)) {
                *w += v;
            }
        }
        assert_eq!(without_a.len(), 1);
        for (a, b) in without_a[0].iter().zip(normalised(&want)) {
            assert!((a - b).abs() < 1e-6, "{without_a:?}");
        }
        // Every point its own centre (k larger than the points): leaving one out drops exactly its centre.
        let own = spherical_kmeans(&pts, 16, 1, 50);
        let lo = LeaveOut::new(&own, &pts);
        let without_2 = lo.centres_without(&pts, |i| i == 2);
        assert_eq!(without_2.len(), 4);
        assert!(!without_2.contains(&normalised(&pts[2])));
    }

    #[test]
    fn few_points_are_their_own_centres() {
        let pts = vec![vec![2.0, 0.0], vec![0.0, 3.0]];
        let c = spherical_kmeans(&pts, 16, 0, 10);
        assert_eq!(c, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(
            sonitor_core::score::min_cosine_distance(&[1.0, 0.0], &c),
            0.0
        );
    }
}
