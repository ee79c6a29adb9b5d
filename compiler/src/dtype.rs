//! Element types: every ONNX `TensorProto.DataType`, with their storage sizes.

use std::fmt;

/// An ONNX element type. The discriminant is the ONNX `TensorProto.DataType` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(i32)]
pub enum DataType {
    Undefined = 0,
    F32 = 1,
    U8 = 2,
    I8 = 3,
    U16 = 4,
    I16 = 5,
    I32 = 6,
    I64 = 7,
    String = 8,
    Bool = 9,
    F16 = 10,
    F64 = 11,
    U32 = 12,
    U64 = 13,
    C64 = 14,
    C128 = 15,
    BF16 = 16,
    F8E4M3FN = 17,
    F8E4M3FNUZ = 18,
    F8E5M2 = 19,
    F8E5M2FNUZ = 20,
    U4 = 21,
    I4 = 22,
    F4E2M1 = 23,
    F8E8M0 = 24,
    U2 = 25,
    I2 = 26,
}

/// How many elements share one byte, or how many bytes one element takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementSize {
    /// `n` bytes per element.
    Bytes(usize),
    /// `n` bits per element, packed low bits first (sub-byte types).
    Bits(usize),
    /// Variable length (strings).
    Variable,
}

impl DataType {
    pub const ALL: [DataType; 27] = [
        DataType::Undefined,
        DataType::F32,
        DataType::U8,
        DataType::I8,
        DataType::U16,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::String,
        DataType::Bool,
        DataType::F16,
        DataType::F64,
        DataType::U32,
        DataType::U64,
        DataType::C64,
        DataType::C128,
        DataType::BF16,
        DataType::F8E4M3FN,
        DataType::F8E4M3FNUZ,
        DataType::F8E5M2,
        DataType::F8E5M2FNUZ,
        DataType::U4,
        DataType::I4,
        DataType::F4E2M1,
        DataType::F8E8M0,
        DataType::U2,
        DataType::I2,
    ];

    /// The ONNX code of this type.
    pub fn onnx_code(self) -> i32 {
        self as i32
    }

    /// The type with this ONNX code, if Kiln knows it.
    pub fn from_onnx(code: i32) -> Option<DataType> {
        usize::try_from(code).ok().and_then(|i| DataType::ALL.get(i).copied())
    }

    pub fn element_size(self) -> ElementSize {
        use DataType::*;
        match self {
            Undefined => ElementSize::Bytes(0),
            String => ElementSize::Variable,
            U8 | I8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => ElementSize::Bytes(1),
            U16 | I16 | F16 | BF16 => ElementSize::Bytes(2),
            F32 | I32 | U32 => ElementSize::Bytes(4),
            F64 | I64 | U64 | C64 => ElementSize::Bytes(8),
            C128 => ElementSize::Bytes(16),
            U4 | I4 | F4E2M1 => ElementSize::Bits(4),
            U2 | I2 => ElementSize::Bits(2),
        }
    }

    /// Bytes needed to store `count` elements packed, or `None` for strings or on overflow.
    pub fn storage_bytes(self, count: u64) -> Option<u64> {
        match self.element_size() {
            ElementSize::Bytes(n) => count.checked_mul(n as u64),
            ElementSize::Bits(b) => {
                let per_byte = 8 / b as u64;
                Some(count.div_ceil(per_byte))
            }
            ElementSize::Variable => None,
        }
    }

    pub fn is_float(self) -> bool {
        use DataType::*;
        matches!(
            self,
            F32 | F16 | BF16 | F64 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0
        )
    }

    pub fn is_integer(self) -> bool {
        use DataType::*;
        matches!(self, U8 | I8 | U16 | I16 | I32 | I64 | U32 | U64 | U4 | I4 | U2 | I2)
    }

    pub fn is_signed_integer(self) -> bool {
        use DataType::*;
        matches!(self, I8 | I16 | I32 | I64 | I4 | I2)
    }

    /// The lowercase name used in dumps, reports and the CLI (`f32`, `i4`, `f8e4m3fn`…).
    pub fn name(self) -> &'static str {
        use DataType::*;
        match self {
            Undefined => "undefined",
            F32 => "f32",
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            String => "string",
            Bool => "bool",
            F16 => "f16",
            F64 => "f64",
            U32 => "u32",
            U64 => "u64",
            C64 => "c64",
            C128 => "c128",
            BF16 => "bf16",
            F8E4M3FN => "f8e4m3fn",
            F8E4M3FNUZ => "f8e4m3fnuz",
            F8E5M2 => "f8e5m2",
            F8E5M2FNUZ => "f8e5m2fnuz",
            U4 => "u4",
            I4 => "i4",
            F4E2M1 => "f4e2m1",
            F8E8M0 => "f8e8m0",
            U2 => "u2",
            I2 => "i2",
        }
    }

    /// Parse a name produced by [`DataType::name`].
    pub fn from_name(name: &str) -> Option<DataType> {
        DataType::ALL.iter().copied().find(|d| d.name() == name)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for (i, d) in DataType::ALL.iter().enumerate() {
            assert_eq!(d.onnx_code(), i as i32);
            assert_eq!(DataType::from_onnx(i as i32), Some(*d));
            assert_eq!(DataType::from_name(d.name()), Some(*d));
        }
        assert_eq!(DataType::from_onnx(27), None);
        assert_eq!(DataType::from_onnx(-1), None);
    }

    #[test]
    fn packed_sizes() {
        assert_eq!(DataType::I4.storage_bytes(5), Some(3));
        assert_eq!(DataType::U2.storage_bytes(5), Some(2));
        assert_eq!(DataType::F16.storage_bytes(3), Some(6));
        assert_eq!(DataType::String.storage_bytes(3), None);
        assert_eq!(DataType::F64.storage_bytes(u64::MAX), None);
    }
}
