//! Learned rounding (AdaRound, Nagel et al. 2020): keep each block's scale from round to
//! nearest, and choose for every weight whether it rounds down or up so that the layer's output
//! error on calibration data is smallest, rather than rounding each weight on its own.
//!
//! The choice is relaxed to a continuous variable `V` per weight through the rectified sigmoid
//! `h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)`, with the dequantized weight
//! `W̃ = s·(clamp(⌊W/s⌋ + z + h(V), 0, qmax) − z)`, and learned by Adam on
//!
//! `tr((W − W̃) H (W − W̃)ᵀ) / e_rtn + λ·mean(1 − |2h(V) − 1|^β)`,
//!
//! where `H = Σ xᵀx` is the Gram matrix of the layer's input (so no activations are kept) and
//! `e_rtn` is round to nearest's error, which makes the first term 1 at RTN's quality whatever the
//! layer's scale. The regularizer (off for the first `warmup` of the iterations) pushes `h` to 0
//! or 1 while `β` falls from `beta_start` to `beta_end`; at the end `h` is rounded.
//!
//! Gradients come from burn's autodiff on its CPU `flex` backend; the Adam step is plain Rust.
//! The iteration count is fixed and the loss value is never read back, so the result depends
//! only on the gradients, whose reductions are matrix products (no order-dependent sums).

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};

use super::block::{BlockQuantized, RowMajor};
use super::gptq::output_error;

/// The rectified sigmoid's stretch: `h` reaches exactly 0 and 1 at finite `V`.
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

/// Learned rounding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedOptions {
    /// Adam steps per layer (each one a forward and backward product by the `K×K` Gram matrix).
    pub iterations: usize,
    pub learning_rate: f32,
    /// Weight of the rounding regularizer against the RTN-relative reconstruction error.
    pub lambda: f32,
    /// The regularizer's exponent at the end of the warmup and at the last step.
    pub beta_start: f32,
    pub beta_end: f32,
    /// Fraction of the iterations before the regularizer starts.
    pub warmup: f32,
}

impl Default for LearnedOptions {
    fn default() -> LearnedOptions {
        LearnedOptions {
            iterations: 300,
            learning_rate: 0.05,
            lambda: 0.1,
            beta_start: 20.0,
            beta_end: 2.0,
            warmup: 0.2,
        }
    }
}

impl LearnedOptions {
    /// Checks the settings a user can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |x: f32| x > 0.0 && x.is_finite();
        if self.iterations == 0 {
            return Err("learned rounding needs at least one iteration".into());
        }
        if !(positive(self.learning_rate) && self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(format!(
                "learned rounding: learning rate {} must be positive and lambda {} non-negative",
                self.learning_rate, self.lambda
            ));
        }
        if !positive(self.beta_start) || !positive(self.beta_end) || !(0.0..1.0).contains(&self.warmup) {
            return Err(format!(
                "learned rounding: beta {}..{} must be positive and warmup {} in [0, 1)",
                self.beta_start, self.beta_end, self.warmup
            ));
        }
        Ok(())
    }

    /// The regularizer's exponent at step `t`, or `None` during the warmup.
    fn beta(&self, t: usize) -> Option<f32> {
        let warm = (self.warmup * self.iterations as f32) as usize;
        if t < warm {
            return None;
        }
        let rel = (t - warm) as f32 / (self.iterations - warm).max(1) as f32;
        Some(self.beta_end + (self.beta_start - self.beta_end) * (1.0 - rel))
    }
}

/// `V` with `h(V)` equal to `frac`: the relaxed weight starts exactly at the float weight.
fn initial_v(frac: f32) -> f32 {
    let p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

/// The per-weight constants of one layer, row-major `[n][k]`.
struct Grid {
    floor: Vec<f32>,
    scale: Vec<f32>,
    zero: Vec<f32>,
    v: Vec<f32>,
}

fn grid(w: &RowMajor, base: &BlockQuantized) -> Grid {
    let (n, k, block) = (w.n, w.k, base.spec.block);
    let kb = base.k_blocks();
    let mut g = Grid {
        floor: Vec::with_capacity(n * k),
        scale: Vec::with_capacity(n * k),
        zero: Vec::with_capacity(n * k),
        v: Vec::with_capacity(n * k),
    };
    for r in 0..n {
        for i in 0..k {
            let b = i / block;
            let s = base.scales[r * kb + b];
            let z = f32::from(base.zero_point(r, b));
            let x = w.values[r * k + i] / s + z;
            let fl = x.floor();
            g.floor.push(fl);
            g.scale.push(s);
            g.zero.push(z);
            g.v.push(initial_v(x - fl));
        }
    }
    g
}

/// A factor `L` (`k×r`, row-major) with `L·Lᵀ = H` to `tolerance` of its trace, by pivoted
/// Cholesky: the Gram matrix of `m` calibration rows has rank at most `m`, often far below `k`,
/// and each step then costs `n·k·r` instead of `n·k²`.
fn low_rank_factor(h: &[f64], k: usize, tolerance: f64) -> (Vec<f64>, usize) {
    let mut d: Vec<f64> = (0..k).map(|i| h[i * k + i].max(0.0)).collect();
    let stop = tolerance * d.iter().sum::<f64>();
    let mut cols: Vec<Vec<f64>> = Vec::new();
    while cols.len() < k {
        // The first largest remaining diagonal: deterministic ties.
        let (p, &dp) = d.iter().enumerate().fold((0, &f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
        // Also stops on NaN.
        if dp.partial_cmp(&stop) != Some(std::cmp::Ordering::Greater) {
            break;
        }
        let root = dp.sqrt();
        let mut col: Vec<f64> = (0..k).map(|i| h[i * k + p]).collect();
        for c in &cols {
            let cp = c[p];
            for (x, &ci) in col.iter_mut().zip(c) {
                *x -= ci * cp;
            }
        }
        for (i, x) in col.iter_mut().enumerate() {
            *x /= root;
            d[i] -= *x * *x;
        }
        d[p] = 0.0;
        cols.push(col);
    }
    let r = cols.len();
    let mut l = vec![0.0f64; k * r];
    for (j, c) in cols.iter().enumerate() {
        for i in 0..k {
            l[i * r + j] = c[i];
        }
    }
    (l, r)
}

fn tensor(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Learns the rounding of `w` on the grid of `base` (its scales and zero points are kept) for a
/// layer whose input has Gram matrix `h` (`k×k`, row-major). Returns `base` unchanged when the
/// Gram matrix is zero or RTN is already exact.
pub fn adaround(w: &RowMajor, base: &BlockQuantized, h: &[f64], options: &LearnedOptions) -> BlockQuantized {
    let (n, k) = (w.n, w.k);
    let rtn_error = output_error(w, base, h);
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k.max(1) as f64;
    if !(rtn_error > 0.0 && rtn_error.is_finite() && mean_diag > 0.0 && mean_diag.is_finite()) {
        return base.clone();
    }
    // Both terms in units where RTN's reconstruction error is 1.
    let (l, r) = low_rank_factor(h, k, 1e-7);
    let l_scale = (1.0 / rtn_error).sqrt();
    let l32: Vec<f32> = l.iter().map(|&x| (x * l_scale) as f32).collect();
    let qmax = base.spec.qmax();
    let mut g = grid(w, base);

    let device = Device::flex();
    let ad = Device::flex().autodiff();
    let lm = tensor(l32, [k, r], &device).autodiff();
    let wt = tensor(w.values.clone(), [n, k], &device).autodiff();
    let floor = tensor(std::mem::take(&mut g.floor), [n, k], &device).autodiff();
    let scale = tensor(std::mem::take(&mut g.scale), [n, k], &device).autodiff();
    let zero = tensor(std::mem::take(&mut g.zero), [n, k], &device).autodiff();
    let count = (n * k) as f32;

    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let (mut m, mut s2) = (vec![0.0f32; n * k], vec![0.0f32; n * k]);
    for t in 0..options.iterations {
        let v = tensor(g.v.clone(), [n, k], &ad).require_grad();
        let hv = sigmoid(v.clone()).mul_scalar(ZETA - GAMMA).add_scalar(GAMMA).clamp(0.0, 1.0);
        let codes = floor.clone().add(hv.clone()).clamp(0.0, qmax);
        let err = wt.clone().sub(codes.sub(zero.clone()).mul(scale.clone()));
        let mut loss = err.matmul(lm.clone()).square().sum();
        if let Some(beta) = options.beta(t) {
            let round = hv
                .mul_scalar(2.0)
                .sub_scalar(1.0)
                .abs()
                .powf_scalar(beta)
                .neg()
                .add_scalar(1.0)
                .sum()
                .div_scalar(count);
            loss = loss.add(round.mul_scalar(options.lambda));
        }
        let grads = loss.backward();
        let Some(grad) = v.grad(&grads) else { break };
        let grad = grad.into_data();
        let Ok(grad) = grad.as_slice::<f32>() else { break };
        let step = (t + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        for (((vi, mi), si), &gi) in g.v.iter_mut().zip(&mut m).zip(&mut s2).zip(grad) {
            *mi = b1 * *mi + (1.0 - b1) * gi;
            *si = b2 * *si + (1.0 - b2) * gi * gi;
            *vi -= options.learning_rate * (*mi / c1) / ((*si / c2).sqrt() + eps);
        }
    }

    // h(V) ≥ 0.5 exactly when V ≥ 0: round up there.
    let floor = grid(w, base).floor;
    let codes = floor
        .iter()
        .zip(&g.v)
        .map(|(&fl, &v)| (fl + if v >= 0.0 { 1.0 } else { 0.0 }).clamp(0.0, qmax) as u8)
        .collect();
    BlockQuantized { codes, ..base.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int4::block::{QuantSpec, rtn};

    /// A deterministic pseudo-random stream in [-1, 1).
    fn stream(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// A weight and a Gram matrix of correlated inputs with uneven feature scales, the case where
    /// rounding each weight alone is far from the best joint choice.
    fn layer(n: usize, k: usize, rows: usize, seed: u64) -> (RowMajor, Vec<f64>) {
        let mut r = stream(seed);
        let w = RowMajor { n, k, values: (0..n * k).map(|_| r()).collect() };
        let mut x = vec![0.0f64; rows * k];
        for row in 0..rows {
            let common = f64::from(r());
            for i in 0..k {
                let gain = 1.0 + 3.0 * (i % 5) as f64;
                x[row * k + i] = gain * (0.7 * common + 0.3 * f64::from(r()));
            }
        }
        let mut h = vec![0.0f64; k * k];
        for row in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += row[i] * row[j];
                }
            }
        }
        (w, h)
    }

    fn spec(symmetric: bool) -> QuantSpec {
        QuantSpec { bits: 4, block: 16, symmetric, negative_scales: false }
    }

    #[test]
    fn beats_round_to_nearest_on_correlated_inputs() {
        for symmetric in [true, false] {
            let (w, h) = layer(8, 64, 96, 7);
            let base = rtn(&w, spec(symmetric), None);
            let q = adaround(&w, &base, &h, &LearnedOptions::default());
            let (e_rtn, e_learned) = (output_error(&w, &base, &h), output_error(&w, &q, &h));
            assert!(e_learned < 0.8 * e_rtn, "symmetric {symmetric}: learned {e_learned} vs RTN {e_rtn}");
            // Same grid: only the rounding direction changed, by at most one step.
            assert_eq!(q.scales, base.scales);
            assert_eq!(q.zero_points, base.zero_points);
            assert!(q.codes.iter().zip(&base.codes).all(|(&a, &b)| a.abs_diff(b) <= 1));
            assert!(q.codes != base.codes);
        }
    }

    #[test]
    fn low_rank_factor_reproduces_the_gram_matrix() {
        // 12 rows of 32 features: rank 12, and L·Lᵀ is H.
        let (_, h) = layer(1, 32, 12, 9);
        let (l, r) = low_rank_factor(&h, 32, 1e-12);
        assert_eq!(r, 12);
        let scale = h.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
        for i in 0..32 {
            for j in 0..32 {
                let x: f64 = (0..r).map(|c| l[i * r + c] * l[j * r + c]).sum();
                assert!((x - h[i * 32 + j]).abs() <= 1e-9 * scale, "({i},{j}): {x} vs {}", h[i * 32 + j]);
            }
        }
        // A full-rank Gram matrix keeps all its columns.
        let (_, h) = layer(1, 16, 64, 9);
        assert_eq!(low_rank_factor(&h, 16, 1e-12).1, 16);
    }

    #[test]
    fn zero_gram_keeps_round_to_nearest() {
        let (w, _) = layer(4, 32, 8, 3);
        let base = rtn(&w, spec(true), None);
        assert_eq!(adaround(&w, &base, &vec![0.0; 32 * 32], &LearnedOptions::default()), base);
    }

    #[test]
    fn one_tiny_step_rounds_to_nearest() {
        // One tiny step leaves V at its initial value, whose sign is the nearest rounding.
        let (w, h) = layer(4, 32, 40, 5);
        let base = rtn(&w, spec(false), None);
        let options = LearnedOptions { iterations: 1, learning_rate: 1e-6, ..LearnedOptions::default() };
        let q = adaround(&w, &base, &h, &options);
        let differ = q.codes.iter().zip(&base.codes).filter(|(a, b)| a != b).count();
        // Only values within a hair of a half step may flip.
        assert!(differ <= 1, "{differ} codes differ from round to nearest");
    }

    #[test]
    fn same_result_at_any_thread_count() {
        let (w, h) = layer(16, 64, 80, 11);
        let base = rtn(&w, spec(true), None);
        let options = LearnedOptions { iterations: 60, ..LearnedOptions::default() };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| adaround(&w, &base, &h, &options))
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn validate_rejects_bad_settings() {
        assert!(LearnedOptions::default().validate().is_ok());
        assert!(LearnedOptions { iterations: 0, ..LearnedOptions::default() }.validate().is_err());
        assert!(LearnedOptions { learning_rate: f32::NAN, ..LearnedOptions::default() }.validate().is_err());
        assert!(LearnedOptions { warmup: 1.0, ..LearnedOptions::default() }.validate().is_err());
        assert!(LearnedOptions { beta_end: 0.0, ..LearnedOptions::default() }.validate().is_err());
    }
}
