//! MatMul (and its integer/quantized forms), Gemm and Einsum.

use super::{Registry, bare, bare_all, code, tt};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim, DimValue};
use crate::shape::{InferCtx, InferResult, broadcast_shapes};

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(&["MatMul"], matmul);
    r.onnx(&["MatMulInteger"], matmul_integer);
    r.onnx(&["QLinearMatMul"], qlinear_matmul);
    r.onnx(&["Gemm"], gemm);
    r.onnx(&["Einsum"], einsum);
}

/// Numpy `matmul` shapes: rank-1 operands are promoted and the added axis dropped again.
pub(super) fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operand is a scalar".into());
    }
    let a2: Vec<Dim> = if a.len() == 1 { vec![Dim::known(1), a[0].clone()] } else { a.to_vec() };
    let b2: Vec<Dim> = if b.len() == 1 { vec![b[0].clone(), Dim::known(1)] } else { b.to_vec() };
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Some(x), Some(y)) = (ka.as_known(), kb.as_known())
        && x != y
    {
        return Err(format!("MatMul inner dims differ: {x} vs {y}"));
    }
    let mut out = broadcast_shapes(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]])?;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Ok(bare_all(&out))
}

fn matmul_with(cx: &InferCtx<'_>, a: usize, b: usize) -> Result<Option<Vec<Dim>>, String> {
    match (cx.shape(a), cx.shape(b)) {
        (Some(x), Some(y)) => matmul_shape(x, y).map(Some),
        _ => Ok(None),
    }
}

fn matmul(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(cx.elem(0).or_else(|| cx.elem(1)), matmul_with(cx, 0, 1)?)])
}

fn matmul_integer(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(code(DataType::I32), matmul_with(cx, 0, 1)?)])
}

fn qlinear_matmul(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(cx.elem(7).or_else(|| cx.elem(0)), matmul_with(cx, 0, 3)?)])
}

/// `[M, N]` of a Gemm over inputs `a` and `b`.
pub(super) fn gemm_shape(cx: &InferCtx<'_>, a: usize, b: usize) -> Result<Option<Vec<Dim>>, String> {
    let ta = cx.node.attr_int("transA").unwrap_or(0) != 0;
    let tb = cx.node.attr_int("transB").unwrap_or(0) != 0;
    let m = match cx.shape(a) {
        Some(s) if s.len() == 2 => bare(&s[usize::from(ta)]),
        Some(s) => return Err(format!("Gemm A has rank {}", s.len())),
        None => Dim::unknown(),
    };
    let n = match cx.shape(b) {
        Some(s) if s.len() == 2 => bare(&s[usize::from(!tb)]),
        Some(s) => return Err(format!("Gemm B has rank {}", s.len())),
        None => Dim::unknown(),
    };
    Ok(Some(vec![m, n]))
}

fn gemm(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(cx.elem(0), gemm_shape(cx, 0, 1)?)])
}

/// One operand of an equation: its labels, with `None` marking the ellipsis.
fn parse_term(t: &str) -> Result<Vec<Option<char>>, String> {
    let mut out = Vec::new();
    let mut rest = t.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if out.contains(&None) {
                return Err("Einsum term has two ellipses".into());
            }
            out.push(None);
            rest = r;
        } else {
            let mut chars = rest.chars();
            let c = chars.next().unwrap_or(' ');
            if !c.is_ascii_alphabetic() && c != ' ' {
                return Err(format!("Einsum label '{c}' is not a letter"));
            }
            if c != ' ' {
                out.push(Some(c));
            }
            rest = chars.as_str();
        }
    }
    Ok(out)
}

fn einsum(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let eq = cx.node.attr_str("equation").ok_or("Einsum has no equation")?.replace(' ', "");
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<Vec<Option<char>>> = lhs.split(',').map(parse_term).collect::<Result<_, _>>()?;
    if terms.len() != cx.node.inputs().len() {
        return Err(format!("Einsum equation has {} operands for {} inputs", terms.len(), cx.node.inputs().len()));
    }
    let mut labels: Vec<(char, Dim)> = Vec::new();
    let mut counts: Vec<(char, usize)> = Vec::new();
    let mut ellipsis: Vec<Vec<Dim>> = Vec::new();
    let mut all_shapes = true;
    for (i, term) in terms.iter().enumerate() {
        let Some(s) = cx.shape(i) else {
            all_shapes = false;
            for c in term.iter().flatten() {
                match counts.iter_mut().find(|(x, _)| x == c) {
                    Some(e) => e.1 += 1,
                    None => counts.push((*c, 1)),
                }
            }
            continue;
        };
        let named = term.iter().filter(|l| l.is_some()).count();
        let has_ell = term.contains(&None);
        if (has_ell && s.len() < named) || (!has_ell && s.len() != named) {
            return Err(format!("Einsum operand {i} has rank {} for term of {named} labels", s.len()));
        }
        let ell_len = s.len() - named;
        let mut pos = 0;
        for l in term {
            match l {
                None => {
                    ellipsis.push(s[pos..pos + ell_len].to_vec());
                    pos += ell_len;
                }
                Some(c) => {
                    let d = &s[pos];
                    pos += 1;
                    match labels.iter_mut().find(|(x, _)| x == c) {
                        Some(e) => {
                            if e.1.as_known().is_none_or(|v| v == 1) && d.as_known().is_some() {
                                e.1 = bare(d);
                            } else if !matches!(e.1.value, DimValue::Known(_)) && e.1.value != d.value {
                                e.1 = Dim::unknown();
                            }
                        }
                        None => labels.push((*c, bare(d))),
                    }
                    match counts.iter_mut().find(|(x, _)| x == c) {
                        Some(e) => e.1 += 1,
                        None => counts.push((*c, 1)),
                    }
                }
            }
        }
    }
    let out_term = match rhs {
        Some(r) => parse_term(&r)?,
        None => {
            let mut once: Vec<char> = counts.iter().filter(|(_, n)| *n == 1).map(|(c, _)| *c).collect();
            once.sort_unstable();
            let mut t: Vec<Option<char>> = Vec::new();
            if terms.iter().any(|t| t.contains(&None)) {
                t.push(None);
            }
            t.extend(once.into_iter().map(Some));
            t
        }
    };
    if !all_shapes {
        let rank_known = !out_term.contains(&None);
        return Ok(vec![tt(elem, rank_known.then(|| super::unknown_dims(out_term.len())))]);
    }
    let ell: Vec<&[Dim]> = ellipsis.iter().map(Vec::as_slice).collect();
    let ell_shape = broadcast_shapes(&ell)?;
    let mut out = Vec::new();
    for l in &out_term {
        match l {
            None => out.extend(ell_shape.iter().map(bare)),
            Some(c) => out.push(
                labels
                    .iter()
                    .find(|(x, _)| x == c)
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| format!("Einsum output label '{c}' is not an input label"))?,
            ),
        }
    }
    Ok(vec![tt(elem, Some(out))])
}
