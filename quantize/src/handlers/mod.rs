//! Per-op quantization handlers, registered explicitly by op type. A handler reads one node
//! and marks its tensors ([`NodeMarks`]): activations, weights with their channel axis, biases,
//! outputs that share their input's parameters. It never edits the graph.

pub mod attention;
pub mod gather;
mod ops;
mod tensorrt;

use std::collections::BTreeSet;
use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrValue, Graph, Model, Node, NodeId, ValueDef, ValueId};

use crate::plan::{Decision, GraphPlan, Int8Config};

/// What a handler may look at.
pub struct HandlerCx<'a> {
    pub graph: &'a Graph,
    pub config: &'a Int8Config,
    /// Tensors already given quantization parameters by their (earlier) producer.
    pub quantized: &'a BTreeSet<ValueId>,
    /// The plan so far (earlier nodes).
    pub plan: &'a GraphPlan,
}

impl HandlerCx<'_> {
    /// The constant behind a value of this graph: an initializer or a `Constant` node's
    /// `value` (weights are stored either way, in subgraphs too).
    pub fn constant(&self, v: ValueId) -> Option<Arc<Tensor>> {
        constant(self.graph, v)
    }

    pub fn is_quantized(&self, v: ValueId) -> bool {
        self.quantized.contains(&v)
    }
}

/// The constant behind a value of `g`, if it is one.
pub fn constant(g: &Graph, v: ValueId) -> Option<Arc<Tensor>> {
    match g.value(v).def() {
        ValueDef::Initializer(t) => Some(t.clone()),
        ValueDef::Node { node, .. } => {
            let n = g.node(*node);
            if !n.is_onnx("Constant") {
                return None;
            }
            n.attributes.iter().find_map(|a| match (&a.name[..], &a.value) {
                ("value", AttrValue::Tensor(t)) => Some(t.clone()),
                _ => None,
            })
        }
        _ => None,
    }
}

/// A handler: decides how one node is quantized.
pub type Handler = fn(&HandlerCx<'_>, NodeId) -> Decision;

/// The registry: op type (default ONNX domain) → handler.
const HANDLERS: &[(&str, Handler)] = &[
    ("Conv", ops::conv),
    ("ConvTranspose", ops::conv_transpose),
    ("MatMul", ops::matmul),
    ("Gemm", ops::gemm),
    ("Add", ops::binary),
    ("Mul", ops::binary),
    ("Concat", ops::concat),
    ("Relu", ops::relu),
    ("Clip", ops::relu),
    ("LeakyRelu", ops::target_unary),
    ("Sigmoid", ops::target_unary),
    ("HardSigmoid", ops::target_unary),
    ("HardSwish", ops::target_unary),
    ("Softmax", ops::target_unary),
    ("AveragePool", ops::target_unary),
    ("GlobalAveragePool", ops::target_unary),
    ("MaxPool", ops::shared),
    ("GlobalMaxPool", ops::shared),
    ("Resize", ops::shared),
    ("Reshape", ops::shared),
    ("Transpose", ops::shared),
    ("Squeeze", ops::shared),
    ("Unsqueeze", ops::shared),
    ("Flatten", ops::shared),
    ("Slice", ops::shared),
    ("Gather", ops::shared),
    ("Split", ops::shared),
];

/// The handler of a node's op, if it has one.
pub fn handler(node: &Node) -> Option<Handler> {
    if !node.domain().is_empty() {
        return None;
    }
    HANDLERS.iter().find(|(op, _)| *op == node.op_type).map(|(_, h)| *h)
}

/// The name of every tensor a node with a handler reads or writes, in the main graph and in
/// every subgraph: the only tensors whose calibrated ranges planning and materializing ask
/// for, whatever the config (exclusions and targets only narrow it).
pub fn handled_tensors(model: &Model) -> BTreeSet<String> {
    fn walk(g: &Graph, out: &mut BTreeSet<String>) {
        for (_, node) in g.nodes() {
            if handler(node).is_some() {
                let values = node.inputs().iter().chain(node.outputs()).flatten();
                out.extend(values.map(|&v| g.value(v).name.clone()));
            }
            for sub in node.subgraphs() {
                walk(sub, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Some(g) = model.main_graph() {
        walk(g, &mut out);
    }
    out
}

/// Op types that have a handler.
pub fn handled_ops() -> impl Iterator<Item = &'static str> {
    HANDLERS.iter().map(|(op, _)| *op)
}
