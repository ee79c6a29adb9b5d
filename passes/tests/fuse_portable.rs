//! `fuse-portable` rules: each positive case is checked for structure and against ONNX Runtime
//! on seeded inputs; each has a negative twin that must stay as it was, with a reason.

use kiln_compiler::Tensor;
use kiln_passes::fuse::FusionPass;
use kiln_passes::testing::*;

const TOL: Tolerance = abs_tol(1e-4);

/// x → Conv(W, B?) → BatchNormalization(scale, bias, mean, var).
fn conv_bn(with_bias: bool, scale_is_input: bool) -> (kiln_compiler::ir::Model, Vec<(&'static str, Tensor)>) {
    let mut b = B::new(1);
    let x = b.input("x", &[1, 3, 8, 8]);
    let w = b.weight("w", &[4, 3, 3, 3], -0.5, 0.5);
    let mut ins = vec![x, w];
    if with_bias {
        ins.push(b.weight("b", &[4], -0.5, 0.5));
    }
    let c = b.op("Conv", &ins, vec![A::ints("pads", vec![1, 1, 1, 1]), A::ints("kernel_shape", vec![3, 3])]);
    let scale = if scale_is_input { b.input("scale", &[4]) } else { b.weight("scale", &[4], 0.5, 1.5) };
    let bias = b.weight("bn_b", &[4], -0.5, 0.5);
    let mean = b.weight("mean", &[4], -0.5, 0.5);
    let var = b.weight("var", &[4], 0.1, 2.0);
    let y = b.op("BatchNormalization", &[c, scale, bias, mean, var], vec![A::float("epsilon", 1e-3)]);
    b.output(y);
    let mut feeds = vec![("x", b.rng.tensor(&[1, 3, 8, 8], -1.0, 1.0))];
    if scale_is_input {
        feeds.push(("scale", b.rng.tensor(&[4], 0.5, 1.5)));
    }
    (b.model(13), feeds)
}

#[test]
fn conv_bn_folds_into_the_conv() {
    for with_bias in [true, false] {
        let (before, feeds) = conv_bn(with_bias, false);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::portable(), &mut after);
        assert_eq!(applied(&r, "conv-bn"), 1);
        assert_eq!(count_in(&after, "", "BatchNormalization"), 0);
        assert_eq!(count_in(&after, "", "Conv"), 1);
        // The original weight is gone; only the folded one is left.
        assert_eq!(after.graph.as_ref().unwrap().initializers().len(), 2);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn conv_bn_with_a_runtime_scale_stays() {
    let (before, feeds) = conv_bn(true, true);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "BatchNormalization"), 1);
    assert_eq!(why(&r, "conv-bn"), ["missed: the BatchNormalization scale is not a constant"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}

/// Conv → Mul(k) and/or Add(k) with a constant of `k_dims`, operands in the given order.
fn conv_affine(
    op: &str,
    k_dims: &[usize],
    const_first: bool,
) -> (kiln_compiler::ir::Model, Vec<(&'static str, Tensor)>) {
    let mut b = B::new(2);
    let x = b.input("x", &[1, 3, 6, 6]);
    let w = b.weight("w", &[4, 3, 1, 1], -0.5, 0.5);
    let c = b.op("Conv", &[x, w], vec![]);
    let k = b.weight("k", k_dims, 0.5, 1.5);
    let y = if const_first { b.op(op, &[k, c], vec![]) } else { b.op(op, &[c, k], vec![]) };
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[1, 3, 6, 6], -1.0, 1.0))];
    (b.model(13), feeds)
}

#[test]
fn conv_mul_and_add_fold_per_channel_constants_in_both_orders() {
    for (op, rule) in [("Mul", "conv-mul"), ("Add", "conv-add")] {
        for (dims, first) in [(&[4usize, 1, 1][..], true), (&[1, 4, 1, 1][..], false), (&[1][..], true)] {
            let (before, feeds) = conv_affine(op, dims, first);
            let mut after = before.clone();
            let r = run_pass(&FusionPass::portable(), &mut after);
            assert_eq!(applied(&r, rule), 1, "{op} {dims:?}");
            assert_eq!(count_in(&after, "", op), 0);
            assert_same(&before, &after, &feeds, TOL);
        }
    }
}

#[test]
fn conv_mul_by_a_spatial_constant_stays() {
    let (before, feeds) = conv_affine("Mul", &[1, 1, 6, 6], false);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "Mul"), 1);
    assert_eq!(why(&r, "conv-mul"), ["missed: the constant is not per-channel"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);
}

fn matmul_add(
    a_dims: Option<&[usize]>,
    feed_dims: &[usize],
) -> (kiln_compiler::ir::Model, Vec<(&'static str, Tensor)>) {
    let mut b = B::new(3);
    let a = b.g.add_input("a", a_dims.map(|d| tensor_ty(kiln_compiler::DataType::F32, d)));
    let w = b.weight("w", &[5, 4], -1.0, 1.0);
    let bias = b.weight("bias", &[4], -1.0, 1.0);
    let mm = b.op("MatMul", &[a, w], vec![]);
    let y = b.op("Add", &[bias, mm], vec![]);
    b.output(y);
    let feeds = vec![("a", b.rng.tensor(feed_dims, -1.0, 1.0))];
    (b.model(13), feeds)
}

#[test]
fn matmul_add_becomes_gemm_when_a_is_2d() {
    let (before, feeds) = matmul_add(Some(&[3, 5]), &[3, 5]);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(applied(&r, "matmul-add-gemm"), 1);
    assert_eq!(count_in(&after, "", "Gemm"), 1);
    assert_eq!(count_in(&after, "", "MatMul"), 0);
    assert_same(&before, &after, &feeds, TOL);
}

#[test]
fn matmul_add_on_3d_or_unknown_a_stays() {
    let (before, feeds) = matmul_add(Some(&[2, 3, 5]), &[2, 3, 5]);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "Gemm"), 0);
    assert_eq!(why(&r, "matmul-add-gemm"), ["missed: A is not 2-D"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);

    let (before, _) = matmul_add(None, &[3, 5]);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "Gemm"), 0);
    assert_eq!(why(&r, "matmul-add-gemm"), ["skipped: the rank of A is unknown"]);
}

/// A written-out layer norm over `axis` of x [2, 5, 8], with gamma/beta in swapped orders.
pub fn decomposed_ln(
    opset: i64,
    axis: i64,
    squared_by_mul: bool,
) -> (kiln_compiler::ir::Model, Vec<(&'static str, Tensor)>) {
    let mut b = B::new(4);
    let x = b.input("x", &[2, 5, 8]);
    let axes = |b: &mut B| -> (Vec<kiln_compiler::ir::ValueId>, Vec<A>) {
        if opset >= 18 { (vec![b.ints(&[axis])], vec![]) } else { (vec![], vec![A::ints("axes", vec![axis])]) }
    };
    let (ai, aa) = axes(&mut b);
    let mean = b.op("ReduceMean", &[&[x][..], &ai].concat(), aa);
    let d = b.op("Sub", &[x, mean], vec![]);
    let sq = if squared_by_mul {
        b.op("Mul", &[d, d], vec![])
    } else {
        let two = b.scalar(2.0);
        b.op("Pow", &[d, two], vec![])
    };
    let (ai, aa) = axes(&mut b);
    let var = b.op("ReduceMean", &[&[sq][..], &ai].concat(), aa);
    let eps = b.scalar(1e-5);
    let ve = b.op("Add", &[eps, var], vec![]);
    let s = b.op("Sqrt", &[ve], vec![]);
    let n = b.op("Div", &[d, s], vec![]);
    let gamma = b.weight("gamma", &[8], 0.5, 1.5);
    let beta = b.weight("beta", &[8], -0.5, 0.5);
    let scaled = b.op("Mul", &[gamma, n], vec![]);
    let y = b.op("Add", &[scaled, beta], vec![]);
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[2, 5, 8], -2.0, 2.0))];
    (b.model(opset), feeds)
}

#[test]
fn written_out_layer_norm_becomes_layer_normalization() {
    for (opset, by_mul) in [(17, false), (18, true)] {
        let (before, feeds) = decomposed_ln(opset, -1, by_mul);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::portable(), &mut after);
        assert_eq!(applied(&r, "layernorm"), 1, "opset {opset}");
        assert_eq!(after.graph.as_ref().unwrap().node_count(), 1);
        assert_eq!(count_in(&after, "", "LayerNormalization"), 1);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn layer_norm_over_another_axis_or_old_opset_stays() {
    let (before, feeds) = decomposed_ln(17, 1, false);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "LayerNormalization"), 0);
    assert_eq!(why(&r, "layernorm"), ["missed: ReduceMean is not over the last axis"]);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);

    let (before, _) = decomposed_ln(13, -1, false);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "LayerNormalization"), 0);
    assert!(why(&r, "layernorm")[0].contains("opset 17"));
}

/// Erf GELU of x [3, 7] in one of the three groupings; `half` is the constant used for 0.5.
pub fn erf_gelu(form: u8, half: f32, opset: i64) -> (kiln_compiler::ir::Model, Vec<(&'static str, Tensor)>) {
    let mut b = B::new(5);
    let x = b.input("x", &[3, 7]);
    let r2 = b.scalar(std::f32::consts::SQRT_2);
    let d = b.op("Div", &[x, r2], vec![]);
    let e = b.op("Erf", &[d], vec![]);
    let one = b.scalar(1.0);
    let p = b.op("Add", &[one, e], vec![]);
    let h = b.scalar(half);
    let y = match form {
        0 => {
            let t = b.op("Mul", &[p, x], vec![]);
            b.op("Mul", &[h, t], vec![])
        }
        1 => {
            let t = b.op("Mul", &[p, h], vec![]);
            b.op("Mul", &[x, t], vec![])
        }
        _ => {
            let t = b.op("Mul", &[h, x], vec![]);
            b.op("Mul", &[p, t], vec![])
        }
    };
    b.output(y);
    let feeds = vec![("x", b.rng.tensor(&[3, 7], -3.0, 3.0))];
    (b.model(opset), feeds)
}

#[test]
fn erf_gelu_becomes_gelu_in_every_grouping() {
    for form in 0..3 {
        let (before, feeds) = erf_gelu(form, 0.5, 20);
        let mut after = before.clone();
        let r = run_pass(&FusionPass::portable(), &mut after);
        assert_eq!(applied(&r, "gelu"), 1, "form {form}");
        assert_eq!(after.graph.as_ref().unwrap().node_count(), 1);
        assert_eq!(count_in(&after, "", "Gelu"), 1);
        assert_same(&before, &after, &feeds, TOL);
    }
}

#[test]
fn gelu_with_a_wrong_constant_or_old_opset_stays() {
    let (before, feeds) = erf_gelu(0, 0.6, 20);
    let mut after = before.clone();
    run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "Gelu"), 0);
    assert_eq!(count_in(&after, "", "Erf"), 1);
    assert_same(&before, &after, &feeds, Tolerance::EXACT);

    let (before, _) = erf_gelu(0, 0.5, 17);
    let mut after = before.clone();
    let r = run_pass(&FusionPass::portable(), &mut after);
    assert_eq!(count_in(&after, "", "Gelu"), 0);
    assert!(why(&r, "gelu")[0].contains("opset 20"));
}
