//! Errors of ONNX import and export; each names the file and the tensor, node or value.

use std::path::PathBuf;

/// Why a model could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a valid ONNX model (protobuf decoding failed: {source}); is the file truncated or not an ONNX file?"
    )]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path}: the model has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: tensor '{tensor}': {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },
    #[error("{path}: tensor '{tensor}': external data '{location}': {message}")]
    ExternalData { path: PathBuf, tensor: String, location: String, message: String },
    #[error("{path}: node {node}: {message}")]
    Node { path: PathBuf, node: String, message: String },
    #[error("{path}: the serialized model would be {size} bytes, over protobuf's 2 GiB limit; save with external data")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: {message}")]
    Other { path: PathBuf, message: String },
}

impl OnnxError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> OnnxError {
        OnnxError::Io { path: path.into(), source }
    }

    /// Whether the input itself is at fault (exit code 2), rather than the machine (exit code 3).
    pub fn is_bad_input(&self) -> bool {
        match self {
            OnnxError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ),
            _ => true,
        }
    }
}
