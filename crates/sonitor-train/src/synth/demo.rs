//! `sonitor-train synth-demo`: one long recording of one machine for `sonitor demo` — running normally, then a
//! fault that develops (its severity rises segment by segment), then normal again (repaired) — with a JSON
//! timeline beside it that says when the fault is audible.
//!
//! One machine (the sound model of the data set, in the first source-domain operating condition of its type) is
//! rendered continuously for the whole recording, once running normally and once with the fault, from the same
//! seed; the faulty render is mixed in with a weight that rises segment by segment ([`SEGMENT_SECONDS`]) while
//! the fault develops and falls back to 0 at the repair, always easing over [`CROSSFADE_SECONDS`]. The whole is
//! then recorded once (one room, one background, one microphone, as one source-domain clip of the data set), so
//! neither the level nor the room jumps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sonitor_core::dcase::Domain;

use super::background::{Background, BackgroundChoice};
use super::faults::{Fault, FaultKind, DEFAULT_DIFFICULTY};
use super::machines::{self, MachineType};
use super::{scene, splitmix64, GENERATOR, GENERATOR_VERSION, SAMPLE_RATE, SECTION};

/// Length of one rendered segment.
pub const SEGMENT_SECONDS: f64 = 2.0;
/// How long the mix takes to move from one segment's fault weight to the next one's.
pub const CROSSFADE_SECONDS: f64 = 0.25;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// WAV file to write; the timeline goes beside it with the extension `.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Machine type (fan, pump, gearbox, bearing, press).
    #[arg(long = "type", default_value = "fan")]
    pub machine_type: String,
    /// Fault kind (default: the type's first).
    #[arg(long)]
    pub fault: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of normal running before the fault.
    #[arg(long, default_value_t = 20.0)]
    pub before: f64,
    /// Seconds of the developing fault.
    #[arg(long, default_value_t = 24.0)]
    pub fault_seconds: f64,
    /// Seconds of normal running after the repair.
    #[arg(long, default_value_t = 16.0)]
    pub after: f64,
    /// Severity of the fault's first segment; it rises linearly to --severity-to over the fault. (The fault is
    /// rendered at --severity-to and mixed in with the weight severity / --severity-to.)
    #[arg(long, default_value_t = 0.3)]
    pub severity_from: f64,
    #[arg(long, default_value_t = 1.0)]
    pub severity_to: f64,
    /// Factory background, as for `synth`.
    #[arg(long, default_value = "auto")]
    pub background: String,
    /// As for `synth`.
    #[arg(long, default_value_t = DEFAULT_DIFFICULTY)]
    pub difficulty: f64,
}

/// One segment of the recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    /// 0 for normal running.
    pub severity: f64,
}

/// The timeline written beside the recording (`demo.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub generator: String,
    pub version: u32,
    pub seed: u64,
    pub machine_type: String,
    /// `"<type>/section_SS"`, as a bundle's section key.
    pub section: String,
    pub attributes: String,
    pub fault: String,
    pub sample_rate: u32,
    pub duration_s: f64,
    /// The fault is audible in `[fault_start_s, fault_end_s)`.
    pub fault_start_s: f64,
    pub fault_end_s: f64,
    pub segments: Vec<Segment>,
    pub background: String,
    pub difficulty: f64,
}

fn segments(before: f64, fault: f64, after: f64, from: f64, to: f64) -> Vec<Segment> {
    let n = |s: f64| (s / SEGMENT_SECONDS).round().max(0.0) as usize;
    let (nb, nf, na) = (n(before), n(fault), n(after));
    (0..nb + nf + na)
        .map(|i| {
            let severity = if i < nb || i >= nb + nf {
                0.0
            } else if nf == 1 {
                to
            } else {
                from + (to - from) * (i - nb) as f64 / (nf - 1) as f64
            };
            Segment {
                start_s: i as f64 * SEGMENT_SECONDS,
                end_s: (i + 1) as f64 * SEGMENT_SECONDS,
                severity,
            }
        })
        .collect()
}

/// Renders the recording and its timeline (no I/O besides loading the background).
pub fn render(a: &DemoArgs) -> anyhow::Result<(Vec<f32>, Timeline)> {
    let Some(machine) = MachineType::parse(&a.machine_type) else {
        let known: Vec<&str> = MachineType::ALL.iter().map(|t| t.name()).collect();
        bail!(
            "unknown machine type '{}' (known: {})",
            a.machine_type,
            known.join(", ")
        );
    };
    let kinds = machine.faults();
    let kind: FaultKind = match &a.fault {
        None => kinds[0],
        Some(f) => *kinds
            .iter()
            .find(|k| k.name() == f.trim())
            .with_context(|| {
                let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                format!("--fault {f}: a {} has {}", machine.name(), names.join(", "))
            })?,
    };
    for (name, v) in [
        ("--before", a.before),
        ("--fault-seconds", a.fault_seconds),
        ("--after", a.after),
    ] {
        if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
            bail!("{name} {v}: seconds between 0 and 3600");
        }
    }
    if a.fault_seconds < SEGMENT_SECONDS {
        bail!(
            "--fault-seconds {}: at least {SEGMENT_SECONDS}",
            a.fault_seconds
        );
    }
    for (name, v) in [
        ("--severity-from", a.severity_from),
        ("--severity-to", a.severity_to),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            bail!("{name} {v}: a severity in (0, 1]");
        }
    }
    if !(a.difficulty.is_finite() && (0.0..=1.0).contains(&a.difficulty)) {
        bail!("--difficulty {} must be between 0 and 1", a.difficulty);
    }
    let bg = Background::load(&BackgroundChoice::parse(&a.background))?;
    let segs = segments(
        a.before,
        a.fault_seconds,
        a.after,
        a.severity_from,
        a.severity_to,
    );
    let attrs = machine.combos(Domain::Source).swap_remove(0);
    let sr = SAMPLE_RATE as f64;
    let seg_n = (SEGMENT_SECONDS * sr).round() as usize;
    let pre = (scene::PREROLL * sr).round() as usize;
    let total = seg_n * segs.len();
    // One machine, rendered continuously twice from the same seed: running normally, and with the fault at its
    // final severity. The recording is the normal render, with the faulty one cross-faded in while the fault
    // develops (weight = the segment's severity / the final one, eased between segments) and out at the repair.
    // The normal stretches are thus one continuous sound, with no seams for the model to find.
    let seed = splitmix64(a.seed ^ 0x4445_4d4f);
    let normal = machine.render(
        &attrs,
        None,
        pre + total,
        &mut ChaCha8Rng::seed_from_u64(seed),
    );
    let faulty = machine.render(
        &attrs,
        Some(&Fault::new(kind, a.severity_to, a.difficulty)),
        pre + total,
        &mut ChaCha8Rng::seed_from_u64(seed),
    );
    let weight_at = |i: usize| -> f32 {
        let seg = i.saturating_sub(pre) / seg_n;
        segs.get(seg)
            .map_or(0.0, |s| (s.severity / a.severity_to) as f32)
    };
    let xf = (CROSSFADE_SECONDS * sr).round() as usize;
    let mut x = Vec::with_capacity(pre + total);
    let mut w = 0.0f32;
    for i in 0..pre + total {
        // Move towards the segment's weight over `xf` samples (a linear ease, no steps).
        let target = weight_at(i);
        let step = 1.0 / xf.max(1) as f32;
        w = if w < target {
            (w + step).min(target)
        } else {
            (w - step).max(target)
        };
        x.push((1.0 - w) * normal[i] + w * faulty[i]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(a.seed ^ 0x0053_4345_4e45));
    let rec = scene::record(&x, pre, &bg, Domain::Source, &mut rng);
    let nb = segs.iter().take_while(|s| s.severity == 0.0).count();
    let nf = segs[nb..].iter().take_while(|s| s.severity > 0.0).count();
    let timeline = Timeline {
        generator: GENERATOR.into(),
        version: GENERATOR_VERSION,
        seed: a.seed,
        machine_type: machine.name().into(),
        section: sonitor_core::bundle::section_key(machine.name(), SECTION),
        attributes: machines::attr_string(&attrs),
        fault: kind.name().into(),
        sample_rate: SAMPLE_RATE,
        duration_s: total as f64 / sr,
        fault_start_s: nb as f64 * SEGMENT_SECONDS,
        fault_end_s: (nb + nf) as f64 * SEGMENT_SECONDS,
        segments: segs,
        background: bg.used.to_string(),
        difficulty: a.difficulty,
    };
    Ok((rec.samples, timeline))
}

/// Where the timeline of a recording is written.
pub fn timeline_path(wav: &Path) -> PathBuf {
    wav.with_extension("json")
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    let (samples, t) = render(a)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    sonitor_core::audio::write_wav_i16(&a.out, &samples, SAMPLE_RATE)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let tp = timeline_path(&a.out);
    let mut text = serde_json::to_string_pretty(&t)?;
    text.push('\n');
    std::fs::write(&tp, text).with_context(|| format!("writing {}", tp.display()))?;
    println!(
        "{}: {:.0} s of a {} ({}): normal, {} from {:.0} s to {:.0} s (severity {} → {}), normal; timeline in {}",
        a.out.display(),
        t.duration_s,
        t.machine_type,
        t.attributes,
        t.fault,
        t.fault_start_s,
        t.fault_end_s,
        a.severity_from,
        a.severity_to,
        tp.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_rises_inside_the_fault_only() {
        let s = segments(4.0, 6.0, 2.0, 0.4, 1.0);
        let sev: Vec<f64> = s.iter().map(|s| s.severity).collect();
        assert_eq!(sev, vec![0.0, 0.0, 0.4, 0.7, 1.0, 0.0]);
        assert_eq!(s.last().unwrap().end_s, 12.0);
    }
}
