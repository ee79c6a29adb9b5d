//! Embedding tables. A Gather whose data is a large constant f32 table (a word embedding) reads
//! a few rows per inference out of a table that dominates the model's size, so the table is
//! stored S8 with one symmetric scale per row: the Gather moves int8 rows, a second Gather picks
//! their scales, and `Cast` + `Mul` turn the rows back to float:
//! `Mul(Cast(Gather(table_q, ids)), Gather(scales[rows, 1], ids))`.
//!
//! Per row because one scale for the whole table lets a few outlier rows coarsen every other
//! row (MiniLM's word embeddings: token-embedding SQNR 19.7 dB with the table float, 16.9 dB
//! per tensor). A DequantizeLinear cannot follow the Gather with per-row parameters, and one
//! before it would dequantize the whole table on every run (ORT does not fold a DQ of an
//! initializer). This is a graph rewrite of its own, run after the QDQ plan (static) or with
//! the weight rewrites (dynamic); the plan keeps such a Gather in float.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, Attribute, Graph, Model, NodeId, NodeSpec, ValueDef, ValueId};
use kiln_compiler::{DataType, Tensor};

use crate::plan::Int8Config;
use crate::qdq::{QuantizeError, is_captured, remove_unused_constants};
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
    let g = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    for table in tables {
        for key in quantize_table(g, table)? {
            out.insert(key, "int8 (embedding table, S8 per row)".to_string());
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
                && t.rank() == 2
                && t.len() >= MIN_TABLE_ELEMENTS
                && !uses.is_empty()
                && !g.is_output(v)
                && !is_captured(g, &g.value(v).name)
                && uses.iter().all(|u| {
                    let n = g.node(u.node);
                    u.input == 0
                        && n.is_onnx("Gather")
                        && n.attr_int("axis").unwrap_or(0) == 0
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

/// Stores `table` as S8 with one scale per row and rewrites each of its Gathers into
/// `Mul(Cast(Gather(table_q, ids)), Gather(scales, ids))`.
fn quantize_table(g: &mut Graph, table: ValueId) -> Result<Vec<String>, QuantizeError> {
    let name = g.value(table).name.clone();
    let Some(t) = g.value(table).initializer().cloned() else { return Ok(Vec::new()) };
    let weight_error = |source| QuantizeError::Weight { tensor: name.clone(), source };
    let (q, p) = quantize_weight(&t, Some(0)).map_err(weight_error)?;
    // Scales as [rows, 1]: gathered with the same ids they broadcast over the row's values.
    let scales = Tensor::from_slice(vec![p.scale.len(), 1], &p.scale).map_err(|e| weight_error(e.into()))?;
    let qv = g.add_initializer(g.fresh_name(&format!("{name}_quantized")), Arc::new(q));
    let s = g.add_initializer(g.fresh_name(&format!("{name}_row_scale")), Arc::new(scales));
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
        let base = g.value(y).name.clone();
        let mut spec =
            NodeSpec::new("Gather").inputs([qv, indices]).outputs([g.fresh_name(&format!("{base}_quantized"))]);
        if let Some(n) = &node.name {
            spec = spec.name(n.clone());
        }
        let gather = g.insert_node_before(id, spec);
        let Some(rows) = g.node(gather).output(0) else { continue };
        let cast = NodeSpec::new("Cast")
            .name(g.fresh_name(&format!("{base}_cast")))
            .inputs([rows])
            .outputs([g.fresh_name(&format!("{base}_rows"))])
            .attr(Attribute::int("to", i64::from(DataType::F32.onnx_code())));
        let cast = g.insert_node_after(gather, cast);
        let scale = NodeSpec::new("Gather")
            .name(g.fresh_name(&format!("{base}_scale_gather")))
            .inputs([s, indices])
            .outputs([g.fresh_name(&format!("{base}_scale"))]);
        let scale = g.insert_node_after(cast, scale);
        let (Some(rows_f), Some(row_scale)) = (g.node(cast).output(0), g.node(scale).output(0)) else { continue };
        let mul = NodeSpec::new("Mul")
            .name(g.fresh_name(&format!("{base}_dequantize")))
            .inputs([rows_f, row_scale])
            .outputs([g.fresh_name("tmp")]);
        let mul = g.insert_node_after(scale, mul);
        g.remove_node(id);
        g.bind_output(mul, 0, y);
    }
    remove_unused_constants(g, &[table]);
    Ok(keys)
}

#[cfg(test)]
#[path = "gather_tests.rs"]
mod tests;
