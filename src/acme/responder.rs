//! The HTTP-01 responder: plain HTTP on `http_bind`, answering only
//! `GET /.well-known/acme-challenge/TOKEN` with the token's key authorization while its
//! order runs; anything else is a 404. Bounded like every listener here: a few hundred
//! connections at once, a request's head read within seconds, a connection closed after
//! its time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::order::Tokens;

/// Connections answered at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send a request's head, and a connection may last.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the tokens are asked for.
const PREFIX: &str = "/.well-known/acme-challenge/";

/// Answers on `listener` until `stop` is cancelled.
pub(super) async fn serve(listener: TcpListener, tokens: Tokens, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(bind = %addr, "ACME HTTP-01 responder listening");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "ACME responder: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let tokens = Arc::clone(&tokens);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let answer = answer(&tokens, &request, peer);
                async move { Ok::<_, Infallible>(answer) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
            }
        });
    }
}

fn answer(tokens: &Tokens, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let token = path.strip_prefix(PREFIX).filter(|t| !t.is_empty());
    let found = match (request.method(), token) {
        (&Method::GET | &Method::HEAD, Some(token)) => tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned(),
        _ => None,
    };
    match found {
        Some(key_authorization) => {
            debug!(%peer, "answered an HTTP-01 challenge");
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(key_authorization)))
                .unwrap_or_default()
        }
        None => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}
