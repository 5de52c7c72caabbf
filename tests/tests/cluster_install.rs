//! wva's chart on a real control plane (kube-apiserver, kube-controller-manager
//! and etcd at the release pinned in `tests/controlplane/go.mod`, one per
//! test; docs/testing.md): installed, upgraded and uninstalled by helm; the
//! CRD as the API server validates it; the injection webhook as the API
//! server calls it; a fatal parameter stopping a replica at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use wva_e2e::controlplane::ControlPlane;
use wva_e2e::install::*;
use wva_e2e::node::LocalNode;
use wva_e2e::*;

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
        "wva-agent not injected: annotation wva.llmd.ai/agent-role=\"router\" is not vllm, epp or generic"
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

/// A Secret `key`'s text.
fn secret_text(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(key)?;
    String::from_utf8(data.0.clone()).ok()
}

/// When the first certificate of a PEM text expires, in Unix seconds.
fn pem_not_after(pem: &str) -> anyhow::Result<i64> {
    let first = wva_certs::first_certificate(pem).context("a certificate")?;
    let end = wva_certs::not_after(&first).context("a validity")?;
    Ok(end.unix_timestamp())
}

/// The webhook's self-made certificate left by an older version, five days
/// from its end and without its CA's key, is replaced at start by a new CA
/// and certificate; the new caBundle trusts both CAs, every replica serves
/// and exports the new one, and the API server goes on calling the webhook.
/// A renewal written by one replica is then picked up by the others.
#[tokio::test]
async fn the_webhook_certificate_is_renewed_before_it_expires() -> anyhow::Result<()> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use time::{Duration as Days, OffsetDateTime};
    use wva_certs::issue::{LEAF_LIFETIME, Plan, issue};
    use wva_certs::{CertBundle, dns_names};

    let names = dns_names("wva-webhook", SYSTEM);
    let now = OffsetDateTime::now_utc();
    let old = issue(
        Plan::NewCa,
        None,
        &names,
        now - LEAF_LIFETIME + Days::days(5),
    )?;
    let data = [
        ("tls.crt", &old.cert),
        ("tls.key", &old.key),
        ("ca.crt", &old.ca),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let left_behind: Secret = serde_json::from_value(json!({
        "metadata": {"name": "wva-webhook-tls",
                     "annotations": {"wva.llmd.ai/dns-names": names.join(",")}},
        "type": "kubernetes.io/tls",
    }))?;
    let left_behind = Secret {
        data: Some(data),
        ..left_behind
    };
    let Wva {
        plane,
        client,
        node: _node,
        replicas,
    } = wva_on_a_node_with(2, &[], vec![left_behind]).await?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM);
    let secret = secrets.get("wva-webhook-tls").await?;
    let text = |key| secret_text(&secret, key).with_context(|| key.to_string());
    let (cert, ca) = (text("tls.crt")?, text("ca.crt")?);
    assert_ne!(cert, old.cert, "a new certificate");
    assert!(text("ca.key").is_ok(), "the CA's key is kept for renewals");
    let end = pem_not_after(&cert)?;
    let lasts = end - now.unix_timestamp();
    assert!(lasts > Days::days(360).whole_seconds(), "valid {lasts} s");
    let cas: Vec<_> = CertificateDer::pem_slice_iter(ca.as_bytes()).collect::<Result<_, _>>()?;
    assert_eq!(cas.len(), 2, "the new CA and the one it replaces");
    assert_eq!(
        Some(&cas[1]),
        wva_certs::first_certificate(&old.ca).as_ref()
    );
    eventually(
        WITHIN,
        "the new CA bundle in the webhook configuration",
        || async {
            let published = webhook_ca(&plane).await?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&ca);
            Ok(
                (published.split_whitespace().all(|b| b == encoded)
                    && !published.trim().is_empty())
                .then_some(()),
            )
        },
    )
    .await?;
    for replica in &replicas {
        let exported = scalar(
            replica.metrics,
            "wva_webhook_certificate_expiry_timestamp_seconds",
        )
        .await?;
        assert_eq!(exported as i64, end, "{}", replica.pod);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let injected = |pod: &Pod| {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == "wva-agent")
    };
    let pod = |name: &str| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0",
                                     "args": ["--model", MODEL]}]},
        }))?)
    };
    let created = pods
        .create(&PostParams::default(), &pod("after-new-ca")?)
        .await?;
    assert!(
        injected(&created),
        "the API server calls the renewed webhook"
    );

    // Another replica renews (same CA, a day later): every replica serves
    // the renewal at its next check.
    let current = CertBundle {
        ca,
        ca_key: Some(text("ca.key")?),
        cert,
        key: text("tls.key")?,
    };
    let renewed = issue(Plan::NewLeaf, Some(&current), &names, now + Days::days(1))?;
    let mut secret = secret.clone();
    for (key, value) in [("tls.crt", &renewed.cert), ("tls.key", &renewed.key)] {
        secret
            .data
            .get_or_insert_default()
            .insert(key.into(), ByteString(value.as_bytes().to_vec()));
    }
    secrets
        .replace("wva-webhook-tls", &PostParams::default(), &secret)
        .await?;
    let end = pem_not_after(&renewed.cert)?;
    for replica in &replicas {
        eventually(
            std::time::Duration::from_secs(90),
            "every replica serving the renewal",
            || async {
                let exported = scalar(
                    replica.metrics,
                    "wva_webhook_certificate_expiry_timestamp_seconds",
                )
                .await?;
                Ok((exported as i64 == end).then_some(()))
            },
        )
        .await?;
    }
    let created = pods
        .create(&PostParams::default(), &pod("after-renewal")?)
        .await?;
    assert!(injected(&created), "the API server trusts the renewal");
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
