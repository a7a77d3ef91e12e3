//! The shipped bundle changed in one place at a time, as a hand edit or a half-converted export would change it.
//!
//! Graphs that are valid protobuf but wrong ONNX (one attribute, input, operator or shape changed): the bundle's
//! checksum cannot catch these (a user who edits a graph writes its checksum too), so the loader and tract see
//! them. Manifests with one value changed or one key removed. Each must be refused with an error, or load and
//! give finite numbers; none may panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use prost::Message;
use sonitor_core::bundle::{Bundle, FeatureView};
use sonitor_core::embed::{quiet_handled_panics, EmbeddingGraph};
use sonitor_core::onnx_graph::read_signature;
use tract_onnx::pb;

/// models/default, the shipped bundle.
fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default")
}

/// A value no geometry means: as a padding, tract would loop over this many positions.
const HUGE: i64 = 1 << 40;

/// One change to the graph: a description and the changed model.
type Mutant = (String, pb::ModelProto);

fn with(model: &pb::ModelProto, what: String, edit: impl FnOnce(&mut pb::GraphProto)) -> Mutant {
    let mut m = model.clone();
    edit(m.graph.as_mut().unwrap());
    (what, m)
}

/// Every node: each integer of each attribute set to values a converter gets wrong (0, −1, a huge one), each
/// attribute dropped, each input dropped or replaced by a tensor of another shape, the operator replaced; each
/// initializer's first dimension changed; each graph input's dimensions changed.
fn mutants(model: &pb::ModelProto) -> Vec<Mutant> {
    let g = model.graph.as_ref().unwrap();
    let first_input = g.input[0].name.clone();
    let mut out = Vec::new();
    for (ni, node) in g.node.iter().enumerate() {
        let at = format!("node {ni} ({} '{}')", node.op_type, node.name);
        for (ai, a) in node.attribute.iter().enumerate() {
            for (ii, _) in a.ints.iter().enumerate() {
                for v in [0i64, -1, HUGE] {
                    out.push(with(model, format!("{at}: {}[{ii}] = {v}", a.name), |g| {
                        g.node[ni].attribute[ai].ints[ii] = v
                    }));
                }
            }
            if !a.ints.is_empty() {
                out.push(with(model, format!("{at}: {} one short", a.name), |g| {
                    g.node[ni].attribute[ai].ints.pop();
                }));
            }
            if a.r#type == pb::attribute_proto::AttributeType::Int as i32 {
                for v in [0i64, -1, HUGE] {
                    out.push(with(model, format!("{at}: {} = {v}", a.name), |g| {
                        g.node[ni].attribute[ai].i = v
                    }));
                }
            }
            out.push(with(model, format!("{at}: {} dropped", a.name), |g| {
                g.node[ni].attribute.remove(ai);
            }));
        }
        for ii in 0..node.input.len() {
            out.push(with(model, format!("{at}: input {ii} dropped"), |g| {
                g.node[ni].input.remove(ii);
            }));
            out.push(with(
                model,
                format!("{at}: input {ii} is '{first_input}'"),
                |g| g.node[ni].input[ii] = first_input.clone(),
            ));
        }
        let other = if node.op_type == "Relu" {
            "Conv"
        } else {
            "Relu"
        };
        out.push(with(model, format!("{at}: op {other}"), |g| {
            g.node[ni].op_type = other.into()
        }));
    }
    for (ti, t) in g.initializer.iter().enumerate() {
        if !t.dims.is_empty() {
            out.push(with(
                model,
                format!("initializer {ti} '{}': first dim + 1", t.name),
                |g| g.initializer[ti].dims[0] += 1,
            ));
            out.push(with(
                model,
                format!("initializer {ti} '{}': rank one less", t.name),
                |g| {
                    g.initializer[ti].dims.pop();
                },
            ));
        }
    }
    for (ii, input) in g.input.iter().enumerate() {
        for v in [0i64, 1, 7] {
            out.push(with(
                model,
                format!("graph input '{}': every dim {v}", input.name),
                |g| {
                    if let Some(pb::type_proto::Value::TensorType(t)) =
                        g.input[ii].r#type.as_mut().and_then(|t| t.value.as_mut())
                    {
                        for d in &mut t.shape.as_mut().unwrap().dim {
                            d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(v));
                        }
                    }
                },
            ));
        }
    }
    out
}

#[test]
fn no_mutated_graph_panics_the_loader_or_tract() {
    let b = Bundle::load(&shipped()).unwrap();
    let m = &b.manifest;
    let model = pb::ModelProto::decode(b.onnx_bytes()).unwrap();
    let view = |v: FeatureView| {
        let i = m.inputs.iter().find(|i| i.view == v).unwrap();
        vec![0.1f32; i.shape.iter().product()]
    };
    let (log_mel, spectrum) = (view(FeatureView::LogMel), view(FeatureView::Spectrum));
    let all = mutants(&model);
    quiet_handled_panics();
    let mut panics = Vec::new();
    let mut refusals = Vec::new();
    let mut ran = 0;
    for (what, mutant) in &all {
        let bytes = mutant.encode_to_vec();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            read_signature(&bytes).map_err(|e| e.to_string())?;
            let g = EmbeddingGraph::from_bytes(&bytes, &m.inputs, &m.output)
                .map_err(|e| e.to_string())?;
            g.embed_views(&log_mel, &spectrum)
                .map_err(|e| e.to_string())
        }));
        match outcome {
            Err(p) => {
                let msg = sonitor_core::panic_message(&*p).unwrap_or_default();
                panics.push(format!("{what}: {msg}"));
            }
            Ok(Err(e)) => refusals.push(format!("{what}: {e}")),
            Ok(Ok(e)) => {
                assert!(e.iter().all(|v| v.is_finite()), "{what}");
                ran += 1;
            }
        }
    }
    let caught = refusals
        .iter()
        .filter(|r| r.contains("tract stopped on the graph"))
        .count();
    let geometry = refusals
        .iter()
        .filter(|r| r.contains("the graph is malformed (a converter's bug or an edit)"))
        .count();
    eprintln!(
        "{} mutants: {} refused ({geometry} before tract by the geometry check, {caught} as tract's panics), \
         {ran} ran, {} panicked",
        all.len(),
        refusals.len(),
        panics.len()
    );
    assert!(panics.is_empty(), "{}", panics.join("\n"));
    assert!(!sonitor_core::embed::panic_is_handled());
    // Both guards are met: the geometry refused before tract (the padding tract would loop over for hours), and
    // a panic of tract's (a node that lost its input) turned into a refusal.
    let said = |mutant: &str, words: &str| {
        let r = refusals
            .iter()
            .find(|r| r.starts_with(mutant))
            .unwrap_or_else(|| panic!("'{mutant}' was not refused"));
        assert!(r.contains(words), "{r}");
    };
    said(
        "node 3 (Conv 'Conv_1000104'): pads[0] = 1099511627776:",
        "node 'Conv_1000104' (Conv): pads [1099511627776, 3, 5, 2]: each must be 0 to 9 (the kernel's extent \
         on that axis)",
    );
    said(
        "node 7 (MaxPool 'MaxPool_17'): strides[0] = 0:",
        "strides [0, 2]: each must be 1 to",
    );
    said(
        "node 7 (MaxPool 'MaxPool_17'): input 0 dropped:",
        "tract stopped on the graph (",
    );
    // An axis tract would index past the shape with on a 64-bit CPU, and wrap to 0 with on a 32-bit one.
    said(
        "node 32 (Flatten 'Flatten_89'): axis = 1099511627776:",
        "node 'Flatten_89' (Flatten): axis 1099511627776: no tensor has that many axes",
    );
    assert!(ran > 0, "some changes leave a graph that runs");
}

/// A place in a JSON document: keys and indices from the root.
type JsonPath = Vec<serde_json::Value>;

fn at<'a>(
    root: &'a mut serde_json::Value,
    path: &[serde_json::Value],
) -> &'a mut serde_json::Value {
    path.iter().fold(root, |v, step| match step {
        serde_json::Value::String(k) => &mut v[k.as_str()],
        serde_json::Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Every scalar's path (of each list, the first two items: a centroid stays a list of numbers) and every key's.
fn leaves(v: &serde_json::Value, path: &mut JsonPath, out: &mut Vec<(JsonPath, bool)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                path.push(k.as_str().into());
                out.push((path.clone(), true));
                leaves(child, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate().take(2) {
                path.push(i.into());
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), false)),
    }
}

#[test]
fn no_mutated_manifest_panics_the_loader_the_features_or_the_score() {
    use sonitor_core::features::FeatureExtractor;
    use sonitor_core::score::{min_cosine_distance, normalize};

    let models_default = shipped();
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models_default.join("manifest.json")).unwrap())
            .unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        models_default.join("model.onnx"),
        d.path().join("model.onnx"),
    )
    .unwrap();
    let mut places = Vec::new();
    leaves(&root, &mut Vec::new(), &mut places);
    let mut mutants: Vec<(String, serde_json::Value)> = Vec::new();
    for (path, is_key) in &places {
        let name = serde_json::Value::from(path.clone()).to_string();
        if *is_key {
            let mut m = root.clone();
            let (last, parent) = path.split_last().unwrap();
            at(&mut m, parent)
                .as_object_mut()
                .unwrap()
                .remove(last.as_str().unwrap());
            mutants.push((format!("{name} removed"), m));
        }
        let current = at(&mut root.clone(), path).clone();
        let wrong: Vec<serde_json::Value> = match current {
            serde_json::Value::Number(_) => vec![0.into(), (-1).into(), 1e30.into(), 0.5.into()],
            serde_json::Value::String(_) => vec!["".into(), "x".into()],
            serde_json::Value::Bool(b) => vec![(!b).into()],
            _ => vec![],
        };
        for w in wrong {
            let mut m = root.clone();
            *at(&mut m, path) = w.clone();
            mutants.push((format!("{name} = {w}"), m));
        }
    }
    quiet_handled_panics();
    let (mut refused, mut scored) = (0, 0);
    let mut panics = Vec::new();
    for (what, m) in &mutants {
        std::fs::write(d.path().join("manifest.json"), m.to_string()).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<f32>, String> {
            let b = Bundle::load(d.path()).map_err(|e| e.to_string())?;
            let p = b.manifest.features.clone();
            let tone: Vec<f32> = (0..p.window_samples)
                .map(|i| 0.3 * (i as f32 * 0.1).sin())
                .collect();
            let f = FeatureExtractor::new(p)
                .and_then(|mut x| x.extract(&tone))
                .map_err(|e| e.to_string())?;
            let mut e = EmbeddingGraph::of_bundle(&b)
                .and_then(|g| g.embed(&f))
                .map_err(|e| e.to_string())?;
            normalize(&mut e);
            Ok(b.manifest
                .sections
                .iter()
                .map(|s| min_cosine_distance(&e, &s.centroids))
                .collect())
        }));
        match outcome {
            Err(_) => panics.push(what.clone()),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(scores)) => {
                assert!(scores.iter().all(|s| s.is_finite()), "{what}: {scores:?}");
                scored += 1;
            }
        }
    }
    eprintln!(
        "{} manifests: {refused} refused, {scored} loaded and scored, {} panicked",
        mutants.len(),
        panics.len()
    );
    assert!(panics.is_empty(), "{}", panics.join("\n"));
    assert!(refused > 0 && scored > 0);
}
