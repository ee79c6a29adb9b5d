//! Embedding tables. A Gather whose data is a large constant f32 table (a word embedding) reads
//! a few rows per inference out of a table that dominates the model's size, so the table is
//! stored S8, symmetric per tensor, the Gather moves int8 rows and one DequantizeLinear turns
//! the gathered rows back to float: `Gather(table_q, ids) → DequantizeLinear(scale, 0)`.
//!
//! Per tensor because the scale must survive the Gather: a per-row scale would need its own
//! Gather and Mul on every run. Dequantizing the whole table before the Gather (`DQ(table_q) →
//! Gather`) would cost a pass over every row per inference (ORT does not fold a DQ of an
//! initializer), so the DQ goes after. This is a graph rewrite of its own, run after the QDQ
//! plan (static) or with the weight rewrites (dynamic); the plan keeps such a Gather in float.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::ir::{Graph, Model, NodeId, NodeSpec, ValueDef, ValueId};

use crate::plan::Int8Config;
use crate::qdq::{QuantizeError, is_captured, qdq_domain, remove_unused_constants};
use crate::weights::quantize_weight;

/// Smaller tables are left alone: their bytes do not matter and a DequantizeLinear costs more
/// than it saves.
pub const MIN_TABLE_ELEMENTS: u64 = 1 << 14;

/// Quantizes the embedding tables of the main graph in place. A table is quantized when it is
/// an f32 initializer of at least [`MIN_TABLE_ELEMENTS`] whose every use is the data input of
/// a Gather that `config` does not leave out (a table shared with a MatMul, as a tied output
/// projection, stays float). Returns Gather node key → decision, for the quantized nodes.
pub fn quantize_embeddings(model: &mut Model, config: &Int8Config) -> Result<BTreeMap<String, String>, QuantizeError> {
    let tables = {
        let g = model.main_graph().ok_or(QuantizeError::NoGraph)?;
        embedding_tables(g, config)
    };
    let mut out = BTreeMap::new();
    if tables.is_empty() {
        return Ok(out);
    }
    let domain = qdq_domain(model);
    let g = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    for table in tables {
        for key in quantize_table(g, table, domain.as_deref())? {
            out.insert(key, "int8 (embedding table, S8 per tensor)".to_string());
        }
    }
    Ok(out)
}

/// The tables [`quantize_embeddings`] rewrites, in initializer order.
fn embedding_tables(g: &Graph, config: &Int8Config) -> Vec<ValueId> {
    g.initializers()
        .iter()
        .copied()
        .filter(|&v| {
            let ValueDef::Initializer(t) = g.value(v).def() else { return false };
            let uses = g.value(v).uses();
            t.dtype() == DataType::F32
                && t.rank() >= 1
                && t.len() >= MIN_TABLE_ELEMENTS
                && !uses.is_empty()
                && !g.is_output(v)
                && !is_captured(g, &g.value(v).name)
                && uses.iter().all(|u| {
                    let n = g.node(u.node);
                    u.input == 0
                        && n.is_onnx("Gather")
                        && n.output(0).is_some()
                        && config.excluded(n.name.as_deref(), "Gather").is_none()
                })
        })
        .collect()
}

fn node_key(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => format!("{}#{}", n.op_type, id.index()),
    }
}

/// Stores `table` as S8 and rewrites each of its Gathers into Gather (int8) → DequantizeLinear.
fn quantize_table(g: &mut Graph, table: ValueId, domain: Option<&str>) -> Result<Vec<String>, QuantizeError> {
    let name = g.value(table).name.clone();
    let Some(t) = g.value(table).initializer().cloned() else { return Ok(Vec::new()) };
    let (q, p) = quantize_weight(&t, None).map_err(|source| QuantizeError::Weight { tensor: name.clone(), source })?;
    let qv = g.add_initializer(g.fresh_name(&format!("{name}_quantized")), Arc::new(q));
    let s = g.add_initializer(g.fresh_name(&format!("{name}_scale")), Arc::new(p.scale_tensor()));
    let z = g.add_initializer(g.fresh_name(&format!("{name}_zero_point")), Arc::new(p.zero_point_tensor()));
    let mut gathers: Vec<NodeId> = g.value(table).uses().iter().map(|u| u.node).collect();
    gathers.sort();
    gathers.dedup();
    let mut keys = Vec::new();
    for id in gathers {
        keys.push(node_key(g, id));
        let node = g.node(id);
        let (Some(indices), Some(y)) = (node.input(1), node.output(0)) else {
            return Err(QuantizeError::Model(format!("Gather `{}` has no indices or no output", node_key(g, id))));
        };
        let mut spec = NodeSpec::new("Gather")
            .inputs([qv, indices])
            .outputs([g.fresh_name(&format!("{}_quantized", g.value(y).name))]);
        if let Some(n) = &node.name {
            spec = spec.name(n.clone());
        }
        for a in &node.attributes {
            spec = spec.attr(a.clone());
        }
        let gather = g.insert_node_before(id, spec);
        let Some(rows) = g.node(gather).output(0) else { continue };
        let mut dq = NodeSpec::new("DequantizeLinear")
            .name(g.fresh_name(&format!("{}_dequantize", g.value(y).name)))
            .inputs([rows, s, z])
            .outputs([g.fresh_name("tmp")]);
        if let Some(d) = domain {
            dq = dq.domain(d);
        }
        let dq = g.insert_node_after(gather, dq);
        g.remove_node(id);
        g.bind_output(dq, 0, y);
    }
    remove_unused_constants(g, &[table]);
    Ok(keys)
}

#[cfg(test)]
#[path = "gather_tests.rs"]
mod tests;
