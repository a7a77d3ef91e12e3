//! From a machine signal to a recorded clip: room, background, microphone, level.
//!
//! 1. **Room.** The machine is heard through a room: the dry signal plus a Schroeder reverberator's tail.
//!    The *source* domain is a close microphone in a modest room (RT60 0.25–0.4 s, reverberant part 8–14 dB
//!    below the direct sound); the *target* domain is a microphone farther away in a more reverberant hall
//!    (RT60 0.5–0.7 s, reverberant part 2–5 dB below direct, darker tail).
//! 2. **Background.** The factory background ([`super::background`]) is added at a per-clip SNR drawn
//!    uniformly in [`SNR_RANGE_DB`] (machine RMS vs background RMS over the clip), the same range in both
//!    domains.
//! 3. **Microphone.** Source: a flat microphone with a small random tilt (±0.7 dB above 3 kHz). Target: a
//!    different microphone and mounting — about −5 dB above 2.5 kHz and +3 dB below 200 Hz.
//! 4. **Level.** Every clip is scaled to a fixed RMS ([`TARGET_RMS`], −23 dBFS) times a random ±1.5 dB
//!    gain. Loudness therefore carries no information about the label: a fault changes the *timbre* of a
//!    clip, not its level (a detector cannot win by measuring energy). If a clip's peak would exceed
//!    [`PEAK_LIMIT`] it is scaled down instead (counted and reported; rare — impulsive press clips at high SNR).
//!
//! The generator renders [`PREROLL`] extra seconds before each clip and drops them, so reverberation tails and
//! filter states are already settled at the first sample.

use rand_chacha::ChaCha8Rng;
use sonitor_core::dcase::Domain;

use super::background::Background;
use super::dsp::{self, db, gauss, range, Biquad, Reverb};

/// Per-clip SNR range (machine vs background), dB.
pub const SNR_RANGE_DB: (f64, f64) = (-6.0, 6.0);

/// RMS of every written clip before the random ±1.5 dB gain (−23 dBFS).
pub const TARGET_RMS: f32 = 0.07;

/// Largest allowed sample magnitude.
pub const PEAK_LIMIT: f32 = 0.9;

/// Seconds rendered before each clip and discarded.
pub const PREROLL: f64 = 0.375;

/// The acoustics of a domain.
#[derive(Debug, Clone, Copy)]
struct Acoustics {
    rt60: (f64, f64),
    wet_db: (f64, f64),
    damp: f32,
    /// High shelf (corner Hz, mean dB, sd dB) of the microphone.
    high_shelf: (f64, f64, f64),
    /// Low shelf (corner Hz, mean dB, sd dB) of the microphone.
    low_shelf: (f64, f64, f64),
}

const SOURCE: Acoustics = Acoustics {
    rt60: (0.25, 0.4),
    wet_db: (-14.0, -8.0),
    damp: 0.3,
    high_shelf: (3000.0, 0.0, 0.7),
    low_shelf: (200.0, 0.0, 0.5),
};

const TARGET: Acoustics = Acoustics {
    rt60: (0.5, 0.7),
    wet_db: (-5.0, -2.0),
    damp: 0.5,
    high_shelf: (2500.0, -5.0, 0.7),
    low_shelf: (200.0, 3.0, 0.5),
};

/// A finished clip.
#[derive(Debug, Clone)]
pub struct Recording {
    pub samples: Vec<f32>,
    pub snr_db: f64,
    /// Whether the peak limit, not the RMS target, set the level.
    pub peak_limited: bool,
}

/// Records `machine` (`preroll + n` samples, any level) in the domain's room with background; returns `n`
/// samples.
pub fn record(
    machine: &[f32],
    preroll: usize,
    background: &Background,
    domain: Domain,
    rng: &mut ChaCha8Rng,
) -> Recording {
    let ac = match domain {
        Domain::Source => SOURCE,
        Domain::Target => TARGET,
    };
    let total = machine.len();
    let n = total.saturating_sub(preroll);

    // Room.
    let mut reverb = Reverb::new(range(rng, ac.rt60.0, ac.rt60.1), ac.damp);
    let mut wet = reverb.process(machine);
    let (dry_rms, wet_rms) = (dsp::rms(&machine[preroll..]), dsp::rms(&wet[preroll..]));
    let wet_gain = if wet_rms > 1e-12 {
        db(range(rng, ac.wet_db.0, ac.wet_db.1)) * dry_rms / wet_rms
    } else {
        0.0
    };
    wet.iter_mut()
        .zip(machine)
        .for_each(|(w, &d)| *w = d + wet_gain * *w);
    let mut x = wet;
    let m_rms = dsp::rms(&x[preroll..]).max(1e-12);
    x.iter_mut().for_each(|v| *v /= m_rms);

    // Background at the clip's SNR.
    let snr_db = range(rng, SNR_RANGE_DB.0, SNR_RANGE_DB.1);
    let bg = background.render(total, rng);
    let bg_rms = dsp::rms(&bg[preroll..]).max(1e-12);
    dsp::add_scaled(&mut x, &bg, db(-snr_db) / bg_rms);

    // Microphone.
    let hs = Biquad::high_shelf(
        ac.high_shelf.0,
        ac.high_shelf.1 + ac.high_shelf.2 * gauss(rng),
    );
    let ls = Biquad::low_shelf(ac.low_shelf.0, ac.low_shelf.1 + ac.low_shelf.2 * gauss(rng));
    dsp::filter(&mut x, &[hs, ls, Biquad::highpass(20.0, 0.7)]);

    // Level.
    let mut out = x.split_off(preroll.min(x.len()));
    out.truncate(n);
    dsp::remove_dc(&mut out);
    dsp::normalize_rms(&mut out, TARGET_RMS * db(range(rng, -1.5, 1.5)));
    let p = dsp::peak(&out);
    let peak_limited = p > PEAK_LIMIT;
    if peak_limited {
        let g = PEAK_LIMIT / p;
        out.iter_mut().for_each(|v| *v *= g);
    }
    Recording {
        samples: out,
        snr_db,
        peak_limited,
    }
}
