//! Merging a declared type with an inferred one, and joining alternatives (If branches).

use crate::ir::{Dim, DimValue, TensorType, Type, TypeKind};

/// The result of merging a declared type with an inferred one.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeMerge {
    /// The declared type refined by the inferred one (the declared type on a conflict).
    pub ty: Option<Type>,
    /// Set when they disagree.
    pub conflict: Option<String>,
}

/// Refines `declared` with `inferred`: every piece the declared type lacks is taken from the
/// inferred one; a known number beats a symbol. On a disagreement the declared type is kept.
pub fn merge_types(declared: Option<&Type>, inferred: Option<&Type>) -> TypeMerge {
    match (declared, inferred) {
        (None, i) => TypeMerge { ty: i.cloned(), conflict: None },
        (Some(d), None) => TypeMerge { ty: Some(d.clone()), conflict: None },
        (Some(d), Some(i)) => match merge_type(d, i) {
            Ok(t) => TypeMerge { ty: Some(t), conflict: None },
            Err(why) => TypeMerge { ty: Some(d.clone()), conflict: Some(why) },
        },
    }
}

fn merge_type(d: &Type, i: &Type) -> Result<Type, String> {
    let kind = match (&d.kind, &i.kind) {
        (TypeKind::Unset, k) => k.clone(),
        (k, TypeKind::Unset) => k.clone(),
        (TypeKind::Tensor(a), TypeKind::Tensor(b)) => TypeKind::Tensor(merge_tensor(a, b)?),
        (TypeKind::SparseTensor(a), TypeKind::SparseTensor(b)) => TypeKind::SparseTensor(merge_tensor(a, b)?),
        (TypeKind::Sequence(a), TypeKind::Sequence(b)) => TypeKind::Sequence(merge_boxed(a, b)?),
        (TypeKind::Optional(a), TypeKind::Optional(b)) => TypeKind::Optional(merge_boxed(a, b)?),
        (TypeKind::Map { .. }, TypeKind::Map { .. }) | (TypeKind::Opaque { .. }, TypeKind::Opaque { .. }) => {
            d.kind.clone()
        }
        _ => return Err("different kinds of type".into()),
    };
    Ok(Type { kind, denotation: d.denotation.clone().or_else(|| i.denotation.clone()) })
}

fn merge_boxed(a: &Option<Box<Type>>, b: &Option<Box<Type>>) -> Result<Option<Box<Type>>, String> {
    Ok(match (a, b) {
        (None, x) => x.clone(),
        (x, None) => x.clone(),
        (Some(a), Some(b)) => Some(Box::new(merge_type(a, b)?)),
    })
}

fn merge_tensor(d: &TensorType, i: &TensorType) -> Result<TensorType, String> {
    let elem_type = match (d.elem_type, i.elem_type) {
        (Some(a), Some(b)) if a != b && a != 0 && b != 0 => {
            return Err(format!("element type {a} vs {b}"));
        }
        (Some(a), Some(b)) => Some(if a == 0 { b } else { a }),
        (a, b) => a.or(b),
    };
    let shape = match (&d.shape, &i.shape) {
        (None, s) => s.clone(),
        (s, None) => s.clone(),
        (Some(a), Some(b)) => {
            if a.len() != b.len() {
                return Err(format!("rank {} vs {}", a.len(), b.len()));
            }
            let mut out = Vec::with_capacity(a.len());
            for (k, (x, y)) in a.iter().zip(b).enumerate() {
                let v = match (&x.value, &y.value) {
                    (DimValue::Known(p), DimValue::Known(q)) if p != q => {
                        return Err(format!("dim {k}: {p} vs {q}"));
                    }
                    (DimValue::Known(_), _) => x.value.clone(),
                    (_, DimValue::Known(_)) => y.value.clone(),
                    (DimValue::Symbol(_), _) => x.value.clone(),
                    (DimValue::Unknown, _) => y.value.clone(),
                };
                out.push(Dim { value: v, denotation: x.denotation.clone().or_else(|| y.denotation.clone()) });
            }
            Some(out)
        }
    };
    Ok(TensorType { elem_type, shape })
}

/// The most precise type that covers both `a` and `b` (If branches, loop-carried values).
pub(crate) fn join_types(a: Option<&Type>, b: Option<&Type>) -> Option<Type> {
    let (a, b) = (a?, b?);
    let kind = match (&a.kind, &b.kind) {
        (TypeKind::Tensor(x), TypeKind::Tensor(y)) => TypeKind::Tensor(join_tensor(x, y)),
        (TypeKind::Sequence(x), TypeKind::Sequence(y)) => {
            TypeKind::Sequence(join_types(x.as_deref(), y.as_deref()).map(Box::new))
        }
        (TypeKind::Optional(x), TypeKind::Optional(y)) => {
            TypeKind::Optional(join_types(x.as_deref(), y.as_deref()).map(Box::new))
        }
        _ if a == b => a.kind.clone(),
        _ => return None,
    };
    Some(Type { kind, denotation: None })
}

pub(crate) fn join_tensor(x: &TensorType, y: &TensorType) -> TensorType {
    let elem_type = if x.elem_type == y.elem_type { x.elem_type } else { None };
    let shape =
        match (&x.shape, &y.shape) {
            (Some(a), Some(b)) if a.len() == b.len() => Some(
                a.iter()
                    .zip(b)
                    .map(|(p, q)| {
                        if p.value == q.value {
                            Dim { value: p.value.clone(), denotation: None }
                        } else {
                            Dim::unknown()
                        }
                    })
                    .collect(),
            ),
            _ => None,
        };
    TensorType { elem_type, shape }
}
