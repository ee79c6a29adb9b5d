//! Per-channel activation statistics: min and max of every channel along the last axis (the
//! input channels K of a MatMul `X[…, K] · W[K, N]`), over all samples, plus the first few rows
//! of each tensor. SmoothQuant needs `max |X_j|` per channel to migrate outliers into the
//! weights, and a few real rows to choose how far.
//!
//! Memory is bounded by the channel count and `keep_rows` per tensor, whatever the data size;
//! samples stream one inference at a time. Min and max merge exactly and do not depend on
//! sample order; kept rows are the first rows in sample order, so results are deterministic.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_compiler::DataType;
use kiln_compiler::Tensor;
use kiln_compiler::ir::{Model, ValueDef};
use kiln_compiler::runtime::{Executor, SessionConfig, Value};

use crate::collect::CalibError;
use crate::data::{SampleSource, model_inputs, validate};
use crate::observe::NotFloat;

/// Min and max of each last-axis channel of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRange {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// The first rows seen (row-major, `channels()` values each), at most the asked-for count.
    pub rows: Vec<f32>,
}

impl ChannelRange {
    fn new(channels: usize) -> ChannelRange {
        ChannelRange { min: vec![f32::INFINITY; channels], max: vec![f32::NEG_INFINITY; channels], rows: Vec::new() }
    }

    pub fn channels(&self) -> usize {
        self.max.len()
    }

    /// `max |x|` per channel (0 for a channel never seen).
    pub fn abs_max(&self) -> Vec<f32> {
        self.min
            .iter()
            .zip(&self.max)
            .map(|(lo, hi)| lo.abs().max(hi.abs()))
            .map(|m| if m.is_finite() { m } else { 0.0 })
            .collect()
    }

    /// Folds in one value whose last axis is the channel axis; NaNs are ignored.
    fn observe(&mut self, name: &str, values: &[f32], keep_rows: usize) -> Result<(), CalibError> {
        let k = self.channels();
        if k == 0 || !values.len().is_multiple_of(k) {
            return Err(CalibError::Model(format!(
                "`{name}`: {} values do not split into rows of {k} channels",
                values.len()
            )));
        }
        for row in values.chunks_exact(k) {
            for ((lo, hi), &v) in self.min.iter_mut().zip(self.max.iter_mut()).zip(row) {
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
            if self.rows.len() < keep_rows * k {
                self.rows.extend_from_slice(row);
            }
        }
        Ok(())
    }

    /// Combines statistics of disjoint sample sets (`self` first in sample order).
    pub fn merge(&mut self, other: &ChannelRange, keep_rows: usize) -> Result<(), String> {
        if other.channels() != self.channels() {
            return Err(format!("{} channels against {}", other.channels(), self.channels()));
        }
        for i in 0..self.channels() {
            self.min[i] = self.min[i].min(other.min[i]);
            self.max[i] = self.max[i].max(other.max[i]);
        }
        let room = (keep_rows * self.channels()).saturating_sub(self.rows.len());
        self.rows.extend(other.rows.iter().take(room));
        Ok(())
    }
}

/// Channel statistics of several tensors over `samples` samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelStats {
    pub samples: u64,
    pub tensors: BTreeMap<String, ChannelRange>,
}

/// Observes the last-axis channels of `tensors` (node outputs or graph inputs of the main
/// graph) over every sample of `source`, keeping the first `keep_rows` rows of each.
pub fn collect_channels(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    source: &dyn SampleSource,
    tensors: &[String],
    keep_rows: usize,
    session: &SessionConfig,
) -> Result<ChannelStats, CalibError> {
    let inputs = model_inputs(model)?;
    let g = model.main_graph().ok_or_else(|| CalibError::Model("the model has no graph".into()))?;
    let mut names: Vec<String> = tensors.to_vec();
    names.sort();
    names.dedup();
    let mut from_nodes = Vec::new();
    for name in &names {
        let v = g
            .find_value(name)
            .ok_or_else(|| CalibError::Model(format!("no value named `{name}` in the main graph")))?;
        match g.value(v).def() {
            ValueDef::Input => {}
            ValueDef::Node { .. } => from_nodes.push(v),
            _ => return Err(CalibError::Model(format!("`{name}` is a constant or not computed by the main graph"))),
        }
    }
    let mut session = if from_nodes.is_empty() {
        None
    } else {
        let mut m = model.clone();
        let mg = m.graph.as_mut().ok_or_else(|| CalibError::Model("the model has no graph".into()))?;
        mg.set_outputs(from_nodes.clone());
        Some(kiln_compiler::execute::load_session(executor, &m, base_dir, session).map_err(CalibError::Load)?)
    };
    let node_names: Vec<String> = from_nodes.iter().map(|&v| g.value(v).name.clone()).collect();
    let mut stats: BTreeMap<String, ChannelRange> = BTreeMap::new();
    for i in 0..source.len() {
        let sample = source.read(i)?;
        validate(&inputs, &sample)?;
        let mut values: Vec<(String, Tensor)> = Vec::new();
        if let Some(session) = &mut session {
            let feed: Vec<(String, Value)> =
                sample.inputs.iter().map(|(n, t)| (n.clone(), Value::Tensor(t.clone()))).collect();
            let out = session
                .run(&feed, Some(&node_names))
                .map_err(|e| CalibError::Run { origin: sample.origin.clone(), source: e })?;
            for (n, v) in out {
                let t = v
                    .as_tensor()
                    .ok_or_else(|| CalibError::Model(format!("the runtime returned no tensor for `{n}`")))?;
                values.push((n, t.clone()));
            }
        }
        for (n, t) in &sample.inputs {
            if names.binary_search(n).is_ok() {
                values.push((n.clone(), t.clone()));
            }
        }
        for (name, t) in values {
            let floats = float_values(&name, &t)?;
            let k = t.dims().last().copied().unwrap_or(1);
            let range = stats.entry(name.clone()).or_insert_with(|| ChannelRange::new(k));
            range.observe(&name, &floats, keep_rows)?;
        }
    }
    Ok(ChannelStats { samples: source.len() as u64, tensors: stats })
}

fn float_values(name: &str, t: &Tensor) -> Result<Vec<f32>, CalibError> {
    if !matches!(t.dtype(), DataType::F32 | DataType::F16 | DataType::BF16 | DataType::F64) {
        return Err(NotFloat { name: name.to_string(), dtype: t.dtype() }.into());
    }
    let v = t.to_f64_vec().map_err(|e| CalibError::Model(format!("`{name}`: {e}")))?;
    Ok(v.into_iter().map(|x| x as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_per_last_axis_and_merge_exactly() {
        let mut a = ChannelRange::new(2);
        a.observe("x", &[1.0, -5.0, 3.0, 2.0], 1).unwrap();
        assert_eq!(a.min, [1.0, -5.0]);
        assert_eq!(a.max, [3.0, 2.0]);
        assert_eq!(a.abs_max(), [3.0, 5.0]);
        assert_eq!(a.rows, [1.0, -5.0]);
        let mut b = ChannelRange::new(2);
        b.observe("x", &[-4.0, 0.5, f32::NAN, 9.0], 1).unwrap();
        let mut whole = ChannelRange::new(2);
        whole.observe("x", &[1.0, -5.0, 3.0, 2.0, -4.0, 0.5, f32::NAN, 9.0], 1).unwrap();
        a.merge(&b, 1).unwrap();
        assert_eq!(a, whole);
        assert_eq!(a.abs_max(), [4.0, 9.0]);
        // Negative twin: a row of the wrong width is refused, not misread.
        let err = ChannelRange::new(3).observe("x", &[1.0, 2.0], 1).unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
        assert!(ChannelRange::new(3).merge(&whole, 1).is_err());
    }
}
