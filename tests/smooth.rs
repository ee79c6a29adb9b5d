//! SmoothQuant and `--tune` end to end. SmoothQuant on the transformer: static INT8 with minmax
//! ranges, with and without `--smooth-quant auto`, compared with the original on evaluation
//! samples apart from the calibration samples (sentence-embedding cosine); smoothing must raise
//! it. `--tune` on the cnn: the chosen form ranks ahead of FP32 in the manifest, or FP32 is
//! kept and the artifact has no quantization at all.

mod common;

use std::path::Path;

use common::data::{cosine, fixture, floats, outputs, samples, sentence, write_samples};
use common::{assert_failed, assert_ok, optimize, write_npz_folder};
use kiln_compiler::onnx::load_model;

fn run_int8(model: &Path, data: &Path, extra: &[&str], out: &Path) -> serde_json::Value {
    let mut args: Vec<String> = vec![model.display().to_string(), "--precision".into(), "int8".into()];
    args.extend(["--data".into(), data.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), out.display().to_string()]);
    let o = optimize(&args);
    assert_ok(&o);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    manifest["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "int8").unwrap().clone()
}

/// Minimum sentence-embedding cosine (output 3) of the artifact against the original.
fn min_cosine(artifact: &Path) -> f64 {
    let eval = samples(24, 2, sentence);
    let want = outputs(&fixture("transformer"), &eval);
    let got = outputs(artifact, &eval);
    want.iter().zip(&got).map(|(w, g)| cosine(&floats(&w[3].1), &floats(&g[3].1))).fold(1.0, f64::min)
}

#[test]
fn transformer_smoothquant_raises_minmax_int8_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_samples(&dir.path().join("cal"), &samples(24, 1, sentence));
    let plain_out = dir.path().join("plain");
    // The validation step's default tolerance would refuse the plain artifact: this test
    // measures both itself.
    let loose = ["--tolerance", "*:cosine_min>=0.9"];
    let plain = run_int8(&fixture("transformer"), &data, &loose, &plain_out);
    assert!(plain["facts"].get("smooth_quant").is_none());
    let smooth_out = dir.path().join("smooth");
    let smooth =
        run_int8(&fixture("transformer"), &data, &[&loose[..], &["--smooth-quant", "auto"]].concat(), &smooth_out);
    let facts = &smooth["facts"];
    assert_eq!(facts["smooth_quant"], "auto");
    let smoothed = facts["smooth_quant_smoothed"].as_u64().unwrap();
    assert!(smoothed >= 3, "at least one activation per layer smoothed: {facts}");
    eprintln!("alpha per MatMul input: {:#}", facts["smooth_quant_alpha"]);
    assert_eq!(facts["nodes_quantized"]["MatMul"], plain["facts"]["nodes_quantized"]["MatMul"], "same MatMuls int8");
    let (cos_plain, cos_smooth) =
        (min_cosine(&plain_out.join("model.onnx")), min_cosine(&smooth_out.join("model.onnx")));
    eprintln!("transformer int8 minmax: min cosine {cos_plain:.5} plain, {cos_smooth:.5} with SmoothQuant");
    assert!(cos_smooth > cos_plain, "SmoothQuant {cos_smooth} not above plain {cos_plain}");
    assert!(cos_smooth >= 0.99, "SmoothQuant cosine {cos_smooth}");
    // Deterministic whatever the thread count: the same bytes at --threads 1.
    let again = dir.path().join("again");
    run_int8(
        &fixture("transformer"),
        &data,
        &[&loose[..], &["--smooth-quant", "auto", "--threads", "1"]].concat(),
        &again,
    );
    let bytes = |d: &Path| std::fs::read(d.join("model.onnx")).unwrap();
    assert!(bytes(&smooth_out) == bytes(&again), "SmoothQuant artifact differs at --threads 1");
}

#[test]
fn bad_smooth_quant_alpha_and_dynamic_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("transformer").display().to_string();
    let out = dir.path().join("o").display().to_string();
    let o = optimize(&[&model, "--precision", "int8", "--smooth-quant", "1.5", "-o", &out]);
    assert_failed(&o, 2, &["--smooth-quant", "1.5"]);
    let o = optimize(&[&model, "--precision", "int8", "--dynamic", "--tune", "-o", &out]);
    assert_failed(&o, 2, &["--tune", "--dynamic"]);
    let o = optimize(&[&model, "--precision", "fp16", "--tune", "-o", &out]);
    assert_failed(&o, 2, &["--tune", "int8"]);
}

#[test]
fn cnn_tune_keeps_a_form_not_slower_than_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let cnn_samples: Vec<_> = (0..12).map(|i| common::fixture_sample("cnn", 100 + i)).collect();
    let data = write_npz_folder(&dir.path().join("cal"), &cnn_samples);
    let out = dir.path().join("out");
    let stage = run_int8(&fixture("cnn"), &data, &["--tune"], &out);
    let facts = &stage["facts"];
    let ranking: Vec<&str> = facts["tune_ranking"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let chosen = facts["tune_chosen"].as_str().unwrap();
    eprintln!("cnn --tune: ranking {ranking:?}, chosen {chosen}");
    assert_eq!(ranking[0], chosen, "the fastest form is kept");
    assert!(ranking.contains(&"fp32") && ranking.contains(&"default"), "{facts}");
    let m = load_model(&out.join("model.onnx")).unwrap();
    let qdq = m.graph.as_ref().unwrap().nodes().filter(|(_, n)| n.op_type == "QuantizeLinear").count();
    if chosen == "fp32" {
        assert_eq!(facts["mode"], "static (tuned: fp32 kept)");
        assert!(stage["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("FP32 kept")));
        assert_eq!(qdq, 0, "FP32 kept: nothing quantized");
    } else {
        let pos = |n: &str| ranking.iter().position(|r| *r == n).unwrap();
        assert!(pos(chosen) < pos("fp32"), "chosen {chosen} ranks after fp32: {ranking:?}");
        assert!(qdq > 0, "an int8 form was chosen but nothing is quantized");
    }
}
