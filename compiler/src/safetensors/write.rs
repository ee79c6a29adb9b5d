//! Writing one `.safetensors` file: deterministic, atomic and streaming.
//!
//! Order: tensors are laid out by dtype in the specification's order, widest first, then by
//! name — the reference writer's order, so for the same tensors and at most one metadata key
//! Kiln's file is byte-identical to the reference's (with more keys only the metadata's key
//! order differs: Kiln sorts it). The caller's order therefore never matters.
//!
//! Alignment: the header is padded with spaces so the buffer starts at a multiple of 8, and
//! widest-first order puts every tensor at a multiple of its element size (8, 4, 2 or 1)
//! without the holes that 8-byte alignment of every tensor would need, which the format
//! forbids.
//!
//! Atomicity: the file is written to a temporary file in the same folder, flushed, fsynced and
//! renamed over the target, so readers see the old file or the new one, never half of one.
//! Streaming: the header is built in memory (it is small), each tensor's bytes are written
//! straight from the tensor, which may itself be a slice of a memory map.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::format::MAX_HEADER_LEN;
use super::{SafetensorsError, StDtype};
use crate::tensor::Tensor;

/// Where a tensor was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WrittenTensor {
    pub name: String,
    /// Absolute offset in the file of the tensor's first byte.
    pub offset: u64,
    pub length: u64,
}

/// A file planned but not yet written: the padded header and the tensors in file order.
pub(crate) struct Layout<'a> {
    pub header: Vec<u8>,
    pub tensors: Vec<(&'a Tensor, WrittenTensor)>,
}

/// Write `tensors` and `metadata` to `path`; returns where each tensor went, in file order.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<WrittenTensor>, SafetensorsError> {
    let path = path.as_ref();
    let layout = plan(path, tensors, metadata)?;
    write_atomically(path, |w| {
        w.write_all(&(layout.header.len() as u64).to_le_bytes())?;
        w.write_all(&layout.header)?;
        for (tensor, _) in &layout.tensors {
            if let Some(bytes) = tensor.bytes() {
                w.write_all(bytes)?;
            }
        }
        Ok(())
    })?;
    Ok(layout.tensors.into_iter().map(|(_, w)| w).collect())
}

/// Check the tensors, order them and build the header.
pub(crate) fn plan<'a>(
    path: &Path,
    tensors: &[(&str, &'a Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Layout<'a>, SafetensorsError> {
    let p = || path.to_path_buf();
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut items = Vec::with_capacity(tensors.len());
    for &(name, tensor) in tensors {
        if name.is_empty() || name == "__metadata__" {
            return Err(SafetensorsError::ReservedName { path: p(), tensor: name.to_string() });
        }
        if !seen.insert(name) {
            return Err(SafetensorsError::DuplicateTensor { path: p(), tensor: name.to_string() });
        }
        let st = StDtype::from_data_type(tensor.dtype()).ok_or_else(|| SafetensorsError::UnwritableDtype {
            path: p(),
            tensor: name.to_string(),
            dtype: tensor.dtype(),
        })?;
        let length = tensor.bytes().map_or(0, |b| b.len() as u64);
        // Kiln pads an odd count of 4-bit elements to a whole byte; safetensors cannot say so.
        if st.storage_bytes(tensor.len()) != Some(length) {
            return Err(SafetensorsError::NotWholeBytes {
                path: p(),
                tensor: name.to_string(),
                dtype: st.tag().to_string(),
                elements: tensor.len(),
            });
        }
        items.push((name, st, tensor, length));
    }
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));

    let json_err = |e: serde_json::Error| SafetensorsError::BadTensor {
        path: p(),
        tensor: String::new(),
        message: format!("cannot encode header: {e}"),
    };
    let mut header = String::from("{");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":");
        header.push_str(&serde_json::to_string(metadata).map_err(json_err)?);
    }
    let mut placed = Vec::with_capacity(items.len());
    let mut cursor = 0u64;
    for (name, st, tensor, length) in items {
        if header.len() > 1 {
            header.push(',');
        }
        header.push_str(&serde_json::to_string(name).map_err(json_err)?);
        header.push_str(":{\"dtype\":\"");
        header.push_str(st.tag());
        header.push_str("\",\"shape\":");
        header.push_str(&serde_json::to_string(tensor.dims()).map_err(json_err)?);
        let end = cursor + length;
        header.push_str(&format!(",\"data_offsets\":[{cursor},{end}]}}"));
        placed.push((tensor, name, cursor, length));
        cursor = end;
    }
    header.push('}');
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let header_len = header.len() as u64;
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { path: p(), len: header_len, cap: MAX_HEADER_LEN });
    }
    let data_start = 8 + header_len;
    let tensors = placed
        .into_iter()
        .map(|(t, name, begin, length)| {
            (t, WrittenTensor { name: name.to_string(), offset: data_start + begin, length })
        })
        .collect();
    Ok(Layout { header, tensors })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write through `body` to a temporary file beside `path`, fsync it and rename it into place.
pub(crate) fn write_atomically(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), SafetensorsError> {
    let io = SafetensorsError::io(path);
    let file_name = path.file_name().ok_or_else(|| SafetensorsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path names no file"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".kiln-tmp-{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        body(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // Make the rename itself durable; some filesystems cannot sync a folder, which is harmless.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DataType;
    use crate::safetensors::format::{ReadOptions, SafetensorsFile};
    use bytes::Bytes;
    use sha2::Digest;

    /// One tensor of every writable type, `count` elements, with recognisable bytes.
    fn every_dtype(count: usize) -> Vec<(String, Tensor)> {
        StDtype::ALL
            .iter()
            .filter_map(|st| st.to_data_type().map(|d| (st, d)))
            .enumerate()
            .map(|(i, (st, d))| {
                let n = st.storage_bytes(count as u64).unwrap() as usize;
                let data: Vec<u8> = (0..n).map(|k| ((i * 16 + k) % 256) as u8).collect();
                (format!("t_{}", st.tag()), Tensor::new(d, vec![count], Bytes::from(data)).unwrap())
            })
            .collect()
    }

    fn refs(v: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
        v.iter().map(|(n, t)| (n.as_str(), t)).collect()
    }

    #[test]
    fn every_dtype_round_trips_and_is_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("all.safetensors");
        let tensors = every_dtype(6);
        assert_eq!(tensors.len(), 20);
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string()), ("a\"b".to_string(), "c\n".to_string())]);
        let written = write_safetensors(&p, &refs(&tensors), &meta).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.metadata(), &meta);
        assert_eq!(f.data_start() % 8, 0);
        for (name, t) in &tensors {
            let back = f.tensor(name).unwrap();
            assert_eq!(&back, t, "{name}");
            let w = written.iter().find(|w| &w.name == name).unwrap();
            let e = f.entry(name).unwrap();
            assert_eq!((w.offset, w.length), (e.offset, e.length));
            let size = match t.dtype().element_size() {
                crate::dtype::ElementSize::Bytes(n) => n as u64,
                _ => 1,
            };
            assert_eq!(w.offset % size, 0, "{name} misaligned");
        }
        // File order is the returned order.
        let order: Vec<_> = f.entries().map(|e| e.name.clone()).collect();
        assert_eq!(order, written.iter().map(|w| w.name.clone()).collect::<Vec<_>>());
        assert_eq!(order[0], "t_U64");
    }

    #[test]
    fn output_is_deterministic_and_order_independent() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = every_dtype(4);
        let mut reversed = refs(&tensors);
        reversed.reverse();
        let meta = BTreeMap::new();
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        write_safetensors(&a, &refs(&tensors), &meta).unwrap();
        write_safetensors(&b, &reversed, &meta).unwrap();
        let bytes_a = std::fs::read(&a).unwrap();
        assert_eq!(bytes_a, std::fs::read(&b).unwrap());
        // Re-writing what was read (tensors backed by the map of `a`) over `a` itself.
        let f = SafetensorsFile::open(&a).unwrap();
        let back: Vec<(String, Tensor)> = f.tensors().map(|(n, t)| (n.to_string(), t)).collect();
        write_safetensors(&a, &refs(&back), f.metadata()).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), bytes_a);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// Same tensors as a file written by the `safetensors` 0.8.0 Python package
    /// (`serialize` with metadata `{"format": "pt"}`, tensors named after torch dtypes in this
    /// order, tensor `i` holding bytes `(16 i + k) mod 256`); its SHA-256 is recorded here so
    /// that the test needs no Python.
    #[test]
    fn matches_the_reference_writer_byte_for_byte() {
        use DataType as D;
        let table = [
            ("bool", D::Bool, 1),
            ("uint8", D::U8, 1),
            ("int8", D::I8, 1),
            ("int16", D::I16, 2),
            ("uint16", D::U16, 2),
            ("float16", D::F16, 2),
            ("bfloat16", D::BF16, 2),
            ("int32", D::I32, 4),
            ("uint32", D::U32, 4),
            ("float32", D::F32, 4),
            ("float64", D::F64, 8),
            ("int64", D::I64, 8),
            ("uint64", D::U64, 8),
            ("complex64", D::C64, 8),
            ("float8_e5m2", D::F8E5M2, 1),
            ("float8_e4m3fn", D::F8E4M3FN, 1),
            ("float8_e8m0fnu", D::F8E8M0, 1),
            ("float8_e4m3fnuz", D::F8E4M3FNUZ, 1),
            ("float8_e5m2fnuz", D::F8E5M2FNUZ, 1),
            ("float4_e2m1fn_x2", D::F4E2M1, 1),
        ];
        let tensors: Vec<(String, Tensor)> = table
            .iter()
            .enumerate()
            .map(|(i, &(name, d, size))| {
                let data: Vec<u8> = (0..size * 3).map(|k| ((i * 16 + k) % 256) as u8).collect();
                let dims = if d == D::F4E2M1 { vec![1, 6] } else { vec![3] };
                (format!("t_{name}"), Tensor::new(d, dims, Bytes::from(data)).unwrap())
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("all.safetensors");
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&p, &refs(&tensors), &meta).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 1575);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            "593c827478313267e76e8a4db3de4b034a9da9726ceb1194c5161ae63488bc8e"
        );
        // And the reference writer's small file, read and written again.
        let tiny = crate::safetensors::format::tests::python_tiny();
        let f = SafetensorsFile::from_bytes("tiny", Bytes::from(tiny.clone()), &ReadOptions::default()).unwrap();
        let back: Vec<(String, Tensor)> = f.tensors().map(|(n, t)| (n.to_string(), t)).collect();
        let p = dir.path().join("tiny.safetensors");
        write_safetensors(&p, &refs(&back), f.metadata()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), tiny);
    }

    #[test]
    fn unwritable_tensors_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let meta = BTreeMap::new();
        let s = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"a")]).unwrap();
        let e = write_safetensors(&p, &[("s", &s)], &meta).unwrap_err();
        assert!(matches!(e, SafetensorsError::UnwritableDtype { dtype: DataType::String, .. }));
        for d in [DataType::I4, DataType::U4, DataType::I2, DataType::U2, DataType::C128] {
            let n = d.storage_bytes(4).unwrap() as usize;
            let t = Tensor::new(d, vec![4], Bytes::from(vec![0u8; n])).unwrap();
            let e = write_safetensors(&p, &[("w", &t)], &meta).unwrap_err();
            assert!(e.to_string().contains(&format!("\"w\" has type {d}")), "{e}");
        }
        let odd = Tensor::new(DataType::F4E2M1, vec![3], Bytes::from(vec![0u8; 2])).unwrap();
        let e = write_safetensors(&p, &[("w", &odd)], &meta).unwrap_err();
        assert!(matches!(e, SafetensorsError::NotWholeBytes { elements: 3, .. }));
        let t = Tensor::scalar(1.0f32);
        let e = write_safetensors(&p, &[("a", &t), ("a", &t)], &meta).unwrap_err();
        assert!(matches!(e, SafetensorsError::DuplicateTensor { .. }));
        let e = write_safetensors(&p, &[("__metadata__", &t)], &meta).unwrap_err();
        assert!(matches!(e, SafetensorsError::ReservedName { .. }));
        assert!(!p.exists());
        let e = write_safetensors(dir.path().join("no/such/dir/x.safetensors"), &[("a", &t)], &meta).unwrap_err();
        assert!(matches!(e, SafetensorsError::Io { .. }));
    }

    #[test]
    fn scalars_and_empty_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let s = Tensor::scalar(2.5f64);
        let e = Tensor::new(DataType::F32, vec![0, 4], Bytes::new()).unwrap();
        write_safetensors(&p, &[("s", &s), ("e", &e)], &BTreeMap::new()).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.tensor("s").unwrap(), s);
        assert_eq!(f.tensor("e").unwrap(), e);
        write_safetensors(&p, &[], &BTreeMap::new()).unwrap();
        assert!(SafetensorsFile::open(&p).unwrap().is_empty());
    }
}
