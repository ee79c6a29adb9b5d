//! The `f32` register tile of GPTQ's column loop and error sums. GPTQ's updates are the
//! paper's `f32` arithmetic; the Cholesky factor itself is computed in `f64`
//! ([`super::linalg`]) and rounded once.

use super::linalg::{LANES, MR, Strides, steps_in_bounds};

/// [`mac_tile`](super::linalg::mac_tile) in `f32`, for GPTQ's column loop and error sums: half the memory traffic and
/// twice the lanes per vector. The same contract: one chain of fused multiply-adds per entry,
/// so every path gives the same bits. Steps past the end of `a` or `b` are not taken.
pub fn mac_tile_f32(a: &[f32], sa: Strides, b: &[f32], b_stride: usize, steps: usize, acc: &mut [[f32; LANES]; MR]) {
    let steps = steps_in_bounds(a.len(), sa, b.len(), b_stride, steps);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function was compiled for, and every index
            // the steps touch was checked above.
            return unsafe { mac_tile_f32_avx512(a, sa, b, b_stride, steps, acc) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { mac_tile_f32_fma(a, sa, b, b_stride, steps, acc) };
        }
    }
    mac_tile_f32_body(a, sa, b, b_stride, steps, acc)
}

/// [`mac_tile_f32_body`] in AVX-512 registers: one vector of 16 per tile row, each `b` row one
/// load, each `a` value one broadcast.
///
/// # Safety
/// The CPU has AVX-512F and FMA, and `a` and `b` hold every index of `steps` steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn mac_tile_f32_avx512(
    a: &[f32],
    sa: Strides,
    b: &[f32],
    b_stride: usize,
    steps: usize,
    acc: &mut [[f32; LANES]; MR],
) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps};
    // SAFETY: each row of `acc` holds 16 values; the caller vouches for `a` and `b`.
    unsafe {
        let mut v = [_mm512_loadu_ps(acc[0].as_ptr()); MR];
        for (v, acc) in v.iter_mut().zip(acc.iter()) {
            *v = _mm512_loadu_ps(acc.as_ptr());
        }
        for t in 0..steps {
            let bt = _mm512_loadu_ps(b.as_ptr().add(t * b_stride));
            let ap = a.as_ptr().add(t * sa.t);
            for (r, v) in v.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(r * sa.r)), bt, *v);
            }
        }
        for (v, acc) in v.iter().zip(acc.iter_mut()) {
            _mm512_storeu_ps(acc.as_mut_ptr(), *v);
        }
    }
}

/// The scalar `f32` body with hardware fused multiply-adds.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mac_tile_f32_fma(
    a: &[f32],
    sa: Strides,
    b: &[f32],
    b_stride: usize,
    steps: usize,
    acc: &mut [[f32; LANES]; MR],
) {
    mac_tile_f32_body(a, sa, b, b_stride, steps, acc)
}

#[inline(always)]
fn mac_tile_f32_body(a: &[f32], sa: Strides, b: &[f32], b_stride: usize, steps: usize, acc: &mut [[f32; LANES]; MR]) {
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
    fn the_f32_tile_is_one_fused_chain_per_entry() {
        let (steps, stride) = (37, 21);
        let a: Vec<f32> = (0..steps * MR).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
        let b: Vec<f32> = (0..steps * stride).map(|i| ((i * 7 % 23) as f32 - 11.0) / 3.0).collect();
        let mut acc = [[0.5f32; LANES]; MR];
        mac_tile_f32(&a, Strides { t: MR, r: 1 }, &b, stride, steps, &mut acc);
        for (r, row) in acc.iter().enumerate() {
            for (c, &got) in row.iter().enumerate() {
                let want = (0..steps).fold(0.5f32, |s, t| a[t * MR + r].mul_add(b[t * stride + c], s));
                assert_eq!(got.to_bits(), want.to_bits(), "({r},{c})");
            }
        }
        // Fewer steps: another sum.
        let mut short = [[0.5f32; LANES]; MR];
        mac_tile_f32(&a, Strides { t: MR, r: 1 }, &b, stride, steps - 1, &mut short);
        assert_ne!(short, acc);
    }
}
