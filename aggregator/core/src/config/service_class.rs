//! The `serviceclass` ConfigMap of HYBRID mode: service tiers with latency
//! objectives, per model.
//!
//! Its `serviceClasses` key holds a YAML list; each entry names a class,
//! the model it applies to, a priority (1 is the highest) and two
//! objectives in milliseconds: `slo-itl`, the time per output token, and
//! `slo-ttw`, the time to the first token:
//!
//! ```yaml
//! serviceClasses: |
//!   - name: Premium
//!     model: meta/llama-3.1-8b
//!     priority: 1
//!     slo-itl: 24
//!     slo-ttw: 500
//! ```
//!
//! A model's traffic is served under one class: the one its
//! VariantAutoscalings name in the [`CLASS_ANNOTATION`], else the model's
//! highest-priority class. vLLM does not tell requests of one class from
//! another's, so a model's load cannot be split between classes.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

/// The ConfigMap key that holds the list.
pub const CLASSES_KEY: &str = "serviceClasses";

/// The VariantAutoscaling annotation that names its model's class.
pub const CLASS_ANNOTATION: &str = "wva.llmd.ai/service-class";

/// One class of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceClass {
    pub name: String,
    pub model: String,
    /// 1 is the highest; under a ceiling, lower numbers are served first.
    pub priority: u32,
    pub objectives: Objectives,
}

/// Latency objectives, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objectives {
    /// Time per output token (inter-token latency).
    pub itl_ms: f64,
    /// Time to the first token.
    pub ttft_ms: f64,
}

/// A validated `serviceclass` ConfigMap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceClassSet {
    /// By model, highest priority first (then by name).
    by_model: BTreeMap<String, Vec<ServiceClass>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServiceClassError {
    #[error("serviceclass ConfigMap key {CLASSES_KEY:?}: invalid YAML: {0}")]
    Yaml(String),
    #[error("serviceclass entry {index}: {field} is required")]
    Missing { index: usize, field: &'static str },
    #[error(
        "serviceclass entry {index} ({name:?}): priority must be a whole number from 1 (the highest), got {value}"
    )]
    Priority {
        index: usize,
        name: String,
        value: String,
    },
    #[error(
        "serviceclass entry {index} ({name:?}): {field} must be a positive number of milliseconds, got {value}"
    )]
    Objective {
        index: usize,
        name: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "serviceclass entries {first} and {second} both define class {name:?} for model {model:?}"
    )]
    Duplicate {
        first: usize,
        second: usize,
        name: String,
        model: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: Option<String>,
    model: Option<String>,
    priority: Option<serde_yaml::Value>,
    #[serde(rename = "slo-itl")]
    slo_itl: Option<serde_yaml::Value>,
    #[serde(rename = "slo-ttw")]
    slo_ttw: Option<serde_yaml::Value>,
}

/// A value as the user wrote it, for an error message.
fn shown(value: &serde_yaml::Value) -> String {
    serde_yaml::to_string(value).map_or_else(|_| format!("{value:?}"), |s| s.trim().to_string())
}

impl RawClass {
    fn resolve(self, index: usize) -> Result<ServiceClass, ServiceClassError> {
        let required = |value: Option<String>, field| {
            value
                .filter(|v| !v.trim().is_empty())
                .ok_or(ServiceClassError::Missing { index, field })
        };
        let name = required(self.name, "name")?;
        let model = required(self.model, "model")?;
        let priority = self
            .priority
            .ok_or(ServiceClassError::Missing {
                index,
                field: "priority",
            })
            .and_then(
                |value| match value.as_u64().and_then(|p| u32::try_from(p).ok()) {
                    Some(p) if p >= 1 => Ok(p),
                    _ => Err(ServiceClassError::Priority {
                        index,
                        name: name.clone(),
                        value: shown(&value),
                    }),
                },
            )?;
        let objective = |value: Option<serde_yaml::Value>, field| {
            let value = value.ok_or(ServiceClassError::Missing { index, field })?;
            match value.as_f64() {
                Some(ms) if ms.is_finite() && ms > 0.0 => Ok(ms),
                _ => Err(ServiceClassError::Objective {
                    index,
                    name: name.clone(),
                    field,
                    value: shown(&value),
                }),
            }
        };
        let objectives = Objectives {
            itl_ms: objective(self.slo_itl, "slo-itl")?,
            ttft_ms: objective(self.slo_ttw, "slo-ttw")?,
        };
        Ok(ServiceClass {
            name,
            model,
            priority,
            objectives,
        })
    }
}

impl ServiceClassSet {
    /// Validates a ConfigMap's `data` map; without the key there are no
    /// classes.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ServiceClassError> {
        let Some(text) = data.get(CLASSES_KEY) else {
            return Ok(ServiceClassSet::default());
        };
        let raw: Vec<RawClass> = serde_yaml::from_str::<Option<Vec<RawClass>>>(text)
            .map_err(|e| ServiceClassError::Yaml(e.to_string()))?
            .unwrap_or_default();
        let mut by_model: BTreeMap<String, Vec<(usize, ServiceClass)>> = BTreeMap::new();
        for (index, raw) in raw.into_iter().enumerate() {
            let class = raw.resolve(index)?;
            let classes = by_model.entry(class.model.clone()).or_default();
            if let Some((first, _)) = classes.iter().find(|(_, c)| c.name == class.name) {
                return Err(ServiceClassError::Duplicate {
                    first: *first,
                    second: index,
                    name: class.name,
                    model: class.model,
                });
            }
            classes.push((index, class));
        }
        let by_model = by_model
            .into_iter()
            .map(|(model, mut classes)| {
                classes.sort_by(|(_, a), (_, b)| {
                    a.priority
                        .cmp(&b.priority)
                        .then_with(|| a.name.cmp(&b.name))
                });
                (model, classes.into_iter().map(|(_, c)| c).collect())
            })
            .collect();
        Ok(ServiceClassSet { by_model })
    }

    /// The class a model is served under: the one named, else its
    /// highest-priority class. `Err` names the classes the model has when
    /// the name is none of them.
    pub fn for_model(
        &self,
        model: &str,
        named: Option<&str>,
    ) -> Result<Option<&ServiceClass>, String> {
        let classes = self.by_model.get(model).map_or(&[][..], Vec::as_slice);
        match named {
            None => Ok(classes.first()),
            Some(name) => match classes.iter().find(|c| c.name == name) {
                Some(class) => Ok(Some(class)),
                None => Err(format!(
                    "service class {name:?} is not defined for model {model:?} (defined: {})",
                    if classes.is_empty() {
                        "none".to_string()
                    } else {
                        classes
                            .iter()
                            .map(|c| format!("{:?}", c.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(CLASSES_KEY.to_string(), text.to_string())])
    }

    const GUIDE: &str = "
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
- name: Freemium
  model: meta/llama-3.1-8b
  priority: 10
  slo-itl: 100
  slo-ttw: 2000
";

    #[test]
    fn the_guides_example_reads_and_a_model_defaults_to_its_highest_priority_class() {
        let set = ServiceClassSet::from_data(&data(GUIDE)).unwrap();
        let class = set.for_model("meta/llama-3.1-8b", None).unwrap().unwrap();
        assert_eq!(class.name, "Premium");
        assert_eq!(
            class.objectives,
            Objectives {
                itl_ms: 24.0,
                ttft_ms: 500.0
            }
        );
        let named = set.for_model("meta/llama-3.1-8b", Some("Freemium"));
        assert_eq!(named.unwrap().unwrap().priority, 10);
        assert_eq!(set.for_model("other", None), Ok(None));
    }

    #[test]
    fn an_unknown_class_names_the_ones_there_are() {
        let set = ServiceClassSet::from_data(&data(GUIDE)).unwrap();
        let err = set
            .for_model("meta/llama-3.1-8b", Some("Gold"))
            .unwrap_err();
        assert_eq!(
            err,
            "service class \"Gold\" is not defined for model \"meta/llama-3.1-8b\" \
             (defined: \"Premium\", \"Standard\", \"Freemium\")"
        );
        let err = set.for_model("other", Some("Gold")).unwrap_err();
        assert!(err.ends_with("(defined: none)"), "{err}");
    }

    #[test]
    fn no_key_or_an_empty_list_is_no_classes() {
        assert!(
            ServiceClassSet::from_data(&BTreeMap::new())
                .unwrap()
                .is_empty()
        );
        assert!(ServiceClassSet::from_data(&data("")).unwrap().is_empty());
        assert!(ServiceClassSet::from_data(&data("[]")).unwrap().is_empty());
    }

    #[test]
    fn invalid_entries_are_named_with_what_is_wrong() {
        let entry = |fields: &str| format!("- name: Gold\n  model: m\n{fields}");
        let full = "  priority: 1\n  slo-itl: 20\n  slo-ttw: 300\n";
        let cases = [
            (
                "- model: m\n  priority: 1\n  slo-itl: 20\n  slo-ttw: 300\n".to_string(),
                "serviceclass entry 0: name is required",
            ),
            (
                entry("  priority: 0\n  slo-itl: 20\n  slo-ttw: 300\n"),
                "serviceclass entry 0 (\"Gold\"): priority must be a whole number from 1 (the highest), got 0",
            ),
            (
                entry("  priority: high\n  slo-itl: 20\n  slo-ttw: 300\n"),
                "serviceclass entry 0 (\"Gold\"): priority must be a whole number from 1 (the highest), got high",
            ),
            (
                entry("  priority: 1\n  slo-itl: -5\n  slo-ttw: 300\n"),
                "serviceclass entry 0 (\"Gold\"): slo-itl must be a positive number of milliseconds, got -5",
            ),
            (
                entry("  priority: 1\n  slo-itl: 20\n"),
                "serviceclass entry 0: slo-ttw is required",
            ),
            (
                format!("{}{}", entry(full), entry(full)),
                "serviceclass entries 0 and 1 both define class \"Gold\" for model \"m\"",
            ),
        ];
        for (text, message) in cases {
            let err = ServiceClassSet::from_data(&data(&text)).unwrap_err();
            assert_eq!(err.to_string(), message, "{text}");
        }
        let err = ServiceClassSet::from_data(&data(&entry("  slo-tpot: 20\n"))).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `slo-tpot`"),
            "{err}"
        );
    }

    #[test]
    fn the_same_class_name_may_serve_several_models() {
        let text = "
- {name: Gold, model: a, priority: 1, slo-itl: 20, slo-ttw: 300}
- {name: Gold, model: b, priority: 2, slo-itl: 30, slo-ttw: 600.5}
";
        let set = ServiceClassSet::from_data(&data(text)).unwrap();
        let b = set.for_model("b", None).unwrap().unwrap();
        assert_eq!((b.priority, b.objectives.ttft_ms), (2, 600.5));
    }
}
