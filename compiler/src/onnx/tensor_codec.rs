//! `TensorProto` ⇄ [`Tensor`]: raw bytes, the type-specific repeated fields, external data.
//!
//! The encoding a tensor arrived in is kept in its [`StorageHints`], so writing it back
//! produces the same bytes.

use bytes::Bytes;

use super::proto::{StringStringEntryProto, TensorProto, tensor_proto::Segment};
use crate::dtype::DataType;
use crate::tensor::{FileRegion, StorageHints, Tensor, TensorEncoding, element_count};

/// ONNX `DataLocation.EXTERNAL`.
pub(crate) const DATA_LOCATION_EXTERNAL: i32 = 1;

pub(crate) fn entries_from_proto(v: &[StringStringEntryProto]) -> Vec<(Option<String>, Option<String>)> {
    v.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
}

pub(crate) fn entries_to_proto(v: &[(Option<String>, Option<String>)]) -> Vec<StringStringEntryProto> {
    v.iter().map(|(k, val)| StringStringEntryProto { key: k.clone(), value: val.clone() }).collect()
}

/// Resolves external data to bytes (and the file region they were mapped from).
pub(crate) trait ExternalResolver {
    fn resolve(
        &mut self,
        tensor: &str,
        entries: &[(Option<String>, Option<String>)],
        expected_len: u64,
    ) -> Result<(Bytes, FileRegion), String>;

    /// Where `raw` lies in the model file, when it is a slice of a mapped file.
    fn raw_region(&self, _raw: &Bytes) -> Option<FileRegion> {
        None
    }
}

/// For tensors read on their own (test data, attribute-free contexts): external data is refused.
pub(crate) struct NoExternal;

impl ExternalResolver for NoExternal {
    fn resolve(
        &mut self,
        _: &str,
        _: &[(Option<String>, Option<String>)],
        _: u64,
    ) -> Result<(Bytes, FileRegion), String> {
        Err("external data is not supported in a standalone tensor file".into())
    }
}

/// Shape and type of a `TensorProto`, validated.
fn dims_and_type(tp: &TensorProto) -> Result<(DataType, Vec<usize>, u64), String> {
    let code = tp.data_type.ok_or("has no data_type")?;
    let dtype = DataType::from_onnx(code).ok_or_else(|| format!("has unknown data_type {code}"))?;
    if dtype == DataType::Undefined {
        return Err("has data_type UNDEFINED".into());
    }
    let dims = tp
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("has a negative dimension {d} in shape {:?}", tp.dims)))
        .collect::<Result<Vec<usize>, String>>()?;
    let count = element_count(&dims).ok_or_else(|| format!("shape {:?} has too many elements", tp.dims))?;
    Ok((dtype, dims, count))
}

fn check_count(field: &str, got: usize, expected: u64) -> Result<(), String> {
    if got as u64 != expected {
        return Err(format!("has {got} values in {field}, but its shape needs {expected}"));
    }
    Ok(())
}

/// Decodes a tensor. `resolver` handles external data.
pub(crate) fn tensor_from_proto(tp: &TensorProto, resolver: &mut dyn ExternalResolver) -> Result<Tensor, String> {
    let (dtype, dims, count) = dims_and_type(tp)?;
    let name = tp.name.as_deref().unwrap_or("");
    let mut source = None;
    let (tensor, encoding) = if tp.data_location == Some(DATA_LOCATION_EXTERNAL) {
        if dtype == DataType::String {
            return Err("string tensors cannot use external data".into());
        }
        let expected = dtype.storage_bytes(count).ok_or("is too large")?;
        let entries = entries_from_proto(&tp.external_data);
        let (bytes, region) = resolver.resolve(name, &entries, expected)?;
        source = Some(region);
        (Tensor::new(dtype, dims, bytes).map_err(|e| e.to_string())?, TensorEncoding::External { entries })
    } else if let Some(raw) = &tp.raw_data {
        if dtype == DataType::String {
            return Err("string tensors cannot use raw_data".into());
        }
        source = resolver.raw_region(raw);
        (Tensor::new(dtype, dims, raw.clone()).map_err(|e| e.to_string())?, TensorEncoding::Raw)
    } else {
        (decode_typed(tp, dtype, dims, count)?, TensorEncoding::Typed)
    };
    let mut tensor = tensor;
    tensor.hints = StorageHints {
        encoding: Some(encoding),
        doc_string: tp.doc_string.clone(),
        segment: tp.segment.map(|s| (s.begin, s.end)),
        metadata_props: entries_from_proto(&tp.metadata_props),
        data_location: tp.data_location,
        name: tp.name.clone(),
    };
    if let Some(region) = source {
        tensor = tensor.with_source(region);
    }
    Ok(tensor)
}

fn decode_typed(tp: &TensorProto, dtype: DataType, dims: Vec<usize>, count: u64) -> Result<Tensor, String> {
    use DataType as D;
    let mut out: Vec<u8> = Vec::new();
    match dtype {
        D::String => {
            check_count("string_data", tp.string_data.len(), count)?;
            return Tensor::from_strings(dims, tp.string_data.clone()).map_err(|e| e.to_string());
        }
        D::F32 | D::C64 => {
            let n = if dtype == D::C64 { count.saturating_mul(2) } else { count };
            check_count("float_data", tp.float_data.len(), n)?;
            tp.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        D::F64 | D::C128 => {
            let n = if dtype == D::C128 { count.saturating_mul(2) } else { count };
            check_count("double_data", tp.double_data.len(), n)?;
            tp.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        D::I64 => {
            check_count("int64_data", tp.int64_data.len(), count)?;
            tp.int64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        D::U64 => {
            check_count("uint64_data", tp.uint64_data.len(), count)?;
            tp.uint64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        D::U32 => {
            check_count("uint64_data", tp.uint64_data.len(), count)?;
            for &v in &tp.uint64_data {
                let v = u32::try_from(v).map_err(|_| format!("uint64_data value {v} does not fit uint32"))?;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        D::I32 => {
            check_count("int32_data", tp.int32_data.len(), count)?;
            tp.int32_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        D::I16 | D::U16 | D::F16 | D::BF16 => {
            check_count("int32_data", tp.int32_data.len(), count)?;
            tp.int32_data.iter().for_each(|&v| out.extend_from_slice(&(v as u16).to_le_bytes()));
        }
        D::I8 | D::U8 | D::Bool | D::F8E4M3FN | D::F8E4M3FNUZ | D::F8E5M2 | D::F8E5M2FNUZ | D::F8E8M0 => {
            check_count("int32_data", tp.int32_data.len(), count)?;
            tp.int32_data.iter().for_each(|&v| out.push(v as u8));
        }
        D::U4 | D::I4 | D::F4E2M1 | D::U2 | D::I2 => {
            // One packed byte per int32.
            let bytes = dtype.storage_bytes(count).ok_or("is too large")?;
            check_count("int32_data (packed bytes)", tp.int32_data.len(), bytes)?;
            tp.int32_data.iter().for_each(|&v| out.push(v as u8));
        }
        D::Undefined => return Err("has data_type UNDEFINED".into()),
    }
    Tensor::new(dtype, dims, Bytes::from(out)).map_err(|e| e.to_string())
}

/// Fills the type-specific field of `tp` from the tensor's bytes (the inverse of `decode_typed`).
fn encode_typed(t: &Tensor, tp: &mut TensorProto) {
    use DataType as D;
    if let Some(strings) = t.strings() {
        tp.string_data = strings.to_vec();
        return;
    }
    let Some(b) = t.bytes() else { return };
    let words = |n: usize| b.chunks_exact(n);
    match t.dtype() {
        D::F32 | D::C64 => tp.float_data = words(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        D::F64 | D::C128 => {
            tp.double_data = words(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
        }
        D::I64 => tp.int64_data = words(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        D::U64 => tp.uint64_data = words(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        D::U32 => tp.uint64_data = words(4).map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        D::I32 => tp.int32_data = words(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        D::I16 => tp.int32_data = words(2).map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        D::U16 | D::F16 | D::BF16 => {
            tp.int32_data = words(2).map(|c| i32::from(u16::from_le_bytes([c[0], c[1]]))).collect()
        }
        D::I8 => tp.int32_data = b.iter().map(|&v| i32::from(v as i8)).collect(),
        _ => tp.int32_data = b.iter().map(|&v| i32::from(v)).collect(),
    }
}

/// How the data of a tensor is written.
pub(crate) enum DataPlacement {
    /// As the hints say (raw, typed), or raw for new tensors; external hints are honoured by
    /// writing the same `external_data` entries.
    AsLoaded,
    /// Inline, in the encoding the hints say unless they say external (then raw).
    Inline,
    /// External with these entries.
    External(Vec<(Option<String>, Option<String>)>),
}

/// Encodes a tensor; `name` overrides the hint's name (initializers carry the value's name).
pub(crate) fn tensor_to_proto(t: &Tensor, name: Option<String>, placement: DataPlacement) -> TensorProto {
    let h = &t.hints;
    let mut tp = TensorProto {
        dims: t.dims().iter().map(|&d| d as i64).collect(),
        data_type: Some(t.dtype().onnx_code()),
        segment: h.segment.map(|(begin, end)| Segment { begin, end }),
        name: name.or_else(|| h.name.clone()),
        doc_string: h.doc_string.clone(),
        metadata_props: entries_to_proto(&h.metadata_props),
        data_location: h.data_location,
        ..TensorProto::default()
    };
    let encoding = h.encoding.clone().unwrap_or(if t.dtype() == DataType::String {
        TensorEncoding::Typed
    } else {
        TensorEncoding::Raw
    });
    let external_entries = match (placement, encoding) {
        (DataPlacement::External(entries), _) => Some(entries),
        (DataPlacement::AsLoaded, TensorEncoding::External { entries }) => Some(entries),
        (_, TensorEncoding::Typed) => {
            encode_typed(t, &mut tp);
            None
        }
        (_, TensorEncoding::Absent) => None,
        (_, TensorEncoding::Raw | TensorEncoding::External { .. }) => {
            tp.raw_data = t.bytes().cloned();
            None
        }
    };
    match external_entries {
        Some(entries) => {
            tp.external_data = entries_to_proto(&entries);
            tp.data_location = Some(DATA_LOCATION_EXTERNAL);
        }
        None => {
            if tp.data_location == Some(DATA_LOCATION_EXTERNAL) {
                tp.data_location = None;
            }
        }
    }
    tp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(tp: TensorProto) -> TensorProto {
        let t = tensor_from_proto(&tp, &mut NoExternal).unwrap();
        tensor_to_proto(&t, None, DataPlacement::AsLoaded)
    }

    #[test]
    fn typed_fields_round_trip() {
        let cases = [
            TensorProto { dims: vec![3], data_type: Some(3), int32_data: vec![-5, 0, 127], ..Default::default() },
            TensorProto { dims: vec![2], data_type: Some(2), int32_data: vec![200, 1], ..Default::default() },
            TensorProto { dims: vec![2], data_type: Some(10), int32_data: vec![0x3c00, 0xbc00], ..Default::default() },
            TensorProto { dims: vec![3], data_type: Some(22), int32_data: vec![0xf1, 0x07], ..Default::default() },
            TensorProto { dims: vec![1], data_type: Some(12), uint64_data: vec![4_000_000_000], ..Default::default() },
            TensorProto { dims: vec![1], data_type: Some(14), float_data: vec![1.0, -2.0], ..Default::default() },
            TensorProto { dims: vec![2], data_type: Some(7), int64_data: vec![-1, i64::MAX], ..Default::default() },
            TensorProto {
                dims: vec![2],
                data_type: Some(8),
                string_data: vec![Bytes::from_static(b"a"), Bytes::new()],
                name: Some("s".into()),
                ..Default::default()
            },
        ];
        for tp in cases {
            assert_eq!(round_trip(tp.clone()), tp);
        }
    }

    #[test]
    fn bad_tensors_are_named_errors() {
        let neg = TensorProto { dims: vec![-1], data_type: Some(1), ..Default::default() };
        assert!(tensor_from_proto(&neg, &mut NoExternal).unwrap_err().contains("negative"));
        let short = TensorProto { dims: vec![4], data_type: Some(1), float_data: vec![1.0], ..Default::default() };
        assert!(tensor_from_proto(&short, &mut NoExternal).unwrap_err().contains("needs 4"));
        let raw = TensorProto {
            dims: vec![4],
            data_type: Some(1),
            raw_data: Some(Bytes::from(vec![0u8; 3])),
            ..Default::default()
        };
        assert!(tensor_from_proto(&raw, &mut NoExternal).unwrap_err().contains("bytes"));
        let unknown = TensorProto { dims: vec![], data_type: Some(99), ..Default::default() };
        assert!(tensor_from_proto(&unknown, &mut NoExternal).unwrap_err().contains("unknown data_type 99"));
    }
}
