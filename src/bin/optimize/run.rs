//! `optimize run`.

use std::path::{Path, PathBuf};

use kiln::compiler::execute::{expose_values, load_session};
use kiln::compiler::npy::{read_npy, read_npz, write_npy};
use kiln::compiler::runtime::{Executor, OrtExecutor, RuntimeError, SessionConfig, Value};
use kiln::exit::ExitStatus;

use crate::{Failure, Ui, load_verified};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorChoice {
    /// ONNX Runtime (CPU).
    Ort,
    /// tract, the pure-Rust executor (built with the `tract` feature).
    Tract,
}

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx model.
    model: PathBuf,
    /// An input: `NAME=FILE.npy`, or a `.npz` whose keys are input names (repeatable).
    #[arg(long, short, value_name = "NAME=FILE.npy|FILE.npz")]
    input: Vec<String>,
    /// Outputs to return (default: every graph output). Any intermediate value may be named.
    #[arg(long, value_name = "NAME")]
    output: Vec<String>,
    /// Write each output as `<DIR>/<name>.npy`.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// The executor.
    #[arg(long, value_enum, default_value = "ort")]
    executor: ExecutorChoice,
    /// Intra-op threads (default: the runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
}

/// The executor a command was asked for.
pub fn executor(choice: ExecutorChoice) -> Result<Box<dyn Executor>, Failure> {
    match choice {
        ExecutorChoice::Ort => Ok(Box::new(OrtExecutor::new())),
        #[cfg(feature = "tract")]
        ExecutorChoice::Tract => Ok(Box::new(kiln::compiler::runtime::TractExecutor::new())),
        #[cfg(not(feature = "tract"))]
        ExecutorChoice::Tract => {
            Err(Failure::bad_input("this build has no tract executor (build with --features tract)"))
        }
    }
}

/// The inputs; `files` gets each input's file (to name it when the model refuses the value).
fn read_inputs(specs: &[String], files: &mut Vec<(String, PathBuf)>) -> Result<Vec<(String, Value)>, Failure> {
    let mut inputs = Vec::new();
    for spec in specs {
        match spec.split_once('=') {
            Some((name, file)) => {
                let t = read_npy(Path::new(file)).map_err(Failure::bad_input)?;
                inputs.push((name.to_string(), Value::Tensor(t)));
                files.push((name.to_string(), PathBuf::from(file)));
            }
            None if spec.ends_with(".npz") => {
                for (name, t) in read_npz(Path::new(spec)).map_err(Failure::bad_input)? {
                    files.push((name.clone(), PathBuf::from(spec)));
                    inputs.push((name, Value::Tensor(t)));
                }
            }
            None => return Err(Failure::bad_input(format!("--input '{spec}': expected NAME=FILE.npy or FILE.npz"))),
        }
    }
    Ok(inputs)
}

/// A file name for an output: path separators and odd characters replaced.
fn file_name_for(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') { format!("output_{s}") } else { s }
}

pub fn run(args: Args, ui: &Ui) -> Result<(), Failure> {
    let mut model = load_verified(&args.model)?;
    expose_values(&mut model, &args.output)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", args.model.display())))?;
    let mut files = Vec::new();
    let inputs = read_inputs(&args.input, &mut files)?;
    let exec = executor(args.executor)?;
    let config = SessionConfig { intra_threads: args.threads, ..SessionConfig::default() };
    let base = args.model.parent().map(Path::to_path_buf);
    let in_model = |e: kiln::compiler::runtime::RuntimeError| {
        let mut f = Failure::from(e);
        f.message = format!("{}: {}", args.model.display(), f.message);
        f
    };
    let mut session = load_session(exec.as_ref(), &model, base.as_deref(), &config).map_err(in_model)?;
    let wanted = if args.output.is_empty() { None } else { Some(args.output.as_slice()) };
    let outputs = session.run(&inputs, wanted).map_err(|e| {
        // Name the file at fault: the input's file when its value was refused, else the model.
        let refused = match &e {
            RuntimeError::WrongDtype { name, .. }
            | RuntimeError::WrongShape { name, .. }
            | RuntimeError::WrongKind { name, .. }
            | RuntimeError::DuplicateInput { name } => Some(name),
            _ => None,
        };
        let file = refused.and_then(|n| files.iter().find(|(m, _)| m == n)).map_or(&args.model, |(_, f)| f);
        Failure { status: ExitStatus::of_runtime(&e), message: format!("{}: {e}", file.display()) }
    })?;
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
    }
    for (name, value) in &outputs {
        let Value::Tensor(t) = value else {
            ui.say(format!("{name}: {} (not written: only tensors are saved as .npy)", value.describe()));
            continue;
        };
        let stats = t
            .to_f64_vec()
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| {
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                format!(" min {min:.6} max {max:.6} mean {mean:.6}")
            })
            .unwrap_or_default();
        ui.say(format!("{name}: {}{:?}{stats}", t.dtype(), t.dims()));
        if let Some(dir) = &args.output_dir {
            let path = dir.join(format!("{}.npy", file_name_for(name)));
            write_npy(&path, t).map_err(Failure::runtime)?;
        }
    }
    Ok(())
}
