//! Legalization passes: rewrites that make a graph acceptable to a target without changing
//! a single number.

use kiln_compiler::ir::{Graph, Model, NodeSpec, Use};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

/// Gives every DequantizeLinear one consumer by duplicating it per extra consumer. TensorRT
/// fuses a DQ into the op that consumes it; a shared DQ is fused into one and computed in
/// float for the rest. The copy reads the same constant inputs, so no data is duplicated.
pub struct SplitSharedDequantize;

impl Pass for SplitSharedDequantize {
    fn name(&self) -> &'static str {
        "split-shared-dq"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let mut changed = Changed::No;
        if let Some(g) = model.graph.as_mut() {
            g.visit_graphs_mut(&mut |g| changed = changed.any(split(g, cx)));
        }
        Ok(changed)
    }
}

fn split(g: &mut Graph, cx: &mut PassContext) -> Changed {
    let mut changed = Changed::No;
    for n in g.node_ids() {
        if !g.node(n).is_onnx("DequantizeLinear") {
            continue;
        }
        let Some(out) = g.node(n).output(0) else { continue };
        let mut uses: Vec<Use> = g.value(out).uses().to_vec();
        uses.sort();
        // The original keeps the graph output, or else its first consumer.
        let keep = usize::from(!g.is_output(out));
        if uses.len() <= keep {
            continue;
        }
        let node = g.node(n).clone();
        let base = node.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| g.value(out).name.clone());
        let ty = g.value(out).ty.clone();
        for u in &uses[keep..] {
            let value_name = g.fresh_name(&format!("{}_dup", g.value(out).name));
            let node_name = g.fresh_name(&format!("{base}_dup"));
            let mut spec = NodeSpec::new(node.op_type.clone()).name(node_name).outputs([value_name]);
            spec.domain = node.domain.clone();
            spec.inputs = node.inputs().to_vec();
            spec.attributes = node.attributes.clone();
            let copy = g.insert_node_after(n, spec);
            if let Some(v) = g.node(copy).output(0) {
                g.value_mut(v).ty = ty.clone();
                g.set_input(u.node, u.input, Some(v));
            }
        }
        cx.applied("split-shared-dq", g.node(n).label(n), format!("{} consumers, one DQ each", uses.len()));
        changed = Changed::Yes;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::lint_model;
    use crate::target::TargetKind;
    use crate::testgraph::{QdqBuilder, run_both};

    #[test]
    fn one_consumer_per_dq_same_numbers() {
        // A weight DQ shared by two MatMuls, and an activation DQ shared by a MatMul and an Add.
        let mut b = QdqBuilder::new(&[1, 4]);
        let xq = b.quantize_input(0.05, 0);
        let w = b.weight_dq(&[4, 4], 1, Some(1), 0);
        let m1 = b.op("MatMul", &[xq, w], "m1");
        let m2 = b.op("MatMul", &[xq, w], "m2");
        let s = b.op("Add", &[m1, m2], "sum");
        let model = b.finish(&[s]);
        let before = lint_model(&model, TargetKind::TensorRt);
        assert_eq!(before.rule("trt-shared-dq").count(), 2, "{:#?}", before.errors);

        let mut after = model.clone();
        let mut cx = PassContext::new();
        assert_eq!(SplitSharedDequantize.run(&mut after, &mut cx).unwrap(), Changed::Yes);
        let lint = lint_model(&after, TargetKind::TensorRt);
        assert_eq!(lint.rule("trt-shared-dq").count(), 0, "{:#?}", lint.errors);
        let g = after.graph.as_ref().unwrap();
        let dqs = g.nodes().filter(|(_, n)| n.is_onnx("DequantizeLinear")).count();
        assert_eq!(dqs, 4);
        kiln_compiler::verify::check_model(&after).unwrap();
        run_both(&model, &after, 0.0);

        // Its twin: nothing shared, nothing changes.
        let mut again = after.clone();
        assert_eq!(SplitSharedDequantize.run(&mut again, &mut PassContext::new()).unwrap(), Changed::No);
    }
}
