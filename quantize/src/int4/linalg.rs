//! The dense linear algebra GPTQ needs, on row-major `f64` matrices: Cholesky factorization,
//! triangular inverse and quadratic forms.
//!
//! All three are memory-bound when done one row or column at a time (a 1536×1536 matrix is
//! 18 MB). Here [`LANES`] rows (or columns) go together: they are packed side by side, so each
//! element of the big matrix is loaded once for all of them and the inner loop vectorizes across
//! the lanes. Every output element is still computed by one sequence of operations that depends
//! only on the inputs, so results do not depend on the thread count.

use rayon::prelude::*;

/// Rows or columns handled together.
pub const LANES: usize = 16;

/// `out[r] = Σ_t a[t] · p[t·LANES + r]`, each sum in `t` order. On x86-64 it runs in the
/// widest vectors the CPU has; Rust never fuses a multiply and an add, so every path gives the
/// same bits.
#[inline]
fn dots(a: &[f64], p: &[f64]) -> [f64; LANES] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { dots_avx512(a, p) };
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: as above.
            return unsafe { dots_avx(a, p) };
        }
    }
    dots_body(a, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dots_avx512(a: &[f64], p: &[f64]) -> [f64; LANES] {
    dots_body(a, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dots_avx(a: &[f64], p: &[f64]) -> [f64; LANES] {
    dots_body(a, p)
}

/// Four partial sums per lane (`t` modulo 4), added in a fixed order at the end: four
/// independent chains hide the latency of the additions.
#[inline(always)]
fn dots_body(a: &[f64], p: &[f64]) -> [f64; LANES] {
    let mut acc = [[0.0f64; LANES]; 4];
    let lanes = p.as_chunks::<LANES>().0;
    let whole = a.len() / 4 * 4;
    for (xs, ls) in a[..whole].as_chunks::<4>().0.iter().zip(lanes.as_chunks::<4>().0) {
        for q in 0..4 {
            for r in 0..LANES {
                acc[q][r] += xs[q] * ls[q][r];
            }
        }
    }
    for (&x, lane) in a[whole..].iter().zip(&lanes[whole..]) {
        for r in 0..LANES {
            acc[0][r] += x * lane[r];
        }
    }
    let mut out = [0.0f64; LANES];
    for r in 0..LANES {
        out[r] = (acc[0][r] + acc[1][r]) + (acc[2][r] + acc[3][r]);
    }
    out
}

/// A dot product with eight independent accumulators summed in a fixed order.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// In-place lower Cholesky factor of a row-major `k×k` symmetric matrix (the upper triangle is
/// zeroed); `false` if it is not positive definite.
///
/// Columns go [`LANES`] at a time: the group's rows are finished first (they only need earlier
/// columns), packed, and then every row below takes the group's columns in one pass over its
/// earlier entries, rows in parallel.
pub fn cholesky_lower(a: &mut [f64], k: usize) -> bool {
    let mut packed = vec![0.0f64; k * LANES];
    let mut j0 = 0;
    while j0 < k {
        let j1 = (j0 + LANES).min(k);
        // The group's own rows, columns j0..=row.
        for j in j0..j1 {
            for c in j0..=j {
                let (head, tail) = a.split_at_mut(j * k);
                let row_c: &[f64] = if c == j { &tail[..c] } else { &head[c * k..c * k + c] };
                let s = tail[c] - dot(&tail[..c], row_c);
                if c == j {
                    if s <= 0.0 || !s.is_finite() {
                        return false;
                    }
                    tail[c] = s.sqrt();
                } else {
                    tail[c] = s / head[c * k + c];
                }
            }
        }
        // Pack rows j0..j1 over columns 0..j0: packed[t·LANES + r] = L[j0 + r][t].
        packed[..j0 * LANES].fill(0.0);
        for r in 0..j1 - j0 {
            let row = &a[(j0 + r) * k..(j0 + r) * k + j0];
            for (t, &v) in row.iter().enumerate() {
                packed[t * LANES + r] = v;
            }
        }
        let block: Vec<f64> = a[j0 * k..j1 * k].to_vec();
        let packed = &packed[..j0 * LANES];
        a[j1 * k..].par_chunks_mut(k).for_each(|row| {
            let acc = dots(&row[..j0], packed);
            for (r, j) in (j0..j1).enumerate() {
                let lj = &block[r * k..(r + 1) * k];
                let mut s = row[j] - acc[r];
                for t in j0..j {
                    s -= row[t] * lj[t];
                }
                row[j] = s / lj[j];
            }
        });
        j0 = j1;
    }
    for i in 0..k {
        a[i * k + i + 1..(i + 1) * k].fill(0.0);
    }
    true
}

/// The inverse of a row-major lower-triangular matrix, returned transposed (row `j` holds
/// column `j` of `L⁻¹`, nonzero from `j` on). Columns are independent: [`LANES`] at a time,
/// groups in parallel.
pub fn invert_lower_transposed(l: &[f64], k: usize) -> Vec<f64> {
    let mut xt = vec![0.0f64; k * k];
    xt.par_chunks_mut(k * LANES).enumerate().for_each(|(g, out)| {
        let j0 = g * LANES;
        let width = out.len() / k;
        // packed[(i - j0)·LANES + r] = column j0 + r of L⁻¹ at row i.
        let mut packed = vec![0.0f64; (k - j0) * LANES];
        for i in j0..k {
            let acc = dots(&l[i * k + j0..i * k + i], &packed[..(i - j0) * LANES]);
            let d = l[i * k + i];
            let lane = &mut packed[(i - j0) * LANES..(i - j0 + 1) * LANES];
            for r in 0..width {
                lane[r] = match (j0 + r).cmp(&i) {
                    std::cmp::Ordering::Greater => 0.0,
                    std::cmp::Ordering::Equal => 1.0 / d,
                    std::cmp::Ordering::Less => -acc[r] / d,
                };
            }
        }
        for r in 0..width {
            let col = &mut out[r * k..(r + 1) * k];
            for i in j0 + r..k {
                col[i] = packed[(i - j0) * LANES + r];
            }
        }
    });
    xt
}

/// `Σ_n e_n H e_nᵀ` over the rows of `e` (`n×k`) for a symmetric `h` (`k×k`): [`LANES`] rows
/// at a time, each pass over the upper triangle of `h`, groups in parallel and summed in order.
pub fn quadratic_forms(e: &[f64], h: &[f64], k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let per_group: Vec<f64> = e
        .par_chunks(k * LANES)
        .map(|rows| {
            let width = rows.len() / k;
            let mut packed = vec![0.0f64; k * LANES];
            for (r, row) in rows.chunks_exact(k).enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    packed[t * LANES + r] = v;
                }
            }
            let mut totals = [0.0f64; LANES];
            for i in 0..k {
                let off = dots(&h[i * k + i + 1..(i + 1) * k], &packed[(i + 1) * LANES..]);
                let lane = &packed[i * LANES..(i + 1) * LANES];
                for r in 0..LANES {
                    totals[r] += lane[r] * (h[i * k + i] * lane[r] + 2.0 * off[r]);
                }
            }
            totals[..width].iter().sum::<f64>()
        })
        .collect();
    per_group.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(k: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let x: Vec<f64> = (0..k * (k + 3)).map(|_| next()).collect();
        let mut h = vec![0.0; k * k];
        for row in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += row[i] * row[j];
                }
            }
        }
        h
    }

    #[test]
    fn cholesky_and_inverse_reproduce_the_matrix() {
        // Sizes around the lane width: partial groups, exact groups, several groups.
        for k in [1, 5, 16, 17, 40] {
            let h = spd(k, k as u64);
            let mut l = h.clone();
            assert!(cholesky_lower(&mut l, k), "k = {k}");
            for i in 0..k {
                for j in 0..k {
                    let s: f64 = (0..k).map(|t| l[i * k + t] * l[j * k + t]).sum();
                    assert!((s - h[i * k + j]).abs() < 1e-9, "k {k} ({i},{j}): {s} vs {}", h[i * k + j]);
                    if j > i {
                        assert_eq!(l[i * k + j], 0.0);
                    }
                }
            }
            let xt = invert_lower_transposed(&l, k);
            for i in 0..k {
                for j in 0..k {
                    let s: f64 = (0..k).map(|t| l[i * k + t] * xt[j * k + t]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-8, "k {k} ({i},{j}): {s}");
                }
            }
        }
    }

    #[test]
    fn indefinite_matrices_are_refused() {
        let k = 20;
        let mut h = spd(k, 3);
        h[18 * k + 18] = -1.0;
        assert!(!cholesky_lower(&mut h, k));
    }

    #[test]
    fn quadratic_forms_match_the_direct_sum() {
        let k = 19;
        let h = spd(k, 7);
        let n = 21;
        let e: Vec<f64> = (0..n * k).map(|i| ((i * 37 % 11) as f64 - 5.0) / 7.0).collect();
        let mut want = 0.0;
        for r in 0..n {
            for i in 0..k {
                for j in 0..k {
                    want += e[r * k + i] * h[i * k + j] * e[r * k + j];
                }
            }
        }
        let got = quadratic_forms(&e, &h, k);
        assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "{got} vs {want}");
        assert_ne!(quadratic_forms(&e[..k], &h, k), got);
    }
}
