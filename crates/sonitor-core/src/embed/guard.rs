//! What tract assumes of a graph without checking it. A convolution with a stride of 0 divides by zero, one whose
//! `strides` list is a value short indexes past it, a node that lost an input indexes an empty list: tract panics
//! on such a graph, and a padding of 2^40 makes it loop over as many positions (hours, at the load). The checksum
//! of a bundle cannot catch these: whoever edits or converts a graph writes its checksum too.
//!
//! So [`check_geometry`] refuses, before tract sees the graph, the convolution and pooling geometries that cannot
//! be meant, and [`catching`] turns any panic left in tract (loading a graph, or running it on a window: an index
//! computed from the audio, as a `Gather` can take, is only checked by slicing) into an error. A process-wide
//! panic hook (the daemon's, which ends the process on a panic) asks [`panic_is_handled`] first.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tract_onnx::pb;

use super::EmbedError;

thread_local! {
    static IN_TRACT: Cell<bool> = const { Cell::new(false) };
}

/// True on a thread inside tract's loading or running of a graph, whose panics the embedding's functions return
/// as [`EmbedError::Panicked`]: a panic hook should let it pass, not treat it as a crash.
pub fn panic_is_handled() -> bool {
    IN_TRACT.with(Cell::get)
}

/// Wraps the process's panic hook so that the panics [`panic_is_handled`] names print nothing (the error that
/// reports them says what they said). For the command-line tools; the daemon's own hook asks the same question.
pub fn quiet_handled_panics() {
    let inner = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !panic_is_handled() {
            inner(info)
        }
    }));
}

/// Runs `f`, tract's loading or running of a graph; a panic in it becomes [`EmbedError::Panicked`] with its
/// message. Whatever `f` mutates may be left half-done by such a panic: the caller must not reuse it.
pub(super) fn catching<T>(f: impl FnOnce() -> Result<T, EmbedError>) -> Result<T, EmbedError> {
    let was = IN_TRACT.with(|l| l.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    IN_TRACT.with(|l| l.set(was));
    outcome.unwrap_or_else(|payload| {
        let message = crate::panic_message(&*payload).unwrap_or("no message");
        Err(EmbedError::Panicked(message.to_string()))
    })
}

/// The operators whose geometry attributes (`kernel_shape`, `strides`, `dilations`, `pads`) tract computes with.
const WINDOWED: [&str; 7] = [
    "Conv",
    "ConvTranspose",
    "ConvInteger",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "QLinearConv",
];

/// More axes than a tensor of an embedding graph has (four or five in practice). tract turns an axis into a
/// `usize` with `as`: on a 64-bit CPU an axis of 2^40 indexes past the shape (a panic), on a 32-bit one (armv7, the
/// Raspberry Pi OS) it wraps to 0 and the graph silently computes something else; refused before either.
pub(super) const MAX_RANK: i64 = 64;

/// Refuses a graph whose convolutions or poolings have a geometry no model means: a kernel, stride or dilation
/// below 1 or longer than the longest axis of the inputs (`longest` from the manifest's shapes, or a longer one
/// the graph declares); lists of these of different lengths; pads not two per axis; a pad below 0 or longer than
/// its kernel's extent (`(k − 1)·d + 1`, where "same" padding is at most `k − 1`; the longest input axis where the
/// kernel is not known); a `group` below 1; a `DepthToSpace` or `SpaceToDepth` block size below 1 or above the
/// longest axis; and, on any operator, an `axis` or `axes` attribute beyond [`MAX_RANK`] either way. Subgraphs
/// (of `If`, `Loop`) are left to tract.
pub(super) fn check_geometry(model: &pb::ModelProto, longest: usize) -> Result<(), EmbedError> {
    let Some(graph) = &model.graph else {
        return Ok(()); // tract names it
    };
    // The manifest's shapes, and the graph's own where it fixes them (a caller may give fewer inputs than it has).
    let declared = graph
        .input
        .iter()
        .filter_map(|i| {
            let pb::type_proto::Value::TensorType(t) = i.r#type.as_ref()?.value.as_ref()?;
            t.shape.as_ref()
        })
        .flat_map(|shape| &shape.dim)
        .filter_map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        });
    let longest = declared
        .chain([i64::try_from(longest).unwrap_or(i64::MAX)])
        .max()
        .unwrap_or(1);
    for node in &graph.node {
        let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
        let ints = |name: &str| attribute(name).map(|a| a.ints.as_slice());
        let bad = |reason: String| EmbedError::Geometry {
            node: node.name.clone(),
            op: node.op_type.clone(),
            reason,
        };
        let axes = attribute("axis")
            .map(|a| std::slice::from_ref(&a.i))
            .into_iter()
            .chain(ints("axes"));
        if let Some(a) = axes
            .flatten()
            .find(|a| !(-MAX_RANK..=MAX_RANK).contains(*a))
        {
            return Err(bad(format!(
                "axis {a}: no tensor has that many axes (at most {MAX_RANK} either way here)"
            )));
        }
        if matches!(node.op_type.as_str(), "DepthToSpace" | "SpaceToDepth") {
            if let Some(b) = attribute("blocksize").map(|a| a.i) {
                if !(1..=longest).contains(&b) {
                    return Err(bad(format!("blocksize {b} is not 1 to {longest}")));
                }
            }
            continue;
        }
        if !WINDOWED.contains(&node.op_type.as_str()) {
            continue;
        }
        // The kernel: its attribute, or a convolution's weights (`[out, in / group, k1, k2, …]`).
        let kernel = ints("kernel_shape").or_else(|| {
            let w = node
                .input
                .get(1)
                .filter(|_| node.op_type.contains("Conv"))?;
            let t = graph.initializer.iter().find(|t| &t.name == w)?;
            t.dims.get(2..).filter(|k| !k.is_empty())
        });
        let dilations = ints("dilations");
        let mut rank = None;
        for (name, values) in [
            ("kernel_shape", kernel),
            ("strides", ints("strides")),
            ("dilations", dilations),
        ] {
            let Some(values) = values else { continue };
            if values.iter().any(|v| !(1..=longest).contains(v)) {
                return Err(bad(format!(
                    "{name} {values:?}: each must be 1 to {longest} (the longest input axis)"
                )));
            }
            match rank {
                Some(n) if n != values.len() => {
                    return Err(bad(format!(
                    "{name} {values:?} has {} values where the other geometry attributes have {n}",
                    values.len()
                )))
                }
                _ => rank = Some(values.len()),
            }
        }
        if let Some(pads) = ints("pads") {
            if rank.map_or(pads.len() % 2 != 0, |n| pads.len() != 2 * n) {
                return Err(bad(format!(
                    "pads {pads:?}: {} values, not a start and an end for each spatial axis",
                    pads.len()
                )));
            }
            let axes = pads.len() / 2;
            for (i, &p) in pads.iter().enumerate() {
                let axis = i % axes.max(1);
                let extent = kernel.and_then(|k| k.get(axis)).map(|&k| {
                    let d = dilations.and_then(|d| d.get(axis)).copied().unwrap_or(1);
                    (k - 1).saturating_mul(d).saturating_add(1)
                });
                let limit = extent.unwrap_or(longest);
                if !(0..=limit).contains(&p) {
                    return Err(bad(format!(
                        "pads {pads:?}: each must be 0 to {limit} ({})",
                        if extent.is_some() {
                            "the kernel's extent on that axis"
                        } else {
                            "the longest input axis"
                        }
                    )));
                }
            }
        }
        if let Some(g) = attribute("group").map(|a| a.i) {
            if g < 1 {
                return Err(bad(format!("group {g} is below 1")));
            }
        }
    }
    Ok(())
}
