//! `sonitor-train upgrade`: rewrites the graph of a bundle exported by an earlier sonitor-train into the form the
//! exporter writes now ([`crate::export::upgrade_onnx`]: the same weights, fewer wasted tiles in tract), checks
//! that tract computes the same embedding from both graphs, and writes the bundle again with the new checksum and
//! the upgrade recorded in its provenance (`provenance.model.graph_upgrade`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use sonitor_core::bundle::Bundle;
use sonitor_core::embed::EmbeddingGraph;

use crate::export::upgrade_onnx;
use crate::infer::relative_error;
use crate::model::ModelConfig;

/// Largest relative difference ([`relative_error`]: ‖Δ‖ over ‖embedding‖) between the two graphs' embeddings that
/// an upgrade accepts: the rewritten stem adds zeros and sums in another order, nothing more.
pub const MAX_RELATIVE_DIFFERENCE: f64 = 1e-5;

#[derive(clap::Args, Debug)]
pub struct UpgradeArgs {
    /// The bundle to upgrade.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the upgraded bundle (manifest.json and the ONNX file); may be --model itself. Other files
    /// of the bundle's directory (a checkpoint, a demo recording) are not copied.
    #[arg(long)]
    pub out: PathBuf,
}

/// What [`upgrade`] did.
#[derive(Debug)]
pub struct Outcome {
    /// The rewritten nodes; empty when the graph was already current (the bundle is then copied unchanged into
    /// another `--out`, and left alone in place).
    pub changes: Vec<String>,
    pub max_relative_difference: f64,
    /// `--out` is `--model`'s own directory.
    pub in_place: bool,
}

/// The embedding of both graphs on the same random inputs: the largest relative difference over a few draws.
fn compare(bundle: &Bundle, old: &[u8], new: &[u8]) -> anyhow::Result<f64> {
    let manifest = &bundle.manifest;
    let (a, b) = (
        EmbeddingGraph::from_bytes(old, &manifest.inputs, &manifest.output)?,
        EmbeddingGraph::from_bytes(new, &manifest.inputs, &manifest.output)?,
    );
    let [frames, n_mels] = manifest.features.log_mel_shape();
    let bins = manifest.features.spectrum_len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut worst = 0f64;
    for _ in 0..4 {
        let m: Vec<f32> = (0..frames * n_mels)
            .map(|_| rng.gen_range(-6.0..6.0))
            .collect();
        let s: Vec<f32> = (0..bins).map(|_| rng.gen_range(0.0..60.0)).collect();
        worst = worst.max(relative_error(
            &b.embed_views(&m, &s)?,
            &a.embed_views(&m, &s)?,
        ));
    }
    Ok(worst)
}

/// Upgrades the bundle at `model` into `out` (see the module documentation). A graph that is already current is
/// left alone, and copied unchanged into an `out` of its own: a script that goes on with `out` finds a bundle
/// there either way.
pub fn upgrade(model: &Path, out: &Path) -> anyhow::Result<Outcome> {
    let bundle = Bundle::load(model)
        .with_context(|| format!("--model {}: not a usable bundle", model.display()))?;
    // In place is what upgrading means; another directory must not hold a bundle or checkpoint, which would be
    // overwritten, or left beside another network's graph.
    let in_place = matches!(
        (model.canonicalize(), out.canonicalize()),
        (Ok(a), Ok(b)) if a == b
    );
    if !in_place {
        anyhow::ensure!(
            !out.exists() || out.is_dir(),
            "--out {}: exists and is not a directory",
            out.display()
        );
        let found = crate::train::held_bundle_files(out);
        anyhow::ensure!(
            found.is_empty(),
            "--out {} already holds a bundle or checkpoint ({}): give an empty directory, or --model's own to \
             upgrade it in place",
            out.display(),
            found.join(", ")
        );
    }
    let m = &bundle.manifest;
    let config: ModelConfig = m
        .provenance
        .model
        .get("config")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("--model {}: the manifest records no network configuration (provenance.model.config), so this is not a graph sonitor-train exported", model.display()))
        .and_then(|c| serde_json::from_value(c).context("provenance.model.config"))?;
    let old = std::fs::read(&bundle.onnx_path)
        .with_context(|| format!("reading {}", bundle.onnx_path.display()))?;
    let Some(up) = upgrade_onnx(&old, &config)? else {
        if !in_place {
            Bundle::write(out, m, &old).with_context(|| format!("writing {}", out.display()))?;
        }
        return Ok(Outcome {
            changes: Vec::new(),
            max_relative_difference: 0.0,
            in_place,
        });
    };
    let diff = compare(&bundle, &old, &up.onnx)?;
    anyhow::ensure!(
        diff <= MAX_RELATIVE_DIFFERENCE,
        "the upgraded graph computes another embedding (relative difference {diff:.2e} > {MAX_RELATIVE_DIFFERENCE:e}); nothing written"
    );
    let mut manifest = m.clone();
    if let Some(obj) = manifest.provenance.model.as_object_mut() {
        obj.insert(
            "graph_upgrade".into(),
            serde_json::json!({
                "tool": format!("sonitor-train {}", env!("CARGO_PKG_VERSION")),
                "command": std::env::args().collect::<Vec<_>>().join(" "),
                "from_onnx_sha256": m.onnx_sha256,
                "changes": up.changes,
                "max_relative_difference": diff,
            }),
        );
    }
    Bundle::write(out, &manifest, &up.onnx)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(Outcome {
        changes: up.changes,
        max_relative_difference: diff,
        in_place,
    })
}

pub fn run(a: &UpgradeArgs) -> anyhow::Result<()> {
    let o = upgrade(&a.model, &a.out)?;
    if o.changes.is_empty() {
        if o.in_place {
            eprintln!(
                "{}: the graph is already in the current form; nothing written",
                a.model.display()
            );
        } else {
            eprintln!(
                "{}: the graph is already in the current form; its manifest.json and model.onnx are copied \
                 unchanged to {} (not the other files beside them)",
                a.model.display(),
                a.out.display()
            );
        }
        return Ok(());
    }
    for c in &o.changes {
        eprintln!("  {c}");
    }
    eprintln!(
        "upgraded bundle written to {} (embeddings equal to a relative difference of {:.1e})",
        a.out.display(),
        o.max_relative_difference
    );
    Ok(())
}
