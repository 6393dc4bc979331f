//! Certificates obtained while running (over ACME), by name, swapped in without a reload:
//! the resolver of a server with `acme_hosts` looks here first on every handshake. Also
//! the validation certificates of pending TLS-ALPN-01 challenges (RFC 8737), presented
//! only to a client that offers ALPN `acme-tls/1` and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

type ByName = HashMap<String, Arc<CertifiedKey>>;

/// Certificates by (lower-case) name; read without a lock on each handshake.
#[derive(Default)]
pub struct Obtained {
    certificates: ArcSwap<ByName>,
    validations: ArcSwap<ByName>,
    /// Held to change either map (changes are rare; reads never take it).
    change: Mutex<()>,
}

impl std::fmt::Debug for Obtained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Obtained")
            .field("certificates", &self.certificates.load().len())
            .field("validations", &self.validations.load().len())
            .finish()
    }
}

impl Obtained {
    /// The certificate obtained for `name`, if any.
    pub fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certificates.load().get(name).cloned()
    }

    /// Serves `key` for `name` from the next handshake on (connections already made keep
    /// theirs).
    pub fn set_certificate(&self, name: &str, key: Arc<CertifiedKey>) {
        self.edit(&self.certificates, |map| {
            map.insert(name.to_owned(), key);
        });
    }

    pub fn remove_certificate(&self, name: &str) {
        self.edit(&self.certificates, |map| {
            map.remove(name);
        });
    }

    /// The validation certificate of a pending TLS-ALPN-01 challenge for `name`.
    pub fn validation(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.validations.load().get(name).cloned()
    }

    /// Presents `key` to validators of `name` until [`Obtained::remove_validation`].
    pub fn set_validation(&self, name: &str, key: Arc<CertifiedKey>) {
        self.edit(&self.validations, |map| {
            map.insert(name.to_owned(), key);
        });
    }

    pub fn remove_validation(&self, name: &str) {
        self.edit(&self.validations, |map| {
            map.remove(name);
        });
    }

    fn edit(&self, maps: &ArcSwap<ByName>, change: impl FnOnce(&mut ByName)) {
        let _held = self
            .change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map = ByName::clone(&maps.load());
        change(&mut map);
        maps.store(Arc::new(map));
    }
}

/// A certificate chain and its key, both PEM (as an ACME server issues them and the
/// cache keeps them), ready to serve; the key must fit the first certificate.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let signing = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    Ok(certified)
}

/// The self-signed certificate that proves `name` under TLS-ALPN-01: `name` as its only
/// subject alternative name and the critical `acmeIdentifier` extension holding
/// `digest`, the SHA-256 of the challenge's key authorization.
pub fn validation_key(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_pair_loads_and_a_foreign_key_is_refused() {
        let one = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).expect("one");
        let two = rcgen::generate_simple_self_signed(vec!["b.example.com".into()]).expect("two");
        let (cert, key) = (one.cert.pem(), one.signing_key.serialize_pem());
        assert!(certified_key(&cert, &key).is_ok());
        let foreign = two.signing_key.serialize_pem();
        let err = certified_key(&cert, &foreign).expect_err("foreign key");
        assert!(err.contains("does not fit"), "{err}");
        assert!(certified_key("", &key).is_err());
    }

    #[test]
    fn certificates_swap_by_name() {
        let obtained = Obtained::default();
        let key = Arc::new(validation_key("a.example.com", &[7; 32]).expect("validation"));
        assert!(obtained.certificate("a.example.com").is_none());
        obtained.set_certificate("a.example.com", Arc::clone(&key));
        obtained.set_validation("a.example.com", Arc::clone(&key));
        assert!(obtained.certificate("a.example.com").is_some());
        obtained.remove_validation("a.example.com");
        assert!(obtained.validation("a.example.com").is_none());
        assert!(obtained.certificate("a.example.com").is_some());
    }
}
