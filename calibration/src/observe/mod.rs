//! Streaming, mergeable statistics of one tensor, and the methods that turn them into ranges.

use kiln_compiler::{DataType, Tensor};
use rayon::prelude::*;

mod histogram;
mod methods;
mod minmax;

pub use histogram::{Histogram, MAX_BINS};
pub use methods::Method;
pub use minmax::{MinMax, MovingMinMax};

/// Values per parallel chunk: large tensors are summarized and binned chunk by chunk on the
/// rayon pool; small ones in one go.
const CHUNK: usize = 1 << 16;

/// Why a tensor could not be observed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("tensor `{name}` has type {dtype}; only f16, bf16, f32 and f64 activations are observed")]
pub struct NotFloat {
    pub name: String,
    pub dtype: DataType,
}

/// Everything observed of one tensor: the exact extremes, the histogram when the method needs
/// one (or the caller keeps it to re-derive ranges later), and, when asked for, the
/// moving-average extremes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorObserver {
    pub stats: MinMax,
    /// `None` for MinMax and moving-average MinMax unless kept: binning costs several times
    /// what the extremes cost, and those methods only read the extremes.
    pub histogram: Option<Histogram>,
    pub moving: Option<MovingMinMax>,
}

impl TensorObserver {
    /// An observer with a histogram, whatever the method.
    pub fn new(method: &Method) -> TensorObserver {
        TensorObserver::for_method(method, true)
    }

    /// An observer with a histogram when `method` needs one or `keep_histogram` is set.
    pub fn for_method(method: &Method, keep_histogram: bool) -> TensorObserver {
        let moving = match method {
            Method::MovingMinMax { constant } => Some(MovingMinMax::new(*constant)),
            _ => None,
        };
        let histogram = (keep_histogram || method.needs_histogram()).then(Histogram::new);
        TensorObserver { stats: MinMax::new(), histogram, moving }
    }

    /// Observes one sample's value of the tensor.
    pub fn observe(&mut self, name: &str, t: &Tensor) -> Result<(), NotFloat> {
        let not_float = || NotFloat { name: name.to_string(), dtype: t.dtype() };
        let Some(bytes) = t.bytes() else { return Err(not_float()) };
        let size = match t.dtype() {
            DataType::F32 => 4,
            DataType::F64 => 8,
            DataType::F16 | DataType::BF16 => 2,
            _ => return Err(not_float()),
        };
        let dtype = t.dtype();
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK * size).collect();
        // Pass 1: extremes per chunk (min/max are order-free, so any reduction order is fine).
        let stats = if chunks.len() == 1 {
            extremes(dtype, chunks[0])
        } else {
            chunks.par_iter().map(|c| extremes(dtype, c)).reduce(MinMax::new, |mut a, b| {
                a.merge(&b);
                a
            })
        };
        self.stats.merge(&stats);
        if let Some(moving) = &mut self.moving {
            moving.update(&stats);
        }
        let Some(histogram) = &mut self.histogram else { return Ok(()) };
        // Pass 2: bin each chunk into its own counts, then add the counts (integers).
        histogram.grow_to(&stats);
        let h = &*histogram;
        let len = h.counts().len();
        let counts = chunks
            .par_iter()
            .map(|c| {
                let mut counts = vec![0u64; len];
                match dtype {
                    DataType::F32 => h.bin_iter_into(
                        c.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                        &mut counts,
                    ),
                    _ => h.bin_into(&decode(dtype, c), &mut counts),
                }
                counts
            })
            .reduce(
                || vec![0u64; len],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        histogram.add_counts(&counts);
        Ok(())
    }

    /// The range `method` gives, or `None` when no finite value was seen.
    pub fn range(&self, method: &Method) -> Option<(f64, f64)> {
        match &self.histogram {
            Some(h) => method.range(h, self.moving.as_ref()),
            None => method.range_without_histogram(&self.stats, self.moving.as_ref()),
        }
    }
}

/// The extremes of little-endian float bytes, read in place (no widened copy).
fn extremes(dtype: DataType, bytes: &[u8]) -> MinMax {
    let mut m = MinMax::new();
    match dtype {
        DataType::F32 => match f32_extremes(bytes) {
            Some((lo, hi, n)) => m.include_extremes(f64::from(lo), f64::from(hi), n),
            // Non-finite values (or none at all): the counting path.
            None => m.add_iter(bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))),
        },
        DataType::F64 => m.add_iter(
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        ),
        DataType::F16 => m.add_iter(bytes.chunks_exact(2).map(|b| f64::from(half::f16::from_le_bytes([b[0], b[1]])))),
        DataType::BF16 => m.add_iter(bytes.chunks_exact(2).map(|b| f64::from(half::bf16::from_le_bytes([b[0], b[1]])))),
        _ => {}
    }
    m
}

/// Lanes of the f32 scan: independent minima and maxima the compiler keeps in vector registers.
const LANES: usize = 16;

/// Extremes and count of little-endian f32 values when every one is finite; `None` when one is
/// NaN or infinite, there are none, or the bytes are not 4-aligned (the caller then takes the
/// counting path). Comparisons on finite floats are exact, so the lanes' order never changes
/// the result; `-0.0` and `0.0` compare equal and the caller folds them.
fn f32_extremes(bytes: &[u8]) -> Option<(f32, f32, u64)> {
    // SAFETY: every bit pattern is a valid u32; `align_to` only reinterprets the aligned middle.
    let (head, words, tail) = unsafe { bytes.align_to::<u32>() };
    if !head.is_empty() || !tail.is_empty() || words.is_empty() {
        return None;
    }
    let (mut lo, mut hi) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    // Exponent bits all set: infinite or NaN.
    let mut non_finite = [0u32; LANES];
    let mut step = |l: usize, w: u32| {
        let bits = u32::from_le(w);
        let x = f32::from_bits(bits);
        non_finite[l] |= u32::from(bits & 0x7f80_0000 == 0x7f80_0000);
        lo[l] = if x < lo[l] { x } else { lo[l] };
        hi[l] = if x > hi[l] { x } else { hi[l] };
    };
    let mut blocks = words.chunks_exact(LANES);
    for block in &mut blocks {
        for (l, &w) in block.iter().enumerate() {
            step(l, w);
        }
    }
    for (l, &w) in blocks.remainder().iter().enumerate() {
        step(l, w);
    }
    if non_finite.iter().any(|&f| f != 0) {
        return None;
    }
    let lo = lo.iter().copied().fold(f32::INFINITY, |a, b| if b < a { b } else { a });
    let hi = hi.iter().copied().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    Some((lo, hi, words.len() as u64))
}

/// Little-endian float bytes widened to f64 (exact for every float type here).
fn decode(dtype: DataType, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        DataType::F32 => {
            bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
        }
        DataType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        DataType::F16 => bytes.chunks_exact(2).map(|b| f64::from(half::f16::from_le_bytes([b[0], b[1]]))).collect(),
        DataType::BF16 => bytes.chunks_exact(2).map(|b| f64::from(half::bf16::from_le_bytes([b[0], b[1]]))).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observing_tensors_matches_adding_values() {
        let v: Vec<f32> = (0..200_000).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 5.0).collect();
        let t = Tensor::from_slice(vec![v.len()], &v).unwrap();
        let mut o = TensorObserver::new(&Method::Entropy);
        o.observe("t", &t).unwrap();
        let mut h = Histogram::new();
        h.add(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        assert_eq!(o.histogram.as_ref(), Some(&h));
        assert_eq!(&o.stats, h.stats());
        let half = Tensor::from_slice(vec![2], &[half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]).unwrap();
        o.observe("t", &half).unwrap();
        assert_eq!(o.histogram.as_ref().map(|h| h.stats().finite()), Some(200_002));
        let ints = Tensor::from_slice(vec![1], &[1i64]).unwrap();
        assert!(o.observe("ids", &ints).is_err());
    }

    #[test]
    fn the_f32_scan_agrees_with_the_counting_path() {
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![-0.0],
            vec![0.0, -0.0, 3.5],
            (0..1001).map(|i| ((i * 7919) % 997) as f32 / 13.0 - 20.0).collect(),
            (0..37).map(|i| -(i as f32) - 0.5).collect(),
            vec![1.0, f32::NAN, -2.0],
            vec![f32::NEG_INFINITY, 4.0],
            vec![f32::MAX, f32::MIN, f32::MIN_POSITIVE],
        ];
        for v in cases {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut slow = MinMax::new();
            slow.add(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
            assert_eq!(extremes(DataType::F32, &bytes), slow, "{v:?}");
        }
    }

    #[test]
    fn minmax_skips_the_histogram_and_gives_the_same_extremes() {
        let mut v: Vec<f32> = (0..150_000).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 5.0).collect();
        v.extend([f32::NAN, f32::INFINITY, -0.0]);
        let t = Tensor::from_slice(vec![v.len()], &v).unwrap();
        let mut lean = TensorObserver::for_method(&Method::MinMax, false);
        let mut full = TensorObserver::for_method(&Method::MinMax, true);
        lean.observe("t", &t).unwrap();
        full.observe("t", &t).unwrap();
        assert!(lean.histogram.is_none() && full.histogram.is_some());
        assert_eq!(lean.stats, full.stats);
        assert_eq!((lean.stats.nan(), lean.stats.pos_inf()), (1, 1));
        assert_eq!(lean.range(&Method::MinMax), full.range(&Method::MinMax));
        assert_eq!(lean.range(&Method::MinMax), Some((-5.0, f64::from(999.0f32 / 37.0 - 5.0))));
        // The clipping methods always bin, whatever the caller asks.
        assert!(TensorObserver::for_method(&Method::Entropy, false).histogram.is_some());
        assert!(TensorObserver::for_method(&Method::Percentile(99.0), false).histogram.is_some());
    }
}
