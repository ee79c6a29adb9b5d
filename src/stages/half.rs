//! FP16 / BF16 conversion. The work is in `kiln_quantize::half`; this maps options to it,
//! calibrates ranges when data was given (FP16 only: BF16 has FP32's range), and picks the
//! kernel table of the target runtime (BF16 on ONNX Runtime CPU, which cannot cast around
//! missing BF16 kernels the way it does for FP16).

use kiln_calibration::{CollectOptions, Method, collect};
use kiln_compiler::ir::Model;
use kiln_compiler::runtime::{OptLevel, OrtExecutor, SessionConfig};
use kiln_quantize::half::{HalfConfig, KernelTable, convert};

use super::{StageContext, StageError, StageReport};
use crate::pipeline::TargetKind;

pub use kiln_quantize::half::HalfKind;

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

pub fn run(model: &mut Model, options: &HalfOptions, cx: &StageContext) -> Result<StageReport, StageError> {
    let stage = "half";
    let mut out = StageReport::new(stage);
    let config = HalfConfig {
        keep_io_types: options.keep_io_types,
        exclude: options.exclude.clone(),
        kernels: (options.kind == HalfKind::Bf16 && cx.target == TargetKind::Cpu).then(KernelTable::ort_cpu),
        ..HalfConfig::new(options.kind)
    };
    let ranges = match (&cx.calibration, options.kind) {
        (Some(source), HalfKind::F16) => {
            let collect_options = CollectOptions {
                method: Method::MinMax,
                session: SessionConfig::reproducible(OptLevel::Disabled),
                ..CollectOptions::default()
            };
            let r = collect(&OrtExecutor::new(), model, cx.base_dir.as_deref(), source.as_ref(), &collect_options)
                .map_err(|e| match e.kind() {
                    kiln_compiler::runtime::ErrorKind::BadInput => StageError::bad_input(stage, e),
                    _ => StageError::runtime(stage, e),
                })?;
            Some(r)
        }
        (None, HalfKind::F16) => {
            out.warnings.push(
                "fp16: no calibration data (--data): tensors were not checked against fp16's range; \
                 a model with large activations may overflow"
                    .into(),
            );
            None
        }
        _ => None,
    };
    let r = convert(model, &config, ranges.as_ref()).map_err(|e| StageError::bad_input(stage, e))?;
    out.fact("precision", options.kind.name());
    out.fact("keep_io_types", options.keep_io_types);
    out.fact("tensors_converted", r.tensors_converted);
    out.fact("initializers_converted", r.initializers_converted);
    out.fact("nodes_half", r.nodes_half);
    out.fact("nodes_fp32", &r.nodes_fp32);
    out.fact("casts_inserted", r.casts_inserted);
    out.fact("casts_folded", r.casts_folded);
    out.fact("range_checked", r.range_checked);
    if config.kernels.is_some() {
        out.fact("kernels", "onnxruntime-1.31.1 cpu");
    }
    let saturating: Vec<serde_json::Value> =
        r.saturating_initializers.iter().map(|(name, m)| serde_json::json!({ "name": name, "max_abs": m })).collect();
    for (name, m) in &r.saturating_initializers {
        out.warnings
            .push(format!("fp16: initializer '{name}' reaches |x| = {m:.4e}, beyond fp16's range; its uses stay fp32"));
    }
    out.fact("saturating_initializers", saturating);
    out.decisions = r.decisions;
    Ok(out)
}
