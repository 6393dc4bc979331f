//! TLS settings from PEM files into rustls configurations (the admin API's HTTPS, the
//! clients of discovery sources; TLS termination builds on the same loading).
//!
//! `settings`: what a configuration says of TLS (the configuration holds these types;
//! this module imports nothing from it). `cert` reads a certificate's validity dates;
//! `verify` trusts a certificate listed in the CA file as itself (a self-signed backend);
//! `words` says why a handshake with a backend failed; `obtained` holds the certificates
//! obtained while running (ACME) and the validation certificates of pending challenges.

pub(crate) mod cert;
pub mod obtained;
mod settings;
mod verify;
pub mod words;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub use obtained::Obtained;
pub use settings::{BackendsTls, ClientAuth, ClientTlsFiles, TlsFiles, TlsTermination, TlsVersion};
use verify::TrustedFile;

/// A certificate or key that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read certificates: {message}", path.display())]
    Certificates { path: PathBuf, message: String },
    #[error("{}: no certificate in the file (expected PEM \"BEGIN CERTIFICATE\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: cannot read the private key: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("{}: the key does not fit the certificate, or is unusable: {source}", key.display())]
    Mismatch {
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "a client certificate needs its key and a key needs its certificate: give both or neither"
    )]
    HalfPair,
    #[error("{}: no usable CA certificate in the file", path.display())]
    NoTrustAnchor { path: PathBuf },
    #[error("no CA certificate given and none found in the system's trust store")]
    NoSystemRoots,
}

impl TlsError {
    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Certificates { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::Key { path, .. }
            | TlsError::NoTrustAnchor { path } => Some(path),
            TlsError::Mismatch { key, .. } => Some(key),
            TlsError::HalfPair | TlsError::NoSystemRoots => None,
        }
    }
}

/// A client configuration verifying servers against `files.cacert_path` (a certificate
/// listed there is also trusted as itself), or the system's trust store, and presenting
/// the client certificate if there is one.
pub fn client_config(files: &ClientTlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Mismatch {
            key: files.key_path.clone().unwrap_or_default(),
            source,
        })?;
    let builder = match &files.cacert_path {
        // `dangerous` is only rustls' door to a verifier of one's own; this one verifies.
        Some(path) => builder
            .dangerous()
            .with_custom_certificate_verifier(TrustedFile::new(
                path,
                certificates(path)?,
                provider,
            )?),
        None => {
            // Unreadable entries of the system store are skipped, as every TLS client
            // does: one broken file there must not stop discovery.
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
            builder.with_root_certificates(roots)
        }
    };
    let config = match (&files.cert_path, &files.key_path) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => builder
            .with_client_auth_cert(certificates(cert_path)?, private_key(key_path)?)
            .map_err(|source| TlsError::Mismatch {
                key: key_path.clone(),
                source,
            })?,
        _ => return Err(TlsError::HalfPair),
    };
    Ok(Arc::new(config))
}

/// A server configuration presenting the chain in `files.cert_path` with its key,
/// offering `alpn` protocols in order.
pub fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = certificates(&files.cert_path)?;
    let key = private_key(&files.key_path)?;
    let mismatch = |source| TlsError::Mismatch {
        key: files.key_path.clone(),
        source,
    };
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(mismatch)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(mismatch)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The IANA names of the cipher suites rustls offers (`[servers.NAME.tls] ciphers`).
pub fn cipher_suite_names() -> Vec<&'static str> {
    ring::default_provider()
        .cipher_suites
        .iter()
        .filter_map(|suite| suite.suite().as_str())
        .collect()
}

/// The rustls configuration of a `protocol = "tls"` server: its certificates (the one
/// obtained for the name a client asks for when it is one of `acme_hosts`, else the file
/// valid for it, else the first), versions, cipher suites, session tickets, ALPN and
/// client certificates. `obtained` holds the certificates of `acme_hosts` (`None`:
/// they are not looked for).
pub fn termination_config(
    t: &TlsTermination,
    obtained: Option<&Arc<Obtained>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(provider_with(&t.ciphers));
    let versions = versions(t.min_version, t.max_version);
    let first = t
        .certificates
        .first()
        .map(|f| f.key_path.clone())
        .unwrap_or_default();
    let unusable = |source| TlsError::Mismatch {
        key: first.clone(),
        source,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(unusable)?;
    let builder = match (&t.client_ca_path, t.client_auth) {
        (Some(path), auth) if auth != ClientAuth::None => {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates(path)?);
            if added == 0 {
                return Err(TlsError::NoTrustAnchor { path: path.clone() });
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            );
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::Certificates {
                path: path.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut keys = Vec::with_capacity(t.certificates.len());
    for files in &t.certificates {
        let chain = certificates(&files.cert_path)?;
        let key = private_key(&files.key_path)?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::Mismatch {
                key: files.key_path.clone(),
                source,
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|source| TlsError::Mismatch {
                key: files.key_path.clone(),
                source,
            })?;
        keys.push(Arc::new(certified));
    }
    let acme = obtained.map(|obtained| Acme {
        obtained: Arc::clone(obtained),
        hosts: t.acme_hosts.clone(),
    });
    let mut config = builder.with_cert_resolver(Arc::new(ByServerName { keys, acme }));
    config.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.ignore_client_order = t.prefer_server_ciphers;
    if t.session_tickets {
        config.ticketer = ring::Ticketer::new().map_err(unusable)?;
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The rustls client configuration for `[servers.NAME.backends_tls]`: backends verified
/// against `root_ca_cert_path` (a certificate listed there is also trusted as itself) or
/// the system's store, unless `ignore_verify`; a client certificate if given, versions
/// and cipher suites.
pub fn backends_config(b: &BackendsTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(provider_with(&b.ciphers));
    let key = b
        .identity
        .as_ref()
        .map(|f| f.key_path.clone())
        .unwrap_or_default();
    let unusable = |source| TlsError::Mismatch {
        key: key.clone(),
        source,
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(b.min_version, b.max_version))
        .map_err(unusable)?;
    let builder = if b.ignore_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(Arc::clone(&provider))))
    } else if let Some(path) = &b.root_ca_cert_path {
        // As in `client_config`: a verifier of one's own, which verifies.
        builder
            .dangerous()
            .with_custom_certificate_verifier(TrustedFile::new(
                path,
                certificates(path)?,
                Arc::clone(&provider),
            )?)
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if roots.is_empty() {
            return Err(TlsError::NoSystemRoots);
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &b.identity {
        Some(files) => builder
            .with_client_auth_cert(
                certificates(&files.cert_path)?,
                private_key(&files.key_path)?,
            )
            .map_err(|source| TlsError::Mismatch {
                key: files.key_path.clone(),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    if !b.session_tickets {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The ring provider offering `ciphers` (IANA names, in that order), or all it has.
fn provider_with(ciphers: &[String]) -> CryptoProvider {
    let mut provider = ring::default_provider();
    if !ciphers.is_empty() {
        let all = std::mem::take(&mut provider.cipher_suites);
        provider.cipher_suites = ciphers
            .iter()
            .filter_map(|name| {
                all.iter()
                    .find(|s| s.suite().as_str() == Some(name.as_str()))
                    .copied()
            })
            .collect();
    }
    provider
}

/// The versions from `min` to `max`.
fn versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static rustls::SupportedProtocolVersion> {
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, v)| v)
    .collect()
}

/// The TLS configuration a TLS-ALPN-01 validator is answered with: ALPN `acme-tls/1` and
/// the validation certificate of the name it asks for, if that name is one of `hosts`
/// and its challenge is pending (else the handshake fails).
pub fn validation_config(
    obtained: &Arc<Obtained>,
    hosts: &[String],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Validations {
                obtained: Arc::clone(obtained),
                hosts: hosts.to_vec(),
            }));
    config.alpn_protocols = vec![obtained::ACME_TLS_ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Whether a ClientHello is a TLS-ALPN-01 validator's: ALPN `acme-tls/1` and nothing else.
pub fn is_validation(hello: &rustls::server::ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut offered| {
        offered.next() == Some(obtained::ACME_TLS_ALPN) && offered.next().is_none()
    })
}

/// The certificates of `acme_hosts`, looked up on each handshake.
#[derive(Debug)]
struct Acme {
    obtained: Arc<Obtained>,
    hosts: Vec<String>,
}

/// Validation certificates for the names of `hosts`.
#[derive(Debug)]
struct Validations {
    obtained: Arc<Obtained>,
    hosts: Vec<String>,
}

impl rustls::server::ResolvesServerCert for Validations {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        if !self.hosts.contains(&name) {
            return None;
        }
        self.obtained.validation(&name)
    }
}

/// Picks the certificate obtained for the name a client asks for (one of `acme_hosts`),
/// else the first file valid for it, else the first file, else the first obtained one.
#[derive(Debug)]
struct ByServerName {
    keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    acme: Option<Acme>,
}

impl rustls::server::ResolvesServerCert for ByServerName {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let (Some(acme), Some(asked)) = (&self.acme, hello.server_name()) {
            let asked = asked.to_ascii_lowercase();
            if acme.hosts.contains(&asked) {
                if let Some(key) = acme.obtained.certificate(&asked) {
                    return Some(key);
                }
            }
        }
        let name = hello
            .server_name()
            .and_then(|n| rustls_pki_types::ServerName::try_from(n).ok());
        if let (Some(name), true) = (name, self.keys.len() > 1) {
            let valid = |key: &&Arc<rustls::sign::CertifiedKey>| {
                key.end_entity_cert().is_ok_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            };
            if let Some(key) = self.keys.iter().find(valid) {
                return Some(Arc::clone(key));
            }
        }
        if let Some(first) = self.keys.first() {
            return Some(Arc::clone(first));
        }
        // No file at all: a client that asked for no name (or another) gets the first
        // name's certificate, as a file server gives its first.
        let acme = self.acme.as_ref()?;
        acme.hosts
            .iter()
            .find_map(|host| acme.obtained.certificate(host))
    }
}

/// Any server certificate accepted (`tls_skip_verify`, `ignore_verify`), but the
/// handshake signatures are still checked, so the peer holds the key of the certificate
/// it shows.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |e: rustls_pki_types::pem::Error| TlsError::Certificates {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
        TlsFiles {
            cert_path,
            key_path,
        }
    }

    #[test]
    fn loads_a_pair_and_names_the_file_of_a_bad_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_pair(dir.path());
        let config = server_config(&files, &[b"http/1.1"]).expect("valid pair");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err = server_config(
            &TlsFiles {
                cert_path: empty.clone(),
                key_path: files.key_path.clone(),
            },
            &[],
        )
        .expect_err("no certificate");
        assert!(
            err.to_string().starts_with(&empty.display().to_string()),
            "{err}"
        );

        let other = write_pair(&{
            let d = dir.path().join("other");
            std::fs::create_dir(&d).expect("dir");
            d
        });
        let err = server_config(
            &TlsFiles {
                cert_path: files.cert_path,
                key_path: other.key_path,
            },
            &[],
        )
        .expect_err("mismatched key");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");

        let missing = dir.path().join("missing.pem");
        let err = server_config(
            &TlsFiles {
                cert_path: missing,
                key_path: files.key_path,
            },
            &[],
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
