//! The integration samples in `examples/` and the user docs that walk
//! through them.
//!
//! These checks need no server (`cluster_consumers.rs` runs the samples on
//! the real control plane with Prometheus, prometheus-adapter and the HPA
//! controller) and cover every sample the way its reader takes it: every
//! Kubernetes object survives a
//! round trip through its k8s-openapi type (or the VariantAutoscaling CRD
//! type) unchanged, so a misspelled or misplaced field shows as a difference;
//! the VariantAutoscalings pass the aggregator's own validation; the names
//! the HPA, adapter and KEDA samples select are those the aggregator
//! publishes; and what the docs say the webhook injects is what the
//! injection code injects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use wva_core::variants;
use wva_e2e::workspace;
use wva_k8s::crd;
use wva_webhook::injection::{self, InjectionConfig, Outcome, Scope};

/// The metric the HPA and KEDA samples read, and WVA's legacy name of it.
const DESIRED: &str = "wva_desired_replicas";
const LEGACY_DESIRED: &str = "inferno_desired_replicas";
/// Prometheus renames the series' `namespace` label when the scrape target
/// (the aggregator pod) has one of its own.
const EXPORTED_NAMESPACE: &str = "exported_namespace";
/// The release the docs install: `helm install wva charts/wva -n wva-system`.
const RELEASE_NAMESPACE: &str = "wva-system";
const FULLNAME: &str = "wva";
/// The Kubernetes default of `--horizontal-pod-autoscaler-tolerance`.
const DEFAULT_HPA_TOLERANCE: f64 = 0.1;
/// The docs of the user walk from `helm install` to a working HPA.
const WALK_DOCS: &[&str] = &[
    "docs/install.md",
    "docs/quickstart.md",
    "docs/hpa.md",
    "docs/injection.md",
    "docs/troubleshooting.md",
    "docs/workloads.md",
];

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON; empty documents are skipped.
fn documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .filter_map(|(i, document)| {
            let value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{relative} document {}: {e}", i + 1));
            (!value.is_null()).then(|| {
                serde_json::to_value(value).unwrap_or_else(|e| {
                    panic!("{relative} document {} is not JSON-shaped: {e}", i + 1)
                })
            })
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {value}"))
}

/// `value` as a `T`, which must serialize back to exactly `value`.
fn round_trip<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> T {
    wva_e2e::round_trip(value, "")
        .unwrap_or_else(|e| panic!("{what} is not a valid {}: {e}", type_name::<T>()))
}

fn type_name<T>() -> &'static str {
    std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("?")
}

/// The VariantAutoscalings and Deployments of the variants sample.
struct Variants {
    objects: Vec<Value>,
    vas: Vec<crd::VariantAutoscaling>,
    deployments: Vec<Deployment>,
}

fn variants_sample() -> Variants {
    let objects = documents("examples/variantautoscaling.yaml");
    let vas = of_kind(&objects, "VariantAutoscaling")
        .into_iter()
        .map(|o| round_trip(o, "a VariantAutoscaling"))
        .collect();
    let deployments = of_kind(&objects, "Deployment")
        .into_iter()
        .map(|o| round_trip(o, "a Deployment"))
        .collect();
    Variants {
        objects,
        vas,
        deployments,
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().expect("a namespace"),
        meta.name.as_deref().expect("a name"),
    )
}

/// The VariantAutoscaling that scales Deployment `namespace/name`.
fn va_of<'a>(
    variants: &'a Variants,
    namespace: &str,
    deployment: &str,
) -> &'a crd::VariantAutoscaling {
    let matching: Vec<_> = variants
        .vas
        .iter()
        .filter(|va| {
            name_of(&va.metadata).0 == namespace
                && va.spec.scale_target_ref.kind == "Deployment"
                && va.spec.scale_target_ref.name == deployment
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one VariantAutoscaling of the sample scales {namespace}/{deployment}"
    );
    matching[0]
}

/// The label names of the decision series, read from `DecisionGauges::labels`
/// in aggregator/src/gauges.rs (they are string literals there, not
/// exported constants): `variant_name`, `namespace`, `accelerator_type`,
/// `controller_instance`.
fn published_labels() -> BTreeSet<String> {
    let source = read("aggregator/src/gauges.rs");
    let start = source
        .find("fn labels(")
        .expect("gauges.rs builds its label sets in fn labels");
    let body = &source[start..];
    let body = &body[..body.find("\n    }\n").expect("the end of fn labels")];
    let labels: BTreeSet<String> = body
        .split("(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once("\",").map(|(label, _)| label.to_string()))
        .collect();
    for expected in ["variant_name", "namespace", "accelerator_type"] {
        assert!(
            labels.contains(expected),
            "gauges.rs publishes {expected}: {labels:?}"
        );
    }
    labels
}

/// A label of the series as an HPA or adapter sees it after the scrape.
fn is_published_label(label: &str, published: &BTreeSet<String>) -> bool {
    published.contains(label) || (label == EXPORTED_NAMESPACE && published.contains("namespace"))
}

#[test]
fn every_example_is_yaml_with_a_header_comment() {
    let dir = workspace().join("examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "hpa.yaml",
            "keda-scaledobject-prometheus.yaml",
            "namespace-injection.yaml",
            "prometheus-adapter-values.yaml",
            "variantautoscaling.yaml",
            "worker-queue.yaml",
        ],
        "the samples the docs refer to, and nothing else"
    );
    for name in &names {
        let relative = format!("examples/{name}");
        let text = read(&relative);
        assert!(
            text.starts_with("# "),
            "{relative} starts with a comment saying what it is"
        );
        let objects = documents(&relative);
        assert!(!objects.is_empty(), "{relative} has a document");
        for object in &objects {
            assert!(object.is_object(), "{relative}: every document is a map");
        }
    }
}

#[test]
fn the_variant_autoscalings_are_valid_and_scale_the_sample_deployments() {
    let variants = variants_sample();
    let kinds: BTreeSet<&str> = variants
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["Deployment", "VariantAutoscaling"]));
    assert_eq!(variants.vas.len(), 2, "two variants of one model");
    assert_eq!(variants.deployments.len(), 2);

    let checked: Vec<variants::Variant> = of_kind(&variants.objects, "VariantAutoscaling")
        .into_iter()
        .map(|o| {
            variants::from_json(o.clone()).unwrap_or_else(|e| {
                panic!("the aggregator rejects a sample VariantAutoscaling: {e}")
            })
        })
        .collect();
    let models: BTreeSet<&str> = checked.iter().map(|va| va.model_id.as_str()).collect();
    assert_eq!(models.len(), 1, "both variants serve the same model");
    let accelerators: BTreeSet<&str> = checked.iter().map(|va| va.accelerator.as_str()).collect();
    assert_eq!(accelerators, BTreeSet::from(["H100", "L4"]));
    let costs: BTreeMap<&str, f64> = checked
        .iter()
        .map(|va| (va.accelerator.as_str(), va.cost))
        .collect();
    assert!(
        costs["L4"] < costs["H100"],
        "the L4 variant is the cheap one: {costs:?}"
    );

    for deployment in &variants.deployments {
        let (namespace, name) = name_of(&deployment.metadata);
        let va = va_of(&variants, namespace, name);
        assert_eq!(
            va.metadata.name.as_deref(),
            Some(name),
            "the VariantAutoscaling is named after its Deployment, so variant_name selects it"
        );
        assert_eq!(
            va.spec.scale_target_ref.api_version.as_deref(),
            Some("apps/v1")
        );
        let template = &deployment.spec.as_ref().expect("a spec").template;
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("pod template annotations");
        assert_eq!(
            annotations
                .get(injection::INJECT_ANNOTATION)
                .map(String::as_str),
            Some("true"),
            "{name}'s pods opt into agent injection"
        );
        let vllm = &template.spec.as_ref().expect("a pod spec").containers[0];
        let args = vllm.args.as_deref().unwrap_or_default();
        let model = args
            .iter()
            .position(|a| a == "--model")
            .and_then(|i| args.get(i + 1))
            .expect("vLLM is given --model");
        assert_eq!(
            model, &va.spec.model_id,
            "modelID is the model name vLLM serves"
        );
    }
}

#[test]
fn the_hpas_read_one_variants_decision_as_its_replica_count() {
    let variants = variants_sample();
    let published = published_labels();
    let objects = documents("examples/hpa.yaml");
    assert!(!objects.is_empty());
    let mut targets = BTreeSet::new();
    for object in &objects {
        assert_eq!(object["kind"], "HorizontalPodAutoscaler");
        assert_eq!(object["apiVersion"], "autoscaling/v2");
        let hpa: HorizontalPodAutoscaler = round_trip(object, "an HPA");
        let (namespace, name) = name_of(&hpa.metadata);
        let spec = hpa.spec.expect("a spec");
        let target = &spec.scale_target_ref;
        assert_eq!(
            (target.kind.as_str(), target.api_version.as_deref()),
            ("Deployment", Some("apps/v1"))
        );
        let va = va_of(&variants, namespace, &target.name);
        targets.insert(target.name.clone());

        let metrics = spec.metrics.expect("metrics");
        assert_eq!(metrics.len(), 1, "{name}: the decision is the only metric");
        assert_eq!(metrics[0].type_, "External");
        let external = metrics[0].external.as_ref().expect("an External metric");
        assert_eq!(external.metric.name, DESIRED);
        assert_eq!(external.target.type_, "AverageValue");
        assert_eq!(
            external.target.average_value,
            Some(Quantity("1".into())),
            "AverageValue 1 makes the replica count equal the decision"
        );
        let selector = external
            .metric
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("a matchLabels selector");
        for label in selector.keys() {
            assert!(
                is_published_label(label, &published),
                "{name} selects on {label}, which the aggregator does not publish ({published:?})"
            );
        }
        assert_eq!(
            selector.get("variant_name"),
            va.metadata.name.as_ref(),
            "{name} selects the decision of the VariantAutoscaling of its target"
        );

        assert_eq!(spec.min_replicas, Some(1));
        assert!(spec.max_replicas >= 1);
        let behavior = spec.behavior.expect("a behavior");
        let up = behavior.scale_up.expect("scale-up behaviour");
        let down = behavior.scale_down.expect("scale-down behaviour");
        assert!(!up.policies.unwrap_or_default().is_empty());
        assert!(!down.policies.clone().unwrap_or_default().is_empty());
        assert!(down.stabilization_window_seconds.is_some());
        // Every one-replica step must leave the tolerance dead band: from N
        // replicas, N±1 changes the ratio by 1/N.
        let tolerance = |rules: &Option<Quantity>| {
            rules.as_ref().map_or(DEFAULT_HPA_TOLERANCE, |q| {
                q.0.parse::<f64>().expect("a decimal tolerance")
            })
        };
        let smallest_step = 1.0 / f64::from(spec.max_replicas);
        for (direction, t) in [
            ("up", tolerance(&up.tolerance)),
            ("down", tolerance(&down.tolerance)),
        ] {
            assert!(
                smallest_step > t,
                "{name}: at maxReplicas {} a one-replica step is {smallest_step:.3}, inside the scale-{direction} tolerance {t}",
                spec.max_replicas
            );
        }
    }
    let deployments: BTreeSet<String> = variants
        .deployments
        .iter()
        .map(|d| name_of(&d.metadata).1.to_string())
        .collect();
    assert_eq!(targets, deployments, "one HPA per variant");
}

#[test]
fn the_adapter_serves_both_names_per_namespace_with_the_hpa_selector() {
    let published = published_labels();
    let objects = documents("examples/prometheus-adapter-values.yaml");
    assert_eq!(objects.len(), 1);
    let values = &objects[0];
    assert!(
        str_at(values, "/prometheus/url").starts_with("https://"),
        "the sample shows the TLS set-up"
    );
    assert!(values["prometheus"]["port"].is_u64());
    assert!(values["prometheus"]["path"].is_string());

    let rules = values["rules"]["external"]
        .as_array()
        .expect("rules.external");
    for metric in [DESIRED, LEGACY_DESIRED] {
        let rule = rules
            .iter()
            .find(|r| str_at(r, "/name/as") == metric)
            .unwrap_or_else(|| panic!("an external rule exposes {metric}"));
        let series = str_at(rule, "/seriesQuery");
        assert!(series.starts_with(&format!("{metric}{{")), "{series}");
        assert!(series.contains(&format!("{EXPORTED_NAMESPACE}!=\"\"")));
        assert!(series.contains("variant_name!=\"\""));
        let pattern = str_at(rule, "/name/matches");
        assert!(pattern.contains(metric), "{pattern} matches {metric}");
        assert_eq!(
            rule["resources"]["overrides"][EXPORTED_NAMESPACE]["resource"], "namespace",
            "{metric}: the VariantAutoscaling's namespace is the HPA's"
        );
        let query = str_at(rule, "/metricsQuery");
        assert!(
            query.contains("<<.Series>>{<<.LabelMatchers>>}"),
            "{query} keeps the HPA's label selector"
        );
        if let Some((_, rest)) = query.split_once("by (") {
            let grouping: BTreeSet<&str> = rest
                .split(')')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .collect();
            assert!(
                grouping.contains("variant_name") && grouping.contains(EXPORTED_NAMESPACE),
                "{query} keeps one value per variant and namespace"
            );
            for label in grouping {
                assert!(is_published_label(label, &published), "{label}");
            }
        }
    }

    // The CA: an argument naming a file inside a mounted volume.
    let volumes: Vec<Volume> =
        serde_json::from_value(values["extraVolumes"].clone()).expect("extraVolumes are Volumes");
    let mounts: Vec<VolumeMount> = serde_json::from_value(values["extraVolumeMounts"].clone())
        .expect("extraVolumeMounts are VolumeMounts");
    round_trip::<Vec<Volume>>(&values["extraVolumes"], "extraVolumes");
    round_trip::<Vec<VolumeMount>>(&values["extraVolumeMounts"], "extraVolumeMounts");
    let ca_file = values["extraArguments"]
        .as_array()
        .expect("extraArguments")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--prometheus-ca-file="))
        .expect("--prometheus-ca-file=FILE");
    let mount = mounts
        .iter()
        .find(|m| ca_file.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("{ca_file} is inside a mounted volume"));
    assert!(
        volumes.iter().any(|v| v.name == mount.name),
        "the mount's volume {} exists",
        mount.name
    );
}

#[test]
fn the_keda_scaled_objects_query_the_decision_of_their_target() {
    let variants = variants_sample();
    let objects = documents("examples/keda-scaledobject-prometheus.yaml");
    assert!(!objects.is_empty());
    let mut targets = BTreeSet::new();
    for object in &objects {
        assert_eq!(object["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(object["kind"], "ScaledObject");
        let namespace = str_at(object, "/metadata/namespace");
        let spec = &object["spec"];
        let target = str_at(spec, "/scaleTargetRef/name");
        assert_eq!(str_at(spec, "/scaleTargetRef/kind"), "Deployment");
        let va = va_of(&variants, namespace, target);
        targets.insert(target.to_string());

        let min = spec["minReplicaCount"].as_u64().expect("minReplicaCount");
        let max = spec["maxReplicaCount"].as_u64().expect("maxReplicaCount");
        assert!(min <= max && max >= 1);
        round_trip::<HorizontalPodAutoscalerBehavior>(
            &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "advanced.horizontalPodAutoscalerConfig.behavior",
        );

        let trigger = &spec["triggers"][0];
        assert_eq!(trigger["type"], "prometheus");
        assert_eq!(trigger["metricType"], "AverageValue");
        let metadata = trigger["metadata"].as_object().expect("trigger metadata");
        for (key, value) in metadata {
            assert!(
                value.is_string(),
                "KEDA's trigger metadata is a string map: {key} is {value}"
            );
        }
        assert_eq!(metadata["threshold"], "1");
        assert_eq!(
            metadata["ignoreNullValues"], "false",
            "a missing decision must not read as zero"
        );
        assert!(str_at(&trigger["metadata"], "/serverAddress").starts_with("http"));
        let query = str_at(&trigger["metadata"], "/query");
        assert!(query.contains(&format!("{DESIRED}{{")), "{query}");
        let variant = va.metadata.name.as_deref().expect("a name");
        for matcher in [
            format!("variant_name=\"{variant}\""),
            format!("{EXPORTED_NAMESPACE}=\"{namespace}\""),
        ] {
            assert!(query.contains(&matcher), "{query} has {matcher}");
        }
    }
    let deployments: BTreeSet<String> = variants
        .deployments
        .iter()
        .map(|d| name_of(&d.metadata).1.to_string())
        .collect();
    assert_eq!(targets, deployments, "one ScaledObject per variant");
}

#[test]
fn the_sample_namespace_is_the_one_the_namespace_webhook_selects() {
    let objects = documents("examples/namespace-injection.yaml");
    assert_eq!(objects.len(), 1);
    let namespace: Namespace = round_trip(&objects[0], "the Namespace");
    let labels = namespace.metadata.labels.expect("labels");
    assert_eq!(
        labels.get(injection::INJECT_ANNOTATION).map(String::as_str),
        Some("enabled")
    );
    let webhook = read("charts/wva/templates/webhook.yaml");
    assert!(
        webhook.contains(&format!(
            "matchLabels:\n        {}: enabled",
            injection::INJECT_ANNOTATION
        )),
        "the chart's namespace webhook selects that label"
    );
    let variants = variants_sample();
    for object in &variants.objects {
        assert_eq!(
            object["metadata"]["namespace"],
            json!(namespace.metadata.name),
            "the variants live in the labelled namespace"
        );
    }
}

/// The injection configuration the chart renders with its default values
/// for release `wva` in `wva-system` (see `wva.injectionAgent` in
/// charts/wva/templates/_helpers.tpl).
fn chart_default_injection() -> InjectionConfig {
    let values: Value = serde_yaml::from_str(&read("charts/wva/values.yaml")).expect("values.yaml");
    let chart: Value = serde_yaml::from_str(&read("charts/wva/Chart.yaml")).expect("Chart.yaml");
    let mut agent = values["injection"]["agent"].clone();
    if agent["image"] == "" {
        agent["image"] = json!(format!(
            "ghcr.io/wva-project/wva-agent:{}",
            str_at(&chart, "/appVersion")
        ));
    }
    let tls = values["grpc"]["tls"]["enabled"] == json!(true);
    if agent["aggregatorAddress"] == "" {
        let scheme = if tls { "https" } else { "http" };
        agent["aggregatorAddress"] = json!(format!(
            "{scheme}://{FULLNAME}-headless.{RELEASE_NAMESPACE}.svc:9443"
        ));
    }
    let yaml = serde_yaml::to_string(&agent).expect("YAML");
    let config =
        InjectionConfig::parse(&yaml).unwrap_or_else(|e| panic!("the chart's injection.yaml: {e}"));
    // The aggregator hands the webhook its gRPC CA at run time; the
    // documentation shows where that text goes.
    InjectionConfig {
        aggregator_ca: tls.then(|| AGGREGATOR_CA.to_string()),
        ..config
    }
}

/// What docs/injection.md's snippet shows for the aggregator's CA.
const AGGREGATOR_CA: &str = "-----BEGIN CERTIFICATE-----\n(the aggregator's CA, from its Secret wva-grpc-tls)\n-----END CERTIFICATE-----\n";

/// A pod of `deployment` as its ReplicaSet creates it.
fn pod_of(deployment: &Deployment) -> Value {
    let (namespace, name) = name_of(&deployment.metadata);
    let template = serde_json::to_value(&deployment.spec.as_ref().unwrap().template).unwrap();
    let hash = "5d8f7c9b6d";
    let mut metadata = template["metadata"].clone();
    metadata["labels"]["pod-template-hash"] = json!(hash);
    metadata["generateName"] = json!(format!("{name}-{hash}-"));
    metadata["namespace"] = json!(namespace);
    metadata["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
        "uid": "0c5e1d8e-3c1f-4f6e-9a51-2f1b7d0e6a11", "controller": true, "blockOwnerDeletion": true
    }]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// `pod` as the webhook admits it in `scope`.
fn injected(pod: &Value, scope: Scope, config: &InjectionConfig) -> Value {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("a Pod");
    match injection::mutate(&typed, scope, config) {
        Ok(Outcome::Inject(ops)) => {
            let patch: json_patch::Patch =
                serde_json::from_value(Value::Array(ops)).expect("a JSON patch");
            let mut patched = pod.clone();
            json_patch::patch(&mut patched, &patch).expect("the patch applies");
            patched
        }
        other => panic!("the sample pod is not injected: {other:?}"),
    }
}

fn agent_of(pod: &Value) -> &Value {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == injection::CONTAINER_NAME)
        .expect("a wva-agent init container")
}

#[test]
fn the_sample_pods_get_an_agent_that_scrapes_their_vllm() {
    let variants = variants_sample();
    let config = chart_default_injection();
    for deployment in &variants.deployments {
        let (_, name) = name_of(&deployment.metadata);
        let pod = pod_of(deployment);
        // Opted in by annotation, whether or not the namespace is labelled.
        for scope in [Scope::Pod, Scope::Namespace] {
            let patched = injected(&pod, scope, &config);
            round_trip::<Pod>(&patched, "the injected pod");
            let agent = agent_of(&patched);
            assert_eq!(wva_e2e::container_env(agent, "WVA_VARIANT"), Some(name));
            let port = patched["spec"]["containers"][0]["ports"][0]["containerPort"]
                .as_u64()
                .expect("vLLM's port");
            assert_eq!(
                wva_e2e::container_env(agent, "WVA_TARGET"),
                Some(format!("http://127.0.0.1:{port}/metrics").as_str()),
                "the agent scrapes the port vLLM listens on"
            );
        }
    }
}

/// The fenced YAML blocks of a Markdown file.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```yaml") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().expect("open block")),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_manual_injection_snippet_is_what_the_webhook_injects() {
    let doc = read("docs/injection.md");
    let snippets: Vec<Value> = yaml_blocks(&doc)
        .into_iter()
        .filter(|b| b.starts_with("initContainers:"))
        .map(|b| serde_yaml::from_str(&b).expect("the snippet is YAML"))
        .collect();
    assert_eq!(snippets.len(), 1, "docs/injection.md has one full snippet");
    let snippet = &snippets[0];
    let container = &snippet["initContainers"][0];
    round_trip::<Container>(container, "the snippet's container");

    let variants = variants_sample();
    let deployment = variants
        .deployments
        .iter()
        .find(|d| Some(name_of(&d.metadata).1) == wva_e2e::container_env(container, "WVA_VARIANT"))
        .expect("the snippet's WVA_VARIANT is a sample Deployment");
    let patched = injected(&pod_of(deployment), Scope::Pod, &chart_default_injection());
    let agent = agent_of(&patched);
    if let Some(difference) = wva_e2e::first_difference(agent, container, "container") {
        panic!("the snippet differs from the injected container: {difference}");
    }
    let added: Vec<&Value> = patched["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|v| {
            agent["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == v["name"])
        })
        .collect();
    let documented: Vec<&Value> = snippet["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .collect();
    assert_eq!(
        added, documented,
        "the snippet's volumes are the ones the webhook adds"
    );
}

/// `wva.llmd.ai/<name>` keys named in `text`.
fn wva_keys(text: &str) -> BTreeSet<String> {
    text.match_indices("wva.llmd.ai/")
        .map(|(at, prefix)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(rest.len());
            format!("{prefix}{}", &rest[..end])
        })
        .collect()
}

#[test]
fn the_injection_doc_names_exactly_the_annotations_the_webhook_reads() {
    let source = read("aggregator/webhook/src/injection.rs");
    let constants: BTreeSet<String> = source
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"wva.llmd.ai/"))
        .map(|l| {
            let value = l.split('"').nth(1).expect("a string constant");
            value.to_string()
        })
        .collect();
    assert!(
        constants.contains(injection::INJECT_ANNOTATION),
        "the constants are read from the source: {constants:?}"
    );
    let documented = wva_keys(&read("docs/injection.md"));
    let unknown: Vec<_> = documented.difference(&constants).collect();
    assert!(
        unknown.is_empty(),
        "docs/injection.md names keys injection.rs does not define: {unknown:?}"
    );
    let undocumented: Vec<_> = constants.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "docs/injection.md does not describe: {undocumented:?}"
    );
}

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    markdown
        .lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            !in_code && line.starts_with('#')
        })
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

#[test]
fn the_docs_link_to_files_and_sections_that_exist() {
    for doc in WALK_DOCS {
        let text = read(doc);
        let dir = Path::new(doc).parent().expect("docs/");
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let link = &rest[..rest.find(')').expect("a closed link")];
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, section) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                doc.to_string()
            } else {
                dir.join(file).to_string_lossy().into_owned()
            };
            let path = workspace().join(&target);
            assert!(path.exists(), "{doc} links to {link}: no such file");
            if !section.is_empty() {
                assert!(
                    anchors(&read(&target)).contains(section),
                    "{doc} links to {link}: no such section"
                );
            }
        }
        for (at, prefix) in text.match_indices("examples/") {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
                .unwrap_or(rest.len());
            let name = rest[..end].trim_end_matches('.');
            if name.ends_with(".yaml") {
                let path = workspace().join("examples").join(name);
                assert!(path.is_file(), "{doc} names examples/{name}: no such file");
            }
        }
    }
}

/// The webhook marks an endpoint picker's agent with one annotation and the
/// aggregator reads the role from the same one.
#[test]
fn the_agent_role_annotation_is_one_name() {
    assert_eq!(
        wva_k8s::identity::ROLE_ANNOTATION,
        wva_webhook::injection::ROLE_ANNOTATION
    );
}

/// The worker sample of docs/workloads.md: its pods get a generic agent that
/// forwards, from the exporter beside them, the signal its ScaledObject
/// declares as the scaling target; KEDA's trigger follows that workload.
#[test]
fn the_worker_sample_forwards_the_signal_its_scaled_object_scales_on() {
    use wva_agent::signal_spec::SignalSpec;
    let objects = documents("examples/worker-queue.yaml");
    let deployments = of_kind(&objects, "Deployment");
    let deployment: Deployment = round_trip(deployments[0], "the worker Deployment");
    let (namespace, name) = name_of(&deployment.metadata);
    round_trip::<Namespace>(of_kind(&objects, "Namespace")[0], "the Namespace");

    // The agent the webhook injects.
    let pod = injected(&pod_of(&deployment), Scope::Pod, &chart_default_injection());
    let agent = agent_of(&pod);
    assert_eq!(wva_e2e::container_env(agent, "WVA_ROLE"), Some("generic"));
    let exporter = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| str_at(c, "/image").contains("redis_exporter"))
        .expect("the exporter sidecar");
    let port = exporter["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(
        wva_e2e::container_env(agent, "WVA_TARGET"),
        Some(format!("http://127.0.0.1:{port}/metrics").as_str())
    );
    let signals: Vec<SignalSpec> = wva_e2e::container_env(agent, "WVA_SIGNALS")
        .expect("WVA_SIGNALS")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(signals.len(), 1);
    let signal = &signals[0];
    assert_eq!(signal.metric, wva_e2e::redis::KEY_SIZE);
    let key = signal
        .matchers
        .iter()
        .find(|m| m.label == "key")
        .expect("a key matcher");
    let checked = exporter["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--check-single-keys="))
        .expect("--check-single-keys");
    assert_eq!(
        key.value, checked,
        "the exporter serves the key the signal reads"
    );

    // The ScaledObject declares the target on that signal and follows the workload.
    let scaled = of_kind(&objects, "ScaledObject")[0];
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(scaled["metadata"]["annotations"].clone()).unwrap();
    let min = scaled["spec"]["minReplicaCount"].as_i64();
    let max = scaled["spec"]["maxReplicaCount"].as_i64();
    let target = wva_core::workload::from_annotations(&annotations, min, max)
        .unwrap_or_else(|e| panic!("{} {}", e.field, e.problem))
        .expect("a scaling target");
    assert_eq!(target.signal, signal.name);
    assert_eq!(str_at(scaled, "/metadata/namespace"), namespace);
    assert_eq!(str_at(scaled, "/spec/scaleTargetRef/name"), name);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(str_at(trigger, "/type"), "external-push");
    assert_eq!(str_at(trigger, "/metadata/workload"), name);
    assert_eq!(
        str_at(trigger, "/metadata/scalerAddress"),
        format!("{FULLNAME}.{RELEASE_NAMESPACE}.svc:9443")
    );

    // The adapter serves the workloads' gauge by workload.
    let values = &documents("examples/prometheus-adapter-values.yaml")[0];
    let rule = values["rules"]["external"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| str_at(r, "/name/as") == "wva_workload_desired_replicas")
        .expect("a rule for the workloads' gauge");
    assert!(str_at(rule, "/metricsQuery").contains("by (exported_namespace, workload)"));
}

/// The HorizontalPodAutoscalers docs/workloads.md shows are scaling targets
/// as the aggregator reads them.
#[test]
fn the_workload_docs_hpas_are_scaling_targets() {
    let hpas: Vec<String> = yaml_blocks(&read("docs/workloads.md"))
        .into_iter()
        .filter(|b| b.contains("kind: HorizontalPodAutoscaler"))
        .collect();
    assert_eq!(hpas.len(), 2, "the cluster's and the standalone one");
    for block in hpas {
        let parsed = variants::parse_variants(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        let target = parsed[0].signal.as_ref().expect("a scaling target");
        assert_eq!(target.signal, "queue_depth");
        round_trip::<HorizontalPodAutoscaler>(
            &serde_yaml::from_str::<Value>(&block).unwrap(),
            "the HPA",
        );
    }
}
