//! Dynamic INT8: weights stored S8 per output channel, activations quantized at run time.
//!
//! Form chosen for ONNX Runtime CPU: `com.microsoft.DynamicQuantizeMatMul` (A float, B int8,
//! per-column scales, optional float bias). It is the kernel ORT's own optimizer fuses
//! DynamicQuantizeLinear + MatMulInteger + Cast + Mul into (`MatMulIntegerToFloat` fusion), so
//! emitting it directly gives the same kernel with one node instead of five and nothing left
//! to the runtime's pattern matching. LSTM with constant W and R (also through captures and
//! layout ops, see [`crate::constexpr`]) becomes `com.microsoft.DynamicQuantizeLSTM`
//! ([`crate::lstm`]). Conv stays float: ORT's ConvInteger takes only a per-tensor weight zero
//! point, and its form (DynamicQuantizeLinear, ConvInteger, Cast, Mul, Add per Conv) was slower
//! than the float Conv (silero_vad_16k_op15, 1 thread: 0.28 ms against 0.22 ms FP32).

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, Graph, Model, NodeId, NodeSpec, ValueDef};
use kiln_compiler::{DataType, Tensor};

use crate::constexpr::Scope;
use crate::handlers::constant;
use crate::lstm::quantize_lstm;
use crate::qdq::{QuantizeError, ensure_opset, remove_unused_constants};
use crate::weights::{float_values, quantize_weight};

/// Which nodes dynamic quantization touches.
#[derive(Debug, Clone, Default)]
pub struct DynamicConfig {
    /// Node names or op types left in float.
    pub exclude: Vec<String>,
}

/// What dynamic quantization did.
#[derive(Debug, Clone, Default)]
pub struct DynamicOutcome {
    /// Quantized nodes per (original) op type.
    pub quantized_ops: BTreeMap<String, usize>,
    /// Node → `int8-dynamic` / `fp32 (reason)`, for nodes with a weight.
    pub decisions: BTreeMap<String, String>,
}

/// Quantizes every MatMul/Gemm with a constant weight, in every graph, in place.
pub fn quantize_dynamic(model: &mut Model, config: &DynamicConfig) -> Result<DynamicOutcome, QuantizeError> {
    let g = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    let mut out = DynamicOutcome::default();
    graph(g, config, "", &Scope::default(), &mut out)?;
    if out.quantized_ops.values().sum::<usize>() > 0 {
        ensure_opset(model, "com.microsoft", 1);
    }
    // Embedding tables: the same S8 Gather → DequantizeLinear as static INT8 (nothing to
    // calibrate: the table's own range gives the scale).
    let selection = crate::plan::Int8Config { exclude: config.exclude.clone(), ..crate::plan::Int8Config::ort_cpu() };
    let tables = crate::handlers::gather::quantize_embeddings(model, &selection)?;
    if !tables.is_empty() {
        *out.quantized_ops.entry("Gather".to_string()).or_default() += tables.len();
    }
    out.decisions.extend(tables);
    let attention = crate::handlers::attention::quantize_attention(model, &selection)?;
    let n = attention.values().filter(|d| d.starts_with("int8")).count();
    if n > 0 {
        *out.quantized_ops.entry("Attention".to_string()).or_default() += n;
    }
    out.decisions.extend(attention);
    Ok(out)
}

fn label(g: &Graph, id: NodeId, prefix: &str) -> String {
    let n = g.node(id);
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => format!("{prefix}{s}"),
        _ => format!("{prefix}{}#{}", n.op_type, id.index()),
    }
}

/// Quantizes one graph and its subgraphs; returns the names of constants captured from
/// enclosing graphs by weights that were replaced (dead there, unless read elsewhere).
fn graph(
    g: &mut Graph,
    config: &DynamicConfig,
    prefix: &str,
    scope: &Scope<'_>,
    out: &mut DynamicOutcome,
) -> Result<Vec<String>, QuantizeError> {
    let mut released: Vec<String> = Vec::new();
    let has_subgraphs = g.nodes().any(|(_, n)| n.subgraphs().next().is_some());
    let inner = if has_subgraphs { scope.enter(g) } else { Scope::default() };
    for id in g.node_ids() {
        let Some(node) = g.get_node(id) else { continue };
        let key = label(g, id, prefix);
        if node.subgraphs().next().is_some() {
            let sub_prefix = format!("{key}/");
            let mut names = Vec::new();
            for sub in g.node_mut(id).subgraphs_mut() {
                names.extend(graph(sub, config, &sub_prefix, &inner, out)?);
            }
            names.sort();
            names.dedup();
            // Defined here: drop them if nothing reads them any more; else pass them up.
            for name in names {
                match g.find_value(&name).filter(|&v| !matches!(g.value(v).def(), ValueDef::Outer)) {
                    Some(v) => crate::lstm::remove_dead(g, vec![v]),
                    None => released.push(name),
                }
            }
            continue;
        }
        let node = g.node(id);
        if !node.domain().is_empty() || !matches!(node.op_type.as_str(), "MatMul" | "Gemm" | "Conv" | "LSTM") {
            continue;
        }
        let op = node.op_type.clone();
        let excluded = config.exclude.iter().any(|e| *e == op || Some(e.as_str()) == node.name.as_deref());
        let decision = if excluded {
            Err("excluded".to_string())
        } else {
            match op.as_str() {
                "MatMul" | "Gemm" => matmul(g, id),
                "Conv" => Err("ORT's ConvInteger takes only a per-tensor weight and is slower than float Conv".into()),
                _ => quantize_lstm(g, id, scope).map(|names| released.extend(names)),
            }
        };
        match decision {
            Ok(()) => {
                *out.quantized_ops.entry(op).or_default() += 1;
                out.decisions.insert(key, "int8-dynamic".into());
            }
            Err(why) => {
                out.decisions.insert(key, format!("fp32 ({why})"));
            }
        }
    }
    Ok(released)
}

/// Rewrites one MatMul (constant `[K, N]` weight) or Gemm (`transA = 0`, `alpha = 1`, constant
/// B, optional 1-D C with `beta = 1`) into DynamicQuantizeMatMul.
fn matmul(g: &mut Graph, id: NodeId) -> Result<(), String> {
    let node = g.node(id);
    let (Some(a), Some(b), Some(y)) = (node.input(0), node.input(1), node.output(0)) else {
        return Err("missing operand".into());
    };
    if constant(g, a).is_some() {
        return Err("the left operand is a constant".into());
    }
    let w = constant(g, b).ok_or("the weight is not a constant")?;
    if w.dtype() != DataType::F32 || w.rank() != 2 {
        return Err("the weight is not an f32 matrix".into());
    }
    let is_gemm = node.op_type == "Gemm";
    let trans_b = is_gemm && node.attr_int("transB").unwrap_or(0) != 0;
    let mut bias = None;
    if is_gemm {
        if node.attr_int("transA").unwrap_or(0) != 0 || node.attr_float("alpha").unwrap_or(1.0) != 1.0 {
            return Err("Gemm with transA or alpha".into());
        }
        if let Some(c) = node.input(2) {
            let n = w.dims()[if trans_b { 0 } else { 1 }];
            let ct = constant(g, c).ok_or("C is not a constant")?;
            if node.attr_float("beta").unwrap_or(1.0) != 1.0 || ct.dims() != [n] {
                return Err("C is not a 1-D bias added with beta = 1".into());
            }
            bias = Some(c);
        }
    }
    // B as [K, N]: a transposed Gemm weight is transposed once here.
    let kn = if trans_b { transpose(&w).map_err(|e| e.to_string())? } else { (*w).clone() };
    let (q, p) = quantize_weight(&kn, Some(1)).map_err(|e| e.to_string())?;
    let name = g.value(b).name.clone();
    let qv = g.add_initializer(g.fresh_name(&format!("{name}_quantized")), Arc::new(q));
    let s = g.add_initializer(g.fresh_name(&format!("{name}_scale")), Arc::new(p.scale_tensor()));
    let z = g.add_initializer(g.fresh_name(&format!("{name}_zero_point")), Arc::new(p.zero_point_tensor()));
    let node_name = g.node(id).name.clone().unwrap_or_else(|| g.value(y).name.clone());
    let tmp = g.fresh_name(&format!("{}_dynamic", g.value(y).name));
    let mut spec = NodeSpec::new("DynamicQuantizeMatMul")
        .domain("com.microsoft")
        .name(node_name)
        .inputs([a, qv, s, z])
        .outputs([tmp]);
    if let Some(c) = bias {
        spec = spec.input_opt(Some(c));
    }
    let new = g.insert_node_before(id, spec);
    g.remove_node(id);
    g.bind_output(new, 0, y);
    remove_unused_constants(g, &[b]);
    Ok(())
}

/// A 2-D f32 tensor transposed.
fn transpose(t: &Tensor) -> Result<Tensor, crate::weights::WeightError> {
    let (r, c) = (t.dims()[0], t.dims()[1]);
    let v = float_values(t)?;
    let mut out = vec![0.0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    Ok(Tensor::from_slice(vec![c, r], &out)?)
}
