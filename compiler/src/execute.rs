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
/// (the folder the model was read from). A small model is encoded in memory. In a large one,
/// weights that still lie unchanged in a file under `base_dir` (the model file itself, or its
/// external data) are referenced there as external data, so neither a serialized copy nor a
/// temporary file of them is made; failing that, the model is streamed to a temporary file
/// the runtime reads (removed once loaded). The values the runtime sees are the same either
/// way.
pub fn load_session(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    config: &SessionConfig,
) -> Result<Box<dyn Session>, RuntimeError> {
    load_session_spilling(executor, model, base_dir, config, SPILL_BYTES)
}

/// Loads a one-node model (`Identity` of a constant) and drops it: whether `executor` runs at
/// all, and, the first time, the executor's one-time set-up done.
pub fn load_probe_session(executor: &dyn Executor) -> Result<(), RuntimeError> {
    let mut g = crate::ir::Graph::new();
    let c = g.add_initializer("c", std::sync::Arc::new(crate::tensor::Tensor::scalar(1.0f32)));
    let id = g.add_node(crate::ir::NodeSpec::new("Identity").inputs([c]).outputs(["y"]));
    if let Some(y) = g.node(id).output(0) {
        g.push_output(y);
    }
    let model = Model::of_graph(g, 13);
    load_session(executor, &model, None, &SessionConfig::reproducible(crate::runtime::OptLevel::Disabled)).map(drop)
}

/// [`load_session`] with the size from which the model is not encoded whole in memory.
fn load_session_spilling(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    config: &SessionConfig,
    spill_bytes: usize,
) -> Result<Box<dyn Session>, RuntimeError> {
    let proto = model_to_proto(model);
    // Reading many small weights from a file costs the runtime more than a copy in memory.
    if proto.encoded_len() >= spill_bytes
        && let Some(dir) = base_dir
        && let Some(bytes) = referencing_encoding(model, dir)
    {
        return executor.load(ModelSource { bytes: &bytes, base_dir: Some(dir) }, config);
    }
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

/// Tensors smaller than this stay inline when the others are referenced in their file.
const REFERENCE_BYTES: u64 = 1024;

/// The model encoded with every large tensor that still lies unchanged in a file under `dir`
/// (the model it was read from, or its external data) referenced there as external data
/// instead of copied: the runtime reads the weights from the file, and no serialized copy of
/// them is written or held. `None` when no tensor lies there (nothing to gain).
fn referencing_encoding(model: &Model, dir: &Path) -> Option<Vec<u8>> {
    let dir = dir.canonicalize().ok()?;
    let mut referenced = 0u64;
    let mut place = |t: &crate::Tensor, _: &str| {
        let Some(region) = t.source().filter(|r| r.length >= REFERENCE_BYTES) else {
            return crate::onnx::tensor_codec::DataPlacement::AsLoaded;
        };
        let Some(location) = region.path.strip_prefix(&dir).ok().and_then(|p| p.to_str()).map(str::to_string) else {
            return crate::onnx::tensor_codec::DataPlacement::AsLoaded;
        };
        referenced += region.length;
        crate::onnx::tensor_codec::DataPlacement::External(vec![
            (Some("location".into()), Some(location)),
            (Some("offset".into()), Some(region.offset.to_string())),
            (Some("length".into()), Some(region.length.to_string())),
        ])
    };
    let proto = crate::onnx::export::model_to_proto_placed(model, &mut place);
    (referenced > 0).then(|| proto.encode_to_vec())
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
    fn weights_read_from_a_file_are_referenced_there_not_copied() {
        if let Err(e) = init_ort() {
            panic!("{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let w: Vec<f32> = (0..1024).map(|i| i as f32 * 0.25 - 7.0).collect();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, binary_model("Mul", &w, None)).unwrap();
        let model = crate::onnx::load_model(&path).unwrap();
        let g = model.main_graph().unwrap();
        let t = g.find_value("w").and_then(|v| g.value(v).initializer()).unwrap();
        let region = t.source().expect("a raw tensor read from a file knows where it lies");
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[region.offset as usize..][..region.length as usize], &t.bytes().unwrap()[..]);
        let encoded = referencing_encoding(&model, dir.path()).expect("the weight lies in m.onnx");
        assert!(encoded.len() < 1024, "the 4 KB weight is referenced, not copied: {} bytes", encoded.len());
        let x = Tensor::from_slice(vec![1024], &vec![2.0f32; 1024]).unwrap();
        let run_x = |s: &mut Box<dyn Session>| {
            let out = s.run(&[("x".into(), x.clone().into())], None).unwrap();
            out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap()
        };
        let config = SessionConfig::default();
        let mut referenced = load_session_spilling(&OrtExecutor, &model, Some(dir.path()), &config, 0).unwrap();
        assert_eq!(run_x(&mut referenced), w.iter().map(|v| v * 2.0).collect::<Vec<_>>());
        // The same model decoded from memory has no file to point at: it is encoded whole.
        let in_memory = decode_model(std::fs::read(&path).unwrap().into(), &path, Some(dir.path())).unwrap();
        assert!(referencing_encoding(&in_memory, dir.path()).is_none());
        // A folder that does not hold the file cannot be referenced from either.
        let other = tempfile::tempdir().unwrap();
        assert!(referencing_encoding(&model, other.path()).is_none());
        let mut copied = load_session_spilling(&OrtExecutor, &model, Some(other.path()), &config, 0).unwrap();
        assert_eq!(run_x(&mut copied), run_x(&mut referenced));
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
