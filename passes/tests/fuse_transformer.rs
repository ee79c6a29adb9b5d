//! The key real-model test: paraphrase-MiniLM-L3 (BERT, 3 layers, opset 17, erf GELU,
//! LayerNormalization) through `fuse-portable` then `fuse-ort`.

use kiln_compiler::pass::{Pass, PassManager};
use kiln_passes::fuse::{FusionPass, MS_DOMAIN};
use kiln_passes::testing::*;

fn feeds(rng: &mut Rng, batch: usize, seq: usize) -> Vec<(&'static str, kiln_compiler::Tensor)> {
    let ids = rng.ints(&[batch, seq], 1000, 30522);
    let mask = kiln_compiler::Tensor::from_slice(vec![batch, seq], &vec![1i64; batch * seq]).unwrap();
    vec![("input_ids", ids), ("attention_mask", mask)]
}

#[test]
fn minilm_fuses_every_block_and_keeps_its_outputs() {
    let original = fixture_model("transformer").unwrap();
    let mut rng = Rng::new(7);
    let a = feeds(&mut rng, 1, 16);
    let b = feeds(&mut rng, 2, 7);
    let mut m = original.clone();
    kiln_compiler::shape::infer_model(&mut m);

    let mut entries = run_pass(&FusionPass::portable(), &mut m);
    entries.extend(run_pass(&FusionPass::ort(), &mut m));
    for e in &entries {
        eprintln!("{:8} {:16} {} — {}", e.kind, e.rule, e.node, e.detail);
    }
    let counts = [
        ("Attention", count_in(&m, MS_DOMAIN, "Attention")),
        ("SkipLayerNormalization", count_in(&m, MS_DOMAIN, "SkipLayerNormalization")),
        ("BiasGelu", count_in(&m, MS_DOMAIN, "BiasGelu")),
        ("Gelu", count_in(&m, MS_DOMAIN, "Gelu") + count_in(&m, "", "Gelu")),
        ("EmbedLayerNormalization", count_in(&m, MS_DOMAIN, "EmbedLayerNormalization")),
        ("LayerNormalization", count_in(&m, "", "LayerNormalization")),
        ("MatMul", count_in(&m, "", "MatMul")),
        ("Softmax", count_in(&m, "", "Softmax")),
    ];
    eprintln!(
        "nodes: {} -> {}; {counts:?}",
        original.graph.as_ref().unwrap().node_count(),
        m.graph.as_ref().unwrap().node_count()
    );
    assert_eq!(count_in(&m, MS_DOMAIN, "Attention"), 3, "every self-attention block fused");
    assert_eq!(count_in(&m, "", "Softmax"), 0);
    assert_eq!(count_in(&m, MS_DOMAIN, "SkipLayerNormalization"), 6);
    assert_eq!(count_in(&m, MS_DOMAIN, "BiasGelu"), 3);
    assert_eq!(count_in(&m, MS_DOMAIN, "EmbedLayerNormalization"), 1);
    assert_eq!(count_in(&m, "", "LayerNormalization"), 0);
    assert!(m.opset_import.iter().any(|o| o.domain() == MS_DOMAIN));

    for f in [&a, &b] {
        let worst = assert_same(&original, &m, f, abs_tol(1e-4));
        eprintln!("max abs difference on {:?}: {worst:e}", f[0].1.dims());
    }
    // Padding: the raw 2-D mask stays exact when the mask has zeros.
    let mut padded = feeds(&mut rng, 2, 9);
    let mut mask = vec![1i64; 18];
    mask[7] = 0;
    mask[8] = 0;
    mask[9] = 0;
    padded[1].1 = kiln_compiler::Tensor::from_slice(vec![2, 9], &mask).unwrap();
    let worst = assert_same(&original, &m, &padded, abs_tol(1e-4));
    eprintln!("max abs difference with padding: {worst:e}");
}

#[test]
fn minilm_runs_to_a_fixed_point_under_the_pass_manager() {
    let mut m = fixture_model("transformer").unwrap();
    kiln_compiler::shape::infer_model(&mut m);
    let pm = PassManager::new().with(FusionPass::portable()).with(FusionPass::ort()).verify(true);
    let report = pm.run(&mut m).unwrap();
    assert_eq!(report.passes.last().map(|p| p.changed), Some(false));
    assert_eq!(count_in(&m, MS_DOMAIN, "Attention"), 3);
    assert!(FusionPass::ort().name() == "fuse-ort");
}

#[test]
fn without_shapes_the_shape_guards_skip_and_say_so() {
    let mut m = fixture_model("transformer").unwrap();
    let entries = run_pass(&FusionPass::ort(), &mut m);
    // Attention and EmbedLayerNormalization need only declared input types.
    assert_eq!(count_in(&m, MS_DOMAIN, "Attention"), 3);
    assert_eq!(count_in(&m, MS_DOMAIN, "EmbedLayerNormalization"), 1);
    // SkipLayerNormalization needs the Add inputs' shapes.
    assert_eq!(count_in(&m, MS_DOMAIN, "SkipLayerNormalization"), 0);
    assert!(entries.iter().any(|e| e.kind == "skipped" && e.rule == "skip-layernorm" && e.detail.contains("unknown")));
}
