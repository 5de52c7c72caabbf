//! Bearer tokens read from files.
//!
//! Projected service-account tokens are rotated in place by the kubelet, so
//! callers read the file again at every use instead of caching the token.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is empty")]
    Empty { path: PathBuf },
    #[error("token file {path} holds characters not allowed in a header")]
    Invalid { path: PathBuf },
}

/// `Bearer <token>` from the file (surrounding whitespace trimmed), as an
/// `authorization` header or metadata value.
// A blocking read, but of a small file on a local (usually tmpfs) volume.
pub fn read_bearer<V: TryFrom<String>>(path: &Path) -> Result<V, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    V::try_from(format!("Bearer {token}")).map_err(|_| TokenError::Invalid {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_trims_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  eyJhbGciOi.payload.sig\n").unwrap();
        let value: HeaderValue = read_bearer(&path).unwrap();
        assert_eq!(value, "Bearer eyJhbGciOi.payload.sig");

        std::fs::write(&path, "\n").unwrap();
        let err = read_bearer::<HeaderValue>(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("token file {} is empty", path.display())
        );

        std::fs::write(&path, "a\nb").unwrap();
        let err = read_bearer::<HeaderValue>(&path).unwrap_err();
        assert!(matches!(err, TokenError::Invalid { .. }), "{err}");

        let missing = dir.path().join("missing");
        let err = read_bearer::<HeaderValue>(&missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read token file {}: ", missing.display()))
        );
    }
}
