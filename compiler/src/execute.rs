//! Running IR models through an [`Executor`]: serialize, load, and expose intermediate values.

use std::path::Path;

use crate::ir::{Model, ValueDef};
use crate::onnx::encode_model;
use crate::runtime::{Executor, ModelSource, RuntimeError, Session, SessionConfig};

/// Adds the named values of the main graph to its outputs, so an executor returns them
/// (calibration and per-layer comparison read intermediate values this way).
pub fn expose_values(model: &mut Model, names: &[String]) -> Result<(), String> {
    let g = model.graph.as_mut().ok_or("the model has no graph")?;
    for name in names {
        let v = g.find_value(name).ok_or_else(|| format!("no value named '{name}' in the main graph"))?;
        if matches!(g.value(v).def(), ValueDef::Detached | ValueDef::Outer) {
            return Err(format!("value '{name}' is not defined in the main graph"));
        }
        if !g.is_output(v) {
            g.push_output(v);
        }
    }
    Ok(())
}

/// Serializes the model and loads it into a session. External data is resolved in `base_dir`
/// (the folder the model was read from).
pub fn load_session(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    config: &SessionConfig,
) -> Result<Box<dyn Session>, RuntimeError> {
    let bytes = encode_model(model);
    executor.load(ModelSource { bytes: &bytes, base_dir }, config)
}
