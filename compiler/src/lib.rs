//! Kiln's compiler core: the IR, ONNX and safetensors import/export, the verifier,
//! the pass manager and the executors.
//!
//! The IR knows nothing of protobuf or ONNX Runtime: [`onnx`] converts at the edge.

pub mod dtype;
pub mod dump;
pub mod inspect;
pub mod ir;
pub mod onnx;
pub mod pass;
pub mod safetensors;
pub mod shape;
pub mod tensor;
pub mod verify;

pub use dtype::DataType;
pub use tensor::{Element, Tensor, TensorData, TensorError};
