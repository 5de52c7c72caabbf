//! PromQL for the vLLM signals, built so that no value can change a query's
//! meaning.
//!
//! Every interpolated value is escaped as a PromQL double-quoted string
//! (backslash first, then the double quote, and control characters as
//! escapes), so it stays one literal label value whatever it holds; a
//! namespace must also be a DNS-1123 label before it is used at all. The
//! tests parse the built selectors back and check they match exactly the
//! intended labels, for hostile and arbitrary values.

use std::fmt::Write as _;

use thiserror::Error;
use wva_core::variants::{DNS_LABEL, is_dns_label};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    #[error("namespace {0:?} {DNS_LABEL}; it is not used in a query")]
    Namespace(String),
}

/// `value` as the body of a PromQL double-quoted string.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// A namespace checked to be a DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(namespace: &str) -> Result<Self, QueryError> {
        if is_dns_label(namespace) {
            Ok(Namespace(namespace.to_string()))
        } else {
            Err(QueryError::Namespace(namespace.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `metric{namespace="…",model_name="…"}` with both values escaped.
pub fn selector(metric: &str, namespace: &Namespace, model: &str) -> String {
    format!(
        "{metric}{{namespace=\"{}\",model_name=\"{}\"}}",
        escape(namespace.as_str()),
        escape(model)
    )
}

/// The per-pod signals the analysis needs, V1 names first and V0 names as a
/// fallback (`or`), each aggregated over a pod's engine ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalQueries {
    /// KV-cache usage, 0..1, averaged over the pod's engine ranks.
    pub kv_cache_usage: String,
    pub requests_waiting: String,
    pub requests_running: String,
    /// Successful requests so far (a counter), for scale to zero.
    pub request_success: String,
}

pub fn signal_queries(namespace: &Namespace, model: &str) -> SignalQueries {
    let by_pod = |how: &str, v1: &str, v0: Option<&str>| {
        let first = format!("{how} by (pod) ({})", selector(v1, namespace, model));
        match v0 {
            Some(v0) => format!(
                "{first} or {how} by (pod) ({})",
                selector(v0, namespace, model)
            ),
            None => first,
        }
    };
    SignalQueries {
        kv_cache_usage: by_pod(
            "avg",
            "vllm:kv_cache_usage_perc",
            Some("vllm:gpu_cache_usage_perc"),
        ),
        requests_waiting: by_pod("sum", "vllm:num_requests_waiting", None),
        requests_running: by_pod("sum", "vllm:num_requests_running", None),
        request_success: by_pod("sum", "vllm:request_success_total", None),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `(label, operator, value)`.
    type Matcher = (String, String, String);

    /// Parses `name{l="v",…}` as PromQL lexes it: the metric name and the
    /// label matchers with their operators and unescaped values. `None` when
    /// the text is not one selector of `=` matchers.
    fn parse_selector(text: &str) -> Option<(String, Vec<Matcher>)> {
        let open = text.find('{')?;
        let name = text[..open].to_string();
        let mut rest = text[open + 1..].chars().peekable();
        let mut matchers = Vec::new();
        loop {
            let label: String =
                std::iter::from_fn(|| rest.next_if(|c| c.is_alphanumeric() || *c == '_')).collect();
            if label.is_empty() {
                return None;
            }
            let mut op = String::new();
            while let Some(c) = rest.next_if(|c| matches!(c, '=' | '!' | '~')) {
                op.push(c);
            }
            if rest.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match rest.next()? {
                    '"' => break,
                    '\\' => match rest.next()? {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'u' => {
                            let hex: String = (0..4).filter_map(|_| rest.next()).collect();
                            value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    c if c.is_control() => return None,
                    c => value.push(c),
                }
            }
            matchers.push((label, op, value));
            match rest.next()? {
                ',' => continue,
                '}' => return rest.next().is_none().then_some((name, matchers)),
                _ => return None,
            }
        }
    }

    fn exactly(ns: &str, model: &str) -> Vec<Matcher> {
        vec![
            ("namespace".into(), "=".into(), ns.into()),
            ("model_name".into(), "=".into(), model.into()),
        ]
    }

    #[test]
    fn the_documented_injection_stays_one_literal_value() {
        assert_eq!(
            escape(r#"prod",malicious="value"#),
            r#"prod\",malicious=\"value"#
        );
        let ns = Namespace::parse("prod").unwrap();
        let hostile = r#"m",namespace=~".+"#;
        let q = selector("vllm:num_requests_waiting", &ns, hostile);
        assert_eq!(
            parse_selector(&q),
            Some(("vllm:num_requests_waiting".into(), exactly("prod", hostile)))
        );
    }

    #[test]
    fn hostile_namespaces_are_refused_before_any_query() {
        for ns in [
            r#"prod",malicious="value"#,
            "prod\\",
            "prod\nx",
            "prod}",
            "a=~.+",
            "",
            "Prod",
            &"a".repeat(64),
        ] {
            assert_eq!(
                Namespace::parse(ns),
                Err(QueryError::Namespace(ns.to_string()))
            );
        }
        assert!(Namespace::parse("llm-d-prod").is_ok());
    }

    #[test]
    fn backslashes_newlines_and_braces_in_a_model_stay_inside_it() {
        let ns = Namespace::parse("ns").unwrap();
        for model in [r"a\", r#"a\""#, "a\nb", "a}b{", r#"a"}or{"#, "\u{0}\u{7f}"] {
            let q = selector("m", &ns, model);
            assert_eq!(
                parse_selector(&q),
                Some(("m".into(), exactly("ns", model))),
                "{q}"
            );
        }
    }

    #[test]
    fn signal_queries_fall_back_to_v0_names() {
        let ns = Namespace::parse("llm").unwrap();
        let q = signal_queries(&ns, "meta/llama");
        assert_eq!(
            q.kv_cache_usage,
            "avg by (pod) (vllm:kv_cache_usage_perc{namespace=\"llm\",model_name=\"meta/llama\"}) \
             or avg by (pod) (vllm:gpu_cache_usage_perc{namespace=\"llm\",model_name=\"meta/llama\"})"
        );
        assert_eq!(
            q.requests_waiting,
            "sum by (pod) (vllm:num_requests_waiting{namespace=\"llm\",model_name=\"meta/llama\"})"
        );
    }

    proptest! {
        #[test]
        fn any_model_name_is_matched_literally(model in any::<String>()) {
            let ns = Namespace::parse("ns").unwrap();
            let q = selector("vllm:num_requests_running", &ns, &model);
            prop_assert_eq!(
                parse_selector(&q),
                Some(("vllm:num_requests_running".to_string(), exactly("ns", &model)))
            );
        }
    }
}
