//! Checking rewrites against ONNX Runtime: build tiny models, feed seeded or fixture inputs,
//! run a model before and after a pass, compare with `kiln_compiler::compare`'s tolerances
//! (a failure names the first outlier), and run the ONNX conformance cases.
//!
//! Used by this crate's tests and, through the `testing` feature, by other crates' tests of
//! their rewrites. Helpers named `assert_*` and [`run_pass`] panic: they are for tests.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};
use kiln_compiler::execute::load_session;
use kiln_compiler::ir::{
    Attribute, Dim, DimValue, Graph, Model, NodeSpec, OpsetImport, TensorType, Type, TypeKind, ValueId,
};
use kiln_compiler::onnx::load_model;
use kiln_compiler::pass::{Changed, Pass, PassContext, ReportEntry};
use kiln_compiler::rng::SplitMix64;
use kiln_compiler::runtime::{OptLevel, OrtExecutor, RuntimeError, SessionConfig, init_ort};
use kiln_compiler::verify::check_model;
use kiln_compiler::{DataType, Tensor};
use kiln_fixtures::ConformanceCase;

pub use kiln_compiler::compare::{Tolerance, compare_values};
pub use kiln_compiler::ir::Attribute as A;
pub use kiln_compiler::onnx::read_value;
pub use kiln_compiler::runtime::Value;

// ---- seeded values ----

/// A small deterministic generator (SplitMix64, shared with the fixtures' input recipes), so
/// inputs and weights are the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        self.0.next_normal()
    }

    /// Uniform integer in `[low, high)`.
    pub fn int(&mut self, low: i64, high: i64) -> i64 {
        let span = (high - low).max(1) as u64;
        low + (self.next_u64() % span) as i64
    }

    /// An f32 tensor uniform in `[low, high)`.
    pub fn tensor(&mut self, dims: &[usize], low: f64, high: f64) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.uniform(low, high) as f32).collect();
        Tensor::from_slice(dims.to_vec(), &v).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An i64 tensor uniform in `[low, high)`.
    pub fn ints(&mut self, dims: &[usize], low: i64, high: i64) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<i64> = (0..n).map(|_| self.int(low, high)).collect();
        Tensor::from_slice(dims.to_vec(), &v).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A tensor of `dtype` holding `values` (rounded or cast as the element type requires).
pub fn tensor_from_f64(dtype: DataType, dims: Vec<usize>, values: &[f64]) -> Result<Tensor, String> {
    let err = |e: kiln_compiler::TensorError| e.to_string();
    fn cast<T>(values: &[f64], f: impl Fn(f64) -> T) -> Vec<T> {
        values.iter().map(|&v| f(v)).collect()
    }
    match dtype {
        DataType::F32 => Tensor::from_slice(dims, &cast(values, |v| v as f32)),
        DataType::F64 => Tensor::from_slice(dims, values),
        DataType::F16 => Tensor::from_slice(dims, &cast(values, f16::from_f64)),
        DataType::BF16 => Tensor::from_slice(dims, &cast(values, bf16::from_f64)),
        DataType::Bool => Tensor::from_slice(dims, &cast(values, |v| v != 0.0)),
        DataType::I64 => Tensor::from_slice(dims, &cast(values, |v| v as i64)),
        DataType::I32 => Tensor::from_slice(dims, &cast(values, |v| v as i32)),
        DataType::I8 => Tensor::from_slice(dims, &cast(values, |v| v as i8)),
        DataType::U8 => Tensor::from_slice(dims, &cast(values, |v| v as u8)),
        other => return Err(format!("no generator for {other}")),
    }
    .map_err(err)
}

/// A tensor of `dtype` and `dims` with seeded values: floats uniform in `[-1, 1)`, integers in
/// `[0, 4)`, booleans either way.
pub fn random_tensor(dtype: DataType, dims: &[usize], rng: &mut Rng) -> Result<Tensor, String> {
    let n: usize = dims.iter().product();
    let values: Vec<f64> = if dtype.is_float() {
        (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
    } else {
        let high = if dtype == DataType::Bool { 2 } else { 4 };
        (0..n).map(|_| rng.int(0, high) as f64).collect()
    };
    tensor_from_f64(dtype, dims.to_vec(), &values)
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

/// Named inputs as the executor takes them (`("x", tensor)` pairs are the short form tests write).
pub fn to_inputs<N: AsRef<str>, V: Clone + Into<Value>>(feeds: &[(N, V)]) -> Vec<(String, Value)> {
    feeds.iter().map(|(n, v)| (n.as_ref().to_string(), v.clone().into())).collect()
}

// ---- fixtures ----

/// A trained fixture's model, loaded.
pub fn fixture_model(name: &str) -> Result<Model, String> {
    let path = kiln_fixtures::model(name).map_err(|e| e.to_string())?;
    load_model(&path).map_err(|e| format!("{name}: {e}"))
}

/// Inputs following a fixture's value recipes (clone the fixture and edit its shapes for
/// other sizes); `seed` picks the sample.
pub fn recipe_inputs(fixture: &kiln_fixtures::Fixture, seed: u64) -> Result<Vec<(String, Value)>, String> {
    kiln_fixtures::generate::inputs(fixture, seed)
        .into_iter()
        .map(|g| {
            let dtype = DataType::from_name(&g.dtype).ok_or_else(|| format!("{}: dtype {}", g.name, g.dtype))?;
            let t = tensor_from_f64(dtype, g.shape, &g.values).map_err(|e| format!("{}: {e}", g.name))?;
            Ok((g.name, Value::Tensor(t)))
        })
        .collect()
}

/// [`recipe_inputs`] of the fixture called `name`, at the manifest's shapes.
pub fn fixture_inputs(name: &str, seed: u64) -> Result<Vec<(String, Value)>, String> {
    recipe_inputs(kiln_fixtures::fixture(name).map_err(|e| e.to_string())?, seed)
}

// ---- running and comparing ----

/// Loads ONNX Runtime; tests call this first so a missing library fails with its message.
pub fn require_ort() -> Result<(), RuntimeError> {
    init_ort()
}

/// The session settings every comparison uses: no ORT graph rewrites, one thread,
/// deterministic kernels, so what runs is exactly the graph handed over, bit for bit.
pub fn exact_config() -> SessionConfig {
    SessionConfig {
        optimization: OptLevel::Disabled,
        deterministic: true,
        intra_threads: Some(1),
        ..SessionConfig::default()
    }
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

/// An absolute tolerance: `|got - want| <= atol`.
pub const fn abs_tol(atol: f64) -> Tolerance {
    Tolerance { rtol: 0.0, atol }
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
        compare_values(gn, g, w, tol)?;
    }
    Ok(())
}

/// The largest absolute difference between two lists of float outputs (0 for other types);
/// for reports, next to a [`compare_outputs`] verdict.
pub fn max_abs_diff(got: &[(String, Value)], want: &[(String, Value)]) -> f64 {
    let mut worst = 0.0f64;
    for ((_, g), (_, w)) in got.iter().zip(want) {
        if let (Value::Tensor(a), Value::Tensor(b)) = (g, w)
            && a.dtype().is_float()
            && let (Ok(x), Ok(y)) = (a.to_f64_vec(), b.to_f64_vec())
        {
            worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(worst, f64::max);
        }
    }
    worst
}

/// Runs `before` and `after` on the same seeded inputs and compares their outputs.
pub fn check_same_outputs(before: &Model, after: &Model, seed: u64, tol: Tolerance) -> Result<(), String> {
    let inputs = seeded_inputs(before, seed, 2)?;
    let want = run(before, &inputs).map_err(|e| format!("before: {e}"))?;
    let got = run(after, &inputs).map_err(|e| format!("after: {e}"))?;
    compare_outputs(&got, &want, tol)
}

/// Runs both models on the same inputs and asserts every output agrees within `tol`;
/// returns the largest absolute difference.
pub fn assert_same<N: AsRef<str>, V: Clone + Into<Value>>(
    before: &Model,
    after: &Model,
    feeds: &[(N, V)],
    tol: Tolerance,
) -> f64 {
    let inputs = to_inputs(feeds);
    let want = run(before, &inputs).unwrap_or_else(|e| panic!("before: {e}"));
    let got = run(after, &inputs).unwrap_or_else(|e| panic!("after: {e}"));
    compare_outputs(&got, &want, tol).unwrap_or_else(|e| panic!("{e}"));
    max_abs_diff(&got, &want)
}

// ---- the conformance suite ----

/// One recorded data set of a conformance case: inputs and expected outputs.
#[derive(Debug, Clone)]
pub struct DataSet {
    pub inputs: Vec<(String, Value)>,
    pub outputs: Vec<(String, Value)>,
}

/// How a conformance case ended in ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaseOutcome {
    Passed,
    /// ORT refused to load the model (no kernel for an op, type, or opset).
    OrtCannotLoad,
    /// ORT loaded it but failed while running.
    OrtRunFailed,
    /// The executor cannot pass this kind of value (e.g. an empty sequence).
    Unsupported,
    /// ORT's outputs differ from the suite's expected outputs.
    Mismatch,
}

/// A case's recorded data sets, read with the declared types of the model's inputs and
/// outputs. Optional inputs may be left out of a set.
pub fn read_data_sets(case: &ConformanceCase, model: &Model) -> Result<Vec<DataSet>, String> {
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    let read = |set: &Path, prefix: &str, values: &[ValueId]| {
        let mut out = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            let path = set.join(format!("{prefix}_{i}.pb"));
            if !path.exists() {
                continue;
            }
            let value = read_value(&path, g.value(v).ty.as_ref()).map_err(|e| e.to_string())?;
            out.push((g.value(v).name.clone(), value));
        }
        Ok::<_, String>(out)
    };
    let inputs: Vec<ValueId> = g.runtime_inputs().collect();
    case.data_sets
        .iter()
        .map(|set| Ok(DataSet { inputs: read(set, "input", &inputs)?, outputs: read(set, "output", g.outputs())? }))
        .collect()
}

/// Runs a model on every data set of its case and compares with the expected outputs
/// (`Tolerance::ONNX_BACKEND`); says how it ended and why, in one line.
pub fn run_case(model: &Model, base_dir: &Path, sets: &[DataSet], config: &SessionConfig) -> (CaseOutcome, String) {
    let mut session = match load_session(&OrtExecutor::new(), model, Some(base_dir), config) {
        Ok(s) => s,
        Err(e @ RuntimeError::LibraryNotFound { .. }) => panic!("{e}"),
        Err(e) => return (CaseOutcome::OrtCannotLoad, e.to_string()),
    };
    for set in sets {
        let names: Vec<String> = set.outputs.iter().map(|(n, _)| n.clone()).collect();
        let got = match session.run(&set.inputs, Some(&names)) {
            Ok(o) => o,
            Err(e @ RuntimeError::Unsupported { .. }) => return (CaseOutcome::Unsupported, e.to_string()),
            Err(e) => return (CaseOutcome::OrtRunFailed, e.to_string()),
        };
        if let Err(e) = compare_outputs(&got, &set.outputs, Tolerance::ONNX_BACKEND) {
            return (CaseOutcome::Mismatch, e);
        }
    }
    (CaseOutcome::Passed, String::new())
}

/// What [`survey_conformance`] found.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub cases: usize,
    /// Cases whose files could not be read.
    pub unreadable: Vec<String>,
    /// Cases ONNX Runtime refuses to load as shipped.
    pub rejected: Vec<String>,
    pub passed_before: usize,
    pub passed_after: usize,
    /// Passed before the rewrite, not after: `name: outcome: why`.
    pub regressions: Vec<String>,
    /// Passed only after the rewrite.
    pub fixed: Vec<String>,
    /// The rewrite failed, panicked, or left an invalid model.
    pub errors: Vec<String>,
}

/// Runs every conformance case in ONNX Runtime with `config` as shipped and after `rewrite`,
/// and sorts the cases by what changed. `rewrite` sees each readable case's model.
pub fn survey_conformance(
    config: &SessionConfig,
    mut rewrite: impl FnMut(&ConformanceCase, Model) -> Result<Model, String>,
) -> Result<Survey, String> {
    let cases = kiln_fixtures::conformance_cases().map_err(|e| e.to_string())?;
    let mut s = Survey { cases: cases.len(), ..Survey::default() };
    for case in &cases {
        let name = case.name.as_str();
        let read = load_model(&case.model)
            .map_err(|e| e.to_string())
            .and_then(|m| read_data_sets(case, &m).map(|sets| (m, sets)));
        let Ok((model, sets)) = read else {
            s.unreadable.push(name.to_string());
            continue;
        };
        let before = match run_case(&model, &case.dir, &sets, config).0 {
            CaseOutcome::OrtCannotLoad => {
                s.rejected.push(name.to_string());
                false
            }
            outcome => outcome == CaseOutcome::Passed,
        };
        s.passed_before += usize::from(before);
        let after = match catch_unwind(AssertUnwindSafe(|| rewrite(case, model))) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                s.errors.push(format!("{name}: {e}"));
                continue;
            }
            Err(_) => {
                s.errors.push(format!("{name}: the rewrite panicked"));
                continue;
            }
        };
        if let Err(e) = check_model(&after) {
            s.errors.push(format!("{name}: invalid after the rewrite: {e}"));
            continue;
        }
        let (outcome, why) = run_case(&after, &case.dir, &sets, config);
        let passed = outcome == CaseOutcome::Passed;
        s.passed_after += usize::from(passed);
        match (before, passed) {
            (true, false) => s.regressions.push(format!("{name}: {outcome:?}: {}", why.lines().next().unwrap_or(""))),
            (false, true) => s.fixed.push(name.to_string()),
            _ => {}
        }
    }
    Ok(s)
}

impl Survey {
    /// Panics listing every error and regression.
    pub fn assert_no_regressions(&self) {
        assert!(
            self.errors.is_empty(),
            "the rewrite failed on {} cases:\n{}",
            self.errors.len(),
            self.errors.join("\n")
        );
        assert!(
            self.regressions.is_empty(),
            "{} cases regressed:\n{}",
            self.regressions.len(),
            self.regressions.join("\n")
        );
        assert_eq!(self.passed_after, self.passed_before + self.fixed.len());
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

/// A tensor type from dims that may be symbolic or unknown.
pub fn typed(dtype: DataType, dims: &[Dim]) -> Option<Type> {
    Some(Type::tensor(TensorType::new(dtype, Some(dims.to_vec()))))
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

/// A terse graph builder for rule tests: f32 inputs and seeded weights, nodes named after
/// their op and a counter.
pub struct B {
    pub g: Graph,
    pub rng: Rng,
    n: usize,
}

impl B {
    pub fn new(seed: u64) -> B {
        B { g: Graph::new(), rng: Rng::new(seed), n: 0 }
    }

    pub fn input(&mut self, name: &str, dims: &[usize]) -> ValueId {
        self.g.add_input(name, Some(tensor_ty(DataType::F32, dims)))
    }

    pub fn input_typed(&mut self, name: &str, dtype: DataType, dims: &[usize]) -> ValueId {
        self.g.add_input(name, Some(tensor_ty(dtype, dims)))
    }

    /// A seeded f32 initializer uniform in `[low, high)`.
    pub fn weight(&mut self, name: &str, dims: &[usize], low: f64, high: f64) -> ValueId {
        let t = self.rng.tensor(dims, low, high);
        constant(&mut self.g, name, t)
    }

    pub fn konst(&mut self, name: &str, t: Tensor) -> ValueId {
        constant(&mut self.g, name, t)
    }

    /// An f32 scalar initializer.
    pub fn scalar(&mut self, v: f32) -> ValueId {
        self.n += 1;
        let name = format!("c{}", self.n);
        constant(&mut self.g, &name, Tensor::scalar(v))
    }

    /// A 1-D i64 initializer.
    pub fn ints(&mut self, v: &[i64]) -> ValueId {
        self.n += 1;
        let name = format!("i{}", self.n);
        let t = Tensor::from_slice(vec![v.len()], v).unwrap_or_else(|e| panic!("{e}"));
        constant(&mut self.g, &name, t)
    }

    /// Adds a node with one output; returns it.
    pub fn op(&mut self, op_type: &str, inputs: &[ValueId], attrs: Vec<Attribute>) -> ValueId {
        self.n += 1;
        let mut spec = NodeSpec::new(op_type)
            .name(format!("{op_type}_{}", self.n))
            .inputs(inputs.iter().copied())
            .outputs([format!("{op_type}_{}_out", self.n)]);
        spec.attributes = attrs;
        op(&mut self.g, spec)
    }

    /// Declares the type of a value (what shape inference would say).
    pub fn declare(&mut self, v: ValueId, dims: &[usize]) {
        self.g.value_mut(v).ty = Some(tensor_ty(DataType::F32, dims));
    }

    pub fn output(&mut self, v: ValueId) {
        self.g.push_output(v);
    }

    pub fn model(self, opset: i64) -> Model {
        model(self.g, opset)
    }
}

// ---- passes and what they did ----

/// Nodes in the main graph and every subgraph.
pub fn node_count(model: &Model) -> usize {
    let mut n = 0;
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |sg| n += sg.node_count());
    }
    n
}

/// Nodes of `domain`'s `op_type` in the main graph and every subgraph (`""`: the default
/// domain).
pub fn count_in(model: &Model, domain: &str, op_type: &str) -> usize {
    let mut n = 0;
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |sg| {
            n += sg.nodes().filter(|(_, node)| node.domain() == domain && node.op_type == op_type).count()
        });
    }
    n
}

/// Nodes of a default-domain op type in the main graph and every subgraph.
pub fn count_op(model: &Model, op_type: &str) -> usize {
    count_in(model, "", op_type)
}

/// Runs one pass and checks the model is still valid; returns whether it changed and what
/// it reported.
pub fn apply(pass: &dyn Pass, model: &mut Model) -> Result<(Changed, Vec<ReportEntry>), String> {
    let mut cx = PassContext::new();
    let changed = pass.run(model, &mut cx).map_err(|e| e.to_string())?;
    check_model(model).map_err(|e| format!("{} left an invalid model: {e}", pass.name()))?;
    Ok((changed, cx.entries().to_vec()))
}

/// [`apply`] for tests that look only at the report; panics on an error.
pub fn run_pass(pass: &dyn Pass, model: &mut Model) -> Vec<ReportEntry> {
    apply(pass, model).unwrap_or_else(|e| panic!("{e}")).1
}

/// Report entries of a kind (`applied`, `missed`, `skipped`) for a rule.
pub fn entries<'a>(report: &'a [ReportEntry], kind: &str, rule: &str) -> Vec<&'a ReportEntry> {
    report.iter().filter(|e| e.kind == kind && e.rule == rule).collect()
}

/// How many times a rule applied.
pub fn applied(report: &[ReportEntry], rule: &str) -> usize {
    entries(report, "applied", rule).len()
}

/// Why a rule did not apply: `kind: detail` of its other entries.
pub fn why(report: &[ReportEntry], rule: &str) -> Vec<String> {
    report
        .iter()
        .filter(|e| e.kind != "applied" && e.rule == rule)
        .map(|e| format!("{}: {}", e.kind, e.detail))
        .collect()
}

/// Whether a type is a dense tensor.
pub fn is_tensor_type(t: &Type) -> bool {
    matches!(t.kind, TypeKind::Tensor(_))
}
