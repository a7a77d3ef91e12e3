//! `sonitor-train upgrade`: a graph in the plain form (as sonitor-train exported before the tract form) is
//! rewritten into the current form, computes burn's embedding as before, and a bundle holding it is written again
//! with the new checksum and the upgrade in its provenance; a current graph is left alone.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use sonitor_core::bundle::{Bundle, Manifest, Provenance};
use sonitor_core::features::FeatureParams;
use sonitor_train::export::{export_onnx_as, signature, upgrade_onnx, GraphForm};
use sonitor_train::infer::exported_graph;
use sonitor_train::model::ModelConfig;
use sonitor_train::upgrade::upgrade;

#[path = "support/manifest.rs"]
mod manifest;
#[path = "support/parity.rs"]
mod parity;
use parity::relative_error;

/// A 8192-sample window with 26 mel bands: log-mel `[15, 26]`, so the stem's output (8 × 13) has an odd column
/// that the blocked form crops.
fn features() -> FeatureParams {
    FeatureParams {
        window_samples: 8192,
        window_hop_samples: 4096,
        n_mels: 26,
        ..FeatureParams::default()
    }
}

fn manifest(p: &FeatureParams, config: &ModelConfig, with_config: bool) -> Manifest {
    let (inputs, output) = signature(config);
    let provenance = Provenance {
        model: if with_config {
            serde_json::json!({ "config": config })
        } else {
            serde_json::json!({})
        },
        ..Provenance::default()
    };
    manifest::loadable("upgrade-test", p, inputs, output, provenance)
}

#[test]
fn a_plain_graph_is_upgraded_to_the_same_embedding_and_a_current_one_left_alone() {
    let p = features();
    let [frames, n_mels] = p.log_mel_shape();
    let spec_len = p.spectrum_len();
    let config = ModelConfig::tiny(frames, n_mels, spec_len);
    let device = Device::flex().autodiff();
    device.seed(11);
    let model = config.init(&device).unwrap();
    let plain_device = Device::flex();
    let plain = export_onnx_as(&model, &config, "upgrade-test", GraphForm::Plain).unwrap();
    let current = export_onnx_as(&model, &config, "upgrade-test", GraphForm::Tract).unwrap();

    // The graph: two rewrites, after which there is nothing left to do; a current graph needs none.
    let up = upgrade_onnx(&plain, &config)
        .unwrap()
        .expect("a plain graph is upgraded");
    assert_eq!(up.changes.len(), 2, "{:?}", up.changes);
    assert!(
        up.changes[0].starts_with("stem ") && up.changes[0].contains("4 → 16 channels"),
        "{:?}",
        up.changes
    );
    assert!(
        up.changes[1].contains("ReduceMax → MaxPool"),
        "{:?}",
        up.changes
    );
    assert!(upgrade_onnx(&up.onnx, &config).unwrap().is_none());
    assert!(upgrade_onnx(&current, &config).unwrap().is_none());

    // Same embedding as burn's forward pass, and as the plain graph.
    let embedder = |bytes: &[u8]| exported_graph(bytes, &config).unwrap();
    let (before, after) = (embedder(&plain), embedder(&up.onnx));
    let eval = model.valid();
    for _ in 0..3 {
        let mel = Tensor::<3>::random(
            [1, frames, n_mels],
            Distribution::Normal(0.0, 3.0),
            &plain_device,
        );
        let spec = Tensor::<2>::random(
            [1, spec_len],
            Distribution::Uniform(0.0, 50.0),
            &plain_device,
        );
        let mel_v: Vec<f32> = mel.to_data().try_to_vec().unwrap();
        let spec_v: Vec<f32> = spec.to_data().try_to_vec().unwrap();
        let want: Vec<f32> = eval.forward(mel, spec).into_data().try_to_vec().unwrap();
        let got = after.embed_views(&mel_v, &spec_v).unwrap();
        assert!(
            relative_error(&got, &want) <= 1e-4,
            "{got:?} vs burn {want:?}"
        );
        let old = before.embed_views(&mel_v, &spec_v).unwrap();
        assert!(
            relative_error(&got, &old) <= 1e-5,
            "{got:?} vs the plain graph {old:?}"
        );
    }

    // The bundle: written again with the new graph's checksum and the upgrade in its provenance.
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    let old_bundle = Bundle::write(&old_dir, &manifest(&p, &config, true), &plain).unwrap();
    let outcome = upgrade(&old_dir, &new_dir).unwrap();
    assert_eq!(outcome.changes, up.changes);
    assert!(outcome.max_relative_difference <= 1e-5);
    let new_bundle = Bundle::load(&new_dir).unwrap();
    assert_eq!(std::fs::read(new_dir.join("model.onnx")).unwrap(), up.onnx);
    assert_ne!(
        new_bundle.manifest.onnx_sha256,
        old_bundle.manifest.onnx_sha256
    );
    let record = &new_bundle.manifest.provenance.model["graph_upgrade"];
    assert_eq!(
        record["from_onnx_sha256"],
        old_bundle.manifest.onnx_sha256.as_str()
    );
    assert_eq!(record["changes"].as_array().unwrap().len(), 2);
    assert_eq!(new_bundle.manifest.sections, old_bundle.manifest.sections);

    // Into another directory that holds a bundle: refused, that bundle untouched; in place: upgraded.
    let other = dir.path().join("other");
    Bundle::write(&other, &manifest(&p, &config, true), &plain).unwrap();
    let e = format!("{:#}", upgrade(&old_dir, &other).unwrap_err());
    assert!(e.contains("already holds a bundle"), "{e}");
    assert_eq!(std::fs::read(other.join("model.onnx")).unwrap(), plain);
    assert_eq!(upgrade(&other, &other).unwrap().changes, up.changes);
    assert_eq!(std::fs::read(other.join("model.onnx")).unwrap(), up.onnx);

    // Upgrading again changes nothing: in place nothing is written, elsewhere the bundle is copied unchanged (a
    // script going on with --out found nothing there).
    let again = dir.path().join("again");
    let before = std::fs::read(new_dir.join("model.onnx")).unwrap();
    assert!(upgrade(&new_dir, &new_dir).unwrap().changes.is_empty());
    assert_eq!(std::fs::read(new_dir.join("model.onnx")).unwrap(), before);
    assert!(upgrade(&new_dir, &again).unwrap().changes.is_empty());
    assert_eq!(
        Bundle::load(&again).unwrap().manifest,
        Bundle::load(&new_dir).unwrap().manifest
    );

    // A bundle that does not record its network configuration is refused, naming what is missing.
    let bare = dir.path().join("bare");
    Bundle::write(&bare, &manifest(&p, &config, false), &plain).unwrap();
    let e = format!("{:#}", upgrade(&bare, &dir.path().join("out")).unwrap_err());
    assert!(e.contains("provenance.model.config"), "{e}");
}
