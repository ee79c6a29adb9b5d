//! Every op [`evaluate`] computes is checked against ONNX Runtime on the same node, byte for
//! byte, including the edge cases exporters produce (negative axes, clamped slice bounds,
//! negative steps and indices, wrapping casts, broadcasting).

use kiln_compiler::ir::{AttrValue, Attribute, Graph, Model, NodeSpec};
use kiln_compiler::runtime::Value;

use super::*;
use crate::testing::*;

fn i64s(dims: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_slice(dims.to_vec(), v).unwrap()
}

fn i32s(dims: &[usize], v: &[i32]) -> Tensor {
    Tensor::from_slice(dims.to_vec(), v).unwrap()
}

fn bools(dims: &[usize], v: &[bool]) -> Tensor {
    Tensor::from_slice(dims.to_vec(), v).unwrap()
}

fn f32s(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_slice(dims.to_vec(), &(0..n).map(|i| i as f32 * 0.5 - 3.0).collect::<Vec<f32>>()).unwrap()
}

fn ints(v: &[i64]) -> Tensor {
    i64s(&[v.len()], v)
}

/// One node over constant inputs (`None`: omitted), as a model and as the node itself.
fn single(spec: NodeSpec, inputs: &[Option<Tensor>], opset: i64) -> (Model, Vec<Option<Arc<Tensor>>>) {
    let mut g = Graph::new();
    let mut ids = Vec::new();
    let mut held = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        match t {
            Some(t) => {
                ids.push(Some(constant(&mut g, &format!("in{i}"), t.clone())));
                held.push(Some(Arc::new(t.clone())));
            }
            None => {
                ids.push(None);
                held.push(None);
            }
        }
    }
    let mut spec = spec.outputs(["y"]);
    spec.inputs = ids;
    let id = g.add_node(spec);
    let y = g.node(id).output(0).unwrap();
    g.push_output(y);
    (model(g, opset), held)
}

fn host_result(m: &Model, inputs: &[Option<Arc<Tensor>>]) -> Host {
    let g = m.graph.as_ref().unwrap();
    let (_, n) = g.nodes().next().unwrap();
    evaluate(n, inputs, 1_000_000)
}

/// Evaluates the node here and in ONNX Runtime and asserts the same type, shape and bytes.
#[track_caller]
fn same_as_ort(spec: NodeSpec, inputs: &[Option<Tensor>], opset: i64) {
    require_ort().unwrap();
    let what = format!("{} (opset {opset})", spec.op_type);
    let (m, held) = single(spec, inputs, opset);
    let Host::Done(got) = host_result(&m, &held) else {
        panic!("{what}: not evaluated here: {:?}", host_result(&m, &held));
    };
    let want = run(&m, &[]).unwrap_or_else(|e| panic!("{what}: ORT: {e}"));
    let Value::Tensor(want) = &want[0].1 else { panic!("{what}: ORT returned no tensor") };
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].dtype(), got[0].dims()), (want.dtype(), want.dims()), "{what}");
    assert_eq!(got[0].bytes(), want.bytes(), "{what}: values differ");
}

fn node(op: &str) -> NodeSpec {
    NodeSpec::new(op)
}

fn attr_ints(name: &str, v: &[i64]) -> Attribute {
    Attribute::new(name, AttrValue::Ints(v.to_vec()))
}

#[test]
fn element_moves_match_the_runtime() {
    let x = f32s(&[2, 3, 4]);
    same_as_ort(node("Reshape"), &[Some(x.clone()), Some(ints(&[0, -1]))], 17);
    same_as_ort(node("Reshape"), &[Some(x.clone()), Some(ints(&[4, 3, -1]))], 17);
    same_as_ort(node("Flatten").attr(Attribute::int("axis", -1)), &[Some(x.clone())], 17);
    same_as_ort(node("Flatten").attr(Attribute::int("axis", 0)), &[Some(x.clone())], 17);
    same_as_ort(node("Unsqueeze"), &[Some(x.clone()), Some(ints(&[-1, 0]))], 13);
    same_as_ort(node("Unsqueeze").attr(attr_ints("axes", &[1, 4])), &[Some(x.clone())], 11);
    let ones = f32s(&[1, 3, 1, 2]);
    same_as_ort(node("Squeeze"), &[Some(ones.clone()), Some(ints(&[-2]))], 13);
    same_as_ort(node("Squeeze"), &[Some(ones.clone())], 13);
    same_as_ort(node("Squeeze").attr(attr_ints("axes", &[0])), &[Some(ones)], 11);
    same_as_ort(node("Transpose").attr(attr_ints("perm", &[2, 0, 1])), &[Some(x.clone())], 17);
    same_as_ort(node("Transpose"), &[Some(x.clone())], 17);
    same_as_ort(
        node("Concat").attr(Attribute::int("axis", -1)),
        &[Some(i64s(&[2, 1], &[1, 2])), Some(i64s(&[2, 3], &[3, 4, 5, 6, 7, 8])), Some(i64s(&[2, 0], &[]))],
        13,
    );
    same_as_ort(node("Concat").attr(Attribute::int("axis", 1)), &[Some(x.clone()), Some(f32s(&[2, 1, 4]))], 13);
    same_as_ort(node("Expand"), &[Some(i64s(&[3, 1], &[1, 2, 3])), Some(ints(&[2, 1, 4]))], 13);
    same_as_ort(node("Expand"), &[Some(f32s(&[2, 1])), Some(ints(&[1]))], 13);
    same_as_ort(node("Identity"), &[Some(x)], 13);
}

#[test]
fn slices_match_the_runtime_at_their_bounds() {
    let x = f32s(&[4, 5, 6]);
    // starts, ends, axes, steps.
    type Bounds<'a> = (&'a [i64], &'a [i64], Option<&'a [i64]>, Option<&'a [i64]>);
    let cases: &[Bounds] = &[
        (&[1], &[3], None, None),
        (&[-1, 1], &[i64::MIN, 100], Some(&[0, 2]), Some(&[-1, 2])),
        (&[0], &[i64::MAX], Some(&[-2]), Some(&[3])),
        (&[10], &[-10], Some(&[1]), Some(&[-2])),
        (&[3], &[1], Some(&[2]), None),
        (&[-100, 2, -1], &[100, -1, 0], Some(&[0, 1, 2]), Some(&[1, 1, -1])),
    ];
    for &(starts, ends, axes, steps) in cases {
        let mut inputs = vec![Some(x.clone()), Some(ints(starts)), Some(ints(ends))];
        inputs.push(axes.map(ints));
        inputs.push(steps.map(ints));
        while inputs.last().is_some_and(Option::is_none) {
            inputs.pop();
        }
        same_as_ort(node("Slice"), &inputs, 13);
    }
    // Opset 1–9: bounds as attributes; i32 bounds as inputs.
    let old = node("Slice")
        .attr(attr_ints("starts", &[1, -3]))
        .attr(attr_ints("ends", &[3, 1000]))
        .attr(attr_ints("axes", &[0, 2]));
    same_as_ort(old, &[Some(x.clone())], 9);
    same_as_ort(node("Slice"), &[Some(x), Some(i32s(&[1], &[1])), Some(i32s(&[1], &[-1]))], 13);
}

#[test]
fn gathers_shapes_and_fills_match_the_runtime() {
    let x = f32s(&[3, 4, 2]);
    same_as_ort(
        node("Gather").attr(Attribute::int("axis", 1)),
        &[Some(x.clone()), Some(i64s(&[2, 2], &[0, -1, 3, -4]))],
        13,
    );
    same_as_ort(node("Gather"), &[Some(x.clone()), Some(Tensor::scalar(-1i64))], 13);
    same_as_ort(node("Gather").attr(Attribute::int("axis", -1)), &[Some(x.clone()), Some(i32s(&[1], &[1]))], 13);
    same_as_ort(node("Shape"), &[Some(x.clone())], 13);
    same_as_ort(
        node("Shape").attr(Attribute::int("start", -2)).attr(Attribute::int("end", 10)),
        &[Some(x.clone())],
        15,
    );
    same_as_ort(node("Size"), &[Some(x)], 13);
    same_as_ort(node("ConstantOfShape"), &[Some(ints(&[2, 3]))], 13);
    let seven = Attribute::new("value", AttrValue::Tensor(Arc::new(i64s(&[1], &[7]))));
    same_as_ort(node("ConstantOfShape").attr(seven), &[Some(ints(&[3, 0, 2]))], 13);
    same_as_ort(
        node("Range"),
        &[Some(Tensor::scalar(10i64)), Some(Tensor::scalar(1i64)), Some(Tensor::scalar(-3i64))],
        13,
    );
    same_as_ort(
        node("Range"),
        &[Some(Tensor::scalar(0i32)), Some(Tensor::scalar(7i32)), Some(Tensor::scalar(2i32))],
        13,
    );
    same_as_ort(
        node("Range"),
        &[Some(Tensor::scalar(5i64)), Some(Tensor::scalar(5i64)), Some(Tensor::scalar(1i64))],
        13,
    );
}

#[test]
fn casts_match_the_runtime() {
    let big = i64s(&[5], &[0, -1, (1 << 24) + 1, i64::MAX, i64::MIN + 3]);
    let to = |dt: DataType| node("Cast").attr(Attribute::int("to", i64::from(dt.onnx_code())));
    for dt in [
        DataType::I32,
        DataType::I8,
        DataType::U8,
        DataType::U16,
        DataType::U64,
        DataType::F32,
        DataType::F64,
        DataType::Bool,
    ] {
        same_as_ort(to(dt), &[Some(big.clone())], 13);
    }
    same_as_ort(to(DataType::I64), &[Some(bools(&[3], &[true, false, true]))], 13);
    same_as_ort(to(DataType::F32), &[Some(i32s(&[3], &[16_777_217, -3, i32::MIN]))], 13);
    same_as_ort(to(DataType::F64), &[Some(f32s(&[4]))], 13);
    same_as_ort(to(DataType::F32), &[Some(Tensor::from_slice(vec![3], &[0.1f64, 1e300, -2.5]).unwrap())], 13);
    same_as_ort(to(DataType::I8), &[Some(Tensor::from_slice(vec![3], &[200u8, 127, 128]).unwrap())], 13);
    same_as_ort(to(DataType::I64), &[Some(i64s(&[2], &[4, 5]))], 13);
}

#[test]
fn integer_arithmetic_and_logic_match_the_runtime() {
    let a = i64s(&[2, 3], &[7, -7, 9, -9, 0, i64::MAX]);
    let b = i64s(&[3], &[2, -2, 4]);
    for op in ["Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"] {
        same_as_ort(node(op), &[Some(a.clone()), Some(b.clone())], 13);
    }
    let wrap = i32s(&[2], &[i32::MAX, i32::MIN]);
    for op in ["Add", "Sub", "Mul"] {
        same_as_ort(node(op), &[Some(wrap.clone()), Some(i32s(&[1], &[3]))], 13);
    }
    same_as_ort(node("Neg"), &[Some(i32s(&[3], &[1, -5, 0]))], 13);
    same_as_ort(node("Abs"), &[Some(a.clone())], 13);
    let p = bools(&[2, 1], &[true, false]);
    let q = bools(&[3], &[true, false, true]);
    for op in ["And", "Or", "Xor", "Equal"] {
        same_as_ort(node(op), &[Some(p.clone()), Some(q.clone())], 13);
    }
    same_as_ort(node("Not"), &[Some(q.clone())], 13);
    same_as_ort(node("Where"), &[Some(p), Some(a), Some(i64s(&[1], &[-1]))], 13);
    same_as_ort(node("Where"), &[Some(q), Some(f32s(&[2, 3])), Some(f32s(&[1]))], 13);
}

#[test]
fn what_is_not_exact_here_is_left_to_the_runtime() {
    let runtime = |spec: NodeSpec, inputs: &[Option<Tensor>]| {
        let (m, held) = single(spec, inputs, 13);
        matches!(host_result(&m, &held), Host::Runtime)
    };
    // Floating-point arithmetic belongs to the runtime's kernels.
    assert!(runtime(node("Add"), &[Some(f32s(&[2])), Some(f32s(&[2]))]));
    assert!(runtime(node("Sqrt"), &[Some(f32s(&[2]))]));
    assert!(runtime(node("Cast").attr(Attribute::int("to", 7)), &[Some(f32s(&[2]))]));
    // Invalid forms are the runtime's to report.
    assert!(runtime(node("Reshape"), &[Some(f32s(&[6])), Some(ints(&[4]))]));
    assert!(runtime(node("Gather"), &[Some(f32s(&[3])), Some(ints(&[3]))]));
    assert!(runtime(node("Add"), &[Some(ints(&[1, 2])), Some(i32s(&[2], &[1, 2]))]));
    assert!(runtime(node("Slice"), &[Some(f32s(&[3])), Some(ints(&[0])), Some(ints(&[2])), None, Some(ints(&[0]))]));
    // Over the size limit: the runtime path reports it.
    let (m, held) = single(node("ConstantOfShape"), &[Some(ints(&[1001, 1000]))], 13);
    assert!(matches!(host_result(&m, &held), Host::Runtime));
    // Another domain.
    assert!(runtime(node("Reshape").domain("com.example"), &[Some(f32s(&[6])), Some(ints(&[6]))]));
}

#[test]
fn integer_division_by_zero_is_refused_not_handed_to_the_runtime() {
    // ONNX Runtime's integer Div would raise SIGFPE and end the process.
    for (a, b) in [(ints(&[4, 5]), ints(&[2, 0])), (i32s(&[1], &[i32::MIN]), i32s(&[1], &[-1]))] {
        let (m, held) = single(node("Div"), &[Some(a), Some(b)], 13);
        let Host::Refused(why) = host_result(&m, &held) else { panic!("not refused") };
        assert!(why.contains("division"), "{why}");
    }
}
