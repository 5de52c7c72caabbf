//! Filtered scrapes (`name[]` query parameters) against the real Python side
//! of vLLM's `/metrics`: prometheus_client 0.26, the FastAPI instrumentator
//! 8.1, FastAPI and uvicorn serving the vLLM 0.11 dp2 fixture's families
//! (tests/exporter/vllm_metrics.py), asked for the samples the agent reads.
//!
//! What they establish:
//! * current vLLM: `/metrics` ignores `name[]`; `/metrics/` honours it;
//! * older vLLM (the ASGI app alone): both paths honour it;
//! * matching is by sample name: a counter's `_total`, a histogram's `_sum`
//!   and `_count`; a bare counter or histogram family name matches nothing;
//! * multi-process mode (`PROMETHEUS_MULTIPROC_DIR`, several API servers):
//!   a filtered answer is empty, `200` with no sample;
//! * `/metrics/` picks OpenMetrics whenever the Accept header lists it, at
//!   any q, and then writes `vllm:` sample names as `vllm_`.
//!
//! `scrape_cost` (ignored; `scripts/bench-exporter`) measures the
//! exporter's CPU time per scrape, whole body against filtered.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wva_e2e::exporter::{DP2_FIXTURE, Exporter, Processes, Wiring, fixture};
use wva_proto::v1::Role;

/// The text format alone.
const TEXT: &str = "text/plain;version=0.0.4";
/// Text first, OpenMetrics as a lesser alternative.
const TEXT_OR_OPENMETRICS: &str = "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5";

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A keep-alive HTTP/1.1 client, as the agent's scraper is.
fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str, accept: &str) -> Answer {
    let request = Request::get(format!("http://{addr}{path}"))
        .header(ACCEPT, accept)
        .header(ACCEPT_ENCODING, "identity")
        .body(Empty::new())
        .expect("valid request");
    let response = client.request(request).await.expect("a response");
    let status = response.status().as_u16();
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .expect("ASCII content type")
        .to_owned();
    let body = response.into_body().collect().await.expect("a body");
    let body = String::from_utf8(body.to_bytes().to_vec()).expect("UTF-8 body");
    Answer {
        status,
        content_type,
        body,
    }
}

/// The samples the agent reads from a vLLM server.
fn agent_names() -> Vec<&'static str> {
    wva_agent::extract::read_samples(Role::Vllm).collect()
}

/// `name[]` parameters for `names`, percent-encoded as a URL library would.
fn query(names: &[&str]) -> String {
    let pairs: Vec<_> = names
        .iter()
        .map(|n| format!("name%5B%5D={}", n.replace(':', "%3A")))
        .collect();
    pairs.join("&")
}

fn sample_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or(line)
}

fn sample_names(body: &str) -> BTreeSet<&str> {
    sample_lines(body).into_iter().map(sample_name).collect()
}

/// The `# TYPE` lines, in order (a filtered answer's order is arbitrary:
/// prometheus_client walks a set of collectors).
fn types(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect()
}

fn sorted<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut lines: Vec<_> = lines.into_iter().collect();
    lines.sort_unstable();
    lines
}

/// The lines of `body` for the samples named `names`, sorted.
fn lines_of<'a>(body: &'a str, names: &[&str]) -> Vec<&'a str> {
    sorted(
        sample_lines(body)
            .into_iter()
            .filter(|l| names.contains(&sample_name(l))),
    )
}

#[tokio::test]
async fn current_vllm_filters_only_with_a_trailing_slash() {
    let exporter = Exporter::start(Wiring::Current, Processes::Single)
        .await
        .expect("exporter");
    let client = client();
    let names = agent_names();
    let full = get(&client, exporter.addr, "/metrics", TEXT).await;
    assert_eq!(full.status, 200);
    assert_eq!(
        full.content_type,
        "text/plain; version=1.0.0; charset=utf-8"
    );
    assert!(full.body.len() > 90_000, "{} bytes", full.body.len());

    let ignored = get(
        &client,
        exporter.addr,
        &format!("/metrics?{}", query(&names)),
        TEXT,
    )
    .await;
    assert_eq!(ignored.status, 200);
    assert_eq!(sample_names(&ignored.body), sample_names(&full.body));

    let filtered = get(
        &client,
        exporter.addr,
        &format!("/metrics/?{}", query(&names)),
        TEXT,
    )
    .await;
    assert_eq!(filtered.status, 200);
    assert_eq!(
        filtered.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    // Every name the fixture has, with every series of it, values unchanged.
    let expected = lines_of(&full.body, &names);
    // Per rank: 3 gauges, cache_config_info, 4 counters, 3 request_success
    // reasons, 5 histograms' sum and count.
    assert_eq!(expected.len(), 2 * (3 + 1 + 4 + 3 + 5 * 2));
    assert_eq!(sorted(sample_lines(&filtered.body)), expected);
    assert_eq!(
        sorted(types(&filtered.body)),
        [
            "vllm:cache_config_info gauge",
            "vllm:generation_tokens_total counter",
            "vllm:inter_token_latency_seconds histogram",
            "vllm:kv_cache_usage_perc gauge",
            "vllm:num_requests_running gauge",
            "vllm:num_requests_waiting gauge",
            "vllm:prefix_cache_hits_total counter",
            "vllm:prefix_cache_queries_total counter",
            "vllm:prompt_tokens_total counter",
            "vllm:request_generation_tokens histogram",
            "vllm:request_prompt_tokens histogram",
            "vllm:request_success_total counter",
            "vllm:time_per_output_token_seconds histogram",
            "vllm:time_to_first_token_seconds histogram",
        ]
    );
    // Unencoded brackets and colons are read the same.
    let plain: Vec<_> = names.iter().map(|n| format!("name[]={n}")).collect();
    let same = get(
        &client,
        exporter.addr,
        &format!("/metrics/?{}", plain.join("&")),
        TEXT,
    )
    .await;
    assert_eq!(sorted(sample_lines(&same.body)), expected);
}

#[tokio::test]
async fn sample_names_select_not_family_names() {
    let exporter = Exporter::start(Wiring::Current, Processes::Single)
        .await
        .expect("exporter");
    let client = client();
    let filtered = |names: &'static [&'static str]| {
        let client = &client;
        let addr = exporter.addr;
        async move {
            let answer = get(client, addr, &format!("/metrics/?{}", query(names)), TEXT).await;
            assert_eq!(answer.status, 200, "{names:?}");
            answer.body
        }
    };

    const FAMILIES: &[&str] = &[
        "vllm:prompt_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:nothing",
    ];
    assert_eq!(
        filtered(FAMILIES).await,
        "",
        "family names and unknown names"
    );

    let body = filtered(&["vllm:prompt_tokens_total"]).await;
    assert_eq!(types(&body), ["vllm:prompt_tokens_total counter"]);
    assert_eq!(
        sample_names(&body),
        BTreeSet::from(["vllm:prompt_tokens_total"])
    );

    let body = filtered(&["vllm:time_to_first_token_seconds_sum"]).await;
    assert_eq!(types(&body), ["vllm:time_to_first_token_seconds histogram"]);
    assert_eq!(
        sample_lines(&body).len(),
        2,
        "one sum per engine rank:\n{body}"
    );

    // A `_created` sample alone still brings its family's (empty) header.
    let body = filtered(&["vllm:prompt_tokens_created"]).await;
    assert_eq!(
        types(&body),
        [
            "vllm:prompt_tokens_total counter",
            "vllm:prompt_tokens_created gauge"
        ]
    );
    assert_eq!(
        sample_names(&body),
        BTreeSet::from(["vllm:prompt_tokens_created"])
    );
}

#[tokio::test]
async fn an_accept_header_listing_openmetrics_renames_the_samples() {
    let exporter = Exporter::start(Wiring::Current, Processes::Single)
        .await
        .expect("exporter");
    let client = client();
    let path = format!("/metrics/?{}", query(&["vllm:num_requests_running"]));
    let open = get(&client, exporter.addr, &path, TEXT_OR_OPENMETRICS).await;
    assert_eq!(
        open.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    // HELP and TYPE keep the name; the samples are escaped.
    assert_eq!(types(&open.body), ["vllm:num_requests_running gauge"]);
    assert_eq!(
        sample_names(&open.body),
        BTreeSet::from(["vllm_num_requests_running"])
    );
    assert!(open.body.ends_with("# EOF\n"));

    let text = get(&client, exporter.addr, &path, TEXT).await;
    assert_eq!(
        sample_names(&text.body),
        BTreeSet::from(["vllm:num_requests_running"])
    );
    // The instrumentator's route always answers in text.
    let whole = get(&client, exporter.addr, "/metrics", TEXT_OR_OPENMETRICS).await;
    assert!(whole.content_type.starts_with("text/plain"));
    assert!(whole.body.contains("\nvllm:num_requests_running{"));
}

#[tokio::test]
async fn older_vllm_filters_on_both_paths() {
    let exporter = Exporter::start(Wiring::Asgi, Processes::Single)
        .await
        .expect("exporter");
    let client = client();
    let names = agent_names();
    let full = get(&client, exporter.addr, "/metrics", TEXT).await;
    let expected = lines_of(&full.body, &names);
    assert!(!expected.is_empty());
    for path in ["/metrics", "/metrics/"] {
        let filtered = get(
            &client,
            exporter.addr,
            &format!("{path}?{}", query(&names)),
            TEXT,
        )
        .await;
        assert_eq!(filtered.status, 200);
        assert_eq!(sorted(sample_lines(&filtered.body)), expected, "{path}");
    }
}

#[tokio::test]
async fn multi_process_servers_answer_filtered_scrapes_with_nothing() {
    let (current, older) = tokio::join!(
        Exporter::start(Wiring::Current, Processes::Multi(2)),
        Exporter::start(Wiring::Asgi, Processes::Multi(2)),
    );
    let (current, older) = (current.expect("exporter"), older.expect("exporter"));
    let client = client();
    let names = agent_names();
    let fixture = std::fs::read_to_string(fixture(DP2_FIXTURE)).expect("fixture");

    // The whole body merges the writers' files: the fixture's values, no
    // `_created` series, no python_/process_ families.
    let full = get(&client, current.addr, "/metrics", TEXT).await;
    assert_eq!(full.status, 200);
    assert_eq!(lines_of(&full.body, &names), lines_of(&fixture, &names));
    assert!(!full.body.contains("_created"));
    assert!(!full.body.contains("process_cpu_seconds_total"));

    let q = query(&names);
    let ignored = get(&client, current.addr, &format!("/metrics?{q}"), TEXT).await;
    assert_eq!(sample_names(&ignored.body), sample_names(&full.body));
    // The served registry holds only a MultiProcessCollector, which has no
    // names to look up, so a restricted registry collects nothing from it.
    for (exporter, path) in [
        (&current, "/metrics/"),
        (&older, "/metrics"),
        (&older, "/metrics/"),
    ] {
        let answer = get(&client, exporter.addr, &format!("{path}?{q}"), TEXT).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, ""), "{path}");
    }
}

#[tokio::test]
async fn the_simulator_filters_as_prometheus_client_does() {
    let exporter = Exporter::start(Wiring::Current, Processes::Single)
        .await
        .expect("exporter");
    // The fixture's server: two ranks, speculative decoding, its model path
    // and cache size, so label sets match series for series.
    let (_sim, sim) = wva_e2e::start_sim(
        "/models/meta-llama/Llama-3.1-8B-Instruct",
        &[
            "--data-parallel-size",
            "2",
            "--num-speculative-tokens",
            "3",
            "--max-model-len",
            "131072",
            "--num-gpu-blocks",
            "26944",
        ],
    )
    .await
    .expect("vllm-sim");
    let client = client();
    let mut names = agent_names();
    names.extend([
        "vllm:prompt_tokens",
        "vllm:request_params_n_created",
        "vllm:spec_decode_num_drafts_total",
        "vllm:iteration_tokens_total_bucket",
    ]);
    let path = format!("/metrics/?{}", query(&names));
    let python = get(&client, exporter.addr, &path, TEXT).await;
    let ours = get(&client, sim, &path, TEXT).await;
    assert_eq!(sorted(types(&ours.body)), sorted(types(&python.body)));
    let series = |body: &str| -> Vec<String> {
        let ids = sample_lines(body).into_iter();
        let mut ids: Vec<_> = ids
            .map(|l| l.rsplit_once(' ').expect("a value").0.to_owned())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(series(&ours.body), series(&python.body));
}

/// Scrapes in one measured batch, and batches of each kind.
const BATCH: u32 = 300;
const ROUNDS: usize = 12;
/// `/proc/<pid>/stat` counts CPU time in ticks of 10 ms (USER_HZ).
const MS_PER_TICK: f64 = 10.0;

/// One kind of scrape measured by [`scrape_cost`].
struct Case<'a> {
    what: &'static str,
    exporter: &'a Exporter,
    path: String,
    bytes: usize,
    /// CPU milliseconds per scrape, one figure per batch.
    per_scrape: Vec<f64>,
}

impl Case<'_> {
    fn median(&self) -> f64 {
        let mut sorted = self.per_scrape.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn worst(&self) -> f64 {
        self.per_scrape.iter().copied().fold(0.0, f64::max)
    }
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "a benchmark: scripts/bench-exporter"]
async fn scrape_cost() {
    let (single, multi) = tokio::join!(
        Exporter::start(Wiring::Current, Processes::Single),
        Exporter::start(Wiring::Current, Processes::Multi(2)),
    );
    let (single, multi) = (single.expect("exporter"), multi.expect("exporter"));
    let filtered = format!("/metrics/?{}", query(&agent_names()));
    let case = |what, exporter, path: &str| Case {
        what,
        exporter,
        path: path.to_owned(),
        bytes: 0,
        per_scrape: Vec::new(),
    };
    let mut cases = [
        case("one process, whole (/metrics)", &single, "/metrics"),
        case(
            "one process, filtered (/metrics/?name[]…)",
            &single,
            &filtered,
        ),
        // What any request costs: a filtered one that collects nothing.
        case(
            "one process, a name it lacks (/metrics/?name[]=vllm:none)",
            &single,
            "/metrics/?name[]=vllm:none",
        ),
        case("multi-process, whole (/metrics)", &multi, "/metrics"),
        case(
            "multi-process, filtered (/metrics/?name[]…)",
            &multi,
            &filtered,
        ),
    ];
    let client = client();
    for case in &mut cases {
        // Warm-up: connection, imports, first allocations.
        for _ in 0..20 {
            let answer = get(&client, case.exporter.addr, &case.path, TEXT).await;
            assert_eq!(answer.status, 200);
            case.bytes = answer.body.len();
        }
    }
    // Batches of every kind take turns, so a noisy neighbour on this shared
    // machine weighs on all of them alike.
    for round in 0..ROUNDS {
        for i in 0..cases.len() {
            let case = &mut cases[(round + i) % cases.len()];
            let before = case.exporter.cpu_ticks().expect("cpu ticks");
            for _ in 0..BATCH {
                get(&client, case.exporter.addr, &case.path, TEXT).await;
            }
            let ticks = case.exporter.cpu_ticks().expect("cpu ticks") - before;
            case.per_scrape
                .push(ticks as f64 * MS_PER_TICK / f64::from(BATCH));
        }
    }
    println!(
        "{ROUNDS} batches of {BATCH} scrapes per kind, CPU of the exporter process (user + system)"
    );
    println!("| scrape | body (bytes) | CPU per scrape, median | worst batch |");
    println!("|---|---|---|---|");
    for case in &cases {
        println!(
            "| {} | {} | {:.2} ms | {:.2} ms |",
            case.what,
            case.bytes,
            case.median(),
            case.worst()
        );
    }
    for (whole, filtered) in [(&cases[0], &cases[1]), (&cases[3], &cases[4])] {
        let instead = match filtered.bytes {
            0 => "the filtered answer is empty, so a scraper needs the whole body".to_owned(),
            _ => format!(
                "filtered at 4/s: {:.1} ms a second",
                4.0 * filtered.median()
            ),
        };
        println!(
            "{}: {:.1} ms of CPU a second; {instead}",
            whole.what.replace("whole (/metrics)", "whole at 1/s"),
            whole.median()
        );
    }
}
