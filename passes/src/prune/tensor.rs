//! Tensor helpers for pruning: keeping a subset of indices along one axis, and per-slice
//! magnitudes for importance.

use kiln_compiler::Tensor;
use kiln_compiler::dtype::ElementSize;

use super::PruneError;

/// The tensor with only the indices `keep` (sorted, in range) along `axis`.
pub(crate) fn take(t: &Tensor, axis: usize, keep: &[usize], what: &str) -> Result<Tensor, PruneError> {
    let bad = |m: String| PruneError::Tensor { tensor: what.to_string(), message: m };
    let dims = t.dims();
    let Some(&len) = dims.get(axis) else {
        return Err(bad(format!("has rank {}, no axis {axis}", dims.len())));
    };
    if let Some(&k) = keep.iter().find(|&&k| k >= len) {
        return Err(bad(format!("index {k} out of range on axis {axis} of size {len}")));
    }
    let ElementSize::Bytes(size) = t.dtype().element_size() else {
        return Err(bad(format!("elements of type {} are not whole bytes", t.dtype())));
    };
    let bytes = t.bytes().ok_or_else(|| bad("is a string tensor".into()))?;
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product::<usize>() * size;
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        let base = o * len * inner;
        for &k in keep {
            out.extend_from_slice(&bytes[base + k * inner..base + (k + 1) * inner]);
        }
    }
    let mut new_dims = dims.to_vec();
    new_dims[axis] = keep.len();
    Tensor::new(t.dtype(), new_dims, out.into()).map_err(|e| bad(e.to_string()))
}

/// How per-slice magnitude is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Norm {
    /// Sum of absolute values.
    #[default]
    L1,
    /// Euclidean norm.
    L2,
}

/// The norm of every slice of `t` along `axis` (one value per index of that axis).
pub(crate) fn slice_norms(t: &Tensor, axis: usize, norm: Norm, what: &str) -> Result<Vec<f64>, PruneError> {
    let bad = |m: String| PruneError::Tensor { tensor: what.to_string(), message: m };
    let dims = t.dims();
    let Some(&len) = dims.get(axis) else {
        return Err(bad(format!("has rank {}, no axis {axis}", dims.len())));
    };
    let values = t.to_f64_vec().map_err(|e| bad(e.to_string()))?;
    let inner: usize = dims[axis + 1..].iter().product();
    let mut acc = vec![0.0f64; len];
    for (i, v) in values.iter().enumerate() {
        let k = (i / inner.max(1)) % len.max(1);
        acc[k] += match norm {
            Norm::L1 => v.abs(),
            Norm::L2 => v * v,
        };
    }
    if norm == Norm::L2 {
        acc.iter_mut().for_each(|a| *a = a.sqrt());
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_along_any_axis() {
        let t = Tensor::from_slice(vec![2, 3], &[0f32, 1., 2., 3., 4., 5.]).unwrap();
        let a0 = take(&t, 0, &[1], "t").unwrap();
        assert_eq!(a0.to_vec::<f32>().unwrap(), vec![3., 4., 5.]);
        let a1 = take(&t, 1, &[0, 2], "t").unwrap();
        assert_eq!(a1.dims(), &[2, 2]);
        assert_eq!(a1.to_vec::<f32>().unwrap(), vec![0., 2., 3., 5.]);
        assert!(take(&t, 1, &[3], "t").is_err());
        assert!(take(&t, 2, &[0], "t").is_err());
    }

    #[test]
    fn norms_per_slice() {
        let t = Tensor::from_slice(vec![2, 2], &[3f32, -4., 0., 1.]).unwrap();
        assert_eq!(slice_norms(&t, 0, Norm::L1, "t").unwrap(), vec![7., 1.]);
        assert_eq!(slice_norms(&t, 0, Norm::L2, "t").unwrap(), vec![5., 1.]);
        assert_eq!(slice_norms(&t, 1, Norm::L1, "t").unwrap(), vec![3., 5.]);
    }
}
