//! Configuration: the main ConfigMap's parameters and the per-model
//! saturation and scale-to-zero ConfigMaps, and HYBRID mode's service
//! classes, with their validation.

use std::collections::BTreeMap;

use serde::Deserialize;

pub mod hybrid;
pub mod params;
pub mod saturation;
pub mod scale_to_zero;
pub mod service_class;

/// The parts of a ConfigMap document a file holds; the rest (metadata,
/// `binaryData`, `immutable`) is Kubernetes' business.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfigMap {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// The `data` of a file holding a whole ConfigMap (`apiVersion: v1`,
/// `kind: ConfigMap`); the error says what is wrong with the document.
pub fn config_map_data(text: &str) -> Result<BTreeMap<String, String>, String> {
    let raw = serde_yaml::from_str::<Option<RawConfigMap>>(text)
        .map_err(|e| format!("invalid YAML: {e}"))?
        .ok_or_else(|| "empty document; expected a ConfigMap".to_string())?;
    let shown = |v: Option<&str>| v.map_or_else(|| "nothing".to_string(), |v| format!("{v:?}"));
    if raw.kind.as_deref() != Some("ConfigMap") {
        return Err(format!(
            "kind must be \"ConfigMap\", got {}",
            shown(raw.kind.as_deref())
        ));
    }
    if raw.api_version.as_deref() != Some("v1") {
        return Err(format!(
            "apiVersion must be \"v1\", got {}",
            shown(raw.api_version.as_deref())
        ));
    }
    Ok(raw.data)
}
