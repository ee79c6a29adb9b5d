//! One `.npz` or `.safetensors` file whose arrays carry a leading sample axis. The file is
//! memory-mapped and each sample is a slice of it: nothing is copied, and only the pages of the
//! samples being read become resident.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kiln_compiler::Tensor;
use kiln_compiler::dtype::ElementSize;
use kiln_compiler::npy::decode_npy;
use kiln_compiler::safetensors::SafetensorsFile;

use super::{DataError, InputSpec, Sample, SampleSource};

/// Arrays sharing a leading sample axis of length `len`.
///
/// Whether a sample keeps that axis follows the model: an array of rank r+1 for an input of
/// rank r loses it (`x[i]`); an array of the input's own rank keeps it with size 1 (`x[i:i+1]`),
/// which is what a model with a batch axis expects.
#[derive(Debug)]
pub struct Stacked {
    path: PathBuf,
    /// (name, the whole array, keep the sample axis)
    arrays: Vec<(String, Tensor, bool)>,
    len: usize,
}

fn map_file(path: &Path) -> Result<Bytes, DataError> {
    let err = |e: io::Error| DataError::read(path.display(), e);
    let f = File::open(path).map_err(err)?;
    if f.metadata().map_err(err)?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: read-only map of a data file Kiln does not modify while it runs.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(err)?;
    Ok(Bytes::from_owner(map))
}

impl Stacked {
    /// A `.npz`: stored (uncompressed, as `np.savez` writes) members are sliced straight from
    /// the mapped archive; compressed members are inflated once into an unlinked temporary file
    /// that is then mapped, so memory stays bounded either way.
    pub fn open_npz(path: &Path, inputs: &[InputSpec]) -> Result<Stacked, DataError> {
        let file = path.display().to_string();
        let zip_err = |e: zip::result::ZipError| DataError::read(&file, format!("bad .npz archive: {e}"));
        let whole = map_file(path)?;
        let mut archive = zip::ZipArchive::new(io::Cursor::new(whole.clone())).map_err(zip_err)?;
        let mut arrays = Vec::new();
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(zip_err)?;
            if entry.is_dir() {
                continue;
            }
            let name = entry.name().map_err(zip_err)?.into_owned();
            let member = format!("{file}:{name}");
            let size = entry.size();
            let bytes = match (entry.compression(), entry.data_start()) {
                (zip::CompressionMethod::Stored, Some(start)) if entry.compressed_size() == size => {
                    let end = start.checked_add(size).filter(|&e| e <= whole.len() as u64);
                    let end =
                        end.ok_or_else(|| DataError::read(&member, "member extends past the end of the archive"))?;
                    whole.slice(start as usize..end as usize)
                }
                _ => {
                    let mut tmp = tempfile::tempfile().map_err(|e| DataError::read(&member, e))?;
                    let copied = io::copy(&mut (&mut entry).take(size.saturating_add(1)), &mut tmp)
                        .map_err(|e| DataError::read(&member, e))?;
                    if copied != size {
                        return Err(DataError::read(&member, format!("holds {copied} bytes but declares {size}")));
                    }
                    if size == 0 {
                        Bytes::new()
                    } else {
                        // SAFETY: the temporary file is unlinked and private to this process.
                        let map = unsafe { memmap2::Mmap::map(&tmp) }.map_err(|e| DataError::read(&member, e))?;
                        Bytes::from_owner(map)
                    }
                }
            };
            let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
            arrays.push((key, decode_npy(&member, bytes)?));
        }
        Stacked::new(path, arrays, inputs)
    }

    /// A `.safetensors` file (memory-mapped by the reader).
    pub fn open_safetensors(path: &Path, inputs: &[InputSpec]) -> Result<Stacked, DataError> {
        let st = SafetensorsFile::open(path).map_err(|e| DataError::read(path.display(), e))?;
        let arrays = st.tensors().map(|(n, t)| (n.to_string(), t)).collect();
        Stacked::new(path, arrays, inputs)
    }

    fn new(path: &Path, arrays: Vec<(String, Tensor)>, inputs: &[InputSpec]) -> Result<Stacked, DataError> {
        let file = path.display().to_string();
        let mut out = Vec::new();
        let mut len: Option<(usize, String)> = None;
        for (name, t) in arrays {
            let Some(&n) = t.dims().first() else {
                return Err(DataError::read(
                    &file,
                    format!("array `{name}` is a scalar; it needs a leading sample axis"),
                ));
            };
            if !matches!(t.dtype().element_size(), ElementSize::Bytes(b) if b > 0) {
                return Err(DataError::read(
                    &file,
                    format!("array `{name}` has type {}, which cannot be split", t.dtype()),
                ));
            }
            match &len {
                Some((l, first)) if *l != n => {
                    return Err(DataError::read(
                        &file,
                        format!("array `{name}` has {n} samples but `{first}` has {l}; the leading axes must agree"),
                    ));
                }
                Some(_) => {}
                None => len = Some((n, name.clone())),
            }
            let rank = inputs.iter().find(|i| i.name == name).and_then(|i| i.dims.as_ref()).map(Vec::len);
            let keep = rank == Some(t.rank());
            out.push((name, t, keep));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Stacked { path: path.to_path_buf(), arrays: out, len: len.map_or(0, |l| l.0) })
    }
}

impl SampleSource for Stacked {
    fn len(&self) -> usize {
        self.len
    }

    fn origin(&self, index: usize) -> String {
        format!("{}[{index}]", self.path.display())
    }

    fn read(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.len {
            return Err(super::folder::out_of_range(index, self.len));
        }
        let origin = self.origin(index);
        let mut inputs = Vec::with_capacity(self.arrays.len());
        for (name, t, keep) in &self.arrays {
            let rest = &t.dims()[1..];
            let bad = |m: String| DataError::read(&origin, m);
            let bytes = t.bytes().ok_or_else(|| bad(format!("array `{name}` holds strings")))?;
            let ElementSize::Bytes(size) = t.dtype().element_size() else {
                return Err(bad(format!("array `{name}` has type {}, which cannot be split", t.dtype())));
            };
            let per = rest.iter().product::<usize>() * size;
            let slice = bytes.slice(index * per..(index + 1) * per);
            let dims = if *keep { [&[1][..], rest].concat() } else { rest.to_vec() };
            let sample = Tensor::new(t.dtype(), dims, slice).map_err(|e| bad(e.to_string()))?;
            inputs.push((name.clone(), sample));
        }
        Ok(Sample { origin, inputs })
    }

    fn describe(&self) -> String {
        format!("{} samples stacked in {}", self.len, self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DimSpec;
    use kiln_compiler::DataType;
    use kiln_compiler::npy::encode_npy;
    use std::io::Write;

    fn write_npz(path: &Path, arrays: &[(&str, Tensor)], method: zip::CompressionMethod) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (n, t) in arrays {
            z.start_file(format!("{n}.npy"), opts).unwrap();
            z.write_all(&encode_npy(n, t).unwrap()).unwrap();
        }
        z.finish().unwrap();
    }

    fn specs() -> Vec<InputSpec> {
        vec![
            InputSpec { name: "x".into(), dtype: DataType::F32, dims: Some(vec![DimSpec::Any, DimSpec::Fixed(2)]) },
            InputSpec { name: "v".into(), dtype: DataType::I64, dims: Some(vec![DimSpec::Fixed(3)]) },
        ]
    }

    #[test]
    fn npz_samples_are_slices_stored_or_deflated() {
        let x = Tensor::from_slice(vec![4, 2], &[0f32, 1., 2., 3., 4., 5., 6., 7.]).unwrap();
        let v = Tensor::from_slice(vec![4, 3], &(0..12i64).collect::<Vec<_>>()).unwrap();
        for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("d.npz");
            write_npz(&path, &[("x", x.clone()), ("v", v.clone())], method);
            let src = Stacked::open_npz(&path, &specs()).unwrap();
            assert_eq!(src.len(), 4);
            let s = src.read(2).unwrap();
            assert!(s.origin.ends_with("d.npz[2]"));
            // Sorted by name; `x` keeps its axis (rank 2 input), `v` loses it (rank 1 input).
            assert_eq!(s.inputs[0].0, "v");
            assert_eq!(s.inputs[0].1.dims(), [3]);
            assert_eq!(s.inputs[0].1.to_vec::<i64>().unwrap(), vec![6, 7, 8]);
            assert_eq!(s.inputs[1].1.dims(), [1, 2]);
            assert_eq!(s.inputs[1].1.to_vec::<f32>().unwrap(), vec![4.0, 5.0]);
            crate::data::validate(&specs(), &s).unwrap();
            assert!(src.read(4).is_err());
        }
    }

    #[test]
    fn leading_axes_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let x = Tensor::from_slice(vec![2, 2], &[0f32; 4]).unwrap();
        let v = Tensor::from_slice(vec![3, 3], &[0i64; 9]).unwrap();
        write_npz(&path, &[("x", x), ("v", v)], zip::CompressionMethod::Stored);
        let err = Stacked::open_npz(&path, &specs()).unwrap_err();
        assert!(err.to_string().contains("leading axes must agree"), "{err}");
    }

    #[test]
    fn safetensors_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        let x = Tensor::from_slice(vec![3, 2], &[0f32, 1., 2., 3., 4., 5.]).unwrap();
        kiln_compiler::safetensors::write_safetensors(&path, &[("x", &x)], &Default::default()).unwrap();
        let src = Stacked::open_safetensors(&path, &specs()).unwrap();
        assert_eq!(src.len(), 3);
        assert_eq!(src.read(1).unwrap().inputs[0].1.to_vec::<f32>().unwrap(), vec![2.0, 3.0]);
    }
}
