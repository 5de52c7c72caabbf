//! Agent credentials end to end: TLS to the aggregator and a bearer token.

use std::path::Path;
use std::time::Duration;

use wva_e2e::*;

const MODEL: &str = "e2e/secure";

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    /// A client certificate the same CA signed.
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let signed = |name: &str, usage| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (cert_pem, key_pem) = signed("localhost", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert_pem, client_key_pem) =
        signed("keda", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca_pem: ca.pem(),
        cert_pem,
        key_pem,
        client_cert_pem,
        client_key_pem,
    }
}

/// Writes `content` to `name` in `dir`; returns the path as a flag value.
fn write(dir: &Path, name: &str, content: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test]
async fn agents_connect_over_tls_with_a_token_and_a_wrong_token_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = pki();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem)?;
    let cert = write(dir.path(), "cert.pem", &pki.cert_pem)?;
    let key = write(dir.path(), "key.pem", &pki.key_pem)?;
    let good = write(dir.path(), "token", "s3cret-token\n")?;
    let bad = write(dir.path(), "wrong", "not-the-token\n")?;
    let variants = one_variant_file(dir.path(), "e2e", "secure", MODEL);
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(
        &variants,
        grpc,
        metrics,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--agent-token-file",
            &good,
        ],
    )?;
    let url = format!("https://localhost:{}", grpc.port());
    let (_sim, addr) = start_sim(MODEL, &[]).await?;
    let (good_flags, bad_flags) = (
        ["--tls-ca", ca.as_str(), "--token-file", good.as_str()],
        ["--tls-ca", ca.as_str(), "--token-file", bad.as_str()],
    );
    let spec = |pod, extra| AgentSpec {
        target: addr,
        aggregator: &url,
        pod,
        namespace: "e2e",
        variant: "secure",
        model: MODEL,
        interval: "250ms",
        extra,
    };
    let _trusted = start_agent(&spec("secure-1", &good_flags))?;
    let _intruder = start_agent(&spec("secure-2", &bad_flags))?;

    eventually(
        Duration::from_secs(20),
        "the trusted pod over TLS",
        || async {
            let all = decisions(metrics).await?;
            Ok(all.into_iter().find(|d| d["data"] == "fresh"))
        },
    )
    .await?;
    let rejected = eventually(
        Duration::from_secs(20),
        "the wrong token to be refused",
        || async {
            let (_, body) = http_get(metrics, "/metrics").await?;
            Ok(body
                .lines()
                .find(|l| {
                    l.starts_with("wva_agent_streams_rejected_total{reason=\"Unauthenticated\"}")
                })
                .map(String::from))
        },
    )
    .await?;
    let count: f64 = rejected.rsplit(' ').next().unwrap_or_default().parse()?;
    assert!(count >= 1.0, "{rejected}");
    let all = decisions(metrics).await?;
    let pods: Vec<&str> = all[0]["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .filter_map(|i| i["pod"].as_str())
        .collect();
    assert_eq!(pods, ["secure-1"], "only the authenticated pod speaks");
    Ok(())
}

/// With client certificates asked of readers only, agents stream with their
/// token alone, while KEDA and diagnostics need a certificate or the reader
/// token.
#[tokio::test]
async fn keda_and_diagnostics_need_a_certificate_or_the_reader_token() -> anyhow::Result<()> {
    use tonic::Code;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    use wva_proto::keda::ScaledObjectRef;
    use wva_proto::keda::external_scaler_client::ExternalScalerClient;
    use wva_proto::v1::DecisionFilter;
    use wva_proto::v1::diagnostics_client::DiagnosticsClient;

    let dir = tempfile::tempdir()?;
    let pki = pki();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem)?;
    let cert = write(dir.path(), "cert.pem", &pki.cert_pem)?;
    let key = write(dir.path(), "key.pem", &pki.key_pem)?;
    let token = write(dir.path(), "agents", "agent-token\n")?;
    let readers = write(dir.path(), "readers", "reader-token\n")?;
    let variants = one_variant_file(dir.path(), "e2e", "secure", MODEL);
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(
        &variants,
        grpc,
        metrics,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--tls-client-auth",
            "readers",
            "--agent-token-file",
            &token,
            "--reader-token-file",
            &readers,
        ],
    )?;

    // An agent with its token and no certificate feeds the analysis.
    let url = format!("https://localhost:{}", grpc.port());
    let (_sim, addr) = start_sim(MODEL, &[]).await?;
    let _agent = start_agent(&AgentSpec {
        target: addr,
        aggregator: &url,
        pod: "secure-1",
        namespace: "e2e",
        variant: "secure",
        model: MODEL,
        interval: "250ms",
        extra: &["--tls-ca", ca.as_str(), "--token-file", token.as_str()],
    })?;
    eventually(
        Duration::from_secs(20),
        "the agent without a certificate",
        || async {
            let all = decisions(metrics).await?;
            Ok(all.into_iter().find(|d| d["data"] == "fresh"))
        },
    )
    .await?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = |tls: ClientTlsConfig| async move {
        Channel::from_shared(format!("https://localhost:{}", grpc.port()))?
            .tls_config(tls)?
            .connect()
            .await
            .map_err(anyhow::Error::from)
    };
    let scaled_object = ScaledObjectRef {
        name: "secure-so".into(),
        namespace: "e2e".into(),
        scaler_metadata: [("variantAutoscaling".to_string(), "secure".to_string())].into(),
    };
    let with_token = |token: &str| {
        let mut request = tonic::Request::new(DecisionFilter::default());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };

    // Without a credential: refused, saying what is needed.
    let anonymous = channel(tls.clone()).await?;
    let refused = DiagnosticsClient::new(anonymous.clone())
        .get_decisions(DecisionFilter::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("client certificate"),
        "{refused:?}"
    );
    let refused = ExternalScalerClient::new(anonymous.clone())
        .get_metric_spec(scaled_object.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // The agents' token is not a reader's.
    let refused = DiagnosticsClient::new(anonymous.clone())
        .get_decisions(with_token("agent-token"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // The reader token opens diagnostics.
    let snapshot = DiagnosticsClient::new(anonymous)
        .get_decisions(with_token("reader-token"))
        .await?
        .into_inner();
    assert!(!snapshot.decisions.is_empty(), "{snapshot:?}");

    // A client certificate the CA signed opens both, as KEDA's trigger
    // authentication presents it.
    let keda = channel(tls.identity(Identity::from_pem(
        &pki.client_cert_pem,
        &pki.client_key_pem,
    )))
    .await?;
    let spec = ExternalScalerClient::new(keda.clone())
        .get_metric_spec(scaled_object)
        .await?
        .into_inner();
    assert!(!spec.metric_specs.is_empty(), "{spec:?}");
    DiagnosticsClient::new(keda)
        .get_decisions(DecisionFilter::default())
        .await?;
    Ok(())
}

/// The gRPC port's certificate files are read again when renewed, so a
/// renewal (cert-manager rewriting its Secret) is served without a restart;
/// and a client that stalls in its TLS handshake holds up no other.
#[tokio::test]
async fn a_renewed_grpc_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use wva_proto::v1::DecisionFilter;
    use wva_proto::v1::diagnostics_client::DiagnosticsClient;

    let dir = tempfile::tempdir()?;
    let (first, second) = (pki(), pki());
    let cert = write(dir.path(), "cert.pem", &first.cert_pem)?;
    let key = write(dir.path(), "key.pem", &first.key_pem)?;
    let variants = one_variant_file(dir.path(), "e2e", "secure", MODEL);
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(
        &variants,
        grpc,
        metrics,
        &["--tls-cert", &cert, "--tls-key", &key],
    )?;
    let ask = |ca: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        async move {
            let channel = Channel::from_shared(format!("https://localhost:{}", grpc.port()))?
                .tls_config(tls)?
                .connect()
                .await?;
            DiagnosticsClient::new(channel)
                .get_decisions(DecisionFilter::default())
                .await?;
            anyhow::Ok(())
        }
    };
    eventually(Duration::from_secs(10), "the first certificate", || async {
        Ok(ask(&first.ca_pem).await.ok())
    })
    .await?;

    // A client that opens a connection and never says a word.
    let _stalled = tokio::net::TcpStream::connect(grpc).await?;
    assert!(ask(&second.ca_pem).await.is_err(), "not yet renewed");

    // The renewal lands as cert-manager writes it: key, then certificate.
    write(dir.path(), "key.pem", &second.key_pem)?;
    write(dir.path(), "cert.pem", &second.cert_pem)?;
    eventually(
        Duration::from_secs(10),
        "the renewed certificate",
        || async { Ok(ask(&second.ca_pem).await.ok()) },
    )
    .await?;
    let expiry = metric(metrics, "wva_grpc_certificate_expiry_timestamp_seconds").await?;
    assert!(
        expiry.first().is_some_and(|(_, end)| *end > 0.0),
        "{expiry:?}"
    );
    Ok(())
}
