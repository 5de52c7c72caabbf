//! `authentication.k8s.io/v1 TokenReview`: answers for the service-account
//! tokens a test registered, the way the real server's service-account
//! authenticator does.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::new_uid;

/// The audience the API server itself accepts, implied when a token or a
/// review names none (kubeadm's default `--api-audiences`).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Who a registered token authenticates as: a service account, optionally
/// bound to a pod, valid for some audiences until an optional expiry.
#[derive(Clone, Debug, Default)]
pub struct TokenIdentity {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to (a projected service-account token).
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    /// The token's audiences; empty means [`API_AUDIENCE`], as a TokenRequest
    /// without audiences gets.
    pub audiences: Vec<String>,
    pub expires: Option<SystemTime>,
}

struct Registered {
    identity: TokenIdentity,
    /// Stands for the token's `jti` claim.
    credential_id: String,
}

/// The registered tokens.
#[derive(Default)]
pub(crate) struct Tokens {
    tokens: HashMap<String, Registered>,
    /// One uid per service account, as the ServiceAccount object would have.
    service_account_uids: HashMap<(String, String), String>,
}

impl Tokens {
    pub fn register(&mut self, token: &str, identity: TokenIdentity) {
        self.service_account_uids
            .entry((identity.namespace.clone(), identity.service_account.clone()))
            .or_insert_with(new_uid);
        let registered = Registered {
            identity,
            credential_id: format!("JTI={}", new_uid()),
        };
        self.tokens.insert(token.to_string(), registered);
    }

    /// Answers a TokenReview request body with the reviewed TokenReview.
    pub fn review(&self, request: &Value) -> Result<Value, ApiError> {
        let spec = &request["spec"];
        let token = spec["token"].as_str().unwrap_or("");
        if token.is_empty() {
            return Err(ApiError::bad_request(
                "token is required for TokenReview in authentication",
            ));
        }
        let requested = strings(&spec["audiences"]);
        let status = match self.authenticate(token, &requested) {
            Ok(status) => status,
            // `authenticated: false` is omitted (Go `omitempty`), `user` is not.
            Err(why) => json!({ "user": {}, "error": format!("[invalid bearer token, {why}]") }),
        };
        let mut spec = json!({ "token": token });
        if !requested.is_empty() {
            spec["audiences"] = json!(requested);
        }
        Ok(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": spec,
            "status": status,
        }))
    }

    fn authenticate(&self, token: &str, requested: &[String]) -> Result<Value, String> {
        let registered = self
            .tokens
            .get(token)
            .ok_or_else(|| "token lookup failed".to_string())?;
        let identity = &registered.identity;
        let or_api = |audiences: &[String]| {
            if audiences.is_empty() {
                vec![API_AUDIENCE.to_string()]
            } else {
                audiences.to_vec()
            }
        };
        let (wanted, offered) = (or_api(requested), or_api(&identity.audiences));
        let granted: Vec<&String> = offered.iter().filter(|a| wanted.contains(a)).collect();
        if granted.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_strings(&offered),
                go_strings(&wanted)
            ));
        }
        if identity.expires.is_some_and(|t| t <= SystemTime::now()) {
            return Err("service account token has expired".to_string());
        }
        let (ns, sa) = (&identity.namespace, &identity.service_account);
        let mut extra =
            json!({ "authentication.kubernetes.io/credential-id": [registered.credential_id] });
        if let Some(pod) = &identity.pod_name {
            extra["authentication.kubernetes.io/pod-name"] = json!([pod]);
        }
        if let Some(uid) = &identity.pod_uid {
            extra["authentication.kubernetes.io/pod-uid"] = json!([uid]);
        }
        Ok(json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{sa}"),
                "uid": self.service_account_uids[&(ns.clone(), sa.clone())],
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                "extra": extra,
            },
            "audiences": granted,
        }))
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A string list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tokens() -> Tokens {
        let mut tokens = Tokens::default();
        tokens.register(
            "agent",
            TokenIdentity {
                namespace: "ns".into(),
                service_account: "sa".into(),
                pod_name: Some("pod-1".into()),
                pod_uid: Some("uid-1".into()),
                audiences: vec!["wva".into()],
                expires: None,
            },
        );
        tokens
    }

    fn review(tokens: &Tokens, token: &str, audiences: Value) -> Value {
        let request = json!({ "spec": { "token": token, "audiences": audiences } });
        tokens.review(&request).unwrap()["status"].clone()
    }

    #[test]
    fn an_audience_in_common_authenticates_the_service_account() {
        let status = review(&tokens(), "agent", json!(["other", "wva"]));
        assert_eq!(status["authenticated"], true);
        assert_eq!(status["audiences"], json!(["wva"]));
        assert_eq!(status["user"]["username"], "system:serviceaccount:ns:sa");
        assert_eq!(
            status["user"]["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["pod-1"])
        );
    }

    #[test]
    fn no_requested_audience_means_the_api_servers() {
        let status = review(&tokens(), "agent", json!([]));
        assert!(status.get("authenticated").is_none());
        assert_eq!(
            status["error"],
            format!(
                "[invalid bearer token, token audiences [\"wva\"] is invalid for the target audiences [\"{API_AUDIENCE}\"]]"
            )
        );
    }

    #[test]
    fn expired_and_unknown_tokens_fail() {
        let mut tokens = tokens();
        tokens.register(
            "old",
            TokenIdentity {
                namespace: "ns".into(),
                service_account: "sa".into(),
                expires: Some(SystemTime::now() - Duration::from_secs(1)),
                ..TokenIdentity::default()
            },
        );
        let expired = review(&tokens, "old", json!([]));
        assert!(expired["error"].as_str().unwrap().contains("expired"));
        let unknown = review(&tokens, "nope", json!(["wva"]));
        assert!(
            unknown["error"]
                .as_str()
                .unwrap()
                .contains("invalid bearer token")
        );
    }

    #[test]
    fn an_empty_token_is_a_bad_request() {
        let err = tokens().review(&json!({ "spec": {} })).unwrap_err();
        assert_eq!(err.code, 400);
    }
}
