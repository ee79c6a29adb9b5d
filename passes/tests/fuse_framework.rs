//! The rule framework itself: atomic patches, reports, subgraphs, captures, extension.

use kiln_compiler::ir::{AttrValue, Graph, NodeId, NodeSpec};
use kiln_compiler::pass::Pass;
use kiln_passes::fuse::{FusionPass, MS_DOMAIN, Matcher, NewNode, NoMatch, OrMiss, Patch, Rule};
use kiln_passes::testing::*;

/// A deliberately wrong rule: replaces Relu by Neg but forgets the Relu's other reader.
struct BadRule;

impl Rule for BadRule {
    fn name(&self) -> &'static str {
        "bad"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Sigmoid")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let s = m.node(root);
        let x = s.input(0).here()?;
        let relu = m.g.value(x).producer().here()?;
        let mut p = Patch::new();
        p.node(NewNode::onnx("Gelu").input(m.node(relu).input(0).here()?).reuse(s.output(0).here()?));
        p.remove([relu, root]);
        Ok(p)
    }
}

#[test]
fn a_patch_that_would_leave_a_dangling_use_is_rejected_and_nothing_changes() {
    let mut b = B::new(1);
    let x = b.input("x", &[4]);
    let r = b.op("Relu", &[x], vec![]);
    let s = b.op("Sigmoid", &[r], vec![]);
    let t = b.op("Tanh", &[r], vec![]);
    b.output(s);
    b.output(t);
    let before = b.model(20);
    let mut after = before.clone();
    let pass = FusionPass::new("bad-set", [&BadRule as &dyn Rule]);
    let entries = run_pass(&pass, &mut after);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, "missed");
    assert!(
        entries[0].detail.starts_with("patch rejected: 'Relu_1_out' is still used by 'Tanh_3' (Tanh)"),
        "{}",
        entries[0].detail
    );
    assert_eq!(kiln_compiler::dump::dump_model(&after), kiln_compiler::dump::dump_model(&before));
}

/// A rule whose replacement has the wrong element type.
struct CastRule;

impl Rule for CastRule {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Relu")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let n = m.node(root);
        let mut p = Patch::new();
        p.node(NewNode::onnx("Cast").input(n.input(0).here()?).attr(A::int("to", 7)).reuse(n.output(0).here()?));
        p.remove([root]);
        Ok(p)
    }
}

#[test]
fn a_patch_that_changes_an_element_type_is_rejected() {
    let mut b = B::new(2);
    let x = b.input("x", &[4]);
    let r = b.op("Relu", &[x], vec![]);
    b.declare(r, &[4]);
    b.output(r);
    let mut m = b.model(13);
    let entries = run_pass(&FusionPass::new("cast-set", [&CastRule as &dyn Rule]), &mut m);
    assert_eq!(entries[0].detail, "patch rejected: new Cast output 0 is i64, 'Relu_1_out' was f32");
    assert_eq!(count_in(&m, "", "Relu"), 1);
}

/// Conv + BatchNormalization inside both branches of an If.
fn if_model(capture_conv_output: bool) -> kiln_compiler::ir::Model {
    let mut b = B::new(3);
    let x = b.input("x", &[1, 2, 5, 5]);
    let cond = b.input_typed("cond", kiln_compiler::DataType::Bool, &[]);
    let branch = |seed: u64| {
        let mut g = Graph::new();
        g.name = Some(format!("branch{seed}"));
        let mut rng = Rng::new(seed);
        let xo = g.add_outer("x");
        let w = constant(&mut g, "w", rng.tensor(&[2, 2, 3, 3], -0.5, 0.5));
        let c =
            g.add_node(NodeSpec::new("Conv").inputs([xo, w]).outputs(["c"]).attr(A::ints("pads", vec![1, 1, 1, 1])));
        let c = g.node(c).output(0).unwrap();
        let p: Vec<_> = (0..4).map(|i| constant(&mut g, &format!("p{i}"), rng.tensor(&[2], 0.5, 1.5))).collect();
        let bn = g.add_node(NodeSpec::new("BatchNormalization").inputs([c, p[0], p[1], p[2], p[3]]).outputs(["y"]));
        let y = g.node(bn).output(0).unwrap();
        g.push_output(y);
        g
    };
    let mut main = if capture_conv_output {
        // The main graph has its own Conv → BN whose Conv output a branch also reads by name.
        let w = b.weight("wm", &[2, 2, 1, 1], -0.5, 0.5);
        let c = b.op("Conv", &[x, w], vec![]);
        let p: Vec<_> = (0..4).map(|i| b.weight(&format!("q{i}"), &[2], 0.5, 1.5)).collect();
        let y = b.op("BatchNormalization", &[c, p[0], p[1], p[2], p[3]], vec![]);
        b.output(y);
        let mut g = Graph::new();
        g.name = Some("reader".into());
        let cm = g.add_outer(b.g.value(c).name.clone());
        let id = g.add_node(NodeSpec::new("Identity").inputs([cm]).outputs(["z"]));
        let z = g.node(id).output(0).unwrap();
        g.push_output(z);
        (g.clone(), g)
    } else {
        (branch(10), branch(11))
    };
    let spec = NodeSpec::new("If")
        .inputs([cond])
        .outputs(["out"])
        .attr(A::new("then_branch", AttrValue::Graph(Box::new(std::mem::take(&mut main.0)))))
        .attr(A::new("else_branch", AttrValue::Graph(Box::new(std::mem::take(&mut main.1)))));
    let id = b.g.add_node(spec);
    let out = b.g.node(id).output(0).unwrap();
    b.output(out);
    b.model(13)
}

#[test]
fn rules_run_inside_subgraphs() {
    let before = if_model(false);
    let mut after = before.clone();
    let entries = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(applied(&entries, "conv-bn"), 2);
    assert!(entries.iter().any(|e| e.node.starts_with("branch10: ")));
    assert_eq!(count_in(&after, "", "BatchNormalization"), 0);
    let mut rng = Rng::new(4);
    for c in [true, false] {
        let feeds = vec![
            ("x", rng.tensor(&[1, 2, 5, 5], -1.0, 1.0)),
            ("cond", kiln_compiler::Tensor::from_slice(vec![], &[c]).unwrap()),
        ];
        assert_same(&before, &after, &feeds, abs_tol(1e-4));
    }
}

#[test]
fn a_value_a_subgraph_reads_is_not_fused_away() {
    let before = if_model(true);
    let mut after = before.clone();
    let entries = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "BatchNormalization"), 1);
    assert_eq!(why(&entries, "conv-bn"), ["missed: the Conv output has other uses"]);
}

#[test]
fn layer_norm_before_opset_17_uses_the_ort_kernel() {
    // The SVTR fixture case in small: opset 12, written out; ONNX Runtime registers
    // LayerNormalization for the default domain from version 1.
    let mut b = B::new(5);
    let x = b.input("x", &[2, 3, 8]);
    let mean = b.op("ReduceMean", &[x], vec![A::ints("axes", vec![-1])]);
    let d = b.op("Sub", &[x, mean], vec![]);
    let two = b.scalar(2.0);
    let sq = b.op("Pow", &[d, two], vec![]);
    let var = b.op("ReduceMean", &[sq], vec![A::ints("axes", vec![-1])]);
    let eps = b.scalar(1e-6);
    let ve = b.op("Add", &[var, eps], vec![]);
    let s = b.op("Sqrt", &[ve], vec![]);
    let y = b.op("Div", &[d, s], vec![]);
    b.declare(x, &[2, 3, 8]);
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[2, 3, 8], -2.0, 2.0))];
    let before = b.model(12);
    let mut after = before.clone();
    let entries = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(applied(&entries, "layernorm-ort"), 1);
    assert_eq!(count_in(&after, "", "LayerNormalization"), 1);
    assert_same(&before, &after, &feeds, abs_tol(1e-4));
}

#[test]
fn rule_sets_have_stable_names_and_registries() {
    assert_eq!(FusionPass::portable().name(), "fuse-portable");
    assert_eq!(FusionPass::ort().name(), "fuse-ort");
    assert_eq!(
        FusionPass::portable().rule_names(),
        ["conv-bn", "conv-mul", "conv-add", "matmul-add-gemm", "layernorm", "gelu"]
    );
    let ort = FusionPass::ort().rule_names();
    for r in ["attention", "skip-layernorm", "embed-layernorm", "bias-gelu", "fast-gelu", "fused-conv", "fused-gemm"] {
        assert!(ort.contains(&r), "{r}");
    }
    assert_eq!(MS_DOMAIN, "com.microsoft");
}
