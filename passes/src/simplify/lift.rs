//! `lift-constants`: `Constant` nodes become initializers of the graph they live in.
//!
//! The value keeps its name, id and uses, so graph outputs and names captured by subgraphs are
//! untouched. Subgraph constants become initializers of that subgraph (ONNX Runtime accepts
//! initializers in If/Loop/Scan bodies; `subgraph_constants_lift_and_still_run` checks it).

use kiln_compiler::ir::{Graph, Model};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

use super::common::{Scope, constant_node_value, label, skip_without_initializers, visit_with_scope};

const RULE: &str = "lift-constants";

/// Turns `Constant` nodes into initializers, in the main graph and every subgraph.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiftConstants;

impl Pass for LiftConstants {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        if skip_without_initializers(model, RULE, cx) {
            return Ok(Changed::No);
        }
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, _, path| changed |= lift_in(g, path, cx));
        Ok(Changed::from_bool(changed))
    }
}

fn lift_in(g: &mut Graph, path: &str, cx: &mut PassContext) -> bool {
    let mut changed = false;
    for id in g.node_ids() {
        let Some(n) = g.get_node(id) else { continue };
        if !n.is_onnx("Constant") {
            continue;
        }
        let Some(v) = n.output(0) else { continue };
        let Some(t) = constant_node_value(n) else {
            cx.skipped(RULE, label(path, g, id), "sparse or unrecognized value attribute");
            continue;
        };
        let what = label(path, g, id);
        let detail = format!("'{}' {}", g.value(v).name, super::common::describe(&t));
        g.remove_node(id);
        g.set_initializer(v, t);
        cx.applied(RULE, what, detail);
        changed = true;
    }
    changed
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use kiln_compiler::DataType;
    use kiln_compiler::ir::{AttrValue, Attribute, Graph, NodeSpec};
    use kiln_compiler::pass::Changed;
    use kiln_compiler::tensor::Tensor;

    use super::*;
    use crate::testing::*;

    fn constant_node(g: &mut Graph, name: &str, t: Tensor) -> kiln_compiler::ir::ValueId {
        op(g, NodeSpec::new("Constant").outputs([name]).attr(Attribute::new("value", AttrValue::Tensor(Arc::new(t)))))
    }

    /// `y = x + Constant`, and the constant itself as a second output.
    fn add_constant() -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let c = constant_node(&mut g, "c", Tensor::from_slice(vec![3], &[1.0f32, 2.0, 3.0]).unwrap());
        let k = op(
            &mut g,
            NodeSpec::new("Constant").outputs(["k"]).attr(Attribute::new("value_ints", AttrValue::Ints(vec![4, 5]))),
        );
        let y = op(&mut g, NodeSpec::new("Add").inputs([x, c]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        output(&mut g, k, tensor_ty(DataType::I64, &[2]));
        model(g, 17)
    }

    #[test]
    fn constants_become_initializers_with_their_names() {
        require_ort().unwrap();
        let before = add_constant();
        let mut after = before.clone();
        let (changed, report) = apply(&LiftConstants, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 2);
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.node_count(), 1);
        let names: Vec<&str> = g.initializers().iter().map(|&v| g.value(v).name.as_str()).collect();
        assert_eq!(names, ["c", "k"]);
        // An initializer may be a graph output.
        assert_eq!(g.value(g.outputs()[1]).name, "k");
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
        assert_eq!(apply(&LiftConstants, &mut after).unwrap().0, Changed::No);
    }

    #[test]
    fn sparse_constants_and_ir3_models_stay() {
        let mut g = Graph::new();
        let c = op(
            &mut g,
            NodeSpec::new("Constant")
                .outputs(["c"])
                .attr(Attribute::new("sparse_value", AttrValue::SparseTensor(Default::default()))),
        );
        output(&mut g, c, tensor_ty(DataType::F32, &[3]));
        let mut m = model(g, 17);
        let (changed, report) = apply(&LiftConstants, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert_eq!(entries(&report, "skipped", RULE).len(), 1);

        let mut m = add_constant();
        m.ir_version = Some(3);
        let (changed, report) = apply(&LiftConstants, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert!(report[0].detail.contains("IR version"), "{report:?}");
        assert_eq!(m.graph.as_ref().unwrap().node_count(), 3);
    }

    /// `If(cond)` whose branches add or multiply a `Constant` to the outer `x`.
    pub(crate) fn if_with_constants() -> Model {
        let branch = |op_type: &str, vals: [f32; 3]| {
            let mut b = Graph::new();
            b.name = Some(format!("{op_type}_branch"));
            let x = b.add_outer("x");
            let c = constant_node(&mut b, &format!("{op_type}_c"), Tensor::from_slice(vec![3], &vals).unwrap());
            let y = op(&mut b, NodeSpec::new(op_type).inputs([x, c]).outputs([format!("{op_type}_y")]));
            output(&mut b, y, tensor_ty(DataType::F32, &[3]));
            b
        };
        let mut g = Graph::new();
        let cond = g.add_input("cond", Some(tensor_ty(DataType::Bool, &[])));
        let _x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let y = op(
            &mut g,
            NodeSpec::new("If")
                .inputs([cond])
                .outputs(["y"])
                .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(branch("Add", [1.0, 2.0, 3.0])))))
                .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(branch("Mul", [4.0, 5.0, 6.0]))))),
        );
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        model(g, 17)
    }

    #[test]
    fn subgraph_constants_lift_and_still_run() {
        require_ort().unwrap();
        let before = if_with_constants();
        let mut after = before.clone();
        let (changed, report) = apply(&LiftConstants, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 2);
        assert!(report[0].node.contains("then_branch"), "{report:?}");
        assert_eq!(count_op(&after, "Constant"), 0);
        let g = after.graph.as_ref().unwrap();
        for sg in g.nodes().flat_map(|(_, n)| n.subgraphs()) {
            assert_eq!(sg.initializers().len(), 1);
        }
        for seed in 0..4 {
            check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
        }
    }
}
