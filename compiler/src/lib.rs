//! Kiln's compiler core: the IR, ONNX and safetensors import/export, the verifier,
//! the pass manager and the executors.
//!
//! The IR knows nothing of protobuf or ONNX Runtime: [`onnx`] and [`runtime`] convert at the edge.

pub mod dtype;
pub mod npy;
pub mod runtime;
pub mod tensor;

pub use dtype::DataType;
pub use tensor::{Element, Tensor, TensorData, TensorError};
