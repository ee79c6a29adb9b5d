//! Collection: run the model over the samples with the observed tensors exposed as outputs,
//! and feed what comes back to the observers.
//!
//! Tensors are observed in groups of at most [`CollectOptions::group_size`]: one session per
//! group, each returning only its group's tensors, so memory is bounded by a group's
//! activations for [`CollectOptions::batch`] samples, never by the whole model times the data.
//! The data is read once per group (it streams from disk).
//!
//! Every sample runs as its own inference, whatever the batch size: stacking samples into one
//! inference would change which kernels compute each value (and so its last bits) and would
//! count batch-independent tensors once per batch instead of once per sample. The batch is the
//! number of samples whose outputs are observed together, in parallel. Sessions run with graph
//! optimizations disabled, so each observed value is computed by its own node, as the graph
//! the quantizer sees would compute it, whichever tensors share its group.

use std::path::Path;

use kiln_compiler::ir::{Model, ValueDef};
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
    /// Observed tensors per session.
    pub group_size: usize,
    /// Samples observed together.
    pub batch: usize,
    pub session: SessionConfig,
}

impl Default for CollectOptions {
    fn default() -> CollectOptions {
        CollectOptions {
            method: Method::MinMax,
            tensors: None,
            group_size: 64,
            batch: 8,
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

/// Every float activation of the main graph: runtime inputs, then node outputs in node order
/// (outputs of `Constant` nodes are weights, not activations). Types come from shape inference
/// on a copy of the model.
pub fn float_activations(model: &Model) -> Vec<String> {
    let mut m = model.clone();
    kiln_compiler::shape::infer_model(&mut m);
    let Some(g) = m.main_graph() else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for v in g.runtime_inputs() {
        if is_observed_float(g.tensor_type(v).and_then(|t| t.dtype())) && seen.insert(v) {
            out.push(g.value(v).name.clone());
        }
    }
    for (_, node) in g.nodes() {
        if node.is_onnx("Constant") {
            continue;
        }
        for v in node.outputs().iter().flatten() {
            if is_observed_float(g.tensor_type(*v).and_then(|t| t.dtype())) && seen.insert(*v) {
                out.push(g.value(*v).name.clone());
            }
        }
    }
    out
}

/// A copy of the model whose only outputs are `names`.
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
/// gives. `base_dir` is where the model's external data lives.
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
        None => float_activations(model),
    };
    // Graph inputs are observed from the samples themselves; node outputs through sessions.
    let mut from_inputs: Vec<(String, TensorObserver)> = Vec::new();
    let mut from_nodes: Vec<(String, TensorObserver)> = Vec::new();
    for name in names {
        if from_inputs.iter().chain(&from_nodes).any(|(n, _)| n == &name) {
            continue;
        }
        let v = g
            .find_value(&name)
            .ok_or_else(|| CalibError::Model(format!("no value named `{name}` in the main graph")))?;
        let observer = TensorObserver::new(&options.method);
        match g.value(v).def() {
            ValueDef::Input => from_inputs.push((name, observer)),
            ValueDef::Node { .. } => from_nodes.push((name, observer)),
            _ => return Err(CalibError::Model(format!("`{name}` is a constant or not computed by the main graph"))),
        }
    }

    let group_size = options.group_size.max(1);
    let batch = options.batch.max(1);
    let groups: Vec<&mut [(String, TensorObserver)]> = from_nodes.chunks_mut(group_size).collect();
    let passes = groups.len().max(1);
    let mut groups = groups.into_iter();
    for pass in 0..passes {
        let group = groups.next();
        let mut session = match &group {
            Some(group) => {
                let names: Vec<String> = group.iter().map(|(n, _)| n.clone()).collect();
                let m = group_model(model, &names)?;
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

/// Observes, in parallel over tensors, each sample's value of each tensor (samples in order,
/// which only the moving average cares about).
fn observe_all<'a>(
    observers: &mut [(String, TensorObserver)],
    value: impl Fn(usize, usize) -> Option<&'a Tensor> + Sync,
    samples: usize,
) -> Result<(), CalibError> {
    observers.par_iter_mut().enumerate().try_for_each(|(j, (name, o))| {
        for s in 0..samples {
            let t =
                value(j, s).ok_or_else(|| CalibError::Model(format!("the runtime returned no tensor for `{name}`")))?;
            o.observe(name, t)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DimSpec, Synthetic, SyntheticSpec};
    use kiln_compiler::ir::{Dim, Graph, NodeSpec, OpsetImport, TensorType, Type};
    use kiln_compiler::runtime::OrtExecutor;

    /// y = Relu(x) * 2, with a symbolic length: x[n].
    fn tiny() -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(Type::tensor(TensorType::new(DataType::F32, Some(vec![Dim::symbol("n")])))));
        let two = g.add_initializer("two", std::sync::Arc::new(Tensor::scalar(2.0f32)));
        let r = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["r"]));
        let r = g.node(r).output(0).unwrap();
        let y = g.add_node(NodeSpec::new("Mul").inputs([r, two]).outputs(["y"]));
        let y = g.node(y).output(0).unwrap();
        g.push_output(y);
        Model {
            ir_version: Some(8),
            opset_import: vec![OpsetImport { domain: None, version: Some(17) }],
            graph: Some(g),
            ..Model::default()
        }
    }

    #[test]
    fn activations_are_listed_and_observed() {
        let model = tiny();
        assert_eq!(float_activations(&model), ["x", "r", "y"]);
        let inputs = model_inputs(&model).unwrap();
        assert_eq!(inputs[0].dims, Some(vec![DimSpec::Symbol("n".into())]));
        let mut spec = SyntheticSpec { samples: 5, seed: 3, ..Default::default() };
        spec.dims.insert("n".into(), 100);
        let src = Synthetic::new(&inputs, &spec).unwrap();
        let options = CollectOptions { group_size: 1, batch: 2, ..Default::default() };
        let r = collect(&OrtExecutor::new(), &model, None, &src, &options).unwrap();
        assert_eq!(r.samples, 5);
        let (xlo, xhi) = r.range("x").unwrap();
        assert!(xlo < -0.9 && xhi > 0.9);
        assert_eq!(r.range("r").unwrap(), (0.0, xhi));
        assert_eq!(r.range("y").unwrap(), (0.0, 2.0 * xhi));
        let one_group = CollectOptions { group_size: 64, batch: 5, ..Default::default() };
        assert_eq!(collect(&OrtExecutor::new(), &model, None, &src, &one_group).unwrap(), r);
    }

    #[test]
    fn unknown_tensors_are_refused() {
        let model = tiny();
        let src = Synthetic::new(&model_inputs(&model).unwrap(), &SyntheticSpec::default()).unwrap();
        for bad in ["nope", "two"] {
            let options = CollectOptions { tensors: Some(vec![bad.into()]), ..Default::default() };
            let err = collect(&OrtExecutor::new(), &model, None, &src, &options).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
