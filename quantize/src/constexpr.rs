//! Constant weights reached through captures and layout ops.
//!
//! Exporters often hand a weight to its consumer as a small expression over constants:
//! PyTorch's LSTM export slices `weight_ih` into gates, reorders them with `Concat` and adds the
//! direction axis with `Unsqueeze`, inside If branches that capture `weight_ih` from the main
//! graph. Constant folding leaves that alone (copying a large outer constant into every branch
//! would duplicate it), so the dynamic quantizer evaluates such expressions itself: only pure
//! data-movement ops (Identity, Unsqueeze, Squeeze, Reshape, Flatten, Concat, Slice,
//! Transpose), whose results are exact copies of constant elements.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, AttrValue, Graph, ValueDef, ValueId};
use kiln_compiler::{DataType, Tensor};

use crate::handlers::constant;

/// Depth bound on an expression (expressions in the wild are 3-4 ops deep).
const MAX_DEPTH: usize = 16;

/// The constants visible from a graph: its enclosing graphs' initializers and `Constant`
/// outputs, nearest scope first.
#[derive(Default)]
pub struct Scope<'a> {
    constants: HashMap<String, Arc<Tensor>>,
    parent: Option<&'a Scope<'a>>,
}

impl<'a> Scope<'a> {
    /// The scope that subgraphs of `g` see: `g`'s constants, then `self`'s.
    pub fn enter(&'a self, g: &Graph) -> Scope<'a> {
        let mut constants = HashMap::new();
        for (v, value) in g.values() {
            if matches!(value.def(), ValueDef::Initializer(_) | ValueDef::Node { .. })
                && let Some(t) = constant(g, v)
            {
                constants.insert(value.name.clone(), t);
            }
        }
        Scope { constants, parent: Some(self) }
    }

    fn lookup(&self, name: &str) -> Option<Arc<Tensor>> {
        match self.constants.get(name) {
            Some(t) => Some(t.clone()),
            None => self.parent?.lookup(name),
        }
    }
}

/// The value of `v` (a value of `g`) when it is a constant or a data-movement expression over
/// constants of `g` and its enclosing scopes; with the names of the captured constants it read.
pub fn evaluate(g: &Graph, v: ValueId, scope: &Scope<'_>) -> Option<(Tensor, Vec<String>)> {
    let mut captured = Vec::new();
    let t = eval(g, v, scope, 0, &mut captured)?;
    Some((t, captured))
}

fn eval(g: &Graph, v: ValueId, scope: &Scope<'_>, depth: usize, captured: &mut Vec<String>) -> Option<Tensor> {
    if depth > MAX_DEPTH {
        return None;
    }
    let value = g.value(v);
    if let ValueDef::Outer = value.def() {
        captured.push(value.name.clone());
        return scope.lookup(&value.name).map(|t| (*t).clone());
    }
    if let Some(t) = constant(g, v) {
        return Some((*t).clone());
    }
    let ValueDef::Node { node, output: 0 } = value.def() else { return None };
    let n = g.node(*node);
    if !n.domain().is_empty() {
        return None;
    }
    let mut arg = |i: usize| n.input(i).and_then(|x| eval(g, x, scope, depth + 1, captured));
    let ints = |t: Option<Tensor>| t.and_then(|t| t.to_vec::<i64>().ok());
    let x = arg(0)?;
    match n.op_type.as_str() {
        "Identity" => Some(x),
        "Unsqueeze" => {
            let axes = match n.input(1) {
                Some(_) => ints(arg(1))?,
                None => n.attr_ints("axes")?.to_vec(),
            };
            let rank = x.rank() + axes.len();
            let mut axes = axes.iter().map(|&a| norm(a, rank)).collect::<Option<Vec<_>>>()?;
            axes.sort_unstable();
            let mut dims = x.dims().to_vec();
            for a in axes {
                (a <= dims.len()).then(|| dims.insert(a, 1))?;
            }
            x.reshaped(dims).ok()
        }
        "Squeeze" => {
            let axes = match n.input(1) {
                Some(_) => Some(ints(arg(1))?),
                None => n.attr_ints("axes").map(<[i64]>::to_vec),
            };
            let rank = x.rank();
            let dims: Vec<usize> = match axes {
                None => x.dims().iter().copied().filter(|&d| d != 1).collect(),
                Some(axes) => {
                    let axes = axes.iter().map(|&a| norm(a, rank)).collect::<Option<Vec<_>>>()?;
                    if axes.iter().any(|&a| x.dims()[a] != 1) {
                        return None;
                    }
                    x.dims().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect()
                }
            };
            x.reshaped(dims).ok()
        }
        "Reshape" => {
            let shape = ints(arg(1))?;
            if n.attr_int("allowzero").unwrap_or(0) != 0 && shape.contains(&0) {
                return None;
            }
            let mut dims = Vec::with_capacity(shape.len());
            let mut infer = None;
            for (i, &s) in shape.iter().enumerate() {
                match s {
                    0 => dims.push(*x.dims().get(i)?),
                    -1 => {
                        infer = Some(i);
                        dims.push(1);
                    }
                    s if s > 0 => dims.push(s as usize),
                    _ => return None,
                }
            }
            if let Some(i) = infer {
                let known: usize = dims.iter().product();
                dims[i] = (x.len() as usize).checked_div(known)?;
            }
            x.reshaped(dims).ok()
        }
        "Flatten" => {
            let axis = norm(n.attr_int("axis").unwrap_or(1), x.rank() + 1)?;
            let outer: usize = x.dims()[..axis].iter().product();
            x.reshaped(vec![outer, x.dims()[axis..].iter().product()]).ok()
        }
        "Concat" => {
            let mut parts = vec![x];
            for i in 1..n.inputs().len() {
                parts.push(arg(i)?);
            }
            let axis = norm(n.attr_int("axis")?, parts[0].rank())?;
            concat(&parts, axis)
        }
        "Slice" => {
            let rank = x.rank();
            let (starts, ends, axes, steps) = match n.input(1) {
                Some(_) => {
                    let starts = ints(arg(1))?;
                    let ends = ints(arg(2))?;
                    let axes = match n.input(3) {
                        Some(_) => ints(arg(3))?,
                        None => (0..starts.len() as i64).collect(),
                    };
                    let steps = match n.input(4) {
                        Some(_) => ints(arg(4))?,
                        None => vec![1; starts.len()],
                    };
                    (starts, ends, axes, steps)
                }
                None => {
                    let starts = n.attr_ints("starts")?.to_vec();
                    let ends = n.attr_ints("ends")?.to_vec();
                    let axes = n.attr_ints("axes").map_or_else(|| (0..starts.len() as i64).collect(), <[i64]>::to_vec);
                    let steps = vec![1; starts.len()];
                    (starts, ends, axes, steps)
                }
            };
            let mut ranges: Vec<(i64, i64, i64)> = x.dims().iter().map(|&d| (0, d as i64, 1)).collect();
            for (((s, e), a), st) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
                let a = norm(*a, rank)?;
                let d = x.dims()[a] as i64;
                if *st <= 0 {
                    return None;
                }
                let clamp = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
                ranges[a] = (clamp(*s), clamp(*e), *st);
            }
            slice(&x, &ranges)
        }
        "Transpose" => {
            let perm: Vec<usize> = match n.attr("perm") {
                Some(AttrValue::Ints(p)) => p.iter().map(|&a| norm(a, x.rank())).collect::<Option<_>>()?,
                _ => (0..x.rank()).rev().collect(),
            };
            transpose(&x, &perm)
        }
        _ => None,
    }
}

fn norm(a: i64, rank: usize) -> Option<usize> {
    let a = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

fn element_size(t: &Tensor) -> Option<usize> {
    match t.dtype() {
        DataType::F32 | DataType::I32 => Some(4),
        DataType::I64 | DataType::F64 => Some(8),
        DataType::F16 | DataType::BF16 | DataType::I16 => Some(2),
        DataType::I8 | DataType::U8 | DataType::Bool => Some(1),
        _ => None,
    }
}

fn concat(parts: &[Tensor], axis: usize) -> Option<Tensor> {
    let first = &parts[0];
    let size = element_size(first)?;
    let outer: usize = first.dims()[..axis].iter().product();
    let mut dims = first.dims().to_vec();
    dims[axis] = 0;
    for p in parts {
        let same = p.dtype() == first.dtype()
            && p.rank() == first.rank()
            && p.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b);
        if !same {
            return None;
        }
        dims[axis] += p.dims()[axis];
    }
    let mut out = Vec::with_capacity(dims.iter().product::<usize>() * size);
    for o in 0..outer {
        for p in parts {
            let row: usize = p.dims()[axis..].iter().product::<usize>() * size;
            out.extend_from_slice(p.bytes()?.get(o * row..(o + 1) * row)?);
        }
    }
    Tensor::new(first.dtype(), dims, out.into()).ok()
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Gathers elements at `index(out position)` into a new tensor of `dims`.
fn gather(x: &Tensor, dims: Vec<usize>, source: impl Fn(&[usize]) -> usize) -> Option<Tensor> {
    let size = element_size(x)?;
    let bytes = x.bytes()?;
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(total * size);
    let mut pos = vec![0usize; dims.len()];
    for _ in 0..total {
        let s = source(&pos) * size;
        out.extend_from_slice(bytes.get(s..s + size)?);
        for d in (0..dims.len()).rev() {
            pos[d] += 1;
            if pos[d] < dims[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    Tensor::new(x.dtype(), dims, out.into()).ok()
}

fn slice(x: &Tensor, ranges: &[(i64, i64, i64)]) -> Option<Tensor> {
    let dims: Vec<usize> =
        ranges.iter().map(|&(s, e, st)| if e > s { ((e - s + st - 1) / st) as usize } else { 0 }).collect();
    let st = strides(x.dims());
    gather(x, dims, |p| {
        p.iter().enumerate().map(|(i, &q)| (ranges[i].0 as usize + q * ranges[i].2 as usize) * st[i]).sum()
    })
}

fn transpose(x: &Tensor, perm: &[usize]) -> Option<Tensor> {
    if perm.len() != x.rank() {
        return None;
    }
    let dims: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    let st = strides(x.dims());
    gather(x, dims, |p| p.iter().enumerate().map(|(i, &q)| q * st[perm[i]]).sum())
}
