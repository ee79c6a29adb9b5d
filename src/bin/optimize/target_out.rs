//! The target's part of `optimize`: the linter before anything is written, and the files the
//! target needs beside the model (TensorRT: build profile, trtexec command, provider options).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::calibration::data::{self, model_inputs};
use kiln::compiler::ir::Model;
use kiln::targets::lint::LintReport;
use kiln::targets::tensorrt::{BuildProfile, ShapeRange};
use kiln::targets::{EmittedFile, Target, TargetKind};

use crate::{Failure, Ui};

/// Artifact options.
#[derive(clap::Args, Default)]
pub struct TargetArgs {
    /// Replace an existing artifact at OUT (a folder that is not a Kiln artifact is never replaced).
    #[arg(long)]
    pub force: bool,
    /// TensorRT engine build profile for an input: INPUT=MIN[:OPT[:MAX]] with shapes like
    /// 1x3x224x224 (repeatable). Default: the shapes of the --data samples, else dynamic dims 1.
    #[arg(long = "shapes", value_name = "INPUT=MIN:OPT:MAX")]
    pub profile_shapes: Vec<String>,
}

/// What the target step produced.
pub struct TargetOutcome {
    pub lint: LintReport,
    pub files: Vec<EmittedFile>,
}

/// The shapes of the first `limit` samples in `--data`, by input.
fn observed_shapes(
    model: &Model,
    data: Option<&PathBuf>,
    limit: usize,
) -> Result<BTreeMap<String, Vec<Vec<u64>>>, Failure> {
    let mut out: BTreeMap<String, Vec<Vec<u64>>> = BTreeMap::new();
    let Some(path) = data else { return Ok(out) };
    let inputs = model_inputs(model).map_err(Failure::bad_input)?;
    let source = data::open(path, &inputs).map_err(Failure::bad_input)?;
    for i in 0..source.len().min(limit) {
        let sample = source.read(i).map_err(Failure::bad_input)?;
        for (name, t) in sample.inputs {
            out.entry(name).or_default().push(t.dims().iter().map(|&d| d as u64).collect());
        }
    }
    Ok(out)
}

/// The shapes of synthetic inputs when the user sized them (`--dim`, `--shape`).
pub fn synthetic_shapes(
    model: &Model,
    data: &crate::data_args::DataArgs,
) -> Result<BTreeMap<String, Vec<u64>>, Failure> {
    if data.dims.is_empty() && data.shapes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let inputs = model_inputs(model).map_err(Failure::bad_input)?;
    let spec = data.synthetic_spec()?;
    let source = data::Synthetic::new(&inputs, &kiln::calibration::data::SyntheticSpec { samples: 1, ..spec })
        .map_err(Failure::bad_input)?;
    let sample = kiln::calibration::SampleSource::read(&source, 0).map_err(Failure::bad_input)?;
    Ok(sample.inputs.into_iter().map(|(k, t)| (k, t.dims().iter().map(|&d| d as u64).collect())).collect())
}

/// Lints the model for the target (errors refuse the artifact; warnings are shown), then
/// makes the target's files.
pub fn run(
    kind: TargetKind,
    model: &Model,
    args: &TargetArgs,
    data: Option<&PathBuf>,
    synthetic: &BTreeMap<String, Vec<u64>>,
    ui: &Ui,
) -> Result<TargetOutcome, Failure> {
    let target = Target::new(kind);
    let mut overrides = BTreeMap::new();
    for s in &args.profile_shapes {
        let (name, range) = ShapeRange::parse(s).map_err(Failure::bad_input)?;
        overrides.insert(name, range);
    }
    // A TensorRT profile spans the shapes of up to 256 samples; the FLOPs count needs one.
    let limit = if kind == TargetKind::TensorRt { 256 } else { 1 };
    let observed = observed_shapes(model, data, limit)?;
    // FLOPs are counted at a real shape: the first sample's, else the profile's OPT, else the
    // synthetic shape the user set with --dim/--shape; else as declared.
    let mut at: BTreeMap<String, Vec<u64>> =
        observed.iter().filter_map(|(k, v)| v.first().map(|s| (k.clone(), s.clone()))).collect();
    if at.is_empty() {
        at = overrides.iter().map(|(k, r)| (k.clone(), r.opt.clone())).collect();
    }
    if at.is_empty() {
        at = synthetic.clone();
    }
    let lint = target.lint(model, &at);
    for w in &lint.warnings {
        ui.warn(format!("{}: {} [{}]", lint.target, w.message, w.rule));
    }
    if !lint.passed() {
        return Err(Failure::bad_input(format!(
            "the artifact breaks {} rules of target {}; nothing was written:\nerror: {}",
            lint.errors.len(),
            kind.name(),
            lint.error_lines().join("\nerror: ")
        )));
    }
    let files = if kind == TargetKind::TensorRt {
        let profile = BuildProfile::from_model(model, &overrides, &observed).map_err(Failure::bad_input)?;
        for i in profile.inputs.iter().filter(|i| i.source == "default 1") {
            ui.warn(format!(
                "tensorrt: input '{}' has dynamic dimensions and neither --shapes nor --data: the engine profile fixes them at 1",
                i.name
            ));
        }
        target.emit(model, &profile).map_err(Failure::runtime)?
    } else {
        if !args.profile_shapes.is_empty() {
            ui.warn(format!("--shapes is for the tensorrt target; target {} ignores it", kind.name()));
        }
        Vec::new()
    };
    Ok(TargetOutcome { lint, files })
}
