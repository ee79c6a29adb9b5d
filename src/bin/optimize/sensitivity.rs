//! `optimize sensitivity MODEL --precision P --data DIR`: how much each node, lowered alone,
//! costs the model's outputs; a ranked table, JSON and an SVG plot.

use std::path::{Path, PathBuf};

use kiln::compiler::runtime::{OrtExecutor, SessionConfig};
use kiln::pipeline::{Pipeline, PipelineError, Precision};
use kiln::sensitivity::{Evaluator, Mode, SensitivityError, measure, plot};
use kiln::stages::{StageContext, StageError};

use crate::data_args::DataArgs;
use crate::precision_args::PrecisionArgs;
use crate::validation::plan_data;
use crate::{Failure, Ui, load_verified, write_json};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Each node lowered alone: the error it introduces.
    OnlyThis,
    /// Every node lowered but one: the error keeping it removes (leave-one-out).
    AllButThis,
}

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model.
    model: PathBuf,
    #[command(flatten)]
    precision: PrecisionArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluation samples (same forms as --data); default: a held-apart share of --data.
    #[arg(long, value_name = "DIR|FILE")]
    eval_data: Option<PathBuf>,
    /// Evaluation samples per measurement (the first ones).
    #[arg(long, default_value_t = 16, value_name = "N")]
    eval_samples: usize,
    /// Graph optimization before the precision stage, as `optimize --opt`.
    #[arg(long, value_enum, default_value = "o2", ignore_case = true)]
    opt: crate::optimize::Level,
    #[arg(long, value_enum, default_value = "only-this")]
    mode: ModeArg,
    /// Write the ranking as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the ranking as an SVG bar chart.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Rows of the table to print (0: all).
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Threads of Kiln's own parallel work; measurements run on one intra-op thread, so the
    /// ranking is the same at any setting.
    #[arg(long)]
    threads: Option<usize>,
}

fn stage_failure(path: &Path, e: impl std::fmt::Display, bad_input: bool) -> Failure {
    let message = format!("{}: {e}", path.display());
    if bad_input { Failure::bad_input(message) } else { Failure::runtime(message) }
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    crate::use_threads(args.threads);
    let precision = args.precision.precision()?;
    if matches!(precision, Precision::Fp32) {
        return Err(Failure::bad_input("sensitivity needs a lowered precision: --precision int8|int4|fp16|bf16"));
    }
    let model = load_verified(&args.model)?;
    let needs_data = args.precision.needs_data(&precision, args.data.data.is_some());
    let plan = plan_data(&args.data, args.eval_data.as_deref(), &args.model, &model, needs_data, ui)?;
    let Some(evaluation) = plan.evaluation.clone() else {
        return Err(Failure::bad_input(format!(
            "{}: no evaluation samples ({})",
            args.model.display(),
            plan.eval_note.unwrap_or_default()
        )));
    };
    let base_dir = args.model.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty());
    // The graph the precision stage would see in `optimize`.
    let level = crate::optimize::opt_level(args.opt);
    let optimized = Pipeline::new(level)
        .run(model)
        .map_err(|e| {
            let bad = matches!(e, PipelineError::Stage(StageError::BadInput { .. }));
            stage_failure(&args.model, e, bad)
        })?
        .model;
    let cx = StageContext {
        calibration: plan.calibration.clone(),
        base_dir: base_dir.clone(),
        threads: args.threads,
        ..Default::default()
    };
    let executor = OrtExecutor::new();
    let session = SessionConfig::reproducible(Default::default());
    let fail = |e: SensitivityError| {
        let bad = matches!(e, SensitivityError::Data(_) | SensitivityError::Stage(StageError::BadInput { .. }));
        stage_failure(&args.model, e, bad)
    };
    let eval = Evaluator::new(&executor, &optimized, base_dir.as_deref(), &evaluation, args.eval_samples, session)
        .map_err(fail)?;
    let mode = match args.mode {
        ModeArg::OnlyThis => Mode::OnlyThis,
        ModeArg::AllButThis => Mode::AllButThis,
    };
    let report = measure(&optimized, &precision, &cx, &eval, mode).map_err(fail)?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        let mut f = kiln::compiler::onnx::AtomicFile::create(path)?;
        f.write_all(plot::svg(&report).as_bytes())?;
        f.commit()?;
    }
    ui.say(format!(
        "{} sensitivity of {} ({} nodes lowered, {} evaluation samples): every node lowered gives SQNR {:.2} dB, cosine min {:.6}",
        report.precision,
        args.model.display(),
        report.layers.len(),
        report.samples,
        report.all_lowered.sqnr_db,
        report.all_lowered.cosine_min
    ));
    ui.say(format!("{:>4}  {:<40} {:<14} {:>10} {:>12}", "rank", "node", "op", "SQNR dB", "cosine min"));
    let shown = if args.top == 0 { report.layers.len() } else { args.top.min(report.layers.len()) };
    for (i, l) in report.layers.iter().take(shown).enumerate() {
        ui.say(format!("{:>4}  {:<40} {:<14} {:>10.2} {:>12.6}", i + 1, l.node, l.op_type, l.sqnr_db, l.cosine_min));
    }
    Ok(())
}
