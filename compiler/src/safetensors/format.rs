//! Reading and validating one `.safetensors` file.
//!
//! [`SafetensorsFile::open`] memory-maps the file and checks everything the header claims
//! against the real file size before trusting any of it: nothing is allocated in proportion
//! to a claimed size, only to the header bytes actually present (at most [`MAX_HEADER_LEN`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};

use super::{SafetensorsError, StDtype};
use crate::dtype::DataType;
use crate::tensor::Tensor;

/// The largest header Kiln reads (the reference implementation's limit): a sane cap so that a
/// corrupt length cannot make the reader parse gigabytes of "JSON".
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// How strictly to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Accept buffer bytes that belong to no tensor, reporting them in
    /// [`SafetensorsFile::gaps`]. The specification requires a fully indexed buffer (holes
    /// could hide data), so this is off by default.
    pub allow_gaps: bool,
}

/// One tensor's place in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<usize>,
    /// Absolute offset of the tensor's first byte in the file (what ONNX external data's
    /// `offset` holds when it points into a safetensors file).
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Buffer bytes that belong to no tensor (absolute file offsets, `begin..end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub begin: u64,
    pub end: u64,
}

/// A validated safetensors file, its bytes shared (memory-mapped when opened from disk).
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    data_start: u64,
    /// In file order.
    entries: Vec<(TensorEntry, Tensor)>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    gaps: Vec<Gap>,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl SafetensorsFile {
    /// Map and validate a file with the default (strict) options.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile, SafetensorsError> {
        SafetensorsFile::open_with(path, &ReadOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<SafetensorsFile, SafetensorsError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(SafetensorsError::io(path))?;
        let size = file.metadata().map_err(SafetensorsError::io(path))?.len();
        if size < 8 {
            return Err(SafetensorsError::TooSmall { path: path.to_path_buf(), size });
        }
        // SAFETY: the map is read-only. Like every memory-mapping reader, Kiln assumes the file
        // is not truncated or rewritten while mapped (Kiln's own writer replaces files by
        // rename, which leaves existing maps intact).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(SafetensorsError::io(path))?;
        let mut st = SafetensorsFile::from_bytes(path, Bytes::from_owner(map), options)?;
        // Writers copy these tensors from the file rather than through the map (small RSS).
        let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        for (e, t) in &mut st.entries {
            let region = crate::tensor::FileRegion { path: real.clone(), offset: e.offset, length: e.length };
            *t = t.clone().with_source(region);
        }
        Ok(st)
    }

    /// Validate a whole file already in memory; `path` only labels errors.
    pub fn from_bytes(
        path: impl Into<PathBuf>,
        bytes: Bytes,
        options: &ReadOptions,
    ) -> Result<SafetensorsFile, SafetensorsError> {
        let path = path.into();
        let size = bytes.len() as u64;
        let Some(len_bytes) = bytes.get(..8) else {
            return Err(SafetensorsError::TooSmall { path, size });
        };
        let mut le = [0u8; 8];
        le.copy_from_slice(len_bytes);
        let header_len = u64::from_le_bytes(le);
        if header_len > MAX_HEADER_LEN {
            return Err(SafetensorsError::HeaderTooLarge { path, len: header_len, cap: MAX_HEADER_LEN });
        }
        let available = size - 8;
        if header_len > available {
            return Err(SafetensorsError::HeaderPastEnd { path, len: header_len, available });
        }
        let data_start = 8 + header_len;
        let buffer_len = size - data_start;
        // Both fit in usize: they are at most the length of an in-memory buffer.
        let header = &bytes[8..data_start as usize];
        let text = std::str::from_utf8(header)
            .map_err(|e| SafetensorsError::HeaderNotUtf8 { path: path.clone(), valid_up_to: e.valid_up_to() })?;
        if !text.starts_with('{') {
            return Err(SafetensorsError::HeaderStart { path });
        }
        let raw: UniqueMap<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| SafetensorsError::HeaderJson { path: path.clone(), message: e.to_string() })?;
        if let Some(key) = raw.duplicate {
            return Err(SafetensorsError::DuplicateKey { path, key });
        }

        let mut metadata = BTreeMap::new();
        let mut parsed: Vec<(String, DataType, Vec<usize>, u64, u64)> = Vec::with_capacity(raw.entries.len());
        for (name, value) in raw.entries {
            if name == "__metadata__" {
                metadata = parse_metadata(&path, value)?;
                continue;
            }
            let entry = parse_entry(&path, &name, value, buffer_len)?;
            parsed.push((name, entry.0, entry.1, entry.2, entry.3));
        }

        // Overlaps and holes: walk the tensors in buffer order.
        parsed.sort_by(|a, b| (a.3, a.4, &a.0).cmp(&(b.3, b.4, &b.0)));
        let mut gaps = Vec::new();
        let mut cursor = 0u64;
        let mut last: Option<&str> = None;
        for (name, _, _, begin, end) in &parsed {
            if *begin < cursor {
                return Err(SafetensorsError::Overlap {
                    path,
                    tensor: name.clone(),
                    other: last.unwrap_or_default().to_string(),
                    begin: *begin,
                    other_end: cursor,
                });
            }
            if *begin > cursor {
                let gap = Gap { begin: data_start + cursor, end: data_start + begin };
                if !options.allow_gaps {
                    let after = last.map(str::to_string);
                    return Err(SafetensorsError::Gap { path, begin: gap.begin, end: gap.end, after });
                }
                gaps.push(gap);
            }
            // `end >= begin >= cursor` here, so the cursor only moves forward.
            cursor = *end;
            last = Some(name);
        }
        if cursor < buffer_len {
            let gap = Gap { begin: data_start + cursor, end: size };
            if !options.allow_gaps {
                let after = last.map(str::to_string);
                return Err(SafetensorsError::Gap { path, begin: gap.begin, end: gap.end, after });
            }
            gaps.push(gap);
        }

        let mut entries = Vec::with_capacity(parsed.len());
        let mut by_name = HashMap::with_capacity(parsed.len());
        for (name, dtype, dims, begin, end) in parsed {
            let (offset, end_abs) = (data_start + begin, data_start + end);
            let slice = bytes.slice(offset as usize..end_abs as usize);
            let tensor = Tensor::new(dtype, dims.clone(), slice).map_err(|e| SafetensorsError::BadTensor {
                path: path.clone(),
                tensor: name.clone(),
                message: e.to_string(),
            })?;
            by_name.insert(name.clone(), entries.len());
            entries.push((TensorEntry { name, dtype, dims, offset, length: end - begin }, tensor));
        }
        Ok(SafetensorsFile { path, bytes, data_start, entries, by_name, metadata, gaps })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Absolute offset of the byte buffer (8 + header length).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Holes accepted under [`ReadOptions::allow_gaps`].
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tensors' places, in file order.
    pub fn entries(&self) -> impl Iterator<Item = &TensorEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i].0)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The tensor, its bytes a zero-copy slice of the file.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.by_name.get(name).map(|&i| self.entries[i].1.clone())
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, Tensor)> {
        self.entries.iter().map(|(e, t)| (e.name.as_str(), t.clone()))
    }

    /// The tensor stored exactly at these absolute file bytes, as ONNX external data
    /// (`offset`, `length`) would name it.
    pub fn entry_at(&self, offset: u64, length: u64) -> Option<&TensorEntry> {
        let i = self.entries.partition_point(|(e, _)| e.offset < offset);
        self.entries[i..].iter().take_while(|(e, _)| e.offset == offset).map(|(e, _)| e).find(|e| e.length == length)
    }

    /// Any byte range of the file (zero-copy), or `None` if it does not lie inside it.
    pub fn range(&self, offset: u64, length: u64) -> Option<Bytes> {
        let end = offset.checked_add(length)?;
        if end > self.bytes.len() as u64 {
            return None;
        }
        Some(self.bytes.slice(offset as usize..end as usize))
    }

    /// The whole file.
    pub fn file_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

fn parse_metadata(path: &Path, value: serde_json::Value) -> Result<BTreeMap<String, String>, SafetensorsError> {
    let bad = |message: String| SafetensorsError::BadMetadata { path: path.to_path_buf(), message };
    match value {
        serde_json::Value::Null => Ok(BTreeMap::new()),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Err(bad(format!("value of {k:?} is {other}, not a string"))),
            })
            .collect(),
        other => Err(bad(format!("expected an object of strings, found {other}"))),
    }
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Validate one header entry against the buffer: (dtype, dims, begin, end), relative offsets.
fn parse_entry(
    path: &Path,
    name: &str,
    value: serde_json::Value,
    buffer_len: u64,
) -> Result<(DataType, Vec<usize>, u64, u64), SafetensorsError> {
    let p = || path.to_path_buf();
    let t = || name.to_string();
    let raw: RawEntry = serde_json::from_value(value).map_err(|e| SafetensorsError::BadEntry {
        path: p(),
        tensor: t(),
        message: e.to_string(),
    })?;
    let st = StDtype::from_tag(&raw.dtype).ok_or_else(|| SafetensorsError::UnknownDtype {
        path: p(),
        tensor: t(),
        dtype: raw.dtype.clone(),
    })?;
    let dtype = st.to_data_type().ok_or_else(|| SafetensorsError::UnsupportedDtype {
        path: p(),
        tensor: t(),
        dtype: raw.dtype.clone(),
        reason: "6-bit floats have no ONNX element type",
    })?;
    let overflow = || SafetensorsError::ShapeOverflow { path: p(), tensor: t(), shape: raw.shape.clone() };
    let count = raw.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
    let dims = raw.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>().map_err(|_| overflow())?;
    let expected = st.storage_bytes(count).ok_or_else(|| match count.checked_mul(st.bits()) {
        None => overflow(),
        Some(_) => {
            SafetensorsError::NotWholeBytes { path: p(), tensor: t(), dtype: raw.dtype.clone(), elements: count }
        }
    })?;
    let [begin, end] = raw.data_offsets;
    if end < begin {
        return Err(SafetensorsError::OffsetsReversed { path: p(), tensor: t(), begin, end });
    }
    if end > buffer_len {
        return Err(SafetensorsError::OffsetPastEnd { path: p(), tensor: t(), end, buffer_len });
    }
    if end - begin != expected {
        return Err(SafetensorsError::SizeMismatch {
            path: p(),
            tensor: t(),
            dtype: raw.dtype,
            shape: raw.shape,
            expected,
            actual: end - begin,
        });
    }
    Ok((dtype, dims, begin, end))
}

/// A JSON object read in order, remembering the first repeated key (serde's maps silently keep
/// the last value, which would let two readers of one file see different tensors).
pub(crate) struct UniqueMap<V> {
    pub entries: Vec<(String, V)>,
    pub duplicate: Option<String>,
}

impl<'de, V: DeserializeOwned> de::Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: DeserializeOwned> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                let mut duplicate = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<V>()?;
                    if !seen.insert(key.clone()) {
                        duplicate.get_or_insert(key);
                        continue;
                    }
                    entries.push((key, value));
                }
                Ok(UniqueMap { entries, duplicate })
            }
        }
        deserializer.deserialize_map(V2(PhantomData))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a file from a header string and a buffer, with no padding.
    fn raw_file(header: &str, buffer: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(buffer);
        out
    }

    fn read(bytes: Vec<u8>) -> Result<SafetensorsFile, SafetensorsError> {
        SafetensorsFile::from_bytes("test.safetensors", Bytes::from(bytes), &ReadOptions::default())
    }

    /// A file produced by the `safetensors` 0.8.0 Python package (padding and all).
    const PYTHON_TINY: &str = concat!(
        "f8000000000000007b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c2261223a7b",
        "226474797065223a22463332222c227368617065223a5b325d2c22646174615f6f666673657473223a5b302c38",
        "5d7d2c2262223a7b226474797065223a225538222c227368617065223a5b335d2c22646174615f6f6666736574",
        "73223a5b382c31315d7d2c2265223a7b226474797065223a224634222c227368617065223a5b325d2c22646174",
        "615f6f666673657473223a5b31312c31325d7d2c227a223a7b226474797065223a22424f4f4c222c2273686170",
        "65223a5b315d2c22646174615f6f666673657473223a5b31322c31335d7d7d0000c03f000000c00102032101",
    );

    pub(crate) fn python_tiny() -> Vec<u8> {
        hex::decode(PYTHON_TINY).unwrap()
    }

    #[test]
    fn reads_a_file_from_the_reference_writer() {
        let f = read(python_tiny()).unwrap();
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
        assert_eq!(f.data_start(), 8 + 0xf8);
        let a = f.tensor("a").unwrap();
        assert_eq!(a.to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(f.tensor("b").unwrap().to_vec::<u8>().unwrap(), vec![1, 2, 3]);
        let e = f.tensor("e").unwrap();
        assert_eq!((e.dtype(), e.dims()), (DataType::F4E2M1, &[2usize][..]));
        assert_eq!(e.bytes().unwrap().as_ref(), &[0x21]);
        assert_eq!(f.tensor("z").unwrap().to_vec::<bool>().unwrap(), vec![true]);
        let names: Vec<_> = f.entries().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "e", "z"]);
        let b = f.entry("b").unwrap();
        assert_eq!((b.offset, b.length), (0x100 + 8, 3));
        assert_eq!(f.entry_at(0x108, 3).unwrap().name, "b");
        assert!(f.entry_at(0x108, 2).is_none());
        assert_eq!(f.range(0x108, 3).unwrap().as_ref(), &[1, 2, 3]);
        assert!(f.range(0x108, 100).is_none());
        assert!(f.gaps().is_empty());
    }

    #[test]
    fn open_is_zero_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.safetensors");
        std::fs::write(&p, python_tiny()).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        let map = f.file_bytes().as_ptr_range();
        for (name, t) in f.tensors() {
            let b = t.bytes().unwrap();
            assert!(map.start <= b.as_ptr() && b.as_ptr() < map.end, "{name}");
            assert_eq!(b.as_ptr() as usize - map.start as usize, f.entry(name).unwrap().offset as usize);
        }
    }

    #[test]
    fn empty_file_and_empty_tensors() {
        let f = read(raw_file("{}", &[])).unwrap();
        assert!(f.is_empty());
        let f = read(raw_file(
            r#"{"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"b":{"dtype":"I8","shape":[],"data_offsets":[0,1]},"c":{"dtype":"F16","shape":[0],"data_offsets":[1,1]}}"#,
            &[7],
        ))
        .unwrap();
        assert_eq!(f.tensor("a").unwrap().dims(), &[0, 3]);
        assert_eq!(f.tensor("b").unwrap().to_vec::<i8>().unwrap(), vec![7]);
        assert!(f.tensor("c").unwrap().is_empty());
    }

    fn err(bytes: Vec<u8>) -> SafetensorsError {
        read(bytes).expect_err("must be rejected")
    }

    #[test]
    fn malformed_files_are_rejected() {
        use SafetensorsError as E;
        // Truncated: not even the length.
        assert!(matches!(err(vec![1, 0, 0]), E::TooSmall { size: 3, .. }));
        // Truncated: the reference file cut short in the buffer (its tensors no longer fit).
        let mut t = python_tiny();
        t.truncate(t.len() - 2);
        assert!(matches!(err(t), E::OffsetPastEnd { ref tensor, .. } if tensor == "e"));
        // Header length past the end.
        let mut f = raw_file("{}", &[]);
        f[0] = 3;
        assert!(matches!(err(f), E::HeaderPastEnd { len: 3, available: 2, .. }));
        // Absurd header length.
        let mut f = u64::MAX.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(err(f), E::HeaderTooLarge { .. }));
        // Not UTF-8.
        assert!(matches!(
            err(raw_file("{\"\u{e9}\":1}", &[]).into_iter().map(|b| if b == 0xc3 { 0xff } else { b }).collect()),
            E::HeaderNotUtf8 { valid_up_to: 2, .. }
        ));
        // Not an object / not JSON.
        assert!(matches!(err(raw_file(" {}", &[])), E::HeaderStart { .. }));
        assert!(matches!(err(raw_file("[1]", &[])), E::HeaderStart { .. }));
        assert!(matches!(err(raw_file("{\"a\":", &[])), E::HeaderJson { .. }));
        assert!(matches!(err(raw_file("{} x", &[])), E::HeaderJson { .. }));
        // Shape x dtype disagrees with the offsets.
        let e = err(raw_file(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, &[0; 4]));
        assert!(matches!(e, E::SizeMismatch { ref tensor, expected: 8, actual: 4, .. } if tensor == "w"), "{e}");
        assert!(e.to_string().contains("test.safetensors") && e.to_string().contains("\"w\""));
        // Offsets past the end, or reversed.
        let e = err(raw_file(r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#, &[0; 4]));
        assert!(matches!(e, E::OffsetPastEnd { end: 6, buffer_len: 4, .. }));
        let e = err(raw_file(r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[2,1]}}"#, &[0; 4]));
        assert!(matches!(e, E::OffsetsReversed { .. }));
        // Overlap.
        let e = err(raw_file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#,
            &[0; 4],
        ));
        assert!(matches!(e, E::Overlap { ref tensor, ref other, .. } if tensor == "b" && other == "a"), "{e}");
        // Unknown and unsupported dtypes.
        let e = err(raw_file(r#"{"w":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}}"#, &[0]));
        assert!(matches!(e, E::UnknownDtype { ref dtype, .. } if dtype == "Q4_K"));
        let e = err(raw_file(r#"{"w":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}"#, &[0; 3]));
        assert!(matches!(e, E::UnsupportedDtype { .. }));
        assert!(e.to_string().contains("unsupported dtype F6_E2M3 in tensor \"w\""), "{e}");
        // Sub-byte count that does not fill whole bytes.
        let e = err(raw_file(r#"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, &[0; 2]));
        assert!(matches!(e, E::NotWholeBytes { elements: 3, .. }));
        // Shape overflow.
        let e = err(raw_file(r#"{"w":{"dtype":"U64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#, &[]));
        assert!(matches!(e, E::ShapeOverflow { .. }), "{e}");
        let e = err(raw_file(r#"{"w":{"dtype":"U64","shape":[2305843009213693952],"data_offsets":[0,0]}}"#, &[]));
        assert!(matches!(e, E::ShapeOverflow { .. }), "{e}");
        // Malformed entries and metadata.
        let e = err(raw_file(r#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, &[0]));
        assert!(matches!(e, E::BadEntry { .. }));
        let e = err(raw_file(r#"{"w":{"dtype":"U8","shape":[1]}}"#, &[0]));
        assert!(matches!(e, E::BadEntry { .. }));
        assert!(matches!(err(raw_file(r#"{"__metadata__":{"a":1}}"#, &[])), E::BadMetadata { .. }));
        assert!(matches!(err(raw_file(r#"{"__metadata__":[]}"#, &[])), E::BadMetadata { .. }));
        // Duplicate keys.
        let e = err(raw_file(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            &[0],
        ));
        assert!(matches!(e, E::DuplicateKey { ref key, .. } if key == "a"));
    }

    #[test]
    fn gaps_are_errors_unless_allowed() {
        let header = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
        let file = raw_file(header, &[1, 2, 0, 0, 3, 4, 9]);
        let e = err(file.clone());
        let start = 8 + header.len() as u64;
        assert!(
            matches!(e, SafetensorsError::Gap { begin, end, ref after, .. } if begin == start + 2 && end == start + 4 && after.as_deref() == Some("a")),
            "{e}"
        );
        let opts = ReadOptions { allow_gaps: true };
        let f = SafetensorsFile::from_bytes("t", Bytes::from(file), &opts).unwrap();
        assert_eq!(f.gaps(), &[Gap { begin: start + 2, end: start + 4 }, Gap { begin: start + 6, end: start + 7 }]);
        assert_eq!(f.tensor("b").unwrap().to_vec::<u8>().unwrap(), vec![3, 4]);
        // Trailing bytes after the last tensor are a hole too.
        let e = err(raw_file("{}", &[0]));
        assert!(matches!(e, SafetensorsError::Gap { after: None, .. }));
    }

    #[test]
    fn header_padding_is_accepted() {
        let f = read(raw_file("{\"__metadata__\":{\"k\":\"v\"}}     ", &[])).unwrap();
        assert_eq!(f.metadata()["k"], "v");
    }

    #[test]
    fn open_reports_io_and_tiny_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.safetensors");
        assert!(matches!(SafetensorsFile::open(&missing), Err(SafetensorsError::Io { .. })));
        let empty = dir.path().join("empty.safetensors");
        std::fs::write(&empty, b"").unwrap();
        let e = SafetensorsFile::open(&empty).unwrap_err();
        assert!(matches!(e, SafetensorsError::TooSmall { size: 0, .. }));
        assert!(e.to_string().contains("empty.safetensors"));
    }
}
