//! Comparing executor outputs: named tolerances, and a failure that names the first outlier.

use crate::dtype::{DataType, ElementSize};
use crate::runtime::Value;

/// `|got - want| <= atol + rtol * |want|`, NaN equal to NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// Bit-for-bit equality.
    pub const EXACT: Tolerance = Tolerance { rtol: 0.0, atol: 0.0 };
    /// The ONNX backend test suite's default for floats.
    pub const ONNX_BACKEND: Tolerance = Tolerance { rtol: 1e-3, atol: 1e-7 };
    /// f32 rewrites that reorder arithmetic (fusions, folding).
    pub const F32_CLOSE: Tolerance = Tolerance { rtol: 1e-4, atol: 1e-5 };
    /// Results computed in f16.
    pub const F16: Tolerance = Tolerance { rtol: 1e-2, atol: 1e-3 };

    fn accepts(&self, got: f64, want: f64) -> bool {
        got == want || (got.is_nan() && want.is_nan()) || (got - want).abs() <= self.atol + self.rtol * want.abs()
    }
}

/// Compares two values: floats (≥ 16 bits) within `tol`, everything else exactly.
/// The error names the output, the first element out of tolerance, and the largest error.
pub fn compare_values(name: &str, got: &Value, want: &Value, tol: Tolerance) -> Result<(), String> {
    match (got, want) {
        (Value::Tensor(g), Value::Tensor(w)) => {
            if g.dtype() != w.dtype() {
                return Err(format!("{name}: type {} but expected {}", g.dtype(), w.dtype()));
            }
            if g.dims() != w.dims() {
                return Err(format!("{name}: shape {:?} but expected {:?}", g.dims(), w.dims()));
            }
            let approximate =
                w.dtype().is_float() && matches!(w.dtype().element_size(), ElementSize::Bytes(n) if n >= 2);
            if approximate && tol != Tolerance::EXACT {
                let (gv, wv) = match (g.to_f64_vec(), w.to_f64_vec()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return Err(format!("{name}: cannot read elements of type {}", w.dtype())),
                };
                let mut first = None;
                let mut worst = 0.0f64;
                for (i, (a, b)) in gv.iter().zip(&wv).enumerate() {
                    if !tol.accepts(*a, *b) {
                        first.get_or_insert((i, *a, *b));
                        worst = worst.max((a - b).abs());
                    }
                }
                if let Some((i, a, b)) = first {
                    return Err(format!(
                        "{name}: element {i} is {a}, expected {b} (rtol {}, atol {}); max abs error {worst}",
                        tol.rtol, tol.atol
                    ));
                }
                Ok(())
            } else if g.data() == w.data() {
                Ok(())
            } else {
                let i = match (g.bytes(), w.bytes()) {
                    (Some(a), Some(b)) => a.iter().zip(b.iter()).position(|(x, y)| x != y).unwrap_or(0),
                    _ => 0,
                };
                let unit = match w.dtype().element_size() {
                    ElementSize::Bytes(n) if n > 0 => n,
                    _ => 1,
                };
                let what = if w.dtype() == DataType::String {
                    "strings differ".to_string()
                } else {
                    format!("element {} differs", i / unit)
                };
                Err(format!("{name}: {what}"))
            }
        }
        (Value::Sequence(g), Value::Sequence(w)) => {
            if g.len() != w.len() {
                return Err(format!("{name}: sequence of {} but expected {}", g.len(), w.len()));
            }
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                compare_values(&format!("{name}[{i}]"), a, b, tol)?;
            }
            Ok(())
        }
        (Value::Optional(g), Value::Optional(w)) => match (g, w) {
            (Some(a), Some(b)) => compare_values(name, a, b, tol),
            (None, None) => Ok(()),
            _ => Err(format!("{name}: got {}, expected {}", got.describe(), want.describe())),
        },
        _ => Err(format!("{name}: got {}, expected {}", got.describe(), want.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn t(v: &[f32]) -> Value {
        Value::Tensor(Tensor::from_slice(vec![v.len()], v).unwrap())
    }

    #[test]
    fn names_the_first_outlier() {
        let err =
            compare_values("y", &t(&[1.0, 2.0, 3.5]), &t(&[1.0, 2.0005, 3.0]), Tolerance::ONNX_BACKEND).unwrap_err();
        assert!(err.starts_with("y: element 2 is 3.5, expected 3"), "{err}");
        assert!(compare_values("y", &t(&[1.0, f32::NAN]), &t(&[1.0, f32::NAN]), Tolerance::ONNX_BACKEND).is_ok());
        assert!(compare_values("y", &t(&[1.0]), &t(&[1.0000001]), Tolerance::EXACT).is_err());
        let ints = Value::Tensor(Tensor::from_slice(vec![2], &[1i64, 2]).unwrap());
        let ints2 = Value::Tensor(Tensor::from_slice(vec![2], &[1i64, 3]).unwrap());
        assert_eq!(compare_values("k", &ints, &ints2, Tolerance::ONNX_BACKEND).unwrap_err(), "k: element 1 differs");
    }
}
