//! The factory background shared by all machine types.
//!
//! **Real** (preferred): recordings of industrial ambience. By default the generator looks for the sound
//! effects of the Debian package `lincity-ng-data` in [`LINCITY_DIR`] (`IndustryHigh*`, `IndustryLight*`,
//! `Mill*`, `CoalMine*`, `OreMine*`, `PowerCoal*`: 11.025 kHz, 16-bit, ~4 s each). Every file is read as mono
//! (channels mixed), resampled to 16 kHz with the core's band-limited resampler, normalised to unit RMS and
//! joined with 50 ms equal-power crossfades into one circular *bed* (the end crossfades into the start). A
//! clip's background is two segments cut at random offsets from the bed (the second at a random 0.3–1×
//! gain), plus a synthetic broadband floor: the recordings stop at 5.5 kHz, and a real room never has an
//! empty top octave.
//!
//! **Synthetic** (`--background none`, or no recordings found): pink and brown noise in random proportion,
//! distant mains hum (100 Hz and harmonics of 50 Hz), a few distant machine tones with slow beating, and
//! occasional distant impacts (Poisson, low-passed, reverberant).
//!
//! Either way a background is returned at unit RMS; the scene mixes it at the clip's SNR.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sonitor_core::audio::{load_mono, ChannelSelect};

use super::dsp::{self, db, gauss, phase, range, Biquad};

/// Where `lincity-ng-data` installs its sound effects.
pub const LINCITY_DIR: &str = "/usr/share/games/lincity-ng/sounds";

/// File-name prefixes of the industrial recordings used from a background directory.
pub const INDUSTRIAL_PREFIXES: [&str; 6] = [
    "IndustryHigh",
    "IndustryLight",
    "Mill",
    "CoalMine",
    "OreMine",
    "PowerCoal",
];

/// Which background the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundChoice {
    /// Real recordings from [`LINCITY_DIR`] when present, else synthetic.
    Auto,
    /// Synthetic factory noise only.
    Synthetic,
    /// Real recordings from this directory (an error if none is usable).
    Dir(PathBuf),
}

impl BackgroundChoice {
    /// Parses `auto`, `none` (or `synthetic`), or a directory.
    pub fn parse(s: &str) -> BackgroundChoice {
        match s.trim() {
            "auto" => BackgroundChoice::Auto,
            "none" | "synthetic" => BackgroundChoice::Synthetic,
            other => BackgroundChoice::Dir(PathBuf::from(other)),
        }
    }
}

/// What was actually used (recorded in `synth.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackgroundUsed {
    Recordings {
        dir: String,
        files: Vec<String>,
        seconds: f64,
    },
    Synthetic {
        reason: String,
    },
}

impl std::fmt::Display for BackgroundUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackgroundUsed::Recordings { dir, files, seconds } => write!(
                f,
                "real recordings: {} files ({seconds:.1} s) from {dir}, plus a synthetic broadband floor",
                files.len()
            ),
            BackgroundUsed::Synthetic { reason } => write!(f, "synthetic factory noise ({reason})"),
        }
    }
}

/// A loaded background source.
#[derive(Debug, Clone)]
pub struct Background {
    /// The circular bed of recordings (empty: synthetic).
    bed: Vec<f32>,
    pub used: BackgroundUsed,
}

/// The WAV files of a directory given with `--background DIR`; none is an error.
fn chosen_recordings(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = recordings_in(dir)?;
    anyhow::ensure!(
        !files.is_empty(),
        "background directory {} has no WAV files",
        dir.display()
    );
    Ok(files)
}

/// The usable recordings in `dir`, sorted: files with an industrial prefix, or every `.wav` if none has one.
fn recordings_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read background directory {}", dir.display()))?;
    let mut wavs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
        })
        .collect();
    wavs.sort();
    let industrial: Vec<PathBuf> = wavs
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| INDUSTRIAL_PREFIXES.iter().any(|pre| n.starts_with(pre)))
        })
        .cloned()
        .collect();
    Ok(if industrial.is_empty() {
        wavs
    } else {
        industrial
    })
}

const XFADE: usize = 800; // 50 ms at 16 kHz

/// Appends `seg` to `bed` with an equal-power crossfade of `XFADE` samples.
fn append_crossfaded(bed: &mut Vec<f32>, seg: &[f32]) {
    let x = XFADE.min(bed.len()).min(seg.len() / 2);
    let start = bed.len() - x;
    for i in 0..x {
        let a = (i as f32 + 0.5) / x as f32 * std::f32::consts::FRAC_PI_2;
        bed[start + i] = bed[start + i] * a.cos() + seg[i] * a.sin();
    }
    bed.extend_from_slice(&seg[x..]);
}

impl Background {
    /// Refuses a `--background DIR` that cannot be read or holds no WAV files: what [`Self::load`] would refuse,
    /// checked before `synth` prints its plan.
    pub fn check(choice: &BackgroundChoice) -> anyhow::Result<()> {
        if let BackgroundChoice::Dir(dir) = choice {
            chosen_recordings(dir)?;
        }
        Ok(())
    }

    /// Loads the requested background. `Auto` falls back to synthetic (and says why) when no recording is
    /// found; an explicit directory without usable recordings is an error.
    pub fn load(choice: &BackgroundChoice) -> anyhow::Result<Background> {
        let (dir, files) = match choice {
            BackgroundChoice::Synthetic => {
                return Ok(Background::synthetic("requested with --background none"));
            }
            BackgroundChoice::Auto => {
                let d = PathBuf::from(LINCITY_DIR);
                if !d.is_dir() {
                    return Ok(Background::synthetic(&format!(
                        "{LINCITY_DIR} not found; install the Debian package lincity-ng-data for real recordings"
                    )));
                }
                let files = recordings_in(&d)?;
                if files.is_empty() {
                    return Ok(Background::synthetic(&format!(
                        "no WAV files in {}",
                        d.display()
                    )));
                }
                (d, files)
            }
            BackgroundChoice::Dir(d) => (d.clone(), chosen_recordings(d)?),
        };
        let mut bed: Vec<f32> = Vec::new();
        let mut names = Vec::new();
        for f in &files {
            let mut s = load_mono(f, ChannelSelect::Mix, dsp::FS as u32)
                .with_context(|| format!("cannot load background recording {}", f.display()))?;
            if s.len() < 4 * XFADE {
                continue;
            }
            dsp::remove_dc(&mut s);
            if dsp::rms(&s) < 1e-5 {
                continue;
            }
            dsp::normalize_rms(&mut s, 1.0);
            append_crossfaded(&mut bed, &s);
            names.push(
                f.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        if bed.len() < 8 * XFADE {
            if *choice == BackgroundChoice::Auto {
                return Ok(Background::synthetic(&format!(
                    "no usable recordings in {}",
                    dir.display()
                )));
            }
            anyhow::bail!(
                "background directory {} has no usable recordings",
                dir.display()
            );
        }
        // Make the bed circular: crossfade its tail into its head.
        let tail: Vec<f32> = bed.split_off(bed.len() - XFADE);
        for (i, &v) in tail.iter().enumerate() {
            let a = (i as f32 + 0.5) / XFADE as f32 * std::f32::consts::FRAC_PI_2;
            bed[i] = v * a.cos() + bed[i] * a.sin();
        }
        let seconds = (bed.len() as f64 / dsp::FS * 10.0).round() / 10.0;
        Ok(Background {
            bed,
            used: BackgroundUsed::Recordings {
                dir: dir.display().to_string(),
                files: names,
                seconds,
            },
        })
    }

    pub fn synthetic(reason: &str) -> Background {
        Background {
            bed: Vec::new(),
            used: BackgroundUsed::Synthetic {
                reason: reason.to_string(),
            },
        }
    }

    /// `n` samples of background at unit RMS.
    pub fn render(&self, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut out = if self.bed.is_empty() {
            synthetic_factory(n, rng)
        } else {
            let mut x = vec![0.0f32; n];
            for gain in [1.0f32, range(rng, 0.3, 1.0) as f32] {
                let off = rng.gen_range(0..self.bed.len());
                for (i, v) in x.iter_mut().enumerate() {
                    *v += gain * self.bed[(off + i) % self.bed.len()];
                }
            }
            dsp::normalize_rms(&mut x, 1.0);
            // Broadband floor (the recordings have nothing above 5.5 kHz).
            let mut floor = dsp::pink(rng, n);
            dsp::filter(&mut floor, &[Biquad::highpass(200.0, 0.7)]);
            dsp::add_scaled(&mut x, &floor, db(range(rng, -20.0, -14.0)));
            x
        };
        dsp::remove_dc(&mut out);
        dsp::normalize_rms(&mut out, 1.0);
        out
    }
}

/// Synthetic factory ambience (see the module docs). Unit RMS.
fn synthetic_factory(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x = dsp::pink(rng, n);
    let brown = dsp::brown(rng, n);
    dsp::add_scaled(&mut x, &brown, db(range(rng, -6.0, 3.0)));
    dsp::filter(&mut x, &[Biquad::highpass(20.0, 0.7)]);
    dsp::normalize_rms(&mut x, 1.0);

    let mut tones = vec![0.0f32; n];
    let mains = 50.0 * (1.0 + 0.001 * gauss(rng));
    for (k, a) in [(2.0, 1.0), (4.0, 0.4), (6.0, 0.25), (3.0, 0.15)] {
        dsp::add_tone(&mut tones, mains * k, a * db(3.0 * gauss(rng)), phase(rng));
    }
    // Distant machines: a few tones with slow beating.
    for _ in 0..rng.gen_range(2..=4) {
        let f = range(rng, 150.0, 900.0);
        let mut t = vec![0.0f32; n];
        dsp::add_tone(&mut t, f, 0.5 * db(3.0 * gauss(rng)), phase(rng));
        dsp::add_tone(&mut t, f * range(rng, 1.002, 1.01), 0.3, phase(rng));
        dsp::add_scaled(&mut tones, &t, 1.0);
    }
    dsp::normalize_rms(&mut tones, 1.0);
    dsp::add_scaled(&mut x, &tones, db(range(rng, -12.0, -4.0)));

    // Distant impacts.
    let rate = range(rng, 0.3, 2.0);
    let mut exc = vec![0.0f32; n];
    let mut t = -dsp::FS / rate * (1.0 - rng.gen::<f64>()).ln();
    while (t as usize) < n {
        dsp::put_impulse(&mut exc, t, db(6.0 * gauss(rng)));
        t += -dsp::FS / rate * (1.0 - rng.gen::<f64>()).ln();
    }
    let mut thuds = dsp::ring_modes(
        &exc,
        &[
            (range(rng, 120.0, 250.0), 0.12, 1.0),
            (range(rng, 400.0, 700.0), 0.08, 0.6),
            (range(rng, 1000.0, 1600.0), 0.05, 0.3),
        ],
    );
    dsp::filter(&mut thuds, &[Biquad::lowpass(1500.0, 0.7)]);
    let r = dsp::rms(&thuds);
    if r > 1e-9 {
        let g = db(range(rng, -10.0, -3.0)) / r;
        dsp::add_scaled(&mut x, &thuds, g);
    }
    x
}
