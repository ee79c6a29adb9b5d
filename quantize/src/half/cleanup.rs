//! Folds the casts conversion leaves behind: a cast to the type its input already has, a cast
//! that undoes the one before it (`f32 → f16 → f32`: the value before the pair is used, which
//! is also the more exact one), and a cast of a constant (the constant is converted instead).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Graph, NodeId, ValueDef, ValueId};

use super::convert_tensor;

fn elem(g: &Graph, v: ValueId) -> Option<DataType> {
    match g.value(v).def() {
        ValueDef::Initializer(t) => Some(t.dtype()),
        _ => g.tensor_type(v)?.dtype(),
    }
}

fn is_float(d: Option<DataType>) -> bool {
    matches!(d, Some(DataType::F32 | DataType::F16 | DataType::BF16))
}

/// Folds casts in `g` and every subgraph; returns how many were removed.
pub(super) fn fold_casts(g: &mut Graph, names: &RefCell<HashSet<String>>) -> usize {
    let mut removed = 0;
    g.visit_graphs_mut(&mut |sg| removed += fold_in(sg, names));
    removed
}

fn fold_in(g: &mut Graph, names: &RefCell<HashSet<String>>) -> usize {
    // Values read by name from subgraphs must keep their definitions.
    let captured: HashSet<String> =
        g.nodes().filter(|(_, n)| n.subgraphs().next().is_some()).flat_map(|(_, n)| Graph::captured_names(n)).collect();
    let mut removed = 0;
    loop {
        let mut changed = false;
        for id in g.node_ids() {
            if g.get_node(id).is_none_or(|n| !n.is_onnx("Cast")) {
                continue;
            }
            if fold_one(g, id, &captured, names) {
                changed = true;
            }
        }
        // Casts left without uses.
        for id in g.node_ids() {
            let n = g.node(id);
            if !n.is_onnx("Cast") {
                continue;
            }
            let Some(out) = n.output(0) else { continue };
            if g.value(out).uses().is_empty() && !g.is_output(out) && !captured.contains(&g.value(out).name) {
                g.remove_node(id);
                removed += 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Initializers the folds left unused.
    let dead: Vec<ValueId> = g
        .initializers()
        .iter()
        .copied()
        .filter(|&v| {
            let val = g.value(v);
            val.uses().is_empty() && !g.is_output(v) && !g.inputs().contains(&v) && !captured.contains(&val.name)
        })
        .collect();
    g.remove_initializers(&dead);
    removed
}

/// Redirects the uses of one foldable Cast; the Cast itself goes once it has none.
fn fold_one(g: &mut Graph, id: NodeId, captured: &HashSet<String>, names: &RefCell<HashSet<String>>) -> bool {
    let n = g.node(id);
    let (Some(input), Some(out)) = (n.input(0), n.output(0)) else { return false };
    let Some(to) = n.attr_int("to").and_then(|c| i32::try_from(c).ok()).and_then(DataType::from_onnx) else {
        return false;
    };
    if g.value(out).uses().is_empty() || g.is_output(out) || captured.contains(&g.value(out).name) {
        return false;
    }
    let from = elem(g, input);
    if !is_float(from) || !is_float(Some(to)) {
        return false;
    }
    // A cast to the type its input has.
    if from == Some(to) {
        return g.replace_uses(out, input) > 0;
    }
    // A cast that undoes the cast before it.
    if let Some(p) = g.value(input).producer()
        && g.node(p).is_onnx("Cast")
        && let Some(src) = g.node(p).input(0)
        && elem(g, src) == Some(to)
    {
        return g.replace_uses(out, src) > 0;
    }
    // A cast of a constant: the constant converted.
    if let Some(t) = g.value(input).initializer().cloned()
        && t.dtype() == DataType::F32
        && !g.inputs().contains(&input)
        && let Ok(c) = convert_tensor(&t, to)
    {
        let base = format!("{}_{}", g.value(input).name, to.name());
        let name = super::fresh_name(names, g, &base);
        let v = g.add_initializer(name, Arc::new(c));
        g.value_mut(v).ty = g.value(out).ty.clone();
        return g.replace_uses(out, v) > 0;
    }
    false
}
