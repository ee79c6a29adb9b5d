//! Shape inference against the ONNX conformance node tests: every case's declared output
//! types are stripped, inferred again and compared. Conflicts must be zero.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kiln_compiler::ir::{DimValue, Model, Type, TypeKind, ValueDef};
use kiln_compiler::onnx::load_model;
use kiln_compiler::shape::infer_model;

/// The installed conformance suite; a missing suite fails the test (`cargo xtask fixtures`).
fn node_tests_dir() -> PathBuf {
    kiln_fixtures::conformance_dir().unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    /// As precise as the declared type (or more) and consistent with it.
    Exact,
    /// Consistent but less precise.
    Partial,
    /// Nothing inferred.
    Missing,
    Conflict,
}

fn worst(a: Cmp, b: Cmp) -> Cmp {
    let rank = |c: Cmp| match c {
        Cmp::Exact => 0,
        Cmp::Partial => 1,
        Cmp::Missing => 2,
        Cmp::Conflict => 3,
    };
    if rank(a) >= rank(b) { a } else { b }
}

fn compare(declared: Option<&Type>, inferred: Option<&Type>) -> Cmp {
    let (d, i) = match (declared, inferred) {
        (None, _) => return Cmp::Exact,
        (Some(_), None) => return Cmp::Missing,
        (Some(d), Some(i)) => (d, i),
    };
    match (&d.kind, &i.kind) {
        (TypeKind::Unset, _) => Cmp::Exact,
        (_, TypeKind::Unset) => Cmp::Missing,
        (TypeKind::Tensor(a), TypeKind::Tensor(b)) | (TypeKind::SparseTensor(a), TypeKind::SparseTensor(b)) => {
            let mut c = match (a.elem_type, b.elem_type) {
                (Some(x), Some(y)) if x != y => return Cmp::Conflict,
                (Some(_), None) => Cmp::Partial,
                _ => Cmp::Exact,
            };
            match (&a.shape, &b.shape) {
                (None, _) => {}
                (Some(_), None) => c = worst(c, Cmp::Partial),
                (Some(x), Some(y)) if x.len() != y.len() => return Cmp::Conflict,
                (Some(x), Some(y)) => {
                    for (p, q) in x.iter().zip(y) {
                        let dc = match (&p.value, &q.value) {
                            (DimValue::Known(m), DimValue::Known(n)) if m != n => return Cmp::Conflict,
                            (DimValue::Known(_), DimValue::Known(_)) => Cmp::Exact,
                            (DimValue::Known(_), _) => Cmp::Partial,
                            // Names are as precise as other names (exporters invent them).
                            (DimValue::Symbol(_), DimValue::Symbol(_)) => Cmp::Exact,
                            (DimValue::Symbol(_), DimValue::Known(_)) => Cmp::Exact,
                            (DimValue::Symbol(_), _) => Cmp::Partial,
                            (DimValue::Unknown, _) => Cmp::Exact,
                        };
                        c = worst(c, dc);
                    }
                }
            }
            c
        }
        (TypeKind::Sequence(a), TypeKind::Sequence(b)) | (TypeKind::Optional(a), TypeKind::Optional(b)) => {
            match (a, b) {
                (None, _) => Cmp::Exact,
                (Some(_), None) => Cmp::Partial,
                (Some(x), Some(y)) => match compare(Some(x), Some(y)) {
                    Cmp::Missing => Cmp::Partial,
                    c => c,
                },
            }
        }
        (TypeKind::Map { .. }, TypeKind::Map { .. }) | (TypeKind::Opaque { .. }, TypeKind::Opaque { .. }) => Cmp::Exact,
        _ => Cmp::Conflict,
    }
}

#[derive(Default)]
struct Tally {
    exact: usize,
    partial: usize,
    missing: usize,
    conflicts: Vec<String>,
    panics: Vec<String>,
    not_exact: Vec<String>,
    skipped: Vec<String>,
}

/// Strips the declared types of graph outputs that nodes produce, infers, and compares.
fn check_model(name: &str, mut model: Model, t: &mut Tally) {
    let Some(g) = model.graph.as_mut() else { return };
    let mut declared = Vec::new();
    for &v in g.outputs() {
        if matches!(g.value(v).def(), ValueDef::Node { .. }) {
            declared.push((v, g.value(v).ty.clone()));
        }
    }
    for (v, _) in &declared {
        g.value_mut(*v).ty = None;
    }
    let report = match catch_unwind(AssertUnwindSafe(|| infer_model(&mut model))) {
        Ok(r) => r,
        Err(_) => {
            t.panics.push(name.to_string());
            return;
        }
    };
    let Some(g) = model.graph.as_ref() else { return };
    for (v, d) in &declared {
        let inferred = g.value(*v).ty.as_ref();
        let c = compare(d.as_ref(), inferred);
        let show = |x: Option<&Type>| x.map_or_else(|| "?".to_string(), ToString::to_string);
        let line = format!("{name}: {}: declared {} inferred {}", g.value(*v).name, show(d.as_ref()), show(inferred));
        match c {
            Cmp::Exact => t.exact += 1,
            Cmp::Partial => {
                t.partial += 1;
                t.not_exact.push(line);
            }
            Cmp::Missing => {
                t.missing += 1;
                let why: Vec<String> = report
                    .skipped
                    .iter()
                    .map(|(_, n, r)| format!("{n}: {r}"))
                    .chain(report.unknown_ops.keys().map(|k| format!("no fn for {k}")))
                    .collect();
                t.not_exact.push(format!("{line} [{}]", why.join("; ")));
            }
            Cmp::Conflict => t.conflicts.push(line),
        }
    }
    for (g, n, why) in &report.skipped {
        t.skipped.push(format!("{name}: {g}: {n}: {why}"));
    }
    // Conflicts between inferred types and declared value_info inside the graph count too.
    for c in &report.conflicts {
        t.conflicts.push(format!("{name}: {} {}: declared {} inferred {}", c.node, c.value, c.declared, c.inferred));
    }
}

fn summarize(label: &str, t: &Tally) -> f64 {
    let total = t.exact + t.partial + t.missing + t.conflicts.len();
    let rate = if total == 0 { 1.0 } else { t.exact as f64 / total as f64 };
    eprintln!(
        "{label}: {total} outputs: {} exact ({:.1}%), {} less precise, {} not inferred, {} conflicts, {} panics, {} nodes skipped",
        t.exact,
        rate * 100.0,
        t.partial,
        t.missing,
        t.conflicts.len(),
        t.panics.len(),
        t.skipped.len()
    );
    if std::env::var_os("KILN_SHAPE_VERBOSE").is_some() {
        for l in &t.not_exact {
            eprintln!("  ~ {l}");
        }
        for l in &t.skipped {
            eprintln!("  skipped {l}");
        }
    }
    for l in &t.conflicts {
        eprintln!("  ! {l}");
    }
    for l in &t.panics {
        eprintln!("  panic: {l}");
    }
    rate
}

#[test]
fn conformance_node_tests_infer_declared_types() {
    let dir = node_tests_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let mut t = Tally::default();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let Ok(model) = load_model(&case.join("model.onnx")) else { continue };
        check_model(&name, model, &mut t);
    }
    let rate = summarize("onnx node tests", &t);
    // With every declared type gone (inputs included) nothing may panic either.
    let mut blind_panics = Vec::new();
    for case in &cases {
        let Ok(mut model) = load_model(&case.join("model.onnx")) else { continue };
        if let Some(g) = model.graph.as_mut() {
            g.visit_graphs_mut(&mut |sg| {
                let ids: Vec<_> = sg.values().map(|(v, _)| v).collect();
                for v in ids {
                    sg.value_mut(v).ty = None;
                }
            });
        }
        if catch_unwind(AssertUnwindSafe(|| infer_model(&mut model))).is_err() {
            blind_panics.push(case.display().to_string());
        }
    }
    assert!(blind_panics.is_empty(), "panics without declared types: {blind_panics:?}");
    assert!(t.panics.is_empty(), "inference panicked");
    assert!(t.conflicts.is_empty(), "{} conflicts", t.conflicts.len());
    assert!(rate > 0.8, "exact rate {rate:.3} below 80%");
}

/// Every trained fixture infers without conflicting with its declared types.
#[test]
fn fixture_models_infer_without_conflicts() {
    let names = kiln_fixtures::fixture_names().unwrap_or_else(|e| panic!("{e}"));
    let files: Vec<PathBuf> = names.iter().map(|n| kiln_fixtures::model(n).unwrap_or_else(|e| panic!("{e}"))).collect();
    assert!(files.len() >= 6, "{files:?}");
    let mut t = Tally::default();
    for f in &files {
        let Ok(model) = load_model(f) else { continue };
        // Coverage over every node output: typed, of known rank, without unknown dims.
        let mut m2 = model.clone();
        infer_model(&mut m2);
        let (mut all, mut ranked, mut full) = (0, 0, 0);
        if let Some(g) = m2.graph.as_ref() {
            g.visit_graphs(&mut |sg| {
                for (_, n) in sg.nodes() {
                    for v in n.outputs().iter().flatten() {
                        all += 1;
                        if let Some(s) = sg.tensor_type(*v).and_then(|t| t.shape.as_ref()) {
                            ranked += 1;
                            if s.iter().all(|d| !matches!(d.value, DimValue::Unknown)) {
                                full += 1;
                            }
                        }
                    }
                }
            });
        }
        eprintln!("{}: {all} node outputs, {ranked} of known rank, {full} with no unknown dim", f.display());
        check_model(&f.display().to_string(), model, &mut t);
    }
    summarize("fixtures", &t);
    assert!(t.panics.is_empty(), "inference panicked");
    assert!(t.conflicts.is_empty(), "{} conflicts", t.conflicts.len());
}

/// The case with its first test inputs bound as initializers, so every runtime parameter
/// (axes, sizes, K, repeats…) is a known value. Inputs that are not plain tensors stay inputs.
fn with_input_data(case: &Path) -> Option<Model> {
    use kiln_compiler::onnx::proto::{ModelProto, TensorProto};
    use prost::Message;
    let bytes = std::fs::read(case.join("model.onnx")).ok()?;
    let mut mp = ModelProto::decode(bytes.as_slice()).ok()?;
    let g = mp.graph.as_mut()?;
    let data = case.join("test_data_set_0");
    let inits: Vec<String> = g.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let names: Vec<String> = g.input.iter().filter_map(|vi| vi.name.clone()).filter(|n| !inits.contains(n)).collect();
    for (i, name) in names.iter().enumerate() {
        let Ok(b) = std::fs::read(data.join(format!("input_{i}.pb"))) else { continue };
        // Sequence and optional inputs are other messages: leave those inputs alone.
        let Ok(mut tp) = TensorProto::decode(b.as_slice()) else { continue };
        let is_tensor = g.input.iter().find(|vi| vi.name.as_deref() == Some(name.as_str())).is_some_and(|vi| {
            vi.r#type
                .as_ref()
                .is_some_and(|t| matches!(t.value, Some(kiln_compiler::onnx::proto::type_proto::Value::TensorType(_))))
        });
        if !is_tensor || tp.data_type.is_none() {
            continue;
        }
        tp.name = Some(name.clone());
        g.initializer.push(tp);
    }
    kiln_compiler::onnx::decode_model(bytes::Bytes::from(mp.encode_to_vec()), &case.join("model.onnx"), Some(case)).ok()
}

/// With the test inputs known, inference must be exact almost everywhere and never conflict:
/// this checks the known-value arithmetic itself.
#[test]
fn conformance_with_input_data_bound() {
    let dir = node_tests_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let mut t = Tally::default();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let Some(model) = with_input_data(case) else { continue };
        check_model(&name, model, &mut t);
    }
    summarize("onnx node tests, inputs bound", &t);
    assert!(t.panics.is_empty(), "inference panicked");
    assert!(t.conflicts.is_empty(), "{} conflicts", t.conflicts.len());
}
