//! The model's inputs as calibration data must match them, and the check itself.

use std::collections::BTreeMap;
use std::fmt;

use kiln_compiler::DataType;
use kiln_compiler::ir::{DimValue, Model};

use super::{DataError, Sample};

/// One dimension of a model input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimSpec {
    Fixed(usize),
    /// A named symbolic dimension: any size, but the same size wherever the name recurs.
    Symbol(String),
    /// Any size.
    Any,
}

impl fmt::Display for DimSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DimSpec::Fixed(d) => write!(f, "{d}"),
            DimSpec::Symbol(s) => f.write_str(s),
            DimSpec::Any => f.write_str("?"),
        }
    }
}

/// A model input: name, element type and (when declared) shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DataType,
    /// `None`: rank unknown, any shape is accepted.
    pub dims: Option<Vec<DimSpec>>,
}

impl InputSpec {
    /// The shape as text (`[batch, 3, 224, 224]`), or `any shape`.
    pub fn shape_text(&self) -> String {
        match &self.dims {
            Some(d) => format!("[{}]", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            None => "any shape".into(),
        }
    }
}

/// The runtime inputs (graph inputs without an initializer) of the main graph, in order.
pub fn model_inputs(model: &Model) -> Result<Vec<InputSpec>, DataError> {
    let config = |what: String| DataError::Config { what };
    let g = model.main_graph().ok_or_else(|| config("the model has no graph".into()))?;
    let mut out = Vec::new();
    for v in g.runtime_inputs() {
        let value = g.value(v);
        let tt = value.ty.as_ref().and_then(|t| t.as_tensor()).ok_or_else(|| {
            config(format!("model input `{}` is not a tensor; calibration feeds tensors", value.name))
        })?;
        let dtype =
            tt.dtype().ok_or_else(|| config(format!("model input `{}` has no known element type", value.name)))?;
        let dims = tt.shape.as_ref().map(|dims| {
            dims.iter()
                .map(|d| match &d.value {
                    DimValue::Known(k) if *k >= 0 => DimSpec::Fixed(*k as usize),
                    // A name ties equal dimensions together; placeholders some exporters write
                    // (`?`, `-1`) name nothing.
                    DimValue::Symbol(s) if s.starts_with(|c: char| c.is_alphabetic() || c == '_') => {
                        DimSpec::Symbol(s.clone())
                    }
                    _ => DimSpec::Any,
                })
                .collect()
        });
        out.push(InputSpec { name: value.name.clone(), dtype, dims });
    }
    Ok(out)
}

/// Checks a sample against the model's inputs: no unknown names, none missing, the declared
/// element type, the declared rank and fixed sizes, and one size per symbolic dimension.
pub fn validate(inputs: &[InputSpec], sample: &Sample) -> Result<(), DataError> {
    let file = || sample.origin.clone();
    for (name, _) in &sample.inputs {
        if !inputs.iter().any(|i| &i.name == name) {
            return Err(DataError::UnknownInput {
                file: file(),
                input: name.clone(),
                known: inputs.iter().map(|i| i.name.clone()).collect(),
            });
        }
    }
    let mut symbols: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for spec in inputs {
        let Some((_, t)) = sample.inputs.iter().find(|(n, _)| n == &spec.name) else {
            return Err(DataError::MissingInput { file: file(), input: spec.name.clone() });
        };
        if t.dtype() != spec.dtype {
            return Err(DataError::WrongDtype {
                file: file(),
                input: spec.name.clone(),
                expected: spec.dtype,
                actual: t.dtype(),
            });
        }
        let Some(dims) = &spec.dims else { continue };
        let wrong_shape = || DataError::WrongShape {
            file: file(),
            input: spec.name.clone(),
            expected: spec.shape_text(),
            actual: t.dims().to_vec(),
        };
        if dims.len() != t.rank() {
            return Err(wrong_shape());
        }
        for (d, &actual) in dims.iter().zip(t.dims()) {
            match d {
                DimSpec::Fixed(f) if *f != actual => return Err(wrong_shape()),
                DimSpec::Symbol(s) => match symbols.get(s.as_str()) {
                    Some(&(expected, other)) if expected != actual => {
                        return Err(DataError::InconsistentDim {
                            file: file(),
                            input: spec.name.clone(),
                            other: other.to_string(),
                            dim: s.clone(),
                            expected,
                            actual,
                        });
                    }
                    Some(_) => {}
                    None => {
                        symbols.insert(s, (actual, &spec.name));
                    }
                },
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::Tensor;

    fn specs() -> Vec<InputSpec> {
        vec![
            InputSpec {
                name: "ids".into(),
                dtype: DataType::I64,
                dims: Some(vec![DimSpec::Symbol("b".into()), DimSpec::Symbol("s".into())]),
            },
            InputSpec {
                name: "x".into(),
                dtype: DataType::F32,
                dims: Some(vec![DimSpec::Symbol("b".into()), DimSpec::Fixed(3), DimSpec::Any]),
            },
        ]
    }

    fn sample(inputs: Vec<(&str, Tensor)>) -> Sample {
        Sample { origin: "s7.npz".into(), inputs: inputs.into_iter().map(|(n, t)| (n.to_string(), t)).collect() }
    }

    fn ids(dims: Vec<usize>) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_slice(dims, &vec![1i64; n]).unwrap()
    }

    fn x(dims: Vec<usize>) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_slice(dims, &vec![0.5f32; n]).unwrap()
    }

    #[test]
    fn symbolic_dims_take_any_size_once() {
        assert!(validate(&specs(), &sample(vec![("ids", ids(vec![1, 7])), ("x", x(vec![1, 3, 9]))])).is_ok());
        assert!(validate(&specs(), &sample(vec![("x", x(vec![2, 3, 1])), ("ids", ids(vec![2, 30]))])).is_ok());
        let err = validate(&specs(), &sample(vec![("ids", ids(vec![1, 7])), ("x", x(vec![2, 3, 9]))])).unwrap_err();
        assert!(matches!(&err, DataError::InconsistentDim { input, dim, .. } if input == "x" && dim == "b"), "{err}");
    }

    #[test]
    fn mismatches_name_the_input_and_the_file() {
        let err = validate(&specs(), &sample(vec![("ids", ids(vec![1, 7]))])).unwrap_err();
        assert_eq!(err.to_string(), "s7.npz: input `x` of the model is missing");

        let err =
            validate(&specs(), &sample(vec![("ids", ids(vec![1, 7])), ("x", x(vec![1, 3, 1])), ("y", x(vec![1]))]))
                .unwrap_err();
        assert!(err.to_string().starts_with("s7.npz: `y` is not an input"), "{err}");

        let err = validate(&specs(), &sample(vec![("ids", x(vec![1, 7])), ("x", x(vec![1, 3, 1]))])).unwrap_err();
        assert_eq!(err.to_string(), "s7.npz: input `ids` has type f32, the model expects i64");

        let err = validate(&specs(), &sample(vec![("ids", ids(vec![1, 7])), ("x", x(vec![1, 4, 1]))])).unwrap_err();
        assert_eq!(err.to_string(), "s7.npz: input `x` has shape [1, 4, 1], the model expects [b, 3, ?]");

        let err = validate(&specs(), &sample(vec![("ids", ids(vec![7])), ("x", x(vec![1, 3, 1]))])).unwrap_err();
        assert!(matches!(err, DataError::WrongShape { .. }));
    }
}
