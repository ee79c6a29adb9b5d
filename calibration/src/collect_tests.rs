//! Collection on tiny models: main-graph values, If branches (nested, taken or not) and Loop
//! bodies, run in ONNX Runtime.

use super::*;
use crate::data::{DimSpec, Synthetic, SyntheticSpec};
use kiln_compiler::ir::{AttrValue, Attribute, Dim, Graph, NodeSpec, TensorType, Type};
use kiln_compiler::runtime::OrtExecutor;

/// y = Relu(x) * 2, with a symbolic length: x[n].
fn tiny() -> Model {
    let mut g = Graph::new();
    let x = g.add_input("x", Some(Type::tensor(TensorType::new(DataType::F32, Some(vec![Dim::symbol("n")])))));
    let two = g.add_initializer("two", std::sync::Arc::new(Tensor::scalar(2.0f32)));
    let r = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["r"]));
    let r = g.node(r).output(0).unwrap();
    let y = g.add_node(NodeSpec::new("Mul").inputs([r, two]).outputs(["y"]));
    let y = g.node(y).output(0).unwrap();
    g.push_output(y);
    Model::of_graph(g, 17)
}

#[test]
fn activations_are_listed_and_observed() {
    let model = tiny();
    assert_eq!(float_activations(&model), ["x", "r", "y"]);
    let inputs = model_inputs(&model).unwrap();
    assert_eq!(inputs[0].dims, Some(vec![DimSpec::Symbol("n".into())]));
    let mut spec = SyntheticSpec { samples: 5, seed: 3, ..Default::default() };
    spec.dims.insert("n".into(), 100);
    let src = Synthetic::new(&inputs, &spec).unwrap();
    let options = CollectOptions { group_size: 1, batch: 2, ..Default::default() };
    let r = collect(&OrtExecutor::new(), &model, None, &src, &options).unwrap();
    assert_eq!(r.samples, 5);
    let (xlo, xhi) = r.range("x").unwrap();
    assert!(xlo < -0.9 && xhi > 0.9);
    assert_eq!(r.range("r").unwrap(), (0.0, xhi));
    assert_eq!(r.range("y").unwrap(), (0.0, 2.0 * xhi));
    let one_group = CollectOptions { group_size: 64, batch: 5, ..Default::default() };
    assert_eq!(collect(&OrtExecutor::new(), &model, None, &src, &one_group).unwrap(), r);
}

#[test]
fn minmax_collects_extremes_only_unless_histograms_are_kept() {
    let model = tiny();
    let inputs = model_inputs(&model).unwrap();
    let mut spec = SyntheticSpec { samples: 6, seed: 5, ..Default::default() };
    spec.dims.insert("n".into(), 300);
    let src = Synthetic::new(&inputs, &spec).unwrap();
    let lean = collect(&OrtExecutor::new(), &model, None, &src, &CollectOptions::default()).unwrap();
    let kept = CollectOptions { keep_histograms: true, batch: 5, ..Default::default() };
    let full = collect(&OrtExecutor::new(), &model, None, &src, &kept).unwrap();
    assert!(lean.tensors.values().all(|t| t.histogram.is_none()));
    assert!(full.tensors.values().all(|t| t.histogram.is_some()));
    for name in ["x", "r", "y"] {
        assert_eq!(lean.range(name), full.range(name), "{name}");
    }
    // Histogram methods bin whatever the option says.
    let entropy = CollectOptions { method: Method::Entropy, ..Default::default() };
    let e = collect(&OrtExecutor::new(), &model, None, &src, &entropy).unwrap();
    assert!(e.tensors.values().all(|t| t.histogram.is_some()));
    assert_eq!(full.with_method(Method::Entropy).unwrap(), e);
}

/// y = If(max(x) > threshold) { t = x * 3; If(same cond) { t + 1 } else { t } } else { x * -2 }.
fn branchy(threshold: f32) -> Model {
    let f32_n = || Some(Type::tensor(TensorType::new(DataType::F32, Some(vec![Dim::symbol("n")]))));
    let mut g = Graph::new();
    let x = g.add_input("x", f32_n());
    let th = g.add_initializer("th", std::sync::Arc::new(Tensor::scalar(threshold)));
    let m = g.add_node(NodeSpec::new("ReduceMax").inputs([x]).outputs(["m"]).attr(Attribute::int("keepdims", 0)));
    let m = g.node(m).output(0).unwrap();
    let c = g.add_node(NodeSpec::new("Greater").inputs([m, th]).outputs(["c"]));
    let c = g.node(c).output(0).unwrap();

    let mut inner_then = Graph::new();
    inner_then.name = Some("inner_then".into());
    let t = inner_then.add_outer("t");
    let one = inner_then.add_initializer("one", std::sync::Arc::new(Tensor::scalar(1.0f32)));
    let u = inner_then.add_node(NodeSpec::new("Add").inputs([t, one]).outputs(["u"]));
    let u = inner_then.node(u).output(0).unwrap();
    inner_then.push_output(u);
    let mut inner_else = Graph::new();
    inner_else.name = Some("inner_else".into());
    let t = inner_else.add_outer("t");
    let w = inner_else.add_node(NodeSpec::new("Identity").inputs([t]).outputs(["w"]));
    let w = inner_else.node(w).output(0).unwrap();
    inner_else.push_output(w);

    let mut then = Graph::new();
    then.name = Some("then".into());
    let (xo, co) = (then.add_outer("x"), then.add_outer("c"));
    let three = then.add_initializer("three", std::sync::Arc::new(Tensor::scalar(3.0f32)));
    let t = then.add_node(NodeSpec::new("Mul").inputs([xo, three]).outputs(["t"]));
    let _ = t;
    let inner = then.add_node(
        NodeSpec::new("If")
            .inputs([co])
            .outputs(["v"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(inner_then))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(inner_else)))),
    );
    let v = then.node(inner).output(0).unwrap();
    then.push_output(v);

    let mut other = Graph::new();
    other.name = Some("other".into());
    let xo = other.add_outer("x");
    let minus2 = other.add_initializer("minus2", std::sync::Arc::new(Tensor::scalar(-2.0f32)));
    let e = other.add_node(NodeSpec::new("Mul").inputs([xo, minus2]).outputs(["e"]));
    let e = other.node(e).output(0).unwrap();
    other.push_output(e);

    let y = g.add_node(
        NodeSpec::new("If")
            .inputs([c])
            .outputs(["y"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(then))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(other)))),
    );
    let y = g.node(y).output(0).unwrap();
    g.push_output(y);
    Model::of_graph(g, 17)
}

#[test]
fn values_inside_if_branches_are_observed_on_the_runs_that_take_them() {
    let source = |model: &Model| {
        let mut spec = SyntheticSpec { samples: 4, seed: 5, ..Default::default() };
        spec.dims.insert("n".into(), 64);
        Synthetic::new(&model_inputs(model).unwrap(), &spec).unwrap()
    };
    // Always the then branch (nested If too): t, v, u observed; e and w never computed.
    let taken = branchy(-100.0);
    assert_eq!(float_activations(&taken), ["x", "m", "y", "t", "v", "u", "w", "e"]);
    let src = source(&taken);
    let options = CollectOptions { group_size: 2, ..Default::default() };
    let r = collect(&OrtExecutor::new(), &taken, None, &src, &options).unwrap();
    let (xlo, xhi) = r.range("x").unwrap();
    let close = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5;
    assert!(close(r.range("t").unwrap(), (3.0 * xlo, 3.0 * xhi)), "{:?}", r.range("t"));
    assert!(close(r.range("u").unwrap(), (3.0 * xlo + 1.0, 3.0 * xhi + 1.0)));
    assert_eq!(r.range("v"), r.range("u"));
    assert_eq!(r.range("e"), None);
    assert_eq!(r.range("w"), None);
    // Negative twin: the else branch is taken, so only e is observed.
    let other = branchy(100.0);
    let r = collect(&OrtExecutor::new(), &other, None, &source(&other), &options).unwrap();
    assert!(close(r.range("e").unwrap(), (-2.0 * xhi, -2.0 * xlo)), "{:?}", r.range("e"));
    assert_eq!(r.range("t"), None);
    assert_eq!(r.range("u"), None);
    // An explicit subgraph tensor is found; an unknown one is refused by name.
    let one = CollectOptions { tensors: Some(vec!["e".into()]), ..Default::default() };
    assert!(collect(&OrtExecutor::new(), &other, None, &source(&other), &one).unwrap().range("e").is_some());
    let bad = CollectOptions { tensors: Some(vec!["nowhere".into()]), ..Default::default() };
    let err = collect(&OrtExecutor::new(), &other, None, &source(&other), &bad).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}

/// y = Loop(3) { t = x * 2; scan output t + 1 }: t only exists inside the body.
fn looped(static_shape: bool) -> Model {
    let dims = if static_shape { vec![Dim::known(4)] } else { vec![Dim::symbol("n")] };
    let mut g = Graph::new();
    let x = g.add_input("x", Some(Type::tensor(TensorType::new(DataType::F32, Some(dims)))));
    let _ = x;
    let trips = g.add_initializer("trips", std::sync::Arc::new(Tensor::scalar(3i64)));
    let mut body = Graph::new();
    body.name = Some("body".into());
    body.add_input("i", Some(Type::tensor(TensorType::new(DataType::I64, Some(vec![])))));
    let c = body.add_input("c", Some(Type::tensor(TensorType::new(DataType::Bool, Some(vec![])))));
    let xo = body.add_outer("x");
    let two = body.add_initializer("two", std::sync::Arc::new(Tensor::scalar(2.0f32)));
    let one = body.add_initializer("one", std::sync::Arc::new(Tensor::scalar(1.0f32)));
    let co = body.add_node(NodeSpec::new("Identity").inputs([c]).outputs(["c_out"]));
    let co = body.node(co).output(0).unwrap();
    let t = body.add_node(NodeSpec::new("Mul").inputs([xo, two]).outputs(["t"]));
    let t = body.node(t).output(0).unwrap();
    let s = body.add_node(NodeSpec::new("Add").inputs([t, one]).outputs(["s"]));
    let s = body.node(s).output(0).unwrap();
    body.push_output(co);
    body.push_output(s);
    let l = g.add_node(
        NodeSpec::new("Loop")
            .inputs([trips])
            .input_opt(None)
            .outputs(["y"])
            .attr(Attribute::new("body", AttrValue::Graph(Box::new(body)))),
    );
    let y = g.node(l).output(0).unwrap();
    g.push_output(y);
    Model::of_graph(g, 17)
}

#[test]
fn values_inside_loop_bodies_of_static_shape_are_observed() {
    let source = |model: &Model| {
        let mut spec = SyntheticSpec { samples: 3, seed: 9, ..Default::default() };
        spec.dims.insert("n".into(), 4);
        Synthetic::new(&model_inputs(model).unwrap(), &spec).unwrap()
    };
    let m = looped(true);
    let r = collect(&OrtExecutor::new(), &m, None, &source(&m), &CollectOptions::default()).unwrap();
    let (xlo, xhi) = r.range("x").unwrap();
    let (tlo, thi) = r.range("t").unwrap();
    assert!((tlo - 2.0 * xlo).abs() < 1e-5 && (thi - 2.0 * xhi).abs() < 1e-5, "{:?}", r.range("t"));
    assert!(r.range("s").is_some());
    // Negative twin: of a symbolic shape, a body value may change shape between iterations,
    // which a scan output cannot carry: left unobserved (its nodes stay float), no error.
    let m = looped(false);
    let r = collect(&OrtExecutor::new(), &m, None, &source(&m), &CollectOptions::default()).unwrap();
    assert!(r.range("x").is_some());
    assert_eq!(r.range("t"), None);
}

#[test]
fn unknown_tensors_are_refused() {
    let model = tiny();
    let src = Synthetic::new(&model_inputs(&model).unwrap(), &SyntheticSpec::default()).unwrap();
    for bad in ["nope", "two"] {
        let options = CollectOptions { tensors: Some(vec![bad.into()]), ..Default::default() };
        let err = collect(&OrtExecutor::new(), &model, None, &src, &options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn groups_fill_the_memory_budget() {
    // Known sizes pack greedily; a tensor over the budget stands alone; the count caps too.
    assert_eq!(group_lengths(&[Some(40), Some(40), Some(40), Some(200), Some(10)], 64, 100), [2, 1, 1, 1]);
    assert_eq!(group_lengths(&[Some(1); 5], 2, 100), [2, 2, 1]);
    assert_eq!(group_lengths(&[Some(1); 5], usize::MAX, 100), [5], "everything fits: one session");
    // Unknown sizes count as the largest known one.
    assert_eq!(group_lengths(&[Some(30), None, None, None], 64, 100), [3, 1]);
    assert!(group_lengths(&[], 64, 100).is_empty());
}

#[test]
fn sizes_are_estimated_from_the_first_sample() {
    let mut model = tiny();
    // An exporter's -1 for a dynamic dimension does not hide the inferred size.
    let g = model.graph.as_mut().unwrap();
    let r = g.find_value("r").unwrap();
    g.value_mut(r).ty = Some(Type::tensor(TensorType::new(DataType::F32, Some(vec![Dim::known(-1)]))));
    let sample = crate::data::Sample {
        origin: "s".into(),
        inputs: vec![("x".into(), Tensor::from_slice(vec![100], &[0.0f32; 100]).unwrap())],
    };
    let names: Vec<String> = ["r", "y", "nowhere"].iter().map(|s| s.to_string()).collect();
    assert_eq!(estimated_bytes(&model, &names, &sample), [Some(400), Some(400), None]);
}

/// Samples of `tiny`'s input x[8]; the one at `bad` (if any) feeds x as i32, which the model
/// does not take.
struct Poisoned {
    len: usize,
    bad: Option<usize>,
}

impl SampleSource for Poisoned {
    fn len(&self) -> usize {
        self.len
    }

    fn origin(&self, index: usize) -> String {
        format!("sample-{index}")
    }

    fn read(&self, index: usize) -> Result<crate::data::Sample, DataError> {
        let x = if self.bad == Some(index) {
            Tensor::from_slice(vec![8], &[1i32; 8]).unwrap()
        } else {
            let v: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) * (index + 1) as f32).collect();
            Tensor::from_slice(vec![8], &v).unwrap()
        };
        Ok(crate::data::Sample { origin: self.origin(index), inputs: vec![("x".into(), x)] })
    }

    fn describe(&self) -> String {
        format!("{} samples", self.len)
    }
}

#[test]
fn a_bad_sample_after_good_ones_stops_the_run_with_its_name() {
    // Observations already made do not hide a later sample's failure, whatever the batch.
    let model = tiny();
    for batch in [1, 2] {
        let options = CollectOptions { batch, ..Default::default() };
        let err = collect(&OrtExecutor::new(), &model, None, &Poisoned { len: 6, bad: Some(4) }, &options).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");
        assert!(err.to_string().contains("sample-4"), "{err}");
    }
}

#[test]
fn good_samples_are_all_observed_whatever_the_batch() {
    let model = tiny();
    for batch in [1, 2, 4] {
        let options = CollectOptions { batch, ..Default::default() };
        let r = collect(&OrtExecutor::new(), &model, None, &Poisoned { len: 6, bad: None }, &options).unwrap();
        assert_eq!(r.samples, 6);
        // The last sample holds the extremes: (0 - 3.5) * 6 and (7 - 3.5) * 6.
        assert_eq!(r.range("x"), Some((-21.0, 21.0)));
        assert_eq!(r.range("r"), Some((0.0, 21.0)));
        assert_eq!(r.range("y"), Some((0.0, 42.0)));
    }
}
