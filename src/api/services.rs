//! The routes of what Sluice does beside proxying: BGP (what is announced, each
//! neighbour's session) and ACME (each certificate, renewal on demand).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::ApiState;

/// `GET /bgp`: what is announced, and each neighbour's session.
pub async fn bgp_status(State(api): State<ApiState>) -> Json<Value> {
    let bgp = api.control.runtime().bgp();
    let announced: Vec<String> = bgp.announced().iter().map(ToString::to_string).collect();
    Json(json!({
        "announced": announced,
        "withdrawn_for_shutdown": bgp.is_withdrawn(),
        "neighbors": bgp.status(),
    }))
}

/// `GET /acme`: each `acme_hosts` name's certificate: validity, serial, last error.
pub async fn acme_status(State(api): State<ApiState>) -> Json<Value> {
    let certificates = api.control.runtime().acme().status();
    Json(json!({ "certificates": certificates }))
}

#[derive(Deserialize)]
pub struct RenewQuery {
    name: Option<String>,
}

/// `POST /acme/renew[?name=NAME]`: orders new certificates now and answers once done:
/// 200 when every one was renewed, 502 (the ACME server failed) with why otherwise, 404
/// for a name no server lists.
pub async fn acme_renew(
    State(api): State<ApiState>,
    Query(query): Query<RenewQuery>,
) -> (StatusCode, Json<Value>) {
    let acme = api.control.runtime().acme();
    if let Some(name) = query.name.as_deref().filter(|name| !acme.follows(name)) {
        let error = format!("\"{name}\" is not one of the servers' acme_hosts");
        return (StatusCode::NOT_FOUND, Json(json!({ "error": error })));
    }
    let (renewed, failed) = acme.renew(query.name.as_deref()).await;
    info!(
        renewed = renewed.len(),
        failed = failed.len(),
        "ACME renewal asked through the API"
    );
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (
        status,
        Json(json!({ "renewed": renewed, "failed": failed })),
    )
}
