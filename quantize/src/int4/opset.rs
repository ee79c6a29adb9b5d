//! Raising a model's default-domain opset to 21, which blocked `DequantizeLinear` and the
//! int4/uint4 element types need. Only what changed meaning on the way is rewritten; an op
//! whose meaning changed in a way Kiln does not convert is refused by name.

use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrLookup, Graph, Model, OpsetImport};

use super::Int4Error;

/// The opset blocked `DequantizeLinear` needs.
pub const BLOCKED_DQ_OPSET: i64 = 21;
/// The IR version that brought int4/uint4.
const INT4_IR_VERSION: i64 = 10;
/// Below this, too much moved from attributes to inputs (Squeeze, Split, ReduceSum…).
const OLDEST: i64 = 13;

/// Reductions whose `axes` became an input in opset 18 (ReduceSum moved in 13).
const REDUCE_AXES_18: &[&str] = &[
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
];

/// Ops whose meaning changed between 18 and 21 beyond new types or attributes with
/// compatible defaults: GroupNormalization (scale and bias per channel in 21), DFT (axis became
/// an input in 20), GridSample (mode names changed in 20).
const CHANGED: &[(&str, i64)] = &[("GroupNormalization", 21), ("DFT", 20), ("GridSample", 20)];

/// Raises the default-domain opset to 21 (and the IR version to 10); returns what it rewrote.
pub fn upgrade_to_21(model: &mut Model) -> Result<Vec<String>, Int4Error> {
    let from = model.opset("").unwrap_or(1);
    if from >= BLOCKED_DQ_OPSET {
        return Ok(Vec::new());
    }
    if from < OLDEST {
        return Err(Int4Error::Opset(format!(
            "the model imports opset {from}; blocked INT4 DequantizeLinear needs opset {BLOCKED_DQ_OPSET}, and Kiln \
             upgrades models from opset {OLDEST} on"
        )));
    }
    let mut refused = Vec::new();
    let mut notes = Vec::new();
    if let Some(g) = model.graph.as_mut() {
        g.visit_graphs_mut(&mut |sg| upgrade_graph(sg, from, &mut refused, &mut notes));
    }
    if !refused.is_empty() {
        return Err(Int4Error::Opset(format!(
            "cannot raise opset {from} to {BLOCKED_DQ_OPSET} for blocked INT4 DequantizeLinear: {}",
            refused.join("; ")
        )));
    }
    match model.opset_import.iter_mut().find(|o| o.domain().is_empty()) {
        Some(o) => o.version = Some(BLOCKED_DQ_OPSET),
        None => model.opset_import.push(OpsetImport { domain: Some(String::new()), version: Some(BLOCKED_DQ_OPSET) }),
    }
    if model.ir_version.is_none_or(|v| v < INT4_IR_VERSION) {
        model.ir_version = Some(INT4_IR_VERSION);
    }
    notes.insert(0, format!("default opset raised from {from} to {BLOCKED_DQ_OPSET}"));
    Ok(notes)
}

fn upgrade_graph(g: &mut Graph, from: i64, refused: &mut Vec<String>, notes: &mut Vec<String>) {
    for id in g.node_ids() {
        let Some(node) = g.get_node(id) else { continue };
        if !node.domain().is_empty() {
            continue;
        }
        let label = node.label(id);
        if let Some((_, since)) = CHANGED.iter().find(|(op, _)| *op == node.op_type)
            && from < *since
        {
            refused.push(format!("{label} changed meaning in opset {since}"));
            continue;
        }
        if from < 18 && REDUCE_AXES_18.contains(&node.op_type.as_str()) {
            let Some(axes) = node.attr_ints("axes").map(<[i64]>::to_vec) else { continue };
            if node.inputs().len() > 1 {
                refused.push(format!("{label} has both an axes attribute and a second input"));
                continue;
            }
            let name = g.fresh_name(&format!("{}_axes", node.name.as_deref().unwrap_or(&node.op_type)));
            let t = match Tensor::from_slice(vec![axes.len()], &axes) {
                Ok(t) => t,
                Err(e) => {
                    refused.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let v = g.add_initializer(name, Arc::new(t));
            g.node_mut(id).attributes.retain(|a| a.name != "axes");
            g.set_input(id, 1, Some(v));
            notes.push(format!("{label}: axes attribute moved to an input"));
        }
    }
}
