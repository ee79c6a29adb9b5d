//! Every ONNX conformance case through the O1 pipeline, then ONNX Runtime on the result
//! against the case's expected outputs. No case that ORT passed before simplification may
//! fail after it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use kiln_compiler::onnx::load_model;
use kiln_passes::simplify;
use kiln_passes::testing::{CaseOutcome, exact_config, node_count, read_data_sets, require_ort, run_case};

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
        let Ok(sets) = read_data_sets(case, &model) else {
            unreadable.push(name.to_string());
            continue;
        };
        let passes = |m| run_case(m, &case.dir, &sets, &exact_config());
        let before = match passes(&model) {
            (CaseOutcome::OrtCannotLoad, _) => {
                rejected.push(name.to_string());
                continue;
            }
            (outcome, _) => outcome == CaseOutcome::Passed,
        };
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
        match passes(&after) {
            (CaseOutcome::Passed, _) => {
                passed_after += 1;
                if !before {
                    fixed.push(name.to_string());
                }
            }
            (_, e) if before => regressions.push(format!("{name}: {e}")),
            _ => {}
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
