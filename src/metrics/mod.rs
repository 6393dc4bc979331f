//! Prometheus metrics: `GET /metrics` in the OpenMetrics text format.
//!
//! Nothing here is on the data path. Connections only add to the atomics that servers
//! and backends already hold; a scrape reads them all through a [`Collector`]
//! (`collector.rs`, each family written by `family.rs`; the ACME and BGP families
//! in `control.rs`) and, for the per-backend families that are most of a large
//! exposition, a text writer of its own (`backends.rs`), so there is no second set of
//! metric objects to keep in step with reloads: a backend appears in the output for as
//! long as it is in its server's pool.
//! `?scope=process|server|backend` (repeatable, as HAProxy's exporter) writes only those
//! families: the per-backend ones are most of the output of a large configuration.
//!
//! [`Collector`]: prometheus_client::collector::Collector

mod backends;
mod collector;
mod control;
mod family;
mod scope;

pub use scope::Scope;

use backends::BackendFamilies;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use prometheus_client::encoding::text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::error;

use crate::admin_http::auth::{self, Auth};
use crate::admin_http::guard::{self, Guard};
use crate::admin_http::{self, Endpoint};
use crate::config::MetricsConfig;
use crate::runtime::Runtime;

/// What prometheus-client's text encoder produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A router answering `GET /metrics`, to serve alone ([`serve`]) or merge into another.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(runtime)
}

/// Metrics connections open at once; a scraper needs one.
const MAX_CONNECTIONS: usize = 16;

/// Serves [`router`] on `listener` until the process ends or `stop`, behind the same
/// guard and credentials as the API (see [`crate::admin_http`]).
pub async fn serve(
    listener: TcpListener,
    config: MetricsConfig,
    runtime: Arc<Runtime>,
    stop: tokio_util::sync::CancellationToken,
) {
    let auth = Auth::new(config.basic_auth.as_ref(), config.bearer_token.as_deref());
    let guard = Guard {
        allowed_hosts: config.allowed_hosts.clone(),
        origins: Some(Vec::new()),
        section: "metrics",
    };
    let app = router(runtime)
        .layer(middleware::from_fn_with_state(
            Arc::new(auth),
            auth::require,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::new(guard),
            guard::require,
        ));
    let endpoint = Endpoint {
        what: "metrics endpoint",
        listener,
        tls: None,
        max_connections: MAX_CONNECTIONS,
        stop,
    };
    admin_http::serve(endpoint, app).await;
}

async fn scrape(State(runtime): State<Arc<Runtime>>, RawQuery(query): RawQuery) -> Response {
    let scope = match Scope::from_query(query.as_deref()) {
        Ok(scope) => scope,
        Err(message) => return (StatusCode::BAD_REQUEST, message + "\n").into_response(),
    };
    let servers = runtime.servers().await;
    let certificates = runtime.acme().status();
    let neighbors = runtime.bgp().status();
    // Thousands of backends make an exposition of tens or hundreds of megabytes: written
    // off the threads that serve the API and run the checks, and sent as it is written,
    // a chunk at a time, rather than held whole (twice: the text, and the HTTP buffer).
    let (chunks, mut written) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut out = Chunks::new(chunks);
        let result = render(&mut out, servers, certificates, neighbors, scope);
        if result.and_then(|()| out.flush()).is_err() && !out.sender.is_closed() {
            // An encoder that rejects a value; writing to the channel cannot fail
            // otherwise than by the scraper going away.
            error!("cannot encode the metrics");
            let _ = out
                .sender
                .blocking_send(Err(std::io::Error::other("cannot encode the metrics")));
        }
    });
    // An error before the first chunk is still a status; one after it ends the body
    // early (without `# EOF`, which the scraper reports).
    let first = match written.recv().await {
        Some(Ok(first)) => first,
        Some(Err(_)) | None => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let rest = futures_util::stream::unfold(written, |mut written| async move {
        written.recv().await.map(|chunk| (chunk, written))
    });
    let body = futures_util::stream::once(async { Ok(first) }).chain(rest);
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Chunks of the exposition a scrape has written and not yet sent, at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How much text makes a chunk.
const CHUNK: usize = 256 * 1024;

/// A [`std::fmt::Write`] that sends what is written, [`CHUNK`] by [`CHUNK`], to the
/// response; blocks while the scraper reads more slowly than the text is written.
struct Chunks {
    chunk: String,
    sender: mpsc::Sender<std::io::Result<Bytes>>,
}

impl Chunks {
    fn new(sender: mpsc::Sender<std::io::Result<Bytes>>) -> Chunks {
        Chunks {
            chunk: String::with_capacity(CHUNK + CHUNK / 4),
            sender,
        }
    }

    /// Sends what is written so far; an error once the scraper has gone.
    fn flush(&mut self) -> std::fmt::Result {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.chunk, String::with_capacity(CHUNK + CHUNK / 4));
        self.sender
            .blocking_send(Ok(Bytes::from(full)))
            .map_err(|_| std::fmt::Error)
    }
}

impl std::fmt::Write for Chunks {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.chunk.push_str(text);
        if self.chunk.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

/// Writes the exposition of `scope` for these servers, `# EOF` included, into `out`.
fn render(
    out: &mut impl std::fmt::Write,
    servers: Vec<(String, Arc<crate::proxy::state::ServerShared>)>,
    certificates: Vec<crate::acme::CertificateStatus>,
    neighbors: Vec<crate::bgp::NeighborStatus>,
    scope: Scope,
) -> std::fmt::Result {
    // A registry per scrape costs one allocation and keeps the collector's snapshot of
    // servers and pools consistent for the whole response; the per-backend families,
    // most of a large exposition, are written from the same pools without it.
    let scrape = collector::Scrape::new(servers, scope)
        .with_certificates(certificates)
        .with_neighbors(neighbors);
    let backends = scope.backends.then(|| BackendFamilies::new(scrape.pools()));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    text::encode_registry(out, &registry)?;
    if let Some(backends) = backends {
        backends.write(out)?;
    }
    text::encode_eof(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn text_goes_out_in_chunks_and_stops_once_the_scraper_is_gone() {
        let (sender, mut received) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let mut out = Chunks::new(sender);
        let line = "x".repeat(1000) + "\n";
        let lines = CHUNK / line.len() + 10;
        let writer = std::thread::spawn(move || {
            for _ in 0..lines {
                out.write_str(&line)?;
            }
            // Dropped here, with its sender: the receiving loop then ends.
            out.flush()
        });
        let mut sizes = Vec::new();
        while let Some(chunk) = received.blocking_recv() {
            sizes.push(chunk.expect("a chunk").len());
        }
        assert!(writer.join().expect("writer").is_ok());
        assert_eq!(sizes.iter().sum::<usize>(), lines * 1001);
        assert_eq!(sizes.len(), 2, "one full chunk, then the rest: {sizes:?}");
        assert!(sizes[0] >= CHUNK);

        // The scraper gone: the next chunk fails, so the encoder stops.
        let (sender, received) = mpsc::channel(CHUNKS_IN_FLIGHT);
        drop(received);
        let mut out = Chunks::new(sender);
        assert!(out.write_str("# EOF\n").is_ok(), "buffered");
        assert!(out.flush().is_err());
    }
}
