//! One connection where Sluice speaks TLS on either side: terminated from the client
//! (`protocol = "tls"`), towards the backend (`[backends_tls]`), or both. Handshake
//! (bounded, off the accept loop) → pick, connect (with the PROXY header first if the
//! server sends one) → backend handshake → copy between the plaintexts → log.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::copy::{Counters, Relay, Stream};
use super::proxy_protocol::TlsInfo;
use super::refusal::{refuse, Refusal};
use super::tcp::{finish, open, read_front, Preamble};
use super::CloseReason;
use crate::server::ActiveSlot;
use crate::tls::words::{handshake_error, Peer};

/// Relays `client` to a backend, terminating and/or originating TLS as the server says.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    slot: ActiveSlot,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let server = slot.server();
    let settings = server.settings.load_full();
    // A trusted front's PROXY header first: the client it names is the connection's.
    let (mut peer, mut client, mut destination, mut early) = (peer, client, None, Vec::new());
    if let Some(accept) = &settings.proxy_protocol.accept {
        let front = tokio::select! {
            front = read_front(server, &mut client, peer, accept.timeout) => front,
            () = stop.cancelled() => return,
        };
        match front {
            Ok(front) => {
                (peer, destination, early) = (front.client, front.destination, front.early)
            }
            Err(no) => return refuse(server, started, no),
        }
    }
    let client = Prefixed::new(std::mem::take(&mut early), client);
    // The client's side.
    let client = match (&settings.tls, server.tls.load_full()) {
        (None, _) => Either::Right(client),
        (Some(termination), Some(config)) => {
            let limit = termination.handshake_timeout;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = tokio::select! {
                done = timeout(limit, acceptor.accept(client)) => done,
                () = stop.cancelled() => return,
            };
            match handshake {
                Ok(Ok(tls)) => Either::Left(tls),
                Ok(Err(e)) => {
                    let detail = handshake_error(&e, Peer::Client);
                    let no = Refusal::new(peer, CloseReason::TlsHandshake, detail);
                    return refuse(server, started, no);
                }
                Err(_) => {
                    let detail = format!("no handshake within {limit:?}");
                    let no = Refusal::new(peer, CloseReason::TlsHandshake, detail);
                    return refuse(server, started, no);
                }
            }
        }
        (Some(_), None) => {
            let no = Refusal::new(peer, CloseReason::TlsHandshake, "no TLS configuration");
            return refuse(server, started, no);
        }
    };
    let sends_v2 = settings.proxy_protocol.send == Some(crate::config::ProxyVersion::V2);
    let (tcp, tls_info) = match &client {
        Either::Left(tls) if sends_v2 => {
            let (prefixed, session) = tls.get_ref();
            let tcp = prefixed.get_ref();
            let info = TlsInfo {
                server_name: session.server_name().map(str::to_owned),
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                version: session
                    .protocol_version()
                    .map_or_else(String::new, |v| format!("{v:?}").replace('_', ".")),
                cipher: session
                    .negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or_default()
                    .to_owned(),
                client_certificate: session.peer_certificates().is_some(),
            };
            (tcp, Some(info))
        }
        Either::Left(tls) => (tls.get_ref().0.get_ref(), None),
        Either::Right(prefixed) => (prefixed.get_ref(), None),
    };
    let preamble = destination.map(|destination| {
        Box::new(Preamble {
            destination: Some(destination),
            ..Preamble::default()
        })
    });
    let opened = tokio::select! {
        opened = open(server, tcp, peer, preamble, tls_info.as_ref()) => opened,
        () = stop.cancelled() => Err(Refusal::shutdown(peer)),
    };
    let (guard, upstream, _) = match opened {
        Ok(opened) => opened,
        Err(no) => return refuse(server, started, no),
    };
    let backend = guard.backend();
    // The backend's side.
    let upstream = match (&settings.backends_tls, server.backends_tls.load_full()) {
        (None, _) => Either::Right(upstream),
        (Some(tls), Some(config)) => {
            let name = tls
                .server_name
                .clone()
                .unwrap_or_else(|| backend.spec.host.clone());
            let handshake = async {
                let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let limit = crate::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT;
                match timeout(limit, connector.connect(name, upstream)).await {
                    Ok(Ok(tls)) => Ok(tls),
                    Ok(Err(e)) => Err(handshake_error(&e, Peer::Backend)),
                    Err(_) => Err(format!("no handshake within {limit:?}")),
                }
            };
            let handshake = tokio::select! {
                done = handshake => done,
                () = stop.cancelled() => return,
            };
            match handshake {
                Ok(tls) => Either::Left(tls),
                Err(e) => {
                    backend
                        .state
                        .stats
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    // The access-log line names the backend and says why, at info.
                    let detail = format!("TLS handshake with the backend failed: {e}");
                    let no = Refusal::new(peer, CloseReason::ConnectFailed, detail).at(backend);
                    return refuse(server, started, no);
                }
            }
        }
        (Some(_), None) => {
            let detail = "no backend TLS configuration";
            let no = Refusal::new(peer, CloseReason::ConnectFailed, detail).at(backend);
            return refuse(server, started, no);
        }
    };
    let cut = backend.state.cut_token();
    let cut_wait = pin!(cut.cancelled());
    let idle = match (settings.client_idle_timeout, settings.backend_idle_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let stats = &backend.state.stats;
    let counters = Counters {
        to_backend: &stats.bytes_to_backend,
        from_backend: &stats.bytes_from_backend,
    };
    let result = Relay::new(client, upstream, idle, cut_wait, counters).await;
    finish(server, peer, backend, started, result, &stop);
}

/// A stream that first yields bytes already read from it (those that came with a PROXY
/// header), then reads on; writes go straight through.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            read: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Stream for Prefixed<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read < self.prefix.len() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// rustls keeps decrypted bytes the socket's readiness does not show: always ready, so
/// the relay borrows a buffer for the one poll that reads (and gives it back if the
/// read would block).
impl<S: AsyncRead + AsyncWrite + Unpin> Stream for tokio_rustls::server::TlsStream<S> {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for tokio_rustls::client::TlsStream<S> {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl<L: Stream, R: Stream> Stream for Either<L, R> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Either::Left(stream) => stream.poll_read_ready(cx),
            Either::Right(stream) => stream.poll_read_ready(cx),
        }
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        match self {
            Either::Left(stream) => stream.plain_socket(),
            Either::Right(stream) => stream.plain_socket(),
        }
    }
}
