//! Element types for the inputs of Loop, Scan and SequenceMap bodies. Shape inference binds
//! them while it walks a body but writes types to node outputs only, and exporters often leave
//! them undeclared: a body input of unknown type cannot be cast, so a converted node reading
//! it next to a cast FP32 value would get two types for one type parameter. The types come from
//! the node's own inputs (the interface the conversion keeps) with shapes dropped, since a
//! loop-carried shape may change between iterations.

use std::collections::HashMap;

use kiln_compiler::DataType;
use kiln_compiler::ir::{Graph, Node, TensorType, Type, TypeKind, ValueDef, ValueId};

/// `t` without shapes (element types only), recursively.
fn loose(t: &Type) -> Type {
    let kind = match &t.kind {
        TypeKind::Tensor(tt) => TypeKind::Tensor(TensorType { elem_type: tt.elem_type, shape: None }),
        TypeKind::Sequence(e) => TypeKind::Sequence(e.as_deref().map(|e| Box::new(loose(e)))),
        TypeKind::Optional(e) => TypeKind::Optional(e.as_deref().map(|e| Box::new(loose(e)))),
        other => other.clone(),
    };
    Type { kind, denotation: t.denotation.clone() }
}

fn scalar(d: DataType) -> Type {
    Type::tensor(TensorType::with_dims(d, &[]))
}

/// Whether a declared type says nothing useful (absent, or a tensor with no element type).
fn unknown(t: Option<&Type>) -> bool {
    match t.map(|t| &t.kind) {
        None | Some(TypeKind::Unset) => true,
        Some(TypeKind::Tensor(tt)) => tt.elem_type.is_none(),
        _ => false,
    }
}

/// The type of `v` in `g`, or of the enclosing value it captures.
fn type_in(g: &Graph, v: ValueId, outer: &HashMap<String, Type>) -> Option<Type> {
    let val = g.value(v);
    match val.def() {
        ValueDef::Initializer(t) => Some(Type::tensor(TensorType::with_dims(t.dtype(), t.dims()))),
        ValueDef::Outer if unknown(val.ty.as_ref()) => outer.get(&val.name).cloned(),
        _ => val.ty.clone(),
    }
}

/// The types a node's body inputs get from the node's inputs, by body input position
/// (`None`: leave as declared). Empty for ops whose bodies are not bound to the node's inputs.
fn bound_types(g: &Graph, n: &Node, outer: &HashMap<String, Type>, opset: i64) -> Vec<Option<Type>> {
    let input = |i: usize| n.input(i).and_then(|v| type_in(g, v, outer)).map(|t| loose(&t));
    if n.is_onnx("Loop") {
        let mut out = vec![Some(scalar(DataType::I64)), Some(scalar(DataType::Bool))];
        out.extend((2..n.inputs().len()).map(input));
        out
    } else if n.is_onnx("Scan") {
        // Scan-8 has a sequence_lens input first; the body sees states, then scan slices.
        let skip = usize::from(opset < 9);
        (skip..n.inputs().len()).map(input).collect()
    } else if n.is_onnx("SequenceMap") {
        (0..n.inputs().len())
            .map(|i| {
                input(i).map(|t| match t.kind {
                    TypeKind::Sequence(Some(e)) => *e,
                    _ => t,
                })
            })
            .collect()
    } else {
        Vec::new()
    }
}

/// Declares the missing input types of every Loop/Scan/SequenceMap body in `g` and below.
/// `outer`: the types of values of enclosing graphs, by name.
pub(super) fn declare_body_inputs(g: &mut Graph, outer: &HashMap<String, Type>, opset: i64) {
    let mut scope = outer.clone();
    for (v, val) in g.values() {
        if val.name.is_empty() || matches!(val.def(), ValueDef::Detached) {
            continue;
        }
        if let Some(t) = type_in(g, v, outer) {
            scope.insert(val.name.clone(), t);
        }
    }
    for id in g.node_ids() {
        let n = g.node(id);
        if n.subgraphs().next().is_none() {
            continue;
        }
        let bound = bound_types(g, n, &scope, opset);
        for body in g.node_mut(id).subgraphs_mut() {
            for (k, t) in bound.iter().enumerate() {
                let (Some(&v), Some(t)) = (body.inputs().get(k), t) else { continue };
                if unknown(body.value(v).ty.as_ref()) {
                    body.value_mut(v).ty = Some(t.clone());
                }
            }
            declare_body_inputs(body, &scope, opset);
        }
    }
}
