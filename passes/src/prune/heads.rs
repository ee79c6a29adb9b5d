//! Attention-head pruning, for self-attention written out in standard ops and for
//! `com.microsoft.Attention`.
//!
//! Written out (as BERT exporters write it), a block is found from its Softmax:
//! `Softmax([Add(mask)] [Div|Mul(c)] MatMul(Q, Kᵀ))`, `MatMul(P, V)`, with Q, K and V each a
//! `Transpose ← Reshape([.., H, D]) ← X·W [+ b]`, and the context
//! `Transpose(0,2,1,3) → Reshape([.., H·D]) → ·Wo`. Removing head h removes columns
//! `h·D..(h+1)·D` of Wq, Wk, Wv and their biases, the same rows of Wo, and turns H into H'
//! in the three head-split Reshapes and H·D into H'·D in the merge Reshape (constants, or the
//! constant pieces of a `Concat` shape). The fused op holds Q|K|V packed in one weight; its
//! `num_heads` (and `qkv_hidden_sizes`) change with it.
//!
//! Anything else that reads a projection (other than `Shape → Gather` of the batch or
//! sequence dimension) leaves the block alone, with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrLookup, Graph, NodeId, ValueId};

use super::PruneError;
use super::apply::{Slices, replace_constant, set_int_attr, slice_constants};
use super::channels::{constant, dims};
use super::tensor::{Norm, slice_norms};

/// An attention block whose heads can be pruned.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// The node that names the block in reports (the Softmax or the Attention node).
    pub anchor: NodeId,
    pub heads: usize,
    pub head_size: usize,
    /// Weights whose columns (`axis`) are per head: (node, input, axis, offset of the head
    /// columns within that axis).
    pub per_head: Vec<(NodeId, usize, usize, usize)>,
    /// Shape entries to rewrite: (node, input, index, multiplier of H'), set to H'·multiplier.
    pub shapes: Vec<ShapeEntry>,
    /// The fused node whose `num_heads` changes.
    pub fused: Option<NodeId>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeEntry {
    pub node: NodeId,
    pub input: usize,
    pub index: usize,
    pub unit: usize,
}

/// Finds every prunable block; blocks Kiln cannot prove are returned as (anchor, reason).
pub(crate) fn find(g: &Graph) -> (Vec<Block>, Vec<(NodeId, String)>) {
    let mut blocks = Vec::new();
    let mut skipped = Vec::new();
    for (id, n) in g.nodes() {
        let found = if n.is_onnx("Softmax") && leads_to_qk(g, n.input(0)) {
            Some(unfused(g, id))
        } else if n.domain() == "com.microsoft" && n.op_type == "Attention" {
            Some(fused(g, id))
        } else {
            None
        };
        match found {
            Some(Ok(b)) => blocks.push(b),
            Some(Err(why)) => skipped.push((id, why)),
            None => {}
        }
    }
    (blocks, skipped)
}

fn producer(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    let p = g.value(v).producer()?;
    g.node(p).is_onnx(op).then_some(p)
}

/// The single node reading `v` (graph outputs count as a reader that is not a node).
fn only_consumer(g: &Graph, v: ValueId) -> Option<NodeId> {
    match g.value(v).uses() {
        [u] if !g.is_output(v) => Some(u.node),
        _ => None,
    }
}

fn scalar_const(g: &Graph, v: Option<ValueId>) -> bool {
    v.and_then(|v| constant(g, v)).is_some_and(|t| t.len() == 1)
}

/// Whether `v` comes from a MatMul of two computed tensors through scales and an Add.
fn leads_to_qk(g: &Graph, v: Option<ValueId>) -> bool {
    let mut v = v;
    for _ in 0..3 {
        let Some(p) = v.and_then(|v| g.value(v).producer()) else { return false };
        let n = g.node(p);
        if n.is_onnx("MatMul") {
            return n.inputs().iter().flatten().all(|&x| constant(g, x).is_none());
        }
        if !(n.is_onnx("Add") || n.is_onnx("Div") || n.is_onnx("Mul")) {
            return false;
        }
        v = n.inputs().iter().flatten().copied().find(|&x| g.value(x).producer().is_some());
    }
    false
}

fn perm(g: &Graph, id: NodeId) -> Option<Vec<i64>> {
    g.node(id).attributes.attr_ints("perm").map(<[i64]>::to_vec)
}

/// Goes back through a `Transpose(perm)`; returns its input.
fn through_transpose(g: &Graph, v: ValueId, want: &[i64]) -> Option<ValueId> {
    let t = producer(g, v, "Transpose")?;
    (perm(g, t).as_deref() == Some(want)).then(|| g.node(t).input(0)).flatten()
}

/// A head split: `Reshape(proj, [.., H, D])`; returns (reshape, proj).
fn head_split(g: &Graph, v: ValueId) -> Option<(NodeId, ValueId)> {
    let r = producer(g, v, "Reshape")?;
    Some((r, g.node(r).input(0)?))
}

/// A projection `X·W [+ b]` with constant 2-D W: (MatMul, optional (Add, bias input)).
fn projection(g: &Graph, v: ValueId) -> Result<(NodeId, Option<(NodeId, usize)>), String> {
    if let Some(add) = producer(g, v, "Add") {
        let n = g.node(add);
        let (bi, mi) = if n.input(0).and_then(|x| constant(g, x)).is_some() { (0, 1) } else { (1, 0) };
        let b = n.input(bi).and_then(|x| constant(g, x)).filter(|t| t.rank() == 1);
        let mm = n.input(mi).and_then(|x| producer(g, x, "MatMul"));
        match (b, mm) {
            (Some(_), Some(mm)) => {
                let mm_out = g.node(mm).output(0).ok_or("MatMul without output")?;
                if only_consumer(g, mm_out) != Some(add) {
                    return Err("a projection's product is read elsewhere".into());
                }
                check_weight(g, mm)?;
                return Ok((mm, Some((add, bi))));
            }
            _ => return Err("a projection is not X·W + b with constant W and b".into()),
        }
    }
    let mm = producer(g, v, "MatMul").ok_or("a projection is not a MatMul")?;
    check_weight(g, mm)?;
    Ok((mm, None))
}

fn check_weight(g: &Graph, mm: NodeId) -> Result<(), String> {
    match g.node(mm).input(1).and_then(|w| constant(g, w)) {
        Some(w) if w.rank() == 2 => Ok(()),
        _ => Err("a projection weight is not a constant matrix".into()),
    }
}

/// Readers of a projection other than its head split must only read batch or sequence sizes.
fn only_split_reads(g: &Graph, v: ValueId, split: NodeId) -> Result<(), String> {
    if g.is_output(v) {
        return Err(format!("'{}' is a model output", g.value(v).name));
    }
    for u in g.value(v).uses() {
        if u.node == split {
            continue;
        }
        let n = g.node(u.node);
        let shape_out = n.output(0).filter(|_| n.is_onnx("Shape") && n.attributes.is_empty());
        let Some(s) = shape_out else {
            return Err(format!("{} also reads '{}'", n.label(u.node), g.value(v).name));
        };
        for su in g.value(s).uses() {
            let gn = g.node(su.node);
            let idx = gn.input(1).and_then(|i| constant(g, i)).and_then(|t| t.to_vec::<i64>().ok());
            let ok = gn.is_onnx("Gather") && su.input == 0 && idx.is_some_and(|i| i.iter().all(|&k| k == 0 || k == 1));
            if !ok {
                return Err(format!(
                    "{} reads more than the batch and sequence sizes of '{}'",
                    gn.label(su.node),
                    g.value(v).name
                ));
            }
        }
    }
    Ok(())
}

/// Where element `index` of a Reshape's shape lives, if it is a constant (the shape input
/// itself, or a constant piece of a Concat building it): (node, input, index within it).
fn shape_slot(g: &Graph, reshape: NodeId, index: usize) -> Result<(NodeId, usize, usize, i64), String> {
    let s = g.node(reshape).input(1).ok_or("Reshape without shape")?;
    if let Some(t) = constant(g, s) {
        let v = t.to_vec::<i64>().map_err(|e| e.to_string())?;
        let x = *v.get(index).ok_or("shape too short")?;
        return Ok((reshape, 1, index, x));
    }
    let cat = producer(g, s, "Concat").ok_or("a Reshape's shape is computed by something other than Concat")?;
    let mut offset = 0;
    for (i, piece) in g.node(cat).inputs().iter().enumerate() {
        let piece = piece.ok_or("empty Concat input")?;
        let len = dims(g, piece)
            .and_then(|d| d.first().and_then(|x| x.as_known()))
            .ok_or("a shape piece has unknown length")? as usize;
        if index < offset + len {
            let t = constant(g, piece).ok_or("the head count in a Reshape's shape is computed at run time")?;
            let v = t.to_vec::<i64>().map_err(|e| e.to_string())?;
            return Ok((cat, i, index - offset, v[index - offset]));
        }
        offset += len;
    }
    Err("shape too short".into())
}

/// A shape entry that must become H'·unit: it must hold H·unit now, or -1 (left alone).
fn shape_entry(g: &Graph, reshape: NodeId, index: usize, want: i64, unit: usize) -> Result<Option<ShapeEntry>, String> {
    let (node, input, idx, v) = shape_slot(g, reshape, index)?;
    if v == -1 {
        return Ok(None);
    }
    if v != want {
        return Err(format!("{} has {v} where {want} was expected", g.node(reshape).label(reshape)));
    }
    Ok(Some(ShapeEntry { node, input, index: idx, unit }))
}

fn unfused(g: &Graph, softmax: NodeId) -> Result<Block, String> {
    let sm = g.node(softmax);
    // Back from the scores to MatMul(Q, Kᵀ), through an optional mask and scale.
    let mut scores = sm.input(0).ok_or("Softmax without input")?;
    let qk = loop {
        let p = g.value(scores).producer().ok_or("scores are not computed")?;
        let n = g.node(p);
        if n.is_onnx("MatMul") {
            break p;
        }
        let next = if n.is_onnx("Div") && scalar_const(g, n.input(1)) {
            n.input(0)
        } else if n.is_onnx("Mul") || n.is_onnx("Add") {
            let (a, b) = (n.input(0).ok_or("missing input")?, n.input(1).ok_or("missing input")?);
            let (s, other) =
                if leads_to_qk(g, Some(a)) || g.value(a).producer().is_some_and(|x| g.node(x).is_onnx("MatMul")) {
                    (a, b)
                } else {
                    (b, a)
                };
            let od = dims(g, other).unwrap_or_default();
            let per_head = od.len() >= 3 && od[od.len() - 3].as_known() != Some(1);
            if n.is_onnx("Mul") && !scalar_const(g, Some(other)) || per_head {
                return Err(format!("{} varies per head", n.label(p)));
            }
            Some(s)
        } else {
            return Err(format!("{} between Q·Kᵀ and Softmax", n.label(p)));
        };
        scores = next.ok_or("missing input")?;
    };
    let (qt, kt) = (g.node(qk).input(0).ok_or("no Q")?, g.node(qk).input(1).ok_or("no K")?);
    let q = through_transpose(g, qt, &[0, 2, 1, 3]).ok_or("Q is not a transposed head split")?;
    let k = match through_transpose(g, kt, &[0, 2, 3, 1]) {
        Some(k) => k,
        None => through_transpose(g, kt, &[0, 1, 3, 2])
            .and_then(|k| through_transpose(g, k, &[0, 2, 1, 3]))
            .ok_or("Kᵀ is not a transposed head split")?,
    };
    let probs = sm.output(0).ok_or("Softmax without output")?;
    let ctx_mm = only_consumer(g, probs).filter(|&c| g.node(c).is_onnx("MatMul") && g.node(c).input(0) == Some(probs));
    let ctx_mm = ctx_mm.ok_or("the attention weights are read by something other than MatMul(P, V)")?;
    let vt = g.node(ctx_mm).input(1).ok_or("no V")?;
    let v = through_transpose(g, vt, &[0, 2, 1, 3]).ok_or("V is not a transposed head split")?;
    let ctx = g.node(ctx_mm).output(0).ok_or("no context")?;
    let tr = only_consumer(g, ctx)
        .filter(|&t| g.node(t).is_onnx("Transpose") && perm(g, t).as_deref() == Some(&[0, 2, 1, 3]));
    let tr = tr.ok_or("the context is not transposed back")?;
    let ctx_t = g.node(tr).output(0).ok_or("no transposed context")?;
    let merge = g.value(ctx_t).uses().iter().map(|u| u.node).find(|&r| g.node(r).is_onnx("Reshape"));
    let merge = merge.ok_or("the context is not merged by a Reshape")?;
    only_split_reads(g, ctx_t, merge)?;
    let merged = g.node(merge).output(0).ok_or("no merged context")?;
    let out_mm =
        only_consumer(g, merged).filter(|&m| g.node(m).is_onnx("MatMul") && g.node(m).input(0) == Some(merged));
    let out_mm = out_mm.ok_or("the merged context is not read by one output projection")?;
    check_weight(g, out_mm)?;

    let (rq, pq) = head_split(g, q).ok_or("Q is not a Reshape")?;
    let (rk, pk) = head_split(g, k).ok_or("K is not a Reshape")?;
    let (rv, pv) = head_split(g, v).ok_or("V is not a Reshape")?;
    let split_dims = g.node(rq).output(0).and_then(|o| dims(g, o)).ok_or("unknown head-split shape")?;
    let [.., h, d] = split_dims.as_slice() else { return Err("head split is not 4-D".into()) };
    let (heads, head_size) = match (h.as_known(), d.as_known()) {
        (Some(h), Some(d)) if h > 0 && d > 0 => (h as usize, d as usize),
        _ => return Err("head count or size unknown".into()),
    };
    let mut per_head = Vec::new();
    let mut shapes = Vec::new();
    for (r, p) in [(rq, pq), (rk, pk), (rv, pv)] {
        let (mm, add) = projection(g, p)?;
        only_split_reads(g, p, r)?;
        let out_dims = g.node(r).output(0).and_then(|o| dims(g, o)).unwrap_or_default();
        if out_dims.len() != 4 || out_dims[2].as_known() != Some(heads as i64) {
            return Err("Q, K and V have different head splits".into());
        }
        let w = g.node(mm).input(1).and_then(|w| constant(g, w)).ok_or("weight")?;
        if w.dims()[1] != heads * head_size {
            return Err("a projection is wider than its heads".into());
        }
        per_head.push((mm, 1, 1, 0));
        if let Some((add, bi)) = add {
            per_head.push((add, bi, 0, 0));
        }
        shapes.extend(shape_entry(g, r, 2, heads as i64, 1)?);
    }
    shapes.extend(shape_entry(g, merge, 2, (heads * head_size) as i64, head_size)?);
    per_head.push((out_mm, 1, 0, 0));
    Ok(Block { anchor: softmax, heads, head_size, per_head, shapes, fused: None })
}

fn fused(g: &Graph, id: NodeId) -> Result<Block, String> {
    let n = g.node(id);
    let heads = n.attributes.attr_int("num_heads").filter(|&h| h > 0).ok_or("no num_heads")? as usize;
    if n.outputs().iter().skip(1).flatten().next().is_some() || n.inputs().len() > 4 {
        return Err("past/present state or extra inputs".into());
    }
    let w = n.input(1).and_then(|w| constant(g, w)).filter(|w| w.rank() == 2).ok_or("weights not constant")?;
    if n.input(2).is_some_and(|b| constant(g, b).is_none()) {
        return Err("bias not constant".into());
    }
    let total = w.dims()[1];
    if let Some(sizes) = n.attributes.attr_ints("qkv_hidden_sizes")
        && !(sizes.len() == 3 && sizes.iter().all(|&s| s as usize * 3 == total))
    {
        return Err("Q, K and V have different widths".into());
    }
    if total % (3 * heads) != 0 {
        return Err("packed weight width is not 3·heads·size".into());
    }
    let width = total / 3;
    let head_size = width / heads;
    let out = n.output(0).ok_or("no output")?;
    let out_mm = only_consumer(g, out).filter(|&m| g.node(m).is_onnx("MatMul") && g.node(m).input(0) == Some(out));
    let out_mm = out_mm.ok_or("the attention output is not read by one output projection")?;
    check_weight(g, out_mm)?;
    let mut per_head = Vec::new();
    for part in 0..3 {
        per_head.push((id, 1, 1, part * width));
        if n.input(2).is_some() {
            per_head.push((id, 2, 0, part * width));
        }
    }
    per_head.push((out_mm, 1, 0, 0));
    Ok(Block { anchor: id, heads, head_size, per_head, shapes: Vec::new(), fused: Some(id) })
}

/// Importance of each head: the norms of its weight slices, each weight normalized by its
/// mean over heads, summed (biases left out).
pub(crate) fn importance(g: &Graph, b: &Block, norm: Norm) -> Result<Vec<f64>, PruneError> {
    let mut score = vec![0.0; b.heads];
    for &(node, input, axis, offset) in &b.per_head {
        let Some(t) = g.node(node).input(input).and_then(|v| constant(g, v)) else { continue };
        if t.rank() != 2 {
            continue;
        }
        let name = g.node(node).label(node);
        let cols = slice_norms(&t, axis, norm, &name)?;
        let per: Vec<f64> =
            (0..b.heads).map(|h| cols[offset + h * b.head_size..offset + (h + 1) * b.head_size].iter().sum()).collect();
        let mean = per.iter().sum::<f64>() / b.heads as f64;
        for (s, p) in score.iter_mut().zip(&per) {
            *s += if mean > 0.0 { p / mean } else { 0.0 };
        }
    }
    Ok(score)
}

/// Keeps the heads `keep` (sorted) of a block.
pub(crate) fn apply(g: &mut Graph, b: &Block, keep: &[usize]) -> Result<(), PruneError> {
    let mut slices = Slices::new();
    for &(node, input, axis, offset) in &b.per_head {
        let idx: Vec<usize> = keep.iter().flat_map(|&h| (0..b.head_size).map(move |j| h * b.head_size + j)).collect();
        let entry = slices.entry((node, input)).or_default();
        // Packed Q|K|V parts share one axis: collect their indices, then cut once.
        match entry.iter_mut().find(|(a, _)| *a == axis) {
            Some((_, all)) => all.extend(idx.iter().map(|i| offset + i)),
            None => entry.push((axis, idx.iter().map(|i| offset + i).collect())),
        }
    }
    for cuts in slices.values_mut() {
        for (_, idx) in cuts.iter_mut() {
            idx.sort_unstable();
        }
    }
    slice_constants(g, &slices)?;
    let mut by_slot: BTreeMap<(NodeId, usize), Vec<(usize, i64)>> = BTreeMap::new();
    for s in &b.shapes {
        by_slot.entry((s.node, s.input)).or_default().push((s.index, (keep.len() * s.unit) as i64));
    }
    for ((node, input), sets) in by_slot {
        let Some(v) = g.node(node).input(input) else { continue };
        let name = g.value(v).name.clone();
        let t = constant(g, v).ok_or_else(|| PruneError::Invalid(format!("shape '{name}' should be a constant")))?;
        let mut vals =
            t.to_vec::<i64>().map_err(|e| PruneError::Tensor { tensor: name.clone(), message: e.to_string() })?;
        for (i, x) in sets {
            if let Some(slot) = vals.get_mut(i) {
                *slot = x;
            }
        }
        let nt = Tensor::from_slice(t.dims().to_vec(), &vals)
            .map_err(|e| PruneError::Tensor { tensor: name, message: e.to_string() })?;
        replace_constant(g, node, input, Arc::new(nt));
    }
    if let Some(f) = b.fused {
        set_int_attr(g, f, "num_heads", keep.len() as i64);
        if g.node(f).attributes.attr_ints("qkv_hidden_sizes").is_some() {
            let w = (keep.len() * b.head_size) as i64;
            let n = g.node_mut(f);
            if let Some(a) = n.attributes.iter_mut().find(|a| a.name == "qkv_hidden_sizes") {
                a.value = kiln_compiler::ir::AttrValue::Ints(vec![w, w, w]);
            }
        }
    }
    Ok(())
}
