//! A streaming histogram whose contents depend only on the multiset of values seen: not on
//! batch size, order, or how the values were split into shards.
//!
//! # The grid
//! Bins have width `2^exp` and sit on a grid anchored at zero: bin `k` holds `[k·2^exp,
//! (k+1)·2^exp)`. The histogram covers `[min(lo, 0), max(hi, 0)]` (every quantization range
//! holds zero) with at most [`MAX_BINS`] bins, and `exp` is the *smallest* exponent for which
//! that span fits. So `exp` is a function of the extremes alone, and every count is the exact
//! number of values `x` with `floor(x·2^-exp) = k`.
//!
//! # Why merging is exact
//! Doubling the width maps bin `k` to bin `floor(k/2)` (an arithmetic shift), and
//! `floor(floor(x·2^-e)/2^d) = floor(x·2^-(e+d))`: coarsening a histogram gives exactly the
//! histogram built at the coarser width directly. The span at a given width only shrinks as
//! the width grows and only grows as values are added, so the exponent of a union is at least
//! the exponent of each part. Merging therefore coarsens both parts to the union's exponent and
//! adds the counts — integer additions, associative and commutative. Adding a batch is merging
//! with the batch's own histogram. Scaling by a power of two is exact in floating point, so the
//! bin of a value never depends on rounding (except for values below 2^-60 when bins are wider
//! than 2^1000, i.e. never for f32 data).

use serde::{Deserialize, Serialize};

use super::minmax::MinMax;

/// The most bins a histogram holds (as TensorRT's entropy calibrator uses).
pub const MAX_BINS: usize = 2048;
/// The finest bin width, 2^-160: below every f32 subnormal.
const MIN_EXP: i32 = -160;
/// The coarsest bin width, 2^1014: spans every finite f64 in 2048 bins.
const MAX_EXP: i32 = 1014;

/// 2^-e, exactly (`e` in `MIN_EXP..=MAX_EXP`, so the result is a normal f64).
fn inv_width(e: i32) -> f64 {
    f64::from_bits(((1023 - e) as u64) << 52)
}

/// 2^e, exactly.
fn width(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// `floor(y)` for `|y| < 2^62`, without a libm call (baseline x86-64 has no rounding
/// instruction): truncation, one lower when that rounded up. Bin indices of values inside a
/// histogram's span are at most `MAX_BINS` from zero, far inside that range.
fn floor_small(y: f64) -> i64 {
    let t = y as i64;
    if (t as f64) > y { t - 1 } else { t }
}

fn bin_of(x: f64, e: i32) -> i64 {
    (x * inv_width(e)).floor() as i64
}

/// `floor(k / 2^d)`.
fn coarsen(k: i64, d: u32) -> i64 {
    if d >= 63 { if k < 0 { -1 } else { 0 } } else { k >> d }
}

/// The smallest exponent whose grid spans `[min(lo,0), max(hi,0)]` in at most `MAX_BINS` bins.
fn exp_for(lo: f64, hi: f64) -> i32 {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let fits = |e: i32| bin_of(hi, e) - bin_of(lo, e) < MAX_BINS as i64;
    // Start below the answer: any fitting e has 2^e >= (hi - lo) / MAX_BINS.
    let r = (hi - lo) / MAX_BINS as f64;
    let mut e = if r > 0.0 && r.is_finite() { (r.log2().floor() as i32 - 2).clamp(MIN_EXP, MAX_EXP) } else { MIN_EXP };
    if !r.is_finite() {
        e = MAX_EXP - 2;
    }
    while e < MAX_EXP && !fits(e) {
        e += 1;
    }
    e
}

/// Counts of finite values on the power-of-two grid, plus exact [`MinMax`] statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HistogramRepr", into = "HistogramRepr")]
pub struct Histogram {
    stats: MinMax,
    exp: i32,
    /// Bin index of `counts[0]`: the bin of `min(lo, 0)`. `counts` runs to the bin of
    /// `max(hi, 0)`, so the layout is canonical.
    first: i64,
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { stats: MinMax::new(), exp: MIN_EXP, first: 0, counts: Vec::new() }
    }

    /// Exact extremes and counts of what was seen.
    pub fn stats(&self) -> &MinMax {
        &self.stats
    }

    /// log2 of the bin width.
    pub fn exp(&self) -> i32 {
        self.exp
    }

    pub fn bin_width(&self) -> f64 {
        width(self.exp)
    }

    /// Index of the first bin (bin `k` covers `[k·w, (k+1)·w)`).
    pub fn first_bin(&self) -> i64 {
        self.first
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Re-lays the counts for new extremes, coarsening to the exponent they need.
    fn relayout(&mut self, stats: MinMax) {
        let (Some(lo), Some(hi)) = (stats.min(), stats.max()) else {
            self.stats = stats;
            return;
        };
        let e = exp_for(lo, hi);
        let first = bin_of(lo.min(0.0), e);
        let last = bin_of(hi.max(0.0), e);
        let mut counts = vec![0u64; (last - first + 1) as usize];
        let d = (e - self.exp) as u32;
        for (i, &c) in self.counts.iter().enumerate() {
            if c != 0 {
                let k = coarsen(self.first + i as i64, d);
                counts[(k - first) as usize] += c;
            }
        }
        *self = Histogram { stats, exp: e, first, counts };
    }

    /// Adds values (any order, any grouping: the result is the same).
    pub fn add(&mut self, values: &[f64]) {
        let mut batch = MinMax::new();
        batch.add(values);
        self.add_with_stats(values, &batch);
    }

    /// Adds values whose statistics were already computed (a parallel caller computes them
    /// over chunks first, then bins each chunk with [`Histogram::bin_into`]).
    pub(crate) fn add_with_stats(&mut self, values: &[f64], batch: &MinMax) {
        self.grow_to(batch);
        let mut counts = std::mem::take(&mut self.counts);
        self.bin_into(values, &mut counts);
        self.counts = counts;
    }

    /// Makes room for values with statistics `batch` (after this, [`Histogram::bin_into`]
    /// accepts them).
    pub(crate) fn grow_to(&mut self, batch: &MinMax) {
        let mut stats = self.stats.clone();
        stats.merge(batch);
        self.relayout(stats);
    }

    /// Counts finite `values` into `counts` (laid out like this histogram's). Every value must
    /// lie within the extremes given to [`Histogram::grow_to`].
    pub(crate) fn bin_into(&self, values: &[f64], counts: &mut [u64]) {
        self.bin_iter_into(values.iter().copied(), counts);
    }

    /// [`Histogram::bin_into`] over values as they are produced (no widened copy).
    pub(crate) fn bin_iter_into(&self, values: impl Iterator<Item = f64>, counts: &mut [u64]) {
        let (first, inv) = (self.first, inv_width(self.exp));
        for x in values {
            if x.is_finite() {
                counts[(floor_small(x * inv) - first) as usize] += 1;
            }
        }
    }

    /// Adds counts binned with [`Histogram::bin_into`] since the last [`Histogram::grow_to`].
    pub(crate) fn add_counts(&mut self, counts: &[u64]) {
        self.counts.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
    }

    /// Adds another histogram: exact, associative and commutative.
    pub fn merge(&mut self, other: &Histogram) {
        self.grow_to(&other.stats);
        let d = (self.exp - other.exp) as u32;
        for (i, &c) in other.counts.iter().enumerate() {
            if c != 0 {
                let k = coarsen(other.first + i as i64, d);
                self.counts[(k - self.first) as usize] += c;
            }
        }
    }

    /// The counts of |x| on the same grid, from zero: bin `k` holds `|x|` in `[k·w, (k+1)·w)`
    /// (bin `-k-1` of the signed grid folds onto bin `k`).
    pub fn abs_counts(&self) -> Vec<u64> {
        let n = (self.first + self.counts.len() as i64).max(-self.first).max(0) as usize;
        let mut out = vec![0u64; n];
        for (i, &c) in self.counts.iter().enumerate() {
            let k = self.first + i as i64;
            let a = if k >= 0 { k } else { -k - 1 } as usize;
            out[a] += c;
        }
        out
    }
}

/// The serialized form: counts as one line of text (`"3 0*12 7"`: `0*12` is twelve zeros), so
/// a ranges file stays readable; parsing checks every invariant.
#[derive(Serialize, Deserialize)]
struct HistogramRepr {
    #[serde(flatten)]
    stats: MinMax,
    exp: i32,
    first_bin: i64,
    counts: String,
}

impl From<Histogram> for HistogramRepr {
    fn from(h: Histogram) -> HistogramRepr {
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < h.counts.len() {
            let run = h.counts[i..].iter().take_while(|&&c| c == h.counts[i]).count();
            if run > 2 {
                parts.push(format!("{}*{run}", h.counts[i]));
            } else {
                parts.extend(std::iter::repeat_n(h.counts[i].to_string(), run));
            }
            i += run;
        }
        HistogramRepr { stats: h.stats, exp: h.exp, first_bin: h.first, counts: parts.join(" ") }
    }
}

impl TryFrom<HistogramRepr> for Histogram {
    type Error = String;

    fn try_from(r: HistogramRepr) -> Result<Histogram, String> {
        let mut counts = Vec::new();
        for part in r.counts.split_ascii_whitespace() {
            let (value, run) = match part.split_once('*') {
                Some((v, n)) => (v, n.parse::<usize>().map_err(|_| format!("bad run '{part}'"))?),
                None => (part, 1),
            };
            let value: u64 = value.parse().map_err(|_| format!("bad count '{part}'"))?;
            if counts.len() + run > MAX_BINS {
                return Err(format!("more than {MAX_BINS} bins"));
            }
            counts.extend(std::iter::repeat_n(value, run));
        }
        let mut expected = Histogram { stats: MinMax::new(), exp: MIN_EXP, first: 0, counts: Vec::new() };
        expected.relayout(r.stats.clone());
        if (expected.exp, expected.first, expected.counts.len()) != (r.exp, r.first_bin, counts.len()) {
            return Err(format!(
                "histogram layout (exp {}, first bin {}, {} bins) does not match its min/max (exp {}, first bin {}, {} bins)",
                r.exp,
                r.first_bin,
                counts.len(),
                expected.exp,
                expected.first,
                expected.counts.len()
            ));
        }
        let total = counts.iter().try_fold(0u64, |a, &c| a.checked_add(c)).ok_or("counts overflow")?;
        if total != r.stats.finite() {
            return Err(format!("counts add up to {total} but {} finite values are recorded", r.stats.finite()));
        }
        Ok(Histogram { stats: r.stats, exp: r.exp, first: r.first_bin, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values with a heavy tail, negatives and zeros.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                match i % 7 {
                    0 => 0.0,
                    1 => -u * 3.0,
                    2 => (u * 40.0).powi(3) as f32 as f64,
                    _ => u as f32 as f64,
                }
            })
            .collect()
    }

    fn build(chunks: &[&[f64]]) -> Histogram {
        let mut h = Histogram::new();
        for c in chunks {
            h.add(c);
        }
        h
    }

    #[test]
    fn floor_small_is_floor() {
        let mut ys = vec![0.0, -0.0, 1.0, -1.0, 2047.999999, -2048.0, -2048.5, 0.5, -0.5, 1e-300, -1e-300];
        ys.extend((0..10_000).map(|i| (i as f64 - 5000.0) * 0.37));
        ys.extend([f64::from(f32::MAX) * 2f64.powi(-120), -(2f64.powi(61)) - 0.5]);
        for y in ys {
            assert_eq!(floor_small(y), y.floor() as i64, "{y}");
        }
        assert_ne!(floor_small(-0.5), (-0.5f64) as i64, "truncation alone would be wrong here");
    }

    #[test]
    fn exponent_is_minimal_and_counts_exact() {
        let mut h = Histogram::new();
        h.add(&[0.0, 1.0, 2.0, 3.0]);
        // [0, 3] needs width 2^-9: 3·512 = 1536 < 2048 bins; 2^-10 would need 3073.
        assert_eq!(h.exp(), -9);
        assert_eq!(h.first_bin(), 0);
        assert_eq!(h.counts().len(), 1537);
        assert_eq!(h.counts()[0] + h.counts()[512] + h.counts()[1024] + h.counts()[1536], 4);
        h.add(&[-0.5]);
        assert_eq!(h.exp(), -9, "[-0.5, 3] still fits");
        assert_eq!(h.counts().len(), 1793);
        assert_eq!(h.first_bin(), -256);
        h.add(&[-1.5]);
        assert_eq!(h.exp(), -8);
        assert_eq!(h.stats().finite(), 6);
        assert_eq!(h.counts().iter().sum::<u64>(), 6);
    }

    #[test]
    fn order_grouping_and_sharding_do_not_matter() {
        let v = values(20_000, 7);
        let once = build(&[&v]);
        let mut rev = v.clone();
        rev.reverse();
        assert_eq!(build(&[&rev]), once);
        for size in [1, 3, 64, 4096] {
            let chunks: Vec<&[f64]> = v.chunks(size).collect();
            assert_eq!(build(&chunks), once, "chunks of {size}");
        }
        // Shards as `i, i+n, …`, merged in every order.
        let shards: Vec<Histogram> =
            (0..4).map(|i| build(&[&v.iter().copied().skip(i).step_by(4).collect::<Vec<_>>()])).collect();
        for order in [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]] {
            let mut m = Histogram::new();
            for i in order {
                m.merge(&shards[i]);
            }
            assert_eq!(m, once, "{order:?}");
        }
        // Tree-shaped merges too.
        let mut a = shards[0].clone();
        a.merge(&shards[1]);
        let mut b = shards[2].clone();
        b.merge(&shards[3]);
        b.merge(&a);
        assert_eq!(b, once);
    }

    #[test]
    fn non_finite_values_are_counted_apart() {
        let mut h = Histogram::new();
        h.add(&[f64::NAN, f64::INFINITY, 1.0, f64::NEG_INFINITY, -0.0]);
        assert_eq!(h.stats().finite(), 2);
        assert_eq!((h.stats().nan(), h.stats().pos_inf(), h.stats().neg_inf()), (1, 1, 1));
        assert_eq!(h.counts().iter().sum::<u64>(), 2);
        let empty = Histogram::new();
        assert!(empty.counts().is_empty() && empty.stats().min().is_none());
    }

    #[test]
    fn extremes_of_f64_fit() {
        let mut h = Histogram::new();
        h.add(&[f64::MAX, -f64::MAX, 1e-300, 0.0]);
        assert!(h.counts().len() <= MAX_BINS);
        assert_eq!(h.counts().iter().sum::<u64>(), 4);
        let mut tiny = Histogram::new();
        tiny.add(&[1e-45, -1e-45]);
        assert_eq!(tiny.counts().iter().sum::<u64>(), 2);
    }

    #[test]
    fn abs_folds_onto_the_same_grid() {
        let mut h = Histogram::new();
        h.add(&[-2.0, -0.5, 0.5, 1.0]);
        let w = h.bin_width();
        let a = h.abs_counts();
        assert_eq!(a.iter().sum::<u64>(), 4);
        assert_eq!(a[(0.5 / w) as usize - 1], 1, "-0.5 folds just below 0.5");
        assert_eq!(a[(0.5 / w) as usize], 1);
        assert_eq!(a.len(), (2.0 / w) as usize);
    }

    #[test]
    fn serialization_round_trips_and_is_checked() {
        let h = build(&[&values(5000, 3)]);
        let text = serde_json::to_string(&h).unwrap();
        assert!(text.contains("*"), "zero runs are compressed: {}", &text[..200.min(text.len())]);
        let back: Histogram = serde_json::from_str(&text).unwrap();
        assert_eq!(back, h);
        let tampered = text.replacen("\"exp\":", "\"exp\":1", 1);
        assert!(serde_json::from_str::<Histogram>(&tampered).is_err());
        let empty: Histogram = serde_json::from_str(&serde_json::to_string(&Histogram::new()).unwrap()).unwrap();
        assert_eq!(empty, Histogram::new());
    }
}
