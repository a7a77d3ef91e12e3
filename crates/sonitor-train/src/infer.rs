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
    Ok(window_views(graph, fx, audio)?
        .into_iter()
        .map(|w| w.embedding)
        .collect())
}

/// What the daemon scores of one analysis window: its unit-normalised embedding and its band means
/// ([`sonitor_core::features::Features::band_means`]).
#[derive(Debug, Clone)]
pub struct WindowView {
    pub embedding: Vec<f32>,
    pub band_means: Vec<f64>,
}

/// [`WindowView`]s of a clip's analysis windows, each window's features extracted once.
pub fn window_views(
    graph: &EmbeddingGraph,
    fx: &mut FeatureExtractor,
    audio: &[f32],
) -> anyhow::Result<Vec<WindowView>> {
    let p = fx.params().clone();
    let mut out = fx.new_output();
    crate::data::windows(audio, &p)
        .iter()
        .map(|w| {
            fx.extract_into(w, &mut out)?;
            Ok(WindowView {
                embedding: crate::kmeans::normalised(&graph.embed(&out)?),
                band_means: out.band_means.clone(),
            })
        })
        .collect()
}
