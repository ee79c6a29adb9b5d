//! Fused self-attention (`com.microsoft.Attention`, which the fusion passes build before the
//! precision stage) becomes `com.microsoft.QAttention`: the packed QKV weight stored S8 per
//! column, the input quantized at run time by one DynamicQuantizeLinear (U8). Left float, the
//! QKV projection is a third of a BERT layer's weights and its largest float GEMM.
//!
//! QAttention takes only `num_heads` and `unidirectional`, so an Attention is rewritten only
//! when its other attributes are what QAttention computes anyway: `scale` equal to
//! `1/sqrt(head_size)` (the default) and no `qkv_hidden_sizes`. `mask_filter_value` is dropped:
//! QAttention's own filter (-10000) and any larger magnitude both give masked positions an
//! exp() of exactly 0 in f32. Past state, attention bias and rotary inputs keep it float.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, Attribute, Graph, Model, NodeId, NodeSpec};
use kiln_compiler::{DataType, Tensor};

use crate::handlers::constant;
use crate::plan::Int8Config;
use crate::qdq::{QuantizeError, ensure_opset, remove_unused_constants};
use crate::weights::quantize_weight;

/// Rewrites every eligible Attention of the main graph; returns node key → decision for each.
pub fn quantize_attention(model: &mut Model, config: &Int8Config) -> Result<BTreeMap<String, String>, QuantizeError> {
    let g = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    let mut out = BTreeMap::new();
    for id in g.node_ids() {
        let Some(node) = g.get_node(id) else { continue };
        if node.domain() != "com.microsoft" || node.op_type != "Attention" {
            continue;
        }
        let key = match node.name.as_deref() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => format!("Attention#{}", id.index()),
        };
        if config.excluded(node.name.as_deref(), "Attention").is_some() {
            continue;
        }
        let decision = match rewrite(g, id) {
            Ok(()) => "int8 (QAttention: S8 QKV weight per column, U8 input quantized at run time)".to_string(),
            Err(why) => format!("fp32 ({why})"),
        };
        out.insert(key, decision);
    }
    if out.values().any(|d| d.starts_with("int8")) {
        ensure_opset(model, "com.microsoft", 1);
    }
    Ok(out)
}

fn rewrite(g: &mut Graph, id: NodeId) -> Result<(), String> {
    let node = g.node(id);
    let (Some(x), Some(w), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
        return Err("missing input, weight or output".into());
    };
    if node.inputs().iter().skip(4).any(Option::is_some) || node.outputs().iter().skip(1).any(Option::is_some) {
        return Err("past state or attention bias".into());
    }
    let num_heads = node.attr_int("num_heads").filter(|&n| n > 0).ok_or("no num_heads")?;
    for a in &node.attributes {
        if !matches!(a.name.as_str(), "num_heads" | "unidirectional" | "scale" | "mask_filter_value") {
            return Err(format!("attribute `{}` QAttention does not take", a.name));
        }
    }
    let (mask, unidirectional, name, scale) =
        (node.input(3), node.attr_int("unidirectional"), node.name.clone(), node.attr_float("scale"));
    let bias_input = node.input(2);
    let wt = constant(g, w).ok_or("the QKV weight is not a constant")?;
    if wt.dtype() != DataType::F32 || wt.rank() != 2 || wt.dims()[1] % 3 != 0 {
        return Err("the QKV weight is not an f32 [hidden, 3 * hidden] matrix".into());
    }
    let hidden = wt.dims()[1] / 3;
    if hidden % num_heads as usize != 0 {
        return Err("hidden size not divisible by num_heads".into());
    }
    if let Some(scale) = scale {
        let default = 1.0 / ((hidden / num_heads as usize) as f32).sqrt();
        if (scale - default).abs() > default * 1e-6 {
            return Err("a scale other than 1/sqrt(head_size)".into());
        }
    }
    let bias = match bias_input {
        Some(b) => {
            let bt = constant(g, b).ok_or("the bias is not a constant")?;
            if bt.dtype() != DataType::F32 || bt.dims() != [3 * hidden] {
                return Err("the bias is not f32 [3 * hidden]".into());
            }
            b
        }
        None => {
            let zeros = Tensor::from_slice(vec![3 * hidden], &vec![0.0f32; 3 * hidden]).map_err(|e| e.to_string())?;
            g.add_initializer(g.fresh_name("qattention_zero_bias"), Arc::new(zeros))
        }
    };
    let (q, p) = quantize_weight(&wt, Some(1)).map_err(|e| e.to_string())?;
    let base = g.value(w).name.clone();
    let qv = g.add_initializer(g.fresh_name(&format!("{base}_quantized")), Arc::new(q));
    let s = g.add_initializer(g.fresh_name(&format!("{base}_scale")), Arc::new(p.scale_tensor()));
    let z = g.add_initializer(g.fresh_name(&format!("{base}_zero_point")), Arc::new(p.zero_point_tensor()));
    let xname = g.value(x).name.clone();
    let dq = NodeSpec::new("DynamicQuantizeLinear")
        .name(g.fresh_name(&format!("{xname}_dynamic_quantize")))
        .inputs([x])
        .outputs([
            g.fresh_name(&format!("{xname}_quantized")),
            g.fresh_name(&format!("{xname}_scale")),
            g.fresh_name(&format!("{xname}_zero_point")),
        ]);
    let dq = g.insert_node_before(id, dq);
    let dq_node = g.node(dq);
    let (Some(xq), Some(xs), Some(xz)) = (dq_node.output(0), dq_node.output(1), dq_node.output(2)) else {
        return Err("DynamicQuantizeLinear outputs".into());
    };
    let mut spec = NodeSpec::new("QAttention")
        .domain("com.microsoft")
        .inputs([xq, qv, bias, xs, s])
        .input_opt(mask)
        .input_opt(Some(xz))
        .input_opt(Some(z))
        .outputs([g.fresh_name(&format!("{}_qattention", g.value(y).name))])
        .attr(Attribute::int("num_heads", num_heads));
    if let Some(u) = unidirectional {
        spec = spec.attr(Attribute::int("unidirectional", u));
    }
    if let Some(n) = name {
        spec = spec.name(n);
    }
    let qa = g.insert_node_before(id, spec);
    g.remove_node(id);
    g.bind_output(qa, 0, y);
    remove_unused_constants(g, &[w]);
    Ok(())
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
