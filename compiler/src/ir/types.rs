//! Value types: tensors with symbolic shapes, and the other ONNX type constructors.

use std::fmt;

use crate::dtype::DataType;

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DimValue {
    Known(i64),
    /// A named symbolic dimension (`batch`, `seq`…).
    Symbol(String),
    /// Neither a value nor a name.
    Unknown,
}

/// A dimension and its optional ONNX denotation (`DATA_BATCH`…).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dim {
    pub value: DimValue,
    pub denotation: Option<String>,
}

impl Dim {
    pub fn known(v: i64) -> Dim {
        Dim { value: DimValue::Known(v), denotation: None }
    }

    pub fn symbol(s: impl Into<String>) -> Dim {
        Dim { value: DimValue::Symbol(s.into()), denotation: None }
    }

    pub fn unknown() -> Dim {
        Dim { value: DimValue::Unknown, denotation: None }
    }

    pub fn as_known(&self) -> Option<i64> {
        match self.value {
            DimValue::Known(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            DimValue::Known(v) => write!(f, "{v}"),
            DimValue::Symbol(s) => f.write_str(s),
            DimValue::Unknown => f.write_str("?"),
        }
    }
}

/// A tensor type: element type and, when known, the shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TensorType {
    /// The ONNX element type code as written (kept raw so unknown codes survive).
    pub elem_type: Option<i32>,
    /// `None`: rank unknown. `Some(vec![])`: a scalar.
    pub shape: Option<Vec<Dim>>,
}

impl TensorType {
    pub fn new(dtype: DataType, shape: Option<Vec<Dim>>) -> TensorType {
        TensorType { elem_type: Some(dtype.onnx_code()), shape }
    }

    /// A fully known shape.
    pub fn with_dims(dtype: DataType, dims: &[usize]) -> TensorType {
        TensorType::new(dtype, Some(dims.iter().map(|&d| Dim::known(d as i64)).collect()))
    }

    pub fn dtype(&self) -> Option<DataType> {
        self.elem_type.and_then(DataType::from_onnx)
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// The shape if every dimension is a known non-negative number.
    pub fn concrete_dims(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(|d| d.as_known().and_then(|v| usize::try_from(v).ok())).collect()
    }
}

/// The kind of an ONNX type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeKind {
    Tensor(TensorType),
    SparseTensor(TensorType),
    /// Element type may be absent in the file.
    Sequence(Option<Box<Type>>),
    Map {
        key_type: Option<i32>,
        value_type: Option<Box<Type>>,
    },
    Optional(Option<Box<Type>>),
    Opaque {
        domain: Option<String>,
        name: Option<String>,
    },
    /// A `TypeProto` with no variant set.
    Unset,
}

/// An ONNX type with its optional denotation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Type {
    pub kind: TypeKind,
    pub denotation: Option<String>,
}

impl Type {
    pub fn tensor(t: TensorType) -> Type {
        Type { kind: TypeKind::Tensor(t), denotation: None }
    }

    /// The tensor type, if this is a (dense) tensor.
    pub fn as_tensor(&self) -> Option<&TensorType> {
        match &self.kind {
            TypeKind::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

fn elem_name(code: Option<i32>) -> String {
    match code {
        None => "?".to_string(),
        Some(c) => DataType::from_onnx(c).map_or_else(|| format!("dtype#{c}"), |d| d.name().to_string()),
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&elem_name(self.elem_type))?;
        match &self.shape {
            None => f.write_str("[..]"),
            Some(dims) => {
                f.write_str("[")?;
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |t: &Option<Box<Type>>| t.as_ref().map_or_else(|| "?".to_string(), |t| t.to_string());
        match &self.kind {
            TypeKind::Tensor(t) => write!(f, "{t}"),
            TypeKind::SparseTensor(t) => write!(f, "sparse {t}"),
            TypeKind::Sequence(t) => write!(f, "seq<{}>", opt(t)),
            TypeKind::Map { key_type, value_type } => write!(f, "map<{},{}>", elem_name(*key_type), opt(value_type)),
            TypeKind::Optional(t) => write!(f, "optional<{}>", opt(t)),
            TypeKind::Opaque { domain, name } => {
                write!(f, "opaque<{}.{}>", domain.as_deref().unwrap_or(""), name.as_deref().unwrap_or(""))
            }
            TypeKind::Unset => f.write_str("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_shapes() {
        let t = TensorType::new(DataType::F32, Some(vec![Dim::symbol("N"), Dim::known(3), Dim::unknown()]));
        assert_eq!(t.to_string(), "f32[N,3,?]");
        assert_eq!(t.concrete_dims(), None);
        let s = Type {
            kind: TypeKind::Sequence(Some(Box::new(Type::tensor(TensorType::with_dims(DataType::I64, &[2]))))),
            denotation: None,
        };
        assert_eq!(s.to_string(), "seq<i64[2]>");
        assert_eq!(TensorType::with_dims(DataType::I64, &[2, 5]).concrete_dims(), Some(vec![2, 5]));
    }
}
