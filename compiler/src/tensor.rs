//! Immutable tensors whose bytes are shared: owned, or borrowed from a memory map.
//!
//! Bytes are always the packed little-endian layout ONNX `raw_data` uses (sub-byte types
//! low nibble first), so a tensor read from a memory-mapped file is used without a copy.

use bytes::Bytes;
use half::{bf16, f16};

use crate::dtype::DataType;

/// Why a tensor could not be built or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("tensor of type {dtype} and shape {dims:?} needs {expected} bytes but {actual} were given")]
    ByteLength { dtype: DataType, dims: Vec<usize>, expected: u64, actual: u64 },
    #[error("tensor of shape {dims:?} has too many elements")]
    TooLarge { dims: Vec<usize> },
    #[error("tensor of shape {dims:?} needs {expected} strings but {actual} were given")]
    StringCount { dims: Vec<usize>, expected: u64, actual: u64 },
    #[error("tensor has type {actual}, not {expected}")]
    WrongType { expected: DataType, actual: DataType },
    #[error("type {0} cannot hold packed bytes (strings) or has no size (undefined)")]
    NotPacked(DataType),
}

/// The contents of a tensor.
#[derive(Clone, PartialEq, Eq)]
pub enum TensorData {
    /// Packed little-endian elements.
    Packed(Bytes),
    /// One byte string per element (`DataType::String`).
    Strings(Vec<Bytes>),
}

/// Serialization details of where a tensor came from, kept so that a model read and written
/// again without change is byte-identical. Passes that build new tensors leave this empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageHints {
    /// Serializer-specific encoding of the original (for ONNX: raw, typed field, external).
    pub encoding: Option<TensorEncoding>,
    pub doc_string: Option<String>,
    /// ONNX `TensorProto.segment` (begin, end).
    pub segment: Option<(Option<i64>, Option<i64>)>,
    /// ONNX `TensorProto.metadata_props`, in order.
    pub metadata_props: Vec<(Option<String>, Option<String>)>,
    /// ONNX `TensorProto.data_location` exactly as written, if it was written.
    pub data_location: Option<i32>,
    /// The tensor's own name field (attribute tensors; initializers take the value's name).
    pub name: Option<String>,
}

/// A byte range of a file a tensor's bytes were mapped from. Writers copy from the file
/// instead of touching the mapping, so converting a huge model keeps the resident set small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRegion {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub length: u64,
}

/// How the elements were stored in the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorEncoding {
    /// In `raw_data`.
    Raw,
    /// In the type-specific repeated field (`float_data`, `int32_data`, …).
    Typed,
    /// No data field at all (an empty tensor written without data).
    Absent,
    /// In an external file; `entries` are the `external_data` key/value pairs in order.
    External { entries: Vec<(Option<String>, Option<String>)> },
}

/// An immutable, cheaply clonable tensor. Equality compares type, shape and elements only
/// (not where the bytes came from or how they were serialized).
#[derive(Clone)]
pub struct Tensor {
    dtype: DataType,
    dims: Vec<usize>,
    data: TensorData,
    /// Serialization details of the original, for lossless round trips.
    pub hints: StorageHints,
    source: Option<std::sync::Arc<FileRegion>>,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.dtype == other.dtype && self.dims == other.dims && self.data == other.data
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor<{}{:?}>", self.dtype, self.dims)
    }
}

/// The number of elements of a shape, checked for overflow.
pub fn element_count(dims: &[usize]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

impl Tensor {
    /// A tensor over packed little-endian bytes; the length must match the shape exactly.
    pub fn new(dtype: DataType, dims: Vec<usize>, bytes: Bytes) -> Result<Tensor, TensorError> {
        let count = element_count(&dims).ok_or_else(|| TensorError::TooLarge { dims: dims.clone() })?;
        let expected = match dtype {
            DataType::String | DataType::Undefined => return Err(TensorError::NotPacked(dtype)),
            _ => dtype.storage_bytes(count).ok_or_else(|| TensorError::TooLarge { dims: dims.clone() })?,
        };
        if expected != bytes.len() as u64 {
            return Err(TensorError::ByteLength { dtype, dims, expected, actual: bytes.len() as u64 });
        }
        Ok(Tensor { dtype, dims, data: TensorData::Packed(bytes), hints: StorageHints::default(), source: None })
    }

    /// A string tensor.
    pub fn from_strings(dims: Vec<usize>, strings: Vec<Bytes>) -> Result<Tensor, TensorError> {
        let count = element_count(&dims).ok_or_else(|| TensorError::TooLarge { dims: dims.clone() })?;
        if count != strings.len() as u64 {
            return Err(TensorError::StringCount { dims, expected: count, actual: strings.len() as u64 });
        }
        Ok(Tensor {
            dtype: DataType::String,
            dims,
            data: TensorData::Strings(strings),
            hints: StorageHints::default(),
            source: None,
        })
    }

    /// A tensor copied from a slice of native elements.
    pub fn from_slice<T: Element>(dims: Vec<usize>, values: &[T]) -> Result<Tensor, TensorError> {
        let mut out = Vec::with_capacity(values.len() * T::SIZE);
        for v in values {
            v.write_le(&mut out);
        }
        Tensor::new(T::DTYPE, dims, Bytes::from(out))
    }

    /// A scalar (rank 0) tensor.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        let mut out = Vec::with_capacity(T::SIZE);
        value.write_le(&mut out);
        Tensor {
            dtype: T::DTYPE,
            dims: Vec::new(),
            data: TensorData::Packed(Bytes::from(out)),
            hints: StorageHints::default(),
            source: None,
        }
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Number of elements (shapes are validated on construction, so this cannot overflow).
    pub fn len(&self) -> u64 {
        element_count(&self.dims).unwrap_or(u64::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The packed bytes, or `None` for a string tensor.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Packed(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// Bytes the elements take in memory (string lengths summed).
    pub fn byte_size(&self) -> u64 {
        match &self.data {
            TensorData::Packed(b) => b.len() as u64,
            TensorData::Strings(s) => s.iter().map(|x| x.len() as u64).sum(),
        }
    }

    pub fn strings(&self) -> Option<&[Bytes]> {
        match &self.data {
            TensorData::Strings(s) => Some(s),
            TensorData::Packed(_) => None,
        }
    }

    /// The elements as a vector of `T`, which must be this tensor's type.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if self.dtype != T::DTYPE {
            return Err(TensorError::WrongType { expected: T::DTYPE, actual: self.dtype });
        }
        let bytes = self.bytes().ok_or(TensorError::NotPacked(self.dtype))?;
        Ok(bytes.chunks_exact(T::SIZE).map(T::read_le).collect())
    }

    /// The elements of any real numeric type, widened to f64 (sub-byte and f8 types excluded).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>, TensorError> {
        use DataType as D;
        Ok(match self.dtype {
            D::F32 => self.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
            D::F64 => self.to_vec::<f64>()?,
            D::F16 => self.to_vec::<f16>()?.into_iter().map(f64::from).collect(),
            D::BF16 => self.to_vec::<bf16>()?.into_iter().map(f64::from).collect(),
            D::I8 => self.to_vec::<i8>()?.into_iter().map(f64::from).collect(),
            D::U8 => self.to_vec::<u8>()?.into_iter().map(f64::from).collect(),
            D::I16 => self.to_vec::<i16>()?.into_iter().map(f64::from).collect(),
            D::U16 => self.to_vec::<u16>()?.into_iter().map(f64::from).collect(),
            D::I32 => self.to_vec::<i32>()?.into_iter().map(f64::from).collect(),
            D::U32 => self.to_vec::<u32>()?.into_iter().map(f64::from).collect(),
            D::I64 => self.to_vec::<i64>()?.into_iter().map(|v| v as f64).collect(),
            D::U64 => self.to_vec::<u64>()?.into_iter().map(|v| v as f64).collect(),
            D::Bool => self.to_vec::<bool>()?.into_iter().map(|v| if v { 1.0 } else { 0.0 }).collect(),
            other => {
                return Err(TensorError::WrongType { expected: D::F64, actual: other });
            }
        })
    }

    /// The same tensor without serialization hints (as a pass would build it).
    pub fn without_hints(mut self) -> Tensor {
        self.hints = StorageHints::default();
        self
    }

    /// Records the file region these bytes were mapped from.
    pub fn with_source(mut self, region: FileRegion) -> Tensor {
        self.source = Some(std::sync::Arc::new(region));
        self
    }

    /// The file region these bytes were mapped from, if any.
    pub fn source(&self) -> Option<&FileRegion> {
        self.source.as_deref()
    }

    /// A tensor with the same elements and a new shape of the same element count.
    pub fn reshaped(&self, dims: Vec<usize>) -> Result<Tensor, TensorError> {
        match &self.data {
            TensorData::Packed(b) => Tensor::new(self.dtype, dims, b.clone()),
            TensorData::Strings(s) => Tensor::from_strings(dims, s.clone()),
        }
    }
}

/// A native element type with a fixed little-endian encoding.
pub trait Element: Copy + Sized {
    const DTYPE: DataType;
    const SIZE: usize;
    fn write_le(self, out: &mut Vec<u8>);
    /// Read one element from exactly `SIZE` bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! numeric_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DataType = $d;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&bytes[..Self::SIZE]);
                <$t>::from_le_bytes(a)
            }
        }
    };
}

numeric_element!(f32, DataType::F32);
numeric_element!(f64, DataType::F64);
numeric_element!(i8, DataType::I8);
numeric_element!(u8, DataType::U8);
numeric_element!(i16, DataType::I16);
numeric_element!(u16, DataType::U16);
numeric_element!(i32, DataType::I32);
numeric_element!(u32, DataType::U32);
numeric_element!(i64, DataType::I64);
numeric_element!(u64, DataType::U64);
numeric_element!(f16, DataType::F16);
numeric_element!(bf16, DataType::BF16);

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_checked() {
        let err = Tensor::new(DataType::F32, vec![2, 3], Bytes::from(vec![0u8; 20])).unwrap_err();
        assert!(matches!(err, TensorError::ByteLength { expected: 24, actual: 20, .. }));
        assert!(Tensor::new(DataType::I4, vec![3], Bytes::from(vec![0u8; 2])).is_ok());
        assert!(Tensor::new(DataType::F32, vec![usize::MAX, 4], Bytes::new()).is_err());
    }

    #[test]
    fn slice_round_trip() {
        let t = Tensor::from_slice(vec![2, 2], &[1.0f32, -2.0, 3.5, 0.0]).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, -2.0, 3.5, 0.0]);
        assert!(t.to_vec::<i32>().is_err());
        assert_eq!(t.to_f64_vec().unwrap()[2], 3.5);
        let s = Tensor::scalar(7i64);
        assert_eq!(s.rank(), 0);
        assert_eq!(s.len(), 1);
    }
}
