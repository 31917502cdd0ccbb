//! The sandbox's own CA: made in the gateway when it starts, its key never leaving the
//! gateway's memory. Its certificate is name-constrained to the secrets' hosts (and the
//! names below them, as a DNS constraint means) and to no IP address, so a client that
//! trusts it accepts from it only certificates for those names; the gateway issues one leaf
//! certificate per host (at most one per secret host: the cache is bounded by them), on first
//! use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long the certificates are valid: longer than any sandbox lives, shorter than what a
/// leaked certificate should be good for. Valid from a day back, for a guest clock behind.
const VALIDITY_DAYS: i64 = 90;

/// A CA or certificate that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox's CA: {0}")]
pub struct CaError(String);

/// The CA of one sandbox.
pub struct SandboxCa {
    key: KeyPair,
    certificate: rcgen::Certificate,
    hosts: Vec<String>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl SandboxCa {
    /// A new CA for certificates of `hosts` (DNS names) only.
    pub fn new(hosts: &[String]) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("krunbox sandbox CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: hosts
                .iter()
                .map(|h| GeneralSubtree::DnsName(h.clone()))
                .collect(),
            // Every address: no certificate of this CA is good for an IP.
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
        valid_from_now(&mut params);
        let certificate = params
            .self_signed(&key)
            .map_err(|e| CaError(e.to_string()))?;
        Ok(Self {
            key,
            certificate,
            hosts: hosts.to_vec(),
            leaves: Mutex::default(),
        })
    }

    /// The CA's certificate, PEM: what the guest trusts.
    pub fn certificate_pem(&self) -> String {
        self.certificate.pem()
    }

    /// A TLS server configuration presenting a certificate for `host` (one of the CA's
    /// hosts), speaking HTTP/1.1 only.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        if !self.hosts.contains(&host) {
            return Err(CaError(format!("{host} is not one of the secrets' hosts")));
        }
        let mut leaves = self
            .leaves
            .lock()
            .map_err(|_| CaError("the certificate cache is poisoned".into()))?;
        if let Some(config) = leaves.get(&host) {
            return Ok(Arc::clone(config));
        }
        let leaf_key = KeyPair::generate().map_err(|e| CaError(e.to_string()))?;
        let mut params =
            CertificateParams::new(vec![host.clone()]).map_err(|e| CaError(e.to_string()))?;
        params.distinguished_name = name(&host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        valid_from_now(&mut params);
        let leaf = params
            .signed_by(&leaf_key, &self.certificate, &self.key)
            .map_err(|e| CaError(e.to_string()))?;
        let chain = vec![leaf.der().clone(), self.certificate.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| CaError(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        leaves.insert(host, Arc::clone(&config));
        Ok(config)
    }

    /// The CA's certificate, DER (tests trust it).
    pub fn certificate_der(&self) -> CertificateDer<'static> {
        self.certificate.der().clone()
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn valid_from_now(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}
