//! The consumers of wva's decisions, real and deployed as users deploy them:
//! Prometheus scraping the aggregator the way the chart's ServiceMonitor has
//! prometheus-operator configure it, and prometheus-adapter started with
//! `examples/prometheus-adapter-values.yaml`, serving
//! `external.metrics.k8s.io` to the HPA controller through the API server's
//! aggregation layer.
//!
//! What stands in for what a cluster would have:
//!
//! - **Prometheus** is a process of the test at an address of the pod
//!   network, which the Service the sample values name (kube-prometheus-
//!   stack's `kube-prometheus-stack-prometheus.monitoring.svc`) resolves to
//!   through a headless Service and a hand-made EndpointSlice. It serves TLS
//!   with a CA of the test's, which the adapter trusts from the ConfigMap
//!   `prometheus-ca`, as the values' comments tell users to create it.
//! - **prometheus-operator** does not run: the scrape job is the one it
//!   generates for the chart's ServiceMonitor (rendered by `helm template`):
//!   endpoints discovery in the monitor's namespaces, kept by the Service's
//!   selector labels and the endpoint's port name, the target labels
//!   `namespace`, `service`, `pod`, `container`, `endpoint` and `job`, and
//!   `honor_labels: false`, so the series' own `namespace` label becomes
//!   `exported_namespace`.
//! - **Kubernetes service discovery**: Debian's Prometheus is built without
//!   it, so the test plays it: every second it lists the EndpointSlices,
//!   Services and Pods of those namespaces and writes every endpoint and
//!   port as a target with the `__meta_kubernetes_*` labels the `endpoints`
//!   role gives, to a file Prometheus reads (`file_sd_configs`). The
//!   operator's relabelling then runs on them unchanged.
//! - **prometheus-adapter** v0.12.0 runs in pods of a local node, built from
//!   its Go module by `scripts/cluster tool`, with the Deployment, Service,
//!   APIService and RBAC the prometheus-community chart renders for the
//!   sample values (the chart itself cannot be downloaded here).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::controlplane::ControlPlane;
use crate::https::get_unverified;
use crate::install::{RELEASE, SYSTEM, helm, succeeded};
use crate::node::LocalNode;
use crate::pki::TestCa;
use crate::prometheus::Prometheus;
use crate::{eventually, workspace};

pub const MONITORING: &str = "monitoring";

const ADAPTER: &str = "prometheus-adapter";

const EXTERNAL_METRICS: &str = "v1beta1.external.metrics.k8s.io";

/// How long a decision may take to be in Prometheus and then served by the
/// adapter: a scrape interval (15 or 30 s) and the adapter's start, with
/// room for a busy machine.
const SERVED: Duration = Duration::from_secs(120);

/// The values users install prometheus-adapter with.
const VALUES: &str = "examples/prometheus-adapter-values.yaml";
/// A variant's decision series and the label that selects one.
pub const VARIANT_DECISION: (&str, &str) = ("wva_desired_replicas", "variant_name");
/// A workload's decision series and the label that selects one.
pub const WORKLOAD_DECISION: (&str, &str) = ("wva_workload_desired_replicas", "workload");

/// Prometheus servers of this test process listen on 198.19.0.1, .2, …:
/// the pod network, outside the local nodes' 198.18.N.0/24.
static NEXT_ADDRESS: AtomicU8 = AtomicU8::new(1);

/// What a prometheus-operator PodMonitor would have Prometheus scrape: every
/// running pod of `namespace` at its container port named `port`, every
/// `interval`, labelled with its `namespace`, `pod` and `container`.
pub struct PodMonitor {
    pub namespace: String,
    pub port: String,
    pub interval: String,
}

/// Prometheus and prometheus-adapter, running; dropping it stops both.
pub struct Monitoring {
    /// Runs the adapter's pods.
    pub node: LocalNode,
    pub prometheus: Prometheus,
    /// The CA of Prometheus' certificate, which names the Service's host
    /// ([`Monitoring::server_name`]) and the address it listens on.
    pub ca_file: PathBuf,
    pub server_name: String,
    discovery: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        self.discovery.iter().for_each(JoinHandle::abort);
    }
}

impl Monitoring {
    /// Starts Prometheus scraping the chart's aggregator pods, with the
    /// namespace, Service and CA ConfigMap the adapter's values expect.
    /// The adapter comes with [`Monitoring::start_adapter`].
    pub async fn start(plane: &ControlPlane) -> anyhow::Result<Monitoring> {
        Monitoring::start_with(plane, &[], None).await
    }

    /// [`Monitoring::start`], with the chart's ServiceMonitor rendered with
    /// `chart_values` (`--set`), and `pods` scraped too.
    pub async fn start_with(
        plane: &ControlPlane,
        chart_values: &[&str],
        pods: Option<PodMonitor>,
    ) -> anyhow::Result<Monitoring> {
        let values = adapter_values()?;
        let host = prometheus_host(&values)?;
        let port = values["prometheus"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("prometheus.port in the adapter values")?;
        let (service, namespace) = host
            .strip_suffix(".svc")
            .and_then(|h| h.split_once('.'))
            .with_context(|| format!("{host} is no Service name"))?;

        let dir = tempfile::tempdir()?;
        let ca = TestCa::new("prometheus-ca")?;
        let ip = Ipv4Addr::new(198, 19, 0, NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed));
        let leaf = ca.issue(
            &[host, &ip.to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &ca.pem)?;
        let cert = dir.path().join("prometheus.crt");
        let key = dir.path().join("prometheus.key");
        std::fs::write(&cert, &leaf.cert_pem)?;
        std::fs::write(&key, &leaf.key_pem)?;
        let web = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        );
        let targets = dir.path().join("targets.json");
        let (job, namespaces) = service_monitor_job(plane, chart_values, &targets).await?;
        let client = plane.client().await?;
        let slices: Api<EndpointSlice> = Api::all(client.clone());
        let mut discovery = vec![tokio::spawn(discover(slices, targets, move || {
            let (client, namespaces) = (client.clone(), namespaces.clone());
            async move { endpoint_targets(&client, &namespaces).await }
        }))];
        let mut jobs = vec![job];
        if let Some(monitor) = pods {
            let targets = dir.path().join("pods.json");
            jobs.push(pod_monitor_job(&monitor, &targets));
            let pods: Api<Pod> = Api::namespaced(plane.client().await?, &monitor.namespace);
            let listed = pods.clone();
            discovery.push(tokio::spawn(discover(pods, targets, move || {
                let (pods, port) = (listed.clone(), monitor.port.clone());
                async move { pod_targets(&pods, &port).await }
            })));
        }
        let config = json!({"scrape_configs": jobs}).to_string();
        let addr = SocketAddr::from((ip, port));
        let prometheus = Prometheus::start_at(dir.path(), &config, Some(&web), addr).await?;

        plane
            .create(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            )
            .await?;
        plane.default_service_account(namespace).await?;
        for object in prometheus_service(service, namespace, addr) {
            plane.create(&object).await?;
        }
        plane
            .create(&json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "prometheus-ca", "namespace": MONITORING},
                "data": {"ca.crt": ca.pem},
            }))
            .await?;
        let node = LocalNode::start(plane, "monitoring", &[MONITORING]).await?;
        Ok(Monitoring {
            node,
            prometheus,
            discovery,
            ca_file,
            server_name: host.to_string(),
            _dir: dir,
        })
    }

    /// Deploys prometheus-adapter with the sample values and awaits its
    /// APIService. The adapter lists Prometheus' series when it starts and
    /// then every `metricsRelistInterval` (1 minute): a decision series
    /// absent at its start is served only from its next list.
    pub async fn start_adapter(&self, plane: &ControlPlane) -> anyhow::Result<()> {
        let values = adapter_values()?;
        for object in adapter_objects(&values)? {
            plane.create(&object).await?;
        }
        plane
            .api_service_available(EXTERNAL_METRICS, Duration::from_secs(120))
            .await
    }

    /// Awaits the decision for VariantAutoscaling `variant` of `namespace`
    /// in Prometheus, under the labels users get, starts the adapter (so
    /// that its first list finds the series) and awaits the decision served
    /// as the External metric an HPA reads, which it returns.
    pub async fn serve_decision(
        &self,
        plane: &ControlPlane,
        namespace: &str,
        variant: &str,
    ) -> anyhow::Result<Value> {
        self.serve(plane, VARIANT_DECISION, namespace, variant)
            .await
    }

    /// [`Monitoring::serve_decision`] for any of wva's decision series:
    /// `metric`, selected by the label `by` = `name`.
    pub async fn serve(
        &self,
        plane: &ControlPlane,
        (metric, by): (&str, &str),
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Value> {
        eventually(SERVED, &format!("{metric} in Prometheus"), || async {
            self.value(metric, namespace, (by, name)).await
        })
        .await?;
        self.start_adapter(plane).await?;
        let client = plane.client().await?;
        let external = format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector={by}%3D{name}"
        );
        let served = eventually(
            SERVED,
            &format!("the adapter to serve {metric}"),
            || async {
                let request = http::Request::get(&external).body(Vec::new())?;
                Ok(client.request::<Value>(request).await.ok())
            },
        )
        .await;
        match served {
            Ok(served) => Ok(served),
            Err(e) => anyhow::bail!("{e:#}\n{}", self.adapter_log(&client).await?),
        }
    }

    /// The decision for VariantAutoscaling `variant` of `namespace` in
    /// Prometheus, under the labels users get; `None` before it is there.
    pub async fn decision(&self, namespace: &str, variant: &str) -> anyhow::Result<Option<f64>> {
        let (metric, by) = VARIANT_DECISION;
        self.value(metric, namespace, (by, variant)).await
    }

    /// The value of wva's series `metric` with label `by` for `namespace`
    /// in Prometheus; `None` before it is there.
    async fn value(
        &self,
        metric: &str,
        namespace: &str,
        (by, name): (&str, &str),
    ) -> anyhow::Result<Option<f64>> {
        let query = format!(
            "{metric}{{exported_namespace=\"{namespace}\",{by}=\"{name}\",namespace=\"{SYSTEM}\"}}"
        );
        let path = format!("/api/v1/query?query={}", percent_encoded(&query));
        let (status, body) = get_unverified(self.prometheus.addr, &path).await?;
        anyhow::ensure!(status == 200, "Prometheus answered {status}: {body}");
        let answer: Value = serde_json::from_str(&body)?;
        let value = answer["data"]["result"][0]["value"][1].as_str();
        Ok(value.map(str::parse).transpose()?)
    }

    /// What the adapter's pods logged, for failure messages.
    pub async fn adapter_log(&self, client: &kube::Client) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), MONITORING);
        let list = pods
            .list(&ListParams::default().labels(&format!("app={ADAPTER}")))
            .await?;
        Ok(list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .map(|pod| format!("== {pod}\n{}", self.node.log(MONITORING, pod, ADAPTER)))
            .collect())
    }
}

/// `text` as a URL's query value.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn adapter_values() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(workspace().join(VALUES))?;
    serde_yaml::from_str(&text).with_context(|| format!("parse {VALUES}"))
}

/// The host of `prometheus.url` in the adapter values.
fn prometheus_host(values: &Value) -> anyhow::Result<&str> {
    let url = values["prometheus"]["url"]
        .as_str()
        .context("prometheus.url in the adapter values")?;
    Ok(url.split_once("://").map_or(url, |(_, host)| host))
}

/// The scrape job prometheus-operator generates for the chart's
/// ServiceMonitor (rendered with `chart_values`), discovering from
/// `targets` what [`endpoint_targets`] writes there; and the namespaces to
/// discover in.
async fn service_monitor_job(
    plane: &ControlPlane,
    chart_values: &[&str],
    targets: &Path,
) -> anyhow::Result<(Value, Vec<String>)> {
    let chart = workspace().join("charts/wva");
    let mut args = vec!["template", RELEASE, chart.to_str().context("chart path")?];
    for value in ["serviceMonitor.enabled=true"].iter().chain(chart_values) {
        args.extend(["--set", value]);
    }
    args.extend(["--show-only", "templates/servicemonitor.yaml"]);
    let output = helm(plane, &args).await?;
    succeeded(&output, "helm template")?;
    let monitor: Value = serde_yaml::from_slice(&output.stdout)?;
    let (name, namespace) = (
        monitor["metadata"]["name"]
            .as_str()
            .context("monitor name")?,
        monitor["metadata"]["namespace"]
            .as_str()
            .context("monitor namespace")?,
    );
    let spec = &monitor["spec"];
    let endpoint = &spec["endpoints"][0];
    let port = endpoint["port"].as_str().context("endpoint port name")?;
    let mut relabel = Vec::new();
    for (label, value) in spec["selector"]["matchLabels"]
        .as_object()
        .context("selector.matchLabels")?
    {
        let label = sanitize(label);
        relabel.push(json!({
            "action": "keep",
            "source_labels": [
                format!("__meta_kubernetes_service_label_{label}"),
                format!("__meta_kubernetes_service_labelpresent_{label}"),
            ],
            "regex": format!("({});true", regex_escape(value.as_str().unwrap_or_default())),
        }));
    }
    relabel.push(json!({
        "action": "keep",
        "source_labels": ["__meta_kubernetes_endpoint_port_name"],
        "regex": regex_escape(port),
    }));
    for (kind, label) in [("Node", "node"), ("Pod", "pod")] {
        relabel.push(json!({
            "source_labels": [
                "__meta_kubernetes_endpoint_address_target_kind",
                "__meta_kubernetes_endpoint_address_target_name",
            ],
            "separator": ";",
            "regex": format!("{kind};(.*)"),
            "replacement": "${1}",
            "target_label": label,
        }));
    }
    for (source, label) in [
        ("__meta_kubernetes_namespace", "namespace"),
        ("__meta_kubernetes_service_name", "service"),
        ("__meta_kubernetes_pod_name", "pod"),
        ("__meta_kubernetes_pod_container_name", "container"),
        ("__meta_kubernetes_service_name", "job"),
    ] {
        relabel.push(json!({"source_labels": [source], "target_label": label}));
    }
    relabel.push(json!({"target_label": "endpoint", "replacement": port}));
    let job = json!({
        "job_name": format!("serviceMonitor/{namespace}/{name}/0"),
        "honor_labels": false,
        "scrape_interval": endpoint["interval"],
        "metrics_path": endpoint["path"],
        "scheme": "http",
        "file_sd_configs": [{"files": [targets]}],
        "relabel_configs": relabel,
    });
    let namespaces = spec["namespaceSelector"]["matchNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    Ok((job, namespaces))
}

/// The scrape job prometheus-operator generates for a PodMonitor, reading
/// the targets [`pod_targets`] writes to `targets`, which carry its target
/// labels already.
fn pod_monitor_job(monitor: &PodMonitor, targets: &Path) -> Value {
    json!({
        "job_name": format!("podMonitor/{MONITORING}/{}/0", monitor.namespace),
        "honor_labels": false,
        "scrape_interval": monitor.interval,
        "metrics_path": "/metrics",
        "scheme": "http",
        "file_sd_configs": [{"files": [targets]}],
    })
}

/// Plays Prometheus' Kubernetes discovery: rewrites `file` with what
/// `targets` finds whenever an object `api` watches changes.
async fn discover<K, F, Fut>(api: Api<K>, file: PathBuf, targets: F)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let mut changes = watcher(api, watcher::Config::default()).boxed();
    let mut written = None;
    while let Some(change) = changes.next().await {
        if change.is_err() {
            continue;
        }
        let Ok(targets) = targets().await else {
            continue;
        };
        if written.as_ref() == Some(&targets) {
            continue;
        }
        // Prometheus reads a whole file: write it aside, then rename.
        let partial = file.with_extension("partial");
        let text = targets.to_string();
        if std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, &file))
            .is_ok()
        {
            written = Some(targets);
        }
    }
}

/// Every address and port of the EndpointSlices of `namespaces`, labelled
/// as the `endpoints` role of Kubernetes discovery labels them.
async fn endpoint_targets(client: &kube::Client, namespaces: &[String]) -> anyhow::Result<Value> {
    let mut targets = Vec::new();
    for namespace in namespaces {
        let params = ListParams::default();
        let services = Api::<Service>::namespaced(client.clone(), namespace)
            .list(&params)
            .await?
            .items;
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&params)
            .await?
            .items;
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
            .list(&params)
            .await?
            .items;
        for slice in &slices {
            let labels = slice.metadata.labels.as_ref();
            let Some(name) = labels.and_then(|l| l.get("kubernetes.io/service-name")) else {
                continue;
            };
            let service = services
                .iter()
                .find(|s| s.metadata.name.as_ref() == Some(name));
            let mut common = serde_json::Map::new();
            common.insert(
                "__meta_kubernetes_namespace".into(),
                namespace.as_str().into(),
            );
            common.insert(
                "__meta_kubernetes_service_name".into(),
                name.as_str().into(),
            );
            for (label, value) in service
                .and_then(|s| s.metadata.labels.as_ref())
                .into_iter()
                .flatten()
            {
                let label = sanitize(label);
                common.insert(
                    format!("__meta_kubernetes_service_label_{label}"),
                    value.as_str().into(),
                );
                common.insert(
                    format!("__meta_kubernetes_service_labelpresent_{label}"),
                    "true".into(),
                );
            }
            for endpoint in &slice.endpoints {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let target = endpoint.target_ref.as_ref();
                let pod = target
                    .filter(|t| t.kind.as_deref() == Some("Pod"))
                    .and_then(|t| pods.iter().find(|p| p.metadata.name == t.name));
                for port in slice.ports.iter().flatten() {
                    let number = port.port.unwrap_or_default();
                    let mut labels = common.clone();
                    labels.insert(
                        "__meta_kubernetes_endpoint_port_name".into(),
                        port.name.clone().unwrap_or_default().into(),
                    );
                    labels.insert(
                        "__meta_kubernetes_endpoint_ready".into(),
                        ready.to_string().into(),
                    );
                    if let Some(target) = target {
                        labels.insert(
                            "__meta_kubernetes_endpoint_address_target_kind".into(),
                            target.kind.clone().unwrap_or_default().into(),
                        );
                        labels.insert(
                            "__meta_kubernetes_endpoint_address_target_name".into(),
                            target.name.clone().unwrap_or_default().into(),
                        );
                    }
                    if let Some(pod) = pod {
                        labels.insert(
                            "__meta_kubernetes_pod_name".into(),
                            pod.metadata.name.clone().unwrap_or_default().into(),
                        );
                        let container =
                            pod.spec.iter().flat_map(|s| &s.containers).find(|c| {
                                c.ports.iter().flatten().any(|p| p.container_port == number)
                            });
                        if let Some(container) = container {
                            labels.insert(
                                "__meta_kubernetes_pod_container_name".into(),
                                container.name.as_str().into(),
                            );
                        }
                    }
                    for address in &endpoint.addresses {
                        targets.push(
                            json!({"targets": [format!("{address}:{number}")], "labels": labels}),
                        );
                    }
                }
            }
        }
    }
    Ok(Value::Array(targets))
}

/// The running pods of `pods` at their container port named `port`, with
/// the target labels a PodMonitor's job gives them.
async fn pod_targets(pods: &Api<Pod>, port: &str) -> anyhow::Result<Value> {
    let mut targets = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let (Some(ip), true) = (ip, running && pod.metadata.deletion_timestamp.is_none()) else {
            continue;
        };
        for container in pod.spec.iter().flat_map(|s| &s.containers) {
            let ports = container.ports.iter().flatten();
            for number in ports.filter(|p| p.name.as_deref() == Some(port)) {
                targets.push(json!({
                    "targets": [format!("{ip}:{}", number.container_port)],
                    "labels": {
                        "namespace": pod.metadata.namespace,
                        "pod": pod.metadata.name,
                        "container": container.name,
                        "endpoint": port,
                    },
                }));
            }
        }
    }
    Ok(Value::Array(targets))
}

/// A label name as Prometheus' service discovery writes it.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn regex_escape(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A headless Service named as the values' Prometheus, whose one endpoint
/// is the test's Prometheus at `addr`.
fn prometheus_service(name: &str, namespace: &str, addr: SocketAddr) -> [Value; 2] {
    [
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "clusterIP": "None",
                "ports": [{"name": "http-web", "port": addr.port()}],
            },
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-test"),
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": [addr.ip().to_string()],
                "conditions": {"ready": true},
            }],
            "ports": [{"name": "http-web", "port": addr.port(), "protocol": "TCP"}],
        }),
    ]
}

/// What the prometheus-community chart renders for `values`: the adapter's
/// ServiceAccount and RBAC, its configuration, Deployment and Service, and
/// the APIService of `external.metrics.k8s.io`.
fn adapter_objects(values: &Value) -> anyhow::Result<Vec<Value>> {
    let prometheus = &values["prometheus"];
    let url = format!(
        "{}:{}{}",
        prometheus["url"].as_str().context("prometheus.url")?,
        prometheus["port"],
        prometheus["path"].as_str().unwrap_or_default()
    );
    let config = serde_yaml::to_string(&json!({"externalRules": values["rules"]["external"]}))?;
    let mut args = vec![
        "/adapter".to_string(),
        "--secure-port=6443".into(),
        "--cert-dir=/tmp/cert".into(),
        format!("--prometheus-url={url}"),
        "--metrics-relist-interval=1m".into(),
        format!("--v={}", values["logLevel"].as_u64().unwrap_or(4)),
        "--config=/etc/adapter/config.yaml".into(),
        // The default, spelled out: in a pod it means the pod's own address.
        "--bind-address=0.0.0.0".into(),
    ];
    args.extend(
        values["extraArguments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from)),
    );
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": ADAPTER}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    volumes.extend(
        values["extraVolumes"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned(),
    );
    let mut mounts = vec![
        json!({"name": "config", "mountPath": "/etc/adapter", "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    mounts.extend(
        values["extraVolumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned(),
    );
    let account = json!({"kind": "ServiceAccount", "name": ADAPTER, "namespace": MONITORING});
    let cluster_binding = |name: &str, role: &str, subject: &Value| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [subject],
        })
    };
    let hpa_controller = json!({"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"});
    Ok(vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ADAPTER, "namespace": MONITORING}}),
        // Reading the cluster's objects, for resource-bound metrics.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "prometheus-adapter-resource-reader"},
            "rules": [{
                "apiGroups": [""],
                "resources": ["namespaces", "pods", "services", "configmaps", "nodes"],
                "verbs": ["get", "list", "watch"],
            }],
        }),
        cluster_binding(
            "prometheus-adapter-resource-reader",
            "prometheus-adapter-resource-reader",
            &account,
        ),
        // Delegated authentication and authorization of the API server's
        // proxied requests.
        cluster_binding(
            "prometheus-adapter:system:auth-delegator",
            "system:auth-delegator",
            &account,
        ),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "prometheus-adapter-auth-reader", "namespace": "kube-system"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
            "subjects": [account],
        }),
        // The HPA controller reads external metrics.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "prometheus-adapter-external-metrics"},
            "rules": [{
                "apiGroups": ["external.metrics.k8s.io"],
                "resources": ["*"],
                "verbs": ["get", "list", "watch"],
            }],
        }),
        cluster_binding(
            "prometheus-adapter-hpa-controller-external-metrics",
            "prometheus-adapter-external-metrics",
            &hpa_controller,
        ),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ADAPTER, "namespace": MONITORING},
            "data": {"config.yaml": config},
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": ADAPTER, "namespace": MONITORING},
            "spec": {
                "replicas": values["replicas"].as_u64().unwrap_or(1),
                "selector": {"matchLabels": {"app": ADAPTER}},
                "template": {
                    "metadata": {"labels": {"app": ADAPTER}},
                    "spec": {
                        "serviceAccountName": ADAPTER,
                        "containers": [{
                            "name": ADAPTER,
                            "image": "registry.k8s.io/prometheus-adapter/prometheus-adapter:v0.12.0",
                            "args": args,
                            "ports": [{"name": "https", "containerPort": 6443}],
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ADAPTER, "namespace": MONITORING},
            "spec": {
                "selector": {"app": ADAPTER},
                "ports": [{"name": "https", "port": 443, "targetPort": 6443}],
            },
        }),
        json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": EXTERNAL_METRICS},
            "spec": {
                "service": {"name": ADAPTER, "namespace": MONITORING, "port": 443},
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "insecureSkipTLSVerify": true,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_and_values_are_written_as_prometheus_reads_them() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(regex_escape("wva.v1+(x)"), r"wva\.v1\+\(x\)");
    }

    #[test]
    fn the_adapter_runs_with_the_sample_values() {
        let values = adapter_values().unwrap();
        let objects = adapter_objects(&values).unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(
                &"--prometheus-url=https://kube-prometheus-stack-prometheus.monitoring.svc:9090"
            ),
            "{args:?}"
        );
        assert!(
            args.contains(&"--prometheus-ca-file=/etc/prometheus-ca/ca.crt"),
            "{args:?}"
        );
        let config = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        let config: Value =
            serde_yaml::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
        // The variants' decision, its legacy name and the workloads' decision.
        let served: Vec<&str> = config["externalRules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"]["as"].as_str())
            .collect();
        assert_eq!(
            served,
            [
                "wva_desired_replicas",
                "inferno_desired_replicas",
                "wva_workload_desired_replicas"
            ]
        );
    }
}
