//! `inline-constant-if`: an `If` whose condition is a known constant becomes the nodes of the
//! branch it takes. Exporters leave such Ifs behind once shape inference and folding settle
//! the condition; ONNX Runtime still pays for the branch dispatch and the subgraph session.
//!
//! The condition is known when it is a constant (an initializer, a `Constant` output, a constant
//! of an enclosing scope) or a small integer computation over declared shapes that folding
//! leaves alone because the shape is partly symbolic: PyTorch exports `if state.size(0)` as
//! `Cast(Squeeze(Gather(Shape(state), 0)))`, known whenever `state`'s first dim is.
//!
//! The branch's nodes and initializers move into the parent graph in place of the `If`. Their
//! values keep their names unless the parent (or a subgraph of the parent, by capture) already
//! uses the name; then they get a fresh one. Values the branch read from enclosing scopes are
//! the parent's values of those names. The `If`'s outputs keep their names: their readers move
//! onto the branch outputs, and an output that is a graph output or captured by name is
//! written by the branch node that produced it (or by an `Identity` when the branch output is
//! a constant or an outer value). Subgraphs nested in the branch move as they are; an `If`
//! whose renamed value such a subgraph reads by name stays, and the report says so.

use std::collections::{HashMap, HashSet};

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, AttrValue, Graph, Model, NodeId, NodeSpec, ValueDef, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

use super::common::{
    Scope, as_i64s, cannot_forward, captured, constant_of, forward, initializers_allowed, ints_attr_or_input, is_live,
    is_pinned, known, label, prune_value_info, shape_of, visit_with_scope,
};

const RULE: &str = "inline-constant-if";

/// Replaces `If` nodes with a constant condition by the branch they take, in every graph.
#[derive(Debug, Clone, Copy, Default)]
pub struct InlineConstantIf;

impl Pass for InlineConstantIf {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let allow_init = initializers_allowed(model);
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, scope, path| {
            changed |= inline_graph(g, scope, path, allow_init, cx);
        });
        Ok(Changed::from_bool(changed))
    }
}

/// Inlines every constant-condition `If` of `g` (not of its subgraphs), repeating so that an
/// `If` brought up from a taken branch is looked at too.
fn inline_graph(g: &mut Graph, scope: &Scope, path: &str, allow_init: bool, cx: &mut PassContext) -> bool {
    let mut changed = false;
    let mut missed: HashSet<NodeId> = HashSet::new();
    for _ in 0..16 {
        let mut any = false;
        for id in g.node_ids() {
            let Some(n) = g.get_node(id) else { continue };
            if !n.is_onnx("If") || missed.contains(&id) {
                continue;
            }
            let Some(take) = condition(g, id, scope) else { continue };
            let where_ = label(path, g, id);
            let branch = if take { "then_branch" } else { "else_branch" };
            match plan(g, id, branch, allow_init) {
                Err(why) => {
                    missed.insert(id);
                    cx.missed(RULE, where_, format!("condition is {take}, but {why}"));
                }
                Ok(renames) => {
                    let moved = inline(g, id, branch, &renames);
                    cx.applied(RULE, where_, format!("condition is {take}: {branch} inlined ({moved} nodes)"));
                    any = true;
                }
            }
        }
        changed |= any;
        if !any {
            break;
        }
    }
    if changed {
        prune_value_info(g);
    }
    changed
}

/// The constant condition of `If` node `id`, if it has one: a constant, or a small integer
/// computation over declared shapes (see [`partial`]) whose result is known.
fn condition(g: &Graph, id: NodeId, scope: &Scope) -> Option<bool> {
    let c = g.node(id).input(0)?;
    if let Some(t) = constant_of(g, c, scope) {
        if t.dtype() != DataType::Bool || t.dims().iter().product::<usize>() != 1 {
            return None;
        }
        return t.to_vec::<bool>().ok()?.first().copied();
    }
    let p = partial(g, c, scope, 0)?;
    match p.vals.as_slice() {
        [Some(v)] if p.bool => Some(*v != 0),
        _ => None,
    }
}

/// A small integer or boolean tensor whose elements may be partly known.
struct Partial {
    dims: Vec<usize>,
    vals: Vec<Option<i64>>,
    /// Whether the elements are booleans (0 or 1).
    bool: bool,
}

/// Largest tensor [`partial`] tracks: shape vectors and the scalars computed from them.
const PARTIAL_MAX: usize = 64;

/// What is known of `v`, following the integer computations exporters wrap around shapes
/// (`Shape`, `Size`, `Gather`, `Squeeze`, `Unsqueeze`, `Cast`, `Equal`, `Not`, `Identity`)
/// down to constants and declared shapes. Folding gives up on `Shape` of a partly symbolic
/// shape; a condition such as `Cast(Squeeze(Gather(Shape(state), 0)))` is still known when
/// `state`'s first dimension is. `None`: not an integer computation this follows.
fn partial(g: &Graph, v: ValueId, scope: &Scope, depth: usize) -> Option<Partial> {
    if depth > 32 {
        return None;
    }
    if let Some(t) = constant_of(g, v, scope) {
        if t.dims().iter().product::<usize>() > PARTIAL_MAX {
            return None;
        }
        let (vals, bool) = match t.dtype() {
            DataType::Bool => (t.to_vec::<bool>().ok()?.into_iter().map(i64::from).collect(), true),
            _ => (as_i64s(&t)?, false),
        };
        return Some(Partial { dims: t.dims().to_vec(), vals: vals.into_iter().map(Some).collect(), bool });
    }
    let n = g.get_node(g.value(v).producer()?)?;
    if !n.domain().is_empty() || n.output(0) != Some(v) {
        return None;
    }
    let input = |i: usize| n.input(i).and_then(|x| partial(g, x, scope, depth + 1));
    match n.op_type.as_str() {
        "Identity" => input(0),
        "Shape" => {
            let dims = shape_of(g, n.input(0)?, scope)?;
            let rank = dims.len() as i64;
            let clamp = |i: i64| if i < 0 { (i + rank).max(0) } else { i.min(rank) };
            let start = clamp(n.attr_int("start").unwrap_or(0)) as usize;
            let end = clamp(n.attr_int("end").unwrap_or(rank)) as usize;
            let vals: Vec<Option<i64>> = dims.get(start..end.max(start))?.iter().map(known).collect();
            Some(Partial { dims: vec![vals.len()], vals, bool: false })
        }
        "Size" => {
            if let Some(x) = input(0) {
                let size = i64::try_from(x.dims.iter().product::<usize>()).ok();
                return Some(Partial { dims: vec![], vals: vec![size], bool: false });
            }
            let dims = shape_of(g, n.input(0)?, scope)?;
            let size = dims.iter().map(known).try_fold(1i64, |acc, d| d.and_then(|d| acc.checked_mul(d)));
            Some(Partial { dims: vec![], vals: vec![size], bool: false })
        }
        "Gather" => {
            let data = input(0)?;
            let idx = input(1)?;
            if data.dims.len() != 1 || n.attr_int("axis").unwrap_or(0) != 0 || idx.bool {
                return None;
            }
            let len = data.vals.len() as i64;
            let vals = idx
                .vals
                .iter()
                .map(|i| {
                    let i = i.filter(|&i| (-len..len).contains(&i))?;
                    Some(data.vals[(if i < 0 { i + len } else { i }) as usize])
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Partial { dims: idx.dims, vals, bool: data.bool })
        }
        "Squeeze" | "Unsqueeze" => {
            let mut x = input(0)?;
            let axes = ints_attr_or_input(g, n, "axes", 1, scope).ok()?;
            x.dims = if n.op_type == "Squeeze" { squeezed(&x.dims, axes)? } else { unsqueezed(&x.dims, axes?)? };
            Some(x)
        }
        "Cast" => {
            let mut x = input(0)?;
            let to = DataType::from_onnx(i32::try_from(n.attr_int("to")?).ok()?)?;
            match to {
                DataType::Bool => {
                    x.vals = x.vals.iter().map(|v| v.map(|v| i64::from(v != 0))).collect();
                    x.bool = true;
                }
                DataType::I64 | DataType::I32 => x.bool = false,
                _ => return None,
            }
            Some(x)
        }
        "Not" => {
            let mut x = input(0)?;
            if !x.bool {
                return None;
            }
            x.vals = x.vals.iter().map(|v| v.map(|v| 1 - v)).collect();
            Some(x)
        }
        "Equal" => {
            let (a, b) = (input(0)?, input(1)?);
            if a.bool != b.bool {
                return None;
            }
            let (big, small) = if a.vals.len() >= b.vals.len() { (a, b) } else { (b, a) };
            let dims = if big.dims.len() >= small.dims.len() { big.dims.clone() } else { small.dims.clone() };
            let vals = match small.vals.as_slice() {
                [s] => big.vals.iter().map(|x| Some(i64::from(x.as_ref()? == s.as_ref()?))).collect(),
                s if s.len() == big.vals.len() && small.dims == big.dims => {
                    big.vals.iter().zip(s).map(|(x, y)| Some(i64::from(x.as_ref()? == y.as_ref()?))).collect()
                }
                _ => return None,
            };
            Some(Partial { dims, vals, bool: true })
        }
        _ => None,
    }
}

/// `Squeeze`'s output dims (all 1-dims without axes).
fn squeezed(dims: &[usize], axes: Option<Vec<i64>>) -> Option<Vec<usize>> {
    let rank = dims.len() as i64;
    let Some(axes) = axes else { return Some(dims.iter().copied().filter(|&d| d != 1).collect()) };
    let axes: Vec<usize> = axes.iter().map(|&a| (if a < 0 { a + rank } else { a }) as usize).collect();
    if axes.iter().any(|&a| dims.get(a) != Some(&1)) {
        return None;
    }
    Some(dims.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect())
}

/// `Unsqueeze`'s output dims.
fn unsqueezed(dims: &[usize], axes: Vec<i64>) -> Option<Vec<usize>> {
    let rank = (dims.len() + axes.len()) as i64;
    let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + rank } else { a }).collect();
    axes.sort_unstable();
    if axes.iter().any(|&a| !(0..rank).contains(&a)) {
        return None;
    }
    let mut out = dims.to_vec();
    for a in axes {
        out.insert(a as usize, 1);
    }
    Some(out)
}

/// The branch graph held by attribute `name` of node `id`.
fn branch_of<'a>(g: &'a Graph, id: NodeId, name: &str) -> Option<&'a Graph> {
    g.node(id).attributes.iter().find(|a| a.name == name).and_then(|a| match &a.value {
        AttrValue::Graph(b) => Some(b.as_ref()),
        _ => None,
    })
}

/// Checks that the branch can move into `g` and picks the parent name of every value the
/// branch defines (branch name → parent name). `Err`: why it cannot.
fn plan(g: &Graph, id: NodeId, branch: &str, allow_init: bool) -> Result<HashMap<String, String>, String> {
    let b = branch_of(g, id, branch).ok_or_else(|| format!("the node has no {branch} graph"))?;
    if !b.inputs().is_empty() {
        return Err(format!("{branch} declares inputs"));
    }
    let n = g.node(id);
    if b.outputs().len() != n.outputs().len() {
        return Err(format!("{branch} has {} outputs, the node {}", b.outputs().len(), n.outputs().len()));
    }
    if !allow_init && !b.initializers().is_empty() {
        return Err("the IR version does not allow initializers that are not graph inputs".into());
    }
    // Names the parent defines, its subgraphs read from further out, or its other subgraphs
    // define (ONNX Runtime rejects a subgraph redefining a name of an enclosing graph): a
    // branch value must not take one. Names nested subgraphs of the branch read: a fresh name must avoid them,
    // and a value they read must keep its name.
    let mut taken_in_parent = captured(g);
    taken_in_parent.extend(defined_in_subgraphs(g.nodes().filter(|&(n, _)| n != id).map(|(_, n)| n)));
    let read_inside = captured(b);
    let nested_defs = defined_in_subgraphs(b.nodes().map(|(_, n)| n));
    let mut renames = HashMap::new();
    let mut used: HashSet<String> = HashSet::new();
    let mut defined: HashSet<String> = HashSet::new();
    for (v, val) in b.values() {
        let defines = matches!(val.def(), ValueDef::Initializer(_) | ValueDef::Node { .. }) && is_live(b, v);
        if !defines || val.name.is_empty() {
            continue;
        }
        if !defined.insert(val.name.clone()) {
            return Err(format!("{branch} defines '{}' twice", val.name));
        }
        let clash = |name: &str| g.find_value(name).is_some() || taken_in_parent.contains(name) || used.contains(name);
        let name = if !clash(&val.name) {
            val.name.clone()
        } else if read_inside.contains(&val.name) {
            return Err(format!(
                "'{}' must be renamed in the parent graph and a subgraph nested in {branch} reads it by name",
                val.name
            ));
        } else {
            let base = g.fresh_name(&val.name);
            let mut name = base.clone();
            let mut i = 1;
            while clash(&name) || read_inside.contains(&name) || nested_defs.contains(&name) {
                name = g.fresh_name(&format!("{base}_{i}"));
                i += 1;
            }
            name
        };
        used.insert(name.clone());
        renames.insert(val.name.clone(), name);
    }
    // Every node input must be defined before it is read (the branch is topologically sorted).
    let mut seen: HashSet<ValueId> = b.initializers().iter().copied().collect();
    for (_, bn) in b.nodes() {
        for &v in bn.inputs().iter().flatten() {
            let ok = seen.contains(&v) || matches!(b.value(v).def(), ValueDef::Outer);
            if !ok {
                return Err(format!("{branch} reads '{}' before it is defined", b.value(v).name));
            }
        }
        seen.extend(bn.outputs().iter().flatten().copied());
    }
    for &o in b.outputs() {
        let ok = seen.contains(&o) || matches!(b.value(o).def(), ValueDef::Outer);
        if !ok {
            return Err(format!("{branch} output '{}' is not defined", b.value(o).name));
        }
    }
    Ok(renames)
}

/// Names defined (not captured) anywhere in the subgraphs of `nodes`.
fn defined_in_subgraphs<'a>(nodes: impl Iterator<Item = &'a kiln_compiler::ir::Node>) -> HashSet<String> {
    let mut out = HashSet::new();
    for n in nodes {
        for sg in n.subgraphs() {
            sg.visit_graphs(&mut |sg| {
                for (v, val) in sg.values() {
                    if !val.name.is_empty() && !matches!(val.def(), ValueDef::Outer) && is_live(sg, v) {
                        out.insert(val.name.clone());
                    }
                }
            });
        }
    }
    out
}

/// The parent's value of a name a branch reads from enclosing scopes: the live value of that
/// name, else a capture of it from further out.
fn outer_value(g: &mut Graph, name: &str) -> ValueId {
    if let Some(v) = g.find_value(name).filter(|&v| is_live(g, v)) {
        return v;
    }
    let live = g.values().find(|(v, val)| val.name == name && is_live(g, *v)).map(|(v, _)| v);
    live.unwrap_or_else(|| g.add_outer(name))
}

/// Moves the branch's nodes and initializers into `g` before the `If`, routes the `If`'s
/// outputs to them and removes the `If`. [`plan`] must have said yes. Returns how many nodes
/// moved.
fn inline(g: &mut Graph, id: NodeId, branch: &str, renames: &HashMap<String, String>) -> usize {
    let Some(mut node) = g.get_node(id).cloned() else { return 0 };
    let Some(pos) = node.attributes.iter().position(|a| a.name == branch) else { return 0 };
    let AttrValue::Graph(b) = std::mem::replace(&mut node.attributes[pos].value, AttrValue::Int(0)) else {
        return 0;
    };
    let b = *b;
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let parent_name = |name: &str| renames.get(name).cloned().unwrap_or_else(|| name.to_string());
    for &v in b.initializers() {
        let Some(t) = b.value(v).initializer() else { continue };
        let nv = g.add_initializer(parent_name(&b.value(v).name), t.clone());
        copy_value_meta(g, nv, &b, v);
        map.insert(v, nv);
    }
    let node_names: HashSet<String> = g.nodes().filter_map(|(_, n)| n.name.clone()).collect();
    let mut moved = 0;
    for (_, bn) in b.nodes() {
        let inputs: Vec<Option<ValueId>> = bn
            .inputs()
            .iter()
            .map(|i| {
                i.map(|v| match map.get(&v) {
                    Some(&nv) => nv,
                    None => {
                        let nv = outer_value(g, &b.value(v).name);
                        map.insert(v, nv);
                        nv
                    }
                })
            })
            .collect();
        let outputs: Vec<String> =
            bn.outputs().iter().map(|o| o.map_or_else(String::new, |v| parent_name(&b.value(v).name))).collect();
        let mut spec = NodeSpec::new(bn.op_type.clone()).outputs(outputs);
        spec.domain = bn.domain.clone();
        spec.inputs = inputs;
        spec.attributes = bn.attributes.clone();
        spec.name = bn.name.as_ref().map(|n| if node_names.contains(n) { format!("{n}_inlined") } else { n.clone() });
        let nid = g.insert_node_before(id, spec);
        let new_node = g.node_mut(nid);
        new_node.overload = bn.overload.clone();
        new_node.doc_string = bn.doc_string.clone();
        new_node.metadata_props = bn.metadata_props.clone();
        new_node.opaque = bn.opaque.clone();
        for (i, o) in bn.outputs().iter().enumerate() {
            if let (Some(v), Some(nv)) = (*o, g.node(nid).output(i)) {
                copy_value_meta(g, nv, &b, v);
                if b.value_info().contains(&v) {
                    g.push_value_info(nv);
                }
                map.insert(v, nv);
            }
        }
        moved += 1;
    }
    let captured = captured(g);
    let outs: Vec<Option<ValueId>> = node.outputs().to_vec();
    let order = g.node_ids();
    let next = order.iter().position(|&n| n == id).and_then(|p| order.get(p + 1).copied());
    g.remove_node(id);
    // Where a branch value ended up after an earlier output took it over by name.
    let mut taken_over: HashMap<ValueId, ValueId> = HashMap::new();
    for (i, o) in outs.iter().enumerate() {
        let (Some(o), Some(&bo)) = (*o, b.outputs().get(i)) else { continue };
        let to = match map.get(&bo) {
            Some(&nv) => nv,
            None => {
                let nv = outer_value(g, &b.value(bo).name);
                map.insert(bo, nv);
                nv
            }
        };
        let to = taken_over.get(&to).copied().unwrap_or(to);
        if cannot_forward(g, o, to, &captured).is_none() {
            let rebinds = is_pinned(g, o, &captured);
            forward(g, o, to, &captured);
            if rebinds {
                taken_over.insert(to, o);
            }
        } else {
            // `o` keeps its name and `to` cannot give up its own: copy it under `o`'s name.
            let tmp = g.fresh_name(&g.value(o).name);
            let spec = NodeSpec::new("Identity").inputs([to]).outputs([tmp]);
            let nid = match next {
                Some(next) => g.insert_node_before(next, spec),
                None => g.add_node(spec),
            };
            g.bind_output(nid, 0, o);
        }
    }
    moved
}

/// Carries a branch value's type and documentation over to its copy in the parent.
fn copy_value_meta(g: &mut Graph, to: ValueId, b: &Graph, from: ValueId) {
    let src = b.value(from);
    let dst = g.value_mut(to);
    dst.ty = src.ty.clone();
    dst.doc_string = src.doc_string.clone();
    dst.metadata_props = src.metadata_props.clone();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_compiler::ir::Attribute;
    use kiln_compiler::tensor::Tensor;

    use super::*;
    use crate::testing::*;

    fn if_spec(cond: ValueId, then: Graph, els: Graph, outputs: &[&str]) -> NodeSpec {
        NodeSpec::new("If")
            .inputs([cond])
            .outputs(outputs.iter().copied())
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(then))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(els))))
    }

    /// A branch computing `Relu(x <op> c)` with its own constant `c`, into value `out`.
    fn branch(op_type: &str, c: f32, local: &str, out: &str) -> Graph {
        let mut b = Graph::new();
        b.name = Some(format!("{op_type}_branch"));
        let x = b.add_outer("x");
        let c = constant(&mut b, &format!("{local}_c"), Tensor::from_slice(vec![3], &[c, c + 1.0, c + 2.0]).unwrap());
        let t = op(&mut b, NodeSpec::new(op_type).inputs([x, c]).outputs([local]));
        let y = op(&mut b, NodeSpec::new("Relu").inputs([t]).outputs([out]));
        output(&mut b, y, tensor_ty(DataType::F32, &[3]));
        b
    }

    fn bool_const(g: &mut Graph, name: &str, v: bool) -> ValueId {
        constant(g, name, Tensor::from_slice(vec![], &[v]).unwrap())
    }

    /// `z = Neg(If(cond){Relu(x + c)} else {Relu(x * c)})` with `cond` an initializer.
    fn constant_if(take: bool) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let cond = bool_const(&mut g, "cond", take);
        let y = op(&mut g, if_spec(cond, branch("Add", 1.0, "t", "ty"), branch("Mul", -2.0, "e", "ey"), &["y"]));
        let z = op(&mut g, NodeSpec::new("Neg").inputs([y]).outputs(["z"]));
        let _ = x;
        output(&mut g, z, tensor_ty(DataType::F32, &[3]));
        model(g, 17)
    }

    fn ops(g: &Graph) -> Vec<&str> {
        g.nodes().map(|(_, n)| n.op_type.as_str()).collect()
    }

    #[test]
    fn a_constant_condition_inlines_the_branch_it_takes() {
        require_ort().unwrap();
        for take in [true, false] {
            let before = constant_if(take);
            let mut after = before.clone();
            let (changed, report) = apply(&InlineConstantIf, &mut after).unwrap();
            assert_eq!(changed, Changed::Yes);
            let hits = entries(&report, "applied", RULE);
            assert_eq!(hits.len(), 1, "{report:?}");
            let branch = if take { "then_branch" } else { "else_branch" };
            assert!(hits[0].detail.contains(branch), "{report:?}");
            let g = after.graph.as_ref().unwrap();
            let op_type = if take { "Add" } else { "Mul" };
            assert_eq!(ops(g), [op_type, "Relu", "Neg"]);
            assert_eq!(count_op(&after, "If"), 0);
            for seed in 0..3 {
                check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
            }
            assert_eq!(apply(&InlineConstantIf, &mut after).unwrap().0, Changed::No);
        }
    }

    #[test]
    fn a_runtime_condition_stays() {
        let mut g = Graph::new();
        g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let cond = g.add_input("cond", Some(tensor_ty(DataType::Bool, &[])));
        let y = op(&mut g, if_spec(cond, branch("Add", 1.0, "t", "ty"), branch("Mul", 2.0, "e", "ey"), &["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        let mut m = model(g, 17);
        let (changed, report) = apply(&InlineConstantIf, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert!(report.is_empty(), "{report:?}");
        assert_eq!(count_op(&m, "If"), 1);
    }

    #[test]
    fn graph_outputs_keep_their_names() {
        require_ort().unwrap();
        // Output 0 comes from a branch node, output 1 is the branch's constant: both are
        // graph outputs and keep their names. (ONNX Runtime rejects a branch returning an
        // outer value directly, so that case only arises in hand-built graphs.)
        let mut b = branch("Add", 1.0, "t", "ty");
        let c = b.find_value("t_c").unwrap();
        b.push_output(c);
        let mut e = branch("Mul", 2.0, "e", "ey");
        let c = e.find_value("e_c").unwrap();
        e.push_output(c);
        let mut g = Graph::new();
        g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let cond = bool_const(&mut g, "cond", true);
        let id = g.add_node(if_spec(cond, b, e, &["y0", "y1"]));
        for i in 0..2 {
            let v = g.node(id).output(i).unwrap();
            output(&mut g, v, tensor_ty(DataType::F32, &[3]));
        }
        let before = model(g, 17);
        let mut after = before.clone();
        let (changed, report) = apply(&InlineConstantIf, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        let names: Vec<&str> = g.outputs().iter().map(|&o| g.value(o).name.as_str()).collect();
        assert_eq!(names, ["y0", "y1"]);
        assert_eq!(ops(g), ["Add", "Relu", "Identity"]);
        assert_eq!(g.value(g.outputs()[0]).producer(), g.nodes().nth(1).map(|(id, _)| id));
        check_same_outputs(&before, &after, 0, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn colliding_names_are_renamed() {
        require_ort().unwrap();
        // Two Ifs whose branches use the same names (valid: sibling subgraphs may). The main
        // graph may not define a name a subgraph still defines, so the first If's values are
        // renamed; the second then keeps its names.
        let mut g = Graph::new();
        g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let cond = bool_const(&mut g, "cond", true);
        let y1 = op(&mut g, if_spec(cond, branch("Add", 1.0, "t", "ty"), branch("Mul", 2.0, "e", "ey"), &["y1"]));
        let y2 = op(&mut g, if_spec(cond, branch("Sub", 5.0, "t", "ty"), branch("Mul", 2.0, "e", "ey"), &["y2"]));
        let z = op(&mut g, NodeSpec::new("Mul").inputs([y1, y2]).outputs(["z"]));
        output(&mut g, z, tensor_ty(DataType::F32, &[3]));
        let before = model(g, 17);
        let mut after = before.clone();
        let (changed, report) = apply(&InlineConstantIf, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        assert_eq!(ops(g), ["Add", "Relu", "Sub", "Relu", "Mul"]);
        let name_of = |op_type: &str| {
            let n = g.nodes().find(|(_, n)| n.op_type == op_type).unwrap().1;
            let mut names: Vec<&str> = n.inputs().iter().flatten().map(|&v| g.value(v).name.as_str()).collect();
            names.push(g.value(n.output(0).unwrap()).name.as_str());
            names
        };
        assert_eq!(name_of("Add"), ["x", "t_c_1", "t_1"]);
        assert_eq!(name_of("Sub"), ["x", "t_c", "t"]);
        assert_eq!(entries(&report, "applied", RULE).len(), 2);
        for seed in 0..3 {
            check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
        }
    }

    /// A taken branch holding an `If` on a runtime condition that reads the branch's value `t`
    /// by name; the parent may already define `t`.
    fn nested(parent_has_t: bool) -> Model {
        let inner = |op_type: &str| {
            let mut b = Graph::new();
            b.name = Some(format!("inner_{op_type}"));
            let t = b.add_outer("t");
            let y = op(&mut b, NodeSpec::new(op_type).inputs([t]).outputs([format!("{op_type}_y")]));
            output(&mut b, y, tensor_ty(DataType::F32, &[3]));
            b
        };
        let mut b = branch("Add", 1.0, "t", "ty");
        let flag = b.add_outer("flag");
        let r = b.find_value("ty").unwrap();
        let w = op(&mut b, if_spec(flag, inner("Neg"), inner("Abs"), &["w"]));
        let s = op(&mut b, NodeSpec::new("Add").inputs([r, w]).outputs(["s"]));
        b.set_outputs(vec![s]);
        b.value_mut(s).ty = Some(tensor_ty(DataType::F32, &[3]));
        let mut g = Graph::new();
        g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        g.add_input("flag", Some(tensor_ty(DataType::Bool, &[])));
        let cond = bool_const(&mut g, "cond", true);
        if parent_has_t {
            let x = g.find_value("x").unwrap();
            let t = op(&mut g, NodeSpec::new("Sin").inputs([x]).outputs(["t"]));
            output(&mut g, t, tensor_ty(DataType::F32, &[3]));
        }
        let y = op(&mut g, if_spec(cond, b, branch("Mul", 2.0, "e", "ey"), &["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        model(g, 17)
    }

    #[test]
    fn a_nested_if_moves_up_and_still_runs() {
        require_ort().unwrap();
        let before = nested(false);
        let mut after = before.clone();
        let (changed, report) = apply(&InlineConstantIf, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        assert_eq!(ops(g), ["Add", "Relu", "If", "Add"]);
        for seed in 0..6 {
            check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
        }
        for flag in [true, false] {
            let x = Tensor::from_slice(vec![3], &[-1.0f32, 0.5, 2.0]).unwrap();
            let f = Tensor::from_slice(vec![], &[flag]).unwrap();
            let feeds = to_inputs(&[("x", x), ("flag", f)]);
            compare_outputs(&run(&after, &feeds).unwrap(), &run(&before, &feeds).unwrap(), Tolerance::EXACT).unwrap();
        }
    }

    #[test]
    fn a_renamed_value_read_by_a_nested_subgraph_keeps_the_if() {
        // The main graph defines 't' and the taken branch defines it too (ONNX Runtime rejects
        // such shadowing, but the IR can hold it): renaming the branch's 't' would break the
        // nested If that reads it by name.
        let mut m = nested(true);
        let (changed, report) = apply(&InlineConstantIf, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        let missed = entries(&report, "missed", RULE);
        assert_eq!(missed.len(), 1, "{report:?}");
        assert!(missed[0].detail.contains("'t'"), "{report:?}");
        assert_eq!(count_op(&m, "If"), 2);
    }

    #[test]
    fn ifs_in_subgraphs_use_constants_of_enclosing_scopes() {
        require_ort().unwrap();
        // An If on a runtime flag whose then-branch holds an If on the main graph's constant.
        let mut outer_then = Graph::new();
        outer_then.name = Some("outer_then".into());
        let k = outer_then.add_outer("k");
        let y = op(&mut outer_then, if_spec(k, branch("Add", 1.0, "t", "ty"), branch("Mul", 2.0, "e", "ey"), &["v"]));
        output(&mut outer_then, y, tensor_ty(DataType::F32, &[3]));
        let mut g = Graph::new();
        g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let flag = g.add_input("flag", Some(tensor_ty(DataType::Bool, &[])));
        bool_const(&mut g, "k", false);
        let y = op(&mut g, if_spec(flag, outer_then, branch("Sub", 3.0, "s", "sy"), &["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        let before = model(g, 17);
        let mut after = before.clone();
        let (changed, report) = apply(&InlineConstantIf, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        assert!(entries(&report, "applied", RULE)[0].node.contains("then_branch"), "{report:?}");
        assert_eq!(count_op(&after, "If"), 1);
        assert_eq!(count_op(&after, "Mul"), 1);
        assert_eq!(count_op(&after, "Add"), 0);
        for seed in 0..6 {
            check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
        }
    }

    #[test]
    fn a_constant_node_condition_counts() {
        require_ort().unwrap();
        let mut m = constant_if(false);
        let g = m.graph.as_mut().unwrap();
        let id = g.nodes().find(|(_, n)| n.is_onnx("If")).unwrap().0;
        let t = Tensor::from_slice(vec![1], &[true]).unwrap();
        let c = op(
            g,
            NodeSpec::new("Constant").outputs(["kc"]).attr(Attribute::new("value", AttrValue::Tensor(Arc::new(t)))),
        );
        g.set_input(id, 0, Some(c));
        let order: Vec<NodeId> = {
            let ids = g.node_ids();
            let last = *ids.last().unwrap();
            std::iter::once(last).chain(ids.into_iter().filter(|&n| n != last)).collect()
        };
        g.set_order(order);
        let before = m.clone();
        let (changed, _) = apply(&InlineConstantIf, &mut m).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(count_op(&m, "Add"), 1);
        check_same_outputs(&before, &m, 0, Tolerance::EXACT).unwrap();
    }

    /// `If(cond)` where `cond` is computed from the shape of `state: [2, batch, 128]`.
    fn shape_condition(cond_of: impl FnOnce(&mut Graph, ValueId) -> ValueId) -> Model {
        let mut g = Graph::new();
        g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let state = g.add_input("state", Some(tensor_ty_sym(DataType::F32, &[Some(2), None, Some(128)])));
        let cond = cond_of(&mut g, state);
        let y = op(&mut g, if_spec(cond, branch("Add", 1.0, "t", "ty"), branch("Mul", 2.0, "e", "ey"), &["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        model(g, 17)
    }

    /// `Cast(Squeeze(Gather(Shape(state), [i])), bool)`, as PyTorch exports `if state.size(i)`.
    fn dim_is_nonzero(g: &mut Graph, state: ValueId, i: i64) -> ValueId {
        let s = op(g, NodeSpec::new("Shape").inputs([state]).outputs(["s"]));
        let idx = constant(g, "idx", Tensor::from_slice(vec![1], &[i]).unwrap());
        let d = op(g, NodeSpec::new("Gather").inputs([s, idx]).outputs(["d"]));
        let axes = constant(g, "axes", Tensor::from_slice(vec![1], &[0i64]).unwrap());
        let q = op(g, NodeSpec::new("Squeeze").inputs([d, axes]).outputs(["q"]));
        op(g, NodeSpec::new("Cast").inputs([q]).outputs(["c"]).attr(Attribute::int("to", 9)))
    }

    #[test]
    fn a_condition_known_from_declared_shapes_inlines() {
        require_ort().unwrap();
        let before = shape_condition(|g, state| dim_is_nonzero(g, state, 0));
        let mut after = before.clone();
        let (changed, report) = apply(&InlineConstantIf, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        assert!(entries(&report, "applied", RULE)[0].detail.contains("then_branch"), "{report:?}");
        assert_eq!(count_op(&after, "If"), 0);
        assert_eq!(count_op(&after, "Add"), 1);
        for seed in 0..3 {
            check_same_outputs(&before, &after, seed, Tolerance::EXACT).unwrap();
        }
        // The rank through Size(Shape(..)): Not(Equal(Size(Shape(state)), 0)) is true.
        let before = shape_condition(|g, state| {
            let s = op(g, NodeSpec::new("Shape").inputs([state]).outputs(["s"]));
            let r = op(g, NodeSpec::new("Size").inputs([s]).outputs(["r"]));
            let zero = constant(g, "zero", Tensor::scalar(0i64));
            let eq = op(g, NodeSpec::new("Equal").inputs([r, zero]).outputs(["eq"]));
            op(g, NodeSpec::new("Not").inputs([eq]).outputs(["c"]))
        });
        let mut after = before.clone();
        assert_eq!(apply(&InlineConstantIf, &mut after).unwrap().0, Changed::Yes);
        assert_eq!(count_op(&after, "Add"), 1);
        check_same_outputs(&before, &after, 0, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn a_condition_on_a_symbolic_dim_stays() {
        let mut m = shape_condition(|g, state| dim_is_nonzero(g, state, 1));
        let (changed, report) = apply(&InlineConstantIf, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert!(report.is_empty(), "{report:?}");
        assert_eq!(count_op(&m, "If"), 1);
        // A float computation is not followed either.
        let mut m = shape_condition(|g, state| {
            let s = op(g, NodeSpec::new("Shape").inputs([state]).outputs(["s"]));
            let f = op(g, NodeSpec::new("Cast").inputs([s]).outputs(["f"]).attr(Attribute::int("to", 1)));
            let r = op(g, NodeSpec::new("ReduceSum").inputs([f]).outputs(["r"]));
            op(g, NodeSpec::new("Cast").inputs([r]).outputs(["c"]).attr(Attribute::int("to", 9)))
        });
        assert_eq!(apply(&InlineConstantIf, &mut m).unwrap().0, Changed::No);
    }
}
