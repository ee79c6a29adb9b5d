//! FP16 and BF16 through the `half` stage, end to end: every trained fixture and every
//! conformance case with float tensors converts, loads and runs in ONNX Runtime (CPU), with
//! task metrics against FP32.

use std::collections::BTreeMap;

use kiln::compiler::DataType;
use kiln::compiler::ir::Model;
use kiln::compiler::runtime::SessionConfig;
use kiln::compiler::verify::check_model;
use kiln::stages::StageContext;
use kiln::stages::half::{HalfKind, HalfOptions, run as run_half};
use kiln_passes::testing::{
    CaseOutcome, Tolerance, Value, compare_outputs, fixture_inputs, fixture_model, read_data_sets, require_ort, run,
    run_case,
};

const FIXTURES: [&str; 6] = ["cnn", "cnn_lcnet", "transformer", "transformer_ocr", "recurrent", "recurrent_op15"];

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Tensor(t) if t.dtype().is_float() => t.to_f64_vec().unwrap(),
        _ => Vec::new(),
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 { 1.0 } else { dot / (na * nb) }
}

fn argmax_rows(v: &[f64], row: usize) -> Vec<usize> {
    v.chunks(row).map(|r| r.iter().enumerate().fold(0, |best, (i, x)| if *x > r[best] { i } else { best })).collect()
}

/// Converts with the stage as `optimize --precision` runs it (target cpu, no data).
fn convert(model: &Model, kind: HalfKind) -> (Model, kiln::stages::StageReport) {
    let mut m = model.clone();
    let report = run_half(&mut m, &HalfOptions::new(kind), &StageContext::default()).unwrap();
    check_model(&m).unwrap_or_else(|e| panic!("invalid after {kind:?}: {e}"));
    (m, report)
}

struct FixtureResult {
    max_abs: f64,
    min_cosine: f64,
    top1_agreement: f64,
}

/// Runs FP32 and the converted model on `samples` recipe inputs; per float output the worst
/// cosine and max abs error, and the argmax agreement of the last float output's rows.
fn compare_fixture(name: &str, fp32: &Model, half: &Model, samples: u64) -> FixtureResult {
    let mut r = FixtureResult { max_abs: 0.0, min_cosine: 1.0, top1_agreement: 0.0 };
    let (mut agree, mut rows) = (0usize, 0usize);
    for seed in 0..samples {
        let inputs = fixture_inputs(name, seed).unwrap();
        let want = run(fp32, &inputs).unwrap();
        let got = run(half, &inputs).unwrap_or_else(|e| panic!("{name}: ORT cannot run the converted model: {e}"));
        assert_eq!(got.len(), want.len());
        for ((gn, g), (wn, w)) in got.iter().zip(&want) {
            assert_eq!(gn, wn);
            if let (Value::Tensor(gt), Value::Tensor(wt)) = (g, w) {
                assert_eq!(gt.dtype(), wt.dtype(), "{name}: output '{gn}' changed type");
            }
            let (a, b) = (floats(g), floats(w));
            if b.is_empty() {
                continue;
            }
            assert!(a.iter().all(|x| x.is_finite()), "{name}: '{gn}' has non-finite values");
            r.max_abs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(r.max_abs, f64::max);
            r.min_cosine = r.min_cosine.min(cosine(&a, &b));
        }
        if let Some((_, Value::Tensor(t))) = want.iter().rev().find(|(_, v)| !floats(v).is_empty()) {
            let row = t.dims().last().copied().unwrap_or(1).max(1);
            let name_last = &want.iter().rev().find(|(_, v)| !floats(v).is_empty()).unwrap().0;
            let g = got.iter().find(|(n, _)| n == name_last).unwrap();
            let (x, y) = (argmax_rows(&floats(&g.1), row), argmax_rows(&t.to_f64_vec().unwrap(), row));
            agree += x.iter().zip(&y).filter(|(p, q)| p == q).count();
            rows += y.len();
        }
    }
    r.top1_agreement = agree as f64 / rows.max(1) as f64;
    r
}

#[test]
fn every_fixture_converts_loads_and_stays_accurate_in_fp16_and_bf16() {
    require_ort().unwrap();
    let mut table = Vec::new();
    for name in FIXTURES {
        let fp32 = fixture_model(name).unwrap();
        for kind in [HalfKind::F16, HalfKind::Bf16] {
            let (half, report) = convert(&fp32, kind);
            let r = compare_fixture(name, &fp32, &half, 4);
            let converted = report.facts["tensors_converted"].as_u64().unwrap();
            eprintln!(
                "{name} {kind:?}: max_abs {:.3e}, min cosine {:.6}, top-1 agreement {:.3}, tensors converted {converted}, \
                 nodes fp32 {}",
                r.max_abs, r.min_cosine, r.top1_agreement, report.facts["nodes_fp32"]
            );
            table.push((name, kind, r, converted));
        }
    }
    for (name, kind, r, converted) in &table {
        // FP16 converts every fixture. BF16 on ONNX Runtime CPU converts only what has BF16
        // kernels there (LayerNormalization, data movement), and nothing at opsets before 13,
        // whose type constraints do not allow BF16 at all.
        if *kind == HalfKind::F16 || *name == "transformer" {
            assert!(*converted > 0, "{name} {kind:?}: nothing converted");
        }
        let (cos, top1) = match (*name, kind) {
            (_, HalfKind::F16) => (0.999, 1.0),
            (_, HalfKind::Bf16) => (0.99, 1.0),
        };
        assert!(r.min_cosine >= cos, "{name} {kind:?}: cosine {}", r.min_cosine);
        if matches!(*name, "cnn" | "cnn_lcnet") {
            assert!(r.top1_agreement >= top1, "{name} {kind:?}: top-1 agreement {}", r.top1_agreement);
        }
    }
    // The transformer's sentence embedding and the classifier's probabilities, specifically.
    let transformer = table.iter().find(|(n, k, ..)| *n == "transformer" && *k == HalfKind::F16).unwrap();
    assert!(transformer.2.min_cosine >= 0.9995, "transformer fp16 cosine {}", transformer.2.min_cosine);
    let cnn = table.iter().find(|(n, k, ..)| *n == "cnn" && *k == HalfKind::F16).unwrap();
    assert!(cnn.2.max_abs <= 1e-2, "cnn fp16 max abs {}", cnn.2.max_abs);
}

#[test]
fn fp16_converts_the_bulk_of_the_cnn_and_keeps_its_interface() {
    require_ort().unwrap();
    let fp32 = fixture_model("cnn").unwrap();
    let (half, report) = convert(&fp32, HalfKind::F16);
    let g = half.graph.as_ref().unwrap();
    for &v in g.inputs().iter().chain(g.outputs()) {
        assert_eq!(g.tensor_type(v).and_then(|t| t.dtype()), Some(DataType::F32));
    }
    let half_nodes = report.decisions.values().filter(|d| *d == "fp16").count();
    assert!(half_nodes * 10 >= report.decisions.len() * 9, "{half_nodes} of {}", report.decisions.len());
    // Weights are Constant nodes in this model: they are converted, not cast at run time; the
    // only casts Kiln adds are the input's and the output's (the model's own shape casts stay).
    assert_eq!(report.facts["casts_inserted"].as_u64(), Some(2), "{:?}", report.facts);
}

/// Float tensors anywhere in the main graph's interface or weights.
fn has_float_tensors(m: &Model) -> bool {
    let g = m.graph.as_ref().unwrap();
    let f32_at = |v| g.tensor_type(v).and_then(|t| t.dtype()) == Some(DataType::F32);
    g.inputs().iter().chain(g.outputs()).any(|&v| f32_at(v))
        || g.initializers().iter().any(|&v| g.value(v).initializer().is_some_and(|t| t.dtype() == DataType::F32))
}

/// Every conformance case with float tensors that ONNX Runtime runs as shipped, converted to
/// FP16 and BF16 and run on its recorded inputs: how many fail to load or run (must stay at
/// the counts reached) and how many match the expected outputs within a 16-bit tolerance.
#[test]
fn conformance_survey_in_fp16_and_bf16() {
    require_ort().unwrap();
    let cases = kiln_fixtures::conformance_cases().unwrap();
    let config = SessionConfig::default();
    let mut failures: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut within: BTreeMap<&str, usize> = BTreeMap::new();
    let mut outside: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut surveyed = 0;
    for case in &cases {
        let Ok(model) = kiln::compiler::onnx::load_model(&case.model) else { continue };
        if !has_float_tensors(&model) {
            continue;
        }
        let Ok(sets) = read_data_sets(case, &model) else { continue };
        if run_case(&model, &case.dir, &sets, &config).0 != CaseOutcome::Passed {
            continue;
        }
        surveyed += 1;
        for (kind, label, tol) in [
            (HalfKind::F16, "fp16", Tolerance { rtol: 1e-2, atol: 1e-2 }),
            (HalfKind::Bf16, "bf16", Tolerance { rtol: 4e-2, atol: 4e-2 }),
        ] {
            let mut m = model.clone();
            let converted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_half(&mut m, &HalfOptions::new(kind), &StageContext::default())
            }));
            let fail = |why: String| format!("{}: {}", case.name, why.lines().next().unwrap_or(""));
            match converted {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    failures.entry(label).or_default().push(fail(format!("conversion failed: {e}")));
                    continue;
                }
                Err(_) => {
                    failures.entry(label).or_default().push(fail("conversion panicked".into()));
                    continue;
                }
            }
            if let Err(e) = check_model(&m) {
                failures.entry(label).or_default().push(fail(format!("invalid: {e}")));
                continue;
            }
            let mut session = match kiln::compiler::execute::load_session(
                &kiln::compiler::runtime::OrtExecutor::new(),
                &m,
                Some(&case.dir),
                &config,
            ) {
                Ok(s) => s,
                Err(e) => {
                    failures.entry(label).or_default().push(fail(format!("ORT cannot load: {e}")));
                    continue;
                }
            };
            let mut verdict: Result<(), String> = Ok(());
            for set in &sets {
                let names: Vec<String> = set.outputs.iter().map(|(n, _)| n.clone()).collect();
                match session.run(&set.inputs, Some(&names)) {
                    Ok(got) => {
                        if let Err(e) = compare_outputs(&got, &set.outputs, tol) {
                            verdict = Err(e);
                            break;
                        }
                    }
                    Err(e) => {
                        failures.entry(label).or_default().push(fail(format!("ORT cannot run: {e}")));
                        verdict = Err(String::new());
                        break;
                    }
                }
            }
            match verdict {
                Ok(()) => *within.entry(label).or_default() += 1,
                Err(e) if !e.is_empty() => outside.entry(label).or_default().push(fail(e)),
                Err(_) => {}
            }
        }
    }
    eprintln!("conformance survey: {surveyed} cases with float tensors that ORT runs as shipped");
    for label in ["fp16", "bf16"] {
        let f = failures.get(label).map_or(&[][..], Vec::as_slice);
        let o = outside.get(label).map_or(&[][..], Vec::as_slice);
        eprintln!(
            "  {label}: {} fail to convert/load/run, {} within tolerance, {} outside it",
            f.len(),
            within.get(label).copied().unwrap_or(0),
            o.len()
        );
        for line in f {
            eprintln!("    FAIL {line}");
        }
        for line in o {
            eprintln!("    outside {line}");
        }
    }
    assert!(surveyed > 900, "only {surveyed} cases surveyed");
    let count = |label| failures.get(label).map_or(0, Vec::len);
    assert_eq!(count("fp16"), MAX_FP16_FAILURES, "fp16 failures");
    assert_eq!(count("bf16"), MAX_BF16_FAILURES, "bf16 failures");
}

/// The failure counts reached (see the survey's listing for each case and its reason).
const MAX_FP16_FAILURES: usize = 0;
const MAX_BF16_FAILURES: usize = 0;
