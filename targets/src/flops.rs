//! Floating-point (or integer) operations of the compute-heavy ops, from shapes: a
//! multiply-add counts 2. Symbolic dimensions count as 1 (one sample, the shortest sequence),
//! so shares stay meaningful for dynamic models; a node whose shapes are unknown counts 0 and
//! is reported as such.

use kiln_compiler::ir::{AttrLookup, Graph, NodeId, ValueId};

use crate::qdq::constant;

/// The shape of a value with symbolic dims as 1, when the rank and every known dim are known.
pub fn dims(g: &Graph, v: ValueId) -> Option<Vec<u64>> {
    if let Some(t) = constant(g, v) {
        return Some(t.dims().iter().map(|&d| d as u64).collect());
    }
    let shape = g.tensor_type(v)?.shape.as_ref()?;
    shape
        .iter()
        .map(|d| match &d.value {
            kiln_compiler::ir::DimValue::Known(k) => u64::try_from(*k).ok(),
            kiln_compiler::ir::DimValue::Symbol(_) => Some(1),
            kiln_compiler::ir::DimValue::Unknown => None,
        })
        .collect()
}

fn product(d: &[u64]) -> u64 {
    d.iter().copied().fold(1u64, u64::saturating_mul)
}

/// The operations of a node, `None` when it is compute-heavy but its shapes are unknown, and
/// `Some(0)` for ops that are not counted (elementwise and data movement are noise next to
/// convolutions and matrix products).
pub fn node_flops(g: &Graph, n: NodeId) -> Option<u64> {
    let node = g.node(n);
    let domain = node.domain();
    if !(domain.is_empty() || domain == "com.microsoft") {
        return Some(0);
    }
    let input = |i: usize| node.input(i).and_then(|v| dims(g, v));
    let output = || node.output(0).and_then(|v| dims(g, v));
    // 2 × outputs × the reduction length.
    let conv_like = |w: usize| -> Option<u64> {
        let w = input(w)?;
        let out = output()?;
        Some(2u64.saturating_mul(product(&out)).saturating_mul(product(w.get(1..)?)))
    };
    let matmul_like = |a: usize| -> Option<u64> {
        let a = input(a)?;
        let k = *a.last()?;
        Some(2u64.saturating_mul(product(&output()?)).saturating_mul(k))
    };
    match node.op_type.as_str() {
        "Conv" | "FusedConv" | "ConvInteger" | "NhwcConv" => conv_like(1),
        "QLinearConv" => conv_like(3),
        "ConvTranspose" => {
            // Every input element is multiplied by a (M/group × kernel) slice of the weight.
            let x = input(0)?;
            let w = input(1)?;
            Some(2u64.saturating_mul(product(&x)).saturating_mul(product(w.get(1..)?)))
        }
        "MatMul" | "MatMulInteger" | "QLinearMatMul" | "DynamicQuantizeMatMul" | "MatMulIntegerToFloat" => {
            matmul_like(0)
        }
        "FusedMatMul" => {
            let a = input(0)?;
            let trans = node.attr_int("transA").unwrap_or(0) != 0;
            let k = if trans { *a.get(a.len().checked_sub(2)?)? } else { *a.last()? };
            Some(2u64.saturating_mul(product(&output()?)).saturating_mul(k))
        }
        "Gemm" | "FusedGemm" | "QGemm" => {
            let a = input(0)?;
            let trans = node.attr_int("transA").unwrap_or(0) != 0;
            let k = if trans { *a.first()? } else { *a.get(1)? };
            Some(2u64.saturating_mul(product(&output()?)).saturating_mul(k))
        }
        "MatMulNBits" => {
            let k = u64::try_from(node.attr_int("K")?).ok()?;
            Some(2u64.saturating_mul(product(&output()?)).saturating_mul(k))
        }
        "Attention" | "QAttention" => {
            // Q/K/V projection ([B,S,H] × [H,3H]) plus scores and context (2 × B·S·S·H).
            let x = input(0)?;
            let w = input(1)?;
            let (b, s, h) = (*x.first()?, *x.get(1)?, *x.get(2)?);
            let proj = 2u64.saturating_mul(b * s).saturating_mul(product(&w));
            Some(proj.saturating_add(4u64.saturating_mul(b).saturating_mul(s * s).saturating_mul(h)))
        }
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::ir::{Attribute, Dim, NodeSpec, TensorType, Type};
    use kiln_compiler::{DataType, Tensor};
    use std::sync::Arc;

    fn typed(g: &mut Graph, v: ValueId, dims: Vec<Dim>) {
        g.value_mut(v).ty = Some(Type::tensor(TensorType::new(DataType::F32, Some(dims))));
    }

    #[test]
    fn counts_conv_matmul_gemm_and_treats_symbols_as_one() {
        let mut g = Graph::new();
        let x = g.add_input("x", None);
        typed(&mut g, x, vec![Dim::symbol("N"), Dim::known(3), Dim::known(8), Dim::known(8)]);
        let w = g.add_initializer("w", Arc::new(Tensor::from_slice(vec![4, 3, 3, 3], &[0f32; 108]).unwrap()));
        let c = g.add_node(NodeSpec::new("Conv").inputs([x, w]).outputs(["y"]));
        let y = g.node(c).output(0).unwrap();
        typed(&mut g, y, vec![Dim::symbol("N"), Dim::known(4), Dim::known(6), Dim::known(6)]);
        // 2 × (1·4·6·6) × (3·3·3)
        assert_eq!(node_flops(&g, c), Some(2 * 144 * 27));

        let a = g.add_input("a", None);
        typed(&mut g, a, vec![Dim::known(2), Dim::known(5), Dim::known(7)]);
        let b = g.add_initializer("b", Arc::new(Tensor::from_slice(vec![7, 3], &[0f32; 21]).unwrap()));
        let m = g.add_node(NodeSpec::new("MatMul").inputs([a, b]).outputs(["m"]));
        let mo = g.node(m).output(0).unwrap();
        typed(&mut g, mo, vec![Dim::known(2), Dim::known(5), Dim::known(3)]);
        assert_eq!(node_flops(&g, m), Some(2 * 30 * 7));

        let ga = g.add_input("ga", None);
        typed(&mut g, ga, vec![Dim::known(7), Dim::known(2)]);
        let gm = g.add_node(NodeSpec::new("Gemm").inputs([ga, b]).outputs(["go"]).attr(Attribute::int("transA", 1)));
        let go = g.node(gm).output(0).unwrap();
        typed(&mut g, go, vec![Dim::known(2), Dim::known(3)]);
        assert_eq!(node_flops(&g, gm), Some(2 * 6 * 7));

        // Unknown output shape: unknown, not zero.
        let u = g.add_node(NodeSpec::new("MatMul").inputs([a, b]).outputs(["u"]));
        assert_eq!(node_flops(&g, u), None);
        // Elementwise ops are not counted.
        let r = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["r"]));
        assert_eq!(node_flops(&g, r), Some(0));
    }
}
