//! The webhook's serving certificate: files that cert-manager keeps
//! current, or a CA and certificate the aggregator makes itself, shares
//! between its replicas through a Secret, and hands to the API server as the
//! webhook configuration's `caBundle`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// Lists the names the stored certificate was made for, so a changed
/// Service name makes a new one.
const DNS_NAMES_ANNOTATION: &str = "wva.llmd.ai/dns-names";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const CA_KEY: &str = "ca.crt";
/// Years a generated certificate is valid.
const LEAF_YEARS: i32 = 5;
const CA_YEARS: i32 = 10;
/// Attempts at updating the webhook configuration against concurrent writers.
const CONFLICT_RETRIES: usize = 5;

/// PEM material of a serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not a usable PEM {kind}: {reason}")]
    Pem {
        what: String,
        kind: &'static str,
        reason: String,
    },
    #[error("Secret {0}: {1}")]
    Secret(String, String),
    #[error("MutatingWebhookConfiguration {0}: {1}")]
    Configuration(String, String),
}

/// The names the API server may call the webhook Service by.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A new CA and a serving certificate it signs for `names`.
pub fn generate(names: &[String]) -> Result<CertBundle, CertError> {
    // Validity starts a year back, so clock skew never makes it "not yet valid".
    let year = this_year();
    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wva webhook CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + LEAF_YEARS, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(CertBundle {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// The certificate in Secret `name`, made and stored there first if it is
/// missing or was made for other names. Replicas starting together agree:
/// the first to create the Secret wins and the others read it.
pub async fn shared_bundle(
    client: Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> Result<CertBundle, CertError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let id = format!("{namespace}/{name}");
    let error = |e: kube::Error| CertError::Secret(id.clone(), e.to_string());
    let wanted = names.join(",");
    let existing = api.get_opt(name).await.map_err(error)?;
    if let Some(secret) = &existing
        && let Some(bundle) = bundle_of(secret, &wanted)
    {
        return Ok(bundle);
    }
    let bundle = generate(names)?;
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            annotations: Some([(DNS_NAMES_ANNOTATION.to_string(), wanted.clone())].into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(secret_data(&bundle)),
        ..Secret::default()
    };
    let written = match existing {
        None => api.create(&PostParams::default(), &secret).await,
        Some(old) => {
            warn!(secret = %id, "the webhook certificate names other hosts; replacing it");
            secret.metadata.resource_version = old.metadata.resource_version;
            api.replace(name, &PostParams::default(), &secret).await
        }
    };
    match written {
        Ok(_) => {
            info!(secret = %id, "stored a new webhook certificate");
            Ok(bundle)
        }
        // Another replica wrote first: use its certificate.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(error)?;
            bundle_of(&secret, &wanted).ok_or_else(|| {
                CertError::Secret(id.clone(), "holds no certificate after a conflict".into())
            })
        }
        Err(e) => Err(error(e)),
    }
}

/// The keys of a `kubernetes.io/tls` Secret, plus the CA.
fn secret_data(bundle: &CertBundle) -> std::collections::BTreeMap<String, ByteString> {
    [
        (CERT_KEY, &bundle.cert),
        (KEY_KEY, &bundle.key),
        (CA_KEY, &bundle.ca),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

/// The secret's certificate, if complete and made for `names`.
fn bundle_of(secret: &Secret, names: &str) -> Option<CertBundle> {
    let made_for = secret
        .metadata
        .annotations
        .as_ref()?
        .get(DNS_NAMES_ANNOTATION)?;
    if made_for != names {
        return None;
    }
    let data = secret.data.as_ref()?;
    let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    Some(CertBundle {
        ca: text(CA_KEY)?,
        cert: text(CERT_KEY)?,
        key: text(KEY_KEY)?,
    })
}

/// Sets `caBundle` on every webhook of the configuration `name` (with the
/// resourceVersion it read, retrying on a conflict).
pub async fn publish_ca(client: Client, name: &str, ca_pem: &str) -> Result<(), CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let error = |e: kube::Error| CertError::Configuration(name.to_string(), e.to_string());
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    for _ in 0..CONFLICT_RETRIES {
        let mut configuration = api.get(name).await.map_err(error)?;
        let webhooks = configuration.webhooks.iter_mut().flatten();
        let mut changed = false;
        for webhook in webhooks {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        match api
            .replace(name, &PostParams::default(), &configuration)
            .await
        {
            Ok(_) => {
                info!(configuration = name, "published the webhook CA");
                return Ok(());
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(error(e)),
        }
    }
    Err(CertError::Configuration(
        name.to_string(),
        format!("still conflicting after {CONFLICT_RETRIES} attempts"),
    ))
}

/// A fixed certificate.
pub fn certified_key(bundle: &CertBundle, what: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let pem = |kind: &'static str, reason: String| CertError::Pem {
        what: what.to_string(),
        kind,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(bundle.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem("certificate", "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(bundle.key.as_bytes())
        .map_err(|e| pem("private key", e.to_string()))?;
    let provider = provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| pem("private key", e.to_string()))
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// `tls.crt` and `tls.key` in a directory (a mounted Secret), read again
/// when the certificate file changes, so a renewed certificate is served
/// without a restart.
#[derive(Debug)]
pub struct CertDir {
    dir: PathBuf,
    current: Mutex<(SystemTime, Arc<CertifiedKey>)>,
}

impl CertDir {
    /// Reads the files now; a missing or broken file fails the start.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let (modified, key) = read_dir(dir)?;
        Ok(CertDir {
            dir: dir.to_owned(),
            current: Mutex::new((modified, key)),
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

/// The server TLS configuration for a certificate source.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn a_generated_certificate_is_signed_by_its_ca_for_the_service_names() {
        let names = dns_names("wva-webhook", "wva-system");
        let bundle = generate(&names).unwrap();
        let key = certified_key(&bundle, "generated").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(bundle.ca.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider()),
        )
        .build()
        .unwrap();
        for name in [
            "wva-webhook.wva-system.svc",
            "wva-webhook.wva-system.svc.cluster.local",
        ] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &key.cert[0],
                    &[],
                    &server_name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("other.wva-system.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &key.cert[0],
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn a_stored_certificate_is_reused_only_for_the_same_names() {
        let names = dns_names("wva-webhook", "wva-system").join(",");
        let bundle = generate(&dns_names("wva-webhook", "wva-system")).unwrap();
        let secret = Secret {
            metadata: ObjectMeta {
                annotations: Some([(DNS_NAMES_ANNOTATION.to_string(), names.clone())].into()),
                ..ObjectMeta::default()
            },
            data: Some(secret_data(&bundle)),
            ..Secret::default()
        };
        assert_eq!(bundle_of(&secret, &names), Some(bundle));
        assert_eq!(bundle_of(&secret, "other.wva-system.svc"), None);
    }

    #[test]
    fn a_certificate_directory_is_read_again_when_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |bundle: &CertBundle| {
            std::fs::write(dir.path().join(KEY_KEY), &bundle.key).unwrap();
            std::fs::write(dir.path().join(CERT_KEY), &bundle.cert).unwrap();
        };
        let first = generate(&["a.wva.test".into()]).unwrap();
        write(&first);
        let certs = CertDir::load(dir.path()).unwrap();
        let served = certs.current().cert[0].clone();
        let second = generate(&["a.wva.test".into()]).unwrap();
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
            CertDir::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("private key")
        );
    }
}
