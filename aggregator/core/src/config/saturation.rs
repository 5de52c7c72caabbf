//! The saturation-scaling ConfigMap: `default` plus per-model overrides.
//!
//! Every `data` key holds one YAML document. `default` sets the global
//! thresholds; any other key is an override for one `(model_id, namespace)`.
//! Fields an override leaves out come from `default`, and fields `default`
//! leaves out come from the built-in defaults. Validation runs on the
//! resulting (effective) thresholds, so an override can never produce a
//! combination that is invalid only once merged.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `data` key holding the global thresholds.
pub const DEFAULT_KEY: &str = "default";

/// Which analysis sizes a model (`analyzerName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Analyzer {
    /// WVA's V1 rules on KV-cache usage and queue length (`analyzerName`
    /// empty or absent).
    #[default]
    Capacity,
    /// WVA's V2, token-based analysis (`analyzerName: saturation`).
    Tokens,
}

impl Analyzer {
    /// The `analyzerName` that selects it.
    pub fn name(self) -> &'static str {
        match self {
            Analyzer::Capacity => "",
            Analyzer::Tokens => "saturation",
        }
    }
}

impl Serialize for Analyzer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Thresholds of the saturation analysis (WVA's documented defaults: 0.80, 5,
/// 0.1, 3; for V2 0.85 and 0.70) and the limits on how fast a model's
/// replicas move.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SaturationConfig {
    pub analyzer_name: Analyzer,
    pub kv_cache_threshold: f64,
    pub queue_length_threshold: f64,
    pub kv_spare_trigger: f64,
    pub queue_spare_trigger: f64,
    /// V2: a model scales up when its demand exceeds this share of its
    /// capacity...
    pub scale_up_threshold: f64,
    /// ...and down while its demand stays below this share of what remains.
    pub scale_down_boundary: f64,
    /// A scale-up adds at most the larger of this many replicas and
    /// [`Self::max_scale_up_percent`] of the model's replicas (the HPA's
    /// default policy: 4 pods or 100 %).
    pub max_scale_up_replicas: u32,
    pub max_scale_up_percent: f64,
    /// A scale-down goes only to the highest value recommended within this
    /// window (the HPA's `stabilizationWindowSeconds`, same default).
    pub scale_down_stabilization_seconds: u32,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        SaturationConfig {
            analyzer_name: Analyzer::Capacity,
            kv_cache_threshold: 0.80,
            queue_length_threshold: 5.0,
            kv_spare_trigger: 0.1,
            queue_spare_trigger: 3.0,
            scale_up_threshold: 0.85,
            scale_down_boundary: 0.70,
            max_scale_up_replicas: 4,
            max_scale_up_percent: 100.0,
            scale_down_stabilization_seconds: 300,
        }
    }
}

/// The longest scale-down stabilization window, as the HPA allows.
pub const MAX_STABILIZATION_SECONDS: u32 = 3600;

impl SaturationConfig {
    /// The most replicas one decision may add to a model that has `replicas`.
    pub fn max_scale_up(&self, replicas: u32) -> u32 {
        let by_percent = (f64::from(replicas) * self.max_scale_up_percent / 100.0).ceil();
        // The cast saturates, and the percentage is validated finite.
        self.max_scale_up_replicas.max(by_percent as u32)
    }

    pub fn scale_down_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.scale_down_stabilization_seconds.into())
    }
}

/// The effective thresholds of one model, from a per-model key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelOverride {
    /// The `data` key it came from.
    pub key: String,
    pub model_id: String,
    pub namespace: String,
    /// Already merged with `default`.
    pub config: SaturationConfig,
}

/// A validated saturation ConfigMap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaturationConfigSet {
    default: SaturationConfig,
    /// Keyed by `(namespace, model_id)`.
    overrides: BTreeMap<(String, String), ModelOverride>,
}

/// Why a saturation ConfigMap was rejected. Every message names the `data`
/// key (or the file) it is about.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    #[error("saturation config file: {0}")]
    File(String),
    #[error("saturation config key {key:?}: invalid YAML: {message}")]
    Yaml { key: String, message: String },
    #[error("saturation config key {key:?}: {field} must be {requirement}, got {value}{}", inherited_note(.inherited))]
    OutOfRange {
        key: String,
        field: Field,
        requirement: String,
        value: f64,
        /// The key did not set the field; its value came from `default` or the built-ins.
        inherited: bool,
    },
    #[error(
        "saturation config key {key:?}: {field} is required (and must not be empty) in a per-model override"
    )]
    MissingIdentity { key: String, field: &'static str },
    #[error(
        "saturation config key {key:?}: analyzerName must be \"\" (WVA's V1 rules) or \"saturation\" (the token-based V2), got {name:?}"
    )]
    UnknownAnalyzer { key: String, name: String },
    #[error("saturation config key \"default\": {field} is only allowed in per-model overrides")]
    IdentityInDefault { field: &'static str },
    #[error(
        "saturation config keys {first:?} and {second:?} both override model {model_id:?} in namespace {namespace:?}"
    )]
    DuplicateOverride {
        first: String,
        second: String,
        model_id: String,
        namespace: String,
    },
}

fn inherited_note(inherited: &bool) -> &'static str {
    if *inherited {
        " (not set in this key, inherited)"
    } else {
        ""
    }
}

/// A threshold field, displayed with its ConfigMap spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    KvCacheThreshold,
    QueueLengthThreshold,
    KvSpareTrigger,
    QueueSpareTrigger,
    ScaleUpThreshold,
    ScaleDownBoundary,
    MaxScaleUpReplicas,
    MaxScaleUpPercent,
    ScaleDownStabilizationSeconds,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::KvCacheThreshold => "kvCacheThreshold",
            Field::QueueLengthThreshold => "queueLengthThreshold",
            Field::KvSpareTrigger => "kvSpareTrigger",
            Field::QueueSpareTrigger => "queueSpareTrigger",
            Field::ScaleUpThreshold => "scaleUpThreshold",
            Field::ScaleDownBoundary => "scaleDownBoundary",
            Field::MaxScaleUpReplicas => "maxScaleUpReplicas",
            Field::MaxScaleUpPercent => "maxScaleUpPercent",
            Field::ScaleDownStabilizationSeconds => "scaleDownStabilizationSeconds",
        })
    }
}

/// One `data` value as written. Every field is optional so inheritance can tell
/// "not set" from "set".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    #[serde(rename = "model_id")]
    model_id: Option<String>,
    namespace: Option<String>,
    kv_cache_threshold: Option<f64>,
    queue_length_threshold: Option<f64>,
    kv_spare_trigger: Option<f64>,
    queue_spare_trigger: Option<f64>,
    analyzer_name: Option<String>,
    scale_up_threshold: Option<f64>,
    scale_down_boundary: Option<f64>,
    max_scale_up_replicas: Option<u32>,
    max_scale_up_percent: Option<f64>,
    scale_down_stabilization_seconds: Option<u32>,
}

impl RawEntry {
    fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        // An empty value (or only comments) sets nothing.
        serde_yaml::from_str::<Option<RawEntry>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConfigError::Yaml {
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    /// The thresholds this entry sets on top of `base`, validated.
    fn resolve(&self, key: &str, base: SaturationConfig) -> Result<SaturationConfig, ConfigError> {
        let analyzer_name = match self.analyzer_name.as_deref() {
            None => base.analyzer_name,
            Some("") => Analyzer::Capacity,
            Some("saturation") => Analyzer::Tokens,
            Some(other) => {
                return Err(ConfigError::UnknownAnalyzer {
                    key: key.to_string(),
                    name: other.to_string(),
                });
            }
        };
        let config = SaturationConfig {
            analyzer_name,
            kv_cache_threshold: self.kv_cache_threshold.unwrap_or(base.kv_cache_threshold),
            queue_length_threshold: self
                .queue_length_threshold
                .unwrap_or(base.queue_length_threshold),
            kv_spare_trigger: self.kv_spare_trigger.unwrap_or(base.kv_spare_trigger),
            queue_spare_trigger: self.queue_spare_trigger.unwrap_or(base.queue_spare_trigger),
            scale_up_threshold: self.scale_up_threshold.unwrap_or(base.scale_up_threshold),
            scale_down_boundary: self.scale_down_boundary.unwrap_or(base.scale_down_boundary),
            max_scale_up_replicas: self
                .max_scale_up_replicas
                .unwrap_or(base.max_scale_up_replicas),
            max_scale_up_percent: self
                .max_scale_up_percent
                .unwrap_or(base.max_scale_up_percent),
            scale_down_stabilization_seconds: self
                .scale_down_stabilization_seconds
                .unwrap_or(base.scale_down_stabilization_seconds),
        };
        let out_of_range = |field, value, set: Option<f64>, requirement: String| {
            Err(ConfigError::OutOfRange {
                key: key.to_string(),
                field,
                requirement,
                value,
                inherited: set.is_none(),
            })
        };
        // Written so that NaN fails every check.
        let kv = config.kv_cache_threshold;
        if !(kv > 0.0 && kv <= 1.0) {
            let requirement = "in (0, 1]".to_string();
            return out_of_range(
                Field::KvCacheThreshold,
                kv,
                self.kv_cache_threshold,
                requirement,
            );
        }
        let queue = config.queue_length_threshold;
        if !(queue > 0.0 && queue.is_finite()) {
            let requirement = "a finite number > 0".to_string();
            return out_of_range(
                Field::QueueLengthThreshold,
                queue,
                self.queue_length_threshold,
                requirement,
            );
        }
        let trigger = config.kv_spare_trigger;
        if !(trigger >= 0.0 && trigger <= kv) {
            let requirement = format!("in [0, kvCacheThreshold = {kv}]");
            return out_of_range(
                Field::KvSpareTrigger,
                trigger,
                self.kv_spare_trigger,
                requirement,
            );
        }
        let trigger = config.queue_spare_trigger;
        if !(trigger >= 0.0 && trigger <= queue) {
            let requirement = format!("in [0, queueLengthThreshold = {queue}]");
            return out_of_range(
                Field::QueueSpareTrigger,
                trigger,
                self.queue_spare_trigger,
                requirement,
            );
        }
        let up = config.scale_up_threshold;
        if !(up > 0.0 && up <= 1.0) {
            let requirement = "in (0, 1]".to_string();
            return out_of_range(
                Field::ScaleUpThreshold,
                up,
                self.scale_up_threshold,
                requirement,
            );
        }
        let down = config.scale_down_boundary;
        if !(down > 0.0 && down < up) {
            let requirement = format!("in (0, scaleUpThreshold = {up})");
            return out_of_range(
                Field::ScaleDownBoundary,
                down,
                self.scale_down_boundary,
                requirement,
            );
        }
        let step = config.max_scale_up_replicas;
        if step == 0 {
            let requirement = "at least 1".to_string();
            let set = self.max_scale_up_replicas.map(f64::from);
            return out_of_range(Field::MaxScaleUpReplicas, 0.0, set, requirement);
        }
        let percent = config.max_scale_up_percent;
        if !(0.0..=10_000.0).contains(&percent) {
            let requirement = "in [0, 10000]".to_string();
            return out_of_range(
                Field::MaxScaleUpPercent,
                percent,
                self.max_scale_up_percent,
                requirement,
            );
        }
        let window = config.scale_down_stabilization_seconds;
        if window > MAX_STABILIZATION_SECONDS {
            let requirement = format!("at most {MAX_STABILIZATION_SECONDS}");
            let set = self.scale_down_stabilization_seconds.map(f64::from);
            return out_of_range(
                Field::ScaleDownStabilizationSeconds,
                f64::from(window),
                set,
                requirement,
            );
        }
        Ok(config)
    }

    /// `model_id` and `namespace` of an override, both required and non-empty.
    fn identity(&self, key: &str) -> Result<(String, String), ConfigError> {
        let required = |value: &Option<String>, field| match value {
            Some(v) if !v.trim().is_empty() => Ok(v.clone()),
            _ => Err(ConfigError::MissingIdentity {
                key: key.to_string(),
                field,
            }),
        };
        Ok((
            required(&self.model_id, "model_id")?,
            required(&self.namespace, "namespace")?,
        ))
    }
}

impl SaturationConfigSet {
    /// Validates a ConfigMap's `data` map (as the Kubernetes controller sees it).
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let default = match data.get(DEFAULT_KEY) {
            Some(text) => {
                let raw = RawEntry::parse(DEFAULT_KEY, text)?;
                if raw.model_id.is_some() {
                    return Err(ConfigError::IdentityInDefault { field: "model_id" });
                }
                if raw.namespace.is_some() {
                    return Err(ConfigError::IdentityInDefault { field: "namespace" });
                }
                raw.resolve(DEFAULT_KEY, SaturationConfig::default())?
            }
            None => SaturationConfig::default(),
        };

        let mut overrides: BTreeMap<(String, String), ModelOverride> = BTreeMap::new();
        // BTreeMap order: the first of two duplicates is the smaller key.
        for (key, text) in data.iter().filter(|(k, _)| *k != DEFAULT_KEY) {
            let raw = RawEntry::parse(key, text)?;
            let (model_id, namespace) = raw.identity(key)?;
            let config = raw.resolve(key, default)?;
            let slot = (namespace.clone(), model_id.clone());
            if let Some(first) = overrides.get(&slot) {
                return Err(ConfigError::DuplicateOverride {
                    first: first.key.clone(),
                    second: key.clone(),
                    model_id,
                    namespace,
                });
            }
            overrides.insert(
                slot,
                ModelOverride {
                    key: key.clone(),
                    model_id,
                    namespace,
                    config,
                },
            );
        }
        Ok(SaturationConfigSet { default, overrides })
    }

    /// Validates a file holding the whole ConfigMap (`apiVersion: v1`, `kind: ConfigMap`).
    pub fn from_yaml_file_contents(text: &str) -> Result<Self, ConfigError> {
        Self::from_data(&super::config_map_data(text).map_err(ConfigError::File)?)
    }

    /// The thresholds for one model: its override when one names exactly this
    /// `(model_id, namespace)`, else `default`.
    pub fn for_model(&self, model_id: &str, namespace: &str) -> SaturationConfig {
        // Asked for every arriving sample: without overrides, no key is built.
        if self.overrides.is_empty() {
            return self.default;
        }
        self.overrides
            .get(&(namespace.to_string(), model_id.to_string()))
            .map_or(self.default, |o| o.config)
    }

    /// The effective global thresholds.
    pub fn default_config(&self) -> SaturationConfig {
        self.default
    }

    /// The per-model overrides, ordered by namespace then model.
    pub fn overrides(&self) -> impl Iterator<Item = &ModelOverride> {
        self.overrides.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error(entries: &[(&str, &str)]) -> String {
        SaturationConfigSet::from_data(&data(entries))
            .expect_err("config must be rejected")
            .to_string()
    }

    const EXAMPLE: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: saturation-scaling-config}
data:
  default: |
    kvCacheThreshold: 0.80
    queueLengthThreshold: 5
    kvSpareTrigger: 0.1
    queueSpareTrigger: 3
  llama-8b-prod: |
    model_id: meta/llama-3.1-8b
    namespace: llm-inference
    kvCacheThreshold: 0.70
"#;

    #[test]
    fn empty_data_gives_built_in_defaults() {
        let set = SaturationConfigSet::from_data(&BTreeMap::new()).unwrap();
        assert_eq!(set, SaturationConfigSet::default());
        assert_eq!(
            set.for_model("any", "ns"),
            SaturationConfig {
                kv_cache_threshold: 0.80,
                queue_length_threshold: 5.0,
                kv_spare_trigger: 0.1,
                queue_spare_trigger: 3.0,
                ..SaturationConfig::default()
            }
        );
    }

    #[test]
    fn example_configmap_parses_with_override_precedence() {
        let set = SaturationConfigSet::from_yaml_file_contents(EXAMPLE).unwrap();
        let prod = set.for_model("meta/llama-3.1-8b", "llm-inference");
        assert_eq!(prod.kv_cache_threshold, 0.70);
        assert_eq!(prod.queue_length_threshold, 5.0);
        // Same model elsewhere, or another model here: `default`.
        assert_eq!(
            set.for_model("meta/llama-3.1-8b", "staging"),
            set.default_config()
        );
        assert_eq!(
            set.for_model("other", "llm-inference"),
            set.default_config()
        );
        let keys: Vec<&str> = set.overrides().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["llama-8b-prod"]);
    }

    #[test]
    fn override_inherits_default_which_inherits_built_ins() {
        let set = SaturationConfigSet::from_data(&data(&[
            ("default", "kvCacheThreshold: 0.9\nqueueSpareTrigger: 2"),
            ("a", "model_id: m\nnamespace: ns\nqueueLengthThreshold: 8"),
        ]))
        .unwrap();
        assert_eq!(
            set.default_config(),
            SaturationConfig {
                kv_cache_threshold: 0.9,
                queue_length_threshold: 5.0,
                kv_spare_trigger: 0.1,
                queue_spare_trigger: 2.0,
                ..SaturationConfig::default()
            }
        );
        assert_eq!(
            set.for_model("m", "ns"),
            SaturationConfig {
                kv_cache_threshold: 0.9,
                queue_length_threshold: 8.0,
                kv_spare_trigger: 0.1,
                queue_spare_trigger: 2.0,
                ..SaturationConfig::default()
            }
        );
    }

    #[test]
    fn overrides_are_matched_on_exact_model_and_namespace() {
        let set = SaturationConfigSet::from_data(&data(&[
            ("a", "model_id: m\nnamespace: one\nkvCacheThreshold: 0.5"),
            ("b", "model_id: m\nnamespace: two\nkvCacheThreshold: 0.6"),
        ]))
        .unwrap();
        assert_eq!(set.for_model("m", "one").kv_cache_threshold, 0.5);
        assert_eq!(set.for_model("m", "two").kv_cache_threshold, 0.6);
        assert_eq!(set.for_model("m", "three").kv_cache_threshold, 0.8);
        assert_eq!(set.for_model("M", "one").kv_cache_threshold, 0.8);
    }

    #[test]
    fn empty_values_set_nothing() {
        let set = SaturationConfigSet::from_data(&data(&[("default", ""), ("x", "# nothing\n")]));
        // `x` is an override without identity.
        assert_eq!(
            set.unwrap_err(),
            ConfigError::MissingIdentity {
                key: "x".into(),
                field: "model_id"
            }
        );
        let set = SaturationConfigSet::from_data(&data(&[("default", "  \n")])).unwrap();
        assert_eq!(set.default_config(), SaturationConfig::default());
    }

    #[test]
    fn range_errors_name_key_field_and_value() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(
                    "llama-8b-prod",
                    "model_id: m\nnamespace: n\nkvCacheThreshold: 1.5",
                )],
                r#"saturation config key "llama-8b-prod": kvCacheThreshold must be in (0, 1], got 1.5"#,
            ),
            (
                &[("default", "kvCacheThreshold: 0")],
                r#"saturation config key "default": kvCacheThreshold must be in (0, 1], got 0"#,
            ),
            (
                &[("default", "kvCacheThreshold: .nan")],
                r#"saturation config key "default": kvCacheThreshold must be in (0, 1], got NaN"#,
            ),
            (
                &[("default", "queueLengthThreshold: 0")],
                r#"saturation config key "default": queueLengthThreshold must be a finite number > 0, got 0"#,
            ),
            (
                &[("default", "queueLengthThreshold: .inf")],
                r#"saturation config key "default": queueLengthThreshold must be a finite number > 0, got inf"#,
            ),
            (
                &[("default", "kvSpareTrigger: -0.1")],
                r#"saturation config key "default": kvSpareTrigger must be in [0, kvCacheThreshold = 0.8], got -0.1"#,
            ),
            (
                &[("default", "kvCacheThreshold: 0.5\nkvSpareTrigger: 0.6")],
                r#"saturation config key "default": kvSpareTrigger must be in [0, kvCacheThreshold = 0.5], got 0.6"#,
            ),
            (
                &[("default", "queueSpareTrigger: 6")],
                r#"saturation config key "default": queueSpareTrigger must be in [0, queueLengthThreshold = 5], got 6"#,
            ),
            (
                &[("default", "queueSpareTrigger: -1")],
                r#"saturation config key "default": queueSpareTrigger must be in [0, queueLengthThreshold = 5], got -1"#,
            ),
            // An override lowering a threshold below the inherited trigger.
            (
                &[
                    ("default", "queueSpareTrigger: 4"),
                    (
                        "small",
                        "model_id: m\nnamespace: n\nqueueLengthThreshold: 2",
                    ),
                ],
                r#"saturation config key "small": queueSpareTrigger must be in [0, queueLengthThreshold = 2], got 4 (not set in this key, inherited)"#,
            ),
        ];
        for (entries, expected) in cases {
            assert_eq!(error(entries), *expected, "entries {entries:?}");
        }
    }

    #[test]
    fn step_and_window_limits_are_validated_and_inherited() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("default", "maxScaleUpReplicas: 0")],
                r#"saturation config key "default": maxScaleUpReplicas must be at least 1, got 0"#,
            ),
            (
                &[("default", "maxScaleUpPercent: -5")],
                r#"saturation config key "default": maxScaleUpPercent must be in [0, 10000], got -5"#,
            ),
            (
                &[("default", "maxScaleUpPercent: .nan")],
                r#"saturation config key "default": maxScaleUpPercent must be in [0, 10000], got NaN"#,
            ),
            (
                &[(
                    "x",
                    "model_id: m\nnamespace: n\nscaleDownStabilizationSeconds: 3601",
                )],
                r#"saturation config key "x": scaleDownStabilizationSeconds must be at most 3600, got 3601"#,
            ),
        ];
        for (entries, expected) in cases {
            assert_eq!(error(entries), *expected, "entries {entries:?}");
        }
        let msg = error(&[("default", "maxScaleUpReplicas: -1")]);
        assert!(msg.contains("maxScaleUpReplicas: invalid type"), "{msg}");

        let set = SaturationConfigSet::from_data(&data(&[
            (
                "default",
                "scaleDownStabilizationSeconds: 60\nmaxScaleUpReplicas: 2",
            ),
            ("a", "model_id: m\nnamespace: ns\nmaxScaleUpPercent: 0"),
        ]))
        .unwrap();
        let model = set.for_model("m", "ns");
        assert_eq!(
            model.scale_down_window(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            (model.max_scale_up_replicas, model.max_scale_up_percent),
            (2, 0.0)
        );
    }

    #[test]
    fn the_analyzer_is_chosen_per_model_with_v2_thresholds_checked() {
        let set = SaturationConfigSet::from_data(&data(&[
            ("default", "scaleUpThreshold: 0.9"),
            ("v2", "model_id: m\nnamespace: ns\nanalyzerName: saturation"),
            ("v1", "model_id: other\nnamespace: ns\nanalyzerName: \"\""),
        ]))
        .unwrap();
        assert_eq!(set.default_config().analyzer_name, Analyzer::Capacity);
        let v2 = set.for_model("m", "ns");
        assert_eq!(v2.analyzer_name, Analyzer::Tokens);
        assert_eq!((v2.scale_up_threshold, v2.scale_down_boundary), (0.9, 0.70));
        assert_eq!(
            set.for_model("other", "ns").analyzer_name,
            Analyzer::Capacity
        );
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("default", "analyzerName: tokens")],
                r#"saturation config key "default": analyzerName must be "" (WVA's V1 rules) or "saturation" (the token-based V2), got "tokens""#,
            ),
            (
                &[("default", "scaleUpThreshold: 1.2")],
                r#"saturation config key "default": scaleUpThreshold must be in (0, 1], got 1.2"#,
            ),
            (
                &[("default", "scaleDownBoundary: 0.9")],
                r#"saturation config key "default": scaleDownBoundary must be in (0, scaleUpThreshold = 0.85), got 0.9"#,
            ),
            (
                &[
                    ("default", "scaleDownBoundary: 0.6"),
                    ("x", "model_id: m\nnamespace: n\nscaleUpThreshold: 0.5"),
                ],
                r#"saturation config key "x": scaleDownBoundary must be in (0, scaleUpThreshold = 0.5), got 0.6 (not set in this key, inherited)"#,
            ),
        ];
        for (entries, expected) in cases {
            assert_eq!(error(entries), *expected, "entries {entries:?}");
        }
    }

    #[test]
    fn a_scale_up_is_capped_by_the_larger_of_replicas_and_percent() {
        let config = SaturationConfig::default();
        // 4 replicas or 100 %, whichever is more.
        for (replicas, cap) in [(0, 4), (1, 4), (4, 4), (5, 5), (12, 12)] {
            assert_eq!(config.max_scale_up(replicas), cap, "{replicas} replicas");
        }
        let one_at_a_time = SaturationConfig {
            max_scale_up_replicas: 1,
            max_scale_up_percent: 0.0,
            ..config
        };
        assert_eq!(one_at_a_time.max_scale_up(40), 1);
        let half = SaturationConfig {
            max_scale_up_replicas: 1,
            max_scale_up_percent: 50.0,
            ..config
        };
        assert_eq!(half.max_scale_up(5), 3, "50 % of 5 rounds up");
        let huge = SaturationConfig {
            max_scale_up_percent: 10_000.0,
            ..config
        };
        assert_eq!(huge.max_scale_up(u32::MAX), u32::MAX, "saturates");
    }

    #[test]
    fn boundary_values_are_accepted() {
        let set = SaturationConfigSet::from_data(&data(&[(
            "default",
            "kvCacheThreshold: 1\nkvSpareTrigger: 1\nqueueLengthThreshold: 0.5\nqueueSpareTrigger: 0.5",
        )]))
        .unwrap();
        assert_eq!(set.default_config().kv_spare_trigger, 1.0);
        let set = SaturationConfigSet::from_data(&data(&[(
            "default",
            "kvSpareTrigger: 0\nqueueSpareTrigger: 0",
        )]))
        .unwrap();
        assert_eq!(set.default_config().queue_spare_trigger, 0.0);
    }

    #[test]
    fn unknown_fields_and_bad_yaml_name_the_key() {
        let msg = error(&[("llama", "model_id: m\nnamespace: n\nkvCacheTreshold: 0.7")]);
        assert!(
            msg.starts_with(
                r#"saturation config key "llama": invalid YAML: unknown field `kvCacheTreshold`"#
            ),
            "{msg}"
        );
        let msg = error(&[("default", "kvCacheThreshold: [0.7")]);
        assert!(
            msg.starts_with(r#"saturation config key "default": invalid YAML: "#),
            "{msg}"
        );
        let msg = error(&[("default", "kvCacheThreshold: high")]);
        assert!(
            msg.starts_with(
                r#"saturation config key "default": invalid YAML: kvCacheThreshold: invalid type"#
            ),
            "{msg}"
        );
        let msg = error(&[("default", "- 0.7")]);
        assert!(
            msg.starts_with(r#"saturation config key "default": invalid YAML: "#),
            "{msg}"
        );
    }

    #[test]
    fn override_identity_is_required_and_only_in_overrides() {
        assert_eq!(
            error(&[("x", "namespace: n\nkvCacheThreshold: 0.7")]),
            r#"saturation config key "x": model_id is required (and must not be empty) in a per-model override"#
        );
        assert_eq!(
            error(&[("x", "model_id: m")]),
            r#"saturation config key "x": namespace is required (and must not be empty) in a per-model override"#
        );
        assert_eq!(
            error(&[("x", "model_id: ' '\nnamespace: n")]),
            r#"saturation config key "x": model_id is required (and must not be empty) in a per-model override"#
        );
        assert_eq!(
            error(&[("default", "model_id: m")]),
            r#"saturation config key "default": model_id is only allowed in per-model overrides"#
        );
        assert_eq!(
            error(&[("default", "namespace: n")]),
            r#"saturation config key "default": namespace is only allowed in per-model overrides"#
        );
    }

    #[test]
    fn two_overrides_for_one_model_name_both_keys() {
        assert_eq!(
            error(&[
                ("prod-b", "model_id: m\nnamespace: n\nkvCacheThreshold: 0.6"),
                ("prod-a", "model_id: m\nnamespace: n\nkvCacheThreshold: 0.7"),
            ]),
            r#"saturation config keys "prod-a" and "prod-b" both override model "m" in namespace "n""#
        );
    }

    #[test]
    fn configmap_document_is_checked() {
        let cases = [
            (
                "",
                "saturation config file: empty document; expected a ConfigMap",
            ),
            (
                "apiVersion: v1\nkind: Secret\ndata: {}",
                r#"saturation config file: kind must be "ConfigMap", got "Secret""#,
            ),
            (
                "kind: ConfigMap\ndata: {}",
                r#"saturation config file: apiVersion must be "v1", got nothing"#,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                SaturationConfigSet::from_yaml_file_contents(text)
                    .unwrap_err()
                    .to_string(),
                expected
            );
        }
        let msg = SaturationConfigSet::from_yaml_file_contents(
            "apiVersion: v1\nkind: ConfigMap\ndata: [",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with("saturation config file: invalid YAML: "),
            "{msg}"
        );
        // A value must be a string (a YAML block), not a nested mapping.
        let msg = SaturationConfigSet::from_yaml_file_contents(
            "apiVersion: v1\nkind: ConfigMap\ndata:\n  default:\n    kvCacheThreshold: 0.7\n",
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("data.default: invalid type: map"), "{msg}");
        // No data at all: built-in defaults.
        let set = SaturationConfigSet::from_yaml_file_contents("apiVersion: v1\nkind: ConfigMap\n")
            .unwrap();
        assert_eq!(set, SaturationConfigSet::default());
    }

    #[test]
    fn file_errors_from_data_keep_the_key() {
        let text = "apiVersion: v1\nkind: ConfigMap\ndata:\n  bad: |\n    model_id: m\n    namespace: n\n    kvSpareTrigger: 0.9\n";
        assert_eq!(
            SaturationConfigSet::from_yaml_file_contents(text)
                .unwrap_err()
                .to_string(),
            r#"saturation config key "bad": kvSpareTrigger must be in [0, kvCacheThreshold = 0.8], got 0.9"#
        );
    }
}
