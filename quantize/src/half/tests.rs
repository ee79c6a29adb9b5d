//! Conversion of tiny graphs, run in ONNX Runtime before and after. Every positive test has a
//! negative twin.

use kiln_calibration::data::{Synthetic, SyntheticSpec, model_inputs};
use kiln_calibration::{CollectOptions, Ranges, collect};
use kiln_compiler::ir::{AttrLookup, AttrValue, Attribute, Graph, Model, NodeSpec, ValueId};
use kiln_compiler::runtime::OrtExecutor;
use kiln_compiler::verify::check_model;
use kiln_compiler::{DataType, Tensor};
use kiln_passes::testing::{
    B, Value, abs_tol, compare_outputs, count_op, model, require_ort, run, seeded_inputs, tensor_ty,
};

use super::*;

fn f16_config() -> HalfConfig {
    HalfConfig::new(HalfKind::F16)
}

/// Converts a copy, checks it is valid, loads and runs in ORT on seeded inputs, and compares
/// with the FP32 model within `tol`.
pub(super) fn convert_and_run(
    m: &Model,
    config: &HalfConfig,
    ranges: Option<&Ranges>,
    tol: f64,
) -> (Model, HalfReport) {
    require_ort().unwrap();
    let mut half = m.clone();
    let report = convert(&mut half, config, ranges).unwrap();
    check_model(&half).unwrap_or_else(|e| panic!("invalid after conversion: {e}"));
    let inputs = seeded_inputs(m, 7, 2).unwrap();
    let want = run(m, &inputs).unwrap();
    let got = run(&half, &inputs).unwrap_or_else(|e| panic!("ORT rejects the converted model: {e}"));
    compare_outputs(&to_f32(&got), &want, abs_tol(tol)).unwrap();
    assert_eq!(cast_pairs(&half), 0, "cancelling cast pairs left behind");
    (half, report)
}

fn to_f32(outs: &[(String, Value)]) -> Vec<(String, Value)> {
    outs.iter()
        .map(|(n, v)| match v {
            Value::Tensor(t) if matches!(t.dtype(), DataType::F16 | DataType::BF16) => {
                let x: Vec<f32> = t.to_f64_vec().unwrap().into_iter().map(|v| v as f32).collect();
                (n.clone(), Value::Tensor(Tensor::from_slice(t.dims().to_vec(), &x).unwrap()))
            }
            other => (n.clone(), other.clone()),
        })
        .collect()
}

/// Cast → Cast chains between float types that return to where they started.
fn cast_pairs(m: &Model) -> usize {
    let mut n = 0;
    m.graph.as_ref().unwrap().visit_graphs(&mut |g| {
        for (_, node) in g.nodes() {
            if !node.is_onnx("Cast") {
                continue;
            }
            let Some(p) = node.input(0).and_then(|v| g.value(v).producer()) else { continue };
            let prev = g.node(p);
            let src = prev.input(0).and_then(|v| g.tensor_type(v).and_then(|t| t.dtype()));
            let to = node.attr_int("to").and_then(|c| DataType::from_onnx(c as i32));
            let mid = prev.attr_int("to").and_then(|c| DataType::from_onnx(c as i32));
            if prev.is_onnx("Cast")
                && src == to
                && src.is_some_and(|d| d.is_float())
                && mid.is_some_and(|d| d.is_float())
            {
                n += 1;
            }
        }
    });
    n
}

pub(super) fn elem_of(m: &Model, name: &str) -> Option<DataType> {
    let g = m.graph.as_ref()?;
    let v = g.find_value(name)?;
    match g.value(v).initializer() {
        Some(t) => Some(t.dtype()),
        None => g.tensor_type(v)?.dtype(),
    }
}

pub(super) fn decision<'a>(r: &'a HalfReport, node: &str) -> &'a str {
    r.decisions.get(node).map(String::as_str).unwrap_or("none")
}

fn resize_model(opset: i64) -> Model {
    let mut b = B::new(1);
    let x = b.input("x", &[1, 2, 4, 4]);
    let r = b.op("Relu", &[x], vec![]);
    let scales = b.konst("scales", Tensor::from_slice(vec![4], &[1.0f32, 1.0, 2.0, 2.0]).unwrap());
    let y = if opset >= 11 {
        let roi = b.konst("roi", Tensor::from_slice(vec![0], &[] as &[f32]).unwrap());
        b.op("Resize", &[r, roi, scales], vec![])
    } else {
        b.op("Resize", &[r, scales], vec![])
    };
    let z = b.op("Sigmoid", &[y], vec![]);
    b.declare(z, &[1, 2, 8, 8]);
    b.output(z);
    b.model(opset)
}

#[test]
fn resize_converts_its_data_but_scales_stay_f32() {
    let (half, r) = convert_and_run(&resize_model(13), &f16_config(), None, 2e-3);
    assert_eq!(decision(&r, "Resize_2"), "fp16");
    assert_eq!(elem_of(&half, "scales"), Some(DataType::F32));
    assert_eq!(elem_of(&half, "Resize_2_out"), Some(DataType::F16));
    // One cast in, one out: Relu, Resize and Sigmoid all run in fp16.
    assert_eq!(count_op(&half, "Cast"), 2);
}

#[test]
fn resize_at_opset_10_stays_f32_under_bf16_because_its_constraints_forbid_it() {
    let mut m = resize_model(10);
    let r = convert(&mut m, &HalfConfig::new(HalfKind::Bf16), None).unwrap();
    assert!(decision(&r, "Resize_2").starts_with("fp32 (Resize (opset 10) allows no bf16"), "{:?}", r.decisions);
    assert_eq!(elem_of(&m, "Resize_2_out"), Some(DataType::F32));
}

/// The CUDA provider reads Resize's roi as FP32: with its table the data goes FP16 and the roi
/// stays; without it (ORT CPU) the roi converts too. Both run on ORT CPU alike.
#[test]
fn resize_for_cuda_keeps_its_roi_f32_and_its_data_f16() {
    let cuda = HalfConfig { kernels: Some(KernelTable::ort_cuda_f16()), ..f16_config() };
    let mut b = B::new(1);
    let x = b.input("x", &[1, 2, 4, 4]);
    let r = b.op("Relu", &[x], vec![]);
    // A graph input, as in the conformance cases that failed on the GPU (tf_crop_and_resize).
    let roi = b.input("roi", &[8]);
    let scales = b.konst("scales", Tensor::from_slice(vec![4], &[1.0f32, 1.0, 2.0, 2.0]).unwrap());
    let y = b.op("Resize", &[r, roi, scales], vec![]);
    let z = b.op("Sigmoid", &[y], vec![]);
    b.declare(z, &[1, 2, 8, 8]);
    b.output(z);
    let m = b.model(13);
    let (half, r) = convert_and_run(&m, &cuda, None, 2e-3);
    assert_eq!(decision(&r, "Resize_2"), "fp16");
    assert_eq!(elem_of(&half, "Resize_2_out"), Some(DataType::F16));
    assert_eq!(roi_dtype(&half), Some(DataType::F32));
    let (cpu, rc) = convert_and_run(&m, &f16_config(), None, 2e-3);
    assert_eq!(roi_dtype(&cpu), Some(DataType::F16), "{:?}", rc.decisions);
}

/// The element type of the value the Resize reads as its roi.
fn roi_dtype(m: &Model) -> Option<DataType> {
    let g = m.graph.as_ref()?;
    let (_, n) = g.nodes().find(|(_, n)| n.op_type == "Resize")?;
    g.tensor_type(n.inputs()[1]?)?.dtype()
}

/// Clip below opset 12 has no FP16 CUDA kernel: it stays FP32 between casts for CUDA and
/// converts for ORT CPU (which casts around it itself).
#[test]
fn clip_11_stays_f32_for_cuda_only() {
    let cuda = HalfConfig { kernels: Some(KernelTable::ort_cuda_f16()), ..f16_config() };
    let model = |opset: i64| {
        let mut b = B::new(1);
        let x = b.input("x", &[2, 4]);
        let r = b.op("Relu", &[x], vec![]);
        let lo = b.konst("lo", Tensor::scalar(0.0f32));
        let hi = b.konst("hi", Tensor::scalar(6.0f32));
        let c = b.op("Clip", &[r, lo, hi], vec![]);
        let t = b.op("Sigmoid", &[c], vec![]);
        b.declare(t, &[2, 4]);
        b.output(t);
        b.model(opset)
    };
    let (_, r) = convert_and_run(&model(11), &cuda, None, 2e-3);
    assert!(decision(&r, "Clip_2").contains("no f16 kernel"), "{:?}", r.decisions);
    assert_eq!(decision(&r, "Relu_1"), "fp16");
    let (_, r) = convert_and_run(&model(12), &cuda, None, 2e-3);
    assert_eq!(decision(&r, "Clip_2"), "fp16");
    let (_, r) = convert_and_run(&model(11), &f16_config(), None, 2e-3);
    assert_eq!(decision(&r, "Clip_2"), "fp16");
}

/// x → Relu → Reshape(shape from Shape → Gather → Concat) → Sigmoid.
fn shape_chain(with_float_arith: bool) -> Model {
    let mut b = B::new(2);
    let x = b.input("x", &[2, 3, 4]);
    let r = b.op("Relu", &[x], vec![]);
    let s = b.op("Shape", &[r], vec![]);
    let zero = b.ints(&[0]);
    let n = b.op("Gather", &[s, zero], vec![Attribute::int("axis", 0)]);
    let n = if with_float_arith {
        // The batch size through float arithmetic: stays FP32 (exact integers).
        let f = b.op("Cast", &[n], vec![Attribute::int("to", 1)]);
        let two = b.konst("two", Tensor::from_slice(vec![1], &[1.0f32]).unwrap());
        let m = b.op("Mul", &[f, two], vec![]);
        b.op("Cast", &[m], vec![Attribute::int("to", 7)])
    } else {
        n
    };
    let minus = b.ints(&[-1]);
    let shape = b.op("Concat", &[n, minus], vec![Attribute::int("axis", 0)]);
    let y = b.op("Reshape", &[r, shape], vec![]);
    let z = b.op("Sigmoid", &[y], vec![]);
    b.declare(z, &[2, 12]);
    b.output(z);
    b.model(17)
}

#[test]
fn shape_gather_reshape_chain_stays_int64() {
    let (half, r) = convert_and_run(&shape_chain(false), &f16_config(), None, 2e-3);
    for v in ["Shape_2_out", "Gather_4_out", "Concat_6_out"] {
        assert_eq!(elem_of(&half, v), Some(DataType::I64), "{v}");
    }
    assert_eq!(decision(&r, "Reshape_7"), "fp16");
    assert_eq!(count_op(&half, "Cast"), 2);
}

#[test]
fn float_arithmetic_on_shapes_stays_f32() {
    let (half, r) = convert_and_run(&shape_chain(true), &f16_config(), None, 2e-3);
    assert!(decision(&r, "Mul_6").contains("shape computation"), "{:?}", r.decisions);
    assert_eq!(elem_of(&half, "Mul_6_out"), Some(DataType::F32));
    assert_eq!(decision(&r, "Reshape_10"), "fp16");
}

/// If(cond) over x: then Relu(x)·2, else x·3 (or TopK's values, which the block list keeps FP32).
fn if_model(else_blocked: bool) -> Model {
    let mut g = Graph::new();
    g.add_input("x", Some(tensor_ty(DataType::F32, &[4])));
    let c = g.add_input("c", Some(tensor_ty(DataType::Bool, &[])));
    let branch = |name: &str, op: &str, k: f32| {
        let mut b = B::new(3);
        let xo = b.g.add_outer("x");
        let kk = b.konst(&format!("{name}_k"), Tensor::from_slice(vec![1], &[k]).unwrap());
        let y = if op == "TopK" {
            let four = b.ints(&[4]);
            let id = b.g.add_node(
                NodeSpec::new("TopK")
                    .name(format!("{name}_topk"))
                    .inputs([xo, four])
                    .outputs([format!("{name}_v"), format!("{name}_i")]),
            );
            b.g.node(id).output(0).unwrap()
        } else {
            let r = b.op(op, &[xo], vec![]);
            b.op("Mul", &[r, kk], vec![])
        };
        b.g.value_mut(y).ty = Some(tensor_ty(DataType::F32, &[4]));
        b.g.push_output(y);
        b.g.name = Some(name.into());
        b.g
    };
    let then_g = branch("then", "Relu", 2.0);
    let else_g = if else_blocked { branch("else", "TopK", 3.0) } else { branch("else", "Neg", 3.0) };
    let id = g.add_node(
        NodeSpec::new("If")
            .name("if")
            .inputs([c])
            .outputs(["y"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(then_g))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(else_g)))),
    );
    let y = g.node(id).output(0).unwrap();
    let s = g.add_node(NodeSpec::new("Sigmoid").name("post").inputs([y]).outputs(["z"]));
    let z = g.node(s).output(0).unwrap();
    kiln_passes::testing::output(&mut g, z, tensor_ty(DataType::F32, &[4]));
    model(g, 17)
}

fn run_both_branches(m: &Model, half: &Model) {
    for cond in [true, false] {
        let x = Tensor::from_slice(vec![4], &[-1.5f32, 0.25, 2.0, 3.5]).unwrap();
        let inputs = vec![("x".to_string(), Value::Tensor(x)), ("c".to_string(), Value::Tensor(Tensor::scalar(cond)))];
        let want = run(m, &inputs).unwrap();
        let got = run(half, &inputs).unwrap();
        compare_outputs(&got, &want, abs_tol(2e-3)).unwrap();
    }
}

fn branch_output_elem(m: &Model, attr: &str) -> Option<DataType> {
    let g = m.graph.as_ref()?;
    let (_, n) = g.nodes().find(|(_, n)| n.is_onnx("If"))?;
    let AttrValue::Graph(b) = n.attr(attr)? else { return None };
    b.tensor_type(b.outputs()[0])?.dtype()
}

#[test]
fn if_with_float_outputs_is_converted_in_both_branches() {
    require_ort().unwrap();
    let m = if_model(false);
    let mut half = m.clone();
    let r = convert(&mut half, &f16_config(), None).unwrap();
    check_model(&half).unwrap();
    assert_eq!(decision(&r, "if"), "fp16");
    assert_eq!(elem_of(&half, "y"), Some(DataType::F16));
    assert_eq!(branch_output_elem(&half, "then_branch"), Some(DataType::F16));
    assert_eq!(branch_output_elem(&half, "else_branch"), Some(DataType::F16));
    assert_eq!(decision(&r, "if.then_branch/Mul_2"), "fp16", "{:?}", r.decisions);
    run_both_branches(&m, &half);
}

#[test]
fn if_whose_branches_disagree_keeps_f32_outputs_in_both() {
    require_ort().unwrap();
    let m = if_model(true);
    let mut half = m.clone();
    let r = convert(&mut half, &f16_config(), None).unwrap();
    check_model(&half).unwrap();
    assert!(decision(&r, "if").starts_with("fp32"), "{:?}", r.decisions);
    assert_eq!(branch_output_elem(&half, "then_branch"), Some(DataType::F32));
    assert_eq!(branch_output_elem(&half, "else_branch"), Some(DataType::F32));
    assert!(decision(&r, "if.else_branch/else_topk").contains("block list"));
    run_both_branches(&m, &half);
}

/// ids (i64) → Cast(to float) → Add(x) → y, or → CumSum (block-listed) when `blocked`.
fn cast_model(blocked: bool) -> Model {
    let mut b = B::new(4);
    let x = b.input("x", &[2, 3]);
    let ids = b.input_typed("ids", DataType::I64, &[2, 3]);
    let f = b.op("Cast", &[ids], vec![Attribute::int("to", 1)]);
    let y = if blocked {
        let axis = b.konst("axis", Tensor::scalar(1i64));
        let c = b.op("CumSum", &[f, axis], vec![]);
        b.op("Add", &[c, x], vec![])
    } else {
        b.op("Add", &[f, x], vec![])
    };
    b.declare(y, &[2, 3]);
    b.output(y);
    b.model(17)
}

#[test]
fn a_cast_feeding_fp16_has_its_target_updated() {
    let (half, r) = convert_and_run(&cast_model(false), &f16_config(), None, 1e-2);
    assert_eq!(decision(&r, "Cast_1"), "fp16");
    let g = half.graph.as_ref().unwrap();
    let (_, cast) = g.nodes().find(|(_, n)| n.name.as_deref() == Some("Cast_1")).unwrap();
    assert_eq!(cast.attr_int("to"), Some(i64::from(DataType::F16.onnx_code())));
    // x in, y out: the only other casts.
    assert_eq!(count_op(&half, "Cast"), 3);
}

#[test]
fn a_cast_feeding_a_blocked_op_keeps_its_target() {
    let (half, r) = convert_and_run(&cast_model(true), &f16_config(), None, 1e-2);
    assert!(decision(&r, "Cast_1").starts_with("fp32"), "{:?}", r.decisions);
    let g = half.graph.as_ref().unwrap();
    let (_, cast) = g.nodes().find(|(_, n)| n.name.as_deref() == Some("Cast_1")).unwrap();
    assert_eq!(cast.attr_int("to"), Some(1));
    assert!(decision(&r, "CumSum_2").contains("block list"));
}

fn conv_model() -> Model {
    let mut b = B::new(5);
    let x = b.input("x", &[1, 3, 8, 8]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let bias = b.weight("bias", &[4], -0.1, 0.1);
    let c = b.op("Conv", &[x, w, bias], vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let r = b.op("Relu", &[c], vec![]);
    let s = b.op("Add", &[r, c], vec![]);
    b.declare(s, &[1, 4, 8, 8]);
    b.output(s);
    b.model(17)
}

#[test]
fn keep_io_types_puts_casts_at_the_boundary_only() {
    let (half, r) = convert_and_run(&conv_model(), &f16_config(), None, 5e-3);
    assert_eq!(count_op(&half, "Cast"), 2);
    assert_eq!(elem_of(&half, "x"), Some(DataType::F32));
    assert_eq!(elem_of(&half, "Add_3_out"), Some(DataType::F32));
    assert_eq!(elem_of(&half, "w"), Some(DataType::F16));
    assert_eq!((r.nodes_half, r.initializers_converted), (3, 2));
}

#[test]
fn without_keep_io_types_the_interface_is_fp16_and_casts_are_gone() {
    require_ort().unwrap();
    let m = conv_model();
    let mut half = m.clone();
    let config = HalfConfig { keep_io_types: false, ..f16_config() };
    let r = convert(&mut half, &config, None).unwrap();
    check_model(&half).unwrap();
    assert_eq!(count_op(&half, "Cast"), 0);
    assert_eq!(r.casts_inserted, 0);
    assert_eq!(elem_of(&half, "x"), Some(DataType::F16));
    assert_eq!(elem_of(&half, "Add_3_out"), Some(DataType::F16));
    let inputs: Vec<(String, Value)> = seeded_inputs(&half, 7, 1).unwrap();
    let out = run(&half, &inputs).unwrap();
    assert_eq!(out[0].1.as_tensor().unwrap().dtype(), DataType::F16);
}

/// x → Relu → Cast(f16) → Cast(f32) → Sigmoid, or with an integer round trip when `int`.
fn cast_pair_model(int: bool) -> Model {
    let mut b = B::new(6);
    let x = b.input("x", &[2, 3]);
    let r = b.op("Relu", &[x], vec![]);
    let mid = if int { 6 } else { 10 };
    let a = b.op("Cast", &[r], vec![Attribute::int("to", mid)]);
    let c = b.op("Cast", &[a], vec![Attribute::int("to", 1)]);
    let y = b.op("Sigmoid", &[c], vec![]);
    b.declare(y, &[2, 3]);
    b.output(y);
    b.model(17)
}

#[test]
fn cancelling_cast_pairs_are_folded() {
    let (half, r) = convert_and_run(&cast_pair_model(false), &f16_config(), None, 2e-3);
    assert!(r.casts_folded >= 1, "{r:?}");
    assert_eq!(cast_pairs(&half), 0);
}

#[test]
fn an_integer_round_trip_is_not_a_cancelling_pair() {
    let (half, _) = convert_and_run(&cast_pair_model(true), &f16_config(), None, 2e-3);
    let g = half.graph.as_ref().unwrap();
    assert!(g.nodes().any(|(_, n)| n.is_onnx("Cast") && n.attr_int("to") == Some(6)), "truncation removed");
}

/// y = ((x · 1000) · 1000) / 1e6 + x: the middle tensor leaves FP16's range.
fn huge_model() -> Model {
    let mut b = B::new(8);
    let x = b.input("x", &[4, 8]);
    let k = b.konst("k", Tensor::from_slice(vec![1], &[1000.0f32]).unwrap());
    let d = b.konst("d", Tensor::from_slice(vec![1], &[1.0e6f32]).unwrap());
    let a = b.op("Mul", &[x, k], vec![]);
    let m = b.op("Mul", &[a, k], vec![]);
    let q = b.op("Div", &[m, d], vec![]);
    let y = b.op("Add", &[q, x], vec![]);
    b.declare(y, &[4, 8]);
    b.output(y);
    b.model(17)
}

fn ranges_of(m: &Model) -> Ranges {
    let inputs = model_inputs(m).unwrap();
    let source = Synthetic::new(&inputs, &SyntheticSpec { samples: 4, ..SyntheticSpec::default() }).unwrap();
    collect(&OrtExecutor::new(), m, None, &source, &CollectOptions::default()).unwrap()
}

#[test]
fn range_aware_conversion_keeps_a_huge_tensor_fp32() {
    require_ort().unwrap();
    let m = huge_model();
    let ranges = ranges_of(&m);
    let (half, r) = convert_and_run(&m, &f16_config(), Some(&ranges), 5e-3);
    assert!(r.range_checked);
    assert!(decision(&r, "Mul_2").contains("beyond fp16's safe range"), "{:?}", r.decisions);
    assert!(decision(&r, "Div_3").contains("beyond fp16's safe range"));
    assert_eq!(decision(&r, "Add_4"), "fp16");
    assert_eq!(elem_of(&half, "Mul_2_out"), Some(DataType::F32));
}

#[test]
fn without_ranges_the_huge_tensor_is_stored_in_fp16() {
    // ONNX Runtime's CPU provider computes these FP16 nodes in FP32 (it casts around them and
    // drops the casts between them), so the overflow shows on GPUs, not here: check the plan.
    let mut half = huge_model();
    let r = convert(&mut half, &f16_config(), None).unwrap();
    assert!(!r.range_checked);
    assert_eq!(decision(&r, "Mul_2"), "fp16");
    assert_eq!(elem_of(&half, "Mul_2_out"), Some(DataType::F16));
}

#[test]
fn saturating_initializers_are_reported_and_their_nodes_kept_fp32() {
    let mut b = B::new(9);
    let x = b.input("x", &[3]);
    let big = b.konst("big", Tensor::from_slice(vec![3], &[1.0e5f32, -2.0, 3.0]).unwrap());
    let y = b.op("Mul", &[x, big], vec![]);
    let z = b.op("Sigmoid", &[y], vec![]);
    b.declare(z, &[3]);
    b.output(z);
    let (half, r) = convert_and_run(&b.model(17), &f16_config(), None, 2e-3);
    assert_eq!(r.saturating_initializers, vec![("big".to_string(), 1.0e5)]);
    assert!(decision(&r, "Mul_1").contains("initializer 'big'"));
    assert_eq!(elem_of(&half, "big"), Some(DataType::F32));
    // Its twin: a weight within range converts.
    let (_, r) = convert_and_run(&conv_model(), &f16_config(), None, 5e-3);
    assert!(r.saturating_initializers.is_empty());
}

fn layer_norm_model() -> Model {
    let mut b = B::new(10);
    let x = b.input("x", &[2, 8]);
    let s = b.weight("scale", &[8], 0.5, 1.5);
    let bias = b.weight("bias", &[8], -0.1, 0.1);
    let shape = b.ints(&[2, 8]);
    let r = b.op("Reshape", &[x, shape], vec![]);
    let n = b.op("LayerNormalization", &[r, s, bias], vec![Attribute::int("axis", -1)]);
    let y = b.op("Relu", &[n], vec![]);
    b.declare(y, &[2, 8]);
    b.output(y);
    b.model(17)
}

#[test]
fn bf16_for_ort_cpu_keeps_ops_without_kernels_fp32_and_loads() {
    let config = HalfConfig { kernels: Some(KernelTable::ort_cpu()), ..HalfConfig::new(HalfKind::Bf16) };
    let (half, r) = convert_and_run(&layer_norm_model(), &config, None, 3e-2);
    assert_eq!(decision(&r, "LayerNormalization_3"), "bf16");
    assert!(decision(&r, "Relu_4").contains("no bf16 kernel"), "{:?}", r.decisions);
    assert_eq!(elem_of(&half, "scale"), Some(DataType::BF16));
}

#[test]
fn bf16_without_the_kernel_table_is_rejected_by_ort_cpu() {
    require_ort().unwrap();
    let m = layer_norm_model();
    let mut half = m.clone();
    convert(&mut half, &HalfConfig::new(HalfKind::Bf16), None).unwrap();
    let inputs = seeded_inputs(&m, 7, 2).unwrap();
    let err = run(&half, &inputs).unwrap_err().to_string();
    assert!(err.contains("Relu") || err.contains("implementation"), "{err}");
}

#[test]
fn excluded_nodes_stay_fp32_and_unknown_ops_are_cast_around() {
    let mut b = B::new(11);
    let x = b.input("x", &[2, 4]);
    let r = b.op("Relu", &[x], vec![]);
    let t = b.op("Tanh", &[r], vec![]);
    b.declare(t, &[2, 4]);
    b.output(t);
    let m = b.model(17);
    let config = HalfConfig { exclude: vec!["Tanh_2".into()], ..f16_config() };
    let (half, r) = convert_and_run(&m, &config, None, 2e-3);
    assert_eq!(decision(&r, "Tanh_2"), "fp32 (excluded)");
    assert_eq!(decision(&r, "Relu_1"), "fp16");
    assert_eq!(count_op(&half, "Cast"), 2);
    // An op the table does not know stays as it is.
    let mut g = Graph::new();
    let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[2])));
    let id = g.add_node(NodeSpec::new("Mystery").domain("custom.ops").inputs([x]).outputs(["y"]));
    let y: ValueId = g.node(id).output(0).unwrap();
    kiln_passes::testing::output(&mut g, y, tensor_ty(DataType::F32, &[2]));
    let mut m = model(g, 17);
    let r = convert(&mut m, &f16_config(), None).unwrap();
    assert!(
        decision(&r, "Mystery n0").contains("no type constraints known for custom.ops.Mystery"),
        "{:?}",
        r.decisions
    );
    assert_eq!(count_op(&m, "Cast"), 0);
}

#[test]
fn conversion_is_deterministic() {
    let mut a = if_model(false);
    let mut b = if_model(false);
    let ra = convert(&mut a, &f16_config(), None).unwrap();
    let rb = convert(&mut b, &f16_config(), None).unwrap();
    assert_eq!(kiln_compiler::onnx::encode_model(&a), kiln_compiler::onnx::encode_model(&b));
    assert_eq!(ra.decisions, rb.decisions);
}
