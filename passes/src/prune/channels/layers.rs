//! Weighted layers: Conv, MatMul and Gemm start groups with their output channels and consume
//! the groups of their inputs through their weights.

use kiln_compiler::ir::AttrLookup;

use super::{Action, Analysis, Kind, Producer, Seg, Visit, constant, dims, layout_len};

pub(super) fn conv(a: &mut Analysis, v: &Visit<'_>) {
    let Visit { g, id, n, tracked_in, label } = *v;
    let weight = n.input(1).and_then(|v| constant(g, v));
    let group = n.attributes.attr_int("group").unwrap_or(1);
    let has_z = n.input(3).is_some();
    let block_all = |a: &mut Analysis, why: String| {
        for t in tracked_in {
            a.block(&t.3, &why);
        }
    };
    let Some(w) = weight.filter(|w| w.rank() >= 3) else {
        block_all(a, format!("{label} has a weight that is not a constant"));
        return;
    };
    if has_z || tracked_in.iter().any(|t| t.0 != 0) {
        block_all(a, format!("{label} has tracked parameters or a sum input"));
        return;
    }
    let bias_const = n.input(2).is_none_or(|b| constant(g, b).is_some());
    let (cout, cin_per_group) = (w.dims()[0], w.dims()[1]);
    if let Some((_, _, ax, l)) = tracked_in.first() {
        let len = layout_len(l);
        if *ax != 1 {
            block_all(a, format!("{label} reads channels on axis {ax}, not 1"));
            return;
        }
        if group == 1 {
            a.actions.push(Action::Slice { node: id, input: 1, axis: 1, layout: l.clone(), consumer: true });
        } else if group as usize == len && cin_per_group == 1 && cout == len && bias_const {
            // Depthwise: every output channel follows its input channel.
            a.actions.push(Action::Slice { node: id, input: 1, axis: 0, layout: l.clone(), consumer: false });
            if n.input(2).is_some() {
                a.actions.push(Action::Slice { node: id, input: 2, axis: 0, layout: l.clone(), consumer: false });
            }
            a.actions.push(Action::ConvGroups { node: id, layout: l.clone() });
            a.track(n.output(0), 1, l.clone());
            return;
        } else {
            block_all(a, format!("{label} is a grouped convolution ({group} groups) that mixes channel blocks"));
            return;
        }
    }
    if group != 1 || !bias_const {
        return;
    }
    let grp = a.new_group(cout, Kind::Channels, Producer { node: id, weight: 1, axis: 0, scale: None });
    let l = vec![Seg::Group(grp, cout)];
    a.actions.push(Action::Slice { node: id, input: 1, axis: 0, layout: l.clone(), consumer: false });
    if n.input(2).is_some() {
        a.actions.push(Action::Slice { node: id, input: 2, axis: 0, layout: l.clone(), consumer: false });
    }
    a.track(n.output(0), 1, l);
}

pub(super) fn matmul(a: &mut Analysis, v: &Visit<'_>) {
    let Visit { g, id, n, tracked_in, label } = *v;
    let w = n.input(1).and_then(|v| constant(g, v)).filter(|w| w.rank() == 2);
    let Some(w) = w else {
        for t in tracked_in {
            a.block(&t.3, &format!("{label} multiplies two computed tensors"));
        }
        return;
    };
    let Some(x) = n.input(0) else { return };
    let rank = dims(g, x).map(|d| d.len());
    if let Some((i, _, ax, l)) = tracked_in.first() {
        if *i != 0 || Some(ax + 1) != rank {
            a.block(l, &format!("{label} reads the channels on a batch axis"));
            return;
        }
        a.actions.push(Action::Slice { node: id, input: 1, axis: 0, layout: l.clone(), consumer: true });
    }
    let (Some(rank), Some(out)) = (rank, n.output(0)) else { return };
    let cols = w.dims()[1];
    let grp = a.new_group(cols, Kind::Ffn, Producer { node: id, weight: 1, axis: 1, scale: None });
    let l = vec![Seg::Group(grp, cols)];
    a.actions.push(Action::Slice { node: id, input: 1, axis: 1, layout: l.clone(), consumer: false });
    a.track(Some(out), rank.max(2) - 1, l);
}

pub(super) fn gemm(a: &mut Analysis, v: &Visit<'_>) {
    let Visit { g, id, n, tracked_in, label } = *v;
    let w = n.input(1).and_then(|v| constant(g, v)).filter(|w| w.rank() == 2);
    let trans_a = n.attributes.attr_int("transA").unwrap_or(0) != 0;
    let trans_b = n.attributes.attr_int("transB").unwrap_or(0) != 0;
    let bias = n.input(2);
    let bias_const = bias.is_none_or(|b| constant(g, b).is_some());
    let block_all = |a: &mut Analysis, why: String| {
        for t in tracked_in {
            a.block(&t.3, &why);
        }
    };
    let Some(w) = w else {
        block_all(a, format!("{label} multiplies two computed tensors"));
        return;
    };
    if tracked_in.iter().any(|t| t.0 != 0 || t.2 != 1) || (trans_a && !tracked_in.is_empty()) {
        block_all(a, format!("{label} reads the channels on another axis or through a parameter"));
        return;
    }
    if let Some((_, _, _, l)) = tracked_in.first() {
        let axis = if trans_b { 1 } else { 0 };
        a.actions.push(Action::Slice { node: id, input: 1, axis, layout: l.clone(), consumer: true });
    }
    if !bias_const {
        return;
    }
    let (out_axis, cols) = if trans_b { (0, w.dims()[0]) } else { (1, w.dims()[1]) };
    let grp = a.new_group(cols, Kind::Ffn, Producer { node: id, weight: 1, axis: out_axis, scale: None });
    let l = vec![Seg::Group(grp, cols)];
    a.actions.push(Action::Slice { node: id, input: 1, axis: out_axis, layout: l.clone(), consumer: false });
    if let Some(b) = bias.and_then(|b| constant(g, b)) {
        match b.dims() {
            [k] if *k == cols => {
                a.actions.push(Action::Slice { node: id, input: 2, axis: 0, layout: l.clone(), consumer: false })
            }
            [_, k] if *k == cols => {
                a.actions.push(Action::Slice { node: id, input: 2, axis: 1, layout: l.clone(), consumer: false })
            }
            d if d.iter().all(|&x| x == 1) => {}
            _ => a.block_group(grp, &format!("{label} has a bias of shape {:?}", b.dims())),
        }
    }
    a.track(n.output(0), 1, l);
}
