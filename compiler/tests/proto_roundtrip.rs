//! Every file of the ONNX node conformance suite must decode with Kiln's schema and
//! re-encode to identical bytes.
//!
//! The suite is installed by `cargo xtask fixtures`; without it the test fails and says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kiln_compiler::onnx::proto::{
    MapProto, ModelProto, OptionalProto, SequenceProto, SparseTensorProto, TensorProto, TypeProto, decode_model,
    type_proto,
};
use prost::Message;

/// Which message a test-data `.pb` file holds, read off the model's declared value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Tensor,
    SparseTensor,
    Sequence,
    Map,
    Optional,
}

impl Kind {
    fn of(ty: Option<&TypeProto>) -> Kind {
        match ty.and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::SequenceType(_)) => Kind::Sequence,
            Some(type_proto::Value::MapType(_)) => Kind::Map,
            Some(type_proto::Value::OptionalType(_)) => Kind::Optional,
            Some(type_proto::Value::SparseTensorType(_)) => Kind::SparseTensor,
            _ => Kind::Tensor,
        }
    }

    /// Decodes `bytes` as this kind and re-encodes it.
    fn round_trip(self, bytes: &Bytes) -> Result<Vec<u8>, prost::DecodeError> {
        let b = bytes.clone();
        Ok(match self {
            Kind::Tensor => TensorProto::decode(b)?.encode_to_vec(),
            Kind::SparseTensor => SparseTensorProto::decode(b)?.encode_to_vec(),
            Kind::Sequence => SequenceProto::decode(b)?.encode_to_vec(),
            Kind::Map => MapProto::decode(b)?.encode_to_vec(),
            Kind::Optional => OptionalProto::decode(b)?.encode_to_vec(),
        })
    }
}

fn node_tests_dir() -> PathBuf {
    kiln_fixtures::conformance_dir().unwrap_or_else(|e| panic!("{e}"))
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries
}

fn read(path: &Path) -> Bytes {
    Bytes::from(std::fs::read(path).unwrap())
}

/// `input_3.pb` → (true, 3); `output_0.pb` → (false, 0).
fn parse_data_name(name: &str) -> Option<(bool, usize)> {
    let stem = name.strip_suffix(".pb")?;
    if let Some(i) = stem.strip_prefix("input_") {
        Some((true, i.parse().ok()?))
    } else {
        Some((false, stem.strip_prefix("output_")?.parse().ok()?))
    }
}

#[test]
fn node_suite_round_trips_byte_identical() {
    let root = node_tests_dir();

    let mut models = 0usize;
    let mut data_files: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();

    for case in sorted_entries(&root) {
        let model_path = case.join("model.onnx");
        if !model_path.is_file() {
            continue;
        }
        let bytes = read(&model_path);
        let model = match decode_model(bytes.clone()) {
            Ok(model) => model,
            Err(error) => {
                failures.push(format!("{}: decode: {error}", model_path.display()));
                continue;
            }
        };
        if model.encode_to_vec() != bytes {
            failures.push(format!("{}: re-encoding differs", model_path.display()));
        } else {
            models += 1;
        }

        let graph = model.graph.as_ref();
        let type_of = |input: bool, index: usize| {
            graph
                .and_then(|g| if input { g.input.get(index) } else { g.output.get(index) })
                .and_then(|v| v.r#type.as_ref())
        };
        for set in sorted_entries(&case) {
            if !set.is_dir() {
                continue;
            }
            for file in sorted_entries(&set) {
                let Some((input, index)) = file.file_name().and_then(|n| n.to_str()).and_then(parse_data_name) else {
                    continue;
                };
                let kind = Kind::of(type_of(input, index));
                let bytes = read(&file);
                match kind.round_trip(&bytes) {
                    Ok(out) if out == bytes => *data_files.entry(kind).or_default() += 1,
                    Ok(_) => failures.push(format!("{}: {kind:?} re-encoding differs", file.display())),
                    Err(error) => failures.push(format!("{}: {kind:?} decode: {error}", file.display())),
                }
            }
        }
    }

    println!("model.onnx byte-identical: {models}");
    for (kind, count) in &data_files {
        println!("{kind:?} data files byte-identical: {count}");
    }
    for failure in &failures {
        println!("FAILED {failure}");
    }
    assert!(models > 0, "no model.onnx found under {}", root.display());
    assert!(failures.is_empty(), "{} files do not round-trip", failures.len());
}

/// A `.pb` value decoded from a `Bytes` keeps `raw_data` inside that buffer.
#[test]
fn raw_data_is_zero_copy_from_bytes() {
    let payload: Vec<u8> = (0..64u8).collect();
    let tensor = TensorProto {
        dims: vec![16],
        data_type: Some(1),
        raw_data: Some(Bytes::from(payload.clone())),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(10),
        graph: Some(kiln_compiler::onnx::proto::GraphProto { initializer: vec![tensor], ..Default::default() }),
        ..Default::default()
    };
    let source = Bytes::from(model.encode_to_vec());
    let decoded = decode_model(source.clone()).unwrap();
    let raw = decoded.graph.unwrap().initializer[0].raw_data.clone().unwrap();
    assert_eq!(raw.as_ref(), payload.as_slice());
    let range = source.as_ptr_range();
    assert!(range.contains(&raw.as_ptr()), "raw_data was copied out of the source buffer");
}
