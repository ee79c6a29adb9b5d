//! TensorRT's explicit-quantization placement ([`Placement::WeightedInputs`]) for the ops
//! without a weight. TensorRT fuses an element-wise Add into the epilogue of the convolution
//! or GEMM producing one of its inputs when the other input (the residual) is quantized: the
//! fused kernel reads the residual in int8. So a residual Add quantizes the input that does
//! not come from the weighted op, and nothing else: its output stays float (the next weighted
//! op quantizes its own input), and the weighted op's output is never quantized for it.
//!
//! [`Placement::WeightedInputs`]: crate::plan::Placement::WeightedInputs

use kiln_compiler::ir::{NodeId, ValueId};

use super::HandlerCx;
use super::ops::not_f32;
use crate::plan::{Decision, InputRole, NodeMarks};

/// The ops whose epilogue takes a fused residual Add.
const WEIGHTED: &[&str] = &["Conv", "ConvTranspose", "MatMul", "Gemm"];

/// Whether `v` is the output of a weighted op the plan quantizes, read by this Add alone (a
/// second reader would need the value before the Add, so the Add cannot fuse into the op).
fn fusable_producer(cx: &HandlerCx<'_>, v: ValueId) -> bool {
    let g = cx.graph;
    let Some(p) = g.value(v).producer() else { return false };
    let node = g.node(p);
    node.domain().is_empty()
        && WEIGHTED.contains(&node.op_type.as_str())
        && cx.plan.nodes.contains_key(&p)
        && g.value(v).uses().len() == 1
        && !g.is_output(v)
}

/// Add (and Mul, which TensorRT does not fuse) under TensorRT's placement: the residual input
/// quantized when the other input comes from a quantized weighted op, else float.
pub(super) fn residual_add(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    let node = cx.graph.node(id);
    let float = |why: &str| Decision::Float(format!("TensorRT: {why}"));
    if node.op_type != "Add" {
        return float("only an Add fuses into a weighted op's epilogue");
    }
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else { return float("missing operand") };
    if not_f32(cx, a) || not_f32(cx, b) {
        return float("operands are not f32");
    }
    if cx.constant(a).is_some() || cx.constant(b).is_some() {
        return float("a constant operand (a bias) fuses into the producer in float");
    }
    if a == b {
        return float("both operands are the same tensor");
    }
    let residual = match (fusable_producer(cx, a), fusable_producer(cx, b)) {
        (true, false) => 1,
        (false, true) => 0,
        (true, true) => return float("both operands come from quantized weighted ops; it fuses into one of them"),
        (false, false) => return float("no operand comes from a quantized weighted op to fuse into"),
    };
    Decision::Quantize(NodeMarks { inputs: vec![(residual, InputRole::Activation)], ..NodeMarks::default() })
}
