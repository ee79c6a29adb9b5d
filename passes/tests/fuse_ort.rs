//! `fuse-ort` rules (ONNX Runtime contrib operators): positive cases checked for structure and
//! against ONNX Runtime on seeded inputs, each with a negative twin that stays.

use kiln_compiler::ir::{Model, ValueId};
use kiln_compiler::{DataType, Tensor};
use kiln_passes::fuse::{FusionPass, MS_DOMAIN};
use kiln_passes::testing::*;

const TOL: Tolerance = abs_tol(1e-4);

type Feeds = Vec<(&'static str, Tensor)>;

fn erf_gelu_of(b: &mut B, x: ValueId) -> ValueId {
    let r2 = b.scalar(std::f32::consts::SQRT_2);
    let d = b.op("Div", &[x, r2], vec![]);
    let e = b.op("Erf", &[d], vec![]);
    let one = b.scalar(1.0);
    let p = b.op("Add", &[e, one], vec![]);
    let t = b.op("Mul", &[x, p], vec![]);
    let h = b.scalar(0.5);
    b.op("Mul", &[t, h], vec![])
}

#[test]
fn erf_gelu_becomes_ms_gelu_at_any_opset() {
    let mut b = B::new(1);
    let x = b.input("x", &[4, 6]);
    let y = erf_gelu_of(&mut b, x);
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[4, 6], -3.0, 3.0))];
    let before = b.model(13);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(applied(&r, "gelu-ort"), 1);
    assert_eq!(count_in(&after, MS_DOMAIN, "Gelu"), 1);
    assert_eq!(after.graph.as_ref().unwrap().node_count(), 1);
    assert_eq!(after.opset("com.microsoft"), Some(1));
    assert_same(&before, &after, &feeds, TOL);
}

#[test]
fn erf_gelu_over_a_wrong_divisor_stays() {
    let mut b = B::new(1);
    let x = b.input("x", &[4, 6]);
    let two = b.scalar(2.0);
    let d = b.op("Div", &[x, two], vec![]);
    let e = b.op("Erf", &[d], vec![]);
    let one = b.scalar(1.0);
    let p = b.op("Add", &[e, one], vec![]);
    let t = b.op("Mul", &[x, p], vec![]);
    let h = b.scalar(0.5);
    let y = b.op("Mul", &[t, h], vec![]);
    b.output(y);
    let mut m = b.model(13);
    run_pass(&FusionPass::ort(), &mut m);
    assert_eq!(count_in(&m, MS_DOMAIN, "Gelu"), 0);
    assert!(m.opset("com.microsoft").is_none());
}

/// 0.5 · x · (1 + tanh(c1 · (x + c2 · x³))) with x + bias in front.
fn tanh_gelu(cube_by_pow: bool, c2: f32, bias_const: bool) -> (Model, Feeds) {
    let mut b = B::new(2);
    let a = b.input("a", &[3, 8]);
    let bias = if bias_const { b.weight("bias", &[8], -0.5, 0.5) } else { b.input("bias", &[8]) };
    let x = b.op("Add", &[a, bias], vec![]);
    let cube = if cube_by_pow {
        let three = b.scalar(3.0);
        b.op("Pow", &[x, three], vec![])
    } else {
        let sq = b.op("Mul", &[x, x], vec![]);
        b.op("Mul", &[sq, x], vec![])
    };
    let k2 = b.scalar(c2);
    let t = b.op("Mul", &[k2, cube], vec![]);
    let s = b.op("Add", &[x, t], vec![]);
    let k1 = b.scalar(0.797_884_6);
    let u = b.op("Mul", &[s, k1], vec![]);
    let th = b.op("Tanh", &[u], vec![]);
    let one = b.scalar(1.0);
    let p = b.op("Add", &[one, th], vec![]);
    let h = b.scalar(0.5);
    let hx = b.op("Mul", &[x, h], vec![]);
    let y = b.op("Mul", &[hx, p], vec![]);
    b.output(y);
    let mut feeds = vec![("a", b.rng.tensor(&[3, 8], -3.0, 3.0))];
    if !bias_const {
        feeds.push(("bias", b.rng.tensor(&[8], -0.5, 0.5)));
    }
    (b.model(13), feeds)
}

#[test]
fn tanh_gelu_becomes_fast_gelu_with_its_bias() {
    for by_pow in [true, false] {
        let (before, feeds) = tanh_gelu(by_pow, 0.044715, true);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "fast-gelu"), 1);
        assert_eq!(applied(&r, "bias-fast-gelu"), 1);
        assert_eq!(after.graph.as_ref().unwrap().node_count(), 1);
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.nodes().next().unwrap().1.inputs().len(), 2, "bias folded in");
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn tanh_gelu_twins_stay() {
    // A wrong cubic coefficient: nothing fuses.
    let (before, feeds) = tanh_gelu(true, 0.05, true);
    let mut after = before.clone();
    run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "FastGelu"), 0);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
    // A bias fed at run time: FastGelu, but the Add stays outside.
    let (before, feeds) = tanh_gelu(true, 0.044715, false);
    let mut after = before.clone();
    run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "FastGelu"), 1);
    assert_eq!(count_in(&after, "", "Add"), 1);
    assert_same(&before, &after, &feeds, TOL);
}

fn bias_gelu(bias_const: bool) -> (Model, Feeds) {
    let mut b = B::new(3);
    let a = b.input("a", &[2, 3, 8]);
    let bias = if bias_const { b.weight("bias", &[8], -0.5, 0.5) } else { b.input("bias", &[8]) };
    let x = b.op("Add", &[bias, a], vec![]);
    let y = erf_gelu_of(&mut b, x);
    b.output(y);
    let mut feeds = vec![("a", b.rng.tensor(&[2, 3, 8], -3.0, 3.0))];
    if !bias_const {
        feeds.push(("bias", b.rng.tensor(&[8], -0.5, 0.5)));
    }
    (b.model(17), feeds)
}

#[test]
fn bias_add_and_gelu_become_bias_gelu() {
    let (before, feeds) = bias_gelu(true);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(applied(&r, "bias-gelu"), 1);
    assert_eq!(count_in(&after, MS_DOMAIN, "BiasGelu"), 1);
    assert_eq!(after.graph.as_ref().unwrap().node_count(), 1);
    assert_same(&before, &after, &feeds, TOL);
}

#[test]
fn gelu_of_a_runtime_bias_stays_unbiased() {
    let (before, feeds) = bias_gelu(false);
    let mut after = before.clone();
    run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "BiasGelu"), 0);
    assert_eq!(count_in(&after, MS_DOMAIN, "Gelu"), 1);
    assert_same(&before, &after, &feeds, TOL);
}

/// LayerNormalization(Add(MatMul(x, W) + bias, residual)); `skip_dims` is the residual's shape;
/// `sum_used` also makes the sum a graph output; `early_reader` puts a reader of the sum between
/// the Add and the LayerNormalization.
fn skip_ln(skip_dims: &[usize], sum_used: bool, early_reader: bool) -> (Model, Feeds) {
    let mut b = B::new(4);
    let x = b.input("x", &[2, 4, 8]);
    let r = b.input("r", skip_dims);
    let w = b.weight("w", &[8, 8], -0.5, 0.5);
    let mm = b.op("MatMul", &[x, w], vec![]);
    b.declare(mm, &[2, 4, 8]);
    let bias = b.weight("bias", &[8], -0.5, 0.5);
    let ba = b.op("Add", &[bias, mm], vec![]);
    b.declare(ba, &[2, 4, 8]);
    let sum = b.op("Add", &[ba, r], vec![]);
    if early_reader {
        let t = b.op("Relu", &[sum], vec![]);
        b.output(t);
    }
    let gamma = b.weight("gamma", &[8], 0.5, 1.5);
    let beta = b.weight("beta", &[8], -0.5, 0.5);
    let y = b.op("LayerNormalization", &[sum, gamma, beta], vec![A::int("axis", -1), A::float("epsilon", 1e-5)]);
    b.output(y);
    if sum_used {
        b.output(sum);
    }
    let feeds = vec![("x", b.rng.tensor(&[2, 4, 8], -1.0, 1.0)), ("r", b.rng.tensor(skip_dims, -1.0, 1.0))];
    (b.model(17), feeds)
}

#[test]
fn residual_add_and_layer_norm_become_skip_layer_normalization() {
    for (sum_used, early) in [(false, false), (true, false), (false, true)] {
        let (before, feeds) = skip_ln(&[2, 4, 8], sum_used, early);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "skip-layernorm"), 1);
        assert_eq!(count_in(&after, MS_DOMAIN, "SkipLayerNormalization"), 1);
        assert_eq!(count_in(&after, "", "Add"), 0, "the bias goes in too");
        let g = after.graph.as_ref().unwrap();
        let (_, sln) = g.nodes().find(|(_, n)| n.op_type == "SkipLayerNormalization").unwrap();
        assert_eq!(sln.inputs().len(), 5);
        assert_eq!(sln.output(3).is_some(), sum_used || early);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn broadcasting_residual_add_stays() {
    let (before, feeds) = skip_ln(&[1, 1, 8], false, false);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "SkipLayerNormalization"), 0);
    assert_eq!(why(&r, "skip-layernorm"), ["missed: the residual Add broadcasts (its inputs differ in shape)"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}

/// A BERT self-attention block: x [2, 6, 16], 2 heads of 8. `concat_shapes` spells the
/// reshapes as exporters compute them; `k_two_transposes` writes Kᵀ as two Transposes;
/// `mask` adds the additive mask from a [2, 6] int64 input; `cross` feeds K from another input.
struct Attn {
    concat_shapes: bool,
    k_two_transposes: bool,
    scale_by_mul: bool,
    mask: bool,
    cross: bool,
}

fn attention(o: &Attn) -> (Model, Feeds) {
    let (bsz, seq, hid, heads, hs) = (2usize, 6usize, 16usize, 2usize, 8usize);
    let mut b = B::new(6);
    let x = b.input("x", &[bsz, seq, hid]);
    let kx = if o.cross { b.input("y", &[bsz, seq, hid]) } else { x };
    let mask_in = o.mask.then(|| b.input_typed("mask", DataType::I64, &[bsz, seq]));
    let proj = |b: &mut B, src: ValueId, name: &str| {
        let w = b.weight(&format!("w{name}"), &[hid, hid], -0.3, 0.3);
        let bias = b.weight(&format!("b{name}"), &[hid], -0.3, 0.3);
        let mm = b.op("MatMul", &[src, w], vec![]);
        b.op("Add", &[mm, bias], vec![])
    };
    let split = |b: &mut B, v: ValueId, perm: Vec<i64>, concat: bool| {
        let shape = if concat {
            let s = b.op("Shape", &[v], vec![]);
            let i0 = b.konst(&format!("g0_{}", v.index()), Tensor::scalar(0i64));
            let i1 = b.konst(&format!("g1_{}", v.index()), Tensor::scalar(1i64));
            let d0 = b.op("Gather", &[s, i0], vec![A::int("axis", 0)]);
            let d1 = b.op("Gather", &[s, i1], vec![A::int("axis", 0)]);
            let z = b.ints(&[0]);
            let u0 = b.op("Unsqueeze", &[d0, z], vec![]);
            let z = b.ints(&[0]);
            let u1 = b.op("Unsqueeze", &[d1, z], vec![]);
            let h = b.ints(&[heads as i64]);
            let d = b.ints(&[hs as i64]);
            b.op("Concat", &[u0, u1, h, d], vec![A::int("axis", 0)])
        } else {
            b.ints(&[0, 0, heads as i64, hs as i64])
        };
        let r = b.op("Reshape", &[v, shape], vec![]);
        b.op("Transpose", &[r], vec![A::ints("perm", perm)])
    };
    let q = proj(&mut b, x, "q");
    let k = proj(&mut b, kx, "k");
    let v = proj(&mut b, x, "v");
    let qt = split(&mut b, q, vec![0, 2, 1, 3], o.concat_shapes);
    let kt = if o.k_two_transposes {
        let t = split(&mut b, k, vec![0, 2, 1, 3], o.concat_shapes);
        b.op("Transpose", &[t], vec![A::ints("perm", vec![0, 1, 3, 2])])
    } else {
        split(&mut b, k, vec![0, 2, 3, 1], o.concat_shapes)
    };
    let vt = split(&mut b, v, vec![0, 2, 1, 3], o.concat_shapes);
    let qk = b.op("MatMul", &[qt, kt], vec![]);
    let scaled = if o.scale_by_mul {
        let c = b.scalar(1.0 / (hs as f32).sqrt());
        b.op("Mul", &[c, qk], vec![])
    } else {
        let c = b.scalar((hs as f32).sqrt());
        b.op("Div", &[qk, c], vec![])
    };
    let scores = match mask_in {
        Some(mk) => {
            let a1 = b.ints(&[1]);
            let u1 = b.op("Unsqueeze", &[mk, a1], vec![]);
            let a2 = b.ints(&[2]);
            let u2 = b.op("Unsqueeze", &[u1, a2], vec![]);
            let c = b.op("Cast", &[u2], vec![A::int("to", 1)]);
            let one = b.scalar(1.0);
            let s = b.op("Sub", &[one, c], vec![]);
            let f = b.scalar(-10000.0);
            let add = b.op("Mul", &[s, f], vec![]);
            b.op("Add", &[add, scaled], vec![])
        }
        None => scaled,
    };
    let p = b.op("Softmax", &[scores], vec![A::int("axis", -1)]);
    let ctx = b.op("MatMul", &[p, vt], vec![]);
    let back = b.op("Transpose", &[ctx], vec![A::ints("perm", vec![0, 2, 1, 3])]);
    let shape = b.ints(&[0, 0, hid as i64]);
    let y = b.op("Reshape", &[back, shape], vec![]);
    b.output(y);
    let mut feeds = vec![("x", b.rng.tensor(&[bsz, seq, hid], -1.0, 1.0))];
    if o.cross {
        feeds.push(("y", b.rng.tensor(&[bsz, seq, hid], -1.0, 1.0)));
    }
    if o.mask {
        // The second sequence is right-padded, the first left-padded.
        let m: Vec<i64> = vec![0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        feeds.push(("mask", Tensor::from_slice(vec![bsz, seq], &m).unwrap()));
    }
    (b.model(17), feeds)
}

#[test]
fn self_attention_becomes_attention() {
    let cases = [
        Attn { concat_shapes: false, k_two_transposes: false, scale_by_mul: false, mask: true, cross: false },
        Attn { concat_shapes: true, k_two_transposes: true, scale_by_mul: true, mask: false, cross: false },
        Attn { concat_shapes: true, k_two_transposes: false, scale_by_mul: false, mask: true, cross: false },
    ];
    for o in &cases {
        let (before, feeds) = attention(o);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "attention"), 1, "{:?}", why(&r, "attention"));
        let g = after.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.nodes().map(|(_, n)| n.op_type.as_str()).collect();
        assert_eq!(ops, if o.mask { vec!["Cast", "Attention"] } else { vec!["Attention"] });
        // The six projection constants became one packed weight and one packed bias.
        assert_eq!(g.initializers().len(), 2);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn cross_attention_stays() {
    let o = Attn { concat_shapes: false, k_two_transposes: false, scale_by_mul: false, mask: true, cross: true };
    let (before, feeds) = attention(&o);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "Attention"), 0);
    assert_eq!(why(&r, "attention"), ["missed: Q, K and V do not read the same input (not self-attention)"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}

/// How Q, K and V are taken apart in the packed form.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    SliceSqueeze,
    Gather,
}

/// A ViT/SVTR self-attention block with one packed Q/K/V projection: x [2, 5, 15], 3 heads
/// of 5. `computed_shapes` writes N as SVTR does (`Cast(Slice(Cast(Shape(x))))`); `q_scale`
/// scales Q before Q·Kᵀ (else the scores are divided); `order` is which entry of the packed
/// axis Q, K and V take; `perm` the transpose of the 5-D split.
struct PackedAttn {
    opset: i64,
    computed_shapes: bool,
    pick: Pick,
    q_scale: bool,
    order: [i64; 3],
    perm: [i64; 5],
}

const SVTR: PackedAttn = PackedAttn {
    opset: 12,
    computed_shapes: true,
    pick: Pick::SliceSqueeze,
    q_scale: true,
    order: [0, 1, 2],
    perm: [2, 0, 3, 1, 4],
};

fn packed_attention(o: &PackedAttn) -> (Model, Feeds) {
    let (bsz, seq, hid, heads, hs) = (2usize, 5usize, 15usize, 3usize, 5usize);
    let mut b = B::new(11);
    let x = b.input("x", &[bsz, seq, hid]);
    let w = b.weight("qkv_w", &[hid, 3 * hid], -0.4, 0.4);
    let bias = b.weight("qkv_b", &[3 * hid], -0.4, 0.4);
    let mm = b.op("MatMul", &[x, w], vec![]);
    let p = b.op("Add", &[mm, bias], vec![]);
    // N as a 1-element i64 vector, computed from x's shape through int32 as PaddlePaddle does.
    let n = o.computed_shapes.then(|| {
        let s = b.op("Shape", &[x], vec![]);
        let s32 = b.op("Cast", &[s], vec![A::int("to", 6)]);
        let (st, en, ax) = (b.ints(&[1]), b.ints(&[2]), b.ints(&[0]));
        let d = b.op("Slice", &[s32, st, en, ax], vec![]);
        b.op("Cast", &[d], vec![A::int("to", 7)])
    });
    let split_shape = match n {
        Some(n) => {
            let parts = [b.ints(&[0]), n, b.ints(&[3]), b.ints(&[heads as i64]), b.ints(&[hs as i64])];
            b.op("Concat", &parts, vec![A::int("axis", 0)])
        }
        None => b.ints(&[0, 0, 3, heads as i64, hs as i64]),
    };
    let r = b.op("Reshape", &[p, split_shape], vec![]);
    let t = b.op("Transpose", &[r], vec![A::ints("perm", o.perm.to_vec())]);
    let opset = o.opset;
    let entry = |b: &mut B, i: i64| match o.pick {
        Pick::Gather => {
            let idx = b.konst(&format!("idx{i}"), Tensor::scalar(i));
            b.op("Gather", &[t, idx], vec![A::int("axis", 0)])
        }
        Pick::SliceSqueeze => {
            let (st, en, ax) = (b.ints(&[i]), b.ints(&[i + 1]), b.ints(&[0]));
            let sl = b.op("Slice", &[t, st, en, ax], vec![]);
            if opset >= 13 {
                let axes = b.ints(&[0]);
                b.op("Squeeze", &[sl, axes], vec![])
            } else {
                b.op("Squeeze", &[sl], vec![A::ints("axes", vec![0])])
            }
        }
    };
    let q = entry(&mut b, o.order[0]);
    let k = entry(&mut b, o.order[1]);
    let v = entry(&mut b, o.order[2]);
    let c = 1.0 / (hs as f32).sqrt();
    let q = if o.q_scale {
        let c = b.scalar(c);
        b.op("Mul", &[q, c], vec![])
    } else {
        q
    };
    let kt = b.op("Transpose", &[k], vec![A::ints("perm", vec![0, 1, 3, 2])]);
    let qk = b.op("MatMul", &[q, kt], vec![]);
    let scores = if o.q_scale {
        qk
    } else {
        let d = b.scalar(1.0 / c);
        b.op("Div", &[qk, d], vec![])
    };
    let probs = b.op("Softmax", &[scores], vec![A::int("axis", 3)]);
    let ctx = b.op("MatMul", &[probs, v], vec![]);
    let back = b.op("Transpose", &[ctx], vec![A::ints("perm", vec![0, 2, 1, 3])]);
    let merge_shape = match n {
        Some(n) => {
            let parts = [b.ints(&[0]), n, b.ints(&[hid as i64])];
            b.op("Concat", &parts, vec![A::int("axis", 0)])
        }
        None => b.ints(&[0, -1, hid as i64]),
    };
    let y = b.op("Reshape", &[back, merge_shape], vec![]);
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[bsz, seq, hid], -1.0, 1.0))];
    let mut m = b.model(o.opset);
    // The computed reshape entries are recognized by their inferred one-element shapes.
    kiln_compiler::shape::infer_model(&mut m);
    (m, feeds)
}

#[test]
fn packed_self_attention_becomes_attention() {
    let cases = [
        SVTR,
        PackedAttn { opset: 17, computed_shapes: false, pick: Pick::Gather, q_scale: false, ..SVTR },
        PackedAttn { opset: 13, computed_shapes: true, pick: Pick::SliceSqueeze, q_scale: false, ..SVTR },
    ];
    for o in &cases {
        let (before, feeds) = packed_attention(o);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "attention"), 1, "{:?}", why(&r, "attention"));
        assert!(entries(&r, "applied", "attention")[0].detail.contains("packed self-attention (3 heads of 5)"));
        assert_eq!(count_in(&after, MS_DOMAIN, "Attention"), 1);
        for op in ["MatMul", "Softmax", "Transpose", "Reshape", "Slice", "Gather", "Mul", "Div"] {
            assert_eq!(count_in(&after, "", op), 0, "{op} left");
        }
        // The packed weight is taken as it is: Q | K | V, heads contiguous.
        let g = after.graph.as_ref().unwrap();
        let (_, att) = g.nodes().find(|(_, n)| n.op_type == "Attention").unwrap();
        let w = g.value(att.input(1).unwrap()).initializer().unwrap();
        let g0 = before.graph.as_ref().unwrap();
        let (_, mm) = g0.nodes().find(|(_, n)| n.op_type == "MatMul").unwrap();
        let w0 = g0.value(mm.input(1).unwrap()).initializer().unwrap();
        assert_eq!(w.dims(), [15, 45]);
        assert!(w.data() == w0.data(), "the packed weight was rearranged");
        let worst = assert_same(&before, &after, &feeds, TOL);
        eprintln!("packed attention {:?} {:?}: max abs difference {worst:e}", o.pick, o.opset);
    }
}

#[test]
fn packed_attention_with_another_layout_stays() {
    // K and V swapped: K·Vᵀ scores weighting K.
    let swapped = PackedAttn { order: [0, 2, 1], ..SVTR };
    // Q, K and V picked along the heads axis (the 5-D split transposed otherwise).
    let by_heads = PackedAttn { perm: [3, 0, 2, 1, 4], ..SVTR };
    let cases = [
        (swapped, "missed: Q, K and V are not entries 0, 1 and 2 of one packed projection"),
        (
            by_heads,
            "missed: the packed Q/K/V is not transposed from [B, N, 3, heads, head size] to [3, B, heads, N, head size]",
        ),
    ];
    for (o, reason) in cases {
        let (before, feeds) = packed_attention(&o);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(count_in(&after, MS_DOMAIN, "Attention"), 0);
        assert_eq!(why(&r, "attention"), [reason]);
        assert_same(&before, &after, &feeds, Tolerance::EXACT);
    }
}

/// Word + position (+ zero segment) lookups and LayerNormalization, as torch exports BERT.
fn embeddings(positions_arange: bool, segment: bool) -> (Model, Feeds) {
    let (bsz, seq, vocab, hid) = (2usize, 5usize, 40usize, 8usize);
    let mut b = B::new(7);
    let ids = b.g.add_input(
        "input_ids",
        typed(DataType::I64, &[kiln_compiler::ir::Dim::symbol("batch"), kiln_compiler::ir::Dim::symbol("seq")]),
    );
    let word = b.weight("word", &[vocab, hid], -1.0, 1.0);
    let pos = b.weight("pos", &[16, hid], -1.0, 1.0);
    let table: Vec<i64> = if positions_arange { (0..16).collect() } else { (0..16).rev().collect() };
    let buf = b.konst("position_ids", Tensor::from_slice(vec![1, 16], &table).unwrap());
    let s = b.op("Shape", &[ids], vec![]);
    let i1 = b.konst("one", Tensor::scalar(1i64));
    let len = b.op("Gather", &[s, i1], vec![A::int("axis", 0)]);
    let z = b.ints(&[0]);
    let len1 = b.op("Unsqueeze", &[len, z], vec![]);
    let st = b.ints(&[0]);
    let ax = b.ints(&[1]);
    let step = b.ints(&[1]);
    let pids = b.op("Slice", &[buf, st, len1, ax, step], vec![]);
    let we = b.op("Gather", &[word, ids], vec![]);
    let mut sum = we;
    if segment {
        let seg = b.weight("seg", &[2, hid], -1.0, 1.0);
        let zeros = b.konst("token_type_ids", Tensor::from_slice(vec![1, 16], &[0i64; 16]).unwrap());
        let st = b.ints(&[0]);
        let ax = b.ints(&[1]);
        let tt = b.op("Slice", &[zeros, st, len1, ax], vec![]);
        let se = b.op("Gather", &[seg, tt], vec![]);
        sum = b.op("Add", &[sum, se], vec![]);
    }
    let pe = b.op("Gather", &[pos, pids], vec![]);
    sum = b.op("Add", &[sum, pe], vec![]);
    let gamma = b.weight("gamma", &[hid], 0.5, 1.5);
    let beta = b.weight("beta", &[hid], -0.5, 0.5);
    let y = b.op("LayerNormalization", &[sum, gamma, beta], vec![A::int("axis", -1), A::float("epsilon", 1e-12)]);
    b.output(y);
    let feeds = vec![("input_ids", b.rng.ints(&[bsz, seq], 0, vocab as i64))];
    (b.model(17), feeds)
}

#[test]
fn embedding_lookups_and_layer_norm_become_embed_layer_normalization() {
    for segment in [false, true] {
        let (before, feeds) = embeddings(true, segment);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "embed-layernorm"), 1, "{:?}", why(&r, "embed-layernorm"));
        let g = after.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.nodes().map(|(_, n)| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Cast", "EmbedLayerNormalization"]);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn embeddings_with_shuffled_positions_stay() {
    let (before, feeds) = embeddings(false, false);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "EmbedLayerNormalization"), 0);
    assert_eq!(why(&r, "embed-layernorm"), ["missed: no lookup reads positions 0..S of the input ids"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}

fn conv_act(act: &str, twice: bool, opset: i64) -> (Model, Feeds) {
    let mut b = B::new(8);
    let x = b.input("x", &[1, 3, 6, 6]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let bias = b.weight("b", &[4], -0.5, 0.5);
    let c = b.op("Conv", &[x, w, bias], vec![A::ints("pads", vec![1, 1, 1, 1])]);
    let y = match act {
        "Clip" => {
            let lo = b.scalar(0.0);
            let hi = b.scalar(0.5);
            b.op("Clip", &[c, lo, hi], vec![])
        }
        "LeakyRelu" => b.op("LeakyRelu", &[c], vec![A::float("alpha", 0.2)]),
        "HardSigmoid" => b.op("HardSigmoid", &[c], vec![A::float("alpha", 0.3), A::float("beta", 0.4)]),
        op => b.op(op, &[c], vec![]),
    };
    b.output(y);
    if twice {
        b.output(c);
    }
    let feeds = vec![("x", b.rng.tensor(&[1, 3, 6, 6], -1.0, 1.0))];
    (b.model(opset), feeds)
}

#[test]
fn conv_and_activation_become_fused_conv() {
    for act in ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip"] {
        let (before, feeds) = conv_act(act, false, 13);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "fused-conv"), 1, "{act}");
        assert_eq!(after.graph.as_ref().unwrap().node_count(), 1);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn conv_whose_output_is_also_read_keeps_its_activation() {
    let (before, feeds) = conv_act("Relu", true, 13);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "FusedConv"), 0);
    assert_eq!(why(&r, "fused-conv"), ["missed: the Conv output has other uses"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}

/// Conv (`c_out` x `c_in` x 3 x 3, `group`) + `act`, for the INT8 variant of the rule.
fn sized_conv_act(c_out: usize, c_in: usize, group: usize, act: &str) -> (Model, Feeds) {
    let mut b = B::new(10);
    let x = b.input("x", &[1, c_in, 5, 5]);
    let w = b.weight("w", &[c_out, c_in / group, 3, 3], -0.1, 0.1);
    let c = b.op("Conv", &[x, w], vec![A::ints("pads", vec![1, 1, 1, 1]), A::int("group", group as i64)]);
    let y = b.op(act, &[c], vec![]);
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[1, c_in, 5, 5], -1.0, 1.0))];
    (b.model(13), feeds)
}

#[test]
fn ahead_of_int8_large_dense_conv_and_relu_stay_for_the_quantizer() {
    use kiln_passes::fuse::{FUSED_CONV_BEFORE_INT8, INT8_MIN_CONV_WEIGHT};
    let pass = FusionPass::new("fuse-ort", [&FUSED_CONV_BEFORE_INT8 as &dyn kiln_passes::fuse::Rule]);
    // 24 x 24 x 3 x 3 = 5184 weights: at the threshold's side that INT8 takes.
    const { assert!(24 * 24 * 9 >= INT8_MIN_CONV_WEIGHT && 16 * 16 * 9 < INT8_MIN_CONV_WEIGHT) };
    let (before, feeds) = sized_conv_act(24, 24, 1, "Relu");
    let mut after = before.clone();
    let r = run_pass(&pass, &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "FusedConv"), 0);
    assert_eq!(
        why(&r, "fused-conv"),
        ["missed: left for INT8: a dense Conv this large runs faster as QLinearConv, its activation absorbed"]
    );
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
    // Fused as before: a small Conv, an activation no quantizer absorbs, a depthwise Conv, and
    // the same large Conv when no INT8 follows.
    for (c_out, c_in, group, act, rule) in [
        (16, 16, 1, "Relu", &FUSED_CONV_BEFORE_INT8 as &dyn kiln_passes::fuse::Rule),
        (24, 24, 1, "Sigmoid", &FUSED_CONV_BEFORE_INT8),
        (96, 96, 96, "Relu", &FUSED_CONV_BEFORE_INT8),
    ] {
        let (before, feeds) = sized_conv_act(c_out, c_in, group, act);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::new("fuse-ort", [rule]), &mut after);
        assert_eq!(applied(&r, "fused-conv"), 1, "{c_out}x{c_in}/{group} {act}");
        assert_same(&before, &after, &feeds, TOL);
    }
    let (before, feeds) = sized_conv_act(24, 24, 1, "Relu");
    let mut after = before.clone();
    assert_eq!(applied(&run_pass(&FusionPass::ort(), &mut after), "fused-conv"), 1);
    assert_same(&before, &after, &feeds, TOL);
}

fn gemm_act(act: &str) -> (Model, Feeds) {
    let mut b = B::new(9);
    let a = b.input("a", &[3, 5]);
    let w = b.weight("w", &[4, 5], -1.0, 1.0);
    let c = b.weight("c", &[4], -1.0, 1.0);
    let g = b.op("Gemm", &[a, w, c], vec![A::int("transB", 1), A::float("alpha", 0.5)]);
    let y = match act {
        "LeakyRelu" => b.op("LeakyRelu", &[g], vec![A::float("alpha", 0.1)]),
        "Clip" => {
            let lo = b.scalar(0.0);
            let hi = b.scalar(1.0);
            b.op("Clip", &[g, lo, hi], vec![])
        }
        op => b.op(op, &[g], vec![]),
    };
    b.output(y);
    let feeds = vec![("a", b.rng.tensor(&[3, 5], -1.0, 1.0))];
    (b.model(13), feeds)
}

#[test]
fn gemm_and_activation_become_fused_gemm() {
    for act in ["Relu", "Sigmoid", "Tanh", "LeakyRelu"] {
        let (before, feeds) = gemm_act(act);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::ort(), &mut after);
        assert_eq!(applied(&r, "fused-gemm"), 1, "{act}");
        assert_eq!(count_in(&after, MS_DOMAIN, "FusedGemm"), 1);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn gemm_and_clip_stay() {
    let (before, feeds) = gemm_act("Clip");
    let mut after = before.clone();
    let r = run_pass(&FusionPass::ort(), &mut after);
    assert_eq!(count_in(&after, MS_DOMAIN, "FusedGemm"), 0);
    assert_eq!(why(&r, "fused-gemm"), ["missed: FusedGemm does not support this activation"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}
