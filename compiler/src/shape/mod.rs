//! Shape and type inference for the standard ONNX ops and the contrib ops Kiln emits.
//!
//! One table maps `(domain, op_type)` to an inference function. The driver walks each graph
//! in dependency order, feeds every function its node, the types of its inputs and the
//! *known values* of small integer inputs (so `Shape → Gather → Concat → Reshape` chains give
//! static or symbolic shapes), and merges what comes back with what the file declared:
//! a declared type never loses information, and a conflict keeps the declared type and is
//! reported. Nothing here fails: what cannot be inferred stays unknown.

mod broadcast;
mod known;
mod merge;
mod ops;

use std::collections::{BTreeMap, HashMap};

pub use broadcast::{broadcast_dim, broadcast_shapes};
pub use known::{Known, KnownData, MAX_KNOWN_ELEMS};
pub use merge::{TypeMerge, merge_types};

use crate::dtype::DataType;
use crate::ir::{
    AttrLookup, AttrValue, Dim, Graph, Model, Node, NodeId, TensorType, Type, TypeKind, ValueDef, ValueId,
};
use crate::pass::{Changed, Pass, PassContext, PassError};

/// The ONNX opset assumed when a model imports none for the default domain.
pub const DEFAULT_ONNX_OPSET: i64 = 23;

/// Why an inference function gave up on a node; the driver reports it as `skipped`.
pub type InferError = String;

/// What an inference function returns: one entry per node output (`None`: nothing known).
pub type InferResult = Result<Vec<Option<Type>>, InferError>;

/// An inference function of the op table.
pub type InferFn = fn(&mut InferCtx<'_>) -> InferResult;

/// Opset versions by normalized domain (`""` is the default ONNX domain).
#[derive(Debug, Clone, Default)]
pub struct Opsets {
    versions: HashMap<String, i64>,
}

impl Opsets {
    pub fn from_model(model: &Model) -> Opsets {
        let mut versions = HashMap::new();
        for o in &model.opset_import {
            if let Some(v) = o.version {
                versions.insert(o.domain().to_string(), v);
            }
        }
        Opsets { versions }
    }

    /// The version imported for `domain`; the default ONNX domain falls back to
    /// [`DEFAULT_ONNX_OPSET`], other domains to 1.
    pub fn version(&self, domain: &str) -> i64 {
        self.versions.get(domain).copied().unwrap_or(if domain.is_empty() { DEFAULT_ONNX_OPSET } else { 1 })
    }
}

/// A declared shape that disagrees with the inferred one. The declared type was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub graph: String,
    pub node: String,
    pub value: String,
    pub declared: String,
    pub inferred: String,
}

/// What inference did over a model.
#[derive(Debug, Clone, Default)]
pub struct InferReport {
    /// Nodes visited, subgraphs included.
    pub nodes: usize,
    /// Node outputs whose type gained information.
    pub refined: usize,
    /// Nodes an inference function gave up on: (graph, node, reason).
    pub skipped: Vec<(String, String, String)>,
    /// Op types with no inference function, with how many nodes use them.
    pub unknown_ops: BTreeMap<String, usize>,
    pub conflicts: Vec<Conflict>,
}

impl InferReport {
    pub fn changed(&self) -> bool {
        self.refined > 0
    }
}

/// Types and known values of enclosing-scope values a subgraph reads, by name.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    entries: HashMap<String, (Option<Type>, Option<Known>)>,
}

impl Scope {
    fn get(&self, name: &str) -> Option<&(Option<Type>, Option<Known>)> {
        self.entries.get(name)
    }
}

/// Shared state of one inference run.
struct Env {
    opsets: Opsets,
    report: InferReport,
}

/// Everything an inference function may look at for one node.
pub struct InferCtx<'a> {
    /// Mutable only so that control-flow ops can infer (and annotate) their bodies.
    pub node: &'a mut Node,
    /// One entry per input slot; `None` for an omitted input or an unknown type.
    pub inputs: Vec<Option<Type>>,
    /// Known values of inputs (small integer tensors, shape vectors, small float constants).
    pub known: Vec<Option<Known>>,
    /// The opset version of the node's domain.
    pub opset: i64,
    /// Known values of outputs, set by the function.
    pub out_known: Vec<Option<Known>>,
    scope: Scope,
    env: &'a mut Env,
    graph_path: String,
}

impl InferCtx<'_> {
    /// The tensor type of input `i`.
    pub fn tensor(&self, i: usize) -> Option<&TensorType> {
        self.inputs.get(i)?.as_ref()?.as_tensor()
    }

    /// The element type code of input `i`.
    pub fn elem(&self, i: usize) -> Option<i32> {
        self.tensor(i)?.elem_type
    }

    pub fn dtype(&self, i: usize) -> Option<DataType> {
        self.elem(i).and_then(DataType::from_onnx)
    }

    pub fn shape(&self, i: usize) -> Option<&[Dim]> {
        self.tensor(i)?.shape.as_deref()
    }

    pub fn rank(&self, i: usize) -> Option<usize> {
        self.shape(i).map(<[Dim]>::len)
    }

    /// Whether input slot `i` is present (not omitted).
    pub fn has_input(&self, i: usize) -> bool {
        self.node.input(i).is_some()
    }

    pub fn known(&self, i: usize) -> Option<&Known> {
        self.known.get(i)?.as_ref()
    }

    /// The known value of input `i` as plain integers, if every element is a number.
    pub fn known_ints(&self, i: usize) -> Option<Vec<i64>> {
        self.known(i)?.to_ints()
    }

    /// The known value of input `i` as floats.
    pub fn known_floats(&self, i: usize) -> Option<Vec<f64>> {
        self.known(i)?.to_floats()
    }

    pub fn num_outputs(&self) -> usize {
        self.node.outputs().len()
    }

    pub fn set_known(&mut self, output: usize, k: Known) {
        if let Some(slot) = self.out_known.get_mut(output) {
            *slot = Some(k);
        }
    }

    /// An integer list given by attribute `attr` before opset `since` and by input `input`
    /// from then on. The other source is used when the expected one is absent.
    pub fn ints_param(&self, attr: &str, input: usize, since: i64) -> Param<Vec<i64>> {
        let from_attr = || self.node.attr_ints(attr).map(<[i64]>::to_vec);
        let from_input = || -> Param<Vec<i64>> {
            if !self.has_input(input) {
                return Param::Absent;
            }
            match self.known_ints(input) {
                Some(v) => Param::Known(v),
                None => Param::Unknown,
            }
        };
        if self.opset >= since {
            match from_input() {
                Param::Absent => from_attr().map_or(Param::Absent, Param::Known),
                p => p,
            }
        } else {
            match from_attr() {
                Some(v) => Param::Known(v),
                None => from_input(),
            }
        }
    }

    /// Infers the subgraph held by attribute `attr` with its inputs bound to `bound`, and
    /// returns the types of its outputs (`None` when the attribute holds no graph).
    /// With `write` false the body is left untouched (a trial run on a copy, used to find
    /// loop-carried types before annotating the body with them).
    pub fn infer_subgraph(&mut self, attr: &str, bound: &[Option<Type>], write: bool) -> Option<Vec<Option<Type>>> {
        self.infer_subgraph_known(attr, bound, write).map(|(t, _)| t)
    }

    /// Like [`InferCtx::infer_subgraph`], with the known values of the body's outputs.
    pub fn infer_subgraph_known(&mut self, attr: &str, bound: &[Option<Type>], write: bool) -> Option<BodyOutputs> {
        let label = self.node.op_type.clone();
        let path = format!("{}/{label}.{attr}", self.graph_path);
        let g = self.node.attributes.iter_mut().find(|a| a.name == attr).and_then(|a| match &mut a.value {
            AttrValue::Graph(g) => Some(g.as_mut()),
            _ => None,
        })?;
        if write {
            Some(infer_graph_in(g, bound, &self.scope, self.env, &path))
        } else {
            let mut copy = g.clone();
            let mut scratch = Env { opsets: self.env.opsets.clone(), report: InferReport::default() };
            Some(infer_graph_in(&mut copy, bound, &self.scope, &mut scratch, &path))
        }
    }
}

/// The types and known values of a body's outputs.
pub type BodyOutputs = (Vec<Option<Type>>, Vec<Option<Known>>);

/// An operand that comes from an attribute or an input, depending on the opset.
#[derive(Debug, Clone, PartialEq)]
pub enum Param<T> {
    /// Neither given: the op's default applies.
    Absent,
    Known(T),
    /// Given by an input whose value is not known.
    Unknown,
}

/// A tensor type as a [`Type`].
pub fn tensor_type(elem: Option<i32>, shape: Option<Vec<Dim>>) -> Option<Type> {
    Some(Type::tensor(TensorType { elem_type: elem, shape }))
}

/// The inference function for an op, if the table has one.
pub fn lookup(domain: &str, op_type: &str) -> Option<InferFn> {
    ops::table().get(domain_key(domain))?.get(op_type).copied()
}

/// Whether the table knows `(domain, op_type)`.
pub fn is_supported(domain: &str, op_type: &str) -> bool {
    lookup(domain, op_type).is_some()
}

fn domain_key(d: &str) -> &str {
    if d == "ai.onnx" { "" } else { d }
}

/// Infers types over the whole model (main graph and subgraphs) and writes them to node
/// outputs. Model-local functions are left alone: their bodies are untyped templates.
pub fn infer_model(model: &mut Model) -> InferReport {
    let opsets = Opsets::from_model(model);
    let Some(g) = model.graph.as_mut() else { return InferReport::default() };
    infer_graph(g, &opsets)
}

/// Infers types over one top-level graph.
pub fn infer_graph(g: &mut Graph, opsets: &Opsets) -> InferReport {
    let mut env = Env { opsets: opsets.clone(), report: InferReport::default() };
    let scope = Scope::default();
    infer_graph_in(g, &[], &scope, &mut env, "main");
    env.report
}

/// The type of an initializer's tensor.
fn tensor_type_of(t: &crate::tensor::Tensor) -> Type {
    Type::tensor(TensorType::with_dims(t.dtype(), t.dims()))
}

/// Nodes in dependency order; nodes on cycles keep their relative order at the end.
fn topo_order(g: &Graph) -> Vec<NodeId> {
    let order: Vec<NodeId> = g.nodes().map(|(id, _)| id).collect();
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut pending = vec![0usize; order.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
    for (i, &id) in order.iter().enumerate() {
        for v in g.node(id).inputs().iter().flatten() {
            if let Some(p) = g.value(*v).producer().and_then(|p| pos.get(&p))
                && *p != i
            {
                pending[i] += 1;
                users[*p].push(i);
            }
        }
    }
    // Already sorted (the usual case): keep the file's order.
    let sorted = order.iter().enumerate().all(|(i, &id)| {
        g.node(id)
            .inputs()
            .iter()
            .flatten()
            .all(|v| g.value(*v).producer().and_then(|p| pos.get(&p)).is_none_or(|&p| p <= i))
    });
    if sorted {
        return order;
    }
    let mut ready: std::collections::VecDeque<usize> = (0..order.len()).filter(|&i| pending[i] == 0).collect();
    let mut done = vec![false; order.len()];
    let mut out = Vec::with_capacity(order.len());
    while let Some(i) = ready.pop_front() {
        done[i] = true;
        out.push(order[i]);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    out.extend(order.iter().enumerate().filter(|(i, _)| !done[*i]).map(|(_, &n)| n));
    out
}

/// Infers one graph. `bound` gives types for the graph's inputs by position (subgraph
/// bodies); `scope` the enclosing values it may capture. Returns the output types and the
/// output known values.
fn infer_graph_in(g: &mut Graph, bound: &[Option<Type>], scope: &Scope, env: &mut Env, path: &str) -> BodyOutputs {
    let n = g.value_count();
    let mut types: Vec<Option<Type>> = vec![None; n];
    let mut knowns: Vec<Option<Known>> = vec![None; n];
    let input_pos: HashMap<ValueId, usize> = g.inputs().iter().enumerate().map(|(i, &v)| (v, i)).collect();
    for (id, v) in g.values() {
        let i = id.index();
        match v.def() {
            ValueDef::Initializer(t) => {
                types[i] = merge_types(v.ty.as_ref(), Some(&tensor_type_of(t))).ty;
                knowns[i] = Known::from_tensor(t);
            }
            ValueDef::Outer => {
                if let Some((ty, k)) = scope.get(&v.name) {
                    types[i] = merge_types(v.ty.as_ref(), ty.as_ref()).ty;
                    knowns[i] = k.clone();
                } else {
                    types[i] = v.ty.clone();
                }
            }
            _ => {
                let b = input_pos.get(&id).and_then(|&p| bound.get(p)).and_then(Option::as_ref);
                types[i] = merge_types(v.ty.as_ref(), b).ty;
            }
        }
    }

    for id in topo_order(g) {
        env.report.nodes += 1;
        let node = g.node(id);
        let label = node.label(id);
        let domain = node.domain().to_string();
        let op_type = node.op_type.clone();
        let Some(f) = lookup(&domain, &op_type) else {
            let key = if domain.is_empty() { op_type } else { format!("{domain}.{op_type}") };
            *env.report.unknown_ops.entry(key).or_insert(0) += 1;
            continue;
        };
        let inputs: Vec<Option<Type>> =
            node.inputs().iter().map(|v| v.and_then(|v| types[v.index()].clone())).collect();
        let known: Vec<Option<Known>> =
            node.inputs().iter().map(|v| v.and_then(|v| knowns[v.index()].clone())).collect();
        let outputs: Vec<Option<ValueId>> = node.outputs().to_vec();
        // Values of this graph (or further out) that the node's subgraphs capture.
        let mut sub_scope = Scope::default();
        if node.subgraphs().next().is_some() {
            for name in Graph::captured_names(node) {
                let entry = match g.find_value(&name) {
                    Some(v) => (types[v.index()].clone(), knowns[v.index()].clone()),
                    None => match scope.get(&name) {
                        Some(e) => e.clone(),
                        None => continue,
                    },
                };
                sub_scope.entries.insert(name, entry);
            }
        }
        let opset = env.opsets.version(&domain);
        let nout = outputs.len();
        let graph_path = path.to_string();
        let (result, out_known) = run_fn(f, g.node_mut(id), inputs, known, opset, nout, sub_scope, env, graph_path);
        let inferred = match result {
            Ok(t) => t,
            Err(reason) => {
                env.report.skipped.push((path.to_string(), label, reason));
                continue;
            }
        };
        for (i, out) in outputs.iter().enumerate() {
            let Some(v) = *out else { continue };
            let inf = inferred.get(i).cloned().flatten();
            let declared = g.value(v).ty.clone();
            let m = merge_types(declared.as_ref(), inf.as_ref());
            if let Some(why) = m.conflict {
                env.report.conflicts.push(Conflict {
                    graph: path.to_string(),
                    node: label.clone(),
                    value: g.value(v).name.clone(),
                    declared: declared.as_ref().map_or_else(|| "?".into(), ToString::to_string),
                    inferred: format!("{} ({why})", inf.as_ref().map_or_else(|| "?".into(), ToString::to_string)),
                });
            }
            if m.ty != declared && m.ty.is_some() {
                env.report.refined += 1;
                g.value_mut(v).ty = m.ty.clone();
            }
            types[v.index()] = m.ty;
            knowns[v.index()] = out_known.get(i).cloned().flatten();
        }
    }

    let outs = g.outputs().iter().map(|v| types[v.index()].clone()).collect();
    let outk = g.outputs().iter().map(|v| knowns[v.index()].clone()).collect();
    (outs, outk)
}

#[allow(clippy::too_many_arguments)]
fn run_fn(
    f: InferFn,
    node: &mut Node,
    inputs: Vec<Option<Type>>,
    known: Vec<Option<Known>>,
    opset: i64,
    nout: usize,
    scope: Scope,
    env: &mut Env,
    graph_path: String,
) -> (InferResult, Vec<Option<Known>>) {
    let mut cx = InferCtx { node, inputs, known, opset, out_known: vec![None; nout], scope, env, graph_path };
    let r = f(&mut cx);
    (r, cx.out_known)
}

/// The shape-inference pass: writes inferred types to node outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferShapes;

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        "infer-shapes"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let report = infer_model(model);
        let rule = "infer-shapes";
        for c in &report.conflicts {
            cx.missed(
                rule,
                format!("{} in {}", c.node, c.graph),
                format!(
                    "value '{}': declared {}, inferred {}; kept the declared type",
                    c.value, c.declared, c.inferred
                ),
            );
        }
        for (graph, node, why) in &report.skipped {
            cx.skipped(rule, format!("{node} in {graph}"), why.clone());
        }
        for (op, count) in &report.unknown_ops {
            cx.skipped(
                rule,
                op.clone(),
                format!("no shape function for {op} ({count} node(s)); outputs left as declared"),
            );
        }
        Ok(Changed::from_bool(report.changed()))
    }
}

/// Whether a value type is a tensor of known rank; used by passes that need shapes.
pub fn has_rank(ty: Option<&Type>) -> bool {
    matches!(ty.map(|t| &t.kind), Some(TypeKind::Tensor(TensorType { shape: Some(_), .. })))
}

#[cfg(test)]
mod tests;
