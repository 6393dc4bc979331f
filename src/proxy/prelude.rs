//! The prelude step of a connection: what a server reads from a client before choosing
//! its backend, bounded in size and time, and what it learns from it.
//!
//! - [`Plain`]: nothing; the client's stream starts at once (the common case, which
//!   costs the connection's state nothing).
//! - [`Inspect`]: a trusted front's PROXY header (the client it names is the
//!   connection's client from then on: access rules, balancing, logs, the header sent
//!   on), then a ClientHello whose server name picks the backends (SNI routing). The
//!   bytes read go to the backend first, unchanged.
//! - [`Tls`]: a trusted front's PROXY header, then the TLS handshake when the server
//!   terminates TLS (`protocol = "tls"`); its backend side is TLS too when the server
//!   has `[backends_tls]`.
//!
//! A bad prelude closes the connection with its reason counted (a [`Refusal`]).

use std::future::{ready, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::either::Either;

use super::copy::Stream;
use super::proxy_protocol::{self, TlsInfo};
use super::refusal::Refusal;
use super::sni::Route;
use super::state::clients::ClientSource;
use super::state::{ActiveSlot, ServerShared};
use super::{client_hello, CloseReason};
use crate::backend::Backend;
use crate::config::ProxyVersion;
use crate::tls::words::{handshake_error, Peer};

/// How a server reads what comes before a client's stream, and what its backend side
/// is. Chosen per connection when it is admitted; the connection's task is generic over
/// it, so a plain connection carries none of the others' state.
pub(crate) trait Prelude: Send + 'static {
    /// The client's side of the relay: the socket, or TLS over it.
    type Client: Stream + OverTcp + Send + 'static;
    /// The backend's side of the relay.
    type Upstream: Stream + Send + 'static;

    /// Reads the prelude from `stream`, which `peer` connected, for the connection that
    /// holds `slot` (its server, whose limits bound the prelude in size and time; a
    /// client named by a PROXY header is admitted into it).
    fn read(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: &ActiveSlot,
    ) -> impl Future<Output = Result<Opening<Self::Client>, Refusal>> + Send;

    /// The backend's side once `upstream` is connected to `backend`; on failure, why in
    /// words.
    fn upstream(
        server: &ServerShared,
        backend: &Backend,
        upstream: TcpStream,
    ) -> impl Future<Output = Result<Self::Upstream, String>> + Send;
}

/// A client's connection once its prelude is read.
pub(crate) struct Opening<S> {
    /// What the relay reads the client's bytes from.
    pub stream: S,
    /// The client: the peer, or the one a trusted front's PROXY header named.
    pub client: SocketAddr,
    /// What the prelude learned that the connect step uses; `None` when it learned
    /// nothing, so a plain connection carries a null pointer.
    pub learned: Option<Box<Learned>>,
}

/// What a prelude learned that the connect step uses.
#[derive(Debug, Default)]
pub(crate) struct Learned {
    /// Where the client connected to, as a trusted front's PROXY header said.
    pub destination: Option<SocketAddr>,
    /// The client's bytes read with the prelude: they go to the backend first.
    pub early: Vec<u8>,
    /// The backends the ClientHello's server name may go to (SNI routing).
    pub route: Option<Route>,
    /// The terminated TLS session, for the PROXY v2 header the server sends.
    pub tls: Option<TlsInfo>,
}

/// A client stream over a TCP socket: where the connection arrived (its local address)
/// is read from the socket.
pub(crate) trait OverTcp {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// No prelude: the client's stream starts at once.
pub(crate) struct Plain;

impl Prelude for Plain {
    type Client = TcpStream;
    type Upstream = TcpStream;

    fn read(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        _: &ActiveSlot,
    ) -> impl Future<Output = Result<Opening<TcpStream>, Refusal>> + Send {
        ready(Ok(Opening {
            stream,
            client: peer,
            learned: None,
        }))
    }

    fn upstream(
        _: &ServerShared,
        _: &Backend,
        upstream: TcpStream,
    ) -> impl Future<Output = Result<TcpStream, String>> + Send {
        ready(Ok(upstream))
    }
}

/// A connection whose first bytes decide where it goes: a trusted front's PROXY header
/// within `proxy_header`, then a ClientHello within `client_hello` (SNI routing).
pub(crate) struct Inspect {
    pub proxy_header: Option<Duration>,
    pub client_hello: Option<Duration>,
}

impl Prelude for Inspect {
    type Client = TcpStream;
    type Upstream = TcpStream;

    async fn read(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        slot: &ActiveSlot,
    ) -> Result<Opening<TcpStream>, Refusal> {
        match self.learn(&mut stream, peer, slot).await {
            Ok((client, learned)) => Ok(Opening {
                stream,
                client,
                learned: Some(learned),
            }),
            Err(no) => Err(no.closing(stream)),
        }
    }

    fn upstream(
        _: &ServerShared,
        _: &Backend,
        upstream: TcpStream,
    ) -> impl Future<Output = Result<TcpStream, String>> + Send {
        ready(Ok(upstream))
    }
}

impl Inspect {
    /// Reads the PROXY header and the ClientHello: the client, and what they said.
    async fn learn(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        slot: &ActiveSlot,
    ) -> Result<(SocketAddr, Box<Learned>), Refusal> {
        let mut learned = Box::<Learned>::default();
        let mut client = peer;
        if let Some(limit) = self.proxy_header {
            let front = read_proxy_header(slot, stream, peer, limit).await?;
            client = front.client;
            learned.destination = front.destination;
            learned.early = front.early;
        }
        if let Some(limit) = self.client_hello {
            let hello = client_hello::read(stream, &mut learned.early, limit)
                .await
                .map_err(|e| Refusal::new(client, CloseReason::ClientHello, e))?;
            learned.route = route(slot.server(), &hello, client)?;
        }
        Ok((client, learned))
    }
}

/// The backends a ClientHello may go to by its server name, or the refusal of a name
/// no backend is tagged for when such names are rejected. `None` without SNI routing.
fn route(
    server: &ServerShared,
    hello: &client_hello::Hello,
    client: SocketAddr,
) -> Result<Option<Route>, Refusal> {
    let settings = server.settings.load();
    let (Some(sni), Some(matcher)) = (&settings.sni, server.sni.load_full()) else {
        return Ok(None);
    };
    let pool = server.pool.load();
    let route = Route::choose(sni, &matcher, hello, pool.backends()).ok_or_else(|| {
        let detail = match hello.server_name.as_deref() {
            Some(name) => format!(
                "no backend is tagged for the server name {name}, and \
                 unexpected_hostname_strategy is \"reject\""
            ),
            None => "the ClientHello names no server, and \
                     unexpected_hostname_strategy is \"reject\""
                .to_owned(),
        };
        Refusal::new(client, CloseReason::SniRejected, detail)
    })?;
    Ok(Some(route))
}

/// TLS on either side: a trusted front's PROXY header within `proxy_header`, then the
/// handshake with the client when the server terminates TLS; the backend's side is TLS
/// when the server has `[backends_tls]`.
pub(crate) struct Tls {
    pub proxy_header: Option<Duration>,
}

/// The client's side of a [`Tls`] connection: TLS terminated, or passed through as is.
type ClientSide = Either<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>, Prefixed<TcpStream>>;
/// The backend's side of a [`Tls`] connection: TLS originated, or plain.
type BackendSide = Either<tokio_rustls::client::TlsStream<TcpStream>, TcpStream>;

impl Prelude for Tls {
    type Client = ClientSide;
    type Upstream = BackendSide;

    async fn read(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        slot: &ActiveSlot,
    ) -> Result<Opening<ClientSide>, Refusal> {
        let (mut client, mut destination, mut early) = (peer, None, Vec::new());
        if let Some(limit) = self.proxy_header {
            let front = match read_proxy_header(slot, &mut stream, peer, limit).await {
                Ok(front) => front,
                Err(no) => return Err(no.closing(stream)),
            };
            (client, destination, early) = (front.client, front.destination, front.early);
        }
        // The bytes that came with the header are the handshake's first.
        let stream = Prefixed::new(early, stream);
        let server = slot.server();
        let settings = server.settings.load_full();
        let stream = match (&settings.tls, server.tls.load_full()) {
            (None, _) => Either::Right(stream),
            (Some(termination), Some(config)) => {
                let limit = termination.handshake_timeout;
                let validation = server.validation_tls.load_full();
                Either::Left(
                    super::terminate::terminate(stream, (config, validation), limit, client)
                        .await?,
                )
            }
            (Some(_), None) => {
                let detail = "no TLS configuration";
                return Err(Refusal::new(client, CloseReason::TlsHandshake, detail));
            }
        };
        let tls = match &stream {
            Either::Left(tls) if settings.proxy_protocol.send == Some(ProxyVersion::V2) => {
                Some(session_info(tls.get_ref().1))
            }
            _ => None,
        };
        // `[sni]` with TLS terminated here: the name the handshake asked for picks the
        // backends, as the ClientHello does for TLS passed through.
        let route = match &stream {
            Either::Left(tls) if settings.sni.is_some() => {
                let session = tls.get_ref().1;
                let hello = client_hello::Hello {
                    server_name: session.server_name().map(str::to_ascii_lowercase),
                    alpn: session
                        .alpn_protocol()
                        .map(|p| vec![String::from_utf8_lossy(p).into_owned()])
                        .unwrap_or_default(),
                };
                route(server, &hello, client)?
            }
            _ => None,
        };
        let learned = (destination.is_some() || tls.is_some() || route.is_some()).then(|| {
            Box::new(Learned {
                destination,
                tls,
                route,
                ..Learned::default()
            })
        });
        Ok(Opening {
            stream,
            client,
            learned,
        })
    }

    fn upstream(
        server: &ServerShared,
        backend: &Backend,
        upstream: TcpStream,
    ) -> impl Future<Output = Result<BackendSide, String>> + Send {
        let settings = server.settings.load_full();
        let config = server.backends_tls.load_full();
        let name = settings.backends_tls.as_ref().map(|tls| {
            tls.server_name
                .clone()
                .unwrap_or_else(|| backend.spec.host.clone())
        });
        async move {
            let (Some(name), Some(config)) = (name, config) else {
                return match settings.backends_tls {
                    None => Ok(Either::Right(upstream)),
                    Some(_) => Err("no backend TLS configuration".to_owned()),
                };
            };
            let handshake = async {
                let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let limit = crate::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT;
                match timeout(limit, connector.connect(name, upstream)).await {
                    Ok(Ok(tls)) => Ok(Either::Left(tls)),
                    Ok(Err(e)) => Err(handshake_error(&e, Peer::Backend)),
                    Err(_) => Err(format!("no handshake within {limit:?}")),
                }
            };
            handshake
                .await
                .map_err(|e| format!("TLS handshake with the backend failed: {e}"))
        }
    }
}

/// What a PROXY v2 header says of a terminated TLS session.
fn session_info(session: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
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
    }
}

/// What a trusted front's PROXY header says: the client, where it connected to, and the
/// client's bytes read past the header.
struct Forwarded {
    client: SocketAddr,
    destination: Option<SocketAddr>,
    early: Vec<u8>,
}

/// Reads the PROXY header a trusted front (`front`) sends, within `limit`. The client it
/// names is the connection's from then on, so the access rules are applied to it here
/// (they were not at accept, where only the front was known).
async fn read_proxy_header(
    slot: &ActiveSlot,
    stream: &mut TcpStream,
    front: SocketAddr,
    limit: Duration,
) -> Result<Forwarded, Refusal> {
    let received = proxy_protocol::read_header(stream, limit)
        .await
        .map_err(|e| Refusal::new(front, CloseReason::ProxyHeader, e))?;
    let client = received.origin.source.unwrap_or(front);
    let settings = slot.server().settings.load();
    let destination = received.origin.destination.map(|d| d.ip());
    if crate::acl::denies(settings.access.as_ref(), client.ip(), destination) {
        let detail = format!("denied by the access rules (behind the front {front})");
        return Err(Refusal::new(client, CloseReason::AclDenied, detail));
    }
    if let Err(limit) = slot.admit_client(&settings.limits, client.ip(), ClientSource::Forwarded) {
        let detail = format!(
            "{} (behind the front {front})",
            limit.detail(&settings.limits)
        );
        return Err(Refusal::new(client, CloseReason::RateLimited, detail));
    }
    Ok(Forwarded {
        client,
        destination: received.origin.destination,
        early: received.early,
    })
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

    pub fn into_inner(self) -> S {
        self.inner
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

impl OverTcp for Prefixed<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

impl<S: OverTcp> OverTcp for tokio_rustls::server::TlsStream<S> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl<L: OverTcp, R: OverTcp> OverTcp for Either<L, R> {
    fn tcp(&self) -> &TcpStream {
        match self {
            Either::Left(stream) => stream.tcp(),
            Either::Right(stream) => stream.tcp(),
        }
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
