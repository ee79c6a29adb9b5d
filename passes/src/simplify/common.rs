//! Helpers shared by the simplification passes: reading constants, knowing which values are
//! pinned (graph outputs, names captured by subgraphs), and moving readers from one value to
//! another without renaming what a caller or a subgraph sees.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, AttrValue, Dim, DimValue, Graph, Model, Node, NodeId, ValueDef, ValueId};
use kiln_compiler::pass::PassContext;
use kiln_compiler::tensor::Tensor;

/// Constants visible from enclosing scopes, by name (for subgraphs).
pub(crate) type Scope = HashMap<String, Arc<Tensor>>;

/// Domains whose ops are known: their semantics are fixed by the ONNX specification.
pub(crate) fn known_domain(n: &Node) -> bool {
    matches!(n.domain(), "" | "ai.onnx.ml")
}

/// Ops whose results differ from run to run; never folded, merged or assumed pure.
pub(crate) fn is_random(n: &Node) -> bool {
    n.domain().is_empty()
        && matches!(
            n.op_type.as_str(),
            "RandomNormal" | "RandomUniform" | "RandomNormalLike" | "RandomUniformLike" | "Multinomial" | "Bernoulli"
        )
}

/// Whether removing an unused node could change what the model does. Known-domain ops are
/// pure (random ones only lose a draw nobody reads); ops of other domains may do anything.
pub(crate) fn may_have_side_effects(n: &Node) -> bool {
    !matches!(n.domain(), "" | "ai.onnx.ml" | "ai.onnx.preview.training")
}

/// Whether a node holds subgraphs (If, Loop, Scan…).
pub(crate) fn has_subgraphs(n: &Node) -> bool {
    n.subgraphs().next().is_some()
}

/// Names read by the subgraphs of any node of `g` from enclosing scopes. A value with one of
/// these names must keep it.
pub(crate) fn captured(g: &Graph) -> HashSet<String> {
    g.nodes().flat_map(|(_, n)| Graph::captured_names(n)).collect()
}

/// A value that something outside the node uses by name: a graph output or a capture.
pub(crate) fn is_pinned(g: &Graph, v: ValueId, captured: &HashSet<String>) -> bool {
    g.is_output(v) || captured.contains(&g.value(v).name)
}

/// Whether `v` is read at all: by a node, as a graph output, or by a subgraph.
pub(crate) fn is_used(g: &Graph, v: ValueId, captured: &HashSet<String>) -> bool {
    !g.value(v).uses().is_empty() || is_pinned(g, v, captured)
}

/// Whether the IR version lets a graph hold initializers that are not graph inputs (IR 4+).
pub(crate) fn initializers_allowed(model: &Model) -> bool {
    model.ir_version.is_none_or(|v| v >= 4)
}

/// For passes that create initializers: reports and returns `true` when the model's IR
/// version does not allow them, so the pass leaves the model alone.
pub(crate) fn skip_without_initializers(model: &Model, rule: &str, cx: &mut PassContext) -> bool {
    if initializers_allowed(model) {
        return false;
    }
    cx.skipped(rule, "model", "IR version below 4: every initializer would have to be a graph input");
    true
}

/// Why readers of `from` cannot be moved onto `to`, or `None` if they can (see [`forward`]).
pub(crate) fn cannot_forward(g: &Graph, from: ValueId, to: ValueId, captured: &HashSet<String>) -> Option<String> {
    if from == to {
        return Some("the value would feed itself".into());
    }
    if !is_pinned(g, from, captured) {
        return None;
    }
    let to_is_node_output = matches!(g.value(to).def(), ValueDef::Node { .. });
    if to_is_node_output && !is_pinned(g, to, captured) {
        return None;
    }
    Some(format!(
        "'{}' is a graph output or captured by a subgraph, and '{}' cannot take its name",
        g.value(from).name,
        g.value(to).name
    ))
}

/// Moves every reader of `from` onto `to`. The producer of `from` must already be removed
/// and [`cannot_forward`] must have said yes. When `from` is a graph output or captured by
/// name, `to`'s producer is rebound to write `from` instead, so that name survives.
pub(crate) fn forward(g: &mut Graph, from: ValueId, to: ValueId, captured: &HashSet<String>) {
    if !is_pinned(g, from, captured) {
        g.replace_uses(from, to);
        return;
    }
    let ValueDef::Node { node, output } = *g.value(to).def() else {
        return;
    };
    if g.value(from).ty.is_none() {
        g.value_mut(from).ty = g.value(to).ty.clone();
    }
    g.replace_uses(to, from);
    g.bind_output(node, output, from);
}

/// Whether a value still has its definition (removed nodes and rebound outputs detach theirs).
pub(crate) fn is_live(g: &Graph, v: ValueId) -> bool {
    !matches!(g.value(v).def(), ValueDef::Detached)
}

/// Drops `value_info` entries of values that no longer exist.
pub(crate) fn prune_value_info(g: &mut Graph) {
    let list: Vec<ValueId> = g.value_info().to_vec();
    let kept: Vec<ValueId> = list.iter().copied().filter(|&v| is_live(g, v)).collect();
    if kept.len() != list.len() {
        g.set_value_info(kept);
    }
}

/// The value of a `Constant` node, decoded from whichever attribute it uses.
pub(crate) fn constant_node_value(n: &Node) -> Option<Arc<Tensor>> {
    let a = n.attributes.first()?;
    if n.attributes.len() != 1 {
        return None;
    }
    let t = match &a.value {
        AttrValue::Tensor(t) if a.name == "value" => return Some(t.clone()),
        AttrValue::Float(f) if a.name == "value_float" => Tensor::scalar(*f),
        AttrValue::Floats(f) if a.name == "value_floats" => Tensor::from_slice(vec![f.len()], f).ok()?,
        AttrValue::Int(i) if a.name == "value_int" => Tensor::scalar(*i),
        AttrValue::Ints(i) if a.name == "value_ints" => Tensor::from_slice(vec![i.len()], i).ok()?,
        AttrValue::String(s) if a.name == "value_string" => Tensor::from_strings(vec![], vec![s.clone()]).ok()?,
        AttrValue::Strings(s) if a.name == "value_strings" => Tensor::from_strings(vec![s.len()], s.clone()).ok()?,
        _ => return None,
    };
    Some(Arc::new(t))
}

/// The constant behind `v`: an initializer that is not also an overridable graph input, the
/// output of a `Constant` node, or (in a subgraph) a constant of an enclosing scope.
pub(crate) fn constant_of(g: &Graph, v: ValueId, scope: &Scope) -> Option<Arc<Tensor>> {
    let val = g.value(v);
    match val.def() {
        ValueDef::Initializer(t) if !g.inputs().contains(&v) => Some(t.clone()),
        ValueDef::Node { node, .. } => {
            let n = g.get_node(*node)?;
            if n.is_onnx("Constant") { constant_node_value(n) } else { None }
        }
        ValueDef::Outer => scope.get(&val.name).cloned(),
        _ => None,
    }
}

/// The constants of `g` as seen by its subgraphs: `outer` minus what `g` redefines, plus the
/// initializers and `Constant` outputs of `g`.
pub(crate) fn child_scope(g: &Graph, outer: &Scope) -> Scope {
    let mut scope = outer.clone();
    for (id, v) in g.values() {
        if matches!(v.def(), ValueDef::Outer | ValueDef::Detached) || !is_live(g, id) {
            continue;
        }
        match constant_of(g, id, outer) {
            Some(t) => scope.insert(v.name.clone(), t),
            None => scope.remove(&v.name),
        };
    }
    scope
}

/// A constant as a list of i64 (shape, axes, pads… inputs), if it is an integer tensor.
pub(crate) fn as_i64s(t: &Tensor) -> Option<Vec<i64>> {
    match t.dtype() {
        DataType::I64 => t.to_vec::<i64>().ok(),
        DataType::I32 => t.to_vec::<i32>().ok().map(|v| v.into_iter().map(i64::from).collect()),
        _ => None,
    }
}

/// The element type of `v`, from its initializer or its declared type.
pub(crate) fn dtype_of(g: &Graph, v: ValueId, scope: &Scope) -> Option<DataType> {
    if let Some(t) = constant_of(g, v, scope) {
        return Some(t.dtype());
    }
    g.tensor_type(v)?.dtype()
}

/// The shape of `v` (dims may be symbolic), from its constant or its declared type.
pub(crate) fn shape_of(g: &Graph, v: ValueId, scope: &Scope) -> Option<Vec<Dim>> {
    if let Some(t) = constant_of(g, v, scope) {
        return Some(t.dims().iter().map(|&d| Dim::known(d as i64)).collect());
    }
    g.tensor_type(v)?.shape.clone()
}

/// A known dimension value.
pub(crate) fn known(d: &Dim) -> Option<i64> {
    match d.value {
        DimValue::Known(v) => Some(v),
        _ => None,
    }
}

/// An integer list given either as attribute `attr` (older opsets) or as constant input
/// `input` (newer opsets). `Ok(None)`: given by neither. `Err`: given but not constant.
pub(crate) fn ints_attr_or_input(
    g: &Graph,
    n: &Node,
    attr: &str,
    input: usize,
    scope: &Scope,
) -> Result<Option<Vec<i64>>, ()> {
    if let Some(v) = n.attr_ints(attr) {
        return Ok(Some(v.to_vec()));
    }
    match n.input(input) {
        None => Ok(None),
        Some(v) => constant_of(g, v, scope).and_then(|t| as_i64s(&t)).map(Some).ok_or(()),
    }
}

/// A tensor's type and shape, for reports.
pub(crate) fn describe(t: &Tensor) -> String {
    format!("{}{:?}", t.dtype(), t.dims())
}

/// Visits `g` and every subgraph with the constants of its enclosing scopes. `f` runs on a
/// graph before its subgraphs, so what it folds is visible inside them.
pub(crate) fn visit_with_scope(g: &mut Graph, scope: &Scope, path: &str, f: &mut dyn FnMut(&mut Graph, &Scope, &str)) {
    f(g, scope, path);
    let inner = child_scope(g, scope);
    for id in g.node_ids() {
        let Some(n) = g.get_node(id) else { continue };
        if !has_subgraphs(n) {
            continue;
        }
        let label = n.label(id);
        let node = g.node_mut(id);
        for a in &mut node.attributes {
            let sub_path = format!("{path}/{label}.{}", a.name);
            match &mut a.value {
                AttrValue::Graph(sg) => visit_with_scope(sg, &inner, &sub_path, f),
                AttrValue::Graphs(gs) => {
                    for (i, sg) in gs.iter_mut().enumerate() {
                        visit_with_scope(sg, &inner, &format!("{sub_path}[{i}]"), f);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A node's label prefixed by its graph path when it lives in a subgraph.
pub(crate) fn label(path: &str, g: &Graph, id: NodeId) -> String {
    let l = g.node(id).label(id);
    if path == "main" { l } else { format!("{path}/{l}") }
}
