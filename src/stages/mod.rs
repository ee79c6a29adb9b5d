//! The stages after graph optimization: structured pruning, then one precision (FP16/BF16,
//! INT8 static or dynamic, INT4 weight-only). Each stage is a function of the whole model
//! (opsets and domains change with it), driven by its options and the pipeline's data, and
//! reports what it did in a [`StageReport`] that goes into the manifest.

pub mod half;
pub mod int4;
pub mod int8;
pub mod prune;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_calibration::{Ranges, SharedSource};
use serde::Serialize;

use crate::pipeline::TargetKind;

/// What every stage may use besides its own options.
#[derive(Clone, Default)]
pub struct StageContext {
    pub target: TargetKind,
    /// Calibration samples (`--data`, minus what is held apart for evaluation); `None` when
    /// the user gave none. A stage that needs data and gets none generates seeded synthetic
    /// samples and warns that accuracy will suffer.
    pub calibration: Option<SharedSource>,
    /// Where the model's external data lives.
    pub base_dir: Option<PathBuf>,
    /// Threads for timing runs (`--tune`). Sessions whose numbers decide the artifact use
    /// [`kiln_compiler::runtime::SessionConfig::reproducible`] whatever this says.
    pub threads: Option<usize>,
    /// Where long steps report progress (nothing by default; the CLI draws bars).
    pub progress: crate::progress::ProgressHandle,
    /// What a stage computed that a later run of it on the same model and data may reuse.
    pub memo: Arc<StageMemo>,
}

/// Results shared by repeated runs of a stage on the same model and data: sensitivity
/// analysis runs the stage once per node, and calibration must not run each time.
#[derive(Default)]
pub struct StageMemo {
    ranges: Mutex<BTreeMap<String, Arc<Ranges>>>,
}

impl StageMemo {
    /// The ranges stored under `key` (say, the calibration method), computing them once.
    pub fn ranges<E>(&self, key: &str, compute: impl FnOnce() -> Result<Ranges, E>) -> Result<Arc<Ranges>, E> {
        if let Some(r) = self.ranges.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(r);
        }
        let r = Arc::new(compute()?);
        if let Ok(mut m) = self.ranges.lock() {
            m.insert(key.to_string(), r.clone());
        }
        Ok(r)
    }
}

impl std::fmt::Debug for StageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("target", &self.target)
            .field("calibration", &self.calibration.as_ref().map(|s| s.describe()))
            .field("base_dir", &self.base_dir)
            .field("threads", &self.threads)
            .finish()
    }
}

/// What a stage did: counts and facts for people and the manifest (deterministic: no
/// timings), the precision it chose per node, and findings a person must see.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub facts: BTreeMap<String, serde_json::Value>,
    /// Node name → the precision or scheme it ended in (`int8`, `fp32 (excluded)`, …).
    pub decisions: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

impl StageReport {
    pub fn new(stage: impl Into<String>) -> StageReport {
        StageReport { stage: stage.into(), ..StageReport::default() }
    }

    /// Records a fact (`nodes_quantized: 42`).
    pub fn fact(&mut self, key: impl Into<String>, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.facts.insert(key.into(), value);
    }
}

/// Why a stage failed: the caller's input (exit 2) or the runtime (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{stage}: {message}")]
    BadInput { stage: &'static str, message: String },
    #[error("{stage}: {message}")]
    Runtime { stage: &'static str, message: String },
}

impl StageError {
    pub fn bad_input(stage: &'static str, message: impl std::fmt::Display) -> StageError {
        StageError::BadInput { stage, message: message.to_string() }
    }

    pub fn runtime(stage: &'static str, message: impl std::fmt::Display) -> StageError {
        StageError::Runtime { stage, message: message.to_string() }
    }
}
