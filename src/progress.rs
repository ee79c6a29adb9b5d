//! Progress reporting for long steps (calibration, quantization, validation, benchmarking).
//! Library code calls a [`Progress`]; only the `optimize` binary draws bars or prints lines.
//! The default, [`NoProgress`], does nothing, so library users see nothing unless they ask.

use std::sync::Arc;

/// Receives the progress of long steps. Calls come from the thread doing the work.
pub trait Progress: Send + Sync {
    /// A step begins; `total` units of work when known (samples, nodes, runs).
    fn start(&self, stage: &str, total: Option<u64>);
    /// `n` more units are done.
    fn tick(&self, n: u64);
    /// The step ended.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _stage: &str, _total: Option<u64>) {}
    fn tick(&self, _n: u64) {}
    fn finish(&self) {}
}

/// A shared [`Progress`] that stage options and contexts can hold (cloneable, `Default` =
/// nothing reported).
#[derive(Clone)]
pub struct ProgressHandle(pub Arc<dyn Progress>);

impl Default for ProgressHandle {
    fn default() -> ProgressHandle {
        ProgressHandle(Arc::new(NoProgress))
    }
}

impl std::fmt::Debug for ProgressHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHandle")
    }
}

impl ProgressHandle {
    pub fn new(p: impl Progress + 'static) -> ProgressHandle {
        ProgressHandle(Arc::new(p))
    }

    /// Runs `work` as a step of `total` units; the step is finished however `work` ends.
    pub fn step<T>(&self, stage: &str, total: Option<u64>, work: impl FnOnce(&dyn Progress) -> T) -> T {
        struct Finish<'a>(&'a dyn Progress);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        self.0.start(stage, total);
        let guard = Finish(self.0.as_ref());
        work(guard.0)
    }
}

impl std::ops::Deref for ProgressHandle {
    type Target = dyn Progress;
    fn deref(&self) -> &(dyn Progress + 'static) {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl Progress for Record {
        fn start(&self, stage: &str, total: Option<u64>) {
            self.0.lock().unwrap().push(format!("start {stage} {total:?}"));
        }
        fn tick(&self, n: u64) {
            self.0.lock().unwrap().push(format!("tick {n}"));
        }
        fn finish(&self) {
            self.0.lock().unwrap().push("finish".into());
        }
    }

    #[test]
    fn a_step_is_finished_even_when_it_fails() {
        let rec = Arc::new(Record::default());
        let h = ProgressHandle(rec.clone());
        let r: Result<(), &str> = h.step("calibration", Some(2), |p| {
            p.tick(1);
            Err("bad sample")
        });
        assert!(r.is_err());
        assert_eq!(*rec.0.lock().unwrap(), ["start calibration Some(2)", "tick 1", "finish"]);
        // The default reports nothing and costs nothing.
        ProgressHandle::default().step("x", None, |p| p.tick(5));
    }
}
