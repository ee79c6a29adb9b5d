//! Sharded checkpoints: `NAME.safetensors.index.json` (`{"metadata": {...}, "weight_map":
//! {tensor: shard_file}}`) beside the shard files it names, and [`Checkpoint`], a single file
//! or a sharded set behind one lookup.
//!
//! Shard paths are untrusted input: only relative paths that stay inside the index's folder
//! are accepted (no absolute paths, drive prefixes, `..` or backslashes). Symbolic links inside
//! that folder are followed like any other file. Every tensor must be in exactly the shard the
//! weight map names, and every tensor of a shard must be listed: an index that disagrees with
//! its shards is an error rather than a guess.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use super::SafetensorsError;
use super::format::{ReadOptions, SafetensorsFile, TensorEntry, UniqueMap};
use super::write::{WrittenTensor, plan, write_atomically};
use crate::tensor::Tensor;

/// How the index file of a sharded checkpoint is named: `model` + this suffix.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// Index files are small; this cap keeps a corrupt one from being read whole.
const MAX_INDEX_LEN: u64 = 100_000_000;

/// The contents of an index file. `metadata` values are JSON (`total_size` is a number).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ShardIndex {
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<BTreeMap<String, serde_json::Value>>,
    weight_map: UniqueMap<String>,
}

impl ShardIndex {
    /// Parse index JSON; `path` labels errors.
    pub fn parse(path: &Path, text: &str) -> Result<ShardIndex, SafetensorsError> {
        let bad = |message: String| SafetensorsError::IndexJson { path: path.to_path_buf(), message };
        let raw: RawIndex = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(tensor) = raw.weight_map.duplicate {
            return Err(bad(format!("tensor {tensor:?} is listed more than once in weight_map")));
        }
        Ok(ShardIndex {
            metadata: raw.metadata.unwrap_or_default(),
            weight_map: raw.weight_map.entries.into_iter().collect(),
        })
    }
}

/// Check that a shard path from an index stays inside the index's folder.
fn check_shard_path(index_path: &Path, shard: &str) -> Result<(), SafetensorsError> {
    let reject =
        |reason| Err(SafetensorsError::ShardPath { path: index_path.to_path_buf(), shard: shard.to_string(), reason });
    if shard.is_empty() {
        return reject("it is empty");
    }
    if shard.contains('\\') || shard.contains('\0') {
        return reject("it contains a backslash or NUL");
    }
    let mut named = false;
    for c in Path::new(shard).components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir => return reject("it contains `..`"),
            Component::RootDir | Component::Prefix(_) => return reject("it is absolute"),
        }
    }
    if !named {
        return reject("it names no file");
    }
    Ok(())
}

/// A validated sharded checkpoint, every shard memory-mapped.
#[derive(Debug)]
pub struct ShardedCheckpoint {
    index_path: PathBuf,
    index: ShardIndex,
    /// Sorted by shard name.
    shards: Vec<(String, SafetensorsFile)>,
    location: HashMap<String, usize>,
}

impl ShardedCheckpoint {
    pub fn open(index_path: impl AsRef<Path>) -> Result<ShardedCheckpoint, SafetensorsError> {
        ShardedCheckpoint::open_with(index_path, &ReadOptions::default())
    }

    /// Read the index, check its shard paths, open the shards it names and check that index
    /// and shards agree.
    pub fn open_with(
        index_path: impl AsRef<Path>,
        options: &ReadOptions,
    ) -> Result<ShardedCheckpoint, SafetensorsError> {
        let index_path = index_path.as_ref();
        let io = || SafetensorsError::io(index_path);
        let size = std::fs::metadata(index_path).map_err(io())?.len();
        if size > MAX_INDEX_LEN {
            return Err(SafetensorsError::IndexJson {
                path: index_path.to_path_buf(),
                message: format!("{size} bytes exceeds the limit of {MAX_INDEX_LEN}"),
            });
        }
        let text = std::fs::read_to_string(index_path).map_err(io())?;
        let index = ShardIndex::parse(index_path, &text)?;
        let names: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
        for shard in &names {
            check_shard_path(index_path, shard)?;
        }
        let dir = index_path.parent().unwrap_or(Path::new(""));
        let mut shards = Vec::with_capacity(names.len());
        for shard in names {
            shards.push((shard.to_string(), SafetensorsFile::open_with(dir.join(shard), options)?));
        }
        let mut location = HashMap::with_capacity(index.weight_map.len());
        for (i, (shard, file)) in shards.iter().enumerate() {
            for e in file.entries() {
                match index.weight_map.get(&e.name) {
                    None => {
                        return Err(SafetensorsError::UnlistedTensor {
                            path: index_path.to_path_buf(),
                            tensor: e.name.clone(),
                            shard: shard.clone(),
                        });
                    }
                    Some(expected) if expected != shard => {
                        return Err(SafetensorsError::WrongShard {
                            path: index_path.to_path_buf(),
                            tensor: e.name.clone(),
                            expected: expected.clone(),
                            found: shard.clone(),
                        });
                    }
                    Some(_) => {
                        location.insert(e.name.clone(), i);
                    }
                }
            }
        }
        if let Some((tensor, shard)) = index.weight_map.iter().find(|(t, _)| !location.contains_key(*t)) {
            return Err(SafetensorsError::MissingInShard {
                path: index_path.to_path_buf(),
                tensor: tensor.clone(),
                shard: shard.clone(),
            });
        }
        Ok(ShardedCheckpoint { index_path: index_path.to_path_buf(), index, shards, location })
    }

    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// The shards, sorted by their name in the index.
    pub fn shards(&self) -> impl Iterator<Item = (&str, &SafetensorsFile)> {
        self.shards.iter().map(|(n, f)| (n.as_str(), f))
    }

    /// The shard holding a tensor.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.location.get(name).map(|&i| &self.shards[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.file_of(name).and_then(|f| f.tensor(name))
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.file_of(name).and_then(|f| f.entry(name))
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.weight_map.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.location.len()
    }

    pub fn is_empty(&self) -> bool {
        self.location.is_empty()
    }
}

/// A checkpoint to bind or read from: one file or a sharded set.
#[derive(Debug)]
pub enum Checkpoint {
    Single(SafetensorsFile),
    Sharded(ShardedCheckpoint),
}

impl Checkpoint {
    /// Open a `.safetensors` file, or a sharded set through its `.index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, SafetensorsError> {
        Checkpoint::open_with(path, &ReadOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Checkpoint, SafetensorsError> {
        let path = path.as_ref();
        let is_index = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
        Ok(if is_index {
            Checkpoint::Sharded(ShardedCheckpoint::open_with(path, options)?)
        } else {
            Checkpoint::Single(SafetensorsFile::open_with(path, options)?)
        })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Checkpoint::Single(f) => {
                let mut v: Vec<&str> = f.entries().map(|e| e.name.as_str()).collect();
                v.sort_unstable();
                v
            }
            Checkpoint::Sharded(s) => s.names().collect(),
        }
    }

    /// The file holding a tensor (its path and `entry(name).offset` locate the bytes).
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        match self {
            Checkpoint::Single(f) => f.contains(name).then_some(f),
            Checkpoint::Sharded(s) => s.file_of(name),
        }
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.file_of(name).and_then(|f| f.entry(name))
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.file_of(name).and_then(|f| f.tensor(name))
    }

    pub fn len(&self) -> usize {
        match self {
            Checkpoint::Single(f) => f.len(),
            Checkpoint::Sharded(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One shard written by [`write_sharded`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WrittenShard {
    /// File name inside the output folder.
    pub file_name: String,
    /// In file order.
    pub tensors: Vec<WrittenTensor>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardedWrite {
    pub index_path: PathBuf,
    pub shards: Vec<WrittenShard>,
}

/// Write `tensors` as `BASE-0000i-of-0000n.safetensors` shards plus `BASE.safetensors.index.json`
/// in `dir`.
///
/// Tensors are packed greedily in the caller's order (keeping a layer's tensors together):
/// a shard is closed when the next tensor would push its data past `max_shard_bytes`; a
/// tensor larger than that gets a shard to itself. The limit counts tensor bytes, not headers.
/// Each shard carries `metadata`; the index carries it too, plus `total_size` (data bytes).
/// Shards are written first and the index last, each atomically; shards of an earlier write
/// with a different count are not removed.
pub fn write_sharded(
    dir: impl AsRef<Path>,
    base_name: &str,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
    max_shard_bytes: u64,
) -> Result<ShardedWrite, SafetensorsError> {
    let dir = dir.as_ref();
    let index_path = dir.join(format!("{base_name}{INDEX_SUFFIX}"));
    let bad = |message: String| SafetensorsError::BadShardRequest { path: index_path.clone(), message };
    if base_name.is_empty() || base_name.contains(['/', '\\', '\0']) || base_name == "." || base_name == ".." {
        return Err(bad(format!("base name {base_name:?} must be a plain file name")));
    }
    if max_shard_bytes == 0 {
        return Err(bad("the maximum shard size must be positive".to_string()));
    }
    let mut seen = BTreeSet::new();
    if let Some(&(dup, _)) = tensors.iter().find(|(n, _)| !seen.insert(*n)) {
        return Err(SafetensorsError::DuplicateTensor { path: index_path, tensor: dup.to_string() });
    }

    let mut groups: Vec<Vec<(&str, &Tensor)>> = vec![Vec::new()];
    let mut current = 0u64;
    let mut total = 0u64;
    for &(name, tensor) in tensors {
        let len = tensor.byte_size();
        total = total.saturating_add(len);
        let last = groups.len() - 1;
        if !groups[last].is_empty() && current.saturating_add(len) > max_shard_bytes {
            groups.push(Vec::new());
            current = 0;
        }
        current = current.saturating_add(len);
        let last = groups.len() - 1;
        groups[last].push((name, tensor));
    }

    let count = groups.len();
    let names: Vec<String> = (1..=count).map(|i| format!("{base_name}-{i:05}-of-{count:05}.safetensors")).collect();
    // Check every shard before writing any.
    for (group, name) in groups.iter().zip(&names) {
        plan(&dir.join(name), group, metadata)?;
    }
    let mut shards = Vec::with_capacity(count);
    let mut weight_map = BTreeMap::new();
    for (group, name) in groups.iter().zip(&names) {
        let written = super::write::write_safetensors(dir.join(name), group, metadata)?;
        for w in &written {
            weight_map.insert(w.name.clone(), name.clone());
        }
        shards.push(WrittenShard { file_name: name.clone(), tensors: written });
    }
    let mut index_meta: BTreeMap<String, serde_json::Value> =
        metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    index_meta.insert("total_size".to_string(), serde_json::Value::from(total));
    let index = ShardIndex { metadata: index_meta, weight_map };
    let mut json = serde_json::to_vec_pretty(&index).map_err(|e| bad(e.to_string()))?;
    json.push(b'\n');
    write_atomically(&index_path, |w| std::io::Write::write_all(w, &json))?;
    Ok(ShardedWrite { index_path, shards })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DataType;
    use crate::safetensors::write_safetensors;
    use bytes::Bytes;

    fn tensors() -> Vec<(String, Tensor)> {
        (0..5)
            .map(|i| {
                let t = Tensor::from_slice(vec![i + 1], &(0..=i).map(|v| v as f32).collect::<Vec<_>>()).unwrap();
                (format!("layer.{i}.weight"), t)
            })
            .collect()
    }

    fn refs(v: &[(String, Tensor)]) -> Vec<(&str, &Tensor)> {
        v.iter().map(|(n, t)| (n.as_str(), t)).collect()
    }

    #[test]
    fn sharded_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ts = tensors();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        // Sizes 4, 8, 12, 16, 20 bytes; limit 20 → [4, 8], [12], [16], [20].
        let w = write_sharded(dir.path(), "model", &refs(&ts), &meta, 20).unwrap();
        let files: Vec<_> = w.shards.iter().map(|s| s.file_name.as_str()).collect();
        assert_eq!(files[0], "model-00001-of-00004.safetensors");
        assert_eq!(w.shards.iter().map(|s| s.tensors.len()).collect::<Vec<_>>(), [2, 1, 1, 1]);
        assert_eq!(w.index_path, dir.path().join("model.safetensors.index.json"));

        let c = Checkpoint::open(&w.index_path).unwrap();
        assert_eq!(c.len(), 5);
        let Checkpoint::Sharded(s) = &c else { panic!("not sharded") };
        assert_eq!(s.index().metadata["total_size"], serde_json::json!(60));
        assert_eq!(s.index().metadata["format"], serde_json::json!("pt"));
        assert_eq!(s.index().weight_map["layer.2.weight"], "model-00002-of-00004.safetensors");
        for (name, t) in &ts {
            assert_eq!(&c.tensor(name).unwrap(), t);
            let e = c.entry(name).unwrap();
            let f = c.file_of(name).unwrap();
            assert_eq!(f.range(e.offset, e.length).unwrap(), t.bytes().unwrap());
        }
        assert_eq!(c.names(), ts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());

        // Deterministic.
        let first: Vec<Vec<u8>> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        let dir2 = tempfile::tempdir().unwrap();
        write_sharded(dir2.path(), "model", &refs(&ts), &meta, 20).unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            assert_eq!(std::fs::read(e.path()).unwrap(), std::fs::read(dir2.path().join(e.file_name())).unwrap());
        }
        assert_eq!(first.len(), 5);

        // A single file opens through the same enum.
        let single = dir.path().join("model-00001-of-00004.safetensors");
        let c = Checkpoint::open(&single).unwrap();
        assert!(matches!(c, Checkpoint::Single(_)));
        assert_eq!(c.names(), ["layer.0.weight", "layer.1.weight"]);
        assert!(c.tensor("layer.4.weight").is_none());
    }

    #[test]
    fn bad_sharding_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ts = tensors();
        let m = BTreeMap::new();
        assert!(matches!(
            write_sharded(dir.path(), "a/b", &refs(&ts), &m, 10),
            Err(SafetensorsError::BadShardRequest { .. })
        ));
        assert!(matches!(
            write_sharded(dir.path(), "m", &refs(&ts), &m, 0),
            Err(SafetensorsError::BadShardRequest { .. })
        ));
        let t = &ts[0].1;
        let e = write_sharded(dir.path(), "m", &[("x", t), ("y", t), ("x", t)], &m, 1).unwrap_err();
        assert!(matches!(e, SafetensorsError::DuplicateTensor { .. }));
        let s = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"a")]).unwrap();
        let e = write_sharded(dir.path(), "m", &[("x", t), ("s", &s)], &m, 1).unwrap_err();
        assert!(matches!(e, SafetensorsError::UnwritableDtype { dtype: DataType::String, .. }));
        // Nothing was written for the rejected requests.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A folder with two shards `a` (tensor x) and `b` (tensor y) and the given index.
    fn with_index(index: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::scalar(1i32);
        write_safetensors(dir.path().join("a.safetensors"), &[("x", &t)], &BTreeMap::new()).unwrap();
        write_safetensors(dir.path().join("b.safetensors"), &[("y", &t)], &BTreeMap::new()).unwrap();
        let p = dir.path().join("m.safetensors.index.json");
        std::fs::write(&p, index).unwrap();
        (dir, p)
    }

    fn open_err(index: &str) -> SafetensorsError {
        let (_dir, p) = with_index(index);
        ShardedCheckpoint::open(&p).expect_err("must be rejected")
    }

    #[test]
    fn bad_indexes_are_rejected() {
        use SafetensorsError as E;
        let (_d, p) = with_index(r#"{"metadata":null,"weight_map":{"x":"a.safetensors","y":"./b.safetensors"}}"#);
        let s = ShardedCheckpoint::open(&p).unwrap();
        assert_eq!(s.tensor("y").unwrap(), Tensor::scalar(1i32));
        assert_eq!(s.shards().count(), 2);

        for (shard, why) in [
            ("/etc/passwd", "absolute"),
            ("../a.safetensors", "`..`"),
            ("sub/../../a.safetensors", "`..`"),
            ("..\\\\a.safetensors", "backslash"),
            ("", "empty"),
            (".", "names no file"),
        ] {
            let e = open_err(&format!(r#"{{"weight_map":{{"x":"a.safetensors","y":"{shard}"}}}}"#));
            assert!(matches!(e, E::ShardPath { .. }), "{shard}: {e}");
            assert!(e.to_string().contains(why), "{shard}: {e}");
        }
        let e = open_err(r#"{"weight_map":{"x":"b.safetensors","y":"b.safetensors"}}"#);
        assert!(matches!(e, E::MissingInShard { ref tensor, .. } if tensor == "x"), "{e}");
        let e = open_err(r#"{"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}}"#);
        assert!(
            matches!(e, E::WrongShard { ref tensor, ref expected, ref found, .. } if tensor == "y" && expected == "a.safetensors" && found == "b.safetensors"),
            "{e}"
        );
        let e = open_err(r#"{"weight_map":{"x":"a.safetensors","z":"b.safetensors"}}"#);
        assert!(matches!(e, E::UnlistedTensor { ref tensor, .. } if tensor == "y"), "{e}");
        let e = open_err(r#"{"weight_map":{"x":"a.safetensors","x":"b.safetensors"}}"#);
        assert!(matches!(e, E::IndexJson { .. }) && e.to_string().contains("more than once"), "{e}");
        let e = open_err(r#"{"weight_map":{"x":"a.safetensors","y":"c.safetensors"}}"#);
        assert!(matches!(e, E::Io { ref path, .. } if path.ends_with("c.safetensors")), "{e}");
        assert!(matches!(open_err(r#"{"weight_map":[]}"#), E::IndexJson { .. }));
        assert!(matches!(open_err(r#"{"metadata":{}}"#), E::IndexJson { .. }));
        assert!(matches!(open_err("not json"), E::IndexJson { .. }));
    }
}
