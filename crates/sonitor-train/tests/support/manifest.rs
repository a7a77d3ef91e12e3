//! A test manifest that only needs to load (`foreign_onnx.rs`, `upgrade.rs`): the given features, graph signature
//! and provenance; machine type fan, section 0, one unit centroid, threshold 0.5; no classes.

use sonitor_core::bundle::{
    InputSpec, Manifest, Provenance, SectionModel, TensorSpec, Threshold, FORMAT_VERSION,
};
use sonitor_core::features::FeatureParams;

pub fn loadable(
    model_id: &str,
    features: &FeatureParams,
    inputs: Vec<InputSpec>,
    output: TensorSpec,
    provenance: Provenance,
) -> Manifest {
    let dim = output.shape.last().copied().unwrap_or(0);
    Manifest {
        format_version: FORMAT_VERSION,
        model_id: model_id.into(),
        features: features.clone(),
        inputs,
        output,
        embedding_dim: dim,
        classes: vec![],
        sections: vec![SectionModel {
            machine_type: "fan".into(),
            section: 0,
            centroids: vec![(0..dim).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect()],
            n_source_centroids: 1,
            n_target_centroids: 0,
            threshold: Threshold {
                value: 0.5,
                method: "test".into(),
                quantile: 0.9,
                gamma_shape: None,
                gamma_scale: None,
            },
            baseline: None,
        }],
        clip_pooling: "mean".into(),
        onnx_file: "model.onnx".into(),
        onnx_sha256: String::new(),
        provenance,
    }
}
