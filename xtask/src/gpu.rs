//! `cargo xtask gpu`: the cuda and tensorrt artifacts run on a GPU through ONNX Runtime's CUDA
//! and TensorRT execution providers, with latency against the FP32 original on the same
//! provider and accuracy against the original on the CPU provider.
//!
//! Two steps, because a GPU machine may have neither cargo nor internet:
//! 1. `cargo xtask gpu prepare [--fixtures a,b] [--out DIR]` (any machine): builds `optimize`
//!    in release, writes calibration and evaluation samples for each fixture, runs `optimize`
//!    for each fixture × [`CONFIGS`] entry (validation on the CPU provider included, so a broken
//!    artifact shows up here already), and writes `DIR/cases.json`. The folder is
//!    self-contained: the original models are copied in, paths in `cases.json` are relative.
//! 2. `cargo xtask gpu run DIR [--python PY]` on the GPU machine, or directly
//!    `python3 xtask/gpu/run_eps.py DIR` with a Python that has `onnxruntime-gpu` (the pins are
//!    in `xtask/gpu/requirements.txt`; without `--python`, `run` makes `$KILN_CACHE_DIR/gpu-venv`
//!    from them). Each session is created with only the requested provider first in the list
//!    and checked to really use it: a silent CPU fallback is a failure, not a number. Writes
//!    `DIR/gpu-report.json` and `DIR/gpu-report.md`. Each artifact is also profiled once: the
//!    nodes ONNX Runtime left on the CPU provider (a kernel the GPU lacks, with a copy on each
//!    side) are listed per case.
//! 3. With `prepare --conformance`, every ONNX conformance case is also converted to FP16 for
//!    the cuda target into `DIR/conformance/<case>/` (`fp32.onnx`, `fp16.onnx`, its first input
//!    set), and `run` probes where the CUDA provider places each node of both forms
//!    (`xtask/gpu/probe_placement.py`): ops that run on the GPU in FP32 but leave it, or fail,
//!    in FP16 are the gaps `quantize/src/half/ort_cuda_missing_f16.txt` records.
//!
//! Without an NVIDIA GPU, `run` stops before installing anything and says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

// The bench's sample seeds, so both report on the same inputs.
use crate::bench::{CALIBRATION_SEEDS, EVAL_SEEDS, Env, build_kiln, write_samples};
use crate::install::Installer;

/// The runner script and its pins, relative to the repository root.
const RUN_EPS_PY: &str = "xtask/gpu/run_eps.py";
const PROBE_PY: &str = "xtask/gpu/probe_placement.py";
const REQUIREMENTS: &str = "xtask/gpu/requirements.txt";

/// Fixtures prepared by default: every kind of model whose folder stays small enough to carry
/// to a GPU machine.
const FIXTURES: &[&str] = &["cnn", "cnn_lcnet", "transformer", "transformer_ocr"];

/// One artifact configuration: its name, the provider that runs it and `optimize`'s arguments
/// (`{data}` and `{eval}` substituted with the sample folders).
struct GpuConfig {
    name: &'static str,
    provider: &'static str,
    args: &'static [&'static str],
}

const CONFIGS: &[GpuConfig] = &[
    GpuConfig { name: "cuda-fp16", provider: "cuda", args: &["--preset", "cuda-fp16", "--eval-data", "{eval}"] },
    GpuConfig {
        name: "cuda-int8",
        provider: "cuda",
        args: &["--target", "cuda", "--precision", "int8", "--data", "{data}", "--eval-data", "{eval}"],
    },
    GpuConfig {
        name: "cuda-int4",
        provider: "cuda",
        args: &[
            "--target",
            "cuda",
            "--precision",
            "int4",
            "--block",
            "32",
            "--data",
            "{data}",
            "--eval-data",
            "{eval}",
        ],
    },
    GpuConfig {
        name: "tensorrt-int8",
        provider: "tensorrt",
        args: &["--preset", "tensorrt-int8", "--data", "{data}", "--eval-data", "{eval}"],
    },
    GpuConfig {
        name: "tensorrt-fp16",
        provider: "tensorrt",
        args: &["--target", "tensorrt", "--opt", "o2", "--precision", "fp16", "--eval-data", "{eval}"],
    },
];

const USAGE: &str = "\
usage: cargo xtask gpu prepare [--fixtures a,b] [--out DIR] [--conformance]
       cargo xtask gpu run DIR [--python PY] [--runs N]

prepare  builds the cuda and tensorrt artifacts of the fixtures (default: cnn,cnn_lcnet,
         transformer,transformer_ocr) with evaluation samples into DIR (default:
         <target>/gpu), on any machine; --conformance adds every ONNX conformance case
         in FP32 and in Kiln's FP16 for cuda, for the placement probe
run      runs them on this machine's GPU through ONNX Runtime's CUDA and TensorRT providers
         (xtask/gpu/run_eps.py): latency against the FP32 original on the same provider,
         accuracy against the original on the CPU provider; writes DIR/gpu-report.{json,md};
         with DIR/conformance, also DIR/placements.jsonl (xtask/gpu/probe_placement.py)
";

/// One prepared case, as `run_eps.py` reads it from `cases.json`.
#[derive(Debug, Serialize)]
struct Case {
    fixture: String,
    config: &'static str,
    provider: &'static str,
    /// Relative to the prepared folder.
    original: String,
    artifact: Option<String>,
    eval_dir: String,
    /// Why `optimize` produced no artifact, when it did not.
    error: Option<String>,
}

pub fn run(args: &[&str]) -> Result<()> {
    match args {
        ["prepare", rest @ ..] => prepare(rest),
        ["run", dir, rest @ ..] => run_cases(Path::new(dir), rest),
        ["help" | "-h" | "--help"] | [] => {
            print!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown arguments to `cargo xtask gpu`\n{USAGE}"),
    }
}

fn prepare(args: &[&str]) -> Result<()> {
    let mut fixtures: Vec<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    let mut out: Option<PathBuf> = None;
    let mut conformance = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--fixtures" => {
                let v = it.next().context("--fixtures needs a value")?;
                fixtures = v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
            }
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a value")?)),
            "--conformance" => conformance = true,
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let root = crate::repo_root();
    let m = crate::load_manifest()?;
    let python = crate::bench::venv::ensure_venv(&root)?;
    let kiln = build_kiln()?;
    let ort_lib = crate::ort_for_children()?;
    let out = match out {
        Some(o) => o,
        None => kiln.parent().and_then(Path::parent).context("unexpected location of the optimize binary")?.join("gpu"),
    };
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let inst = Installer::new(crate::cache_dir());
    let env = Env { kiln: &kiln, python: &python, ort_lib: &ort_lib, root: &root };
    let mut cases = Vec::new();
    for name in &fixtures {
        let f = m.fixture(name).with_context(|| format!("no fixture named {name:?} in the manifest"))?;
        let model = inst.ensure_fixture(&m, f)?;
        let dir = out.join(name);
        let (data, eval) = (dir.join("data"), dir.join("eval"));
        write_samples(f, CALIBRATION_SEEDS, &data, &env)?;
        write_samples(f, EVAL_SEEDS, &eval, &env)?;
        let (data_s, eval_s) = (utf8(&data)?, utf8(&eval)?);
        let original = dir.join("original.onnx");
        fs::copy(&model, &original).with_context(|| format!("copying {}", model.display()))?;
        for config in CONFIGS {
            let artifact_dir = dir.join(config.name);
            let args: Vec<String> =
                config.args.iter().map(|a| a.replace("{data}", data_s).replace("{eval}", eval_s)).collect();
            eprintln!("== {name} {}: optimize {}", config.name, args.join(" "));
            let output = Command::new(&kiln)
                .arg(&original)
                .args(&args)
                .arg("-o")
                .arg(&artifact_dir)
                .env("KILN_ORT_LIB", &ort_lib)
                .env("CI", "1")
                .output()
                .with_context(|| format!("starting {}", kiln.display()))?;
            let produced = artifact_dir.join("model.onnx");
            // Exit 1 is a missed accuracy tolerance: the artifact is written and worth running.
            let error = match output.status.code() {
                Some(0 | 1) if produced.is_file() => None,
                _ => Some(last_line(&output.stderr)),
            };
            if let Some(e) = &error {
                eprintln!("   no artifact: {e}");
            }
            cases.push(Case {
                fixture: name.clone(),
                config: config.name,
                provider: config.provider,
                original: format!("{name}/original.onnx"),
                artifact: error.is_none().then(|| format!("{name}/{}/model.onnx", config.name)),
                eval_dir: format!("{name}/eval"),
                error,
            });
        }
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    if conformance {
        let suite = inst.ensure_conformance(&m)?;
        prepare_conformance(&kiln, &ort_lib, &suite, &out.join("conformance"))?;
    }
    let path = out.join("cases.json");
    fs::write(&path, serde_json::to_string_pretty(&cases)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "xtask: {} cases in {}; on a GPU machine: cargo xtask gpu run {}",
        cases.len(),
        path.display(),
        out.display()
    );
    Ok(())
}

/// Every conformance case in `src` that `optimize` converts to FP16 for cuda: `DIR/<case>/`
/// with `fp32.onnx` (as shipped), `fp16.onnx` and the first `test_data_set_*` folder.
fn prepare_conformance(kiln: &Path, ort_lib: &std::ffi::OsStr, src: &Path, dir: &Path) -> Result<()> {
    let mut names: Vec<PathBuf> = fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    names.sort();
    let (mut converted, mut skipped) = (0, 0);
    for case in &names {
        let name = case.file_name().context("case folder without a name")?;
        let dest = dir.join(name);
        fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let staged = dest.join("kiln");
        let output = Command::new(kiln)
            .arg(case.join("model.onnx"))
            .args(["--target", "cuda", "--precision", "fp16", "--opt", "o1", "--skip-validation", "--force", "-q"])
            .arg("-o")
            .arg(&staged)
            .env("KILN_ORT_LIB", ort_lib)
            .output()
            .with_context(|| format!("starting {}", kiln.display()))?;
        let data = case.join("test_data_set_0");
        if !output.status.success() || !data.is_dir() {
            // No float tensor to convert, or a case ONNX Runtime cannot load as shipped.
            skipped += 1;
            fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
            continue;
        }
        fs::rename(staged.join("model.onnx"), dest.join("fp16.onnx"))?;
        fs::remove_dir_all(&staged)?;
        fs::copy(case.join("model.onnx"), dest.join("fp32.onnx"))?;
        let inputs = dest.join("test_data_set_0");
        fs::create_dir_all(&inputs)?;
        for f in fs::read_dir(&data)?.filter_map(|e| e.ok().map(|e| e.path())) {
            if f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("input_")) {
                fs::copy(&f, inputs.join(f.file_name().context("input file without a name")?))?;
            }
        }
        converted += 1;
    }
    eprintln!("xtask: {converted} conformance cases in FP32 and FP16 in {} ({skipped} skipped)", dir.display());
    Ok(())
}

fn run_cases(dir: &Path, args: &[&str]) -> Result<()> {
    let mut python: Option<PathBuf> = None;
    let mut runs = "200".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--python" => python = Some(PathBuf::from(it.next().context("--python needs a value")?)),
            "--runs" => runs = it.next().context("--runs needs a value")?.to_string(),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if !dir.join("cases.json").is_file() {
        bail!("{} holds no cases.json: run `cargo xtask gpu prepare` first", dir.display());
    }
    // Checked before a multi-gigabyte install: without a GPU there is nothing to measure.
    if Command::new("nvidia-smi").arg("-L").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("no NVIDIA GPU here (`nvidia-smi -L` failed or is missing): run this on a GPU machine");
    }
    let root = crate::repo_root();
    let python = match python {
        Some(p) => p,
        None => crate::bench::venv::ensure_venv_with(&root, "gpu-venv", REQUIREMENTS)?,
    };
    let status = Command::new(&python)
        .arg(root.join(RUN_EPS_PY))
        .arg(dir)
        .args(["--runs", &runs])
        .status()
        .with_context(|| format!("starting {}", python.display()))?;
    if !status.success() {
        bail!("{RUN_EPS_PY} failed ({status}); see {}", dir.join("gpu-report.md").display());
    }
    let conformance = dir.join("conformance");
    if conformance.is_dir() {
        let status = Command::new(&python)
            .arg(root.join(PROBE_PY))
            .arg(&conformance)
            .arg(dir.join("placements.jsonl"))
            .status()
            .with_context(|| format!("starting {}", python.display()))?;
        if !status.success() {
            bail!("{PROBE_PY} failed ({status})");
        }
    }
    Ok(())
}

fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no error output").trim().to_string()
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("path is not UTF-8: {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_names_a_known_provider_and_valid_placeholders() {
        for c in CONFIGS {
            assert!(matches!(c.provider, "cuda" | "tensorrt"), "{}", c.name);
            assert!(c.name.starts_with(c.provider), "{}", c.name);
            for a in c.args {
                let stripped = a.replace("{data}", "").replace("{eval}", "");
                assert!(!stripped.contains('{'), "{}: unknown placeholder in {a}", c.name);
            }
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert!(run(&["prepare", "--bogus"]).is_err());
        assert!(run(&["run", "/nonexistent-kiln-gpu-dir"]).is_err());
        assert!(run(&["frobnicate"]).is_err());
    }
}
