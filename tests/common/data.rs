//! Realistic inputs for the fixtures (text-line crops for the cnn, tokenized sentences for the
//! transformer), written as `--data` folders, and the fixtures' outputs on them through ORT.

use std::path::{Path, PathBuf};

use kiln_compiler::Tensor;
use kiln_compiler::execute::load_session;
use kiln_compiler::onnx::load_model;
use kiln_compiler::rng::SplitMix64;
use kiln_compiler::runtime::{OrtExecutor, SessionConfig, Value};

use super::write_npy;

pub type Sample = Vec<(&'static str, Tensor)>;

/// A text-line crop like the cnn's inputs: a light background with dark strokes, upside
/// down half of the time, normalized to [-1, 1].
pub fn text_line(rng: &mut SplitMix64) -> Sample {
    let (h, w) = (48usize, 192usize);
    let bg = 0.8 + 0.2 * rng.next_f64() as f32;
    let mut img = vec![bg; h * w];
    let mut x = 4usize;
    while x < 180 {
        let sw = 2 + (rng.next_u64() % 8) as usize;
        let (top, bottom) = (8 + (rng.next_u64() % 12) as usize, 28 + (rng.next_u64() % 14) as usize);
        let ink = 0.3 * rng.next_f64() as f32;
        for r in top..bottom {
            for c in x..(x + sw).min(w) {
                img[r * w + c] = ink;
            }
        }
        x += sw + 1 + (rng.next_u64() % 7) as usize;
    }
    if rng.next_u64().is_multiple_of(2) {
        img.reverse();
    }
    let mut v = Vec::with_capacity(3 * h * w);
    for _ in 0..3 {
        v.extend(img.iter().map(|p| ((p + 0.05 * rng.next_normal() as f32).clamp(0.0, 1.0) - 0.5) / 0.5));
    }
    vec![("x", Tensor::from_slice(vec![1, 3, h, w], &v).unwrap())]
}

/// [CLS] tokens [SEP] then padding, at the fixture's length 16.
pub fn sentence(rng: &mut SplitMix64) -> Sample {
    let len = 6 + (rng.next_u64() % 11) as usize;
    let mut ids = vec![0i64; 16];
    let mut mask = vec![0i64; 16];
    for i in 0..len {
        ids[i] = 1000 + (rng.next_u64() % 29_522) as i64;
        mask[i] = 1;
    }
    ids[0] = 101;
    ids[len - 1] = 102;
    vec![
        ("input_ids", Tensor::from_slice(vec![1, 16], &ids).unwrap()),
        ("attention_mask", Tensor::from_slice(vec![1, 16], &mask).unwrap()),
    ]
}

pub fn samples(n: usize, seed: u64, make: fn(&mut SplitMix64) -> Sample) -> Vec<Sample> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| make(&mut rng)).collect()
}

/// A folder of per-sample folders holding `<input>.npy`.
pub fn write_samples(dir: &Path, samples: &[Sample]) -> PathBuf {
    for (i, s) in samples.iter().enumerate() {
        let d = dir.join(format!("sample_{i:03}"));
        std::fs::create_dir_all(&d).unwrap();
        for (name, t) in s {
            let descr = match t.dtype() {
                kiln_compiler::DataType::F32 => "<f4",
                _ => "<i8",
            };
            write_npy(&d.join(format!("{name}.npy")), descr, t.dims(), t.bytes().unwrap());
        }
    }
    dir.to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    kiln_fixtures::model(name).expect("fixture missing: run `cargo xtask fixtures`")
}

/// Outputs of a model on each sample, through ORT with all its graph optimizations.
pub fn outputs(model: &Path, samples: &[Sample]) -> Vec<Vec<(String, Value)>> {
    let m = load_model(model).unwrap();
    let mut s = load_session(&OrtExecutor::new(), &m, model.parent(), &SessionConfig::default()).unwrap();
    samples
        .iter()
        .map(|x| {
            let feed: Vec<(String, Value)> = x.iter().map(|(n, t)| (n.to_string(), Value::Tensor(t.clone()))).collect();
            s.run(&feed, None).unwrap()
        })
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_tensor().unwrap().to_f64_vec().unwrap()
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
