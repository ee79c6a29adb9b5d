//! Static INT8 end to end: calibrate, plan, materialize. The library entry point the
//! pipeline stage and tools call.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_calibration::{CalibError, CollectOptions, Method, Ranges, SampleSource, collect};
use kiln_compiler::ir::Model;
use kiln_compiler::runtime::{ErrorKind, Executor, OptLevel, SessionConfig};

use crate::plan::{Int8Config, QuantPlan};
use crate::qdq::{QdqReport, QuantizeError, materialize};

/// Static INT8 options besides the scheme.
#[derive(Debug, Clone)]
pub struct StaticOptions {
    pub config: Int8Config,
    /// How activation ranges are chosen from the calibration statistics.
    pub method: Method,
}

/// What static quantization did.
#[derive(Debug, Clone)]
pub struct StaticOutcome {
    pub ranges: Ranges,
    /// Quantized nodes per op type.
    pub quantized_ops: BTreeMap<String, usize>,
    /// Node → `int8` / `fp32 (reason)`.
    pub decisions: BTreeMap<String, String>,
    pub qdq: QdqReport,
}

/// Why static quantization failed: the data (bad input) or the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    #[error("calibration: {0}")]
    Calibration(#[from] CalibError),
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
}

impl Int8Error {
    /// Whether the caller fed something wrong (data, model) or the runtime failed.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Int8Error::Calibration(e) => e.kind(),
            Int8Error::Quantize(_) => ErrorKind::BadInput,
        }
    }
}

/// Calibrates every float activation of `model` on `source` and quantizes it in place.
pub fn quantize_static(
    executor: &dyn Executor,
    model: &mut Model,
    base_dir: Option<&Path>,
    source: &dyn SampleSource,
    options: &StaticOptions,
) -> Result<StaticOutcome, Int8Error> {
    let ranges = calibrate(executor, model, base_dir, source, options.method)?;
    let outcome = quantize_with_ranges(model, &ranges, &options.config)?;
    Ok(StaticOutcome { ranges, ..outcome })
}

/// The activation ranges static quantization uses: every float activation of the model (after
/// shape inference), observed with `method`.
pub fn calibrate(
    executor: &dyn Executor,
    model: &mut Model,
    base_dir: Option<&Path>,
    source: &dyn SampleSource,
    method: Method,
) -> Result<Ranges, Int8Error> {
    kiln_compiler::shape::infer_model(model);
    let collect_options = CollectOptions {
        method,
        session: SessionConfig::reproducible(OptLevel::Disabled),
        candidates: Some(crate::handlers::handled_tensors(model)),
        ..CollectOptions::default()
    };
    Ok(collect(executor, model, base_dir, source, &collect_options)?)
}

/// Beyond this magnitude a range holds sentinels, not a distribution: attention masks filled
/// with `f32::MIN` or `-1e9`. 256 levels over such a range round every real value to 0, so
/// the nodes that read or write such a tensor stay in float.
pub const MAX_QUANTIZABLE_MAGNITUDE: f64 = 1e6;

/// Whether a calibrated range can be quantized to 8 bits.
pub fn quantizable(lo: f64, hi: f64) -> bool {
    lo.is_finite() && hi.is_finite() && lo.abs().max(hi.abs()) <= MAX_QUANTIZABLE_MAGNITUDE
}

/// Quantizes with ranges computed earlier (`optimize calibrate`).
pub fn quantize_with_ranges(
    model: &mut Model,
    ranges: &Ranges,
    config: &Int8Config,
) -> Result<StaticOutcome, Int8Error> {
    kiln_compiler::shape::infer_model(model);
    let usable = |n: &str| ranges.range(n).filter(|&(lo, hi)| quantizable(lo, hi));
    let plan = QuantPlan::build(model, config, &|n| usable(n).is_some());
    let mut decisions = plan.decisions(model);
    let mut quantized_ops = plan.quantized_ops(model);
    let qdq = materialize(model, &plan, &usable)?;
    if config.embeddings {
        let tables = crate::handlers::gather::quantize_embeddings(model, config)?;
        if !tables.is_empty() {
            *quantized_ops.entry("Gather".to_string()).or_default() += tables.len();
        }
        decisions.extend(tables);
    }
    if config.qattention {
        let attention = crate::handlers::attention::quantize_attention(model, config)?;
        let n = attention.values().filter(|d| d.starts_with("int8")).count();
        if n > 0 {
            *quantized_ops.entry("Attention".to_string()).or_default() += n;
        }
        decisions.extend(attention);
    }
    Ok(StaticOutcome { ranges: ranges.clone(), quantized_ops, decisions, qdq })
}
