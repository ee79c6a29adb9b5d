//! Executors: run serialized ONNX models on named inputs.
//!
//! Executors work on model bytes (the IR serializes a graph to ONNX and hands the bytes over), so
//! this module knows nothing of the IR. ONNX Runtime ([`OrtExecutor`]) is the primary
//! executor; tract ([`TractExecutor`], cargo feature `tract`) is a pure-Rust cross-check.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::dtype::DataType;
use crate::tensor::Tensor;

pub mod discovery;
pub mod ort;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(feature = "tract")]
pub mod tract;

pub use self::ort::OrtExecutor;
#[cfg(feature = "tract")]
pub use self::tract::TractExecutor;
pub use discovery::{find_ort_library, init_ort};

/// An ONNX value as conformance tests feed and expect it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Tensor(Tensor),
    /// A sequence of values (ONNX only allows tensors or maps as elements).
    Sequence(Vec<Value>),
    /// An optional value: `None` is an absent value of the declared type.
    Optional(Option<Box<Value>>),
}

impl Value {
    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A short description for error messages (`tensor f32[2, 3]`, `sequence of 4`, …).
    pub fn describe(&self) -> String {
        match self {
            Value::Tensor(t) => format!("tensor {}{:?}", t.dtype(), t.dims()),
            Value::Sequence(v) => format!("sequence of {}", v.len()),
            Value::Optional(None) => "optional (empty)".to_string(),
            Value::Optional(Some(v)) => format!("optional ({})", v.describe()),
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Tensor(t)
    }
}

/// A serialized model and where its external data files are resolved.
#[derive(Debug, Clone, Copy)]
pub struct ModelSource<'a> {
    /// ONNX `ModelProto` bytes.
    pub bytes: &'a [u8],
    /// Folder that `external_data` locations are relative to; `None` when the model has none.
    pub base_dir: Option<&'a Path>,
}

impl<'a> ModelSource<'a> {
    /// A self-contained model (no external data).
    pub fn from_bytes(bytes: &'a [u8]) -> ModelSource<'a> {
        ModelSource { bytes, base_dir: None }
    }
}

/// Graph optimization level of the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptLevel {
    /// No graph rewrites: what runs is what Kiln wrote (used for validation).
    Disabled,
    Basic,
    Extended,
    #[default]
    All,
}

/// Which hardware backend a session runs on. GPU providers need the `cuda` / `tensorrt` cargo
/// features and a GPU build of ONNX Runtime; registration failures are errors, never a silent
/// fallback to the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda {
        device_id: i32,
    },
    TensorRt {
        device_id: i32,
    },
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda { device_id } => write!(f, "cuda:{device_id}"),
            ExecutionProvider::TensorRt { device_id } => write!(f, "tensorrt:{device_id}"),
        }
    }
}

/// How a session is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Threads inside one operator; `None` lets the runtime choose.
    pub intra_threads: Option<usize>,
    pub optimization: OptLevel,
    /// Ask for deterministic kernels (ORT `SetDeterministicCompute`): same inputs, same bits.
    pub deterministic: bool,
    pub provider: ExecutionProvider,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            intra_threads: None,
            optimization: OptLevel::All,
            deterministic: true,
            provider: ExecutionProvider::Cpu,
        }
    }
}

impl SessionConfig {
    /// A session whose numbers decide what goes into an artifact (calibration statistics,
    /// validation metrics): one intra-op thread. ONNX Runtime's CPU kernels split some work
    /// differently by thread count (seen on a 1x1 Conv of the cnn fixture: the last bits of its
    /// output changed between 1 and 4 threads), which would move a calibrated range by an ulp
    /// and change the artifact's bytes. Kiln parallelizes around such sessions instead.
    pub fn reproducible(optimization: OptLevel) -> SessionConfig {
        SessionConfig { intra_threads: Some(1), optimization, ..SessionConfig::default() }
    }
}

/// The type of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType {
    /// A tensor; `None` dims are dynamic (or unknown rank entries).
    Tensor {
        dtype: DataType,
        dims: Vec<Option<i64>>,
    },
    Sequence(Box<ValueType>),
    Optional(Box<ValueType>),
    Map {
        key: DataType,
        value: DataType,
    },
    /// A type this executor cannot describe.
    Unknown,
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Tensor { dtype, dims } => {
                write!(f, "{dtype}[")?;
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match d {
                        Some(d) => write!(f, "{d}")?,
                        None => f.write_str("?")?,
                    }
                }
                f.write_str("]")
            }
            ValueType::Sequence(t) => write!(f, "sequence<{t}>"),
            ValueType::Optional(t) => write!(f, "optional<{t}>"),
            ValueType::Map { key, value } => write!(f, "map<{key}, {value}>"),
            ValueType::Unknown => f.write_str("unknown"),
        }
    }
}

/// A model input or output as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoInfo {
    pub name: String,
    pub ty: ValueType,
}

impl IoInfo {
    /// Element type, if this is a tensor.
    pub fn dtype(&self) -> Option<DataType> {
        match &self.ty {
            ValueType::Tensor { dtype, .. } => Some(*dtype),
            _ => None,
        }
    }

    /// Dimensions (`None` = dynamic), if this is a tensor.
    pub fn dims(&self) -> Option<&[Option<i64>]> {
        match &self.ty {
            ValueType::Tensor { dims, .. } => Some(dims),
            _ => None,
        }
    }
}

/// Whether an error is the caller's fault (bad input: CLI exit 2) or the runtime's (exit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadInput,
    Runtime,
}

/// Why an executor could not load or run a model.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library {file} not found; tried:\n{}\nrun `cargo xtask setup`, or set KILN_ORT_LIB to the library's path",
        .tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n")
    )]
    LibraryNotFound { file: String, tried: Vec<String> },
    #[error("environment variable {var} points to {}, which does not exist", .path.display())]
    LibraryEnvMissing { var: String, path: PathBuf },
    #[error("could not load the ONNX Runtime library {}: {message}", .path.display())]
    LibraryLoad { path: PathBuf, message: String },
    #[error("{executor} rejected the model: {message}")]
    ModelRejected { executor: &'static str, message: String },
    #[error("could not configure the {executor} session: {message}")]
    Config { executor: &'static str, message: String },
    #[error("execution provider {provider} is not available: {message}")]
    ProviderUnavailable { provider: String, message: String },
    #[error("missing input `{name}` (expected {expected})")]
    MissingInput { name: String, expected: String },
    #[error("unknown input `{name}`; the model's inputs are: {}", .known.join(", "))]
    UnknownInput { name: String, known: Vec<String> },
    #[error("input `{name}` given twice")]
    DuplicateInput { name: String },
    #[error("unknown output `{name}`; the model's outputs are: {}", .known.join(", "))]
    UnknownOutput { name: String, known: Vec<String> },
    #[error("input `{name}` has type {actual}, the model expects {expected}")]
    WrongDtype { name: String, expected: String, actual: String },
    #[error("input `{name}` has shape {actual:?}, the model expects {expected}")]
    WrongShape { name: String, expected: String, actual: Vec<usize> },
    #[error("input `{name}` is a {actual}, the model expects {expected}")]
    WrongKind { name: String, expected: String, actual: String },
    #[error("{executor} does not support {what} (value `{name}`)")]
    Unsupported { executor: &'static str, what: String, name: String },
    #[error("{executor} failed to run the model: {message}")]
    Run { executor: &'static str, message: String },
    #[error("{executor} panicked while {during}: {message}")]
    Panic { executor: &'static str, during: String, message: String },
}

impl RuntimeError {
    /// Whether the caller fed something wrong or the runtime failed.
    pub fn kind(&self) -> ErrorKind {
        use RuntimeError::*;
        match self {
            MissingInput { .. }
            | UnknownInput { .. }
            | DuplicateInput { .. }
            | UnknownOutput { .. }
            | WrongDtype { .. }
            | WrongShape { .. }
            | WrongKind { .. } => ErrorKind::BadInput,
            LibraryNotFound { .. }
            | LibraryEnvMissing { .. }
            | LibraryLoad { .. }
            | ModelRejected { .. }
            | Config { .. }
            | ProviderUnavailable { .. }
            | Unsupported { .. }
            | Run { .. }
            | Panic { .. } => ErrorKind::Runtime,
        }
    }
}

/// Something that loads models into runnable sessions.
pub trait Executor: Send + Sync {
    /// Short name used in reports and errors (`onnxruntime`, `tract`).
    fn name(&self) -> &'static str;
    fn load(&self, model: ModelSource<'_>, config: &SessionConfig) -> Result<Box<dyn Session>, RuntimeError>;
}

/// A loaded model. `run` takes `&mut self` because ONNX Runtime's `Run` is not safe to call
/// concurrently on one session.
pub trait Session: Send {
    fn inputs(&self) -> &[IoInfo];
    fn outputs(&self) -> &[IoInfo];
    /// Run on named inputs; returns the requested outputs (all graph outputs when `None`) in the
    /// order requested (or graph order).
    fn run(
        &mut self,
        inputs: &[(String, Value)],
        output_names: Option<&[String]>,
    ) -> Result<Vec<(String, Value)>, RuntimeError>;
}

/// Check inputs against the model's declared inputs before the runtime sees them, so errors name
/// the input. Optional-typed inputs may be left out.
pub(crate) fn check_inputs(declared: &[IoInfo], inputs: &[(String, Value)]) -> Result<(), RuntimeError> {
    for (i, (name, value)) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|(n, _)| n == name) {
            return Err(RuntimeError::DuplicateInput { name: name.clone() });
        }
        let Some(info) = declared.iter().find(|d| &d.name == name) else {
            return Err(RuntimeError::UnknownInput {
                name: name.clone(),
                known: declared.iter().map(|d| d.name.clone()).collect(),
            });
        };
        check_value(name, &info.ty, value)?;
    }
    for info in declared {
        if matches!(info.ty, ValueType::Optional(_)) {
            continue;
        }
        if !inputs.iter().any(|(n, _)| n == &info.name) {
            return Err(RuntimeError::MissingInput { name: info.name.clone(), expected: info.ty.to_string() });
        }
    }
    Ok(())
}

fn check_value(name: &str, expected: &ValueType, value: &Value) -> Result<(), RuntimeError> {
    let wrong_kind =
        || RuntimeError::WrongKind { name: name.to_string(), expected: expected.to_string(), actual: value.describe() };
    match (expected, value) {
        (ValueType::Unknown, _) => Ok(()),
        (ValueType::Tensor { dtype, dims }, Value::Tensor(t)) => {
            if t.dtype() != *dtype {
                return Err(RuntimeError::WrongDtype {
                    name: name.to_string(),
                    expected: expected.to_string(),
                    actual: t.dtype().to_string(),
                });
            }
            let fits = dims.is_empty() && t.rank() == 0
                || dims.len() == t.rank()
                    && dims.iter().zip(t.dims()).all(|(d, &a)| d.is_none_or(|d| d < 0 || d as u64 == a as u64));
            // A declared rank of 0 with no dims may also mean "unknown rank" for some runtimes;
            // only a declared non-empty shape is enforced on rank.
            if !fits && !dims.is_empty() {
                return Err(RuntimeError::WrongShape {
                    name: name.to_string(),
                    expected: expected.to_string(),
                    actual: t.dims().to_vec(),
                });
            }
            Ok(())
        }
        (ValueType::Sequence(elem), Value::Sequence(items)) => {
            items.iter().try_for_each(|v| check_value(name, elem, v))
        }
        (ValueType::Optional(inner), Value::Optional(v)) => match v {
            Some(v) => check_value(name, inner, v),
            None => Ok(()),
        },
        // A present value may be passed where an optional is declared.
        (ValueType::Optional(inner), v) => check_value(name, inner, v),
        _ => Err(wrong_kind()),
    }
}

/// The outputs to return: all declared ones, or the requested ones (each must exist).
pub(crate) fn select_outputs(declared: &[IoInfo], requested: Option<&[String]>) -> Result<Vec<String>, RuntimeError> {
    match requested {
        None => Ok(declared.iter().map(|d| d.name.clone()).collect()),
        Some(names) => {
            for n in names {
                if !declared.iter().any(|d| &d.name == n) {
                    return Err(RuntimeError::UnknownOutput {
                        name: n.clone(),
                        known: declared.iter().map(|d| d.name.clone()).collect(),
                    });
                }
            }
            Ok(names.to_vec())
        }
    }
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, ty: ValueType) -> IoInfo {
        IoInfo { name: name.to_string(), ty }
    }

    #[test]
    fn input_checks_name_the_input() {
        let declared = vec![
            info("x", ValueType::Tensor { dtype: DataType::F32, dims: vec![None, Some(3)] }),
            info("o", ValueType::Optional(Box::new(ValueType::Tensor { dtype: DataType::I64, dims: vec![] }))),
        ];
        let good = Tensor::from_slice(vec![2, 3], &[0f32; 6]).unwrap();
        assert!(check_inputs(&declared, &[("x".into(), good.clone().into())]).is_ok());

        let err = check_inputs(&declared, &[]).unwrap_err();
        assert!(matches!(&err, RuntimeError::MissingInput { name, .. } if name == "x"));
        assert_eq!(err.kind(), ErrorKind::BadInput);

        let err = check_inputs(&declared, &[("y".into(), good.clone().into())]).unwrap_err();
        assert!(err.to_string().contains("`y`"), "{err}");
        assert!(err.to_string().contains("x, o"), "{err}");

        let wrong = Tensor::from_slice(vec![2, 4], &[0f32; 8]).unwrap();
        let err = check_inputs(&declared, &[("x".into(), wrong.into())]).unwrap_err();
        assert!(matches!(err, RuntimeError::WrongShape { .. }), "{err}");

        let wrong = Tensor::from_slice(vec![2, 3], &[0i32; 6]).unwrap();
        let err = check_inputs(&declared, &[("x".into(), wrong.into())]).unwrap_err();
        assert!(matches!(err, RuntimeError::WrongDtype { .. }), "{err}");

        let err = check_inputs(&declared, &[("x".into(), Value::Sequence(vec![]))]).unwrap_err();
        assert!(matches!(err, RuntimeError::WrongKind { .. }), "{err}");

        let dup = [("x".to_string(), Value::from(good.clone())), ("x".to_string(), Value::from(good))];
        assert!(matches!(check_inputs(&declared, &dup), Err(RuntimeError::DuplicateInput { .. })));
    }

    #[test]
    fn output_selection() {
        let declared = vec![info("a", ValueType::Unknown), info("b", ValueType::Unknown)];
        assert_eq!(select_outputs(&declared, None).unwrap(), vec!["a", "b"]);
        assert_eq!(select_outputs(&declared, Some(&["b".to_string()])).unwrap(), vec!["b"]);
        let err = select_outputs(&declared, Some(&["c".to_string()])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput);
    }
}
