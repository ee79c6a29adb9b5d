//! The tract executor: pure Rust, a cross-check for ONNX Runtime in tests and a fallback where
//! no ONNX Runtime library exists.
//!
//! tract panics on some inputs (com.microsoft ops, odd shapes), so every call into it runs under
//! `catch_unwind` and a panic becomes [`RuntimeError::Panic`]. The model is parsed once; a plan
//! is optimized for each distinct set of input types/shapes and requested outputs, and cached,
//! so dynamic dimensions work without declaring them up front.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::Bytes;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoTValue, OutletId, TValue, TVec,
    TypedModel, TypedRunnableModel,
};
use tract_onnx::tract_core::model::IntoRunnable;
use tract_onnx::tract_hir::infer::Factoid;

use super::{
    Executor, IoInfo, ModelSource, RuntimeError, Session, SessionConfig, Value, ValueType, check_inputs, panic_message,
    select_outputs,
};
use crate::dtype::DataType;
use crate::tensor::{Tensor, TensorData};

const NAME: &str = "tract";

/// Runs models with tract. Only tensors of common numeric types (f16, f32, f64, i8–i64, u8–u64,
/// bool) are supported; [`SessionConfig`] is accepted but has no effect on tract.
#[derive(Debug, Clone, Copy, Default)]
pub struct TractExecutor;

impl TractExecutor {
    pub fn new() -> TractExecutor {
        TractExecutor
    }
}

fn guarded<T>(during: &str, f: impl FnOnce() -> Result<T, RuntimeError>) -> Result<T, RuntimeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(RuntimeError::Panic {
            executor: NAME,
            during: during.to_string(),
            message: panic_message(payload.as_ref()),
        }),
    }
}

fn rejected(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::ModelRejected { executor: NAME, message: format!("{e:#}") }
}

fn run_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Run { executor: NAME, message: format!("{e:#}") }
}

impl Executor for TractExecutor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn load(&self, model: ModelSource<'_>, _config: &SessionConfig) -> Result<Box<dyn Session>, RuntimeError> {
        guarded("loading the model", || {
            let onnx = tract_onnx::onnx().with_ignore_value_info(true);
            let proto = onnx.proto_model_for_read(&mut &model.bytes[..]).map_err(rejected)?;
            let dir = match model.base_dir {
                Some(d) => Some(
                    d.to_str()
                        .ok_or_else(|| rejected(format!("external data folder {} is not valid UTF-8", d.display())))?,
                ),
                None => None,
            };
            let parsed = onnx.parse(&proto, dir).map_err(rejected)?;
            if !parsed.unresolved_inputs.is_empty() {
                return Err(rejected(format!("unresolved inputs: {:?}", parsed.unresolved_inputs)));
            }
            let model = parsed.model;
            let inputs = model
                .input_outlets()
                .map_err(rejected)?
                .iter()
                .map(|&o| {
                    Ok(IoInfo {
                        name: model.node(o.node).name.clone(),
                        ty: fact_type(model.outlet_fact(o).map_err(rejected)?),
                    })
                })
                .collect::<Result<Vec<_>, RuntimeError>>()?;
            let outputs = model
                .output_outlets()
                .map_err(rejected)?
                .iter()
                .map(|&o| {
                    let name = model.outlet_label(o).unwrap_or(&model.node(o.node).name).to_string();
                    Ok(IoInfo { name, ty: fact_type(model.outlet_fact(o).map_err(rejected)?) })
                })
                .collect::<Result<Vec<_>, RuntimeError>>()?;
            Ok(Box::new(TractSession { model, inputs, outputs, plans: HashMap::new() }) as Box<dyn Session>)
        })
    }
}

fn fact_type(fact: &InferenceFact) -> ValueType {
    let Some(dtype) = fact.datum_type.concretize().and_then(dtype_from_tract) else {
        return ValueType::Unknown;
    };
    let dims = fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok())).collect();
    // An open shape has an unknown rank: describe it by its element type only.
    if fact.shape.is_open() {
        return ValueType::Tensor { dtype, dims: Vec::new() };
    }
    ValueType::Tensor { dtype, dims }
}

fn dtype_from_tract(dt: DatumType) -> Option<DataType> {
    use DataType as D;
    Some(match dt {
        DatumType::Bool => D::Bool,
        DatumType::U8 => D::U8,
        DatumType::U16 => D::U16,
        DatumType::U32 => D::U32,
        DatumType::U64 => D::U64,
        DatumType::I8 => D::I8,
        DatumType::I16 => D::I16,
        DatumType::I32 => D::I32,
        DatumType::I64 => D::I64,
        DatumType::F16 => D::F16,
        DatumType::F32 => D::F32,
        DatumType::F64 => D::F64,
        DatumType::String => D::String,
        _ => return None,
    })
}

fn dtype_to_tract(d: DataType) -> Option<DatumType> {
    use DataType as D;
    Some(match d {
        D::Bool => DatumType::Bool,
        D::U8 => DatumType::U8,
        D::U16 => DatumType::U16,
        D::U32 => DatumType::U32,
        D::U64 => DatumType::U64,
        D::I8 => DatumType::I8,
        D::I16 => DatumType::I16,
        D::I32 => DatumType::I32,
        D::I64 => DatumType::I64,
        D::F16 => DatumType::F16,
        D::F32 => DatumType::F32,
        D::F64 => DatumType::F64,
        _ => return None,
    })
}

/// Plans are specialized on input types and shapes and on the outputs asked for.
type PlanKey = (Vec<(DataType, Vec<usize>)>, Vec<String>);

pub struct TractSession {
    model: InferenceModel,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    plans: HashMap<PlanKey, Arc<TypedRunnableModel>>,
}

impl TractSession {
    fn plan(&mut self, tensors: &[&Tensor], wanted: &[String]) -> Result<Arc<TypedRunnableModel>, RuntimeError> {
        let key: PlanKey = (tensors.iter().map(|t| (t.dtype(), t.dims().to_vec())).collect(), wanted.to_vec());
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        for (ix, t) in tensors.iter().enumerate() {
            let dt = dtype_to_tract(t.dtype()).ok_or_else(|| RuntimeError::Unsupported {
                executor: NAME,
                what: format!("element type {}", t.dtype()),
                name: self.inputs[ix].name.clone(),
            })?;
            model.set_input_fact(ix, InferenceFact::dt_shape(dt, t.dims())).map_err(run_err)?;
        }
        let outlets = wanted
            .iter()
            .map(|name| {
                model
                    .find_outlet_label(name)
                    .or_else(|| model.node_by_name(name).ok().map(|n| OutletId::new(n.id, 0)))
                    .ok_or_else(|| RuntimeError::UnknownOutput { name: name.clone(), known: vec![] })
            })
            .collect::<Result<Vec<_>, _>>()?;
        model.select_output_outlets(&outlets).map_err(run_err)?;
        let typed: TypedModel = model.into_optimized().map_err(run_err)?;
        let plan = typed.into_runnable().map_err(run_err)?;
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }
}

impl Session for TractSession {
    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn run(
        &mut self,
        inputs: &[(String, Value)],
        output_names: Option<&[String]>,
    ) -> Result<Vec<(String, Value)>, RuntimeError> {
        check_inputs(&self.inputs, inputs)?;
        let wanted = select_outputs(&self.outputs, output_names)?;
        // tract takes its inputs positionally, in the model's order.
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for info in &self.inputs {
            match inputs.iter().find(|(n, _)| n == &info.name).map(|(_, v)| v) {
                Some(Value::Tensor(t)) => ordered.push(t),
                _ => {
                    return Err(RuntimeError::Unsupported {
                        executor: NAME,
                        what: "inputs other than tensors".into(),
                        name: info.name.clone(),
                    });
                }
            }
        }
        guarded("running the model", || {
            let plan = self.plan(&ordered, &wanted)?;
            let feeds = ordered
                .iter()
                .zip(&self.inputs)
                .map(|(t, info)| tensor_to_tract(&info.name, t))
                .collect::<Result<TVec<TValue>, _>>()?;
            let results = plan.run(feeds).map_err(run_err)?;
            wanted
                .iter()
                .zip(results.iter())
                .map(|(name, v)| Ok((name.clone(), Value::Tensor(tensor_from_tract(name, v)?))))
                .collect()
        })
    }
}

fn tensor_to_tract(name: &str, t: &Tensor) -> Result<TValue, RuntimeError> {
    let unsupported =
        || RuntimeError::Unsupported { executor: NAME, what: format!("element type {}", t.dtype()), name: name.into() };
    let dt = dtype_to_tract(t.dtype()).ok_or_else(unsupported)?;
    let TensorData::Packed(bytes) = t.data() else {
        return Err(unsupported());
    };
    // SAFETY: `bytes` holds exactly the packed little-endian elements of `dt` for this shape
    // (guaranteed by `Tensor::new`), which is tract's in-memory layout on little-endian targets;
    // tract checks the length again before copying. Bool bytes are 0 or 1 as ONNX requires.
    let tensor = unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, t.dims(), bytes) }.map_err(run_err)?;
    Ok(tensor.into_tvalue())
}

fn tensor_from_tract(name: &str, v: &TValue) -> Result<Tensor, RuntimeError> {
    let dtype = dtype_from_tract(v.datum_type()).filter(|d| *d != DataType::String).ok_or_else(|| {
        RuntimeError::Unsupported {
            executor: NAME,
            what: format!("output element type {:?}", v.datum_type()),
            name: name.into(),
        }
    })?;
    Tensor::new(dtype, v.shape().to_vec(), Bytes::copy_from_slice(v.as_bytes())).map_err(run_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ErrorKind;
    use crate::runtime::testutil::*;

    fn run_case(name: &str) {
        let (model, data) = read_case(name);
        let mut session = TractExecutor.load(ModelSource::from_bytes(&model), &SessionConfig::default()).unwrap();
        let inputs = read_values(&data, "input", session.inputs());
        let expected = read_values(&data, "output", session.outputs());
        let got = session.run(&inputs, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        for ((gn, g), (_, w)) in got.iter().zip(&expected) {
            assert_close(&format!("{name}/{gn}"), g, w);
        }
    }

    #[test]
    fn conformance_cases_match() {
        for name in
            ["test_add", "test_conv_with_strides_padding", "test_gru_defaults", "test_argmax_default_axis_example"]
        {
            run_case(name);
        }
    }

    #[test]
    fn dynamic_shapes_external_data_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let w = [2.0f32, 3.0];
        std::fs::write(dir.path().join("w.bin"), w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let model = binary_model("Mul", &w, Some("w.bin"));
        let mut s = TractExecutor
            .load(ModelSource { bytes: &model, base_dir: Some(dir.path()) }, &SessionConfig::default())
            .unwrap();
        assert_eq!(s.inputs()[0].name, "x");
        let x = Tensor::from_slice(vec![2], &[1.0f32, 2.0]).unwrap();
        let out = s.run(&[("x".into(), x.clone().into())], None).unwrap();
        assert_eq!(out[0].0, "y");
        assert_eq!(out[0].1.as_tensor().unwrap().to_vec::<f32>().unwrap(), vec![2.0, 6.0]);
        // The cached plan is reused; a new shape gets its own (and fails cleanly on broadcast).
        assert_eq!(s.run(&[("x".into(), x.into())], None).unwrap(), out);
        let bad = Tensor::from_slice(vec![3], &[1.0f32; 3]).unwrap();
        let err = s.run(&[("x".into(), bad.into())], None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Runtime, "{err}");
        let err = s.run(&[], None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");

        let err = TractExecutor.load(ModelSource::from_bytes(b"garbage"), &SessionConfig::default()).err().unwrap();
        assert!(matches!(err, RuntimeError::ModelRejected { .. }), "{err}");
    }

    #[test]
    fn panics_become_errors() {
        let err = guarded("testing", || -> Result<(), RuntimeError> { panic!("boom") }).unwrap_err();
        assert_eq!(err, RuntimeError::Panic { executor: NAME, during: "testing".into(), message: "boom".into() });
    }
}
