//! The parser and the extractor on every real `/metrics` body in
//! `shared/fixtures/metrics` (see `SOURCES.md` there). Expected numbers come
//! from a naive reading of the same files (split on `{`, `}` and the last
//! blank), independent of the code under test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use wva_agent::extract::{ExtractError, Extractor};
use wva_agent::parse::{Line, ParseError, Parser};
use wva_agent::signal_spec::SignalSpec;
use wva_proto::v1::{EppPool, ModelSignals, NamedValue, Role, Sample};

const DP2: &str = "vllm-v1-0.11.0-generated-dp2-specdecode-busy.prom";
const LORA: &str = "vllm-v1-0.11.0-generated-lora-6adapters-45s.prom";
const V0_TEXT: &str = "vllm-v0-0.7.3-generated-multiproc-busy.prom";
const V0_OPENMETRICS: &str = "vllm-v0-0.7.3-generated-multiproc-busy.openmetrics.txt";
const V0_EXCERPT: &str = "vllm-v0-qwen2.5-coder-1.5b-aibrix-docs-excerpt.prom";
const VLLM: [&str; 5] = [DP2, LORA, V0_TEXT, V0_OPENMETRICS, V0_EXCERPT];

fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/metrics");
    assert!(
        dir.is_dir(),
        "fixtures not found at {}: the repository must be cloned next to shared/",
        dir.display()
    );
    dir
}

fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every exposition file, relative to the fixture directory.
fn all_fixtures() -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "prom" || e == "txt") {
                let rel = path.strip_prefix(dir()).unwrap();
                out.push(rel.to_str().unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

fn is_malformed(name: &str) -> bool {
    name.contains("UNUSED-MALFORMED")
}

/// A sample line read the simple way: `name{labels} value` or `name value`.
struct Naive<'a> {
    name: &'a str,
    labels: &'a str,
    value: f64,
}

fn naive(body: &str) -> Vec<Naive<'_>> {
    body.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
                None => (head, ""),
            };
            let value = value.parse().unwrap_or_else(|_| panic!("{l}"));
            Naive {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// Value of label `key` in a naive label block (no escaped quotes).
fn naive_label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=\"");
    let mut from = 0;
    while let Some(at) = labels[from..].find(&pat).map(|i| i + from) {
        let start = at + pat.len();
        if at == 0 || matches!(labels.as_bytes()[at - 1], b',' | b' ') {
            return labels[start..].split('"').next();
        }
        from = start;
    }
    None
}

fn naive_sum(body: &str, name: &str) -> f64 {
    naive(body)
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn parse_all(body: &str) -> (Vec<(usize, wva_agent::parse::Sample<'_>)>, Vec<ParseError>) {
    let (mut samples, mut errors) = (Vec::new(), Vec::new());
    let mut parser = Parser::new(body);
    while let Some(line) = parser.next() {
        match line {
            Ok(Line::Sample(s)) => samples.push((parser.line_number(), s)),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    (samples, errors)
}

fn extract(role: Role, body: &str) -> Result<Sample, ExtractError> {
    let mut x = Extractor::new(role);
    x.extract(body)?;
    assert_eq!(x.skipped_lines(), 0, "{:?}", x.first_skipped());
    let mut sample = Sample::default();
    x.fill(&mut sample);
    Ok(sample)
}

fn one_model(name: &str) -> ModelSignals {
    let sample = extract(Role::Vllm, &read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    match sample.models.as_slice() {
        [m] => m.clone(),
        other => panic!("{name}: expected one model, got {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn every_fixture_parses_like_the_naive_reading() {
    let files = all_fixtures();
    assert_eq!(files.len(), 46, "{files:?}");
    for name in &files {
        let body = read(name);
        let (samples, errors) = parse_all(&body);
        assert_eq!(errors, [], "{name}");
        let expected = naive(&body);
        assert_eq!(samples.len(), expected.len(), "{name}");
        for ((line, got), want) in samples.iter().zip(&expected) {
            let at = format!("{name}:{line}");
            assert_eq!(got.name, want.name, "{at}");
            assert_eq!(got.value.to_bits(), want.value.to_bits(), "{at}");
            assert_eq!(got.timestamp, None, "{at}");
            assert_eq!(
                got.labels.iter().count(),
                want.labels.matches("=\"").count(),
                "{at}"
            );
            for label in got.labels {
                assert_eq!(
                    Some(label.raw_value),
                    naive_label(want.labels, label.name),
                    "{at}"
                );
            }
        }
    }
}

#[test]
fn sample_counts_match_sources_md() {
    // The "lines / samples" column of SOURCES.md.
    for (name, samples) in [
        (DP2, 802),
        (LORA, 681),
        (V0_TEXT, 248),
        (V0_OPENMETRICS, 248),
        (V0_EXCERPT, 29),
    ] {
        assert_eq!(parse_all(&read(name)).0.len(), samples, "{name}");
    }
}

#[test]
fn malformed_fixtures_are_valid_line_by_line_and_carry_no_signal() {
    // Their defects are family-level, which a line parser does not judge:
    // a non-canonical `le="Inf"` (OpenMetrics: parsers must accept any
    // spelling of a number), a family interrupted by a misspelt name and
    // resumed, a repeated series, blank lines.
    let files: Vec<_> = all_fixtures()
        .into_iter()
        .filter(|f| is_malformed(f))
        .collect();
    assert_eq!(files.len(), 3);
    for name in &files {
        let body = read(name);
        let (samples, _) = parse_all(&body);
        let (line, bound) = samples
            .iter()
            .find(|(_, s)| s.labels.get("le").is_some_and(|l| l.raw_value == "Inf"))
            .unwrap();
        assert_eq!((*line, bound.value), (38, 2.0), "{name}");
        let sample = extract(Role::Epp, &body).unwrap();
        assert_eq!(sample.epp.unwrap(), Default::default(), "{name}");
        assert!(
            matches!(
                extract(Role::Vllm, &body),
                Err(ExtractError::NoVllmMetrics(_))
            ),
            "{name}"
        );
    }
    let tpot = read("epp-gie-v1.5.0/request_tpot_seconds_metric.UNUSED-MALFORMED.prom");
    let (samples, _) = parse_all(&tpot);
    let stray: Vec<_> = samples
        .iter()
        .filter(|(_, s)| s.name.starts_with("iinference"))
        .map(|(line, _)| *line)
        .collect();
    assert_eq!(stray, [43]);
}

#[test]
fn dp2_engines_are_summed_and_kv_weighted_by_blocks() {
    let body = read(DP2);
    let m = one_model(DP2);
    assert_eq!(m.model, "/models/meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(m.engines, 2);

    // num_requests_running lines: engine 0 → 129.0, engine 1 → 73.0.
    assert_eq!(m.requests_running, 202.0);
    assert_eq!(
        m.requests_running,
        naive_sum(&body, "vllm:num_requests_running")
    );
    assert_eq!(
        m.requests_waiting,
        naive_sum(&body, "vllm:num_requests_waiting")
    );

    let lines = naive(&body);
    let blocks_of = |engine: &str| -> f64 {
        let info = lines
            .iter()
            .find(|s| {
                s.name == "vllm:cache_config_info"
                    && naive_label(s.labels, "engine") == Some(engine)
            })
            .unwrap();
        naive_label(info.labels, "num_gpu_blocks")
            .unwrap()
            .parse()
            .unwrap()
    };
    let (mut weighted, mut weight) = (0.0, 0.0);
    for kv in lines
        .iter()
        .filter(|s| s.name == "vllm:kv_cache_usage_perc")
    {
        let blocks = blocks_of(naive_label(kv.labels, "engine").unwrap());
        weighted += kv.value * blocks;
        weight += blocks;
    }
    // 0.26094863420427555 and 0.16036965558194774, 26944 blocks each.
    assert_eq!(weight, 2.0 * 26944.0);
    assert!(
        close(m.kv_cache_usage, weighted / weight),
        "{}",
        m.kv_cache_usage
    );
    assert!(close(
        m.kv_cache_usage,
        (0.26094863420427555 + 0.16036965558194774) / 2.0
    ));
    assert_eq!(m.num_gpu_blocks, 53888);
    assert_eq!(m.block_size, 16);

    let c = m.counters.unwrap();
    let sum = |n: &str| naive_sum(&body, n);
    assert_eq!(c.prompt_tokens, sum("vllm:prompt_tokens_total"));
    assert_eq!(c.generation_tokens, sum("vllm:generation_tokens_total"));
    // stop 10206 + 9993, length 1747 + 1782, abort 118 + 118.
    assert_eq!(c.request_success, 23964.0);
    assert_eq!(c.request_success, sum("vllm:request_success_total"));
    assert_eq!(
        c.request_prompt_tokens_sum,
        sum("vllm:request_prompt_tokens_sum")
    );
    assert_eq!(
        c.request_prompt_tokens_count,
        sum("vllm:request_prompt_tokens_count")
    );
    assert_eq!(
        c.request_generation_tokens_sum,
        sum("vllm:request_generation_tokens_sum")
    );
    assert_eq!(
        c.request_generation_tokens_count,
        sum("vllm:request_generation_tokens_count")
    );
    assert_eq!(c.prefix_cache_hits, sum("vllm:prefix_cache_hits_total"));
    assert_eq!(
        c.prefix_cache_queries,
        sum("vllm:prefix_cache_queries_total")
    );
    assert_eq!(
        c.ttft_seconds_sum,
        sum("vllm:time_to_first_token_seconds_sum")
    );
    assert_eq!(
        c.ttft_seconds_count,
        sum("vllm:time_to_first_token_seconds_count")
    );
    assert_eq!(
        c.itl_seconds_sum,
        sum("vllm:inter_token_latency_seconds_sum")
    );
    assert_eq!(
        c.itl_seconds_count,
        sum("vllm:inter_token_latency_seconds_count")
    );
}

#[test]
fn lora_fixture_reads_the_base_model_and_ignores_adapter_info() {
    let body = read(LORA);
    let info = naive(&body)
        .iter()
        .filter(|s| s.name == "vllm:lora_requests_info")
        .count();
    assert_eq!(info, 265);
    let m = one_model(LORA);
    assert_eq!(m.model, "meta-llama/Llama-3.1-8B-Instruct");
    // Gauge lines: running 11.0, waiting 5.0, kv 0.06798986486486487;
    // cache_config_info: num_gpu_blocks="9472", block_size="16".
    assert_eq!((m.requests_running, m.requests_waiting), (11.0, 5.0));
    assert_eq!(m.kv_cache_usage, 0.06798986486486487);
    assert_eq!((m.num_gpu_blocks, m.block_size, m.engines), (9472, 16, 1));
    let c = m.counters.unwrap();
    assert_eq!(
        c.request_success,
        naive_sum(&body, "vllm:request_success_total")
    );
    assert_eq!(
        (c.prefix_cache_hits, c.prefix_cache_queries),
        (67712.0, 219516.0)
    );
}

#[test]
fn v0_text_and_openmetrics_yield_the_same_signals() {
    let text = extract(Role::Vllm, &read(V0_TEXT)).unwrap();
    let om = extract(Role::Vllm, &read(V0_OPENMETRICS)).unwrap();
    assert_eq!(text, om);

    let body = read(V0_TEXT);
    let m = one_model(V0_OPENMETRICS);
    assert_eq!(m.model, "Qwen/Qwen2.5-7B-Instruct");
    // gpu_cache_usage_perc 0.059571428571428574; no engine label anywhere;
    // cache_config_info num_gpu_blocks="28000".
    assert_eq!(m.kv_cache_usage, 0.059571428571428574);
    assert_eq!((m.num_gpu_blocks, m.block_size, m.engines), (28000, 16, 1));
    assert_eq!(
        m.requests_running,
        naive_sum(&body, "vllm:num_requests_running")
    );
    let c = m.counters.unwrap();
    assert_eq!(c.prompt_tokens, 2.012951e6);
    assert_eq!(c.request_success, 2434.0 + 271.0);
    // Histograms come as _sum, buckets, _count in multiprocess mode.
    assert_eq!(
        c.ttft_seconds_sum,
        naive_sum(&body, "vllm:time_to_first_token_seconds_sum")
    );
    assert_eq!(c.ttft_seconds_count, 2728.0);
    // No inter_token_latency before 0.11: time_per_output_token instead.
    assert_eq!(
        c.itl_seconds_sum,
        naive_sum(&body, "vllm:time_per_output_token_seconds_sum")
    );
    assert_eq!(c.itl_seconds_count, 562415.0);
    // 0.7.3 exposes only a prefix-cache hit rate gauge, no counters.
    assert_eq!((c.prefix_cache_hits, c.prefix_cache_queries), (0.0, 0.0));
}

/// `body` with vLLM's metric names escaped as collectors without `:` in
/// their charset serve them: `vllm:x` becomes `vllm_x` in sample names and
/// in `# TYPE`/`# HELP`/`# UNIT` lines; label values stay as they were.
fn escaped(body: &str) -> String {
    body.lines()
        .map(|line| {
            for head in ["", "# TYPE ", "# HELP ", "# UNIT "] {
                if let Some(rest) = line
                    .strip_prefix(head)
                    .and_then(|l| l.strip_prefix("vllm:"))
                {
                    return format!("{head}vllm_{rest}\n");
                }
            }
            format!("{line}\n")
        })
        .collect()
}

#[test]
fn escaped_names_read_like_the_originals() {
    for name in VLLM {
        let body = read(name);
        let escaped = escaped(&body);
        assert!(!escaped.contains("\nvllm:"), "{name}: every name escaped");
        let original = extract(Role::Vllm, &body).unwrap();
        assert_eq!(extract(Role::Vllm, &escaped).unwrap(), original, "{name}");
    }
    // Both forms in one body: the first is read, nothing is counted twice.
    let body = read(DP2);
    let both = format!("{body}{}", escaped(&body));
    assert_eq!(
        extract(Role::Vllm, &both).unwrap(),
        extract(Role::Vllm, &body).unwrap()
    );
}

#[test]
fn truncated_excerpt_yields_the_signals_before_the_cut() {
    let m = one_model(V0_EXCERPT);
    assert_eq!(m.model, "Qwen/Qwen2.5-Coder-1.5B-Instruct");
    // num_gpu_blocks="81767"; prompt 148.0, generation 955.0, success 4.0.
    assert_eq!((m.num_gpu_blocks, m.engines), (81767, 1));
    let c = m.counters.unwrap();
    assert_eq!(
        (c.prompt_tokens, c.generation_tokens, c.request_success),
        (148.0, 955.0, 4.0)
    );
}

#[test]
fn a_body_without_final_newline_reads_the_same() {
    for name in all_fixtures() {
        let body = read(&name);
        let trimmed = body.trim_end_matches('\n');
        assert_eq!(
            parse_all(trimmed).0.len(),
            parse_all(&body).0.len(),
            "{name}"
        );
    }
    for name in VLLM {
        let body = read(name);
        let full = extract(Role::Vllm, &body).unwrap();
        assert_eq!(
            extract(Role::Vllm, body.trim_end()).unwrap(),
            full,
            "{name}"
        );
    }
}

fn epp_fixtures() -> Vec<String> {
    all_fixtures()
        .into_iter()
        .filter(|f| f.starts_with("epp-") && !is_malformed(f))
        .collect()
}

#[test]
fn every_epp_fixture_is_recognised_and_vllm_fixtures_are_not() {
    let files = epp_fixtures();
    assert_eq!(files.len(), 25 - 2 + 16 - 1);
    for name in &files {
        let body = read(name);
        let sample = extract(Role::Epp, &body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let epp = sample.epp.unwrap();
        // No fixture holds a flow-control queue gauge.
        assert!(epp.queues.is_empty(), "{name}");
        let pool_file = ["kv_cache_avg", "queue_avg_size", "running_requests_avg"]
            .iter()
            .any(|p| name.contains(p));
        assert_eq!(epp.pools.len(), usize::from(pool_file), "{name}");
        assert!(
            matches!(
                extract(Role::Vllm, &body),
                Err(ExtractError::NoVllmMetrics(_))
            ),
            "{name}"
        );
    }
    for name in VLLM {
        assert!(
            matches!(
                extract(Role::Epp, &read(name)),
                Err(ExtractError::NoEppMetrics(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn epp_pool_averages_from_both_generations_of_names() {
    for (folder, prefix) in [("epp-gie-v1.5.0", ""), ("epp-llm-d-router", "llm_d_")] {
        let body: String = [
            "kv_cache_avg_metrics",
            "queue_avg_size_metrics",
            "running_requests_avg_metrics",
        ]
        .iter()
        .map(|f| read(&format!("{folder}/{prefix}{f}.prom")))
        .collect();
        let value = |family: &str| {
            let want: Vec<_> = naive(&body)
                .into_iter()
                .filter(|s| s.name.ends_with(family))
                .collect();
            assert_eq!(want.len(), 1, "{folder} {family}");
            assert_eq!(naive_label(want[0].labels, "name"), Some("p1"));
            Some(want[0].value)
        };
        let epp = extract(Role::Epp, &body).unwrap().epp.unwrap();
        // 0.3, 0.4 and 0.5 in both folders.
        assert_eq!(
            epp.pools,
            [EppPool {
                pool: "p1".into(),
                kv_cache_avg: value("average_kv_cache_utilization"),
                queue_avg: value("average_queue_size"),
                running_avg: value("average_running_requests"),
            }],
            "{folder}"
        );
    }
}

/// Two `--signal`s over the dp2 fixture's running requests.
fn dp2_signals() -> Vec<SignalSpec> {
    [
        "running=sum(vllm:num_requests_running)",
        r#"engine1_running=max(vllm:num_requests_running{engine="1"})"#,
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

#[test]
fn signals_on_the_dp2_fixture_match_the_naive_reading() {
    let body = read(DP2);
    let mut x = Extractor::with_signals(Role::Vllm, dp2_signals());
    x.extract(&body).unwrap();
    let mut sample = Sample::default();
    x.fill(&mut sample);
    let engine1 = naive(&body)
        .iter()
        .filter(|s| {
            s.name == "vllm:num_requests_running" && naive_label(s.labels, "engine") == Some("1")
        })
        .map(|s| s.value)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(engine1, 73.0);
    assert_eq!(
        sample.signals,
        [
            NamedValue {
                name: "running".into(),
                value: naive_sum(&body, "vllm:num_requests_running"),
            },
            NamedValue {
                name: "engine1_running".into(),
                value: engine1,
            },
        ]
    );
    // The role's own signals are what they are without signals configured.
    assert_eq!(sample.models, [one_model(DP2)]);
}

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts the allocations of the current thread, so tests running in
/// parallel do not disturb each other.
struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn steady_state_extraction_does_not_allocate() {
    let epp: String = epp_fixtures().iter().map(|f| read(f)).collect();
    let mut bodies: Vec<(Role, String)> = VLLM.iter().map(|f| (Role::Vllm, read(f))).collect();
    bodies.push((Role::Epp, epp));
    // A foreign malformed line is skipped without allocating either.
    bodies.push((Role::Vllm, format!("{}broken{{ 1\n", read(DP2))));
    for (role, body) in &bodies {
        let mut x = Extractor::new(*role);
        let mut sample = Sample::default();
        let warm_up = allocations_during(|| {
            x.extract(body).unwrap();
            x.fill(&mut sample);
        });
        assert!(warm_up > 0, "the first scrape sets up names and buffers");
        let first = sample.clone();
        let n = allocations_during(|| {
            for _ in 0..3 {
                x.extract(body).unwrap();
                x.fill(&mut sample);
            }
        });
        assert_eq!(n, 0, "{role:?} body of {} bytes", body.len());
        assert_eq!(sample, first);
        let parsed = allocations_during(|| {
            for line in Parser::new(body) {
                if let Ok(Line::Sample(s)) = line {
                    std::hint::black_box(s.labels.iter().count());
                }
            }
        });
        assert_eq!(parsed, 0);
    }
}

#[test]
fn steady_state_extraction_with_signals_does_not_allocate() {
    let body = read(DP2);
    let mut x = Extractor::with_signals(Role::Vllm, dp2_signals());
    let mut sample = Sample::default();
    x.extract(&body).unwrap();
    x.fill(&mut sample);
    assert_eq!(sample.signals.len(), 2);
    let first = sample.clone();
    let n = allocations_during(|| {
        for _ in 0..3 {
            x.extract(&body).unwrap();
            x.fill(&mut sample);
        }
    });
    assert_eq!(n, 0);
    assert_eq!(sample, first);
}
