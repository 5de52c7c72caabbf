//! Agent credentials end to end: TLS to the aggregator and a bearer token.

use std::time::Duration;

use wva_e2e::*;

const MODEL: &str = "e2e/secure";

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn agents_connect_over_tls_with_a_token_and_a_wrong_token_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    let pki = pki();
    std::fs::write(path("ca.pem"), &pki.ca_pem)?;
    std::fs::write(path("cert.pem"), &pki.cert_pem)?;
    std::fs::write(path("key.pem"), &pki.key_pem)?;
    std::fs::write(path("token"), "s3cret-token\n")?;
    std::fs::write(path("wrong"), "not-the-token\n")?;
    std::fs::write(
        path("variants.yaml"),
        format!(
            "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\nmetadata: {{name: secure, namespace: e2e}}\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: secure}}, modelID: {MODEL}}}\n"
        ),
    )?;
    let s = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(
        &path("variants.yaml"),
        grpc,
        metrics,
        &[
            "--tls-cert",
            &s(path("cert.pem")),
            "--tls-key",
            &s(path("key.pem")),
            "--agent-token-file",
            &s(path("token")),
        ],
    )?;
    let url = format!("https://localhost:{}", grpc.port());
    let (_sim, addr) = start_sim(MODEL, &[]).await?;
    let (ca, good, bad) = (s(path("ca.pem")), s(path("token")), s(path("wrong")));
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
