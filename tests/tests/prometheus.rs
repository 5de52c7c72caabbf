//! The Prometheus metrics source's client against a real Prometheus server:
//! signals of vllm-sim replicas scraped by Prometheus, TLS with client
//! certificates, and PromQL injection attempts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use wva_aggregator::prometheus::client::{
    PodSignals, PrometheusClient, PrometheusConfig, PrometheusError,
};
use wva_aggregator::prometheus::promql::Namespace;
use wva_e2e::prometheus::Prometheus;
use wva_e2e::*;

const MODEL: &str = "e2e/prom";
/// Upper bound for Prometheus to start, scrape and answer.
const WITHIN: Duration = Duration::from_secs(20);

/// Three sims of [`MODEL`] scraped every second: `sim-a` (one request
/// running, one waiting) and `sim-b` (one request done) in `prod`, and
/// `sim-c` (one request running) in `other`.
struct Scraped {
    prometheus: Prometheus,
    sims: BTreeMap<&'static str, SocketAddr>,
    _procs: Vec<Proc>,
    _load: Vec<tokio::net::TcpStream>,
    _dir: tempfile::TempDir,
}

impl Scraped {
    async fn start() -> anyhow::Result<Self> {
        // One request runs, the next waits, for the whole test.
        let one_at_a_time = [&SLOW_DECODING_SIM[..], &["--max-num-seqs", "1"]].concat();
        let (a, a_addr) = start_sim(MODEL, &one_at_a_time).await?;
        let (b, b_addr) = start_sim(MODEL, &[]).await?;
        let (c, c_addr) = start_sim(MODEL, &one_at_a_time).await?;
        let load = vec![
            hold_completion(a_addr, MODEL, 400, 500).await?,
            hold_completion(a_addr, MODEL, 100, 500).await?,
            hold_completion(b_addr, MODEL, 10, 2).await?,
            hold_completion(c_addr, MODEL, 200, 500).await?,
        ];
        let target = |addr: SocketAddr, ns: &str, pod: &str| {
            format!(
                "      - targets: ['{addr}']\n        labels: {{namespace: {ns}, pod: {pod}}}\n"
            )
        };
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: vllm\n    static_configs:\n{}{}{}",
            target(a_addr, "prod", "sim-a"),
            target(b_addr, "prod", "sim-b"),
            target(c_addr, "other", "sim-c"),
        );
        let dir = tempfile::tempdir()?;
        let prometheus = Prometheus::start(dir.path(), &config, None).await?;
        Ok(Scraped {
            prometheus,
            sims: BTreeMap::from([("sim-a", a_addr), ("sim-b", b_addr), ("sim-c", c_addr)]),
            _procs: vec![a, b, c],
            _load: load,
            _dir: dir,
        })
    }

    /// A plain-HTTP client (which needs `insecure_skip_verify`).
    fn client(&self) -> PrometheusClient {
        PrometheusClient::new(PrometheusConfig {
            insecure_skip_verify: true,
            ..PrometheusConfig::new(format!("http://{}", self.prometheus.addr).parse().unwrap())
        })
        .expect("client")
    }
}

/// The signals a sim reports on its own `/metrics`, summed over its series.
async fn sim_signals(sim: SocketAddr) -> anyhow::Result<PodSignals> {
    let sum = async |name: &str| -> anyhow::Result<Option<f64>> {
        let series = metric(sim, name).await?;
        Ok((!series.is_empty()).then(|| series.iter().map(|(_, v)| v).sum()))
    };
    Ok(PodSignals {
        kv_cache_usage: sum("vllm:kv_cache_usage_perc").await?,
        requests_waiting: sum("vllm:num_requests_waiting").await?,
        requests_running: sum("vllm:num_requests_running").await?,
        request_success: sum("vllm:request_success_total").await?,
    })
}

/// Whether Prometheus's view matches the sim's: counts exactly, KV usage
/// within one block of drift.
fn agrees(prom: &PodSignals, sim: &PodSignals) -> bool {
    let close = |a: Option<f64>, b: Option<f64>| matches!((a, b), (Some(a), Some(b)) if (a - b).abs() <= 0.05);
    prom.requests_waiting == sim.requests_waiting
        && prom.requests_running == sim.requests_running
        && prom.request_success == sim.request_success
        && close(prom.kv_cache_usage, sim.kv_cache_usage)
}

#[tokio::test]
async fn pod_signals_are_the_values_the_sims_report_for_the_namespace_only() -> anyhow::Result<()> {
    let scraped = Scraped::start().await?;
    let client = scraped.client();
    let prod = Namespace::parse("prod")?;
    let (signals, a) = eventually(WITHIN, "Prometheus to agree with the sims", || async {
        let signals = client.pod_signals(&prod, MODEL).await?;
        let a = sim_signals(scraped.sims["sim-a"]).await?;
        let b = sim_signals(scraped.sims["sim-b"]).await?;
        let loaded = a.requests_running == Some(1.0) && b.request_success == Some(1.0);
        let both = signals.get("sim-a").zip(signals.get("sim-b"));
        Ok(both
            .filter(|(pa, pb)| loaded && agrees(pa, &a) && agrees(pb, &b))
            .map(|_| (signals.clone(), a)))
    })
    .await?;
    assert_eq!(
        signals.keys().collect::<Vec<_>>(),
        ["sim-a", "sim-b"],
        "{signals:?}"
    );
    assert_eq!(a.requests_waiting, Some(1.0));
    assert!(a.kv_cache_usage.is_some_and(|kv| kv > 0.3), "{a:?}");
    // The `other` namespace is there, just not in prod's answer.
    let other = Namespace::parse("other")?;
    let other = eventually(WITHIN, "the other namespace scraped", || async {
        let signals = client.pod_signals(&other, MODEL).await?;
        Ok((!signals.is_empty()).then_some(signals))
    })
    .await?;
    assert_eq!(other.keys().collect::<Vec<_>>(), ["sim-c"]);
    // And a query error is reported as such.
    let err = client.query("sum by (pod) (").await.unwrap_err();
    assert!(
        matches!(err, PrometheusError::Query { ref error_type, .. } if error_type == "bad_data"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn hostile_models_and_namespaces_select_nothing() -> anyhow::Result<()> {
    let scraped = Scraped::start().await?;
    let client = scraped.client();
    let prod = Namespace::parse("prod")?;
    // Wait until every namespace's series exist, so an empty answer means
    // "matched nothing" rather than "not scraped yet".
    eventually(WITHIN, "all sims scraped", || async {
        let all = client
            .query(r#"vllm:num_requests_running{model_name="e2e/prom"}"#)
            .await?;
        let pods: BTreeSet<_> = all
            .iter()
            .filter_map(|(l, _)| l.get("pod").cloned())
            .collect();
        Ok((pods.len() == 3).then_some(()))
    })
    .await?;

    for namespace in [
        r#"prod",malicious="value"#,
        r#"prod",namespace=~".+"#,
        "prod\\",
        "prod\n",
        "prod}",
        "=~.+",
        ".+",
    ] {
        assert!(
            Namespace::parse(namespace).is_err(),
            "{namespace:?} accepted"
        );
    }

    let or_other = r#"x"} or vllm:num_requests_running{namespace="other"#;
    // Unescaped, this model would pull in the other namespace's series...
    let raw = format!(
        r#"sum by (pod) (vllm:num_requests_running{{namespace="prod",model_name="{or_other}"}})"#
    );
    let leaked = client.query(&raw).await?;
    assert_eq!(
        leaked[0].0.get("pod").map(String::as_str),
        Some("sim-c"),
        "{leaked:?}"
    );
    // ...escaped it matches nothing, like every other hostile value.
    for model in [
        or_other,
        r#"",namespace=~".+"#,
        r#"e2e/prom",namespace=~".+"#,
        r#"e2e/prom",model_name=~".+"#,
        "e2e/prom\\",
        r#"e2e/prom\""#,
        "e2e/prom\n",
        "e2e/prom\r\t",
        r#"e2e/prom"}"#,
        "e2e/prom}) or vector(1",
        "{}",
        "=~",
        ".+",
        "\\\\\"\"\n{}=~",
    ] {
        let signals = client
            .pod_signals(&prod, model)
            .await
            .map_err(|e| anyhow::anyhow!("model {model:?}: {e}"))?;
        assert!(signals.is_empty(), "model {model:?} selected {signals:?}");
    }
    // The real model still works on the same server.
    assert_eq!(client.pod_signals(&prod, MODEL).await?.len(), 2);
    Ok(())
}

/// A CA with a server certificate for `localhost` and `prometheus.test`
/// (no IP address) and a client certificate, as PEM files in `dir`.
fn pki(dir: &Path, ca_name: &str) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    std::fs::write(dir.join(format!("{ca_name}.pem")), ca.pem())?;
    let leaf =
        |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<()> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.extended_key_usages = vec![usage];
            std::fs::write(
                dir.join(format!("{name}.pem")),
                params.signed_by(&key, &issuer)?.pem(),
            )?;
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
            Ok(())
        };
    leaf(
        "server",
        vec!["localhost".into(), "prometheus.test".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    leaf(
        "client",
        vec!["wva".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

#[tokio::test]
async fn tls_with_client_certificates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    pki(dir.path(), "ca")?;
    let wrong = tempfile::tempdir()?;
    pki(wrong.path(), "wrong-ca")?;
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        path("server.pem").display(),
        path("server-key.pem").display(),
        path("ca.pem").display(),
    );
    let prometheus = Prometheus::start(dir.path(), "global: {}\n", Some(&web)).await?;
    let port = prometheus.addr.port();
    let config = |host: &str| PrometheusConfig {
        ca_cert: Some(path("ca.pem")),
        client_cert: Some(path("client.pem")),
        client_key: Some(path("client-key.pem")),
        query_timeout: Duration::from_secs(5),
        ..PrometheusConfig::new(format!("https://{host}:{port}").parse().unwrap())
    };
    let one = |client: PrometheusClient| async move {
        let v = client.query("vector(1)").await?;
        anyhow::Ok(v.first().map(|(_, v)| *v))
    };

    // Right CA and client certificate: works (once Prometheus is ready).
    let right = PrometheusClient::new(config("localhost"))?;
    let value = eventually(WITHIN, "a query over mutual TLS", || one(right.clone())).await?;
    assert_eq!(value, 1.0);

    // A CA that did not issue the server's certificate.
    let untrusted = PrometheusClient::new(PrometheusConfig {
        ca_cert: Some(wrong.path().join("wrong-ca.pem")),
        ..config("localhost")
    })?;
    let err = untrusted.query("vector(1)").await.unwrap_err();
    assert!(matches!(err, PrometheusError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "TLS handshake with localhost:{port} failed: invalid peer certificate: UnknownIssuer"
        )),
        "{err}"
    );
    assert!(err.to_string().contains("not trusted"), "{err}");

    // No client certificate: the server refuses.
    let anonymous = PrometheusClient::new(PrometheusConfig {
        client_cert: None,
        client_key: None,
        ..config("localhost")
    })?;
    let err = anonymous.query("vector(1)").await.unwrap_err();
    assert!(matches!(err, PrometheusError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    // By IP the name does not match, unless the server name is overridden.
    let by_ip = PrometheusClient::new(config("127.0.0.1"))?;
    let err = by_ip.query("vector(1)").await.unwrap_err();
    assert!(err.to_string().contains("not valid for this name"), "{err}");
    let overridden = PrometheusClient::new(PrometheusConfig {
        server_name: Some("prometheus.test".into()),
        ..config("127.0.0.1")
    })?;
    assert_eq!(one(overridden).await?, Some(1.0));
    Ok(())
}

#[tokio::test]
async fn a_silent_server_times_out() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let _silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let client = PrometheusClient::new(PrometheusConfig {
        insecure_skip_verify: true,
        query_timeout: Duration::from_millis(300),
        ..PrometheusConfig::new(format!("http://{addr}").parse()?)
    })?;
    let err = client.query("up").await.unwrap_err();
    assert!(matches!(err, PrometheusError::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("Prometheus query at {addr} timed out after 300ms")
    );
    Ok(())
}

#[tokio::test]
async fn the_bearer_token_and_the_encoded_query_reach_the_server() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        anyhow::Ok(String::from_utf8(head)?.to_ascii_lowercase())
    });
    let client = PrometheusClient::new(PrometheusConfig {
        insecure_skip_verify: true,
        bearer_token: Some("s3cret".into()),
        ..PrometheusConfig::new(format!("http://{addr}/prom/").parse()?)
    })?;
    assert!(client.query(r#"up{job="a b"} + 1"#).await?.is_empty());
    let head = server.await??;
    assert!(
        head.starts_with(
            "get /prom/api/v1/query?query=up%7bjob%3d%22a%20b%22%7d%20%2b%201 http/1.1\r\n"
        ),
        "{head}"
    );
    assert!(
        head.contains("\r\nauthorization: bearer s3cret\r\n"),
        "{head}"
    );
    Ok(())
}

#[tokio::test]
async fn a_variant_annotated_for_prometheus_is_driven_by_it() -> anyhow::Result<()> {
    let scraped = Scraped::start().await?;
    let dir = tempfile::tempdir()?;
    let variants = dir.path().join("variants.yaml");
    std::fs::write(
        &variants,
        format!(
            "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
             metadata:\n  name: chat\n  namespace: prod\n  \
             annotations: {{wva.llmd.ai/metrics-source: prometheus}}\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: chat}}, modelID: {MODEL}}}\n"
        ),
    )?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let mut command =
        standalone_aggregator(&variants, grpc, metrics, &["--poll-interval", "500ms"]);
    command
        .env(
            "PROMETHEUS_BASE_URL",
            format!("http://{}", scraped.prometheus.addr),
        )
        .env("PROMETHEUS_TLS_INSECURE_SKIP_VERIFY", "true");
    let _aggregator = Proc {
        child: command.spawn()?,
    };
    // No agent runs: the decision's inputs are the prod pods Prometheus knows,
    // with the queue each sim reports.
    let expected = sim_signals(scraped.sims["sim-a"]).await?;
    let decision = eventually(WITHIN, "a decision from Prometheus' pods", || async move {
        let all = decisions(metrics).await?;
        Ok(all.into_iter().find(|d| {
            let pods: Vec<&str> = d["inputs"]
                .as_array()
                .map(|i| i.iter().filter_map(|p| p["pod"].as_str()).collect())
                .unwrap_or_default();
            pods == ["sim-a", "sim-b"]
        }))
    })
    .await?;
    let sim_a = &decision["inputs"][0];
    assert_eq!(
        sim_a["queueLength"].as_f64(),
        expected.requests_waiting,
        "{decision}"
    );
    assert_eq!(decision["data"], "fresh", "{decision}");
    let desired = decision["desiredReplicas"].clone();

    // Prometheus hangs (its process stopped, connections open): queries time
    // out, the decision says so and holds; once it answers again, so does
    // the source.
    scraped.prometheus.proc.signal("STOP").await?;
    let hung = eventually(WITHIN, "the hung source on the decision", || async move {
        let all = decisions(metrics).await?;
        Ok(all
            .into_iter()
            .find(|d| d["sourceFailure"]["source"] == "prometheus"))
    })
    .await?;
    assert_eq!(hung["desiredReplicas"], desired, "held while hung: {hung}");
    scraped.prometheus.proc.signal("CONT").await?;
    let resumed = std::time::Instant::now();
    eventually(WITHIN, "the source back", || async move {
        let all = decisions(metrics).await?;
        Ok(all
            .into_iter()
            .find(|d| d["sourceFailure"].is_null() && d["data"] == "fresh"))
    })
    .await?;
    println!(
        "Prometheus answering again: fresh data {:?} later",
        resumed.elapsed()
    );

    // Prometheus goes away: the decision says why its data stops.
    scraped.prometheus.stop().await;
    let failed = eventually(
        WITHIN,
        "the source failure on the decision",
        || async move {
            let all = decisions(metrics).await?;
            Ok(all
                .into_iter()
                .find(|d| d["sourceFailure"]["source"] == "prometheus"))
        },
    )
    .await?;
    let error = failed["sourceFailure"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("Prometheus"), "{failed}");
    Ok(())
}

#[tokio::test]
async fn agent_pod_scraping_and_prometheus_see_the_same_signals() -> anyhow::Result<()> {
    use wva_core::store::PodKey;
    use wva_k8s::scraping::{PodScraper, PodTarget, ScrapeConfig};

    let scraped = Scraped::start().await?;
    let sim = scraped.sims["sim-a"];

    // The agent path: a real agent streaming to a standalone aggregator.
    let dir = tempfile::tempdir()?;
    let variants = dir.path().join("variants.yaml");
    std::fs::write(
        &variants,
        format!(
            "apiVersion: llmd.ai/v1alpha1\nkind: VariantAutoscaling\n\
             metadata: {{name: chat, namespace: prod}}\n\
             spec: {{scaleTargetRef: {{kind: Deployment, name: chat}}, modelID: {MODEL}}}\n"
        ),
    )?;
    let (grpc, metrics) = (free_addr(), free_addr());
    let _aggregator = start_aggregator(&variants, grpc, metrics, &[])?;
    let aggregator = format!("http://{grpc}");
    let _agent = start_agent(&AgentSpec {
        target: sim,
        aggregator: &aggregator,
        pod: "sim-a",
        namespace: "prod",
        variant: "chat",
        model: MODEL,
        interval: "200ms",
        extra: &[],
    })?;
    let by_agent = eventually(WITHIN, "the agent's sample", || async move {
        let all = decisions(metrics).await?;
        Ok(all
            .into_iter()
            .find_map(|d| d["inputs"].as_array()?.first().cloned()))
    })
    .await?;

    // The pod-scraping path: the aggregator's scraper on the same pod.
    let mut scraper = PodScraper::new(ScrapeConfig::default());
    let target = PodTarget {
        pod: PodKey {
            namespace: "prod".into(),
            pod: "sim-a".into(),
        },
        url: format!("http://{sim}/metrics").parse()?,
    };
    scraper.refresh(std::slice::from_ref(&target)).await?;
    let sample = scraper
        .get(&target.pod, std::time::Instant::now())
        .expect("a scrape");
    let by_scrape = sample
        .models
        .iter()
        .find(|m| m.model == MODEL)
        .expect("the model's signals");

    // The Prometheus path, once it has scraped the held load.
    let ns = Namespace::parse("prod")?;
    let client = scraped.client();
    let by_prometheus = eventually(WITHIN, "Prometheus' view of sim-a", || {
        let (client, ns) = (&client, &ns);
        async move {
            let pods = client.pod_signals(ns, MODEL).await?;
            Ok(pods
                .get("sim-a")
                .filter(|s| s.requests_waiting == Some(by_scrape.requests_waiting))
                .cloned())
        }
    })
    .await?;

    // The held requests keep the load steady: queues agree exactly, KV usage
    // within the drift of one decoded block.
    assert_eq!(
        by_agent["queueLength"].as_f64(),
        Some(by_scrape.requests_waiting)
    );
    assert_eq!(
        by_prometheus.requests_running,
        Some(by_scrape.requests_running)
    );
    let kv = [
        by_agent["kvCacheUsage"].as_f64().unwrap_or(-1.0),
        by_scrape.kv_cache_usage,
        by_prometheus.kv_cache_usage.unwrap_or(-1.0),
    ];
    assert!(kv[1] > 0.0, "the load shows: {kv:?}");
    assert!(
        kv.iter().all(|k| (k - kv[1]).abs() <= 0.05),
        "agent, scrape and Prometheus disagree: {kv:?}"
    );
    Ok(())
}
