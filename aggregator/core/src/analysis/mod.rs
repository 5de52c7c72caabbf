//! Pure scaling analysis: no I/O, no clocks, no Kubernetes types.
pub mod saturation;
