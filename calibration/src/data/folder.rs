//! Folder layouts: one `.npz` per sample, one sub-folder of `<input>.npy` files per sample,
//! and ONNX `test_data_set_N/input_M.pb` folders.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use kiln_compiler::npy::{read_npy, read_npz};
use kiln_compiler::onnx::read_value;
use kiln_compiler::runtime::Value;

use super::{DataError, InputSpec, Sample, SampleSource};

/// The visible entries of a folder (`name`, `is_dir`), sorted by name bytes so that the order
/// is the same on every file system.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<(String, bool)>, DataError> {
    let err = |e: std::io::Error| DataError::read(dir.display(), e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(DataError::read(
                dir.join(entry.file_name()).display(),
                "file name is not valid UTF-8; rename it",
            ));
        };
        if name.starts_with('.') {
            continue;
        }
        // Follow links, so a folder of symlinked samples works.
        let is_dir = std::fs::metadata(entry.path()).map_err(err)?.is_dir();
        out.push((name, is_dir));
    }
    out.sort();
    Ok(out)
}

/// Orders names with embedded numbers numerically (`set_2` before `set_10`), then by bytes.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let key = |s: &str| {
        let digits: String = s.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        let stem_len = s.len() - digits.len();
        let n: Option<u128> = digits.chars().rev().collect::<String>().parse().ok();
        (s[..stem_len].to_string(), n)
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// A folder of `.npz` files, one sample each, keys = input names.
#[derive(Debug)]
pub struct NpzFolder {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl NpzFolder {
    pub fn open(dir: &Path) -> Result<NpzFolder, DataError> {
        let files: Vec<PathBuf> = sorted_entries(dir)?
            .into_iter()
            .filter(|(n, d)| !d && n.ends_with(".npz"))
            .map(|(n, _)| dir.join(n))
            .collect();
        Ok(NpzFolder { dir: dir.to_path_buf(), files })
    }
}

impl SampleSource for NpzFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn origin(&self, index: usize) -> String {
        self.files.get(index).map(|f| f.display().to_string()).unwrap_or_default()
    }

    fn read(&self, index: usize) -> Result<Sample, DataError> {
        let path = self.files.get(index).ok_or_else(|| out_of_range(index, self.files.len()))?;
        Ok(Sample { origin: path.display().to_string(), inputs: read_npz(path)? })
    }

    fn describe(&self) -> String {
        format!("{} .npz files in {}", self.files.len(), self.dir.display())
    }
}

/// A folder of sub-folders, one per sample, each holding one `<input>.npy` per input
/// (memory-mapped: no copy).
#[derive(Debug)]
pub struct NpyFolders {
    dir: PathBuf,
    samples: Vec<PathBuf>,
}

impl NpyFolders {
    pub fn open(dir: &Path) -> Result<NpyFolders, DataError> {
        let samples = sorted_entries(dir)?.into_iter().filter(|(_, d)| *d).map(|(n, _)| dir.join(n)).collect();
        Ok(NpyFolders { dir: dir.to_path_buf(), samples })
    }
}

impl SampleSource for NpyFolders {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn origin(&self, index: usize) -> String {
        self.samples.get(index).map(|f| f.display().to_string()).unwrap_or_default()
    }

    fn read(&self, index: usize) -> Result<Sample, DataError> {
        let dir = self.samples.get(index).ok_or_else(|| out_of_range(index, self.samples.len()))?;
        let mut inputs = Vec::new();
        for (name, is_dir) in sorted_entries(dir)? {
            if is_dir {
                continue;
            }
            let Some(input) = name.strip_suffix(".npy") else {
                return Err(DataError::read(
                    dir.join(&name).display(),
                    "expected only <input>.npy files in a sample folder",
                ));
            };
            inputs.push((input.to_string(), read_npy(&dir.join(&name))?));
        }
        if inputs.is_empty() {
            return Err(DataError::Empty {
                file: dir.display().to_string(),
                hint: "the sample folder has no .npy files".into(),
            });
        }
        Ok(Sample { origin: dir.display().to_string(), inputs })
    }

    fn describe(&self) -> String {
        format!("{} sample folders of .npy files in {}", self.samples.len(), self.dir.display())
    }
}

/// ONNX test data: `test_data_set_N/input_M.pb`, each a serialized `TensorProto`. A tensor
/// whose own name is an input of the model feeds that input; an unnamed one feeds the `M`-th.
#[derive(Debug)]
pub struct OnnxTestSets {
    dir: PathBuf,
    sets: Vec<PathBuf>,
    input_names: Vec<String>,
}

impl OnnxTestSets {
    pub fn open(dir: &Path, inputs: &[InputSpec]) -> Result<OnnxTestSets, DataError> {
        let mut names: Vec<String> = sorted_entries(dir)?
            .into_iter()
            .filter(|(n, d)| *d && n.starts_with("test_data_set_"))
            .map(|(n, _)| n)
            .collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        Ok(OnnxTestSets {
            dir: dir.to_path_buf(),
            sets: names.into_iter().map(|n| dir.join(n)).collect(),
            input_names: inputs.iter().map(|i| i.name.clone()).collect(),
        })
    }
}

impl SampleSource for OnnxTestSets {
    fn len(&self) -> usize {
        self.sets.len()
    }

    fn origin(&self, index: usize) -> String {
        self.sets.get(index).map(|f| f.display().to_string()).unwrap_or_default()
    }

    fn read(&self, index: usize) -> Result<Sample, DataError> {
        let dir = self.sets.get(index).ok_or_else(|| out_of_range(index, self.sets.len()))?;
        let mut files: Vec<(usize, String)> = Vec::new();
        for (name, is_dir) in sorted_entries(dir)? {
            let position = name.strip_prefix("input_").and_then(|r| r.strip_suffix(".pb")).and_then(|n| n.parse().ok());
            if let (false, Some(p)) = (is_dir, position) {
                files.push((p, name));
            }
        }
        files.sort();
        let mut inputs = Vec::new();
        for (position, name) in files {
            let path = dir.join(&name);
            let file = path.display().to_string();
            let value = read_value(&path, None).map_err(|e| DataError::read(&file, e))?;
            let Value::Tensor(t) = value else {
                return Err(DataError::read(&file, "expected a TensorProto"));
            };
            let own = t.hints.name.clone().filter(|n| self.input_names.contains(n));
            let input = match own.or_else(|| self.input_names.get(position).cloned()) {
                Some(n) => n,
                None => {
                    return Err(DataError::UnknownInput {
                        file,
                        input: format!("input #{position}"),
                        known: self.input_names.clone(),
                    });
                }
            };
            inputs.push((input, t.without_hints()));
        }
        Ok(Sample { origin: dir.display().to_string(), inputs })
    }

    fn describe(&self) -> String {
        format!("{} ONNX test data sets in {}", self.sets.len(), self.dir.display())
    }
}

pub(crate) fn out_of_range(index: usize, len: usize) -> DataError {
    DataError::Config { what: format!("sample {index} requested from a source of {len}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::Tensor;
    use kiln_compiler::npy::write_npy;

    #[test]
    fn natural_order() {
        let mut v = vec!["test_data_set_10", "test_data_set_2", "test_data_set_1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["test_data_set_1", "test_data_set_2", "test_data_set_10"]);
    }

    #[test]
    fn npy_folders_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for (s, v) in [("b", 2.0f32), ("a", 1.0), ("c", 3.0)] {
            let d = dir.path().join(s);
            std::fs::create_dir(&d).unwrap();
            write_npy(&d.join("x.npy"), &Tensor::from_slice(vec![1, 2], &[v, v]).unwrap()).unwrap();
            write_npy(&d.join("m.npy"), &Tensor::from_slice(vec![1], &[7i64]).unwrap()).unwrap();
        }
        std::fs::write(dir.path().join(".hidden"), b"").unwrap();
        let src = super::super::open(dir.path(), &[]).unwrap();
        assert_eq!(src.len(), 3);
        let first = src.read(0).unwrap();
        assert!(first.origin.ends_with("/a"), "{}", first.origin);
        assert_eq!(first.inputs[0].0, "m");
        assert_eq!(first.inputs[1].1.to_vec::<f32>().unwrap(), vec![1.0, 1.0]);
        assert_eq!(src.read(2).unwrap().inputs[1].1.to_vec::<f32>().unwrap(), vec![3.0, 3.0]);
        assert!(src.describe().starts_with("3 sample folders"));
    }

    #[test]
    fn empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = super::super::open(dir.path(), &[]).err().unwrap();
        assert!(matches!(err, DataError::Empty { .. }), "{err}");
    }
}

#[cfg(test)]
mod onnx_sets {
    use crate::data::{model_inputs, validate};

    #[test]
    fn conformance_test_data_reads_as_samples() {
        let cases = kiln_fixtures::conformance_cases().expect("conformance cases: run `cargo xtask fixtures`");
        let case = cases.iter().find(|c| c.name == "test_add").expect("test_add");
        let model = kiln_compiler::onnx::load_model(&case.model).unwrap();
        let inputs = model_inputs(&model).unwrap();
        let src = crate::data::open(&case.dir, &inputs).unwrap();
        assert_eq!(src.len(), case.data_sets.len());
        let s = src.read(0).unwrap();
        assert_eq!(s.inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        validate(&inputs, &s).unwrap();
    }

    #[test]
    fn npz_folder_reads_sorted_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.npz", "a.npz"] {
            let mut z = zip::ZipWriter::new(std::fs::File::create(dir.path().join(name)).unwrap());
            z.start_file("x.npy", zip::write::SimpleFileOptions::default()).unwrap();
            let t = kiln_compiler::Tensor::from_slice(vec![1], &[name.len() as f32]).unwrap();
            std::io::Write::write_all(&mut z, &kiln_compiler::npy::encode_npy("x", &t).unwrap()).unwrap();
            z.finish().unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let src = crate::data::open(dir.path(), &[]).unwrap();
        assert_eq!(src.len(), 2);
        assert!(src.origin(0).ends_with("a.npz") && src.origin(1).ends_with("b.npz"));
        assert_eq!(src.read(1).unwrap().inputs[0].0, "x");
    }
}
