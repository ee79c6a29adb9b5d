//! Finding and loading the ONNX Runtime shared library.
//!
//! Kiln loads ONNX Runtime dynamically (the PyPI wheel's `libonnxruntime.so.1.31.1`; there is no
//! unversioned name) so that one binary works with the library `cargo xtask setup` fetched, a
//! Python install, or one the user points at. The search order is fixed and every place tried is
//! reported when nothing is found.

use std::ffi::OsString;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use super::{RuntimeError, panic_message};

/// The ONNX Runtime version Kiln is built against.
pub const ORT_VERSION: &str = "1.31.1";
/// The library's file name (the wheel ships only the versioned name).
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// Everything the search depends on, so that it can be tested without touching the process
/// environment.
#[derive(Debug, Clone, Default)]
pub struct SearchEnv {
    /// `KILN_ORT_LIB`: the library file, or a folder holding it.
    pub kiln_ort_lib: Option<OsString>,
    /// `ORT_DYLIB_PATH`: the library file, or a folder holding it (ort's own variable).
    pub ort_dylib_path: Option<OsString>,
    /// `KILN_CACHE_DIR` or its default; `cargo xtask setup` fills `<cache>/onnxruntime-1.31.1/`.
    pub cache_dir: PathBuf,
}

impl SearchEnv {
    /// The search environment of this process.
    pub fn from_process() -> SearchEnv {
        let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
        SearchEnv {
            kiln_ort_lib: non_empty("KILN_ORT_LIB"),
            ort_dylib_path: non_empty("ORT_DYLIB_PATH"),
            cache_dir: non_empty("KILN_CACHE_DIR").map(PathBuf::from).unwrap_or_else(default_cache_dir),
        }
    }
}

/// `<workspace root>/.kiln-cache`, the workspace root being known at compile time.
pub fn default_cache_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join(".kiln-cache")
}

/// The folder `cargo xtask setup` puts the library in, under `cache_dir`.
pub fn setup_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("onnxruntime-{ORT_VERSION}"))
}

/// Where the ONNX Runtime library is: `KILN_ORT_LIB`, `ORT_DYLIB_PATH`, the `cargo xtask setup`
/// folder, then a Python `onnxruntime` install.
pub fn find_ort_library() -> Result<PathBuf, RuntimeError> {
    search(&SearchEnv::from_process(), python_onnxruntime_dir)
}

/// The search itself. `python_dir` is asked only when the earlier places fail; it returns the
/// folder of the `onnxruntime` Python package, if one is installed.
pub fn search(env: &SearchEnv, python_dir: impl FnOnce() -> Option<PathBuf>) -> Result<PathBuf, RuntimeError> {
    let mut tried = Vec::new();
    for (var, value) in [("KILN_ORT_LIB", &env.kiln_ort_lib), ("ORT_DYLIB_PATH", &env.ort_dylib_path)] {
        let Some(value) = value else {
            tried.push(format!("{var} (not set)"));
            continue;
        };
        let path = PathBuf::from(value);
        if path.is_dir() {
            let file = path.join(ORT_LIB_NAME);
            if file.is_file() {
                return Ok(file);
            }
            return Err(RuntimeError::LibraryEnvMissing { var: var.to_string(), path: file });
        }
        if path.exists() {
            return Ok(path);
        }
        return Err(RuntimeError::LibraryEnvMissing { var: var.to_string(), path });
    }

    let setup = setup_dir(&env.cache_dir).join(ORT_LIB_NAME);
    if setup.is_file() {
        return Ok(setup);
    }
    tried.push(format!("{} (cargo xtask setup)", setup.display()));

    match python_dir() {
        Some(dir) => {
            let file = dir.join("capi").join(ORT_LIB_NAME);
            if file.is_file() {
                return Ok(file);
            }
            tried.push(format!("{} (Python onnxruntime package)", file.display()));
        }
        None => tried.push("Python package onnxruntime (python3 could not import it)".to_string()),
    }
    Err(RuntimeError::LibraryNotFound { file: ORT_LIB_NAME.to_string(), tried })
}

/// The folder of the `onnxruntime` Python package, if `python3` can import it.
pub fn python_onnxruntime_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The process-wide ONNX Runtime environment and the library it was loaded from.
pub(crate) struct OrtRuntime {
    pub(crate) env: ort::environment::Environment,
    pub(crate) library: PathBuf,
}

static ORT_RUNTIME: OnceLock<Result<OrtRuntime, RuntimeError>> = OnceLock::new();

/// Load ONNX Runtime once per process. Later calls return the first outcome: a process that
/// failed to load the library keeps failing with the same error.
///
/// Telemetry events are turned off once the environment exists; ONNX Runtime's own files
/// under `~/.cache/Microsoft` are only avoided when `ORT_DISABLE_TELEMETRY=1` is in the
/// environment before the first call (the `optimize` binary sets it at start; a program
/// embedding Kiln sets it itself, before it starts threads).
pub fn init_ort() -> Result<(), RuntimeError> {
    runtime().map(|_| ())
}

/// The path of the loaded ONNX Runtime library, once [`init_ort`] succeeded.
pub fn loaded_ort_library() -> Option<&'static Path> {
    match ORT_RUNTIME.get() {
        Some(Ok(rt)) => Some(&rt.library),
        _ => None,
    }
}

pub(crate) fn runtime() -> Result<&'static OrtRuntime, RuntimeError> {
    ORT_RUNTIME.get_or_init(load_runtime).as_ref().map_err(Clone::clone)
}

fn load_runtime() -> Result<OrtRuntime, RuntimeError> {
    let library = find_ort_library()?;
    let load_err = |message: String| RuntimeError::LibraryLoad { path: library.clone(), message };
    // ort asserts on a malformed library rather than returning an error; keep that a `Result`.
    let built = catch_unwind(AssertUnwindSafe(|| {
        let builder = ort::init_from(&library).map_err(|e| e.to_string())?;
        let builder = builder.with_name("kiln").with_telemetry(false);
        // ONNX Runtime logs errors to stderr by itself; Kiln returns them as errors instead and
        // only its CLI prints. `ORT_LOG=<level>` restores ORT's own logging for debugging.
        let builder = if std::env::var_os("ORT_LOG").is_some() {
            builder
        } else {
            builder.with_logger(Arc::new(|_, _, _, _, _| {}))
        };
        builder.build().map_err(|e| e.to_string())
    }));
    match built {
        Ok(Ok(env)) => Ok(OrtRuntime { env, library }),
        Ok(Err(message)) => Err(load_err(message)),
        Err(payload) => Err(load_err(panic_message(payload.as_ref()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ErrorKind;

    #[test]
    fn nothing_found_lists_every_place() {
        let dir = tempfile::tempdir().unwrap();
        let env = SearchEnv { kiln_ort_lib: None, ort_dylib_path: None, cache_dir: dir.path().join("cache") };
        let err = search(&env, || Some(dir.path().join("py/onnxruntime"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Runtime);
        let text = err.to_string();
        assert!(text.contains("KILN_ORT_LIB (not set)"), "{text}");
        assert!(text.contains("ORT_DYLIB_PATH (not set)"), "{text}");
        assert!(text.contains("cache/onnxruntime-1.31.1/libonnxruntime.so.1.31.1"), "{text}");
        assert!(text.contains("py/onnxruntime/capi/libonnxruntime.so.1.31.1"), "{text}");
        assert!(text.contains("cargo xtask setup"), "{text}");

        let err = search(&env, || None).unwrap_err();
        assert!(err.to_string().contains("python3 could not import it"), "{err}");
    }

    #[test]
    fn env_path_that_does_not_exist_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.so");
        let env = SearchEnv {
            kiln_ort_lib: None,
            ort_dylib_path: Some(missing.clone().into()),
            cache_dir: dir.path().to_path_buf(),
        };
        let err = search(&env, || panic!("must not probe python")).unwrap_err();
        assert_eq!(err, RuntimeError::LibraryEnvMissing { var: "ORT_DYLIB_PATH".into(), path: missing });
    }

    #[test]
    fn search_order() {
        let dir = tempfile::tempdir().unwrap();
        let setup = setup_dir(&dir.path().join("cache"));
        std::fs::create_dir_all(&setup).unwrap();
        std::fs::write(setup.join(ORT_LIB_NAME), b"").unwrap();
        let py = dir.path().join("py");
        std::fs::create_dir_all(py.join("capi")).unwrap();
        std::fs::write(py.join("capi").join(ORT_LIB_NAME), b"").unwrap();
        let explicit = dir.path().join("explicit.so");
        std::fs::write(&explicit, b"").unwrap();

        let mut env = SearchEnv { kiln_ort_lib: None, ort_dylib_path: None, cache_dir: dir.path().join("cache") };
        assert_eq!(search(&env, || Some(py.clone())).unwrap(), setup.join(ORT_LIB_NAME));
        env.cache_dir = dir.path().join("elsewhere");
        assert_eq!(search(&env, || Some(py.clone())).unwrap(), py.join("capi").join(ORT_LIB_NAME));
        env.ort_dylib_path = Some(explicit.clone().into());
        assert_eq!(search(&env, || None).unwrap(), explicit);
        // A folder given by KILN_ORT_LIB is searched for the versioned name.
        env.kiln_ort_lib = Some(setup.clone().into());
        assert_eq!(search(&env, || None).unwrap(), setup.join(ORT_LIB_NAME));
    }
}
