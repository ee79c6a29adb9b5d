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
    Scope, as_i64s, cannot_forward, captured, constant_of, dtype_of, forward, ints_attr_or_input, is_used,
    known, label, prune_value_info, shape_of, visit_with_scope,
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
    /// The node's first output equals `to`: remove the node, its readers read `to`.
    Forward { rule: &'static str, to: ValueId },
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
            Found::Forward { rule, to } => {
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
        let forward = |rule| Some(Found::Forward { rule, to: x });
        match n.op_type.as_str() {
            "Identity" => forward("identity"),
            "Dropout" if self.dropout_is_inference(id) => forward("dropout-inference"),
            "Cast" if n.attr_int("to").is_some_and(|to| self.dtype_code(x) == Some(to)) => forward("cast-same-type"),
            "Cast" => self.cast_chain(id, captured),
            "CastLike" => {
                let (a, b) = (dtype_of(self.g, x, self.scope), dtype_of(self.g, n.input(1)?, self.scope));
                (a.is_some() && a == b).then_some(Found::Forward { rule: "cast-same-type", to: x })
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
        (a == b && !a.is_empty()).then_some(Found::Forward { rule: pair, to: x })
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
        let ok = usize::try_from(i).ok().filter(|&i| i < seen.len()).is_some_and(|i| !std::mem::replace(&mut seen[i], true));
        ok
    })
}

/// Numeric types a cast converts by value (f8/f4 casts saturate or round by attributes;
/// strings parse).
fn plain_numeric(d: DataType) -> bool {
    use DataType as D;
    matches!(d, D::F32 | D::F64 | D::F16 | D::BF16 | D::I8 | D::I16 | D::I32 | D::I64 | D::U8 | D::U16 | D::U32 | D::U64 | D::Bool)
}

/// Whether type `to` represents every value of type `from` exactly, NaN and infinities
/// included, so that a cast through `to` loses nothing.
pub(crate) fn exactly_holds(from: DataType, to: DataType) -> bool {
    use DataType as D;
    if from == to {
        return plain_numeric(from);
    }
    match from {
        D::Bool => matches!(to, D::I8 | D::I16 | D::I32 | D::I64 | D::U8 | D::U16 | D::U32 | D::U64 | D::F16 | D::BF16 | D::F32 | D::F64),
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
