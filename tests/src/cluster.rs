//! A cluster for end-to-end tests of Kubernetes mode: the API-server double,
//! the objects wva watches (created as kubectl and the Deployment controller
//! would), agents presenting their pod's token, and aggregators pointed at
//! the double through a kubeconfig.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::apiserver::{ApiServer, Resource, TokenIdentity};
use crate::{AgentSpec, Proc, aggregator, free_addr, start_agent};

/// Where the aggregator runs: its configuration ConfigMaps and its Lease live here.
pub const SYSTEM_NAMESPACE: &str = "wva-system";
/// The main configuration ConfigMap's default name.
pub const MAIN_CONFIG_MAP: &str = "workload-variant-autoscaler-variantautoscaling-config";
/// The saturation ConfigMap's default name.
pub const SATURATION_CONFIG_MAP: &str = "saturation-scaling-config";
/// The scale-to-zero ConfigMap's default name.
pub const SCALE_TO_ZERO_CONFIG_MAP: &str = "model-scale-to-zero-config";
/// The default leader Lease.
pub const LEASE: &str = "wva-aggregator-leader";
/// The accelerator every test VariantAutoscaling is labelled with.
pub const ACCELERATOR: &str = "L4";
/// What every agent claims as its variant: the aggregator must ignore it and
/// take the pod's owning Deployment instead.
pub const CLAIMED_VARIANT: &str = "claimed-by-the-agent";

/// The flags that make leader election fast enough for tests.
pub const FAST_ELECTION: [&str; 6] = [
    "--lease-duration",
    "3s",
    "--renew-deadline",
    "2s",
    "--retry-period",
    "300ms",
];

/// The double, a client acting like kubectl, and a directory for the
/// kubeconfig and token files.
pub struct Cluster {
    pub api: ApiServer,
    client: kube::Client,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Starts the double with [`SYSTEM_NAMESPACE`] and `namespaces`; files go to `dir`.
    pub async fn start(dir: &Path, namespaces: &[&str]) -> anyhow::Result<Cluster> {
        let api = ApiServer::start().await?;
        let kubeconfig = api.write_kubeconfig(dir)?;
        let cluster = Cluster {
            client: api.client(),
            api,
            dir: dir.to_path_buf(),
            kubeconfig,
        };
        for name in std::iter::once(&SYSTEM_NAMESPACE).chain(namespaces) {
            let namespace = json!({ "metadata": { "name": name } });
            cluster
                .create(Resource::Namespaces, None, namespace)
                .await?;
        }
        Ok(cluster)
    }

    fn resource_api(&self, resource: Resource, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: resource.group().into(),
            version: resource.version().into(),
            api_version: resource.api_version(),
            kind: resource.kind().into(),
            plural: resource.plural().into(),
        };
        match namespace.filter(|_| resource.namespaced()) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Creates an object (kind and apiVersion are filled in); returns it as stored.
    pub async fn create(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        mut object: Value,
    ) -> anyhow::Result<Value> {
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind());
        let name = object["metadata"]["name"].clone();
        let created = self
            .resource_api(resource, namespace)
            .create(&PostParams::default(), &serde_json::from_value(object)?)
            .await
            .with_context(|| format!("create {} {name}", resource.kind()))?;
        Ok(serde_json::to_value(created)?)
    }

    /// Merge-patches an object, or its status subresource.
    pub async fn merge_patch(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        patch: Value,
        status: bool,
    ) -> anyhow::Result<Value> {
        let api = self.resource_api(resource, Some(namespace));
        let (pp, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let patched = if status {
            api.patch_status(name, &pp, &patch).await
        } else {
            api.patch(name, &pp, &patch).await
        };
        let patched = patched.with_context(|| format!("patch {} {name}", resource.kind()))?;
        Ok(serde_json::to_value(patched)?)
    }

    pub async fn delete(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        self.resource_api(resource, Some(namespace))
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("delete {} {name}", resource.kind()))?;
        Ok(())
    }

    /// A VariantAutoscaling for `model` scaling Deployment `target`, on [`ACCELERATOR`].
    pub async fn variant_autoscaling(
        &self,
        namespace: &str,
        name: &str,
        target: &str,
        model: &str,
    ) -> anyhow::Result<Value> {
        let va = json!({
            "metadata": {
                "name": name,
                "labels": { "inference.optimization/acceleratorName": ACCELERATOR },
            },
            "spec": {
                "scaleTargetRef": { "kind": "Deployment", "name": target },
                "modelID": model,
                "variantCost": "10.0",
            },
        });
        self.create(Resource::VariantAutoscalings, Some(namespace), va)
            .await
    }

    /// A Deployment of `replicas` with `ready` of them ready.
    pub async fn deployment(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
        ready: i32,
    ) -> anyhow::Result<Value> {
        let labels = json!({ "app": name });
        let deployment = json!({
            "metadata": { "name": name, "labels": labels },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": { "containers": [{ "name": "vllm", "image": "vllm/vllm-openai" }] },
                },
            },
        });
        self.create(Resource::Deployments, Some(namespace), deployment)
            .await?;
        self.set_ready_replicas(namespace, name, ready).await
    }

    /// Sets a Deployment's `status.readyReplicas`, as its controller would.
    pub async fn set_ready_replicas(
        &self,
        namespace: &str,
        name: &str,
        ready: i32,
    ) -> anyhow::Result<Value> {
        let status = json!({ "status": { "readyReplicas": ready, "replicas": ready } });
        self.merge_patch(Resource::Deployments, namespace, name, status, true)
            .await
    }

    /// The ReplicaSet a Deployment controller would create for `deployment`.
    pub async fn replica_set(&self, deployment: &Value) -> anyhow::Result<Value> {
        let name = format!("{}-5d8f7", name_of(deployment));
        let rs = json!({
            "metadata": {
                "name": name,
                "ownerReferences": [owner(deployment, Resource::Deployments)],
            },
            "spec": {
                "replicas": deployment["spec"]["replicas"],
                "selector": deployment["spec"]["selector"],
                "template": deployment["spec"]["template"],
            },
        });
        self.create(Resource::ReplicaSets, namespace_of(deployment), rs)
            .await
    }

    /// A Pod owned by `replica_set`, with its template's labels.
    pub async fn pod(&self, replica_set: &Value, name: &str) -> anyhow::Result<Value> {
        let pod = json!({
            "metadata": {
                "name": name,
                "labels": replica_set["spec"]["template"]["metadata"]["labels"],
                "ownerReferences": [owner(replica_set, Resource::ReplicaSets)],
            },
            "spec": replica_set["spec"]["template"]["spec"],
        });
        self.create(Resource::Pods, namespace_of(replica_set), pod)
            .await
    }

    /// Mints `pod`'s projected service-account token for the aggregator's
    /// audience and writes it to a file, as the kubelet mounts it.
    pub fn pod_token(&self, pod: &Value) -> anyhow::Result<PathBuf> {
        let name = name_of(pod);
        let token = format!("token-{name}-{:016x}", rand::random::<u64>());
        self.api.register_token(
            &token,
            TokenIdentity {
                namespace: namespace_of(pod).unwrap_or_default().to_string(),
                service_account: "default".into(),
                pod_name: Some(name.to_string()),
                pod_uid: Some(uid_of(pod).to_string()),
                audiences: vec!["wva-aggregator".into()],
                expires: None,
            },
        );
        self.token_file(&format!("{name}.token"), &token)
    }

    /// Writes `token` to a file in the cluster's directory.
    fn token_file(&self, file: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(file);
        std::fs::write(&path, token).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Creates or updates a ConfigMap in [`SYSTEM_NAMESPACE`] (server-side
    /// apply: keys it does not name are kept).
    pub async fn apply_config_map(
        &self,
        name: &str,
        data: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let data: BTreeMap<&str, &str> = data.iter().copied().collect();
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": SYSTEM_NAMESPACE },
            "data": data,
        });
        let applied = self
            .resource_api(Resource::ConfigMaps, Some(SYSTEM_NAMESPACE))
            .patch(name, &PatchParams::apply("e2e-test"), &Patch::Apply(&cm))
            .await
            .with_context(|| format!("apply ConfigMap {name}"))?;
        Ok(serde_json::to_value(applied)?)
    }

    /// An object as stored.
    pub fn get(&self, resource: Resource, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.api.get(resource, namespace, name)
    }

    /// The VariantAutoscaling as stored.
    pub fn va(&self, namespace: &str, name: &str) -> Option<Value> {
        self.api
            .get(Resource::VariantAutoscalings, Some(namespace), name)
    }

    /// The Events about one object, oldest first.
    pub fn events_about(&self, namespace: &str, kind: &str, name: &str) -> Vec<EventSummary> {
        self.api
            .events(namespace)
            .iter()
            .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
            .map(|e| EventSummary {
                type_: str_of(&e["type"]),
                reason: str_of(&e["reason"]),
                note: str_of(&e["note"]),
                count: e["series"]["count"].as_u64().unwrap_or(1),
            })
            .collect()
    }

    /// The command line of an aggregator in Kubernetes mode, as replica
    /// `pod_name` in [`SYSTEM_NAMESPACE`] (stdout discarded, stderr inherited).
    pub fn aggregator_command(
        &self,
        pod_name: &str,
        grpc: SocketAddr,
        metrics: SocketAddr,
        extra: &[&str],
    ) -> Command {
        let mut cmd = aggregator(grpc, metrics);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", SYSTEM_NAMESPACE)
            .env("POD_NAME", pod_name)
            .args(FAST_ELECTION)
            .args(extra);
        cmd
    }

    /// Starts an aggregator replica named `pod_name` on free ports.
    pub fn start_aggregator(&self, pod_name: &str, extra: &[&str]) -> anyhow::Result<Aggregator> {
        let (grpc, metrics) = (free_addr(), free_addr());
        let child = self
            .aggregator_command(pod_name, grpc, metrics, extra)
            .spawn()
            .context("start wva-aggregator")?;
        Ok(Aggregator {
            proc: Proc { child },
            grpc,
            metrics,
        })
    }

    /// The holder of the leader Lease, if any.
    pub fn leader(&self) -> Option<String> {
        let lease = self
            .api
            .get(Resource::Leases, Some(SYSTEM_NAMESPACE), LEASE)?;
        lease["spec"]["holderIdentity"].as_str().map(String::from)
    }
}

/// One Event, reduced to what tests assert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub type_: String,
    pub reason: String,
    /// The note of the first occurrence: repeats (same type, reason and
    /// object) only count up `series.count`, as client-go's recorder does.
    pub note: String,
    pub count: u64,
}

/// A running aggregator in Kubernetes mode.
pub struct Aggregator {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl Aggregator {
    /// The gRPC URL agents stream to.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// An agent in a pod: scrapes `target` and streams to `aggregators`
/// (comma-separated URLs) claiming pod `pod` with UID `uid`, presenting
/// `token` when given. Its `--variant` is [`CLAIMED_VARIANT`].
pub struct PodAgent<'a> {
    pub target: SocketAddr,
    pub aggregators: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
    pub token: Option<&'a Path>,
    pub model: &'a str,
}

impl PodAgent<'_> {
    /// The agent of `pod` as stored, presenting `token`.
    pub fn of<'a>(
        pod: &'a Value,
        token: Option<&'a Path>,
        target: SocketAddr,
        aggregators: &'a str,
        model: &'a str,
    ) -> PodAgent<'a> {
        PodAgent {
            target,
            aggregators,
            namespace: namespace_of(pod).unwrap_or_default(),
            pod: name_of(pod),
            uid: uid_of(pod),
            token,
            model,
        }
    }

    pub fn start(&self) -> anyhow::Result<Proc> {
        let mut extra = vec!["--pod-uid".to_string(), self.uid.to_string()];
        if let Some(token) = self.token {
            extra.push("--token-file".into());
            extra.push(token.to_string_lossy().into_owned());
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        start_agent(&AgentSpec {
            target: self.target,
            aggregator: self.aggregators,
            pod: self.pod,
            namespace: self.namespace,
            variant: CLAIMED_VARIANT,
            model: self.model,
            interval: "250ms",
            extra: &extra,
        })
    }
}

/// An owner reference naming `object`, a `resource`, as the controller.
fn owner(object: &Value, resource: Resource) -> Value {
    json!({
        "apiVersion": resource.api_version(),
        "kind": resource.kind(),
        "name": object["metadata"]["name"],
        "uid": object["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace_of(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

pub fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

fn str_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// `(status, reason, message)` of a VariantAutoscaling's condition of `type_`.
pub fn condition(va: &Value, type_: &str) -> Option<(String, String, String)> {
    let conditions = va["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    Some((
        str_of(&c["status"]),
        str_of(&c["reason"]),
        str_of(&c["message"]),
    ))
}
