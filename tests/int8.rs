//! `optimize --precision int8` end to end on the trained fixtures: static QDQ on the cnn and
//! the transformer, dynamic on the transformer and the recurrent model (its accuracy on audio
//! is in `tests/int8_recurrent.rs`). Each artifact is loaded in ONNX Runtime with its
//! optimizations on (what deployment runs) and compared with the original on evaluation
//! samples apart from the calibration samples: top-1 agreement for the cnn, sentence-embedding
//! cosine for the transformer, max/mean abs error for every output.

mod common;

use std::path::Path;

use common::data::{cosine, fixture, floats, outputs, samples, sentence, text_line, write_samples};
use common::{assert_failed, assert_ok, optimize, write_npy};
use kiln_compiler::onnx::load_model;
use kiln_compiler::runtime::Value;

/// Max and mean abs error of output `k` over all samples.
fn abs_errors(want: &[Vec<(String, Value)>], got: &[Vec<(String, Value)>], k: usize) -> (f64, f64) {
    let (mut max, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
    for (w, g) in want.iter().zip(got) {
        for (a, b) in floats(&w[k].1).iter().zip(floats(&g[k].1)) {
            max = max.max((a - b).abs());
            sum += (a - b).abs();
            n += 1;
        }
    }
    (max, sum / n as f64)
}

fn run_int8(model: &Path, data: Option<&Path>, extra: &[&str], out: &Path) -> serde_json::Value {
    let mut args: Vec<String> = vec![model.display().to_string(), "--precision".into(), "int8".into()];
    if let Some(d) = data {
        args.extend(["--data".into(), d.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), out.display().to_string()]);
    let o = optimize(&args);
    assert_ok(&o);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    manifest["stages"][0].clone()
}

#[test]
fn cnn_static_int8_keeps_top1() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_samples(&dir.path().join("cal"), &samples(24, 1, text_line));
    let out = dir.path().join("out");
    let stage = run_int8(&fixture("cnn"), Some(&data), &[], &out);
    assert_eq!(stage["facts"]["mode"], "static");
    // The last 20% of --data is held apart for validation: 19 of 24 samples calibrate.
    assert_eq!(stage["facts"]["calibration_samples"], 19);
    // 53 Convs: the depthwise ones stay float on x86 (ORT's int8 depthwise kernel is slower),
    // and so do those under 4096 weights (their Q/DQ cost more than int8 saves); 9 are int8.
    let convs: Vec<(&String, &str)> = stage["decisions"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("Conv"))
        .map(|(k, v)| (k, v.as_str().unwrap()))
        .collect();
    assert_eq!(convs.len(), 53);
    let small = |why: &str| {
        let n = why.strip_prefix("fp32 (").and_then(|w| w.split(' ').next()).and_then(|n| n.parse::<usize>().ok());
        n.is_some_and(|n| n < kiln::passes::fuse::INT8_MIN_CONV_WEIGHT) && why.contains(" weights: ")
    };
    let int8 = convs.iter().filter(|(_, v)| *v == "int8").count();
    for (k, v) in &convs {
        assert!(*v == "int8" || v.starts_with("fp32 (depthwise") || small(v), "{k}: {v}");
    }
    assert_eq!(stage["facts"]["nodes_quantized"]["Conv"], int8, "{stage}");
    assert!(int8 >= 9, "{int8} int8 Convs");
    let eval = samples(48, 2, text_line);
    let want = outputs(&fixture("cnn"), &eval);
    let got = outputs(&out.join("model.onnx"), &eval);
    let argmax = |v: &[f64]| if v[0] >= v[1] { 0 } else { 1 };
    let agree = want.iter().zip(&got).filter(|(w, g)| argmax(&floats(&w[0].1)) == argmax(&floats(&g[0].1))).count();
    let (max, mean) = abs_errors(&want, &got, 0);
    eprintln!("cnn int8: top-1 agreement {agree}/48, max abs {max:.4}, mean abs {mean:.4}");
    assert!(agree as f64 >= 0.9 * 48.0, "top-1 agreement {agree}/48");
    assert!(mean < 0.1, "mean abs error {mean}");
    // Structure: weights stored as int8, activations behind Q/DQ.
    let m = load_model(&out.join("model.onnx")).unwrap();
    let g = m.graph.as_ref().unwrap();
    let int8_weights = g
        .initializers()
        .iter()
        .filter(|&&v| g.value(v).initializer().unwrap().dtype() == kiln_compiler::DataType::I8)
        .count();
    assert!(int8_weights >= int8, "{int8_weights} int8 initializers for {int8} int8 Convs");
}

fn transformer_eval(out: &Path) -> (f64, f64, f64) {
    let eval = samples(24, 2, sentence);
    let want = outputs(&fixture("transformer"), &eval);
    let got = outputs(&out.join("model.onnx"), &eval);
    // Output 3 is the sentence embedding.
    let cos: Vec<f64> = want.iter().zip(&got).map(|(w, g)| cosine(&floats(&w[3].1), &floats(&g[3].1))).collect();
    let min = cos.iter().copied().fold(1.0, f64::min);
    let (max_abs, mean_abs) = abs_errors(&want, &got, 3);
    (min, max_abs, mean_abs)
}

#[test]
fn transformer_static_int8_keeps_embedding_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_samples(&dir.path().join("cal"), &samples(24, 1, sentence));
    let out = dir.path().join("out");
    let stage = run_int8(&fixture("transformer"), Some(&data), &["--calibration", "percentile:99.99"], &out);
    assert!(stage["facts"]["nodes_quantized"]["MatMul"].as_u64().unwrap() >= 18, "{stage}");
    let decisions = stage["decisions"].as_object().unwrap();
    assert!(decisions.values().any(|d| d.as_str().unwrap().contains("no calibrated range")), "masks stay float");
    let (cos, max_abs, mean_abs) = transformer_eval(&out);
    eprintln!("transformer int8 static: min cosine {cos:.5}, max abs {max_abs:.4}, mean abs {mean_abs:.5}");
    assert!(cos >= 0.99, "sentence embedding cosine {cos}");
}

#[test]
fn transformer_dynamic_int8_keeps_embedding_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stage = run_int8(&fixture("transformer"), None, &["--dynamic"], &out);
    assert_eq!(stage["facts"]["mode"], "dynamic");
    assert_eq!(stage["facts"]["nodes_quantized"]["MatMul"], 18, "{stage}");
    let (cos, max_abs, mean_abs) = transformer_eval(&out);
    eprintln!("transformer int8 dynamic: min cosine {cos:.5}, max abs {max_abs:.4}, mean abs {mean_abs:.5}");
    assert!(cos >= 0.99, "sentence embedding cosine {cos}");
}

#[test]
fn recurrent_dynamic_reports_what_stays_float() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stage = run_int8(&fixture("recurrent"), None, &["--dynamic"], &out);
    let decisions = stage["decisions"].as_object().unwrap();
    assert!(decisions.values().any(|d| d.as_str().unwrap().contains("ConvInteger")), "{stage}");
    // The LSTMs become DynamicQuantizeLSTM (accuracy on held-apart audio: tests/int8_recurrent.rs).
    assert_eq!(stage["facts"]["nodes_quantized"]["LSTM"], 4, "{stage}");
}

#[test]
fn mismatched_calibration_data_is_bad_input_naming_input_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    let d = bad.join("sample_000");
    std::fs::create_dir_all(&d).unwrap();
    write_npy(&d.join("x.npy"), "<f4", &[1, 4, 48, 192], &vec![0u8; 4 * 4 * 48 * 192]);
    let out = dir.path().join("out");
    let o = optimize(&[
        fixture("cnn").to_str().unwrap(),
        "--precision",
        "int8",
        "--data",
        bad.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_failed(&o, 2, &["`x`", "sample_000"]);
    assert!(!out.exists());
}
