//! The agent-injection webhook end to end: the real aggregator in
//! Kubernetes mode against the API-server double makes its certificate,
//! shares it through a Secret, publishes its CA in the webhook
//! configuration, and answers real AdmissionReviews over HTTPS, verified
//! the way the API server verifies it (the published CA, the Service's name).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use wva_e2e::apiserver::Resource;
use wva_e2e::cluster::*;
use wva_e2e::*;

const WITHIN: Duration = Duration::from_secs(20);
const SERVICE: &str = "wva-webhook";
const CONFIGURATION: &str = "wva-agent-injector";
const SECRET: &str = "wva-webhook-tls";
const AGENT_IMAGE: &str = "ghcr.io/wva-project/wva-agent:0.1.0";

/// The webhook configuration as the chart renders it, before any CA.
fn configuration() -> Value {
    let webhook = |name: &str, path: &str, selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "namespaceSelector": selector,
            "clientConfig": {"service": {"name": SERVICE, "namespace": SYSTEM_NAMESPACE, "path": path, "port": 443}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        })
    };
    json!({
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            webhook("namespace.inject.wva.llmd.ai", "/inject/namespace",
                json!({"matchLabels": {"wva.llmd.ai/inject-agent": "enabled"}})),
            webhook("pod.inject.wva.llmd.ai", "/inject/pod",
                json!({"matchExpressions": [{"key": "wva.llmd.ai/inject-agent", "operator": "NotIn", "values": ["enabled"]}]})),
        ],
    })
}

/// A webhook replica: its aggregator and the address it serves admission on.
struct Replica {
    aggregator: Aggregator,
    webhook: SocketAddr,
}

fn start_replica(cluster: &Cluster, pod: &str, injection: &str) -> anyhow::Result<Replica> {
    let webhook = free_addr();
    let aggregator = cluster.start_aggregator(
        pod,
        &[
            "--webhook-addr",
            &webhook.to_string(),
            "--injection-config",
            injection,
            "--webhook-service",
            SERVICE,
            "--webhook-configuration",
            CONFIGURATION,
            "--webhook-secret",
            SECRET,
        ],
    )?;
    Ok(Replica {
        aggregator,
        webhook,
    })
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
    let name = ServerName::try_from(format!("{SERVICE}.{SYSTEM_NAMESPACE}.svc"))?;
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
async fn the_webhook_certifies_itself_and_injects_the_agent_into_pods_that_ask()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), &["llm"]).await?;
    cluster
        .create(
            Resource::MutatingWebhookConfigurations,
            None,
            configuration(),
        )
        .await?;
    let injection = dir.path().join("injection.yaml");
    std::fs::write(
        &injection,
        format!(
            "image: {AGENT_IMAGE}\naggregatorAddress: http://wva-headless.{SYSTEM_NAMESPACE}.svc:9443\n"
        ),
    )?;
    let injection = injection.to_str().unwrap();
    let first = start_replica(&cluster, "wva-0", injection)?;

    // The CA lands in both webhooks and equals the stored Secret's.
    let ca = eventually(WITHIN, "the CA in the webhook configuration", || async {
        let stored = cluster.get(Resource::MutatingWebhookConfigurations, None, CONFIGURATION);
        let bundles: Vec<String> = stored
            .iter()
            .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
            .filter_map(|w| w["clientConfig"]["caBundle"].as_str().map(str::to_string))
            .collect();
        Ok((bundles.len() == 2 && bundles[0] == bundles[1]).then(|| bundles[0].clone()))
    })
    .await?;
    let secret = cluster
        .get(Resource::Secrets, Some(SYSTEM_NAMESPACE), SECRET)
        .expect("the Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["data"]["ca.crt"], ca);
    let ca_pem = base64::engine::general_purpose::STANDARD.decode(&ca)?;
    let client = api_server_client(&ca_pem)?;
    let webhook = first.webhook;
    eventually(WITHIN, "the webhook answering", || async {
        Ok(post(&client, webhook, "/inject/pod", b"{}".to_vec())
            .await
            .ok())
    })
    .await?;

    // A vLLM pod in a namespace labelled for injection.
    let review = review_of(json!({}));
    let response = admit(&client, webhook, "/inject/namespace", &review).await?;
    let pod = patched(&review, &response).expect("a patch");
    // Unknown or misspelled fields would not survive the typed round trip;
    // the API server's `creationTimestamp: null` is the one field that
    // legitimately reads back as absent.
    let mut expected = pod.clone();
    expected["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("creationTimestamp");
    if let Err(e) = round_trip::<Pod>(&expected, "") {
        panic!("the patched pod is not a valid Pod: {e}");
    }
    let agent = &pod["spec"]["initContainers"][0];
    assert_eq!(agent["name"], "wva-agent");
    assert_eq!(agent["image"], AGENT_IMAGE);
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
    let response = admit(&client, webhook, "/inject/namespace", &again).await?;
    assert_eq!(patched(&again, &response), None);

    // An endpoint picker elsewhere, opted in by annotation.
    let epp =
        review_of(json!({"wva.llmd.ai/inject-agent": "true", "wva.llmd.ai/agent-role": "epp"}));
    let response = admit(&client, webhook, "/inject/pod", &epp).await?;
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
        let response = admit(&client, webhook, path, &review).await?;
        assert_eq!(patched(&review, &response), None, "{path}");
        assert_eq!(response["warnings"], Value::Null);
    }

    // A mistake in the pod's annotations admits it without the agent, and says why.
    let wrong = review_of(json!({"wva.llmd.ai/agent-role": "router"}));
    let response = admit(&client, webhook, "/inject/namespace", &wrong).await?;
    assert_eq!(patched(&wrong, &response), None);
    assert_eq!(
        response["warnings"][0],
        "wva-agent not injected: annotation wva.llmd.ai/agent-role=\"router\" is not vllm or epp"
    );

    // A request that is no AdmissionReview gets a clear error; with
    // failurePolicy Ignore the API server then admits the pod unchanged.
    let (status, body) = post(
        &client,
        webhook,
        "/inject/pod",
        b"{\"kind\": \"AdmissionReview\"".to_vec(),
    )
    .await?;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).starts_with("malformed AdmissionReview"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Every answer is counted by outcome (the first probe was malformed too).
    let outcomes: std::collections::BTreeMap<String, f64> =
        metric(first.aggregator.metrics, "wva_webhook_admissions_total")
            .await?
            .into_iter()
            .map(|(labels, value)| (labels["outcome"].clone(), value))
            .collect();
    let expected = [
        ("injected", 2.0),
        ("malformed", 2.0),
        ("not_injected", 1.0),
        ("skipped", 3.0),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    assert_eq!(outcomes, expected);

    // A second replica serves the same certificate: the Secret is reused.
    let version = secret["metadata"]["resourceVersion"].clone();
    let second = start_replica(&cluster, "wva-1", injection)?;
    let response = eventually(WITHIN, "the second replica answering", || async {
        Ok(admit(&client, second.webhook, "/inject/namespace", &review)
            .await
            .ok())
    })
    .await?;
    assert!(patched(&review, &response).is_some());
    let secret = cluster
        .get(Resource::Secrets, Some(SYSTEM_NAMESPACE), SECRET)
        .expect("the Secret");
    assert_eq!(
        secret["metadata"]["resourceVersion"], version,
        "not replaced"
    );
    Ok(())
}
