//! End-to-end: the `optimize` binary on bad input. Every case must fail with the documented
//! exit code and one `error:` line naming the file and the tensor or node at fault, without a
//! panic, without touching the input files, and without leaving partial output behind.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;
use kiln_compiler::onnx::proto::{GraphProto, ModelProto};
use prost::Message;

const BAD_INPUT: i32 = 2;
const RUNTIME: i32 = 3;

/// x[1,4] → MatMul "mm" with W[4,4] → h → Relu "relu" → y[1,4].
fn graph_with(w: kiln_compiler::onnx::proto::TensorProto) -> GraphProto {
    GraphProto {
        name: Some("g".into()),
        node: vec![node("MatMul", "mm", &["x", "W"], &["h"]), node("Relu", "relu", &["h"], &["y"])],
        initializer: vec![w],
        input: vec![value_info("x", FLOAT, &[1, 4])],
        output: vec![value_info("y", FLOAT, &[1, 4])],
        ..Default::default()
    }
}

fn w_values() -> Vec<f32> {
    (0..16).map(|i| i as f32 * 0.25 - 2.0).collect()
}

fn valid_model() -> ModelProto {
    model(graph_with(f32_raw("W", &[4, 4], &w_values())))
}

/// A scratch folder: `in/` holds the model and its data, `out/` receives output.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    out: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let input = root.join("in");
        let out = root.join("out");
        std::fs::create_dir(&input).unwrap();
        std::fs::create_dir(&out).unwrap();
        Scratch { _dir: dir, root, input, out }
    }

    fn model_path(&self) -> PathBuf {
        self.input.join("model.onnx")
    }

    fn write_model(&self, m: &ModelProto) -> PathBuf {
        let p = self.model_path();
        write_model(&p, m);
        p
    }

    fn write_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.input.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A valid `x` input for `run`.
    fn x_npy(&self) -> PathBuf {
        let p = self.root.join("x.npy");
        let data: Vec<u8> = [1.0f32, -1.0, 0.5, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_npy(&p, "<f4", &[1, 4], &data);
        p
    }

    /// Hashes of every file under `in/` and the root (inputs must never change).
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut m = BTreeMap::new();
        for dir in [&self.root, &self.input] {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    m.insert(p.clone(), sha256_file(&p));
                }
            }
        }
        m
    }

    /// Runs `optimize ARGS` and checks a clean failure that changed nothing and wrote nothing.
    fn expect_failure(&self, args: &[&OsStr], env: &[(&str, Option<&OsStr>)], code: i32, needles: &[&str]) -> String {
        let before = self.snapshot();
        let out = optimize_env(args, env);
        assert_failed(&out, code, needles);
        assert_eq!(self.snapshot(), before, "the inputs changed");
        assert_eq!(stray_temp_files(&self.out), Vec::<PathBuf>::new(), "temp files left");
        assert_eq!(stray_temp_files(&self.input), Vec::<PathBuf>::new(), "temp files left");
        assert_eq!(listing(&self.out), Vec::<String>::new(), "a failed command wrote output");
        eprintln!("optimize {:?}\n  → exit {:?}: {}", args, out.code, out.first_line());
        out.first_line().to_string()
    }

    /// `inspect`, `convert` and `run` of a model that cannot be read all fail the same way.
    fn expect_unreadable(&self, model: &Path, needles: &[&str]) {
        let out_model = self.out.join("m.onnx");
        let x = self.x_npy();
        let x_arg = format!("x={}", x.display());
        let runs: [Vec<&OsStr>; 3] = [
            vec!["inspect".as_ref(), model.as_os_str()],
            vec!["convert".as_ref(), model.as_os_str(), out_model.as_os_str()],
            vec!["run".as_ref(), model.as_os_str(), "--input".as_ref(), x_arg.as_ref()],
        ];
        for args in &runs {
            self.expect_failure(args, &[], BAD_INPUT, needles);
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn truncated_model() {
    let sc = Scratch::new();
    let bytes = model(graph_with(f32_raw("W", &[16, 16], &vec![0.5; 256]))).encode_to_vec();
    let m = sc.write_bytes("model.onnx", &bytes[..bytes.len() / 2]);
    sc.expect_unreadable(&m, &[&s(&m), "truncated"]);
}

#[test]
fn text_file() {
    let sc = Scratch::new();
    let m = sc.write_bytes("model.onnx", b"this is a text file, not an ONNX model\nsecond line\n");
    sc.expect_unreadable(&m, &[&s(&m)]);
}

#[test]
fn random_bytes() {
    let sc = Scratch::new();
    let m = sc.write_bytes("model.onnx", &pseudo_random(42, 4096));
    sc.expect_unreadable(&m, &[&s(&m)]);
}

#[test]
fn empty_file() {
    let sc = Scratch::new();
    let m = sc.write_bytes("model.onnx", b"");
    sc.expect_unreadable(&m, &[&s(&m), "empty"]);
}

#[test]
fn missing_file() {
    let sc = Scratch::new();
    let m = sc.input.join("nowhere.onnx");
    sc.expect_unreadable(&m, &[&s(&m)]);
}

#[test]
fn cycle() {
    let sc = Scratch::new();
    let g = GraphProto {
        name: Some("g".into()),
        node: vec![node("Add", "first", &["x", "b"], &["a"]), node("Relu", "second", &["a"], &["b"])],
        input: vec![value_info("x", FLOAT, &[1, 4])],
        output: vec![value_info("b", FLOAT, &[1, 4])],
        ..Default::default()
    };
    let m = sc.write_model(&model(g));
    sc.expect_unreadable(&m, &[&s(&m), "cycle", "first"]);
}

#[test]
fn dangling_input() {
    let sc = Scratch::new();
    let mut g = graph_with(f32_raw("W", &[4, 4], &w_values()));
    g.node[1].input[0] = "ghost".into();
    let m = sc.write_model(&model(g));
    sc.expect_unreadable(&m, &[&s(&m), "ghost", "relu"]);
}

#[test]
fn duplicate_value_name() {
    let sc = Scratch::new();
    let mut g = graph_with(f32_raw("W", &[4, 4], &w_values()));
    // A second node defining "h" again.
    g.node.push(node("Relu", "again", &["x"], &["h"]));
    let m = sc.write_model(&model(g));
    sc.expect_unreadable(&m, &[&s(&m), "'h'"]);
}

/// A model in `in/` whose W lives in `data` (written at `data_path`, relative to the scratch
/// root) and is referenced as `location`.
fn external_case(location: &str, offset: Option<u64>, length: Option<u64>, data_len: usize) -> (Scratch, PathBuf) {
    let sc = Scratch::new();
    let data: Vec<u8> = pseudo_random(7, data_len);
    std::fs::write(sc.input.join("w.bin"), &data).unwrap();
    // Also a file outside the model's folder, so a location escaping it would resolve.
    std::fs::write(sc.root.join("w.bin"), &data).unwrap();
    let m = sc.write_model(&model(graph_with(f32_external("W", &[4, 4], location, offset, length))));
    (sc, m)
}

#[test]
fn external_location_with_parent_dir() {
    let (sc, m) = external_case("../w.bin", Some(0), Some(64), 64);
    sc.expect_unreadable(&m, &[&s(&m), "'W'", "../w.bin", ".."]);
}

#[test]
fn external_location_absolute() {
    let sc0 = tempfile::tempdir().unwrap();
    let abs = sc0.path().join("abs.bin");
    std::fs::write(&abs, pseudo_random(3, 64)).unwrap();
    let (sc, m) = external_case(&s(&abs), Some(0), Some(64), 64);
    sc.expect_unreadable(&m, &[&s(&m), "'W'", "absolute"]);
}

#[test]
fn external_offset_past_end() {
    let (sc, m) = external_case("w.bin", Some(32), Some(64), 64);
    sc.expect_unreadable(&m, &[&s(&m), "'W'", "w.bin", "past the end"]);
}

#[test]
fn external_length_disagrees_with_shape() {
    let (sc, m) = external_case("w.bin", Some(0), Some(32), 64);
    sc.expect_unreadable(&m, &[&s(&m), "'W'", "w.bin", "32", "64"]);
}

#[test]
fn external_data_file_missing() {
    let sc = Scratch::new();
    let m = sc.write_model(&model(graph_with(f32_external("W", &[4, 4], "absent.bin", None, None))));
    sc.expect_unreadable(&m, &[&s(&m), "'W'", "absent.bin"]);
}

#[test]
fn raw_data_length_disagrees_with_shape() {
    let sc = Scratch::new();
    let mut w = f32_raw("W", &[4, 4], &w_values());
    w.raw_data = Some(bytes::Bytes::from(vec![0u8; 60]));
    let m = sc.write_model(&model(graph_with(w)));
    sc.expect_unreadable(&m, &[&s(&m), "'W'", "60"]);
}

/// `convert --weights CKPT` with a bad checkpoint.
fn expect_bad_checkpoint(header: &str, buffer: &[u8], header_len: Option<u64>, needles: &[&str]) {
    let sc = Scratch::new();
    let m = sc.write_model(&valid_model());
    let ckpt = sc.input.join("ckpt.safetensors");
    write_safetensors_raw(&ckpt, header, buffer, header_len);
    let out_model = sc.out.join("m.onnx");
    let mut all = vec![s(&ckpt)];
    all.extend(needles.iter().map(|n| n.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    sc.expect_failure(
        &["convert".as_ref(), m.as_os_str(), out_model.as_os_str(), "--weights".as_ref(), ckpt.as_os_str()],
        &[],
        BAD_INPUT,
        &all,
    );
}

#[test]
fn checkpoint_header_length_past_end() {
    let header = r#"{"W":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
    expect_bad_checkpoint(header, &[0u8; 64], Some(1 << 20), &["header"]);
}

#[test]
fn checkpoint_offsets_past_buffer() {
    // The header promises 64 bytes; the buffer has 32.
    let header = r#"{"W":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
    expect_bad_checkpoint(header, &[0u8; 32], None, &["\"W\"", "past"]);
}

#[test]
fn checkpoint_size_disagrees_with_shape() {
    // 4×4 f32 needs 64 bytes, the offsets give 48.
    let header = r#"{"W":{"dtype":"F32","shape":[4,4],"data_offsets":[0,48]}}"#;
    expect_bad_checkpoint(header, &[0u8; 48], None, &["\"W\"", "64", "48"]);
}

#[test]
fn checkpoint_shape_mismatch_with_initializer() {
    let header = r#"{"W":{"dtype":"F32","shape":[2,8],"data_offsets":[0,64]}}"#;
    expect_bad_checkpoint(header, &[0u8; 64], None, &["'W'", "f32[2, 8]", "f32[4, 4]", "shape differs"]);
}

/// `run` of the valid model with an explicit environment and inputs.
fn expect_run_failure(
    inputs: &[(&str, &str, &[usize], Vec<u8>)],
    env: &[(&str, Option<&OsStr>)],
    code: i32,
    needles: &[&str],
) -> String {
    let sc = Scratch::new();
    let m = sc.write_model(&valid_model());
    let mut args: Vec<std::ffi::OsString> = vec!["run".into(), m.clone().into()];
    let mut files = Vec::new();
    for (name, descr, shape, data) in inputs {
        let p = sc.root.join(format!("{name}.npy"));
        write_npy(&p, descr, shape, data);
        args.push("--input".into());
        args.push(format!("{name}={}", p.display()).into());
        files.push(p);
    }
    args.push("--output-dir".into());
    args.push(sc.out.clone().into());
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    sc.expect_failure(&args, env, code, needles)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn run_input_wrong_dtype() {
    let data: Vec<u8> = [1i64, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    expect_run_failure(&[("x", "<i8", &[1, 4], data)], &[], BAD_INPUT, &["x.npy", "`x`", "i64", "f32[1, 4]"]);
}

#[test]
fn run_input_wrong_shape() {
    expect_run_failure(&[("x", "<f4", &[2, 3], f32_bytes(&[0.0; 6]))], &[], BAD_INPUT, &["x.npy", "`x`", "[2, 3]"]);
}

#[test]
fn run_input_not_npy() {
    let sc = Scratch::new();
    let m = sc.write_model(&valid_model());
    let x = sc.root.join("x.npy");
    std::fs::write(&x, "1,2,3,4\n").unwrap();
    sc.expect_failure(
        &["run".as_ref(), m.as_os_str(), "--input".as_ref(), format!("x={}", s(&x)).as_ref()],
        &[],
        BAD_INPUT,
        &[&s(&x), "not a .npy file"],
    );
}

#[test]
fn run_unknown_input_name() {
    expect_run_failure(
        &[("x", "<f4", &[1, 4], f32_bytes(&[0.0; 4])), ("nope", "<f4", &[1, 4], f32_bytes(&[0.0; 4]))],
        &[],
        BAD_INPUT,
        &["model.onnx", "`nope`"],
    );
}

#[test]
fn run_ort_library_missing() {
    let missing = std::env::temp_dir().join("kiln-no-such-dir").join("libonnxruntime.so.1.31.1");
    let first = expect_run_failure(
        &[("x", "<f4", &[1, 4], f32_bytes(&[0.0; 4]))],
        &[("KILN_ORT_LIB", Some(missing.as_os_str())), ("ORT_DYLIB_PATH", None)],
        RUNTIME,
        &["KILN_ORT_LIB", &s(&missing)],
    );
    assert!(first.contains("does not exist"), "{first}");
}

#[test]
fn run_ort_library_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, "not an ELF file\n").unwrap();
    expect_run_failure(
        &[("x", "<f4", &[1, 4], f32_bytes(&[0.0; 4]))],
        &[("KILN_ORT_LIB", Some(fake.as_os_str())), ("ORT_DYLIB_PATH", None)],
        RUNTIME,
        &[&s(&fake)],
    );
}

#[test]
fn convert_into_missing_folder() {
    let sc = Scratch::new();
    let m = sc.write_model(&valid_model());
    let target = sc.out.join("no").join("such").join("m.onnx");
    let first = sc.expect_failure(
        &["convert".as_ref(), m.as_os_str(), target.as_os_str()],
        &[],
        BAD_INPUT,
        &[&s(&sc.out.join("no").join("such"))],
    );
    assert!(first.contains("does not exist"), "{first}");
    assert!(!sc.out.join("no").exists());
}

#[test]
fn convert_in_place() {
    // Inline weights, and weights in external data: both rewritten over themselves.
    for external in [false, true] {
        let sc = Scratch::new();
        let data = f32_bytes(&w_values());
        let w = if external {
            std::fs::write(sc.input.join("w.bin"), &data).unwrap();
            f32_external("W", &[4, 4], "w.bin", Some(0), Some(64))
        } else {
            f32_raw("W", &[4, 4], &w_values())
        };
        let m = sc.write_model(&model(graph_with(w)));
        let before = sc.snapshot();
        let out = optimize(&["convert".as_ref(), m.as_os_str(), m.as_os_str()]);
        assert_ok(&out);
        assert_eq!(stray_temp_files(&sc.input), Vec::<PathBuf>::new());
        // Reading back gives the same model: converting AsLoaded is byte-identical.
        assert_eq!(sc.snapshot(), before, "in-place convert changed the model's bytes");
        let out = optimize(&["inspect".as_ref(), m.as_os_str(), "--json".as_ref()]);
        assert_ok(&out);
        let back = kiln_compiler::onnx::load_model(&m).unwrap();
        let g = back.graph.as_ref().unwrap();
        let w = g.value(g.find_value("W").unwrap()).initializer().unwrap().clone();
        assert_eq!(w.bytes().unwrap().as_ref(), data.as_slice());
        // And `run` works on it.
        let x = sc.x_npy();
        let out = optimize(&["run".as_ref(), m.as_os_str(), "--input".as_ref(), format!("x={}", s(&x)).as_ref()]);
        assert_ok(&out);
        assert!(out.stdout.contains("y: f32[1, 4]"), "{}", out.stdout);
    }
}

/// Paths without a folder (`model.onnx`, run from the model's folder) and the mode of what
/// `convert` writes: an ordinary file's, not a private temp file's.
#[test]
fn relative_paths_and_output_mode() {
    let sc = Scratch::new();
    std::fs::write(sc.input.join("w.bin"), f32_bytes(&w_values())).unwrap();
    sc.write_model(&model(graph_with(f32_external("W", &[4, 4], "w.bin", Some(0), Some(64)))));
    let x = sc.x_npy();
    let cwd = Some(sc.input.as_path());
    let out = optimize_in(cwd, &["inspect", "model.onnx"], &[]);
    assert_ok(&out);
    let out = optimize_in(cwd, &["run", "model.onnx", "--input", &format!("x={}", s(&x))], &[]);
    assert_ok(&out);
    let out = optimize_in(
        cwd,
        &["convert", "model.onnx", "copy.onnx", "--external-data", "copy.bin", "--threshold", "0"],
        &[],
    );
    assert_ok(&out);
    let out = optimize_in(cwd, &["convert", "copy.onnx", "../out/back.onnx"], &[]);
    assert_ok(&out);
    assert_eq!(listing(&sc.out), vec!["back.onnx".to_string(), "copy.bin".to_string()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A file made the ordinary way shows what the umask allows.
        let plain = sc.out.join("plain");
        std::fs::write(&plain, b"").unwrap();
        for f in ["back.onnx", "copy.bin"] {
            assert_eq!(mode(&sc.out.join(f)), mode(&plain), "{f}");
        }
        assert_eq!(mode(&sc.input.join("copy.onnx")), mode(&plain));
    }
}
