//! `optimize check`: the pre-deploy gate (see `kiln::check`).

use std::path::PathBuf;

use kiln::check::{Check, CheckError, CheckOptions, CheckReport, LatencyConfig, Synthetic, junit_xml, open_data};
use kiln::compiler::metrics::{MetricsConfig, Precision, ToleranceSpec};
use kiln::compiler::runtime::SessionConfig;
use kiln::exit::ExitStatus;

use crate::run::{ExecutorChoice, executor};
use crate::{Failure, Ui, write_json};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionChoice {
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
}

#[derive(clap::Args)]
pub struct Args {
    /// The model the candidate must match.
    #[arg(long, value_name = "REF.onnx")]
    reference: PathBuf,
    /// The model to check.
    #[arg(long, value_name = "CAND.onnx")]
    candidate: PathBuf,
    /// Samples: a folder of .npz files (one sample each, keys = input names), ONNX
    /// test_data_set_N/input_K.pb folders, or one .npz file. Without it: synthetic inputs.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Synthetic samples to make when --data is not given.
    #[arg(long, default_value_t = 8, value_name = "N")]
    samples: usize,
    /// Seed of the synthetic samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Accuracy rules `OUTPUT:METRIC OP VALUE,…` (OUTPUT may be `*`), e.g.
    /// `logits:top1>=0.99,*:max_abs<=1e-3`. Metrics: max_abs, mean_abs, max_rel, cosine_mean,
    /// cosine_min (cosine), sqnr_db (sqnr), top1, top5, argmax, nan, inf, nonfinite_mismatch,
    /// shape_mismatch. Default: the --precision preset.
    #[arg(long, value_name = "SPEC")]
    tolerance: Option<String>,
    /// The precision the candidate was made at; picks the default tolerance.
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionChoice,
    /// A JSON report of an earlier check: fail on metrics worse than it by over 10% + epsilon.
    #[arg(long, value_name = "previous.json")]
    baseline: Option<PathBuf>,
    /// Fail when candidate latency / reference latency exceeds this.
    #[arg(long, value_name = "R")]
    max_latency_ratio: Option<f64>,
    /// Fail when candidate size / reference size (with external data) exceeds this.
    #[arg(long, value_name = "R")]
    max_size_ratio: Option<f64>,
    /// Do not measure latency.
    #[arg(long, conflicts_with = "max_latency_ratio")]
    no_latency: bool,
    /// Axis of the argmax agreement metric (negative: from the end).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    argmax_axis: i64,
    /// Write a JUnit XML report (one test case per output × metric).
    #[arg(long, value_name = "out.xml")]
    junit: Option<PathBuf>,
    /// Write the JSON report (a later run's --baseline).
    #[arg(long, value_name = "out.json")]
    json: Option<PathBuf>,
    /// The executor both models run on.
    #[arg(long, value_enum, default_value = "ort")]
    executor: ExecutorChoice,
    /// Intra-op threads for both sessions (default: the runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
}

fn failure(e: CheckError) -> Failure {
    Failure { status: e.status(), message: e.to_string() }
}

fn ratio(name: &str, v: Option<f64>) -> Result<Option<f64>, Failure> {
    match v {
        Some(r) if !(r.is_finite() && r > 0.0) => {
            Err(Failure::bad_input(format!("--{name} {r}: expected a positive number")))
        }
        _ => Ok(v),
    }
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    let tolerance = match &args.tolerance {
        Some(text) => ToleranceSpec::parse(text).map_err(|e| Failure::bad_input(format!("--tolerance: {e}")))?,
        None => match args.precision {
            PrecisionChoice::Fp32 => Precision::Fp32,
            PrecisionChoice::Fp16 => Precision::Fp16,
            PrecisionChoice::Bf16 => Precision::Bf16,
            PrecisionChoice::Int8 => Precision::Int8,
            PrecisionChoice::Int4 => Precision::Int4,
        }
        .default_spec(),
    };
    let baseline = match &args.baseline {
        Some(p) => Some((CheckReport::read(p).map_err(failure)?, p.display().to_string())),
        None => None,
    };
    let options = CheckOptions {
        tolerance,
        metrics: MetricsConfig { argmax_axis: args.argmax_axis, ..MetricsConfig::default() },
        max_latency_ratio: ratio("max-latency-ratio", args.max_latency_ratio)?,
        max_size_ratio: ratio("max-size-ratio", args.max_size_ratio)?,
        latency: (!args.no_latency).then(LatencyConfig::default),
        baseline,
    };
    let exec = executor(args.executor)?;
    let config = SessionConfig { intra_threads: args.threads, ..SessionConfig::default() };
    let mut check = Check::open(exec.as_ref(), &args.reference, &args.candidate, &config).map_err(failure)?;
    let mut samples = match &args.data {
        Some(dir) => open_data(dir, &check.input_types()).map_err(failure)?,
        None => {
            if args.samples == 0 {
                return Err(Failure::bad_input("--samples 0: nothing to compare"));
            }
            ui.warn(format!(
                "no --data: comparing on {} synthetic samples (seed {}, dynamic dimensions set to 1)",
                args.samples, args.seed
            ));
            Box::new(Synthetic::new(check.inputs(), args.samples, args.seed))
        }
    };
    let report = check.run(samples.as_mut(), &options).map_err(failure)?;
    if let Some(b) = &report.baseline {
        for note in &b.notes {
            ui.warn(format!("baseline: {note}"));
        }
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(path) = &args.junit {
        let mut f = kiln::compiler::onnx::AtomicFile::create(path)?;
        f.write_all(junit_xml(&report).as_bytes())?;
        f.commit()?;
    }
    if !ui.quiet {
        print!("{}", kiln::check::render_table(&report));
    }
    if report.pass {
        return Ok(());
    }
    let failed: Vec<String> = report.failures().map(|c| c.message.clone()).collect();
    Err(Failure {
        status: ExitStatus::CheckFailed,
        message: format!("check failed ({} of {}): {}", failed.len(), report.checks.len(), failed.join("\nerror: ")),
    })
}
