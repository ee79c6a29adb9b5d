//! `optimize check`, the pre-deploy gate, end to end on the `cnn_lcnet` fixture: one test per
//! exit code, JUnit read back by an XML parser, a baseline that catches an injected regression.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Outcome, assert_failed, optimize, optimize_env};
use kiln::compiler::ir::ValueDef;
use kiln::compiler::npy::encode_npy;
use kiln::compiler::onnx::{ExternalData, SaveOptions, load_model, save_model};
use kiln::compiler::{DataType, Tensor};
use prost::Message;
use quick_xml::events::Event;

const OUTPUT: &str = "fetch_name_0";

fn lcnet() -> PathBuf {
    kiln_fixtures::model("cnn_lcnet").unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture's recipe inputs for `seed`, as (name, f32 tensor).
fn sample(seed: u64) -> Vec<(String, Tensor)> {
    let f = kiln_fixtures::fixture("cnn_lcnet").unwrap();
    kiln_fixtures::generate::inputs(f, seed)
        .into_iter()
        .map(|g| {
            assert_eq!(g.dtype, "f32");
            let v: Vec<f32> = g.values.iter().map(|&v| v as f32).collect();
            (g.name, Tensor::from_slice(g.shape, &v).unwrap())
        })
        .collect()
}

/// `count` samples as `.npz` files (one per sample, keys = input names).
fn npz_data(dir: &Path, count: u64) -> PathBuf {
    let data = dir.join("npz");
    std::fs::create_dir_all(&data).unwrap();
    for seed in 0..count {
        let file = std::fs::File::create(data.join(format!("sample_{seed}.npz"))).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        for (name, t) in sample(seed) {
            zip.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(&encode_npy(&name, &t).unwrap()).unwrap();
        }
        zip.finish().unwrap();
    }
    data
}

/// `count` samples as ONNX `test_data_set_N/input_0.pb` folders.
fn pb_data(dir: &Path, count: u64) -> PathBuf {
    let data = dir.join("pb");
    for seed in 0..count {
        let set = data.join(format!("test_data_set_{seed}"));
        std::fs::create_dir_all(&set).unwrap();
        for (i, (name, t)) in sample(seed).into_iter().enumerate() {
            let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
            let proto = common::f32_raw(&name, &dims, &t.to_vec::<f32>().unwrap());
            std::fs::write(set.join(format!("input_{i}.pb")), proto.encode_to_vec()).unwrap();
        }
    }
    data
}

/// A copy of the fixture with the f32 initializer `name` multiplied by `factor`.
fn corrupted(dir: &Path, name: &str, factor: f32) -> PathBuf {
    let mut model = load_model(&lcnet()).unwrap();
    let g = model.graph.as_mut().unwrap();
    let v = g.find_value(name).unwrap_or_else(|| panic!("no initializer {name}"));
    let ValueDef::Initializer(t) = g.value(v).def() else { panic!("{name} is not an initializer") };
    assert_eq!(t.dtype(), DataType::F32);
    let scaled: Vec<f32> = t.to_vec::<f32>().unwrap().iter().map(|x| x * factor).collect();
    let t = Tensor::from_slice(t.dims().to_vec(), &scaled).unwrap();
    g.set_initializer(v, Arc::new(t));
    let out = dir.join(format!("corrupt_{}_{factor}.onnx", name.replace(['/', '.'], "_")));
    save_model(&model, &out, &SaveOptions::default()).unwrap();
    out
}

fn check(reference: &Path, candidate: &Path, data: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<String> = vec![
        "check".into(),
        "--reference".into(),
        reference.display().to_string(),
        "--candidate".into(),
        candidate.display().to_string(),
        "--data".into(),
        data.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    optimize(&args)
}

fn ctx(out: &Outcome) -> String {
    format!("exit {:?}\n--- stderr\n{}\n--- stdout\n{}", out.code, out.stderr, out.stdout)
}

/// A JUnit file as an XML parser reads it: the suite's counts and each test case's name and
/// failure message. Panics on anything not well-formed.
struct Junit {
    tests: usize,
    failures: usize,
    cases: Vec<(String, Option<String>)>,
}

fn attr(e: &quick_xml::events::BytesStart<'_>, key: &str) -> Option<String> {
    e.attributes()
        .map(|a| a.unwrap())
        .find(|a| a.key.0 == key)
        .map(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).unwrap().into_owned())
}

fn read_junit(path: &Path) -> Junit {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut junit = Junit { tests: 0, failures: 0, cases: Vec::new() };
    let mut roots = 0;
    loop {
        let event = reader.read_event().unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
        match event {
            Event::Start(e) | Event::Empty(e) if stack.is_empty() => {
                roots += 1;
                assert_eq!(e.name().0, "testsuites");
                stack.push("testsuites".into());
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = e.name().0.to_string();
                match name.as_str() {
                    "testsuite" => {
                        junit.tests = attr(e, "tests").unwrap().parse().unwrap();
                        junit.failures = attr(e, "failures").unwrap().parse().unwrap();
                    }
                    "testcase" => {
                        assert_eq!(stack.last().map(String::as_str), Some("testsuite"));
                        assert!(attr(e, "classname").is_some());
                        junit.cases.push((attr(e, "name").unwrap(), None));
                    }
                    "failure" => {
                        assert_eq!(stack.last().map(String::as_str), Some("testcase"));
                        junit.cases.last_mut().unwrap().1 = Some(attr(e, "message").unwrap());
                    }
                    "properties" | "property" => {}
                    other => panic!("unexpected element <{other}>"),
                }
                if matches!(event, Event::Start(_)) {
                    stack.push(name);
                }
            }
            Event::End(e) => {
                assert_eq!(stack.pop().as_deref(), Some(e.name().0));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty() && roots == 1, "{text}");
    assert_eq!(junit.cases.len(), junit.tests, "{text}");
    assert_eq!(junit.cases.iter().filter(|c| c.1.is_some()).count(), junit.failures, "{text}");
    junit
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn identical_candidate_passes_with_reports() {
    let dir = tempfile::tempdir().unwrap();
    let data = pb_data(dir.path(), 2);
    let (json, junit) = (dir.path().join("r.json"), dir.path().join("r.xml"));
    let model = lcnet();
    let out = check(&model, &model, &data, &["--json", json.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
    assert!(out.stdout.contains("PASS"), "{}", ctx(&out));
    assert!(out.stdout.contains("fetch_name_0:cosine_min"), "{}", ctx(&out));

    let r = read_json(&json);
    assert_eq!(r["pass"], true);
    assert_eq!(r["data"]["samples"], 2);
    assert_eq!(r["data"]["synthetic"], false);
    assert_eq!(r["reference"]["sha256"], r["candidate"]["sha256"]);
    assert_eq!(r["reference"]["sha256"].as_str().unwrap().len(), 64);
    let m = &r["outputs"][0]["metrics"];
    assert_eq!(m["max_abs"], 0.0);
    assert_eq!(m["sqnr_db"], "inf");
    assert_eq!(m["top1"], 1.0);
    assert!(r["latency"]["reference_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["size"]["ratio"], 1.0);
    assert_eq!(r["executor"], "onnxruntime");

    let j = read_junit(&junit);
    assert_eq!(j.failures, 0);
    let names: Vec<&str> = j.cases.iter().map(|c| c.0.as_str()).collect();
    assert!(names.contains(&"fetch_name_0:cosine_min") && names.contains(&"fetch_name_0:sqnr_db"), "{names:?}");

    // --quiet prints nothing on success.
    let out = check(&model, &model, &data, &["--quiet", "--no-latency"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{}", ctx(&out));
}

#[test]
fn corrupted_weight_fails_naming_output_and_metric() {
    let dir = tempfile::tempdir().unwrap();
    let data = npz_data(dir.path(), 3);
    let candidate = corrupted(dir.path(), "linear_0.w_0_deepcopy_144", 2.0);
    let (json, junit) = (dir.path().join("r.json"), dir.path().join("r.xml"));
    let out = check(
        &lcnet(),
        &candidate,
        &data,
        &["--no-latency", "--json", json.to_str().unwrap(), "--junit", junit.to_str().unwrap()],
    );
    assert_failed(&out, 1, &["check failed", "fetch_name_0: cosine_min ="]);
    assert!(out.stderr.contains("fetch_name_0: sqnr_db ="), "{}", ctx(&out));
    assert!(out.stdout.contains("FAIL"), "{}", ctx(&out));

    let r = read_json(&json);
    assert_eq!(r["pass"], false);
    let failed: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"fetch_name_0:cosine_min"), "{failed:?}");

    let j = read_junit(&junit);
    assert!(j.failures >= 2);
    let (_, message) = j.cases.iter().find(|c| c.0 == "fetch_name_0:cosine_min").unwrap();
    let message = message.as_deref().unwrap();
    assert!(message.contains("cosine_min") && message.contains("needs >= 0.99999"), "{message}");

    // A tolerance loose enough passes the same candidate; a per-output rule replaces `*`.
    let out =
        check(&lcnet(), &candidate, &data, &["--no-latency", "--tolerance", "fetch_name_0:top1>=0.99,*:max_abs<=1e-9"]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
}

#[test]
fn baseline_catches_a_regression_within_the_absolute_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let data = npz_data(dir.path(), 3);
    let model = lcnet();
    let base = dir.path().join("base.json");
    let out = check(&model, &model, &data, &["--no-latency", "--json", base.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));

    // Unchanged candidate against the baseline: passes, with a test case per metric.
    let junit = dir.path().join("unchanged.xml");
    let b = base.to_str().unwrap();
    let out = check(&model, &model, &data, &["--no-latency", "--baseline", b, "--junit", junit.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
    let j = read_junit(&junit);
    assert!(j.cases.iter().any(|c| c.0 == "fetch_name_0:max_abs vs baseline"), "{:?}", j.cases);
    assert!(j.cases.iter().any(|c| c.0 == "size vs baseline"));

    // One weight tensor off by 0.1%: within the FP32 tolerance on its own...
    let candidate = corrupted(dir.path(), "linear_0.w_0_deepcopy_144", 1.001);
    let out = check(&model, &candidate, &data, &["--no-latency"]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
    // ...but worse than the baseline.
    let junit = dir.path().join("regressed.xml");
    let out = check(&model, &candidate, &data, &["--no-latency", "--baseline", b, "--junit", junit.to_str().unwrap()]);
    assert_failed(&out, 1, &["check failed", "fetch_name_0: max_abs =", "in the baseline"]);
    let j = read_junit(&junit);
    let failed: Vec<&str> = j.cases.iter().filter(|c| c.1.is_some()).map(|c| c.0.as_str()).collect();
    assert!(failed.contains(&"fetch_name_0:max_abs vs baseline"), "{failed:?}");
    assert!(failed.contains(&"fetch_name_0:sqnr_db vs baseline"), "{failed:?}");
    assert!(failed.iter().all(|f| f.ends_with("vs baseline")), "{failed:?}");
}

#[test]
fn latency_and_size_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let data = npz_data(dir.path(), 1);
    let model = lcnet();
    let json = dir.path().join("r.json");
    let out = check(&model, &model, &data, &["--max-latency-ratio", "0.01", "--json", json.to_str().unwrap()]);
    assert_failed(&out, 1, &["check failed (1 of", "latency: candidate"]);
    let r = read_json(&json);
    let l = &r["latency"];
    assert!(l["runs"].as_u64().unwrap() >= 5, "{l}");
    assert_eq!(l["max_ratio"], 0.01);

    let out = check(&model, &model, &data, &["--no-latency", "--max-size-ratio", "0.5"]);
    assert_failed(&out, 1, &["size: candidate 6783084 bytes / reference 6783084 bytes"]);
    let out = check(&model, &model, &data, &["--no-latency", "--max-size-ratio", "1"]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));

    // Size counts external data: the same weights moved out of the .onnx file.
    let external = dir.path().join("external.onnx");
    let options = SaveOptions {
        external: ExternalData::File { location: "external.data".into(), threshold: 1024 },
        ..SaveOptions::default()
    };
    save_model(&load_model(&model).unwrap(), &external, &options).unwrap();
    let out = check(&model, &external, &data, &["--no-latency", "--json", json.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
    let r = read_json(&json);
    let on_disk = |p: &Path| std::fs::metadata(p).unwrap().len();
    let total = on_disk(&external) + on_disk(&dir.path().join("external.data"));
    assert!(on_disk(&external) < 100_000, "weights were not moved out");
    assert_eq!(r["candidate"]["bytes"], total);
    assert_eq!(r["candidate"]["external_files"], serde_json::json!(["external.data"]));
    assert_eq!(r["outputs"][0]["metrics"]["max_abs"], 0.0);
}

#[test]
fn bad_usage_and_input_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = npz_data(dir.path(), 1);
    let model = lcnet();

    let missing = dir.path().join("missing.onnx");
    assert_failed(&check(&model, &missing, &data, &[]), 2, &["missing.onnx"]);
    assert_failed(&check(&model, &model, &dir.path().join("nodata"), &[]), 2, &["nodata"]);
    assert_failed(&check(&model, &model, dir.path(), &[]), 2, &["no samples found"]);

    // A candidate whose input has another name.
    let mut m = load_model(&model).unwrap();
    let g = m.graph.as_mut().unwrap();
    let x = g.find_value("x").unwrap();
    g.value_mut(x).name = "image".into();
    let renamed = dir.path().join("renamed.onnx");
    save_model(&m, &renamed, &SaveOptions::default()).unwrap();
    assert_failed(&check(&model, &renamed, &data, &[]), 2, &["not comparable", "the candidate has no input `x`"]);

    // Samples that do not fit the model: another input name, another shape.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let write_npz = |file: &str, name: &str, t: &Tensor| {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(wrong.join(file)).unwrap());
        zip.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(&encode_npy(name, t).unwrap()).unwrap();
        zip.finish().unwrap();
    };
    let (_, t) = sample(0).remove(0);
    write_npz("a.npz", "y", &t);
    assert_failed(&check(&model, &model, &wrong, &[]), 2, &["sample 0 does not fit the reference", "`y`"]);
    std::fs::remove_file(wrong.join("a.npz")).unwrap();
    write_npz("a.npz", "x", &Tensor::from_slice(vec![1, 3, 2, 2], &[0f32; 12]).unwrap());
    assert_failed(&check(&model, &model, &wrong, &[]), 2, &["does not fit", "shape"]);

    // Tolerance specs and options.
    assert_failed(
        &check(&model, &model, &data, &["--tolerance", "*:top3>=1"]),
        2,
        &["--tolerance", "unknown metric `top3`"],
    );
    assert_failed(&check(&model, &model, &data, &["--tolerance", "logits:top1>=0.9"]), 2, &["output `logits`", OUTPUT]);
    let out = check(&model, &model, &data, &["--no-latency", "--tolerance", "fetch_name_0:top5>=0.9"]);
    assert_failed(&out, 2, &["top5 does not apply to output `fetch_name_0`"]);
    assert_failed(&check(&model, &model, &data, &["--max-latency-ratio", "0"]), 2, &["positive"]);
    assert_failed(&check(&model, &model, &data, &["--baseline", data.to_str().unwrap()]), 2, &["baseline"]);
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"schema\": 1}").unwrap();
    assert_failed(
        &check(&model, &model, &data, &["--baseline", junk.to_str().unwrap()]),
        2,
        &["not an `optimize check` JSON report"],
    );
    let out = optimize(&["check", "--reference", model.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}", ctx(&out));
}

#[test]
fn missing_runtime_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let data = npz_data(dir.path(), 1);
    let model = lcnet();
    let nowhere = dir.path().join("no-such-libonnxruntime.so");
    let args = [
        "check",
        "--reference",
        model.to_str().unwrap(),
        "--candidate",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    let out = optimize_env(&args, &[("KILN_ORT_LIB", Some(nowhere.as_os_str()))]);
    assert_failed(&out, 3, &["KILN_ORT_LIB", "no-such-libonnxruntime.so"]);
}

#[test]
fn synthetic_inputs_when_no_data() {
    let model = lcnet();
    let out = optimize(&[
        "check",
        "--reference",
        model.to_str().unwrap(),
        "--candidate",
        model.to_str().unwrap(),
        "--samples",
        "2",
        "--no-latency",
    ]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
    assert!(out.stderr.contains("synthetic samples"), "{}", ctx(&out));
    assert!(out.stdout.contains("2 synthetic sample(s), seed 0"), "{}", ctx(&out));
}

/// tract as a second opinion: the same verdicts on the same models.
#[cfg(feature = "tract")]
#[test]
fn tract_gives_a_second_opinion() {
    let dir = tempfile::tempdir().unwrap();
    let data = npz_data(dir.path(), 2);
    let model = lcnet();
    let json = dir.path().join("r.json");
    let out = check(&model, &model, &data, &["--executor", "tract", "--no-latency", "--json", json.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", ctx(&out));
    assert_eq!(read_json(&json)["executor"], "tract");
    let candidate = corrupted(dir.path(), "linear_0.w_0_deepcopy_144", 2.0);
    let out = check(&model, &candidate, &data, &["--executor", "tract", "--no-latency"]);
    assert_failed(&out, 1, &["fetch_name_0: cosine_min ="]);
}
