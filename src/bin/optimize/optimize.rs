//! `optimize MODEL -o OUT/`: the pipeline, writing an artifact folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::calibration::Method;
use kiln::calibration::data::model_inputs;
use kiln::compiler::onnx::SaveOptions;
use kiln::compiler::pass::{PassRecord, ReportEntry};
use kiln::pipeline::PipelineError;
use kiln::pipeline::{OptLevel, Pipeline, Precision, TargetKind, op_histogram};
use kiln::stages::half::{HalfKind, HalfOptions};
use kiln::stages::int4::{Int4Method, Int4Options};
use kiln::stages::int8::Int8Options;
use kiln::stages::prune::PruneOptions;
use kiln::stages::{StageError, StageReport};
use kiln::targets::artifact::{ArtifactWriter, MODEL, REPORT, sha256_file};
use kiln::targets::lint::LintReport;
use serde::Serialize;

use crate::data_args::DataArgs;
use crate::{Failure, Ui, load_verified, write_json};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    O0,
    O1,
    O2,
    O3,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model to optimize (never modified).
    pub model: Option<PathBuf>,
    /// The artifact folder to write (model.onnx + manifest.json), replaced atomically.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: Option<PathBuf>,
    /// Optimization level: O1 simplify, O2 + portable fusions, O3 + the target's runtime fusions.
    #[arg(long, value_enum, default_value = "o2", ignore_case = true)]
    opt: Level,
    /// Deployment target.
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
    /// Do not run this pass or fusion rule (repeatable; for bisecting a problem).
    #[arg(long, value_name = "PASS")]
    disable: Vec<String>,
    /// Stop after this many pass runs (for bisecting a problem).
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
    /// Write the full report (every pass, every fusion applied or missed, timings) as JSON.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the full report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Numeric precision of the artifact.
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    /// INT8: quantize activations at run time (no calibration data needed).
    #[arg(long)]
    dynamic: bool,
    /// INT8: how activation ranges are computed: minmax, percentile:99.99, entropy or mse.
    #[arg(long, default_value = "minmax", value_name = "METHOD")]
    calibration: String,
    /// INT4: weights per block along K (16 to 256).
    #[arg(long, default_value_t = 32, value_name = "N")]
    block: usize,
    /// INT4: how weights are rounded.
    #[arg(long, value_enum, default_value = "rtn")]
    int4_method: Int4MethodArg,
    /// Leave these nodes (by name) or op types in their original precision (repeatable).
    #[arg(long, value_name = "NODE|OP")]
    exclude: Vec<String>,
    /// Structured pruning before quantization, e.g. channels:0.3,heads:0.25,ffn:0.2.
    #[arg(long, value_name = "SPEC")]
    prune: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluation samples (same forms as --data); default: a held-apart share of --data.
    #[arg(long, value_name = "DIR|FILE")]
    eval_data: Option<PathBuf>,
    /// Intra-op threads of the runtime used for calibration and validation.
    #[arg(long)]
    threads: Option<usize>,
    // ---- artifact and target options (target_out.rs), presets and config (main.rs) ----
    #[command(flatten)]
    artifact: crate::target_out::TargetArgs,
    /// A set of options for a common deployment (flags given after it win).
    #[arg(long, value_enum)]
    pub preset: Option<kiln::presets::Preset>,
    /// Options from a TOML file: the flags' long names as keys (`target = "cpu"`,
    /// `exclude = ["Softmax"]`); flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Int4MethodArg {
    Rtn,
    Gptq,
    Awq,
    Learned,
}

/// The precision stage the arguments ask for.
fn precision(args: &Args) -> Result<Precision, Failure> {
    let exclude = args.exclude.clone();
    Ok(match args.precision {
        PrecisionArg::Fp32 => Precision::Fp32,
        PrecisionArg::Fp16 | PrecisionArg::Bf16 => {
            let kind = if args.precision == PrecisionArg::Fp16 { HalfKind::F16 } else { HalfKind::Bf16 };
            Precision::Half(HalfOptions { exclude, ..HalfOptions::new(kind) })
        }
        PrecisionArg::Int8 => {
            let method = Method::parse(&args.calibration)
                .map_err(|e| Failure::bad_input(format!("--calibration {}: {e}", args.calibration)))?;
            Precision::Int8(Int8Options { dynamic: args.dynamic, method, exclude })
        }
        PrecisionArg::Int4 => {
            let method = match args.int4_method {
                Int4MethodArg::Rtn => Int4Method::Rtn,
                Int4MethodArg::Gptq => Int4Method::Gptq,
                Int4MethodArg::Awq => Int4Method::Awq,
                Int4MethodArg::Learned => Int4Method::Learned,
            };
            Precision::Int4(Int4Options { block: args.block, method, exclude, ..Int4Options::default() })
        }
    })
}

/// `manifest.json`: deterministic (no timings, no absolute paths), so that the same inputs
/// and options give a byte-identical artifact.
#[derive(Serialize)]
struct Manifest {
    kiln_version: &'static str,
    input: InputRecord,
    target: &'static str,
    opt_level: OptLevel,
    disabled: Vec<String>,
    /// Fusions the target leaves out (measured slower there), with the reason.
    target_excluded: Vec<String>,
    stop_after: Option<usize>,
    model: ModelRecord,
    passes: Vec<PassSummary>,
    precision: &'static str,
    /// Pruning and precision: what each did, and the precision chosen per node.
    stages: Vec<StageReport>,
    warnings: Vec<String>,
    /// The target's QDQ linter: warnings and the share of compute in INT8.
    lint: LintReport,
    /// Files the target needs beside the model.
    target_files: Vec<String>,
}

#[derive(Serialize)]
struct InputRecord {
    file: String,
    sha256: String,
    nodes: usize,
    op_histogram: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct ModelRecord {
    file: &'static str,
    sha256: String,
    nodes: usize,
    op_histogram: BTreeMap<String, usize>,
    external_files: Vec<(String, u64)>,
}

#[derive(Serialize)]
struct PassSummary {
    pass: String,
    iteration: usize,
    changed: bool,
    nodes_before: usize,
    nodes_after: usize,
    /// Rule → how many times it applied.
    applied: BTreeMap<String, usize>,
    /// Rule → how many candidates it left alone.
    missed: BTreeMap<String, usize>,
}

fn summarize_pass(p: &PassRecord) -> PassSummary {
    let count = |kind: &str| {
        let mut m = BTreeMap::new();
        for e in p.entries.iter().filter(|e| e.kind == kind) {
            *m.entry(e.rule.clone()).or_insert(0) += 1;
        }
        m
    };
    PassSummary {
        pass: p.pass.clone(),
        iteration: p.iteration,
        changed: p.changed,
        nodes_before: p.nodes_before,
        nodes_after: p.nodes_after,
        applied: count("applied"),
        missed: count("missed"),
    }
}

/// The full report: the manifest's facts plus timings and every entry.
#[derive(Serialize)]
struct Report<'a> {
    artifact: PathBuf,
    optimize_millis: f64,
    total_millis: f64,
    passes: &'a [PassRecord],
    applied: Vec<&'a ReportEntry>,
    missed: Vec<&'a ReportEntry>,
    skipped: Vec<&'a ReportEntry>,
    warnings: &'a [String],
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    let started = Instant::now();
    let Some(model_path) = args.model.as_ref() else {
        return Err(Failure::bad_input("no model given: optimize MODEL -o OUT (or a subcommand; see --help)"));
    };
    let Some(out) = args.output.as_ref() else {
        return Err(Failure::bad_input("no artifact folder given: add -o OUT"));
    };
    let model = load_verified(model_path)?;
    let level = match args.opt {
        Level::O0 => OptLevel::O0,
        Level::O1 => OptLevel::O1,
        Level::O2 => OptLevel::O2,
        Level::O3 => OptLevel::O3,
    };
    let target = match args.target {
        Target::Cpu => TargetKind::Cpu,
        Target::Cuda => TargetKind::Cuda,
        Target::Tensorrt => TargetKind::TensorRt,
    };
    let precision = precision(&args)?;
    let prune = match &args.prune {
        Some(spec) => Some(PruneOptions::parse(spec).map_err(|e| Failure::bad_input(format!("--prune {e}")))?),
        None => None,
    };
    let needs_data = match &precision {
        Precision::Int8(o) => !o.dynamic,
        Precision::Int4(o) => o.method != Int4Method::Rtn,
        Precision::Half(_) => args.data.data.is_some(),
        Precision::Fp32 => false,
    };
    let calibration = if needs_data {
        let inputs = model_inputs(&model).map_err(|e| Failure::bad_input(format!("{}: {e}", model_path.display())))?;
        Some(args.data.split(&inputs, args.eval_data.as_deref(), None, ui)?.calibration)
    } else {
        None
    };
    let base_dir = model_path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty());
    let pipeline = Pipeline::new(level)
        .target(target)
        .disable(args.disable.clone())
        .stop_after(args.stop_after)
        .prune(prune)
        .precision(precision)
        .calibration_data(calibration)
        .base_dir(base_dir);
    let mut pipeline = pipeline;
    pipeline.context.threads = args.threads;
    pipeline.context.progress = crate::progress::reporter(ui.quiet || args.json);
    let known = Pipeline::new(OptLevel::O3).target(target).pass_names();
    for d in &args.disable {
        if !known.contains(&d.as_str()) {
            return Err(Failure::bad_input(format!(
                "--disable {d}: no such pass or fusion rule; known names are: {}",
                known.join(", ")
            )));
        }
    }
    let before = op_histogram(&model);
    let nodes_before = before.values().sum();
    let opt_started = Instant::now();
    let outcome = pipeline.run(model).map_err(|e| {
        let message = format!("{}: {e}", model_path.display());
        match e {
            PipelineError::Stage(StageError::BadInput { .. }) => Failure::bad_input(message),
            _ => Failure::runtime(message),
        }
    })?;
    let optimize_millis = opt_started.elapsed().as_secs_f64() * 1000.0;
    for w in &outcome.warnings {
        ui.warn(w);
    }

    let synthetic = crate::target_out::synthetic_shapes(&outcome.model, &args.data)?;
    let target_out =
        crate::target_out::run(target, &outcome.model, &args.artifact, args.data.data.as_ref(), &synthetic, ui)?;
    let writer = ArtifactWriter::create(out, args.artifact.force).map_err(Failure::bad_input)?;
    let saved = writer.write_model(&outcome.model, &SaveOptions::default()).map_err(Failure::runtime)?;
    let after = op_histogram(&outcome.model);
    let manifest = Manifest {
        kiln_version: env!("CARGO_PKG_VERSION"),
        input: InputRecord {
            file: file_name(model_path),
            sha256: sha256_file(model_path).map_err(Failure::runtime)?,
            nodes: nodes_before,
            op_histogram: before,
        },
        target: target.name(),
        opt_level: level,
        disabled: args.disable.clone(),
        target_excluded: outcome.report.disabled.iter().filter(|d| d.contains("(target ")).cloned().collect(),
        stop_after: args.stop_after,
        model: ModelRecord {
            file: MODEL,
            sha256: writer.sha256(MODEL).map_err(Failure::runtime)?,
            nodes: after.values().sum(),
            op_histogram: after,
            external_files: saved.external_files.clone(),
        },
        passes: outcome.report.passes.iter().map(summarize_pass).collect(),
        precision: pipeline.precision.name(),
        stages: outcome.stages.clone(),
        warnings: outcome.warnings.clone(),
        lint: target_out.lint,
        target_files: target_out.files.iter().map(|f| f.name.clone()).collect(),
    };
    writer.write_manifest(&manifest).map_err(Failure::runtime)?;
    for f in &target_out.files {
        writer.write_file(&f.name, &f.bytes, f.executable).map_err(Failure::runtime)?;
    }
    let manifest_json = serde_json::to_value(&manifest).map_err(Failure::runtime)?;
    writer.write_file(REPORT, crate::report_md::render(&manifest_json).as_bytes(), false).map_err(Failure::runtime)?;
    let dest = writer.commit().map_err(Failure::runtime)?;

    let report = Report {
        artifact: dest.clone(),
        optimize_millis,
        total_millis: started.elapsed().as_secs_f64() * 1000.0,
        passes: &outcome.report.passes,
        applied: outcome.report.entries_of("applied").collect(),
        missed: outcome.report.entries_of("missed").collect(),
        skipped: outcome.report.entries_of("skipped").collect(),
        warnings: &outcome.warnings,
    };
    if let Some(path) = &args.report {
        write_json(path, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(Failure::runtime)?);
    } else {
        ui.say(format!(
            "{} -> {}: {} -> {} nodes in {:.0} ms ({} rewrites applied, {} candidates missed)",
            model_path.display(),
            dest.join(MODEL).display(),
            manifest.input.nodes,
            manifest.model.nodes,
            optimize_millis,
            report.applied.len(),
            report.missed.len()
        ));
        let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &report.applied {
            *by_rule.entry(e.rule.as_str()).or_insert(0) += 1;
        }
        for (rule, n) in by_rule {
            ui.say(format!("  {n:>5}  {rule}"));
        }
    }
    Ok(())
}
