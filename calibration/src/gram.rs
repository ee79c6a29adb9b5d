//! Gram matrices `XᵀX` of activations: for a MatMul input `X[..., K]`, the sum over every row
//! of every sample of `xᵀx` (`K×K`). Data-aware weight quantizers (GPTQ) minimize a layer's
//! output error through it.
//!
//! Like [`crate::collect`], tensors are observed in groups (one session per group, the data
//! streamed once per group), and each group's matrices are handed to the caller as soon as the
//! group is done, so memory holds one group's matrices, never the whole model's. Rows are
//! accumulated in order, in f64: each entry is one chain of fused multiply-adds over every row,
//! whichever thread computes it, so the result does not depend on the thread count.
//!
//! The runtime runs the next sample on its own thread while the last one's rows are added, and
//! large embedding tables stay out of the session (`gram/gather.rs`): what it costs is the model's
//! layers, not copies of its weights.

mod gather;

use std::path::Path;

use kiln_compiler::ir::{Model, ValueDef};
use kiln_compiler::runtime::{Executor, ModelSource, OptLevel, Session, SessionConfig, Value};
use rayon::prelude::*;

use crate::collect::CalibError;
use crate::data::{InputSpec, SampleSource, model_inputs, validate};
use crate::tile::{LANES, MR, Strides, mac_tile};

/// The Gram matrix of one activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    pub name: String,
    /// `K`, the activation's last dimension.
    pub dim: usize,
    /// Rows summed (samples × the product of the leading dimensions).
    pub rows: u64,
    /// `K×K`, row-major, symmetric.
    pub xtx: Vec<f64>,
}

/// Rows gathered before they are added to a Gram matrix.
const BATCH_ROWS: usize = 256;

impl Gram {
    fn new(name: String, dim: usize) -> Gram {
        Gram { name, dim, rows: 0, xtx: vec![0.0; dim * dim] }
    }
}

/// A Gram matrix being summed: rows wait in `pending` until a batch of [`BATCH_ROWS`] is full,
/// so the matrix (up to tens of MB) is streamed once per batch rather than once per row.
/// Batches do not depend on how rows are split into samples, nor on the thread count.
struct Accumulator {
    gram: Gram,
    pending: Vec<f64>,
    /// The pending rows in panels, kept from batch to batch.
    packed: Vec<f64>,
}

impl Accumulator {
    fn new(name: String, dim: usize) -> Accumulator {
        Accumulator { gram: Gram::new(name, dim), pending: Vec::with_capacity(dim * BATCH_ROWS), packed: Vec::new() }
    }

    /// Adds the rows of one activation (`values.len()` a multiple of `dim`).
    fn add(&mut self, mut values: &[f64]) {
        let k = self.gram.dim;
        if k == 0 {
            return;
        }
        while !values.is_empty() {
            let take = (k * BATCH_ROWS - self.pending.len()).min(values.len());
            self.pending.extend_from_slice(&values[..take]);
            values = &values[take..];
            if self.pending.len() == k * BATCH_ROWS {
                self.flush();
            }
        }
    }

    /// Adds the pending rows' `XᵀX` to the upper triangle, a tile of [`MR`]×[`LANES`] entries at a
    /// time held in registers; tile rows in parallel. Every entry is one chain of fused
    /// multiply-adds over the rows in order, continued from batch to batch, so the sum depends
    /// neither on the thread count nor on how rows were split into samples or batches.
    ///
    /// The rows are first packed in panels of [`LANES`] features, each panel's rows contiguous:
    /// a tile then reads its panels front to back, where row-major rows a whole row apart (12 KB
    /// for K = 1536) defeated the prefetcher and missed the cache on every step.
    fn flush(&mut self) {
        let k = self.gram.dim;
        let rows = self.pending.len() / k;
        if rows == 0 {
            return;
        }
        let panels = k.div_ceil(LANES);
        let len = panels * rows * LANES;
        // Features past K stay zero: a narrower last panel reads zeros and is never stored.
        self.packed.clear();
        self.packed.resize(len, 0.0);
        for (t, row) in self.pending.chunks_exact(k).enumerate() {
            for (p, part) in row.chunks(LANES).enumerate() {
                let at = p * rows * LANES + t * LANES;
                self.packed[at..at + part.len()].copy_from_slice(part);
            }
        }
        let xp = &self.packed;
        // Where feature `c`'s column of the batch starts (rows `LANES` apart).
        let col = |c: usize| (c / LANES) * rows * LANES + c % LANES;
        self.gram.xtx.par_chunks_mut(k * MR).enumerate().for_each(|(ti, out)| {
            let i0 = ti * MR;
            let height = out.len() / k;
            let mut j0 = i0 / LANES * LANES;
            while j0 < k {
                let width = (k - j0).min(LANES);
                let mut acc = [[0.0f64; LANES]; MR];
                for (r, acc) in acc.iter_mut().enumerate().take(height) {
                    acc[..width].copy_from_slice(&out[r * k + j0..r * k + j0 + width]);
                }
                mac_tile(&xp[col(i0)..], Strides { t: LANES, r: 1 }, &xp[col(j0)..], LANES, rows, &mut acc);
                for (r, acc) in acc.iter().enumerate().take(height) {
                    out[r * k + j0..r * k + j0 + width].copy_from_slice(&acc[..width]);
                }
                j0 += LANES;
            }
        });
        self.gram.rows += rows as u64;
        self.pending.clear();
    }

    /// The finished matrix: the last rows added and the upper triangle mirrored.
    fn finish(mut self) -> Gram {
        self.flush();
        let mut g = self.gram;
        let k = g.dim;
        // In squares of 32×32: column by column, every read took a cache line of its own.
        const SQ: usize = 32;
        for i0 in (0..k).step_by(SQ) {
            for j0 in (0..=i0).step_by(SQ) {
                for i in i0..(i0 + SQ).min(k) {
                    for j in j0..(j0 + SQ).min(i) {
                        g.xtx[i * k + j] = g.xtx[j * k + i];
                    }
                }
            }
        }
        g
    }
}

/// How Gram matrices are collected.
#[derive(Debug, Clone)]
pub struct GramOptions {
    /// Bytes of matrices held at once (a group holds at least one tensor whatever its size).
    pub memory_budget: usize,
    pub session: SessionConfig,
    /// Models whose weights take at most this many bytes (and that have no external data) go
    /// to the runtime from memory rather than through a temporary file: writing MiniLM's
    /// 68 MB to disk cost more CPU time than all of its Gram matrices.
    pub in_memory_bytes: u64,
    /// Constant tables of at least this many bytes gathered by a model input (embeddings) are
    /// gathered by Kiln rather than copied into the runtime's session (`u64::MAX`: never).
    pub host_gather_bytes: u64,
}

impl Default for GramOptions {
    fn default() -> GramOptions {
        GramOptions {
            memory_budget: 512 << 20,
            session: SessionConfig { optimization: OptLevel::Disabled, ..SessionConfig::default() },
            in_memory_bytes: 256 << 20,
            host_gather_bytes: 1 << 20,
        }
    }
}

/// A session on `model`: from memory when it is small enough (see
/// [`GramOptions::in_memory_bytes`]), else as [`kiln_compiler::execute::load_session`] loads it.
fn open_session(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    options: &GramOptions,
) -> Result<Box<dyn Session>, CalibError> {
    let summary = kiln_compiler::inspect::summarize(model);
    if summary.external_files.is_empty() && summary.parameter_bytes <= options.in_memory_bytes {
        let bytes = kiln_compiler::onnx::encode_model(model);
        return executor.load(ModelSource { bytes: &bytes, base_dir }, &options.session).map_err(CalibError::Load);
    }
    kiln_compiler::execute::load_session(executor, model, base_dir, &options.session).map_err(CalibError::Load)
}

/// One sample's requested activations, and where the sample came from.
type Outputs = (String, Vec<(String, Value)>);

/// Reads, checks and runs sample `i`.
fn run_sample(
    session: &mut dyn Session,
    source: &dyn SampleSource,
    i: usize,
    inputs: &[InputSpec],
    names: &[String],
    gathers: &[gather::HostGather],
) -> Result<Outputs, CalibError> {
    let s = source.read(i)?;
    validate(inputs, &s)?;
    let mut feed: Vec<(String, Value)> = s.inputs.iter().map(|(n, t)| (n.clone(), Value::Tensor(t.clone()))).collect();
    for gather in gathers {
        let (name, t) = gather.gather(&s)?;
        feed.push((name, Value::Tensor(t)));
    }
    let out = session.run(&feed, Some(names)).map_err(|e| CalibError::Run { origin: s.origin.clone(), source: e })?;
    Ok((s.origin, out))
}

/// Adds one sample's activations to their matrices, in parallel across matrices.
fn add_outputs(grams: &mut [Accumulator], (origin, out): Outputs) -> Result<(), CalibError> {
    grams.par_iter_mut().zip(out.par_iter()).try_for_each(|(acc, (_, value))| {
        let gram = &acc.gram;
        let t = value.as_tensor().ok_or_else(|| CalibError::Model(format!("`{}` is not a tensor", gram.name)))?;
        let last = t.dims().last().copied().unwrap_or(0);
        if last != gram.dim {
            return Err(CalibError::Model(format!(
                "{origin}: `{}` has shape {:?}, expected a last dimension of {}",
                gram.name,
                t.dims(),
                gram.dim
            )));
        }
        let values = t.to_f64_vec().map_err(|e| CalibError::Model(format!("`{}`: {e}", gram.name)))?;
        acc.add(&values);
        Ok(())
    })
}

/// Runs the model over every sample of `source` and hands `sink` the Gram matrices of the named
/// activations (with their expected last dimension `K`), a group at a time (so the caller may
/// work on a group's matrices in parallel), in the order given.
pub fn collect_grams(
    executor: &dyn Executor,
    model: &Model,
    base_dir: Option<&Path>,
    source: &dyn SampleSource,
    tensors: &[(String, usize)],
    options: &GramOptions,
    sink: &mut dyn FnMut(Vec<Gram>) -> Result<(), CalibError>,
) -> Result<(), CalibError> {
    let inputs = model_inputs(model)?;
    let g = model.main_graph().ok_or_else(|| CalibError::Model("the model has no graph".into()))?;
    for (name, _) in tensors {
        let v = g
            .find_value(name)
            .ok_or_else(|| CalibError::Model(format!("no value named `{name}` in the main graph")))?;
        if !matches!(g.value(v).def(), ValueDef::Input | ValueDef::Node { .. }) {
            return Err(CalibError::Model(format!("`{name}` is a constant or not computed by the main graph")));
        }
    }
    if source.is_empty() {
        return Err(CalibError::Model("no calibration samples to collect activations from".into()));
    }
    let mut start = 0;
    while start < tensors.len() {
        // As many tensors as fit the memory budget, at least one.
        let mut end = start + 1;
        let mut bytes = tensors[start].1 * tensors[start].1 * 8;
        while end < tensors.len() && bytes + tensors[end].1 * tensors[end].1 * 8 <= options.memory_budget {
            bytes += tensors[end].1 * tensors[end].1 * 8;
            end += 1;
        }
        let group = &tensors[start..end];
        let names: Vec<String> = group.iter().map(|(n, _)| n.clone()).collect();
        let mut m = model.clone();
        if let Some(g) = m.graph.as_mut() {
            let ids = names.iter().filter_map(|n| g.find_value(n)).collect();
            g.set_outputs(ids);
        }
        let gathers = gather::host_gathers(&mut m, options.host_gather_bytes);
        let mut session = open_session(executor, &m, base_dir, options)?;
        let mut grams: Vec<Accumulator> = group.iter().map(|(n, k)| Accumulator::new(n.clone(), *k)).collect();
        // The runtime runs sample i + 1 on its own thread while this one adds sample i's rows:
        // the session takes one intra-op thread, the Gram products the others. Rows still come
        // in sample order, so the sums are what a loop over the samples would give.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Outputs, CalibError>>(1);
        let (inputs, names, gathers) = (&inputs, &names, &gathers);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for i in 0..source.len() {
                    let out = run_sample(session.as_mut(), source, i, inputs, names, gathers);
                    let failed = out.is_err();
                    // A closed channel: the receiver stopped on an error of its own.
                    if tx.send(out).is_err() || failed {
                        break;
                    }
                }
            });
            rx.into_iter().try_for_each(|out| add_outputs(&mut grams, out?))
        })?;
        sink(grams.into_par_iter().map(Accumulator::finish).collect())?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Synthetic, SyntheticSpec};
    use kiln_compiler::ir::{Graph, NodeSpec, TensorType, Type};
    use kiln_compiler::runtime::OrtExecutor;
    use kiln_compiler::{DataType, Tensor};

    /// y = x · W with x f32[2, 3]; the Gram of `x` and of `y`.
    fn tiny() -> Model {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(Type::tensor(TensorType::with_dims(DataType::F32, &[2, 3]))));
        let w = Tensor::from_slice(vec![3, 2], &[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let w = g.add_initializer("w", std::sync::Arc::new(w));
        let y = g.add_node(NodeSpec::new("MatMul").inputs([x, w]).outputs(["y"]));
        let y = g.node(y).output(0).unwrap();
        g.push_output(y);
        Model::of_graph(g, 17)
    }

    #[test]
    fn gram_matrices_sum_every_row_of_every_sample() {
        let model = tiny();
        let inputs = model_inputs(&model).unwrap();
        let src = Synthetic::new(&inputs, &SyntheticSpec { samples: 3, seed: 7, ..Default::default() }).unwrap();
        let mut got = Vec::new();
        let names = [("x".to_string(), 3), ("y".to_string(), 2)];
        // A budget of one matrix at a time: two groups, two sessions.
        let options = GramOptions { memory_budget: 1, ..GramOptions::default() };
        // Through `load_session` (which spills large models to a file) rather than from
        // memory: the same matrices.
        let mut through_file = Vec::new();
        let file_options = GramOptions { memory_budget: 1, in_memory_bytes: 0, ..GramOptions::default() };
        collect_grams(&OrtExecutor::new(), &model, None, &src, &names, &file_options, &mut |g| {
            through_file.extend(g);
            Ok(())
        })
        .unwrap();
        let mut groups = 0;
        collect_grams(&OrtExecutor::new(), &model, None, &src, &names, &options, &mut |g| {
            groups += 1;
            got.extend(g);
            Ok(())
        })
        .unwrap();
        assert_eq!((got.len(), groups), (2, 2));
        assert_eq!(got, through_file);
        // Reference: from the samples themselves.
        let mut want = vec![0.0f64; 9];
        for i in 0..3 {
            let x = src.read(i).unwrap().inputs[0].1.to_f64_vec().unwrap();
            for row in x.chunks(3) {
                for a in 0..3 {
                    for b in 0..3 {
                        want[a * 3 + b] += row[a] * row[b];
                    }
                }
            }
        }
        assert_eq!(got[0].name, "x");
        assert_eq!(got[0].rows, 6);
        for (a, b) in got[0].xtx.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        // y = [x0 + x2, x1 + x2]: its Gram follows from x's.
        let y = &got[1];
        assert_eq!((y.dim, y.rows), (2, 6));
        let want = &want;
        let yy =
            |p: &[usize], q: &[usize]| -> f64 { p.iter().flat_map(|&a| q.iter().map(move |&b| want[a * 3 + b])).sum() };
        assert!((y.xtx[1] - yy(&[0, 2], &[1, 2])).abs() < 1e-4);
        assert_eq!(y.xtx[1], y.xtx[2]);
    }

    #[test]
    fn batched_sums_match_the_direct_sum_however_rows_arrive() {
        // k above the lane width (and not a multiple of it), rows over several batches.
        let (k, rows) = (37, 150);
        let x: Vec<f64> = (0..k * rows).map(|i| ((i * 7919 % 61) as f64 - 30.0) / 13.0).collect();
        let mut want = vec![0.0f64; k * k];
        for row in x.chunks(k) {
            for a in 0..k {
                for b in 0..k {
                    want[a * k + b] += row[a] * row[b];
                }
            }
        }
        let sum = |splits: &[usize]| {
            let mut acc = Accumulator::new("x".into(), k);
            let mut rest = &x[..];
            for &n in splits {
                let (head, tail) = rest.split_at(n * k);
                acc.add(head);
                rest = tail;
            }
            acc.add(rest);
            acc.finish()
        };
        let one = sum(&[]);
        assert_eq!(one.rows, rows as u64);
        for (a, b) in one.xtx.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9 * b.abs().max(1.0), "{a} vs {b}");
        }
        // Samples of other sizes: the same batches, the same bits.
        assert_eq!(sum(&[1, 16, 63, 2]), one);
        // A different row set gives a different matrix.
        let mut other = Accumulator::new("x".into(), k);
        other.add(&x[k..]);
        assert_ne!(other.finish().xtx, one.xtx);
    }

    #[test]
    fn a_sample_the_runtime_cannot_take_stops_the_collection() {
        // Samples for a wider input: the thread running the model refuses the first one, and
        // the error names where it came from rather than hanging or panicking.
        let model = tiny();
        let mut wide = tiny();
        if let Some(g) = wide.graph.as_mut() {
            let x = g.find_value("x").unwrap();
            g.value_mut(x).ty = Some(Type::tensor(TensorType::with_dims(DataType::F32, &[2, 4])));
        }
        let src = Synthetic::new(&model_inputs(&wide).unwrap(), &SyntheticSpec::default()).unwrap();
        let mut called = false;
        let err = collect_grams(
            &OrtExecutor::new(),
            &model,
            None,
            &src,
            &[("x".into(), 3)],
            &GramOptions::default(),
            &mut |_| {
                called = true;
                Ok(())
            },
        )
        .unwrap_err();
        assert!(!called);
        assert!(err.to_string().contains(&src.origin(0)), "{err}");
    }

    #[test]
    fn wrong_dimensions_and_names_are_refused() {
        let model = tiny();
        let src = Synthetic::new(&model_inputs(&model).unwrap(), &SyntheticSpec::default()).unwrap();
        let run = |names: &[(String, usize)]| {
            collect_grams(&OrtExecutor::new(), &model, None, &src, names, &GramOptions::default(), &mut |_| Ok(()))
        };
        let err = run(&[("x".into(), 4)]).unwrap_err();
        assert!(err.to_string().contains("last dimension of 4"), "{err}");
        let err = run(&[("w".into(), 2)]).unwrap_err();
        assert!(err.to_string().contains("`w`"), "{err}");
        let err = run(&[("nope".into(), 2)]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
