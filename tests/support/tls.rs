//! Certificates for TLS tests: a CA with the leaves it signs (rcgen), self-signed
//! certificates made by the `openssl` command as an operator makes them, TLS backends
//! presenting them, and ClientHellos for SNI routing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice::config::{BackendsTls, TlsFiles, TlsVersion};
use tokio::io::AsyncWriteExt;

use super::TestBackend;

/// A CA and the files of leaf certificates it signs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A leaf and its issuer with the same name look self-signed to OpenSSL.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Sluice test CA");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca_cert = params.self_signed(&ca_key).expect("CA");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write CA");
        let ca = rcgen::Issuer::new(params, ca_key);
        Pki { dir, ca }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf for `names`, written as `FILE.pem` and `FILE.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> TlsFiles {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let mut params = params;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or(file),
        );
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf");
        let files = TlsFiles {
            cert_path: self.dir.path().join(format!("{file}.pem")),
            key_path: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&files.cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&files.key_path, key.serialize_pem()).expect("write key");
        files
    }
}

/// The self-signed certificate most guides give (`openssl req -x509`, Debian package
/// openssl), for `localhost` and 127.0.0.1, written as `FILE.pem` and `FILE.key` in
/// `dir`. OpenSSL marks it `CA:TRUE`.
pub fn openssl_self_signed(dir: &Path, file: &str) -> TlsFiles {
    let files = TlsFiles {
        cert_path: dir.join(format!("{file}.pem")),
        key_path: dir.join(format!("{file}.key")),
    };
    let output = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&files.key_path)
        .arg("-out")
        .arg(&files.cert_path)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    files
}

/// A TLS backend presenting `files`, greeting each connection with `NAME\n` and then
/// echoing what it reads until the client finishes.
pub async fn tls_backend(name: &str, files: &TlsFiles) -> TestBackend {
    tls_serving(name, Some(format!("{name}\n").into()), files).await
}

/// A TLS backend presenting `files` that echoes every byte back, nothing more.
pub async fn tls_echo(files: &TlsFiles) -> TestBackend {
    tls_serving("echo", None, files).await
}

async fn tls_serving(name: &str, greeting: Option<Arc<str>>, files: &TlsFiles) -> TestBackend {
    let chain = CertificateDer::pem_file_iter(&files.cert_path)
        .expect("chain")
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_file(&files.key_path).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("backend config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    TestBackend::serving(name, "127.0.0.1:0", move |stream| {
        let acceptor = acceptor.clone();
        let greeting = greeting.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let (mut r, mut w) = tokio::io::split(tls);
            if let Some(greeting) = greeting {
                if w.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
            }
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        }
    })
    .await
}

/// `[backends_tls]` verifying against `ca`, or accepting any certificate without one.
pub fn backends_tls(ca: Option<PathBuf>, server_name: Option<&str>) -> BackendsTls {
    BackendsTls {
        ignore_verify: ca.is_none(),
        root_ca_cert_path: ca,
        identity: None,
        min_version: TlsVersion::Tls12,
        max_version: TlsVersion::Tls13,
        ciphers: Vec::new(),
        session_tickets: true,
        server_name: server_name.map(str::to_owned),
    }
}

/// A rustls ClientHello for `name`, re-framed into TLS records of at most `record`
/// bytes of handshake each.
pub fn client_hello_in_records(name: &str, record: usize) -> Vec<u8> {
    client_hello_offering(name, &[], record)
}

/// Like [`client_hello_in_records`], offering `alpn`.
pub fn client_hello_offering(name: &str, alpn: &[&str], record: usize) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    let mut out = Vec::new();
    for chunk in hello[5..].chunks(record) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
