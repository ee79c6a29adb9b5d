//! Where a check's input samples come from: `.npz` files, ONNX `test_data_set_N` folders, or
//! seeded synthetic values from the models' declared inputs.

use std::path::{Path, PathBuf};

use kiln_compiler::DataType;
use kiln_compiler::ir::Type;
use kiln_compiler::npy::read_npz;
use kiln_compiler::onnx::read_value;
use kiln_compiler::rng::SplitMix64;
use kiln_compiler::runtime::{IoInfo, Value, ValueType};
use kiln_compiler::tensor::Tensor;

use super::CheckError;

/// A source of input samples, each a full set of named model inputs. The calibration crate's
/// readers can stand in for the loaders here.
pub trait Samples {
    /// What the samples are, for the report (`3 .npz files in data/`).
    fn describe(&self) -> String;
    /// Whether they are made up rather than read.
    fn synthetic(&self) -> bool {
        false
    }
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (`< len()`).
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError>;
}

/// Named values: one sample's inputs, or a model's outputs.
pub type Named = Vec<(String, Value)>;

/// A model input as the data loaders need it: its name and declared type (ONNX `.pb` values
/// are decoded by type, and named by position).
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub ty: Option<Type>,
}

/// One `.npz` file per sample, its keys the input names.
pub struct NpzFiles {
    files: Vec<PathBuf>,
    origin: String,
}

impl Samples for NpzFiles {
    fn describe(&self) -> String {
        format!("{} .npz file(s) in {}", self.files.len(), self.origin)
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let file = self.files.get(index).ok_or_else(|| CheckError::Data(format!("no sample {index}")))?;
        let arrays = read_npz(file).map_err(|e| CheckError::Data(e.to_string()))?;
        Ok(arrays.into_iter().map(|(name, t)| (name, Value::Tensor(t))).collect())
    }
}

/// ONNX test data: `test_data_set_N/input_K.pb`, the K-th file for the model's K-th input.
pub struct OnnxTestData {
    sets: Vec<Vec<PathBuf>>,
    inputs: Vec<InputSpec>,
    origin: String,
}

impl Samples for OnnxTestData {
    fn describe(&self) -> String {
        format!("{} ONNX test data set(s) in {}", self.sets.len(), self.origin)
    }
    fn len(&self) -> usize {
        self.sets.len()
    }
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let files = self.sets.get(index).ok_or_else(|| CheckError::Data(format!("no sample {index}")))?;
        if files.len() > self.inputs.len() {
            return Err(CheckError::Data(format!(
                "{}: {} input files, but the model has {} input(s)",
                files[0].parent().unwrap_or(Path::new(".")).display(),
                files.len(),
                self.inputs.len()
            )));
        }
        let mut sample = Vec::new();
        for (file, input) in files.iter().zip(&self.inputs) {
            let value = read_value(file, input.ty.as_ref()).map_err(|e| CheckError::Data(e.to_string()))?;
            sample.push((input.name.clone(), value));
        }
        Ok(sample)
    }
}

/// The index in a name like `input_12.pb` or `test_data_set_3`.
fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

fn numbered_entries(dir: &Path, prefix: &str, suffix: &str, dirs: bool) -> Result<Vec<PathBuf>, CheckError> {
    let io = |e: std::io::Error| CheckError::Data(format!("{}: {e}", dir.display()));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if path.is_dir() != dirs {
            continue;
        }
        if let Some(n) = path.file_name().and_then(|n| n.to_str()).and_then(|n| numbered(n, prefix, suffix)) {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Opens `--data`: a `.npz` file (one sample), a folder of `.npz` files, a folder of ONNX
/// `test_data_set_N` folders, or one such folder (`input_K.pb` files).
pub fn open_data(path: &Path, inputs: &[InputSpec]) -> Result<Box<dyn Samples>, CheckError> {
    let origin = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| CheckError::Data(format!("{origin}: {e}")))?;
    if meta.is_file() {
        return if path.extension().is_some_and(|e| e == "npz") {
            Ok(Box::new(NpzFiles { files: vec![path.to_path_buf()], origin }))
        } else {
            Err(CheckError::Data(format!("{origin}: expected a .npz file or a folder of samples")))
        };
    }
    let io = |e: std::io::Error| CheckError::Data(format!("{origin}: {e}"));
    let mut npz: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "npz") {
            npz.push(p);
        }
    }
    if !npz.is_empty() {
        npz.sort();
        return Ok(Box::new(NpzFiles { files: npz, origin }));
    }
    let mut sets = Vec::new();
    for dir in numbered_entries(path, "test_data_set_", "", true)? {
        sets.push(numbered_entries(&dir, "input_", ".pb", false)?);
    }
    if sets.is_empty() {
        let here = numbered_entries(path, "input_", ".pb", false)?;
        if !here.is_empty() {
            sets.push(here);
        }
    }
    if sets.is_empty() {
        return Err(CheckError::Data(format!(
            "{origin}: no samples found (expected .npz files, one sample each with the input names as keys, \
             or ONNX test_data_set_N/input_K.pb folders)"
        )));
    }
    Ok(Box::new(OnnxTestData { sets, inputs: inputs.to_vec(), origin }))
}

/// Seeded random inputs from the model's declared input types; dynamic dimensions are 1.
/// Floats are standard normal, integers 0 or 1 (valid token ids, masks and flags alike, as
/// calibration's synthetic data), bools fair coins.
pub struct Synthetic {
    inputs: Vec<IoInfo>,
    count: usize,
    seed: u64,
}

impl Synthetic {
    pub fn new(inputs: &[IoInfo], count: usize, seed: u64) -> Synthetic {
        Synthetic { inputs: inputs.to_vec(), count, seed }
    }
}

fn synthesize(info: &IoInfo, rng: &mut SplitMix64) -> Result<Tensor, CheckError> {
    let ValueType::Tensor { dtype, dims } = &info.ty else {
        return Err(CheckError::Data(format!(
            "cannot make up a value for input `{}` of type {} (give --data)",
            info.name, info.ty
        )));
    };
    let dims: Vec<usize> = dims.iter().map(|d| d.filter(|&d| d >= 0).map_or(1, |d| d as usize)).collect();
    let n: usize = dims.iter().product();
    let err = |e: kiln_compiler::TensorError| CheckError::Data(format!("input `{}`: {e}", info.name));
    let int = |rng: &mut SplitMix64| (rng.next_u64() % 2) as i64;
    use DataType as D;
    let t = match dtype {
        D::F32 => Tensor::from_slice(dims, &(0..n).map(|_| rng.next_normal() as f32).collect::<Vec<_>>()),
        D::F64 => Tensor::from_slice(dims, &(0..n).map(|_| rng.next_normal()).collect::<Vec<_>>()),
        D::F16 => Tensor::from_slice(dims, &(0..n).map(|_| half::f16::from_f64(rng.next_normal())).collect::<Vec<_>>()),
        D::I64 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng)).collect::<Vec<_>>()),
        D::I32 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng) as i32).collect::<Vec<_>>()),
        D::U8 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng) as u8).collect::<Vec<_>>()),
        D::I8 => Tensor::from_slice(dims, &(0..n).map(|_| int(rng) as i8).collect::<Vec<_>>()),
        D::Bool => Tensor::from_slice(dims, &(0..n).map(|_| rng.next_u64() & 1 == 1).collect::<Vec<_>>()),
        other => {
            return Err(CheckError::Data(format!(
                "cannot make up a value for input `{}` of type {other} (give --data)",
                info.name
            )));
        }
    };
    t.map_err(err)
}

impl Samples for Synthetic {
    fn describe(&self) -> String {
        format!("{} synthetic sample(s), seed {}, dynamic dimensions set to 1", self.count, self.seed)
    }
    fn synthetic(&self) -> bool {
        true
    }
    fn len(&self) -> usize {
        self.count
    }
    fn load(&mut self, index: usize) -> Result<Vec<(String, Value)>, CheckError> {
        let mut rng = SplitMix64::new(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(index as u64));
        self.inputs
            .iter()
            .filter(|i| !matches!(i.ty, ValueType::Optional(_)))
            .map(|i| Ok((i.name.clone(), Value::Tensor(synthesize(i, &mut rng)?))))
            .collect()
    }
}
