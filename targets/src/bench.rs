//! Measuring models on ONNX Runtime: latency percentiles, throughput, cold start and peak
//! memory of one configuration ([`measure`]), and a quick interleaved comparison of an
//! original and a candidate ([`compare_latency`]) so that an artifact slower than the original
//! is never emitted silently.

use std::time::{Duration, Instant};

use kiln_compiler::runtime::{Executor, ModelSource, OrtExecutor, RuntimeError, SessionConfig, Value};
use serde::Serialize;

/// How to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Runs before timing starts (after the first run, which is timed as cold start).
    pub warmup: usize,
    /// Timed runs.
    pub runs: usize,
    /// Session settings (threads, provider, graph optimization level).
    pub session: SessionConfig,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            warmup: 5,
            runs: 50,
            session: SessionConfig { deterministic: false, ..SessionConfig::default() },
        }
    }
}

/// The figures of one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    pub batch: usize,
    /// Intra-op threads (`None`: the runtime's default).
    pub threads: Option<usize>,
    /// Session creation.
    pub session_ms: f64,
    /// The first run after session creation.
    pub first_run_ms: f64,
    /// Session creation plus the first run: what a cold process waits for its first answer.
    pub cold_start_ms: f64,
    pub runs: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    /// Samples per second over the timed runs (`batch` samples per run).
    pub throughput_per_s: f64,
    /// Peak resident memory during session creation and the runs, above the resident memory
    /// before (KiB); `None` where the platform does not report it.
    pub peak_rss_delta_kib: Option<u64>,
}

/// The `p`-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory (`VmRSS`) and its high-water mark (`VmHWM`) in KiB, from /proc.
fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the high-water mark to the current resident set (Linux: `5` into clear_refs), so
/// each configuration's peak is its own. Returns whether it worked.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Measures one configuration: creates a session (timed), runs once (timed: cold start),
/// warms up, then times `runs` runs.
pub fn measure(
    model: ModelSource<'_>,
    inputs: &[(String, Value)],
    batch: usize,
    options: &BenchOptions,
) -> Result<BenchResult, RuntimeError> {
    let reset = reset_peak();
    let before = rss_kib();
    let t = Instant::now();
    let mut session = OrtExecutor::new().load(model, &options.session)?;
    let session_ms = ms(t.elapsed());
    let t = Instant::now();
    session.run(inputs, None)?;
    let first_run_ms = ms(t.elapsed());
    for _ in 0..options.warmup {
        session.run(inputs, None)?;
    }
    let mut times = Vec::with_capacity(options.runs);
    let total = Instant::now();
    for _ in 0..options.runs.max(1) {
        let t = Instant::now();
        session.run(inputs, None)?;
        times.push(ms(t.elapsed()));
    }
    let total_s = total.elapsed().as_secs_f64();
    let after = rss_kib();
    drop(session);
    times.sort_by(f64::total_cmp);
    let peak_rss_delta_kib = match (reset, before, after) {
        (true, Some((rss, _)), Some((_, hwm))) => Some(hwm.saturating_sub(rss)),
        _ => None,
    };
    Ok(BenchResult {
        batch,
        threads: options.session.intra_threads,
        session_ms,
        first_run_ms,
        cold_start_ms: session_ms + first_run_ms,
        runs: times.len(),
        p50_ms: percentile(&times, 50.0),
        p95_ms: percentile(&times, 95.0),
        p99_ms: percentile(&times, 99.0),
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        min_ms: times.first().copied().unwrap_or(f64::NAN),
        throughput_per_s: (batch * times.len()) as f64 / total_s.max(f64::MIN_POSITIVE),
        peak_rss_delta_kib,
    })
}

/// Original against candidate on the same inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyComparison {
    pub original_ms: f64,
    pub candidate_ms: f64,
    /// candidate / original (below 1: the candidate is faster).
    pub ratio: f64,
    pub runs: usize,
}

impl LatencyComparison {
    /// Whether the candidate is slower than the original by more than `margin` (0.03 = 3%,
    /// above run-to-run noise of interleaved medians).
    pub fn slower(&self, margin: f64) -> bool {
        self.ratio > 1.0 + margin
    }
}

/// A quick comparison for tuning: both sessions loaded, `warmup` runs each, then `runs`
/// interleaved pairs (so drift in machine load hits both alike); medians compared.
pub fn compare_latency(
    original: ModelSource<'_>,
    candidate: ModelSource<'_>,
    inputs: &[(String, Value)],
    options: &BenchOptions,
) -> Result<LatencyComparison, RuntimeError> {
    let ort = OrtExecutor::new();
    let mut a = ort.load(original, &options.session)?;
    let mut b = ort.load(candidate, &options.session)?;
    for _ in 0..options.warmup.max(1) {
        a.run(inputs, None)?;
        b.run(inputs, None)?;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..options.runs.max(1) {
        // Alternate which goes first: caches and clocks favor neither.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let t = Instant::now();
            if which == 0 {
                a.run(inputs, None)?;
                ta.push(ms(t.elapsed()));
            } else {
                b.run(inputs, None)?;
                tb.push(ms(t.elapsed()));
            }
        }
    }
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    let (original_ms, candidate_ms) = (percentile(&ta, 50.0), percentile(&tb, 50.0));
    Ok(LatencyComparison { original_ms, candidate_ms, ratio: candidate_ms / original_ms, runs: ta.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testgraph::QdqBuilder;
    use kiln_compiler::onnx::encode_model;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 95.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    /// A MatMul chain of `depth` [256×256] layers.
    fn chain(depth: usize) -> Vec<u8> {
        let mut b = QdqBuilder::new(&[8, 256]);
        let mut y = b.x;
        for i in 0..depth {
            let w = b.float_weight(&[256, 256]);
            y = b.op("MatMul", &[y, w], &format!("mm{i}"));
        }
        encode_model(&b.finish(&[y]))
    }

    #[test]
    fn measures_and_tells_the_slower_model() {
        kiln_passes::testing::require_ort().unwrap();
        let (small, big) = (chain(1), chain(24));
        let x = kiln_compiler::Tensor::from_slice(vec![8, 256], &vec![0.5f32; 8 * 256]).unwrap();
        let inputs = vec![("x".to_string(), Value::Tensor(x))];
        let options = BenchOptions {
            warmup: 2,
            runs: 15,
            session: SessionConfig { intra_threads: Some(1), ..BenchOptions::default().session },
        };
        let r = measure(ModelSource::from_bytes(&big), &inputs, 8, &options).unwrap();
        assert_eq!(r.runs, 15);
        assert!(r.min_ms <= r.p50_ms && r.p50_ms <= r.p95_ms && r.p95_ms <= r.p99_ms, "{r:?}");
        assert!(r.cold_start_ms >= r.session_ms && r.throughput_per_s > 0.0);
        // 24 weights of 256 KiB each are resident while the session lives.
        assert!(r.peak_rss_delta_kib.is_some_and(|k| k >= 24 * 256), "{r:?}");
        let c =
            compare_latency(ModelSource::from_bytes(&small), ModelSource::from_bytes(&big), &inputs, &options).unwrap();
        // 24 layers against 1: far beyond noise.
        assert!(c.slower(0.5), "{c:?}");
        let c =
            compare_latency(ModelSource::from_bytes(&big), ModelSource::from_bytes(&small), &inputs, &options).unwrap();
        assert!(!c.slower(0.03), "{c:?}");
    }
}
