//! Which nodes carry a weight INT4 can take: `MatMul` with a constant 2-D `B`, and `Gemm` with
//! a constant `B` (and a constant or absent `C`); which of them are the model's first and last
//! projections; and why the others are left alone.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, Graph, NodeId, ValueDef, ValueId};
use kiln_compiler::{DataType, Tensor};

use super::LayerPrecision;

/// A weighted node that can be quantized.
#[derive(Debug, Clone)]
pub struct Layer {
    pub node: NodeId,
    /// The node's name (or a label when it has none), for reports.
    pub name: String,
    /// `MatMul` or `Gemm`.
    pub op: &'static str,
    /// The activation input A (name, for calibration).
    pub activation: String,
    pub weight: ValueId,
    /// The weight as stored: `[K, N]`, or `[N, K]` for `Gemm` with `transB = 1`.
    pub tensor: Arc<Tensor>,
    pub transposed: bool,
    pub k: usize,
    pub n: usize,
    /// `Gemm`'s alpha, beta and constant C (absent for MatMul).
    pub alpha: f32,
    pub beta: f32,
    pub bias: Option<Arc<Tensor>>,
    pub precision: LayerPrecision,
}

/// What the selection found.
#[derive(Debug, Default)]
pub struct Selection {
    pub layers: Vec<Layer>,
    /// Node name → why it stays in float.
    pub skipped: Vec<(String, String)>,
}

/// The constant behind a value: an initializer or a `Constant` node's `value`.
pub(crate) fn constant(g: &Graph, v: ValueId) -> Option<Arc<Tensor>> {
    match g.value(v).def() {
        ValueDef::Initializer(t) => Some(t.clone()),
        ValueDef::Node { node, .. } => {
            let n = g.node(*node);
            if n.is_onnx("Constant") { n.attr_tensor("value").cloned() } else { None }
        }
        _ => None,
    }
}

/// A node's name for reports.
pub(crate) fn node_name(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => n.label(id),
    }
}

/// Why a node cannot be quantized, or its layer.
fn examine(g: &Graph, id: NodeId) -> Result<Option<Layer>, String> {
    let node = g.node(id);
    let op = if node.is_onnx("MatMul") {
        "MatMul"
    } else if node.is_onnx("Gemm") {
        "Gemm"
    } else {
        return Ok(None);
    };
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else { return Ok(None) };
    let Some(tensor) = constant(g, b) else { return Ok(None) };
    if tensor.dtype() != DataType::F32 {
        return Err(format!("fp32 (weight is {}, only f32 weights are quantized)", tensor.dtype()));
    }
    if tensor.rank() != 2 {
        return Err(format!("fp32 (weight has rank {}, not 2)", tensor.rank()));
    }
    let a_ty = g.tensor_type(a);
    match a_ty.and_then(|t| t.dtype()) {
        Some(DataType::F32) => {}
        Some(d) => return Err(format!("fp32 (input A is {d})")),
        None => return Err("fp32 (input A has no inferred type)".into()),
    }
    let a_rank = a_ty.and_then(|t| t.rank());
    let (d0, d1) = (tensor.dims()[0], tensor.dims()[1]);
    let (mut transposed, mut alpha, mut beta, mut bias) = (false, 1.0f32, 1.0f32, None);
    if op == "MatMul" {
        if a_rank.is_none_or(|r| r < 2) {
            return Err("fp32 (input A's rank is unknown or below 2)".into());
        }
    } else {
        if node.attr_int("transA").unwrap_or(0) != 0 {
            return Err("fp32 (Gemm with transA = 1)".into());
        }
        transposed = node.attr_int("transB").unwrap_or(0) != 0;
        alpha = node.attr_float("alpha").unwrap_or(1.0);
        beta = node.attr_float("beta").unwrap_or(1.0);
        if let Some(c) = node.input(2) {
            let Some(c) = constant(g, c) else { return Err("fp32 (Gemm's C is not a constant)".into()) };
            bias = Some(c);
        }
    }
    let (k, n) = if transposed { (d1, d0) } else { (d0, d1) };
    if k == 0 || n == 0 {
        return Err("fp32 (empty weight)".into());
    }
    if let Some(c) = &bias {
        let ok = c.dtype() == DataType::F32
            && (c.len() == 1 || (c.len() == n as u64 && c.dims().last() == Some(&n) && c.rank() <= 2));
        if !ok {
            return Err(format!("fp32 (Gemm's C has shape {:?}, not a bias of {n})", c.dims()));
        }
    }
    Ok(Some(Layer {
        node: id,
        name: node_name(g, id),
        op,
        activation: g.value(a).name.clone(),
        weight: b,
        tensor,
        transposed,
        k,
        n,
        alpha,
        beta,
        bias,
        precision: LayerPrecision::Int4,
    }))
}

/// Finds the layers of the main graph; `exclude` names nodes or op types left alone. The first
/// layers (no other layer upstream) get `first`, the last ones (no layer downstream) `last`;
/// a layer that is both gets the wider of the two.
pub fn select(g: &Graph, exclude: &[String], first: LayerPrecision, last: LayerPrecision) -> Selection {
    let mut sel = Selection::default();
    for (id, node) in g.nodes() {
        let name = node_name(g, id);
        let excluded = exclude.iter().any(|e| *e == name || *e == node.op_type);
        match examine(g, id) {
            Ok(Some(_)) if excluded => sel.skipped.push((name, "fp32 (excluded)".into())),
            Ok(Some(layer)) => sel.layers.push(layer),
            Ok(None) => {}
            Err(why) => sel.skipped.push((name, why)),
        }
    }
    let nodes: Vec<NodeId> = sel.layers.iter().map(|l| l.node).collect();
    let downstream: Vec<BTreeSet<NodeId>> = nodes.iter().map(|&n| reachable(g, n)).collect();
    for i in 0..sel.layers.len() {
        let has_down = nodes.iter().enumerate().any(|(j, n)| j != i && downstream[i].contains(n));
        let has_up = (0..nodes.len()).any(|j| j != i && downstream[j].contains(&nodes[i]));
        let mut p = LayerPrecision::Int4;
        if !has_up {
            p = p.max(first);
        }
        if !has_down {
            p = p.max(last);
        }
        sel.layers[i].precision = p;
    }
    sel
}

/// Nodes reachable downstream of `from`'s outputs.
fn reachable(g: &Graph, from: NodeId) -> BTreeSet<NodeId> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([from]);
    while let Some(n) = queue.pop_front() {
        for v in g.node(n).outputs().iter().flatten() {
            for u in g.value(*v).uses() {
                if seen.insert(u.node) {
                    queue.push_back(u.node);
                }
            }
        }
    }
    seen
}
