//! Fusions into standard ONNX operators, good for every target.

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Attribute, Node, NodeId, ValueId};

use super::Rule;
use super::matcher::{Matcher, NoMatch, OrMiss, ensure, f32_tensor, f32s, here};
use super::patch::{NewNode, Patch};

/// A name for a node made from `base` (the root's name, so the graph stays readable).
pub(super) fn derived_name(n: &Node, suffix: &str) -> Option<String> {
    n.name.as_deref().filter(|s| !s.is_empty()).map(|s| format!("{s}/{suffix}"))
}

/// A Conv's weight and optional bias as f32 vectors, with the output channel count.
struct ConvParams {
    w_dims: Vec<usize>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
}

fn conv_params(m: &Matcher<'_>, conv: &Node) -> Result<ConvParams, NoMatch> {
    let w = m.constant(conv.input(1).here()?).or_miss("the Conv weight is not a constant")?;
    let wv = f32s(&w).or_miss("the Conv weight is not f32")?;
    ensure(w.rank() >= 3, "the Conv weight has rank < 3")?;
    let b = match conv.input(2) {
        Some(b) => {
            let t = m.constant(b).or_miss("the Conv bias is not a constant")?;
            let v = f32s(&t).or_miss("the Conv bias is not f32")?;
            ensure(v.len() == w.dims()[0], "the Conv bias length is not the output channel count")?;
            Some(v)
        }
        None => None,
    };
    Ok(ConvParams { w_dims: w.dims().to_vec(), w: wv, b })
}

/// A Conv like `conv` with new weight and bias, taking over `out`.
fn refit_conv(conv_id: NodeId, conv: &Node, p: ConvParams, out: ValueId, removed: &[NodeId], what: &str) -> Patch {
    let mut patch = Patch::new();
    let base = conv.name.clone().unwrap_or_else(|| "conv".to_string());
    let w = f32_tensor(p.w_dims.clone(), &p.w);
    let b = p.b.as_ref().and_then(|b| f32_tensor(vec![b.len()], b));
    let (Some(w), Some(x)) = (w, conv.input(0)) else { return patch };
    let wv = patch.initializer(format!("{base}.w_fused"), w);
    let mut n = NewNode::onnx("Conv").input(x).input(wv).attrs(conv.attributes.iter().cloned()).reuse(out);
    if let Some(b) = b {
        let bv = patch.initializer(format!("{base}.b_fused"), b);
        n = n.input(bv);
    }
    n.name = conv.name.clone();
    patch.node(n);
    patch.remove([conv_id]);
    patch.remove(removed.iter().copied());
    patch.detail(what)
}

/// Conv → BatchNormalization (inference) becomes one Conv with the normalization folded into
/// its weight and bias.
pub struct ConvBatchNorm;

impl Rule for ConvBatchNorm {
    fn name(&self) -> &'static str {
        "conv-bn"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "BatchNormalization")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let bn = m.node(root);
        let x = bn.input(0).here()?;
        let (conv_id, conv) = m.producer(x, "Conv").here()?;
        ensure(bn.attr_int("training_mode").unwrap_or(0) == 0, "BatchNormalization is in training mode")?;
        ensure(
            bn.outputs().iter().skip(1).flatten().all(|v| !m.used_outside(*v, &[])),
            "BatchNormalization's running statistics are used",
        )?;
        let out = bn.output(0).here()?;
        ensure(m.single_user(x) == Some(root), "the Conv output has other uses")?;
        let mut p = conv_params(m, conv)?;
        let param = |i: usize, what: &str| -> Result<Vec<f64>, NoMatch> {
            let t =
                m.constant(bn.input(i).here()?).or_miss(&format!("the BatchNormalization {what} is not a constant"))?;
            ensure(t.dtype() == DataType::F32, &format!("the BatchNormalization {what} is not f32"))?;
            let v = t.to_f64_vec().ok().here()?;
            ensure(v.len() == p.w_dims[0], &format!("the BatchNormalization {what} length is not the channel count"))?;
            Ok(v)
        };
        let (scale, bias, mean, var) =
            (param(1, "scale")?, param(2, "bias")?, param(3, "mean")?, param(4, "variance")?);
        let eps = f64::from(bn.attr_float("epsilon").unwrap_or(1e-5));
        let per_out = p.w.len() / p.w_dims[0];
        let factor: Vec<f64> = scale.iter().zip(&var).map(|(s, v)| s / (v + eps).sqrt()).collect();
        for (c, chunk) in p.w.chunks_mut(per_out).enumerate() {
            for w in chunk {
                *w = (f64::from(*w) * factor[c]) as f32;
            }
        }
        let b0 = p.b.take().unwrap_or_else(|| vec![0.0; p.w_dims[0]]);
        p.b = Some(
            b0.iter().enumerate().map(|(c, b)| ((f64::from(*b) - mean[c]) * factor[c] + bias[c]) as f32).collect(),
        );
        Ok(refit_conv(conv_id, conv, p, out, &[root], "BatchNormalization folded into Conv"))
    }
}

/// The per-output-channel values of a constant broadcast against a Conv output of rank `rank`
/// with `channels` channels: every dimension is 1 except the channel one (1 or `channels`).
fn per_channel(m: &Matcher<'_>, v: ValueId, rank: usize, channels: usize) -> Result<Vec<f32>, NoMatch> {
    let t = m.constant(v).here()?;
    let vals = f32s(&t).or_miss("the constant is not f32")?;
    let dims = t.dims();
    ensure(dims.len() <= rank, "the constant has a higher rank than the Conv output")?;
    let pad = rank - dims.len();
    for (i, &d) in dims.iter().enumerate() {
        let axis = i + pad;
        ensure(d == 1 || (axis == 1 && d == channels), "the constant is not per-channel")?;
    }
    Ok(if vals.len() == 1 { vec![vals[0]; channels] } else { vals })
}

/// Conv → Mul by a per-channel constant (both operand orders): the scale goes into the weight
/// and bias.
pub struct ConvMul;

impl Rule for ConvMul {
    fn name(&self) -> &'static str {
        "conv-mul"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Mul")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        conv_affine(m, root, true)
    }
}

/// Conv → Add of a per-channel constant (both operand orders): the constant goes into the bias.
pub struct ConvAdd;

impl Rule for ConvAdd {
    fn name(&self) -> &'static str {
        "conv-add"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Add")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        conv_affine(m, root, false)
    }
}

fn conv_affine(m: &Matcher<'_>, root: NodeId, mul: bool) -> Result<Patch, NoMatch> {
    let n = m.node(root);
    let out = n.output(0).here()?;
    for (a, c) in m.both_orders(n) {
        let Some((conv_id, conv)) = m.producer(a, "Conv") else { continue };
        if m.constant(c).is_none() {
            continue;
        }
        ensure(m.single_user(a) == Some(root), "the Conv output has other uses")?;
        let mut p = conv_params(m, conv)?;
        let channels = p.w_dims[0];
        let k = per_channel(m, c, p.w_dims.len(), channels)?;
        if mul {
            let per_out = p.w.len() / channels;
            for (ch, chunk) in p.w.chunks_mut(per_out).enumerate() {
                for w in chunk {
                    *w *= k[ch];
                }
            }
            if let Some(b) = p.b.as_mut() {
                for (ch, b) in b.iter_mut().enumerate() {
                    *b *= k[ch];
                }
            }
        } else {
            let b = p.b.get_or_insert_with(|| vec![0.0; channels]);
            for (ch, b) in b.iter_mut().enumerate() {
                *b += k[ch];
            }
        }
        let what = if mul { "per-channel Mul folded into Conv" } else { "per-channel Add folded into Conv bias" };
        return Ok(refit_conv(conv_id, conv, p, out, &[root], what));
    }
    Err(NoMatch::NotHere)
}

/// MatMul(A, B) + C with A 2-D and B, C constant (both Add orders) becomes Gemm.
pub struct MatMulAddGemm;

impl Rule for MatMulAddGemm {
    fn name(&self) -> &'static str {
        "matmul-add-gemm"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Add")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let add = m.node(root);
        let out = add.output(0).here()?;
        for (y, c) in m.both_orders(add) {
            let Some((mm_id, mm)) = m.producer(y, "MatMul") else { continue };
            let Some(bias) = m.constant(c) else { continue };
            ensure(m.opset >= 11, "Gemm with an optional C needs opset 11")?;
            ensure(m.single_user(y) == Some(root), "the MatMul output has other uses")?;
            let (a, b) = m.operands(mm).here()?;
            let w = m.constant(b).or_miss("B is not a constant")?;
            ensure(w.rank() == 2, "B is not 2-D")?;
            let rank = m.rank(a).or_skip("the rank of A is unknown")?;
            ensure(rank == 2, "A is not 2-D")?;
            let n = w.dims()[1];
            let bd = bias.dims();
            let ok = match bd {
                [] => true,
                [k] => *k == n || *k == 1,
                [1, k] => *k == n || *k == 1,
                _ => false,
            };
            ensure(ok, "the bias does not broadcast along the rows of A·B")?;
            ensure(bias.dtype() == w.dtype(), "the bias and B have different element types")?;
            let mut patch = Patch::new();
            let mut g = NewNode::onnx("Gemm").input(a).input(b).input(c).reuse(out);
            g.name = mm.name.clone();
            patch.node(g);
            patch.remove([mm_id, root]);
            return Ok(patch.detail("MatMul + Add into Gemm"));
        }
        Err(NoMatch::NotHere)
    }
}

/// The pieces of a written-out layer normalization over the last axis:
/// `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)`, then optional `* gamma` and `+ beta`.
pub(super) struct LayerNormMatch {
    pub x: ValueId,
    pub eps: f32,
    pub gamma: Option<ValueId>,
    pub beta: Option<ValueId>,
    pub out: ValueId,
    pub nodes: Vec<NodeId>,
}

/// Matches a decomposed layer normalization whose division is `root`.
pub(super) fn match_layer_norm(m: &Matcher<'_>, root: NodeId) -> Result<LayerNormMatch, NoMatch> {
    let div = m.node(root);
    let (d, s) = m.operands(div).here()?;
    let (sub_id, sub) = m.producer(d, "Sub").here()?;
    let (sqrt_id, sqrt) = m.producer(s, "Sqrt").here()?;
    let (x, mean) = m.operands(sub).here()?;
    let (rm1_id, rm1) = m.producer(mean, "ReduceMean").here()?;
    here(rm1.input(0) == Some(x))?;
    let (add_id, add) = m.producer(sqrt.input(0).here()?, "Add").or_miss("Sqrt does not read an Add of epsilon")?;
    let mut found = None;
    for (var, e) in m.both_orders(add) {
        if let (Some(eps), Some((rm2_id, rm2))) = (m.scalar(e), m.producer(var, "ReduceMean")) {
            found = Some((eps, rm2_id, rm2));
        }
    }
    let (eps, rm2_id, rm2) = found.or_miss("the variance is not ReduceMean + a constant epsilon")?;
    let sq = rm2.input(0).here()?;
    let (sq_id, sq_node) = match (m.producer(sq, "Pow"), m.producer(sq, "Mul")) {
        (Some((id, p)), _) if p.input(0) == Some(d) && p.input(1).is_some_and(|e| m.is_scalar(e, 2.0, 0.0)) => (id, p),
        (_, Some((id, p))) if p.input(0) == Some(d) && p.input(1) == Some(d) => (id, p),
        _ => return Err(NoMatch::Missed("the variance is not a mean of the squared deviation".into())),
    };
    let _ = sq_node;
    // Both reductions must be over the last axis only, keeping dims.
    let rank = m.rank(x);
    for rm in [rm1, rm2] {
        ensure(rm.attr_int("keepdims").unwrap_or(1) == 1, "ReduceMean drops the reduced axis")?;
        let axes = m.reduce_axes(rm).or_miss("ReduceMean axes are not constant")?;
        ensure(axes.len() == 1, "ReduceMean reduces more than one axis")?;
        let last = match (axes[0], rank) {
            (-1, _) => true,
            (a, Some(r)) => a >= 0 && a as usize + 1 == r,
            (_, None) => {
                return Err(NoMatch::Skipped("ReduceMean uses a positive axis and the rank is unknown".into()));
            }
        };
        ensure(last, "ReduceMean is not over the last axis")?;
    }
    let mut nodes = vec![rm1_id, sub_id, sq_id, rm2_id, add_id, sqrt_id, root];
    let mut out = div.output(0).here()?;
    // Optional affine part: * gamma, then + beta (both operand orders each).
    let mut gamma = None;
    let mut beta = None;
    if let Some(u) = m.single_user(out) {
        let un = m.node(u);
        if un.is_onnx("Mul") {
            for (a, c) in m.both_orders(un) {
                if a == out && m.constant(c).is_some() {
                    gamma = Some(c);
                }
            }
            if gamma.is_some() {
                nodes.push(u);
                out = un.output(0).here()?;
            }
        }
    }
    if let Some(u) = m.single_user(out) {
        let un = m.node(u);
        if un.is_onnx("Add") {
            for (a, c) in m.both_orders(un) {
                if a == out && m.constant(c).is_some() {
                    beta = Some(c);
                }
            }
            if beta.is_some() {
                nodes.push(u);
                out = un.output(0).here()?;
            }
        }
    }
    Ok(LayerNormMatch { x, eps: eps as f32, gamma, beta, out, nodes })
}

/// Builds the LayerNormalization patch for a match (gamma/beta must be 1-D over the last axis).
pub(super) fn layer_norm_patch(m: &Matcher<'_>, ln: &LayerNormMatch, name: Option<String>) -> Result<Patch, NoMatch> {
    let dt = m.dtype(ln.x);
    let mut len = None;
    for v in [ln.gamma, ln.beta].into_iter().flatten() {
        let t = m.constant(v).here()?;
        ensure(t.dims().len() == 1 || t.dims().iter().rev().skip(1).all(|&d| d == 1), "gamma/beta is not 1-D")?;
        let n = t.dims().last().copied().unwrap_or(1);
        ensure(len.is_none_or(|l| l == n), "gamma and beta have different lengths")?;
        ensure(dt.is_none_or(|d| d == t.dtype()), "gamma/beta and the input have different element types")?;
        len = Some(n);
    }
    let last = m.shape(ln.x).and_then(|s| s.last().and_then(|d| d.as_known()));
    if let (Some(l), Some(n)) = (last, len) {
        ensure(l as usize == n, "gamma/beta length is not the normalized size")?;
    }
    let mut patch = Patch::new();
    let scale = match ln.gamma {
        Some(g) => flat(m, &mut patch, g)?,
        None => {
            let h = len.or(last.map(|l| l as usize)).or_skip("the normalized size is unknown")?;
            ensure(dt.is_none_or(|d| d == DataType::F32), "only f32 is supported without gamma")?;
            patch.initializer("ln_scale_ones", f32_tensor(vec![h], &vec![1.0; h]).here()?)
        }
    };
    let mut n = NewNode::onnx("LayerNormalization")
        .input(ln.x)
        .input(scale)
        .attr(Attribute::int("axis", -1))
        .attr(Attribute::float("epsilon", ln.eps))
        .reuse(ln.out);
    if let Some(b) = ln.beta {
        let bv = flat(m, &mut patch, b)?;
        n = n.input(bv);
    }
    n.name = name;
    patch.node(n);
    patch.remove(ln.nodes.iter().copied());
    Ok(patch)
}

/// A constant as a 1-D input (a new initializer if it is written with leading 1 dims).
fn flat(m: &Matcher<'_>, patch: &mut Patch, v: ValueId) -> Result<super::PValue, NoMatch> {
    let t = m.constant(v).here()?;
    if t.rank() == 1 && m.g.value(v).initializer().is_some() {
        return Ok(v.into());
    }
    let n = t.len() as usize;
    let base = m.g.value(v).name.clone();
    Ok(patch.initializer(base, t.reshaped(vec![n]).ok().here()?))
}

/// Decomposed layer normalization over the last axis becomes LayerNormalization (opset ≥ 17).
pub struct LayerNorm;

impl Rule for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Div")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let ln = match_layer_norm(m, root)?;
        ensure(m.opset >= 17, "LayerNormalization needs opset 17 (the ORT rule set covers older models)")?;
        let name = derived_name(m.node(root), "LayerNormalization");
        Ok(layer_norm_patch(m, &ln, name)?.detail("decomposed layer normalization into LayerNormalization"))
    }
}

/// The input `x` of `1 + erf(x / sqrt(2))` (Add both orders; Div by √2 or Mul by 1/√2, both
/// orders), with the matched nodes.
pub(super) fn erf_part(m: &Matcher<'_>, v: ValueId) -> Option<(ValueId, Vec<NodeId>)> {
    let (add_id, add) = m.producer(v, "Add")?;
    for (e, one) in m.both_orders(add) {
        if !m.is_scalar(one, 1.0, 1e-6) {
            continue;
        }
        let Some((erf_id, erf)) = m.producer(e, "Erf") else { continue };
        let inner = erf.input(0)?;
        if let Some((div_id, div)) = m.producer(inner, "Div") {
            let (x, c) = m.operands(div)?;
            if m.is_scalar(c, std::f64::consts::SQRT_2, 1e-4) {
                return Some((x, vec![div_id, erf_id, add_id]));
            }
        }
        if let Some((mul_id, mul)) = m.producer(inner, "Mul") {
            for (x, c) in m.both_orders(mul) {
                if m.is_scalar(c, std::f64::consts::FRAC_1_SQRT_2, 1e-4) {
                    return Some((x, vec![mul_id, erf_id, add_id]));
                }
            }
        }
    }
    None
}

/// A sub-pattern that finds the `x` a value is a function of, with the nodes it matched.
pub(super) type PartMatcher = dyn Fn(&Matcher<'_>, ValueId) -> Option<(ValueId, Vec<NodeId>)>;

/// Matches `0.5 * x * part(x)` rooted at the last Mul, in the three groupings exporters write
/// — `(x * p) * 0.5`, `x * (p * 0.5)`, `(x * 0.5) * p` — with both orders of every Mul.
pub(super) fn half_x_times(m: &Matcher<'_>, root: NodeId, part: &PartMatcher) -> Option<(ValueId, Vec<NodeId>)> {
    let mul = m.node(root);
    let half = |v: ValueId| m.is_scalar(v, 0.5, 1e-6);
    let inner_mul =
        |v: ValueId| m.producer(v, "Mul").filter(|(_, n)| n.output(0).is_some_and(|o| m.single_user(o) == Some(root)));
    for (p, q) in m.both_orders(mul) {
        // (x * part) * 0.5
        if half(q)
            && let Some((id, inner)) = inner_mul(p)
        {
            for (x, e) in m.both_orders(inner) {
                if let Some((x2, mut nodes)) = part(m, e)
                    && x2 == x
                {
                    nodes.extend([id, root]);
                    return Some((x, nodes));
                }
            }
        }
        // x * (part * 0.5)
        if let Some((id, inner)) = inner_mul(q) {
            for (e, h) in m.both_orders(inner) {
                if half(h)
                    && let Some((x2, mut nodes)) = part(m, e)
                    && x2 == p
                {
                    nodes.extend([id, root]);
                    return Some((p, nodes));
                }
            }
        }
        // (x * 0.5) * part
        if let Some((id, inner)) = inner_mul(p) {
            for (x, h) in m.both_orders(inner) {
                if half(h)
                    && let Some((x2, mut nodes)) = part(m, q)
                    && x2 == x
                {
                    nodes.extend([id, root]);
                    return Some((x, nodes));
                }
            }
        }
    }
    None
}

/// Erf GELU written out (`x * 0.5 * (1 + erf(x / √2))`) becomes Gelu (opset ≥ 20).
pub struct GeluErf;

impl Rule for GeluErf {
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Mul")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let (x, nodes) = half_x_times(m, root, &erf_part).here()?;
        ensure(m.opset >= 20, "Gelu needs opset 20 (the ORT rule set covers older models)")?;
        let out = m.node(root).output(0).here()?;
        let mut patch = Patch::new();
        let mut n = NewNode::onnx("Gelu").input(x).reuse(out);
        n.name = derived_name(m.node(root), "Gelu");
        patch.node(n);
        patch.remove(nodes);
        Ok(patch.detail("erf GELU into Gelu"))
    }
}
