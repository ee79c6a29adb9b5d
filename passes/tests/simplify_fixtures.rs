//! The trained fixtures through the O1 pipeline: fewer nodes, and outputs within 1e-5 of the
//! original model's in ONNX Runtime on the manifest's realistic inputs.

use kiln_compiler::DataType;
use kiln_compiler::ir::Model;
use kiln_compiler::onnx::load_model;
use kiln_compiler::pass::PipelineReport;
use kiln_compiler::tensor::Tensor;
use kiln_fixtures::{InputSpec, ValueRecipe};
use kiln_passes::simplify;
use kiln_passes::testing::{Rng, Tolerance, Value, compare_outputs, count_op, node_count, require_ort, run_in};

/// A seeded input following the manifest's recipe.
fn make_input(spec: &InputSpec, rng: &mut Rng) -> Tensor {
    let n: usize = spec.shape.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|_| match spec.values {
            ValueRecipe::Uniform { low, high } => rng.uniform(low, high),
            ValueRecipe::Normal { mean, std } => mean + std * rng.normal(),
            ValueRecipe::Integers { low, high } => rng.int(low, high) as f64,
            ValueRecipe::Fill { value } => value,
        })
        .collect();
    let dims = spec.shape.clone();
    match DataType::from_name(&spec.dtype).unwrap_or_else(|| panic!("dtype {}", spec.dtype)) {
        DataType::F32 => Tensor::from_slice(dims, &values.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        DataType::I64 => Tensor::from_slice(dims, &values.iter().map(|&v| v as i64).collect::<Vec<_>>()),
        DataType::I32 => Tensor::from_slice(dims, &values.iter().map(|&v| v as i32).collect::<Vec<_>>()),
        other => panic!("no generator for {other}"),
    }
    .unwrap()
}

struct Outcome {
    name: &'static str,
    before: usize,
    after: usize,
    constants_before: usize,
    report: PipelineReport,
}

fn check_fixture(name: &'static str) -> Outcome {
    let fixture = kiln_fixtures::fixture(name).unwrap();
    let path = kiln_fixtures::model(name).unwrap();
    let base = path.parent();
    let model: Model = load_model(&path).unwrap();
    let mut rng = Rng::new(0x6b69_6c6e);
    let inputs: Vec<(String, Value)> =
        fixture.inputs.iter().map(|i| (i.name.clone(), Value::Tensor(make_input(i, &mut rng)))).collect();
    let want = run_in(&model, base, &inputs).unwrap_or_else(|e| panic!("{name} before: {e}"));

    let mut after = model.clone();
    let report = simplify(&mut after).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = run_in(&after, base, &inputs).unwrap_or_else(|e| panic!("{name} after: {e}"));
    if let Err(e) = compare_outputs(&got, &want, Tolerance { abs: 1e-5, rel: 0.0 }) {
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
