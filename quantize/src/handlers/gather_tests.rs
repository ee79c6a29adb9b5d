//! Embedding tables in ONNX Runtime: the rewritten model gathers the same rows within half a
//! quantization step; a table something else reads, or an excluded Gather, stays float.

use kiln_compiler::DataType;
use kiln_compiler::ir::{Graph, Model};
use kiln_compiler::runtime::Value;
use kiln_passes::testing::{B, Rng, require_ort, run};

use super::quantize_embeddings;
use crate::plan::Int8Config;

const VOCAB: usize = 512;
const DIM: usize = 32;

/// ids i64[2,5] → Gather(table[512,32]) → Add(x) → y; `tied`: the table also feeds a MatMul.
fn embedding(tied: bool) -> Model {
    let mut b = B::new(3);
    let ids = b.input_typed("ids", DataType::I64, &[2, 5]);
    let x = b.input("x", &[2, 5, DIM]);
    let table = b.weight("table", &[VOCAB, DIM], -0.6, 0.4);
    let rows = b.op("Gather", &[table, ids], vec![]);
    let y = b.op("Add", &[rows, x], vec![]);
    b.output(y);
    if tied {
        let logits = b.op("MatMul", &[x, table], vec![]);
        b.output(logits);
    }
    b.model(13)
}

fn feed(seed: u64) -> Vec<(String, Value)> {
    let mut rng = Rng::new(seed);
    vec![
        ("ids".to_string(), Value::Tensor(rng.ints(&[2, 5], 0, VOCAB as i64))),
        ("x".to_string(), Value::Tensor(rng.tensor(&[2, 5, DIM], -1.0, 1.0))),
    ]
}

fn f32_table(g: &Graph) -> bool {
    g.initializers()
        .iter()
        .any(|&v| g.value(v).initializer().is_some_and(|t| t.dtype() == DataType::F32 && t.dims() == [VOCAB, DIM]))
}

#[test]
fn embedding_table_stored_int8_and_dequantized_after_the_gather() {
    require_ort().unwrap();
    let m = embedding(false);
    let mut q = m.clone();
    let done = quantize_embeddings(&mut q, &Int8Config::ort_cpu()).unwrap();
    kiln_compiler::verify::check_model(&q).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let g = q.graph.as_ref().unwrap();
    let (_, gather) = g.nodes().find(|(_, n)| n.op_type == "Gather").unwrap();
    let table = g.value(gather.input(0).unwrap()).initializer().unwrap();
    assert_eq!((table.dtype(), table.dims()), (DataType::I8, &[VOCAB, DIM][..]));
    let rows = gather.output(0).unwrap();
    let cast = g.node(g.value(rows).uses()[0].node);
    assert_eq!(cast.op_type, "Cast");
    let mul = g.node(g.value(cast.output(0).unwrap()).uses()[0].node);
    assert_eq!(mul.op_type, "Mul");
    let scale_rows = g.value(mul.input(1).unwrap()).producer().map(|p| g.node(p)).unwrap();
    assert_eq!(scale_rows.op_type, "Gather", "per-row scales are gathered with the rows");
    assert!(!f32_table(g), "the float table is gone");
    // Per row, symmetric: a row's step is its max|w| / 127 (at most 0.6 / 127); round to
    // nearest is within half a step.
    let step = 0.6 / 127.0;
    let mut worst = 0.0f64;
    for seed in 0..4 {
        let (want, got) = (run(&m, &feed(seed)).unwrap(), run(&q, &feed(seed)).unwrap());
        let w = want[0].1.as_tensor().unwrap().to_f64_vec().unwrap();
        let o = got[0].1.as_tensor().unwrap().to_f64_vec().unwrap();
        worst = w.iter().zip(&o).map(|(a, b)| (a - b).abs()).fold(worst, f64::max);
    }
    assert!(worst <= step / 2.0 + 1e-6, "error {worst} above half a step {step}");
    assert!(worst > 0.0, "nothing was quantized");
}

#[test]
fn shared_or_excluded_table_stays_float() {
    let mut tied = embedding(true);
    assert!(quantize_embeddings(&mut tied, &Int8Config::ort_cpu()).unwrap().is_empty());
    assert!(f32_table(tied.graph.as_ref().unwrap()), "a table the MatMul reads stays float");
    let mut excluded = embedding(false);
    let config = Int8Config { exclude: vec!["Gather".into()], ..Int8Config::ort_cpu() };
    assert!(quantize_embeddings(&mut excluded, &config).unwrap().is_empty());
    assert!(f32_table(excluded.graph.as_ref().unwrap()));
    assert_eq!(excluded.graph.as_ref().unwrap().nodes().filter(|(_, n)| n.op_type == "DequantizeLinear").count(), 0);
}
