//! Shape manipulation: Shape, Reshape, Transpose, Concat, Slice, Gather, Squeeze/Unsqueeze,
//! Flatten, Expand, Split, Pad, Tile, Range, ConstantOfShape, Constant and friends. These
//! carry known values, so shape computations built from them fold to (symbolic) shapes.

use super::elementwise::broadcast_known;
use super::{
    Registry, bare, bare_all, ceil_div, code, dim_add, dim_mul, dim_product, dims, norm_axes, norm_axis, rank_dims,
    same, tt, unknown_dims, with_elem,
};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, AttrValue, Dim, DimValue};
use crate::shape::known::{Known, KnownData, MAX_KNOWN_ELEMS, is_num, numel};
use crate::shape::{InferCtx, InferResult, Param, broadcast_shapes};
use crate::tensor::Tensor;

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(&["Shape"], shape);
    r.onnx(&["Size"], size);
    r.onnx(&["Reshape"], reshape);
    r.onnx(&["Transpose"], transpose);
    r.onnx(&["Concat"], concat);
    r.onnx(&["Slice"], slice);
    r.onnx(&["Gather"], gather);
    r.onnx(&["GatherElements"], gather_elements);
    r.onnx(&["GatherND"], gather_nd);
    r.onnx(&["Scatter", "ScatterElements", "ScatterND", "TensorScatter"], |cx| Ok(vec![same(cx, 0)]));
    r.onnx(&["Squeeze"], squeeze);
    r.onnx(&["Unsqueeze"], unsqueeze);
    r.onnx(&["Flatten"], flatten);
    r.onnx(&["Expand"], expand);
    r.onnx(&["Split"], split);
    r.onnx(&["Pad"], pad);
    r.onnx(&["Tile"], tile);
    r.onnx(&["Range"], range);
    r.onnx(&["ConstantOfShape"], constant_of_shape);
    r.onnx(&["Constant"], constant);
    r.onnx(&["EyeLike"], eye_like);
    r.onnx(&["OneHot"], one_hot);
    r.onnx(&["NonZero"], non_zero);
    r.onnx(&["TopK"], top_k);
    r.onnx(&["Unique"], unique);
    r.onnx(&["Compress"], compress);
    r.onnx(&["CenterCropPad"], center_crop_pad);
}

fn shape(cx: &mut InferCtx<'_>) -> InferResult {
    let i64t = code(DataType::I64);
    let Some(s) = cx.shape(0).map(bare_all) else { return Ok(vec![tt(i64t, Some(vec![Dim::unknown()]))]) };
    let r = s.len() as i64;
    let clamp = |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
    let start = clamp(cx.node.attr_int("start").unwrap_or(0));
    let end = clamp(cx.node.attr_int("end").unwrap_or(r));
    let sub: Vec<Dim> = if start < end { s[start..end].to_vec() } else { Vec::new() };
    let n = sub.len() as i64;
    cx.set_known(0, Known::dim_vec(sub));
    Ok(vec![tt(i64t, Some(vec![Dim::known(n)]))])
}

fn size(cx: &mut InferCtx<'_>) -> InferResult {
    if let Some(s) = cx.shape(0) {
        let p = dim_product(s);
        if !matches!(p.value, DimValue::Unknown) {
            cx.set_known(0, Known { dims: vec![], data: KnownData::Ints(vec![p]) });
        }
    }
    Ok(vec![tt(code(DataType::I64), Some(vec![]))])
}

/// Resolves a `-1` entry: the input's element count over the other output dims, cancelling
/// equal symbols and input dims copied by `0`.
fn infer_minus_one(input: &[Dim], copied: &[usize], others: &[Dim]) -> Result<Dim, String> {
    let mut num: Vec<&Dim> = input.iter().enumerate().filter(|(i, _)| !copied.contains(i)).map(|(_, d)| d).collect();
    let mut num_k: i64 = 1;
    let mut den_k: i64 = 1;
    let mut den_syms: Vec<&Dim> = Vec::new();
    for d in others {
        match d.value {
            DimValue::Known(v) => den_k = den_k.checked_mul(v).ok_or("shape product overflows")?,
            DimValue::Symbol(_) => {
                if let Some(p) = num.iter().position(|x| *x == d) {
                    num.remove(p);
                } else {
                    den_syms.push(d);
                }
            }
            DimValue::Unknown => return Ok(Dim::unknown()),
        }
    }
    let mut num_syms = Vec::new();
    for d in num {
        match d.value {
            DimValue::Known(v) => num_k = num_k.checked_mul(v).ok_or("shape product overflows")?,
            DimValue::Symbol(_) => num_syms.push(d),
            DimValue::Unknown => return Ok(Dim::unknown()),
        }
    }
    if !den_syms.is_empty() {
        return Ok(Dim::unknown());
    }
    match num_syms.as_slice() {
        [] if den_k == 0 => Ok(Dim::unknown()),
        [] if num_k % den_k == 0 => Ok(Dim::known(num_k / den_k)),
        [] => Err(format!("cannot reshape {num_k} elements into a multiple of {den_k}")),
        [s] if num_k == den_k => Ok(bare(s)),
        _ => Ok(Dim::unknown()),
    }
}

fn reshape(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let target: Option<Vec<Dim>> = if cx.opset < 5 {
        cx.node.attr_ints("shape").map(dims)
    } else {
        cx.known(1).and_then(Known::as_dims).map(bare_all)
    };
    let Some(target) = target else {
        let rank = cx.shape(1).and_then(|s| s.first()).and_then(Dim::as_known);
        return Ok(vec![tt(elem, rank.and_then(rank_dims))]);
    };
    let allowzero = cx.node.attr_int("allowzero").unwrap_or(0) != 0;
    let input = cx.shape(0).map(<[Dim]>::to_vec);
    let mut out = Vec::with_capacity(target.len());
    let mut copied = Vec::new();
    let mut minus_one = None;
    for (i, t) in target.iter().enumerate() {
        match t.value {
            DimValue::Known(0) if !allowzero => {
                copied.push(i);
                out.push(input.as_ref().and_then(|s| s.get(i)).map_or_else(Dim::unknown, bare));
            }
            DimValue::Known(-1) => {
                if minus_one.replace(i).is_some() {
                    return Err("Reshape shape has more than one -1".into());
                }
                out.push(Dim::unknown());
            }
            DimValue::Known(v) if v < -1 => return Err(format!("Reshape shape has invalid entry {v}")),
            _ => out.push(t.clone()),
        }
    }
    if let Some(input) = &input {
        if let Some(m) = minus_one {
            let others: Vec<Dim> = out.iter().enumerate().filter(|(i, _)| *i != m).map(|(_, d)| d.clone()).collect();
            // Copied dims cancel themselves: drop them from both sides.
            let others: Vec<Dim> = others
                .into_iter()
                .enumerate()
                .filter(|(j, _)| {
                    let pos = if *j >= m { j + 1 } else { *j };
                    !copied.contains(&pos)
                })
                .map(|(_, d)| d)
                .collect();
            out[m] = infer_minus_one(input, &copied, &others)?;
        } else if let (Some(a), Some(b)) = (
            input.iter().map(Dim::as_known).collect::<Option<Vec<_>>>(),
            out.iter().map(Dim::as_known).collect::<Option<Vec<_>>>(),
        ) {
            let prod = |v: &[i64]| v.iter().try_fold(1i64, |acc, &x| acc.checked_mul(x));
            if prod(&a) != prod(&b) {
                return Err(format!("cannot reshape {a:?} into {b:?}"));
            }
        }
    }
    if let (Some(k), Some(d)) = (cx.known(0), concrete(&out))
        && let Some(r) = k.reshaped(d)
    {
        cx.set_known(0, r);
    }
    Ok(vec![tt(elem, Some(out))])
}

/// Dims as sizes, if all are known and non-negative.
fn concrete(d: &[Dim]) -> Option<Vec<usize>> {
    d.iter().map(|x| x.as_known().and_then(|v| usize::try_from(v).ok())).collect()
}

fn transpose(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(s) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = s.len();
    let perm: Vec<usize> = match cx.node.attr_ints("perm") {
        Some(p) => {
            let p = norm_axes(p, r)?;
            if p.len() != r {
                return Err(format!("perm has {} entries for rank {r}", p.len()));
            }
            p
        }
        None => (0..r).rev().collect(),
    };
    if let Some(k) = cx.known(0).filter(|k| k.dims.len() == r)
        && let Some(t) = transpose_known(k, &perm)
    {
        cx.set_known(0, t);
    }
    Ok(vec![tt(elem, Some(perm.iter().map(|&i| bare(&s[i])).collect()))])
}

fn transpose_known(k: &Known, perm: &[usize]) -> Option<Known> {
    let r = k.dims.len();
    let mut strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(k.dims[i + 1]);
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| k.dims[p]).collect();
    let total = numel(&out_dims)?;
    if total > MAX_KNOWN_ELEMS {
        return None;
    }
    let mut flat = Vec::with_capacity(total);
    for o in 0..total {
        let mut rem = o;
        let mut src = 0;
        for a in (0..r).rev() {
            let j = rem % out_dims[a].max(1);
            rem /= out_dims[a].max(1);
            src += j * strides[perm[a]];
        }
        flat.push(src);
    }
    k.pick(out_dims, &flat)
}

/// The one dim several inputs must agree on: a known size if any has it, a shared name.
fn agree(ds: &[&Dim]) -> Dim {
    if let Some(k) = ds.iter().find(|d| is_num(d)) {
        return bare(k);
    }
    match ds.first() {
        Some(f) if ds.iter().all(|d| d == f) => bare(f),
        _ => Dim::unknown(),
    }
}

fn concat(cx: &mut InferCtx<'_>) -> InferResult {
    let n = cx.node.inputs().len();
    let elem = (0..n).find_map(|i| cx.elem(i));
    let axis = cx.node.attr_int("axis").ok_or("Concat has no axis")?;
    let shapes: Vec<Option<&[Dim]>> = (0..n).map(|i| cx.shape(i)).collect();
    let Some(rank) = shapes.iter().flatten().map(|s| s.len()).next() else { return Ok(vec![tt(elem, None)]) };
    if shapes.iter().flatten().any(|s| s.len() != rank) {
        return Err("Concat inputs have different ranks".into());
    }
    let a = norm_axis(axis, rank)?;
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        if i == a {
            let sum = if shapes.iter().all(Option::is_some) {
                shapes.iter().flatten().fold(Dim::known(0), |acc, s| dim_add(&acc, &s[i]))
            } else {
                Dim::unknown()
            };
            out.push(sum);
        } else {
            let ds: Vec<&Dim> = shapes.iter().flatten().map(|s| &s[i]).collect();
            out.push(agree(&ds));
        }
    }
    // Known values: concatenate along the axis.
    let ks: Option<Vec<&Known>> = (0..n).map(|i| cx.known(i)).collect();
    if let Some(ks) = ks
        && let Some(k) = concat_known(&ks, a)
    {
        cx.set_known(0, k);
    }
    Ok(vec![tt(elem, Some(out))])
}

fn concat_known(ks: &[&Known], axis: usize) -> Option<Known> {
    let first = ks.first()?;
    let rank = first.dims.len();
    if axis >= rank || ks.iter().any(|k| k.dims.len() != rank) {
        return None;
    }
    let outer = numel(&first.dims[..axis])?;
    let inner = numel(&first.dims[axis + 1..])?;
    let mut dims = first.dims.clone();
    dims[axis] = ks.iter().try_fold(0usize, |acc, k| acc.checked_add(k.dims[axis]))?;
    if numel(&dims)? > MAX_KNOWN_ELEMS {
        return None;
    }
    let all_ints = ks.iter().all(|k| matches!(k.data, KnownData::Ints(_)));
    if all_ints {
        let mut out = Vec::new();
        for o in 0..outer {
            for k in ks {
                let chunk = k.dims[axis] * inner;
                out.extend_from_slice(k.as_dims()?.get(o * chunk..(o + 1) * chunk)?);
            }
        }
        Known::dim_tensor(dims, out)
    } else {
        let vs: Vec<Vec<f64>> = ks.iter().map(|k| k.to_floats()).collect::<Option<_>>()?;
        let mut out = Vec::new();
        for o in 0..outer {
            for (k, v) in ks.iter().zip(&vs) {
                let chunk = k.dims[axis] * inner;
                out.extend_from_slice(v.get(o * chunk..(o + 1) * chunk)?);
            }
        }
        Known::floats(dims, out)
    }
}

/// Indices a slice picks along an axis of size `d`.
fn slice_range(start: i64, end: i64, step: i64, d: i64) -> Vec<usize> {
    let (s, e) = if step > 0 {
        let s = if start < 0 { start.saturating_add(d) } else { start }.clamp(0, d);
        let e = if end < 0 { end.saturating_add(d) } else { end }.clamp(0, d);
        (s, e)
    } else {
        let s = if start < 0 { start.saturating_add(d) } else { start }.clamp(0, d - 1);
        let e = if end < 0 { end.saturating_add(d) } else { end }.clamp(-1, d - 1);
        (s, e)
    };
    let mut out = Vec::new();
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        out.push(i as usize);
        if out.len() > MAX_KNOWN_ELEMS {
            break;
        }
        match i.checked_add(step) {
            Some(n) => i = n,
            None => break,
        }
    }
    out
}

/// The length of a slice along an axis of size `d`, without enumerating it.
fn slice_len(start: i64, end: i64, step: i64, d: i64) -> i64 {
    if step > 0 {
        let s = if start < 0 { start.saturating_add(d) } else { start }.clamp(0, d);
        let e = if end < 0 { end.saturating_add(d) } else { end }.clamp(0, d);
        ceil_div(e - s, step).unwrap_or(0).max(0)
    } else {
        let s = if start < 0 { start.saturating_add(d) } else { start }.clamp(0, d - 1);
        let e = if end < 0 { end.saturating_add(d) } else { end }.clamp(-1, d - 1);
        ceil_div(s - e, step.checked_neg().unwrap_or(i64::MAX)).unwrap_or(0).max(0)
    }
}

fn slice(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = input.len();
    let dim_param = |attr: &str, i: usize| -> Param<Vec<Dim>> {
        if cx.opset < 10 {
            cx.node.attr_ints(attr).map_or(Param::Absent, |v| Param::Known(dims(v)))
        } else if !cx.has_input(i) {
            Param::Absent
        } else {
            cx.known(i).and_then(Known::as_dims).map_or(Param::Unknown, |d| Param::Known(d.to_vec()))
        }
    };
    let starts = dim_param("starts", 1);
    let ends = dim_param("ends", 2);
    let axes = match cx.ints_param("axes", 3, 10) {
        Param::Known(a) => Some(norm_axes(&a, r)?),
        Param::Absent => None,
        Param::Unknown => return Ok(vec![tt(elem, Some(unknown_dims(r)))]),
    };
    let steps = if cx.opset < 10 { Param::Absent } else { cx.ints_param("", 4, 10) };
    let (Param::Known(starts), Param::Known(ends)) = (starts, ends) else {
        // Which axes are sliced is known even when the bounds are not.
        let mut out = unknown_dims(r);
        if let Some(ax) = &axes {
            for (i, d) in input.iter().enumerate() {
                if !ax.contains(&i) {
                    out[i] = bare(d);
                }
            }
        }
        return Ok(vec![tt(elem, Some(out))]);
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len()).collect());
    let steps = match steps {
        Param::Known(s) => s,
        Param::Absent => vec![1; axes.len()],
        Param::Unknown => {
            let mut out = input.iter().map(bare).collect::<Vec<_>>();
            for &a in &axes {
                out[a] = Dim::unknown();
            }
            return Ok(vec![tt(elem, Some(out))]);
        }
    };
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return Err("Slice starts, ends, axes and steps differ in length".into());
    }
    if steps.contains(&0) {
        return Err("Slice step is 0".into());
    }
    let mut out: Vec<Dim> = input.iter().map(bare).collect();
    // Per-axis concrete bounds, for slicing known values.
    let mut picks: Vec<Option<(i64, i64, i64)>> = vec![Some((0, i64::MAX, 1)); r];
    for (k, &a) in axes.iter().enumerate() {
        let step = steps[k];
        let d = &input[a];
        // An end given as the axis's own (symbolic) size means "to the end".
        let end = if ends[k].value == d.value && !is_num(d) { Some(i64::MAX) } else { ends[k].as_known() };
        let start = starts[k].as_known();
        picks[a] = match (start, end) {
            (Some(s), Some(e)) => Some((s, e, step)),
            _ => None,
        };
        out[a] = match (start, end, d.as_known()) {
            (Some(s), Some(e), Some(n)) => Dim::known(slice_len(s, e, step, n)),
            (Some(0), Some(e), None) if step == 1 && e >= i64::MAX / 2 => bare(d),
            // `x[:, :seq]` with a symbolic end: the end is taken to fit (position-id tables).
            (Some(0), None, Some(_)) if step == 1 && matches!(ends[k].value, DimValue::Symbol(_)) => bare(&ends[k]),
            (Some(s), Some(e), None) if step == -1 && s >= i64::MAX / 2 && e <= -(i64::MAX / 2) => bare(d),
            _ => Dim::unknown(),
        };
    }
    if let Some(k) = cx.known(0)
        && k.dims.len() == r
    {
        let idx: Option<Vec<Vec<usize>>> =
            picks.iter().zip(&k.dims).map(|(p, &d)| p.map(|(s, e, st)| slice_range(s, e, st, d as i64))).collect();
        if let Some(idx) = idx
            && let Some(res) = gather_grid(k, &idx)
        {
            cx.set_known(0, res);
        }
    }
    Ok(vec![tt(elem, Some(out))])
}

/// The sub-tensor of `k` at the cartesian product of per-axis indices.
fn gather_grid(k: &Known, idx: &[Vec<usize>]) -> Option<Known> {
    let out_dims: Vec<usize> = idx.iter().map(Vec::len).collect();
    let total = numel(&out_dims)?;
    if total > MAX_KNOWN_ELEMS {
        return None;
    }
    let mut strides = vec![1usize; k.dims.len()];
    for i in (0..k.dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(k.dims[i + 1]);
    }
    let mut flat = Vec::with_capacity(total);
    for o in 0..total {
        let mut rem = o;
        let mut src = 0;
        for a in (0..out_dims.len()).rev() {
            let d = out_dims[a];
            let j = rem % d;
            rem /= d;
            src += idx[a][j] * strides[a];
        }
        flat.push(src);
    }
    k.pick(out_dims, &flat)
}

fn gather(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let axis = cx.node.attr_int("axis").unwrap_or(0);
    let (Some(data), Some(ind)) = (cx.shape(0), cx.shape(1)) else {
        let rank = match (cx.rank(0), cx.rank(1)) {
            (Some(a), Some(b)) if a > 0 => Some(a + b - 1),
            _ => None,
        };
        return Ok(vec![tt(elem, rank.map(unknown_dims))]);
    };
    let a = norm_axis(axis, data.len())?;
    let mut out: Vec<Dim> = data[..a].iter().map(bare).collect();
    out.extend(ind.iter().map(bare));
    out.extend(data[a + 1..].iter().map(bare));
    if let (Some(k), Some(iv)) = (cx.known(0), cx.known_ints(1))
        && k.dims.len() == data.len()
    {
        let n = k.dims[a] as i64;
        let fixed: Option<Vec<usize>> = iv
            .iter()
            .map(|&i| usize::try_from(if i < 0 { i + n } else { i }).ok().filter(|&i| (i as i64) < n))
            .collect();
        if let Some(fixed) = fixed {
            let outer = numel(&k.dims[..a]).unwrap_or(usize::MAX);
            let inner = numel(&k.dims[a + 1..]).unwrap_or(usize::MAX);
            let mut flat = Vec::new();
            let fits =
                outer.checked_mul(fixed.len()).and_then(|x| x.checked_mul(inner)).is_some_and(|n| n <= MAX_KNOWN_ELEMS);
            for o in 0..if fits { outer } else { 0 } {
                for &i in &fixed {
                    for j in 0..inner {
                        flat.push((o * k.dims[a] + i) * inner + j);
                    }
                }
            }
            let ind_dims = cx.known(1).map(|x| x.dims.clone()).unwrap_or_default();
            let mut od: Vec<usize> = k.dims[..a].to_vec();
            od.extend(ind_dims);
            od.extend_from_slice(&k.dims[a + 1..]);
            if flat.len() <= MAX_KNOWN_ELEMS
                && let Some(res) = k.pick(od, &flat)
            {
                cx.set_known(0, res);
            }
        }
    }
    Ok(vec![tt(elem, Some(out))])
}

fn gather_elements(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(cx.elem(0), cx.shape(1).map(bare_all))])
}

fn gather_nd(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let b = cx.node.attr_int("batch_dims").unwrap_or(0).max(0) as usize;
    let (Some(data), Some(ind)) = (cx.shape(0), cx.shape(1)) else { return Ok(vec![tt(elem, None)]) };
    let Some(k) = ind.last().and_then(Dim::as_known) else { return Ok(vec![tt(elem, None)]) };
    let k = k as usize;
    if b + k > data.len() {
        return Err(format!("GatherND indexes {k} dims past batch {b} of a rank-{} tensor", data.len()));
    }
    let mut out: Vec<Dim> = ind[..ind.len() - 1].iter().map(bare).collect();
    out.extend(data[b + k..].iter().map(bare));
    Ok(vec![tt(elem, Some(out))])
}

fn squeeze(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let out = match cx.ints_param("axes", 1, 13) {
        Param::Known(axes) => {
            let axes = norm_axes(&axes, input.len())?;
            for &a in &axes {
                if input[a].as_known().is_some_and(|v| v != 1) {
                    return Err(format!("cannot squeeze axis {a} of size {}", input[a]));
                }
            }
            input.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| bare(d)).collect::<Vec<_>>()
        }
        Param::Absent => {
            if input.iter().any(|d| !is_num(d)) {
                return Ok(vec![tt(elem, None)]);
            }
            input.iter().filter(|d| d.as_known() != Some(1)).map(bare).collect()
        }
        Param::Unknown => return Ok(vec![tt(elem, None)]),
    };
    reshape_known(cx, &out);
    Ok(vec![tt(elem, Some(out))])
}

/// Passes input 0's known value through a reshape to `out`.
fn reshape_known(cx: &mut InferCtx<'_>, out: &[Dim]) {
    if let (Some(k), Some(d)) = (cx.known(0), concrete(out))
        && let Some(r) = k.reshaped(d)
    {
        cx.set_known(0, r);
    }
}

fn unsqueeze(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let axes = match cx.ints_param("axes", 1, 13) {
        Param::Known(a) => a,
        Param::Absent => return Err("Unsqueeze has no axes".into()),
        Param::Unknown => {
            let n = cx.shape(1).and_then(|s| s.first()).and_then(Dim::as_known);
            return Ok(vec![tt(elem, n.and_then(|n| rank_dims(n.saturating_add(input.len() as i64))))]);
        }
    };
    let r = input.len() + axes.len();
    let axes = norm_axes(&axes, r)?;
    let mut it = input.iter();
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        if axes.contains(&i) {
            out.push(Dim::known(1));
        } else {
            out.push(it.next().map_or_else(Dim::unknown, bare));
        }
    }
    reshape_known(cx, &out);
    Ok(vec![tt(elem, Some(out))])
}

fn flatten(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, Some(unknown_dims(2)))]) };
    let r = input.len() as i64;
    let axis = cx.node.attr_int("axis").unwrap_or(1);
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&a) {
        return Err(format!("Flatten axis {axis} out of range for rank {r}"));
    }
    let a = a as usize;
    let out = vec![dim_product(&input[..a]), dim_product(&input[a..])];
    reshape_known(cx, &out);
    Ok(vec![tt(elem, Some(out))])
}

fn expand(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let target: Option<Vec<Dim>> =
        cx.known(1).and_then(Known::as_dims).map(bare_all).or_else(|| rank_dims(cx.shape(1)?.first()?.as_known()?));
    let (Some(input), Some(target)) = (cx.shape(0), target) else { return Ok(vec![tt(elem, None)]) };
    let out = broadcast_shapes(&[input, &target])?;
    if let (Some(k), Some(d)) = (cx.known(0), concrete(&out)) {
        let n = numel(&d).unwrap_or(usize::MAX);
        if n <= MAX_KNOWN_ELEMS {
            let ones = Known::ints(d, &vec![1; n]);
            if let Some(r) = broadcast_known(&[k, &ones], |x| Some(bare(x[0])), |x| Some(x[0])) {
                cx.set_known(0, r);
            }
        }
    }
    Ok(vec![tt(elem, Some(bare_all(&out)))])
}

fn split(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let n = cx.num_outputs();
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None); n]) };
    let a = norm_axis(cx.node.attr_int("axis").unwrap_or(0), input.len())?;
    let d = &input[a];
    let sizes: Option<Vec<Dim>> = match cx.ints_param("split", 1, 13) {
        Param::Known(s) => {
            if s.len() != n {
                return Err(format!("split has {} sizes for {n} outputs", s.len()));
            }
            if let Some(total) = d.as_known()
                && s.iter().try_fold(0i64, |acc, &x| acc.checked_add(x)) != Some(total)
            {
                return Err(format!("split sizes {s:?} do not add up to {total}"));
            }
            Some(dims(&s))
        }
        Param::Unknown => None,
        Param::Absent => match d.as_known() {
            Some(total) if n > 0 => {
                let n64 = n as i64;
                if cx.node.attr_int("num_outputs").is_some() {
                    let chunk = ceil_div(total, n64).unwrap_or(0);
                    Some((0..n64).map(|i| Dim::known((total - chunk * i).clamp(0, chunk))).collect())
                } else if total % n64 == 0 {
                    Some(vec![Dim::known(total / n64); n])
                } else {
                    return Err(format!("cannot split {total} into {n} equal parts"));
                }
            }
            None if n == 1 => Some(vec![bare(d)]),
            _ => None,
        },
    };
    // Known values: slice each part along the axis.
    if let (Some(k), Some(sz)) = (cx.known(0).cloned(), sizes.as_ref().and_then(|v| concrete(v)))
        && k.dims.len() == input.len()
    {
        let mut start = 0usize;
        for (i, &len) in sz.iter().enumerate() {
            let idx: Vec<Vec<usize>> = k
                .dims
                .iter()
                .enumerate()
                .map(|(ax, &d)| if ax == a { (start..start + len).collect() } else { (0..d).collect() })
                .collect();
            start += len;
            if let Some(part) = gather_grid(&k, &idx) {
                cx.set_known(i, part);
            }
        }
    }
    Ok((0..n)
        .map(|i| {
            let mut s = bare_all(&input);
            s[a] = sizes.as_ref().and_then(|v| v.get(i)).cloned().unwrap_or_else(Dim::unknown);
            tt(elem, Some(s))
        })
        .collect())
}

fn pad(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = input.len();
    let pads = if cx.opset < 11 {
        cx.node.attr_ints("pads").or_else(|| cx.node.attr_ints("paddings")).map(<[i64]>::to_vec)
    } else {
        cx.known_ints(1)
    };
    let axes: Vec<usize> = match cx.ints_param("", 3, 18) {
        Param::Known(a) => norm_axes(&a, r)?,
        Param::Absent => (0..r).collect(),
        Param::Unknown => return Ok(vec![tt(elem, Some(unknown_dims(r)))]),
    };
    let Some(pads) = pads else {
        let mut out = bare_all(&input);
        for &a in &axes {
            out[a] = Dim::unknown();
        }
        return Ok(vec![tt(elem, Some(out))]);
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("pads has {} values for {} axes", pads.len(), axes.len()));
    }
    let n = axes.len();
    let mut out = bare_all(&input);
    for (k, &a) in axes.iter().enumerate() {
        out[a] = pads[k].checked_add(pads[k + n]).map_or_else(Dim::unknown, |p| dim_add(&input[a], &Dim::known(p)));
    }
    Ok(vec![tt(elem, Some(out))])
}

fn tile(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let Some(rep) = cx.known_ints(1) else { return Ok(vec![tt(elem, Some(unknown_dims(input.len())))]) };
    if rep.len() != input.len() {
        return Err(format!("Tile has {} repeats for rank {}", rep.len(), input.len()));
    }
    Ok(vec![tt(elem, Some(input.iter().zip(&rep).map(|(d, &r)| dim_mul(d, &Dim::known(r))).collect()))])
}

fn range(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0).or_else(|| cx.elem(1)).or_else(|| cx.elem(2));
    let vals: Option<Vec<f64>> = (0..3).map(|i| cx.known_floats(i).and_then(|v| v.first().copied())).collect();
    let Some(v) = vals else { return Ok(vec![tt(elem, Some(vec![Dim::unknown()]))]) };
    let (start, limit, delta) = (v[0], v[1], v[2]);
    if delta == 0.0 {
        return Err("Range delta is 0".into());
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if !n.is_finite() || n > 1e15 {
        return Ok(vec![tt(elem, Some(vec![Dim::unknown()]))]);
    }
    let n = n as i64;
    let ints: Option<Vec<i64>> = (0..3).map(|i| cx.known_ints(i).and_then(|v| v.first().copied())).collect();
    if let Some(iv) = ints
        && (n as usize) <= MAX_KNOWN_ELEMS
    {
        let seq: Option<Vec<i64>> = (0..n).map(|i| i.checked_mul(iv[2]).and_then(|x| x.checked_add(iv[0]))).collect();
        if let Some(seq) = seq {
            cx.set_known(0, Known::ints(vec![n as usize], &seq));
        }
    }
    Ok(vec![tt(elem, Some(vec![Dim::known(n)]))])
}

fn constant_of_shape(cx: &mut InferCtx<'_>) -> InferResult {
    let value = cx.node.attr_tensor("value").cloned();
    let elem = Some(value.as_ref().map_or(DataType::F32, |t| t.dtype()).onnx_code());
    let shape: Option<Vec<Dim>> =
        cx.known(0).and_then(Known::as_dims).map(bare_all).or_else(|| rank_dims(cx.shape(0)?.first()?.as_known()?));
    if let Some(d) = shape.as_deref().and_then(concrete) {
        let n = numel(&d).unwrap_or(usize::MAX);
        let fill = match &value {
            None => Some(Known::floats(vec![1], vec![0.0])),
            Some(t) => Some(Known::from_tensor(t)),
        }
        .flatten();
        if let Some(f) = fill.filter(|f| f.len() == 1 && n <= MAX_KNOWN_ELEMS) {
            let idx = vec![0usize; n];
            if let Some(k) = f.pick(d, &idx) {
                cx.set_known(0, k);
            }
        }
    }
    Ok(vec![tt(elem, shape)])
}

fn constant(cx: &mut InferCtx<'_>) -> InferResult {
    let attr = cx.node.attributes.first().map(|a| (a.name.clone(), a.value.clone()));
    let Some((name, value)) = attr else { return Err("Constant has no value attribute".into()) };
    let tensor: Option<Tensor> = match (&*name, &value) {
        ("value", AttrValue::Tensor(t)) => Some((**t).clone()),
        ("value_float", AttrValue::Float(f)) => Some(Tensor::scalar(*f)),
        ("value_int", AttrValue::Int(i)) => Some(Tensor::scalar(*i)),
        ("value_floats", AttrValue::Floats(f)) => Tensor::from_slice(vec![f.len()], f).ok(),
        ("value_ints", AttrValue::Ints(i)) => Tensor::from_slice(vec![i.len()], i).ok(),
        ("value_string", AttrValue::String(s)) => Tensor::from_strings(vec![], vec![s.clone()]).ok(),
        ("value_strings", AttrValue::Strings(s)) => Tensor::from_strings(vec![s.len()], s.clone()).ok(),
        _ => None,
    };
    let Some(t) = tensor else {
        // A sparse value, or an attribute reference inside a function body.
        return Ok(vec![None]);
    };
    if let Some(k) = Known::from_tensor(&t) {
        cx.set_known(0, k);
    }
    Ok(vec![tt(Some(t.dtype().onnx_code()), Some(t.dims().iter().map(|&d| Dim::known(d as i64)).collect()))])
}

fn eye_like(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = super::dtype_attr(cx, "dtype", cx.elem(0));
    Ok(vec![with_elem(cx, 0, elem)])
}

fn one_hot(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(2);
    let Some(ind) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let depth = cx.known_floats(1).and_then(|v| v.first().copied()).map_or_else(Dim::unknown, |d| Dim::known(d as i64));
    let r = ind.len() + 1;
    let a = norm_axis(cx.node.attr_int("axis").unwrap_or(-1), r)?;
    let mut out = bare_all(&ind);
    out.insert(a, depth);
    Ok(vec![tt(elem, Some(out))])
}

fn non_zero(cx: &mut InferCtx<'_>) -> InferResult {
    let r = cx.rank(0).map_or_else(Dim::unknown, |r| Dim::known(r as i64));
    Ok(vec![tt(code(DataType::I64), Some(vec![r, Dim::unknown()]))])
}

fn top_k(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let i64t = code(DataType::I64);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None), tt(i64t, None)]) };
    let a = norm_axis(cx.node.attr_int("axis").unwrap_or(-1), input.len())?;
    let k = if cx.opset < 10 { cx.node.attr_int("k") } else { cx.known_ints(1).and_then(|v| v.first().copied()) };
    let mut out = bare_all(&input);
    out[a] = k.map_or_else(Dim::unknown, Dim::known);
    Ok(vec![tt(elem, Some(out.clone())), tt(i64t, Some(out))])
}

fn unique(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let i64t = code(DataType::I64);
    let one_d = |d: Dim| tt(i64t, Some(vec![d]));
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else {
        return Ok(vec![tt(elem, None), one_d(Dim::unknown()), one_d(Dim::unknown()), one_d(Dim::unknown())]);
    };
    match cx.node.attr_int("axis") {
        None => Ok(vec![
            tt(elem, Some(vec![Dim::unknown()])),
            one_d(Dim::unknown()),
            one_d(dim_product(&input)),
            one_d(Dim::unknown()),
        ]),
        Some(axis) => {
            let a = norm_axis(axis, input.len())?;
            let mut y = bare_all(&input);
            y[a] = Dim::unknown();
            Ok(vec![tt(elem, Some(y)), one_d(Dim::unknown()), one_d(bare(&input[a])), one_d(Dim::unknown())])
        }
    }
}

fn compress(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let count =
        cx.known_ints(1).map_or_else(Dim::unknown, |v| Dim::known(v.iter().filter(|&&x| x != 0).count() as i64));
    match (cx.node.attr_int("axis"), cx.shape(0)) {
        (None, _) => Ok(vec![tt(elem, Some(vec![count]))]),
        (Some(axis), Some(s)) => {
            let a = norm_axis(axis, s.len())?;
            let mut out = bare_all(s);
            out[a] = count;
            Ok(vec![tt(elem, Some(out))])
        }
        (Some(_), None) => Ok(vec![tt(elem, None)]),
    }
}

fn center_crop_pad(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(input) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = input.len();
    let axes: Vec<usize> = match cx.node.attr_ints("axes") {
        Some(a) => norm_axes(a, r)?,
        None => (0..r).collect(),
    };
    let mut out = bare_all(&input);
    let sizes = cx.known(1).and_then(Known::as_dims).map(<[Dim]>::to_vec);
    for (k, &a) in axes.iter().enumerate() {
        out[a] = sizes.as_ref().and_then(|s| s.get(k)).map_or_else(Dim::unknown, bare);
    }
    Ok(vec![tt(elem, Some(out))])
}
