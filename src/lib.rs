//! Kiln: the facade over the compiler, passes, quantization and targets.
