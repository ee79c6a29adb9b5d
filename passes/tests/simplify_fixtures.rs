//! The trained fixtures through the O1 pipeline: fewer nodes, and outputs within 1e-5 of the
//! original model's in ONNX Runtime on the manifest's realistic inputs.

use kiln_compiler::ir::Model;
use kiln_compiler::onnx::load_model;
use kiln_compiler::pass::PipelineReport;
use kiln_passes::simplify;
use kiln_passes::testing::{abs_tol, compare_outputs, count_op, fixture_inputs, node_count, require_ort, run_in};

struct Outcome {
    name: &'static str,
    before: usize,
    after: usize,
    constants_before: usize,
    report: PipelineReport,
}

fn check_fixture(name: &'static str) -> Outcome {
    let path = kiln_fixtures::model(name).unwrap();
    let base = path.parent();
    let model: Model = load_model(&path).unwrap();
    let inputs = fixture_inputs(name, 0x6b69_6c6e).unwrap();
    let want = run_in(&model, base, &inputs).unwrap_or_else(|e| panic!("{name} before: {e}"));

    let mut after = model.clone();
    let report = simplify(&mut after).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = run_in(&after, base, &inputs).unwrap_or_else(|e| panic!("{name} after: {e}"));
    if let Err(e) = compare_outputs(&got, &want, abs_tol(1e-5)) {
        panic!("{name}: {e}");
    }
    Outcome {
        name,
        before: node_count(&model),
        after: node_count(&after),
        constants_before: count_op(&model, "Constant"),
        report,
    }
}

#[test]
fn fixtures_shrink_and_keep_their_outputs() {
    require_ort().unwrap();
    let names = kiln_fixtures::fixture_names().unwrap();
    let mut outcomes = Vec::new();
    for name in names {
        outcomes.push(check_fixture(name));
    }
    for o in &outcomes {
        let applied = |pass: &str| {
            o.report
                .passes
                .iter()
                .filter(|p| p.pass == pass)
                .flat_map(|p| &p.entries)
                .filter(|e| e.kind == "applied")
                .count()
        };
        println!(
            "{:16} nodes {:4} -> {:4} (-{:.1}%): {} Constant nodes; lifted {}, folded {}, no-ops {}, merged {}, dead {}; \
             {} iterations",
            o.name,
            o.before,
            o.after,
            100.0 * (o.before - o.after) as f64 / o.before as f64,
            o.constants_before,
            applied("lift-constants"),
            applied("fold-constants"),
            applied("eliminate-no-ops"),
            applied("eliminate-common-subexpressions"),
            applied("eliminate-dead-code"),
            o.report.iterations,
        );
    }
    for o in &outcomes {
        assert!(o.after <= o.before, "{}: {} -> {} nodes", o.name, o.before, o.after);
        // Every Constant node becomes an initializer: at least that many nodes go.
        assert!(
            o.before - o.after >= o.constants_before,
            "{}: {} Constant nodes, {} -> {}",
            o.name,
            o.constants_before,
            o.before,
            o.after
        );
    }
}
