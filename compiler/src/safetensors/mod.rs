//! Kiln's own reader and writer for the safetensors format, written from its specification.
//!
//! A file is: an unsigned 64-bit little-endian header length `N`; `N` bytes of UTF-8 JSON
//! mapping each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the byte buffer that follows the header) plus an optional `"__metadata__"`
//! string-to-string map; the header may be padded with trailing spaces; then the byte buffer.
//!
//! - [`format`]: [`SafetensorsFile`], a memory-mapped, fully validated file whose tensors are
//!   zero-copy slices of the map, with each tensor's absolute offset (for ONNX external data).
//! - [`write`]: [`write_safetensors`], deterministic, atomic and streaming.
//! - [`index`]: sharded checkpoints (`*.safetensors.index.json`) and [`Checkpoint`].
//! - [`bind`]: binding a checkpoint onto graph initializers by name, with shape/dtype checks.
//!
//! Strictness: a file Kiln accepts is one the reference implementation accepts too: every
//! tensor's size must match its shape and dtype, tensors must not overlap and must cover the
//! buffer with no holes (a hole is an error by default; [`ReadOptions::allow_gaps`] turns holes
//! into [`Gap`] warnings for files written by tools that pad between tensors). Kiln is stricter
//! in two places the reference (0.8) tolerates: the header must start with `{`, as the
//! specification says, and a repeated JSON key is an error rather than "last one wins", since
//! two readers could otherwise see different tensors under one name.

pub mod bind;
pub mod format;
pub mod index;
pub mod write;

use std::path::PathBuf;

use crate::dtype::DataType;

pub use bind::{BindOptions, BindReport, BindSummary, DtypePolicy, Mismatch, PrefixRule, TargetSpec, bind};
pub use format::{Gap, MAX_HEADER_LEN, ReadOptions, SafetensorsFile, TensorEntry};
pub use index::{Checkpoint, INDEX_SUFFIX, ShardIndex, ShardedCheckpoint, ShardedWrite, WrittenShard, write_sharded};
pub use write::{WrittenTensor, write_safetensors};

/// A safetensors dtype: every tag the specification defines, in the specification's order
/// (the writer's tensor order is derived from it, as the reference writer's is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum StDtype {
    Bool,
    F4,
    F6E2M3,
    F6E3M2,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl StDtype {
    pub const ALL: [StDtype; 22] = [
        StDtype::Bool,
        StDtype::F4,
        StDtype::F6E2M3,
        StDtype::F6E3M2,
        StDtype::U8,
        StDtype::I8,
        StDtype::F8E5M2,
        StDtype::F8E4M3,
        StDtype::F8E8M0,
        StDtype::F8E4M3Fnuz,
        StDtype::F8E5M2Fnuz,
        StDtype::I16,
        StDtype::U16,
        StDtype::F16,
        StDtype::BF16,
        StDtype::I32,
        StDtype::U32,
        StDtype::F32,
        StDtype::C64,
        StDtype::F64,
        StDtype::I64,
        StDtype::U64,
    ];

    /// The tag as written in the header.
    pub fn tag(self) -> &'static str {
        use StDtype::*;
        match self {
            Bool => "BOOL",
            F4 => "F4",
            F6E2M3 => "F6_E2M3",
            F6E3M2 => "F6_E3M2",
            U8 => "U8",
            I8 => "I8",
            F8E5M2 => "F8_E5M2",
            F8E4M3 => "F8_E4M3",
            F8E8M0 => "F8_E8M0",
            F8E4M3Fnuz => "F8_E4M3FNUZ",
            F8E5M2Fnuz => "F8_E5M2FNUZ",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            C64 => "C64",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }

    pub fn from_tag(tag: &str) -> Option<StDtype> {
        StDtype::ALL.iter().copied().find(|d| d.tag() == tag)
    }

    /// Bits per element (sub-byte types are packed, first element in the low bits).
    pub fn bits(self) -> u64 {
        use StDtype::*;
        match self {
            F4 => 4,
            F6E2M3 | F6E3M2 => 6,
            Bool | U8 | I8 | F8E5M2 | F8E4M3 | F8E8M0 | F8E4M3Fnuz | F8E5M2Fnuz => 8,
            I16 | U16 | F16 | BF16 => 16,
            I32 | U32 | F32 => 32,
            C64 | F64 | I64 | U64 => 64,
        }
    }

    /// Bytes `count` elements take, or `None` on overflow or when they do not fill whole bytes
    /// (the format has no padding for sub-byte types).
    pub fn storage_bytes(self, count: u64) -> Option<u64> {
        let bits = count.checked_mul(self.bits())?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    /// The Kiln type, or `None` for the F6 kinds, which ONNX has no type for.
    pub fn to_data_type(self) -> Option<DataType> {
        use StDtype::*;
        Some(match self {
            Bool => DataType::Bool,
            F4 => DataType::F4E2M1,
            F6E2M3 | F6E3M2 => return None,
            U8 => DataType::U8,
            I8 => DataType::I8,
            F8E5M2 => DataType::F8E5M2,
            // The safetensors F8_E4M3 is the "fn" variant (no infinities), as ONNX's FLOAT8E4M3FN.
            F8E4M3 => DataType::F8E4M3FN,
            F8E8M0 => DataType::F8E8M0,
            F8E4M3Fnuz => DataType::F8E4M3FNUZ,
            F8E5M2Fnuz => DataType::F8E5M2FNUZ,
            I16 => DataType::I16,
            U16 => DataType::U16,
            F16 => DataType::F16,
            BF16 => DataType::BF16,
            I32 => DataType::I32,
            U32 => DataType::U32,
            F32 => DataType::F32,
            C64 => DataType::C64,
            F64 => DataType::F64,
            I64 => DataType::I64,
            U64 => DataType::U64,
        })
    }

    /// The safetensors dtype of a Kiln type, or `None` where the format has none
    /// (string, c128, 4- and 2-bit integers, undefined).
    pub fn from_data_type(dtype: DataType) -> Option<StDtype> {
        StDtype::ALL.iter().copied().find(|d| d.to_data_type() == Some(dtype))
    }
}

impl std::fmt::Display for StDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.tag())
    }
}

/// Everything that can go wrong reading, writing or binding safetensors. Every variant names
/// the file, and the tensor where one is involved.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file is {size} bytes, too small for the 8-byte header length")]
    TooSmall { path: PathBuf, size: u64 },
    #[error("{path}: header length {len} exceeds the limit of {cap} bytes")]
    HeaderTooLarge { path: PathBuf, len: u64, cap: u64 },
    #[error("{path}: header length {len} runs past the end of the file ({available} bytes follow the length)")]
    HeaderPastEnd { path: PathBuf, len: u64, available: u64 },
    #[error("{path}: header is not valid UTF-8 (invalid byte at header offset {valid_up_to})")]
    HeaderNotUtf8 { path: PathBuf, valid_up_to: usize },
    #[error("{path}: header does not start with '{{'")]
    HeaderStart { path: PathBuf },
    #[error("{path}: header is not a valid JSON object: {message}")]
    HeaderJson { path: PathBuf, message: String },
    #[error("{path}: key {key:?} appears more than once in the header")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: invalid __metadata__: {message}")]
    BadMetadata { path: PathBuf, message: String },
    #[error("{path}: invalid header entry for tensor {tensor:?}: {message}")]
    BadEntry { path: PathBuf, tensor: String, message: String },
    #[error("{path}: unknown dtype {dtype:?} in tensor {tensor:?}")]
    UnknownDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{path}: unsupported dtype {dtype} in tensor {tensor:?}: {reason}")]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String, reason: &'static str },
    #[error("{path}: tensor {tensor:?} has shape {shape:?} whose size overflows")]
    ShapeOverflow { path: PathBuf, tensor: String, shape: Vec<u64> },
    #[error("{path}: tensor {tensor:?} of dtype {dtype} has {elements} elements, which do not fill whole bytes")]
    NotWholeBytes { path: PathBuf, tensor: String, dtype: String, elements: u64 },
    #[error(
        "{path}: tensor {tensor:?} of dtype {dtype} and shape {shape:?} needs {expected} bytes but its offsets span {actual}"
    )]
    SizeMismatch { path: PathBuf, tensor: String, dtype: String, shape: Vec<u64>, expected: u64, actual: u64 },
    #[error("{path}: tensor {tensor:?} has data_offsets [{begin}, {end}] with end before begin")]
    OffsetsReversed { path: PathBuf, tensor: String, begin: u64, end: u64 },
    #[error("{path}: tensor {tensor:?} ends at buffer offset {end}, past the {buffer_len}-byte buffer")]
    OffsetPastEnd { path: PathBuf, tensor: String, end: u64, buffer_len: u64 },
    #[error("{path}: tensors {tensor:?} and {other:?} overlap (buffer offsets {begin} < {other_end})")]
    Overlap { path: PathBuf, tensor: String, other: String, begin: u64, other_end: u64 },
    #[error("{path}: buffer bytes [{begin}, {end}) belong to no tensor{}", after.as_ref().map(|a| format!(" (after tensor {a:?})")).unwrap_or_default())]
    Gap { path: PathBuf, begin: u64, end: u64, after: Option<String> },
    #[error("{path}: tensor {tensor:?} appears more than once")]
    DuplicateTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor name {tensor:?} is reserved or empty")]
    ReservedName { path: PathBuf, tensor: String },
    #[error("{path}: tensor {tensor:?} has type {dtype}, which safetensors cannot store")]
    UnwritableDtype { path: PathBuf, tensor: String, dtype: DataType },
    #[error("{path}: tensor {tensor:?}: {message}")]
    BadTensor { path: PathBuf, tensor: String, message: String },
    #[error("{path}: invalid shard index: {message}")]
    IndexJson { path: PathBuf, message: String },
    #[error("{path}: shard path {shard:?} is not allowed: {reason}")]
    ShardPath { path: PathBuf, shard: String, reason: &'static str },
    #[error("{path}: tensor {tensor:?} is mapped to shard {shard:?} but that shard does not contain it")]
    MissingInShard { path: PathBuf, tensor: String, shard: String },
    #[error("{path}: tensor {tensor:?} is mapped to shard {expected:?} but found in shard {found:?}")]
    WrongShard { path: PathBuf, tensor: String, expected: String, found: String },
    #[error("{path}: tensor {tensor:?} of shard {shard:?} is not listed in the weight map")]
    UnlistedTensor { path: PathBuf, tensor: String, shard: String },
    #[error("{path}: invalid sharding request: {message}")]
    BadShardRequest { path: PathBuf, message: String },
}

impl SafetensorsError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SafetensorsError + '_ {
        move |source| SafetensorsError::Io { path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_tables_agree() {
        for d in StDtype::ALL {
            assert_eq!(StDtype::from_tag(d.tag()), Some(d));
            if let Some(k) = d.to_data_type() {
                assert_eq!(StDtype::from_data_type(k), Some(d));
                // Kiln's packed size agrees with the format's whenever the format's is defined.
                assert_eq!(k.storage_bytes(6), d.storage_bytes(6), "{d}");
            }
        }
        assert_eq!(StDtype::from_tag("F8_E4M3FN"), None);
        assert_eq!(StDtype::F6E2M3.to_data_type(), None);
        for d in [DataType::String, DataType::C128, DataType::I4, DataType::U4, DataType::I2, DataType::U2] {
            assert_eq!(StDtype::from_data_type(d), None, "{d}");
        }
        assert_eq!(StDtype::F4.storage_bytes(3), None);
        assert_eq!(StDtype::F6E3M2.storage_bytes(4), Some(3));
        assert_eq!(StDtype::U64.storage_bytes(u64::MAX), None);
    }
}
