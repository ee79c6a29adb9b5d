//! Binding a safetensors checkpoint onto a model's initializers by name.

use std::sync::Arc;

use crate::ir::Model;
use crate::safetensors::{BindOptions, BindReport, Checkpoint, TargetSpec, bind};

/// Replaces the main graph's initializers with the checkpoint's tensors of the same (renamed)
/// name, after checking shape and dtype. Nothing is replaced unless every matched tensor fits;
/// the report lists matched, mismatched, unmatched and extra tensors either way.
pub fn bind_weights(model: &mut Model, checkpoint: &Checkpoint, options: &BindOptions) -> BindReport {
    let Some(g) = model.graph.as_mut() else { return BindReport::default() };
    let targets: Vec<TargetSpec> = g
        .initializers()
        .iter()
        .filter_map(|&v| {
            let t = g.value(v).initializer()?;
            Some(TargetSpec { name: g.value(v).name.clone(), dtype: t.dtype(), dims: t.dims().to_vec() })
        })
        .collect();
    let report = bind(&targets, checkpoint, options);
    if report.mismatched.is_empty() && report.ambiguous.is_empty() {
        for (name, tensor) in &report.matched {
            if let Some(v) = g.find_value(name) {
                g.set_initializer(v, Arc::new(tensor.clone()));
            }
        }
    }
    report
}
