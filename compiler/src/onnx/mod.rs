//! ONNX protobuf import and export. Conversion happens here, at the edge: the IR itself
//! knows nothing of protobuf.

mod error;
pub(crate) mod export;
mod import;
pub mod proto;
pub(crate) mod tensor_codec;
mod value;
pub(crate) mod write;

pub use error::OnnxError;
pub use export::{ExternalData, PROTOBUF_LIMIT, SaveOptions, SaveReport, encode_model, model_to_proto, save_model};
pub use import::{decode_model, load_model};
pub use value::{decode_value, read_value};
pub use write::{AtomicFile, write_tensor_bytes};
