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
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::process::Command;
use wva_e2e::cluster::{FAST_ELECTION, PodAgent, condition};
use wva_e2e::controlplane::{ControlPlane, forbidden, service_account_user};
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
    let namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
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
/// controllers make its ReplicaSet and Pods.
fn vllm_deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]},
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

/// The Events (events.k8s.io) about VariantAutoscaling `CHAT`: (type, reason, note).
async fn va_events(client: &kube::Client) -> anyhow::Result<Vec<(String, String, String)>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let list = events.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("VariantAutoscaling") && r.name.as_deref() == Some(CHAT)
            })
        })
        .map(|e| {
            let text = |s: Option<String>| s.unwrap_or_default();
            (text(e.type_), text(e.reason), text(e.note))
        })
        .collect())
}

/// The chart's aggregator container as a local process: the environment and
/// arguments of the installed Deployment (downward-API values filled in as
/// the kubelet would, the injection ConfigMap "mounted" into `dir`), on free
/// loopback ports, authenticated as the chart's ServiceAccount.
struct ChartAggregator {
    proc: Proc,
    grpc: SocketAddr,
    metrics: SocketAddr,
}

impl ChartAggregator {
    async fn start(plane: &ControlPlane, dir: &Path, pod_name: &str) -> anyhow::Result<Self> {
        let client = plane.client().await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
        let deployment = deployments.get(RELEASE).await?;
        let pod_spec = deployment
            .spec
            .and_then(|s| s.template.spec)
            .context("the chart's Deployment has no pod template")?;
        let container = pod_spec
            .containers
            .iter()
            .find(|c| c.name == "aggregator")
            .context("no aggregator container")?;
        let kubeconfig = plane
            .service_account_kubeconfig(
                SYSTEM,
                SERVICE_ACCOUNT,
                &dir.join(format!("{pod_name}.kubeconfig")),
            )
            .await?;
        let (grpc, metrics, webhook) = (free_addr(), free_addr(), free_addr());
        // Ports are the pod's own in a cluster; here every replica shares loopback.
        let local: BTreeMap<&str, String> = BTreeMap::from([
            ("POD_NAME", pod_name.to_string()),
            ("POD_NAMESPACE", SYSTEM.to_string()),
            ("WVA_GRPC_ADDR", grpc.to_string()),
            ("METRICS_ADDR", metrics.to_string()),
            ("WVA_WEBHOOK_ADDR", webhook.to_string()),
        ]);
        let mounts = mount_config_maps(plane, &pod_spec, container, dir).await?;
        let mut command = Command::new(bin("wva-aggregator"));
        command
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("WVA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .args(container.args.iter().flatten())
            // The tests' pace: fast analyses and elections.
            .args(["--min-analysis-interval", "100ms", "--staleness", "3s"])
            .args(FAST_ELECTION)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        for env in container.env.iter().flatten() {
            let value = match (local.get(env.name.as_str()), &env.value) {
                (Some(local), _) => local.clone(),
                (None, Some(value)) => mounts.rewrite(value),
                (None, None) => anyhow::bail!("env {} of the chart has no local value", env.name),
            };
            command.env(&env.name, value);
        }
        let child = command.spawn().context("start wva-aggregator")?;
        Ok(ChartAggregator {
            proc: Proc { child },
            grpc,
            metrics,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// ConfigMap volumes written into a directory, and the paths to rewrite.
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn rewrite(&self, value: &str) -> String {
        self.0
            .iter()
            .find_map(|(mount, local)| {
                let rest = value.strip_prefix(mount.as_str())?;
                Some(format!("{}{rest}", local.display()))
            })
            .unwrap_or_else(|| value.to_string())
    }
}

async fn mount_config_maps(
    plane: &ControlPlane,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    container: &k8s_openapi::api::core::v1::Container,
    dir: &Path,
) -> anyhow::Result<Mounts> {
    let config_maps: Api<ConfigMap> = Api::namespaced(plane.client().await?, SYSTEM);
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("volume {}", mount.name))?;
        let source = volume
            .config_map
            .as_ref()
            .with_context(|| format!("volume {} is not a ConfigMap", mount.name))?;
        let data = config_maps
            .get(&source.name)
            .await?
            .data
            .unwrap_or_default();
        let local = dir.join(format!("mount-{}", mount.name));
        std::fs::create_dir_all(&local)?;
        for (key, text) in data {
            std::fs::write(local.join(key), text)?;
        }
        mounts.push((mount.mount_path.clone(), local));
    }
    Ok(Mounts(mounts))
}

/// The series of `wva_desired_replicas` for `CHAT`, if published.
async fn desired_gauge(metrics: SocketAddr) -> anyhow::Result<Option<f64>> {
    let series = metric(metrics, "wva_desired_replicas").await?;
    Ok(series
        .into_iter()
        .find(|(l, _)| l.get("variant_name").map(String::as_str) == Some(CHAT))
        .map(|(_, v)| v))
}

/// A pod made by the ReplicaSet controller for Deployment `name`.
async fn controller_pods(
    client: &kube::Client,
    name: &str,
    count: usize,
) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let what = format!("{count} pods of Deployment {name}");
    eventually(WITHIN, &what, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await?;
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

/// Reports `pod` Running and Ready at `ip`, as its kubelet would.
async fn report_ready(client: &kube::Client, pod: &Pod, ip: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    let name = pod.metadata.name.as_deref().context("pod name")?;
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// `pod` as JSON, the shape [`PodAgent::of`] reads.
fn pod_json(pod: &Pod) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(pod)?)
}

/// A token of `pod`'s ServiceAccount bound to it, for the aggregator's
/// audience, in a file as the kubelet projects it.
async fn pod_token(plane: &ControlPlane, pod: &Pod, dir: &Path) -> anyhow::Result<PathBuf> {
    let name = pod.metadata.name.as_deref().context("pod name")?;
    let uid = pod.metadata.uid.as_deref().context("pod uid")?;
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let token = plane
        .token(NS, account, &["wva-aggregator"], Some((name, uid)))
        .await?;
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, token)?;
    Ok(path)
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
    let left = kubectl(
        &plane,
        &[
            "get",
            "deployments,services,configmaps,serviceaccounts,roles,rolebindings",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/instance=wva",
            "-o",
            "name",
        ],
    )
    .await?;
    assert_eq!(left.trim(), "", "left behind by the uninstall");
    let cluster_scoped = kubectl(
        &plane,
        &[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
            "-l",
            "app.kubernetes.io/instance=wva",
            "-o",
            "name",
        ],
    )
    .await?;
    assert_eq!(cluster_scoped.trim(), "", "left behind by the uninstall");
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

#[tokio::test]
async fn the_aggregator_runs_as_the_charts_service_account() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let dir = tempfile::tempdir()?;
    install_chart(&plane, &[]).await?;
    create_namespace(&plane, NS).await?;
    let aggregator = ChartAggregator::start(&plane, dir.path(), "wva-0").await?;

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
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get("wva-aggregator-leader").await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("wva-0")
    );

    // b. The Deployment: the real controllers make its ReplicaSet and pod;
    // the pod's agent presents a token bound to that pod.
    let created = Instant::now();
    plane.create(&vllm_deployment(CHAT, 1)).await?;
    let va = va_where(&client, "the target to resolve", |va| {
        has_condition(va, "Ready", "True", "TargetReady")
    })
    .await?;
    assert!(
        created.elapsed() < Duration::from_secs(10),
        "{:?}",
        created.elapsed()
    );
    assert_condition(
        &va,
        "TargetResolved",
        ("True", "TargetFound", "Deployment 'chat' found"),
    );
    let pod = controller_pods(&client, CHAT, 1).await?.remove(0);
    let (_sim, sim) = start_sim(MODEL, &[]).await?;
    report_ready(&client, &pod, &sim.ip().to_string()).await?;
    let token = pod_token(&plane, &pod, dir.path()).await?;
    let pod_value = pod_json(&pod)?;
    let url = aggregator.url();
    let _agent = PodAgent::of(&pod_value, Some(&token), sim, &url, MODEL).start()?;

    let va = va_where(&client, "fresh metrics and a decision", |va| {
        has_condition(va, "MetricsAvailable", "True", "MetricsFound")
            && desired_in_status(va).is_some()
    })
    .await?;
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
    assert!(row.contains(&MODEL) && row.contains(&"L4"), "{table}");

    // The webhook's certificate: made by the aggregator, shared through the
    // Secret, its CA published into the chart's MutatingWebhookConfiguration.
    let bundle = eventually(WITHIN, "the CA in the webhook configuration", || async {
        let text = webhook_ca(&plane).await?;
        Ok((!text.trim().is_empty()).then_some(text))
    })
    .await?;
    let secret = kubectl(
        &plane,
        &[
            "get",
            "secret",
            "wva-webhook-tls",
            "-n",
            SYSTEM,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
    )
    .await?;
    assert!(
        bundle.split_whitespace().all(|b| b == secret.trim()),
        "{bundle} vs {secret}"
    );

    // Everything above was done with the chart's permissions and no more.
    assert_no_forbidden_request(&plane)?;
    let audit = plane.audit()?;
    let user = service_account_user(SYSTEM, SERVICE_ACCOUNT);
    let status_writes = audit
        .iter()
        .filter(|e| {
            e.user.username == user
                && e.verb == "patch"
                && e.code() == 200
                && e.object_ref.as_ref().is_some_and(|o| {
                    o.resource == "variantautoscalings"
                        && o.subresource.as_deref() == Some("status")
                })
        })
        .count();
    assert!(
        status_writes >= 2,
        "status written by the ServiceAccount: {status_writes}"
    );
    drop(aggregator);
    Ok(())
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

#[tokio::test]
async fn bound_tokens_speak_only_for_their_own_live_pod() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let dir = tempfile::tempdir()?;
    install_chart(&plane, &[]).await?;
    create_namespace(&plane, NS).await?;
    let aggregator = ChartAggregator::start(&plane, dir.path(), "wva-0").await?;
    let (metrics, url) = (aggregator.metrics, aggregator.url());
    plane.create(&variant_autoscaling(CHAT, CHAT)).await?;
    plane.create(&vllm_deployment(CHAT, 2)).await?;
    let pods = controller_pods(&client, CHAT, 2).await?;
    let (a, b) = (&pods[0], &pods[1]);
    let (_sim, sim) = start_sim(MODEL, &[]).await?;
    for pod in &pods {
        report_ready(&client, pod, &sim.ip().to_string()).await?;
    }
    let a_token = pod_token(&plane, a, dir.path()).await?;
    let (a_value, b_value) = (pod_json(a)?, pod_json(b)?);
    let honest = PodAgent::of(&a_value, Some(&a_token), sim, &url, MODEL).start()?;
    eventually(WITHIN, "the honest stream", || async move {
        Ok((scalar(metrics, "wva_connected_agents").await? == 1.0).then_some(()))
    })
    .await?;
    let before = refusals(metrics).await?;

    // Pod a's genuine token, presented by a stream claiming to be pod b.
    let _impostor = PodAgent {
        token: Some(&a_token),
        ..PodAgent::of(&b_value, None, sim, &url, MODEL)
    }
    .start()?;
    // A token of the right account for another audience.
    let b_name = b.metadata.name.as_deref().context("name")?;
    let b_uid = b.metadata.uid.as_deref().context("uid")?;
    let wrong_audience = plane
        .token(NS, "default", &["someone-else"], Some((b_name, b_uid)))
        .await?;
    let wrong_audience_file = dir.path().join("wrong-audience.token");
    std::fs::write(&wrong_audience_file, wrong_audience)?;
    let _stranger = PodAgent::of(&b_value, Some(&wrong_audience_file), sim, &url, MODEL).start()?;
    let before_ref = &before;
    let refused = eventually(WITHIN, "two refusals", || async move {
        let new = new_refusals(before_ref, refusals(metrics).await?);
        Ok((new.len() >= 2).then_some(new))
    })
    .await?;
    assert_eq!(refused, ["pod_mismatch", "token_invalid"]);
    assert_eq!(scalar(metrics, "wva_connected_agents").await?, 1.0);

    // Pod a is deleted (its ReplicaSet replaces it): its token dies with it.
    drop(honest);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let a_name = a.metadata.name.as_deref().context("name")?;
    pod_api
        .delete(a_name, &DeleteParams::default().grace_period(0))
        .await?;
    eventually(WITHIN, "pod a to be gone", || {
        let pod_api = pod_api.clone();
        async move { Ok(pod_api.get_opt(a_name).await?.is_none().then_some(())) }
    })
    .await?;
    // The API server's own authenticator lags the deletion a little (it
    // reads pods from its cache); the aggregator's pod watch covers the gap.
    let a_token_text = std::fs::read_to_string(&a_token)?;
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
    let _late = PodAgent::of(&a_value, Some(&a_token), sim, &url, MODEL).start()?;
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
    assert_eq!(scalar(metrics, "wva_connected_agents").await?, 0.0);
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
async fn a_follower_takes_the_real_lease_over_from_a_killed_leader() -> anyhow::Result<()> {
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    let dir = tempfile::tempdir()?;
    install_chart(&plane, &[]).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let holder = |leases: Api<Lease>| async move {
        let lease = leases.get_opt("wva-aggregator-leader").await?;
        Ok::<_, anyhow::Error>(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
    };
    let first = ChartAggregator::start(&plane, dir.path(), "wva-0").await?;
    eventually(WITHIN, "wva-0 to lead", || {
        let leases = leases.clone();
        async move { Ok((holder(leases).await?.as_deref() == Some("wva-0")).then_some(())) }
    })
    .await?;
    let second = ChartAggregator::start(&plane, dir.path(), "wva-1").await?;
    // The follower stays a follower while the leader renews.
    let follower_metrics = second.metrics;
    eventually(WITHIN, "the follower to serve", || async move {
        Ok(http_get(follower_metrics, "/healthz")
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    assert_eq!(holder(leases.clone()).await?.as_deref(), Some("wva-0"));

    let killed = Instant::now();
    first.proc.kill().await;
    eventually(
        Duration::from_secs(10),
        "wva-1 to take the Lease over",
        || {
            let leases = leases.clone();
            async move { Ok((holder(leases).await?.as_deref() == Some("wva-1")).then_some(())) }
        },
    )
    .await?;
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "taken before the lease expired: {took:?}"
    );
    let lease = leases.get("wva-aggregator-leader").await?;
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    assert_no_forbidden_request(&plane)?;
    drop(second);
    Ok(())
}
