//! Configuration files and their validation.
pub mod saturation;
