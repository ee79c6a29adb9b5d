//! Convolutions, pooling, normalizations, resampling and attention.

use super::{
    Registry, bare, bare_all, ceil_div, code, dim_add, dim_div, dim_mul, dims, same, same_as_first, tt, unknown_dims,
};
use crate::dtype::DataType;
use crate::ir::{AttrLookup, Dim};
use crate::shape::{InferCtx, InferResult};

pub(super) fn register(r: &mut Registry<'_>) {
    r.onnx(&["Conv", "DeformConv"], conv);
    r.onnx(&["ConvInteger"], conv_integer);
    r.onnx(&["QLinearConv"], qlinear_conv);
    r.onnx(&["ConvTranspose"], conv_transpose);
    r.onnx(&["MaxPool", "AveragePool", "LpPool"], pool);
    r.onnx(&["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"], global_pool);
    r.onnx(&["MaxRoiPool"], max_roi_pool);
    r.onnx(&["BatchNormalization"], batch_norm);
    r.onnx(&["LayerNormalization"], layer_norm);
    r.onnx(&["GroupNormalization", "RMSNormalization"], same_as_first);
    r.onnx(&["DepthToSpace", "SpaceToDepth"], depth_space);
    r.onnx(&["Resize", "Upsample"], resize);
    r.onnx(&["Col2Im"], col2im);
    r.onnx(&["GridSample"], grid_sample);
    r.onnx(&["RoiAlign"], roi_align);
    r.onnx(&["MaxUnpool"], max_unpool);
    r.onnx(&["AffineGrid"], affine_grid);
    r.onnx(&["Attention"], attention);
}

/// Window geometry of a conv or pool over `n` spatial axes.
pub(super) struct Window {
    pub kernel: Option<Vec<i64>>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    pub pads: Vec<i64>,
    pub auto_pad: String,
    pub ceil_mode: bool,
}

impl Window {
    pub(super) fn read(cx: &InferCtx<'_>, n: usize, kernel: Option<Vec<i64>>) -> Result<Window, String> {
        let node = &*cx.node;
        let get = |name: &str, len: usize, default: i64| -> Result<Vec<i64>, String> {
            match node.attr_ints(name) {
                Some(v) if v.len() == len => Ok(v.to_vec()),
                Some(v) => Err(format!("{name} has {} values for {n} spatial axes", v.len())),
                None => Ok(vec![default; len]),
            }
        };
        if let Some(k) = &kernel
            && k.len() != n
        {
            return Err(format!("kernel has {} dims for {n} spatial axes", k.len()));
        }
        Ok(Window {
            kernel,
            strides: get("strides", n, 1)?,
            dilations: get("dilations", n, 1)?,
            pads: get("pads", 2 * n, 0)?,
            auto_pad: node.attr_str("auto_pad").unwrap_or("NOTSET").to_string(),
            ceil_mode: node.attr_int("ceil_mode").unwrap_or(0) != 0,
        })
    }

    /// The output size along spatial axis `i` for input size `d`.
    pub(super) fn out(&self, i: usize, d: &Dim, pool: bool) -> Dim {
        let n = self.strides.len();
        let s = self.strides[i];
        if s <= 0 {
            return Dim::unknown();
        }
        if self.auto_pad == "SAME_UPPER" || self.auto_pad == "SAME_LOWER" {
            return match d.as_known() {
                Some(x) => ceil_div(x, s).map_or_else(Dim::unknown, Dim::known),
                None if s == 1 => bare(d),
                None => Dim::unknown(),
            };
        }
        let (Some(k), Some(x)) = (self.kernel.as_ref().map(|k| k[i]), d.as_known()) else { return Dim::unknown() };
        let (pb, pe) = if self.auto_pad == "VALID" { (0, 0) } else { (self.pads[i], self.pads[i + n]) };
        let out = || -> Option<i64> {
            let ek = k.checked_sub(1)?.checked_mul(self.dilations[i])?.checked_add(1)?;
            let total = x.checked_add(pb)?.checked_add(pe)?.checked_sub(ek)?;
            if total < 0 || ek <= 0 {
                return None;
            }
            if self.ceil_mode && pool {
                let mut o = ceil_div(total, s)? + 1;
                // The last window must start inside the input or its leading padding.
                if (o - 1).checked_mul(s)? >= x.checked_add(pb)? {
                    o -= 1;
                }
                Some(o)
            } else {
                Some(total / s + 1)
            }
        };
        out().map_or_else(Dim::unknown, Dim::known)
    }

    /// The output size of a transposed window along spatial axis `i`.
    fn out_transposed(&self, i: usize, x: i64, out_pad: i64) -> Option<i64> {
        let n = self.strides.len();
        let s = self.strides[i];
        if self.auto_pad == "SAME_UPPER" || self.auto_pad == "SAME_LOWER" {
            return x.checked_mul(s);
        }
        let k = self.kernel.as_ref()?[i];
        let ek = k.checked_sub(1)?.checked_mul(self.dilations[i])?.checked_add(1)?;
        let (pb, pe) = if self.auto_pad == "VALID" { (0, 0) } else { (self.pads[i], self.pads[i + n]) };
        let o = s
            .checked_mul(x.checked_sub(1)?)?
            .checked_add(out_pad)?
            .checked_add(ek)?
            .checked_sub(pb)?
            .checked_sub(pe)?;
        (o >= 0).then_some(o)
    }
}

/// `[N, channels, spatial…]` of a conv-like op over input `x`.
pub(super) fn conv_shape(cx: &InferCtx<'_>, x: usize, w: usize) -> Result<Option<Vec<Dim>>, String> {
    let Some(xs) = cx.shape(x) else {
        // The weight still gives the rank and the output channels.
        return Ok(cx.shape(w).filter(|s| s.len() >= 2).map(|s| {
            let mut out = unknown_dims(s.len());
            out[1] = bare(&s[0]);
            out
        }));
    };
    if xs.len() < 2 {
        return Err(format!("input of rank {} has no channel axis", xs.len()));
    }
    let n = xs.len() - 2;
    let ws = cx.shape(w);
    let kernel = cx.node.attr_ints("kernel_shape").map(<[i64]>::to_vec).or_else(|| {
        let ws = ws?;
        (ws.len() == n + 2).then(|| ws[2..].iter().map(Dim::as_known).collect::<Option<Vec<_>>>()).flatten()
    });
    let win = Window::read(cx, n, kernel)?;
    let m = ws.and_then(|w| w.first()).map_or_else(Dim::unknown, bare);
    let mut out = vec![bare(&xs[0]), m];
    out.extend(xs[2..].iter().enumerate().map(|(i, d)| win.out(i, d, false)));
    Ok(Some(out))
}

fn conv(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(cx.elem(0), conv_shape(cx, 0, 1)?)])
}

fn conv_integer(cx: &mut InferCtx<'_>) -> InferResult {
    Ok(vec![tt(code(DataType::I32), conv_shape(cx, 0, 1)?)])
}

fn qlinear_conv(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(7).or_else(|| cx.elem(0));
    Ok(vec![tt(elem, conv_shape(cx, 0, 3)?)])
}

fn conv_transpose(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(xs) = cx.shape(0) else { return Ok(vec![tt(elem, None)]) };
    if xs.len() < 2 {
        return Err("ConvTranspose input has no channel axis".into());
    }
    let n = xs.len() - 2;
    let ws = cx.shape(1);
    let group = cx.node.attr_int("group").unwrap_or(1);
    let m = ws.and_then(|w| w.get(1)).map_or_else(Dim::unknown, |d| dim_mul(d, &Dim::known(group)));
    let kernel = cx.node.attr_ints("kernel_shape").map(<[i64]>::to_vec).or_else(|| {
        let ws = ws?;
        (ws.len() == n + 2).then(|| ws[2..].iter().map(Dim::as_known).collect::<Option<Vec<_>>>()).flatten()
    });
    let win = Window::read(cx, n, kernel)?;
    let out_pad = cx.node.attr_ints("output_padding").map_or_else(|| vec![0; n], <[i64]>::to_vec);
    let mut out = vec![bare(&xs[0]), m];
    if let Some(os) = cx.node.attr_ints("output_shape") {
        let spatial = if os.len() == n + 2 { &os[2..] } else { os };
        if spatial.len() != n {
            return Err(format!("output_shape has {} values for {n} spatial axes", os.len()));
        }
        out.extend(dims(spatial));
        return Ok(vec![tt(elem, Some(out))]);
    }
    for (i, d) in xs[2..].iter().enumerate() {
        let o = d.as_known().and_then(|x| win.out_transposed(i, x, out_pad.get(i).copied().unwrap_or(0)));
        out.push(o.map_or_else(Dim::unknown, Dim::known));
    }
    Ok(vec![tt(elem, Some(out))])
}

fn pool(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(xs) = cx.shape(0) else {
        return Ok(vec![tt(elem, None), tt(code(DataType::I64), None)]);
    };
    if xs.len() < 2 {
        return Err("pooling input has no channel axis".into());
    }
    let n = xs.len() - 2;
    let kernel = cx.node.attr_ints("kernel_shape").map(<[i64]>::to_vec);
    let win = Window::read(cx, n, kernel)?;
    let mut out = vec![bare(&xs[0]), bare(&xs[1])];
    out.extend(xs[2..].iter().enumerate().map(|(i, d)| win.out(i, d, true)));
    Ok(vec![tt(elem, Some(out.clone())), tt(code(DataType::I64), Some(out))])
}

fn global_pool(cx: &mut InferCtx<'_>) -> InferResult {
    let shape = cx
        .shape(0)
        .map(|s| s.iter().enumerate().map(|(i, d)| if i < 2 { bare(d) } else { Dim::known(1) }).collect::<Vec<_>>());
    Ok(vec![tt(cx.elem(0), shape)])
}

fn max_roi_pool(cx: &mut InferCtx<'_>) -> InferResult {
    let pooled = cx.node.attr_ints("pooled_shape").map(<[i64]>::to_vec);
    let shape = match (cx.shape(0), cx.shape(1), pooled) {
        (Some(x), Some(r), Some(p)) if x.len() == 4 && r.len() == 2 && p.len() == 2 => {
            Some(vec![bare(&r[0]), bare(&x[1]), Dim::known(p[0]), Dim::known(p[1])])
        }
        _ => None,
    };
    Ok(vec![tt(cx.elem(0), shape)])
}

fn batch_norm(cx: &mut InferCtx<'_>) -> InferResult {
    let mut out = vec![same(cx, 0)];
    let c = cx.shape(0).and_then(|s| s.get(1)).map(bare);
    for _ in 1..cx.num_outputs() {
        let elem = cx.elem(3).or_else(|| cx.elem(1));
        out.push(tt(elem, c.clone().map(|c| vec![c]).or_else(|| cx.shape(3).map(bare_all))));
    }
    Ok(out)
}

fn layer_norm(cx: &mut InferCtx<'_>) -> InferResult {
    let axis = cx.node.attr_int("axis").unwrap_or(-1);
    let stash = cx.node.attr_int("stash_type").and_then(|v| i32::try_from(v).ok()).or(code(DataType::F32));
    let reduced = match cx.shape(0) {
        Some(s) => {
            let a = super::norm_axis(axis, s.len())?;
            Some(s.iter().enumerate().map(|(i, d)| if i < a { bare(d) } else { Dim::known(1) }).collect())
        }
        None => None,
    };
    Ok(vec![same(cx, 0), tt(stash, reduced.clone()), tt(stash, reduced)])
}

fn depth_space(cx: &mut InferCtx<'_>) -> InferResult {
    let b = cx.node.attr_int("blocksize").filter(|&b| b > 0 && b < 1 << 20).ok_or("blocksize missing or invalid")?;
    let shape = match cx.shape(0) {
        Some(s) if s.len() == 4 => {
            let bb = Dim::known(b * b);
            let bd = Dim::known(b);
            Some(if cx.node.op_type == "DepthToSpace" {
                vec![bare(&s[0]), dim_div(&s[1], &bb), dim_mul(&s[2], &bd), dim_mul(&s[3], &bd)]
            } else {
                vec![bare(&s[0]), dim_mul(&s[1], &bb), dim_div(&s[2], &bd), dim_div(&s[3], &bd)]
            })
        }
        Some(s) => return Err(format!("{} needs a rank-4 input, got rank {}", cx.node.op_type, s.len())),
        None => None,
    };
    Ok(vec![tt(cx.elem(0), shape)])
}

fn resize(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let Some(xs) = cx.shape(0).map(<[Dim]>::to_vec) else { return Ok(vec![tt(elem, None)]) };
    let r = xs.len();
    // Inputs: Upsample-7: attr scales; Upsample-9 and Resize-10: (X, scales);
    // Resize-11+: (X, roi, scales, sizes).
    let (scales_in, sizes_in) = if cx.node.op_type == "Upsample" || cx.opset < 11 { (1, None) } else { (2, Some(3)) };
    let axes: Vec<usize> = match cx.node.attr_ints("axes") {
        Some(a) => super::norm_axes(a, r)?,
        None => (0..r).collect(),
    };
    let mut out = unknown_dims(r);
    for (i, d) in xs.iter().enumerate() {
        if !axes.contains(&i) {
            out[i] = bare(d);
        }
    }
    let sizes = sizes_in.filter(|&i| {
        cx.has_input(i)
            && cx.rank(i) != Some(0)
            && cx.shape(i).is_none_or(|s| s.iter().any(|d| d.as_known() != Some(0)))
    });
    if let Some(si) = sizes {
        let Some(sz) = cx.known_ints(si) else { return Ok(vec![tt(elem, Some(out))]) };
        if sz.len() != axes.len() {
            return Err(format!("sizes has {} values for {} axes", sz.len(), axes.len()));
        }
        let policy = cx.node.attr_str("keep_aspect_ratio_policy").unwrap_or("stretch");
        if policy == "stretch" {
            for (k, &a) in axes.iter().enumerate() {
                out[a] = Dim::known(sz[k]);
            }
        } else {
            let ins: Option<Vec<i64>> = axes.iter().map(|&a| xs[a].as_known()).collect();
            if let Some(ins) = ins {
                let ratios = sz.iter().zip(&ins).map(|(&s, &i)| s as f64 / i as f64);
                let scale = if policy == "not_larger" {
                    ratios.fold(f64::INFINITY, f64::min)
                } else {
                    ratios.fold(0.0, f64::max)
                };
                for (k, &a) in axes.iter().enumerate() {
                    out[a] = Dim::known((scale * ins[k] as f64 + 0.5).floor() as i64);
                }
            }
        }
        return Ok(vec![tt(elem, Some(out))]);
    }
    let scales = if cx.node.op_type == "Upsample" && cx.opset < 9 {
        cx.node.attr("scales").and_then(|v| match v {
            crate::ir::AttrValue::Floats(f) => Some(f.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
            _ => None,
        })
    } else {
        cx.known_floats(scales_in)
    };
    if let Some(sc) = scales {
        if sc.len() != axes.len() {
            return Err(format!("scales has {} values for {} axes", sc.len(), axes.len()));
        }
        for (k, &a) in axes.iter().enumerate() {
            if let Some(x) = xs[a].as_known() {
                out[a] = Dim::known((x as f64 * sc[k]).floor() as i64);
            } else if sc[k] == 1.0 {
                out[a] = bare(&xs[a]);
            }
        }
    }
    Ok(vec![tt(elem, Some(out))])
}

fn col2im(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let (Some(img), Some(xs)) = (cx.known_ints(1), cx.shape(0)) else {
        let rank = cx.shape(1).and_then(|s| s.first()).and_then(Dim::as_known);
        let shape = rank.and_then(|n| super::rank_dims(n.saturating_add(2)));
        return Ok(vec![tt(elem, shape)]);
    };
    if xs.len() != 3 {
        return Err("Col2Im input must be rank 3".into());
    }
    let block: Option<Vec<i64>> = cx.known_ints(2);
    let c = match block {
        Some(b) => b
            .iter()
            .try_fold(1i64, |a, &x| a.checked_mul(x))
            .map_or_else(Dim::unknown, |p| dim_div(&xs[1], &Dim::known(p))),
        None => Dim::unknown(),
    };
    let mut out = vec![bare(&xs[0]), c];
    out.extend(dims(&img));
    Ok(vec![tt(elem, Some(out))])
}

fn grid_sample(cx: &mut InferCtx<'_>) -> InferResult {
    let shape = match (cx.shape(0), cx.shape(1)) {
        (Some(x), Some(g)) if x.len() >= 2 && g.len() == x.len() => {
            let mut o = vec![bare(&x[0]), bare(&x[1])];
            o.extend(g[1..g.len() - 1].iter().map(bare));
            Some(o)
        }
        (Some(x), _) => Some(unknown_dims(x.len())),
        _ => None,
    };
    Ok(vec![tt(cx.elem(0), shape)])
}

fn roi_align(cx: &mut InferCtx<'_>) -> InferResult {
    let h = cx.node.attr_int("output_height").unwrap_or(1);
    let w = cx.node.attr_int("output_width").unwrap_or(1);
    let n = cx.shape(1).and_then(|s| s.first()).map_or_else(Dim::unknown, bare);
    let c = cx.shape(0).and_then(|s| s.get(1)).map_or_else(Dim::unknown, bare);
    Ok(vec![tt(cx.elem(0), Some(vec![n, c, Dim::known(h), Dim::known(w)]))])
}

fn max_unpool(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    if cx.has_input(2) {
        let shape = cx.known(2).and_then(|k| k.as_dims()).map(bare_all);
        return Ok(vec![tt(elem, shape.or_else(|| cx.rank(0).map(unknown_dims)))]);
    }
    let Some(xs) = cx.shape(0) else { return Ok(vec![tt(elem, None)]) };
    if xs.len() < 2 {
        return Err("MaxUnpool input has no channel axis".into());
    }
    let n = xs.len() - 2;
    let kernel = cx.node.attr_ints("kernel_shape").map(<[i64]>::to_vec);
    let win = Window::read(cx, n, kernel)?;
    let mut out = vec![bare(&xs[0]), bare(&xs[1])];
    for (i, d) in xs[2..].iter().enumerate() {
        let o = || -> Option<i64> {
            let k = win.kernel.as_ref()?[i];
            x_checked(
                d.as_known()?.checked_sub(1)?.checked_mul(win.strides[i])?.checked_add(k)?,
                win.pads[i],
                win.pads[i + n],
            )
        };
        out.push(o().map_or_else(Dim::unknown, Dim::known));
    }
    Ok(vec![tt(elem, Some(out))])
}

/// `x - pb - pe`, if it does not overflow and is not negative.
fn x_checked(x: i64, pb: i64, pe: i64) -> Option<i64> {
    x.checked_sub(pb)?.checked_sub(pe).filter(|&v| v >= 0)
}

fn affine_grid(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let shape = match cx.known(1).and_then(|k| k.as_dims()) {
        Some(s) if s.len() == 4 => Some(vec![bare(&s[0]), bare(&s[2]), bare(&s[3]), Dim::known(2)]),
        Some(s) if s.len() == 5 => Some(vec![bare(&s[0]), bare(&s[2]), bare(&s[3]), bare(&s[4]), Dim::known(3)]),
        _ => cx.shape(1).and_then(|s| s.first()).and_then(Dim::as_known).and_then(super::rank_dims),
    };
    Ok(vec![tt(elem, shape)])
}

/// ONNX `Attention` (opset 23): 4-D `[B, heads, seq, head_size]` or 3-D `[B, seq, hidden]`.
fn attention(cx: &mut InferCtx<'_>) -> InferResult {
    let elem = cx.elem(0);
    let nout = cx.num_outputs();
    let unknown = |n: usize| -> Vec<Option<crate::ir::Type>> { (0..n).map(|_| tt(elem, None)).collect() };
    let (Some(q), Some(k), Some(v)) = (cx.shape(0), cx.shape(1), cx.shape(2)) else { return Ok(unknown(nout)) };
    let (q, k, v) = (q.to_vec(), k.to_vec(), v.to_vec());
    let qh_attr = cx.node.attr_int("q_num_heads");
    let kvh_attr = cx.node.attr_int("kv_num_heads");
    let batch = bare(&q[0]);
    // (heads, seq, head size) of each of Q, K, V.
    let split = |s: &[Dim], heads: Option<i64>| -> Option<(Dim, Dim, Dim)> {
        match s.len() {
            4 => Some((bare(&s[1]), bare(&s[2]), bare(&s[3]))),
            3 => {
                let h = heads?;
                Some((Dim::known(h), bare(&s[1]), dim_div(&s[2], &Dim::known(h))))
            }
            _ => None,
        }
    };
    let (Some((qh, qs, _)), Some((kvh, kvs, hs)), Some((_, _, vhs))) =
        (split(&q, qh_attr), split(&k, kvh_attr), split(&v, kvh_attr))
    else {
        return Ok(unknown(nout));
    };
    let past = cx.shape(4).filter(|s| s.len() == 4).map(|s| bare(&s[2]));
    let total = match &past {
        Some(p) if cx.has_input(4) => dim_add(p, &kvs),
        _ => kvs.clone(),
    };
    let y = if q.len() == 4 {
        vec![batch.clone(), qh.clone(), qs.clone(), vhs.clone()]
    } else {
        vec![batch.clone(), qs.clone(), dim_mul(&qh, &vhs)]
    };
    let mut out = vec![tt(elem, Some(y))];
    if nout > 1 {
        out.push(tt(cx.elem(1), Some(vec![batch.clone(), kvh.clone(), total.clone(), hs])));
    }
    if nout > 2 {
        out.push(tt(cx.elem(2), Some(vec![batch.clone(), kvh, total.clone(), vhs])));
    }
    if nout > 3 {
        out.push(tt(elem, Some(vec![batch, qh, qs, total])));
    }
    Ok(out)
}
