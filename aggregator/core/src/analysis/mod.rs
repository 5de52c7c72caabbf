//! Pure scaling analysis: no I/O, no clocks, no Kubernetes types.
pub mod model;
pub mod saturation;
pub mod steps;

#[cfg(test)]
pub(crate) mod fixtures;
