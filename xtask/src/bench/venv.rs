//! The Python virtual environment with the pinned peers, and the versions it holds.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::measure::MEASURE_PY;
use crate::install::Installer;

/// The peers' pins, relative to the repository root.
const REQUIREMENTS: &str = "xtask/bench/requirements.txt";

/// Packages whose installed versions go into the report.
const REPORTED_PACKAGES: &[&str] =
    &["onnxruntime", "onnx", "onnxsim", "onnxslim", "onnxconverter-common", "numpy", "protobuf", "sympy"];

/// Creates or reuses `<cache>/bench-venv` with the pinned peers; returns its Python.
pub(crate) fn ensure_venv(root: &Path) -> Result<PathBuf> {
    ensure_venv_with(root, "bench-venv", REQUIREMENTS)
}

/// Creates or reuses `<cache>/<name>` with the packages pinned in `requirements` (relative to
/// the repository root); returns its Python. Shared by the bench and the test suite's checker.
pub(crate) fn ensure_venv_with(root: &Path, name: &str, requirements: &str) -> Result<PathBuf> {
    let venv = crate::cache_dir().join(name);
    let python = venv_bin(&venv, "python");
    let reqs_path = root.join(requirements);
    let reqs = fs::read_to_string(&reqs_path).with_context(|| format!("reading {}", reqs_path.display()))?;
    // A copy of the requirements marks a finished install: a changed file or an interrupted
    // install means pip runs again.
    let stamp = venv.join("kiln-requirements.txt");
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == reqs) {
        return Ok(python);
    }
    if !python.is_file() {
        let base = Installer::new(crate::cache_dir()).python;
        eprintln!("xtask: creating {} with {base}", venv.display());
        let status = Command::new(&base)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .with_context(|| format!("could not start {base}; set KILN_PYTHON to a Python 3 with venv"))?;
        if !status.success() {
            bail!("`{base} -m venv {}` failed ({status})", venv.display());
        }
    }
    let _ = fs::remove_file(&stamp);
    eprintln!("xtask: installing the pinned packages of {requirements} into {}", venv.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--progress-bar", "off", "-r"])
        .arg(&reqs_path)
        .status()
        .with_context(|| format!("could not start {}", python.display()))?;
    if !status.success() {
        bail!("pip could not install {requirements} into {} ({status}); it needs access to PyPI", venv.display());
    }
    fs::write(&stamp, reqs).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

pub(super) fn venv_bin(venv: &Path, name: &str) -> PathBuf {
    if cfg!(windows) { venv.join("Scripts").join(format!("{name}.exe")) } else { venv.join("bin").join(name) }
}

#[derive(Debug, Deserialize)]
pub(super) struct Versions {
    pub(super) python: String,
    pub(super) packages: BTreeMap<String, Option<String>>,
}

pub(super) fn python_versions(python: &Path, root: &Path) -> Result<Versions> {
    let out = Command::new(python)
        .arg(root.join(MEASURE_PY))
        .arg("versions")
        .args(REPORTED_PACKAGES)
        .output()
        .with_context(|| format!("could not start {}", python.display()))?;
    if !out.status.success() {
        bail!("{MEASURE_PY} versions failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("reading the package versions")
}
