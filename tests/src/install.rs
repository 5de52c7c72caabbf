//! wva installed by its chart on the real control plane, its pods run by the
//! local node, and what tests read of it: the objects, as kubectl and the API
//! server show them, and the aggregator's own `/metrics` and decisions.
//!
//! The control-plane tests (`tests/cluster_*.rs`) share these helpers: one
//! namespace `NS` of workloads, one model `MODEL`, one VariantAutoscaling and
//! Deployment `CHAT`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::controlplane::{ControlPlane, forbidden, service_account_user};
use crate::node::LocalNode;
use crate::{
    SLOW_DECODING_SIM, decision_where, eventually, hold_completion, metric, tool, workspace,
};

pub const RELEASE: &str = "wva";

pub const SYSTEM: &str = "wva-system";

/// The chart's ServiceAccount for release `wva`.
pub const SERVICE_ACCOUNT: &str = "wva";

pub const NS: &str = "e2e";

pub const MODEL: &str = "e2e/llama";

/// The VariantAutoscaling and the Deployment it scales share this name.
pub const CHAT: &str = "chat";

pub const CRD: &str = "variantautoscalings.llmd.ai";

/// Upper bound for anything a watch, a controller or an analysis should bring about.
pub const WITHIN: Duration = Duration::from_secs(30);

/// `helm ARGS… --namespace wva-system` against the control plane.
pub async fn helm(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(tool("helm", "WVA_HELM"))
        .args(args)
        .args(["--namespace", SYSTEM])
        .env("KUBECONFIG", plane.kubeconfig())
        .output()
        .await?)
}

/// `kubectl ARGS…` against the control plane; its stdout, or its stderr as the error.
pub async fn kubectl(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(tool("kubectl", "WVA_KUBECTL"))
        .args(args)
        .env("KUBECONFIG", plane.kubeconfig())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// [`kubectl`], printed as a user sees it: the docs show what these runs
/// printed (`-- --nocapture`).
pub async fn shown(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let output = kubectl(plane, args).await?;
    println!("$ kubectl {}\n{output}", args.join(" "));
    Ok(output)
}

pub fn succeeded(output: &Output, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Values for a test installation: the tests' pace (fast analyses and
/// elections); everything else is the chart's default.
pub const TEST_VALUES: &str = "extraArgs={--min-analysis-interval,100ms,--staleness,3s,--lease-duration,3s,--renew-deadline,2s,--retry-period,300ms}";

/// `helm install wva charts/wva` into `wva-system` with `values` (`--set`).
pub async fn install_chart(plane: &ControlPlane, values: &[&str]) -> anyhow::Result<()> {
    let chart = workspace().join("charts/wva");
    let mut args = vec!["install", RELEASE, chart.to_str().context("chart path")?];
    args.push("--create-namespace");
    for value in values {
        args.extend(["--set", value]);
    }
    succeeded(&helm(plane, &args).await?, "helm install")?;
    crd_established(plane).await
}

pub async fn crd_established(plane: &ControlPlane) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(plane.client().await?);
    eventually(WITHIN, "the CRD to be Established", || {
        let crds = crds.clone();
        async move {
            let crd = crds.get_opt(CRD).await?;
            let established = crd
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            Ok(established.then_some(()))
        }
    })
    .await
}

pub async fn create_namespace(plane: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(plane.client().await?);
    // Labelled for injection: every pod created here gets the agent.
    let namespace = serde_json::from_value(json!({"metadata": {
        "name": name,
        "labels": {"wva.llmd.ai/inject-agent": "enabled"},
    }}))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    plane.default_service_account(name).await
}

/// A VariantAutoscaling for `MODEL` scaling Deployment `target`.
pub fn variant_autoscaling(name: &str, target: &str) -> Value {
    json!({
        "apiVersion": "llmd.ai/v1alpha1",
        "kind": "VariantAutoscaling",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"inference.optimization/acceleratorName": "L4"},
        },
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": target},
            "modelID": MODEL,
            "variantCost": "10.0",
        },
    })
}

/// A vLLM Deployment of `replicas`, as a user writes it; the real
/// controllers make its ReplicaSet and Pods, the webhook injects the agent,
/// the local node runs `vllm-sim` for the vLLM container.
pub fn vllm_deployment(name: &str, replicas: i32) -> Value {
    vllm_deployment_with(name, replicas, &[])
}

/// [`vllm_deployment`] with more arguments for the vLLM container (the
/// simulator's, such as [`SLOW_DECODING_SIM`]).
pub fn vllm_deployment_with(name: &str, replicas: i32, extra: &[&str]) -> Value {
    let mut args = vec!["--model", MODEL, "--port", "8000"];
    args.extend(extra);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.11.0",
                    "args": args,
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
                }]},
            },
        },
    })
}

/// The VariantAutoscalings of `NS`.
pub fn vas(client: &kube::Client) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        NS,
        &kube::api::ApiResource {
            group: "llmd.ai".into(),
            version: "v1alpha1".into(),
            api_version: "llmd.ai/v1alpha1".into(),
            kind: "VariantAutoscaling".into(),
            plural: "variantautoscalings".into(),
        },
    )
}

/// The VariantAutoscaling `name` in `NS`, as JSON.
pub async fn va(client: &kube::Client, name: &str) -> anyhow::Result<Option<Value>> {
    Ok(vas(client)
        .get_opt(name)
        .await?
        .map(serde_json::to_value)
        .transpose()?)
}

/// Awaits the VariantAutoscaling `CHAT` satisfying `pred`.
pub async fn va_where(
    client: &kube::Client,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(WITHIN, what, || async {
        Ok(va(client, CHAT).await?.filter(|v| pred(v)))
    })
    .await
}

pub fn has_condition(va: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(va, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

pub fn assert_condition(va: &Value, type_: &str, want: (&str, &str, &str)) {
    let (status, reason, message) = want;
    assert_eq!(
        condition(va, type_),
        Some((status.into(), reason.into(), message.into())),
        "condition {type_} of {}",
        va["status"]
    );
}

pub fn desired_in_status(va: &Value) -> Option<i64> {
    va["status"]["desiredOptimizedAlloc"]["numReplicas"].as_i64()
}

/// The Events about VariantAutoscaling `CHAT`: (type, reason, note).
pub async fn va_events(client: &kube::Client) -> anyhow::Result<Vec<(String, String, String)>> {
    events_about(client, NS, "VariantAutoscaling", CHAT).await
}

/// The first Event about VariantAutoscaling `CHAT` with `reason`, once
/// there is one: (type, reason, note).
pub async fn va_event(
    client: &kube::Client,
    reason: &str,
) -> anyhow::Result<(String, String, String)> {
    eventually(WITHIN, &format!("the {reason} Event"), || async {
        let events = va_events(client).await?;
        Ok(events.into_iter().find(|(_, r, _)| r == reason))
    })
    .await
}

/// Deployment `CHAT` of one slow-decoding replica, its VariantAutoscaling,
/// and a request held on the replica (about 40 % of its KV cache): the
/// pod's name and the request's connection, which ends it when dropped.
pub async fn chat_holding_a_request(
    plane: &ControlPlane,
    client: &kube::Client,
    node: &LocalNode,
) -> anyhow::Result<(String, tokio::net::TcpStream)> {
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane
        .create(&vllm_deployment_with(CHAT, 1, &SLOW_DECODING_SIM))
        .await?;
    let pod = controller_pods(client, CHAT, 1).await?.remove(0);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let sim = serving_sim(node, &pod_name).await?;
    let request = hold_completion(sim, MODEL, 400, 500).await?;
    Ok((pod_name, request))
}

/// The series of `wva_desired_replicas` for `CHAT`, if published.
pub async fn desired_gauge(metrics: SocketAddr) -> anyhow::Result<Option<f64>> {
    let series = metric(metrics, "wva_desired_replicas").await?;
    Ok(series
        .into_iter()
        .find(|(l, _)| l.get("variant_name").map(String::as_str) == Some(CHAT))
        .map(|(_, v)| v))
}

/// The pods the ReplicaSet controller made for Deployment `name`, once
/// there are `count` (not being deleted).
pub async fn controller_pods(
    client: &kube::Client,
    name: &str,
    count: usize,
) -> anyhow::Result<Vec<Pod>> {
    live_pods(client, NS, &format!("app={name}"), count).await
}

/// The pods of `namespace` matching `selector`, once there are `count` (not
/// being deleted).
pub async fn live_pods(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    count: usize,
) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let what = format!("{count} pods {selector} in {namespace}");
    eventually(WITHIN, &what, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(selector)).await?;
            let live: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            Ok((live.len() == count).then_some(live))
        }
    })
    .await
}

/// The refusals the API server answered to the chart's ServiceAccount.
pub fn assert_no_forbidden_request(plane: &ControlPlane) -> anyhow::Result<()> {
    let audit = plane.audit()?;
    let user = service_account_user(SYSTEM, SERVICE_ACCOUNT);
    let refused: Vec<String> = forbidden(&audit, &user)
        .iter()
        .map(|e| e.describe())
        .collect();
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the aggregator: {refused:#?}"
    );
    Ok(())
}

/// An aggregator replica run by the local node from the chart's Deployment.
pub struct Replica {
    pub pod: String,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The CA of the gRPC port's self-made certificate, when it serves TLS
    /// (the chart's default).
    pub grpc_ca: Option<String>,
}

impl Replica {
    /// A name the gRPC certificate covers, to verify it by when dialling
    /// the replica's address.
    pub const GRPC_NAME: &str = "wva-headless.wva-system.svc";

    pub fn url(&self) -> String {
        let scheme = if self.grpc_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc)
    }
}

/// The CA of the gRPC port's self-made certificate, once a replica has made
/// it; `None` when the chart's Deployment serves plaintext.
async fn grpc_ca(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    let deployment = deployments.get(RELEASE).await?;
    let tls = deployment
        .spec
        .iter()
        .flat_map(|s| s.template.spec.iter())
        .flat_map(|p| &p.containers)
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| e.name == "WVA_GRPC_TLS_SECRET");
    if !tls {
        return Ok(None);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM);
    let ca = eventually(WITHIN, "the gRPC port's certificate", || {
        let secrets = secrets.clone();
        async move {
            let secret = secrets.get_opt("wva-grpc-tls").await?;
            Ok(secret
                .and_then(|s| s.data?.remove("ca.crt"))
                .map(|ca| String::from_utf8_lossy(&ca.0).into_owned()))
        }
    })
    .await?;
    Ok(Some(ca))
}

/// The chart's `count` aggregator replicas, once running on `node`.
pub async fn replicas(
    node: &LocalNode,
    client: &kube::Client,
    count: usize,
) -> anyhow::Result<Vec<Replica>> {
    let pods = live_pods(
        client,
        SYSTEM,
        "app.kubernetes.io/component=aggregator",
        count,
    )
    .await?;
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let grpc_ca = grpc_ca(client).await?;
    eventually(WITHIN, "the aggregator replicas running", || {
        let running: Option<Vec<Replica>> = names
            .iter()
            .map(|name| {
                let ip = node.pod_ip(SYSTEM, name)?;
                Some(Replica {
                    pod: name.clone(),
                    grpc: (ip, 9443).into(),
                    metrics: (ip, 8080).into(),
                    grpc_ca: grpc_ca.clone(),
                })
            })
            .collect();
        async move { Ok(running) }
    })
    .await
}

/// The holder of the aggregator's Lease.
pub async fn leader(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get_opt("wva-aggregator-leader").await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

pub async fn webhook_ca(plane: &ControlPlane) -> anyhow::Result<String> {
    kubectl(
        plane,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "wva-agent-injector",
            "-o",
            "jsonpath={.webhooks[*].clientConfig.caBundle}",
        ],
    )
    .await
}

/// A control plane with the chart installed (with [`TEST_VALUES`] and
/// `values`), its aggregator replicas run by the local node (together with
/// the pods of `NS`) and its webhook reachable. The node comes first, so it
/// stops its processes before the control plane goes: fields drop in this
/// order, and so do bindings destructured as `Wva { plane, client, node, .. }`
/// (in reverse).
pub struct Wva {
    pub node: LocalNode,
    pub replicas: Vec<Replica>,
    pub client: kube::Client,
    pub plane: ControlPlane,
}

pub async fn wva_on_a_node(replicas_wanted: usize, values: &[&str]) -> anyhow::Result<Wva> {
    wva_on_a_node_with(replicas_wanted, values, Vec::new()).await
}

/// [`wva_on_a_node`], with `secrets` in `wva-system` before the chart is
/// installed (as an earlier installation would have left them).
pub async fn wva_on_a_node_with(
    replicas_wanted: usize,
    values: &[&str],
    secrets: Vec<Secret>,
) -> anyhow::Result<Wva> {
    wva_on(
        ControlPlane::start().await?,
        replicas_wanted,
        values,
        secrets,
    )
    .await
}

/// [`wva_on_a_node_with`] on a control plane already started, where
/// something the chart's values point at (such as a Prometheus) runs.
pub async fn wva_on(
    plane: ControlPlane,
    replicas_wanted: usize,
    values: &[&str],
    secrets: Vec<Secret>,
) -> anyhow::Result<Wva> {
    let client = plane.client().await?;
    if !secrets.is_empty() {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let system = serde_json::from_value(json!({"metadata": {"name": SYSTEM}}))?;
        namespaces.create(&PostParams::default(), &system).await?;
        let api: Api<Secret> = Api::namespaced(client.clone(), SYSTEM);
        for secret in &secrets {
            api.create(&PostParams::default(), secret).await?;
        }
    }
    let node = LocalNode::start(&plane, "wva-local", &[SYSTEM, NS]).await?;
    let count = format!("replicas={replicas_wanted}");
    let mut all = vec![TEST_VALUES, count.as_str()];
    all.extend(values);
    install_chart(&plane, &all).await?;
    let running = replicas(&node, &client, replicas_wanted).await?;
    eventually(WITHIN, "the webhook's CA in its configuration", || async {
        let bundle = webhook_ca(&plane).await?;
        Ok((!bundle.trim().is_empty()).then_some(()))
    })
    .await?;
    // Until a replica is Ready, its Service has no endpoint and a pod is
    // admitted without the agent (failurePolicy Ignore), as in any cluster.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), SYSTEM);
    eventually(
        WITHIN,
        "a ready endpoint behind the webhook's Service",
        || {
            let slices = slices.clone();
            async move {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=wva-webhook"))
                    .await?;
                let ready = list
                    .items
                    .iter()
                    .flat_map(|s| &s.endpoints)
                    .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
                Ok(ready.then_some(()))
            }
        },
    )
    .await?;
    // Agents find every replica through the headless Service's endpoints.
    let headless = "kubernetes.io/service-name=wva-headless";
    eventually(WITHIN, "every replica behind the headless Service", || {
        let slices = slices.clone();
        async move {
            let list = slices.list(&ListParams::default().labels(headless)).await?;
            let addresses = list.items.iter().flat_map(|s| &s.endpoints).count();
            Ok((addresses == replicas_wanted).then_some(()))
        }
    })
    .await?;
    create_namespace(&plane, NS).await?;
    Ok(Wva {
        plane,
        client,
        node,
        replicas: running,
    })
}

/// How many status writes of VariantAutoscaling `name` the chart's
/// ServiceAccount has made, from the API server's audit log.
pub fn status_writes(plane: &ControlPlane, name: &str) -> anyhow::Result<usize> {
    let user = service_account_user(SYSTEM, SERVICE_ACCOUNT);
    Ok(plane
        .audit()?
        .iter()
        .filter(|e| {
            e.user.username == user
                && e.verb == "patch"
                && e.code() == 200
                && e.object_ref.as_ref().is_some_and(|o| {
                    o.resource == "variantautoscalings"
                        && o.subresource.as_deref() == Some("status")
                        && o.name.as_deref() == Some(name)
                })
        })
        .count())
}

/// A counter or gauge without labels, 0 when absent.
pub async fn scalar(metrics: SocketAddr, name: &str) -> anyhow::Result<f64> {
    Ok(metric(metrics, name).await?.first().map_or(0.0, |s| s.1))
}

/// `wva_agent_stream_refusals_total` by reason.
pub async fn refusals(metrics: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let series = metric(metrics, "wva_agent_stream_refusals_total").await?;
    Ok(series
        .into_iter()
        .map(|(mut labels, n)| (labels.remove("reason").unwrap_or_default(), n))
        .collect())
}

/// The reasons counted more often in `now` than in `before`.
pub fn new_refusals(before: &BTreeMap<String, f64>, now: BTreeMap<String, f64>) -> Vec<String> {
    now.into_iter()
        .filter(|(reason, n)| *n > before.get(reason).copied().unwrap_or(0.0))
        .map(|(reason, _)| reason)
        .collect()
}

/// The Events about `kind` `name` in `namespace`: (type, reason, note).
pub async fn events_about(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| {
            let text = |s: Option<String>| s.unwrap_or_default();
            (text(e.type_), text(e.reason), text(e.note))
        })
        .collect())
}

/// Merge-patches the data of the chart's ConfigMap `name`.
pub async fn patch_config_map(
    client: &kube::Client,
    name: &str,
    data: Value,
) -> anyhow::Result<()> {
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    maps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": data})),
    )
    .await?;
    Ok(())
}

/// `CHAT`'s decision on the aggregator at `metrics`, once it satisfies `pred`.
pub async fn chat_decision_where(
    metrics: SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    decision_where(metrics, WITHIN, what, |d| {
        d["variant"]["name"] == CHAT && pred(d)
    })
    .await
}

/// A Service `name` in `NS` selecting the pods labelled `app: app`.
pub fn service_selecting(name: &str, app: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": app}, "ports": [{"port": port}]},
    })
}

/// `(status, reason, message)` of a VariantAutoscaling's condition of `type_`.
pub fn condition(va: &Value, type_: &str) -> Option<(String, String, String)> {
    let conditions = va["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Some((text(&c["status"]), text(&c["reason"]), text(&c["message"])))
}

/// Scale to zero on, models idle for 2 s go to zero.
pub const SCALE_TO_ZERO: [&str; 2] = [
    "config.WVA_SCALE_TO_ZERO=true",
    "scaleToZero.defaults.retention_period=2s",
];

/// [`SCALE_TO_ZERO`], with an endpoint picker's queue read every 300 ms to
/// wake a model.
pub const WAKING_FROM_ZERO: [&str; 3] = [
    SCALE_TO_ZERO[0],
    SCALE_TO_ZERO[1],
    "config.WVA_POLL_INTERVAL=300ms",
];

/// Saturation thresholds under which one request held on a slow-decoding
/// replica ([`chat_holding_a_request`], about 40 % of its KV cache)
/// saturates it.
pub const HELD_REQUEST_SATURATES: &str = "kvCacheThreshold: 0.3\nkvSpareTrigger: 0.1\n";

/// Sets the default saturation configuration to [`HELD_REQUEST_SATURATES`]
/// and the keys of `more` (lines of `key: value`).
pub async fn saturating_on_a_held_request(client: &kube::Client, more: &str) -> anyhow::Result<()> {
    let config = format!("{HELD_REQUEST_SATURATES}{more}");
    patch_config_map(
        client,
        "saturation-scaling-config",
        json!({"default": config}),
    )
    .await
}

/// The `spec.replicas` of Deployment `namespace/name`.
pub async fn spec_replicas(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Option<i32>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    Ok(deployments
        .get_opt(name)
        .await?
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas))
}

/// The vLLM server of pod `name` in `NS` (its `vllm-sim`, port 8000), once
/// the node runs it and it answers `/health`.
pub async fn serving_sim(node: &LocalNode, name: &str) -> anyhow::Result<SocketAddr> {
    serving_sim_in(node, NS, name).await
}

/// [`serving_sim`] of a pod in `namespace`.
pub async fn serving_sim_in(
    node: &LocalNode,
    namespace: &str,
    name: &str,
) -> anyhow::Result<SocketAddr> {
    let what = format!("pod {namespace}/{name} serving");
    eventually(WITHIN, &what, || async {
        let Some(ip) = node.pod_ip(namespace, name) else {
            return Ok(None);
        };
        let sim = SocketAddr::from((ip, 8000));
        let healthy = crate::http_get(sim, "/health")
            .await
            .is_ok_and(|(s, _)| s == 200);
        Ok(healthy.then_some(sim))
    })
    .await
}

/// An endpoint picker `gateway-epp` in `NS` whose flow-control queue for
/// `MODEL` the returned body holds (empty at first), and the annotations
/// that point `va` at it. The picker has no agent and is no image the local
/// node runs: the test serves its metrics at an address of the pod network
/// and reports its pod running there, as its kubelet would.
pub async fn endpoint_picker(
    plane: &ControlPlane,
    client: &kube::Client,
    va: &mut Value,
) -> anyhow::Result<std::sync::Arc<std::sync::Mutex<String>>> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(crate::flow_control(MODEL, 0)));
    let epp = crate::serve_metrics_at("198.19.1.1:0".parse()?, queue.clone()).await?;
    va["metadata"]["annotations"] = json!({
        "wva.llmd.ai/epp-service": "gateway-epp",
        "wva.llmd.ai/epp-metrics-port": epp.port().to_string(),
    });
    plane
        .create(&service_selecting("gateway-epp", "gateway-epp", 9090))
        .await?;
    let picker = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gateway-epp-0", "namespace": NS, "labels": {"app": "gateway-epp"},
                     "annotations": {"wva.llmd.ai/inject-agent": "false"}},
        "spec": {"containers": [{"name": "epp",
            "image": "registry.k8s.io/gateway-api-inference-extension/epp:v1.0.0"}]},
    });
    plane.create(&picker).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let running = json!({"status": {"phase": "Running", "podIP": epp.ip().to_string(),
        "podIPs": [{"ip": epp.ip().to_string()}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(
        "gateway-epp-0",
        &PatchParams::default(),
        &Patch::Merge(&running),
    )
    .await?;
    Ok(queue)
}
