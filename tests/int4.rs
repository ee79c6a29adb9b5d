//! End-to-end INT4: `optimize transformer --precision int4` for the ORT CPU target
//! (`com.microsoft.MatMulNBits`) and for TensorRT (opset-21 blocked `DequantizeLinear` →
//! `MatMul`); each artifact loads in ONNX Runtime's CPU provider and its sentence embeddings
//! stay close to the original's on the fixture's realistic inputs.
//!
//! Threshold: per-sentence cosine of the sentence embedding at least 0.97 (and token
//! embeddings 0.95) against FP32. Round to nearest at 4 bits (block 32) perturbs each of the 18
//! projections' outputs by about -20 dB; measured on 32 sentences of random WordPiece ids the
//! worst sentence keeps 0.978 and the mean is 0.982, so 0.97 is what a correct layout gives
//! with margin. A layout error (a swapped nibble order, a transposed block) gives about 0.3.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{assert_ok, optimize, write_npy};
use kiln::compiler::ir::{AttrLookup, Model};
use kiln::compiler::onnx::load_model;
use kiln::compiler::{DataType, Tensor};
use kiln_passes::testing::{Value, count_in, count_op, recipe_inputs, require_ort, run_in};
use serde_json::Value as Json;

const SENTENCE: &str = "461";
const TOKENS: &str = "onnx::Shape_422";

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The gate `optimize` holds the artifact to (the thresholds of this file's header), instead
/// of the INT4 default (cosine mean 0.98 on every output), which round to nearest at 4 bits
/// meets on this model only by a hair.
const TOLERANCE: &str = "461:cosine_min>=0.97,onnx::Shape_422:cosine_min>=0.95";

/// `optimize transformer --precision int4 -o OUT --tolerance … extra…`, with realistic samples
/// (`--data`, for calibration and the gate's evaluation) unless `extra` names some; returns
/// the artifact folder.
fn quantize(dir: &Path, extra: &[&str]) -> PathBuf {
    let path = kiln_fixtures::model("transformer").unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join("out");
    let data = dir.join("samples");
    let mut args = vec![path.as_os_str(), os("--precision"), os("int4"), os("-o"), out.as_os_str()];
    args.extend([os("--tolerance"), os(TOLERANCE)]);
    if !extra.contains(&"--data") {
        write_samples(&data, 8, 500);
        args.extend([os("--data"), data.as_os_str()]);
    }
    args.extend(extra.iter().map(|s| os(s)));
    assert_ok(&optimize(&args));
    out
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn output(outputs: &[(String, Value)], name: &str) -> Vec<f32> {
    let (_, v) = outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}"));
    v.as_tensor().unwrap().to_vec::<f32>().unwrap()
}

/// Worst and mean cosine of the sentence embedding, and worst per-token cosine, over `samples`
/// recipe inputs (seeds 1000…).
fn embedding_cosines(artifact: &Path, samples: u64) -> (f64, f64, f64) {
    require_ort().unwrap_or_else(|e| panic!("{e}"));
    let path = kiln_fixtures::model("transformer").unwrap_or_else(|e| panic!("{e}"));
    let original = load_model(&path).unwrap_or_else(|e| panic!("{e}"));
    let quantized = load_model(&artifact.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));
    let fixture = kiln_fixtures::fixture("transformer").unwrap_or_else(|e| panic!("{e}"));
    let (mut worst, mut sum, mut worst_token) = (1.0f64, 0.0f64, 1.0f64);
    for seed in 0..samples {
        let inputs = recipe_inputs(fixture, 1000 + seed).unwrap_or_else(|e| panic!("{e}"));
        let want = run_in(&original, path.parent(), &inputs).unwrap_or_else(|e| panic!("original: {e}"));
        let got = run_in(&quantized, Some(artifact), &inputs).unwrap_or_else(|e| panic!("int4 artifact: {e}"));
        let c = cosine(&output(&got, SENTENCE), &output(&want, SENTENCE));
        worst = worst.min(c);
        sum += c;
        let (t_got, t_want) = (output(&got, TOKENS), output(&want, TOKENS));
        for (a, b) in t_got.chunks(384).zip(t_want.chunks(384)) {
            worst_token = worst_token.min(cosine(a, b));
        }
    }
    (worst, sum / samples as f64, worst_token)
}

/// The manifest's INT4 stage report.
fn stage(artifact: &Path) -> Json {
    let manifest = read_json(&artifact.join("manifest.json"));
    assert_eq!(manifest["precision"], "int4", "{manifest}");
    manifest["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "int4").cloned().expect("an int4 stage")
}

/// The weighted projections of MiniLM-L3: 3 layers × (Q, K, V, attention output,
/// intermediate, output).
const PROJECTIONS: usize = 18;
const OUTPUT_PROJECTION: &str = "/model/model.0/auto_model/encoder/layer.2/output/dense/MatMul";

/// The output projection stays at 8 bits on ORT (`int8`), in float on TensorRT (which has no
/// weight-only INT8); the other projections are 4 bits.
fn assert_sizes_and_decisions(stage: &Json, output_projection_int8: bool) {
    let facts = &stage["facts"];
    let fp32_bytes = 3.0 * 4.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0);
    let before = facts["weight_bytes_before"].as_f64().unwrap();
    let after = facts["weight_bytes_after"].as_f64().unwrap();
    if output_projection_int8 {
        assert_eq!(facts["layers_quantized"], PROJECTIONS, "{stage}");
        assert_eq!(facts["layers_int8"], 1, "{stage}");
        assert_eq!(facts["bits_per_layer"][OUTPUT_PROJECTION], 8, "{stage}");
        assert_eq!(stage["decisions"][OUTPUT_PROJECTION], "int8");
        // FP32 bytes of the 18 weights: per layer four 384×384 and two 384×1536.
        assert_eq!(before, fp32_bytes);
    } else {
        assert_eq!(facts["layers_quantized"], PROJECTIONS - 1, "{stage}");
        assert_eq!(facts["layers_int8"], 0, "{stage}");
        assert!(stage["decisions"][OUTPUT_PROJECTION].as_str().unwrap().starts_with("fp32"), "{stage}");
        assert_eq!(before, fp32_bytes - 4.0 * 384.0 * 1536.0);
    }
    let ratio = after / before;
    assert!(ratio <= 0.35, "quantized weights take {ratio:.3} of their FP32 size");
    println!("weights {before} -> {after} bytes ({ratio:.3}x)");
}

#[test]
fn minilm_int4_for_ort_cpu_is_matmul_nbits_and_keeps_its_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let out = quantize(dir.path(), &["--target", "cpu", "--block", "32"]);
    let model = load_model(&out.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count_in(&model, "com.microsoft", "MatMulNBits"), PROJECTIONS);
    // Embedding tables stay in float unless asked (`--int4-embeddings`).
    assert_eq!(count_in(&model, "com.microsoft", "GatherBlockQuantized"), 0);
    // Only the attention products (activation × activation) are plain MatMuls now.
    assert_eq!(count_op(&model, "MatMul"), 6);
    let g = model.graph.as_ref().unwrap();
    for (_, n) in g.nodes().filter(|(_, n)| n.op_type == "MatMulNBits") {
        assert_eq!(n.attr_int("block_size"), Some(32));
        let bits = n.attr_int("bits").unwrap();
        assert_eq!(bits == 8, n.name.as_deref() == Some(OUTPUT_PROJECTION), "{:?}", n.name);
        // 8-bit blocks run on ORT's int8 kernel (accuracy_level 4); 4-bit ones in float.
        assert_eq!(n.attr_int("accuracy_level"), (bits == 8).then_some(4), "{:?}", n.name);
    }
    assert_sizes_and_decisions(&stage(&out), true);

    let (worst, mean, worst_token) = embedding_cosines(&out, 8);
    println!("cpu int4 rtn: sentence cosine mean {mean:.5}, worst {worst:.5}; worst token {worst_token:.5}");
    assert!(worst >= 0.97, "sentence embedding cosine {worst}");
    assert!(worst_token >= 0.95, "token embedding cosine {worst_token}");
}

#[test]
fn minilm_int4_embeddings_are_gather_block_quantized() {
    let dir = tempfile::tempdir().unwrap();
    let out = quantize(dir.path(), &["--target", "cpu", "--block", "32", "--int4-embeddings"]);
    let model = load_model(&out.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));
    // The word (30522 × 384) and position (512 × 384) tables; token types (2 × 384) stay.
    assert_eq!(count_in(&model, "com.microsoft", "GatherBlockQuantized"), 2);
    let original = load_model(&kiln_fixtures::model("transformer").unwrap()).unwrap();
    assert_eq!(count_op(&model, "Gather") + 2, count_op(&original, "Gather"));
    let stage = stage(&out);
    let facts = &stage["facts"];
    let before = facts["embedding_bytes_before"].as_f64().unwrap();
    let after = facts["embedding_bytes_after"].as_f64().unwrap();
    assert_eq!(before, 4.0 * 384.0 * (30522.0 + 512.0));
    // 4-bit codes and one f32 scale per 32: 5/32 of FP32.
    assert!(after / before < 0.16, "{after} / {before}");
    let size = std::fs::metadata(out.join("model.onnx")).unwrap().len();
    assert!(size < 12 << 20, "artifact of {size} bytes");
    let (worst, mean, worst_token) = embedding_cosines(&out, 8);
    println!(
        "cpu int4 rtn + 4-bit embeddings: {before} -> {after} embedding bytes, artifact {size} bytes; sentence cosine \
         mean {mean:.5}, worst {worst:.5}; worst token {worst_token:.5}"
    );
    assert!(worst >= 0.97, "sentence embedding cosine {worst}");
}

#[test]
fn minilm_int4_for_tensorrt_is_blocked_dequantize_and_runs_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    let out = quantize(dir.path(), &["--target", "tensorrt"]);
    let model = load_model(&out.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.opset(""), Some(21));
    assert_eq!(count_in(&model, "com.microsoft", "MatMulNBits"), 0);
    assert_eq!(count_op(&model, "DequantizeLinear"), PROJECTIONS - 1);
    let g = model.graph.as_ref().unwrap();
    let mut int4 = 0;
    for (_, n) in g.nodes().filter(|(_, n)| n.op_type == "DequantizeLinear") {
        let x: &Tensor = g.value(n.input(0).unwrap()).initializer().unwrap();
        let scale: &Tensor = g.value(n.input(1).unwrap()).initializer().unwrap();
        // TensorRT: symmetric (no zero point), strictly positive scales, int4 blocks along K.
        assert!(n.input(2).is_none());
        assert!(scale.to_vec::<f32>().unwrap().iter().all(|&s| s > 0.0));
        assert_eq!(x.dtype(), DataType::I4);
        int4 += 1;
        assert_eq!(n.attr_int("block_size"), Some(32));
        assert_eq!(n.attr_int("axis"), Some(0));
        assert_eq!(scale.dims(), [x.dims()[0] / 32, x.dims()[1]]);
        let consumer = g.value(n.output(0).unwrap()).uses()[0].node;
        assert_eq!(g.node(consumer).op_type, "MatMul");
    }
    assert_eq!(int4, PROJECTIONS - 1);
    assert_sizes_and_decisions(&stage(&out), false);

    let (worst, mean, worst_token) = embedding_cosines(&out, 8);
    println!(
        "tensorrt int4 rtn (run by ORT CPU): sentence cosine mean {mean:.5}, worst {worst:.5}; worst token {worst_token:.5}"
    );
    assert!(worst >= 0.97, "sentence embedding cosine {worst}");
    assert!(worst_token >= 0.95, "token embedding cosine {worst_token}");
}

fn model_of(out: &Path) -> Model {
    load_model(&out.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `count` recipe samples of the fixture as `<dir>/sNNN/<input>.npy`.
fn write_samples(dir: &Path, count: u64, seed: u64) {
    let fixture = kiln_fixtures::fixture("transformer").unwrap_or_else(|e| panic!("{e}"));
    for i in 0..count {
        let sample = dir.join(format!("s{i:03}"));
        std::fs::create_dir_all(&sample).unwrap();
        for g in kiln_fixtures::generate::inputs(fixture, seed + i) {
            let bytes: Vec<u8> = g.values.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
            write_npy(&sample.join(format!("{}.npy", g.name)), "<i8", &g.shape, &bytes);
        }
    }
}

#[test]
fn gptq_through_the_cli_lowers_each_layers_error_and_is_deterministic() {
    // GPTQ on the attention projections and intermediate layers (K = 384, cheap in a debug
    // build); the rest of the projections stay in float for this test.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_samples(&data, 8, 50);
    let original = load_model(&kiln_fixtures::model("transformer").unwrap()).unwrap();
    let excluded: Vec<String> = original
        .graph
        .as_ref()
        .unwrap()
        .nodes()
        .filter_map(|(_, n)| n.name.clone())
        .filter(|n| n.ends_with("output/dense/MatMul"))
        .collect();
    assert_eq!(excluded.len(), 6);
    let mut args: Vec<&str> = vec!["--int4-method", "gptq", "--data", data.to_str().unwrap(), "--threads", "1"];
    for e in &excluded {
        args.extend(["--exclude", e.as_str()]);
    }
    let a = dir.path().join("a");
    let out = quantize(&a, &args);
    let stage = stage(&out);
    assert_eq!(stage["facts"]["layers_quantized"], 12, "{stage}");
    assert_eq!(stage["facts"]["method"], "gptq");
    let ratios = stage["facts"]["gptq_output_error_vs_rtn"].as_object().expect("per-layer GPTQ errors");
    // GPTQ runs on the 4-bit layers; the last projection left (layer 2's intermediate) is 8
    // bits and rounds to nearest.
    assert_eq!(stage["facts"]["layers_int8"], 1, "{stage}");
    assert_eq!(ratios.len(), 11);
    let eight: Vec<&String> =
        stage["facts"]["bits_per_layer"].as_object().unwrap().iter().filter(|(_, b)| b == &8).map(|(n, _)| n).collect();
    assert!(eight.iter().all(|n| !ratios.contains_key(n.as_str())), "{eight:?}");
    for (node, r) in ratios {
        let r = r.as_f64().unwrap();
        assert!(r < 1.0, "{node}: GPTQ's output error is {r} of round to nearest's");
    }
    for e in &excluded {
        assert_eq!(stage["decisions"][e.as_str()], "fp32 (excluded)");
    }
    // Same data and options, another thread count: the same bytes.
    let b = dir.path().join("b");
    let mut args_b = args.clone();
    let n = args_b.iter().position(|a| *a == "--threads").unwrap();
    args_b[n + 1] = "2";
    let out_b = quantize(&b, &args_b);
    assert_eq!(std::fs::read(out.join("model.onnx")).unwrap(), std::fs::read(out_b.join("model.onnx")).unwrap());
    assert_eq!(count_in(&model_of(&out), "com.microsoft", "MatMulNBits"), 12);
    let (worst, mean, _) = embedding_cosines(&out, 4);
    println!("gptq (12 layers): sentence cosine mean {mean:.5}, worst {worst:.5}");
    assert!(worst >= 0.97, "{worst}");
}

#[test]
fn unavailable_methods_and_bad_blocks_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = kiln_fixtures::model("transformer").unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("out");
    // Real samples, so that the data-aware methods do not warn about synthetic ones first.
    let data = dir.path().join("data");
    write_samples(&data, 2, 7);
    let data = data.to_str().unwrap();
    let (awq, block, learned) =
        (["--int4-method", "awq", "--data", data], ["--block", "48"], ["--int4-method", "learned", "--data", data]);
    let mut cases: Vec<(&[&str], &str)> = vec![(&awq, "AWQ is not implemented"), (&block, "block size 48")];
    // Without the feature, the refusal names it.
    if cfg!(not(feature = "learned-rounding")) {
        cases.push((&learned, "--features learned-rounding"));
    }
    for (extra, needle) in cases {
        let mut args = vec![path.as_os_str(), os("--precision"), os("int4"), os("-o"), out.as_os_str()];
        args.extend(extra.iter().map(|s| os(s)));
        let run = optimize(&args);
        common::assert_failed(&run, 2, &[needle]);
        assert!(!out.exists());
    }
}

/// Learned rounding (AdaRound) against round to nearest and GPTQ on the same realistic sentences:
/// on every projection its output error on the calibration data is below RTN's (it keeps RTN's
/// grid and only changes which way weights round), and the sentence embeddings end closer to
/// FP32 than RTN's on held-out inputs.
#[cfg(feature = "learned-rounding")]
#[test]
fn learned_rounding_beats_round_to_nearest_on_every_layer_and_on_the_embeddings() {
    use common::data::{samples, sentence};
    let dir = tempfile::tempdir().unwrap();
    let data = common::data::write_samples(&dir.path().join("data"), &samples(16, 77, sentence));
    let data = data.to_str().unwrap();
    let run = |method: &str| quantize(&dir.path().join(method), &["--int4-method", method, "--data", data]);
    let (learned, rtn, gptq) = (run("learned"), run("rtn"), run("gptq"));

    let stage_l = stage(&learned);
    assert_eq!(stage_l["facts"]["method"], "learned");
    assert_sizes_and_decisions(&stage_l, true);
    assert!(stage_l["warnings"].as_array().is_none_or(|w| w.is_empty()), "{stage_l}");
    let ratios = stage_l["facts"]["learned_output_error_vs_rtn"].as_object().expect("per-layer learned errors");
    let stage_g = stage(&gptq);
    let gptq_ratios = stage_g["facts"]["gptq_output_error_vs_rtn"].as_object().expect("per-layer GPTQ errors");
    // Learned rounding runs on the 4-bit layers; the 8-bit output projection rounds to nearest.
    assert_eq!(ratios.len(), PROJECTIONS - 1);
    assert!(!ratios.contains_key(OUTPUT_PROJECTION), "{stage_l}");
    for (node, r) in ratios {
        let r = r.as_f64().unwrap();
        let g = gptq_ratios.get(node).and_then(Json::as_f64).unwrap_or(f64::NAN);
        println!("{node}: output error vs RTN: learned {r:.4}, gptq {g:.4}");
        assert!(r < 1.0, "{node}: learned rounding's output error is {r} of round to nearest's");
    }

    let (l_worst, l_mean, l_token) = embedding_cosines(&learned, 8);
    let (r_worst, r_mean, r_token) = embedding_cosines(&rtn, 8);
    let (g_worst, g_mean, g_token) = embedding_cosines(&gptq, 8);
    println!("sentence cosine mean / worst, worst token: learned {l_mean:.5} / {l_worst:.5}, {l_token:.5}");
    println!("                                           rtn     {r_mean:.5} / {r_worst:.5}, {r_token:.5}");
    println!("                                           gptq    {g_mean:.5} / {g_worst:.5}, {g_token:.5}");
    assert!(l_mean >= r_mean, "learned {l_mean} vs rtn {r_mean}");
    assert!(l_worst >= 0.97, "{l_worst}");
}
