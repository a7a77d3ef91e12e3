//! A bundle can wrap an ONNX graph from another producer than our exporter: a small graph written by the Python
//! `onnx` package (other input names and order, symbolic batch axis, opset 17, Gemm/ReduceMean/Tanh) is accepted
//! by `Bundle::load`, run by tract through the same path `eval` and the daemon use, and gives numpy's output.
//!
//! Interpreter: `$SONITOR_PYTHON`, else the workspace's `.venv/bin/python`, else `python3` (needs `onnx`,
//! `numpy`: `scripts/setup-python`).

use sonitor_core::bundle::{Bundle, FeatureView, InputSpec, Provenance, TensorSpec};
use sonitor_core::features::FeatureParams;
use sonitor_train::eval::embedder_of;

#[path = "support/manifest.rs"]
mod manifest;
#[path = "../../sonitor-core/tests/support/reference.rs"]
mod reference;

#[test]
fn a_graph_from_the_onnx_package_loads_and_runs() {
    let p = FeatureParams {
        window_samples: 4096,
        window_hop_samples: 2048,
        n_mels: 32,
        ..FeatureParams::default()
    };
    let [frames, n_mels] = p.log_mel_shape();
    let spec_len = p.spectrum_len();
    let (d_mel, d_spec) = (5, 3);
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![dir.path().as_os_str().to_owned()];
    args.extend([frames, n_mels, spec_len, d_mel, d_spec].map(|v| v.to_string().into()));
    reference::run_reference("onnx_foreign_graph.py", args);
    let onnx = std::fs::read(dir.path().join("foreign.onnx")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("expected.json")).unwrap())
            .unwrap();
    let expected: Vec<f64> = expected["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let dim = d_mel + d_spec;
    let inputs = vec![
        InputSpec {
            name: "mel_in".into(),
            view: FeatureView::LogMel,
            shape: vec![1, frames, n_mels],
        },
        InputSpec {
            name: "spec_in".into(),
            view: FeatureView::Spectrum,
            shape: vec![1, spec_len],
        },
    ];
    let output = TensorSpec {
        name: "emb_out".into(),
        shape: vec![1, dim],
    };
    let manifest = manifest::loadable("foreign", &p, inputs, output, Provenance::default());
    let bdir = dir.path().join("bundle");
    Bundle::write(&bdir, &manifest, &onnx).unwrap();
    let bundle = Bundle::load(&bdir).unwrap();
    assert_eq!(bundle.graph.producer, "onnx-python-test");
    let embedder = embedder_of(&bundle).unwrap();
    let mel: Vec<f32> = (0..frames * n_mels)
        .map(|i| (0.1 * i as f64).sin() as f32)
        .collect();
    let spec: Vec<f32> = (0..spec_len)
        .map(|i| (0.01 * i as f64).cos() as f32)
        .collect();
    let got = embedder.embed_views(&mel, &spec).unwrap();
    assert_eq!(got.len(), dim);
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            (*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()),
            "tract {got:?} vs numpy {expected:?}"
        );
    }

    // The same graph under a manifest that names an input it does not have is refused, naming it.
    let mut wrong = manifest.clone();
    wrong.inputs[0].name = "log_mel".into();
    let e = Bundle::write(&dir.path().join("wrong"), &wrong, &onnx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no input 'log_mel'"), "{e}");
}
