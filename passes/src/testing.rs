//! Checking rewrites against ONNX Runtime: build tiny models, feed seeded inputs, run a model
//! before and after a pass, compare with named tolerances (a failure names the first
//! outlier), and read the conformance suite's `.pb` values.
//!
//! Used by this crate's tests and by other crates' tests of their rewrites.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use half::{bf16, f16};
use kiln_compiler::dtype::ElementSize;
use kiln_compiler::execute::load_session;
use kiln_compiler::ir::{Dim, DimValue, Graph, Model, NodeSpec, OpsetImport, TensorType, Type, TypeKind, ValueId};
use kiln_compiler::onnx::proto::{OptionalProto, SequenceProto, TensorProto};
use kiln_compiler::pass::{Changed, Pass, PassContext, ReportEntry};
use kiln_compiler::runtime::{OptLevel, OrtExecutor, RuntimeError, SessionConfig, ValueType, init_ort};
use kiln_compiler::verify::check_model;
use kiln_compiler::{DataType, Tensor};
use prost::Message;

pub use kiln_compiler::runtime::Value;

/// A small deterministic generator (splitmix64), so inputs are the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Uniform integer in `[low, high)`.
    pub fn int(&mut self, low: i64, high: i64) -> i64 {
        let span = (high - low).max(1) as u64;
        low + (self.next_u64() % span) as i64
    }
}

/// Loads ONNX Runtime; tests call this first so a missing library fails with its message.
pub fn require_ort() -> Result<(), RuntimeError> {
    init_ort()
}

/// The session settings every comparison uses: no ORT graph rewrites, deterministic kernels,
/// so what runs is exactly the graph handed over.
pub fn exact_config() -> SessionConfig {
    SessionConfig { optimization: OptLevel::Disabled, deterministic: true, ..SessionConfig::default() }
}

/// Runs a model in ONNX Runtime on named inputs; returns every graph output.
pub fn run(model: &Model, inputs: &[(String, Value)]) -> Result<Vec<(String, Value)>, RuntimeError> {
    run_in(model, None, inputs)
}

/// [`run`] for a model whose external data lives in `base_dir`.
pub fn run_in(
    model: &Model,
    base_dir: Option<&Path>,
    inputs: &[(String, Value)],
) -> Result<Vec<(String, Value)>, RuntimeError> {
    let mut session = load_session(&OrtExecutor::new(), model, base_dir, &exact_config())?;
    session.run(inputs, None)
}

/// A tensor of `dtype` and `dims` with seeded values: floats uniform in `[-1, 1)`, integers in
/// `[0, 4)`, booleans either way.
pub fn random_tensor(dtype: DataType, dims: &[usize], rng: &mut Rng) -> Result<Tensor, String> {
    let n: usize = dims.iter().product();
    let dims = dims.to_vec();
    let err = |e: kiln_compiler::TensorError| e.to_string();
    let mut f = || rng.uniform(-1.0, 1.0);
    Ok(match dtype {
        DataType::F32 => Tensor::from_slice(dims, &(0..n).map(|_| f() as f32).collect::<Vec<_>>()).map_err(err)?,
        DataType::F64 => Tensor::from_slice(dims, &(0..n).map(|_| f()).collect::<Vec<_>>()).map_err(err)?,
        DataType::F16 => {
            Tensor::from_slice(dims, &(0..n).map(|_| f16::from_f64(f())).collect::<Vec<_>>()).map_err(err)?
        }
        DataType::BF16 => {
            Tensor::from_slice(dims, &(0..n).map(|_| bf16::from_f64(f())).collect::<Vec<_>>()).map_err(err)?
        }
        DataType::Bool => {
            Tensor::from_slice(dims, &(0..n).map(|_| rng.int(0, 2) == 1).collect::<Vec<_>>()).map_err(err)?
        }
        DataType::I64 => Tensor::from_slice(dims, &(0..n).map(|_| rng.int(0, 4)).collect::<Vec<_>>()).map_err(err)?,
        DataType::I32 => {
            Tensor::from_slice(dims, &(0..n).map(|_| rng.int(0, 4) as i32).collect::<Vec<_>>()).map_err(err)?
        }
        DataType::I8 => {
            Tensor::from_slice(dims, &(0..n).map(|_| rng.int(0, 4) as i8).collect::<Vec<_>>()).map_err(err)?
        }
        DataType::U8 => {
            Tensor::from_slice(dims, &(0..n).map(|_| rng.int(0, 4) as u8).collect::<Vec<_>>()).map_err(err)?
        }
        other => return Err(format!("no generator for {other}")),
    })
}

/// Seeded values for every runtime input of the main graph, after its declared types;
/// symbolic or unknown dimensions take `free_dim`.
pub fn seeded_inputs(model: &Model, seed: u64, free_dim: usize) -> Result<Vec<(String, Value)>, String> {
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for v in g.runtime_inputs() {
        let val = g.value(v);
        let tt = g.tensor_type(v).ok_or_else(|| format!("input '{}' is not a tensor", val.name))?;
        let dtype = tt.dtype().ok_or_else(|| format!("input '{}' has no element type", val.name))?;
        let dims: Vec<usize> = tt
            .shape
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|d| match d.value {
                DimValue::Known(k) if k >= 0 => k as usize,
                _ => free_dim,
            })
            .collect();
        out.push((val.name.clone(), Value::Tensor(random_tensor(dtype, &dims, &mut rng)?)));
    }
    Ok(out)
}

/// How close two results must be: `|got - want| <= abs + rel * |want|` for floats; other
/// types compare exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// Bit-for-bit (NaN equals NaN).
    pub const EXACT: Tolerance = Tolerance { abs: 0.0, rel: 0.0 };
    /// f32 results of the same computation regrouped.
    pub const F32_CLOSE: Tolerance = Tolerance { abs: 1e-5, rel: 1e-5 };
    /// What the ONNX backend tests accept.
    pub const ONNX_BACKEND: Tolerance = Tolerance { abs: 1e-7, rel: 1e-3 };
}

/// Compares two values; the error names the first element outside the tolerance.
pub fn compare(name: &str, got: &Value, want: &Value, tol: Tolerance) -> Result<(), String> {
    match (got, want) {
        (Value::Tensor(g), Value::Tensor(w)) => compare_tensors(name, g, w, tol),
        (Value::Sequence(g), Value::Sequence(w)) => {
            if g.len() != w.len() {
                return Err(format!("{name}: sequence of {} where {} expected", g.len(), w.len()));
            }
            g.iter().zip(w).enumerate().try_for_each(|(i, (a, b))| compare(&format!("{name}[{i}]"), a, b, tol))
        }
        (Value::Optional(g), Value::Optional(w)) => match (g, w) {
            (Some(a), Some(b)) => compare(name, a, b, tol),
            (None, None) => Ok(()),
            _ => Err(format!("{name}: got {}, want {}", got.describe(), want.describe())),
        },
        // ORT returns a present optional as its element.
        (g, Value::Optional(Some(w))) => compare(name, g, w, tol),
        _ => Err(format!("{name}: got {}, want {}", got.describe(), want.describe())),
    }
}

fn compare_tensors(name: &str, g: &Tensor, w: &Tensor, tol: Tolerance) -> Result<(), String> {
    if g.dtype() != w.dtype() || g.dims() != w.dims() {
        return Err(format!("{name}: got {}{:?}, want {}{:?}", g.dtype(), g.dims(), w.dtype(), w.dims()));
    }
    let wide_float = w.dtype().is_float() && w.dtype().element_size() != ElementSize::Bytes(1);
    if wide_float && let (Ok(a), Ok(b)) = (g.to_f64_vec(), w.to_f64_vec()) {
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let ok = x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol.abs + tol.rel * y.abs();
            if !ok {
                return Err(format!("{name}[{i}]: got {x}, want {y} (diff {:e})", (x - y).abs()));
            }
        }
        return Ok(());
    }
    if g.data() != w.data() {
        return Err(format!("{name}: {} data differ", w.dtype()));
    }
    Ok(())
}

/// Compares two output lists by name and order.
pub fn compare_outputs(got: &[(String, Value)], want: &[(String, Value)], tol: Tolerance) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} outputs where {} expected", got.len(), want.len()));
    }
    for ((gn, g), (wn, w)) in got.iter().zip(want) {
        if gn != wn {
            return Err(format!("output '{gn}' where '{wn}' expected"));
        }
        compare(gn, g, w, tol)?;
    }
    Ok(())
}

/// Runs `before` and `after` on the same seeded inputs and compares their outputs.
pub fn check_same_outputs(before: &Model, after: &Model, seed: u64, tol: Tolerance) -> Result<(), String> {
    let inputs = seeded_inputs(before, seed, 2)?;
    let want = run(before, &inputs).map_err(|e| format!("before: {e}"))?;
    let got = run(after, &inputs).map_err(|e| format!("after: {e}"))?;
    compare_outputs(&got, &want, tol)
}

/// Decodes a serialized `TensorProto` (inline data only).
pub fn tensor_from_proto(tp: &TensorProto) -> Result<Tensor, String> {
    let code = tp.data_type.unwrap_or(0);
    let dtype = DataType::from_onnx(code).ok_or_else(|| format!("unknown element type {code}"))?;
    let dims: Vec<usize> = tp
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
        .collect::<Result<_, _>>()?;
    if !tp.external_data.is_empty() {
        return Err("external data is not supported here".into());
    }
    if dtype == DataType::String {
        return Tensor::from_strings(dims, tp.string_data.clone()).map_err(|e| e.to_string());
    }
    let bytes: Vec<u8> = if let Some(raw) = &tp.raw_data {
        raw.to_vec()
    } else {
        use DataType as D;
        match dtype {
            D::F32 | D::C64 => tp.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::F64 | D::C128 => tp.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::I64 => tp.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            D::U32 => tp.uint64_data.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
            D::U64 => tp.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => {
                // int32_data holds one element (or one packed byte of sub-byte types) per entry.
                let size = match dtype.element_size() {
                    ElementSize::Bytes(n) => n,
                    _ => 1,
                };
                tp.int32_data.iter().flat_map(|v| v.to_le_bytes()[..size.min(4)].to_vec()).collect()
            }
        }
    };
    Tensor::new(dtype, dims, Bytes::from(bytes)).map_err(|e| e.to_string())
}

fn sequence_from_proto(sp: &SequenceProto) -> Result<Value, String> {
    let mut items = Vec::new();
    for t in &sp.tensor_values {
        items.push(Value::Tensor(tensor_from_proto(t)?));
    }
    for s in &sp.sequence_values {
        items.push(sequence_from_proto(s)?);
    }
    for o in &sp.optional_values {
        items.push(optional_from_proto(o)?);
    }
    if !sp.map_values.is_empty() || !sp.sparse_tensor_values.is_empty() {
        return Err("maps and sparse tensors are not supported here".into());
    }
    Ok(Value::Sequence(items))
}

fn optional_from_proto(op: &OptionalProto) -> Result<Value, String> {
    let inner = if let Some(t) = &op.tensor_value {
        Some(Value::Tensor(tensor_from_proto(t)?))
    } else if let Some(s) = &op.sequence_value {
        Some(sequence_from_proto(s)?)
    } else if let Some(o) = &op.optional_value {
        Some(optional_from_proto(o)?)
    } else {
        None
    };
    Ok(Value::Optional(inner.map(Box::new)))
}

/// Reads a conformance `.pb` value of the declared type (tensor, sequence or optional).
pub fn read_value_file(path: &Path, ty: &ValueType) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |e: prost::DecodeError| format!("{}: {e}", path.display());
    match ty {
        ValueType::Sequence(_) => sequence_from_proto(&SequenceProto::decode(bytes.as_slice()).map_err(bad)?),
        ValueType::Optional(_) => optional_from_proto(&OptionalProto::decode(bytes.as_slice()).map_err(bad)?),
        ValueType::Map { .. } => Err("maps are not supported here".into()),
        _ => Ok(Value::Tensor(tensor_from_proto(&TensorProto::decode(bytes.as_slice()).map_err(bad)?)?)),
    }
}

// ---- tiny models ----

/// A tensor type with a fully known shape.
pub fn tensor_ty(dtype: DataType, dims: &[usize]) -> Type {
    Type::tensor(TensorType::with_dims(dtype, dims))
}

/// A tensor type whose dims are given as known (`Some`) or symbolic (`None`, named `d<i>`).
pub fn tensor_ty_sym(dtype: DataType, dims: &[Option<i64>]) -> Type {
    let dims = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(v) => Dim::known(*v),
            None => Dim::symbol(format!("d{i}")),
        })
        .collect();
    Type::tensor(TensorType::new(dtype, Some(dims)))
}

/// A model around `graph` importing the default domain at `opset` (IR version 8).
pub fn model(mut graph: Graph, opset: i64) -> Model {
    graph.name.get_or_insert_with(|| "main".to_string());
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(opset) }],
        graph: Some(graph),
        ..Model::default()
    }
}

/// Adds a node and returns its first output.
pub fn op(g: &mut Graph, spec: NodeSpec) -> ValueId {
    let id = g.add_node(spec);
    g.node(id).output(0).unwrap_or_else(|| g.add_outer(""))
}

/// Adds an initializer holding `t`.
pub fn constant(g: &mut Graph, name: &str, t: Tensor) -> ValueId {
    g.add_initializer(name, Arc::new(t))
}

/// Marks `v` as a graph output of type `ty`.
pub fn output(g: &mut Graph, v: ValueId, ty: Type) {
    g.value_mut(v).ty = Some(ty);
    g.push_output(v);
}

/// Nodes in the main graph and every subgraph.
pub fn node_count(model: &Model) -> usize {
    let mut n = 0;
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |sg| n += sg.node_count());
    }
    n
}

/// Nodes of a default-domain op type in the main graph and every subgraph.
pub fn count_op(model: &Model, op_type: &str) -> usize {
    let mut n = 0;
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |sg| n += sg.nodes().filter(|(_, node)| node.is_onnx(op_type)).count());
    }
    n
}

/// Runs one pass and checks the model is still valid; returns whether it changed and what
/// it reported.
pub fn apply(pass: &dyn Pass, model: &mut Model) -> Result<(Changed, Vec<ReportEntry>), String> {
    let mut cx = PassContext::new();
    let changed = pass.run(model, &mut cx).map_err(|e| e.to_string())?;
    check_model(model).map_err(|e| format!("{} left an invalid model: {e}", pass.name()))?;
    Ok((changed, cx.entries().to_vec()))
}

/// Report entries of a kind (`applied`, `missed`, `skipped`) for a rule.
pub fn entries<'a>(report: &'a [ReportEntry], kind: &str, rule: &str) -> Vec<&'a ReportEntry> {
    report.iter().filter(|e| e.kind == kind && e.rule == rule).collect()
}

/// Whether a type is a dense tensor.
pub fn is_tensor_type(t: &Type) -> bool {
    matches!(t.kind, TypeKind::Tensor(_))
}
