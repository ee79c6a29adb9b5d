//! The optimization pipeline: named levels of passes for a target, run by the pass manager,
//! and the artifact they produce.
//!
//! ```
//! use kiln::pipeline::{OptLevel, Pipeline, Precision, TargetKind};
//! use kiln::stages::int8::Int8Options;
//!
//! // MiniLM (a pinned fixture; any ONNX file works), quantized to dynamic INT8 for ORT CPU.
//! let path = kiln_fixtures::model("transformer")?;
//! let model = kiln::compiler::onnx::load_model(&path)?;
//! let int8 = Precision::Int8(Int8Options { dynamic: true, ..Int8Options::default() });
//! let outcome = Pipeline::new(OptLevel::O2).target(TargetKind::Cpu).precision(int8).run(model)?;
//! // Every pass and stage reports what it changed.
//! let fused = outcome.report.entries_of("applied").count();
//! let stage = &outcome.stages[0];
//! let int8_nodes = stage.decisions.values().filter(|d| d.starts_with("int8")).count();
//! println!("{fused} rewrites; {int8_nodes} nodes in int8; {:?}", stage.facts["nodes_quantized"]);
//! assert!(int8_nodes > 0);
//! let dir = tempfile::tempdir()?;
//! kiln::compiler::onnx::save_model(&outcome.model, &dir.path().join("model.onnx"), &Default::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use kiln_compiler::inspect::summarize;
use kiln_compiler::ir::Model;
use kiln_compiler::pass::{Pass, PassError, PassManager, PipelineReport};
use kiln_compiler::shape::InferShapes;
use kiln_passes::fuse::{FusionPass, Rule};
use serde::Serialize;

use crate::stages::half::HalfOptions;
use crate::stages::int4::Int4Options;
use crate::stages::int8::Int8Options;
use crate::stages::prune::PruneOptions;
use crate::stages::{StageContext, StageError, StageReport};

/// The numeric precision of the artifact.
#[derive(Debug, Clone, Default)]
pub enum Precision {
    /// Unchanged (FP32 stays FP32).
    #[default]
    Fp32,
    /// FP16 or BF16 (see [`HalfOptions::kind`]).
    Half(HalfOptions),
    /// INT8, static QDQ or dynamic.
    Int8(Int8Options),
    /// INT4 weight-only.
    Int4(Int4Options),
}

impl Precision {
    /// The same precision with more nodes (names or op types) left out.
    pub fn excluding(&self, extra: &[String]) -> Precision {
        let mut p = self.clone();
        let exclude = match &mut p {
            Precision::Fp32 => return p,
            Precision::Half(o) => &mut o.exclude,
            Precision::Int8(o) => {
                // Trial candidates are measured for accuracy; timing each one would only
                // make sensitivity slow and its ranking machine-dependent.
                o.tune = false;
                &mut o.exclude
            }
            Precision::Int4(o) => &mut o.exclude,
        };
        exclude.extend(extra.iter().cloned());
        p
    }

    /// Runs this precision's stage on `model`; `None` for FP32 (nothing to do).
    pub fn apply(&self, model: &mut Model, cx: &StageContext) -> Result<Option<StageReport>, StageError> {
        Ok(Some(match self {
            Precision::Fp32 => return Ok(None),
            Precision::Half(o) => crate::stages::half::run(model, o, cx)?,
            Precision::Int8(o) => crate::stages::int8::run(model, o, cx)?,
            Precision::Int4(o) => crate::stages::int4::run(model, o, cx)?,
        }))
    }

    /// The name used in reports and `--precision`.
    pub fn name(&self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Half(o) if o.kind == crate::stages::half::HalfKind::Bf16 => "bf16",
            Precision::Half(_) => "fp16",
            Precision::Int8(o) if o.dynamic => "int8-dynamic",
            Precision::Int8(_) => "int8",
            Precision::Int4(_) => "int4",
        }
    }
}

/// How much to optimize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum OptLevel {
    /// Nothing: the model is written as read.
    O0,
    /// Simplification: shape inference, constant folding, dead code, common subexpressions,
    /// no-op elimination.
    O1,
    /// O1 and fusions into standard ONNX ops, good on every target.
    O2,
    /// O2 and the runtime-specific fusions of the target (ONNX Runtime contrib ops).
    O3,
}

/// The deployment target: defined with its capabilities in `kiln_targets`.
pub use kiln_targets::TargetKind;

/// A configured pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub level: OptLevel,
    pub target: TargetKind,
    /// Pass or fusion-rule names not to run (bisection).
    pub disable: Vec<String>,
    /// Stop after this many pass runs (bisection).
    pub stop_after: Option<usize>,
    /// Structured pruning after graph optimization, before precision.
    pub prune: Option<PruneOptions>,
    pub precision: Precision,
    /// Keep the most sensitive nodes in the original precision until this holds.
    pub budget: Option<AccuracyBudget>,
    /// Data, executor settings and where external data lives, for the stages.
    pub context: StageContext,
}

/// `--accuracy-budget`: the tolerance the lowered model must meet against the FP32 graph on
/// evaluation samples (kept apart from calibration).
#[derive(Clone)]
pub struct AccuracyBudget {
    pub tolerance: kiln_compiler::metrics::ToleranceSpec,
    pub evaluation: kiln_calibration::SharedSource,
    /// Evaluation samples used per measurement (the first ones).
    pub max_samples: usize,
}

impl std::fmt::Debug for AccuracyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccuracyBudget")
            .field("tolerance", &self.tolerance.to_string())
            .field("evaluation", &self.evaluation.describe())
            .field("max_samples", &self.max_samples)
            .finish()
    }
}

/// What a pipeline run produced.
#[derive(Debug)]
pub struct Outcome {
    pub model: Model,
    pub report: PipelineReport,
    /// What pruning and the precision stage did, in order.
    pub stages: Vec<StageReport>,
    /// What `--accuracy-budget` measured and chose.
    pub fallback: Option<crate::sensitivity::Fallback>,
    /// Findings a person must see (for example: a transformer in which no attention fused).
    pub warnings: Vec<String>,
}

/// Why a pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Sensitivity(#[from] crate::sensitivity::SensitivityError),
}

impl Pipeline {
    pub fn new(level: OptLevel) -> Pipeline {
        Pipeline {
            level,
            target: TargetKind::Cpu,
            disable: Vec::new(),
            stop_after: None,
            prune: None,
            precision: Precision::Fp32,
            budget: None,
            context: StageContext::default(),
        }
    }

    pub fn target(mut self, target: TargetKind) -> Pipeline {
        self.target = target;
        self.context.target = target;
        self
    }

    pub fn precision(mut self, precision: Precision) -> Pipeline {
        self.precision = precision;
        self
    }

    /// Falls back the most sensitive nodes until `budget` holds (see [`crate::sensitivity`]).
    pub fn accuracy_budget(mut self, budget: Option<AccuracyBudget>) -> Pipeline {
        self.budget = budget;
        self
    }

    pub fn prune(mut self, prune: Option<PruneOptions>) -> Pipeline {
        self.prune = prune;
        self
    }

    /// Calibration samples for the stages that need data.
    pub fn calibration_data(mut self, source: Option<kiln_calibration::SharedSource>) -> Pipeline {
        self.context.calibration = source;
        self
    }

    /// Where the model's external data lives (the input model's folder).
    pub fn base_dir(mut self, dir: Option<std::path::PathBuf>) -> Pipeline {
        self.context.base_dir = dir;
        self
    }

    pub fn disable(mut self, names: impl IntoIterator<Item = String>) -> Pipeline {
        self.disable.extend(names);
        self
    }

    pub fn stop_after(mut self, n: Option<usize>) -> Pipeline {
        self.stop_after = n;
        self
    }

    /// The passes of this level for this target, in order.
    pub fn passes(&self) -> Vec<Box<dyn Pass>> {
        let mut passes: Vec<Box<dyn Pass>> = Vec::new();
        if self.level >= OptLevel::O1 {
            passes.push(Box::new(InferShapes));
            passes.extend(kiln_passes::simplify::simplify_pipeline());
        }
        if self.level >= OptLevel::O2 {
            passes.push(Box::new(self.fusion("fuse-portable", kiln_passes::fuse::PORTABLE)));
            // Fusions expose new shapes and dead constants: infer and clean up again.
            passes.push(Box::new(InferShapes));
        }
        if self.level >= OptLevel::O3 && self.target.runs_ort_contrib_ops() {
            passes.push(Box::new(self.fusion("fuse-ort", kiln_passes::fuse::ORT)));
        }
        passes
    }

    /// A fusion pass over a rule set, without the rules named in `disable`. Ahead of static
    /// INT8 for the CPU, FusedConv leaves the large Conv + Relu/Clip pairs to the quantizer.
    fn fusion(&self, name: &'static str, rules: &'static [&'static dyn Rule]) -> FusionPass {
        let excluded = self.target.excluded_rules();
        let static_int8 = matches!(&self.precision, Precision::Int8(o) if !o.dynamic);
        let before_int8 = static_int8 && self.target == TargetKind::Cpu;
        FusionPass::new(
            name,
            rules
                .iter()
                .copied()
                .filter(|r| {
                    !self.disable.iter().any(|d| d == r.name()) && !excluded.iter().any(|(e, _)| *e == r.name())
                })
                .map(|r| match r.name() {
                    "fused-conv" if before_int8 => &kiln_passes::fuse::FUSED_CONV_BEFORE_INT8,
                    _ => r,
                }),
        )
    }

    /// Every pass and fusion-rule name this pipeline knows (what `disable` accepts).
    pub fn pass_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.passes().iter().map(|p| p.name()).collect();
        if self.level >= OptLevel::O2 {
            names.extend(kiln_passes::fuse::PORTABLE.iter().map(|r| r.name()));
        }
        if self.level >= OptLevel::O3 && self.target.runs_ort_contrib_ops() {
            names.extend(kiln_passes::fuse::ORT.iter().map(|r| r.name()));
        }
        names.dedup();
        names
    }

    /// Runs the pipeline on a model: graph passes, then pruning, then the precision stage.
    pub fn run(&self, mut model: Model) -> Result<Outcome, PipelineError> {
        let mut pm = PassManager::new().disable(self.disable.clone()).stop_after(self.stop_after);
        for p in self.passes() {
            pm = pm.add_boxed(p);
        }
        let progress = self.context.progress.clone();
        let mut report = progress.step("optimizing the graph", None, |_| pm.run(&mut model))?;
        if self.level >= OptLevel::O3 && self.target.runs_ort_contrib_ops() {
            for (rule, why) in self.target.excluded_rules() {
                report.disabled.push(format!("{rule} (target {}: {why})", self.target.name()));
            }
        }
        let mut stages = Vec::new();
        // A fresh memo per run: what a stage caches belongs to this model and data only.
        let cx = StageContext { memo: Default::default(), ..self.context.clone() };
        if let Some(prune) = &self.prune {
            stages.push(progress.step("pruning", None, |_| crate::stages::prune::run(&mut model, prune, &cx))?);
        }
        let mut fallback = None;
        match &self.budget {
            Some(budget) if !matches!(self.precision, Precision::Fp32) => {
                let executor = kiln_compiler::runtime::OrtExecutor::new();
                let session = kiln_compiler::runtime::SessionConfig::reproducible(Default::default());
                let eval = crate::sensitivity::Evaluator::new(
                    &executor,
                    &model,
                    cx.base_dir.as_deref(),
                    &budget.evaluation,
                    budget.max_samples,
                    session,
                )?;
                let (chosen, report, fb) =
                    crate::sensitivity::fallback(&model, &self.precision, &cx, &eval, &budget.tolerance)?;
                model = chosen;
                stages.extend(report);
                fallback = Some(fb);
            }
            _ if matches!(self.precision, Precision::Fp32) => {}
            _ => {
                let what = format!("lowering to {}", self.precision.name());
                stages.extend(progress.step(&what, None, |_| self.precision.apply(&mut model, &cx))?)
            }
        }
        // Target legalization (kiln_targets): rewrites that change no numbers, after precision.
        let legal = kiln_targets::Target::new(self.target).legalize(&mut model)?;
        report.passes.extend(legal.passes);
        let mut warnings = self.findings(&model);
        warnings.extend(stages.iter().flat_map(|s| s.warnings.iter().cloned()));
        Ok(Outcome { model, report, stages, fallback, warnings })
    }

    fn findings(&self, model: &Model) -> Vec<String> {
        let mut out = Vec::new();
        if self.level < OptLevel::O3 || !self.target.runs_ort_contrib_ops() {
            return out;
        }
        let ops = summarize(model).op_histogram;
        let count = |k: &str| ops.get(k).copied().unwrap_or(0);
        let looks_like_attention = count("Softmax") > 0 && count("MatMul") >= 2;
        let fused = count("com.microsoft.Attention") + count("com.microsoft.MultiHeadAttention");
        if looks_like_attention && fused == 0 {
            out.push(format!(
                "NO ATTENTION FUSED: the model has {} Softmax and {} MatMul nodes that look like self-attention, \
                 but no Attention or MultiHeadAttention was formed; see the `missed` entries of fuse-ort in the report",
                count("Softmax"),
                count("MatMul")
            ));
        }
        out
    }
}

/// Op counts of a model, for reports.
pub fn op_histogram(model: &Model) -> BTreeMap<String, usize> {
    summarize(model).op_histogram
}
