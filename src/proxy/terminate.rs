//! TLS terminated for a client: the handshake within its time, and for a server with
//! `acme_hosts` under TLS-ALPN-01, an ACME validator told apart by its ClientHello,
//! answered with the validation certificate and closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::prelude::Prefixed;
use super::refusal::Refusal;
use super::CloseReason;
use crate::tls::words::{handshake_error, Peer};

/// TLS terminated for `client`: the handshake within `limit` under `config`. A server
/// with `acme_hosts` under TLS-ALPN-01 also has a `validation` configuration: then the
/// ClientHello is read first, and an ACME validator is answered and closed instead.
pub(super) async fn terminate(
    stream: Prefixed<TcpStream>,
    (config, validation): (Arc<rustls::ServerConfig>, Option<Arc<rustls::ServerConfig>>),
    limit: Duration,
    client: SocketAddr,
) -> Result<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>, Refusal> {
    let late = || {
        let detail = format!("no handshake within {limit:?}");
        Refusal::new(client, CloseReason::TlsHandshake, detail)
    };
    let Some(validation) = validation else {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        return match timeout(limit, acceptor.accept(stream).into_fallible()).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err((e, stream))) => {
                let detail = handshake_error(&e, Peer::Client);
                let no = Refusal::new(client, CloseReason::TlsHandshake, detail);
                Err(no.closing(stream.into_inner()))
            }
            Err(_) => Err(late()),
        };
    };
    match timeout(limit, accept_or_validate(stream, config, validation)).await {
        Ok(Ok(Accepted::Client(tls))) => Ok(tls),
        Ok(Ok(Accepted::Validation(mut tls))) => {
            let _ = timeout(limit, tls.shutdown()).await;
            let detail = "answered an ACME TLS-ALPN-01 validation";
            Err(Refusal::new(client, CloseReason::AcmeValidation, detail))
        }
        Ok(Err(e)) => {
            let detail = handshake_error(&e, Peer::Client);
            Err(Refusal::new(client, CloseReason::TlsHandshake, detail))
        }
        Err(_) => Err(late()),
    }
}

/// A terminated TLS connection: a client's, or an ACME server's validation.
enum Accepted {
    Client(tokio_rustls::server::TlsStream<Prefixed<TcpStream>>),
    Validation(tokio_rustls::server::TlsStream<Prefixed<TcpStream>>),
}

/// The handshake of a server with `acme_hosts` under TLS-ALPN-01: the ClientHello is
/// read first, and a validator (ALPN `acme-tls/1` alone) is answered with `validation`,
/// every other client with `config`.
async fn accept_or_validate(
    stream: Prefixed<TcpStream>,
    config: Arc<rustls::ServerConfig>,
    validation: Arc<rustls::ServerConfig>,
) -> std::io::Result<Accepted> {
    let acceptor = rustls::server::Acceptor::default();
    let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
    if crate::tls::is_validation(&start.client_hello()) {
        Ok(Accepted::Validation(start.into_stream(validation).await?))
    } else {
        Ok(Accepted::Client(start.into_stream(config).await?))
    }
}
