//! Scraper and sampler against a real HTTP target on loopback.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/target.rs"]
mod target;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{StatusCode, Uri};
use target::{Reply, Target, gzip};
use wva_agent::extract::{Extractor, read_samples};
use wva_agent::filter::Filter;
use wva_agent::sampler::Sampler;
use wva_agent::scrape::{ScrapeError, Scraper};
use wva_agent::telemetry::Telemetry;
use wva_agent::tls::TargetTls;
use wva_proto::v1::Role;

const TIMEOUT: Duration = Duration::from_secs(5);
const LIMIT: usize = 64 << 10;

fn body(len: usize) -> Vec<u8> {
    let line = b"vllm:num_requests_running{model_name=\"m\"} 3\n";
    line.iter().copied().cycle().take(len).collect()
}

/// A body of shared/fixtures/metrics.
fn fixture(name: &str) -> String {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/metrics/"
    );
    std::fs::read_to_string(format!("{dir}{name}")).unwrap()
}

/// Room for a whole vLLM body.
const WHOLE: usize = 4 << 20;

/// A vLLM sampler of `target` that asks for filtered bodies, and its metrics.
fn filtering_sampler(target: &Target) -> (Sampler, Arc<Telemetry>) {
    let telemetry = Arc::new(Telemetry::new());
    let scraper = Scraper::new(target.url.clone(), WHOLE).unwrap();
    let filter = Filter::new(&target.url, read_samples(Role::Vllm));
    let sampler = Sampler::new(
        scraper,
        Extractor::new(Role::Vllm),
        filter,
        telemetry.clone(),
    );
    (sampler, telemetry)
}

/// An address nothing listens on.
async fn closed_port_url() -> Uri {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/metrics").parse().unwrap()
}

#[tokio::test]
async fn sends_exposition_headers_and_returns_the_body() {
    let expected = body(10_000);
    let mut target = Target::start(Reply::Text(expected.clone())).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();

    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().as_bytes(), expected);
    let headers = target.request().await;
    assert_eq!(headers["accept"], "text/plain;version=0.0.4");
    assert_eq!(
        headers["accept-encoding"], "identity",
        "no gzip on loopback"
    );

    let mut scraper = scraper.with_gzip(true);
    scraper.scrape(TIMEOUT).await.unwrap();
    assert_eq!(target.request().await["accept-encoding"], "gzip");
}

#[tokio::test]
async fn target_token_is_read_at_every_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "epp-token-1\n").unwrap();
    let mut target = Target::start(Reply::Text(body(100))).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT)
        .unwrap()
        .with_token_file(token.clone());

    scraper.scrape(TIMEOUT).await.unwrap();
    assert_eq!(
        target.request().await["authorization"],
        "Bearer epp-token-1"
    );
    std::fs::write(&token, "epp-token-2").unwrap();
    scraper.scrape(TIMEOUT).await.unwrap();
    assert_eq!(
        target.request().await["authorization"],
        "Bearer epp-token-2"
    );

    std::fs::remove_file(&token).unwrap();
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    assert!(
        err.to_string().starts_with("cannot read token file"),
        "{err}"
    );
    assert_eq!(err.metric_label(), "token");
}

#[tokio::test]
async fn decodes_gzip_into_reused_buffers() {
    let expected = body(50_000);
    let target = Target::start(Reply::Encoded("gzip", gzip(&expected))).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();

    let first = scraper.scrape(TIMEOUT).await.unwrap();
    assert_eq!(first.as_bytes(), expected);
    let first = first.as_ptr();
    let second = scraper.scrape(TIMEOUT).await.unwrap();
    assert_eq!(second.as_bytes(), expected);
    assert_eq!(second.as_ptr(), first, "decode buffer was reallocated");

    // Same for an uncompressed body in the receive buffer.
    target.set(Reply::Text(expected.clone()));
    let first = scraper.scrape(TIMEOUT).await.unwrap().as_ptr();
    let second = scraper.scrape(TIMEOUT).await.unwrap().as_ptr();
    assert_eq!(second, first, "receive buffer was reallocated");
}

#[tokio::test]
async fn non_200_is_an_error_with_the_status() {
    let target = Target::start(Reply::Status(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    assert_eq!(err.to_string(), "target returned HTTP 500");
    assert_eq!(err.metric_label(), "http_status");
}

#[tokio::test]
async fn connection_refused_names_the_target() {
    let url = closed_port_url().await;
    let mut scraper = Scraper::new(url.clone(), LIMIT).unwrap();
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    let text = err.to_string();
    let prefix = format!("cannot connect to {}: ", url.authority().unwrap());
    assert!(text.starts_with(&prefix), "{text}");
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    assert_eq!(err.metric_label(), "connect");
}

#[tokio::test]
async fn oversized_bodies_are_rejected_at_the_limit() {
    let exact = body(LIMIT);
    let target = Target::start(Reply::Text(exact.clone())).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();
    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().len(), LIMIT);

    let too_big = body(LIMIT + 1);
    for reply in [
        Reply::Text(too_big.clone()),
        Reply::Chunked(too_big.clone()),
        // Compresses far below the limit, expands above it.
        Reply::Encoded("gzip", gzip(&too_big)),
    ] {
        target.set(reply);
        let err = scraper.scrape(TIMEOUT).await.unwrap_err();
        assert!(
            matches!(err, ScrapeError::TooLarge { limit: LIMIT }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("metrics body exceeds the limit of {LIMIT} bytes")
        );
    }
    assert!(gzip(&too_big).len() < LIMIT / 10);

    // The scraper recovers once the body fits again.
    target.set(Reply::Text(exact));
    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().len(), LIMIT);
}

#[tokio::test]
async fn one_budget_covers_the_compressed_and_the_decoded_body() {
    let target = Target::start(Reply::Text(Vec::new())).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();
    // Decoded, it fits the limit on its own; with the compressed bytes still
    // held beside it, it does not.
    let almost = body(LIMIT - 64);
    let compressed = gzip(&almost);
    assert!(compressed.len() > 64);
    target.set(Reply::Encoded("gzip", compressed));
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    assert!(
        matches!(err, ScrapeError::TooLarge { limit: LIMIT }),
        "{err}"
    );
    let fits = body(LIMIT / 2);
    target.set(Reply::Encoded("gzip", gzip(&fits)));
    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().as_bytes(), fits);
}

#[tokio::test]
async fn a_failed_scrape_keeps_no_large_buffer() {
    // A limit well above the 64 KiB that buffers may keep between scrapes.
    const BIG: usize = 4 << 20;
    let too_big = body(BIG + 1);
    let target = Target::start(Reply::Chunked(too_big.clone())).await;
    let mut scraper = Scraper::new(target.url.clone(), BIG).unwrap();
    for reply in [
        Reply::Chunked(too_big.clone()),
        Reply::Encoded("gzip", gzip(&too_big)),
    ] {
        target.set(reply);
        scraper.scrape(TIMEOUT).await.unwrap_err();
        assert!(
            scraper.retained_bytes() < BIG / 8,
            "{} bytes kept after a failed scrape",
            scraper.retained_bytes()
        );
    }
}

#[tokio::test]
async fn corrupt_gzip_and_non_utf8_are_decode_errors() {
    let target = Target::start(Reply::Text(vec![b'a', 0xff, b'\n'])).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    assert!(matches!(err, ScrapeError::Utf8(_)), "{err}");
    assert_eq!(err.metric_label(), "decode");

    let mut truncated = gzip(&body(1000));
    truncated.truncate(truncated.len() / 2);
    target.set(Reply::Encoded("gzip", truncated));
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    assert!(matches!(err, ScrapeError::Gzip(_)), "{err}");
    assert!(
        err.to_string().starts_with("gzip body cannot be decoded: "),
        "{err}"
    );

    target.set(Reply::Encoded("br", body(100)));
    let err = scraper.scrape(TIMEOUT).await.unwrap_err();
    assert_eq!(err.to_string(), "unsupported content-encoding \"br\"");

    // A good body afterwards still decodes: the decoder state was reset.
    let expected = body(3000);
    target.set(Reply::Encoded("gzip", gzip(&expected)));
    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().as_bytes(), expected);
}

#[tokio::test]
async fn slow_target_times_out() {
    let target = Target::start(Reply::Hang).await;
    let mut scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();
    let err = scraper
        .scrape(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "scrape timed out after 200ms");
    assert_eq!(err.metric_label(), "timeout");
}

#[test]
fn only_http_and_https_targets_are_accepted() {
    for url in ["ftp://127.0.0.1:8000/metrics", "/metrics"] {
        let err = Scraper::new(url.parse().unwrap(), LIMIT).unwrap_err();
        assert!(err.to_string().contains(url), "{err}");
    }
}

#[tokio::test]
async fn https_targets_are_verified_against_the_given_ca_and_name() {
    let pki = certs::Pki::new();
    let expected = body(1_000);
    let target = Target::start_https(Reply::Text(expected.clone()), pki.rustls_server()).await;
    let trusted = TargetTls {
        ca: Some(pki.ca.clone()),
        server_name: Some(certs::SERVER_NAME.into()),
        insecure_skip_verify: false,
    };
    let mut scraper = Scraper::with_tls(target.url.clone(), LIMIT, &trusted).unwrap();
    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().as_bytes(), expected);

    // The certificate names a Service, not the IP the pod is reached at.
    let by_ip = TargetTls {
        server_name: None,
        ..trusted.clone()
    };
    let other_ca = TargetTls {
        ca: Some(pki.other_ca()),
        ..trusted.clone()
    };
    for (tls, why) in [
        (by_ip, "certificate not valid for name"),
        (other_ca, "UnknownIssuer"),
    ] {
        let mut scraper = Scraper::with_tls(target.url.clone(), LIMIT, &tls).unwrap();
        let err = scraper.scrape(TIMEOUT).await.unwrap_err();
        assert_eq!(err.metric_label(), "connect", "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }

    let insecure = TargetTls {
        insecure_skip_verify: true,
        ..TargetTls::default()
    };
    let mut scraper = Scraper::with_tls(target.url.clone(), LIMIT, &insecure).unwrap();
    assert_eq!(scraper.scrape(TIMEOUT).await.unwrap().as_bytes(), expected);
}

#[tokio::test]
async fn failed_scrapes_become_samples_that_say_why() {
    let target = Target::start(Reply::Status(StatusCode::SERVICE_UNAVAILABLE)).await;
    let telemetry = Arc::new(Telemetry::new());
    let scraper = Scraper::new(target.url.clone(), LIMIT).unwrap();
    let mut sampler = Sampler::new(
        scraper,
        Extractor::new(Role::Vllm),
        Filter::disabled(),
        telemetry.clone(),
    );

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    for seq in 1..=3 {
        let sample = sampler.sample(TIMEOUT).await;
        assert_eq!(sample.seq, seq);
        assert!(!sample.up);
        assert_eq!(sample.error, "target returned HTTP 503");
        assert!(sample.models.is_empty() && sample.epp.is_none());
        assert!(sample.scrape_duration_us > 0);
        let at = Duration::from_millis(sample.scraped_at_ms as u64);
        assert!(
            at >= before - Duration::from_millis(1),
            "{at:?} < {before:?}"
        );
    }
    assert_eq!(telemetry.scrapes.get(), 3);
    assert_eq!(telemetry.scrape_failure("http_status").get(), 3);
    let metrics = telemetry.encode();
    assert!(
        metrics.contains("wva_agent_scrape_duration_seconds_count 3\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_target_that_ignores_the_filter_is_scraped_whole_without_losing_a_sample() {
    // Like Go's promhttp: every path and query gets the whole body.
    let body = fixture("vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom");
    let target = Target::start(Reply::Text(body.into_bytes())).await;
    let (mut sampler, telemetry) = filtering_sampler(&target);

    for _ in 0..3 {
        let sample = sampler.sample(TIMEOUT).await;
        assert!(sample.up, "{}", sample.error);
        assert!(!sample.models.is_empty());
        assert!(!sampler.filtered());
    }
    let asked = target.asked();
    assert!(
        asked[0].starts_with("/metrics?name%5B%5D=vllm%3A"),
        "{asked:?}"
    );
    assert!(
        asked[1].starts_with("/metrics/?name%5B%5D=vllm%3A"),
        "{asked:?}"
    );
    assert_eq!(asked[2..], ["/metrics"], "whole bodies from then on");
    assert!(telemetry.encode().contains("wva_agent_scrape_filtered 0\n"));
}

#[tokio::test]
async fn a_refused_filtered_request_is_followed_by_a_plain_one_in_the_same_tick() {
    let body = fixture("vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom");
    let target = Target::start(Reply::ByQuery {
        with: Box::new(Reply::Status(StatusCode::BAD_REQUEST)),
        without: Box::new(Reply::Text(body.into_bytes())),
    })
    .await;
    let (mut sampler, telemetry) = filtering_sampler(&target);

    for _ in 0..2 {
        let sample = sampler.sample(TIMEOUT).await;
        assert!(sample.up, "{}", sample.error);
    }
    let asked: Vec<_> = target
        .asked()
        .iter()
        .map(|uri| {
            uri.split_once('?')
                .map_or(uri.as_str(), |(path, _)| path)
                .to_owned()
        })
        .collect();
    assert_eq!(asked, ["/metrics", "/metrics", "/metrics/", "/metrics"]);
    assert_eq!(telemetry.scrape_failure("http_status").get(), 0);
}

#[tokio::test]
async fn a_target_that_filters_is_asked_for_the_read_samples_only() {
    let body = fixture("vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom");
    // What prometheus_client serves for the query: only the named samples.
    let names: Vec<_> = read_samples(Role::Vllm).collect();
    let filtered: String = body
        .lines()
        .filter(|line| {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            names.contains(&name)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let target = Target::start(Reply::ByQuery {
        with: Box::new(Reply::Text(filtered.into_bytes())),
        without: Box::new(Reply::Text(body.clone().into_bytes())),
    })
    .await;
    let (mut sampler, telemetry) = filtering_sampler(&target);
    let filtered_sample = sampler.sample(TIMEOUT).await;
    assert!(sampler.filtered());
    assert!(telemetry.encode().contains("wva_agent_scrape_filtered 1\n"));

    // The signals are those of the whole body.
    let scraper = Scraper::new(target.url.clone(), WHOLE).unwrap();
    let mut whole = Sampler::new(
        scraper,
        Extractor::new(Role::Vllm),
        Filter::disabled(),
        Arc::new(Telemetry::new()),
    );
    let whole_sample = whole.sample(TIMEOUT).await;
    assert!(whole_sample.up && filtered_sample.up);
    assert_eq!(filtered_sample.models, whole_sample.models);
    let asked = target.asked();
    let query = asked[0].strip_prefix("/metrics?").unwrap();
    assert_eq!(query.split('&').count(), names.len());
    assert_eq!(asked[1], "/metrics");
}
