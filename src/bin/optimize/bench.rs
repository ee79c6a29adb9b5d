//! `optimize bench MODEL`: latency percentiles, throughput, peak memory and cold start on ONNX
//! Runtime, for each batch size × thread count; a table, and JSON with `--json`.

use std::path::{Path, PathBuf};

use kiln::calibration::SampleSource;
use kiln::calibration::data::{self, DimSpec, InputSpec, Synthetic, model_inputs};
use kiln::compiler::Tensor;
use kiln::compiler::onnx::encode_model;
use kiln::compiler::runtime::{ModelSource, SessionConfig, Value};
use kiln::targets::bench::{BenchOptions, BenchResult, measure};
use serde::Serialize;

use crate::data_args::DataArgs;
use crate::{Failure, Ui, load_verified, write_json};

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model to measure.
    model: PathBuf,
    /// Batch sizes (comma-separated): symbolic batch dimensions take each size.
    #[arg(long, value_delimiter = ',', default_value = "1", value_name = "N,…")]
    batch: Vec<usize>,
    /// Intra-op thread counts (comma-separated); default: the runtime's choice.
    #[arg(long, value_delimiter = ',', value_name = "N,…")]
    threads: Vec<usize>,
    /// Untimed runs after the first (cold) run.
    #[arg(long, default_value_t = 5, value_name = "N")]
    warmup: usize,
    /// Timed runs per configuration.
    #[arg(long, default_value_t = 50, value_name = "N")]
    runs: usize,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Serialize)]
struct Report {
    model: String,
    inputs: String,
    warmup: usize,
    results: Vec<BenchResult>,
}

/// Whether dimension 0 of the input is dynamic (the batch).
fn batch_axis(spec: &InputSpec) -> bool {
    spec.dims.as_ref().and_then(|d| d.first()).is_some_and(|d| !matches!(d, DimSpec::Fixed(_)))
}

/// One sample at batch 1 (or as given), then each batched input built by repeating it.
fn batched(sample: &[(String, Tensor)], specs: &[InputSpec], batch: usize) -> Result<Vec<(String, Value)>, Failure> {
    let mut out = Vec::new();
    let mut any_batch = false;
    for (name, t) in sample {
        let spec = specs.iter().find(|s| &s.name == name);
        if !spec.is_some_and(batch_axis) || t.dims().first() == Some(&batch) {
            any_batch |= spec.is_some_and(batch_axis);
            out.push((name.clone(), Value::Tensor(t.clone())));
            continue;
        }
        any_batch = true;
        if t.dims().first() != Some(&1) {
            return Err(Failure::bad_input(format!(
                "--batch {batch}: input `{name}` has batch {} in the data; give samples of batch 1",
                t.dims().first().copied().unwrap_or(0)
            )));
        }
        let bytes =
            t.bytes().ok_or_else(|| Failure::bad_input(format!("input `{name}`: string tensors cannot be batched")))?;
        let mut dims = t.dims().to_vec();
        dims[0] = batch;
        let repeated = Tensor::new(t.dtype(), dims, bytes.repeat(batch).into()).map_err(Failure::runtime)?;
        out.push((name.clone(), Value::Tensor(repeated)));
    }
    if batch != 1 && !any_batch {
        return Err(Failure::bad_input(format!(
            "--batch {batch}: no input of the model has a dynamic batch dimension"
        )));
    }
    Ok(out)
}

fn sample(args: &Args, specs: &[InputSpec], ui: &Ui) -> Result<(Vec<(String, Tensor)>, String), Failure> {
    match &args.data.data {
        Some(d) => {
            let source = data::open(d, specs).map_err(Failure::bad_input)?;
            if source.is_empty() {
                return Err(Failure::bad_input(format!("{}: no samples", d.display())));
            }
            let s = source.read(0).map_err(Failure::bad_input)?;
            Ok((s.inputs, format!("{} (first sample)", source.describe())))
        }
        None => {
            let spec = args.data.synthetic_spec()?;
            let synthetic = Synthetic::new(specs, &spec).map_err(Failure::bad_input)?;
            let s = synthetic.read(0).map_err(Failure::bad_input)?;
            ui.say(format!("inputs: seeded synthetic values (seed {}); give --data for real ones", spec.seed));
            Ok((s.inputs, synthetic.describe()))
        }
    }
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    let model = load_verified(&args.model)?;
    let specs = model_inputs(&model).map_err(|e| Failure::bad_input(format!("{}: {e}", args.model.display())))?;
    let (sample, described) = sample(&args, &specs, ui)?;
    if args.batch.contains(&0) || args.runs == 0 {
        return Err(Failure::bad_input("--batch and --runs must be at least 1"));
    }
    let bytes = encode_model(&model);
    let base_dir = args.model.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
    let source = ModelSource { bytes: &bytes, base_dir: base_dir.as_deref() };
    let threads: Vec<Option<usize>> =
        if args.threads.is_empty() { vec![None] } else { args.threads.iter().map(|&t| Some(t)).collect() };
    let progress = crate::progress::reporter(ui.quiet);
    let total = (args.batch.len() * threads.len()) as u64;
    let results = progress.step("benchmark", Some(total), |p| -> Result<Vec<BenchResult>, Failure> {
        let mut results = Vec::new();
        for &batch in &args.batch {
            let inputs = batched(&sample, &specs, batch)?;
            for &t in &threads {
                let options = BenchOptions {
                    warmup: args.warmup,
                    runs: args.runs,
                    session: SessionConfig { intra_threads: t, deterministic: false, ..SessionConfig::default() },
                };
                results.push(measure(source, &inputs, batch, &options)?);
                p.tick(1);
            }
        }
        Ok(results)
    })?;
    ui.say(format!("{}: {described}, {} timed runs after {} warm-up", args.model.display(), args.runs, args.warmup));
    ui.say(format!(
        "{:>6} {:>8} {:>10} {:>10} {:>10} {:>12} {:>12} {:>11}",
        "batch", "threads", "p50 ms", "p95 ms", "p99 ms", "samples/s", "cold ms", "peak MiB"
    ));
    for r in &results {
        let peak = r.peak_rss_delta_kib.map_or_else(|| "n/a".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        ui.say(format!(
            "{:>6} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>12.1} {:>12.1} {:>11}",
            r.batch,
            r.threads.map_or_else(|| "auto".to_string(), |t| t.to_string()),
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.throughput_per_s,
            r.cold_start_ms,
            peak
        ));
    }
    if let Some(path) = &args.json {
        let report =
            Report { model: args.model.display().to_string(), inputs: described, warmup: args.warmup, results };
        write_json(path, &report)?;
    }
    Ok(())
}
