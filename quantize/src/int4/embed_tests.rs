//! Golden test of `GatherBlockQuantized` against ONNX Runtime: the table Kiln writes is decoded
//! here from the contrib op's specification (`uint8` data `[V, D/2]`, two 4-bit codes a byte,
//! low nibble first; f32 scales `[V, ⌈D/block⌉]`; packed 4-bit zero points `[V, ⌈blocks/2⌉]`,
//! or 8 when absent), gathered in Rust, and compared with what ORT computes from the model.

use std::sync::Arc;

use kiln_compiler::execute::load_session;
use kiln_compiler::ir::{AttrLookup, Graph, Model, NodeSpec, OpsetImport, TensorType, Type};
use kiln_compiler::runtime::{OptLevel, OrtExecutor, SessionConfig, Value};
use kiln_compiler::{DataType, Tensor};

use super::tests::values;
use super::*;

/// Rows and width of the large table: 80 wide, so blocks of 32 leave a short third block.
const V: usize = 1100;
const D: usize = 80;

/// `big = Gather(table[V, D], ids)` and `small = Gather(positions[16, D], pos)`.
fn embedding_model() -> Model {
    let mut g = Graph::new();
    let ids = g.add_input("ids", Some(Type::tensor(TensorType::with_dims(DataType::I64, &[2, 3]))));
    let pos = g.add_input("pos", Some(Type::tensor(TensorType::with_dims(DataType::I64, &[2, 3]))));
    let table = g.add_initializer("table", Arc::new(Tensor::from_slice(vec![V, D], &values(1, V * D)).unwrap()));
    let small = g.add_initializer("positions", Arc::new(Tensor::from_slice(vec![16, D], &values(2, 16 * D)).unwrap()));
    for (name, data, ids) in [("big", table, ids), ("small", small, pos)] {
        let n = g.add_node(NodeSpec::new("Gather").name(name).inputs([data, ids]).outputs([name]));
        let y = g.node(n).output(0).unwrap();
        g.push_output(y);
    }
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(17) }],
        graph: Some(g),
        ..Model::default()
    }
}

const IDS: [i64; 6] = [5, 0, 1099, -1, 17, 5];

fn run_ort(model: &Model) -> Vec<Vec<f32>> {
    let config = SessionConfig { optimization: OptLevel::Disabled, intra_threads: Some(1), ..SessionConfig::default() };
    let mut s = load_session(&OrtExecutor::new(), model, None, &config).unwrap_or_else(|e| panic!("{e}"));
    let feed = vec![
        ("ids".to_string(), Value::Tensor(Tensor::from_slice(vec![2, 3], &IDS).unwrap())),
        ("pos".to_string(), Value::Tensor(Tensor::from_slice(vec![2, 3], &[0i64, 1, 2, 3, 4, 15]).unwrap())),
    ];
    let out = s.run(&feed, None).unwrap_or_else(|e| panic!("{e}"));
    out.iter().map(|(_, v)| v.as_tensor().unwrap().to_vec::<f32>().unwrap()).collect()
}

fn init(g: &Graph, v: Option<kiln_compiler::ir::ValueId>) -> Option<Arc<Tensor>> {
    v.and_then(|v| g.value(v).initializer().cloned())
}

fn has_initializer(g: &Graph, name: &str) -> bool {
    g.initializers().iter().any(|&v| g.value(v).name == name)
}

/// The table a `GatherBlockQuantized` node stands for, `[V][D]`, decoded from its constants.
fn decode(model: &Model) -> Vec<f64> {
    let g = model.graph.as_ref().unwrap();
    let (_, node) = g.nodes().find(|(_, n)| n.op_type == "GatherBlockQuantized").expect("a GatherBlockQuantized");
    assert_eq!(node.domain.as_deref(), Some("com.microsoft"));
    assert_eq!(node.attr_int("gather_axis"), Some(0));
    assert_eq!(node.attr_int("quantize_axis"), Some(1));
    assert_eq!(node.attr_int("bits"), Some(4));
    let block = node.attr_int("block_size").unwrap() as usize;
    let kb = D.div_ceil(block);
    let data = init(g, node.input(0)).unwrap();
    assert_eq!((data.dtype(), data.dims()), (DataType::U8, &[V, D / 2][..]));
    let data = data.bytes().unwrap();
    let scales = init(g, node.input(2)).unwrap();
    assert_eq!(scales.dims(), [V, kb]);
    let scales = scales.to_vec::<f32>().unwrap();
    let zp = init(g, node.input(3)).map(|z| {
        assert_eq!(z.dims(), [V, kb.div_ceil(2)]);
        z.bytes().unwrap().to_vec()
    });
    let nibble =
        |bytes: &[u8], i: usize| f64::from(if i.is_multiple_of(2) { bytes[i / 2] & 0x0f } else { bytes[i / 2] >> 4 });
    let mut w = vec![0.0f64; V * D];
    for r in 0..V {
        for c in 0..D {
            let b = c / block;
            let z = zp.as_ref().map_or(8.0, |z| nibble(&z[r * kb.div_ceil(2)..], b));
            w[r * D + c] = (nibble(&data[r * D / 2..], c) - z) * f64::from(scales[r * kb + b]);
        }
    }
    w
}

/// The largest difference between ORT's output and the decoded table gathered at [`IDS`].
fn against_reference(got: &[f32], w: &[f64]) -> f64 {
    let mut worst = 0.0f64;
    for (i, &id) in IDS.iter().enumerate() {
        let row = if id < 0 { (id + V as i64) as usize } else { id as usize };
        for c in 0..D {
            worst = worst.max((f64::from(got[i * D + c]) - w[row * D + c]).abs());
        }
    }
    worst
}

#[test]
fn gather_block_quantized_layout_matches_onnx_runtime() {
    let float = run_ort(&embedding_model());
    for symmetric in [true, false] {
        let mut model = embedding_model();
        let config = Int4Config { block: 32, symmetric, embeddings: true, ..Int4Config::default() };
        let report = quantize_model(&mut model, &config, None).unwrap();
        kiln_compiler::verify::check_model(&model).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.embeddings.len(), 1, "{report:?}");
        let e = &report.embeddings[0];
        assert_eq!((e.node.as_str(), e.rows, e.dim, e.bytes_before), ("big", V, D, (V * D * 4) as u64));
        assert!(e.bytes_after * 5 < e.bytes_before, "{e:?}");
        let g = model.graph.as_ref().unwrap();
        // The small table stays a float Gather; the big one's float table is gone.
        assert_eq!(g.nodes().filter(|(_, n)| n.op_type == "Gather").count(), 1);
        assert!(!has_initializer(g, "table"));
        let big = g.find_value("big").unwrap();
        assert_eq!(g.tensor_type(big).unwrap().to_string(), "f32[2,3,80]");
        // The decoded table is what the quantizer meant.
        let q = block::rtn(
            &RowMajor { n: V, k: D, values: values(1, V * D) },
            QuantSpec { bits: 4, block: 32, symmetric, negative_scales: true },
            None,
        );
        let w = decode(&model);
        for (i, (a, b)) in w.iter().zip(&q.dequantize().values).enumerate() {
            assert!((a - f64::from(*b)).abs() <= 1e-6 * f64::from(b.abs()), "element {i}: {a} vs {b}");
        }
        let got = run_ort(&model);
        let err = against_reference(&got[0], &w);
        assert!(err <= 1e-6, "symmetric {symmetric}: ORT differs from the decoded table by {err}");
        assert_eq!(got[1], float[1], "the small table is untouched");
        // 4 bits move the embeddings, but not by much.
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
        let cos = dot(&got[0], &float[0]) / (dot(&got[0], &got[0]) * dot(&float[0], &float[0])).sqrt();
        assert!(cos > 0.98, "{cos}");
        // Negative twin: nibbles swapped in the codes.
        let mut bad = model.clone();
        let g = bad.graph.as_mut().unwrap();
        let v = *g.initializers().iter().find(|&&v| g.value(v).name.ends_with("_q4")).unwrap();
        let t = g.value(v).initializer().unwrap().clone();
        let swapped: Vec<u8> = t.bytes().unwrap().iter().map(|b| b.rotate_left(4)).collect();
        g.set_initializer(v, Arc::new(Tensor::new(t.dtype(), t.dims().to_vec(), swapped.into()).unwrap()));
        let err = against_reference(&run_ort(&bad)[0], &w);
        assert!(err > 0.05, "swapped nibbles went unnoticed ({err})");
    }
}

#[test]
fn embeddings_stay_in_float_unless_asked_or_excluded() {
    for config in [
        Int4Config::default(),
        Int4Config { embeddings: true, exclude: vec!["big".into()], ..Int4Config::default() },
        Int4Config { embeddings: true, format: Format::Dequantize, ..Int4Config::default() },
    ] {
        let mut model = embedding_model();
        let report = quantize_model(&mut model, &config, None).unwrap();
        assert!(report.embeddings.is_empty(), "{report:?}");
        let g = model.graph.as_ref().unwrap();
        assert_eq!(g.nodes().filter(|(_, n)| n.op_type == "Gather").count(), 2);
        assert!(has_initializer(g, "table"));
    }
}
