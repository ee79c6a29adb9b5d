//! ONNX protobuf import and export.

pub mod proto;
