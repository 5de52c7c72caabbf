//! The `VariantAutoscaling` custom resource as the API server stores it
//! (`variantautoscalings.llmd.ai/v1alpha1`), and its CRD manifest.
//!
//! These types are the wire shape only. The controller validates an object
//! into the plain [`wva_core::variants::Variant`] through the same
//! code path as the standalone file, so both modes accept and reject exactly
//! the same objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wva_core::variants::{DEFAULT_COST, DEFAULT_TARGET_KIND};

// Each printcolumn(...) repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "llmd.ai",
    version = "v1alpha1",
    kind = "VariantAutoscaling",
    namespaced,
    status = "VariantAutoscalingStatus",
    shortname = "va",
    derive = "PartialEq",
    doc = "Autoscales one variant (a Deployment serving a model on one accelerator type) from live vLLM saturation signals.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.scaleTargetRef.name"
    ),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelID"),
    printcolumn(
        name = "Accelerator",
        type_ = "string",
        json_path = ".status.desiredOptimizedAlloc.accelerator"
    ),
    printcolumn(
        name = "CurrentReplicas",
        type_ = "integer",
        json_path = ".status.currentAlloc.numReplicas"
    ),
    printcolumn(
        name = "Optimized",
        type_ = "integer",
        json_path = ".status.desiredOptimizedAlloc.numReplicas"
    ),
    printcolumn(
        name = "MetricsReady",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"MetricsAvailable\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VariantAutoscalingSpec {
    /// The workload this variant scales.
    pub scale_target_ref: ScaleTargetRef,
    /// The model name vLLM serves (its `model_name` label).
    #[serde(rename = "modelID")]
    #[schemars(length(min = 1))]
    pub model_id: String,
    /// Relative cost of one replica; the cheapest variant of a model scales first.
    #[serde(default = "default_cost")]
    #[schemars(regex(pattern = r"^\d+(\.\d+)?$"))]
    pub variant_cost: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default = "default_target_kind")]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

fn default_cost() -> String {
    DEFAULT_COST.to_string()
}

fn default_target_kind() -> String {
    DEFAULT_TARGET_KIND.to_string()
}

// Absent parts serialize as `null`, so a JSON merge patch of a whole status
// removes what is no longer there instead of leaving it stale.
/// What the controller observed and decided.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantAutoscalingStatus {
    /// Replicas the target has now.
    #[serde(default)]
    pub current_alloc: Option<CurrentAlloc>,
    /// The decision; `{}` while the target is missing.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub desired_optimized_alloc: OptimizedAlloc,
    #[serde(default)]
    pub actuation: Option<Actuation>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentAlloc {
    #[serde(default)]
    pub accelerator: String,
    #[schemars(range(min = 0))]
    pub num_replicas: i32,
}

/// Every field is optional so the cleared form `{}` is valid.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OptimizedAlloc {
    /// When the decision last changed.
    #[serde(default)]
    pub last_run_time: Option<Time>,
    #[serde(default)]
    pub accelerator: Option<String>,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub num_replicas: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actuation {
    /// Whether the target runs the desired number of replicas.
    pub applied: bool,
}

/// The CRD manifest as YAML, as `wva-aggregator print-crd` prints it and the
/// chart ships it.
pub fn crd_yaml() -> String {
    let crd = VariantAutoscaling::crd();
    // Serializing a value built from plain structs cannot fail.
    serde_yaml::to_string(&crd).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> serde_json::Value {
        let crd = serde_json::to_value(VariantAutoscaling::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn the_chart_ships_this_crd() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/wva/crds/variantautoscalings.llmd.ai.yaml"
        );
        let shipped = std::fs::read_to_string(path).unwrap();
        assert!(
            shipped == crd_yaml(),
            "{path} differs from the CRD the code defines; regenerate it with\n  \
             cargo run -p wva-aggregator -- print-crd > charts/wva/crds/variantautoscalings.llmd.ai.yaml"
        );
    }

    #[test]
    fn names_match_wva() {
        let crd = serde_json::to_value(VariantAutoscaling::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "variantautoscalings.llmd.ai");
        assert_eq!(crd["spec"]["group"], "llmd.ai");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], "VariantAutoscaling");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["va"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["subresources"]["status"], json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "Target",
                "Model",
                "Accelerator",
                "CurrentReplicas",
                "Optimized",
                "MetricsReady",
                "Age"
            ]
        );
    }

    #[test]
    fn spec_schema_requires_and_constrains_the_wva_fields() {
        let spec = &schema()["properties"]["spec"];
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(required.contains(&"scaleTargetRef"), "{required:?}");
        assert!(required.contains(&"modelID"), "{required:?}");
        assert!(!required.contains(&"variantCost"), "{required:?}");
        let props = &spec["properties"];
        assert_eq!(props["modelID"]["minLength"], 1);
        assert_eq!(props["variantCost"]["pattern"], r"^\d+(\.\d+)?$");
        assert_eq!(props["variantCost"]["default"], "10.0");
        assert_eq!(
            props["scaleTargetRef"]["properties"]["kind"]["default"],
            "Deployment"
        );
    }

    #[test]
    fn conditions_are_a_list_map_keyed_by_type() {
        let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    }

    #[test]
    fn a_wva_object_round_trips() {
        let object = json!({
            "apiVersion": "llmd.ai/v1alpha1",
            "kind": "VariantAutoscaling",
            "metadata": {"name": "llama-8b-autoscaler", "namespace": "llm-inference"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "llama-8b"},
                "modelID": "meta/llama-3.1-8b",
                "variantCost": "10.0"
            },
            "status": {
                "desiredOptimizedAlloc": {},
                "conditions": [{
                    "type": "Ready", "status": "False", "reason": "DeploymentNotFound",
                    "message": "Target deployment 'llama-8b' no longer exists",
                    "lastTransitionTime": "2026-11-23T10:00:00Z"
                }]
            }
        });
        let va: VariantAutoscaling = serde_json::from_value(object).unwrap();
        assert_eq!(va.spec.model_id, "meta/llama-3.1-8b");
        let status = va.status.as_ref().unwrap();
        assert_eq!(status.desired_optimized_alloc, OptimizedAlloc::default());
        assert_eq!(status.conditions[0].reason, "DeploymentNotFound");
        let back: VariantAutoscaling =
            serde_json::from_value(serde_json::to_value(&va).unwrap()).unwrap();
        assert_eq!(back, va);
    }

    #[test]
    fn omitted_cost_and_kind_take_the_defaults() {
        let va: VariantAutoscaling = serde_json::from_value(json!({
            "apiVersion": "llmd.ai/v1alpha1",
            "kind": "VariantAutoscaling",
            "metadata": {"name": "a"},
            "spec": {"scaleTargetRef": {"name": "llama-8b"}, "modelID": "m"}
        }))
        .unwrap();
        assert_eq!(va.spec.variant_cost, "10.0");
        assert_eq!(va.spec.scale_target_ref.kind, "Deployment");
    }
}
