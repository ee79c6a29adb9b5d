//! What a rule sees while it matches: the graph, the operator sets, and small typed lookups
//! (producers, constants, uses) so patterns read like the graph they describe.

use std::collections::HashSet;
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, AttrValue, Dim, Graph, Node, NodeId, ValueDef, ValueId};
use kiln_compiler::tensor::Tensor;

use super::patch::value_dtype;

/// Why a rule did not produce a patch at a root node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoMatch {
    /// The root is not the start of this pattern at all (not reported).
    NotHere,
    /// The pattern's anchor matched, but a later part or a guard did not (reported, with why).
    Missed(String),
    /// A guard needs a fact nobody knows yet, usually a shape (reported, with why).
    Skipped(String),
}

/// `Option` to `Result<_, NoMatch>` in the style of the patterns.
pub trait OrMiss<T> {
    /// Absent: the root is not this pattern.
    fn here(self) -> Result<T, NoMatch>;
    /// Absent: the pattern started to match and stopped here, for this reason.
    fn or_miss(self, why: &str) -> Result<T, NoMatch>;
    /// Absent: a fact the guard needs is unknown.
    fn or_skip(self, why: &str) -> Result<T, NoMatch>;
}

impl<T> OrMiss<T> for Option<T> {
    fn here(self) -> Result<T, NoMatch> {
        self.ok_or(NoMatch::NotHere)
    }
    fn or_miss(self, why: &str) -> Result<T, NoMatch> {
        self.ok_or_else(|| NoMatch::Missed(why.to_string()))
    }
    fn or_skip(self, why: &str) -> Result<T, NoMatch> {
        self.ok_or_else(|| NoMatch::Skipped(why.to_string()))
    }
}

/// Fails with `Missed(why)` unless `cond`.
pub fn ensure(cond: bool, why: &str) -> Result<(), NoMatch> {
    if cond { Ok(()) } else { Err(NoMatch::Missed(why.to_string())) }
}

/// Fails with `NotHere` unless `cond`.
pub fn here(cond: bool) -> Result<(), NoMatch> {
    if cond { Ok(()) } else { Err(NoMatch::NotHere) }
}

/// The matching context of one graph.
pub struct Matcher<'g> {
    pub g: &'g Graph,
    /// Default-domain operator set version of the model.
    pub opset: i64,
    captured: &'g HashSet<ValueId>,
}

impl<'g> Matcher<'g> {
    pub fn new(g: &'g Graph, opset: i64, captured: &'g HashSet<ValueId>) -> Matcher<'g> {
        Matcher { g, opset, captured }
    }

    pub fn node(&self, id: NodeId) -> &'g Node {
        self.g.node(id)
    }

    /// The node producing `v`, if it is the ONNX op `op`.
    pub fn producer(&self, v: ValueId, op: &str) -> Option<(NodeId, &'g Node)> {
        let id = self.g.value(v).producer()?;
        let n = self.g.node(id);
        n.is_onnx(op).then_some((id, n))
    }

    /// The node producing `v`, if it is `op` of `domain`.
    pub fn producer_in(&self, v: ValueId, domain: &str, op: &str) -> Option<(NodeId, &'g Node)> {
        let id = self.g.value(v).producer()?;
        let n = self.g.node(id);
        (n.domain() == domain && n.op_type == op).then_some((id, n))
    }

    /// Inputs 0 and 1 of a binary node.
    pub fn operands(&self, n: &Node) -> Option<(ValueId, ValueId)> {
        if n.inputs().len() != 2 {
            return None;
        }
        Some((n.input(0)?, n.input(1)?))
    }

    /// Both orders of a commutative node's operands, written out: `[(a, b), (b, a)]`.
    pub fn both_orders(&self, n: &Node) -> Vec<(ValueId, ValueId)> {
        match self.operands(n) {
            Some((a, b)) => vec![(a, b), (b, a)],
            None => Vec::new(),
        }
    }

    /// The constant behind `v`: an initializer, a `Constant` node, or a `Reshape`/`Unsqueeze`/
    /// `Squeeze`/`Identity` of one with constant arguments (as exporters write biases).
    pub fn constant(&self, v: ValueId) -> Option<Arc<Tensor>> {
        self.constant_depth(v, 4)
    }

    fn constant_depth(&self, v: ValueId, depth: usize) -> Option<Arc<Tensor>> {
        let val = self.g.value(v);
        match val.def() {
            ValueDef::Initializer(t) => {
                // An initializer that is also a graph input can be overridden at run time.
                if self.g.inputs().contains(&v) { None } else { Some(t.clone()) }
            }
            ValueDef::Node { node, .. } if depth > 0 => {
                let n = self.g.node(*node);
                if !n.domain().is_empty() {
                    return None;
                }
                match n.op_type.as_str() {
                    "Constant" => constant_attr(n),
                    "Identity" => self.constant_depth(n.input(0)?, depth - 1),
                    "Reshape" => {
                        let data = self.constant_depth(n.input(0)?, depth - 1)?;
                        let shape = self.constant_depth(n.input(1)?, depth - 1)?.to_vec::<i64>().ok()?;
                        let dims = reshape_dims(data.dims(), &shape, n.attr_int("allowzero") == Some(1))?;
                        Some(Arc::new(data.reshaped(dims).ok()?))
                    }
                    "Unsqueeze" | "Squeeze" => {
                        let data = self.constant_depth(n.input(0)?, depth - 1)?;
                        let axes = match n.input(1) {
                            Some(a) => self.constant_depth(a, depth - 1)?.to_vec::<i64>().ok()?,
                            None => n.attr_ints("axes").map(<[i64]>::to_vec).unwrap_or_default(),
                        };
                        let dims = if n.op_type == "Unsqueeze" {
                            unsqueeze_dims(data.dims(), &axes)?
                        } else {
                            squeeze_dims(data.dims(), &axes)?
                        };
                        Some(Arc::new(data.reshaped(dims).ok()?))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The value of a one-element numeric constant.
    pub fn scalar(&self, v: ValueId) -> Option<f64> {
        let t = self.constant(v)?;
        if t.len() != 1 {
            return None;
        }
        t.to_f64_vec().ok()?.first().copied()
    }

    /// Whether `v` is a one-element constant within `tol` (relative) of `want`.
    pub fn is_scalar(&self, v: ValueId, want: f64, tol: f64) -> bool {
        self.scalar(v).is_some_and(|x| (x - want).abs() <= tol * want.abs().max(1.0))
    }

    /// Integer constant elements.
    pub fn ints(&self, v: ValueId) -> Option<Vec<i64>> {
        let t = self.constant(v)?;
        match t.dtype() {
            DataType::I64 => t.to_vec::<i64>().ok(),
            DataType::I32 => Some(t.to_vec::<i32>().ok()?.into_iter().map(i64::from).collect()),
            _ => None,
        }
    }

    /// Whether a value is produced at run time (not a constant).
    pub fn is_dynamic(&self, v: ValueId) -> bool {
        self.constant(v).is_none()
    }

    /// The only use of `v` if it has exactly one and nothing else (graph outputs, subgraph
    /// captures) reads it.
    pub fn single_user(&self, v: ValueId) -> Option<NodeId> {
        let uses = self.g.value(v).uses();
        if uses.len() != 1 || self.g.is_output(v) || self.captured.contains(&v) {
            return None;
        }
        Some(uses[0].node)
    }

    /// Whether `v` is read by anything besides the nodes in `users`.
    pub fn used_outside(&self, v: ValueId, users: &[NodeId]) -> bool {
        self.g.is_output(v)
            || self.captured.contains(&v)
            || self.g.value(v).uses().iter().any(|u| !users.contains(&u.node))
    }

    pub fn dtype(&self, v: ValueId) -> Option<DataType> {
        value_dtype(self.g, v)
    }

    /// The shape of `v`, from its declared or inferred type or its constant.
    pub fn shape(&self, v: ValueId) -> Option<Vec<Dim>> {
        if let Some(t) = self.constant(v) {
            return Some(t.dims().iter().map(|&d| Dim::known(d as i64)).collect());
        }
        self.g.tensor_type(v)?.shape.clone()
    }

    pub fn rank(&self, v: ValueId) -> Option<usize> {
        self.shape(v).map(|s| s.len())
    }

    /// Reduction axes of a `Reduce*` node (attribute before opset 18, input from 18).
    pub fn reduce_axes(&self, n: &Node) -> Option<Vec<i64>> {
        match n.input(1) {
            Some(a) => self.ints(a),
            None => n.attr_ints("axes").map(<[i64]>::to_vec),
        }
    }

    /// Axes of an `Unsqueeze`/`Squeeze` node (attribute before opset 13, input from 13).
    pub fn unsqueeze_axes(&self, n: &Node) -> Option<Vec<i64>> {
        match n.input(1) {
            Some(a) => self.ints(a),
            None => n.attr_ints("axes").map(<[i64]>::to_vec),
        }
    }

    /// A label for reports.
    pub fn label(&self, id: NodeId) -> String {
        self.g.node(id).label(id)
    }
}

/// The tensor a `Constant` node holds, in any of its attribute forms.
fn constant_attr(n: &Node) -> Option<Arc<Tensor>> {
    let a = n.attributes.first()?;
    if n.attributes.len() != 1 {
        return None;
    }
    match (&a.name[..], &a.value) {
        ("value", AttrValue::Tensor(t)) => Some(t.clone()),
        ("value_float", AttrValue::Float(f)) => Some(Arc::new(Tensor::scalar(*f))),
        ("value_int", AttrValue::Int(i)) => Some(Arc::new(Tensor::scalar(*i))),
        ("value_floats", AttrValue::Floats(f)) => Tensor::from_slice(vec![f.len()], f).ok().map(Arc::new),
        ("value_ints", AttrValue::Ints(i)) => Tensor::from_slice(vec![i.len()], i).ok().map(Arc::new),
        _ => None,
    }
}

/// The result dims of an ONNX Reshape with a constant shape.
pub fn reshape_dims(input: &[usize], shape: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 if !allowzero => out.push(*input.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            s if s >= 0 => out.push(usize::try_from(s).ok()?),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

fn unsqueeze_dims(input: &[usize], axes: &[i64]) -> Option<Vec<usize>> {
    let rank = input.len() + axes.len();
    let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<Option<_>>()?;
    ax.sort_unstable();
    ax.dedup();
    if ax.len() != axes.len() {
        return None;
    }
    let mut it = input.iter();
    (0..rank).map(|i| if ax.contains(&i) { Some(1) } else { it.next().copied() }).collect()
}

fn squeeze_dims(input: &[usize], axes: &[i64]) -> Option<Vec<usize>> {
    if axes.is_empty() {
        return Some(input.iter().copied().filter(|&d| d != 1).collect());
    }
    let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, input.len())).collect::<Option<_>>()?;
    if ax.iter().any(|&a| input[a] != 1) {
        return None;
    }
    Some(input.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, &d)| d).collect())
}

/// f32 elements of a constant, or `None` for any other element type.
pub fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    t.to_vec::<f32>().ok()
}

/// A 1-D f32 tensor.
pub fn f32_tensor(dims: Vec<usize>, v: &[f32]) -> Option<Tensor> {
    Tensor::from_slice(dims, v).ok()
}
