//! Static and dynamic INT8 on tiny graphs: run in ONNX Runtime before and after on the
//! calibration inputs (so every value lies in the calibrated ranges) and compare within a few
//! quantization steps of the output; assert which Q/DQ exist, their types, axes and the int32
//! biases. Every positive case has a negative twin.

use std::sync::Arc;

use kiln_calibration::data::{Synthetic, SyntheticSpec, model_inputs};
use kiln_calibration::{CollectOptions, collect};
use kiln_compiler::ir::{AttrLookup, AttrValue, Attribute, Graph, Model, NodeSpec};
use kiln_compiler::runtime::{OrtExecutor, Value};
use kiln_compiler::{DataType, Tensor};
use kiln_passes::testing::{B, Rng, count_in, require_ort, run};

use crate::dynamic::{DynamicConfig, quantize_dynamic};
use crate::int8::{StaticOutcome, quantize_with_ranges};
use crate::plan::Int8Config;

const SAMPLES: usize = 8;

fn spec() -> SyntheticSpec {
    SyntheticSpec { samples: SAMPLES, seed: 5, ..SyntheticSpec::default() }
}

/// Calibrates on synthetic samples and quantizes; returns the quantized model and outcome.
fn quantize(model: &Model, config: &Int8Config) -> (Model, StaticOutcome) {
    require_ort().unwrap();
    let src = Synthetic::new(&model_inputs(model).unwrap(), &spec()).unwrap();
    let ranges = collect(&OrtExecutor::new(), model, None, &src, &CollectOptions::default()).unwrap();
    let mut q = model.clone();
    let outcome = quantize_with_ranges(&mut q, &ranges, config).unwrap();
    kiln_compiler::verify::check_model(&q).unwrap();
    (q, outcome)
}

/// Largest |after - before| and the largest output magnitude, over the calibration samples.
fn max_error(before: &Model, after: &Model) -> (f64, f64) {
    let src = Synthetic::new(&model_inputs(before).unwrap(), &spec()).unwrap();
    let (mut err, mut mag) = (0.0f64, 0.0f64);
    for i in 0..SAMPLES {
        let s = kiln_calibration::SampleSource::read(&src, i).unwrap();
        let feed: Vec<(String, Value)> = s.inputs.into_iter().map(|(n, t)| (n, Value::Tensor(t))).collect();
        let want = run(before, &feed).unwrap();
        let got = run(after, &feed).unwrap();
        for ((_, w), (_, g)) in want.iter().zip(&got) {
            let w = w.as_tensor().unwrap().to_f64_vec().unwrap();
            let g = g.as_tensor().unwrap().to_f64_vec().unwrap();
            for (a, b) in w.iter().zip(&g) {
                err = err.max((a - b).abs());
                mag = mag.max(a.abs());
            }
        }
    }
    (err, mag)
}

/// Asserts the outputs agree within `steps` quantization steps of an 8-bit grid over the
/// output's magnitude, and that quantization did change something (not a no-op).
fn assert_close(before: &Model, after: &Model, steps: f64) {
    let (err, mag) = max_error(before, after);
    let step = 2.0 * mag / 255.0;
    assert!(err <= steps * step, "max error {err} above {steps} steps of {step}");
    assert!(err > 0.0, "quantization left the outputs bit-identical: nothing was quantized");
}

/// ORT CPU's scheme without its small-Conv floor: the Convs of these graphs are tiny.
fn cpu() -> Int8Config {
    Int8Config { min_conv_weights: 0, ..Int8Config::ort_cpu() }
}

fn nodes<'a>(g: &'a Graph, op: &str) -> Vec<&'a kiln_compiler::ir::Node> {
    g.nodes().map(|(_, n)| n).filter(|n| n.op_type == op).collect()
}

/// The int8/int32 initializer behind the DQ feeding input `i` of the first `op` node.
fn dq_source(g: &Graph, op: &str, i: usize) -> Option<(DataType, Vec<usize>, Option<i64>)> {
    let n = nodes(g, op)[0];
    let dq = g.node(g.value(n.input(i)?).producer()?);
    if dq.op_type != "DequantizeLinear" {
        return None;
    }
    let t = g.value(dq.input(0)?).initializer()?;
    Some((t.dtype(), t.dims().to_vec(), dq.attr_int("axis")))
}

fn conv_relu(exclude: &[&str]) -> (Model, Int8Config) {
    let mut config = cpu();
    config.exclude = exclude.iter().map(|s| s.to_string()).collect();
    (conv_relu_conv(1), config)
}

/// x → Conv(w, bias) → Relu → Conv(w2) → y, weights drawn with `seed`.
fn conv_relu_conv(seed: u64) -> Model {
    let mut b = B::new(seed);
    let x = b.input("x", &[1, 3, 8, 8]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let bias = b.weight("bias", &[4], -0.2, 0.2);
    let c = b.op("Conv", &[x, w, bias], vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let r = b.op("Relu", &[c], vec![]);
    let w2 = b.weight("w2", &[2, 4, 1, 1], -0.5, 0.5);
    let y = b.op("Conv", &[r, w2], vec![]);
    b.output(y);
    b.model(13)
}

#[test]
fn conv_weights_per_channel_bias_int32_relu_absorbed() {
    let (m, config) = conv_relu(&[]);
    let (q, out) = quantize(&m, &config);
    let g = q.graph.as_ref().unwrap();
    assert_eq!(dq_source(g, "Conv", 1), Some((DataType::I8, vec![4, 3, 3, 3], Some(0))), "weight S8 per channel");
    assert_eq!(dq_source(g, "Conv", 2), Some((DataType::I32, vec![4], Some(0))), "bias int32 per channel");
    assert!(nodes(g, "Relu").is_empty(), "the ReLU is absorbed into the Conv's quantizer");
    assert_eq!(out.qdq.absorbed, 1);
    // The activation feeding the second Conv is U8 (x86) with zero point = qmin: the clamp.
    let q_nodes = nodes(g, "QuantizeLinear");
    assert!(q_nodes.len() >= 2, "input and first Conv output quantized");
    assert!(g.initializers().iter().all(|&v| g.value(v).name != "w"), "the float weight is gone");
    assert_eq!(out.quantized_ops.get("Conv"), Some(&2));
    assert_close(&m, &q, 3.0);
}

/// x → Conv → Relu → r, where r is a graph output and also feeds Conv2 → y.
fn conv_relu_read_by_name() -> Model {
    let mut b = B::new(3);
    let x = b.input("x", &[1, 3, 8, 8]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let c = b.op("Conv", &[x, w], vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let r = b.op("Relu", &[c], vec![]);
    let w2 = b.weight("w2", &[2, 4, 1, 1], -0.5, 0.5);
    let y = b.op("Conv", &[r, w2], vec![]);
    b.output(r);
    b.output(y);
    b.model(13)
}

#[test]
fn relu_read_as_a_graph_output_is_absorbed_and_keeps_its_name() {
    let m = conv_relu_read_by_name();
    let relu_out = m.graph.as_ref().unwrap().value(m.graph.as_ref().unwrap().outputs()[0]).name.clone();
    let (q, out) = quantize(&m, &cpu());
    let g = q.graph.as_ref().unwrap();
    assert!(nodes(g, "Relu").is_empty());
    assert_eq!(out.qdq.absorbed, 1);
    // The output keeps its name, written by a DQ; the Conv's only reader is its Q (fusable).
    let named = g.outputs()[0];
    assert_eq!(g.value(named).name, relu_out);
    assert_eq!(g.node(g.value(named).producer().unwrap()).op_type, "DequantizeLinear");
    let conv = g.nodes().map(|(id, _)| id).find(|&id| g.node(id).op_type == "Conv").unwrap();
    let conv_out = g.value(g.node(conv).output(0).unwrap());
    let readers: Vec<&str> = conv_out.uses().iter().map(|u| g.node(u.node).op_type.as_str()).collect();
    assert_eq!(readers, ["QuantizeLinear"]);
    assert_close(&m, &q, 3.0);

    // Twin: TensorRT quantizes inputs only and absorbs nothing; the Relu stays.
    let (q, out) = quantize(&m, &Int8Config::tensorrt());
    assert_eq!(nodes(q.graph.as_ref().unwrap(), "Relu").len(), 1);
    assert_eq!(out.qdq.absorbed, 0);
}

#[test]
fn convs_below_the_cpu_floor_stay_float_and_say_why() {
    let m = conv_relu_conv(1);
    let (q, out) = quantize(&m, &Int8Config::ort_cpu());
    let g = q.graph.as_ref().unwrap();
    assert!(!out.quantized_ops.contains_key("Conv"), "{:?}", out.decisions);
    assert!(g.initializers().iter().any(|&v| g.value(v).name == "w"), "the float weight stays");
    let why = &out.decisions["Conv_1"];
    assert!(why.starts_with("fp32 (108 weights"), "{why}");
    // Twin: at the floor's size the same Conv is int8.
    let mut b = B::new(2);
    let x = b.input("x", &[1, 16, 6, 6]);
    let w = b.weight("w", &[32, 16, 3, 3], -0.2, 0.2);
    let y = b.op("Conv", &[x, w], vec![]);
    b.output(y);
    let big = b.model(13);
    assert!(32 * 16 * 9 >= Int8Config::ort_cpu().min_conv_weights);
    let (q, out) = quantize(&big, &Int8Config::ort_cpu());
    assert_eq!(out.quantized_ops.get("Conv"), Some(&1), "{:?}", out.decisions);
    assert_close(&big, &q, 4.0);
}

#[test]
fn excluded_conv_stays_float() {
    let (m, config) = conv_relu(&["Conv_1"]);
    let (q, out) = quantize(&m, &config);
    let g = q.graph.as_ref().unwrap();
    let first = g.nodes().map(|(_, n)| n).find(|n| n.name.as_deref() == Some("Conv_1")).unwrap();
    assert!(g.value(first.input(1).unwrap()).initializer().is_some_and(|t| t.dtype() == DataType::F32));
    assert_eq!(out.decisions["Conv_1"], "fp32 (excluded)");
    assert_eq!(out.quantized_ops.get("Conv"), Some(&1), "only the second Conv");
}

/// x[2,4] → MatMul(W[4,6]) → Add(const) → Reshape([3,4]) → MatMul(W2[4,5]) → y
fn matmul_chain(tail: &str) -> Model {
    let mut b = B::new(2);
    let x = b.input("x", &[2, 4]);
    let w = b.weight("w", &[4, 6], -1.0, 1.0);
    let m1 = b.op("MatMul", &[x, w], vec![]);
    let c = b.weight("c", &[6], -0.5, 0.5);
    let a = b.op("Add", &[m1, c], vec![]);
    let shape = b.ints(&[3, 4]);
    let r = b.op("Reshape", &[a, shape], vec![]);
    let w2 = b.weight("w2", &[4, 5], -1.0, 1.0);
    let y = b.op(tail, &[r, w2], vec![]);
    b.output(y);
    b.model(17)
}

#[test]
fn matmul_add_reshape_share_parameters() {
    let m = matmul_chain("MatMul");
    let (q, out) = quantize(&m, &cpu());
    let g = q.graph.as_ref().unwrap();
    assert_eq!(dq_source(g, "MatMul", 1), Some((DataType::I8, vec![4, 6], Some(1))), "per output column");
    // Reshape reads a DQ and feeds a Q with the same scale and zero point.
    let reshape = nodes(g, "Reshape")[0];
    let dq = g.node(g.value(reshape.input(0).unwrap()).producer().unwrap());
    let qn = g.node(g.value(reshape.output(0).unwrap()).uses()[0].node);
    assert_eq!((dq.op_type.as_str(), qn.op_type.as_str()), ("DequantizeLinear", "QuantizeLinear"));
    let init = |v| g.value(v).initializer().unwrap().to_f64_vec().unwrap();
    assert_eq!(init(dq.input(1).unwrap()), init(qn.input(1).unwrap()), "same scale");
    assert_eq!(init(dq.input(2).unwrap()), init(qn.input(2).unwrap()), "same zero point");
    // The Add's constant is stored like an activation (same integer type).
    let add = nodes(g, "Add")[0];
    let c_dq = g.node(g.value(add.input(1).unwrap()).producer().unwrap());
    assert_eq!(g.value(c_dq.input(0).unwrap()).initializer().unwrap().dtype(), cpu().activation.dtype());
    // The last MatMul's output is a graph output nobody reads quantized: it stays float.
    let last = nodes(g, "MatMul")[1];
    assert!(g.is_output(last.output(0).unwrap()));
    assert_eq!(out.quantized_ops.get("Reshape"), Some(&1));
    assert_close(&m, &q, 4.0);
}

#[test]
fn reshape_after_an_unhandled_op_stays_float() {
    // Tanh has no handler: the Reshape after it has no quantized input and stays float.
    let mut b = B::new(3);
    let x = b.input("x", &[2, 4]);
    let t = b.op("Tanh", &[x], vec![]);
    let shape = b.ints(&[4, 2]);
    let r = b.op("Reshape", &[t, shape], vec![]);
    b.output(r);
    let (q, out) = quantize(&b.model(17), &cpu());
    let g = q.graph.as_ref().unwrap();
    assert_eq!(count_in(&q, "", "QuantizeLinear") + count_in(&q, "", "DequantizeLinear"), 0);
    assert_eq!(out.decisions["Tanh_1"], "fp32 (no INT8 handler for Tanh)");
    assert_eq!(out.decisions["Reshape_3"], "fp32 (input is not quantized)");
    assert_eq!(nodes(g, "Reshape").len(), 1);
}

#[test]
fn gemm_trans_b_has_weights_on_axis_0_and_an_int32_bias() {
    let mut b = B::new(4);
    let x = b.input("x", &[3, 8]);
    let w = b.weight("w", &[5, 8], -1.0, 1.0);
    let c = b.weight("c", &[5], -1.0, 1.0);
    let y = b.op("Gemm", &[x, w, c], vec![Attribute::int("transB", 1)]);
    let r = b.op("Relu", &[y], vec![]);
    let w2 = b.weight("w2", &[5, 2], -1.0, 1.0);
    let z = b.op("MatMul", &[r, w2], vec![]);
    b.output(z);
    let m = b.model(13);
    let (q, _) = quantize(&m, &cpu());
    let g = q.graph.as_ref().unwrap();
    assert_eq!(dq_source(g, "Gemm", 1), Some((DataType::I8, vec![5, 8], Some(0))));
    assert_eq!(dq_source(g, "Gemm", 2), Some((DataType::I32, vec![5], Some(0))));
    assert_close(&m, &q, 4.0);

    // Negative twin: a Gemm whose C is not a plain bias (beta 0.5) stays float.
    let mut b = B::new(4);
    let x = b.input("x", &[3, 8]);
    let w = b.weight("w", &[5, 8], -1.0, 1.0);
    let c = b.weight("c", &[5], -1.0, 1.0);
    let y = b.op("Gemm", &[x, w, c], vec![Attribute::int("transB", 1), Attribute::float("beta", 0.5)]);
    b.output(y);
    let (q, out) = quantize(&b.model(13), &cpu());
    assert_eq!(count_in(&q, "", "DequantizeLinear"), 0);
    assert!(out.decisions["Gemm_1"].starts_with("fp32 (C is not a 1-D bias"), "{:?}", out.decisions);
}

#[test]
fn concat_and_add_of_two_activations() {
    let mut b = B::new(5);
    let x = b.input("x", &[1, 2, 4, 4]);
    let w1 = b.weight("w1", &[3, 2, 1, 1], -1.0, 1.0);
    let w2 = b.weight("w2", &[3, 2, 1, 1], -1.0, 1.0);
    let c1 = b.op("Conv", &[x, w1], vec![]);
    let c2 = b.op("Conv", &[x, w2], vec![]);
    let a = b.op("Add", &[c1, c2], vec![]);
    let cat = b.op("Concat", &[a, c1], vec![Attribute::int("axis", 1)]);
    let w3 = b.weight("w3", &[2, 6, 1, 1], -1.0, 1.0);
    let y = b.op("Conv", &[cat, w3], vec![]);
    b.output(y);
    let m = b.model(13);
    let (q, out) = quantize(&m, &cpu());
    let g = q.graph.as_ref().unwrap();
    for op in ["Add", "Concat"] {
        let n = nodes(g, op)[0];
        assert!(
            n.inputs().iter().flatten().all(|&v| g.node(g.value(v).producer().unwrap()).op_type == "DequantizeLinear")
        );
        assert_eq!(g.node(g.value(n.output(0).unwrap()).uses()[0].node).op_type, "QuantizeLinear");
        assert_eq!(out.quantized_ops.get(op), Some(&1));
    }
    // c1 has three consumers (Add, Concat): one Q, one DQ per consumer.
    let c1_q = g.nodes().filter(|(_, n)| n.op_type == "QuantizeLinear").count();
    assert_eq!(c1_q, 6, "x, c1, c2, add, concat and the output Conv's Q");
    assert_close(&m, &q, 4.0);
}

#[test]
fn constant_node_weights_become_int8_initializers() {
    let mut b = B::new(6);
    let x = b.input("x", &[2, 4]);
    let t = b.rng.tensor(&[4, 3], -1.0, 1.0);
    let k = b.g.add_node(
        NodeSpec::new("Constant")
            .name("wconst")
            .outputs(["w"])
            .attr(Attribute::new("value", AttrValue::Tensor(Arc::new(t)))),
    );
    let w = b.g.node(k).output(0).unwrap();
    let y = b.op("MatMul", &[x, w], vec![]);
    let r = b.op("Relu", &[y], vec![]);
    let w2 = b.weight("w2", &[3, 2], -1.0, 1.0);
    let z = b.op("MatMul", &[r, w2], vec![]);
    b.output(z);
    let m = b.model(13);
    let (q, _) = quantize(&m, &cpu());
    let g = q.graph.as_ref().unwrap();
    assert!(nodes(g, "Constant").is_empty(), "the float Constant is gone");
    assert_eq!(dq_source(g, "MatMul", 1), Some((DataType::I8, vec![4, 3], Some(1))));
    assert_close(&m, &q, 4.0);
}

/// x → If(cond) { then: MatMul(x, W_then) ; else: MatMul(x, W_else) }, weights as Constant
/// nodes inside the branches.
fn if_model(rng: &mut Rng) -> Model {
    let mut g = Graph::new();
    let f32_ty = |dims: &[usize]| {
        Some(kiln_compiler::ir::Type::tensor(kiln_compiler::ir::TensorType::with_dims(DataType::F32, dims)))
    };
    g.add_input("x", f32_ty(&[2, 4]));
    let cond = g.add_initializer("cond", Arc::new(Tensor::scalar(true)));
    let branch = |name: &str, rng: &mut Rng| {
        let mut b = Graph::new();
        b.name = Some(name.into());
        let xo = b.add_outer("x");
        let t = rng.tensor(&[4, 3], -1.0, 1.0);
        let k = b.add_node(
            NodeSpec::new("Constant")
                .name(format!("{name}_w"))
                .outputs([format!("{name}_w")])
                .attr(Attribute::new("value", AttrValue::Tensor(Arc::new(t)))),
        );
        let w = b.node(k).output(0).unwrap();
        let m = b.add_node(
            NodeSpec::new("MatMul").name(format!("{name}_mm")).inputs([xo, w]).outputs([format!("{name}_y")]),
        );
        let y = b.node(m).output(0).unwrap();
        b.value_mut(y).ty = f32_ty(&[2, 3]);
        b.push_output(y);
        b
    };
    let then_g = branch("then", rng);
    let else_g = branch("else", rng);
    let n = g.add_node(
        NodeSpec::new("If")
            .name("if")
            .inputs([cond])
            .outputs(["y"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(then_g))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(else_g)))),
    );
    let y = g.node(n).output(0).unwrap();
    g.value_mut(y).ty = f32_ty(&[2, 3]);
    g.push_output(y);
    kiln_passes::testing::model(g, 13)
}

#[test]
fn weights_inside_if_bodies_are_weights() {
    let m = if_model(&mut Rng::new(7));
    let (q, out) = quantize(&m, &cpu());
    let g = q.graph.as_ref().unwrap();
    let iff = nodes(g, "If")[0];
    for sub in iff.subgraphs() {
        assert!(nodes(sub, "Constant").is_empty());
        assert_eq!(dq_source(sub, "MatMul", 1), Some((DataType::I8, vec![4, 3], Some(1))), "weight in {:?}", sub.name);
        // The captured activation is quantized inside the branch from its calibrated range.
        let mm = nodes(sub, "MatMul")[0];
        let dq = sub.node(sub.value(mm.input(0).unwrap()).producer().unwrap());
        assert_eq!(dq.op_type, "DequantizeLinear");
    }
    assert_eq!(out.decisions["if/then_mm"], "int8");
    assert_close(&m, &q, 3.0);

    // Negative twin: excluded by op type, nothing inside changes.
    let mut config = cpu();
    config.exclude = vec!["MatMul".into()];
    let (q, out) = quantize(&m, &config);
    assert_eq!(count_in(&q, "", "DequantizeLinear"), 0);
    assert_eq!(out.decisions["if/else_mm"], "fp32 (excluded)");
}

#[test]
fn dynamic_matmul_and_gemm_become_dynamic_quantize_matmul() {
    let m = matmul_chain("Gemm");
    let mut q = m.clone();
    let out = quantize_dynamic(&mut q, &DynamicConfig::default()).unwrap();
    kiln_compiler::verify::check_model(&q).unwrap();
    assert_eq!(count_in(&q, "com.microsoft", "DynamicQuantizeMatMul"), 2);
    assert_eq!(count_in(&q, "", "MatMul") + count_in(&q, "", "Gemm"), 0);
    assert_eq!(out.quantized_ops.get("Gemm"), Some(&1));
    assert_close(&m, &q, 3.0);

    // Negative twin: a MatMul of two activations has no weight and stays.
    let mut b = B::new(8);
    let x = b.input("x", &[2, 4]);
    let z = b.input("z", &[4, 3]);
    let y = b.op("MatMul", &[x, z], vec![]);
    b.output(y);
    let mut q = b.model(13);
    let out = quantize_dynamic(&mut q, &DynamicConfig::default()).unwrap();
    assert_eq!(count_in(&q, "", "MatMul"), 1);
    assert_eq!(out.decisions["MatMul_1"], "fp32 (the weight is not a constant)");
}

#[path = "trt_tests.rs"]
mod trt;

/// x → Conv → Tanh → Exp → Conv → y: the Tanh's output lies between two ops without a
/// handler, so no plan asks for its range.
fn conv_between_unhandled_ops() -> Model {
    let mut b = B::new(4);
    let x = b.input("x", &[1, 3, 6, 6]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let c = b.op("Conv", &[x, w], vec![Attribute::ints("pads", vec![1, 1, 1, 1])]);
    let t = b.op("Tanh", &[c], vec![]);
    let e = b.op("Exp", &[t], vec![]);
    let w2 = b.weight("w2", &[2, 4, 1, 1], -0.5, 0.5);
    let y = b.op("Conv", &[e, w2], vec![]);
    b.output(y);
    b.model(13)
}

#[test]
fn observing_the_handled_tensors_quantizes_as_observing_every_activation() {
    require_ort().unwrap();
    let models = [conv_between_unhandled_ops(), conv_relu_conv(2), matmul_chain("MatMul"), if_model(&mut Rng::new(3))];
    let mut excluding = cpu();
    excluding.exclude = vec!["Conv_1".into(), "Reshape".into()];
    let configs = [cpu(), Int8Config::tensorrt(), excluding];
    for (k, m) in models.iter().enumerate() {
        let src = Synthetic::new(&model_inputs(m).unwrap(), &spec()).unwrap();
        let all = collect(&OrtExecutor::new(), m, None, &src, &CollectOptions::default()).unwrap();
        let handled = CollectOptions { candidates: Some(crate::handlers::handled_tensors(m)), ..Default::default() };
        let some = collect(&OrtExecutor::new(), m, None, &src, &handled).unwrap();
        let unobserved: Vec<&String> = all.tensors.keys().filter(|n| !some.tensors.contains_key(*n)).collect();
        assert!(some.tensors.keys().all(|n| all.tensors[n] == some.tensors[n]));
        if k == 0 {
            // Negative twin: the Tanh's output (read and written by unhandled ops only) is
            // left out, and only it.
            let g = m.main_graph().unwrap();
            let tanh = g.nodes().find(|(_, n)| n.op_type == "Tanh").and_then(|(_, n)| n.output(0)).unwrap();
            assert_eq!(unobserved, [&g.value(tanh).name]);
        }
        for config in &configs {
            let (mut a, mut b) = (m.clone(), m.clone());
            quantize_with_ranges(&mut a, &all, config).unwrap();
            quantize_with_ranges(&mut b, &some, config).unwrap();
            assert_eq!(kiln_compiler::onnx::encode_model(&a), kiln_compiler::onnx::encode_model(&b), "model {k}");
        }
    }
}
