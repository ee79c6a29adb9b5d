//! Serialized ONNX values (`TensorProto`, `SequenceProto`, `OptionalProto`) as executor
//! [`Value`]s: what ONNX test data sets (`input_0.pb`, `output_0.pb`) hold.

use std::path::Path;

use bytes::Bytes;
use prost::Message;

use super::error::OnnxError;
use super::proto::{OptionalProto, SequenceProto, TensorProto};
use super::tensor_codec::{NoExternal, tensor_from_proto};
use crate::ir::{Type, TypeKind};
use crate::runtime::Value;
use crate::tensor::Tensor;

fn tensor(tp: &TensorProto, origin: &Path) -> Result<Tensor, OnnxError> {
    tensor_from_proto(tp, &mut NoExternal).map_err(|message| OnnxError::Tensor {
        path: origin.to_path_buf(),
        tensor: tp.name.clone().unwrap_or_default(),
        message,
    })
}

fn decode_err(origin: &Path, source: prost::DecodeError) -> OnnxError {
    OnnxError::Decode { path: origin.to_path_buf(), source }
}

fn sequence(sp: &SequenceProto, origin: &Path) -> Result<Value, OnnxError> {
    let mut items = Vec::new();
    for t in &sp.tensor_values {
        items.push(Value::Tensor(tensor(t, origin)?));
    }
    for s in &sp.sequence_values {
        items.push(sequence(s, origin)?);
    }
    for o in &sp.optional_values {
        items.push(optional(o, origin)?);
    }
    if !sp.map_values.is_empty() || !sp.sparse_tensor_values.is_empty() {
        return Err(OnnxError::Other {
            path: origin.to_path_buf(),
            message: "sequences of maps or sparse tensors are not supported".into(),
        });
    }
    Ok(Value::Sequence(items))
}

fn optional(op: &OptionalProto, origin: &Path) -> Result<Value, OnnxError> {
    let inner = if let Some(t) = &op.tensor_value {
        Some(Value::Tensor(tensor(t, origin)?))
    } else if let Some(s) = &op.sequence_value {
        Some(sequence(s, origin)?)
    } else if let Some(o) = &op.optional_value {
        Some(optional(o, origin)?)
    } else {
        None
    };
    Ok(Value::Optional(inner.map(Box::new)))
}

/// Decodes one serialized value. `ty` (the declared type of the input or output it belongs
/// to) says which message it is; without it a `TensorProto` is assumed.
pub fn decode_value(bytes: Bytes, ty: Option<&Type>, origin: &Path) -> Result<Value, OnnxError> {
    match ty.map(|t| &t.kind) {
        Some(TypeKind::Sequence(_)) => {
            let sp = SequenceProto::decode(bytes).map_err(|e| decode_err(origin, e))?;
            sequence(&sp, origin)
        }
        Some(TypeKind::Optional(_)) => {
            let op = OptionalProto::decode(bytes).map_err(|e| decode_err(origin, e))?;
            optional(&op, origin)
        }
        _ => {
            let tp = TensorProto::decode(bytes).map_err(|e| decode_err(origin, e))?;
            Ok(Value::Tensor(tensor(&tp, origin)?))
        }
    }
}

/// Reads a serialized value from a file (see [`decode_value`]).
pub fn read_value(path: &Path, ty: Option<&Type>) -> Result<Value, OnnxError> {
    let bytes = std::fs::read(path).map_err(|e| OnnxError::io(path, e))?;
    decode_value(Bytes::from(bytes), ty, path)
}
