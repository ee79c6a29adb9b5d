//! Artifacts: a folder with `model.onnx` (+ external data), `manifest.json`, `report.md` and
//! the target's files, staged in a temporary folder beside the destination and moved into
//! place only when complete. An existing artifact is replaced only when asked (`--force`);
//! a folder that is not a Kiln artifact is never replaced.

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
/// The report for people inside an artifact folder.
pub const REPORT: &str = "report.md";

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
    #[error("{0}: an artifact exists there; pass --force to replace it")]
    Exists(PathBuf),
    #[error("{0}: not a plain file name inside the artifact")]
    BadName(String),
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
    /// Starts an artifact at `dest`. An existing `dest` must be an empty folder, or a Kiln
    /// artifact and `force` set.
    pub fn create(dest: &Path, force: bool) -> Result<ArtifactWriter, ArtifactError> {
        if dest.exists() {
            match existing(dest)? {
                Existing::Empty => {}
                Existing::Artifact if force => {}
                Existing::Artifact => return Err(ArtifactError::Exists(dest.to_path_buf())),
                Existing::Foreign => return Err(ArtifactError::NotAnArtifact(dest.to_path_buf())),
            }
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

    /// Writes `manifest.json` (pretty, trailing newline).
    pub fn write_manifest(&self, manifest: &impl serde::Serialize) -> Result<(), ArtifactError> {
        let mut text = serde_json::to_string_pretty(manifest)?;
        text.push('\n');
        let path = self.stage.path().join(MANIFEST);
        fs::write(&path, text).map_err(io(&path))
    }

    /// Writes another file of the artifact (report, target files); `name` is a plain file name.
    pub fn write_file(&self, name: &str, bytes: &[u8], executable: bool) -> Result<(), ArtifactError> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(ArtifactError::BadName(name.to_string()));
        }
        let path = self.stage.path().join(name);
        fs::write(&path, bytes).map_err(io(&path))?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io(&path))?;
        }
        #[cfg(not(unix))]
        let _ = executable;
        Ok(())
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

enum Existing {
    Empty,
    Artifact,
    Foreign,
}

fn existing(dest: &Path) -> Result<Existing, ArtifactError> {
    if !dest.is_dir() {
        return Ok(Existing::Foreign);
    }
    let mut entries = fs::read_dir(dest).map_err(io(dest))?;
    Ok(if entries.next().is_none() {
        Existing::Empty
    } else if dest.join(MANIFEST).is_file() {
        Existing::Artifact
    } else {
        Existing::Foreign
    })
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
    fn writes_replaces_only_with_force_and_refuses_foreign_folders() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        for round in 0..2 {
            let w = ArtifactWriter::create(&dest, round > 0).unwrap();
            w.write_model(&tiny(), &SaveOptions::default()).unwrap();
            w.write_manifest(&serde_json::json!({ "round": round })).unwrap();
            w.write_file(REPORT, b"# report\n", false).unwrap();
            w.commit().unwrap();
            let m: serde_json::Value = serde_json::from_slice(&fs::read(dest.join(MANIFEST)).unwrap()).unwrap();
            assert_eq!(m["round"], round);
        }
        // Nothing staged is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")]);
        assert_eq!(fs::read_to_string(dest.join(REPORT)).unwrap(), "# report\n");
        // Without force an artifact stays as it is.
        assert!(matches!(ArtifactWriter::create(&dest, false), Err(ArtifactError::Exists(_))));
        let w = ArtifactWriter::create(&dest, true).unwrap();
        assert!(matches!(w.write_file("../escape", b"x", false), Err(ArtifactError::BadName(_))));
        drop(w);
        let m: serde_json::Value = serde_json::from_slice(&fs::read(dest.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(m["round"], 1);

        let foreign = dir.path().join("mine");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "keep").unwrap();
        assert!(matches!(ArtifactWriter::create(&foreign, true), Err(ArtifactError::NotAnArtifact(_))));
        assert_eq!(fs::read_to_string(foreign.join("notes.txt")).unwrap(), "keep");
    }
}
