//! Every ONNX conformance case through the O1 pipeline, then ONNX Runtime on the result
//! against the case's expected outputs. No case that ORT passed before simplification may
//! fail after it.

use std::collections::BTreeMap;

use kiln_passes::simplify;
use kiln_passes::testing::{exact_config, node_count, require_ort, survey_conformance};

#[test]
fn conformance_cases_survive_simplification() {
    require_ort().unwrap();
    let (mut nodes_before, mut nodes_after, mut simplified) = (0, 0, 0);
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    let survey = survey_conformance(&exact_config(), |_, model| {
        let mut after = model.clone();
        let report = simplify(&mut after).map_err(|e| e.to_string())?;
        for e in report.entries_of("applied") {
            *applied.entry(e.rule.clone()).or_insert(0) += 1;
        }
        let (nb, na) = (node_count(&model), node_count(&after));
        nodes_before += nb;
        nodes_after += na;
        simplified += usize::from(na < nb);
        Ok(after)
    })
    .unwrap();
    println!(
        "conformance: {} cases; {} models ORT rejects and {} with values this test does not read; {} pass before \
         simplification, {} after; {simplified} models simplified, nodes {nodes_before} -> {nodes_after}",
        survey.cases,
        survey.rejected.len(),
        survey.unreadable.len(),
        survey.passed_before,
        survey.passed_after,
    );
    println!("rewrites applied, by rule: {applied:?}");
    if !survey.fixed.is_empty() {
        println!("passing only after simplification: {:?}", survey.fixed);
    }
    survey.assert_no_regressions();
    assert!(survey.passed_before > 1400, "only {} cases pass in ORT: is the suite installed?", survey.passed_before);
}
