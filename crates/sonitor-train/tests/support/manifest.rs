//! The sections of a test manifest that only needs to load (`foreign_onnx.rs`, `upgrade.rs`): machine type fan,
//! section 0, one unit centroid, threshold 0.5.

use sonitor_core::bundle::{SectionModel, Threshold};

pub fn one_section(dim: usize) -> Vec<SectionModel> {
    vec![SectionModel {
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
    }]
}
