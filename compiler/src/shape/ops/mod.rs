//! The op table and the helpers the per-family inference functions share.

mod contrib;
mod control;
mod elementwise;
mod matmul;
mod misc;
mod nn;
mod reduce;
mod tensor;

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{InferCtx, InferFn, InferResult};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim, DimValue, Type};

/// Domain → op type → inference function.
pub(super) type Table = HashMap<&'static str, HashMap<&'static str, InferFn>>;

/// Registers functions into the table.
pub(super) struct Registry<'a>(&'a mut Table);

impl Registry<'_> {
    pub(super) fn add(&mut self, domain: &'static str, ops: &[&'static str], f: InferFn) {
        let d = self.0.entry(domain).or_default();
        for op in ops {
            d.insert(op, f);
        }
    }

    pub(super) fn onnx(&mut self, ops: &[&'static str], f: InferFn) {
        self.add("", ops, f);
    }
}

pub(super) const MS: &str = "com.microsoft";

/// The one op table.
pub(super) fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Table::new();
        let mut r = Registry(&mut t);
        elementwise::register(&mut r);
        nn::register(&mut r);
        tensor::register(&mut r);
        reduce::register(&mut r);
        matmul::register(&mut r);
        control::register(&mut r);
        misc::register(&mut r);
        contrib::register(&mut r);
        t
    })
}

// ---- helpers shared by the op families ----

pub(super) fn tt(elem: Option<i32>, shape: Option<Vec<Dim>>) -> Option<Type> {
    super::tensor_type(elem, shape)
}

pub(super) fn code(d: DataType) -> Option<i32> {
    Some(d.onnx_code())
}

pub(super) fn dims(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&x| Dim::known(x)).collect()
}

pub(super) fn unknown_dims(n: usize) -> Vec<Dim> {
    vec![Dim::unknown(); n]
}

/// Ranks beyond this are taken as garbage rather than allocated.
pub(super) const MAX_RANK: i64 = 256;

/// `n` unknown dims for a rank read from data (`None` when it is not a plausible rank).
pub(super) fn rank_dims(n: i64) -> Option<Vec<Dim>> {
    (0..=MAX_RANK).contains(&n).then(|| unknown_dims(n as usize))
}

/// A dim without its denotation (inferred dims carry none).
pub(super) fn bare(d: &Dim) -> Dim {
    Dim { value: d.value.clone(), denotation: None }
}

pub(super) fn bare_all(d: &[Dim]) -> Vec<Dim> {
    d.iter().map(bare).collect()
}

/// Normalizes a possibly negative axis against `rank`.
pub(super) fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) { Ok(a as usize) } else { Err(format!("axis {axis} out of range for rank {rank}")) }
}

pub(super) fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            return Err(format!("axis {a} repeated"));
        }
        out.push(n);
    }
    Ok(out)
}

pub(super) fn dim_add(a: &Dim, b: &Dim) -> Dim {
    match (&a.value, &b.value) {
        (DimValue::Known(x), DimValue::Known(y)) => x.checked_add(*y).map_or_else(Dim::unknown, Dim::known),
        (_, DimValue::Known(0)) => bare(a),
        (DimValue::Known(0), _) => bare(b),
        _ => Dim::unknown(),
    }
}

pub(super) fn dim_sub(a: &Dim, b: &Dim) -> Dim {
    match (&a.value, &b.value) {
        (DimValue::Known(x), DimValue::Known(y)) => x.checked_sub(*y).map_or_else(Dim::unknown, Dim::known),
        (_, DimValue::Known(0)) => bare(a),
        (DimValue::Symbol(x), DimValue::Symbol(y)) if x == y => Dim::known(0),
        _ => Dim::unknown(),
    }
}

pub(super) fn dim_mul(a: &Dim, b: &Dim) -> Dim {
    match (&a.value, &b.value) {
        (DimValue::Known(x), DimValue::Known(y)) => x.checked_mul(*y).map_or_else(Dim::unknown, Dim::known),
        (_, DimValue::Known(1)) => bare(a),
        (DimValue::Known(1), _) => bare(b),
        (_, DimValue::Known(0)) | (DimValue::Known(0), _) => Dim::known(0),
        _ => Dim::unknown(),
    }
}

/// Integer division rounding toward zero (ONNX integer `Div`); exact symbolic cases kept.
pub(super) fn dim_div(a: &Dim, b: &Dim) -> Dim {
    match (&a.value, &b.value) {
        (DimValue::Known(x), DimValue::Known(y)) if *y != 0 => x.checked_div(*y).map_or_else(Dim::unknown, Dim::known),
        (_, DimValue::Known(1)) => bare(a),
        (DimValue::Symbol(x), DimValue::Symbol(y)) if x == y => Dim::known(1),
        _ => Dim::unknown(),
    }
}

/// The product of dims: known if all are, a lone symbol times ones stays that symbol.
pub(super) fn dim_product(d: &[Dim]) -> Dim {
    d.iter().fold(Dim::known(1), |acc, x| dim_mul(&acc, x))
}

/// `ceil(a / b)` for positive `b`.
pub(super) fn ceil_div(a: i64, b: i64) -> Option<i64> {
    if b <= 0 {
        return None;
    }
    Some(a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0))
}

/// The type of input `i`, unchanged.
pub(super) fn same(cx: &InferCtx<'_>, i: usize) -> Option<Type> {
    cx.inputs.get(i).cloned().flatten()
}

/// A tensor with input `i`'s shape and another element type.
pub(super) fn with_elem(cx: &InferCtx<'_>, i: usize, elem: Option<i32>) -> Option<Type> {
    tt(elem, cx.shape(i).map(bare_all))
}

/// Output 0 has input 0's type.
pub(super) fn same_as_first(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![same(cx, 0)])
}

/// The `dtype`-like attribute `name` if set, else `default`.
pub(super) fn dtype_attr(cx: &InferCtx<'_>, name: &str, default: Option<i32>) -> Option<i32> {
    cx.node.attr_int(name).and_then(|v| i32::try_from(v).ok()).or(default)
}
