//! The control side's HTTP listeners — the admin API and the metrics endpoint — served
//! so that no client can hold them, or the data path, hostage.
//!
//! A connection gets [`HEADER_TIMEOUT`] to send each request's head (the wait for the
//! next request on a kept-alive connection included), [`REQUEST_TIMEOUT`] for the whole
//! request, and is closed after [`IDLE_TIMEOUT`] with no byte either way. At most
//! `max_connections` are open per listener, and all of them together take descriptors
//! from the control side's share ([`DescriptorBudget::control`]); beyond
//! either, a new connection is closed as soon as it is accepted, so a flood costs the
//! data path nothing but the kernel's backlog. Bodies larger than [`BODY_LIMIT`] are
//! refused with 413.
//!
//! Who may ask what is decided by [`guard`] (host names, origins, content types) and
//! [`auth`] (credentials).

pub mod auth;
pub mod guard;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tracing::{debug, warn};

use crate::descriptors::{Descriptor, DescriptorBudget};

/// Time to send a request's head, TLS handshake included for a new connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole request, body and answer included (answered 408 past it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no byte either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request body read; a server's configuration is a few KiB.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Pause after running out of descriptors, instead of spinning on accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning per this long about refused connections.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// One HTTP listener of the control side.
pub struct Endpoint {
    /// "admin API" or "metrics endpoint", for logs.
    pub what: &'static str,
    pub listener: TcpListener,
    /// HTTPS when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    /// Stops accepting (a binary upgrade's new process serves); requests under way end
    /// on their own.
    pub stop: CancellationToken,
}

/// Serves `app` on `endpoint` until the process ends or `endpoint.stop`.
pub async fn serve(endpoint: Endpoint, app: Router) {
    let Endpoint {
        what,
        listener,
        tls,
        max_connections,
        stop,
    } = endpoint;
    let app = app
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(refuse_announced_excess))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    let tls = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(max_connections));
    let descriptors = DescriptorBudget::control();
    let refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if crate::descriptors::is_exhaustion(&e) => {
                warn!(error = %e, "{what}: accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                debug!(error = %e, "{what}: accept failed");
                continue;
            }
        };
        let slot = Arc::clone(&slots).try_acquire_owned().ok();
        let descriptor = slot.as_ref().and_then(|_| descriptors.take());
        let (Some(slot), Some(descriptor)) = (slot, descriptor) else {
            refusals.note(what, peer);
            continue;
        };
        let connection = Connection {
            stream,
            peer,
            tls: tls.clone(),
            _slot: slot,
            _descriptor: descriptor,
        };
        tokio::spawn(connection.serve(what, app.clone()));
    }
}

/// 413 at once for a body whose announced length is over [`BODY_LIMIT`]: waiting for it
/// would hold the connection for as long as the client takes to send what is refused
/// anyway. (A chunked body is cut at the limit as it is read.)
async fn refuse_announced_excess(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > BODY_LIMIT as u64) {
        let message = format!("the body is larger than {} KiB", BODY_LIMIT / 1024);
        let body = serde_json::json!({ "error": message, "field": null });
        return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
    }
    next.run(request).await
}

/// Connections closed at once because every slot was taken, warned about sparingly.
#[derive(Default)]
struct Refusals {
    count: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Refusals {
    fn note(&self, what: &str, peer: SocketAddr) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        debug!(client = %peer, "{what}: too many connections; closed at once");
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= REFUSAL_WARNING_EVERY) {
            *last = Some(now);
            warn!(
                refused_so_far = count,
                "{what}: connection limit reached; new connections are closed at once"
            );
        }
    }
}

/// One accepted connection and what it holds while open.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    _slot: OwnedSemaphorePermit,
    _descriptor: Descriptor,
}

impl Connection {
    async fn serve(self, what: &'static str, app: Router) {
        let Connection {
            stream, peer, tls, ..
        } = self;
        let activity = Arc::new(Activity::new());
        let stream = Watched {
            io: stream,
            activity: Arc::clone(&activity),
        };
        let result = match tls {
            Some(acceptor) => {
                match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => http1(tls, app, &activity).await,
                    Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                    Err(_) => Err("TLS handshake timed out".to_owned()),
                }
            }
            None => http1(stream, app, &activity).await,
        };
        if let Err(e) = result {
            debug!(client = %peer, "{what}: connection closed: {e}");
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client leaves, breaks a limit or idles too long.
async fn http1<I>(io: I, app: Router, activity: &Activity) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        served = connection => served.map_err(|e| e.to_string()),
        () = activity.idle(IDLE_TIMEOUT) => Err("idle too long".to_owned()),
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds from `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.start + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An I/O object that records when it last moved a byte.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
