//! The power spectrum `|X[k]|²`, `k = 0..=n/2`, of a real signal of length `n`: what the features need of each
//! STFT frame and of the whole window.
//!
//! For an even `n` this is realfft's `RealToComplexEven` — a complex FFT of length `n/2` over the samples taken
//! in pairs, then a post-processing pass that separates the two halves with twiddle factors — with the
//! post-processing written eight bins at a time and fused with the squared magnitude. realfft runs that pass
//! one bin at a time, and it took about as long as the FFT itself. The arithmetic is realfft's, operation for
//! operation and in the same order, so the values are the same to the bit (tested against realfft). An odd `n`
//! goes through realfft.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Bins post-processed together (one vector lane each).
const LANES: usize = 8;

pub struct PowerSpectrum {
    n: usize,
    path: Path,
}

enum Path {
    Even {
        fft: Arc<dyn rustfft::Fft<f32>>,
        /// realfft's twiddles: `e^{-2πik/n} / 2` for `k = 1..` (computed as realfft computes them).
        twiddles: Vec<Complex<f32>>,
        /// The signal's samples in pairs, `x[2i] + i·x[2i+1]`.
        packed: Vec<Complex<f32>>,
        /// Their FFT.
        z: Vec<Complex<f32>>,
        scratch: Vec<Complex<f32>>,
    },
    Odd {
        r2c: Arc<dyn RealToComplex<f32>>,
        input: Vec<f32>,
        spectrum: Vec<Complex<f32>>,
        scratch: Vec<Complex<f32>>,
    },
}

impl PowerSpectrum {
    /// Plans the transform of length `n` (at least 1) with `planner` (which caches plans of equal lengths).
    pub fn new(n: usize, planner: &mut RealFftPlanner<f32>) -> Self {
        let path = if n.is_multiple_of(2) {
            let m = n / 2;
            let fft = rustfft::FftPlanner::<f32>::new().plan_fft_forward(m);
            let twiddle_count = if n.is_multiple_of(4) {
                n / 4
            } else {
                n / 4 + 1
            };
            let twiddles = (1..twiddle_count)
                .map(|i| {
                    let angle = -2f64 * std::f64::consts::PI / n as f64 * i as f64;
                    Complex::new(angle.cos() as f32, angle.sin() as f32) * 0.5f32
                })
                .collect();
            Path::Even {
                scratch: vec![Complex::default(); fft.get_outofplace_scratch_len()],
                packed: vec![Complex::default(); m],
                z: vec![Complex::default(); m],
                fft,
                twiddles,
            }
        } else {
            let r2c = planner.plan_fft_forward(n);
            Path::Odd {
                input: r2c.make_input_vec(),
                spectrum: r2c.make_output_vec(),
                scratch: r2c.make_scratch_vec(),
                r2c,
            }
        };
        Self { n, path }
    }

    /// `|X[k]|²` of `signal` (`n` samples), each sample first multiplied by `window`'s when one is given, into
    /// `power[k]`, `k = 0..=n/2` (`power` holds `n/2 + 1` values). Other lengths leave `power` as it was (the
    /// callers' lengths are fixed when they are built).
    pub fn process(&mut self, signal: &[f32], window: Option<&[f32]>, power: &mut [f32]) {
        if signal.len() != self.n
            || power.len() != self.n / 2 + 1
            || window.is_some_and(|w| w.len() != self.n)
        {
            return;
        }
        match &mut self.path {
            Path::Even {
                fft,
                twiddles,
                packed,
                z,
                scratch,
            } => {
                match window {
                    Some(w) => {
                        for ((c, x), w) in packed
                            .iter_mut()
                            .zip(signal.chunks_exact(2))
                            .zip(w.chunks_exact(2))
                        {
                            *c = Complex::new(x[0] * w[0], x[1] * w[1]);
                        }
                    }
                    None => {
                        for (c, x) in packed.iter_mut().zip(signal.chunks_exact(2)) {
                            *c = Complex::new(x[0], x[1]);
                        }
                    }
                }
                fft.process_outofplace_with_scratch(packed, z, scratch);
                post_process_power(z, twiddles, power);
            }
            Path::Odd {
                r2c,
                input,
                spectrum,
                scratch,
            } => {
                input.copy_from_slice(signal);
                if let Some(w) = window {
                    input.iter_mut().zip(w).for_each(|(x, w)| *x *= w);
                }
                // Lengths are fixed by construction; the transform cannot fail.
                let _ = r2c.process_with_scratch(input, spectrum, scratch);
                for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                    *p = c.re * c.re + c.im * c.im;
                }
            }
        }
    }
}

/// realfft's even-length post-processing of `z` (the FFT of the samples in pairs, `m` values), fused with
/// `|X|²`, into `power` (`m + 1` values). Bin `k` and bin `m − k` come from the same two values of `z`.
fn post_process_power(z: &[Complex<f32>], twiddles: &[Complex<f32>], power: &mut [f32]) {
    let m = z.len();
    let (first, last) = (z[0].re + z[0].im, z[0].re - z[0].im);
    power[0] = first * first;
    power[m] = last * last;
    // Bins 1..=pairs with their mirrors m-1..=m-pairs; for an even m the centre bin m/2 is left.
    let pairs = m.div_ceil(2).saturating_sub(1);
    let mut k = 1;
    while k + LANES <= pairs + 1 {
        // Fixed-size views, so that the loop below has no bounds checks and vectorises.
        let (Ok(lo), Ok(hi), Ok(tw)) = (
            <&[Complex<f32>; LANES]>::try_from(&z[k..k + LANES]),
            <&[Complex<f32>; LANES]>::try_from(&z[m + 1 - k - LANES..m + 1 - k]),
            <&[Complex<f32>; LANES]>::try_from(&twiddles[k - 1..k - 1 + LANES]),
        ) else {
            break; // cannot happen (the slices have LANES values); the loop below finishes the bins
        };
        let (mut p, mut q) = ([0f32; LANES], [0f32; LANES]);
        for j in 0..LANES {
            (p[j], q[j]) = pair_power(lo[j], hi[LANES - 1 - j], tw[j]);
        }
        let (below, above) = power.split_at_mut(m + 1 - k - LANES);
        below[k..k + LANES].copy_from_slice(&p);
        for (dst, &v) in above[..LANES].iter_mut().zip(q.iter().rev()) {
            *dst = v;
        }
        k += LANES;
    }
    while k <= pairs {
        (power[k], power[m - k]) = pair_power(z[k], z[m - k], twiddles[k - 1]);
        k += 1;
    }
    if m.is_multiple_of(2) && m > 0 {
        // realfft negates the centre's imaginary part; squared, the sign does not matter.
        let c = z[m / 2];
        power[m / 2] = c.re * c.re + (-c.im) * (-c.im);
    }
}

/// `(|X[k]|², |X[m−k]|²)` from `a = z[k]`, `b = z[m−k]` and bin `k`'s twiddle: realfft's expressions.
#[inline(always)]
fn pair_power(a: Complex<f32>, b: Complex<f32>, t: Complex<f32>) -> (f32, f32) {
    let sum = a + b;
    let diff = a - b;
    let half_sum_re = 0.5 * sum.re;
    let half_diff_im = 0.5 * diff.im;
    let twiddled_re = sum.im * t.re + diff.re * t.im;
    let twiddled_im = sum.im * t.im - diff.re * t.re;
    let (xr, xi) = (half_sum_re + twiddled_re, half_diff_im + twiddled_im);
    let (yr, yi) = (half_sum_re - twiddled_re, twiddled_im - half_diff_im);
    (xr * xr + xi * xi, yr * yr + yi * yi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic, broadband, with a wide dynamic range.
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (h as f32 / (1 << 24) as f32 - 0.5)
                    * (1.0 + 100.0 * ((i as f32) * 0.013).sin().abs())
            })
            .collect()
    }

    #[test]
    fn equals_realfft_to_the_bit() {
        let mut planner = RealFftPlanner::<f32>::new();
        // Even lengths with n/2 even and odd, the features' sizes, the smallest; odd lengths (realfft itself).
        for n in [2, 4, 6, 18, 30, 64, 1024, 1026, 4096, 32_000, 7, 1023] {
            let mut ps = PowerSpectrum::new(n, &mut planner);
            let r2c = planner.plan_fft_forward(n);
            for seed in 0..3 {
                let x = signal(n, seed);
                let mut input = x.clone();
                let mut spec = r2c.make_output_vec();
                r2c.process(&mut input, &mut spec).unwrap();
                let want: Vec<f32> = spec.iter().map(|c| c.re * c.re + c.im * c.im).collect();
                let mut got = vec![f32::NAN; n / 2 + 1];
                ps.process(&x, None, &mut got);
                let differ = want
                    .iter()
                    .zip(&got)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differ, 0, "n = {n}, seed {seed}: {differ} bins differ");
                // With a window: the same as windowing first.
                let w = signal(n, seed + 10);
                let windowed: Vec<f32> = x.iter().zip(&w).map(|(a, b)| a * b).collect();
                let mut plain = vec![f32::NAN; n / 2 + 1];
                ps.process(&windowed, None, &mut plain);
                ps.process(&x, Some(&w), &mut got);
                assert!(
                    plain
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "n = {n}"
                );
            }
        }
    }
}
