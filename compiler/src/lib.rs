//! Kiln's compiler core: the IR, ONNX and safetensors import/export, the verifier,
//! the pass manager and the executors.
//!
//! The IR knows nothing of protobuf or ONNX Runtime: [`onnx`] and [`runtime`] convert at the edge.

pub mod compare;
pub mod dtype;
pub mod dump;
pub mod execute;
pub mod inspect;
pub mod ir;
pub mod metrics;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod pass;
pub mod rng;
pub mod runtime;
pub mod safetensors;
pub mod shape;
pub mod tensor;
pub mod verify;
pub mod weights;

pub use dtype::DataType;
pub use tensor::{Element, Tensor, TensorData, TensorError};
