//! FP16 / BF16 conversion. The work is in `kiln_quantize::half`; this maps options to it,
//! calibrates ranges when data was given (FP16 only: BF16 has FP32's range), and picks the
//! kernel table of the target runtime (BF16 on ONNX Runtime CPU, which cannot cast around
//! missing BF16 kernels the way it does for FP16; FP16 on the CUDA provider, which runs a node
//! without a GPU kernel on the CPU).

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

/// The 16-bit kernels the target's runtime has, where Kiln knows them: BF16 on ONNX Runtime CPU
/// (no casts around a missing kernel: the session would not load) and FP16 on the CUDA provider
/// (a node without a GPU kernel runs on the CPU, with a copy on each side).
fn kernel_table(kind: HalfKind, target: TargetKind) -> Option<&'static KernelTable> {
    match (kind, target) {
        (HalfKind::Bf16, TargetKind::Cpu) => Some(KernelTable::ort_cpu()),
        (HalfKind::F16, TargetKind::Cuda) => Some(KernelTable::ort_cuda_f16()),
        _ => None,
    }
}

pub fn run(model: &mut Model, options: &HalfOptions, cx: &StageContext) -> Result<StageReport, StageError> {
    let stage = "half";
    let mut out = StageReport::new(stage);
    let config = HalfConfig {
        keep_io_types: options.keep_io_types,
        exclude: options.exclude.clone(),
        kernels: kernel_table(options.kind, cx.target),
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
    if options.kind == HalfKind::F16 && cx.target == TargetKind::Cuda {
        raise_opset_for_cuda(model, &mut out);
    }
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
        let provider = if cx.target == TargetKind::Cuda { "cuda" } else { "cpu" };
        out.fact("kernels", format!("onnxruntime-1.31.1 {provider}"));
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

/// Below opset 12 Clip has no FP16 kernel on the CUDA provider (it would stay FP32 between two
/// casts, or run on the CPU); the upgrade raises the model to opset 13. It is tried
/// on a copy: a model it cannot raise keeps its opset, with a warning, and converts as it is.
fn raise_opset_for_cuda(model: &mut Model, out: &mut StageReport) {
    let target = kiln_passes::opset::TARGET;
    if model.opset("").is_none_or(|v| v >= target) {
        return;
    }
    let mut raised = model.clone();
    kiln_compiler::shape::infer_model(&mut raised);
    match kiln_passes::opset::upgrade_to_13(&mut raised) {
        Ok(rewritten) => {
            *model = raised;
            out.fact("opset_raised_to", target);
            out.fact("opset_rewritten_nodes", rewritten.len());
        }
        Err(e) => out.warnings.push(format!(
            "fp16 for cuda: the opset stays as it is ({e}); ops without an FP16 CUDA kernel there stay FP32"
        )),
    }
}
