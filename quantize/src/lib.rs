//! kiln-quantize: quantization plans, QDQ materialization, dynamic INT8 and SmoothQuant
//! (and, in their own modules, FP16/BF16 and INT4 weight-only).
//!
//! Static INT8 is two phases: per-op [`handlers`] mark tensors in a [`plan::QuantPlan`]
//! (activation, weight with its channel axis, bias, shared parameters), then [`qdq`]
//! materializes Q/DQ from calibrated ranges in the form the target fuses.

pub mod dynamic;
pub mod handlers;
pub mod int8;
pub mod plan;
pub mod qdq;
pub mod weights;

#[cfg(test)]
mod tests;
