//! The pre-deploy regression gate behind `optimize check`: run a reference and a candidate
//! model on the same executor with the same inputs, measure accuracy per output, latency and
//! size, hold them to a tolerance spec, budgets and (optionally) a previous run's report.
//!
//! ```
//! use kiln::check::{Check, CheckOptions, Synthetic};
//! use kiln::compiler::metrics::ToleranceSpec;
//! use kiln::compiler::runtime::{OrtExecutor, SessionConfig};
//!
//! // A release gate: the candidate (here the reference's O2 rewrite) against the reference.
//! let reference = kiln_fixtures::model("cnn")?;
//! let dir = tempfile::tempdir()?;
//! let candidate = dir.path().join("cand.onnx");
//! let model = kiln::compiler::onnx::load_model(&reference)?;
//! let optimized = kiln::pipeline::Pipeline::new(kiln::pipeline::OptLevel::O2).run(model)?.model;
//! kiln::compiler::onnx::save_model(&optimized, &candidate, &Default::default())?;
//!
//! let mut check = Check::open(&OrtExecutor::new(), &reference, &candidate, &SessionConfig::default())?;
//! let mut samples = Synthetic::new(check.inputs(), 4, 0); // or check::open_data(dir, &check.input_types())
//! let options = CheckOptions { tolerance: ToleranceSpec::parse("*:cosine_min>=0.9999")?, ..CheckOptions::default() };
//! let report = check.run(&mut samples, &options)?;
//! println!("{}", kiln::check::render_table(&report));
//! assert!(report.pass);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **The baseline rule.** With a previous report as baseline, every metric of every output
//! present in both is held to [`kiln_compiler::metrics::regression_limit`]: it may worsen by
//! 10% plus a small epsilon (see that function), and the candidate file may grow by 10%.
//! Latency is not compared with the baseline (timings of another run on another machine do not
//! compare); the fresh reference/candidate ratio and `--max-latency-ratio` gate it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_compiler::DataType;
use kiln_compiler::inspect::summarize;
use kiln_compiler::ir::Type;
use kiln_compiler::metrics::{
    Accumulator, Metric, MetricsConfig, MetricsError, OutputMetrics, REGRESSION_MARGIN, ToleranceSpec, regression_limit,
};
use kiln_compiler::npy::read_npz;
use kiln_compiler::onnx::{OnnxError, read_value};
use kiln_compiler::rng::SplitMix64;
use kiln_compiler::runtime::{ErrorKind, Executor, IoInfo, RuntimeError, Session, SessionConfig, Value, ValueType};
use kiln_compiler::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::exit::ExitStatus;

/// Version of the JSON report's layout.
pub const REPORT_SCHEMA: u32 = 1;

/// Why a check could not run (a check that ran and failed is a report with `pass: false`).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{}: {message}", .path.display())]
    InvalidModel { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Runtime {
        context: String,
        #[source]
        source: RuntimeError,
    },
    /// The reference itself does not run on a sample: the data, not the candidate, is at fault.
    #[error("{context}: {source}")]
    Reference {
        context: String,
        #[source]
        source: RuntimeError,
    },
    /// The two models cannot be compared (different inputs or outputs).
    #[error("the models are not comparable: {0}")]
    Mismatch(String),
    /// The data could not be read or does not fit the models.
    #[error("{0}")]
    Data(String),
    /// A tolerance spec or option that does not fit these models.
    #[error("{0}")]
    Usage(String),
    #[error("{}: {message}", .path.display())]
    Io { path: PathBuf, message: String },
}

impl CheckError {
    /// The exit code this error maps to.
    pub fn status(&self) -> ExitStatus {
        match self {
            CheckError::Onnx(e) => ExitStatus::of_onnx(e),
            CheckError::Runtime { source, .. } | CheckError::Reference { source, .. } => ExitStatus::of_runtime(source),
            CheckError::Io { .. } => ExitStatus::Runtime,
            CheckError::InvalidModel { .. } | CheckError::Mismatch(_) | CheckError::Data(_) | CheckError::Usage(_) => {
                ExitStatus::BadInput
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Samples

/// A source of input samples, each a full set of named model inputs. The calibration crate's
/// readers can stand in for the loaders here.
pub trait Samples {
    /// What the samples are, for the report (`3 .npz files in data/`).
    fn describe(&self) -> String;
    /// Whether they are made up rather than read.
    fn synthetic(&self) -> bool {
        false
    }
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (`< len()`).
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError>;
}

/// Named values: one sample's inputs, or a model's outputs.
pub type Named = Vec<(String, Value)>;

/// A model input as the data loaders need it: its name and declared type (ONNX `.pb` values
/// are decoded by type, and named by position).
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub ty: Option<Type>,
}

/// One `.npz` file per sample, its keys the input names.
pub struct NpzFiles {
    files: Vec<PathBuf>,
    origin: String,
}

impl Samples for NpzFiles {
    fn describe(&self) -> String {
        format!("{} .npz file(s) in {}", self.files.len(), self.origin)
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let file = self.files.get(index).ok_or_else(|| CheckError::Data(format!("no sample {index}")))?;
        let arrays = read_npz(file).map_err(|e| CheckError::Data(e.to_string()))?;
        Ok(arrays.into_iter().map(|(name, t)| (name, Value::Tensor(t))).collect())
    }
}

/// ONNX test data: `test_data_set_N/input_K.pb`, the K-th file for the model's K-th input.
pub struct OnnxTestData {
    sets: Vec<Vec<PathBuf>>,
    inputs: Vec<InputSpec>,
    origin: String,
}

impl Samples for OnnxTestData {
    fn describe(&self) -> String {
        format!("{} ONNX test data set(s) in {}", self.sets.len(), self.origin)
    }
    fn len(&self) -> usize {
        self.sets.len()
    }
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let files = self.sets.get(index).ok_or_else(|| CheckError::Data(format!("no sample {index}")))?;
        if files.len() > self.inputs.len() {
            return Err(CheckError::Data(format!(
                "{}: {} input files, but the model has {} input(s)",
                files[0].parent().unwrap_or(Path::new(".")).display(),
                files.len(),
                self.inputs.len()
            )));
        }
        let mut sample = Vec::new();
        for (file, input) in files.iter().zip(&self.inputs) {
            let value = read_value(file, input.ty.as_ref()).map_err(|e| CheckError::Data(e.to_string()))?;
            sample.push((input.name.clone(), value));
        }
        Ok(sample)
    }
}

/// The index in a name like `input_12.pb` or `test_data_set_3`.
fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

fn numbered_entries(dir: &Path, prefix: &str, suffix: &str, dirs: bool) -> Result<Vec<PathBuf>, CheckError> {
    let io = |e: std::io::Error| CheckError::Data(format!("{}: {e}", dir.display()));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if path.is_dir() != dirs {
            continue;
        }
        if let Some(n) = path.file_name().and_then(|n| n.to_str()).and_then(|n| numbered(n, prefix, suffix)) {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Opens `--data`: a `.npz` file (one sample), a folder of `.npz` files, a folder of ONNX
/// `test_data_set_N` folders, or one such folder (`input_K.pb` files).
pub fn open_data(path: &Path, inputs: &[InputSpec]) -> Result<Box<dyn Samples>, CheckError> {
    let origin = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| CheckError::Data(format!("{origin}: {e}")))?;
    if meta.is_file() {
        return if path.extension().is_some_and(|e| e == "npz") {
            Ok(Box::new(NpzFiles { files: vec![path.to_path_buf()], origin }))
        } else {
            Err(CheckError::Data(format!("{origin}: expected a .npz file or a folder of samples")))
        };
    }
    let io = |e: std::io::Error| CheckError::Data(format!("{origin}: {e}"));
    let mut npz: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "npz") {
            npz.push(p);
        }
    }
    if !npz.is_empty() {
        npz.sort();
        return Ok(Box::new(NpzFiles { files: npz, origin }));
    }
    let mut sets = Vec::new();
    for dir in numbered_entries(path, "test_data_set_", "", true)? {
        sets.push(numbered_entries(&dir, "input_", ".pb", false)?);
    }
    if sets.is_empty() {
        let here = numbered_entries(path, "input_", ".pb", false)?;
        if !here.is_empty() {
            sets.push(here);
        }
    }
    if sets.is_empty() {
        return Err(CheckError::Data(format!(
            "{origin}: no samples found (expected .npz files, one sample each with the input names as keys, \
             or ONNX test_data_set_N/input_K.pb folders)"
        )));
    }
    Ok(Box::new(OnnxTestData { sets, inputs: inputs.to_vec(), origin }))
}

/// Seeded random inputs from the model's declared input types; dynamic dimensions are 1.
/// Floats are standard normal, integers 0 or 1 (valid token ids, masks and flags alike, as
/// calibration's synthetic data), bools fair coins.
pub struct Synthetic {
    inputs: Vec<IoInfo>,
    count: usize,
    seed: u64,
}

impl Synthetic {
    pub fn new(inputs: &[IoInfo], count: usize, seed: u64) -> Synthetic {
        Synthetic { inputs: inputs.to_vec(), count, seed }
    }
}

fn synthesize(info: &IoInfo, rng: &mut SplitMix64) -> Result<Tensor, CheckError> {
    let ValueType::Tensor { dtype, dims } = &info.ty else {
        return Err(CheckError::Data(format!(
            "cannot make up a value for input `{}` of type {} (give --data)",
            info.name, info.ty
        )));
    };
    let dims: Vec<usize> = dims.iter().map(|d| d.filter(|&d| d >= 0).map_or(1, |d| d as usize)).collect();
    let n: usize = dims.iter().product();
    let err = |e: kiln_compiler::TensorError| CheckError::Data(format!("input `{}`: {e}", info.name));
    let int = |rng: &mut SplitMix64| (rng.next_u64() % 2) as i64;
    use DataType as D;
    let t = match dtype {
        D::F32 => Tensor::from_slice(dims, &(0..n).map(|_| rng.next_normal() as f32).collect::<Vec<_>>()),
        D::F64 => Tensor::from_slice(dims, &(0..n).map(|_| rng.next_normal()).collect::<Vec<_>>()),
        D::F16 => Tensor::from_slice(dims, &(0..n).map(|_| half::f16::from_f64(rng.next_normal())).collect::<Vec<_>>()),
        D::I64 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng)).collect::<Vec<_>>()),
        D::I32 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng) as i32).collect::<Vec<_>>()),
        D::U8 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng) as u8).collect::<Vec<_>>()),
        D::I8 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng) as i8).collect::<Vec<_>>()),
        D::Bool => Tensor::from_slice(dims, &(0..n).map(|_| rng.next_u64() & 1 == 1).collect::<Vec<_>>()),
        other => {
            return Err(CheckError::Data(format!(
                "cannot make up a value for input `{}` of type {other} (give --data)",
                info.name
            )));
        }
    };
    t.map_err(err)
}

impl Samples for Synthetic {
    fn describe(&self) -> String {
        format!("{} synthetic sample(s), seed {}, dynamic dimensions set to 1", self.count, self.seed)
    }
    fn synthetic(&self) -> bool {
        true
    }
    fn len(&self) -> usize {
        self.count
    }
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let mut rng = SplitMix64::new(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(index as u64));
        self.inputs
            .iter()
            .filter(|i| !matches!(i.ty, ValueType::Optional(_)))
            .map(|i| Ok((i.name.clone(), Value::Tensor(synthesize(i, &mut rng)?))))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The report

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

// ---------------------------------------------------------------------------------------------
// Running

/// How latency is measured: warm-up runs, then alternating reference/candidate runs until
/// `min_runs` are done and `budget` has passed, or `max_runs`; the median of each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyConfig {
    pub warmup: usize,
    pub min_runs: usize,
    pub max_runs: usize,
    pub budget: Duration,
}

impl Default for LatencyConfig {
    fn default() -> LatencyConfig {
        LatencyConfig { warmup: 2, min_runs: 5, max_runs: 25, budget: Duration::from_secs(2) }
    }
}

/// What a check holds the candidate to.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub tolerance: ToleranceSpec,
    pub metrics: MetricsConfig,
    /// Fail when candidate latency / reference latency exceeds this.
    pub max_latency_ratio: Option<f64>,
    /// Fail when candidate bytes / reference bytes exceeds this.
    pub max_size_ratio: Option<f64>,
    /// `None`: latency is not measured.
    pub latency: Option<LatencyConfig>,
    /// A previous report and its path.
    pub baseline: Option<(CheckReport, String)>,
}

struct Loaded {
    file: ModelFile,
    session: Box<dyn Session>,
}

/// A reference and a candidate, loaded on one executor.
pub struct Check {
    executor: String,
    reference: Loaded,
    candidate: Loaded,
    input_types: Vec<InputSpec>,
}

fn model_file(path: &Path, model: &kiln_compiler::ir::Model) -> Result<ModelFile, CheckError> {
    let io = |e: &dyn std::fmt::Display| CheckError::Io { path: path.to_path_buf(), message: e.to_string() };
    let sha256 = kiln_targets::artifact::sha256_file(path).map_err(|e| io(&e))?;
    let mut bytes = std::fs::metadata(path).map_err(|e| io(&e))?.len();
    let base = path.parent().unwrap_or(Path::new("."));
    let external_files: Vec<String> = summarize(model).external_files.into_iter().map(|f| f.location).collect();
    for loc in &external_files {
        let p = base.join(loc);
        bytes += std::fs::metadata(&p).map_err(|e| CheckError::Io { path: p.clone(), message: e.to_string() })?.len();
    }
    Ok(ModelFile { path: path.display().to_string(), sha256, bytes, external_files })
}

fn load(executor: &dyn Executor, path: &Path, config: &SessionConfig) -> Result<(Loaded, Vec<InputSpec>), CheckError> {
    let model = kiln_compiler::onnx::load_model(path)?;
    kiln_compiler::verify::check_model(&model).map_err(|e| CheckError::InvalidModel {
        path: path.to_path_buf(),
        message: e
            .0
            .iter()
            .map(|p| format!("{}: {}: {}", p.graph, p.location, p.message))
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    let inputs = model
        .graph
        .as_ref()
        .map(|g| {
            g.runtime_inputs().map(|v| InputSpec { name: g.value(v).name.clone(), ty: g.value(v).ty.clone() }).collect()
        })
        .unwrap_or_default();
    let file = model_file(path, &model)?;
    // The file is run as it is on disk: no second serialization, and the decoded copy is
    // gone before the runtime holds its own.
    drop(model);
    let session = executor
        .load_file(path, config)
        .map_err(|source| CheckError::Runtime { context: path.display().to_string(), source })?;
    Ok((Loaded { file, session }, inputs))
}

/// Whether two declared types can hold the same values: same kind and element type, and each
/// known dimension equal where both know it.
fn compatible(a: &ValueType, b: &ValueType, float_may_differ: bool) -> bool {
    match (a, b) {
        (ValueType::Tensor { dtype: da, dims: xa }, ValueType::Tensor { dtype: db, dims: xb }) => {
            let types = da == db || (float_may_differ && da.is_float() && db.is_float());
            let dims = xa.is_empty()
                || xb.is_empty()
                || xa.len() == xb.len() && xa.iter().zip(xb).all(|(x, y)| x.is_none() || y.is_none() || x == y);
            types && dims
        }
        (ValueType::Sequence(x), ValueType::Sequence(y)) | (ValueType::Optional(x), ValueType::Optional(y)) => {
            compatible(x, y, float_may_differ)
        }
        (ValueType::Unknown, _) | (_, ValueType::Unknown) => true,
        _ => a == b,
    }
}

fn compare_io(what: &str, reference: &[IoInfo], candidate: &[IoInfo], float_may_differ: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for r in reference {
        match candidate.iter().find(|c| c.name == r.name) {
            None => problems.push(format!("the candidate has no {what} `{}`", r.name)),
            Some(c) if !compatible(&r.ty, &c.ty, float_may_differ) => {
                problems.push(format!("{what} `{}` is {} in the reference but {} in the candidate", r.name, r.ty, c.ty))
            }
            Some(_) => {}
        }
    }
    for c in candidate {
        if !reference.iter().any(|r| r.name == c.name) {
            problems.push(format!("the candidate has an extra {what} `{}`", c.name));
        }
    }
    problems
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort();
    let n = times.len();
    if n == 0 {
        return 0.0;
    }
    let mid = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2 };
    mid.as_secs_f64() * 1e3
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else if v == 0.0 || v == v.trunc() && v.abs() < 1e9 {
        format!("{v}")
    } else if v.abs() >= 1e6 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1e-3 && v.abs() < 1e6 {
        format!("{v:.6}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}

impl Check {
    /// Loads and verifies both models and checks that they take the same inputs and give the
    /// same outputs (floating-point outputs may change precision).
    pub fn open(
        executor: &dyn Executor,
        reference: &Path,
        candidate: &Path,
        config: &SessionConfig,
    ) -> Result<Check, CheckError> {
        // Both loads at once: each is mostly the runtime's graph optimization, single-threaded.
        let (reference, candidate) = std::thread::scope(|s| {
            let other = s.spawn(|| load(executor, candidate, config));
            let reference = load(executor, reference, config);
            let candidate = other.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload));
            (reference, candidate)
        });
        let (reference, input_types) = reference?;
        let (candidate, _) = candidate?;
        let mut problems = compare_io("input", reference.session.inputs(), candidate.session.inputs(), false);
        problems.extend(compare_io("output", reference.session.outputs(), candidate.session.outputs(), true));
        if !problems.is_empty() {
            return Err(CheckError::Mismatch(problems.join("; ")));
        }
        Ok(Check { executor: executor.name().to_string(), reference, candidate, input_types })
    }

    /// The reference's inputs, as the executor declares them (synthetic data is made from these).
    pub fn inputs(&self) -> &[IoInfo] {
        self.reference.session.inputs()
    }

    /// The reference's inputs with their ONNX types, in order (for [`open_data`]).
    pub fn input_types(&self) -> Vec<InputSpec> {
        self.input_types.clone()
    }

    fn run_pair(&mut self, index: usize, inputs: &[(String, Value)]) -> Result<(Named, Named), CheckError> {
        let sample = |source: RuntimeError, which: &str| {
            let context = if source.kind() == ErrorKind::BadInput {
                format!("sample {index} does not fit the {which}")
            } else {
                format!("{which} failed on sample {index}")
            };
            CheckError::Runtime { context, source }
        };
        let r = self.reference.session.run(inputs, None).map_err(|e| match sample(e, "reference") {
            CheckError::Runtime { context, source } => CheckError::Reference { context, source },
            other => other,
        })?;
        let c = self.candidate.session.run(inputs, None).map_err(|e| sample(e, "candidate"))?;
        Ok((r, c))
    }

    /// Runs every sample through both models, then measures latency, and judges the result.
    pub fn run(&mut self, samples: &mut dyn Samples, options: &CheckOptions) -> Result<CheckReport, CheckError> {
        let outputs: Vec<String> = self.reference.session.outputs().iter().map(|o| o.name.clone()).collect();
        for name in options.tolerance.named_outputs() {
            if !outputs.iter().any(|o| o == name) {
                return Err(CheckError::Usage(format!(
                    "tolerance names output `{name}`, which the models do not have; their outputs: {}",
                    outputs.join(", ")
                )));
            }
        }
        if samples.is_empty() {
            return Err(CheckError::Data(format!("{}: no samples", samples.describe())));
        }
        let mut accs: Vec<Accumulator> = outputs.iter().map(|_| Accumulator::new(options.metrics)).collect();
        let mut skipped: Vec<Option<String>> = vec![None; outputs.len()];
        let mut first: Option<Vec<(String, Value)>> = None;
        for index in 0..samples.len() {
            let inputs = samples.load(index)?;
            let (r, c) = self.run_pair(index, &inputs)?;
            for (k, name) in outputs.iter().enumerate() {
                if skipped[k].is_some() {
                    continue;
                }
                let rv = r.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                let cv = c.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                match (rv, cv) {
                    (Some(Value::Tensor(rt)), Some(Value::Tensor(ct))) => match accs[k].add(rt, ct) {
                        Ok(()) => {}
                        Err(e @ MetricsError::NotNumeric { .. }) => skipped[k] = Some(e.to_string()),
                        Err(e) => return Err(CheckError::Data(format!("output `{name}`, sample {index}: {e}"))),
                    },
                    (Some(v), _) => skipped[k] = Some(format!("{}: only tensor outputs are compared", v.describe())),
                    (None, _) => skipped[k] = Some("the executor returned no value".into()),
                }
            }
            if first.is_none() {
                first = Some(inputs);
            }
        }
        let latency = match (options.latency, &first) {
            (Some(cfg), Some(inputs)) => Some(self.measure(inputs, cfg, options.max_latency_ratio)?),
            _ => None,
        };
        let metrics: Vec<OutputMetrics> = accs.iter().map(Accumulator::finish).collect();

        let mut checks = Vec::new();
        for ((name, m), skip) in outputs.iter().zip(&metrics).zip(&skipped) {
            if skip.is_some() {
                continue;
            }
            for v in options.tolerance.evaluate(name, m) {
                let Some(value) = v.value else {
                    if v.rule.output.is_some() {
                        return Err(CheckError::Usage(format!(
                            "tolerance rule `{}`: {} does not apply to output `{name}` (top-k needs a \
                             floating-point output whose last axis is longer than k; argmax an axis longer than 1)",
                            v.rule, v.rule.metric
                        )));
                    }
                    continue;
                };
                let (sym, threshold) = (v.rule.comparison.symbol(), v.rule.threshold);
                let shown =
                    format!("{name}: {} = {} (needs {sym} {})", v.rule.metric, fmt_num(value), fmt_num(threshold));
                checks.push(CheckResult {
                    kind: CheckKind::Accuracy,
                    name: format!("{name}:{}", v.rule.metric),
                    output: Some(name.clone()),
                    metric: v.rule.metric.name().to_string(),
                    value: Num(value),
                    comparison: sym.to_string(),
                    threshold: Num(threshold),
                    pass: v.pass,
                    message: shown,
                });
            }
        }
        if let Some(l) = &latency
            && let Some(max) = l.max_ratio
        {
            checks.push(CheckResult {
                kind: CheckKind::Latency,
                name: "latency".into(),
                output: None,
                metric: "latency_ratio".into(),
                value: Num(l.ratio),
                comparison: "<=".into(),
                threshold: Num(max),
                pass: l.ratio <= max,
                message: format!(
                    "latency: candidate {:.3} ms / reference {:.3} ms = {:.3} (needs <= {})",
                    l.candidate_ms,
                    l.reference_ms,
                    l.ratio,
                    fmt_num(max)
                ),
            });
        }
        let (rb, cb) = (self.reference.file.bytes, self.candidate.file.bytes);
        let size = SizeReport {
            reference_bytes: rb,
            candidate_bytes: cb,
            ratio: if rb == 0 { f64::INFINITY } else { cb as f64 / rb as f64 },
            max_ratio: options.max_size_ratio,
        };
        if let Some(max) = size.max_ratio {
            checks.push(CheckResult {
                kind: CheckKind::Size,
                name: "size".into(),
                output: None,
                metric: "size_ratio".into(),
                value: Num(size.ratio),
                comparison: "<=".into(),
                threshold: Num(max),
                pass: size.ratio <= max,
                message: format!(
                    "size: candidate {cb} bytes / reference {rb} bytes = {:.4} (needs <= {})",
                    size.ratio,
                    fmt_num(max)
                ),
            });
        }

        let output_reports: Vec<OutputReport> = outputs
            .iter()
            .zip(&metrics)
            .zip(skipped)
            .map(|((name, m), skipped)| OutputReport {
                name: name.clone(),
                samples: m.samples,
                compared: m.compared,
                reference_max_abs: Num(m.reference_max_abs),
                metrics: if skipped.is_some() {
                    BTreeMap::new()
                } else {
                    m.values().iter().map(|&(k, v)| (k.name().to_string(), Num(v))).collect()
                },
                skipped,
            })
            .collect();

        let baseline = options.baseline.as_ref().map(|(base, path)| {
            baseline_checks(
                base,
                path,
                &output_reports,
                &self.reference.file,
                &self.candidate.file,
                samples,
                &mut checks,
            )
        });
        let runtime_library = (self.executor == "onnxruntime")
            .then(kiln_compiler::runtime::discovery::loaded_ort_library)
            .flatten()
            .map(|p| p.display().to_string());
        let pass = checks.iter().all(|c| c.pass);
        Ok(CheckReport {
            schema: REPORT_SCHEMA,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            executor: self.executor.clone(),
            runtime_library,
            reference: self.reference.file.clone(),
            candidate: self.candidate.file.clone(),
            data: DataInfo { source: samples.describe(), samples: samples.len(), synthetic: samples.synthetic() },
            tolerance: options.tolerance.to_string(),
            outputs: output_reports,
            latency,
            size,
            baseline,
            checks,
            pass,
        })
    }

    fn measure(
        &mut self,
        inputs: &[(String, Value)],
        cfg: LatencyConfig,
        max_ratio: Option<f64>,
    ) -> Result<LatencyReport, CheckError> {
        for _ in 0..cfg.warmup {
            self.run_pair(0, inputs)?;
        }
        let (mut rt, mut ct) = (Vec::new(), Vec::new());
        let start = Instant::now();
        let fail =
            |source, which: &str| CheckError::Runtime { context: format!("{which} failed timing sample 0"), source };
        // Alternate so that drift (thermal, other load) hits both models alike.
        while rt.len() < cfg.max_runs.max(1) {
            let t = Instant::now();
            self.reference.session.run(inputs, None).map_err(|e| fail(e, "reference"))?;
            rt.push(t.elapsed());
            let t = Instant::now();
            self.candidate.session.run(inputs, None).map_err(|e| fail(e, "candidate"))?;
            ct.push(t.elapsed());
            if rt.len() >= cfg.min_runs && start.elapsed() >= cfg.budget {
                break;
            }
        }
        let (reference_ms, candidate_ms) = (median_ms(&mut rt), median_ms(&mut ct));
        Ok(LatencyReport {
            warmup_runs: cfg.warmup,
            runs: rt.len(),
            reference_ms,
            candidate_ms,
            ratio: if reference_ms > 0.0 { candidate_ms / reference_ms } else { 1.0 },
            max_ratio,
        })
    }
}

/// Adds the checks against a baseline report (see the module docs for the rule).
fn baseline_checks(
    base: &CheckReport,
    path: &str,
    outputs: &[OutputReport],
    reference: &ModelFile,
    candidate: &ModelFile,
    samples: &dyn Samples,
    checks: &mut Vec<CheckResult>,
) -> BaselineInfo {
    let mut notes = Vec::new();
    if base.reference.sha256 != reference.sha256 {
        notes.push(format!("the baseline was measured against another reference (sha256 {})", base.reference.sha256));
    }
    if base.data.source != samples.describe() || base.data.samples != samples.len() {
        notes.push(format!("the baseline ran on other data ({})", base.data.source));
    }
    for out in outputs {
        let Some(old) = base.outputs.iter().find(|o| o.name == out.name) else {
            notes.push(format!("output `{}` is not in the baseline", out.name));
            continue;
        };
        for (name, value) in &out.metrics {
            let Some(metric) = Metric::from_name(name) else { continue };
            let Some(&Num(before)) = old.metrics.get(name) else { continue };
            if before.is_nan() {
                continue;
            }
            let Some(limit) = regression_limit(metric, before, out.reference_max_abs.0) else { continue };
            let higher = metric.higher_is_better() == Some(true);
            let pass = !kiln_compiler::metrics::is_regression(metric, before, value.0, out.reference_max_abs.0);
            let sym = if higher { ">=" } else { "<=" };
            checks.push(CheckResult {
                kind: CheckKind::Baseline,
                name: format!("{}:{name} vs baseline", out.name),
                output: Some(out.name.clone()),
                metric: name.clone(),
                value: *value,
                comparison: sym.to_string(),
                threshold: Num(limit),
                pass,
                message: format!(
                    "{}: {name} = {} against {} in the baseline (needs {sym} {}: at most {}% worse plus epsilon)",
                    out.name,
                    fmt_num(value.0),
                    fmt_num(before),
                    fmt_num(limit),
                    REGRESSION_MARGIN * 100.0
                ),
            });
        }
    }
    let limit = base.candidate.bytes as f64 * (1.0 + REGRESSION_MARGIN);
    checks.push(CheckResult {
        kind: CheckKind::Baseline,
        name: "size vs baseline".into(),
        output: None,
        metric: "candidate_bytes".into(),
        value: Num(candidate.bytes as f64),
        comparison: "<=".into(),
        threshold: Num(limit),
        pass: candidate.bytes as f64 <= limit,
        message: format!(
            "size: candidate {} bytes against {} in the baseline (needs <= {limit:.0})",
            candidate.bytes, base.candidate.bytes
        ),
    });
    BaselineInfo { path: path.to_string(), candidate_sha256: base.candidate.sha256.clone(), notes }
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Escapes text for XML attribute values and character data. Characters XML 1.0 cannot hold
/// (most control characters) become U+FFFD; line breaks and tabs in attributes become
/// character references so parsers keep them.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The report as JUnit XML: one test suite, one test case per check (output × metric, baseline
/// comparisons, latency, size), failures with their message.
pub fn junit_xml(report: &CheckReport) -> String {
    let failures = report.failures().count();
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"optimize check\" tests=\"{}\" failures=\"{failures}\" errors=\"0\">",
        report.checks.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">",
        xml_escape(&format!("check {}", report.candidate.path)),
        report.checks.len()
    );
    x.push_str("    <properties>\n");
    let mut props = vec![
        ("reference", report.reference.path.clone()),
        ("reference.sha256", report.reference.sha256.clone()),
        ("candidate", report.candidate.path.clone()),
        ("candidate.sha256", report.candidate.sha256.clone()),
        ("executor", report.executor.clone()),
        ("data", report.data.source.clone()),
        ("tolerance", report.tolerance.clone()),
        ("kiln.version", report.kiln_version.clone()),
    ];
    if let Some(b) = &report.baseline {
        props.push(("baseline", b.path.clone()));
    }
    for (k, v) in props {
        let _ = writeln!(x, "      <property name=\"{}\" value=\"{}\"/>", xml_escape(k), xml_escape(&v));
    }
    x.push_str("    </properties>\n");
    for c in &report.checks {
        let class = match c.kind {
            CheckKind::Accuracy => "kiln.check.accuracy",
            CheckKind::Baseline => "kiln.check.baseline",
            CheckKind::Latency => "kiln.check.latency",
            CheckKind::Size => "kiln.check.size",
        };
        let _ = write!(x, "    <testcase classname=\"{class}\" name=\"{}\" time=\"0\"", xml_escape(&c.name));
        if c.pass {
            x.push_str("/>\n");
        } else {
            let _ = writeln!(
                x,
                ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                xml_escape(&c.message),
                class,
                xml_escape(&c.message)
            );
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// The human-readable summary: one line per check, then latency, size and the verdict.
pub fn render_table(report: &CheckReport) -> String {
    let mut rows: Vec<[String; 5]> =
        vec![["check".into(), "value".into(), "needs".into(), "result".into(), String::new()]];
    for c in &report.checks {
        rows.push([
            c.name.clone(),
            fmt_num(c.value.0),
            format!("{} {}", c.comparison, fmt_num(c.threshold.0)),
            if c.pass { "ok".into() } else { "FAIL".into() },
            String::new(),
        ]);
    }
    let widths: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let _ = writeln!(out, "reference {} ({} bytes)", report.reference.path, report.reference.bytes);
    let _ = writeln!(out, "candidate {} ({} bytes)", report.candidate.path, report.candidate.bytes);
    let _ = writeln!(out, "data: {}; executor: {}", report.data.source, report.executor);
    if report.data.synthetic {
        let _ = writeln!(out, "note: synthetic inputs; pass --data for real samples");
    }
    for r in &rows {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:>w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    for o in &report.outputs {
        if let Some(why) = &o.skipped {
            let _ = writeln!(out, "  {}: not compared ({why})", o.name);
        }
    }
    if let Some(l) = &report.latency {
        let _ = writeln!(
            out,
            "latency: reference {:.3} ms, candidate {:.3} ms, ratio {:.3} (median of {} runs after {} warm-up)",
            l.reference_ms, l.candidate_ms, l.ratio, l.runs, l.warmup_runs
        );
    }
    let _ = writeln!(
        out,
        "size: reference {} bytes, candidate {} bytes, ratio {:.4}",
        report.size.reference_bytes, report.size.candidate_bytes, report.size.ratio
    );
    if let Some(b) = &report.baseline {
        let _ = writeln!(out, "baseline: {}", b.path);
    }
    let failed = report.failures().count();
    if report.pass {
        let _ = writeln!(out, "PASS: {} checks", report.checks.len());
    } else {
        let _ = writeln!(out, "FAIL: {failed} of {} checks failed", report.checks.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_survive_json_including_infinities() {
        let v = vec![Num(1.5), Num(f64::INFINITY), Num(f64::NEG_INFINITY), Num(0.1 + 0.2)];
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, "[1.5,\"inf\",\"-inf\",0.30000000000000004]");
        let back: Vec<Num> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        let nan: Num = serde_json::from_str("\"nan\"").unwrap();
        assert!(nan.0.is_nan());
        assert!(serde_json::from_str::<Num>("\"lots\"").is_err());
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(xml_escape("a<b>&\"c'\n\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{FFFD}");
    }

    #[test]
    fn synthetic_samples_are_seeded() {
        let inputs = vec![
            IoInfo { name: "x".into(), ty: ValueType::Tensor { dtype: DataType::F32, dims: vec![None, Some(3)] } },
            IoInfo { name: "ids".into(), ty: ValueType::Tensor { dtype: DataType::I64, dims: vec![Some(2)] } },
        ];
        let mut a = Synthetic::new(&inputs, 2, 7);
        let s0 = a.load(0).unwrap();
        assert_eq!(s0[0].1.as_tensor().unwrap().dims(), [1, 3]);
        assert_eq!(s0, Synthetic::new(&inputs, 2, 7).load(0).unwrap());
        assert_ne!(s0, a.load(1).unwrap());
        assert!(a.synthetic());
        let ids = s0[1].1.as_tensor().unwrap().to_vec::<i64>().unwrap();
        assert!(ids.iter().all(|&i| (0..2).contains(&i)));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_num(0.001), "0.001");
        assert_eq!(fmt_num(1e-7), "1.000e-7");
        assert_eq!(fmt_num(f64::INFINITY), "inf");
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(0.999994), "0.999994");
        assert_eq!(fmt_num(7461392.4), "7461392");
    }
}
