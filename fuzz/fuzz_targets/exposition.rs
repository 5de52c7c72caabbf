//! The agent's exposition parser and signal extractor on arbitrary text, as
//! a scraped `/metrics` body reaches them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wva_agent::extract::Extractor;
use wva_agent::parse::{Line, Parser};
use wva_aggregator::grpc::ingest::validate_sample;
use wva_proto::MAX_MESSAGE_BYTES;
use wva_proto::v1::{Role, Sample};

/// The kv-cache families; their values are fractions on a sane server.
const KV_FAMILIES: [&str; 2] = ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];
/// Below this, sums over a body cannot overflow to infinity.
const SMALL: f64 = 1e300;
/// Rounding slack of the weighted kv-cache average.
const SLACK: f64 = 1e-9;

fuzz_target!(|data: &[u8]| {
    // The scrape layer hands over valid UTF-8 only; lossy decoding keeps
    // every mutation useful.
    let body = String::from_utf8_lossy(data);
    let inputs = check_lines(&body);
    for role in [Role::Vllm, Role::Epp, Role::Generic] {
        check_extraction(role, &body, inputs);
    }
});

/// What the body's well-formed samples hold, for the extractor's properties.
#[derive(Clone, Copy)]
struct Inputs {
    /// Every value is a finite number in `[0, SMALL]`.
    plain: bool,
    /// Every kv-cache value is in `[0, 1]`.
    fractions: bool,
}

/// Walks the body with the parser, checking each line on its own.
fn check_lines(body: &str) -> Inputs {
    let mut inputs = Inputs {
        plain: true,
        fractions: true,
    };
    let mut lines = Parser::new(body);
    let mut last = 0;
    while let Some(line) = lines.next() {
        assert!(lines.line_number() > last, "line numbers must increase");
        last = lines.line_number();
        assert!(!lines.line_text().contains('\n'));
        let Ok(Line::Sample(sample)) = line else {
            continue;
        };
        let name = sample.name.as_bytes();
        assert!(name[0].is_ascii_alphabetic() || b"_:".contains(&name[0]));
        assert!(
            name.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"_:".contains(&c))
        );
        assert!(sample.timestamp.is_none_or(f64::is_finite));
        for label in sample.labels {
            assert!(!label.name.is_empty());
            // The allocation-free comparison and the decoder agree.
            assert!(label.value_eq(&label.value()), "{label:?}");
            assert_eq!(
                sample.labels.get(label.name).map(|l| l.name),
                Some(label.name)
            );
        }
        let v = sample.value;
        inputs.plain &= (0.0..=SMALL).contains(&v);
        if KV_FAMILIES.contains(&sample.name) {
            inputs.fractions &= (0.0..=1.0).contains(&v);
        }
    }
    inputs
}

/// The extractor of `role`; a generic one forwards signals over a vLLM
/// family and an arbitrary name with a matcher.
fn extractor(role: Role) -> Extractor {
    let signals = match role {
        Role::Generic => ["a=sum(vllm:num_requests_running)", r#"b=max(x{y!="z"})"#]
            .iter()
            .map(|s| s.parse().expect("a valid --signal"))
            .collect(),
        _ => Vec::new(),
    };
    Extractor::with_signals(role, signals)
}

fn check_extraction(role: Role, body: &str, inputs: Inputs) {
    let mut fresh = extractor(role);
    let result = fresh.extract(body);
    let mut sample = Sample::default();
    fresh.fill(&mut sample);
    if result.is_err() {
        assert!(
            sample.models.is_empty() && sample.epp.is_none(),
            "{result:?}"
        );
    } else {
        check_signals(&sample, inputs);
    }

    // An extractor reused from another body (the agent keeps one for its
    // life) must give what a fresh one gives.
    let mut reused = extractor(role);
    let _ = reused.extract(second_half(body));
    assert_eq!(reused.extract(body), result);
    assert_eq!(reused.skipped_lines(), fresh.skipped_lines());
    assert_eq!(reused.first_skipped(), fresh.first_skipped());
    let mut again = Sample::default();
    reused.fill(&mut again);
    // Compared encoded, so that NaNs compare by their bits.
    assert_eq!(again.encode_to_vec(), sample.encode_to_vec());
}

/// The properties of a successful extraction.
fn check_signals(sample: &Sample, inputs: Inputs) {
    assert!(sample.encoded_len() <= MAX_MESSAGE_BYTES);
    // The counts and names always fit what the aggregator takes; only the
    // numbers the server reported may make it refuse a sample.
    let mut shape = sample.clone();
    shape.up = true;
    for m in &mut shape.models {
        (m.kv_cache_usage, m.requests_waiting, m.requests_running) = (0.0, 0.0, 0.0);
    }
    for q in shape.epp.iter_mut().flat_map(|e| &mut e.queues) {
        (q.queue_size, q.queue_bytes) = (0.0, 0.0);
    }
    for signal in &mut shape.signals {
        signal.value = 0.0;
    }
    if let Err(e) = validate_sample(&shape) {
        panic!("an extracted sample was refused: {e}");
    }

    for m in &sample.models {
        assert!(m.engines >= 1, "{m:?}");
        if inputs.fractions {
            assert!((0.0..=1.0 + SLACK).contains(&m.kv_cache_usage), "{m:?}");
        }
        if inputs.plain {
            let counters = m.counters.unwrap_or_default();
            let numbers = [
                m.requests_waiting,
                m.requests_running,
                counters.prompt_tokens,
                counters.generation_tokens,
                counters.request_prompt_tokens_sum,
                counters.request_prompt_tokens_count,
                counters.request_generation_tokens_sum,
                counters.request_generation_tokens_count,
                counters.request_success,
                counters.prefix_cache_hits,
                counters.prefix_cache_queries,
                counters.ttft_seconds_sum,
                counters.ttft_seconds_count,
                counters.itl_seconds_sum,
                counters.itl_seconds_count,
            ];
            assert!(numbers.iter().all(|v| v.is_finite() && *v >= 0.0), "{m:?}");
        }
    }
    if let (Some(epp), true) = (&sample.epp, inputs.plain) {
        for q in &epp.queues {
            assert!(q.queue_size.is_finite() && q.queue_size >= 0.0, "{q:?}");
            assert!(q.queue_bytes.is_finite() && q.queue_bytes >= 0.0, "{q:?}");
        }
        for p in &epp.pools {
            let averages = [p.kv_cache_avg, p.queue_avg, p.running_avg];
            assert!(
                averages
                    .iter()
                    .flatten()
                    .all(|v| v.is_finite() && *v >= 0.0),
                "{p:?}"
            );
        }
    }
}

/// The lines of the second half of `body`, a different body for the same
/// extractor to have seen first.
fn second_half(body: &str) -> &str {
    let middle = body.len() / 2;
    let newline = body.as_bytes()[middle..].iter().position(|&b| b == b'\n');
    newline.map_or("", |i| &body[middle + i + 1..])
}
