//! Subsets of a source by index: shards and held-apart evaluation splits.

use super::{DataError, Sample, SampleSource, SharedSource};

/// The samples of `source` at `indices`, in that order.
pub struct Subset {
    source: SharedSource,
    indices: Vec<usize>,
    label: String,
}

impl Subset {
    pub fn new(source: SharedSource, indices: Vec<usize>, label: impl Into<String>) -> Subset {
        Subset { source, indices, label: label.into() }
    }

    /// Every sample of `source`.
    pub fn all(source: SharedSource) -> Subset {
        let n = source.len();
        Subset::new(source, (0..n).collect(), "all")
    }

    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl SampleSource for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn origin(&self, index: usize) -> String {
        self.indices.get(index).map(|&i| self.source.origin(i)).unwrap_or_default()
    }

    fn read(&self, index: usize) -> Result<Sample, DataError> {
        let &i = self.indices.get(index).ok_or_else(|| super::folder::out_of_range(index, self.indices.len()))?;
        self.source.read(i)
    }

    fn describe(&self) -> String {
        format!("{} ({}: {} samples)", self.source.describe(), self.label, self.indices.len())
    }
}

/// Shard `index` of `count`: samples `index, index + count, index + 2·count…`. Shards are
/// disjoint and together hold every sample once.
pub fn shard(source: SharedSource, index: usize, count: usize) -> Result<Subset, DataError> {
    if count == 0 || index >= count {
        return Err(DataError::Config { what: format!("shard {index}/{count}: expected 0 <= i < n") });
    }
    let indices = (index..source.len()).step_by(count).collect();
    Ok(Subset::new(source, indices, format!("shard {index}/{count}")))
}

/// Calibration and evaluation samples kept apart.
pub struct HeldApart {
    pub calibration: Subset,
    pub evaluation: Subset,
}

/// The first `calibration_percent`% of the samples (rounded down, at least one when there are
/// any) for calibration, the rest for evaluation; or, with `eval`, all of `source` for
/// calibration and all of `eval` for evaluation.
pub fn held_apart(
    source: SharedSource,
    calibration_percent: f64,
    eval: Option<SharedSource>,
) -> Result<HeldApart, DataError> {
    if let Some(eval) = eval {
        return Ok(HeldApart { calibration: Subset::all(source), evaluation: Subset::all(eval) });
    }
    if !(calibration_percent > 0.0 && calibration_percent <= 100.0) {
        return Err(DataError::Config {
            what: format!("calibration share {calibration_percent}%: expected more than 0 and at most 100"),
        });
    }
    let n = source.len();
    let k = ((n as f64 * calibration_percent / 100.0).floor() as usize).clamp(n.min(1), n);
    Ok(HeldApart {
        calibration: Subset::new(source.clone(), (0..k).collect(), format!("first {calibration_percent}%")),
        evaluation: Subset::new(source, (k..n).collect(), "held apart for evaluation"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{InputSpec, Synthetic, SyntheticSpec};
    use std::sync::Arc;

    fn source(n: usize) -> SharedSource {
        let spec = SyntheticSpec { samples: n, ..Default::default() };
        let inputs: Vec<InputSpec> = Vec::new();
        Arc::new(Synthetic::new(&inputs, &spec).unwrap())
    }

    #[test]
    fn shards_partition_the_samples() {
        let src = source(10);
        let mut seen: Vec<usize> = (0..4).flat_map(|i| shard(src.clone(), i, 4).unwrap().indices().to_vec()).collect();
        assert_eq!(shard(src.clone(), 1, 4).unwrap().indices(), [1, 5, 9]);
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(shard(src, 4, 4).is_err());
    }

    #[test]
    fn held_apart_splits_first_k_percent() {
        let h = held_apart(source(10), 80.0, None).unwrap();
        assert_eq!(h.calibration.indices(), (0..8).collect::<Vec<_>>());
        assert_eq!(h.evaluation.indices(), [8, 9]);
        assert_eq!(h.evaluation.origin(0), "synthetic sample 8 (seed 0)");
        let h = held_apart(source(3), 10.0, None).unwrap();
        assert_eq!(h.calibration.len(), 1);
        let h = held_apart(source(3), 50.0, Some(source(2))).unwrap();
        assert_eq!((h.calibration.len(), h.evaluation.len()), (3, 2));
        assert!(held_apart(source(3), 0.0, None).is_err());
    }
}
