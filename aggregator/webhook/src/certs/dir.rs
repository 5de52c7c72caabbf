//! `tls.crt` and `tls.key` kept current by cert-manager in a mounted Secret.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::{CertBundle, CertError, ExpiryGauge, certified_key, record_expiry};

const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

/// `tls.crt` and `tls.key` in a directory (a mounted Secret), read again
/// when the certificate file changes, so a renewed certificate is served
/// without a restart.
#[derive(Debug)]
pub struct CertDir {
    dir: PathBuf,
    current: Mutex<(SystemTime, Arc<CertifiedKey>)>,
    expiry: ExpiryGauge,
}

impl CertDir {
    /// Reads the files now; a missing or broken file fails the start.
    pub fn load(dir: &Path, expiry: ExpiryGauge) -> Result<Self, CertError> {
        let (modified, key) = read_dir(dir)?;
        record_expiry(&expiry, &key);
        Ok(CertDir {
            dir: dir.to_owned(),
            current: Mutex::new((modified, key)),
            expiry,
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let modified = std::fs::metadata(self.dir.join(CERT_KEY)).and_then(|m| m.modified());
        if modified.is_ok_and(|m| m != current.0) {
            // A half-written renewal keeps the old certificate until it is whole.
            match read_dir(&self.dir) {
                Ok(fresh) => {
                    info!(dir = %self.dir.display(), "serving the renewed webhook certificate");
                    record_expiry(&self.expiry, &fresh.1);
                    *current = fresh;
                }
                Err(e) => warn!(error = %e, "keeping the current webhook certificate"),
            }
        }
        Arc::clone(&current.1)
    }
}

fn read_dir(dir: &Path) -> Result<(SystemTime, Arc<CertifiedKey>), CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertError::Read { path, source })
    };
    let cert_path = dir.join(CERT_KEY);
    let modified = std::fs::metadata(&cert_path)
        .and_then(|m| m.modified())
        .map_err(|source| CertError::Read {
            path: cert_path.clone(),
            source,
        })?;
    let bundle = CertBundle {
        ca: String::new(),
        ca_key: None,
        cert: read(CERT_KEY)?,
        key: read(KEY_KEY)?,
    };
    Ok((
        modified,
        certified_key(&bundle, &dir.display().to_string())?,
    ))
}

impl ResolvesServerCert for CertDir {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::super::issue::{Plan, issue};
    use super::*;

    fn issued() -> CertBundle {
        issue(
            Plan::NewCa,
            None,
            &["a.wva.test".into()],
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    #[test]
    fn a_certificate_directory_is_read_again_when_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |bundle: &CertBundle| {
            std::fs::write(dir.path().join(KEY_KEY), &bundle.key).unwrap();
            std::fs::write(dir.path().join(CERT_KEY), &bundle.cert).unwrap();
        };
        let first = issued();
        write(&first);
        let expiry = ExpiryGauge::default();
        let certs = CertDir::load(dir.path(), expiry.clone()).unwrap();
        assert!(expiry.get() > 0, "the expiry is exported");
        let served = certs.current().cert[0].clone();
        let second = issued();
        write(&second);
        // Make the change visible whatever the file system's time resolution.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(CERT_KEY))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let renewed = certs.current().cert[0].clone();
        assert_ne!(served, renewed);
        assert_eq!(renewed, certified_key(&second, "second").unwrap().cert[0]);
        std::fs::write(dir.path().join(KEY_KEY), "not a key").unwrap();
        assert!(
            CertDir::load(dir.path(), ExpiryGauge::default())
                .unwrap_err()
                .to_string()
                .contains("private key")
        );
    }
}
