//! Targets end to end: for each fixture × target the artifact (model, manifest with the
//! linter's report, report.md, the target's files), its accuracy on ONNX Runtime CPU, the
//! ONNX checker (`full_check`) on every artifact, byte-identical reruns at any thread count,
//! `--force`, presets and config files, and the linter refusing an illegal QDQ model before
//! anything is written.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use common::{Outcome, onnx_check, optimize_env};
use kiln::compiler::DataType;
use kiln::compiler::ir::{Graph, Model, NodeSpec, OpsetImport, TensorType, Type};
use kiln::compiler::onnx::{SaveOptions, load_model, save_model};
use kiln::compiler::{Tensor, shape::infer_model};
use kiln_passes::testing::{abs_tol, compare_outputs, fixture_inputs, require_ort, run};
use serde_json::Value as Json;

fn optimize(args: &[&OsStr]) -> Outcome {
    optimize_env(args, &[])
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn assert_ok(o: &Outcome) {
    assert_eq!(o.code, Some(0), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture shapes the FLOPs are counted at (and the TensorRT profile is built for).
fn shape_args(fixture: &str) -> Vec<String> {
    match fixture {
        "cnn" => vec!["--shape".into(), "x=1,3,48,192".into()],
        "cnn_lcnet" => vec!["--shape".into(), "x=1,3,224,224".into()],
        "transformer" => vec!["--dim".into(), "batch_size=1".into(), "--dim".into(), "sequence_length=16".into()],
        "transformer_ocr" => vec!["--shape".into(), "x=1,3,48,320".into()],
        other => panic!("no shapes for {other}"),
    }
}

fn level(target: &str) -> &'static str {
    if target == "tensorrt" { "O2" } else { "O3" }
}

/// Optimizes a fixture for a target into `out`.
fn artifact(fixture: &str, target: &str, out: &Path, extra: &[&str]) -> Outcome {
    let model = kiln_fixtures::model(fixture).unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<String> = vec![
        model.display().to_string(),
        "--target".into(),
        target.into(),
        "--opt".into(),
        level(target).into(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(shape_args(fixture));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    optimize(&args)
}

#[test]
fn every_fixture_and_target_gives_a_linted_checked_accurate_artifact() {
    require_ort().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for fixture in ["cnn", "transformer"] {
        let original = load_model(&kiln_fixtures::model(fixture).unwrap()).unwrap();
        let inputs = fixture_inputs(fixture, 0).unwrap();
        let want = run(&original, &inputs).unwrap();
        for target in ["cpu", "cuda", "tensorrt"] {
            let out = dir.path().join(format!("{fixture}-{target}"));
            assert_ok(&artifact(fixture, target, &out, &[]));
            let m = read_json(&out.join("manifest.json"));
            let lint = &m["lint"];
            assert_eq!(lint["target"], target);
            assert_eq!(lint["errors"].as_array().map(Vec::len), Some(0), "{fixture}/{target}: {lint:#}");
            // FLOPs were counted at the given shapes: every compute node has a shape.
            assert!(lint["compute"]["total_flops"].as_u64().unwrap() > 1_000_000, "{fixture}/{target}: {lint:#}");
            assert_eq!(lint["compute"]["unknown_shape_nodes"].as_array().map(Vec::len), Some(0), "{lint:#}");
            let report = std::fs::read_to_string(out.join("report.md")).unwrap();
            assert!(report.contains(&format!("## Target check ({target})")), "{report}");
            let files: Vec<&str> = m["target_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
            if target == "tensorrt" {
                assert_eq!(files, ["tensorrt.json", "trtexec.sh"]);
                let trt = read_json(&out.join("tensorrt.json"));
                assert!(trt["trtexec"].as_array().unwrap().iter().any(|a| a == "--stronglyTyped"));
                // No contrib op reaches TensorRT.
                let ops = m["model"]["op_histogram"].as_object().unwrap();
                assert!(!ops.keys().any(|k| k.starts_with("com.microsoft.")), "{ops:?}");
            } else {
                assert!(files.is_empty());
            }
            // The same graph on ORT CPU (contrib ops of the cuda artifact run there too).
            let got = run(&load_model(&out.join("model.onnx")).unwrap(), &inputs).unwrap();
            compare_outputs(&got, &want, abs_tol(2e-4)).unwrap_or_else(|e| panic!("{fixture}/{target}: {e}"));
            checked.push(out.join("model.onnx"));
        }
    }
    onnx_check(&checked);
}

/// The artifact folder's files by name.
fn artifact_files(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        files.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap());
    }
    assert!(files.contains_key("model.onnx") && files.contains_key("manifest.json") && files.contains_key("report.md"));
    files
}

/// Same input and options, any thread count, a rerun: the same bytes, for the FP32 rewrite and
/// for every lowered precision, calibration (statistics merged from parallel observers),
/// validation and the TensorRT target's files included.
#[test]
fn artifacts_are_byte_identical_across_runs_and_threads() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<_> = (0..12).map(|i| common::fixture_sample("cnn", 200 + i)).collect();
    let data = common::write_npz_folder(&dir.path().join("data"), &samples);
    let data = data.to_str().unwrap();
    let cases: [(&str, &str, &[&str]); 5] = [
        ("fp32", "cpu", &[]),
        ("fp32", "tensorrt", &[]),
        ("int8", "cpu", &["--precision", "int8", "--data", data]),
        ("int8", "tensorrt", &["--precision", "int8", "--data", data]),
        ("fp16", "cuda", &["--precision", "fp16"]),
    ];
    for (precision, target, extra) in cases {
        let mut first: Option<BTreeMap<String, Vec<u8>>> = None;
        for (i, threads) in ["1", "2", "4", "1"].iter().enumerate() {
            let out = dir.path().join(format!("{precision}-{target}-{i}"));
            assert_ok(&artifact("cnn", target, &out, &[&["--threads", threads][..], extra].concat()));
            let files = artifact_files(&out);
            match &first {
                None => first = Some(files),
                Some(want) => {
                    assert_eq!(files.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                    for (name, bytes) in want {
                        assert!(files[name] == *bytes, "{precision} {target} --threads {threads}: {name} differs");
                    }
                }
            }
        }
    }
}

#[test]
fn an_artifact_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    assert_ok(&artifact("cnn", "cpu", &out, &[]));
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let again = artifact("cnn", "tensorrt", &out, &[]);
    assert_eq!(again.code, Some(2), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before, "the artifact changed without --force");
    assert_ok(&artifact("cnn", "tensorrt", &out, &["--force"]));
    assert_eq!(read_json(&out.join("manifest.json"))["target"], "tensorrt");
    // A folder that is not an artifact is never replaced, even with --force.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let refused = artifact("cnn", "cpu", &mine, &["--force"]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep");
}

#[test]
fn presets_and_config_files_set_options_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let model = kiln_fixtures::model("cnn").unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, "target = \"tensorrt\"\nopt = \"O1\"\nshapes = [\"x=1x3x48x192:4x3x48x192:8x3x48x192\"]\n")
        .unwrap();
    let out = dir.path().join("c");
    assert_ok(&optimize(&[model.as_os_str(), os("--config"), config.as_os_str(), os("-o"), out.as_os_str()]));
    let m = read_json(&out.join("manifest.json"));
    assert_eq!((m["target"].as_str(), m["opt_level"].as_str()), (Some("tensorrt"), Some("O1")));
    let trt = read_json(&out.join("tensorrt.json"));
    assert_eq!(trt["onnxruntime_tensorrt_provider"]["trt_profile_max_shapes"], "x:8x3x48x192");

    // A flag on the command line wins over the file.
    let out2 = dir.path().join("c2");
    let args =
        [model.as_os_str(), os("--config"), config.as_os_str(), os("--target"), os("cpu"), os("-o"), out2.as_os_str()];
    let o = optimize(&args);
    // --shapes is TensorRT's: the cpu target says it ignores it.
    assert_ok(&o);
    assert!(o.stderr.contains("ignores it"), "{}", o.stderr);
    assert_eq!(read_json(&out2.join("manifest.json"))["target"], "cpu");

    // A preset expands to its flags (cuda-fp16: target cuda at O3); --precision fp32 wins.
    let out3 = dir.path().join("p");
    let args =
        [model.as_os_str(), os("--preset"), os("cuda-fp16"), os("--precision"), os("fp32"), os("-o"), out3.as_os_str()];
    assert_ok(&optimize(&args));
    let m = read_json(&out3.join("manifest.json"));
    assert_eq!(
        (m["target"].as_str(), m["opt_level"].as_str(), m["precision"].as_str()),
        (Some("cuda"), Some("O3"), Some("fp32"))
    );

    // Unknown keys name the file and the key.
    std::fs::write(&config, "precison = \"int8\"\n").unwrap();
    let o = optimize(&[model.as_os_str(), os("--config"), config.as_os_str(), os("-o"), out3.as_os_str()]);
    assert_eq!(o.code, Some(2));
    assert!(o.stderr.contains("kiln.toml") && o.stderr.contains("precison"), "{}", o.stderr);
}

/// x → Q/DQ (zero point `zp`) → Conv with a per-channel int8 weight → y, saved as ONNX.
fn qdq_conv(path: &Path, zp: i8) {
    let mut g = Graph::new();
    let x = g.add_input("x", Some(Type::tensor(TensorType::with_dims(DataType::F32, &[1, 3, 8, 8]))));
    let init = |g: &mut Graph, name: &str, t: Tensor| g.add_initializer(name, Arc::new(t));
    let s = init(&mut g, "s", Tensor::scalar(0.05f32));
    let z = init(&mut g, "z", Tensor::scalar(zp));
    let q = g.add_node(NodeSpec::new("QuantizeLinear").name("q_x").inputs([x, s, z]).outputs(["xq"]));
    let xq = g.node(q).output(0).unwrap();
    let d = g.add_node(NodeSpec::new("DequantizeLinear").name("dq_x").inputs([xq, s, z]).outputs(["xd"]));
    let xd = g.node(d).output(0).unwrap();
    let wv: Vec<i8> = (0..108).map(|i| (i % 17) as i8 - 8).collect();
    let w = init(&mut g, "w", Tensor::from_slice(vec![4, 3, 3, 3], &wv).unwrap());
    let ws = init(&mut g, "ws", Tensor::from_slice(vec![4], &[0.01f32, 0.02, 0.03, 0.04]).unwrap());
    let wz = init(&mut g, "wz", Tensor::from_slice(vec![4], &[0i8; 4]).unwrap());
    let wd = g.add_node(
        NodeSpec::new("DequantizeLinear")
            .name("dq_w")
            .inputs([w, ws, wz])
            .outputs(["wd"])
            .attr(kiln::compiler::ir::Attribute::int("axis", 0)),
    );
    let wdv = g.node(wd).output(0).unwrap();
    let c = g.add_node(NodeSpec::new("Conv").name("conv").inputs([xd, wdv]).outputs(["y"]));
    let y = g.node(c).output(0).unwrap();
    g.push_output(y);
    g.name = Some("qdq".into());
    let mut model = Model {
        ir_version: Some(10),
        opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(21) }],
        graph: Some(g),
        ..Model::default()
    };
    infer_model(&mut model);
    save_model(&model, path, &SaveOptions::default()).unwrap();
}

#[test]
fn the_linter_refuses_an_illegal_artifact_before_writing_and_accepts_its_twin() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("asym.onnx");
    qdq_conv(&bad, 5);
    let out = dir.path().join("trt");
    let o = optimize(&[bad.as_os_str(), os("--target"), os("tensorrt"), os("-o"), out.as_os_str()]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("trt-zero-point") && o.stderr.contains("'q_x'"), "{}", o.stderr);
    assert!(!out.exists(), "an artifact was written despite lint errors");
    // ORT CPU takes asymmetric activations: the same model is a clean cpu artifact.
    let cpu = dir.path().join("cpu");
    assert_ok(&optimize(&[bad.as_os_str(), os("--target"), os("cpu"), os("-o"), cpu.as_os_str()]));
    let m = read_json(&cpu.join("manifest.json"));
    assert_eq!(m["lint"]["compute"]["int8_share"], 1.0);
    // The symmetric twin passes for TensorRT.
    let good = dir.path().join("sym.onnx");
    qdq_conv(&good, 0);
    assert_ok(&optimize(&[good.as_os_str(), os("--target"), os("tensorrt"), os("-o"), out.as_os_str()]));
    assert_eq!(read_json(&out.join("manifest.json"))["lint"]["errors"].as_array().map(Vec::len), Some(0));
    onnx_check(&[cpu.join("model.onnx"), out.join("model.onnx")]);
}

/// Lowered precisions per target: the presets' artifacts lint clean (errors), pass
/// `onnx.checker`, and validate against the original on ORT CPU (the same graph the GPU
/// providers would get; they are not on this machine).
#[test]
fn presets_give_lint_clean_checked_validated_artifacts_for_every_target() {
    use common::data::{samples, sentence, text_line, write_samples};
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for (fixture, make) in [("cnn", text_line as fn(&mut _) -> _), ("transformer", sentence)] {
        let data = write_samples(&dir.path().join(format!("{fixture}-data")), &samples(20, 1, make));
        for preset in ["cpu-int8", "cpu-int8-dynamic", "tensorrt-int8", "cuda-fp16", "int4-weight-only"] {
            if fixture == "cnn" && matches!(preset, "cpu-int8-dynamic" | "int4-weight-only") {
                continue; // no MatMul weights worth lowering in a CNN
            }
            // The text-direction classifier is judged by its decision; cosine of two
            // probabilities swings with confidence. MiniLM by its embeddings.
            let tolerance = if fixture == "cnn" { "*:top1>=0.75" } else { "*:cosine_mean>=0.98" };
            let out = dir.path().join(format!("{fixture}-{preset}"));
            let m = preset_artifact(fixture, preset, &data, &out, Some(tolerance));
            if preset == "tensorrt-int8" {
                assert_tensorrt_placement(fixture, &m);
            }
            if preset == "cpu-int8" {
                assert_no_lint_warning(fixture, preset, &m);
            }
            checked.push(out.join("model.onnx"));
        }
    }
    onnx_check(&checked);
}

/// Optimizes `fixture` with `preset` and calibration `data` into `out` (validated with
/// `tolerance`, or the precision's default); asserts no lint error, a passing validation and,
/// for INT8, that most compute runs in INT8. Returns the manifest.
fn preset_artifact(fixture: &str, preset: &str, data: &Path, out: &Path, tolerance: Option<&str>) -> Json {
    let model = kiln_fixtures::model(fixture).unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<String> = vec![model.display().to_string(), "--preset".into(), preset.into()];
    args.extend(["--data".into(), data.display().to_string(), "-o".into(), out.display().to_string()]);
    args.extend(shape_args(fixture));
    if let Some(t) = tolerance {
        args.extend(["--tolerance".into(), t.into()]);
    }
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    assert_ok(&optimize(&args));
    let m = read_json(&out.join("manifest.json"));
    assert_eq!(m["lint"]["errors"].as_array().map(Vec::len), Some(0), "{fixture}/{preset}: {:#}", m["lint"]);
    assert_eq!(m["validation"]["pass"], true, "{fixture}/{preset}: {:#}", m["validation"]);
    if preset.contains("int8") {
        // The cpu scheme keeps depthwise and small Convs float, where ORT CPU is faster: the
        // PP-OCR classifier (MobileNetV3 x0.35) runs 38% of its FLOPs in INT8 that way.
        let floor = if fixture == "cnn" && preset.starts_with("cpu") { 0.3 } else { 0.5 };
        let share = m["lint"]["compute"]["int8_share"].as_f64().unwrap();
        assert!(share > floor, "{fixture}/{preset}: int8 share {share}");
    }
    m
}

/// The rules TensorRT's placement (Q/DQ on the inputs of weighted ops, on the residual input
/// of an Add fused into one, never alone) keeps: none of them may fire.
const TRT_PLACEMENT_RULES: &[&str] =
    &["trt-output-quantized", "qdq-breaks-fusion", "unquantized-residual-add", "lone-qdq", "trt-shared-dq"];

/// A tensorrt-int8 artifact: no finding of the placement rules, and no warning at all (each
/// fixture lints clean; a warning that appears here is a placement to fix or to justify).
fn assert_tensorrt_placement(fixture: &str, m: &Json) {
    let lint = &m["lint"];
    let findings = lint["errors"].as_array().unwrap().iter().chain(lint["warnings"].as_array().unwrap());
    let placement: Vec<&Json> = findings.filter(|f| TRT_PLACEMENT_RULES.iter().any(|r| f["rule"] == *r)).collect();
    assert!(placement.is_empty(), "{fixture}/tensorrt-int8: {placement:#?}");
    assert_eq!(lint["warnings"].as_array().map(Vec::len), Some(0), "{fixture}/tensorrt-int8: {lint:#}");
    assert_eq!(lint["compute"]["int8_share"], 1.0, "{fixture}/tensorrt-int8: every weighted op in INT8");
}

/// Kiln's own artifact lints clean: a warning is a placement to fix or a rule to correct (the
/// CPU rules once flagged Conv → HardSwish and float depthwise Convs, ORT CPU's best forms).
fn assert_no_lint_warning(fixture: &str, preset: &str, m: &Json) {
    assert_eq!(m["lint"]["warnings"].as_array().map(Vec::len), Some(0), "{fixture}/{preset}: {:#}", m["lint"]);
}

/// TensorRT's placement on the two fixtures the preset test above does not cover (PP-LCNet,
/// the PP-OCRv4 SVTR recognizer), calibrated and validated on the fixtures' generated inputs
/// with the INT8 default tolerance (cosine mean >= 0.99, min >= 0.98).
#[test]
fn tensorrt_int8_places_qdq_on_weighted_inputs_on_more_fixtures() {
    use common::{fixture_sample, write_npz_folder};
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for fixture in ["cnn_lcnet", "transformer_ocr"] {
        let samples: Vec<_> = (0..12).map(|seed| fixture_sample(fixture, seed)).collect();
        let data = write_npz_folder(&dir.path().join(format!("{fixture}-data")), &samples);
        let out = dir.path().join(format!("{fixture}-tensorrt-int8"));
        let m = preset_artifact(fixture, "tensorrt-int8", &data, &out, None);
        assert_tensorrt_placement(fixture, &m);
        let tolerance = m["validation"]["tolerance"].as_str().unwrap_or_default();
        assert!(tolerance.contains("cosine_mean>=0.99") && tolerance.contains("cosine_min>=0.98"), "{tolerance}");
        // ORT CPU's placement on the same data, for the record (`--nocapture`).
        let cpu = preset_artifact(fixture, "cpu-int8", &data, &dir.path().join(format!("{fixture}-cpu")), None);
        assert_no_lint_warning(fixture, "cpu-int8", &cpu);
        for (preset, m) in [("tensorrt-int8", &m), ("cpu-int8", &cpu)] {
            for o in m["validation"]["outputs"].as_array().unwrap() {
                let metric = |k: &str| o["metrics"][k].as_f64().unwrap_or(f64::NAN);
                eprintln!(
                    "{fixture}/{preset} {}: cosine mean {:.5} min {:.5}, top1 {:.3}",
                    o["name"].as_str().unwrap_or("?"),
                    metric("cosine_mean"),
                    metric("cosine_min"),
                    metric("top1")
                );
            }
        }
        checked.push(out.join("model.onnx"));
    }
    onnx_check(&checked);
}

/// What the CUDA provider runs on the GPU, measured on an H100 with ONNX Runtime 1.31.1
/// (`xtask/gpu/`): in FP16, FusedConv and Clip below opset 12 have no GPU kernel (they ran on
/// the CPU with a copy each side: cnn cuda-fp16 was 0.60x FP32, 0.94x after); in INT8,
/// com.microsoft Q/DQ and INT32 DequantizeLinear have none (cnn cuda-int8 0.31x -> 0.55x); in
/// FP32, a FusedConv with any activation but Relu fails to load. On the cnn fixture (opset 11,
/// Conv+Relu, Conv+HardSigmoid, HardSwish written with Clip) the cuda artifacts must hold none
/// of them, while the CPU artifact still fuses.
#[test]
fn cuda_artifacts_hold_only_ops_the_cuda_provider_runs_on_the_gpu() {
    use common::data::{samples, text_line, write_samples};
    let dir = tempfile::tempdir().unwrap();
    let data = write_samples(&dir.path().join("data"), &samples(12, 1, text_line));
    let ops = |out: &Path| -> (Model, BTreeMap<String, usize>) {
        let m = load_model(&out.join("model.onnx")).unwrap();
        let mut count = BTreeMap::new();
        for (_, n) in m.graph.as_ref().unwrap().nodes() {
            *count.entry(format!("{}:{}", n.domain(), n.op_type)).or_insert(0) += 1;
        }
        (m, count)
    };
    // The CPU artifact fuses Conv+HardSigmoid; the CUDA FusedConv refused that one at load.
    let cpu = dir.path().join("cpu");
    assert_ok(&artifact("cnn", "cpu", &cpu, &[]));
    assert!(ops(&cpu).1.get("com.microsoft:FusedConv").is_some_and(|&n| n > 0));
    let fp32 = dir.path().join("fp32");
    assert_ok(&artifact("cnn", "cuda", &fp32, &[]));
    let (_, c) = ops(&fp32);
    assert_eq!(c.get("com.microsoft:FusedConv"), None, "{c:?}");

    let fp16 = dir.path().join("fp16");
    assert_ok(&artifact("cnn", "cuda", &fp16, &["--precision", "fp16", "--data", data.to_str().unwrap()]));
    let (mut m, c) = ops(&fp16);
    infer_model(&mut m);
    assert_eq!(c.get("com.microsoft:FusedConv"), None, "{c:?}");
    assert_eq!(m.opset(""), Some(13), "Clip takes FP16 on the GPU from opset 12");
    let text = read_json(&fp16.join("manifest.json")).to_string();
    assert!(text.contains("fused-conv (target cuda"), "the exclusion is reported");
    let g = m.graph.as_ref().unwrap();
    let clips: Vec<_> = g.nodes().filter(|(_, n)| n.op_type == "Clip").collect();
    assert!(!clips.is_empty());
    for (_, n) in clips {
        let t = n.inputs()[0].and_then(|v| g.tensor_type(v)?.elem_type).and_then(DataType::from_onnx);
        assert_eq!(t, Some(DataType::F16), "Clip '{:?}' runs in FP16", n.name);
    }

    let int8 = dir.path().join("int8");
    assert_ok(&artifact("cnn", "cuda", &int8, &["--precision", "int8", "--data", data.to_str().unwrap()]));
    let (m, c) = ops(&int8);
    assert_eq!(m.opset(""), Some(13));
    let contrib_qdq = ["com.microsoft:QuantizeLinear", "com.microsoft:DequantizeLinear"];
    assert!(contrib_qdq.iter().all(|k| !c.contains_key(*k)), "{c:?}");
    let g = m.graph.as_ref().unwrap();
    for (_, n) in g.nodes().filter(|(_, n)| n.op_type == "DequantizeLinear") {
        let t = n.inputs()[0].and_then(|v| g.value(v).initializer()).map(|t| t.dtype());
        assert_ne!(t, Some(DataType::I32), "no INT32 DequantizeLinear (a float bias instead)");
    }
    assert!(c.get(":DequantizeLinear").is_some_and(|&n| n > 40), "{c:?}");
}
