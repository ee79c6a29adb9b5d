//! INT8 quantization: static QDQ from calibrated ranges, or dynamic (weights only, activations
//! quantized at run time). The work is in `kiln_quantize`; this maps options to it.

use kiln_calibration::Method;
use kiln_compiler::ir::Model;

use super::{StageContext, StageError, StageReport};

/// INT8 options (`--precision int8 [--dynamic] --calibration METHOD`).
#[derive(Debug, Clone)]
pub struct Int8Options {
    /// Dynamic quantization: no calibration, activations quantized at run time.
    pub dynamic: bool,
    /// How activation ranges are computed from calibration data.
    pub method: Method,
    /// Node names or op types left in float.
    pub exclude: Vec<String>,
}

impl Default for Int8Options {
    fn default() -> Int8Options {
        Int8Options { dynamic: false, method: Method::MinMax, exclude: Vec::new() }
    }
}

pub fn run(_model: &mut Model, _options: &Int8Options, _cx: &StageContext) -> Result<StageReport, StageError> {
    Err(StageError::bad_input("int8", "INT8 quantization is being built on its branch"))
}
