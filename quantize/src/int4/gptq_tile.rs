//! GPTQ's column loop on a tile of weight rows: the kernel under [`super::gptq`], apart from
//! the Hessian's preparation and the error measures. Every row's arithmetic is what it would be
//! alone, whichever tile or thread computes it.

use super::block::{QuantSpec, block_params, code_of};
use super::gptq::panel_index;
use super::linalg::{LANES, MR, Strides};
use super::tile32::mac_tile_f32;

/// One quantized row: codes in K order, and its blocks' parameters.
pub(super) struct RowOut {
    pub(super) codes: Vec<u8>,
    pub(super) scales: Vec<f32>,
    pub(super) zps: Vec<u8>,
    /// `(w − q) H (w − q)ᵀ` against the undamped Hessian.
    pub(super) error: f64,
}

/// Rows quantized together: each span of `V` is loaded once for all of them and then read
/// from the L1 cache.
pub(super) const TILE: usize = MR;

/// The shared inputs of every tile of a layer.
pub(super) struct TileInputs<'a> {
    pub(super) perm: &'a [usize],
    /// `V` in `f32`, in panels ([`panel_index`]).
    pub(super) v: &'a [f32],
    /// Without act order: the inverse of each `block`×`block` diagonal block of `V`.
    pub(super) block_inverses: &'a [Vec<f64>],
    pub(super) importance: &'a [f32],
    pub(super) added: &'a [f64],
    pub(super) spec: QuantSpec,
    pub(super) batch: usize,
}

/// [`gptq_tile_body`] in the widest vectors the CPU has: its updates are element-wise chains of
/// exactly rounded fused multiply-adds (Rust fuses nothing else), so every path gives the same
/// bits.
pub(super) fn gptq_tile(rows: &[&[f32]], fixed: &[Option<(&[f32], &[u8])>], t: &TileInputs) -> Vec<RowOut> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { gptq_tile_avx512(rows, fixed, t) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { gptq_tile_avx(rows, fixed, t) };
        }
    }
    gptq_tile_body(rows, fixed, t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn gptq_tile_avx512(rows: &[&[f32]], fixed: &[Option<(&[f32], &[u8])>], t: &TileInputs) -> Vec<RowOut> {
    gptq_tile_body(rows, fixed, t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gptq_tile_avx(rows: &[&[f32]], fixed: &[Option<(&[f32], &[u8])>], t: &TileInputs) -> Vec<RowOut> {
    gptq_tile_body(rows, fixed, t)
}

/// GPTQ on up to [`TILE`] rows of the weight, left-looking: with `H = VVᵀ` (`V` upper), the
/// weight column `c` is quantized at `w_c + (Σ_{i<c} δ_i V_ic) / V_cc`, where `δ_i = w_i − q_i`
/// are the earlier columns' differences from the original weight: the same values GPTQ's
/// error propagation through `V⁻¹` reaches, without inverting anything. The sums over the
/// columns before a batch go through register tiles; each sum is one chain of fused
/// multiply-adds in column order, so a row's arithmetic is what it would be alone.
///
/// Without act order a block's parameters are chosen from its weights as propagated up to its
/// first column `c`: `w_m + Σ_{c≤i≤m} S_i (V_blk⁻¹)_im` with `S_i = Σ_{j<c} δ_j V_ji`.
#[inline(always)]
fn gptq_tile_body(rows: &[&[f32]], fixed: &[Option<(&[f32], &[u8])>], t: &TileInputs) -> Vec<RowOut> {
    let (perm, v, spec) = (t.perm, t.v, t.spec);
    let k = perm.len();
    let block = spec.block;
    let kb = k.div_ceil(block);
    let mut outs: Vec<RowOut> = fixed
        .iter()
        .map(|f| {
            let (scales, zps) = match f {
                Some((s, z)) => (s.to_vec(), z.to_vec()),
                None => (vec![0.0f32; kb], vec![0u8; kb]),
            };
            RowOut { codes: vec![0u8; k], scales, zps, error: 0.0 }
        })
        .collect();
    let mut have: Vec<Vec<bool>> = fixed.iter().map(|f| vec![f.is_some(); kb]).collect();
    // w[r·k + c]: row r's original weight of column c, in `perm` order; unused rows stay 0.
    // wc[c·TILE + r]: the same, rows side by side, for the column step.
    let mut w = vec![0.0f32; k * TILE];
    let mut wc = vec![0.0f32; k * TILE];
    for (r, row) in rows.iter().enumerate() {
        for (c, &p) in perm.iter().enumerate() {
            w[r * k + c] = row[p];
            wc[c * TILE + r] = row[p];
        }
    }
    let qmax = spec.qmax();
    // A row past the end of the weight: zero weights on a unit grid stay zero.
    let idle = (1.0f32, if spec.symmetric { f32::from(spec.center()) } else { 0.0 });
    let mut vals = Vec::with_capacity(block);
    // dt[c·TILE + r]: δ of row r at column c, rows side by side.
    let mut dt = vec![0.0f32; k * TILE];
    // sums[(c - i1)·TILE + r] = Σ_{i < done[c - i1]} δ_i V_ic for the batch's columns.
    let mut sums = vec![0.0f32; t.batch * TILE];
    let mut done = vec![0usize; t.batch];
    let mut damped = [0.0f64; TILE];
    let mut share = [0.0f64; TILE];
    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + t.batch).min(k);
        // The earlier columns' share, LANES columns at a time through one register tile.
        let mut c0 = i1;
        while c0 < i2 {
            let width = (i2 - c0).min(LANES);
            let mut acc = [[0.0f32; LANES]; TILE];
            // `V`'s last panel is padded: a narrower last group reads zeros. Batches hold whole
            // blocks of at least `LANES` columns, so `c0` starts a panel.
            if i1 > 0 {
                mac_tile_f32(&dt, Strides { t: TILE, r: 1 }, &v[panel_index(k, 0, c0)..], LANES, i1, &mut acc);
            }
            for c in 0..width {
                for r in 0..TILE {
                    sums[(c0 + c - i1) * TILE + r] = acc[r][c];
                }
            }
            c0 += width;
        }
        done[..i2 - i1].fill(i1);
        for c in i1..i2 {
            let orig = perm[c];
            let b = orig / block;
            if have.iter().any(|h| !h[b]) {
                // Without act order columns come in K order and batches hold whole blocks:
                // block b starts at column c and ends inside the batch.
                let end = (c + block).min(k);
                let g = end - c;
                for m in c..end {
                    advance(v, k, (i1, m, c), &mut sums, &mut done, &dt);
                }
                let inv = &t.block_inverses[b];
                // pushed[(m - c)·TILE + r] = Σ_{c≤i≤m} S_i (V_blk⁻¹)_im, rows side by side, each
                // sum in registers.
                let mut pushed = vec![0.0f64; g * TILE];
                for m in c..end {
                    let mut p = [0.0f64; TILE];
                    for i in c..=m {
                        let x = inv[(i - c) * g + (m - c)];
                        let s = &sums[(i - i1) * TILE..(i - i1 + 1) * TILE];
                        for r in 0..TILE {
                            p[r] += f64::from(s[r]) * x;
                        }
                    }
                    pushed[(m - c) * TILE..(m - c + 1) * TILE].copy_from_slice(&p);
                }
                for (r, out) in outs.iter_mut().enumerate() {
                    if have[r][b] {
                        continue;
                    }
                    vals.clear();
                    vals.extend((c..end).map(|m| (f64::from(w[r * k + m]) + pushed[(m - c) * TILE + r]) as f32));
                    let (s, z) = block_params(&vals, Some(&t.importance[c..end]), spec);
                    out.scales[b] = s;
                    out.zps[b] = z;
                    have[r][b] = true;
                }
            }
            advance(v, k, (i1, c, c), &mut sums, &mut done, &dt);
            let vcc = v[panel_index(k, c, c)];
            // The column's step for every row at once (the loops over rows vectorize).
            let (mut sc, mut zc) = ([idle.0; TILE], [idle.1; TILE]);
            for (r, out) in outs.iter().enumerate() {
                (sc[r], zc[r]) = (out.scales[b], f32::from(out.zps[b]));
            }
            let (wcol, scol) = (&wc[c * TILE..(c + 1) * TILE], &sums[(c - i1) * TILE..(c - i1 + 1) * TILE]);
            let mut q = [0.0f32; TILE];
            let added = t.added[c];
            let dcol = &mut dt[c * TILE..(c + 1) * TILE];
            for r in 0..TILE {
                let x = wcol[r] + scol[r] / vcc;
                q[r] = code_of(x, sc[r], zc[r], qmax);
                let deq = (q[r] - zc[r]) * sc[r];
                let e = f64::from(x - deq) * f64::from(vcc);
                damped[r] += e * e;
                let delta = wcol[r] - deq;
                dcol[r] = delta;
                share[r] += added * f64::from(delta) * f64::from(delta);
            }
            for (out, &q) in outs.iter_mut().zip(&q) {
                out.codes[orig] = q as u8;
            }
            // A group of `block` columns done: the batch's later columns take its share, column
            // by column of the group (so each sum stays in column order), the later columns
            // independent of each other.
            if (c + 1 - i1).is_multiple_of(block) && c + 1 < i2 {
                let g0 = c + 1 - block;
                // Four later columns at a time, their sums held in registers over the group.
                let mut m = c + 1;
                while m < i2 {
                    let width = (i2 - m).min(4);
                    let mut acc = [[0.0f32; TILE]; 4];
                    for (j, acc) in acc.iter_mut().enumerate().take(width) {
                        acc.copy_from_slice(&sums[(m + j - i1) * TILE..(m + j - i1 + 1) * TILE]);
                    }
                    for i in g0..=c {
                        let d = &dt[i * TILE..(i + 1) * TILE];
                        for (j, acc) in acc.iter_mut().enumerate().take(width) {
                            let x = v[panel_index(k, i, m + j)];
                            for (a, d) in acc.iter_mut().zip(d) {
                                *a = d.mul_add(x, *a);
                            }
                        }
                    }
                    for (j, acc) in acc.iter().enumerate().take(width) {
                        sums[(m + j - i1) * TILE..(m + j - i1 + 1) * TILE].copy_from_slice(acc);
                    }
                    m += width;
                }
                done[c + 1 - i1..i2 - i1].fill(c + 1);
            }
        }
        i1 = i2;
    }
    for (r, out) in outs.iter_mut().enumerate() {
        out.error = damped[r] - share[r];
    }
    outs
}

/// Carries the sum of batch column `c` (the batch starts at `i1`) on over the earlier columns
/// up to `upto`, in column order (`V` in panels, `k×k`); inlined into the vectorized tile body.
#[inline(always)]
fn advance(
    v: &[f32],
    k: usize,
    (i1, c, upto): (usize, usize, usize),
    sums: &mut [f32],
    done: &mut [usize],
    dt: &[f32],
) {
    let from = done[c - i1];
    if from < upto {
        // The sum in registers over the steps.
        let s = &mut sums[(c - i1) * TILE..(c - i1 + 1) * TILE];
        let mut acc = [0.0f32; TILE];
        acc.copy_from_slice(s);
        for i in from..upto {
            let x = v[panel_index(k, i, c)];
            let d = &dt[i * TILE..(i + 1) * TILE];
            for r in 0..TILE {
                acc[r] = d[r].mul_add(x, acc[r]);
            }
        }
        s.copy_from_slice(&acc);
    }
    done[c - i1] = done[c - i1].max(upto);
}
