//! Artifacts: a folder with `model.onnx` (+ external data) and `manifest.json`, staged in a
//! temporary folder beside the destination and moved into place only when complete.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_compiler::ir::Model;
use kiln_compiler::onnx::{OnnxError, SaveOptions, SaveReport, save_model};
use sha2::{Digest, Sha256};

/// The file name of the manifest inside an artifact folder.
pub const MANIFEST: &str = "manifest.json";
/// The file name of the model inside an artifact folder.
pub const MODEL: &str = "model.onnx";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{0}: exists and is not a Kiln artifact (no {MANIFEST}); refusing to replace it")]
    NotAnArtifact(PathBuf),
    #[error("manifest: {0}")]
    Json(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_path_buf(), source }
}

/// The sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// An artifact being written.
pub struct ArtifactWriter {
    dest: PathBuf,
    stage: tempfile::TempDir,
}

impl ArtifactWriter {
    /// Starts an artifact at `dest`. An existing `dest` must be empty or a Kiln artifact.
    pub fn create(dest: &Path) -> Result<ArtifactWriter, ArtifactError> {
        if dest.exists() && !is_replaceable(dest)? {
            return Err(ArtifactError::NotAnArtifact(dest.to_path_buf()));
        }
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io(parent))?;
        let stage = tempfile::Builder::new().prefix(".kiln-artifact-").tempdir_in(parent).map_err(io(parent))?;
        Ok(ArtifactWriter { dest: dest.to_path_buf(), stage })
    }

    /// Writes the model as `model.onnx` (+ its external data) into the staging folder.
    pub fn write_model(&self, model: &Model, options: &SaveOptions) -> Result<SaveReport, ArtifactError> {
        let mut report = save_model(model, &self.stage.path().join(MODEL), options)?;
        // Report paths as they will be once the artifact is in place.
        report.model_path = self.dest.join(MODEL);
        Ok(report)
    }

    /// Where a staged file is until [`ArtifactWriter::commit`] (to validate the model before
    /// the artifact exists).
    pub fn staged_path(&self, name: &str) -> PathBuf {
        self.stage.path().join(name)
    }

    /// The sha256 of a staged file.
    pub fn sha256(&self, name: &str) -> Result<String, ArtifactError> {
        sha256_file(&self.stage.path().join(name))
    }

    /// Writes `manifest.json` (pretty, trailing newline).
    pub fn write_manifest(&self, manifest: &impl serde::Serialize) -> Result<(), ArtifactError> {
        let mut text = serde_json::to_string_pretty(manifest)?;
        text.push('\n');
        let path = self.stage.path().join(MANIFEST);
        fs::write(&path, text).map_err(io(&path))
    }

    /// Moves the staged folder to the destination, replacing a previous artifact there.
    pub fn commit(self) -> Result<PathBuf, ArtifactError> {
        let ArtifactWriter { dest, stage } = self;
        let staged = stage.keep();
        if dest.exists() {
            let old = dest.with_extension("kiln-old");
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            fs::rename(&dest, &old).map_err(io(&dest))?;
            fs::rename(&staged, &dest).map_err(io(&dest))?;
            fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            fs::rename(&staged, &dest).map_err(io(&dest))?;
        }
        Ok(dest)
    }
}

fn is_replaceable(dest: &Path) -> Result<bool, ArtifactError> {
    if !dest.is_dir() {
        return Ok(false);
    }
    let mut entries = fs::read_dir(dest).map_err(io(dest))?;
    Ok(entries.next().is_none() || dest.join(MANIFEST).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::ir::{Graph, NodeSpec};

    fn tiny() -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", None);
        let n = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["y"]));
        let y = g.node(n).output(0).unwrap();
        g.push_output(y);
        Model { ir_version: Some(8), graph: Some(g), ..Model::default() }
    }

    #[test]
    fn writes_replaces_and_refuses_foreign_folders() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        for round in 0..2 {
            let w = ArtifactWriter::create(&dest).unwrap();
            w.write_model(&tiny(), &SaveOptions::default()).unwrap();
            w.write_manifest(&serde_json::json!({ "round": round })).unwrap();
            w.commit().unwrap();
            let m: serde_json::Value = serde_json::from_slice(&fs::read(dest.join(MANIFEST)).unwrap()).unwrap();
            assert_eq!(m["round"], round);
        }
        // Nothing staged is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")]);

        let foreign = dir.path().join("mine");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "keep").unwrap();
        assert!(matches!(ArtifactWriter::create(&foreign), Err(ArtifactError::NotAnArtifact(_))));
        assert_eq!(fs::read_to_string(foreign.join("notes.txt")).unwrap(), "keep");
    }
}
