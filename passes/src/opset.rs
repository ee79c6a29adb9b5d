//! Raising a model's default-domain opset from 11 or 12 to 13, the first opset whose
//! QuantizeLinear/DequantizeLinear take a per-channel `axis`: TensorRT accepts only
//! standard-domain Q/DQ, so an older model must move up before it is quantized for it.
//!
//! Only what changed meaning between 11 and 13 is rewritten: `axes` of Squeeze, Unsqueeze and
//! ReduceSum and `split` of Split moved from attributes to inputs; Softmax, LogSoftmax and
//! Hardmax stopped flattening to 2-D around `axis` and their default `axis` became −1, which
//! is the same computation only when the axis is the last one. Anything else that differs is
//! refused by node name, so the model is never silently changed.

use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrLookup, Attribute, Graph, Model, NodeId, OpsetImport};

/// The opset this upgrade reaches.
pub const TARGET: i64 = 13;
/// The oldest opset it starts from.
pub const OLDEST: i64 = 11;

/// Why a model could not be raised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpsetError {
    #[error("the model imports opset {0}; Kiln raises models to opset {TARGET} from opset {OLDEST} on")]
    TooOld(i64),
    #[error("cannot raise the model to opset {TARGET}: {}", .0.join("; "))]
    Refused(Vec<String>),
}

/// Moves an ints attribute to a new int64 input at `index` (an initializer of that graph).
fn attribute_to_input(g: &mut Graph, id: NodeId, attr: &str, index: usize) -> Result<(), String> {
    let Some(values) = g.node(id).attr_ints(attr).map(<[i64]>::to_vec) else { return Ok(()) };
    let name = g.node(id).name.clone().unwrap_or_else(|| g.node(id).op_type.clone());
    let tensor = Tensor::from_slice(vec![values.len()], &values).map_err(|e| format!("{name}: {e}"))?;
    let v = g.add_initializer(g.fresh_name(&format!("{name}_{attr}")), Arc::new(tensor));
    // Optional inputs before `index` stay empty.
    g.set_input(id, index, Some(v));
    g.node_mut(id).attributes.retain(|a| a.name != attr);
    Ok(())
}

/// Rewrites the graph's nodes for opset 13; with `check_only`, only records what would be
/// refused (so a refused model is left untouched).
fn upgrade_graph(g: &mut Graph, check_only: bool, refused: &mut Vec<String>, rewritten: &mut Vec<String>) {
    for id in g.node_ids() {
        let node = g.node(id);
        if !node.domain().is_empty() {
            continue;
        }
        let label = format!("'{}' ({})", node.name.as_deref().unwrap_or(""), node.op_type);
        let result = match node.op_type.as_str() {
            "Squeeze" | "Unsqueeze" | "ReduceSum" if !check_only => attribute_to_input(g, id, "axes", 1),
            "Split" if !check_only => attribute_to_input(g, id, "split", 1),
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = node.attr_int("axis").unwrap_or(1);
                let rank = node.input(0).and_then(|x| g.tensor_type(x)).and_then(|t| t.rank());
                match rank {
                    Some(r) if axis == -1 || axis == r as i64 - 1 => {
                        if !check_only {
                            g.node_mut(id).attributes.retain(|a| a.name != "axis");
                            g.node_mut(id).attributes.push(Attribute::int("axis", -1));
                        }
                        Ok(())
                    }
                    Some(r) => Err(format!("axis {axis} of a rank-{r} input is not the last axis")),
                    None => Err("the input's rank is unknown".to_string()),
                }
            }
            _ => continue,
        };
        match result {
            Ok(()) if !check_only => rewritten.push(label),
            Ok(()) => {}
            Err(why) => refused.push(format!("{label}: {why}")),
        }
    }
}

/// Raises the default-domain opset to 13; returns the nodes it rewrote. Shape inference should
/// have run (Softmax needs its input's rank).
pub fn upgrade_to_13(model: &mut Model) -> Result<Vec<String>, OpsetError> {
    let from = model.opset("").unwrap_or(1);
    if from >= TARGET {
        return Ok(Vec::new());
    }
    if from < OLDEST {
        return Err(OpsetError::TooOld(from));
    }
    let (mut refused, mut rewritten) = (Vec::new(), Vec::new());
    if let Some(g) = model.graph.as_mut() {
        g.visit_graphs_mut(&mut |sg| upgrade_graph(sg, true, &mut refused, &mut rewritten));
    }
    if !refused.is_empty() {
        return Err(OpsetError::Refused(refused));
    }
    if let Some(g) = model.graph.as_mut() {
        g.visit_graphs_mut(&mut |sg| upgrade_graph(sg, false, &mut refused, &mut rewritten));
    }
    if !refused.is_empty() {
        return Err(OpsetError::Refused(refused));
    }
    match model.opset_import.iter_mut().find(|o| o.domain.as_deref().unwrap_or("").is_empty()) {
        Some(o) => o.version = Some(TARGET),
        None => model.opset_import.push(OpsetImport { domain: None, version: Some(TARGET) }),
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{abs_tol, compare_outputs, count_op, output, require_ort, run, seeded_inputs, tensor_ty};
    use kiln_compiler::DataType;
    use kiln_compiler::ir::NodeSpec;

    /// x[1,3,4] → Unsqueeze(axes=[0]) → Squeeze(axes=[0]) → Split(axis 2, split=[1,3]) →
    /// ReduceSum(axes=[1], keepdims) on the first part, Softmax(axis) on the second.
    fn model(softmax_axis: i64) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[1, 3, 4])));
        let node = |op: &str, name: &str| NodeSpec::new(op).name(name);
        let n = g.add_node(node("Unsqueeze", "u").inputs([x]).outputs(["u"]).attr(Attribute::ints("axes", vec![0])));
        let u = g.node(n).output(0).unwrap();
        let n = g.add_node(node("Squeeze", "s").inputs([u]).outputs(["s"]).attr(Attribute::ints("axes", vec![0])));
        let s = g.node(n).output(0).unwrap();
        let n = g.add_node(
            node("Split", "sp")
                .inputs([s])
                .outputs(["a", "b"])
                .attr(Attribute::int("axis", 2))
                .attr(Attribute::ints("split", vec![1, 3])),
        );
        let (a, b) = (g.node(n).output(0).unwrap(), g.node(n).output(1).unwrap());
        let n = g.add_node(
            node("ReduceSum", "r")
                .inputs([a])
                .outputs(["r"])
                .attr(Attribute::ints("axes", vec![1]))
                .attr(Attribute::int("keepdims", 1)),
        );
        let r = g.node(n).output(0).unwrap();
        let n =
            g.add_node(node("Softmax", "sm").inputs([b]).outputs(["sm"]).attr(Attribute::int("axis", softmax_axis)));
        let sm = g.node(n).output(0).unwrap();
        output(&mut g, r, tensor_ty(DataType::F32, &[1, 1, 1]));
        output(&mut g, sm, tensor_ty(DataType::F32, &[1, 3, 3]));
        let mut m = crate::testing::model(g, 11);
        kiln_compiler::shape::infer_model(&mut m);
        m
    }

    #[test]
    fn opset_11_moves_to_13_with_the_same_outputs() {
        require_ort().unwrap();
        let before = model(2);
        let inputs = seeded_inputs(&before, 3, 1).unwrap();
        let want = run(&before, &inputs).unwrap();
        let mut after = before.clone();
        let rewritten = upgrade_to_13(&mut after).unwrap();
        assert_eq!(rewritten.len(), 5, "{rewritten:?}");
        assert_eq!(after.opset(""), Some(13));
        let g = after.main_graph().unwrap();
        assert!(g.nodes().all(|(_, n)| n.attr_ints("axes").is_none() && n.attr_ints("split").is_none()));
        assert_eq!(count_op(&after, "Squeeze"), 1);
        let got = run(&after, &inputs).unwrap();
        compare_outputs(&got, &want, abs_tol(1e-6)).unwrap();
        // The old model at opset 13 without the rewrite is not the same model: ORT refuses it.
        let mut stale = before.clone();
        stale.opset_import[0].version = Some(13);
        assert!(run(&stale, &inputs).is_err());
    }

    #[test]
    fn a_softmax_over_a_middle_axis_is_refused_by_name_and_nothing_changes() {
        // Opset 11 flattens [1,3] x [3] around axis 1; opset 13 would normalize over axis 1 only.
        let mut m = model(1);
        let before = kiln_compiler::onnx::encode_model(&m);
        let err = upgrade_to_13(&mut m).unwrap_err();
        assert!(err.to_string().contains("'sm' (Softmax)"), "{err}");
        assert_eq!(kiln_compiler::onnx::encode_model(&m), before, "a refused upgrade leaves the model as it was");
    }
}
