//! `labelSelector` and `fieldSelector` query parameters.
//!
//! Label selectors take the full string syntax of
//! `k8s.io/apimachinery/pkg/labels`: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`, joined by commas (all must hold). As on the
//! real server, `!=` and `notin` also match objects without the label.
//! Field selectors take `metadata.name` and `metadata.namespace` with `=`,
//! `==` and `!=`, the fields every resource supports.

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        split_top_level(text)
            .into_iter()
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(|term| {
                parse_requirement(term).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unable to parse requirement: found '{term}', expected a label selector term"
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(k, v) => label(k) == Some(v),
            Requirement::NotEquals(k, v) => label(k) != Some(v),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside `( … )` value sets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_requirement(term: &str) -> Option<Requirement> {
    if let Some(key) = term.strip_prefix('!') {
        return valid_key(key.trim()).map(|k| Requirement::DoesNotExist(k.to_string()));
    }
    for (op, make) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = term.split_once(op) {
            let key = valid_key(key.trim())?;
            return Some(make(key.to_string(), value.trim().to_string()));
        }
    }
    if let Some((key, rest)) = term.split_once(char::is_whitespace) {
        let key = valid_key(key.trim())?;
        let rest = rest.trim();
        let (negated, set) = match rest.strip_prefix("notin") {
            Some(set) => (true, set),
            None => (false, rest.strip_prefix("in")?),
        };
        let values = set.trim().strip_prefix('(')?.strip_suffix(')')?;
        let values = values.split(',').map(|v| v.trim().to_string()).collect();
        let key = key.to_string();
        return Some(if negated {
            Requirement::NotIn(key, values)
        } else {
            Requirement::In(key, values)
        });
    }
    valid_key(term).map(|k| Requirement::Exists(k.to_string()))
}

fn valid_key(key: &str) -> Option<&str> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then_some(key)
}

/// A parsed `fieldSelector` over `metadata.name` / `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(&'static str, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let field = match field.trim() {
                "metadata.name" => "name",
                "metadata.namespace" => "namespace",
                other => {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            terms.push((field, equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = object["metadata"][*field].as_str().unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({ "metadata": { "name": "a", "namespace": "ns", "labels": labels } })
    }

    fn selects(selector: &str, labels: Value) -> bool {
        LabelSelector::parse(selector)
            .unwrap()
            .matches(&labelled(labels))
    }

    #[test]
    fn equality_and_existence() {
        let labels = json!({ "app": "web", "tier": "front" });
        assert!(selects("app=web", labels.clone()));
        assert!(selects("app==web,tier", labels.clone()));
        assert!(!selects("app!=web", labels.clone()));
        assert!(selects("!missing", labels.clone()));
        assert!(!selects("!app", labels.clone()));
        assert!(selects("", labels));
    }

    #[test]
    fn inequality_and_notin_match_objects_without_the_label() {
        assert!(selects("app!=web", json!({})));
        assert!(selects("app notin (web)", json!({})));
        assert!(!selects("app in (web)", json!({})));
    }

    #[test]
    fn set_based_terms_keep_their_commas() {
        let labels = json!({ "app": "api", "env": "prod" });
        assert!(selects("app in (web, api),env", labels.clone()));
        assert!(!selects("app notin (web,api)", labels.clone()));
        assert!(selects("env notin (dev)", labels));
    }

    #[test]
    fn malformed_selectors_are_bad_requests() {
        for bad in ["app in web", "a b c", "=x", "app in (web"] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(err.code, 400, "{bad}");
        }
    }

    #[test]
    fn field_selectors_cover_name_and_namespace_only() {
        let object = labelled(json!({}));
        let select = |s: &str| FieldSelector::parse(s).unwrap().matches(&object);
        assert!(select("metadata.name=a"));
        assert!(select("metadata.name==a,metadata.namespace=ns"));
        assert!(!select("metadata.namespace!=ns"));
        let err = FieldSelector::parse("spec.nodeName=n").unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.nodeName");
    }
}
