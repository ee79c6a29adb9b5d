//! `optimize calibrate`: activation ranges from calibration data, written as a ranges file
//! that can be inspected, reused, and merged across shards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln::calibration::collect::{CalibError, CollectOptions, collect};
use kiln::calibration::data::{SharedSource, model_inputs, shard};
use kiln::calibration::{Method, Ranges};
use kiln::compiler::runtime::{ErrorKind, OrtExecutor};
use kiln::exit::ExitStatus;

use crate::data_args::DataArgs;
use crate::{Failure, Ui, load_verified};

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model (not with --merge).
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// minmax, moving-minmax:C, percentile:P (e.g. percentile:99.99), entropy or mse.
    #[arg(long, default_value = "minmax", value_name = "METHOD")]
    method: String,
    /// Calibrate shard I of N only (samples I, I+N, I+2N…); merge the shards with --merge.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Samples observed together; the ranges do not depend on it.
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch: usize,
    /// Observed tensors per inference session (bounds memory; each group reads the data once).
    #[arg(long, default_value_t = 64, value_name = "N")]
    group_size: usize,
    /// Observe only this tensor (repeatable; default: every float activation).
    #[arg(long = "tensor", value_name = "NAME")]
    tensors: Vec<String>,
    /// Merge ranges files computed on shards of the same data (instead of calibrating).
    #[arg(long, num_args = 1.., value_name = "RANGES.json", conflicts_with_all = ["model", "shard"])]
    merge: Vec<PathBuf>,
    /// Where to write the ranges (default: print them).
    #[arg(long, short, value_name = "RANGES.json")]
    output: Option<PathBuf>,
    /// Intra-op threads of the runtime (default: its choice).
    #[arg(long)]
    threads: Option<usize>,
}

impl From<CalibError> for Failure {
    fn from(e: CalibError) -> Failure {
        let status = match e.kind() {
            ErrorKind::BadInput => ExitStatus::BadInput,
            ErrorKind::Runtime => ExitStatus::Runtime,
        };
        Failure { status, message: e.to_string() }
    }
}

fn parse_shard(text: &str) -> Result<(usize, usize), Failure> {
    let bad = || Failure::bad_input(format!("--shard '{text}': expected I/N with 0 <= I < N"));
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn write_ranges(ranges: &Ranges, output: Option<&Path>) -> Result<(), Failure> {
    let text = ranges.to_json();
    match output {
        Some(path) => {
            let mut f = kiln::compiler::onnx::AtomicFile::create(path)?;
            f.write_all(text.as_bytes())?;
            f.commit()?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn read_ranges(path: &Path) -> Result<Ranges, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))?;
    Ranges::from_json(&text).map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))
}

fn merge(a: &Args, ui: &Ui) -> Result<(), Failure> {
    let mut files = a.merge.iter();
    let first = files.next().ok_or_else(|| Failure::bad_input("--merge needs ranges files"))?;
    let mut merged = read_ranges(first)?;
    for path in files {
        let next = read_ranges(path)?;
        merged = Ranges::merge(&merged, &next)
            .map_err(|e| Failure::bad_input(format!("{} and {}: {e}", first.display(), path.display())))?;
    }
    write_ranges(&merged, a.output.as_deref())?;
    if let Some(out) = &a.output {
        ui.say(format!(
            "merged {} files: {} tensors, {} samples -> {}",
            a.merge.len(),
            merged.tensors.len(),
            merged.samples,
            out.display()
        ));
    }
    Ok(())
}

pub fn run(a: Args, ui: &Ui) -> Result<(), Failure> {
    if !a.merge.is_empty() {
        return merge(&a, ui);
    }
    let path = a.model.as_deref().ok_or_else(|| Failure::bad_input("calibrate needs a MODEL (or --merge FILES)"))?;
    let method = Method::parse(&a.method).map_err(|e| Failure::bad_input(format!("--method: {e}")))?;
    let model = load_verified(path)?;
    let inputs = model_inputs(&model).map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))?;

    let source = a.data.calibration_source(&inputs, ui)?;
    let source: SharedSource = match &a.shard {
        Some(s) => {
            let (i, n) = parse_shard(s)?;
            Arc::new(shard(source, i, n).map_err(Failure::bad_input)?)
        }
        None => source,
    };
    if source.is_empty() && a.shard.is_none() {
        return Err(Failure::bad_input(format!("{}: no calibration samples", source.describe())));
    }

    let mut options = CollectOptions {
        method,
        tensors: (!a.tensors.is_empty()).then(|| a.tensors.clone()),
        group_size: a.group_size,
        batch: a.batch,
        // A ranges file keeps its statistics: it may be merged with shards or re-derived.
        keep_histograms: true,
        ..CollectOptions::default()
    };
    options.session.intra_threads = a.threads;
    let start = Instant::now();
    let base_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let ranges = collect(&OrtExecutor::new(), &model, Some(base_dir), source.as_ref(), &options)?;
    write_ranges(&ranges, a.output.as_deref())?;

    if let Some(out) = &a.output {
        let empty: BTreeMap<_, _> = ranges.tensors.iter().filter(|(_, t)| t.range().is_none()).collect();
        ui.say(format!(
            "calibrated {} tensors ({method}) on {} in {:.2}s -> {}",
            ranges.tensors.len(),
            source.describe(),
            start.elapsed().as_secs_f64(),
            out.display()
        ));
        if !empty.is_empty() {
            ui.warn(format!("{} tensors held no finite value; they have no range", empty.len()));
        }
    }
    Ok(())
}
