//! The weight quantizer's streaming walk: per-channel maxima and S8 integers computed from a
//! weight's bytes a cache-sized piece at a time, pieces in parallel, in storage order (no
//! strided walk, no whole f32 copy), for any channel axis.

use kiln_compiler::{DataType, Tensor, TensorError};
use rayon::prelude::*;

use super::{IntType, MIN_SCALE, QParams, WeightError, channel_layout, float_values};

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
        self.range(start, (start + PIECE).min(self.len()), buf)
    }

    /// Elements `start..end`, decoded into `buf` when they must be.
    fn range<'b>(&'b self, start: usize, end: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
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

/// Longest channel row quantized in one pass ([`quantize_rows`]): its decoded copy stays in
/// cache between finding its maximum and writing its integers.
const FUSED_ROW_MAX: usize = 1 << 16;

/// A weight whose channels are its `n` contiguous rows of `inner` elements (the axis is the
/// outermost: Gather tables, Conv filters, transposed Gemm weights) in one pass: each row's
/// maximum, scale and integers while the row is in cache. Rows in parallel.
fn quantize_rows(pieces: &Pieces<'_>, n: usize, inner: usize) -> (Vec<u8>, Vec<f32>) {
    let rows_per_task = (PIECE / inner).max(1);
    let mut q = vec![0u8; n * inner];
    let mut scale = vec![0.0f32; n];
    q.par_chunks_mut(inner * rows_per_task).zip(scale.par_chunks_mut(rows_per_task)).enumerate().for_each_init(
        Vec::new,
        |buf, (task, (qs, ss))| {
            for (r, (qrow, s)) in qs.chunks_mut(inner).zip(ss.iter_mut()).enumerate() {
                let start = (task * rows_per_task + r) * inner;
                let row = pieces.range(start, start + inner, buf);
                *s = (row_absmax(row) / 127.0).max(MIN_SCALE as f32);
                for (d, &v) in qrow.iter_mut().zip(row) {
                    *d = weight_byte(v, *s);
                }
            }
        },
    );
    (q, scale)
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
    if walk.rows && len > 0 && walk.n.checked_mul(walk.inner) == Some(len) && walk.inner <= FUSED_ROW_MAX {
        let (q, scale) = quantize_rows(&pieces, walk.n, walk.inner);
        let params = QParams { ty: IntType::S8, zero_point: vec![0; scale.len()], scale, axis };
        return Ok((Tensor::new(DataType::I8, dims, bytes::Bytes::from(q))?, params));
    }
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
