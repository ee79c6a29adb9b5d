//! Which nodes of a graph compute in 16-bit floats. Driven by each op's type constraints: only
//! the bindings (inputs and outputs sharing a type parameter) that hold FP32 tensors and whose
//! parameter allows the target type change; integer, bool and fixed-type inputs never do.
//! A node stays FP32 when it is excluded, block-listed, unknown, computes shapes in float, holds
//! values out of the target's range, or has no kernel on the target runtime.

use std::collections::{HashMap, HashSet};

use kiln_compiler::DataType;
use kiln_compiler::ir::{Graph, NodeId, TypeKind, ValueDef, ValueId};
use kiln_compiler::ops::{Binding, schema};

use super::{BLOCKED_OPS, Env, HalfKind, Scope, is_reduction};

/// What one node does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No FP32 tensor among its inputs and outputs: nothing to decide.
    NoFloat,
    Half,
    /// (category for counts, reason for the decision).
    Fp32(&'static str, String),
}

/// A node's plan: which inputs and outputs become 16-bit, which attributes set those types.
#[derive(Debug, Clone)]
pub(super) struct NodePlan {
    pub verdict: Verdict,
    pub half_in: Vec<bool>,
    pub half_out: Vec<bool>,
    /// Attributes that set the type of a converted binding (`Cast`'s `to`).
    pub attrs: Vec<&'static str>,
}

impl NodePlan {
    fn keep(n_in: usize, n_out: usize, verdict: Verdict) -> NodePlan {
        NodePlan { verdict, half_in: vec![false; n_in], half_out: vec![false; n_out], attrs: Vec::new() }
    }

    fn apply(&mut self, bindings: &[&Binding]) {
        for b in bindings {
            b.inputs.iter().for_each(|&i| self.half_in[i] = true);
            b.outputs.iter().for_each(|&o| self.half_out[o] = true);
            if let Some(a) = b.attribute {
                self.attrs.push(a);
            }
        }
        self.verdict = Verdict::Half;
    }

    pub fn is_half(&self) -> bool {
        self.verdict == Verdict::Half
    }
}

/// Ops that only move or select elements: they follow their neighbours' precision, so that a
/// Reshape between two FP32 nodes does not gain a pair of casts.
const FOLLOWERS: &[&str] = &[
    "Identity",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Concat",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Split",
    "Expand",
    "Tile",
    "Pad",
    "DepthToSpace",
    "SpaceToDepth",
    "Compress",
    "Cast",
    "CastLike",
    "ReverseSequence",
    "Dropout",
    "Where",
];

/// Nodes whose value is a constant: converted when every use wants the 16-bit value.
const SOURCES: &[&str] = &["Constant", "ConstantOfShape"];

/// Shape-like values (small tensors) carry integer arithmetic done in float.
const SHAPE_LIKE_ELEMS: usize = 64;

/// The element type a value had before conversion.
pub(super) fn orig_dtype(g: &Graph, v: ValueId, scope: &Scope) -> Option<DataType> {
    let val = g.value(v);
    match val.def() {
        ValueDef::Initializer(t) => Some(t.dtype()),
        ValueDef::Outer => scope.get(&val.name).and_then(|e| e.orig).or_else(|| g.tensor_type(v)?.dtype()),
        _ => g.tensor_type(v)?.dtype(),
    }
}

/// A sequence, optional or map value, here or (captured) in an enclosing graph.
pub(super) fn is_non_tensor(g: &Graph, v: ValueId, scope: &Scope) -> bool {
    let val = g.value(v);
    match val.ty.as_ref().map(|t| &t.kind) {
        Some(TypeKind::Tensor(_)) => false,
        Some(TypeKind::Unset) | None => {
            matches!(val.def(), ValueDef::Outer) && scope.get(&val.name).is_some_and(|e| e.non_tensor)
        }
        Some(_) => true,
    }
}

fn elem_count(g: &Graph, v: ValueId) -> Option<usize> {
    if let Some(t) = g.value(v).initializer() {
        return usize::try_from(t.len()).ok();
    }
    g.tensor_type(v)?.concrete_dims().map(|d| d.iter().product())
}

/// Nodes doing integer arithmetic in float on shape-like values: between a cast from an
/// integer and a cast back to one (or a fixed-FP32 parameter such as Resize's scales).
fn shape_islands(g: &Graph, env: &Env, scope: &Scope) -> HashSet<NodeId> {
    let small = |v: ValueId| elem_count(g, v).is_some_and(|n| n <= SHAPE_LIKE_ELEMS);
    let is_f = |v: ValueId| orig_dtype(g, v, scope).is_some_and(|d| d.is_float());
    let is_int = |v: ValueId| orig_dtype(g, v, scope).is_some_and(|d| d.is_integer() || d == DataType::Bool);
    let order: Vec<NodeId> = g.node_ids();
    // Forward: float values computed from integers.
    let mut fwd: HashSet<ValueId> = HashSet::new();
    for &id in &order {
        let n = g.node(id);
        let from_int = n.is_onnx("Cast") && n.input(0).is_some_and(is_int);
        let from_fwd = n.inputs().iter().flatten().any(|v| fwd.contains(v));
        if from_int || from_fwd {
            for &o in n.outputs().iter().flatten() {
                if is_f(o) && small(o) {
                    fwd.insert(o);
                }
            }
        }
    }
    if fwd.is_empty() {
        return HashSet::new();
    }
    // Backward: float values that end in an integer or a fixed-FP32 parameter.
    let mut back: HashSet<ValueId> = HashSet::new();
    for &id in order.iter().rev() {
        let n = g.node(id);
        let to_int = n.is_onnx("Cast") && n.output(0).is_some_and(is_int);
        let into_back = n.outputs().iter().flatten().any(|v| back.contains(v));
        let fixed: Vec<usize> = schema(n.domain(), &n.op_type, env.opsets.version(n.domain()))
            .map(|s| {
                s.bindings(n.inputs().len(), 0)
                    .into_iter()
                    .filter(|b| b.param.is_none())
                    .flat_map(|b| b.inputs)
                    .collect()
            })
            .unwrap_or_default();
        for (i, v) in n.inputs().iter().enumerate() {
            let Some(v) = *v else { continue };
            if is_f(v) && small(v) && (to_int || into_back || fixed.contains(&i)) {
                back.insert(v);
            }
        }
    }
    order
        .into_iter()
        .filter(|&id| {
            let n = g.node(id);
            n.outputs().iter().flatten().any(|v| fwd.contains(v) && back.contains(v))
                || (n.is_onnx("Cast") && n.input(0).is_some_and(|v| fwd.contains(&v)))
        })
        .collect()
}

/// Why the values a node touches do not fit the target type, from calibrated ranges (FP16
/// only; BF16 has FP32's range).
fn range_problem(g: &Graph, id: NodeId, env: &Env, candidates: &[&Binding]) -> Option<String> {
    let ranges = env.ranges?;
    let n = g.node(id);
    let limits = &env.config.limits;
    let max_abs = |v: ValueId| {
        let (lo, hi) = ranges.range(&g.value(v).name)?;
        Some(lo.abs().max(hi.abs()))
    };
    let mut values: Vec<ValueId> = Vec::new();
    for b in candidates {
        values.extend(b.inputs.iter().filter_map(|&i| n.input(i)));
        values.extend(b.outputs.iter().filter_map(|&o| n.output(o)));
    }
    for &v in &values {
        let Some(m) = max_abs(v) else { continue };
        if m > limits.max_abs {
            return Some(format!(
                "'{}' reaches |x| = {m:.4e}, beyond fp16's safe range {:.0}",
                g.value(v).name,
                limits.max_abs
            ));
        }
        if m > 0.0 && m < limits.min_abs {
            return Some(format!("'{}' stays below |x| = {m:.3e}: it would flush to zero in fp16", g.value(v).name));
        }
    }
    if is_reduction(n.domain(), &n.op_type) {
        let inputs = if n.op_type.starts_with("Skip") { 2 } else { 1 };
        for v in n.inputs().iter().take(inputs).flatten() {
            if let Some(m) = max_abs(*v)
                && m > limits.reduction_max_abs
            {
                return Some(format!(
                    "{} input '{}' reaches |x| = {m:.4e}: its sums of squares or exponentials overflow fp16",
                    n.op_type,
                    g.value(*v).name
                ));
            }
        }
    }
    None
}

/// The first FP32 initializer among the candidate inputs whose values FP16 cannot hold.
fn saturating_input(g: &Graph, id: NodeId, candidates: &[&Binding]) -> Option<(String, f64)> {
    let n = g.node(id);
    for b in candidates {
        for &i in &b.inputs {
            let Some(t) = n.input(i).and_then(|v| g.value(v).initializer()) else { continue };
            if let Some(m) = super::max_abs(t)
                && m > f64::from(half::f16::MAX)
            {
                return Some((g.value(n.input(i)?).name.clone(), m));
            }
        }
    }
    None
}

/// The first-pass plan of one node, before followers and constants look at their neighbours.
fn plan_node(g: &Graph, id: NodeId, env: &Env, scope: &Scope, islands: &HashSet<NodeId>) -> NodePlan {
    let n = g.node(id);
    let (n_in, n_out) = (n.inputs().len(), n.outputs().len());
    let f32_at = |v: Option<ValueId>| v.is_some_and(|v| orig_dtype(g, v, scope) == Some(DataType::F32));
    let any_f32 = n.inputs().iter().chain(n.outputs()).any(|v| f32_at(*v));
    let keep = |cat: &'static str, why: String| NodePlan::keep(n_in, n_out, Verdict::Fp32(cat, why));
    if !any_f32 {
        return NodePlan::keep(n_in, n_out, Verdict::NoFloat);
    }
    let target = env.target();
    let domain = n.domain();
    let opset = env.opsets.version(domain);
    let Some(sch) = schema(domain, &n.op_type, opset) else {
        return keep("unknown op", format!("no type constraints known for {}", qualified(domain, &n.op_type)));
    };
    if n.inputs().iter().chain(n.outputs()).flatten().any(|&v| is_non_tensor(g, v, scope)) {
        return keep("sequence values", "sequence or optional values".into());
    }
    let bindings = sch.bindings(n_in, n_out);
    let float: Vec<&Binding> = bindings
        .iter()
        .filter(|b| b.inputs.iter().map(|&i| n.input(i)).chain(b.outputs.iter().map(|&o| n.output(o))).any(f32_at))
        .collect();
    let candidates: Vec<&Binding> =
        float.iter().copied().filter(|b| b.param.is_some() && b.allowed.allows(target)).collect();
    let label_name = n.name.as_deref().unwrap_or("");
    if env.config.exclude.iter().any(|e| e == label_name || *e == n.op_type) {
        return keep("excluded", "excluded".into());
    }
    if let Some((_, _, why)) = BLOCKED_OPS.iter().find(|(d, op, _)| *d == domain && *op == n.op_type) {
        return keep("block list", format!("block list: {why}"));
    }
    if let Some(why) = super::blocked_node(n) {
        return keep("block list", format!("block list: {why}"));
    }
    if env.config.block.contains(&n.op_type) {
        return keep("block list", "block list (user)".into());
    }
    if candidates.is_empty() {
        let params: Vec<&str> = float.iter().filter_map(|b| b.param.as_deref()).collect();
        return keep(
            "type constraints",
            format!(
                "{} (opset {}) allows no {} for {}",
                n.op_type,
                sch.since_version,
                target.name(),
                if params.is_empty() { "its fixed-type inputs".to_string() } else { params.join(", ") }
            ),
        );
    }
    // A value of unknown element type on a converted binding could be neither cast nor
    // trusted to match its 16-bit neighbours.
    let untyped = candidates.iter().any(|b| {
        b.inputs
            .iter()
            .map(|&i| n.input(i))
            .chain(b.outputs.iter().map(|&o| n.output(o)))
            .flatten()
            .any(|v| orig_dtype(g, v, scope).is_none())
    });
    if untyped {
        return keep("unknown type", "a value on its float binding has no known element type".into());
    }
    if islands.contains(&id) {
        return keep("shape computation", "integer arithmetic in float (shape computation)".into());
    }
    if env.config.kind == HalfKind::F16 {
        if let Some(why) = range_problem(g, id, env, &candidates) {
            return keep("range", why);
        }
        if let Some((name, m)) = saturating_input(g, id, &candidates) {
            return keep(
                "saturating initializer",
                format!("initializer '{name}' reaches |x| = {m:.4e}, beyond fp16's range"),
            );
        }
    }
    let chosen: Vec<&Binding> = match env.config.kernels {
        None => candidates,
        Some(table) => {
            // The largest subset of candidate bindings some kernel accepts.
            let k = candidates.len().min(8);
            let mut best: Option<Vec<&Binding>> = None;
            for mask in (1u32..(1 << k)).rev() {
                let subset: Vec<&Binding> = (0..k).filter(|i| mask & (1 << i) != 0).map(|i| candidates[i]).collect();
                if best.as_ref().is_some_and(|b| b.len() >= subset.len()) {
                    continue;
                }
                let assignment: Vec<(&str, DataType)> = bindings
                    .iter()
                    .filter_map(|b| {
                        let p = b.param.as_deref()?;
                        let d = if subset.contains(&b) { target } else { binding_dtype(g, n, b, scope)? };
                        Some((p, d))
                    })
                    .collect();
                if table.supports(domain, &n.op_type, sch.since_version, &assignment) {
                    best = Some(subset);
                }
            }
            match best {
                Some(b) => b,
                None => {
                    return keep(
                        "no kernel",
                        format!(
                            "no {} kernel for {} in the target runtime",
                            target.name(),
                            qualified(domain, &n.op_type)
                        ),
                    );
                }
            }
        }
    };
    let mut plan = NodePlan::keep(n_in, n_out, Verdict::Half);
    plan.apply(&chosen);
    plan
}

/// The element type a binding's values have now.
fn binding_dtype(g: &Graph, n: &kiln_compiler::ir::Node, b: &Binding, scope: &Scope) -> Option<DataType> {
    b.inputs
        .iter()
        .filter_map(|&i| n.input(i))
        .chain(b.outputs.iter().filter_map(|&o| n.output(o)))
        .find_map(|v| orig_dtype(g, v, scope))
}

pub(super) fn qualified(domain: &str, op: &str) -> String {
    if domain.is_empty() { op.to_string() } else { format!("{domain}.{op}") }
}

/// What the graph's outputs must be (`None`: whatever they end up as).
pub(super) type Required = Vec<Option<DataType>>;

/// Plans every node of `g` (indexed by `NodeId::index()`).
pub(super) fn decide_graph(g: &Graph, env: &Env, scope: &Scope, required: &Required) -> Vec<Option<NodePlan>> {
    let islands = shape_islands(g, env, scope);
    let mut plans: Vec<Option<NodePlan>> = vec![None; g.node_ids().iter().map(|n| n.index() + 1).max().unwrap_or(0)];
    let mut followers: Vec<NodeId> = Vec::new();
    let mut sources: Vec<NodeId> = Vec::new();
    let target = env.target();
    for id in g.node_ids() {
        let n = g.node(id);
        let mut plan = if n.is_onnx("If") {
            plan_if(g, id, env, scope)
        } else if n.subgraphs().next().is_some() {
            let any_f32 =
                n.inputs().iter().chain(n.outputs()).flatten().any(|&v| orig_dtype(g, v, scope) == Some(DataType::F32));
            let v = if any_f32 {
                Verdict::Fp32("loop interface", "loop interface keeps its types; body converted".into())
            } else {
                Verdict::NoFloat
            };
            NodePlan::keep(n.inputs().len(), n.outputs().len(), v)
        } else {
            plan_node(g, id, env, scope, &islands)
        };
        if plan.is_half() && n.domain().is_empty() {
            if FOLLOWERS.contains(&n.op_type.as_str()) {
                followers.push(id);
                plan.verdict = Verdict::Fp32("fp32 neighbours", "data movement between fp32 neighbours".into());
            } else if SOURCES.contains(&n.op_type.as_str()) {
                sources.push(id);
                plan.verdict = Verdict::Fp32("constant for fp32 uses", "a use wants fp32".into());
            }
        }
        plans[id.index()] = Some(plan);
    }
    let input_half = |v: ValueId| g.inputs().contains(&v) && env.is_main && !env.config.keep_io_types;
    let wants_half = |plans: &[Option<NodePlan>], v: ValueId| {
        let used = g.value(v).uses().iter().any(|u| {
            plans[u.node.index()].as_ref().is_some_and(|p| p.is_half() && p.half_in.get(u.input) == Some(&true))
        });
        let out = g
            .outputs()
            .iter()
            .position(|&o| o == v)
            .is_some_and(|i| required.get(i).copied().flatten() == Some(target));
        used || out
    };
    // Followers: 16-bit when a neighbour on a converted binding is.
    loop {
        let mut changed = false;
        for &id in &followers {
            let plan = plans[id.index()].clone().unwrap_or_else(|| NodePlan::keep(0, 0, Verdict::NoFloat));
            if plan.is_half() {
                continue;
            }
            let n = g.node(id);
            let from_in = n.inputs().iter().enumerate().any(|(i, v)| {
                let Some(v) = *v else { return false };
                plan.half_in[i]
                    && (input_half(v)
                        || scope
                            .get(&g.value(v).name)
                            .is_some_and(|e| e.storage == Some(target) && e.orig != e.storage)
                            && matches!(g.value(v).def(), ValueDef::Outer)
                        || g.value(v).producer().is_some_and(|p| {
                            let ValueDef::Node { output, .. } = *g.value(v).def() else { return false };
                            plans[p.index()].as_ref().is_some_and(|pp| pp.is_half() && pp.half_out[output])
                        }))
            });
            let to_out = n
                .outputs()
                .iter()
                .enumerate()
                .any(|(o, v)| plan.half_out[o] && v.is_some_and(|v| wants_half(&plans, v)));
            if from_in || to_out {
                if let Some(p) = plans[id.index()].as_mut() {
                    p.verdict = Verdict::Half;
                }
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Constants: 16-bit when every use wants it.
    for &id in sources.iter().rev() {
        let n = g.node(id);
        let Some(out) = n.output(0) else { continue };
        let uses = g.value(out).uses();
        let all_half = !uses.is_empty()
            && !g.outputs().contains(&out)
            && uses.iter().all(|u| {
                plans[u.node.index()].as_ref().is_some_and(|p| p.is_half() && p.half_in.get(u.input) == Some(&true))
            });
        if all_half && let Some(p) = plans[id.index()].as_mut() {
            p.verdict = Verdict::Half;
        }
    }
    // A plan whose verdict fell back to FP32 converts nothing.
    for p in plans.iter_mut().flatten() {
        if !p.is_half() {
            p.half_in.iter_mut().for_each(|b| *b = false);
            p.half_out.iter_mut().for_each(|b| *b = false);
            p.attrs.clear();
        }
    }
    plans
}

/// An If converts output `k` when both branches compute it in 16-bit, so both branches are
/// converted identically and the node's output has one type.
fn plan_if(g: &Graph, id: NodeId, env: &Env, scope: &Scope) -> NodePlan {
    let n = g.node(id);
    let (n_in, n_out) = (n.inputs().len(), n.outputs().len());
    let f32_outs: Vec<usize> =
        (0..n_out).filter(|&o| n.output(o).is_some_and(|v| orig_dtype(g, v, scope) == Some(DataType::F32))).collect();
    if f32_outs.is_empty() {
        return NodePlan::keep(n_in, n_out, Verdict::NoFloat);
    }
    let target = env.target();
    let opset = env.opsets.version("");
    let allowed = schema("", "If", opset).and_then(|s| s.output_types(0)).is_some_and(|t| t.allows(target));
    let label = n.name.as_deref().unwrap_or("");
    if !allowed {
        return NodePlan::keep(
            n_in,
            n_out,
            Verdict::Fp32("type constraints", format!("If (opset {opset}) allows no {}", target.name())),
        );
    }
    if env.config.exclude.iter().any(|e| e == label || e == "If") {
        return NodePlan::keep(n_in, n_out, Verdict::Fp32("excluded", "excluded".into()));
    }
    let inner_scope = super::child_scope(g, scope, None);
    let sub_env = Env { is_main: false, ranges: None, ..env.clone() };
    let mut natural: Vec<Vec<bool>> = Vec::new();
    for branch in n.subgraphs() {
        let plans = decide_graph(branch, &sub_env, &inner_scope, &vec![None; branch.outputs().len()]);
        natural.push(
            branch
                .outputs()
                .iter()
                .map(|&v| match *branch.value(v).def() {
                    ValueDef::Node { node, output } => {
                        plans[node.index()].as_ref().is_some_and(|p| p.is_half() && p.half_out[output])
                    }
                    _ => false,
                })
                .collect(),
        );
    }
    let mut plan =
        NodePlan::keep(n_in, n_out, Verdict::Fp32("if branches", "its branches do not both compute in 16-bit".into()));
    for &o in &f32_outs {
        if natural.len() == 2 && natural.iter().all(|b| b.get(o) == Some(&true)) {
            plan.half_out[o] = true;
            plan.verdict = Verdict::Half;
        }
    }
    plan
}

/// For every name a node's subgraphs capture, the types their uses want (16-bit or FP32).
pub(super) fn captured_wants(g: &Graph, id: NodeId, env: &Env, scope: &Scope, out: &mut HashMap<String, (bool, bool)>) {
    let n = g.node(id);
    if n.subgraphs().next().is_none() {
        return;
    }
    let inner_scope = super::child_scope(g, scope, None);
    let sub_env = Env { is_main: false, ranges: None, ..env.clone() };
    for body in n.subgraphs() {
        let plans = decide_graph(body, &sub_env, &inner_scope, &vec![None; body.outputs().len()]);
        for (v, val) in body.values() {
            if !matches!(val.def(), ValueDef::Outer) {
                continue;
            }
            for u in val.uses() {
                let half = plans[u.node.index()].as_ref().is_some_and(|p| p.half_in.get(u.input) == Some(&true));
                let e = out.entry(val.name.clone()).or_default();
                if half { e.0 = true } else { e.1 = true }
            }
            let _ = v;
        }
        for (bid, _) in body.nodes() {
            captured_wants(body, bid, &sub_env, &inner_scope, out);
        }
    }
}
