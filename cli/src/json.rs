//! JSON views of the diagnostics messages: the protobuf field names in
//! camelCase (as protobuf's JSON mapping spells them), with 64-bit integers
//! as numbers so `jq` can compute with them, and absent values as `null`.

use serde::Serialize;
use wva_proto::v1 as pb;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot<'a> {
    pub decisions: Vec<Decision<'a>>,
    pub leading: bool,
    /// When the aggregator took the snapshot, Unix epoch milliseconds.
    pub at_ms: i64,
}

impl<'a> From<&'a pb::DecisionSnapshot> for Snapshot<'a> {
    fn from(s: &'a pb::DecisionSnapshot) -> Self {
        Snapshot {
            decisions: s.decisions.iter().map(Decision::from).collect(),
            leading: s.leading,
            at_ms: s.at_ms,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub model_id: &'a str,
    pub accelerator: &'a str,
    pub cost: f64,
    pub current_replicas: u32,
    pub ready_replicas: u32,
    pub desired_replicas: u32,
    pub basis: &'a str,
    pub change_reason: &'a str,
    pub data: &'a str,
    pub data_age_seconds: Option<f64>,
    pub inputs: Vec<Input<'a>>,
    pub decided_at_ms: i64,
    pub source_failure: &'a str,
    pub limit: &'a str,
    pub saturation: Option<Saturation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload<'a> {
    pub signal: &'a str,
    pub target_per_pod: f64,
    pub across: &'a str,
    pub total: Option<f64>,
    pub reporting: u32,
}

impl<'a> From<&'a pb::WorkloadSignal> for Workload<'a> {
    fn from(w: &'a pb::WorkloadSignal) -> Self {
        Workload {
            signal: &w.signal,
            target_per_pod: w.target_per_pod,
            across: &w.across,
            total: w.total,
            reporting: w.reporting,
        }
    }
}

impl<'a> From<&'a pb::VariantDecision> for Decision<'a> {
    fn from(d: &'a pb::VariantDecision) -> Self {
        Decision {
            namespace: &d.namespace,
            name: &d.name,
            model_id: &d.model_id,
            accelerator: &d.accelerator,
            cost: d.cost,
            current_replicas: d.current_replicas,
            ready_replicas: d.ready_replicas,
            desired_replicas: d.desired_replicas,
            basis: &d.basis,
            change_reason: &d.change_reason,
            data: &d.data,
            data_age_seconds: d.data_age_seconds,
            inputs: d
                .inputs
                .iter()
                .map(|i| Input {
                    pod: &i.pod,
                    kv_cache_usage: i.kv_cache_usage,
                    queue_length: i.queue_length,
                    saturated: i.saturated,
                })
                .collect(),
            decided_at_ms: d.decided_at_ms,
            source_failure: &d.source_failure,
            limit: &d.limit,
            saturation: d.saturation.as_ref().map(Saturation::from),
            workload: d.workload.as_ref().map(Workload::from),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Input<'a> {
    pub pod: &'a str,
    pub kv_cache_usage: f64,
    pub queue_length: f64,
    pub saturated: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Saturation {
    pub total_replicas: u32,
    pub saturated_replicas: u32,
    pub avg_spare_kv: f64,
    pub avg_spare_queue: f64,
    pub should_scale_up: bool,
    pub scale_down_safe: bool,
    pub kv_cache_threshold: f64,
    pub queue_length_threshold: f64,
    pub kv_spare_trigger: f64,
    pub queue_spare_trigger: f64,
}

impl From<&pb::ModelSaturation> for Saturation {
    fn from(s: &pb::ModelSaturation) -> Self {
        Saturation {
            total_replicas: s.total_replicas,
            saturated_replicas: s.saturated_replicas,
            avg_spare_kv: s.avg_spare_kv,
            avg_spare_queue: s.avg_spare_queue,
            should_scale_up: s.should_scale_up,
            scale_down_safe: s.scale_down_safe,
            kv_cache_threshold: s.kv_cache_threshold,
            queue_length_threshold: s.queue_length_threshold,
            kv_spare_trigger: s.kv_spare_trigger,
            queue_spare_trigger: s.queue_spare_trigger,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSample<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub variant: &'a str,
    /// `vllm`, `epp` or `unspecified`.
    pub role: &'static str,
    pub sample: Option<Sample<'a>>,
}

impl<'a> From<&'a pb::PodSample> for PodSample<'a> {
    fn from(s: &'a pb::PodSample) -> Self {
        PodSample {
            namespace: &s.namespace,
            pod: &s.pod,
            variant: &s.variant,
            role: role_name(s.role),
            sample: s.sample.as_ref().map(Sample::from),
        }
    }
}

/// The role's name, lowercase as the agent's `--role` spells it.
pub fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Vllm) => "vllm",
        Ok(pb::Role::Epp) => "epp",
        Ok(pb::Role::Generic) => "generic",
        Ok(pb::Role::Unspecified) | Err(_) => "unspecified",
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample<'a> {
    pub seq: u64,
    pub scraped_at_ms: i64,
    pub up: bool,
    pub error: &'a str,
    pub scrape_duration_us: u32,
    pub models: Vec<ModelSignals<'a>>,
    pub epp: Option<Epp<'a>>,
    /// Values forwarded with `--signal`, by name.
    pub signals: std::collections::BTreeMap<&'a str, f64>,
}

impl<'a> From<&'a pb::Sample> for Sample<'a> {
    fn from(s: &'a pb::Sample) -> Self {
        Sample {
            seq: s.seq,
            scraped_at_ms: s.scraped_at_ms,
            up: s.up,
            error: &s.error,
            scrape_duration_us: s.scrape_duration_us,
            models: s.models.iter().map(ModelSignals::from).collect(),
            epp: s.epp.as_ref().map(Epp::from),
            signals: s
                .signals
                .iter()
                .map(|v| (v.name.as_str(), v.value))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSignals<'a> {
    pub model: &'a str,
    pub kv_cache_usage: f64,
    pub requests_waiting: f64,
    pub requests_running: f64,
    pub num_gpu_blocks: u64,
    pub block_size: u32,
    pub counters: Option<Counters>,
    pub engines: u32,
}

impl<'a> From<&'a pb::ModelSignals> for ModelSignals<'a> {
    fn from(m: &'a pb::ModelSignals) -> Self {
        ModelSignals {
            model: &m.model,
            kv_cache_usage: m.kv_cache_usage,
            requests_waiting: m.requests_waiting,
            requests_running: m.requests_running,
            num_gpu_blocks: m.num_gpu_blocks,
            block_size: m.block_size,
            counters: m.counters.as_ref().map(Counters::from),
            engines: m.engines,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub prompt_tokens: f64,
    pub generation_tokens: f64,
    pub request_prompt_tokens_sum: f64,
    pub request_prompt_tokens_count: f64,
    pub request_generation_tokens_sum: f64,
    pub request_generation_tokens_count: f64,
    pub request_success: f64,
    pub prefix_cache_hits: f64,
    pub prefix_cache_queries: f64,
    pub ttft_seconds_sum: f64,
    pub ttft_seconds_count: f64,
    pub itl_seconds_sum: f64,
    pub itl_seconds_count: f64,
}

impl From<&pb::Counters> for Counters {
    fn from(c: &pb::Counters) -> Self {
        Counters {
            prompt_tokens: c.prompt_tokens,
            generation_tokens: c.generation_tokens,
            request_prompt_tokens_sum: c.request_prompt_tokens_sum,
            request_prompt_tokens_count: c.request_prompt_tokens_count,
            request_generation_tokens_sum: c.request_generation_tokens_sum,
            request_generation_tokens_count: c.request_generation_tokens_count,
            request_success: c.request_success,
            prefix_cache_hits: c.prefix_cache_hits,
            prefix_cache_queries: c.prefix_cache_queries,
            ttft_seconds_sum: c.ttft_seconds_sum,
            ttft_seconds_count: c.ttft_seconds_count,
            itl_seconds_sum: c.itl_seconds_sum,
            itl_seconds_count: c.itl_seconds_count,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Epp<'a> {
    pub queues: Vec<EppQueue<'a>>,
    pub pools: Vec<EppPool<'a>>,
}

impl<'a> From<&'a pb::EppSignals> for Epp<'a> {
    fn from(e: &'a pb::EppSignals) -> Self {
        Epp {
            queues: e
                .queues
                .iter()
                .map(|q| EppQueue {
                    model: &q.model,
                    queue_size: q.queue_size,
                    queue_bytes: q.queue_bytes,
                })
                .collect(),
            pools: e
                .pools
                .iter()
                .map(|p| EppPool {
                    pool: &p.pool,
                    kv_cache_avg: p.kv_cache_avg,
                    queue_avg: p.queue_avg,
                    running_avg: p.running_avg,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EppQueue<'a> {
    pub model: &'a str,
    pub queue_size: f64,
    pub queue_bytes: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EppPool<'a> {
    pub pool: &'a str,
    pub kv_cache_avg: Option<f64>,
    pub queue_avg: Option<f64>,
    pub running_avg: Option<f64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_snapshot_uses_camel_case_and_null_for_absent_values() {
        let snapshot = pb::DecisionSnapshot {
            decisions: vec![pb::VariantDecision {
                namespace: "llm".into(),
                name: "chat-l4".into(),
                model_id: "m".into(),
                desired_replicas: 3,
                basis: "saturation".into(),
                data: "missing".into(),
                inputs: vec![pb::PodInput {
                    pod: "chat-l4-0".into(),
                    kv_cache_usage: 0.5,
                    queue_length: 2.0,
                    saturated: false,
                }],
                decided_at_ms: 1_795_000_000_000,
                ..Default::default()
            }],
            leading: true,
            at_ms: 0,
        };
        let value = serde_json::to_value(Snapshot::from(&snapshot)).unwrap();
        let d = &value["decisions"][0];
        assert_eq!(value["leading"], true);
        assert_eq!(d["modelId"], "m");
        assert_eq!(d["desiredReplicas"], 3);
        assert_eq!(d["dataAgeSeconds"], json!(null));
        assert_eq!(d["saturation"], json!(null));
        assert_eq!(d["decidedAtMs"], 1_795_000_000_000_i64);
        assert_eq!(
            d["inputs"],
            json!([{"pod": "chat-l4-0", "kvCacheUsage": 0.5, "queueLength": 2.0, "saturated": false}])
        );
    }

    #[test]
    fn a_pod_sample_names_its_role_and_keeps_epp_pools_optional() {
        let sample = pb::PodSample {
            namespace: "llm".into(),
            pod: "gateway-epp".into(),
            role: pb::Role::Epp as i32,
            sample: Some(pb::Sample {
                seq: 7,
                up: true,
                epp: Some(pb::EppSignals {
                    queues: vec![pb::EppModelQueue {
                        model: "m".into(),
                        queue_size: 3.0,
                        queue_bytes: 900.0,
                    }],
                    pools: vec![pb::EppPool {
                        pool: "pool".into(),
                        kv_cache_avg: Some(0.25),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(PodSample::from(&sample)).unwrap();
        assert_eq!(value["role"], "epp");
        assert_eq!(value["sample"]["seq"], 7);
        assert_eq!(value["sample"]["epp"]["queues"][0]["queueSize"], 3.0);
        assert_eq!(
            value["sample"]["epp"]["pools"][0],
            json!({"pool": "pool", "kvCacheAvg": 0.25, "queueAvg": null, "runningAvg": null})
        );
        assert_eq!(role_name(42), "unspecified");
    }
}
