//! Server certificates verified against a CA file the operator gave, where a certificate
//! listed in that file is trusted as itself.
//!
//! `openssl req -x509`, the self-signed certificate most guides make, marks it
//! `CA:TRUE`, and webpki refuses a CA certificate presented as a server's own
//! (`CaUsedAsEndEntity`). curl and OpenSSL accept it when it is itself in the trusted
//! file, and so does Sluice: a certificate byte for byte one of the file's is checked
//! here for the name asked for and its validity dates (the handshake's signature is
//! checked by rustls as for any certificate, so the server holds its key). Every other
//! certificate goes to the WebPki verifier unchanged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{cert, TlsError};

/// Trusts the CA certificates of one file, and each of them as a server's own.
#[derive(Debug)]
pub struct TrustedFile {
    webpki: Arc<WebPkiServerVerifier>,
    listed: Vec<CertificateDer<'static>>,
}

impl TrustedFile {
    /// A verifier trusting `certs`, read from `path` (named in errors).
    pub fn new(
        path: &Path,
        certs: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<TrustedFile>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            return Err(TlsError::NoTrustAnchor {
                path: path.to_path_buf(),
            });
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Certificates {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Arc::new(TrustedFile {
            webpki,
            listed: certs,
        }))
    }
}

impl ServerCertVerifier for TrustedFile {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self
            .listed
            .iter()
            .any(|listed| listed.as_ref() == end_entity.as_ref())
        {
            return self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        let (not_before, not_after) =
            cert::validity(end_entity).ok_or(CertificateError::BadEncoding)?;
        let at = |secs: i64| UnixTime::since_unix_epoch(Duration::from_secs(secs.max(0) as u64));
        let time = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if time < not_before {
            return Err(CertificateError::NotValidYetContext {
                time: now,
                not_before: at(not_before),
            }
            .into());
        }
        if time > not_after {
            return Err(CertificateError::ExpiredContext {
                time: now,
                not_after: at(not_after),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::ring;

    use super::*;

    /// A self-signed certificate for `localhost` and 127.0.0.1, marked `CA:TRUE` as
    /// `openssl req -x509` marks it, valid over the given dates.
    fn self_signed_ca(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn verifier(trusted: &[&[u8]]) -> Arc<TrustedFile> {
        let certs = trusted
            .iter()
            .map(|der| CertificateDer::from(der.to_vec()))
            .collect();
        TrustedFile::new(
            Path::new("ca.pem"),
            certs,
            Arc::new(ring::default_provider()),
        )
        .expect("verifier")
    }

    fn verify(v: &TrustedFile, cert: &[u8], name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let now = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)); // 2027-01-15
        v.verify_server_cert(&CertificateDer::from(cert), &[], &name, &[], now)
            .map(|_| ())
    }

    #[test]
    fn a_listed_self_signed_ca_is_trusted_as_itself_for_its_names() {
        let cert = self_signed_ca((2026, 1, 1), (2028, 1, 1));
        let other = self_signed_ca((2026, 1, 1), (2028, 1, 1));
        let v = verifier(&[&other, &cert]);
        verify(&v, &cert, "localhost").expect("by name");
        verify(&v, &cert, "127.0.0.1").expect("by address");
        match verify(&v, &cert, "db.example") {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => {}
            other => panic!("expected a name mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_listed_certificate_out_of_its_dates_is_refused() {
        let expired = self_signed_ca((2020, 1, 1), (2021, 1, 1));
        let early = self_signed_ca((2030, 1, 1), (2031, 1, 1));
        let v = verifier(&[&expired, &early]);
        match verify(&v, &expired, "localhost") {
            Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after,
                ..
            })) => assert_eq!(not_after.as_secs(), 1_609_459_200),
            other => panic!("expected expired, got {other:?}"),
        }
        match verify(&v, &early, "localhost") {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                ..
            })) => {}
            other => panic!("expected not yet valid, got {other:?}"),
        }
    }

    #[test]
    fn an_unlisted_ca_certificate_still_goes_to_webpki() {
        let listed = self_signed_ca((2026, 1, 1), (2028, 1, 1));
        let stranger = self_signed_ca((2026, 1, 1), (2028, 1, 1));
        let v = verifier(&[&listed]);
        let err = verify(&v, &stranger, "localhost").expect_err("not listed");
        let words = super::super::words::tls_error(&err, super::super::words::Peer::Backend);
        assert!(
            words.starts_with("the backend's certificate is a CA certificate"),
            "{words}"
        );
    }
}
