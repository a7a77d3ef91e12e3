//! The training checkpoint, `BUNDLE/checkpoint/`: the network's weights (`model.bpk`), the optimiser's state
//! (`optimizer.bpk`) and where training stands (`state.json`), written after every epoch.
//!
//! A checkpoint replaces the previous one whole. It is written into `checkpoint.new/` (each file fsynced),
//! then takes the old one's place by two renames: `checkpoint/` → `checkpoint.old/`,
//! `checkpoint.new/` → `checkpoint/`; then the old one is removed. A crash at any moment (a power cut, the
//! OOM killer, a full disk) leaves a complete checkpoint for `--resume` and `prune`: [`find`] takes
//! `checkpoint/`, or `checkpoint.old/` when the crash came between the two renames.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use serde::{Deserialize, Serialize};
use sonitor_core::atomic_file;

use crate::loss::{Loss, LossKind, SUBCLUSTERS};
use crate::model::{Model, ModelConfig};

/// The checkpoint's directory under the bundle.
pub const DIR: &str = "checkpoint";
pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// A directory with it holds a whole checkpoint ([`find`]).
pub const STATE_FILE: &str = "state.json";

/// Where training stands, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub epochs_done: usize,
    pub loss: Loss,
    pub model: ModelConfig,
    pub classes: Vec<String>,
    pub history: Vec<f64>,
    /// The `--labels` granularity and `--seed` of the run (absent in checkpoints of earlier versions).
    #[serde(default)]
    pub labels: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// The data set trained on (its path and the digest of its training clips) and the analysis window: a
    /// `--resume` on other data or with other window flags is refused, naming what it needs (absent in
    /// checkpoints of earlier versions).
    #[serde(default)]
    pub data_path: Option<PathBuf>,
    #[serde(default)]
    pub data_sha256: Option<String>,
    #[serde(default)]
    pub features: Option<sonitor_core::features::FeatureParams>,
    /// `--batch`, `--lr` and mixup: a `--resume` that leaves them out takes them, one that gives others is
    /// refused (absent in checkpoints of earlier versions, whose resumes took the command line's).
    #[serde(default)]
    pub batch: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub mixup: Option<bool>,
    /// The run's `--epochs`, and the back end's `--kmeans`, `--quantile` and `--target-centres`: taken by a
    /// `--resume` that leaves them out (absent in checkpoints of earlier versions, whose resumes took the
    /// defaults: 10 epochs, and other centres and thresholds).
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub kmeans: Option<usize>,
    #[serde(default)]
    pub quantile: Option<f64>,
    #[serde(default)]
    pub target_centres: Option<crate::train::TargetCentres>,
    /// Seconds of training up to this checkpoint, over every run that made it (`--resume` adds its own).
    #[serde(default)]
    pub train_seconds: Option<f64>,
    /// The fine-tuning of a `prune` run, which `fit --resume` does not continue (the bundle would lack its
    /// pruning record).
    #[serde(default)]
    pub pruned: bool,
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    out.join(format!("{DIR}.{suffix}"))
}

/// Every directory a checkpoint of the bundle directory `out` may occupy: whole, moved aside by an interrupted
/// save, or half-written.
pub fn all_dirs(out: &Path) -> [PathBuf; 3] {
    [out.join(DIR), sibling(out, "old"), sibling(out, "new")]
}

/// The directory of the last whole checkpoint under the bundle directory `out`: `checkpoint/`, or
/// `checkpoint.old/` when a save was interrupted between its two renames. When neither holds one, `checkpoint/`
/// (so that the error names the usual place).
pub fn find(out: &Path) -> PathBuf {
    let current = out.join(DIR);
    let old = sibling(out, "old");
    if !current.join(STATE_FILE).exists() && old.join(STATE_FILE).exists() {
        old
    } else {
        current
    }
}

impl State {
    /// Checks that the parts of the state fit together (the loss's classes, centres and dimension, the network's
    /// configuration), so that a damaged or hand-edited `state.json` is an error naming it, not a panic inside burn
    /// at the first batch.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.loss;
        anyhow::ensure!(
            !self.classes.is_empty(),
            "classes: empty (the loss needs at least one class)"
        );
        anyhow::ensure!(
            l.n_classes == self.classes.len(),
            "loss.n_classes is {} but the checkpoint names {} classes",
            l.n_classes,
            self.classes.len()
        );
        let want_k = match l.kind {
            LossKind::SubclusterAdacos => SUBCLUSTERS,
            _ => 1,
        };
        anyhow::ensure!(
            l.k == want_k,
            "loss.k is {} but a {} loss has {want_k} centre(s) per class",
            l.k,
            l.kind.as_str()
        );
        self.model
            .validate()
            .map_err(|e| anyhow::anyhow!("model: {e:#}"))?;
        let dim = self.model.embedding_dim();
        anyhow::ensure!(
            l.dim == dim,
            "loss.dim is {} but the network's embedding has {dim} dimensions",
            l.dim
        );
        let rows = match l.kind {
            LossKind::OneClass => 1,
            _ => l.n_classes * l.k,
        };
        anyhow::ensure!(
            l.centres.len() == rows * dim,
            "loss.centres holds {} values, expected {rows} centres × {dim} = {}",
            l.centres.len(),
            rows * dim
        );
        anyhow::ensure!(
            l.centres.iter().all(|v| v.is_finite()),
            "loss.centres holds a non-finite value"
        );
        anyhow::ensure!(
            l.scale.is_finite()
                && l.scale > 0.0
                && l.initial_scale.is_finite()
                && l.initial_scale > 0.0,
            "loss.scale {} / loss.initial_scale {}: expected positive numbers",
            l.scale,
            l.initial_scale
        );
        anyhow::ensure!(
            self.history.len() == self.epochs_done,
            "history holds {} epoch losses but epochs_done is {}",
            self.history.len(),
            self.epochs_done
        );
        Ok(())
    }
}

/// Reads, parses and checks ([`State::validate`]) the `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> anyhow::Result<State> {
    let path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    state
        .validate()
        .with_context(|| format!("{}: an inconsistent checkpoint state", path.display()))?;
    Ok(state)
}

/// `--resume`: the state of the last whole checkpoint under the bundle directory `out` ([`find`], [`read_state`]),
/// or an error that says there is none to continue.
pub fn read_for_resume(out: &Path) -> anyhow::Result<State> {
    let dir = find(out);
    if !dir.join(STATE_FILE).exists() {
        let half = half_written(out);
        let only = if half.exists() {
            format!(
                " (only {}, what a save that failed left half-written, which the run removes)",
                half.display()
            )
        } else {
            String::new()
        };
        anyhow::bail!(
            "--resume: {} holds no checkpoint to continue{only}: run without --resume",
            out.display()
        );
    }
    read_state(&dir).context("--resume")
}

/// `checkpoint.new/` under the bundle directory `out`: a checkpoint being written, or what a save that failed
/// left half-written (never one in use).
pub fn half_written(out: &Path) -> PathBuf {
    sibling(out, "new")
}

/// `model` with the weights of the checkpoint directory `dir` (its [`MODEL_FILE`]).
pub fn load_weights(model: Model, dir: &Path) -> anyhow::Result<Model> {
    let path = dir.join(MODEL_FILE);
    // Read whole now: loaded from the file, burn reads each tensor's data from it only when the tensor is first
    // used, and `prune --force` of a bundle onto itself moves the checkpoint aside before fine-tuning uses them.
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
    model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("applying {}: {e}", path.display()))
}

/// Saves a checkpoint under the bundle directory `out`: `write_weights(dir)` writes the weight files
/// ([`MODEL_FILE`], [`OPTIMIZER_FILE`]) into the new checkpoint's directory, then `state` is written and the new
/// checkpoint replaces the old one (see the module's documentation).
pub fn save(
    out: &Path,
    state: &State,
    write_weights: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (new, current, old) = (sibling(out, "new"), out.join(DIR), sibling(out, "old"));
    if new.exists() {
        // What an interrupted save left: never a checkpoint that was in use.
        std::fs::remove_dir_all(&new).with_context(|| format!("removing {}", new.display()))?;
    }
    std::fs::create_dir_all(&new).with_context(|| format!("creating {}", new.display()))?;
    write_weights(&new)?;
    // Nobody reads checkpoint.new/, so its files need no temporary names: only to be on disk before the renames.
    let state_path = new.join(STATE_FILE);
    std::fs::write(&state_path, serde_json::to_string_pretty(state)?)
        .with_context(|| format!("writing {}", state_path.display()))?;
    for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
        let p = new.join(f);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", p.display()))?;
    }
    atomic_file::sync_dir(&new).with_context(|| format!("syncing {}", new.display()))?;
    if current.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        std::fs::rename(&current, &old)
            .with_context(|| format!("moving {} aside", current.display()))?;
    }
    std::fs::rename(&new, &current)
        .with_context(|| format!("moving {} into place", new.display()))?;
    atomic_file::sync_dir(out).with_context(|| format!("syncing {}", out.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epochs_done: usize) -> State {
        State {
            epochs_done,
            loss: Loss::new(
                LossKind::Adacos,
                2,
                ModelConfig::tiny(7, 32, 2048).embedding_dim(),
                1,
            ),
            model: ModelConfig::tiny(7, 32, 2048),
            classes: vec!["a".into(), "b".into()],
            history: vec![1.0; epochs_done],
            labels: Some("attribute".into()),
            seed: Some(1),
            data_path: None,
            data_sha256: None,
            features: None,
            batch: None,
            lr: None,
            mixup: None,
            epochs: None,
            kmeans: None,
            quantile: None,
            target_centres: None,
            train_seconds: None,
            pruned: false,
        }
    }

    fn weights(tag: &'static str) -> impl FnOnce(&Path) -> anyhow::Result<()> {
        move |dir| {
            std::fs::write(dir.join(MODEL_FILE), tag)?;
            std::fs::write(dir.join(OPTIMIZER_FILE), tag)?;
            Ok(())
        }
    }

    /// Only `checkpoint/` is left under `out`, with its three files.
    fn only_the_checkpoint(out: &Path) {
        let left: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [DIR], "{left:?}");
        for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            assert!(out.join(DIR).join(f).is_file(), "{f}");
        }
    }

    #[test]
    fn each_save_replaces_the_whole_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &state(1), weights("epoch 1")).unwrap();
        save(d.path(), &state(2), weights("epoch 2")).unwrap();
        only_the_checkpoint(d.path());
        let dir = find(d.path());
        assert_eq!(dir, d.path().join(DIR));
        assert_eq!(read_state(&dir).unwrap().epochs_done, 2);
        assert_eq!(std::fs::read(dir.join(MODEL_FILE)).unwrap(), b"epoch 2");
    }

    #[test]
    fn an_interrupted_save_leaves_the_last_whole_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &state(1), weights("epoch 1")).unwrap();
        // Weights that fail half-way: the checkpoint in use is untouched.
        let e = save(d.path(), &state(2), |dir: &Path| {
            std::fs::write(dir.join(MODEL_FILE), "epoch 2")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"));
        assert_eq!(read_state(&find(d.path())).unwrap().epochs_done, 1);
        // A crash between the two renames: only checkpoint.old/ is whole (checkpoint.new/ may be too, or not).
        std::fs::rename(d.path().join(DIR), d.path().join("checkpoint.old")).unwrap();
        let dir = find(d.path());
        assert_eq!(dir, d.path().join("checkpoint.old"));
        assert_eq!(read_state(&dir).unwrap().epochs_done, 1);
        // The next save clears both leftovers.
        save(d.path(), &state(2), weights("epoch 2")).unwrap();
        only_the_checkpoint(d.path());
        assert_eq!(read_state(&find(d.path())).unwrap().epochs_done, 2);
    }

    #[test]
    fn an_inconsistent_state_is_refused_naming_the_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &state(1), weights("epoch 1")).unwrap();
        let dir = find(d.path());
        read_state(&dir).unwrap();
        let path = dir.join(STATE_FILE);
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 6] = [
            ("loss.n_classes", |v| v["loss"]["n_classes"] = 999.into()),
            ("loss.k", |v| v["loss"]["k"] = 0.into()),
            ("loss.centres", |v| {
                v["loss"]["centres"].as_array_mut().unwrap().truncate(10)
            }),
            ("loss.dim", |v| v["loss"]["dim"] = 3.into()),
            ("loss.scale", |v| v["loss"]["scale"] = (-1.0).into()),
            ("model", |v| v["model"]["tf_widths"] = serde_json::json!([])),
        ];
        for (field, edit) in cases {
            let mut v = good.clone();
            edit(&mut v);
            std::fs::write(&path, v.to_string()).unwrap();
            let e = format!("{:#}", read_state(&dir).unwrap_err());
            assert!(
                e.contains("state.json") && e.contains(field),
                "{field}: {e}"
            );
        }
    }
}
