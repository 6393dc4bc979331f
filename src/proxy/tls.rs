//! One connection where Sluice speaks TLS on either side: terminated from the client
//! (`protocol = "tls"`), towards the backend (`[backends_tls]`), or both. Handshake
//! (bounded, off the accept loop) → pick, connect (with the PROXY header first if the
//! server sends one) → backend handshake → copy between the plaintexts → log.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::proxy_protocol;
use super::proxy_protocol::TlsInfo;
use super::tcp::{access_log, open, refuse, Preamble};
use super::CloseReason;
use crate::server::ActiveSlot;

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
        let received = tokio::select! {
            received = proxy_protocol::read_header(&mut client, accept.timeout) => received,
            () = stop.cancelled() => return,
        };
        let received = match received {
            Ok(received) => received,
            Err(e) => {
                return refuse(
                    server,
                    peer,
                    started,
                    CloseReason::ProxyHeader,
                    &e.to_string(),
                )
            }
        };
        let front = peer;
        peer = received.origin.source.unwrap_or(front);
        destination = received.origin.destination;
        if settings
            .access
            .as_ref()
            .is_some_and(|acl| !acl.allows(peer.ip()))
        {
            let detail = format!("client {peer} behind {front}");
            return refuse(server, peer, started, CloseReason::AclDenied, &detail);
        }
        early = received.early;
    }
    let client = Prefixed::new(std::mem::take(&mut early), client);
    // The client's side.
    let mut client = match (&settings.tls, server.tls.load_full()) {
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
                    return refuse(
                        server,
                        peer,
                        started,
                        CloseReason::TlsHandshake,
                        &e.to_string(),
                    )
                }
                Err(_) => {
                    let detail = format!("no handshake within {limit:?}");
                    return refuse(server, peer, started, CloseReason::TlsHandshake, &detail);
                }
            }
        }
        (Some(_), None) => {
            return refuse(
                server,
                peer,
                started,
                CloseReason::TlsHandshake,
                "no TLS configuration",
            )
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
        () = stop.cancelled() => Err(CloseReason::Shutdown),
    };
    let (guard, upstream, _) = match opened {
        Ok(opened) => opened,
        Err(reason) => return refuse(server, peer, started, reason, "no backend connection"),
    };
    let backend = guard.backend();
    // The backend's side.
    let mut upstream = match (&settings.backends_tls, server.backends_tls.load_full()) {
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
                    Ok(Err(e)) => Err(e.to_string()),
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
                    debug!(server = %server.name, backend = backend.key(), error = %e, "TLS handshake with the backend failed");
                    return refuse(server, peer, started, CloseReason::ConnectFailed, &e);
                }
            }
        }
        (Some(_), None) => {
            return refuse(
                server,
                peer,
                started,
                CloseReason::ConnectFailed,
                "no backend TLS configuration",
            )
        }
    };
    let cut = backend.state.cut_token();
    let idle = match (settings.client_idle_timeout, settings.backend_idle_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let activity = Activity::new();
    let mut client = Watched {
        inner: &mut client,
        activity: &activity,
    };
    let mut upstream = Watched {
        inner: &mut upstream,
        activity: &activity,
    };
    let (result, reason) = tokio::select! {
        () = activity.idle_for(idle) => ((0, 0), CloseReason::IdleTimeout),
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok(bytes) => (bytes, CloseReason::Eof),
            Err(e) => {
                debug!(server = %server.name, client = %peer, error = %e, "connection failed");
                ((0, 0), CloseReason::ClientError)
            }
        },
        () = cut.cancelled() => ((0, 0), if stop.is_cancelled() {
            CloseReason::Shutdown
        } else {
            CloseReason::DrainDeadline
        }),
    };
    let (to_backend, to_client) = result;
    let stats = &backend.state.stats;
    stats
        .bytes_to_backend
        .fetch_add(to_backend, Ordering::Relaxed);
    stats
        .bytes_from_backend
        .fetch_add(to_client, Ordering::Relaxed);
    stats.connection_duration.observe(started.elapsed());
    access_log(
        &server.name,
        peer,
        Some(backend),
        to_backend,
        to_client,
        started,
        reason,
    );
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

/// When bytes last moved either way, for the idle timeout: marked by the streams, read
/// by one timer that sleeps to the deadline and looks again, never reset per read.
struct Activity {
    started: Instant,
    /// Milliseconds since `started`.
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `limit`; never without one.
    async fn idle_for(&self, limit: Option<std::time::Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            let last =
                self.started + std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that marks [`Activity`] whenever bytes move through it.
struct Watched<'a, S> {
    inner: &'a mut S,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.mark();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.mark();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
