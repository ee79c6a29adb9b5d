//! GPTQ (Frantar et al., 2022): quantize a weight one input feature (column of K) at a time and
//! push each column's rounding error onto the columns not yet quantized, weighted by the inverse
//! Hessian of the layer's squared output error, `H = Σ xᵀx` over calibration activations.
//!
//! Why GPTQ rather than AWQ: it changes nothing but the weights (AWQ's per-channel scales must be
//! folded into the previous op or paid for as an extra `Mul` at run time), it needs only the Gram
//! matrix of each MatMul's input, which streams over samples in bounded memory, and it minimizes
//! the layer's output error directly rather than searching one scale per channel.
//!
//! With `act_order`, columns go in order of decreasing `H[i,i]` (the most active input features
//! first, while the most columns are left to absorb their error). MatMulNBits and blocked
//! DequantizeLinear have no group index, so blocks stay contiguous along K: with act order, each
//! block's scale is fixed from the original weights before any update ("static groups");
//! without it, a block's scale is chosen from the updated weights when its first column comes.
//!
//! The Hessian is factored in `f64`; the factor is rounded to `f32` once, and the column loop
//! runs in `f32` like the paper's: on MiniLM-L3 the model's cosine to FP32 moved by 2·10⁻⁵,
//! for half the memory traffic and twice the lanes.

use rayon::prelude::*;

use super::block::{BlockQuantized, QuantSpec, RowMajor, block_params};
use super::gptq_tile::{RowOut, TILE, TileInputs, gptq_tile};
use super::linalg::{LANES, Strides, cholesky_lower, quadratic_forms};
use super::tile32::mac_tile_f32;

/// GPTQ settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Damping added to the Hessian's diagonal, as a fraction of its mean.
    pub damp: f64,
    /// Quantize the most active input features first.
    pub act_order: bool,
    /// Columns per lazy batch update (rounded up to whole blocks).
    pub batch: usize,
}

impl Default for GptqOptions {
    fn default() -> GptqOptions {
        GptqOptions { damp: 0.01, act_order: false, batch: 32 }
    }
}

/// Why GPTQ could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    #[error("the Gram matrix has {got} entries, expected {k}×{k}")]
    GramSize { got: usize, k: usize },
    #[error("the Hessian is not positive definite even with damping {damp}")]
    NotPositiveDefinite { damp: f64 },
    #[error("the Gram matrix holds a value that is not finite")]
    NotFinite,
}

/// What GPTQ needs from a layer's input, prepared once and shared by every layer that reads
/// it (Q, K and V projections read the same activation).
#[derive(Debug, Clone)]
pub struct Hessian {
    pub k: usize,
    /// Column order.
    pub perm: Vec<usize>,
    /// Upper Cholesky factor `V` of the damped, permuted Hessian (`H = VVᵀ`), row-major; empty
    /// after [`Hessian::release_factor`].
    pub v: Vec<f64>,
    /// `V` rounded to `f32` in panels of [`LANES`] columns, each panel's `k` rows contiguous
    /// (entry `(t, c)` at [`panel_index`]; the last panel zero-padded): the column loop reads a
    /// panel front to back, which the prefetcher follows, where rows of `V` a row's length
    /// apart missed the cache on every step.
    pub vf: Vec<f32>,
    /// Each input feature's share of the Hessian diagonal, for the scale search (K order).
    pub importance: Vec<f32>,
    pub act_order: bool,
    /// The damping that made it factorable.
    pub damp: f64,
    /// What was added to each diagonal entry (permuted order): the damping, and 1 for an
    /// input feature that is always zero. GPTQ's own error is against the damped matrix.
    pub added: Vec<f64>,
    /// What GPTQ keeps of `V` once it is released: the inverses of its diagonal blocks of one
    /// width.
    inverses: Option<(usize, Vec<Vec<f64>>)>,
}

impl Hessian {
    /// Prepares the Gram matrix `h` (`k×k`, row-major) of a layer's input. Damping grows ten
    /// times at a time (to at most 10× the mean diagonal) until the matrix factors.
    pub fn new(h: &[f64], k: usize, options: &GptqOptions) -> Result<Hessian, GptqError> {
        Hessian::from_gram(h.to_vec(), k, options)
    }

    /// [`Hessian::new`] on a symmetric Gram matrix it may overwrite: without act order the
    /// factor is computed in the matrix's own memory (for K = 1536, 18 MB less to allocate and
    /// fault in).
    pub fn from_gram(mut h: Vec<f64>, k: usize, options: &GptqOptions) -> Result<Hessian, GptqError> {
        if h.len() != k * k {
            return Err(GptqError::GramSize { got: h.len(), k });
        }
        if h.iter().any(|v| !v.is_finite()) {
            return Err(GptqError::NotFinite);
        }
        let diag: Vec<f64> = (0..k).map(|i| h[i * k + i]).collect();
        // Column order: most active input features first under act order.
        let mut perm: Vec<usize> = (0..k).collect();
        if options.act_order {
            perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
        }
        let mean_diag = (diag.iter().sum::<f64>() / k.max(1) as f64).max(f64::MIN_POSITIVE);
        // The permuted matrix, reversed (`JHJ`) for the factorization: in the identity order,
        // the matrix read backwards.
        let mut rev = if options.act_order {
            let mut rev = vec![0.0f64; k * k];
            for (i, &pi) in perm.iter().enumerate() {
                let row = &mut rev[(k - 1 - i) * k..(k - i) * k];
                for (j, &pj) in perm.iter().enumerate() {
                    row[k - 1 - j] = h[pi * k + pj];
                }
            }
            rev
        } else {
            h.reverse();
            h
        };
        let mut damp = options.damp.max(0.0);
        let (v, added) = loop {
            let mut added = vec![0.0f64; k];
            for (i, &pi) in perm.iter().enumerate() {
                // An input feature that is always zero: its weights do not matter, keep it solvable.
                if diag[pi] == 0.0 {
                    added[i] = 1.0;
                }
                added[i] += damp * mean_diag;
                rev[(k - 1 - i) * (k + 1)] = diag[pi] + added[i];
            }
            // JHJ = LLᵀ gives H = VVᵀ with V = JLJ: the factor read backwards.
            if cholesky_lower(&mut rev, k) {
                rev.reverse();
                break (rev, added);
            }
            if damp >= 10.0 {
                return Err(GptqError::NotPositiveDefinite { damp });
            }
            damp = if damp == 0.0 { 0.01 } else { damp * 10.0 };
            // A failed factorization wrote the lower triangle only: the matrix is symmetric,
            // so the upper one gives it back.
            for r in 0..k {
                for c in 0..r {
                    rev[r * k + c] = rev[c * k + r];
                }
            }
        };
        let importance = diag.iter().map(|&d| (d / mean_diag) as f32).collect();
        let mut vf = vec![0.0f32; k.div_ceil(LANES) * LANES * k];
        for (t, src) in v.chunks_exact(k).enumerate() {
            for (c, &s) in src.iter().enumerate() {
                vf[panel_index(k, t, c)] = s as f32;
            }
        }
        Ok(Hessian { k, perm, v, vf, importance, act_order: options.act_order, damp, added, inverses: None })
    }

    /// Keeps what GPTQ at blocks of `block` reads of the `f64` factor (the inverses of its
    /// diagonal blocks) and frees the rest: for K = 1536, 18 MB less held while the layers
    /// that read this input are quantized. Other block sizes then work from the `f32` factor.
    pub fn release_factor(&mut self, block: usize) {
        if !self.act_order && block > 0 && self.v.len() == self.k * self.k {
            self.inverses = Some((block, diagonal_block_inverses(&self.v, self.k, block)));
        }
        self.v = Vec::new();
    }

    /// The inverses of `V`'s diagonal blocks of `block` columns: kept, or computed from `V` in
    /// `f64` (or in `f32` once released).
    fn block_inverses(&self, block: usize) -> std::borrow::Cow<'_, [Vec<f64>]> {
        match &self.inverses {
            Some((b, inverses)) if *b == block => std::borrow::Cow::Borrowed(inverses),
            _ if self.v.len() == self.k * self.k => {
                std::borrow::Cow::Owned(diagonal_block_inverses(&self.v, self.k, block))
            }
            _ => {
                let k = self.k;
                let v: Vec<f64> = (0..k * k).map(|i| f64::from(self.vf[panel_index(k, i / k, i % k)])).collect();
                std::borrow::Cow::Owned(diagonal_block_inverses(&v, k, block))
            }
        }
    }
}

/// Where entry `(t, c)` of a `k×k` matrix stored in panels of [`LANES`] columns lies.
#[inline(always)]
pub(crate) fn panel_index(k: usize, t: usize, c: usize) -> usize {
    (c / LANES) * k * LANES + t * LANES + c % LANES
}

/// Quantizes `w` (rows of K) with GPTQ against the Gram matrix `h` (`k×k`, row-major) of the
/// layer's input.
pub fn gptq(w: &RowMajor, h: &[f64], spec: QuantSpec, options: &GptqOptions) -> Result<BlockQuantized, GptqError> {
    let hessian = Hessian::new(h, w.k, options)?;
    Ok(gptq_prepared(w, &hessian, spec, options.batch))
}

/// [`gptq`] with the input's [`Hessian`] prepared; `batch` columns per lazy update.
pub fn gptq_prepared(w: &RowMajor, hessian: &Hessian, spec: QuantSpec, batch: usize) -> BlockQuantized {
    gptq_with_error(w, hessian, spec, batch).0
}

/// [`gptq_prepared`], and the layer's output error on the calibration data (as
/// [`output_error`] computes it) as a by-product: with `E = (W − Q)V`, the damped error is
/// `‖E‖²`, from which the damping's share `Σ added·(w − q)²` is taken back.
pub fn gptq_with_error(w: &RowMajor, hessian: &Hessian, spec: QuantSpec, batch: usize) -> (BlockQuantized, f64) {
    let (n, k) = (w.n, w.k);
    let (perm, importance) = (&hessian.perm, &hessian.importance);
    let vf = &hessian.vf;
    let block = spec.block;
    let kb = k.div_ceil(block);
    let mut scales = vec![0.0f32; n * kb];
    let mut zps = vec![0u8; n * kb];
    if hessian.act_order {
        for r in 0..n {
            for b in 0..kb {
                let range = b * block..((b + 1) * block).min(k);
                let (s, z) = block_params(&w.row(r)[range.clone()], Some(&importance[range]), spec);
                scales[r * kb + b] = s;
                zps[r * kb + b] = z;
            }
        }
    }

    // Rows are independent given V: tiles of rows run on their own threads, so the result does
    // not depend on the thread count.
    let batch = batch.max(1).div_ceil(block) * block;
    let block_inverses =
        if hessian.act_order { std::borrow::Cow::Owned(Vec::new()) } else { hessian.block_inverses(block) };
    let inputs =
        TileInputs { perm, v: vf, block_inverses: &block_inverses, importance, added: &hessian.added, spec, batch };
    let tiles: Vec<Vec<RowOut>> = (0..n.div_ceil(TILE))
        .into_par_iter()
        .map(|tile| {
            let range = tile * TILE..((tile + 1) * TILE).min(n);
            let rows: Vec<&[f32]> = range.clone().map(|r| w.row(r)).collect();
            let fixed: Vec<_> = range
                .map(|r| hessian.act_order.then(|| (&scales[r * kb..(r + 1) * kb], &zps[r * kb..(r + 1) * kb])))
                .collect();
            gptq_tile(&rows, &fixed, &inputs)
        })
        .collect();
    let rows = tiles.into_iter().flatten();
    let mut codes = Vec::with_capacity(n * k);
    let mut error = 0.0;
    for (r, row) in rows.into_iter().enumerate() {
        codes.extend(row.codes);
        scales[r * kb..(r + 1) * kb].copy_from_slice(&row.scales);
        zps[r * kb..(r + 1) * kb].copy_from_slice(&row.zps);
        error += row.error;
    }
    let q = BlockQuantized { spec, n, k, codes, scales, zero_points: (!spec.symmetric).then_some(zps) };
    (q, error.max(0.0))
}

/// The inverses of the diagonal blocks of the upper-triangular `v` (`k×k`), `block` wide (the
/// last may be narrower), each row-major: back substitution, column by column.
fn diagonal_block_inverses(v: &[f64], k: usize, block: usize) -> Vec<Vec<f64>> {
    (0..k.div_ceil(block))
        .map(|b| {
            let c0 = b * block;
            let g = block.min(k - c0);
            let t = |i: usize, j: usize| v[(c0 + i) * k + c0 + j];
            let mut x = vec![0.0f64; g * g];
            for j in 0..g {
                x[j * g + j] = 1.0 / t(j, j);
                for i in (0..j).rev() {
                    let s: f64 = (i + 1..=j).map(|m| t(i, m) * x[m * g + j]).sum();
                    x[i * g + j] = -s / t(i, i);
                }
            }
            x
        })
        .collect()
}

/// [`output_error`] through the prepared factor, as [`gptq_with_error`] measures its own: with
/// `E = (W − Q)V`, `‖E‖²` less the damping's share, `E` a tile of rows at a time in the `f32`
/// register tile (tiles in parallel, summed in order). Costs half of [`output_error`] and
/// compares like with like.
pub fn output_error_prepared(w: &RowMajor, q: &BlockQuantized, hessian: &Hessian) -> f64 {
    let (n, k) = (w.n, w.k);
    let per_tile: Vec<f64> = (0..n.div_ceil(TILE))
        .into_par_iter()
        .map(|tile| {
            let range = tile * TILE..((tile + 1) * TILE).min(n);
            // dt[c·TILE + r]: row r's difference at column c (in `perm` order).
            let mut dt = vec![0.0f32; k * TILE];
            let mut share = 0.0f64;
            let mut b = vec![0.0f32; k];
            for (r, row) in range.enumerate() {
                q.dequantize_row(row, &mut b);
                let a = w.row(row);
                for (c, &p) in hessian.perm.iter().enumerate() {
                    let delta = a[p] - b[p];
                    dt[c * TILE + r] = delta;
                    share += hessian.added[c] * f64::from(delta) * f64::from(delta);
                }
            }
            let mut total = 0.0f64;
            let mut c0 = 0;
            while c0 < k {
                let width = (k - c0).min(LANES);
                let mut acc = [[0.0f32; LANES]; TILE];
                // `V` is upper triangular: column c takes rows up to c only.
                let panel = &hessian.vf[panel_index(k, 0, c0)..];
                mac_tile_f32(&dt, Strides { t: TILE, r: 1 }, panel, LANES, c0 + width, &mut acc);
                for acc in &acc {
                    total += acc[..width].iter().map(|&e| f64::from(e) * f64::from(e)).sum::<f64>();
                }
                c0 += width;
            }
            total - share
        })
        .collect();
    per_tile.iter().sum::<f64>().max(0.0)
}

/// The layer's summed squared output error over the calibration rows, `Σ_rows ‖x(W − Q)ᵀ‖²
/// = Σ_n (w_n − q_n) H (w_n − q_n)ᵀ`, of a quantized weight.
pub fn output_error(w: &RowMajor, q: &BlockQuantized, h: &[f64]) -> f64 {
    let d = q.dequantize();
    let e: Vec<f64> = w.values.iter().zip(&d.values).map(|(&a, &b)| f64::from(a) - f64::from(b)).collect();
    quadratic_forms(&e, h, w.k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int4::block::rtn;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn stream(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// An `n × k` weight of uniform values in [-1, 1).
    fn random_weights(n: usize, k: usize, seed: u64) -> RowMajor {
        let mut r = stream(seed);
        RowMajor { n, k, values: (0..n * k).map(|_| r() as f32).collect() }
    }

    /// Activations with correlated features and a few strong ones, and their Gram matrix.
    fn correlated_gram(k: usize, rows: usize, seed: u64) -> Vec<f64> {
        let mut r = stream(seed);
        let mut h = vec![0.0; k * k];
        for _ in 0..rows {
            let base = r();
            let x: Vec<f64> = (0..k).map(|i| base * 0.8 + r() * if i % 7 == 0 { 3.0 } else { 0.5 }).collect();
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += x[i] * x[j];
                }
            }
        }
        h
    }

    #[test]
    fn the_hessian_factor_is_exact() {
        let k = 9;
        let h = correlated_gram(k, 40, 3);
        for act_order in [false, true] {
            let hs = Hessian::new(&h, k, &GptqOptions { act_order, damp: 0.0, ..Default::default() }).unwrap();
            let v = &hs.v;
            // V is upper triangular and V·Vᵀ is the permuted matrix.
            for i in 0..k {
                for j in 0..k {
                    if j < i {
                        assert_eq!(v[i * k + j], 0.0);
                    }
                    let s: f64 = (0..k).map(|t| v[i * k + t] * v[j * k + t]).sum();
                    let want = h[hs.perm[i] * k + hs.perm[j]];
                    assert!((s - want).abs() < 1e-9 * want.abs().max(1.0), "({i},{j}) = {s} vs {want}");
                }
            }
        }
        // Not positive definite even with the largest damping: refused.
        let mut bad = h.clone();
        bad[0] = -1e9;
        assert!(matches!(Hessian::new(&bad, k, &GptqOptions::default()), Err(GptqError::NotPositiveDefinite { .. })));
    }

    #[test]
    fn a_failed_factorization_is_retried_on_the_matrix_it_started_from() {
        // Fewer rows than features, less a twentieth of the mean diagonal: not positive
        // definite undamped nor at 1% damping, positive definite at 10%.
        let k = 24;
        let mut h = correlated_gram(k, 10, 6);
        let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        for i in 0..k {
            h[i * k + i] -= 0.05 * mean;
        }
        for act_order in [false, true] {
            let options = |damp| GptqOptions { act_order, damp, ..Default::default() };
            let retried = Hessian::new(&h, k, &options(0.0)).unwrap();
            assert_eq!(retried.damp, 0.1);
            // The same factor as a first try at that damping: the retries started from the
            // undamped matrix each time, not from what the failed tries left.
            let direct = Hessian::new(&h, k, &options(0.1)).unwrap();
            assert_eq!(direct.damp, 0.1);
            assert_eq!(retried.v, direct.v, "act_order {act_order}");
            assert_eq!(retried.vf, direct.vf);
            // In the matrix's own memory too.
            let owned = Hessian::from_gram(h.clone(), k, &options(0.0)).unwrap();
            assert_eq!(owned.v, direct.v);
        }
    }

    #[test]
    fn a_released_factor_quantizes_its_block_size_alike() {
        let (n, k) = (12, 64);
        let h = correlated_gram(k, 200, 2);
        let w = random_weights(n, k, 3);
        let spec = |block| QuantSpec { bits: 4, block, symmetric: true, negative_scales: true };
        let full = Hessian::new(&h, k, &GptqOptions::default()).unwrap();
        let mut released = full.clone();
        released.release_factor(16);
        assert!(released.v.is_empty());
        // The kept block inverses are the ones the full factor gives: the same weights.
        assert_eq!(gptq_with_error(&w, &released, spec(16), 32), gptq_with_error(&w, &full, spec(16), 32));
        // Another block size works from the f32 factor: close to, not exactly, the f64 result.
        let (q, e) = gptq_with_error(&w, &released, spec(32), 32);
        let (q_full, e_full) = gptq_with_error(&w, &full, spec(32), 32);
        assert!((e - e_full).abs() < 1e-3 * e_full, "{e} vs {e_full}");
        let same = q.codes.iter().zip(&q_full.codes).filter(|(a, b)| a == b).count();
        assert!(same * 100 >= 99 * q.codes.len(), "{same} of {}", q.codes.len());
    }

    #[test]
    fn gptq_beats_rtn_on_the_output_error() {
        let (n, k) = (24, 64);
        let h = correlated_gram(k, 256, 11);
        let w = random_weights(n, k, 5);
        for symmetric in [true, false] {
            let spec = QuantSpec { bits: 4, block: 16, symmetric, negative_scales: true };
            let base = output_error(&w, &rtn(&w, spec, None), &h);
            for act_order in [false, true] {
                let q = gptq(&w, &h, spec, &GptqOptions { act_order, batch: 32, ..Default::default() }).unwrap();
                let e = output_error(&w, &q, &h);
                assert!(e < 0.8 * base, "symmetric {symmetric} act_order {act_order}: gptq {e} vs rtn {base}");
            }
        }
    }

    #[test]
    fn the_by_product_error_is_the_output_error() {
        let (n, k) = (20, 48);
        let mut h = correlated_gram(k, 200, 4);
        // A dead input feature: its diagonal gets 1 added on top of the damping.
        for j in 0..k {
            h[5 * k + j] = 0.0;
            h[j * k + 5] = 0.0;
        }
        let w = random_weights(n, k, 8);
        for act_order in [false, true] {
            let options = GptqOptions { act_order, batch: 16, ..Default::default() };
            let spec = QuantSpec { bits: 4, block: 16, symmetric: false, negative_scales: false };
            let hessian = Hessian::new(&h, k, &options).unwrap();
            let (q, err) = gptq_with_error(&w, &hessian, spec, options.batch);
            let want = output_error(&w, &q, &h);
            // V in f32: the sums agree to f32's precision.
            assert!((err - want).abs() < 1e-4 * want, "act_order {act_order}: {err} vs {want}");
            // The same measure of any quantization, through the factor.
            let base = rtn(&w, spec, None);
            let (got, want) = (output_error_prepared(&w, &base, &hessian), output_error(&w, &base, &h));
            assert!((got - want).abs() < 1e-4 * want, "act_order {act_order}: {got} vs {want}");
            // Not the error of another quantization of the same weight.
            assert!((output_error(&w, &rtn(&w, spec, None), &h) - err).abs() > 1e-3 * want);
        }
    }

    #[test]
    fn gptq_with_no_activation_signal_matches_the_weights_closely() {
        // A Gram matrix of the identity: every input feature alike and independent. GPTQ has
        // nothing to trade, so it rounds like RTN with the same scales.
        let (n, k) = (4, 32);
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            h[i * k + i] = 1.0;
        }
        let w = random_weights(n, k, 9);
        let spec = QuantSpec { bits: 4, block: 32, symmetric: true, negative_scales: false };
        let q = gptq(&w, &h, spec, &GptqOptions::default()).unwrap();
        assert_eq!(q, rtn(&w, spec, Some(&vec![1.0; k])));
    }

    #[test]
    fn bad_gram_matrices_are_refused() {
        let w = RowMajor { n: 1, k: 4, values: vec![0.5; 4] };
        let spec = QuantSpec { bits: 4, block: 16, symmetric: true, negative_scales: false };
        let err = gptq(&w, &[1.0; 9], spec, &GptqOptions::default()).unwrap_err();
        assert!(matches!(err, GptqError::GramSize { got: 9, k: 4 }));
        let mut h = vec![0.0; 16];
        h[0] = f64::NAN;
        assert_eq!(gptq(&w, &h, spec, &GptqOptions::default()).unwrap_err(), GptqError::NotFinite);
    }
}
