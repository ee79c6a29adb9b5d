//! Calibration samples: readers that hand out one sample at a time, so a data set larger than
//! memory works, and the checks that tie a sample to the model's inputs.
//!
//! Every source is indexed (`len` + `read(i)`) rather than a one-shot iterator: sharding
//! (`i, i+n, i+2n…`), held-apart evaluation splits and repeated passes (one per group of
//! observed tensors) are then plain index arithmetic, and the order is fixed by the source
//! (sorted file names), never by the file system.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::Tensor;

mod folder;
mod split;
mod stacked;
mod synthetic;
mod validate;

pub use folder::{NpyFolders, NpzFolder, OnnxTestSets};
pub use split::{HeldApart, Subset, held_apart, shard};
pub use stacked::Stacked;
pub use synthetic::{Distribution, SYNTHETIC_WARNING, Synthetic, SyntheticSpec};
pub use validate::{DimSpec, InputSpec, model_inputs, validate};

/// One calibration sample: a value for each model input.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Where it came from (a file, a folder, `data.npz[3]`), named in errors.
    pub origin: String,
    pub inputs: Vec<(String, Tensor)>,
}

/// A set of samples read one at a time. Implementations are cheap to index: nothing but the
/// list of files (or a memory map) is held between reads.
pub trait SampleSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where sample `index` comes from, for messages.
    fn origin(&self, index: usize) -> String;

    /// Reads sample `index` (`index < len()`).
    fn read(&self, index: usize) -> Result<Sample, DataError>;

    /// One line saying what this source is (`64 .npz files in data/`).
    fn describe(&self) -> String;
}

/// A shareable sample source.
pub type SharedSource = Arc<dyn SampleSource>;

/// Why calibration data could not be read or does not fit the model. Every variant names the
/// file (or sample) and, where one is involved, the input.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error(transparent)]
    Npy(#[from] kiln_compiler::npy::NpyError),
    #[error("{file}: no calibration samples found: {hint}")]
    Empty { file: String, hint: String },
    #[error("{file}: input `{input}` of the model is missing")]
    MissingInput { file: String, input: String },
    #[error("{file}: `{input}` is not an input of the model (its inputs: {})", .known.join(", "))]
    UnknownInput { file: String, input: String, known: Vec<String> },
    #[error("{file}: input `{input}` has type {actual}, the model expects {expected}")]
    WrongDtype { file: String, input: String, expected: DataType, actual: DataType },
    #[error("{file}: input `{input}` has shape {actual:?}, the model expects {expected}")]
    WrongShape { file: String, input: String, expected: String, actual: Vec<usize> },
    #[error("{file}: input `{input}` has {dim} = {actual} but input `{other}` has {dim} = {expected}")]
    InconsistentDim { file: String, input: String, other: String, dim: String, expected: usize, actual: usize },
    #[error("{what}")]
    Config { what: String },
}

impl DataError {
    pub(crate) fn read(file: impl fmt::Display, message: impl fmt::Display) -> DataError {
        DataError::Read { file: file.to_string(), message: message.to_string() }
    }
}

/// Opens calibration data, recognizing the layout:
/// - a file `*.npz` or `*.safetensors`: arrays with a leading sample axis ([`Stacked`]);
/// - a folder holding `test_data_set_N/` folders: ONNX test data ([`OnnxTestSets`]);
/// - a folder of `*.npz` files, one sample each ([`NpzFolder`]);
/// - a folder of sub-folders, each with one `<input>.npy` per input ([`NpyFolders`]).
///
/// `inputs` (the model's) tells [`Stacked`] whether the sample axis is kept or dropped, and
/// [`OnnxTestSets`] which input an unnamed `input_N.pb` is.
pub fn open(path: &Path, inputs: &[InputSpec]) -> Result<SharedSource, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::read(path.display(), e))?;
    if meta.is_file() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        return match ext {
            "npz" => Ok(Arc::new(Stacked::open_npz(path, inputs)?)),
            "safetensors" => Ok(Arc::new(Stacked::open_safetensors(path, inputs)?)),
            _ => Err(DataError::read(
                path.display(),
                "expected a folder of samples, or a .npz / .safetensors file whose arrays have a leading sample axis",
            )),
        };
    }
    let entries = folder::sorted_entries(path)?;
    if entries.iter().any(|(name, is_dir)| *is_dir && name.starts_with("test_data_set_")) {
        return Ok(Arc::new(OnnxTestSets::open(path, inputs)?));
    }
    let npz = entries.iter().filter(|(n, d)| !d && n.ends_with(".npz")).count();
    let dirs = entries.iter().filter(|(_, d)| *d).count();
    match (npz, dirs) {
        (0, 0) => Err(DataError::Empty {
            file: path.display().to_string(),
            hint: "expected .npz files (one per sample), sub-folders of <input>.npy files, or test_data_set_N folders"
                .into(),
        }),
        (_, 0) => Ok(Arc::new(NpzFolder::open(path)?)),
        (0, _) => Ok(Arc::new(NpyFolders::open(path)?)),
        _ => Err(DataError::read(
            path.display(),
            "the folder mixes .npz files and sub-folders; keep one layout per folder",
        )),
    }
}
