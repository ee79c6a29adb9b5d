//! INT4 weight-only quantization of MatMul/Gemm weights. The work is in `kiln_quantize::int4`;
//! this maps options and the target to it and reports what it did.

use std::collections::BTreeMap;

use kiln_calibration::data::{SYNTHETIC_WARNING, Synthetic, SyntheticSpec, model_inputs};
use kiln_calibration::gram::GramOptions;
use kiln_compiler::ir::Model;
use kiln_compiler::runtime::{OptLevel, OrtExecutor, SessionConfig};
use kiln_quantize::int4::{
    Calibration, Format, GptqOptions, Int4Config, Int4Error, LayerPrecision, Method, quantize_model,
};

use super::{StageContext, StageError, StageReport};
use crate::pipeline::TargetKind;

const STAGE: &str = "int4";

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
    /// Symmetric blocks (no zero point). TensorRT is always symmetric.
    pub symmetric: bool,
    /// Node names or op types left in float.
    pub exclude: Vec<String>,
    /// `MatMulNBits`' accuracy_level (0–4: how ORT may down-convert A internally; 4 = int8
    /// activations, faster on CPUs with int8 dot products, a little less accurate).
    pub accuracy_level: Option<i64>,
    /// The first projections (nothing quantized upstream).
    pub first: LayerPrecision,
    /// The last projections (nothing quantized downstream, e.g. the output projection): 8 bit
    /// by default, since no later layer averages their error out.
    pub last: LayerPrecision,
    /// GPTQ: damping as a fraction of the Hessian's mean diagonal.
    pub damp: f64,
    /// GPTQ: quantize the most active input features first.
    pub act_order: bool,
    /// Large embedding tables in 4 bits too (`GatherBlockQuantized`, ONNX Runtime targets).
    pub embeddings: bool,
}

impl Default for Int4Options {
    fn default() -> Int4Options {
        Int4Options {
            block: 32,
            method: Int4Method::Rtn,
            symmetric: true,
            exclude: Vec::new(),
            accuracy_level: None,
            first: LayerPrecision::Int4,
            last: LayerPrecision::Int8,
            damp: 0.01,
            act_order: false,
            embeddings: false,
        }
    }
}

fn precision_name(p: LayerPrecision) -> &'static str {
    match p {
        LayerPrecision::Int4 => "int4",
        LayerPrecision::Int8 => "int8",
        LayerPrecision::Float => "fp32",
    }
}

fn stage_error(e: Int4Error) -> StageError {
    if e.is_bad_input() { StageError::bad_input(STAGE, e) } else { StageError::runtime(STAGE, e) }
}

pub fn run(model: &mut Model, options: &Int4Options, cx: &StageContext) -> Result<StageReport, StageError> {
    let mut report = StageReport::new(STAGE);
    let method = match options.method {
        Int4Method::Rtn => Method::Rtn,
        Int4Method::Gptq => {
            Method::Gptq(GptqOptions { damp: options.damp, act_order: options.act_order, ..GptqOptions::default() })
        }
        Int4Method::Awq => {
            return Err(StageError::bad_input(
                STAGE,
                "AWQ is not implemented: Kiln's data-aware INT4 method is GPTQ (--int4-method gptq), which changes only \
                 the weights and needs no extra scaling op at run time",
            ));
        }
        #[cfg(feature = "learned-rounding")]
        Int4Method::Learned => Method::Learned(kiln_quantize::int4::LearnedOptions::default()),
        #[cfg(not(feature = "learned-rounding"))]
        Int4Method::Learned => {
            return Err(StageError::bad_input(
                STAGE,
                "learned rounding is not built: rebuild with `--features learned-rounding`, or use --int4-method gptq \
                 or rtn",
            ));
        }
    };
    let format = match cx.target {
        TargetKind::Cpu | TargetKind::Cuda => Format::MatMulNBits,
        TargetKind::TensorRt => Format::Dequantize,
    };
    let mut symmetric = options.symmetric;
    if format == Format::Dequantize && !symmetric {
        symmetric = true;
        report.warnings.push("TensorRT takes symmetric weights only: INT4 blocks made symmetric".into());
    }
    // TensorRT runs INT4 weight-only (blocked DQ into a MatMul) but not INT8 weight-only: an
    // int8 weight with a float input is dequantized at build time and runs in float. A layer
    // meant for 8 bits stays in float there instead of pretending.
    let wide = |p: LayerPrecision| {
        if format == Format::Dequantize && p == LayerPrecision::Int8 { LayerPrecision::Float } else { p }
    };
    let config = Int4Config {
        block: options.block,
        symmetric,
        method,
        format,
        accuracy_level: options.accuracy_level,
        exclude: options.exclude.clone(),
        first: wide(options.first),
        last: wide(options.last),
        embeddings: options.embeddings,
    };

    let executor = OrtExecutor::new();
    let session = SessionConfig::reproducible(OptLevel::Disabled);
    let synthetic;
    let source: Option<&dyn kiln_calibration::SampleSource> = match (&config.method, &cx.calibration) {
        (Method::Rtn, _) => None,
        (_, Some(s)) => Some(s.as_ref()),
        (_, None) => {
            let inputs = model_inputs(model).map_err(|e| StageError::bad_input(STAGE, e))?;
            synthetic =
                Synthetic::new(&inputs, &SyntheticSpec::default()).map_err(|e| StageError::bad_input(STAGE, e))?;
            report.warnings.push(SYNTHETIC_WARNING.to_string());
            Some(&synthetic)
        }
    };
    let data = source.map(|source| Calibration {
        executor: &executor,
        source,
        base_dir: cx.base_dir.as_deref(),
        options: GramOptions { session: session.clone(), ..GramOptions::default() },
    });
    let r = quantize_model(model, &config, data.as_ref()).map_err(stage_error)?;

    let before: u64 = r.layers.iter().map(|l| l.bytes_before).sum();
    let after: u64 = r.layers.iter().map(|l| l.bytes_after).sum();
    report.fact("method", format!("{:?}", options.method).to_lowercase());
    report.fact("format", if format == Format::MatMulNBits { "MatMulNBits" } else { "DequantizeLinear (opset 21)" });
    report.fact("block_size", options.block);
    report.fact("symmetric", symmetric);
    if let Some(level) = options.accuracy_level {
        report.fact("accuracy_level", level);
    }
    report.fact("layers_quantized", r.layers.len());
    report.fact("layers_int4", r.layers.iter().filter(|l| l.precision == LayerPrecision::Int4).count());
    report.fact("layers_int8", r.layers.iter().filter(|l| l.precision == LayerPrecision::Int8).count());
    report.fact("bits_per_layer", r.layers.iter().map(|l| (l.node.clone(), l.bits)).collect::<BTreeMap<_, _>>());
    report.fact("weight_bytes_before", before);
    report.fact("weight_bytes_after", after);
    if before > 0 {
        report.fact("weight_size_ratio", after as f64 / before as f64);
    }
    if !r.embeddings.is_empty() {
        let before: u64 = r.embeddings.iter().map(|e| e.bytes_before).sum();
        let after: u64 = r.embeddings.iter().map(|e| e.bytes_after).sum();
        report.fact("embeddings_int4", r.embeddings.iter().map(|e| e.node.clone()).collect::<Vec<_>>());
        report.fact("embedding_bytes_before", before);
        report.fact("embedding_bytes_after", after);
    }
    let ratios: BTreeMap<String, f64> =
        r.layers.iter().filter_map(|l| Some((l.node.clone(), l.error_vs_rtn?))).collect();
    if !ratios.is_empty() {
        let key = if options.method == Int4Method::Learned { "learned" } else { "gptq" };
        report.fact(format!("{key}_output_error_vs_rtn"), ratios);
    }
    if !r.notes.is_empty() {
        report.fact("rewrites", &r.notes);
    }
    for l in &r.layers {
        report.decisions.insert(l.node.clone(), precision_name(l.precision).to_string());
    }
    for e in &r.embeddings {
        report.decisions.insert(e.node.clone(), "int4 (GatherBlockQuantized)".to_string());
    }
    for (node, why) in &r.skipped {
        report.decisions.insert(node.clone(), why.clone());
    }
    report.warnings.extend(r.warnings);
    Ok(report)
}
