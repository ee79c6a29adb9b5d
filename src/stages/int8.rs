//! INT8 quantization: static QDQ from calibrated ranges, or dynamic (weights only, activations
//! quantized at run time). The work is in `kiln_quantize`; this maps options to it.

use std::sync::Arc;

use kiln_calibration::data::{SYNTHETIC_WARNING, Synthetic, SyntheticSpec, model_inputs};
use kiln_calibration::{Method, SharedSource};
use kiln_compiler::ir::Model;
use kiln_compiler::runtime::{ErrorKind, OrtExecutor};
use kiln_quantize::dynamic::{DynamicConfig, quantize_dynamic};
use kiln_quantize::int8::{Int8Error, calibrate, quantize_with_ranges};
use kiln_quantize::plan::Int8Config;

use super::{StageContext, StageError, StageReport};
use crate::pipeline::TargetKind;

const STAGE: &str = "int8";

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

/// The static scheme the target fuses.
pub fn config_for(target: TargetKind, exclude: &[String]) -> Int8Config {
    let mut config = match target {
        TargetKind::Cpu | TargetKind::Cuda => Int8Config::ort_cpu(),
        TargetKind::TensorRt => Int8Config::tensorrt(),
    };
    config.exclude = exclude.to_vec();
    config
}

pub fn run(model: &mut Model, options: &Int8Options, cx: &StageContext) -> Result<StageReport, StageError> {
    let mut report = StageReport::new(STAGE);
    if options.dynamic {
        let config = DynamicConfig { exclude: options.exclude.clone() };
        let outcome = quantize_dynamic(model, &config).map_err(|e| StageError::bad_input(STAGE, e))?;
        report.fact("mode", "dynamic");
        report
            .fact("form", "com.microsoft.DynamicQuantizeMatMul / DynamicQuantizeLSTM (weights S8 per output channel)");
        report.fact("nodes_quantized", &outcome.quantized_ops);
        report.fact("nodes_quantized_total", outcome.quantized_ops.values().sum::<usize>());
        let excluded: std::collections::BTreeMap<&String, &String> =
            outcome.decisions.iter().filter(|(_, d)| d.contains("excluded")).collect();
        report.fact("excluded_nodes", excluded);
        if outcome.quantized_ops.is_empty() {
            report
                .warnings
                .push("dynamic INT8 found no MatMul, Gemm or LSTM with a constant weight to quantize".into());
        }
        report.decisions = outcome.decisions;
        return Ok(report);
    }
    let source: SharedSource = match &cx.calibration {
        Some(s) => s.clone(),
        None => {
            report.warnings.push(SYNTHETIC_WARNING.to_string());
            let inputs = model_inputs(model).map_err(|e| StageError::bad_input(STAGE, e))?;
            let spec = SyntheticSpec::default();
            Arc::new(Synthetic::new(&inputs, &spec).map_err(|e| StageError::bad_input(STAGE, e))?)
        }
    };
    let fail = |e: Int8Error| match e.kind() {
        ErrorKind::BadInput => StageError::bad_input(STAGE, e),
        _ => StageError::runtime(STAGE, e),
    };
    // Calibrated once per pipeline run: sensitivity analysis runs this stage once per node.
    let ranges = cx.memo.ranges(&format!("int8:{}", options.method), || {
        let mut m = model.clone();
        calibrate(&OrtExecutor::new(), &mut m, cx.base_dir.as_deref(), source.as_ref(), options.method, cx.threads)
    });
    let ranges = ranges.map_err(fail)?;
    let outcome = quantize_with_ranges(model, &ranges, &config_for(cx.target, &options.exclude)).map_err(fail)?;
    report.fact("mode", "static");
    report.fact("calibration_method", options.method.to_string());
    report.fact("calibration_samples", ranges.samples);
    report.fact("calibration_data", source.describe());
    report.fact("nodes_quantized", &outcome.quantized_ops);
    report.fact("nodes_quantized_total", outcome.quantized_ops.values().sum::<usize>());
    report.fact("quantize_nodes", outcome.qdq.quantize_nodes);
    report.fact("dequantize_nodes", outcome.qdq.dequantize_nodes);
    report.fact("weights_quantized", outcome.qdq.weights);
    report.fact("biases_quantized", outcome.qdq.biases);
    report.fact("activations_absorbed", outcome.qdq.absorbed);
    let excluded: std::collections::BTreeMap<&String, &String> =
        outcome.decisions.iter().filter(|(_, d)| d.contains("excluded")).collect();
    report.fact("excluded_nodes", excluded);
    report.decisions = outcome.decisions;
    Ok(report)
}
