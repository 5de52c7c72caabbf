//! The main configuration ConfigMap: which keys it may hold, which of them
//! may change while running, and how its values rank against flags and the
//! environment.
//!
//! Precedence is flag > environment > ConfigMap > default. The ConfigMap's
//! values become the flags' defaults before clap parses the command line and
//! environment again, so clap's own parsing and validation apply to every
//! source alike.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::args::Args;

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
    /// The clap id of the flag (its field name in [`Args`]).
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

/// Every key the main ConfigMap may set.
pub const PARAMS: &[Param] = &[
    param("GLOBAL_OPT_INTERVAL", "analysis_interval", Dynamic),
    param(
        "WVA_MIN_ANALYSIS_INTERVAL",
        "min_analysis_interval",
        Dynamic,
    ),
    param("WVA_STALENESS", "staleness", Dynamic),
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
    param("WVA_AGENT_TOKEN_FILE", "agent_token_file", Static),
    param("WVA_VERIFY_AGENT_IDENTITY", "verify_agent_identity", Static),
    param("WVA_TOKEN_AUDIENCE", "token_audience", Static),
    param("WVA_LEGACY_METRICS", "legacy_metrics", Static),
    param("WVA_SCALE_TO_ZERO", "scale_to_zero", Static),
    param("WVA_SATURATION_CONFIG", "saturation_config", Static),
    param("WVA_SCALE_TO_ZERO_CONFIG", "scale_to_zero_config", Static),
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
        "ConfigMap {config_map} key EXPERIMENTAL_PROACTIVE_MODEL: {value:?} is not supported; only the saturation analysis (\"false\") is"
    )]
    ProactiveModel { config_map: String, value: String },
    #[error("{0}")]
    CommandLine(String),
}

/// The parsed arguments and where each value came from.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub args: Args,
    sources: HashMap<&'static str, ValueSource>,
}

impl Parsed {
    /// Whether a flag or the environment set the parameter, so the ConfigMap
    /// cannot.
    pub fn set_outside(&self, param: &Param) -> bool {
        matches!(
            self.sources.get(param.id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }
}

/// Parses `argv` and the environment with `data`, a ConfigMap named
/// `config_map`, filling in what neither sets. A bad value names its key.
pub fn parse(
    argv: &[OsString],
    config_map: &str,
    data: &BTreeMap<String, String>,
) -> Result<Parsed, ParamError> {
    if let Some(value) = data.get("EXPERIMENTAL_PROACTIVE_MODEL")
        && !value.trim().eq_ignore_ascii_case("false")
    {
        return Err(ParamError::ProactiveModel {
            config_map: config_map.to_string(),
            value: value.clone(),
        });
    }
    let known: Vec<(&Param, &String)> = data
        .iter()
        .filter_map(|(k, v)| find(k).map(|p| (p, v)))
        .collect();
    match parse_with(argv, &known) {
        Ok(parsed) => Ok(parsed),
        Err(error) => {
            // Name the key at fault: the first one that fails on its own.
            for &(param, value) in &known {
                if let Err(e) = parse_with(argv, &[(param, value)]) {
                    return Err(ParamError::Invalid {
                        config_map: config_map.to_string(),
                        key: param.key.to_string(),
                        message: first_line(&e.to_string()),
                    });
                }
            }
            Err(ParamError::CommandLine(error.to_string()))
        }
    }
}

fn parse_with(argv: &[OsString], defaults: &[(&Param, &String)]) -> Result<Parsed, clap::Error> {
    let mut command = Args::command();
    for (param, value) in defaults {
        let value = value.trim().to_string();
        command = command.mut_arg(param.id, |a| a.default_value(value));
    }
    let matches = command.try_get_matches_from(argv)?;
    let sources = PARAMS
        .iter()
        .filter_map(|p| matches.value_source(p.id).map(|s| (p.id, s)))
        .collect();
    let args = Args::from_arg_matches(&matches)?;
    Ok(Parsed { args, sources })
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
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

/// Classifies the changes from `old` to `new` for a process started as `running`.
pub fn edit(
    running: &Parsed,
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
        if running.set_outside(param) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::data;

    fn argv(extra: &[&str]) -> Vec<OsString> {
        std::iter::once("wva-aggregator")
            .chain(extra.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn every_param_names_a_flag_whose_env_is_its_key() {
        let command = Args::command();
        for p in PARAMS {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == p.id)
                .unwrap_or_else(|| panic!("{} names no flag {}", p.key, p.id));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(p.key),
                "{}",
                p.id
            );
        }
    }

    #[test]
    fn every_parameter_is_documented() {
        let docs = include_str!("../../../docs/configuration.md");
        for arg in Args::command().get_arguments() {
            if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                assert!(
                    docs.contains(&format!("`{env}`")),
                    "docs/configuration.md does not document {env}"
                );
            }
        }
    }

    #[test]
    fn the_config_map_fills_in_what_flags_leave_unset() {
        let parsed = parse(
            &argv(&["--staleness", "4s"]),
            "cm",
            &data(&[("GLOBAL_OPT_INTERVAL", "120s"), ("WVA_STALENESS", "9s")]),
        )
        .unwrap();
        assert_eq!(parsed.args.analysis_interval, Duration::from_secs(120));
        // The flag wins over the ConfigMap.
        assert_eq!(parsed.args.staleness, Duration::from_secs(4));
        assert!(parsed.set_outside(find("WVA_STALENESS").unwrap()));
        assert!(!parsed.set_outside(find("GLOBAL_OPT_INTERVAL").unwrap()));
    }

    #[test]
    fn without_a_config_map_the_defaults_apply() {
        let parsed = parse(&argv(&[]), "cm", &BTreeMap::new()).unwrap();
        assert_eq!(parsed.args.analysis_interval, Duration::from_secs(30));
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let error = parse(
            &argv(&[]),
            "wva-config",
            &data(&[("GLOBAL_OPT_INTERVAL", "soon"), ("WVA_STALENESS", "5s")]),
        )
        .unwrap_err();
        let ParamError::Invalid {
            config_map, key, ..
        } = &error
        else {
            panic!("{error}")
        };
        assert_eq!(
            (config_map.as_str(), key.as_str()),
            ("wva-config", "GLOBAL_OPT_INTERVAL")
        );
        assert!(error.to_string().contains("soon"), "{error}");
    }

    #[test]
    fn the_proactive_model_is_refused() {
        let error = parse(
            &argv(&[]),
            "cm",
            &data(&[("EXPERIMENTAL_PROACTIVE_MODEL", "true")]),
        )
        .unwrap_err();
        assert!(
            matches!(error, ParamError::ProactiveModel { .. }),
            "{error}"
        );
        assert!(
            parse(
                &argv(&[]),
                "cm",
                &data(&[("EXPERIMENTAL_PROACTIVE_MODEL", "false")])
            )
            .is_ok()
        );
    }

    #[test]
    fn unknown_and_unused_keys_are_accepted() {
        let parsed = parse(
            &argv(&[]),
            "cm",
            &data(&[
                ("PROMETHEUS_BASE_URL", "https://p:9090"),
                ("SOMETHING", "x"),
            ]),
        );
        assert!(parsed.is_ok());
    }

    #[test]
    fn an_edit_rejects_static_keys_and_applies_dynamic_ones() {
        let old = data(&[("GLOBAL_OPT_INTERVAL", "60s"), ("LEADER_ELECTION_ID", "a")]);
        let new = data(&[
            ("GLOBAL_OPT_INTERVAL", "120s"),
            ("LEADER_ELECTION_ID", "b"),
            ("METRICS_ADDR", "0.0.0.0:9999"),
        ]);
        let running = parse(&argv(&[]), "cm", &old).unwrap();
        let edit = edit(&running, &old, &new);
        assert_eq!(edit.rejected, ["METRICS_ADDR", "LEADER_ELECTION_ID"]);
        assert_eq!(
            edit.applied,
            [(
                "GLOBAL_OPT_INTERVAL",
                Some("60s".to_string()),
                Some("120s".to_string())
            )]
        );
        let effective = without_rejected(&old, &new, &edit.rejected);
        assert_eq!(effective.get("LEADER_ELECTION_ID").unwrap(), "a");
        assert!(!effective.contains_key("METRICS_ADDR"));
        assert_eq!(effective.get("GLOBAL_OPT_INTERVAL").unwrap(), "120s");
    }

    #[test]
    fn an_edit_of_a_key_a_flag_sets_changes_nothing() {
        let old = data(&[("GLOBAL_OPT_INTERVAL", "60s")]);
        let new = data(&[("GLOBAL_OPT_INTERVAL", "90s")]);
        let running = parse(&argv(&["--analysis-interval", "10s"]), "cm", &old).unwrap();
        let edit = edit(&running, &old, &new);
        assert_eq!(edit.overridden, ["GLOBAL_OPT_INTERVAL"]);
        assert!(edit.applied.is_empty() && edit.rejected.is_empty());
    }

    #[test]
    fn whitespace_is_not_a_change() {
        let old = data(&[("GLOBAL_OPT_INTERVAL", "60s")]);
        let new = data(&[("GLOBAL_OPT_INTERVAL", "60s\n")]);
        let running = parse(&argv(&[]), "cm", &old).unwrap();
        assert_eq!(edit(&running, &old, &new), Edit::default());
    }
}
