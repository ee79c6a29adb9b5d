//! Running IR models through an [`Executor`]: serialize, load, and expose intermediate values.

use std::path::Path;

use std::io::Write;

use prost::Message;

use crate::ir::{Model, ValueDef};
use crate::onnx::model_to_proto;
use crate::runtime::{Executor, ModelSource, RuntimeError, Session, SessionConfig};

/// Serialized models at least this large go to the runtime through a temporary file: in
/// memory, the serialized copy would sit beside the runtime's own parse of it, a third copy of
/// every weight at the moment of loading.
const SPILL_BYTES: usize = 32 << 20;

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
/// (the folder the model was read from). A large model without external data is streamed to
/// a temporary file the runtime reads (removed once loaded), so its weights are never
/// serialized in memory; the bytes the runtime sees are the same either way.
pub fn load_session(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    config: &SessionConfig,
) -> Result<Box<dyn Session>, RuntimeError> {
    let proto = model_to_proto(model);
    // External references are relative to `base_dir`; a file elsewhere could not resolve them.
    if proto.encoded_len() >= SPILL_BYTES
        && crate::inspect::summarize(model).external_files.is_empty()
        && let Ok(file) = spill(&proto)
    {
        return executor.load_file(file.path(), config);
    }
    let bytes = proto.encode_to_vec();
    executor.load(ModelSource { bytes: &bytes, base_dir }, config)
}

/// The encoded model in a temporary file (`None`-like error: the caller encodes in memory).
fn spill(proto: &crate::onnx::proto::ModelProto) -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new().prefix(".kiln-session-").suffix(".onnx").tempfile()?;
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file.as_file_mut());
        crate::onnx::write::encode_into(&mut out, proto)?;
        out.flush()?;
    }
    Ok(file)
}
