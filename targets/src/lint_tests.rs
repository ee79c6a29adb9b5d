//! Every linter rule has a graph that breaks it and a twin that keeps it; passing twins are
//! run in ONNX Runtime so they are real graphs, not just shapes the linter likes.

use kiln_compiler::DataType;
use kiln_compiler::ir::{Attribute, Model, ValueId};

use super::*;
use crate::testgraph::{QdqBuilder, assert_runs};

const CPU: TargetKind = TargetKind::Cpu;
const CUDA: TargetKind = TargetKind::Cuda;
const TRT: TargetKind = TargetKind::TensorRt;

/// Asserts `rule` fires on `bad` and not on `good` for `kind`, and `good` runs.
fn twin(kind: TargetKind, rule: &str, severity: Severity, bad: &Model, good: &Model) {
    let b = lint_model(bad, kind);
    let hits: Vec<_> = b.rule(rule).collect();
    assert!(!hits.is_empty(), "{rule} did not fire on the failing graph: {b:#?}");
    assert!(hits.iter().all(|f| f.severity == severity && !f.nodes.is_empty()), "{hits:#?}");
    let g = lint_model(good, kind);
    assert_eq!(g.rule(rule).count(), 0, "{rule} fired on the passing twin: {g:#?}");
    assert_runs(good);
}

/// x[1,3,8,8] → Q/DQ(act_zp, act_type) → Conv(weight DQ per channel on `axis`, 4 out) → y.
fn conv(act_zp: i64, act_type: DataType, axis: i64) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let xq = b.qdq(x, 0.05, act_zp, act_type);
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(axis), 0);
    let y = b.op("Conv", &[xq, w], "conv");
    b.finish(&[y])
}

#[test]
fn trt_zero_point_must_be_zero() {
    twin(TRT, "trt-zero-point", Severity::Error, &conv(3, DataType::I8, 0), &conv(0, DataType::I8, 0));
    // ORT CPU takes asymmetric activations.
    assert!(lint_model(&conv(3, DataType::I8, 0), CPU).passed());
}

#[test]
fn trt_takes_signed_types_only() {
    twin(TRT, "trt-quant-type", Severity::Error, &conv(0, DataType::U8, 0), &conv(0, DataType::I8, 0));
    assert!(lint_model(&conv(128, DataType::U8, 0), CPU).passed());
}

#[test]
fn conv_weights_per_output_channel() {
    for kind in [CPU, TRT] {
        twin(kind, "per-channel-axis", Severity::Error, &conv(0, DataType::I8, 1), &conv(0, DataType::I8, 0));
    }
    // Negative axes count from the end: -4 is axis 0 of a rank-4 weight.
    assert_eq!(lint_model(&conv(0, DataType::I8, -4), TRT).rule("per-channel-axis").count(), 0);
}

fn conv_transpose(axis: i64) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 4, 4]);
    let xq = b.quantize_input(0.05, 0);
    // ConvTranspose weights are [C_in, C_out / group, kH, kW]: output channels on axis 1.
    let w = b.weight_dq(&[3, 5, 3, 3], 2, Some(axis), 0);
    let y = b.op("ConvTranspose", &[xq, w], "deconv");
    b.finish(&[y])
}

#[test]
fn conv_transpose_weights_per_channel_on_axis_1() {
    twin(TRT, "per-channel-axis", Severity::Error, &conv_transpose(0), &conv_transpose(1));
}

fn matmul(axis: i64) -> Model {
    let mut b = QdqBuilder::new(&[2, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.weight_dq(&[8, 6], 3, Some(axis), 0);
    let y = b.op("MatMul", &[xq, w], "matmul");
    b.finish(&[y])
}

#[test]
fn matmul_weights_per_channel_on_n() {
    twin(TRT, "per-channel-axis", Severity::Error, &matmul(0), &matmul(1));
}

fn gemm_trans_b(axis: i64) -> Model {
    let mut b = QdqBuilder::new(&[2, 8]);
    let xq = b.quantize_input(0.05, 0);
    // transB: the weight is [N, K], output channels on axis 0.
    let w = b.weight_dq(&[6, 8], 4, Some(axis), 0);
    let y = b.node("Gemm", &[xq, w], "gemm", vec![Attribute::int("transB", 1)]);
    b.finish(&[y])
}

#[test]
fn gemm_trans_b_weights_per_channel_on_axis_0() {
    twin(TRT, "per-channel-axis", Severity::Error, &gemm_trans_b(1), &gemm_trans_b(0));
}

fn int4_matmul(axis: i64) -> Model {
    let mut b = QdqBuilder::new(&[2, 32]);
    let x = b.x;
    let w = b.int4_weight(32, 8, axis, 16);
    let y = b.op("MatMul", &[x, w], "matmul4");
    b.finish(&[y])
}

#[test]
fn int4_blocks_run_along_k() {
    twin(TRT, "blocked-axis", Severity::Error, &int4_matmul(1), &int4_matmul(0));
    let report = lint_model(&int4_matmul(0), TRT);
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.compute.int4_weight_flops, 2 * 2 * 8 * 32);
}

fn activation(per_channel: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let xq = if per_channel {
        let s = b.scale(&[0.05, 0.06, 0.07]);
        let z = b.zero_point(DataType::I8, &[0, 0, 0]);
        let q = b.node("QuantizeLinear", &[x, s, z], "q_pc", vec![Attribute::int("axis", 1)]);
        b.node("DequantizeLinear", &[q, s, z], "dq_pc", vec![Attribute::int("axis", 1)])
    } else {
        b.qdq(x, 0.05, 0, DataType::I8)
    };
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let y = b.op("Conv", &[xq, w], "conv");
    b.finish(&[y])
}

#[test]
fn trt_activations_per_tensor() {
    twin(TRT, "per-channel-activation", Severity::Error, &activation(true), &activation(false));
    assert_eq!(lint_model(&activation(true), CPU).rule("per-channel-activation").count(), 0);
}

fn gelu(contrib: bool) -> Model {
    let mut b = QdqBuilder::new(&[2, 8]);
    let x = b.x;
    let mut spec_model = if contrib {
        let mut spec = kiln_compiler::ir::NodeSpec::new("Gelu").name("gelu").inputs([x]).outputs(["y"]);
        spec.domain = Some("com.microsoft".into());
        let id = b.g.add_node(spec);
        let y = b.g.node(id).output(0).unwrap();
        b.finish(&[y])
    } else {
        let y = b.op("Gelu", &[x], "gelu");
        b.finish(&[y])
    };
    if contrib {
        spec_model
            .opset_import
            .push(kiln_compiler::ir::OpsetImport { domain: Some("com.microsoft".into()), version: Some(1) });
    }
    spec_model
}

#[test]
fn trt_rejects_contrib_ops() {
    twin(TRT, "unsupported-op", Severity::Error, &gelu(true), &gelu(false));
    assert!(lint_model(&gelu(true), CPU).passed());
    assert!(lint_model(&gelu(true), CUDA).passed());
}

/// x → Q(u8) → QLinearConv → DQ, or the same computation in QDQ form.
fn qlinear_conv(qoperator: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let s = b.scale(&[0.05]);
    let z = b.zero_point(DataType::U8, &[128]);
    let xq = b.op("QuantizeLinear", &[x, s, z], "q_x");
    if qoperator {
        let w = {
            let v: Vec<u8> = (0..108).map(|i| (100 + i % 50) as u8).collect();
            b.g.add_initializer(
                "wq",
                std::sync::Arc::new(kiln_compiler::Tensor::from_slice(vec![4, 3, 3, 3], &v).unwrap()),
            )
        };
        let ws = b.scale(&[0.01]);
        let wz = b.zero_point(DataType::U8, &[128]);
        let ys = b.scale(&[0.1]);
        let yz = b.zero_point(DataType::U8, &[128]);
        let yq = b.op("QLinearConv", &[xq, s, z, w, ws, wz, ys, yz], "qlinear_conv");
        let y = b.op("DequantizeLinear", &[yq, ys, yz], "dq_y");
        b.finish(&[y])
    } else {
        let xd = b.op("DequantizeLinear", &[xq, s, z], "dq_x");
        let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
        let y = b.op("Conv", &[xd, w], "conv");
        b.finish(&[y])
    }
}

#[test]
fn cuda_rejects_qoperator_ops_that_fall_back_to_cpu() {
    twin(CUDA, "unsupported-op", Severity::Error, &qlinear_conv(true), &qlinear_conv(false));
    let cpu = lint_model(&qlinear_conv(true), CPU);
    assert!(cpu.passed(), "{cpu:#?}");
    assert_eq!(cpu.compute.int8_share, 1.0);
    // On CUDA the QDQ form computes in float, and the report says so.
    let cuda = lint_model(&qlinear_conv(false), CUDA);
    assert_eq!(cuda.compute.int8_flops, 0);
    assert_eq!(cuda.rule("cuda-qdq-in-float").count(), 1);
}

/// Conv(DQ x, DQ w) → Q → DQ → (a second quantized Conv | the graph output).
fn conv_output(next_conv: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let y = b.node("Conv", &[xq, w], "conv1", vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let yq = b.qdq(y, 0.1, 0, DataType::I8);
    if next_conv {
        let w2 = b.weight_dq(&[2, 4, 1, 1], 5, Some(0), 0);
        let z = b.op("Conv", &[yq, w2], "conv2");
        b.finish(&[z])
    } else {
        b.finish(&[yq])
    }
}

#[test]
fn trt_no_output_quantization_after_weighted_ops() {
    twin(TRT, "trt-output-quantized", Severity::Warning, &conv_output(false), &conv_output(true));
    let good = lint_model(&conv_output(true), TRT);
    assert!(good.passed() && good.warnings.is_empty(), "{good:#?}");
    assert_eq!(good.compute.int8_share, 1.0);
}

/// Conv → [Q/DQ] → Relu → Q/DQ → Conv: the first Q/DQ keeps Conv and Relu apart.
fn conv_relu(breaker: bool) -> Model {
    conv_act("Relu", breaker)
}

/// Conv → (Q/DQ →) `act` → Q/DQ → Conv.
fn conv_act(act: &str, breaker: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let mut y = b.op("Conv", &[xq, w], "conv1");
    if breaker {
        y = b.qdq(y, 0.1, 0, DataType::I8);
    }
    let r = b.op(act, &[y], "relu");
    let rq = b.qdq(r, 0.05, 0, DataType::I8);
    let w2 = b.weight_dq(&[2, 4, 1, 1], 5, Some(0), 0);
    let z = b.op("Conv", &[rq, w2], "conv2");
    b.finish(&[z])
}

#[test]
fn qdq_between_conv_and_relu_is_a_fusion_breaker() {
    for kind in [CPU, TRT] {
        twin(kind, "qdq-breaks-fusion", Severity::Warning, &conv_relu(true), &conv_relu(false));
    }
    let bad = lint_model(&conv_relu(true), CPU);
    let f = bad.rule("qdq-breaks-fusion").next().unwrap();
    assert!(f.nodes.iter().any(|n| n.contains("conv1")) && f.nodes.iter().any(|n| n.contains("relu")), "{f:?}");
    // ORT CPU folds only Relu and Clip into an integer Conv; TensorRT fuses HardSwish too.
    let hard_swish = conv_act("HardSwish", true);
    assert_eq!(lint_model(&hard_swish, CPU).rule("qdq-breaks-fusion").count(), 0);
    assert_eq!(lint_model(&hard_swish, TRT).rule("qdq-breaks-fusion").count(), 1);
}

/// y = Conv(DQ x); Add(y, residual) with the residual quantized or not.
fn residual(quantized: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.weight_dq(&[3, 3, 3, 3], 1, Some(0), 0);
    let y = b.node("Conv", &[xq, w], "conv", vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let x = b.x;
    let res = if quantized { b.qdq(x, 0.05, 0, DataType::I8) } else { x };
    let s = b.op("Add", &[y, res], "residual_add");
    b.finish(&[s])
}

#[test]
fn trt_residual_add_needs_its_other_input_quantized() {
    twin(TRT, "unquantized-residual-add", Severity::Warning, &residual(false), &residual(true));
    // A Conv whose output is read beside the Add cannot take the Add into its epilogue: the
    // float residual keeps nothing from fusing.
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.weight_dq(&[3, 3, 3, 3], 1, Some(0), 0);
    let y = b.node("Conv", &[xq, w], "conv", vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let x = b.x;
    let s = b.op("Add", &[y, x], "residual_add");
    let shared = b.finish(&[s, y]);
    assert_runs(&shared);
    assert_eq!(lint_model(&shared, TRT).rule("unquantized-residual-add").count(), 0);
}

/// Add(DQ a, b) on CPU: QLinearAdd needs both inputs quantized.
/// DQ(x) + (Exp(x) | DQ(Exp(x))), the sum quantized again or read in float.
fn cpu_add(both: bool, requantized: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 8]);
    let x = b.x;
    let a = b.qdq(x, 0.05, 0, DataType::I8);
    let e = b.op("Exp", &[x], "exp");
    let other = if both { b.qdq(e, 0.05, 0, DataType::I8) } else { e };
    let s = b.op("Add", &[a, other], "add");
    let out = if requantized { b.qdq(s, 0.1, 0, DataType::I8) } else { b.op("Sqrt", &[s], "sqrt") };
    b.finish(&[out])
}

#[test]
fn cpu_add_with_one_float_input_is_flagged() {
    twin(CPU, "unquantized-residual-add", Severity::Warning, &cpu_add(false, true), &cpu_add(true, true));
    // A sum read in float (a residual before LayerNormalization) runs in float either way.
    assert_eq!(lint_model(&cpu_add(false, false), CPU).rule("unquantized-residual-add").count(), 0);
}

/// x → Q/DQ → (Exp | Conv): a pair before an op that never runs in INT8 only rounds.
fn lone(before_conv: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let y = if before_conv {
        let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
        b.op("Conv", &[xq, w], "conv")
    } else {
        b.op("Exp", &[xq], "exp")
    };
    b.finish(&[y])
}

#[test]
fn lone_qdq_pairs_are_flagged() {
    for kind in [CPU, TRT] {
        twin(kind, "lone-qdq", Severity::Warning, &lone(false), &lone(true));
    }
}

/// Q and DQ of one pair with (different | the same) scales.
fn pair(scale_dq: f32, scale_q: f32) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let sq = b.scale(&[scale_q]);
    let sd = b.scale(&[scale_dq]);
    let z = b.zero_point(DataType::I8, &[0]);
    let q = b.op("QuantizeLinear", &[x, sq, z], "q");
    let d = b.op("DequantizeLinear", &[q, sd, z], "dq");
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let y = b.op("Conv", &[d, w], "conv");
    b.finish(&[y])
}

#[test]
fn q_and_dq_of_a_pair_agree() {
    for kind in [CPU, CUDA, TRT] {
        twin(kind, "qdq-pair-mismatch", Severity::Error, &pair(0.2, 0.1), &pair(0.1, 0.1));
    }
}

#[test]
fn scales_are_positive() {
    for kind in [CPU, TRT] {
        twin(kind, "qdq-scale", Severity::Error, &pair(0.0, 0.0), &pair(0.1, 0.1));
    }
}

/// A Q/DQ whose scale is a graph input (not constant).
fn runtime_scale(constant: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let s: ValueId = if constant {
        b.scale(&[0.05])
    } else {
        b.g.add_input("s", Some(kiln_passes::testing::tensor_ty(DataType::F32, &[])))
    };
    let q = b.op("QuantizeLinear", &[x, s], "q");
    let d = b.op("DequantizeLinear", &[q, s], "dq");
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let y = b.op("Conv", &[d, w], "conv");
    b.finish(&[y])
}

#[test]
fn trt_scales_are_constant() {
    let bad = runtime_scale(false);
    twin(TRT, "trt-constant-scale", Severity::Error, &bad, &runtime_scale(true));
    let r = lint_model(&bad, TRT);
    assert!(r.rule("trt-constant-scale").count() == 2, "{r:#?}");
    assert_eq!(lint_model(&bad, CPU).rule("trt-constant-scale").count(), 0);
}

/// x → Q → DQ read by two Convs (`shared`), or one DQ per Conv; Add of the two Convs.
fn shared_dq(shared: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let s = b.scale(&[0.05]);
    let z = b.zero_point(DataType::I8, &[0]);
    let q = b.op("QuantizeLinear", &[x, s, z], "q_x");
    let d1 = b.op("DequantizeLinear", &[q, s, z], "dq_x");
    let d2 = if shared { d1 } else { b.op("DequantizeLinear", &[q, s, z], "dq_x_2") };
    let w1 = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let w2 = b.weight_dq(&[4, 3, 3, 3], 2, Some(0), 0);
    let c1 = b.op("Conv", &[d1, w1], "conv1");
    let c2 = b.op("Conv", &[d2, w2], "conv2");
    let y = b.op("Add", &[c1, c2], "sum");
    b.finish(&[y])
}

#[test]
fn trt_dq_has_one_consumer() {
    twin(TRT, "trt-shared-dq", Severity::Error, &shared_dq(true), &shared_dq(false));
    let bad = lint_model(&shared_dq(true), TRT);
    let f = bad.rule("trt-shared-dq").next().unwrap();
    assert!(f.nodes.iter().any(|n| n.contains("conv1")) && f.nodes.iter().any(|n| n.contains("conv2")), "{f:?}");
    // ORT CPU's node units share a DQ freely.
    assert_eq!(lint_model(&shared_dq(true), CPU).rule("trt-shared-dq").count(), 0);
    let good = lint_model(&shared_dq(false), TRT);
    assert!(good.passed() && good.warnings.is_empty(), "{good:#?}");
}

/// Conv with an int8 weight DQ and a (float | quantized) input.
fn weight_only(input_quantized: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = if input_quantized { b.quantize_input(0.05, 0) } else { b.x };
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let y = b.op("Conv", &[x, w], "conv");
    b.finish(&[y])
}

#[test]
fn an_int8_weight_with_a_float_input_runs_in_float() {
    for kind in [CPU, TRT] {
        twin(kind, "weight-only-int8", Severity::Warning, &weight_only(false), &weight_only(true));
    }
    assert_eq!(lint_model(&weight_only(false), TRT).compute.int8_flops, 0);
}

/// Conv of 8 → 64 channels (4608 weights, above the cpu target's INT8 floor) with a quantized
/// input and a (float | int8) weight.
fn float_weight(float: bool) -> Model {
    float_weight_shaped(float, &[64, 8, 3, 3])
}

fn float_weight_shaped(float: bool, shape: &[usize]) -> Model {
    let mut b = QdqBuilder::new(&[1, shape[1], 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = if float { b.float_weight(shape) } else { b.weight_dq(shape, 1, Some(0), 0) };
    let y = b.op("Conv", &[xq, w], "conv");
    b.finish(&[y])
}

#[test]
fn a_quantized_input_with_a_float_weight_runs_in_float() {
    for kind in [CPU, TRT] {
        twin(kind, "float-weight", Severity::Warning, &float_weight(true), &float_weight(false));
    }
    assert_eq!(lint_model(&float_weight(true), TRT).compute.int8_flops, 0);
}

#[test]
fn a_float_conv_below_the_cpu_int8_floor_is_the_cpu_form() {
    // 108 weights: the quantizer keeps such a Conv float on the cpu target, so its linter
    // does not ask for int8 weights; TensorRT has no such floor.
    let small = float_weight_shaped(true, &[4, 3, 3, 3]);
    assert_eq!(lint_model(&small, CPU).rule("float-weight").count(), 0);
    assert_eq!(lint_model(&small, TRT).rule("float-weight").count(), 1);
}

#[test]
fn a_float_depthwise_conv_is_the_cpu_form_on_x86() {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.float_weight(&[3, 1, 3, 3]);
    let y = b.node("Conv", &[xq, w], "dw", vec![Attribute::int("group", 3)]);
    let depthwise = b.finish(&[y]);
    let on_cpu = lint_model(&depthwise, CPU).rule("float-weight").count();
    assert_eq!(on_cpu, usize::from(cfg!(any(target_arch = "aarch64", target_arch = "arm"))));
    assert_eq!(lint_model(&depthwise, TRT).rule("float-weight").count(), 1);
}

/// Conv with an activation DQ of `act` and a weight DQ of `weight` type.
fn mixed_types(act: DataType, weight: DataType) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let x = b.x;
    let xq = b.qdq(x, 0.05, 0, act);
    let zp = if weight == DataType::U8 { 128 } else { 0 };
    let w = b.weight_dq_typed(&[4, 3, 3, 3], 1, Some(0), zp, weight);
    let y = b.op("Conv", &[xq, w], "conv");
    b.finish(&[y])
}

#[test]
fn cpu_has_no_s8_activation_u8_weight_kernel() {
    twin(
        CPU,
        "cpu-s8u8",
        Severity::Warning,
        &mixed_types(DataType::I8, DataType::U8),
        &mixed_types(DataType::U8, DataType::I8),
    );
}

/// An ORT-CPU S8S8 QDQ network: asymmetric int8 activations, symmetric per-channel weights,
/// Conv → Q/DQ → Conv, MaxPool kept in int8, a MatMul head.
fn cpu_s8s8() -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.04, -5);
    let w1 = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let c1 = b.node("Conv", &[xq, w1], "conv1", vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let c1q = b.qdq(c1, 0.1, 3, DataType::I8);
    let w2 = b.weight_dq(&[4, 4, 3, 3], 2, Some(0), 0);
    let c2 = b.op("Conv", &[c1q, w2], "conv2");
    let c2q = b.qdq(c2, 0.2, -2, DataType::I8);
    let p = b.node(
        "MaxPool",
        &[c2q],
        "pool",
        vec![Attribute::ints("kernel_shape", vec![2, 2]), Attribute::ints("strides", vec![2, 2])],
    );
    let pq = b.qdq(p, 0.2, -2, DataType::I8);
    let shape = b.g.add_initializer(
        "shape",
        std::sync::Arc::new(kiln_compiler::Tensor::from_slice(vec![2], &[1i64, 36]).unwrap()),
    );
    let f = b.op("Reshape", &[pq, shape], "flatten");
    let fq = b.qdq(f, 0.2, -2, DataType::I8);
    let w3 = b.weight_dq(&[36, 2], 3, Some(1), 0);
    let m = b.op("MatMul", &[fq, w3], "head");
    b.finish(&[m])
}

#[test]
fn cpu_accepts_a_good_s8s8_qdq_graph_and_tensorrt_names_its_asymmetric_zero_points() {
    let model = cpu_s8s8();
    assert_runs(&model);
    let cpu = lint_model(&model, CPU);
    assert!(cpu.passed() && cpu.warnings.is_empty(), "{cpu:#?}");
    assert_eq!(cpu.compute.int8_share, 1.0, "{:#?}", cpu.compute);
    assert_eq!(cpu.compute.by_op["Conv"].flops, 2 * 4 * 64 * 27 + 2 * 4 * 36 * 36);
    let trt = lint_model(&model, TRT);
    let zp: Vec<_> = trt.rule("trt-zero-point").collect();
    assert_eq!(zp.len(), 5 * 2, "{zp:#?}"); // five pairs with a non-zero zero point, Q and DQ each
}

#[test]
fn share_counts_only_convs_with_quantized_inputs() {
    // conv1 quantized, conv2 in float: the share is conv1's part of the FLOPs.
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let xq = b.quantize_input(0.05, 0);
    let w = b.weight_dq(&[4, 3, 3, 3], 1, Some(0), 0);
    let c1 = b.op("Conv", &[xq, w], "conv1");
    let w2 = b.float_weight(&[4, 4, 3, 3]);
    let c2 = b.op("Conv", &[c1, w2], "conv2");
    let model = b.finish(&[c2]);
    let r = lint_model(&model, TRT);
    let (f1, f2) = (2 * 4 * 36 * 27u64, 2 * 4 * 16 * 36u64);
    assert_eq!(r.compute.total_flops, f1 + f2);
    assert_eq!(r.compute.int8_flops, f1);
    assert_eq!(r.compute.int8_share, ((f1 as f64 / (f1 + f2) as f64) * 10_000.0).round() / 10_000.0);
}

/// x[1,3,8,8] → com.microsoft.FusedConv(activation) → y, in `dtype`.
fn fused_conv(activation: &str, half: bool) -> Model {
    let mut b = QdqBuilder::new(&[1, 3, 8, 8]);
    let mut x = b.x;
    let mut w = b.float_weight(&[4, 3, 3, 3]);
    if half {
        let to = |t: DataType| vec![Attribute::int("to", t.onnx_code() as i64)];
        x = b.node("Cast", &[x], "x16", to(DataType::F16));
        w = b.node("Cast", &[w], "w16", to(DataType::F16));
    }
    let y = b.node("FusedConv", &[x, w], "fc", vec![Attribute::string("activation", activation)]);
    let mut m = b.finish(&[y]);
    let g = m.graph.as_mut().unwrap();
    let id = g.node_ids().into_iter().find(|&n| g.node(n).op_type == "FusedConv").unwrap();
    g.node_mut(id).domain = Some("com.microsoft".into());
    m.opset_import.push(kiln_compiler::ir::OpsetImport { domain: Some("com.microsoft".into()), version: Some(1) });
    kiln_compiler::shape::infer_model(&mut m);
    m
}

#[test]
fn cuda_fused_conv_takes_relu_only_and_fp32_only() {
    twin(CUDA, "cuda-fused-conv", Severity::Error, &fused_conv("HardSigmoid", false), &fused_conv("Relu", false));
    let half = lint_model(&fused_conv("Relu", true), CUDA);
    assert!(half.rule("cuda-fused-conv").all(|f| f.severity == Severity::Warning), "{half:#?}");
    assert_eq!(half.rule("cuda-fused-conv").count(), 1);
    // ORT CPU runs every activation.
    assert_eq!(lint_model(&fused_conv("HardSigmoid", false), CPU).rule("cuda-fused-conv").count(), 0);
}
