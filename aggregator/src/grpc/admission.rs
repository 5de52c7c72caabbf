//! The gRPC side of admission: the bearer token an agent presents, and the
//! status a refused stream gets.

use tonic::{Code, Status};
use wva_core::admission::{Refusal, RefusalCode};

/// The token of an `authorization` metadata value: `Ok(None)` without one.
pub fn bearer(
    value: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Result<Option<String>, Refusal> {
    let Some(value) = value else { return Ok(None) };
    let text = value.to_str().map_err(|_| {
        Refusal::new(
            RefusalCode::Unauthenticated,
            "malformed_token",
            "authorization metadata is not ASCII",
        )
    })?;
    let token = text.strip_prefix("Bearer ").ok_or_else(|| {
        Refusal::new(
            RefusalCode::Unauthenticated,
            "malformed_token",
            "authorization metadata must be `Bearer <token>`",
        )
    })?;
    Ok(Some(token.trim().to_string()))
}

/// The gRPC status a refused agent receives.
pub fn status(refusal: &Refusal) -> Status {
    let code = match refusal.code {
        RefusalCode::Unauthenticated => Code::Unauthenticated,
        RefusalCode::PermissionDenied => Code::PermissionDenied,
        RefusalCode::NotFound => Code::NotFound,
        RefusalCode::FailedPrecondition => Code::FailedPrecondition,
        RefusalCode::Unavailable => Code::Unavailable,
    };
    Status::new(code, refusal.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_needs_the_scheme() {
        let ok = "Bearer abc ".parse().unwrap();
        assert_eq!(bearer(Some(&ok)).unwrap().as_deref(), Some("abc"));
        let basic = "Basic abc".parse().unwrap();
        assert_eq!(bearer(Some(&basic)).unwrap_err().reason, "malformed_token");
        assert_eq!(bearer(None).unwrap(), None);
    }
}
