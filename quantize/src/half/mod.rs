//! FP16 / BF16 conversion that keeps the graph loadable.
//!
//! Which tensors change is decided by each op's type constraints
//! ([`kiln_compiler::ops::type_constraints`]), not by a list of ops: only bindings that hold
//! FP32 tensors and whose type parameter allows the target type change, so integer, bool, shape
//! and fixed-FP32 inputs (Resize's scales) stay as they are. Ops the table does not know, ops on
//! the block list, shape arithmetic done in float, tensors whose calibrated range FP16 cannot
//! hold and (with a kernel table) ops the runtime has no 16-bit kernel for stay FP32 with casts
//! around them. `Cast` targets, `Constant`/`ConstantOfShape` values and If/Loop/Scan bodies are
//! updated with their graphs: an If output is 16-bit only when both branches compute it so.
//! A value whose element type is unknown (a branch shape inference skipped as dead, a capture
//! it could not type) is never made 16-bit: it cannot be cast, so its nodes stay FP32; body
//! inputs of Loop/Scan get their types from the node first so that bodies still convert.
//! With `keep_io_types` the model's inputs and outputs keep their types and casts sit at the
//! boundary; cast chains that cancel and casts of constants are folded afterwards.

mod bodies;
mod cleanup;
mod decide;
mod kernels;
mod rewrite;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_subgraphs;

use std::collections::{BTreeMap, HashMap};

use half::{bf16, f16};
use kiln_calibration::Ranges;
use kiln_compiler::ir::{Graph, Model};
use kiln_compiler::shape::Opsets;
use kiln_compiler::{DataType, Tensor};

pub use kernels::KernelTable;

/// Which 16-bit float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    F16,
    Bf16,
}

impl HalfKind {
    pub fn dtype(self) -> DataType {
        match self {
            HalfKind::F16 => DataType::F16,
            HalfKind::Bf16 => DataType::BF16,
        }
    }

    /// `fp16` or `bf16`, as decisions are written.
    pub fn name(self) -> &'static str {
        match self {
            HalfKind::F16 => "fp16",
            HalfKind::Bf16 => "bf16",
        }
    }
}

/// Where FP16 stops being safe, for range-aware conversion.
#[derive(Debug, Clone, Copy)]
pub struct RangeLimits {
    /// A tensor whose calibrated |x| exceeds this stays FP32 (FP16's max is 65504; the margin
    /// covers inputs larger than the calibration data).
    pub max_abs: f64,
    /// Inputs of reductions and normalizations (sums of squares, exponentials) above this.
    pub reduction_max_abs: f64,
    /// A tensor whose largest |x| is below this (FP16's smallest normal) would flush to zero.
    pub min_abs: f64,
}

impl Default for RangeLimits {
    fn default() -> RangeLimits {
        RangeLimits { max_abs: 65504.0 / 16.0, reduction_max_abs: 256.0, min_abs: 6.103_515_6e-5 }
    }
}

/// How to convert.
#[derive(Debug, Clone)]
pub struct HalfConfig {
    pub kind: HalfKind,
    /// Keep the model's inputs and outputs as they are, with casts at the boundary only.
    pub keep_io_types: bool,
    /// Node names or op types left in FP32.
    pub exclude: Vec<String>,
    /// Op types kept in FP32 besides [`BLOCKED_OPS`].
    pub block: Vec<String>,
    /// The 16-bit kernels of the runtime that will run the model; `None`: whatever the ONNX
    /// specification allows (FP16 on ONNX Runtime CPU, which casts around missing kernels).
    pub kernels: Option<&'static KernelTable>,
    pub limits: RangeLimits,
}

impl HalfConfig {
    pub fn new(kind: HalfKind) -> HalfConfig {
        HalfConfig {
            kind,
            keep_io_types: true,
            exclude: Vec::new(),
            block: Vec::new(),
            kernels: None,
            limits: RangeLimits::default(),
        }
    }
}

/// Numerically fragile ops kept in FP32 whatever their type constraints allow.
pub const BLOCKED_OPS: &[(&str, &str, &str)] = &[
    ("", "Range", "element count depends on exact arithmetic"),
    ("", "TopK", "ranking of near-equal scores"),
    ("", "NonMaxSuppression", "box overlap thresholds"),
    ("", "RoiAlign", "sampling coordinates"),
    ("", "MaxRoiPool", "pooling coordinates"),
    ("", "CumSum", "long sums"),
    ("", "RandomNormal", "random generator"),
    ("", "RandomUniform", "random generator"),
    ("", "RandomNormalLike", "random generator"),
    ("", "RandomUniformLike", "random generator"),
    ("", "Bernoulli", "random generator"),
    ("", "Multinomial", "random generator"),
    ("", "DFT", "long sums"),
    ("", "STFT", "long sums"),
    ("", "HannWindow", "window generator"),
    ("", "HammingWindow", "window generator"),
    ("", "BlackmanWindow", "window generator"),
    ("", "MelWeightMatrix", "filter bank generator"),
    ("", "Det", "products of many terms"),
    ("", "SoftmaxCrossEntropyLoss", "long sums of logs"),
    ("", "NegativeLogLikelihoodLoss", "long sums"),
    ("", "GridSample", "sampling coordinates"),
    ("", "AffineGrid", "sampling coordinates"),
    ("", "EyeLike", "generator whose type is an attribute (no 16-bit CPU kernel)"),
    ("", "MeanVarianceNormalization", "ONNX Runtime expands it into a body with FP32 constants"),
    ("", "QuantizeLinear", "quantization parameters need FP32"),
    ("", "DequantizeLinear", "quantization parameters need FP32"),
    ("", "DynamicQuantizeLinear", "quantization parameters need FP32"),
];

/// Whether a node must stay FP32 for a reason its op type alone does not give: a scatter that
/// reduces (ONNX Runtime's CPU provider has no 16-bit kernel for `add`/`mul`/`max`/`min`), or
/// a traditional-ML op (its attributes carry the input's type).
pub(crate) fn blocked_node(node: &kiln_compiler::ir::Node) -> Option<&'static str> {
    use kiln_compiler::ir::AttrLookup;
    if node.domain() == "ai.onnx.ml" {
        return Some("ai.onnx.ml attributes carry the input's type");
    }
    let scatter = node.domain().is_empty() && matches!(node.op_type.as_str(), "ScatterElements" | "ScatterND");
    if scatter && node.attr_str("reduction").is_some_and(|r| r != "none") {
        return Some("scatter with reduction: no 16-bit kernel");
    }
    None
}

/// Reductions and normalizations whose inputs must stay well inside FP16's range.
pub(crate) fn is_reduction(domain: &str, op: &str) -> bool {
    const OPS: &[&str] = &[
        "ReduceSum",
        "ReduceMean",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
        "LayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "SimplifiedLayerNormalization",
        "EmbedLayerNormalization",
        "RMSNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "MeanVarianceNormalization",
        "LpNormalization",
        "Softmax",
        "LogSoftmax",
    ];
    (domain.is_empty() || domain == "com.microsoft") && OPS.contains(&op)
}

/// What the conversion did.
#[derive(Debug, Clone, Default)]
pub struct HalfReport {
    /// Values whose element type changed (initializers included), in all graphs.
    pub tensors_converted: usize,
    pub initializers_converted: usize,
    /// Nodes computing in 16-bit.
    pub nodes_half: usize,
    /// Nodes kept in FP32, by reason.
    pub nodes_fp32: BTreeMap<String, usize>,
    pub casts_inserted: usize,
    /// Casts removed by folding (cancelling pairs, casts of constants, no-op casts).
    pub casts_folded: usize,
    /// `graph/node` → `fp16`, `bf16` or `fp32 (reason)`.
    pub decisions: BTreeMap<String, String>,
    /// FP32 initializers FP16 cannot hold: (name, max |value|).
    pub saturating_initializers: Vec<(String, f64)>,
    /// Whether calibrated ranges drove the decisions.
    pub range_checked: bool,
}

/// Why conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum HalfError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("tensor '{name}': {message}")]
    Tensor { name: String, message: String },
}

/// What every graph's conversion shares.
#[derive(Clone)]
pub(crate) struct Env<'a> {
    pub config: &'a HalfConfig,
    /// Every value name in the model: ONNX wants names unique across subgraphs too.
    pub names: &'a std::cell::RefCell<std::collections::HashSet<String>>,
    pub opsets: Opsets,
    /// Calibrated ranges (main graph only).
    pub ranges: Option<&'a Ranges>,
    pub is_main: bool,
}

impl Env<'_> {
    pub fn target(&self) -> DataType {
        self.config.kind.dtype()
    }

    /// A value name unused in `g` and in the whole model, derived from `base`; reserved.
    pub fn fresh_name(&self, g: &Graph, base: &str) -> String {
        fresh_name(self.names, g, base)
    }
}

/// A value name unused in `g` and among `names`, derived from `base`; reserved in `names`.
pub(crate) fn fresh_name(
    names: &std::cell::RefCell<std::collections::HashSet<String>>,
    g: &Graph,
    base: &str,
) -> String {
    let mut names = names.borrow_mut();
    let mut i = 0usize;
    loop {
        let candidate = if i == 0 { base.to_string() } else { format!("{base}_{i}") };
        if !names.contains(&candidate) && g.find_value(&candidate).is_none() {
            names.insert(candidate.clone());
            return candidate;
        }
        i += 1;
    }
}

/// A value of an enclosing graph, seen from a subgraph.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ScopeEntry {
    /// Element type before conversion.
    pub orig: Option<DataType>,
    /// Element type after conversion.
    pub storage: Option<DataType>,
    /// A sequence, optional or map: a subgraph's capture of it is often left untyped.
    pub non_tensor: bool,
}

pub(crate) type Scope = HashMap<String, ScopeEntry>;

/// The scope a subgraph of `g` sees: `scope` plus `g`'s values (`storage` overrides their
/// types after conversion; `None`: as declared).
pub(crate) fn child_scope(g: &Graph, scope: &Scope, storage: Option<&HashMap<String, DataType>>) -> Scope {
    let mut out = scope.clone();
    for (v, val) in g.values() {
        if val.name.is_empty()
            || matches!(val.def(), kiln_compiler::ir::ValueDef::Outer | kiln_compiler::ir::ValueDef::Detached)
        {
            continue;
        }
        let orig = decide::orig_dtype(g, v, scope);
        let storage = storage.and_then(|s| s.get(&val.name).copied()).or(orig);
        let non_tensor = decide::is_non_tensor(g, v, scope);
        out.insert(val.name.clone(), ScopeEntry { orig, storage, non_tensor });
    }
    out
}

/// The largest |x| of a float tensor (`None` for other types or unreadable data).
pub(crate) fn max_abs(t: &Tensor) -> Option<f64> {
    if !t.dtype().is_float() {
        return None;
    }
    let v = t.to_f64_vec().ok()?;
    Some(v.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs())))
}

/// `t` (FP32) in `to`: FP16 saturates to ±65504 instead of becoming infinite.
pub(crate) fn convert_tensor(t: &Tensor, to: DataType) -> Result<Tensor, String> {
    let v = t.to_vec::<f32>().map_err(|e| e.to_string())?;
    let dims = t.dims().to_vec();
    let r = match to {
        DataType::F16 => {
            let max = f32::from(f16::MAX);
            let h: Vec<f16> =
                v.iter().map(|&x| f16::from_f32(if x.is_finite() { x.clamp(-max, max) } else { x })).collect();
            Tensor::from_slice(dims, &h)
        }
        DataType::BF16 => Tensor::from_slice(dims, &v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>()),
        DataType::F32 => Ok(t.clone()),
        other => return Err(format!("cannot convert to {other}")),
    };
    r.map_err(|e| e.to_string())
}

/// Converts `model` in place. `ranges` (calibrated on the FP32 model's main graph) keep
/// tensors FP16 cannot hold in FP32; BF16 ignores them (it has FP32's range).
pub fn convert(model: &mut Model, config: &HalfConfig, ranges: Option<&Ranges>) -> Result<HalfReport, HalfError> {
    if model.graph.is_none() {
        return Err(HalfError::NoGraph);
    }
    kiln_compiler::shape::infer_model(model);
    let opsets = Opsets::from_model(model);
    if let Some(g) = model.graph.as_mut() {
        bodies::declare_body_inputs(g, &HashMap::new(), opsets.version(""));
    }
    let ranges = if config.kind == HalfKind::F16 { ranges } else { None };
    let mut all = std::collections::HashSet::new();
    if let Some(g) = model.graph.as_ref() {
        g.visit_graphs(&mut |sg| all.extend(sg.values().map(|(_, v)| v.name.clone())));
    }
    let names = std::cell::RefCell::new(all);
    let env = Env { config, names: &names, opsets, ranges, is_main: true };
    let mut report = HalfReport { range_checked: ranges.is_some(), ..HalfReport::default() };
    let g = model.graph.as_mut().ok_or(HalfError::NoGraph)?;
    if config.kind == HalfKind::F16 {
        report.saturating_initializers = saturating(g);
    }
    rewrite::convert_graph(g, &env, &Scope::new(), None, "main", &mut report)?;
    report.casts_folded = cleanup::fold_casts(g, &names);
    report.casts_inserted = report.casts_inserted.saturating_sub(report.casts_folded);
    Ok(report)
}

/// FP32 initializers and Constant values (every graph) whose |x| exceeds FP16's max.
fn saturating(g: &Graph) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    g.visit_graphs(&mut |sg| {
        for &v in sg.initializers() {
            if let Some(t) = sg.value(v).initializer().filter(|t| t.dtype() == DataType::F32)
                && let Some(m) = max_abs(t).filter(|&m| m > f64::from(f16::MAX))
            {
                out.push((sg.value(v).name.clone(), m));
            }
        }
        for (_, n) in sg.nodes() {
            use kiln_compiler::ir::AttrLookup;
            if n.is_onnx("Constant")
                && let Some(t) = n.attr_tensor("value").filter(|t| t.dtype() == DataType::F32)
                && let Some(m) = max_abs(t).filter(|&m| m > f64::from(f16::MAX))
            {
                let name = n.output(0).map(|o| sg.value(o).name.clone()).unwrap_or_default();
                out.push((name, m));
            }
        }
    });
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
