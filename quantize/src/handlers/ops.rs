//! The handlers, one function per kind of op.

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, NodeId, ValueId};

use super::HandlerCx;
use crate::plan::{Decision, InputRole, NodeMarks, OutputNeed, OutputRole, Placement};

fn float(why: impl Into<String>) -> Decision {
    Decision::Float(why.into())
}

/// A constant usable as a weight: float32, not a scalar.
fn weight_tensor(cx: &HandlerCx<'_>, v: Option<ValueId>) -> Result<std::sync::Arc<kiln_compiler::Tensor>, String> {
    let Some(v) = v else { return Err("no weight input".into()) };
    match cx.constant(v) {
        Some(t) if t.dtype() == DataType::F32 => Ok(t),
        Some(t) => Err(format!("weight `{}` is {}, not f32", cx.graph.value(v).name, t.dtype())),
        None => Err(format!("weight `{}` is not a constant", cx.graph.value(v).name)),
    }
}

/// Whether a value is declared as something other than f32 (unknown types pass: calibration
/// only has ranges for float tensors, which the plan checks).
pub(super) fn not_f32(cx: &HandlerCx<'_>, v: ValueId) -> bool {
    cx.graph.tensor_type(v).and_then(|t| t.dtype()).is_some_and(|d| d != DataType::F32)
}

fn channel_axis(cx: &HandlerCx<'_>, axis: usize) -> Option<usize> {
    cx.config.per_channel.then_some(axis)
}

/// A weighted op's output marks: quantized with its own range where the target's integer
/// kernel gives integers (ORT CPU), float where the target quantizes inputs only (TensorRT).
fn weighted_outputs(cx: &HandlerCx<'_>) -> Vec<(usize, OutputRole)> {
    match cx.config.placement {
        Placement::OutputsAndInputs => vec![(0, OutputRole::Activation)],
        Placement::WeightedInputs => Vec::new(),
    }
}

/// Conv: activation input, weight per output channel (axis 0), int32 bias.
pub(super) fn conv(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    weighted_conv(cx, id, |_| Some(0))
}

/// ConvTranspose: the weight is `[C_in, C_out / group, …]`, so output channels are on axis 1,
/// which covers every output channel only when `group == 1`; otherwise per tensor.
pub(super) fn conv_transpose(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    weighted_conv(cx, id, |group| (group == 1).then_some(1))
}

fn weighted_conv(cx: &HandlerCx<'_>, id: NodeId, axis_for_group: impl Fn(i64) -> Option<usize>) -> Decision {
    let node = cx.graph.node(id);
    let Some(x) = node.input(0) else { return float("no input") };
    if not_f32(cx, x) {
        return float("input is not f32");
    }
    let w = match weight_tensor(cx, node.input(1)) {
        Ok(w) => w,
        Err(e) => return float(e),
    };
    if w.rank() < 3 {
        return float("weight rank below 3");
    }
    let group = node.attr_int("group").unwrap_or(1);
    // Depthwise: one input channel per group (Conv weight `[C_out, C_in / group, …]`).
    if cx.config.float_depthwise && group > 1 && node.op_type == "Conv" && w.dims().get(1) == Some(&1) {
        return float("depthwise: the target's int8 kernel is slower than its float one");
    }
    let weights = w.dims().iter().product::<usize>();
    if node.op_type == "Conv" && weights < cx.config.min_conv_weights {
        return float(format!(
            "{weights} weights: the Q/DQ around so small a Conv cost more than its int8 kernel saves"
        ));
    }
    let axis = axis_for_group(group).and_then(|a| channel_axis(cx, a));
    let mut marks = NodeMarks {
        inputs: vec![(0, InputRole::Activation), (1, InputRole::Weight { axis })],
        outputs: weighted_outputs(cx),
        need: OutputNeed::Always,
    };
    if node.input(2).is_some() {
        match weight_tensor(cx, node.input(2)) {
            Ok(_) if cx.config.quantize_bias => marks.inputs.push((2, InputRole::Bias { input: 0, weight: 1 })),
            Ok(_) => {}
            Err(e) => return float(format!("bias: {e}")),
        }
    }
    Decision::Quantize(marks)
}

/// MatMul: a constant right operand is a weight per output column (axis 1 of a 2-D weight;
/// per tensor for batched weights); a runtime one (attention scores) is an activation.
pub(super) fn matmul(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    let node = cx.graph.node(id);
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else { return float("missing operand") };
    if cx.constant(a).is_some() {
        return float("the left operand is a constant");
    }
    if not_f32(cx, a) || not_f32(cx, b) {
        return float("operands are not f32");
    }
    let b_role = if cx.constant(b).is_some() {
        match weight_tensor(cx, Some(b)) {
            Ok(w) if w.rank() == 2 => InputRole::Weight { axis: channel_axis(cx, 1) },
            Ok(w) if w.rank() > 2 => InputRole::Weight { axis: None },
            Ok(_) => return float("the weight is not a matrix"),
            Err(e) => return float(e),
        }
    } else {
        InputRole::Activation
    };
    Decision::Quantize(NodeMarks {
        inputs: vec![(0, InputRole::Activation), (1, b_role)],
        outputs: weighted_outputs(cx),
        need: OutputNeed::Optional,
    })
}

/// Gemm: B a constant weight (output channels on axis 0 when `transB`, else 1), C an int32
/// bias when it is a 1-D constant added with `alpha = beta = 1`.
pub(super) fn gemm(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    let node = cx.graph.node(id);
    let Some(a) = node.input(0) else { return float("no input") };
    if not_f32(cx, a) || cx.constant(a).is_some() {
        return float("A is not an f32 activation");
    }
    let w = match weight_tensor(cx, node.input(1)) {
        Ok(w) => w,
        Err(e) => return float(e),
    };
    if w.rank() != 2 {
        return float("B is not a matrix");
    }
    let trans_b = node.attr_int("transB").unwrap_or(0) != 0;
    let axis = channel_axis(cx, if trans_b { 0 } else { 1 });
    let mut marks = NodeMarks {
        inputs: vec![(0, InputRole::Activation), (1, InputRole::Weight { axis })],
        outputs: weighted_outputs(cx),
        need: OutputNeed::Optional,
    };
    if let Some(c) = node.input(2) {
        let unit = node.attr_float("alpha").unwrap_or(1.0) == 1.0 && node.attr_float("beta").unwrap_or(1.0) == 1.0;
        let n = w.dims()[if trans_b { 0 } else { 1 }];
        match weight_tensor(cx, Some(c)) {
            Ok(t) if unit && t.dims() == [n] => {
                if cx.config.quantize_bias {
                    marks.inputs.push((2, InputRole::Bias { input: 0, weight: 1 }));
                }
            }
            Ok(_) => return float("C is not a 1-D bias added with alpha = beta = 1"),
            Err(e) => return float(format!("C: {e}")),
        }
    }
    Decision::Quantize(marks)
}

/// Add, Mul: runtime operands are activations; a constant operand is quantized like one.
/// TensorRT: [`super::tensorrt::residual_add`].
pub(super) fn binary(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    if cx.config.placement == Placement::WeightedInputs {
        return super::tensorrt::residual_add(cx, id);
    }
    let node = cx.graph.node(id);
    let mut inputs = Vec::new();
    let mut runtime = 0;
    for i in 0..2 {
        let Some(v) = node.input(i) else { return float("missing operand") };
        if not_f32(cx, v) {
            return float("operands are not f32");
        }
        if cx.constant(v).is_some() {
            match weight_tensor(cx, Some(v)) {
                Ok(_) => inputs.push((i, InputRole::Constant)),
                Err(e) => return float(e),
            }
        } else {
            runtime += 1;
            inputs.push((i, InputRole::Activation));
        }
    }
    if runtime == 0 {
        return float("both operands are constants");
    }
    Decision::Quantize(NodeMarks { inputs, outputs: vec![(0, OutputRole::Activation)], ..NodeMarks::default() })
}

/// Concat: every operand an activation (constants quantized like one), its own output range.
/// TensorRT quantizes no Concat of its own: its inputs are quantized where they are read.
pub(super) fn concat(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    if cx.config.placement == Placement::WeightedInputs {
        return float("TensorRT: a Concat is not quantized on its own (its consumers quantize their inputs)");
    }
    let node = cx.graph.node(id);
    let mut inputs = Vec::new();
    for (i, v) in node.inputs().iter().enumerate() {
        let Some(v) = *v else { continue };
        if not_f32(cx, v) {
            return float("operands are not f32");
        }
        let role = if cx.constant(v).is_some() { InputRole::Constant } else { InputRole::Activation };
        inputs.push((i, role));
    }
    Decision::Quantize(NodeMarks { inputs, outputs: vec![(0, OutputRole::Activation)], ..NodeMarks::default() })
}

/// Relu and `Clip(0, hi)`: absorbed into the quantizer of a quantized producer (asymmetric
/// activations: zero point `qmin` clamps at 0 exactly); otherwise quantized in place when its
/// input is quantized.
pub(super) fn relu(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    let g = cx.graph;
    let node = g.node(id);
    let (Some(x), Some(_)) = (node.input(0), node.output(0)) else { return float("no input") };
    if not_f32(cx, x) {
        return float("input is not f32");
    }
    if node.op_type == "Clip" && !clip_from_zero(cx, id) {
        return float("Clip does not start at 0");
    }
    let producer_quantizes_own_range = g.value(x).producer().is_some_and(|p| {
        cx.plan.nodes.get(&p).is_some_and(|m| {
            m.outputs.iter().any(|&(o, r)| r == OutputRole::Activation && g.node(p).output(o) == Some(x))
        })
    });
    // The producer takes over the activation's output (`y` keeps its name and readers).
    let sole_use = g.value(x).uses().len() == 1 && !g.is_output(x) && !crate::qdq::is_captured(g, &g.value(x).name);
    if cx.config.absorb_relu && !cx.config.symmetric_activations && producer_quantizes_own_range && sole_use {
        return Decision::Absorb;
    }
    if !cx.is_quantized(x) {
        return float("input is not quantized");
    }
    Decision::Quantize(NodeMarks {
        inputs: vec![(0, InputRole::Activation)],
        outputs: vec![(0, OutputRole::Activation)],
        ..NodeMarks::default()
    })
}

/// Whether a Clip's lower bound is a constant 0 (input 1 from opset 11, attribute before).
fn clip_from_zero(cx: &HandlerCx<'_>, id: NodeId) -> bool {
    let node = cx.graph.node(id);
    if let Some(min) = node.attr_float("min") {
        return min == 0.0;
    }
    let Some(v) = node.input(1) else { return false };
    cx.constant(v).and_then(|t| t.to_f64_vec().ok()).is_some_and(|m| m.len() == 1 && m[0] == 0.0)
}

/// Element-wise and pooling ops the target runs on integers (QLinearSigmoid, QLinearSoftmax,
/// QLinearAveragePool…): quantized when the target says so and the input is already quantized
/// (otherwise the Q/DQ pair would cost more than the float op).
pub(super) fn target_unary(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    let node = cx.graph.node(id);
    if !cx.config.target_ops.contains(&node.op_type) {
        return float("the target runs it in float");
    }
    let Some(x) = node.input(0) else { return float("no input") };
    if not_f32(cx, x) {
        return float("input is not f32");
    }
    if !cx.is_quantized(x) {
        return float("input is not quantized");
    }
    Decision::Quantize(NodeMarks {
        inputs: vec![(0, InputRole::Activation)],
        outputs: vec![(0, OutputRole::Activation)],
        ..NodeMarks::default()
    })
}

/// Data movement (Reshape, Transpose, MaxPool, Resize, Slice, Gather, Split…): outputs share
/// the input's parameters, so the runtime drops the DQ/Q pair and moves 8-bit values. Only
/// when the input is already quantized; a constant table (embedding Gather) stays float.
pub(super) fn shared(cx: &HandlerCx<'_>, id: NodeId) -> Decision {
    let node = cx.graph.node(id);
    let Some(x) = node.input(0) else { return float("no input") };
    if cx.constant(x).is_some() {
        return float("the data input is a constant");
    }
    if not_f32(cx, x) {
        return float("input is not f32");
    }
    if !cx.is_quantized(x) {
        return float("input is not quantized");
    }
    if matches!(node.op_type.as_str(), "MaxPool") && node.outputs().iter().flatten().count() > 1 {
        return float("MaxPool with indices");
    }
    let outputs = (0..node.outputs().len())
        .filter(|&o| node.output(o).is_some())
        .map(|o| (o, OutputRole::SameAsInput(0)))
        .collect();
    Decision::Quantize(NodeMarks { inputs: vec![(0, InputRole::Activation)], outputs, ..NodeMarks::default() })
}
