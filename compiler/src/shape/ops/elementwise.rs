//! Shape-preserving unary ops, broadcasting binary and variadic ops, `Where`, `Cast`, and
//! the constant arithmetic that shape computations use.

use super::{Registry, bare_all, code, same, same_as_first, tt, with_elem};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim, DimValue};
use crate::shape::known::{Known, KnownData, MAX_KNOWN_ELEMS};
use crate::shape::{InferCtx, InferResult, broadcast_shapes};

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(
        &[
            "Abs",
            "Acos",
            "Acosh",
            "Asin",
            "Asinh",
            "Atan",
            "Atanh",
            "Ceil",
            "Cos",
            "Cosh",
            "Elu",
            "Erf",
            "Exp",
            "Floor",
            "HardSigmoid",
            "HardSwish",
            "LeakyRelu",
            "Log",
            "Mish",
            "Neg",
            "Reciprocal",
            "Relu",
            "Round",
            "Selu",
            "Celu",
            "Sigmoid",
            "Sign",
            "Sin",
            "Sinh",
            "Softplus",
            "Softsign",
            "Sqrt",
            "Tan",
            "Tanh",
            "ThresholdedRelu",
            "Shrink",
            "Gelu",
            "Swish",
            "BitwiseNot",
            "Not",
            "Softmax",
            "LogSoftmax",
            "Hardmax",
            "LRN",
            "MeanVarianceNormalization",
            "LpNormalization",
            "CumSum",
            "Clip",
            "Trilu",
            "ReverseSequence",
            "Identity",
            "InstanceNormalization",
            "RotaryEmbedding",
        ],
        unary,
    );
    r.onnx(&["IsNaN", "IsInf"], to_bool);
    r.onnx(
        &[
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Pow",
            "Mod",
            "BitShift",
            "BitwiseAnd",
            "BitwiseOr",
            "BitwiseXor",
            "And",
            "Or",
            "Xor",
            "Equal",
            "Less",
            "Greater",
            "LessOrEqual",
            "GreaterOrEqual",
            "PRelu",
            "Sum",
            "Mean",
            "Max",
            "Min",
            "Where",
            "StringConcat",
        ],
        broadcasting,
    );
    r.onnx(&["Cast"], cast);
    r.onnx(&["CastLike"], cast_like);
    r.onnx(&["Dropout"], dropout);
}

fn unary(cx: &mut InferCtx<'_>) -> InferResult {
    let op = cx.node.op_type.as_str();
    if let Some(k) = cx.known(0) {
        let out = match (op, &k.data) {
            ("Identity", _) => Some(k.clone()),
            (_, KnownData::Floats(v)) => {
                let f = |x: f64| match op {
                    "Neg" => Some(-x),
                    "Abs" => Some(x.abs()),
                    "Ceil" => Some(x.ceil()),
                    "Floor" => Some(x.floor()),
                    "Round" => Some(x.round_ties_even()),
                    "Sqrt" => Some(x.sqrt()),
                    "Reciprocal" => Some(1.0 / x),
                    "Relu" => Some(x.max(0.0)),
                    _ => None,
                };
                v.iter().map(|&x| f(x)).collect::<Option<Vec<_>>>().and_then(|o| Known::floats(k.dims.clone(), o))
            }
            ("Neg", _) => map_ints(k, |x| x.checked_neg()),
            ("Abs", _) => map_ints(k, |x| x.checked_abs()),
            ("Relu", _) => map_ints(k, |x| Some(x.max(0))),
            ("Not", _) => map_ints(k, |x| Some(i64::from(x == 0))),
            _ => None,
        };
        if let Some(o) = out {
            cx.set_known(0, o);
        }
    }
    same_as_first(cx)
}

fn map_ints(k: &Known, f: impl Fn(i64) -> Option<i64>) -> Option<Known> {
    let v: Option<Vec<i64>> = k.to_ints()?.into_iter().map(f).collect();
    Some(Known::ints(k.dims.clone(), &v?))
}

fn to_bool(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![with_elem(cx, 0, code(DataType::Bool))])
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual")
}

fn broadcasting(cx: &mut InferCtx<'_>) -> InferResult {
    let op = cx.node.op_type.clone();
    let n = cx.node.inputs().len();
    // Which inputs give the element type and take part in broadcasting.
    let (elem, operands): (Option<i32>, Vec<usize>) = match op.as_str() {
        _ if is_comparison(&op) => (code(DataType::Bool), vec![0, 1]),
        "Where" => (cx.elem(1).or_else(|| cx.elem(2)), vec![0, 1, 2]),
        "Pow" | "PRelu" => (cx.elem(0), vec![0, 1]),
        "Sum" | "Mean" | "Max" | "Min" => ((0..n).find_map(|i| cx.elem(i)), (0..n).collect()),
        _ => (cx.elem(0).or_else(|| cx.elem(1)), vec![0, 1]),
    };
    let shapes: Option<Vec<&[Dim]>> = operands.iter().map(|&i| cx.shape(i)).collect();
    let shape = match shapes {
        Some(s) => Some(broadcast_shapes(&s)?),
        None => None,
    };
    if let Some(k) = known_result(cx, &op, &operands) {
        cx.set_known(0, k);
    }
    Ok(vec![tt(elem, shape.map(|s| bare_all(&s)))])
}

/// Evaluates the op on known operands.
fn known_result(cx: &InferCtx<'_>, op: &str, operands: &[usize]) -> Option<Known> {
    let ks: Vec<&Known> = operands.iter().map(|&i| cx.known(i)).collect::<Option<_>>()?;
    let all_ints = ks.iter().all(|k| matches!(k.data, KnownData::Ints(_)));
    if all_ints {
        let fmod = cx.node.attr_int("fmod").unwrap_or(0) != 0;
        let f = |d: &[&Dim]| -> Dim {
            let num = |i: usize| d[i].as_known();
            let both = || Some((num(0)?, num(1)?));
            let known = |v: Option<i64>| v.map_or_else(Dim::unknown, Dim::known);
            match op {
                "Add" => super::dim_add(d[0], d[1]),
                "Sub" => super::dim_sub(d[0], d[1]),
                "Mul" => super::dim_mul(d[0], d[1]),
                "Div" => super::dim_div(d[0], d[1]),
                "Mod" => known(both().and_then(|(a, b)| {
                    if b == 0 {
                        None
                    } else if fmod {
                        a.checked_rem(b)
                    } else {
                        a.checked_rem(b).map(|r| if r != 0 && ((r < 0) != (b < 0)) { r + b } else { r })
                    }
                })),
                "Equal" => match (&d[0].value, &d[1].value) {
                    (DimValue::Symbol(a), DimValue::Symbol(b)) if a == b => Dim::known(1),
                    // A dim is never negative (`Where(Equal(shape, -1), …)` patterns).
                    (DimValue::Symbol(_), DimValue::Known(k)) | (DimValue::Known(k), DimValue::Symbol(_)) if *k < 0 => {
                        Dim::known(0)
                    }
                    _ => known(both().map(|(a, b)| i64::from(a == b))),
                },
                "Less" => known(both().map(|(a, b)| i64::from(a < b))),
                "Greater" => known(both().map(|(a, b)| i64::from(a > b))),
                "LessOrEqual" => known(both().map(|(a, b)| i64::from(a <= b))),
                "GreaterOrEqual" => known(both().map(|(a, b)| i64::from(a >= b))),
                "And" => known(both().map(|(a, b)| i64::from(a != 0 && b != 0))),
                "Or" => known(both().map(|(a, b)| i64::from(a != 0 || b != 0))),
                "Xor" => known(both().map(|(a, b)| i64::from((a != 0) != (b != 0)))),
                "Where" => match num(0) {
                    Some(c) => super::bare(if c != 0 { d[1] } else { d[2] }),
                    None if d[1] == d[2] => super::bare(d[1]),
                    None => Dim::unknown(),
                },
                "Max" | "Min" => {
                    let v: Option<Vec<i64>> = d.iter().map(|x| x.as_known()).collect();
                    match v {
                        Some(v) if op == "Max" => known(v.into_iter().max()),
                        Some(v) => known(v.into_iter().min()),
                        None if d.iter().all(|x| x == &d[0]) => super::bare(d[0]),
                        None => Dim::unknown(),
                    }
                }
                "Sum" => d.iter().fold(Dim::known(0), |acc, x| super::dim_add(&acc, x)),
                _ => Dim::unknown(),
            }
        };
        return broadcast_known(&ks, |d| Some(f(d)), |_| None);
    }
    // Float operands (or mixed): numbers only.
    let fl = |v: &[f64]| -> Option<f64> {
        Some(match op {
            "Add" => v[0] + v[1],
            "Sub" => v[0] - v[1],
            "Mul" => v[0] * v[1],
            "Div" => v[0] / v[1],
            "Equal" => f64::from(u8::from(v[0] == v[1])),
            "Less" => f64::from(u8::from(v[0] < v[1])),
            "Greater" => f64::from(u8::from(v[0] > v[1])),
            "LessOrEqual" => f64::from(u8::from(v[0] <= v[1])),
            "GreaterOrEqual" => f64::from(u8::from(v[0] >= v[1])),
            "Where" => {
                if v[0] != 0.0 {
                    v[1]
                } else {
                    v[2]
                }
            }
            "Max" => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "Min" => v.iter().copied().fold(f64::INFINITY, f64::min),
            "Sum" => v.iter().sum(),
            _ => return None,
        })
    };
    let k = broadcast_known(&ks, |_| None, fl)?;
    if is_comparison(op) {
        let v = k.to_floats()?;
        return Some(Known::ints(k.dims, &v.into_iter().map(|x| x as i64).collect::<Vec<_>>()));
    }
    Some(k)
}

/// Applies `fi` (all operands integer) or `ff` (as floats) elementwise with broadcasting.
pub(super) fn broadcast_known(
    ks: &[&Known],
    fi: impl Fn(&[&Dim]) -> Option<Dim>,
    ff: impl Fn(&[f64]) -> Option<f64>,
) -> Option<Known> {
    let rank = ks.iter().map(|k| k.dims.len()).max()?;
    let mut out_dims = vec![1usize; rank];
    for k in ks {
        let off = rank - k.dims.len();
        for (i, &d) in k.dims.iter().enumerate() {
            let o = &mut out_dims[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    let total = crate::shape::known::numel(&out_dims)?;
    if total > MAX_KNOWN_ELEMS {
        return None;
    }
    // Per-operand strides over the output index space (0 on broadcast axes).
    let strides: Vec<Vec<usize>> = ks
        .iter()
        .map(|k| {
            let off = rank - k.dims.len();
            let mut s = vec![0usize; rank];
            let mut acc = 1usize;
            for i in (0..k.dims.len()).rev() {
                s[off + i] = if k.dims[i] == 1 { 0 } else { acc };
                acc = acc.saturating_mul(k.dims[i]);
            }
            s
        })
        .collect();
    let index = |flat: usize, s: &[usize]| -> usize {
        let mut rem = flat;
        let mut idx = 0;
        for a in (0..rank).rev() {
            let d = out_dims[a].max(1);
            idx += (rem % d) * s[a];
            rem /= d;
        }
        idx
    };
    let all_ints = ks.iter().all(|k| matches!(k.data, KnownData::Ints(_)));
    if all_ints {
        let vs: Vec<&[Dim]> = ks.iter().map(|k| k.as_dims()).collect::<Option<_>>()?;
        let mut out = Vec::with_capacity(total);
        for flat in 0..total {
            let args: Vec<&Dim> = vs.iter().zip(&strides).map(|(v, s)| v.get(index(flat, s))).collect::<Option<_>>()?;
            out.push(fi(&args)?);
        }
        Known::dim_tensor(out_dims, out)
    } else {
        let vs: Vec<Vec<f64>> = ks.iter().map(|k| k.to_floats()).collect::<Option<_>>()?;
        let mut out = Vec::with_capacity(total);
        for flat in 0..total {
            let args: Vec<f64> =
                vs.iter().zip(&strides).map(|(v, s)| v.get(index(flat, s)).copied()).collect::<Option<_>>()?;
            out.push(ff(&args)?);
        }
        Known::floats(out_dims, out)
    }
}

/// Wraps an integer to the range of `d`, as a cast does.
fn wrap(v: i64, d: DataType) -> i64 {
    match d {
        DataType::I8 => i64::from(v as i8),
        DataType::U8 => i64::from(v as u8),
        DataType::I16 => i64::from(v as i16),
        DataType::U16 => i64::from(v as u16),
        DataType::I32 => i64::from(v as i32),
        DataType::U32 => i64::from(v as u32),
        DataType::Bool => i64::from(v != 0),
        _ => v,
    }
}

/// The known value after a cast to `to`.
fn cast_known(k: &Known, to: DataType) -> Option<Known> {
    if to.is_integer() || to == DataType::Bool {
        let data = match &k.data {
            KnownData::Ints(v) => v
                .iter()
                .map(|d| match d.value {
                    DimValue::Known(x) => Dim::known(wrap(x, to)),
                    // Dims are non-negative and fit every integer type used for shapes.
                    _ if to == DataType::Bool => Dim::unknown(),
                    _ => super::bare(d),
                })
                .collect(),
            KnownData::Floats(v) => v
                .iter()
                .map(|&x| {
                    if to == DataType::Bool {
                        Some(Dim::known(i64::from(x != 0.0)))
                    } else if x.is_finite() && x.abs() < 9.0e18 {
                        Some(Dim::known(wrap(x.trunc() as i64, to)))
                    } else {
                        None
                    }
                })
                .collect::<Option<Vec<_>>>()?,
        };
        return Some(Known { dims: k.dims.clone(), data: KnownData::Ints(data) });
    }
    if to.is_float() {
        return Known::floats(k.dims.clone(), k.to_floats()?);
    }
    None
}

fn cast(cx: &mut InferCtx<'_>) -> InferResult {
    let to = cx.node.attr_int("to").and_then(|v| i32::try_from(v).ok());
    if let (Some(k), Some(d)) = (cx.known(0), to.and_then(DataType::from_onnx))
        && let Some(c) = cast_known(k, d)
    {
        cx.set_known(0, c);
    }
    Ok(vec![with_elem(cx, 0, to)])
}

fn cast_like(cx: &mut InferCtx<'_>) -> InferResult {
    let to = cx.elem(1);
    if let (Some(k), Some(d)) = (cx.known(0), to.and_then(DataType::from_onnx))
        && let Some(c) = cast_known(k, d)
    {
        cx.set_known(0, c);
    }
    Ok(vec![with_elem(cx, 0, to)])
}

fn dropout(cx: &mut InferCtx<'_>) -> InferResult {
    let mask = if cx.opset >= 10 { code(DataType::Bool) } else { cx.elem(0) };
    Ok(vec![same(cx, 0), with_elem(cx, 0, mask)])
}
