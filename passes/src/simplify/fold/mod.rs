//! `fold-constants`: nodes whose inputs are all constant are evaluated once, and their results
//! become initializers.
//!
//! Element moves, integer arithmetic and exact casts (the shape computations exporters leave)
//! are evaluated here ([`host`]); `Shape`/`Size` of a value whose shape is fully declared too.
//! Every other foldable node of a graph is put into one small model (constants as its
//! initializers, the values read by the rest of the graph as its outputs) that ONNX Runtime
//! runs once, so folding is exact for every op it runs; ONNX Runtime is started only when
//! such a node exists. If the batch fails, nodes are evaluated one by one and those that fail
//! stay. Never folded: ops of unknown domains, random ops,
//! `Dropout`, quantization ops (folding `DequantizeLinear` would undo quantized weights), ops
//! with subgraphs, sequence and optional producers, and results above the size limit.

mod host;

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_compiler::execute::load_session;
use kiln_compiler::ir::{AttrLookup, Graph, Model, NodeId, NodeSpec, OpsetImport, ValueDef, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};
use kiln_compiler::runtime::{Executor, OptLevel, OrtExecutor, RuntimeError, SessionConfig, Value};
use kiln_compiler::tensor::Tensor;

use super::common::{
    Scope, as_i64s, captured, constant_of, describe, has_subgraphs, is_pinned, is_random, is_used, known_domain, label,
    prune_value_info, shape_of, skip_without_initializers, visit_with_scope,
};

const RULE: &str = "fold-constants";

/// Constants of enclosing graphs at least this large are not folded into subgraphs.
const SHARED_CONSTANT_BYTES: u64 = 1024;

/// Default limit on the elements of one folded result.
pub const DEFAULT_FOLD_LIMIT: u64 = 1_000_000;

/// Node-by-node evaluation after a failed batch is bounded: each node costs a session.
const FALLBACK_LIMIT: usize = 256;

/// Default-domain ops that are never folded (see the module documentation).
const NEVER_FOLD: &[&str] = &[
    "Constant",
    "Dropout",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "SequenceEmpty",
    "SequenceConstruct",
    "SequenceInsert",
    "SequenceErase",
    "SplitToSequence",
    "Optional",
    "Resize",
    "Upsample",
    "OneHot",
];

/// Ops whose result can be far larger than their inputs: folded only when the result size is
/// known to be within the limit before evaluation.
const GENERATORS: &[&str] = &["ConstantOfShape", "Expand", "Tile", "Range", "Pad"];

/// Evaluates constant subexpressions with ONNX Runtime and stores the results as initializers.
pub struct FoldConstants {
    max_elements: u64,
    executor: Arc<dyn Executor>,
}

impl Default for FoldConstants {
    fn default() -> Self {
        FoldConstants::new()
    }
}

impl FoldConstants {
    /// Folds with ONNX Runtime and the default size limit.
    pub fn new() -> FoldConstants {
        FoldConstants { max_elements: DEFAULT_FOLD_LIMIT, executor: Arc::new(OrtExecutor::new()) }
    }

    /// Results with more elements than this stay computed at run time.
    pub fn max_elements(mut self, n: u64) -> FoldConstants {
        self.max_elements = n;
        self
    }

    /// Evaluates with another executor (tests use one that is missing its library).
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> FoldConstants {
        self.executor = executor;
        self
    }
}

/// What a batch model needs from the model it folds.
struct ModelMeta {
    ir_version: Option<i64>,
    opset_import: Vec<OpsetImport>,
    /// Whether the executor runs, found out the first time a graph needs it.
    runtime: OnceCell<Result<(), String>>,
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        if skip_without_initializers(model, RULE, cx) {
            return Ok(Changed::No);
        }
        let meta = ModelMeta {
            ir_version: model.ir_version,
            opset_import: model.opset_import.clone(),
            runtime: OnceCell::new(),
        };
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, scope, path| {
            changed |= self.fold_graph(g, scope, &meta, path, cx);
        });
        Ok(Changed::from_bool(changed))
    }
}

/// A node's place in the fold plan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Evaluated by the executor.
    Batch,
    /// Computed here: `Shape`/`Size` of a declared shape, or by [`host::evaluate`].
    Native,
}

impl FoldConstants {
    fn session_config() -> SessionConfig {
        SessionConfig {
            intra_threads: Some(1),
            optimization: OptLevel::Disabled,
            deterministic: true,
            ..SessionConfig::default()
        }
    }

    /// Whether the executor can run at all (without it, only what [`host`] computes folds).
    fn probe(&self) -> Result<(), RuntimeError> {
        kiln_compiler::execute::load_probe_session(self.executor.as_ref())
    }

    fn fold_graph(&self, g: &mut Graph, scope: &Scope, meta: &ModelMeta, path: &str, cx: &mut PassContext) -> bool {
        let captured = captured(g);
        let mut plan: Vec<(NodeId, Plan)> = Vec::new();
        let mut planned: HashSet<NodeId> = HashSet::new();
        // Values computed here (native shapes) or by earlier planned nodes.
        let mut native: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
        let mut pending: HashSet<ValueId> = HashSet::new();
        for id in g.node_ids() {
            let Some(n) = g.get_node(id) else { continue };
            if !known_domain(n) || is_random(n) || has_subgraphs(n) {
                continue;
            }
            if n.domain().is_empty() && NEVER_FOLD.contains(&n.op_type.as_str()) {
                continue;
            }
            let is_const = |v: ValueId| native.contains_key(&v) || constant_of(g, v, scope).is_some();
            let all_const = n.inputs().iter().flatten().all(|&v| is_const(v) || pending.contains(&v));
            if !all_const {
                if let Some(t) = native_shape(g, id, scope)
                    && let Some(out) = n.output(0)
                {
                    native.insert(out, Arc::new(t));
                    plan.push((id, Plan::Native));
                    planned.insert(id);
                }
                continue;
            }
            // Folding here a large constant of an enclosing graph would copy it into this
            // subgraph (once per branch reading it): the model would grow. Leave it shared.
            if let Some(big) = n.inputs().iter().flatten().find(|&&v| {
                matches!(g.value(v).def(), ValueDef::Outer)
                    && scope.get(&g.value(v).name).is_some_and(|t| t.byte_size() >= SHARED_CONSTANT_BYTES)
            }) {
                cx.missed(
                    RULE,
                    label(path, g, id),
                    format!("reads '{}' of an enclosing graph; folding would copy it here", g.value(*big).name),
                );
                continue;
            }
            if n.is_onnx("Identity") && n.output(0).is_none_or(|o| !is_pinned(g, o, &captured)) {
                // A copy of a constant: eliminate-no-ops forwards its readers instead.
                continue;
            }
            if n.domain().is_empty() && GENERATORS.contains(&n.op_type.as_str()) {
                let direct = n.inputs().iter().flatten().all(|&v| is_const(v));
                match direct.then(|| generated_elements(g, id, scope, &native)).flatten() {
                    Some(count) if count <= self.max_elements => {}
                    Some(count) => {
                        cx.skipped(RULE, label(path, g, id), format!("result would have {count} elements"));
                        continue;
                    }
                    None => continue,
                }
            }
            let known = |v: ValueId| native.get(&v).cloned().or_else(|| constant_of(g, v, scope));
            let host_inputs: Option<Vec<Option<Arc<Tensor>>>> =
                n.inputs().iter().map(|i| i.map_or(Some(None), |v| known(v).map(Some))).collect();
            if let Some(inputs) = host_inputs {
                match host::evaluate(n, &inputs, self.max_elements) {
                    host::Host::Done(results) => {
                        for (out, t) in n.outputs().iter().zip(results) {
                            if let Some(out) = out {
                                native.insert(*out, Arc::new(t));
                            }
                        }
                        plan.push((id, Plan::Native));
                        planned.insert(id);
                        continue;
                    }
                    host::Host::Refused(why) => {
                        cx.skipped(RULE, label(path, g, id), why);
                        continue;
                    }
                    host::Host::Runtime => {}
                }
            }
            pending.extend(n.outputs().iter().flatten().copied());
            plan.push((id, Plan::Batch));
            planned.insert(id);
        }
        if plan.is_empty() {
            return false;
        }

        // Values the rest of the graph reads: those are the results to keep.
        let mut boundary: Vec<ValueId> = Vec::new();
        for &(id, _) in &plan {
            for &v in g.node(id).outputs().iter().flatten() {
                let read_outside = g.value(v).uses().iter().any(|u| !planned.contains(&u.node));
                if read_outside || is_pinned(g, v, &captured) {
                    boundary.push(v);
                }
            }
        }
        if boundary.is_empty() {
            return false;
        }

        let batch: Vec<NodeId> = plan.iter().filter(|(_, p)| *p == Plan::Batch).map(|(id, _)| *id).collect();
        let wanted: Vec<ValueId> = boundary.iter().copied().filter(|v| !native.contains_key(v)).collect();
        let mut results: HashMap<ValueId, Value> = HashMap::new();
        let runtime = match wanted.is_empty() {
            true => Ok(()),
            false => meta.runtime.get_or_init(|| self.probe().map_err(|e| e.to_string())).clone(),
        };
        if let Err(e) = runtime {
            cx.skipped(
                RULE,
                path.to_string(),
                format!("cannot evaluate {} constant nodes, {}: {e}", batch.len(), self.executor.name()),
            );
        } else if !wanted.is_empty() {
            match self.evaluate(g, scope, &native, &batch, &wanted, meta) {
                Ok(values) => results.extend(values),
                Err(e) => {
                    cx.missed(
                        RULE,
                        path.to_string(),
                        format!("batch of {} nodes failed ({e}); node by node", batch.len()),
                    );
                    results.extend(self.evaluate_each(g, scope, &native, &batch, meta, path, cx));
                }
            }
        }
        for (v, t) in &native {
            results.insert(*v, Value::Tensor(t.as_ref().clone()));
        }

        let mut changed = false;
        for v in boundary {
            let Some(value) = results.remove(&v) else { continue };
            let producer = g.value(v).producer();
            let where_ = producer.map_or_else(|| path.to_string(), |p| label(path, g, p));
            let Value::Tensor(t) = value else {
                cx.skipped(RULE, where_, format!("'{}' is a {}, not a tensor", g.value(v).name, value.describe()));
                continue;
            };
            if t.len() > self.max_elements {
                cx.skipped(
                    RULE,
                    where_,
                    format!("'{}' has {} elements (limit {})", g.value(v).name, t.len(), self.max_elements),
                );
                continue;
            }
            if let Some(why) = type_conflict(g, v, &t) {
                cx.skipped(RULE, where_, why);
                continue;
            }
            cx.applied(RULE, where_, format!("'{}' = {}", g.value(v).name, describe(&t)));
            materialize(g, v, t);
            changed = true;
        }
        if !changed {
            return false;
        }
        // Planned nodes nobody reads any more go.
        for &(id, _) in plan.iter().rev() {
            let Some(n) = g.get_node(id) else { continue };
            if n.outputs().iter().flatten().all(|&v| !is_used(g, v, &captured)) {
                g.remove_node(id);
            }
        }
        prune_value_info(g);
        true
    }

    /// Runs the planned nodes as one model and returns the wanted values.
    fn evaluate(
        &self,
        g: &Graph,
        scope: &Scope,
        native: &HashMap<ValueId, Arc<Tensor>>,
        nodes: &[NodeId],
        wanted: &[ValueId],
        meta: &ModelMeta,
    ) -> Result<Vec<(ValueId, Value)>, String> {
        let bm = batch_model(g, scope, native, nodes, wanted, meta).ok_or("an input is not constant")?;
        let config = Self::session_config();
        let mut session = load_session(self.executor.as_ref(), &bm, None, &config).map_err(|e| e.to_string())?;
        let out = session.run(&[], None).map_err(|e| e.to_string())?;
        Ok(wanted.iter().copied().zip(out.into_iter().map(|(_, v)| v)).collect())
    }

    /// Evaluates planned nodes one at a time; a node that fails (or reads one that did) stays.
    #[allow(clippy::too_many_arguments)]
    fn evaluate_each(
        &self,
        g: &Graph,
        scope: &Scope,
        native: &HashMap<ValueId, Arc<Tensor>>,
        nodes: &[NodeId],
        meta: &ModelMeta,
        path: &str,
        cx: &mut PassContext,
    ) -> Vec<(ValueId, Value)> {
        let mut known = native.clone();
        let mut out = Vec::new();
        for &id in nodes.iter().take(FALLBACK_LIMIT) {
            let n = g.node(id);
            let ready =
                n.inputs().iter().flatten().all(|&v| known.contains_key(&v) || constant_of(g, v, scope).is_some());
            if !ready {
                continue;
            }
            let outs: Vec<ValueId> = n.outputs().iter().flatten().copied().collect();
            match self.evaluate(g, scope, &known, &[id], &outs, meta) {
                Ok(values) => {
                    for (v, value) in values {
                        if let Value::Tensor(t) = &value {
                            known.insert(v, Arc::new(t.clone()));
                        }
                        out.push((v, value));
                    }
                }
                Err(e) => cx.missed(RULE, label(path, g, id), format!("cannot evaluate: {e}")),
            }
        }
        out
    }
}

/// A model holding `nodes`, their constant inputs as initializers, and `wanted` as outputs.
fn batch_model(
    g: &Graph,
    scope: &Scope,
    native: &HashMap<ValueId, Arc<Tensor>>,
    nodes: &[NodeId],
    wanted: &[ValueId],
    meta: &ModelMeta,
) -> Option<Model> {
    let mut bg = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &id in nodes {
        let n = g.node(id);
        let mut inputs = Vec::with_capacity(n.inputs().len());
        for input in n.inputs() {
            let Some(v) = *input else {
                inputs.push(None);
                continue;
            };
            if let Some(&b) = map.get(&v) {
                inputs.push(Some(b));
                continue;
            }
            let t = native.get(&v).cloned().or_else(|| constant_of(g, v, scope))?;
            // Inline copy: the batch model is loaded from memory, with no folder for external data.
            let b = bg.add_initializer(g.value(v).name.clone(), Arc::new(t.as_ref().clone().without_hints()));
            map.insert(v, b);
            inputs.push(Some(b));
        }
        let outputs: Vec<String> =
            n.outputs().iter().map(|o| o.map(|v| g.value(v).name.clone()).unwrap_or_default()).collect();
        let spec = NodeSpec {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            inputs,
            outputs,
            attributes: n.attributes.clone(),
        };
        let bid = bg.add_node(spec);
        for (o, b) in n.outputs().iter().zip(bg.node(bid).outputs().to_vec()) {
            if let (Some(o), Some(b)) = (o, b) {
                map.insert(*o, b);
            }
        }
    }
    for v in wanted {
        if let Some(&b) = map.get(v) {
            bg.push_output(b);
        }
    }
    Some(Model {
        ir_version: meta.ir_version,
        opset_import: meta.opset_import.clone(),
        graph: Some(bg),
        ..Model::default()
    })
}

/// Makes `v` an initializer holding `t`, keeping its name, id and readers. Its producer writes
/// a placeholder until it is removed.
fn materialize(g: &mut Graph, v: ValueId, t: Tensor) {
    if let ValueDef::Node { node, output } = *g.value(v).def() {
        let name = g.fresh_name(&format!("{}__folded", g.value(v).name));
        let placeholder = g.add_outer(name);
        g.bind_output(node, output, placeholder);
    }
    g.set_initializer(v, Arc::new(t));
}

/// Why `t` cannot become `v`'s initializer given `v`'s declared type, if it cannot.
fn type_conflict(g: &Graph, v: ValueId, t: &Tensor) -> Option<String> {
    let ty = g.tensor_type(v)?;
    let name = &g.value(v).name;
    if let Some(d) = ty.dtype()
        && d != t.dtype()
    {
        return Some(format!("'{name}' is declared {d} but evaluates to {}", t.dtype()));
    }
    if let Some(dims) = ty.concrete_dims()
        && dims != t.dims()
    {
        return Some(format!("'{name}' is declared with shape {dims:?} but evaluates to {:?}", t.dims()));
    }
    None
}

/// `Shape` or `Size` of a value whose shape is fully known from its declaration.
fn native_shape(g: &Graph, id: NodeId, scope: &Scope) -> Option<Tensor> {
    let n = g.node(id);
    if !(n.is_onnx("Shape") || n.is_onnx("Size")) {
        return None;
    }
    let dims = shape_of(g, n.input(0)?, scope)?;
    let dims: Vec<i64> = dims.iter().map(super::common::known).collect::<Option<Vec<_>>>()?;
    if dims.iter().any(|&d| d < 0) {
        return None;
    }
    host::shape_or_size(n, &dims)
}

/// The number of elements a generator op would produce, when its inputs say so.
fn generated_elements(g: &Graph, id: NodeId, scope: &Scope, native: &HashMap<ValueId, Arc<Tensor>>) -> Option<u64> {
    let n = g.node(id);
    let constant = |i: usize| -> Option<Arc<Tensor>> {
        let v = n.input(i)?;
        native.get(&v).cloned().or_else(|| constant_of(g, v, scope))
    };
    let ints = |i: usize| constant(i).and_then(|t| as_i64s(&t));
    let dims_of = |i: usize| -> Option<Vec<u64>> {
        let t = constant(i)?;
        Some(t.dims().iter().map(|&d| d as u64).collect())
    };
    let count = |dims: &[u64]| dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let to_u64 = |v: &[i64]| v.iter().map(|&d| u64::try_from(d).ok()).collect::<Option<Vec<u64>>>();
    match n.op_type.as_str() {
        "ConstantOfShape" => count(&to_u64(&ints(0)?)?),
        "Expand" => {
            let (a, b) = (dims_of(0)?, to_u64(&ints(1)?)?);
            let rank = a.len().max(b.len());
            let at = |v: &[u64], i: usize| if i + v.len() >= rank { v[i + v.len() - rank] } else { 1 };
            let out: Vec<u64> = (0..rank).map(|i| at(&a, i).max(at(&b, i))).collect();
            count(&out)
        }
        "Tile" => {
            let (a, r) = (dims_of(0)?, to_u64(&ints(1)?)?);
            if a.len() != r.len() {
                return None;
            }
            count(&a.iter().zip(&r).map(|(x, y)| x.saturating_mul(*y)).collect::<Vec<_>>())
        }
        "Range" => {
            let s = |i: usize| constant(i).and_then(|t| t.to_f64_vec().ok()).and_then(|v| v.first().copied());
            let (start, limit, delta) = (s(0)?, s(1)?, s(2)?);
            if delta == 0.0 || !delta.is_finite() {
                return None;
            }
            let c = ((limit - start) / delta).ceil();
            (c.is_finite()).then(|| c.max(0.0) as u64)
        }
        "Pad" => {
            let a = dims_of(0)?;
            let pads = match n.attr_ints("pads").or(n.attr_ints("paddings")) {
                Some(p) => p.to_vec(),
                None => ints(1)?,
            };
            if n.input(3).is_some() || pads.len() != 2 * a.len() {
                return None;
            }
            let r = a.len();
            let out: Vec<u64> = (0..r).map(|i| (a[i] as i64 + pads[i] + pads[i + r]).max(0) as u64).collect::<Vec<_>>();
            count(&out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use kiln_compiler::DataType;
    use kiln_compiler::ir::{AttrValue, Attribute, Graph, NodeSpec, ValueId};
    use kiln_compiler::runtime::{ModelSource, Session};

    use super::*;
    use crate::testing::*;

    fn f32s(dims: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_slice(dims.to_vec(), v).unwrap()
    }

    fn i64s(v: &[i64]) -> Tensor {
        Tensor::from_slice(vec![v.len()], v).unwrap()
    }

    /// `y = x + (a * b - c)` with `a`, `b`, `c` constants: three nodes fold into one value.
    fn const_chain() -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let a = constant(&mut g, "a", f32s(&[3], &[1.0, 2.0, 3.0]));
        let b = constant(&mut g, "b", f32s(&[3], &[0.5, 0.25, 2.0]));
        let c = constant(&mut g, "c", f32s(&[], &[1.0]));
        let ab = op(&mut g, NodeSpec::new("Mul").inputs([a, b]).outputs(["ab"]));
        let d = op(&mut g, NodeSpec::new("Sub").inputs([ab, c]).outputs(["d"]));
        let y = op(&mut g, NodeSpec::new("Add").inputs([x, d]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        model(g, 17)
    }

    #[test]
    fn constant_chains_fold_into_one_initializer() {
        require_ort().unwrap();
        let before = const_chain();
        let mut after = before.clone();
        let (changed, report) = apply(&FoldConstants::new(), &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 1, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.node_count(), 1);
        let d = g.find_value("d").unwrap();
        assert_eq!(g.value(d).initializer().unwrap().to_vec::<f32>().unwrap(), vec![-0.5, -0.5, 5.0]);
        check_same_outputs(&before, &after, 3, Tolerance::EXACT).unwrap();
        assert_eq!(apply(&FoldConstants::new(), &mut after).unwrap().0, Changed::No);
    }

    #[test]
    fn runtime_inputs_random_ops_unknown_domains_and_quantization_stay() {
        require_ort().unwrap();
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let a = constant(&mut g, "a", f32s(&[3], &[1.0, 2.0, 3.0]));
        let xa = op(&mut g, NodeSpec::new("Mul").inputs([x, a]).outputs(["xa"]));
        let like = constant(&mut g, "like", f32s(&[3], &[0.0; 3]));
        let r = op(&mut g, NodeSpec::new("RandomUniformLike").inputs([like]).outputs(["r"]));
        let custom = op(&mut g, NodeSpec::new("Frobnicate").domain("com.example").inputs([a]).outputs(["f"]));
        let q = constant(&mut g, "q", Tensor::from_slice(vec![3], &[1i8, 2, 3]).unwrap());
        let s = constant(&mut g, "s", f32s(&[], &[0.5]));
        let dq = op(&mut g, NodeSpec::new("DequantizeLinear").inputs([q, s]).outputs(["dq"]));
        for (v, dt) in [(xa, DataType::F32), (r, DataType::F32), (custom, DataType::F32), (dq, DataType::F32)] {
            output(&mut g, v, tensor_ty(dt, &[3]));
        }
        let mut m = model(g, 17);
        let (changed, report) = apply(&FoldConstants::new(), &mut m).unwrap();
        assert_eq!(changed, Changed::No, "{report:?}");
        assert_eq!(m.graph.as_ref().unwrap().node_count(), 4);
    }

    /// `ConstantOfShape([rows, 1000])` added to an input.
    fn big_fill(rows: i64) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[1000])));
        let shape = constant(&mut g, "shape", i64s(&[rows, 1000]));
        let fill = op(&mut g, NodeSpec::new("ConstantOfShape").inputs([shape]).outputs(["fill"]));
        let y = op(&mut g, NodeSpec::new("Add").inputs([x, fill]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[rows as usize, 1000]));
        model(g, 17)
    }

    #[test]
    fn results_within_the_size_limit_fold() {
        require_ort().unwrap();
        let before = big_fill(1000);
        let mut after = before.clone();
        let (changed, _) = apply(&FoldConstants::new(), &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(count_op(&after, "ConstantOfShape"), 0);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn results_over_the_size_limit_stay() {
        require_ort().unwrap();
        let mut m = big_fill(1001);
        let (changed, report) = apply(&FoldConstants::new(), &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert!(entries(&report, "skipped", RULE)[0].detail.contains("1001000 elements"), "{report:?}");
        let mut m = big_fill(10);
        let (changed, report) = apply(&FoldConstants::new().max_elements(100), &mut m).unwrap();
        assert_eq!(changed, Changed::No, "{report:?}");
    }

    /// `Reshape(z, Shape(x))` where `x` is declared with `dims`.
    fn reshape_like(dims: &[Option<i64>]) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty_sym(DataType::F32, dims)));
        let z = g.add_input("z", Some(tensor_ty(DataType::F32, &[6])));
        let s = op(&mut g, NodeSpec::new("Shape").inputs([x]).outputs(["s"]));
        let y = op(&mut g, NodeSpec::new("Reshape").inputs([z, s]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2, 3]));
        model(g, 17)
    }

    #[test]
    fn shape_of_a_known_shape_is_constant() {
        require_ort().unwrap();
        let before = reshape_like(&[Some(2), Some(3)]);
        let mut after = before.clone();
        let (changed, _) = apply(&FoldConstants::new(), &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        let g = after.graph.as_ref().unwrap();
        let s = g.find_value("s").unwrap();
        assert_eq!(g.value(s).initializer().unwrap().to_vec::<i64>().unwrap(), vec![2, 3]);
        assert_eq!(count_op(&after, "Shape"), 0);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn shape_of_a_symbolic_shape_stays() {
        require_ort().unwrap();
        let mut m = reshape_like(&[None, Some(3)]);
        let (changed, _) = apply(&FoldConstants::new(), &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert_eq!(count_op(&m, "Shape"), 1);
    }

    #[test]
    fn folded_graph_outputs_keep_their_names() {
        require_ort().unwrap();
        let mut g = Graph::new();
        let a = constant(&mut g, "a", f32s(&[2], &[1.0, 2.0]));
        let y = op(&mut g, NodeSpec::new("Neg").inputs([a]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2]));
        let before = model(g, 17);
        let mut after = before.clone();
        assert_eq!(apply(&FoldConstants::new(), &mut after).unwrap().0, Changed::Yes);
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.node_count(), 0);
        assert_eq!(g.value(g.outputs()[0]).name, "y");
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn subgraphs_fold_with_outer_constants() {
        require_ort().unwrap();
        let mut before = crate::simplify::lift::tests::if_with_constants();
        // Make the then-branch compute its constant from an outer one: Add(x, Neg(k)).
        let g = before.graph.as_mut().unwrap();
        constant(g, "k", f32s(&[3], &[7.0, 8.0, 9.0]));
        let id = g.nodes().find(|(_, n)| n.is_onnx("If")).unwrap().0;
        let then = g.node_mut(id).subgraphs_mut().next().unwrap();
        let k = then.add_outer("k");
        let add = then.nodes().find(|(_, n)| n.is_onnx("Add")).unwrap().0;
        let neg = then.insert_node_before(add, NodeSpec::new("Neg").inputs([k]).outputs(["nk"]));
        let nk = then.node(neg).output(0).unwrap();
        then.set_input(add, 1, Some(nk));
        let mut after = before.clone();
        let (changed, report) = apply(&FoldConstants::new(), &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        assert!(entries(&report, "applied", RULE)[0].node.contains("then_branch"), "{report:?}");
        assert_eq!(count_op(&after, "Neg"), 0);
        for seed in 0..4 {
            check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
        }
    }

    #[test]
    fn large_outer_constants_are_not_copied_into_subgraphs() {
        require_ort().unwrap();
        let mut before = crate::simplify::lift::tests::if_with_constants();
        // Like the test above, but the outer constant is large (a shared weight): folding
        // ReduceSum(k) in the branch would give the branch its own copy, so it stays.
        let g = before.graph.as_mut().unwrap();
        let big: Vec<f32> = (0..SHARED_CONSTANT_BYTES as usize).map(|i| i as f32).collect();
        constant(g, "k", f32s(&[big.len()], &big));
        let id = g.nodes().find(|(_, n)| n.is_onnx("If")).unwrap().0;
        let then = g.node_mut(id).subgraphs_mut().next().unwrap();
        let k = then.add_outer("k");
        let add = then.nodes().find(|(_, n)| n.is_onnx("Add")).unwrap().0;
        let keepdims = kiln_compiler::ir::Attribute::int("keepdims", 0);
        let sum = then.insert_node_before(add, NodeSpec::new("ReduceSum").inputs([k]).outputs(["sk"]).attr(keepdims));
        let sk = then.node(sum).output(0).unwrap();
        then.set_input(add, 1, Some(sk));
        let mut after = before.clone();
        let (_, report) = apply(&FoldConstants::new(), &mut after).unwrap();
        let missed = entries(&report, "missed", RULE);
        assert!(missed.iter().any(|e| e.detail.contains("enclosing graph")), "{report:?}");
        assert_eq!(count_op(&after, "ReduceSum"), 1);
    }

    #[test]
    fn a_failing_batch_falls_back_to_node_by_node() {
        require_ort().unwrap();
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[2])));
        let a = constant(&mut g, "a", f32s(&[2], &[1.0, 2.0]));
        let na = op(&mut g, NodeSpec::new("Neg").inputs([a]).outputs(["na"]));
        let y = op(&mut g, NodeSpec::new("Add").inputs([x, na]).outputs(["y"]));
        // Six elements cannot take shape [4]: ORT refuses this node.
        let six = constant(&mut g, "six", f32s(&[6], &[0.0; 6]));
        let four = constant(&mut g, "four", i64s(&[4]));
        let bad = op(&mut g, NodeSpec::new("Reshape").inputs([six, four]).outputs(["bad"]));
        let z = op(&mut g, NodeSpec::new("Add").inputs([x, bad]).outputs(["z"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2]));
        let zt = tensor_ty(DataType::F32, &[4]);
        output(&mut g, z, zt);
        let mut m = model(g, 17);
        let (changed, report) = apply(&FoldConstants::new(), &mut m).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "missed", RULE).len(), 2, "{report:?}");
        assert_eq!(count_op(&m, "Neg"), 0);
        assert_eq!(count_op(&m, "Reshape"), 1);
    }

    /// An executor whose library is missing.
    struct NoLibrary;
    impl Executor for NoLibrary {
        fn name(&self) -> &'static str {
            "missing"
        }
        fn load(&self, _: ModelSource<'_>, _: &SessionConfig) -> Result<Box<dyn Session>, RuntimeError> {
            Err(RuntimeError::LibraryNotFound { file: "libonnxruntime.so".into(), tried: vec![] })
        }
    }

    #[test]
    fn without_a_runtime_nothing_changes() {
        let mut m = const_chain();
        let pass = FoldConstants::new().with_executor(Arc::new(NoLibrary));
        let (changed, report) = apply(&pass, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert!(report[0].detail.contains("not found"), "{report:?}");
        assert_eq!(m.graph.as_ref().unwrap().node_count(), 3);
    }

    #[test]
    fn shape_arithmetic_folds_without_a_runtime() {
        // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(c), 0)), [-1])): all computed here.
        // z = x + Sqrt(a): floating-point, the runtime's, which is missing.
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[6])));
        let c = constant(&mut g, "c", f32s(&[2, 3], &[0.0; 6]));
        let s = op(&mut g, NodeSpec::new("Shape").inputs([c]).outputs(["s"]));
        let zero = constant(&mut g, "zero", Tensor::scalar(0i64));
        let d0 = op(&mut g, NodeSpec::new("Gather").inputs([s, zero]).outputs(["d0"]));
        let axes = constant(&mut g, "axes", i64s(&[0]));
        let u = op(&mut g, NodeSpec::new("Unsqueeze").inputs([d0, axes]).outputs(["u"]));
        let rest = constant(&mut g, "rest", i64s(&[-1]));
        let axis = Attribute::int("axis", 0);
        let shape = op(&mut g, NodeSpec::new("Concat").inputs([u, rest]).outputs(["shape"]).attr(axis));
        let y = op(&mut g, NodeSpec::new("Reshape").inputs([x, shape]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2, 3]));
        let a = constant(&mut g, "a", f32s(&[1], &[4.0]));
        let ra = op(&mut g, NodeSpec::new("Sqrt").inputs([a]).outputs(["ra"]));
        let z = op(&mut g, NodeSpec::new("Add").inputs([x, ra]).outputs(["z"]));
        output(&mut g, z, tensor_ty(DataType::F32, &[6]));
        let before = model(g, 13);
        let mut after = before.clone();
        let pass = FoldConstants::new().with_executor(Arc::new(NoLibrary));
        let (changed, report) = apply(&pass, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        let folded = g.value(g.find_value("shape").unwrap()).initializer().unwrap().to_vec::<i64>().unwrap();
        assert_eq!(folded, vec![2, -1]);
        for gone in ["Shape", "Gather", "Unsqueeze", "Concat"] {
            assert_eq!(count_op(&after, gone), 0, "{gone}: {report:?}");
        }
        assert_eq!((count_op(&after, "Reshape"), count_op(&after, "Sqrt")), (1, 1));
        let skipped = entries(&report, "skipped", RULE);
        assert!(
            skipped.iter().any(|e| e.detail.contains("1 constant nodes") && e.detail.contains("not found")),
            "{report:?}"
        );
        require_ort().unwrap();
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn constant_nodes_are_inputs_to_folding() {
        require_ort().unwrap();
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[2])));
        let c = op(
            &mut g,
            NodeSpec::new("Constant")
                .outputs(["c"])
                .attr(Attribute::new("value_floats", AttrValue::Floats(vec![1.0, 4.0]))),
        );
        let s = op(&mut g, NodeSpec::new("Sqrt").inputs([c]).outputs(["s"]));
        let y: ValueId = op(&mut g, NodeSpec::new("Mul").inputs([x, s]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2]));
        let before = model(g, 17);
        let mut after = before.clone();
        assert_eq!(apply(&FoldConstants::new(), &mut after).unwrap().0, Changed::Yes);
        assert_eq!(count_op(&after, "Sqrt"), 0);
        // The Constant node stays for lift-constants / DCE.
        assert_eq!(count_op(&after, "Constant"), 1);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }
}
