//! HYBRID mode's configuration, from the `serviceclass` ConfigMap: the
//! service classes ([`super::service_class`]), and two keys of our own:
//!
//! - `headroom`: the share of capacity planned above the measured arrival
//!   rate (default `0.1`, 10 %), so that the next rise is carried before
//!   it is measured;
//! - `acceleratorLimits`: a YAML map of accelerator type to the most
//!   replicas of that type the plans may use across the cluster (say, the
//!   GPUs there are); where it binds, higher-priority classes are served
//!   first. Types not listed are not limited.

use std::collections::BTreeMap;

use thiserror::Error;

use super::service_class::{ServiceClassError, ServiceClassSet};
use crate::hybrid::profile::FitRules;

pub const HEADROOM_KEY: &str = "headroom";
pub const LIMITS_KEY: &str = "acceleratorLimits";
pub const DEFAULT_HEADROOM: f64 = 0.1;

/// A validated HYBRID configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridConfig {
    pub classes: ServiceClassSet,
    pub headroom: f64,
    pub ceilings: BTreeMap<String, u32>,
    pub rules: FitRules,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            classes: ServiceClassSet::default(),
            headroom: DEFAULT_HEADROOM,
            ceilings: BTreeMap::new(),
            rules: FitRules::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HybridConfigError {
    #[error(transparent)]
    Classes(#[from] ServiceClassError),
    #[error(
        "serviceclass ConfigMap key {HEADROOM_KEY:?}: {0:?} is not a number from 0 to 10 (0.1 plans 10 % above the load)"
    )]
    Headroom(String),
    #[error("serviceclass ConfigMap key {LIMITS_KEY:?}: {0}")]
    Limits(String),
    #[error("serviceclass config file: {0}")]
    File(String),
}

impl HybridConfig {
    /// Validates the `serviceclass` ConfigMap's `data` map.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, HybridConfigError> {
        let classes = ServiceClassSet::from_data(data)?;
        let headroom = match data.get(HEADROOM_KEY) {
            None => DEFAULT_HEADROOM,
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|h| (0.0..=10.0).contains(h))
                .ok_or_else(|| HybridConfigError::Headroom(text.clone()))?,
        };
        let ceilings = match data.get(LIMITS_KEY) {
            None => BTreeMap::new(),
            Some(text) => serde_yaml::from_str::<Option<BTreeMap<String, u32>>>(text)
                .map_err(|e| {
                    HybridConfigError::Limits(format!(
                        "expected a map of accelerator type to a whole number of replicas: {e}"
                    ))
                })?
                .unwrap_or_default(),
        };
        Ok(HybridConfig {
            classes,
            headroom,
            ceilings,
            rules: FitRules::default(),
        })
    }

    /// Validates a file holding the whole ConfigMap (`apiVersion: v1`,
    /// `kind: ConfigMap`), as standalone mode reads it.
    pub fn from_yaml_file_contents(text: &str) -> Result<Self, HybridConfigError> {
        Self::from_data(&super::config_map_data(text).map_err(HybridConfigError::File)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_our_keys_and_values_with_them() {
        let config = HybridConfig::from_data(&BTreeMap::new()).unwrap();
        assert_eq!(config, HybridConfig::default());
        let config = HybridConfig::from_data(&data(&[
            (HEADROOM_KEY, " 0.25 "),
            (LIMITS_KEY, "L4: 8\nH100: 2\n"),
        ]))
        .unwrap();
        assert_eq!(config.headroom, 0.25);
        assert_eq!(
            config.ceilings,
            BTreeMap::from([("H100".to_string(), 2), ("L4".to_string(), 8)])
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for value in ["-0.1", "lots", "11", "NaN"] {
            let err = HybridConfig::from_data(&data(&[(HEADROOM_KEY, value)])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("serviceclass ConfigMap key \"headroom\": ")
            );
        }
        let err = HybridConfig::from_data(&data(&[(LIMITS_KEY, "L4: -1")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("serviceclass ConfigMap key \"acceleratorLimits\": expected a map"),
            "{err}"
        );
        let err = HybridConfig::from_data(&data(&[("serviceClasses", "- name: x")])).unwrap_err();
        assert_eq!(err.to_string(), "serviceclass entry 0: model is required");
    }

    const FILE: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: serviceclass
data:
  serviceClasses: |
    - name: Premium
      model: meta/llama-3.1-8b
      priority: 1
      slo-itl: 24
      slo-ttw: 500
    - name: Standard
      model: meta/llama-3.1-8b
      priority: 5
      slo-itl: 50
      slo-ttw: 1000
  headroom: \"0.2\"
  acceleratorLimits: |
    L4: 8
";

    #[test]
    fn a_file_holds_the_whole_config_map() {
        let config = HybridConfig::from_yaml_file_contents(FILE).unwrap();
        let premium = config
            .classes
            .for_model("meta/llama-3.1-8b", None)
            .unwrap()
            .unwrap();
        assert_eq!((premium.name.as_str(), premium.priority), ("Premium", 1));
        let standard = config
            .classes
            .for_model("meta/llama-3.1-8b", Some("Standard"))
            .unwrap()
            .unwrap();
        assert_eq!(standard.objectives.ttft_ms, 1000.0);
        assert_eq!(config.headroom, 0.2);
        assert_eq!(config.ceilings, BTreeMap::from([("L4".to_string(), 8)]));

        // A ConfigMap without data: no classes.
        let empty = HybridConfig::from_yaml_file_contents("apiVersion: v1\nkind: ConfigMap\n");
        assert_eq!(empty.unwrap(), HybridConfig::default());
    }

    #[test]
    fn a_bad_file_says_what_is_wrong() {
        let err =
            HybridConfig::from_yaml_file_contents("apiVersion: v1\nkind: Secret\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "serviceclass config file: kind must be \"ConfigMap\", got \"Secret\""
        );
        let err = HybridConfig::from_yaml_file_contents("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "serviceclass config file: empty document; expected a ConfigMap"
        );
        let err = HybridConfig::from_yaml_file_contents("data: [").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("serviceclass config file: invalid YAML: "),
            "{err}"
        );
        // A valid document with an invalid entry names the entry and field.
        let err = HybridConfig::from_yaml_file_contents(&FILE.replace("slo-itl: 24", "slo-itl: 0"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "serviceclass entry 0 (\"Premium\"): slo-itl must be a positive number of milliseconds, got 0"
        );
        let err = HybridConfig::from_yaml_file_contents(&FILE.replace("\"0.2\"", "\"lots\""))
            .unwrap_err();
        assert_eq!(err, HybridConfigError::Headroom("lots".into()));
    }
}
