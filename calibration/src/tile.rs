//! The register-tiled multiply-accumulate under the Gram matrices here and GPTQ's linear
//! algebra (`kiln_quantize::int4::linalg`): an [`MR`]×[`LANES`] tile of `f64` outputs held in
//! vector registers, one chain of fused multiply-adds per entry, so results depend neither on
//! how a caller tiles the work nor on the vector width or thread count.

/// Rows of a register tile (features `i`).
pub const MR: usize = 8;
/// Columns of a register tile (features `j`): two 512-bit vectors.
pub const LANES: usize = 16;

/// Where a tile's `a` values are: `a(t, r) = a[t·t_stride + r·r_stride]`.
#[derive(Clone, Copy)]
pub struct Strides {
    pub t: usize,
    pub r: usize,
}

/// `acc[r][c] = fma(a(t, r), b[t·b_stride + c], acc[r][c])` for `t` in `0..steps` in order:
/// an [`MR`]×[`LANES`] tile held in registers, one chain of fused multiply-adds per entry. A fused
/// multiply-add is exactly rounded, so the result depends only on the inputs and the starting
/// values: not on how a caller tiles the work, nor on the vector width (every path, the scalar
/// fallback included, gives the same bits). Steps past the end of `a` or `b` are not taken.
pub fn mac_tile(a: &[f64], sa: Strides, b: &[f64], b_stride: usize, steps: usize, acc: &mut [[f64; LANES]; MR]) {
    let steps = steps_in_bounds(a.len(), sa, b.len(), b_stride, steps);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for, and every index
            // the steps touch was checked above.
            return unsafe { mac_tile_avx512(a, sa, b, b_stride, steps, acc) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { mac_tile_fma(a, sa, b, b_stride, steps, acc) };
        }
    }
    mac_tile_body(a, sa, b, b_stride, steps, acc)
}

/// The longest prefix of `steps` whose every `a` and `b` index lies inside slices of lengths
/// `a_len` and `b_len`: what the vector paths may read without a bounds check (shared by the
/// `f32` tile of `kiln_quantize::int4`).
pub fn steps_in_bounds(a_len: usize, sa: Strides, b_len: usize, b_stride: usize, steps: usize) -> usize {
    let fits_a = |t: usize| t * sa.t + (MR - 1) * sa.r < a_len;
    let fits_b = |t: usize| t * b_stride + LANES <= b_len;
    let mut steps = steps;
    while steps > 0 && !(fits_a(steps - 1) && fits_b(steps - 1)) {
        steps -= 1;
    }
    steps
}

/// [`mac_tile_body`] in AVX-512 registers: the tile is 16 vectors of 8, each `b` row two
/// vector loads, each `a` value one broadcast; every entry's chain is the same sequence of
/// fused multiply-adds as the scalar body's.
///
/// # Safety
/// The CPU has AVX-512F and FMA, and `a` and `b` hold every index of `steps` steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn mac_tile_avx512(
    a: &[f64],
    sa: Strides,
    b: &[f64],
    b_stride: usize,
    steps: usize,
    acc: &mut [[f64; LANES]; MR],
) {
    use std::arch::x86_64::{_mm512_fmadd_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_storeu_pd};
    // SAFETY: each row of `acc` holds 16 values; the caller vouches for `a` and `b`.
    unsafe {
        let mut lo = [_mm512_loadu_pd(acc[0].as_ptr()); MR];
        let mut hi = lo;
        for r in 0..MR {
            lo[r] = _mm512_loadu_pd(acc[r].as_ptr());
            hi[r] = _mm512_loadu_pd(acc[r].as_ptr().add(8));
        }
        for t in 0..steps {
            let bp = b.as_ptr().add(t * b_stride);
            let (b0, b1) = (_mm512_loadu_pd(bp), _mm512_loadu_pd(bp.add(8)));
            let ap = a.as_ptr().add(t * sa.t);
            for r in 0..MR {
                let x = _mm512_set1_pd(*ap.add(r * sa.r));
                lo[r] = _mm512_fmadd_pd(x, b0, lo[r]);
                hi[r] = _mm512_fmadd_pd(x, b1, hi[r]);
            }
        }
        for r in 0..MR {
            _mm512_storeu_pd(acc[r].as_mut_ptr(), lo[r]);
            _mm512_storeu_pd(acc[r].as_mut_ptr().add(8), hi[r]);
        }
    }
}

/// The scalar body with hardware fused multiply-adds.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mac_tile_fma(a: &[f64], sa: Strides, b: &[f64], b_stride: usize, steps: usize, acc: &mut [[f64; LANES]; MR]) {
    mac_tile_body(a, sa, b, b_stride, steps, acc)
}

#[inline(always)]
fn mac_tile_body(a: &[f64], sa: Strides, b: &[f64], b_stride: usize, steps: usize, acc: &mut [[f64; LANES]; MR]) {
    for t in 0..steps {
        let bt = &b[t * b_stride..t * b_stride + LANES];
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a[t * sa.t + r * sa.r];
            for (c, &y) in acc.iter_mut().zip(bt) {
                *c = x.mul_add(y, *c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_stop_where_a_or_b_would_be_read_past_its_end() {
        let sa = Strides { t: MR, r: 1 };
        // 5 steps of `a` (8 each) and 3 rows of `b` (stride 20, 16 read).
        assert_eq!(steps_in_bounds(5 * MR, sa, 2 * 20 + LANES, 20, 10), 3);
        assert_eq!(steps_in_bounds(5 * MR, sa, 10 * 20, 20, 10), 5);
        assert_eq!(steps_in_bounds(5 * MR, sa, 10 * 20, 20, 4), 4);
        assert_eq!(steps_in_bounds(MR - 1, sa, 10 * 20, 20, 4), 0);
        // The clamped tile sums only the steps that fit: the same as asking for them alone.
        let a: Vec<f64> = (0..5 * MR).map(|i| i as f64 * 0.5 - 3.0).collect();
        let b: Vec<f64> = (0..2 * 20 + LANES).map(|i| 1.0 - i as f64 * 0.25).collect();
        let (mut over, mut exact) = ([[0.0; LANES]; MR], [[0.0; LANES]; MR]);
        mac_tile(&a, sa, &b, 20, 10, &mut over);
        mac_tile(&a, sa, &b, 20, 3, &mut exact);
        assert_eq!(over, exact);
        assert_ne!(exact, [[0.0; LANES]; MR]);
    }
}
