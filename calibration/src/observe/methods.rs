//! From statistics to a range: MinMax, moving-average MinMax, Percentile, Entropy (KL
//! divergence, TensorRT style) and MSE-optimal clipping. Each is a pure function of the
//! histogram, so equal histograms give bit-equal ranges.

use std::fmt;

use super::histogram::Histogram;
use super::minmax::{MinMax, MovingMinMax};

/// How a tensor's range is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The exact extremes.
    MinMax,
    /// The moving average of per-sample extremes; depends on sample order, cannot be merged.
    MovingMinMax { constant: f64 },
    /// Clips `(100 - p)`% of the values at each end (`p` in [50, 100]).
    Percentile(f64),
    /// The |x| threshold whose 128-level quantization loses the least information (KL).
    Entropy,
    /// The threshold minimizing the squared error of 8-bit quantization.
    Mse,
}

impl Method {
    /// Parses `minmax`, `moving-minmax[:C]`, `percentile[:P]`, `entropy` or `mse`.
    pub fn parse(text: &str) -> Result<Method, String> {
        let (name, arg) = match text.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (text, None),
        };
        let number = |default: f64| match arg {
            None => Ok(default),
            Some(a) => a.parse::<f64>().map_err(|_| format!("method '{text}': '{a}' is not a number")),
        };
        let m = match (name, arg) {
            ("minmax", None) => Method::MinMax,
            ("entropy", None) => Method::Entropy,
            ("mse", None) => Method::Mse,
            ("percentile", _) => Method::Percentile(number(99.99)?),
            ("moving-minmax", _) => Method::MovingMinMax { constant: number(0.01)? },
            _ => {
                return Err(format!(
                    "unknown calibration method '{text}' (expected minmax, moving-minmax:C, percentile:P, entropy or mse)"
                ));
            }
        };
        match m {
            Method::Percentile(p) if !(50.0..=100.0).contains(&p) => {
                Err(format!("method '{text}': the percentile must be in [50, 100]"))
            }
            Method::MovingMinMax { constant } if !(constant > 0.0 && constant <= 1.0) => {
                Err(format!("method '{text}': the constant must be in (0, 1]"))
            }
            m => Ok(m),
        }
    }

    /// Whether results merge exactly across shards.
    pub fn is_mergeable(&self) -> bool {
        !matches!(self, Method::MovingMinMax { .. })
    }

    /// Whether the range is chosen from a histogram (MinMax and its moving average read only
    /// the extremes).
    pub fn needs_histogram(&self) -> bool {
        !matches!(self, Method::MinMax | Method::MovingMinMax { .. })
    }

    /// The range from the extremes alone: exact for the methods that do not need a histogram;
    /// the others have nothing to clip by and give `None`.
    pub fn range_without_histogram(&self, stats: &MinMax, moving: Option<&MovingMinMax>) -> Option<(f64, f64)> {
        match *self {
            Method::MinMax => Some((stats.min()?, stats.max()?)),
            Method::MovingMinMax { .. } => Some((moving?.min()?, moving?.max()?)),
            _ => None,
        }
    }

    /// The range of a tensor, or `None` when it had no finite value.
    pub fn range(&self, h: &Histogram, moving: Option<&MovingMinMax>) -> Option<(f64, f64)> {
        let (min, max) = (h.stats().min()?, h.stats().max()?);
        let clip = |t: f64| ((-t).max(min) + 0.0, t.min(max) + 0.0);
        match *self {
            Method::MinMax => Some((min, max)),
            Method::MovingMinMax { .. } => Some((moving?.min()?, moving?.max()?)),
            Method::Percentile(p) => Some(percentile(h, p, min, max)),
            Method::Entropy => Some(clip(entropy_threshold(&h.abs_counts(), h.bin_width()))),
            Method::Mse => {
                let levels = if min >= 0.0 { 255 } else { 127 };
                Some(clip(mse_threshold(&h.abs_counts(), h.bin_width(), levels)))
            }
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MinMax => f.write_str("minmax"),
            Method::MovingMinMax { constant } => write!(f, "moving-minmax:{constant}"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Entropy => f.write_str("entropy"),
            Method::Mse => f.write_str("mse"),
        }
    }
}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let text = String::deserialize(d)?;
        Method::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The edges of the bins where the cumulative count first reaches `p`% from each end,
/// clamped to the extremes.
fn percentile(h: &Histogram, p: f64, min: f64, max: f64) -> (f64, f64) {
    let total = h.stats().finite();
    let target = ((p / 100.0) * total as f64).ceil().clamp(1.0, total as f64) as u64;
    let w = h.bin_width();
    let edge = |i: usize| (h.first_bin() + i as i64) as f64 * w;
    let counts = h.counts();
    let mut cum = 0u64;
    let mut hi = max;
    for (i, &c) in counts.iter().enumerate() {
        cum += c;
        if cum >= target {
            hi = edge(i + 1).min(max);
            break;
        }
    }
    cum = 0;
    let mut lo = min;
    for (i, &c) in counts.iter().enumerate().rev() {
        cum += c;
        if cum >= target {
            lo = edge(i).max(min);
            break;
        }
    }
    (lo + 0.0, hi.max(lo) + 0.0)
}

/// Quantized levels of the entropy calibrator (TensorRT's 128: int8 magnitudes).
const ENTROPY_LEVELS: usize = 128;

/// TensorRT's entropy calibration over the |x| histogram: for each candidate threshold `i`
/// bins, the reference distribution P is the first `i` bins with every count beyond folded into
/// the last; Q is those `i` bins merged into 128 levels, each level's count spread evenly over
/// its non-empty bins. The threshold minimizing KL(P‖Q) wins (the first, on ties).
///
/// With prefix sums each candidate costs O(levels), not O(bins): within a level every non-empty
/// bin has the same q, so `Σ p·ln q` over the level is `T·ln(T/nz)`, and `Σ p·ln p` is a prefix
/// sum except for the last bin.
fn entropy_threshold(abs: &[u64], w: f64) -> f64 {
    let n = abs.len();
    if n <= ENTROPY_LEVELS {
        return n as f64 * w;
    }
    let plogp = |c: f64| if c > 0.0 { c * c.ln() } else { 0.0 };
    let mut count = vec![0u64; n + 1];
    let mut nonzero = vec![0u64; n + 1];
    let mut sum_plogp = vec![0f64; n + 1];
    for (k, &c) in abs.iter().enumerate() {
        count[k + 1] = count[k] + c;
        nonzero[k + 1] = nonzero[k] + u64::from(c != 0);
        sum_plogp[k + 1] = sum_plogp[k] + plogp(c as f64);
    }
    let total = count[n] as f64;
    let mut best = (f64::INFINITY, n);
    for i in ENTROPY_LEVELS..=n {
        let outliers = (count[n] - count[i]) as f64;
        let last = abs[i - 1] as f64 + outliers;
        let p_log_p = sum_plogp[i - 1] + plogp(last);
        let q_total = count[i] as f64;
        if q_total == 0.0 {
            continue;
        }
        // Σ p·ln q over the levels (q unnormalized), and the last bin's q for its outliers.
        let mut p_log_q = 0.0;
        let mut last_q = 0.0;
        for j in 0..ENTROPY_LEVELS {
            let (s, e) = (j * i / ENTROPY_LEVELS, (j + 1) * i / ENTROPY_LEVELS);
            let t = (count[e] - count[s]) as f64;
            let nz = (nonzero[e] - nonzero[s]) as f64;
            if t > 0.0 {
                let q = t / nz;
                p_log_q += t * q.ln();
                if e == i {
                    last_q = q;
                }
            }
        }
        if outliers > 0.0 {
            // The last bin may be empty with outliers folded in: give q a tiny mass there.
            let q = if abs[i - 1] != 0 { last_q } else { 1e-12 * q_total };
            p_log_q += outliers * q.ln();
        }
        // KL = Σ (p/P)·ln((p/P)/(q/Q)) = (Σ p ln p − Σ p ln q)/P − ln P + ln Q
        let kl = (p_log_p - p_log_q) / total - total.ln() + q_total.ln();
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f64 * w
}

/// The threshold (a bin edge; at most 256 candidates) minimizing the squared error of a
/// uniform quantizer with `levels` steps over `[0, t]`, bin centres standing for their values.
fn mse_threshold(abs: &[u64], w: f64, levels: u32) -> f64 {
    let n = abs.len();
    if n == 0 {
        return 0.0;
    }
    let stride = n.div_ceil(256).max(1);
    let mut candidates: Vec<usize> = (1..=n).step_by(stride).collect();
    if candidates.last() != Some(&n) {
        candidates.push(n);
    }
    let levels = f64::from(levels);
    let mut best = (f64::INFINITY, n);
    for i in candidates {
        let step = i as f64 * w / levels;
        let mut err = 0.0;
        for (k, &c) in abs.iter().enumerate() {
            if c != 0 {
                let x = (k as f64 + 0.5) * w;
                let q = (x / step).round().min(levels) * step;
                err += c as f64 * (x - q) * (x - q);
            }
        }
        if err < best.0 {
            best = (err, i);
        }
    }
    best.1 as f64 * w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_with_outliers() -> Histogram {
        // A deterministic bell shape (sum of uniforms) plus a few far outliers.
        let mut s = 1u64;
        let mut v = Vec::new();
        for _ in 0..50_000 {
            let mut x = 0.0;
            for _ in 0..4 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                x += (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            }
            v.push(x);
        }
        v.extend([12.0, -11.0, 11.5]);
        let mut h = Histogram::new();
        h.add(&v);
        h
    }

    #[test]
    fn methods_parse_and_print() {
        for text in ["minmax", "moving-minmax:0.01", "percentile:99.99", "entropy", "mse"] {
            assert_eq!(Method::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Method::parse("percentile").unwrap(), Method::Percentile(99.99));
        for bad in ["percentile:20", "percentile:x", "kl", "moving-minmax:2", "entropy:3"] {
            assert!(Method::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clipping_methods_cut_the_outliers() {
        let h = gaussian_with_outliers();
        let (lo, hi) = Method::MinMax.range(&h, None).unwrap();
        assert_eq!((lo, hi), (-11.0, 12.0));
        for m in [Method::Percentile(99.9), Method::Entropy] {
            let (lo, hi) = m.range(&h, None).unwrap();
            assert!((-2.1..-0.5).contains(&lo) && (0.5..2.1).contains(&hi), "{m}: [{lo}, {hi}]");
        }
        // Three outliers cost MSE more clipped than the wider step costs the bulk: it keeps
        // most of their range, and picks the best of the candidate edges.
        let (lo, hi) = Method::Mse.range(&h, None).unwrap();
        assert!(lo > -11.0 && hi < 12.0 && hi > 8.0, "[{lo}, {hi}]");
        let abs = h.abs_counts();
        let w = h.bin_width();
        let err = |t: f64| {
            let step = t / 127.0;
            abs.iter()
                .enumerate()
                .map(|(k, &c)| {
                    let x = (k as f64 + 0.5) * w;
                    c as f64 * (x - (x / step).round().min(127.0) * step).powi(2)
                })
                .sum::<f64>()
        };
        for t in [2.0, 4.0, 6.0, 12.0] {
            assert!(err(hi) <= err(t), "{t}");
        }
        let (lo, hi) = Method::Percentile(100.0).range(&h, None).unwrap();
        assert_eq!((lo, hi), (-11.0, 12.0));
    }

    #[test]
    fn one_sided_data_keeps_its_side() {
        let mut h = Histogram::new();
        h.add(&(0..1000).map(|i| i as f64 / 100.0).collect::<Vec<_>>());
        for m in [Method::Entropy, Method::Mse, Method::Percentile(99.0)] {
            let (lo, hi) = m.range(&h, None).unwrap();
            // Percentile clips the low tail too; the others clip |x| only.
            let low_clip = if m == Method::Percentile(99.0) { 0.1 } else { 0.0 };
            assert!((0.0..=low_clip).contains(&lo), "{m}: {lo}");
            assert!(hi > 8.0 && hi <= 9.99, "{m}: {hi}");
        }
        assert_eq!(Method::Entropy.range(&Histogram::new(), None), None);
    }
}
