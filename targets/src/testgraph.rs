//! Tiny QDQ graphs for the linter's and legalizer's tests, built with the IR builder, typed by
//! shape inference, and runnable in ONNX Runtime.

use std::sync::Arc;

use kiln_compiler::ir::{Attribute, Graph, Model, NodeSpec, OpsetImport, ValueId};
use kiln_compiler::{DataType, Tensor};
use kiln_passes::testing::{Rng, abs_tol, compare_outputs, require_ort, run, seeded_inputs, tensor_ty};

pub struct QdqBuilder {
    pub g: Graph,
    pub x: ValueId,
    rng: Rng,
    n: usize,
}

impl QdqBuilder {
    /// A graph with one f32 input `x` of `dims`.
    pub fn new(dims: &[usize]) -> QdqBuilder {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(tensor_ty(DataType::F32, dims)));
        QdqBuilder { g, x, rng: Rng::new(7), n: 0 }
    }

    fn name(&mut self, base: &str) -> String {
        self.n += 1;
        format!("{base}{}", self.n)
    }

    fn konst(&mut self, base: &str, t: Tensor) -> ValueId {
        let name = self.name(base);
        self.g.add_initializer(name, Arc::new(t))
    }

    /// A scale (scalar or per-axis) initializer.
    pub fn scale(&mut self, values: &[f32]) -> ValueId {
        let t = if values.len() == 1 {
            Tensor::scalar(values[0])
        } else {
            Tensor::from_slice(vec![values.len()], values).unwrap()
        };
        self.konst("scale", t)
    }

    /// A zero-point initializer of `dtype` (i8 or u8), scalar or per-axis.
    pub fn zero_point(&mut self, dtype: DataType, values: &[i64]) -> ValueId {
        let dims = if values.len() == 1 { vec![] } else { vec![values.len()] };
        let t = match dtype {
            DataType::U8 => {
                let v: Vec<u8> = values.iter().map(|&z| z as u8).collect();
                Tensor::from_slice(dims, &v).unwrap()
            }
            _ => {
                let v: Vec<i8> = values.iter().map(|&z| z as i8).collect();
                Tensor::from_slice(dims, &v).unwrap()
            }
        };
        self.konst("zp", t)
    }

    /// Adds a node named `name` with one output named after it.
    pub fn node(&mut self, op: &str, inputs: &[ValueId], name: &str, attrs: Vec<Attribute>) -> ValueId {
        let mut spec = NodeSpec::new(op).name(name).inputs(inputs.iter().copied()).outputs([format!("{name}_out")]);
        spec.attributes = attrs;
        let id = self.g.add_node(spec);
        self.g.node(id).output(0).unwrap()
    }

    pub fn op(&mut self, op: &str, inputs: &[ValueId], name: &str) -> ValueId {
        self.node(op, inputs, name, Vec::new())
    }

    /// `v → QuantizeLinear → DequantizeLinear` with one scale and zero point of `dtype`.
    pub fn qdq(&mut self, v: ValueId, scale: f32, zp: i64, dtype: DataType) -> ValueId {
        let s = self.scale(&[scale]);
        let z = self.zero_point(dtype, &[zp]);
        let qn = self.name("q");
        let q = self.op("QuantizeLinear", &[v, s, z], &qn);
        let dn = self.name("dq");
        self.op("DequantizeLinear", &[q, s, z], &dn)
    }

    /// The input `x` through an int8 Q/DQ pair.
    pub fn quantize_input(&mut self, scale: f32, zp: i64) -> ValueId {
        let x = self.x;
        self.qdq(x, scale, zp, DataType::I8)
    }

    /// An int8 weight of `dims` (seeded values in [-100, 100]) with a DequantizeLinear:
    /// per channel on `axis` when given, per tensor otherwise; zero point `zp` everywhere.
    pub fn weight_dq(&mut self, dims: &[usize], seed: u64, axis: Option<i64>, zp: i64) -> ValueId {
        self.weight_dq_typed(dims, seed, axis, zp, DataType::I8)
    }

    pub fn weight_dq_typed(
        &mut self,
        dims: &[usize],
        seed: u64,
        axis: Option<i64>,
        zp: i64,
        dtype: DataType,
    ) -> ValueId {
        let mut rng = Rng::new(seed);
        let n: usize = dims.iter().product();
        let w = match dtype {
            DataType::U8 => {
                let v: Vec<u8> = (0..n).map(|_| rng.int(28, 228) as u8).collect();
                Tensor::from_slice(dims.to_vec(), &v).unwrap()
            }
            _ => {
                let v: Vec<i8> = (0..n).map(|_| rng.int(-100, 100) as i8).collect();
                Tensor::from_slice(dims.to_vec(), &v).unwrap()
            }
        };
        let w = self.konst("w", w);
        let count = axis.map_or(1, |a| dims[a.rem_euclid(dims.len() as i64) as usize]);
        let scales: Vec<f32> = (0..count).map(|i| 0.01 + 0.001 * i as f32).collect();
        let s = self.scale(&scales);
        let z = self.zero_point(dtype, &vec![zp; count]);
        let attrs = axis.map(|a| vec![Attribute::int("axis", a)]).unwrap_or_default();
        let dn = self.name("wdq");
        self.node("DequantizeLinear", &[w, s, z], &dn, attrs)
    }

    /// A blocked int4 weight [K, N] dequantized along `axis` in blocks of `block`.
    pub fn int4_weight(&mut self, k: usize, n: usize, axis: i64, block: usize) -> ValueId {
        let dims = [k, n];
        // Two int4 values per byte; small values, zero point 0 (absent).
        let bytes: Vec<u8> = (0..(k * n).div_ceil(2)).map(|i| (i % 7) as u8 | (((i % 5) as u8) << 4)).collect();
        let w = Tensor::new(DataType::I4, dims.to_vec(), bytes.into()).unwrap();
        let w = self.konst("w4_", w);
        let a = axis.rem_euclid(2) as usize;
        let mut sdims = dims.to_vec();
        sdims[a] = dims[a].div_ceil(block);
        let count: usize = sdims.iter().product();
        let scales: Vec<f32> = (0..count).map(|i| 0.02 + 0.001 * i as f32).collect();
        let s = self.konst("s4_", Tensor::from_slice(sdims, &scales).unwrap());
        let dn = self.name("w4dq");
        self.node(
            "DequantizeLinear",
            &[w, s],
            &dn,
            vec![Attribute::int("axis", axis), Attribute::int("block_size", block as i64)],
        )
    }

    /// A float initializer.
    pub fn float_weight(&mut self, dims: &[usize]) -> ValueId {
        let t = self.rng.tensor(dims, -0.5, 0.5);
        self.konst("fw", t)
    }

    /// The model (opset 21, typed by shape inference) with `outputs` as graph outputs.
    pub fn finish(mut self, outputs: &[ValueId]) -> Model {
        for &o in outputs {
            self.g.push_output(o);
        }
        self.g.name = Some("main".into());
        let mut model = Model {
            ir_version: Some(10),
            opset_import: vec![OpsetImport { domain: Some(String::new()), version: Some(21) }],
            graph: Some(self.g),
            ..Model::default()
        };
        kiln_compiler::shape::infer_model(&mut model);
        model
    }
}

/// Asserts ONNX Runtime (CPU) loads and runs the model on seeded inputs: a passing twin must
/// be a real, runnable graph.
pub fn assert_runs(model: &Model) {
    require_ort().unwrap();
    let inputs = seeded_inputs(model, 1, 1).unwrap();
    run(model, &inputs).unwrap_or_else(|e| panic!("ORT CPU rejected the graph: {e}"));
}

/// Runs both models on the same seeded inputs; their outputs agree within `tol`.
pub fn run_both(before: &Model, after: &Model, tol: f64) {
    require_ort().unwrap();
    let inputs = seeded_inputs(before, 3, 1).unwrap();
    let want = run(before, &inputs).unwrap();
    let got = run(after, &inputs).unwrap();
    compare_outputs(&got, &want, abs_tol(tol)).unwrap();
}
