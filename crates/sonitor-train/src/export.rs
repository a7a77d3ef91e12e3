//! ONNX export of a trained [`Model`]: the `ModelProto` is built directly from the weights with tract-onnx's
//! protobuf types and encoded with prost (opset 13). Every BatchNorm is folded at export time:
//! - into the convolution or dense layer before it (`W' = W·a`, bias `b`, with `a = γ/√(σ²+ε)`,
//!   `b = β − μ·a`),
//! - the input BatchNorm per mel bin becomes one `Mul` + `Add` broadcast over the mel axis,
//! - the BatchNorm before the time–frequency embedding layer is folded into that (bias-free) layer, which thereby
//!   gets a constant bias term.
//!
//! Two layers are written in a form that computes the same numbers faster in tract (its matrix kernels fill tiles of
//! 16 or 24 output channels; measured on the pruned default model, see BENCHMARKS.md):
//! - a stem with fewer than [`STEM_BLOCK_BELOW`] channels computes 2×2 blocks of output pixels as 4× the
//!   channels ([`Graph::blocked_stem`]), then `DepthToSpace` and a crop;
//! - the max over time is a `MaxPool` over the whole (fixed) time axis, not `ReduceMax`.
//!
//! The graph has fixed shapes, batch 1: inputs `log_mel` `[1, frames, n_mels]` and `spectrum`
//! `[1, spectrum_len]`, output `embedding` `[1, dim]` (not normalised). Parity with burn's forward pass is a test
//! (`tests/export_parity.rs`).

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use prost::Message;
use sonitor_core::bundle::{FeatureView, InputSpec, TensorSpec};
use tract_onnx::pb;

use crate::model::{Model, ModelConfig};

pub const INPUT_LOG_MEL: &str = "log_mel";
pub const INPUT_SPECTRUM: &str = "spectrum";
pub const OUTPUT_EMBEDDING: &str = "embedding";
pub const OPSET: i64 = 13;
/// Stems with fewer output channels than this are written as a blocked convolution ([`Graph::blocked_stem`]).
pub const STEM_BLOCK_BELOW: usize = 16;
/// The blocked stem's block: `STEM_BLOCK × STEM_BLOCK` output pixels computed at once.
const STEM_BLOCK: usize = 2;

/// The kernel side and the stride of a `k × k`, stride `s` stem in its blocked form: the block's input, and one
/// block further.
fn blocked_kernel(k: usize, s: usize) -> (usize, usize) {
    (s * (STEM_BLOCK - 1) + k, s * STEM_BLOCK)
}

fn values<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading weights: {e}"))
}

/// `(a, b)` such that `bn(x) = a·x + b` per channel (inference mode).
fn bn_affine(bn: &BatchNorm) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let gamma = values(bn.gamma.val())?;
    let beta = values(bn.beta.val())?;
    let mean = values(bn.running_mean.value())?;
    let var = values(bn.running_var.value())?;
    let eps = bn.epsilon;
    let a: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(&g, &v)| (g as f64 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let b = beta
        .iter()
        .zip(&mean)
        .zip(&a)
        .map(|((&be, &m), &a)| be - m * a)
        .collect();
    Ok((a, b))
}

/// A convolution's weight (`out_channels` rows) and bias with the BatchNorm after it folded in: each output
/// channel's row scaled by `a`, the bias `b` (`bn_affine`).
fn fold_conv_bn(
    weight: &[f32],
    out_channels: usize,
    bn: &BatchNorm,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let (a, b) = bn_affine(bn)?;
    let w = weight
        .chunks(weight.len() / out_channels)
        .zip(&a)
        .flat_map(|(row, &s)| row.iter().map(move |v| v * s))
        .collect();
    Ok((w, b))
}

struct Graph {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    n: usize,
    form: GraphForm,
}

/// How [`export_onnx_as`] writes the layers that have a faster form in tract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphForm {
    /// The blocked stem and the max over time as a `MaxPool` (the module's documentation): what
    /// [`export_onnx`] writes.
    Tract,
    /// Each layer as one node, the fewest FLOPs, as sonitor-train wrote every graph before the tract form (what
    /// [`upgrade_onnx`] rewrites).
    Plain,
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                                d as i64,
                            )),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Graph {
    fn fresh(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}_{}", self.n)
    }

    fn constant(&mut self, prefix: &str, dims: &[usize], data: Vec<f32>) -> String {
        let name = self.fresh(prefix);
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn constant_i64(&mut self, prefix: &str, data: &[i64]) -> String {
        let name = self.fresh(prefix);
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![data.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        output: Option<&str>,
    ) -> String {
        let out = match output {
            Some(o) => o.to_string(),
            None => self.fresh(&op.to_lowercase()),
        };
        let name = self.fresh(op);
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Conv with a BatchNorm folded in. `weight`: burn layout `[out, in, k…]`.
    fn conv_bn(
        &mut self,
        x: &str,
        weight: Vec<f32>,
        wdims: &[usize],
        bn: &BatchNorm,
        strides: &[i64],
        pads: &[i64],
    ) -> anyhow::Result<String> {
        let (w, b) = fold_conv_bn(&weight, wdims[0], bn)?;
        let kernel: Vec<i64> = wdims[2..].iter().map(|&k| k as i64).collect();
        let wn = self.constant("w", wdims, w);
        let bname = self.constant("b", &[wdims[0]], b);
        Ok(self.node(
            "Conv",
            &[x, &wn, &bname],
            vec![
                attr_ints("kernel_shape", &kernel),
                attr_ints("strides", strides),
                attr_ints("pads", pads),
            ],
            None,
        ))
    }

    /// The stem: a convolution with one input channel (weight `[c, 1, k, k]`, stride `s`, padding `p` on every
    /// side) over an `h × w` input, BatchNorm folded in; below [`STEM_BLOCK_BELOW`] channels as
    /// [`Graph::blocked_stem`].
    fn stem_conv_bn(
        &mut self,
        x: &str,
        weight: Vec<f32>,
        wdims: &[usize],
        bn: &BatchNorm,
        (s, p): (usize, usize),
        hw: (usize, usize),
    ) -> anyhow::Result<String> {
        let c = wdims[0];
        if c >= STEM_BLOCK_BELOW || self.form == GraphForm::Plain {
            let (s, p) = (s as i64, p as i64);
            return self.conv_bn(x, weight, wdims, bn, &[s, s], &[p, p, p, p]);
        }
        let (w, b) = fold_conv_bn(&weight, c, bn)?;
        self.blocked_stem(x, &w, &b, wdims, (s, p), hw, None)
    }

    /// A convolution with one input channel (weight `[c, 1, k, k]` and bias `[c]`, stride `s`, padding `p` on
    /// every side, over an `h × w` input) computed in 2×2 blocks of output pixels. A matrix kernel with a 16-row
    /// tile wastes most of it on 3 or 8 output channels, and the im2col of a `k × k` window at stride `s` is
    /// wide. So each 2×2 block of output pixels is computed at once: `4c` channels whose kernel covers the
    /// block's `(k + s) × (k + s)` input (zero outside each pixel's own `k × k`), at stride `2s`. `DepthToSpace`
    /// (CRD: channel `4c + 2a + b` is pixel `(2i + a, 2j + b)` of channel `c`) puts the pixels back in place and a
    /// `Slice` crops the odd row or column the blocks add. Every pixel sums the same products as before, plus
    /// zeros. The last node's output is `out` when given.
    #[allow(clippy::too_many_arguments)]
    fn blocked_stem(
        &mut self,
        x: &str,
        weight: &[f32],
        bias: &[f32],
        wdims: &[usize],
        (s, p): (usize, usize),
        (h, w): (usize, usize),
        out: Option<&str>,
    ) -> anyhow::Result<String> {
        const B: usize = STEM_BLOCK;
        anyhow::ensure!(
            wdims.len() == 4 && wdims[1] == 1 && wdims[2] == wdims[3],
            "stem weight has shape {wdims:?}, expected [c, 1, k, k]"
        );
        let (c, k) = (wdims[0], wdims[2]);
        anyhow::ensure!(
            weight.len() == c * k * k && bias.len() == c && s > 0 && h + 2 * p >= k && w + 2 * p >= k,
            "stem of {} weights and {} biases does not fit [{c}, 1, {k}, {k}] over {h}×{w} (stride {s}, padding {p})",
            weight.len(),
            bias.len()
        );
        let conv_out = |n: usize| (n + 2 * p - k) / s + 1;
        let (ho, wo) = (conv_out(h), conv_out(w));
        let (hb, wb) = (ho.div_ceil(B), wo.div_ceil(B));
        let (kb, sb) = blocked_kernel(k, s);
        // Padding after: what the last block reads beyond the input.
        let after = |n: usize, blocks: usize| (sb * (blocks - 1) + kb).saturating_sub(n + p);
        let mut wblk = vec![0f32; c * B * B * kb * kb];
        for ch in 0..c {
            for (dy, dx) in (0..B).flat_map(|dy| (0..B).map(move |dx| (dy, dx))) {
                let o = ch * B * B + dy * B + dx;
                for r in 0..k {
                    let dst = (o * kb + s * dy + r) * kb + s * dx;
                    wblk[dst..dst + k]
                        .copy_from_slice(&weight[(ch * k + r) * k..(ch * k + r + 1) * k]);
                }
            }
        }
        let bblk: Vec<f32> = bias.iter().flat_map(|&v| [v; B * B]).collect();
        let wn = self.constant("w", &[c * B * B, 1, kb, kb], wblk);
        let bname = self.constant("b", &[c * B * B], bblk);
        let (sb, pi) = (sb as i64, p as i64);
        let y = self.node(
            "Conv",
            &[x, &wn, &bname],
            vec![
                attr_ints("kernel_shape", &[kb as i64, kb as i64]),
                attr_ints("strides", &[sb, sb]),
                attr_ints("pads", &[pi, pi, after(h, hb) as i64, after(w, wb) as i64]),
            ],
            None,
        );
        let exact = (hb * B, wb * B) == (ho, wo);
        let y = self.node(
            "DepthToSpace",
            &[&y],
            vec![attr_int("blocksize", B as i64), attr_str("mode", "CRD")],
            if exact { out } else { None },
        );
        if exact {
            return Ok(y);
        }
        let starts = self.constant_i64("starts", &[0, 0]);
        let ends = self.constant_i64("ends", &[ho as i64, wo as i64]);
        let axes = self.constant_i64("axes", &[2, 3]);
        Ok(self.node("Slice", &[&y, &starts, &ends, &axes], vec![], out))
    }

    /// Max over the time axis of `[1, c, t, f]`: a `MaxPool` over the whole (fixed) axis, `[1, c, 1, f]`, which a
    /// `Flatten` at axis 1 lays out as `ReduceMax` over axis 2 would be. tract runs this pool faster than its
    /// `ReduceMax`.
    fn max_over_time(&mut self, x: &str, t: usize, out: Option<&str>) -> String {
        if self.form == GraphForm::Plain {
            return self.node(
                "ReduceMax",
                &[x],
                vec![attr_ints("axes", &[2]), attr_int("keepdims", 0)],
                out,
            );
        }
        self.node(
            "MaxPool",
            &[x],
            vec![
                attr_ints("kernel_shape", &[t as i64, 1]),
                attr_ints("strides", &[1, 1]),
            ],
            out,
        )
    }

    /// `x @ W + bias` with `W` `[d_in, d_out]`.
    fn dense(
        &mut self,
        x: &str,
        w: Vec<f32>,
        d_in: usize,
        d_out: usize,
        bias: Option<Vec<f32>>,
    ) -> String {
        let wn = self.constant("w", &[d_in, d_out], w);
        let y = self.node("MatMul", &[x, &wn], vec![], None);
        match bias {
            Some(b) => {
                let bn = self.constant("b", &[d_out], b);
                self.node("Add", &[&y, &bn], vec![], None)
            }
            None => y,
        }
    }
}

fn conv_weight<const D: usize>(w: Tensor<D>) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
    let dims = w.dims().to_vec();
    Ok((values(w)?, dims))
}

/// The exported graph's inputs and output as a bundle's manifest names them: `log_mel` `[1, frames, n_mels]`,
/// `spectrum` `[1, spectrum_len]` and `embedding` `[1, dim]`.
pub fn signature(config: &ModelConfig) -> (Vec<InputSpec>, TensorSpec) {
    let inputs = vec![
        InputSpec {
            name: INPUT_LOG_MEL.into(),
            view: FeatureView::LogMel,
            shape: vec![1, config.frames, config.n_mels],
        },
        InputSpec {
            name: INPUT_SPECTRUM.into(),
            view: FeatureView::Spectrum,
            shape: vec![1, config.spectrum_len],
        },
    ];
    let output = TensorSpec {
        name: OUTPUT_EMBEDDING.into(),
        shape: vec![1, config.embedding_dim()],
    };
    (inputs, output)
}

/// Encodes the trained network as an ONNX model (bytes). The model must be in inference mode on a plain
/// (non-autodiff) device: `model.valid()`.
pub fn export_onnx(model: &Model, config: &ModelConfig, producer: &str) -> anyhow::Result<Vec<u8>> {
    export_onnx_as(model, config, producer, GraphForm::Tract)
}

/// [`export_onnx`] in the given form.
pub fn export_onnx_as(
    model: &Model,
    config: &ModelConfig,
    producer: &str,
    form: GraphForm,
) -> anyhow::Result<Vec<u8>> {
    config.validate()?;
    let mut g = Graph {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
        form,
    };
    let model = model.valid();

    // --- time–frequency branch ---
    let (a, b) = bn_affine(&model.mel_bn)?;
    let an = g.constant("mel_bn_a", &[config.n_mels], a);
    let bname = g.constant("mel_bn_b", &[config.n_mels], b);
    let x = g.node("Mul", &[INPUT_LOG_MEL, &an], vec![], None);
    let x = g.node("Add", &[&x, &bname], vec![], None);
    let shape = g.constant_i64("shape", &[1, 1, config.frames as i64, config.n_mels as i64]);
    let x = g.node("Reshape", &[&x, &shape], vec![], None);
    let (w, wd) = conv_weight(model.stem.weight.val())?;
    let x = g.stem_conv_bn(
        &x,
        w,
        &wd,
        &model.stem_bn,
        (2, 3),
        (config.frames, config.n_mels),
    )?;
    let x = g.node("Relu", &[&x], vec![], None);
    let mut x = g.node(
        "MaxPool",
        &[&x],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
        None,
    );
    for blk in &model.blocks {
        let s = blk.conv1.stride[0] as i64;
        let (w, wd) = conv_weight(blk.conv1.weight.val())?;
        let y = g.conv_bn(&x, w, &wd, &blk.bn1, &[s, s], &[1, 1, 1, 1])?;
        let y = g.node("Relu", &[&y], vec![], None);
        let (w, wd) = conv_weight(blk.conv2.weight.val())?;
        let y = g.conv_bn(&y, w, &wd, &blk.bn2, &[1, 1], &[1, 1, 1, 1])?;
        let sc = match &blk.shortcut {
            Some(sc) => {
                let (w, wd) = conv_weight(sc.conv.weight.val())?;
                g.conv_bn(&x, w, &wd, &sc.bn, &[s, s], &[0, 0, 0, 0])?
            }
            None => x.clone(),
        };
        let y = g.node("Add", &[&y, &sc], vec![], None);
        x = g.node("Relu", &[&y], vec![], None);
    }
    let x = g.max_over_time(&x, config.tf_output_hw().0, None);
    let x = g.node("Flatten", &[&x], vec![attr_int("axis", 1)], None);
    // BatchNorm (a, b) then the bias-free dense W [d_in, d_out]: (x·a + b) W = x (diag(a) W) + bᵀW.
    let (a, b) = bn_affine(&model.tf_flat_bn)?;
    let w = values(model.tf_emb.weight.val())?;
    let (d_in, d_out) = (a.len(), config.tf_embedding);
    anyhow::ensure!(
        w.len() == d_in * d_out,
        "time-frequency embedding layer has {} weights, expected {d_in}×{d_out}",
        w.len()
    );
    let wf: Vec<f32> = w
        .chunks(d_out)
        .zip(&a)
        .flat_map(|(row, &s)| row.iter().map(move |v| v * s))
        .collect();
    let bias: Vec<f32> = (0..d_out)
        .map(|j| (0..d_in).map(|i| b[i] * w[i * d_out + j]).sum())
        .collect();
    let tf = g.dense(&x, wf, d_in, d_out, Some(bias));

    // --- spectrum branch ---
    let shape = g.constant_i64("shape", &[1, 1, config.spectrum_len as i64]);
    let mut x = g.node("Reshape", &[INPUT_SPECTRUM, &shape], vec![], None);
    for (conv, bn) in model.spec_convs.iter().zip(&model.spec_bns) {
        let (w, wd) = conv_weight(conv.weight.val())?;
        let s = conv.stride as i64;
        let y = g.conv_bn(&x, w, &wd, bn, &[s], &[0, 0])?;
        x = g.node("Relu", &[&y], vec![], None);
    }
    let mut x = g.node("Flatten", &[&x], vec![attr_int("axis", 1)], None);
    for (dense, bn) in model.spec_dense.iter().zip(&model.spec_dense_bns) {
        let w = values(dense.weight.val())?;
        let (a, b) = bn_affine(bn)?;
        let d_out = a.len();
        let d_in = w.len() / d_out;
        // (x W)·a + b: scale the columns of W.
        let wf: Vec<f32> = w
            .chunks(d_out)
            .flat_map(|row| row.iter().zip(&a).map(|(v, s)| v * s).collect::<Vec<_>>())
            .collect();
        let y = g.dense(&x, wf, d_in, d_out, Some(b));
        x = g.node("Relu", &[&y], vec![], None);
    }
    let w = values(model.spec_emb.weight.val())?;
    let d_out = config.spec_embedding;
    let spec = g.dense(&x, w.clone(), w.len() / d_out, d_out, None);

    g.node(
        "Concat",
        &[&tf, &spec],
        vec![attr_int("axis", 1)],
        Some(OUTPUT_EMBEDDING),
    );

    let graph = pb::GraphProto {
        name: "sonitor-embedding".into(),
        node: g.nodes,
        initializer: g.inits,
        input: vec![
            value_info(INPUT_LOG_MEL, &[1, config.frames, config.n_mels]),
            value_info(INPUT_SPECTRUM, &[1, config.spectrum_len]),
        ],
        output: vec![value_info(OUTPUT_EMBEDDING, &[1, config.embedding_dim()])],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: producer.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// What [`upgrade_onnx`] changed in a graph exported by an earlier version, and the new graph.
#[derive(Debug)]
pub struct Upgraded {
    pub onnx: Vec<u8>,
    /// One line per rewritten node, e.g. `stem Conv_13: blocked 2×2 (3 → 12 channels, kernel 7 → 9, stride 2 → 4)`.
    pub changes: Vec<String>,
}

fn tensor_f32(t: &pb::TensorProto) -> anyhow::Result<Vec<f32>> {
    anyhow::ensure!(
        t.data_type == pb::tensor_proto::DataType::Float as i32,
        "initializer {} is not float",
        t.name
    );
    if !t.raw_data.is_empty() {
        anyhow::ensure!(
            t.raw_data.len().is_multiple_of(4),
            "initializer {} has a torn raw_data",
            t.name
        );
        Ok(t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    } else {
        Ok(t.float_data.clone())
    }
}

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// Rewrites a graph that [`export_onnx`] wrote before the stem was blocked and the max over time was a `MaxPool`
/// (both in this module's documentation) into the current form, for the network `config` describes. Nothing
/// else changes: the weights, the other nodes, the inputs and outputs. `None` when there is nothing to rewrite
/// (a current graph, or a stem of [`STEM_BLOCK_BELOW`] channels or more). The caller checks that the new graph
/// computes the same embedding ([`crate::upgrade`] does).
pub fn upgrade_onnx(bytes: &[u8], config: &ModelConfig) -> anyhow::Result<Option<Upgraded>> {
    let mut model = pb::ModelProto::decode(bytes)
        .map_err(|e| anyhow::anyhow!("decoding the ONNX graph: {e}"))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("the ONNX model has no graph"))?;
    let mut names: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    for n in &graph.node {
        names.insert(n.name.clone());
        names.extend(n.output.iter().cloned());
    }
    // Names for the new nodes that none of the old ones has.
    let mut g = Graph {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: graph.node.len() + graph.initializer.len() + 1_000_000,
        form: GraphForm::Tract,
    };
    let mut changes = Vec::new();
    let mut dropped_inits: Vec<String> = Vec::new();
    let mut replaced: Vec<(usize, Vec<pb::NodeProto>)> = Vec::new();
    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name);

    // The stem: the convolution whose weight has one input channel, `[c, 1, k, k]`.
    let stem = graph.node.iter().enumerate().find_map(|(i, n)| {
        let w = init(n.input.get(1)?)?;
        let is_stem = n.op_type == "Conv"
            && n.input.len() == 3
            && w.dims.len() == 4
            && w.dims[1] == 1
            && w.dims[2] == w.dims[3];
        is_stem.then_some((i, n, w))
    });
    if let Some((i, n, w)) = stem {
        let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
        let ints = |name: &str| attr(n, name).map(|a| a.ints.clone()).unwrap_or_default();
        let (strides, pads) = (ints("strides"), ints("pads"));
        let uniform =
            |v: &[i64], len: usize| v.len() == len && v.iter().all(|&x| x == v[0] && x >= 0);
        if dims[0] < STEM_BLOCK_BELOW && uniform(&strides, 2) && uniform(&pads, 4) {
            let bias = init(&n.input[2]).ok_or_else(|| {
                anyhow::anyhow!("the stem's bias {} is not an initializer", n.input[2])
            })?;
            let (weight, bias) = (tensor_f32(w)?, tensor_f32(bias)?);
            let (s, p) = (strides[0] as usize, pads[0] as usize);
            let before = g.nodes.len();
            g.blocked_stem(
                &n.input[0],
                &weight,
                &bias,
                &dims,
                (s, p),
                (config.frames, config.n_mels),
                Some(&n.output[0]),
            )?;
            replaced.push((i, g.nodes[before..].to_vec()));
            dropped_inits.extend([n.input[1].clone(), n.input[2].clone()]);
            let (kb, sb) = blocked_kernel(dims[2], s);
            let b = STEM_BLOCK;
            changes.push(format!(
                "stem {}: blocked {b}×{b} ({} → {} channels, kernel {} → {kb}, stride {s} → {sb})",
                n.name,
                dims[0],
                b * b * dims[0],
                dims[2],
            ));
        }
    }

    // The max over time: `ReduceMax` over axis 2 without kept dimensions, read only by a `Flatten` at axis 1.
    for (i, n) in graph.node.iter().enumerate() {
        let axes = attr(n, "axes").map(|a| a.ints.clone()).unwrap_or_default();
        let keepdims = attr(n, "keepdims").map_or(1, |a| a.i);
        if n.op_type != "ReduceMax" || n.input.len() != 1 || axes != [2] || keepdims != 0 {
            continue;
        }
        let readers: Vec<&pb::NodeProto> = graph
            .node
            .iter()
            .filter(|m| m.input.contains(&n.output[0]))
            .collect();
        let flat =
            |m: &&pb::NodeProto| m.op_type == "Flatten" && attr(m, "axis").map_or(1, |a| a.i) == 1;
        let is_output = graph.output.iter().any(|o| o.name == n.output[0]);
        if readers.len() != 1 || !readers.iter().all(flat) || is_output {
            continue;
        }
        let before = g.nodes.len();
        g.max_over_time(&n.input[0], config.tf_output_hw().0, Some(&n.output[0]));
        replaced.push((i, g.nodes[before..].to_vec()));
        changes.push(format!("max over time {}: ReduceMax → MaxPool", n.name));
    }
    if replaced.is_empty() {
        return Ok(None);
    }
    let replaced_outputs: std::collections::HashSet<&String> = replaced
        .iter()
        .flat_map(|(i, _)| graph.node[*i].output.iter())
        .collect();
    let new_names = g.nodes.iter().flat_map(|n| {
        // The outputs that replace old ones keep their names on purpose.
        std::iter::once(&n.name).chain(n.output.iter().filter(|o| !replaced_outputs.contains(o)))
    });
    for t in g.inits.iter().map(|t| &t.name).chain(new_names) {
        anyhow::ensure!(
            !names.contains(t),
            "the graph already has a node or tensor named {t}"
        );
    }
    let old = std::mem::take(&mut graph.node);
    for (i, n) in old.into_iter().enumerate() {
        match replaced.iter().find(|(j, _)| *j == i) {
            Some((_, new)) => graph.node.extend(new.iter().cloned()),
            None => graph.node.push(n),
        }
    }
    let still_read: std::collections::HashSet<&String> =
        graph.node.iter().flat_map(|n| n.input.iter()).collect();
    let unused: Vec<String> = dropped_inits
        .into_iter()
        .filter(|t| !still_read.contains(t))
        .collect();
    graph.initializer.retain(|t| !unused.contains(&t.name));
    graph.initializer.extend(g.inits);
    Ok(Some(Upgraded {
        onnx: model.encode_to_vec(),
        changes,
    }))
}
