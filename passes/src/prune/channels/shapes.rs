//! Ops that join or rearrange tracked axes: broadcasting element-wise ops, Reshape and Concat.

use std::collections::BTreeSet;

use kiln_compiler::ir::{AttrLookup, Dim, DimValue, ValueId};

use super::{Action, Analysis, Layout, Seg, Visit, constant, dims, known, layout_len};

pub(super) fn broadcast(a: &mut Analysis, v: &Visit<'_>) {
    let Visit { g, id, n, tracked_in, label } = *v;
    if tracked_in.is_empty() {
        return;
    }
    let ranks: Option<Vec<usize>> = n.inputs().iter().flatten().map(|&v| dims(g, v).map(|d| d.len())).collect();
    let Some(out_rank) = ranks.and_then(|r| r.into_iter().max()) else {
        for t in tracked_in {
            a.block(&t.3, &format!("{label}: an input has an unknown rank"));
        }
        return;
    };
    let rank_of = |v: ValueId| dims(g, v).map_or(0, |d| d.len());
    let (_, v0, ax0, l0) = &tracked_in[0];
    let out_axis = ax0 + out_rank - rank_of(*v0);
    for (_, v, ax, l) in &tracked_in[1..] {
        if ax + out_rank - rank_of(*v) != out_axis {
            let why = format!("{label} combines channels on different axes");
            for t in tracked_in {
                a.block(&t.3, &why);
            }
            return;
        }
        if !a.unite(l0, l, label) {
            return;
        }
    }
    let len = layout_len(l0);
    for (i, v) in n.inputs().iter().enumerate() {
        let Some(v) = *v else { continue };
        if tracked_in.iter().any(|t| t.0 == i) {
            continue;
        }
        let d = dims(g, v).unwrap_or_default();
        let offset = out_rank - d.len();
        if out_axis < offset {
            continue;
        }
        let ia = out_axis - offset;
        match known(&d[ia]) {
            Some(1) => {}
            Some(k) if k as usize == len && constant(g, v).is_some() => {
                a.actions.push(Action::Slice { node: id, input: i, axis: ia, layout: l0.clone(), consumer: false });
            }
            _ => {
                let why = format!(
                    "{label} meets '{}' (size {} on that axis), which Kiln does not track",
                    g.value(v).name,
                    d[ia]
                );
                a.block(l0, &why);
                return;
            }
        }
    }
    for o in n.outputs().iter().flatten() {
        a.track(Some(*o), out_axis, l0.clone());
    }
}

/// Symbolic product of dims: (known product, sorted symbols), or `None` if any is unknown.
fn product(d: &[Dim]) -> Option<(i64, Vec<String>)> {
    let mut k = 1i64;
    let mut syms = Vec::new();
    for x in d {
        match &x.value {
            DimValue::Known(v) => k = k.checked_mul(*v)?,
            DimValue::Symbol(s) => syms.push(s.clone()),
            DimValue::Unknown => return None,
        }
    }
    syms.sort();
    Some((k, syms))
}

pub(super) fn reshape(a: &mut Analysis, v: &Visit<'_>) {
    let Visit { g, id, n, tracked_in, label } = *v;
    let Some((i, x, ax, l)) = tracked_in.first().cloned() else { return };
    let fail = |a: &mut Analysis, why: String| a.block(&l, &why);
    if i != 0 {
        return fail(a, format!("{label} takes its shape from channel data"));
    }
    let Some(shape) = n.input(1).and_then(|s| constant(g, s)).and_then(|t| t.to_vec::<i64>().ok()) else {
        return fail(
            a,
            format!("{label} computes its target shape at run time, so Kiln cannot prove where the channels go"),
        );
    };
    let (Some(din), Some(dout)) = (dims(g, x), n.output(0).and_then(|o| dims(g, o))) else {
        return fail(a, format!("{label} has unknown input or output shapes"));
    };
    let len = layout_len(&l) as i64;
    let before = product(&din[..ax]);
    let after = product(&din[ax + 1..]);
    let target = (0..dout.len()).find(|&j| {
        known(&dout[j]) == Some(len)
            && before.is_some()
            && product(&dout[..j]) == before
            && product(&dout[j + 1..]) == after
    });
    let Some(j) = target else {
        return fail(a, format!("{label} mixes the channel axis with other axes"));
    };
    match shape.get(j) {
        Some(&s) if s == len => a.actions.push(Action::ShapeElem { node: id, index: j, layout: l.clone() }),
        Some(-1) => {}
        Some(0) if j == ax => {}
        _ => return fail(a, format!("{label} has a shape constant Kiln cannot update")),
    }
    a.track(n.output(0), j, l);
}

pub(super) fn concat(a: &mut Analysis, v: &Visit<'_>) {
    let Visit { g, id, n, tracked_in, label } = *v;
    if tracked_in.is_empty() {
        return;
    }
    let rank = dims(g, tracked_in[0].1).map_or(0, |d| d.len()) as i64;
    let axis = n.attributes.attr_int("axis").unwrap_or(0);
    let axis = usize::try_from(if axis < 0 { axis + rank } else { axis }).unwrap_or(usize::MAX);
    let along: BTreeSet<bool> = tracked_in.iter().map(|t| t.2 == axis).collect();
    if along.len() > 1 || tracked_in.iter().any(|t| t.2 != tracked_in[0].2) {
        for t in tracked_in {
            a.block(&t.3, &format!("{label} joins channels on different axes"));
        }
        return;
    }
    if along.contains(&true) {
        let mut out = Layout::new();
        for (i, v) in n.inputs().iter().enumerate() {
            let Some(v) = *v else { continue };
            if let Some(t) = tracked_in.iter().find(|t| t.0 == i) {
                out.extend(t.3.iter().cloned());
            } else {
                match dims(g, v).and_then(|d| d.get(axis).and_then(known)) {
                    Some(k) => out.push(Seg::Fixed(k as usize)),
                    None => {
                        for t in tracked_in {
                            a.block(&t.3, &format!("{label} joins a tensor of unknown size"));
                        }
                        return;
                    }
                }
            }
        }
        a.track(n.output(0), axis, out);
        return;
    }
    // Concatenated along another axis: every input must carry the same channels.
    let (_, _, ax, l0) = tracked_in[0].clone();
    for t in &tracked_in[1..] {
        if !a.unite(&l0, &t.3, label) {
            return;
        }
    }
    for (i, v) in n.inputs().iter().enumerate() {
        let Some(v) = *v else { continue };
        if tracked_in.iter().any(|t| t.0 == i) {
            continue;
        }
        if constant(g, v).is_some() {
            a.actions.push(Action::Slice { node: id, input: i, axis: ax, layout: l0.clone(), consumer: false });
        } else {
            a.block(&l0, &format!("{label} joins '{}', which Kiln does not track", g.value(v).name));
            return;
        }
    }
    a.track(n.output(0), ax, l0);
}
