//! Kiln's deployment targets and artifacts.
//!
//! A [`Target`] is data plus passes: a capability table ([`capabilities`]), legalization
//! passes ([`legalize`]), an emitter for the files a runtime needs beside the model
//! ([`tensorrt`]), a QDQ linter that checks the target's rules before anything is written
//! ([`lint`]), and [`Target::check`], which says whether the target runs on this machine.
//! [`bench`] measures a model on ONNX Runtime; [`artifact`] writes the artifact folder.

pub mod artifact;
pub mod bench;
pub mod capabilities;
pub mod cpu;
pub mod flops;
pub mod legalize;
pub mod lint;
pub mod qdq;
mod target;
pub mod tensorrt;
#[cfg(test)]
mod testgraph;

pub use target::{Availability, EmitError, EmittedFile, Target, TargetKind};
