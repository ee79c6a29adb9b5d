//! TensorRT's placement ([`Placement::WeightedInputs`]) on tiny graphs: Q/DQ on the inputs of
//! weighted ops and on the residual input of an Add fused into one, never on the output of a
//! weighted op, zero points 0, float biases, one consumer per DQ, float consumers reading the
//! float tensor; and the numbers in ONNX Runtime close to the float model's. Each case has a
//! twin: the ORT CPU placement of the same graph, or a graph the rule leaves alone.

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Attribute, Graph, Model, NodeId};
use kiln_passes::testing::{B, count_in};

use super::{assert_close, conv_relu_conv, dq_source, matmul_chain, nodes, quantize};
use crate::plan::{Int8Config, Placement};

const WEIGHTED: &[&str] = &["Conv", "ConvTranspose", "MatMul", "Gemm"];

fn producer_op(g: &Graph, v: kiln_compiler::ir::ValueId) -> Option<&str> {
    g.value(v).producer().map(|p| g.node(p).op_type.as_str())
}

fn find(g: &Graph, name: &str) -> NodeId {
    g.nodes().find(|(_, n)| n.name.as_deref() == Some(name)).map(|(id, _)| id).unwrap()
}

/// The invariants of the TensorRT form on any graph: each DQ has one consumer; every zero
/// point is an int8 0; every weighted op with a quantized weight has a quantized input and a
/// float bias; a Q after a weighted op feeds only weighted ops (TensorRT fuses it as the op's
/// output quantizer), `strict`: there is no Q after a weighted op at all.
fn assert_trt_form(g: &Graph, strict: bool) {
    for (id, n) in g.nodes() {
        if n.op_type == "DequantizeLinear" || n.op_type == "QuantizeLinear" {
            let zp = g.value(n.input(2).unwrap()).initializer().unwrap();
            assert!(matches!(zp.dtype(), DataType::I8), "{}: zero point {}", n.label(id), zp.dtype());
            assert!(zp.to_f64_vec().unwrap().iter().all(|&z| z == 0.0), "{}: non-zero zero point", n.label(id));
        }
        if n.op_type == "DequantizeLinear" {
            let uses = g.value(n.output(0).unwrap()).uses().len() + usize::from(g.is_output(n.output(0).unwrap()));
            assert_eq!(uses, 1, "{} has {uses} consumers", n.label(id));
        }
        if n.op_type == "QuantizeLinear"
            && let Some(p) = g.value(n.input(0).unwrap()).producer()
            && WEIGHTED.contains(&g.node(p).op_type.as_str())
        {
            assert!(!strict, "{} quantizes the output of {}", n.label(id), g.node(p).label(p));
            for u in g.value(n.output(0).unwrap()).uses() {
                let dq = g.node(u.node).output(0).unwrap();
                for c in g.value(dq).uses() {
                    let op = g.node(c.node).op_type.as_str();
                    assert!(WEIGHTED.contains(&op), "{} feeds {op}", n.label(id));
                }
            }
        }
        if WEIGHTED.contains(&n.op_type.as_str()) && producer_op(g, n.input(1).unwrap()) == Some("DequantizeLinear") {
            assert_eq!(producer_op(g, n.input(0).unwrap()), Some("DequantizeLinear"), "{}'s input", n.label(id));
            if let Some(b) = n.input(2) {
                let t =
                    g.value(b).initializer().unwrap_or_else(|| panic!("{}: bias is not an initializer", n.label(id)));
                assert_eq!(t.dtype(), DataType::F32, "{}: TensorRT takes a float bias", n.label(id));
            }
        }
    }
}

#[test]
fn tensorrt_config_places_qdq_on_weighted_inputs() {
    assert_eq!(Int8Config::tensorrt().placement, Placement::WeightedInputs);
    assert_eq!(super::cpu().placement, Placement::OutputsAndInputs);
}

#[test]
fn conv_relu_conv_quantizes_the_conv_inputs_only() {
    let m = conv_relu_conv(11);
    let (q, out) = quantize(&m, &Int8Config::tensorrt());
    let g = q.graph.as_ref().unwrap();
    assert_trt_form(g, true);
    assert_eq!(dq_source(g, "Conv", 1), Some((DataType::I8, vec![4, 3, 3, 3], Some(0))), "weight S8 per channel");
    let relu = nodes(g, "Relu")[0];
    assert_eq!(producer_op(g, relu.input(0).unwrap()), Some("Conv"), "Conv → Relu stays fused");
    let conv2 = g.node(find(g, "Conv_3"));
    assert_eq!(producer_op(g, conv2.input(0).unwrap()), Some("DequantizeLinear"), "the Relu's output is quantized");
    // x and the Relu's output: two Q, two activation DQ and two weight DQ.
    assert_eq!((count_in(&q, "", "QuantizeLinear"), count_in(&q, "", "DequantizeLinear")), (2, 4));
    assert_eq!(out.quantized_ops.get("Conv"), Some(&2));
    assert_eq!(out.decisions["Relu_2"], "fp32 (input is not quantized)");
    assert_close(&m, &q, 3.0);

    // Twin: ORT CPU quantizes the first Conv's output (the ReLU is absorbed into its Q).
    let (cpu, _) = quantize(&m, &super::cpu());
    let g = cpu.graph.as_ref().unwrap();
    let conv1 = g.node(find(g, "Conv_1"));
    let first_use = g.value(conv1.output(0).unwrap()).uses()[0].node;
    assert_eq!(g.node(first_use).op_type, "QuantizeLinear");
}

/// x → Conv → Relu (h) → Conv (project) → Add(project, h) → Conv → y; `two_convs`: the Add
/// sums two Convs of h instead (both branches weighted).
fn residual(two_convs: bool) -> Model {
    let mut b = B::new(12);
    let x = b.input("x", &[1, 4, 6, 6]);
    let pads = || vec![Attribute::ints("pads", vec![1, 1, 1, 1])];
    let w1 = b.weight("w1", &[4, 4, 3, 3], -0.4, 0.4);
    let c1 = b.op("Conv", &[x, w1], pads());
    let h = b.op("Relu", &[c1], vec![]);
    let w2 = b.weight("w2", &[4, 4, 3, 3], -0.4, 0.4);
    let bias2 = b.weight("b2", &[4], -0.1, 0.1);
    let project = b.op("Conv", &[h, w2, bias2], pads());
    let other = if two_convs {
        let w3 = b.weight("w3", &[4, 4, 1, 1], -0.4, 0.4);
        b.op("Conv", &[h, w3], vec![])
    } else {
        h
    };
    let sum = b.op("Add", &[project, other], vec![]);
    let w4 = b.weight("w4", &[2, 4, 1, 1], -0.5, 0.5);
    let y = b.op("Conv", &[sum, w4], vec![]);
    b.output(y);
    b.model(13)
}

#[test]
fn residual_add_quantizes_its_identity_branch() {
    let m = residual(false);
    let (q, out) = quantize(&m, &Int8Config::tensorrt());
    let g = q.graph.as_ref().unwrap();
    assert_trt_form(g, true);
    let add = nodes(g, "Add")[0];
    assert_eq!(producer_op(g, add.input(0).unwrap()), Some("Conv"), "the Conv branch fuses: no Q/DQ");
    assert_eq!(producer_op(g, add.input(1).unwrap()), Some("DequantizeLinear"), "the residual is quantized");
    assert_eq!(out.decisions["Add_4"], "int8");
    // h is read quantized by the project Conv and by the Add: one Q, a DQ for each.
    let relu = nodes(g, "Relu")[0];
    let h_uses = g.value(relu.output(0).unwrap()).uses();
    assert_eq!(h_uses.len(), 1);
    let hq = g.node(h_uses[0].node);
    assert_eq!(hq.op_type, "QuantizeLinear");
    assert_eq!(g.value(hq.output(0).unwrap()).uses().len(), 2);
    // The Add's output feeds a Conv: quantized as that Conv's input.
    let sum_use = g.value(add.output(0).unwrap()).uses()[0].node;
    assert_eq!(g.node(sum_use).op_type, "QuantizeLinear");
    assert_close(&m, &q, 4.0);

    // Twin: both branches come from quantized Convs; the Add fuses into one of them in float.
    let m = residual(true);
    let (q, out) = quantize(&m, &Int8Config::tensorrt());
    let g = q.graph.as_ref().unwrap();
    assert_trt_form(g, true);
    let add = nodes(g, "Add")[0];
    assert!(add.inputs().iter().flatten().all(|&v| producer_op(g, v) == Some("Conv")), "no Q/DQ on either input");
    assert!(out.decisions["Add_5"].starts_with("fp32 (TensorRT: both operands"), "{:?}", out.decisions);
    assert_close(&m, &q, 4.0);
}

#[test]
fn an_add_of_a_bias_or_of_float_branches_stays_float() {
    // x → MatMul → Add(const) → Reshape → MatMul: the bias Add fuses into the first MatMul.
    let m = matmul_chain("MatMul");
    let (q, out) = quantize(&m, &Int8Config::tensorrt());
    let g = q.graph.as_ref().unwrap();
    assert_trt_form(g, true);
    assert!(out.decisions["Add_2"].starts_with("fp32 (TensorRT: a constant operand"), "{:?}", out.decisions);
    let add = nodes(g, "Add")[0];
    assert_eq!(producer_op(g, add.input(0).unwrap()), Some("MatMul"));
    assert_eq!(g.value(add.input(1).unwrap()).initializer().map(|t| t.dtype()), Some(DataType::F32));
    // The Reshape stays float; the second MatMul quantizes the Reshape's output.
    let reshape = nodes(g, "Reshape")[0];
    assert_eq!(producer_op(g, reshape.input(0).unwrap()), Some("Add"));
    let last = nodes(g, "MatMul")[1];
    assert_eq!(producer_op(g, last.input(0).unwrap()), Some("DequantizeLinear"));
    for mm in nodes(g, "MatMul") {
        let w = g.node(g.value(mm.input(1).unwrap()).producer().unwrap());
        assert_eq!(w.attr_int("axis"), Some(1), "MatMul weights per output column");
    }
    assert_close(&m, &q, 4.0);

    // Twin: ORT CPU quantizes the Add (QLinearAdd) and shares parameters through the Reshape.
    let (cpu, out) = quantize(&m, &super::cpu());
    assert_eq!((out.quantized_ops.get("Add"), out.quantized_ops.get("Reshape")), (Some(&1), Some(&1)));
    let g = cpu.graph.as_ref().unwrap();
    let add = nodes(g, "Add")[0];
    assert_eq!(producer_op(g, add.input(0).unwrap()), Some("DequantizeLinear"));
}

/// x → MatMul(w1) → Relu (h); h → MatMul(w2) (q), h → MatMul(w3) (k); MatMul(q, kᵀ) → Softmax
/// → y, and h → Tanh → t (a float reader of a quantized tensor).
fn matmul_attention() -> Model {
    let mut b = B::new(13);
    let x = b.input("x", &[4, 8]);
    let w1 = b.weight("w1", &[8, 8], -0.5, 0.5);
    let m1 = b.op("MatMul", &[x, w1], vec![]);
    let h = b.op("Relu", &[m1], vec![]);
    let w2 = b.weight("w2", &[8, 6], -0.5, 0.5);
    let qv = b.op("MatMul", &[h, w2], vec![]);
    let w3 = b.weight("w3", &[8, 6], -0.5, 0.5);
    let kv = b.op("MatMul", &[h, w3], vec![]);
    let kt = b.op("Transpose", &[kv], vec![Attribute::ints("perm", vec![1, 0])]);
    let scores = b.op("MatMul", &[qv, kt], vec![]);
    let y = b.op("Softmax", &[scores], vec![Attribute::int("axis", -1)]);
    b.output(y);
    let t = b.op("Tanh", &[h], vec![]);
    b.output(t);
    b.output(h);
    b.model(13)
}

#[test]
fn matmul_chain_quantizes_every_matmul_input_and_keeps_float_readers_float() {
    let m = matmul_attention();
    let (q, out) = quantize(&m, &Int8Config::tensorrt());
    let g = q.graph.as_ref().unwrap();
    // The projections feed the scores MatMul directly: their Q is that MatMul's input Q,
    // which TensorRT fuses as the projection's output quantizer (allowed, not strict).
    assert_trt_form(g, false);
    assert_eq!(out.quantized_ops.get("MatMul"), Some(&4));
    for mm in nodes(g, "MatMul") {
        for v in mm.inputs().iter().flatten() {
            assert_eq!(producer_op(g, *v), Some("DequantizeLinear"), "every MatMul input is quantized");
        }
    }
    // The Softmax stays float after the scores MatMul; Tanh reads h itself, not a DQ of it.
    let softmax = nodes(g, "Softmax")[0];
    assert_eq!(producer_op(g, softmax.input(0).unwrap()), Some("MatMul"));
    let tanh = nodes(g, "Tanh")[0];
    assert_eq!(producer_op(g, tanh.input(0).unwrap()), Some("Relu"));
    // h is also a graph output: the Relu still writes it, in float.
    let h_out = g.outputs().iter().copied().find(|&v| g.value(v).name == "Relu_2_out").unwrap();
    assert_eq!(producer_op(g, h_out), Some("Relu"));
    assert_close(&m, &q, 4.0);

    // Twin: ORT CPU gives every reader of a quantized tensor a DQ, the Tanh too.
    let (cpu, _) = quantize(&m, &super::cpu());
    let g = cpu.graph.as_ref().unwrap();
    let tanh = nodes(g, "Tanh")[0];
    assert_eq!(producer_op(g, tanh.input(0).unwrap()), Some("DequantizeLinear"));
    let h_out = g.outputs().iter().copied().find(|&v| g.value(v).name == "Relu_2_out").unwrap();
    assert_eq!(producer_op(g, h_out), Some("DequantizeLinear"));
}
