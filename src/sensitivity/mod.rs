//! Per-layer sensitivity and automatic fallback.
//!
//! The measurement: run the precision stage once to learn which nodes it lowers, then once per
//! lowered node with every *other* node left in its original precision ([`Mode::OnlyThis`]),
//! and measure what that one node does to the model's final outputs on the evaluation samples
//! (SQNR, cosine). A node is lowered together with what the stage lowers for it (its Q/DQ
//! pairs, its bias), so the measurement does not break what it measures. [`Mode::AllButThis`]
//! is the brute-force twin (everything lowered but that node), used to check the ranking.
//!
//! The fallback: with a tolerance to meet, the most sensitive nodes are kept in the original
//! precision, fewest first. Noise powers of independent layers add, so the ranking predicts
//! how many nodes must fall back; a short search along the ranking verifies it, each probe a
//! real run of the candidate against the original.

pub mod plot;

use std::collections::BTreeMap;
use std::path::Path;

use kiln_calibration::SharedSource;
use kiln_compiler::execute::load_session;
use kiln_compiler::ir::Model;
use kiln_compiler::metrics::{Accumulator, Metric, MetricsConfig, OutputMetrics, ToleranceSpec};
use kiln_compiler::runtime::{Executor, RuntimeError, Session, SessionConfig, Value};
use serde::Serialize;

use crate::pipeline::Precision;
use crate::stages::{StageContext, StageError, StageReport};

/// Which runs measure a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only this node lowered: the error it alone introduces.
    OnlyThis,
    /// Everything lowered but this node: the error removed by keeping it (leave-one-out).
    AllButThis,
}

/// What one node does to the outputs.
#[derive(Debug, Clone, Serialize)]
pub struct LayerError {
    pub node: String,
    pub op_type: String,
    /// The worst output's SQNR (dB) of the candidate against the original.
    pub sqnr_db: f64,
    /// The worst output's worst-sample cosine.
    pub cosine_min: f64,
    /// Relative noise power (`10^(-sqnr/10)`), the quantity that adds across layers.
    pub noise: f64,
}

/// A sensitivity measurement, nodes ranked most sensitive first.
#[derive(Debug, Clone, Serialize)]
pub struct SensitivityReport {
    pub precision: &'static str,
    pub mode: Mode,
    pub samples: usize,
    /// Every node lowered: the plain candidate.
    pub all_lowered: LayerError,
    pub layers: Vec<LayerError>,
}

/// Why sensitivity analysis failed.
#[derive(Debug, thiserror::Error)]
pub enum SensitivityError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{context}: {source}")]
    Runtime { context: String, source: RuntimeError },
    #[error("{0}")]
    Data(String),
}

/// The evaluation samples and the original's outputs on them, computed once.
pub struct Evaluator<'a> {
    executor: &'a dyn Executor,
    base_dir: Option<&'a Path>,
    session: SessionConfig,
    inputs: Vec<Vec<(String, Value)>>,
    /// The original's outputs, plus the logits of outputs that are softmax probabilities.
    reference: Vec<Vec<(String, Value)>>,
    /// Output → the value feeding the Softmax that produces it. Rankings measure noise there:
    /// a saturated softmax squashes a layer's error by how confident each sample is, which
    /// makes errors of different layers stop adding up; the logits keep them linear.
    logits: Vec<(String, String)>,
}

/// Outputs of the main graph produced by a Softmax, with the Softmax's input.
fn softmax_logits(model: &Model) -> Vec<(String, String)> {
    let Some(g) = model.main_graph() else { return Vec::new() };
    let mut out = Vec::new();
    for &v in g.outputs() {
        let Some(n) = g.value(v).producer() else { continue };
        let node = g.node(n);
        if node.op_type == "Softmax"
            && node.domain().is_empty()
            && let Some(x) = node.input(0)
        {
            out.push((g.value(v).name.clone(), g.value(x).name.clone()));
        }
    }
    out
}

/// A copy of `model` that also outputs the logits.
fn with_logits(model: &Model, logits: &[(String, String)]) -> Model {
    let mut m = model.clone();
    let names: Vec<String> = logits.iter().map(|(_, l)| l.clone()).collect();
    // A logit the candidate renamed or removed is simply not measured there.
    for name in names {
        let _ = kiln_compiler::execute::expose_values(&mut m, std::slice::from_ref(&name));
    }
    m
}

impl<'a> Evaluator<'a> {
    /// Runs `original` on up to `max_samples` samples of `eval`.
    pub fn new(
        executor: &'a dyn Executor,
        original: &Model,
        base_dir: Option<&'a Path>,
        eval: &SharedSource,
        max_samples: usize,
        session: SessionConfig,
    ) -> Result<Evaluator<'a>, SensitivityError> {
        let n = eval.len().min(max_samples.max(1));
        if n == 0 {
            return Err(SensitivityError::Data(format!("{}: no evaluation samples", eval.describe())));
        }
        let mut inputs = Vec::with_capacity(n);
        for i in 0..n {
            let sample = eval.read(i).map_err(|e| SensitivityError::Data(e.to_string()))?;
            inputs.push(sample.inputs.into_iter().map(|(k, t)| (k, Value::Tensor(t))).collect::<Vec<_>>());
        }
        let logits = softmax_logits(original);
        let mut s = load_session(executor, &with_logits(original, &logits), base_dir, &session)
            .map_err(|source| SensitivityError::Runtime { context: "loading the original".into(), source })?;
        let reference = run_all(s.as_mut(), &inputs, "the original")?;
        Ok(Evaluator { executor, base_dir, session, inputs, reference, logits })
    }

    pub fn samples(&self) -> usize {
        self.inputs.len()
    }

    /// Every float output's metrics of `candidate` against the original (the model's outputs
    /// only; the logits of softmax outputs are included under their own names).
    pub fn metrics(&self, candidate: &Model, what: &str) -> Result<Vec<(String, OutputMetrics)>, SensitivityError> {
        let mut s = load_session(self.executor, &with_logits(candidate, &self.logits), self.base_dir, &self.session)
            .map_err(|source| SensitivityError::Runtime { context: format!("loading {what}"), source })?;
        let got = run_all(s.as_mut(), &self.inputs, what)?;
        let mut accs: BTreeMap<String, Accumulator> = BTreeMap::new();
        for (r, c) in self.reference.iter().zip(&got) {
            for (name, rv) in r {
                let (Some(rt), Some(ct)) =
                    (rv.as_tensor(), c.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_tensor()))
                else {
                    continue;
                };
                if !rt.dtype().is_float() {
                    continue;
                }
                let acc = accs.entry(name.clone()).or_insert_with(|| Accumulator::new(MetricsConfig::default()));
                // Non-numeric outputs were filtered above; a length mismatch is the candidate's bug.
                acc.add(rt, ct).map_err(|e| SensitivityError::Data(format!("{what}: output `{name}`: {e}")))?;
            }
        }
        Ok(accs.into_iter().map(|(k, a)| (k, a.finish())).collect())
    }

    /// The worst output's SQNR and cosine of `candidate`, softmax outputs measured on their
    /// logits.
    pub fn layer_error(&self, candidate: &Model, node: &str, op_type: &str) -> Result<LayerError, SensitivityError> {
        let metrics = self.metrics(candidate, &format!("the candidate for {node}"))?;
        let measured: Vec<(String, OutputMetrics)> = metrics
            .iter()
            .filter(|(name, _)| {
                // A softmax output whose logits were measured is represented by them.
                !self.logits.iter().any(|(out, logit)| out == name && metrics.iter().any(|(n, _)| n == logit))
            })
            .cloned()
            .collect();
        Ok(worst(node, op_type, &measured))
    }

    /// Whether the outputs meet `budget` (the model's own outputs only).
    fn meets(&self, budget: &ToleranceSpec, metrics: &[(String, OutputMetrics)]) -> bool {
        let logit_only = |name: &str| self.logits.iter().any(|(out, l)| l == name && out != name);
        metrics
            .iter()
            .filter(|(name, _)| !logit_only(name))
            .all(|(name, m)| budget.evaluate(name, m).iter().all(|v| v.pass || v.value.is_none()))
    }
}

fn run_all(
    session: &mut dyn Session,
    inputs: &[Vec<(String, Value)>],
    what: &str,
) -> Result<Vec<Vec<(String, Value)>>, SensitivityError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            session
                .run(x, None)
                .map_err(|source| SensitivityError::Runtime { context: format!("{what} on sample {i}"), source })
        })
        .collect()
}

/// The worst output's SQNR and cosine, as one layer error.
fn worst(node: &str, op_type: &str, metrics: &[(String, OutputMetrics)]) -> LayerError {
    let sqnr = metrics.iter().filter_map(|(_, m)| m.get(Metric::SqnrDb)).fold(f64::INFINITY, f64::min);
    let cosine = metrics.iter().filter_map(|(_, m)| m.get(Metric::CosineMin)).fold(1.0, f64::min);
    LayerError {
        node: node.to_string(),
        op_type: op_type.to_string(),
        sqnr_db: sqnr,
        cosine_min: cosine,
        noise: if sqnr.is_finite() {
            10f64.powf(-sqnr / 10.0)
        } else if sqnr > 0.0 {
            0.0
        } else {
            f64::INFINITY
        },
    }
}

/// Ops that carry weights: the units of integer precisions. The ops around them (Relu, Add,
/// Reshape…) are quantized because their neighbours are; measured alone, leaving one of them
/// in float only breaks its neighbours' quantization, which says nothing about its own error.
const WEIGHTED_OPS: &[&str] = &["Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "Gather"];

/// The nodes a stage report says were lowered that are measured as units, in a stable order
/// (by name): for integer precisions the weighted ops, for FP16/BF16 every lowered node.
pub fn lowered_nodes(report: &StageReport, precision: &Precision, op_types: &BTreeMap<String, String>) -> Vec<String> {
    let integer = matches!(precision, Precision::Int8(_) | Precision::Int4(_));
    report
        .decisions
        .iter()
        .filter(|(_, how)| !how.starts_with("fp32") && !how.starts_with("float") && !how.starts_with("kept"))
        .filter(|(node, _)| !integer || op_types.get(*node).is_some_and(|op| WEIGHTED_OPS.contains(&op.as_str())))
        .map(|(node, _)| node.clone())
        .collect()
}

/// Op type of each node of the main graph, by name.
fn op_types(model: &Model) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(g) = model.main_graph() {
        for (_, n) in g.nodes() {
            if let Some(name) = &n.name {
                out.insert(name.clone(), n.op_type.clone());
            }
        }
    }
    out
}

/// Applies `precision` to a copy of `model` with `exclude` more nodes left alone.
pub fn candidate(
    model: &Model,
    precision: &Precision,
    exclude: &[String],
    cx: &StageContext,
) -> Result<(Model, Option<StageReport>), StageError> {
    let mut m = model.clone();
    let report = precision.excluding(exclude).apply(&mut m, cx)?;
    Ok((m, report))
}

/// Measures every lowered node. `model` is the graph the precision stage would get (after
/// graph optimization); `cx` should carry a fresh memo so that calibration runs once.
pub fn measure(
    model: &Model,
    precision: &Precision,
    cx: &StageContext,
    eval: &Evaluator<'_>,
    mode: Mode,
) -> Result<SensitivityReport, SensitivityError> {
    let (full, report) = candidate(model, precision, &[], cx)?;
    let ops = op_types(model);
    let lowered = report.as_ref().map(|r| lowered_nodes(r, precision, &ops)).unwrap_or_default();
    let all_lowered = eval.layer_error(&full, "(all lowered)", "")?;
    let progress = cx.progress.clone();
    let what = format!("sensitivity of {} nodes", lowered.len());
    let mut layers = progress.step(&what, Some(lowered.len() as u64), |p| {
        let mut layers = Vec::with_capacity(lowered.len());
        for node in &lowered {
            let exclude: Vec<String> = match mode {
                Mode::OnlyThis => lowered.iter().filter(|n| *n != node).cloned().collect(),
                Mode::AllButThis => vec![node.clone()],
            };
            let (m, _) = candidate(model, precision, &exclude, cx)?;
            let op = ops.get(node).cloned().unwrap_or_default();
            let mut e = eval.layer_error(&m, node, &op)?;
            if mode == Mode::AllButThis {
                // Leave-one-out: the node's importance is the noise that keeping it removes.
                e.noise = (all_lowered.noise - e.noise).max(0.0);
            }
            layers.push(e);
            p.tick(1);
        }
        Ok::<_, SensitivityError>(layers)
    })?;
    layers.sort_by(|a, b| b.noise.total_cmp(&a.noise).then_with(|| a.node.cmp(&b.node)));
    Ok(SensitivityReport { precision: precision.name(), mode, samples: eval.samples(), all_lowered, layers })
}

/// One verification run of the fallback search.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Nodes kept in the original precision (the first `fallback` of the ranking).
    pub fallback: usize,
    /// The noise the ranking predicted for this candidate.
    pub predicted_noise: f64,
    pub sqnr_db: f64,
    pub cosine_min: f64,
    pub pass: bool,
}

/// The outcome of `--accuracy-budget`.
#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    pub budget: String,
    pub met: bool,
    /// Nodes kept in the original precision, most sensitive first.
    pub nodes: Vec<String>,
    pub lowered: usize,
    pub probes: Vec<Probe>,
    pub sensitivity: SensitivityReport,
}

/// Keeps the most sensitive nodes in the original precision until `budget` holds, fewest
/// first: one measurement pass, then a search along the ranking starting at the count the
/// additive-noise model predicts, each probe verified by a real run. Returns the chosen model
/// (the best candidate even when the budget cannot be met: then everything falls back and
/// `met` is false).
pub fn fallback(
    model: &Model,
    precision: &Precision,
    cx: &StageContext,
    eval: &Evaluator<'_>,
    budget: &ToleranceSpec,
) -> Result<(Model, Option<StageReport>, Fallback), SensitivityError> {
    let sensitivity = measure(model, precision, cx, eval, Mode::OnlyThis)?;
    let ranked: Vec<String> = sensitivity.layers.iter().map(|l| l.node.clone()).collect();
    let total: f64 = sensitivity.layers.iter().map(|l| l.noise).sum();
    // Noise left after the first k fall back, by the additive model, scaled so that k = 0
    // predicts what the plain candidate measured.
    let scale = if total > 0.0 { sensitivity.all_lowered.noise / total } else { 1.0 };
    let predicted = |k: usize| sensitivity.layers[k..].iter().map(|l| l.noise).sum::<f64>() * scale;

    let mut probes: Vec<Probe> = Vec::new();
    let mut results: BTreeMap<usize, (Model, Option<StageReport>, bool)> = BTreeMap::new();
    let mut probe = |k: usize, probes: &mut Vec<Probe>| -> Result<bool, SensitivityError> {
        if let Some((_, _, pass)) = results.get(&k) {
            return Ok(*pass);
        }
        let (m, report) = candidate(model, precision, &ranked[..k], cx)?;
        let metrics = eval.metrics(&m, &format!("the candidate with {k} nodes kept"))?;
        let pass = eval.meets(budget, &metrics);
        let logit_only = |name: &str| eval.logits.iter().any(|(out, l)| l == name && out != name);
        let outputs: Vec<(String, OutputMetrics)> = metrics.into_iter().filter(|(n, _)| !logit_only(n)).collect();
        let e = worst("", "", &outputs);
        probes.push(Probe {
            fallback: k,
            predicted_noise: predicted(k),
            sqnr_db: e.sqnr_db,
            cosine_min: e.cosine_min,
            pass,
        });
        results.insert(k, (m, report, pass));
        Ok(pass)
    };

    let n = ranked.len();
    // The smallest k in [lo, hi] that passes, knowing `hi` passes (or is n) and `lo - 1` fails.
    let mut hi = n;
    if probe(0, &mut probes)? {
        hi = 0;
    } else {
        let mut lo = 1;
        // The first probe: where the additive model says the noise falls to the plain
        // candidate's noise times the share the budget allows. Without a noise budget, the
        // model's guess is the k that halves the noise per step until the budget holds.
        let mut guess = 1usize;
        while guess < n && predicted(guess) > sensitivity.all_lowered.noise * 0.25 {
            guess += 1;
        }
        let mut k = guess.clamp(1, n.max(1));
        loop {
            if probe(k, &mut probes)? {
                hi = k;
                break;
            }
            lo = k + 1;
            if k >= n {
                break;
            }
            k = (k * 2).min(n);
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if probe(mid, &mut probes)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
    }
    let chosen = hi.min(n);
    let met = results.get(&chosen).is_some_and(|(_, _, p)| *p);
    let (m, report, _) = match results.remove(&chosen) {
        Some(r) => r,
        None => {
            let (m, r) = candidate(model, precision, &ranked[..chosen], cx)?;
            (m, r, false)
        }
    };
    let fb = Fallback {
        budget: budget.to_string(),
        met,
        nodes: ranked[..chosen].to_vec(),
        lowered: n - chosen,
        probes,
        sensitivity,
    };
    Ok((m, report, fb))
}
