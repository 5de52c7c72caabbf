//! Pure scaling analysis: no I/O, no clocks, no Kubernetes types.
pub mod model;
pub mod saturation;
pub mod steps;
pub mod tokens;

#[cfg(test)]
pub(crate) mod fixtures;
