//! kiln-quantize: filled by its issue; see ../shared/DESIGN.md.

pub mod half;
