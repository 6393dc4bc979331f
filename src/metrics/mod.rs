//! Prometheus metrics: `GET /metrics` in the OpenMetrics text format.
//!
//! Nothing here is on the data path. Connections only add to the atomics that servers
//! and backends already hold; a scrape reads them all through a [`Collector`]
//! (`collector.rs`, each family written by `family.rs`; the ACME and BGP families
//! in `control.rs`), so there is no second set of metric objects to keep in step with
//! reloads: a backend appears in the output for as long as it is in its server's pool.
//! `?scope=process|server|backend` (repeatable, as HAProxy's exporter) writes only those
//! families: the per-backend ones are most of the output of a large configuration.
//!
//! [`Collector`]: prometheus_client::collector::Collector

mod collector;
mod control;
mod family;
mod scope;

pub use scope::Scope;

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use prometheus_client::encoding::text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
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
    // Thousands of backends make an exposition of tens of megabytes: written off the
    // threads that serve the API and run the checks.
    let rendered =
        tokio::task::spawn_blocking(move || render(servers, certificates, neighbors, scope)).await;
    match rendered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        // Writing to a String cannot fail; an encoder that rejects a value can.
        Ok(Err(e)) => {
            error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            error!(error = %e, "the metrics were not written");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The exposition of `scope` for these servers, `# EOF` included.
fn render(
    servers: Vec<(String, Arc<crate::proxy::state::ServerShared>)>,
    certificates: Vec<crate::acme::CertificateStatus>,
    neighbors: Vec<crate::bgp::NeighborStatus>,
    scope: Scope,
) -> Result<String, std::fmt::Error> {
    // A registry per scrape costs one allocation and keeps the collector's snapshot of
    // servers and pools consistent for the whole response.
    let mut registry = Registry::default();
    registry.register_collector(Box::new(
        collector::Scrape::new(servers, scope)
            .with_certificates(certificates)
            .with_neighbors(neighbors),
    ));
    let mut body = String::new();
    text::encode(&mut body, &registry)?;
    Ok(body)
}
