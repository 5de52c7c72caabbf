//! VariantAutoscaling objects read from a YAML file (standalone mode).
//!
//! The file holds the CRD's own YAML (`llmd.ai/v1alpha1`, kind
//! `VariantAutoscaling`), several objects separated by `---`, or a `kind: List`
//! with `items`. Each object is deserialized into a raw shape that mirrors the
//! CRD, then validated into a plain [`VariantAutoscaling`] with defaults
//! applied. Errors say which document (1-based, counting empty ones) and which
//! object they are about.
//!
//! The file may also hold HorizontalPodAutoscalers (`autoscaling/v2`)
//! annotated as scaling targets for workloads that are not vLLM (see
//! [`crate::workload`]); each becomes a [`Variant`] named for its workload,
//! with [`Variant::signal`] set and no model.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::workload::{self, SignalTarget};

pub const API_VERSION: &str = "llmd.ai/v1alpha1";
pub const KIND: &str = "VariantAutoscaling";
/// The label naming the accelerator a variant runs on.
pub const ACCELERATOR_LABEL: &str = "inference.optimization/acceleratorName";
pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_TARGET_KIND: &str = "Deployment";
/// `spec.variantCost` when the object sets none.
pub const DEFAULT_COST: &str = "10.0";
const COST_PATTERN: &str = r"^\d+(\.\d+)?$";

/// Identity of a variant: `namespace/name` of its VariantAutoscaling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct VariantKey {
    pub namespace: String,
    pub name: String,
}

/// For maps that copy a key only when it is new (`entry_ref`).
impl From<&VariantKey> for VariantKey {
    fn from(key: &VariantKey) -> Self {
        key.clone()
    }
}

impl VariantKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        VariantKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for VariantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The workload a variant scales (`spec.scaleTargetRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTarget {
    pub kind: String,
    pub name: String,
    pub api_version: Option<String>,
}

impl ScaleTarget {
    /// Whether `pod` is a name the target's controller gives its pods:
    /// `NAME-HASH-SUFFIX` for a Deployment (its ReplicaSet's template hash,
    /// then the pod's suffix), `NAME-ORDINAL` for a StatefulSet, and any
    /// `NAME-…` for other kinds. For sources whose series name a pod but
    /// not its workload.
    pub fn names_pod(&self, pod: &str) -> bool {
        let Some(rest) = pod
            .strip_prefix(self.name.as_str())
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        let alphanumeric =
            |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric());
        match self.kind.as_str() {
            "Deployment" => rest
                .split_once('-')
                .is_some_and(|(hash, suffix)| alphanumeric(hash) && alphanumeric(suffix)),
            "StatefulSet" => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()),
            _ => !rest.is_empty(),
        }
    }
}

/// A validated VariantAutoscaling with its defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    pub name: String,
    pub namespace: String,
    /// `spec.modelID`: the model name vLLM serves.
    pub model_id: String,
    pub target: ScaleTarget,
    /// `spec.variantCost`, parsed.
    pub cost: f64,
    /// The [`ACCELERATOR_LABEL`] value, empty when the label is absent.
    pub accelerator: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Set for a workload scaled on a forwarded signal instead of a model's
    /// saturation: declared by an annotated HorizontalPodAutoscaler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalTarget>,
}

impl Variant {
    pub fn key(&self) -> VariantKey {
        VariantKey::new(&self.namespace, &self.name)
    }
}

/// Where an object sits in the file: `document 2` or `document 1 item 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based, counting empty documents.
    pub document: usize,
    /// 1-based index in a `kind: List`.
    pub item: Option<usize>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match self.item {
            Some(item) => write!(f, " item {item}"),
            None => Ok(()),
        }
    }
}

/// An object in the file: its position and what it says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub position: Position,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.as_deref().unwrap_or("object");
        match &self.name {
            Some(name) => write!(f, "{} ({kind} {name:?})", self.position),
            None => write!(f, "{} ({kind} without metadata.name)", self.position),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum VariantsError {
    /// Not YAML, or not the shape of the CRD (unknown field, wrong type). The
    /// message carries the field path and the line.
    #[error("document {document}: {message}")]
    Yaml { document: usize, message: String },
    #[error("{at}: {field} {problem}")]
    Invalid {
        at: Box<Location>,
        field: &'static str,
        problem: String,
    },
    #[error("{at}: {key} is already defined by {first}")]
    Duplicate {
        at: Box<Location>,
        key: VariantKey,
        first: Position,
    },
    #[error("{at}: spec.scaleTargetRef {kind} {name:?} is already the target of {other}")]
    SharedTarget {
        at: Box<Location>,
        kind: String,
        name: String,
        other: Box<Location>,
    },
}

/// One document (or List item) as written. Only `metadata` is lenient: the
/// API server adds fields there; everything else rejects unknown fields so a
/// typo (`modelId`) is an error, not a silently missing value.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawObject {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: RawMetadata,
    spec: Option<RawSpec>,
    items: Option<Vec<RawObject>>,
    /// Present in objects exported from a cluster; not an input.
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct RawMetadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    scale_target_ref: Option<RawTargetRef>,
    #[serde(rename = "modelID")]
    model_id: Option<String>,
    variant_cost: Option<String>,
    /// A HorizontalPodAutoscaler's fields; the limits bound a scaling
    /// target, the rest is the HPA's own business.
    min_replicas: Option<i64>,
    max_replicas: Option<i64>,
    metrics: Option<IgnoredAny>,
    behavior: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTargetRef {
    kind: Option<String>,
    name: Option<String>,
    api_version: Option<String>,
}

/// Parses and validates every VariantAutoscaling in `text`. An empty file
/// (or one with only empty documents) is no variants.
pub fn parse_variants(text: &str) -> Result<Vec<Variant>, VariantsError> {
    let mut index = Index::default();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        // Stop at the first error: the document iterator does not recover from one.
        let raw = Option::<RawObject>::deserialize(document).map_err(|e| VariantsError::Yaml {
            document: number,
            message: e.to_string(),
        })?;
        let Some(raw) = raw else { continue };
        if raw.kind.as_deref() == Some("List") {
            let list = Location {
                position: Position {
                    document: number,
                    item: None,
                },
                kind: raw.kind,
                name: raw.metadata.name,
            };
            if raw.spec.is_some() {
                return Err(invalid(
                    list,
                    "spec",
                    "is not allowed in a List".to_string(),
                ));
            }
            for (j, item) in raw.items.unwrap_or_default().into_iter().enumerate() {
                let position = Position {
                    document: number,
                    item: Some(j + 1),
                };
                index.add(validate(position, item)?)?;
            }
        } else {
            let position = Position {
                document: number,
                item: None,
            };
            index.add(validate(position, raw)?)?;
        }
    }
    Ok(index.variants.into_iter().map(|(va, _)| va).collect())
}

fn invalid(at: Location, field: &'static str, problem: String) -> VariantsError {
    VariantsError::Invalid {
        at: Box::new(at),
        field,
        problem,
    }
}

/// A validated object and where it came from, for duplicate errors.
type Located = (Variant, Location);

/// The objects accepted so far, with the identities that must stay unique.
#[derive(Default)]
struct Index {
    variants: Vec<Located>,
    by_key: HashMap<VariantKey, usize>,
    /// `(namespace, kind, name)` of each scale target: two VariantAutoscalings
    /// scaling one workload would publish competing desired replicas.
    by_target: HashMap<(String, String, String), usize>,
}

impl Index {
    fn add(&mut self, (va, at): Located) -> Result<(), VariantsError> {
        let key = va.key();
        if let Some(&first) = self.by_key.get(&key) {
            return Err(VariantsError::Duplicate {
                at: Box::new(at),
                key,
                first: self.variants[first].1.position,
            });
        }
        let target = (
            va.namespace.clone(),
            va.target.kind.clone(),
            va.target.name.clone(),
        );
        if let Some(&other) = self.by_target.get(&target) {
            let (_, _, name) = target;
            return Err(VariantsError::SharedTarget {
                at: Box::new(at),
                kind: va.target.kind,
                name,
                other: Box::new(self.variants[other].1.clone()),
            });
        }
        let slot = self.variants.len();
        self.by_key.insert(key, slot);
        self.by_target.insert(target, slot);
        self.variants.push((va, at));
        Ok(())
    }
}

fn validate(position: Position, raw: RawObject) -> Result<Located, VariantsError> {
    let at = Location {
        position,
        kind: raw.kind.clone(),
        name: raw.metadata.name.clone(),
    };
    match check(raw) {
        Ok(va) => Ok((va, at)),
        Err(FieldError { field, problem }) => Err(invalid(at, field, problem)),
    }
}

/// A field of one object that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

/// Validates one object given as JSON (as the API server returns it) and
/// applies the defaults, exactly as for a file.
pub fn from_json(object: serde_json::Value) -> Result<Variant, FieldError> {
    let raw = RawObject::deserialize(object).map_err(|e| FieldError {
        field: "object",
        problem: format!("does not have the VariantAutoscaling shape: {e}"),
    })?;
    check(raw)
}

fn check(raw: RawObject) -> Result<Variant, FieldError> {
    let RawObject {
        api_version,
        kind,
        metadata,
        spec,
        items,
        _status,
    } = raw;
    let fail = |field, problem: String| Err(FieldError { field, problem });

    let hpa = kind.as_deref() == Some(workload::HPA_KIND);
    let expected_version = if hpa {
        workload::HPA_API_VERSION
    } else {
        API_VERSION
    };
    if api_version.as_deref() != Some(expected_version) {
        return fail(
            "apiVersion",
            format!("{} must be {expected_version:?}", shown(&api_version)),
        );
    }
    if !hpa && kind.as_deref() != Some(KIND) {
        return fail(
            "kind",
            format!(
                "{} must be {KIND:?} (or {:?} for a workload scaled on a signal)",
                shown(&kind),
                workload::HPA_KIND
            ),
        );
    }
    if items.is_some() {
        return fail("items", "is only allowed in a List".to_string());
    }
    let Some(name) = metadata.name else {
        return fail("metadata.name", "is required".to_string());
    };
    if !is_dns_subdomain(&name) {
        return fail("metadata.name", format!("{name:?} {DNS_SUBDOMAIN}"));
    }
    let namespace = metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if !is_dns_label(&namespace) {
        return fail("metadata.namespace", format!("{namespace:?} {DNS_LABEL}"));
    }

    let Some(mut spec) = spec else {
        return fail("spec", "is required".to_string());
    };
    let Some(target) = spec.scale_target_ref.take() else {
        return fail("spec.scaleTargetRef", "is required".to_string());
    };
    let Some(target_name) = target.name else {
        return fail("spec.scaleTargetRef.name", "is required".to_string());
    };
    if !is_dns_subdomain(&target_name) {
        return fail(
            "spec.scaleTargetRef.name",
            format!("{target_name:?} {DNS_SUBDOMAIN}"),
        );
    }
    let target_kind = target
        .kind
        .unwrap_or_else(|| DEFAULT_TARGET_KIND.to_string());
    if target_kind.trim().is_empty() {
        return fail("spec.scaleTargetRef.kind", "must not be empty".to_string());
    }
    let target = ScaleTarget {
        kind: target_kind,
        name: target_name,
        api_version: target.api_version,
    };
    if hpa {
        return scaling_target(
            namespace,
            target,
            &spec,
            metadata.labels,
            metadata.annotations,
        );
    }
    let hpa_fields = [
        ("spec.minReplicas", spec.min_replicas.is_some()),
        ("spec.maxReplicas", spec.max_replicas.is_some()),
        ("spec.metrics", spec.metrics.is_some()),
        ("spec.behavior", spec.behavior.is_some()),
    ];
    if let Some((field, _)) = hpa_fields.into_iter().find(|(_, set)| *set) {
        return fail(
            field,
            "is a HorizontalPodAutoscaler field, not a VariantAutoscaling one".to_string(),
        );
    }
    let model_id = match spec.model_id {
        Some(m) if !m.trim().is_empty() => m,
        Some(_) => return fail("spec.modelID", "must not be empty".to_string()),
        None => return fail("spec.modelID", "is required".to_string()),
    };
    let cost_text = spec.variant_cost.as_deref().unwrap_or(DEFAULT_COST);
    let Some(cost) = parse_cost(cost_text) else {
        return fail(
            "spec.variantCost",
            format!("{cost_text:?} must match {COST_PATTERN} (a finite decimal number)"),
        );
    };

    Ok(Variant {
        accelerator: metadata
            .labels
            .get(ACCELERATOR_LABEL)
            .cloned()
            .unwrap_or_default(),
        name,
        namespace,
        model_id,
        target,
        cost,
        labels: metadata.labels,
        annotations: metadata.annotations,
        signal: None,
    })
}

/// An annotated HorizontalPodAutoscaler: a variant named for its workload,
/// scaled on a signal, with no model.
fn scaling_target(
    namespace: String,
    target: ScaleTarget,
    spec: &RawSpec,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Result<Variant, FieldError> {
    let fail = |field, problem: String| Err(FieldError { field, problem });
    if spec.model_id.is_some() {
        return fail("spec.modelID", "is a VariantAutoscaling field".to_string());
    }
    if spec.variant_cost.is_some() {
        return fail(
            "spec.variantCost",
            "is a VariantAutoscaling field".to_string(),
        );
    }
    let signal = match workload::from_annotations(
        &annotations,
        spec.min_replicas,
        spec.max_replicas,
    ) {
        Ok(Some(signal)) => signal,
        Ok(None) => {
            return fail(
                "metadata.annotations",
                format!(
                    "have no {:?}: a HorizontalPodAutoscaler here must name the signal its workload scales on",
                    workload::SIGNAL_ANNOTATION
                ),
            );
        }
        Err(e) => return fail(e.field, e.problem),
    };
    Ok(Variant {
        name: target.name.clone(),
        namespace,
        model_id: String::new(),
        target,
        cost: 0.0,
        accelerator: String::new(),
        labels,
        annotations,
        signal: Some(signal),
    })
}

fn shown(value: &Option<String>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(missing)".to_string(), |v| format!("{v:?}"))
}

/// `^\d+(\.\d+)?$` (ASCII digits, as in the CRD's pattern), parsed to a finite number.
fn parse_cost(text: &str) -> Option<f64> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match text.split_once('.') {
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => digits(text),
    };
    if !well_formed {
        return None;
    }
    text.parse::<f64>().ok().filter(|c| c.is_finite())
}

pub const DNS_LABEL: &str = "must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)";
const DNS_SUBDOMAIN: &str = "must be a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)";

pub fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    matches!((bytes.first(), bytes.last()), (Some(&a), Some(&z)) if alnum(a) && alnum(z))
        && s.len() <= 63
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_VARIANTS: &str = r#"
# two variants of one model
apiVersion: llmd.ai/v1alpha1
kind: VariantAutoscaling
metadata:
  name: llama-8b-l4
  namespace: llm-inference
  labels:
    inference.optimization/acceleratorName: L4
  annotations:
    note: cheap
spec:
  scaleTargetRef:
    kind: Deployment
    name: llama-8b-l4
    apiVersion: apps/v1
  modelID: meta/llama-3.1-8b
  variantCost: "15.5"
---
---
apiVersion: llmd.ai/v1alpha1
kind: VariantAutoscaling
metadata:
  name: llama-8b-h100
spec:
  scaleTargetRef:
    name: llama-8b-h100
  modelID: meta/llama-3.1-8b
status:
  desiredOptimizedAlloc: {numReplicas: 2}
"#;

    /// A valid object with one line replaced, to test each field on its own.
    fn object_with(replace: &str, with: &str) -> String {
        let base = "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\nmetadata:\n  name: va\n  namespace: ns\nspec:\n  scaleTargetRef:\n    name: deploy\n  modelID: m\n  variantCost: \"10\"\n";
        assert!(base.contains(replace), "{replace:?} not in the base object");
        base.replacen(replace, with, 1)
    }

    fn error(text: &str) -> String {
        parse_variants(text)
            .expect_err("file must be rejected")
            .to_string()
    }

    #[test]
    fn parses_documents_with_defaults() {
        let variants = parse_variants(TWO_VARIANTS).unwrap();
        assert_eq!(
            variants,
            [
                Variant {
                    name: "llama-8b-l4".into(),
                    namespace: "llm-inference".into(),
                    model_id: "meta/llama-3.1-8b".into(),
                    target: ScaleTarget {
                        kind: "Deployment".into(),
                        name: "llama-8b-l4".into(),
                        api_version: Some("apps/v1".into()),
                    },
                    cost: 15.5,
                    accelerator: "L4".into(),
                    labels: BTreeMap::from([(ACCELERATOR_LABEL.into(), "L4".into())]),
                    annotations: BTreeMap::from([("note".into(), "cheap".into())]),
                    signal: None,
                },
                Variant {
                    name: "llama-8b-h100".into(),
                    namespace: "default".into(),
                    model_id: "meta/llama-3.1-8b".into(),
                    target: ScaleTarget {
                        kind: "Deployment".into(),
                        name: "llama-8b-h100".into(),
                        api_version: None,
                    },
                    cost: 10.0,
                    accelerator: String::new(),
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                    signal: None,
                },
            ]
        );
        assert_eq!(
            variants[1].key(),
            VariantKey::new("default", "llama-8b-h100")
        );
    }

    #[test]
    fn accepts_a_list_and_empty_files() {
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n{}",
            TWO_VARIANTS
                .split("---")
                .filter(|d| d.contains("kind:"))
                .map(|d| {
                    let d = d.trim().replace('\n', "\n  ");
                    format!("- {d}\n")
                })
                .collect::<String>()
        );
        assert_eq!(
            parse_variants(&list).unwrap(),
            parse_variants(TWO_VARIANTS).unwrap()
        );
        assert_eq!(parse_variants("").unwrap(), []);
        assert_eq!(parse_variants("# nothing yet\n---\n---\n").unwrap(), []);
        assert_eq!(parse_variants("kind: List\nitems: []\n").unwrap(), []);
    }

    #[test]
    fn variant_key_orders_and_displays() {
        let a = VariantKey::new("a", "z");
        let b = VariantKey::new("b", "a");
        assert!(a < b, "namespace orders first");
        assert_eq!(b.to_string(), "b/a");
    }

    #[test]
    fn field_errors_name_document_object_and_field() {
        let cases = [
            (
                object_with("variantCost: \"10\"", "variantCost: \"abc\""),
                r#"document 1 (VariantAutoscaling "va"): spec.variantCost "abc" must match ^\d+(\.\d+)?$ (a finite decimal number)"#,
            ),
            (
                object_with("apiVersion: llmd.ai/v1alpha1", "apiVersion: llmd.ai/v1"),
                r#"document 1 (VariantAutoscaling "va"): apiVersion "llmd.ai/v1" must be "llmd.ai/v1alpha1""#,
            ),
            (
                object_with("apiVersion: llmd.ai/v1alpha1\n", ""),
                r#"document 1 (VariantAutoscaling "va"): apiVersion (missing) must be "llmd.ai/v1alpha1""#,
            ),
            (
                object_with("kind: VariantAutoscaling", "kind: Deployment"),
                r#"document 1 (Deployment "va"): kind "Deployment" must be "VariantAutoscaling" (or "HorizontalPodAutoscaler" for a workload scaled on a signal)"#,
            ),
            (
                object_with("  name: va\n", ""),
                "document 1 (VariantAutoscaling without metadata.name): metadata.name is required",
            ),
            (
                object_with("name: va", "name: Llama_8B"),
                r#"document 1 (VariantAutoscaling "Llama_8B"): metadata.name "Llama_8B" must be a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"#,
            ),
            (
                object_with("namespace: ns", "namespace: my.ns"),
                r#"document 1 (VariantAutoscaling "va"): metadata.namespace "my.ns" must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"#,
            ),
            (
                object_with("  modelID: m\n", ""),
                r#"document 1 (VariantAutoscaling "va"): spec.modelID is required"#,
            ),
            (
                object_with("modelID: m", "modelID: \" \""),
                r#"document 1 (VariantAutoscaling "va"): spec.modelID must not be empty"#,
            ),
            (
                object_with("    name: deploy\n", "    kind: Deployment\n"),
                r#"document 1 (VariantAutoscaling "va"): spec.scaleTargetRef.name is required"#,
            ),
            (
                object_with("  scaleTargetRef:\n    name: deploy\n", ""),
                r#"document 1 (VariantAutoscaling "va"): spec.scaleTargetRef is required"#,
            ),
            (
                object_with("    name: deploy\n", "    name: deploy\n    kind: \"\"\n"),
                r#"document 1 (VariantAutoscaling "va"): spec.scaleTargetRef.kind must not be empty"#,
            ),
            (
                object_with(
                    "spec:\n  scaleTargetRef:\n    name: deploy\n  modelID: m\n  variantCost: \"10\"\n",
                    "",
                ),
                r#"document 1 (VariantAutoscaling "va"): spec is required"#,
            ),
            (
                format!(
                    "---\n{}",
                    object_with("variantCost: \"10\"", "variantCost: \"1e3\"")
                ),
                r#"document 1 (VariantAutoscaling "va"): spec.variantCost "1e3" must match ^\d+(\.\d+)?$ (a finite decimal number)"#,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(&text), expected, "{text}");
        }
    }

    #[test]
    fn cost_follows_the_crd_pattern() {
        for (text, want) in [
            ("10", Some(10.0)),
            ("10.0", Some(10.0)),
            ("0.25", Some(0.25)),
            ("007", Some(7.0)),
        ] {
            assert_eq!(parse_cost(text), want, "{text}");
        }
        let too_big = "9".repeat(400);
        for text in [
            "",
            ".5",
            "5.",
            "-1",
            "+1",
            "1.2.3",
            "1e3",
            " 1",
            "١",
            "NaN",
            "inf",
            too_big.as_str(),
        ] {
            assert_eq!(parse_cost(text), None, "{text:?}");
        }
        // A YAML number is read as its text and checked the same way.
        let va = parse_variants(&object_with("variantCost: \"10\"", "variantCost: 12.50")).unwrap();
        assert_eq!(va[0].cost, 12.5);
    }

    #[test]
    fn shape_errors_name_document_path_and_line() {
        let typo = object_with("modelID: m", "modelId: m");
        let msg = error(&format!("---\n{typo}"));
        assert!(
            msg.starts_with("document 1: spec: unknown field `modelId`, expected one of"),
            "{msg}"
        );
        assert!(msg.contains("line 10"), "{msg}");
        let msg = error(&format!(
            "{}---\n{}",
            object_with("name: va", "name: a"),
            object_with("    name: deploy", "    name: [deploy]")
        ));
        assert!(
            msg.starts_with("document 2: spec.scaleTargetRef.name: invalid type: sequence"),
            "{msg}"
        );
        let msg = error(&object_with("spec:", "specs:"));
        assert!(
            msg.starts_with("document 1: unknown field `specs`"),
            "{msg}"
        );
        let msg = error("a: [\n");
        assert!(msg.starts_with("document 1: "), "{msg}");
        let msg = error("- 1\n");
        assert!(
            msg.starts_with("document 1: invalid type: sequence"),
            "{msg}"
        );
    }

    #[test]
    fn list_errors_name_the_item() {
        let item = object_with("variantCost: \"10\"", "variantCost: \"x\"").replace('\n', "\n  ");
        let list = format!("apiVersion: v1\nkind: List\nitems:\n- {item}");
        assert_eq!(
            error(&list),
            r#"document 1 item 1 (VariantAutoscaling "va"): spec.variantCost "x" must match ^\d+(\.\d+)?$ (a finite decimal number)"#
        );
        assert_eq!(
            error("kind: List\nitems:\n- kind: List\n  metadata: {name: inner}\n"),
            r#"document 1 item 1 (List "inner"): apiVersion (missing) must be "llmd.ai/v1alpha1""#
        );
        assert_eq!(
            error("kind: List\nspec: {modelID: m}\n"),
            "document 1 (List without metadata.name): spec is not allowed in a List"
        );
        assert_eq!(
            error(&object_with("spec:", "items: []\nspec:")),
            r#"document 1 (VariantAutoscaling "va"): items is only allowed in a List"#
        );
    }

    #[test]
    fn rejects_duplicates_and_shared_targets() {
        let a = object_with("name: va", "name: a");
        let b = object_with("name: va", "name: b").replace("name: deploy", "name: other");
        assert_eq!(
            error(&format!("{a}---\n{b}---\n{a}")),
            r#"document 3 (VariantAutoscaling "a"): ns/a is already defined by document 1"#
        );
        // The same name in another namespace is another variant.
        let elsewhere = a
            .replace("namespace: ns", "namespace: other")
            .replace("name: deploy", "name: d2");
        assert_eq!(
            parse_variants(&format!("{a}---\n{elsewhere}"))
                .unwrap()
                .len(),
            2
        );
        // Two variants scaling one Deployment.
        let c = object_with("name: va", "name: c");
        assert_eq!(
            error(&format!("{a}---\n{c}")),
            r#"document 2 (VariantAutoscaling "c"): spec.scaleTargetRef Deployment "deploy" is already the target of document 1 (VariantAutoscaling "a")"#
        );
    }

    #[test]
    fn dns_names() {
        for ok in ["a", "a-b", "0a", "a.b-c.d"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a..b",
            ".a",
            "a.",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(!is_dns_label("a.b"));
    }

    #[test]
    fn a_target_names_the_pods_its_controller_makes() {
        let target = |kind: &str, name: &str| ScaleTarget {
            kind: kind.into(),
            name: name.into(),
            api_version: None,
        };
        let l4 = target("Deployment", "llama-8b-l4");
        let shorter = target("Deployment", "llama-8b");
        let pod = "llama-8b-l4-586975d868-62thr";
        assert!(l4.names_pod(pod));
        assert!(
            !shorter.names_pod(pod),
            "a Deployment whose name prefixes another's"
        );
        assert!(shorter.names_pod("llama-8b-586975d868-62thr"));
        for other in [
            "llama-8b-l4",
            "llama-8b-l4-x",
            "llama-8b-l4-a-",
            "llama-8b-l40-5869-62thr",
        ] {
            assert!(!l4.names_pod(other), "{other}");
        }
        let set = target("StatefulSet", "llama");
        assert!(set.names_pod("llama-0") && set.names_pod("llama-12"));
        assert!(!set.names_pod("llama-a") && !set.names_pod("llama-"));
        let other = target("LeaderWorkerSet", "llama");
        assert!(other.names_pod("llama-0-1") && !other.names_pod("llamas-0"));
    }
}

#[cfg(test)]
mod scaling_target_tests {
    use super::*;
    use crate::workload::Across;

    const CHAT: &str = "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\nmetadata: {name: chat, namespace: jobs}\nspec:\n  scaleTargetRef: {name: chat}\n  modelID: m\n";

    const WORKER: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: worker-hpa
  namespace: jobs
  annotations:
    wva.llmd.ai/signal: queue_depth
    wva.llmd.ai/target-per-pod: "5"
    wva.llmd.ai/signal-across-pods: max
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: worker
  minReplicas: 2
  maxReplicas: 12
  metrics:
  - type: External
    external:
      metric: {name: wva_workload_desired_replicas}
      target: {type: AverageValue, averageValue: "1"}
"#;

    #[test]
    fn an_annotated_hpa_is_a_workload_named_for_its_target() {
        let variants = parse_variants(&format!("{WORKER}---\n{CHAT}")).unwrap();
        let worker = variants.iter().find(|v| v.signal.is_some()).unwrap();
        assert_eq!(worker.key(), VariantKey::new("jobs", "worker"));
        assert_eq!(worker.model_id, "");
        assert_eq!(
            worker.signal,
            Some(SignalTarget {
                signal: "queue_depth".into(),
                target_per_pod: 5.0,
                across: Across::Max,
                min_replicas: 2,
                max_replicas: 12,
            })
        );
        assert_eq!(variants.len(), 2);
    }

    #[test]
    fn a_wrong_scaling_target_says_what_is_wrong() {
        let with = |old: &str, new: &str| {
            assert!(WORKER.contains(old));
            parse_variants(&WORKER.replacen(old, new, 1))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            with("    wva.llmd.ai/signal: queue_depth\n", ""),
            r#"document 1 (HorizontalPodAutoscaler "worker-hpa"): metadata.annotations have no "wva.llmd.ai/signal": a HorizontalPodAutoscaler here must name the signal its workload scales on"#
        );
        assert_eq!(
            with("\"5\"", "\"-1\""),
            r#"document 1 (HorizontalPodAutoscaler "worker-hpa"): metadata.annotations[wva.llmd.ai/target-per-pod] "-1" must be a number above 0"#
        );
        assert_eq!(
            with("autoscaling/v2", "autoscaling/v1"),
            r#"document 1 (HorizontalPodAutoscaler "worker-hpa"): apiVersion "autoscaling/v1" must be "autoscaling/v2""#
        );
        assert_eq!(
            with("  minReplicas: 2\n", "  minReplicas: 2\n  modelID: m\n"),
            r#"document 1 (HorizontalPodAutoscaler "worker-hpa"): spec.modelID is a VariantAutoscaling field"#
        );
        assert_eq!(
            with("kind: HorizontalPodAutoscaler", "kind: ScaledObject"),
            r#"document 1 (ScaledObject "worker-hpa"): apiVersion "autoscaling/v2" must be "llmd.ai/v1alpha1""#
        );
    }

    #[test]
    fn a_variant_autoscaling_refuses_the_hpas_fields() {
        let text = CHAT.replacen("  modelID:", "  maxReplicas: 3\n  modelID:", 1);
        assert!(parse_variants(&text).unwrap_err().to_string().ends_with(
            "spec.maxReplicas is a HorizontalPodAutoscaler field, not a VariantAutoscaling one"
        ));
    }

    #[test]
    fn a_workload_and_a_variant_cannot_share_a_target() {
        let va = CHAT.replace("{name: chat}", "{name: worker}");
        let e = parse_variants(&format!("{WORKER}---\n{va}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"document 2 (VariantAutoscaling "chat"): spec.scaleTargetRef Deployment "worker" is already the target of document 1 (HorizontalPodAutoscaler "worker-hpa")"#
        );
    }
}
