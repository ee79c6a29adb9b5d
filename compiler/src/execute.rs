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
    load_session_spilling(executor, model, base_dir, config, SPILL_BYTES)
}

/// [`load_session`] with the size from which the model goes through a file.
fn load_session_spilling(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    config: &SessionConfig,
    spill_bytes: usize,
) -> Result<Box<dyn Session>, RuntimeError> {
    let proto = model_to_proto(model);
    // External references are relative to `base_dir`; a file elsewhere could not resolve them.
    if proto.encoded_len() >= spill_bytes
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::decode_model;
    use crate::runtime::testutil::binary_model;
    use crate::runtime::{OrtExecutor, init_ort};
    use crate::tensor::Tensor;

    fn run(session: &mut Box<dyn Session>) -> Vec<f32> {
        let x = Tensor::from_slice(vec![3], &[1.0f32, 2.0, 3.0]).unwrap();
        let out = session.run(&[("x".into(), x.into())], None).unwrap();
        out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap()
    }

    #[test]
    fn spilled_sessions_compute_what_in_memory_ones_do() {
        if let Err(e) = init_ort() {
            panic!("{e}");
        }
        let bytes = binary_model("Mul", &[10.0, 20.0, 30.0], None);
        let model = decode_model(bytes.into(), Path::new("m.onnx"), None).unwrap();
        let config = SessionConfig::default();
        let mut spilled = load_session_spilling(&OrtExecutor, &model, None, &config, 0).unwrap();
        let mut in_memory = load_session_spilling(&OrtExecutor, &model, None, &config, usize::MAX).unwrap();
        assert_eq!(run(&mut spilled), vec![10.0, 40.0, 90.0]);
        assert_eq!(run(&mut spilled), run(&mut in_memory));
    }

    #[test]
    fn models_with_external_data_are_never_spilled() {
        if let Err(e) = init_ort() {
            panic!("{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let w = [1.0f32, -1.0, 0.5];
        std::fs::write(dir.path().join("w.bin"), w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, binary_model("Mul", &w, Some("w.bin"))).unwrap();
        let model = crate::onnx::load_model(&path).unwrap();
        // A spilled copy in the temporary folder could not find `w.bin`; this one must.
        let mut session = load_session_spilling(&OrtExecutor, &model, Some(dir.path()), &SessionConfig::default(), 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut session), vec![1.0, -2.0, 1.5]);
        // The same model from a folder without the data fails, so the test above can fail too.
        let other = tempfile::tempdir().unwrap();
        let err = load_session_spilling(&OrtExecutor, &model, Some(other.path()), &SessionConfig::default(), 0);
        assert!(err.is_err());
    }
}
