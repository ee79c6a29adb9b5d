//! Collection: run the model over the samples with the observed tensors exposed as outputs,
//! and feed what comes back to the observers.
//!
//! Tensors are observed in groups: one session per group, each returning only its group's
//! tensors, so memory is bounded by a group's activations for [`CollectOptions::batch`]
//! samples, never by the whole model times the data. A group holds at most
//! [`CollectOptions::group_size`] tensors whose estimated bytes for a batch (inferred shapes,
//! symbolic input dimensions bound to the first sample's) fit [`CollectOptions::memory_budget`]:
//! a model whose activations fit is observed in one session and one pass over the data (each
//! session costs a model serialization, a runtime load and a full pass). The data is read once
//! per group (it streams from disk).
//!
//! Every sample runs as its own inference, whatever the batch size: stacking samples into one
//! inference would change which kernels compute each value (and so its last bits) and would
//! count batch-independent tensors once per batch instead of once per sample. The batch is the
//! number of samples whose outputs are observed together, in parallel. Sessions run with graph
//! optimizations disabled, so each observed value is computed by its own node, as the graph
//! the quantizer sees would compute it, whichever tensors share its group.

use std::path::Path;

use std::collections::{BTreeMap, BTreeSet};

use kiln_compiler::ir::{Graph, Model, ValueDef, ValueId};
use kiln_compiler::runtime::{ErrorKind, Executor, OptLevel, RuntimeError, SessionConfig, Value};
use kiln_compiler::{DataType, Tensor};
use rayon::prelude::*;

use crate::data::{DataError, InputSpec, SampleSource, model_inputs, validate};
use crate::observe::{Method, NotFloat, TensorObserver};
use crate::ranges::{Ranges, TensorRange};

/// How to collect.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    pub method: Method,
    /// Tensors to observe; `None`: every float activation ([`float_activations`]).
    pub tensors: Option<Vec<String>>,
    /// With `tensors` unset, only the float activations named here are observed: the ones the
    /// caller can use (a quantizer asks for the ranges of its handled nodes' tensors only;
    /// every other exposed output would cost each run a copy).
    pub candidates: Option<BTreeSet<String>>,
    /// Most observed tensors per session.
    pub group_size: usize,
    /// Most bytes of observed tensors a session returns for one batch (estimated).
    pub memory_budget: u64,
    /// Samples observed together.
    pub batch: usize,
    /// Bin every tensor even when the method reads only the extremes (MinMax), so the ranges
    /// can later be re-derived with another method or merged with histogram ranges (ranges
    /// files). Off, MinMax costs a fraction of the time.
    pub keep_histograms: bool,
    pub session: SessionConfig,
}

/// Default [`CollectOptions::memory_budget`].
pub const DEFAULT_MEMORY_BUDGET: u64 = 64 << 20;

impl Default for CollectOptions {
    fn default() -> CollectOptions {
        CollectOptions {
            method: Method::MinMax,
            tensors: None,
            candidates: None,
            group_size: usize::MAX,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            // Observation runs in parallel over tensors, so one sample at a time costs no
            // speed, leaves the whole budget to one session's tensors, and holds the fewest
            // runtime outputs at once (on the cnn fixture, 52 MB peak against 85 MB at 4).
            batch: 1,
            keep_histograms: false,
            session: SessionConfig { optimization: OptLevel::Disabled, ..SessionConfig::default() },
        }
    }
}

/// Why calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    NotFloat(#[from] NotFloat),
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Load(RuntimeError),
    #[error("{origin}: {source}")]
    Run { origin: String, source: RuntimeError },
}

impl CalibError {
    /// Whether the caller fed something wrong (data, tensor names) or the runtime failed.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CalibError::Data(_) | CalibError::NotFloat(_) | CalibError::Model(_) => ErrorKind::BadInput,
            CalibError::Load(e) | CalibError::Run { source: e, .. } => e.kind(),
        }
    }
}

fn is_observed_float(d: Option<DataType>) -> bool {
    matches!(d, Some(DataType::F32 | DataType::F16 | DataType::BF16 | DataType::F64))
}

/// Every float activation: runtime inputs of the main graph, then node outputs in node order
/// (outputs of `Constant` nodes are weights, not activations), then the node outputs of If
/// branches and Loop bodies, depth first (observed through [`crate::lift`]). Types come from
/// shape inference on a copy of the model.
pub fn float_activations(model: &Model) -> Vec<String> {
    let mut m = model.clone();
    kiln_compiler::shape::infer_model(&mut m);
    let Some(g) = m.main_graph() else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for v in g.runtime_inputs() {
        if is_observed_float(g.tensor_type(v).and_then(|t| t.dtype())) && seen.insert(g.value(v).name.clone()) {
            out.push(g.value(v).name.clone());
        }
    }
    node_outputs(g, &mut seen, &mut out);
    let mut nested = Vec::new();
    subgraph_outputs(g, &mut seen, &mut nested);
    out.extend(nested);
    out
}

fn node_outputs(g: &Graph, seen: &mut std::collections::HashSet<String>, out: &mut Vec<String>) {
    for (_, node) in g.nodes() {
        if node.is_onnx("Constant") {
            continue;
        }
        for v in node.outputs().iter().flatten() {
            if is_observed_float(g.tensor_type(*v).and_then(|t| t.dtype())) && seen.insert(g.value(*v).name.clone()) {
                out.push(g.value(*v).name.clone());
            }
        }
    }
}

/// Float node outputs of the If branches and Loop bodies nested in `g`.
fn subgraph_outputs(g: &Graph, seen: &mut std::collections::HashSet<String>, out: &mut Vec<String>) {
    for (_, node) in g.nodes() {
        if !(node.is_onnx("If") || node.is_onnx("Loop")) {
            continue;
        }
        for sub in node.subgraphs() {
            node_outputs(sub, seen, out);
            subgraph_outputs(sub, seen, out);
        }
    }
}

/// A copy of the model whose only outputs are `names` (main-graph names of the run model).
fn group_model(model: &Model, names: &[String]) -> Result<Model, CalibError> {
    let mut m = model.clone();
    let g = m.graph.as_mut().ok_or_else(|| CalibError::Model("the model has no graph".into()))?;
    let ids = names
        .iter()
        .map(|n| g.find_value(n).ok_or_else(|| CalibError::Model(format!("no value named `{n}` in the main graph"))))
        .collect::<Result<Vec<_>, _>>()?;
    g.set_outputs(ids);
    Ok(m)
}

/// Runs the model over every sample of `source` and returns the ranges `options.method`
/// gives. `base_dir` is where the model's external data lives. Values inside If branches and
/// Loop bodies are observed through a copy of the model that lifts them to the main graph
/// ([`crate::lift`]).
pub fn collect(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    source: &dyn SampleSource,
    options: &CollectOptions,
) -> Result<Ranges, CalibError> {
    let inputs = model_inputs(model)?;
    let g = model.main_graph().ok_or_else(|| CalibError::Model("the model has no graph".into()))?;
    let names = match &options.tensors {
        Some(t) => t.clone(),
        None => {
            let all = float_activations(model);
            match &options.candidates {
                Some(wanted) => all.into_iter().filter(|n| wanted.contains(n)).collect(),
                None => all,
            }
        }
    };
    // Names the main graph does not compute are looked for in its subgraphs.
    let inner: BTreeSet<String> = names
        .iter()
        .filter(|n| g.find_value(n).is_none_or(|v| matches!(g.value(v).def(), ValueDef::Outer | ValueDef::Detached)))
        .cloned()
        .collect();
    let (run_model, lifted) = if inner.is_empty() {
        (None, BTreeMap::new())
    } else {
        let mut m = model.clone();
        kiln_compiler::shape::infer_model(&mut m);
        let lifted = crate::lift::lift_subgraph_values(&mut m, &inner);
        (Some(m), lifted)
    };
    let run_model = run_model.as_ref().unwrap_or(model);
    // Graph inputs are observed from the samples themselves; node outputs through sessions,
    // each under the name the run model returns it by.
    let mut from_inputs: Vec<(String, TensorObserver)> = Vec::new();
    let mut from_nodes: Vec<(String, TensorObserver)> = Vec::new();
    let mut run_names: Vec<String> = Vec::new();
    let mut listed = BTreeSet::new();
    for name in names {
        if !listed.insert(name.clone()) {
            continue;
        }
        let observer = TensorObserver::for_method(&options.method, options.keep_histograms);
        if let Some(outer) = lifted.get(&name) {
            run_names.push(outer.clone());
            from_nodes.push((name, observer));
            continue;
        }
        let def = g.find_value(&name).map(|v| g.value(v).def());
        match def {
            Some(ValueDef::Input) => from_inputs.push((name, observer)),
            Some(ValueDef::Node { .. }) => {
                run_names.push(name.clone());
                from_nodes.push((name, observer));
            }
            // Listed by default but not liftable (untyped, or a Loop value of varying shape):
            // left unobserved, so the quantizer keeps its nodes in float.
            None if options.tensors.is_none() => {}
            None => {
                return Err(CalibError::Model(format!(
                    "no value named `{name}` in the main graph or in an If branch or Loop body it can be observed in"
                )));
            }
            _ => return Err(CalibError::Model(format!("`{name}` is a constant or not computed by the main graph"))),
        }
    }

    let batch = options.batch.max(1);
    let sizes = match source.is_empty() {
        true => vec![None; run_names.len()],
        false => estimated_bytes(run_model, &run_names, &source.read(0)?),
    };
    let lengths = group_lengths(&sizes, options.group_size.max(1), options.memory_budget / batch as u64);
    let mut groups: Vec<&mut [(String, TensorObserver)]> = Vec::with_capacity(lengths.len());
    let mut group_names: Vec<&[String]> = Vec::with_capacity(lengths.len());
    let (mut rest, mut rest_names) = (&mut from_nodes[..], &run_names[..]);
    for &n in &lengths {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        let (head_names, tail_names) = rest_names.split_at(n);
        groups.push(head);
        group_names.push(head_names);
        (rest, rest_names) = (tail, tail_names);
    }
    let passes = groups.len().max(1);
    let mut groups = groups.into_iter();
    let mut group_names = group_names.into_iter();
    for pass in 0..passes {
        let group = groups.next();
        let mut session = match &group {
            Some(_) => {
                let names: Vec<String> = group_names.next().map(<[String]>::to_vec).unwrap_or_default();
                let m = group_model(run_model, &names)?;
                Some((
                    kiln_compiler::execute::load_session(executor, &m, base_dir, &options.session)
                        .map_err(CalibError::Load)?,
                    names,
                ))
            }
            None => None,
        };
        let mut group = group;
        for start in (0..source.len()).step_by(batch) {
            let end = (start + batch).min(source.len());
            let mut samples = Vec::with_capacity(end - start);
            for i in start..end {
                let s = source.read(i)?;
                validate(&inputs, &s)?;
                samples.push(s);
            }
            let mut outputs: Vec<Vec<(String, Value)>> = Vec::with_capacity(samples.len());
            if let Some((session, names)) = &mut session {
                for s in &samples {
                    let feed: Vec<(String, Value)> =
                        s.inputs.iter().map(|(n, t)| (n.clone(), Value::Tensor(t.clone()))).collect();
                    let out = session
                        .run(&feed, Some(names))
                        .map_err(|e| CalibError::Run { origin: s.origin.clone(), source: e })?;
                    outputs.push(out);
                }
            }
            if let Some(group) = &mut group {
                observe_all(group, |j, s| outputs[s][j].1.as_tensor(), samples.len())?;
            }
            if pass == 0 {
                let input_index: Vec<usize> = from_inputs
                    .iter()
                    .map(|(n, _)| inputs.iter().position(|i: &InputSpec| &i.name == n).unwrap_or(usize::MAX))
                    .collect();
                let find = |j: usize, s: usize| -> Option<&Tensor> {
                    let name = &inputs.get(input_index[j])?.name;
                    samples[s].inputs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
                };
                observe_all(&mut from_inputs, find, samples.len())?;
            }
        }
    }

    let tensors = from_inputs
        .into_iter()
        .chain(from_nodes)
        .map(|(name, o)| (name, TensorRange::from_observer(options.method, o)))
        .collect();
    Ok(Ranges::new(source.len() as u64, tensors))
}

/// Bytes per sample of each named value of the main graph, from the types shape inference
/// gives a copy of the model whose inputs take `sample`'s shapes; `None` where unknown.
fn estimated_bytes(model: &Model, names: &[String], sample: &crate::data::Sample) -> Vec<Option<u64>> {
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else { return vec![None; names.len()] };
    // Declared types may hold -1 for a dynamic dimension (exporters write that), which would
    // conflict with the inferred sizes and win: node outputs are inferred afresh.
    let computed: Vec<ValueId> =
        g.values().filter(|(_, v)| matches!(v.def(), ValueDef::Node { .. })).map(|(id, _)| id).collect();
    for v in computed {
        g.value_mut(v).ty = None;
    }
    for v in g.inputs().to_vec() {
        let Some((_, t)) = sample.inputs.iter().find(|(n, _)| *n == g.value(v).name) else { continue };
        let ty = kiln_compiler::ir::TensorType::with_dims(t.dtype(), t.dims());
        g.value_mut(v).ty = Some(kiln_compiler::ir::Type::tensor(ty));
    }
    kiln_compiler::shape::infer_model(&mut m);
    let Some(g) = m.main_graph() else { return vec![None; names.len()] };
    let bytes = |name: &String| -> Option<u64> {
        let t = g.tensor_type(g.find_value(name)?)?;
        let count = t.concrete_dims()?.iter().try_fold(1u64, |c, &d| c.checked_mul(d as u64))?;
        t.dtype()?.storage_bytes(count)
    };
    names.iter().map(bytes).collect()
}

/// Consecutive group lengths: at most `max_count` tensors and `budget` bytes each (a tensor
/// larger than the budget gets a group of its own). A tensor of unknown size counts as the
/// largest known one; with none known, as a 64th of the budget.
fn group_lengths(sizes: &[Option<u64>], max_count: usize, budget: u64) -> Vec<usize> {
    let unknown = sizes.iter().flatten().copied().max().unwrap_or(budget / 64);
    let mut out = Vec::new();
    let (mut count, mut bytes) = (0usize, 0u64);
    for size in sizes {
        let b = size.unwrap_or(unknown);
        if count > 0 && (count == max_count || bytes.saturating_add(b) > budget) {
            out.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes = bytes.saturating_add(b);
    }
    if count > 0 {
        out.push(count);
    }
    out
}

/// Below this many bytes of values, one batch is observed on the calling thread: waking the
/// pool for each sample of a small model costs more than observing it (Silero VAD, a few KiB
/// per tensor: observing in turn took ~1.5 ms off a 50 ms static INT8 run).
const PARALLEL_OBSERVE_BYTES: usize = 1 << 20;

/// Observes each sample's value of each tensor, in parallel over tensors when the batch is
/// large (samples in order, which only the moving average cares about).
fn observe_all<'a>(
    observers: &mut [(String, TensorObserver)],
    value: impl Fn(usize, usize) -> Option<&'a Tensor> + Sync,
    samples: usize,
) -> Result<(), CalibError> {
    let bytes: usize = (0..observers.len())
        .flat_map(|j| (0..samples).map(move |s| (j, s)))
        .filter_map(|(j, s)| value(j, s).and_then(Tensor::bytes).map(|b| b.len()))
        .sum();
    if bytes < PARALLEL_OBSERVE_BYTES {
        return observers
            .iter_mut()
            .enumerate()
            .try_for_each(|(j, (name, o))| observe_samples(j, name, o, &value, samples));
    }
    observers.par_iter_mut().enumerate().try_for_each(|(j, (name, o))| observe_samples(j, name, o, &value, samples))
}

/// Observes the samples' values of tensor `j`.
fn observe_samples<'a>(
    j: usize,
    name: &str,
    o: &mut TensorObserver,
    value: &impl Fn(usize, usize) -> Option<&'a Tensor>,
    samples: usize,
) -> Result<(), CalibError> {
    for s in 0..samples {
        let t = value(j, s).ok_or_else(|| CalibError::Model(format!("the runtime returned no tensor for `{name}`")))?;
        // Empty: a subgraph value on a run that took the other branch (or a genuinely empty
        // tensor); either way there is nothing to observe.
        if !t.is_empty() {
            o.observe(name, t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;
