//! Test-only protobuf helpers: read the ONNX conformance tests' `.pb` values (TensorProto,
//! SequenceProto, OptionalProto) and build tiny models by hand, without the IR's importer.
//! Field numbers are those of onnx.proto.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Value, ValueType};
use crate::dtype::{DataType, ElementSize};
use crate::tensor::Tensor;

/// The conformance node tests shipped in the onnx wheel.
pub fn node_tests_dir() -> PathBuf {
    kiln_fixtures::conformance_dir().unwrap_or_else(|e| panic!("{e}"))
}

/// One protobuf field: number and payload.
enum Field<'a> {
    Varint(u64),
    Fixed64(&'a [u8]),
    Bytes(&'a [u8]),
    Fixed32(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn fields(buf: &[u8]) -> Vec<(u32, Field<'_>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        let (num, wire) = ((key >> 3) as u32, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(buf, &mut pos)),
            1 => {
                pos += 8;
                Field::Fixed64(&buf[pos - 8..pos])
            }
            2 => {
                let len = varint(buf, &mut pos) as usize;
                pos += len;
                Field::Bytes(&buf[pos - len..pos])
            }
            5 => {
                pos += 4;
                Field::Fixed32(&buf[pos - 4..pos])
            }
            w => panic!("unsupported wire type {w}"),
        };
        out.push((num, f));
    }
    out
}

/// Repeated varints, packed or not.
fn push_varints(f: &Field<'_>, out: &mut Vec<u64>) {
    match f {
        Field::Varint(v) => out.push(*v),
        Field::Bytes(b) => {
            let mut pos = 0;
            while pos < b.len() {
                out.push(varint(b, &mut pos));
            }
        }
        _ => panic!("expected varints"),
    }
}

/// Decode a TensorProto (raw_data or the typed fields).
pub fn decode_tensor(buf: &[u8]) -> Tensor {
    let mut dims = Vec::new();
    let mut dtype = 0u64;
    let mut raw: Option<&[u8]> = None;
    let mut ints = Vec::new();
    let mut fixed = Vec::new();
    let mut strings = Vec::new();
    for (num, f) in fields(buf) {
        match num {
            1 => push_varints(&f, &mut dims),
            2 => {
                if let Field::Varint(v) = f {
                    dtype = v
                }
            }
            4 | 10 => match f {
                Field::Bytes(b) => fixed.extend_from_slice(b),
                Field::Fixed32(b) | Field::Fixed64(b) => fixed.extend_from_slice(b),
                Field::Varint(_) => panic!("float as varint"),
            },
            5 | 7 | 11 => push_varints(&f, &mut ints),
            6 => {
                if let Field::Bytes(b) = f {
                    strings.push(Bytes::copy_from_slice(b))
                }
            }
            9 => {
                if let Field::Bytes(b) = f {
                    raw = Some(b)
                }
            }
            _ => {}
        }
    }
    let dtype = DataType::from_onnx(dtype as i32).expect("known dtype");
    let dims: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
    if dtype == DataType::String {
        return Tensor::from_strings(dims, strings).unwrap();
    }
    let bytes = if let Some(raw) = raw {
        raw.to_vec()
    } else if !fixed.is_empty() {
        fixed
    } else {
        // Sub-byte types keep one packed byte per int32 entry.
        let size = match dtype.element_size() {
            ElementSize::Bytes(n) => n,
            _ => 1,
        };
        ints.iter().flat_map(|&v| v.to_le_bytes()[..size].to_vec()).collect()
    };
    Tensor::new(dtype, dims, Bytes::from(bytes)).unwrap()
}

/// Decode a `.pb` value of the declared type.
pub fn decode_value(buf: &[u8], ty: &ValueType) -> Value {
    match ty {
        ValueType::Tensor { .. } | ValueType::Unknown => Value::Tensor(decode_tensor(buf)),
        ValueType::Sequence(elem) => Value::Sequence(
            fields(buf)
                .into_iter()
                .filter_map(|(num, f)| match (num, f) {
                    (3, Field::Bytes(b)) => Some(Value::Tensor(decode_tensor(b))),
                    (5, Field::Bytes(b)) => Some(decode_value(b, elem)),
                    _ => None,
                })
                .collect(),
        ),
        ValueType::Optional(inner) => {
            let value = fields(buf).into_iter().find_map(|(num, f)| match (num, f) {
                (3, Field::Bytes(b)) => Some(Value::Tensor(decode_tensor(b))),
                (5, Field::Bytes(b)) => {
                    let elem = match inner.as_ref() {
                        ValueType::Sequence(e) => e.as_ref().clone(),
                        _ => ValueType::Unknown,
                    };
                    Some(decode_value(b, &ValueType::Sequence(Box::new(elem))))
                }
                _ => None,
            });
            Value::Optional(value.map(Box::new))
        }
        ValueType::Map { .. } => panic!("maps are not used in these tests"),
    }
}

/// A conformance case: the model bytes and (inputs, expected outputs) of its first data set,
/// decoded after the declared types of a loaded session.
pub fn read_case(name: &str) -> (Vec<u8>, PathBuf) {
    let dir = node_tests_dir().join(name);
    let model = std::fs::read(dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, dir.join("test_data_set_0"))
}

/// Read `prefix_<i>.pb` files in order, typed after `infos`.
pub fn read_values(dir: &Path, prefix: &str, infos: &[super::IoInfo]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let path = dir.join(format!("{prefix}_{i}.pb"));
        if !path.exists() {
            break;
        }
        let bytes = std::fs::read(&path).unwrap();
        out.push((info.name.clone(), decode_value(&bytes, &info.ty)));
    }
    out
}

/// Compare as the ONNX backend tests do: floats with rtol 1e-3, atol 1e-7; the rest exactly.
pub fn assert_close(name: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Tensor(g), Value::Tensor(w)) => {
            assert_eq!(g.dtype(), w.dtype(), "{name}: dtype");
            assert_eq!(g.dims(), w.dims(), "{name}: shape");
            if w.dtype().is_float() && w.dtype().element_size() != ElementSize::Bytes(1) {
                let (g, w) = (g.to_f64_vec().unwrap(), w.to_f64_vec().unwrap());
                for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                    let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-7 + 1e-3 * b.abs() || a == b;
                    assert!(ok, "{name}[{i}]: got {a}, want {b}");
                }
            } else {
                assert!(g.data() == w.data(), "{name}: data differ: got {:?} want {:?}", g.bytes().or(None), w.bytes());
                if let (Some(a), Some(b)) = (g.strings(), w.strings()) {
                    assert_eq!(a, b, "{name}: strings");
                }
            }
        }
        (Value::Sequence(g), Value::Sequence(w)) => {
            assert_eq!(g.len(), w.len(), "{name}: sequence length");
            for (a, b) in g.iter().zip(w) {
                assert_close(name, a, b);
            }
        }
        (Value::Optional(g), Value::Optional(w)) => match (g, w) {
            (Some(a), Some(b)) => assert_close(name, a, b),
            (None, None) => {}
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        },
        _ => panic!("{name}: got {}, want {}", got.describe(), want.describe()),
    }
}

/// Protobuf writer for hand-built models.
#[derive(Default)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    fn key(&mut self, num: u32, wire: u8) {
        self.varint(u64::from(num) << 3 | u64::from(wire));
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub fn int(mut self, num: u32, v: i64) -> Pb {
        self.key(num, 0);
        self.varint(v as u64);
        self
    }
    pub fn bytes(mut self, num: u32, b: &[u8]) -> Pb {
        self.key(num, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(self, num: u32, s: &str) -> Pb {
        self.bytes(num, s.as_bytes())
    }
    pub fn msg(self, num: u32, m: Pb) -> Pb {
        self.bytes(num, &m.0)
    }
}

/// A float tensor ValueInfoProto; `None` dims are symbolic.
pub fn value_info(name: &str, dims: &[Option<i64>]) -> Pb {
    let mut shape = Pb::default();
    for (i, d) in dims.iter().enumerate() {
        shape = shape.msg(
            1,
            match d {
                Some(v) => Pb::default().int(1, *v),
                None => Pb::default().str(2, &format!("d{i}")),
            },
        );
    }
    let tensor_type = Pb::default().int(1, DataType::F32.onnx_code() as i64).msg(2, shape);
    Pb::default().str(1, name).msg(2, Pb::default().msg(1, tensor_type))
}

/// A model `y = x <op> w` over f32 `[n]`, with `w` as an initializer whose data is either
/// inline or in the external file `external` (relative to the model's folder).
pub fn binary_model(op: &str, w: &[f32], external: Option<&str>) -> Vec<u8> {
    let n = w.len() as i64;
    let raw: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut init = Pb::default().int(1, n).int(2, DataType::F32.onnx_code() as i64).str(8, "w");
    init = match external {
        None => init.bytes(9, &raw),
        Some(file) => init
            .msg(13, Pb::default().str(1, "location").str(2, file))
            .msg(13, Pb::default().str(1, "offset").str(2, "0"))
            .msg(13, Pb::default().str(1, "length").str(2, &raw.len().to_string()))
            .int(14, 1),
    };
    let node = Pb::default().str(1, "x").str(1, "w").str(2, "y").str(3, "n0").str(4, op);
    let graph = Pb::default()
        .msg(1, node)
        .str(2, "g")
        .msg(5, init)
        .msg(11, value_info("x", &[None]))
        .msg(12, value_info("y", &[None]));
    Pb::default().int(1, 8).msg(8, Pb::default().str(1, "").int(2, 17)).msg(7, graph).0
}
