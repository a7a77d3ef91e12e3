//! The model bundle: the contract between `sonitor-train` and the daemon.
//!
//! A bundle is a directory with two files:
//! - `model.onnx` (or the name the manifest gives): the embedding network, feature tensors in, embedding out;
//! - `manifest.json`: a [`Manifest`]: the feature parameters, the graph's input and output tensors, the
//!   embedding size, the class names, per-section centroids and calibrated thresholds, optionally a section's
//!   level baseline ([`crate::score::Baseline`], written by `sonitor-train combine --bundle`), the provenance and
//!   the sha256 of the ONNX file.
//!
//! [`Bundle::load`] refuses a bundle whose parts disagree, naming the problem: a checksum that does not match,
//! feature parameters that do not give the graph's input shapes, a manifest input the graph does not have,
//! centroids of the wrong size, a section without centroids or without a usable threshold, a baseline that cannot
//! score the features' bands. Because ONNX is the
//! exchange format, a bundle can wrap a graph from any producer (burn, PyTorch, Keras) as long as its manifest
//! states what it computes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic_file;
use crate::features::FeatureParams;
use crate::onnx_graph::{self, Dim, GraphSignature};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const DEFAULT_ONNX_FILE: &str = "model.onnx";
/// The newest manifest format this build reads and writes. A bundle is written with the oldest version that can
/// hold it ([`Manifest::required_format_version`]), so that bundles any older build reads stay readable by it,
/// and a build refusing a newer bundle names the version (`parse_problem`), not only a field it does not know:
/// - 1: the network's centroids and thresholds (2026-11-28);
/// - 2: sections may carry a level baseline ([`crate::score::Baseline`], written by `sonitor-train combine`).
///   Builds of 2026-12-03 and 2026-12-04 wrote such bundles as version 1; they load.
pub const FORMAT_VERSION: u32 = 2;

/// Which feature view a graph input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureView {
    /// Mean-subtracted log-mel, `[1, frames, n_mels]`.
    LogMel,
    /// Whole-window magnitude spectrum, `[1, window_samples / 2]`.
    Spectrum,
}

/// A named tensor with its shape (batch dimension first, 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A graph input and the feature view that feeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub view: FeatureView,
    pub shape: Vec<usize>,
}

/// The decision threshold of a section, calibrated on normal training scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// The score above which a window counts as anomalous.
    pub value: f64,
    /// How it was obtained, e.g. `"gamma-quantile"` or `"percentile"`.
    pub method: String,
    /// The quantile of the normal-score distribution (e.g. 0.9).
    pub quantile: f64,
    /// Maximum-likelihood gamma fit of the normal training scores, when `method` is `gamma-quantile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma_shape: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma_scale: Option<f64>,
}

/// The scoring model of one machine type and section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionModel {
    pub machine_type: String,
    pub section: u16,
    /// Unit-norm centres: first the source-domain k-means centroids, then the target-domain embeddings.
    pub centroids: Vec<Vec<f32>>,
    pub n_source_centroids: usize,
    pub n_target_centroids: usize,
    pub threshold: Threshold,
    /// The level baseline averaged with the model's score (`sonitor-train combine --bundle`); without it a window
    /// scores its cosine distance alone. A daemon older than this field refuses a bundle that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::score::Baseline>,
}

impl SectionModel {
    /// `"<type>/section_SS"`, the name configs and messages use.
    pub fn key(&self) -> String {
        section_key(&self.machine_type, self.section)
    }
}

/// `"<type>/section_SS"`.
pub fn section_key(machine_type: &str, section: u16) -> String {
    format!("{machine_type}/section_{section:02}")
}

/// Where a bundle came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// Tool and version that made the bundle, e.g. `sonitor-train 0.1.0`.
    pub tool: String,
    /// RFC 3339 time of creation (UTC).
    pub created_at: String,
    /// The command line that made it.
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub data_path: String,
    /// sha256 over the training data's file names and contents, when known.
    #[serde(default)]
    pub data_sha256: String,
    #[serde(default)]
    pub loss: String,
    #[serde(default)]
    pub labels: String,
    #[serde(default)]
    pub epochs: usize,
    #[serde(default)]
    pub seed: u64,
    /// Network configuration, parameter count, FLOPs, pruning: free-form, recorded as given.
    #[serde(default)]
    pub model: serde_json::Value,
    /// Evaluation results (e.g. the official score), free-form.
    #[serde(default)]
    pub metrics: serde_json::Value,
}

/// The manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// A short identifier shown in MQTT state messages (e.g. `synth-subcluster-adacos-s1-3f2a9c`).
    pub model_id: String,
    pub features: FeatureParams,
    pub inputs: Vec<InputSpec>,
    pub output: TensorSpec,
    pub embedding_dim: usize,
    /// Auxiliary class names the network was trained on (informational).
    #[serde(default)]
    pub classes: Vec<String>,
    pub sections: Vec<SectionModel>,
    /// How window scores are pooled into a clip score: `"mean"`, the only pooling `eval` implements.
    pub clip_pooling: String,
    pub onnx_file: String,
    pub onnx_sha256: String,
    pub provenance: Provenance,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    // The cause is in the message and not a `source()`, or `{:#}` (anyhow) would print it twice.
    #[error("{path}: cannot read: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: cannot write: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A FIFO (which blocked every reader, and a daemon's start, for ever), a device or a directory.
    #[error("{path}: not a regular file (a FIFO, a device or a directory)")]
    NotAFile { path: PathBuf },
    /// A file of the bundle this user may not read (copied as root under umask 077, read by the daemon's own
    /// user): said with what to do, where a bare "Permission denied" left it to the reader.
    #[error(
        "{path}: permission denied: this user may not read it; {}",
        crate::regular_file::readable_advice(path)
    )]
    Denied { path: PathBuf },
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: checksum mismatch: the manifest says sha256 {expected}, the file has {actual} (the ONNX file was changed or belongs to another bundle)")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A write of the bundle (an in-place `upgrade`, a `fit` that ends) stopped between putting its new graph in
    /// place and its new manifest: the new manifest, which matches the graph, waits as `tmp`.
    #[error(
        "{path}: checksum mismatch, from a write of this bundle that was stopped (an in-place `sonitor-train \
         upgrade`, a `fit` ending): the graph is the new one, and its new manifest waits in {tmp}, which matches \
         it. Finish the write: `mv {tmp} {manifest}`"
    )]
    Unfinished {
        path: PathBuf,
        tmp: PathBuf,
        manifest: PathBuf,
    },
    #[error("{path}: {error}")]
    Onnx {
        path: PathBuf,
        error: onnx_graph::OnnxParseError,
    },
    #[error("{path}: manifest and graph disagree: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    /// No `manifest.json` where the bundle should be: [`not_a_bundle`] says why (no such folder, a file, or a
    /// folder whose subfolders hold the bundles).
    #[error("{reason}")]
    NotABundle { dir: PathBuf, reason: String },
}

/// Why `dir` is no bundle directory where its `manifest.json` is missing: the folder does not exist, is not a
/// folder, or has no manifest (naming its subfolders that hold one: `models/` for `models/default`). `None`
/// where something is at the manifest's path (the loader says what is wrong with it).
pub fn not_a_bundle(dir: &Path) -> Option<String> {
    let manifest = dir.join(MANIFEST_FILE);
    match std::fs::symlink_metadata(&manifest) {
        Ok(_) => return None,
        Err(e) => {
            if let Some(reason) = unreadable_manifest(dir, &e) {
                return Some(reason);
            }
        }
    }
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("bundle {shown}: the folder does not exist"))
        }
        Err(e) => return Some(format!("bundle {shown}: cannot read the folder: {e}")),
        Ok(m) if !m.is_dir() => {
            return Some(format!(
            "bundle {shown}: not a folder (a bundle is the folder sonitor-train writes, with its \
                 {MANIFEST_FILE} and model.onnx)"
        ))
        }
        Ok(_) => {}
    }
    let mut inside: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .map(|p| p.display().to_string())
        .collect();
    inside.sort();
    Some(match inside.split_last() {
        None => format!(
            "bundle {shown} has no {MANIFEST_FILE} (is it a bundle directory made by sonitor-train?)"
        ),
        Some((last, [])) => format!(
            "bundle {shown} has no {MANIFEST_FILE}, but its subfolder {last} has one: did you mean {last}?"
        ),
        Some((last, rest)) => format!(
            "bundle {shown} has no {MANIFEST_FILE}, but its subfolders {} and {last} have one: did you mean one \
             of them?",
            rest.join(", ")
        ),
    })
}

/// What to say where looking up `dir`'s manifest failed with `error` for a reason other than its absence: a
/// folder this user may not enter (a bundle copied with `sudo cp -r` under umask 077, read by a daemon that runs as
/// another user, e.g. systemd's `DynamicUser=yes`) is "permission denied", not "has no manifest.json". `None`
/// where the manifest (or the folder) does not exist, or the path is not a folder: [`not_a_bundle`] says which.
fn unreadable_manifest(dir: &Path, error: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind;
    let manifest = dir.join(MANIFEST_FILE);
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory => None,
        ErrorKind::PermissionDenied => Some(format!(
            "bundle {}: permission denied looking for {}: this user may not read the folder (or a folder above \
             it); make it readable by the user sonitor runs as (e.g. `chmod -R a+rX {}`, or chown it to that user)",
            dir.display(),
            manifest.display(),
            dir.display()
        )),
        _ => Some(format!(
            "bundle {}: cannot look for {}: {error}",
            dir.display(),
            manifest.display()
        )),
    }
}

/// The longest `model_id` a manifest may give (a data set's directory name and a few words make it).
pub const MAX_MODEL_ID: usize = 512;

/// A loaded, verified bundle.
#[derive(Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub onnx_path: PathBuf,
    pub graph: GraphSignature,
    /// The bytes of the ONNX file whose checksum was verified: an inference engine is given these, never a second
    /// read of `onnx_path` (the file may have been replaced in between).
    onnx: Arc<[u8]>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("manifest", &self.manifest)
            .field("onnx_path", &self.onnx_path)
            .field("graph", &self.graph)
            .field("onnx", &format_args!("{} bytes", self.onnx.len()))
            .finish()
    }
}

/// Hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why this build cannot read a manifest of `version`, if it cannot.
fn version_problem(version: u64) -> Option<String> {
    if version > u64::from(FORMAT_VERSION) {
        Some(format!(
            "format_version {version} is newer than this build reads (1 to {FORMAT_VERSION}): the bundle was \
             written by a newer sonitor-train; upgrade sonitor to run it"
        ))
    } else if version == 0 {
        Some(format!(
            "format_version 0 is not a version (this build reads 1 to {FORMAT_VERSION})"
        ))
    } else {
        None
    }
}

impl Manifest {
    /// The oldest format version that holds this manifest: 2 when a section carries a level baseline, else 1.
    pub fn required_format_version(&self) -> u32 {
        if self.sections.iter().any(|s| s.baseline.is_some()) {
            2
        } else {
            1
        }
    }

    /// The manifest's own consistency (without the graph); names the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(problem) = version_problem(u64::from(self.format_version)) {
            return Err(problem);
        }
        self.features.validate().map_err(|e| e.to_string())?;
        let id = &self.model_id;
        if id.is_empty() || id.len() > MAX_MODEL_ID || id.chars().any(char::is_control) {
            let shown: String = id.chars().take(40).collect();
            return Err(format!(
                "model_id {shown:?}{} ({} bytes) must be 1 to {MAX_MODEL_ID} bytes without control characters: it \
                 names the model in every MQTT state and event the daemon sends",
                if shown.len() < id.len() { "…" } else { "" },
                id.len()
            ));
        }
        if self.inputs.is_empty() {
            return Err("no inputs".into());
        }
        let f = &self.features;
        let mut names = std::collections::BTreeSet::new();
        for input in &self.inputs {
            if !names.insert(input.name.as_str()) {
                return Err(format!(
                    "input '{}' is listed twice in the manifest's inputs",
                    input.name
                ));
            }
        }
        for input in &self.inputs {
            let expected = match input.view {
                FeatureView::LogMel => vec![1, f.log_mel_shape()[0], f.log_mel_shape()[1]],
                FeatureView::Spectrum => vec![1, f.spectrum_len()],
            };
            if input.shape != expected {
                return Err(format!(
                    "input '{}' ({:?}) has shape {:?} but the feature parameters give {:?}",
                    input.name, input.view, input.shape, expected
                ));
            }
        }
        if self.embedding_dim == 0 || self.output.shape != vec![1, self.embedding_dim] {
            return Err(format!(
                "output '{}' has shape {:?}, expected [1, embedding_dim = {}]",
                self.output.name, self.output.shape, self.embedding_dim
            ));
        }
        if self.sections.is_empty() {
            return Err("no sections: the bundle has no centroids to score against".into());
        }
        let mut seen = BTreeMap::new();
        for s in &self.sections {
            if let Some(why) = crate::dcase::machine_type_problem(&s.machine_type) {
                return Err(format!(
                    "section {} has machine_type {:?}, which cannot name a machine type ({why})",
                    s.section, s.machine_type
                ));
            }
            let key = s.key();
            if seen.insert(key.clone(), ()).is_some() {
                return Err(format!("section {key} is listed twice"));
            }
            if s.centroids.is_empty() {
                return Err(format!("section {key} has no centroids"));
            }
            // Checked: counts near usize::MAX in a hand-edited manifest overflowed the sum (a panic in every
            // consumer, and a reload killed the running daemon).
            if s.n_source_centroids.checked_add(s.n_target_centroids) != Some(s.centroids.len()) {
                return Err(format!(
                    "section {key}: {} source + {} target centroids announced, {} given",
                    s.n_source_centroids,
                    s.n_target_centroids,
                    s.centroids.len()
                ));
            }
            for (i, c) in s.centroids.iter().enumerate() {
                if c.len() != self.embedding_dim {
                    return Err(format!(
                        "section {key}: centroid {i} has {} values, embedding_dim is {}",
                        c.len(),
                        self.embedding_dim
                    ));
                }
                let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt();
                if !(norm - 1.0).abs().lt(&1e-3) {
                    return Err(format!(
                        "section {key}: centroid {i} is not unit-norm (norm {norm})"
                    ));
                }
            }
            if let Some(why) = s.baseline.as_ref().and_then(|b| b.problem(f.n_mels)) {
                return Err(format!("section {key}: {why}"));
            }
            let t = &s.threshold;
            if let Some(why) = crate::score::threshold_problem(t.value) {
                return Err(format!("section {key}: threshold {why}"));
            }
            if !(0.0..=1.0).contains(&t.quantile) {
                return Err(format!(
                    "section {key}: threshold quantile {} is not between 0 and 1",
                    t.quantile
                ));
            }
            for (name, v) in [
                ("gamma_shape", t.gamma_shape),
                ("gamma_scale", t.gamma_scale),
            ] {
                if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(format!(
                        "section {key}: threshold {name} {v} is not a positive number (a gamma fit's parameters are)"
                    ));
                }
            }
        }
        if self.clip_pooling != "mean" {
            return Err(format!(
                "clip_pooling '{}' is not supported: clips are scored by the mean of their window scores (\"mean\")",
                self.clip_pooling
            ));
        }
        if self.onnx_file.is_empty()
            || self.onnx_file.contains('/')
            || self.onnx_file.contains("..")
        {
            return Err(format!(
                "onnx_file '{}' must be a plain file name in the bundle directory",
                self.onnx_file
            ));
        }
        Ok(())
    }

    /// Checks the manifest's tensors against a graph signature; names the first problem.
    pub fn check_graph(&self, g: &GraphSignature) -> Result<(), String> {
        let fmt_dims = |d: &Option<Vec<Dim>>| match d {
            None => "unknown".to_string(),
            Some(d) => format!(
                "[{}]",
                d.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let check = |what: &str, name: &str, shape: &[usize], t: &onnx_graph::GraphTensor| {
            if t.elem_type != 1 {
                return Err(format!(
                    "{what} '{name}' has ONNX element type {}, expected float32 (1)",
                    t.elem_type
                ));
            }
            // A graph without shapes, or with symbolic or unknown axes (`[batch, frames, 128]`), is given the
            // manifest's shapes when it is loaded; whether it can run with them is for the inference engine to say
            // (`sonitor validate` builds it). Axes the graph fixes must be the manifest's.
            let Some(dims) = &t.dims else { return Ok(()) };
            let ok = dims.len() == shape.len()
                && dims.iter().zip(shape).all(|(d, &s)| match d {
                    Dim::Fixed(v) => usize::try_from(*v).is_ok_and(|v| v == s),
                    Dim::Symbolic(_) | Dim::Unknown => true,
                });
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{what} '{name}': the graph says shape {}, the manifest {:?}",
                    fmt_dims(&t.dims),
                    shape
                ))
            }
        };
        for input in &self.inputs {
            let t = g
                .inputs
                .iter()
                .find(|t| t.name == input.name)
                .ok_or_else(|| {
                    format!(
                        "the graph has no input '{}' (its inputs: {})",
                        input.name,
                        g.inputs
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            check("input", &input.name, &input.shape, t)?;
        }
        if let Some(extra) = g
            .inputs
            .iter()
            .find(|t| !self.inputs.iter().any(|i| i.name == t.name))
        {
            return Err(format!(
                "the graph needs input '{}', which the manifest does not feed",
                extra.name
            ));
        }
        let out = g
            .outputs
            .iter()
            .find(|t| t.name == self.output.name)
            .ok_or_else(|| {
                format!(
                    "the graph has no output '{}' (its outputs: {})",
                    self.output.name,
                    g.outputs
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        check("output", &self.output.name, &self.output.shape, out)
    }

    pub fn section(&self, machine_type: &str, section: u16) -> Option<&SectionModel> {
        self.sections
            .iter()
            .find(|s| s.machine_type == machine_type && s.section == section)
    }

    /// Finds a section by its key `"<type>/section_SS"`.
    pub fn section_by_key(&self, key: &str) -> Option<&SectionModel> {
        self.sections.iter().find(|s| s.key() == key)
    }
}

/// Why a manifest did not parse. A newer format's fields are unknown here, so its version is named first: the
/// cure is a newer build, not an edit of the manifest.
fn parse_problem(text: &str, e: &serde_json::Error) -> String {
    let version = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("format_version").and_then(|v| v.as_u64()));
    match version.and_then(version_problem) {
        Some(problem) => format!("{problem} ({e})"),
        None => e.to_string(),
    }
}

/// A bundle file's bytes ([`crate::regular_file`]: a FIFO or device in its place is refused, not opened).
fn read_regular(path: &Path) -> Result<Vec<u8>, BundleError> {
    let path = path.to_path_buf();
    crate::regular_file::read(&path).map_err(|error| {
        if crate::regular_file::is_not_a_file(&error) {
            BundleError::NotAFile { path }
        } else if error.kind() == std::io::ErrorKind::PermissionDenied {
            BundleError::Denied { path }
        } else {
            BundleError::Io { path, error }
        }
    })
}

impl Bundle {
    /// Loads and verifies a bundle directory.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        if let Some(reason) = not_a_bundle(dir) {
            return Err(BundleError::NotABundle {
                dir: dir.to_path_buf(),
                reason,
            });
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = String::from_utf8(read_regular(&manifest_path)?).map_err(|_| {
            BundleError::Manifest {
                path: manifest_path.clone(),
                reason: "not UTF-8 text".into(),
            }
        })?;
        // A byte order mark (a Windows editor saves one) is not JSON, and serde_json refuses it as "expected value
        // at line 1 column 1"; it says nothing about the manifest, so it is skipped.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| BundleError::Manifest {
            path: manifest_path.clone(),
            reason: parse_problem(text, &e),
        })?;
        manifest
            .validate()
            .map_err(|reason| BundleError::Manifest {
                path: manifest_path.clone(),
                reason,
            })?;
        let onnx_path = dir.join(&manifest.onnx_file);
        let bytes = read_regular(&onnx_path)?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&manifest.onnx_sha256) {
            let tmp = crate::atomic_file::temp_path(&manifest_path);
            let waiting = crate::regular_file::read(&tmp)
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .is_some_and(|m| m.onnx_sha256.eq_ignore_ascii_case(&actual));
            if waiting {
                return Err(BundleError::Unfinished {
                    path: onnx_path,
                    tmp,
                    manifest: manifest_path,
                });
            }
            return Err(BundleError::Checksum {
                path: onnx_path,
                expected: manifest.onnx_sha256.clone(),
                actual,
            });
        }
        let graph = onnx_graph::read_signature(&bytes).map_err(|error| BundleError::Onnx {
            path: onnx_path.clone(),
            error,
        })?;
        manifest
            .check_graph(&graph)
            .map_err(|reason| BundleError::Mismatch {
                path: dir.to_path_buf(),
                reason,
            })?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            onnx_path,
            graph,
            onnx: bytes.into(),
        })
    }

    /// The ONNX graph as read and verified by [`Bundle::load`] (its sha256 is the manifest's `onnx_sha256`).
    pub fn onnx_bytes(&self) -> &[u8] {
        &self.onnx
    }

    /// Writes a bundle (creating `dir`): the ONNX bytes under `manifest.onnx_file` and the manifest with the
    /// checksum filled in, each replaced whole or not at all ([`atomic_file`]); then loads it back, so a bundle
    /// that would be refused is never written silently.
    pub fn write(dir: &Path, manifest: &Manifest, onnx: &[u8]) -> Result<Bundle, BundleError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| BundleError::Write { path, error }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut manifest = manifest.clone();
        if manifest.onnx_file.is_empty() {
            manifest.onnx_file = DEFAULT_ONNX_FILE.into();
        }
        manifest.onnx_sha256 = sha256_hex(onnx);
        manifest.format_version = manifest.required_format_version();
        let manifest_path = dir.join(MANIFEST_FILE);
        manifest
            .validate()
            .map_err(|reason| BundleError::Manifest {
                path: manifest_path.clone(),
                reason,
            })?;
        let onnx_path = dir.join(&manifest.onnx_file);
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| BundleError::Manifest {
            path: manifest_path.clone(),
            reason: e.to_string(),
        })?;
        // Both files are written in full before either replaces anything, so a write that fails (a full disk)
        // leaves the bundle that was there. The graph goes into place first: a crash between the two renames
        // leaves the old manifest, whose checksum the new graph does not match, and the loader refuses that
        // bundle rather than run a graph with another graph's centroids.
        let staged_onnx = atomic_file::Staged::write(&onnx_path, onnx).map_err(io(&onnx_path))?;
        let staged_manifest = atomic_file::Staged::write(&manifest_path, text.as_bytes())
            .map_err(io(&manifest_path))?;
        staged_onnx.commit().map_err(io(&onnx_path))?;
        staged_manifest.commit().map_err(io(&manifest_path))?;
        atomic_file::sync_dir(dir).map_err(io(dir))?;
        Bundle::load(dir)
    }

    pub fn section(&self, machine_type: &str, section: u16) -> Option<&SectionModel> {
        self.manifest.section(machine_type, section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_graph::tests::model;

    fn small_features() -> FeatureParams {
        FeatureParams {
            window_samples: 4096,
            window_hop_samples: 2048,
            n_mels: 32,
            ..FeatureParams::default()
        }
    }

    fn unit(i: usize, d: usize) -> Vec<f32> {
        (0..d).map(|k| if k == i { 1.0 } else { 0.0 }).collect()
    }

    fn manifest() -> Manifest {
        let f = small_features();
        Manifest {
            format_version: FORMAT_VERSION,
            model_id: "test".into(),
            inputs: vec![
                InputSpec {
                    name: "log_mel".into(),
                    view: FeatureView::LogMel,
                    shape: vec![1, f.log_mel_shape()[0], f.n_mels],
                },
                InputSpec {
                    name: "spectrum".into(),
                    view: FeatureView::Spectrum,
                    shape: vec![1, f.spectrum_len()],
                },
            ],
            features: f,
            output: TensorSpec {
                name: "embedding".into(),
                shape: vec![1, 4],
            },
            embedding_dim: 4,
            classes: vec!["fan/section_00".into()],
            sections: vec![SectionModel {
                machine_type: "fan".into(),
                section: 0,
                centroids: vec![unit(0, 4), unit(1, 4), unit(2, 4)],
                n_source_centroids: 2,
                n_target_centroids: 1,
                threshold: Threshold {
                    value: 0.3,
                    method: "gamma-quantile".into(),
                    quantile: 0.9,
                    gamma_shape: Some(2.0),
                    gamma_scale: Some(0.05),
                },
                baseline: None,
            }],
            clip_pooling: "mean".into(),
            onnx_file: DEFAULT_ONNX_FILE.into(),
            onnx_sha256: String::new(),
            provenance: Provenance::default(),
        }
    }

    fn graph() -> Vec<u8> {
        model(
            &[
                (
                    "log_mel",
                    vec![Dim::Symbolic("batch".into()), Dim::Fixed(7), Dim::Fixed(32)],
                ),
                ("spectrum", vec![Dim::Fixed(1), Dim::Fixed(2048)]),
            ],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(4)])],
        )
    }

    fn err_of(dir: &Path) -> String {
        Bundle::load(dir).unwrap_err().to_string()
    }

    #[test]
    fn writes_and_loads_back() {
        let d = tempfile::tempdir().unwrap();
        let b = Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        assert_eq!(b.manifest.onnx_sha256, sha256_hex(&graph()));
        assert_eq!(b.onnx_bytes(), graph());
        assert_eq!(b.graph.producer, "test-producer");
        assert!(b.section("fan", 0).is_some());
        assert!(b.manifest.section_by_key("fan/section_00").is_some());
        assert!(b.section("fan", 1).is_none());
        assert!(!std::fs::read_to_string(d.path().join(MANIFEST_FILE))
            .unwrap()
            .contains("baseline"));
        assert_eq!(b.manifest.format_version, 1);
    }

    /// Edits the written manifest's JSON and returns what loading it says.
    fn load_edited(
        dir: &Path,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Bundle, String> {
        let path = dir.join(MANIFEST_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
        Bundle::load(dir).map_err(|e| e.to_string())
    }

    /// A manifest of a newer format is refused by its version, with the cure, even when it has fields this
    /// build does not know (which is why it is newer); version 0 is no version.
    #[test]
    fn a_newer_format_is_named_by_its_version() {
        let d = tempfile::tempdir().unwrap();
        Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        let newer = "format_version 3 is newer than this build reads (1 to 2): the bundle was written by a newer \
                     sonitor-train; upgrade sonitor to run it";
        let e = load_edited(d.path(), |v| v["format_version"] = 3.into()).unwrap_err();
        assert!(e.contains(newer), "{e}");
        let e = load_edited(d.path(), |v| v["sections"][0]["drift"] = 0.5.into()).unwrap_err();
        assert!(
            e.contains(newer) && e.contains("unknown field `drift`"),
            "{e}"
        );
        let e = load_edited(d.path(), |v| v["format_version"] = 0.into()).unwrap_err();
        assert!(e.contains("format_version 0 is not a version"), "{e}");
        // Of a version this build reads, an unknown field is named as it is.
        let e = load_edited(d.path(), |v| v["format_version"] = 1.into()).unwrap_err();
        assert!(
            e.contains("unknown field `drift`") && !e.contains("newer"),
            "{e}"
        );
    }

    /// A section's level baseline goes into the manifest and comes back the same.
    #[test]
    fn a_baseline_writes_and_loads_back() {
        let d = tempfile::tempdir().unwrap();
        let mut m = manifest();
        let n = m.features.n_mels;
        let baseline = crate::score::Baseline {
            means: vec![vec![-3.25; n], vec![-2.5; n]],
            cholesky: (0..n * (n + 1) / 2).map(|i| 1.0 + i as f64 / 7.0).collect(),
            domain_offsets: vec![0.0, 1.75],
            distance_median: 11.5,
            distance_spread: 3.125,
            score_median: 0.0625,
            score_spread: 0.03,
            weight: 0.5,
        };
        m.sections[0].baseline = Some(baseline.clone());
        // Whatever version the writer put in, the bundle says the one it needs: 2, for the baseline.
        m.format_version = 1;
        Bundle::write(d.path(), &m, &graph()).unwrap();
        let back = Bundle::load(d.path()).unwrap();
        assert_eq!(
            back.section("fan", 0).unwrap().baseline,
            Some(baseline.clone())
        );
        assert_eq!(back.manifest.format_version, 2);
        // `combine` of 2026-12-03 and 2026-12-04 wrote such bundles as version 1: they still load.
        let old = load_edited(d.path(), |v| v["format_version"] = 1.into()).unwrap();
        assert_eq!(
            old.section("fan", 0).unwrap().baseline,
            Some(baseline.clone())
        );
        // Without domain offsets (the bundles `combine` wrote before them) the field is left out, and such a
        // manifest loads with none.
        let none = crate::score::Baseline {
            domain_offsets: Vec::new(),
            ..baseline
        };
        m.sections[0].baseline = Some(none.clone());
        Bundle::write(d.path(), &m, &graph()).unwrap();
        let text = std::fs::read_to_string(d.path().join(MANIFEST_FILE)).unwrap();
        assert!(text.contains("distance_median") && !text.contains("domain_offsets"));
        let back = Bundle::load(d.path()).unwrap();
        assert_eq!(back.section("fan", 0).unwrap().baseline, Some(none));
    }

    #[test]
    fn a_write_that_fails_leaves_the_bundle_that_was_there() {
        let d = tempfile::tempdir().unwrap();
        Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        let mut changed = manifest();
        changed.model_id = "retrained".into();
        // The manifest cannot be staged (something in the way of its temporary file, as a full disk would
        // stop it): the error names the manifest, and neither file of the old bundle was replaced.
        let in_the_way = atomic_file::temp_path(&d.path().join(MANIFEST_FILE));
        std::fs::create_dir(&in_the_way).unwrap();
        // Another graph that fits the same manifest: its batch axis fixed instead of symbolic.
        let other_graph = model(
            &[
                (
                    "log_mel",
                    vec![Dim::Fixed(1), Dim::Fixed(7), Dim::Fixed(32)],
                ),
                ("spectrum", vec![Dim::Fixed(1), Dim::Fixed(2048)]),
            ],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(4)])],
        );
        assert_ne!(other_graph, graph());
        let e = Bundle::write(d.path(), &changed, &other_graph).unwrap_err();
        assert!(
            e.to_string().contains(MANIFEST_FILE) && e.to_string().contains("cannot write"),
            "{e}"
        );
        let b = Bundle::load(d.path()).unwrap();
        assert_eq!(b.manifest.model_id, "test");
        assert_eq!(std::fs::read(&b.onnx_path).unwrap(), graph());
        assert!(!atomic_file::temp_path(&b.onnx_path).exists());
        // With the way clear, the same write replaces both.
        std::fs::remove_dir(&in_the_way).unwrap();
        let b = Bundle::write(d.path(), &changed, &other_graph).unwrap();
        assert_eq!(b.manifest.model_id, "retrained");
        assert_eq!(b.manifest.onnx_sha256, sha256_hex(&other_graph));
    }

    #[test]
    fn a_changed_onnx_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        let mut g = graph();
        g.push(0);
        std::fs::write(d.path().join("model.onnx"), g).unwrap();
        assert!(err_of(d.path()).contains("checksum mismatch"));
    }

    /// A write of the bundle stopped between its two renames (an in-place `upgrade` killed, a power cut): the new
    /// graph is in place, its manifest still waits as `manifest.json.tmp`. Named as such, with the `mv` that
    /// finishes it, not as a graph "changed or from another bundle".
    #[test]
    fn a_write_stopped_between_graph_and_manifest_says_how_to_finish_it() {
        let d = tempfile::tempdir().unwrap();
        Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        // The new graph (another that fits the same manifest: its batch axis fixed).
        let g = model(
            &[
                (
                    "log_mel",
                    vec![Dim::Fixed(1), Dim::Fixed(7), Dim::Fixed(32)],
                ),
                ("spectrum", vec![Dim::Fixed(1), Dim::Fixed(2048)]),
            ],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(4)])],
        );
        let mut m = manifest();
        m.onnx_sha256 = sha256_hex(&g);
        std::fs::write(d.path().join("model.onnx"), &g).unwrap();
        let tmp = atomic_file::temp_path(&d.path().join(MANIFEST_FILE));
        std::fs::write(&tmp, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = err_of(d.path());
        assert!(
            e.contains("a write of this bundle that was stopped")
                && e.contains("Finish the write: `mv "),
            "{e}"
        );
        std::fs::rename(&tmp, d.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(
            Bundle::load(d.path()).unwrap().manifest.onnx_sha256,
            sha256_hex(&g)
        );
    }

    /// A bundle path that does not exist says so (it said "has no manifest.json"), and a folder of bundles (the
    /// parent `models/` of `models/default`) names the subfolders that hold one.
    #[test]
    fn a_missing_folder_and_a_folder_of_bundles_are_named_as_such() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("nope");
        let e = err_of(&gone);
        assert!(e.contains("the folder does not exist"), "{e}");
        assert!(!e.contains("manifest.json"), "{e}");
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(err_of(&file).contains("not a folder"), "{}", err_of(&file));

        let models = d.path().join("models");
        std::fs::create_dir_all(models.join("empty")).unwrap();
        let e = err_of(&models);
        assert!(e.contains("has no manifest.json (is it a bundle"), "{e}");
        Bundle::write(&models.join("default"), &manifest(), &graph()).unwrap();
        let e = err_of(&models);
        let default = models.join("default");
        assert!(
            e.contains(&format!("did you mean {}?", default.display())),
            "{e}"
        );
        Bundle::write(&models.join("combined"), &manifest(), &graph()).unwrap();
        let e = err_of(&models);
        assert!(
            e.contains(&format!(
                "subfolders {} and {} have one",
                models.join("combined").display(),
                default.display()
            )),
            "{e}"
        );
        assert!(!e.contains("empty"), "{e}");
    }

    /// A bundle folder this user may not read (root's `chmod 700` copy, read by the daemon's own user) was
    /// reported as "has no manifest.json"; it is "permission denied", naming the folder and what to do. Other
    /// errors are passed on, and an absent manifest is left to the "has no manifest.json" wording.
    #[test]
    fn an_unreadable_bundle_folder_is_permission_denied_not_missing() {
        use std::io::{Error, ErrorKind};
        let dir = Path::new("/srv/sonitor/B");
        let e = unreadable_manifest(dir, &Error::from(ErrorKind::PermissionDenied)).unwrap();
        assert!(
            e.contains(
                "bundle /srv/sonitor/B: permission denied looking for /srv/sonitor/B/manifest.json"
            ) && e.contains("chmod -R a+rX /srv/sonitor/B")
                && !e.contains("has no"),
            "{e}"
        );
        assert!(unreadable_manifest(dir, &Error::from(ErrorKind::NotFound)).is_none());
        assert!(unreadable_manifest(dir, &Error::from(ErrorKind::NotADirectory)).is_none());
        let e = unreadable_manifest(dir, &Error::other("disk on fire")).unwrap();
        assert!(
            e.contains("cannot look for /srv/sonitor/B/manifest.json: disk on fire"),
            "{e}"
        );
    }

    /// The same through [`Bundle::load`], with a real folder of mode 000. Root reads it anyway: there the test
    /// runs itself again as `nobody` through `setpriv` where that exists, and is skipped with a word where not.
    #[cfg(unix)]
    #[test]
    fn a_bundle_folder_of_mode_000_is_permission_denied() {
        use std::os::unix::fs::PermissionsExt;
        const CHILD: &str = "SONITOR_TEST_DENIED_BUNDLE";
        let check = |b: &Path| {
            let e = err_of(b);
            assert!(
                e.contains("permission denied") && !e.contains("has no"),
                "{e}"
            );
            assert!(e.contains(&b.display().to_string()), "{e}");
            // What to do about a file behind the folder names the folder, not "a folder on its way".
            assert_eq!(
                crate::regular_file::barring_folder(&b.join(MANIFEST_FILE)),
                Some(b)
            );
            let advice = crate::regular_file::readable_advice(&b.join(MANIFEST_FILE));
            assert!(
                advice.contains(&format!("chmod a+x {}", b.display())),
                "{advice}"
            );
        };
        let check_file = |m: &Path| {
            let e = err_of(m);
            let file = m.join(MANIFEST_FILE).display().to_string();
            assert!(
                e.contains(&format!("{file}: permission denied"))
                    && e.contains(&format!("chmod a+r {file}")),
                "{e}"
            );
        };
        let check = |b: &Path| {
            check(b);
            check_file(&b.with_file_name("M"));
        };
        if let Some(b) = std::env::var_os(CHILD) {
            check(Path::new(&b));
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = d.path().join("B");
        Bundle::write(&b, &manifest(), &graph()).unwrap();
        // A readable folder whose manifest is not readable: the file named, with what to do.
        let m = d.path().join("M");
        Bundle::write(&m, &manifest(), &graph()).unwrap();
        std::fs::set_permissions(
            m.join(MANIFEST_FILE),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o000)).unwrap();
        let readable = std::fs::symlink_metadata(b.join(MANIFEST_FILE)).is_ok();
        let outcome = if !readable {
            std::panic::catch_unwind(|| check(&b)).map_err(|_| "failed in-process".to_string())
        } else if Path::new("/usr/bin/setpriv").exists() {
            // As another user, as the daemon under DynamicUser reads root's copy.
            let o = std::process::Command::new("/usr/bin/setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "bundle::tests::a_bundle_folder_of_mode_000_is_permission_denied",
                    "--nocapture",
                ])
                .env(CHILD, &b)
                .output();
            match o {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "as nobody: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
                Err(e) => {
                    eprintln!("skipped: running as root and setpriv could not run ({e})");
                    Ok(())
                }
            }
        } else {
            eprintln!(
                "skipped: this user (root) reads a folder of mode 000 and there is no setpriv"
            );
            Ok(())
        };
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }

    #[test]
    fn missing_pieces_are_named() {
        let d = tempfile::tempdir().unwrap();
        assert!(err_of(d.path()).contains("manifest.json"));
        Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        std::fs::remove_file(d.path().join("model.onnx")).unwrap();
        assert!(err_of(d.path()).contains("model.onnx"));
        // A FIFO in a file's place is refused, not opened: the open waited for a writer for ever (`validate`,
        // `eval` and the daemon's start hung).
        #[cfg(unix)]
        for name in ["model.onnx", MANIFEST_FILE] {
            Bundle::write(d.path(), &manifest(), &graph()).unwrap();
            let path = d.path().join(name);
            std::fs::remove_file(&path).unwrap();
            let made = std::process::Command::new("mkfifo").arg(&path).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo");
            let e = err_of(d.path());
            assert!(e.contains(name) && e.contains("not a regular file"), "{e}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn inconsistent_manifests_are_refused_with_the_reason() {
        type Change = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|m| m.sections[0].centroids.clear()),
                "no centroids",
            ),
            (Box::new(|m| m.sections.clear()), "no sections"),
            (
                Box::new(|m| m.model_id = "x".repeat(11_000)),
                "model_id \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"… (11000 bytes) must be 1 to 512 bytes",
            ),
            (Box::new(|m| m.model_id = "a\nb".into()), "without control characters"),
            (Box::new(|m| m.model_id = String::new()), "model_id \"\" (0 bytes)"),
            (
                Box::new(|m| m.sections[0].centroids[0] = vec![1.0, 0.0]),
                "centroid 0 has 2 values",
            ),
            (
                Box::new(|m| m.sections[0].centroids[1] = vec![0.9; 4]),
                "not unit-norm",
            ),
            (
                Box::new(|m| m.sections[0].n_target_centroids = 5),
                "announced",
            ),
            // Counts whose sum overflows: refused, not a panic (every consumer panicked; a reload killed the
            // daemon).
            (
                Box::new(|m| m.sections[0].n_source_centroids = usize::MAX),
                "announced",
            ),
            (
                Box::new(|m| {
                    let again = m.inputs[0].clone();
                    m.inputs.push(again);
                }),
                "is listed twice in the manifest's inputs",
            ),
            (
                Box::new(|m| m.sections[0].threshold.value = f64::NAN),
                "threshold",
            ),
            (
                Box::new(|m| m.sections[0].threshold.value = -1.0),
                "threshold -1 is outside (0, 2)",
            ),
            (
                Box::new(|m| m.sections[0].threshold.quantile = 1.5),
                "quantile 1.5",
            ),
            (
                Box::new(|m| m.sections[0].threshold.gamma_shape = Some(-1.0)),
                "gamma_shape -1 is not a positive number",
            ),
            (
                Box::new(|m| m.clip_pooling = "max".into()),
                "clip_pooling 'max' is not supported",
            ),
            (
                Box::new(|m| m.features.n_mels = 64),
                "feature parameters give",
            ),
            (
                Box::new(|m| m.features.window_samples = 8192),
                "feature parameters give",
            ),
            (Box::new(|m| m.output.shape = vec![1, 8]), "embedding_dim"),
            (
                Box::new(|m| {
                    // More bands than the features give (fewer are the lowest bands, and valid).
                    let d = m.features.n_mels + 1;
                    m.sections[0].baseline = Some(crate::score::Baseline {
                        means: vec![vec![0.0; d]],
                        cholesky: vec![1.0; d * (d + 1) / 2],
                        domain_offsets: Vec::new(),
                        distance_median: 1.0,
                        distance_spread: 1.0,
                        score_median: 0.1,
                        score_spread: 0.1,
                        weight: 0.5,
                    })
                }),
                "section fan/section_00: baseline mean 0 has",
            ),
            (
                Box::new(|m| m.onnx_file = "../x.onnx".into()),
                "plain file name",
            ),
            (
                Box::new(|m| {
                    let s = m.sections[0].clone();
                    m.sections.push(s)
                }),
                "twice",
            ),
            (
                Box::new(|m| m.sections[0].machine_type = String::new()),
                "machine_type \"\", which cannot name a machine type (empty)",
            ),
            (
                Box::new(|m| m.sections[0].machine_type = "fan/section_01".into()),
                "machine_type \"fan/section_01\", which cannot name a machine type (it contains '/')",
            ),
            (
                Box::new(|m| m.sections[0].machine_type = " fan".into()),
                "(it starts or ends with a space)",
            ),
        ];
        for (change, expect) in cases {
            let d = tempfile::tempdir().unwrap();
            let mut m = manifest();
            change(&mut m);
            let e = Bundle::write(d.path(), &m, &graph())
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "expected '{expect}' in: {e}");
        }
    }

    #[test]
    fn manifest_and_graph_must_agree() {
        let d = tempfile::tempdir().unwrap();
        let mut m = manifest();
        m.inputs[0].name = "mel".into();
        let e = Bundle::write(d.path(), &m, &graph())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no input 'mel'"), "{e}");

        let wrong_shape = model(
            &[
                (
                    "log_mel",
                    vec![Dim::Fixed(1), Dim::Fixed(9), Dim::Fixed(32)],
                ),
                ("spectrum", vec![Dim::Fixed(1), Dim::Fixed(2048)]),
            ],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(4)])],
        );
        let e = Bundle::write(d.path(), &manifest(), &wrong_shape)
            .unwrap_err()
            .to_string();
        assert!(e.contains("graph says shape [1, 9, 32]"), "{e}");

        let extra_input = model(
            &[
                (
                    "log_mel",
                    vec![Dim::Fixed(1), Dim::Fixed(7), Dim::Fixed(32)],
                ),
                ("spectrum", vec![Dim::Fixed(1), Dim::Fixed(2048)]),
                ("domain", vec![Dim::Fixed(1)]),
            ],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(4)])],
        );
        let e = Bundle::write(d.path(), &manifest(), &extra_input)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs input 'domain'"), "{e}");

        // A symbolic or unknown axis anywhere (a PyTorch export with dynamic frames) is the manifest's to fix;
        // a fixed one that differs is not, nor a rank that differs.
        let dynamic = model(
            &[
                (
                    "log_mel",
                    vec![
                        Dim::Symbolic("batch".into()),
                        Dim::Symbolic("frames".into()),
                        Dim::Fixed(32),
                    ],
                ),
                ("spectrum", vec![Dim::Unknown, Dim::Unknown]),
            ],
            &[(
                "embedding",
                vec![Dim::Symbolic("batch".into()), Dim::Unknown],
            )],
        );
        Bundle::write(d.path(), &manifest(), &dynamic).unwrap();
        let wrong_rank = model(
            &[
                (
                    "log_mel",
                    vec![Dim::Symbolic("frames".into()), Dim::Fixed(32)],
                ),
                ("spectrum", vec![Dim::Fixed(1), Dim::Fixed(2048)]),
            ],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(4)])],
        );
        let e = Bundle::write(d.path(), &manifest(), &wrong_rank)
            .unwrap_err()
            .to_string();
        assert!(e.contains("graph says shape [frames, 32]"), "{e}");

        let e = Bundle::write(d.path(), &manifest(), b"not onnx at all")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid ONNX model"), "{e}");
    }

    /// A manifest saved by a Windows editor starts with a UTF-8 byte order mark: read as the same manifest.
    #[test]
    fn a_manifest_with_a_byte_order_mark_loads() {
        let d = tempfile::tempdir().unwrap();
        let written = Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        let p = d.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("\u{feff}{text}")).unwrap();
        let b = Bundle::load(d.path()).unwrap();
        assert_eq!(b.manifest, written.manifest);
    }

    #[test]
    fn unknown_manifest_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        Bundle::write(d.path(), &manifest(), &graph()).unwrap();
        let p = d.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"clip_pooling\"", "\"clip_poling\"");
        std::fs::write(&p, text).unwrap();
        assert!(err_of(d.path()).contains("clip_poling"));
    }
}
