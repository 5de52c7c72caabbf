//! The scale-to-zero ConfigMap: per model, whether an idle model may go to
//! zero replicas and after how long without a successful request.
//!
//! One YAML document per `data` key: `__defaults__` for every model, and
//! per-model entries naming `model_id` (and optionally `namespace`, which
//! makes the entry win over one without). Fields: `enable_scale_to_zero`
//! (default true) and `retention_period` (default 10m). The global
//! `WVA_SCALE_TO_ZERO` switch gates all of it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub const DEFAULTS_KEY: &str = "__defaults__";
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(10 * 60);

/// The policy of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleToZero {
    pub enabled: bool,
    /// How long without a successful request before the model goes to zero.
    pub retention: Duration,
}

impl Default for ScaleToZero {
    fn default() -> Self {
        ScaleToZero {
            enabled: true,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// A validated scale-to-zero ConfigMap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScaleToZeroConfigSet {
    defaults: ScaleToZero,
    /// Keyed by `(namespace or "" for any, model_id)`.
    models: BTreeMap<(String, String), ScaleToZero>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScaleToZeroError {
    #[error("scale-to-zero config file: {0}")]
    File(String),
    #[error("scale-to-zero config key {key:?}: invalid YAML: {message}")]
    Yaml { key: String, message: String },
    #[error(
        "scale-to-zero config key {key:?}: retention_period {value:?} is not a duration (e.g. 10m, 1h30m)"
    )]
    Retention { key: String, value: String },
    #[error("scale-to-zero config key {key:?}: model_id is required in a per-model entry")]
    MissingModel { key: String },
    #[error(
        "scale-to-zero config key {DEFAULTS_KEY:?}: {field} is only allowed in per-model entries"
    )]
    IdentityInDefaults { field: &'static str },
    #[error("scale-to-zero config keys {first:?} and {second:?} both configure model {model_id:?}{}", namespace_note(.namespace))]
    Duplicate {
        first: String,
        second: String,
        model_id: String,
        namespace: String,
    },
}

fn namespace_note(namespace: &str) -> String {
    if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {namespace:?}")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    model_id: Option<String>,
    namespace: Option<String>,
    enable_scale_to_zero: Option<bool>,
    retention_period: Option<String>,
}

impl RawEntry {
    fn parse(key: &str, text: &str) -> Result<Self, ScaleToZeroError> {
        serde_yaml::from_str::<Option<RawEntry>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| ScaleToZeroError::Yaml {
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    fn resolve(&self, key: &str, base: ScaleToZero) -> Result<ScaleToZero, ScaleToZeroError> {
        let retention = match &self.retention_period {
            None => base.retention,
            Some(text) => {
                humantime::parse_duration(text.trim()).map_err(|_| ScaleToZeroError::Retention {
                    key: key.to_string(),
                    value: text.clone(),
                })?
            }
        };
        Ok(ScaleToZero {
            enabled: self.enable_scale_to_zero.unwrap_or(base.enabled),
            retention,
        })
    }
}

impl ScaleToZeroConfigSet {
    /// Validates a ConfigMap's `data` map.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ScaleToZeroError> {
        let defaults = match data.get(DEFAULTS_KEY) {
            None => ScaleToZero::default(),
            Some(text) => {
                let raw = RawEntry::parse(DEFAULTS_KEY, text)?;
                if raw.model_id.is_some() {
                    return Err(ScaleToZeroError::IdentityInDefaults { field: "model_id" });
                }
                if raw.namespace.is_some() {
                    return Err(ScaleToZeroError::IdentityInDefaults { field: "namespace" });
                }
                raw.resolve(DEFAULTS_KEY, ScaleToZero::default())?
            }
        };
        let mut models = BTreeMap::new();
        let mut keys: BTreeMap<(String, String), &String> = BTreeMap::new();
        for (key, text) in data.iter().filter(|(k, _)| *k != DEFAULTS_KEY) {
            let raw = RawEntry::parse(key, text)?;
            let model_id = match &raw.model_id {
                Some(m) if !m.trim().is_empty() => m.clone(),
                _ => return Err(ScaleToZeroError::MissingModel { key: key.clone() }),
            };
            let slot = (raw.namespace.clone().unwrap_or_default(), model_id);
            if let Some(first) = keys.get(&slot) {
                return Err(ScaleToZeroError::Duplicate {
                    first: (*first).clone(),
                    second: key.clone(),
                    model_id: slot.1,
                    namespace: slot.0,
                });
            }
            models.insert(slot.clone(), raw.resolve(key, defaults)?);
            keys.insert(slot, key);
        }
        Ok(ScaleToZeroConfigSet { defaults, models })
    }

    /// Validates a file holding the whole ConfigMap.
    pub fn from_yaml_file_contents(text: &str) -> Result<Self, ScaleToZeroError> {
        Self::from_data(&super::config_map_data(text).map_err(ScaleToZeroError::File)?)
    }

    /// The policy of `model_id` in `namespace`: its namespaced entry, else its
    /// entry for any namespace, else the defaults.
    pub fn for_model(&self, model_id: &str, namespace: &str) -> ScaleToZero {
        let get = |ns: &str| self.models.get(&(ns.to_string(), model_id.to_string()));
        get(namespace)
            .or_else(|| get(""))
            .copied()
            .unwrap_or(self.defaults)
    }

    /// Number of per-model entries.
    pub fn models(&self) -> usize {
        self.models.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::data;

    #[test]
    fn empty_config_enables_every_model_with_ten_minutes() {
        let set = ScaleToZeroConfigSet::from_data(&BTreeMap::new()).unwrap();
        assert_eq!(set.for_model("m", "ns"), ScaleToZero::default());
        assert_eq!(set.for_model("m", "ns").retention, Duration::from_secs(600));
    }

    #[test]
    fn entries_inherit_the_defaults_and_namespaced_ones_win() {
        let set = ScaleToZeroConfigSet::from_data(&data(&[
            (
                DEFAULTS_KEY,
                "enable_scale_to_zero: false\nretention_period: 30m",
            ),
            ("llama", "model_id: meta/llama\nenable_scale_to_zero: true"),
            (
                "llama-dev",
                "model_id: meta/llama\nnamespace: dev\nretention_period: 2m",
            ),
        ]))
        .unwrap();
        assert_eq!(
            set.for_model("other", "prod"),
            ScaleToZero {
                enabled: false,
                retention: Duration::from_secs(1800)
            }
        );
        assert_eq!(
            set.for_model("meta/llama", "prod"),
            ScaleToZero {
                enabled: true,
                retention: Duration::from_secs(1800)
            }
        );
        assert_eq!(
            set.for_model("meta/llama", "dev"),
            ScaleToZero {
                enabled: false,
                retention: Duration::from_secs(120)
            }
        );
        assert_eq!(set.models(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |pairs: &[(&str, &str)]| {
            ScaleToZeroConfigSet::from_data(&data(pairs))
                .unwrap_err()
                .to_string()
        };
        let e = bad(&[("x", "model_id: m\nretention_period: soon")]);
        assert!(e.contains("\"x\"") && e.contains("soon"), "{e}");
        let e = bad(&[("x", "retention_period: 1m")]);
        assert!(e.contains("model_id is required"), "{e}");
        let e = bad(&[(DEFAULTS_KEY, "model_id: m")]);
        assert!(e.contains("only allowed in per-model"), "{e}");
        let e = bad(&[("x", "model_id: m\nenable: true")]);
        assert!(e.contains("unknown field"), "{e}");
        let e = bad(&[("a", "model_id: m"), ("b", "model_id: m")]);
        assert!(e.contains("\"a\" and \"b\""), "{e}");
    }
}
