//! Graph simplification (the O1 pipeline): lift constants, fold them, remove no-ops, merge
//! common subexpressions, drop dead code. Every pass visits If/Loop/Scan bodies too and says
//! in its report what it did and what it left alone.

mod common;
mod cse;
mod dce;
mod fold;
mod lift;
mod noop;

use kiln_compiler::ir::Model;
use kiln_compiler::pass::{Pass, PassError, PassManager, PipelineReport};

pub use cse::{DEFAULT_CSE_INITIALIZER_BYTES, EliminateCommonSubexpressions};
pub use dce::EliminateDeadCode;
pub use fold::{DEFAULT_FOLD_LIMIT, FoldConstants};
pub use lift::LiftConstants;
pub use noop::EliminateNoOps;

/// The O1 passes in order. Lifting first makes `Constant` outputs plain constants for every
/// other pass; folding before no-op elimination gives it constant shapes and axes; no-op
/// elimination before CSE exposes more identical nodes; DCE last sweeps what they left.
pub fn simplify_pipeline() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(LiftConstants),
        Box::new(FoldConstants::new()),
        Box::new(EliminateNoOps),
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
