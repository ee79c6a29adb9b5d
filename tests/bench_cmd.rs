//! `optimize bench`: the table and JSON figures for each batch × thread count, synthetic or
//! given inputs, and clear errors for a batch the model cannot take.

mod common;

use std::ffi::OsStr;

use common::optimize_env;
use serde_json::Value as Json;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn bench_reports_percentiles_throughput_memory_and_cold_start_per_configuration() {
    let model = kiln_fixtures::model("cnn").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let args = [
        os("bench"),
        model.as_os_str(),
        os("--batch"),
        os("1,3"),
        os("--threads"),
        os("1,2"),
        os("--warmup"),
        os("1"),
        os("--runs"),
        os("5"),
        os("--shape"),
        os("x=1,3,48,192"),
        os("--json"),
        json.as_os_str(),
    ];
    let o = optimize_env(&args, &[("CI", None)]);
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("p50 ms") && o.stdout.contains("samples/s"), "{}", o.stdout);
    let report: Json = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let configs: Vec<(u64, u64)> =
        results.iter().map(|r| (r["batch"].as_u64().unwrap(), r["threads"].as_u64().unwrap())).collect();
    assert_eq!(configs, [(1, 1), (1, 2), (3, 1), (3, 2)]);
    for r in results {
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        assert_eq!(r["runs"], 5);
        assert!(f("min_ms") <= f("p50_ms") && f("p50_ms") <= f("p95_ms") && f("p95_ms") <= f("p99_ms"), "{r}");
        assert!(f("cold_start_ms") >= f("session_ms") && f("session_ms") > 0.0, "{r}");
        assert!(f("throughput_per_s") > 0.0, "{r}");
        assert!(r["peak_rss_delta_kib"].is_u64(), "{r}");
    }
    // Not a TTY and not under CI: one plain line when the step ends, no bar.
    assert!(o.stderr.contains("benchmark: 4/4 done in") && !o.stderr.contains('\r'), "{}", o.stderr);
    // --quiet: no table, no progress.
    let mut quiet = args.to_vec();
    quiet.push(os("--quiet"));
    let q = optimize_env(&quiet, &[]);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    assert!(q.stdout.is_empty() && !q.stderr.contains("benchmark:"), "{}\n{}", q.stdout, q.stderr);
}

#[test]
fn bench_batches_data_samples_and_refuses_a_batch_the_model_cannot_take() {
    let model = kiln_fixtures::model("cnn").unwrap_or_else(|e| panic!("{e}"));
    // A sample of batch 2 cannot be repeated to batch 3.
    let shape = ["bench", &model.display().to_string(), "--batch", "3", "--runs", "1", "--shape", "x=2,3,48,192"];
    let args: Vec<&OsStr> = shape.iter().map(|s| os(s)).collect();
    let o = optimize_env(&args, &[]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("batch 2") && o.stderr.contains("`x`"), "{}", o.stderr);

    // The transformer's symbolic batch takes 2: both inputs are repeated.
    let transformer = kiln_fixtures::model("transformer").unwrap_or_else(|e| panic!("{e}"));
    let t = transformer.display().to_string();
    let ok = ["bench", &t, "--batch", "2", "--runs", "2", "--warmup", "0", "--dim", "sequence_length=8"];
    let o = optimize_env(&ok.iter().map(|s| os(s)).collect::<Vec<_>>(), &[]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.lines().any(|l| l.trim_start().starts_with('2')), "{}", o.stdout);
}
