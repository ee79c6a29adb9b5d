//! kiln-passes: filled by its issue; see ../shared/DESIGN.md.

pub mod fuse;
