//! Every trained fixture (CNNs, transformers, a recurrent model with If subgraphs): read and
//! written back byte-identical, ONNX Runtime on the written file gives bit-identical outputs
//! to ONNX Runtime on the original, and `optimize inspect` describes it.

use std::process::Command;

use kiln::compiler::compare::{Tolerance, compare_values};
use kiln::compiler::onnx::{SaveOptions, load_model, save_model};
use kiln::compiler::runtime::{Executor, ModelSource, OrtExecutor, SessionConfig, Value};
use kiln::compiler::verify::{Severity, verify_model};

/// The fixture's recipe inputs as executor values.
fn fixture_inputs(name: &str, seed: u64) -> Vec<(String, Value)> {
    kiln_passes::testing::fixture_inputs(name, seed).unwrap_or_else(|e| panic!("{e}"))
}

fn run_bytes(bytes: &[u8], inputs: &[(String, Value)]) -> Vec<(String, Value)> {
    let exec = OrtExecutor::new();
    let mut s = exec
        .load(ModelSource { bytes, base_dir: None }, &SessionConfig { intra_threads: Some(1), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    s.run(inputs, None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn fixtures_round_trip_and_run_identically() {
    let names = kiln_fixtures::fixture_names().unwrap();
    assert!(names.len() >= 3, "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let path = kiln_fixtures::model(name).unwrap_or_else(|e| panic!("{e}"));
        let original = std::fs::read(&path).unwrap();
        let model = load_model(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let errors: Vec<_> = verify_model(&model).into_iter().filter(|p| p.severity == Severity::Error).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");

        let out = dir.path().join(format!("{name}.onnx"));
        save_model(&model, &out, &SaveOptions::default()).unwrap();
        let saved = std::fs::read(&out).unwrap();
        assert!(saved == original, "{name}: saved bytes differ from the original");

        let inputs = fixture_inputs(name, 1);
        let want = run_bytes(&original, &inputs);
        let got = run_bytes(&saved, &inputs);
        let spec = kiln_fixtures::fixture(name).unwrap();
        assert_eq!(want.len(), spec.outputs.len(), "{name}: output count");
        for ((n, w), (_, g)) in want.iter().zip(&got) {
            compare_values(n, g, w, Tolerance::EXACT).unwrap_or_else(|e| panic!("{name}: {e}"));
            let o = spec.outputs.iter().find(|o| &o.name == n).unwrap_or_else(|| panic!("{name}: output {n}"));
            assert_eq!(w.as_tensor().unwrap().dims(), o.shape.as_slice(), "{name}: {n} shape");
        }
    }
}

#[test]
fn inspect_describes_every_fixture() {
    for name in kiln_fixtures::fixture_names().unwrap() {
        let path = kiln_fixtures::model(name).unwrap_or_else(|e| panic!("{e}"));
        let out =
            Command::new(env!("CARGO_BIN_EXE_optimize")).arg("inspect").arg(&path).arg("--json").output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(json["nodes"].as_u64().unwrap() > 10, "{name}");
        assert!(json["parameters"].as_u64().unwrap() > 1000, "{name}");
        let spec = kiln_fixtures::fixture(name).unwrap();
        let inputs: Vec<&str> =
            json["inputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        let expected: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, expected, "{name}");
        if spec.control_flow.iter().any(|op| op == "If") {
            assert!(json["op_histogram"]["If"].as_u64().unwrap() > 0, "{name}");
            assert!(!json["subgraphs"].as_array().unwrap().is_empty(), "{name}: subgraphs not listed");
        }
        // The text form works too.
        let out = Command::new(env!("CARGO_BIN_EXE_optimize")).arg("inspect").arg(&path).output().unwrap();
        assert!(out.status.success(), "{name}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("parameters"), "{name}");
    }
}
