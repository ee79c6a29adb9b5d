//! Every ONNX conformance case through the O1 pipeline, then ONNX Runtime on the result
//! against the case's expected outputs. No case that ORT passed before simplification may
//! fail after it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use kiln_compiler::execute::load_session;
use kiln_compiler::ir::Model;
use kiln_compiler::onnx::load_model;
use kiln_compiler::runtime::{OrtExecutor, Session, ValueType};
use kiln_passes::simplify;
use kiln_passes::testing::{Tolerance, Value, compare_outputs, exact_config, node_count, read_value_file, require_ort};

/// One data set: inputs and expected outputs.
type DataSet = (Vec<(String, Value)>, Vec<(String, Value)>);

fn read_sets(session: &dyn Session, sets: &[std::path::PathBuf]) -> Result<Vec<DataSet>, String> {
    let read = |dir: &Path, prefix: &str, infos: &[kiln_compiler::runtime::IoInfo]| {
        let mut out = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let path = dir.join(format!("{prefix}_{i}.pb"));
            if !path.exists() {
                break;
            }
            if matches!(info.ty, ValueType::Map { .. } | ValueType::Unknown) {
                return Err(format!("{prefix} '{}' has a type this test does not read", info.name));
            }
            out.push((info.name.clone(), read_value_file(&path, &info.ty)?));
        }
        Ok(out)
    };
    sets.iter()
        .map(|dir| Ok((read(dir, "input", session.inputs())?, read(dir, "output", session.outputs())?)))
        .collect()
}

/// Whether the model gives every data set's expected outputs.
fn passes(model: &Model, sets: &[DataSet]) -> Result<(), String> {
    let mut session = load_session(&OrtExecutor::new(), model, None, &exact_config()).map_err(|e| e.to_string())?;
    for (inputs, expected) in sets {
        let names: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
        let got = session.run(inputs, Some(&names)).map_err(|e| e.to_string())?;
        compare_outputs(&got, expected, Tolerance::ONNX_BACKEND)?;
    }
    Ok(())
}

#[test]
fn conformance_cases_survive_simplification() {
    require_ort().unwrap();
    let cases = kiln_fixtures::conformance_cases().unwrap();
    let (mut passed_before, mut passed_after, mut fixed) = (0, 0, Vec::new());
    let (mut unreadable, mut rejected) = (Vec::new(), Vec::new());
    let (mut regressions, mut errors) = (Vec::new(), Vec::new());
    let (mut nodes_before, mut nodes_after, mut simplified) = (0, 0, 0);
    let mut applied: std::collections::BTreeMap<String, usize> = Default::default();
    for case in &cases {
        let name = case.name.as_str();
        let Ok(model) = load_model(&case.model) else {
            unreadable.push(name.to_string());
            continue;
        };
        let Ok(session) = load_session(&OrtExecutor::new(), &model, None, &exact_config()) else {
            rejected.push(name.to_string());
            continue;
        };
        let Ok(sets) = read_sets(session.as_ref(), &case.data_sets) else {
            unreadable.push(name.to_string());
            continue;
        };
        let before = passes(&model, &sets).is_ok();
        passed_before += usize::from(before);

        let mut after = model.clone();
        match catch_unwind(AssertUnwindSafe(|| simplify(&mut after))) {
            Ok(Ok(report)) => {
                for e in report.entries_of("applied") {
                    *applied.entry(e.rule.clone()).or_insert(0usize) += 1;
                }
            }
            Ok(Err(e)) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
            Err(_) => {
                errors.push(format!("{name}: the pipeline panicked"));
                continue;
            }
        }
        let (nb, na) = (node_count(&model), node_count(&after));
        nodes_before += nb;
        nodes_after += na;
        simplified += usize::from(na < nb);
        match passes(&after, &sets) {
            Ok(()) => {
                passed_after += 1;
                if !before {
                    fixed.push(name.to_string());
                }
            }
            Err(e) if before => regressions.push(format!("{name}: {e}")),
            Err(_) => {}
        }
    }
    println!(
        "conformance: {} cases; {} models ORT rejects and {} with values this test does not read (maps) are \
         skipped; {passed_before} pass before simplification, {passed_after} after; {simplified} models simplified, \
         nodes {nodes_before} -> {nodes_after}",
        cases.len(),
        rejected.len(),
        unreadable.len(),
    );
    println!("rewrites applied, by rule: {applied:?}");
    if !fixed.is_empty() {
        println!("passing only after simplification: {fixed:?}");
    }
    assert!(errors.is_empty(), "the pipeline failed on {} cases:\n{}", errors.len(), errors.join("\n"));
    assert!(regressions.is_empty(), "{} cases regressed:\n{}", regressions.len(), regressions.join("\n"));
    assert!(passed_after >= passed_before);
    assert!(passed_before > 1400, "only {passed_before} cases pass in ORT: is the suite installed?");
}
