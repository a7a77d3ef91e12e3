//! Inference with tract on an ONNX embedding graph, through the daemon's own loader ([`sonitor_core::embed`]).
//! Used by `eval`, by the scoring back end of `fit` (so the centroids and thresholds are computed from exactly
//! what the daemon will compute), and by the export parity test.

use sonitor_core::embed::{EmbedError, EmbeddingGraph};
use sonitor_core::features::FeatureExtractor;

use crate::model::ModelConfig;

/// ‖got − want‖ / ‖want‖ (Euclidean), how far one embedding is from a reference: 0 when equal, infinite when
/// their lengths differ or the reference is zero and `got` is not.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let norm = want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    if diff == 0.0 {
        0.0
    } else {
        diff / norm
    }
}

/// A graph [`crate::export`] wrote for `config`, loaded as the daemon loads a bundle's: with the inputs and output
/// the manifest will name ([`crate::export::signature`]).
pub fn exported_graph(onnx: &[u8], config: &ModelConfig) -> Result<EmbeddingGraph, EmbedError> {
    let (inputs, output) = crate::export::signature(config);
    EmbeddingGraph::from_bytes(onnx, &inputs, &output)
}

/// Unit-normalised embeddings of a clip's analysis windows (the feature extractor's window and hop), by the
/// daemon's loader and graph ([`EmbeddingGraph`]).
pub fn window_embeddings(
    graph: &EmbeddingGraph,
    fx: &mut FeatureExtractor,
    audio: &[f32],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let p = fx.params().clone();
    let mut out = fx.new_output();
    crate::data::windows(audio, &p)
        .iter()
        .map(|w| {
            fx.extract_into(w, &mut out)?;
            Ok(crate::kmeans::normalised(&graph.embed(&out)?))
        })
        .collect()
}
