//! Test certificates: a CA of the test's own and the leaf certificates it
//! signs, as PEM.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA's certificate.
    pub pem: String,
}

/// A leaf certificate and its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key)?.pem();
        Ok(TestCa { params, key, pem })
    }

    /// A certificate for `names` (DNS names or IP addresses) with `usage`.
    pub fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        let issuer = Issuer::from_params(&self.params, &self.key);
        Ok(Leaf {
            cert_pem: params.signed_by(&key, &issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
