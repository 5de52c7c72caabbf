//! Making a CA and serving certificate, and deciding when either must be
//! made again. Pure: the time is an argument.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::bundle::{CertBundle, CertError, first_certificate, not_after};

/// How long a serving certificate is valid, and how long before it ends a
/// new one is made: renewal has a quarter of the lifetime to succeed, across
/// restarts and API server outages.
pub const LEAF_LIFETIME: Duration = Duration::days(365);
pub const RENEW_BEFORE: Duration = Duration::days(90);
/// How long the CA is valid. Clients get the CA when they are set up (the
/// webhook configuration's `caBundle`, an injected agent's environment), so
/// it changes rarely.
const CA_LIFETIME: Duration = Duration::days(3650);
/// Validity starts this far back, so clock skew between the aggregator and
/// the API server never makes a new certificate "not yet valid".
const BACKDATE: Duration = Duration::days(1);

/// What a stored certificate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// A new serving certificate from the stored CA: it expires within
    /// [`RENEW_BEFORE`] or names other hosts.
    NewLeaf,
    /// A new CA and certificate: none is stored, the stored CA's key is not
    /// (a Secret written by an older version) or the CA would end before a
    /// new certificate.
    NewCa,
}

/// What `stored` (made for `same_names` or not) needs at `now`: nothing
/// while its certificate lasts, else a new certificate from its CA, or a new
/// CA when the CA's key is not stored or the CA would end first.
pub fn plan(stored: Option<&CertBundle>, same_names: bool, now: OffsetDateTime) -> Plan {
    let Some(stored) = stored else {
        return Plan::NewCa;
    };
    let leaf_lasts = first_certificate(&stored.cert)
        .and_then(|leaf| not_after(&leaf))
        .is_some_and(|end| end - now >= RENEW_BEFORE);
    let ca_readable = first_certificate(&stored.ca).is_some();
    if same_names && leaf_lasts && ca_readable {
        // Even without the CA's key (a Secret of an earlier version): while
        // replicas of that version run, they keep publishing its CA alone,
        // so a new CA would flip the caBundle back and forth.
        return Plan::Keep;
    }
    let ca_lasts = first_certificate(&stored.ca)
        .and_then(|ca| not_after(&ca))
        .is_some_and(|end| end - now >= LEAF_LIFETIME + RENEW_BEFORE);
    if stored.ca_key.is_none() || !ca_lasts {
        Plan::NewCa
    } else {
        Plan::NewLeaf
    }
}

/// Carries out `plan` for `names` at `now`. A new CA is put first in the
/// bundle, with the CA it replaces after it (while that is still valid), so
/// the API server trusts replicas still serving the previous certificate.
pub fn issue(
    plan: Plan,
    stored: Option<&CertBundle>,
    names: &[String],
    now: OffsetDateTime,
) -> Result<CertBundle, CertError> {
    let (ca_pem, ca_key) = match (plan, stored) {
        (Plan::Keep, Some(stored)) => return Ok(stored.clone()),
        (
            Plan::NewLeaf,
            Some(CertBundle {
                ca,
                ca_key: Some(key),
                ..
            }),
        ) => (ca.clone(), KeyPair::from_pem(key)?),
        _ => {
            let (ca, key) = new_ca(now)?;
            let previous = stored
                .and_then(|s| first_certificate(&s.ca))
                .filter(|old| not_after(old).is_some_and(|end| end > now))
                .map(|old| pem_of(&old))
                .unwrap_or_default();
            (format!("{ca}{previous}"), key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_LIFETIME;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertBundle {
        ca: ca_pem,
        ca_key: Some(ca_key.serialize_pem()),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A new self-signed CA: its PEM certificate and its key.
fn new_ca(now: OffsetDateTime) -> Result<(String, KeyPair), CertError> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "wva self-made CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let pem = ca.pem();
    let key = KeyPair::from_pem(&ca.key().serialize_pem())?;
    Ok((pem, key))
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn names() -> Vec<String> {
        vec!["wva-webhook.wva-system.svc".to_string()]
    }

    fn leaf_end(bundle: &CertBundle) -> OffsetDateTime {
        not_after(&first_certificate(&bundle.cert).unwrap()).unwrap()
    }

    fn cas(bundle: &CertBundle) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(bundle.ca.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn nothing_stored_makes_a_ca_and_a_certificate_for_a_year() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(plan(None, true, now), Plan::NewCa);
        let bundle = issue(Plan::NewCa, None, &names(), now).unwrap();
        assert!(bundle.ca_key.is_some());
        assert_eq!(cas(&bundle).len(), 1);
        let lasts = leaf_end(&bundle) - now;
        assert!(
            (LEAF_LIFETIME - Duration::seconds(1)..=LEAF_LIFETIME).contains(&lasts),
            "{lasts}"
        );
        assert_eq!(plan(Some(&bundle), true, now), Plan::Keep);
    }

    #[test]
    fn a_certificate_near_its_end_is_renewed_from_the_same_ca() {
        let then = OffsetDateTime::now_utc();
        let bundle = issue(Plan::NewCa, None, &names(), then).unwrap();
        let almost = then + LEAF_LIFETIME - RENEW_BEFORE;
        assert_eq!(
            plan(Some(&bundle), true, almost - Duration::hours(1)),
            Plan::Keep
        );
        assert_eq!(
            plan(Some(&bundle), true, almost + Duration::hours(1)),
            Plan::NewLeaf
        );
        let renewed = issue(Plan::NewLeaf, Some(&bundle), &names(), almost).unwrap();
        assert_eq!(renewed.ca, bundle.ca, "the CA and so the caBundle stay");
        assert_ne!(renewed.cert, bundle.cert);
        assert_eq!(
            leaf_end(&renewed).unix_timestamp(),
            (almost + LEAF_LIFETIME).unix_timestamp()
        );
        assert_eq!(plan(Some(&renewed), true, almost), Plan::Keep);
        // A Service of another name needs a certificate for it.
        assert_eq!(plan(Some(&renewed), false, almost), Plan::NewLeaf);
    }

    #[test]
    fn a_secret_without_the_ca_key_gets_a_new_ca_trusted_beside_the_old() {
        let now = OffsetDateTime::now_utc();
        let old = CertBundle {
            ca_key: None,
            ..issue(Plan::NewCa, None, &names(), now).unwrap()
        };
        // Kept while its certificate lasts (replicas of the earlier version
        // may still be publishing its CA) ...
        assert_eq!(plan(Some(&old), true, now), Plan::Keep);
        // ... and replaced, CA and all, once it is due.
        let due = now + LEAF_LIFETIME - RENEW_BEFORE + Duration::days(1);
        assert_eq!(plan(Some(&old), true, due), Plan::NewCa);
        assert_eq!(plan(Some(&old), false, now), Plan::NewCa);
        let new = issue(Plan::NewCa, Some(&old), &names(), now).unwrap();
        let trusted = cas(&new);
        assert_eq!(trusted.len(), 2, "the new CA and the one it replaces");
        assert_eq!(trusted[1], first_certificate(&old.ca).unwrap());
        // The next new CA drops the oldest: at most two are trusted.
        let newer = issue(Plan::NewCa, Some(&new), &names(), now).unwrap();
        assert_eq!(cas(&newer)[1], trusted[0]);
        assert_eq!(cas(&newer).len(), 2);
    }

    #[test]
    fn a_ca_that_would_end_before_a_new_certificate_is_replaced() {
        let then = OffsetDateTime::now_utc();
        let bundle = issue(Plan::NewCa, None, &names(), then).unwrap();
        let late = then + CA_LIFETIME - LEAF_LIFETIME - RENEW_BEFORE + Duration::days(1);
        assert_eq!(plan(Some(&bundle), true, late), Plan::NewCa);
        // An expired old CA is not carried into the new bundle.
        let after_end = then + CA_LIFETIME + Duration::days(1);
        let replaced = issue(Plan::NewCa, Some(&bundle), &names(), after_end).unwrap();
        assert_eq!(cas(&replaced).len(), 1);
    }

    #[test]
    fn unreadable_material_is_made_again() {
        let now = OffsetDateTime::now_utc();
        let good = issue(Plan::NewCa, None, &names(), now).unwrap();
        let broken_leaf = CertBundle {
            cert: "not a certificate".into(),
            ..good.clone()
        };
        assert_eq!(plan(Some(&broken_leaf), true, now), Plan::NewLeaf);
        let broken_ca = CertBundle {
            ca: String::new(),
            ..good
        };
        assert_eq!(plan(Some(&broken_ca), true, now), Plan::NewCa);
    }
}
