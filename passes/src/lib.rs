//! kiln-passes: target-independent rewrites of the IR (see ../shared/DESIGN.md): graph
//! simplification (constant lifting and folding, dead code, common subexpressions, no-ops),
//! operator fusion rules (portable and ONNX Runtime), and helpers to check rewrites against
//! ONNX Runtime.

pub mod fuse;
pub mod opset;
pub mod prune;
pub mod simplify;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use fuse::FusionPass;
pub use simplify::{
    EliminateCommonSubexpressions, EliminateDeadCode, EliminateNoOps, FoldConstants, InlineConstantIf,
    LegalizeScalarInputs, LiftConstants, simplify, simplify_manager, simplify_pipeline,
};
