//! The optimization pipeline end to end: every ONNX conformance case through O2 and O3 still
//! gives the suite's expected outputs in ONNX Runtime; the transformer fixtures through
//! `optimize --opt O3` have every self-attention block fused and keep their outputs; the
//! artifact is byte-identical from run to run; `--disable` and `--stop-after` bisect as
//! documented.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{Outcome, assert_failed, assert_ok, optimize, optimize_env};
use kiln::compiler::ir::Model;
use kiln::compiler::onnx::load_model;
use kiln::compiler::runtime::SessionConfig;
use kiln::pipeline::{OptLevel, Pipeline, TargetKind};
use kiln_passes::testing::{
    abs_tol, compare_outputs, count_in, max_abs_diff, recipe_inputs, require_ort, run_in, survey_conformance,
};
use serde_json::Value as Json;

const MS: &str = "com.microsoft";

// ---- (a) the conformance suite through the pipeline ----

/// Runs every conformance case before and after the pipeline at `level` (target cpu), with
/// the session settings of `tests/conformance.rs`; fails on any case that passed before and
/// not after, and on any pipeline error.
fn conformance_through(level: OptLevel) {
    require_ort().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = Pipeline::new(level).target(TargetKind::Cpu);
    let mut contrib: BTreeMap<String, usize> = BTreeMap::new();
    let survey = survey_conformance(&SessionConfig::default(), |_, model| {
        let optimized = pipeline.run(model).map_err(|e| e.to_string())?.model;
        for op in contrib_ops(&optimized) {
            *contrib.entry(op).or_insert(0) += 1;
        }
        Ok(optimized)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "conformance through {level:?} (cpu): {} cases; {} pass unoptimized, {} after",
        survey.cases, survey.passed_before, survey.passed_after
    );
    println!("cases using each contrib op after {level:?}: {contrib:?}");
    if !survey.fixed.is_empty() {
        println!("passing only after {level:?}: {:?}", survey.fixed);
    }
    assert!(survey.unreadable.is_empty(), "unreadable cases: {:?}", survey.unreadable);
    survey.assert_no_regressions();
    assert!(
        survey.passed_before >= 1554,
        "only {} cases pass unoptimized: is the suite installed?",
        survey.passed_before
    );
}

/// The `com.microsoft` op types a model uses (what O3 brought in).
fn contrib_ops(model: &Model) -> Vec<String> {
    let mut ops: Vec<String> = Vec::new();
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |sg| {
            ops.extend(sg.nodes().filter(|(_, n)| n.domain() == MS).map(|(_, n)| n.op_type.clone()));
        });
    }
    ops.sort();
    ops.dedup();
    ops
}

#[test]
fn conformance_cases_keep_passing_through_o2() {
    conformance_through(OptLevel::O2);
}

#[test]
fn conformance_cases_keep_passing_through_o3() {
    conformance_through(OptLevel::O3);
}

// ---- the optimize binary ----

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `optimize MODEL --opt O3 -o OUT [extra…]` with `env` set; returns the run and the folder.
fn optimize_o3(model: &Path, out: &Path, extra: &[&str], env: &[(&str, Option<&OsStr>)]) -> Outcome {
    let mut args = vec![model.as_os_str(), os("--opt"), os("O3"), os("-o"), out.as_os_str()];
    args.extend(extra.iter().map(|s| os(s)));
    optimize_env(&args, env)
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Self-attention Softmax nodes: those a MatMul reads (the probabilities times V). A
/// classifier's Softmax at the end of a model is not one.
fn attention_softmaxes(model: &Model) -> usize {
    let g = model.graph.as_ref().unwrap();
    g.nodes()
        .filter(|(_, n)| n.domain().is_empty() && n.op_type == "Softmax")
        .filter(|(_, n)| {
            n.output(0).is_some_and(|y| g.value(y).uses().iter().any(|u| g.node(u.node).op_type == "MatMul"))
        })
        .count()
}

/// The fixture's recipe inputs at other shapes.
fn inputs_at(name: &str, shapes: &[&[usize]], seed: u64) -> Vec<(String, kiln_passes::testing::Value)> {
    let mut f = kiln_fixtures::fixture(name).unwrap_or_else(|e| panic!("{e}")).clone();
    for (spec, shape) in f.inputs.iter_mut().zip(shapes) {
        spec.shape = shape.to_vec();
    }
    recipe_inputs(&f, seed).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Optimizes a fixture at O3 for `target` through the binary; checks attention fused in every
/// block, the outputs on each input set within 1e-4, and the report's entries. Returns the
/// optimized model and the report.
fn check_transformer(
    name: &str,
    target: &str,
    input_sets: &[Vec<(String, kiln_passes::testing::Value)>],
) -> (Model, Json) {
    require_ort().unwrap_or_else(|e| panic!("{e}"));
    let path = kiln_fixtures::model(name).unwrap_or_else(|e| panic!("{e}"));
    let original = load_model(&path).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let report_path = dir.path().join("r.json");
    let run = optimize_o3(&path, &out, &["--target", target, "--report", report_path.to_str().unwrap()], &[]);
    assert_ok(&run);
    assert!(!run.stderr.contains("NO ATTENTION FUSED"), "{name}: {}", run.stderr);
    let optimized = load_model(&out.join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));

    let blocks = attention_softmaxes(&original);
    assert!(blocks > 0, "{name}: no self-attention found in the original");
    assert_eq!(count_in(&optimized, MS, "Attention"), blocks, "{name}: every self-attention block fused");
    assert_eq!(attention_softmaxes(&optimized), 0, "{name}");
    let manifest = read_json(&out.join("manifest.json"));
    let excluded = manifest["target_excluded"].as_array().unwrap().len();
    if target == "cpu" {
        // Measured slower on ORT's CPU provider: the cpu target leaves them out, and says so.
        assert_eq!(count_in(&optimized, MS, "SkipLayerNormalization"), 0, "{name}");
        assert_eq!(count_in(&optimized, MS, "EmbedLayerNormalization"), 0, "{name}");
        assert_eq!(excluded, 2, "{name}: {manifest}");
    } else {
        // cuda leaves out FusedConv and FusedGemm only (their CUDA kernels are missing or
        // refuse activations), never the transformer fusions.
        assert!(count_in(&optimized, MS, "SkipLayerNormalization") > 0, "{name}");
        assert_eq!(excluded, 2, "{name}: {manifest}");
        assert_eq!(count_in(&optimized, MS, "FusedConv") + count_in(&optimized, MS, "FusedGemm"), 0, "{name}");
    }

    for inputs in input_sets {
        let want = run_in(&original, path.parent(), inputs).unwrap_or_else(|e| panic!("{name} before: {e}"));
        let got = run_in(&optimized, Some(&out), inputs).unwrap_or_else(|e| panic!("{name} after: {e}"));
        compare_outputs(&got, &want, abs_tol(1e-4)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let dims: Vec<_> = inputs.iter().map(|(_, v)| v.as_tensor().map(|t| t.dims().to_vec())).collect();
        println!("{name} {dims:?}: max abs difference {:e}", max_abs_diff(&got, &want));
    }

    let report = read_json(&report_path);
    let applied = report["applied"].as_array().unwrap_or_else(|| panic!("{name}: no applied entries: {report}"));
    assert!(report["missed"].is_array(), "{name}: no missed entries");
    let attention = applied.iter().filter(|e| e["rule"] == "attention").count();
    assert_eq!(attention, blocks, "{name}: the report lists each attention fusion");
    println!(
        "{name}: {} -> {} nodes; {blocks} of {blocks} attention blocks fused; {} rewrites applied, {} missed",
        original.graph.as_ref().unwrap().node_count(),
        optimized.graph.as_ref().unwrap().node_count(),
        applied.len(),
        report["missed"].as_array().map_or(0, Vec::len),
    );
    (optimized, report)
}

// ---- (b) the transformer fixtures ----

#[test]
fn minilm_through_o3_fuses_every_block_and_keeps_its_outputs() {
    let sets = [inputs_at("transformer", &[&[1, 16], &[1, 16]], 1), inputs_at("transformer", &[&[2, 7], &[2, 7]], 2)];
    for target in ["cuda", "cpu"] {
        let (m, _) = check_transformer("transformer", target, &sets);
        assert!(count_in(&m, MS, "BiasGelu") + count_in(&m, MS, "Gelu") + count_in(&m, "", "Gelu") > 0);
        let embed = if target == "cuda" { 1 } else { 0 };
        assert_eq!(count_in(&m, MS, "EmbedLayerNormalization"), embed, "{target}");
    }
}

#[test]
fn svtr_through_o3_fuses_every_block_and_keeps_its_outputs() {
    let sets =
        [inputs_at("transformer_ocr", &[&[1, 3, 48, 320]], 1), inputs_at("transformer_ocr", &[&[2, 3, 48, 160]], 2)];
    check_transformer("transformer_ocr", "cuda", &sets);
    check_transformer("transformer_ocr", "cpu", &sets);
}

// ---- (c) determinism ----

/// Every file under `dir` by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

#[test]
fn artifacts_are_byte_identical_across_runs_and_thread_settings() {
    let dir = tempfile::tempdir().unwrap();
    // ONNX Runtime's folding runs on one thread; these must not matter either.
    let one = [("OMP_NUM_THREADS", Some(os("1"))), ("RAYON_NUM_THREADS", Some(os("1")))];
    let two = [("OMP_NUM_THREADS", Some(os("2"))), ("RAYON_NUM_THREADS", Some(os("2")))];
    let settings: [&[(&str, Option<&OsStr>)]; 3] = [&[], &one, &two];
    for name in ["transformer", "transformer_ocr"] {
        let path = kiln_fixtures::model(name).unwrap_or_else(|e| panic!("{e}"));
        let mut first: Option<BTreeMap<PathBuf, Vec<u8>>> = None;
        for (i, env) in settings.iter().chain([&settings[0]]).enumerate() {
            let out = dir.path().join(format!("{name}-{i}"));
            assert_ok(&optimize_o3(&path, &out, &[], env));
            let got = files(&out);
            assert!(got.contains_key(Path::new("model.onnx")) && got.contains_key(Path::new("manifest.json")));
            match &first {
                None => first = Some(got),
                Some(want) => {
                    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name} run {i}");
                    for (file, bytes) in want {
                        assert!(got[file] == *bytes, "{name} run {i}: {} differs", file.display());
                    }
                }
            }
        }
    }
}

// ---- (d) bisection ----

#[test]
fn disable_and_stop_after_change_the_outcome_as_documented() {
    let path = kiln_fixtures::model("transformer").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let manifest = |out: &Path| read_json(&out.join("manifest.json"));
    let contrib_ops = |m: &Json| {
        m["model"]["op_histogram"].as_object().unwrap().keys().filter(|k| k.starts_with("com.microsoft.")).count()
    };
    let pass_names = |m: &Json| -> Vec<String> {
        m["passes"].as_array().unwrap().iter().map(|p| p["pass"].as_str().unwrap().to_string()).collect()
    };

    let full = dir.path().join("full");
    assert_ok(&optimize_o3(&path, &full, &[], &[]));
    assert!(contrib_ops(&manifest(&full)) > 0);

    // Without fuse-ort, O3 is O2: the same model, no contrib ops, and the loud warning.
    let no_ort = dir.path().join("no-ort");
    let run = optimize_o3(&path, &no_ort, &["--disable", "fuse-ort"], &[]);
    assert_ok(&run);
    assert!(run.stderr.contains("NO ATTENTION FUSED"), "{}", run.stderr);
    let m = manifest(&no_ort);
    assert_eq!(m["disabled"], serde_json::json!(["fuse-ort"]));
    assert_eq!(contrib_ops(&m), 0);
    assert!(!pass_names(&m).iter().any(|p| p == "fuse-ort"));
    let o2 = dir.path().join("o2");
    assert_ok(&optimize(&[path.as_os_str(), os("--opt"), os("O2"), os("-o"), o2.as_os_str()]));
    assert_eq!(m["model"]["sha256"], manifest(&o2)["model"]["sha256"], "O3 without fuse-ort differs from O2");

    // One pass run: shape inference only, so the graph keeps every node.
    let first = dir.path().join("first");
    assert_ok(&optimize_o3(&path, &first, &["--stop-after", "1"], &[]));
    let m = manifest(&first);
    assert_eq!(pass_names(&m), ["infer-shapes"]);
    assert_eq!(m["stop_after"], 1);
    assert_eq!(m["model"]["nodes"], m["input"]["nodes"]);
    assert_eq!(m["model"]["op_histogram"], m["input"]["op_histogram"]);

    // An unknown pass name is bad usage, and nothing is written.
    let bad = dir.path().join("bad");
    let run = optimize_o3(&path, &bad, &["--disable", "fuse-everything"], &[]);
    assert_failed(&run, 2, &["--disable fuse-everything", "no such pass", "fuse-ort"]);
    assert!(!bad.exists());
}

// ---- (e) optimization never grows a model ----

/// Bytes of an artifact's model file and external data.
fn model_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "manifest.json"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn o3_artifacts_are_never_larger_than_their_input() {
    let dir = tempfile::tempdir().unwrap();
    for name in kiln_fixtures::fixture_names().unwrap() {
        let model = kiln_fixtures::model(name).unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join(name);
        assert_ok(&optimize_o3(&model, &out, &[], &[]));
        let (before, after) = (std::fs::metadata(&model).unwrap().len(), model_bytes(&out));
        eprintln!("{name}: {before} -> {after} bytes");
        // Folding into If branches once copied a shared LSTM weight into each branch.
        assert!(after <= before, "{name}: the optimized model grew from {before} to {after} bytes");
    }
}
