//! Attention → QAttention in ONNX Runtime: the same outputs within dynamic-quantization error;
//! an Attention with a non-default scale, or an excluded one, stays float.

use kiln_compiler::DataType;
use kiln_compiler::Tensor;
use kiln_compiler::ir::{Attribute, Model, NodeSpec};
use kiln_compiler::runtime::Value;
use kiln_passes::testing::{B, Rng, count_in, op, require_ort, run, tensor_ty};

use super::quantize_attention;
use crate::plan::Int8Config;

const HIDDEN: usize = 16;

/// x[1,5,16] → Attention(w[16,48], bias[48], mask int32[1,5], 2 heads, `scale`) → y.
fn attention(scale: f32) -> Model {
    let mut b = B::new(9);
    let x = b.input("x", &[1, 5, HIDDEN]);
    let mask = b.g.add_input("mask", Some(tensor_ty(DataType::I32, &[1, 5])));
    let w = b.weight("qkv_weight", &[HIDDEN, 3 * HIDDEN], -0.5, 0.5);
    let bias = b.weight("qkv_bias", &[3 * HIDDEN], -0.1, 0.1);
    let y = op(
        &mut b.g,
        NodeSpec::new("Attention")
            .domain("com.microsoft")
            .name("attn")
            .inputs([x, w, bias, mask])
            .outputs(["y"])
            .attr(Attribute::int("num_heads", 2))
            .attr(Attribute::float("scale", scale))
            .attr(Attribute::float("mask_filter_value", f32::MIN)),
    );
    b.output(y);
    let mut m = b.model(17);
    crate::qdq::ensure_opset(&mut m, "com.microsoft", 1);
    m
}

fn feed(seed: u64) -> Vec<(String, Value)> {
    let mut rng = Rng::new(seed);
    let mask = Tensor::from_slice(vec![1, 5], &[1i32, 1, 1, 1, 0]).unwrap();
    vec![
        ("x".to_string(), Value::Tensor(rng.tensor(&[1, 5, HIDDEN], -1.0, 1.0))),
        ("mask".to_string(), Value::Tensor(mask)),
    ]
}

#[test]
fn attention_becomes_qattention_with_an_int8_weight() {
    require_ort().unwrap();
    let m = attention(1.0 / 8f32.sqrt());
    let mut q = m.clone();
    let done = quantize_attention(&mut q, &Int8Config::ort_cpu()).unwrap();
    assert!(done["attn"].starts_with("int8"), "{done:?}");
    kiln_compiler::verify::check_model(&q).unwrap();
    assert_eq!(count_in(&q, "com.microsoft", "QAttention"), 1);
    assert_eq!(count_in(&q, "com.microsoft", "Attention"), 0);
    let g = q.graph.as_ref().unwrap();
    let (_, qa) = g.nodes().find(|(_, n)| n.op_type == "QAttention").unwrap();
    let w = g.value(qa.input(1).unwrap()).initializer().unwrap();
    assert_eq!((w.dtype(), w.dims()), (DataType::I8, &[HIDDEN, 3 * HIDDEN][..]));
    assert_eq!(g.value(qa.input(4).unwrap()).initializer().unwrap().dims(), [3 * HIDDEN], "per-column scales");
    let (mut err, mut mag) = (0.0f64, 0.0f64);
    for seed in 0..4 {
        let (want, got) = (run(&m, &feed(seed)).unwrap(), run(&q, &feed(seed)).unwrap());
        let w = want[0].1.as_tensor().unwrap().to_f64_vec().unwrap();
        let o = got[0].1.as_tensor().unwrap().to_f64_vec().unwrap();
        for (a, b) in w.iter().zip(&o) {
            err = err.max((a - b).abs());
            mag = mag.max(a.abs());
        }
    }
    // 8-bit input and weight: a few percent of the output's magnitude at most.
    assert!(err <= 0.03 * mag, "error {err} against magnitude {mag}");
    assert!(err > 0.0, "nothing was quantized");
}

#[test]
fn other_scale_or_excluded_attention_stays_float() {
    let mut scaled = attention(0.5);
    let done = quantize_attention(&mut scaled, &Int8Config::ort_cpu()).unwrap();
    assert!(done["attn"].starts_with("fp32"), "{done:?}");
    assert_eq!(count_in(&scaled, "com.microsoft", "Attention"), 1);
    let mut excluded = attention(1.0 / 8f32.sqrt());
    let config = Int8Config { exclude: vec!["attn".into()], ..Int8Config::ort_cpu() };
    assert!(quantize_attention(&mut excluded, &config).unwrap().is_empty());
    assert_eq!(count_in(&excluded, "com.microsoft", "QAttention"), 0);
}
