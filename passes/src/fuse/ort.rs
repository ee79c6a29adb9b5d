//! Fusions into ONNX Runtime's contrib operators (`com.microsoft`); only for ORT targets.

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, AttrValue, Attribute, Dim, Node, NodeId, ValueId};

use super::Rule;
use super::matcher::{Matcher, NoMatch, OrMiss, ensure, f32_tensor, f32s, here};
use super::patch::{MS_DOMAIN, NewNode, PValue, Patch};
use super::portable::{derived_name, erf_part, half_x_times, layer_norm_patch, match_layer_norm};

/// Decomposed layer normalization becomes `LayerNormalization` in models older than opset 17:
/// ONNX Runtime registers that kernel for the default domain from version 1.
pub struct LayerNormOrt;

impl Rule for LayerNormOrt {
    fn name(&self) -> &'static str {
        "layernorm-ort"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Div")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let ln = match_layer_norm(m, root)?;
        let name = derived_name(m.node(root), "LayerNormalization");
        Ok(layer_norm_patch(m, &ln, name)?.detail("decomposed layer normalization into LayerNormalization"))
    }
}

/// Erf GELU written out becomes `com.microsoft.Gelu` (any opset).
pub struct GeluErfOrt;

impl Rule for GeluErfOrt {
    fn name(&self) -> &'static str {
        "gelu-ort"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Mul")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let (x, nodes) = half_x_times(m, root, &erf_part).here()?;
        let out = m.node(root).output(0).here()?;
        let mut patch = Patch::new();
        let mut n = NewNode::ms("Gelu").input(x).reuse(out);
        n.name = derived_name(m.node(root), "Gelu");
        patch.node(n);
        patch.remove(nodes);
        Ok(patch.detail("erf GELU into com.microsoft.Gelu"))
    }
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

/// `x * x * x` as `Pow(x, 3)`, `x * (x * x)` or `(x * x) * x` (both orders of each Mul).
fn cube_of(m: &Matcher<'_>, v: ValueId) -> Option<(ValueId, Vec<NodeId>)> {
    if let Some((id, p)) = m.producer(v, "Pow") {
        let (x, e) = m.operands(p)?;
        return m.is_scalar(e, 3.0, 0.0).then(|| (x, vec![id]));
    }
    let (id, mul) = m.producer(v, "Mul")?;
    for (a, b) in m.both_orders(mul) {
        if let Some((sq_id, sq)) = m.producer(b, "Mul")
            && sq.input(0) == Some(a)
            && sq.input(1) == Some(a)
        {
            return Some((a, vec![sq_id, id]));
        }
    }
    None
}

/// The input `x` of `1 + tanh(√(2/π) * (x + 0.044715 * x³))` (every binary op both orders).
fn tanh_part(m: &Matcher<'_>, v: ValueId) -> Option<(ValueId, Vec<NodeId>)> {
    let (add_id, add) = m.producer(v, "Add")?;
    for (t, one) in m.both_orders(add) {
        if !m.is_scalar(one, 1.0, 1e-6) {
            continue;
        }
        let (tanh_id, tanh) = m.producer(t, "Tanh")?;
        let (scale_id, scale) = m.producer(tanh.input(0)?, "Mul")?;
        for (inner, c1) in m.both_orders(scale) {
            if !m.is_scalar(c1, SQRT_2_OVER_PI, 1e-4) {
                continue;
            }
            let Some((sum_id, sum)) = m.producer(inner, "Add") else { continue };
            for (x, cubic) in m.both_orders(sum) {
                let Some((cm_id, cm)) = m.producer(cubic, "Mul") else { continue };
                for (cube, c2) in m.both_orders(cm) {
                    if !m.is_scalar(c2, GELU_CUBIC, 1e-4) {
                        continue;
                    }
                    if let Some((x2, mut nodes)) = cube_of(m, cube)
                        && x2 == x
                    {
                        nodes.extend([cm_id, sum_id, scale_id, tanh_id, add_id]);
                        return Some((x, nodes));
                    }
                }
            }
        }
    }
    None
}

/// Tanh-approximated GELU written out becomes `com.microsoft.FastGelu`.
pub struct FastGelu;

impl Rule for FastGelu {
    fn name(&self) -> &'static str {
        "fast-gelu"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Mul")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let (x, nodes) = half_x_times(m, root, &tanh_part).here()?;
        let out = m.node(root).output(0).here()?;
        let mut patch = Patch::new();
        let mut n = NewNode::ms("FastGelu").input(x).reuse(out);
        n.name = derived_name(m.node(root), "FastGelu");
        patch.node(n);
        patch.remove(nodes);
        Ok(patch.detail("tanh GELU into com.microsoft.FastGelu"))
    }
}

/// `Add(a, bias)` (both orders) feeding `root`, with `bias` a 1-D constant whose length is the
/// last dimension of `a` where that is known.
fn bias_add(m: &Matcher<'_>, v: ValueId, root: NodeId) -> Result<(NodeId, ValueId, ValueId), NoMatch> {
    let (add_id, add) = m.producer(v, "Add").here()?;
    for (a, b) in m.both_orders(add) {
        let Some(t) = m.constant(b) else { continue };
        if m.constant(a).is_some() || t.rank() != 1 {
            continue;
        }
        ensure(m.single_user(v) == Some(root), "the bias Add has other uses")?;
        ensure(m.dtype(a).is_none_or(|d| d == t.dtype()), "the bias and the input have different element types")?;
        if let Some(last) = m.shape(a).and_then(|s| s.last().and_then(Dim::as_known)) {
            ensure(last as usize == t.dims()[0], "the bias length is not the last dimension")?;
        }
        return Ok((add_id, a, b));
    }
    Err(NoMatch::NotHere)
}

/// Gelu(x + bias) becomes `com.microsoft.BiasGelu` (from ONNX Gelu without approximation, or
/// `com.microsoft.Gelu`).
pub struct BiasGelu;

impl Rule for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "Gelu"), (MS_DOMAIN, "Gelu")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let gelu = m.node(root);
        if gelu.domain().is_empty() {
            here(gelu.attr_str("approximate").is_none_or(|a| a == "none"))?;
        }
        let (add_id, a, b) = bias_add(m, gelu.input(0).here()?, root)?;
        let mut patch = Patch::new();
        let mut n = NewNode::ms("BiasGelu").input(a).input(b).reuse(gelu.output(0).here()?);
        n.name = gelu.name.clone();
        patch.node(n);
        patch.remove([add_id, root]);
        Ok(patch.detail("bias Add + Gelu into com.microsoft.BiasGelu"))
    }
}

/// FastGelu(x + bias) becomes FastGelu(x, bias).
pub struct BiasFastGelu;

impl Rule for BiasFastGelu {
    fn name(&self) -> &'static str {
        "bias-fast-gelu"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[(MS_DOMAIN, "FastGelu")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let gelu = m.node(root);
        here(gelu.inputs().len() == 1)?;
        let (add_id, a, b) = bias_add(m, gelu.input(0).here()?, root)?;
        let mut patch = Patch::new();
        let mut n = NewNode::ms("FastGelu").input(a).input(b).reuse(gelu.output(0).here()?);
        n.name = gelu.name.clone();
        patch.node(n);
        patch.remove([add_id, root]);
        Ok(patch.detail("bias Add folded into com.microsoft.FastGelu"))
    }
}

/// What a LayerNormalization over the last axis reads.
struct LnParts {
    gamma: ValueId,
    beta: Option<ValueId>,
    eps: f32,
    out: ValueId,
    hidden: usize,
}

fn ln_parts(m: &Matcher<'_>, root: NodeId) -> Result<LnParts, NoMatch> {
    let ln = m.node(root);
    let x = ln.input(0).here()?;
    let out = ln.output(0).here()?;
    let axis = ln.attr_int("axis").unwrap_or(-1);
    let last = axis == -1 || m.rank(x).is_some_and(|r| axis >= 0 && axis as usize + 1 == r);
    ensure(last, "LayerNormalization is not over the last axis")?;
    ensure(
        ln.outputs().iter().skip(1).flatten().all(|v| !m.used_outside(*v, &[])),
        "LayerNormalization's mean / inverse deviation outputs are used",
    )?;
    let gamma = ln.input(1).here()?;
    let g = m.constant(gamma).or_miss("gamma is not a constant")?;
    ensure(g.rank() == 1, "gamma is not 1-D")?;
    let beta = ln.input(2);
    if let Some(b) = beta {
        let t = m.constant(b).or_miss("beta is not a constant")?;
        ensure(t.dims() == g.dims(), "beta and gamma differ in shape")?;
    }
    Ok(LnParts { gamma, beta, eps: ln.attr_float("epsilon").unwrap_or(1e-5), out, hidden: g.dims()[0] })
}

/// Add(a, b) + LayerNormalization becomes `com.microsoft.SkipLayerNormalization`; when `a` is
/// itself `y + bias` with a 1-D constant bias, the bias goes in too. The sum stays available
/// (output 3) when something else reads it.
pub struct SkipLayerNorm;

impl Rule for SkipLayerNorm {
    fn name(&self) -> &'static str {
        "skip-layernorm"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "LayerNormalization")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let ln = m.node(root);
        let x = ln.input(0).here()?;
        let (add_id, add) = m.producer(x, "Add").here()?;
        let (a, b) = m.operands(add).here()?;
        here(m.is_dynamic(a) && m.is_dynamic(b))?;
        let p = ln_parts(m, root)?;
        let sa = m.shape(a).or_skip("the shape of the residual Add's first input is unknown")?;
        let sb = m.shape(b).or_skip("the shape of the residual Add's second input is unknown")?;
        ensure(sa.len() == 3 && sb.len() == 3, "the residual Add inputs are not 3-D")?;
        ensure(sa == sb, "the residual Add broadcasts (its inputs differ in shape)")?;
        ensure(sa[2].as_known().is_none_or(|h| h as usize == p.hidden), "gamma length is not the hidden size")?;
        let sum_used = m.used_outside(x, &[root]);
        let mut patch = Patch::new();
        let mut removed = vec![add_id, root];
        // Bias variant: one side is y + bias; y must have the same shape.
        let mut inputs: (ValueId, ValueId, Option<ValueId>) = (a, b, None);
        for (s, skip) in [(a, b), (b, a)] {
            if let Ok((bias_id, y, bias)) = bias_add(m, s, add_id)
                && m.shape(y).is_some_and(|sy| sy == sa)
                && m.constant(bias).is_some_and(|t| t.dims() == [p.hidden])
            {
                inputs = (y, skip, Some(bias));
                removed.push(bias_id);
                break;
            }
        }
        let (input, skip, bias) = inputs;
        let mut n = NewNode::ms("SkipLayerNormalization")
            .input(input)
            .input(skip)
            .input(p.gamma)
            .input_opt(p.beta.map(PValue::from))
            .attr(Attribute::float("epsilon", p.eps))
            .reuse(p.out);
        if let Some(bias) = bias {
            if p.beta.is_none() {
                // The bias slot comes after beta: spell beta as zeros.
                let zeros = f32_tensor(vec![p.hidden], &vec![0.0; p.hidden]).here()?;
                ensure(m.dtype(p.gamma) == Some(DataType::F32), "only f32 is supported without beta")?;
                n.inputs[3] = Some(patch.initializer("skip_ln_beta_zeros", zeros));
            }
            n = n.input(bias);
        }
        if sum_used {
            n = n.omitted().omitted().reuse(x);
        }
        n.name = ln.name.clone();
        patch.node(n);
        patch.remove(removed);
        let what = match (bias.is_some(), sum_used) {
            (true, true) => "bias Add + residual Add + LayerNormalization into SkipLayerNormalization (sum kept)",
            (true, false) => "bias Add + residual Add + LayerNormalization into SkipLayerNormalization",
            (false, true) => "residual Add + LayerNormalization into SkipLayerNormalization (sum kept)",
            (false, false) => "residual Add + LayerNormalization into SkipLayerNormalization",
        };
        Ok(patch.detail(what))
    }
}

/// A `Gather(table, indices)` on axis 0 of a constant 2-D table.
struct Lookup {
    node: NodeId,
    table: ValueId,
    indices: ValueId,
    rows: usize,
    hidden: usize,
}

fn lookup(m: &Matcher<'_>, v: ValueId) -> Option<Lookup> {
    let (id, n) = m.producer(v, "Gather")?;
    if n.attr_int("axis").unwrap_or(0) != 0 {
        return None;
    }
    let table = n.input(0)?;
    let t = m.constant(table)?;
    if t.rank() != 2 {
        return None;
    }
    Some(Lookup { node: id, table, indices: n.input(1)?, rows: t.dims()[0], hidden: t.dims()[1] })
}

/// Whether `v` is provably all zeros: a zero constant, `ConstantOfShape` of zero, or a
/// shape-only op (Slice, Expand, Reshape, (Un)Squeeze, Cast, Identity, Tile) of such a value.
fn is_zeros(m: &Matcher<'_>, v: ValueId, depth: usize) -> bool {
    if let Some(t) = m.constant(v) {
        return t.to_f64_vec().is_ok_and(|x| x.iter().all(|&e| e == 0.0));
    }
    let Some(p) = m.g.value(v).producer() else { return false };
    let n = m.node(p);
    if depth == 0 || !n.domain().is_empty() {
        return false;
    }
    match n.op_type.as_str() {
        "ConstantOfShape" => match n.attr_tensor("value") {
            None => true,
            Some(t) => t.to_f64_vec().is_ok_and(|x| x.iter().all(|&e| e == 0.0)),
        },
        "Slice" | "Expand" | "Reshape" | "Unsqueeze" | "Squeeze" | "Cast" | "Identity" | "Tile" => {
            n.input(0).is_some_and(|i| is_zeros(m, i, depth - 1))
        }
        _ => false,
    }
}

/// Whether `v` is `dim(ids, axis)` as a 1-element tensor: `Unsqueeze(Gather(Shape(ids), axis))`
/// or `Slice(Shape(ids), axis, axis + 1)`.
pub(super) fn is_dim_of(m: &Matcher<'_>, v: ValueId, ids: ValueId, axis: i64) -> bool {
    let shape_of_ids =
        |s: ValueId| m.producer(s, "Shape").is_some_and(|(_, n)| n.input(0) == Some(ids) && n.attributes.is_empty());
    if let Some((_, u)) = m.producer(v, "Unsqueeze")
        && m.unsqueeze_axes(u).as_deref() == Some(&[0])
        && let Some((_, gth)) = u.input(0).and_then(|g| m.producer(g, "Gather"))
    {
        return gth.attr_int("axis").unwrap_or(0) == 0
            && gth.input(1).and_then(|i| m.ints(i)).as_deref() == Some(&[axis])
            && gth.input(0).is_some_and(shape_of_ids);
    }
    if let Some((_, s)) = m.producer(v, "Slice") {
        let arg = |i: usize| s.input(i).and_then(|x| m.ints(x));
        return s.input(0).is_some_and(shape_of_ids)
            && arg(1).as_deref() == Some(&[axis])
            && arg(2).as_deref() == Some(&[axis + 1])
            && s.input(3).is_none_or(|_| arg(3).as_deref() == Some(&[0]))
            && s.input(4).is_none_or(|_| arg(4).as_deref() == Some(&[1]));
    }
    false
}

/// Whether `v` holds the positions `0..S` of `ids` (shape [B, S]) as [1, S]: a slice of a
/// constant arange up to `dim(ids, 1)`, or a constant arange whose length is the known S.
fn is_positions(m: &Matcher<'_>, v: ValueId, ids: ValueId) -> bool {
    let arange = |t: &kiln_compiler::Tensor| {
        (t.rank() == 2 && t.dims()[0] == 1 || t.rank() == 1)
            && t.to_f64_vec().is_ok_and(|x| x.iter().enumerate().all(|(i, &e)| e == i as f64))
    };
    if let Some(t) = m.constant(v) {
        let seq = m.shape(ids).and_then(|s| s.get(1).and_then(Dim::as_known));
        return arange(&t) && seq.is_some_and(|s| s as usize == *t.dims().last().unwrap_or(&0));
    }
    let Some((_, s)) = m.producer(v, "Slice") else { return false };
    let Some(t) = s.input(0).and_then(|d| m.constant(d)) else { return false };
    let arg = |i: usize| s.input(i).and_then(|x| m.ints(x));
    let axis = if t.rank() == 2 { 1 } else { 0 };
    arange(&t)
        && arg(1).as_deref() == Some(&[0])
        && s.input(2).is_some_and(|e| is_dim_of(m, e, ids, 1))
        && s.input(3).is_none_or(|_| matches!(arg(3).as_deref(), Some([a]) if *a == axis || *a == -1))
        && s.input(4).is_none_or(|_| arg(4).as_deref() == Some(&[1]))
}

/// An int32 version of an integer graph value: itself, an existing `Cast(to=int32)` of it, or a
/// new Cast.
pub(super) fn as_int32(m: &Matcher<'_>, patch: &mut Patch, v: ValueId) -> Result<PValue, NoMatch> {
    match m.dtype(v) {
        Some(DataType::I32) => return Ok(v.into()),
        Some(DataType::I64) => {}
        _ => return Err(NoMatch::Missed(format!("'{}' is not a known int64/int32 tensor", m.g.value(v).name))),
    }
    for u in m.g.value(v).uses() {
        let n = m.node(u.node);
        if n.is_onnx("Cast")
            && n.attr_int("to") == Some(i64::from(DataType::I32.onnx_code()))
            && let Some(o) = n.output(0)
        {
            return Ok(o.into());
        }
    }
    let name = format!("{}_int32", m.g.value(v).name);
    let k = patch.node(
        NewNode::onnx("Cast").input(v).attr(Attribute::int("to", i64::from(DataType::I32.onnx_code()))).fresh(name),
    );
    Ok(Patch::out(k, 0))
}

/// Word + position (+ segment) embedding lookups, summed and layer-normalized, become
/// `com.microsoft.EmbedLayerNormalization`. Segment ids that are provably zero (exporters bake
/// a zero `token_type_ids` buffer) are folded into the position table.
pub struct EmbedLayerNorm;

impl Rule for EmbedLayerNorm {
    fn name(&self) -> &'static str {
        "embed-layernorm"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        &[("", "LayerNormalization")]
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let ln = m.node(root);
        let x = ln.input(0).here()?;
        let (top_id, top) = m.producer(x, "Add").here()?;
        // Leaves of a sum tree of at most two Adds.
        let mut adds = vec![top_id];
        let mut leaves = Vec::new();
        for v in [top.input(0).here()?, top.input(1).here()?] {
            match m.producer(v, "Add") {
                Some((id, inner)) if m.single_user(v) == Some(top_id) => {
                    adds.push(id);
                    leaves.extend([inner.input(0).here()?, inner.input(1).here()?]);
                }
                _ => leaves.push(v),
            }
        }
        let lookups: Vec<Lookup> = leaves.iter().filter_map(|&v| lookup(m, v)).collect();
        here(lookups.len() == leaves.len() && (2..=3).contains(&lookups.len()))?;
        let p = ln_parts(m, root)?;
        ensure(m.single_user(x) == Some(root), "the embedding sum has other uses")?;
        for l in &lookups {
            ensure(l.hidden == p.hidden, "an embedding table width is not the hidden size")?;
            let out = m.node(l.node).output(0).here()?;
            ensure(m.single_user(out).is_some(), "an embedding lookup has other uses")?;
        }
        // The word lookup reads a rank-2 integer graph input.
        let is_ids = |v: ValueId| m.g.inputs().contains(&v) && m.rank(v) == Some(2);
        let word = lookups.iter().position(|l| is_ids(l.indices)).or_miss("no lookup reads rank-2 input ids")?;
        let ids = lookups[word].indices;
        let pos = lookups
            .iter()
            .position(|l| is_positions(m, l.indices, ids))
            .or_miss("no lookup reads positions 0..S of the input ids")?;
        let mut patch = Patch::new();
        let mut segment: Option<(PValue, ValueId)> = None;
        let mut pos_table: PValue = lookups[pos].table.into();
        if lookups.len() == 3 {
            let seg = (0..3).find(|&i| i != word && i != pos).here()?;
            let l = &lookups[seg];
            if is_zeros(m, l.indices, 8) {
                // Every token reads row 0 of the segment table: add it to the position table.
                let st_t = m.constant(l.table).here()?;
                let st = f32s(&st_t).or_miss("the segment table is not f32")?;
                let pt_t = m.constant(lookups[pos].table).here()?;
                let mut pt = f32s(&pt_t).or_miss("the position table is not f32")?;
                for row in pt.chunks_mut(p.hidden) {
                    for (e, s) in row.iter_mut().zip(&st[..p.hidden]) {
                        *e += *s;
                    }
                }
                let base = format!("{}_plus_segment0", m.g.value(lookups[pos].table).name);
                pos_table = patch.initializer(base, f32_tensor(pt_t.dims().to_vec(), &pt).here()?);
            } else {
                ensure(
                    is_ids(l.indices) && m.shape(l.indices) == m.shape(ids),
                    "segment ids are not an input like the input ids",
                )?;
                let s32 = as_int32(m, &mut patch, l.indices)?;
                segment = Some((s32, l.table));
            }
        }
        ensure(lookups[word].rows > 0 && lookups[pos].rows > 0, "an embedding table is empty")?;
        let ids32 = as_int32(m, &mut patch, ids)?;
        let beta: PValue = match p.beta {
            Some(b) => b.into(),
            None => patch.initializer("embed_ln_beta_zeros", f32_tensor(vec![p.hidden], &vec![0.0; p.hidden]).here()?),
        };
        let mut n = NewNode::ms("EmbedLayerNormalization")
            .input(ids32)
            .input_opt(segment.map(|s| s.0))
            .input(lookups[word].table)
            .input(pos_table)
            .input_opt(segment.map(|s| PValue::from(s.1)))
            .input(p.gamma)
            .input(beta)
            .attr(Attribute::float("epsilon", p.eps))
            // No mask input, so no mask index output (ORT's type inference needs to know).
            .attr(Attribute::int("mask_index_type", 0))
            .reuse(p.out);
        n.name = ln.name.clone();
        patch.node(n);
        patch.remove(lookups.iter().map(|l| l.node));
        patch.remove(adds);
        patch.remove([root]);
        let what = match (lookups.len(), segment.is_some()) {
            (3, false) => {
                "word + position + zero segment embeddings and LayerNormalization into EmbedLayerNormalization"
            }
            (3, true) => "word + position + segment embeddings and LayerNormalization into EmbedLayerNormalization",
            _ => "word + position embeddings and LayerNormalization into EmbedLayerNormalization",
        };
        Ok(patch.detail(what))
    }
}

/// An activation's ORT name and parameters, if the fused kernels support it.
fn activation(m: &Matcher<'_>, n: &Node, for_gemm: bool) -> Option<(&'static str, Vec<f32>)> {
    if !n.domain().is_empty() {
        return None;
    }
    Some(match n.op_type.as_str() {
        "Relu" => ("Relu", vec![]),
        "Sigmoid" => ("Sigmoid", vec![]),
        "Tanh" => ("Tanh", vec![]),
        "LeakyRelu" => ("LeakyRelu", vec![n.attr_float("alpha").unwrap_or(0.01)]),
        "HardSigmoid" => {
            ("HardSigmoid", vec![n.attr_float("alpha").unwrap_or(0.2), n.attr_float("beta").unwrap_or(0.5)])
        }
        "Clip" if !for_gemm => {
            let (lo, hi) = if m.opset < 11 {
                (n.attr_float("min").unwrap_or(f32::MIN), n.attr_float("max").unwrap_or(f32::MAX))
            } else {
                let lo = match n.input(1) {
                    Some(v) => m.scalar(v)? as f32,
                    None => f32::MIN,
                };
                let hi = match n.input(2) {
                    Some(v) => m.scalar(v)? as f32,
                    None => f32::MAX,
                };
                (lo, hi)
            };
            ("Clip", vec![lo, hi])
        }
        _ => return None,
    })
}

const ACTIVATIONS: &[(&str, &str)] =
    &[("", "Relu"), ("", "Sigmoid"), ("", "Tanh"), ("", "LeakyRelu"), ("", "HardSigmoid"), ("", "Clip")];

/// Conv followed by an activation becomes `com.microsoft.FusedConv` (f32 kernels only).
pub struct FusedConv {
    /// Before static INT8 quantization: the weight size (elements) from which a dense Conv
    /// followed by Relu or Clip stays unfused, so that the quantizer can take it (FusedConv has
    /// no INT8 form) and ORT runs it as QLinearConv with the activation absorbed into the
    /// output range. Smaller Convs gain nothing from INT8 and lose accuracy: they fuse.
    pub int8_min_weight: Option<usize>,
}

/// Measured with ORT 1.31 CPU, 1 and 2 threads: Silero VAD's encoder Convs (12k–50k weights)
/// took 0.66–0.70x the time as INT8 that they took as FusedConv (the model: 96 -> 63 us); the
/// PP-OCR classifier's small Convs (64–2704 weights) saved no time as INT8 and cost accuracy
/// (cosine 0.999 -> 0.976 with all of them in INT8, 0.998 from 1024 weights, 0.999 from 4096).
pub const INT8_MIN_CONV_WEIGHT: usize = 4096;

/// ORT CPU runs a depthwise Conv faster in float than through its int8 kernel on x86; on ARM
/// the int8 kernel is the fast one. The quantizer and the cpu linter both follow this.
pub const INT8_DEPTHWISE_SLOWER_THAN_FLOAT: bool = !cfg!(any(target_arch = "aarch64", target_arch = "arm"));

/// The `fuse-ort` set's FusedConv: every Conv + activation it can.
pub static FUSED_CONV: FusedConv = FusedConv { int8_min_weight: None };

/// FusedConv ahead of static INT8 for ORT CPU: large dense Conv + Relu/Clip are left to the quantizer.
pub static FUSED_CONV_BEFORE_INT8: FusedConv = FusedConv { int8_min_weight: Some(INT8_MIN_CONV_WEIGHT) };

impl FusedConv {
    /// Whether this Conv is left for the INT8 quantizer (see [`FusedConv::int8_min_weight`]).
    fn left_for_int8(&self, m: &Matcher<'_>, conv: &Node, activation: &str) -> bool {
        let Some(min) = self.int8_min_weight else { return false };
        let absorbed = matches!(activation, "Relu" | "Clip");
        let dense = conv.attr_int("group").unwrap_or(1) == 1;
        let weights = conv.input(1).and_then(|w| m.constant(w)).map_or(0, |t| t.dims().iter().product::<usize>());
        absorbed && dense && weights >= min
    }
}

impl Rule for FusedConv {
    fn name(&self) -> &'static str {
        "fused-conv"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        ACTIVATIONS
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let act = m.node(root);
        let x = act.input(0).here()?;
        let (conv_id, conv) = m.producer(x, "Conv").here()?;
        let (name, params) = activation(m, act, false).or_miss("the activation's parameters are not constants")?;
        ensure(m.single_user(x) == Some(root), "the Conv output has other uses")?;
        let w = conv.input(1).here()?;
        ensure(m.dtype(w) == Some(DataType::F32), "FusedConv runs f32 only and the weight is not known f32")?;
        ensure(
            !self.left_for_int8(m, conv, name),
            "left for INT8: a dense Conv this large runs faster as QLinearConv, its activation absorbed",
        )?;
        let mut patch = Patch::new();
        let mut n = NewNode::ms("FusedConv");
        n.inputs = conv.inputs().iter().map(|v| v.map(PValue::from)).collect();
        n = n.attrs(conv.attributes.iter().cloned()).attr(Attribute::string("activation", name));
        if !params.is_empty() {
            n = n.attr(Attribute::new("activation_params", AttrValue::Floats(params)));
        }
        n = n.reuse(act.output(0).here()?);
        n.name = conv.name.clone();
        patch.node(n);
        patch.remove([conv_id, root]);
        Ok(patch.detail(format!("Conv + {name} into FusedConv")))
    }
}

/// Gemm followed by an activation becomes `com.microsoft.FusedGemm` (f32 kernels only).
pub struct FusedGemm;

impl Rule for FusedGemm {
    fn name(&self) -> &'static str {
        "fused-gemm"
    }
    fn roots(&self) -> &'static [(&'static str, &'static str)] {
        ACTIVATIONS
    }
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch> {
        let act = m.node(root);
        let x = act.input(0).here()?;
        let (gemm_id, gemm) = m.producer(x, "Gemm").here()?;
        let (name, params) = activation(m, act, true).or_miss("FusedGemm does not support this activation")?;
        ensure(m.single_user(x) == Some(root), "the Gemm output has other uses")?;
        let b = gemm.input(1).here()?;
        ensure(m.dtype(b) == Some(DataType::F32), "FusedGemm here is f32 only and B is not known f32")?;
        let mut patch = Patch::new();
        let mut n = NewNode::ms("FusedGemm");
        n.inputs = gemm.inputs().iter().map(|v| v.map(PValue::from)).collect();
        n = n.attrs(gemm.attributes.iter().cloned()).attr(Attribute::string("activation", name));
        if let Some(a) = params.first() {
            n = n.attr(Attribute::float("activation_alpha", *a));
        }
        if let Some(b) = params.get(1) {
            n = n.attr(Attribute::float("activation_beta", *b));
        }
        n = n.reuse(act.output(0).here()?);
        n.name = gemm.name.clone();
        patch.node(n);
        patch.remove([gemm_id, root]);
        Ok(patch.detail(format!("Gemm + {name} into FusedGemm")))
    }
}
