//! `sonitor-train fit`: trains the network, exports it to ONNX, computes the scoring back end (centroids and
//! thresholds) from the exported graph with tract, and writes the model bundle.
//!
//! The training loop is our own (burn's `train` feature brings a terminal UI we do not need): Adam, mixup of raw
//! waveforms, one random window crop per clip and epoch, a progress line on stderr, a checkpoint per epoch.
//! Deterministic for a seed on the CPU backend: the parameters are initialised from the seeded device RNG, the
//! loss centres and every epoch's shuffling, crops and mixup weights from ChaCha generators seeded by
//! `(seed, epoch)` (so `--resume` continues the same sequence).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sonitor_core::bundle::{Bundle, Manifest, Provenance, SectionModel, FORMAT_VERSION};
use sonitor_core::dcase::{self, ClassMap, Clip, Domain, LabelGranularity, Split};
use sonitor_core::features::{FeatureExtractor, FeatureParams};
use sonitor_core::{parallel, score};

use crate::checkpoint;
use crate::data;
use crate::export;
use crate::kmeans;
use crate::loss::{Loss, LossKind};
use crate::model::{Model, ModelConfig};
use crate::replace::{self, Replacement};
use sonitor_core::embed::EmbeddingGraph;

/// Training back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    Cpu,
    Wgpu,
    Cuda,
}

impl DeviceKind {
    /// The burn device with autodiff; an error names the cargo feature a GPU backend needs, or says that the GPU
    /// could not be opened.
    pub fn device(self) -> anyhow::Result<Device> {
        let d = match self {
            Self::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => wgpu_device(std::env::var_os(WGPU_DEVICE_ENV).is_some())?,
            #[cfg(feature = "cuda")]
            Self::Cuda => gpu_checked(
                Device::cuda(0usize),
                "cuda",
                "no CUDA device 0 (check `nvidia-smi` and the driver)",
            )?,
            #[allow(unreachable_patterns)]
            other => {
                let name = format!("{other:?}").to_lowercase();
                anyhow::bail!("--device {name} needs sonitor-train built with `--features {name}`")
            }
        };
        Ok(d.autodiff())
    }
}

/// cubecl's own knob for the adapter that `Device::wgpu(DeviceKind::DefaultDevice)` takes (e.g. `Cpu`,
/// `DiscreteGpu(1)`): set, it is the user's explicit choice, so a CPU adapter is used without refusal.
#[cfg(feature = "wgpu")]
const WGPU_DEVICE_ENV: &str = "CUBECL_WGPU_DEFAULT_DEVICE";

/// Opens wgpu's default adapter through burn's fallible initialisation (no panic when there is none) and says
/// on stderr which adapter it is. Where the only adapter is a CPU one (Mesa's llvmpipe on a machine without a GPU
/// driver) training would run many times slower than `--device cpu` (measured here: 11.2 against 247–269 clips/s
/// for one epoch of the tiny network), so it is refused unless `chosen` (the user named an adapter through
/// [`WGPU_DEVICE_ENV`]).
#[cfg(feature = "wgpu")]
fn wgpu_device(chosen: bool) -> anyhow::Result<Device> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| {
        anyhow::anyhow!(
            "--device wgpu: no GPU adapter through Vulkan, Metal, DirectX 12 or OpenGL (install the GPU's Vulkan \
             driver, e.g. the NVIDIA driver's Vulkan ICD, or Mesa's); the backend said: {e}; or train with \
             --device cpu"
        )
    })?;
    let info = setup.adapter.get_info();
    let driver = [info.driver.trim(), info.driver_info.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let what = format!(
        "{} ({:?}, {:?}, driver: {driver})",
        info.name, info.device_type, info.backend
    );
    if info.device_type == DeviceType::Cpu && !chosen {
        anyhow::bail!(
            "--device wgpu: the only adapter is {what}, a software renderer on the CPU: training there is \
             many times slower than --device cpu; train with --device cpu, install the GPU's Vulkan driver, or \
             set {WGPU_DEVICE_ENV}=Cpu to use this adapter anyway"
        );
    }
    eprintln!("wgpu adapter: {what}");
    Ok(device)
}

/// `device` once it has run one tensor operation; an error with `hint` (and the backend's own message) where it
/// cannot. The CUDA back end opens the device lazily and panics, in its device thread and then in the caller's,
/// when there is none, and has no fallible initialisation as wgpu has ([`wgpu_device`]): the first use is made
/// here, under `catch_unwind`, so that `fit --device cuda` on a machine without the driver ends with this message
/// instead of a panic in the middle of building the network.
#[cfg(feature = "cuda")]
fn gpu_checked(device: Device, name: &str, hint: &str) -> anyhow::Result<Device> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = Arc::clone(&first);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut m = seen.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_none() {
            let text = sonitor_core::panic_message(info.payload()).map(str::to_string);
            *m = Some(text.unwrap_or_else(|| info.to_string()));
        }
    }));
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<1>::zeros([1], &device).into_data()
    }));
    // Replaces (and drops) the capturing hook.
    std::panic::set_hook(previous);
    match probe {
        Ok(_) => Ok(device),
        Err(_) => {
            let why = first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            anyhow::bail!(
                "--device {name}: {hint}; the backend said: {why}; or train with --device cpu"
            )
        }
    }
}

/// Network size presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The paper's widths (16-32-64-128, 128 + 128 embedding).
    Paper,
    /// Half the widths (8-16-32-64, 64 + 64): about 4× cheaper, for CPU-only training.
    Small,
    /// A tiny network for tests.
    Tiny,
}

/// How centroids are made from the target-domain training clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetCentres {
    /// Every window embedding of every target clip is a centre.
    Window,
    /// One centre per target clip: the normalised mean of its window embeddings.
    Clip,
}

impl TargetCentres {
    /// As `--target-centres` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetCentres::Window => "window",
            TargetCentres::Clip => "clip",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct FitArgs {
    /// Data set root (DCASE layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Bundle directory to write (model.onnx + manifest.json; checkpoints under checkpoint/).
    #[arg(long)]
    pub out: PathBuf,
    /// Epochs to train [default: 10; with --resume: the interrupted run's, and a larger number trains it further].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Clips per batch [default: 64; with --resume: the checkpoint's].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam's learning rate [default: 0.001; with --resume: the checkpoint's].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Random seed [default: 1; with --resume: the checkpoint's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training loss [default: subcluster-adacos; with --resume: the checkpoint's].
    #[arg(long, value_enum)]
    pub loss: Option<LossKind>,
    /// Auxiliary class granularity: type, section, attribute, attribute-domain [default: attribute; with --resume:
    /// the checkpoint's].
    #[arg(long)]
    pub labels: Option<String>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Continue from the last checkpoint in OUT/checkpoint (also that of a --force run that was killed: its
    /// replacement of the old bundle is then finished too).
    #[arg(long)]
    pub resume: bool,
    /// Replace what OUT holds (its bundle files, checkpoints, and the old model's scores that eval and combine
    /// wrote into it by default, scores/ and scores-combined/; without it, an OUT that holds a bundle or checkpoint
    /// is refused). The old bundle stays until the new one is written: its checkpoint waits in OUT/.replaced
    /// meanwhile, and a run that fails puts it back.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Network size [default: paper; with --resume: the checkpoint's network].
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// k of the per-section k-means of source-domain embeddings; 0 (or at least as many windows as a section
    /// has) makes every source window its own centre [default: 16; with --resume: the checkpoint's].
    #[arg(long)]
    pub kmeans: Option<usize>,
    /// Quantile of the gamma fit of normal training window scores used as the default threshold [default: 0.9,
    /// DCASE's evaluation setting; for an unattended alarm 0.99 is the usual choice; with --resume: the
    /// checkpoint's]. `fit` prints which quantile its thresholds are.
    #[arg(long, allow_negative_numbers = true)]
    pub quantile: Option<f64>,
    /// How target-domain training clips become centres [default: window; with --resume: the checkpoint's].
    #[arg(long, value_enum)]
    pub target_centres: Option<TargetCentres>,
    /// Disable mixup (for ablations) [with --resume: the checkpoint's setting when left out].
    #[arg(long)]
    pub no_mixup: bool,
    /// Analysis window in seconds: what one embedding sees (the network's input shapes follow from it). Recorded in
    /// the bundle; the daemon cuts its windows the same way [default: 2; with --resume: the checkpoint's].
    #[arg(long)]
    pub window_seconds: Option<f64>,
    /// Step between a stream's windows in seconds: one score per hop in the daemon, and the windows a clip is cut
    /// into for the back end and `eval` [default: 1; with --resume: the checkpoint's].
    #[arg(long)]
    pub window_hop_seconds: Option<f64>,
}

/// `--batch`, `--lr`, `--window-seconds` and `--window-hop-seconds` when left out of a new run.
pub const DEFAULT_BATCH: usize = 64;
pub const DEFAULT_LR: f64 = 1e-3;
pub const DEFAULT_WINDOW_SECONDS: f64 = 2.0;
pub const DEFAULT_WINDOW_HOP_SECONDS: f64 = 1.0;
/// `--epochs`, `--kmeans`, `--quantile` and `--target-centres` when left out of a new run.
pub const DEFAULT_EPOCHS: usize = 10;
pub const DEFAULT_KMEANS: usize = 16;
pub const DEFAULT_QUANTILE: f64 = 0.9;
pub const DEFAULT_TARGET_CENTRES: TargetCentres = TargetCentres::Window;

/// The feature parameters of `--window-seconds` / `--window-hop-seconds` (the rest as the paper's front end).
pub fn window_features(window_s: f64, hop_s: f64) -> anyhow::Result<FeatureParams> {
    let base = FeatureParams::default();
    let samples = |name: &str, s: f64| -> anyhow::Result<usize> {
        anyhow::ensure!(
            s.is_finite() && s > 0.0 && s <= 600.0,
            "{name} {s}: expected a positive number of seconds, at most 600"
        );
        Ok((s * f64::from(base.sample_rate)).round() as usize)
    };
    let p = FeatureParams {
        window_samples: samples("--window-seconds", window_s)?,
        window_hop_samples: samples("--window-hop-seconds", hop_s)?,
        ..base
    };
    p.validate().map_err(|e| {
        anyhow::anyhow!("--window-seconds {window_s} / --window-hop-seconds {hop_s}: {e}")
    })?;
    // A step under one STFT hop gives windows that differ by a few samples: as many embeddings to compute (and,
    // from target clips, centroids to store: 32 000 of them, a 25 MB manifest, at 0.0001 s) for nothing new.
    anyhow::ensure!(
        p.window_hop_samples >= p.stft_hop,
        "--window-hop-seconds {hop_s}: at least {} s, one STFT hop (shorter steps repeat the same windows)",
        p.stft_hop as f64 / f64::from(p.sample_rate)
    );
    Ok(p)
}

/// Everything `fit` needs; the CLI fills it from [`FitArgs`], tests directly.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    pub loss: LossKind,
    pub labels: LabelGranularity,
    pub device: DeviceKind,
    pub resume: bool,
    /// Replace the bundle or checkpoint `out` holds (`--force`; see [`crate::replace`]): the old one stays until
    /// the new one is written, and comes back if `fit` returns an error. Excludes `resume`.
    pub force: bool,
    pub features: FeatureParams,
    /// `None`: the paper's network for the feature shapes.
    pub model: Option<ModelConfig>,
    pub kmeans: usize,
    pub quantile: f64,
    pub target_centres: TargetCentres,
    pub mixup: bool,
    pub command: String,
    /// Print the progress line.
    pub progress: bool,
    /// Start from this network instead of a fresh one (`prune`'s fine-tuning); `model` must be its configuration.
    pub start: Option<Start>,
}

/// A network to continue training from, with the loss (fixed centres, scale) it was trained with.
#[derive(Debug, Clone)]
pub struct Start {
    pub model: Model,
    pub loss: Loss,
    /// Class names of the loss, in order; the data set must give the same.
    pub classes: Vec<String>,
    /// What was done to the network (recorded in the manifest's provenance as `model.pruning`).
    pub pruning: serde_json::Value,
}

impl FitOptions {
    /// With `--resume`, what the command line leaves out (loss, labels, seed, network, batch, learning rate,
    /// mixup, window) is the checkpoint's; what it gives must agree with the checkpoint ([`fit`] checks).
    pub fn from_args(a: &FitArgs) -> anyhow::Result<Self> {
        let state = if a.resume {
            Some(checkpoint::read_for_resume(&a.out)?)
        } else {
            None
        };
        if let Some(s) = &state {
            // A checkpoint of an earlier version: what it does not record is the default, as then, but said.
            let missing: Vec<&str> = [
                ("--epochs", s.epochs.is_none() && a.epochs.is_none()),
                ("--kmeans", s.kmeans.is_none() && a.kmeans.is_none()),
                ("--quantile", s.quantile.is_none() && a.quantile.is_none()),
                (
                    "--target-centres",
                    s.target_centres.is_none() && a.target_centres.is_none(),
                ),
            ]
            .into_iter()
            .filter_map(|(flag, m)| m.then_some(flag))
            .collect();
            if !missing.is_empty() {
                eprintln!(
                    "warning: the checkpoint in {} does not record its run's {} (an earlier version wrote it): the \
                     defaults are used; give the run's own to continue it as it was",
                    checkpoint::find(&a.out).display(),
                    missing.join(", ")
                );
            }
        }
        let labels_name = match (&a.labels, state.as_ref().and_then(|s| s.labels.as_deref())) {
            (Some(l), _) => l.as_str(),
            (None, Some(l)) => l,
            (None, None) => LabelGranularity::Attribute.as_str(),
        };
        let labels = LabelGranularity::parse(labels_name).with_context(|| {
            format!("--labels {labels_name}: expected type, section, attribute or attribute-domain")
        })?;
        let loss = a
            .loss
            .or(state.as_ref().map(|s| s.loss.kind))
            .unwrap_or(LossKind::SubclusterAdacos);
        let seed = a.seed.or(state.as_ref().and_then(|s| s.seed)).unwrap_or(1);
        let st = state.as_ref();
        let features = match (
            a.window_seconds,
            a.window_hop_seconds,
            st.and_then(|s| s.features.clone()),
        ) {
            (None, None, Some(f)) => f,
            // With --resume, a flag left out is the checkpoint's; given, both must be the checkpoint's window.
            (w, h, Some(f)) => {
                let asked = window_features(
                    w.unwrap_or(seconds(&f, f.window_samples)),
                    h.unwrap_or(seconds(&f, f.window_hop_samples)),
                )?;
                if (asked.window_samples, asked.window_hop_samples)
                    != (f.window_samples, f.window_hop_samples)
                {
                    return Err(other_window(&checkpoint::find(&a.out), &f));
                }
                f
            }
            (w, h, None) => window_features(
                w.unwrap_or(DEFAULT_WINDOW_SECONDS),
                h.unwrap_or(DEFAULT_WINDOW_HOP_SECONDS),
            )?,
        };
        let chosen = Chosen {
            labels,
            loss,
            seed,
            batch: a
                .batch
                .or(st.and_then(|s| s.batch))
                .unwrap_or(DEFAULT_BATCH),
            lr: a.lr.or(st.and_then(|s| s.lr)).unwrap_or(DEFAULT_LR),
            mixup: !a.no_mixup && st.and_then(|s| s.mixup).unwrap_or(true),
            features,
            epochs: a
                .epochs
                .or(st.and_then(|s| s.epochs))
                .unwrap_or(DEFAULT_EPOCHS),
            kmeans: a
                .kmeans
                .or(st.and_then(|s| s.kmeans))
                .unwrap_or(DEFAULT_KMEANS),
            quantile: a
                .quantile
                .or(st.and_then(|s| s.quantile))
                .unwrap_or(DEFAULT_QUANTILE),
            target_centres: a
                .target_centres
                .or(st.and_then(|s| s.target_centres))
                .unwrap_or(DEFAULT_TARGET_CENTRES),
        };
        let features = &chosen.features;
        let [frames, n_mels] = features.log_mel_shape();
        let base = ModelConfig::paper(frames, n_mels, features.spectrum_len());
        let arch = match (a.arch, &state) {
            (Some(arch), _) => arch,
            (None, Some(s)) => return Self::with_model(a, chosen, s.model.clone()),
            (None, None) => Arch::Paper,
        };
        let model = match arch {
            Arch::Paper => base,
            Arch::Small => ModelConfig {
                tf_widths: vec![8, 16, 32, 64],
                tf_embedding: 64,
                spec_filters: 64,
                spec_dense: 64,
                spec_embedding: 64,
                ..base
            },
            Arch::Tiny => ModelConfig::tiny(frames, n_mels, features.spectrum_len()),
        };
        Self::with_model(a, chosen, model)
    }

    fn with_model(a: &FitArgs, c: Chosen, model: ModelConfig) -> anyhow::Result<Self> {
        let Chosen {
            labels,
            loss,
            seed,
            batch,
            lr,
            mixup,
            features,
            epochs,
            kmeans,
            quantile,
            target_centres,
        } = c;
        Ok(Self {
            data: a.data.clone(),
            out: a.out.clone(),
            epochs,
            batch,
            lr,
            seed,
            loss,
            labels,
            device: a.device,
            resume: a.resume,
            force: a.force,
            features,
            model: Some(model),
            kmeans,
            quantile,
            target_centres,
            mixup,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            progress: true,
            start: None,
        })
    }
}

/// `out` holds a whole bundle of its own (not the old one of an interrupted `--force` run, waiting to be
/// replaced: `fit` has taken up such a replacement, and removed an empty backup, before it reads the checkpoint).
fn finished_bundle(out: &Path) -> bool {
    !replace::backup_dir(out).exists() && Bundle::load(out).is_ok()
}

/// `n` samples of `f`'s rate in seconds.
fn seconds(f: &FeatureParams, n: usize) -> f64 {
    n as f64 / f64::from(f.sample_rate.max(1))
}

/// `--resume` of the checkpoint in `ckpt`, trained on the window of `f`, with window flags that give another.
fn other_window(ckpt: &Path, f: &FeatureParams) -> anyhow::Error {
    anyhow::anyhow!(
        "--resume: the checkpoint in {} was trained on windows of --window-seconds {} --window-hop-seconds {} ({} \
         mel bands, {} Hz): leave the window flags out to continue it, or give these",
        ckpt.display(),
        seconds(f, f.window_samples),
        seconds(f, f.window_hop_samples),
        f.n_mels,
        f.sample_rate
    )
}

/// What [`FitOptions::from_args`] takes from the command line, or from the checkpoint it resumes.
struct Chosen {
    labels: LabelGranularity,
    loss: LossKind,
    seed: u64,
    batch: usize,
    lr: f64,
    mixup: bool,
    features: FeatureParams,
    epochs: usize,
    kmeans: usize,
    quantile: f64,
    target_centres: TargetCentres,
}

/// Forces burn's lazily initialised parameters to be drawn (from the seeded backend RNG) when visited.
struct InitialiseNow;

impl burn::module::ModuleVisitor for InitialiseNow {
    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        let _ = param.val();
    }
}

/// Folds the BatchNorm layers' last running-statistics update into their values. burn keeps each update pending
/// (per thread) until the next forward pass reads it, and a checkpoint's save and the export read the value
/// without it: the checkpoint then held statistics one batch older than the network that went on training (a
/// `--resume` continued from other ones than an uninterrupted run, and ended on other weights and thresholds),
/// and the exported graph missed the last batch's update. `valid()` settles them in place: the running states are
/// shared with the copy it returns, which is dropped.
fn settle_running_statistics(model: &Model) {
    let _ = model.valid();
}

/// What `fit` reports.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub bundle: PathBuf,
    pub params: usize,
    pub macs_per_window: u64,
    pub train_seconds: f64,
    pub backend_seconds: f64,
    pub epoch_losses: Vec<f64>,
    pub n_classes: usize,
    pub n_clips: usize,
    /// Training clips shorter than the analysis window (repeated to fill it; `fit` warns).
    pub n_short_clips: usize,
}

fn tensor3(v: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn tensor2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN) as f64
}

/// `--batch`, `--lr` and `--quantile`, checked before anything is read or computed (`prune` checks them before
/// it prunes).
pub fn check_training_numbers(batch: usize, lr: f64, quantile: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        batch >= 2,
        "--batch {batch}: at least 2 (BatchNorm needs a batch)"
    );
    anyhow::ensure!(
        lr > 0.0 && lr.is_finite(),
        "--lr {lr} must be a positive finite number"
    );
    anyhow::ensure!(
        quantile > 0.0 && quantile < 1.0,
        "--quantile {quantile} must be in (0, 1)"
    );
    Ok(())
}

/// Trains, exports and writes the bundle. Returns a summary.
pub fn fit(o: &FitOptions) -> anyhow::Result<FitReport> {
    check_training_numbers(o.batch, o.lr, o.quantile)?;
    anyhow::ensure!(
        !(o.force && o.resume),
        "--force and --resume exclude each other: --resume continues the checkpoint in {} that --force would \
         replace",
        o.out.display()
    );
    let _writing = claim_out(&o.out, "--out", Some(o.resume), o.force, &o.data)?;
    // Before the data is read: a GPU backend this build lacks is known at once.
    let device = o.device.device()?;
    // `prune` may write its pruned network without fine-tuning; a fresh network needs training.
    anyhow::ensure!(
        o.epochs >= 1 || o.start.is_some(),
        "--epochs {}: at least 1 (an untrained network is no model)",
        o.epochs
    );
    // The old bundle's checkpoint makes way for the new run's; the rest of it stays in place until the new bundle
    // is written. `--resume` of a `--force` run that was killed completes its replacement.
    let mut replacing = if o.force {
        Some(Replacement::begin(&o.out)?)
    } else if o.resume {
        Replacement::resumed(&o.out)
    } else {
        None
    };
    if o.progress {
        if let Some(r) = replacing.as_ref().filter(|r| r.holds_anything()) {
            let what = if o.force {
                "the old bundle stays until the new one is written; its checkpoint waits"
            } else {
                "finishing the replacement that an interrupted --force run began; the old bundle waits"
            };
            eprintln!("{what} in {}", r.backup().display());
        }
    }
    let written = build(o, device).and_then(|(manifest, onnx, report)| {
        if let Some(r) = &mut replacing {
            r.set_aside_bundle()?;
        }
        Bundle::write(&o.out, &manifest, &onnx)
            .with_context(|| format!("writing the bundle {}", o.out.display()))?;
        Ok(report)
    });
    let report = match (written, replacing) {
        (Ok(report), Some(r)) => {
            // The new bundle is whole: a backup that cannot be removed is a warning, not a failed run.
            if let Err(e) = r.finish() {
                eprintln!("warning: {e:#}");
            }
            report
        }
        (Ok(report), None) => report,
        (Err(mut e), Some(r)) => {
            // Interrupted with a checkpoint `--resume` continues: left as a killed run leaves it (the old bundle
            // waits in OUT/.replaced, and `--resume` completes the replacement). Putting the old checkpoint back
            // used to throw the new run's epochs away while the message said they were kept, and `--resume`
            // then went on training the old model.
            if let Some(i) = e
                .downcast_mut::<interrupt::Interrupted>()
                .filter(|i| i.resumable && i.done > 0)
            {
                i.set_aside = r.holds_anything().then(|| r.backup().to_path_buf());
                return Err(e);
            }
            return Err(r.undo(e));
        }
        (Err(e), None) => return Err(e),
    };
    if o.progress {
        eprintln!(
            "bundle written to {} (training {:.1} s, back end {:.1} s)",
            o.out.display(),
            report.train_seconds,
            report.backend_seconds
        );
    }
    Ok(report)
}

/// Everything of [`fit`] but writing the bundle: reads the data, trains (writing a checkpoint per epoch), exports
/// and computes the back end. Returns the manifest and graph to write, and the report.
fn build(o: &FitOptions, device: Device) -> anyhow::Result<(Manifest, Vec<u8>, FitReport)> {
    let data = dcase::scan(&o.data)?;
    let train = data::train_clips(&data)?;
    anyhow::ensure!(!train.is_empty(), "{}", data::describe_empty(&o.data));
    for w in data::naming_warnings(&data) {
        eprintln!("{w}");
    }
    let untrained = data.sections_without(Split::Train);
    if !untrained.is_empty() {
        let names: Vec<String> = untrained
            .iter()
            .map(|(t, s)| format!("{t} section {s:02}"))
            .collect();
        eprintln!(
            "warning: no training clips for {} (only test clips): the bundle will have no model for it (the \
             daemon refuses a machine on such a section, and `eval` refuses its test clips); put its normal clips \
             in <type>/train to include it",
            names.join(", ")
        );
    }
    anyhow::ensure!(
        train.len() >= 2 || o.epochs == 0,
        "{}: {} training clip: training needs at least 2 (a batch of 1 cannot be normalised)",
        o.data.display(),
        train.len()
    );
    // The back end scores each training clip against the other clips of its section to calibrate the threshold:
    // a section of one clip has none. Said now, not after the last epoch.
    let single: Vec<String> = data
        .sections()
        .into_iter()
        .filter(|(t, s)| data.clips_of(t, *s, Split::Train).count() == 1)
        .map(|(t, s)| format!("{t} section {s:02}"))
        .collect();
    anyhow::ensure!(
        single.is_empty(),
        "{}: {} {} only one normal training clip: its threshold is calibrated by scoring each training clip \
         against the others, so a section needs at least 2 (add clips, or move its folder out of the data set)",
        o.data.display(),
        single.join(", "),
        if single.len() == 1 { "has" } else { "have" }
    );
    let classes = ClassMap::build(o.labels, train.iter().copied());
    // Attribute labels on clips that have none are section labels under another name: said, as the bundle's
    // provenance will say "attribute".
    if matches!(
        o.labels,
        LabelGranularity::Attribute | LabelGranularity::AttributeDomain
    ) && o.progress
        && train.iter().all(|c| c.attribute_key().is_empty())
    {
        eprintln!(
            "warning: --labels {}: no training clip has attributes (in its name or an attributes_SS.csv), so the \
             classes are the sections ({}): the same as --labels section",
            o.labels.as_str(),
            classes.names.len()
        );
    }
    // The angular-margin losses learn by telling the auxiliary classes apart: with one class every embedding is
    // already "right" (loss 0 from the first batch) and the network would stay as initialised, a bundle of random
    // weights that looks trained. One machine recorded in one condition is the common way to get there.
    if classes.names.len() < 2
        && matches!(o.loss, LossKind::SubclusterAdacos | LossKind::Adacos)
        && o.start.is_none()
    {
        anyhow::bail!(
            "{}: one auxiliary class with --labels {} ('{}'): --loss {} learns what normal sounds like by telling \
             classes apart, and with one class there is nothing to tell (the loss would be 0 from the start and \
             the network stay as initialised). Give it classes: clips of other operating conditions with \
             --labels attribute (`sonitor-train import --attrs …` per condition), or of other machines (another \
             type or section: other machines' normal sounds help even if only this one is watched)",
            o.data.display(),
            o.labels.as_str(),
            classes.names.first().map_or("", String::as_str),
            o.loss.as_str()
        );
    }
    let [frames, n_mels] = o.features.log_mel_shape();
    let config = o
        .model
        .clone()
        .unwrap_or_else(|| ModelConfig::paper(frames, n_mels, o.features.spectrum_len()));
    anyhow::ensure!(
        config.frames == frames
            && config.n_mels == n_mels
            && config.spectrum_len == o.features.spectrum_len(),
        "model input shapes ({}×{}, {}) do not match the features ({frames}×{n_mels}, {})",
        config.frames,
        config.n_mels,
        config.spectrum_len,
        o.features.spectrum_len()
    );
    config.validate()?;
    let t_load = Instant::now();
    let audio_bytes = data::audio_bytes_estimate(&train, &o.features);
    if let Some(w) = data::memory_available().and_then(|a| data::memory_warning(audio_bytes, a)) {
        eprintln!("{w}");
    }
    let headers = data::Headers::read(&train);
    for w in [
        headers.multichannel_warning(),
        headers.low_rate_warning(o.features.sample_rate),
    ]
    .into_iter()
    .flatten()
    {
        eprintln!("{w}");
    }
    let clips = data::load_train_clips(&train, &classes, &o.features)?;
    let short = clips
        .iter()
        .filter(|c| c.audio.len() < o.features.window_samples)
        .count();
    if short > 0 {
        eprintln!(
            "warning: {short} of {} training clips are shorter than the {} s analysis window: each is repeated to \
             fill it, so the network also learns the seams (a shorter --window-seconds avoids that)",
            clips.len(),
            o.features.window_seconds()
        );
    }
    let data_sha = data::data_sha256(&train)?;
    if o.progress {
        eprintln!(
            "{} training clips, {} classes ({:?}), loaded in {:.1} s ({:.0} MiB in memory)",
            clips.len(),
            classes.names.len(),
            o.labels,
            t_load.elapsed().as_secs_f64(),
            clips.iter().map(|c| c.audio.bytes()).sum::<usize>() as f64 / f64::from(1u32 << 20)
        );
    }

    // The backend's RNG is process-wide: seeding it and drawing the initial parameters must not interleave
    // with another `fit` in the same process (the test harness runs tests in parallel), or one seed would not
    // give one network.
    let mut model = if let Some(st) = &o.start {
        anyhow::ensure!(
            st.classes == classes.names,
            "the data set's classes ({}) are not the ones the network was trained on ({})",
            classes.names.join(", "),
            st.classes.join(", ")
        );
        st.model.clone()
    } else {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(o.seed);
        let model = config.init(&device)?;
        // burn initialises parameters lazily, on first use: draw them all now, under the lock.
        model.visit(&mut InitialiseNow);
        model
    };
    let params = model.num_params();
    let macs = config.macs_per_window();
    if o.progress {
        eprintln!(
            "network: {params} parameters, {:.1} MFLOPs per window ({} MACs), embedding {}",
            2.0 * macs as f64 / 1e6,
            macs,
            config.embedding_dim()
        );
    }
    let mut loss = match &o.start {
        Some(st) => st.loss.clone(),
        None => Loss::new(o.loss, classes.names.len(), config.embedding_dim(), o.seed),
    };
    let mut optim = AdamConfig::new().init();
    let mut start_epoch = 0;
    let mut history = Vec::new();
    // Seconds of training of the runs a resumed one continues.
    let mut trained_before = 0.0;
    if o.resume {
        let ckpt = checkpoint::find(&o.out);
        let state = checkpoint::read_for_resume(&o.out)?;
        anyhow::ensure!(
            !state.pruned || o.start.is_some(),
            "--resume: the checkpoint in {} is the fine-tuning of a `sonitor-train prune` run, which cannot be \
             continued (its bundle would lack the pruning): run that prune again",
            ckpt.display()
        );
        // The checkpoint's settings rule: a different one asked for explicitly is an error, not ignored.
        let differs = |what: &str, theirs: &str, ours: &str| {
            anyhow::anyhow!(
                "--resume: the checkpoint in {} was trained with {what} {theirs}, not {ours} (leave {what} out to \
                 continue it, or train a new bundle elsewhere)",
                ckpt.display()
            )
        };
        if state.loss.kind != o.loss {
            return Err(differs("--loss", state.loss.kind.as_str(), o.loss.as_str()));
        }
        if let Some(l) = state.labels.as_deref().filter(|&l| l != o.labels.as_str()) {
            return Err(differs("--labels", l, o.labels.as_str()));
        }
        if let Some(s) = state.seed.filter(|&s| s != o.seed) {
            return Err(differs("--seed", &s.to_string(), &o.seed.to_string()));
        }
        if let Some(b) = state.batch.filter(|&b| b != o.batch) {
            return Err(differs("--batch", &b.to_string(), &o.batch.to_string()));
        }
        if let Some(lr) = state.lr.filter(|&lr| lr != o.lr) {
            return Err(differs("--lr", &lr.to_string(), &o.lr.to_string()));
        }
        if let Some(m) = state.mixup.filter(|&m| m != o.mixup) {
            anyhow::bail!(
                "--resume: the checkpoint in {} was trained {}: {} --no-mixup to continue it, or train a new \
                 bundle elsewhere",
                ckpt.display(),
                if m { "with mixup" } else { "without mixup (--no-mixup)" },
                if m { "leave out" } else { "give" }
            );
        }
        if let Some(f) = state.features.as_ref().filter(|&f| *f != o.features) {
            return Err(other_window(&ckpt, f));
        }
        // The back end's settings: a resume that took the defaults instead wrote other centres and thresholds
        // (quantile 0.9 for 0.99: thresholds 25% lower, more false alarms) under the same graph.
        if let Some(k) = state.kmeans.filter(|&k| k != o.kmeans) {
            return Err(differs("--kmeans", &k.to_string(), &o.kmeans.to_string()));
        }
        if let Some(q) = state.quantile.filter(|&q| q != o.quantile) {
            return Err(differs(
                "--quantile",
                &q.to_string(),
                &o.quantile.to_string(),
            ));
        }
        if let Some(t) = state.target_centres.filter(|&t| t != o.target_centres) {
            return Err(differs(
                "--target-centres",
                t.as_str(),
                o.target_centres.as_str(),
            ));
        }
        if let Some(sha) = state.data_sha256.as_deref().filter(|&d| d != data_sha) {
            // The same folder, its clips changed: "resume with --data DIR" named the folder just given (review25).
            if state
                .data_path
                .as_ref()
                .is_some_and(|p| resolved(p) == resolved(&o.data))
            {
                anyhow::bail!(
                    "--resume: the training clips in {} changed since the checkpoint in {} was written (training \
                     clips digest {} then, {} now: clips added, removed or rewritten): continuing would make a \
                     bundle whose provenance names data its first epochs never saw. Put the clips back as they were \
                     to resume, or train a new bundle (another --out, or --force without --resume)",
                    o.data.display(),
                    ckpt.display(),
                    sha.get(..12).unwrap_or(sha),
                    data_sha.get(..12).unwrap_or(&data_sha),
                );
            }
            anyhow::bail!(
                "--resume: the checkpoint in {} was trained on another data set ({}, training clips digest {}), \
                 not {} (digest {}): continuing would make a bundle whose provenance names data its first epochs \
                 never saw. Resume with --data {}, or train a new bundle elsewhere",
                ckpt.display(),
                state.data_path.as_ref().map_or("?".into(), |p| p.display().to_string()),
                sha.get(..12).unwrap_or(sha),
                o.data.display(),
                data_sha.get(..12).unwrap_or(&data_sha),
                state.data_path.as_ref().map_or("<the first run's>".into(), |p| p.display().to_string())
            );
        }
        anyhow::ensure!(
            state.model == config,
            "--resume: the checkpoint in {} was made with another network ({}), not {}: leave --arch and the \
             window flags out to continue it",
            ckpt.display(),
            network_summary(&state.model),
            network_summary(&config)
        );
        anyhow::ensure!(
            state.classes == classes.names,
            "--resume: the checkpoint in {} was trained on the classes {}, the data set gives {}",
            ckpt.display(),
            state.classes.join(", "),
            classes.names.join(", ")
        );
        model = checkpoint::load_weights(model, &ckpt).context("--resume")?;
        let optimizer = ckpt.join(checkpoint::OPTIMIZER_FILE);
        optim = optim
            .load(&optimizer)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", optimizer.display()))?;
        anyhow::ensure!(
            state.epochs_done <= o.epochs,
            "--resume: the checkpoint in {} has {} epochs done, more than --epochs {}",
            ckpt.display(),
            state.epochs_done,
            o.epochs
        );
        // A run that ended: its bundle is written, and a resume would only write it again (or, before the run's
        // epochs were recorded, train it on to the default 10 and replace it). Its bundle not written yet (killed
        // after the last checkpoint, or the old bundle of a --force run still in place): exported now.
        anyhow::ensure!(
            state.epochs_done < o.epochs || !finished_bundle(&o.out),
            "--resume: the run of the checkpoint in {} ended: its {} epochs are done and {} holds its bundle. \
             Nothing to continue; give --epochs more than {} to train it further",
            ckpt.display(),
            state.epochs_done,
            o.out.display(),
            state.epochs_done
        );
        loss = state.loss;
        start_epoch = state.epochs_done;
        trained_before = state.train_seconds.unwrap_or(0.0);
        history = state.history;
        if o.progress {
            eprintln!("resuming after epoch {start_epoch} from {}", ckpt.display());
        }
    }

    // Before the first epoch, so that an --out that cannot be a directory fails now, not after an epoch.
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("--out: creating {}", o.out.display()))?;
    let mut fx = FeatureExtractor::new(o.features.clone())?;
    let t_train = Instant::now();
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _epochs = interrupt::Epochs::start();
    for epoch in start_epoch..o.epochs {
        let mut rng =
            ChaCha8Rng::seed_from_u64(o.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64);
        let mut order: Vec<usize> = (0..clips.len()).collect();
        order.shuffle(&mut rng);
        let batches: Vec<&[usize]> = order.chunks(o.batch).filter(|b| b.len() >= 2).collect();
        let t_epoch = Instant::now();
        let (mut sum, mut seen) = (0.0, 0usize);
        for (bi, idx) in batches.iter().enumerate() {
            if interrupt::requested() {
                if live {
                    eprintln!();
                }
                return Err(interrupt::Interrupted {
                    out: o.out.clone(),
                    resumable: o.start.is_none(),
                    set_aside: None,
                    epochs: o.epochs,
                    done: epoch,
                }
                .into());
            }
            let b = data::make_batch(&clips, idx, classes.names.len(), &mut fx, o.mixup, &mut rng)?;
            let n = b.size;
            let mel = tensor3(b.log_mel, [n, frames, n_mels], &device);
            let spec = tensor2(b.spectrum, [n, config.spectrum_len], &device);
            let emb = model.forward(mel, spec);
            let l = loss.forward(emb, &b.labels);
            let value = scalar(l.clone());
            anyhow::ensure!(
                value.is_finite(),
                "the loss became {value} at epoch {} batch {} (lr {} too high?)",
                epoch + 1,
                bi + 1,
                o.lr
            );
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(o.lr, model, grads);
            sum += value * n as f64;
            seen += n;
            // The live batch line only on a terminal; a log file gets one line per epoch.
            if o.progress && live {
                eprint!(
                    "\repoch {}/{} batch {}/{} loss {:.4} s {:.2} {:.1} clips/s   ",
                    epoch + 1,
                    o.epochs,
                    bi + 1,
                    batches.len(),
                    sum / seen as f64,
                    loss.scale,
                    seen as f64 / t_epoch.elapsed().as_secs_f64().max(1e-9)
                );
                let _ = std::io::stderr().flush();
            }
        }
        let mean = if seen > 0 {
            sum / seen as f64
        } else {
            f64::NAN
        };
        history.push(mean);
        if o.progress {
            eprintln!(
                "{}epoch {}/{} loss {:.4} s {:.2} {:.1} s ({:.1} clips/s)",
                if live { "\r" } else { "" },
                epoch + 1,
                o.epochs,
                mean,
                loss.scale,
                t_epoch.elapsed().as_secs_f64(),
                seen as f64 / t_epoch.elapsed().as_secs_f64().max(1e-9)
            );
        }
        let state = checkpoint::State {
            epochs_done: epoch + 1,
            loss: loss.clone(),
            model: config.clone(),
            classes: classes.names.clone(),
            history: history.clone(),
            labels: Some(o.labels.as_str().into()),
            seed: Some(o.seed),
            data_path: Some(o.data.clone()),
            data_sha256: Some(data_sha.clone()),
            features: Some(o.features.clone()),
            batch: Some(o.batch),
            lr: Some(o.lr),
            mixup: Some(o.mixup),
            epochs: Some(o.epochs),
            kmeans: Some(o.kmeans),
            quantile: Some(o.quantile),
            target_centres: Some(o.target_centres),
            train_seconds: Some(trained_before + t_train.elapsed().as_secs_f64()),
            pruned: o.start.is_some(),
        };
        settle_running_statistics(&model);
        checkpoint::save(&o.out, &state, |dir| {
            let m = dir.join(checkpoint::MODEL_FILE);
            model
                .clone()
                .save_file(&m)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", m.display()))?;
            let opt = dir.join(checkpoint::OPTIMIZER_FILE);
            optim
                .save(&opt)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", opt.display()))
        })?;
    }
    // Asked during the last epoch's checkpoint: its bundle is not written (`--resume` writes it).
    if interrupt::requested() && start_epoch < o.epochs {
        return Err(interrupt::Interrupted {
            out: o.out.clone(),
            resumable: o.start.is_none(),
            set_aside: None,
            epochs: o.epochs,
            done: o.epochs,
        }
        .into());
    }
    let train_seconds = trained_before + t_train.elapsed().as_secs_f64();

    // Export, then compute the back end through the exported graph (the daemon's path).
    let t_back = Instant::now();
    // The running statistics were settled with the last epoch's checkpoint (and a network that was not trained
    // here has none pending).
    let onnx = export::export_onnx(&model, &config, "sonitor-train")?;
    let embedder = crate::infer::exported_graph(&onnx, &config)?;
    // The training audio is already in memory: the back end embeds it, it does not read the files again.
    let audio_of: BTreeMap<&Path, &data::Pcm> = train
        .iter()
        .zip(&clips)
        .map(|(c, t)| (c.path.as_path(), &t.audio))
        .collect();
    let mut sections = Vec::new();
    for (machine_type, section) in data.sections() {
        let sclips: Vec<&Clip> = data
            .clips_of(&machine_type, section, Split::Train)
            .collect();
        if sclips.is_empty() {
            continue;
        }
        let with_audio = sclips
            .iter()
            .map(|&c| {
                let a = audio_of
                    .get(c.path.as_path())
                    .copied()
                    .with_context(|| format!("{}: not among the loaded clips", c.path.display()))?;
                Ok((c, a))
            })
            .collect::<anyhow::Result<Vec<(&Clip, &data::Pcm)>>>()?;
        let (sm, gamma_warning) = section_model(
            &embedder,
            &with_audio,
            &o.features,
            o.kmeans,
            o.quantile,
            o.target_centres,
            o.seed,
        )
        .with_context(|| format!("{machine_type} section {section:02}"))?;
        if let Some(w) = gamma_warning {
            eprintln!("{w}");
        }
        if o.progress {
            eprintln!(
                "{machine_type} section {section:02}: {} source + {} target centres, {}",
                sm.n_source_centroids,
                sm.n_target_centroids,
                crate::threshold::describe(&sm.threshold),
            );
        }
        sections.push(sm);
    }
    eprintln!("{}", crate::threshold::quantile_note(o.quantile));
    let backend_seconds = t_back.elapsed().as_secs_f64();
    let set_name = o
        .data
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let (inputs, output) = export::signature(&config);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_id: format!(
            "{set_name}-{}-s{}-{}{}",
            o.loss.as_str(),
            o.seed,
            if o.start.is_some() { "pruned-" } else { "" },
            &sonitor_core::bundle::sha256_hex(&onnx)[..6]
        ),
        features: o.features.clone(),
        inputs,
        output,
        embedding_dim: config.embedding_dim(),
        classes: classes.names.clone(),
        sections,
        clip_pooling: "mean".into(),
        onnx_file: sonitor_core::bundle::DEFAULT_ONNX_FILE.into(),
        onnx_sha256: String::new(),
        provenance: Provenance {
            tool: format!("sonitor-train {}", env!("CARGO_PKG_VERSION")),
            created_at: rfc3339_now(),
            command: o.command.clone(),
            // Absolute, so that `prune` finds the data set from any directory.
            data_path: std::fs::canonicalize(&o.data)
                .unwrap_or_else(|_| o.data.clone())
                .display()
                .to_string(),
            data_sha256: data_sha,
            loss: o.loss.as_str().into(),
            labels: o.labels.as_str().into(),
            epochs: o.epochs,
            seed: o.seed,
            model: serde_json::json!({
                "config": config,
                "parameters": params,
                "macs_per_window": macs,
                "flops_per_window": 2 * macs,
                "batch": o.batch,
                "lr": o.lr,
                "mixup": o.mixup,
                "optimizer": "adam",
                "backend": o.device,
                "kmeans": o.kmeans,
                "target_centres": o.target_centres,
                "epoch_losses": history,
                "train_seconds": train_seconds,
                "pruning": o.start.as_ref().map(|s| s.pruning.clone()),
            }),
            metrics: serde_json::Value::Null,
        },
    };
    let report = FitReport {
        bundle: o.out.clone(),
        params,
        macs_per_window: macs,
        train_seconds,
        backend_seconds,
        epoch_losses: history,
        n_classes: classes.names.len(),
        n_clips: clips.len(),
        n_short_clips: short,
    };
    Ok((manifest, onnx, report))
}

/// What a bundle directory holds that a new run must not mix with its own: the bundle's files and the
/// checkpoints (whole, moved aside or half-written).
fn bundle_entries(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = replace::BUNDLE_FILES.iter().map(|f| out.join(f)).collect();
    v.extend(checkpoint::all_dirs(out));
    v
}

/// A network's shape in a few words, for messages: its input, the time–frequency branch's widths and the
/// embedding.
fn network_summary(m: &ModelConfig) -> String {
    format!(
        "input {}×{} and {}, widths {:?}, embedding {} + {}",
        m.frames, m.n_mels, m.spectrum_len, m.tf_widths, m.tf_embedding, m.spec_embedding
    )
}

/// The names of the bundle files and checkpoint directories that `out` holds (empty: nothing a new bundle would
/// overwrite or mix with). A `checkpoint.new/` alone is not among them: it is what a save that failed (a full
/// disk) left half-written, never a checkpoint in use, and the next save removes it.
pub fn held_bundle_files(out: &Path) -> Vec<String> {
    let half_written = checkpoint::half_written(out);
    let entries = bundle_entries(out);
    let alone = entries
        .iter()
        .filter(|p| p.exists())
        .all(|p| *p == half_written);
    entries
        .iter()
        .filter(|p| p.exists() && !(alone && **p == half_written))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Refuses a bundle directory to write (`flag`: `--out`, `--bundle`) that is not a directory, one that holds what
/// an interrupted `--force` run set aside (unless `resume` continues that run), or (unless `resume` or `force`) one
/// that holds a bundle or checkpoint: a new run would overwrite it, or leave its own checkpoint beside another
/// network's graph. `resume`: `None` for a command without `--resume`.
pub fn check_out(out: &Path, flag: &str, resume: Option<bool>, force: bool) -> anyhow::Result<()> {
    check_is_dir(out, flag)?;
    check_writable(out, flag, "nothing was trained")?;
    if resume == Some(true) {
        return Ok(());
    }
    replace::check_no_leftover(out, flag)?;
    if !force {
        let found = held_bundle_files(out);
        anyhow::ensure!(
            found.is_empty(),
            "{flag} {} already holds a bundle or checkpoint ({}): give another directory{}, or --force to replace \
             it",
            out.display(),
            found.join(", "),
            if resume.is_some() {
                ", --resume to continue its training"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Refuses a bundle directory this user cannot write in (or, where it does not exist yet, create), before the
/// training that would write it: a fit into a folder another user owns ran its epochs, then failed on its first
/// checkpoint (review23). A probe file, removed at once, in the directory or its nearest existing ancestor.
/// `nothing`: what the refusal spared, for its message ("nothing was trained").
fn check_writable(out: &Path, flag: &str, nothing: &str) -> anyhow::Result<()> {
    let Some(dir) = sonitor_core::regular_file::nearest_existing(out) else {
        return Ok(());
    };
    let probe = dir.join(format!(".sonitor-train-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            let what = if dir == out {
                "write in it".to_string()
            } else {
                format!("create it in {}", dir.display())
            };
            let advice = if e.kind() == std::io::ErrorKind::PermissionDenied {
                "; give this user write access there, or another directory"
            } else {
                ""
            };
            anyhow::bail!(
                "{flag} {}: cannot {what} ({e}){advice}; {nothing}",
                out.display()
            )
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM while `fit` or `prune` trains: the epoch loop stops at the next batch and says which
/// checkpoint is kept and that `--resume` continues from it (the process ended without a word, and nothing told the
/// user that the run could be continued: review25). Outside the epochs, and at a second signal, the signal ends the
/// process at once as before.
pub mod interrupt {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);
    static IN_EPOCHS: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(sig: libc::c_int) {
        // SAFETY: `signal` and `raise` are async-signal-safe; a second signal (or one outside the epochs) gets the
        // default action: the process ends as it did without this handler.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            if !IN_EPOCHS.load(Ordering::SeqCst) {
                libc::raise(sig);
                return;
            }
        }
        REQUESTED.store(true, Ordering::SeqCst);
    }

    /// Installs the handler for SIGINT and SIGTERM: the command-line `fit` and `prune` only, at their start (the
    /// library's callers, tests among them, keep their own dispositions).
    pub fn catch() {
        // SAFETY: installing a handler that only touches atomics and calls async-signal-safe functions.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
    }

    /// Whether a signal asked the epochs to stop.
    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// While held, the epochs run: a signal asks them to stop rather than ending the process.
    pub struct Epochs(());

    impl Epochs {
        pub fn start() -> Self {
            IN_EPOCHS.store(true, Ordering::SeqCst);
            Epochs(())
        }
    }

    impl Drop for Epochs {
        fn drop(&mut self) {
            IN_EPOCHS.store(false, Ordering::SeqCst);
        }
    }

    /// The run of `epochs` stopped at a signal with `done` epochs, whose checkpoint is in `out`: in the next epoch,
    /// or after the last one before the bundle was written. The command-line ends with status 130, as a shell
    /// reports a process ended by Ctrl-C.
    #[derive(Debug, thiserror::Error)]
    #[error("{}", said(self))]
    pub struct Interrupted {
        pub out: PathBuf,
        pub epochs: usize,
        pub done: usize,
        /// A `fit`, which `--resume` continues; not a `prune`, which cannot be.
        pub resumable: bool,
        /// Where a `--force` run set aside what it replaces (`OUT/.replaced`: the old checkpoint), when it did.
        pub set_aside: Option<PathBuf>,
    }

    fn said(i: &Interrupted) -> String {
        let ckpt = crate::checkpoint::find(&i.out);
        let waits = i.set_aside.as_ref().map_or(String::new(), |b| {
            format!(
                ". Until then the bundle it replaces (--force) stays in {}, its checkpoint set aside in {}; to keep \
                 that bundle instead, {}",
                i.out.display(),
                b.display(),
                crate::replace::how_to_put_back(b, &i.out)
            )
        });
        if !i.resumable {
            format!(
                "interrupted in epoch {} of {}: a prune cannot be continued; {} holds what it held before, run the \
                 command again",
                (i.done + 1).min(i.epochs),
                i.epochs,
                i.out.display()
            )
        } else if i.done == 0 {
            format!(
                "interrupted in epoch 1 of {}, before any checkpoint: nothing to continue; run the command again",
                i.epochs
            )
        } else if i.done == i.epochs {
            format!(
                "interrupted after the last epoch ({}), before the bundle was written: its checkpoint is kept in \
                 {}; the same command with --resume writes the bundle{waits}",
                i.epochs,
                ckpt.display()
            )
        } else {
            format!(
                "interrupted in epoch {} of {}: the checkpoint of epoch {} is kept in {}; the same command with \
                 --resume continues from it{waits}",
                i.done + 1,
                i.epochs,
                i.done,
                ckpt.display()
            )
        }
    }
}

/// Creates the directory `dir` (and its parents) that `flag` names for this run's output. One this user may not
/// create or write in is refused with where and what to do ([`check_writable`]; `nothing`: what the refusal spared),
/// not with the bare "Permission denied" of the creation: a new `--out` under another user's folder said only
/// that (review24).
pub fn make_out_dir(dir: &Path, flag: &str, nothing: &str) -> anyhow::Result<()> {
    check_writable(dir, flag, nothing)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{flag}: creating {}", dir.display()))
}

/// A bundle directory held for one run that writes into it ([`lock_out`]), until dropped. A directory the lock
/// created is removed again if the run left it empty (it was refused, or failed before writing).
pub struct OutLock {
    _dir: std::fs::File,
    created: Option<PathBuf>,
}

impl Drop for OutLock {
    fn drop(&mut self) {
        if let Some(d) = &self.created {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Takes the bundle directory `out` (`flag`: `--out`, `--bundle`; created if need be) for this run: two runs into
/// one directory mixed their checkpoints, or one replaced the other's bundle while both said they wrote it.
fn lock_out(out: &Path, flag: &str) -> anyhow::Result<OutLock> {
    check_is_dir(out, flag)?;
    let created = !out.exists();
    // An existing directory is checked for writing by `check_out`, after the lock.
    if created {
        make_out_dir(out, flag, "nothing was trained")?;
    }
    let lock = OutLock {
        _dir: std::fs::File::open(out)
            .with_context(|| format!("{flag}: opening {}", out.display()))?,
        created: created.then(|| out.to_path_buf()),
    };
    match lock._dir.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{flag} {}: another sonitor-train run is writing into it; wait for it to end, or give another \
             directory",
            out.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{flag}: locking {}", out.display()))
        }
    }
}

/// A bundle directory to write (`flag`: `--out`, `--bundle`) for this run: locked ([`lock_out`]), then checked
/// ([`check_out`], [`check_outside_data`] against the data set `data`).
pub fn claim_out(
    out: &Path,
    flag: &str,
    resume: Option<bool>,
    force: bool,
    data: &Path,
) -> anyhow::Result<OutLock> {
    let lock = lock_out(out, flag)?;
    check_out(out, flag, resume, force)?;
    check_outside_data(out, flag, data)?;
    Ok(lock)
}

/// Refuses a directory to write (`flag`: a bundle's `--out`, `--bundle`, or the scores' `--out` of `eval`,
/// `combine` and `baseline`) that exists as something else than a directory.
pub fn check_is_dir(out: &Path, flag: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !out.exists() || out.is_dir(),
        "{flag} {}: exists and is not a directory",
        out.display()
    );
    Ok(())
}

/// `path` made absolute with its symbolic links resolved, as far as it exists (the rest appended as written).
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut base = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = base.canonicalize() {
            return rest.iter().rev().fold(c, |p, n| p.join(n));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses a bundle directory (`flag`: `--out`, `--bundle`) that is the data set's root or inside it: its files
/// would be written among the clips, where the next scan of the data set meets them.
fn check_outside_data(out: &Path, flag: &str, data: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        !resolved(out).starts_with(resolved(data)),
        "{flag} {} is inside the data set {}: give a directory outside it",
        out.display(),
        data.display()
    );
    Ok(())
}

/// Loads the network, loss and classes of the last whole training checkpoint of the bundle directory `out`
/// ([`checkpoint::find`]).
pub fn load_checkpoint(out: &Path, device: &Device) -> anyhow::Result<(Model, checkpoint::State)> {
    let ckpt = checkpoint::find(out);
    let state = checkpoint::read_state(&ckpt)?;
    let model = checkpoint::load_weights(state.model.init(device)?, &ckpt)?;
    Ok((model, state))
}

/// Embeds clips (with their decoded audio) on all cores (one tract plan is shared; features per thread).
pub fn embed_clips(
    embedder: &EmbeddingGraph,
    clips: &[(&Clip, &data::Pcm)],
    params: &FeatureParams,
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    parallel::map_with_state(
        clips,
        || FeatureExtractor::new(params.clone()).map_err(anyhow::Error::from),
        |fx, (c, a)| {
            crate::infer::window_embeddings(embedder, fx, &a.to_f32())
                .with_context(|| format!("embedding {}", c.path.display()))
        },
    )
}

/// The scoring model of one section from its normal training clips: k-means centres of the source-domain
/// window embeddings plus the target-domain centres; threshold = gamma quantile of the normal training window
/// scores. A window is scored as the daemon's windows of new audio are, against centres its own clip did not
/// help to make ([`kmeans::LeaveOut`]): its clip's target centres are left out, and each source centre is made
/// again without its clip's windows (dropped if they were all it had). Scored against centres of its own clip,
/// a window would score about 0: with a few more source windows than `k` most centres are one clip's windows,
/// and the gamma fitted to those zeros gave a threshold that most normal clips crossed. An error when the scores
/// cannot give a threshold (a section with one training clip: no other clip to be scored against). With it, the
/// warning to print where the gamma could not be fitted and the threshold is the scores' empirical quantile.
pub fn section_model(
    embedder: &EmbeddingGraph,
    clips: &[(&Clip, &data::Pcm)],
    params: &FeatureParams,
    k: usize,
    quantile: f64,
    target_mode: TargetCentres,
    seed: u64,
) -> anyhow::Result<(SectionModel, Option<String>)> {
    let first = clips.first().context("no training clips")?.0;
    let emb = embed_clips(embedder, clips, params)?;
    // A network whose training diverged gives zero (or not-a-number) embeddings, which no centroid or score can be
    // made of; said so here rather than as a centroid that is "not unit-norm" when the bundle is written.
    let windows = emb.iter().flatten().count();
    let dead = emb
        .iter()
        .flatten()
        .filter(|v| {
            let n: f32 = v.iter().map(|x| x * x).sum();
            !(n.is_finite() && n > 0.0)
        })
        .count();
    anyhow::ensure!(
        dead == 0,
        "the network gives {dead} of its {windows} training windows an embedding that is zero or not a number: its \
         training collapsed (a learning rate too high?); train again with a lower --lr and --force (or another \
         --out), not --resume, which would continue the collapsed network from its checkpoint"
    );
    let mut source = Vec::new();
    let mut source_owner = Vec::new();
    let mut target: Vec<(usize, Vec<f32>)> = Vec::new();
    for (ci, ((c, _), e)) in clips.iter().zip(&emb).enumerate() {
        if c.name.domain == Some(Domain::Target) {
            match target_mode {
                TargetCentres::Window => target.extend(e.iter().map(|v| (ci, v.clone()))),
                TargetCentres::Clip => {
                    let dim = e.first().map_or(0, |v| v.len());
                    let mut m = vec![0.0f32; dim];
                    for v in e {
                        for (a, b) in m.iter_mut().zip(v) {
                            *a += b;
                        }
                    }
                    target.push((ci, kmeans::normalised(&m)));
                }
            }
        } else {
            source.extend(e.iter().cloned());
            source_owner.extend(std::iter::repeat_n(ci, e.len()));
        }
    }
    let src_centres = kmeans::spherical_kmeans(&source, k, seed, 100);
    let leave_out = kmeans::LeaveOut::new(&src_centres, &source);
    let n_source_clips = clips
        .iter()
        .filter(|(c, _)| c.name.domain != Some(Domain::Target))
        .count();
    let n_target_clips = clips.len() - n_source_clips;
    // Scored with the daemon's function, against the centres as they would be without the clip.
    let mut scores = Vec::new();
    for (ci, e) in emb.iter().enumerate() {
        let others: Vec<Vec<f32>> = target
            .iter()
            .filter(|(owner, _)| *owner != ci)
            .map(|(_, t)| t.clone())
            .chain(leave_out.centres_without(&source, |i| source_owner[i] == ci))
            .collect();
        if others.is_empty() {
            continue;
        }
        for v in e {
            scores.push(score::min_cosine_distance(v, &others) as f64);
        }
    }
    let cannot = |why: &str| {
        anyhow::anyhow!(
            "cannot fit a threshold from {n_source_clips} source + {n_target_clips} target normal training \
             clips: {why}; a section needs at least 2 normal training clips whose embeddings differ (more clips, \
             or more epochs)"
        )
    };
    anyhow::ensure!(
        !scores.is_empty(),
        cannot("no window has a centre of another clip to be scored against")
    );
    anyhow::ensure!(
        scores.iter().all(|s| s.is_finite()) && scores.iter().any(|&s| s > 0.0),
        cannot("every normal training window scores 0 (or not a number)")
    );
    let calibration = crate::threshold::calibrate(&scores, quantile);
    let gamma_warning = calibration.warning(&format!(
        "{} section {:02}",
        first.machine_type, first.name.section
    ));
    let threshold = calibration.threshold;
    anyhow::ensure!(
        threshold.value.is_finite() && threshold.value > 0.0,
        cannot(&format!(
            "the {} quantile of the scores is {}",
            threshold.quantile, threshold.value
        ))
    );
    // Distances of rounding size: the network maps every sound to about one point (a `prune --keep 0.001` did),
    // and the daemon would alarm on every window at such a threshold.
    anyhow::ensure!(
        threshold.value >= MIN_THRESHOLD,
        "the threshold fitted on the normal training clips is {:.1e}, below {MIN_THRESHOLD:.0e}: the network maps \
         every sound to about one point (pruned too far, or not trained enough), and the daemon would alarm on \
         every window; prune less (a larger --keep) or train longer",
        threshold.value
    );
    let n_source = src_centres.len();
    let n_target = target.len();
    let model = SectionModel {
        machine_type: first.machine_type.clone(),
        section: first.name.section,
        centroids: src_centres
            .into_iter()
            .chain(target.into_iter().map(|(_, t)| t))
            .collect(),
        n_source_centroids: n_source,
        n_target_centroids: n_target,
        threshold,
        baseline: None,
    };
    Ok((model, gamma_warning))
}

/// The least threshold a section's calibration may give (cosine distances of float rounding lie below it).
pub const MIN_THRESHOLD: f64 = 1e-6;

/// Current UTC time as RFC 3339 (seconds).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Groups anything by section key.
pub fn by_section<'a>(
    clips: impl IntoIterator<Item = &'a Clip>,
) -> BTreeMap<(String, u16), Vec<&'a Clip>> {
    let mut m: BTreeMap<(String, u16), Vec<&Clip>> = BTreeMap::new();
    for c in clips {
        m.entry((c.machine_type.clone(), c.name.section))
            .or_default()
            .push(c);
    }
    m
}

pub fn run(a: &FitArgs) -> anyhow::Result<()> {
    let o = FitOptions::from_args(a)?;
    let r = fit(&o)?;
    eprintln!(
        "{} clips, {} classes, {} parameters; training took {:.1} s",
        r.n_clips, r.n_classes, r.params, r.train_seconds
    );
    Ok(())
}

/// Where a bundle's ONNX file is.
pub fn onnx_path(bundle: &Path) -> PathBuf {
    bundle.join(sonitor_core::bundle::DEFAULT_ONNX_FILE)
}

#[cfg(test)]
mod tests {
    /// What an interruption says: a `prune` is not offered a `--resume` it does not have; a `--force` fit names
    /// where the replaced bundle's checkpoint waits.
    #[test]
    fn an_interruption_says_what_can_be_done() {
        let i = |resumable, set_aside: Option<&str>| {
            super::interrupt::Interrupted {
                out: "b".into(),
                epochs: 10,
                done: 3,
                resumable,
                set_aside: set_aside.map(Into::into),
            }
            .to_string()
        };
        let prune = i(false, None);
        assert!(
            prune.contains("a prune cannot be continued") && !prune.contains("--resume"),
            "{prune}"
        );
        let fit = i(true, Some("b/.replaced"));
        assert!(
            fit.contains("the same command with --resume continues from it. Until then the bundle it replaces \
                 (--force) stays in b, its checkpoint set aside in b/.replaced"),
            "{fit}"
        );
        assert!(!i(true, None).contains("replaces"));
    }

    /// A bundle directory this user cannot write in, or create, is refused before anything is trained. Root
    /// writes anywhere: there the test runs itself again as `nobody` through `setpriv`, skipped with a word where
    /// that cannot run.
    #[cfg(unix)]
    #[test]
    fn an_out_directory_this_user_cannot_write_is_refused_before_training() {
        use std::os::unix::fs::PermissionsExt;
        const CHILD: &str = "SONITOR_TEST_UNWRITABLE_OUT";
        let check = |root: &std::path::Path| {
            let e = super::check_out(&root.join("closed"), "--out", Some(false), false)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("closed: cannot write in it (Permission denied")
                    && e.contains("give this user write access there, or another directory")
                    && e.contains("nothing was trained"),
                "{e}"
            );
            // Through the claim fit makes, which creates the directory: the creation's bare "Permission denied"
            // said neither where nor what to do.
            let e = super::claim_out(&root.join("closed/new"), "--out", Some(false), false, root)
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("new: cannot create it in ") && e.contains("or another directory"),
                "{e}"
            );
            let e = super::make_out_dir(&root.join("closed/scores"), "--out", "nothing was scored")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("scores: cannot create it in ") && e.ends_with("nothing was scored"),
                "{e}"
            );
            super::check_out(&root.join("open/new"), "--out", Some(false), false).unwrap();
            assert_eq!(
                std::fs::read_dir(root.join("open")).unwrap().count(),
                0,
                "the probe is removed"
            );
        };
        if let Some(root) = std::env::var_os(CHILD) {
            check(std::path::Path::new(&root));
            return;
        }
        let d = tempfile::tempdir().unwrap();
        for (dir, mode) in [("closed", 0o555), ("open", 0o777)] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
            std::fs::set_permissions(d.path().join(dir), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            check(d.path());
            return;
        }
        let setpriv = std::path::Path::new("/usr/bin/setpriv");
        if !setpriv.exists() {
            eprintln!(
                "skipped: root writes anywhere, and there is no setpriv to run as another user"
            );
            return;
        }
        let o = std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "train::tests::an_out_directory_this_user_cannot_write_is_refused_before_training",
                "--nocapture",
            ])
            .env(CHILD, d.path())
            .output();
        match o {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "as nobody: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("skipped: running as root and setpriv could not run ({e})"),
        }
    }

    use super::*;

    #[test]
    fn window_flags_give_the_feature_parameters_or_name_the_bad_flag() {
        assert_eq!(window_features(2.0, 1.0).unwrap(), FeatureParams::default());
        let p = window_features(3.0, 0.5).unwrap();
        assert_eq!((p.window_samples, p.window_hop_samples), (48_000, 8_000));
        assert_eq!(p.log_mel_shape(), [92, 128]);
        for (w, h, needle) in [
            (0.0, 1.0, "--window-seconds 0"),
            (f64::NAN, 1.0, "--window-seconds NaN"),
            (2.0, -1.0, "--window-hop-seconds -1"),
            // Shorter than one STFT frame (1024 samples).
            (0.05, 0.05, "shorter than n_fft"),
            // A step under one STFT hop (512 samples).
            (1.0, 0.0001, "--window-hop-seconds 0.0001: at least 0.032 s"),
        ] {
            let e = window_features(w, h).unwrap_err().to_string();
            assert!(e.contains(needle), "{w} {h}: {e}");
        }
    }
}
