//! Blockwise integer quantization of a weight matrix along its reduction axis K, and the two
//! layouts it is written in: ONNX Runtime's `MatMulNBits` blobs and ONNX's blocked
//! `DequantizeLinear` (opset 21).
//!
//! A weight is held as `n` rows of `k` values (one row per output feature), so a block is a run
//! of contiguous values of one row. Codes are unsigned (`0..2^bits`); a symmetric block has the
//! implicit zero point `2^(bits-1)` that `MatMulNBits` assumes when it has no zero-point input,
//! which is the signed code `code - 2^(bits-1)` of `DequantizeLinear` with no zero point.

use rayon::prelude::*;

/// How one weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// 4 or 8.
    pub bits: u8,
    /// Values per block along K (the last block of a row may be shorter).
    pub block: usize,
    /// No zero point: codes are centred on `2^(bits-1)`.
    pub symmetric: bool,
    /// A symmetric block may take a negative scale, so that its largest magnitude, whatever its
    /// sign, lands on the code with 2^(bits-1) steps (-8 for 4 bits) rather than on the side with
    /// one step fewer. ONNX Runtime takes any scale; TensorRT wants strictly positive ones.
    pub negative_scales: bool,
}

impl QuantSpec {
    /// The largest code.
    pub fn qmax(self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// The implicit zero point of a symmetric block.
    pub fn center(self) -> u8 {
        1u8 << (self.bits - 1)
    }
}

/// A row-major weight of `n` rows (output features) by `k` columns (the reduction axis).
#[derive(Debug, Clone, PartialEq)]
pub struct RowMajor {
    pub n: usize,
    pub k: usize,
    pub values: Vec<f32>,
}

impl RowMajor {
    /// A `[K, N]` MatMul weight turned into `N` rows of `K`.
    pub fn from_k_by_n(k: usize, n: usize, values: &[f32]) -> RowMajor {
        // In squares of 32×32: a row at a time wrote one value per cache line of the output.
        const SQ: usize = 32;
        let mut out = vec![0.0f32; k * n];
        if n == 0 {
            return RowMajor { n, k, values: out };
        }
        let rows = (values.len() / n).min(k);
        for k0 in (0..rows).step_by(SQ) {
            for n0 in (0..n).step_by(SQ) {
                for kk in k0..(k0 + SQ).min(rows) {
                    let row = &values[kk * n..(kk + 1) * n];
                    for nn in n0..(n0 + SQ).min(n) {
                        out[nn * k + kk] = row[nn];
                    }
                }
            }
        }
        RowMajor { n, k, values: out }
    }

    pub fn row(&self, n: usize) -> &[f32] {
        &self.values[n * self.k..(n + 1) * self.k]
    }
}

/// A quantized weight: codes in the row-major layout of [`RowMajor`], a scale per block, and
/// a zero point per block unless symmetric.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockQuantized {
    pub spec: QuantSpec,
    pub n: usize,
    pub k: usize,
    /// `n * k` codes in `0..2^bits`.
    pub codes: Vec<u8>,
    /// `n * k_blocks` scales.
    pub scales: Vec<f32>,
    /// `n * k_blocks` zero points; `None` when symmetric.
    pub zero_points: Option<Vec<u8>>,
}

impl BlockQuantized {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.spec.block)
    }

    /// The zero point of block `b` of row `n`.
    pub fn zero_point(&self, n: usize, b: usize) -> u8 {
        match &self.zero_points {
            Some(z) => z[n * self.k_blocks() + b],
            None => self.spec.center(),
        }
    }

    /// The value each code stands for, row-major `[n][k]`: `(code - zero_point) * scale`.
    pub fn dequantize(&self) -> RowMajor {
        let mut values = vec![0.0f32; self.n * self.k];
        if self.k > 0 {
            for (n, row) in values.chunks_exact_mut(self.k).enumerate() {
                self.dequantize_row(n, row);
            }
        }
        RowMajor { n: self.n, k: self.k, values }
    }

    /// Row `n` of [`BlockQuantized::dequantize`] into `out` (`k` values), without the whole
    /// matrix.
    pub fn dequantize_row(&self, n: usize, out: &mut [f32]) {
        let kb = self.k_blocks();
        let codes = &self.codes[n * self.k..(n + 1) * self.k];
        for (b, (out, codes)) in out.chunks_mut(self.spec.block).zip(codes.chunks(self.spec.block)).enumerate() {
            let (zp, scale) = (f32::from(self.zero_point(n, b)), self.scales[n * kb + b]);
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = (f32::from(c) - zp) * scale;
            }
        }
    }

    /// Bytes the quantized weight takes as `MatMulNBits` inputs (codes, f32 scales, packed
    /// zero points).
    pub fn storage_bytes(&self) -> usize {
        let kb = self.k_blocks();
        let codes = self.n * kb * blob_size(self.spec);
        let zps = if self.zero_points.is_some() { self.n * (kb * usize::from(self.spec.bits)).div_ceil(8) } else { 0 };
        codes + self.scales.len() * 4 + zps
    }
}

/// Bytes of one block in a `MatMulNBits` blob.
pub fn blob_size(spec: QuantSpec) -> usize {
    spec.block * usize::from(spec.bits) / 8
}

/// Packs codes `bits` wide into bytes, lowest bits first (4-bit: element `2i` in the low nibble
/// of byte `i`); a missing last element packs as 0.
pub fn pack(codes: &[u8], bits: u8) -> Vec<u8> {
    match bits {
        4 => codes.chunks(2).map(|p| (p[0] & 0x0f) | (p.get(1).copied().unwrap_or(0) << 4)).collect(),
        _ => codes.to_vec(),
    }
}

/// `MatMulNBits` input B: `[N, k_blocks, blob_size]` bytes; each block's codes packed along K,
/// the tail of a short last block padded with zero codes.
pub fn matmul_nbits_b(q: &BlockQuantized) -> Vec<u8> {
    let kb = q.k_blocks();
    let block = q.spec.block;
    let mut out = Vec::with_capacity(q.n * kb * blob_size(q.spec));
    let mut padded = vec![0u8; block];
    for n in 0..q.n {
        let row = &q.codes[n * q.k..(n + 1) * q.k];
        for b in 0..kb {
            let part = &row[b * block..((b + 1) * block).min(q.k)];
            padded.fill(0);
            padded[..part.len()].copy_from_slice(part);
            out.extend(pack(&padded, q.spec.bits));
        }
    }
    out
}

/// `MatMulNBits` input zero_points, packed: `[N, ceil(k_blocks * bits / 8)]` bytes, each row's
/// zero points packed like B.
pub fn matmul_nbits_zero_points(q: &BlockQuantized) -> Option<Vec<u8>> {
    let z = q.zero_points.as_ref()?;
    let kb = q.k_blocks();
    Some(z.chunks_exact(kb).flat_map(|row| pack(row, q.spec.bits)).collect())
}

/// `DequantizeLinear` data for a `[K, N]` weight blocked along axis 0: elements in `[K][N]`
/// order, packed two per byte for 4 bits. Symmetric codes become signed (`code - center`,
/// written as two's complement), asymmetric ones stay unsigned.
pub fn dq_k_by_n(q: &BlockQuantized) -> Vec<u8> {
    let center = q.spec.center();
    let mut elems = Vec::with_capacity(q.n * q.k);
    for kk in 0..q.k {
        for n in 0..q.n {
            let c = q.codes[n * q.k + kk];
            elems.push(if q.zero_points.is_some() { c } else { c.wrapping_sub(center) });
        }
    }
    pack(&elems, q.spec.bits)
}

/// Scales (or zero points) per block laid out `[k_blocks][N]`, for a `[K, N]` weight's
/// `DequantizeLinear`.
pub fn per_block_k_by_n<T: Copy>(q: &BlockQuantized, values: &[T]) -> Vec<T> {
    let kb = q.k_blocks();
    let mut out = Vec::with_capacity(values.len());
    for b in 0..kb {
        for n in 0..q.n {
            out.push(values[n * kb + b]);
        }
    }
    out
}

/// Shrink factors tried on each block's range; the one with the smallest squared error wins.
/// Clipping a block's outliers a little buys finer steps for the rest of it.
const CLIP_GRID: [f32; 9] = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76];

/// Scale and zero point of one block of values, with the clipping ratio that minimizes the
/// block's (weighted) squared rounding error. `weights` (one per value) come from calibration
/// data; `None` weighs every value alike.
pub fn block_params(values: &[f32], weights: Option<&[f32]>, spec: QuantSpec) -> (f32, u8) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { block_params_avx512(values, weights, spec) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { block_params_avx2(values, weights, spec) };
        }
    }
    block_params_body::<false>(values, weights, spec)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn block_params_avx512(values: &[f32], weights: Option<&[f32]>, spec: QuantSpec) -> (f32, u8) {
    block_params_body::<true>(values, weights, spec)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn block_params_avx2(values: &[f32], weights: Option<&[f32]>, spec: QuantSpec) -> (f32, u8) {
    block_params_body::<true>(values, weights, spec)
}

/// [`block_params`], with every candidate's error computed inline: one dispatch per block
/// rather than one per candidate. `AVX`: the caller runs with AVX enabled.
#[inline(always)]
fn block_params_body<const AVX: bool>(values: &[f32], weights: Option<&[f32]>, spec: QuantSpec) -> (f32, u8) {
    let (lo, hi) = range_with_zero(values);
    if hi - lo <= 0.0 || !(hi - lo).is_finite() {
        return (1.0, if spec.symmetric { spec.center() } else { 0 });
    }
    // Every candidate in order, then every error, then the first smallest: the errors do not
    // wait on one another's comparison (a branch on each one, mispredicted whenever a later
    // candidate won, serialized the search).
    let mut candidates = [(1.0f32, 0u8); 2 * CLIP_GRID.len()];
    let mut n = 0;
    for alpha in CLIP_GRID {
        candidates[n] = params_for_range(lo * alpha, hi * alpha, spec);
        n += 1;
        if spec.symmetric && spec.negative_scales {
            // The mirrored grid: -scale' covers [-(c-1)·s', c·s'].
            let c = f32::from(spec.center());
            let s = (hi * alpha / c).max(-lo * alpha / (c - 1.0));
            if s > 0.0 {
                candidates[n] = (-s, candidates[n - 1].1);
                n += 1;
            }
        }
    }
    let mut errors = [0.0f32; 2 * CLIP_GRID.len()];
    for (e, &(scale, zp)) in errors.iter_mut().zip(&candidates[..n]) {
        *e = block_error_body::<AVX>(values, weights, scale, zp, spec);
    }
    let mut best = (f32::INFINITY, 1.0f32, 0u8);
    for (&err, &(scale, zp)) in errors.iter().zip(&candidates[..n]) {
        if err < best.0 {
            best = (err, scale, zp);
        }
    }
    (best.1, best.2)
}

/// The smallest and largest of `values` and 0, in sixteen lanes (one 512-bit vector) merged at
/// the end: minima and maxima are exact, so the lanes change nothing but the speed (a `NaN` is
/// passed over either way).
#[inline(always)]
fn range_with_zero(values: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0.0f32; 16], [0.0f32; 16]);
    let (chunks, rest) = values.as_chunks::<16>();
    for c in chunks {
        for i in 0..16 {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    for (i, &v) in rest.iter().enumerate() {
        lo[i] = lo[i].min(v);
        hi[i] = hi[i].max(v);
    }
    (lo.iter().fold(0.0f32, |a, &b| a.min(b)), hi.iter().fold(0.0f32, |a, &b| a.max(b)))
}

/// Scale and zero point covering `[lo, hi]` (which holds 0). Symmetric blocks use the signed
/// range `[-center, center - 1]` with a positive scale: the larger side fixes the step.
fn params_for_range(lo: f32, hi: f32, spec: QuantSpec) -> (f32, u8) {
    let qmax = spec.qmax();
    if spec.symmetric {
        let c = f32::from(spec.center());
        let scale = (-lo / c).max(hi / (c - 1.0));
        (if scale > 0.0 { scale } else { 1.0 }, spec.center())
    } else {
        let scale = (hi - lo) / qmax;
        let zp = (-lo / scale).round_ties_even().clamp(0.0, qmax);
        (scale, zp as u8)
    }
}

/// The code of `v` in a block with this scale and zero point.
#[inline(always)]
pub fn quantize_value(v: f32, scale: f32, zp: u8, spec: QuantSpec) -> u8 {
    code_of(v, scale, f32::from(zp), spec.qmax()) as u8
}

/// [`quantize_value`] as a float (`0..=qmax`, whole), for loops that vectorize over rows.
#[inline(always)]
pub(crate) fn code_of(v: f32, scale: f32, zp: f32, qmax: f32) -> f32 {
    round_even((v / scale + zp).clamp(-1.0, qmax + 1.0)).clamp(0.0, qmax)
}

/// Rounds half to even like `f32::round_ties_even`, for `|x| < 2²²`, without the library call
/// (baseline x86-64 has no rounding instruction): adding and taking back 1.5·2²³ leaves no
/// fraction bits, and the addition rounds to nearest even.
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// The (weighted) squared rounding error of a block, in sixteen partial sums (element `i` into
/// sum `i % 16`, one 512-bit vector) added in a fixed order: the loop vectorizes, nothing is
/// fused or reordered, and the result depends only on the inputs.
#[inline(always)]
fn block_error_body<const AVX: bool>(
    values: &[f32],
    weights: Option<&[f32]>,
    scale: f32,
    zp: u8,
    spec: QuantSpec,
) -> f32 {
    let mut acc = [0.0f32; 16];
    let z = f32::from(zp);
    let qmax = spec.qmax();
    // The search multiplies by the reciprocal (a division costs ten multiplies); a value right
    // at a rounding boundary may land on the other side, which moves its error by nothing.
    let inv = 1.0 / scale;
    let sq = |v: f32, w: f32| {
        let q = round_even((v * inv + z).clamp(-1.0, qmax + 1.0)).clamp(0.0, qmax);
        let d = (q - z) * scale - v;
        d * d * w
    };
    let (chunks, rest) = values.as_chunks::<16>();
    match weights {
        Some(w) => {
            let (wchunks, wrest) = w[..values.len()].as_chunks::<16>();
            for (c, wc) in chunks.iter().zip(wchunks) {
                for i in 0..16 {
                    acc[i] += sq(c[i], wc[i]);
                }
            }
            for (i, (&v, &w)) in rest.iter().zip(wrest).enumerate() {
                acc[i] += sq(v, w);
            }
        }
        None => {
            for c in chunks {
                for i in 0..16 {
                    acc[i] += sq(c[i], 1.0);
                }
            }
            for (i, &v) in rest.iter().enumerate() {
                acc[i] += sq(v, 1.0);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: `AVX` is set only by callers compiled with AVX2 or AVX-512, which imply AVX.
        return unsafe { sum16_avx(&acc) };
    }
    sum16(&acc)
}

/// The sum of sixteen partial sums in a fixed order: `h_i = a_i + a_{i+8}`, then
/// `((h0 + h1) + (h2 + h3)) + ((h4 + h5) + (h6 + h7))`.
#[inline(always)]
fn sum16(acc: &[f32; 16]) -> f32 {
    let mut half = [0.0f32; 8];
    for i in 0..8 {
        half[i] = acc[i] + acc[i + 8];
    }
    ((half[0] + half[1]) + (half[2] + half[3])) + ((half[4] + half[5]) + (half[6] + half[7]))
}

/// [`sum16`] in vector registers: the same additions in the same order (two horizontal adds
/// pair neighbours as the tree does), where the compiler's version went through the stack and
/// took a third of the scale search's time.
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn sum16_avx(acc: &[f32; 16]) -> f32 {
    use std::arch::x86_64::{
        _mm_add_ss, _mm_cvtss_f32, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_hadd_ps,
        _mm256_loadu_ps,
    };
    // SAFETY: `acc` holds sixteen values; the caller vouches for AVX.
    unsafe {
        let h = _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr()), _mm256_loadu_ps(acc.as_ptr().add(8)));
        // [h0+h1, h2+h3, ·, · | h4+h5, h6+h7, ·, ·]
        let p = _mm256_hadd_ps(h, h);
        // [(h0+h1)+(h2+h3), ·, ·, · | (h4+h5)+(h6+h7), ·, ·, ·]
        let q = _mm256_hadd_ps(p, p);
        _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps::<1>(q)))
    }
}

/// Round to nearest, block by block, with each block's scale picked by [`block_params`].
/// `importance` (one weight per K index, e.g. the mean squared activation of that input
/// feature) makes the scale search minimize the error the layer's output sees.
pub fn rtn(w: &RowMajor, spec: QuantSpec, importance: Option<&[f32]>) -> BlockQuantized {
    let kb = w.k.div_ceil(spec.block);
    // One row per task: the result does not depend on the thread count.
    let rows: Vec<(Vec<u8>, Vec<f32>, Vec<u8>)> = (0..w.n)
        .into_par_iter()
        .map(|n| {
            let row = w.row(n);
            let mut codes = Vec::with_capacity(w.k);
            let (mut scales, mut zps) = (Vec::with_capacity(kb), Vec::with_capacity(kb));
            for (b, part) in row.chunks(spec.block).enumerate() {
                let imp = importance.map(|i| &i[b * spec.block..b * spec.block + part.len()]);
                let (scale, zp) = block_params(part, imp, spec);
                codes.extend(part.iter().map(|&v| quantize_value(v, scale, zp, spec)));
                scales.push(scale);
                zps.push(zp);
            }
            (codes, scales, zps)
        })
        .collect();
    let mut q = BlockQuantized {
        spec,
        n: w.n,
        k: w.k,
        codes: Vec::with_capacity(w.n * w.k),
        scales: Vec::with_capacity(w.n * kb),
        zero_points: None,
    };
    let mut zps = Vec::with_capacity(w.n * kb);
    for (c, s, z) in rows {
        q.codes.extend(c);
        q.scales.extend(s);
        zps.extend(z);
    }
    q.zero_points = (!spec.symmetric).then_some(zps);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bits: u8, block: usize, symmetric: bool) -> QuantSpec {
        QuantSpec { bits, block, symmetric, negative_scales: false }
    }

    #[test]
    fn the_vector_sum_adds_in_the_tree_order() {
        // Partial sums of very different magnitudes, where the order of the additions shows.
        let mut s = 1u32;
        for _ in 0..200 {
            let mut acc = [0.0f32; 16];
            for a in acc.iter_mut() {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                *a = f32::from_bits(0x3000_0000 + (s >> 4) % 0x1800_0000);
            }
            let tree = sum16(&acc);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has AVX.
                assert_eq!(unsafe { sum16_avx(&acc) }.to_bits(), tree.to_bits(), "{acc:?}");
            }
            let _ = tree;
        }
        // The order matters: a left-to-right sum of the same values differs.
        let acc = [1.0e8f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0e8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        assert_ne!(sum16(&acc), acc.iter().sum::<f32>());
    }

    #[test]
    fn nibbles_pack_low_first() {
        assert_eq!(pack(&[1, 2, 3], 4), vec![0x21, 0x03]);
        assert_eq!(pack(&[0xf, 0x0], 4), vec![0x0f]);
        assert_eq!(pack(&[7, 200], 8), vec![7, 200]);
    }

    #[test]
    fn transposes_k_by_n() {
        // [K=2, N=3] -> rows of K.
        let w = RowMajor::from_k_by_n(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(w.values, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        // Across several squares, with partial ones at both edges.
        let (k, n) = (70, 45);
        let values: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        let w = RowMajor::from_k_by_n(k, n, &values);
        for nn in 0..n {
            for kk in 0..k {
                assert_eq!(w.row(nn)[kk], values[kk * n + nn], "({nn}, {kk})");
            }
        }
    }

    #[test]
    fn rtn_error_is_within_half_a_step() {
        for symmetric in [true, false] {
            let k = 40;
            let values: Vec<f32> = (0..3 * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let w = RowMajor { n: 3, k, values };
            let q = rtn(&w, spec(4, 16, symmetric), None);
            assert_eq!(q.k_blocks(), 3);
            assert_eq!(q.zero_points.is_some(), !symmetric);
            let d = q.dequantize();
            for (i, (a, b)) in w.values.iter().zip(&d.values).enumerate() {
                let (n, kk) = (i / k, i % k);
                let s = q.scales[n * 3 + kk / 16].abs();
                // A clipped value may be further than half a step, but never beyond the clip.
                assert!((a - b).abs() <= 0.5 * s + 0.25 * a.abs() + 1e-6, "{a} vs {b} (scale {s})");
            }
            // Sanity: the error is small overall.
            let err: f32 = w.values.iter().zip(&d.values).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / 120.0;
            // Values span ±2.9, so a 4-bit step is about 0.39 and a uniform error's mse 0.013.
            assert!(err < 0.02, "mse {err}");
        }
    }

    #[test]
    fn symmetric_codes_use_the_negative_end() {
        let w = RowMajor { n: 1, k: 16, values: (0..16).map(|i| -8.0 + i as f32).collect() };
        let q = rtn(&w, spec(4, 16, true), None);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(q.codes, (0..16).collect::<Vec<u8>>());
        assert_eq!(q.dequantize().values, w.values);
    }

    #[test]
    fn negative_scales_give_the_positive_extreme_the_long_side() {
        // Largest magnitude +8: with a positive scale it needs a step of 8/7, with a negative
        // one the step is 1 and every integer from -7 to 8 is exact.
        let values: Vec<f32> = (0..16).map(|i| 8.0 - i as f32).collect();
        let w = RowMajor { n: 1, k: 16, values: values.clone() };
        let q = rtn(&w, QuantSpec { negative_scales: true, ..spec(4, 16, true) }, None);
        assert_eq!(q.scales[0], -1.0);
        assert_eq!(q.dequantize().values, values);
        let q = rtn(&w, spec(4, 16, true), None);
        assert!(q.scales[0] > 0.0);
        assert_ne!(q.dequantize().values, values);
    }

    #[test]
    fn blobs_pad_the_short_last_block() {
        let w = RowMajor { n: 1, k: 18, values: (0..18).map(|i| i as f32).collect() };
        let q = rtn(&w, spec(4, 16, false), None);
        let b = matmul_nbits_b(&q);
        assert_eq!(b.len(), 2 * 8);
        // The second block holds codes of k = 16, 17 then zero padding.
        assert_eq!(b[8] & 0x0f, q.codes[16]);
        assert_eq!(b[8] >> 4, q.codes[17]);
        assert!(b[9..].iter().all(|&x| x == 0));
        let z = matmul_nbits_zero_points(&q).unwrap();
        assert_eq!(z, vec![q.zero_point(0, 0) | (q.zero_point(0, 1) << 4)]);
    }

    #[test]
    fn dq_layout_is_k_major_and_signed_when_symmetric() {
        let w = RowMajor::from_k_by_n(2, 2, &[-8.0, 7.0, 1.0, -1.0]);
        let q = rtn(&w, spec(4, 16, true), None);
        // Rows: n0 = [-8, 1], n1 = [7, -1] with scale 1 (n0) and 1 (n1).
        let bytes = dq_k_by_n(&q);
        // [K][N] order: (-8, 7, 1, -1) as two's-complement nibbles.
        assert_eq!(bytes, vec![0x8 | (0x7 << 4), 0x1 | (0xf << 4)]);
        assert_eq!(per_block_k_by_n(&q, &q.scales), q.scales);
    }
}
