//! Constant evaluation in Kiln itself, for the ops whose result is exact by construction:
//! moving elements (Reshape, Slice, Gather, Concat, Transpose…), integer arithmetic and
//! comparisons, and casts that cannot round differently. These are the shape computations
//! exporters leave behind; evaluating them here means a model whose constants are all of this
//! kind is folded without starting ONNX Runtime at all (tens of milliseconds, and a pass that
//! still works where the library is missing).
//!
//! Anything else (floating-point arithmetic, whose last bits belong to the runtime's kernels,
//! and every op not listed) is left to ONNX Runtime, as is any form this module does not
//! recognize as valid: the runtime then reports it as it always did.

use std::sync::Arc;

use bytes::Bytes;
use kiln_compiler::DataType;
use kiln_compiler::dtype::ElementSize;
use kiln_compiler::ir::{AttrLookup, Node};
use kiln_compiler::tensor::Tensor;

use super::super::common::as_i64s;

/// What evaluating one node here gave.
#[derive(Debug)]
pub(super) enum Host {
    /// Computed: one tensor per output.
    Done(Vec<Tensor>),
    /// Not evaluated here; ONNX Runtime evaluates it.
    Runtime,
    /// Not to be evaluated by anyone: the runtime would abort the process (integer division
    /// by zero raises SIGFPE in its kernels). The node stays, and the reason is reported.
    Refused(String),
}

/// Evaluates `n` on its constant `inputs` (`None`: an omitted optional input), or says why not.
/// Results over `max_elements` are left to the runtime path, which reports them.
pub(super) fn evaluate(n: &Node, inputs: &[Option<Arc<Tensor>>], max_elements: u64) -> Host {
    if !n.domain().is_empty() || n.outputs().len() != 1 {
        return Host::Runtime;
    }
    let input = |i: usize| inputs.get(i).and_then(|t| t.as_deref());
    let result = match n.op_type.as_str() {
        "Identity" => input(0).filter(|t| fixed_width(t)).cloned(),
        "Reshape" => reshape(n, input(0), input(1)),
        "Flatten" => flatten(n, input(0)),
        "Unsqueeze" => unsqueeze(n, input(0), input(1)),
        "Squeeze" => squeeze(n, input(0), input(1)),
        "Concat" => concat(n, inputs),
        "Slice" => slice(n, inputs),
        "Gather" => gather(n, input(0), input(1)),
        "Transpose" => transpose(n, input(0)),
        "Expand" => expand(input(0), input(1), max_elements),
        "Shape" | "Size" => input(0).and_then(|t| {
            let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
            shape_or_size(n, &dims)
        }),
        "ConstantOfShape" => constant_of_shape(n, input(0), max_elements),
        "Range" => range(inputs, max_elements),
        "Cast" => cast(n, input(0)),
        "Where" => where_(inputs, max_elements),
        "Add" | "Sub" | "Mul" | "Div" => return arithmetic(&n.op_type, input(0), input(1), max_elements),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => {
            compare(&n.op_type, input(0), input(1), max_elements)
        }
        "Neg" | "Abs" => unary_int(&n.op_type, input(0)),
        "Not" => not(input(0)),
        "And" | "Or" | "Xor" => logical(&n.op_type, input(0), input(1), max_elements),
        _ => None,
    };
    match result {
        Some(t) if t.len() <= max_elements => Host::Done(vec![t]),
        _ => Host::Runtime,
    }
}

/// Whether the tensor's elements are whole bytes each (not strings, not packed sub-byte types).
fn fixed_width(t: &Tensor) -> bool {
    matches!(t.dtype().element_size(), ElementSize::Bytes(_)) && t.bytes().is_some()
}

/// Bytes per element and the packed bytes, for the element-moving ops.
fn raw(t: &Tensor) -> Option<(usize, &Bytes)> {
    match t.dtype().element_size() {
        ElementSize::Bytes(w) => Some((w, t.bytes()?)),
        _ => None,
    }
}

/// An axis in `-rank..rank` as an index, or `None` when out of range.
fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Row-major strides, in elements.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Copies the elements at `sources` (flat indices into `t`) into a new tensor of shape `dims`.
fn pick(t: &Tensor, dims: Vec<usize>, sources: impl Iterator<Item = usize>) -> Option<Tensor> {
    let (w, bytes) = raw(t)?;
    let mut out = Vec::with_capacity(dims.iter().product::<usize>() * w);
    for s in sources {
        out.extend_from_slice(bytes.get(s * w..(s + 1) * w)?);
    }
    Tensor::new(t.dtype(), dims, Bytes::from(out)).ok()
}

/// Visits every index of `dims` in row-major order.
fn for_each_index(dims: &[usize], mut f: impl FnMut(&[usize])) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; dims.len()];
    loop {
        f(&idx);
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// The multidirectional (numpy) broadcast of `shapes`, and for every output element the flat
/// index it reads in each input. `None` when the shapes do not broadcast or the result is over
/// `max_elements`.
fn broadcast(shapes: &[&[usize]], max_elements: u64) -> Option<(Vec<usize>, Vec<Vec<usize>>)> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    if out.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64))? > max_elements {
        return None;
    }
    let steps: Vec<Vec<usize>> = shapes
        .iter()
        .map(|s| {
            let st = strides(s);
            (0..rank)
                .map(|i| match i.checked_sub(rank - s.len()) {
                    Some(j) if s[j] != 1 => st[j],
                    _ => 0,
                })
                .collect()
        })
        .collect();
    let mut sources = vec![Vec::with_capacity(out.iter().product()); shapes.len()];
    for_each_index(&out, |idx| {
        for (src, st) in sources.iter_mut().zip(&steps) {
            src.push(idx.iter().zip(st).map(|(i, s)| i * s).sum());
        }
    });
    Some((out, sources))
}

fn reshape(n: &Node, data: Option<&Tensor>, shape: Option<&Tensor>) -> Option<Tensor> {
    let (data, shape) = (data?, as_i64s(shape?)?);
    let allow_zero = n.attr_int("allowzero").unwrap_or(0) != 0;
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            0 if !allow_zero => dims.push(*data.dims().get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            d if d >= 0 => dims.push(usize::try_from(d).ok()?),
            _ => return None,
        }
    }
    let total = data.len() as usize;
    if let Some(i) = infer {
        let rest: usize = dims.iter().product();
        if rest == 0 || !total.is_multiple_of(rest) {
            return None;
        }
        dims[i] = total / rest;
    }
    (dims.iter().product::<usize>() == total && fixed_width(data)).then(|| data.reshaped(dims).ok())?
}

fn flatten(n: &Node, data: Option<&Tensor>) -> Option<Tensor> {
    let data = data?;
    let r = data.rank() as i64;
    let a = n.attr_int("axis").unwrap_or(1);
    let a = if a < 0 { a + r } else { a };
    if !(0..=r).contains(&a) || !fixed_width(data) {
        return None;
    }
    let (head, tail) = data.dims().split_at(a as usize);
    data.reshaped(vec![head.iter().product(), tail.iter().product()]).ok()
}

/// Axes given as an attribute (older opsets) or as the second input.
fn axes_of(n: &Node, input: Option<&Tensor>) -> Option<Option<Vec<i64>>> {
    match (n.attr_ints("axes"), input) {
        (Some(a), _) => Some(Some(a.to_vec())),
        (None, Some(t)) => Some(Some(as_i64s(t)?)),
        (None, None) => Some(None),
    }
}

fn unsqueeze(n: &Node, data: Option<&Tensor>, axes: Option<&Tensor>) -> Option<Tensor> {
    let data = data?;
    let axes = axes_of(n, axes)??;
    let rank = data.rank() + axes.len();
    let mut ones = vec![false; rank];
    for &a in &axes {
        let a = axis(a, rank)?;
        if std::mem::replace(&mut ones[a], true) {
            return None;
        }
    }
    let mut rest = data.dims().iter();
    let dims = ones.iter().map(|&one| if one { Some(1) } else { rest.next().copied() }).collect::<Option<Vec<_>>>()?;
    fixed_width(data).then(|| data.reshaped(dims).ok())?
}

fn squeeze(n: &Node, data: Option<&Tensor>, axes: Option<&Tensor>) -> Option<Tensor> {
    let data = data?;
    let rank = data.rank();
    let drop: Vec<usize> = match axes_of(n, axes)? {
        Some(axes) => axes.iter().map(|&a| axis(a, rank)).collect::<Option<_>>()?,
        None => (0..rank).filter(|&i| data.dims()[i] == 1).collect(),
    };
    if drop.iter().any(|&a| data.dims()[a] != 1) || !fixed_width(data) {
        return None;
    }
    let dims = (0..rank).filter(|i| !drop.contains(i)).map(|i| data.dims()[i]).collect();
    data.reshaped(dims).ok()
}

fn concat(n: &Node, inputs: &[Option<Arc<Tensor>>]) -> Option<Tensor> {
    let parts: Vec<&Tensor> = inputs.iter().map(|t| t.as_deref()).collect::<Option<_>>()?;
    let first = *parts.first()?;
    let a = axis(n.attr_int("axis")?, first.rank())?;
    let mut dims = first.dims().to_vec();
    dims[a] = 0;
    for p in &parts {
        let same = p.dtype() == first.dtype()
            && p.rank() == first.rank()
            && (0..p.rank()).all(|i| i == a || p.dims()[i] == first.dims()[i]);
        if !same || !fixed_width(p) {
            return None;
        }
        dims[a] += p.dims()[a];
    }
    let (w, _) = raw(first)?;
    let outer: usize = dims[..a].iter().product();
    let mut out = Vec::with_capacity(dims.iter().product::<usize>() * w);
    for o in 0..outer {
        for p in &parts {
            let (_, bytes) = raw(p)?;
            let block = p.dims()[a..].iter().product::<usize>() * w;
            out.extend_from_slice(bytes.get(o * block..(o + 1) * block)?);
        }
    }
    Tensor::new(first.dtype(), dims, Bytes::from(out)).ok()
}

/// `Slice`: starts/ends/axes/steps as inputs (opset 10+) or attributes (before).
fn slice(n: &Node, inputs: &[Option<Arc<Tensor>>]) -> Option<Tensor> {
    let data = inputs.first()?.as_deref()?;
    let list = |attr: &str, i: usize| -> Option<Option<Vec<i64>>> {
        match (n.attr_ints(attr), inputs.get(i).and_then(|t| t.as_deref())) {
            (Some(v), _) => Some(Some(v.to_vec())),
            (None, Some(t)) => Some(Some(as_i64s(t)?)),
            (None, None) => Some(None),
        }
    };
    let starts = list("starts", 1)??;
    let ends = list("ends", 2)??;
    let rank = data.rank();
    let axes = list("axes", 3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = if n.attr_ints("starts").is_some() { None } else { list("steps", 4)? };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return None;
    }
    // Per axis: first index, step, count.
    let mut plan: Vec<(i64, i64, usize)> = data.dims().iter().map(|&d| (0, 1, d)).collect();
    let mut seen = vec![false; rank];
    for k in 0..starts.len() {
        let a = axis(axes[k], rank)?;
        if std::mem::replace(&mut seen[a], true) || steps[k] == 0 {
            return None;
        }
        let d = data.dims()[a] as i64;
        let step = steps[k];
        let at = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (start, end) = if step > 0 {
            (at(starts[k]).clamp(0, d), at(ends[k]).clamp(0, d))
        } else {
            (at(starts[k]).clamp(0, d - 1), at(ends[k]).clamp(-1, d - 1))
        };
        let span = if step > 0 { end - start } else { start - end };
        let count = if span <= 0 { 0 } else { (span + step.abs() - 1) / step.abs() };
        plan[a] = (start, step, count as usize);
    }
    let dims: Vec<usize> = plan.iter().map(|p| p.2).collect();
    let st = strides(data.dims());
    let mut sources = Vec::with_capacity(dims.iter().product());
    for_each_index(&dims, |idx| {
        let flat: i64 =
            idx.iter().zip(&plan).zip(&st).map(|((&i, &(s, step, _)), &t)| (s + i as i64 * step) * t as i64).sum();
        sources.push(flat as usize);
    });
    pick(data, dims, sources.into_iter())
}

fn gather(n: &Node, data: Option<&Tensor>, indices: Option<&Tensor>) -> Option<Tensor> {
    let (data, indices) = (data?, indices?);
    let a = axis(n.attr_int("axis").unwrap_or(0), data.rank())?;
    let d = data.dims()[a] as i64;
    let idx = as_i64s(indices)?
        .into_iter()
        .map(|i| {
            let i = if i < 0 { i + d } else { i };
            (0..d).contains(&i).then_some(i as usize)
        })
        .collect::<Option<Vec<usize>>>()?;
    let outer: usize = data.dims()[..a].iter().product();
    let inner: usize = data.dims()[a + 1..].iter().product();
    let mut dims = data.dims()[..a].to_vec();
    dims.extend_from_slice(indices.dims());
    dims.extend_from_slice(&data.dims()[a + 1..]);
    let sources = (0..outer)
        .flat_map(|o| idx.iter().flat_map(move |&i| (0..inner).map(move |j| (o * d as usize + i) * inner + j)));
    pick(data, dims, sources)
}

fn transpose(n: &Node, data: Option<&Tensor>) -> Option<Tensor> {
    let data = data?;
    let rank = data.rank();
    let perm: Vec<usize> = match n.attr_ints("perm") {
        Some(p) => p.iter().map(|&a| usize::try_from(a).ok().filter(|&a| a < rank)).collect::<Option<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return None;
    }
    let dims: Vec<usize> = perm.iter().map(|&a| data.dims()[a]).collect();
    let st = strides(data.dims());
    let mut sources = Vec::with_capacity(data.len() as usize);
    for_each_index(&dims, |idx| sources.push(idx.iter().zip(&perm).map(|(&i, &a)| i * st[a]).sum()));
    pick(data, dims, sources.into_iter())
}

fn expand(data: Option<&Tensor>, shape: Option<&Tensor>, max_elements: u64) -> Option<Tensor> {
    let data = data?;
    let shape: Vec<usize> = as_i64s(shape?)?.into_iter().map(|d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let (dims, sources) = broadcast(&[data.dims(), &shape], max_elements)?;
    pick(data, dims, sources.into_iter().next()?.into_iter())
}

/// What `Shape` (its `start`/`end` window) or `Size` gives for a value of shape `dims`.
pub(super) fn shape_or_size(n: &Node, dims: &[i64]) -> Option<Tensor> {
    if n.op_type == "Size" {
        return Some(Tensor::scalar(dims.iter().product::<i64>()));
    }
    let r = dims.len() as i64;
    let clamp = |i: i64| (if i < 0 { i + r } else { i }).clamp(0, r) as usize;
    let (start, end) = (clamp(n.attr_int("start").unwrap_or(0)), clamp(n.attr_int("end").unwrap_or(r)));
    let part = if start < end { &dims[start..end] } else { &[][..] };
    Tensor::from_slice(vec![part.len()], part).ok()
}

fn constant_of_shape(n: &Node, shape: Option<&Tensor>, max_elements: u64) -> Option<Tensor> {
    let dims: Vec<usize> = as_i64s(shape?)?.into_iter().map(|d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64))?;
    if count > max_elements {
        return None;
    }
    let fill = match n.attr_tensor("value") {
        Some(v) if v.len() == 1 && fixed_width(v) => v.as_ref().clone(),
        Some(_) => return None,
        None => Tensor::scalar(0.0f32),
    };
    let (_, one) = raw(&fill)?;
    Tensor::new(fill.dtype(), dims, Bytes::from(one.repeat(count as usize))).ok()
}

/// Integer `Range` only (a float range's elements depend on how the runtime accumulates).
fn range(inputs: &[Option<Arc<Tensor>>], max_elements: u64) -> Option<Tensor> {
    let scalar = |i: usize| -> Option<(DataType, i64)> {
        let t = inputs.get(i)?.as_deref()?;
        (t.rank() == 0 || t.len() == 1).then_some(())?;
        Some((t.dtype(), *as_i64s(t)?.first()?))
    };
    let ((dt, start), (dl, limit), (dd, delta)) = (scalar(0)?, scalar(1)?, scalar(2)?);
    if dt != dl || dt != dd || delta == 0 {
        return None;
    }
    let span = i128::from(limit) - i128::from(start);
    let d = i128::from(delta);
    let count = if (span > 0) != (d > 0) || span == 0 { 0 } else { (span + d - d.signum()) / d };
    if count as u64 > max_elements {
        return None;
    }
    let values: Vec<i64> = (0..count as i64).map(|i| start.wrapping_add(i.wrapping_mul(delta))).collect();
    from_ints(dt, vec![values.len()], &values)
}

/// Integer tensors of `dtype` (I32 or I64) from i64 values, wrapping like a C++ cast.
fn from_ints(dtype: DataType, dims: Vec<usize>, values: &[i64]) -> Option<Tensor> {
    match dtype {
        DataType::I64 => Tensor::from_slice(dims, values).ok(),
        DataType::I32 => Tensor::from_slice(dims, &values.iter().map(|&v| v as i32).collect::<Vec<_>>()).ok(),
        _ => None,
    }
}

/// Casts that are exact or round the one way both Rust and C++ do (to nearest, ties to even):
/// between integer types and bool, from integers of up to 64 bits to f32/f64 (but not u64,
/// whose conversion sequence compilers vary on), and f32 to f64 and back.
fn cast(n: &Node, data: Option<&Tensor>) -> Option<Tensor> {
    let data = data?;
    let to = DataType::from_onnx(i32::try_from(n.attr_int("to")?).ok()?)?;
    let from = data.dtype();
    if from == to {
        return fixed_width(data).then(|| data.clone());
    }
    let dims = data.dims().to_vec();
    macro_rules! ints_as {
        ($t:ty) => {
            data.to_vec::<$t>().ok()?.into_iter().map(|v| v as i128).collect::<Vec<i128>>()
        };
    }
    let ints: Option<Vec<i128>> = match from {
        DataType::Bool => Some(data.to_vec::<bool>().ok()?.into_iter().map(i128::from).collect()),
        DataType::I8 => Some(ints_as!(i8)),
        DataType::U8 => Some(ints_as!(u8)),
        DataType::I16 => Some(ints_as!(i16)),
        DataType::U16 => Some(ints_as!(u16)),
        DataType::I32 => Some(ints_as!(i32)),
        DataType::U32 => Some(ints_as!(u32)),
        DataType::I64 => Some(ints_as!(i64)),
        DataType::U64 => Some(ints_as!(u64)),
        _ => None,
    };
    macro_rules! out {
        ($src:expr, $t:ty) => {
            Tensor::from_slice(dims, &$src.iter().map(|&v| v as $t).collect::<Vec<$t>>()).ok()
        };
    }
    if let Some(v) = ints {
        return match to {
            DataType::Bool => Tensor::from_slice(dims, &v.iter().map(|&x| x != 0).collect::<Vec<bool>>()).ok(),
            DataType::I8 => out!(v, i8),
            DataType::U8 => out!(v, u8),
            DataType::I16 => out!(v, i16),
            DataType::U16 => out!(v, u16),
            DataType::I32 => out!(v, i32),
            DataType::U32 => out!(v, u32),
            DataType::I64 => out!(v, i64),
            DataType::U64 => out!(v, u64),
            DataType::F32 if from != DataType::U64 => out!(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), f32),
            DataType::F64 if from != DataType::U64 => out!(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), f64),
            _ => None,
        };
    }
    match (from, to) {
        (DataType::F32, DataType::F64) => out!(data.to_vec::<f32>().ok()?, f64),
        (DataType::F64, DataType::F32) => out!(data.to_vec::<f64>().ok()?, f32),
        _ => None,
    }
}

/// Broadcast integer operands: their type, the output shape and the value pairs.
struct IntPairs {
    dtype: DataType,
    dims: Vec<usize>,
    pairs: Vec<(i64, i64)>,
}

/// Two integer operands of one type (I32 or I64), broadcast against each other.
fn int_pairs(a: &Tensor, b: &Tensor, max_elements: u64) -> Option<IntPairs> {
    if a.dtype() != b.dtype() || !matches!(a.dtype(), DataType::I32 | DataType::I64) {
        return None;
    }
    let (x, y) = (as_i64s(a)?, as_i64s(b)?);
    let (dims, src) = broadcast(&[a.dims(), b.dims()], max_elements)?;
    let pairs = src[0].iter().zip(&src[1]).map(|(&i, &j)| (x[i], y[j])).collect();
    Some(IntPairs { dtype: a.dtype(), dims, pairs })
}

/// Integer Add/Sub/Mul/Div, wrapping in the operands' width as the runtime's kernels do.
fn arithmetic(op: &str, a: Option<&Tensor>, b: Option<&Tensor>, max_elements: u64) -> Host {
    let Some(IntPairs { dtype, dims, pairs }) = a.zip(b).and_then(|(a, b)| int_pairs(a, b, max_elements)) else {
        return Host::Runtime;
    };
    let min = if dtype == DataType::I32 { i64::from(i32::MIN) } else { i64::MIN };
    let mut values = Vec::with_capacity(pairs.len());
    for (x, y) in pairs {
        values.push(match op {
            "Add" => x.wrapping_add(y),
            "Sub" => x.wrapping_sub(y),
            "Mul" => x.wrapping_mul(y),
            _ if y == 0 => return Host::Refused("integer division by zero".into()),
            _ if x == min && y == -1 => return Host::Refused("integer division overflows".into()),
            _ => x / y,
        });
    }
    match from_ints(dtype, dims, &values) {
        Some(t) => Host::Done(vec![t]),
        None => Host::Runtime,
    }
}

fn compare(op: &str, a: Option<&Tensor>, b: Option<&Tensor>, max_elements: u64) -> Option<Tensor> {
    let (a, b) = (a?, b?);
    let bools = a.dtype() == DataType::Bool && b.dtype() == DataType::Bool;
    let (dims, pairs): (Vec<usize>, Vec<(i64, i64)>) = if bools && op == "Equal" {
        let (x, y) = (a.to_vec::<bool>().ok()?, b.to_vec::<bool>().ok()?);
        let (dims, src) = broadcast(&[a.dims(), b.dims()], max_elements)?;
        (dims, src[0].iter().zip(&src[1]).map(|(&i, &j)| (i64::from(x[i]), i64::from(y[j]))).collect())
    } else {
        let p = int_pairs(a, b, max_elements)?;
        (p.dims, p.pairs)
    };
    let f: fn(&i64, &i64) -> bool = match op {
        "Equal" => |x, y| x == y,
        "Less" => |x, y| x < y,
        "Greater" => |x, y| x > y,
        "LessOrEqual" => |x, y| x <= y,
        _ => |x, y| x >= y,
    };
    Tensor::from_slice(dims, &pairs.iter().map(|(x, y)| f(x, y)).collect::<Vec<bool>>()).ok()
}

fn unary_int(op: &str, a: Option<&Tensor>) -> Option<Tensor> {
    let a = a?;
    if !matches!(a.dtype(), DataType::I32 | DataType::I64) {
        return None;
    }
    let values: Vec<i64> =
        as_i64s(a)?.into_iter().map(|v| if op == "Neg" { v.wrapping_neg() } else { v.wrapping_abs() }).collect();
    from_ints(a.dtype(), a.dims().to_vec(), &values)
}

fn not(a: Option<&Tensor>) -> Option<Tensor> {
    let a = a?;
    let v = a.to_vec::<bool>().ok()?;
    Tensor::from_slice(a.dims().to_vec(), &v.iter().map(|x| !x).collect::<Vec<bool>>()).ok()
}

fn logical(op: &str, a: Option<&Tensor>, b: Option<&Tensor>, max_elements: u64) -> Option<Tensor> {
    let (a, b) = (a?, b?);
    let (x, y) = (a.to_vec::<bool>().ok()?, b.to_vec::<bool>().ok()?);
    let (dims, src) = broadcast(&[a.dims(), b.dims()], max_elements)?;
    let v: Vec<bool> = src[0]
        .iter()
        .zip(&src[1])
        .map(|(&i, &j)| match op {
            "And" => x[i] && y[j],
            "Or" => x[i] || y[j],
            _ => x[i] != y[j],
        })
        .collect();
    Tensor::from_slice(dims, &v).ok()
}

fn where_(inputs: &[Option<Arc<Tensor>>], max_elements: u64) -> Option<Tensor> {
    let [c, a, b] = [0, 1, 2].map(|i| inputs.get(i).and_then(|t| t.as_deref()));
    let (c, a, b) = (c?, a?, b?);
    if a.dtype() != b.dtype() {
        return None;
    }
    let cond = c.to_vec::<bool>().ok()?;
    let (dims, src) = broadcast(&[c.dims(), a.dims(), b.dims()], max_elements)?;
    let (w, xa) = raw(a)?;
    let (_, xb) = raw(b)?;
    let mut out = Vec::with_capacity(src[0].len() * w);
    for k in 0..src[0].len() {
        let (from, i) = if cond[src[0][k]] { (xa, src[1][k]) } else { (xb, src[2][k]) };
        out.extend_from_slice(from.get(i * w..(i + 1) * w)?);
    }
    Tensor::new(a.dtype(), dims, Bytes::from(out)).ok()
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
