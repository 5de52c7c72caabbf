use wva_proto::v1::{Counters, ModelSignals, Role, Sample};

use super::{ExtractError, Extractor};
use crate::parse::ErrorKind;

fn extract(role: Role, body: &str) -> Result<Sample, ExtractError> {
    let mut x = Extractor::new(role);
    x.extract(body)?;
    let mut sample = Sample::default();
    x.fill(&mut sample);
    Ok(sample)
}

fn models(body: &str) -> Vec<ModelSignals> {
    extract(Role::Vllm, body).unwrap().models
}

fn one_model(body: &str) -> ModelSignals {
    match models(body).as_slice() {
        [m] => m.clone(),
        other => panic!("expected one model, got {other:?}"),
    }
}

fn counters(m: &ModelSignals) -> Counters {
    m.counters.expect("counters are always filled")
}

fn cache_config(engine: &str, blocks: &str) -> String {
    format!(
        "vllm:cache_config_info{{block_size=\"16\",cache_dtype=\"auto\",{engine}num_gpu_blocks=\"{blocks}\",swap_space=\"4.0\"}} 1.0\n"
    )
}

#[test]
fn engine_ranks_are_summed_and_kv_weighted_by_blocks() {
    let body = format!(
        "vllm:num_requests_running{{engine=\"0\",model_name=\"m\"}} 3.0\n\
         vllm:num_requests_running{{engine=\"1\",model_name=\"m\"}} 2.0\n\
         vllm:num_requests_waiting{{engine=\"0\",model_name=\"m\"}} 1.0\n\
         vllm:num_requests_waiting{{engine=\"1\",model_name=\"m\"}} 4.0\n\
         vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"m\"}} 0.5\n\
         vllm:kv_cache_usage_perc{{engine=\"1\",model_name=\"m\"}} 0.2\n\
         {}{}",
        cache_config("engine=\"0\",", "3000"),
        cache_config("engine=\"1\",", "1000"),
    );
    let m = one_model(&body);
    assert_eq!(m.model, "m");
    assert_eq!((m.requests_running, m.requests_waiting), (5.0, 5.0));
    assert_eq!(m.engines, 2);
    assert_eq!(m.num_gpu_blocks, 4000);
    assert_eq!(m.block_size, 16);
    assert!((m.kv_cache_usage - (0.5 * 3000.0 + 0.2 * 1000.0) / 4000.0).abs() < 1e-12);
}

/// Found by fuzzing: block counts near u64::MAX on two engines overflowed
/// the sums (a panic with overflow checks, a KV usage far above 1 without).
#[test]
fn huge_block_counts_neither_wrap_nor_skew_the_kv_average() {
    let huge = "10000000000000000000";
    let body = format!(
        "vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"m\"}} 0.5\n\
         vllm:kv_cache_usage_perc{{engine=\"1\",model_name=\"m\"}} 0.5\n\
         {}{}",
        cache_config("engine=\"0\",", huge),
        cache_config("engine=\"1\",", huge),
    );
    let m = one_model(&body);
    assert_eq!(m.num_gpu_blocks, u64::MAX);
    assert!(
        (m.kv_cache_usage - 0.5).abs() < 1e-12,
        "{}",
        m.kv_cache_usage
    );
}

#[test]
fn kv_is_a_plain_average_when_blocks_are_unknown() {
    let body = format!(
        "vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"m\"}} 0.5\n\
         vllm:kv_cache_usage_perc{{engine=\"1\",model_name=\"m\"}} 0.2\n\
         {}{}",
        cache_config("engine=\"0\",", "3000"),
        cache_config("engine=\"1\",", "None"),
    );
    let m = one_model(&body);
    assert!((m.kv_cache_usage - 0.35).abs() < 1e-12);
    assert_eq!(m.num_gpu_blocks, 3000);
    assert_eq!(
        one_model("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.4").kv_cache_usage,
        0.4
    );
}

#[test]
fn cache_config_without_engine_applies_to_the_pod() {
    // V0 labels neither the gauges nor cache_config_info with an engine.
    let body = format!(
        "{}vllm:gpu_cache_usage_perc{{model_name=\"m\"}} 0.25\n",
        cache_config("", "28000")
    );
    let m = one_model(&body);
    assert_eq!(
        (m.kv_cache_usage, m.num_gpu_blocks, m.engines),
        (0.25, 28000, 1)
    );
}

#[test]
fn v1_names_win_over_v0_renames() {
    let m = one_model(
        "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9\n\
         vllm:kv_cache_usage_perc{model_name=\"m\"} 0.3\n\
         vllm:gpu_prefix_cache_hits_total{model_name=\"m\"} 100\n\
         vllm:prefix_cache_hits_total{model_name=\"m\"} 7\n\
         vllm:prefix_cache_queries_total{model_name=\"m\"} 9\n\
         vllm:time_per_output_token_seconds_sum{model_name=\"m\"} 50\n\
         vllm:inter_token_latency_seconds_sum{model_name=\"m\"} 5\n\
         vllm:inter_token_latency_seconds_count{model_name=\"m\"} 10\n",
    );
    let c = counters(&m);
    assert_eq!(m.kv_cache_usage, 0.3);
    assert_eq!((c.prefix_cache_hits, c.prefix_cache_queries), (7.0, 9.0));
    assert_eq!((c.itl_seconds_sum, c.itl_seconds_count), (5.0, 10.0));
}

#[test]
fn v0_renames_are_read_when_alone() {
    let c = counters(&one_model(
        "vllm:gpu_prefix_cache_hits{model_name=\"m\"} 3\n\
         vllm:gpu_prefix_cache_queries_total{model_name=\"m\"} 8\n\
         vllm:time_per_output_token_seconds_sum{model_name=\"m\"} 2.5\n\
         vllm:time_per_output_token_seconds_count{model_name=\"m\"} 100\n",
    ));
    assert_eq!((c.prefix_cache_hits, c.prefix_cache_queries), (3.0, 8.0));
    assert_eq!((c.itl_seconds_sum, c.itl_seconds_count), (2.5, 100.0));
}

#[test]
fn counters_histograms_and_success_reasons() {
    let c = counters(&one_model(
        "# TYPE vllm:prompt_tokens counter\n\
         vllm:prompt_tokens_total{model_name=\"m\"} 1.5e+06\n\
         vllm:prompt_tokens_created{model_name=\"m\"} 1.79e+09\n\
         vllm:generation_tokens_total{model_name=\"m\"} 20\n\
         vllm:request_success_total{finished_reason=\"stop\",model_name=\"m\"} 10\n\
         vllm:request_success_total{finished_reason=\"length\",model_name=\"m\"} 2\n\
         vllm:request_success_total{finished_reason=\"abort\",model_name=\"m\"} 1\n\
         vllm:request_prompt_tokens_sum{model_name=\"m\"} 300\n\
         vllm:request_prompt_tokens_bucket{le=\"+Inf\",model_name=\"m\"} 13\n\
         vllm:request_prompt_tokens_count{model_name=\"m\"} 13\n\
         vllm:request_generation_tokens_bucket{le=\"+Inf\",model_name=\"m\"} 13\n\
         vllm:request_generation_tokens_count{model_name=\"m\"} 13\n\
         vllm:request_generation_tokens_sum{model_name=\"m\"} 90\n\
         vllm:time_to_first_token_seconds_count{model_name=\"m\"} 13\n\
         vllm:time_to_first_token_seconds_sum{model_name=\"m\"} 1.25\n\
         # EOF\n",
    ));
    assert_eq!(
        c,
        Counters {
            prompt_tokens: 1.5e6,
            generation_tokens: 20.0,
            request_prompt_tokens_sum: 300.0,
            request_prompt_tokens_count: 13.0,
            request_generation_tokens_sum: 90.0,
            request_generation_tokens_count: 13.0,
            request_success: 13.0,
            ttft_seconds_sum: 1.25,
            ttft_seconds_count: 13.0,
            ..Counters::default()
        }
    );
}

#[test]
fn models_in_order_of_appearance_with_escaped_names() {
    let got = models(
        "vllm:num_requests_running{model_name=\"b\"} 1\n\
         vllm:num_requests_running{model_name=\"C:\\\\models\\\"x\\\"\"} 2\n\
         vllm:num_requests_waiting{model_name=\"b\"} 3\n\
         vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\"} 1.79e+09\n",
    );
    let names: Vec<_> = got.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(names, ["b", "C:\\models\"x\""]);
    assert_eq!(
        (got[0].requests_running, got[0].requests_waiting),
        (1.0, 3.0)
    );
    assert_eq!(got[1].requests_running, 2.0);
}

#[test]
fn fill_reuses_the_sample_and_forgets_vanished_models() {
    let mut x = Extractor::new(Role::Vllm);
    let mut sample = Sample::default();
    x.extract("vllm:num_requests_running{model_name=\"a\"} 1\nvllm:num_requests_running{model_name=\"b\"} 2\n")
        .unwrap();
    x.fill(&mut sample);
    assert_eq!(sample.models.len(), 2);
    let reused = sample.models[0].model.as_ptr();
    x.extract("vllm:num_requests_running{model_name=\"c\"} 5\n")
        .unwrap();
    x.fill(&mut sample);
    assert_eq!(sample.models.len(), 1);
    assert_eq!(
        (
            sample.models[0].model.as_str(),
            sample.models[0].requests_running
        ),
        ("c", 5.0)
    );
    assert_eq!(sample.models[0].model.as_ptr(), reused);
    assert_eq!(sample.epp, None);
}

#[test]
fn a_failed_extract_fills_nothing() {
    let mut x = Extractor::new(Role::Vllm);
    x.extract("vllm:num_requests_running{model_name=\"a\"} 1\n")
        .unwrap();
    let err = x
        .extract("vllm:num_requests_running{model_name=\"a\" 1\n")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed exposition: line 1: expected ',' or '}' after a label value, found '1'"
    );
    let mut sample = Sample::default();
    x.fill(&mut sample);
    assert!(sample.models.is_empty());
}

#[test]
fn malformed_vllm_line_fails_foreign_line_is_skipped() {
    let good = "vllm:num_requests_running{model_name=\"m\"} 4\n";
    let mut x = Extractor::new(Role::Vllm);
    let body = format!("python_info{{version=\"3.12\" 1\n{good}http_requests_total{{}} many\n");
    x.extract(&body).unwrap();
    assert_eq!(x.skipped_lines(), 2);
    assert_eq!(x.first_skipped().map(|e| e.line), Some(1));
    let mut sample = Sample::default();
    x.fill(&mut sample);
    assert_eq!(sample.models[0].requests_running, 4.0);

    // Any vllm: family counts, not only the ones read.
    let body = format!("{good}vllm:iteration_tokens_total_bucket{{le=\"1.0\"}} x\n");
    match x.extract(&body) {
        Err(ExtractError::Parse(e)) => {
            assert_eq!(e.line, 2);
            assert!(matches!(e.kind, ErrorKind::InvalidValue(_)));
        }
        other => panic!("{other:?}"),
    }
    // A body cut off inside a line.
    let cut = &good[..20];
    assert!(matches!(x.extract(cut), Err(ExtractError::Parse(_))));
}

#[test]
fn wrong_targets_are_reported() {
    let html = "<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n";
    for role in [Role::Vllm, Role::Epp] {
        let err = extract(role, html).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed exposition: no sample in the body, line 1: expected a metric name, found '<'"
        );
    }
    let epp_body = "inference_pool_average_queue_size{name=\"p\"} 1\n\
                    inference_pool_average_queue_size{name=\"q\"} 2\n\
                    process_cpu_seconds_total 3\n\
                    go_goroutines 4\n\
                    go_threads 5\n";
    assert_eq!(
        extract(Role::Vllm, epp_body).unwrap_err().to_string(),
        "no vLLM metrics found (is the target a vLLM server?): the body has 5 samples, \
         such as inference_pool_average_queue_size, process_cpu_seconds_total, go_goroutines"
    );
    assert_eq!(
        extract(Role::Vllm, "").unwrap_err().to_string(),
        "no vLLM metrics found (is the target a vLLM server?): the body has no samples"
    );
    // Escaped some other way: named, as the likely cause.
    let other_escape = "process_cpu_seconds_total 3\n\
                        U__vllm_3a_num__requests__running{model_name=\"m\"} 1\n";
    assert_eq!(
        extract(Role::Vllm, other_escape).unwrap_err().to_string(),
        "no vLLM metrics found (is the target a vLLM server?): the body has 2 samples, \
         such as process_cpu_seconds_total, U__vllm_3a_num__requests__running; \
         U__vllm_3a_num__requests__running mentions vLLM but in a form not read"
    );
    let vllm_body = "vllm:num_requests_running{model_name=\"m\"} 1\n";
    assert_eq!(
        extract(Role::Epp, vllm_body).unwrap_err().to_string(),
        "no endpoint-picker metrics found (is the target an EPP?): the body has 1 sample, \
         such as vllm:num_requests_running"
    );
    assert_eq!(
        extract(Role::Unspecified, vllm_body),
        Err(ExtractError::UnspecifiedRole)
    );
}

#[test]
fn vllm_families_without_signals_still_identify_the_server() {
    // A server that has not served a request yet.
    let s = extract(
        Role::Vllm,
        "vllm:lora_requests_info{max_lora=\"0\"} 1.7e+09\n",
    )
    .unwrap();
    assert!(s.models.is_empty());
}

const QUEUES: &str = "\
# TYPE llm_d_epp_flow_control_queue_size gauge
llm_d_epp_flow_control_queue_size{fairness_id=\"a\",inference_pool=\"p\",model_name=\"chat\",priority=\"0\",target_model_name=\"llama\"} 3
llm_d_epp_flow_control_queue_size{fairness_id=\"b\",inference_pool=\"p\",model_name=\"chat\",priority=\"10\",target_model_name=\"llama\"} 2
llm_d_epp_flow_control_queue_size{fairness_id=\"a\",inference_pool=\"p\",model_name=\"qwen\",priority=\"0\",target_model_name=\"\"} 1
llm_d_epp_flow_control_queue_bytes{fairness_id=\"a\",inference_pool=\"p\",model_name=\"chat\",priority=\"0\",target_model_name=\"llama\"} 4096
inference_extension_flow_control_queue_size{fairness_id=\"a\",inference_pool=\"p\",model_name=\"chat\",priority=\"0\",target_model_name=\"llama\"} 3
inference_extension_flow_control_queue_size{fairness_id=\"b\",inference_pool=\"p\",model_name=\"chat\",priority=\"10\",target_model_name=\"llama\"} 2
inference_extension_flow_control_queue_size{fairness_id=\"a\",inference_pool=\"p\",model_name=\"qwen\",priority=\"0\",target_model_name=\"\"} 1
inference_extension_flow_control_queue_size{fairness_id=\"a\",priority=\"0\"} 7
";

#[test]
fn epp_queues_per_target_model_canonical_names_first() {
    let epp = extract(Role::Epp, QUEUES).unwrap().epp.unwrap();
    let got: Vec<_> = epp
        .queues
        .iter()
        .map(|q| (q.model.as_str(), q.queue_size, q.queue_bytes))
        .collect();
    // The canonical family is not added to its deprecated mirror; a router
    // with only the old two-label family reports one unnamed queue.
    assert_eq!(
        got,
        [("llama", 5.0, 4096.0), ("qwen", 1.0, 0.0), ("", 7.0, 0.0)]
    );
    assert!(epp.pools.is_empty());
}

#[test]
fn epp_pool_averages_from_either_generation() {
    let body = "\
inference_pool_average_kv_cache_utilization{name=\"p1\"} 0.9
llm_d_epp_average_kv_cache_utilization{name=\"p1\"} 0.3
inference_pool_average_queue_size{name=\"p1\"} 0.4
inference_pool_average_running_requests{name=\"p2\"} 6
inference_objective_running_requests{model_name=\"m1\"} 1
";
    let s = extract(Role::Epp, body).unwrap();
    assert!(s.models.is_empty());
    let pools = s.epp.unwrap().pools;
    assert_eq!(pools.len(), 2);
    assert_eq!(
        (
            pools[0].pool.as_str(),
            pools[0].kv_cache_avg,
            pools[0].queue_avg,
            pools[0].running_avg
        ),
        ("p1", Some(0.3), Some(0.4), None)
    );
    assert_eq!(
        (pools[1].pool.as_str(), pools[1].running_avg),
        ("p2", Some(6.0))
    );
}

#[test]
fn epp_malformed_queue_line_fails_other_epp_lines_are_skipped() {
    let ok = "inference_pool_average_queue_size{name=\"p\"} 1\n";
    let mut x = Extractor::new(Role::Epp);
    x.extract(&format!(
        "{ok}inference_objective_request_total{{model_name=\"m\" 1\n"
    ))
    .unwrap();
    assert_eq!(x.skipped_lines(), 1);
    let bad = format!("{ok}llm_d_epp_flow_control_queue_size{{model_name=\"m\"}} lots\n");
    assert!(matches!(x.extract(&bad), Err(ExtractError::Parse(e)) if e.line == 2));
}

#[test]
fn a_body_with_more_models_than_one_sample_carries_is_a_failed_extraction() {
    let body = |n: usize| {
        (0..n)
            .map(|i| format!("vllm:num_requests_running{{model_name=\"adapter-{i}\"}} 1.0\n"))
            .collect::<String>()
    };
    assert_eq!(
        models(&body(super::slots::MAX_KEYS)).len(),
        super::slots::MAX_KEYS
    );
    // A hostile or broken target: 100,000 distinct models.
    let err = extract(Role::Vllm, &body(100_000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "more than {} distinct models in one body",
            super::slots::MAX_KEYS
        )
    );
}

#[test]
fn an_endpoint_picker_with_too_many_queues_is_a_failed_extraction() {
    let body: String = (0..100)
        .map(|i| {
            format!("inference_extension_flow_control_queue_size{{target_model_name=\"m{i}\"}} 1\n")
        })
        .collect();
    let err = extract(Role::Epp, &body).unwrap_err();
    assert!(
        matches!(
            err,
            ExtractError::TooManyKeys {
                what: "flow-control queues",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_over_long_model_name_is_a_failed_extraction_not_a_copy() {
    let body = format!(
        "vllm:num_requests_running{{model_name=\"{}\"}} 1.0\n",
        "m".repeat(8 << 20)
    );
    let err = extract(Role::Vllm, &body).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "a label naming one of the models is {} bytes, over {}",
            8 << 20,
            super::slots::MAX_KEY_BYTES
        )
    );
}

#[test]
fn extraction_gives_up_at_its_deadline() {
    let body: String = (0..3 * super::DEADLINE_CHECK_LINES)
        .map(|i| {
            format!(
                "vllm:num_requests_running{{model_name=\"m\",engine=\"{}\"}} 1.0\n",
                i % 4
            )
        })
        .collect();
    let mut x = Extractor::new(Role::Vllm);
    let past = std::time::Instant::now();
    let err = x.extract_within(&body, past).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "extraction ran out of time after {} lines",
            super::DEADLINE_CHECK_LINES
        )
    );
    let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
    assert!(x.extract_within(&body, later).is_ok());
}

/// `--signal` values, extracted from `body` by an extractor of `role`.
fn signals(role: Role, specs: &[&str], body: &str) -> Result<Vec<(String, f64)>, ExtractError> {
    let specs = specs.iter().map(|s| s.parse().unwrap()).collect();
    let mut x = Extractor::with_signals(role, specs);
    x.extract(body)?;
    let mut sample = Sample::default();
    x.fill(&mut sample);
    Ok(sample
        .signals
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect())
}

const REDIS: &str = "vllm:num_requests_running{model_name=\"m\"} 1\n\
     redis_key_size{db=\"db0\",key=\"jobs\"} 4\n\
     redis_key_size{db=\"db0\",key=\"mail\"} 10\n\
     redis_key_size{db=\"db1\",key=\"jobs\"} 2\n\
     redis_key_size{key=\"orphans\"} 7\n\
     redis_key_size_total{db=\"db0\",key=\"jobs\"} 100\n";

fn named(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|&(n, v)| (n.to_owned(), v)).collect()
}

#[test]
fn signals_aggregate_every_series_of_their_exact_name() {
    let got = signals(
        Role::Vllm,
        &[
            "s=sum(redis_key_size)",
            "hi=max(redis_key_size)",
            "lo=min(redis_key_size)",
            "mean=avg(redis_key_size)",
        ],
        REDIS,
    );
    assert_eq!(
        got.unwrap(),
        named(&[("s", 23.0), ("hi", 10.0), ("lo", 2.0), ("mean", 23.0 / 4.0)])
    );
}

#[test]
fn matchers_treat_a_missing_label_as_empty() {
    let got = signals(
        Role::Vllm,
        &[
            r#"jobs=sum(redis_key_size{key="jobs"})"#,
            r#"db0_jobs=sum(redis_key_size{db="db0",key="jobs"})"#,
            // A `!=` matcher also takes series without the label.
            r#"not_db0=sum(redis_key_size{db!="db0"})"#,
            // `=""` takes only series without it (or with it empty).
            r#"no_db=sum(redis_key_size{db=""})"#,
            r#"any_db=sum(redis_key_size{db!=""})"#,
        ],
        REDIS,
    );
    assert_eq!(
        got.unwrap(),
        named(&[
            ("jobs", 6.0),
            ("db0_jobs", 4.0),
            ("not_db0", 9.0),
            ("no_db", 7.0),
            ("any_db", 16.0),
        ])
    );
}

#[test]
fn matchers_compare_unescaped_values() {
    let body =
        "q{k=\"a\\\"b\"} 1\nq{k=\"a\\\\b\"} 2\nvllm:num_requests_running{model_name=\"m\"} 1\n";
    let got = signals(
        Role::Vllm,
        &[r#"quote=sum(q{k="a\"b"})"#, r#"slash=sum(q{k="a\\b"})"#],
        body,
    );
    assert_eq!(got.unwrap(), named(&[("quote", 1.0), ("slash", 2.0)]));
}

#[test]
fn a_signal_nothing_matched_is_absent_not_zero() {
    let got = signals(
        Role::Vllm,
        &[
            "gone=sum(redis_stream_length)",
            r#"other_db=max(redis_key_size{db="db9"})"#,
            "s=sum(redis_key_size)",
        ],
        REDIS,
    );
    assert_eq!(got.unwrap(), named(&[("s", 23.0)]));
}

#[test]
fn nan_values_are_skipped() {
    let body = "q 1\nq NaN\nq 3\nonly_nan NaN\nvllm:num_requests_running{model_name=\"m\"} 1\n";
    let got = signals(
        Role::Vllm,
        &["s=sum(q)", "lo=min(q)", "mean=avg(q)", "n=max(only_nan)"],
        body,
    );
    assert_eq!(
        got.unwrap(),
        named(&[("s", 4.0), ("lo", 1.0), ("mean", 2.0)])
    );
}

#[test]
fn signals_never_fail_a_body_nor_stand_in_for_the_role() {
    // Only the signal's series: still not a vLLM server.
    let err = signals(Role::Vllm, &["s=sum(redis_key_size)"], "redis_key_size 3\n");
    assert!(
        matches!(err, Err(ExtractError::NoVllmMetrics(_))),
        "{err:?}"
    );
    // A malformed line of the signal's metric is skipped like any foreign one.
    let body = format!("{REDIS}redis_key_size{{key=\"x\" 5\n");
    let mut x = Extractor::with_signals(Role::Vllm, vec!["s=sum(redis_key_size)".parse().unwrap()]);
    x.extract(&body).unwrap();
    assert_eq!(x.skipped_lines(), 1);
    let mut sample = Sample::default();
    x.fill(&mut sample);
    assert_eq!(sample.signals[0].value, 23.0);
    // Named samples are read: a filtered body serving them is still filtered.
    assert_eq!(x.unread_samples(), 1, "only redis_key_size_total");
    // An endpoint picker forwards them as well.
    let epp = "llm_d_epp_flow_control_queue_size{target_model_name=\"m\"} 2\nredis_key_size 3\n";
    let got = signals(Role::Epp, &["s=sum(redis_key_size)"], epp);
    assert_eq!(got.unwrap(), named(&[("s", 3.0)]));
}

#[test]
fn fill_forgets_signals_after_a_failed_extract() {
    let mut x = Extractor::with_signals(Role::Vllm, vec!["s=sum(redis_key_size)".parse().unwrap()]);
    let mut sample = Sample::default();
    x.extract(REDIS).unwrap();
    x.fill(&mut sample);
    assert_eq!(sample.signals.len(), 1);
    assert!(x.extract("redis_key_size 3\n").is_err());
    x.fill(&mut sample);
    assert!(sample.signals.is_empty());
}

/// An exporter's body, with no vLLM family.
const EXPORTER: &str = "# TYPE redis_up gauge\n\
     redis_up 1\n\
     redis_key_size{db=\"db0\",key=\"jobs\"} 37\n\
     redis_key_size{db=\"db0\",key=\"mail\"} 3\n";

#[test]
fn the_generic_role_reads_only_its_signals_from_any_exposition() {
    let jobs = ["jobs=max(redis_key_size{key=\"jobs\"})"];
    assert_eq!(
        signals(Role::Generic, &jobs, EXPORTER).unwrap(),
        [("jobs".to_string(), 37.0)]
    );
    let sample = extract_with(Role::Generic, &jobs, EXPORTER);
    assert!(sample.models.is_empty() && sample.epp.is_none());
    // The same body is the wrong target for the vLLM role.
    assert!(matches!(
        signals(Role::Vllm, &jobs, EXPORTER),
        Err(ExtractError::NoVllmMetrics(_))
    ));
}

#[test]
fn the_generic_role_leaves_an_unmatched_signal_absent() {
    // The exporter with its Redis down: up, no key series.
    let down = "redis_up 0\nredis_exporter_last_scrape_error 1\n";
    let jobs = ["jobs=max(redis_key_size{key=\"jobs\"})"];
    assert_eq!(signals(Role::Generic, &jobs, down).unwrap(), []);
    assert_eq!(signals(Role::Generic, &jobs, "").unwrap(), []);
}

#[test]
fn the_generic_role_fails_on_a_malformed_line_of_its_signals_only() {
    let jobs = ["jobs=max(redis_key_size{key=\"jobs\"})"];
    let foreign = format!("{EXPORTER}go_gc_duration_seconds{{quantile=\"0\" 1\n");
    assert_eq!(
        signals(Role::Generic, &jobs, &foreign).unwrap(),
        [("jobs".to_string(), 37.0)]
    );
    let own = format!("{EXPORTER}redis_key_size{{key=\"jobs\" 1\n");
    assert!(matches!(
        signals(Role::Generic, &jobs, &own),
        Err(ExtractError::Parse(_))
    ));
}

fn extract_with(role: Role, specs: &[&str], body: &str) -> Sample {
    let specs = specs.iter().map(|s| s.parse().unwrap()).collect();
    let mut x = Extractor::with_signals(role, specs);
    x.extract(body).unwrap();
    let mut sample = Sample::default();
    x.fill(&mut sample);
    sample
}
