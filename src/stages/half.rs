//! FP16 / BF16 conversion. The work is in `kiln_quantize`; this maps options to it.

use kiln_compiler::ir::Model;

use super::{StageContext, StageError, StageReport};

/// Which 16-bit float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    F16,
    Bf16,
}

/// FP16/BF16 options (`--precision fp16|bf16`).
#[derive(Debug, Clone)]
pub struct HalfOptions {
    pub kind: HalfKind,
    /// Keep the model's inputs and outputs in FP32, with casts at the boundary only.
    pub keep_io_types: bool,
    /// Node names or op types left in FP32.
    pub exclude: Vec<String>,
}

impl HalfOptions {
    pub fn new(kind: HalfKind) -> HalfOptions {
        HalfOptions { kind, keep_io_types: true, exclude: Vec::new() }
    }
}

pub fn run(_model: &mut Model, _options: &HalfOptions, _cx: &StageContext) -> Result<StageReport, StageError> {
    Err(StageError::bad_input("half", "FP16/BF16 conversion is being built on its branch"))
}
