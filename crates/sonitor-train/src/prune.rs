//! `sonitor-train prune`: structured pruning of a trained network for the edge.
//!
//! Whole channels are removed — convolution filters, dense units — so the exported graph is really smaller (its
//! weight tensors have fewer rows and columns), not masked. Per layer group the channels are ranked by
//! importance and the best `round(keep · width)` are kept:
//!
//! - [`Criterion::BnScale`] (default, "network slimming"): `|γ|` of the BatchNorm that follows the layer;
//! - [`Criterion::L1`]: the L1 norm of the filter (the layer's weights that produce the channel).
//!
//! Channels that are added together must be pruned together: the residual stream of a ResNet stage (the stem
//! or the stage's shortcut projection, and every block's second BatchNorm of that stage) is one group whose
//! importance is the sum over its members. A block's inner channels (after `conv1`), every strided 1-D conv
//! of the spectrum branch and every dense block are groups of their own. The embedding layers keep their size
//! (the loss centres and the bundle's centroids live in that space).
//!
//! The pruned network is then fine-tuned for a few epochs with the bundle's loss (same fixed centres, same
//! labels) and written as a new bundle by [`crate::train::fit`], which recomputes centroids and thresholds
//! through the exported graph and records the pruning in the manifest's provenance.

use std::path::PathBuf;

use anyhow::Context;
use burn::module::{Module, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sonitor_core::bundle::Bundle;
use sonitor_core::dcase::LabelGranularity;

use crate::checkpoint;
use crate::model::{Model, ModelConfig};
use crate::train::{self, DeviceKind, FitOptions, Start, TargetCentres};

/// How channels are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// `|γ|` of the BatchNorm after the layer.
    BnScale,
    /// L1 norm of the filter.
    L1,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PruneArgs {
    /// Bundle made by `fit` (its `checkpoint/` holds the network to prune).
    #[arg(long)]
    pub model: PathBuf,
    /// Data set root for fine-tuning and the back end (default: the data set the bundle was trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace what OUT holds, as `fit --force` does: its bundle files, checkpoints, scores/ and scores-combined/
    /// (without it, an OUT that holds a bundle or checkpoint is refused).
    #[arg(long)]
    pub force: bool,
    /// Fraction of the channels of every layer group to keep, in (0, 1].
    #[arg(long)]
    pub keep: f64,
    #[arg(long, value_enum, default_value_t = Criterion::BnScale)]
    pub criterion: Criterion,
    /// Fine-tuning epochs after pruning (0: none).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Fine-tuning learning rate.
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Quantile of the gamma fit of normal training window scores for the thresholds (default: the source
    /// bundle's).
    #[arg(long, allow_negative_numbers = true)]
    pub quantile: Option<f64>,
}

/// What was kept; recorded in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub keep: f64,
    pub criterion: Criterion,
    pub source_model_id: String,
    pub params_before: usize,
    pub params_after: usize,
    pub macs_before: u64,
    pub macs_after: u64,
    pub config_before: ModelConfig,
}

/// Number of channels kept of `width`: what `keep` asks ([`asked`]), at least one and at most `width`.
pub fn kept(width: usize, keep: f64) -> usize {
    asked(width, keep).clamp(1, width)
}

/// Number of channels of `width` that `keep` asks for, rounded: 0 where it asks for less than half of one.
fn asked(width: usize, keep: f64) -> usize {
    (width as f64 * keep).round() as usize
}

/// The configuration of the network after pruning with `keep`.
pub fn pruned_config(c: &ModelConfig, keep: f64) -> ModelConfig {
    ModelConfig {
        tf_widths: c.tf_widths.iter().map(|&w| kept(w, keep)).collect(),
        spec_filters: kept(c.spec_filters, keep),
        spec_dense: kept(c.spec_dense, keep),
        ..c.clone()
    }
}

/// What to warn of when `keep` asks for fewer than one channel of some layer widths of `c` (`round(keep · width)`
/// is 0): each of them keeps one channel (no layer is emptied), more than asked, and a network of a channel or two
/// per layer maps every sound to about one point. `None` when every width keeps what `keep` asks.
pub fn keep_warning(c: &ModelConfig, keep: f64) -> Option<String> {
    let widths: Vec<usize> = c
        .tf_widths
        .iter()
        .copied()
        .chain([c.spec_filters, c.spec_dense])
        .collect();
    let short = widths.iter().filter(|&&w| asked(w, keep) == 0).count();
    if short == 0 {
        return None;
    }
    let p = pruned_config(c, keep);
    let list = |v: &[usize]| {
        v.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "--keep {keep} asks for fewer than one channel of {short} of the network's {} layer widths: each of them \
         keeps 1 channel instead (a layer is never emptied). Kept: time-frequency widths {} → {}, spectrum \
         filters {} → {}, spectrum dense {} → {}. A network this narrow may map every sound to about one point; \
         a larger --keep prunes less",
        widths.len(),
        list(&c.tf_widths),
        list(&p.tf_widths),
        c.spec_filters,
        p.spec_filters,
        c.spec_dense,
        p.spec_dense
    ))
}

fn values<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading weights: {e}"))
}

/// `|γ|` per channel.
fn bn_importance(bn: &BatchNorm) -> anyhow::Result<Vec<f32>> {
    Ok(values(bn.gamma.val())?.iter().map(|g| g.abs()).collect())
}

/// L1 norm of each output channel's filter of a weight laid out `[out, …]`.
fn l1_rows<const D: usize>(w: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    let out = w.dims()[0];
    let v = values(w)?;
    let per = v.len() / out.max(1);
    Ok(v.chunks(per.max(1))
        .map(|r| r.iter().map(|x| x.abs()).sum())
        .collect())
}

/// Indices of the `k` most important channels, in increasing index order (so the kept channels keep their
/// relative order and `keep = 1` is the identity). Ties go to the lower index.
pub fn top_k(importance: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..importance.len()).collect();
    order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

fn add(acc: &mut Vec<f32>, v: Vec<f32>) {
    if acc.is_empty() {
        *acc = v;
    } else {
        for (a, b) in acc.iter_mut().zip(v) {
            *a += b;
        }
    }
}

fn index(ix: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = ix.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [ix.len()]), device)
}

/// A parameter with only the given indices along `dim`, as a new leaf (built from the selected values, so it is
/// not a node of the old parameter's autodiff graph).
fn select<const D: usize>(p: &Param<Tensor<D>>, dim: usize, ix: &[usize]) -> Param<Tensor<D>> {
    let t = p.val();
    let device = t.device();
    let data = t.select(dim, index(ix, &device)).into_data();
    Param::from_tensor(Tensor::from_data(data, &device))
}

fn select_running(r: &RunningState<Tensor<1>>, ix: &[usize]) -> RunningState<Tensor<1>> {
    // `value()` may lag one training update behind; pruning happens after training, on one thread.
    let t = r.value_sync();
    let device = t.device();
    let data = t.select(0, index(ix, &device)).into_data();
    RunningState::new(Tensor::from_data(data, &device))
}

fn prune_bn(bn: &mut BatchNorm, ix: &[usize]) {
    bn.gamma = select(&bn.gamma, 0, ix);
    bn.beta = select(&bn.beta, 0, ix);
    bn.running_mean = select_running(&bn.running_mean, ix);
    bn.running_var = select_running(&bn.running_var, ix);
}

/// Keeps the `out` indices along `out_dim` and the `inp` indices along `in_dim` of a weight (conv weights are
/// `[out, in, k…]`: dims 0, 1; linear weights are `[d_in, d_out]`: dims 1, 0).
fn select_io<const D: usize>(
    w: &mut Param<Tensor<D>>,
    (out_dim, in_dim): (usize, usize),
    out: Option<&[usize]>,
    inp: Option<&[usize]>,
) {
    if let Some(o) = out {
        *w = select(w, out_dim, o);
    }
    if let Some(i) = inp {
        *w = select(w, in_dim, i);
    }
}

const CONV: (usize, usize) = (0, 1);
const LINEAR: (usize, usize) = (1, 0);

/// Flattened feature indices of the kept channels of a `[channels, width]` map (row-major).
fn flat(channels: &[usize], width: usize) -> Vec<usize> {
    channels
        .iter()
        .flat_map(|&c| (0..width).map(move |w| c * width + w))
        .collect()
}

/// Channels kept in every layer group.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// Residual stream groups (index 0: stem + stage 0).
    pub streams: Vec<Vec<usize>>,
    /// Per block: (input stream group, output stream group, inner channels).
    pub blocks: Vec<(usize, usize, Vec<usize>)>,
    pub spec_convs: Vec<Vec<usize>>,
    pub spec_dense: Vec<Vec<usize>>,
}

/// Ranks every group of `model` and decides what to keep.
pub fn plan(
    model: &Model,
    config: &ModelConfig,
    keep: f64,
    criterion: Criterion,
) -> anyhow::Result<Kept> {
    anyhow::ensure!(
        keep > 0.0 && keep <= 1.0,
        "--keep {keep}: a fraction in (0, 1]"
    );
    anyhow::ensure!(
        model.blocks.len() == config.tf_widths.len() * config.tf_blocks,
        "the network has {} residual blocks, its configuration {}",
        model.blocks.len(),
        config.tf_widths.len() * config.tf_blocks
    );
    let score_conv2 = |bn: &BatchNorm, conv: &Conv2d| match criterion {
        Criterion::BnScale => bn_importance(bn),
        Criterion::L1 => l1_rows(conv.weight.val()),
    };
    // Residual streams: the stem opens stream 0; a block with a shortcut projection opens a new one.
    let mut importance: Vec<Vec<f32>> = vec![score_conv2(&model.stem_bn, &model.stem)?];
    let mut widths = vec![config.tf_widths[0]];
    let mut blocks = Vec::new();
    let mut inner_importance = Vec::new();
    let mut cur = 0;
    for (bi, b) in model.blocks.iter().enumerate() {
        let stage = bi / config.tf_blocks;
        let input = cur;
        if let Some(sc) = &b.shortcut {
            importance.push(score_conv2(&sc.bn, &sc.conv)?);
            widths.push(config.tf_widths[stage]);
            cur = importance.len() - 1;
        }
        anyhow::ensure!(
            widths[cur] == config.tf_widths[stage],
            "block {bi}: an identity shortcut joins channels of different widths"
        );
        add(&mut importance[cur], score_conv2(&b.bn2, &b.conv2)?);
        inner_importance.push(score_conv2(&b.bn1, &b.conv1)?);
        blocks.push((input, cur));
    }
    let streams: Vec<Vec<usize>> = importance
        .iter()
        .zip(&widths)
        .map(|(imp, &w)| top_k(imp, kept(w, keep)))
        .collect();
    let blocks = blocks
        .into_iter()
        .zip(inner_importance)
        .enumerate()
        .map(|(bi, ((i, o), imp))| {
            let w = config.tf_widths[bi / config.tf_blocks];
            (i, o, top_k(&imp, kept(w, keep)))
        })
        .collect();
    let spec_convs = model
        .spec_convs
        .iter()
        .zip(&model.spec_bns)
        .map(|(c, bn)| {
            let imp = match criterion {
                Criterion::BnScale => bn_importance(bn)?,
                Criterion::L1 => l1_rows(c.weight.val())?,
            };
            Ok(top_k(&imp, kept(config.spec_filters, keep)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec_dense = model
        .spec_dense
        .iter()
        .zip(&model.spec_dense_bns)
        .map(|(l, bn)| {
            let imp = match criterion {
                Criterion::BnScale => bn_importance(bn)?,
                // Linear weights are [d_in, d_out]: a unit's weights are a column.
                Criterion::L1 => l1_rows(l.weight.val().transpose())?,
            };
            Ok(top_k(&imp, kept(config.spec_dense, keep)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Kept {
        streams,
        blocks,
        spec_convs,
        spec_dense,
    })
}

/// Removes every channel `kept` does not name. Returns the smaller network and its configuration.
pub fn apply(
    mut model: Model,
    config: &ModelConfig,
    keep: f64,
    k: &Kept,
) -> anyhow::Result<(Model, ModelConfig)> {
    let new = pruned_config(config, keep);
    select_io(&mut model.stem.weight, CONV, Some(&k.streams[0]), None);
    prune_bn(&mut model.stem_bn, &k.streams[0]);
    for (b, (i, o, inner)) in model.blocks.iter_mut().zip(&k.blocks) {
        let (si, so) = (&k.streams[*i], &k.streams[*o]);
        select_io(&mut b.conv1.weight, CONV, Some(inner), Some(si));
        prune_bn(&mut b.bn1, inner);
        select_io(&mut b.conv2.weight, CONV, Some(so), Some(inner));
        prune_bn(&mut b.bn2, so);
        if let Some(sc) = &mut b.shortcut {
            select_io(&mut sc.conv.weight, CONV, Some(so), Some(si));
            prune_bn(&mut sc.bn, so);
        }
    }
    let last = k.blocks.last().map_or(0, |b| b.1);
    let (_, wo) = config.tf_output_hw();
    let f = flat(&k.streams[last], wo);
    prune_bn(&mut model.tf_flat_bn, &f);
    select_io(&mut model.tf_emb.weight, LINEAR, None, Some(&f));

    let mut prev: Option<&[usize]> = None;
    for ((c, bn), ix) in model
        .spec_convs
        .iter_mut()
        .zip(model.spec_bns.iter_mut())
        .zip(&k.spec_convs)
    {
        select_io(&mut c.weight, CONV, Some(ix), prev);
        prune_bn(bn, ix);
        prev = Some(ix);
    }
    let len = config.spec_lengths().last().copied().unwrap_or(0);
    let mut inputs = flat(prev.unwrap_or(&[]), len);
    for ((l, bn), ix) in model
        .spec_dense
        .iter_mut()
        .zip(model.spec_dense_bns.iter_mut())
        .zip(&k.spec_dense)
    {
        select_io(&mut l.weight, LINEAR, Some(ix), Some(&inputs));
        prune_bn(bn, ix);
        inputs = ix.clone();
    }
    select_io(&mut model.spec_emb.weight, LINEAR, None, Some(&inputs));
    new.validate()?;
    Ok((model, new))
}

/// Plans and applies a pruning.
pub fn prune(
    model: Model,
    config: &ModelConfig,
    keep: f64,
    criterion: Criterion,
) -> anyhow::Result<(Model, ModelConfig)> {
    let k = plan(&model, config, keep, criterion)?;
    apply(model, config, keep, &k)
}

/// Checks that a training checkpoint is the network the bundle was exported from: the same classes, loss, labels,
/// seed, network configuration and epochs (with the same loss history) as its manifest records.
pub fn checkpoint_matches_bundle(
    state: &checkpoint::State,
    m: &sonitor_core::bundle::Manifest,
) -> anyhow::Result<()> {
    let p = &m.provenance;
    anyhow::ensure!(
        state.classes == m.classes,
        "its classes ({}) are not the bundle's ({})",
        state.classes.join(", "),
        m.classes.join(", ")
    );
    anyhow::ensure!(
        state.loss.kind.as_str() == p.loss,
        "its loss {} is not the bundle's {}",
        state.loss.kind.as_str(),
        p.loss
    );
    if let Some(l) = &state.labels {
        let bundle = LabelGranularity::parse(&p.labels).map(|g| g.as_str());
        anyhow::ensure!(
            bundle == Some(l.as_str()),
            "its labels {l} are not the bundle's {}",
            p.labels
        );
    }
    if let Some(s) = state.seed {
        anyhow::ensure!(s == p.seed, "its seed {s} is not the bundle's {}", p.seed);
    }
    if let Some(c) = p.model.get("config") {
        let c: ModelConfig = serde_json::from_value(c.clone())
            .context("the bundle's provenance.model.config is not a network configuration")?;
        anyhow::ensure!(
            c == state.model,
            "its network {} is not the bundle's {}",
            serde_json::to_string(&state.model).unwrap_or_default(),
            serde_json::to_string(&c).unwrap_or_default()
        );
    }
    anyhow::ensure!(
        state.epochs_done == p.epochs,
        "it has {} epochs done, the bundle {}",
        state.epochs_done,
        p.epochs
    );
    if let Some(h) = p.model.get("epoch_losses").and_then(|v| v.as_array()) {
        let h: Vec<Option<f64>> = h.iter().map(|v| v.as_f64()).collect();
        let ours: Vec<Option<f64>> = state.history.iter().map(|&v| Some(v)).collect();
        anyhow::ensure!(
            h == ours,
            "its epoch losses {:?} are not the bundle's {h:?}",
            state.history
        );
    }
    Ok(())
}

/// The data set the bundle was trained on, from its provenance (for `prune` without `--data`): refused when it is
/// not there, or when its training clips are no longer the ones the bundle was trained on.
fn provenance_data(m: &sonitor_core::bundle::Manifest) -> anyhow::Result<PathBuf> {
    let p = &m.provenance;
    let data = PathBuf::from(&p.data_path);
    anyhow::ensure!(
        data.is_dir(),
        "the data set {} named by the bundle's provenance (data_path) is not a directory here; give --data",
        data.display()
    );
    let set = sonitor_core::dcase::scan(&data)
        .with_context(|| format!("the bundle's data set {} (provenance)", data.display()))?;
    let sha = crate::data::data_sha256(&crate::data::train_clips(&set)?)?;
    anyhow::ensure!(
        sha == p.data_sha256,
        "the training clips of {} (the bundle's provenance data_path) are not the ones the bundle was trained on \
         (data_sha256 {} vs {}); give --data with the right data set",
        data.display(),
        sha.get(..12).unwrap_or(&sha),
        p.data_sha256.get(..12).unwrap_or(&p.data_sha256)
    );
    Ok(data)
}

pub fn run(a: &PruneArgs) -> anyhow::Result<()> {
    let bundle = Bundle::load(&a.model)
        .with_context(|| format!("--model {}: not a usable bundle", a.model.display()))?;
    let m = &bundle.manifest;
    if let Some(s) = m.sections.iter().find(|s| s.baseline.is_some()) {
        anyhow::bail!(
            "--model {}: section {} combines the model with a level baseline (a bundle `combine --bundle` wrote, \
             from model {}); pruning would fit its centroids and thresholds again without it. Prune the bundle \
             it was made from, then combine the pruned one",
            a.model.display(),
            s.key(),
            m.provenance.model["combine"]["from_model_id"]
                .as_str()
                .unwrap_or("?")
        );
    }
    // Before the pruning and its fine-tuning: a bad number is known at once.
    train::check_training_numbers(
        a.batch,
        a.lr,
        a.quantile
            .unwrap_or_else(|| m.sections.first().map_or(0.9, |s| s.threshold.quantile)),
    )?;
    // A `--force` run into this directory that was stopped: its checkpoint is that run's, not the bundle's. Said
    // as the --out check says it (what to restore), not as a checkpoint that does not match.
    crate::replace::check_no_leftover(&a.model, "--model")?;
    let device = a.device.device()?;
    let ckpt = checkpoint::find(&a.model);
    anyhow::ensure!(
        ckpt.join(checkpoint::STATE_FILE).is_file(),
        "--model {}: no training checkpoint ({} is missing); pruning needs the network's weights, which fit writes \
         to BUNDLE/checkpoint",
        a.model.display(),
        ckpt.join(checkpoint::STATE_FILE).display()
    );
    let (model, state) = train::load_checkpoint(&a.model, &device)
        .with_context(|| format!("--model {}", a.model.display()))?;
    checkpoint_matches_bundle(&state, m).with_context(|| {
        format!(
            "--model {}: the checkpoint in {} is not the network of the bundle's model.onnx (an interrupted or \
             other training run's?); prune a bundle whose checkpoint it is, or finish that run first \
             (`fit --resume`, when it was a fit)",
            a.model.display(),
            ckpt.display()
        )
    })?;
    let data = match &a.data {
        Some(d) => d.clone(),
        None => provenance_data(m)?,
    };
    train::check_out(&a.out, "--out", None, a.force)?;
    let checkpoint::State {
        model: config,
        loss,
        classes,
        ..
    } = state;
    let params_before = model.num_params();
    let macs_before = config.macs_per_window();
    let (pruned, new_config) = prune(model, &config, a.keep, a.criterion)?;
    let params_after = pruned.num_params();
    let macs_after = new_config.macs_per_window();
    eprintln!(
        "pruned with keep {} ({:?}): {params_before} → {params_after} parameters, {:.1} → {:.1} MFLOPs per window ({:.2}× fewer)",
        a.keep,
        a.criterion,
        2.0 * macs_before as f64 / 1e6,
        2.0 * macs_after as f64 / 1e6,
        macs_before as f64 / macs_after.max(1) as f64
    );
    if let Some(w) = keep_warning(&config, a.keep) {
        eprintln!("warning: {w}");
    }
    let report = PruneReport {
        keep: a.keep,
        criterion: a.criterion,
        source_model_id: m.model_id.clone(),
        params_before,
        params_after,
        macs_before,
        macs_after,
        config_before: config,
    };
    let labels = LabelGranularity::parse(&m.provenance.labels).with_context(|| {
        format!(
            "the bundle's labels '{}' are not a known granularity",
            m.provenance.labels
        )
    })?;
    let pm = &m.provenance.model;
    let target_centres: TargetCentres = pm
        .get("target_centres")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or(TargetCentres::Window);
    let o = FitOptions {
        data,
        out: a.out.clone(),
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        seed: m.provenance.seed,
        loss: loss.kind,
        labels,
        device: a.device,
        resume: false,
        force: a.force,
        features: m.features.clone(),
        model: Some(new_config.clone()),
        kmeans: pm.get("kmeans").and_then(|v| v.as_u64()).unwrap_or(16) as usize,
        quantile: a
            .quantile
            .unwrap_or_else(|| m.sections.first().map_or(0.9, |s| s.threshold.quantile)),
        target_centres,
        mixup: pm.get("mixup").and_then(|v| v.as_bool()).unwrap_or(true),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        progress: true,
        start: Some(Start {
            model: pruned,
            loss,
            classes,
            pruning: serde_json::to_value(&report)?,
        }),
    };
    // A prune cannot be resumed: the checkpoints of one that failed in a directory that held nothing are of no
    // use, and would make the next prune into it ask for --force.
    let fresh = train::held_bundle_files(&a.out).is_empty();
    let existed = a.out.exists();
    let r = match train::fit(&o) {
        Ok(r) => r,
        Err(e) => {
            if fresh && !a.out.join(crate::replace::DIR).exists() {
                for d in checkpoint::all_dirs(&a.out) {
                    let _ = std::fs::remove_dir_all(d);
                }
                if !existed {
                    let _ = std::fs::remove_dir(&a.out);
                }
            }
            return Err(e);
        }
    };
    eprintln!(
        "pruned bundle written to {}: {} parameters, fine-tuning took {:.1} s",
        r.bundle.display(),
        r.params,
        r.train_seconds
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_order_and_prefers_low_index_on_ties() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[3.0, 1.0, 2.0], 3), vec![0, 1, 2]);
    }

    #[test]
    fn kept_rounds_and_never_empties_a_layer() {
        assert_eq!(kept(64, 0.5), 32);
        assert_eq!(kept(8, 0.4), 3);
        assert_eq!(kept(4, 0.01), 1);
        assert_eq!(kept(16, 1.0), 16);
    }

    /// `--keep 0.0001` of the tiny network (widths 4, 8; 8 filters, 16 dense units) asks for no channel at all:
    /// said, with what is kept (one channel each). At 0.1 only the width 4 rounds to none; at 0.5 nothing does.
    #[test]
    fn a_keep_below_one_channel_is_warned_of_with_what_is_kept() {
        let c = ModelConfig::tiny(7, 32, 2048);
        let w = keep_warning(&c, 0.0001).unwrap();
        assert!(
            w.contains("fewer than one channel of 4 of the network's 4 layer widths")
                && w.contains("time-frequency widths 4, 8 → 1, 1")
                && w.contains("spectrum filters 8 → 1")
                && w.contains("spectrum dense 16 → 1"),
            "{w}"
        );
        let w = keep_warning(&c, 0.1).unwrap();
        assert!(
            w.contains("of 1 of the network's 4 layer widths")
                && w.contains("time-frequency widths 4, 8 → 1, 1")
                && w.contains("spectrum dense 16 → 2"),
            "{w}"
        );
        assert_eq!(keep_warning(&c, 0.5), None);
        assert_eq!(keep_warning(&c, 1.0), None);
    }

    #[test]
    fn flat_indices_follow_row_major_channels() {
        assert_eq!(flat(&[1, 3], 2), vec![2, 3, 6, 7]);
    }
}
