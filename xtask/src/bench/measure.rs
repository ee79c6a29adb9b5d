//! ONNX Runtime latency and output checks, by `xtask/bench/measure.py` in the venv.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::process::{Ended, timed_run};
use super::{Env, Options};
use crate::manifest::{Fixture, ValueRecipe};

/// The Python driver, relative to the repository root.
pub(super) const MEASURE_PY: &str = "xtask/bench/measure.py";

/// Seed of the recipe inputs; 1 is what Kiln's fixture tests use.
const INPUT_SEED: u64 = 1;

/// Seeds of the evaluation samples each model's accuracy is measured on. Tools that calibrate
/// take their samples from [`CALIBRATION_SEEDS`], which never overlap these.
pub(crate) const EVAL_SEEDS: std::ops::Range<u64> = 1000..1016;

/// Seeds of the calibration samples a tool may be given.
pub(crate) const CALIBRATION_SEEDS: std::ops::Range<u64> = 100..132;

/// ONNX Runtime timings of one model at one thread count, as measure.py reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Latency {
    pub(super) median_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) min_ms: f64,
    pub(super) mean_ms: f64,
    pub(super) runs: usize,
}

/// How closely one output of a model agrees with the original's over the evaluation samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Accuracy {
    pub(super) samples: usize,
    /// Cosine similarity of the flattened output, mean and worst over samples.
    pub(super) cosine_mean: Option<f64>,
    pub(super) cosine_min: Option<f64>,
    /// Share of positions whose argmax over the last axis matches (outputs with a last axis
    /// longer than 1: class scores, token logits).
    pub(super) top1: Option<f64>,
    pub(super) max_abs: Option<f64>,
    pub(super) mean_abs: Option<f64>,
}

/// measure.py's verdict on one model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(super) struct Measured {
    pub(super) error: Option<String>,
    pub(super) max_abs_diff: Option<f64>,
    pub(super) mismatch: Option<String>,
    #[serde(default)]
    pub(super) accuracy: BTreeMap<String, Accuracy>,
    #[serde(default)]
    pub(super) latency: BTreeMap<String, Latency>,
}

#[derive(Debug, Deserialize)]
struct MeasureResult {
    models: BTreeMap<String, Measured>,
}

/// Times `models` (the original first) in measure.py. If the Python process itself dies (a
/// model that crashes ONNX Runtime), each model is measured again in a process of its own with
/// the original, so one crash costs only its own row.
pub(super) fn measure(
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
        "eval_seeds": EVAL_SEEDS.collect::<Vec<_>>(),
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

/// Writes the fixture's recipe inputs for `seeds` as a folder of `.npz` files (one sample each,
/// keys = input names): the calibration data every tool that needs data is given (`{data}`).
pub(crate) fn write_samples(f: &Fixture, seeds: std::ops::Range<u64>, dir: &Path, env: &Env) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let job = serde_json::json!({"inputs": recipe_json(f), "seeds": seeds.collect::<Vec<_>>()});
    let job_path = dir.join("job.json");
    fs::write(&job_path, serde_json::to_string_pretty(&job)?)
        .with_context(|| format!("writing {}", job_path.display()))?;
    let mut cmd = Command::new(env.python);
    cmd.arg(env.root.join(MEASURE_PY)).arg("samples").arg(&job_path).arg(dir).current_dir(dir);
    let logs = dir.parent().unwrap_or(dir);
    let outcome = timed_run(cmd, logs, Duration::from_secs(300))?;
    match outcome.ended {
        Ended::Exited(s) if s.success() => {
            fs::remove_file(&job_path).with_context(|| format!("removing {}", job_path.display()))?;
            Ok(())
        }
        Ended::Exited(s) => anyhow::bail!("writing calibration samples: {}", outcome.failure_line(s)),
        Ended::TimedOut => anyhow::bail!("writing calibration samples timed out"),
        Ended::NotStarted(why) => anyhow::bail!("writing calibration samples: {why}"),
    }
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

/// Mirrors `session()` in measure.py, for the report.
pub(super) fn session_options() -> BTreeMap<String, String> {
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::FIXTURES;

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
}
