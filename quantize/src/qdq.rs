//! Materialization: one generic pass turns a [`QuantPlan`] and calibrated ranges into
//! QuantizeLinear/DequantizeLinear nodes.
//!
//! The form is the one ONNX Runtime's QDQ transformers fuse into integer kernels: weights stored
//! already quantized (an INT8 initializer → DequantizeLinear, never float → Q → DQ); biases as
//! int32 with scale `s_in · s_w`; one QuantizeLinear right after each quantized activation (so
//! the producer's only consumer is its Q) and one DequantizeLinear per consumer (a node unit
//! owns its DQs). Models below opset 13 get `com.microsoft` Q/DQ, which take an axis at any
//! opset, instead of an opset upgrade that would rewrite unrelated ops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{Attribute, Graph, Model, NodeId, NodeSpec, OpsetImport, ValueDef, ValueId};

use crate::handlers::constant;
use crate::plan::{GraphPlan, InputRole, OutputRole, Placement, QuantPlan};
use crate::weights::{QParams, WeightError, activation_params, quantize_bias, quantize_constant, quantize_weight};

/// Why materialization failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("no calibrated range for `{0}`")]
    MissingRange(String),
    #[error("`{tensor}`: {source}")]
    Weight { tensor: String, source: WeightError },
    #[error("{0}")]
    Model(String),
}

/// What materialization inserted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QdqReport {
    pub quantize_nodes: usize,
    pub dequantize_nodes: usize,
    pub weights: usize,
    pub biases: usize,
    pub absorbed: usize,
}

/// The domain Q/DQ nodes take in this model: ONNX from opset 13 (per-axis), else
/// `com.microsoft` (registered in the model's opset imports).
pub fn qdq_domain(model: &mut Model) -> Option<String> {
    if model.opset("").unwrap_or(0) >= 13 {
        return None;
    }
    ensure_opset(model, "com.microsoft", 1);
    Some("com.microsoft".into())
}

/// Adds `domain` at `version` to the model's opset imports when missing.
pub fn ensure_opset(model: &mut Model, domain: &str, version: i64) {
    if model.opset(domain).is_none() {
        model.opset_import.push(OpsetImport { domain: Some(domain.into()), version: Some(version) });
    }
}

/// Materializes the plan. `range(name)` gives a tensor's calibrated `(min, max)`.
pub fn materialize(
    model: &mut Model,
    plan: &QuantPlan,
    range: &dyn Fn(&str) -> Option<(f64, f64)>,
) -> Result<QdqReport, QuantizeError> {
    let domain = qdq_domain(model);
    let g = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    let mut m = Materializer { domain, plan, range, report: QdqReport::default() };
    m.graph(g, &plan.graph)?;
    Ok(m.report)
}

/// A weight stored quantized: its initializers and parameters, shared by its consumers.
#[derive(Clone)]
struct Stored {
    q: ValueId,
    scale: ValueId,
    zero_point: ValueId,
    params: QParams,
}

struct Materializer<'a> {
    domain: Option<String>,
    plan: &'a QuantPlan,
    range: &'a dyn Fn(&str) -> Option<(f64, f64)>,
    report: QdqReport,
}

impl Materializer<'_> {
    fn graph(&mut self, g: &mut Graph, gp: &GraphPlan) -> Result<(), QuantizeError> {
        for (&(id, index), sub_plan) in &gp.subgraphs {
            if g.get_node(id).is_none() {
                continue;
            }
            if let Some(sub) = g.node_mut(id).subgraphs_mut().nth(index) {
                self.graph(sub, sub_plan)?;
            }
        }
        // Absorbed activations: the producer writes the activation's output itself, so the
        // output's range, its name and every reader (graph outputs, subgraphs) carry over.
        for (&relu, &x) in &gp.absorbed {
            let Some(y) = g.get_node(relu).and_then(|n| n.output(0)) else { continue };
            let ValueDef::Node { node: producer, output } = g.value(x).def().clone() else { continue };
            g.remove_node(relu);
            g.bind_output(producer, output, y);
            self.report.absorbed += 1;
        }
        let params = self.activation_params(g, gp)?;
        self.weights(g, gp, &params)?;
        let readers = match self.plan.config.placement {
            Placement::OutputsAndInputs => None,
            Placement::WeightedInputs => Some(quantized_reads(gp)),
        };
        for (&v, p) in &params {
            self.quantize_activation(g, v, p, readers.as_ref());
        }
        Ok(())
    }

    /// Parameters of every activation the plan quantizes: producers first (node order), so an
    /// output's own range or shared input parameters win over a consumer's view.
    fn activation_params(&self, g: &Graph, gp: &GraphPlan) -> Result<BTreeMap<ValueId, QParams>, QuantizeError> {
        let config = &self.plan.config;
        let from_range = |v: ValueId| -> Result<QParams, QuantizeError> {
            let name = g.value(v).name.clone();
            let (lo, hi) = (self.range)(&name).ok_or(QuantizeError::MissingRange(name))?;
            Ok(activation_params(lo, hi, config.activation, config.symmetric_activations))
        };
        let mut params: BTreeMap<ValueId, QParams> = BTreeMap::new();
        for (id, node) in g.nodes() {
            let Some(marks) = gp.nodes.get(&id) else { continue };
            for &(i, role) in &marks.inputs {
                if let (InputRole::Activation, Some(v)) = (role, node.input(i))
                    && !params.contains_key(&v)
                {
                    params.insert(v, from_range(v)?);
                }
            }
            for &(o, role) in &marks.outputs {
                let Some(v) = node.output(o) else { continue };
                let p = match role {
                    OutputRole::Activation => from_range(v)?,
                    OutputRole::SameAsInput(i) => {
                        let src = node.input(i).and_then(|x| params.get(&x)).cloned();
                        match src {
                            Some(p) => p,
                            None => from_range(v)?,
                        }
                    }
                };
                params.insert(v, p);
            }
        }
        Ok(params)
    }

    /// Stores weights and biases quantized, each behind its own DequantizeLinear.
    fn weights(
        &mut self,
        g: &mut Graph,
        gp: &GraphPlan,
        params: &BTreeMap<ValueId, QParams>,
    ) -> Result<(), QuantizeError> {
        let mut stored: BTreeMap<(ValueId, Option<usize>), Stored> = BTreeMap::new();
        let mut originals: Vec<ValueId> = Vec::new();
        for (&id, marks) in &gp.nodes {
            let mut weight_params: BTreeMap<usize, QParams> = BTreeMap::new();
            for &(i, role) in &marks.inputs {
                // Constants quantized like activations are keyed apart from weights (axis None)
                // by a sentinel axis that no tensor has.
                let (axis, as_activation) = match role {
                    InputRole::Weight { axis } => (axis, false),
                    InputRole::Constant => (Some(usize::MAX), true),
                    _ => continue,
                };
                let Some(v) = g.node(id).input(i) else { continue };
                let name = g.value(v).name.clone();
                let key = (v, axis);
                if let std::collections::btree_map::Entry::Vacant(slot) = stored.entry(key) {
                    let t =
                        constant(g, v).ok_or_else(|| QuantizeError::Model(format!("`{name}` is not a constant")))?;
                    let config = &self.plan.config;
                    let quantized = if as_activation {
                        quantize_constant(&t, config.activation, config.symmetric_activations)
                    } else {
                        quantize_weight(&t, axis)
                    };
                    let (q, p) = quantized.map_err(|source| QuantizeError::Weight { tensor: name.clone(), source })?;
                    let qv = g.add_initializer(g.fresh_name(&format!("{name}_quantized")), Arc::new(q));
                    let (s, z) = self.params_initializers(g, &name, &p);
                    slot.insert(Stored { q: qv, scale: s, zero_point: z, params: p });
                    self.report.weights += 1;
                }
                let Stored { q: qv, scale: s, zero_point: z, params: p } = stored[&key].clone();
                let dq = self.dequantize(g, id, qv, s, z, p.axis, &name);
                g.set_input(id, i, Some(dq));
                weight_params.insert(i, p);
                originals.push(v);
            }
            for &(i, role) in &marks.inputs {
                let InputRole::Bias { input, weight } = role else { continue };
                let node = g.node(id);
                let (Some(b), Some(x)) = (node.input(i), node.input(input)) else { continue };
                let name = g.value(b).name.clone();
                let s_in =
                    params.get(&x).map(|p| p.scale[0]).ok_or_else(|| QuantizeError::MissingRange(name.clone()))?;
                let w = weight_params
                    .get(&weight)
                    .ok_or_else(|| QuantizeError::Model(format!("bias `{name}` has no quantized weight")))?;
                let t = constant(g, b).ok_or_else(|| QuantizeError::Model(format!("`{name}` is not a constant")))?;
                let (q, scales) = quantize_bias(&t, s_in, w)
                    .map_err(|source| QuantizeError::Weight { tensor: name.clone(), source })?;
                let per_channel = w.axis.is_some();
                let qv = g.add_initializer(g.fresh_name(&format!("{name}_quantized")), Arc::new(q));
                let scale = if per_channel {
                    Tensor::from_slice(vec![scales.len()], &scales).map_err(|e| QuantizeError::Model(e.to_string()))?
                } else {
                    Tensor::scalar(scales[0])
                };
                let zeros = vec![0i32; if per_channel { scales.len() } else { 1 }];
                let zp = if per_channel {
                    Tensor::from_slice(vec![zeros.len()], &zeros).map_err(|e| QuantizeError::Model(e.to_string()))?
                } else {
                    Tensor::scalar(0i32)
                };
                let s = g.add_initializer(g.fresh_name(&format!("{name}_scale")), Arc::new(scale));
                let z = g.add_initializer(g.fresh_name(&format!("{name}_zero_point")), Arc::new(zp));
                let dq = self.dequantize(g, id, qv, s, z, per_channel.then_some(0), &name);
                g.set_input(id, i, Some(dq));
                originals.push(b);
                self.report.biases += 1;
            }
        }
        remove_unused_constants(g, &originals);
        Ok(())
    }

    fn params_initializers(&self, g: &mut Graph, name: &str, p: &QParams) -> (ValueId, ValueId) {
        let s = g.add_initializer(g.fresh_name(&format!("{name}_scale")), Arc::new(p.scale_tensor()));
        let z = g.add_initializer(g.fresh_name(&format!("{name}_zero_point")), Arc::new(p.zero_point_tensor()));
        (s, z)
    }

    /// A DequantizeLinear of `q` placed just before `consumer`; returns its output.
    #[allow(clippy::too_many_arguments)]
    fn dequantize(
        &mut self,
        g: &mut Graph,
        consumer: NodeId,
        q: ValueId,
        s: ValueId,
        z: ValueId,
        axis: Option<usize>,
        base: &str,
    ) -> ValueId {
        let out = g.fresh_name(&format!("{base}_dequantized"));
        let mut spec = NodeSpec::new("DequantizeLinear").name(out.clone()).inputs([q, s, z]).outputs([out]);
        if let Some(d) = &self.domain {
            spec = spec.domain(d.clone());
        }
        if let Some(a) = axis {
            spec = spec.attr(Attribute::int("axis", a as i64));
        }
        let n = g.insert_node_before(consumer, spec);
        self.report.dequantize_nodes += 1;
        g.node(n).output(0).unwrap_or(q)
    }

    /// Q right after the definition of `v`, then one DQ per consumer. A graph output keeps its
    /// name on the last DQ (the producer's float output is renamed). With `readers`, only those
    /// (node, input) slots read `v` quantized; other consumers and a graph output keep the float
    /// tensor, and no Q is made when no slot reads it quantized.
    fn quantize_activation(
        &mut self,
        g: &mut Graph,
        v: ValueId,
        p: &QParams,
        readers: Option<&BTreeSet<(NodeId, usize)>>,
    ) {
        let name = g.value(v).name.clone();
        let producer = g.value(v).producer();
        let anchor_first = g.nodes().next().map(|(id, _)| id);
        if let Some(r) = readers
            && !g.value(v).uses().iter().any(|u| r.contains(&(u.node, u.input)))
        {
            return;
        }
        // Read by name (a graph output, or a subgraph's capture): the name goes to the last DQ,
        // so that no reader keeps the float tensor and the runtime can fuse the producer.
        let is_output = readers.is_none() && (g.is_output(v) || is_captured(g, &name));
        let def = g.value(v).def().clone();
        if is_output && !matches!(def, ValueDef::Node { .. }) {
            return;
        }
        let (s, z) = self.params_initializers(g, &name, p);
        let mut src = v;
        if let (true, ValueDef::Node { node, output }) = (is_output, def) {
            // Rename: the producer writes a fresh value, the named reads become the DQ's.
            let float = g.add_outer(g.fresh_name(&format!("{name}_float")));
            g.value_mut(float).ty = g.value(v).ty.clone();
            g.bind_output(node, output, float);
            g.replace_uses(v, float);
            src = float;
        }
        let q_out = g.fresh_name(&format!("{name}_quantized"));
        let mut spec = NodeSpec::new("QuantizeLinear").name(q_out.clone()).inputs([src, s, z]).outputs([q_out]);
        if let Some(d) = &self.domain {
            spec = spec.domain(d.clone());
        }
        let uses: Vec<_> = g
            .value(src)
            .uses()
            .iter()
            .filter(|u| readers.is_none_or(|r| r.contains(&(u.node, u.input))))
            .copied()
            .collect();
        let q = match (producer, anchor_first) {
            (Some(p), _) => g.insert_node_after(p, spec),
            (None, Some(first)) => g.insert_node_before(first, spec),
            (None, None) => g.add_node(spec),
        };
        self.report.quantize_nodes += 1;
        let Some(qv) = g.node(q).output(0) else { return };
        let mut uses = uses;
        uses.sort();
        for u in uses {
            let dq = self.dequantize(g, u.node, qv, s, z, None, &name);
            g.set_input(u.node, u.input, Some(dq));
        }
        if is_output {
            let tmp = g.fresh_name(&format!("{name}_dequantized"));
            let mut spec = NodeSpec::new("DequantizeLinear").name(name.clone()).inputs([qv, s, z]).outputs([tmp]);
            if let Some(d) = &self.domain {
                spec = spec.domain(d.clone());
            }
            let dq = g.insert_node_after(q, spec);
            g.bind_output(dq, 0, v);
            self.report.dequantize_nodes += 1;
        }
    }
}

/// The (node, input) slots the plan reads quantized: activation inputs of quantized nodes.
fn quantized_reads(gp: &GraphPlan) -> BTreeSet<(NodeId, usize)> {
    let mut out = BTreeSet::new();
    for (&id, marks) in &gp.nodes {
        for &(i, role) in &marks.inputs {
            if role == InputRole::Activation {
                out.insert((id, i));
            }
        }
    }
    out
}

/// Drops constants (initializers or Constant nodes) that lost their last use.
pub fn remove_unused_constants(g: &mut Graph, candidates: &[ValueId]) {
    let mut dead_inits = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for &v in candidates {
        if !seen.insert(v) || !g.value(v).uses().is_empty() || g.is_output(v) || is_captured(g, &g.value(v).name) {
            continue;
        }
        match g.value(v).def().clone() {
            ValueDef::Initializer(_) => dead_inits.push(v),
            ValueDef::Node { node, .. } if g.node(node).is_onnx("Constant") => {
                g.remove_node(node);
            }
            _ => {}
        }
    }
    g.remove_initializers(&dead_inits);
}

/// Whether a subgraph of some node reads `name` from this graph.
pub fn is_captured(g: &Graph, name: &str) -> bool {
    g.nodes().any(|(_, n)| n.subgraphs().next().is_some() && Graph::captured_names(n).iter().any(|c| c == name))
}
