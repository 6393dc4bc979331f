//! The admin REST API: GoBetween's endpoints and JSON shapes (so its tooling keeps
//! working), made correct — 404 for unknown names, JSON errors naming the field, secrets
//! redacted — plus backends as resources, `POST /reload`, an OpenAPI description and the
//! dashboard (`/ui`). Every change goes through [`Control`], as reloads do.
//!
//! `handlers`: the servers', backends' and clients' routes; `services`: BGP and ACME;
//! `views`: the JSON shapes; `decode`: request bodies; `ui`: the dashboard.

pub mod decode;
mod handlers;
mod services;
mod ui;
mod views;

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::cors::CorsLayer;

use crate::admin_http::auth::{self, Auth};
use crate::admin_http::guard::{self, Guard};
use crate::admin_http::{self, Endpoint};
use crate::config::{ApiConfig, Cors};
use crate::control::Control;

/// What every handler sees.
#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<Control>,
    pub started: SystemTime,
    /// `[api] allow_exec`: requests may add programs for Sluice to run.
    pub allow_exec: bool,
}

/// The OpenAPI 3 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route: (path, methods). The OpenAPI description is checked against it.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get"]),
    ("/ping", &["get"]),
    ("/ready", &["get"]),
    ("/servers", &["get"]),
    ("/servers/{name}", &["get", "post", "put", "delete"]),
    ("/servers/{name}/stats", &["get"]),
    ("/servers/{name}/backends", &["get"]),
    ("/servers/{name}/clients", &["get"]),
    ("/servers/{name}/clients/{addr}", &["delete"]),
    (
        "/servers/{name}/backends/{key}",
        &["get", "post", "patch", "delete"],
    ),
    ("/reload", &["post"]),
    ("/acme", &["get"]),
    ("/bgp", &["get"]),
    ("/acme/renew", &["post"]),
    ("/dump", &["get"]),
    ("/openapi.json", &["get"]),
    ("/metrics", &["get"]),
    ("/ui", &["get"]),
];

/// The API's routes, behind its guard against cross-site use, its authentication, and
/// CORS when configured.
pub fn router(config: &ApiConfig, state: ApiState) -> Router {
    use axum::routing::post;
    use handlers::*;
    use services::{acme_renew, acme_status, bgp_status};
    let routes = Router::new()
        .route("/", get(root))
        .route("/servers", get(list_servers))
        .route(
            "/servers/{name}",
            get(get_server)
                .post(create_server)
                .put(replace_server)
                .delete(delete_server),
        )
        .route("/servers/{name}/stats", get(server_stats))
        .route("/servers/{name}/backends", get(list_backends))
        .route("/servers/{name}/clients", get(list_clients))
        .route(
            "/servers/{name}/clients/{addr}",
            axum::routing::delete(forget_client),
        )
        .route(
            "/servers/{name}/backends/{key}",
            get(get_backend)
                .post(add_backend)
                .patch(patch_backend)
                .delete(delete_backend),
        )
        .route("/reload", post(reload))
        .route("/acme", get(acme_status))
        .route("/bgp", get(bgp_status))
        .route("/acme/renew", post(acme_renew))
        .route("/dump", get(dump))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .with_state(state.clone())
        .merge(crate::metrics::router(Arc::clone(state.control.runtime())));
    let auth = Auth::new(config.basic_auth.as_ref(), config.bearer_token.as_deref());
    // The dashboard's assets are outside authentication: they hold no data, and a
    // browser cannot send a bearer token when it opens a page. Everything they fetch is
    // behind it. So are the probes: a container's health check, Kubernetes or an outer
    // load balancer has no credentials, and they say nothing but whether Sluice serves.
    let probes = Router::new()
        .route("/ping", get(ping))
        .route("/ready", get(ready))
        .with_state(state.clone());
    let mut app = routes
        .layer(middleware::from_fn_with_state(
            Arc::new(auth),
            auth::require,
        ))
        .merge(ui::router())
        .merge(probes);
    // Outside authentication: a browser's CORS preflight carries no credentials.
    if let Some(cors) = cors_layer(&config.cors) {
        app = app.layer(cors);
    }
    let guard = Guard {
        allowed_hosts: config.allowed_hosts.clone(),
        origins: match &config.cors {
            Cors::Off => Some(Vec::new()),
            Cors::AnyOrigin => None,
            Cors::Origins(origins) => Some(origins.clone()),
        },
        section: "api",
    };
    app.layer(middleware::from_fn_with_state(
        Arc::new(guard),
        guard::require,
    ))
}

/// `cors = true` answers any origin but never lets the browser add its credentials
/// (cookies, a cached basic login): a page must hold a token of its own. A list of
/// origins is trusted with credentials.
fn cors_layer(cors: &Cors) -> Option<CorsLayer> {
    use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
    use axum::http::{HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, Any};
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    let layer = CorsLayer::new()
        .allow_methods(methods)
        .allow_headers([AUTHORIZATION, CONTENT_TYPE]);
    match cors {
        Cors::Off => None,
        Cors::AnyOrigin => Some(layer.allow_origin(Any)),
        Cors::Origins(origins) => {
            let origins = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok());
            Some(
                layer
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_credentials(true),
            )
        }
    }
}

/// Serves the API on `listener` until the process ends or `stop`: HTTPS with `tls`
/// (loaded beforehand, so a bad certificate fails start-up), else plain HTTP.
pub async fn serve(
    listener: TcpListener,
    config: ApiConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: ApiState,
    stop: tokio_util::sync::CancellationToken,
) {
    let app = router(&config, state);
    let endpoint = Endpoint {
        what: "admin API",
        listener,
        tls,
        max_connections: config.max_connections as usize,
        stop,
    };
    admin_http::serve(endpoint, app).await;
}

/// An API error: its status and `{"error": …, "field": …}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "field": self.field });
        (self.status, Json(body)).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}
