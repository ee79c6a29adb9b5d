//! End-to-end: a model with more than 2 GiB of weights (over protobuf's limit), kept in
//! external data. `optimize` must convert and inspect it with a small resident set (the data
//! is memory-mapped and copied file to file, never loaded), write the same bytes, and refuse
//! `--inline` cleanly.
//!
//! The model is generated here straight from protobuf structs, its data file written in 1 MiB
//! chunks: the test never holds the weights in memory either.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use common::*;
use kiln_compiler::onnx::proto::{GraphProto, ModelProto, TensorProto};
use prost::Message;
use sha2::{Digest, Sha256};

/// Nine f32 [8192, 8192] matrices: 9 × 256 MiB = 2.25 GiB.
const N: i64 = 8192;
const LAYERS: usize = 9;
const TENSOR_BYTES: u64 = (N * N * 4) as u64;
const CHUNK: usize = 1 << 20;
/// The children's resident set must stay far below the model's size.
const RSS_LIMIT_KIB: u64 = 512 * 1024;
/// Disk the test needs at its peak: the input's data and one converted copy (each output is
/// checked and removed before the next is written), plus room for the rest of the suite.
const DISK_NEEDED: u64 = 2 * TENSOR_BYTES * LAYERS as u64 + (1 << 30);

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes the data file: each tensor in turn, chunk by chunk. A chunk is a fixed pseudo-random
/// MiB with the tensor and chunk index stamped into every 4 KiB page, so that no two pages of
/// the file are alike and a misplaced page changes the hash. Returns each tensor's SHA-256.
fn write_weights(path: &Path) -> Vec<String> {
    let base = pseudo_random(0x6b69_6c6e, CHUNK);
    let mut chunk = base.clone();
    let mut f = std::io::BufWriter::with_capacity(CHUNK, std::fs::File::create(path).unwrap());
    let chunks_per_tensor = TENSOR_BYTES as usize / CHUNK;
    let mut hashes = Vec::new();
    for t in 0..LAYERS {
        let mut h = Sha256::new();
        for c in 0..chunks_per_tensor {
            let stamp = ((t as u64) << 32 | c as u64).to_le_bytes();
            for page in (0..CHUNK).step_by(4096) {
                chunk[page..page + 8].copy_from_slice(&stamp);
            }
            h.update(&chunk);
            f.write_all(&chunk).unwrap();
        }
        hashes.push(format!("{:x}", h.finalize()));
    }
    f.flush().unwrap();
    hashes
}

/// x[1, N] → MatMul W0 → … → MatMul W8 → y[1, N], the weights in `data` back to back.
fn big_model(data: &str) -> ModelProto {
    let mut g = GraphProto { name: Some("big".into()), ..Default::default() };
    g.input.push(value_info("x", FLOAT, &[1, N]));
    let mut prev = "x".to_string();
    for i in 0..LAYERS {
        let w = format!("W{i}");
        let out = if i + 1 == LAYERS { "y".to_string() } else { format!("h{i}") };
        g.initializer.push(f32_external(&w, &[N, N], data, Some(i as u64 * TENSOR_BYTES), Some(TENSOR_BYTES)));
        g.node.push(node("MatMul", &format!("mm{i}"), &[&prev, &w], &[&out]));
        prev = out;
    }
    g.output.push(value_info("y", FLOAT, &[1, N]));
    model(g)
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key.as_deref() == Some(key)).and_then(|e| e.value.as_deref())
}

/// SHA-256 of `len` bytes of a file from `offset`, read in chunks.
fn sha256_region(path: &Path, offset: u64, len: u64) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut take = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n_total = 0u64;
    loop {
        let n = take.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    assert_eq!(n_total, len, "{} is too short", path.display());
    format!("{:x}", h.finalize())
}

/// Checks a converted model: same graph, every weight external in `data_file` with the same
/// bytes as the original. Returns the data files the model refers to.
fn check_output(model_path: &Path, data_file: &str, hashes: &[String]) -> Vec<String> {
    let bytes = std::fs::read(model_path).unwrap();
    assert!(bytes.len() < 1 << 20, "the .onnx itself holds weights: {} bytes", bytes.len());
    let mp = ModelProto::decode(bytes.as_slice()).unwrap();
    let g = mp.graph.unwrap();
    assert_eq!(g.node.len(), LAYERS);
    assert_eq!(g.initializer.len(), LAYERS);
    let dir = model_path.parent().unwrap();
    let mut files = BTreeMap::new();
    for (i, t) in g.initializer.iter().enumerate() {
        assert_eq!(t.name.as_deref(), Some(format!("W{i}").as_str()));
        assert_eq!(t.dims, vec![N, N]);
        assert_eq!(t.data_type, Some(FLOAT));
        assert_eq!(t.data_location, Some(1), "W{i} is not external");
        assert!(t.raw_data.is_none());
        let location = entry(t, "location").unwrap();
        assert_eq!(location, data_file);
        let offset: u64 = entry(t, "offset").map_or(0, |o| o.parse().unwrap());
        let length: u64 = entry(t, "length").map_or(TENSOR_BYTES, |l| l.parse().unwrap());
        assert_eq!(length, TENSOR_BYTES);
        assert_eq!(sha256_region(&dir.join(location), offset, length), hashes[i], "W{i} differs");
        files.insert(location.to_string(), ());
    }
    files.into_keys().collect()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn assert_small(what: &str, out: &Outcome) {
    eprintln!("{what}: exit {:?}, wall {:.2} s, peak RSS {}", out.code, out.wall.as_secs_f64(), mib(out.peak_rss_kib));
    if let Some(kib) = out.peak_rss_kib {
        assert!(kib < RSS_LIMIT_KIB, "{what}: peak RSS {} is not far below the model's size", mib(Some(kib)));
    }
}

#[test]
fn model_over_2_gib() {
    let start = Instant::now();
    // In the target folder rather than /tmp, which may be a RAM-backed tmpfs: up to 4.5 GiB at once.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path();
    // A full disk is the machine's state, not a Kiln failure: say so loudly and stop, rather
    // than fail half-way with ENOSPC (which the convert steps would report as exit 3).
    match free_bytes(root) {
        Some(free) if free < DISK_NEEDED => {
            eprintln!(
                "SKIPPED model_over_2_gib: {:.1} GiB free in {}, the test needs {:.1} GiB",
                free as f64 / (1u64 << 30) as f64,
                root.display(),
                DISK_NEEDED as f64 / (1u64 << 30) as f64
            );
            return;
        }
        _ => {}
    }
    let data_name = "big.weights";
    let hashes = write_weights(&root.join(data_name));
    let input = root.join("big.onnx");
    write_model(&input, &big_model(data_name));
    let input_hash = sha256_file(&input);
    let meta = std::fs::metadata(root.join(data_name)).unwrap();
    let data_meta = (meta.len(), meta.modified().unwrap());
    let generated = start.elapsed();
    eprintln!(
        "generated {:.2} GiB of weights in {:.2} s",
        (TENSOR_BYTES * LAYERS as u64) as f64 / (1u64 << 30) as f64,
        generated.as_secs_f64()
    );

    // inspect --json: counts every parameter without reading them.
    let out = optimize(&["inspect".as_ref(), input.as_os_str(), "--json".as_ref()]);
    assert_ok(&out);
    assert_small("inspect --json", &out);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["parameters"], serde_json::json!((N * N) as u64 * LAYERS as u64), "{}", out.stdout);
    assert_eq!(json["parameter_bytes"], serde_json::json!(TENSOR_BYTES * LAYERS as u64));
    assert_eq!(json["nodes"], serde_json::json!(LAYERS));

    // convert, external data kept as loaded (same file name, same offsets).
    let out_dir = root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out_model = out_dir.join("big.onnx");
    let out = optimize(&["convert".as_ref(), input.as_os_str(), out_model.as_os_str()]);
    assert_ok(&out);
    assert_small("convert (as loaded)", &out);
    let converted = Instant::now();
    assert_eq!(check_output(&out_model, data_name, &hashes), vec![data_name.to_string()]);
    assert_eq!(listing(&out_dir), vec!["big.onnx".to_string(), data_name.to_string()]);
    // Kept as loaded: the very same data file.
    assert_eq!(
        std::fs::metadata(out_dir.join(data_name)).unwrap().len(),
        std::fs::metadata(root.join(data_name)).unwrap().len()
    );
    let mut verifying = converted.elapsed();
    // Room for the next copy.
    std::fs::remove_dir_all(&out_dir).unwrap();

    // convert into one new raw data file.
    let out2_dir = root.join("out2");
    std::fs::create_dir(&out2_dir).unwrap();
    let out2_model = out2_dir.join("big.onnx");
    let out = optimize(&[
        "convert".as_ref(),
        input.as_os_str(),
        out2_model.as_os_str(),
        "--external-data".as_ref(),
        "weights.bin".as_ref(),
    ]);
    assert_ok(&out);
    assert_small("convert --external-data weights.bin", &out);

    // --inline cannot work: a clean error, exit 2, nothing written.
    let out3_dir = root.join("out3");
    std::fs::create_dir(&out3_dir).unwrap();
    let out3_model = out3_dir.join("big.onnx");
    let out = optimize(&["convert".as_ref(), input.as_os_str(), out3_model.as_os_str(), "--inline".as_ref()]);
    assert_failed(&out, 2, &[&out3_model.display().to_string(), "over protobuf's 2 GiB limit"]);
    assert_small("convert --inline", &out);
    eprintln!("convert --inline: {}", out.first_line());
    assert_eq!(listing(&out3_dir), Vec::<String>::new(), "--inline left output behind");

    let converted = Instant::now();
    assert_eq!(check_output(&out2_model, "weights.bin", &hashes), vec!["weights.bin".to_string()]);
    assert_eq!(listing(&out2_dir), vec!["big.onnx".to_string(), "weights.bin".to_string()]);
    verifying += converted.elapsed();
    assert_eq!(sha256_file(&input), input_hash, "the input model changed");
    let meta = std::fs::metadata(root.join(data_name)).unwrap();
    assert_eq!((meta.len(), meta.modified().unwrap()), data_meta, "the input data file changed");
    eprintln!(
        "verified outputs in {:.2} s; whole test {:.2} s",
        verifying.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
