//! Min/max observers: the exact extremes (order-free, mergeable), and the moving average of
//! per-sample extremes (order-dependent, not mergeable).

use serde::{Deserialize, Serialize};

/// Exact extremes of the finite values seen, and how many values were finite, NaN or infinite.
/// Minimum and maximum are associative and commutative, so this merges exactly. `-0.0` counts
/// as `0.0`, so the recorded zero never depends on which one came first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinMax {
    #[serde(with = "canonical")]
    min: Option<f64>,
    #[serde(with = "canonical")]
    max: Option<f64>,
    finite: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    nan: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pos_inf: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    neg_inf: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

// Extremes are never NaN (only finite values are recorded), so `Eq` is sound.
impl Eq for MinMax {}

impl MinMax {
    pub fn new() -> MinMax {
        MinMax::default()
    }

    pub fn min(&self) -> Option<f64> {
        self.min
    }

    pub fn max(&self) -> Option<f64> {
        self.max
    }

    /// Number of finite values.
    pub fn finite(&self) -> u64 {
        self.finite
    }

    pub fn nan(&self) -> u64 {
        self.nan
    }

    pub fn pos_inf(&self) -> u64 {
        self.pos_inf
    }

    pub fn neg_inf(&self) -> u64 {
        self.neg_inf
    }

    pub fn add(&mut self, values: &[f64]) {
        self.add_iter(values.iter().copied());
    }

    /// Adds values as they are produced (no buffer of them is needed).
    pub fn add_iter(&mut self, values: impl Iterator<Item = f64>) {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut finite = 0u64;
        for x in values {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
                finite += 1;
            } else if x.is_nan() {
                self.nan += 1;
            } else if x > 0.0 {
                self.pos_inf += 1;
            } else {
                self.neg_inf += 1;
            }
        }
        if finite > 0 {
            self.include(lo, hi, finite);
        }
    }

    /// Adds `finite` finite values whose extremes are `lo` and `hi` (a caller that scanned
    /// them itself).
    pub(crate) fn include_extremes(&mut self, lo: f64, hi: f64, finite: u64) {
        self.include(lo, hi, finite);
    }

    fn include(&mut self, lo: f64, hi: f64, finite: u64) {
        // `+ 0.0` turns -0.0 into 0.0 and leaves every other value alone.
        let (lo, hi) = (lo + 0.0, hi + 0.0);
        self.min = Some(self.min.map_or(lo, |m| m.min(lo)));
        self.max = Some(self.max.map_or(hi, |m| m.max(hi)));
        self.finite += finite;
    }

    pub fn merge(&mut self, other: &MinMax) {
        if let (Some(lo), Some(hi)) = (other.min, other.max) {
            self.include(lo, hi, other.finite);
        }
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
    }
}

/// The moving average of per-sample extremes (ONNX Runtime's `moving_average` option):
/// `m ← m + c·(sample_min − m)`. It damps outliers but depends on the order of the samples, so
/// it is outside the order/sharding guarantee of everything else here and cannot be merged.
/// It does not depend on the batch size: it is updated once per sample, never per batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingMinMax {
    constant: f64,
    #[serde(with = "canonical")]
    min: Option<f64>,
    #[serde(with = "canonical")]
    max: Option<f64>,
    samples: u64,
}

impl MovingMinMax {
    /// `constant` in (0, 1]: the weight of each new sample.
    pub fn new(constant: f64) -> MovingMinMax {
        MovingMinMax { constant, min: None, max: None, samples: 0 }
    }

    pub fn constant(&self) -> f64 {
        self.constant
    }

    pub fn min(&self) -> Option<f64> {
        self.min
    }

    pub fn max(&self) -> Option<f64> {
        self.max
    }

    /// Folds in one sample's extremes (a sample without finite values is skipped).
    pub fn update(&mut self, sample: &MinMax) {
        let (Some(lo), Some(hi)) = (sample.min(), sample.max()) else { return };
        let c = self.constant;
        self.min = Some(self.min.map_or(lo, |m| m + c * (lo - m)) + 0.0);
        self.max = Some(self.max.map_or(hi, |m| m + c * (hi - m)) + 0.0);
        self.samples += 1;
    }
}

/// Writes -0.0 as 0.0, so equal values always print the same.
mod canonical {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|x| x + 0.0).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(|x| x + 0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_merges_exactly_and_counts_non_finite() {
        let mut a = MinMax::new();
        a.add(&[1.0, -0.0, f64::NAN]);
        let mut b = MinMax::new();
        b.add(&[0.0, 5.0, f64::NEG_INFINITY]);
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!((ab.min(), ab.max(), ab.finite(), ab.nan(), ab.neg_inf()), (Some(0.0), Some(5.0), 4, 1, 1));
        assert!(ab.min().unwrap().is_sign_positive(), "-0.0 is recorded as 0.0");
        let mut all = MinMax::new();
        all.add(&[1.0, -0.0, f64::NAN, 0.0, 5.0, f64::NEG_INFINITY]);
        assert_eq!(all, ab);
    }

    #[test]
    fn moving_average_follows_samples_in_order() {
        let sample = |lo: f64, hi: f64| {
            let mut m = MinMax::new();
            m.add(&[lo, hi]);
            m
        };
        let mut m = MovingMinMax::new(0.5);
        m.update(&sample(-2.0, 2.0));
        m.update(&sample(0.0, 4.0));
        assert_eq!((m.min(), m.max()), (Some(-1.0), Some(3.0)));
        m.update(&sample(0.0, 8.0));
        let mut r = MovingMinMax::new(0.5);
        r.update(&sample(0.0, 8.0));
        r.update(&sample(0.0, 4.0));
        r.update(&sample(-2.0, 2.0));
        assert_ne!(r, m, "order matters: documented, and excluded from the merge guarantee");
    }
}
