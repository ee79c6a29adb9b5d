//! Golden tests against ONNX Runtime's own execution: the bytes Kiln writes are decoded here by
//! an independent reference written from the operator specifications (MatMulNBits: B is
//! `[N, k_blocks, blob]`, 4-bit codes low nibble first along K, zero points packed the same
//! way, default zero point 8; DequantizeLinear-21: int4 elements packed low nibble first in
//! row-major order, one scale per block along `axis`), multiplied in f64, and compared with
//! what ORT computes from the same model. A deliberately swapped nibble order must fail.

use std::sync::Arc;

use kiln_compiler::execute::load_session;
use kiln_compiler::ir::{AttrLookup, Attribute, Graph, Model, NodeSpec, OpsetImport, TensorType, Type};
use kiln_compiler::runtime::{OptLevel, OrtExecutor, SessionConfig, Value};
use kiln_compiler::{DataType, Tensor};

use super::*;

const M: usize = 3;

/// Deterministic values in [-1, 1).
pub(super) fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `y = x · W` (MatMul, W `[K, N]`) or `y = alpha · x · Wᵀ + beta · c` (Gemm, transB).
fn layer_model(k: usize, n: usize, gemm: bool) -> Model {
    let mut g = Graph::new();
    let x = g.add_input("x", Some(Type::tensor(TensorType::with_dims(DataType::F32, &[M, k]))));
    let w = Tensor::from_slice(if gemm { vec![n, k] } else { vec![k, n] }, &values(1, k * n)).unwrap();
    let w = g.add_initializer("w", Arc::new(w));
    let spec = if gemm {
        let c = g.add_initializer("c", Arc::new(Tensor::from_slice(vec![n], &values(2, n)).unwrap()));
        NodeSpec::new("Gemm")
            .inputs([x, w, c])
            .attr(Attribute::int("transB", 1))
            .attr(Attribute::float("alpha", 0.5))
            .attr(Attribute::float("beta", 2.0))
    } else {
        NodeSpec::new("MatMul").inputs([x, w])
    };
    let y = g.add_node(spec.name("layer").outputs(["y"]));
    let y = g.node(y).output(0).unwrap();
    g.value_mut(y).ty = Some(Type::tensor(TensorType::with_dims(DataType::F32, &[M, n])));
    g.push_output(y);
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(17) }],
        graph: Some(g),
        ..Model::default()
    }
}

fn run_ort(model: &Model, x: &[f32], k: usize) -> Vec<f32> {
    let config = SessionConfig { optimization: OptLevel::Disabled, intra_threads: Some(1), ..SessionConfig::default() };
    let mut s = load_session(&OrtExecutor::new(), model, None, &config).unwrap_or_else(|e| panic!("{e}"));
    let feed = vec![("x".to_string(), Value::Tensor(Tensor::from_slice(vec![M, k], x).unwrap()))];
    let out = s.run(&feed, None).unwrap_or_else(|e| panic!("{e}"));
    out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap()
}

fn init(g: &Graph, node: &kiln_compiler::ir::Node, i: usize) -> Option<Arc<Tensor>> {
    node.input(i).and_then(|v| g.value(v).initializer().cloned())
}

/// The weight a MatMulNBits node stands for, `[N][K]`, decoded from its constants.
fn decode_matmul_nbits(model: &Model) -> (Vec<f64>, Option<Vec<f64>>, usize, usize) {
    let g = model.graph.as_ref().unwrap();
    let (_, node) = g.nodes().find(|(_, n)| n.op_type == "MatMulNBits").expect("a MatMulNBits node");
    let (k, n) = (node.attr_int("K").unwrap() as usize, node.attr_int("N").unwrap() as usize);
    let bits = node.attr_int("bits").unwrap() as usize;
    let block = node.attr_int("block_size").unwrap() as usize;
    let kb = k.div_ceil(block);
    let b = init(g, node, 1).unwrap();
    assert_eq!(b.dims(), [n, kb, block * bits / 8]);
    let b = b.bytes().unwrap();
    let scales = init(g, node, 2).unwrap().to_vec::<f32>().unwrap();
    let zp = init(g, node, 3).map(|z| z.bytes().unwrap().to_vec());
    let zp_row = (kb * bits).div_ceil(8);
    let code = |bytes: &[u8], i: usize| -> u8 {
        if bits == 8 {
            bytes[i]
        } else {
            let byte = bytes[i / 2];
            if i.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 }
        }
    };
    let mut w = vec![0.0f64; n * k];
    for nn in 0..n {
        for kk in 0..k {
            let (blk, off) = (kk / block, kk % block);
            let blob = &b[(nn * kb + blk) * block * bits / 8..(nn * kb + blk + 1) * block * bits / 8];
            let q = f64::from(code(blob, off));
            let z = match &zp {
                Some(z) => f64::from(code(&z[nn * zp_row..(nn + 1) * zp_row], blk)),
                None => f64::from(1u32 << (bits - 1)),
            };
            w[nn * k + kk] = (q - z) * f64::from(scales[nn * kb + blk]);
        }
    }
    let bias = init(g, node, 5).map(|t| t.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect());
    (w, bias, k, n)
}

/// The weight a blocked DequantizeLinear (opset 21, `[K, N]` blocked on axis 0) stands for,
/// returned as `[N][K]`.
fn decode_blocked_dq(model: &Model) -> Vec<f64> {
    let g = model.graph.as_ref().unwrap();
    let (_, node) = g.nodes().find(|(_, n)| n.op_type == "DequantizeLinear").expect("a DequantizeLinear node");
    assert_eq!(node.attr_int("axis"), Some(0));
    let block = node.attr_int("block_size").unwrap() as usize;
    let x = init(g, node, 0).unwrap();
    let (k, n) = (x.dims()[0], x.dims()[1]);
    let signed = x.dtype() == DataType::I4;
    assert!(signed || x.dtype() == DataType::U4, "{}", x.dtype());
    let nibble = |t: &Tensor, i: usize| -> f64 {
        let byte = t.bytes().unwrap()[i / 2];
        let v = if i.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 };
        if signed && v >= 8 { f64::from(v) - 16.0 } else { f64::from(v) }
    };
    let scales = init(g, node, 1).unwrap();
    assert_eq!(scales.dims(), [k.div_ceil(block), n]);
    let scales = scales.to_vec::<f32>().unwrap();
    assert!(scales.iter().all(|&s| s > 0.0), "TensorRT takes strictly positive scales only");
    let zp = init(g, node, 2);
    let mut w = vec![0.0f64; n * k];
    for kk in 0..k {
        for nn in 0..n {
            let b = kk / block;
            let z = zp.as_ref().map_or(0.0, |z| nibble(z, b * n + nn));
            w[nn * k + kk] = (nibble(&x, kk * n + nn) - z) * f64::from(scales[b * n + nn]);
        }
    }
    w
}

/// Checks ORT's output against `x · wᵀ (+ bias)` within f32 rounding of each dot product;
/// returns the largest error in units of that bound (0 to 1 passes).
fn against_reference(got: &[f32], x: &[f32], w: &[f64], bias: Option<&[f64]>, k: usize, n: usize) -> f64 {
    let mut worst = 0.0f64;
    for m in 0..M {
        for nn in 0..n {
            let (mut dot, mut mag) = (0.0f64, 0.0f64);
            for kk in 0..k {
                let p = f64::from(x[m * k + kk]) * w[nn * k + kk];
                dot += p;
                mag += p.abs();
            }
            let b = bias.map_or(0.0, |b| b[nn]);
            let bound = 1e-6 * (mag + b.abs()) + 1e-7;
            worst = worst.max((f64::from(got[m * n + nn]) - (dot + b)).abs() / bound);
        }
    }
    worst
}

/// The decoded weight (f64) is the quantizer's own dequantization (f32) up to f32 rounding.
fn assert_close(decoded: &[f64], meant: &[f32]) {
    assert_eq!(decoded.len(), meant.len());
    for (i, (a, b)) in decoded.iter().zip(meant).enumerate() {
        assert!((a - f64::from(*b)).abs() <= 1e-6 * f64::from(b.abs()), "element {i}: {a} vs {b}");
    }
}

fn quantize(model: &mut Model, symmetric: bool, format: Format, last: LayerPrecision) -> Int4Report {
    let config = Int4Config { block: 16, symmetric, format, last, ..Int4Config::default() };
    let r = quantize_model(model, &config, None).unwrap();
    kiln_compiler::verify::check_model(model).unwrap_or_else(|e| panic!("{e}"));
    r
}

/// Swaps the nibbles of every byte of the first initializer named like `suffix`.
fn swap_nibbles(model: &mut Model, suffix: &str) {
    let g = model.graph.as_mut().unwrap();
    let v = *g.initializers().iter().find(|&&v| g.value(v).name.ends_with(suffix)).unwrap();
    let t = g.value(v).initializer().unwrap().clone();
    let swapped: Vec<u8> = t.bytes().unwrap().iter().map(|b| b.rotate_left(4)).collect();
    g.set_initializer(v, Arc::new(Tensor::new(t.dtype(), t.dims().to_vec(), swapped.into()).unwrap()));
}

#[test]
fn matmul_nbits_layout_matches_onnx_runtime() {
    // K = 40 is not a multiple of the block (16): the last block is padded.
    let (k, n) = (40, 5);
    let x = values(7, M * k);
    for symmetric in [true, false] {
        let mut model = layer_model(k, n, false);
        // The only layer is also the last one: `last: Int4` keeps it at 4 bits.
        let report = quantize(&mut model, symmetric, Format::MatMulNBits, LayerPrecision::Int4);
        assert_eq!(report.layers.len(), 1);
        let g = model.graph.as_ref().unwrap();
        let (_, node) = g.nodes().find(|(_, n)| n.op_type == "MatMulNBits").unwrap();
        assert_eq!(node.attr_int("accuracy_level"), None, "4-bit blocks keep float activations");
        assert_eq!(report.layers[0].bits, 4);
        let (w, _, kk, nn) = decode_matmul_nbits(&model);
        assert_eq!((kk, nn), (k, n));
        // The decoded weight is what the quantizer meant.
        let original = RowMajor::from_k_by_n(k, n, &values(1, k * n));
        let q = block::rtn(&original, QuantSpec { bits: 4, block: 16, symmetric, negative_scales: true }, None);
        assert_close(&w, &q.dequantize().values);
        let got = run_ort(&model, &x, k);
        let err = against_reference(&got, &x, &w, None, k, n);
        assert!(err <= 1.0, "symmetric {symmetric}: ORT differs from the reference by {err} rounding bounds");
        // Negative twin: nibbles swapped in B, then in the zero points.
        let mut bad = model.clone();
        swap_nibbles(&mut bad, "_q4");
        let err = against_reference(&run_ort(&bad, &x, k), &x, &w, None, k, n);
        assert!(err > 100.0, "swapped nibbles went unnoticed ({err})");
        if !symmetric {
            let mut bad = model.clone();
            swap_nibbles(&mut bad, "_zero_points");
            let err = against_reference(&run_ort(&bad, &x, k), &x, &w, None, k, n);
            assert!(err > 100.0, "swapped zero-point nibbles went unnoticed ({err})");
        }
    }
}

#[test]
fn eight_bit_matmul_nbits_and_gemm_bias_match_onnx_runtime() {
    let (k, n) = (48, 6);
    let x = values(8, M * k);
    for symmetric in [true, false] {
        // Default policy: the last (only) projection at 8 bits, with int8 activations (level 4).
        let mut model = layer_model(k, n, true);
        let report = quantize(&mut model, symmetric, Format::MatMulNBits, LayerPrecision::Int8);
        assert_eq!(report.layers[0].bits, 8);
        let g = model.graph.as_ref().unwrap();
        let (_, node) = g.nodes().find(|(_, n)| n.op_type == "MatMulNBits").unwrap();
        assert_eq!(node.attr_int("accuracy_level"), Some(4), "8-bit blocks take ORT's int8 kernel");
        // Level 0 (float activations) for the exact comparison.
        let mut model = layer_model(k, n, true);
        let config = Int4Config {
            block: 16,
            symmetric,
            accuracy_level: Some(0),
            last: LayerPrecision::Int8,
            ..Int4Config::default()
        };
        quantize_model(&mut model, &config, None).unwrap();
        kiln_compiler::verify::check_model(&model).unwrap_or_else(|e| panic!("{e}"));
        let g = model.graph.as_ref().unwrap();
        assert_eq!(g.nodes().filter(|(_, n)| n.op_type == "Gemm").count(), 0);
        let (w, bias, ..) = decode_matmul_nbits(&model);
        // alpha = 0.5 folded into the weight, beta = 2 into the bias.
        let c = values(2, n);
        let bias = bias.expect("Gemm's C becomes the bias");
        for (b, c) in bias.iter().zip(&c) {
            assert_eq!(*b, f64::from(c * 2.0));
        }
        let original: Vec<f32> = values(1, k * n).iter().map(|v| v * 0.5).collect();
        for (a, b) in w.iter().zip(&original) {
            assert!((a - f64::from(*b)).abs() < 0.01, "8-bit weight {a} vs {b}");
        }
        let got = run_ort(&model, &x, k);
        let err = against_reference(&got, &x, &w, Some(&bias), k, n);
        assert!(err <= 1.0, "symmetric {symmetric}: {err} rounding bounds");
    }
}

#[test]
fn blocked_dequantize_layout_matches_onnx_runtime() {
    let (k, n) = (40, 5);
    let x = values(9, M * k);
    for symmetric in [true, false] {
        let mut model = layer_model(k, n, false);
        let report = quantize(&mut model, symmetric, Format::Dequantize, LayerPrecision::Int4);
        assert_eq!(model.opset(""), Some(21));
        assert!(report.notes.iter().any(|n| n.contains("17 to 21")), "{:?}", report.notes);
        let g = model.graph.as_ref().unwrap();
        assert_eq!(g.nodes().filter(|(_, n)| n.op_type == "MatMul").count(), 1);
        assert!(g.initializers().iter().all(|&v| g.value(v).name != "w"), "the float weight is gone");
        let w = decode_blocked_dq(&model);
        let original = RowMajor::from_k_by_n(k, n, &values(1, k * n));
        let q = block::rtn(&original, QuantSpec { bits: 4, block: 16, symmetric, negative_scales: false }, None);
        assert_close(&w, &q.dequantize().values);
        let got = run_ort(&model, &x, k);
        let err = against_reference(&got, &x, &w, None, k, n);
        assert!(err <= 1.0, "symmetric {symmetric}: {err} rounding bounds");
        let mut bad = model.clone();
        swap_nibbles(&mut bad, "_q4");
        let err = against_reference(&run_ort(&bad, &x, k), &x, &w, None, k, n);
        assert!(err > 100.0, "swapped nibbles went unnoticed ({err})");
    }
}

#[test]
fn bad_settings_are_refused_and_odd_layers_skipped() {
    let mut model = layer_model(40, 5, false);
    for (block, level) in [(24, None), (512, None), (32, Some(7))] {
        let config = Int4Config { block, accuracy_level: level, ..Int4Config::default() };
        let err = quantize_model(&mut model, &config, None).unwrap_err();
        assert!(matches!(err, Int4Error::Config(_)), "{err}");
    }
    let config = Int4Config { method: Method::Gptq(GptqOptions::default()), ..Int4Config::default() };
    assert!(quantize_model(&mut model, &config, None).unwrap_err().to_string().contains("calibration data"));
    // Excluded by op type: nothing changes.
    let config = Int4Config { exclude: vec!["MatMul".into()], ..Int4Config::default() };
    let report = quantize_model(&mut model, &config, None).unwrap();
    assert!(report.layers.is_empty());
    assert_eq!(report.skipped, vec![("layer".to_string(), "fp32 (excluded)".to_string())]);
    // Kept in float by the last-layer policy.
    let config = Int4Config { last: LayerPrecision::Float, ..Int4Config::default() };
    let report = quantize_model(&mut model, &config, None).unwrap();
    assert!(report.layers.is_empty() && report.skipped[0].1.contains("kept in float"));
}
