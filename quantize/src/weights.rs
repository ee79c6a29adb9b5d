//! Scale and zero-point arithmetic: activation parameters from a range, symmetric weights per
//! tensor or per channel along an axis, and int32 biases whose scale is the product of the
//! input's and the weight's. Shared by static QDQ, dynamic INT8 and SmoothQuant (and usable
//! by other integer schemes: the integer type is a parameter).

use kiln_compiler::{DataType, Tensor, TensorError};

/// An 8-bit integer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntType {
    S8,
    U8,
}

impl IntType {
    pub fn qmin(self) -> i32 {
        match self {
            IntType::S8 => -128,
            IntType::U8 => 0,
        }
    }

    pub fn qmax(self) -> i32 {
        match self {
            IntType::S8 => 127,
            IntType::U8 => 255,
        }
    }

    pub fn dtype(self) -> DataType {
        match self {
            IntType::S8 => DataType::I8,
            IntType::U8 => DataType::U8,
        }
    }
}

/// Quantization parameters of one tensor: one scale and zero point, or one per channel of
/// `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct QParams {
    pub ty: IntType,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    /// `Some(axis)`: per channel along it; `None`: per tensor (one scale).
    pub axis: Option<usize>,
}

impl QParams {
    /// The real value of integer `q` in channel `c`.
    pub fn dequantize(&self, q: i32, c: usize) -> f32 {
        (q - self.zero_point[c]) as f32 * self.scale[c]
    }

    /// The integer for `x` in channel `c` (round half to even, saturated, as QuantizeLinear).
    pub fn quantize(&self, x: f32, c: usize) -> i32 {
        let q = (x / self.scale[c]).round_ties_even() as i64 + i64::from(self.zero_point[c]);
        q.clamp(i64::from(self.ty.qmin()), i64::from(self.ty.qmax())) as i32
    }

    /// The scale tensor: a scalar per tensor, 1-D per channel.
    pub fn scale_tensor(&self) -> Tensor {
        match self.axis {
            None => Tensor::scalar(self.scale[0]),
            Some(_) => {
                Tensor::from_slice(vec![self.scale.len()], &self.scale).unwrap_or_else(|_| Tensor::scalar(0.0f32))
            }
        }
    }

    /// The zero-point tensor, of the integer type, shaped like the scale.
    pub fn zero_point_tensor(&self) -> Tensor {
        let dims = if self.axis.is_some() { vec![self.zero_point.len()] } else { Vec::new() };
        let r = match self.ty {
            IntType::S8 => Tensor::from_slice(dims, &self.zero_point.iter().map(|&z| z as i8).collect::<Vec<_>>()),
            IntType::U8 => Tensor::from_slice(dims, &self.zero_point.iter().map(|&z| z as u8).collect::<Vec<_>>()),
        };
        r.unwrap_or_else(|_| Tensor::scalar(0i8))
    }
}

mod stream;
pub use stream::{absmax, quantize_weight};

/// Smallest scale used: a range of zero width (a constant tensor, a dead channel) still gets a
/// valid, invertible scale.
const MIN_SCALE: f64 = 1e-8;

/// Parameters of an activation observed in `[min, max]`. The range is widened to hold 0 so
/// that zero (padding, ReLU outputs) is exact. Symmetric: zero point 0 (the middle of U8 for
/// unsigned), scale `max|x| / 127`. Asymmetric: the whole range onto `[qmin, qmax]`, so a range
/// starting at 0 gets zero point `qmin`, which makes the quantizer itself the ReLU.
pub fn activation_params(min: f64, max: f64, ty: IntType, symmetric: bool) -> QParams {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let (qmin, qmax) = (f64::from(ty.qmin()), f64::from(ty.qmax()));
    let (scale, zp) = if symmetric {
        let absmax = lo.abs().max(hi.abs());
        let half = ((qmax - qmin) / 2.0).floor();
        let zp = match ty {
            IntType::S8 => 0.0,
            IntType::U8 => 128.0,
        };
        ((absmax / half).max(MIN_SCALE), zp)
    } else {
        let scale = ((hi - lo) / (qmax - qmin)).max(MIN_SCALE);
        let zp = (qmin - lo / scale).round().clamp(qmin, qmax);
        (scale, zp)
    };
    QParams { ty, scale: vec![scale as f32], zero_point: vec![zp as i32], axis: None }
}

/// Why a weight could not be quantized.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("weight of type {0} is not a float tensor")]
    NotFloat(DataType),
    #[error("axis {axis} is out of range for a weight of shape {dims:?}")]
    Axis { axis: usize, dims: Vec<usize> },
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("bias has {bias} values but the weight has {channels} output channels")]
    BiasChannels { bias: usize, channels: usize },
}

/// Values of a float tensor as f32.
pub fn float_values(t: &Tensor) -> Result<Vec<f32>, WeightError> {
    if !t.dtype().is_float() {
        return Err(WeightError::NotFloat(t.dtype()));
    }
    match t.dtype() {
        DataType::F32 => Ok(t.to_vec::<f32>()?),
        _ => Ok(t.to_f64_vec()?.into_iter().map(|v| v as f32).collect()),
    }
}

/// The channel of each element of a row-major tensor of `dims` along `axis`: `(outer, n, inner)`
/// where element `i` is in channel `(i / inner) % n`.
pub fn channel_layout(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let n = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let outer: usize = dims[..axis].iter().product();
    (outer, n, inner)
}

/// A constant quantized like an activation: per tensor, `ty`, from its own min/max.
pub fn quantize_constant(t: &Tensor, ty: IntType, symmetric: bool) -> Result<(Tensor, QParams), WeightError> {
    let values = float_values(t)?;
    let finite = values.iter().filter(|v| v.is_finite());
    let lo = finite.clone().fold(0.0f32, |m, &v| m.min(v));
    let hi = finite.fold(0.0f32, |m, &v| m.max(v));
    let params = activation_params(f64::from(lo), f64::from(hi), ty, symmetric);
    let q = quantize_values(&values, t.dims(), &params);
    Ok((integer_tensor(t.dims().to_vec(), &q, ty)?, params))
}

/// An integer tensor of `ty` from values already in its range.
pub fn integer_tensor(dims: Vec<usize>, q: &[i32], ty: IntType) -> Result<Tensor, TensorError> {
    match ty {
        IntType::S8 => Tensor::from_slice(dims, &q.iter().map(|&v| v as i8).collect::<Vec<_>>()),
        IntType::U8 => Tensor::from_slice(dims, &q.iter().map(|&v| v as u8).collect::<Vec<_>>()),
    }
}

/// Integers of `values` (row-major, `dims`) under `params`.
pub fn quantize_values(values: &[f32], dims: &[usize], params: &QParams) -> Vec<i32> {
    let (n, inner) = match params.axis {
        Some(axis) => {
            let (_, n, inner) = channel_layout(dims, axis);
            (n.max(1), inner.max(1))
        }
        None => (1, 1),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = if params.axis.is_some() { (i / inner) % n } else { 0 };
            params.quantize(if v.is_finite() { v } else { 0.0 }, c)
        })
        .collect()
}

/// A bias as int32 with scale `input_scale * weight_scale[c]` and zero point 0, so that an
/// integer kernel adds it to its int32 accumulator directly. Values beyond int32 saturate.
pub fn quantize_bias(bias: &Tensor, input_scale: f32, weight: &QParams) -> Result<(Tensor, Vec<f32>), WeightError> {
    let values = float_values(bias)?;
    let scales: Vec<f32> = if weight.axis.is_some() {
        if weight.scale.len() != values.len() {
            return Err(WeightError::BiasChannels { bias: values.len(), channels: weight.scale.len() });
        }
        weight.scale.iter().map(|s| (s * input_scale).max(MIN_SCALE as f32)).collect()
    } else {
        vec![(weight.scale[0] * input_scale).max(MIN_SCALE as f32)]
    };
    let q: Vec<i32> = values
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let s = if scales.len() == 1 { scales[0] } else { scales[i] };
            let v = (f64::from(b) / f64::from(s)).round_ties_even();
            if v.is_finite() { v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 } else { 0 }
        })
        .collect();
    Ok((Tensor::from_slice(bias.dims().to_vec(), &q)?, scales))
}

#[cfg(test)]
#[path = "weights_tests.rs"]
mod tests;
