//! SmoothQuant (Xiao et al., 2023): activation outliers sit in a few input channels of a
//! MatMul; dividing channel `j` of the activation by `s_j` and multiplying row `j` of the weight
//! by it leaves `X·W` unchanged but moves the hard-to-quantize range into the weight, which is
//! quantized per output channel and absorbs it. `s_j = max|X_j|^α / max|W_j,:|^(1−α)`.
//!
//! MatMuls (and Gemms) that read the same activation share one `s` (the weight maximum is taken
//! over all of them). `1/s` is folded into the producer's per-channel scale and bias when the
//! producer is a LayerNormalization over the last axis read only by those MatMuls; otherwise a
//! `Mul` by `1/s` goes before them (other readers keep the original tensor). α is chosen per
//! activation from [`ALPHA_GRID`] by simulating int8 quantization (the scheme static INT8
//! uses: per-tensor min/max activations, S8 symmetric per-output-channel weights) on real
//! calibration rows and keeping the α with the smallest relative output error — or no smoothing
//! when none beats it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kiln_calibration::CalibError;
use kiln_calibration::channels::collect_channels;
use kiln_calibration::data::SampleSource;
use kiln_compiler::ir::{AttrLookup, Graph, Model, NodeId, NodeSpec, ValueId};
use kiln_compiler::runtime::{Executor, OptLevel, SessionConfig};
use kiln_compiler::{DataType, Tensor};

use crate::handlers::constant;
use crate::weights::IntType;

/// The α values tried per activation when α is chosen automatically.
pub const ALPHA_GRID: [f64; 7] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// How strongly outliers migrate into the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// The same α everywhere (0.5 is the paper's default).
    Fixed(f64),
    /// Per activation, the α of [`ALPHA_GRID`] with the smallest simulated int8 error.
    Auto,
}

impl std::fmt::Display for Alpha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alpha::Fixed(a) => write!(f, "{a}"),
            Alpha::Auto => f.write_str("auto"),
        }
    }
}

/// SmoothQuant options.
#[derive(Debug, Clone)]
pub struct SmoothConfig {
    pub alpha: Alpha,
    /// Integer type and symmetry of activations in the simulated quantization.
    pub activation: IntType,
    pub symmetric_activations: bool,
    /// Calibration rows per activation kept to choose α (bounded memory).
    pub rows: usize,
}

impl Default for SmoothConfig {
    fn default() -> SmoothConfig {
        SmoothConfig { alpha: Alpha::Auto, activation: IntType::U8, symmetric_activations: false, rows: 64 }
    }
}

/// Why smoothing failed.
#[derive(Debug, thiserror::Error)]
pub enum SmoothError {
    #[error("SmoothQuant: α must be in [0, 1], got {0}")]
    Alpha(f64),
    #[error("SmoothQuant: {0}")]
    Calibration(#[from] CalibError),
    #[error("SmoothQuant: {0}")]
    Model(String),
}

/// A MatMul or Gemm whose B is a constant weight, with its layout.
#[derive(Debug, Clone)]
struct Target {
    node: NodeId,
    weight: ValueId,
    /// Rows K, columns N of the weight as `X·W` sees it.
    k: usize,
    n: usize,
    /// Gemm with `transB`: stored [N, K].
    transposed: bool,
}

/// The MatMuls reading one activation.
#[derive(Debug, Clone)]
struct Group {
    activation: ValueId,
    targets: Vec<Target>,
}

/// What was done to one activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothed {
    pub activation: String,
    /// Names of the MatMuls reading it.
    pub nodes: Vec<String>,
    /// The α chosen; `None`: left unsmoothed (no α lowered the simulated error).
    pub alpha: Option<f64>,
    /// Relative output error `‖XW − Q(X')Q(W')‖² / ‖XW‖²` unsmoothed and as chosen.
    pub error_before: f64,
    pub error_after: f64,
    /// `LayerNormalization` name when 1/s was folded into it.
    pub folded_into: Option<String>,
    /// The inserted `Mul` by 1/s otherwise. It must stay in float: quantizing its input would
    /// quantize the unsmoothed tensor, outliers and all ([`float_nodes`]).
    pub mul: Option<String>,
}

/// The inserted Muls, to leave out of quantization (`Int8Config::exclude`).
pub fn float_nodes(records: &[Smoothed]) -> Vec<String> {
    records.iter().filter_map(|r| r.mul.clone()).collect()
}

/// Smooths every MatMul/Gemm with a constant weight in the main graph: collects per-channel
/// maxima of their activations on `source`, chooses `s` per activation and rewrites the model.
/// Returns what was done per activation, in graph order.
pub fn smooth(
    executor: &dyn Executor,
    model: &mut Model,
    base_dir: Option<&Path>,
    source: &dyn SampleSource,
    config: &SmoothConfig,
) -> Result<Vec<Smoothed>, SmoothError> {
    if let Alpha::Fixed(a) = config.alpha
        && !(0.0..=1.0).contains(&a)
    {
        return Err(SmoothError::Alpha(a));
    }
    kiln_compiler::shape::infer_model(model);
    let groups = {
        let g = model.main_graph().ok_or_else(|| SmoothError::Model("the model has no graph".into()))?;
        groups(g)
    };
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = {
        let g = model.main_graph().ok_or_else(|| SmoothError::Model("the model has no graph".into()))?;
        groups.iter().map(|gr| g.value(gr.activation).name.clone()).collect()
    };
    let session = SessionConfig::reproducible(OptLevel::Disabled);
    let stats = collect_channels(executor, model, base_dir, source, &names, config.rows, &session)?;
    let mut chosen: Vec<(ValueId, Vec<f32>, Smoothed)> = Vec::new();
    {
        let g = model.main_graph().ok_or_else(|| SmoothError::Model("the model has no graph".into()))?;
        for (group, name) in groups.iter().zip(&names) {
            let Some(range) = stats.tensors.get(name) else { continue };
            if let Some(c) = choose(g, group, name, range, config)? {
                chosen.push(c);
            }
        }
    }
    let g = model.graph.as_mut().ok_or_else(|| SmoothError::Model("the model has no graph".into()))?;
    let mut out = Vec::new();
    for (activation, s, mut record) in chosen {
        if record.alpha.is_some()
            && let Some(group) = groups.iter().find(|gr| gr.activation == activation)
        {
            match apply(g, group, &s)? {
                Applied::Folded(ln) => record.folded_into = Some(ln),
                Applied::Mul(mul) => record.mul = Some(mul),
            }
        }
        out.push(record);
    }
    Ok(out)
}

/// Applies explicit scales `s` (one per input channel) to the MatMuls reading `activation`;
/// exposed so a test can apply deliberately wrong ones.
pub fn apply_scales(model: &mut Model, activation: &str, s: &[f32]) -> Result<Applied, SmoothError> {
    kiln_compiler::shape::infer_model(model);
    let g = model.graph.as_mut().ok_or_else(|| SmoothError::Model("the model has no graph".into()))?;
    let v = g.find_value(activation).ok_or_else(|| SmoothError::Model(format!("no value named `{activation}`")))?;
    let group = groups(g)
        .into_iter()
        .find(|gr| gr.activation == v)
        .ok_or_else(|| SmoothError::Model(format!("no MatMul with a constant weight reads `{activation}`")))?;
    apply(g, &group, s)
}

/// The smoothable MatMuls grouped by activation, in node order.
fn groups(g: &Graph) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (id, node) in g.nodes() {
        let Some(target) = target(g, id) else { continue };
        let Some(x) = node.input(0) else { continue };
        match out.iter_mut().find(|gr| gr.activation == x) {
            Some(gr) => {
                if gr.targets.iter().all(|t| t.k == target.k) {
                    gr.targets.push(target);
                }
            }
            None => out.push(Group { activation: x, targets: vec![target] }),
        }
    }
    out
}

/// Whether node `id` is `X·W` with a constant f32 weight W and a runtime f32 X of K channels.
fn target(g: &Graph, id: NodeId) -> Option<Target> {
    let node = g.node(id);
    let gemm = node.is_onnx("Gemm");
    if !(node.is_onnx("MatMul") || gemm) {
        return None;
    }
    let (x, w) = (node.input(0)?, node.input(1)?);
    if constant(g, x).is_some()
        || !matches!(g.value(x).def(), kiln_compiler::ir::ValueDef::Node { .. } | kiln_compiler::ir::ValueDef::Input)
    {
        return None;
    }
    let tensor = constant(g, w)?;
    if tensor.dtype() != DataType::F32 || tensor.rank() != 2 {
        return None;
    }
    let transposed = gemm && node.attr_int("transB").unwrap_or(0) != 0;
    if gemm && node.attr_int("transA").unwrap_or(0) != 0 {
        return None;
    }
    let (k, n) = if transposed { (tensor.dims()[1], tensor.dims()[0]) } else { (tensor.dims()[0], tensor.dims()[1]) };
    let xt = g.tensor_type(x)?;
    if xt.dtype() != Some(DataType::F32) {
        return None;
    }
    Some(Target { node: id, weight: w, k, n, transposed })
}

/// Where 1/s went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Into this LayerNormalization's Scale and B.
    Folded(String),
    /// Into this inserted Mul.
    Mul(String),
}

/// Rewrites the graph: W' = diag(s)·W for each MatMul, X' = X/s folded into a LayerNorm
/// producer or computed by an inserted Mul. Returns the LayerNorm's name when folded.
fn apply(g: &mut Graph, group: &Group, s: &[f32]) -> Result<Applied, SmoothError> {
    let x = group.activation;
    let k = s.len();
    if group.targets.iter().any(|t| t.k != k) {
        return Err(SmoothError::Model(format!("`{}`: {k} scales for weights of other widths", g.value(x).name)));
    }
    let mut old_weights = Vec::new();
    for t in &group.targets {
        let tensor = constant(g, t.weight).ok_or_else(|| SmoothError::Model("weight is no longer constant".into()))?;
        let mut v =
            tensor.to_vec::<f32>().map_err(|e| SmoothError::Model(format!("{}: {e}", g.value(t.weight).name)))?;
        for (i, w) in v.iter_mut().enumerate() {
            *w *= if t.transposed { s[i % k] } else { s[i / t.n] };
        }
        let scaled = Tensor::from_slice(tensor.dims().to_vec(), &v).map_err(|e| SmoothError::Model(e.to_string()))?;
        let name = g.fresh_name(&format!("{}_smooth", g.value(t.weight).name));
        let nw = g.add_initializer(name, Arc::new(scaled));
        g.set_input(t.node, 1, Some(nw));
        old_weights.push(t.weight);
    }
    drop_unused(g, &old_weights);
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    if let Some(name) = fold_into_layernorm(g, group, &inv)? {
        return Ok(Applied::Folded(name));
    }
    let inv_t = Tensor::from_slice(vec![k], &inv).map_err(|e| SmoothError::Model(e.to_string()))?;
    let base = g.value(x).name.clone();
    let inv_name = g.fresh_name(&format!("{base}_smooth_scale"));
    let inv_v = g.add_initializer(inv_name, Arc::new(inv_t));
    let out_name = g.fresh_name(&format!("{base}_smoothed"));
    let node_name = g.fresh_name(&format!("{base}_smooth"));
    let first = group.targets[0].node;
    let mul = g
        .insert_node_before(first, NodeSpec::new("Mul").name(node_name.clone()).inputs([x, inv_v]).outputs([out_name]));
    let smoothed = g.node(mul).output(0).ok_or_else(|| SmoothError::Model("Mul without output".into()))?;
    if let Some(tt) = g.tensor_type(x).cloned() {
        g.value_mut(smoothed).ty = Some(kiln_compiler::ir::Type::tensor(tt));
    }
    for t in &group.targets {
        g.set_input(t.node, 0, Some(smoothed));
    }
    Ok(Applied::Mul(node_name))
}

/// Folds `1/s` into a LayerNormalization producing X (Scale and B multiplied per channel)
/// when it normalizes the last axis and only the group's MatMuls read X.
fn fold_into_layernorm(g: &mut Graph, group: &Group, inv: &[f32]) -> Result<Option<String>, SmoothError> {
    let x = group.activation;
    let Some(ln) = g.value(x).producer() else { return Ok(None) };
    let node = g.node(ln);
    let last_axis = node.attr_int("axis").unwrap_or(-1);
    let rank = g.tensor_type(x).and_then(|t| t.rank());
    let axis_ok = last_axis == -1 || rank.is_some_and(|r| last_axis == r as i64 - 1);
    let only_group = g.value(x).uses().iter().all(|u| group.targets.iter().any(|t| t.node == u.node));
    if !node.is_onnx("LayerNormalization") || node.output(0) != Some(x) || !axis_ok || !only_group || g.is_output(x) {
        return Ok(None);
    }
    let mut params = Vec::new();
    for i in [1usize, 2] {
        let Some(v) = node.input(i) else { continue };
        let Some(t) = constant(g, v) else { return Ok(None) };
        if t.dtype() != DataType::F32 || t.dims() != [inv.len()] {
            return Ok(None);
        }
        params.push((i, v, t));
    }
    let name = node_name(g, ln);
    let mut old = Vec::new();
    for (i, v, t) in params {
        let vals = t.to_vec::<f32>().map_err(|e| SmoothError::Model(e.to_string()))?;
        let scaled: Vec<f32> = vals.iter().zip(inv).map(|(a, b)| a * b).collect();
        let tensor = Tensor::from_slice(vec![inv.len()], &scaled).map_err(|e| SmoothError::Model(e.to_string()))?;
        let fresh = g.fresh_name(&format!("{}_smooth", g.value(v).name));
        let nv = g.add_initializer(fresh, Arc::new(tensor));
        g.set_input(ln, i, Some(nv));
        old.push(v);
    }
    drop_unused(g, &old);
    Ok(Some(name))
}

fn node_name(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| n.label(id))
}

/// Removes initializers (and Constant nodes) nothing reads any more.
fn drop_unused(g: &mut Graph, values: &[ValueId]) {
    let mut dead: Vec<ValueId> = Vec::new();
    for &v in values {
        if !g.value(v).uses().is_empty() || g.is_output(v) || dead.contains(&v) {
            continue;
        }
        match g.value(v).producer() {
            Some(n) if g.node(n).is_onnx("Constant") => {
                g.remove_node(n);
            }
            Some(_) => {}
            None => dead.push(v),
        }
    }
    g.remove_initializers(&dead);
}

/// A summary for reports: activation → chosen α (or `off`) and where 1/s went.
pub fn summary(records: &[Smoothed]) -> BTreeMap<String, String> {
    records
        .iter()
        .map(|r| {
            let how = match (&r.alpha, &r.folded_into) {
                (None, _) => format!("off (int8 error {:.2e})", r.error_before),
                (Some(a), Some(ln)) => {
                    format!("alpha {a} into {ln} (int8 error {:.2e} -> {:.2e})", r.error_before, r.error_after)
                }
                (Some(a), None) => {
                    format!("alpha {a} with Mul (int8 error {:.2e} -> {:.2e})", r.error_before, r.error_after)
                }
            };
            (r.activation.clone(), how)
        })
        .collect()
}

mod alpha;
#[cfg(test)]
mod tests;

use alpha::choose;
pub use alpha::scales;
