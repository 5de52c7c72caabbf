//! A certificate and key in files that cert-manager (or an operator) keeps
//! current, such as a mounted `kubernetes.io/tls` Secret.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::bundle::{CertBundle, CertError, ExpiryGauge, certified_key, record_expiry};

/// A certificate file and its key, read again when the certificate file
/// changes, so a renewed certificate is served without a restart.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Current>,
    expiry: ExpiryGauge,
}

/// The certificate served, the modification time it was read at, and when
/// reading a newer one last failed.
#[derive(Debug)]
struct Current {
    modified: SystemTime,
    key: Arc<CertifiedKey>,
    failed_at: Option<Instant>,
}

/// Least time between two reads of files that did not make a certificate,
/// so a broken renewal costs no read at every handshake.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl CertFiles {
    /// Reads the files now; a missing or broken file fails the start.
    pub fn load(cert: &Path, key: &Path, expiry: ExpiryGauge) -> Result<Self, CertError> {
        let (modified, certified) = read(cert, key)?;
        record_expiry(&expiry, &certified);
        Ok(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Mutex::new(Current {
                modified,
                key: certified,
                failed_at: None,
            }),
            expiry,
        })
    }

    /// `tls.crt` and `tls.key` in `dir` (a mounted `kubernetes.io/tls` Secret).
    pub fn in_dir(dir: &Path, expiry: ExpiryGauge) -> Result<Self, CertError> {
        CertFiles::load(&dir.join("tls.crt"), &dir.join("tls.key"), expiry)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let modified = std::fs::metadata(&self.cert).and_then(|m| m.modified());
        let retry = current
            .failed_at
            .is_none_or(|at| at.elapsed() >= RETRY_AFTER);
        if modified.is_ok_and(|m| m != current.modified) && retry {
            // A half-written renewal keeps the old certificate until it is whole.
            match read(&self.cert, &self.key) {
                Ok((modified, key)) => {
                    info!(cert = %self.cert.display(), "serving the renewed certificate");
                    record_expiry(&self.expiry, &key);
                    *current = Current {
                        modified,
                        key,
                        failed_at: None,
                    };
                }
                Err(e) => {
                    if current.failed_at.is_none() {
                        warn!(error = %e, "keeping the current certificate");
                    }
                    current.failed_at = Some(Instant::now());
                }
            }
        }
        Arc::clone(&current.key)
    }
}

fn read(cert: &Path, key: &Path) -> Result<(SystemTime, Arc<CertifiedKey>), CertError> {
    let text = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let modified = std::fs::metadata(cert)
        .and_then(|m| m.modified())
        .map_err(|source| CertError::Read {
            path: cert.to_owned(),
            source,
        })?;
    let bundle = CertBundle {
        ca: String::new(),
        ca_key: None,
        cert: text(cert)?,
        key: text(key)?,
    };
    Ok((
        modified,
        certified_key(&bundle, &cert.display().to_string())?,
    ))
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::issue::{Plan, issue};

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
    fn certificate_files_are_read_again_when_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |bundle: &CertBundle| {
            std::fs::write(dir.path().join("tls.key"), &bundle.key).unwrap();
            std::fs::write(dir.path().join("tls.crt"), &bundle.cert).unwrap();
        };
        let first = issued();
        write(&first);
        let expiry = ExpiryGauge::default();
        let certs = CertFiles::in_dir(dir.path(), expiry.clone()).unwrap();
        assert!(expiry.get() > 0, "the expiry is exported");
        let served = certs.current().cert[0].clone();
        let second = issued();
        write(&second);
        // Make the change visible whatever the file system's time resolution.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("tls.crt"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let renewed = certs.current().cert[0].clone();
        assert_ne!(served, renewed);
        assert_eq!(renewed, certified_key(&second, "second").unwrap().cert[0]);
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        assert!(
            CertFiles::in_dir(dir.path(), ExpiryGauge::default())
                .unwrap_err()
                .to_string()
                .contains("private key")
        );
    }
}
