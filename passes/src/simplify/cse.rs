//! `eliminate-common-subexpressions`: a node identical to an earlier one (same op, domain,
//! attributes and inputs) is dropped and its readers read the earlier node's outputs; small
//! initializers with byte-equal data, the same type and shape are merged likewise.
//!
//! Random ops, `Dropout`, ops of unknown domains and ops with subgraphs are never merged.
//! Nodes are visited in order, so merging one pair makes the pairs after it identical too.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use kiln_compiler::ir::{AttrValue, Attribute, Graph, Model, Node, NodeId, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};
use kiln_compiler::tensor::{Tensor, TensorData};

use super::common::{
    Scope, cannot_forward, captured, forward, has_subgraphs, is_pinned, is_random, known_domain, label,
    prune_value_info, visit_with_scope,
};

const RULE: &str = "eliminate-common-subexpressions";

/// Initializers up to this many bytes are compared for merging.
pub const DEFAULT_CSE_INITIALIZER_BYTES: u64 = 1 << 16;

/// Merges identical nodes and identical small initializers.
#[derive(Debug, Clone, Copy)]
pub struct EliminateCommonSubexpressions {
    max_initializer_bytes: u64,
}

impl Default for EliminateCommonSubexpressions {
    fn default() -> Self {
        EliminateCommonSubexpressions::new()
    }
}

impl EliminateCommonSubexpressions {
    pub fn new() -> EliminateCommonSubexpressions {
        EliminateCommonSubexpressions { max_initializer_bytes: DEFAULT_CSE_INITIALIZER_BYTES }
    }

    /// Initializers larger than this are not compared.
    pub fn max_initializer_bytes(mut self, n: u64) -> EliminateCommonSubexpressions {
        self.max_initializer_bytes = n;
        self
    }
}

impl Pass for EliminateCommonSubexpressions {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, _, path| {
            let c = captured(g);
            changed |= self.merge_initializers(g, &c, path, cx);
            changed |= merge_nodes(g, &c, path, cx);
            prune_value_info(g);
        });
        Ok(Changed::from_bool(changed))
    }
}

impl EliminateCommonSubexpressions {
    fn merge_initializers(&self, g: &mut Graph, captured: &HashSet<String>, path: &str, cx: &mut PassContext) -> bool {
        let mut buckets: HashMap<u64, Vec<ValueId>> = HashMap::new();
        let mut dead = Vec::new();
        for v in g.initializers().to_vec() {
            let Some(t) = g.value(v).initializer().cloned() else { continue };
            if g.inputs().contains(&v) || t.byte_size() > self.max_initializer_bytes {
                continue;
            }
            let mut h = DefaultHasher::new();
            hash_tensor(&t, &mut h);
            let bucket = buckets.entry(h.finish()).or_default();
            let same = bucket.iter().copied().find(|&k| g.value(k).initializer().is_some_and(|kt| **kt == *t));
            let Some(keep) = same else {
                bucket.push(v);
                continue;
            };
            if is_pinned(g, v, captured) {
                cx.missed(RULE, format!("{path}: initializer '{}'", g.value(v).name), "graph output or captured");
                continue;
            }
            cx.applied(
                RULE,
                format!("{path}: initializer '{}'", g.value(v).name),
                format!("same data as '{}'", g.value(keep).name),
            );
            g.replace_uses(v, keep);
            dead.push(v);
        }
        g.remove_initializers(&dead);
        !dead.is_empty()
    }
}

fn mergeable(n: &Node) -> bool {
    known_domain(n) && !is_random(n) && !has_subgraphs(n) && !n.is_onnx("Dropout")
}

fn merge_nodes(g: &mut Graph, captured: &HashSet<String>, path: &str, cx: &mut PassContext) -> bool {
    let mut buckets: HashMap<u64, Vec<NodeId>> = HashMap::new();
    let mut changed = false;
    for id in g.node_ids() {
        let Some(n) = g.get_node(id) else { continue };
        if !mergeable(n) {
            continue;
        }
        let key = node_hash(n);
        let bucket = buckets.entry(key).or_default();
        let Some(keep) = bucket.iter().copied().find(|&k| g.get_node(k).is_some_and(|kn| same_node(kn, n))) else {
            bucket.push(id);
            continue;
        };
        let pairs: Vec<(ValueId, ValueId)> =
            n.outputs().iter().zip(g.node(keep).outputs()).filter_map(|(a, b)| Some(((*a)?, (*b)?))).collect();
        // Check every pair before changing anything.
        if let Some(why) = pairs.iter().find_map(|&(from, to)| cannot_forward(g, from, to, captured)) {
            cx.missed(RULE, label(path, g, id), why);
            continue;
        }
        cx.applied(RULE, label(path, g, id), format!("same as {}", label(path, g, keep)));
        g.remove_node(id);
        for (from, to) in pairs {
            forward(g, from, to, captured);
        }
        changed = true;
    }
    changed
}

/// Same op, domain, overload, inputs, output arity and attributes (in any order).
fn same_node(a: &Node, b: &Node) -> bool {
    a.op_type == b.op_type
        && a.domain() == b.domain()
        && a.overload == b.overload
        && a.inputs() == b.inputs()
        && a.outputs().len() == b.outputs().len()
        && a.outputs().iter().zip(b.outputs()).all(|(x, y)| x.is_some() == y.is_some())
        && a.attributes.len() == b.attributes.len()
        && a.attributes.iter().all(|x| b.attributes.iter().any(|y| x.name == y.name && same_attr(&x.value, &y.value)))
}

/// Attribute equality; floats by bits (so NaN equals itself, and 0.0 differs from -0.0).
fn same_attr(a: &AttrValue, b: &AttrValue) -> bool {
    use AttrValue as A;
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    match (a, b) {
        (A::Float(x), A::Float(y)) => x.to_bits() == y.to_bits(),
        (A::Int(x), A::Int(y)) => x == y,
        (A::String(x), A::String(y)) => x == y,
        (A::Tensor(x), A::Tensor(y)) => x == y,
        (A::Floats(x), A::Floats(y)) => bits(x) == bits(y),
        (A::Ints(x), A::Ints(y)) => x == y,
        (A::Strings(x), A::Strings(y)) => x == y,
        (A::Tensors(x), A::Tensors(y)) => x == y,
        (A::Type(x), A::Type(y)) => x == y,
        (A::Types(x), A::Types(y)) => x == y,
        (A::SparseTensor(x), A::SparseTensor(y)) => x == y,
        (A::SparseTensors(x), A::SparseTensors(y)) => x == y,
        (A::Raw(x), A::Raw(y)) => x == y,
        // Subgraphs are never compared (nodes holding them are not merged).
        _ => false,
    }
}

fn node_hash(n: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    n.op_type.hash(&mut h);
    n.domain().hash(&mut h);
    n.inputs().hash(&mut h);
    let mut attrs: Vec<&Attribute> = n.attributes.iter().collect();
    attrs.sort_by(|a, b| a.name.cmp(&b.name));
    for a in attrs {
        a.name.hash(&mut h);
        hash_attr(&a.value, &mut h);
    }
    h.finish()
}

fn hash_attr(a: &AttrValue, h: &mut DefaultHasher) {
    use AttrValue as A;
    a.kind_name().hash(h);
    match a {
        A::Float(f) => f.to_bits().hash(h),
        A::Int(i) => i.hash(h),
        A::Ints(v) => v.hash(h),
        A::Floats(v) => v.iter().for_each(|f| f.to_bits().hash(h)),
        A::String(s) => s.hash(h),
        A::Tensor(t) => hash_tensor(t, h),
        _ => {}
    }
}

fn hash_tensor(t: &Tensor, h: &mut DefaultHasher) {
    t.dtype().hash(h);
    t.dims().hash(h);
    match t.data() {
        TensorData::Packed(b) => b.hash(h),
        TensorData::Strings(s) => s.hash(h),
    }
}

#[cfg(test)]
mod tests {
    use kiln_compiler::DataType;
    use kiln_compiler::ir::NodeSpec;

    use super::*;
    use crate::testing::*;

    fn pass() -> EliminateCommonSubexpressions {
        EliminateCommonSubexpressions::new()
    }

    /// `y = Relu(x) + Relu(x)`, `z = Exp(Relu(x))` twice over, with `op` in place of Relu.
    fn twin(spec: impl Fn() -> NodeSpec) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let a = op(&mut g, spec().inputs([x]).outputs(["a"]));
        let b = op(&mut g, spec().inputs([x]).outputs(["b"]));
        let ea = op(&mut g, NodeSpec::new("Exp").inputs([a]).outputs(["ea"]));
        let eb = op(&mut g, NodeSpec::new("Exp").inputs([b]).outputs(["eb"]));
        let y = op(&mut g, NodeSpec::new("Add").inputs([ea, eb]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[3]));
        model(g, 17)
    }

    #[test]
    fn identical_nodes_merge_and_cascade() {
        require_ort().unwrap();
        let leaky = || NodeSpec::new("LeakyRelu").attr(Attribute::float("alpha", 0.2));
        let before = twin(leaky);
        let mut after = before.clone();
        let (changed, report) = apply(&pass(), &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 2, "{report:?}");
        assert_eq!(after.graph.as_ref().unwrap().node_count(), 3);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn different_attributes_and_random_ops_do_not_merge() {
        let mut m = twin(|| NodeSpec::new("LeakyRelu").attr(Attribute::float("alpha", 0.2)));
        let g = m.graph.as_mut().unwrap();
        let second = g.node_ids()[1];
        g.node_mut(second).attributes[0] = Attribute::float("alpha", 0.3);
        assert_eq!(apply(&pass(), &mut m).unwrap().0, Changed::No);
        let mut m = twin(|| NodeSpec::new("RandomUniformLike"));
        assert_eq!(apply(&pass(), &mut m).unwrap().0, Changed::No);
        let mut m = twin(|| NodeSpec::new("Frob").domain("com.example"));
        assert_eq!(apply(&pass(), &mut m).unwrap().0, Changed::No);
    }

    #[test]
    fn duplicate_graph_outputs_keep_their_names() {
        require_ort().unwrap();
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let a = op(&mut g, NodeSpec::new("Neg").inputs([x]).outputs(["a"]));
        let b = op(&mut g, NodeSpec::new("Neg").inputs([x]).outputs(["b"]));
        let c = op(&mut g, NodeSpec::new("Exp").inputs([a]).outputs(["c"]));
        output(&mut g, b, tensor_ty(DataType::F32, &[3]));
        output(&mut g, c, tensor_ty(DataType::F32, &[3]));
        let before = model(g, 17);
        let mut after = before.clone();
        assert_eq!(apply(&pass(), &mut after).unwrap().0, Changed::Yes);
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.node_count(), 2);
        assert_eq!(g.value(g.outputs()[0]).name, "b");
        check_same_outputs(&before, &after, 2, Tolerance::EXACT).unwrap();

        // Both duplicates are graph outputs: neither can take the other's name.
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[3])));
        let a = op(&mut g, NodeSpec::new("Neg").inputs([x]).outputs(["a"]));
        let b = op(&mut g, NodeSpec::new("Neg").inputs([x]).outputs(["b"]));
        output(&mut g, a, tensor_ty(DataType::F32, &[3]));
        output(&mut g, b, tensor_ty(DataType::F32, &[3]));
        let mut m = model(g, 17);
        let (changed, report) = apply(&pass(), &mut m).unwrap();
        assert_eq!(changed, Changed::No);
        assert_eq!(entries(&report, "missed", RULE).len(), 1);
    }

    /// `y = x * c1 + x * c2` with the two constants given.
    fn two_constants(c1: Tensor, c2: Tensor) -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[2])));
        let c1 = constant(&mut g, "c1", c1);
        let c2 = constant(&mut g, "c2", c2);
        let a = op(&mut g, NodeSpec::new("Mul").inputs([x, c1]).outputs(["a"]));
        let b = op(&mut g, NodeSpec::new("Mul").inputs([x, c2]).outputs(["b"]));
        let y = op(&mut g, NodeSpec::new("Add").inputs([a, b]).outputs(["y"]));
        output(&mut g, y, tensor_ty(DataType::F32, &[2]));
        model(g, 17)
    }

    #[test]
    fn equal_initializers_merge_then_their_readers() {
        require_ort().unwrap();
        let t = || Tensor::from_slice(vec![2], &[1.5f32, -2.0]).unwrap();
        let before = two_constants(t(), t());
        let mut after = before.clone();
        let (changed, report) = apply(&pass(), &mut after).unwrap();
        assert_eq!(changed, Changed::Yes);
        assert_eq!(entries(&report, "applied", RULE).len(), 2, "{report:?}");
        let g = after.graph.as_ref().unwrap();
        assert_eq!(g.initializers().len(), 1);
        assert_eq!(g.node_count(), 2);
        check_same_outputs(&before, &after, 1, Tolerance::EXACT).unwrap();
    }

    #[test]
    fn different_or_large_initializers_stay() {
        let mut m = two_constants(
            Tensor::from_slice(vec![2], &[1.5f32, -2.0]).unwrap(),
            Tensor::from_slice(vec![2], &[1.5f32, 2.0]).unwrap(),
        );
        assert_eq!(apply(&pass(), &mut m).unwrap().0, Changed::No);
        // Same bytes, other shape.
        let mut m = two_constants(
            Tensor::from_slice(vec![2], &[1.5f32, -2.0]).unwrap(),
            Tensor::from_slice(vec![1, 2], &[1.5f32, -2.0]).unwrap(),
        );
        assert_eq!(apply(&pass(), &mut m).unwrap().0, Changed::No);
        let t = || Tensor::from_slice(vec![2], &[1.5f32, -2.0]).unwrap();
        let mut m = two_constants(t(), t());
        assert_eq!(apply(&pass().max_initializer_bytes(4), &mut m).unwrap().0, Changed::No);
    }
}
