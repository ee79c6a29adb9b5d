//! The other real models: PP-OCRv4 SVTR recognizer (opset 12, layer normalization written out,
//! weights as Constant nodes) and the PP-OCR mobile classifier (Conv + BatchNormalization).

use kiln_passes::fuse::{FusionPass, MS_DOMAIN};
use kiln_passes::testing::*;

fn report(name: &str, entries: &[kiln_compiler::pass::ReportEntry]) {
    let mut rules: Vec<&str> = entries.iter().map(|e| e.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    for r in rules {
        let a = entries.iter().filter(|e| e.rule == r && e.kind == "applied").count();
        let mut reasons: Vec<&str> =
            entries.iter().filter(|e| e.rule == r && e.kind != "applied").map(|e| e.detail.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        eprintln!("{name}: {r}: applied {a}; not matched: {reasons:?}");
    }
}

#[test]
fn svtr_recognizer_fuses_attention_layer_norms_and_residuals() {
    let original = fixture_model("transformer_ocr").unwrap();
    let mut rng = Rng::new(3);
    let a = vec![("x", rng.tensor(&[1, 3, 48, 320], -1.0, 1.0))];
    let b = vec![("x", rng.tensor(&[2, 3, 48, 160], -1.0, 1.0))];
    let mut m = original.clone();
    // As O3 does: simplify first (the packed Q/K/V reshape targets are Casts of Constant
    // nodes in the file), then shapes.
    kiln_passes::simplify(&mut m).unwrap();
    kiln_compiler::shape::infer_model(&mut m);
    let mut entries = run_pass(&FusionPass::portable(), &mut m);
    entries.extend(run_pass(&FusionPass::ort(), &mut m));
    report("transformer_ocr", &entries);
    eprintln!("nodes {} -> {}", original.graph.as_ref().unwrap().node_count(), m.graph.as_ref().unwrap().node_count());
    // 5 written-out layer norms: 3 after a residual Add (SkipLayerNormalization), 2 not.
    assert_eq!(count_in(&m, "", "ReduceMean"), 0);
    assert_eq!(count_in(&m, MS_DOMAIN, "SkipLayerNormalization") + count_in(&m, "", "LayerNormalization"), 5);
    assert!(count_in(&m, MS_DOMAIN, "SkipLayerNormalization") >= 3);
    assert_eq!(count_in(&m, "", "BatchNormalization"), 0, "every BatchNormalization follows a Conv");
    // Both self-attention blocks (one packed Q/K/V projection each); the one Softmax left is
    // the CTC head's.
    assert_eq!(count_in(&m, MS_DOMAIN, "Attention"), 2);
    assert_eq!(count_in(&m, "", "Softmax"), 1);
    for f in [&a, &b] {
        let worst = assert_same(&original, &m, f, abs_tol(1e-4));
        eprintln!("transformer_ocr max abs difference: {worst:e}");
    }
}

#[test]
fn mobile_classifier_folds_batch_norms_and_fuses_activations() {
    let original = fixture_model("cnn").unwrap();
    let mut rng = Rng::new(5);
    let a = vec![("x", rng.tensor(&[1, 3, 48, 192], -1.0, 1.0))];
    let mut m = original.clone();
    let mut entries = run_pass(&FusionPass::portable(), &mut m);
    entries.extend(run_pass(&FusionPass::ort(), &mut m));
    report("cnn", &entries);
    eprintln!("nodes {} -> {}", original.graph.as_ref().unwrap().node_count(), m.graph.as_ref().unwrap().node_count());
    assert_eq!(count_in(&m, "", "BatchNormalization"), 0);
    assert!(count_in(&m, MS_DOMAIN, "FusedConv") > 0);
    let worst = assert_same(&original, &m, &a, abs_tol(1e-4));
    eprintln!("cnn max abs difference: {worst:e}");
}
