//! The `optimize` exit codes, and which errors map to which.

use kiln_compiler::onnx::OnnxError;
use kiln_compiler::runtime::{ErrorKind, RuntimeError};

/// Stable exit codes of the `optimize` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Success.
    Ok = 0,
    /// A check ran and failed (accuracy, latency or size budget exceeded).
    CheckFailed = 1,
    /// Bad usage or bad input: a malformed model, a missing file, a wrong argument.
    BadInput = 2,
    /// The runtime failed: ONNX Runtime missing or crashing, an I/O failure writing output.
    Runtime = 3,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn of_onnx(e: &OnnxError) -> ExitStatus {
        if e.is_bad_input() { ExitStatus::BadInput } else { ExitStatus::Runtime }
    }

    pub fn of_runtime(e: &RuntimeError) -> ExitStatus {
        match e.kind() {
            ErrorKind::BadInput => ExitStatus::BadInput,
            ErrorKind::Runtime => ExitStatus::Runtime,
        }
    }
}

/// The exit-code table shown in `--help` and README.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  a check failed (accuracy, latency or size budget exceeded)
  2  bad usage or bad input (malformed model, missing file, wrong argument)
  3  runtime failure (ONNX Runtime missing or failing, I/O error writing output)";
