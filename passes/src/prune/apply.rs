//! Rewriting the graph once the surviving indices are chosen: constants sliced, depthwise
//! group counts and Reshape constants updated, types re-inferred.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrValue, Attribute, Graph, Model, NodeId, TensorType, Type, ValueId};

use super::PruneError;
use super::channels::{Action, Analysis, Layout, Seg, constant};
use super::tensor::take;

/// Surviving indices of a layout, given the kept channels of each pruned group root; `None`
/// when nothing along it is removed.
pub(crate) fn kept_indices(a: &Analysis, l: &Layout, keep: &BTreeMap<usize, Vec<usize>>) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut pruned = false;
    for s in l {
        match s {
            Seg::Fixed(n) => {
                out.extend(offset..offset + n);
                offset += n;
            }
            Seg::Group(g, n) => {
                match keep.get(&a.root(*g)) {
                    Some(k) => {
                        pruned = true;
                        out.extend(k.iter().map(|i| offset + i));
                    }
                    None => out.extend(offset..offset + n),
                }
                offset += n;
            }
        }
    }
    pruned.then_some(out)
}

/// Slices of constant inputs to make: (node, input) → [(axis, surviving indices)].
pub(crate) type Slices = BTreeMap<(NodeId, usize), Vec<(usize, Vec<usize>)>>;

/// Applies the channel actions of `a` for the chosen `keep` sets.
///
/// With `zero`, nothing is removed: the channels that would go are set to zero where they
/// are produced (weights, biases, normalization and elementwise parameters), which leaves
/// the outputs exactly as the pruned model computes them (a mask, for checking and for
/// sensitivity studies).
pub(crate) fn apply_channels(
    g: &mut Graph,
    a: &Analysis,
    keep: &BTreeMap<usize, Vec<usize>>,
    zero: bool,
) -> Result<(), PruneError> {
    let mut slices = Slices::new();
    let mut groups: Vec<(NodeId, usize)> = Vec::new();
    let mut shape_elems: Vec<(NodeId, usize, usize)> = Vec::new();
    for act in &a.actions {
        match act {
            Action::Slice { node, input, axis, layout, consumer } => {
                if zero && *consumer {
                    continue;
                }
                if let Some(k) = kept_indices(a, layout, keep) {
                    slices.entry((*node, *input)).or_default().push((*axis, k));
                }
            }
            Action::ConvGroups { node, layout } => {
                if let Some(k) = kept_indices(a, layout, keep) {
                    groups.push((*node, k.len()));
                }
            }
            Action::ShapeElem { node, index, layout } => {
                if let Some(k) = kept_indices(a, layout, keep) {
                    shape_elems.push((*node, *index, k.len()));
                }
            }
        }
    }
    if zero {
        return zero_constants(g, &slices);
    }
    slice_constants(g, &slices)?;
    for (node, n) in groups {
        set_int_attr(g, node, "group", n as i64);
    }
    for (node, index, n) in shape_elems {
        set_shape_element(g, node, 1, index, n as i64)?;
    }
    Ok(())
}

/// Slices constant inputs (each use gets its own copy when the constant is shared).
pub(crate) fn slice_constants(g: &mut Graph, slices: &Slices) -> Result<(), PruneError> {
    let mut replaced: BTreeSet<ValueId> = BTreeSet::new();
    for (&(node, input), cuts) in slices {
        let Some(v) = g.node(node).input(input) else { continue };
        let name = g.value(v).name.clone();
        let Some(mut t) = constant(g, v) else {
            return Err(PruneError::Invalid(format!("'{name}' should be a constant")));
        };
        for (axis, keep) in cuts {
            t = Arc::new(take(&t, *axis, keep, &name)?);
        }
        replace_constant(g, node, input, t);
        replaced.insert(v);
    }
    remove_unused(g, &replaced);
    Ok(())
}

/// Sets to zero what [`slice_constants`] would remove.
fn zero_constants(g: &mut Graph, slices: &Slices) -> Result<(), PruneError> {
    let mut replaced: BTreeSet<ValueId> = BTreeSet::new();
    for (&(node, input), cuts) in slices {
        let Some(v) = g.node(node).input(input) else { continue };
        let name = g.value(v).name.clone();
        let Some(t) = constant(g, v) else {
            return Err(PruneError::Invalid(format!("'{name}' should be a constant")));
        };
        let bad = |e: kiln_compiler::TensorError| PruneError::Tensor { tensor: name.clone(), message: e.to_string() };
        let mut vals = t.to_vec::<f32>().map_err(bad)?;
        let dims = t.dims();
        for (axis, keep) in cuts {
            let len = dims[*axis];
            let inner: usize = dims[axis + 1..].iter().product();
            for (i, x) in vals.iter_mut().enumerate() {
                if keep.binary_search(&((i / inner.max(1)) % len.max(1))).is_err() {
                    *x = 0.0;
                }
            }
        }
        let nt = Tensor::from_slice(dims.to_vec(), &vals).map_err(bad)?;
        replace_constant(g, node, input, Arc::new(nt));
        replaced.insert(v);
    }
    remove_unused(g, &replaced);
    Ok(())
}

/// Gives input `input` of `node` the constant `t`: in place when only that input reads the
/// constant, else as a new initializer.
pub(crate) fn replace_constant(g: &mut Graph, node: NodeId, input: usize, t: Arc<Tensor>) {
    let Some(v) = g.node(node).input(input) else { return };
    let only_reader = g.value(v).uses().len() == 1 && !g.is_output(v) && !g.inputs().contains(&v);
    if only_reader {
        if g.value(v).ty.is_some() {
            let ty = TensorType::with_dims(t.dtype(), t.dims());
            g.value_mut(v).ty = Some(Type::tensor(ty));
        }
        g.set_initializer(v, t);
    } else {
        let name = g.fresh_name(&format!("{}_pruned", g.value(v).name));
        let nv = g.add_initializer(name, t);
        g.set_input(node, input, Some(nv));
    }
}

/// Drops initializers that lost their last reader.
pub(crate) fn remove_unused(g: &mut Graph, candidates: &BTreeSet<ValueId>) {
    let dead: Vec<ValueId> = candidates
        .iter()
        .copied()
        .filter(|&v| g.value(v).uses().is_empty() && !g.is_output(v) && g.value(v).initializer().is_some())
        .filter(|v| !g.inputs().contains(v))
        .collect();
    g.remove_initializers(&dead);
}

pub(crate) fn set_int_attr(g: &mut Graph, node: NodeId, name: &str, v: i64) {
    let n = g.node_mut(node);
    match n.attributes.iter_mut().find(|a| a.name == name) {
        Some(a) => a.value = AttrValue::Int(v),
        None => n.attributes.push(Attribute::int(name, v)),
    }
}

/// Sets element `index` of the constant i64 shape at input `input` of `node`.
pub(crate) fn set_shape_element(
    g: &mut Graph,
    node: NodeId,
    input: usize,
    index: usize,
    v: i64,
) -> Result<(), PruneError> {
    let Some(s) = g.node(node).input(input) else {
        return Err(PruneError::Invalid(format!("{} has no shape input", g.node(node).label(node))));
    };
    let name = g.value(s).name.clone();
    let t = constant(g, s).ok_or_else(|| PruneError::Invalid(format!("shape '{name}' should be a constant")))?;
    let mut vals =
        t.to_vec::<i64>().map_err(|e| PruneError::Tensor { tensor: name.clone(), message: e.to_string() })?;
    let slot =
        vals.get_mut(index).ok_or_else(|| PruneError::Invalid(format!("shape '{name}' has no element {index}")))?;
    *slot = v;
    let nt = Tensor::from_slice(t.dims().to_vec(), &vals)
        .map_err(|e| PruneError::Tensor { tensor: name, message: e.to_string() })?;
    replace_constant(g, node, input, Arc::new(nt));
    Ok(())
}

/// Forgets the types of every node output of the main graph that is not a model output, and
/// infers them again from the (pruned) inputs and constants.
pub(crate) fn reinfer_types(model: &mut Model) {
    if let Some(g) = model.graph.as_mut() {
        let outs: Vec<ValueId> =
            g.nodes().flat_map(|(_, n)| n.outputs().iter().flatten().copied().collect::<Vec<_>>()).collect();
        for v in outs {
            if !g.is_output(v) {
                g.value_mut(v).ty = None;
            }
        }
    }
    kiln_compiler::shape::infer_model(model);
    if let Some(g) = model.graph.as_mut() {
        let kept: Vec<ValueId> = g.value_info().iter().copied().filter(|&v| g.value(v).ty.is_some()).collect();
        g.set_value_info(kept);
    }
}
