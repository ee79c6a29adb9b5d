//! `cargo xtask bench`: Kiln against its peers, on the pinned real models, in one run.
//!
//! Run it with `cargo xtask bench` (`--help` lists the options; `--quick` is a smoke test,
//! not a measurement). It needs Python 3 with `venv` and access to PyPI the first time. The
//! fp32 group alone took about 3 to 4 minutes on a 2-core machine; the int8 and fp16 groups
//! add about as much again per fixture at `--repeats 1` (two fixtures, all groups, `--repeats 1`:
//! about 3 minutes); `--groups` runs some only. The first run adds the venv install.
//!
//! What it does, in order:
//! 1. Makes a Python virtual environment at `$KILN_CACHE_DIR/bench-venv` with the peers pinned
//!    in `xtask/bench/requirements.txt` (reused while that file is unchanged).
//! 2. Builds `optimize` in release: Kiln's times come from the binary a user would run.
//! 3. For every fixture and every tool in [`tools::GROUPS`], optimizes the model [`Options::repeats`]
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
//! 5. Writes `<cargo target dir>/bench/report.json` and the same tables as Markdown in
//!    `report.md` (`target/bench/report.json` unless
//!    `CARGO_TARGET_DIR` moves it) and prints a table: per fixture and tool, optimize time,
//!    latency median/p90, latency relative to the original and max |diff|; then Kiln's latency
//!    relative to the fastest peer, and Kiln's optimize time relative to onnxsim's and ORT's
//!    transformer optimizer's.
//!
//! Rows are compared within a group ([`tools::GROUPS`]): `fp32` (graph optimizers, flagged
//! above a max |diff| of 1e-3), `int8` (Kiln static and dynamic against ONNX Runtime's
//! `quantize_static`/`quantize_dynamic`, `tools_int8.rs`) and `fp16` (Kiln against
//! onnxconverter-common's and ONNX Runtime's float16 converters, `tools_half.rs`); the lowered
//! precisions are flagged only when an output's cosine falls below a floor, and otherwise
//! compared by their accuracy columns. Every Kiln row gets, against each peer of its group,
//! the ratios of optimize time, peak RSS and latency beside both rows' worst-output accuracy
//! (a third table, `ratios[].vs_peers` and `summary[].vs_peers_geomean` in the report).
//!
//! Numbers on a shared or busy machine are noisy: the round-robin timing makes the comparison
//! between models fair, not the absolute times exact. Nothing here is asserted by a test.

mod measure;
mod process;
mod report;
mod tools;
mod tools_half;
mod tools_int4;
mod tools_int8;
pub(crate) mod venv;

use std::ffi::OsString;
use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::install::Installer;
use crate::manifest::Fixture;
pub(crate) use measure::CALIBRATION_SEEDS;
pub(crate) use measure::{EVAL_SEEDS, write_samples};
use measure::{measure, session_options};
use process::{Ended, timed_run};
use report::{
    FixtureReport, Report, Row, fmt_secs, kiln_info, load_average, machine_info, median, ratios, render,
    render_markdown, summarize,
};
use tools::{Invocation, KILN_ARGS, Program, Tolerance, Tool, all_tools};
use venv::{ensure_venv, python_versions, venv_bin};

/// Fixtures measured by default, in report order.
const FIXTURES: &[&str] = &["cnn", "cnn_lcnet", "transformer", "transformer_ocr", "recurrent_op15"];

const USAGE: &str = "\
usage: cargo xtask bench [options]

Optimizes the pinned fixtures with Kiln (release build) and its peers: at FP32 ONNX Runtime's
transformer optimizer, onnxsim, onnxslim; at INT8 ONNX Runtime's quantize_static and
quantize_dynamic; at FP16 onnxconverter-common and ONNX Runtime's float16 converter. Times
every model in ONNX Runtime's CPU provider, checks outputs against the original, and writes
<target>/bench/report.json.

options:
  --fixtures a,b,..   fixtures to run (default: cnn,cnn_lcnet,transformer,transformer_ocr,recurrent_op15)
  --threads 1,2       ONNX Runtime intra-op thread counts to time (default: 1,2)
  --repeats N         optimize runs per tool and fixture; the median is reported (default: 3)
  --min-runs N        timed runs per model at least (default: 50)
  --min-seconds S     timed seconds per model at least (default: 2)
  --timeout S         seconds before one optimize run is stopped (default: 600)
  --groups a,b,..     row groups to run: fp32, int8, fp16 (default: all)
  --kiln-args ARGS    the fp32 Kiln row's arguments, {model}, {out} and {data} substituted
                      (default: \"{model} --opt O3 --target cpu -o {out}\")
  --quick             a smoke test: 1 repeat, 1 thread, 10 runs, 0.2 s
";

/// Settings of one bench run.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Options {
    fixtures: Vec<String>,
    /// Row groups to run ([`tools::GROUPS`]); empty: all.
    groups: Vec<String>,
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
            groups: Vec::new(),
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
            "--groups" => {
                o.groups = value()?.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                if let Some(g) = o.groups.iter().find(|g| !all_tools().any(|t| t.group == g.as_str())) {
                    bail!("no row group named {g:?}");
                }
                if o.groups.is_empty() {
                    bail!("--groups needs at least one entry");
                }
            }
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
    let md = bench_dir.join("report.md");
    fs::write(&md, render_markdown(&report)).with_context(|| format!("writing {}", md.display()))?;
    println!("{}", render(&report));
    if let Some(load) = report.machine.get("load_average_after") {
        eprintln!("xtask: load average at the end: {load} on {} CPUs", report.machine["cpus"]);
    }
    eprintln!("xtask: report written to {} ({:.0}s in all)", path.display(), report.total_seconds);
    Ok(())
}

/// What the per-fixture steps need from the setup.
pub(crate) struct Env<'a> {
    pub(crate) kiln: &'a Path,
    pub(crate) python: &'a Path,
    pub(crate) ort_lib: &'a OsString,
    pub(crate) root: &'a Path,
}

/// `cargo build --release --bin optimize`; returns the binary's path as cargo reports it.
pub(crate) fn build_kiln() -> Result<PathBuf> {
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
    let data_dir = work.join("calibration-data");
    write_samples(f, CALIBRATION_SEEDS, &data_dir, env)?;
    let data = utf8(&data_dir)?;
    let mut rows = vec![Row {
        model: Some(model.to_path_buf()),
        model_bytes: fs::metadata(model).ok().map(|m| m.len()),
        ..Row::new("original", "", false)
    }];
    for tool in all_tools().filter(|t| opts.groups.is_empty() || opts.groups.iter().any(|g| g == t.group)) {
        rows.push(optimize_with(tool, f, model_str, data, &work.join(tool.id), opts, env)?);
    }

    // Latency and outputs, for every model that was produced.
    let to_measure: Vec<(String, PathBuf)> =
        rows.iter().filter_map(|r| Some((r.tool.clone(), r.model.clone()?))).collect();
    let measured = measure(f, &to_measure, work, opts, env)?;
    for row in &mut rows {
        let Some(m) = measured.get(&row.tool) else { continue };
        row.latency = m.latency.clone();
        row.max_abs_diff = m.max_abs_diff;
        row.accuracy = m.accuracy.clone();
        let tolerance = all_tools().find(|t| t.id == row.tool).map_or(Tolerance::MaxAbsDiff(0.0), |t| t.tolerance);
        if let Some(e) = &m.error {
            row.status = format!("ORT failed: {e}");
        } else if let Some(why) = &m.mismatch {
            row.status = format!("mismatch: {why}");
        } else if let Some(why) = out_of_tolerance(m, tolerance) {
            row.status = format!("mismatch: {why}");
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

/// Why a measured model is too far from the original under `tolerance`, if it is.
fn out_of_tolerance(m: &measure::Measured, tolerance: Tolerance) -> Option<String> {
    match tolerance {
        Tolerance::MaxAbsDiff(limit) => {
            m.max_abs_diff.filter(|&d| d > limit).map(|d| format!("max |diff| {d:.3e} > {limit:.0e}"))
        }
        Tolerance::CosineMin(floor) => m
            .accuracy
            .iter()
            .filter_map(|(name, a)| Some((name, a.cosine_min?)))
            .filter(|&(_, c)| c < floor)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, c)| format!("output {name:?} cosine_min {c:.4} < {floor}")),
    }
}

/// Runs one tool `opts.repeats` times on the fixture; the last run's model is measured.
fn optimize_with(
    tool: &Tool,
    f: &Fixture,
    model: &str,
    data: &str,
    dir: &Path,
    opts: &Options,
    env: &Env,
) -> Result<Row> {
    let mut row = Row::new(tool.id, tool.group, tool.peer);
    for i in 0..opts.repeats {
        let run_dir = dir.join(format!("run{i}"));
        let out = run_dir.join("out");
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let inv = Invocation { fixture: &f.name, model, out: utf8(&out)?, data, kiln_args: &opts.kiln_args };
        let args = (tool.args)(&inv);
        let (program, extra_env): (PathBuf, Vec<(&str, &OsString)>) = match tool.program {
            Program::Kiln => (env.kiln.to_path_buf(), vec![("KILN_ORT_LIB", env.ort_lib)]),
            Program::Python => (env.python.to_path_buf(), vec![]),
            Program::VenvScript(name) => {
                (venv_bin(env.python.parent().and_then(Path::parent).unwrap_or(Path::new(".")), name), vec![])
            }
            Program::Script(_) => (env.python.to_path_buf(), vec![]),
        };
        let args = match tool.program {
            Program::Script(script) => std::iter::once(utf8(&env.root.join(script))?.to_string()).chain(args).collect(),
            _ => args,
        };
        if i == 0 {
            eprintln!("   {:<25} {} {}", tool.id, program.display(), args.join(" "));
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
            eprintln!("   {:<25} {}", tool.id, row.status);
            return Ok(row);
        }
        row.optimize_runs_s.push(outcome.seconds);
        if let Some(kib) = outcome.peak_rss_kib {
            let mib = kib as f64 / 1024.0;
            row.optimize_peak_rss_mib = Some(row.optimize_peak_rss_mib.map_or(mib, |m: f64| m.max(mib)));
        }
        row.model_bytes = Some(artifact_bytes(&out));
        row.model = Some(produced);
    }
    row.optimize_s = median(&row.optimize_runs_s);
    eprintln!("   {:<25} optimized in {}", tool.id, row.optimize_s.map_or("-".into(), fmt_secs));
    Ok(row)
}

/// Bytes of every file in an output folder (the model and any external weights).
fn artifact_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// `s` cut to `max` characters for the printed table (the report keeps it whole).
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() > max { format!("{}…", s.chars().take(max).collect::<String>()) } else { s.to_string() }
}
#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_options(&["--groups", "int8,fp16"]).unwrap().unwrap().groups, ["int8", "fp16"]);
        assert!(parse_options(&["--groups", "int3"]).is_err());
        assert!(parse_options(&["--groups", ","]).is_err());
    }

    #[test]
    fn tolerances_judge_their_own_measure() {
        use measure::{Accuracy, Measured};
        let acc = |c| Accuracy {
            samples: 16,
            cosine_mean: Some(c),
            cosine_min: Some(c),
            top1: None,
            max_abs: None,
            mean_abs: None,
        };
        let m = Measured {
            max_abs_diff: Some(0.05),
            accuracy: [("a".to_string(), acc(0.999)), ("b".to_string(), acc(0.95))].into_iter().collect(),
            ..Measured::default()
        };
        assert_eq!(out_of_tolerance(&m, Tolerance::MaxAbsDiff(1e-3)).unwrap(), "max |diff| 5.000e-2 > 1e-3");
        assert_eq!(out_of_tolerance(&m, Tolerance::MaxAbsDiff(0.1)), None);
        assert_eq!(out_of_tolerance(&m, Tolerance::CosineMin(0.99)).unwrap(), "output \"b\" cosine_min 0.9500 < 0.99");
        assert_eq!(out_of_tolerance(&m, Tolerance::CosineMin(0.9)), None);
    }
}
