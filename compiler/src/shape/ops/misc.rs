//! Recurrent ops, losses, signal processing, random generators, strings, sequences,
//! optionals and the training ops.

use super::{Registry, bare, bare_all, code, dims, dtype_attr, norm_axis, same, tt, unknown_dims, with_elem};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, AttrValue, Dim, TensorType, Type, TypeKind};
use crate::shape::merge::join_types;
use crate::shape::{InferCtx, InferResult};

const TRAINING: &str = "ai.onnx.preview.training";

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(&["RNN", "GRU", "LSTM"], recurrent);
    // ONNX Runtime's LSTM with int8 weights: LSTM's outputs (`hidden_size` is required).
    r.add(super::MS, &["DynamicQuantizeLSTM"], recurrent);
    r.onnx(&["SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"], loss);
    r.onnx(&["DFT"], dft);
    r.onnx(&["STFT"], stft);
    r.onnx(&["HannWindow", "HammingWindow", "BlackmanWindow"], window);
    r.onnx(&["MelWeightMatrix"], mel_weight_matrix);
    r.onnx(&["Bernoulli", "RandomNormalLike", "RandomUniformLike"], random_like);
    r.onnx(&["RandomNormal", "RandomUniform"], random);
    r.onnx(&["Multinomial"], multinomial);
    r.onnx(&["StringNormalizer"], string_normalizer);
    r.onnx(&["RegexFullMatch"], |cx| Ok(vec![with_elem(cx, 0, code(DataType::Bool))]));
    r.onnx(&["StringSplit"], string_split);
    r.onnx(&["NonMaxSuppression"], |_| Ok(vec![tt(code(DataType::I64), Some(vec![Dim::unknown(), Dim::known(3)]))]));
    r.onnx(&["TfIdfVectorizer"], tfidf);
    r.onnx(&["Det"], det);
    r.onnx(&["ImageDecoder"], image_decoder);
    r.onnx(&["Optional"], optional);
    r.onnx(&["OptionalHasElement"], |_| Ok(vec![tt(code(DataType::Bool), Some(vec![]))]));
    r.onnx(&["OptionalGetElement"], optional_get);
    r.onnx(&["SequenceEmpty"], sequence_empty);
    r.onnx(&["SequenceConstruct"], sequence_construct);
    r.onnx(&["SequenceInsert"], sequence_insert);
    r.onnx(&["SequenceAt"], sequence_at);
    r.onnx(&["SequenceErase"], |cx| Ok(vec![same(cx, 0)]));
    r.onnx(&["SequenceLength"], |_| Ok(vec![tt(code(DataType::I64), Some(vec![]))]));
    r.onnx(&["SplitToSequence"], split_to_sequence);
    r.onnx(&["ConcatFromSequence"], concat_from_sequence);
    r.add(TRAINING, &["Adagrad", "Adam", "Momentum"], optimizer);
    r.add(ML, &["Binarizer", "Normalizer", "Scaler"], |cx| Ok(vec![same(cx, 0)]));
    r.add(ML, &["LabelEncoder"], label_encoder);
    r.add(ML, &["ArrayFeatureExtractor"], array_feature_extractor);
    r.add(ML, &["TreeEnsemble"], tree_ensemble);
}

const ML: &str = "ai.onnx.ml";

fn label_encoder(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = match cx.node.attr("values_tensor") {
        Some(AttrValue::Tensor(t)) => Some(t.dtype().onnx_code()),
        _ if cx.node.attr("values_int64s").is_some() => code(DataType::I64),
        _ if cx.node.attr("values_floats").is_some() => code(DataType::F32),
        _ if cx.node.attr("values_strings").is_some() => code(DataType::String),
        _ => None,
    };
    Ok(vec![with_elem(cx, 0, elem)])
}

fn array_feature_extractor(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let k = cx.shape(1).map(super::dim_product).unwrap_or_else(Dim::unknown);
    let shape = match cx.shape(0) {
        Some(s) if s.len() == 1 => Some(vec![Dim::known(1), k]),
        Some(s) if !s.is_empty() => {
            let mut v = bare_all(s);
            if let Some(l) = v.last_mut() {
                *l = k;
            }
            Some(v)
        }
        _ => None,
    };
    Ok(vec![tt(elem, shape)])
}

fn tree_ensemble(cx: &mut InferCtx<'_>) -> InferResult {
    let n = cx.shape(0).and_then(|s| s.first()).map_or_else(Dim::unknown, bare);
    let targets = cx.node.attr_int("n_targets").map_or_else(Dim::unknown, Dim::known);
    Ok(vec![tt(cx.elem(0), Some(vec![n, targets]))])
}

fn recurrent(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let n = cx.num_outputs();
    let hidden = cx
        .node
        .attr_int("hidden_size")
        .map_or_else(|| cx.shape(2).and_then(|s| s.get(2)).map_or_else(Dim::unknown, bare), Dim::known);
    let dirs = Dim::known(if cx.node.attr_str("direction") == Some("bidirectional") { 2 } else { 1 });
    let layout = cx.node.attr_int("layout").unwrap_or(0);
    let Some(x) = cx.shape(0).filter(|s| s.len() == 3) else { return Ok(vec![tt(elem, None); n]) };
    let (seq, batch) = if layout == 0 { (bare(&x[0]), bare(&x[1])) } else { (bare(&x[1]), bare(&x[0])) };
    let (y, yh) = if layout == 0 {
        (vec![seq, dirs.clone(), batch.clone(), hidden.clone()], vec![dirs, batch, hidden])
    } else {
        (vec![batch.clone(), seq, dirs.clone(), hidden.clone()], vec![batch, dirs, hidden])
    };
    let mut out = vec![tt(elem, Some(y))];
    for _ in 1..n {
        out.push(tt(elem, Some(yh.clone())));
    }
    Ok(out)
}

fn loss(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let reduction = cx.node.attr_str("reduction").unwrap_or("mean");
    let loss_shape = if reduction == "none" {
        cx.shape(1).map(bare_all).or_else(|| {
            let s = cx.shape(0)?;
            let mut v = bare_all(s);
            if v.len() > 1 {
                v.remove(1);
            }
            Some(v)
        })
    } else {
        Some(vec![])
    };
    let mut out = vec![tt(elem, loss_shape)];
    if cx.num_outputs() > 1 {
        out.push(same(cx, 0));
    }
    Ok(out)
}

fn dft(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(x) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = x.len();
    if r < 2 {
        return Err("DFT input needs a trailing complex axis".into());
    }
    let axis = if cx.opset >= 20 {
        if cx.has_input(2) {
            match cx.known_ints(2).and_then(|v| v.first().copied()) {
                Some(a) => Some(a),
                None => return Ok(vec![tt(elem, Some(unknown_dims(r)))]),
            }
        } else {
            Some(-2)
        }
    } else {
        Some(cx.node.attr_int("axis").unwrap_or(1))
    };
    // The axis counts over the signal dims (the trailing complex axis excluded).
    let a = norm_axis(axis.unwrap_or(-2), r)
        .and_then(|a| if axis.is_some_and(|v| v >= 0) { norm_axis(axis.unwrap_or(0), r - 1) } else { Ok(a) })?;
    let onesided = cx.node.attr_int("onesided").unwrap_or(0) != 0;
    let len = if cx.has_input(1) {
        match cx.known_ints(1).and_then(|v| v.first().copied()) {
            Some(n) => Dim::known(n),
            None => Dim::unknown(),
        }
    } else {
        bare(&x[a])
    };
    let mut out = bare_all(&x);
    out[a] = if onesided { len.as_known().map_or_else(Dim::unknown, |n| Dim::known(n / 2 + 1)) } else { len };
    out[r - 1] = Dim::known(2);
    Ok(vec![tt(elem, Some(out))])
}

fn stft(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let onesided = cx.node.attr_int("onesided").unwrap_or(1) != 0;
    let Some(x) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, Some(unknown_dims(4)))]) };
    let step = cx.known_ints(1).and_then(|v| v.first().copied());
    let frame_len = cx
        .known_ints(3)
        .and_then(|v| v.first().copied())
        .or_else(|| cx.shape(2).and_then(|s| s.first()).and_then(Dim::as_known));
    let frames = match (x.get(1).and_then(Dim::as_known), frame_len, step) {
        (Some(n), Some(f), Some(s)) if s > 0 && n >= f => {
            n.checked_sub(f).map_or_else(Dim::unknown, |d| Dim::known(d / s + 1))
        }
        _ => Dim::unknown(),
    };
    let bins = frame_len.map_or_else(Dim::unknown, |f| Dim::known(if onesided { f / 2 + 1 } else { f }));
    let batch = x.first().map_or_else(Dim::unknown, bare);
    Ok(vec![tt(elem, Some(vec![batch, frames, bins, Dim::known(2)]))])
}

fn window(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = dtype_attr(cx, "output_datatype", code(DataType::F32));
    let n = cx.known_ints(0).and_then(|v| v.first().copied()).map_or_else(Dim::unknown, Dim::known);
    Ok(vec![tt(elem, Some(vec![n]))])
}

fn mel_weight_matrix(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = dtype_attr(cx, "output_datatype", code(DataType::F32));
    let first = |i: usize| cx.known_ints(i).and_then(|v| v.first().copied());
    let rows = first(1).map_or_else(Dim::unknown, |d| Dim::known(d / 2 + 1));
    let cols = first(0).map_or_else(Dim::unknown, Dim::known);
    Ok(vec![tt(elem, Some(vec![rows, cols]))])
}

fn random_like(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = dtype_attr(cx, "dtype", cx.elem(0));
    Ok(vec![with_elem(cx, 0, elem)])
}

fn random(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = dtype_attr(cx, "dtype", code(DataType::F32));
    Ok(vec![tt(elem, cx.node.attr_ints("shape").map(dims))])
}

fn multinomial(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = dtype_attr(cx, "dtype", code(DataType::I32));
    let n = cx.node.attr_int("sample_size").unwrap_or(1);
    let batch = cx.shape(0).and_then(|s| s.first()).map_or_else(Dim::unknown, bare);
    Ok(vec![tt(elem, Some(vec![batch, Dim::known(n)]))])
}

fn string_normalizer(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    // Stop words may remove entries: the last axis has unknown length.
    let shape = cx.shape(0).map(|s| {
        let mut v = bare_all(s);
        if let Some(l) = v.last_mut() {
            *l = Dim::unknown();
        }
        v
    });
    Ok(vec![tt(elem, shape)])
}

fn string_split(cx: &mut InferCtx<'_>) -> InferResult {
    let s = cx.shape(0).map(bare_all);
    let y = s.clone().map(|mut v| {
        v.push(Dim::unknown());
        v
    });
    Ok(vec![tt(code(DataType::String), y), tt(code(DataType::I64), s)])
}

fn tfidf(cx: &mut InferCtx<'_>) -> InferResult {
    let width = cx
        .node
        .attr_ints("ngram_indexes")
        .and_then(|v| v.iter().max().copied())
        .and_then(|m| m.checked_add(1))
        .map(Dim::known);
    let width = width.unwrap_or_else(Dim::unknown);
    let shape = match cx.shape(0) {
        Some(s) if s.len() == 1 => Some(vec![width]),
        Some(s) if s.len() == 2 => Some(vec![bare(&s[0]), width]),
        _ => None,
    };
    Ok(vec![tt(code(DataType::F32), shape)])
}

fn det(cx: &mut InferCtx<'_>) -> InferResult {
    let shape = match cx.shape(0) {
        Some(s) if s.len() >= 2 => Some(bare_all(&s[..s.len() - 2])),
        Some(_) => return Err("Det needs a matrix".into()),
        None => None,
    };
    Ok(vec![tt(cx.elem(0), shape)])
}

fn image_decoder(cx: &mut InferCtx<'_>) -> InferResult {
    let c = match cx.node.attr_str("pixel_format").unwrap_or("RGB") {
        "Grayscale" => 1,
        _ => 3,
    };
    Ok(vec![tt(code(DataType::U8), Some(vec![Dim::unknown(), Dim::unknown(), Dim::known(c)]))])
}

fn optional(cx: &mut InferCtx<'_>) -> InferResult {
    let inner = match cx.node.attr("type") {
        Some(AttrValue::Type(t)) => Some(t.clone()),
        _ => same(cx, 0),
    };
    Ok(vec![Some(Type { kind: TypeKind::Optional(inner.map(Box::new)), denotation: None })])
}

fn optional_get(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![match cx.inputs.first().cloned().flatten().map(|t| t.kind) {
        Some(TypeKind::Optional(inner)) => inner.map(|b| *b),
        Some(other) => Some(Type { kind: other, denotation: None }),
        None => None,
    }])
}

fn seq(t: Option<Type>) -> Option<Type> {
    Some(Type { kind: TypeKind::Sequence(t.map(Box::new)), denotation: None })
}

fn seq_elem(cx: &InferCtx<'_>, i: usize) -> Option<Type> {
    match cx.inputs.get(i).cloned().flatten().map(|t| t.kind) {
        Some(TypeKind::Sequence(inner)) => inner.map(|b| *b),
        _ => None,
    }
}

fn sequence_empty(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = dtype_attr(cx, "dtype", code(DataType::F32));
    Ok(vec![seq(tt(elem, None))])
}

fn sequence_construct(cx: &mut InferCtx<'_>) -> InferResult {
    let n = cx.node.inputs().len();
    let mut acc = same(cx, 0);
    for i in 1..n {
        acc = join_types(acc.as_ref(), same(cx, i).as_ref());
    }
    Ok(vec![seq(acc)])
}

fn sequence_insert(cx: &mut InferCtx<'_>) -> InferResult {
    let e = seq_elem(cx, 0);
    let t = same(cx, 1);
    // An empty sequence's element type has no shape: the inserted tensor's elem type wins.
    let joined = match (&e, &t) {
        (Some(a), Some(b)) => {
            let (ea, eb) = (a.as_tensor().and_then(|x| x.elem_type), b.as_tensor().and_then(|x| x.elem_type));
            if a.as_tensor().is_some_and(|x| x.shape.is_none()) {
                tt(ea.or(eb), None)
            } else {
                join_types(Some(a), Some(b))
            }
        }
        _ => None,
    };
    Ok(vec![seq(joined)])
}

fn sequence_at(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![seq_elem(cx, 0)])
}

fn split_to_sequence(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let keep = cx.node.attr_int("keepdims").unwrap_or(1) != 0;
    let Some(s) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![seq(tt(elem, None))]) };
    let a = norm_axis(cx.node.attr_int("axis").unwrap_or(0), s.len())?;
    let mut out = bare_all(&s);
    if cx.has_input(1) {
        match cx.known(1) {
            Some(k) if k.dims.is_empty() => {
                let n = k.to_ints().and_then(|v| v.first().copied());
                // Equal chunks of `n`, the last may be shorter.
                out[a] = match (n, s[a].as_known()) {
                    (Some(n), Some(d)) if n > 0 && d % n == 0 => Dim::known(n),
                    _ => Dim::unknown(),
                };
            }
            Some(k) => {
                let v = k.to_ints().unwrap_or_default();
                out[a] = match v.first() {
                    Some(f) if v.iter().all(|x| x == f) => Dim::known(*f),
                    _ => Dim::unknown(),
                };
            }
            None => out[a] = Dim::unknown(),
        }
    } else if keep {
        out[a] = Dim::known(1);
    } else {
        out.remove(a);
    }
    Ok(vec![seq(tt(elem, Some(out)))])
}

fn concat_from_sequence(cx: &mut InferCtx<'_>) -> InferResult {
    let Some(TypeKind::Tensor(TensorType { elem_type, shape })) = seq_elem(cx, 0).map(|t| t.kind) else {
        return Ok(vec![None]);
    };
    let new_axis = cx.node.attr_int("new_axis").unwrap_or(0) != 0;
    let axis = cx.node.attr_int("axis").ok_or("ConcatFromSequence has no axis")?;
    let shape = match shape {
        Some(s) => {
            let r = s.len() + usize::from(new_axis);
            let a = norm_axis(axis, r)?;
            let mut out = bare_all(&s);
            if new_axis {
                out.insert(a, Dim::unknown());
            } else {
                out[a] = Dim::unknown();
            }
            Some(out)
        }
        None => None,
    };
    Ok(vec![tt(elem_type, shape)])
}

/// Adagrad / Adam / Momentum: each output block mirrors an input block.
fn optimizer(cx: &mut InferCtx<'_>) -> InferResult {
    let n_in = cx.node.inputs().len().saturating_sub(2);
    let (in_blocks, out_blocks): (usize, &[usize]) = match cx.node.op_type.as_str() {
        "Adagrad" => (3, &[0, 2]),
        "Momentum" => (3, &[0, 2]),
        _ => (4, &[0, 2, 3]),
    };
    let n = n_in / in_blocks;
    let mut out = Vec::new();
    for &b in out_blocks {
        for j in 0..n {
            out.push(same(cx, 2 + b * n + j));
        }
    }
    out.resize(cx.num_outputs(), None);
    Ok(out)
}
