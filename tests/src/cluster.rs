//! The API-server double as a cluster for the webhook tests (`webhook.rs`):
//! aggregators pointed at it through a kubeconfig, objects created as kubectl
//! would. Also what both tiers share: an agent speaking for a pod
//! ([`PodAgent`]) and reading a VariantAutoscaling's conditions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::apiserver::{ApiServer, Resource};
use crate::{AgentSpec, Proc, aggregator, free_addr, start_agent};

/// Where the aggregator runs: its configuration ConfigMaps and its Lease live here.
pub const SYSTEM_NAMESPACE: &str = "wva-system";
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

/// The double, a client acting like kubectl, and the kubeconfig of both.
pub struct Cluster {
    pub api: ApiServer,
    client: kube::Client,
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

    /// An object as stored.
    pub fn get(&self, resource: Resource, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.api.get(resource, namespace, name)
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
