//! Dynamic INT8 LSTM on tiny graphs, run in ONNX Runtime before and after: the outputs (hidden
//! states in (-1, 1)) agree within a few 8-bit steps, so the weight layout (transposed,
//! per gate row, per direction) is the one the kernel reads. Each positive case has a negative
//! twin that stays float.

use std::sync::Arc;

use kiln_compiler::ir::{AttrValue, Attribute, Graph, Model, NodeSpec, ValueId};
use kiln_compiler::runtime::Value;
use kiln_compiler::{DataType, Tensor};
use kiln_passes::testing::{Rng, count_in, model, require_ort, run, seeded_inputs};

use crate::dynamic::{DynamicConfig, quantize_dynamic};

const H: usize = 8;
const I: usize = 6;
const SEQ: usize = 5;

fn f32_ty(dims: &[usize]) -> Option<kiln_compiler::ir::Type> {
    Some(kiln_compiler::ir::Type::tensor(kiln_compiler::ir::TensorType::with_dims(DataType::F32, dims)))
}

/// Adds `LSTM(x, w, r, b, -, h0)` with outputs Y and Y_h to `g`; returns them.
fn lstm(g: &mut Graph, x: ValueId, w: ValueId, r: ValueId, b: ValueId, h0: ValueId, dirs: usize) -> [ValueId; 2] {
    let direction = if dirs == 2 { "bidirectional" } else { "forward" };
    let n = g.add_node(
        NodeSpec::new("LSTM")
            .name("lstm")
            .inputs([x, w, r, b])
            .input_opt(None)
            .input_opt(Some(h0))
            .outputs(["y", "y_h"])
            .attr(Attribute::int("hidden_size", H as i64))
            .attr(Attribute::string("direction", direction)),
    );
    let (y, yh) = (g.node(n).output(0).unwrap(), g.node(n).output(1).unwrap());
    g.value_mut(y).ty = f32_ty(&[SEQ, dirs, 1, H]);
    g.value_mut(yh).ty = f32_ty(&[dirs, 1, H]);
    [y, yh]
}

/// A bidirectional LSTM with seeded constant weights; `runtime_w`: W is a graph input instead.
fn plain(runtime_w: bool) -> Model {
    let mut rng = Rng::new(11);
    let mut g = Graph::new();
    let x = g.add_input("x", f32_ty(&[SEQ, 1, I]));
    let h0 = g.add_input("h0", f32_ty(&[2, 1, H]));
    let w = if runtime_w {
        g.add_input("w", f32_ty(&[2, 4 * H, I]))
    } else {
        g.add_initializer("w", Arc::new(rng.tensor(&[2, 4 * H, I], -0.8, 0.8)))
    };
    let r = g.add_initializer("r", Arc::new(rng.tensor(&[2, 4 * H, H], -0.8, 0.8)));
    let b = g.add_initializer("b", Arc::new(rng.tensor(&[2, 8 * H], -0.3, 0.3)));
    for v in lstm(&mut g, x, w, r, b, h0, 2) {
        g.push_output(v);
    }
    model(g, 14)
}

fn max_error(before: &Model, after: &Model) -> f64 {
    let mut err = 0.0f64;
    for seed in 0..4 {
        let feed: Vec<(String, Value)> = seeded_inputs(before, seed, 1).unwrap();
        let want = run(before, &feed).unwrap();
        let got = run(after, &feed).unwrap();
        for ((_, w), (_, g)) in want.iter().zip(&got) {
            let w = w.as_tensor().unwrap().to_f64_vec().unwrap();
            let g = g.as_tensor().unwrap().to_f64_vec().unwrap();
            err = w.iter().zip(&g).fold(err, |m, (a, b)| m.max((a - b).abs()));
        }
    }
    err
}

#[test]
fn lstm_with_constant_weights_becomes_dynamic_quantize_lstm() {
    require_ort().unwrap();
    let m = plain(false);
    let mut q = m.clone();
    let out = quantize_dynamic(&mut q, &DynamicConfig::default()).unwrap();
    kiln_compiler::verify::check_model(&q).unwrap();
    assert_eq!(out.decisions["lstm"], "int8-dynamic");
    assert_eq!(count_in(&q, "", "LSTM"), 0);
    assert_eq!(count_in(&q, "com.microsoft", "DynamicQuantizeLSTM"), 1);
    let g = q.graph.as_ref().unwrap();
    let int8: Vec<Vec<usize>> = g
        .initializers()
        .iter()
        .map(|&v| g.value(v).initializer().unwrap())
        .filter(|t| t.dtype() == DataType::I8 && t.rank() == 3)
        .map(|t| t.dims().to_vec())
        .collect();
    // Transposed to [D, input, 4H] and [D, H, 4H]; the float W and R are gone.
    assert_eq!(int8, [vec![2, I, 4 * H], vec![2, H, 4 * H]]);
    assert!(g.find_value("w").is_none_or(|v| g.value(v).initializer().is_none()));
    // Hidden states lie in (-1, 1): a few 8-bit steps of that range (2/255 each).
    let err = max_error(&m, &q);
    eprintln!("DynamicQuantizeLSTM max abs error {err}");
    assert!(err > 0.0 && err < 4.0 * 2.0 / 255.0, "max abs error {err}");
}

#[test]
fn lstm_with_runtime_weights_stays_float() {
    let mut q = plain(true);
    let out = quantize_dynamic(&mut q, &DynamicConfig::default()).unwrap();
    assert_eq!(count_in(&q, "", "LSTM"), 1);
    assert_eq!(out.decisions["lstm"], "fp32 (W is not a constant)");
    assert!(out.quantized_ops.is_empty());
}

/// x → If(cond) { LSTM with W = Unsqueeze(Concat(Slice(w2d, gate order)) } else { LSTM same
/// weights }, `w2d`/`r2d` initializers of the main graph captured by both branches, as
/// PyTorch exports an LSTM: the weights are constant only through the captures.
fn captured(concat_runtime: bool) -> Model {
    let mut rng = Rng::new(12);
    let mut g = Graph::new();
    g.add_input("x", f32_ty(&[SEQ, 1, I]));
    g.add_input("h0", f32_ty(&[1, 1, H]));
    g.add_input("extra", f32_ty(&[H, I]));
    g.add_initializer("w2d", Arc::new(rng.tensor(&[4 * H, I], -0.8, 0.8)));
    g.add_initializer("r2d", Arc::new(rng.tensor(&[4 * H, H], -0.8, 0.8)));
    let cond = g.add_initializer("cond", Arc::new(Tensor::scalar(true)));
    let branch = |name: &str| {
        let mut b = Graph::new();
        b.name = Some(name.into());
        let (x, h0) = (b.add_outer("x"), b.add_outer("h0"));
        let int = |b: &mut Graph, n: &str, v: i64| {
            b.add_initializer(format!("{name}_{n}"), Arc::new(Tensor::from_slice(vec![1], &[v]).unwrap()))
        };
        let gates = |b: &mut Graph, src: &str, rows: usize| {
            let src = b.add_outer(src);
            let zero = int(b, &format!("{src:?}zero"), 0);
            // Gate blocks [i, f, g, o] (PyTorch) reordered to [i, o, f, c] (ONNX).
            let mut parts = Vec::new();
            for (k, (s, e)) in [(0, 1), (3, 4), (1, 3)].iter().enumerate() {
                let s = int(b, &format!("{:?}s{k}", src), (*s * rows) as i64);
                let e = int(b, &format!("{:?}e{k}", src), (*e * rows) as i64);
                let n = b.add_node(NodeSpec::new("Slice").inputs([src, s, e, zero]).outputs([b.fresh_name("slice")]));
                parts.push(b.node(n).output(0).unwrap());
            }
            let c = b.add_node(
                NodeSpec::new("Concat").inputs(parts).outputs([b.fresh_name("concat")]).attr(Attribute::int("axis", 0)),
            );
            let c = b.node(c).output(0).unwrap();
            let u = b.add_node(NodeSpec::new("Unsqueeze").inputs([c, zero]).outputs([b.fresh_name("unsq")]));
            b.node(u).output(0).unwrap()
        };
        let w = gates(&mut b, "w2d", H);
        let w = if concat_runtime && name == "then" {
            // The negative twin: one gate block comes from a runtime input.
            let extra = b.add_outer("extra");
            let zero = int(&mut b, "z2", 0);
            let sl = int(&mut b, "cut", (3 * H) as i64);
            let n = b.add_node(NodeSpec::new("Squeeze").inputs([w, zero]).outputs(["sq"]));
            let sq = b.node(n).output(0).unwrap();
            let n = b.add_node(NodeSpec::new("Slice").inputs([sq, zero, sl, zero]).outputs(["head"]));
            let head = b.node(n).output(0).unwrap();
            let n = b.add_node(
                NodeSpec::new("Concat").inputs([head, extra]).outputs(["mixed"]).attr(Attribute::int("axis", 0)),
            );
            let mixed = b.node(n).output(0).unwrap();
            let n = b.add_node(NodeSpec::new("Unsqueeze").inputs([mixed, zero]).outputs(["w_mixed"]));
            b.node(n).output(0).unwrap()
        } else {
            w
        };
        let r = gates(&mut b, "r2d", H);
        let bias = b.add_initializer(
            format!("{name}_b"),
            Arc::new(Tensor::from_slice(vec![1, 8 * H], &[0.1f32; 8 * H]).unwrap()),
        );
        let n = b.add_node(
            NodeSpec::new("LSTM")
                .name(format!("{name}_lstm"))
                .inputs([x, w, r, bias])
                .input_opt(None)
                .input_opt(Some(h0))
                .outputs(["", &format!("{name}_h")])
                .attr(Attribute::int("hidden_size", H as i64)),
        );
        let yh = b.node(n).output(1).unwrap();
        b.value_mut(yh).ty = f32_ty(&[1, 1, H]);
        b.push_output(yh);
        b
    };
    let n = g.add_node(
        NodeSpec::new("If")
            .name("if")
            .inputs([cond])
            .outputs(["y"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(branch("then")))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(branch("else"))))),
    );
    let y = g.node(n).output(0).unwrap();
    g.value_mut(y).ty = f32_ty(&[1, 1, H]);
    g.push_output(y);
    model(g, 14)
}

#[test]
fn captured_sliced_weights_are_resolved_and_the_float_copies_dropped() {
    require_ort().unwrap();
    let m = captured(false);
    let mut q = m.clone();
    let out = quantize_dynamic(&mut q, &DynamicConfig::default()).unwrap();
    kiln_compiler::verify::check_model(&q).unwrap();
    assert_eq!(out.decisions["if/then_lstm"], "int8-dynamic", "{:?}", out.decisions);
    assert_eq!(out.decisions["if/else_lstm"], "int8-dynamic");
    assert_eq!(count_in(&q, "com.microsoft", "DynamicQuantizeLSTM"), 2);
    // The slicing chains and the captured float weights are gone.
    assert_eq!(count_in(&q, "", "Slice") + count_in(&q, "", "Concat") + count_in(&q, "", "Unsqueeze"), 0);
    let g = q.graph.as_ref().unwrap();
    assert!(g.find_value("w2d").is_none_or(|v| g.value(v).initializer().is_none()), "w2d still stored");
    let err = max_error(&m, &q);
    eprintln!("captured DynamicQuantizeLSTM max abs error {err}");
    assert!(err > 0.0 && err < 4.0 * 2.0 / 255.0, "max abs error {err}");

    // Negative twin: in one branch part of W is a runtime input: that LSTM stays float, and the
    // captured weights stay stored since it still reads them.
    let m = captured(true);
    let mut q = m.clone();
    let out = quantize_dynamic(&mut q, &DynamicConfig::default()).unwrap();
    assert_eq!(out.decisions["if/then_lstm"], "fp32 (W is not a constant)");
    assert_eq!(out.decisions["if/else_lstm"], "int8-dynamic");
    let g = q.graph.as_ref().unwrap();
    assert!(g.find_value("w2d").is_some_and(|v| g.value(v).initializer().is_some()));
    assert!(max_error(&m, &q) < 4.0 * 2.0 / 255.0);
}
