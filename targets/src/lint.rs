//! The QDQ linter: checks a (quantized) graph against a target's rules before anything is
//! written. Illegal patterns are errors (the target would reject the model, compute wrong
//! numbers, or silently run it on another device); patterns that keep the target from fusing
//! into integer kernels are warnings naming the nodes. It also estimates the share of compute
//! that runs in INT8 on the target.

use std::collections::BTreeMap;

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Graph, Model, NodeId, TensorType, Type, ValueId};
use serde::Serialize;

use crate::capabilities::{Capabilities, WEIGHTED_OPS};
use crate::flops::node_flops;
use crate::qdq::{self, QParams, constant, dq_producer, is_dq, is_q};
use crate::target::TargetKind;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One rule violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule's stable name (`trt-zero-point`, `per-channel-axis`…).
    pub rule: &'static str,
    pub severity: Severity,
    /// The nodes concerned, as `'name' (Op)`.
    pub nodes: Vec<String>,
    pub message: String,
}

/// Compute (FLOPs from shapes) by op type, and how much of it runs in INT8.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OpCompute {
    pub flops: u64,
    pub int8_flops: u64,
}

/// The share of compute in low precision on the target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ComputeShare {
    pub total_flops: u64,
    /// Runs in integer arithmetic on the target.
    pub int8_flops: u64,
    /// Uses 4-bit weights (compute in float after unpacking, or MatMulNBits).
    pub int4_weight_flops: u64,
    /// `int8_flops / total_flops`, rounded to 4 decimals.
    pub int8_share: f64,
    pub by_op: BTreeMap<String, OpCompute>,
    /// Compute-heavy nodes whose shapes are unknown (counted as 0).
    pub unknown_shape_nodes: Vec<String>,
    /// The input shapes the FLOPs were counted at (empty: as declared, symbolic dims as 1).
    pub shapes: BTreeMap<String, Vec<u64>>,
}

/// What the linter found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LintReport {
    pub target: &'static str,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub compute: ComputeShare,
}

impl LintReport {
    /// Whether there is no error (warnings allowed).
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
    }

    /// The findings of one rule.
    pub fn rule(&self, rule: &str) -> impl Iterator<Item = &Finding> {
        let rule = rule.to_string();
        self.errors.iter().chain(&self.warnings).filter(move |f| f.rule == rule)
    }

    /// Every error on its own line, for a failure message.
    pub fn error_lines(&self) -> Vec<String> {
        self.errors.iter().map(|f| format!("{}: {} [{}]", self.target, f.message, f.rule)).collect()
    }
}

/// Lints every graph of the model (subgraphs included) for a target.
pub fn lint_model(model: &Model, kind: TargetKind) -> LintReport {
    let caps = crate::capabilities::of(kind);
    let mut cx = Lint { kind, caps, findings: Vec::new(), share: ComputeShare::default() };
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |g| cx.graph(g));
    }
    let share = &mut cx.share;
    share.int8_share = if share.total_flops == 0 {
        0.0
    } else {
        ((share.int8_flops as f64 / share.total_flops as f64) * 10_000.0).round() / 10_000.0
    };
    let (errors, warnings) = cx.findings.into_iter().partition(|f| f.severity == Severity::Error);
    LintReport { target: kind.name(), errors, warnings, compute: cx.share }
}

/// [`lint_model`] with FLOPs counted at concrete input shapes (a sample's, or the build
/// profile's): the graph's inputs get these shapes and shapes are inferred again on a copy.
/// Inputs not named keep their declared shapes.
pub fn lint_model_at(model: &Model, kind: TargetKind, shapes: &BTreeMap<String, Vec<u64>>) -> LintReport {
    if shapes.is_empty() {
        return lint_model(model, kind);
    }
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let inputs: Vec<ValueId> = g.runtime_inputs().collect();
        for v in inputs {
            let Some(dims) = shapes.get(&g.value(v).name) else { continue };
            let Some(dtype) = g.tensor_type(v).and_then(|t| t.dtype()) else { continue };
            let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            g.value_mut(v).ty = Some(Type::tensor(TensorType::with_dims(dtype, &dims)));
        }
        // Drop the other values' symbolic types so inference recomputes them.
        let ids: Vec<ValueId> = g.values().map(|(id, _)| id).collect();
        for v in ids {
            let val = g.value(v);
            let defined_by_node = val.producer().is_some();
            if defined_by_node && !g.is_output(v) {
                g.value_mut(v).ty = None;
            }
        }
    }
    kiln_compiler::shape::infer_model(&mut m);
    let mut report = lint_model(&m, kind);
    report.compute.shapes = shapes.clone();
    report
}

/// Activations a weighted op's Q/DQ between it and this op keeps apart.
const FUSABLE_ACTIVATIONS: &[&str] =
    &["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Gelu"];

/// What ORT CPU folds into an integer Conv/MatMul: the clamps, through the output's quantizer.
/// Other activations run after a DequantizeLinear whatever the placement.
const CPU_FUSABLE_ACTIVATIONS: &[&str] = &["Relu", "Clip"];

struct Lint {
    kind: TargetKind,
    caps: &'static Capabilities,
    findings: Vec<Finding>,
    share: ComputeShare,
}

fn label(g: &Graph, n: NodeId) -> String {
    g.node(n).label(n)
}

fn is_weighted(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.domain().is_empty() && WEIGHTED_OPS.contains(&node.op_type.as_str())
}

/// Whether the value is a constant, directly or through a QuantizeLinear of a constant.
fn is_weight(g: &Graph, v: ValueId) -> bool {
    if constant(g, v).is_some() {
        return true;
    }
    g.value(v).producer().is_some_and(|p| is_q(g, p) && g.node(p).input(0).is_some_and(|x| constant(g, x).is_some()))
}

fn is_8bit(t: Option<DataType>) -> bool {
    matches!(t, Some(DataType::I8 | DataType::U8))
}

fn is_4bit(t: Option<DataType>) -> bool {
    matches!(t, Some(DataType::I4 | DataType::U4))
}

impl Lint {
    fn push(&mut self, rule: &'static str, severity: Severity, nodes: Vec<String>, message: String) {
        self.findings.push(Finding { rule, severity, nodes, message });
    }

    fn error(&mut self, rule: &'static str, nodes: Vec<String>, message: String) {
        self.push(rule, Severity::Error, nodes, message);
    }

    fn warn(&mut self, rule: &'static str, nodes: Vec<String>, message: String) {
        self.push(rule, Severity::Warning, nodes, message);
    }

    fn trt(&self) -> bool {
        self.kind == TargetKind::TensorRt
    }

    /// A Conv this target runs faster in float even between quantized tensors: depthwise on
    /// x86 CPUs, or smaller than the target's INT8 threshold.
    fn float_by_choice(&self, g: &Graph, n: NodeId) -> bool {
        let node = g.node(n);
        let weights = node.input(1).and_then(|w| constant(g, w)).map_or(0, |t| t.dims().iter().product::<usize>());
        node.op_type == "Conv"
            && ((self.caps.float_depthwise && is_depthwise(g, n)) || weights < self.caps.min_int8_conv_weights)
    }

    fn graph(&mut self, g: &Graph) {
        let quantized = qdq::has_qdq(g);
        let mut cuda_float_qdq = Vec::new();
        for n in g.node_ids() {
            let node = g.node(n);
            if let Some(why) = self.caps.rejects(node.domain(), &node.op_type) {
                self.error("unsupported-op", vec![label(g, n)], format!("{} is {why}", label(g, n)));
            }
            if is_q(g, n) || is_dq(g, n) {
                self.qdq_node(g, n);
            }
            if self.kind == TargetKind::Cuda && node.domain() == "com.microsoft" && node.op_type == "FusedConv" {
                self.cuda_fused_conv(g, n);
            }
            if is_weighted(g, n) {
                self.weighted(g, n);
                if self.kind == TargetKind::Cuda && node.input(0).and_then(|v| dq_producer(g, v)).is_some() {
                    cuda_float_qdq.push(label(g, n));
                }
            }
            if quantized && node.is_onnx("Add") {
                self.residual_add(g, n);
            }
            if is_q(g, n) {
                self.pair(g, n);
            }
            self.count(g, n);
        }
        if !cuda_float_qdq.is_empty() {
            let n = cuda_float_qdq.len();
            self.warn(
                "cuda-qdq-in-float",
                cuda_float_qdq,
                format!(
                    "the CUDA provider runs Q/DQ as DequantizeLinear followed by float kernels: {n} weighted ops \
                     with quantized inputs compute in float (use fp16 on cuda, or the tensorrt target for INT8)"
                ),
            );
        }
    }

    /// ONNX Runtime's CUDA FusedConv (1.31) builds a cuDNN activation for Relu only: any other
    /// activation fails at session creation ("unsupported conv activation mode", measured on an
    /// H100 with a Conv+HardSigmoid); and it has no FP16 kernel (such a node runs on the CPU).
    fn cuda_fused_conv(&mut self, g: &Graph, n: NodeId) {
        let node = g.node(n);
        let l = label(g, n);
        let activation = node.attr_str("activation");
        if activation != Some("Relu") {
            let act = activation.unwrap_or("none");
            self.error(
                "cuda-fused-conv",
                vec![l.clone()],
                format!("{l} fuses activation {act}: the CUDA FusedConv takes Relu only and fails to load"),
            );
        } else if node.input(0).and_then(|v| g.tensor_type(v)?.dtype()) == Some(kiln_compiler::DataType::F16) {
            self.warn(
                "cuda-fused-conv",
                vec![l.clone()],
                format!("{l} is FP16: the CUDA FusedConv is FP32 only, so it runs on the CPU with a copy each side"),
            );
        }
    }

    /// Scale, zero point, type, per-channel activations, shared DQ.
    fn qdq_node(&mut self, g: &Graph, n: NodeId) {
        let p = qdq::params(g, n);
        let l = label(g, n);
        match p.scales() {
            Some(s) if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) => {
                self.error(
                    "qdq-scale",
                    vec![l.clone()],
                    format!("{l} has a scale that is not a positive finite number"),
                );
            }
            None if self.trt() => {
                self.error("trt-constant-scale", vec![l.clone()], format!("{l}: TensorRT needs a constant scale"));
            }
            _ => {}
        }
        let data = g.node(n).input(0);
        let weight = data.is_some_and(|v| is_weight(g, v));
        if self.trt() {
            if let Some(t) = p.qtype {
                let ok = if weight { self.caps.allows_weight(t) } else { self.caps.allows_activation(t) };
                if !ok {
                    self.error(
                        "trt-quant-type",
                        vec![l.clone()],
                        format!(
                            "{l} quantizes {} to {}: TensorRT takes signed symmetric types only (int8{})",
                            if weight { "a weight" } else { "an activation" },
                            t.name(),
                            if weight { ", int4" } else { "" }
                        ),
                    );
                }
            }
            match p.zero_points_are_zero() {
                Some(true) => {}
                Some(false) => self.error(
                    "trt-zero-point",
                    vec![l.clone()],
                    format!("{l} has a non-zero zero point: TensorRT quantization is symmetric"),
                ),
                None => self.error(
                    "trt-zero-point",
                    vec![l.clone()],
                    format!("{l}: TensorRT needs a constant zero point of 0"),
                ),
            }
            if is_dq(g, n)
                && let Some(out) = g.node(n).output(0)
            {
                let uses = g.value(out).uses().len() + usize::from(g.is_output(out));
                if uses > 1 {
                    let mut nodes = vec![l.clone()];
                    nodes.extend(sorted_consumers(g, out).into_iter().map(|c| label(g, c)));
                    self.error(
                        "trt-shared-dq",
                        nodes,
                        format!("{l} has {uses} consumers: TensorRT fuses a DequantizeLinear into one consumer"),
                    );
                }
            }
        }
        if !weight && p.per_axis() && !self.caps.per_channel_activations {
            self.error(
                "per-channel-activation",
                vec![l.clone()],
                format!("{l} quantizes an activation per channel; {} takes per-tensor activations", self.kind.name()),
            );
        }
    }

    /// The axis of the weight's scales, and whether both inputs are quantized.
    fn weighted(&mut self, g: &Graph, n: NodeId) {
        let node = g.node(n);
        let l = label(g, n);
        let op = node.op_type.as_str();
        let Some(w) = node.input(1) else { return };
        let w_dq = dq_producer(g, w);
        let a_dq = node.input(0).and_then(|v| dq_producer(g, v));
        if let Some(dq) = w_dq {
            let p = qdq::params(g, dq);
            let rank = g.node(dq).input(0).and_then(|v| weight_rank(g, v));
            if let Some(rank) = rank {
                self.weight_axis(g, n, dq, &p, rank);
            }
            if a_dq.is_none() && is_8bit(p.qtype) && node.input(0).is_some_and(|v| constant(g, v).is_none()) {
                self.warn(
                    "weight-only-int8",
                    vec![l.clone(), label(g, dq)],
                    format!("{l} has an int8 weight but a float input: it runs in float on {}", self.kind.name()),
                );
            }
        } else if a_dq.is_some() && constant(g, w).is_some() && !self.float_by_choice(g, n) {
            self.warn(
                "float-weight",
                vec![l.clone()],
                format!("{l} has a quantized input but a float weight: it runs in float"),
            );
        }
        if let (Some(a), Some(wd), TargetKind::Cpu) = (a_dq, w_dq, self.kind) {
            let (at, wt) = (qdq::params(g, a).qtype, qdq::params(g, wd).qtype);
            if at == Some(DataType::I8) && wt == Some(DataType::U8) {
                self.warn(
                    "cpu-s8u8",
                    vec![l.clone()],
                    format!(
                        "{l}: int8 activations with uint8 weights have no integer kernel on ORT CPU (use S8S8 or U8S8)"
                    ),
                );
            }
        }
        // What follows the weighted op's output.
        let Some(out) = node.output(0) else { return };
        for c in sorted_consumers(g, out) {
            if !is_q(g, c) {
                continue;
            }
            let Some(q_out) = g.node(c).output(0) else { continue };
            let dqs = sorted_consumers(g, q_out);
            let mut feeds_int8 = false;
            let fusable = if self.trt() { FUSABLE_ACTIVATIONS } else { CPU_FUSABLE_ACTIVATIONS };
            for d in dqs.iter().copied().filter(|&d| is_dq(g, d)) {
                let Some(d_out) = g.node(d).output(0) else { continue };
                for next in sorted_consumers(g, d_out) {
                    let nn = g.node(next);
                    if nn.domain().is_empty() && fusable.contains(&nn.op_type.as_str()) {
                        self.warn(
                            "qdq-breaks-fusion",
                            vec![l.clone(), label(g, c), label(g, d), label(g, next)],
                            format!(
                                "Q/DQ between {l} and {} keeps them from fusing; quantize after the activation",
                                label(g, next)
                            ),
                        );
                    }
                    feeds_int8 |= nn.domain().is_empty() && self.caps.runs_int8(&nn.op_type);
                }
            }
            if self.trt() && !feeds_int8 {
                self.warn(
                    "trt-output-quantized",
                    vec![l.clone(), label(g, c)],
                    format!(
                        "{l}'s output is quantized by {} but no consumer takes it as a quantized input: TensorRT \
                         wants Q/DQ on the inputs of weighted ops, not after them ({op} keeps a float output)",
                        label(g, c)
                    ),
                );
            }
        }
    }

    fn weight_axis(&mut self, g: &Graph, n: NodeId, dq: NodeId, p: &QParams, rank: usize) {
        let node = g.node(n);
        let op = node.op_type.as_str();
        let trans_b = node.attr_int("transB").unwrap_or(0) != 0;
        let (out_axis, reduce_axis) = match op {
            "Conv" => (Some(0), Some(1)),
            "ConvTranspose" => (Some(1), Some(0)),
            "MatMul" if rank >= 2 => (Some(rank - 1), Some(rank - 2)),
            "Gemm" if trans_b => (Some(0), Some(1)),
            "Gemm" => (Some(1), Some(0)),
            _ => (None, None),
        };
        let axis = p.axis_for_rank(rank);
        let l = label(g, n);
        if p.per_axis() {
            if let Some(expected) = out_axis
                && axis != Some(expected)
            {
                self.error(
                    "per-channel-axis",
                    vec![label(g, dq), l.clone()],
                    format!(
                        "the weight of {l} is quantized per channel on axis {} by {}; its output channels are on axis {expected}",
                        p.axis,
                        label(g, dq)
                    ),
                );
            }
        } else if p.blocked()
            && let Some(expected) = reduce_axis
            && matches!(op, "MatMul" | "Gemm")
            && axis != Some(expected)
        {
            self.error(
                "blocked-axis",
                vec![label(g, dq), l.clone()],
                format!(
                    "the weight of {l} is blocked along axis {} by {}; blocks must run along the reduction axis {expected}",
                    p.axis,
                    label(g, dq)
                ),
            );
        }
    }

    /// A residual Add whose inputs are quantized on one side only.
    fn residual_add(&mut self, g: &Graph, n: NodeId) {
        let node = g.node(n);
        let (Some(a), Some(b)) = (node.input(0), node.input(1)) else { return };
        if constant(g, a).is_some() || constant(g, b).is_some() {
            return;
        }
        let from_dq = |v: ValueId| dq_producer(g, v).is_some();
        // A weighted op whose inputs are quantized and whose output only this Add reads:
        // TensorRT fuses the Add into it (a second reader needs the value before the Add).
        let from_quantized_weighted = |v: ValueId| {
            g.value(v).producer().is_some_and(|p| {
                is_weighted(g, p)
                    && g.node(p).input(0).and_then(|x| dq_producer(g, x)).is_some()
                    && g.value(v).uses().len() == 1
                    && !g.is_output(v)
            })
        };
        let l = label(g, n);
        let name = |v: ValueId| g.value(v).name.clone();
        // On the CPU only a re-quantized sum is lost: then QLinearAdd would have run it in
        // integers. A sum read in float (LayerNormalization after a residual) is float anyway.
        let requantized = node.output(0).is_some_and(|y| g.value(y).uses().iter().any(|u| is_q(g, u.node)));
        match self.kind {
            TargetKind::Cpu if from_dq(a) != from_dq(b) && requantized => {
                let float = if from_dq(a) { b } else { a };
                self.warn(
                    "unquantized-residual-add",
                    vec![l.clone()],
                    format!(
                        "{l}: input '{}' is not quantized while the other is; ORT CPU runs the Add in float and \
                         quantizes the sum again",
                        name(float)
                    ),
                );
            }
            TargetKind::TensorRt => {
                for (x, y) in [(a, b), (b, a)] {
                    if from_quantized_weighted(x) && !from_dq(y) && !from_quantized_weighted(y) {
                        self.warn(
                            "unquantized-residual-add",
                            vec![l.clone()],
                            format!(
                                "{l}: the residual input '{}' is not quantized, so TensorRT cannot fuse the Add into \
                                 the quantized op producing '{}'",
                                name(y),
                                name(x)
                            ),
                        );
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    /// A Q → DQ pair: same parameters, and something on either side that runs in INT8.
    fn pair(&mut self, g: &Graph, q: NodeId) {
        let Some(out) = g.node(q).output(0) else { return };
        let qp = qdq::params(g, q);
        let dqs: Vec<NodeId> = sorted_consumers(g, out).into_iter().filter(|&d| is_dq(g, d)).collect();
        for &d in &dqs {
            if qp.same_as(&qdq::params(g, d)) == Some(false) {
                self.error(
                    "qdq-pair-mismatch",
                    vec![label(g, q), label(g, d)],
                    format!(
                        "{} and {} quantize and dequantize with different scale, zero point or axis: the values change",
                        label(g, q),
                        label(g, d)
                    ),
                );
            }
        }
        // On CUDA nothing runs in INT8 after a DQ: `cuda-qdq-in-float` says so once.
        if self.kind == TargetKind::Cuda || dqs.is_empty() || g.node(q).input(0).is_some_and(|v| is_weight_const(g, v))
        {
            return;
        }
        let caps = self.caps;
        let int8_op = |n: NodeId| {
            let node = g.node(n);
            node.domain().is_empty() && caps.runs_int8(&node.op_type)
        };
        let consumer_int8 =
            dqs.iter().any(|&d| g.node(d).output(0).is_some_and(|o| sorted_consumers(g, o).into_iter().any(&int8_op)));
        let producer_int8 =
            g.node(q).input(0).and_then(|v| g.value(v).producer()).is_some_and(|p| {
                int8_op(p) && g.node(p).inputs().iter().flatten().any(|&x| dq_producer(g, x).is_some())
            });
        // Weighted-op outputs are judged by `weighted` (fusion breakers, TensorRT placement).
        let after_weighted = g.node(q).input(0).and_then(|v| g.value(v).producer()).is_some_and(|p| is_weighted(g, p));
        if !consumer_int8 && !producer_int8 && !after_weighted {
            let mut nodes = vec![label(g, q)];
            nodes.extend(dqs.iter().map(|&d| label(g, d)));
            self.warn(
                "lone-qdq",
                nodes,
                format!(
                    "{} → DequantizeLinear only rounds: neither side runs in INT8 on {}",
                    label(g, q),
                    self.kind.name()
                ),
            );
        }
    }

    /// Adds a node's compute to the totals.
    fn count(&mut self, g: &Graph, n: NodeId) {
        let node = g.node(n);
        let Some(flops) = node_flops(g, n) else {
            self.share.unknown_shape_nodes.push(label(g, n));
            return;
        };
        if flops == 0 {
            return;
        }
        let op = node.op_type.as_str();
        let dq_type = |i: usize| node.input(i).and_then(|v| dq_producer(g, v)).map(|d| qdq::params(g, d).qtype);
        let (int8, int4) = if self.caps.rejects(node.domain(), op).is_some() {
            (false, false)
        } else if self.caps.runs_integer_op(op) {
            (true, false)
        } else if op == "MatMulNBits" {
            (false, true)
        } else if is_weighted(g, n) {
            let (a, w) = (dq_type(0).flatten(), dq_type(1).flatten());
            let types_ok = match self.kind {
                TargetKind::TensorRt => a == Some(DataType::I8) && w == Some(DataType::I8),
                _ => is_8bit(a) && is_8bit(w) && !(a == Some(DataType::I8) && w == Some(DataType::U8)),
            };
            (self.caps.runs_int8(op) && types_ok, is_4bit(w))
        } else {
            (false, false)
        };
        let entry = self.share.by_op.entry(op.to_string()).or_default();
        entry.flops += flops;
        self.share.total_flops += flops;
        if int8 {
            entry.int8_flops += flops;
            self.share.int8_flops += flops;
        }
        if int4 {
            self.share.int4_weight_flops += flops;
        }
    }
}

fn is_weight_const(g: &Graph, v: ValueId) -> bool {
    constant(g, v).is_some()
}

/// The rank of a weight behind a DQ (through a Q of a constant).
fn weight_rank(g: &Graph, v: ValueId) -> Option<usize> {
    if let Some(t) = constant(g, v) {
        return Some(t.rank());
    }
    let p = g.value(v).producer().filter(|&p| is_q(g, p))?;
    g.node(p).input(0).and_then(|x| qdq::rank(g, x))
}

/// The consumers of a value, deduplicated, in id order (deterministic reports).
fn sorted_consumers(g: &Graph, v: ValueId) -> Vec<NodeId> {
    let mut c: Vec<NodeId> = g.value(v).uses().iter().map(|u| u.node).collect();
    c.sort();
    c.dedup();
    c
}

/// A Conv with one input channel per group (weight `[C_out, 1, …]`, `group > 1`).
fn is_depthwise(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let group = node.attr_int("group").unwrap_or(1);
    let one_per_group = node.input(1).and_then(|w| constant(g, w)).is_some_and(|t| t.dims().get(1) == Some(&1));
    node.op_type == "Conv" && group > 1 && one_per_group
}

#[cfg(test)]
#[path = "lint_tests.rs"]
mod tests;
