//! kiln-quantize: lowering a model's precision.
//!
//! - Static INT8 is two phases: per-op [`handlers`] mark tensors in a [`plan::QuantPlan`]
//!   (activation, weight with its channel axis, bias, shared parameters), then [`qdq`]
//!   materializes Q/DQ from calibrated ranges in the form the target fuses ([`int8`]).
//! - [`dynamic`]: INT8 weights with activations quantized at run time ([`lstm`] for LSTMs,
//!   [`constexpr`] for weights reached through captures and layout ops).
//! - [`half`]: FP16/BF16 conversion driven by each op's type constraints.
//! - [`weights`]: the scale and zero-point math shared by the quantizers.
//! - [`int4`]: INT4 weight-only, blockwise along K (RTN, GPTQ), as MatMulNBits or blocked DQ.

pub mod config;
pub mod constexpr;
pub mod dynamic;
pub mod half;
pub mod handlers;
pub mod int4;
pub mod int8;
pub mod lstm;
pub mod plan;
pub mod qdq;
pub mod smooth;
pub mod weights;

#[cfg(test)]
mod lstm_tests;
#[cfg(test)]
mod tests;
