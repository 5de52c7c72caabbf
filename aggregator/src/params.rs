//! Parses the flags, the environment and the main configuration ConfigMap
//! together, ranking their values.
//!
//! Precedence is flag > environment > ConfigMap > default. The ConfigMap's
//! values become the flags' defaults before clap parses the command line and
//! environment again, so clap's own parsing and validation apply to every
//! source alike.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use wva_core::config::params::{PARAMS, PROACTIVE_MODEL_KEY, Param, ParamError, find};

use crate::args::Args;

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
                    if param.key == PROACTIVE_MODEL_KEY {
                        return Err(ParamError::ProactiveModel {
                            config_map: config_map.to_string(),
                            value: value.to_string(),
                        });
                    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use wva_core::config::params::{Edit, edit, find, without_rejected};
    use wva_core::testing::data;

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
        let docs = include_str!("../../docs/configuration.md");
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
    fn the_operating_mode_is_true_or_false_in_any_case() {
        for (value, hybrid) in [
            ("true", true),
            (" TRUE\n", true),
            ("True", true),
            ("false", false),
            ("FALSE", false),
            (" false ", false),
        ] {
            let parsed = parse(&argv(&[]), "cm", &data(&[(PROACTIVE_MODEL_KEY, value)]))
                .unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(
                parsed.args.experimental_proactive_model, hybrid,
                "{value:?}"
            );
        }
        let parsed = parse(&argv(&[]), "cm", &BTreeMap::new()).unwrap();
        assert!(
            !parsed.args.experimental_proactive_model,
            "CAPACITY-ONLY mode by default"
        );
        // The flag wins over the ConfigMap, as for every key.
        let parsed = parse(
            &argv(&["--experimental-proactive-model", "true"]),
            "cm",
            &data(&[(PROACTIVE_MODEL_KEY, "false")]),
        )
        .unwrap();
        assert!(parsed.args.experimental_proactive_model);
        assert!(parsed.set_outside(find(PROACTIVE_MODEL_KEY).unwrap()));
    }

    #[test]
    fn another_operating_mode_is_refused_naming_the_key_and_the_accepted_values() {
        for value in ["yes", "1", "hybrid", ""] {
            let error = parse(
                &argv(&[]),
                "wva-config",
                &data(&[(PROACTIVE_MODEL_KEY, value), ("WVA_STALENESS", "5s")]),
            )
            .unwrap_err();
            assert_eq!(
                error,
                ParamError::ProactiveModel {
                    config_map: "wva-config".into(),
                    value: value.into()
                }
            );
            assert_eq!(
                error.to_string(),
                format!(
                    "ConfigMap wva-config key EXPERIMENTAL_PROACTIVE_MODEL: {value:?} is neither \"true\" (HYBRID mode) nor \"false\" (CAPACITY-ONLY mode)"
                )
            );
        }
        // From the command line (or the environment), clap names the flag,
        // whose value name is the key.
        let error = parse(
            &argv(&["--experimental-proactive-model", "on"]),
            "cm",
            &BTreeMap::new(),
        )
        .unwrap_err();
        let ParamError::CommandLine(message) = &error else {
            panic!("{error}")
        };
        assert!(
            message.contains("invalid value 'on' for '--experimental-proactive-model <EXPERIMENTAL_PROACTIVE_MODEL>'")
                && message.contains("expected \"true\" (HYBRID mode) or \"false\" (CAPACITY-ONLY mode)"),
            "{message}"
        );
    }

    #[test]
    fn the_operating_mode_is_static() {
        let old = data(&[(PROACTIVE_MODEL_KEY, "false")]);
        let new = data(&[(PROACTIVE_MODEL_KEY, "true")]);
        let running = parse(&argv(&[]), "cm", &old).unwrap();
        let edit = edit(|p| running.set_outside(p), &old, &new);
        assert_eq!(edit.rejected, [PROACTIVE_MODEL_KEY]);
        let effective = without_rejected(&old, &new, &edit.rejected);
        let again = parse(&argv(&[]), "cm", &effective).unwrap();
        assert!(
            !again.args.experimental_proactive_model,
            "the running mode stays"
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
        let edit = edit(|p| running.set_outside(p), &old, &new);
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
        let edit = edit(|p| running.set_outside(p), &old, &new);
        assert_eq!(edit.overridden, ["GLOBAL_OPT_INTERVAL"]);
        assert!(edit.applied.is_empty() && edit.rejected.is_empty());
    }

    #[test]
    fn whitespace_is_not_a_change() {
        let old = data(&[("GLOBAL_OPT_INTERVAL", "60s")]);
        let new = data(&[("GLOBAL_OPT_INTERVAL", "60s\n")]);
        let running = parse(&argv(&[]), "cm", &old).unwrap();
        assert_eq!(
            edit(|p| running.set_outside(p), &old, &new),
            Edit::default()
        );
    }
}
