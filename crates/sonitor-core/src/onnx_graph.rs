//! Just enough of the ONNX protobuf to read a model's signature: graph input and output names, element types and
//! shapes. The bundle loader uses it to check a manifest against its graph without depending on an inference
//! engine (the daemon and the trainer then load the graph with tract).
//!
//! Wire format: protobuf. Only length-delimited sub-messages along ModelProto.graph → GraphProto.{input,
//! output, initializer} → ValueInfoProto.{name, type} → TypeProto.tensor_type → {elem_type, shape.dim} are
//! decoded; everything else is skipped by its wire type.

use serde::{Deserialize, Serialize};

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphTensor {
    pub name: String,
    /// ONNX `TensorProto.DataType` (1 = float32).
    pub elem_type: i32,
    /// `None` when the graph gives no shape.
    pub dims: Option<Vec<Dim>>,
}

/// The inputs (initializers excluded) and outputs of an ONNX graph.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GraphSignature {
    pub inputs: Vec<GraphTensor>,
    pub outputs: Vec<GraphTensor>,
    pub producer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid ONNX model: {0}")]
pub struct OnnxParseError(pub String);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, OnnxParseError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| OnnxParseError("truncated varint".into()))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(OnnxParseError("varint too long".into()))
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, OnnxParseError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if self.pos + n > self.buf.len() {
                    return Err(OnnxParseError("truncated fixed-width field".into()));
                }
                self.pos += n;
                Value::Fixed
            }
            2 => {
                let len = self.varint()? as usize;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|&e| e <= self.buf.len())
                    .ok_or_else(|| {
                        OnnxParseError(format!("field {field} runs past the end of its message"))
                    })?;
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Value::Bytes(b)
            }
            w => {
                return Err(OnnxParseError(format!(
                    "unsupported wire type {w} in field {field}"
                )))
            }
        };
        Ok(Some((field, value)))
    }
}

fn string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_value_info(buf: &[u8]) -> Result<GraphTensor, OnnxParseError> {
    let mut t = GraphTensor {
        name: String::new(),
        elem_type: 0,
        dims: None,
    };
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Value::Bytes(b)) => t.name = string(b),
            (2, Value::Bytes(type_proto)) => {
                let mut tr = Reader::new(type_proto);
                while let Some((f, v)) = tr.next()? {
                    if let (1, Value::Bytes(tensor)) = (f, v) {
                        let mut rr = Reader::new(tensor);
                        while let Some((f, v)) = rr.next()? {
                            match (f, v) {
                                (1, Value::Varint(e)) => t.elem_type = e as i32,
                                (2, Value::Bytes(shape)) => t.dims = Some(parse_shape(shape)?),
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

fn parse_shape(buf: &[u8]) -> Result<Vec<Dim>, OnnxParseError> {
    let mut dims = Vec::new();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1, Value::Bytes(dim)) = (f, v) {
            let mut d = Dim::Unknown;
            let mut dr = Reader::new(dim);
            while let Some((f, v)) = dr.next()? {
                match (f, v) {
                    (1, Value::Varint(x)) => d = Dim::Fixed(x as i64),
                    (2, Value::Bytes(s)) => d = Dim::Symbolic(string(s)),
                    _ => {}
                }
            }
            dims.push(d);
        }
    }
    Ok(dims)
}

fn initializer_name(buf: &[u8]) -> Result<Option<String>, OnnxParseError> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (8, Value::Bytes(b)) = (f, v) {
            return Ok(Some(string(b)));
        }
    }
    Ok(None)
}

/// Reads the signature of a serialised ONNX `ModelProto`.
pub fn read_signature(model: &[u8]) -> Result<GraphSignature, OnnxParseError> {
    let mut sig = GraphSignature::default();
    let mut graph = None;
    let mut r = Reader::new(model);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (2, Value::Bytes(b)) => sig.producer = string(b),
            (7, Value::Bytes(b)) => graph = Some(b),
            _ => {}
        }
    }
    let graph = graph.ok_or_else(|| OnnxParseError("no graph in the model".into()))?;
    let mut initializers = std::collections::HashSet::new();
    let mut inputs = Vec::new();
    let mut r = Reader::new(graph);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (5, Value::Bytes(b)) => {
                if let Some(n) = initializer_name(b)? {
                    initializers.insert(n);
                }
            }
            (11, Value::Bytes(b)) => inputs.push(parse_value_info(b)?),
            (12, Value::Bytes(b)) => sig.outputs.push(parse_value_info(b)?),
            _ => {}
        }
    }
    sig.inputs = inputs
        .into_iter()
        .filter(|t| !initializers.contains(&t.name))
        .collect();
    if sig.outputs.is_empty() {
        return Err(OnnxParseError("the graph has no outputs".into()));
    }
    Ok(sig)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn value_info(name: &str, dims: &[Dim]) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in dims {
            let mut dim = Vec::new();
            match d {
                Dim::Fixed(v) => {
                    varint(1 << 3, &mut dim);
                    varint(*v as u64, &mut dim);
                }
                Dim::Symbolic(s) => field_bytes(2, s.as_bytes(), &mut dim),
                Dim::Unknown => {}
            }
            field_bytes(1, &dim, &mut shape);
        }
        let mut tensor = Vec::new();
        varint(1 << 3, &mut tensor);
        varint(1, &mut tensor);
        field_bytes(2, &shape, &mut tensor);
        let mut ty = Vec::new();
        field_bytes(1, &tensor, &mut ty);
        let mut vi = Vec::new();
        field_bytes(1, name.as_bytes(), &mut vi);
        field_bytes(2, &ty, &mut vi);
        vi
    }

    /// A hand-encoded ModelProto with the given inputs and outputs (and one initializer listed as an input).
    pub(crate) fn model(inputs: &[(&str, Vec<Dim>)], outputs: &[(&str, Vec<Dim>)]) -> Vec<u8> {
        let mut graph = Vec::new();
        let mut init = Vec::new();
        field_bytes(8, b"weight", &mut init);
        field_bytes(5, &init, &mut graph);
        for (n, d) in inputs {
            field_bytes(11, &value_info(n, d), &mut graph);
        }
        field_bytes(11, &value_info("weight", &[Dim::Fixed(3)]), &mut graph);
        for (n, d) in outputs {
            field_bytes(12, &value_info(n, d), &mut graph);
        }
        let mut m = Vec::new();
        varint(1 << 3, &mut m);
        varint(8, &mut m);
        field_bytes(2, b"test-producer", &mut m);
        field_bytes(7, &graph, &mut m);
        m
    }

    #[test]
    fn reads_names_and_shapes_skipping_initializers() {
        let m = model(
            &[(
                "log_mel",
                vec![
                    Dim::Symbolic("batch".into()),
                    Dim::Fixed(61),
                    Dim::Fixed(128),
                ],
            )],
            &[("embedding", vec![Dim::Fixed(1), Dim::Fixed(256)])],
        );
        let s = read_signature(&m).unwrap();
        assert_eq!(s.producer, "test-producer");
        assert_eq!(s.inputs.len(), 1);
        assert_eq!(s.inputs[0].name, "log_mel");
        assert_eq!(s.inputs[0].elem_type, 1);
        assert_eq!(
            s.inputs[0].dims,
            Some(vec![
                Dim::Symbolic("batch".into()),
                Dim::Fixed(61),
                Dim::Fixed(128)
            ])
        );
        assert_eq!(
            s.outputs[0].dims,
            Some(vec![Dim::Fixed(1), Dim::Fixed(256)])
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_signature(b"").is_err());
        assert!(read_signature(&[0xff; 16]).is_err());
        let m = model(&[("x", vec![Dim::Fixed(1)])], &[("y", vec![Dim::Fixed(1)])]);
        for cut in [1, m.len() / 2, m.len() - 1] {
            assert!(read_signature(&m[..cut]).is_err(), "cut at {cut}");
        }
    }
}
