//! kiln-calibration: filled by its issue; see ../shared/DESIGN.md.
