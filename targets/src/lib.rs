//! kiln-targets: filled by its issue; see ../shared/DESIGN.md.
