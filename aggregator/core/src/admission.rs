//! Who may open an agent stream, and which variant its data feeds.
//!
//! Standalone mode checks an optional shared bearer token and trusts the
//! variant the Hello names. In Kubernetes mode the token is the pod's own
//! projected service-account token, verified by the API server, and the
//! variant comes from the cluster (see `k8s::identity`).

use wva_proto::v1::Hello;

/// The kind of a refusal; the ingest service answers the gRPC status code
/// of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    Unauthenticated,
    PermissionDenied,
    NotFound,
    FailedPrecondition,
    Unavailable,
}

/// Why a stream was refused: its kind and message for the agent, and a
/// stable label for the refusal counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            reason,
            message: message.into(),
        }
    }
}

#[async_trait::async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Admits a stream presenting `bearer` (the token of an `authorization:
    /// Bearer` header) with `hello`; returns the name of the Deployment whose
    /// variant the pod's data feeds.
    async fn admit(&self, bearer: Option<&str>, hello: &Hello) -> Result<String, Refusal>;

    /// Whether an admitted stream's credential proves which pod it speaks
    /// for. Where it does not, a pod whose agent is still sending cannot be
    /// taken over by another stream (see `store::Takeover`).
    fn proves_pod(&self) -> bool;
}

/// A shared secret, or none: every stream is trusted to name its variant.
pub struct SharedToken(pub Option<String>);

#[async_trait::async_trait]
impl Admission for SharedToken {
    async fn admit(&self, bearer: Option<&str>, hello: &Hello) -> Result<String, Refusal> {
        if let Some(expected) = &self.0 {
            let Some(token) = bearer else {
                return Err(Refusal::new(
                    RefusalCode::Unauthenticated,
                    "no_token",
                    "missing authorization metadata (Bearer token)",
                ));
            };
            if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
                return Err(Refusal::new(
                    RefusalCode::Unauthenticated,
                    "token_rejected",
                    "bearer token rejected",
                ));
            }
        }
        Ok(hello.variant.clone())
    }

    /// Every agent holding the shared token may name any pod.
    fn proves_pod(&self) -> bool {
        false
    }
}

/// Compares two secrets in a time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;

    fn hello() -> Hello {
        Hello {
            pod: "p".into(),
            namespace: "ns".into(),
            variant: "llama-l4".into(),
            ..Hello::default()
        }
    }

    #[test]
    fn without_a_token_every_stream_names_its_variant() {
        let variant = block_on(SharedToken(None).admit(None, &hello())).unwrap();
        assert_eq!(variant, "llama-l4");
    }

    #[test]
    fn a_shared_token_must_match() {
        let admission = SharedToken(Some("s3cret".into()));
        assert!(block_on(admission.admit(Some("s3cret"), &hello())).is_ok());
        let wrong = block_on(admission.admit(Some("s3creT"), &hello())).unwrap_err();
        assert_eq!(wrong.code, RefusalCode::Unauthenticated);
        assert_eq!(wrong.reason, "token_rejected");
        let missing = block_on(admission.admit(None, &hello())).unwrap_err();
        assert_eq!(missing.reason, "no_token");
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
