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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_compiler::inspect::summarize;
use kiln_compiler::metrics::{
    Accumulator, Metric, MetricsConfig, MetricsError, OutputMetrics, REGRESSION_MARGIN, ToleranceSpec, regression_limit,
};
use kiln_compiler::onnx::OnnxError;
use kiln_compiler::runtime::{ErrorKind, Executor, IoInfo, RuntimeError, Session, SessionConfig, Value, ValueType};

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

mod data;
mod render;
mod report;

pub use data::{InputSpec, Named, NpzFiles, OnnxTestData, Samples, Synthetic, open_data};
pub use render::{junit_xml, render_table, xml_escape};
pub use report::{
    BaselineInfo, CheckKind, CheckReport, CheckResult, DataInfo, LatencyReport, ModelFile, Num, OutputReport,
    SizeReport,
};

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

#[cfg(test)]
mod tests {
    use kiln_compiler::DataType;

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
