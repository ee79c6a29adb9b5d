//! Graph simplification (the O1 pipeline): lift constants, fold them, inline Ifs with a constant
//! condition, remove no-ops, make
//! scalar inputs explicit, merge common subexpressions, drop dead code. Every pass visits If/Loop/Scan bodies too and says
//! in its report what it did and what it left alone.

mod common;
mod cse;
mod dce;
mod fold;
mod inline_if;
mod legalize;
mod lift;
mod noop;

use kiln_compiler::ir::Model;
use kiln_compiler::pass::{Pass, PassError, PassManager, PipelineReport};

pub use cse::{DEFAULT_CSE_INITIALIZER_BYTES, EliminateCommonSubexpressions};
pub use dce::EliminateDeadCode;
pub use fold::{DEFAULT_FOLD_LIMIT, FoldConstants};
pub use inline_if::InlineConstantIf;
pub use legalize::LegalizeScalarInputs;
pub use lift::LiftConstants;
pub use noop::EliminateNoOps;

/// The O1 passes in order. Lifting first makes `Constant` outputs plain constants for every
/// other pass; inlining Ifs whose condition folding settled exposes their branches to the
/// rest; folding before no-op elimination gives it constant shapes and axes; no-op
/// elimination before CSE exposes more identical nodes; scalar legalization keeps what
/// folding made static loadable; DCE last sweeps what they left.
pub fn simplify_pipeline() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(LiftConstants),
        Box::new(FoldConstants::new()),
        Box::new(InlineConstantIf),
        Box::new(EliminateNoOps),
        Box::new(LegalizeScalarInputs),
        Box::new(EliminateCommonSubexpressions::new()),
        Box::new(EliminateDeadCode),
    ]
}

/// A pass manager holding [`simplify_pipeline`], run to a fixed point.
pub fn simplify_manager() -> PassManager {
    simplify_pipeline().into_iter().fold(PassManager::new(), PassManager::add_boxed)
}

/// Runs the O1 pipeline on a model.
pub fn simplify(model: &mut Model) -> Result<PipelineReport, PassError> {
    simplify_manager().run(model)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_compiler::DataType;
    use kiln_compiler::ir::{AttrValue, Attribute, Graph, NodeSpec};
    use kiln_compiler::tensor::Tensor;

    use super::*;
    use crate::testing::*;

    #[test]
    fn the_pipeline_reaches_a_fixed_point() {
        require_ort().unwrap();
        assert_eq!(
            simplify_manager().names(),
            [
                "lift-constants",
                "fold-constants",
                "inline-constant-if",
                "eliminate-no-ops",
                "legalize-scalar-inputs",
                "eliminate-common-subexpressions",
                "eliminate-dead-code"
            ]
        );
        // y = Relu(Reshape(Identity(x), Shape(x))) + Relu(x) * (Constant a + Constant a)
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[2, 3])));
        let a = || {
            let t = Tensor::from_slice(vec![3], &[1.0f32, 2.0, 3.0]).unwrap();
            NodeSpec::new("Constant").attr(Attribute::new("value", AttrValue::Tensor(Arc::new(t))))
        };
        let a1 = op(&mut g, a().outputs(["a1"]));
        let a2 = op(&mut g, a().outputs(["a2"]));
        let i = op(&mut g, NodeSpec::new("Identity").inputs([x]).outputs(["i"]));
        g.value_mut(i).ty = Some(tensor_ty(DataType::F32, &[2, 3]));
        g.push_value_info(i);
        let s = op(&mut g, NodeSpec::new("Shape").inputs([x]).outputs(["s"]));
        let r = op(&mut g, NodeSpec::new("Reshape").inputs([i, s]).outputs(["r"]));
        let r1 = op(&mut g, NodeSpec::new("Relu").inputs([r]).outputs(["r1"]));
        let r2 = op(&mut g, NodeSpec::new("Relu").inputs([x]).outputs(["r2"]));
        let sum = op(&mut g, NodeSpec::new("Add").inputs([a1, a2]).outputs(["sum"]));
        let m = op(&mut g, NodeSpec::new("Mul").inputs([r2, sum]).outputs(["m"]));
        let y = op(&mut g, NodeSpec::new("Add").inputs([r1, m]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2, 3]));
        let before = model(g, 17);
        let mut after = before.clone();
        let report = simplify(&mut after).unwrap();
        // Relu(x) twice becomes one, the constants fold, Identity/Shape/Reshape vanish.
        let g = after.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.nodes().map(|(_, n)| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Relu", "Mul", "Add"], "{report:#?}");
        assert_eq!(g.initializers().len(), 1);
        assert!(g.value_info().is_empty());
        assert!(report.iterations >= 2);
        assert!(!report.passes.last().unwrap().changed);
        check_same_outputs(&before, &after, 5, Tolerance::EXACT).unwrap();
    }
}
