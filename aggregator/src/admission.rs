//! Who may open an agent stream, and which variant its data feeds.
//!
//! Standalone mode checks an optional shared bearer token and trusts the
//! variant the Hello names. In Kubernetes mode the token is the pod's own
//! projected service-account token, verified by the API server, and the
//! variant comes from the cluster (see `k8s::identity`).

use tonic::{Code, Status};
use wva_proto::v1::Hello;

/// Why a stream was refused: the gRPC status for the agent and a stable
/// label for the refusal counter.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: Status,
    pub reason: &'static str,
}

impl Refusal {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status: Status::new(code, message),
            reason,
        }
    }
}

#[tonic::async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Admits a stream presenting `bearer` (the token of an `authorization:
    /// Bearer` header) with `hello`; returns the name of the Deployment whose
    /// variant the pod's data feeds.
    async fn admit(&self, bearer: Option<&str>, hello: &Hello) -> Result<String, Refusal>;
}

/// A shared secret, or none: every stream is trusted to name its variant.
pub struct SharedToken(pub Option<String>);

#[tonic::async_trait]
impl Admission for SharedToken {
    async fn admit(&self, bearer: Option<&str>, hello: &Hello) -> Result<String, Refusal> {
        if let Some(expected) = &self.0 {
            let Some(token) = bearer else {
                return Err(Refusal::new(
                    Code::Unauthenticated,
                    "no_token",
                    "missing authorization metadata (Bearer token)",
                ));
            };
            if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
                return Err(Refusal::new(
                    Code::Unauthenticated,
                    "token_rejected",
                    "bearer token rejected",
                ));
            }
        }
        Ok(hello.variant.clone())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `authorization` metadata value: `Ok(None)` without one.
pub fn bearer(
    value: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Result<Option<String>, Refusal> {
    let Some(value) = value else { return Ok(None) };
    let text = value.to_str().map_err(|_| {
        Refusal::new(
            Code::Unauthenticated,
            "malformed_token",
            "authorization metadata is not ASCII",
        )
    })?;
    let token = text.strip_prefix("Bearer ").ok_or_else(|| {
        Refusal::new(
            Code::Unauthenticated,
            "malformed_token",
            "authorization metadata must be `Bearer <token>`",
        )
    })?;
    Ok(Some(token.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            pod: "p".into(),
            namespace: "ns".into(),
            variant: "llama-l4".into(),
            ..Hello::default()
        }
    }

    #[tokio::test]
    async fn without_a_token_every_stream_names_its_variant() {
        let variant = SharedToken(None).admit(None, &hello()).await.unwrap();
        assert_eq!(variant, "llama-l4");
    }

    #[tokio::test]
    async fn a_shared_token_must_match() {
        let admission = SharedToken(Some("s3cret".into()));
        assert!(admission.admit(Some("s3cret"), &hello()).await.is_ok());
        let wrong = admission.admit(Some("s3creT"), &hello()).await.unwrap_err();
        assert_eq!(wrong.status.code(), Code::Unauthenticated);
        assert_eq!(wrong.reason, "token_rejected");
        let missing = admission.admit(None, &hello()).await.unwrap_err();
        assert_eq!(missing.reason, "no_token");
    }

    #[test]
    fn bearer_needs_the_scheme() {
        let ok = "Bearer abc ".parse().unwrap();
        assert_eq!(bearer(Some(&ok)).unwrap().as_deref(), Some("abc"));
        let basic = "Basic abc".parse().unwrap();
        assert_eq!(bearer(Some(&basic)).unwrap_err().reason, "malformed_token");
        assert_eq!(bearer(None).unwrap(), None);
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
