//! `optimize MODEL -o OUT/`: the pipeline, writing an artifact folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::compiler::metrics::ToleranceSpec;
use kiln::compiler::onnx::SaveOptions;
use kiln::compiler::pass::{PassRecord, ReportEntry};
use kiln::compiler::runtime::SessionConfig;
use kiln::exit::ExitStatus;
use kiln::pipeline::PipelineError;
use kiln::pipeline::{AccuracyBudget, OptLevel, Pipeline, Precision, TargetKind, op_histogram};
use kiln::stages::prune::PruneOptions;
use kiln::stages::{StageError, StageReport};
use kiln::targets::artifact::{ArtifactWriter, MODEL, REPORT};
use kiln::targets::lint::LintReport;
use kiln::validate::{ValidationRecord, check_first_sample, default_tolerance};
use serde::Serialize;

use crate::data_args::DataArgs;
use crate::precision_args::PrecisionArgs;
use crate::validation::{fallback_summary, plan_data, slower_warning, validate_artifact, validation_summary};
use crate::{Failure, Ui, load_verified, write_json};

use crate::background::{InputDigest, RuntimeWarmup};

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

/// The library's level for the CLI's.
pub fn opt_level(level: Level) -> OptLevel {
    match level {
        Level::O0 => OptLevel::O0,
        Level::O1 => OptLevel::O1,
        Level::O2 => OptLevel::O2,
        Level::O3 => OptLevel::O3,
    }
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
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Structured pruning before quantization, e.g. channels:0.3,heads:0.25,ffn:0.2.
    #[arg(long, value_name = "SPEC")]
    prune: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluation samples (same forms as --data); default: a held-apart share of --data.
    #[arg(long, value_name = "DIR|FILE")]
    eval_data: Option<PathBuf>,
    /// Threads of Kiln's own parallel work (observers, weight quantization, GPTQ) and of
    /// `--tune`'s timing runs. The runtime sessions whose numbers decide the artifact
    /// (calibration, validation) run on one intra-op thread each, so the artifact is
    /// byte-identical at any setting.
    #[arg(long)]
    threads: Option<usize>,
    /// The accuracy the artifact must keep against the original, e.g.
    /// `sentence_embedding:cosine>=0.995,*:top1>=0.99` (default: by precision).
    #[arg(long, value_name = "SPEC")]
    tolerance: Option<String>,
    /// Keep the most sensitive nodes in the original precision until this holds against the
    /// FP32 graph on the evaluation samples, e.g. `*:cosine_min>=0.99` or `*:top1>=0.99`.
    #[arg(long, value_name = "SPEC")]
    accuracy_budget: Option<String>,
    /// Evaluation samples each --accuracy-budget measurement uses (the first ones).
    #[arg(long, default_value_t = 16, value_name = "N")]
    budget_samples: usize,
    /// Do not validate the artifact against the original (the manifest says so).
    #[arg(long)]
    skip_validation: bool,
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
    /// What --accuracy-budget measured and which nodes it kept in the original precision.
    fallback: Option<kiln::sensitivity::Fallback>,
    /// The artifact against the original on evaluation samples; `None` with --skip-validation.
    validation: Option<ValidationRecord>,
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
    stages: &'a [StageReport],
    /// Validation with latency (the manifest keeps only the deterministic part).
    validation: Option<&'a kiln::check::CheckReport>,
    warnings: &'a [String],
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    crate::use_threads(args.threads);
    let started = Instant::now();
    let Some(model_path) = args.model.as_ref() else {
        return Err(Failure::bad_input("no model given: optimize MODEL -o OUT (or a subcommand; see --help)"));
    };
    let Some(out) = args.output.as_ref() else {
        return Err(Failure::bad_input("no artifact folder given: add -o OUT"));
    };
    let precision = args.precision.precision()?;
    let needs_data = args.precision.needs_data(&precision, args.data.data.is_some());
    // Started first, before the model is read: loading the runtime takes longer than
    // everything the pipeline does before its first session on a small model.
    let _runtime = RuntimeWarmup::start((needs_data || !args.skip_validation) && args.threads != Some(1));
    // Without validation (which hashes the input as its reference) the input's digest is
    // computed on another core while the pipeline runs; it is the same digest either way.
    let input_digest = InputDigest::start(model_path, args.skip_validation && args.threads != Some(1));
    let model = load_verified(model_path)?;
    // Before any work: an existing artifact without --force is refused at once.
    let writer = ArtifactWriter::create(out, args.artifact.force).map_err(Failure::bad_input)?;
    let level = opt_level(args.opt);
    let target = match args.target {
        Target::Cpu => TargetKind::Cpu,
        Target::Cuda => TargetKind::Cuda,
        Target::Tensorrt => TargetKind::TensorRt,
    };
    let prune = match &args.prune {
        Some(spec) => Some(PruneOptions::parse(spec).map_err(|e| Failure::bad_input(format!("--prune {e}")))?),
        None => None,
    };
    let budget_spec = match &args.accuracy_budget {
        Some(text) => {
            Some(ToleranceSpec::parse(text).map_err(|e| Failure::bad_input(format!("--accuracy-budget: {e}")))?)
        }
        None => None,
    };
    // The budget is what the artifact is held to, unless --tolerance says otherwise.
    let tolerance = match (&args.tolerance, &budget_spec) {
        (Some(text), _) => ToleranceSpec::parse(text).map_err(|e| Failure::bad_input(format!("--tolerance: {e}")))?,
        (None, Some(b)) => b.clone(),
        // Pruning without fine-tuning costs accuracy by design: measured and reported, not
        // judged, unless the user sets a tolerance.
        (None, None) if prune.is_some() => ToleranceSpec::default(),
        (None, None) => default_tolerance(&precision),
    };
    let data_plan = plan_data(&args.data, args.eval_data.as_deref(), model_path, &model, needs_data, ui)?;
    for source in data_plan.calibration.iter().chain(&data_plan.evaluation) {
        check_first_sample(source.as_ref(), &data_plan.inputs).map_err(Failure::bad_input)?;
    }
    let budget = match (&budget_spec, &data_plan.evaluation) {
        (Some(spec), Some(evaluation)) => Some(AccuracyBudget {
            tolerance: spec.clone(),
            evaluation: evaluation.clone(),
            max_samples: args.budget_samples,
        }),
        (Some(_), None) => {
            return Err(Failure::bad_input("--accuracy-budget needs evaluation samples: give --data or --eval-data"));
        }
        (None, _) => None,
    };
    let base_dir = model_path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty());
    let pipeline = Pipeline::new(level)
        .target(target)
        .disable(args.disable.clone())
        .stop_after(args.stop_after)
        .prune(prune)
        .precision(precision)
        .calibration_data(data_plan.calibration.clone())
        .accuracy_budget(budget)
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
    // The model is written (and hashed as it is written) on another core while the target's
    // checks read it here.
    let (target_out, saved) = std::thread::scope(|scope| {
        let write = scope.spawn(|| writer.write_model(&outcome.model, &SaveOptions::default()));
        let target_out =
            crate::target_out::run(target, &outcome.model, &args.artifact, args.data.data.as_ref(), &synthetic, ui);
        let saved = match write.join() {
            Ok(saved) => saved.map_err(Failure::runtime),
            Err(_) => Err(Failure::runtime("writing the model failed: the writer thread panicked")),
        };
        (target_out, saved)
    });
    let (target_out, saved) = (target_out?, saved?);
    let mut warnings = outcome.warnings.clone();
    let validation = if args.skip_validation {
        None
    } else {
        let session = SessionConfig::reproducible(Default::default());
        // Latency before and after when the model's arithmetic changed (precision, pruning).
        let quantized = !matches!(pipeline.precision, Precision::Fp32) || pipeline.prune.is_some();
        let staged = writer.staged_path(MODEL);
        pipeline.context.progress.step("validating against the original", None, |_| {
            validate_artifact(model_path, &staged, &data_plan, tolerance, quantized, session, &mut warnings)
        })?
    };
    for w in warnings.iter().skip(outcome.warnings.len()) {
        ui.warn(w);
    }
    // Timings stay out of the artifact folder (see `slower_warning`).
    let measured: Vec<String> = validation.as_ref().and_then(slower_warning).into_iter().collect();
    for w in &measured {
        ui.warn(w);
    }
    let after = op_histogram(&outcome.model);
    // Validation hashed both files already (the input as the reference, the staged model as
    // the candidate): large models are not read a second time for the same digests.
    let input_sha256 = match &validation {
        Some(v) => v.reference.sha256.clone(),
        None => input_digest.finish()?,
    };
    let model_sha256 = match &validation {
        Some(v) => v.candidate.sha256.clone(),
        None => saved.model_sha256.clone(),
    };
    let manifest = Manifest {
        kiln_version: env!("CARGO_PKG_VERSION"),
        input: InputRecord {
            file: file_name(model_path),
            sha256: input_sha256,
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
            sha256: model_sha256,
            nodes: after.values().sum(),
            op_histogram: after,
            external_files: saved.external_files.clone(),
        },
        passes: outcome.report.passes.iter().map(summarize_pass).collect(),
        precision: pipeline.precision.name(),
        stages: outcome.stages.clone(),
        fallback: outcome.fallback.clone(),
        validation: validation.as_ref().map(ValidationRecord::from),
        warnings: warnings.clone(),
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
        stages: &outcome.stages,
        validation: validation.as_ref(),
        warnings: &[&warnings[..], &measured[..]].concat(),
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
        if let Some(f) = &outcome.fallback {
            ui.say(fallback_summary(f));
        }
        if let Some(v) = &validation {
            ui.say(validation_summary(v));
        }
    }
    if let Some(f) = outcome.fallback.as_ref().filter(|f| !f.met) {
        let best = f.probes.iter().max_by(|a, b| a.cosine_min.total_cmp(&b.cosine_min));
        return Err(Failure {
            status: ExitStatus::CheckFailed,
            message: format!(
                "--accuracy-budget {} cannot be met even with all {} nodes in the original precision{}; the \
                 best candidate is written to {}",
                f.budget,
                f.nodes.len(),
                best.map_or(String::new(), |p| format!(
                    " (best: SQNR {:.2} dB, cosine min {:.6})",
                    p.sqnr_db, p.cosine_min
                )),
                dest.display()
            ),
        });
    }
    match &validation {
        Some(v) if !ValidationRecord::from(v).pass => {
            let failed: Vec<String> = v.failures().map(|c| c.message.clone()).collect();
            Err(Failure {
                status: ExitStatus::CheckFailed,
                message: format!(
                    "the artifact at {} misses its accuracy tolerance ({}):\n  {}",
                    dest.display(),
                    v.tolerance,
                    failed.join("\n  ")
                ),
            })
        }
        _ => Ok(()),
    }
}
