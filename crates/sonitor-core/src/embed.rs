//! The embedding graph run by tract: one loader for the daemon's inference thread, `sonitor-train eval`, the
//! scoring back end of `fit` and the parity tests, so that what is evaluated is what the daemon computes.
//!
//! [`EmbeddingGraph`] parses an ONNX graph, keeps the named output (a graph may have other outputs, in any order),
//! fixes its inputs to the given shapes (a symbolic batch or frames axis, as PyTorch exports them, becomes the
//! manifest's number) and optimises it once. It embeds with `&self`, so threads share one graph; a
//! [`EmbeddingRun`] keeps tract's run state from window to window for the daemon's hot path.

mod guard;

use std::sync::Arc;

use tract_onnx::prelude::*;

pub use guard::{panic_is_handled, quiet_handled_panics};

use crate::bundle::{Bundle, FeatureView, InputSpec, TensorSpec};
use crate::features::Features;

/// Why a graph cannot be loaded or run. Tract's own reason is kept as text.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("tract cannot read the graph: {0}")]
    Read(String),
    #[error("tract finds no output '{name}' in the graph: {reason}")]
    NoOutput { name: String, reason: String },
    #[error("graph input '{0}' is not in the manifest")]
    UnknownInput(String),
    #[error("the graph has inputs {graph:?}; the manifest names {manifest:?}")]
    Inputs {
        graph: Vec<String>,
        manifest: Vec<String>,
    },
    #[error("input '{name}' with the manifest's shape {shape:?}: {reason}")]
    InputShape {
        name: String,
        shape: Vec<usize>,
        reason: String,
    },
    #[error("tract cannot optimise the graph: {0}")]
    Optimise(String),
    #[error("tract cannot plan the graph: {0}")]
    Plan(String),
    #[error("tract cannot start the plan: {0}")]
    Start(String),
    #[error("the {view:?} view has {got} values; the graph's input takes {want}")]
    InputLength {
        view: FeatureView,
        got: usize,
        want: usize,
    },
    #[error("tract cannot run the graph: {0}")]
    Run(String),
    #[error("the model returned no output")]
    NoResult,
    #[error("the model returned {got} values, the manifest says embedding_dim {want}")]
    OutputLength { got: usize, want: usize },
    #[error(
        "node '{node}' ({op}): {reason}; the graph is malformed (a converter's bug or an edit)"
    )]
    Geometry {
        node: String,
        op: String,
        reason: String,
    },
    #[error(
        "tract stopped on the graph ({0}): it is malformed, or uses what tract does not support"
    )]
    Panicked(String),
}

fn text(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

/// How a graph is fed and what it gives, shared by an [`EmbeddingGraph`] and its runners.
#[derive(Debug)]
struct Io {
    /// For each graph input in the graph's order: the feature view that feeds it and its shape.
    feeds: Vec<(FeatureView, Vec<usize>)>,
    /// Values per embedding.
    dim: usize,
}

impl Io {
    /// The graph's inputs for one window, in the graph's order.
    fn tensors(&self, log_mel: &[f32], spectrum: &[f32]) -> Result<TVec<TValue>, EmbedError> {
        let mut tensors: TVec<TValue> = TVec::new();
        for (view, shape) in &self.feeds {
            let data = match view {
                FeatureView::LogMel => log_mel,
                FeatureView::Spectrum => spectrum,
            };
            // tract checks the length against the shape (the only way this fails).
            let t = Tensor::from_shape(shape, data).map_err(|_| EmbedError::InputLength {
                view: *view,
                got: data.len(),
                want: shape.iter().product(),
            })?;
            tensors.push(t.into());
        }
        Ok(tensors)
    }

    /// The embedding in tract's result, checked for its length, into `out`.
    fn output(&self, result: &[TValue], out: &mut Vec<f32>) -> Result<(), EmbedError> {
        let emb = result
            .first()
            .ok_or(EmbedError::NoResult)?
            .to_plain_array_view::<f32>()
            .map_err(|e| EmbedError::Run(text(e)))?;
        if emb.len() != self.dim {
            return Err(EmbedError::OutputLength {
                got: emb.len(),
                want: self.dim,
            });
        }
        out.clear();
        out.extend(emb.iter().copied());
        Ok(())
    }
}

/// An optimised embedding graph with its inputs bound to feature views.
pub struct EmbeddingGraph {
    plan: Arc<TypedRunnableModel>,
    io: Arc<Io>,
}

impl std::fmt::Debug for EmbeddingGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.io.fmt(f)
    }
}

impl EmbeddingGraph {
    /// Loads the ONNX graph `onnx`: every graph input must be one of `inputs` (by name; each gets its shape and
    /// view from there) and `inputs` must name no other; `output` (by name) is the embedding, of
    /// `output.shape`'s product values.
    pub fn from_bytes(
        onnx: &[u8],
        inputs: &[InputSpec],
        output: &TensorSpec,
    ) -> Result<Self, EmbedError> {
        let longest = inputs
            .iter()
            .flat_map(|i| i.shape.iter().copied())
            .max()
            .unwrap_or(1);
        // Decoded once: the geometry check reads the protobuf tract then builds its model from.
        let framework = tract_onnx::onnx();
        let proto = framework
            .proto_model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(|e| EmbedError::Read(format!("Reading proto model: {}", text(e))))?;
        guard::check_geometry(&proto, longest)?;
        guard::catching(|| Self::load(&framework, &proto, inputs, output))
    }

    /// [`EmbeddingGraph::from_bytes`] once the graph's geometry is checked: tract's part.
    fn load(
        framework: &tract_onnx::Onnx,
        proto: &tract_onnx::pb::ModelProto,
        inputs: &[InputSpec],
        output: &TensorSpec,
    ) -> Result<Self, EmbedError> {
        let mut model = framework.model_for_proto_model(proto).map_err(|e| {
            EmbedError::Read(format!("Translating proto model to model: {}", text(e)))
        })?;
        model
            .select_outputs_by_name([&output.name])
            .map_err(|e| EmbedError::NoOutput {
                name: output.name.clone(),
                reason: text(e),
            })?;
        let outlets = model
            .input_outlets()
            .map_err(|e| EmbedError::Read(text(e)))?
            .to_vec();
        let names: Vec<String> = outlets
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        if names.len() != inputs.len() {
            return Err(EmbedError::Inputs {
                graph: names,
                manifest: inputs.iter().map(|i| i.name.clone()).collect(),
            });
        }
        let mut feeds = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let spec = inputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| EmbedError::UnknownInput(name.clone()))?;
            model = model
                .with_input_fact(i, f32::fact(spec.shape.clone()).into())
                .map_err(|e| EmbedError::InputShape {
                    name: name.clone(),
                    shape: spec.shape.clone(),
                    reason: text(e),
                })?;
            feeds.push((spec.view, spec.shape.clone()));
        }
        let plan = model
            .into_optimized()
            .map_err(|e| EmbedError::Optimise(text(e)))?
            .into_runnable()
            .map_err(|e| EmbedError::Plan(text(e)))?;
        Ok(Self {
            plan,
            io: Arc::new(Io {
                feeds,
                dim: output.shape.iter().product(),
            }),
        })
    }

    /// The bundle's graph (the bytes whose checksum [`Bundle::load`] verified, not the file as it is now), with
    /// the manifest's inputs and output.
    pub fn of_bundle(bundle: &Bundle) -> Result<Self, EmbedError> {
        let m = &bundle.manifest;
        Self::from_bytes(bundle.onnx_bytes(), &m.inputs, &m.output)
    }

    /// The embedding of one window's features (not normalised). Builds tract's run state for the call: for one
    /// window at a time in a loop, [`EmbeddingGraph::runner`] keeps it.
    pub fn embed(&self, f: &Features) -> Result<Vec<f32>, EmbedError> {
        self.embed_views(&f.log_mel, &f.spectrum)
    }

    /// [`EmbeddingGraph::embed`] of the two views given apart (parity tests feed random values).
    pub fn embed_views(&self, log_mel: &[f32], spectrum: &[f32]) -> Result<Vec<f32>, EmbedError> {
        let tensors = self.io.tensors(log_mel, spectrum)?;
        // A plan run builds its own state, so a panic caught here leaves nothing behind.
        let result =
            guard::catching(|| self.plan.run(tensors).map_err(|e| EmbedError::Run(text(e))))?;
        let mut out = Vec::new();
        self.io.output(&result, &mut out)?;
        Ok(out)
    }

    /// A runner that keeps tract's run state between windows (`plan.run` would build one per call).
    pub fn runner(&self) -> Result<EmbeddingRun, EmbedError> {
        let state = self.plan.spawn().map_err(|e| EmbedError::Start(text(e)))?;
        Ok(EmbeddingRun {
            state,
            plan: self.plan.clone(),
            io: self.io.clone(),
        })
    }
}

/// One thread's use of an [`EmbeddingGraph`]: its run state kept from window to window.
pub struct EmbeddingRun {
    state: TypedSimpleState,
    /// To build the run state anew after a panic in tract left it half-way through a window.
    plan: Arc<TypedRunnableModel>,
    io: Arc<Io>,
}

impl std::fmt::Debug for EmbeddingRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.io.fmt(f)
    }
}

impl EmbeddingRun {
    /// The embedding of one window's features, into `out` (cleared first). A panic in tract on this window (a
    /// graph that computes an index from the audio and indexes past a tensor with it) is returned as
    /// [`EmbedError::Panicked`], and the run state, which it may have left half-way, is built anew for the next.
    pub fn embed_into(&mut self, f: &Features, out: &mut Vec<f32>) -> Result<(), EmbedError> {
        let tensors = self.io.tensors(&f.log_mel, &f.spectrum)?;
        let state = &mut self.state;
        let result = guard::catching(|| state.run(tensors).map_err(|e| EmbedError::Run(text(e))));
        if let Err(EmbedError::Panicked(_)) = &result {
            self.state = self.plan.spawn().map_err(|e| EmbedError::Start(text(e)))?;
        }
        self.io.output(&result?, out)
    }

    /// Runs the plan once on one window's features and calls `timed(node name, op name, seconds)` for every node
    /// it evaluates (`sonitor-bench window --nodes`: where inference spends its time).
    pub fn profile_nodes(
        &mut self,
        f: &Features,
        mut timed: impl FnMut(&str, &str, f64),
    ) -> Result<(), EmbedError> {
        let tensors = self.io.tensors(&f.log_mel, &f.spectrum)?;
        self.state
            .run_plan_with_eval(tensors, |ctx, state, node, input| {
                let t = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, state, node, input);
                let elapsed = t.elapsed().as_secs_f64();
                timed(&node.name, &op_label(node.op()), elapsed);
                r
            })
            .map_err(|e| EmbedError::Run(text(e)))?;
        Ok(())
    }
}

/// An op's name, and for a matrix product the kernel tract chose for it (`OptMatMul [fma_mmm_f32_24x4]`): which
/// kernel runs a narrow layer (its tile's rows, its SIMD width) is most of why it is slower than its FLOPs say.
fn op_label(op: &dyn tract_onnx::prelude::Op) -> String {
    let name = op.name();
    let kernel = op.info().ok().and_then(|lines| {
        lines.iter().find_map(|l| {
            let (_, rest) = l.split_once(" with [")?;
            rest.split_once(']').map(|(k, _)| k.to_string())
        })
    });
    match kernel {
        Some(k) => format!("{name} [{k}]"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureExtractor;
    use prost::Message;
    use std::path::Path;
    use tract_onnx::pb;

    fn default_bundle() -> Bundle {
        Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default")).unwrap()
    }

    /// The default bundle's graph changed by `edit`, written with its manifest as a bundle in `dir`.
    fn edited_default(dir: &Path, edit: impl FnOnce(&mut pb::GraphProto)) -> Bundle {
        let b = default_bundle();
        let mut proto = pb::ModelProto::decode(b.onnx_bytes()).unwrap();
        edit(proto.graph.as_mut().unwrap());
        Bundle::write(dir, &b.manifest, &proto.encode_to_vec()).unwrap()
    }

    /// One window of a tone in noise, as the daemon would cut it.
    fn features(b: &Bundle) -> Features {
        let p = b.manifest.features.clone();
        let audio: Vec<f32> = (0..p.window_samples)
            .map(|i| {
                let t = i as f32 / p.sample_rate as f32;
                0.3 * (std::f32::consts::TAU * 440.0 * t).sin()
                    + 0.01 * ((i * 7919 % 101) as f32 - 50.0) / 50.0
            })
            .collect();
        FeatureExtractor::new(p).unwrap().extract(&audio).unwrap()
    }

    fn embedding(b: &Bundle) -> Vec<f32> {
        let mut out = Vec::new();
        EmbeddingGraph::of_bundle(b)
            .unwrap()
            .runner()
            .unwrap()
            .embed_into(&features(b), &mut out)
            .unwrap();
        out
    }

    /// The shared graph and a runner with its kept state compute the same embedding, window after window.
    #[test]
    fn a_shared_graph_and_a_runner_embed_alike() {
        let b = default_bundle();
        let g = EmbeddingGraph::of_bundle(&b).unwrap();
        let f = features(&b);
        let once = g.embed(&f).unwrap();
        assert_eq!(once.len(), b.manifest.embedding_dim);
        assert!(once.iter().any(|v| *v != 0.0));
        let mut run = g.runner().unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            run.embed_into(&f, &mut out).unwrap();
            assert_eq!(out, once);
        }
        // Views of the wrong length are named, not handed to tract.
        let e = g.embed_views(&f.log_mel[1..], &f.spectrum).unwrap_err();
        assert!(e.to_string().contains("LogMel view has"), "{e}");
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
            crate::onnx_graph::Dim::Symbolic(_)
        )));
        assert_eq!(embedding(&dynamic), embedding(&default_bundle()));
    }

    /// The default graph with its embedding passed through a `Gather` whose index is the spectrum's peak cast to
    /// an integer: 0 on a silent window, far past the one row there is on a loud one. tract takes the index
    /// without checking it and panics slicing past its data (tract-core 0.23's `Gather::eval_t`), at run time
    /// only: the graph loads, and embeds an all-zero window.
    fn gather_on_the_peak(dir: &Path) -> Bundle {
        edited_default(dir, |g| {
            let inner = "embedding_inner";
            for n in &mut g.node {
                for o in &mut n.output {
                    if o == "embedding" {
                        *o = inner.into();
                    }
                }
            }
            let node = |op: &str, input: &[&str], output: &str, attribute| pb::NodeProto {
                op_type: op.into(),
                name: output.into(),
                input: input.iter().map(|s| s.to_string()).collect(),
                output: vec![output.into()],
                attribute,
                ..Default::default()
            };
            let int = |name: &str, i| pb::AttributeProto {
                name: name.into(),
                r#type: 2,
                i,
                ..Default::default()
            };
            g.initializer.push(pb::TensorProto {
                name: "rows".into(),
                dims: vec![3],
                data_type: 7,
                int64_data: vec![1, 1, -1],
                ..Default::default()
            });
            g.node.extend([
                node("ReduceMax", &["spectrum"], "peak", vec![int("keepdims", 0)]),
                node("Cast", &["peak"], "peak_index", vec![int("to", 7)]),
                node("Reshape", &[inner, "rows"], "one_row", vec![]),
                node(
                    "Gather",
                    &["one_row", "peak_index"],
                    "embedding",
                    vec![int("axis", 0)],
                ),
            ]);
        })
    }

    /// A panic in tract while it runs a window is that window's error, not the process's end: the runner and the
    /// shared graph return it as `Panicked`, the next window embeds as if it had not happened (the runner's state,
    /// which the panic left half-way, is built anew), and a panic hook is told the panic was handled only while
    /// tract runs.
    #[test]
    fn a_panic_in_tract_on_one_window_is_that_windows_error() {
        let d = tempfile::tempdir().unwrap();
        let b = gather_on_the_peak(d.path());
        let g = EmbeddingGraph::of_bundle(&b).unwrap();
        let p = &b.manifest.features;
        let silent = FeatureExtractor::new(p.clone())
            .unwrap()
            .extract(&vec![0.0; p.window_samples])
            .unwrap();
        let loud = features(&b);
        let want = g.embed(&silent).unwrap();
        assert_eq!(want.len(), b.manifest.embedding_dim);

        // This thread's panics are counted (as handled or not); other tests' go to the hook there was.
        let hook = std::sync::Arc::new(std::panic::take_hook());
        let counts = std::sync::Arc::new(std::sync::Mutex::new([0, 0]));
        let (c, previous, me) = (counts.clone(), hook.clone(), std::thread::current().id());
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == me {
                c.lock().unwrap()[usize::from(!panic_is_handled())] += 1;
            } else {
                previous(info)
            }
        }));
        let mut run = g.runner().unwrap();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for round in 0..3 {
            errors.push(run.embed_into(&loud, &mut out).unwrap_err());
            run.embed_into(&silent, &mut out).unwrap();
            assert_eq!(out, want, "round {round}");
        }
        errors.push(g.embed(&loud).unwrap_err());
        assert_eq!(g.embed(&silent).unwrap(), want);
        std::panic::set_hook(Box::new(move |info| hook(info)));

        for e in &errors {
            assert!(matches!(e, EmbedError::Panicked(_)), "{e:?}");
            assert!(
                e.to_string().starts_with("tract stopped on the graph ("),
                "{e}"
            );
        }
        assert_eq!(
            *counts.lock().unwrap(),
            [4, 0],
            "panics handled, not handled"
        );
        assert!(!panic_is_handled());
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

    /// PyTorch returning `(logits, embedding)`: the graph's first output is not the embedding. The named output
    /// is the one embedded, whatever the order; the other is what a caller naming it gets; a name the graph
    /// lacks is refused, naming it.
    #[test]
    fn the_named_output_is_the_embedding_not_the_graphs_first() {
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

        let m = &decoyed.manifest;
        let named = |name: &str| TensorSpec {
            name: name.into(),
            ..m.output.clone()
        };
        let neg = EmbeddingGraph::from_bytes(decoyed.onnx_bytes(), &m.inputs, &named("decoy"))
            .unwrap()
            .embed(&features(&decoyed))
            .unwrap();
        assert_eq!(neg, want.iter().map(|v| -v).collect::<Vec<_>>());
        let e = EmbeddingGraph::from_bytes(decoyed.onnx_bytes(), &m.inputs, &named("logits"))
            .unwrap_err();
        assert!(e.to_string().contains("no output 'logits'"), "{e}");
    }

    /// Inputs the manifest does not describe, or describes but the graph lacks, are refused by name.
    #[test]
    fn inputs_must_match_the_manifest() {
        let b = default_bundle();
        let m = &b.manifest;
        let mut renamed = m.inputs.clone();
        renamed[0].name = "mel".into();
        let e = EmbeddingGraph::from_bytes(b.onnx_bytes(), &renamed, &m.output).unwrap_err();
        assert!(
            matches!(&e, EmbedError::UnknownInput(n) if n == &m.inputs[0].name),
            "{e}"
        );
        let e = EmbeddingGraph::from_bytes(b.onnx_bytes(), &m.inputs[..1], &m.output).unwrap_err();
        assert!(matches!(e, EmbedError::Inputs { .. }), "{e}");
        let e = EmbeddingGraph::from_bytes(b"garbage", &m.inputs, &m.output).unwrap_err();
        assert!(matches!(e, EmbedError::Read(_)), "{e}");
    }

    #[test]
    fn node_profile_runs_the_same_plan_as_embed() {
        let bundle = default_bundle();
        let mut e = EmbeddingGraph::of_bundle(&bundle)
            .unwrap()
            .runner()
            .unwrap();
        let f = features(&bundle);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        e.embed_into(&f, &mut before).unwrap();
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
        e.embed_into(&f, &mut after).unwrap();
        assert_eq!(before, after);
    }
}
