//! Kiln: an ahead-of-time model optimization compiler.
//!
//! This facade re-exports the crates that do the work, so an embedding tool depends on one
//! crate: [`compiler`] (IR, ONNX/safetensors I/O, verifier, pass manager, executors),
//! [`passes`], [`calibration`], [`quantize`] and [`targets`].
//!
//! ```no_run
//! use kiln::compiler::onnx::{load_model, save_model, SaveOptions};
//! use kiln::compiler::inspect::summarize;
//!
//! let model = load_model("model.onnx".as_ref())?;
//! let summary = summarize(&model);
//! println!("{} nodes, {} parameters", summary.nodes, summary.parameters);
//! save_model(&model, "copy.onnx".as_ref(), &SaveOptions::default())?;
//! # Ok::<(), kiln::compiler::onnx::OnnxError>(())
//! ```

pub use kiln_calibration as calibration;
pub use kiln_compiler as compiler;
pub use kiln_passes as passes;
pub use kiln_quantize as quantize;
pub use kiln_targets as targets;

pub mod check;
pub mod config;
pub mod exit;
pub mod pipeline;
pub mod presets;
pub mod progress;
pub mod sensitivity;
pub mod stages;
pub mod validate;
