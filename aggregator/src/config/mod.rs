//! Configuration files and their validation.
pub mod params;
pub mod saturation;
