//! A self-made certificate kept in a Secret, so every replica serves the
//! same one and a renewal made by one is picked up by the others.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use time::OffsetDateTime;
use tracing::info;

use crate::bundle::{CertBundle, CertError};
use crate::issue::{self, Plan};

/// Lists the names the stored certificate was made for, so a changed
/// Service name makes a new one.
const DNS_NAMES_ANNOTATION: &str = "wva.llmd.ai/dns-names";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const CA_KEY: &str = "ca.crt";
/// The CA's private key, so a serving certificate can be renewed without a
/// new CA. The Secret is readable by the aggregator's ServiceAccount only.
const CA_KEY_KEY: &str = "ca.key";

/// The certificate in Secret `name`, made (or renewed) and stored there
/// first when [`issue::plan`] says so. Replicas racing on it agree: the
/// first write wins and the others read it.
pub async fn current(
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
    let stored = existing.as_ref().and_then(bundle_of);
    let same_names = existing
        .as_ref()
        .is_some_and(|s| made_for(s) == Some(&wanted));
    let plan = issue::plan(stored.as_ref(), same_names, OffsetDateTime::now_utc());
    if plan == Plan::Keep
        && let Some(bundle) = stored
    {
        return Ok(bundle);
    }
    let bundle = issue::issue(plan, stored.as_ref(), names, OffsetDateTime::now_utc())?;
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
            secret.metadata.resource_version = old.metadata.resource_version;
            api.replace(name, &PostParams::default(), &secret).await
        }
    };
    match written {
        Ok(_) => {
            info!(secret = %id, ?plan, "stored a new certificate");
            Ok(bundle)
        }
        // Another replica wrote first: use its certificate.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(error)?;
            bundle_of(&secret).ok_or_else(|| {
                CertError::Secret(id.clone(), "holds no certificate after a conflict".into())
            })
        }
        Err(e) => Err(error(e)),
    }
}

/// The keys of a `kubernetes.io/tls` Secret, plus the CA and its key.
fn secret_data(bundle: &CertBundle) -> BTreeMap<String, ByteString> {
    [
        (CERT_KEY, Some(&bundle.cert)),
        (KEY_KEY, Some(&bundle.key)),
        (CA_KEY, Some(&bundle.ca)),
        (CA_KEY_KEY, bundle.ca_key.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), ByteString(v?.as_bytes().to_vec()))))
    .collect()
}

fn made_for(secret: &Secret) -> Option<&String> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(DNS_NAMES_ANNOTATION)
}

/// The secret's certificate, if complete (the CA key may be missing).
fn bundle_of(secret: &Secret) -> Option<CertBundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    Some(CertBundle {
        ca: text(CA_KEY)?,
        ca_key: text(CA_KEY_KEY),
        cert: text(CERT_KEY)?,
        key: text(KEY_KEY)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_certificate_round_trips_and_records_its_names() {
        let names = vec!["wva-webhook.wva-system.svc".to_string()];
        let bundle = issue::issue(Plan::NewCa, None, &names, OffsetDateTime::now_utc()).unwrap();
        let secret = Secret {
            metadata: ObjectMeta {
                annotations: Some([(DNS_NAMES_ANNOTATION.to_string(), names.join(","))].into()),
                ..ObjectMeta::default()
            },
            data: Some(secret_data(&bundle)),
            ..Secret::default()
        };
        assert_eq!(bundle_of(&secret), Some(bundle.clone()));
        assert_eq!(made_for(&secret), Some(&names.join(",")));
        // A Secret of an older version has no CA key: still read, so the
        // plan can replace its CA while trusting the old one.
        let mut old = secret.clone();
        old.data.as_mut().unwrap().remove(CA_KEY_KEY);
        assert_eq!(bundle_of(&old).unwrap().ca_key, None);
    }
}
