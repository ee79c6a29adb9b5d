//! `eliminate-dead-code`: nodes whose outputs nobody reads, and initializers nobody reads.
//!
//! "Read" means: used by a node, listed as a graph output, or named by a subgraph of a node of
//! the same graph (captures are by name, not in use lists). Graph inputs stay, initializers
//! that are also graph inputs included. Nodes of unknown domains may have side effects and
//! stay.

use std::collections::HashSet;

use kiln_compiler::ir::{Graph, Model, ValueDef, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

use super::common::{Scope, captured, is_used, label, may_have_side_effects, prune_value_info, visit_with_scope};

const RULE: &str = "eliminate-dead-code";

/// Removes unused nodes and initializers in the main graph and every subgraph.
#[derive(Debug, Clone, Copy, Default)]
pub struct EliminateDeadCode;

impl Pass for EliminateDeadCode {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, _, path| changed |= dce(g, path, cx));
        Ok(Changed::from_bool(changed))
    }
}

fn dce(g: &mut Graph, path: &str, cx: &mut PassContext) -> bool {
    let mut changed = false;
    let mut reported: HashSet<String> = HashSet::new();
    loop {
        // Removing a node with subgraphs can free what they captured: recompute each sweep.
        let captured = captured(g);
        let mut removed = 0;
        for id in g.node_ids().into_iter().rev() {
            let Some(n) = g.get_node(id) else { continue };
            let dead = n.outputs().iter().flatten().all(|&v| !is_used(g, v, &captured));
            if !dead {
                continue;
            }
            if may_have_side_effects(n) {
                let l = label(path, g, id);
                if reported.insert(l.clone()) {
                    cx.missed(RULE, l, format!("unused, but domain '{}' may have side effects", n.domain()));
                }
                continue;
            }
            cx.applied(RULE, label(path, g, id), "outputs unused");
            g.remove_node(id);
            removed += 1;
        }
        let dead: Vec<ValueId> = g
            .initializers()
            .iter()
            .copied()
            .filter(|&v| {
                matches!(g.value(v).def(), ValueDef::Initializer(_))
                    && !g.inputs().contains(&v)
                    && !is_used(g, v, &captured)
            })
            .collect();
        for &v in &dead {
            cx.applied(RULE, format!("{path}: initializer '{}'", g.value(v).name), "unused");
        }
        removed += g.remove_initializers(&dead);
        if removed == 0 {
            break;
        }
        changed = true;
    }
    if changed {
        prune_value_info(g);
    }
    changed
}

#[cfg(test)]
mod tests {
    use kiln_compiler::DataType;
    use kiln_compiler::ir::{AttrValue, Attribute, NodeSpec};
    use kiln_compiler::pass::Changed;
    use kiln_compiler::tensor::Tensor;

    use super::*;
    use crate::testing::*;

    /// `y = Relu(x)` plus an unread chain `Exp(Neg(x) * w)` and an unread initializer.
    fn with_dead_chain() -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[2])));
        let w = constant(&mut g, "w", Tensor::from_slice(vec![2], &[1.0f32, 2.0]).unwrap());
        constant(&mut g, "unused", Tensor::scalar(3.0f32));
        let n = op(&mut g, NodeSpec::new("Neg").inputs([x]).outputs(["n"]));
        let m = op(&mut g, NodeSpec::new("Mul").inputs([n, w]).outputs(["m"]));
        op(&mut g, NodeSpec::new("Exp").inputs([m]).outputs(["e"]));
        let y = op(&mut g, NodeSpec::new("Relu").inputs([x]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2]));
        model(g, 17)
    }

    #[test]
    fn unread_nodes_and_initializers_go() {
        require_ort().unwrap();
        let before = with_dead_chain();
        let mut after = before.clone();
        let (changed, report) = apply(&EliminateDeadCode, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 5, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.node_count(), 1);
        assert!(g.initializers().is_empty());
        assert_eq!(g.inputs().len(), 1);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
        assert_eq!(apply(&EliminateDeadCode, &mut after).unwrap().0, Changed::No);
    }

    #[test]
    fn outputs_inputs_side_effects_and_captures_stay() {
        let mut m = crate::simplify::lift::tests::if_with_constants();
        let g = m.graph.as_mut().unwrap();
        // An unread node of an unknown domain, an unread graph input, an initializer that is
        // also an input, and a value only an If branch reads (by name).
        let x = g.find_value("x").unwrap();
        op(g, NodeSpec::new("Log").domain("com.example").inputs([x]).outputs(["logged"]));
        g.add_input("spare", Some(tensor_ty(DataType::F32, &[1])));
        let d = constant(g, "default", Tensor::scalar(1.0f32));
        g.push_input(d);
        let nodes_before = node_count(&m);
        let (changed, report) = apply(&EliminateDeadCode, &mut m).unwrap();
        assert_eq!(changed, Changed::No, "{report:?}");
        assert_eq!(node_count(&m), nodes_before);
        assert_eq!(entries(&report, "missed", RULE).len(), 1);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.inputs().len(), 4);
        assert_eq!(g.initializers().len(), 1);
    }

    #[test]
    fn dead_code_inside_subgraphs_goes() {
        let mut m = crate::simplify::lift::tests::if_with_constants();
        let g = m.graph.as_mut().unwrap();
        let id = g.nodes().find(|(_, n)| n.is_onnx("If")).unwrap().0;
        let then = g.node_mut(id).subgraphs_mut().next().unwrap();
        let x = then.find_value("x").unwrap();
        op(
            then,
            NodeSpec::new("Sin").inputs([x]).outputs(["unread"]).attr(Attribute::new("unused", AttrValue::Int(0))),
        );
        let (changed, report) = apply(&EliminateDeadCode, &mut m).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert!(report[0].node.contains("then_branch"), "{report:?}");
        assert_eq!(count_op(&m, "Sin"), 0);
    }
}
