//! `eliminate-no-ops`: nodes that provably return their input, and chains that collapse.
//!
//! Removed (readers moved onto the input): `Identity`; `Dropout` in inference mode with its
//! mask unread; `Cast`/`CastLike` to the input's own type; a single-input `Concat`;
//! `Reshape`, `Expand`, `Slice`, `Pad`, `Transpose`, `Flatten` that change nothing (proved
//! from constants and declared shapes); `Unsqueeze`→`Squeeze` and `Squeeze`→`Unsqueeze` on
//! the same axes. Collapsed: `Transpose`→`Transpose` (composed permutation), a `Reshape` fed
//! by a reshaping op (`Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`), and `Cast`→`Cast` when
//! the first cast is exact for every value of the source type.
//!
//! A value that is a graph output (or captured by a subgraph) keeps its name: the input's
//! producer is rebound to write it, or, when the input has no producer in this graph, the
//! node stays and the report says why.

use std::collections::HashSet;

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Attribute, Dim, Graph, Model, NodeId, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

use super::common::{
    Scope, as_i64s, cannot_forward, captured, constant_of, dtype_of, forward, ints_attr_or_input, is_used, known,
    label, prune_value_info, shape_of, visit_with_scope,
};

const RULE: &str = "eliminate-no-ops";

/// Removes no-op nodes and collapses redundant chains, in every graph.
#[derive(Debug, Clone, Copy, Default)]
pub struct EliminateNoOps;

impl Pass for EliminateNoOps {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let opset = model.opset("");
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, scope, path| {
            let mut cx = Cx { g, scope, path, opset, report: cx, missed: HashSet::new() };
            changed |= cx.run();
        });
        Ok(Changed::from_bool(changed))
    }
}

/// What a rule found for one node.
enum Found {
    /// The node's first output equals `to`: remove the node, its readers read `to`; then
    /// remove `inner` too if nothing reads it any more.
    Forward { rule: &'static str, to: ValueId, inner: Option<NodeId> },
    /// The node was rewritten in place (a chain collapsed).
    Rewritten { rule: &'static str, detail: String },
}

struct Cx<'a> {
    g: &'a mut Graph,
    scope: &'a Scope,
    path: &'a str,
    /// Default-domain opset, if imported.
    opset: Option<i64>,
    report: &'a mut PassContext,
    /// Nodes already reported as missed (the graph is swept more than once).
    missed: HashSet<NodeId>,
}

impl Cx<'_> {
    fn run(&mut self) -> bool {
        let mut changed = false;
        for _ in 0..16 {
            let captured = captured(self.g);
            let mut any = false;
            for id in self.g.node_ids() {
                if self.g.get_node(id).is_none() {
                    continue;
                }
                let Some(found) = self.find(id, &captured) else { continue };
                any |= self.apply(id, found, &captured);
            }
            changed |= any;
            if !any {
                break;
            }
        }
        if changed {
            prune_value_info(self.g);
        }
        changed
    }

    fn apply(&mut self, id: NodeId, found: Found, captured: &HashSet<String>) -> bool {
        let where_ = label(self.path, self.g, id);
        match found {
            Found::Rewritten { rule, detail } => {
                self.report.applied(rule, where_, detail);
                true
            }
            Found::Forward { rule, to, inner } => {
                let n = self.g.node(id);
                let Some(out) = n.output(0) else { return false };
                let extra_read = n.outputs().iter().skip(1).flatten().any(|&v| is_used(self.g, v, captured));
                let why = if extra_read {
                    Some("another output of the node is read".to_string())
                } else {
                    cannot_forward(self.g, out, to, captured)
                };
                if let Some(why) = why {
                    if self.missed.insert(id) {
                        self.report.missed(rule, where_, why);
                    }
                    return false;
                }
                let detail = format!("'{}' is '{}'", self.g.value(out).name, self.g.value(to).name);
                self.g.remove_node(id);
                forward(self.g, out, to, captured);
                if let Some(inner) = inner {
                    self.remove_if_unread(inner, captured);
                }
                self.report.applied(rule, where_, detail);
                true
            }
        }
    }

    fn find(&mut self, id: NodeId, captured: &HashSet<String>) -> Option<Found> {
        let n = self.g.node(id);
        if !n.domain().is_empty() {
            return None;
        }
        let x = n.input(0)?;
        let forward = |rule| Some(Found::Forward { rule, to: x, inner: None });
        match n.op_type.as_str() {
            "Identity" => forward("identity"),
            "Dropout" if self.dropout_is_inference(id) => forward("dropout-inference"),
            "Cast" if n.attr_int("to").is_some_and(|to| self.dtype_code(x) == Some(to)) => forward("cast-same-type"),
            "Cast" => self.cast_chain(id, captured),
            "CastLike" => {
                let (a, b) = (dtype_of(self.g, x, self.scope), dtype_of(self.g, n.input(1)?, self.scope));
                (a.is_some() && a == b).then_some(Found::Forward { rule: "cast-same-type", to: x, inner: None })
            }
            "Concat" if n.inputs().len() == 1 => forward("concat-single"),
            "Reshape" if self.reshape_is_noop(id) => forward("reshape-noop"),
            "Reshape" => self.reshape_chain(id, captured),
            "Expand" if self.expand_is_noop(id) => forward("expand-noop"),
            "Slice" if self.slice_is_noop(id) => forward("slice-noop"),
            "Pad" if self.pad_is_noop(id) => forward("pad-noop"),
            "Flatten" if self.flatten_is_noop(id) => forward("flatten-noop"),
            "Transpose" => match self.perm(id)? {
                p if p.iter().enumerate().all(|(i, &a)| a == i as i64) => forward("transpose-identity"),
                _ => self.transpose_chain(id, captured),
            },
            "Squeeze" | "Unsqueeze" => self.squeeze_pair(id),
            _ => None,
        }
    }

    /// The ONNX code of a value's element type, as `Cast`'s `to` attribute writes it.
    fn dtype_code(&self, v: ValueId) -> Option<i64> {
        dtype_of(self.g, v, self.scope).map(|d| i64::from(d.onnx_code()))
    }

    /// Whether a `Dropout` computes nothing: inference mode and no random mask.
    fn dropout_is_inference(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        match self.opset {
            Some(v) if v < 7 => n.attr_int("is_test") == Some(1),
            Some(v) if v < 12 => true,
            _ => match n.input(2) {
                None => true,
                Some(t) => constant_of(self.g, t, self.scope)
                    .and_then(|t| t.to_vec::<bool>().ok())
                    .is_some_and(|v| v.iter().all(|b| !b)),
            },
        }
    }

    /// `Cast(Cast(x, T1), T2)` → `Cast(x, T2)` when `T1` holds every value of `x`'s type.
    fn cast_chain(&mut self, id: NodeId, captured: &HashSet<String>) -> Option<Found> {
        let n = self.g.node(id);
        let y = n.input(0)?;
        let m = self.g.value(y).producer()?;
        let mn = self.g.node(m);
        if !mn.is_onnx("Cast") || mn.attributes.iter().any(|a| a.name != "to") {
            return None;
        }
        if n.attributes.iter().any(|a| a.name != "to") {
            return None;
        }
        let x = mn.input(0)?;
        let src = dtype_of(self.g, x, self.scope)?;
        let mid = DataType::from_onnx(i32::try_from(mn.attr_int("to")?).ok()?)?;
        let dst = DataType::from_onnx(i32::try_from(n.attr_int("to")?).ok()?)?;
        if !exactly_holds(src, mid) || !plain_numeric(dst) {
            return None;
        }
        self.g.set_input(id, 0, Some(x));
        let detail = format!("{src} -> {mid} -> {dst} is {src} -> {dst}");
        self.remove_if_unread(m, captured);
        Some(Found::Rewritten { rule: "cast-chain", detail })
    }

    /// The permutation of a `Transpose`; the default (reversed axes) needs the rank.
    fn perm(&self, id: NodeId) -> Option<Vec<i64>> {
        let n = self.g.node(id);
        if let Some(p) = n.attr_ints("perm") {
            return Some(p.to_vec());
        }
        let rank = shape_of(self.g, n.input(0)?, self.scope)?.len() as i64;
        Some((0..rank).rev().collect())
    }

    /// `Transpose(Transpose(x, p1), p2)` → `Transpose(x, p1∘p2)`.
    fn transpose_chain(&mut self, id: NodeId, captured: &HashSet<String>) -> Option<Found> {
        let y = self.g.node(id).input(0)?;
        let m = self.g.value(y).producer()?;
        if !self.g.node(m).is_onnx("Transpose") {
            return None;
        }
        let (p1, p2) = (self.perm(m)?, self.perm(id)?);
        if p1.len() != p2.len() || !is_permutation(&p1) || !is_permutation(&p2) {
            return None;
        }
        let composed: Vec<i64> = p2.iter().map(|&i| p1[i as usize]).collect();
        let x = self.g.node(m).input(0)?;
        self.g.set_input(id, 0, Some(x));
        let node = self.g.node_mut(id);
        node.attributes.retain(|a| a.name != "perm");
        node.attributes.push(Attribute::ints("perm", composed.clone()));
        self.remove_if_unread(m, captured);
        Some(Found::Rewritten { rule: "transpose-chain", detail: format!("perm {p1:?} then {p2:?} is {composed:?}") })
    }

    /// The constant target shape of a `Reshape` (input in opset 5+, attribute before).
    fn reshape_target(&self, id: NodeId) -> Option<Vec<i64>> {
        ints_attr_or_input(self.g, self.g.node(id), "shape", 1, self.scope).ok().flatten()
    }

    fn reshape_is_noop(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        let allowzero = n.attr_int("allowzero") == Some(1);
        let (Some(target), Some(x)) = (self.reshape_target(id), n.input(0)) else { return false };
        let Some(dims) = shape_of(self.g, x, self.scope) else { return false };
        if dims.len() != target.len() || target.iter().filter(|&&t| t == -1).count() > 1 {
            return false;
        }
        let has_minus_one = target.contains(&-1);
        // -1 is inferred from the element count, which a zero dimension leaves undefined.
        if has_minus_one && dims.iter().any(|d| known(d) == Some(0)) {
            return false;
        }
        dims.iter().zip(&target).all(|(d, &t)| match t {
            -1 => true,
            0 if !allowzero => true,
            t => known(d) == Some(t),
        })
    }

    /// `Reshape(R(x), s)` → `Reshape(x, s)` when `R` only reshapes and `s` does not copy dims.
    fn reshape_chain(&mut self, id: NodeId, captured: &HashSet<String>) -> Option<Found> {
        let n = self.g.node(id);
        let allowzero = n.attr_int("allowzero") == Some(1);
        let target = self.reshape_target(id)?;
        if target.contains(&0) && !allowzero {
            return None;
        }
        let y = n.input(0)?;
        let m = self.g.value(y).producer()?;
        let mn = self.g.node(m);
        if !mn.domain().is_empty() || !matches!(mn.op_type.as_str(), "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze") {
            return None;
        }
        let x = mn.input(0)?;
        let detail = format!("reads the input of {} directly", mn.label(m));
        self.g.set_input(id, 0, Some(x));
        self.remove_if_unread(m, captured);
        Some(Found::Rewritten { rule: "reshape-chain", detail })
    }

    fn expand_is_noop(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        let (Some(x), Some(s)) = (n.input(0), n.input(1)) else { return false };
        let Some(shape) = constant_of(self.g, s, self.scope).and_then(|t| as_i64s(&t)) else { return false };
        let Some(dims) = shape_of(self.g, x, self.scope) else { return false };
        if dims.len() < shape.len() {
            return false;
        }
        let offset = dims.len() - shape.len();
        shape.iter().enumerate().all(|(i, &s)| s == 1 || known(&dims[offset + i]) == Some(s))
    }

    fn slice_is_noop(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        let Some(x) = n.input(0) else { return false };
        let old = self.opset.is_some_and(|v| v < 10);
        // Attributes before opset 10, constant inputs since.
        let get = |attr: &str, input: usize| -> Result<Option<Vec<i64>>, ()> {
            if old {
                return Ok(n.attr_ints(attr).map(<[i64]>::to_vec));
            }
            match n.input(input) {
                None => Ok(None),
                Some(v) => constant_of(self.g, v, self.scope).and_then(|t| as_i64s(&t)).map(Some).ok_or(()),
            }
        };
        let (Ok(Some(starts)), Ok(Some(ends)), Ok(axes), Ok(steps)) =
            (get("starts", 1), get("ends", 2), get("axes", 3), if old { Ok(None) } else { get("steps", 4) })
        else {
            return false;
        };
        let dims: Option<Vec<Dim>> = shape_of(self.g, x, self.scope);
        let rank = dims.as_ref().map(|d| d.len() as i64);
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if axes.len() != starts.len() || ends.len() != starts.len() || steps.len() != starts.len() {
            return false;
        }
        // "To the end" without a known dimension only for ends no real dimension reaches.
        const FAR: i64 = 1 << 62;
        (0..starts.len()).all(|i| {
            let axis = match (axes[i], rank) {
                (a, _) if a >= 0 => a,
                (a, Some(r)) => a + r,
                _ => return false,
            };
            let dim = dims.as_ref().and_then(|d| d.get(axis as usize)).and_then(known);
            let start_ok = starts[i] == 0 || dim.is_some_and(|d| starts[i] < 0 && starts[i] + d <= 0);
            let end_ok = ends[i] >= FAR || dim.is_some_and(|d| ends[i] >= d);
            steps[i] == 1 && start_ok && end_ok
        })
    }

    fn pad_is_noop(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        let pads = match n.attr_ints("pads").or_else(|| n.attr_ints("paddings")) {
            Some(p) => Some(p.to_vec()),
            None => n.input(1).and_then(|p| constant_of(self.g, p, self.scope)).and_then(|t| as_i64s(&t)),
        };
        pads.is_some_and(|p| p.iter().all(|&v| v == 0))
    }

    fn flatten_is_noop(&self, id: NodeId) -> bool {
        let n = self.g.node(id);
        let rank = n.input(0).and_then(|x| shape_of(self.g, x, self.scope)).map(|d| d.len());
        let axis = n.attr_int("axis").unwrap_or(1);
        rank == Some(2) && (axis == 1 || axis == -1)
    }

    /// `Squeeze(Unsqueeze(x, a), a)` and `Unsqueeze(Squeeze(x, a), a)` are `x`.
    fn squeeze_pair(&self, id: NodeId) -> Option<Found> {
        let n = self.g.node(id);
        let y = n.input(0)?;
        let m = self.g.value(y).producer()?;
        let mn = self.g.node(m);
        let pair = match (mn.op_type.as_str(), n.op_type.as_str()) {
            ("Unsqueeze", "Squeeze") => "unsqueeze-squeeze",
            ("Squeeze", "Unsqueeze") => "squeeze-unsqueeze",
            _ => return None,
        };
        if !mn.domain().is_empty() {
            return None;
        }
        let x = mn.input(0)?;
        let outer = ints_attr_or_input(self.g, n, "axes", 1, self.scope).ok()??;
        let inner = ints_attr_or_input(self.g, mn, "axes", 1, self.scope).ok()??;
        // Both lists index the same rank: the Unsqueeze's output, or the Squeeze's input.
        let rank = || -> Option<i64> {
            let r = shape_of(self.g, x, self.scope)?.len() as i64;
            Some(if pair == "unsqueeze-squeeze" { r + inner.len() as i64 } else { r })
        };
        let normalize = |axes: &[i64]| -> Option<Vec<i64>> {
            let mut v: Vec<i64> =
                axes.iter().map(|&a| if a >= 0 { Some(a) } else { rank().map(|r| a + r) }).collect::<Option<_>>()?;
            v.sort_unstable();
            Some(v)
        };
        let (a, b) = (normalize(&outer)?, normalize(&inner)?);
        (a == b && !a.is_empty()).then_some(Found::Forward { rule: pair, to: x, inner: Some(m) })
    }

    /// Removes a node whose outputs nobody reads any more.
    fn remove_if_unread(&mut self, id: NodeId, captured: &HashSet<String>) {
        let n = self.g.node(id);
        if n.outputs().iter().flatten().all(|&v| !is_used(self.g, v, captured)) {
            self.g.remove_node(id);
        }
    }
}

fn is_permutation(p: &[i64]) -> bool {
    let mut seen = vec![false; p.len()];
    p.iter().all(|&i| {
        usize::try_from(i).ok().filter(|&i| i < seen.len()).is_some_and(|i| !std::mem::replace(&mut seen[i], true))
    })
}

/// Numeric types a cast converts by value (f8/f4 casts saturate or round by attributes;
/// strings parse).
fn plain_numeric(d: DataType) -> bool {
    use DataType as D;
    matches!(
        d,
        D::F32
            | D::F64
            | D::F16
            | D::BF16
            | D::I8
            | D::I16
            | D::I32
            | D::I64
            | D::U8
            | D::U16
            | D::U32
            | D::U64
            | D::Bool
    )
}

/// Whether type `to` represents every value of type `from` exactly, NaN and infinities
/// included, so that a cast through `to` loses nothing.
pub(crate) fn exactly_holds(from: DataType, to: DataType) -> bool {
    use DataType as D;
    if from == to {
        return plain_numeric(from);
    }
    match from {
        D::Bool => matches!(
            to,
            D::I8 | D::I16 | D::I32 | D::I64 | D::U8 | D::U16 | D::U32 | D::U64 | D::F16 | D::BF16 | D::F32 | D::F64
        ),
        // Integers up to 2^8 fit bf16 (8 significant bits), up to 2^11 f16, 2^24 f32, 2^53 f64.
        D::U8 => matches!(to, D::U16 | D::U32 | D::U64 | D::I16 | D::I32 | D::I64 | D::F16 | D::BF16 | D::F32 | D::F64),
        D::I8 => matches!(to, D::I16 | D::I32 | D::I64 | D::F16 | D::BF16 | D::F32 | D::F64),
        D::U16 => matches!(to, D::U32 | D::U64 | D::I32 | D::I64 | D::F32 | D::F64),
        D::I16 => matches!(to, D::I32 | D::I64 | D::F32 | D::F64),
        D::U32 => matches!(to, D::U64 | D::I64 | D::F64),
        D::I32 => matches!(to, D::I64 | D::F64),
        D::F16 | D::BF16 => matches!(to, D::F32 | D::F64),
        D::F32 => to == D::F64,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use kiln_compiler::ir::{NodeSpec, Type, ValueId};
    use kiln_compiler::pass::Changed;
    use kiln_compiler::tensor::Tensor;

    use super::*;
    use crate::testing::*;

    const F32: DataType = DataType::F32;

    fn i64s(v: &[i64]) -> Tensor {
        Tensor::from_slice(vec![v.len()], v).unwrap()
    }

    /// A model `y = Exp(build(x))` (the Exp keeps the rewritten value off the graph output).
    fn model_of(x_ty: Type, opset: i64, build: impl Fn(&mut Graph, ValueId) -> ValueId) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(x_ty));
        let b = build(&mut g, x);
        let y = op(&mut g, NodeSpec::new("Exp").inputs([b]).outputs(["y"]));
        g.value_mut(y).ty = None;
        g.push_output(y);
        model(g, opset)
    }

    /// The rule fires, leaves `nodes` nodes, and the numbers do not move.
    fn fires(m: Model, rule: &str, nodes: usize) -> Model {
        require_ort().unwrap();
        let mut after = m.clone();
        let (changed, report) = apply(&EliminateNoOps, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes, "{report:?}");
        assert!(!entries(&report, "applied", rule).is_empty(), "{rule}: {report:?}");
        assert_eq!(after.graph.as_ref().unwrap().node_count(), nodes, "{report:?}");
        for seed in 0..3 {
            check_same_outputs(&m, &after, seed, Tolerance::EXACT).unwrap();
        }
        after
    }

    fn stays(mut m: Model) {
        let nodes = m.graph.as_ref().unwrap().node_count();
        let (changed, report) = apply(&EliminateNoOps, &mut m).unwrap();
        assert_eq!(changed, Changed::No, "{report:?}");
        assert_eq!(m.graph.as_ref().unwrap().node_count(), nodes);
    }

    fn unary(op_type: &'static str) -> impl Fn(&mut Graph, ValueId) -> ValueId {
        move |g, x| op(g, NodeSpec::new(op_type).inputs([x]).outputs(["u"]))
    }

    #[test]
    fn identity_and_single_input_concat() {
        fires(model_of(tensor_ty(F32, &[3]), 17, unary("Identity")), "identity", 1);
        let concat = |g: &mut Graph, x| {
            op(g, NodeSpec::new("Concat").inputs([x]).outputs(["u"]).attr(Attribute::int("axis", 0)))
        };
        fires(model_of(tensor_ty(F32, &[3]), 17, concat), "concat-single", 1);
        let concat2 = |g: &mut Graph, x| {
            op(g, NodeSpec::new("Concat").inputs([x, x]).outputs(["u"]).attr(Attribute::int("axis", 0)))
        };
        stays(model_of(tensor_ty(F32, &[3]), 17, concat2));
    }

    #[test]
    fn graph_outputs_keep_their_names() {
        require_ort().unwrap();
        // y = Identity(Relu(x)): Relu now writes 'y'.
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(F32, &[3])));
        let r = op(&mut g, NodeSpec::new("Relu").inputs([x]).outputs(["r"]));
        let y = op(&mut g, NodeSpec::new("Identity").inputs([r]).outputs(["y"]));
        output(&mut g, y, tensor_ty(F32, &[3]));
        let before = model(g, 17);
        let mut after = before.clone();
        assert_eq!(apply(&EliminateNoOps, &mut after).unwrap().0, Changed::Yes);
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.node_count(), 1);
        let (_, relu) = g.nodes().next().unwrap();
        assert_eq!(g.value(relu.output(0).unwrap()).name, "y");
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();

        // y = Identity(x) with x a graph input: nothing else can be named 'y'.
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(F32, &[3])));
        let y = op(&mut g, NodeSpec::new("Identity").inputs([x]).outputs(["y"]));
        output(&mut g, y, tensor_ty(F32, &[3]));
        let mut m = model(g, 17);
        let (changed, report) = apply(&EliminateNoOps, &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert_eq!(entries(&report, "missed", "identity").len(), 1);
    }

    #[test]
    fn dropout_in_inference_mode_only() {
        let plain = |g: &mut Graph, x| op(g, NodeSpec::new("Dropout").inputs([x]).outputs(["u", "mask"]));
        fires(model_of(tensor_ty(F32, &[3]), 13, plain), "dropout-inference", 1);
        let training = |g: &mut Graph, x| {
            let r = constant(g, "ratio", Tensor::scalar(0.5f32));
            let t = constant(g, "train", Tensor::scalar(true));
            op(g, NodeSpec::new("Dropout").inputs([x, r, t]).outputs(["u"]))
        };
        stays(model_of(tensor_ty(F32, &[3]), 13, training));
        // The mask is read: it is not a no-op.
        let masked = |g: &mut Graph, x| {
            let d = g.add_node(NodeSpec::new("Dropout").inputs([x]).outputs(["u", "mask"]));
            let mask = g.node(d).output(1).unwrap();
            let c = op(g, NodeSpec::new("Cast").inputs([mask]).outputs(["c"]).attr(Attribute::int("to", 1)));
            op(g, NodeSpec::new("Add").inputs([g.node(d).output(0).unwrap(), c]).outputs(["s"]))
        };
        stays(model_of(tensor_ty(F32, &[3]), 13, masked));
    }

    fn cast(to: DataType) -> impl Fn(&mut Graph, ValueId) -> ValueId {
        move |g, x| {
            let name = g.fresh_name("cast");
            op(
                g,
                NodeSpec::new("Cast").inputs([x]).outputs([name]).attr(Attribute::int("to", i64::from(to.onnx_code()))),
            )
        }
    }

    #[test]
    fn casts_to_the_same_type() {
        fires(model_of(tensor_ty(F32, &[3]), 17, cast(F32)), "cast-same-type", 1);
        let back = |g: &mut Graph, x| {
            let d = cast(DataType::F64)(g, x);
            cast(F32)(g, d)
        };
        stays(model_of(tensor_ty(F32, &[3]), 17, cast(DataType::F64)));
        // f32 -> f64 -> f32 is exact: the chain collapses, then the same-type cast goes.
        fires(model_of(tensor_ty(F32, &[3]), 17, back), "cast-chain", 1);
    }

    #[test]
    fn cast_chains_merge_only_when_the_middle_type_is_exact() {
        let f16 = tensor_ty(DataType::F16, &[3]);
        let widen = |g: &mut Graph, x| {
            let f = cast(F32)(g, x);
            let d = cast(DataType::F64)(g, f);
            cast(F32)(g, d)
        };
        // f16 -> f32 -> f64 -> f32 is f16 -> f32.
        fires(model_of(f16.clone(), 17, widen), "cast-chain", 2);
        // f32 -> f16 -> f32 rounds: stays.
        let narrow = |g: &mut Graph, x| {
            let h = cast(DataType::F16)(g, x);
            cast(F32)(g, h)
        };
        stays(model_of(tensor_ty(F32, &[3]), 17, narrow));
        // i32 -> f32 loses integers above 2^24: stays.
        let ints = |g: &mut Graph, x| {
            let f = cast(F32)(g, x);
            let i = cast(DataType::I64)(g, f);
            cast(F32)(g, i)
        };
        stays(model_of(tensor_ty(DataType::I32, &[3]), 17, ints));
        assert!(exactly_holds(DataType::I16, F32) && !exactly_holds(DataType::I32, F32));
        assert!(exactly_holds(DataType::U8, DataType::BF16) && !exactly_holds(DataType::U16, DataType::F16));
        assert!(!exactly_holds(DataType::I8, DataType::U8) && !exactly_holds(F32, DataType::F8E4M3FN));
    }

    fn reshape(target: &'static [i64]) -> impl Fn(&mut Graph, ValueId) -> ValueId {
        move |g, x| {
            let name = g.fresh_name("shape");
            let s = constant(g, &name, i64s(target));
            let out = g.fresh_name("r");
            op(g, NodeSpec::new("Reshape").inputs([x, s]).outputs([out]))
        }
    }

    #[test]
    fn reshapes_that_change_nothing() {
        fires(model_of(tensor_ty(F32, &[2, 3]), 17, reshape(&[2, 3])), "reshape-noop", 1);
        fires(model_of(tensor_ty_sym(F32, &[None, Some(3)]), 17, reshape(&[0, -1])), "reshape-noop", 1);
        fires(model_of(tensor_ty_sym(F32, &[None, Some(3)]), 17, reshape(&[-1, 3])), "reshape-noop", 1);
        stays(model_of(tensor_ty(F32, &[2, 3]), 17, reshape(&[3, 2])));
        stays(model_of(tensor_ty_sym(F32, &[None, Some(3)]), 17, reshape(&[2, 3])));
    }

    #[test]
    fn reshape_chains_collapse() {
        let chain = |g: &mut Graph, x| {
            let r = reshape(&[6])(g, x);
            reshape(&[3, 2])(g, r)
        };
        fires(model_of(tensor_ty(F32, &[2, 3]), 17, chain), "reshape-chain", 2);
        let flat = |g: &mut Graph, x| {
            let f = op(g, NodeSpec::new("Flatten").inputs([x]).outputs(["f"]).attr(Attribute::int("axis", 0)));
            reshape(&[6])(g, f)
        };
        fires(model_of(tensor_ty(F32, &[2, 3]), 17, flat), "reshape-chain", 2);
        // Flatten then Reshape back to the known input shape: both go.
        let back = |g: &mut Graph, x| {
            let f = op(g, NodeSpec::new("Flatten").inputs([x]).outputs(["f"]));
            reshape(&[2, 3])(g, f)
        };
        let after = fires(model_of(tensor_ty(F32, &[2, 3]), 17, back), "reshape-noop", 1);
        assert_eq!(count_op(&after, "Flatten") + count_op(&after, "Reshape"), 0);
        // A 0 copies a dimension of the inner result: the inner reshape matters.
        let copy = |g: &mut Graph, x| {
            let r = reshape(&[3, 2])(g, x);
            reshape(&[0, 2])(g, r)
        };
        stays(model_of(tensor_ty(F32, &[2, 3]), 17, copy));
    }

    fn with_ints(op_type: &'static str, ints: &'static [&'static [i64]]) -> impl Fn(&mut Graph, ValueId) -> ValueId {
        move |g, x| {
            let mut inputs = vec![x];
            for v in ints {
                let name = g.fresh_name("k");
                inputs.push(constant(g, &name, i64s(v)));
            }
            let out = g.fresh_name("o");
            op(g, NodeSpec::new(op_type).inputs(inputs).outputs([out]))
        }
    }

    #[test]
    fn expand_slice_pad_that_change_nothing() {
        let t = || tensor_ty(F32, &[2, 3]);
        fires(model_of(t(), 17, with_ints("Expand", &[&[1, 3]])), "expand-noop", 1);
        fires(model_of(t(), 17, with_ints("Expand", &[&[1]])), "expand-noop", 1);
        stays(model_of(t(), 17, with_ints("Expand", &[&[2, 2, 3]])));
        stays(model_of(tensor_ty_sym(F32, &[None, Some(3)]), 17, with_ints("Expand", &[&[2, 3]])));

        fires(model_of(t(), 17, with_ints("Slice", &[&[0], &[i64::MAX], &[1]])), "slice-noop", 1);
        fires(model_of(t(), 17, with_ints("Slice", &[&[-3, 0], &[3, 2], &[1, 0]])), "slice-noop", 1);
        stays(model_of(t(), 17, with_ints("Slice", &[&[0], &[2], &[1]])));
        stays(model_of(t(), 17, with_ints("Slice", &[&[0], &[i64::MAX], &[1], &[2]])));
        stays(model_of(tensor_ty_sym(F32, &[None, None]), 17, with_ints("Slice", &[&[0], &[1000], &[1]])));

        fires(model_of(t(), 17, with_ints("Pad", &[&[0, 0, 0, 0]])), "pad-noop", 1);
        stays(model_of(t(), 17, with_ints("Pad", &[&[0, 1, 0, 0]])));
    }

    fn transpose(perm: &'static [i64]) -> impl Fn(&mut Graph, ValueId) -> ValueId {
        move |g, x| {
            let out = g.fresh_name("t");
            op(g, NodeSpec::new("Transpose").inputs([x]).outputs([out]).attr(Attribute::ints("perm", perm.to_vec())))
        }
    }

    #[test]
    fn transposes_compose() {
        let t = || tensor_ty(F32, &[2, 3, 4]);
        fires(model_of(t(), 17, transpose(&[0, 1, 2])), "transpose-identity", 1);
        let inverse = |g: &mut Graph, x| {
            let t = transpose(&[1, 2, 0])(g, x);
            transpose(&[2, 0, 1])(g, t)
        };
        fires(model_of(t(), 17, inverse), "transpose-chain", 1);
        let two = |g: &mut Graph, x| {
            let t = transpose(&[1, 2, 0])(g, x);
            transpose(&[1, 0, 2])(g, t)
        };
        let after = fires(model_of(t(), 17, two), "transpose-chain", 2);
        assert_eq!(count_op(&after, "Transpose"), 1);
        stays(model_of(t(), 17, transpose(&[1, 0, 2])));
        // Default permutation on rank 2 reverses: not an identity.
        stays(model_of(tensor_ty(F32, &[2, 3]), 17, unary("Transpose")));
    }

    #[test]
    fn squeeze_pairs_cancel() {
        let t = || tensor_ty(F32, &[2, 3]);
        let un_sq = |g: &mut Graph, x| {
            let u = with_ints("Unsqueeze", &[&[0, 3]])(g, x);
            with_ints("Squeeze", &[&[3, 0]])(g, u)
        };
        fires(model_of(t(), 17, un_sq), "unsqueeze-squeeze", 1);
        let negative_axes = |g: &mut Graph, x| {
            let u = with_ints("Unsqueeze", &[&[-1]])(g, x);
            with_ints("Squeeze", &[&[2]])(g, u)
        };
        fires(model_of(t(), 17, negative_axes), "unsqueeze-squeeze", 1);
        let sq_un = |g: &mut Graph, x| {
            let s = with_ints("Squeeze", &[&[1]])(g, x);
            with_ints("Unsqueeze", &[&[1]])(g, s)
        };
        fires(model_of(tensor_ty(F32, &[2, 1, 3]), 17, sq_un), "squeeze-unsqueeze", 1);
        // Squeezing only some of the new axes is not the identity.
        stays(model_of(tensor_ty(F32, &[2, 3]), 17, |g, x| {
            let u = with_ints("Unsqueeze", &[&[0, 1]])(g, x);
            with_ints("Squeeze", &[&[1]])(g, u)
        }));
        // Opset 11: axes are attributes.
        let old = |g: &mut Graph, x| {
            let u =
                op(g, NodeSpec::new("Unsqueeze").inputs([x]).outputs(["u1"]).attr(Attribute::ints("axes", vec![1])));
            op(g, NodeSpec::new("Squeeze").inputs([u]).outputs(["s1"]).attr(Attribute::ints("axes", vec![1])))
        };
        fires(model_of(t(), 11, old), "unsqueeze-squeeze", 1);
    }

    #[test]
    fn flatten_of_a_matrix() {
        fires(model_of(tensor_ty(F32, &[2, 3]), 17, unary("Flatten")), "flatten-noop", 1);
        stays(model_of(tensor_ty(F32, &[2, 3, 4]), 17, unary("Flatten")));
    }

    #[test]
    fn subgraph_no_ops_go_too() {
        require_ort().unwrap();
        let mut before = crate::simplify::lift::tests::if_with_constants();
        let g = before.graph.as_mut().unwrap();
        let id = g.nodes().find(|(_, n)| n.is_onnx("If")).unwrap().0;
        let then = g.node_mut(id).subgraphs_mut().next().unwrap();
        let add = then.nodes().find(|(_, n)| n.is_onnx("Add")).unwrap().0;
        let x = then.node(add).input(0).unwrap();
        let idn = then.insert_node_before(add, NodeSpec::new("Identity").inputs([x]).outputs(["xi"]));
        let xi = then.node(idn).output(0).unwrap();
        then.set_input(add, 0, Some(xi));
        let mut after = before.clone();
        let (changed, report) = apply(&EliminateNoOps, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert!(report[0].node.contains("then_branch"), "{report:?}");
        assert_eq!(count_op(&after, "Identity"), 0);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }
}
