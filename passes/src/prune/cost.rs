//! Parameter and FLOP counts of the main graph, estimated from shapes (for reports).
//! The model's inputs may be given concrete shapes first (shapes are then inferred on a
//! copy); dimensions still symbolic or unknown count as 1.

use kiln_compiler::ir::{AttrLookup, Graph, Model, TensorType, Type};

use super::channels::dims;

/// Elements of the floating-point initializers that nodes read.
pub fn parameters(model: &Model) -> u64 {
    let Some(g) = model.graph.as_ref() else { return 0 };
    g.initializers()
        .iter()
        .filter_map(|&v| g.value(v).initializer().filter(|_| !g.value(v).uses().is_empty()))
        .filter(|t| t.dtype().is_float())
        .map(|t| t.len())
        .sum()
}

fn elems(g: &Graph, v: Option<kiln_compiler::ir::ValueId>) -> Option<u64> {
    let d = dims(g, v?)?;
    Some(d.iter().map(|x| x.as_known().filter(|&k| k > 0).map_or(1, |k| k as u64)).product())
}

/// [`flops`] with the model's inputs set to `shapes` (name → dims) first.
pub fn flops_at(model: &Model, shapes: &[(String, Vec<usize>)]) -> u64 {
    if shapes.is_empty() {
        return flops(model);
    }
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let inputs: Vec<_> = g.runtime_inputs().collect();
        for v in inputs {
            let name = g.value(v).name.clone();
            let dtype = g.tensor_type(v).and_then(|t| t.dtype());
            if let (Some((_, d)), Some(dtype)) = (shapes.iter().find(|(n, _)| *n == name), dtype) {
                g.value_mut(v).ty = Some(Type::tensor(TensorType::with_dims(dtype, d)));
            }
        }
        let outs: Vec<_> =
            g.nodes().flat_map(|(_, n)| n.outputs().iter().flatten().copied().collect::<Vec<_>>()).collect();
        for v in outs {
            if !g.is_output(v) {
                g.value_mut(v).ty = None;
            }
        }
    }
    kiln_compiler::shape::infer_model(&mut m);
    flops(&m)
}

/// Multiply-adds ×2 of Conv, MatMul, Gemm and fused attention, at the shapes the graph has.
pub fn flops(model: &Model) -> u64 {
    let Some(g) = model.graph.as_ref() else { return 0 };
    let mut total = 0u64;
    for (_, n) in g.nodes() {
        let out = elems(g, n.output(0)).unwrap_or(0);
        let w = n.input(1).and_then(|v| dims(g, v));
        let k: u64 = match (n.domain(), n.op_type.as_str(), w) {
            ("" | "com.microsoft", "Conv" | "FusedConv", Some(w)) if w.len() >= 2 => {
                w[1..].iter().map(|x| x.as_known().unwrap_or(1).max(1) as u64).product()
            }
            ("", "MatMul", Some(w)) | ("com.microsoft", "FusedMatMul", Some(w)) if !w.is_empty() => {
                let i = if w.len() >= 2 { w.len() - 2 } else { 0 };
                w[i].as_known().unwrap_or(1).max(1) as u64
            }
            ("", "Gemm", Some(w)) if w.len() == 2 => {
                let tb = n.attributes.attr_int("transB").unwrap_or(0) != 0;
                w[if tb { 1 } else { 0 }].as_known().unwrap_or(1).max(1) as u64
            }
            ("com.microsoft", "Attention", Some(w)) if w.len() == 2 => {
                // Projections: 3 outputs per hidden unit from the input; scores and context
                // add 2·S per hidden unit.
                let x = n.input(0).and_then(|v| dims(g, v)).unwrap_or_default();
                let seq = x.get(1).and_then(|d| d.as_known()).unwrap_or(1).max(1) as u64;
                let inner = w[0].as_known().unwrap_or(1).max(1) as u64;
                total += 2 * out * (3 * inner + 2 * seq);
                0
            }
            _ => 0,
        };
        total += 2 * out * k;
    }
    total
}
