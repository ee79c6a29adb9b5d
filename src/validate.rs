//! Validation of an artifact against the model it came from: both run on the same executor
//! with the same evaluation samples, and the candidate is held to a tolerance that depends on
//! its precision. Every `optimize` run does this before the artifact is put in place.
//!
//! The record that goes into `manifest.json` ([`ValidationRecord`]) holds no timings and no
//! paths, so that the manifest stays byte-identical on rerun; latency goes into the report.

use std::path::Path;

use kiln_calibration::data::InputSpec;
use kiln_calibration::{DataError, SampleSource, SharedSource};
use kiln_compiler::metrics::{MetricsConfig, Precision as MetricsPrecision, ToleranceSpec};
use kiln_compiler::runtime::{Executor, SessionConfig, Value};
use serde::Serialize;

use crate::check::{
    Check, CheckError, CheckOptions, CheckReport, CheckResult, DataInfo, LatencyConfig, OutputReport, Samples,
};
use crate::pipeline::Precision;

/// Calibration-crate samples (folders, stacked files, synthetic) as check samples.
/// Each sample is checked against the model's inputs as it is read, so that a misnamed or
/// misshapen input is reported with its file, not as a runtime failure.
pub struct SourceSamples {
    source: SharedSource,
    inputs: Vec<InputSpec>,
    synthetic: bool,
}

impl SourceSamples {
    /// `synthetic`: whether the samples are made up (the report says so).
    pub fn new(source: SharedSource, inputs: Vec<InputSpec>, synthetic: bool) -> SourceSamples {
        SourceSamples { source, inputs, synthetic }
    }
}

/// Reads the first sample of `source` and checks it against `inputs`: bad data fails before
/// any work is done.
pub fn check_first_sample(source: &dyn SampleSource, inputs: &[InputSpec]) -> Result<(), DataError> {
    if source.is_empty() {
        return Ok(());
    }
    kiln_calibration::data::validate(inputs, &source.read(0)?)
}

impl Samples for SourceSamples {
    fn describe(&self) -> String {
        self.source.describe()
    }

    fn synthetic(&self) -> bool {
        self.synthetic
    }

    fn len(&self) -> usize {
        self.source.len()
    }

    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let sample = self.source.read(index).map_err(|e| CheckError::Data(e.to_string()))?;
        kiln_calibration::data::validate(&self.inputs, &sample).map_err(|e| CheckError::Data(e.to_string()))?;
        Ok(sample.inputs.into_iter().map(|(name, t)| (name, Value::Tensor(t))).collect())
    }
}

/// The default tolerance of a precision.
pub fn default_tolerance(precision: &Precision) -> ToleranceSpec {
    match precision {
        Precision::Fp32 => MetricsPrecision::Fp32,
        Precision::Half(o) if o.kind == crate::stages::half::HalfKind::Bf16 => MetricsPrecision::Bf16,
        Precision::Half(_) => MetricsPrecision::Fp16,
        Precision::Int8(_) => MetricsPrecision::Int8,
        Precision::Int4(_) => MetricsPrecision::Int4,
    }
    .default_spec()
}

/// What validation found, as the manifest records it (deterministic: no timings, no paths).
#[derive(Debug, Clone, Serialize)]
pub struct ValidationRecord {
    pub executor: String,
    pub data: DataInfo,
    pub tolerance: String,
    pub outputs: Vec<OutputReport>,
    pub checks: Vec<CheckResult>,
    pub pass: bool,
}

impl From<&CheckReport> for ValidationRecord {
    fn from(r: &CheckReport) -> ValidationRecord {
        ValidationRecord {
            executor: r.executor.clone(),
            data: r.data.clone(),
            tolerance: r.tolerance.clone(),
            outputs: r.outputs.clone(),
            checks: r.checks.iter().filter(|c| c.kind != crate::check::CheckKind::Latency).cloned().collect(),
            pass: r.checks.iter().filter(|c| c.kind != crate::check::CheckKind::Latency).all(|c| c.pass),
        }
    }
}

/// How to validate.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    pub tolerance: ToleranceSpec,
    /// Measure latency of both models (reported, not judged).
    pub latency: Option<LatencyConfig>,
    pub session: SessionConfig,
}

/// Runs `original` and `candidate` over `samples` and judges the candidate.
pub fn validate(
    executor: &dyn Executor,
    original: &Path,
    candidate: &Path,
    samples: &mut dyn Samples,
    options: &ValidateOptions,
) -> Result<CheckReport, CheckError> {
    let mut check = Check::open(executor, original, candidate, &options.session)?;
    let check_options = CheckOptions {
        tolerance: options.tolerance.clone(),
        metrics: MetricsConfig::default(),
        latency: options.latency,
        ..CheckOptions::default()
    };
    check.run(samples, &check_options)
}
