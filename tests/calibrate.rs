//! `optimize calibrate` end to end on the cnn and transformer fixtures: ranges are
//! byte-identical whatever the batch size and however the samples are sharded, mismatched data
//! is refused naming the input and the file, and memory does not grow with the sample count.

mod common;

use std::path::{Path, PathBuf};

use common::{Outcome, assert_failed, assert_ok, optimize};
use kiln::compiler::Tensor;
use kiln::compiler::npy::encode_npy;
use kiln::compiler::rng::SplitMix64;

/// The seeded generator, with the two draws these samples need.
struct Rng(SplitMix64);

impl Rng {
    fn unit(&mut self) -> f32 {
        (self.0.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A minimal `.npz` writer: a zip archive with stored (uncompressed) members, as `np.savez`.
fn write_npz(path: &Path, arrays: &[(&str, Tensor)]) {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    let mut count = 0u16;
    for (name, t) in arrays {
        let name = format!("{name}.npy");
        let data = encode_npy(&name, t).unwrap();
        let (crc, size, offset) = (crc32(&data), data.len() as u32, out.len() as u32);
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0u8; 8]); // comment len, disk, internal attrs, external attrs (low)
        central.extend_from_slice(&[0u8; 2]); // external attrs (high)
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        count += 1;
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    std::fs::write(path, out).unwrap();
}

/// CNN samples: text-line crops in [-1, 1) of varying width (the model's width is dynamic).
fn cnn_sample(rng: &mut Rng) -> Vec<(&'static str, Tensor)> {
    let w = [96usize, 128, 192][rng.below(3) as usize];
    let n = 3 * 48 * w;
    let v: Vec<f32> = (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect();
    vec![("x", Tensor::from_slice(vec![1, 3, 48, w], &v).unwrap())]
}

/// Transformer samples: [CLS] ids [SEP] of varying length with a full attention mask.
fn transformer_sample(rng: &mut Rng) -> Vec<(&'static str, Tensor)> {
    let len = 8 + rng.below(17) as usize;
    let mut ids: Vec<i64> = (0..len).map(|_| 1000 + rng.below(29_522) as i64).collect();
    ids[0] = 101;
    ids[len - 1] = 102;
    vec![
        ("input_ids", Tensor::from_slice(vec![1, len], &ids).unwrap()),
        ("attention_mask", Tensor::from_slice(vec![1, len], &vec![1i64; len]).unwrap()),
    ]
}

/// A folder of `n` seeded samples, one `.npz` each.
fn data_folder(dir: &Path, n: usize, seed: u64, sample: fn(&mut Rng) -> Vec<(&'static str, Tensor)>) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = Rng(SplitMix64::new(seed));
    for i in 0..n {
        write_npz(&data.join(format!("sample_{i:04}.npz")), &sample(&mut rng));
    }
    data
}

fn model(name: &str) -> PathBuf {
    kiln_fixtures::model(name).expect("fixture missing: run `cargo xtask fixtures`")
}

fn calibrate(model: &Path, data: &Path, extra: &[&str], out: &Path) -> Outcome {
    let mut args: Vec<String> = vec!["calibrate".into(), model.display().to_string(), "--data".into()];
    args.push(data.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".to_string(), out.display().to_string()]);
    let o = optimize(&args);
    assert_ok(&o);
    o
}

/// The first line where two texts differ, with the tensor it belongs to.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let mut tensor = "";
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x.ends_with(": {") {
            tensor = x.trim();
        }
        if x != y {
            return format!("line {}: in {tensor}\n  expected {x}\n  found    {y}", i + 1);
        }
    }
    format!("lengths differ: {} vs {} lines", a.lines().count(), b.lines().count())
}

/// Batch sizes 1, 8 and 32, and 4 shards merged, all give the same bytes.
fn ranges_are_invariant(fixture: &str, method: &str, sample: fn(&mut Rng) -> Vec<(&'static str, Tensor)>) {
    let dir = tempfile::tempdir().unwrap();
    let m = model(fixture);
    let data = data_folder(dir.path(), 40, 7, sample);
    let reference = dir.path().join("b1.json");
    let o = calibrate(&m, &data, &["--method", method, "--batch", "1"], &reference);
    println!("{fixture} {method} batch 1: {:.2}s, peak RSS {:?} KiB", o.wall.as_secs_f64(), o.peak_rss_kib);
    let expected = std::fs::read(&reference).unwrap();
    let text = String::from_utf8(expected.clone()).unwrap();
    assert!(text.contains(&format!("\"method\": \"{method}\"")), "{}", &text[..300]);
    assert!(text.contains("\"samples\": 40"));
    for batch in ["8", "32"] {
        let out = dir.path().join(format!("b{batch}.json"));
        let o = calibrate(&m, &data, &["--method", method, "--batch", batch], &out);
        println!("{fixture} {method} batch {batch}: {:.2}s", o.wall.as_secs_f64());
        let found = std::fs::read(&out).unwrap();
        assert!(found == expected, "{fixture}: batch {batch} differs: {}", first_difference(&expected, &found));
    }
    let mut shards = Vec::new();
    for i in 0..4 {
        let out = dir.path().join(format!("shard{i}.json"));
        calibrate(&m, &data, &["--method", method, "--shard", &format!("{i}/4")], &out);
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("\"samples\": 10"), "shard {i}");
        shards.push(out.display().to_string());
    }
    // Merged in an order other than the shards' own.
    let merged = dir.path().join("merged.json");
    let mut args = vec!["calibrate".to_string(), "--merge".into()];
    args.extend([&shards[2], &shards[0], &shards[3], &shards[1]].map(|s| s.clone()));
    args.extend(["-o".into(), merged.display().to_string()]);
    assert_ok(&optimize(&args));
    let found = std::fs::read(&merged).unwrap();
    assert!(found == expected, "{fixture}: 4 shards merged differ: {}", first_difference(&expected, &found));
}

#[test]
fn cnn_ranges_do_not_depend_on_batch_or_shards() {
    ranges_are_invariant("cnn", "percentile:99.99", cnn_sample);
}

#[test]
fn transformer_ranges_do_not_depend_on_batch_or_shards() {
    ranges_are_invariant("transformer", "entropy", transformer_sample);
}

#[test]
fn mismatched_data_names_the_input_and_the_file() {
    let m = model("cnn");
    let dir = tempfile::tempdir().unwrap();
    let good = || {
        let mut rng = Rng(SplitMix64::new(1));
        cnn_sample(&mut rng).remove(0).1
    };
    type Arrays = Vec<(&'static str, Tensor)>;
    let cases: Vec<(&str, Arrays, &str)> = vec![
        ("name", vec![("y", good())], "`y`"),
        ("missing", vec![], "`x`"),
        ("dtype", vec![("x", Tensor::from_slice(vec![1, 3, 2, 2], &[0f64; 12]).unwrap())], "`x` has type f64"),
        (
            "shape",
            vec![("x", Tensor::from_slice(vec![1, 4, 2, 2], &[0f32; 16]).unwrap())],
            "`x` has shape [1, 4, 2, 2]",
        ),
        ("rank", vec![("x", Tensor::from_slice(vec![3, 2, 2], &[0f32; 12]).unwrap())], "`x` has shape [3, 2, 2]"),
    ];
    for (case, arrays, needle) in cases {
        let data = dir.path().join(case);
        std::fs::create_dir_all(&data).unwrap();
        let mut rng = Rng(SplitMix64::new(2));
        write_npz(&data.join("a_good.npz"), &cnn_sample(&mut rng));
        write_npz(&data.join("b_bad.npz"), &arrays);
        let out = dir.path().join(format!("{case}.json"));
        let args = ["calibrate", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "-o", out.to_str().unwrap()];
        let o = optimize(&args);
        assert_failed(&o, 2, &[needle, "b_bad.npz"]);
        assert!(!out.exists(), "{case}: no ranges file is written on failure");
    }
    // The transformer's two inputs share symbolic dimensions.
    let data = dir.path().join("seq");
    std::fs::create_dir_all(&data).unwrap();
    let ids = Tensor::from_slice(vec![1, 5], &[101i64, 2000, 2001, 2002, 102]).unwrap();
    let mask = Tensor::from_slice(vec![1, 4], &[1i64; 4]).unwrap();
    write_npz(&data.join("s.npz"), &[("input_ids", ids), ("attention_mask", mask)]);
    let t = model("transformer");
    let o = optimize(&["calibrate", t.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_failed(&o, 2, &["s.npz", "attention_mask"]);
}

#[test]
fn bad_usage_exits_2() {
    let m = model("cnn");
    let dir = tempfile::tempdir().unwrap();
    let data = data_folder(dir.path(), 2, 3, cnn_sample);
    let (m, d) = (m.to_str().unwrap(), data.to_str().unwrap());
    assert_failed(&optimize(&["calibrate", m, "--data", d, "--method", "kl"]), 2, &["kl"]);
    assert_failed(&optimize(&["calibrate", m, "--data", d, "--shard", "4/4"]), 2, &["4/4"]);
    assert_failed(&optimize(&["calibrate", m, "--data", "/nonexistent/data"]), 2, &["/nonexistent/data"]);
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{}").unwrap();
    assert_failed(&optimize(&["calibrate", "--merge", junk.to_str().unwrap()]), 2, &["junk.json"]);
    // Synthetic data works, with a warning.
    let o = optimize(&["calibrate", m, "--samples", "2", "--shape", "x=1,3,48,96"]);
    assert_ok(&o);
    assert!(o.stderr.contains("warning: no calibration data"), "{}", o.stderr);
    assert!(o.stdout.starts_with('{'), "ranges are printed without -o");
}

#[test]
fn memory_does_not_grow_with_the_sample_count() {
    let m = model("transformer");
    let dir = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for n in [16usize, 64] {
        let sub = dir.path().join(format!("n{n}"));
        let data = data_folder(&sub, n, 11, transformer_sample);
        let o = calibrate(&m, &data, &["--method", "entropy"], &sub.join("r.json"));
        let peak = o.peak_rss_kib.expect("peak RSS (wait4)");
        println!("transformer entropy, {n} samples: peak RSS {} MiB, {:.2}s", peak / 1024, o.wall.as_secs_f64());
        peaks.push(peak);
    }
    assert!(
        (peaks[1] as f64) < 1.5 * peaks[0] as f64,
        "peak RSS grew with the sample count: {} KiB for 16 samples, {} KiB for 64",
        peaks[0],
        peaks[1]
    );
}
