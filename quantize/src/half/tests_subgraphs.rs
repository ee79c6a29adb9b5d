//! Subgraphs that read values of the enclosing graph: the types a body sees must match what
//! the conversion made of them, or ONNX Runtime refuses the model. Run in ORT before and after;
//! every positive test has a negative twin.

use kiln_compiler::ir::{AttrLookup, AttrValue, Attribute, Graph, Model, NodeSpec, ValueId};
use kiln_compiler::verify::check_model;
use kiln_compiler::{DataType, Tensor};
use kiln_passes::testing::{Value, abs_tol, compare_outputs, model, require_ort, run, tensor_ty};

use super::tests::{convert_and_run, decision, elem_of};
use super::*;

/// A node whose output value carries the node's name.
fn nd(g: &mut Graph, op: &str, name: &str, inputs: &[ValueId]) -> ValueId {
    let id = g.add_node(NodeSpec::new(op).name(name).inputs(inputs.iter().copied()).outputs([name]));
    g.node(id).output(0).unwrap()
}

fn init(g: &mut Graph, name: &str, t: Tensor) -> ValueId {
    g.add_initializer(name, std::sync::Arc::new(t))
}

/// The graph held by `attr` of the node named `node`, searched in every graph.
fn body<'a>(m: &'a Model, node: &str, attr: &str) -> &'a Graph {
    fn find<'a>(g: &'a Graph, node: &str, attr: &str) -> Option<&'a Graph> {
        for (_, n) in g.nodes() {
            if n.name.as_deref() == Some(node)
                && let Some(AttrValue::Graph(b)) = n.attr(attr)
            {
                return Some(b.as_ref());
            }
            for sg in n.subgraphs() {
                if let Some(b) = find(sg, node, attr) {
                    return Some(b);
                }
            }
        }
        None
    }
    find(m.graph.as_ref().unwrap(), node, attr).unwrap_or_else(|| panic!("no {node}.{attr}"))
}

fn elem_in(g: &Graph, name: &str) -> Option<DataType> {
    g.tensor_type(g.find_value(name)?)?.dtype()
}

fn out_elem(g: &Graph) -> Option<DataType> {
    g.tensor_type(g.outputs()[0])?.dtype()
}

/// `acc = Loop(trip, cond = none, a)` with `body`, `acc` the f32[4] model output.
fn wrap_loop(mut g: Graph, trip: ValueId, a: ValueId, body: Graph) -> Model {
    let id = g.add_node(
        NodeSpec::new("Loop")
            .name("loop")
            .inputs([trip])
            .input_opt(None)
            .input_opt(Some(a))
            .outputs(["acc"])
            .attr(Attribute::new("body", AttrValue::Graph(Box::new(body)))),
    );
    let acc = g.node(id).output(0).unwrap();
    kiln_passes::testing::output(&mut g, acc, tensor_ty(DataType::F32, &[4]));
    model(g, 17)
}

/// acc = a; 3 times: acc += xr, where xr = Relu(x) lives outside the body. The carried body
/// input is declared as the file has it (`carried`: f32[4]; `None`: undeclared, as many
/// exporters leave it).
fn loop_model(carried: Option<&[usize]>) -> Model {
    let mut g = Graph::new();
    let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[4])));
    let a = g.add_input("a", Some(tensor_ty(DataType::F32, &[4])));
    nd(&mut g, "Relu", "xr", &[x]);
    let trip = init(&mut g, "trip", Tensor::scalar(3i64));
    let mut b = Graph::new();
    b.name = Some("body".into());
    b.add_input("i", Some(tensor_ty(DataType::I64, &[])));
    let cond = b.add_input("cond", Some(tensor_ty(DataType::Bool, &[])));
    let acc_in = b.add_input("acc_in", carried.map(|d| tensor_ty(DataType::F32, d)));
    let xr_c = b.add_outer("xr");
    let cond_out = nd(&mut b, "Identity", "cond_out", &[cond]);
    let next = nd(&mut b, "Add", "acc_next", &[acc_in, xr_c]);
    b.push_output(cond_out);
    b.push_output(next);
    wrap_loop(g, trip, a, b)
}

#[test]
fn a_loop_body_adding_a_converted_outer_value_to_an_undeclared_carried_input_loads_in_fp16() {
    let (half, r) = convert_and_run(&loop_model(None), &f16_config(), None, 3e-2);
    assert_eq!(elem_of(&half, "xr"), Some(DataType::F16));
    assert_eq!(decision(&r, "loop.body/acc_next"), "fp16", "{:?}", r.decisions);
    // The carried input is declared from the Loop's own input (element type only).
    let b = body(&half, "loop", "body");
    let acc_in = b.tensor_type(b.inputs()[2]).unwrap();
    assert_eq!(acc_in.dtype(), Some(DataType::F32));
    assert_eq!(acc_in.shape, None);
    assert_eq!(elem_in(b, "acc_next"), Some(DataType::F32), "the carried output keeps the Loop's type");
}

#[test]
fn a_loop_body_reading_an_unconverted_outer_value_keeps_its_declared_carried_input() {
    let mut config = f16_config();
    config.exclude = vec!["xr".into()];
    let (half, r) = convert_and_run(&loop_model(Some(&[4])), &config, None, 3e-2);
    assert_eq!(elem_of(&half, "xr"), Some(DataType::F32));
    assert_eq!(decision(&r, "xr"), "fp32 (excluded)");
    assert_eq!(decision(&r, "loop.body/acc_next"), "fp16", "{:?}", r.decisions);
    let b = body(&half, "loop", "body");
    assert_eq!(b.value(b.inputs()[2]).ty, Some(tensor_ty(DataType::F32, &[4])), "a declared input is left alone");
}

fn f16_config() -> HalfConfig {
    HalfConfig::new(HalfKind::F16)
}

/// y = If(cond) { zf·2 } else { If(c) { Identity(zf) } else { zf / 3 } }, zf = Relu(x) outside.
/// With `known_cond` the outer condition is a constant true: shape inference leaves the dead
/// else branch untyped (it never runs, yet ONNX Runtime type-checks it). `declared`: the inner
/// branches declare their outputs f32[4].
fn nested_if_model(known_cond: bool, declared: bool) -> Model {
    let mut g = Graph::new();
    let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[4])));
    let c = g.add_input("c", Some(tensor_ty(DataType::Bool, &[])));
    let outer_cond = if known_cond { init(&mut g, "always", Tensor::scalar(true)) } else { c };
    nd(&mut g, "Relu", "zf", &[x]);
    let branch = |name: &str, f: &dyn Fn(&mut Graph) -> ValueId| {
        let mut b = Graph::new();
        b.name = Some(name.into());
        let y = f(&mut b);
        if declared {
            b.value_mut(y).ty = Some(tensor_ty(DataType::F32, &[4]));
        }
        b.push_output(y);
        b
    };
    let inner_then = branch("inner_then", &|b| {
        let z = b.add_outer("zf");
        nd(b, "Identity", "inner_id", &[z])
    });
    let inner_else = branch("inner_else", &|b| {
        let z = b.add_outer("zf");
        let k = init(b, "three", Tensor::scalar(3.0f32));
        nd(b, "Div", "inner_div", &[z, k])
    });
    let mut dead = Graph::new();
    dead.name = Some("outer_else".into());
    let cc = dead.add_outer("c");
    let id = dead.add_node(
        NodeSpec::new("If")
            .name("inner")
            .inputs([cc])
            .outputs(["inner_y"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(inner_then))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(inner_else)))),
    );
    let inner_y = dead.node(id).output(0).unwrap();
    dead.push_output(inner_y);
    let mut live = Graph::new();
    live.name = Some("outer_then".into());
    let z = live.add_outer("zf");
    let two = init(&mut live, "two", Tensor::scalar(2.0f32));
    let ly = nd(&mut live, "Mul", "live_y", &[z, two]);
    live.push_output(ly);
    let id = g.add_node(
        NodeSpec::new("If")
            .name("outer")
            .inputs([outer_cond])
            .outputs(["y"])
            .attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(live))))
            .attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(dead)))),
    );
    let y = g.node(id).output(0).unwrap();
    kiln_passes::testing::output(&mut g, y, tensor_ty(DataType::F32, &[4]));
    model(g, 17)
}

/// Converts, checks, and runs both values of `c` in ORT against the FP32 model.
fn convert_nested_if(m: &Model) -> (Model, HalfReport) {
    require_ort().unwrap();
    let mut half = m.clone();
    let r = convert(&mut half, &f16_config(), None).unwrap();
    check_model(&half).unwrap();
    for cond in [true, false] {
        let x = Tensor::from_slice(vec![4], &[-1.5f32, 0.25, 2.0, 3.5]).unwrap();
        let inputs = vec![("x".to_string(), Value::Tensor(x)), ("c".to_string(), Value::Tensor(Tensor::scalar(cond)))];
        let want = run(m, &inputs).unwrap();
        let got = run(&half, &inputs).unwrap_or_else(|e| panic!("ORT rejects the converted model: {e}"));
        compare_outputs(&got, &want, abs_tol(5e-3)).unwrap();
    }
    assert_eq!(elem_of(&half, "zf"), Some(DataType::F16));
    (half, r)
}

#[test]
fn an_untyped_dead_branch_keeps_its_nodes_fp32_so_both_inner_branches_agree() {
    let (half, r) = convert_nested_if(&nested_if_model(true, false));
    let key = "outer.else_branch/inner.else_branch/inner_div";
    assert!(decision(&r, key).starts_with("fp32 (a value on its float binding has no known"), "{:?}", r.decisions);
    assert!(decision(&r, "outer.else_branch/inner.then_branch/inner_id").starts_with("fp32"));
    // The captured zf (now fp16) is cast back where the dead branch reads it.
    let then_b = body(&half, "inner", "then_branch");
    let id = then_b.nodes().find(|(_, n)| n.name.as_deref() == Some("inner_id")).unwrap().1;
    assert_eq!(then_b.tensor_type(id.input(0).unwrap()).and_then(|t| t.dtype()), Some(DataType::F32));
    assert_eq!(decision(&r, "outer.then_branch/live_y"), "fp16");
}

#[test]
fn a_typed_live_nested_if_converts_its_inner_branches() {
    let (half, r) = convert_nested_if(&nested_if_model(false, false));
    assert_eq!(decision(&r, "outer.else_branch/inner.else_branch/inner_div"), "fp16", "{:?}", r.decisions);
    assert_eq!(decision(&r, "outer.else_branch/inner.then_branch/inner_id"), "fp16");
    assert_eq!(out_elem(body(&half, "inner", "then_branch")), Some(DataType::F16));
    assert_eq!(out_elem(body(&half, "inner", "else_branch")), Some(DataType::F16));
}

#[test]
fn declared_outputs_of_an_untyped_if_keep_their_type_in_both_branches() {
    let (half, r) = convert_nested_if(&nested_if_model(true, true));
    // The Div computes in fp16 and is cast back to the f32 its branch declares.
    assert_eq!(decision(&r, "outer.else_branch/inner.else_branch/inner_div"), "fp16", "{:?}", r.decisions);
    assert_eq!(out_elem(body(&half, "inner", "then_branch")), Some(DataType::F32));
    assert_eq!(out_elem(body(&half, "inner", "else_branch")), Some(DataType::F32));
}

/// acc = a; 2 times: acc += seq[i] (SequenceAt of a sequence built outside the body), or
/// acc += Identity(xr) when `tensor`.
fn sequence_loop_model(tensor: bool) -> Model {
    let mut g = Graph::new();
    let x = g.add_input("x", Some(tensor_ty(DataType::F32, &[4])));
    let a = g.add_input("a", Some(tensor_ty(DataType::F32, &[4])));
    let xr = nd(&mut g, "Relu", "xr", &[x]);
    nd(&mut g, "SequenceConstruct", "seq", &[x, xr]);
    let trip = init(&mut g, "trip", Tensor::scalar(2i64));
    let mut b = Graph::new();
    b.name = Some("body".into());
    let i = b.add_input("i", Some(tensor_ty(DataType::I64, &[])));
    let cond = b.add_input("cond", Some(tensor_ty(DataType::Bool, &[])));
    let acc_in = b.add_input("acc_in", Some(tensor_ty(DataType::F32, &[4])));
    let elem = if tensor {
        let xr_c = b.add_outer("xr");
        nd(&mut b, "Identity", "elem", &[xr_c])
    } else {
        let s = b.add_outer("seq");
        nd(&mut b, "SequenceAt", "elem", &[s, i])
    };
    let cond_out = nd(&mut b, "Identity", "cond_out", &[cond]);
    let next = nd(&mut b, "Add", "acc_next", &[acc_in, elem]);
    b.push_output(cond_out);
    b.push_output(next);
    wrap_loop(g, trip, a, b)
}

#[test]
fn an_element_of_a_captured_sequence_stays_as_the_sequence_holds_it() {
    let (_, r) = convert_and_run(&sequence_loop_model(false), &f16_config(), None, 2e-2);
    assert_eq!(decision(&r, "loop.body/elem"), "fp32 (sequence or optional values)", "{:?}", r.decisions);
    assert_eq!(decision(&r, "loop.body/acc_next"), "fp16");
}

#[test]
fn an_identity_of_a_captured_tensor_follows_it_into_fp16() {
    let (_, r) = convert_and_run(&sequence_loop_model(true), &f16_config(), None, 2e-2);
    assert_eq!(decision(&r, "loop.body/elem"), "fp16", "{:?}", r.decisions);
    assert_eq!(decision(&r, "loop.body/acc_next"), "fp16");
}
