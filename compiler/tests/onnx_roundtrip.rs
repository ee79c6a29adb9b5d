//! Every conformance model: load → save is byte-identical, and the verifier finds no errors.

use std::path::PathBuf;

use kiln_compiler::onnx::{encode_model, load_model};
use kiln_compiler::verify::{Severity, verify_model};

fn node_tests_dir() -> PathBuf {
    kiln_fixtures::conformance_dir().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn conformance_models_round_trip_byte_identical() {
    let dir = node_tests_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut problems = Vec::new();
    for case in &cases {
        let path = case.join("model.onnx");
        let original = std::fs::read(&path).unwrap();
        let model = match load_model(&path) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: load: {e}", case.display()));
                continue;
            }
        };
        let errors: Vec<String> =
            verify_model(&model).into_iter().filter(|p| p.severity == Severity::Error).map(|p| p.to_string()).collect();
        if !errors.is_empty() {
            problems.push(format!("{}: {}", case.file_name().unwrap().to_string_lossy(), errors.join("; ")));
        }
        let bytes = encode_model(&model);
        if bytes != original {
            let first =
                bytes.iter().zip(&original).position(|(a, b)| a != b).unwrap_or(bytes.len().min(original.len()));
            failures.push(format!(
                "{}: differs at byte {first} (len {} vs {})",
                case.file_name().unwrap().to_string_lossy(),
                bytes.len(),
                original.len()
            ));
        }
    }
    eprintln!("{} cases, {} round-trip failures, {} with verifier errors", cases.len(), failures.len(), problems.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
