//! Quantization ops (standard and `com.microsoft`) and the ONNX Runtime contrib ops Kiln
//! emits when it fuses: Gelu variants, SkipLayerNormalization, Attention,
//! MultiHeadAttention, EmbedLayerNormalization, FusedConv/FusedGemm, MatMulNBits,
//! GatherBlockQuantized, QLinear*.

use super::matmul::{gemm_shape, matmul_shape};
use super::nn::{Window, conv_shape};
use super::{
    MS, Registry, bare, bare_all, code, dim_add, dim_div, dim_mul, dtype_attr, norm_axis, same, same_as_first, tt,
};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim};
use crate::shape::{InferCtx, InferResult, broadcast_shapes};

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(&["QuantizeLinear"], quantize);
    r.onnx(&["DequantizeLinear"], dequantize);
    r.onnx(&["DynamicQuantizeLinear"], dynamic_quantize);
    r.add(MS, &["QuantizeLinear"], quantize);
    r.add(MS, &["DequantizeLinear"], dequantize);
    r.add(MS, &["DynamicQuantizeLinear"], dynamic_quantize);
    r.add(
        MS,
        &[
            "Gelu",
            "FastGelu",
            "BiasGelu",
            "QuickGelu",
            "QLinearSigmoid",
            "QLinearLeakyRelu",
            "QLinearSoftmax",
            "RotaryEmbedding",
        ],
        same_as_first,
    );
    r.add(MS, &["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"], skip_layer_norm);
    r.add(MS, &["Attention"], ms_attention);
    r.add(MS, &["QAttention"], q_attention);
    r.add(MS, &["MultiHeadAttention", "GroupQueryAttention"], multi_head_attention);
    r.add(MS, &["EmbedLayerNormalization"], embed_layer_norm);
    r.add(MS, &["FusedConv"], |cx| Ok(vec![tt(cx.elem(0), conv_shape(cx, 0, 1)?)]));
    r.add(MS, &["FusedGemm"], |cx| Ok(vec![tt(cx.elem(0), gemm_shape(cx, 0, 1)?)]));
    r.add(MS, &["FusedMatMul"], fused_matmul);
    r.add(MS, &["MatMulNBits"], matmul_nbits);
    r.add(MS, &["GatherBlockQuantized"], gather_block_quantized);
    r.add(MS, &["MatMulIntegerToFloat"], |cx| {
        let s = match (cx.shape(0), cx.shape(1)) {
            (Some(a), Some(b)) => Some(matmul_shape(a, b)?),
            _ => None,
        };
        Ok(vec![tt(cx.elem(2), s)])
    });
    // A float activation times an int8 weight (B) dequantized by its scale: MatMul's shape,
    // A's float type.
    r.add(MS, &["DynamicQuantizeMatMul"], |cx| {
        let s = match (cx.shape(0), cx.shape(1)) {
            (Some(a), Some(b)) => Some(matmul_shape(a, b)?),
            _ => None,
        };
        Ok(vec![tt(cx.elem(0), s)])
    });
    r.add(MS, &["QLinearAdd", "QLinearMul"], qlinear_binary);
    r.add(MS, &["QLinearConcat"], qlinear_concat);
    r.add(MS, &["QLinearGlobalAveragePool"], qlinear_global_pool);
    r.add(MS, &["QLinearAveragePool"], qlinear_avg_pool);
    r.add(MS, &["QGemm"], |cx| {
        let elem = if cx.has_input(8) { cx.elem(8) } else { code(DataType::F32) };
        Ok(vec![tt(elem, gemm_shape(cx, 0, 3)?)])
    });
}

fn quantize(cx: &mut InferCtx<'_>) -> InferResult {
    let attr = dtype_attr(cx, "output_dtype", None).filter(|&d| d != 0);
    let elem = if cx.has_input(2) { cx.elem(2) } else { attr.or(code(DataType::U8)) };
    Ok(vec![tt(elem, cx.shape(0).map(bare_all))])
}

fn dequantize(cx: &mut InferCtx<'_>) -> InferResult {
    let attr = dtype_attr(cx, "output_dtype", None).filter(|&d| d != 0);
    let elem = attr.or_else(|| cx.elem(1));
    Ok(vec![tt(elem, cx.shape(0).map(bare_all))])
}

fn dynamic_quantize(cx: &mut InferCtx<'_>) -> InferResult {
    let u8t = code(DataType::U8);
    Ok(vec![tt(u8t, cx.shape(0).map(bare_all)), tt(code(DataType::F32), Some(vec![])), tt(u8t, Some(vec![]))])
}

fn skip_layer_norm(cx: &mut InferCtx<'_>) -> InferResult {
    let stats = cx.shape(0).map(|s| {
        let mut v = bare_all(s);
        if let Some(l) = v.last_mut() {
            *l = Dim::known(1);
        }
        v
    });
    let f32t = code(DataType::F32);
    let mut out = vec![same(cx, 0), tt(f32t, stats.clone()), tt(f32t, stats), same(cx, 0)];
    out.truncate(cx.num_outputs().max(1));
    Ok(out)
}

/// `com.microsoft.Attention`: packed QKV projection of `[B, S, hidden]`.
fn ms_attention(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let heads = cx.node.attr_int("num_heads");
    let sizes = cx.node.attr_ints("qkv_hidden_sizes").map(<[i64]>::to_vec);
    let Some(x) = cx.shape(0).filter(|s| s.len() == 3).map(<[Dim]>::to_vec) else {
        return Ok(vec![tt(elem, None); cx.num_outputs()]);
    };
    let w_out = cx.shape(1).filter(|s| s.len() == 2).map(|s| bare(&s[1]));
    let (k_hidden, v_hidden) = match &sizes {
        Some(s) if s.len() == 3 => (Dim::known(s[1]), Dim::known(s[2])),
        _ => {
            let h = w_out.map_or_else(Dim::unknown, |d| dim_div(&d, &Dim::known(3)));
            (h.clone(), h)
        }
    };
    let mut out = vec![tt(elem, Some(vec![bare(&x[0]), bare(&x[1]), v_hidden]))];
    if cx.num_outputs() > 1 {
        let present = heads.map(|n| {
            let past = cx.shape(4).filter(|s| s.len() == 5).map(|s| bare(&s[3]));
            let total = past.map_or_else(|| bare(&x[1]), |p| dim_add(&p, &x[1]));
            vec![Dim::known(2), bare(&x[0]), Dim::known(n), total, dim_div(&k_hidden, &Dim::known(n))]
        });
        out.push(tt(elem, present));
    }
    Ok(out)
}

/// `com.microsoft.QAttention`: Attention over a quantized input and weight (inputs 0 and 1);
/// the float output takes `input_scale`'s type (input 3), `[batch, sequence, hidden]` with the
/// hidden size a third of the packed QKV weight's columns.
fn q_attention(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(3);
    let Some(x) = cx.shape(0).filter(|s| s.len() == 3).map(<[Dim]>::to_vec) else {
        return Ok(vec![tt(elem, None); cx.num_outputs()]);
    };
    let hidden =
        cx.shape(1).filter(|s| s.len() == 2).map_or_else(Dim::unknown, |s| dim_div(&bare(&s[1]), &Dim::known(3)));
    let mut out = vec![tt(elem, Some(vec![bare(&x[0]), bare(&x[1]), hidden]))];
    out.extend((1..cx.num_outputs()).map(|_| tt(elem, None)));
    Ok(out)
}

fn multi_head_attention(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let n = cx.num_outputs();
    let heads = cx.node.attr_int("num_heads");
    let Some(q) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None); n]) };
    let y = match (q.len(), cx.shape(2)) {
        // Separate Q, K, V of [B, S, D] / [B, L, Dv].
        (3, Some(v)) if v.len() == 3 => Some(vec![bare(&q[0]), bare(&q[1]), bare(&v[2])]),
        // V as [B, N, L, Hv].
        (3, Some(v)) if v.len() == 4 => Some(vec![bare(&q[0]), bare(&q[1]), dim_mul(&v[1], &v[3])]),
        (3, _) if cx.node.op_type == "GroupQueryAttention" || !cx.has_input(1) => Some(bare_all(&q)),
        // Packed QKV [B, S, N, 3, H].
        (5, _) => Some(vec![bare(&q[0]), bare(&q[1]), dim_mul(&q[2], &q[4])]),
        _ => None,
    };
    let mut out = vec![tt(elem, y)];
    let k3 = cx.shape(1).filter(|s| s.len() == 3 && cx.node.op_type == "MultiHeadAttention").map(<[Dim]>::to_vec);
    for i in 1..n {
        let shape = match (&k3, heads) {
            (Some(k), Some(h)) => {
                let past = cx.shape(5 + i).filter(|s| s.len() == 4).map(|s| bare(&s[2]));
                let total = past.map_or_else(|| bare(&k[1]), |p| dim_add(&p, &k[1]));
                let hd = if i == 1 {
                    dim_div(&k[2], &Dim::known(h))
                } else {
                    cx.shape(2).filter(|s| s.len() == 3).map_or_else(Dim::unknown, |v| dim_div(&v[2], &Dim::known(h)))
                };
                Some(vec![bare(&q[0]), Dim::known(h), total, hd])
            }
            _ => None,
        };
        out.push(tt(elem, shape));
    }
    Ok(out)
}

fn embed_layer_norm(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(2);
    let ids = cx.shape(0).filter(|s| s.len() == 2).map(<[Dim]>::to_vec);
    let hidden = cx.shape(2).filter(|s| s.len() == 2).map_or_else(Dim::unknown, |s| bare(&s[1]));
    let y = ids.as_ref().map(|s| vec![bare(&s[0]), bare(&s[1]), hidden]);
    let mask = ids.as_ref().map(|s| vec![bare(&s[0])]);
    let mut out = vec![tt(elem, y.clone()), tt(code(DataType::I32), mask), tt(elem, y)];
    out.truncate(cx.num_outputs().max(1));
    Ok(out)
}

fn fused_matmul(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let (Some(a), Some(b)) = (cx.shape(0), cx.shape(1)) else { return Ok(vec![tt(elem, None)]) };
    let swap = |s: &[Dim], t: bool| -> Vec<Dim> {
        let mut v = s.to_vec();
        let n = v.len();
        if t && n >= 2 {
            v.swap(n - 1, n - 2);
        }
        v
    };
    let a = swap(a, cx.node.attr_int("transA").unwrap_or(0) != 0);
    let b = swap(b, cx.node.attr_int("transB").unwrap_or(0) != 0);
    Ok(vec![tt(elem, Some(matmul_shape(&a, &b)?))])
}

fn matmul_nbits(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let n = cx.node.attr_int("N").ok_or("MatMulNBits has no N")?;
    let shape = cx.shape(0).map(|s| {
        let mut v = bare_all(s);
        if let Some(l) = v.last_mut() {
            *l = Dim::known(n);
        }
        v
    });
    Ok(vec![tt(elem, shape)])
}

/// `Gather` of a blockwise-quantized table, dequantized to the scales' type. A `uint8` table
/// with `bits` below 8 packs its last axis (`8 / bits` values a byte): the output has the
/// unpacked length there.
fn gather_block_quantized(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(2);
    let axis = cx.node.attr_int("gather_axis").unwrap_or(0);
    let bits = cx.node.attr_int("bits").unwrap_or(4);
    let per_byte = if cx.elem(0) == code(DataType::U8) && (1..8).contains(&bits) { 8 / bits } else { 1 };
    let (Some(data), Some(ind)) = (cx.shape(0), cx.shape(1)) else {
        let rank = match (cx.rank(0), cx.rank(1)) {
            (Some(a), Some(b)) if a > 0 => Some(a + b - 1),
            _ => None,
        };
        return Ok(vec![tt(elem, rank.map(|r| vec![Dim::unknown(); r]))]);
    };
    let a = norm_axis(axis, data.len())?;
    let mut logical: Vec<Dim> = bare_all(data);
    if let Some(last) = logical.last_mut() {
        *last = dim_mul(last, &Dim::known(per_byte));
    }
    let mut out: Vec<Dim> = logical[..a].to_vec();
    out.extend(bare_all(ind));
    out.extend(logical[a + 1..].iter().cloned());
    Ok(vec![tt(elem, Some(out))])
}

fn qlinear_binary(cx: &mut InferCtx<'_>) -> InferResult {
    let shape = match (cx.shape(0), cx.shape(3)) {
        (Some(a), Some(b)) => Some(bare_all(&broadcast_shapes(&[a, b])?)),
        _ => None,
    };
    Ok(vec![tt(cx.elem(0), shape)])
}

fn qlinear_concat(cx: &mut InferCtx<'_>) -> InferResult {
    let n = cx.node.inputs().len();
    let idx: Vec<usize> = (2..n).step_by(3).collect();
    let elem = idx.iter().find_map(|&i| cx.elem(i));
    let shapes: Option<Vec<&[Dim]>> = idx.iter().map(|&i| cx.shape(i)).collect();
    let Some(shapes) = shapes.filter(|s| !s.is_empty()) else { return Ok(vec![tt(elem, None)]) };
    let rank = shapes[0].len();
    if shapes.iter().any(|s| s.len() != rank) {
        return Err("QLinearConcat inputs have different ranks".into());
    }
    let a = norm_axis(cx.node.attr_int("axis").unwrap_or(0), rank)?;
    let mut out = bare_all(shapes[0]);
    out[a] = shapes.iter().fold(Dim::known(0), |acc, s| dim_add(&acc, &s[a]));
    Ok(vec![tt(elem, Some(out))])
}

fn qlinear_global_pool(cx: &mut InferCtx<'_>) -> InferResult {
    let last = cx.node.attr_int("channels_last").unwrap_or(0) != 0;
    let shape = cx.shape(0).map(|s| {
        let r = s.len();
        s.iter()
            .enumerate()
            .map(|(i, d)| {
                let keep = i == 0 || (if last { i == r - 1 } else { i == 1 });
                if keep { bare(d) } else { Dim::known(1) }
            })
            .collect::<Vec<_>>()
    });
    Ok(vec![tt(cx.elem(0), shape)])
}

fn qlinear_avg_pool(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    if cx.node.attr_int("channels_last").unwrap_or(0) != 0 {
        return Ok(vec![tt(elem, cx.rank(0).map(super::unknown_dims))]);
    }
    let Some(xs) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    if xs.len() < 2 {
        return Err("pooling input has no channel axis".into());
    }
    let win = Window::read(cx, xs.len() - 2, cx.node.attr_ints("kernel_shape").map(<[i64]>::to_vec))?;
    let mut out = vec![bare(&xs[0]), bare(&xs[1])];
    out.extend(xs[2..].iter().enumerate().map(|(i, d)| win.out(i, d, true)));
    Ok(vec![tt(elem, Some(out))])
}
