//! BERT-style self-attention becomes `com.microsoft.Attention`.
//!
//! The pattern, from the output back (root: the final Reshape):
//!
//! ```text
//! Reshape([B,S,H,D] → [B,S,H·D]) ← Transpose(0,2,1,3) ← MatMul(P, V)
//!   P = Softmax(last axis) of  [Add(mask) of]  [Div(c) | Mul(c) of]  MatMul(Q, Kᵀ)
//!   Q = Transpose(0,2,1,3) ← Reshape([B,S,H,D]) ← X·Wq + bq
//!   Kᵀ = Transpose(0,2,3,1) ← Reshape ← X·Wk + bk   (or Transpose(0,1,3,2) of the Q form)
//!   V = Transpose(0,2,1,3) ← Reshape ← X·Wv + bv
//!   mask = (1 − Cast(Unsqueeze(mask2d, 1, 2))) · filter
//! ```
//!
//! Q, K and V must read the same X with constant 2-D weights; their weights and biases are
//! packed into one [hidden_in, 3·hidden] weight. The reshapes may be constant (`[0, 0, H, D]`)
//! or computed from the projection's own shape (`Concat(dim 0, dim 1, H, D)`), as exporters
//! write them. The 2-D mask is passed raw (int32), which is exact for left and right padding;
//! its filter value becomes `mask_filter_value`.
//!
//! The packed form (ViT/SVTR, as PaddlePaddle and timm export it) computes Q, K and V with one
//! projection and slices them apart:
//!
//! ```text
//! T = Transpose(2,0,3,1,4) ← Reshape([B,N,3,H,D]) ← X·W[C_in, 3·H·D] + b
//! Q = T[0] · c,  K = T[1],  V = T[2]      (Slice + Squeeze, or Gather, on axis 0)
//! Kᵀ = Transpose(0,1,3,2) of K
//! ```
//!
//! Along the last axis the projection's output is indexed `t·H·D + h·D + d` (t = Q, K, V), which
//! is exactly Attention's packed layout (Q | K | V, heads contiguous in each), so W and b are
//! taken as they are. A scale on Q before Q·Kᵀ is a scale of the scores.
//!
//! A reshape entry computed at run time (SVTR writes N as `Cast(Slice(Cast(Shape(X))))`) needs
//! no proof of what it is when the entries around it fix it: `[keep B, e, 3, H, D]` of a
//! [B, N, 3·H·D] tensor, and `[keep B, e, H·D]` of [B, N, H, D], can only have e = N (the
//! element count is conserved), so the original model runs only with e = N.

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Attribute, Node, NodeId, ValueId};
use kiln_compiler::tensor::Tensor;

use super::Rule;
use super::matcher::{Matcher, NoMatch, OrMiss, ensure, here};
use super::ort::{as_int32, is_dim_of};
use super::patch::{NewNode, Patch};

pub struct Attention;

impl Rule for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Reshape")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let reshape = m.node(root);
        let out = reshape.output(0).here()?;
        let t_out = reshape.input(0).here()?;
        let (tr_id, tr) = m.producer(t_out, "Transpose").here()?;
        here(perm(tr) == Some(vec![0, 2, 1, 3]))?;
        let (ctx_id, ctx) = m.producer(tr.input(0).here()?, "MatMul").here()?;
        let (probs, v_t) = m.operands(ctx).here()?;
        let (sm_id, sm) = m.producer(probs, "Softmax").here()?;
        // From here on the root is a candidate: say why when it stops.
        let mut nodes = vec![root, tr_id, ctx_id, sm_id];
        let axis = sm.attr_int("axis");
        let last = match axis {
            Some(-1) | Some(3) => true,
            None => m.opset >= 13,
            _ => false,
        };
        ensure(last, "Softmax is not over the last axis")?;
        let mut scores = sm.input(0).here()?;

        // Optional additive mask (either Add order: the scores side leads to MatMul(Q, Kᵀ)).
        let mut mask = None;
        if let Some((add_id, add)) = m.producer(scores, "Add") {
            let mut found = None;
            for (s, mk) in m.both_orders(add) {
                if leads_to_qk(m, s) && !leads_to_qk(m, mk) {
                    found = Some((s, mk));
                }
            }
            let (s, mk) = found.or_miss("the Add before Softmax is not scores + mask")?;
            mask = Some(mask_source(m, mk)?);
            nodes.push(add_id);
            scores = s;
        }
        // Optional scale.
        let mut scale = 1.0f64;
        if let Some((div_id, div)) = m.producer(scores, "Div") {
            let (s, c) = m.operands(div).here()?;
            let c = m.scalar(c).or_miss("the scores are divided by a non-constant")?;
            scale = 1.0 / c;
            nodes.push(div_id);
            scores = s;
        } else if let Some((mul_id, mul)) = m.producer(scores, "Mul") {
            let (s, c) = m
                .both_orders(mul)
                .into_iter()
                .find(|&(_, c)| m.scalar(c).is_some())
                .or_miss("the scores are multiplied by a non-constant")?;
            scale = m.scalar(c).here()?;
            nodes.push(mul_id);
            scores = s;
        }
        let (qk_id, qk) = m.producer(scores, "MatMul").or_miss("the scores are not MatMul(Q, Kᵀ)")?;
        nodes.push(qk_id);
        let (q_t, k_t) = m.operands(qk).here()?;

        // A scale on Q before Q·Kᵀ (SVTR, timm) is a scale of the scores.
        let q_t = match q_scale(m, q_t) {
            Some((id, q, c)) => {
                scale *= c;
                nodes.push(id);
                q
            }
            None => q_t,
        };

        let qkv = match packed_split(m, q_t, k_t, v_t, &mut nodes)? {
            Some(p) => packed_projection(m, reshape, t_out, &p, &mut nodes)?,
            None => separate_projections(m, reshape, t_out, q_t, k_t, v_t, &mut nodes)?,
        };
        let Qkv { x, w, b, widths, heads, head_size, packed } = qkv;

        let mut patch = Patch::new();
        let base = reshape.name.clone().unwrap_or_else(|| "attention".to_string());
        let wv = patch.initializer(format!("{base}.qkv_weight"), w);
        let bv = patch.initializer(format!("{base}.qkv_bias"), b);

        let mut n = NewNode::ms("Attention")
            .input(x)
            .input(wv)
            .input(bv)
            .attr(Attribute::int("num_heads", heads as i64))
            .attr(Attribute::float("scale", scale as f32));
        if widths[0] != widths[2] {
            n = n.attr(Attribute::ints("qkv_hidden_sizes", widths.iter().map(|&w| w as i64).collect()));
        }
        if let Some(mk) = mask {
            let m32 = as_int32(m, &mut patch, mk.mask2d)?;
            n = n.input(m32).attr(Attribute::float("mask_filter_value", mk.filter));
        }
        n = n.reuse(out);
        n.name = reshape.name.as_ref().map(|s| format!("{s}/Attention"));
        patch.node(n);
        patch.remove(nodes);
        let masked = if mask.is_some() { "masked " } else { "" };
        let packed = if packed { "packed " } else { "" };
        Ok(patch.detail(format!("{masked}{packed}self-attention ({heads} heads of {head_size}) into Attention")))
    }
}

/// Where Attention's inputs come from: X, the packed weight and bias, the Q/K/V widths.
struct Qkv {
    x: ValueId,
    w: Tensor,
    b: Tensor,
    widths: [usize; 3],
    heads: usize,
    head_size: usize,
    /// Q, K and V came from one projection.
    packed: bool,
}

/// `Q · c`, `c · Q` or `Q / c` with a constant scalar c: (node, Q, the factor).
fn q_scale(m: &Matcher<'_>, v: ValueId) -> Option<(NodeId, ValueId, f64)> {
    if let Some((id, div)) = m.producer(v, "Div") {
        let (q, c) = m.operands(div)?;
        return m.scalar(c).filter(|c| *c != 0.0).map(|c| (id, q, 1.0 / c));
    }
    let (id, mul) = m.producer(v, "Mul")?;
    m.both_orders(mul).into_iter().find_map(|(q, c)| m.scalar(c).map(|c| (id, q, c)))
}

/// Q, K and V as three head splits of three projections; packs their weights.
fn separate_projections(
    m: &Matcher<'_>,
    reshape: &Node,
    t_out: ValueId,
    q_t: ValueId,
    k_t: ValueId,
    v_t: ValueId,
    nodes: &mut Vec<NodeId>,
) -> Result<Qkv, NoMatch> {
    // Heads: Q and V are Transpose(0,2,1,3) of a head split; Kᵀ as described above.
    let q = head_split(m, q_t, &[0, 2, 1, 3], nodes).or_miss("Q is not a head split of a projection")?;
    let k = match head_split(m, k_t, &[0, 2, 3, 1], nodes) {
        Some(k) => k,
        None => {
            let (kt_id, kt) = m.producer(k_t, "Transpose").or_miss("Kᵀ is not a transposed head split")?;
            ensure(perm(kt) == Some(vec![0, 1, 3, 2]), "Kᵀ is not a transposed head split")?;
            nodes.push(kt_id);
            head_split(m, kt.input(0).here()?, &[0, 2, 1, 3], nodes).or_miss("K is not a head split")?
        }
    };
    let v = head_split(m, v_t, &[0, 2, 1, 3], nodes).or_miss("V is not a head split of a projection")?;
    ensure(q.heads == k.heads && k.heads == v.heads, "Q, K and V have different head counts")?;
    ensure(q.head_size == k.head_size, "Q and K have different head sizes")?;
    let merged = v.heads * v.head_size;
    merge_check(m, reshape, t_out, merged)?;

    // Projections: X·W + b with X shared and W constant.
    let pq = projection(m, q.input, nodes)?;
    let pk = projection(m, k.input, nodes)?;
    let pv = projection(m, v.input, nodes)?;
    ensure(pq.x == pk.x && pk.x == pv.x, "Q, K and V do not read the same input (not self-attention)")?;
    let xr = m.rank(pq.x);
    ensure(xr.is_none_or(|r| r == 3), "the attention input is not 3-D")?;
    let hidden_in = pq.w.dims()[0];
    ensure(pk.w.dims()[0] == hidden_in && pv.w.dims()[0] == hidden_in, "Q/K/V weights differ in input size")?;
    ensure(pq.w.dims()[1] == q.heads * q.head_size, "the Q weight width is not heads × head size")?;
    ensure(pk.w.dims()[1] == k.heads * k.head_size, "the K weight width is not heads × head size")?;
    ensure(pv.w.dims()[1] == merged, "the V weight width is not heads × head size")?;
    let dt = weight_dtype(m, &pq)?;
    ensure(pk.w.dtype() == dt && pv.w.dtype() == dt, "Q/K/V weights differ in element type")?;

    let w = concat_columns(&[&pq.w, &pk.w, &pv.w]).or_miss("cannot pack the Q/K/V weights")?;
    let widths = [pq.w.dims()[1], pk.w.dims()[1], pv.w.dims()[1]];
    let biases: Vec<Tensor> = [(&pq, widths[0]), (&pk, widths[1]), (&pv, widths[2])]
        .iter()
        .map(|(p, n)| bias_or_zeros(p, dt, *n))
        .collect::<Option<_>>()
        .or_miss("a bias is not 1-D of the projection width")?;
    ensure(biases.iter().all(|b| b.dtype() == dt), "a bias differs in element type")?;
    let b = concat_vectors(&biases).or_miss("cannot pack the Q/K/V biases")?;
    Ok(Qkv { x: pq.x, w, b, widths, heads: q.heads, head_size: q.head_size, packed: false })
}

/// The element type of a projection's weight, which Attention must run and X must share.
fn weight_dtype(m: &Matcher<'_>, p: &Projection) -> Result<DataType, NoMatch> {
    let dt = p.w.dtype();
    ensure(matches!(dt, DataType::F32 | DataType::F16), "Attention runs on f32/f16 weights")?;
    ensure(m.dtype(p.x).is_none_or(|d| d == dt), "the input and the weights differ in element type")?;
    Ok(dt)
}

/// A projection's bias as a vector of `n`, or zeros without one.
fn bias_or_zeros(p: &Projection, dt: DataType, n: usize) -> Option<Tensor> {
    match &p.b {
        Some(b) => b.reshaped(vec![n]).ok(),
        None => zeros(dt, n),
    }
}

fn merge_check(m: &Matcher<'_>, reshape: &Node, t_out: ValueId, merged: usize) -> Result<(), NoMatch> {
    ensure(
        merge_shape_ok(m, reshape.input(1).here()?, t_out, merged),
        "the output Reshape does not merge the heads back",
    )?;
    ensure(reshape.attr_int("allowzero").unwrap_or(0) == 0, "the output Reshape uses allowzero")
}

/// The packed form's split: [B, N, 3·H·D] reshaped to [B, N, 3, H, D] (`input` is the
/// reshape's input).
struct Packed {
    input: ValueId,
    heads: usize,
    head_size: usize,
}

/// Q, K and V as entries 0, 1, 2 of one transposed packed projection; `None` when Q is not
/// an entry of anything (then the separate form is tried).
fn packed_split(
    m: &Matcher<'_>,
    q_t: ValueId,
    k_t: ValueId,
    v_t: ValueId,
    nodes: &mut Vec<NodeId>,
) -> Result<Option<Packed>, NoMatch> {
    let mut own = Vec::new();
    let Some((qi, t)) = pick(m, q_t, &mut own) else { return Ok(None) };
    let miss = "Q, K and V are not entries 0, 1 and 2 of one packed projection";
    let (kt_id, kt) = m.producer(k_t, "Transpose").or_miss("Kᵀ is not a transposed entry of the packed Q/K/V")?;
    ensure(perm(kt) == Some(vec![0, 1, 3, 2]), "Kᵀ is not a transposed entry of the packed Q/K/V")?;
    own.push(kt_id);
    let (ki, tk) = pick(m, kt.input(0).here()?, &mut own).or_miss(miss)?;
    let (vi, tv) = pick(m, v_t, &mut own).or_miss(miss)?;
    ensure(tk == t && tv == t && (qi, ki, vi) == (0, 1, 2), miss)?;
    let (tr_id, tr) = m.producer(t, "Transpose").or_miss("the packed Q/K/V is not transposed")?;
    ensure(
        perm(tr) == Some(vec![2, 0, 3, 1, 4]),
        "the packed Q/K/V is not transposed from [B, N, 3, heads, head size] to [3, B, heads, N, head size]",
    )?;
    let (r_id, r) = m.producer(tr.input(0).here()?, "Reshape").or_miss("the packed Q/K/V is not a reshape")?;
    ensure(r.attr_int("allowzero").unwrap_or(0) == 0, "the packed Q/K/V reshape uses allowzero")?;
    let input = r.input(0).here()?;
    let (heads, head_size) = packed_shape(m, r.input(1).here()?, input)
        .or_miss("the packed Q/K/V reshape target is not [B, N, 3, heads, head size]")?;
    own.extend([tr_id, r_id]);
    nodes.extend(own);
    Ok(Some(Packed { input, heads, head_size }))
}

/// Entry i of axis 0 of `t`: `Squeeze(Slice(t, [i], [i + 1], axes [0]), axes [0])` or
/// `Gather(t, scalar i, axis 0)`; returns (i, t).
fn pick(m: &Matcher<'_>, v: ValueId, nodes: &mut Vec<NodeId>) -> Option<(i64, ValueId)> {
    if let Some((g_id, g)) = m.producer(v, "Gather") {
        let idx = m.constant(g.input(1)?)?;
        let i = *m.ints(g.input(1)?)?.first()?;
        if g.attr_int("axis").unwrap_or(0) != 0 || idx.rank() != 0 || !(0..3).contains(&i) {
            return None;
        }
        nodes.push(g_id);
        return Some((i, g.input(0)?));
    }
    let (sq_id, sq) = m.producer(v, "Squeeze")?;
    if m.unsqueeze_axes(sq)? != [0] {
        return None;
    }
    let (sl_id, sl) = m.producer(sq.input(0)?, "Slice")?;
    // Slice arguments: inputs from opset 10, attributes before.
    let arg = |i: usize, attr: &str| match sl.input(i) {
        Some(a) => m.ints(a),
        None if m.opset < 10 => sl.attr_ints(attr).map(<[i64]>::to_vec),
        None => None,
    };
    let (start, end) = match (arg(1, "starts")?.as_slice(), arg(2, "ends")?.as_slice()) {
        (&[s], &[e]) => (s, e),
        _ => return None,
    };
    let axes_ok = arg(3, "axes").is_none_or(|a| a == [0]);
    let steps_ok = m.opset < 10 || sl.input(4).is_none() || m.ints(sl.input(4)?)? == [1];
    // Axis 0 has 3 entries: the last one may be sliced to any end past it.
    let end_ok = end == start + 1 || start == 2 && end > 2;
    if !axes_ok || !steps_ok || !end_ok || !(0..3).contains(&start) {
        return None;
    }
    nodes.extend([sq_id, sl_id]);
    Some((start, sl.input(0)?))
}

/// Whether `v` is a one-element vector (a reshape target entry).
fn one_entry(m: &Matcher<'_>, v: ValueId) -> bool {
    m.shape(v).is_some_and(|s| s.len() == 1 && s[0].as_known() == Some(1))
}

/// (H, D) of a reshape target `[keep B, e, 3, H, D]` over `data` ([B, N, 3·H·D]): a constant
/// or a Concat of five one-element parts. Entry 1 is whatever computes N (see the module doc).
fn packed_shape(m: &Matcher<'_>, shape: ValueId, data: ValueId) -> Option<(usize, usize)> {
    let (lead_ok, tail) = if let Some(s) = m.ints(shape) {
        if s.len() != 5 {
            return None;
        }
        (matches!((s[0], s[1]), (0, _) | (-1, 0)), s[2..].to_vec())
    } else {
        let (_, cat) = m.producer(shape, "Concat")?;
        if cat.attr_int("axis") != Some(0) || cat.inputs().len() != 5 {
            return None;
        }
        let parts: Vec<ValueId> = (0..5).map(|i| cat.input(i)).collect::<Option<_>>()?;
        let lead = keeps_dim(m, parts[0], data, 0) && one_entry(m, parts[1]);
        let tail: Vec<i64> =
            parts[2..].iter().map(|&p| m.ints(p).filter(|x| x.len() == 1).map(|x| x[0])).collect::<Option<_>>()?;
        (lead, tail)
    };
    match tail.as_slice() {
        &[3, h, d] if lead_ok && h > 0 && d > 0 => Some((h as usize, d as usize)),
        _ => None,
    }
}

/// The packed projection behind a [`Packed`] split; its weight is already in Attention's layout.
fn packed_projection(
    m: &Matcher<'_>,
    reshape: &Node,
    t_out: ValueId,
    p: &Packed,
    nodes: &mut Vec<NodeId>,
) -> Result<Qkv, NoMatch> {
    let hidden = p.heads * p.head_size;
    merge_check(m, reshape, t_out, hidden)?;
    let proj = projection(m, p.input, nodes)?;
    // The reshape argument above holds only for a 3-D X: [B, N, C_in] · W → [B, N, 3·H·D].
    let rank = m.rank(proj.x).or_skip("the rank of the attention input is unknown")?;
    ensure(rank == 3, "the attention input is not 3-D")?;
    ensure(proj.w.dims()[1] == 3 * hidden, "the packed Q/K/V weight width is not 3 × heads × head size")?;
    let dt = weight_dtype(m, &proj)?;
    let b = bias_or_zeros(&proj, dt, 3 * hidden).or_miss("the packed bias is not 1-D of the projection width")?;
    ensure(b.dtype() == dt, "the packed bias differs in element type")?;
    let w = Tensor::clone(&proj.w);
    Ok(Qkv { x: proj.x, w, b, widths: [hidden; 3], heads: p.heads, head_size: p.head_size, packed: true })
}

fn perm(n: &kiln_compiler::ir::Node) -> Option<Vec<i64>> {
    n.attr_ints("perm").map(<[i64]>::to_vec)
}

/// Whether `v` comes from MatMul(Q, Kᵀ), directly or through one scale.
fn leads_to_qk(m: &Matcher<'_>, v: ValueId) -> bool {
    if m.producer(v, "MatMul").is_some() {
        return true;
    }
    let scaled = m.producer(v, "Div").or_else(|| m.producer(v, "Mul"));
    scaled.is_some_and(|(_, n)| n.inputs().iter().flatten().any(|&i| m.producer(i, "MatMul").is_some()))
}

#[derive(Clone, Copy)]
struct MaskSource {
    mask2d: ValueId,
    filter: f32,
}

/// `(1 − Cast(Unsqueeze(mask2d, [1, 2]))) · filter`, with the Unsqueeze as one node or two, and
/// the Mul in either order. The nodes stay: other layers share them, and they die with the last.
fn mask_source(m: &Matcher<'_>, v: ValueId) -> Result<MaskSource, NoMatch> {
    let miss = "the mask is not (1 - Cast(Unsqueeze(mask, [1, 2]))) * filter";
    let (_, mul) = m.producer(v, "Mul").or_miss(miss)?;
    let (sub, filter) = m
        .both_orders(mul)
        .into_iter()
        .find(|&(s, f)| m.producer(s, "Sub").is_some() && m.scalar(f).is_some())
        .or_miss(miss)?;
    let filter = m.scalar(filter).here()? as f32;
    let (_, sub) = m.producer(sub, "Sub").here()?;
    let (one, cast) = m.operands(sub).here()?;
    ensure(m.is_scalar(one, 1.0, 0.0), miss)?;
    let (_, cast) = m.producer(cast, "Cast").or_miss(miss)?;
    let mut u = cast.input(0).here()?;
    let mut axes = Vec::new();
    while let Some((_, un)) = m.producer(u, "Unsqueeze") {
        let a = m.unsqueeze_axes(un).or_miss(miss)?;
        let mut a = a.into_iter().chain(axes).collect::<Vec<_>>();
        a.sort_unstable();
        axes = a;
        u = un.input(0).here()?;
    }
    ensure(axes == [1, 2], miss)?;
    let rank = m.rank(u).or_skip("the rank of the attention mask is unknown")?;
    ensure(rank == 2, "the attention mask is not 2-D")?;
    ensure(m.dtype(u).is_some_and(|d| d.is_integer()), "the attention mask is not an integer tensor")?;
    Ok(MaskSource { mask2d: u, filter })
}

/// A head split: `Transpose(perm)` of `Reshape(input, [B, S, H, D])`.
struct Heads {
    input: ValueId,
    heads: usize,
    head_size: usize,
}

fn head_split(m: &Matcher<'_>, v: ValueId, want: &[i64], nodes: &mut Vec<NodeId>) -> Option<Heads> {
    let (t_id, t) = m.producer(v, "Transpose")?;
    if perm(t).as_deref() != Some(want) {
        return None;
    }
    let (r_id, r) = m.producer(t.input(0)?, "Reshape")?;
    if r.attr_int("allowzero").unwrap_or(0) != 0 {
        return None;
    }
    let input = r.input(0)?;
    let (h, d) = split_shape(m, r.input(1)?, input)?;
    nodes.extend([t_id, r_id]);
    Some(Heads { input, heads: h, head_size: d })
}

/// Whether entry `i` of a reshape target keeps dimension `i` of `data`: a constant 0, or
/// `dim(data, i)` computed from its shape.
fn keeps_dim(m: &Matcher<'_>, part: ValueId, data: ValueId, i: i64) -> bool {
    m.ints(part).is_some_and(|x| x == [0]) || is_dim_of(m, part, data, i)
}

/// (H, D) of a reshape target `[B, S, H, D]` over `data` ([B, S, H·D]): a constant
/// `[0, 0, H, D]` (one −1 allowed among B, S) or `Concat(dim 0, dim 1, H, D)`.
fn split_shape(m: &Matcher<'_>, shape: ValueId, data: ValueId) -> Option<(usize, usize)> {
    if let Some(s) = m.ints(shape) {
        if s.len() != 4 || s[2] <= 0 || s[3] <= 0 {
            return None;
        }
        let lead_ok = matches!((s[0], s[1]), (0, 0) | (-1, 0) | (0, -1));
        return lead_ok.then_some((s[2] as usize, s[3] as usize));
    }
    let (_, cat) = m.producer(shape, "Concat")?;
    if cat.attr_int("axis") != Some(0) || cat.inputs().len() != 4 {
        return None;
    }
    let part = |i: usize| cat.input(i);
    if !keeps_dim(m, part(0)?, data, 0) || !keeps_dim(m, part(1)?, data, 1) {
        return None;
    }
    let h = m.ints(part(2)?)?;
    let d = m.ints(part(3)?)?;
    match (h.as_slice(), d.as_slice()) {
        ([h], [d]) if *h > 0 && *d > 0 => Some((*h as usize, *d as usize)),
        _ => None,
    }
}

/// Whether a reshape target merges `[B, S, H, D]` (over `data`) into `[B, S, merged]`. With B
/// kept and the last entry exactly H·D, entry 1 can only be S (see the module doc).
fn merge_shape_ok(m: &Matcher<'_>, shape: ValueId, data: ValueId, merged: usize) -> bool {
    let exact = |x: i64| x == merged as i64;
    let last_ok = |x: i64| exact(x) || x == -1;
    if let Some(s) = m.ints(shape) {
        return s.len() == 3
            && match (s[0], s[1]) {
                (0, 0) => last_ok(s[2]),
                (0, _) | (-1, 0) => exact(s[2]),
                _ => false,
            };
    }
    let Some((_, cat)) = m.producer(shape, "Concat") else { return false };
    if cat.attr_int("axis") != Some(0) || cat.inputs().len() != 3 {
        return false;
    }
    let (Some(a), Some(b), Some(c)) = (cat.input(0), cat.input(1), cat.input(2)) else { return false };
    let Some(c) = m.ints(c).filter(|x| x.len() == 1).map(|x| x[0]) else { return false };
    keeps_dim(m, a, data, 0) && (keeps_dim(m, b, data, 1) && last_ok(c) || one_entry(m, b) && exact(c))
}

struct Projection {
    x: ValueId,
    w: std::sync::Arc<Tensor>,
    b: Option<std::sync::Arc<Tensor>>,
}

/// `MatMul(x, W) + b` (Add in either order) or `MatMul(x, W)`, W a constant 2-D matrix.
fn projection(m: &Matcher<'_>, v: ValueId, nodes: &mut Vec<NodeId>) -> Result<Projection, NoMatch> {
    let miss = "a Q/K/V projection is not MatMul(X, constant W) + constant bias";
    let mut b = None;
    let mut y = v;
    if let Some((add_id, add)) = m.producer(v, "Add") {
        let (mm, bias) = m
            .both_orders(add)
            .into_iter()
            .find(|&(a, c)| m.producer(a, "MatMul").is_some() && m.constant(c).is_some())
            .or_miss(miss)?;
        let t = m.constant(bias).here()?;
        ensure(t.rank() == 1, "a projection bias is not 1-D")?;
        b = Some(t);
        nodes.push(add_id);
        y = mm;
    }
    let (mm_id, mm) = m.producer(y, "MatMul").or_miss(miss)?;
    let (x, w) = m.operands(mm).here()?;
    let w = m.constant(w).or_miss(miss)?;
    ensure(w.rank() == 2, "a projection weight is not 2-D")?;
    nodes.push(mm_id);
    Ok(Projection { x, w, b })
}

/// Concatenates 2-D tensors of one element type along columns (row-major bytes).
fn concat_columns(parts: &[&Tensor]) -> Option<Tensor> {
    let first = parts.first()?;
    let dt = first.dtype();
    let rows = first.dims()[0];
    let esize = match dt {
        DataType::F32 => 4,
        DataType::F16 | DataType::BF16 => 2,
        _ => return None,
    };
    let mut out = Vec::new();
    let bytes: Vec<&[u8]> = parts.iter().map(|t| t.bytes().map(|b| &b[..])).collect::<Option<_>>()?;
    if parts.iter().any(|t| t.rank() != 2 || t.dims()[0] != rows || t.dtype() != dt) {
        return None;
    }
    for r in 0..rows {
        for (t, b) in parts.iter().zip(&bytes) {
            let w = t.dims()[1] * esize;
            out.extend_from_slice(&b[r * w..(r + 1) * w]);
        }
    }
    let cols = parts.iter().map(|t| t.dims()[1]).sum();
    Tensor::new(dt, vec![rows, cols], out.into()).ok()
}

fn zeros(dt: DataType, n: usize) -> Option<Tensor> {
    let size = match dt {
        DataType::F32 => 4,
        DataType::F16 | DataType::BF16 => 2,
        _ => return None,
    };
    Tensor::new(dt, vec![n], vec![0u8; n * size].into()).ok()
}

/// Concatenates 1-D tensors of one element type.
fn concat_vectors(parts: &[Tensor]) -> Option<Tensor> {
    let dt = parts.first()?.dtype();
    let mut out = Vec::new();
    for t in parts {
        if t.dtype() != dt || t.rank() != 1 {
            return None;
        }
        out.extend_from_slice(t.bytes()?);
    }
    let n = parts.iter().map(|t| t.dims()[0]).sum();
    Tensor::new(dt, vec![n], out.into()).ok()
}
