//! Observing values computed inside subgraphs (If branches, Loop bodies).
//!
//! ONNX Runtime returns only main-graph values, so the calibration copy of the model carries
//! every observed subgraph value out to the main graph, one enclosing node at a time:
//!
//! - If: the value becomes an extra output of its branch, and the other branch outputs an
//!   empty tensor of the same element type and rank in that position; the If node gets a
//!   matching extra output. A sample whose run takes the other branch returns the empty
//!   tensor, which observes nothing, so each value's range covers exactly the runs that
//!   computed it, whatever the condition depends on (input ranks, sample rate…).
//! - Loop: the value becomes an extra scan output of the body, so the Loop returns it stacked
//!   over iterations (the union of the iterations' ranges). Only values of a static shape are
//!   lifted: a scan output must have the same shape at every iteration.
//!
//! Lifting instead of inlining the taken branch keeps one calibration model valid for every
//! sample, and each value is still computed by its own node, as the quantizer sees it.
//! Scan bodies are not lifted (their values stay unobserved, so their nodes stay float).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use kiln_compiler::ir::{AttrValue, Attribute, Graph, Model, NodeId, NodeSpec, TensorType, Type, ValueDef, ValueId};
use kiln_compiler::{DataType, Tensor};

/// Values of every subgraph that `wanted` names, with the main-graph output each was lifted
/// to (inner name → main-graph name). Edits `model` (a calibration-only copy) in place.
pub(crate) fn lift_subgraph_values(model: &mut Model, wanted: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(g) = model.graph.as_mut() else { return out };
    for (inner, v) in lift_nested(g, wanted) {
        out.insert(inner, g.value(v).name.clone());
    }
    out
}

/// The values of `g`'s nested subgraphs named in `wanted`, each carried to a value of `g`
/// (inner name → value of `g`), in node order.
fn lift_nested(g: &mut Graph, wanted: &BTreeSet<String>) -> Vec<(String, ValueId)> {
    let mut out = Vec::new();
    for id in g.node_ids() {
        let node = g.node(id);
        if !node.domain().is_empty() {
            continue;
        }
        match node.op_type.as_str() {
            "If" => out.extend(lift_if(g, id, wanted)),
            "Loop" => out.extend(lift_loop(g, id, wanted)),
            _ => {}
        }
    }
    out
}

/// Values of `g` itself (node outputs) named in `wanted`, then those of its subgraphs.
fn lift_graph(g: &mut Graph, wanted: &BTreeSet<String>) -> Vec<(String, ValueId)> {
    let mut own: Vec<(String, ValueId)> = Vec::new();
    for (_, node) in g.nodes() {
        for v in node.outputs().iter().flatten() {
            let name = &g.value(*v).name;
            if wanted.contains(name) {
                own.push((name.clone(), *v));
            }
        }
    }
    own.extend(lift_nested(g, wanted));
    own
}

/// The element type and type of a value, when shape inference knows its element type.
fn typed(g: &Graph, v: ValueId) -> Option<(DataType, TensorType)> {
    let t = g.tensor_type(v)?;
    Some((t.dtype()?, t.clone()))
}

fn graph_attr<'a>(g: &'a mut Graph, id: NodeId, name: &str) -> Option<&'a mut Graph> {
    g.node_mut(id).attributes.iter_mut().find_map(|a| match (&a.name[..], &mut a.value) {
        (n, AttrValue::Graph(sub)) if n == name => Some(sub.as_mut()),
        _ => None,
    })
}

/// An empty tensor of `dtype` with `rank` dims, produced by a `Constant` node of `g`.
fn empty_like(g: &mut Graph, dtype: DataType, rank: usize, base: &str) -> Option<ValueId> {
    let dims = vec![0usize; rank];
    let t = Tensor::new(dtype, dims.clone(), Bytes::new()).ok()?;
    let name = g.fresh_name(&format!("{base}__kiln_calib_empty"));
    let id = g.add_node(
        NodeSpec::new("Constant").attr(Attribute::new("value", AttrValue::Tensor(Arc::new(t)))).outputs([name]),
    );
    let v = g.node(id).output(0)?;
    g.value_mut(v).ty = Some(Type::tensor(TensorType::with_dims(dtype, &dims)));
    Some(v)
}

/// A fresh copy of `v` (`Identity`) to list as a subgraph output: ONNX Runtime returns
/// nothing for a value listed twice among a subgraph's outputs (the branch's own result, say).
fn exported(g: &mut Graph, v: ValueId, ty: &TensorType) -> Option<ValueId> {
    let name = g.fresh_name(&format!("{}__kiln_calib_out", g.value(v).name));
    let id = g.add_node(NodeSpec::new("Identity").inputs([v]).outputs([name]));
    let out = g.node(id).output(0)?;
    g.value_mut(out).ty = Some(Type::tensor(ty.clone()));
    Some(out)
}

/// Appends new outputs to node `id` of `g`, named after `bases`, typed `types`.
fn append_outputs(g: &mut Graph, id: NodeId, items: &[(String, TensorType)]) -> Vec<ValueId> {
    let mut out = Vec::with_capacity(items.len());
    for (base, ty) in items {
        let name = g.fresh_name(&format!("{base}__kiln_calib"));
        // A placeholder node creates the value; removing it leaves the value free to bind.
        let tmp = g.add_node(NodeSpec::new("Identity").outputs([name]));
        let Some(v) = g.node(tmp).output(0) else { continue };
        g.remove_node(tmp);
        let index = g.node(id).outputs().len();
        g.bind_output(id, index, v);
        g.value_mut(v).ty = Some(Type::tensor(ty.clone()));
        out.push(v);
    }
    out
}

fn lift_if(g: &mut Graph, id: NodeId, wanted: &BTreeSet<String>) -> Vec<(String, ValueId)> {
    // Each branch's values with their types; untyped ones cannot get a matching dummy.
    let mut lifted: [Vec<(String, ValueId, DataType, TensorType)>; 2] = [Vec::new(), Vec::new()];
    for (k, attr) in ["then_branch", "else_branch"].iter().enumerate() {
        let Some(branch) = graph_attr(g, id, attr) else { return Vec::new() };
        for (name, v) in lift_graph(branch, wanted) {
            if let Some((d, t)) = typed(branch, v) {
                lifted[k].push((name, v, d, t));
            }
        }
    }
    if lifted.iter().all(|l| l.is_empty()) {
        return Vec::new();
    }
    // Then-values first, then else-values; the other branch outputs an empty tensor there.
    let all: Vec<(String, DataType, TensorType, usize)> = lifted
        .iter()
        .enumerate()
        .flat_map(|(k, l)| l.iter().map(move |(n, _, d, t)| (n.clone(), *d, t.clone(), k)))
        .collect();
    for (k, attr) in ["then_branch", "else_branch"].iter().enumerate() {
        let Some(branch) = graph_attr(g, id, attr) else { return Vec::new() };
        let mut own = lifted[k].iter();
        for (name, dtype, ty, from) in &all {
            let v = if *from == k {
                own.next().and_then(|(_, v, _, t)| exported(branch, *v, t))
            } else {
                // Of unknown rank, the value gets a 1-D dummy; the If's output then has no
                // shape, which ONNX's type inference allows (it merges differing ranks).
                empty_like(branch, *dtype, ty.rank().unwrap_or(1), name)
            };
            let Some(v) = v else { return Vec::new() };
            branch.push_output(v);
        }
    }
    // The If's own output: the branches differ in their dims (one is empty), so only the
    // element type is declared.
    let items: Vec<(String, TensorType)> =
        all.iter().map(|(n, d, _, _)| (n.clone(), TensorType::new(*d, None))).collect();
    let outs = append_outputs(g, id, &items);
    all.into_iter().map(|(n, ..)| n).zip(outs).collect()
}

fn lift_loop(g: &mut Graph, id: NodeId, wanted: &BTreeSet<String>) -> Vec<(String, ValueId)> {
    let Some(body) = graph_attr(g, id, "body") else { return Vec::new() };
    let mut items = Vec::new();
    for (name, v) in lift_graph(body, wanted) {
        let Some((dtype, t)) = typed(body, v) else { continue };
        let Some(dims) = t.concrete_dims() else { continue };
        // A value that the body reads from outside is not computed per iteration.
        if matches!(body.value(v).def(), ValueDef::Outer) {
            continue;
        }
        let Some(out) = exported(body, v, &t) else { continue };
        body.push_output(out);
        let mut shape = vec![kiln_compiler::ir::Dim::unknown()];
        shape.extend(dims.iter().map(|&d| kiln_compiler::ir::Dim::known(d as i64)));
        items.push((name, TensorType::new(dtype, Some(shape))));
    }
    let outs = append_outputs(g, id, &items);
    items.into_iter().map(|(n, _)| n).zip(outs).collect()
}
