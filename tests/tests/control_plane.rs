//! Kubernetes mode against a real control plane: kube-apiserver,
//! kube-controller-manager and etcd at the release pinned in
//! `tests/controlplane/go.mod`, started by `scripts/cluster` for each test.
//!
//! What only a real server shows is asserted here: the chart accepted by
//! helm and the API server, the CRD's validation, defaulting and pruning,
//! the chart's RBAC as the one thing the aggregator may do (it runs with a
//! token of the chart's ServiceAccount, and the API server's audit log must
//! show no refusal), Deployments → ReplicaSets → Pods made by the real
//! controllers, bound service-account tokens checked by TokenReview, and
//! leader election on a real Lease.
//!
//! No kubelet runs here: where a pod must run, the test starts its
//! `vllm-sim` and `wva-agent` itself and reports the pod Ready through the
//! status subresource, as a kubelet would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::process::Command;
use wva_e2e::controlplane::{ControlPlane, forbidden, service_account_user};
use wva_e2e::node::LocalNode;
use wva_e2e::pod_agent::{PodAgent, condition};
use wva_e2e::*;

const RELEASE: &str = "wva";
const SYSTEM: &str = "wva-system";
/// The chart's ServiceAccount for release `wva`.
const SERVICE_ACCOUNT: &str = "wva";
const NS: &str = "e2e";
const MODEL: &str = "e2e/llama";
/// The VariantAutoscaling and the Deployment it scales share this name.
const CHAT: &str = "chat";
const CRD: &str = "variantautoscalings.llmd.ai";
/// Upper bound for anything a watch, a controller or an analysis should bring about.
const WITHIN: Duration = Duration::from_secs(30);

/// `helm ARGS… --namespace wva-system` against the control plane.
async fn helm(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(tool("helm", "WVA_HELM"))
        .args(args)
        .args(["--namespace", SYSTEM])
        .env("KUBECONFIG", plane.kubeconfig())
        .output()
        .await?)
}

/// `kubectl ARGS…` against the control plane; its stdout, or its stderr as the error.
async fn kubectl(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
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

fn succeeded(output: &Output, what: &str) -> anyhow::Result<()> {
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
const TEST_VALUES: &str = "extraArgs={--min-analysis-interval,100ms,--staleness,3s,--lease-duration,3s,--renew-deadline,2s,--retry-period,300ms}";

/// `helm install wva charts/wva` into `wva-system` with `values` (`--set`).
async fn install_chart(plane: &ControlPlane, values: &[&str]) -> anyhow::Result<()> {
    let chart = workspace().join("charts/wva");
    let mut args = vec!["install", RELEASE, chart.to_str().context("chart path")?];
    args.push("--create-namespace");
    for value in values {
        args.extend(["--set", value]);
    }
    succeeded(&helm(plane, &args).await?, "helm install")?;
    crd_established(plane).await
}

async fn crd_established(plane: &ControlPlane) -> anyhow::Result<()> {
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

async fn create_namespace(plane: &ControlPlane, name: &str) -> anyhow::Result<()> {
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
fn variant_autoscaling(name: &str, target: &str) -> Value {
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
fn vllm_deployment(name: &str, replicas: i32) -> Value {
    vllm_deployment_with(name, replicas, &[])
}

/// [`vllm_deployment`] with more arguments for the vLLM container (the
/// simulator's, such as [`SLOW_DECODING_SIM`]).
fn vllm_deployment_with(name: &str, replicas: i32, extra: &[&str]) -> Value {
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

/// The VariantAutoscaling `name` in `NS`, as JSON.
async fn va(client: &kube::Client, name: &str) -> anyhow::Result<Option<Value>> {
    let api = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        NS,
        &kube::api::ApiResource {
            group: "llmd.ai".into(),
            version: "v1alpha1".into(),
            api_version: "llmd.ai/v1alpha1".into(),
            kind: "VariantAutoscaling".into(),
            plural: "variantautoscalings".into(),
        },
    );
    Ok(api
        .get_opt(name)
        .await?
        .map(serde_json::to_value)
        .transpose()?)
}

/// Awaits the VariantAutoscaling `CHAT` satisfying `pred`.
async fn va_where(
    client: &kube::Client,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(WITHIN, what, || async {
        Ok(va(client, CHAT).await?.filter(|v| pred(v)))
    })
    .await
}

fn has_condition(va: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(va, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn assert_condition(va: &Value, type_: &str, want: (&str, &str, &str)) {
    let (status, reason, message) = want;
    assert_eq!(
        condition(va, type_),
        Some((status.into(), reason.into(), message.into())),
        "condition {type_} of {}",
        va["status"]
    );
}

fn desired_in_status(va: &Value) -> Option<i64> {
    va["status"]["desiredOptimizedAlloc"]["numReplicas"].as_i64()
}

/// The Events about VariantAutoscaling `CHAT`: (type, reason, note).
async fn va_events(client: &kube::Client) -> anyhow::Result<Vec<(String, String, String)>> {
    events_about(client, NS, "VariantAutoscaling", CHAT).await
}

/// The series of `wva_desired_replicas` for `CHAT`, if published.
async fn desired_gauge(metrics: SocketAddr) -> anyhow::Result<Option<f64>> {
    let series = metric(metrics, "wva_desired_replicas").await?;
    Ok(series
        .into_iter()
        .find(|(l, _)| l.get("variant_name").map(String::as_str) == Some(CHAT))
        .map(|(_, v)| v))
}

/// The pods the ReplicaSet controller made for Deployment `name`, once
/// there are `count` (not being deleted).
async fn controller_pods(
    client: &kube::Client,
    name: &str,
    count: usize,
) -> anyhow::Result<Vec<Pod>> {
    live_pods(client, NS, &format!("app={name}"), count).await
}

/// The pods of `namespace` matching `selector`, once there are `count` (not
/// being deleted).
async fn live_pods(
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
fn assert_no_forbidden_request(plane: &ControlPlane) -> anyhow::Result<()> {
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

#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    install_chart(&plane, &[]).await?;

    // Every object helm rendered was accepted and is stored.
    let manifest = helm(&plane, &["get", "manifest", RELEASE]).await?;
    succeeded(&manifest, "helm get manifest")?;
    let manifest = String::from_utf8(manifest.stdout)?;
    let mut objects = 0;
    for doc in serde_yaml::Deserializer::from_str(&manifest) {
        let object: Value = serde::Deserialize::deserialize(doc)?;
        if object.is_null() {
            continue;
        }
        let kind = object["kind"].as_str().context("kind")?;
        let name = object["metadata"]["name"].as_str().context("name")?;
        let namespaced = object["metadata"]["namespace"].as_str().is_some()
            || !matches!(
                kind,
                "ClusterRole" | "ClusterRoleBinding" | "MutatingWebhookConfiguration"
            );
        let mut args = vec!["get", kind, name, "-o", "name"];
        if namespaced {
            args.extend(["-n", SYSTEM]);
        }
        kubectl(&plane, &args)
            .await
            .with_context(|| format!("{kind} {name} of the release"))?;
        objects += 1;
    }
    assert!(
        objects >= 15,
        "{objects} objects in the release:\n{manifest}"
    );

    // The real controllers take the Deployment from there.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    eventually(WITHIN, "the aggregator's two pods", || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=wva"))
                .await?;
            Ok((list.items.len() == 2).then_some(()))
        }
    })
    .await?;

    // values.schema.json is honoured before anything reaches the server.
    let chart = workspace().join("charts/wva");
    let chart = chart.to_str().context("chart path")?;
    let refused = helm(&plane, &["upgrade", RELEASE, chart, "--set", "replicas=-1"]).await?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("replicas"), "{stderr}");

    // An upgrade changes what it says and keeps the rest.
    let upgraded = helm(&plane, &["upgrade", RELEASE, chart, "--set", "replicas=3"]).await?;
    succeeded(&upgraded, "helm upgrade")?;
    let deployment = deployments.get(RELEASE).await?;
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3));
    let history = helm(&plane, &["history", RELEASE, "-o", "json"]).await?;
    let history: Vec<Value> = serde_json::from_slice(&history.stdout)?;
    assert_eq!(history.len(), 2, "{history:?}");

    // An uninstall removes every object but the CRD (helm never deletes crds/).
    succeeded(
        &helm(&plane, &["uninstall", RELEASE]).await?,
        "helm uninstall",
    )?;
    let release = "app.kubernetes.io/instance=wva";
    let namespaced = "deployments,services,configmaps,serviceaccounts,roles,rolebindings";
    let cluster_scoped = "clusterroles,clusterrolebindings,mutatingwebhookconfigurations";
    for (kinds, namespace) in [(namespaced, SYSTEM), (cluster_scoped, "")] {
        let mut args = vec!["get", kinds, "-l", release, "-o", "name"];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        let left = kubectl(&plane, &args).await?;
        assert_eq!(left.trim(), "", "left behind by the uninstall");
    }
    crd_established(&plane).await?;
    Ok(())
}

#[tokio::test]
async fn the_api_server_validates_defaults_and_prunes_variant_autoscalings() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    // The CRD exactly as the aggregator prints it (the chart's copy is
    // checked equal to it in chart.rs).
    let crd = std::process::Command::new(bin("wva-aggregator"))
        .arg("print-crd")
        .output()?;
    succeeded(&crd, "wva-aggregator print-crd")?;
    let crd: Value = serde_yaml::from_slice(&crd.stdout)?;
    plane.apply(&crd).await?;
    crd_established(&plane).await?;
    create_namespace(&plane, NS).await?;

    let create = |object: Value| {
        let plane = &plane;
        async move { plane.create(&object).await }
    };
    let message = |result: anyhow::Result<Value>| match result {
        Ok(stored) => panic!("the API server accepted {stored}"),
        Err(e) => format!("{e:#}"),
    };

    let mut no_model = variant_autoscaling("no-model", CHAT);
    no_model["spec"]
        .as_object_mut()
        .context("spec")?
        .remove("modelID");
    let refused = message(create(no_model).await);
    assert!(
        refused.contains("spec.modelID: Required value"),
        "{refused}"
    );

    let mut bad_cost = variant_autoscaling("bad-cost", CHAT);
    bad_cost["spec"]["variantCost"] = json!("cheap");
    let refused = message(create(bad_cost).await);
    assert!(
        refused.contains(r#"spec.variantCost: Invalid value: "cheap": spec.variantCost in body should match '^\d+(\.\d+)?$'"#),
        "{refused}"
    );

    // Defaulted and pruned by the schema.
    let mut plain = variant_autoscaling(CHAT, CHAT);
    plain["spec"]
        .as_object_mut()
        .context("spec")?
        .remove("variantCost");
    plain["spec"]["replicasWanted"] = json!(3);
    let stored = create(plain).await?;
    assert_eq!(stored["spec"]["variantCost"], "10.0", "{stored}");
    assert!(
        stored["spec"].get("replicasWanted").is_none(),
        "pruned: {stored}"
    );
    assert!(
        stored
            .get("status")
            .is_none_or(|s| s.get("desiredOptimizedAlloc").is_none())
    );

    // The short name and printer columns, as a user sees them.
    let table = kubectl(&plane, &["get", "va", "-n", NS]).await?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .context("a header")?
        .split_whitespace()
        .collect();
    assert_eq!(header.first(), Some(&"NAME"), "{table}");
    assert!(header.contains(&"MODEL"), "{table}");
    assert!(table.contains(CHAT) && table.contains(MODEL), "{table}");
    Ok(())
}

/// An aggregator replica run by the local node from the chart's Deployment.
struct Replica {
    pod: String,
    grpc: SocketAddr,
    metrics: SocketAddr,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// The chart's `count` aggregator replicas, once running on `node`.
async fn replicas(
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
    eventually(WITHIN, "the aggregator replicas running", || {
        let running: Option<Vec<Replica>> = names
            .iter()
            .map(|name| {
                let ip = node.pod_ip(SYSTEM, name)?;
                Some(Replica {
                    pod: name.clone(),
                    grpc: (ip, 9443).into(),
                    metrics: (ip, 8080).into(),
                })
            })
            .collect();
        async move { Ok(running) }
    })
    .await
}

/// The holder of the aggregator's Lease.
async fn leader(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get_opt("wva-aggregator-leader").await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

async fn webhook_ca(plane: &ControlPlane) -> anyhow::Result<String> {
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
/// `values`), its aggregator replicas run
/// by the local node (together with the pods of `NS`) and its webhook
/// reachable. Destructure it in this order, so the node stops its processes
/// before the control plane goes.
struct Wva {
    plane: ControlPlane,
    client: kube::Client,
    node: LocalNode,
    replicas: Vec<Replica>,
}

async fn wva_on_a_node(replicas_wanted: usize, values: &[&str]) -> anyhow::Result<Wva> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
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

#[tokio::test]
async fn deployments_run_with_injected_agents_and_their_variant_settles() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let aggregator = &replicas[0];

    // a. The VariantAutoscaling comes first: its Deployment is reported missing.
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    let va = va_where(&client, "the missing Deployment in status", |va| {
        condition(va, "Ready").is_some()
    })
    .await?;
    assert_condition(
        &va,
        "TargetResolved",
        ("False", "TargetNotFound", "Deployment 'chat' not found"),
    );
    assert_condition(
        &va,
        "Ready",
        (
            "False",
            "DeploymentNotFound",
            "Target deployment 'chat' not found",
        ),
    );
    assert_eq!(
        leader(&client).await?.as_deref(),
        Some(aggregator.pod.as_str())
    );

    // b. The Deployment: the controllers make its pod, kube-apiserver calls
    // the webhook through its Service, the node runs the sim and the agent.
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let sidecars: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        sidecars,
        ["wva-agent"],
        "injected by the webhook on creation"
    );
    let va = va_where(&client, "fresh metrics and a decision", |va| {
        has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va).is_some()
    })
    .await?;
    assert_condition(
        &va,
        "TargetResolved",
        ("True", "TargetFound", "Deployment 'chat' found"),
    );
    assert_condition(
        &va,
        "MetricsAvailable",
        (
            "True",
            "MetricsFound",
            "all 1 ready replicas report fresh metrics",
        ),
    );
    assert_eq!(desired_in_status(&va), Some(1), "{}", va["status"]);
    assert_eq!(va["status"]["desiredOptimizedAlloc"]["accelerator"], "L4");
    let metrics = aggregator.metrics;
    eventually(WITHIN, "wva_desired_replicas of chat", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0))
    })
    .await?;
    let injected = metric(metrics, "wva_webhook_admissions_total").await?;
    assert!(
        injected
            .iter()
            .any(|(l, n)| l.get("outcome").map(String::as_str) == Some("injected") && *n >= 1.0),
        "{injected:?}"
    );
    let events = va_events(&client).await?;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "DeploymentNotFound"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "TargetFound"),
        "{events:?}"
    );

    // What a user sees (docs/quickstart.md shows this table).
    let table = kubectl(&plane, &["get", "va", "-n", NS]).await?;
    println!("kubectl get va -n {NS}\n{table}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .context("a row")?
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&CHAT), "{table}");
    assert!(
        row.contains(&MODEL) && row.contains(&"L4") && row.contains(&"True"),
        "{table}"
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .context("a header")?
        .split_whitespace()
        .collect();
    let quickstart = std::fs::read_to_string(workspace().join("docs/quickstart.md"))?;
    assert!(
        quickstart
            .lines()
            .any(|l| l.split_whitespace().eq(header.iter().copied())),
        "docs/quickstart.md shows the columns kubectl prints: {header:?}"
    );

    // Steady state: analyses go on (one per sample), the status is not
    // written again.
    let writes = status_writes(&plane, CHAT)?;
    assert!(
        writes >= 2,
        "status written by the ServiceAccount: {writes}"
    );
    let runs = scalar(metrics, "wva_analysis_runs_total").await?;
    eventually(WITHIN, "ten more analyses", || async move {
        Ok((scalar(metrics, "wva_analysis_runs_total").await? >= runs + 10.0).then_some(()))
    })
    .await?;
    assert_eq!(
        status_writes(&plane, CHAT)?,
        writes,
        "unchanged analyses write nothing"
    );

    // c. The Deployment is deleted (the garbage collector takes its
    // ReplicaSet and pods, the node stops them): the decision is withdrawn,
    // the VariantAutoscaling stays.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .delete(CHAT, &DeleteParams::background())
        .await?;
    let va = va_where(&client, "the deleted Deployment in status", |va| {
        has_condition(va, "Ready", "False", "DeploymentNotFound")
    })
    .await?;
    assert_condition(
        &va,
        "Ready",
        (
            "False",
            "DeploymentNotFound",
            "Target deployment 'chat' no longer exists",
        ),
    );
    assert_condition(
        &va,
        "TargetResolved",
        ("False", "TargetNotFound", "Deployment 'chat' not found"),
    );
    assert_eq!(desired_in_status(&va), None, "{}", va["status"]);
    eventually(WITHIN, "the gauge withdrawn", || async move {
        Ok(desired_gauge(metrics).await?.is_none().then_some(()))
    })
    .await?;
    controller_pods(&client, CHAT, 0).await?;

    // d. The Deployment comes back: new pods, injected, and the variant
    // settles again by itself.
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    let va = va_where(&client, "the recreated Deployment in status", |va| {
        has_condition(va, "Ready", "True", "TargetReady")
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va) == Some(1)
    })
    .await?;
    assert_condition(
        &va,
        "OptimizationReady",
        (
            "True",
            "OptimizationSucceeded",
            "desired 1 replicas (steady)",
        ),
    );
    eventually(
        WITHIN,
        "wva_desired_replicas of chat again",
        || async move { Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0)) },
    )
    .await?;

    // Everything above was done with the chart's permissions and no more.
    assert_no_forbidden_request(&plane)?;
    drop(node);
    Ok(())
}

/// How many status writes of VariantAutoscaling `name` the chart's
/// ServiceAccount has made, from the API server's audit log.
fn status_writes(plane: &ControlPlane, name: &str) -> anyhow::Result<usize> {
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

#[tokio::test]
async fn bound_tokens_speak_only_for_their_own_live_pod() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let (metrics, url) = (replicas[0].metrics, replicas[0].url());
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 2)).await?;
    let pods = controller_pods(&client, CHAT, 2).await?;
    let (a, b) = (&pods[0], &pods[1]);
    eventually(WITHIN, "both pods' agents streaming", || async move {
        Ok((scalar(metrics, "wva_connected_agents").await? == 2.0).then_some(()))
    })
    .await?;
    let before = refusals(metrics).await?;

    // Pod a's genuine token (as the node projected it), presented by a
    // stream claiming to be pod b: refused, counted, and the honest streams
    // go on.
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let a_token = node.volume_file(NS, &name(a), "wva-agent-token", "token");
    let a_sim: SocketAddr = (node.pod_ip(NS, &name(a)).context("a's address")?, 8000).into();
    let (a_value, b_value) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    let _impostor = PodAgent {
        token: Some(&a_token),
        ..PodAgent::of(&b_value, None, a_sim, &url, MODEL)
    }
    .start()?;
    // A token bound to pod b, for another audience.
    let b_uid = b.metadata.uid.as_deref().context("uid")?;
    let wrong_audience = plane
        .token(NS, "default", &["someone-else"], Some((&name(b), b_uid)))
        .await?;
    let dir = tempfile::tempdir()?;
    let wrong_audience_file = dir.path().join("wrong-audience.token");
    std::fs::write(&wrong_audience_file, wrong_audience)?;
    let _stranger =
        PodAgent::of(&b_value, Some(&wrong_audience_file), a_sim, &url, MODEL).start()?;
    // A made-up token, and no token at all.
    let forged_file = dir.path().join("forged.token");
    std::fs::write(&forged_file, "eyJhbGciOiJSUzI1NiJ9.forged.sig")?;
    let _forger = PodAgent::of(&b_value, Some(&forged_file), a_sim, &url, MODEL).start()?;
    let _anonymous = PodAgent::of(&b_value, None, a_sim, &url, MODEL).start()?;
    let before_ref = &before;
    let refused = eventually(WITHIN, "four refusals", || async move {
        let now = refusals(metrics).await?;
        let grown = |reason: &str| {
            now.get(reason).copied().unwrap_or(0.0) - before_ref.get(reason).copied().unwrap_or(0.0)
        };
        let counts = [
            grown("no_token"),
            grown("pod_mismatch"),
            grown("token_invalid"),
        ];
        let done = counts[0] >= 1.0 && counts[1] >= 1.0 && counts[2] >= 2.0;
        Ok(done.then(|| new_refusals(before_ref, now)))
    })
    .await?;
    assert_eq!(refused, ["no_token", "pod_mismatch", "token_invalid"]);
    assert_eq!(scalar(metrics, "wva_connected_agents").await?, 2.0);
    let mut honest = vec![name(a), name(b)];
    honest.sort();
    let honest_ref = &honest;
    eventually(
        WITHIN,
        "only the honest pods in the analysis",
        || async move {
            let decision = decisions(metrics)
                .await?
                .into_iter()
                .find(|d| d["variant"]["name"] == CHAT);
            Ok(decision.filter(|d| {
                let mut pods: Vec<String> = d["inputs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["pod"].as_str().map(String::from))
                    .collect();
                pods.sort();
                d["data"] == "fresh" && pods == *honest_ref
            }))
        },
    )
    .await?;

    // Pod a is deleted (its ReplicaSet replaces it): its token dies with it.
    let a_token_text = std::fs::read_to_string(&a_token)?;
    let saved = dir.path().join("a.token");
    std::fs::write(&saved, &a_token_text)?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    pod_api.delete(&name(a), &DeleteParams::default()).await?;
    let a_name = name(a);
    eventually(WITHIN, "pod a to be gone", || {
        let (pod_api, a_name) = (pod_api.clone(), a_name.clone());
        async move { Ok(pod_api.get_opt(&a_name).await?.is_none().then_some(())) }
    })
    .await?;
    // The API server's own authenticator lags the deletion a little (it
    // reads pods from its cache); the aggregator's pod watch covers the gap.
    let error = eventually(WITHIN, "the API server to refuse the token", || async {
        let review = plane.review_token(&a_token_text, "wva-aggregator").await?;
        Ok(review
            .authenticated
            .is_none()
            .then_some(review.error.unwrap_or_default()))
    })
    .await?;
    assert!(error.contains("token has been invalidated"), "{error}");
    let before = refusals(metrics).await?;
    let b_sim: SocketAddr = (node.pod_ip(NS, &name(b)).context("b's address")?, 8000).into();
    let _late = PodAgent::of(&a_value, Some(&saved), b_sim, &url, MODEL).start()?;
    let before_ref = &before;
    let refused = eventually(WITHIN, "the dead pod's token refused", || async move {
        let new = new_refusals(before_ref, refusals(metrics).await?);
        Ok((!new.is_empty()).then_some(new))
    })
    .await?;
    // Refused as unknown while a cached review still vouches for the token,
    // as invalid once the aggregator asks the API server again.
    assert!(
        refused
            .iter()
            .all(|r| r == "pod_unknown" || r == "token_invalid"),
        "{refused:?}"
    );
    assert_no_forbidden_request(&plane)?;
    Ok(())
}

/// A counter or gauge without labels, 0 when absent.
async fn scalar(metrics: SocketAddr, name: &str) -> anyhow::Result<f64> {
    Ok(metric(metrics, name).await?.first().map_or(0.0, |s| s.1))
}

/// `wva_agent_stream_refusals_total` by reason.
async fn refusals(metrics: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let series = metric(metrics, "wva_agent_stream_refusals_total").await?;
    Ok(series
        .into_iter()
        .map(|(mut labels, n)| (labels.remove("reason").unwrap_or_default(), n))
        .collect())
}

/// The reasons counted more often in `now` than in `before`.
fn new_refusals(before: &BTreeMap<String, f64>, now: BTreeMap<String, f64>) -> Vec<String> {
    now.into_iter()
        .filter(|(reason, n)| *n > before.get(reason).copied().unwrap_or(0.0))
        .map(|(reason, _)| reason)
        .collect()
}

#[tokio::test]
async fn a_follower_takes_the_real_lease_over_from_a_crashed_leader_and_keeps_the_decision()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(2, &[]).await?;
    // A steady load saturates the replica at this threshold: the decision
    // (2) differs from the replica count (1), so a restart from scratch
    // would show.
    patch_config_map(
        &client,
        "saturation-scaling-config",
        json!({"default": "kvCacheThreshold: 0.3\nkvSpareTrigger: 0.1\n"}),
    )
    .await?;
    let first = eventually(WITHIN, "a leader", || async { leader(&client).await }).await?;
    let leading = replicas
        .iter()
        .find(|r| r.pod == first)
        .context("the leader")?;
    let follower = replicas
        .iter()
        .find(|r| r.pod != first)
        .context("a follower")?;
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane
        .create(&vllm_deployment_with(CHAT, 1, &SLOW_DECODING_SIM))
        .await?;
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let ip = eventually(WITHIN, "the pod running on the node", || async {
        Ok(node.pod_ip(NS, &pod_name))
    })
    .await?;
    let _request = hold_completion((ip, 8000).into(), MODEL, 400, 500).await?;

    // The agent streams to both replicas (fan-out through the headless
    // Service): both decide the same; only the leader publishes and writes.
    va_where(&client, "the leader's decision in status", |va| {
        desired_in_status(va) == Some(2)
    })
    .await?;
    let (leader_metrics, follower_metrics) = (leading.metrics, follower.metrics);
    eventually(WITHIN, "the leader's gauge", || async move {
        Ok(desired_gauge(leader_metrics).await?.filter(|v| *v == 2.0))
    })
    .await?;
    let pod_ref = &pod_name;
    let followed = eventually(WITHIN, "the follower's own decision", || async move {
        let decision = decisions(follower_metrics)
            .await?
            .into_iter()
            .find(|d| d["variant"]["name"] == CHAT);
        Ok(decision.filter(|d| d["desiredReplicas"] == 2 && d["inputs"][0]["pod"] == **pod_ref))
    })
    .await?;
    assert_eq!(followed["data"], "fresh", "{followed}");
    assert_eq!(
        desired_gauge(follower_metrics).await?,
        None,
        "a follower publishes nothing"
    );

    // The leader's processes die without releasing the Lease.
    let crashed = Instant::now();
    node.crash(SYSTEM, &first).await?;
    let follower_pod = follower.pod.clone();
    eventually(
        Duration::from_secs(10),
        "the follower to take the Lease over",
        || async {
            Ok((leader(&client).await?.as_deref() == Some(follower_pod.as_str())).then_some(()))
        },
    )
    .await?;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "taken before the lease expired: {took:?}"
    );
    let seen = std::sync::Mutex::new(Vec::new());
    let seen_ref = &seen;
    eventually(WITHIN, "the new leader's series", || async move {
        let value = desired_gauge(follower_metrics).await?;
        seen_ref
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(value);
        Ok(value.map(|_| ()))
    })
    .await?;
    assert_eq!(
        seen.into_inner().unwrap_or_else(|p| p.into_inner()),
        [2.0],
        "the new leader publishes the held decision"
    );
    let va = va(&client, CHAT).await?.context("the VariantAutoscaling")?;
    assert_eq!(desired_in_status(&va), Some(2), "{}", va["status"]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get("wva-aggregator-leader").await?;
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    assert_no_forbidden_request(&plane)?;
    Ok(())
}

/// The Events about `kind` `name` in `namespace`: (type, reason, note).
async fn events_about(
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
async fn patch_config_map(client: &kube::Client, name: &str, data: Value) -> anyhow::Result<()> {
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    maps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": data})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn configuration_changes_apply_live_and_a_static_change_is_rejected() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let aggregator = &replicas[0];
    patch_config_map(
        &client,
        "saturation-scaling-config",
        json!({"default": "kvCacheThreshold: 0.8\nkvSpareTrigger: 0.1\n"}),
    )
    .await?;
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane
        .create(&vllm_deployment_with(CHAT, 1, &SLOW_DECODING_SIM))
        .await?;
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let ip = eventually(WITHIN, "the pod running on the node", || async {
        Ok(node.pod_ip(NS, &pod_name))
    })
    .await?;
    let sim: SocketAddr = (ip, 8000).into();
    va_where(&client, "one desired replica with fresh metrics", |va| {
        desired_in_status(va) == Some(1)
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
    })
    .await?;
    // ~40% of the sim's KV cache, held for the whole test: below 0.8.
    let _request = hold_completion(sim, MODEL, 400, 500).await?;

    // The same load saturates a replica at a 0.3 threshold.
    patch_config_map(
        &client,
        "saturation-scaling-config",
        json!({"default": "kvCacheThreshold: 0.3\nkvSpareTrigger: 0.1\n"}),
    )
    .await?;
    va_where(&client, "two desired replicas in status", |va| {
        desired_in_status(va) == Some(2)
    })
    .await?;
    let metrics = aggregator.metrics;
    eventually(WITHIN, "wva_desired_replicas of chat at 2", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 2.0))
    })
    .await?;
    let up = eventually(WITHIN, "the scale-up Event", || async {
        let events = va_events(&client).await?;
        Ok(events
            .into_iter()
            .find(|(_, r, _)| r == "DesiredReplicasIncreased"))
    })
    .await?;
    assert!(up.2.starts_with("desired replicas 1 → 2 ("), "{up:?}");
    let scaled = metric(metrics, "wva_replica_scaling_total").await?;
    let scaled: Vec<(&str, &str, f64)> = scaled
        .iter()
        .map(|(l, v)| (l["direction"].as_str(), l["reason"].as_str(), *v))
        .collect();
    assert_eq!(scaled, [("up", "saturation", 1.0)]);

    // A static parameter cannot change while running: an Event says so and
    // the aggregator goes on as it started.
    patch_config_map(
        &client,
        "workload-variant-autoscaler-variantautoscaling-config",
        json!({"WVA_SCALE_TO_ZERO": "true"}),
    )
    .await?;
    let rejected = eventually(WITHIN, "the rejection event", || async {
        let events = events_about(
            &client,
            SYSTEM,
            "ConfigMap",
            "workload-variant-autoscaler-variantautoscaling-config",
        )
        .await?;
        Ok(events
            .into_iter()
            .find(|(_, r, _)| r == "ImmutableConfigChangeRejected"))
    })
    .await?;
    assert_eq!(rejected.0, "Warning");
    assert!(rejected.2.contains("WVA_SCALE_TO_ZERO"), "{}", rejected.2);
    assert_eq!(http_get(aggregator.metrics, "/healthz").await?.0, 200);
    assert_eq!(
        leader(&client).await?.as_deref(),
        Some(aggregator.pod.as_str())
    );
    assert_no_forbidden_request(&plane)?;
    Ok(())
}

#[tokio::test]
async fn the_controller_resumes_after_kube_apiserver_restarts() -> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node: _node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let metrics = replicas[0].metrics;
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    va_where(&client, "one ready replica reporting", |va| {
        va["status"]["currentAlloc"]["numReplicas"] == 1
            && has_condition(va, "MetricsAvailable", "True", "MetricsFound")
    })
    .await?;

    plane.restart("kube-apiserver").await?;
    // Every watch broke; a change made after the restart must still reach
    // the status: the Deployment scaled to two (by hand, as a user would).
    let client = plane.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .patch(
            CHAT,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let va = va_where(&client, "two replicas reporting after the restart", |va| {
        va["status"]["currentAlloc"]["numReplicas"] == 2
            && condition(va, "MetricsAvailable").is_some_and(|(s, _, m)| {
                s == "True" && m == "all 2 ready replicas report fresh metrics"
            })
    })
    .await?;
    assert_eq!(va["status"]["desiredOptimizedAlloc"]["accelerator"], "L4");
    eventually(WITHIN, "both agents streaming", || async move {
        Ok((scalar(metrics, "wva_connected_agents").await? == 2.0).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn pods_are_admitted_without_the_agent_when_opted_out_or_the_webhook_is_down()
-> anyhow::Result<()> {
    let Wva {
        plane: _plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let bare = |name: &str, annotations: Value| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0",
                                     "args": ["--model", MODEL]}]},
        }))?)
    };
    let sidecars = |pod: &Pod| -> Vec<String> {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| c.name.clone())
            .collect()
    };
    let injected = pods
        .create(&PostParams::default(), &bare("in", json!({}))?)
        .await?;
    assert_eq!(sidecars(&injected), ["wva-agent"]);
    let opted_out = bare("out", json!({"wva.llmd.ai/inject-agent": "false"}))?;
    let opted_out = pods.create(&PostParams::default(), &opted_out).await?;
    assert_eq!(sidecars(&opted_out), Vec::<String>::new());

    // The webhook's only replica crashes: pods are still admitted (Ignore),
    // without waiting for the call's timeout, and without the agent.
    node.crash(SYSTEM, &replicas[0].pod).await?;
    let started = Instant::now();
    let admitted = pods
        .create(&PostParams::default(), &bare("while-down", json!({}))?)
        .await?;
    let took = started.elapsed();
    assert_eq!(sidecars(&admitted), Vec::<String>::new());
    assert!(took < Duration::from_secs(5), "admission waited {took:?}");
    Ok(())
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_its_lease_expires()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    let metrics = replicas[0].metrics;
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    eventually(WITHIN, "the leader's decision published", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0))
    })
    .await?;

    // kube-apiserver stops answering (its connections stay open): the
    // leader cannot renew, and must stop publishing before the Lease (3 s in
    // the test values) could go to another replica.
    plane.signal("kube-apiserver", "STOP").await?;
    let paused = Instant::now();
    let stepped_down = eventually(
        Duration::from_secs(3),
        "the leader to step down",
        || async move {
            Ok(desired_gauge(metrics)
                .await?
                .is_none()
                .then(|| paused.elapsed()))
        },
    )
    .await;
    plane.signal("kube-apiserver", "CONT").await?;
    let stepped_down = stepped_down?;
    println!("stepped down {stepped_down:?} after kube-apiserver was paused");

    // Once the API server answers again, it leads and publishes again.
    eventually(WITHIN, "the decision published again", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 1.0))
    })
    .await?;
    assert_eq!(
        leader(&client).await?.as_deref(),
        Some(replicas[0].pod.as_str())
    );
    drop(node);
    Ok(())
}

/// A decision of `CHAT` on the aggregator at `metrics`, once it satisfies `pred`.
async fn decision_where(
    metrics: SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(WITHIN, what, || {
        let pred = &pred;
        async move {
            let all = decisions(metrics).await?;
            Ok(all
                .into_iter()
                .find(|d| d["variant"]["name"] == CHAT && pred(d)))
        }
    })
    .await
}

/// Scale to zero on, models idle for 2 s go to zero.
const SCALE_TO_ZERO: [&str; 2] = [
    "config.WVA_SCALE_TO_ZERO=true",
    "scaleToZero.defaults.retention_period=2s",
];

/// `CHAT` with one idle pod, its decision once the scale-to-zero analysis
/// has had its say, and the Events about it.
async fn idle_model(hpa: Option<Value>) -> anyhow::Result<(Wva, Value)> {
    let wva = wva_on_a_node(1, &SCALE_TO_ZERO).await?;
    if let Some(hpa) = hpa {
        wva.plane.create(&hpa).await?;
    }
    wva.plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    wva.plane.create(&vllm_deployment(CHAT, 1)).await?;
    let metrics = wva.replicas[0].metrics;
    let decision = decision_where(metrics, "the idle model's scale-to-zero decision", |d| {
        d["basis"] == "scale_to_zero" && d["data"] == "fresh"
    })
    .await?;
    Ok((wva, decision))
}

#[tokio::test]
async fn a_model_without_requests_for_its_retention_scales_to_zero() -> anyhow::Result<()> {
    let (wva, decision) = idle_model(None).await?;
    assert_eq!(decision["desiredReplicas"], 0, "{decision}");
    va_where(&wva.client, "zero in status", |va| {
        desired_in_status(va) == Some(0)
    })
    .await?;
    let metrics = wva.replicas[0].metrics;
    eventually(WITHIN, "wva_desired_replicas of chat at 0", || async move {
        Ok(desired_gauge(metrics).await?.filter(|v| *v == 0.0))
    })
    .await?;
    let decreased = eventually(WITHIN, "the scale-down Event", || async {
        let events = va_events(&wva.client).await?;
        Ok(events
            .into_iter()
            .find(|(_, r, _)| r == "DesiredReplicasDecreased"))
    })
    .await?;
    assert_eq!(decreased.2, "desired replicas 1 → 0 (scale_to_zero)");
    Ok(())
}

#[tokio::test]
async fn an_hpas_min_replicas_is_the_floor_of_its_variants_decisions() -> anyhow::Result<()> {
    // The HPA of the quickstart's shape; with no metrics adapter here, the
    // real HPA controller only holds the Deployment at minReplicas.
    let hpa = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": CHAT, "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": CHAT},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "wva_desired_replicas", "selector": {"matchLabels": {"variant_name": CHAT}}},
                "target": {"type": "AverageValue", "averageValue": "1"}}}],
        },
    });
    let (wva, decision) = idle_model(Some(hpa)).await?;
    assert_eq!(
        decision["desiredReplicas"], 1,
        "held at the HPA's floor: {decision}"
    );
    let events = va_events(&wva.client).await?;
    assert!(
        events
            .iter()
            .all(|(_, r, _)| r != "DesiredReplicasDecreased"),
        "no decrease below the floor: {events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_environment_wins_over_the_config_map_which_wins_over_defaults() -> anyhow::Result<()> {
    // The ConfigMap names the controller instance: only its objects are managed.
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &["config.CONTROLLER_INSTANCE=blue"]).await?;
    let labelled = |name: &str, instance: &str| {
        let mut va = variant_autoscaling(name, name);
        va["metadata"]["labels"]["wva.llmd.ai/controller-instance"] = json!(instance);
        va
    };
    // Objects are synced in name order, so once the last managed one has a
    // status, an earlier unmanaged one would have had one too.
    for (name, instance) in [
        ("a-green", "green"),
        ("b-blue", "blue"),
        ("c-green", "green"),
        ("d-blue", "blue"),
    ] {
        plane.create(&labelled(name, instance)).await?;
    }
    let has_status = |name: &'static str| {
        let client = &client;
        async move {
            Ok::<_, anyhow::Error>(
                va(client, name)
                    .await?
                    .is_some_and(|v| !v["status"].is_null()),
            )
        }
    };
    eventually(WITHIN, "d-blue's status", || async {
        Ok(has_status("d-blue").await?.then_some(()))
    })
    .await?;
    assert!(has_status("b-blue").await?);
    assert!(!has_status("a-green").await? && !has_status("c-green").await?);

    // The environment (the chart's extraEnv) wins over the ConfigMap: the
    // upgrade rolls a new pod, which manages the green ones.
    let chart = workspace().join("charts/wva");
    let chart = chart.to_str().context("chart path")?;
    let upgraded = helm(
        &plane,
        &[
            "upgrade",
            RELEASE,
            chart,
            "--reuse-values",
            "--set",
            "extraEnv[0].name=CONTROLLER_INSTANCE",
            "--set",
            "extraEnv[0].value=green",
        ],
    )
    .await?;
    succeeded(&upgraded, "helm upgrade")?;
    eventually(WITHIN, "c-green's status", || async {
        Ok(has_status("c-green").await?.then_some(()))
    })
    .await?;
    assert!(has_status("a-green").await?);
    let first = &replicas[0].pod;
    assert!(
        node.pod_ip(SYSTEM, first).is_none(),
        "the old replica was replaced"
    );
    Ok(())
}

#[tokio::test]
async fn a_variant_annotated_for_pod_scraping_is_driven_by_its_services_ready_pods()
-> anyhow::Result<()> {
    let Wva {
        plane,
        client,
        node,
        replicas,
    } = wva_on_a_node(1, &[]).await?;
    // No agent in these pods: the aggregator scrapes them itself through
    // the Service the VariantAutoscaling names.
    let mut va = variant_autoscaling(CHAT, CHAT);
    va["metadata"]["annotations"] = json!({
        "wva.llmd.ai/metrics-source": "pod-scraping",
        "wva.llmd.ai/metrics-service": "chat-metrics",
        "wva.llmd.ai/metrics-port": "8000",
    });
    plane.create(&va).await?;
    plane
        .create(&json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "chat-metrics", "namespace": NS},
            "spec": {"selector": {"app": CHAT}, "ports": [{"port": 8000}]},
        }))
        .await?;
    let mut deployment = vllm_deployment_with(CHAT, 2, &SLOW_DECODING_SIM);
    deployment["spec"]["template"]["metadata"]["annotations"] =
        json!({"wva.llmd.ai/inject-agent": "false"});
    plane.create(&deployment).await?;
    let pods = controller_pods(&client, CHAT, 2).await?;
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    assert!(
        pods.iter()
            .all(|p| p.spec.iter().all(|s| s.init_containers.is_none())),
        "opted out of injection"
    );
    let busy = names[0].clone();
    let ip = eventually(WITHIN, "the pod running on the node", || async {
        Ok(node.pod_ip(NS, &busy))
    })
    .await?;
    let _request = hold_completion((ip, 8000).into(), MODEL, 400, 500).await?;

    let names_ref = &names;
    let decision = decision_where(replicas[0].metrics, "inputs from both ready pods", |d| {
        let mut pods: Vec<String> = d["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["pod"].as_str().map(String::from))
            .collect();
        pods.sort();
        pods == *names_ref
    })
    .await?;
    assert_eq!(decision["data"], "fresh", "{decision}");
    let loaded = decision["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["pod"] == *busy.as_str())
        .context("the loaded pod's input")?;
    assert!(
        loaded["kvCacheUsage"].as_f64().unwrap_or_default() > 0.0,
        "the loaded sim's KV usage is seen: {decision}"
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_parameter_at_start_is_fatal_and_named() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let node = LocalNode::start(&plane, "wva-local", &[SYSTEM]).await?;
    install_chart(&plane, &["replicas=1", "config.GLOBAL_OPT_INTERVAL=soon"]).await?;
    let pod = live_pods(&client, SYSTEM, "app.kubernetes.io/component=aggregator", 1)
        .await?
        .remove(0);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let code = eventually(WITHIN, "the aggregator to exit", || async {
        Ok(node.exit_code(SYSTEM, &name, "aggregator"))
    })
    .await?;
    let log = node.log(SYSTEM, &name, "aggregator");
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("GLOBAL_OPT_INTERVAL"), "{log}");
    assert!(
        log.contains("workload-variant-autoscaler-variantautoscaling-config"),
        "{log}"
    );
    assert_eq!(
        leader(&client).await?,
        None,
        "it stopped before the election"
    );
    Ok(())
}

#[tokio::test]
async fn requests_queued_at_a_scraped_endpoint_picker_bring_a_model_back_from_zero()
-> anyhow::Result<()> {
    let values = [
        SCALE_TO_ZERO[0],
        SCALE_TO_ZERO[1],
        "config.WVA_POLL_INTERVAL=300ms",
    ];
    let Wva {
        plane,
        client,
        node: _node,
        replicas,
    } = wva_on_a_node(1, &values).await?;
    // The picker has no agent and is no image the local node runs: the test
    // serves its metrics at an address of the pod network and reports the
    // pod running there, as its kubelet would.
    let queue = std::sync::Arc::new(std::sync::Mutex::new(flow_control(MODEL, 0)));
    let epp = serve_metrics_at("198.19.0.1:0".parse()?, queue.clone()).await?;
    plane.create(&vllm_deployment(CHAT, 0)).await?;
    let mut va = variant_autoscaling(CHAT, CHAT);
    va["metadata"]["annotations"] = json!({
        "wva.llmd.ai/epp-service": "gateway-epp",
        "wva.llmd.ai/epp-metrics-port": epp.port().to_string(),
    });
    plane.create(&va).await?;
    plane
        .create(&json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gateway-epp", "namespace": NS},
            "spec": {"selector": {"app": "gateway-epp"}, "ports": [{"port": 9090}]},
        }))
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

    let metrics = replicas[0].metrics;
    decision_where(metrics, "the idle model at zero", |d| {
        d["desiredReplicas"] == 0
    })
    .await?;
    *queue.lock().unwrap_or_else(|p| p.into_inner()) = flow_control(MODEL, 3);
    let decision = decision_where(metrics, "one replica for the queue", |d| {
        d["desiredReplicas"] == 1
    })
    .await?;
    assert_eq!(decision["basis"], "scale_from_zero", "{decision}");
    Ok(())
}

/// An HTTPS client that trusts only `ca_pem` and checks the name the API
/// server uses for the webhook Service.
fn api_server_client(
    ca_pem: &[u8],
) -> anyhow::Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(format!("wva-webhook.{SYSTEM}.svc"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(name))
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// POSTs `body` to `path` and returns the status and the body.
async fn post(
    client: &HttpsClient,
    webhook: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let request = http::Request::post(format!("https://{webhook}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    Ok((
        status,
        response.into_body().collect().await?.to_bytes().to_vec(),
    ))
}

/// The recorded review of a vLLM pod created by its ReplicaSet, with `annotations` added.
fn review_of(annotations: Value) -> Value {
    let text = std::fs::read_to_string(fixture("admission/pod-create-review.json")).unwrap();
    let mut review: Value = serde_json::from_str(&text).unwrap();
    let pod_annotations = review["request"]["object"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap();
    for (k, v) in annotations.as_object().unwrap() {
        pod_annotations.insert(k.clone(), v.clone());
    }
    review
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Sends a review and returns the response part.
async fn admit(
    client: &HttpsClient,
    webhook: SocketAddr,
    path: &str,
    review: &Value,
) -> anyhow::Result<Value> {
    let (status, body) = post(client, webhook, path, serde_json::to_vec(review)?).await?;
    anyhow::ensure!(
        status == 200,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: Value = serde_json::from_slice(&body)?;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(
        response["uid"], review["request"]["uid"],
        "the uid is echoed"
    );
    assert_eq!(response["allowed"], true, "the webhook never denies a pod");
    Ok(response)
}

/// The pod after the response's JSON patch, as the API server applies it
/// (a base64 string, as Go encodes the `[]byte` field).
fn patched(review: &Value, response: &Value) -> Option<Value> {
    let patch = response["patch"].as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    Some(pod)
}

#[tokio::test]
async fn the_webhook_certifies_itself_and_answers_every_kind_of_pod() -> anyhow::Result<()> {
    let Wva {
        plane: _plane,
        client,
        node: _node,
        replicas,
    } = wva_on_a_node(2, &[]).await?;
    // The CA in both webhooks equals the one in the Secret the replicas share.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = configurations.get("wva-agent-injector").await?;
    let bundles: Vec<String> = configuration
        .webhooks
        .iter()
        .flatten()
        .filter_map(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0))
        .collect();
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    assert_eq!(bundles[0], bundles[1]);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), SYSTEM);
    let secret = secrets.get("wva-webhook-tls").await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca_pem = &secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .context("ca.crt")?
        .0;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(ca_pem),
        bundles[0]
    );
    let https = api_server_client(ca_pem)?;
    let webhook: SocketAddr = (replicas[0].grpc.ip(), 8443).into();

    // What the API server sends for a vLLM pod of a labelled namespace.
    let review = review_of(json!({}));
    let response = admit(&https, webhook, "/inject/namespace", &review).await?;
    let pod = patched(&review, &response).expect("a patch");
    let agent = &pod["spec"]["initContainers"][0];
    assert_eq!(agent["name"], "wva-agent");
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(
        container_env(agent, "WVA_TARGET"),
        Some("http://127.0.0.1:8000/metrics")
    );
    assert_eq!(container_env(agent, "WVA_VARIANT"), Some("llama-8b-h100"));
    assert_eq!(
        pod["spec"]["containers"].as_array().map(Vec::len),
        Some(1),
        "vLLM untouched"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"], "true",
        "annotations kept"
    );

    // Injected once only: the patched pod comes back unchanged.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let response = admit(&https, webhook, "/inject/namespace", &again).await?;
    assert_eq!(patched(&again, &response), None);

    // An endpoint picker elsewhere, opted in by annotation.
    let epp =
        review_of(json!({"wva.llmd.ai/inject-agent": "true", "wva.llmd.ai/agent-role": "epp"}));
    let response = admit(&https, webhook, "/inject/pod", &epp).await?;
    let pod = patched(&epp, &response).expect("a patch");
    let agent = &pod["spec"]["initContainers"][0];
    assert_eq!(
        container_env(agent, "WVA_TARGET"),
        Some("http://127.0.0.1:9090/metrics")
    );
    assert_eq!(container_env(agent, "WVA_ROLE"), Some("epp"));

    // Pods that did not ask, or opted out, are admitted as they are.
    for (path, annotations) in [
        ("/inject/pod", json!({})),
        (
            "/inject/namespace",
            json!({"wva.llmd.ai/inject-agent": "false"}),
        ),
    ] {
        let review = review_of(annotations);
        let response = admit(&https, webhook, path, &review).await?;
        assert_eq!(patched(&review, &response), None, "{path}");
        assert_eq!(response["warnings"], Value::Null);
    }

    // A mistake in the pod's annotations admits it without the agent, and says why.
    let wrong = review_of(json!({"wva.llmd.ai/agent-role": "router"}));
    let response = admit(&https, webhook, "/inject/namespace", &wrong).await?;
    assert_eq!(patched(&wrong, &response), None);
    assert_eq!(
        response["warnings"][0],
        "wva-agent not injected: annotation wva.llmd.ai/agent-role=\"router\" is not vllm or epp"
    );

    // A request that is no AdmissionReview gets a clear error; with
    // failurePolicy Ignore the API server then admits the pod unchanged.
    let (status, body) = post(
        &https,
        webhook,
        "/inject/pod",
        b"{\"kind\": \"AdmissionReview\"".to_vec(),
    )
    .await?;
    assert_eq!(status, 400);
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("malformed AdmissionReview"), "{body}");

    // Every answer is counted by outcome.
    let outcomes: BTreeMap<String, f64> =
        metric(replicas[0].metrics, "wva_webhook_admissions_total")
            .await?
            .into_iter()
            .map(|(labels, value)| (labels["outcome"].clone(), value))
            .collect();
    let expected = [
        ("injected", 2.0),
        ("malformed", 1.0),
        ("not_injected", 1.0),
        ("skipped", 3.0),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    assert_eq!(outcomes, expected);

    // The other replica serves the same certificate (the Secret is reused,
    // never replaced).
    let other: SocketAddr = (replicas[1].grpc.ip(), 8443).into();
    let response = admit(&https, other, "/inject/namespace", &review).await?;
    assert!(patched(&review, &response).is_some());
    let now = secrets.get("wva-webhook-tls").await?;
    assert_eq!(
        now.metadata.resource_version, secret.metadata.resource_version,
        "not replaced"
    );
    Ok(())
}
