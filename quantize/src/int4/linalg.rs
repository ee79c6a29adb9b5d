//! The dense linear algebra GPTQ needs, on row-major `f64` matrices: Cholesky factorization
//! and quadratic forms.
//!
//! Both are memory-bound when done one row or column at a time (a 1536×1536 matrix is
//! 18 MB). Here the inner products go through [`mac_tile`]: an [`MR`]×[`LANES`] tile of
//! outputs held in vector registers, so each loaded value feeds 8 or 16 fused multiply-adds.
//! Every output element is still computed by one sequence of operations that depends only on
//! the inputs, so results depend neither on the thread count nor on the vector width.

use rayon::prelude::*;

pub use kiln_calibration::tile::{LANES, MR, Strides, mac_tile, steps_in_bounds};

/// A dot product with eight independent chains of fused multiply-adds, summed in a fixed
/// order; dispatched like [`mac_tile`].
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { dot_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dot_avx512(a: &[f64], b: &[f64]) -> f64 {
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f64], b: &[f64]) -> f64 {
    dot_body(a, b)
}

#[inline(always)]
fn dot_body(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// `acc += Σ_t rows[r][t0 + t] · b[t·b_stride + c]` over `t0..t1` for up to [`MR`] rows `k`
/// apart: read in place when the tile is whole, else packed with zero rows.
fn mac_rows(
    rows: &[f64],
    k: usize,
    (t0, t1): (usize, usize),
    b: &[f64],
    b_stride: usize,
    acc: &mut [[f64; LANES]; MR],
) {
    if rows.len() >= MR * k {
        mac_tile(&rows[t0..], Strides { t: 1, r: k }, b, b_stride, t1 - t0, acc);
        return;
    }
    let mut packed = vec![0.0f64; (t1 - t0) * MR];
    for (r, row) in rows.chunks_exact(k).enumerate() {
        for (t, &v) in row[t0..t1].iter().enumerate() {
            packed[t * MR + r] = v;
        }
    }
    mac_tile(&packed, Strides { t: MR, r: 1 }, b, b_stride, t1 - t0, acc);
}

/// In-place lower Cholesky factor of a row-major `k×k` symmetric matrix (the upper triangle is
/// zeroed); `false` if it is not positive definite.
///
/// Columns go [`LANES`] at a time: the group's rows are finished first (they only need earlier
/// columns), packed, and then the rows below take the group's columns [`MR`] rows at a time in
/// one register tile over their earlier entries, tiles in parallel.
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
        // Rows below, MR at a time: their entries over the earlier columns go through one
        // register tile against the group's rows.
        a[j1 * k..].par_chunks_mut(k * MR).for_each(|rows| {
            let mut acc = [[0.0f64; LANES]; MR];
            mac_rows(rows, k, (0, j0), packed, LANES, &mut acc);
            for (row, acc) in rows.chunks_exact_mut(k).zip(&acc) {
                for (r, j) in (j0..j1).enumerate() {
                    let lj = &block[r * k..(r + 1) * k];
                    let s = (row[j] - acc[r]) - dot(&row[j0..j], &lj[j0..j]);
                    row[j] = s / lj[j];
                }
            }
        });
        j0 = j1;
    }
    for i in 0..k {
        a[i * k + i + 1..(i + 1) * k].fill(0.0);
    }
    true
}

/// `Σ_n e_n H e_nᵀ` over the rows of `e` (`n×k`) for a symmetric `h` (`k×k`), from its upper
/// triangle: for [`MR`] rows and [`LANES`] columns `c` at a time, `Σ_{t<c} e_t h_tc` in a
/// register tile (the block's own rows added after), tiles of rows in parallel and summed in
/// order.
pub fn quadratic_forms(e: &[f64], h: &[f64], k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let per_tile: Vec<f64> = e
        .par_chunks(k * MR)
        .map(|rows| {
            let mut total = 0.0;
            let mut c0 = 0;
            while c0 < k {
                let width = (k - c0).min(LANES);
                let mut acc = [[0.0f64; LANES]; MR];
                if width == LANES {
                    mac_rows(rows, k, (0, c0), &h[c0..], k, &mut acc);
                } else {
                    // The last, narrower block: the same sums, one entry at a time.
                    for (row, acc) in rows.chunks_exact(k).zip(&mut acc) {
                        for (c, acc) in acc.iter_mut().enumerate().take(width) {
                            let col = (0..c0).map(|t| h[t * k + c0 + c]);
                            *acc = row[..c0].iter().zip(col).fold(0.0, |s, (&x, y)| x.mul_add(y, s));
                        }
                    }
                }
                for (row, acc) in rows.chunks_exact(k).zip(&acc) {
                    for c in c0..c0 + width {
                        let mut s = acc[c - c0];
                        for t in c0..c {
                            s += row[t] * h[t * k + c];
                        }
                        total += row[c] * (2.0 * s + h[c * k + c] * row[c]);
                    }
                }
                c0 += width;
            }
            total
        })
        .collect();
    per_tile.iter().sum()
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
    fn cholesky_reproduces_the_matrix() {
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
