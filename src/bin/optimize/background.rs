//! Work `optimize` starts on another core at the beginning of a run and collects when it is
//! needed: the input model's digest, and loading ONNX Runtime.

use std::path::{Path, PathBuf};

use kiln::targets::artifact::sha256_file;

use crate::Failure;

/// The sha256 of the input model, hashed on a background thread or, when that is not
/// wanted (`--threads 1`, or validation hashes it anyway), on demand.
pub(crate) enum InputDigest {
    Background(std::thread::JoinHandle<Result<String, String>>),
    OnDemand(PathBuf),
}

impl InputDigest {
    pub(crate) fn start(path: &Path, background: bool) -> InputDigest {
        let owned = path.to_path_buf();
        if !background {
            return InputDigest::OnDemand(owned);
        }
        let spawned = std::thread::Builder::new()
            .name("kiln-input-sha256".into())
            .spawn(move || sha256_file(&owned).map_err(|e| e.to_string()));
        match spawned {
            Ok(handle) => InputDigest::Background(handle),
            // No thread to be had: hash at the end instead.
            Err(_) => InputDigest::OnDemand(path.to_path_buf()),
        }
    }

    pub(crate) fn finish(self) -> Result<String, Failure> {
        match self {
            InputDigest::Background(handle) => handle
                .join()
                .map_err(|_| Failure::runtime("hashing the input model failed unexpectedly"))?
                .map_err(Failure::runtime),
            InputDigest::OnDemand(path) => sha256_file(&path).map_err(Failure::runtime),
        }
    }
}

/// Loads ONNX Runtime (the library, its environment and its CPU kernels: tens of milliseconds)
/// on another core while the model is read and optimized, when calibration or validation will
/// need it; the first session waits for it. Joined when dropped, so the process never exits mid-load.
pub(crate) struct RuntimeWarmup(Option<std::thread::JoinHandle<()>>);

impl RuntimeWarmup {
    pub(crate) fn start(wanted: bool) -> RuntimeWarmup {
        let handle = wanted
            .then(|| {
                std::thread::Builder::new().name("kiln-ort-load".into()).spawn(|| {
                    // A failure is reported by the first session, which sees the same outcome.
                    let _ = kiln::compiler::runtime::OrtExecutor::warm_up();
                })
            })
            .and_then(Result::ok);
        RuntimeWarmup(handle)
    }
}

impl Drop for RuntimeWarmup {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_digest_is_the_same_hashed_in_the_background_or_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
        let want = sha256_file(&path).unwrap();
        assert_eq!(InputDigest::start(&path, true).finish().ok(), Some(want.clone()));
        assert_eq!(InputDigest::start(&path, false).finish().ok(), Some(want));
        // A file that cannot be read is an error either way, naming it.
        let missing = dir.path().join("gone.onnx");
        for background in [true, false] {
            let err = InputDigest::start(&missing, background).finish().err().map(|f| f.message);
            assert!(err.is_some_and(|m| m.contains("gone.onnx")), "background {background}");
        }
    }
}
