//! The main configuration ConfigMap's parameters: which keys it may hold,
//! which of them may change while running, and what an edit of it changes.
//! Parsing the values (with the flags and environment) is the binary's job.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    /// Read at start; a change in the ConfigMap is rejected until a restart.
    Static,
    /// Applied while running.
    Dynamic,
}

/// One key of the main ConfigMap and the flag it feeds.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The ConfigMap key, which is also the flag's environment variable.
    pub key: &'static str,
    /// The id of the flag it feeds (its field name in the binary's arguments).
    pub id: &'static str,
    pub mutability: Mutability,
}

const fn param(key: &'static str, id: &'static str, mutability: Mutability) -> Param {
    Param {
        key,
        id,
        mutability,
    }
}

use Mutability::{Dynamic, Static};

/// The operating mode: `"true"` is HYBRID mode (the model-based optimizer
/// beside the saturation analysis), `"false"` CAPACITY-ONLY mode.
pub const PROACTIVE_MODEL_KEY: &str = "EXPERIMENTAL_PROACTIVE_MODEL";

/// Every key the main ConfigMap may set.
pub const PARAMS: &[Param] = &[
    param("GLOBAL_OPT_INTERVAL", "analysis_interval", Dynamic),
    param(
        "WVA_MIN_ANALYSIS_INTERVAL",
        "min_analysis_interval",
        Dynamic,
    ),
    param(
        "WVA_MIN_VERDICT_ANALYSIS_INTERVAL",
        "min_verdict_analysis_interval",
        Dynamic,
    ),
    param("WVA_STALENESS", "staleness", Dynamic),
    param("WVA_CONVERGENCE_TIMEOUT", "convergence_timeout", Dynamic),
    param("WVA_POLL_INTERVAL", "poll_interval", Static),
    param("WVA_METRICS_SOURCE", "metrics_source", Static),
    param("WVA_SCRAPE_CA_FILE", "scrape_ca_file", Static),
    param("WVA_SCRAPE_SERVER_NAME", "scrape_server_name", Static),
    param(
        "WVA_SCRAPE_INSECURE_SKIP_VERIFY",
        "scrape_insecure_skip_verify",
        Static,
    ),
    param("WVA_SCRAPE_TIMEOUT", "scrape_timeout", Static),
    param(
        "WVA_MAX_CONCURRENT_SCRAPES",
        "max_concurrent_scrapes",
        Static,
    ),
    param("WVA_SCRAPE_CACHE_TTL", "scrape_cache_ttl", Static),
    param("METRICS_ADDR", "metrics_addr", Static),
    param("WVA_GRPC_ADDR", "grpc_addr", Static),
    param("WVA_GRPC_TLS_CERT", "tls_cert", Static),
    param("WVA_GRPC_TLS_KEY", "tls_key", Static),
    param("WVA_GRPC_TLS_CLIENT_CA", "tls_client_ca", Static),
    param("WVA_GRPC_TLS_CLIENT_AUTH", "tls_client_auth", Static),
    param("WVA_GRPC_TLS_SECRET", "grpc_tls_secret", Static),
    param("WVA_GRPC_TLS_SERVICES", "grpc_tls_services", Static),
    param("WVA_READER_TOKEN_FILE", "reader_token_file", Static),
    param("WVA_AGENT_TOKEN_FILE", "agent_token_file", Static),
    param("WVA_VERIFY_AGENT_IDENTITY", "verify_agent_identity", Static),
    param("WVA_TOKEN_AUDIENCE", "token_audience", Static),
    param("WVA_LEGACY_METRICS", "legacy_metrics", Static),
    param("WVA_SCALE_TO_ZERO", "scale_to_zero", Static),
    param("WVA_SATURATION_CONFIG", "saturation_config", Static),
    param("WVA_SCALE_TO_ZERO_CONFIG", "scale_to_zero_config", Static),
    param(PROACTIVE_MODEL_KEY, "experimental_proactive_model", Static),
    param("WVA_SERVICE_CLASS_CONFIG", "service_class_config", Static),
    param("CONTROLLER_INSTANCE", "controller_instance", Static),
    param("WATCH_NAMESPACE", "watch_namespace", Static),
    param("LEADER_ELECT", "leader_elect", Static),
    param("LEADER_ELECTION_ID", "leader_election_id", Static),
    param("LEASE_DURATION", "lease_duration", Static),
    param("RENEW_DEADLINE", "renew_deadline", Static),
    param("RETRY_PERIOD", "retry_period", Static),
];

/// Static keys without a flag (secrets and the Prometheus connection): the
/// environment, then the ConfigMap, sets them.
pub const STATIC_WITHOUT_FLAG: &[&str] = &[
    "PROMETHEUS_BASE_URL",
    "PROMETHEUS_TLS_INSECURE_SKIP_VERIFY",
    "PROMETHEUS_CA_CERT_PATH",
    "PROMETHEUS_CLIENT_CERT_PATH",
    "PROMETHEUS_CLIENT_KEY_PATH",
    "PROMETHEUS_SERVER_NAME",
    "PROMETHEUS_BEARER_TOKEN",
    "WVA_SCRAPE_BEARER_TOKEN",
];

pub fn find(key: &str) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.key == key)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("ConfigMap {config_map} key {key}: {message}")]
    Invalid {
        config_map: String,
        key: String,
        message: String,
    },
    #[error(
        "ConfigMap {config_map} key {PROACTIVE_MODEL_KEY}: {value:?} is neither \"true\" (HYBRID mode) nor \"false\" (CAPACITY-ONLY mode)"
    )]
    ProactiveModel { config_map: String, value: String },
    #[error("{0}")]
    CommandLine(String),
}

/// What an edit of the ConfigMap changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// Static keys whose value changed: rejected, the running value stays.
    pub rejected: Vec<&'static str>,
    /// Dynamic keys whose value changed: `(key, old, new)`.
    pub applied: Vec<(&'static str, Option<String>, Option<String>)>,
    /// Keys changed that a flag or the environment overrides anyway.
    pub overridden: Vec<&'static str>,
}

/// Classifies the changes from `old` to `new`; `set_outside` tells which
/// parameters a flag or the environment set, so the ConfigMap cannot.
pub fn edit(
    set_outside: impl Fn(&Param) -> bool,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Edit {
    let mut out = Edit::default();
    for key in STATIC_WITHOUT_FLAG {
        let (before, after) = (old.get(*key), new.get(*key));
        if before.map(|v| v.trim()) == after.map(|v| v.trim()) {
            continue;
        }
        if std::env::var_os(key).is_some() {
            out.overridden.push(key);
        } else {
            out.rejected.push(key);
        }
    }
    for param in PARAMS {
        let (before, after) = (old.get(param.key), new.get(param.key));
        if before.map(|v| v.trim()) == after.map(|v| v.trim()) {
            continue;
        }
        if set_outside(param) {
            out.overridden.push(param.key);
            continue;
        }
        match param.mutability {
            Static => out.rejected.push(param.key),
            Dynamic => out
                .applied
                .push((param.key, before.cloned(), after.cloned())),
        }
    }
    out
}

/// `new` with the rejected static keys put back as they were in `old`, so the
/// effective configuration keeps the running values.
pub fn without_rejected(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    rejected: &[&'static str],
) -> BTreeMap<String, String> {
    let mut out = new.clone();
    for key in rejected {
        match old.get(*key) {
            Some(v) => out.insert(key.to_string(), v.clone()),
            None => out.remove(*key),
        };
    }
    out
}
