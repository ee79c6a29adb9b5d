//! Kiln: an ahead-of-time model optimization compiler.
//!
//! This facade re-exports the crates that do the work, so an embedding tool depends on one
//! crate: [`compiler`] (IR, ONNX/safetensors I/O, verifier, pass manager, executors),
//! [`passes`], [`calibration`], [`quantize`] and [`targets`].
//!
//! ```
//! use kiln::compiler::inspect::summarize;
//! use kiln::compiler::onnx::{SaveOptions, load_model, save_model};
//!
//! let model = load_model(&kiln_fixtures::model("cnn")?)?; // memory-mapped, zero-copy weights
//! let summary = summarize(&model);
//! println!("{} nodes, {} parameters", summary.nodes, summary.parameters);
//! let dir = tempfile::tempdir()?;
//! save_model(&model, &dir.path().join("copy.onnx"), &SaveOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
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
