//! Reductions (`ReduceX`, `ArgMax`/`ArgMin`), with known values folded for shape arithmetic.

use super::{Registry, bare, code, dim_add, dim_mul, norm_axes, norm_axis, tt};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim};
use crate::shape::known::{Known, KnownData};
use crate::shape::{InferCtx, InferResult, Param};

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(
        &[
            "ReduceSum",
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        ],
        reduce,
    );
    r.onnx(&["ArgMax", "ArgMin"], arg_reduce);
}

fn reduce(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let since = if cx.node.op_type == "ReduceSum" { 13 } else { 18 };
    let keep = cx.node.attr_int("keepdims").unwrap_or(1) != 0;
    let noop = cx.node.attr_int("noop_with_empty_axes").unwrap_or(0) != 0;
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = input.len();
    let axes: Vec<usize> = match cx.ints_param("axes", 1, since) {
        Param::Known(a) if a.is_empty() && noop => return Ok(vec![tt(elem, Some(input.iter().map(bare).collect()))]),
        Param::Known(a) if a.is_empty() => (0..r).collect(),
        Param::Known(a) => norm_axes(&a, r)?,
        Param::Absent if noop => return Ok(vec![tt(elem, Some(input.iter().map(bare).collect()))]),
        Param::Absent => (0..r).collect(),
        Param::Unknown if keep => {
            let s = input.iter().map(|d| if d.as_known() == Some(1) { Dim::known(1) } else { Dim::unknown() });
            return Ok(vec![tt(elem, Some(s.collect()))]);
        }
        Param::Unknown => return Ok(vec![tt(elem, None)]),
    };
    let out = reduced_shape(&input, &axes, keep);
    if let Some(k) = cx.known(0)
        && let Some(res) = reduce_known(k, &axes, keep, &cx.node.op_type)
    {
        cx.set_known(0, res);
    }
    Ok(vec![tt(elem, Some(out))])
}

fn reduced_shape(input: &[Dim], axes: &[usize], keep: bool) -> Vec<Dim> {
    input
        .iter()
        .enumerate()
        .filter_map(|(i, d)| if axes.contains(&i) { keep.then(|| Dim::known(1)) } else { Some(bare(d)) })
        .collect()
}

/// Folds Sum/Prod/Max/Min over integer known values.
fn reduce_known(k: &Known, axes: &[usize], keep: bool, op: &str) -> Option<Known> {
    let KnownData::Ints(v) = &k.data else { return None };
    if k.dims.len() < axes.iter().copied().max().map_or(0, |m| m + 1) {
        return None;
    }
    let out_dims_keep: Vec<usize> =
        k.dims.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let total = crate::shape::known::numel(&out_dims_keep)?;
    let mut acc: Vec<Option<Dim>> = vec![None; total];
    for (flat, x) in v.iter().enumerate() {
        // Output index: the input index with reduced axes set to 0.
        let mut rem = flat;
        let mut o = 0;
        let mut stride = 1;
        for a in (0..k.dims.len()).rev() {
            let d = k.dims[a].max(1);
            let i = rem % d;
            rem /= d;
            if !axes.contains(&a) {
                o += i * stride;
            }
            stride = stride.saturating_mul(out_dims_keep[a].max(1));
        }
        let slot = acc.get_mut(o)?;
        *slot = Some(match slot.take() {
            None => super::bare(x),
            Some(prev) => match op {
                "ReduceSum" => dim_add(&prev, x),
                "ReduceProd" => dim_mul(&prev, x),
                "ReduceMax" => match (prev.as_known(), x.as_known()) {
                    (Some(a), Some(b)) => Dim::known(a.max(b)),
                    _ => Dim::unknown(),
                },
                "ReduceMin" => match (prev.as_known(), x.as_known()) {
                    (Some(a), Some(b)) => Dim::known(a.min(b)),
                    _ => Dim::unknown(),
                },
                _ => return None,
            },
        });
    }
    let empty = match op {
        "ReduceSum" => Dim::known(0),
        "ReduceProd" => Dim::known(1),
        _ => return None,
    };
    let data: Vec<Dim> = acc.into_iter().map(|d| d.unwrap_or_else(|| empty.clone())).collect();
    let dims = if keep {
        out_dims_keep
    } else {
        k.dims.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
    };
    Known::dim_tensor(dims, data)
}

fn arg_reduce(cx: &mut InferCtx<'_>) -> InferResult {
    let i64t = code(DataType::I64);
    let keep = cx.node.attr_int("keepdims").unwrap_or(1) != 0;
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(i64t, None)]) };
    let a = norm_axis(cx.node.attr_int("axis").unwrap_or(0), input.len())?;
    Ok(vec![tt(i64t, Some(reduced_shape(&input, &[a], keep)))])
}
