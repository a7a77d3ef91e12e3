//! Small, allocation-light DSP building blocks for the machine models.
//!
//! - [`Rotor`]: the angle of a shaft whose speed wanders slowly; it synthesises *orders* (components locked
//!   to the shaft angle: `sin(k·θ(t) + φ)` for any real order `k`), which is how rotating machines radiate
//!   (shaft harmonics, blade pass, vane pass, gear mesh, bearing defect frequencies are all orders).
//!   Sinusoids are generated with a complex rotator that is re-anchored to the exact phase every
//!   [`BLOCK`] samples, so a component costs a complex multiply per sample, not a `sin`.
//! - [`Biquad`]: RBJ-cookbook second-order sections (low/high/band pass, peaking, shelves).
//! - [`Resonator`]: a two-pole resonator with a given frequency and decay time: the structural mode that an
//!   impact or a bearing defect rings.
//! - Noise generators (white, pink, brown), a Schroeder-style [`Reverb`] for room responses, and level helpers.
//!
//! Everything runs in `f32` with `f64` where phase or recursive-filter precision matters. Nothing here
//! panics on any input; frequencies are clamped below Nyquist.

use std::f64::consts::{PI, TAU};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Sample rate of everything the generator makes (Hz).
pub const FS: f64 = 16_000.0;

/// Components above this frequency are not synthesised (keeps every tone clear of aliasing).
pub const F_MAX: f64 = 7_400.0;

/// Samples between exact re-anchoring of the rotator phase (speed is piecewise constant over a block).
pub const BLOCK: usize = 32;

/// A uniform sample in [-1, 1).
#[inline]
pub fn uni(rng: &mut ChaCha8Rng) -> f32 {
    rng.gen::<f32>() * 2.0 - 1.0
}

/// A standard normal sample (Box–Muller; two uniforms, deterministic).
pub fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(1e-12);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// `x` dB as an amplitude ratio.
#[inline]
pub fn db(x: f64) -> f32 {
    10f64.powf(x / 20.0) as f32
}

/// A uniform value in `[lo, hi)`.
#[inline]
pub fn range(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// A random phase in [0, 2π).
#[inline]
pub fn phase(rng: &mut ChaCha8Rng) -> f64 {
    TAU * rng.gen::<f64>()
}

/// Root mean square.
pub fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let s: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (s / x.len() as f64).sqrt() as f32
}

/// Largest absolute value.
pub fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// Scales `x` to the given RMS (no-op on silence).
pub fn normalize_rms(x: &mut [f32], target: f32) {
    let r = rms(x);
    if r > 1e-12 {
        let g = target / r;
        x.iter_mut().for_each(|v| *v *= g);
    }
}

/// `dst += gain · src` over the common length.
pub fn add_scaled(dst: &mut [f32], src: &[f32], gain: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += gain * s;
    }
}

/// Removes the mean.
pub fn remove_dc(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let m = (x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64) as f32;
    x.iter_mut().for_each(|v| *v -= m);
}

/// White noise, uniform in [-1, 1).
pub fn white(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| uni(rng)).collect()
}

/// Pink (−3 dB/octave) noise: Paul Kellet's economy filter on white noise, normalised to unit RMS.
pub fn pink(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let (mut b0, mut b1, mut b2) = (0f32, 0f32, 0f32);
    let mut out: Vec<f32> = (0..n)
        .map(|_| {
            let w = uni(rng);
            b0 = 0.99765 * b0 + w * 0.099_046;
            b1 = 0.96300 * b1 + w * 0.296_516_4;
            b2 = 0.57000 * b2 + w * 1.052_691_3;
            b0 + b1 + b2 + w * 0.1848
        })
        .collect();
    remove_dc(&mut out);
    normalize_rms(&mut out, 1.0);
    out
}

/// Brown (−6 dB/octave) noise: a leaky integrator (corner ≈ 20 Hz) on white noise, unit RMS.
pub fn brown(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let leak = (-TAU * 20.0 / FS).exp() as f32;
    let mut y = 0f32;
    let mut out: Vec<f32> = (0..n)
        .map(|_| {
            y = leak * y + uni(rng);
            y
        })
        .collect();
    remove_dc(&mut out);
    normalize_rms(&mut out, 1.0);
    out
}

/// A slowly fluctuating positive envelope `1 + depth·s(t)`, `s` a sum of three random sinusoids between
/// `f_lo` and `f_hi` Hz scaled to unit peak-ish; models turbulence, flow and supply fluctuations.
pub fn slow_envelope(rng: &mut ChaCha8Rng, n: usize, f_lo: f64, f_hi: f64, depth: f32) -> Vec<f32> {
    let parts: Vec<(f64, f64)> = (0..3)
        .map(|_| (range(rng, f_lo, f_hi), phase(rng)))
        .collect();
    (0..n)
        .map(|i| {
            let t = i as f64 / FS;
            let s: f64 = parts
                .iter()
                .map(|&(f, p)| (TAU * f * t + p).sin())
                .sum::<f64>()
                / 3.0;
            (1.0 + depth as f64 * s).max(0.0) as f32
        })
        .collect()
}

/// The angle of a rotating shaft, sampled at block boundaries, with a slowly wandering speed.
#[derive(Debug, Clone)]
pub struct Rotor {
    /// Shaft angle (radians) at sample `b·BLOCK`, `b = 0..=blocks`.
    theta: Vec<f64>,
    /// Mean rotation frequency (Hz).
    pub freq: f64,
    len: usize,
}

impl Rotor {
    /// A shaft turning at `freq` Hz on average over `n` samples, whose instantaneous speed wanders by about
    /// `wander` (relative, e.g. 0.003) with a few slow (0.05–0.8 Hz) random components.
    pub fn new(rng: &mut ChaCha8Rng, n: usize, freq: f64, wander: f64) -> Rotor {
        let parts: Vec<(f64, f64, f64)> = (0..3)
            .map(|_| {
                (
                    range(rng, 0.05, 0.8),
                    phase(rng),
                    wander * range(rng, 0.5, 1.2),
                )
            })
            .collect();
        let blocks = n.div_ceil(BLOCK);
        let mut theta = Vec::with_capacity(blocks + 1);
        let mut th = phase(rng);
        theta.push(th);
        let dt = BLOCK as f64 / FS;
        for b in 0..blocks {
            let t = (b as f64 + 0.5) * dt;
            let rel: f64 = parts
                .iter()
                .map(|&(f, p, a)| a * (TAU * f * t + p).sin())
                .sum();
            th += TAU * freq * (1.0 + rel) * dt;
            theta.push(th);
        }
        Rotor {
            theta,
            freq,
            len: n,
        }
    }

    /// Number of samples the rotor covers.
    pub fn samples(&self) -> usize {
        self.len
    }

    /// Shaft angle (radians) at sample `i` (linear within a block).
    pub fn angle_at(&self, i: usize) -> f64 {
        let b = (i / BLOCK).min(self.theta.len().saturating_sub(2));
        let frac = (i - b * BLOCK) as f64 / BLOCK as f64;
        match (self.theta.get(b), self.theta.get(b + 1)) {
            (Some(a), Some(c)) => a + (c - a) * frac,
            (Some(a), None) => *a,
            _ => 0.0,
        }
    }

    /// Adds `amp · sin(order·θ(t) + ph)` to `out` (skipped when above [`F_MAX`]).
    pub fn add_order(&self, out: &mut [f32], order: f64, amp: f32, ph: f64) {
        if order * self.freq * 1.02 >= F_MAX || amp == 0.0 {
            return;
        }
        for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
            let (Some(&t0), Some(&t1)) = (self.theta.get(b), self.theta.get(b + 1)) else {
                break;
            };
            let a0 = (order * t0 + ph) % TAU;
            let d = order * (t1 - t0) / BLOCK as f64;
            let (s0, c0) = a0.sin_cos();
            let (sd, cd) = d.sin_cos();
            let (mut re, mut im) = (c0 as f32, s0 as f32);
            let (rr, ri) = (cd as f32, sd as f32);
            for x in chunk {
                *x += amp * im;
                let nre = re * rr - im * ri;
                im = re * ri + im * rr;
                re = nre;
            }
        }
    }

    /// `1 + depth · cos(order·θ(t) + ph)`: an amplitude modulation locked to the shaft.
    pub fn modulation(&self, order: f64, depth: f32, ph: f64) -> Vec<f32> {
        let mut m = vec![0.0f32; self.len];
        // cos(x) = sin(x + π/2)
        self.add_order(&mut m, order, depth, ph + PI / 2.0);
        m.iter_mut().for_each(|v| *v += 1.0);
        m
    }
}

/// Adds a sinusoid of constant frequency (mains hum and other shaft-independent tones).
pub fn add_tone(out: &mut [f32], freq: f64, amp: f32, ph: f64) {
    if freq >= F_MAX || amp == 0.0 {
        return;
    }
    let d = TAU * freq / FS;
    let (sd, cd) = d.sin_cos();
    let (rr, ri) = (cd as f32, sd as f32);
    for (b, chunk) in out.chunks_mut(BLOCK * 16).enumerate() {
        let a0 = (ph + d * (b * BLOCK * 16) as f64) % TAU;
        let (s0, c0) = a0.sin_cos();
        let (mut re, mut im) = (c0 as f32, s0 as f32);
        for x in chunk {
            *x += amp * im;
            let nre = re * rr - im * ri;
            im = re * ri + im * rr;
            re = nre;
        }
    }
}

/// A second-order IIR section (direct form II transposed, `f64` state).
#[derive(Debug, Clone, Copy)]
pub struct Biquad {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
    z1: f64,
    z2: f64,
}

fn clamp_f(f: f64) -> f64 {
    f.clamp(5.0, 0.47 * FS)
}

impl Biquad {
    fn from_raw(b0: f64, b1: f64, b2: f64, a0: f64, a1: f64, a2: f64) -> Biquad {
        Biquad {
            b0: b0 / a0,
            b1: b1 / a0,
            b2: b2 / a0,
            a1: a1 / a0,
            a2: a2 / a0,
            z1: 0.0,
            z2: 0.0,
        }
    }

    fn w(f: f64, q: f64) -> (f64, f64, f64) {
        let w0 = TAU * clamp_f(f) / FS;
        let (s, c) = w0.sin_cos();
        (s, c, s / (2.0 * q.max(0.05)))
    }

    pub fn lowpass(f: f64, q: f64) -> Biquad {
        let (_, c, al) = Self::w(f, q);
        Self::from_raw(
            (1.0 - c) / 2.0,
            1.0 - c,
            (1.0 - c) / 2.0,
            1.0 + al,
            -2.0 * c,
            1.0 - al,
        )
    }

    pub fn highpass(f: f64, q: f64) -> Biquad {
        let (_, c, al) = Self::w(f, q);
        Self::from_raw(
            (1.0 + c) / 2.0,
            -(1.0 + c),
            (1.0 + c) / 2.0,
            1.0 + al,
            -2.0 * c,
            1.0 - al,
        )
    }

    /// Band pass with 0 dB gain at the centre frequency.
    pub fn bandpass(f: f64, q: f64) -> Biquad {
        let (_, c, al) = Self::w(f, q);
        Self::from_raw(al, 0.0, -al, 1.0 + al, -2.0 * c, 1.0 - al)
    }

    /// Peaking equaliser: `gain_db` at `f`, bandwidth set by `q`.
    pub fn peaking(f: f64, q: f64, gain_db: f64) -> Biquad {
        let (_, c, al) = Self::w(f, q);
        let a = 10f64.powf(gain_db / 40.0);
        Self::from_raw(
            1.0 + al * a,
            -2.0 * c,
            1.0 - al * a,
            1.0 + al / a,
            -2.0 * c,
            1.0 - al / a,
        )
    }

    /// High shelf: `gain_db` above about `f` (slope 1).
    pub fn high_shelf(f: f64, gain_db: f64) -> Biquad {
        let a = 10f64.powf(gain_db / 40.0);
        let w0 = TAU * clamp_f(f) / FS;
        let (s, c) = w0.sin_cos();
        let al = s / 2.0 * 2f64.sqrt();
        let sa = 2.0 * a.sqrt() * al;
        Self::from_raw(
            a * ((a + 1.0) + (a - 1.0) * c + sa),
            -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
            a * ((a + 1.0) + (a - 1.0) * c - sa),
            (a + 1.0) - (a - 1.0) * c + sa,
            2.0 * ((a - 1.0) - (a + 1.0) * c),
            (a + 1.0) - (a - 1.0) * c - sa,
        )
    }

    /// Low shelf: `gain_db` below about `f` (slope 1).
    pub fn low_shelf(f: f64, gain_db: f64) -> Biquad {
        let a = 10f64.powf(gain_db / 40.0);
        let w0 = TAU * clamp_f(f) / FS;
        let (s, c) = w0.sin_cos();
        let al = s / 2.0 * 2f64.sqrt();
        let sa = 2.0 * a.sqrt() * al;
        Self::from_raw(
            a * ((a + 1.0) - (a - 1.0) * c + sa),
            2.0 * a * ((a - 1.0) - (a + 1.0) * c),
            a * ((a + 1.0) - (a - 1.0) * c - sa),
            (a + 1.0) + (a - 1.0) * c + sa,
            -2.0 * ((a - 1.0) + (a + 1.0) * c),
            (a + 1.0) + (a - 1.0) * c - sa,
        )
    }

    #[inline]
    pub fn tick(&mut self, x: f32) -> f32 {
        let x = x as f64;
        let y = self.b0 * x + self.z1;
        self.z1 = self.b1 * x - self.a1 * y + self.z2;
        self.z2 = self.b2 * x - self.a2 * y;
        y as f32
    }

    /// Filters `x` in place.
    pub fn run(&mut self, x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = self.tick(*v);
        }
    }
}

/// Filters `x` in place through a cascade of sections.
pub fn filter(x: &mut [f32], sections: &[Biquad]) {
    for s in sections {
        let mut s = *s;
        s.run(x);
    }
}

/// A two-pole resonator: impulse response ≈ `e^{-t/τ} sin(2πft)` (unit initial amplitude).
#[derive(Debug, Clone, Copy)]
pub struct Resonator {
    a1: f64,
    a2: f64,
    g: f64,
    y1: f64,
    y2: f64,
}

impl Resonator {
    /// Mode at `freq` Hz whose amplitude decays by 1/e in `tau` seconds.
    pub fn new(freq: f64, tau: f64) -> Resonator {
        let w = TAU * clamp_f(freq) / FS;
        let r = (-1.0 / (tau.max(1e-4) * FS)).exp();
        Resonator {
            a1: 2.0 * r * w.cos(),
            a2: -r * r,
            g: w.sin(),
            y1: 0.0,
            y2: 0.0,
        }
    }

    #[inline]
    pub fn tick(&mut self, x: f32) -> f32 {
        let y = self.a1 * self.y1 + self.a2 * self.y2 + self.g * x as f64;
        self.y2 = self.y1;
        self.y1 = y;
        y as f32
    }
}

/// A bank of modes `(freq, tau, gain)` excited by the same input; returns the summed response.
pub fn ring_modes(excitation: &[f32], modes: &[(f64, f64, f32)]) -> Vec<f32> {
    let mut out = vec![0.0f32; excitation.len()];
    for &(f, tau, g) in modes {
        if f >= F_MAX {
            continue;
        }
        let mut r = Resonator::new(f, tau);
        for (o, &x) in out.iter_mut().zip(excitation) {
            *o += g * r.tick(x);
        }
    }
    out
}

/// Places an impulse of amplitude `amp` at fractional sample position `t` (split over two samples).
pub fn put_impulse(buf: &mut [f32], t: f64, amp: f32) {
    if t < 0.0 {
        return;
    }
    let i = t.floor() as usize;
    let frac = (t - t.floor()) as f32;
    if let Some(v) = buf.get_mut(i) {
        *v += amp * (1.0 - frac);
    }
    if let Some(v) = buf.get_mut(i + 1) {
        *v += amp * frac;
    }
}

/// A Schroeder/Freeverb-style mono reverberator (8 damped feedback combs, 4 all-passes) tuned for 16 kHz.
#[derive(Debug, Clone)]
pub struct Reverb {
    combs: Vec<(Vec<f32>, usize, f32, f32)>,
    allpasses: Vec<(Vec<f32>, usize)>,
    damp: f32,
}

impl Reverb {
    /// A room with reverberation time `rt60` seconds; `damp` in [0, 1) darkens the tail.
    pub fn new(rt60: f64, damp: f32) -> Reverb {
        const COMBS: [usize; 8] = [405, 431, 463, 492, 516, 541, 565, 587];
        const ALLPASSES: [usize; 4] = [202, 160, 124, 82];
        let combs = COMBS
            .iter()
            .map(|&d| {
                let g = 10f64.powf(-3.0 * d as f64 / (rt60.max(0.05) * FS)) as f32;
                (vec![0.0; d], 0, g, 0.0)
            })
            .collect();
        let allpasses = ALLPASSES.iter().map(|&d| (vec![0.0; d], 0)).collect();
        Reverb {
            combs,
            allpasses,
            damp: damp.clamp(0.0, 0.95),
        }
    }

    /// The reverberant (wet) part of `x`, unit gain-ish.
    pub fn process(&mut self, x: &[f32]) -> Vec<f32> {
        let damp = self.damp;
        let mut out = Vec::with_capacity(x.len());
        for &v in x {
            let input = v * 0.015;
            let mut acc = 0.0f32;
            for (buf, pos, g, lp) in self.combs.iter_mut() {
                let y = buf[*pos];
                *lp = y * (1.0 - damp) + *lp * damp;
                buf[*pos] = input + *lp * *g;
                *pos = (*pos + 1) % buf.len();
                acc += y;
            }
            for (buf, pos) in self.allpasses.iter_mut() {
                let b = buf[*pos];
                buf[*pos] = acc + b * 0.5;
                *pos = (*pos + 1) % buf.len();
                acc = b - acc;
            }
            out.push(acc);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn band_energy(x: &[f32], f: f64) -> f64 {
        // Goertzel-free: correlate with a tone.
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            let a = TAU * f * i as f64 / FS;
            re += v as f64 * a.cos();
            im += v as f64 * a.sin();
        }
        (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn rotor_orders_land_on_the_right_frequency() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 16_000;
        let r = Rotor::new(&mut rng, n, 25.0, 0.0);
        let mut x = vec![0.0; n];
        r.add_order(&mut x, 7.0, 1.0, 0.0);
        assert!(band_energy(&x, 175.0) > 0.4);
        assert!(band_energy(&x, 150.0) < 0.02);
    }

    #[test]
    fn filters_pass_and_stop() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut x = white(&mut rng, 16_000);
        let mut lp = x.clone();
        Biquad::lowpass(500.0, 0.707).run(&mut lp);
        Biquad::highpass(2000.0, 0.707).run(&mut x);
        assert!(band_energy(&lp, 200.0) > 5.0 * band_energy(&lp, 4000.0));
        assert!(band_energy(&x, 4000.0) > 5.0 * band_energy(&x, 200.0));
    }
}
