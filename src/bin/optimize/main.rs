//! `optimize`: the command-line shell over the Kiln library.

mod background;
mod bench;
mod calibrate;
mod check;
mod convert;
mod data_args;
mod inspect;
mod optimize;
mod precision_args;
mod progress;
mod report_md;
mod run;
mod sensitivity;
mod target_out;
mod validation;

use std::fmt::Display;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use kiln::exit::{EXIT_CODES_HELP, ExitStatus};

#[derive(Parser)]
#[command(
    name = "optimize",
    version,
    about = "Kiln: ahead-of-time ONNX model optimization",
    long_about = "Kiln: ahead-of-time ONNX model optimization.\n\n\
        `optimize MODEL -o OUT/` runs the pass pipeline and writes an artifact folder \
        (model.onnx + manifest.json); the subcommands inspect, convert and run models.",
    after_help = EXIT_CODES_HELP,
    args_conflicts_with_subcommands = true,
    // A later flag replaces an earlier one: presets and config files expand to flags placed
    // before the command line's.
    args_override_self = true
)]
struct Cli {
    /// Print only errors.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    optimize: optimize::Args,
}

#[derive(Subcommand)]
enum Command {
    /// Summarize a model: opsets, inputs/outputs, op histogram, parameters, external files, subgraphs.
    #[command(after_help = EXIT_CODES_HELP)]
    Inspect(inspect::Args),
    /// Re-serialize a model: to or from external data or safetensors, optionally binding weights.
    #[command(after_help = EXIT_CODES_HELP)]
    Convert(convert::Args),
    /// Run a model on inputs from .npy/.npz files and write or summarize its outputs.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(run::Args),
    /// Compute activation ranges from calibration data (or merge ranges computed on shards).
    #[command(after_help = EXIT_CODES_HELP)]
    Calibrate(calibrate::Args),
    /// Compare a candidate model with a reference: accuracy per output, latency, size, baseline.
    #[command(after_help = EXIT_CODES_HELP)]
    Check(check::Args),
    /// Measure a model on ONNX Runtime: latency percentiles, throughput, peak memory, cold start.
    #[command(after_help = EXIT_CODES_HELP)]
    Bench(bench::Args),
    /// Rank nodes by the error each adds when lowered alone (table, JSON, SVG plot).
    #[command(after_help = EXIT_CODES_HELP)]
    Sensitivity(sensitivity::Args),
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` in the arguments, if given.
fn flag_value(args: &[std::ffi::OsString], name: &str) -> Option<std::ffi::OsString> {
    let long = format!("--{name}");
    let eq = format!("--{name}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == long {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix(&eq) {
            return Some(v.into());
        }
    }
    None
}

/// For `optimize MODEL …` (no subcommand): the flags of `--preset` and of `--config FILE`
/// placed before the command line's own, so that the command line wins.
fn expand_options(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, Failure> {
    let cmd = Cli::command();
    let rest = argv.get(1..).unwrap_or(&[]);
    let is_sub = rest.first().is_some_and(|a| cmd.get_subcommands().any(|c| a.to_string_lossy() == c.get_name()));
    if is_sub {
        return Ok(argv);
    }
    let mut flags: Vec<String> = Vec::new();
    if let Some(p) = flag_value(rest, "preset") {
        // A bad name is left for clap to report with the list of presets.
        if let Some(preset) = kiln::presets::Preset::parse(&p.to_string_lossy()) {
            flags.extend(preset.flags().iter().map(|f| f.to_string()));
        }
    }
    if let Some(path) = flag_value(rest, "config") {
        let known: Vec<String> =
            cmd.get_arguments().filter_map(|a| a.get_long()).map(str::to_string).filter(|l| l != "help").collect();
        let from_file =
            kiln::config::flags_from_file(std::path::Path::new(&path), &known).map_err(Failure::bad_input)?;
        // A preset named in the file comes first, like one on the command line.
        let (presets, others): (Vec<String>, Vec<String>) =
            from_file.into_iter().partition(|f| f.starts_with("--preset="));
        for p in presets {
            let name = p.trim_start_matches("--preset=");
            let preset = kiln::presets::Preset::parse(name).ok_or_else(|| {
                Failure::bad_input(format!("{}: preset '{name}' does not exist", std::path::Path::new(&path).display()))
            })?;
            flags.splice(0..0, preset.flags().iter().map(|f| f.to_string()));
        }
        flags.extend(others);
    }
    if flags.is_empty() {
        return Ok(argv);
    }
    let mut out: Vec<std::ffi::OsString> = argv.first().cloned().into_iter().collect();
    out.extend(flags.into_iter().map(Into::into));
    out.extend(rest.iter().cloned());
    Ok(out)
}

/// A failure with the exit code it maps to. The message is printed as one `error:` line
/// (details, when there are several problems, on the lines after it).
pub struct Failure {
    pub status: ExitStatus,
    pub message: String,
}

impl Failure {
    pub fn bad_input(message: impl Display) -> Failure {
        Failure { status: ExitStatus::BadInput, message: message.to_string() }
    }

    pub fn runtime(message: impl Display) -> Failure {
        Failure { status: ExitStatus::Runtime, message: message.to_string() }
    }
}

impl From<kiln::compiler::onnx::OnnxError> for Failure {
    fn from(e: kiln::compiler::onnx::OnnxError) -> Failure {
        Failure { status: ExitStatus::of_onnx(&e), message: e.to_string() }
    }
}

impl From<kiln::compiler::runtime::RuntimeError> for Failure {
    fn from(e: kiln::compiler::runtime::RuntimeError) -> Failure {
        Failure { status: ExitStatus::of_runtime(&e), message: e.to_string() }
    }
}

/// The verifier's errors as one failure, each problem on its own line naming the file (the
/// first becomes the `error:` line, the rest follow it).
pub fn invalid_model(path: &std::path::Path, e: &kiln::compiler::verify::VerifyError) -> Failure {
    let lines: Vec<String> =
        e.0.iter().map(|p| format!("{}: {}: {}: {}", path.display(), p.graph, p.location, p.message)).collect();
    Failure::bad_input(lines.join("\nerror: "))
}

/// Output shared by the commands: quiet mode, JSON.
pub struct Ui {
    pub quiet: bool,
}

impl Ui {
    pub fn say(&self, line: impl Display) {
        if !self.quiet {
            println!("{line}");
        }
    }

    pub fn warn(&self, line: impl Display) {
        eprintln!("warning: {line}");
    }
}

/// Loads a model and refuses it, listing every problem, when the verifier finds errors.
pub fn load_verified(path: &std::path::Path) -> Result<kiln::compiler::ir::Model, Failure> {
    let model = kiln::compiler::onnx::load_model(path)?;
    kiln::compiler::verify::check_model(&model).map_err(|e| invalid_model(path, &e))?;
    Ok(model)
}

/// Writes a JSON report atomically.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(Failure::runtime)?;
    let mut f = kiln::compiler::onnx::AtomicFile::create(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.commit()?;
    Ok(())
}

/// Sizes the pool of Kiln's own parallel work (rayon) for `--threads`; results never depend
/// on it. Called once, before any parallel work.
pub fn use_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // Fails only when the pool exists already, which leaves the earlier size in place.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}

/// mimalloc for every allocation in the process, ONNX Runtime's included (the `override`
/// feature exports `malloc`/`free` from this binary, which the runtime library binds to when
/// loaded): starting the runtime registers thousands of operator schemas, small allocations
/// glibc's malloc spent a third of that time on. Silero VAD static INT8, median of 25: 64 ms
/// with glibc, 49 ms with mimalloc. Transparent huge pages stay off for its memory
/// (`no_thp`): with them every fresh arena page faulted in 2 MiB, +17 MiB peak RSS on the
/// same run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the version `mimalloc` 0.1.52 builds;
/// the dependency is pinned to it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    /// mimalloc's option setter (linked in statically with the allocator).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// mimalloc 3 returns freed memory to the system a second after it is freed; 10 ms (mimalloc
/// 2's default) keeps the peak RSS of a run near glibc's at no measured cost in time (MiniLM
/// static INT8: 153 MiB at 1 s, 130 MiB at 10 ms, 127 MiB with glibc). `MIMALLOC_PURGE_DELAY`
/// in the environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option store inside mimalloc, valid at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 10) }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`optimize inspect m.onnx | head`) instead of failing on every later print.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // ONNX Runtime 1.31's Linux build keeps a telemetry database and a device identifier under
    // ~/.cache/Microsoft unless this is set before it starts (turning events off afterwards,
    // as the library does, is too late for those). A build tool writes nothing outside its
    // output; a user who wants ORT's telemetry sets the variable to 0.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    }
    let argv = match expand_options(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(f) => {
            eprintln!("error: {}", f.message);
            return ExitCode::from(f.status.code());
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Help and version are successes; every other parse error is bad usage.
            return if e.use_stderr() { ExitCode::from(ExitStatus::BadInput.code()) } else { ExitCode::SUCCESS };
        }
    };
    let ui = Ui { quiet: cli.quiet };
    let result = match cli.command {
        Some(Command::Inspect(a)) => inspect::run(a, &ui),
        Some(Command::Convert(a)) => convert::run(a, &ui),
        Some(Command::Run(a)) => run::run(a, &ui),
        Some(Command::Calibrate(a)) => calibrate::run(a, &ui),
        Some(Command::Check(a)) => check::run(a, &ui),
        Some(Command::Bench(a)) => bench::run(a, &ui),
        Some(Command::Sensitivity(a)) => sensitivity::run(a, &ui),
        None => optimize::run(cli.optimize, &ui),
    };
    let code = match result {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.status.code()
        }
    };
    exit_now(code)
}

/// Ends the process without running exit handlers. Everything Kiln writes is written and
/// renamed into place by now and its temporary files are gone (their owners were dropped);
/// what is left is ONNX Runtime's global teardown, milliseconds spent freeing memory the
/// kernel reclaims anyway.
fn exit_now(code: u8) -> ExitCode {
    use std::io::Write;
    let flushed = std::io::stdout().flush().is_ok() && std::io::stderr().flush().is_ok();
    if !flushed {
        // A failed flush must still be reported through the normal exit path.
        return ExitCode::from(code);
    }
    // SAFETY: `_exit` only ends the process; no Rust invariant depends on code after it.
    unsafe { libc::_exit(i32::from(code)) }
}

#[cfg(test)]
mod allocator_tests {
    use super::*;

    /// The index names the purge delay: mimalloc 3 defaults it to 1000 ms, a value no
    /// neighbouring option has; a mimalloc that reorders its options fails here.
    #[test]
    fn the_purge_delay_index_is_mimallocs() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: plain option reads.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        // SAFETY: the option's neighbours, read to show the value is not everyone's.
        let neighbours =
            unsafe { [mi_option_get(MI_OPTION_PURGE_DELAY - 1), mi_option_get(MI_OPTION_PURGE_DELAY + 1)] };
        assert!(neighbours.iter().all(|&v| v != 1000), "{neighbours:?}");
    }
}
