//! The check report: per-output metrics and verdicts, latency, size and baseline results, in a
//! form that survives JSON (infinite SQNR included).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CheckError, REPORT_SCHEMA};

/// A number that may be ±∞ or NaN (SQNR of identical outputs is +∞): written to JSON as a
/// number when finite and as `"inf"`, `"-inf"` or `"nan"` otherwise, which JSON cannot hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("nan")
        } else if v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(f64),
            S(String),
        }
        match Repr::deserialize(d)? {
            Repr::N(v) => Ok(Num(v)),
            Repr::S(s) => match s.as_str() {
                "inf" => Ok(Num(f64::INFINITY)),
                "-inf" => Ok(Num(f64::NEG_INFINITY)),
                "nan" => Ok(Num(f64::NAN)),
                other => Err(serde::de::Error::custom(format!("`{other}` is not a number"))),
            },
        }
    }
}

/// A model file as checked: where, its hash, and its size with external data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFile {
    pub path: String,
    pub sha256: String,
    /// The .onnx file plus every external data file it references.
    pub bytes: u64,
    /// External data files (relative to the model's folder).
    pub external_files: Vec<String>,
}

/// The samples the check ran on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataInfo {
    pub source: String,
    pub samples: usize,
    pub synthetic: bool,
}

/// Every metric of one output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputReport {
    pub name: String,
    pub samples: u64,
    /// Element pairs compared (finite on both sides), over all samples.
    pub compared: u64,
    /// The output's scale: largest |reference| element.
    pub reference_max_abs: Num,
    /// Metric name → value; metrics that do not apply are absent.
    pub metrics: BTreeMap<String, Num>,
    /// Why the output was not compared, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// What a check result is about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A tolerance rule on an output's metric.
    Accuracy,
    /// A metric or the size against the baseline report.
    Baseline,
    Latency,
    Size,
}

/// One pass/fail line: a JUnit test case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub kind: CheckKind,
    /// `OUTPUT:METRIC`, `OUTPUT:METRIC vs baseline`, `latency`, `size`, `size vs baseline`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub metric: String,
    pub value: Num,
    pub comparison: String,
    pub threshold: Num,
    pub pass: bool,
    pub message: String,
}

/// Latency of both models on the first sample, same session options, medians.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyReport {
    pub warmup_runs: usize,
    pub runs: usize,
    pub reference_ms: f64,
    pub candidate_ms: f64,
    /// candidate / reference.
    pub ratio: f64,
    pub max_ratio: Option<f64>,
}

/// File sizes of both models.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SizeReport {
    pub reference_bytes: u64,
    pub candidate_bytes: u64,
    /// candidate / reference.
    pub ratio: f64,
    pub max_ratio: Option<f64>,
}

/// The baseline a run was compared with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaselineInfo {
    pub path: String,
    pub candidate_sha256: String,
    /// Differences that make the comparison less meaningful (another reference, other data).
    pub notes: Vec<String>,
}

/// The JSON report of `optimize check`; a later run takes it as `--baseline`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReport {
    pub schema: u32,
    pub kiln_version: String,
    /// The executor both models ran on, and its library where it has one.
    pub executor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_library: Option<String>,
    pub reference: ModelFile,
    pub candidate: ModelFile,
    pub data: DataInfo,
    /// The tolerance spec as given (the implicit rules apply on top).
    pub tolerance: String,
    pub outputs: Vec<OutputReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    pub size: SizeReport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineInfo>,
    pub checks: Vec<CheckResult>,
    pub pass: bool,
}

impl CheckReport {
    /// Reads a report written by an earlier run.
    pub fn read(path: &Path) -> Result<CheckReport, CheckError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CheckError::Usage(format!("baseline {}: {e}", path.display())))?;
        let report: CheckReport = serde_json::from_str(&text).map_err(|e| {
            CheckError::Usage(format!("baseline {}: not an `optimize check` JSON report: {e}", path.display()))
        })?;
        if report.schema != REPORT_SCHEMA {
            return Err(CheckError::Usage(format!(
                "baseline {}: report schema {} (this Kiln reads {REPORT_SCHEMA})",
                path.display(),
                report.schema
            )));
        }
        Ok(report)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.pass)
    }
}
