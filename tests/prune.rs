//! Structured pruning end to end on the trained fixtures: the pruned models are valid, run in
//! ONNX Runtime, are smaller, and their accuracy against the original is measured (pruning
//! without fine-tuning costs accuracy; the numbers are printed with `--nocapture`, and the
//! assertions are what must hold at any ratio: validity, shapes, fewer parameters and FLOPs,
//! coupled tensors of equal shape, the reasons for what was left alone).

mod common;

use common::data::{cosine, floats};

use kiln::compiler::ir::{AttrLookup, Model};
use kiln::pipeline::{OptLevel, Pipeline, TargetKind};
use kiln::stages::StageReport;
use kiln::stages::prune::PruneOptions;
use kiln_passes::prune::{PruneConfig, mask, prune};
use kiln_passes::testing::{
    Tolerance, compare_outputs, count_in, fixture_inputs, fixture_model, max_abs_diff, require_ort, run,
};
use serde_json::Value as Json;

fn prune_at(name: &str, level: OptLevel, spec: &str) -> (Model, Model, StageReport) {
    let model = fixture_model(name).unwrap();
    let reference = Pipeline::new(level).target(TargetKind::Cpu).run(model.clone()).unwrap().model;
    let mut options = PruneOptions::parse(spec).unwrap();
    let fixture = kiln_fixtures::fixture(name).unwrap();
    options.input_shapes = fixture.inputs.iter().map(|i| (i.name.clone(), i.shape.clone())).collect();
    let mut outcome = Pipeline::new(level).target(TargetKind::Cpu).prune(Some(options)).run(model).unwrap();
    kiln::compiler::verify::check_model(&outcome.model).unwrap();
    let report = outcome.stages.remove(0);
    (reference, outcome.model, report)
}

fn fact_u64(r: &StageReport, k: &str) -> u64 {
    r.facts.get(k).and_then(Json::as_u64).unwrap_or_else(|| panic!("fact {k} missing: {:?}", r.facts))
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).unwrap_or(0)
}

/// Accuracy of `candidate` against `reference` on `samples` generated inputs of the fixture:
/// (top-1 agreement of output `out`, its max abs error, mean cosine).
fn agreement(name: &str, reference: &Model, candidate: &Model, out: usize, samples: u64) -> (f64, f64, f64) {
    let (mut same, mut worst, mut cos) = (0usize, 0f64, 0f64);
    for seed in 0..samples {
        let inputs = fixture_inputs(name, seed).unwrap();
        let want = run(reference, &inputs).unwrap();
        let got = run(candidate, &inputs).unwrap();
        let (w, g) = (floats(&want[out].1), floats(&got[out].1));
        assert_eq!(w.len(), g.len(), "{name}: output sizes differ");
        same += usize::from(argmax(&w) == argmax(&g));
        worst = w.iter().zip(&g).map(|(a, b)| (a - b).abs()).fold(worst, f64::max);
        cos += cosine(&w, &g);
    }
    (same as f64 / samples as f64, worst, cos / samples as f64)
}

/// Every Add and Mul of the main graph sees inputs of broadcast-compatible shapes, and every
/// residual Add (two computed inputs) sees identical shapes.
fn coupled_shapes_match(m: &Model, input: &str, dims: &[usize]) {
    let mut m = m.clone();
    let g = m.graph.as_mut().unwrap();
    let outs: Vec<_> = g.nodes().flat_map(|(_, n)| n.outputs().iter().flatten().copied().collect::<Vec<_>>()).collect();
    for v in outs {
        g.value_mut(v).ty = None;
    }
    let x = g.find_value(input).unwrap();
    let dtype = g.tensor_type(x).and_then(|t| t.dtype()).unwrap();
    g.value_mut(x).ty = Some(kiln::compiler::ir::Type::tensor(kiln::compiler::ir::TensorType::with_dims(dtype, dims)));
    kiln::compiler::shape::infer_model(&mut m);
    let g = m.graph.as_ref().unwrap();
    let mut residual = 0;
    for (id, n) in g.nodes().filter(|(_, n)| n.is_onnx("Add")) {
        let computed: Vec<_> =
            n.inputs().iter().flatten().filter(|&&v| g.value(v).initializer().is_none()).copied().collect();
        if computed.len() == 2 {
            let shapes: Vec<_> = computed.iter().map(|&v| g.tensor_type(v).and_then(|t| t.concrete_dims())).collect();
            assert!(shapes[0].is_some(), "{}: shape unknown", n.label(id));
            assert_eq!(shapes[0], shapes[1], "{} adds tensors of different shapes", n.label(id));
            residual += 1;
        }
    }
    assert!(residual > 0, "no residual Add found");
}

#[test]
fn cnn_channels_pruned_on_the_original_and_the_optimized_graph() {
    require_ort().unwrap();
    let mut decisions = Vec::new();
    for level in [OptLevel::O1, OptLevel::O2] {
        let (reference, pruned, report) = prune_at("cnn", level, "channels:0.3");
        let (pb, pa) = (fact_u64(&report, "parameters_before"), fact_u64(&report, "parameters_after"));
        let (fb, fa) = (fact_u64(&report, "flops_before"), fact_u64(&report, "flops_after"));
        assert!(pa * 10 < pb * 7, "{level:?}: parameters {pb} → {pa}");
        assert!(fa < fb, "{level:?}: FLOPs {fb} → {fa}");
        assert!(fact_u64(&report, "groups_pruned") >= 10, "{:?}", report.facts);
        // Left alone, with reasons: the stem (protected) and the last conv, whose channels
        // reach a Shape (which computes the flattening Reshape's target).
        let skipped = report.facts["skipped"].to_string();
        assert!(skipped.contains("first layer"), "{skipped}");
        assert!(skipped.contains("(Shape), whose channel mapping Kiln does not know"), "{skipped}");
        assert!(report.decisions.values().all(|d| d.starts_with("pruned ") && d.ends_with(" channels")));
        coupled_shapes_match(&pruned, "x", &[1, 3, 48, 192]);
        let (top1, max_abs, _) = agreement("cnn", &reference, &pruned, 0, 16);
        println!(
            "cnn {level:?} channels 30%: params {pb} → {pa}, FLOPs {fb} → {fa}, top-1 {top1:.3}, max abs {max_abs:.4}"
        );
        decisions.push(report.decisions);
    }
    // BatchNormalization folded or not, the same channels rank lowest.
    assert_eq!(decisions[0], decisions[1]);
}

#[test]
fn pruning_the_real_cnn_slices_exactly() {
    // Mask the channels 30% pruning would remove (zero where they are produced), then prune
    // the masked model: the masked channels rank lowest and go, and the outputs must not move.
    require_ort().unwrap();
    for name in ["cnn", "cnn_lcnet"] {
        let mut masked = Pipeline::new(OptLevel::O2).run(fixture_model(name).unwrap()).unwrap().model;
        let config = PruneConfig { channels: 0.3, ..PruneConfig::default() };
        let m = mask(&mut masked, &config).unwrap();
        let mut pruned = masked.clone();
        let p = prune(&mut pruned, &config).unwrap();
        assert_eq!(m.decisions, p.decisions, "{name}: the masked channels are the ones pruned");
        assert!(p.parameters_after < p.parameters_before);
        let mut worst = 0f64;
        for seed in 0..4 {
            let inputs = fixture_inputs(name, seed).unwrap();
            let want = run(&masked, &inputs).unwrap();
            let got = run(&pruned, &inputs).unwrap();
            compare_outputs(&got, &want, Tolerance { rtol: 1e-4, atol: 1e-5 })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            worst = worst.max(max_abs_diff(&got, &want));
        }
        println!("{name}: pruned vs masked max abs {worst:e}");
    }
}

#[test]
fn accuracy_falls_with_the_ratio_and_is_reported() {
    require_ort().unwrap();
    for name in ["cnn", "cnn_lcnet"] {
        let mut last_params = u64::MAX;
        for ratio in [0.1, 0.2, 0.3, 0.5] {
            let (reference, pruned, report) = prune_at(name, OptLevel::O2, &format!("channels:{ratio}"));
            let params = fact_u64(&report, "parameters_after");
            assert!(params < last_params, "{name}: more channels removed must leave fewer parameters");
            last_params = params;
            let (top1, max_abs, _) = agreement(name, &reference, &pruned, 0, 16);
            println!(
                "{name} O2 channels {:.0}%: params {} → {params}, FLOPs {} → {}, top-1 agreement {top1:.3}, max abs {max_abs:.4}",
                ratio * 100.0,
                fact_u64(&report, "parameters_before"),
                fact_u64(&report, "flops_before"),
                fact_u64(&report, "flops_after"),
            );
        }
    }
}

#[test]
fn transformer_heads_and_ffn_pruned_before_and_after_fusion() {
    require_ort().unwrap();
    for level in [OptLevel::O1, OptLevel::O3] {
        let (reference, pruned, report) = prune_at("transformer", level, "heads:0.25,ffn:0.2");
        let pruned_groups = report.facts["pruned"].as_array().unwrap().clone();
        let heads: Vec<_> = pruned_groups.iter().filter(|g| g["kind"] == "heads").collect();
        let ffn: Vec<_> = pruned_groups.iter().filter(|g| g["kind"] == "ffn").collect();
        assert_eq!(heads.len(), 3, "{level:?}: {:?}", report.facts);
        assert!(heads.iter().all(|g| g["removed"] == 3 && g["size"] == 12));
        assert_eq!(ffn.len(), 3, "{level:?}: {:?}", report.facts);
        assert!(ffn.iter().all(|g| g["removed"] == 307 && g["size"] == 1536));
        if level == OptLevel::O3 {
            let g = pruned.graph.as_ref().unwrap();
            let heads: Vec<_> = g
                .nodes()
                .filter(|(_, n)| n.op_type == "Attention")
                .map(|(_, n)| n.attributes.attr_int("num_heads"))
                .collect();
            assert_eq!(heads, vec![Some(9); 3]);
            assert_eq!(count_in(&pruned, "com.microsoft", "Attention"), 3);
        }
        let (pb, pa) = (fact_u64(&report, "parameters_before"), fact_u64(&report, "parameters_after"));
        assert!(pa < pb);
        // Output 3 is the sentence embedding.
        let (_, max_abs, cos) = agreement("transformer", &reference, &pruned, 3, 8);
        println!(
            "transformer {level:?} heads 25% ffn 20%: params {pb} → {pa}, sentence cosine {cos:.4}, max abs {max_abs:.4}"
        );
        assert!(cos.is_finite());
    }
}

#[test]
fn optimize_writes_the_prune_report_into_the_manifest() {
    require_ort().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = kiln_fixtures::model("cnn").unwrap();
    let args = [
        model.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--opt".as_ref(),
        "O2".as_ref(),
        "--prune".as_ref(),
        "channels:0.3,scope:global".as_ref(),
    ];
    let o = common::optimize(&args);
    common::assert_ok(&o);
    let manifest: Json = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let text = manifest.to_string();
    for key in ["parameters_before", "flops_after", "groups_skipped", "pruned ", "global"] {
        assert!(text.contains(key), "manifest lacks {key}");
    }
    // The pruned model is valid for ONNX itself, not only for ONNX Runtime.
    common::onnx_check(&[out.join("model.onnx")]);
    let bad = common::optimize(&[
        model.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--prune".as_ref(),
        "channels:1.5".as_ref(),
    ]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
}
