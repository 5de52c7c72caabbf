//! The Helm chart (`charts/wva`), rendered by a real helm binary and checked
//! object by object.
//!
//! Offline, the rendered objects are checked the way one would read them
//! (the same chart installed into a real API server is tested in
//! `cluster_install.rs`): each Kubernetes object is deserialized into its
//! k8s-openapi type and serialized back, and must come back unchanged (a
//! misspelled or misplaced field is dropped on the way and shows as a
//! difference). The ConfigMaps are parsed by the aggregator's own
//! configuration code, and the RBAC rules are compared with the permissions
//! table of docs/kubernetes.md.
//!
//! helm comes from `scripts/fetch-tools` (into `target/tools/helm`), or from
//! `$WVA_HELM`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use wva_aggregator::params;
use wva_core::config::hybrid::HybridConfig;
use wva_core::config::params::{PARAMS, STATIC_WITHOUT_FLAG};
use wva_core::config::{saturation, scale_to_zero};
use wva_e2e::{tool, workspace};
use wva_webhook::injection::InjectionConfig;

const RELEASE: &str = "wva";
const NAMESPACE: &str = "wva-system";
/// The resource-name prefix for release `wva` (it contains the chart name).
const FULLNAME: &str = "wva";
/// The ConfigMaps' default names, WVA's.
const MAIN_CONFIG_MAP: &str = "workload-variant-autoscaler-variantautoscaling-config";
const SATURATION_CONFIG_MAP: &str = "saturation-scaling-config";
const SCALE_TO_ZERO_CONFIG_MAP: &str = "model-scale-to-zero-config";
const SERVICE_CLASS_CONFIG_MAP: &str = "serviceclass";

fn chart_dir() -> PathBuf {
    workspace().join("charts/wva")
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn helm() -> PathBuf {
    tool("helm", "WVA_HELM")
}

/// `--set`/`--set-json` arguments for `values`: entries starting with
/// `json:` go to `--set-json`, the others to `--set`.
fn value_args(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| match v.strip_prefix("json:") {
            Some(json) => ["--set-json".to_string(), json.to_string()],
            None => ["--set".to_string(), v.to_string()],
        })
        .collect()
}

/// `helm <subcommand> [release] charts/wva --namespace wva-system <flags> <values>`
/// (the release name for `template` and `install`).
fn run_helm(subcommand: &str, flags: &[&str], values: &[&str]) -> Output {
    let mut command = Command::new(helm());
    command.arg(subcommand);
    if matches!(subcommand, "template" | "install") {
        command.arg(RELEASE);
    }
    command
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE])
        .args(flags)
        .args(value_args(values))
        .output()
        .expect("helm runs")
}

/// The objects `helm template` renders with `values`; panics with helm's
/// error when it fails.
fn render(values: &[&str]) -> Vec<Value> {
    let output = run_helm("template", &[], values);
    assert!(
        output.status.success(),
        "helm template {values:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    documents(&String::from_utf8(output.stdout).expect("helm prints UTF-8"))
}

/// The objects of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The value combinations most tests look at; each is rendered once per run.
#[derive(Debug, Clone, Copy)]
enum Setup {
    Default,
    Namespaced,
    NoWebhook,
    Immutable,
    CertManager,
    Monitoring,
}

impl Setup {
    const ALL: [Setup; 6] = [
        Setup::Default,
        Setup::Namespaced,
        Setup::NoWebhook,
        Setup::Immutable,
        Setup::CertManager,
        Setup::Monitoring,
    ];

    fn values(self) -> &'static [&'static str] {
        match self {
            Setup::Default => &[],
            Setup::Namespaced => &["rbac.namespaced=true"],
            Setup::NoWebhook => &["webhook.enabled=false"],
            Setup::Immutable => &["configMaps.immutable=true"],
            Setup::CertManager => &["webhook.certManager.enabled=true"],
            Setup::Monitoring => &["serviceMonitor.enabled=true", "networkPolicy.enabled=true"],
        }
    }

    fn objects(self) -> &'static [Value] {
        static RENDERS: [OnceLock<Vec<Value>>; Setup::ALL.len()] =
            [const { OnceLock::new() }; Setup::ALL.len()];
        RENDERS[self as usize].get_or_init(|| render(self.values()))
    }
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

fn find<'a>(objects: &'a [Value], wanted_kind: &str, wanted_name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| kind(o) == wanted_kind && name(o) == wanted_name)
}

fn get<'a>(objects: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    find(objects, wanted_kind, wanted_name)
        .unwrap_or_else(|| panic!("no {wanted_kind} {wanted_name} in the render"))
}

fn deployment(objects: &[Value]) -> &Value {
    get(objects, "Deployment", FULLNAME)
}

fn container(objects: &[Value]) -> &Value {
    &deployment(objects)["spec"]["template"]["spec"]["containers"][0]
}

/// The container's env: name -> literal value (`None` for `valueFrom`).
fn env(objects: &[Value]) -> BTreeMap<String, Option<String>> {
    container(objects)["env"]
        .as_array()
        .expect("the container has env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            (name, e["value"].as_str().map(str::to_string))
        })
        .collect()
}

fn env_value(objects: &[Value], key: &str) -> String {
    env(objects)
        .remove(key)
        .flatten()
        .unwrap_or_else(|| panic!("the Deployment sets no literal {key}"))
}

fn config_map_data(object: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(object["data"].clone()).expect("ConfigMap data is a string map")
}

/// The chart's appVersion, the default image tag.
fn app_version() -> String {
    let chart: Value = serde_yaml::from_str(&read("charts/wva/Chart.yaml")).expect("Chart.yaml");
    chart["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_string()
}

// ---------------------------------------------------------------------------
// Shape: every object is a well-formed instance of its kind.
// ---------------------------------------------------------------------------

/// `Some(check)` when `object` is a `T` (same apiVersion and kind): it must
/// survive a round trip through `T` unchanged.
fn round_trip<T: Resource + DeserializeOwned + Serialize>(
    object: &Value,
) -> Option<Result<(), String>> {
    if object["apiVersion"] != T::API_VERSION || object["kind"] != T::KIND {
        return None;
    }
    Some(
        wva_e2e::round_trip::<T>(object, "")
            .map(|_| ())
            .map_err(|e| format!("is not a valid {}: {e}", T::KIND)),
    )
}

/// Fails unless `value` is an object whose keys are all in `allowed` and
/// which has every key of `required`.
fn check_fields(
    value: &Value,
    at: &str,
    allowed: &[&str],
    required: &[&str],
) -> Result<(), String> {
    let map = value
        .as_object()
        .ok_or_else(|| format!("{at} is not an object"))?;
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("{at}.{unknown} is not a known field"));
    }
    if let Some(missing) = required.iter().find(|k| !map.contains_key(**k)) {
        return Err(format!("{at}.{missing} is required"));
    }
    Ok(())
}

fn non_empty_str(value: &Value, at: &str) -> Result<(), String> {
    match value.as_str() {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(format!("{at} must be a non-empty string")),
    }
}

/// Top level and metadata of a kind without a k8s-openapi type.
fn custom_object(object: &Value) -> Result<(), String> {
    check_fields(
        object,
        "",
        &["apiVersion", "kind", "metadata", "spec"],
        &["metadata", "spec"],
    )?;
    round_trip_meta(&object["metadata"])
}

fn round_trip_meta(metadata: &Value) -> Result<(), String> {
    wva_e2e::round_trip::<ObjectMeta>(metadata, ".metadata")
        .map(|_| ())
        .map_err(|e| format!("metadata is not valid: {e}"))
}

/// cert-manager.io/v1 Certificate: the fields the chart uses.
fn certificate(object: &Value) -> Result<(), String> {
    custom_object(object)?;
    let spec = &object["spec"];
    check_fields(
        spec,
        ".spec",
        &[
            "secretName",
            "dnsNames",
            "issuerRef",
            "privateKey",
            "duration",
            "renewBefore",
        ],
        &["secretName", "dnsNames", "issuerRef"],
    )?;
    non_empty_str(&spec["secretName"], ".spec.secretName")?;
    let dns_names = spec["dnsNames"].as_array().filter(|a| !a.is_empty());
    dns_names
        .ok_or(".spec.dnsNames must be a non-empty list")?
        .iter()
        .try_for_each(|n| non_empty_str(n, ".spec.dnsNames[]"))?;
    check_fields(
        &spec["issuerRef"],
        ".spec.issuerRef",
        &["name", "kind", "group"],
        &["name"],
    )?;
    non_empty_str(&spec["issuerRef"]["name"], ".spec.issuerRef.name")?;
    if let Some(key) = spec.get("privateKey") {
        check_fields(
            key,
            ".spec.privateKey",
            &["algorithm", "size", "rotationPolicy", "encoding"],
            &[],
        )?;
    }
    Ok(())
}

/// cert-manager.io/v1 Issuer: the chart only makes self-signed ones.
fn issuer(object: &Value) -> Result<(), String> {
    custom_object(object)?;
    check_fields(&object["spec"], ".spec", &["selfSigned"], &["selfSigned"])?;
    check_fields(&object["spec"]["selfSigned"], ".spec.selfSigned", &[], &[])
}

/// monitoring.coreos.com/v1 ServiceMonitor.
fn service_monitor(object: &Value) -> Result<(), String> {
    custom_object(object)?;
    let spec = &object["spec"];
    check_fields(
        spec,
        ".spec",
        &["selector", "namespaceSelector", "endpoints", "jobLabel"],
        &["selector", "endpoints"],
    )?;
    check_fields(
        &spec["selector"],
        ".spec.selector",
        &["matchLabels", "matchExpressions"],
        &[],
    )?;
    check_fields(
        &spec["namespaceSelector"],
        ".spec.namespaceSelector",
        &["matchNames", "any"],
        &[],
    )?;
    let endpoints = spec["endpoints"].as_array().filter(|a| !a.is_empty());
    for endpoint in endpoints.ok_or(".spec.endpoints must be a non-empty list")? {
        check_fields(
            endpoint,
            ".spec.endpoints[]",
            &["port", "path", "interval", "scheme"],
            &["port"],
        )?;
        non_empty_str(&endpoint["port"], ".spec.endpoints[].port")?;
    }
    Ok(())
}

/// Checks one rendered object; any kind this test does not know fails.
fn check_object(object: &Value) -> Result<(), String> {
    let typed = round_trip::<Deployment>(object)
        .or_else(|| round_trip::<Service>(object))
        .or_else(|| round_trip::<ServiceAccount>(object))
        .or_else(|| round_trip::<ConfigMap>(object))
        .or_else(|| round_trip::<ClusterRole>(object))
        .or_else(|| round_trip::<ClusterRoleBinding>(object))
        .or_else(|| round_trip::<Role>(object))
        .or_else(|| round_trip::<RoleBinding>(object))
        .or_else(|| round_trip::<MutatingWebhookConfiguration>(object))
        .or_else(|| round_trip::<PodDisruptionBudget>(object))
        .or_else(|| round_trip::<NetworkPolicy>(object));
    if let Some(result) = typed {
        return result;
    }
    match (object["apiVersion"].as_str(), kind(object)) {
        (Some("cert-manager.io/v1"), "Certificate") => certificate(object),
        (Some("cert-manager.io/v1"), "Issuer") => issuer(object),
        (Some("monitoring.coreos.com/v1"), "ServiceMonitor") => service_monitor(object),
        (api_version, kind) => Err(format!(
            "unknown kind {kind} ({api_version:?}): teach tests/tests/chart.rs to check it"
        )),
    }
}

#[test]
fn every_object_round_trips_through_its_type() {
    let mut failures = Vec::new();
    for setup in Setup::ALL {
        for object in setup.objects() {
            if let Err(e) = check_object(object) {
                failures.push(format!("{setup:?}: {} {}: {e}", kind(object), name(object)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_passes_strict_for_every_setup() {
    let plain = run_helm("lint", &[], &[]);
    assert!(
        plain.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    for setup in Setup::ALL {
        let output = run_helm("lint", &["--strict"], setup.values());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("0 chart(s) failed"),
            "helm lint --strict {setup:?}:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn schema_rejects_bad_values() {
    let cases = [
        ("replicas=-1", "/replicas"),
        ("unknownTopLevel=1", "unknownTopLevel"),
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
        ("webhook.timeoutSeconds=60", "/webhook/timeoutSeconds"),
        // The chart sets METRICS_ADDR itself, as env, which would win.
        ("config.METRICS_ADDR=0.0.0.0:9", "METRICS_ADDR"),
        (
            "json:saturation.default.kvCacheThreshold=1.5",
            "/saturation/default/kvCacheThreshold",
        ),
        (
            r#"json:saturation.overrides={"x":{"model_id":"m"}}"#,
            "namespace",
        ),
        ("injection.agent.unknown=1", "unknown"),
        // The aggregator accepts only "true" and "false" (in any case).
        (
            "config.EXPERIMENTAL_PROACTIVE_MODEL=yes",
            "/config/EXPERIMENTAL_PROACTIVE_MODEL",
        ),
        (
            r#"json:hybrid.serviceClasses=[{"name":"Premium","model":"m","priority":0,"slo-itl":24,"slo-ttw":500}]"#,
            "/hybrid/serviceClasses/0/priority",
        ),
        (
            r#"json:hybrid.serviceClasses=[{"name":"Premium","model":"m","priority":1,"slo-itl":24}]"#,
            "slo-ttw",
        ),
        ("hybrid.headroom=11", "/hybrid/headroom"),
        (
            "hybrid.acceleratorLimits.L4=-1",
            "/hybrid/acceleratorLimits/L4",
        ),
    ];
    for (value, key) in cases {
        let output = run_helm("template", &[], &[value]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(
            stderr.contains("schema") && stderr.contains(key),
            "{value}: the error should be a schema error naming {key}:\n{stderr}"
        );
    }
}

#[test]
fn several_replicas_need_leader_election() {
    let output = run_helm("template", &[], &["leaderElection.enabled=false"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "two leaders were accepted");
    assert!(
        stderr.contains("leaderElection.enabled=false needs replicas: 1"),
        "{stderr}"
    );
    let single = render(&["leaderElection.enabled=false", "replicas=1"]);
    assert_eq!(env_value(&single, "LEADER_ELECT"), "false");
    assert!(
        of_kind(&single, "PodDisruptionBudget").is_empty(),
        "a PDB would block drains"
    );
}

// ---------------------------------------------------------------------------
// What each setup renders.
// ---------------------------------------------------------------------------

fn kinds_and_names(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .map(|o| (kind(o).to_string(), name(o).to_string()))
        .collect()
}

fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect()
}

#[test]
fn default_render_has_exactly_the_expected_objects() {
    let objects = Setup::Default.objects();
    let expected = set(&[
        ("Deployment", "wva"),
        ("Service", "wva"),
        ("Service", "wva-headless"),
        ("Service", "wva-webhook"),
        ("ServiceAccount", "wva"),
        ("ClusterRole", "wva"),
        ("ClusterRoleBinding", "wva"),
        ("Role", "wva"),
        ("RoleBinding", "wva"),
        ("ConfigMap", MAIN_CONFIG_MAP),
        ("ConfigMap", SATURATION_CONFIG_MAP),
        ("ConfigMap", SCALE_TO_ZERO_CONFIG_MAP),
        ("ConfigMap", SERVICE_CLASS_CONFIG_MAP),
        ("ConfigMap", "wva-injection"),
        ("MutatingWebhookConfiguration", "wva-agent-injector"),
        ("PodDisruptionBudget", "wva"),
    ]);
    assert_eq!(kinds_and_names(objects), expected);
    assert_eq!(objects.len(), expected.len(), "an object is rendered twice");
    for object in objects {
        let labels = &object["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/instance"],
            RELEASE,
            "{}",
            name(object)
        );
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "Helm",
            "{}",
            name(object)
        );
        let cluster_scoped = [
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        ];
        if !cluster_scoped.contains(&kind(object)) {
            assert_eq!(
                object["metadata"]["namespace"],
                NAMESPACE,
                "{}",
                name(object)
            );
        }
    }
}

#[test]
fn optional_objects_appear_when_enabled() {
    let added = |setup: Setup| -> BTreeSet<(String, String)> {
        let default = kinds_and_names(Setup::Default.objects());
        kinds_and_names(setup.objects())
            .difference(&default)
            .cloned()
            .collect()
    };
    assert_eq!(
        added(Setup::Monitoring),
        set(&[("ServiceMonitor", "wva"), ("NetworkPolicy", "wva")])
    );
    assert_eq!(
        added(Setup::CertManager),
        set(&[("Certificate", "wva-webhook"), ("Issuer", "wva-selfsigned")])
    );
    assert_eq!(
        added(Setup::Namespaced),
        set(&[("Role", "wva-watch"), ("RoleBinding", "wva-watch")])
    );
}

#[test]
fn deployment_is_hardened_and_highly_available() {
    let objects = Setup::Default.objects();
    let deployment = deployment(objects);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "it talks to the API server"
    );
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    assert_eq!(
        get(objects, "ServiceAccount", FULLNAME)["automountServiceAccountToken"],
        false,
        "only the aggregator's own pods should get the token"
    );
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let container = container(objects);
    assert_eq!(
        container["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
               "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        container["image"],
        format!("ghcr.io/wva-project/wva-aggregator:{}", app_version())
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    let ports: BTreeMap<&str, &Value> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["containerPort"]))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            ("grpc", &json!(9443)),
            ("metrics", &json!(8080)),
            ("webhook", &json!(8443))
        ])
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let pdb = get(objects, "PodDisruptionBudget", FULLNAME);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
}

#[test]
fn pod_values_reach_the_pod_spec() {
    let objects = render(&[
        "json:extraEnv=[{\"name\":\"RUST_LOG\",\"value\":\"debug\"}]",
        "json:extraArgs=[\"--staleness\",\"20s\"]",
        "nodeSelector.pool=system",
        "json:tolerations=[{\"key\":\"dedicated\",\"operator\":\"Exists\"}]",
        "podAnnotations.team=ml",
        "podLabels.tier=control",
        "priorityClassName=system-cluster-critical",
        "json:affinity={\"nodeAffinity\":{}}",
        "image.tag=1.2.3",
    ]);
    let pod = &deployment(&objects)["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["team"], "ml");
    assert_eq!(pod["metadata"]["labels"]["tier"], "control");
    let spec = &pod["spec"];
    assert_eq!(spec["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(
        spec["affinity"],
        json!({"nodeAffinity": {}}),
        "affinity replaces the default"
    );
    assert_eq!(spec["containers"][0]["args"], json!(["--staleness", "20s"]));
    assert_eq!(
        spec["containers"][0]["image"],
        "ghcr.io/wva-project/wva-aggregator:1.2.3"
    );
    assert_eq!(env(&objects)["RUST_LOG"].as_deref(), Some("debug"));
    for object in &objects {
        check_object(object).unwrap_or_else(|e| panic!("{} {}: {e}", kind(object), name(object)));
    }
}

/// Extra volumes join the chart's own, with the webhook's or without them.
#[test]
fn extra_volumes_are_mounted_beside_the_charts_own() {
    let extra = [
        "json:extraVolumes=[{\"name\":\"prometheus-ca\",\"configMap\":{\"name\":\"prometheus-ca\"}}]",
        "json:extraVolumeMounts=[{\"name\":\"prometheus-ca\",\"mountPath\":\"/etc/wva/prometheus\"}]",
    ];
    for (webhook, own) in [("true", 1), ("false", 0)] {
        let webhook = format!("webhook.enabled={webhook}");
        let objects = render(&[extra[0], extra[1], &webhook]);
        let spec = &deployment(&objects)["spec"]["template"]["spec"];
        let volumes = spec["volumes"].as_array().expect("volumes");
        let mounts = spec["containers"][0]["volumeMounts"]
            .as_array()
            .expect("volumeMounts");
        assert_eq!(volumes.len(), own + 1, "{webhook}: {volumes:?}");
        assert_eq!(mounts.len(), own + 1, "{webhook}: {mounts:?}");
        assert_eq!(volumes[own]["configMap"]["name"], "prometheus-ca");
        assert_eq!(mounts[own]["mountPath"], "/etc/wva/prometheus");
        for object in &objects {
            check_object(object)
                .unwrap_or_else(|e| panic!("{} {}: {e}", kind(object), name(object)));
        }
    }
}

/// The Deployment's env, Services and volumes name the chart's own objects.
#[test]
fn deployment_points_at_the_charts_own_objects() {
    for setup in [Setup::Default, Setup::CertManager] {
        let objects = setup.objects();
        let env = env(objects);
        assert_eq!(env["POD_NAME"], None, "downward API");
        assert_eq!(env["POD_NAMESPACE"], None, "downward API");
        assert!(
            !env.contains_key("WATCH_NAMESPACE"),
            "cluster-wide by default"
        );
        for key in [
            "CONFIG_MAP_NAME",
            "SATURATION_CONFIG_MAP_NAME",
            "SCALE_TO_ZERO_CONFIG_MAP_NAME",
            "SERVICE_CLASS_CONFIG_MAP_NAME",
        ] {
            get(objects, "ConfigMap", &env_value(objects, key));
        }
        assert_eq!(env_value(objects, "LEADER_ELECT"), "true");
        assert_eq!(env_value(objects, "WVA_GRPC_ADDR"), "0.0.0.0:9443");
        assert_eq!(env_value(objects, "METRICS_ADDR"), "0.0.0.0:8080");
        assert_eq!(env_value(objects, "WVA_WEBHOOK_ADDR"), "0.0.0.0:8443");

        // The Lease the aggregator uses is the one the Role lets it update.
        let lease = env_value(objects, "LEADER_ELECTION_ID");
        let role = get(objects, "Role", FULLNAME);
        assert!(
            rules(role).iter().any(|r| r.resources.contains("leases")
                && r.verbs.contains("update")
                && r.resource_names == BTreeSet::from([lease.clone()])),
            "the Role does not cover Lease {lease}"
        );

        let webhook_service = get(
            objects,
            "Service",
            &env_value(objects, "WVA_WEBHOOK_SERVICE"),
        );
        assert_eq!(
            webhook_service["spec"]["ports"],
            json!([{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
        );
        let configuration = get(
            objects,
            "MutatingWebhookConfiguration",
            &env_value(objects, "WVA_WEBHOOK_CONFIGURATION"),
        );
        for webhook in configuration["webhooks"].as_array().unwrap() {
            assert_eq!(
                webhook["clientConfig"]["service"]["name"],
                name(webhook_service)
            );
            assert_eq!(webhook["clientConfig"]["service"]["namespace"], NAMESPACE);
            assert_eq!(webhook["clientConfig"]["service"]["port"], 443);
            assert!(
                webhook["clientConfig"].get("caBundle").is_none(),
                "filled in at run time"
            );
        }

        // The injection file is the injection ConfigMap's key, mounted.
        let injection = env_value(objects, "WVA_INJECTION_CONFIG");
        let (dir, file) = injection.rsplit_once('/').unwrap();
        let config_map = mounted_volume(objects, dir)["configMap"]["name"]
            .as_str()
            .unwrap();
        assert!(config_map_data(get(objects, "ConfigMap", config_map)).contains_key(file));

        let secret = env_value(objects, "WVA_WEBHOOK_SECRET");
        assert_eq!(secret, "wva-webhook-tls");
        match setup {
            Setup::CertManager => {
                let dir = env_value(objects, "WVA_WEBHOOK_CERT_DIR");
                let volume = mounted_volume(objects, &dir);
                assert_eq!(volume["secret"]["secretName"], secret.as_str());
                let items: BTreeSet<&str> = volume["secret"]["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["path"].as_str().unwrap())
                    .collect();
                assert_eq!(items, BTreeSet::from(["tls.crt", "tls.key"]));
                assert_eq!(
                    get(objects, "Certificate", "wva-webhook")["spec"]["secretName"],
                    secret.as_str()
                );
            }
            _ => assert!(!env.contains_key("WVA_WEBHOOK_CERT_DIR")),
        }
    }
}

/// The pod volume mounted at `path` in the aggregator container.
fn mounted_volume<'a>(objects: &'a [Value], path: &str) -> &'a Value {
    let mount = container(objects)["volumeMounts"]
        .as_array()
        .expect("volume mounts")
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing is mounted at {path}"));
    assert_eq!(mount["readOnly"], true, "{path}");
    deployment(objects)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {} for {path}", mount["name"]))
}

#[test]
fn services_reach_every_replica() {
    let objects = Setup::Default.objects();
    let pod_labels = &deployment(objects)["spec"]["template"]["metadata"]["labels"];
    for service in of_kind(objects, "Service") {
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(
                &pod_labels[key],
                value,
                "{} selects no aggregator pod",
                name(service)
            );
        }
    }
    let main = get(objects, "Service", FULLNAME);
    let ports: Vec<(&Value, &Value)> = main["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["name"], &p["port"]))
        .collect();
    assert_eq!(
        ports,
        [
            (&json!("grpc"), &json!(9443)),
            (&json!("metrics"), &json!(8080))
        ]
    );
    let headless = get(objects, "Service", "wva-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(headless["spec"]["ports"][0]["name"], "grpc");
    assert_eq!(headless["spec"]["ports"][0]["port"], 9443);
}

// ---------------------------------------------------------------------------
// RBAC.
// ---------------------------------------------------------------------------

/// One RBAC rule, flattened.
#[derive(Debug)]
struct Rule {
    groups: BTreeSet<String>,
    resources: BTreeSet<String>,
    verbs: BTreeSet<String>,
    resource_names: BTreeSet<String>,
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn rules(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| Rule {
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    verbs: strings(&r["verbs"]),
                    resource_names: strings(&r["resourceNames"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A permission: `verb` on `resource` (with `/subresource`) of API `group`.
#[derive(Debug, PartialEq)]
struct Permission {
    group: String,
    resource: String,
    verb: String,
}

impl Permission {
    fn new(group: &str, resource: &str, verb: &str) -> Self {
        Permission {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }

    fn granted_by(&self, rules: &[Rule]) -> bool {
        rules.iter().any(|r| {
            r.groups.contains(&self.group)
                && r.resources.contains(&self.resource)
                && r.verbs.contains(&self.verb)
        })
    }
}

/// Where a permission applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The aggregator's own namespace (ConfigMaps, Lease).
    Own,
    /// Wherever it watches.
    Watched,
}

/// The permissions table of docs/kubernetes.md: rows like
/// "| `deployments.apps`, `pods` | list, watch |", where "(own namespace)"
/// marks the aggregator's namespace.
fn documented_permissions() -> Vec<(Scope, Permission)> {
    let doc = read("docs/kubernetes.md");
    let section = doc
        .split("\n## Permissions")
        .nth(1)
        .expect("docs/kubernetes.md has a Permissions section");
    let section = section.split("\n## ").next().unwrap();
    let mut permissions = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let scope = if cells[0].contains("own namespace") {
            Scope::Own
        } else {
            Scope::Watched
        };
        let resources = cells[0].split('`').skip(1).step_by(2);
        for qualified in resources {
            // `name.group/subresource`; the core group has no dot.
            let (plain, subresource) = match qualified.split_once('/') {
                Some((plain, sub)) => (plain, Some(sub)),
                None => (qualified, None),
            };
            let (resource, group) = plain.split_once('.').unwrap_or((plain, ""));
            let resource = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_string(),
            };
            // Verbs may be followed by a parenthesized reason.
            let verbs = cells[1].split('(').next().unwrap();
            for verb in verbs.split(',').map(str::trim) {
                permissions.push((scope, Permission::new(group, &resource, verb)));
            }
        }
    }
    assert!(
        permissions.len() >= 10,
        "the permissions table was not found: {permissions:?}"
    );
    permissions
}

/// The rules in force in the release namespace and in `watched_namespace`:
/// the Roles there plus every ClusterRole.
fn rules_by_scope(objects: &[Value], watched_namespace: &str) -> (Vec<Rule>, Vec<Rule>) {
    let cluster_roles = of_kind(objects, "ClusterRole");
    assert!(
        !cluster_roles.is_empty(),
        "there is always a ClusterRole (TokenReview)"
    );
    let in_namespace = |ns: &str| -> Vec<Rule> {
        of_kind(objects, "Role")
            .into_iter()
            .filter(|r| r["metadata"]["namespace"] == ns)
            .chain(cluster_roles.iter().copied())
            .flat_map(rules)
            .collect()
    };
    (in_namespace(NAMESPACE), in_namespace(watched_namespace))
}

/// Every permission of docs/kubernetes.md is granted, in the right place.
#[test]
fn rbac_grants_the_documented_permissions() {
    let watch_elsewhere = render(&["rbac.namespaced=true", "watchNamespace=llm"]);
    let cases: [(&str, &[Value], &str); 3] = [
        ("cluster-wide", Setup::Default.objects(), "any-namespace"),
        ("namespaced", Setup::Namespaced.objects(), NAMESPACE),
        ("namespaced, watching llm", &watch_elsewhere, "llm"),
    ];
    for (what, objects, watched) in cases {
        let (own, watched_rules) = rules_by_scope(objects, watched);
        for (scope, permission) in documented_permissions() {
            let granted = match scope {
                Scope::Own => permission.granted_by(&own),
                Scope::Watched => permission.granted_by(&watched_rules),
            };
            assert!(granted, "{what}: {permission:?} ({scope:?}) is not granted");
        }
        check_bindings(objects);
    }
}

/// Every Role and ClusterRole is bound to the aggregator's ServiceAccount.
fn check_bindings(objects: &[Value]) {
    for (role_kind, binding_kind) in [
        ("Role", "RoleBinding"),
        ("ClusterRole", "ClusterRoleBinding"),
    ] {
        for role in of_kind(objects, role_kind) {
            let bound = of_kind(objects, binding_kind).into_iter().any(|b| {
                b["roleRef"] == json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name(role)})
                    && b["metadata"]["namespace"] == role["metadata"]["namespace"]
                    && b["subjects"] == json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}])
            });
            assert!(
                bound,
                "{role_kind} {} is not bound to the ServiceAccount",
                name(role)
            );
        }
    }
}

/// Least privilege: nothing beyond the documented table, `get` on pods, and
/// the webhook's own Secret and configuration.
#[test]
fn rbac_grants_nothing_else() {
    let documented: Vec<Permission> = documented_permissions()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let extra = [
        // Pod scraping reads pods one by one too (docs/pod-scraping.md).
        Permission::new("", "pods", "get"),
        // The webhook's self-managed certificate.
        Permission::new("", "secrets", "create"),
        Permission::new("", "secrets", "update"),
        Permission::new(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "get",
        ),
        Permission::new(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "update",
        ),
    ];
    for setup in Setup::ALL {
        let objects = setup.objects();
        for role in of_kind(objects, "ClusterRole")
            .into_iter()
            .chain(of_kind(objects, "Role"))
        {
            for rule in rules(role) {
                for group in &rule.groups {
                    for resource in &rule.resources {
                        for verb in &rule.verbs {
                            let p = Permission::new(group, resource, verb);
                            assert!(
                                documented.contains(&p) || extra.contains(&p),
                                "{setup:?}: {} {} grants {p:?}",
                                kind(role),
                                name(role)
                            );
                        }
                    }
                }
                // Write access to Secrets and to the webhook configuration is
                // limited to the chart's own objects (create carries no name).
                let sensitive = rule.resources.contains("mutatingwebhookconfigurations")
                    || (rule.resources.contains("secrets") && rule.verbs.contains("update"));
                if sensitive {
                    assert!(
                        !rule.resource_names.is_empty(),
                        "{setup:?}: {rule:?} has no resourceNames"
                    );
                }
                if rule.resources.contains("secrets") && rule.verbs.contains("create") {
                    assert_eq!(
                        kind(role),
                        "Role",
                        "{setup:?}: Secrets are created in the release namespace only"
                    );
                }
            }
        }
    }
}

#[test]
fn namespaced_rbac_keeps_only_cluster_scoped_rules_in_a_cluster_role() {
    let no_webhook = render(&["rbac.namespaced=true", "webhook.enabled=false"]);
    let cases: [(&[Value], &[&str]); 2] = [
        (
            Setup::Namespaced.objects(),
            &["tokenreviews", "mutatingwebhookconfigurations"],
        ),
        (&no_webhook, &["tokenreviews"]),
    ];
    for (objects, expected) in cases {
        let cluster_roles = of_kind(objects, "ClusterRole");
        assert_eq!(cluster_roles.len(), 1);
        let resources: BTreeSet<String> = rules(cluster_roles[0])
            .into_iter()
            .flat_map(|r| r.resources)
            .collect();
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(resources, expected);
        assert_eq!(env_value(objects, "WATCH_NAMESPACE"), NAMESPACE);
        let watch = get(objects, "Role", "wva-watch");
        assert_eq!(watch["metadata"]["namespace"], NAMESPACE);
    }

    let elsewhere = render(&["rbac.namespaced=true", "watchNamespace=llm"]);
    assert_eq!(env_value(&elsewhere, "WATCH_NAMESPACE"), "llm");
    assert_eq!(
        get(&elsewhere, "Role", "wva-watch")["metadata"]["namespace"],
        "llm"
    );
    assert_eq!(
        get(&elsewhere, "RoleBinding", "wva-watch")["metadata"]["namespace"],
        "llm"
    );
    // ConfigMaps and the Lease stay in the aggregator's own namespace.
    assert_eq!(
        get(&elsewhere, "Role", FULLNAME)["metadata"]["namespace"],
        NAMESPACE
    );
}

#[test]
fn metrics_secret_access_can_be_turned_off() {
    let objects = render(&[
        "rbac.readMetricsSecrets=false",
        "webhook.certManager.enabled=true",
        "grpc.tls.enabled=false",
    ]);
    for role in of_kind(&objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(&objects, "Role"))
    {
        assert!(
            rules(role).iter().all(|r| !r.resources.contains("secrets")),
            "{} still grants Secrets",
            name(role)
        );
    }
}

// ---------------------------------------------------------------------------
// ConfigMaps.
// ---------------------------------------------------------------------------

#[test]
fn config_maps_are_immutable_only_on_request() {
    for (setup, immutable) in [(Setup::Default, None), (Setup::Immutable, Some(true))] {
        let config_maps = of_kind(setup.objects(), "ConfigMap");
        assert_eq!(config_maps.len(), 5);
        for config_map in config_maps {
            assert_eq!(
                config_map["immutable"].as_bool(),
                immutable,
                "{setup:?} {}",
                name(config_map)
            );
        }
    }
}

/// The aggregator's own parsers accept what the chart renders.
#[test]
fn config_maps_parse_with_the_aggregators_own_code() {
    let objects = render(&[
        "config.WVA_STALENESS=20s",
        "config.PROMETHEUS_BASE_URL=https://prometheus.monitoring:9090",
        r#"json:saturation.overrides={"llama-prod":{"model_id":"meta/llama-3.1-8b","namespace":"prod","kvCacheThreshold":0.7}}"#,
        r#"json:scaleToZero.models={"llama-dev":{"model_id":"meta/llama-3.1-8b","namespace":"dev","retention_period":"2m"}}"#,
    ]);
    for check in [Setup::Default.objects(), &objects[..]] {
        let main = config_map_data(get(check, "ConfigMap", MAIN_CONFIG_MAP));
        let argv = [OsString::from("wva-aggregator")];
        if let Err(e) = params::parse(&argv, MAIN_CONFIG_MAP, &main) {
            panic!("the main ConfigMap is rejected: {e}");
        }
        let data = config_map_data(get(check, "ConfigMap", SATURATION_CONFIG_MAP));
        saturation::SaturationConfigSet::from_data(&data).expect("saturation ConfigMap");
        let data = config_map_data(get(check, "ConfigMap", SCALE_TO_ZERO_CONFIG_MAP));
        scale_to_zero::ScaleToZeroConfigSet::from_data(&data).expect("scale-to-zero ConfigMap");
        let data = config_map_data(get(check, "ConfigMap", SERVICE_CLASS_CONFIG_MAP));
        HybridConfig::from_data(&data).expect("serviceclass ConfigMap");
    }

    let default = config_map_data(get(
        Setup::Default.objects(),
        "ConfigMap",
        SATURATION_CONFIG_MAP,
    ));
    let parsed = saturation::SaturationConfigSet::from_data(&default).unwrap();
    assert_eq!(
        parsed.default_config(),
        saturation::SaturationConfig::default(),
        "WVA's defaults"
    );

    let data = config_map_data(get(&objects, "ConfigMap", SATURATION_CONFIG_MAP));
    let parsed = saturation::SaturationConfigSet::from_data(&data).unwrap();
    assert_eq!(
        parsed
            .for_model("meta/llama-3.1-8b", "prod")
            .kv_cache_threshold,
        0.7
    );
    assert_eq!(
        parsed
            .for_model("meta/llama-3.1-8b", "dev")
            .kv_cache_threshold,
        0.8
    );
    let data = config_map_data(get(&objects, "ConfigMap", SCALE_TO_ZERO_CONFIG_MAP));
    let parsed = scale_to_zero::ScaleToZeroConfigSet::from_data(&data).unwrap();
    let dev = parsed.for_model("meta/llama-3.1-8b", "dev");
    assert_eq!(dev.retention, std::time::Duration::from_secs(120));
    let main = config_map_data(get(&objects, "ConfigMap", MAIN_CONFIG_MAP));
    assert_eq!(main["WVA_STALENESS"], "20s");
}

/// HYBRID mode: the switch reaches the main ConfigMap and the aggregator
/// reads it as HYBRID; the classes, headroom and accelerator limits reach
/// the serviceclass ConfigMap and the aggregator's own parser reads them
/// back. By default the mode is CAPACITY-ONLY and there are no classes.
#[test]
fn hybrid_mode_and_its_service_classes_reach_the_config_maps() {
    let argv = [OsString::from("wva-aggregator")];
    let default = Setup::Default.objects();
    let main = config_map_data(get(default, "ConfigMap", MAIN_CONFIG_MAP));
    assert_eq!(main["EXPERIMENTAL_PROACTIVE_MODEL"], "false");
    let parsed = params::parse(&argv, MAIN_CONFIG_MAP, &main).unwrap();
    assert!(!parsed.args.experimental_proactive_model);
    let data = config_map_data(get(default, "ConfigMap", SERVICE_CLASS_CONFIG_MAP));
    assert_eq!(data, BTreeMap::from([("headroom".into(), "0.1".into())]));
    assert_eq!(
        HybridConfig::from_data(&data).unwrap(),
        HybridConfig::default()
    );

    let objects = render(&[
        "config.EXPERIMENTAL_PROACTIVE_MODEL=true",
        r#"json:hybrid.serviceClasses=[{"name":"Premium","model":"meta/llama-3.1-8b","priority":1,"slo-itl":24,"slo-ttw":500},{"name":"Freemium","model":"meta/llama-3.1-8b","priority":10,"slo-itl":100.5,"slo-ttw":2000}]"#,
        "json:hybrid.headroom=0.25",
        r#"json:hybrid.acceleratorLimits={"L4":16,"H100":4}"#,
        "configMaps.names.serviceClass=tiers",
    ]);
    let main = config_map_data(get(&objects, "ConfigMap", MAIN_CONFIG_MAP));
    assert_eq!(main["EXPERIMENTAL_PROACTIVE_MODEL"], "true");
    let parsed = params::parse(&argv, MAIN_CONFIG_MAP, &main).unwrap();
    assert!(parsed.args.experimental_proactive_model, "HYBRID mode");
    assert_eq!(
        env_value(&objects, "SERVICE_CLASS_CONFIG_MAP_NAME"),
        "tiers"
    );
    let config = HybridConfig::from_data(&config_map_data(get(&objects, "ConfigMap", "tiers")))
        .expect("the aggregator reads the rendered serviceclass ConfigMap");
    let class = |named| {
        config
            .classes
            .for_model("meta/llama-3.1-8b", named)
            .unwrap()
            .unwrap()
            .clone()
    };
    let premium = class(None);
    assert_eq!((premium.name.as_str(), premium.priority), ("Premium", 1));
    assert_eq!(
        (premium.objectives.itl_ms, premium.objectives.ttft_ms),
        (24.0, 500.0)
    );
    let freemium = class(Some("Freemium"));
    assert_eq!((freemium.priority, freemium.objectives.itl_ms), (10, 100.5));
    assert_eq!(config.headroom, 0.25);
    assert_eq!(
        config.ceilings,
        BTreeMap::from([("H100".to_string(), 4), ("L4".to_string(), 16)])
    );
}

/// `config` accepts exactly the main ConfigMap keys the chart does not set
/// itself: a key the aggregator adds must be added to the schema (or to this
/// list, with the reason).
#[test]
fn config_schema_matches_the_aggregators_keys() {
    // Set as container env by the chart (env wins over the ConfigMap).
    let set_by_chart = [
        "METRICS_ADDR",
        "WVA_GRPC_ADDR",
        "WATCH_NAMESPACE",
        "LEADER_ELECT",
        "LEADER_ELECTION_ID",
    ];
    // Secrets: they belong in a Secret, given through extraEnv.
    let secrets = ["PROMETHEUS_BEARER_TOKEN", "WVA_SCRAPE_BEARER_TOKEN"];
    let aggregator: BTreeSet<&str> = PARAMS
        .iter()
        .map(|p| p.key)
        .chain(STATIC_WITHOUT_FLAG.iter().copied())
        .filter(|k| !set_by_chart.contains(k) && !secrets.contains(k))
        .collect();
    let schema: Value = serde_json::from_str(&read("charts/wva/values.schema.json")).unwrap();
    let config = &schema["properties"]["config"];
    assert_eq!(config["additionalProperties"], false);
    let accepted: BTreeSet<&str> = config["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(accepted, aggregator);
}

#[test]
fn injection_config_has_the_computed_defaults() {
    let objects = Setup::Default.objects();
    let data = config_map_data(get(objects, "ConfigMap", "wva-injection"));
    let injection: Value =
        serde_yaml::from_str(&data["injection.yaml"]).expect("injection.yaml is YAML");
    let values: Value = serde_yaml::from_str(&read("charts/wva/values.yaml")).unwrap();
    let mut expected = values["injection"]["agent"].clone();
    expected["image"] = json!(format!("ghcr.io/wva-project/wva-agent:{}", app_version()));
    expected["aggregatorAddress"] = json!("https://wva-headless.wva-system.svc:9443");
    assert_eq!(injection, expected);
    assert_eq!(injection["fanOut"], true);
    assert_eq!(injection["tokenAudience"], "wva-aggregator");
    // The aggregator reads it with its own parser, which rejects unknown keys.
    let parsed = InjectionConfig::parse(&data["injection.yaml"]).expect("the aggregator reads it");
    assert_eq!(
        (parsed.vllm_port, parsed.epp_port, parsed.agent_port),
        (8000, 9090, 9400)
    );

    let custom = render(&[
        "injection.agent.image=registry.local/agent:dev",
        "injection.agent.aggregatorAddress=http://agg:9443",
    ]);
    let data = config_map_data(get(&custom, "ConfigMap", "wva-injection"));
    let injection: Value = serde_yaml::from_str(&data["injection.yaml"]).unwrap();
    assert_eq!(injection["image"], "registry.local/agent:dev");
    assert_eq!(injection["aggregatorAddress"], "http://agg:9443");
    let checksum = |objects: &[Value]| {
        deployment(objects)["spec"]["template"]["metadata"]["annotations"]["checksum/injection"]
            .clone()
    };
    assert_ne!(
        checksum(objects),
        checksum(&custom),
        "an injection change rolls the aggregator"
    );
}

// ---------------------------------------------------------------------------
// The webhook.
// ---------------------------------------------------------------------------

#[test]
fn webhook_selects_namespaces_and_opted_in_pods() {
    let objects = Setup::Default.objects();
    let configuration = get(
        objects,
        "MutatingWebhookConfiguration",
        "wva-agent-injector",
    );
    assert!(configuration["metadata"].get("annotations").is_none());
    let webhooks = configuration["webhooks"].as_array().unwrap();
    let names: Vec<&str> = webhooks
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["namespace.inject.wva.llmd.ai", "pod.inject.wva.llmd.ai"]
    );
    for webhook in webhooks {
        assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(webhook["sideEffects"], "None");
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(webhook["timeoutSeconds"], 5);
        assert_eq!(webhook["reinvocationPolicy"], "Never");
        assert_eq!(
            webhook["rules"],
            json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
        );
    }
    assert_eq!(
        webhooks[0]["clientConfig"]["service"]["path"],
        "/inject/namespace"
    );
    assert_eq!(
        webhooks[0]["namespaceSelector"],
        json!({"matchLabels": {"wva.llmd.ai/inject-agent": "enabled"}})
    );
    assert_eq!(
        webhooks[1]["clientConfig"]["service"]["path"],
        "/inject/pod"
    );
    assert_eq!(
        webhooks[1]["namespaceSelector"],
        json!({"matchExpressions": [
            {"key": "wva.llmd.ai/inject-agent", "operator": "NotIn", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-node-lease", NAMESPACE]},
        ]})
    );

    let strict = render(&["webhook.failurePolicy=Fail", "webhook.timeoutSeconds=10"]);
    let configuration = get(
        &strict,
        "MutatingWebhookConfiguration",
        "wva-agent-injector",
    );
    for webhook in configuration["webhooks"].as_array().unwrap() {
        assert_eq!(webhook["failurePolicy"], "Fail");
        assert_eq!(webhook["timeoutSeconds"], 10);
    }
}

#[test]
fn webhook_disabled_leaves_no_trace() {
    let objects = Setup::NoWebhook.objects();
    assert!(of_kind(objects, "MutatingWebhookConfiguration").is_empty());
    assert!(find(objects, "Service", "wva-webhook").is_none());
    assert!(find(objects, "ConfigMap", "wva-injection").is_none());
    let env = env(objects);
    let leftovers: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("WVA_WEBHOOK") || k.starts_with("WVA_INJECTION"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let container = container(objects);
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "webhook")
    );
    assert!(container.get("volumeMounts").is_none());
    for role in of_kind(objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(objects, "Role"))
    {
        for rule in rules(role) {
            assert!(
                !rule.resources.contains("mutatingwebhookconfigurations"),
                "{rule:?}"
            );
            // Only the gRPC port's certificate is kept in a Secret.
            assert!(!rule.resource_names.contains("wva-webhook-tls"), "{rule:?}");
        }
    }
}

#[test]
fn cert_manager_issues_and_injects_the_webhook_certificate() {
    let objects = Setup::CertManager.objects();
    let certificate = get(objects, "Certificate", "wva-webhook");
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!([
            "wva-webhook.wva-system.svc",
            "wva-webhook.wva-system.svc.cluster.local"
        ])
    );
    assert_eq!(certificate["spec"]["secretName"], "wva-webhook-tls");
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "wva-selfsigned", "kind": "Issuer", "group": "cert-manager.io"})
    );
    assert_eq!(
        get(objects, "Issuer", "wva-selfsigned")["spec"],
        json!({"selfSigned": {}})
    );
    let configuration = get(
        objects,
        "MutatingWebhookConfiguration",
        "wva-agent-injector",
    );
    assert_eq!(
        configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "wva-system/wva-webhook"
    );
    // cert-manager owns the Secret and the caBundle, so the aggregator may
    // write neither.
    for role in of_kind(objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(objects, "Role"))
    {
        for rule in rules(role) {
            assert!(
                !rule.resources.contains("mutatingwebhookconfigurations"),
                "{rule:?}"
            );
            // The aggregator writes the gRPC port's Secret only.
            let writes = rule.verbs.contains("update") || rule.verbs.contains("create");
            assert!(
                !rule.resources.contains("secrets")
                    || !writes
                    || rule.resource_names.is_empty()
                        && rule.verbs == BTreeSet::from(["create".to_string()])
                    || rule.resource_names == BTreeSet::from(["wva-grpc-tls".to_string()]),
                "{rule:?}"
            );
        }
    }

    let own_issuer = render(&[
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(of_kind(&own_issuer, "Issuer").is_empty());
    assert_eq!(
        get(&own_issuer, "Certificate", "wva-webhook")["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer"})
    );
}

/// NOTES.txt (only `install` renders it; `--dry-run=client` needs no cluster).
#[test]
fn notes_explain_the_checks_and_warn_without_the_webhook() {
    let notes = |values: &[&str]| {
        let output = run_helm("install", &["--dry-run=client"], values);
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{stdout}");
        stdout
            .split("\nNOTES:\n")
            .nth(1)
            .expect("helm prints the notes")
            .to_string()
    };
    let default = notes(&[]);
    for check in [
        "kubectl get va",
        "curl -s localhost:8080/metrics",
        "wva.llmd.ai/inject-agent=enabled",
        "kubectl get mutatingwebhookconfiguration wva-agent-injector",
    ] {
        assert!(
            default.contains(check),
            "the notes lack {check:?}:\n{default}"
        );
    }
    assert!(!default.contains("WARNING"), "{default}");
    let without = notes(&["webhook.enabled=false"]);
    assert!(
        without.contains("WARNING: the agent-injection webhook is disabled"),
        "{without}"
    );
}

// ---------------------------------------------------------------------------
// Monitoring and network policy.
// ---------------------------------------------------------------------------

#[test]
fn service_monitor_and_network_policy_match_the_ports() {
    let objects = Setup::Monitoring.objects();
    let monitor = get(objects, "ServiceMonitor", FULLNAME);
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    // Only the main Service has the metrics port the monitor scrapes.
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let scraped: Vec<&str> = of_kind(objects, "Service")
        .into_iter()
        .filter(|s| {
            selector
                .iter()
                .all(|(k, v)| &s["metadata"]["labels"][k] == v)
        })
        .filter(|s| {
            s["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "metrics")
        })
        .map(name)
        .collect();
    assert_eq!(scraped, [FULLNAME]);

    let policy = get(objects, "NetworkPolicy", FULLNAME);
    assert_eq!(
        policy["spec"]["policyTypes"],
        json!(["Ingress"]),
        "egress stays open"
    );
    assert_eq!(
        policy["spec"]["podSelector"],
        deployment(objects)["spec"]["selector"]
    );
    let container_ports: BTreeSet<&str> = container(objects)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let allowed: BTreeSet<&str> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["ports"][0]["port"].as_str().unwrap())
        .collect();
    assert_eq!(allowed, container_ports);
    let ingress = &policy["spec"]["ingress"];
    assert_eq!(
        ingress[0]["from"],
        json!([{"namespaceSelector": {}, "podSelector": {}}]),
        "agents anywhere"
    );
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"],
        json!({"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}})
    );
    assert!(
        ingress[2].get("from").is_none(),
        "the API server calls the webhook"
    );

    let with_egress = render(&[
        "networkPolicy.enabled=true",
        r#"json:networkPolicy.egress=[{"ports":[{"port":53,"protocol":"UDP"}]}]"#,
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prom",
    ]);
    let policy = get(&with_egress, "NetworkPolicy", FULLNAME);
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(policy["spec"]["egress"][0]["ports"][0]["port"], 53);
    check_object(policy).unwrap();
    assert_eq!(
        get(&with_egress, "ServiceMonitor", FULLNAME)["metadata"]["labels"]["release"],
        "prom"
    );
}

// ---------------------------------------------------------------------------
// CRD and documentation.
// ---------------------------------------------------------------------------

#[test]
fn the_crd_comes_only_from_the_crds_directory() {
    for setup in Setup::ALL {
        assert!(
            of_kind(setup.objects(), "CustomResourceDefinition").is_empty(),
            "{setup:?}"
        );
    }
    for entry in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("CustomResourceDefinition"),
            "{} defines a CRD",
            path.display()
        );
    }
    // Helm installs crds/ on its own: the file is what an install applies.
    let output = run_helm("template", &["--include-crds"], &[]);
    assert!(output.status.success());
    let objects = documents(&String::from_utf8(output.stdout).unwrap());
    let crds = of_kind(&objects, "CustomResourceDefinition");
    let file = documents(&read("charts/wva/crds/variantautoscalings.llmd.ai.yaml"));
    assert_eq!(crds.len(), 1);
    assert_eq!(crds[0], &file[0]);
}

/// Every env var the chart sets is documented: the aggregator's in
/// docs/configuration.md, the webhook's in docs/helm-values.md.
#[test]
fn deployment_env_is_documented() {
    let configuration = read("docs/configuration.md");
    let helm_values = read("docs/helm-values.md");
    let documented_in = |doc: &str, key: &str| doc.contains(&format!("`{key}`"));
    for setup in [Setup::Default, Setup::Namespaced, Setup::CertManager] {
        let objects = setup.objects();
        for key in env(objects).keys() {
            let webhook = key.starts_with("WVA_WEBHOOK_") || key.starts_with("WVA_INJECTION_");
            if webhook {
                assert!(
                    documented_in(&helm_values, key),
                    "{key} is not in docs/helm-values.md"
                );
            } else {
                assert!(
                    documented_in(&configuration, key),
                    "{key} is not in docs/configuration.md"
                );
            }
        }
        let main = get(objects, "ConfigMap", MAIN_CONFIG_MAP);
        for key in config_map_data(main).keys() {
            assert!(
                documented_in(&configuration, key),
                "ConfigMap key {key} is not in docs/configuration.md"
            );
        }
    }
}

/// The paths in the first column of the tables in docs/helm-values.md's
/// "Values" section.
fn documented_values() -> BTreeSet<String> {
    let doc = read("docs/helm-values.md");
    let section = doc
        .split("\n## Values")
        .nth(1)
        .expect("docs/helm-values.md has a Values section");
    section
        .split("\n## ")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('`').nth(1).unwrap().to_string())
        .collect()
}

/// Each key of values.yaml with its dotted path and whether a comment line
/// sits right above it. values.yaml is block-style YAML, so indentation
/// alone gives the nesting.
fn values_yaml_keys() -> Vec<(String, bool)> {
    let text = read("charts/wva/values.yaml");
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut keys = Vec::new();
    let mut commented = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            commented = true;
            continue;
        }
        if let Some((key, _)) = trimmed
            .split_once(':')
            .filter(|_| !trimmed.starts_with('-'))
        {
            let indent = line.len() - trimmed.len();
            stack.retain(|(i, _)| *i < indent);
            stack.push((indent, key.to_string()));
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            keys.push((path.join("."), commented));
        }
        commented = false;
    }
    keys
}

/// Every value is described twice: by a comment in values.yaml and by a row
/// in docs/helm-values.md; no row names a value that does not exist.
#[test]
fn every_value_is_documented() {
    let documented = documented_values();
    let keys = values_yaml_keys();
    let paths: BTreeSet<&str> = keys.iter().map(|(p, _)| p.as_str()).collect();
    for path in &documented {
        assert!(
            paths.contains(path.as_str()),
            "docs/helm-values.md documents {path}, which values.yaml lacks"
        );
    }
    for (path, commented) in &keys {
        let covered = documented
            .iter()
            .any(|d| path == d || path.starts_with(&format!("{d}.")));
        assert!(covered, "{path} is not in docs/helm-values.md");
        if documented.contains(path) {
            assert!(commented, "{path} has no comment in values.yaml");
        }
    }
    // Every top-level key of the schema is a documented value (besides
    // Helm's own `global`).
    let schema: Value = serde_json::from_str(&read("charts/wva/values.schema.json")).unwrap();
    for key in schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "global")
    {
        assert!(
            documented.contains(key),
            "schema key {key} is not documented"
        );
    }
}
