//! `optimize MODEL -o OUT/`: the pipeline, writing an artifact folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::compiler::onnx::SaveOptions;
use kiln::compiler::pass::{PassRecord, ReportEntry};
use kiln::pipeline::{OptLevel, Pipeline, TargetKind, op_histogram};
use kiln::targets::artifact::{ArtifactWriter, MODEL, sha256_file};
use serde::Serialize;

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
    warnings: Vec<String>,
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
    let pipeline = Pipeline::new(level).target(target).disable(args.disable.clone()).stop_after(args.stop_after);
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
    let outcome = pipeline.run(model).map_err(|e| Failure::runtime(format!("{}: {e}", model_path.display())))?;
    let optimize_millis = opt_started.elapsed().as_secs_f64() * 1000.0;
    for w in &outcome.warnings {
        ui.warn(w);
    }

    let writer = ArtifactWriter::create(out).map_err(Failure::bad_input)?;
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
        warnings: outcome.warnings.clone(),
    };
    writer.write_manifest(&manifest).map_err(Failure::runtime)?;
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
