//! INT4 weight-only quantization of MatMul/Gemm weights. The work is in `kiln_quantize`; this
//! maps options to it.

use kiln_compiler::ir::Model;

use super::{StageContext, StageError, StageReport};

/// How INT4 weights are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int4Method {
    /// Round to nearest.
    Rtn,
    /// GPTQ on calibration activations.
    Gptq,
    /// AWQ scale search on calibration activations.
    Awq,
    /// Learned rounding (AdaRound style), behind the `learned-rounding` feature.
    Learned,
}

/// INT4 options (`--precision int4 [--block 32] [--int4-method …]`).
#[derive(Debug, Clone)]
pub struct Int4Options {
    /// Weights per block along K (16 to 256, a power of two).
    pub block: usize,
    pub method: Int4Method,
    /// Symmetric blocks (no zero point).
    pub symmetric: bool,
    /// Node names or op types left in float.
    pub exclude: Vec<String>,
}

impl Default for Int4Options {
    fn default() -> Int4Options {
        Int4Options { block: 32, method: Int4Method::Rtn, symmetric: true, exclude: Vec::new() }
    }
}

pub fn run(_model: &mut Model, _options: &Int4Options, _cx: &StageContext) -> Result<StageReport, StageError> {
    Err(StageError::bad_input("int4", "INT4 quantization is being built on its branch"))
}
