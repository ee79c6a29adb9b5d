//! Known values: the contents of small tensors, carried through shape computations.
//!
//! Integer elements are [`Dim`]s so that a shape vector of a symbolic tensor keeps its
//! names (`[batch, seq, 768]`) and unknown entries stay unknown without losing the rest.

use crate::dtype::DataType;
use crate::ir::{Dim, DimValue};
use crate::tensor::Tensor;

/// Tensors with more elements than this are not tracked.
pub const MAX_KNOWN_ELEMS: usize = 1024;

/// The element count of a shape, `None` on overflow.
pub(crate) fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The elements of a known value.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownData {
    /// Integer or bool elements; entries may be symbolic or unknown.
    Ints(Vec<Dim>),
    /// Floating-point elements, all known.
    Floats(Vec<f64>),
}

/// A tensor whose contents are (partly) known during inference.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub dims: Vec<usize>,
    pub data: KnownData,
}

impl Known {
    /// An integer tensor of shape `dims`.
    pub fn ints(dims: Vec<usize>, v: &[i64]) -> Known {
        Known { dims, data: KnownData::Ints(v.iter().map(|&x| Dim::known(x)).collect()) }
    }

    /// A rank-1 vector of possibly symbolic entries (a shape vector).
    pub fn dim_vec(v: Vec<Dim>) -> Known {
        Known { dims: vec![v.len()], data: KnownData::Ints(v) }
    }

    /// Entries of shape `dims`, possibly symbolic.
    pub fn dim_tensor(dims: Vec<usize>, v: Vec<Dim>) -> Option<Known> {
        (numel(&dims) == Some(v.len())).then_some(Known { dims, data: KnownData::Ints(v) })
    }

    pub fn floats(dims: Vec<usize>, v: Vec<f64>) -> Option<Known> {
        (numel(&dims) == Some(v.len())).then_some(Known { dims, data: KnownData::Floats(v) })
    }

    /// The contents of a small numeric tensor.
    pub fn from_tensor(t: &Tensor) -> Option<Known> {
        if t.len() > MAX_KNOWN_ELEMS as u64 {
            return None;
        }
        let dims = t.dims().to_vec();
        let d = t.dtype();
        if d.is_integer() || d == DataType::Bool {
            let ints: Vec<i64> = match d {
                DataType::I64 => t.to_vec::<i64>().ok()?,
                DataType::U64 => {
                    t.to_vec::<u64>().ok()?.into_iter().map(i64::try_from).collect::<Result<_, _>>().ok()?
                }
                _ => t.to_f64_vec().ok()?.into_iter().map(|x| x as i64).collect(),
            };
            return Some(Known::ints(dims, &ints));
        }
        if d.is_float() {
            let f = t.to_f64_vec().ok()?;
            return Known::floats(dims, f);
        }
        None
    }

    pub fn len(&self) -> usize {
        match &self.data {
            KnownData::Ints(v) => v.len(),
            KnownData::Floats(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer entries, possibly symbolic.
    pub fn as_dims(&self) -> Option<&[Dim]> {
        match &self.data {
            KnownData::Ints(v) => Some(v),
            KnownData::Floats(_) => None,
        }
    }

    /// All entries as plain integers, if every one is a number.
    pub fn to_ints(&self) -> Option<Vec<i64>> {
        self.as_dims()?.iter().map(Dim::as_known).collect()
    }

    /// All entries as floats (integers converted), if every one is a number.
    pub fn to_floats(&self) -> Option<Vec<f64>> {
        match &self.data {
            KnownData::Floats(v) => Some(v.clone()),
            KnownData::Ints(_) => Some(self.to_ints()?.into_iter().map(|x| x as f64).collect()),
        }
    }

    /// The same elements under a new shape of equal element count.
    pub fn reshaped(&self, dims: Vec<usize>) -> Option<Known> {
        (numel(&dims) == Some(self.len())).then(|| Known { dims, data: self.data.clone() })
    }

    /// Elements picked by flat indices (out-of-range indices give `None`).
    pub fn pick(&self, dims: Vec<usize>, idx: &[usize]) -> Option<Known> {
        let data = match &self.data {
            KnownData::Ints(v) => KnownData::Ints(idx.iter().map(|&i| v.get(i).cloned()).collect::<Option<_>>()?),
            KnownData::Floats(v) => KnownData::Floats(idx.iter().map(|&i| v.get(i).copied()).collect::<Option<_>>()?),
        };
        let k = Known { dims, data };
        (numel(&k.dims) == Some(k.len())).then_some(k)
    }
}

/// Whether a dim is a known number.
pub(crate) fn is_num(d: &Dim) -> bool {
    matches!(d.value, DimValue::Known(_))
}
