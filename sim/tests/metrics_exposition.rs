//! `/metrics` against vLLM 0.11's own output (the shared fixtures): same
//! families, types, label names and buckets; values consistent with what the
//! simulation did; well-formed text.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Family, MODEL, Server, call, families, fixture, json, replica, sample};
use http::{Method, StatusCode};

const LORA_FIXTURE: &str = "vllm-v1-0.11.0-generated-lora-6adapters-45s.prom";
const DP2_FIXTURE: &str = "vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom";

/// Fast latencies so requests in these tests finish in a few milliseconds.
const FAST: [&str; 8] = [
    "--itl-base",
    "1ms",
    "--itl-per-seq",
    "0s",
    "--prefill-overhead",
    "1ms",
    "--prefill-per-token",
    "0s",
];

fn assert_same_families(ours: &BTreeMap<String, Family>, theirs: &BTreeMap<String, Family>) {
    let our_names: BTreeSet<_> = ours.keys().collect();
    let their_names: BTreeSet<_> = theirs.keys().collect();
    assert_eq!(
        our_names,
        their_names,
        "family sets differ: only ours {:?}, only the fixture's {:?}",
        our_names.difference(&their_names).collect::<Vec<_>>(),
        their_names.difference(&our_names).collect::<Vec<_>>(),
    );
    for (name, family) in theirs {
        assert_eq!(
            &ours[name], family,
            "family {name} differs from the fixture"
        );
    }
}

/// The `vllm:` lines of an exposition without sample values and with the
/// model name blanked: what must match vLLM line for line.
fn skeleton(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| {
            line.starts_with("vllm:")
                || line.starts_with("# HELP vllm:")
                || line.starts_with("# TYPE vllm:")
        })
        .filter(|line| !line.starts_with("vllm:lora_requests_info{"))
        .map(|line| match line.starts_with('#') {
            true => line.to_owned(),
            false => {
                let (series, _value) = line.rsplit_once(' ').expect("sample has a value");
                match series.split_once("model_name=\"") {
                    Some((head, tail)) => {
                        let rest = tail.split_once('"').map_or("", |(_, rest)| rest);
                        format!("{head}model_name=\"M\"{rest}")
                    }
                    None => series.to_owned(),
                }
            }
        })
        .collect()
}

fn assert_same_lines(ours: &str, theirs: &str) {
    let (ours, theirs) = (skeleton(ours), skeleton(theirs));
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "line {i} of the vllm: exposition differs");
    }
    assert_eq!(ours.len(), theirs.len(), "different number of vllm: lines");
}

fn with_fast<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST.iter().chain(extra).copied().collect()
}

#[tokio::test(start_paused = true)]
async fn single_engine_with_lora_matches_the_lora_fixture() {
    let args = with_fast(&[
        "--lora-adapters",
        "chat-lora,tenant-a/finance-lora",
        "--max-loras",
        "4",
        "--num-gpu-blocks",
        "9472",
    ]);
    let replica = replica(&args);
    let body = r#"{"model": "tenant-a/finance-lora", "prompt": "hello", "max_tokens": 2}"#;
    let (status, response) = call(&replica, Method::POST, "/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{response:?}");
    assert_eq!(json(&response)["model"], "tenant-a/finance-lora");

    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    let expected = fixture(LORA_FIXTURE);
    assert_same_families(&families(&text), &families(&expected));
    assert_same_lines(&text, &expected);
    assert!(text.contains(
        "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"tenant-a/finance-lora\",waiting_lora_adapters=\"\"}"
    ));
}

#[tokio::test]
async fn data_parallel_with_spec_decode_over_http_matches_the_dp2_fixture() {
    let args = with_fast(&[
        "--data-parallel-size",
        "2",
        "--num-speculative-tokens",
        "3",
        "--max-model-len",
        "131072",
        "--num-gpu-blocks",
        "26944",
    ]);
    let server = Server::start(&args).await;
    let (head, body) = server.request(Method::GET, "/metrics", "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers[http::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let ours = families(&text);
    // The fixture serves the model under a path; label names, not values, are compared.
    let expected = fixture(DP2_FIXTURE);
    assert_same_families(&ours, &families(&expected));
    assert_same_lines(&text, &expected);
    for rank in ["0", "1"] {
        assert_eq!(
            sample(&text, "vllm:num_requests_running", &[("engine", rank)]),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                &[("engine", rank), ("position", "2")]
            ),
            0.0
        );
    }
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn default_replica_emits_the_families_without_optional_features() {
    let replica = replica(&[]);
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    let ours: BTreeSet<_> = families(&text).into_keys().collect();
    let mut expected: BTreeSet<_> = families(&fixture(LORA_FIXTURE)).into_keys().collect();
    expected.remove("vllm:lora_requests_info");
    assert_eq!(ours, expected);
    assert!(text.contains("vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\""));
    assert!(text.contains("num_gpu_blocks=\"2048\""));
}

#[tokio::test(start_paused = true)]
async fn values_follow_the_simulation() {
    let replica = replica(&with_fast(&["--seed", "3"]));
    // Three prompts of 8 characters (2 tokens) and one of 40 (10 tokens).
    let prompts = [
        "aaaaaaaa",
        "bbbbbbbb",
        "cccccccc",
        "dddddddddddddddddddddddddddddddddddddddd",
    ];
    for prompt in prompts {
        let body = format!(r#"{{"prompt": "{prompt}", "max_tokens": 5}}"#);
        let (status, body) = call(&replica, Method::POST, "/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    let (status, body) = call(
        &replica,
        Method::POST,
        "/v1/completions",
        r#"{"prompt": "x"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let default_tokens = json(&body)["usage"]["completion_tokens"]
        .as_u64()
        .expect("usage");
    assert_eq!(default_tokens, 256);

    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    let e0 = [("engine", "0"), ("model_name", MODEL)];
    assert_eq!(
        sample(
            &text,
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        ),
        5.0
    );
    assert_eq!(
        sample(
            &text,
            "vllm:request_success_total",
            &[("finished_reason", "stop")]
        ),
        0.0
    );
    assert_eq!(
        sample(&text, "vllm:prompt_tokens_total", &e0),
        2.0 * 3.0 + 10.0 + 1.0
    );
    assert_eq!(sample(&text, "vllm:prefix_cache_queries_total", &e0), 17.0);
    assert_eq!(sample(&text, "vllm:prefix_cache_hits_total", &e0), 0.0);
    assert_eq!(
        sample(&text, "vllm:generation_tokens_total", &e0),
        4.0 * 5.0 + 256.0
    );
    assert_eq!(
        sample(&text, "vllm:request_generation_tokens_sum", &e0),
        4.0 * 5.0 + 256.0
    );
    assert_eq!(
        sample(&text, "vllm:e2e_request_latency_seconds_count", &e0),
        5.0
    );
    // max_tokens was given by four requests only.
    assert_eq!(
        sample(&text, "vllm:request_params_max_tokens_count", &e0),
        4.0
    );
    assert_eq!(
        sample(&text, "vllm:request_max_num_generation_tokens_count", &e0),
        5.0
    );
    assert_eq!(
        sample(&text, "vllm:time_to_first_token_seconds_count", &e0),
        5.0
    );
    // Every token after the first is one decode interval.
    assert_eq!(
        sample(&text, "vllm:inter_token_latency_seconds_count", &e0),
        4.0 * 4.0 + 255.0
    );
    assert_eq!(sample(&text, "vllm:num_requests_running", &e0), 0.0);
    assert_eq!(sample(&text, "vllm:kv_cache_usage_perc", &e0), 0.0);
    assert_eq!(
        sample(&text, "vllm:request_prompt_tokens_bucket", &[("le", "2.0")]),
        3.0 + 1.0
    );
    assert_eq!(
        sample(
            &text,
            "vllm:request_prompt_tokens_bucket",
            &[("le", "10.0")]
        ),
        5.0
    );
}

#[tokio::test(start_paused = true)]
async fn exposition_is_well_formed() {
    let replica = replica(&with_fast(&[
        "--data-parallel-size",
        "2",
        "--lora-adapters",
        "a\"b",
        "--num-speculative-tokens",
        "2",
    ]));
    for model in [MODEL, "a\\\"b"] {
        let body = format!(r#"{{"model": "{model}", "prompt": "hi", "max_tokens": 3}}"#);
        let (status, response) = call(&replica, Method::POST, "/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{response:?}");
    }
    let text = String::from_utf8(replica.render_metrics().to_vec()).expect("utf-8");
    let mut typed = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut last_help = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            last_help = rest.split(' ').next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("TYPE name").to_owned();
            assert_eq!(
                last_help.as_deref(),
                Some(name.as_str()),
                "TYPE {name} follows its HELP"
            );
            assert!(typed.insert(name.clone()), "family {name} appears twice");
        } else {
            let (series_id, value) = line.rsplit_once(' ').expect("sample has a value");
            assert!(
                value == "+Inf" || value.parse::<f64>().is_ok(),
                "bad value in {line}"
            );
            assert!(
                series.insert(series_id.to_owned()),
                "duplicate series {series_id}"
            );
        }
    }
    assert!(text.ends_with('\n'));
    // Buckets are cumulative and end with +Inf = _count.
    let e1 = [("engine", "1")];
    let mut previous = 0.0;
    for le in ["0.001", "0.005", "0.01", "0.02", "0.04", "+Inf"] {
        let count = sample(
            &text,
            "vllm:time_to_first_token_seconds_bucket",
            &[("engine", "1"), ("le", le)],
        );
        assert!(count >= previous, "bucket {le} is not cumulative");
        previous = count;
    }
    assert_eq!(
        previous,
        sample(&text, "vllm:time_to_first_token_seconds_count", &e1)
    );
    assert!(
        text.contains("running_lora_adapters=\"a\\\"b\""),
        "adapter names are escaped"
    );
}
