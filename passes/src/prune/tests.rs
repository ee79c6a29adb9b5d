//! Pruning tiny graphs, checked in ONNX Runtime: channels whose weights are exactly zero are
//! removed with no change to the outputs (which proves every slice lines up), real channels
//! leave a valid model with consistent shapes, and what Kiln cannot prove is left alone.

use kiln_compiler::Tensor;
use kiln_compiler::ir::{Model, ValueId};

use super::*;
use crate::testing::{A, B, Rng, Tolerance, assert_same, count_in, require_ort, run, seeded_inputs};

const CLOSE: Tolerance = Tolerance { rtol: 1e-4, atol: 1e-5 };

fn cfg(channels: f64, heads: f64, ffn: f64) -> PruneConfig {
    PruneConfig { channels, heads, ffn, protect_ends: false, align: 1, ..PruneConfig::default() }
}

/// A seeded weight whose slices `zero` along `axis` are exactly zero.
fn weight_zeroed(b: &mut B, name: &str, dims: &[usize], axis: usize, zero: &[usize]) -> ValueId {
    let t = b.rng.tensor(dims, -1.0, 1.0);
    let mut v = t.to_vec::<f32>().unwrap();
    let inner: usize = dims[axis + 1..].iter().product();
    for (i, x) in v.iter_mut().enumerate() {
        if zero.contains(&((i / inner) % dims[axis])) {
            *x = 0.0;
        }
    }
    b.konst(name, Tensor::from_slice(dims.to_vec(), &v).unwrap())
}

/// BatchNormalization parameters that map a zero channel to zero (beta = mean = 0 there).
fn bn(b: &mut B, x: ValueId, c: usize, zero: &[usize]) -> ValueId {
    let gamma = b.weight(&format!("g{}", b.g.value_count()), &[c], 0.5, 1.5);
    let beta = weight_zeroed(b, &format!("be{}", b.g.value_count()), &[c], 0, zero);
    let mean = weight_zeroed(b, &format!("m{}", b.g.value_count()), &[c], 0, zero);
    let var = b.weight(&format!("v{}", b.g.value_count()), &[c], 0.5, 1.5);
    b.op("BatchNormalization", &[x, gamma, beta, mean, var], vec![])
}

fn conv(b: &mut B, x: ValueId, w: ValueId, group: i64, pad: i64) -> ValueId {
    b.op("Conv", &[x, w], vec![A::int("group", group), A::ints("pads", vec![pad, pad, pad, pad])])
}

fn prune_checked(m: &Model, config: &PruneConfig) -> (Model, PruneReport) {
    let mut after = m.clone();
    let report = prune(&mut after, config).unwrap_or_else(|e| panic!("{e}"));
    kiln_compiler::verify::check_model(&after).unwrap();
    (after, report)
}

fn outputs_shapes(m: &Model) -> Vec<Vec<usize>> {
    let inputs = seeded_inputs(m, 7, 1).unwrap();
    run(m, &inputs)
        .unwrap()
        .into_iter()
        .map(|(_, v)| match v {
            crate::testing::Value::Tensor(t) => t.dims().to_vec(),
            _ => vec![],
        })
        .collect()
}

/// Conv → BN → Relu → Conv, 8 channels in the middle, channels `zero` dead.
fn conv_bn_relu(zero: &[usize]) -> Model {
    let mut b = B::new(1);
    let x = b.input("x", &[1, 3, 8, 8]);
    let w1 = weight_zeroed(&mut b, "w1", &[8, 3, 3, 3], 0, zero);
    let c1 = conv(&mut b, x, w1, 1, 1);
    let n1 = bn(&mut b, c1, 8, zero);
    let r1 = b.op("Relu", &[n1], vec![]);
    let w2 = b.weight("w2", &[6, 8, 1, 1], -1.0, 1.0);
    let y = conv(&mut b, r1, w2, 1, 0);
    b.declare(y, &[1, 6, 8, 8]);
    b.output(y);
    b.model(13)
}

#[test]
fn zero_channels_of_conv_bn_relu_prune_exactly() {
    require_ort().unwrap();
    let m = conv_bn_relu(&[1, 4, 6]);
    let (after, report) = prune_checked(&m, &cfg(0.375, 0.0, 0.0));
    assert_eq!(report.pruned().count(), 1, "{:?}", report.groups);
    assert_eq!(report.decisions.get("Conv_1").map(String::as_str), Some("pruned 3/8 channels"));
    let g = after.graph.as_ref().unwrap();
    let w1 = g.value(g.find_value("w1").unwrap()).initializer().unwrap().dims().to_vec();
    assert_eq!(w1, vec![5, 3, 3, 3]);
    assert!(report.parameters_after < report.parameters_before);
    assert!(report.flops_after < report.flops_before);
    let inputs = seeded_inputs(&m, 3, 1).unwrap();
    assert_same(&m, &after, &inputs, CLOSE);
}

#[test]
fn live_channels_change_the_outputs() {
    // The twin: nothing is zero, so removing 3 of 8 channels must change the numbers (and
    // keep the model valid and its output shape).
    require_ort().unwrap();
    let m = conv_bn_relu(&[]);
    let (after, report) = prune_checked(&m, &cfg(0.375, 0.0, 0.0));
    assert_eq!(report.pruned().count(), 1);
    let inputs = seeded_inputs(&m, 3, 1).unwrap();
    let want = run(&m, &inputs).unwrap();
    let got = run(&after, &inputs).unwrap();
    assert!(crate::testing::max_abs_diff(&got, &want) > 1e-3);
    assert_eq!(outputs_shapes(&after), outputs_shapes(&m));
}

#[test]
fn first_layer_is_protected_by_default() {
    let m = conv_bn_relu(&[1, 4, 6]);
    let mut after = m.clone();
    let report = prune(&mut after, &PruneConfig { channels: 0.375, ..PruneConfig::default() }).unwrap();
    assert_eq!(report.pruned().count(), 0);
    let why = report.skipped().next().and_then(|g| g.skipped.clone()).unwrap_or_default();
    assert!(why.contains("first layer"), "{why}");
    assert_eq!(report.parameters_after, report.parameters_before);
}

/// stem Conv(8) → Relu → [Conv(8) → BN] + skip → Relu → depthwise Conv(8) → Conv(4).
fn residual(zero: &[usize], depthwise: bool) -> Model {
    let mut b = B::new(2);
    let x = b.input("x", &[1, 3, 6, 6]);
    let w0 = weight_zeroed(&mut b, "w0", &[8, 3, 3, 3], 0, zero);
    let c0 = conv(&mut b, x, w0, 1, 1);
    let r0 = b.op("Relu", &[c0], vec![]);
    let w1 = weight_zeroed(&mut b, "w1", &[8, 8, 3, 3], 0, zero);
    let c1 = conv(&mut b, r0, w1, 1, 1);
    let n1 = bn(&mut b, c1, 8, zero);
    let add = b.op("Add", &[r0, n1], vec![]);
    let r1 = b.op("Relu", &[add], vec![]);
    let mid = if depthwise {
        let wd = b.weight("wd", &[8, 1, 3, 3], -1.0, 1.0);
        let bd = weight_zeroed(&mut b, "bd", &[8], 0, zero);
        b.op("Conv", &[r1, wd, bd], vec![A::int("group", 8), A::ints("pads", vec![1, 1, 1, 1])])
    } else {
        r1
    };
    let w2 = b.weight("w2", &[4, 8, 1, 1], -1.0, 1.0);
    let y = conv(&mut b, mid, w2, 1, 0);
    b.declare(y, &[1, 4, 6, 6]);
    b.output(y);
    b.model(13)
}

fn add_shapes_match(m: &Model) {
    let g = m.graph.as_ref().unwrap();
    for (id, n) in g.nodes().filter(|(_, n)| n.is_onnx("Add")) {
        let shapes: Vec<_> =
            n.inputs().iter().flatten().map(|&v| super::channels::dims(g, v).expect("shape known")).collect();
        assert_eq!(shapes[0], shapes[1], "{} sees different shapes", n.label(id));
    }
}

#[test]
fn residual_channels_prune_together_and_exactly() {
    require_ort().unwrap();
    let m = residual(&[0, 5], true);
    let (after, report) = prune_checked(&m, &cfg(0.25, 0.0, 0.0));
    // One group: the stem, the residual branch and the depthwise conv share channels.
    let pruned: Vec<_> = report.pruned().collect();
    assert_eq!(pruned.len(), 1, "{:?}", report.groups);
    assert_eq!(pruned[0].layers.len(), 2);
    assert_eq!(pruned[0].removed, 2);
    add_shapes_match(&after);
    let g = after.graph.as_ref().unwrap();
    let dw = g
        .nodes()
        .find(|(_, n)| n.is_onnx("Conv") && n.attributes.iter().any(|a| a.name == "group"))
        .map(|(_, n)| n.clone());
    let groups: Vec<i64> =
        g.nodes().filter_map(|(_, n)| kiln_compiler::ir::AttrLookup::attr_int(&n.attributes, "group")).collect();
    assert!(groups.contains(&6), "depthwise group count follows: {groups:?} {dw:?}");
    let inputs = seeded_inputs(&m, 5, 1).unwrap();
    assert_same(&m, &after, &inputs, CLOSE);
}

#[test]
fn residual_with_live_channels_stays_consistent() {
    require_ort().unwrap();
    let m = residual(&[], true);
    let (after, report) = prune_checked(&m, &cfg(0.5, 0.0, 0.0));
    assert_eq!(report.pruned().next().map(|g| g.removed), Some(4));
    add_shapes_match(&after);
    assert_eq!(outputs_shapes(&after), outputs_shapes(&m));
}

/// Conv(8) → Relu → SE(GAP → Conv(2) → Relu → Conv(8) → HardSigmoid) · feature → Conv(4).
fn squeeze_excite(zero: &[usize]) -> Model {
    let mut b = B::new(3);
    let x = b.input("x", &[1, 3, 6, 6]);
    let w0 = weight_zeroed(&mut b, "w0", &[8, 3, 3, 3], 0, zero);
    let c0 = conv(&mut b, x, w0, 1, 1);
    let r0 = b.op("Relu", &[c0], vec![]);
    let gap = b.op("GlobalAveragePool", &[r0], vec![]);
    let ws1 = weight_zeroed(&mut b, "ws1", &[4, 8, 1, 1], 0, &[0]);
    let s1 = conv(&mut b, gap, ws1, 1, 0);
    let sr = b.op("Relu", &[s1], vec![]);
    let ws2 = weight_zeroed(&mut b, "ws2", &[8, 4, 1, 1], 0, zero);
    let bs2 = b.konst("bs2", Tensor::from_slice(vec![1, 8, 1, 1], &[0.1f32; 8]).unwrap());
    let s2 = conv(&mut b, sr, ws2, 1, 0);
    let s2b = b.op("Add", &[s2, bs2], vec![]);
    let hs = b.op("HardSigmoid", &[s2b], vec![]);
    let scaled = b.op("Mul", &[r0, hs], vec![]);
    let w2 = b.weight("w2", &[4, 8, 1, 1], -1.0, 1.0);
    let y = conv(&mut b, scaled, w2, 1, 0);
    b.declare(y, &[1, 4, 6, 6]);
    b.output(y);
    b.model(13)
}

#[test]
fn squeeze_excite_ties_channels_and_prunes_exactly() {
    // Dead: feature channels 2, 3, 7 (in the trunk conv and the excite conv) and squeeze
    // channel 0; at 3/8 exactly those go, from both groups.
    require_ort().unwrap();
    let m = squeeze_excite(&[2, 3, 7]);
    let (after, report) = prune_checked(&m, &cfg(0.375, 0.0, 0.0));
    let g = after.graph.as_ref().unwrap();
    let dims = |n: &str| g.value(g.find_value(n).unwrap()).initializer().unwrap().dims().to_vec();
    assert_eq!(dims("w0"), vec![5, 3, 3, 3]);
    assert_eq!(dims("ws1"), vec![3, 5, 1, 1], "the squeeze conv reads the pruned channels and lost one of its own");
    assert_eq!(dims("ws2"), vec![5, 3, 1, 1], "the excite conv follows the feature map");
    assert_eq!(dims("bs2"), vec![1, 5, 1, 1]);
    assert_eq!(dims("w2")[1], 5);
    let mut removed: Vec<usize> = report.pruned().map(|g| g.removed).collect();
    removed.sort();
    assert_eq!(removed, vec![1, 3]);
    let inputs = seeded_inputs(&m, 9, 1).unwrap();
    assert_same(&m, &after, &inputs, CLOSE);
}

/// Conv(8) → Reshape [1,8,4,4] → [1,4,32] → Relu → output: channels mixed with space.
#[test]
fn reshape_that_mixes_channels_is_left_alone() {
    require_ort().unwrap();
    let mut b = B::new(4);
    let x = b.input("x", &[1, 3, 4, 4]);
    let w = b.weight("w", &[8, 3, 1, 1], -1.0, 1.0);
    let c = conv(&mut b, x, w, 1, 0);
    let shape = b.ints(&[1, 4, 32]);
    let r = b.op("Reshape", &[c, shape], vec![]);
    let wm = b.weight("wm", &[32, 5], -1.0, 1.0);
    let y = b.op("MatMul", &[r, wm], vec![]);
    b.declare(y, &[1, 4, 5]);
    b.output(y);
    let m = b.model(13);
    let (after, report) = prune_checked(&m, &cfg(0.5, 0.0, 0.0));
    assert_eq!(report.pruned().count(), 0);
    let skipped: Vec<String> = report.skipped().filter_map(|g| g.skipped.clone()).collect();
    assert!(skipped.iter().any(|s| s.contains("Reshape") && s.contains("mixes")), "{skipped:?}");
    assert_eq!(report.parameters_after, report.parameters_before);
    let inputs = seeded_inputs(&m, 1, 1).unwrap();
    assert_same(&m, &after, &inputs, Tolerance { rtol: 0.0, atol: 0.0 });
}

#[test]
fn flattening_reshape_keeps_channels_and_is_rewritten() {
    // The twin: [1,8,1,1] → [1,8] keeps the channel axis whole; the shape constant shrinks.
    require_ort().unwrap();
    let mut b = B::new(5);
    let x = b.input("x", &[1, 3, 4, 4]);
    let w = weight_zeroed(&mut b, "w", &[8, 3, 1, 1], 0, &[3, 6]);
    let c = conv(&mut b, x, w, 1, 0);
    let p = b.op("GlobalAveragePool", &[c], vec![]);
    let shape = b.ints(&[1, 8]);
    let r = b.op("Reshape", &[p, shape], vec![]);
    let wm = b.weight("wm", &[8, 5], -1.0, 1.0);
    let y = b.op("MatMul", &[r, wm], vec![]);
    b.declare(y, &[1, 5]);
    b.output(y);
    let m = b.model(13);
    let (after, report) = prune_checked(&m, &cfg(0.25, 0.0, 0.0));
    assert_eq!(report.pruned().map(|g| g.removed).collect::<Vec<_>>(), vec![2], "{:?}", report.groups);
    let inputs = seeded_inputs(&m, 1, 1).unwrap();
    assert_same(&m, &after, &inputs, CLOSE);
}

/// x[2,4,16] → MatMul(16→32) + b → Gelu (erf form) → MatMul(32→16) + b.
fn ffn(zero: &[usize]) -> Model {
    let mut b = B::new(6);
    let x = b.input("x", &[2, 4, 16]);
    let w1 = weight_zeroed(&mut b, "w1", &[16, 32], 1, zero);
    let b1 = weight_zeroed(&mut b, "b1", &[32], 0, zero);
    let h = b.op("MatMul", &[x, w1], vec![]);
    let hb = b.op("Add", &[b1, h], vec![]);
    let sq = b.scalar(std::f32::consts::SQRT_2);
    let d = b.op("Div", &[hb, sq], vec![]);
    let e = b.op("Erf", &[d], vec![]);
    let one = b.scalar(1.0);
    let e1 = b.op("Add", &[e, one], vec![]);
    let m1 = b.op("Mul", &[hb, e1], vec![]);
    let half = b.scalar(0.5);
    let act = b.op("Mul", &[m1, half], vec![]);
    let w2 = b.weight("w2", &[32, 16], -1.0, 1.0);
    let o = b.op("MatMul", &[act, w2], vec![]);
    let b2 = b.weight("b2", &[16], -0.1, 0.1);
    let y = b.op("Add", &[o, b2], vec![]);
    b.declare(y, &[2, 4, 16]);
    b.output(y);
    b.model(13)
}

#[test]
fn zero_ffn_neurons_prune_exactly() {
    require_ort().unwrap();
    let dead: Vec<usize> = (0..32).step_by(4).collect();
    let m = ffn(&dead);
    let (after, report) = prune_checked(&m, &cfg(0.0, 0.0, 0.25));
    assert_eq!(
        report.decisions.get("MatMul_1").map(String::as_str),
        Some("pruned 8/32 neurons"),
        "{:?}",
        report.decisions
    );
    let inputs = seeded_inputs(&m, 2, 1).unwrap();
    assert_same(&m, &after, &inputs, CLOSE);
    // The channels ratio does not touch FFN neurons.
    let (_, none) = prune_checked(&m, &cfg(0.25, 0.0, 0.0));
    assert_eq!(none.pruned().count(), 0);
}

/// One BERT self-attention block, hidden 16 = 4 heads of 4, with head `dead`'s weights zero.
fn attention(dead: Option<usize>) -> Model {
    let (s, hid, h, d) = (5usize, 16usize, 4usize, 4usize);
    let mut b = B::new(7);
    let x = b.input("x", &[1, s, hid]);
    let cols: Vec<usize> = dead.map(|k| (k * d..(k + 1) * d).collect()).unwrap_or_default();
    let mut heads = Vec::new();
    for (name, perm) in [("q", vec![0, 2, 1, 3]), ("k", vec![0, 2, 3, 1]), ("v", vec![0, 2, 1, 3])] {
        let w = weight_zeroed(&mut b, &format!("w{name}"), &[hid, hid], 1, &cols);
        let bias = weight_zeroed(&mut b, &format!("b{name}"), &[hid], 0, &cols);
        let p = b.op("MatMul", &[x, w], vec![]);
        let pb = b.op("Add", &[p, bias], vec![]);
        let shape = b.ints(&[0, 0, h as i64, d as i64]);
        let r = b.op("Reshape", &[pb, shape], vec![]);
        heads.push(b.op("Transpose", &[r], vec![A::ints("perm", perm)]));
    }
    let qk = b.op("MatMul", &[heads[0], heads[1]], vec![]);
    let c = b.scalar(2.0);
    let sc = b.op("Div", &[qk, c], vec![]);
    let p = b.op("Softmax", &[sc], vec![A::int("axis", -1)]);
    let ctx = b.op("MatMul", &[p, heads[2]], vec![]);
    let t = b.op("Transpose", &[ctx], vec![A::ints("perm", vec![0, 2, 1, 3])]);
    let shape = b.ints(&[0, 0, hid as i64]);
    let merged = b.op("Reshape", &[t, shape], vec![]);
    let wo = weight_zeroed(&mut b, "wo", &[hid, hid], 0, &cols);
    let o = b.op("MatMul", &[merged, wo], vec![]);
    let bo = b.weight("bo", &[hid], -0.1, 0.1);
    let y = b.op("Add", &[o, bo], vec![]);
    b.declare(y, &[1, s, hid]);
    b.output(y);
    b.model(13)
}

#[test]
fn zero_heads_prune_exactly() {
    require_ort().unwrap();
    let m = attention(Some(2));
    let (after, report) = prune_checked(&m, &cfg(0.0, 0.25, 0.0));
    let heads: Vec<_> = report.groups.iter().filter(|g| g.kind == "heads").collect();
    assert_eq!(heads.len(), 1, "{:?}", report.groups);
    assert_eq!(heads[0].removed, 1);
    let g = after.graph.as_ref().unwrap();
    let wq = g.value(g.find_value("wq").unwrap()).initializer().unwrap().dims().to_vec();
    assert_eq!(wq, vec![16, 12]);
    let inputs = seeded_inputs(&m, 4, 1).unwrap();
    assert_same(&m, &after, &inputs, CLOSE);
}

#[test]
fn zero_heads_prune_exactly_in_fused_attention() {
    require_ort().unwrap();
    let mut m = attention(Some(1));
    kiln_compiler::shape::infer_model(&mut m);
    let fuse = crate::FusionPass::new("fuse-ort", crate::fuse::ORT.iter().copied());
    crate::testing::run_pass(&fuse, &mut m);
    assert_eq!(count_in(&m, "com.microsoft", "Attention"), 1);
    let (after, report) = prune_checked(&m, &cfg(0.0, 0.5, 0.0));
    assert_eq!(report.groups.iter().filter(|g| g.kind == "heads").map(|g| g.removed).sum::<usize>(), 2);
    let g = after.graph.as_ref().unwrap();
    let (_, att) = g.nodes().find(|(_, n)| n.op_type == "Attention").unwrap();
    assert_eq!(kiln_compiler::ir::AttrLookup::attr_int(&att.attributes, "num_heads"), Some(2));
    // Head 1 is dead; the other pruned head is live, so compare against a model with only
    // head 1 removed at a 0.25 ratio.
    let (exact, _) = prune_checked(&m, &cfg(0.0, 0.25, 0.0));
    let inputs = seeded_inputs(&m, 4, 1).unwrap();
    assert_same(&m, &exact, &inputs, CLOSE);
    assert_eq!(outputs_shapes(&after), outputs_shapes(&m));
}

#[test]
fn attention_whose_projection_is_read_elsewhere_is_left_alone() {
    require_ort().unwrap();
    let mut m = attention(None);
    // Expose V's projection as a model output: its width must not change.
    let g = m.graph.as_mut().unwrap();
    let (_, v_add) = g.nodes().filter(|(_, n)| n.is_onnx("Add")).nth(2).unwrap();
    let pv = v_add.output(0).unwrap();
    g.push_output(pv);
    let (after, report) = prune_checked(&m, &cfg(0.0, 0.5, 0.0));
    let why = report.skipped().filter_map(|g| g.skipped.clone()).collect::<Vec<_>>().join("; ");
    assert!(why.contains("model output"), "{why}");
    assert_eq!(report.parameters_after, report.parameters_before);
    let inputs = seeded_inputs(&m, 4, 1).unwrap();
    assert_same(&m, &after, &inputs, Tolerance { rtol: 0.0, atol: 0.0 });
}

#[test]
fn same_input_gives_identical_output() {
    let m = residual(&[], true);
    let a = prune_checked(&m, &cfg(0.5, 0.0, 0.0)).0;
    let b = prune_checked(&m, &cfg(0.5, 0.0, 0.0)).0;
    let enc = |m: &Model| kiln_compiler::onnx::encode_model(m);
    assert_eq!(enc(&a), enc(&b));
}

#[test]
fn global_scope_ranks_across_groups() {
    // Two independent groups; one has tiny weights everywhere: a global ranking takes its
    // channels first, a per-layer one takes the same share of each.
    let mut b = B::new(8);
    let x = b.input("x", &[1, 3, 4, 4]);
    let w = b.weight("w", &[8, 3, 1, 1], -1.0, 1.0);
    let c = conv(&mut b, x, w, 1, 0);
    let mut rng = Rng::new(3);
    let small = rng.tensor(&[8, 8, 1, 1], -0.01, 0.01);
    let w2 = b.konst("w2", small);
    let c2 = conv(&mut b, c, w2, 1, 0);
    let w3 = b.weight("w3", &[2, 8, 1, 1], -1.0, 1.0);
    let y = conv(&mut b, c2, w3, 1, 0);
    b.declare(y, &[1, 2, 4, 4]);
    b.output(y);
    let m = b.model(13);
    let per = prune_checked(&m, &cfg(0.25, 0.0, 0.0)).1;
    assert_eq!(per.pruned().map(|g| g.removed).collect::<Vec<_>>(), vec![2, 2]);
    let global = prune_checked(&m, &PruneConfig { scope: Scope::Global, ..cfg(0.25, 0.0, 0.0) }).1;
    let removed: usize = global.pruned().map(|g| g.removed).sum();
    assert_eq!(removed, 4);
    let _ = global;
}
