//! INT8 quantization: static QDQ from calibrated ranges, or dynamic (weights only, activations
//! quantized at run time). The work is in `kiln_quantize`; this maps options to it.
//!
//! Static INT8 may first apply SmoothQuant (`smooth`), which migrates activation outliers of
//! MatMul inputs into the weights before calibration, and may `tune` the form on the CPU
//! target: several legal forms are built and timed against the FP32 model in ONNX Runtime, and
//! the fastest not slower than FP32 is kept (or FP32 itself). Tuning trades byte-identical
//! reproducibility for speed: which form wins depends on the machine. The manifest records the
//! chosen form's name, so a rerun can pin it (`--exclude` with the ops that form leaves float).

use std::sync::Arc;

use kiln_calibration::data::{SYNTHETIC_WARNING, Synthetic, SyntheticSpec, model_inputs};
use kiln_calibration::{Method, SharedSource};
use kiln_compiler::ir::Model;
use kiln_compiler::runtime::{ErrorKind, OrtExecutor};
use kiln_quantize::dynamic::{DynamicConfig, quantize_dynamic};
use kiln_quantize::int8::{Int8Error, StaticOutcome, calibrate, quantize_with_ranges};
use kiln_quantize::plan::Int8Config;
use kiln_quantize::smooth::{Alpha, SmoothConfig, Smoothed, float_nodes, smooth, summary};

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
    /// SmoothQuant before static calibration (`--smooth-quant [ALPHA|auto]`).
    pub smooth: SmoothOption,
    /// CPU target: time candidate forms against FP32 and keep the fastest not slower (`--tune`).
    pub tune: bool,
}

/// Whether and how SmoothQuant runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SmoothOption {
    #[default]
    Off,
    /// One α for every MatMul input.
    Alpha(f64),
    /// α per activation from a grid, by simulated int8 error.
    Auto,
}

impl Default for Int8Options {
    fn default() -> Int8Options {
        Int8Options {
            dynamic: false,
            method: Method::MinMax,
            exclude: Vec::new(),
            smooth: SmoothOption::Off,
            tune: false,
        }
    }
}

/// The static scheme the target fuses.
pub fn config_for(target: TargetKind, exclude: &[String]) -> Int8Config {
    let mut config = match target {
        TargetKind::Cpu => Int8Config::ort_cpu(),
        TargetKind::Cuda => Int8Config::ort_cuda(),
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
    let standard_qdq = matches!(cx.target, TargetKind::TensorRt | TargetKind::Cuda);
    if standard_qdq && model.opset("").is_some_and(|v| v < kiln_passes::opset::TARGET) {
        // TensorRT takes only standard-domain Q/DQ, whose per-channel `axis` needs opset 13;
        // below it the quantizer would fall back to com.microsoft Q/DQ. The CUDA provider has
        // no kernel for com.microsoft Q/DQ: every one ran on the CPU (measured on an H100).
        kiln_compiler::shape::infer_model(model);
        let rewritten = kiln_passes::opset::upgrade_to_13(model).map_err(|e| StageError::bad_input(STAGE, e))?;
        report.fact("opset_raised_to", kiln_passes::opset::TARGET);
        report.fact("opset_rewritten_nodes", rewritten.len());
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
    let original = options.tune.then(|| model.clone());
    let mut exclude = options.exclude.clone();
    let alpha = match options.smooth {
        SmoothOption::Off => None,
        SmoothOption::Alpha(a) => Some(Alpha::Fixed(a)),
        SmoothOption::Auto => Some(Alpha::Auto),
    };
    if let Some(alpha) = alpha {
        // Smoothing ignores `exclude` (on a float MatMul it changes nothing), so repeated runs
        // of this stage with other exclusions smooth alike and may share calibrated ranges.
        let base = config_for(cx.target, &[]);
        let config = SmoothConfig {
            alpha,
            activation: base.activation,
            symmetric_activations: base.symmetric_activations,
            ..SmoothConfig::default()
        };
        let records = smooth(&OrtExecutor::new(), model, cx.base_dir.as_deref(), source.as_ref(), &config)
            .map_err(|e| StageError::bad_input(STAGE, e))?;
        smooth_facts(&mut report, alpha, &records);
        exclude.extend(float_nodes(&records));
    }
    // Calibrated once per pipeline run: sensitivity analysis runs this stage once per node.
    let key = format!("int8:{}:smooth={}", options.method, alpha.map_or("off".to_string(), |a| a.to_string()));
    let ranges = cx.memo.ranges(&key, || {
        let mut m = model.clone();
        calibrate(&OrtExecutor::new(), &mut m, cx.base_dir.as_deref(), source.as_ref(), options.method)
    });
    let ranges = ranges.map_err(fail)?;
    let config = config_for(cx.target, &exclude);
    let outcome = match &original {
        Some(original) if cx.target == TargetKind::Cpu => {
            match tune::choose(original, model, &ranges, &config, source.as_ref(), cx, &mut report)? {
                Some(outcome) => outcome,
                None => {
                    // FP32 was fastest: the stage leaves the input model as it was.
                    *model = original.clone();
                    report.fact("mode", "static (tuned: fp32 kept)");
                    return Ok(report);
                }
            }
        }
        _ => {
            if options.tune {
                report.warnings.push(format!("--tune measures on ONNX Runtime CPU only; ignored for {:?}", cx.target));
            }
            quantize_with_ranges(model, &ranges, &config).map_err(fail)?
        }
    };
    static_facts(&mut report, options, &ranges, source.describe(), &outcome);
    Ok(report)
}

fn smooth_facts(report: &mut StageReport, alpha: Alpha, records: &[Smoothed]) {
    report.fact("smooth_quant", alpha.to_string());
    report.fact("smooth_quant_alpha", summary(records));
    report.fact("smooth_quant_smoothed", records.iter().filter(|r| r.alpha.is_some()).count());
}

fn static_facts(
    report: &mut StageReport,
    options: &Int8Options,
    ranges: &kiln_calibration::Ranges,
    data: String,
    outcome: &StaticOutcome,
) {
    report.fact("mode", "static");
    report.fact("calibration_method", options.method.to_string());
    report.fact("calibration_samples", ranges.samples);
    report.fact("calibration_data", data);
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
    report.decisions = outcome.decisions.clone();
}

/// `--tune`: legal forms of the same calibrated model, timed against FP32 on ORT CPU.
mod tune {
    use kiln_calibration::{Ranges, SampleSource};
    use kiln_compiler::ir::Model;
    use kiln_compiler::onnx::encode_model;
    use kiln_compiler::runtime::{ModelSource, SessionConfig, Value};
    use kiln_quantize::int8::{StaticOutcome, quantize_with_ranges};
    use kiln_quantize::plan::Int8Config;
    use kiln_targets::bench::{BenchOptions, compare_latency};

    use super::{STAGE, StageContext, StageError, StageReport};

    /// The candidate forms: name and scheme.
    fn candidates(config: &Int8Config) -> Vec<(&'static str, Int8Config)> {
        let mut out = vec![("default", config.clone())];
        if config.float_depthwise || config.min_conv_weights > 0 {
            out.push(("all-int8", Int8Config { float_depthwise: false, min_conv_weights: 0, ..config.clone() }));
        }
        if config.include.is_empty() {
            let include = vec!["MatMul".to_string(), "Gemm".to_string()];
            out.push(("matmul-only", Int8Config { include, ..config.clone() }));
        }
        out
    }

    /// Builds each candidate from `model` (the smoothed float model), times it against
    /// `original` and returns the fastest not slower than FP32, in `model`; `None`: FP32 won.
    pub(super) fn choose(
        original: &Model,
        model: &mut Model,
        ranges: &Ranges,
        config: &Int8Config,
        source: &dyn SampleSource,
        cx: &StageContext,
        report: &mut StageReport,
    ) -> Result<Option<StaticOutcome>, StageError> {
        let sample = source.read(0).map_err(|e| StageError::bad_input(STAGE, e))?;
        let feed: Vec<(String, Value)> = sample.inputs.into_iter().map(|(n, t)| (n, Value::Tensor(t))).collect();
        let original_bytes = encode_model(original);
        let base_dir = cx.base_dir.as_deref();
        let options = BenchOptions {
            warmup: 3,
            runs: 20,
            session: SessionConfig { deterministic: false, intra_threads: cx.threads, ..SessionConfig::default() },
        };
        let mut built: Vec<(&'static str, Model, StaticOutcome, f64)> = Vec::new();
        for (name, candidate) in candidates(config) {
            let mut m = model.clone();
            let outcome =
                quantize_with_ranges(&mut m, ranges, &candidate).map_err(|e| StageError::bad_input(STAGE, e))?;
            // A form that quantizes nothing is FP32; one equal to an earlier form is not new.
            if outcome.quantized_ops.is_empty() || built.iter().any(|(_, _, o, _)| o.decisions == outcome.decisions) {
                continue;
            }
            let bytes = encode_model(&m);
            let cmp = compare_latency(
                ModelSource { bytes: &original_bytes, base_dir },
                ModelSource { bytes: &bytes, base_dir },
                &feed,
                &options,
            )
            .map_err(|e| StageError::runtime(STAGE, e))?;
            built.push((name, m, outcome, cmp.ratio));
        }
        let mut ranking: Vec<(&str, f64)> = built.iter().map(|(n, _, _, r)| (*n, *r)).collect();
        ranking.push(("fp32", 1.0));
        ranking.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
        let chosen = ranking.first().map_or("fp32", |(n, _)| *n);
        report.fact("tune_candidates", built.iter().map(|(n, ..)| *n).collect::<Vec<_>>());
        report.fact("tune_ranking", ranking.iter().map(|(n, _)| *n).collect::<Vec<_>>());
        report.fact("tune_chosen", chosen);
        let Some(pos) = built.iter().position(|(n, ..)| *n == chosen) else {
            report.warnings.push("--tune: every INT8 form was slower than FP32 on this machine; FP32 kept".into());
            return Ok(None);
        };
        let (_, m, outcome, _) = built.swap_remove(pos);
        *model = m;
        Ok(Some(outcome))
    }
}
