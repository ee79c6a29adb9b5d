//! Unit tests per op family on tiny graphs.

use std::sync::Arc;

use super::*;
use crate::ir::{Attribute, NodeSpec, OpsetImport};
use crate::pass::PassManager;
use crate::tensor::Tensor;

/// `"batch,seq,768"` → dims; `?` is unknown, numbers are known, anything else a name.
fn dims_of(spec: &str) -> Vec<Dim> {
    if spec.is_empty() {
        return Vec::new();
    }
    spec.split(',')
        .map(|s| match s.trim() {
            "?" => Dim::unknown(),
            t => t.parse::<i64>().map_or_else(|_| Dim::symbol(t), Dim::known),
        })
        .collect()
}

fn tensor(dt: DataType, spec: &str) -> Option<Type> {
    Some(Type::tensor(TensorType::new(dt, Some(dims_of(spec)))))
}

struct B {
    g: Graph,
    n: usize,
}

impl B {
    fn new() -> B {
        B { g: Graph::new(), n: 0 }
    }

    fn input(&mut self, name: &str, dt: DataType, spec: &str) -> ValueId {
        self.g.add_input(name, tensor(dt, spec))
    }

    fn ints(&mut self, dims: Vec<usize>, v: &[i64]) -> ValueId {
        self.n += 1;
        self.g.add_initializer(format!("c{}", self.n), Arc::new(Tensor::from_slice(dims, v).unwrap()))
    }

    fn floats(&mut self, dims: Vec<usize>, v: &[f32]) -> ValueId {
        self.n += 1;
        self.g.add_initializer(format!("c{}", self.n), Arc::new(Tensor::from_slice(dims, v).unwrap()))
    }

    fn op_n(&mut self, spec: NodeSpec, nout: usize) -> Vec<ValueId> {
        let names: Vec<String> = (0..nout).map(|i| format!("v{}_{i}", self.n + 1)).collect();
        self.n += 1;
        let id = self.g.add_node(spec.outputs(names));
        (0..nout).map(|i| self.g.node(id).output(i).unwrap()).collect()
    }

    fn op(&mut self, op: &str, inputs: &[ValueId], attrs: Vec<Attribute>) -> ValueId {
        let mut spec = NodeSpec::new(op).inputs(inputs.iter().copied());
        spec.attributes = attrs;
        self.op_n(spec, 1)[0]
    }

    fn model(self, opset: i64) -> Model {
        let mut m = Model { graph: Some(self.g), ..Model::default() };
        m.opset_import.push(OpsetImport { domain: Some(String::new()), version: Some(opset) });
        m.opset_import.push(OpsetImport { domain: Some("com.microsoft".into()), version: Some(1) });
        m
    }
}

fn ty(m: &Model, v: ValueId) -> String {
    m.graph.as_ref().unwrap().value(v).ty.as_ref().map_or_else(|| "none".into(), ToString::to_string)
}

fn infer(b: B, opset: i64) -> (Model, InferReport) {
    let mut m = b.model(opset);
    let r = infer_model(&mut m);
    (m, r)
}

// ---- elementwise ----

#[test]
fn elementwise_broadcasts_symbols() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,seq,768");
    let bias = b.input("b", DataType::F32, "768");
    let m1 = b.input("m", DataType::F32, "batch,1,1,seq");
    let add = b.op("Add", &[x, bias], vec![]);
    let relu = b.op("Relu", &[add], vec![]);
    let eq = b.op("Equal", &[x, bias], vec![]);
    let cast = b.op("Cast", &[eq], vec![Attribute::int("to", 10)]);
    let mask = b.op("Mul", &[m1, x], vec![]);
    let w = b.op("Where", &[eq, x, bias], vec![]);
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, relu), "f32[batch,seq,768]");
    assert_eq!(ty(&m, eq), "bool[batch,seq,768]");
    assert_eq!(ty(&m, cast), "f16[batch,seq,768]");
    // Right-aligned: [batch,1,1,seq] × [batch,seq,768]; a size beats a name (seq must be 768 or 1).
    assert_eq!(ty(&m, mask), "f32[batch,batch,seq,768]");
    assert_eq!(ty(&m, w), "f32[batch,seq,768]");
    assert!(r.skipped.is_empty() && r.conflicts.is_empty());
}

#[test]
fn broadcast_mismatch_is_skipped_not_fatal() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "2,3");
    let y = b.input("y", DataType::F32, "4");
    let z = b.op("Add", &[x, y], vec![]);
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, z), "none");
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].2.contains("broadcast"), "{:?}", r.skipped);
}

// ---- tensor ops and known values ----

#[test]
fn shape_gather_concat_reshape_chain_is_symbolic() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,seq,768");
    let s = b.op("Shape", &[x], vec![]);
    let i0 = b.ints(vec![], &[0]);
    let i1 = b.ints(vec![], &[1]);
    let g0 = b.op("Gather", &[s, i0], vec![Attribute::int("axis", 0)]);
    let g1 = b.op("Gather", &[s, i1], vec![Attribute::int("axis", 0)]);
    let ax = b.ints(vec![1], &[0]);
    let u0 = b.op("Unsqueeze", &[g0, ax], vec![]);
    let u1 = b.op("Unsqueeze", &[g1, ax], vec![]);
    let tail = b.ints(vec![2], &[12, 64]);
    let shape = b.op("Concat", &[u0, u1, tail], vec![Attribute::int("axis", 0)]);
    let r = b.op("Reshape", &[x, shape], vec![]);
    let t = b.op("Transpose", &[r], vec![Attribute::ints("perm", vec![0, 2, 1, 3])]);
    // Back: [0, 0, -1] after transposing again.
    let t2 = b.op("Transpose", &[t], vec![Attribute::ints("perm", vec![0, 2, 1, 3])]);
    let back_shape = b.ints(vec![3], &[0, 0, -1]);
    let back = b.op("Reshape", &[t2, back_shape], vec![]);
    let sz = b.op("Size", &[x], vec![]);
    let (m, rep) = infer(b, 17);
    assert_eq!(ty(&m, s), "i64[3]");
    assert_eq!(ty(&m, g0), "i64[]");
    assert_eq!(ty(&m, shape), "i64[4]");
    assert_eq!(ty(&m, r), "f32[batch,seq,12,64]");
    assert_eq!(ty(&m, t), "f32[batch,12,seq,64]");
    assert_eq!(ty(&m, back), "f32[batch,seq,768]");
    assert_eq!(ty(&m, sz), "i64[]");
    assert!(rep.skipped.is_empty(), "{:?}", rep.skipped);
}

#[test]
fn reshape_minus_one_cancels_symbols_and_allowzero() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,seq,12,64");
    let s1 = b.ints(vec![2], &[-1, 768]);
    let flat = b.op("Reshape", &[x, s1], vec![]);
    let y = b.input("y", DataType::F32, "2,3,4");
    let s2 = b.ints(vec![3], &[4, 0, -1]);
    let az = b.op("Reshape", &[y, s2], vec![]);
    let e = b.input("e", DataType::F32, "0,3");
    let s3 = b.ints(vec![2], &[3, 0]);
    let keep0 = b.op("Reshape", &[e, s3], vec![Attribute::int("allowzero", 1)]);
    let bad = b.ints(vec![2], &[5, -1]);
    let broken = b.op("Reshape", &[y, bad], vec![]);
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, flat), "f32[?,768]");
    assert_eq!(ty(&m, az), "f32[4,3,2]");
    assert_eq!(ty(&m, keep0), "f32[3,0]");
    assert_eq!(ty(&m, broken), "none");
    assert_eq!(r.skipped.len(), 1);
}

#[test]
fn slice_split_squeeze_follow_the_opset() {
    // Opset 11: axes are attributes; opset 13: inputs.
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "1,seq,6");
    let sq = b.op("Squeeze", &[x], vec![Attribute::ints("axes", vec![0])]);
    let parts = b.op_n(
        NodeSpec::new("Split").inputs([x]).attr(Attribute::int("axis", 2)).attr(Attribute::ints("split", vec![2, 4])),
        2,
    );
    let st = b.ints(vec![1], &[1]);
    let en = b.ints(vec![1], &[i64::MAX]);
    let ax = b.ints(vec![1], &[2]);
    let sl = b.op("Slice", &[x, st, en, ax], vec![]);
    let (m, _) = infer(b, 11);
    assert_eq!(ty(&m, sq), "f32[seq,6]");
    assert_eq!(ty(&m, parts[0]), "f32[1,seq,2]");
    assert_eq!(ty(&m, parts[1]), "f32[1,seq,4]");
    assert_eq!(ty(&m, sl), "f32[1,seq,5]");

    let mut b = B::new();
    let x = b.input("x", DataType::F32, "1,seq,6");
    let axes = b.ints(vec![1], &[0]);
    let sq = b.op("Squeeze", &[x, axes], vec![]);
    let split = b.ints(vec![2], &[1, 5]);
    let parts = b.op_n(NodeSpec::new("Split").inputs([x, split]).attr(Attribute::int("axis", -1)), 2);
    let even = b.op_n(
        NodeSpec::new("Split").inputs([x]).attr(Attribute::int("axis", 2)).attr(Attribute::int("num_outputs", 4)),
        4,
    );
    let (m, _) = infer(b, 18);
    assert_eq!(ty(&m, sq), "f32[seq,6]");
    assert_eq!(ty(&m, parts[1]), "f32[1,seq,5]");
    assert_eq!(ty(&m, even[0]), "f32[1,seq,2]");
    assert_eq!(ty(&m, even[3]), "f32[1,seq,0]");
}

#[test]
fn constant_folding_of_shape_arithmetic() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,seq,768");
    let s = b.op("Shape", &[x], vec![Attribute::int("start", -1)]);
    let heads = b.ints(vec![1], &[12]);
    let hd = b.op("Div", &[s, heads], vec![]);
    let two = b.ints(vec![1], &[2]);
    let c = b.op("ConstantOfShape", &[two], vec![]);
    let cs = b.op("Shape", &[c], vec![]);
    let cat = b.op("Concat", &[cs, hd], vec![Attribute::int("axis", 0)]);
    let y = b.op("ConstantOfShape", &[cat], vec![]);
    let st = b.ints(vec![], &[0]);
    let lim = b.ints(vec![], &[10]);
    let dl = b.ints(vec![], &[3]);
    let rg = b.op("Range", &[st, lim, dl], vec![]);
    let rs = b.op("Shape", &[rg], vec![]);
    let e = b.op("Expand", &[x, rs], vec![]);
    let (m, _) = infer(b, 17);
    assert_eq!(ty(&m, y), "f32[2,64]");
    assert_eq!(ty(&m, rg), "i64[4]");
    // Expand to [4] against [batch,seq,768]: 768 vs 4 cannot broadcast → skipped.
    assert_eq!(ty(&m, e), "none");
}

#[test]
fn gather_pad_tile_flatten_unsqueeze() {
    let mut b = B::new();
    let emb = b.input("emb", DataType::F32, "30522,768");
    let ids = b.input("ids", DataType::I64, "batch,seq");
    let g = b.op("Gather", &[emb, ids], vec![]);
    let x = b.input("x", DataType::F32, "n,3,32,32");
    let pads = b.ints(vec![8], &[0, 0, 1, 2, 0, 0, 1, 2]);
    let p = b.op("Pad", &[x, pads], vec![]);
    let reps = b.ints(vec![4], &[1, 2, 1, 1]);
    let t = b.op("Tile", &[x, reps], vec![]);
    let f = b.op("Flatten", &[x], vec![]);
    let f0 = b.op("Flatten", &[x], vec![Attribute::int("axis", 0)]);
    let ax = b.ints(vec![2], &[0, -1]);
    let u = b.op("Unsqueeze", &[ids, ax], vec![]);
    let (m, _) = infer(b, 17);
    assert_eq!(ty(&m, g), "f32[batch,seq,768]");
    assert_eq!(ty(&m, p), "f32[n,3,34,36]");
    assert_eq!(ty(&m, t), "f32[n,6,32,32]");
    assert_eq!(ty(&m, f), "f32[n,3072]");
    assert_eq!(ty(&m, f0), "f32[1,?]");
    assert_eq!(ty(&m, u), "i64[1,batch,seq,1]");
}

// ---- nn ----

#[test]
fn conv_pool_norm_shapes() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "n,3,224,224");
    let w = b.floats(vec![64, 3, 7, 7], &[0.0; 64 * 3 * 49]);
    let c =
        b.op("Conv", &[x, w], vec![Attribute::ints("strides", vec![2, 2]), Attribute::ints("pads", vec![3, 3, 3, 3])]);
    let mp = b.op(
        "MaxPool",
        &[c],
        vec![
            Attribute::ints("kernel_shape", vec![3, 3]),
            Attribute::ints("strides", vec![2, 2]),
            Attribute::int("ceil_mode", 1),
        ],
    );
    let same = b.op(
        "AveragePool",
        &[c],
        vec![
            Attribute::ints("kernel_shape", vec![3, 3]),
            Attribute::ints("strides", vec![2, 2]),
            Attribute::string("auto_pad", "SAME_UPPER"),
        ],
    );
    let gp = b.op("GlobalAveragePool", &[mp], vec![]);
    let wt = b.floats(vec![64, 32, 4, 4], &[0.0; 64 * 32 * 16]);
    let ct = b.op(
        "ConvTranspose",
        &[mp, wt],
        vec![Attribute::ints("strides", vec![2, 2]), Attribute::ints("pads", vec![1, 1, 1, 1])],
    );
    let h = b.input("h", DataType::F16, "batch,seq,768");
    let sc = b.input("sc", DataType::F16, "768");
    let ln = b.op_n(NodeSpec::new("LayerNormalization").inputs([h, sc]), 3);
    let dts = b.op("DepthToSpace", &[x], vec![Attribute::int("blocksize", 1)]);
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, c), "f32[n,64,112,112]");
    assert_eq!(ty(&m, mp), "f32[n,64,56,56]");
    assert_eq!(ty(&m, same), "f32[n,64,56,56]");
    assert_eq!(ty(&m, gp), "f32[n,64,1,1]");
    assert_eq!(ty(&m, ct), "f32[n,32,112,112]");
    assert_eq!(ty(&m, ln[0]), "f16[batch,seq,768]");
    assert_eq!(ty(&m, ln[1]), "f32[batch,seq,1]");
    assert_eq!(ty(&m, dts), "f32[n,3,224,224]");
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
}

#[test]
fn resize_reads_scales_or_sizes() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "n,3,20,30");
    let scales = b.floats(vec![4], &[1.0, 1.0, 2.0, 0.5]);
    let r1 = b.op_n(NodeSpec::new("Resize").inputs([x]).input_opt(None).input_opt(Some(scales)), 1)[0];
    let sizes = b.ints(vec![2], &[7, 9]);
    let r2 = b.op_n(
        NodeSpec::new("Resize")
            .inputs([x])
            .input_opt(None)
            .input_opt(None)
            .input_opt(Some(sizes))
            .attr(Attribute::ints("axes", vec![2, 3])),
        1,
    )[0];
    let (m, _) = infer(b, 19);
    assert_eq!(ty(&m, r1), "f32[n,3,40,15]");
    assert_eq!(ty(&m, r2), "f32[n,3,7,9]");
}

// ---- reduce ----

#[test]
fn reductions_attr_and_input_axes() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,seq,768");
    let r13 = b.op("ReduceMean", &[x], vec![Attribute::ints("axes", vec![-1])]);
    let r13n = b.op("ReduceMax", &[x], vec![Attribute::ints("axes", vec![1]), Attribute::int("keepdims", 0)]);
    let am = b.op("ArgMax", &[x], vec![Attribute::int("axis", 2), Attribute::int("keepdims", 0)]);
    let ax = b.ints(vec![1], &[1]);
    let rs = b.op("ReduceSum", &[x, ax], vec![]);
    let all = b.op("ReduceL2", &[x], vec![Attribute::int("keepdims", 0)]);
    let (m, _) = infer(b, 13);
    assert_eq!(ty(&m, r13), "f32[batch,seq,1]");
    assert_eq!(ty(&m, r13n), "f32[batch,768]");
    assert_eq!(ty(&m, am), "i64[batch,seq]");
    assert_eq!(ty(&m, rs), "f32[batch,1,768]");
    assert_eq!(ty(&m, all), "f32[]");

    // Opset 18: ReduceMean takes axes as an input; an unknown input keeps the rank.
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,1,768");
    let ax = b.input("ax", DataType::I64, "1");
    let r = b.op("ReduceMean", &[x, ax], vec![]);
    let (m, _) = infer(b, 18);
    assert_eq!(ty(&m, r), "f32[?,1,?]");
}

// ---- matmul ----

#[test]
fn matmul_gemm_einsum() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,seq,768");
    let w = b.input("w", DataType::F32, "768,3072");
    let mm = b.op("MatMul", &[x, w], vec![]);
    let v = b.input("v", DataType::F32, "768");
    let mv = b.op("MatMul", &[x, v], vec![]);
    let a = b.input("a", DataType::F32, "n,128");
    let bw = b.input("bw", DataType::F32, "10,128");
    let gm = b.op("Gemm", &[a, bw], vec![Attribute::int("transB", 1)]);
    let q = b.input("q", DataType::F32, "b,h,s,d");
    let k = b.input("k", DataType::F32, "b,h,t,d");
    let es = b.op("Einsum", &[q, k], vec![Attribute::string("equation", "bhsd,bhtd->bhst")]);
    let imp = b.op("Einsum", &[a, bw], vec![Attribute::string("equation", "ij,kj")]);
    let odd = b.input("odd", DataType::F32, "5,7");
    let bad = b.op("MatMul", &[x, odd], vec![]);
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, mm), "f32[batch,seq,3072]");
    assert_eq!(ty(&m, mv), "f32[batch,seq]");
    assert_eq!(ty(&m, gm), "f32[n,10]");
    assert_eq!(ty(&m, es), "f32[b,h,s,t]");
    assert_eq!(ty(&m, imp), "f32[n,10]");
    assert_eq!(ty(&m, bad), "none");
    assert_eq!(r.skipped.len(), 1);
}

// ---- control flow ----

fn branch(out_spec: &str) -> Graph {
    let mut g = Graph::new();
    let x = g.add_outer("x");
    let id = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs([format!("r{out_spec}")]));
    let o = g.node(id).output(0).unwrap();
    g.push_output(o);
    g
}

#[test]
fn if_joins_branches_and_reads_a_known_condition() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,4");
    let c = b.input("c", DataType::Bool, "");
    let mut spec = NodeSpec::new("If").inputs([c]);
    spec.attributes.push(Attribute::new("then_branch", AttrValue::Graph(Box::new(branch("a")))));
    spec.attributes.push(Attribute::new("else_branch", AttrValue::Graph(Box::new(branch("b")))));
    let y = b.op_n(spec, 1)[0];
    let _ = x;
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, y), "f32[batch,4]");
    // The branch bodies are annotated too.
    let g = m.graph.as_ref().unwrap();
    let (_, ifn) = g.nodes().next().unwrap();
    let then = ifn.subgraphs().next().unwrap();
    assert_eq!(then.value(then.outputs()[0]).ty.as_ref().unwrap().to_string(), "f32[batch,4]");
    assert!(r.skipped.is_empty());
}

/// A loop body: `acc_out = Concat(acc_in, x)` along axis 0, scan output `Relu(x)`.
fn loop_body() -> Graph {
    let mut g = Graph::new();
    let _i = g.add_input("i", None);
    let cond = g.add_input("cond_in", None);
    let acc = g.add_input("acc_in", None);
    let x = g.add_outer("x");
    let cid = g.add_node(NodeSpec::new("Identity").inputs([cond]).outputs(["cond_out"]));
    let aid = g.add_node(NodeSpec::new("Concat").inputs([acc, x]).outputs(["acc_out"]).attr(Attribute::int("axis", 0)));
    let sid = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["scan"]));
    for id in [cid, aid, sid] {
        let o = g.node(id).output(0).unwrap();
        g.push_output(o);
    }
    g
}

#[test]
fn loop_widens_carried_shapes_and_stacks_scan_outputs() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "2,3");
    let n = b.input("n", DataType::I64, "");
    let acc0 = b.input("acc", DataType::F32, "0,3");
    let mut spec = NodeSpec::new("Loop").inputs([n]).input_opt(None).input_opt(Some(acc0));
    spec.attributes.push(Attribute::new("body", AttrValue::Graph(Box::new(loop_body()))));
    let outs = b.op_n(spec, 2);
    let _ = x;
    let (m, _) = infer(b, 17);
    // The accumulator grows: its first dim is unknown, the rest stays.
    assert_eq!(ty(&m, outs[0]), "f32[?,3]");
    assert_eq!(ty(&m, outs[1]), "f32[?,2,3]");
    let g = m.graph.as_ref().unwrap();
    let (_, ln) = g.nodes().next().unwrap();
    let body = ln.subgraphs().next().unwrap();
    // The body was annotated with the widened binding, not the first iteration's.
    assert_eq!(body.value(body.outputs()[1]).ty.as_ref().unwrap().to_string(), "f32[?,3]");

    // A for-loop with a known trip count stacks exactly that many scan outputs.
    let mut b = B::new();
    let _x = b.input("x", DataType::F32, "2,3");
    let n = b.ints(vec![], &[5]);
    let acc0 = b.input("acc", DataType::F32, "0,3");
    let mut spec = NodeSpec::new("Loop").inputs([n]).input_opt(None).input_opt(Some(acc0));
    spec.attributes.push(Attribute::new("body", AttrValue::Graph(Box::new(loop_body()))));
    let outs = b.op_n(spec, 2);
    let (m, _) = infer(b, 17);
    assert_eq!(ty(&m, outs[1]), "f32[5,2,3]");
}

#[test]
fn known_values_flow_through_if_and_split() {
    // then: Split([2,3,5,6]) → parts; the If picks the branch from a known condition and its
    // known outputs feed a Reshape.
    let mut then_g = Graph::new();
    let size = then_g.add_outer("size");
    let id = then_g.add_node(
        NodeSpec::new("Split")
            .inputs([size])
            .outputs(["n", "rest"])
            .attr(Attribute::int("axis", 0))
            .attr(Attribute::int("num_outputs", 2)),
    );
    let rest = then_g.node(id).output(1).unwrap();
    then_g.push_output(rest);
    let mut else_g = Graph::new();
    let c = else_g.add_initializer("other", Arc::new(Tensor::from_slice(vec![2], &[9i64, 9]).unwrap()));
    else_g.push_output(c);
    let mut b = B::new();
    let size = b.g.add_initializer("size", Arc::new(Tensor::from_slice(vec![4], &[2i64, 3, 5, 6]).unwrap()));
    let x = b.input("x", DataType::F32, "2,3,5,6");
    let four = b.ints(vec![], &[4]);
    let n = b.op("Size", &[size], vec![]);
    let cond = b.op("Equal", &[n, four], vec![]);
    let mut spec = NodeSpec::new("If").inputs([cond]);
    spec.attributes.push(Attribute::new("then_branch", AttrValue::Graph(Box::new(then_g))));
    spec.attributes.push(Attribute::new("else_branch", AttrValue::Graph(Box::new(else_g))));
    let hw = b.op_n(spec, 1)[0];
    let minus = b.ints(vec![1], &[-1]);
    let shape = b.op("Concat", &[minus, hw], vec![Attribute::int("axis", 0)]);
    let r = b.op("Reshape", &[x, shape], vec![]);
    let (m, rep) = infer(b, 18);
    assert_eq!(ty(&m, r), "f32[6,5,6]");
    assert!(rep.skipped.is_empty(), "{:?}", rep.skipped);
}

#[test]
fn scan_binds_slices_and_stacks() {
    let mut body = Graph::new();
    let s = body.add_input("s_in", None);
    let xi = body.add_input("x_i", None);
    let a = body.add_node(NodeSpec::new("Add").inputs([s, xi]).outputs(["s_out"]));
    let so = body.node(a).output(0).unwrap();
    let c = body.add_node(NodeSpec::new("Identity").inputs([so]).outputs(["y"]));
    let yo = body.node(c).output(0).unwrap();
    body.push_output(so);
    body.push_output(yo);
    let mut b = B::new();
    let init = b.input("init", DataType::F32, "4");
    let xs = b.input("xs", DataType::F32, "steps,4");
    let mut spec = NodeSpec::new("Scan").inputs([init, xs]).attr(Attribute::int("num_scan_inputs", 1));
    spec.attributes.push(Attribute::new("body", AttrValue::Graph(Box::new(body))));
    let outs = b.op_n(spec, 2);
    let (m, _) = infer(b, 17);
    assert_eq!(ty(&m, outs[0]), "f32[4]");
    assert_eq!(ty(&m, outs[1]), "f32[steps,4]");
}

// ---- contrib and quantization ----

#[test]
fn gather_block_quantized_unpacks_the_last_axis_of_uint8_tables() {
    let mut b = B::new();
    let table = b.input("table", DataType::U8, "30522,192");
    let ids = b.input("ids", DataType::I64, "batch,seq");
    let scales = b.input("scales", DataType::F32, "30522,12");
    let gbq = |b: &mut B, data, bits: Option<i64>| {
        let mut spec = NodeSpec::new("GatherBlockQuantized")
            .domain("com.microsoft")
            .inputs([data, ids, scales])
            .attr(Attribute::int("gather_axis", 0))
            .attr(Attribute::int("quantize_axis", 1))
            .attr(Attribute::int("block_size", 32));
        if let Some(bits) = bits {
            spec = spec.attr(Attribute::int("bits", bits));
        }
        b.op_n(spec, 1)[0]
    };
    let four = gbq(&mut b, table, None);
    let eight = gbq(&mut b, table, Some(8));
    let signed = b.input("signed", DataType::I4, "30522,384");
    let typed = gbq(&mut b, signed, None);
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, four), "f32[batch,seq,384]");
    assert_eq!(ty(&m, eight), "f32[batch,seq,192]");
    assert_eq!(ty(&m, typed), "f32[batch,seq,384]");
    assert!(r.skipped.is_empty() && r.unknown_ops.is_empty(), "{r:?}");
}

#[test]
fn contrib_ops() {
    let mut b = B::new();
    let x = b.input("x", DataType::F16, "batch,seq,768");
    let skip = b.input("skip", DataType::F16, "batch,seq,768");
    let g = b.input("g", DataType::F16, "768");
    let sln = b.op_n(NodeSpec::new("SkipLayerNormalization").domain("com.microsoft").inputs([x, skip, g]), 4);
    let qw = b.input("qw", DataType::U8, "3072,24,32");
    let sc = b.input("sc", DataType::F16, "73728");
    let nb = b.op_n(
        NodeSpec::new("MatMulNBits")
            .domain("com.microsoft")
            .inputs([x, qw, sc])
            .attr(Attribute::int("K", 768))
            .attr(Attribute::int("N", 3072))
            .attr(Attribute::int("bits", 4))
            .attr(Attribute::int("block_size", 32)),
        1,
    )[0];
    let wq = b.input("wq", DataType::F16, "768,2304");
    let att = b.op_n(
        NodeSpec::new("Attention").domain("com.microsoft").inputs([x, wq]).attr(Attribute::int("num_heads", 12)),
        2,
    );
    let gelu = b.op_n(NodeSpec::new("FastGelu").domain("com.microsoft").inputs([nb]), 1)[0];
    let s = b.input("s", DataType::F32, "");
    let zp = b.input("zp", DataType::I8, "");
    let xf = b.input("xf", DataType::F32, "n,3,8,8");
    let q = b.op("QuantizeLinear", &[xf, s, zp], vec![]);
    let dq = b.op("DequantizeLinear", &[q, s, zp], vec![]);
    let dyn_q = b.op_n(NodeSpec::new("DynamicQuantizeLinear").inputs([xf]), 3);
    let (m, r) = infer(b, 21);
    assert_eq!(ty(&m, sln[0]), "f16[batch,seq,768]");
    assert_eq!(ty(&m, sln[3]), "f16[batch,seq,768]");
    assert_eq!(ty(&m, nb), "f16[batch,seq,3072]");
    assert_eq!(ty(&m, att[0]), "f16[batch,seq,768]");
    assert_eq!(ty(&m, att[1]), "f16[2,batch,12,seq,64]");
    assert_eq!(ty(&m, gelu), "f16[batch,seq,3072]");
    assert_eq!(ty(&m, q), "i8[n,3,8,8]");
    assert_eq!(ty(&m, dq), "f32[n,3,8,8]");
    assert_eq!(ty(&m, dyn_q[0]), "u8[n,3,8,8]");
    assert_eq!(ty(&m, dyn_q[1]), "f32[]");
    assert!(r.skipped.is_empty() && r.unknown_ops.is_empty(), "{r:?}");
}

// ---- the driver and the pass ----

#[test]
fn declared_types_are_never_weakened_and_conflicts_are_reported() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "batch,8");
    let r1 = b.op("Relu", &[x], vec![]);
    let r2 = b.op("Relu", &[x], vec![]);
    let r3 = b.op("Relu", &[x], vec![]);
    // r1 declares more than inference knows (a concrete batch): kept.
    b.g.value_mut(r1).ty = tensor(DataType::F32, "4,8");
    // r2 declares a conflicting inner dim: kept and reported.
    b.g.value_mut(r2).ty = tensor(DataType::F32, "batch,9");
    // r3 declares less: refined.
    b.g.value_mut(r3).ty = tensor(DataType::F32, "?,?");
    let (m, r) = infer(b, 17);
    assert_eq!(ty(&m, r1), "f32[4,8]");
    assert_eq!(ty(&m, r2), "f32[batch,9]");
    assert_eq!(ty(&m, r3), "f32[batch,8]");
    assert_eq!(r.conflicts.len(), 1);
    assert!(r.conflicts[0].inferred.contains("f32[batch,8]"), "{:?}", r.conflicts);
}

#[test]
fn unknown_ops_stay_as_declared_and_are_summarized() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "2");
    let u1 = b.op_n(NodeSpec::new("Mystery").domain("example.com").inputs([x]), 1)[0];
    let u2 = b.op_n(NodeSpec::new("Mystery").domain("example.com").inputs([u1]), 1)[0];
    b.g.value_mut(u2).ty = tensor(DataType::F32, "7");
    let after = b.op("Relu", &[u2], vec![]);
    let mut m = b.model(17);
    let report = PassManager::new().with(InferShapes).run(&mut m).unwrap();
    assert_eq!(ty(&m, u1), "none");
    assert_eq!(ty(&m, u2), "f32[7]");
    assert_eq!(ty(&m, after), "f32[7]");
    let skipped: Vec<_> = report.passes[0].entries.iter().filter(|e| e.kind == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].detail.contains("2 node(s)"));
    // First run changed the model, the second found nothing new: a fixed point in 2 runs.
    assert_eq!(report.iterations, 2);
    assert!(report.passes[0].changed && !report.passes[1].changed);
}

#[test]
fn hostile_attributes_do_not_panic() {
    let mut b = B::new();
    let x = b.input("x", DataType::F32, "2,3");
    let _ = b.op("Transpose", &[x], vec![Attribute::ints("perm", vec![5, -9])]);
    let _ = b.op("Concat", &[x, x], vec![Attribute::int("axis", 99)]);
    let _ = b.op("Conv", &[x, x], vec![Attribute::ints("strides", vec![0])]);
    let _ = b.op("Gather", &[x, x], vec![Attribute::int("axis", i64::MIN)]);
    let _ = b.op("Flatten", &[x], vec![Attribute::int("axis", i64::MAX)]);
    let st = b.ints(vec![1], &[i64::MIN]);
    let en = b.ints(vec![1], &[i64::MAX]);
    let stp = b.ints(vec![1], &[i64::MIN]);
    let ax = b.ints(vec![1], &[0]);
    let _ = b.op("Slice", &[x, st, en, ax, stp], vec![]);
    let huge = b.ints(vec![2], &[i64::MAX, i64::MAX]);
    let _ = b.op("Reshape", &[x, huge], vec![]);
    let _ = b.op("ConstantOfShape", &[huge], vec![]);
    let _ = b.op("Tile", &[x, huge], vec![]);
    let lim = b.ints(vec![], &[i64::MAX]);
    let one = b.ints(vec![], &[1]);
    let z = b.ints(vec![], &[i64::MIN]);
    let _ = b.op("Range", &[z, lim, one], vec![]);
    let _ = b.op("Split", &[x], vec![]);
    let _ = b.op("Einsum", &[x], vec![Attribute::string("equation", "...i...,->")]);
    let _ = b.op("DepthToSpace", &[x], vec![Attribute::int("blocksize", 0)]);
    let (_, r) = infer(b, 17);
    assert!(!r.skipped.is_empty());
}

#[test]
fn table_size() {
    let n: usize = super::ops::table().values().map(|d| d.len()).sum();
    eprintln!("op table: {n} entries");
    assert!(n > 200);
}
