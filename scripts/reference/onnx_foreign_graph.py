#!/usr/bin/env python3
"""Writes a small embedding graph with the `onnx` package (a different producer than sonitor-train's exporter)
and its expected output, for the bundle loader test (crates/sonitor-train/tests/foreign_onnx.rs).

The graph deliberately differs from what our exporter writes: other input names, the spectrum input first, a
symbolic batch axis, opset 17, Gemm / ReduceMean / Tanh nodes, float_data instead of raw_data initialisers.

usage: onnx_foreign_graph.py OUT_DIR FRAMES N_MELS SPECTRUM_LEN DIM_MEL DIM_SPEC
writes OUT_DIR/foreign.onnx and OUT_DIR/expected.json ({"embedding": [...]}) for the inputs
mel[t, m] = sin(0.1 (t·N_MELS + m)), spec[i] = cos(0.01 i).
"""
import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    out = sys.argv[1]
    frames, n_mels, spec_len, d_mel, d_spec = map(int, sys.argv[2:7])
    rng = np.random.default_rng(7)
    w_mel = (rng.standard_normal((n_mels, d_mel)) / np.sqrt(n_mels)).astype(np.float32)
    b_mel = (rng.standard_normal(d_mel) * 0.1).astype(np.float32)
    # Cast after scaling: a float32 array divided by a NumPy float64 scalar is float64 under NumPy 2's rules.
    w_spec = (rng.standard_normal((spec_len, d_spec)) / np.sqrt(spec_len)).astype(np.float32)

    inits = [
        helper.make_tensor("W_mel", TensorProto.FLOAT, w_mel.shape, w_mel.flatten().tolist()),
        helper.make_tensor("B_mel", TensorProto.FLOAT, b_mel.shape, b_mel.tolist()),
        numpy_helper.from_array(w_spec, "W_spec"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes_time"),
    ]
    nodes = [
        # Mean over time: [batch, frames, n_mels] -> [batch, n_mels] (opset 18 takes axes as an input; 17 as attr).
        helper.make_node("ReduceMean", ["mel_in"], ["mel_mean"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["mel_mean", "W_mel", "B_mel"], ["mel_emb_lin"]),
        helper.make_node("Tanh", ["mel_emb_lin"], ["mel_emb"]),
        helper.make_node("MatMul", ["spec_in", "W_spec"], ["spec_emb"]),
        helper.make_node("Concat", ["mel_emb", "spec_emb"], ["emb_out"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign-embedding",
        [
            helper.make_tensor_value_info("spec_in", TensorProto.FLOAT, [1, spec_len]),
            helper.make_tensor_value_info("mel_in", TensorProto.FLOAT, ["batch", frames, n_mels]),
        ],
        [helper.make_tensor_value_info("emb_out", TensorProto.FLOAT, [1, d_mel + d_spec])],
        initializer=[i for i in inits if i.name != "axes_time"],
    )
    model = helper.make_model(graph, producer_name="onnx-python-test", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, f"{out}/foreign.onnx")

    mel = np.sin(0.1 * np.arange(frames * n_mels, dtype=np.float64)).reshape(1, frames, n_mels).astype(np.float32)
    spec = np.cos(0.01 * np.arange(spec_len, dtype=np.float64)).reshape(1, spec_len).astype(np.float32)
    e_mel = np.tanh(mel.mean(axis=1) @ w_mel + b_mel)
    e_spec = spec @ w_spec
    emb = np.concatenate([e_mel, e_spec], axis=1)[0]
    with open(f"{out}/expected.json", "w") as f:
        json.dump({"embedding": [float(v) for v in emb]}, f)


if __name__ == "__main__":
    main()
