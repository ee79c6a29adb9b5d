//! SmoothQuant on tiny graphs with one outlier channel: smoothing alone leaves the outputs
//! unchanged in ONNX Runtime (a wrong `s` does not), and smoothed + quantized is closer to the
//! float model than quantized alone.

use std::sync::Arc;

use kiln_calibration::data::{Synthetic, SyntheticSpec, model_inputs};
use kiln_calibration::{CollectOptions, SampleSource, collect};
use kiln_compiler::Tensor;
use kiln_compiler::ir::{Graph, Model};
use kiln_compiler::runtime::{OrtExecutor, Value};
use kiln_passes::testing::{B, require_ort, run};

use super::*;
use crate::int8::quantize_with_ranges;
use crate::plan::Int8Config;

const K: usize = 16;
const N: usize = 8;

fn source(model: &Model, seed: u64) -> Synthetic {
    Synthetic::new(&model_inputs(model).unwrap(), &SyntheticSpec { samples: 8, seed, ..SyntheticSpec::default() })
        .unwrap()
}

/// x[32, K] → LayerNorm (channel 3 scaled ×40: the outlier) → MatMul W[K, N]; the LayerNorm's
/// output also feeds a second MatMul (Q/K/V style), or only one when `shared` is false.
fn layernorm_matmul(shared: bool) -> Model {
    let mut b = B::new(7);
    let x = b.input("x", &[32, K]);
    let mut gamma: Vec<f32> = (0..K).map(|i| 0.8 + 0.02 * i as f32).collect();
    gamma[3] = 40.0;
    let gamma = b.konst("gamma", Tensor::from_slice(vec![K], &gamma).unwrap());
    let beta = b.weight("beta", &[K], -0.1, 0.1);
    let ln = b.op("LayerNormalization", &[x, gamma, beta], vec![]);
    let w = b.weight("w", &[K, N], -0.5, 0.5);
    let y = b.op("MatMul", &[ln, w], vec![]);
    b.output(y);
    if shared {
        let w2 = b.weight("w2", &[K, N], -0.5, 0.5);
        let y2 = b.op("MatMul", &[ln, w2], vec![]);
        b.output(y2);
    }
    b.model(17)
}

/// The same outlier, but X comes through a Relu that cannot absorb a scale: a Mul is inserted.
fn relu_matmul() -> Model {
    let mut b = B::new(9);
    let x = b.input("x", &[32, K]);
    let mut boost: Vec<f32> = vec![1.0; K];
    boost[5] = 50.0;
    let boost = b.konst("boost", Tensor::from_slice(vec![K], &boost).unwrap());
    let xb = b.op("Mul", &[x, boost], vec![]);
    let r = b.op("Relu", &[xb], vec![]);
    let w = b.weight("w", &[K, N], -0.5, 0.5);
    let y = b.op("MatMul", &[r, w], vec![]);
    b.output(y);
    b.model(17)
}

fn feeds(model: &Model) -> Vec<Vec<(String, Value)>> {
    let src = source(model, 11);
    (0..src.len())
        .map(|i| src.read(i).unwrap().inputs.into_iter().map(|(n, t)| (n, Value::Tensor(t))).collect())
        .collect()
}

/// Largest |a − b| relative to the largest |a| over every output of every sample.
fn rel_max_diff(a: &Model, b: &Model) -> f64 {
    let (mut err, mut mag) = (0.0f64, 0.0f64);
    for feed in feeds(a) {
        for ((_, x), (_, y)) in run(a, &feed).unwrap().iter().zip(&run(b, &feed).unwrap()) {
            let x = x.as_tensor().unwrap().to_f64_vec().unwrap();
            let y = y.as_tensor().unwrap().to_f64_vec().unwrap();
            for (p, q) in x.iter().zip(&y) {
                err = err.max((p - q).abs());
                mag = mag.max(p.abs());
            }
        }
    }
    err / mag
}

/// Output error energy of `b` against `a` relative to `a`'s energy, over all samples.
fn rel_error(a: &Model, b: &Model) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for feed in feeds(a) {
        for ((_, x), (_, y)) in run(a, &feed).unwrap().iter().zip(&run(b, &feed).unwrap()) {
            let x = x.as_tensor().unwrap().to_f64_vec().unwrap();
            let y = y.as_tensor().unwrap().to_f64_vec().unwrap();
            for (p, q) in x.iter().zip(&y) {
                num += (p - q).powi(2);
                den += p.powi(2);
            }
        }
    }
    num / den
}

fn smoothed(model: &Model, alpha: Alpha) -> (Model, Vec<Smoothed>) {
    require_ort().unwrap();
    let mut m = model.clone();
    let config = SmoothConfig { alpha, ..SmoothConfig::default() };
    let records = smooth(&OrtExecutor::new(), &mut m, None, &source(model, 3), &config).unwrap();
    kiln_compiler::verify::check_model(&m).unwrap();
    (m, records)
}

fn quantized(model: &Model, records: &[Smoothed]) -> Model {
    let ranges = collect(&OrtExecutor::new(), model, None, &source(model, 3), &CollectOptions::default()).unwrap();
    let mut q = model.clone();
    let config = Int8Config { exclude: float_nodes(records), ..Int8Config::ort_cpu() };
    quantize_with_ranges(&mut q, &ranges, &config).unwrap();
    q
}

fn count(g: &Graph, op: &str) -> usize {
    g.nodes().filter(|(_, n)| n.op_type == op).count()
}

fn layernorm_scale(g: &Graph) -> (ValueId, Vec<f32>) {
    let (_, ln) = g.nodes().find(|(_, n)| n.op_type == "LayerNormalization").unwrap();
    let v = ln.input(1).unwrap();
    (v, g.value(v).initializer().unwrap().to_vec::<f32>().unwrap())
}

#[test]
fn smoothing_alone_preserves_outputs_and_a_wrong_scale_does_not() {
    let model = layernorm_matmul(true);
    let (m, records) = smoothed(&model, Alpha::Fixed(0.5));
    assert_eq!(records.len(), 1, "Q/K/V-style MatMuls share one activation and one s");
    assert_eq!(records[0].nodes.len(), 2);
    assert_eq!(records[0].alpha, Some(0.5));
    assert!(records[0].folded_into.is_some(), "1/s folded into the LayerNorm: {records:?}");
    let g = m.graph.as_ref().unwrap();
    assert_eq!(count(g, "Mul"), 0, "no Mul inserted when the LayerNorm absorbs 1/s");
    let (scale_v, scale) = layernorm_scale(g);
    assert!(scale[3] < 40.0 / 2.0, "the outlier channel's gain moved into the weights: {scale:?}");
    let diff = rel_max_diff(&model, &m);
    assert!(diff < 1e-5, "smoothing changed the outputs by {diff}");

    // Negative twin: the activation divided by a different s than the weights were scaled by.
    let mut wrong = m.clone();
    let g = wrong.graph.as_mut().unwrap();
    let mut bad = scale.clone();
    bad.swap(3, 4);
    g.set_initializer(scale_v, Arc::new(Tensor::from_slice(vec![K], &bad).unwrap()));
    let diff = rel_max_diff(&model, &wrong);
    assert!(diff > 1e-2, "a wrong s must change the outputs, changed by {diff}");
}

#[test]
fn a_mul_is_inserted_when_the_producer_cannot_absorb() {
    let model = relu_matmul();
    let (m, records) = smoothed(&model, Alpha::Fixed(0.5));
    assert_eq!(records[0].folded_into, None);
    assert!(records[0].mul.is_some());
    let g = m.graph.as_ref().unwrap();
    assert_eq!(count(g, "Mul"), 2, "the model's own Mul plus the smoothing Mul");
    let diff = rel_max_diff(&model, &m);
    assert!(diff < 1e-5, "smoothing changed the outputs by {diff}");
    // Negative twin: scaling the weights alone (s applied twice to W, once to X) is wrong.
    let mut wrong = m.clone();
    let s: Vec<f32> = (0..K).map(|j| if j == 5 { 4.0 } else { 1.0 }).collect();
    let w_name = {
        let g = wrong.graph.as_ref().unwrap();
        let (_, mm) = g.nodes().find(|(_, n)| n.op_type == "MatMul").unwrap();
        g.value(mm.input(1).unwrap()).name.clone()
    };
    let g = wrong.graph.as_mut().unwrap();
    let wv = g.find_value(&w_name).unwrap();
    let w = g.value(wv).initializer().unwrap().to_vec::<f32>().unwrap();
    let w: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * s[i / N]).collect();
    g.set_initializer(wv, Arc::new(Tensor::from_slice(vec![K, N], &w).unwrap()));
    assert!(rel_max_diff(&model, &wrong) > 1e-2);
}

#[test]
fn smoothed_int8_is_closer_than_plain_int8() {
    for model in [layernorm_matmul(false), relu_matmul()] {
        let (m, records) = smoothed(&model, Alpha::Auto);
        let alpha = records[0].alpha;
        assert!(alpha.is_some(), "an outlier channel makes some α worth it: {records:?}");
        assert!(records[0].error_after < records[0].error_before);
        let plain = rel_error(&model, &quantized(&model, &[]));
        let smooth = rel_error(&model, &quantized(&m, &records));
        assert!(smooth < 0.7 * plain, "smoothed int8 error {smooth} not below plain int8 error {plain} (α {alpha:?})");
    }
}

#[test]
fn without_outliers_auto_leaves_the_model_alone() {
    // Negative twin of the above: a LayerNorm with flat gains has no outlier to migrate.
    let mut b = B::new(7);
    let x = b.input("x", &[32, K]);
    let gamma = b.konst("gamma", Tensor::from_slice(vec![K], &[1.0f32; K]).unwrap());
    let beta = b.konst("beta", Tensor::from_slice(vec![K], &[0.0f32; K]).unwrap());
    let ln = b.op("LayerNormalization", &[x, gamma, beta], vec![]);
    let w = b.weight("w", &[K, N], -0.5, 0.5);
    let y = b.op("MatMul", &[ln, w], vec![]);
    b.output(y);
    let model = b.model(17);
    let (m, records) = smoothed(&model, Alpha::Auto);
    let g = m.graph.as_ref().unwrap();
    if records[0].alpha.is_none() {
        assert_eq!(layernorm_scale(g).1, vec![1.0f32; K], "an unsmoothed activation keeps its LayerNorm");
    } else {
        assert!(records[0].error_after < records[0].error_before, "{records:?}");
    }
}

#[test]
fn bad_alpha_and_unknown_activation_are_refused() {
    require_ort().unwrap();
    let model = layernorm_matmul(false);
    let mut m = model.clone();
    let config = SmoothConfig { alpha: Alpha::Fixed(1.5), ..SmoothConfig::default() };
    let err = smooth(&OrtExecutor::new(), &mut m, None, &source(&model, 3), &config).unwrap_err();
    assert!(err.to_string().contains("1.5"), "{err}");
    let err = apply_scales(&mut m, "nope", &[1.0; K]).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(scales(&[4.0, 0.0], &[1.0, 2.0], 0.5), vec![2.0, 1.0]);
}

#[test]
fn gemm_with_transposed_weight_and_bias_is_smoothed_exactly() {
    let mut b = B::new(13);
    let x = b.input("x", &[32, K]);
    let mut boost: Vec<f32> = vec![1.0; K];
    boost[2] = 60.0;
    let boost = b.konst("boost", Tensor::from_slice(vec![K], &boost).unwrap());
    let xb = b.op("Mul", &[x, boost], vec![]);
    let w = b.weight("w", &[N, K], -0.5, 0.5);
    let c = b.weight("c", &[N], -0.1, 0.1);
    let y = b.op("Gemm", &[xb, w, c], vec![kiln_compiler::ir::Attribute::int("transB", 1)]);
    b.output(y);
    let model = b.model(17);
    let (m, records) = smoothed(&model, Alpha::Fixed(0.5));
    assert_eq!(records.len(), 1);
    assert!(records[0].mul.is_some());
    let diff = rel_max_diff(&model, &m);
    assert!(diff < 1e-5, "smoothing changed the Gemm's outputs by {diff}");
    // Negative twin: the [N, K] weight scaled as if it were [K, N] is wrong.
    let mut wrong = model.clone();
    let s: Vec<f32> = (0..K).map(|j| 1.0 + j as f32).collect();
    apply_scales(&mut wrong, &records[0].activation, &s).unwrap();
    let g = wrong.graph.as_mut().unwrap();
    let (_, gemm) = g.nodes().find(|(_, n)| n.op_type == "Gemm").unwrap();
    let wv = gemm.input(1).unwrap();
    let vals = g.value(wv).initializer().unwrap().to_vec::<f32>().unwrap();
    let unscaled: Vec<f32> = vals.iter().enumerate().map(|(i, v)| v / s[i % K]).collect();
    let misscaled: Vec<f32> = unscaled.iter().enumerate().map(|(i, v)| v * s[(i / N) % K]).collect();
    g.set_initializer(wv, Arc::new(Tensor::from_slice(vec![N, K], &misscaled).unwrap()));
    assert!(rel_max_diff(&model, &wrong) > 1e-2);
}
