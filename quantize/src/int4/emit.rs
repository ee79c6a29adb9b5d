//! Writing a quantized layer into the graph: `com.microsoft.MatMulNBits` for ONNX Runtime, or
//! blocked `DequantizeLinear` (opset 21) feeding the original `MatMul`/`Gemm` for TensorRT.

use std::sync::Arc;

use bytes::Bytes;
use kiln_compiler::ir::{Attribute, Graph, NodeSpec, ValueDef, ValueId};
use kiln_compiler::{DataType, Tensor};

use super::Int4Error;
use super::block::{
    BlockQuantized, RowMajor, blob_size, dq_k_by_n, matmul_nbits_b, matmul_nbits_zero_points, pack, per_block_k_by_n,
};
use super::select::Layer;

/// The weight of a layer as rows of K (one per output feature), with Gemm's alpha folded in
/// when `fold_alpha`.
pub fn layer_rows(layer: &Layer, fold_alpha: bool) -> Result<RowMajor, Int4Error> {
    let values = layer
        .tensor
        .to_vec::<f32>()
        .map_err(|e| Int4Error::Weight { node: layer.name.clone(), message: e.to_string() })?;
    let mut w = if layer.transposed {
        RowMajor { n: layer.n, k: layer.k, values }
    } else {
        RowMajor::from_k_by_n(layer.k, layer.n, &values)
    };
    if fold_alpha && layer.alpha != 1.0 {
        for v in &mut w.values {
            *v *= layer.alpha;
        }
    }
    Ok(w)
}

fn tensor(dtype: DataType, dims: Vec<usize>, bytes: Vec<u8>) -> Result<Arc<Tensor>, Int4Error> {
    Tensor::new(dtype, dims, Bytes::from(bytes)).map(Arc::new).map_err(|e| Int4Error::Internal(e.to_string()))
}

fn f32_tensor(dims: Vec<usize>, values: &[f32]) -> Result<Arc<Tensor>, Int4Error> {
    Tensor::from_slice(dims, values).map(Arc::new).map_err(|e| Int4Error::Internal(e.to_string()))
}

fn initializer(g: &mut Graph, base: &str, t: Arc<Tensor>) -> ValueId {
    let name = g.fresh_name(base);
    g.add_initializer(name, t)
}

/// Replaces the layer's node by `spec`, keeping its output value (name, type, consumers).
fn replace_node(g: &mut Graph, layer: &Layer, spec: NodeSpec) -> Result<(), Int4Error> {
    let out =
        g.node(layer.node).output(0).ok_or_else(|| Int4Error::Internal(format!("{} has no output", layer.name)))?;
    let new = g.insert_node_before(layer.node, spec);
    g.remove_node(layer.node);
    g.bind_output(new, 0, out);
    Ok(())
}

/// Gemm's `beta * C` as a bias of N values.
fn bias_values(layer: &Layer) -> Result<Option<Vec<f32>>, Int4Error> {
    let Some(c) = &layer.bias else { return Ok(None) };
    let v = c.to_vec::<f32>().map_err(|e| Int4Error::Weight { node: layer.name.clone(), message: e.to_string() })?;
    let v: Vec<f32> = if v.len() == 1 { vec![v[0]; layer.n] } else { v };
    Ok(Some(v.into_iter().map(|x| x * layer.beta).collect()))
}

/// Rewrites the layer as `MatMulNBits(A, B, scales[, zero_points][, bias])`; returns the
/// bytes its new constants take.
pub fn emit_matmul_nbits(
    g: &mut Graph,
    layer: &Layer,
    q: &BlockQuantized,
    accuracy_level: Option<i64>,
) -> Result<u64, Int4Error> {
    let a = g.node(layer.node).input(0).ok_or_else(|| Int4Error::Internal(format!("{} has no input A", layer.name)))?;
    let base = g.value(layer.weight).name.clone();
    let kb = q.k_blocks();
    let b_bytes = matmul_nbits_b(q);
    let mut bytes = b_bytes.len() as u64 + kb as u64 * q.n as u64 * 4;
    let b = initializer(
        g,
        &format!("{base}_q{}", q.spec.bits),
        tensor(DataType::U8, vec![q.n, kb, blob_size(q.spec)], b_bytes)?,
    );
    let s = initializer(g, &format!("{base}_scales"), f32_tensor(vec![q.n, kb], &q.scales)?);
    let mut spec = NodeSpec::new("MatMulNBits")
        .domain("com.microsoft")
        .name(layer.name.clone())
        .inputs([a, b, s])
        .outputs([g.fresh_name(&format!("{}_out", layer.name))])
        .attr(Attribute::int("K", q.k as i64))
        .attr(Attribute::int("N", q.n as i64))
        .attr(Attribute::int("bits", i64::from(q.spec.bits)))
        .attr(Attribute::int("block_size", q.spec.block as i64));
    if let Some(level) = accuracy_level {
        spec = spec.attr(Attribute::int("accuracy_level", level));
    }
    let zp = match matmul_nbits_zero_points(q) {
        Some(z) => {
            bytes += z.len() as u64;
            let cols = z.len() / q.n;
            Some(initializer(g, &format!("{base}_zero_points"), tensor(DataType::U8, vec![q.n, cols], z)?))
        }
        None => None,
    };
    let bias = match bias_values(layer)? {
        Some(v) => {
            let name = format!("{base}_bias");
            Some(initializer(g, &name, f32_tensor(vec![layer.n], &v)?))
        }
        None => None,
    };
    if zp.is_some() || bias.is_some() {
        spec = spec.input_opt(zp);
    }
    if let Some(bias) = bias {
        spec = spec.input_opt(None).input_opt(Some(bias));
    }
    replace_node(g, layer, spec)?;
    Ok(bytes)
}

/// Feeds the layer's weight input from `DequantizeLinear` of the quantized weight, laid out as
/// the original (`[K, N]`, or `[N, K]` for `Gemm` with `transB`): blocked along K for 4 bits
/// (opset 21 `block_size`), per output channel for 8 bits. Returns the constants' bytes.
pub fn emit_dequantize(g: &mut Graph, layer: &Layer, q: &BlockQuantized) -> Result<u64, Int4Error> {
    let base = g.value(layer.weight).name.clone();
    let kb = q.k_blocks();
    let symmetric = q.zero_points.is_none();
    let per_channel = kb == 1 && q.spec.bits == 8;
    let dtype = match (q.spec.bits, symmetric) {
        (4, true) => DataType::I4,
        (4, false) => DataType::U4,
        (_, true) => DataType::I8,
        (_, false) => DataType::U8,
    };
    // Data in the original layout.
    let (data, dims, axis) = if layer.transposed {
        let center = q.spec.center();
        let elems: Vec<u8> = q.codes.iter().map(|&c| if symmetric { c.wrapping_sub(center) } else { c }).collect();
        (pack(&elems, q.spec.bits), vec![q.n, q.k], 1i64)
    } else {
        (dq_k_by_n(q), vec![q.k, q.n], 0i64)
    };
    // Per-channel scales run along the output axis; blocked ones have the data's rank.
    let (scales, scale_dims, axis) = match (per_channel, layer.transposed) {
        (true, _) => (q.scales.clone(), vec![q.n], if layer.transposed { 0 } else { 1 }),
        (false, true) => (q.scales.clone(), vec![q.n, kb], axis),
        (false, false) => (per_block_k_by_n(q, &q.scales), vec![kb, q.n], axis),
    };
    let mut bytes = data.len() as u64 + scales.len() as u64 * 4;
    let x = initializer(g, &format!("{base}_q{}", q.spec.bits), tensor(dtype, dims, data)?);
    let s = initializer(g, &format!("{base}_scale"), f32_tensor(scale_dims.clone(), &scales)?);
    let mut inputs = vec![x, s];
    if let Some(z) = &q.zero_points {
        let z = if layer.transposed || per_channel { z.clone() } else { per_block_k_by_n(q, z) };
        let z = pack(&z, q.spec.bits);
        bytes += z.len() as u64;
        inputs.push(initializer(g, &format!("{base}_zero_point"), tensor(dtype, scale_dims, z)?));
    }
    let mut spec = NodeSpec::new("DequantizeLinear")
        .name(g.fresh_name(&format!("{}_weight_dq", layer.name)))
        .inputs(inputs)
        .outputs([g.fresh_name(&format!("{base}_dequantized"))])
        .attr(Attribute::int("axis", axis));
    if !per_channel {
        spec = spec.attr(Attribute::int("block_size", q.spec.block as i64));
    }
    let dq = g.insert_node_before(layer.node, spec);
    let w = g.node(dq).output(0).ok_or_else(|| Int4Error::Internal("DequantizeLinear has no output".into()))?;
    g.set_input(layer.node, 1, Some(w));
    Ok(bytes)
}

/// Drops original weights nothing reads any more (initializers, or `Constant` nodes).
pub fn drop_dead_weights(g: &mut Graph, weights: &[ValueId]) {
    let mut dead_inits = Vec::new();
    for &w in weights {
        if !g.value(w).uses().is_empty() || g.is_output(w) {
            continue;
        }
        match g.value(w).def().clone() {
            ValueDef::Initializer(_) if !dead_inits.contains(&w) => dead_inits.push(w),
            ValueDef::Node { node, .. } => {
                g.remove_node(node);
            }
            _ => {}
        }
    }
    g.remove_initializers(&dead_inits);
}
