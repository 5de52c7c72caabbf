//! Agents speaking for a pod ([`PodAgent`]), honestly or not.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::install::Replica;
use crate::{AgentSpec, Proc, start_agent};

/// What every agent claims as its variant: the aggregator must ignore it and
/// take the pod's owning Deployment instead.
pub const CLAIMED_VARIANT: &str = "claimed-by-the-agent";

/// An agent in a pod: scrapes `target` and streams to the aggregator
/// `replica` (over TLS when it serves TLS) claiming pod `pod` with UID
/// `uid`, presenting `token` when given. Its `--variant` is
/// [`CLAIMED_VARIANT`].
pub struct PodAgent<'a> {
    pub target: SocketAddr,
    pub replica: &'a Replica,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
    pub token: Option<&'a Path>,
    pub model: &'a str,
}

impl PodAgent<'_> {
    /// The agent of `pod` as stored, presenting `token`.
    pub fn of<'a>(
        pod: &'a Value,
        token: Option<&'a Path>,
        target: SocketAddr,
        replica: &'a Replica,
        model: &'a str,
    ) -> PodAgent<'a> {
        PodAgent {
            target,
            replica,
            namespace: namespace_of(pod).unwrap_or_default(),
            pod: name_of(pod),
            uid: uid_of(pod),
            token,
            model,
        }
    }

    pub fn start(&self) -> anyhow::Result<Proc> {
        let mut extra = vec!["--pod-uid".to_string(), self.uid.to_string()];
        if let Some(token) = self.token {
            extra.push("--token-file".into());
            extra.push(token.to_string_lossy().into_owned());
        }
        if let Some(ca) = &self.replica.grpc_ca {
            extra.extend(["--tls-ca-pem".into(), ca.clone()]);
            extra.extend(["--tls-server-name".into(), Replica::GRPC_NAME.into()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        start_agent(&AgentSpec {
            target: self.target,
            aggregator: &self.replica.url(),
            pod: self.pod,
            namespace: self.namespace,
            variant: CLAIMED_VARIANT,
            model: self.model,
            interval: "250ms",
            extra: &extra,
        })
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}
