//! `legalize-scalar-inputs`: inputs the ONNX specification requires to be scalars, fed a value
//! that may be a one-element vector, are squeezed to a scalar.
//!
//! ONNX's own function expansions (AffineGrid's, for one) feed `Range` the `[1]`-shaped
//! outputs of a `Split`; ONNX Runtime's kernels accept that, and its shape inference only
//! objects once it knows the shape. Folding can make that happen: with an `If` condition
//! folded to a constant, ONNX Runtime inlines the branch, sees `[1]` and rejects the model
//! it ran before. `Squeeze` without axes turns every valid input (one element) into the
//! scalar the specification asks for, needs no constant, and exists at every opset.

use kiln_compiler::ir::{Graph, Model, NodeId, NodeSpec, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

use super::common::{Scope, label, shape_of, visit_with_scope};

const RULE: &str = "legalize-scalar-inputs";

/// Default-domain ops and the input slots the specification requires to be scalars.
const SCALAR_INPUTS: &[(&str, &[usize])] = &[("Range", &[0, 1, 2])];

/// Squeezes possibly non-scalar values into the scalar inputs of [`SCALAR_INPUTS`] ops.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegalizeScalarInputs;

impl Pass for LegalizeScalarInputs {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, scope, path| {
            for id in g.node_ids() {
                let n = g.node(id);
                let Some((_, slots)) = SCALAR_INPUTS.iter().find(|(op, _)| n.is_onnx(op)) else { continue };
                for &i in *slots {
                    let Some(v) = g.node(id).input(i) else { continue };
                    if is_scalar(g, v, scope) {
                        continue;
                    }
                    let s = squeeze_before(g, id, v);
                    g.set_input(id, i, Some(s));
                    let what = format!("input {i} ('{}') squeezed to a scalar", g.value(v).name);
                    cx.applied(RULE, label(path, g, id), what);
                    changed = true;
                }
            }
        });
        Ok(Changed::from_bool(changed))
    }
}

/// Whether `v` is known to be a scalar: declared or constant rank 0, or a `Squeeze` with no
/// axes (what this pass inserts).
fn is_scalar(g: &Graph, v: ValueId, scope: &Scope) -> bool {
    if shape_of(g, v, scope).is_some_and(|s| s.is_empty()) {
        return true;
    }
    let Some(p) = g.value(v).producer() else { return false };
    let n = g.node(p);
    n.is_onnx("Squeeze") && n.inputs().len() == 1 && n.attributes.iter().all(|a| a.name != "axes")
}

/// Adds `Squeeze(v)` just before `node`; returns its output.
fn squeeze_before(g: &mut Graph, node: NodeId, v: ValueId) -> ValueId {
    let out = g.fresh_name(&format!("{}_scalar", g.value(v).name));
    let spec = NodeSpec::new("Squeeze").name(g.fresh_name(&out)).inputs([v]).outputs([out]);
    let id = g.insert_node_before(node, spec);
    g.node(id).output(0).unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use kiln_compiler::DataType;
    use kiln_compiler::ir::NodeSpec;
    use kiln_compiler::tensor::Tensor;

    use super::*;
    use crate::testing::*;

    /// Range(0, Split(size)[1], 1): the limit is a one-element vector, as in AffineGrid's
    /// expansion; `scalar_limit` declares it a scalar instead.
    fn range_model(scalar_limit: bool) -> Model {
        let mut g = Graph::new();
        let limit = if scalar_limit {
            g.add_input("n", Some(tensor_ty(DataType::I64, &[])))
        } else {
            let size = g.add_input("size", Some(tensor_ty(DataType::I64, &[2])));
            let id = g.add_node(NodeSpec::new("Split").inputs([size]).outputs(["a", "b"]).attr(A::int("axis", 0)));
            g.node(id).output(1).unwrap()
        };
        let zero = constant(&mut g, "zero", Tensor::scalar(0i64));
        let one = constant(&mut g, "one", Tensor::scalar(1i64));
        let r = op(&mut g, NodeSpec::new("Range").name("range").inputs([zero, limit, one]).outputs(["r"]));
        output(&mut g, r, tensor_ty_sym(DataType::I64, &[None]));
        model(g, 13)
    }

    #[test]
    fn a_vector_limit_is_squeezed_once() {
        let before = range_model(false);
        let mut after = before.clone();
        let (changed, report) = apply(&LegalizeScalarInputs, &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 1, "{report:?}");
        assert_eq!(count_op(&after, "Squeeze"), 1);
        assert_eq!(apply(&LegalizeScalarInputs, &mut after).unwrap().0, Changed::No);
        let inputs = vec![("size".to_string(), Value::Tensor(Tensor::from_slice(vec![2], &[3i64, 5]).unwrap()))];
        let want = run(&before, &inputs).unwrap();
        compare_outputs(&run(&after, &inputs).unwrap(), &want, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn scalars_stay() {
        let mut m = range_model(true);
        assert_eq!(apply(&LegalizeScalarInputs, &mut m).unwrap().0, Changed::No);
    }
}
