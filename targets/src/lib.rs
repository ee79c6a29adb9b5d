//! Kiln's targets and artifacts. The target table (ORT CPU, ORT CUDA, TensorRT) lands with
//! the targets issue; the artifact writer is shared by every `optimize` run.

pub mod artifact;
