//! What an agent sends, as the aggregator receives it: protobuf decoding of
//! `AgentMessage`, `Hello` and `Sample` from arbitrary bytes, then the
//! ingest's validation of what decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wva_aggregator::grpc::ingest::{validate_hello, validate_sample};
use wva_core::analysis::model::ReplicaLoad;
use wva_core::analysis::saturation::is_saturated;
use wva_core::config::saturation::SaturationConfig;
use wva_proto::v1::agent_message::Kind;
use wva_proto::v1::{AgentMessage, Hello, Role, Sample};

/// Bound on a validation error, which the ingest logs and returns to the
/// agent: names in it are clipped to 253 bytes (up to 6 characters a byte
/// once escaped) and a number prints in at most about 310 characters.
const MAX_ERROR: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = AgentMessage::decode(data) {
        round_trips(&message);
        match &message.kind {
            Some(Kind::Hello(hello)) => check_hello(hello),
            Some(Kind::Sample(sample)) => check_sample(sample),
            None => {}
        }
    }
    if let Ok(hello) = Hello::decode(data) {
        round_trips(&hello);
        check_hello(&hello);
    }
    if let Ok(sample) = Sample::decode(data) {
        round_trips(&sample);
        check_sample(&sample);
    }
});

/// A decoded message encodes to what it decodes from (unknown fields are
/// dropped on the first decoding, so the first encoding is the reference).
fn round_trips<M: Message + Default>(message: &M) {
    let bytes = message.encode_to_vec();
    assert_eq!(bytes.len(), message.encoded_len());
    let again = M::decode(bytes.as_slice()).expect("an encoded message decodes");
    assert_eq!(again.encode_to_vec(), bytes);
}

fn check_hello(hello: &Hello) {
    match validate_hello(hello) {
        Ok(()) => assert!(matches!(
            Role::try_from(hello.role),
            Ok(Role::Vllm | Role::Epp | Role::Generic)
        )),
        Err(e) => assert!(e.len() <= MAX_ERROR, "{} bytes: {e}", e.len()),
    }
}

fn check_sample(sample: &Sample) {
    if let Err(e) = validate_sample(sample) {
        assert!(e.len() <= MAX_ERROR, "{} bytes: {e}", e.len());
        return;
    }
    if !sample.up {
        return;
    }
    // A validated reading is a plausible one: the analysis judges it by its
    // thresholds alone, never as broken.
    let config = SaturationConfig::default();
    for m in &sample.models {
        let load = ReplicaLoad {
            pod: "".into(),
            kv_cache_usage: m.kv_cache_usage,
            requests_waiting: m.requests_waiting,
            rates: None,
            kv_capacity_tokens: None,
            mean_prompt_tokens: None,
        };
        let by_thresholds = m.kv_cache_usage >= config.kv_cache_threshold
            || m.requests_waiting >= config.queue_length_threshold;
        assert_eq!(is_saturated(&load, &config), by_thresholds, "{m:?}");
        assert!(m.requests_running.is_finite() && m.requests_running >= 0.0);
    }
    for q in sample.epp.iter().flat_map(|e| &e.queues) {
        assert!(q.queue_size.is_finite() && q.queue_size >= 0.0, "{q:?}");
        assert!(q.queue_bytes.is_finite() && q.queue_bytes >= 0.0, "{q:?}");
    }
}
