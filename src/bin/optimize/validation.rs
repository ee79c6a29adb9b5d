//! Data for the stages and validation of the artifact against the original: which samples
//! calibrate, which evaluate (kept apart), and the validation run itself.

use std::path::Path;
use std::sync::Arc;

use kiln::calibration::SharedSource;
use kiln::calibration::data::{self, InputSpec, Synthetic, model_inputs};
use kiln::check::{CheckError, CheckReport, LatencyConfig};
use kiln::compiler::metrics::ToleranceSpec;
use kiln::compiler::runtime::{OrtExecutor, SessionConfig};
use kiln::validate::{SourceSamples, ValidateOptions, ValidationRecord, validate};

use crate::data_args::DataArgs;
use crate::{Failure, Ui};

/// Samples for the stages and for validation.
pub struct DataPlan {
    pub inputs: Vec<InputSpec>,
    pub calibration: Option<SharedSource>,
    pub evaluation: Option<SharedSource>,
    eval_synthetic: bool,
    /// Said in the report when evaluation could not be kept apart from calibration.
    pub eval_note: Option<String>,
}

/// Splits the data: calibration samples when the precision needs them, and evaluation samples
/// kept apart from them (`--eval-data`, else the last 20% of `--data`, else synthetic).
pub fn plan_data(
    args: &DataArgs,
    eval_data: Option<&Path>,
    path: &Path,
    model: &kiln::compiler::ir::Model,
    needs_data: bool,
    ui: &Ui,
) -> Result<DataPlan, Failure> {
    let inputs = match model_inputs(model) {
        Ok(i) => i,
        Err(e) if needs_data => return Err(Failure::bad_input(format!("{}: {e}", path.display()))),
        Err(e) => {
            return Ok(DataPlan {
                inputs: Vec::new(),
                calibration: None,
                evaluation: None,
                eval_synthetic: false,
                eval_note: Some(format!("no evaluation samples: {e}")),
            });
        }
    };
    let synthetic_eval = || -> Result<SharedSource, Failure> {
        // Another seed than calibration's, so that evaluation never sees calibration samples.
        let mut spec = args.synthetic_spec()?;
        spec.seed = spec.seed.wrapping_add(1);
        Ok(Arc::new(Synthetic::new(&inputs, &spec).map_err(Failure::bad_input)?))
    };
    if needs_data {
        let default_split = args.data.is_some().then_some(80.0);
        let split = args.split(&inputs, eval_data, default_split, ui)?;
        let (evaluation, eval_synthetic, eval_note) = match split.evaluation {
            Some(e) => (e, false, None),
            None if split.synthetic => (synthetic_eval()?, true, None),
            None => (
                split.calibration.clone(),
                false,
                Some("too few samples to hold any apart: evaluated on the calibration samples".to_string()),
            ),
        };
        return Ok(DataPlan {
            inputs,
            calibration: Some(split.calibration),
            evaluation: Some(evaluation),
            eval_synthetic,
            eval_note,
        });
    }
    let (evaluation, eval_synthetic) = match (eval_data, args.data.as_deref()) {
        (Some(p), _) | (None, Some(p)) => (data::open(p, &inputs).map_err(Failure::bad_input)?, false),
        (None, None) => (synthetic_eval()?, true),
    };
    Ok(DataPlan { inputs, calibration: None, evaluation: Some(evaluation), eval_synthetic, eval_note: None })
}

/// Validates the staged artifact against the original on the evaluation samples. Latency is
/// measured (reported, not judged) when the precision changed; see [`slower_warning`].
pub fn validate_artifact(
    original: &Path,
    candidate: &Path,
    plan: &DataPlan,
    tolerance: ToleranceSpec,
    quantized: bool,
    session: SessionConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<CheckReport>, Failure> {
    let Some(evaluation) = &plan.evaluation else {
        if let Some(note) = &plan.eval_note {
            warnings.push(format!("NOT VALIDATED: {note}"));
        }
        return Ok(None);
    };
    let options = ValidateOptions {
        tolerance,
        // A quick look (alternating pairs, median), not a benchmark: it is part of every run's
        // wall time, so it stops at a median of eleven pairs, or of seven once 150 ms are spent.
        latency: quantized.then_some(LatencyConfig {
            warmup: 2,
            min_runs: 7,
            max_runs: 11,
            budget: std::time::Duration::from_millis(150),
        }),
        session,
    };
    let mut samples = SourceSamples::new(evaluation.clone(), plan.inputs.clone(), plan.eval_synthetic);
    let report = match validate(&OrtExecutor::new(), original, candidate, &mut samples, &options) {
        Ok(report) => report,
        // Made-up inputs the original itself cannot run on (dimensions of 1 where the model
        // needs more) say nothing about the artifact: say that it went unvalidated.
        Err(e @ CheckError::Reference { .. }) if plan.eval_synthetic => {
            warnings.push(format!(
                "NOT VALIDATED: the original does not run on the synthetic inputs ({e}); give --data or \
                 --eval-data, or --dim/--shape for the synthetic inputs"
            ));
            return Ok(None);
        }
        Err(e) => {
            return Err(Failure { status: e.status(), message: format!("validating {}: {e}", original.display()) });
        }
    };
    if let Some(note) = &plan.eval_note {
        warnings.push(note.clone());
    }
    Ok(Some(report))
}

/// The loud warning for an artifact measured slower than its original. It goes to stderr and
/// report.json, not into the manifest or report.md: a timing differs from run to run, and the
/// artifact folder is byte-identical for the same inputs and options.
pub fn slower_warning(v: &CheckReport) -> Option<String> {
    let l = v.latency.as_ref().filter(|l| l.ratio > 1.0)?;
    Some(format!(
        "SLOWER THAN THE ORIGINAL: the artifact takes {:.3} ms per run against {:.3} ms ({:.2}x) in ONNX Runtime CPU",
        l.candidate_ms, l.reference_ms, l.ratio
    ))
}

/// One line per output: the metrics a person looks at first.
pub fn validation_summary(v: &kiln::check::CheckReport) -> String {
    let verdict = if ValidationRecord::from(v).pass { "pass" } else { "FAIL" };
    let mut lines = vec![format!("validated against the original on {}: {verdict} ({})", v.data.source, v.tolerance)];
    for o in &v.outputs {
        let shown: Vec<String> = ["cosine_min", "sqnr_db", "top1", "max_abs"]
            .iter()
            .filter_map(|k| o.metrics.get(*k).map(|n| format!("{k} {:.5}", n.0)))
            .collect();
        lines.push(format!("  {}: {}", o.name, shown.join(", ")));
    }
    if let Some(l) = &v.latency {
        lines
            .push(format!("  latency {:.3} ms vs original {:.3} ms ({:.2}x)", l.candidate_ms, l.reference_ms, l.ratio));
    }
    lines.join("\n")
}

/// What --accuracy-budget did, for people.
pub fn fallback_summary(f: &kiln::sensitivity::Fallback) -> String {
    let mut lines = vec![format!(
        "accuracy budget {}: {} — {} nodes kept in the original precision, {} lowered ({} verification runs)",
        f.budget,
        if f.met { "met" } else { "NOT MET" },
        f.nodes.len(),
        f.lowered,
        f.probes.len()
    )];
    for p in &f.probes {
        lines.push(format!(
            "  {:>4} kept: SQNR {:>7.2} dB, cosine min {:.6} {}",
            p.fallback,
            p.sqnr_db,
            p.cosine_min,
            if p.pass { "pass" } else { "miss" }
        ));
    }
    if !f.nodes.is_empty() {
        let shown: Vec<&str> = f.nodes.iter().take(8).map(String::as_str).collect();
        let more = if f.nodes.len() > 8 { format!(" and {} more", f.nodes.len() - 8) } else { String::new() };
        lines.push(format!("  kept: {}{more}", shown.join(", ")));
    }
    lines.join("\n")
}
