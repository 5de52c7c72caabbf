//! What the sidecar injector adds to a pod, as a pure function of the pod,
//! how the pod reached the webhook and the injection configuration.
//!
//! A pod gets the agent when its namespace is labelled for injection
//! ([`Scope::Namespace`]) or when it carries `wva.llmd.ai/inject-agent: "true"`
//! ([`Scope::Pod`]); `"false"` opts a pod out either way. A pod that already
//! has an agent is left alone, so re-invocation never injects twice.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::{Value, json};

/// Opt in (`"true"`) or out (`"false"`).
pub const INJECT_ANNOTATION: &str = "wva.llmd.ai/inject-agent";
/// Set on every injected pod.
pub const INJECTED_ANNOTATION: &str = "wva.llmd.ai/agent-injected";
/// `vllm` (default), `epp`, or `generic` (any other workload, which
/// forwards only its signals).
pub const ROLE_ANNOTATION: &str = "wva.llmd.ai/agent-role";
/// Signals to forward, one `NAME=AGG(METRIC{MATCHERS})` per line, as the
/// agent's `--signal` reads them; required in the generic role.
pub const SIGNALS_ANNOTATION: &str = "wva.llmd.ai/agent-signals";
/// The port of a second local target (an exporter sidecar) the signals are
/// read from, at `/metrics`, for the vllm and epp roles.
pub const SIGNALS_PORT_ANNOTATION: &str = "wva.llmd.ai/agent-signals-port";
/// The port the agent scrapes on localhost.
pub const PORT_ANNOTATION: &str = "wva.llmd.ai/agent-target-port";
pub const PATH_ANNOTATION: &str = "wva.llmd.ai/agent-target-path";
pub const SCHEME_ANNOTATION: &str = "wva.llmd.ai/agent-target-scheme";
/// The variant the pod serves, when its owner does not say.
pub const VARIANT_ANNOTATION: &str = "wva.llmd.ai/variant";
/// Comma-separated models the pod is expected to serve.
pub const MODELS_ANNOTATION: &str = "wva.llmd.ai/models";

pub const CONTAINER_NAME: &str = "wva-agent";
const TOKEN_VOLUME: &str = "wva-agent-token";
const TOKEN_DIR: &str = "/var/run/secrets/wva";
/// The endpoint picker authenticates metric readers with a token for the
/// API server's own audience.
const TARGET_TOKEN_VOLUME: &str = "wva-agent-target-token";
const TARGET_TOKEN_DIR: &str = "/var/run/secrets/wva-target";
const TOKEN_SECONDS: i64 = 3600;
/// The non-root user of the agent image.
const AGENT_UID: i64 = 65532;

/// The injection configuration file (a ConfigMap key in the chart).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectionConfig {
    pub image: String,
    #[serde(default = "if_not_present")]
    pub image_pull_policy: String,
    /// The aggregator's gRPC URL; with `fan_out`, a headless Service.
    pub aggregator_address: String,
    #[serde(default = "yes")]
    pub fan_out: bool,
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29),
    /// which starts before and stops after the serving containers; otherwise
    /// a regular container.
    #[serde(default = "yes")]
    pub native_sidecar: bool,
    #[serde(default = "aggregator_audience")]
    pub token_audience: String,
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    #[serde(default = "vllm_port")]
    pub vllm_port: u16,
    #[serde(default = "epp_port")]
    pub epp_port: u16,
    /// The agent's own `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "agent_port")]
    pub agent_port: u16,
    /// The CA of the aggregator's self-made gRPC certificate (PEM), given
    /// to agents of an https `aggregatorAddress`; set by the aggregator, not
    /// the file.
    #[serde(skip)]
    pub aggregator_ca: Option<String>,
}

fn if_not_present() -> String {
    "IfNotPresent".into()
}
fn yes() -> bool {
    true
}
fn aggregator_audience() -> String {
    "wva-aggregator".into()
}
fn vllm_port() -> u16 {
    8000
}
fn epp_port() -> u16 {
    9090
}
fn agent_port() -> u16 {
    9400
}

impl InjectionConfig {
    /// Reads and checks the YAML configuration.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let config: InjectionConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        if config.image.trim().is_empty() {
            return Err("image is empty".into());
        }
        let url: http::Uri = config
            .aggregator_address
            .parse()
            .map_err(|e| format!("aggregatorAddress {:?}: {e}", config.aggregator_address))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(format!(
                "aggregatorAddress {:?} must be an http:// or https:// URL",
                config.aggregator_address
            ));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&config.image_pull_policy.as_str()) {
            return Err(format!(
                "imagePullPolicy {:?} is not Always, IfNotPresent or Never",
                config.image_pull_policy
            ));
        }
        Ok(config)
    }
}

/// How the pod reached the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Its namespace is labelled for injection: every pod unless opted out.
    Namespace,
    /// Any other namespace: only pods that opt in.
    Pod,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// JSON Patch operations (RFC 6902) that add the agent.
    Inject(Vec<Value>),
    /// Nothing to do, and why.
    Skip(&'static str),
}

/// What to do with `pod`. An error names the annotation at fault; the pod is
/// then admitted unchanged.
pub fn mutate(pod: &Pod, scope: Scope, config: &InjectionConfig) -> Result<Outcome, String> {
    let meta = &pod.metadata;
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    match (annotation(INJECT_ANNOTATION).map(|v| v.trim()), scope) {
        (Some("false"), _) => return Ok(Outcome::Skip("opted out")),
        (Some("true"), _) | (None, Scope::Namespace) => {}
        (None, Scope::Pod) => return Ok(Outcome::Skip("not opted in")),
        (Some(other), _) => {
            return Err(format!(
                "annotation {INJECT_ANNOTATION}={other:?} is not \"true\" or \"false\""
            ));
        }
    }
    let Some(spec) = &pod.spec else {
        return Err("the pod has no spec".into());
    };
    let has_agent = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER_NAME);
    if has_agent || annotation(INJECTED_ANNOTATION).is_some() {
        return Ok(Outcome::Skip("already injected"));
    }
    let role = match annotation(ROLE_ANNOTATION).map(|r| r.trim()) {
        None | Some("vllm") => "vllm",
        Some("epp") => "epp",
        Some("generic") => "generic",
        Some(other) => {
            return Err(format!(
                "annotation {ROLE_ANNOTATION}={other:?} is not vllm, epp or generic"
            ));
        }
    };
    let epp = role == "epp";
    let signals = annotation(SIGNALS_ANNOTATION)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    let port = match annotation(PORT_ANNOTATION) {
        // A generic workload's exporter has no port to guess.
        None if role == "generic" => {
            return Err(format!(
                "the generic role needs annotation {PORT_ANNOTATION}: the port of the exporter the agent reads"
            ));
        }
        None if epp => config.epp_port,
        None => config.vllm_port,
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("annotation {PORT_ANNOTATION}={p:?} is not a port"))?,
    };
    let scheme = match annotation(SCHEME_ANNOTATION).map(|s| s.trim()) {
        None => "http",
        Some(s @ ("http" | "https")) => s,
        Some(other) => {
            return Err(format!(
                "annotation {SCHEME_ANNOTATION}={other:?} is not http or https"
            ));
        }
    };
    let path = annotation(PATH_ANNOTATION).map_or("/metrics", |p| p.trim());
    if !path.starts_with('/') {
        return Err(format!(
            "annotation {PATH_ANNOTATION}={path:?} must start with /"
        ));
    }
    let agent_port = i32::from(config.agent_port);
    if let Some(user) = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == agent_port)
        })
    {
        return Err(format!(
            "container {} already uses port {agent_port}, the agent's (agentPort in the injection configuration)",
            user.name
        ));
    }
    if role == "generic" && signals.is_none() {
        return Err(format!(
            "the generic role needs annotation {SIGNALS_ANNOTATION}: the signals to forward"
        ));
    }
    let signals_target = match annotation(SIGNALS_PORT_ANNOTATION).map(|p| p.trim()) {
        None => None,
        Some(_) if role == "generic" => {
            return Err(format!(
                "annotation {SIGNALS_PORT_ANNOTATION} is for the vllm and epp roles: a generic agent reads its signals from {PORT_ANNOTATION}"
            ));
        }
        Some(_) if signals.is_none() => {
            return Err(format!(
                "annotation {SIGNALS_PORT_ANNOTATION} needs {SIGNALS_ANNOTATION}: the signals to read there"
            ));
        }
        Some(p) => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("annotation {SIGNALS_PORT_ANNOTATION}={p:?} is not a port"))?;
            Some(format!("http://127.0.0.1:{port}/metrics"))
        }
    };
    let target = format!("{scheme}://127.0.0.1:{port}{path}");
    let agent = Agent {
        target,
        role,
        signals: signals.map(str::to_string),
        signals_target,
        variant: variant_of(pod),
        models: annotation(MODELS_ANNOTATION).cloned(),
    };
    Ok(Outcome::Inject(patch(pod, config, &agent)))
}

struct Agent {
    target: String,
    /// `vllm`, `epp` or `generic`, as the agent's `--role` spells it.
    role: &'static str,
    signals: Option<String>,
    /// The second local target the signals come from, if not the main one.
    signals_target: Option<String>,
    variant: String,
    models: Option<String>,
}

/// The Deployment a pod belongs to: the annotation, else its ReplicaSet's
/// name less the pod-template hash, else its name. The aggregator takes the
/// variant from the cluster anyway; this only labels the agent's logs.
fn variant_of(pod: &Pod) -> String {
    let meta = &pod.metadata;
    if let Some(v) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(VARIANT_ANNOTATION))
    {
        return v.clone();
    }
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true));
    if let (Some(owner), Some(hash)) = (owner, hash)
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return deployment.to_string();
    }
    meta.name
        .clone()
        .or_else(|| {
            meta.generate_name
                .as_ref()
                .map(|g| g.trim_end_matches('-').to_string())
        })
        .unwrap_or_default()
}

/// The JSON Patch adding the agent, its token volumes and the marker annotation.
fn patch(pod: &Pod, config: &InjectionConfig, agent: &Agent) -> Vec<Value> {
    let spec = pod.spec.as_ref().expect("checked by the caller");
    let mut ops = Vec::new();
    let container = serde_json::to_value(container(config, agent)).expect("a Container serializes");
    let (list, present) = if config.native_sidecar {
        ("/spec/initContainers", spec.init_containers.is_some())
    } else {
        ("/spec/containers", true)
    };
    ops.push(append(list, present, container));
    let mut volumes = vec![token_volume(TOKEN_VOLUME, Some(&config.token_audience))];
    if agent.role == "epp" {
        volumes.push(token_volume(TARGET_TOKEN_VOLUME, None));
    }
    let mut have_volumes = spec.volumes.is_some();
    for volume in volumes {
        let volume = serde_json::to_value(volume).expect("a Volume serializes");
        ops.push(append("/spec/volumes", have_volumes, volume));
        have_volumes = true;
    }
    ops.push(if pod.metadata.annotations.is_some() {
        json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)), "value": "true"})
    } else {
        json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED_ANNOTATION: "true"}})
    });
    ops
}

/// Adds `value` at the end of the list at `path`, creating the list if absent.
fn append(path: &str, present: bool, value: Value) -> Value {
    if present {
        json!({"op": "add", "path": format!("{path}/-"), "value": value})
    } else {
        json!({"op": "add", "path": path, "value": [value]})
    }
}

/// A JSON Pointer segment: `~` and `/` escaped (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn container(config: &InjectionConfig, agent: &Agent) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let from = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(field(path)),
        ..EnvVar::default()
    };
    let mut env = vec![
        from("POD_NAME", "metadata.name"),
        from("POD_NAMESPACE", "metadata.namespace"),
        from("POD_UID", "metadata.uid"),
        value("WVA_TARGET", agent.target.clone()),
        value("WVA_AGGREGATOR", config.aggregator_address.clone()),
        value("WVA_AGGREGATOR_FAN_OUT", config.fan_out.to_string()),
        value("WVA_VARIANT", agent.variant.clone()),
        value("WVA_ROLE", agent.role.into()),
        value("WVA_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        value("WVA_AGENT_LISTEN", format!("0.0.0.0:{}", config.agent_port)),
    ];
    let mut mounts = vec![mount(TOKEN_VOLUME, TOKEN_DIR)];
    if let Some(signals) = &agent.signals {
        env.push(value("WVA_SIGNALS", signals.clone()));
    }
    if let Some(target) = &agent.signals_target {
        env.push(value("WVA_SIGNALS_TARGET", target.clone()));
    }
    if agent.role == "epp" {
        env.push(value(
            "WVA_TARGET_TOKEN_FILE",
            format!("{TARGET_TOKEN_DIR}/token"),
        ));
        mounts.push(mount(TARGET_TOKEN_VOLUME, TARGET_TOKEN_DIR));
    }
    if let Some(models) = &agent.models {
        env.push(value("WVA_MODELS", models.clone()));
    }
    if let Some(ca) = &config.aggregator_ca
        && config.aggregator_address.starts_with("https://")
    {
        env.push(value("WVA_TLS_CA_PEM", ca.clone()));
    }
    let port = i32::from(config.agent_port);
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("wva-agent".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // No readiness probe: the agent must never make the pod unready.
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(port),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: config.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        restart_policy: config.native_sidecar.then(|| "Always".into()),
        ..Container::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// A projected, expiring service-account token; `audience: None` is the API
/// server's own.
fn token_volume(name: &str, audience: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: audience.map(str::to_string),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "image: ghcr.io/wva-project/wva-agent:0.1.0\n\
                          aggregatorAddress: http://wva-headless.wva-system.svc:9443\n\
                          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 32Mi}}\n";

    fn config() -> InjectionConfig {
        InjectionConfig::parse(CONFIG).unwrap()
    }

    /// A pod as its ReplicaSet creates it, after the built-in admission
    /// plugins (the service-account token volume is already there).
    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "llama-8b-h100-7d9f8c6b5d-",
                "namespace": "llm",
                "labels": {"app": "llama-8b-h100", "pod-template-hash": "7d9f8c6b5d"},
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "llama-8b-h100-7d9f8c6b5d",
                    "uid": "5b1c1e0e-8a43-4b0a-9d7e-0f4c1f4a7e10",
                    "controller": true, "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "containers": [{
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.11.0",
                    "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                    "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
                }],
                "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
                ]}}],
                "restartPolicy": "Always",
                "serviceAccountName": "default"
            }
        })
    }

    fn typed(value: &Value) -> Pod {
        serde_json::from_value(value.clone()).unwrap()
    }

    fn inject(pod: &Value, scope: Scope, config: &InjectionConfig) -> Value {
        match mutate(&typed(pod), scope, config).unwrap() {
            Outcome::Inject(ops) => {
                let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
                let mut patched = pod.clone();
                json_patch::patch(&mut patched, &patch).unwrap();
                patched
            }
            Outcome::Skip(why) => panic!("skipped: {why}"),
        }
    }

    fn agent(pod: &Pod) -> &Container {
        let spec = pod.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == CONTAINER_NAME)
            .expect("an agent container")
    }

    fn env(container: &Container, name: &str) -> Option<String> {
        let var = container.env.iter().flatten().find(|e| e.name == name)?;
        var.value.clone().or_else(|| {
            let field = var.value_from.as_ref()?.field_ref.as_ref()?;
            Some(format!("fieldRef:{}", field.field_path))
        })
    }

    /// The checks the API server's pod validation makes that an injected
    /// container could break.
    fn assert_valid(pod: &Pod) {
        let spec = pod.spec.as_ref().unwrap();
        let containers: Vec<&Container> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .collect();
        let mut names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), containers.len(), "container names are unique");
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        for c in &containers {
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    volumes.contains(&m.name.as_str()),
                    "{} mounts a missing volume",
                    c.name
                );
            }
            for e in c.env.iter().flatten() {
                assert!(
                    e.name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
                    "env name {}",
                    e.name
                );
            }
        }
        for c in &spec.containers {
            assert_eq!(
                c.restart_policy, None,
                "only init containers take a restart policy"
            );
        }
        let mut unique = volumes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), volumes.len(), "volume names are unique");
    }

    #[test]
    fn a_vllm_pod_in_a_labelled_namespace_gets_a_native_sidecar() {
        let patched = typed(&inject(&pod(json!({})), Scope::Namespace, &config()));
        assert_valid(&patched);
        let agent = agent(&patched);
        let spec = patched.spec.as_ref().unwrap();
        assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(1));
        assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            agent.image.as_deref(),
            Some("ghcr.io/wva-project/wva-agent:0.1.0")
        );
        assert_eq!(
            env(agent, "WVA_TARGET").as_deref(),
            Some("http://127.0.0.1:8000/metrics")
        );
        assert_eq!(env(agent, "WVA_VARIANT").as_deref(), Some("llama-8b-h100"));
        assert_eq!(env(agent, "WVA_ROLE").as_deref(), Some("vllm"));
        assert_eq!(
            env(agent, "WVA_AGGREGATOR_FAN_OUT").as_deref(),
            Some("true")
        );
        assert_eq!(
            env(agent, "POD_UID").as_deref(),
            Some("fieldRef:metadata.uid")
        );
        assert_eq!(env(agent, "WVA_TARGET_TOKEN_FILE"), None);
        let token = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == TOKEN_VOLUME)
            .and_then(|v| {
                v.projected.as_ref()?.sources.as_ref()?[0]
                    .service_account_token
                    .clone()
            })
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some("wva-aggregator"));
        let security = agent.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            patched.metadata.annotations.as_ref().unwrap()[INJECTED_ANNOTATION],
            "true"
        );
        assert_eq!(
            mutate(&patched, Scope::Namespace, &config()),
            Ok(Outcome::Skip("already injected")),
            "a second pass injects nothing"
        );
    }

    #[test]
    fn an_endpoint_picker_is_scraped_on_its_port_with_a_token_for_its_metrics() {
        let epp = pod(json!({INJECT_ANNOTATION: "true", ROLE_ANNOTATION: "epp"}));
        let patched = typed(&inject(&epp, Scope::Pod, &config()));
        assert_valid(&patched);
        let agent = agent(&patched);
        assert_eq!(
            env(agent, "WVA_TARGET").as_deref(),
            Some("http://127.0.0.1:9090/metrics")
        );
        assert_eq!(env(agent, "WVA_ROLE").as_deref(), Some("epp"));
        assert_eq!(
            env(agent, "WVA_TARGET_TOKEN_FILE").as_deref(),
            Some("/var/run/secrets/wva-target/token")
        );
    }

    #[test]
    fn a_generic_workload_forwards_its_signals_from_its_exporter() {
        let signals = "queue_depth=max(redis_key_size{key=\"jobs\"})\nfree=min(slots)";
        let worker = pod(json!({
            INJECT_ANNOTATION: "true",
            ROLE_ANNOTATION: "generic",
            PORT_ANNOTATION: "9121",
            SIGNALS_ANNOTATION: signals,
        }));
        let patched = typed(&inject(&worker, Scope::Pod, &config()));
        assert_valid(&patched);
        let agent = agent(&patched);
        assert_eq!(
            env(agent, "WVA_TARGET").as_deref(),
            Some("http://127.0.0.1:9121/metrics")
        );
        assert_eq!(env(agent, "WVA_ROLE").as_deref(), Some("generic"));
        assert_eq!(env(agent, "WVA_SIGNALS").as_deref(), Some(signals));
        assert_eq!(env(agent, "WVA_TARGET_TOKEN_FILE"), None);

        let without = |key: &str| {
            let mut annotations = json!({
                INJECT_ANNOTATION: "true",
                ROLE_ANNOTATION: "generic",
                PORT_ANNOTATION: "9121",
                SIGNALS_ANNOTATION: signals,
            });
            annotations.as_object_mut().unwrap().remove(key);
            mutate(&typed(&pod(annotations)), Scope::Pod, &config()).unwrap_err()
        };
        assert_eq!(
            without(PORT_ANNOTATION),
            "the generic role needs annotation wva.llmd.ai/agent-target-port: the port of the exporter the agent reads"
        );
        assert_eq!(
            without(SIGNALS_ANNOTATION),
            "the generic role needs annotation wva.llmd.ai/agent-signals: the signals to forward"
        );
    }

    #[test]
    fn a_vllm_pod_may_read_its_signals_from_an_exporter_beside_it() {
        let signals = "queue_depth=max(redis_key_size{key=\"jobs\"})";
        let annotated = |extra: Value| {
            let mut annotations = json!({
                INJECT_ANNOTATION: "true",
                SIGNALS_ANNOTATION: signals,
                SIGNALS_PORT_ANNOTATION: "9121",
            });
            for (k, v) in extra.as_object().unwrap() {
                annotations[k] = v.clone();
            }
            pod(annotations)
        };
        let patched = typed(&inject(&annotated(json!({})), Scope::Pod, &config()));
        let agent = agent(&patched);
        assert_eq!(
            env(agent, "WVA_TARGET").as_deref(),
            Some("http://127.0.0.1:8000/metrics")
        );
        assert_eq!(
            env(agent, "WVA_SIGNALS_TARGET").as_deref(),
            Some("http://127.0.0.1:9121/metrics")
        );
        assert_eq!(env(agent, "WVA_SIGNALS").as_deref(), Some(signals));

        let refused =
            |extra: Value| mutate(&typed(&annotated(extra)), Scope::Pod, &config()).unwrap_err();
        assert_eq!(
            refused(json!({ROLE_ANNOTATION: "generic", PORT_ANNOTATION: "9121"})),
            "annotation wva.llmd.ai/agent-signals-port is for the vllm and epp roles: a generic agent reads its signals from wva.llmd.ai/agent-target-port"
        );
        assert_eq!(
            refused(json!({SIGNALS_PORT_ANNOTATION: "http"})),
            "annotation wva.llmd.ai/agent-signals-port=\"http\" is not a port"
        );
        assert_eq!(
            refused(json!({SIGNALS_ANNOTATION: ""})),
            "annotation wva.llmd.ai/agent-signals-port needs wva.llmd.ai/agent-signals: the signals to read there"
        );
    }

    #[test]
    fn annotations_opt_in_and_out() {
        let cases = [
            (json!({}), Scope::Pod, Some("not opted in")),
            (
                json!({INJECT_ANNOTATION: "false"}),
                Scope::Namespace,
                Some("opted out"),
            ),
            (
                json!({INJECT_ANNOTATION: "false"}),
                Scope::Pod,
                Some("opted out"),
            ),
            (json!({INJECT_ANNOTATION: "true"}), Scope::Pod, None),
            (json!({}), Scope::Namespace, None),
        ];
        for (annotations, scope, skip) in cases {
            let outcome = mutate(&typed(&pod(annotations.clone())), scope, &config()).unwrap();
            match skip {
                Some(why) => assert_eq!(outcome, Outcome::Skip(why), "{annotations} {scope:?}"),
                None => assert!(
                    matches!(outcome, Outcome::Inject(_)),
                    "{annotations} {scope:?}"
                ),
            }
        }
    }

    #[test]
    fn a_pod_without_annotations_or_init_containers_gets_the_lists_created() {
        let mut bare = pod(json!({}));
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        bare["spec"].as_object_mut().unwrap().remove("volumes");
        bare["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("volumeMounts");
        let patched = typed(&inject(&bare, Scope::Namespace, &config()));
        assert_valid(&patched);
        assert_eq!(patched.spec.unwrap().volumes.unwrap().len(), 1);
    }

    #[test]
    fn as_a_regular_container_when_native_sidecars_are_off() {
        let config = InjectionConfig {
            native_sidecar: false,
            ..config()
        };
        let patched = typed(&inject(&pod(json!({})), Scope::Namespace, &config));
        assert_valid(&patched);
        let spec = patched.spec.as_ref().unwrap();
        assert_eq!(spec.init_containers, None);
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(agent(&patched).restart_policy, None);
    }

    #[test]
    fn the_target_follows_the_annotations() {
        let annotations = json!({
            PORT_ANNOTATION: "8443", SCHEME_ANNOTATION: "https", PATH_ANNOTATION: "/vllm/metrics",
            VARIANT_ANNOTATION: "chat", MODELS_ANNOTATION: "meta/llama-3.1-8b"
        });
        let patched = typed(&inject(&pod(annotations), Scope::Namespace, &config()));
        let agent = agent(&patched);
        assert_eq!(
            env(agent, "WVA_TARGET").as_deref(),
            Some("https://127.0.0.1:8443/vllm/metrics")
        );
        assert_eq!(env(agent, "WVA_VARIANT").as_deref(), Some("chat"));
        assert_eq!(
            env(agent, "WVA_MODELS").as_deref(),
            Some("meta/llama-3.1-8b")
        );
    }

    #[test]
    fn bad_annotations_and_port_clashes_are_named() {
        let cases = [
            (
                json!({INJECT_ANNOTATION: "yes"}),
                "wva.llmd.ai/inject-agent=\"yes\"",
            ),
            (
                json!({ROLE_ANNOTATION: "router"}),
                "wva.llmd.ai/agent-role=\"router\"",
            ),
            (
                json!({PORT_ANNOTATION: "http"}),
                "wva.llmd.ai/agent-target-port=\"http\"",
            ),
            (
                json!({SCHEME_ANNOTATION: "ftp"}),
                "wva.llmd.ai/agent-target-scheme=\"ftp\"",
            ),
            (
                json!({PATH_ANNOTATION: "metrics"}),
                "wva.llmd.ai/agent-target-path=\"metrics\"",
            ),
        ];
        for (annotations, named) in cases {
            let error = mutate(&typed(&pod(annotations)), Scope::Namespace, &config()).unwrap_err();
            assert!(error.contains(named), "{error}");
        }
        let mut clash = pod(json!({}));
        clash["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(9400);
        let error = mutate(&typed(&clash), Scope::Namespace, &config()).unwrap_err();
        assert!(
            error.contains("container vllm already uses port 9400"),
            "{error}"
        );
    }

    #[test]
    fn the_configuration_is_checked() {
        let config = config();
        assert_eq!(config.image_pull_policy, "IfNotPresent");
        assert!(config.fan_out && config.native_sidecar);
        assert_eq!(
            (config.vllm_port, config.epp_port, config.agent_port),
            (8000, 9090, 9400)
        );
        let unknown = InjectionConfig::parse(&format!("{CONFIG}sidecar: yes\n")).unwrap_err();
        assert!(unknown.contains("unknown field `sidecar`"), "{unknown}");
        let url = InjectionConfig::parse("image: a\naggregatorAddress: wva:9443\n").unwrap_err();
        assert!(url.contains("must be an http:// or https:// URL"), "{url}");
        let policy =
            InjectionConfig::parse(&format!("{CONFIG}imagePullPolicy: Sometimes\n")).unwrap_err();
        assert!(policy.contains("imagePullPolicy \"Sometimes\""), "{policy}");
    }
}
