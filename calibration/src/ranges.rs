//! Calibrated ranges: per tensor the chosen range, the method, and the histogram it came from,
//! so that ranges computed on shards merge into exactly what one run would give.
//!
//! The JSON is canonical: keys sorted (`BTreeMap`, fixed field order), floats printed by the
//! shortest round-trip algorithm with `-0.0` folded into `0.0`, so equal ranges are equal bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::observe::{Histogram, Method, MovingMinMax, TensorObserver};

/// The `format` field of a ranges file.
pub const FORMAT: &str = "kiln-ranges/1";

/// Ranges of every observed tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    pub format: String,
    /// Samples observed.
    pub samples: u64,
    pub tensors: BTreeMap<String, TensorRange>,
}

/// One tensor's range and the statistics behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRange {
    pub method: Method,
    /// The chosen range; `None` when the tensor never held a finite value.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `None` when collected without one (MinMax for the quantizer): such ranges merge with
    /// each other but cannot be re-derived with another method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<Histogram>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<MovingMinMax>,
}

impl TensorRange {
    /// The range from observed statistics.
    pub fn new(method: Method, histogram: Histogram, moving: Option<MovingMinMax>) -> TensorRange {
        let range = method.range(&histogram, moving.as_ref());
        TensorRange { method, min: range.map(|r| r.0), max: range.map(|r| r.1), histogram: Some(histogram), moving }
    }

    pub fn from_observer(method: Method, o: TensorObserver) -> TensorRange {
        match o.histogram {
            Some(h) => TensorRange::new(method, h, o.moving),
            None => {
                let range = method.range_without_histogram(&o.stats, o.moving.as_ref());
                TensorRange {
                    method,
                    min: range.map(|r| r.0),
                    max: range.map(|r| r.1),
                    histogram: None,
                    moving: o.moving,
                }
            }
        }
    }

    /// `(min, max)`, when the tensor held finite values.
    pub fn range(&self) -> Option<(f64, f64)> {
        Some((self.min?, self.max?))
    }
}

/// Why ranges could not be read or merged.
#[derive(Debug, thiserror::Error)]
pub enum RangesError {
    #[error("not a ranges file: {0}")]
    Parse(String),
    #[error("ranges format '{found}' is not supported (expected '{FORMAT}')")]
    Format { found: String },
    #[error("the ranges observed different tensors: {}", describe_difference(.only_first, .only_second))]
    DifferentTensors { only_first: Vec<String>, only_second: Vec<String> },
    #[error("tensor `{tensor}` was calibrated with {first} in one file and {second} in the other")]
    DifferentMethod { tensor: String, first: Method, second: Method },
    #[error("{method} depends on the order of the samples, so its ranges cannot be merged; calibrate in one run")]
    NotMergeable { method: Method },
    #[error("tensor `{tensor}` was calibrated without a histogram; calibrate again keeping histograms")]
    NoHistogram { tensor: String },
}

fn describe_difference(a: &[String], b: &[String]) -> String {
    let list = |v: &[String]| v.iter().take(5).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
    match (a.is_empty(), b.is_empty()) {
        (false, false) => format!("only in the first: {}; only in the second: {}", list(a), list(b)),
        (false, true) => format!("only in the first: {}", list(a)),
        _ => format!("only in the second: {}", list(b)),
    }
}

impl Ranges {
    pub fn new(samples: u64, tensors: BTreeMap<String, TensorRange>) -> Ranges {
        Ranges { format: FORMAT.to_string(), samples, tensors }
    }

    /// The canonical JSON text (pretty, with a final newline).
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> Result<Ranges, RangesError> {
        let r: Ranges = serde_json::from_str(text).map_err(|e| RangesError::Parse(e.to_string()))?;
        if r.format != FORMAT {
            return Err(RangesError::Format { found: r.format });
        }
        Ok(r)
    }

    /// The range of a tensor.
    pub fn range(&self, tensor: &str) -> Option<(f64, f64)> {
        self.tensors.get(tensor)?.range()
    }

    /// The same statistics with ranges chosen by another method.
    pub fn with_method(&self, method: Method) -> Result<Ranges, RangesError> {
        let mut out = self.clone();
        for (name, t) in out.tensors.iter_mut() {
            if method.is_mergeable() != t.method.is_mergeable() || !method.is_mergeable() && method != t.method {
                return Err(RangesError::NotMergeable {
                    method: if method.is_mergeable() { t.method } else { method },
                });
            }
            match &t.histogram {
                Some(h) => *t = TensorRange::new(method, h.clone(), t.moving.clone()),
                None if method == t.method => {}
                None => return Err(RangesError::NoHistogram { tensor: name.clone() }),
            }
        }
        Ok(out)
    }

    /// Merges the statistics of two runs over disjoint samples (shards) and recomputes the
    /// ranges: exactly what one run over both would give.
    pub fn merge(a: &Ranges, b: &Ranges) -> Result<Ranges, RangesError> {
        let only_first: Vec<String> = a.tensors.keys().filter(|k| !b.tensors.contains_key(*k)).cloned().collect();
        let only_second: Vec<String> = b.tensors.keys().filter(|k| !a.tensors.contains_key(*k)).cloned().collect();
        if !only_first.is_empty() || !only_second.is_empty() {
            return Err(RangesError::DifferentTensors { only_first, only_second });
        }
        let mut tensors = BTreeMap::new();
        for (name, x) in &a.tensors {
            let y = &b.tensors[name];
            if x.method != y.method {
                return Err(RangesError::DifferentMethod { tensor: name.clone(), first: x.method, second: y.method });
            }
            if !x.method.is_mergeable() {
                return Err(RangesError::NotMergeable { method: x.method });
            }
            let merged = match (&x.histogram, &y.histogram) {
                (Some(hx), Some(hy)) => {
                    let mut h = hx.clone();
                    h.merge(hy);
                    TensorRange::new(x.method, h, None)
                }
                // Only MinMax is collected without a histogram: extremes merge exactly.
                (None, None) if x.method == Method::MinMax => {
                    let pick = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
                        (Some(a), Some(b)) => Some(f(a, b)),
                        (a, b) => a.or(b),
                    };
                    let (min, max) = (pick(x.min, y.min, f64::min), pick(x.max, y.max, f64::max));
                    TensorRange { method: x.method, min, max, histogram: None, moving: None }
                }
                _ => return Err(RangesError::NoHistogram { tensor: name.clone() }),
            };
            tensors.insert(name.clone(), merged);
        }
        Ok(Ranges::new(a.samples + b.samples, tensors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(values: &[f64], method: Method) -> Ranges {
        let mut h = Histogram::new();
        h.add(values);
        let mut t = BTreeMap::new();
        t.insert("b".to_string(), TensorRange::new(method, h.clone(), None));
        t.insert("a".to_string(), TensorRange::new(method, h, None));
        Ranges::new(values.len() as u64, t)
    }

    #[test]
    fn json_is_canonical_and_round_trips() {
        let r = ranges(&[-0.0, 1.5, 2.25, -3.0], Method::MinMax);
        let text = r.to_json();
        assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap(), "sorted keys");
        assert!(!text.contains("-0.0"), "{text}");
        let back = Ranges::from_json(&text).unwrap();
        // Needs serde_json's exact float parsing (`float_roundtrip`): 17-digit values.
        let awkward = ranges(&[2.8579483032226562, -1.0000000000000002], Method::MinMax);
        assert_eq!(Ranges::from_json(&awkward.to_json()).unwrap().to_json(), awkward.to_json());
        assert_eq!(back, r);
        assert_eq!(back.to_json(), text);
        assert_eq!(r.range("a"), Some((-3.0, 2.25)));
        let bad = text.replace(FORMAT, "kiln-ranges/9");
        assert!(matches!(Ranges::from_json(&bad), Err(RangesError::Format { .. })));
        assert!(matches!(Ranges::from_json("{}"), Err(RangesError::Parse(_))));
    }

    #[test]
    fn merge_equals_one_run() {
        let v: Vec<f64> = (0..3000).map(|i| ((i * 37) % 101) as f64 / 7.0 - 3.0).collect();
        for m in [Method::MinMax, Method::Entropy, Method::Mse, Method::Percentile(99.0)] {
            let whole = ranges(&v, m);
            let (x, y) = v.split_at(1234);
            let merged = Ranges::merge(&ranges(x, m), &ranges(y, m)).unwrap();
            assert_eq!(merged.to_json(), whole.to_json(), "{m}");
            let other_way = Ranges::merge(&ranges(y, m), &ranges(x, m)).unwrap();
            assert_eq!(other_way.to_json(), whole.to_json(), "{m}");
        }
        let e = Ranges::merge(&ranges(&v, Method::MinMax), &ranges(&v, Method::Entropy)).unwrap_err();
        assert!(matches!(e, RangesError::DifferentMethod { .. }), "{e}");
        let mut fewer = ranges(&v, Method::MinMax);
        fewer.tensors.remove("b");
        let e = Ranges::merge(&ranges(&v, Method::MinMax), &fewer).unwrap_err();
        assert!(e.to_string().contains("only in the first: `b`"), "{e}");
        let moving = ranges(&v, Method::MovingMinMax { constant: 0.1 });
        assert!(matches!(Ranges::merge(&moving, &moving), Err(RangesError::NotMergeable { .. })));
        let re = ranges(&v, Method::MinMax).with_method(Method::Entropy).unwrap();
        assert_eq!(re.to_json(), ranges(&v, Method::Entropy).to_json());
    }

    /// MinMax ranges as the quantizer collects them: extremes only.
    fn lean(values: &[f64]) -> Ranges {
        let mut r = ranges(values, Method::MinMax);
        r.tensors.values_mut().for_each(|t| t.histogram = None);
        r
    }

    #[test]
    fn ranges_without_histograms_merge_as_minmax_only() {
        let v: Vec<f64> = (0..3000).map(|i| ((i * 37) % 101) as f64 / 7.0 - 3.0).collect();
        let (x, y) = v.split_at(1234);
        let merged = Ranges::merge(&lean(x), &lean(y)).unwrap();
        assert_eq!(merged.to_json(), lean(&v).to_json());
        assert_eq!(merged.range("a"), ranges(&v, Method::MinMax).range("a"));
        assert!(!merged.to_json().contains("histogram"), "no empty histogram is written");
        assert_eq!(Ranges::from_json(&merged.to_json()).unwrap(), merged);
        let e = Ranges::merge(&lean(x), &ranges(y, Method::MinMax)).unwrap_err();
        assert!(matches!(e, RangesError::NoHistogram { .. }), "{e}");
        let e = lean(&v).with_method(Method::Entropy).unwrap_err();
        assert!(matches!(e, RangesError::NoHistogram { .. }), "{e}");
        assert_eq!(lean(&v).with_method(Method::MinMax).unwrap(), lean(&v));
    }
}
