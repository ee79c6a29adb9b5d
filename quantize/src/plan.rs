//! The quantization plan: what each node's handler decided (which inputs are activations,
//! weights or biases, which outputs get their own parameters and which share their input's),
//! and which nodes stay in float and why. Building the plan reads the graph only; the
//! [`crate::qdq`] pass materializes it.

use std::collections::{BTreeMap, BTreeSet};

use kiln_compiler::ir::{Graph, Model, NodeId, ValueId};

pub use crate::config::{Int8Config, Placement};
use crate::handlers::{self, HandlerCx};

/// How a node input is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    /// A runtime tensor: per-tensor parameters from its calibrated range.
    Activation,
    /// A constant: stored as 8-bit integers, symmetric, per channel along `axis` or per tensor.
    Weight { axis: Option<usize> },
    /// A constant operand of an element-wise op (Add, Mul, Concat): stored quantized like an
    /// activation (same integer type, its own min/max), since the integer kernels
    /// (QLinearAdd…) take one type for every operand.
    Constant,
    /// A constant bias: int32 with scale `scale(input) * scale(weight)`, zero point 0.
    Bias { input: usize, weight: usize },
}

/// How a node output is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRole {
    /// Its own parameters, from its calibrated range.
    Activation,
    /// The parameters of input `i` (data movement: Reshape, Transpose, MaxPool…), so the
    /// runtime can drop the DQ/Q pair around the node and move integers.
    SameAsInput(usize),
}

/// What a quantized node needs downstream to be worth it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputNeed {
    /// Quantized output whatever its consumers read (Conv: the runtime fuses only with a Q).
    Always,
    /// The output is quantized only when a consumer reads it quantized; otherwise the node
    /// keeps integer inputs and a float output (MatMulIntegerToFloat, QGemm with float Y).
    Optional,
    /// Worth quantizing only when a consumer reads the output quantized (element-wise ops and
    /// data movement: alone between float ops they would only add rounding).
    #[default]
    Consumers,
}

/// What a handler marks on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMarks {
    pub inputs: Vec<(usize, InputRole)>,
    pub outputs: Vec<(usize, OutputRole)>,
    pub need: OutputNeed,
}

/// A handler's verdict on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Quantize(NodeMarks),
    /// A ReLU (or `Clip(0, hi)`) after a quantized node: removed, and the producer's output is
    /// quantized with the activation's range instead, whose zero point is `qmin`, so the
    /// quantizer clamps exactly as the activation did.
    Absorb,
    /// Stays in float, with the reason.
    Float(String),
}

/// The plan of one graph (the main graph or a subgraph).
#[derive(Debug, Clone, Default)]
pub struct GraphPlan {
    /// Nodes to quantize and how.
    pub nodes: BTreeMap<NodeId, NodeMarks>,
    /// Activations removed into their producer's output quantization: node → producer output.
    pub absorbed: BTreeMap<NodeId, ValueId>,
    /// Nodes left in float, with the reason.
    pub float: BTreeMap<NodeId, String>,
    /// Plans of subgraphs: (node, index among the node's subgraphs).
    pub subgraphs: BTreeMap<(NodeId, usize), GraphPlan>,
}

/// The plan of a whole model.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    pub config: Int8Config,
    pub graph: GraphPlan,
}

impl QuantPlan {
    /// Builds the plan: each node's handler (by op type) decides, in node order, so data
    /// movement ops see whether their input is already quantized. `has_range(name)` says
    /// whether a calibrated range exists for a tensor; nodes needing one that is missing stay
    /// in float.
    pub fn build(model: &Model, config: &Int8Config, has_range: &dyn Fn(&str) -> bool) -> QuantPlan {
        let graph = match model.main_graph() {
            Some(g) => plan_graph(g, config, has_range),
            None => GraphPlan::default(),
        };
        QuantPlan { config: config.clone(), graph }
    }

    /// Per node label, the decision: `int8` or `fp32 (reason)`, for every graph (subgraph
    /// nodes prefixed with their enclosing node's label).
    pub fn decisions(&self, model: &Model) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(g) = model.main_graph() {
            collect_decisions(g, &self.graph, "", &mut out);
        }
        out
    }

    /// Quantized nodes per op type.
    pub fn quantized_ops(&self, model: &Model) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        if let Some(g) = model.main_graph() {
            count_ops(g, &self.graph, &mut out);
        }
        out
    }
}

fn node_key(g: &Graph, id: NodeId, prefix: &str) -> String {
    let n = g.node(id);
    let base = match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => format!("{}#{}", n.op_type, id.index()),
    };
    format!("{prefix}{base}")
}

fn collect_decisions(g: &Graph, plan: &GraphPlan, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (id, node) in g.nodes() {
        let key = node_key(g, id, prefix);
        if plan.nodes.contains_key(&id) {
            out.insert(key.clone(), "int8".into());
        } else if plan.absorbed.contains_key(&id) {
            out.insert(key.clone(), "int8 (absorbed into the producer's quantizer)".into());
        } else if let Some(why) = plan.float.get(&id) {
            out.insert(key.clone(), format!("fp32 ({why})"));
        }
        for (i, sub) in node.subgraphs().enumerate() {
            if let Some(sp) = plan.subgraphs.get(&(id, i)) {
                collect_decisions(sub, sp, &format!("{key}/"), out);
            }
        }
    }
}

fn count_ops(g: &Graph, plan: &GraphPlan, out: &mut BTreeMap<String, usize>) {
    for (id, node) in g.nodes() {
        if plan.nodes.contains_key(&id) || plan.absorbed.contains_key(&id) {
            *out.entry(node.op_type.clone()).or_default() += 1;
        }
        for (i, sub) in node.subgraphs().enumerate() {
            if let Some(sp) = plan.subgraphs.get(&(id, i)) {
                count_ops(sub, sp, out);
            }
        }
    }
}

/// Plans one graph and, recursively, its subgraphs.
pub fn plan_graph(g: &Graph, config: &Int8Config, has_range: &dyn Fn(&str) -> bool) -> GraphPlan {
    let mut plan = GraphPlan::default();
    // Tensors that will carry quantization parameters (outputs of quantized nodes).
    let mut quantized: BTreeSet<ValueId> = BTreeSet::new();
    for (id, node) in g.nodes() {
        for (i, sub) in node.subgraphs().enumerate() {
            plan.subgraphs.insert((id, i), plan_graph(sub, config, has_range));
        }
        let Some(handler) = handlers::handler(node) else {
            if !node.is_onnx("Constant") && !is_qdq(node.op_type.as_str()) {
                plan.float.insert(id, format!("no INT8 handler for {}", node.op_type));
            }
            continue;
        };
        if let Some(why) = config.excluded(node.name.as_deref(), &node.op_type) {
            plan.float.insert(id, why);
            continue;
        }
        let cx = HandlerCx { graph: g, config, quantized: &quantized, plan: &plan };
        let decision = match handler(&cx, id) {
            Decision::Quantize(marks) => check_ranges(g, id, marks, &quantized, has_range),
            other => other,
        };
        match decision {
            Decision::Quantize(marks) => {
                // An activation input is quantized for every consumer (one Q after its
                // definition), so later data movement ops see it as quantized too.
                for &(i, r) in &marks.inputs {
                    if let (InputRole::Activation, Some(v)) = (r, node.input(i)) {
                        quantized.insert(v);
                    }
                }
                for &(o, _) in &marks.outputs {
                    if let Some(v) = node.output(o) {
                        quantized.insert(v);
                    }
                }
                plan.nodes.insert(id, marks);
            }
            Decision::Absorb => {
                let (Some(input), Some(out)) = (node.input(0), node.output(0)) else { continue };
                if has_range(&g.value(out).name) {
                    plan.absorbed.insert(id, input);
                    quantized.insert(out);
                } else {
                    plan.float.insert(id, format!("no calibrated range for `{}`", g.value(out).name));
                }
            }
            Decision::Float(why) => {
                plan.float.insert(id, why);
            }
        }
    }
    prune_unread_outputs(g, &mut plan);
    plan
}

/// Whether some consumer reads `v` quantized (through absorbed activations too).
fn read_quantized(g: &Graph, plan: &GraphPlan, v: ValueId) -> bool {
    g.value(v).uses().iter().any(|u| {
        if let Some(marks) = plan.nodes.get(&u.node) {
            return marks.inputs.iter().any(|&(i, r)| i == u.input && r == InputRole::Activation);
        }
        plan.absorbed.contains_key(&u.node) && g.node(u.node).output(0).is_some_and(|y| read_quantized(g, plan, y))
    })
}

/// Drops output quantization nobody reads, to a fixed point: nodes that need a quantized
/// consumer go back to float, optional outputs stay float. Fewer rounding points, same fusions.
fn prune_unread_outputs(g: &Graph, plan: &mut GraphPlan) {
    loop {
        let mut changed = false;
        let ids: Vec<NodeId> = plan.nodes.keys().copied().collect();
        for id in ids {
            let node = g.node(id);
            let marks = &plan.nodes[&id];
            if marks.outputs.is_empty() || marks.need == OutputNeed::Always {
                continue;
            }
            let unread = marks.outputs.iter().all(|&(o, _)| node.output(o).is_none_or(|v| !read_quantized(g, plan, v)));
            if !unread {
                continue;
            }
            changed = true;
            if marks.need == OutputNeed::Optional {
                if let Some(m) = plan.nodes.get_mut(&id) {
                    m.outputs.clear();
                }
            } else {
                plan.nodes.remove(&id);
                plan.float.insert(id, "no consumer reads its output quantized".into());
                // Activations absorbed into this node's output go back to float with it.
                let absorbed: Vec<NodeId> = plan
                    .absorbed
                    .iter()
                    .filter(|(_, x)| node.outputs().contains(&Some(**x)))
                    .map(|(a, _)| *a)
                    .collect();
                for a in absorbed {
                    plan.absorbed.remove(&a);
                    plan.float.insert(a, "its producer stays in float".into());
                }
            }
        }
        if !changed {
            break;
        }
    }
}

fn is_qdq(op: &str) -> bool {
    matches!(op, "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear")
}

/// Keeps the node only when every activation it marks (input, or own-range output) has a
/// calibrated range (inputs quantized by their producer carry its parameters already).
fn check_ranges(
    g: &Graph,
    id: NodeId,
    marks: NodeMarks,
    quantized: &BTreeSet<ValueId>,
    has_range: &dyn Fn(&str) -> bool,
) -> Decision {
    let node = g.node(id);
    let inputs: Vec<ValueId> = marks
        .inputs
        .iter()
        .filter(|(_, r)| *r == InputRole::Activation)
        .filter_map(|(i, _)| node.input(*i))
        .filter(|v| !quantized.contains(v))
        .collect();
    for v in inputs {
        let name = &g.value(v).name;
        if !has_range(name) {
            return Decision::Float(format!("no calibrated range for `{name}`"));
        }
    }
    let mut marks = marks;
    let mut missing = None;
    marks.outputs.retain(|&(o, r)| {
        let unranged = r == OutputRole::Activation && node.output(o).is_some_and(|v| !has_range(&g.value(v).name));
        if unranged {
            missing = node.output(o);
        }
        !unranged
    });
    match missing {
        // An optional output without a range stays float (integer inputs, float output).
        Some(v) if marks.need != OutputNeed::Optional => {
            Decision::Float(format!("no calibrated range for `{}`", g.value(v).name))
        }
        _ => Decision::Quantize(marks),
    }
}
