//! Inference with tract on an ONNX embedding graph: the daemon's path. Used by `eval`, by the scoring back end
//! of `fit` (so the centroids and thresholds are computed from exactly what the daemon will compute), and by the
//! export parity test.

use anyhow::Context;
use sonitor_core::features::{FeatureExtractor, Features};
use std::sync::Arc;

use tract_onnx::prelude::*;

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

/// A loaded, optimised ONNX embedding graph with two named inputs.
pub struct OnnxEmbedder {
    plan: Arc<TypedRunnableModel>,
    /// For each graph input in order: true = log-mel, false = spectrum.
    order: Vec<bool>,
    log_mel_shape: [usize; 3],
    spectrum_shape: [usize; 2],
}

impl std::fmt::Debug for OnnxEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEmbedder")
            .field("order", &self.order)
            .field("log_mel_shape", &self.log_mel_shape)
            .field("spectrum_shape", &self.spectrum_shape)
            .finish()
    }
}

impl OnnxEmbedder {
    /// Loads an ONNX graph whose inputs are named `log_mel_name` (`[1, frames, n_mels]`) and `spectrum_name`
    /// (`[1, spectrum_len]`); fixes those shapes (a symbolic batch axis becomes 1), keeps the output named
    /// `output_name` as the embedding (a graph may have other outputs, in any order) and optimises the graph.
    pub fn from_bytes(
        bytes: &[u8],
        log_mel_name: &str,
        log_mel_shape: [usize; 3],
        spectrum_name: &str,
        spectrum_shape: [usize; 2],
        output_name: &str,
    ) -> anyhow::Result<Self> {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow::anyhow!("parsing the ONNX graph: {e:#}"))?;
        model
            .select_outputs_by_name([output_name])
            .map_err(|e| anyhow::anyhow!("the ONNX graph has no output '{output_name}': {e:#}"))?;
        let names: Vec<String> = model
            .input_outlets()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let mut order = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let is_mel = if name == log_mel_name {
                true
            } else if name == spectrum_name {
                false
            } else {
                anyhow::bail!(
                    "the ONNX graph has an input '{name}'; expected '{log_mel_name}' and '{spectrum_name}'"
                );
            };
            let fact = if is_mel {
                f32::fact(log_mel_shape)
            } else {
                f32::fact(spectrum_shape)
            };
            model = model
                .with_input_fact(i, fact.into())
                .map_err(|e| anyhow::anyhow!("input '{name}': {e:#}"))?;
            order.push(is_mel);
        }
        anyhow::ensure!(
            order.len() == 2 && order.contains(&true) && order.contains(&false),
            "the ONNX graph has inputs {names:?}; expected exactly '{log_mel_name}' and '{spectrum_name}'"
        );
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow::anyhow!("preparing the ONNX graph for inference: {e:#}"))?;
        Ok(Self {
            plan,
            order,
            log_mel_shape,
            spectrum_shape,
        })
    }

    /// Unit-normalised embeddings of a clip's analysis windows (the feature extractor's window and hop).
    pub fn window_embeddings(
        &self,
        fx: &mut FeatureExtractor,
        audio: &[f32],
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let p = fx.params().clone();
        let mut out = fx.new_output();
        crate::data::windows(audio, &p)
            .iter()
            .map(|w| {
                fx.extract_into(w, &mut out)?;
                Ok(crate::kmeans::normalised(&self.embed(&out)?))
            })
            .collect()
    }

    /// The (not normalised) embedding of one window's features.
    pub fn embed(&self, f: &Features) -> anyhow::Result<Vec<f32>> {
        self.embed_raw(&f.log_mel, &f.spectrum)
    }

    pub fn embed_raw(&self, log_mel: &[f32], spectrum: &[f32]) -> anyhow::Result<Vec<f32>> {
        let mel =
            tract_ndarray::Array::from_shape_vec(self.log_mel_shape.to_vec(), log_mel.to_vec())
                .map_err(|e| anyhow::anyhow!("log-mel of {} values: {e}", log_mel.len()))?;
        let spec =
            tract_ndarray::Array::from_shape_vec(self.spectrum_shape.to_vec(), spectrum.to_vec())
                .map_err(|e| anyhow::anyhow!("spectrum of {} values: {e}", spectrum.len()))?;
        let (mut mel, mut spec) = (Some(Tensor::from(mel)), Some(Tensor::from(spec)));
        let inputs: TVec<TValue> = self
            .order
            .iter()
            .filter_map(|&is_mel| if is_mel { mel.take() } else { spec.take() })
            .map(|t| t.into())
            .collect();
        let out = self
            .plan
            .run(inputs)
            .map_err(|e| anyhow::anyhow!("running the ONNX graph: {e:#}"))?;
        let first = out.first().context("the ONNX graph produced no output")?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| anyhow::anyhow!("embedding output: {e:#}"))?;
        Ok(view.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tract_onnx::pb;

    /// PyTorch returning `(logits, embedding)`: the graph's first output is not the embedding. The named output
    /// is the one embedded, whatever the order (the default bundle's graph with `decoy = -embedding` first).
    #[test]
    fn the_named_output_is_the_embedding_not_the_graphs_first() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        let bundle = sonitor_core::bundle::Bundle::load(&dir).unwrap();
        let plain = bundle.onnx_bytes().to_vec();
        let mut proto = pb::ModelProto::decode(plain.as_slice()).unwrap();
        let g = proto.graph.as_mut().unwrap();
        let emb = g.output.iter().find(|o| o.name == "embedding").unwrap();
        let decoy = pb::ValueInfoProto {
            name: "decoy".into(),
            ..emb.clone()
        };
        g.node.push(pb::NodeProto {
            op_type: "Neg".into(),
            name: "decoy".into(),
            input: vec!["embedding".into()],
            output: vec!["decoy".into()],
            ..Default::default()
        });
        g.output.insert(0, decoy);
        let decoyed = proto.encode_to_vec();
        let [frames, n_mels] = bundle.manifest.features.log_mel_shape();
        let spec_len = bundle.manifest.features.spectrum_len();
        let load = |bytes: &[u8], output: &str| {
            OnnxEmbedder::from_bytes(
                bytes,
                "log_mel",
                [1, frames, n_mels],
                "spectrum",
                [1, spec_len],
                output,
            )
            .unwrap()
        };
        let mel: Vec<f32> = (0..frames * n_mels)
            .map(|i| (0.1 * i as f64).sin() as f32)
            .collect();
        let spec: Vec<f32> = (0..spec_len)
            .map(|i| (0.01 * i as f64).cos().abs() as f32)
            .collect();
        let want = load(&plain, "embedding").embed_raw(&mel, &spec).unwrap();
        assert!(want.iter().any(|v| *v != 0.0));
        let got = load(&decoyed, "embedding").embed_raw(&mel, &spec).unwrap();
        assert_eq!(got, want);
        // The other output is there, and is what a caller naming it gets.
        let neg = load(&decoyed, "decoy").embed_raw(&mel, &spec).unwrap();
        assert_eq!(neg, want.iter().map(|v| -v).collect::<Vec<_>>());
        let e = OnnxEmbedder::from_bytes(
            &plain,
            "log_mel",
            [1, frames, n_mels],
            "spectrum",
            [1, spec_len],
            "logits",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no output 'logits'"), "{e:#}");
    }
}
