//! KEDA on the control plane, installed from its own manifests: the
//! `config/default` of its Go module (v2.21.0), rendered by `kubectl
//! kustomize`, with its operator and metrics server built from that module
//! by `scripts/cluster tool` and run by a local node.
//!
//! Changes to the manifests, all because the local node runs every pod in
//! one network namespace, where a kubelet would give each its own:
//!
//! - the operator binds its metrics, health and gRPC ports to its pod's
//!   address (`0.0.0.0` in an argument stands for it), and the metrics
//!   server its secure port; the metrics server's own metrics move to port
//!   8082, as that flag takes a port only and 8080 would clash with the
//!   operator's;
//! - the operator's certificate directory (`/certs`, its default) is
//!   spelled out, so that the node, which rewrites paths in arguments
//!   rather than mounting volumes, finds it;
//! - the admission webhooks are left out: they only validate KEDA's objects,
//!   and their port (9443, all addresses) is the aggregator's gRPC port.
//!   The operator is told not to patch their configuration.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::controlplane::{ControlPlane, tool, tool_source};
use crate::install::{SYSTEM, kubectl};
use crate::node::LocalNode;

pub const KEDA: &str = "keda";

/// KEDA running; dropping it stops its pods.
pub struct Keda {
    pub node: LocalNode,
}

impl Keda {
    /// Installs KEDA and awaits its metrics server's APIService.
    pub async fn install(plane: &ControlPlane) -> anyhow::Result<Keda> {
        // Built before anything starts: a cold build takes minutes.
        for program in ["keda-operator", "keda-metrics-apiserver"] {
            tool(program).await?;
        }
        let source = tool_source("keda-operator").await?;
        let config = source.join("config/default");
        let rendered = kubectl(plane, &["kustomize", config.to_str().context("path")?]).await?;
        let mut objects = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&rendered) {
            let object = Value::deserialize(document)?;
            if object.is_null() || admission_webhooks(&object) {
                continue;
            }
            objects.push(for_the_local_node(object));
        }
        // CustomResourceDefinitions and the namespace first.
        objects.sort_by_key(|o| {
            !matches!(
                o["kind"].as_str(),
                Some("CustomResourceDefinition" | "Namespace")
            )
        });
        for object in &objects {
            plane.apply(object).await?;
        }
        plane.default_service_account(KEDA).await?;
        let node = LocalNode::start(plane, "keda", &[KEDA]).await?;
        let keda = Keda { node };
        let available = plane
            .api_service_available("v1beta1.external.metrics.k8s.io", Duration::from_secs(180))
            .await;
        if let Err(e) = available {
            anyhow::bail!("{e:#}\n{}", keda.logs(&plane.client().await?).await?);
        }
        Ok(keda)
    }

    /// The last lines every KEDA container logged, for failure messages.
    pub async fn logs(&self, client: &kube::Client) -> anyhow::Result<String> {
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), KEDA);
        let mut logs = String::new();
        for pod in pods.list(&Default::default()).await?.items {
            let name = pod.metadata.name.unwrap_or_default();
            for container in pod.spec.iter().flat_map(|s| &s.containers) {
                let log = self.node.log(KEDA, &name, &container.name);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                logs += &format!("== {name}/{}\n{tail}\n", container.name);
            }
        }
        Ok(logs)
    }
}

/// The TriggerAuthentication `wva` in `namespace`, which trusts the chart's
/// gRPC CA (copied from its Secret), as docs/keda.md sets it up.
pub async fn authenticate_to_wva(plane: &ControlPlane, namespace: &str) -> anyhow::Result<()> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(plane.client().await?, SYSTEM);
    let tls = secrets.get("wva-grpc-tls").await?;
    let ca = tls
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|c| String::from_utf8_lossy(&c.0).into_owned())
        .context("wva-grpc-tls has no ca.crt")?;
    plane
        .create(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "wva-grpc-ca", "namespace": namespace},
            "stringData": {"ca.crt": ca},
        }))
        .await?;
    plane
        .create(&json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": "wva", "namespace": namespace},
            "spec": {"secretTargetRef": [{"parameter": "caCert", "name": "wva-grpc-ca", "key": "ca.crt"}]},
        }))
        .await?;
    Ok(())
}

/// A ScaledObject scaling Deployment `name` (between `min` and 8 replicas)
/// on the decision for the VariantAutoscaling of that name, pushed by the
/// aggregator's external scaler over the chart's TLS. Scale-downs are
/// wva's to hold: its HPA applies them at once.
pub fn scaled_object(namespace: &str, name: &str, min: i32) -> Value {
    scaled_object_following(namespace, name, min, ("variantAutoscaling", name))
}

/// [`scaled_object`], its trigger following what `(key, value)` of its
/// metadata names (a VariantAutoscaling, or a workload).
pub fn scaled_object_following(
    namespace: &str,
    name: &str,
    min: i32,
    (key, value): (&str, &str),
) -> Value {
    json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": min,
            "maxReplicaCount": 8,
            "cooldownPeriod": 5,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 0},
            }}},
            "triggers": [{
                "type": "external-push",
                "metadata": {
                    "scalerAddress": format!("wva.{SYSTEM}.svc:9443"),
                    key: value,
                },
                "authenticationRef": {"name": "wva"},
            }],
        },
    })
}

/// The admission webhooks' Deployment, Service and configuration.
fn admission_webhooks(object: &Value) -> bool {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    object["kind"] == "ValidatingWebhookConfiguration"
        || (matches!(object["kind"].as_str(), Some("Deployment" | "Service"))
            && name.contains("admission"))
}

/// The manifests' changes for one shared network namespace.
fn for_the_local_node(mut object: Value) -> Value {
    if object["kind"] != "Deployment" {
        return object;
    }
    let extra: &[&str] = match object["metadata"]["name"].as_str() {
        Some("keda-operator") => &[
            "--metrics-bind-address=0.0.0.0:8080",
            "--health-probe-bind-address=0.0.0.0:8081",
            "--metrics-service-bind-address=0.0.0.0:9666",
            "--enable-webhook-patching=false",
            // The default, spelled out for the local node to make local.
            "--cert-dir=/certs",
        ],
        Some("keda-metrics-apiserver") => &["--bind-address=0.0.0.0", "--port=8082"],
        _ => &[],
    };
    let args = &mut object["spec"]["template"]["spec"]["containers"][0]["args"];
    if let Some(args) = args.as_array_mut() {
        args.extend(extra.iter().map(|a| Value::from(*a)));
    }
    object
}
