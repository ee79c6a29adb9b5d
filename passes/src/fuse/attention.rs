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

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Attribute, NodeId, ValueId};
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

        // Heads: Q and V are Transpose(0,2,1,3) of a head split; Kᵀ as described above.
        let q = head_split(m, q_t, &[0, 2, 1, 3], &mut nodes).or_miss("Q is not a head split of a projection")?;
        let k = match head_split(m, k_t, &[0, 2, 3, 1], &mut nodes) {
            Some(k) => k,
            None => {
                let (kt_id, kt) = m.producer(k_t, "Transpose").or_miss("Kᵀ is not a transposed head split")?;
                ensure(perm(kt) == Some(vec![0, 1, 3, 2]), "Kᵀ is not a transposed head split")?;
                nodes.push(kt_id);
                head_split(m, kt.input(0).here()?, &[0, 2, 1, 3], &mut nodes).or_miss("K is not a head split")?
            }
        };
        let v = head_split(m, v_t, &[0, 2, 1, 3], &mut nodes).or_miss("V is not a head split of a projection")?;
        ensure(q.heads == k.heads && k.heads == v.heads, "Q, K and V have different head counts")?;
        ensure(q.head_size == k.head_size, "Q and K have different head sizes")?;

        // Output merge: [B,S,H,D] → [B,S,H·D].
        let merged = v.heads * v.head_size;
        ensure(
            merge_shape_ok(m, reshape.input(1).here()?, t_out, merged),
            "the output Reshape does not merge the heads back",
        )?;
        ensure(reshape.attr_int("allowzero").unwrap_or(0) == 0, "the output Reshape uses allowzero")?;

        // Projections: X·W + b with X shared and W constant.
        let pq = projection(m, q.input, &mut nodes)?;
        let pk = projection(m, k.input, &mut nodes)?;
        let pv = projection(m, v.input, &mut nodes)?;
        ensure(pq.x == pk.x && pk.x == pv.x, "Q, K and V do not read the same input (not self-attention)")?;
        let xr = m.rank(pq.x);
        ensure(xr.is_none_or(|r| r == 3), "the attention input is not 3-D")?;
        let hidden_in = pq.w.dims()[0];
        ensure(pk.w.dims()[0] == hidden_in && pv.w.dims()[0] == hidden_in, "Q/K/V weights differ in input size")?;
        ensure(pq.w.dims()[1] == q.heads * q.head_size, "the Q weight width is not heads × head size")?;
        ensure(pk.w.dims()[1] == k.heads * k.head_size, "the K weight width is not heads × head size")?;
        ensure(pv.w.dims()[1] == merged, "the V weight width is not heads × head size")?;
        let dt = pq.w.dtype();
        ensure(matches!(dt, DataType::F32 | DataType::F16), "Attention runs on f32/f16 weights")?;
        ensure(pk.w.dtype() == dt && pv.w.dtype() == dt, "Q/K/V weights differ in element type")?;
        ensure(m.dtype(pq.x).is_none_or(|d| d == dt), "the input and the weights differ in element type")?;

        let mut patch = Patch::new();
        let w = concat_columns(&[&pq.w, &pk.w, &pv.w]).or_miss("cannot pack the Q/K/V weights")?;
        let widths = [pq.w.dims()[1], pk.w.dims()[1], pv.w.dims()[1]];
        let biases: Vec<Tensor> = [(&pq, widths[0]), (&pk, widths[1]), (&pv, widths[2])]
            .iter()
            .map(|(p, n)| match &p.b {
                Some(b) => b.reshaped(vec![*n]).ok(),
                None => zeros(dt, *n),
            })
            .collect::<Option<_>>()
            .or_miss("a bias is not 1-D of the projection width")?;
        ensure(biases.iter().all(|b| b.dtype() == dt), "a bias differs in element type")?;
        let b = concat_vectors(&biases).or_miss("cannot pack the Q/K/V biases")?;
        let base = reshape.name.clone().unwrap_or_else(|| "attention".to_string());
        let wv = patch.initializer(format!("{base}.qkv_weight"), w);
        let bv = patch.initializer(format!("{base}.qkv_bias"), b);

        let mut n = NewNode::ms("Attention")
            .input(pq.x)
            .input(wv)
            .input(bv)
            .attr(Attribute::int("num_heads", q.heads as i64))
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
        Ok(patch.detail(format!("{masked}self-attention ({} heads of {}) into Attention", q.heads, q.head_size)))
    }
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

/// Whether a reshape target merges `[B, S, H, D]` (over `data`) into `[B, S, merged]`.
fn merge_shape_ok(m: &Matcher<'_>, shape: ValueId, data: ValueId, merged: usize) -> bool {
    let last_ok = |x: i64| x == merged as i64 || x == -1;
    if let Some(s) = m.ints(shape) {
        return s.len() == 3 && matches!((s[0], s[1]), (0, 0)) && last_ok(s[2])
            || s.len() == 3 && matches!((s[0], s[1]), (-1, 0) | (0, -1)) && s[2] == merged as i64;
    }
    let Some((_, cat)) = m.producer(shape, "Concat") else { return false };
    if cat.attr_int("axis") != Some(0) || cat.inputs().len() != 3 {
        return false;
    }
    let (Some(a), Some(b), Some(c)) = (cat.input(0), cat.input(1), cat.input(2)) else { return false };
    keeps_dim(m, a, data, 0) && keeps_dim(m, b, data, 1) && m.ints(c).is_some_and(|x| x.len() == 1 && last_ok(x[0]))
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
