//! Control flow: If, Loop and Scan infer their bodies with the body inputs bound.
//!
//! Loop-carried values may change shape from one iteration to the next, so the body is
//! first tried on a copy with the initial types; where a carried type changes, the binding
//! is widened (joined) until it is stable, and only then is the real body annotated.

use super::{Registry, bare, bare_all, code, norm_axis, tt};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim, Type, TypeKind};
use crate::shape::merge::join_types;
use crate::shape::{InferCtx, InferResult};

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(&["If"], if_op);
    r.onnx(&["Loop"], loop_op);
    r.onnx(&["Scan"], scan);
    r.onnx(&["SequenceMap"], sequence_map);
}

fn if_op(cx: &mut InferCtx<'_>) -> InferResult {
    let n = cx.num_outputs();
    let cond = cx.known_ints(0).and_then(|v| v.first().copied());
    // With a known condition the other branch is dead: tried on a copy, neither annotated
    // nor reported (its shapes may well be inconsistent).
    let (then_t, then_k) = cx.infer_subgraph_known("then_branch", &[], cond.is_none_or(|c| c != 0)).unwrap_or_default();
    let (else_t, else_k) = cx.infer_subgraph_known("else_branch", &[], cond.is_none_or(|c| c == 0)).unwrap_or_default();
    if then_t.len() != n || else_t.len() != n {
        return Err(format!("If branches have {} and {} outputs for {n}", then_t.len(), else_t.len()));
    }
    for i in 0..n {
        let k = match cond {
            Some(c) if c != 0 => then_k.get(i).cloned().flatten(),
            Some(_) => else_k.get(i).cloned().flatten(),
            None => then_k.get(i).cloned().flatten().filter(|k| else_k.get(i).is_some_and(|e| e.as_ref() == Some(k))),
        };
        if let Some(k) = k {
            cx.set_known(i, k);
        }
    }
    Ok((0..n)
        .map(|i| match cond {
            Some(c) if c != 0 => then_t[i].clone(),
            Some(_) => else_t[i].clone(),
            None => join_types(then_t[i].as_ref(), else_t[i].as_ref()),
        })
        .collect())
}

fn scalar(d: DataType) -> Option<Type> {
    tt(code(d), Some(vec![]))
}

/// Adds a leading (or `axis`) dim of `len` to a per-iteration output type.
fn stack(t: Option<&Type>, axis: i64, len: Dim) -> Result<Option<Type>, String> {
    let Some(TypeKind::Tensor(tt_)) = t.map(|t| &t.kind) else { return Ok(None) };
    let shape = match &tt_.shape {
        Some(s) => {
            let a = norm_axis(axis, s.len() + 1)?;
            let mut out = bare_all(s);
            out.insert(a, len);
            Some(out)
        }
        None => None,
    };
    Ok(tt(tt_.elem_type, shape))
}

type Types = Vec<Option<Type>>;

/// Runs the body on copies until the carried types are stable, then annotates it.
fn settle(
    cx: &mut InferCtx<'_>,
    fixed: &[Option<Type>],
    mut carried: Vec<Option<Type>>,
    carried_out_offset: usize,
) -> Option<(Types, Types)> {
    let bind = |c: &[Option<Type>]| -> Vec<Option<Type>> { fixed.iter().cloned().chain(c.iter().cloned()).collect() };
    for _ in 0..4 {
        let outs = cx.infer_subgraph("body", &bind(&carried), false)?;
        let next: Vec<Option<Type>> = carried
            .iter()
            .enumerate()
            .map(|(i, c)| widen(c.as_ref(), outs.get(carried_out_offset + i).and_then(Option::as_ref)))
            .collect();
        if next == carried {
            break;
        }
        carried = next;
    }
    let outs = cx.infer_subgraph("body", &bind(&carried), true)?;
    // A carried value's final type: the join of what goes in and what the body returns,
    // or the body's type where the two are of different kinds (optional in, sequence out).
    let finals = carried
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let o = outs.get(carried_out_offset + i).and_then(Option::as_ref);
            join_types(c.as_ref(), o).or_else(|| if same_kind(c.as_ref(), o) { None } else { o.cloned() })
        })
        .collect();
    Some((finals, outs))
}

/// The number of iterations, when it is exactly the trip count: a for-loop (no condition
/// input), or a true condition the body passes through unchanged.
fn trip_count(cx: &InferCtx<'_>) -> Option<i64> {
    let m = cx.known_ints(0)?.first().copied()?.max(0);
    if !cx.has_input(1) {
        return Some(m);
    }
    if cx.known_ints(1)?.first().copied()? == 0 {
        return Some(0);
    }
    let body = cx.node.attributes.iter().find_map(|a| match (&*a.name, &a.value) {
        ("body", crate::ir::AttrValue::Graph(g)) => Some(g.as_ref()),
        _ => None,
    })?;
    let cond_in = *body.inputs().get(1)?;
    let mut v = *body.outputs().first()?;
    // Follow Identity chains back from the body's condition output.
    for _ in 0..8 {
        if v == cond_in {
            return Some(m);
        }
        let p = body.value(v).producer()?;
        let n = body.node(p);
        if !n.is_onnx("Identity") {
            return None;
        }
        v = n.input(0)?;
    }
    None
}

fn same_kind(a: Option<&Type>, b: Option<&Type>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::mem::discriminant(&a.kind) == std::mem::discriminant(&b.kind),
        _ => true,
    }
}

/// The binding for the next trial: the join, or the first binding where kinds differ.
fn widen(c: Option<&Type>, o: Option<&Type>) -> Option<Type> {
    if same_kind(c, o) { join_types(c, o) } else { c.cloned() }
}

/// `SequenceMap`: the body sees one element of each sequence input (tensors as they are) and
/// each body output becomes a sequence.
fn sequence_map(cx: &mut InferCtx<'_>) -> InferResult {
    let bound: Vec<Option<Type>> = cx
        .inputs
        .iter()
        .map(|t| match t.as_ref().map(|t| &t.kind) {
            Some(TypeKind::Sequence(e)) => e.as_deref().cloned(),
            _ => t.clone(),
        })
        .collect();
    let Some(outs) = cx.infer_subgraph("body", &bound, true) else { return Ok(vec![None; cx.num_outputs()]) };
    Ok(outs.into_iter().map(|o| Some(Type { kind: TypeKind::Sequence(o.map(Box::new)), denotation: None })).collect())
}

fn loop_op(cx: &mut InferCtx<'_>) -> InferResult {
    let nout = cx.num_outputs();
    let n_carried = cx.node.inputs().len().saturating_sub(2);
    let carried: Vec<Option<Type>> = (0..n_carried).map(|i| cx.inputs.get(2 + i).cloned().flatten()).collect();
    let fixed = [scalar(DataType::I64), scalar(DataType::Bool)];
    let Some((carried, outs)) = settle(cx, &fixed, carried, 1) else { return Ok(vec![None; nout]) };
    let trips = trip_count(cx).map_or_else(Dim::unknown, Dim::known);
    let mut result: Vec<Option<Type>> = carried;
    for k in 0..nout.saturating_sub(n_carried) {
        result.push(stack(outs.get(1 + n_carried + k).and_then(Option::as_ref), 0, trips.clone())?);
    }
    result.truncate(nout);
    Ok(result)
}

fn scan(cx: &mut InferCtx<'_>) -> InferResult {
    let nout = cx.num_outputs();
    if cx.opset < 9 {
        // Scan-8 has a batch axis and sequence lengths; its bodies are left alone.
        return Ok(vec![None; nout]);
    }
    let m = cx.node.attr_int("num_scan_inputs").ok_or("Scan has no num_scan_inputs")?.max(0) as usize;
    let n_in = cx.node.inputs().len();
    let n_state = n_in.checked_sub(m).ok_or("Scan has fewer inputs than num_scan_inputs")?;
    let in_axes = cx.node.attr_ints("scan_input_axes").map_or_else(|| vec![0; m], <[i64]>::to_vec);
    let out_axes = cx.node.attr_ints("scan_output_axes").map(<[i64]>::to_vec);
    let mut seq_len = Dim::unknown();
    let mut slices = Vec::with_capacity(m);
    for j in 0..m {
        let i = n_state + j;
        let t = match cx.shape(i) {
            Some(s) => {
                let a = norm_axis(in_axes.get(j).copied().unwrap_or(0), s.len())?;
                if j == 0 {
                    seq_len = bare(&s[a]);
                }
                let mut rest = bare_all(s);
                rest.remove(a);
                tt(cx.elem(i), Some(rest))
            }
            None => tt(cx.elem(i), None),
        };
        slices.push(t);
    }
    let states: Vec<Option<Type>> = (0..n_state).map(|i| cx.inputs.get(i).cloned().flatten()).collect();
    // The body takes states first, then the scan slices: bind slices after the states.
    let mut carried = states;
    let mut outs = Vec::new();
    for _ in 0..4 {
        let bound: Vec<Option<Type>> = carried.iter().cloned().chain(slices.iter().cloned()).collect();
        let Some(o) = cx.infer_subgraph("body", &bound, false) else { return Ok(vec![None; nout]) };
        let next: Vec<Option<Type>> =
            carried.iter().enumerate().map(|(i, c)| widen(c.as_ref(), o.get(i).and_then(Option::as_ref))).collect();
        let stable = next == carried;
        carried = next;
        if stable {
            break;
        }
    }
    let bound: Vec<Option<Type>> = carried.iter().cloned().chain(slices.iter().cloned()).collect();
    if let Some(o) = cx.infer_subgraph("body", &bound, true) {
        outs = o;
    }
    let mut result = carried;
    for k in 0..nout.saturating_sub(n_state) {
        let axis = out_axes.as_ref().and_then(|a| a.get(k)).copied().unwrap_or(0);
        result.push(stack(outs.get(n_state + k).and_then(Option::as_ref), axis, seq_len.clone())?);
    }
    result.truncate(nout);
    Ok(result)
}
