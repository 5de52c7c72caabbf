//! The saturation-scaling ConfigMap: `default` plus per-model overrides.

/// Thresholds of the saturation analysis (WVA's documented defaults: 0.80, 5, 0.1, 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaturationConfig {
    pub kv_cache_threshold: f64,
    pub queue_length_threshold: f64,
    pub kv_spare_trigger: f64,
    pub queue_spare_trigger: f64,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        SaturationConfig {
            kv_cache_threshold: 0.80,
            queue_length_threshold: 5.0,
            kv_spare_trigger: 0.1,
            queue_spare_trigger: 3.0,
        }
    }
}
