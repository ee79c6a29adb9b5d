//! `optimize convert`.

use std::path::PathBuf;

use kiln::compiler::onnx::{ExternalData, SaveOptions, save_model};
use kiln::compiler::safetensors::{BindOptions, Checkpoint, DtypePolicy, PrefixRule};
use kiln::compiler::weights::bind_weights;

use crate::{Failure, Ui, load_verified, write_json};

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model to read (never modified).
    input: PathBuf,
    /// The .onnx file to write (atomically; its external data goes next to it).
    output: PathBuf,
    /// Put tensors of at least --threshold bytes in this raw data file, next to OUTPUT.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["safetensors", "inline"])]
    external_data: Option<String>,
    /// Put tensors of at least --threshold bytes in this .safetensors file, next to OUTPUT.
    #[arg(long, value_name = "FILE", conflicts_with = "inline")]
    safetensors: Option<String>,
    /// Put every tensor inside the .onnx file (fails over protobuf's 2 GiB limit).
    #[arg(long)]
    inline: bool,
    /// Size in bytes from which tensors go to external data.
    #[arg(long, default_value_t = 1024)]
    threshold: u64,
    /// Bind weights from a .safetensors checkpoint (or a sharded `.safetensors.index.json`)
    /// onto the graph's initializers by name.
    #[arg(long, value_name = "CKPT")]
    weights: Option<PathBuf>,
    /// Rename checkpoint keys before binding: `CKPT_PREFIX=GRAPH_PREFIX` (repeatable).
    #[arg(long, value_name = "FROM=TO")]
    weights_rename: Vec<String>,
    /// Allow binding f16/bf16/f32/f64 weights onto initializers of another float type.
    #[arg(long)]
    weights_convert_float: bool,
    /// Write a JSON report of what was done.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    input: PathBuf,
    save: kiln::compiler::onnx::SaveReport,
    weights: Option<kiln::compiler::safetensors::BindSummary>,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    let mut model = load_verified(&args.input)?;

    let mut weights = None;
    if let Some(ckpt_path) = &args.weights {
        let ckpt = Checkpoint::open(ckpt_path).map_err(Failure::bad_input)?;
        let rename = args
            .weights_rename
            .iter()
            .map(|r| match r.split_once('=') {
                Some((from, to)) => Ok(PrefixRule { checkpoint: from.into(), graph: to.into() }),
                None => Err(Failure::bad_input(format!("--weights-rename '{r}': expected FROM=TO"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = BindOptions {
            rename,
            dtype_policy: if args.weights_convert_float { DtypePolicy::ConvertFloat } else { DtypePolicy::Exact },
        };
        let report = bind_weights(&mut model, &ckpt, &options);
        let summary = report.summary();
        ui.say(format!(
            "weights: {} matched, {} mismatched, {} graph initializers unmatched, {} extra in checkpoint",
            summary.matched.len(),
            summary.mismatched.len(),
            summary.unmatched_in_graph.len(),
            summary.extra_in_checkpoint.len()
        ));
        for name in &summary.unmatched_in_graph {
            ui.warn(format!("initializer '{name}' has no tensor in {}", ckpt_path.display()));
        }
        for name in &summary.extra_in_checkpoint {
            ui.warn(format!("checkpoint tensor '{name}' matches no initializer"));
        }
        if !summary.mismatched.is_empty() || !summary.ambiguous.is_empty() {
            let mut lines: Vec<String> = summary
                .mismatched
                .iter()
                .map(|m| {
                    let what = match (m.dtype_differs(), m.shape_differs()) {
                        (true, true) => "type and shape differ",
                        (true, false) => "type differs",
                        _ => "shape differs",
                    };
                    format!(
                        "{}: tensor '{}' is {}{:?} but initializer '{}' is {}{:?} ({what})",
                        ckpt_path.display(),
                        m.checkpoint_name,
                        m.found.dtype,
                        m.found.dims,
                        m.name,
                        m.expected.dtype,
                        m.expected.dims
                    )
                })
                .collect();
            lines.extend(summary.ambiguous.iter().map(|a| {
                format!(
                    "{}: initializer '{}' matches several keys: {}",
                    ckpt_path.display(),
                    a.name,
                    a.checkpoint_names.join(", ")
                )
            }));
            return Err(Failure::bad_input(lines.join("\nerror: ")));
        }
        weights = Some(summary);
    }

    let external = match (&args.external_data, &args.safetensors, args.inline) {
        (Some(f), _, _) => ExternalData::File { location: f.clone(), threshold: args.threshold },
        (_, Some(f), _) => ExternalData::Safetensors { location: f.clone(), threshold: args.threshold },
        (_, _, true) => ExternalData::Inline,
        _ => ExternalData::AsLoaded,
    };
    let saved = save_model(&model, &args.output, &SaveOptions { external, auto_external: !args.inline })?;
    if saved.auto_external {
        ui.warn("the model exceeds protobuf's 2 GiB limit: its tensors were moved to external data");
    }
    ui.say(format!("wrote {} ({} bytes)", args.output.display(), saved.model_bytes));
    for (loc, size) in &saved.external_files {
        ui.say(format!("  external data {loc} ({size} bytes)"));
    }
    if let Some(path) = &args.report {
        write_json(path, &Report { input: args.input.clone(), save: saved, weights })?;
    }
    Ok(())
}
