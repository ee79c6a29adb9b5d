//! `cargo xtask bench`: Kiln against its peers, on the pinned real models, in one run.
//!
//! Run it with `cargo xtask bench` (`--help` lists the options; `--quick` is a smoke test,
//! not a measurement). It needs Python 3 with `venv` and access to PyPI the first time. A full
//! run takes about 3 to 4 minutes on a 2-core machine; the first one adds the venv install.
//!
//! What it does, in order:
//! 1. Makes a Python virtual environment at `$KILN_CACHE_DIR/bench-venv` with the peers pinned
//!    in `xtask/bench/requirements.txt` (reused while that file is unchanged).
//! 2. Builds `optimize` in release: Kiln's times come from the binary a user would run.
//! 3. For every fixture and every tool in [`TOOLS`], optimizes the model [`Options::repeats`]
//!    times, each in a fresh process, and keeps the median wall time (process start, imports and
//!    model I/O included, the same for Kiln and the peers). A tool that fails is recorded with the
//!    line of its error output that says why, and the bench goes on.
//! 4. In one Python process per fixture (`xtask/bench/measure.py`), loads the original and every
//!    optimized model into ONNX Runtime's CPU provider with the same session options (all graph
//!    optimizations on, as a deployment would; sequential; 1 inter-op thread; intra-op threads
//!    1 and 2, reported separately), feeds the fixture's recipe inputs (SplitMix64, seed 1,
//!    the same values as Kiln's fixture tests), checks each model's outputs against the
//!    original's (max |diff|), then times all models round robin after a warm-up: median and
//!    p90 of at least 50 runs and 2 s each.
//! 5. Writes `<cargo target dir>/bench/report.json` (`target/bench/report.json` unless
//!    `CARGO_TARGET_DIR` moves it) and prints a table: per fixture and tool, optimize time,
//!    latency median/p90, latency relative to the original and max |diff|; then Kiln's latency
//!    relative to the fastest peer, and Kiln's optimize time relative to onnxsim's and ORT's
//!    transformer optimizer's.
//!
//! Rows are compared within a group (`fp32` today): a later `kiln-int8` row and INT8 peers
//! join [`TOOLS`] under a group of their own with a looser output tolerance, and the summary
//! compares them among themselves.
//!
//! Numbers on a shared or busy machine are noisy: the round-robin timing makes the comparison
//! between models fair, not the absolute times exact. Nothing here is asserted by a test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::install::Installer;
use crate::manifest::{Fixture, ValueRecipe};

/// Fixtures measured by default, in report order.
const FIXTURES: &[&str] = &["cnn", "cnn_lcnet", "transformer", "transformer_ocr", "recurrent_op15"];

/// How Kiln is asked to optimize: `{model}` is the input, `{out}` the artifact folder, whose
/// model is `{out}/model.onnx`. `--kiln-args` replaces it (to compare levels or branches).
const KILN_ARGS: &str = "{model} --opt O3 --target cpu -o {out}";

/// The Python driver and the peers' pins, relative to the repository root.
const MEASURE_PY: &str = "xtask/bench/measure.py";
const REQUIREMENTS: &str = "xtask/bench/requirements.txt";

/// Packages whose installed versions go into the report.
const REPORTED_PACKAGES: &[&str] = &["onnxruntime", "onnx", "onnxsim", "onnxslim", "numpy", "protobuf", "sympy"];

/// Seed of the recipe inputs; 1 is what Kiln's fixture tests use.
const INPUT_SEED: u64 = 1;

/// Largest max |diff| against the original before an fp32 row is flagged; the fixtures'
/// outputs are probabilities and embeddings of magnitude about 1.
const FP32_TOLERANCE: f64 = 1e-3;

/// Which program a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// The release `optimize` binary.
    Kiln,
    /// The venv's Python.
    Python,
    /// A console script installed into the venv's `bin`.
    VenvScript(&'static str),
}

/// What a tool's argument builder gets. Paths are UTF-8 (checked before).
struct Invocation<'a> {
    fixture: &'a str,
    model: &'a str,
    /// An empty folder the tool writes into; the model must end up as `<out>/model.onnx`.
    out: &'a str,
    kiln_args: &'a [String],
}

/// One row of the benchmark per fixture.
struct Tool {
    id: &'static str,
    /// Rows compare within a group: the group's `kiln*` row against its peers.
    group: &'static str,
    /// A peer (as opposed to Kiln itself).
    peer: bool,
    program: Program,
    args: fn(&Invocation) -> Vec<String>,
    /// Largest max |diff| against the original before the row is flagged as a mismatch.
    tolerance: f64,
}

/// Every tool, in row order. Add INT8/FP16/pruning rows here.
const TOOLS: &[Tool] = &[
    Tool { id: "kiln", group: "fp32", peer: false, program: Program::Kiln, args: kiln_args, tolerance: FP32_TOLERANCE },
    Tool {
        id: "ort-transformers",
        group: "fp32",
        peer: true,
        program: Program::Python,
        args: ort_transformers_args,
        tolerance: FP32_TOLERANCE,
    },
    Tool {
        id: "onnxsim",
        group: "fp32",
        peer: true,
        program: Program::VenvScript("onnxsim"),
        args: in_out_args,
        tolerance: FP32_TOLERANCE,
    },
    Tool {
        id: "onnxslim",
        group: "fp32",
        peer: true,
        program: Program::VenvScript("onnxslim"),
        args: in_out_args,
        tolerance: FP32_TOLERANCE,
    },
];

/// Peers whose optimize time Kiln's is divided by in the summary.
const OPT_TIME_BASELINES: &[&str] = &["onnxsim", "ort-transformers"];

fn kiln_args(inv: &Invocation) -> Vec<String> {
    inv.kiln_args.iter().map(|a| a.replace("{model}", inv.model).replace("{out}", inv.out)).collect()
}

fn out_model(inv: &Invocation) -> String {
    format!("{}/model.onnx", inv.out)
}

/// `onnxsim IN OUT`, `onnxslim IN OUT`: their defaults.
fn in_out_args(inv: &Invocation) -> Vec<String> {
    vec![inv.model.to_string(), out_model(inv)]
}

/// `python -m onnxruntime.transformers.optimizer` with the model type that fits the fixture.
///
/// `--opt_level 0` runs the Python fusions only: ORT's own graph optimizations run again when
/// a session loads the model anyway, and in onnxruntime 1.31.1 a level above 0 imports torch,
/// which the bench does not install.
fn ort_transformers_args(inv: &Invocation) -> Vec<String> {
    let model_type: &[&str] = match inv.fixture {
        // BERT encoder (MiniLM-L3): 12 heads, hidden 384.
        "transformer" => &["--model_type", "bert", "--num_heads", "12", "--hidden_size", "384"],
        // SVTR blocks over image columns: ViT-style attention and LayerNorm.
        "transformer_ocr" => &["--model_type", "vit"],
        // CNNs and the recurrent model have no model type of their own: the tool's default
        // type is its generic path, which fuses the patterns it finds (LayerNorm, Gelu...).
        _ => &["--model_type", "bert"],
    };
    let mut args: Vec<String> = ["-m", "onnxruntime.transformers.optimizer", "--input", inv.model, "--output"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(out_model(inv));
    args.extend(model_type.iter().map(|s| s.to_string()));
    args.extend(["--opt_level".to_string(), "0".to_string()]);
    args
}

const USAGE: &str = "\
usage: cargo xtask bench [options]

Optimizes the pinned fixtures with Kiln (release build) and its peers (ONNX Runtime's
transformer optimizer, onnxsim, onnxslim), times every model in ONNX Runtime's CPU provider,
checks outputs against the original, and writes <target>/bench/report.json.

options:
  --fixtures a,b,..   fixtures to run (default: cnn,cnn_lcnet,transformer,transformer_ocr,recurrent_op15)
  --threads 1,2       ONNX Runtime intra-op thread counts to time (default: 1,2)
  --repeats N         optimize runs per tool and fixture; the median is reported (default: 3)
  --min-runs N        timed runs per model at least (default: 50)
  --min-seconds S     timed seconds per model at least (default: 2)
  --timeout S         seconds before one optimize run is stopped (default: 600)
  --kiln-args ARGS    Kiln's arguments, {model} and {out} substituted
                      (default: \"{model} --opt O3 --target cpu -o {out}\")
  --quick             a smoke test: 1 repeat, 1 thread, 10 runs, 0.2 s
";

/// Settings of one bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Options {
    fixtures: Vec<String>,
    threads: Vec<u32>,
    repeats: usize,
    warmup: usize,
    min_runs: usize,
    min_seconds: f64,
    max_seconds: f64,
    timeout_seconds: f64,
    kiln_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fixtures: FIXTURES.iter().map(|s| s.to_string()).collect(),
            threads: vec![1, 2],
            repeats: 3,
            warmup: 10,
            min_runs: 50,
            min_seconds: 2.0,
            max_seconds: 30.0,
            timeout_seconds: 600.0,
            kiln_args: split_args(KILN_ARGS),
        }
    }
}

fn split_args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Parses the options; `Ok(None)` means help was asked for.
fn parse_options(args: &[&str]) -> Result<Option<Options>> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        let mut value = || it.next().copied().with_context(|| format!("{arg} needs a value"));
        match arg {
            "-h" | "--help" => return Ok(None),
            "--quick" => {
                o.repeats = 1;
                o.threads = vec![1];
                o.warmup = 2;
                o.min_runs = 10;
                o.min_seconds = 0.2;
            }
            "--fixtures" => o.fixtures = value()?.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            "--threads" => {
                o.threads = value()?
                    .split(',')
                    .map(|t| t.parse().ok().filter(|&n: &u32| n > 0).with_context(|| format!("bad thread count {t:?}")))
                    .collect::<Result<_>>()?
            }
            "--repeats" => o.repeats = parse_positive(arg, value()?)?,
            "--min-runs" => o.min_runs = parse_positive(arg, value()?)?,
            "--min-seconds" => o.min_seconds = parse_seconds(arg, value()?)?,
            "--timeout" => o.timeout_seconds = parse_seconds(arg, value()?)?,
            "--kiln-args" => o.kiln_args = split_args(value()?),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    if o.fixtures.is_empty() || o.threads.is_empty() {
        bail!("--fixtures and --threads need at least one entry");
    }
    o.max_seconds = o.max_seconds.max(o.min_seconds);
    Ok(Some(o))
}

fn parse_positive(flag: &str, v: &str) -> Result<usize> {
    v.parse().ok().filter(|&n: &usize| n > 0).with_context(|| format!("{flag} needs a positive integer, not {v:?}"))
}

fn parse_seconds(flag: &str, v: &str) -> Result<f64> {
    v.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).with_context(|| format!("{flag}: bad seconds {v:?}"))
}

/// ONNX Runtime timings of one model at one thread count, as measure.py reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Latency {
    median_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    mean_ms: f64,
    runs: usize,
}

/// measure.py's verdict on one model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Measured {
    error: Option<String>,
    max_abs_diff: Option<f64>,
    mismatch: Option<String>,
    #[serde(default)]
    latency: BTreeMap<String, Latency>,
}

#[derive(Debug, Deserialize)]
struct MeasureResult {
    models: BTreeMap<String, Measured>,
}

/// One tool on one fixture (or the original model).
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Row {
    tool: String,
    group: String,
    peer: bool,
    /// `ok`, `failed: …` (the tool), `ORT failed: …` (the model does not run), or
    /// `mismatch: …` (outputs differ from the original's beyond the tolerance).
    status: String,
    /// Median optimize wall time over the repeats, seconds.
    optimize_s: Option<f64>,
    optimize_runs_s: Vec<f64>,
    model: Option<PathBuf>,
    model_bytes: Option<u64>,
    max_abs_diff: Option<f64>,
    /// By intra-op thread count.
    latency: BTreeMap<String, Latency>,
    /// Median latency divided by the original's, by thread count.
    latency_vs_original: BTreeMap<String, f64>,
}

impl Row {
    fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The comparisons the issue asks for, per fixture and group.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Ratios {
    group: String,
    kiln: String,
    /// By thread count: Kiln's median latency over the fastest working peer's.
    latency_vs_best_peer: BTreeMap<String, BestPeer>,
    /// By peer: Kiln's optimize time over the peer's.
    optimize_time_vs: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct BestPeer {
    peer: String,
    ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct FixtureReport {
    name: String,
    model: PathBuf,
    rows: Vec<Row>,
    ratios: Vec<Ratios>,
}

/// Geometric means of the per-fixture ratios.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Summary {
    group: String,
    kiln: String,
    latency_vs_best_peer_geomean: BTreeMap<String, f64>,
    optimize_time_vs_geomean: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    total_seconds: f64,
    machine: BTreeMap<String, String>,
    python: String,
    packages: BTreeMap<String, Option<String>>,
    kiln: BTreeMap<String, String>,
    settings: Options,
    session_options: BTreeMap<String, String>,
    fixtures: Vec<FixtureReport>,
    summary: Vec<Summary>,
}

/// `cargo xtask bench [options]`.
pub fn run(args: &[&str]) -> Result<()> {
    let Some(opts) = parse_options(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let started = Instant::now();
    let load_before = load_average();
    let root = crate::repo_root();
    let m = crate::load_manifest()?;
    let fixtures: Vec<&Fixture> = opts
        .fixtures
        .iter()
        .map(|name| m.fixture(name).with_context(|| format!("no fixture named {name:?} in the manifest")))
        .collect::<Result<_>>()?;

    let python = ensure_venv(&root)?;
    let versions = python_versions(&python, &root)?;
    let kiln = build_kiln()?;
    let ort_lib = crate::ort_for_children()?;
    let target = kiln.parent().and_then(Path::parent).context("unexpected location of the optimize binary")?;
    let bench_dir = target.join("bench");
    let work = bench_dir.join("work");

    let inst = Installer::new(crate::cache_dir());
    let mut reports = Vec::new();
    for f in fixtures {
        let model = inst.ensure_fixture(&m, f)?;
        eprintln!("\n== {}: {}", f.name, model.display());
        let env = Env { kiln: &kiln, python: &python, ort_lib: &ort_lib, root: &root };
        reports.push(bench_fixture(f, &model, &work.join(&f.name), &opts, &env)?);
    }

    let summary = summarize(&reports);
    let mut machine = machine_info();
    // Latency on a machine that was busy with other work is noise; say how busy it was.
    for (key, load) in [("load_average_before", load_before), ("load_average_after", load_average())] {
        if let Some(load) = load {
            machine.insert(key.into(), load);
        }
    }
    let report = Report {
        schema_version: 1,
        total_seconds: started.elapsed().as_secs_f64(),
        machine,
        python: versions.python,
        packages: versions.packages,
        kiln: kiln_info(&root, &kiln, &opts),
        session_options: session_options(),
        settings: opts,
        fixtures: reports,
        summary,
    };
    fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;
    let path = bench_dir.join("report.json");
    let mut json = serde_json::to_string_pretty(&report)?;
    json.push('\n');
    fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", render(&report));
    if let Some(load) = report.machine.get("load_average_after") {
        eprintln!("xtask: load average at the end: {load} on {} CPUs", report.machine["cpus"]);
    }
    eprintln!("xtask: report written to {} ({:.0}s in all)", path.display(), report.total_seconds);
    Ok(())
}

/// What the per-fixture steps need from the setup.
struct Env<'a> {
    kiln: &'a Path,
    python: &'a Path,
    ort_lib: &'a OsString,
    root: &'a Path,
}

/// Creates or reuses `<cache>/bench-venv` with the pinned peers; returns its Python.
fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = crate::cache_dir().join("bench-venv");
    let python = venv_bin(&venv, "python");
    let reqs_path = root.join(REQUIREMENTS);
    let reqs = fs::read_to_string(&reqs_path).with_context(|| format!("reading {}", reqs_path.display()))?;
    // A copy of the requirements marks a finished install: a changed file or an interrupted
    // install means pip runs again.
    let stamp = venv.join("kiln-requirements.txt");
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == reqs) {
        return Ok(python);
    }
    if !python.is_file() {
        let base = Installer::new(crate::cache_dir()).python;
        eprintln!("xtask: creating {} with {base}", venv.display());
        let status = Command::new(&base)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .with_context(|| format!("could not start {base}; set KILN_PYTHON to a Python 3 with venv"))?;
        if !status.success() {
            bail!("`{base} -m venv {}` failed ({status})", venv.display());
        }
    }
    let _ = fs::remove_file(&stamp);
    eprintln!("xtask: installing the bench's pinned peers from {REQUIREMENTS}");
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--progress-bar", "off", "-r"])
        .arg(&reqs_path)
        .status()
        .with_context(|| format!("could not start {}", python.display()))?;
    if !status.success() {
        bail!("pip could not install {REQUIREMENTS} into {} ({status}); it needs access to PyPI", venv.display());
    }
    fs::write(&stamp, reqs).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn venv_bin(venv: &Path, name: &str) -> PathBuf {
    if cfg!(windows) { venv.join("Scripts").join(format!("{name}.exe")) } else { venv.join("bin").join(name) }
}

#[derive(Debug, Deserialize)]
struct Versions {
    python: String,
    packages: BTreeMap<String, Option<String>>,
}

fn python_versions(python: &Path, root: &Path) -> Result<Versions> {
    let out = Command::new(python)
        .arg(root.join(MEASURE_PY))
        .arg("versions")
        .args(REPORTED_PACKAGES)
        .output()
        .with_context(|| format!("could not start {}", python.display()))?;
    if !out.status.success() {
        bail!("{MEASURE_PY} versions failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("reading the package versions")
}

/// `cargo build --release --bin optimize`; returns the binary's path as cargo reports it.
fn build_kiln() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: $ cargo build --release --bin optimize");
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--bin", "optimize", "--message-format=json-render-diagnostics"])
        .current_dir(crate::repo_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo")?;
    let mut exe = None;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("reading cargo's output")?;
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if msg["reason"] == "compiler-artifact"
                && msg["target"]["name"] == "optimize"
                && let Some(path) = msg["executable"].as_str()
            {
                exe = Some(PathBuf::from(path));
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("`cargo build --release --bin optimize` failed ({status})");
    }
    exe.context("cargo built no `optimize` executable")
}

/// Optimizes and measures one fixture with every tool.
fn bench_fixture(f: &Fixture, model: &Path, work: &Path, opts: &Options, env: &Env) -> Result<FixtureReport> {
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let model_str = utf8(model)?;
    let mut rows = vec![Row {
        tool: "original".into(),
        group: String::new(),
        peer: false,
        status: "ok".into(),
        optimize_s: None,
        optimize_runs_s: Vec::new(),
        model: Some(model.to_path_buf()),
        model_bytes: fs::metadata(model).ok().map(|m| m.len()),
        max_abs_diff: None,
        latency: BTreeMap::new(),
        latency_vs_original: BTreeMap::new(),
    }];
    for tool in TOOLS {
        rows.push(optimize_with(tool, f, model_str, &work.join(tool.id), opts, env)?);
    }

    // Latency and outputs, for every model that was produced.
    let to_measure: Vec<(String, PathBuf)> =
        rows.iter().filter_map(|r| Some((r.tool.clone(), r.model.clone()?))).collect();
    let measured = measure(f, &to_measure, work, opts, env)?;
    for row in &mut rows {
        let Some(m) = measured.get(&row.tool) else { continue };
        row.latency = m.latency.clone();
        row.max_abs_diff = m.max_abs_diff;
        let tolerance = TOOLS.iter().find(|t| t.id == row.tool).map_or(0.0, |t| t.tolerance);
        if let Some(e) = &m.error {
            row.status = format!("ORT failed: {e}");
        } else if let Some(why) = &m.mismatch {
            row.status = format!("mismatch: {why}");
        } else if let Some(d) = m.max_abs_diff.filter(|&d| d > tolerance) {
            row.status = format!("mismatch: max |diff| {d:.3e} > {tolerance:.0e}");
        }
    }
    let original = rows[0].latency.clone();
    for row in &mut rows {
        row.latency_vs_original = row
            .latency
            .iter()
            .filter_map(|(t, l)| Some((t.clone(), l.median_ms / original.get(t)?.median_ms)))
            .collect();
    }
    let ratios = ratios(&rows);
    Ok(FixtureReport { name: f.name.clone(), model: model.to_path_buf(), rows, ratios })
}

/// Runs one tool `opts.repeats` times on the fixture; the last run's model is measured.
fn optimize_with(tool: &Tool, f: &Fixture, model: &str, dir: &Path, opts: &Options, env: &Env) -> Result<Row> {
    let mut row = Row {
        tool: tool.id.into(),
        group: tool.group.into(),
        peer: tool.peer,
        status: "ok".into(),
        optimize_s: None,
        optimize_runs_s: Vec::new(),
        model: None,
        model_bytes: None,
        max_abs_diff: None,
        latency: BTreeMap::new(),
        latency_vs_original: BTreeMap::new(),
    };
    for i in 0..opts.repeats {
        let run_dir = dir.join(format!("run{i}"));
        let out = run_dir.join("out");
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let inv = Invocation { fixture: &f.name, model, out: utf8(&out)?, kiln_args: &opts.kiln_args };
        let args = (tool.args)(&inv);
        let (program, extra_env): (PathBuf, Vec<(&str, &OsString)>) = match tool.program {
            Program::Kiln => (env.kiln.to_path_buf(), vec![("KILN_ORT_LIB", env.ort_lib)]),
            Program::Python => (env.python.to_path_buf(), vec![]),
            Program::VenvScript(name) => {
                (venv_bin(env.python.parent().and_then(Path::parent).unwrap_or(Path::new(".")), name), vec![])
            }
        };
        if i == 0 {
            eprintln!("   {:<17} {} {}", tool.id, program.display(), args.join(" "));
        }
        let mut cmd = Command::new(&program);
        cmd.args(&args).current_dir(&run_dir);
        cmd.envs(extra_env);
        let outcome = timed_run(cmd, &run_dir, Duration::from_secs_f64(opts.timeout_seconds))?;
        let produced = out.join("model.onnx");
        let failure = match outcome.ended {
            Ended::Exited(s) if !s.success() => Some(outcome.failure_line(s)),
            Ended::Exited(_) if !produced.is_file() => Some("exited 0 but wrote no model.onnx".to_string()),
            Ended::Exited(_) => None,
            Ended::TimedOut => Some(format!("timed out after {:.0} s", opts.timeout_seconds)),
            Ended::NotStarted(why) => Some(why),
        };
        if let Some(why) = failure {
            row.status = format!("failed: {why}");
            eprintln!("   {:<17} {}", tool.id, row.status);
            return Ok(row);
        }
        row.optimize_runs_s.push(outcome.seconds);
        row.model_bytes = Some(artifact_bytes(&out));
        row.model = Some(produced);
    }
    row.optimize_s = median(&row.optimize_runs_s);
    eprintln!("   {:<17} optimized in {}", tool.id, row.optimize_s.map_or("-".into(), fmt_secs));
    Ok(row)
}

/// Bytes of every file in an output folder (the model and any external weights).
fn artifact_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

/// How a tool's process ended.
#[derive(Debug)]
enum Ended {
    Exited(ExitStatus),
    /// Stopped at the timeout.
    TimedOut,
    /// Could not be started (the reason).
    NotStarted(String),
}

/// How one tool process went.
struct Outcome {
    ended: Ended,
    seconds: f64,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The line that says why the tool failed.
    fn failure_line(&self, status: ExitStatus) -> String {
        error_line(&self.stderr).or_else(|| error_line(&self.stdout)).unwrap_or_else(|| format!("exit {status}"))
    }
}

/// The line of a tool's output that names its error: for a Python traceback the exception
/// line after it (the first line is only "Traceback…"), otherwise the first non-empty line.
fn error_line(text: &str) -> Option<String> {
    let line = match text.rfind("Traceback (most recent call last):") {
        Some(at) => text[at..].lines().skip(1).find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace)),
        None => None,
    }
    .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))?;
    Some(clip(line.trim(), 200))
}

/// Runs `cmd` with its output in `dir/{stdout,stderr}.txt`, timing process start to exit.
fn timed_run(mut cmd: Command, dir: &Path, timeout: Duration) -> Result<Outcome> {
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let stdout = fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let stderr = fs::File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("could not start {}: {e}", Path::new(cmd.get_program()).display());
            return Ok(Outcome {
                ended: Ended::NotStarted(why),
                seconds: 0.0,
                stdout: String::new(),
                stderr: String::new(),
            });
        }
    };
    let pid = child.id();
    // The child is waited for on a thread so its exit is timed exactly; this thread only
    // watches the clock.
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    let (ended, seconds) = match rx.recv_timeout(timeout) {
        Ok((status, at)) => {
            (Ended::Exited(status.context("waiting for a tool")?), at.duration_since(started).as_secs_f64())
        }
        Err(_) => {
            kill(pid);
            let _ = rx.recv();
            (Ended::TimedOut, timeout.as_secs_f64())
        }
    };
    let _ = waiter.join();
    let read = |p: &Path| fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(Outcome { ended, seconds, stdout: read(&out_path), stderr: read(&err_path) })
}

/// Stops a tool we started that ran past its time, by its process id.
fn kill(pid: u32) {
    let pid = pid.to_string();
    let _ = if cfg!(windows) {
        Command::new("taskkill").args(["/F", "/T", "/PID", &pid]).status()
    } else {
        Command::new("kill").args(["-9", &pid]).status()
    };
}

/// Times `models` (the original first) in measure.py. If the Python process itself dies (a
/// model that crashes ONNX Runtime), each model is measured again in a process of its own with
/// the original, so one crash costs only its own row.
fn measure(
    f: &Fixture,
    models: &[(String, PathBuf)],
    work: &Path,
    opts: &Options,
    env: &Env,
) -> Result<BTreeMap<String, Measured>> {
    eprintln!("   measuring {} models in ONNX Runtime (threads {:?})", models.len(), opts.threads);
    match measure_once(f, models, &work.join("measure"), opts, env)? {
        Ok(all) => Ok(all),
        Err(why) => {
            eprintln!("   measure.py failed ({why}); measuring each model in its own process");
            let mut all = BTreeMap::new();
            let Some(original) = models.first() else { return Ok(all) };
            for (i, candidate) in models.iter().enumerate().skip(1) {
                let pair = [original.clone(), candidate.clone()];
                let got = match measure_once(f, &pair, &work.join(format!("measure-{i}")), opts, env)? {
                    Ok(mut got) => got.remove(&candidate.0).unwrap_or_default(),
                    Err(why) => Measured { error: Some(why), ..Measured::default() },
                };
                all.insert(candidate.0.clone(), got);
            }
            let single = [original.clone()];
            let got = match measure_once(f, &single, &work.join("measure-original"), opts, env)? {
                Ok(mut got) => got.remove(&original.0).unwrap_or_default(),
                Err(why) => Measured { error: Some(why), ..Measured::default() },
            };
            all.insert(original.0.clone(), got);
            Ok(all)
        }
    }
}

/// One measure.py process; the inner `Err` is a reason the process gave no result.
fn measure_once(
    f: &Fixture,
    models: &[(String, PathBuf)],
    dir: &Path,
    opts: &Options,
    env: &Env,
) -> Result<std::result::Result<BTreeMap<String, Measured>, String>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let job = serde_json::json!({
        "inputs": recipe_json(f),
        "seed": INPUT_SEED,
        "models": models.iter().map(|(id, p)| serde_json::json!({"id": id, "path": p})).collect::<Vec<_>>(),
        "threads": opts.threads,
        "warmup": opts.warmup,
        "min_runs": opts.min_runs,
        "min_seconds": opts.min_seconds,
        "max_seconds": opts.max_seconds,
        "batch": 10,
    });
    let job_path = dir.join("job.json");
    let result_path = dir.join("result.json");
    fs::write(&job_path, serde_json::to_string_pretty(&job)?)
        .with_context(|| format!("writing {}", job_path.display()))?;
    let mut cmd = Command::new(env.python);
    cmd.arg(env.root.join(MEASURE_PY)).arg("run").arg(&job_path).arg(&result_path).current_dir(dir);
    // Generous: model loading plus the per-model cap for every model and thread count.
    let budget = opts.timeout_seconds + opts.max_seconds * 1.5 * (models.len() * opts.threads.len()) as f64;
    let outcome = timed_run(cmd, dir, Duration::from_secs_f64(budget))?;
    match outcome.ended {
        Ended::Exited(s) if s.success() => {}
        Ended::Exited(s) => return Ok(Err(outcome.failure_line(s))),
        Ended::TimedOut => return Ok(Err(format!("timed out after {budget:.0} s"))),
        Ended::NotStarted(why) => return Ok(Err(why)),
    }
    let text = fs::read_to_string(&result_path).with_context(|| format!("reading {}", result_path.display()))?;
    let result: MeasureResult =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", result_path.display()))?;
    Ok(Ok(result.models))
}

/// The fixture's input recipes in the job's JSON form.
fn recipe_json(f: &Fixture) -> Vec<serde_json::Value> {
    f.inputs
        .iter()
        .map(|i| {
            let values = match i.values {
                ValueRecipe::Uniform { low, high } => serde_json::json!({"kind": "uniform", "low": low, "high": high}),
                ValueRecipe::Normal { mean, std } => serde_json::json!({"kind": "normal", "mean": mean, "std": std}),
                ValueRecipe::Integers { low, high } => {
                    serde_json::json!({"kind": "integers", "low": low, "high": high})
                }
                ValueRecipe::Fill { value } => serde_json::json!({"kind": "fill", "value": value}),
            };
            serde_json::json!({"name": i.name, "dtype": i.dtype, "shape": i.shape, "values": values})
        })
        .collect()
}

/// Kiln's rows against the peers of their group.
fn ratios(rows: &[Row]) -> Vec<Ratios> {
    let mut groups: Vec<&str> = TOOLS.iter().map(|t| t.group).collect();
    groups.dedup();
    let mut out = Vec::new();
    for group in groups {
        let in_group = || rows.iter().filter(move |r| r.group == group);
        for kiln in in_group().filter(|r| !r.peer) {
            let peers: Vec<&Row> = in_group().filter(|r| r.peer && r.ok()).collect();
            let mut latency_vs_best_peer = BTreeMap::new();
            if kiln.ok() {
                for (threads, lat) in &kiln.latency {
                    let best = peers
                        .iter()
                        .filter_map(|p| Some((p, p.latency.get(threads)?.median_ms)))
                        .min_by(|a, b| a.1.total_cmp(&b.1));
                    if let Some((p, ms)) = best {
                        latency_vs_best_peer
                            .insert(threads.clone(), BestPeer { peer: p.tool.clone(), ratio: lat.median_ms / ms });
                    }
                }
            }
            let mut optimize_time_vs = BTreeMap::new();
            for base in OPT_TIME_BASELINES {
                let peer_time = rows.iter().find(|r| r.tool == *base).and_then(|r| r.optimize_s);
                if let (Some(k), Some(p)) = (kiln.optimize_s, peer_time) {
                    optimize_time_vs.insert(base.to_string(), k / p);
                }
            }
            out.push(Ratios {
                group: group.to_string(),
                kiln: kiln.tool.clone(),
                latency_vs_best_peer,
                optimize_time_vs,
            });
        }
    }
    out
}

/// Geometric means over fixtures of each ratio.
fn summarize(fixtures: &[FixtureReport]) -> Vec<Summary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in fixtures.iter().flat_map(|f| &f.ratios) {
        if !keys.contains(&(r.group.clone(), r.kiln.clone())) {
            keys.push((r.group.clone(), r.kiln.clone()));
        }
    }
    keys.into_iter()
        .map(|(group, kiln)| {
            let mine: Vec<&Ratios> =
                fixtures.iter().flat_map(|f| &f.ratios).filter(|r| r.group == group && r.kiln == kiln).collect();
            let mut lat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut opt: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in &mine {
                for (t, b) in &r.latency_vs_best_peer {
                    lat.entry(t.clone()).or_default().push(b.ratio);
                }
                for (p, v) in &r.optimize_time_vs {
                    opt.entry(p.clone()).or_default().push(*v);
                }
            }
            let gm =
                |m: BTreeMap<String, Vec<f64>>| m.into_iter().filter_map(|(k, v)| Some((k, geomean(&v)?))).collect();
            Summary { group, kiln, latency_vs_best_peer_geomean: gm(lat), optimize_time_vs_geomean: gm(opt) }
        })
        .collect()
}

fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not valid UTF-8", p.display()))
}

fn machine_info() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("os".into(), std::env::consts::OS.into());
    m.insert("arch".into(), std::env::consts::ARCH.into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cpus".into(), cpus.to_string());
    // The CPU model, where Linux tells it: timings mean little without it.
    if let Ok(info) = fs::read_to_string("/proc/cpuinfo")
        && let Some(name) = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
    {
        m.insert("cpu".into(), name.trim().into());
    }
    m
}

/// The 1, 5 and 15 minute load averages, where Linux tells them.
fn load_average() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn kiln_info(root: &Path, exe: &Path, opts: &Options) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("binary".into(), exe.display().to_string());
    m.insert("profile".into(), "release".into());
    m.insert("args".into(), opts.kiln_args.join(" "));
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        m.insert("commit".into(), if dirty { format!("{commit}+dirty") } else { commit });
    }
    m
}

/// Mirrors `session()` in measure.py, for the report.
fn session_options() -> BTreeMap<String, String> {
    [
        ("provider", "CPUExecutionProvider"),
        ("graph_optimization_level", "ORT_ENABLE_ALL"),
        ("execution_mode", "ORT_SEQUENTIAL"),
        ("inter_op_num_threads", "1"),
        ("intra_op_num_threads", "per column (settings.threads)"),
        ("input_seed", "1 (SplitMix64 over the manifest's recipes)"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn fmt_secs(s: f64) -> String {
    if s < 1.0 { format!("{:.0} ms", s * 1e3) } else { format!("{s:.2} s") }
}

/// `s` cut to `max` characters for the printed table (the report keeps it whole).
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() > max { format!("{}…", s.chars().take(max).collect::<String>()) } else { s.to_string() }
}

fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}x")
}

/// The printed tables.
fn render(report: &Report) -> String {
    let threads: Vec<String> = report.settings.threads.iter().map(u32::to_string).collect();
    let mut header: Vec<String> = ["fixture", "tool", "optimize", "MB"].iter().map(|s| s.to_string()).collect();
    for t in &threads {
        header.extend([format!("t{t} median ms"), format!("t{t} p90"), format!("t{t} vs orig")]);
    }
    header.extend(["max |diff|".to_string(), "status".to_string()]);
    let mut table = vec![header];
    for f in &report.fixtures {
        for (i, r) in f.rows.iter().enumerate() {
            let mut line = vec![
                if i == 0 { f.name.clone() } else { String::new() },
                r.tool.clone(),
                r.optimize_s.map_or("-".into(), fmt_secs),
                r.model_bytes.map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e6)),
            ];
            for t in &threads {
                match r.latency.get(t) {
                    Some(l) => line.extend([
                        format!("{:.3}", l.median_ms),
                        format!("{:.3}", l.p90_ms),
                        r.latency_vs_original.get(t).map_or("-".into(), |x| fmt_ratio(*x)),
                    ]),
                    None => line.extend(["-".into(), "-".into(), "-".into()]),
                }
            }
            line.push(r.max_abs_diff.map_or("-".into(), |d| if d == 0.0 { "0".into() } else { format!("{d:.1e}") }));
            line.push(clip(&r.status, 100));
            table.push(line);
        }
    }
    let mut out =
        String::from("\nONNX Runtime CPU latency (ORT_ENABLE_ALL, 1 inter-op thread; tN = N intra-op threads)\n");
    out.push_str(&format_table(&table, 2));

    let mut header = vec!["fixture".to_string(), "kiln row".to_string()];
    for t in &threads {
        header.push(format!("t{t} latency vs best peer"));
    }
    for base in OPT_TIME_BASELINES {
        header.push(format!("optimize time vs {base}"));
    }
    let mut table = vec![header];
    let mut push_ratios = |name: &str, kiln: &str, lat: &dyn Fn(&str) -> String, opt: &dyn Fn(&str) -> String| {
        let mut line = vec![name.to_string(), kiln.to_string()];
        line.extend(threads.iter().map(|t| lat(t)));
        line.extend(OPT_TIME_BASELINES.iter().map(|b| opt(b)));
        table.push(line);
    };
    for f in &report.fixtures {
        for r in &f.ratios {
            push_ratios(
                &f.name,
                &r.kiln,
                &|t| {
                    r.latency_vs_best_peer.get(t).map_or("-".into(), |b| format!("{} ({})", fmt_ratio(b.ratio), b.peer))
                },
                &|b| r.optimize_time_vs.get(b).map_or("-".into(), |x| fmt_ratio(*x)),
            );
        }
    }
    for s in &report.summary {
        push_ratios(
            "geomean",
            &s.kiln,
            &|t| s.latency_vs_best_peer_geomean.get(t).map_or("-".into(), |x| fmt_ratio(*x)),
            &|b| s.optimize_time_vs_geomean.get(b).map_or("-".into(), |x| fmt_ratio(*x)),
        );
    }
    out.push_str("\nKiln relative to its peers (below 1x: Kiln is faster)\n");
    out.push_str(&format_table(&table, 2));
    out
}

/// Left-aligns the first `left` columns and right-aligns the rest; the last column is not padded.
fn format_table(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c + 1 == r.len() {
                    s.clone()
                } else if c < left {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &str, peer: bool, status: &str, opt: Option<f64>, t1: Option<f64>) -> Row {
        Row {
            tool: tool.into(),
            group: if tool == "original" { String::new() } else { "fp32".into() },
            peer,
            status: status.into(),
            optimize_s: opt,
            optimize_runs_s: opt.into_iter().collect(),
            model: None,
            model_bytes: None,
            max_abs_diff: None,
            latency: t1
                .map(|ms| ("1".to_string(), Latency { median_ms: ms, p90_ms: ms, min_ms: ms, mean_ms: ms, runs: 50 }))
                .into_iter()
                .collect(),
            latency_vs_original: BTreeMap::new(),
        }
    }

    #[test]
    fn options_parse_and_reject() {
        let o = parse_options(&[]).unwrap().unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.kiln_args, ["{model}", "--opt", "O3", "--target", "cpu", "-o", "{out}"]);
        let o = parse_options(&["--fixtures", "cnn,transformer", "--threads", "2", "--repeats", "5"]).unwrap().unwrap();
        assert_eq!(o.fixtures, ["cnn", "transformer"]);
        assert_eq!(o.threads, [2]);
        assert_eq!(o.repeats, 5);
        let q = parse_options(&["--quick"]).unwrap().unwrap();
        assert_eq!((q.repeats, q.threads.as_slice()), (1, [1u32].as_slice()));
        assert!(parse_options(&["--help"]).unwrap().is_none());
        assert!(parse_options(&["--threads", "0"]).is_err());
        assert!(parse_options(&["--repeats"]).is_err());
        assert!(parse_options(&["--bogus"]).is_err());
        assert!(parse_options(&["--fixtures", ""]).is_err());
    }

    #[test]
    fn tools_build_their_command_lines() {
        let kiln_template = split_args(KILN_ARGS);
        let inv = Invocation { fixture: "transformer", model: "/m.onnx", out: "/o", kiln_args: &kiln_template };
        let by_id = |id: &str| TOOLS.iter().find(|t| t.id == id).unwrap();
        assert_eq!((by_id("kiln").args)(&inv), ["/m.onnx", "--opt", "O3", "--target", "cpu", "-o", "/o"]);
        assert_eq!((by_id("onnxsim").args)(&inv), ["/m.onnx", "/o/model.onnx"]);
        let ort = (by_id("ort-transformers").args)(&inv);
        assert_eq!(
            &ort[..6],
            ["-m", "onnxruntime.transformers.optimizer", "--input", "/m.onnx", "--output", "/o/model.onnx"]
        );
        assert!(ort.windows(2).any(|w| w == ["--model_type", "bert"]));
        assert!(ort.windows(2).any(|w| w == ["--opt_level", "0"]));
        let cnn = Invocation { fixture: "cnn", ..inv };
        assert!((by_id("ort-transformers").args)(&cnn).windows(2).any(|w| w == ["--model_type", "bert"]));
        // Every group has a Kiln row and at least one peer, and ids are unique.
        for t in TOOLS {
            assert!(TOOLS.iter().any(|k| k.group == t.group && !k.peer), "{}", t.id);
            assert!(TOOLS.iter().any(|p| p.group == t.group && p.peer), "{}", t.id);
            assert_eq!(TOOLS.iter().filter(|o| o.id == t.id).count(), 1);
        }
        for base in OPT_TIME_BASELINES {
            assert!(TOOLS.iter().any(|t| t.id == *base && t.peer));
        }
    }

    #[test]
    fn error_line_picks_the_reason() {
        let py = "Simplifying...\nTraceback (most recent call last):\n  File \"x\", line 1\n    foo()\n\
                  RuntimeError: Nodes in a graph must be topologically sorted\nname: If_6\n";
        assert_eq!(error_line(py).unwrap(), "RuntimeError: Nodes in a graph must be topologically sorted");
        assert_eq!(error_line("\n  error: unknown option --opt\nusage: ...\n").unwrap(), "error: unknown option --opt");
        assert_eq!(error_line(" \n"), None);
        assert_eq!(error_line(&"x".repeat(300)).unwrap().chars().count(), 201);
    }

    #[test]
    fn ratios_compare_kiln_with_the_best_working_peer() {
        let rows = vec![
            row("original", false, "ok", None, Some(10.0)),
            row("kiln", false, "ok", Some(0.5), Some(8.0)),
            row("ort-transformers", true, "ok", Some(2.0), Some(9.0)),
            row("onnxsim", true, "ok", Some(1.0), Some(10.0)),
            // Faster, but broken: not a valid comparison.
            row("onnxslim", true, "mismatch: max |diff| 1e0 > 1e-3", Some(1.0), Some(1.0)),
        ];
        let r = ratios(&rows);
        assert_eq!(r.len(), 1);
        let best = &r[0].latency_vs_best_peer["1"];
        assert_eq!(best.peer, "ort-transformers");
        assert!((best.ratio - 8.0 / 9.0).abs() < 1e-12);
        assert_eq!(r[0].optimize_time_vs["onnxsim"], 0.5);
        assert_eq!(r[0].optimize_time_vs["ort-transformers"], 0.25);

        // A failed Kiln row has no latency ratio, and a failed peer no optimize-time ratio.
        let failed = vec![row("kiln", false, "failed: x", None, None), row("onnxsim", true, "failed: y", None, None)];
        let r = ratios(&failed);
        assert!(r[0].latency_vs_best_peer.is_empty() && r[0].optimize_time_vs.is_empty());
    }

    #[test]
    fn summary_takes_geometric_means() {
        assert!((geomean(&[0.5, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(geomean(&[]), None);
        assert_eq!(geomean(&[1.0, 0.0]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn tables_align() {
        let t = vec![vec!["a".to_string(), "12".into(), "x".into()], vec!["bbb".into(), "3".into(), "yy".into()]];
        assert_eq!(format_table(&t, 1), "a    12  x\nbbb   3  yy\n");
    }

    #[test]
    fn recipes_cover_every_bench_fixture() {
        let m = crate::load_manifest().unwrap();
        for name in FIXTURES {
            let f = m.fixture(name).unwrap();
            let json = recipe_json(f);
            assert_eq!(json.len(), f.inputs.len());
            assert!(json.iter().all(|j| j["values"]["kind"].is_string()));
        }
    }

    #[test]
    fn timed_run_records_failures_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo out; echo 'error: no such model' >&2; exit 3"]);
        let o = timed_run(ok, dir.path(), Duration::from_secs(30)).unwrap();
        let Ended::Exited(status) = o.ended else { panic!("{:?}", o.ended) };
        assert!(!status.success());
        assert_eq!(o.failure_line(status), "error: no such model");
        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        let o = timed_run(slow, dir.path(), Duration::from_millis(200)).unwrap();
        assert!(matches!(o.ended, Ended::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(10));
        let missing = timed_run(Command::new("/nonexistent/tool"), dir.path(), Duration::from_secs(1)).unwrap();
        assert!(matches!(&missing.ended, Ended::NotStarted(why) if why.contains("could not start")));
    }
}
