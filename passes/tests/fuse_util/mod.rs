//! Shared helpers of the fusion tests: tiny graph builders, seeded inputs, ONNX Runtime runs
//! before and after a pass, and a stand-in for shape inference on real models.
#![allow(dead_code)]

use std::sync::Arc;

use kiln_compiler::execute::{expose_values, load_session};
use kiln_compiler::ir::{Dim, Graph, Model, OpsetImport, TensorType, Type, ValueDef, ValueId};
use kiln_compiler::pass::{Pass, PassContext, ReportEntry};
use kiln_compiler::runtime::{OptLevel, OrtExecutor, SessionConfig, Value};
use kiln_compiler::{DataType, Tensor};

/// A small deterministic generator (xorshift64*), so inputs are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn tensor(&mut self, dims: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_slice(dims.to_vec(), &self.f32s(n, lo, hi)).unwrap()
    }
    pub fn ints(&mut self, dims: &[usize], lo: i64, hi: i64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<i64> = (0..n).map(|_| lo + (self.next_u64() % (hi - lo) as u64) as i64).collect();
        Tensor::from_slice(dims.to_vec(), &v).unwrap()
    }
}

pub fn f32_type(dims: &[usize]) -> Option<Type> {
    Some(Type::tensor(TensorType::with_dims(DataType::F32, dims)))
}

pub fn typed(dtype: DataType, dims: &[Dim]) -> Option<Type> {
    Some(Type::tensor(TensorType::new(dtype, Some(dims.to_vec()))))
}

pub fn model(g: Graph, opset: i64) -> Model {
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(opset) }],
        producer_name: Some("kiln-fuse-tests".into()),
        graph: Some(g),
        ..Model::default()
    }
}

pub fn init(g: &mut Graph, name: &str, t: Tensor) -> ValueId {
    g.add_initializer(name, Arc::new(t))
}

pub fn scalar(g: &mut Graph, name: &str, v: f32) -> ValueId {
    g.add_initializer(name, Arc::new(Tensor::scalar(v)))
}

/// Runs the model in ONNX Runtime without its own graph rewrites.
pub fn run(m: &Model, feeds: &[(&str, Tensor)]) -> Vec<(String, Tensor)> {
    let config = SessionConfig { optimization: OptLevel::Disabled, intra_threads: Some(1), ..SessionConfig::default() };
    let mut s = load_session(&OrtExecutor::new(), m, None, &config).expect("ONNX Runtime loads the model");
    let inputs: Vec<(String, Value)> = feeds.iter().map(|(n, t)| (n.to_string(), Value::Tensor(t.clone()))).collect();
    s.run(&inputs, None)
        .expect("ONNX Runtime runs the model")
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().expect("tensor output").clone()))
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (x, y) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max)
}

/// Runs both models on the same feeds; asserts every output agrees within `tol`; returns the
/// worst difference.
pub fn assert_same(before: &Model, after: &Model, feeds: &[(&str, Tensor)], tol: f64) -> f64 {
    let a = run(before, feeds);
    let b = run(after, feeds);
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let d = max_abs_diff(ta, tb);
        assert!(d <= tol, "output {na}: max abs difference {d} > {tol}");
        worst = worst.max(d);
    }
    worst
}

/// Runs a pass once; returns its report entries.
pub fn apply(pass: &dyn Pass, m: &mut Model) -> Vec<ReportEntry> {
    let mut cx = PassContext::new();
    pass.run(m, &mut cx).expect("the pass runs");
    let problems: Vec<_> = kiln_compiler::verify::verify_model(m)
        .into_iter()
        .filter(|p| p.severity == kiln_compiler::verify::Severity::Error)
        .collect();
    assert!(problems.is_empty(), "invalid model after {}: {problems:?}", pass.name());
    cx.entries().to_vec()
}

pub fn count(m: &Model, domain: &str, op: &str) -> usize {
    let mut n = 0;
    m.graph.as_ref().unwrap().visit_graphs(&mut |g| {
        n += g.nodes().filter(|(_, x)| x.domain() == domain && x.op_type == op).count();
    });
    n
}

pub fn applied(entries: &[ReportEntry], rule: &str) -> usize {
    entries.iter().filter(|e| e.kind == "applied" && e.rule == rule).count()
}

pub fn why(entries: &[ReportEntry], rule: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.kind != "applied" && e.rule == rule)
        .map(|e| format!("{}: {}", e.kind, e.detail))
        .collect()
}

/// Stand-in for shape inference (not merged yet): runs the model twice with every value
/// exposed, on feeds of two different sizes, and declares each value's type; dimensions that
/// differ between the runs become symbols named after the input dimension they follow.
pub fn annotate_types_by_running(m: &mut Model, feeds_a: &[(&str, Tensor)], feeds_b: &[(&str, Tensor)]) {
    let g = m.graph.as_ref().unwrap();
    let names: Vec<String> = g
        .nodes()
        .flat_map(|(_, n)| n.outputs().iter().flatten().copied().collect::<Vec<_>>())
        .map(|v| g.value(v).name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    let mut probe = m.clone();
    expose_values(&mut probe, &names).unwrap();
    let ra = run(&probe, feeds_a);
    let rb = run(&probe, feeds_b);
    // Symbols: a dimension value pair (a, b) seen on an input gets that input dim's name.
    let mut symbols: Vec<((usize, usize), String)> = Vec::new();
    for ((name, ta), (_, tb)) in feeds_a.iter().zip(feeds_b) {
        let declared = g.find_value(name).and_then(|v| g.tensor_type(v)).and_then(|t| t.shape.clone());
        for (i, (&da, &db)) in ta.dims().iter().zip(tb.dims()).enumerate() {
            if da != db {
                let sym = match declared.as_ref().and_then(|d| d.get(i)).map(|d| &d.value) {
                    Some(kiln_compiler::ir::DimValue::Symbol(s)) => s.clone(),
                    _ => format!("{name}_{i}"),
                };
                symbols.push(((da, db), sym));
            }
        }
    }
    let g = m.graph.as_mut().unwrap();
    for ((name, ta), (_, tb)) in ra.iter().zip(&rb) {
        let Some(v) = g.find_value(name) else { continue };
        if !matches!(g.value(v).def(), ValueDef::Node { .. }) || ta.rank() != tb.rank() {
            continue;
        }
        let dims = ta
            .dims()
            .iter()
            .zip(tb.dims())
            .map(|(&a, &b)| {
                if a == b {
                    Dim::known(a as i64)
                } else {
                    symbols
                        .iter()
                        .find(|(k, _)| *k == (a, b))
                        .map_or_else(Dim::unknown, |(_, s)| Dim::symbol(s.clone()))
                }
            })
            .collect();
        g.value_mut(v).ty = Some(Type::tensor(TensorType::new(ta.dtype(), Some(dims))));
    }
}

/// The fixture's model.
pub fn fixture(name: &str) -> Model {
    let p = kiln_fixtures::model(name).expect("fixture installed (cargo xtask fixtures)");
    kiln_compiler::onnx::load_model(&p).expect("fixture loads")
}

/// A terse graph builder for rule tests.
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
        self.g.add_input(name, f32_type(dims))
    }
    pub fn input_typed(&mut self, name: &str, dtype: DataType, dims: &[usize]) -> ValueId {
        self.g.add_input(name, Some(Type::tensor(TensorType::with_dims(dtype, dims))))
    }
    /// A random f32 initializer in [lo, hi).
    pub fn weight(&mut self, name: &str, dims: &[usize], lo: f32, hi: f32) -> ValueId {
        let t = self.rng.tensor(dims, lo, hi);
        init(&mut self.g, name, t)
    }
    pub fn konst(&mut self, name: &str, t: Tensor) -> ValueId {
        init(&mut self.g, name, t)
    }
    pub fn scalar(&mut self, v: f32) -> ValueId {
        self.n += 1;
        let name = format!("c{}", self.n);
        scalar(&mut self.g, &name, v)
    }
    pub fn ints(&mut self, v: &[i64]) -> ValueId {
        self.n += 1;
        let name = format!("i{}", self.n);
        init(&mut self.g, &name, Tensor::from_slice(vec![v.len()], v).unwrap())
    }
    /// Adds a node with one output; returns it.
    pub fn op(&mut self, op: &str, inputs: &[ValueId], attrs: Vec<kiln_compiler::ir::Attribute>) -> ValueId {
        self.n += 1;
        let mut spec = kiln_compiler::ir::NodeSpec::new(op)
            .name(format!("{op}_{}", self.n))
            .inputs(inputs.iter().copied())
            .outputs([format!("{op}_{}_out", self.n)]);
        spec.attributes = attrs;
        let id = self.g.add_node(spec);
        self.g.node(id).output(0).unwrap()
    }
    /// Declares the type of a value (what shape inference would say).
    pub fn declare(&mut self, v: ValueId, dims: &[usize]) {
        self.g.value_mut(v).ty = f32_type(dims);
    }
    pub fn output(&mut self, v: ValueId) {
        self.g.push_output(v);
    }
    pub fn model(self, opset: i64) -> Model {
        model(self.g, opset)
    }
}

#[allow(unused_imports)]
pub use kiln_compiler::ir::Attribute as A;
