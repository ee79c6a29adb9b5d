//! Accuracy metrics: how far a candidate model's outputs are from a reference's on the same
//! inputs, and the rules that say whether that is good enough.
//!
//! An [`Accumulator`] takes one output's (reference, candidate) tensors sample by sample and
//! [`finish`](Accumulator::finish)es into [`OutputMetrics`]: memory stays bounded by one sample,
//! and the result depends only on the samples and their order (sequential f64 sums).
//!
//! ```
//! use kiln_compiler::metrics::{Accumulator, Metric, MetricsConfig};
//! use kiln_compiler::Tensor;
//!
//! let reference = Tensor::from_slice(vec![1, 3], &[0.1f32, 0.7, 0.2]).unwrap();
//! let candidate = Tensor::from_slice(vec![1, 3], &[0.1f32, 0.6, 0.3]).unwrap();
//! let mut acc = Accumulator::new(MetricsConfig::default());
//! acc.add(&reference, &candidate).unwrap();
//! let m = acc.finish();
//! assert!((m.get(Metric::MaxAbs).unwrap() - 0.1).abs() < 1e-6);
//! assert_eq!(m.get(Metric::Top1), Some(1.0));
//! ```

mod tolerance;

pub use tolerance::{
    BF16, Comparison, FP16, FP32_REWRITE, IMPLICIT, INT4, INT8, Precision, Rule, SpecError, ToleranceSpec, Verdict,
};

use std::fmt;

use crate::tensor::Tensor;

/// One metric of one output. Names are the ones tolerance specs and reports use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Largest |candidate − reference| over every finite element pair.
    MaxAbs,
    /// Mean |candidate − reference| over every finite element pair.
    MeanAbs,
    /// Largest |candidate − reference| / max(|reference|, floor); see [`MetricsConfig::relative_floor`].
    MaxRel,
    /// Cosine similarity of the flattened output, averaged over samples.
    CosineMean,
    /// Cosine similarity of the flattened output, the worst sample.
    CosineMin,
    /// Signal-to-quantization-noise ratio: 10·log10(Σ reference² / Σ (candidate − reference)²)
    /// over all samples; +∞ when the outputs are identical.
    SqnrDb,
    /// Fraction of rows (every index but the last axis) where the reference's top class is the
    /// candidate's top class. Floating-point outputs whose last axis has more than 1 entry.
    Top1,
    /// Fraction of rows where the reference's top class is among the candidate's 5 best.
    /// Floating-point outputs whose last axis has more than 5 entries.
    Top5,
    /// Fraction of lanes along [`MetricsConfig::argmax_axis`] where both argmaxes agree.
    Argmax,
    /// NaN elements in the candidate.
    Nan,
    /// ±∞ elements in the candidate.
    Inf,
    /// NaN elements in the reference.
    RefNan,
    /// ±∞ elements in the reference.
    RefInf,
    /// Elements where one side is finite and the other not, or both are non-finite but differ
    /// (NaN against ∞, +∞ against −∞).
    NonfiniteMismatch,
    /// Samples where the candidate's output shape differs from the reference's (those samples
    /// are left out of every other metric).
    ShapeMismatch,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 15] = [
        Metric::MaxAbs,
        Metric::MeanAbs,
        Metric::MaxRel,
        Metric::CosineMean,
        Metric::CosineMin,
        Metric::SqnrDb,
        Metric::Top1,
        Metric::Top5,
        Metric::Argmax,
        Metric::Nan,
        Metric::Inf,
        Metric::RefNan,
        Metric::RefInf,
        Metric::NonfiniteMismatch,
        Metric::ShapeMismatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::MaxAbs => "max_abs",
            Metric::MeanAbs => "mean_abs",
            Metric::MaxRel => "max_rel",
            Metric::CosineMean => "cosine_mean",
            Metric::CosineMin => "cosine_min",
            Metric::SqnrDb => "sqnr_db",
            Metric::Top1 => "top1",
            Metric::Top5 => "top5",
            Metric::Argmax => "argmax",
            Metric::Nan => "nan",
            Metric::Inf => "inf",
            Metric::RefNan => "ref_nan",
            Metric::RefInf => "ref_inf",
            Metric::NonfiniteMismatch => "nonfinite_mismatch",
            Metric::ShapeMismatch => "shape_mismatch",
        }
    }

    /// The metric of a name; also accepts the short forms `cosine` (= `cosine_min`, the
    /// conservative reading) and `sqnr`.
    pub fn from_name(name: &str) -> Option<Metric> {
        match name {
            "cosine" => Some(Metric::CosineMin),
            "sqnr" => Some(Metric::SqnrDb),
            _ => Metric::ALL.into_iter().find(|m| m.name() == name),
        }
    }

    /// Whether a larger value is better (similarities, agreements, SQNR); `None` for the
    /// reference's own counts, which say nothing about the candidate.
    pub fn higher_is_better(self) -> Option<bool> {
        match self {
            Metric::CosineMean | Metric::CosineMin | Metric::SqnrDb | Metric::Top1 | Metric::Top5 | Metric::Argmax => {
                Some(true)
            }
            Metric::RefNan | Metric::RefInf => None,
            _ => Some(false),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The floor of the relative error's denominator, as a fraction of the sample's largest
/// |reference| element: elements far below the output's scale do not turn rounding noise
/// into huge relative errors.
pub const RELATIVE_FLOOR: f64 = 1e-3;
/// The floor's absolute minimum, for an all-zero reference.
pub const RELATIVE_FLOOR_MIN: f64 = 1e-12;

/// How metrics are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsConfig {
    /// Relative error is |c − r| / max(|r|, `relative_floor` × max |r| of the sample,
    /// [`RELATIVE_FLOOR_MIN`]).
    pub relative_floor: f64,
    /// The axis of [`Metric::Argmax`]; negative counts from the end (default −1, the last).
    pub argmax_axis: i64,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig { relative_floor: RELATIVE_FLOOR, argmax_axis: -1 }
    }
}

/// Why a sample could not be accumulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("{side} output has type {dtype}, which has no numeric comparison")]
    NotNumeric { side: &'static str, dtype: String },
    #[error("{side} output has {actual} elements, but its shape {dims:?} says {expected}")]
    WrongLength { side: &'static str, dims: Vec<usize>, expected: usize, actual: usize },
}

/// The finished metrics of one output. Metrics that do not apply (top-k of a short axis, or
/// anything over zero compared elements) are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputMetrics {
    /// Samples accumulated (shape mismatches included).
    pub samples: u64,
    /// Element pairs compared (finite on both sides).
    pub compared: u64,
    /// Largest |reference| element seen: the output's scale (regression margins use it).
    pub reference_max_abs: f64,
    values: Vec<(Metric, f64)>,
}

impl OutputMetrics {
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.values.iter().find(|(m, _)| *m == metric).map(|&(_, v)| v)
    }

    /// The defined metrics in [`Metric::ALL`] order.
    pub fn values(&self) -> &[(Metric, f64)] {
        &self.values
    }
}

/// Streaming metrics of one output over samples.
#[derive(Debug, Clone)]
pub struct Accumulator {
    config: MetricsConfig,
    samples: u64,
    compared: u64,
    sum_abs: f64,
    max_abs: f64,
    max_rel: f64,
    cos_sum: f64,
    cos_min: f64,
    cos_count: u64,
    signal: f64,
    noise: f64,
    top1: (u64, u64),
    top5: (u64, u64),
    argmax: (u64, u64),
    nan: u64,
    inf: u64,
    ref_nan: u64,
    ref_inf: u64,
    nonfinite_mismatch: u64,
    shape_mismatch: u64,
    reference_max_abs: f64,
}

impl Accumulator {
    pub fn new(config: MetricsConfig) -> Accumulator {
        Accumulator {
            config,
            samples: 0,
            compared: 0,
            sum_abs: 0.0,
            max_abs: 0.0,
            max_rel: 0.0,
            cos_sum: 0.0,
            cos_min: f64::INFINITY,
            cos_count: 0,
            signal: 0.0,
            noise: 0.0,
            top1: (0, 0),
            top5: (0, 0),
            argmax: (0, 0),
            nan: 0,
            inf: 0,
            ref_nan: 0,
            ref_inf: 0,
            nonfinite_mismatch: 0,
            shape_mismatch: 0,
            reference_max_abs: 0.0,
        }
    }

    /// Adds one sample's output. Tensors of any real numeric type (and bool) are compared as
    /// f64; top-k and argmax only for floating-point references. A shape mismatch is counted,
    /// not an error.
    pub fn add(&mut self, reference: &Tensor, candidate: &Tensor) -> Result<(), MetricsError> {
        let numeric = |t: &Tensor, side| {
            t.to_f64_vec().map_err(|_| MetricsError::NotNumeric { side, dtype: t.dtype().to_string() })
        };
        if reference.dims() != candidate.dims() {
            // Still refuse strings and the like, so a bad output type is reported as such.
            numeric(reference, "reference")?;
            numeric(candidate, "candidate")?;
            self.samples += 1;
            self.shape_mismatch += 1;
            return Ok(());
        }
        let r = numeric(reference, "reference")?;
        let c = numeric(candidate, "candidate")?;
        self.add_values(reference.dims(), &r, &c, reference.dtype().is_float())
    }

    /// Adds one sample given as flat row-major values of shape `dims` on both sides;
    /// `classify` enables top-k and argmax.
    pub fn add_values(
        &mut self,
        dims: &[usize],
        reference: &[f64],
        candidate: &[f64],
        classify: bool,
    ) -> Result<(), MetricsError> {
        let expected: usize = dims.iter().product();
        for (side, v) in [("reference", reference), ("candidate", candidate)] {
            if v.len() != expected {
                return Err(MetricsError::WrongLength { side, dims: dims.to_vec(), expected, actual: v.len() });
            }
        }
        self.samples += 1;
        let sample_max = reference.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs()));
        self.reference_max_abs = self.reference_max_abs.max(sample_max);
        let floor = (self.config.relative_floor * sample_max).max(RELATIVE_FLOOR_MIN);
        let (mut dot, mut rr, mut cc) = (0.0f64, 0.0f64, 0.0f64);
        for (&r, &c) in reference.iter().zip(candidate) {
            self.nan += u64::from(c.is_nan());
            self.inf += u64::from(c.is_infinite());
            self.ref_nan += u64::from(r.is_nan());
            self.ref_inf += u64::from(r.is_infinite());
            if !(r.is_finite() && c.is_finite()) {
                let same = (r.is_nan() && c.is_nan()) || r == c;
                self.nonfinite_mismatch += u64::from(!same);
                continue;
            }
            let d = (c - r).abs();
            self.compared += 1;
            self.sum_abs += d;
            self.max_abs = self.max_abs.max(d);
            self.max_rel = self.max_rel.max(d / r.abs().max(floor));
            self.signal += r * r;
            self.noise += d * d;
            dot += r * c;
            rr += r * r;
            cc += c * c;
        }
        let cosine = if rr == 0.0 && cc == 0.0 {
            1.0
        } else if rr == 0.0 || cc == 0.0 {
            0.0
        } else {
            (dot / (rr.sqrt() * cc.sqrt())).clamp(-1.0, 1.0)
        };
        self.cos_sum += cosine;
        self.cos_min = self.cos_min.min(cosine);
        self.cos_count += 1;
        if classify && let Some(&last) = dims.last() {
            let rows = expected.checked_div(last).unwrap_or(0);
            for row in 0..rows {
                let r = &reference[row * last..(row + 1) * last];
                let c = &candidate[row * last..(row + 1) * last];
                let Some(want) = argmax(r.iter().copied()) else { continue };
                let rank = rank_of(c, want);
                for (k, counts) in [(1, &mut self.top1), (5, &mut self.top5)] {
                    if last > k {
                        counts.0 += 1;
                        counts.1 += u64::from(rank.is_some_and(|r| r < k));
                    }
                }
            }
        }
        if classify && !dims.is_empty() {
            let rank = dims.len() as i64;
            let axis =
                if self.config.argmax_axis < 0 { self.config.argmax_axis + rank } else { self.config.argmax_axis };
            if (0..rank).contains(&axis) && dims[axis as usize] > 1 {
                let axis = axis as usize;
                let n = dims[axis];
                let inner: usize = dims[axis + 1..].iter().product();
                let outer: usize = dims[..axis].iter().product();
                for o in 0..outer {
                    for j in 0..inner {
                        let lane = |v: &[f64]| argmax((0..n).map(|i| v[(o * n + i) * inner + j]));
                        let Some(want) = lane(reference) else { continue };
                        self.argmax.0 += 1;
                        self.argmax.1 += u64::from(lane(candidate) == Some(want));
                    }
                }
            }
        }
        Ok(())
    }

    /// The metrics so far.
    pub fn finish(&self) -> OutputMetrics {
        let mut values = Vec::new();
        let fraction = |(n, hits): (u64, u64)| (n > 0).then(|| hits as f64 / n as f64);
        for m in Metric::ALL {
            let v = match m {
                Metric::MaxAbs => (self.compared > 0).then_some(self.max_abs),
                Metric::MeanAbs => (self.compared > 0).then(|| self.sum_abs / self.compared as f64),
                Metric::MaxRel => (self.compared > 0).then_some(self.max_rel),
                Metric::CosineMean => (self.cos_count > 0).then(|| self.cos_sum / self.cos_count as f64),
                Metric::CosineMin => (self.cos_count > 0).then_some(self.cos_min),
                Metric::SqnrDb => (self.compared > 0).then(|| sqnr_db(self.signal, self.noise)),
                Metric::Top1 => fraction(self.top1),
                Metric::Top5 => fraction(self.top5),
                Metric::Argmax => fraction(self.argmax),
                Metric::Nan => Some(self.nan as f64),
                Metric::Inf => Some(self.inf as f64),
                Metric::RefNan => Some(self.ref_nan as f64),
                Metric::RefInf => Some(self.ref_inf as f64),
                Metric::NonfiniteMismatch => Some(self.nonfinite_mismatch as f64),
                Metric::ShapeMismatch => Some(self.shape_mismatch as f64),
            };
            if let Some(v) = v {
                values.push((m, v));
            }
        }
        OutputMetrics {
            samples: self.samples,
            compared: self.compared,
            reference_max_abs: self.reference_max_abs,
            values,
        }
    }
}

/// SQNR in dB; +∞ for no noise (identical outputs, all-zero ones included), −∞ for noise over
/// an all-zero signal.
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// Index of the first largest non-NaN value; `None` when every value is NaN (or none).
fn argmax(values: impl Iterator<Item = f64>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in values.enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// The 0-based rank of element `i` of `row` in descending order (ties broken by index, as
/// [`argmax`] does); `None` when it is NaN.
fn rank_of(row: &[f64], i: usize) -> Option<usize> {
    let x = row[i];
    if x.is_nan() {
        return None;
    }
    Some(row.iter().enumerate().filter(|&(j, &y)| y > x || (y == x && j < i)).count())
}

/// The regression rule of `optimize check --baseline`: the relative margin a metric may worsen
/// by against the baseline.
pub const REGRESSION_MARGIN: f64 = 0.10;
/// Absolute slack of `max_abs` and `mean_abs` against the baseline, as a fraction of the
/// output's scale (largest |reference|): covers summation-order noise across machines.
pub const REGRESSION_ABS_EPSILON: f64 = 1e-5;
/// Absolute slack of `max_rel` (relative errors near the floor amplify rounding noise).
pub const REGRESSION_REL_EPSILON: f64 = 1e-3;
/// Absolute slack of 1 − cosine.
pub const REGRESSION_COSINE_EPSILON: f64 = 1e-6;
/// Absolute slack of 1 − agreement (top-k, argmax): less than one row in a billion.
pub const REGRESSION_AGREEMENT_EPSILON: f64 = 1e-9;
/// SQNR above this counts as lossless for f32 (rounding noise of reordered sums).
pub const REGRESSION_SQNR_CEILING_DB: f64 = 100.0;

/// The limit `current` must stay within (`<=` for lower-is-better metrics, `>=` otherwise) to
/// not regress against `baseline`; `None` for metrics without a direction.
///
/// The rule: the candidate's error may grow by [`REGRESSION_MARGIN`] (10%) plus a small
/// epsilon. Errors (`max_abs`, `mean_abs`, `max_rel`) directly; similarities and agreements
/// through their distance from a perfect 1 (so cosine 0.9990 → 0.9988 is 1 − c growing 20%);
/// SQNR as noise power growing by 10% (a drop of 10·log10(1.1) ≈ 0.41 dB), both sides capped
/// at [`REGRESSION_SQNR_CEILING_DB`]; counts (NaN, ∞, mismatches) may not grow at all.
pub fn regression_limit(metric: Metric, baseline: f64, reference_scale: f64) -> Option<f64> {
    let grow = 1.0 + REGRESSION_MARGIN;
    let similarity = |eps: f64| 1.0 - ((1.0 - baseline).max(0.0) * grow + eps);
    Some(match metric {
        Metric::MaxAbs | Metric::MeanAbs => baseline * grow + REGRESSION_ABS_EPSILON * reference_scale.abs(),
        Metric::MaxRel => baseline * grow + REGRESSION_REL_EPSILON,
        Metric::CosineMean | Metric::CosineMin => similarity(REGRESSION_COSINE_EPSILON),
        Metric::Top1 | Metric::Top5 | Metric::Argmax => similarity(REGRESSION_AGREEMENT_EPSILON),
        Metric::SqnrDb => baseline.min(REGRESSION_SQNR_CEILING_DB) - 10.0 * grow.log10(),
        Metric::Nan | Metric::Inf | Metric::NonfiniteMismatch | Metric::ShapeMismatch => baseline,
        Metric::RefNan | Metric::RefInf => return None,
    })
}

/// Whether `current` regressed against `baseline` (see [`regression_limit`]). A NaN current
/// value regresses.
pub fn is_regression(metric: Metric, baseline: f64, current: f64, reference_scale: f64) -> bool {
    let Some(limit) = regression_limit(metric, baseline, reference_scale) else { return false };
    match metric.higher_is_better() {
        Some(true) => {
            let current = if metric == Metric::SqnrDb { current.min(REGRESSION_SQNR_CEILING_DB) } else { current };
            current.is_nan() || current < limit
        }
        _ => current.is_nan() || current > limit,
    }
}

#[cfg(test)]
mod tests;
