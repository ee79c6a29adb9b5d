//! Every `optimize` run validates its artifact against the original on evaluation samples
//! kept apart from calibration, records the result in the manifest, and exits 1 (artifact
//! written) when the tolerance is missed.

mod common;

use std::path::Path;

use common::{assert_failed, assert_ok, fixture_sample, optimize, write_npz_folder};
use serde_json::Value as Json;

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cnn() -> std::path::PathBuf {
    kiln_fixtures::model("cnn").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_optimize_run_records_its_validation_in_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let data =
        write_npz_folder(&dir.path().join("eval"), &(0..3).map(|s| fixture_sample("cnn", s)).collect::<Vec<_>>());
    let out = dir.path().join("a");
    let run = optimize(&[cnn().as_os_str(), "-o".as_ref(), out.as_os_str(), "--data".as_ref(), data.as_os_str()]);
    assert_ok(&run);
    assert!(run.stdout.contains("validated against the original"), "{}", run.stdout);
    let v = &read_json(&out.join("manifest.json"))["validation"];
    assert_eq!(v["pass"], true, "{v}");
    assert_eq!(v["data"]["samples"], 3, "{v}");
    assert_eq!(v["data"]["synthetic"], false, "{v}");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    // An FP32 rewrite of a classifier: every sample keeps its class, and the probabilities
    // agree to summation-order noise.
    assert_eq!(outputs[0]["metrics"]["top1"], 1.0, "{v}");
    assert!(outputs[0]["metrics"]["max_abs"].as_f64().unwrap() < 1e-4, "{v}");
    assert!(!v["checks"].as_array().unwrap().is_empty());
    // Without data, the manifest says the samples were synthetic.
    let out = dir.path().join("b");
    assert_ok(&optimize(&[cnn().as_os_str(), "-o".as_ref(), out.as_os_str()]));
    let v = &read_json(&out.join("manifest.json"))["validation"];
    assert_eq!(v["data"]["synthetic"], true, "{v}");
    assert_eq!(v["pass"], true, "{v}");
}

#[test]
fn a_missed_tolerance_exits_1_and_still_writes_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    // max_abs is never negative: this budget cannot be met.
    let run = optimize(&[
        cnn().as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--tolerance".as_ref(),
        "*:max_abs<=-1".as_ref(),
    ]);
    assert_failed(&run, 1, &["misses its accuracy tolerance", "max_abs"]);
    assert!(out.join("model.onnx").is_file());
    let v = &read_json(&out.join("manifest.json"))["validation"];
    assert_eq!(v["pass"], false, "{v}");
    assert!(v["checks"].as_array().unwrap().iter().any(|c| c["pass"] == false && c["metric"] == "max_abs"), "{v}");
}

#[test]
fn skip_validation_is_recorded_and_bad_evaluation_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    assert_ok(&optimize(&[cnn().as_os_str(), "-o".as_ref(), out.as_os_str(), "--skip-validation".as_ref()]));
    assert!(read_json(&out.join("manifest.json"))["validation"].is_null());

    // Evaluation samples whose input is misnamed: exit 2, naming the file and the input.
    let wrong: Vec<Vec<_>> =
        (0..2).map(|s| fixture_sample("cnn", s).into_iter().map(|(_, t)| ("image".to_string(), t)).collect()).collect();
    let data = write_npz_folder(&dir.path().join("wrong"), &wrong);
    let out = dir.path().join("b");
    let run = optimize(&[cnn().as_os_str(), "-o".as_ref(), out.as_os_str(), "--eval-data".as_ref(), data.as_os_str()]);
    assert_failed(&run, 2, &["sample_0000.npz", "x"]);
    assert!(!out.exists(), "nothing is written for bad input");
}

#[test]
fn tolerance_specs_naming_unknown_outputs_are_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let run = optimize(&[
        cnn().as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--tolerance".as_ref(),
        "logits:top1>=0.99".as_ref(),
    ]);
    assert_failed(&run, 2, &["logits"]);
}

#[test]
fn progress_is_one_line_per_step_off_a_terminal_and_silent_under_ci() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let model = cnn();
    let args = [model.as_os_str(), "-o".as_ref(), out.as_os_str(), "--force".as_ref()];
    let lines = common::optimize_env(&args, &[("CI", None)]);
    assert_ok(&lines);
    for step in ["optimizing the graph: done in", "validating against the original: done in"] {
        assert!(lines.stderr.contains(step), "{}", lines.stderr);
    }
    let quiet = common::optimize_env(&args, &[("CI", Some("true".as_ref()))]);
    assert_ok(&quiet);
    assert!(!quiet.stderr.contains("done in"), "{}", quiet.stderr);
}
