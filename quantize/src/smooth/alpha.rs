//! Choosing `s`: the SmoothQuant formula per α, and the α whose simulated int8 quantization of
//! the real calibration rows gives the smallest relative output error.

use kiln_calibration::channels::ChannelRange;
use kiln_compiler::ir::{Graph, ValueId};

use super::{ALPHA_GRID, Alpha, Group, SmoothConfig, SmoothError, Smoothed, Target, node_name};
use crate::handlers::constant;
use crate::weights::activation_params;

/// The weight as row-major [K, N] values.
pub(super) fn weight_kn(g: &Graph, t: &Target) -> Result<Vec<f32>, SmoothError> {
    let tensor = constant(g, t.weight).ok_or_else(|| SmoothError::Model("weight is no longer constant".into()))?;
    let v = tensor.to_vec::<f32>().map_err(|e| SmoothError::Model(format!("{}: {e}", g.value(t.weight).name)))?;
    if !t.transposed {
        return Ok(v);
    }
    let mut out = vec![0.0f32; v.len()];
    for r in 0..t.n {
        for c in 0..t.k {
            out[c * t.n + r] = v[r * t.k + c];
        }
    }
    Ok(out)
}

/// `s` for a given α: `max|X_j|^α / max|W_j|^(1−α)`, 1 where either side is 0.
pub fn scales(x_absmax: &[f32], w_absmax: &[f32], alpha: f64) -> Vec<f32> {
    x_absmax
        .iter()
        .zip(w_absmax)
        .map(|(&x, &w)| {
            if x > 0.0 && w > 0.0 && x.is_finite() && w.is_finite() {
                let s = f64::from(x).powf(alpha) / f64::from(w).powf(1.0 - alpha);
                (s as f32).clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect()
}

/// Chooses α for one activation; `None` when its channel count does not match the weights.
pub(super) fn choose(
    g: &Graph,
    group: &Group,
    name: &str,
    range: &ChannelRange,
    config: &SmoothConfig,
) -> Result<Option<(ValueId, Vec<f32>, Smoothed)>, SmoothError> {
    let k = group.targets[0].k;
    if range.channels() != k || range.rows.is_empty() {
        return Ok(None);
    }
    let weights: Vec<(Vec<f32>, usize)> =
        group.targets.iter().map(|t| Ok((weight_kn(g, t)?, t.n))).collect::<Result<_, SmoothError>>()?;
    let mut w_absmax = vec![0.0f32; k];
    for (w, n) in &weights {
        for (j, row) in w.chunks_exact(*n).enumerate() {
            w_absmax[j] = row.iter().fold(w_absmax[j], |m, v| m.max(v.abs()));
        }
    }
    let x_absmax = range.abs_max();
    let reference = reference_outputs(&range.rows, k, &weights);
    let ones = vec![1.0f32; k];
    let error_before = simulated_error(range, &weights, &reference, &ones, config);
    let alphas: Vec<f64> = match config.alpha {
        Alpha::Fixed(a) => vec![a],
        Alpha::Auto => ALPHA_GRID.to_vec(),
    };
    let mut best: Option<(f64, f64, Vec<f32>)> = None;
    for a in alphas {
        let s = scales(&x_absmax, &w_absmax, a);
        let e = simulated_error(range, &weights, &reference, &s, config);
        if best.as_ref().is_none_or(|(_, be, _)| e < *be) {
            best = Some((a, e, s));
        }
    }
    let nodes = group.targets.iter().map(|t| node_name(g, t.node)).collect();
    let record = |alpha, error_after| Smoothed {
        activation: name.to_string(),
        nodes,
        alpha,
        error_before,
        error_after,
        folded_into: None,
        mul: None,
    };
    Ok(Some(match best {
        // A fixed α is applied as asked; an automatic one only when it helps.
        Some((a, e, s)) if matches!(config.alpha, Alpha::Fixed(_)) || e < error_before => {
            (group.activation, s, record(Some(a), e))
        }
        _ => (group.activation, ones, record(None, error_before)),
    }))
}

/// `X·W` of the kept rows for each weight.
fn reference_outputs(rows: &[f32], k: usize, weights: &[(Vec<f32>, usize)]) -> Vec<Vec<f32>> {
    weights.iter().map(|(w, n)| matmul(rows, k, w, *n)).collect()
}

fn matmul(x: &[f32], k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let m = x.len() / k;
    let mut y = vec![0.0f32; m * n];
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (&xv, wr) in xr.iter().zip(w.chunks_exact(n)) {
            if xv != 0.0 {
                for (o, &wv) in yr.iter_mut().zip(wr) {
                    *o += xv * wv;
                }
            }
        }
    }
    y
}

/// `Σ‖XW − Q(X/s)·Q(diag(s)W)‖² / Σ‖XW‖²` over the group's weights, activations quantized per
/// tensor over the smoothed tensor's calibrated range (as minmax calibration would see it),
/// weights S8 symmetric per output channel.
fn simulated_error(
    range: &ChannelRange,
    weights: &[(Vec<f32>, usize)],
    reference: &[Vec<f32>],
    s: &[f32],
    config: &SmoothConfig,
) -> f64 {
    let k = s.len();
    let lo = range.min.iter().zip(s).map(|(v, s)| f64::from(v / s)).fold(0.0f64, f64::min);
    let hi = range.max.iter().zip(s).map(|(v, s)| f64::from(v / s)).fold(0.0f64, f64::max);
    let p = activation_params(lo, hi, config.activation, config.symmetric_activations);
    let xq: Vec<f32> = range
        .rows
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = v / s[i % k];
            if x.is_finite() { p.dequantize(p.quantize(x, 0), 0) } else { 0.0 }
        })
        .collect();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for ((w, n), y) in weights.iter().zip(reference) {
        let n = *n;
        let mut ws: Vec<f32> = w.iter().enumerate().map(|(i, &v)| v * s[i / n]).collect();
        let mut col_max = vec![0.0f32; n];
        for (i, v) in ws.iter().enumerate() {
            col_max[i % n] = col_max[i % n].max(v.abs());
        }
        for (i, v) in ws.iter_mut().enumerate() {
            let scale = (col_max[i % n] / 127.0).max(f32::MIN_POSITIVE);
            *v = (*v / scale).round_ties_even().clamp(-127.0, 127.0) * scale;
        }
        let yq = matmul(&xq, k, &ws, n);
        for (a, b) in y.iter().zip(&yq) {
            num += f64::from(a - b).powi(2);
            den += f64::from(*a).powi(2);
        }
    }
    if den > 0.0 { num / den } else { 0.0 }
}
