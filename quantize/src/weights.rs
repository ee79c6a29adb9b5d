//! Scale and zero-point arithmetic: activation parameters from a range, symmetric weights per
//! tensor or per channel along an axis, and int32 biases whose scale is the product of the
//! input's and the weight's. Shared by static QDQ, dynamic INT8 and SmoothQuant (and usable
//! by other integer schemes: the integer type is a parameter).

use kiln_compiler::{DataType, Tensor, TensorError};
use rayon::prelude::*;

/// An 8-bit integer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntType {
    S8,
    U8,
}

impl IntType {
    pub fn qmin(self) -> i32 {
        match self {
            IntType::S8 => -128,
            IntType::U8 => 0,
        }
    }

    pub fn qmax(self) -> i32 {
        match self {
            IntType::S8 => 127,
            IntType::U8 => 255,
        }
    }

    pub fn dtype(self) -> DataType {
        match self {
            IntType::S8 => DataType::I8,
            IntType::U8 => DataType::U8,
        }
    }
}

/// Quantization parameters of one tensor: one scale and zero point, or one per channel of
/// `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct QParams {
    pub ty: IntType,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    /// `Some(axis)`: per channel along it; `None`: per tensor (one scale).
    pub axis: Option<usize>,
}

impl QParams {
    /// The real value of integer `q` in channel `c`.
    pub fn dequantize(&self, q: i32, c: usize) -> f32 {
        (q - self.zero_point[c]) as f32 * self.scale[c]
    }

    /// The integer for `x` in channel `c` (round half to even, saturated, as QuantizeLinear).
    pub fn quantize(&self, x: f32, c: usize) -> i32 {
        let q = (x / self.scale[c]).round_ties_even() as i64 + i64::from(self.zero_point[c]);
        q.clamp(i64::from(self.ty.qmin()), i64::from(self.ty.qmax())) as i32
    }

    /// The scale tensor: a scalar per tensor, 1-D per channel.
    pub fn scale_tensor(&self) -> Tensor {
        match self.axis {
            None => Tensor::scalar(self.scale[0]),
            Some(_) => {
                Tensor::from_slice(vec![self.scale.len()], &self.scale).unwrap_or_else(|_| Tensor::scalar(0.0f32))
            }
        }
    }

    /// The zero-point tensor, of the integer type, shaped like the scale.
    pub fn zero_point_tensor(&self) -> Tensor {
        let dims = if self.axis.is_some() { vec![self.zero_point.len()] } else { Vec::new() };
        let r = match self.ty {
            IntType::S8 => Tensor::from_slice(dims, &self.zero_point.iter().map(|&z| z as i8).collect::<Vec<_>>()),
            IntType::U8 => Tensor::from_slice(dims, &self.zero_point.iter().map(|&z| z as u8).collect::<Vec<_>>()),
        };
        r.unwrap_or_else(|_| Tensor::scalar(0i8))
    }
}

/// Smallest scale used: a range of zero width (a constant tensor, a dead channel) still gets a
/// valid, invertible scale.
const MIN_SCALE: f64 = 1e-8;

/// Parameters of an activation observed in `[min, max]`. The range is widened to hold 0 so
/// that zero (padding, ReLU outputs) is exact. Symmetric: zero point 0 (the middle of U8 for
/// unsigned), scale `max|x| / 127`. Asymmetric: the whole range onto `[qmin, qmax]`, so a range
/// starting at 0 gets zero point `qmin`, which makes the quantizer itself the ReLU.
pub fn activation_params(min: f64, max: f64, ty: IntType, symmetric: bool) -> QParams {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let (qmin, qmax) = (f64::from(ty.qmin()), f64::from(ty.qmax()));
    let (scale, zp) = if symmetric {
        let absmax = lo.abs().max(hi.abs());
        let half = ((qmax - qmin) / 2.0).floor();
        let zp = match ty {
            IntType::S8 => 0.0,
            IntType::U8 => 128.0,
        };
        ((absmax / half).max(MIN_SCALE), zp)
    } else {
        let scale = ((hi - lo) / (qmax - qmin)).max(MIN_SCALE);
        let zp = (qmin - lo / scale).round().clamp(qmin, qmax);
        (scale, zp)
    };
    QParams { ty, scale: vec![scale as f32], zero_point: vec![zp as i32], axis: None }
}

/// Why a weight could not be quantized.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("weight of type {0} is not a float tensor")]
    NotFloat(DataType),
    #[error("axis {axis} is out of range for a weight of shape {dims:?}")]
    Axis { axis: usize, dims: Vec<usize> },
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("bias has {bias} values but the weight has {channels} output channels")]
    BiasChannels { bias: usize, channels: usize },
}

/// Values of a float tensor as f32.
pub fn float_values(t: &Tensor) -> Result<Vec<f32>, WeightError> {
    if !t.dtype().is_float() {
        return Err(WeightError::NotFloat(t.dtype()));
    }
    match t.dtype() {
        DataType::F32 => Ok(t.to_vec::<f32>()?),
        _ => Ok(t.to_f64_vec()?.into_iter().map(|v| v as f32).collect()),
    }
}

/// The channel of each element of a row-major tensor of `dims` along `axis`: `(outer, n, inner)`
/// where element `i` is in channel `(i / inner) % n`.
pub fn channel_layout(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let n = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let outer: usize = dims[..axis].iter().product();
    (outer, n, inner)
}

/// How the elements of a row-major tensor map to channels, in the order they are stored.
/// Long runs of one channel (`inner` large, or per tensor) are walked as rows with one scale
/// each; short runs (a MatMul weight `[K, N]` per column, `inner` = 1) as whole blocks of
/// `n * inner` elements matched lane by lane against a block of per-element channel state, so
/// neither walks the tensor with a stride or divides per element.
#[derive(Debug, Clone, Copy)]
struct Walk {
    /// Channels (1 per tensor).
    n: usize,
    /// Consecutive elements of one channel.
    inner: usize,
    /// Segment length: `inner` for rows, `n * inner` for blocks.
    seg: usize,
    rows: bool,
}

/// Below this many consecutive elements per channel, the block walk is used.
const ROW_MIN: usize = 64;

/// Elements decoded from little-endian bytes at a time: small enough to stay in cache.
const PIECE: usize = 1 << 14;

impl Walk {
    fn new(len: usize, dims: &[usize], axis: Option<usize>) -> Walk {
        let (n, inner) = match axis {
            None => (1, len),
            Some(a) => {
                let (_, n, inner) = channel_layout(dims, a);
                (n, inner)
            }
        };
        let rows = inner >= ROW_MIN || n.saturating_mul(inner) == 0;
        Walk { n, inner, seg: if rows { inner } else { n * inner }, rows }
    }

    /// Calls `f(segment index, offset in the segment, values)` for consecutive runs of
    /// `values` (starting at element `start` of the tensor) that lie in one segment.
    fn split(&self, start: usize, values: &[f32], mut f: impl FnMut(usize, usize, &[f32])) {
        if self.seg == 0 {
            return;
        }
        let mut pos = start;
        let mut rest = values;
        while !rest.is_empty() {
            let (seg, off) = (pos / self.seg, pos % self.seg);
            let take = (self.seg - off).min(rest.len());
            let (head, tail) = rest.split_at(take);
            f(seg, off, head);
            pos += take;
            rest = tail;
        }
    }
}

/// A float tensor's values read a piece at a time: f32 straight from its little-endian bytes
/// (no copy of the whole tensor), other float types through one widened copy.
enum Pieces<'a> {
    F32(&'a [u8]),
    Widened(Vec<f32>),
}

impl<'a> Pieces<'a> {
    fn of(t: &'a Tensor) -> Result<Pieces<'a>, WeightError> {
        match (t.dtype(), t.bytes()) {
            (DataType::F32, Some(b)) => Ok(Pieces::F32(b)),
            _ => Ok(Pieces::Widened(float_values(t)?)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Pieces::F32(b) => b.len() / 4,
            Pieces::Widened(v) => v.len(),
        }
    }

    /// Number of pieces of [`PIECE`] elements.
    fn count(&self) -> usize {
        self.len().div_ceil(PIECE)
    }

    /// Piece `p` (elements `p * PIECE ..`), decoded into `buf` when it must be.
    fn piece<'b>(&'b self, p: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let start = p * PIECE;
        let end = (start + PIECE).min(self.len());
        match self {
            Pieces::F32(b) => {
                buf.clear();
                let bytes = &b[start * 4..end * 4];
                buf.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                buf
            }
            Pieces::Widened(v) => &v[start..end],
        }
    }
}

/// |v| for a finite `v`, 0 for infinities and NaN (they do not widen a range).
#[inline]
fn finite_abs(v: f32) -> f32 {
    let a = v.abs();
    if a < f32::INFINITY { a } else { 0.0 }
}

/// The largest [`finite_abs`] of `values`, in eight independent lanes so the loop vectorizes
/// (max is exact, so the order does not change the result).
fn row_absmax(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            let a = finite_abs(v);
            *m = if a > *m { a } else { *m };
        }
    }
    let tail = chunks.remainder().iter().fold(0.0f32, |m, &v| m.max(finite_abs(v)));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Running per-channel maxima fed piece by piece; partial results of disjoint pieces merge
/// exactly (max is order-free), so pieces may be observed in parallel.
struct AbsmaxAcc {
    walk: Walk,
    out: Vec<f32>,
    /// Block walk: the running maximum of each position of a block.
    block: Vec<f32>,
}

impl AbsmaxAcc {
    fn new(walk: Walk) -> AbsmaxAcc {
        let block = if walk.rows { Vec::new() } else { vec![0.0f32; walk.seg] };
        AbsmaxAcc { walk, out: vec![0.0f32; walk.n.max(1)], block }
    }

    fn feed(&mut self, start: usize, values: &[f32]) {
        let (walk, out, block) = (self.walk, &mut self.out, &mut self.block);
        walk.split(start, values, |seg, off, vals| {
            if walk.rows {
                let c = seg % walk.n.max(1);
                out[c] = out[c].max(row_absmax(vals));
            } else {
                for (m, &v) in block[off..off + vals.len()].iter_mut().zip(vals) {
                    let a = finite_abs(v);
                    *m = if a > *m { a } else { *m };
                }
            }
        });
    }

    fn merge(mut self, other: AbsmaxAcc) -> AbsmaxAcc {
        for (a, b) in self.out.iter_mut().zip(&other.out).chain(self.block.iter_mut().zip(&other.block)) {
            *a = a.max(*b);
        }
        self
    }

    fn finish(mut self) -> Vec<f32> {
        if !self.walk.rows && self.walk.inner > 0 {
            for (o, run) in self.out.iter_mut().zip(self.block.chunks(self.walk.inner)) {
                *o = run.iter().fold(*o, |m, &v| m.max(v));
            }
        }
        self.out
    }
}

/// Largest |w| per channel along `axis` (or of the whole tensor); infinities and NaN are
/// skipped.
pub fn absmax(values: &[f32], dims: &[usize], axis: Option<usize>) -> Vec<f32> {
    let mut acc = AbsmaxAcc::new(Walk::new(values.len(), dims, axis));
    acc.feed(0, values);
    acc.finish()
}

/// `x` rounded half to even, for `|x| < 2^22`: adding and removing 1.5 · 2^23 leaves no
/// fraction bits and rounds in the default (to nearest even) mode. `f32::round_ties_even` is a
/// libm call per element without SSE4.1.
#[inline]
fn round_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// The S8 integer of `v` under scale `s`, as a byte: the same integer as
/// [`QParams::quantize`] clamped to ±127 (zero point 0; clamping to integer bounds commutes
/// with rounding), without a libm call; non-finite values give 0.
#[inline]
fn weight_byte(v: f32, s: f32) -> u8 {
    let x = if v.is_finite() { (v / s).clamp(-127.0, 127.0) } else { 0.0 };
    round_even_small(x) as i8 as u8
}

/// A weight quantized symmetrically to S8 in `[-127, 127]` (the restricted range keeps
/// `-q` representable, so integer kernels may negate), per channel along `axis` or per tensor.
/// Two streaming passes over the weight's bytes (maxima, then integers) into one allocation.
pub fn quantize_weight(t: &Tensor, axis: Option<usize>) -> Result<(Tensor, QParams), WeightError> {
    let dims = t.dims().to_vec();
    if let Some(a) = axis
        && a >= dims.len()
    {
        return Err(WeightError::Axis { axis: a, dims });
    }
    if !t.dtype().is_float() {
        return Err(WeightError::NotFloat(t.dtype()));
    }
    let len = usize::try_from(t.len()).map_err(|_| TensorError::TooLarge { dims: dims.clone() })?;
    let walk = Walk::new(len, &dims, axis);
    let pieces = Pieces::of(t)?;
    // Pieces in parallel (Kiln's pool, `--threads`): maxima merge exactly and each piece
    // writes its own integers, so the result is the same at any thread count.
    let maxima = (0..pieces.count())
        .into_par_iter()
        .fold(
            || (AbsmaxAcc::new(walk), Vec::new()),
            |(mut acc, mut buf), p| {
                acc.feed(p * PIECE, pieces.piece(p, &mut buf));
                (acc, buf)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(|| AbsmaxAcc::new(walk), AbsmaxAcc::merge);
    let scale: Vec<f32> = maxima.finish().into_iter().map(|m| (m / 127.0).max(MIN_SCALE as f32)).collect();
    // Block walk: the scale of each position of a block.
    let block_scales: Vec<f32> = match walk.rows {
        true => Vec::new(),
        false => (0..walk.seg).map(|j| scale[j / walk.inner]).collect(),
    };
    let mut q = vec![0u8; len];
    q.par_chunks_mut(PIECE).enumerate().for_each_init(Vec::new, |buf, (p, out)| {
        let mut at = 0;
        walk.split(p * PIECE, pieces.piece(p, buf), |seg, off, vals| {
            let dst = &mut out[at..at + vals.len()];
            if walk.rows {
                let s = scale[seg % walk.n.max(1)];
                for (d, &v) in dst.iter_mut().zip(vals) {
                    *d = weight_byte(v, s);
                }
            } else {
                for ((d, &v), &s) in dst.iter_mut().zip(vals).zip(&block_scales[off..]) {
                    *d = weight_byte(v, s);
                }
            }
            at += vals.len();
        })
    });
    let params = QParams { ty: IntType::S8, zero_point: vec![0; scale.len()], scale, axis };
    Ok((Tensor::new(DataType::I8, dims, bytes::Bytes::from(q))?, params))
}

/// A constant quantized like an activation: per tensor, `ty`, from its own min/max.
pub fn quantize_constant(t: &Tensor, ty: IntType, symmetric: bool) -> Result<(Tensor, QParams), WeightError> {
    let values = float_values(t)?;
    let finite = values.iter().filter(|v| v.is_finite());
    let lo = finite.clone().fold(0.0f32, |m, &v| m.min(v));
    let hi = finite.fold(0.0f32, |m, &v| m.max(v));
    let params = activation_params(f64::from(lo), f64::from(hi), ty, symmetric);
    let q = quantize_values(&values, t.dims(), &params);
    Ok((integer_tensor(t.dims().to_vec(), &q, ty)?, params))
}

/// An integer tensor of `ty` from values already in its range.
pub fn integer_tensor(dims: Vec<usize>, q: &[i32], ty: IntType) -> Result<Tensor, TensorError> {
    match ty {
        IntType::S8 => Tensor::from_slice(dims, &q.iter().map(|&v| v as i8).collect::<Vec<_>>()),
        IntType::U8 => Tensor::from_slice(dims, &q.iter().map(|&v| v as u8).collect::<Vec<_>>()),
    }
}

/// Integers of `values` (row-major, `dims`) under `params`.
pub fn quantize_values(values: &[f32], dims: &[usize], params: &QParams) -> Vec<i32> {
    let (n, inner) = match params.axis {
        Some(axis) => {
            let (_, n, inner) = channel_layout(dims, axis);
            (n.max(1), inner.max(1))
        }
        None => (1, 1),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = if params.axis.is_some() { (i / inner) % n } else { 0 };
            params.quantize(if v.is_finite() { v } else { 0.0 }, c)
        })
        .collect()
}

/// A bias as int32 with scale `input_scale * weight_scale[c]` and zero point 0, so that an
/// integer kernel adds it to its int32 accumulator directly. Values beyond int32 saturate.
pub fn quantize_bias(bias: &Tensor, input_scale: f32, weight: &QParams) -> Result<(Tensor, Vec<f32>), WeightError> {
    let values = float_values(bias)?;
    let scales: Vec<f32> = if weight.axis.is_some() {
        if weight.scale.len() != values.len() {
            return Err(WeightError::BiasChannels { bias: values.len(), channels: weight.scale.len() });
        }
        weight.scale.iter().map(|s| (s * input_scale).max(MIN_SCALE as f32)).collect()
    } else {
        vec![(weight.scale[0] * input_scale).max(MIN_SCALE as f32)]
    };
    let q: Vec<i32> = values
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let s = if scales.len() == 1 { scales[0] } else { scales[i] };
            let v = (f64::from(b) / f64::from(s)).round_ties_even();
            if v.is_finite() { v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 } else { 0 }
        })
        .collect();
    Ok((Tensor::from_slice(bias.dims().to_vec(), &q)?, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_range_from_zero_makes_qmin_the_zero_point() {
        let p = activation_params(0.0, 2.55, IntType::S8, false);
        assert_eq!(p.zero_point, vec![-128]);
        assert!((p.scale[0] - 0.01).abs() < 1e-7);
        assert_eq!(p.quantize(-1.0, 0), -128, "negatives saturate to 0: the quantizer is the ReLU");
        assert_eq!(p.dequantize(p.quantize(1.0, 0), 0), 1.0);
        // Ranges that exclude 0 are widened to hold it.
        let q = activation_params(1.0, 2.0, IntType::U8, false);
        assert_eq!(q.zero_point, vec![0]);
    }

    #[test]
    fn symmetric_activations_center_zero() {
        let p = activation_params(-1.0, 3.0, IntType::S8, true);
        assert_eq!(p.zero_point, vec![0]);
        assert!((p.scale[0] - 3.0 / 127.0).abs() < 1e-7);
        assert_eq!(activation_params(-1.0, 3.0, IntType::U8, true).zero_point, vec![128]);
        // A tensor that is always 0 still gets an invertible scale.
        assert!(activation_params(0.0, 0.0, IntType::S8, true).scale[0] > 0.0);
    }

    #[test]
    fn weights_per_channel_use_each_channels_absmax() {
        // [2 out channels, 3]: channel 0 up to 1.27, channel 1 up to 0.127.
        let w = Tensor::from_slice(vec![2, 3], &[1.27f32, -0.5, 0.0, 0.127, 0.05, -0.1]).unwrap();
        let (q, p) = quantize_weight(&w, Some(0)).unwrap();
        assert_eq!(q.dtype(), DataType::I8);
        assert_eq!(p.scale.len(), 2);
        assert_eq!(q.to_vec::<i8>().unwrap(), vec![127, -50, 0, 127, 50, -100]);
        let (_, pt) = quantize_weight(&w, None).unwrap();
        assert_eq!(pt.scale.len(), 1);
        assert!(quantize_weight(&w, Some(2)).is_err());
        let ints = Tensor::from_slice(vec![1], &[1i64]).unwrap();
        assert!(matches!(quantize_weight(&ints, None), Err(WeightError::NotFloat(_))));
    }

    #[test]
    fn fast_weight_path_matches_the_reference_rounding() {
        // Ties (x.5 steps), saturation, non-finite values, per tensor and per channel on axes
        // 0, 1 and 2: the same integers as `quantize_values` clamped to ±127.
        let mut vals: Vec<f32> = (0..240).map(|i| ((i * 37) % 255) as f32 / 2.0 - 63.5).collect();
        vals[7] = f32::NAN;
        vals[11] = f32::INFINITY;
        vals[13] = -1.0e30;
        let w = Tensor::from_slice(vec![4, 6, 10], &vals).unwrap();
        for axis in [None, Some(0), Some(1), Some(2)] {
            let (q, p) = quantize_weight(&w, axis).unwrap();
            let want: Vec<i8> =
                quantize_values(&vals, &[4, 6, 10], &p).into_iter().map(|v| v.clamp(-127, 127) as i8).collect();
            assert_eq!(q.to_vec::<i8>().unwrap(), want, "axis {axis:?}");
            assert_eq!(
                p.scale,
                absmax_reference(&vals, &[4, 6, 10], axis).iter().map(|m| (m / 127.0).max(1e-8)).collect::<Vec<_>>()
            );
        }
        // Exact ties round to even: 0.5 → 0, 1.5 → 2, -2.5 → -2 (scale 1 from absmax 127).
        let t = Tensor::from_slice(vec![4], &[0.5f32, 1.5, -2.5, 127.0]).unwrap();
        assert_eq!(quantize_weight(&t, None).unwrap().0.to_vec::<i8>().unwrap(), vec![0, 2, -2, 127]);
    }

    /// Per-element definition of `quantize_weight`: the channel of element `i` is
    /// `(i / inner) % n`, its integer `quantize` clamped to ±127.
    fn quantize_reference(values: &[f32], dims: &[usize], axis: Option<usize>) -> (Vec<i8>, Vec<f32>) {
        let scale: Vec<f32> = absmax_reference(values, dims, axis).iter().map(|m| (m / 127.0).max(1e-8)).collect();
        let p = QParams { ty: IntType::S8, zero_point: vec![0; scale.len()], scale: scale.clone(), axis };
        let q = quantize_values(values, dims, &p).into_iter().map(|v| v.clamp(-127, 127) as i8).collect();
        (q, scale)
    }

    /// Deterministic values with a spread of magnitudes, a few non-finite ones.
    fn odd_values(len: usize) -> Vec<f32> {
        let mut v: Vec<f32> =
            (0..len).map(|i| (((i * 7919) % 1001) as f32 - 500.0) * 0.01 * (1 + i % 13) as f32).collect();
        for (k, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -3.0e38].into_iter().enumerate() {
            if let Some(x) = v.get_mut(k * 131 + 5) {
                *x = bad;
            }
        }
        v
    }

    #[test]
    fn streaming_walks_match_the_per_element_definition_on_odd_shapes() {
        // Row walks (inner >= 64), block walks (inner < 64, e.g. a MatMul [K, N] per column),
        // per tensor, and tensors longer than one decoded piece whose rows and blocks straddle
        // piece boundaries.
        let shapes: &[&[usize]] = &[
            &[7],
            &[3, 5],
            &[5, 3, 2],
            &[1, 1],
            &[129, 67],
            &[3, 70, 2],
            &[2, 3, 65],
            &[97, 173],
            &[8200, 3],
            &[3, 11, 997],
        ];
        for dims in shapes {
            let len: usize = dims.iter().product();
            let vals = odd_values(len);
            let w = Tensor::from_slice(dims.to_vec(), &vals).unwrap();
            for axis in std::iter::once(None).chain((0..dims.len()).map(Some)) {
                let (q, p) = quantize_weight(&w, axis).unwrap();
                let (want_q, want_s) = quantize_reference(&vals, dims, axis);
                assert_eq!(p.scale, want_s, "{dims:?} axis {axis:?}");
                assert_eq!(q.to_vec::<i8>().unwrap(), want_q, "{dims:?} axis {axis:?}");
                assert_eq!(absmax(&vals, dims, axis), absmax_reference(&vals, dims, axis), "{dims:?} axis {axis:?}");
            }
        }
    }

    #[test]
    fn half_weights_and_degenerate_shapes_quantize_like_f32() {
        let vals = odd_values(6 * 70);
        let finite: Vec<f32> = vals.iter().map(|&v| if v.is_finite() && v.abs() < 6e4 { v } else { 1.0 }).collect();
        let halves: Vec<half::f16> = finite.iter().map(|&v| half::f16::from_f32(v)).collect();
        let h = Tensor::from_slice(vec![6, 70], &halves).unwrap();
        let widened: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
        for axis in [None, Some(0), Some(1)] {
            let (q, p) = quantize_weight(&h, axis).unwrap();
            let (want_q, want_s) = quantize_reference(&widened, &[6, 70], axis);
            assert_eq!((q.to_vec::<i8>().unwrap(), p.scale), (want_q, want_s), "axis {axis:?}");
        }
        // Empty weights: no integers, and one valid scale per (possibly empty) channel set.
        let e = Tensor::from_slice::<f32>(vec![0, 4], &[]).unwrap();
        let (q, p) = quantize_weight(&e, Some(1)).unwrap();
        assert_eq!((q.len(), p.scale.len()), (0, 4));
        let (_, p) = quantize_weight(&e, Some(0)).unwrap();
        assert_eq!(p.scale, vec![1e-8]);
        // All non-finite: the scale is the floor, every integer 0.
        let bad = Tensor::from_slice(vec![2, 2], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]).unwrap();
        let (q, p) = quantize_weight(&bad, Some(1)).unwrap();
        assert_eq!((q.to_vec::<i8>().unwrap(), p.scale), (vec![0; 4], vec![1e-8; 2]));
    }

    /// Per-element channel lookup, the definition `absmax` computes row by row.
    fn absmax_reference(values: &[f32], dims: &[usize], axis: Option<usize>) -> Vec<f32> {
        let (n, inner) = axis.map_or((1, 1), |a| (dims[a], dims[a + 1..].iter().product()));
        let mut out = vec![0.0f32; n];
        for (i, v) in values.iter().enumerate() {
            let c = if axis.is_some() { (i / inner) % n } else { 0 };
            if v.is_finite() {
                out[c] = out[c].max(v.abs());
            }
        }
        out
    }

    #[test]
    fn bias_scale_is_input_times_weight_scale() {
        let w = Tensor::from_slice(vec![2, 1], &[1.27f32, 0.127]).unwrap();
        let (_, p) = quantize_weight(&w, Some(0)).unwrap();
        let b = Tensor::from_slice(vec![2], &[0.5f32, -0.5]).unwrap();
        let (q, scales) = quantize_bias(&b, 0.1, &p).unwrap();
        assert_eq!(q.dtype(), DataType::I32);
        assert!((scales[0] - 0.001).abs() < 1e-9 && (scales[1] - 0.0001).abs() < 1e-10);
        assert_eq!(q.to_vec::<i32>().unwrap(), vec![500, -5000]);
        let short = Tensor::from_slice(vec![1], &[0.5f32]).unwrap();
        assert!(matches!(quantize_bias(&short, 0.1, &p), Err(WeightError::BiasChannels { .. })));
    }
}
