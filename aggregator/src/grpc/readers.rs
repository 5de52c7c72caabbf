//! Who may read decisions: KEDA's external scaler and the diagnostics
//! service answer only clients that present a client certificate the TLS
//! layer verified, or the reader token.

use tonic::{Request, Status};
use wva_core::admission::constant_time_eq;

/// The credentials a reader may present; with neither configured the
/// readers are open to anyone who reaches the port.
#[derive(Debug, Clone, Default)]
pub struct ReaderAuth {
    /// The bearer token readers may present.
    pub token: Option<String>,
    /// Whether the TLS layer verifies client certificates (`--tls-client-ca`).
    pub certificates: bool,
}

impl ReaderAuth {
    /// Whether any reader is answered without a credential.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && !self.certificates
    }

    /// Admits a request to a reader service, or says what it lacks.
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.is_open() {
            return Ok(request);
        }
        // The TLS layer admits only certificates the client CA signed, so
        // any certificate here is a verified one.
        if self.certificates && request.peer_certs().is_some_and(|c| !c.is_empty()) {
            return Ok(request);
        }
        if let Some(expected) = &self.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if presented.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes())) {
                return Ok(request);
            }
        }
        Err(Status::unauthenticated(self.needed()))
    }

    fn needed(&self) -> &'static str {
        match (self.certificates, self.token.is_some()) {
            (true, true) => {
                "KEDA and diagnostics clients need a client certificate signed by the aggregator's \
                 client CA or the reader token (authorization: Bearer)"
            }
            (true, false) => {
                "KEDA and diagnostics clients need a client certificate signed by the aggregator's client CA"
            }
            _ => "KEDA and diagnostics clients need the reader token (authorization: Bearer)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bearer(token: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    #[test]
    fn without_credentials_configured_readers_are_open() {
        assert!(ReaderAuth::default().check(Request::new(())).is_ok());
    }

    #[test]
    fn the_reader_token_must_match_whole() {
        let auth = ReaderAuth {
            token: Some("s3cret".into()),
            certificates: false,
        };
        assert!(auth.check(with_bearer("s3cret")).is_ok());
        for wrong in ["s3cre", "s3cret2", ""] {
            let refused = auth.check(with_bearer(wrong)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            assert!(refused.message().contains("reader token"), "{refused:?}");
        }
        assert!(auth.check(Request::new(())).is_err());
    }

    #[test]
    fn a_certificate_is_required_where_the_tls_layer_checks_them() {
        let auth = ReaderAuth {
            token: None,
            certificates: true,
        };
        // A request without a verified peer certificate (plaintext or none presented).
        let refused = auth.check(with_bearer("anything")).unwrap_err();
        assert!(
            refused.message().contains("client certificate"),
            "{refused:?}"
        );
    }
}
