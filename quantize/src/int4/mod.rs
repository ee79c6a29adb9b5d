//! INT4 weight-only quantization of `MatMul` and `Gemm` weights, blockwise along K.
//!
//! - [`block`]: the blockwise quantizer (round to nearest with a clipping search per block) and
//!   the byte layouts of `MatMulNBits` and blocked `DequantizeLinear`.
//! - [`gptq`]: the data-aware method, on Gram matrices of each layer's input.
//! - `learned` (feature `learned-rounding`): AdaRound-style learned rounding on the same Gram
//!   matrices, with burn's autodiff.
//! - [`quantize_model`]: picks the layers (first and last projections may stay wider), quantizes
//!   them, and writes `com.microsoft.MatMulNBits` (ONNX Runtime CPU/CUDA) or opset-21 blocked
//!   `DequantizeLinear` → `MatMul` (TensorRT).

pub mod block;
pub mod embed;
#[cfg(test)]
mod embed_tests;
mod emit;
pub mod gptq;
mod gptq_tile;
#[cfg(feature = "learned-rounding")]
pub mod learned;
mod linalg;
mod opset;
mod select;
#[cfg(test)]
mod tests;
mod tile32;

use std::path::Path;

use kiln_calibration::CalibError;
use kiln_calibration::SampleSource;
use kiln_calibration::gram::{Gram, GramOptions, collect_grams};
use kiln_compiler::ir::{Model, OpsetImport};
use kiln_compiler::runtime::Executor;
use rayon::prelude::*;

pub use block::{BlockQuantized, QuantSpec, RowMajor};
pub use embed::EmbeddingReport;
pub use gptq::{GptqError, GptqOptions};
#[cfg(feature = "learned-rounding")]
pub use learned::LearnedOptions;
pub use opset::{BLOCKED_DQ_OPSET, upgrade_to_21};
pub use select::{Layer, Selection, select};

/// The precision a layer ends in; ordered from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerPrecision {
    Int4,
    Int8,
    /// Left in float.
    Float,
}

/// How quantized weights are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `com.microsoft.MatMulNBits` (ONNX Runtime CPU and CUDA).
    MatMulNBits,
    /// Opset-21 `DequantizeLinear` of an int4 weight (blocked along K; 8-bit layers per output
    /// channel) feeding the original node (TensorRT).
    Dequantize,
}

/// How weights are rounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Round to nearest, each block's scale from a clipping search on its own values.
    Rtn,
    /// GPTQ on calibration activations.
    Gptq(GptqOptions),
    /// Learned rounding (AdaRound) on calibration activations, RTN's block scales kept.
    #[cfg(feature = "learned-rounding")]
    Learned(LearnedOptions),
}

impl Method {
    /// The method's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rtn => "round to nearest",
            Method::Gptq(_) => "GPTQ",
            #[cfg(feature = "learned-rounding")]
            Method::Learned(_) => "learned rounding",
        }
    }
}

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct Int4Config {
    /// Weights per block along K: a power of two from 16 to 256.
    pub block: usize,
    pub symmetric: bool,
    pub method: Method,
    pub format: Format,
    /// `MatMulNBits`' `accuracy_level` (0 to 4: how A may be down-converted internally);
    /// `None` leaves the attribute out.
    pub accuracy_level: Option<i64>,
    /// Node names or op types left in float.
    pub exclude: Vec<String>,
    /// Precision of the first projections (no quantized layer upstream).
    pub first: LayerPrecision,
    /// Precision of the last projections (no quantized layer downstream): the output
    /// projection, whose error nothing after it can average out.
    pub last: LayerPrecision,
    /// Also store large embedding tables (constant `Gather` along rows) in 4 bits, blocked
    /// along the embedding width, as `com.microsoft.GatherBlockQuantized` (ONNX Runtime
    /// targets only).
    pub embeddings: bool,
}

impl Default for Int4Config {
    fn default() -> Int4Config {
        Int4Config {
            block: 32,
            symmetric: true,
            method: Method::Rtn,
            format: Format::MatMulNBits,
            accuracy_level: None,
            exclude: Vec::new(),
            first: LayerPrecision::Int4,
            last: LayerPrecision::Int8,
            embeddings: false,
        }
    }
}

impl Int4Config {
    /// Checks the settings a user can get wrong.
    pub fn validate(&self) -> Result<(), Int4Error> {
        if !(16..=256).contains(&self.block) || !self.block.is_power_of_two() {
            return Err(Int4Error::Config(format!("block size {} is not a power of two from 16 to 256", self.block)));
        }
        if let Some(level) = self.accuracy_level
            && !(0..=4).contains(&level)
        {
            return Err(Int4Error::Config(format!("accuracy_level {level} is not 0 to 4")));
        }
        if let Method::Gptq(o) = &self.method
            && !(o.damp >= 0.0 && o.damp.is_finite())
        {
            return Err(Int4Error::Config(format!("GPTQ damping {} is not a finite non-negative number", o.damp)));
        }
        #[cfg(feature = "learned-rounding")]
        if let Method::Learned(o) = &self.method {
            o.validate().map_err(Int4Error::Config)?;
        }
        Ok(())
    }
}

/// Calibration data for the data-aware method.
pub struct Calibration<'a> {
    pub executor: &'a dyn Executor,
    pub source: &'a dyn SampleSource,
    /// Where the model's external data lives.
    pub base_dir: Option<&'a Path>,
    pub options: GramOptions,
}

/// What happened to one quantized layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub node: String,
    pub precision: LayerPrecision,
    pub bits: u8,
    pub k: usize,
    pub n: usize,
    /// The float weight's bytes.
    pub bytes_before: u64,
    /// The quantized constants' bytes (codes, scales, zero points).
    pub bytes_after: u64,
    /// Data-aware methods only: the layer's squared output error on the calibration data,
    /// relative to what round-to-nearest gives (below 1: the method did better).
    pub error_vs_rtn: Option<f64>,
}

/// What [`quantize_model`] did.
#[derive(Debug, Clone, Default)]
pub struct Int4Report {
    pub layers: Vec<LayerReport>,
    /// Embedding tables rewritten as `GatherBlockQuantized`.
    pub embeddings: Vec<EmbeddingReport>,
    /// Node name → why it stays in float.
    pub skipped: Vec<(String, String)>,
    /// Rewrites besides the layers (opset raised, …).
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Why INT4 quantization failed.
#[derive(Debug, thiserror::Error)]
pub enum Int4Error {
    #[error("{0}")]
    Config(String),
    #[error("the model has no graph")]
    NoGraph,
    #[error("{node}: {message}")]
    Weight { node: String, message: String },
    #[error("{0}")]
    Opset(String),
    #[error("calibration: {0}")]
    Calibration(#[from] CalibError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Int4Error {
    /// Whether the caller's input is at fault (rather than the runtime).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Int4Error::Calibration(e) => e.kind() == kiln_compiler::runtime::ErrorKind::BadInput,
            Int4Error::Internal(_) => false,
            _ => true,
        }
    }
}

/// How one layer is quantized under `config`.
pub fn layer_spec(layer: &Layer, config: &Int4Config) -> QuantSpec {
    let negative_scales = config.format == Format::MatMulNBits;
    match (layer.precision, config.format) {
        (LayerPrecision::Int8, Format::Dequantize) => {
            QuantSpec { bits: 8, block: layer.k, symmetric: true, negative_scales }
        }
        (LayerPrecision::Int8, _) => {
            QuantSpec { bits: 8, block: config.block, symmetric: config.symmetric, negative_scales }
        }
        _ => QuantSpec { bits: 4, block: config.block, symmetric: config.symmetric, negative_scales },
    }
}

/// Quantizes the weights of the main graph's `MatMul`/`Gemm` nodes. GPTQ and learned rounding
/// need `data`.
pub fn quantize_model(
    model: &mut Model,
    config: &Int4Config,
    data: Option<&Calibration>,
) -> Result<Int4Report, Int4Error> {
    config.validate()?;
    kiln_compiler::shape::infer_model(model);
    let g = model.graph.as_ref().ok_or(Int4Error::NoGraph)?;
    let mut selection = select(g, &config.exclude, config.first, config.last);
    let mut report = Int4Report { skipped: std::mem::take(&mut selection.skipped), ..Int4Report::default() };
    let float: Vec<usize> =
        (0..selection.layers.len()).filter(|&i| selection.layers[i].precision == LayerPrecision::Float).collect();
    for &i in float.iter().rev() {
        let l = selection.layers.remove(i);
        report.skipped.push((l.name, "fp32 (first or last projection kept in float)".into()));
    }
    let layers = selection.layers;
    if layers.is_empty() {
        report.warnings.push("no MatMul or Gemm with a constant f32 weight to quantize".into());
        if !config.embeddings {
            return Ok(report);
        }
    }
    let fold_alpha = config.format == Format::MatMulNBits;

    let mut results: Vec<Option<(BlockQuantized, Option<f64>)>> = vec![None; layers.len()];
    // The data-aware methods run on the 4-bit layers. An 8-bit layer's rounding error is a
    // sixteenth of a 4-bit one's, so it rounds to nearest: its Gram matrix (for MiniLM's
    // 8-bit output projection, K = 1536) would cost as much as those of all other layers.
    let data_aware = |l: &Layer| !matches!(config.method, Method::Rtn) && l.precision == LayerPrecision::Int4;
    for (i, l) in layers.iter().enumerate().filter(|(_, l)| !data_aware(l)) {
        let w = emit::layer_rows(l, fold_alpha)?;
        results[i] = Some((block::rtn(&w, layer_spec(l, config), None), None));
    }
    if !matches!(config.method, Method::Rtn) && data.is_none() {
        return Err(Int4Error::Config(format!("{} needs calibration data", config.method.name())));
    }
    if let (true, Some(data)) = (layers.iter().any(data_aware), data) {
        let mut activations: Vec<(String, usize)> = Vec::new();
        for l in layers.iter().filter(|l| data_aware(l)) {
            if !activations.iter().any(|(a, _)| *a == l.activation) {
                activations.push((l.activation.clone(), l.k));
            }
        }
        let mut failure: Option<Int4Error> = None;
        // A group's activations are independent: each one's Hessian and layers run on their
        // own task (every result is computed alike whichever thread runs it), and the results
        // land in layer order.
        let mut sink = |grams: Vec<Gram>| -> Result<(), CalibError> {
            let done: Vec<Vec<(usize, LayerResult)>> = grams
                .into_par_iter()
                .map(|mut gram| {
                    // GPTQ factors each matrix in its own memory and keeps of the factor only what
                    // the 4-bit blocks read.
                    let hessian = match &config.method {
                        Method::Gptq(options) => {
                            let hessian = gptq::Hessian::from_gram(std::mem::take(&mut gram.xtx), gram.dim, options)
                                .map(|mut h| {
                                    h.release_factor(config.block);
                                    h
                                });
                            Some((hessian, options.batch))
                        }
                        _ => None,
                    };
                    let gram = &gram;
                    layers
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.activation == gram.name && data_aware(l))
                        .map(|(i, l)| {
                            let result = match (&config.method, &hessian) {
                                (Method::Gptq(_), Some((hessian, batch))) => {
                                    quantize_gptq(l, config, gram, hessian, *batch, fold_alpha)
                                }
                                #[cfg(feature = "learned-rounding")]
                                (Method::Learned(options), _) => quantize_learned(l, config, gram, options, fold_alpha),
                                _ => Err(Int4Error::Internal(format!("{}: not a data-aware method", l.name))),
                            };
                            (i, result)
                        })
                        .collect()
                })
                .collect();
            for (i, result) in done.into_iter().flatten() {
                match result {
                    Ok((q, ratio, warning)) => {
                        results[i] = Some((q, ratio));
                        report.warnings.extend(warning);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            Ok(())
        };
        collect_grams(data.executor, model, data.base_dir, data.source, &activations, &data.options, &mut sink)?;
        if let Some(e) = failure {
            return Err(e);
        }
    }

    match config.format {
        Format::MatMulNBits => {
            if !model.opset_import.iter().any(|o| o.domain() == "com.microsoft") {
                model.opset_import.push(OpsetImport { domain: Some("com.microsoft".into()), version: Some(1) });
            }
        }
        Format::Dequantize => report.notes.extend(upgrade_to_21(model)?),
    }
    let g = model.graph.as_mut().ok_or(Int4Error::NoGraph)?;
    let mut weights = Vec::new();
    for (l, r) in layers.iter().zip(results) {
        let Some((q, error_vs_rtn)) = r else {
            return Err(Int4Error::Internal(format!("{}: no quantized weight was produced", l.name)));
        };
        let bytes_after = match config.format {
            Format::MatMulNBits => emit::emit_matmul_nbits(g, l, &q, accuracy_level(config, q.spec.bits))?,
            Format::Dequantize => emit::emit_dequantize(g, l, &q)?,
        };
        weights.push(l.weight);
        report.layers.push(LayerReport {
            node: l.name.clone(),
            precision: l.precision,
            bits: q.spec.bits,
            k: l.k,
            n: l.n,
            bytes_before: l.tensor.byte_size(),
            bytes_after,
            error_vs_rtn,
        });
    }
    emit::drop_dead_weights(g, &weights);
    if config.embeddings {
        if config.format == Format::MatMulNBits {
            let (tables, skipped) = embed::quantize_embeddings(g, config.block, config.symmetric, &config.exclude)?;
            report.embeddings = tables;
            report.skipped.extend(skipped);
        } else {
            report.warnings.push(
                "embedding tables stay in float: GatherBlockQuantized is an ONNX Runtime op the TensorRT target does \
                 not take"
                    .into(),
            );
        }
    }
    kiln_compiler::shape::infer_model(model);
    Ok(report)
}

/// The `accuracy_level` of a `MatMulNBits` node: the configured one, else 4 (int8 activations)
/// for 8-bit weights. ONNX Runtime 1.31's CPU provider has no float-activation kernel for 8-bit
/// blocks: at level 0 the 8-bit output projection of MiniLM-L3 made the whole model 1.5x slower
/// (median of interleaved runs, 1 thread), at level 4 it runs as fast as a 4-bit one with the
/// same embeddings (cosine to FP32 unchanged to 6 digits).
fn accuracy_level(config: &Int4Config, bits: u8) -> Option<i64> {
    config.accuracy_level.or((bits == 8).then_some(4))
}

/// One data-aware layer's outcome: the weight, its output error relative to round to nearest,
/// and a warning.
type LayerResult = Result<(BlockQuantized, Option<f64>, Option<String>), Int4Error>;

/// GPTQ on one layer; falls back to round to nearest (with a warning) when the Hessian cannot
/// be factored. Also returns the output error relative to round to nearest.
fn quantize_gptq(
    layer: &Layer,
    config: &Int4Config,
    gram: &Gram,
    hessian: &Result<gptq::Hessian, GptqError>,
    batch: usize,
    fold_alpha: bool,
) -> LayerResult {
    let w = emit::layer_rows(layer, fold_alpha)?;
    let spec = layer_spec(layer, config);
    let baseline = block::rtn(&w, spec, None);
    match hessian.as_ref().map(|h| (gptq::gptq_with_error(&w, h, spec, batch), h)) {
        Ok(((q, err), h)) => {
            // Measured as GPTQ measures its own, through the factor.
            let base = gptq::output_error_prepared(&w, &baseline, h);
            if base > 0.0 && err > base {
                // GPTQ trades error on the calibration rows; it should never lose to RTN there.
                return Ok((
                    baseline,
                    Some(1.0),
                    Some(format!(
                        "{}: GPTQ did worse than round to nearest on the calibration data; kept round to nearest",
                        layer.name
                    )),
                ));
            }
            Ok((q, (base > 0.0).then(|| err / base), None))
        }
        Err(e @ (GptqError::NotPositiveDefinite { .. } | GptqError::NotFinite)) => {
            let e = e.clone();
            Ok((baseline, None, Some(format!("{}: GPTQ impossible ({e}); rounded to nearest instead", layer.name))))
        }
        Err(e) => Err(Int4Error::Weight { node: layer.name.clone(), message: format!("{}: {e}", gram.name) }),
    }
}

/// Learned rounding on one layer, on the grid round to nearest picks. Keeps round to nearest
/// (with a warning) if the learned rounding does worse on the calibration data, and returns the
/// output error relative to it.
#[cfg(feature = "learned-rounding")]
fn quantize_learned(
    layer: &Layer,
    config: &Int4Config,
    gram: &Gram,
    options: &LearnedOptions,
    fold_alpha: bool,
) -> LayerResult {
    let w = emit::layer_rows(layer, fold_alpha)?;
    if gram.xtx.len() != w.k * w.k {
        return Err(Int4Error::Weight {
            node: layer.name.clone(),
            message: format!("{}: Gram matrix of {} values for K = {}", gram.name, gram.xtx.len(), w.k),
        });
    }
    let baseline = block::rtn(&w, layer_spec(layer, config), None);
    let q = learned::adaround(&w, &baseline, &gram.xtx, options);
    let base = gptq::output_error(&w, &baseline, &gram.xtx);
    let err = gptq::output_error(&w, &q, &gram.xtx);
    // Worse than round to nearest, or NaN.
    if err.partial_cmp(&base).is_none_or(|o| o == std::cmp::Ordering::Greater) {
        let warning = format!(
            "{}: learned rounding did worse than round to nearest on the calibration data; kept round to nearest",
            layer.name
        );
        return Ok((baseline, Some(1.0), Some(warning)));
    }
    Ok((q, (base > 0.0).then(|| err / base), None))
}
