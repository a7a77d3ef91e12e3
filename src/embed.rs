//! Embedding and scoring: [`Embedder`] runs a bundle's embedding model with tract (the plan optimised once at
//! start-up and reused for every window; inputs fed by name in the graph's own order, from the feature views the
//! manifest assigns), and the inference thread ([`spawn_inference`]) embeds each window's features and scores the
//! embedding against its section's centroids ([`sonitor_core::score::min_cosine_distance`]). The scores go to the
//! detectors ([`crate::detect`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use sonitor_core::bundle::{Bundle, FeatureView};
use sonitor_core::features::Features;
use tract_onnx::prelude::*;

use crate::features::FeatureMsg;
use crate::metrics::Metrics;

pub struct Embedder {
    /// The plan's run state, kept from window to window: `plan.run` would build a new one per call.
    state: TypedSimpleState,
    /// For each graph input in order: the feature view and the shape.
    inputs: Vec<(FeatureView, Vec<usize>)>,
    dim: usize,
    pub model_id: String,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .finish()
    }
}

impl Embedder {
    /// Loads and optimises the bundle's graph, the bytes whose checksum [`Bundle::load`] verified, with the
    /// manifest's input shapes and its output (by name: a graph may have other outputs, in any order); fails
    /// with the bundle path and tract's reason.
    pub fn load(bundle: &Bundle) -> anyhow::Result<Self> {
        let m = &bundle.manifest;
        let path: &Path = &bundle.onnx_path;
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut bundle.onnx_bytes())
            .with_context(|| format!("{}: tract cannot read the graph", path.display()))?;
        model
            .select_outputs_by_name([&m.output.name])
            .with_context(|| {
                format!(
                    "{}: tract finds no output '{}' in the graph",
                    path.display(),
                    m.output.name
                )
            })?;
        let outlets = model.input_outlets()?.to_vec();
        let mut inputs = Vec::new();
        for (i, outlet) in outlets.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let spec = m.inputs.iter().find(|s| s.name == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: graph input '{name}' is not in the manifest",
                    path.display()
                )
            })?;
            model = model.with_input_fact(i, f32::fact(spec.shape.clone()).into())?;
            inputs.push((spec.view, spec.shape.clone()));
        }
        let plan = model
            .into_optimized()
            .with_context(|| format!("{}: tract cannot optimise the graph", path.display()))?
            .into_runnable()
            .with_context(|| format!("{}: tract cannot plan the graph", path.display()))?;
        let state = plan
            .spawn()
            .with_context(|| format!("{}: tract cannot start the plan", path.display()))?;
        Ok(Self {
            state,
            inputs,
            dim: m.embedding_dim,
            model_id: m.model_id.clone(),
        })
    }

    /// What `sonitor validate` (and a reload, and the start of `run`) asks of a bundle beyond [`Bundle::load`]'s
    /// checks: tract builds the plan `run` would build ([`Embedder::load`]) and runs it once on one window of
    /// all-zero features, which gives `embedding_dim` values. A graph tract cannot read, type, optimise or run
    /// (an operator it lacks, shapes that do not fit the manifest's) is found here, not by a service that then
    /// fails at every start. Returns the embedder, for `run` to use rather than build it again.
    pub fn check(bundle: &Bundle) -> anyhow::Result<Self> {
        let mut e = Self::load(bundle)?;
        let p = &bundle.manifest.features;
        let f = Features {
            log_mel: vec![0.0; p.log_mel_shape().iter().product()],
            spectrum: vec![0.0; p.spectrum_len()],
        };
        let mut out = Vec::new();
        e.embed(&f, &mut out).with_context(|| {
            format!(
                "{}: tract cannot run the graph on one window",
                bundle.onnx_path.display()
            )
        })?;
        Ok(e)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The graph's inputs for one window's features, in the graph's order.
    fn input_tensors(&self, f: &Features) -> anyhow::Result<TVec<TValue>> {
        let mut tensors: TVec<TValue> = TVec::new();
        for (view, shape) in &self.inputs {
            let data = match view {
                FeatureView::LogMel => &f.log_mel,
                FeatureView::Spectrum => &f.spectrum,
            };
            tensors.push(Tensor::from_shape(shape, data)?.into());
        }
        Ok(tensors)
    }

    /// The embedding of one window's features.
    pub fn embed(&mut self, f: &Features, out: &mut Vec<f32>) -> anyhow::Result<()> {
        let tensors = self.input_tensors(f)?;
        let result = self.state.run(tensors)?;
        let emb = result
            .first()
            .ok_or_else(|| anyhow::anyhow!("the model returned no output"))?
            .to_plain_array_view::<f32>()?;
        if emb.len() != self.dim {
            anyhow::bail!(
                "the model returned {} values, the manifest says embedding_dim {}",
                emb.len(),
                self.dim
            );
        }
        out.clear();
        out.extend(emb.iter().copied());
        Ok(())
    }

    /// Runs the plan once on one window's features and calls `timed(node name, op name, seconds)` for every node
    /// it evaluates (`sonitor-bench window --nodes`: where inference spends its time).
    pub fn profile_nodes(
        &mut self,
        f: &Features,
        mut timed: impl FnMut(&str, &str, f64),
    ) -> anyhow::Result<()> {
        let tensors = self.input_tensors(f)?;
        self.state
            .run_plan_with_eval(tensors, |ctx, state, node, input| {
                let t = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, state, node, input);
                timed(&node.name, &node.op().name(), t.elapsed().as_secs_f64());
                r
            })?;
        Ok(())
    }
}

/// A window's score, on its way to the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMsg {
    pub machine: usize,
    pub t_end_ms: u64,
    pub score: f64,
    /// The window's level (RMS, dBFS), by which the daemon tells a machine that is not running.
    pub level_dbfs: f32,
}

/// What the inference thread needs per machine.
pub struct Scorer {
    /// Index into the embedders.
    pub model: usize,
    pub centroids: Vec<Vec<f32>>,
}

/// The inference thread: embeds each window with the machine's model and scores it.
pub fn spawn_inference(
    mut embedders: Vec<Embedder>,
    scorers: Vec<Scorer>,
    features: Receiver<FeatureMsg>,
    recycle: Sender<Features>,
    out: Sender<ScoreMsg>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let mut emb = Vec::new();
            for f in features.iter() {
                let sc = &scorers[f.machine];
                let m = &metrics.machines[f.machine];
                let embedded = embedders[sc.model].embed(&f.features, &mut emb);
                // The features are not needed after embedding, whatever happens to the score.
                let _ = recycle.try_send(f.features);
                if let Err(e) = embedded {
                    log::error!("inference: {e:#}");
                    m.settled.inc();
                    continue;
                }
                let score = sonitor_core::score::min_cosine_distance(&emb, &sc.centroids) as f64;
                m.inferences.inc();
                if !score.is_finite() {
                    // Non-finite audio (a float stream with huge or NaN samples) or a model that overflows:
                    // such a score would raise or hold an alarm on garbage. Dropped and counted instead.
                    let n = m.invalid_scores.inc_get();
                    if n.is_power_of_two() {
                        log::warn!(
                            "machine #{}: window at {} ms scored {score} (not a finite number: the audio or the \
                             model's output is not finite); dropped, {n} so far (sonitor_invalid_scores_total)",
                            f.machine,
                            f.t_end_ms
                        );
                    }
                    m.settled.inc();
                    continue;
                }
                m.score.set_f64(score);
                let spent = f.cut_at.elapsed().as_secs_f64();
                m.inference_seconds_sum
                    .set_f64(m.inference_seconds_sum.get_f64() + spent);
                let msg = ScoreMsg {
                    machine: f.machine,
                    t_end_ms: f.t_end_ms,
                    score,
                    level_dbfs: f.level_dbfs,
                };
                let sent = if f.lossless {
                    out.send(msg).is_ok()
                } else {
                    out.send_timeout(msg, Duration::from_secs(1)).is_ok()
                };
                if !sent {
                    metrics.scores_dropped.inc();
                    m.settled.inc();
                }
            }
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;
    use sonitor_core::features::FeatureExtractor;
    use tract_onnx::pb;

    pub(crate) fn default_bundle() -> Bundle {
        Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default")).unwrap()
    }

    /// The default bundle's graph changed by `edit`, written with its manifest as a bundle in `dir`.
    pub(crate) fn edited_default(dir: &Path, edit: impl FnOnce(&mut pb::GraphProto)) -> Bundle {
        let b = default_bundle();
        let mut proto = pb::ModelProto::decode(b.onnx_bytes()).unwrap();
        edit(proto.graph.as_mut().unwrap());
        Bundle::write(dir, &b.manifest, &proto.encode_to_vec()).unwrap()
    }

    fn embedding(b: &Bundle) -> Vec<f32> {
        let mut e = Embedder::load(b).unwrap();
        let p = b.manifest.features.clone();
        let f = FeatureExtractor::new(p.clone())
            .unwrap()
            .extract(&crate::bench::test_signal(p.window_samples, p.sample_rate))
            .unwrap();
        let mut out = Vec::new();
        e.embed(&f, &mut out).unwrap();
        out
    }

    /// A graph exported with dynamic axes (`[batch, frames, 128]`, `[batch, samples]`), as PyTorch writes them:
    /// the bundle is accepted, tract is given the manifest's shapes, and it computes the same embedding.
    #[test]
    fn a_graph_with_symbolic_axes_runs_with_the_manifests_shapes() {
        use pb::tensor_shape_proto::dimension::Value;
        let d = tempfile::tempdir().unwrap();
        let dynamic = edited_default(d.path(), |g| {
            for input in &mut g.input {
                let Some(pb::type_proto::Value::TensorType(t)) =
                    input.r#type.as_mut().and_then(|t| t.value.as_mut())
                else {
                    continue;
                };
                let dims = &mut t.shape.as_mut().unwrap().dim;
                let names = ["batch", "frames", "bins"];
                for (dim, name) in dims.iter_mut().zip(names).take(2) {
                    dim.value = Some(Value::DimParam(name.into()));
                }
            }
        });
        assert!(dynamic.graph.inputs.iter().all(|i| matches!(
            &i.dims.as_ref().unwrap()[1],
            sonitor_core::onnx_graph::Dim::Symbolic(_)
        )));
        Embedder::check(&dynamic).unwrap();
        assert_eq!(embedding(&dynamic), embedding(&default_bundle()));
    }

    /// The graph tract runs is the one whose checksum was verified: a model.onnx replaced after `Bundle::load`
    /// (another bundle copied over it, a half-written file) is not read again.
    #[test]
    fn the_verified_bytes_are_run_not_the_file_as_it_is_now() {
        let d = tempfile::tempdir().unwrap();
        let b = edited_default(d.path(), |_| {});
        let want = embedding(&b);
        std::fs::write(&b.onnx_path, b"not the graph that was verified").unwrap();
        assert_eq!(embedding(&b), want);
    }

    /// PyTorch returning `(logits, embedding)`: the graph's first output is not the embedding. The manifest's
    /// output is the one scored, whatever the order.
    #[test]
    fn the_manifests_output_is_scored_not_the_graphs_first() {
        let d = tempfile::tempdir().unwrap();
        let decoyed = edited_default(d.path(), |g| {
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
        });
        assert_eq!(decoyed.graph.outputs[0].name, "decoy");
        let want = embedding(&default_bundle());
        assert_eq!(embedding(&decoyed), want);
        assert!(want.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn node_profile_runs_the_same_plan_as_embed() {
        let bundle = default_bundle();
        let mut e = Embedder::load(&bundle).unwrap();
        let p = bundle.manifest.features.clone();
        let mut fx = FeatureExtractor::new(p.clone()).unwrap();
        let f = fx
            .extract(&crate::bench::test_signal(p.window_samples, p.sample_rate))
            .unwrap();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        e.embed(&f, &mut before).unwrap();
        let mut nodes = Vec::new();
        e.profile_nodes(&f, |node, op, s| {
            nodes.push((node.to_string(), op.to_string(), s))
        })
        .unwrap();
        // Every node of the optimised plan, each timed once, the inputs among them.
        assert!(nodes.len() > 20, "{} nodes", nodes.len());
        assert!(nodes.iter().all(|(_, _, s)| *s >= 0.0));
        assert!(nodes.iter().any(|(n, _, _)| n == "log_mel"), "{nodes:?}");
        assert!(nodes.iter().any(|(_, op, _)| op.contains("MatMul")));
        // Profiling leaves the kept state as it was: the next embedding is the same.
        e.embed(&f, &mut after).unwrap();
        assert_eq!(before, after);
    }
}
