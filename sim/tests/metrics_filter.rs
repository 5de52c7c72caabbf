//! `/metrics?name[]=…` over HTTP: only the named samples, with the headers
//! of their families, as prometheus_client's ASGI app answers it.

mod common;

use common::Server;
use http::{Method, StatusCode};

/// Two engine ranks with speculative decoding: every kind of family.
const DP2: [&str; 4] = ["--data-parallel-size", "2", "--num-speculative-tokens", "3"];

/// Sample names a scraper reads: a gauge, a counter's `_total`, a
/// histogram's `_sum` and `_count`, an info gauge.
const NAMES: [&str; 5] = [
    "vllm:num_requests_running",
    "vllm:prompt_tokens_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:cache_config_info",
];

async fn get(server: &Server, path: &str) -> String {
    let (head, body) = server.request(Method::GET, path, "").await;
    assert_eq!(head.status, StatusCode::OK, "GET {path}");
    assert_eq!(
        head.headers[http::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    String::from_utf8(body.to_vec()).expect("utf-8")
}

fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or(line)
}

fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn query(names: &[&str]) -> String {
    let pairs: Vec<_> = names
        .iter()
        .map(|n| format!("name%5B%5D={}", n.replace(':', "%3A")))
        .collect();
    pairs.join("&")
}

#[tokio::test]
async fn named_samples_only_on_both_paths() {
    let server = Server::start(&DP2).await;
    let full = get(&server, "/metrics").await;
    let wanted: Vec<&str> = samples(&full)
        .into_iter()
        .filter(|l| NAMES.contains(&sample_name(l)))
        .collect();
    // Two ranks of each, the histogram's sum and count included.
    assert_eq!(wanted.len(), 2 * NAMES.len());

    for path in ["/metrics", "/metrics/"] {
        let plain: Vec<_> = NAMES.iter().map(|n| format!("name[]={n}")).collect();
        for query in [plain.join("&"), query(&NAMES)] {
            let text = get(&server, &format!("{path}?{query}")).await;
            assert_eq!(samples(&text), wanted, "{path}?{query}");
            let families: Vec<_> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .collect();
            assert_eq!(
                families,
                [
                    "vllm:num_requests_running gauge",
                    "vllm:prompt_tokens_total counter",
                    "vllm:time_to_first_token_seconds histogram",
                    "vllm:cache_config_info gauge",
                ],
                "{path}?{query}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn without_names_the_whole_body() {
    let server = Server::start(&DP2).await;
    let full = get(&server, "/metrics").await;
    assert!(full.len() > 50_000, "a full body, {} bytes", full.len());
    for path in ["/metrics/", "/metrics?name[]=", "/metrics?other=1"] {
        assert_eq!(get(&server, path).await, full, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn family_names_of_counters_and_histograms_match_nothing() {
    let server = Server::start(&DP2).await;
    let names = [
        "vllm:prompt_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:none",
    ];
    assert_eq!(
        get(&server, &format!("/metrics?{}", query(&names))).await,
        ""
    );
    server.stop().await;
}
