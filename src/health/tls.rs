//! `kind = "tls"`: the TLS handshake succeeds (certificate verified, or not with
//! `tls_skip_verify`), and a certificate close to expiry is reported in the log. Also
//! the TLS client of `https` and `probe_protocol = "tls"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::{tcp, BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::{ProxyVersion, TlsSettings};
use crate::tls::words::Peer;
use crate::tls::{cert, client_config as verifying_config, AnyCertificate, ClientTlsFiles};

/// A certificate expiring within this long is reported (once per certificate).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The TLS side of a check: whom to trust, which name to ask for.
pub(crate) struct TlsClient {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// Reads the trusted roots now, so that a bad `tls_ca_path` shows at start.
    pub(crate) fn new(settings: &TlsSettings) -> Result<TlsClient, String> {
        let config = if settings.skip_verify {
            skip_verify_config()?
        } else {
            let files = ClientTlsFiles {
                cacert_path: settings.ca_path.clone(),
                ..ClientTlsFiles::default()
            };
            verifying_config(&files).map_err(|e| e.to_string())?
        };
        let server_name = match &settings.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("tls_server_name \"{name}\" is not a valid name"))?,
            ),
            None => None,
        };
        Ok(TlsClient {
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    /// Connects to the backend (sending the PROXY header of `proxy` first, before the
    /// handshake, as the server's own connections do) and completes the handshake.
    pub(crate) async fn connect(
        &self,
        backend: &Backend,
        proxy: Option<ProxyVersion>,
    ) -> Result<TlsStream<TcpStream>, CheckError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => name_of(backend)?,
        };
        let stream = tcp::connect(backend, proxy).await?;
        self.connector.connect(name, stream).await.map_err(|e| {
            let why = crate::tls::words::handshake_error(&e, Peer::Backend);
            CheckError::Unhealthy(format!("TLS handshake failed: {why}"))
        })
    }
}

/// The name a backend is checked for without `tls_server_name`: the name SNI routing
/// sends it (its `sni=` tag, which its certificate carries) when that is one name, not a
/// wildcard or a regular expression; else its host.
fn name_of(backend: &Backend) -> Result<ServerName<'static>, CheckError> {
    let tagged = backend
        .spec
        .sni
        .as_ref()
        .and_then(|tag| ServerName::try_from(tag.clone()).ok());
    if let Some(name) = tagged {
        return Ok(name);
    }
    ServerName::try_from(backend.spec.host.clone()).map_err(|_| {
        CheckError::Unhealthy(format!(
            "\"{}\" is not a valid TLS server name; set tls_server_name",
            backend.spec.host
        ))
    })
}

/// Passes when the TLS handshake succeeds.
pub struct TlsCheck {
    client: TlsClient,
    /// The expiry last reported per backend, so each certificate is reported once.
    warned: Mutex<HashMap<String, i64>>,
    /// The PROXY header version the server sends its backends.
    proxy: Option<ProxyVersion>,
}

impl TlsCheck {
    pub fn new(settings: &TlsSettings, proxy: Option<ProxyVersion>) -> Result<TlsCheck, String> {
        Ok(TlsCheck {
            client: TlsClient::new(settings)?,
            warned: Mutex::new(HashMap::new()),
            proxy,
        })
    }

    fn note_expiry(&self, backend: &Backend, leaf: &CertificateDer<'_>) {
        let Some(expires) = cert::not_after(leaf) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let left = expires - now;
        if left > EXPIRY_WARNING.as_secs() as i64 {
            return;
        }
        let mut warned = match self.warned.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if warned.insert(backend.key().to_owned(), expires) == Some(expires) {
            return;
        }
        if left <= 0 {
            warn!(
                backend = backend.key(),
                "backend TLS certificate has expired"
            );
        } else {
            let days = left as f64 / 86_400.0;
            warn!(
                backend = backend.key(),
                days_left = format!("{days:.1}"),
                "backend TLS certificate expires within 14 days"
            );
        }
    }
}

impl HealthCheck for TlsCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            let stream = self.client.connect(backend, self.proxy).await?;
            let (_, session) = stream.get_ref();
            if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
                self.note_expiry(backend, leaf);
            }
            Ok(())
        })
    }
}

fn skip_verify_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}
