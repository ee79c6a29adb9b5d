//! Shared helpers of the end-to-end tests: running the `optimize` binary (with its peak
//! memory), hashing files as streams, and building ONNX models straight from protobuf structs
//! so that a test does not depend on the code it checks.

#![allow(dead_code)]

pub mod data;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_compiler::onnx::proto::{
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, tensor_shape_proto, type_proto,
};
use prost::Message;
use sha2::{Digest, Sha256};

/// ONNX element type codes used here.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;

/// What a run of the binary did.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The child's peak resident set (KiB), where the platform reports it.
    pub peak_rss_kib: Option<u64>,
    pub wall: Duration,
}

impl Outcome {
    pub fn first_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or("")
    }
}

/// Runs `optimize ARGS` with the test's environment plus `env` (a `None` value removes the
/// variable), and waits for it, recording its peak memory.
pub fn optimize_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, Option<&OsStr>)]) -> Outcome {
    optimize_in(None, args, env)
}

/// [`optimize_env`] in the working folder `cwd`.
pub fn optimize_in<S: AsRef<OsStr>>(cwd: Option<&Path>, args: &[S], env: &[(&str, Option<&OsStr>)]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_optimize"));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Like a CI job: no progress lines on stderr (a test that wants them removes `CI`).
    cmd.env("CI", "1");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn optimize");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        out.read_to_end(&mut s).unwrap();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        err.read_to_end(&mut s).unwrap();
        s
    });
    let (code, peak_rss_kib) = wait_measured(child);
    let wall = start.elapsed();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    Outcome { code, stdout, stderr, peak_rss_kib, wall }
}

/// Waits for the child with `wait4`, which reports that child's own peak RSS (not the
/// maximum over every child this test process has had, as `getrusage` would).
#[cfg(target_os = "linux")]
fn wait_measured(child: std::process::Child) -> (Option<i32>, Option<u64>) {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain FFI call with valid pointers to locals; `rusage` is plain old data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: as above; the pid is our own child, not yet reaped.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    // The child is reaped; `Child` does not wait on drop.
    drop(child);
    let code = if libc::WIFEXITED(status) { Some(libc::WEXITSTATUS(status)) } else { None };
    (code, Some(usage.ru_maxrss as u64))
}

#[cfg(not(target_os = "linux"))]
fn wait_measured(mut child: std::process::Child) -> (Option<i32>, Option<u64>) {
    (child.wait().expect("wait").code(), None)
}

pub fn optimize<S: AsRef<OsStr>>(args: &[S]) -> Outcome {
    optimize_env(args, &[])
}

/// Asserts that a run failed cleanly: the exit code, one `error:` first line holding every
/// needle, and no panic.
pub fn assert_failed(out: &Outcome, code: i32, needles: &[&str]) {
    let ctx = || format!("exit {:?}\n--- stderr\n{}\n--- stdout\n{}", out.code, out.stderr, out.stdout);
    assert!(!out.stderr.contains("panicked"), "panicked: {}", ctx());
    assert_ne!(out.code, Some(101), "exit 101 (panic): {}", ctx());
    assert_eq!(out.code, Some(code), "wrong exit code: {}", ctx());
    let first = out.first_line();
    assert!(first.starts_with("error:"), "first stderr line is not an error: {}", ctx());
    assert_eq!(first.matches("error:").count(), 1, "'error:' repeated: {}", ctx());
    for n in needles {
        assert!(first.contains(n), "first stderr line lacks {n:?}: {}", ctx());
    }
}

/// Asserts success and no panic.
pub fn assert_ok(out: &Outcome) {
    assert!(
        out.code == Some(0) && !out.stderr.contains("panicked"),
        "exit {:?}\n--- stderr\n{}\n--- stdout\n{}",
        out.code,
        out.stderr,
        out.stdout
    );
}

/// SHA-256 of a file, read in 1 MiB chunks (never the whole file in memory).
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// Temp files Kiln's atomic writer left in `dir`.
pub fn stray_temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".kiln-tmp-")))
        .collect()
}

/// The names in a folder, sorted (to check that a failed command wrote nothing).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Protobuf builders.

pub fn value_info(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.into()),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

/// An f32 initializer with its values in `raw_data`.
pub fn f32_raw(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(FLOAT),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

/// An f32 initializer whose data is external (`location`, `offset`, `length`; `None` leaves
/// the key out).
pub fn f32_external(name: &str, dims: &[i64], location: &str, offset: Option<u64>, length: Option<u64>) -> TensorProto {
    let mut entries = vec![StringStringEntryProto { key: Some("location".into()), value: Some(location.into()) }];
    if let Some(o) = offset {
        entries.push(StringStringEntryProto { key: Some("offset".into()), value: Some(o.to_string()) });
    }
    if let Some(l) = length {
        entries.push(StringStringEntryProto { key: Some("length".into()), value: Some(l.to_string()) });
    }
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(FLOAT),
        external_data: entries,
        data_location: Some(1),
        ..Default::default()
    }
}

pub fn model(graph: kiln_compiler::onnx::proto::GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(21) }],
        producer_name: Some("kiln-e2e-test".into()),
        graph: Some(graph),
        ..Default::default()
    }
}

pub fn write_model(path: &Path, m: &ModelProto) {
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

/// A `.npy` (format 1.0) file of little-endian elements; `descr` is numpy's type string
/// (`<f4`, `<i8`, …).
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to 64 and ending in '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// A `.safetensors` file from a raw JSON header and a byte buffer, written as the format
/// says: u64 little-endian header length, the header, the buffer. `header_len` overrides the
/// length field (to write a file that lies about it).
pub fn write_safetensors_raw(path: &Path, header: &str, buffer: &[u8], header_len: Option<u64>) {
    let mut out = header_len.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(buffer);
    std::fs::write(path, out).unwrap();
}

/// A small deterministic byte stream (xorshift64*), for "random" file contents.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A fixture's generated inputs for `seed` as tensors of their declared dtypes.
pub fn fixture_sample(fixture: &str, seed: u64) -> Vec<(String, kiln_compiler::Tensor)> {
    let f = kiln_fixtures::fixture(fixture).unwrap_or_else(|e| panic!("{e}"));
    kiln_fixtures::generate::inputs(f, seed)
        .into_iter()
        .map(|g| {
            let t = match g.dtype.as_str() {
                "f32" => {
                    kiln_compiler::Tensor::from_slice(g.shape, &g.values.iter().map(|&v| v as f32).collect::<Vec<_>>())
                }
                "i64" => {
                    kiln_compiler::Tensor::from_slice(g.shape, &g.values.iter().map(|&v| v as i64).collect::<Vec<_>>())
                }
                "i32" => {
                    kiln_compiler::Tensor::from_slice(g.shape, &g.values.iter().map(|&v| v as i32).collect::<Vec<_>>())
                }
                other => panic!("fixture {fixture}: input {} of dtype {other}", g.name),
            };
            (g.name, t.unwrap())
        })
        .collect()
}

/// Writes samples as a folder of `.npz` files (one per sample, keys = input names), the form
/// `--data` reads; returns the folder.
pub fn write_npz_folder(dir: &Path, samples: &[Vec<(String, kiln_compiler::Tensor)>]) -> PathBuf {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    for (i, sample) in samples.iter().enumerate() {
        let file = std::fs::File::create(dir.join(format!("sample_{i:04}.npz"))).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        for (name, t) in sample {
            zip.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(&kiln_compiler::npy::encode_npy(name, t).unwrap()).unwrap();
        }
        zip.finish().unwrap();
    }
    dir.to_path_buf()
}

/// The Python with `onnx==1.20.1` that `cargo xtask test` prepares.
pub fn checker_python() -> PathBuf {
    let p = std::env::var_os("KILN_CHECK_PYTHON").unwrap_or_else(|| {
        panic!("KILN_CHECK_PYTHON is not set: run the tests through `cargo xtask test`, which creates the checker venv")
    });
    let p = PathBuf::from(p);
    assert!(p.is_file(), "KILN_CHECK_PYTHON={} does not exist", p.display());
    p
}

/// Runs `onnx.checker.check_model(path, full_check=True)` on each model; panics with the
/// checker's message on the first failure.
pub fn onnx_check(models: &[PathBuf]) {
    let script = "import sys, onnx\n\
        assert onnx.__version__ == '1.20.1', onnx.__version__\n\
        for p in sys.argv[1:]:\n\
        \x20   onnx.checker.check_model(p, full_check=True)\n\
        \x20   print('ok', p)\n";
    let out = Command::new(checker_python()).arg("-c").arg(script).args(models).output().unwrap();
    assert!(
        out.status.success(),
        "onnx.checker failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), models.len());
}
