//! Dynamic INT8 LSTM: ONNX `LSTM` → `com.microsoft.DynamicQuantizeLSTM`.
//!
//! The contrib op takes the LSTM's inputs with W and R stored 8-bit, transposed to
//! `[num_directions, input_size, 4*hidden]` and `[num_directions, hidden, 4*hidden]` (gates
//! in the same `iofc` order), with scales and zero points `[num_directions, 4*hidden]`: one
//! per gate row of the ONNX weight, which is one output column of the kernel's GEMM. Weights
//! are S8 symmetric (zero point 0); the kernel quantizes X and H to U8 at each step. Bias,
//! peepholes and the states stay float.

use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, Graph, NodeId, NodeSpec, ValueId};
use kiln_compiler::{DataType, Tensor};

use crate::constexpr::{Scope, evaluate};
use crate::weights::{float_values, quantize_weight};

/// The LSTM attributes DynamicQuantizeLSTM shares (it has no `layout`).
const SHARED_ATTRIBUTES: &[&str] =
    &["activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "input_forget"];

/// Rewrites LSTM `id` of `g`; `Err(reason)` leaves it untouched. On success, returns the
/// names of captured constants the old weights read (which may now be dead upstream).
pub fn quantize_lstm(g: &mut Graph, id: NodeId, scope: &Scope<'_>) -> Result<Vec<String>, String> {
    let node = g.node(id);
    if node.attr_int("layout").unwrap_or(0) != 0 {
        return Err("layout = 1 (batch first) has no DynamicQuantizeLSTM form".into());
    }
    for a in &node.attributes {
        if !SHARED_ATTRIBUTES.contains(&a.name.as_str()) && a.name != "layout" {
            return Err(format!("attribute `{}` is not supported by DynamicQuantizeLSTM", a.name));
        }
    }
    let (Some(x), Some(w), Some(r)) = (node.input(0), node.input(1), node.input(2)) else {
        return Err("missing X, W or R".into());
    };
    let hidden = node.attr_int("hidden_size");
    let (wt, mut captured) = evaluate(g, w, scope).ok_or("W is not a constant")?;
    let (rt, rc) = evaluate(g, r, scope).ok_or("R is not a constant")?;
    captured.extend(rc);
    for (t, what) in [(&wt, "W"), (&rt, "R")] {
        if t.dtype() != DataType::F32 || t.rank() != 3 {
            return Err(format!("{what} is not an f32 tensor of rank 3"));
        }
    }
    let (dirs, rows) = (wt.dims()[0], wt.dims()[1]);
    let hid = rt.dims()[2];
    if rows != 4 * hid || rt.dims()[..2] != [dirs, rows] || hidden.is_some_and(|h| h as usize != hid) {
        return Err(format!("W {:?} and R {:?} do not match hidden_size", wt.dims(), rt.dims()));
    }
    // The bias is folded too when it is a constant expression (one runtime chain less).
    let old_bias = node.input(3);
    let bias = match old_bias {
        Some(b) => match evaluate(g, b, scope) {
            Some((t, c)) if t.dtype() == DataType::F32 => {
                captured.extend(c);
                Some(Err(t))
            }
            _ => Some(Ok(b)),
        },
        None => None,
    };
    let (wq, ws, wz) = per_direction(&wt).map_err(|e| format!("W: {e}"))?;
    let (rq, rs, rz) = per_direction(&rt).map_err(|e| format!("R: {e}"))?;

    let node = g.node(id);
    let base = node.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "LSTM".into());
    let rest: Vec<Option<ValueId>> = (4..8).map(|i| node.input(i)).collect();
    let attrs: Vec<_> = node.attributes.iter().filter(|a| a.name != "layout").cloned().collect();
    let outputs: Vec<Option<ValueId>> = (0..3).map(|i| node.output(i)).collect();
    let name = node.name.clone();
    let add = |g: &mut Graph, suffix: &str, t: Tensor| {
        let n = g.fresh_name(&format!("{base}_{suffix}"));
        g.add_initializer(n, Arc::new(t))
    };
    let wq = add(g, "W_quantized", wq);
    let rq = add(g, "R_quantized", rq);
    let b = match bias {
        Some(Err(t)) => Some(add(g, "B", t)),
        Some(Ok(v)) => Some(v),
        None => None,
    };
    let scales = [add(g, "W_scale", ws), add(g, "W_zero_point", wz), add(g, "R_scale", rs), add(g, "R_zero_point", rz)];
    let temp: Vec<String> = outputs
        .iter()
        .map(|o| o.map(|v| g.fresh_name(&format!("{}_dynamic", g.value(v).name))).unwrap_or_default())
        .collect();
    let mut spec = NodeSpec::new("DynamicQuantizeLSTM").domain("com.microsoft").inputs([x, wq, rq]).input_opt(b);
    for v in rest {
        spec = spec.input_opt(v);
    }
    for v in scales {
        spec = spec.input_opt(Some(v));
    }
    for a in attrs {
        spec = spec.attr(a);
    }
    if let Some(n) = name {
        spec = spec.name(n);
    }
    let new = g.insert_node_before(id, spec.outputs(temp));
    g.remove_node(id);
    for (i, o) in outputs.into_iter().enumerate() {
        if let Some(v) = o {
            g.bind_output(new, i, v);
        }
    }
    let mut roots = vec![w, r];
    roots.extend(old_bias.filter(|&b| node_input(g, new, 3) != Some(b)));
    remove_dead(g, roots);
    captured.sort();
    captured.dedup();
    Ok(captured)
}

fn node_input(g: &Graph, id: NodeId, i: usize) -> Option<ValueId> {
    g.node(id).input(i)
}

/// `[D, rows, cols]` (ONNX: gate rows × inputs) → quantized `[D, cols, rows]` S8 with scales
/// and zero points `[D, rows]`, each direction per output column.
fn per_direction(t: &Tensor) -> Result<(Tensor, Tensor, Tensor), String> {
    let (d, rows, cols) = (t.dims()[0], t.dims()[1], t.dims()[2]);
    let v = float_values(t).map_err(|e| e.to_string())?;
    let (mut q, mut scales) = (Vec::with_capacity(v.len()), Vec::with_capacity(d * rows));
    for k in 0..d {
        let m = &v[k * rows * cols..(k + 1) * rows * cols];
        let mut tr = vec![0.0f32; m.len()];
        for i in 0..rows {
            for j in 0..cols {
                tr[j * rows + i] = m[i * cols + j];
            }
        }
        let tr = Tensor::from_slice(vec![cols, rows], &tr).map_err(|e| e.to_string())?;
        let (qt, p) = quantize_weight(&tr, Some(1)).map_err(|e| e.to_string())?;
        q.extend(qt.to_vec::<i8>().map_err(|e| e.to_string())?);
        scales.extend(p.scale);
    }
    let q = Tensor::from_slice(vec![d, cols, rows], &q).map_err(|e| e.to_string())?;
    let s = Tensor::from_slice(vec![d, rows], &scales).map_err(|e| e.to_string())?;
    let z = Tensor::from_slice(vec![d, rows], &vec![0i8; d * rows]).map_err(|e| e.to_string())?;
    Ok((q, s, z))
}

/// Removes the nodes and constants that only computed the old weights (data movement over
/// constants: nothing else can read them once unused).
pub fn remove_dead(g: &mut Graph, roots: Vec<ValueId>) {
    let mut work = roots;
    while let Some(v) = work.pop() {
        if !g.value(v).uses().is_empty() || g.is_output(v) || crate::qdq::is_captured(g, &g.value(v).name) {
            continue;
        }
        let Some(p) = g.value(v).producer() else {
            crate::qdq::remove_unused_constants(g, &[v]);
            continue;
        };
        let n = g.node(p);
        let all_dead = n.outputs().iter().flatten().all(|&o| g.value(o).uses().is_empty() && !g.is_output(o));
        if n.subgraphs().next().is_some() || !all_dead {
            continue;
        }
        let inputs: Vec<ValueId> = n.inputs().iter().flatten().copied().collect();
        g.remove_node(p);
        work.extend(inputs);
    }
}
