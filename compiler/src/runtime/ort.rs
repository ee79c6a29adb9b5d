//! The ONNX Runtime executor (crate `ort`, library loaded at run time by [`super::discovery`]).
//!
//! External data: a model held in memory has no path for ORT to resolve `external_data`
//! locations against, so when [`ModelSource::base_dir`] is given the session option
//! `session.model_external_initializers_file_folder_path` is set to it and the bytes are still
//! loaded from memory. Nothing is written to disk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use ::ort::AsPointer;
use ::ort::memory::Allocator;
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::{OutputSelector, RunOptions, SessionInputValue};
use ::ort::value::{
    DynTensor, DynTensorValueType, DynValue, DynValueTypeMarker, Sequence, TensorElementType, Utf8Data,
    ValueType as OrtValueType,
};
use bytes::Bytes;

use super::{
    ExecutionProvider, Executor, IoInfo, ModelSource, OptLevel, RuntimeError, Session, SessionConfig, Value, ValueType,
    check_inputs, discovery, panic_message, select_outputs,
};
use crate::dtype::DataType;
use crate::tensor::{Tensor, TensorData, element_count};

const NAME: &str = "onnxruntime";

/// Session option naming the folder external initializers are read from when the model is
/// loaded from memory.
const EXTERNAL_FOLDER_KEY: &str = "session.model_external_initializers_file_folder_path";

/// Runs models with ONNX Runtime. Loading the first model loads the library (see
/// [`super::init_ort`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrtExecutor;

impl OrtExecutor {
    pub fn new() -> OrtExecutor {
        OrtExecutor
    }

    /// Loads the library and builds one throwaway single-node session: the first session of
    /// a process also sets up the runtime's CPU kernels (milliseconds), which a caller can
    /// thus do on another thread ahead of the session it needs.
    pub fn warm_up() -> Result<(), RuntimeError> {
        super::init_ort()?;
        crate::execute::load_probe_session(&OrtExecutor)
    }
}

impl Executor for OrtExecutor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn load(&self, model: ModelSource<'_>, config: &SessionConfig) -> Result<Box<dyn Session>, RuntimeError> {
        build(config, model.base_dir, |builder| builder.commit_from_memory(model.bytes))
    }

    /// ONNX Runtime reads the file itself (and its external data from the file's folder).
    fn load_file(&self, path: &std::path::Path, config: &SessionConfig) -> Result<Box<dyn Session>, RuntimeError> {
        build(config, None, |builder| builder.commit_from_file(path))
    }
}

/// A session from a configured builder and a way to commit it (from memory or a file).
fn build(
    config: &SessionConfig,
    base_dir: Option<&std::path::Path>,
    commit: impl FnOnce(&mut SessionBuilder) -> ::ort::Result<::ort::session::Session>,
) -> Result<Box<dyn Session>, RuntimeError> {
    let runtime = discovery::runtime()?;
    let built = catch_unwind(AssertUnwindSafe(|| -> Result<OrtSession, RuntimeError> {
        let builder = ::ort::session::Session::builder(&runtime.env).map_err(|e| config_err(e.message()))?;
        let mut builder = configure(builder, base_dir, config)?;
        let session = commit(&mut builder)
            .map_err(|e| RuntimeError::ModelRejected { executor: NAME, message: e.message().to_string() })?;
        let inputs = session.inputs().iter().map(|o| io_info(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| io_info(o.name(), o.dtype())).collect();
        Ok(OrtSession { session, inputs, outputs })
    }));
    match built {
        Ok(session) => Ok(Box::new(session?)),
        Err(payload) => Err(RuntimeError::Panic {
            executor: NAME,
            during: "loading the model".into(),
            message: panic_message(payload.as_ref()),
        }),
    }
}
fn config_err(message: &str) -> RuntimeError {
    RuntimeError::Config { executor: NAME, message: message.to_string() }
}

fn configure(
    builder: SessionBuilder,
    base_dir: Option<&std::path::Path>,
    config: &SessionConfig,
) -> Result<SessionBuilder, RuntimeError> {
    let level = match config.optimization {
        OptLevel::Disabled => GraphOptimizationLevel::Disable,
        OptLevel::Basic => GraphOptimizationLevel::Level1,
        OptLevel::Extended => GraphOptimizationLevel::Level2,
        OptLevel::All => GraphOptimizationLevel::All,
    };
    let builder = builder.with_optimization_level(level).map_err(|e| config_err(e.message()))?;
    let mut builder = builder.with_deterministic_compute(config.deterministic).map_err(|e| config_err(e.message()))?;
    if let Some(n) = config.intra_threads {
        builder = builder.with_intra_threads(n).map_err(|e| config_err(e.message()))?;
    }
    if let Some(dir) = base_dir {
        let dir = dir
            .to_str()
            .ok_or_else(|| config_err(&format!("external data folder {} is not valid UTF-8", dir.display())))?;
        builder = builder.with_config_entry(EXTERNAL_FOLDER_KEY, dir).map_err(|e| config_err(e.message()))?;
    }
    register_provider(builder, config.provider)
}

fn register_provider(builder: SessionBuilder, provider: ExecutionProvider) -> Result<SessionBuilder, RuntimeError> {
    let unavailable = |message: String| RuntimeError::ProviderUnavailable { provider: provider.to_string(), message };
    match provider {
        ExecutionProvider::Cpu => Ok(builder),
        #[cfg(feature = "cuda")]
        ExecutionProvider::Cuda { device_id } => builder
            .with_execution_providers([::ort::ep::CUDA::default().with_device_id(device_id).build().error_on_failure()])
            .map_err(|e| unavailable(e.message().to_string())),
        #[cfg(feature = "tensorrt")]
        ExecutionProvider::TensorRt { device_id } => builder
            .with_execution_providers([::ort::ep::TensorRT::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure()])
            .map_err(|e| unavailable(e.message().to_string())),
        #[allow(unreachable_patterns)]
        _ => Err(unavailable(format!(
            "Kiln was built without the `{}` cargo feature",
            if matches!(provider, ExecutionProvider::Cuda { .. }) { "cuda" } else { "tensorrt" }
        ))),
    }
}

/// A loaded ONNX Runtime session.
pub struct OrtSession {
    session: ::ort::session::Session,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
}

impl Session for OrtSession {
    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn run(
        &mut self,
        inputs: &[(String, Value)],
        output_names: Option<&[String]>,
    ) -> Result<Vec<(String, Value)>, RuntimeError> {
        check_inputs(&self.inputs, inputs)?;
        let wanted = select_outputs(&self.outputs, output_names)?;
        let declared: Vec<ValueType> = wanted
            .iter()
            .map(|n| self.outputs.iter().find(|o| &o.name == n).map_or(ValueType::Unknown, |o| o.ty.clone()))
            .collect();
        let session = &mut self.session;
        let result = catch_unwind(AssertUnwindSafe(move || -> Result<Vec<(String, Value)>, RuntimeError> {
            let mut feeds: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
            for (name, value) in inputs {
                // An absent optional is passed by leaving the input out.
                if let Some(v) = value_to_ort(name, value)? {
                    feeds.push((name.clone(), SessionInputValue::Owned(v)));
                }
            }
            let selector = wanted.iter().fold(OutputSelector::no_default(), |s, n| s.with(n.clone()));
            let options = RunOptions::new()
                .map_err(|e| RuntimeError::Run { executor: NAME, message: e.message().to_string() })?
                .with_outputs(selector);
            let mut outputs = session
                .run_with_options(feeds, &options)
                .map_err(|e| RuntimeError::Run { executor: NAME, message: e.message().to_string() })?;
            wanted
                .iter()
                .zip(&declared)
                .map(|(name, ty)| {
                    let value = outputs.remove(name).ok_or_else(|| RuntimeError::Run {
                        executor: NAME,
                        message: format!("output `{name}` was not returned"),
                    })?;
                    let mut v = value_from_ort(name, value)?;
                    if matches!(ty, ValueType::Optional(_)) {
                        v = Value::Optional(Some(Box::new(v)));
                    }
                    Ok((name.clone(), v))
                })
                .collect()
        }));
        match result {
            Ok(r) => r,
            Err(payload) => Err(RuntimeError::Panic {
                executor: NAME,
                during: "running the model".into(),
                message: panic_message(payload.as_ref()),
            }),
        }
    }
}

/// The Kiln type of an ORT element type (`None` for types Kiln does not know).
pub fn dtype_from_ort(t: TensorElementType) -> Option<DataType> {
    use DataType as D;
    use TensorElementType as E;
    Some(match t {
        E::Float32 => D::F32,
        E::Uint8 => D::U8,
        E::Int8 => D::I8,
        E::Uint16 => D::U16,
        E::Int16 => D::I16,
        E::Int32 => D::I32,
        E::Int64 => D::I64,
        E::String => D::String,
        E::Bool => D::Bool,
        E::Float16 => D::F16,
        E::Float64 => D::F64,
        E::Uint32 => D::U32,
        E::Uint64 => D::U64,
        E::Bfloat16 => D::BF16,
        E::Complex64 => D::C64,
        E::Complex128 => D::C128,
        E::Float8E4M3FN => D::F8E4M3FN,
        E::Float8E4M3FNUZ => D::F8E4M3FNUZ,
        E::Float8E5M2 => D::F8E5M2,
        E::Float8E5M2FNUZ => D::F8E5M2FNUZ,
        E::Uint4 => D::U4,
        E::Int4 => D::I4,
        E::Float4E2M1 => D::F4E2M1,
        E::Uint2 => D::U2,
        E::Int2 => D::I2,
        E::Float8E8M0 => D::F8E8M0,
        _ => return None,
    })
}

/// The ORT element type of a Kiln type (`None` for `Undefined`).
pub fn dtype_to_ort(d: DataType) -> Option<TensorElementType> {
    use DataType as D;
    use TensorElementType as E;
    Some(match d {
        D::Undefined => return None,
        D::F32 => E::Float32,
        D::U8 => E::Uint8,
        D::I8 => E::Int8,
        D::U16 => E::Uint16,
        D::I16 => E::Int16,
        D::I32 => E::Int32,
        D::I64 => E::Int64,
        D::String => E::String,
        D::Bool => E::Bool,
        D::F16 => E::Float16,
        D::F64 => E::Float64,
        D::U32 => E::Uint32,
        D::U64 => E::Uint64,
        D::C64 => E::Complex64,
        D::C128 => E::Complex128,
        D::BF16 => E::Bfloat16,
        D::F8E4M3FN => E::Float8E4M3FN,
        D::F8E4M3FNUZ => E::Float8E4M3FNUZ,
        D::F8E5M2 => E::Float8E5M2,
        D::F8E5M2FNUZ => E::Float8E5M2FNUZ,
        D::U4 => E::Uint4,
        D::I4 => E::Int4,
        D::F4E2M1 => E::Float4E2M1,
        D::F8E8M0 => E::Float8E8M0,
        D::U2 => E::Uint2,
        D::I2 => E::Int2,
    })
}

fn value_type(t: &OrtValueType) -> ValueType {
    match t {
        OrtValueType::Tensor { ty, shape, .. } => match dtype_from_ort(*ty) {
            Some(dtype) => ValueType::Tensor { dtype, dims: shape.iter().map(|&d| (d >= 0).then_some(d)).collect() },
            None => ValueType::Unknown,
        },
        OrtValueType::Sequence(inner) => ValueType::Sequence(Box::new(value_type(inner))),
        OrtValueType::Optional(inner) => ValueType::Optional(Box::new(value_type(inner))),
        OrtValueType::Map { key, value } => match (dtype_from_ort(*key), dtype_from_ort(*value)) {
            (Some(key), Some(value)) => ValueType::Map { key, value },
            _ => ValueType::Unknown,
        },
    }
}

fn io_info(name: &str, t: &OrtValueType) -> IoInfo {
    IoInfo { name: name.to_string(), ty: value_type(t) }
}

/// One ONNX string element, passed to ORT as raw bytes (ONNX strings need not be UTF-8).
#[derive(Clone)]
struct OnnxString(Bytes);

impl Utf8Data for OnnxString {
    fn as_utf8_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn unsupported(name: &str, what: impl Into<String>) -> RuntimeError {
    RuntimeError::Unsupported { executor: NAME, what: what.into(), name: name.to_string() }
}

fn ort_err(name: &str, e: ::ort::Error) -> RuntimeError {
    RuntimeError::Run { executor: NAME, message: format!("value `{name}`: {}", e.message()) }
}

/// Convert an input; `None` for an absent optional (left out of the feed).
fn value_to_ort(name: &str, value: &Value) -> Result<Option<DynValue>, RuntimeError> {
    match value {
        Value::Tensor(t) => Ok(Some(tensor_to_ort(name, t)?.into_dyn())),
        Value::Sequence(items) => {
            if items.is_empty() {
                return Err(unsupported(name, "empty sequences as inputs (the C API needs an element to type them)"));
            }
            let mut tensors = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Tensor(t) => tensors.push(tensor_to_ort(name, t)?),
                    other => {
                        return Err(unsupported(name, format!("a sequence holding a {}", other.describe())));
                    }
                }
            }
            let seq = Sequence::<DynTensorValueType>::new(tensors).map_err(|e| ort_err(name, e))?;
            Ok(Some(seq.into_dyn()))
        }
        Value::Optional(None) => Ok(None),
        Value::Optional(Some(inner)) => value_to_ort(name, inner),
    }
}

fn tensor_to_ort(name: &str, t: &Tensor) -> Result<DynTensor, RuntimeError> {
    let ty = dtype_to_ort(t.dtype()).ok_or_else(|| unsupported(name, format!("element type {}", t.dtype())))?;
    let shape: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
    match t.data() {
        TensorData::Strings(strings) => {
            if strings.iter().any(|s| s.contains(&0)) {
                return Err(unsupported(name, "strings containing NUL bytes"));
            }
            let items: Vec<OnnxString> = strings.iter().cloned().map(OnnxString).collect();
            let tensor = ::ort::value::Tensor::from_string_array((shape, &items[..])).map_err(|e| ort_err(name, e))?;
            Ok(tensor.upcast())
        }
        TensorData::Packed(bytes) => {
            let mut tensor = DynTensor::new(&Allocator::default(), ty, shape).map_err(|e| ort_err(name, e))?;
            if !bytes.is_empty() {
                let size = tensor.size();
                if size != Some(bytes.len()) {
                    return Err(unsupported(
                        name,
                        format!("{} tensors of {} bytes (ONNX Runtime allocated {size:?})", t.dtype(), bytes.len()),
                    ));
                }
                let dst = tensor.data_ptr_mut().cast::<u8>();
                if dst.is_null() {
                    return Err(unsupported(name, "a tensor whose memory is not accessible"));
                }
                // SAFETY: ORT allocated exactly `bytes.len()` bytes on the CPU for this tensor
                // (checked above) and nothing else refers to the fresh tensor.
                unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
            }
            Ok(tensor)
        }
    }
}

fn value_from_ort(name: &str, value: DynValue) -> Result<Value, RuntimeError> {
    match value.dtype() {
        OrtValueType::Tensor { .. } => Ok(Value::Tensor(tensor_from_ort(name, value)?)),
        OrtValueType::Sequence(_) => {
            let items = value.try_extract_sequence::<DynValueTypeMarker>().map_err(|e| ort_err(name, e))?;
            items.into_iter().map(|v| value_from_ort(name, v)).collect::<Result<Vec<_>, _>>().map(Value::Sequence)
        }
        OrtValueType::Map { .. } => Err(unsupported(name, "map values")),
        OrtValueType::Optional(_) => Err(unsupported(name, "nested optional values")),
    }
}

/// An output's memory, kept alive by the ORT value that owns it: outputs become [`Bytes`]
/// without a copy (calibration reads every activation of every sample).
struct OrtBuffer {
    _value: DynValue,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the buffer is plain CPU memory owned by `_value` (itself `Send + Sync`), never
// written after the run returned it; only shared reads happen through `as_ref`.
unsafe impl Send for OrtBuffer {}
unsafe impl Sync for OrtBuffer {}

impl AsRef<[u8]> for OrtBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` CPU-accessible bytes of the tensor `_value` owns (checked
        // against ORT's size when built); ORT frees them only when the value is released.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

fn tensor_from_ort(name: &str, value: DynValue) -> Result<Tensor, RuntimeError> {
    let OrtValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(unsupported(name, "a non-tensor value"));
    };
    let dtype = dtype_from_ort(*ty).ok_or_else(|| unsupported(name, format!("element type {ty}")))?;
    let dims =
        shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<usize>, _>>().map_err(|_| {
            RuntimeError::Run { executor: NAME, message: format!("output `{name}` has shape {shape:?}") }
        })?;
    let bad_tensor =
        |e: crate::tensor::TensorError| RuntimeError::Run { executor: NAME, message: format!("output `{name}`: {e}") };
    if dtype == DataType::String {
        let strings = extract_strings(name, &value, &dims)?;
        return Tensor::from_strings(dims, strings).map_err(bad_tensor);
    }
    let (src, len) = {
        let tensor = value.view().downcast::<DynTensorValueType>().map_err(|e| ort_err(name, e))?;
        let count = element_count(&dims).ok_or_else(|| unsupported(name, format!("a tensor of shape {dims:?}")))?;
        let expected = dtype.storage_bytes(count).and_then(|n| usize::try_from(n).ok());
        let size = tensor.size();
        let Some(len) = expected.filter(|&n| size == Some(n)) else {
            return Err(RuntimeError::Run {
                executor: NAME,
                message: format!("output `{name}` has {size:?} bytes, {dtype}{dims:?} needs {expected:?}"),
            });
        };
        if len > 0 && !tensor.memory_info().is_cpu_accessible() {
            return Err(unsupported(name, "outputs left in device memory"));
        }
        (tensor.data_ptr().cast::<u8>(), len)
    };
    if len == 0 {
        return Tensor::new(dtype, dims, Bytes::new()).map_err(bad_tensor);
    }
    if src.is_null() {
        return Err(unsupported(name, "a tensor without data"));
    }
    let bytes = Bytes::from_owner(OrtBuffer { _value: value, ptr: src, len });
    Tensor::new(dtype, dims, bytes).map_err(bad_tensor)
}

/// String elements as raw bytes (ort's own extraction insists on UTF-8).
fn extract_strings(name: &str, value: &DynValue, dims: &[usize]) -> Result<Vec<Bytes>, RuntimeError> {
    let count = element_count(dims)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| unsupported(name, format!("a string tensor of shape {dims:?}")))?;
    let api = ::ort::api();
    let status_err = |status: ::ort::sys::OrtStatusPtr| {
        // SAFETY: the status comes straight from an ORT API call and is consumed once.
        unsafe { ::ort::Error::result_from_status(status) }.map_err(|e| ort_err(name, e))
    };
    let mut total = 0usize;
    // SAFETY: `value` is a live string tensor; ORT writes one `usize`.
    status_err(unsafe { (api.GetStringTensorDataLength)(value.ptr(), &mut total) })?;
    let mut data = vec![0u8; total];
    let mut offsets = vec![0usize; count];
    if count > 0 {
        // SAFETY: buffers have exactly the sizes passed; ORT fills them.
        status_err(unsafe {
            (api.GetStringTensorContent)(value.ptr(), data.as_mut_ptr().cast(), total, offsets.as_mut_ptr(), count)
        })?;
    }
    let data = Bytes::from(data);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let start = offsets[i];
        let end = offsets.get(i + 1).copied().unwrap_or(total);
        if start > end || end > total {
            return Err(RuntimeError::Run { executor: NAME, message: format!("output `{name}`: bad string offsets") });
        }
        out.push(data.slice(start..end));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testutil::*;
    use crate::runtime::{ErrorKind, init_ort};

    /// ORT tests need the library: they fail with the discovery message when it is missing.
    fn require_ort() {
        if let Err(e) = init_ort() {
            panic!("{e}");
        }
    }

    fn load_with(bytes: &[u8], config: &SessionConfig) -> Box<dyn Session> {
        require_ort();
        OrtExecutor.load(ModelSource::from_bytes(bytes), config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run the first data set of a conformance case and compare; `Err` carries the runtime's error.
    fn run_case(name: &str) -> Result<(), RuntimeError> {
        let (model, data) = read_case(name);
        let mut session = OrtExecutor.load(ModelSource::from_bytes(&model), &SessionConfig::default())?;
        let inputs = read_values(&data, "input", session.inputs());
        let expected = read_values(&data, "output", session.outputs());
        let got = session.run(&inputs, None)?;
        assert_eq!(got.len(), expected.len(), "{name}: output count");
        for ((gn, g), (wn, w)) in got.iter().zip(&expected) {
            assert_eq!(gn, wn);
            assert_close(&format!("{name}/{gn}"), g, w);
        }
        Ok(())
    }

    #[test]
    fn conformance_cases_match() {
        require_ort();
        for name in [
            "test_add",
            "test_conv_with_strides_padding",
            "test_gru_defaults",
            "test_strnormalizer_export_monday_casesensintive_nochangecase",
            "test_sequence_insert_at_back",
            "test_identity_sequence",
            "test_optional_get_element_optional_tensor",
            "test_optional_has_element_empty_optional_input",
            "test_if_opt",
            "test_cast_FLOAT_to_BFLOAT16",
            "test_cast_FLOAT_to_FLOAT16",
            "test_cast_FLOAT_to_FLOAT8E4M3FN",
            "test_string_concat",
            "test_regex_full_match_basic",
            "test_castlike_FLOAT_to_INT4",
            "test_cast_UINT4_to_FLOAT",
            "test_top_k",
            "test_and2d",
            "test_argmax_default_axis_example",
        ] {
            if let Err(e) = run_case(name) {
                panic!("{name}: {e}");
            }
        }
    }

    /// Every conformance case through the executor: the conversions hold for the whole suite.
    /// ORT 1.31.1 itself lacks kernels for some cases or deviates on a few (training ops,
    /// ImageDecoder, f4, locale-dependent StringNormalizer, DFT rounding…), hence a floor rather
    /// than all; an executor panic or a BadInput error would be Kiln's bug and fails outright.
    #[test]
    fn conformance_sweep() {
        require_ort();
        let mut names: Vec<String> = std::fs::read_dir(node_tests_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let (mut ok, mut failed) = (0, Vec::new());
        for n in &names {
            match std::panic::catch_unwind(|| run_case(n)) {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => {
                    assert_eq!(e.kind(), ErrorKind::Runtime, "{n}: {e}");
                    assert!(!matches!(e, RuntimeError::Panic { .. }), "{n}: {e}");
                    failed.push(n.clone());
                }
                Err(_) => failed.push(n.clone()),
            }
        }
        assert!(ok >= 1525, "{ok} of {} cases pass; failing: {failed:?}", names.len());
    }

    #[test]
    fn io_info_describes_the_model() {
        let (model, _) = read_case("test_conv_with_strides_padding");
        let session = load_with(&model, &SessionConfig::default());
        let x = &session.inputs()[0];
        assert_eq!(x.name, "x");
        assert_eq!(x.dtype(), Some(DataType::F32));
        assert_eq!(x.dims(), Some(&[Some(1), Some(1), Some(7), Some(5)][..]));
        let model = binary_model("Add", &[1.0, 2.0], None);
        let session = load_with(&model, &SessionConfig::default());
        assert_eq!(session.inputs()[0].dims(), Some(&[None][..]));
        let (model, _) = read_case("test_sequence_insert_at_back");
        let session = load_with(&model, &SessionConfig::default());
        assert!(matches!(session.inputs()[0].ty, ValueType::Sequence(_)), "{:?}", session.inputs());
    }

    #[test]
    fn bad_inputs_are_named() {
        let model = binary_model("Add", &[1.0, 2.0], None);
        let mut session = load_with(&model, &SessionConfig::default());
        let x = Tensor::from_slice(vec![2], &[1.0f32, 1.0]).unwrap();
        let err = session.run(&[("nope".into(), x.clone().into())], None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput);
        assert!(err.to_string().contains("`nope`") && err.to_string().contains("x"), "{err}");

        let err = session.run(&[], None).unwrap_err();
        assert!(matches!(&err, RuntimeError::MissingInput { name, .. } if name == "x"), "{err}");

        let ints = Tensor::from_slice(vec![2], &[1i64, 1]).unwrap();
        let err = session.run(&[("x".into(), ints.into())], None).unwrap_err();
        assert!(matches!(&err, RuntimeError::WrongDtype { name, .. } if name == "x"), "{err}");

        let err = session.run(&[("x".into(), x.clone().into())], Some(&["z".to_string()])).unwrap_err();
        assert!(matches!(&err, RuntimeError::UnknownOutput { name, .. } if name == "z"), "{err}");

        // A shape the model accepts by declaration but the kernel refuses is the runtime's error.
        let three = Tensor::from_slice(vec![3], &[1.0f32, 1.0, 1.0]).unwrap();
        let err = session.run(&[("x".into(), three.into())], None).unwrap_err();
        assert!(matches!(err, RuntimeError::Run { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Runtime);

        let out = session.run(&[("x".into(), x.into())], None).unwrap();
        assert_eq!(out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap(), vec![2.0, 3.0]);
    }

    #[test]
    fn garbage_model_is_rejected_with_orts_message() {
        require_ort();
        let err =
            OrtExecutor.load(ModelSource::from_bytes(b"this is not a model"), &SessionConfig::default()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Runtime);
        let RuntimeError::ModelRejected { message, .. } = &err else { panic!("{err}") };
        assert!(message.contains("protobuf") || message.contains("parse"), "{message}");
    }

    #[test]
    fn thread_counts_give_identical_outputs() {
        let (model, data) = read_case("test_gru_defaults");
        let mut outs = Vec::new();
        for threads in [1, 2] {
            let config = SessionConfig { intra_threads: Some(threads), ..SessionConfig::default() };
            let mut session = load_with(&model, &config);
            let inputs = read_values(&data, "input", session.inputs());
            outs.push(session.run(&inputs, None).unwrap());
        }
        assert_eq!(outs[0], outs[1]);
    }

    #[test]
    fn every_optimization_level_loads() {
        let (model, data) = read_case("test_conv_with_strides_padding");
        let expected = {
            let mut s = load_with(&model, &SessionConfig::default());
            let inputs = read_values(&data, "input", s.inputs());
            s.run(&inputs, None).unwrap()
        };
        for optimization in [OptLevel::Disabled, OptLevel::Basic, OptLevel::Extended, OptLevel::All] {
            let config = SessionConfig { optimization, deterministic: false, ..SessionConfig::default() };
            let mut s = load_with(&model, &config);
            let inputs = read_values(&data, "input", s.inputs());
            let got = s.run(&inputs, None).unwrap();
            assert_close("conv", &got[0].1, &expected[0].1);
        }
    }

    #[test]
    fn external_data_is_read_from_base_dir() {
        require_ort();
        let dir = tempfile::tempdir().unwrap();
        let w = [10.0f32, 20.0, 30.0];
        std::fs::write(dir.path().join("w.bin"), w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let model = binary_model("Mul", &w, Some("w.bin"));
        let source = ModelSource { bytes: &model, base_dir: Some(dir.path()) };
        let mut session = OrtExecutor.load(source, &SessionConfig::default()).unwrap();
        let x = Tensor::from_slice(vec![3], &[1.0f32, 2.0, 3.0]).unwrap();
        let out = session.run(&[("x".into(), x.into())], None).unwrap();
        assert_eq!(out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap(), vec![10.0, 40.0, 90.0]);

        // Without the folder the data cannot be found, and ORT says so.
        let other = tempfile::tempdir().unwrap();
        let source = ModelSource { bytes: &model, base_dir: Some(other.path()) };
        let err = OrtExecutor.load(source, &SessionConfig::default()).err().unwrap();
        assert!(matches!(err, RuntimeError::ModelRejected { .. }), "{err}");
    }

    #[test]
    fn files_load_with_their_external_data_and_outputs_outlive_the_session() {
        require_ort();
        let dir = tempfile::tempdir().unwrap();
        let w = [10.0f32, 20.0, 30.0];
        std::fs::write(dir.path().join("w.bin"), w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, binary_model("Mul", &w, Some("w.bin"))).unwrap();
        let mut session = OrtExecutor.load_file(&path, &SessionConfig::default()).unwrap();
        let x = Tensor::from_slice(vec![3], &[1.0f32, 2.0, 3.0]).unwrap();
        let first = session.run(&[("x".into(), x.clone().into())], None).unwrap();
        let second = session.run(&[("x".into(), x.into())], None).unwrap();
        // Outputs are the runtime's buffers: each run's are its own, and they stay readable
        // after the session is gone.
        drop(session);
        for out in [&first, &second] {
            assert_eq!(out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap(), vec![10.0, 40.0, 90.0]);
        }
        let (a, b) = (first[0].1.as_tensor().unwrap(), second[0].1.as_tensor().unwrap());
        assert_ne!(a.bytes().unwrap().as_ptr(), b.bytes().unwrap().as_ptr());

        let missing = OrtExecutor.load_file(&dir.path().join("none.onnx"), &SessionConfig::default()).err().unwrap();
        assert!(matches!(missing, RuntimeError::ModelRejected { .. }), "{missing}");
    }

    #[test]
    fn strings_keep_their_bytes() {
        // StringConcat does not insist on UTF-8, so raw bytes must come back as they went in.
        let (model, _) = read_case("test_string_concat");
        let mut session = load_with(&model, &SessionConfig::default());
        let names: Vec<String> = session.inputs().iter().map(|i| i.name.clone()).collect();
        let dims: Vec<usize> = session.inputs()[0].dims().unwrap().iter().map(|d| d.unwrap() as usize).collect();
        let count = dims.iter().product::<usize>();
        let a: Vec<Bytes> = (0..count).map(|i| Bytes::from(vec![0xff, b'a' + i as u8])).collect();
        let b: Vec<Bytes> =
            (0..count).map(|i| if i == 0 { Bytes::new() } else { Bytes::from_static(b"\xc3\xa9") }).collect();
        let inputs = [
            (names[0].clone(), Value::from(Tensor::from_strings(dims.clone(), a.clone()).unwrap())),
            (names[1].clone(), Value::from(Tensor::from_strings(dims.clone(), b.clone()).unwrap())),
        ];
        let out = session.run(&inputs, None).unwrap();
        let want: Vec<Bytes> = a.iter().zip(&b).map(|(x, y)| Bytes::from([&x[..], &y[..]].concat())).collect();
        assert_eq!(out[0].1.as_tensor().unwrap().strings().unwrap(), &want[..]);

        let mut with_nul = a;
        with_nul[0] = Bytes::from_static(b"a\0b");
        let nul = Tensor::from_strings(dims, with_nul).unwrap();
        let inputs = [(names[0].clone(), Value::from(nul)), inputs[1].clone()];
        let err = session.run(&inputs, None).unwrap_err();
        assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn gpu_providers_fail_loudly_without_the_feature_or_device() {
        let model = binary_model("Add", &[1.0], None);
        require_ort();
        for provider in [ExecutionProvider::Cuda { device_id: 0 }, ExecutionProvider::TensorRt { device_id: 0 }] {
            let config = SessionConfig { provider, ..SessionConfig::default() };
            let err = OrtExecutor.load(ModelSource::from_bytes(&model), &config).err().unwrap();
            assert!(matches!(err, RuntimeError::ProviderUnavailable { .. }), "{err}");
        }
    }
}
