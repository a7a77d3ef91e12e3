//! ONNX export of a trained [`Model`]: the `ModelProto` is built directly from the weights with tract-onnx's
//! protobuf types and encoded with prost (opset 13). Every BatchNorm is folded at export time:
//! - into the convolution or dense layer before it (`W' = W·a`, bias `b`, with `a = γ/√(σ²+ε)`,
//!   `b = β − μ·a`),
//! - the input BatchNorm per mel bin becomes one `Mul` + `Add` broadcast over the mel axis,
//! - the BatchNorm before the time–frequency embedding layer is folded into that (bias-free) layer, which thereby
//!   gets a constant bias term.
//!
//! The graph has fixed shapes, batch 1: inputs `log_mel` `[1, frames, n_mels]` and `spectrum`
//! `[1, spectrum_len]`, output `embedding` `[1, dim]` (not normalised). Parity with burn's forward pass is a test
//! (`tests/export_parity.rs`).

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use prost::Message;
use tract_onnx::pb;

use crate::model::{Model, ModelConfig};

pub const INPUT_LOG_MEL: &str = "log_mel";
pub const INPUT_SPECTRUM: &str = "spectrum";
pub const OUTPUT_EMBEDDING: &str = "embedding";
pub const OPSET: i64 = 13;

fn values<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading weights: {e:?}"))
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

struct Graph {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    n: usize,
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
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
        let (a, b) = bn_affine(bn)?;
        let per_out = weight.len() / wdims[0];
        let w: Vec<f32> = weight
            .chunks(per_out)
            .zip(&a)
            .flat_map(|(row, &s)| row.iter().map(move |v| v * s))
            .collect();
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

/// Encodes the trained network as an ONNX model (bytes). The model must be in inference mode on a plain
/// (non-autodiff) device: `model.valid()`.
pub fn export_onnx(model: &Model, config: &ModelConfig, producer: &str) -> anyhow::Result<Vec<u8>> {
    config.validate()?;
    let mut g = Graph {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
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
    let x = g.conv_bn(&x, w, &wd, &model.stem_bn, &[2, 2], &[3, 3, 3, 3])?;
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
    let x = g.node(
        "ReduceMax",
        &[&x],
        vec![attr_ints("axes", &[2]), attr_int("keepdims", 0)],
        None,
    );
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
