//! The agent's sampler against the real `prometheus_client` of a
//! vLLM-shaped exporter: it finds the path that filters, or falls back to
//! whole bodies, and its signals are those of the whole body either way.

use std::sync::Arc;
use std::time::Duration;

use wva_agent::extract::{Extractor, read_samples};
use wva_agent::filter::Filter;
use wva_agent::sampler::Sampler;
use wva_agent::scrape::Scraper;
use wva_agent::telemetry::Telemetry;
use wva_e2e::exporter::{Exporter, Processes, Wiring};
use wva_proto::v1::{Role, Sample};

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 4 << 20;

fn sampler(exporter: &Exporter, filtered: bool) -> Sampler {
    wva_agent::tls::install_crypto_provider();
    let target = format!("http://{}/metrics", exporter.addr).parse().unwrap();
    let filter = if filtered {
        Filter::new(&target, read_samples(Role::Vllm))
    } else {
        Filter::disabled()
    };
    let scraper = Scraper::new(target, MAX_BODY).unwrap();
    Sampler::new(
        scraper,
        Extractor::new(Role::Vllm),
        filter,
        Arc::new(Telemetry::new()),
    )
}

/// Samples `ticks` times; every sample must carry signals.
async fn sample(sampler: &mut Sampler, ticks: usize) -> Sample {
    let mut last = Sample::default();
    for _ in 0..ticks {
        last = sampler.sample(TIMEOUT).await;
        assert!(last.up, "{}", last.error);
        assert!(!last.models.is_empty());
    }
    last
}

#[tokio::test]
async fn current_vllm_is_scraped_filtered_through_the_trailing_slash() {
    let exporter = Exporter::start(Wiring::Current, Processes::Single)
        .await
        .expect("exporter");
    let mut filtered = sampler(&exporter, true);
    // The first scrape learns that /metrics ignores the query (its whole
    // body is used), the second that /metrics/ honours it.
    sample(&mut filtered, 1).await;
    assert!(!filtered.filtered());
    let signals = sample(&mut filtered, 2).await;
    assert!(filtered.filtered());
    let whole = sample(&mut sampler(&exporter, false), 1).await;
    assert_eq!(signals.models, whole.models);
}

#[tokio::test]
async fn older_vllm_is_scraped_filtered_at_once() {
    let exporter = Exporter::start(Wiring::Asgi, Processes::Single)
        .await
        .expect("exporter");
    let mut filtered = sampler(&exporter, true);
    let signals = sample(&mut filtered, 1).await;
    assert!(filtered.filtered());
    let whole = sample(&mut sampler(&exporter, false), 1).await;
    assert_eq!(signals.models, whole.models);
}

#[tokio::test]
async fn several_api_servers_are_scraped_whole_without_losing_a_sample() {
    // A multi-process registry answers every filtered request with nothing.
    let exporter = Exporter::start(Wiring::Current, Processes::Multi(2))
        .await
        .expect("exporter");
    let mut filtered = sampler(&exporter, true);
    let signals = sample(&mut filtered, 3).await;
    assert!(!filtered.filtered());
    let whole = sample(&mut sampler(&exporter, false), 1).await;
    assert_eq!(signals.models, whole.models);
}
