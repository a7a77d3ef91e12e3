//! `sonitor-train synth`: a synthetic factory data set in the DCASE 2023 Task 2 layout.
//!
//! ```text
//! OUT/<type>/train/section_00_source_train_normal_NNNN_<attrs>.wav     --train-source per type (300)
//! OUT/<type>/train/section_00_target_train_normal_NNNN_<attrs>.wav     --train-target per type (10)
//! OUT/<type>/test/section_00_{source|target}_test_{normal|anomaly}_NNNN_<attrs>.wav
//!                                                       --test-per-domain normal + as many anomalous (50 + 50)
//! OUT/<type>/attributes_00.csv    file_name,d1p,d1v,d2p,d2v[,d3p,d3v]   (file_name = <type>/<split>/<file>)
//! OUT/ground_truth.csv            file_name,machine_type,section,domain,split,label,fault,severity,snr_db,attributes
//! OUT/synth.json                  generator, version, seed, config, background used, counts
//! ```
//!
//! Clips are 16 kHz mono 16-bit, `--clip-seconds` long (3 s). Numbering starts at 0000 per (domain, split,
//! condition); attribute combinations and fault kinds are assigned round-robin by index, so every
//! combination and every fault kind is represented even in small sets.
//!
//! How a clip is made — see the submodules for the physics:
//! - [`machines`]: one sound model per machine type (fan, pump, gearbox, bearing, press), its attributes and
//!   how each fault changes it;
//! - [`faults`]: fault kinds, the severity distribution and the difficulty knob (`--difficulty`), shared
//!   fault mechanisms (defect impulse trains, cavitation crackle, leak hiss);
//! - [`background`]: the factory background common to all types (real recordings or synthetic);
//! - [`scene`]: room (domain-dependent), background at an SNR uniform in −6…+6 dB, microphone
//!   (domain-dependent), fixed output RMS;
//! - [`dsp`]: the signal-processing primitives;
//! - [`demo`]: one long recording of a developing fault for `sonitor demo` (`sonitor-train synth-demo`).
//!
//! **Determinism.** Each clip has its own `ChaCha8Rng` seeded from (seed, type, domain, split, condition,
//! index), so the output does not depend on the number of threads or on scheduling: the same seed and the same
//! background availability give byte-identical files. `synth.json` holds nothing run-dependent (no times).
//!
//! **Domain shift.** Target clips differ from source clips in their attribute values (outside the source
//! range), their room (farther microphone, more reverberation) and their microphone response. With only
//! `--train-target` (10) target clips for training, a model of source normals finds target normals unusual —
//! the known weak point of the methods this set is for.

mod background;
pub mod demo;
mod dsp;
mod faults;
mod machines;
mod scene;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sonitor_core::dcase::{ClipName, Condition, Domain, Split};

pub use background::{BackgroundChoice, BackgroundUsed};
pub use faults::{FaultKind, DEFAULT_DIFFICULTY};
pub use machines::MachineType;

/// Name of the generator, in `synth.json`; a directory whose `synth.json` says so may be overwritten.
pub const GENERATOR: &str = "sonitor-synth";

/// Version of the generator's sound models: the same seed gives the same files within a version.
pub const GENERATOR_VERSION: u32 = 1;

/// Sample rate of the written clips.
pub const SAMPLE_RATE: u32 = 16_000;

/// The one section every type has.
pub const SECTION: u16 = 0;

#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output directory (DCASE 2023 layout). Must be new, empty, or a previous synth output (replaced; refused
    /// while it holds clips synth did not write: added by `import` or copied in by hand).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed gives the same data set, byte for byte.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Length of every clip in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub clip_seconds: f64,
    /// Source-domain training clips (all normal) per machine type.
    #[arg(long, default_value_t = 300)]
    pub train_source: usize,
    /// Target-domain training clips (all normal) per machine type.
    #[arg(long, default_value_t = 10)]
    pub train_target: usize,
    /// Test clips per machine type and domain: this many normal and as many anomalous.
    #[arg(long, default_value_t = 50)]
    pub test_per_domain: usize,
    /// Machine types, comma separated (fan, pump, gearbox, bearing, press).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fan,pump,gearbox,bearing,press"
    )]
    pub types: Vec<String>,
    /// Factory background: `auto` (lincity-ng-data recordings if installed, else synthetic), `none`
    /// (synthetic), or a directory of WAV recordings.
    #[arg(long, default_value = "auto")]
    pub background: String,
    /// How hard anomalies are to hear, 0 (easy) to 1 (hard): shifts every fault's level by
    /// (0.5 − difficulty) × 16 dB.
    #[arg(long, default_value_t = DEFAULT_DIFFICULTY)]
    pub difficulty: f64,
    /// Worker threads (default: all cores). Does not change the output.
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// Everything that determines the data set (plus `jobs`, which does not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthConfig {
    pub seed: u64,
    pub clip_seconds: f64,
    pub sample_rate: u32,
    pub train_source: usize,
    pub train_target: usize,
    pub test_per_domain: usize,
    pub types: Vec<MachineType>,
    pub background: BackgroundChoice,
    pub difficulty: f64,
    /// Worker threads; 0 = all cores. Not part of the data set's identity.
    #[serde(skip)]
    pub jobs: usize,
}

impl SynthConfig {
    /// The default data set for a seed.
    pub fn new(seed: u64) -> SynthConfig {
        SynthConfig {
            seed,
            clip_seconds: 3.0,
            sample_rate: SAMPLE_RATE,
            train_source: 300,
            train_target: 10,
            test_per_domain: 50,
            types: MachineType::ALL.to_vec(),
            background: BackgroundChoice::Auto,
            difficulty: DEFAULT_DIFFICULTY,
            jobs: 0,
        }
    }

    pub fn from_args(a: &SynthArgs) -> anyhow::Result<SynthConfig> {
        let mut types = Vec::new();
        for t in a.types.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let Some(mt) = MachineType::parse(t) else {
                let known: Vec<&str> = MachineType::ALL.iter().map(|t| t.name()).collect();
                bail!("unknown machine type '{t}' (known: {})", known.join(", "));
            };
            types.push(mt);
        }
        let cfg = SynthConfig {
            seed: a.seed,
            clip_seconds: a.clip_seconds,
            sample_rate: SAMPLE_RATE,
            train_source: a.train_source,
            train_target: a.train_target,
            test_per_domain: a.test_per_domain,
            types,
            background: BackgroundChoice::parse(&a.background),
            difficulty: a.difficulty,
            jobs: a.jobs.unwrap_or(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values; names the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.clip_seconds.is_finite() && (0.1..=60.0).contains(&self.clip_seconds)) {
            bail!(
                "--clip-seconds {} must be between 0.1 and 60",
                self.clip_seconds
            );
        }
        if !(self.difficulty.is_finite() && (0.0..=1.0).contains(&self.difficulty)) {
            bail!("--difficulty {} must be between 0 and 1", self.difficulty);
        }
        if self.sample_rate != SAMPLE_RATE {
            bail!("sample rate must be {SAMPLE_RATE} Hz");
        }
        if self.types.is_empty() {
            bail!("--types is empty");
        }
        for (i, t) in self.types.iter().enumerate() {
            if self.types[..i].contains(t) {
                bail!("machine type '{}' is listed twice in --types", t.name());
            }
        }
        if self.train_source == 0 {
            bail!("--train-source must be at least 1");
        }
        if self.test_per_domain == 0 {
            bail!("--test-per-domain must be at least 1");
        }
        const MAX: usize = 100_000;
        for (name, v) in [
            ("--train-source", self.train_source),
            ("--train-target", self.train_target),
            ("--test-per-domain", self.test_per_domain),
        ] {
            if v > MAX {
                bail!("{name} {v} is too large (at most {MAX})");
            }
        }
        Ok(())
    }

    /// Samples per clip.
    pub fn clip_samples(&self) -> usize {
        (self.clip_seconds * SAMPLE_RATE as f64).round() as usize
    }

    /// Clips per machine type.
    pub fn clips_per_type(&self) -> usize {
        self.train_source + self.train_target + 4 * self.test_per_domain
    }
}

/// Counts of one machine type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeCounts {
    pub train_source: usize,
    pub train_target: usize,
    pub test_normal: usize,
    pub test_anomaly: usize,
    /// Anomalous test clips per fault kind.
    pub faults: BTreeMap<String, usize>,
}

/// What [`generate`] did.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub clips: usize,
    pub audio_seconds: f64,
    pub wall_seconds: f64,
    pub background: BackgroundUsed,
    /// Clips whose level was set by the peak limit rather than the RMS target.
    pub peak_limited: usize,
    pub per_type: BTreeMap<String, TypeCounts>,
    pub threads: usize,
}

/// One clip to make.
#[derive(Debug, Clone)]
struct ClipSpec {
    machine: MachineType,
    domain: Domain,
    split: Split,
    condition: Condition,
    index: u32,
    attrs: machines::Attrs,
    fault: Option<FaultKind>,
}

impl ClipSpec {
    fn file_name(&self) -> String {
        ClipName::format(
            SECTION,
            self.domain,
            self.split,
            self.condition,
            self.index,
            &machines::attr_string(&self.attrs),
        )
    }

    /// `<type>/<split>/<file>`.
    fn rel_path(&self) -> String {
        format!(
            "{}/{}/{}",
            self.machine.name(),
            self.split.as_str(),
            self.file_name()
        )
    }

    fn rng(&self, seed: u64) -> ChaCha8Rng {
        let mut h = splitmix64(seed ^ 0x5354_4e54_5359_4e54);
        for b in self.machine.name().bytes() {
            h = splitmix64(h ^ b as u64);
        }
        let code = (self.domain as u64) | (self.split as u64) << 1 | (self.condition as u64) << 2;
        h = splitmix64(h ^ code);
        h = splitmix64(h ^ self.index as u64);
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            h = splitmix64(h);
            chunk.copy_from_slice(&h.to_le_bytes());
        }
        ChaCha8Rng::from_seed(key)
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every clip of the data set, in a fixed order.
fn plan(cfg: &SynthConfig) -> Vec<ClipSpec> {
    let mut out = Vec::with_capacity(cfg.types.len() * cfg.clips_per_type());
    for &machine in &cfg.types {
        let kinds = machine.faults();
        for (domain, split, condition, count) in [
            (
                Domain::Source,
                Split::Train,
                Condition::Normal,
                cfg.train_source,
            ),
            (
                Domain::Target,
                Split::Train,
                Condition::Normal,
                cfg.train_target,
            ),
            (
                Domain::Source,
                Split::Test,
                Condition::Normal,
                cfg.test_per_domain,
            ),
            (
                Domain::Source,
                Split::Test,
                Condition::Anomaly,
                cfg.test_per_domain,
            ),
            (
                Domain::Target,
                Split::Test,
                Condition::Normal,
                cfg.test_per_domain,
            ),
            (
                Domain::Target,
                Split::Test,
                Condition::Anomaly,
                cfg.test_per_domain,
            ),
        ] {
            let combos = machine.combos(domain);
            let nc = combos.len().max(1);
            for i in 0..count {
                // Normal clips cycle through the combinations. Anomalous ones cycle through the fault kinds
                // fastest and the combinations in groups, so that every (combination, kind) pair occurs.
                let (combo, fault) = match condition {
                    Condition::Normal => (i % nc, None),
                    Condition::Anomaly => ((i / kinds.len()) % nc, Some(kinds[i % kinds.len()])),
                };
                out.push(ClipSpec {
                    machine,
                    domain,
                    split,
                    condition,
                    index: i as u32,
                    attrs: combos[combo].clone(),
                    fault,
                });
            }
        }
    }
    out
}

/// What was made of one clip.
#[derive(Debug, Clone)]
struct ClipResult {
    severity: f64,
    snr_db: f64,
    peak_limited: bool,
}

/// Renders one clip (no I/O).
fn render_clip(
    spec: &ClipSpec,
    cfg: &SynthConfig,
    bg: &background::Background,
) -> (Vec<f32>, ClipResult) {
    let mut rng = spec.rng(cfg.seed);
    let fault = spec.fault.map(|k| {
        let s = faults::draw_severity(&mut rng);
        faults::Fault::new(k, s, cfg.difficulty)
    });
    let n = cfg.clip_samples();
    let pre = (scene::PREROLL * SAMPLE_RATE as f64).round() as usize;
    let machine = spec
        .machine
        .render(&spec.attrs, fault.as_ref(), n + pre, &mut rng);
    let rec = scene::record(&machine, pre, bg, spec.domain, &mut rng);
    (
        rec.samples,
        ClipResult {
            severity: fault.map_or(0.0, |f| f.severity),
            snr_db: rec.snr_db,
            peak_limited: rec.peak_limited,
        },
    )
}

#[derive(Serialize)]
struct Parameters {
    snr_range_db: (f64, f64),
    target_rms: f32,
    peak_limit: f32,
    severity_exponent: f64,
    difficulty_span_db: f64,
}

#[derive(Serialize)]
struct Manifest<'a> {
    generator: &'static str,
    version: u32,
    /// False while the generator is writing (a crashed run leaves it false; rerunning replaces it).
    complete: bool,
    layout: &'static str,
    seed: u64,
    config: &'a SynthConfig,
    parameters: Parameters,
    background: Option<&'a BackgroundUsed>,
    counts: Option<&'a BTreeMap<String, TypeCounts>>,
    peak_limited_clips: Option<usize>,
}

impl<'a> Manifest<'a> {
    fn new(cfg: &'a SynthConfig) -> Manifest<'a> {
        Manifest {
            generator: GENERATOR,
            version: GENERATOR_VERSION,
            complete: false,
            layout: "DCASE 2023 Task 2",
            seed: cfg.seed,
            config: cfg,
            parameters: Parameters {
                snr_range_db: scene::SNR_RANGE_DB,
                target_rms: scene::TARGET_RMS,
                peak_limit: scene::PEAK_LIMIT,
                severity_exponent: faults::SEVERITY_EXPONENT,
                difficulty_span_db: faults::DIFFICULTY_SPAN_DB,
            },
            background: None,
            counts: None,
            peak_limited_clips: None,
        }
    }

    fn write(&self, out: &Path) -> anyhow::Result<()> {
        let path = out.join("synth.json");
        let mut text = serde_json::to_string_pretty(self).context("cannot serialise synth.json")?;
        text.push('\n');
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What the output directory holds, as far as writing a data set into it goes.
enum OutState {
    /// It does not exist yet.
    Absent,
    Empty,
    /// A previous `synth` output, of these machine types (from its `synth.json`).
    Previous(Vec<String>),
}

/// Checks, without changing anything, that a data set may be written into `out`: absent, empty, or a previous
/// synth output holding only the clips it wrote. Anything else is an error that says what to do.
pub fn check_out(out: &Path) -> anyhow::Result<()> {
    inspect_out(out).map(|_| ())
}

fn inspect_out(out: &Path) -> anyhow::Result<OutState> {
    if !out.exists() {
        return Ok(OutState::Absent);
    }
    if !out.is_dir() {
        bail!(
            "output path {} exists and is not a directory",
            out.display()
        );
    }
    let mut entries = std::fs::read_dir(out)
        .with_context(|| format!("cannot read output directory {}", out.display()))?;
    if entries.next().is_none() {
        return Ok(OutState::Empty);
    }
    let manifest = out.join("synth.json");
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "output directory {} is not empty and is not a previous `sonitor-train synth` output ({why}); \
             refusing to write into it — choose a new or empty directory",
            out.display()
        )
    };
    if !manifest.is_file() {
        return Err(refuse("no synth.json"));
    }
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let old: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| refuse("synth.json is not JSON"))?;
    if old.get("generator").and_then(|g| g.as_str()) != Some(GENERATOR) {
        return Err(refuse("synth.json was not written by this generator"));
    }
    // Clips that `sonitor-train import` added to a synthetic set are not the generator's to delete: refused, as
    // a rerun deleted them and left their `imported.csv`, which then refused to import them again.
    let imported: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("cannot read output directory {}", out.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("imported.csv").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !imported.is_empty() {
        bail!(
            "output directory {} holds clips added by `sonitor-train import` ({}/imported.csv): writing the set \
             again would delete them with its own; choose a new or empty directory",
            out.display(),
            imported.join("/imported.csv, ")
        );
    }
    let old_types: Vec<String> = old
        .pointer("/config/types")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // Nor are clips copied in by hand: every clip the previous run wrote is in its ground_truth.csv (a run that
    // did not finish wrote none, and its clips are all the generator's).
    let foreign = clips_not_generated(out, &old_types)?;
    if !foreign.is_empty() {
        bail!(
            "output directory {} holds {} clip(s) that `sonitor-train synth` did not write (not in its \
             ground_truth.csv), e.g. {}: writing the set again would delete them with its own; move them out, \
             or choose a new or empty directory",
            out.display(),
            foreign.len(),
            foreign
                .iter()
                .take(3)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(OutState::Previous(old_types))
}

/// The DCASE-named clips under `out`'s `<type>/{train,test}` (of the previous run's `types`) that its
/// `ground_truth.csv` does not list, by their path under `out`; none when there is no such file.
fn clips_not_generated(out: &Path, types: &[String]) -> anyhow::Result<Vec<String>> {
    let gt = out.join("ground_truth.csv");
    let text = match std::fs::read_to_string(&gt) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", gt.display())),
    };
    let written: std::collections::BTreeSet<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    let mut foreign = Vec::new();
    for t in types.iter().filter(|t| safe_type_dir(t)) {
        for sub in ["train", "test"] {
            let Ok(rd) = std::fs::read_dir(out.join(t).join(sub)) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                let rel = format!("{t}/{sub}/{name}");
                if ClipName::parse(&name).is_ok() && !written.contains(rel.as_str()) {
                    foreign.push(rel);
                }
            }
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Whether `t`, a type name read from an earlier synth.json, names a directory inside the output (not `..`, not
/// a path).
fn safe_type_dir(t: &str) -> bool {
    !(t.is_empty() || t.contains(['/', '\\']) || t.starts_with('.'))
}

/// Makes `out` ready: creates it, or accepts it empty, or clears a previous synth output ([`check_out`] refuses
/// anything else).
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    let old_types = match inspect_out(out)? {
        OutState::Absent => {
            return std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create output directory {}", out.display()))
        }
        OutState::Empty => return Ok(()),
        OutState::Previous(types) => types,
    };
    // Remove exactly what a previous run wrote: DCASE-named WAVs and attribute CSVs of its types.
    for t in old_types {
        if !safe_type_dir(&t) {
            continue;
        }
        let tdir = out.join(&t);
        for sub in ["train", "test"] {
            let d = tdir.join(sub);
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                if ClipName::parse(&name).is_ok() {
                    std::fs::remove_file(e.path()).with_context(|| {
                        format!("cannot remove old clip {}", e.path().display())
                    })?;
                }
            }
            let _ = std::fs::remove_dir(&d); // only if now empty
        }
        if let Ok(rd) = std::fs::read_dir(&tdir) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("attributes_") && name.ends_with(".csv") {
                    std::fs::remove_file(e.path())
                        .with_context(|| format!("cannot remove {}", e.path().display()))?;
                }
            }
        }
        let _ = std::fs::remove_dir(&tdir);
    }
    let gt = out.join("ground_truth.csv");
    if gt.exists() {
        std::fs::remove_file(&gt).with_context(|| format!("cannot remove {}", gt.display()))?;
    }
    Ok(())
}

/// Writes the data set described by `cfg` into `out`.
pub fn generate(cfg: &SynthConfig, out: &Path) -> anyhow::Result<SynthSummary> {
    let t0 = Instant::now();
    cfg.validate()?;
    let bg = background::Background::load(&cfg.background)?;
    prepare_out(out)?;
    let mut manifest = Manifest::new(cfg);
    manifest.write(out)?;
    for t in &cfg.types {
        for split in [Split::Train, Split::Test] {
            let d = out.join(t.name()).join(split.as_str());
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
    }

    let specs = plan(cfg);
    let threads = if cfg.jobs > 0 {
        cfg.jobs
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    .clamp(1, specs.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> anyhow::Result<Vec<(usize, ClipResult)>> {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= specs.len() || failed.load(Ordering::Relaxed) {
                return Ok(done);
            }
            let spec = &specs[i];
            let (samples, res) = render_clip(spec, cfg, &bg);
            let path = out.join(spec.rel_path());
            if let Err(e) = sonitor_core::audio::write_wav_i16(&path, &samples, SAMPLE_RATE) {
                failed.store(true, Ordering::Relaxed);
                return Err(anyhow::Error::new(e).context("cannot write clip"));
            }
            done.push((i, res));
        }
    };
    let outcomes: Vec<anyhow::Result<Vec<(usize, ClipResult)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a generator thread panicked")))
            })
            .collect()
    });
    let mut results: Vec<Option<ClipResult>> = vec![None; specs.len()];
    for o in outcomes {
        for (i, r) in o? {
            results[i] = Some(r);
        }
    }

    // Tables.
    let mut rows: Vec<(String, &ClipSpec, ClipResult)> = Vec::with_capacity(specs.len());
    for (spec, res) in specs.iter().zip(results) {
        let res = res.context("internal error: a clip was not generated")?;
        rows.push((spec.rel_path(), spec, res));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut per_type: BTreeMap<String, TypeCounts> = BTreeMap::new();
    let mut gt = String::from(
        "file_name,machine_type,section,domain,split,label,fault,severity,snr_db,attributes\n",
    );
    let mut attr_csv: BTreeMap<MachineType, String> = BTreeMap::new();
    let mut peak_limited = 0;
    for (rel, spec, res) in &rows {
        let attrs = machines::attr_string(&spec.attrs);
        let _ = writeln!(
            gt,
            "{rel},{},{SECTION:02},{},{},{},{},{:.3},{:.2},{attrs}",
            spec.machine.name(),
            spec.domain.as_str(),
            spec.split.as_str(),
            u8::from(spec.condition == Condition::Anomaly),
            spec.fault.map_or("none", |f| f.name()),
            res.severity,
            res.snr_db,
        );
        let csv = attr_csv.entry(spec.machine).or_insert_with(|| {
            let mut h = String::from("file_name");
            for i in 1..=spec.machine.attribute_keys().len() {
                let _ = write!(h, ",d{i}p,d{i}v");
            }
            h.push('\n');
            h
        });
        let _ = write!(csv, "{rel}");
        for (k, v) in &spec.attrs {
            let _ = write!(csv, ",{k},{v}");
        }
        csv.push('\n');
        peak_limited += usize::from(res.peak_limited);
        let c = per_type.entry(spec.machine.name().to_string()).or_default();
        match (spec.split, spec.domain, spec.condition) {
            (Split::Train, Domain::Source, _) => c.train_source += 1,
            (Split::Train, Domain::Target, _) => c.train_target += 1,
            (Split::Test, _, Condition::Normal) => c.test_normal += 1,
            (Split::Test, _, Condition::Anomaly) => {
                c.test_anomaly += 1;
                if let Some(f) = spec.fault {
                    *c.faults.entry(f.name().to_string()).or_default() += 1;
                }
            }
        }
    }
    for (t, text) in &attr_csv {
        let p = out
            .join(t.name())
            .join(format!("attributes_{SECTION:02}.csv"));
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let p = out.join("ground_truth.csv");
    std::fs::write(&p, gt).with_context(|| format!("cannot write {}", p.display()))?;
    manifest.complete = true;
    manifest.background = Some(&bg.used);
    manifest.counts = Some(&per_type);
    manifest.peak_limited_clips = Some(peak_limited);
    manifest.write(out)?;

    let clips = specs.len();
    Ok(SynthSummary {
        clips,
        audio_seconds: clips as f64 * cfg.clip_samples() as f64 / SAMPLE_RATE as f64,
        wall_seconds: t0.elapsed().as_secs_f64(),
        background: bg.used.clone(),
        peak_limited,
        per_type,
        threads,
    })
}

/// The `synth` command.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let cfg = SynthConfig::from_args(args)?;
    // A directory it will not write into, or a background it cannot read, is refused before the plan is printed.
    check_out(&args.out)?;
    background::Background::check(&cfg.background)?;
    println!(
        "synth: {} clips ({} types × {}), {} s each, seed {}, difficulty {} → {}",
        cfg.types.len() * cfg.clips_per_type(),
        cfg.types.len(),
        cfg.clips_per_type(),
        cfg.clip_seconds,
        cfg.seed,
        cfg.difficulty,
        args.out.display()
    );
    let s = generate(&cfg, &args.out)?;
    println!("background: {}", s.background);
    for (t, c) in &s.per_type {
        let faults: Vec<String> = c.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  {t:<8} train {} source + {} target, test {} normal + {} anomalous ({})",
            c.train_source,
            c.train_target,
            c.test_normal,
            c.test_anomaly,
            faults.join(", ")
        );
    }
    if s.peak_limited > 0 {
        println!(
            "  {} clips were scaled down to keep their peak at {}",
            s.peak_limited,
            scene::PEAK_LIMIT
        );
    }
    println!(
        "wrote {} clips: {:.0} s of audio in {:.2} s wall ({} threads): {:.0}× real time",
        s.clips,
        s.audio_seconds,
        s.wall_seconds,
        s.threads,
        s.audio_seconds / s.wall_seconds.max(1e-9)
    );
    Ok(())
}
