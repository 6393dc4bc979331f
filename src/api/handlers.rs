//! One function per route. Reads come from the running state; every change is an edit
//! of the running configuration through [`Control`](crate::control::Control).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

use super::decode::{config_error, conflict_or, parse_server, restore_secrets, BackendOptions};
use super::{views, ApiError, ApiState, OPENAPI};
use crate::backend::{AdminState, Backend, BackendSpec, Cut};
use crate::config::dump::{self, Secrets};
use crate::config::{Bind, BindRange, Config, DiscoveryConfig, HealthKind, ServerConfig};
use crate::control::ControlError;
use crate::origin::etcd::StoreError;
use crate::proxy::state::ServerShared;
use crate::reload::Change;
use crate::runtime::BindError;

type ApiResult<T> = Result<T, ApiError>;

pub async fn root(State(api): State<ApiState>) -> Json<Value> {
    let now = SystemTime::now();
    let uptime = now.duration_since(api.started).unwrap_or_default();
    let uptime = std::time::Duration::from_secs(uptime.as_secs());
    Json(json!({
        "pid": std::process::id(),
        "time": humantime::format_rfc3339_seconds(now).to_string(),
        "startTime": humantime::format_rfc3339_seconds(api.started).to_string(),
        "uptime": humantime::format_duration(uptime).to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "configPath": api.control.origin().map(ToString::to_string),
        "configStore": api.control.origin().and_then(|o| o.store()).map(|s| s.status()),
    }))
}

/// `GET /ping`: the process answers (no credentials needed; GoBetween's).
pub async fn ping() -> &'static str {
    "pong"
}

/// `GET /ready` (no credentials needed): 200 when every server has a backend to send a
/// new connection to (healthy and enabled; a server forwarding to the original
/// destination needs none), else 503 naming the servers that have none.
pub async fn ready(State(api): State<ApiState>) -> (StatusCode, Json<Value>) {
    let mut without = Vec::new();
    for (name, server) in api.control.runtime().servers().await {
        if server.settings.load().balance == crate::balance::BalanceKind::OriginalDestination {
            continue;
        }
        let pool = server.pool.load();
        let live = pool
            .backends()
            .iter()
            .any(|b| b.is_up() && b.admin_state() == AdminState::Enabled);
        if !live {
            without.push(name);
        }
    }
    if without.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        let body = json!({ "ready": false, "servers_without_backends": without });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

pub async fn list_servers(State(api): State<ApiState>) -> Json<Value> {
    let config = api.control.runtime().config().await;
    let servers: Map<String, Value> = config
        .servers
        .iter()
        .map(|(name, server)| (name.clone(), dump::server_json(server)))
        .collect();
    Json(Value::Object(servers))
}

pub async fn get_server(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let config = api.control.runtime().config().await;
    let server = config.servers.get(&name).ok_or_else(|| no_server(&name))?;
    Ok(Json(dump::server_json(server)))
}

/// `POST /servers/NAME`: a new server from a body in the configuration's JSON schema.
pub async fn create_server(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let server = parse_server(&name, &body, api.control.config_path())?;
    no_new_programs(&api, &server, None)?;
    let view = dump::server_json(&server);
    edit(&api, |config| {
        bind_free(config, &name, &server)?;
        if config.servers.contains_key(&name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("server \"{name}\" already exists; PUT replaces it"),
            ));
        }
        config.servers.insert(name.clone(), server);
        Ok(())
    })
    .await?;
    Ok(Json(view))
}

/// `PUT /servers/NAME`: the server changed in place; its connections are not cut.
pub async fn replace_server(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    // A body copied from `GET /servers/NAME` carries "<redacted>" where a secret was:
    // that means "unchanged", not a new password.
    let running = api.control.runtime().config().await;
    let old = running.servers.get(&name);
    let body = match old {
        Some(old) => restore_secrets(&body, &dump::server_value(old, Secrets::Keep))?,
        None => body.to_vec(),
    };
    let server = parse_server(&name, &body, api.control.config_path())?;
    no_new_programs(&api, &server, old)?;
    let view = dump::server_json(&server);
    edit(&api, |config| {
        bind_free(config, &name, &server)?;
        let slot = config
            .servers
            .get_mut(&name)
            .ok_or_else(|| no_server(&name))?;
        *slot = server;
        Ok(())
    })
    .await?;
    Ok(Json(view))
}

pub async fn delete_server(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    edit(&api, |config| {
        config
            .servers
            .remove(&name)
            .ok_or_else(|| no_server(&name))?;
        Ok(())
    })
    .await?;
    Ok(Json(Value::Null))
}

pub async fn server_stats(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let server = running(&api, &name).await?;
    Ok(Json(views::server_stats(&server)))
}

pub async fn list_backends(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let server = running(&api, &name).await?;
    let pool = server.pool.load();
    Ok(Json(
        pool.backends()
            .iter()
            .map(|b| views::backend(&server, b))
            .collect(),
    ))
}

pub async fn get_backend(
    State(api): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    backend_view(&api, &name, &key).await
}

/// `POST /servers/NAME/backends/HOST:PORT`, with an optional body of backend options.
pub async fn add_backend(
    State(api): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut spec: BackendSpec = key
        .parse()
        .map_err(|e: String| ApiError::field(StatusCode::BAD_REQUEST, "key", e))?;
    let key = spec.key();
    let options = BackendOptions::from_body(&body, false)?;
    for (given, field) in [
        (options.deadline.is_some(), "deadline"),
        (options.close, "close"),
    ] {
        if given {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                field,
                format!("a new backend has no connections to close; PATCH takes {field}"),
            ));
        }
    }
    options.apply(&mut spec);
    edit(&api, |config| {
        let backends = static_backends(config, &name)?;
        if backends.iter().any(|b| b.key() == key) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("backend {key} already exists in server \"{name}\"; PATCH changes it"),
            ));
        }
        backends.push(spec);
        Ok(())
    })
    .await?;
    backend_view(&api, &name, &key).await
}

/// `PATCH /servers/NAME/backends/HOST:PORT` with `{"weight": N, "state": …}`.
pub async fn patch_backend(
    State(api): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let options = BackendOptions::from_body(&body, true)?;
    edit(&api, |config| {
        let backends = static_backends(config, &name)?;
        let spec = backends
            .iter_mut()
            .find(|b| b.key() == key)
            .ok_or_else(|| no_backend(&name, &key))?;
        options.apply(spec);
        Ok(())
    })
    .await?;
    if options.state.is_some() {
        let backend = find_backend(&api, &name, &key).await;
        let change = backend.as_ref().map_or(0, |b| b.state.note_admin_change());
        if let (true, Some(backend)) = (options.close, &backend) {
            info!(
                server = name,
                backend = key,
                open = backend.active(),
                "backend disabled: closing its connections"
            );
            backend.state.cut_connections(Cut::BackendDown);
        }
        if let Some(deadline) = options.deadline {
            let runtime = api.control.runtime();
            runtime
                .cut_after(&name, key.clone(), deadline, change)
                .await;
        }
    }
    backend_view(&api, &name, &key).await
}

async fn find_backend(api: &ApiState, name: &str, key: &str) -> Option<Arc<Backend>> {
    let server = api.control.runtime().server(name).await?;
    let pool = server.pool.load();
    pool.backends().iter().find(|b| b.key() == key).cloned()
}

pub async fn delete_backend(
    State(api): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    edit(&api, |config| {
        let backends = static_backends(config, &name)?;
        let before = backends.len();
        backends.retain(|b| b.key() != key);
        if backends.len() == before {
            return Err(no_backend(&name, &key));
        }
        Ok(())
    })
    .await?;
    Ok(Json(Value::Null))
}

/// `POST /reload`: the same as SIGHUP, answered with what changed or why nothing did.
pub async fn reload(State(api): State<ApiState>) -> ApiResult<Json<Value>> {
    let changes = api.control.reload().await.map_err(control_error)?;
    Ok(Json(
        json!({ "changes": changes.iter().map(change_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
pub struct ClientsQuery {
    top: Option<String>,
}

/// The most clients `GET /servers/NAME/clients` lists.
const MAX_TOP: usize = 1000;

/// `GET /servers/NAME/clients?top=N`: the clients client protection tracks, the most
/// active first (20 unless `top` says otherwise, at most 1000).
pub async fn list_clients(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<ClientsQuery>,
) -> ApiResult<Json<Value>> {
    let top = match query.top.as_deref() {
        None => 20,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            _ => {
                let message = format!("\"{text}\" is not a number from 1 to {MAX_TOP}");
                return Err(ApiError::field(StatusCode::BAD_REQUEST, "top", message));
            }
        },
    };
    let server = running(&api, &name).await?;
    let limits = server.settings.load().limits.clone();
    let clients = server
        .clients
        .top(&limits, top, tokio::time::Instant::now());
    Ok(Json(clients.iter().map(views::client).collect()))
}

/// `DELETE /servers/NAME/clients/ADDR`: forgets the client ADDR belongs to (its
/// counts, bucket and limited state).
pub async fn forget_client(
    State(api): State<ApiState>,
    Path((name, addr)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let client: std::net::IpAddr = addr.parse().map_err(|_| {
        let message = format!("\"{addr}\" is not an IPv4 or IPv6 address");
        ApiError::field(StatusCode::BAD_REQUEST, "addr", message)
    })?;
    let server = running(&api, &name).await?;
    let limits = server.settings.load().limits.clone();
    if !server.clients.forget(&limits, client) {
        let message = format!("server \"{name}\" tracks no client {addr}");
        return Err(ApiError::not_found(message));
    }
    Ok(Json(Value::Null))
}

#[derive(Deserialize)]
pub struct DumpQuery {
    format: Option<String>,
}

/// `GET /dump?format=toml|json`: the running configuration, secrets redacted.
pub async fn dump(
    State(api): State<ApiState>,
    Query(query): Query<DumpQuery>,
) -> ApiResult<impl IntoResponse> {
    let config = api.control.runtime().config().await;
    match query.format.as_deref().unwrap_or("toml") {
        "json" => Ok(Json(dump::to_json(&config, Secrets::Redact)).into_response()),
        "toml" => {
            let text = dump::to_toml(&config, Secrets::Redact).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot write TOML: {e}"),
                )
            })?;
            Ok(([(CONTENT_TYPE, "application/toml")], text).into_response())
        }
        other => Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "format",
            format!("unknown format \"{other}\"; expected toml or json"),
        )),
    }
}

pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Runs `change` on the running configuration through the one path every change takes.
async fn edit(api: &ApiState, change: impl FnOnce(&mut Config) -> ApiResult<()>) -> ApiResult<()> {
    api.control.edit(change).await.map_err(control_error)?
}

async fn backend_view(api: &ApiState, name: &str, key: &str) -> ApiResult<Json<Value>> {
    let server = api
        .control
        .runtime()
        .server(name)
        .await
        .ok_or_else(|| no_server(name))?;
    let pool = server.pool.load();
    let backend = pool
        .backends()
        .iter()
        .find(|b| b.key() == key)
        .ok_or_else(|| no_backend(name, key))?;
    Ok(Json(views::backend(&server, backend)))
}

/// 403 when `server` would run a program that `old` (the server it replaces) does not
/// already run — `exec` discovery or an `exec` health check — unless `[api] allow_exec`.
/// Anyone who can reach the API could otherwise run commands as Sluice's user.
fn no_new_programs(
    api: &ApiState,
    server: &ServerConfig,
    old: Option<&ServerConfig>,
) -> ApiResult<()> {
    if api.allow_exec {
        return Ok(());
    }
    let refuse = |field: &str| {
        let message = "servers that run programs (exec discovery, exec health checks) are \
                       configured in the file, not through the API, unless [api] allow_exec \
                       = true";
        Err(ApiError::field(StatusCode::FORBIDDEN, field, message))
    };
    let new_discovery = matches!(server.discovery, DiscoveryConfig::Exec { .. })
        && old.is_none_or(|old| old.discovery != server.discovery);
    if new_discovery {
        return refuse("discovery.kind");
    }
    let new_check = matches!(server.healthcheck.kind, HealthKind::Exec(_))
        && old.is_none_or(|old| old.healthcheck.kind != server.healthcheck.kind);
    if new_check {
        return refuse("healthcheck.kind");
    }
    Ok(())
}

/// 409 when another server listens on the same port of the same or a wildcard address
/// (port 0, "any free port", never clashes).
fn bind_free(config: &Config, name: &str, server: &ServerConfig) -> ApiResult<()> {
    // A host name is compared by its text here, and by its address when the server starts.
    let same_host = |a: &Bind, b: &Bind| match (a, b) {
        (Bind::Addr(a), Bind::Addr(b)) => {
            a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
        }
        (Bind::Name { host: a, .. }, Bind::Name { host: b, .. }) => a.eq_ignore_ascii_case(b),
        (Bind::Addr(any), Bind::Name { .. }) | (Bind::Name { .. }, Bind::Addr(any)) => {
            any.ip().is_unspecified()
        }
    };
    let overlap = |a: &BindRange, b: &BindRange| {
        a.bind.port() != 0
            && b.bind.port() != 0
            && a.bind.port() <= b.last_port
            && b.bind.port() <= a.last_port
            && same_host(&a.bind, &b.bind)
    };
    let clash = config
        .servers
        .iter()
        .filter(|(other, _)| other.as_str() != name)
        .find_map(|(other, s)| {
            server.bind.ranges().iter().find_map(|mine| {
                let theirs = s
                    .bind
                    .ranges()
                    .iter()
                    .find(|theirs| overlap(mine, theirs))?;
                Some((other, mine, theirs))
            })
        });
    match clash {
        Some((other, mine, theirs)) => Err(ApiError::field(
            StatusCode::CONFLICT,
            "bind",
            format!("address {mine} is already used by server \"{other}\" ({theirs})"),
        )),
        None => Ok(()),
    }
}

fn static_backends<'c>(config: &'c mut Config, name: &str) -> ApiResult<&'c mut Vec<BackendSpec>> {
    let server = config
        .servers
        .get_mut(name)
        .ok_or_else(|| no_server(name))?;
    match &mut server.discovery {
        DiscoveryConfig::Static { backends } => Ok(std::sync::Arc::make_mut(backends)),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "backends of this server come from discovery",
        )),
    }
}

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::NoFile => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        ControlError::Invalid(errors) => {
            let mut error = config_error(StatusCode::BAD_REQUEST, &errors, "");
            if errors.0.len() > 1 {
                error.message = errors.to_string();
            }
            error
        }
        ControlError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        // A `bind` host name resolves when its server starts: refused as the body's own
        // `bind` would have been, had it been checked with the body.
        ControlError::Bind(BindError::Address { reason, .. }) => {
            let status = conflict_or(StatusCode::BAD_REQUEST, &reason);
            ApiError::field(status, "bind", reason)
        }
        ControlError::Store(StoreError::Changed) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        ControlError::Store(StoreError::Unreachable(_)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        ControlError::Bind(_) | ControlError::Persist(_) | ControlError::Store(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

fn change_json(change: &Change) -> Value {
    let (action, server) = match change {
        Change::Add(s) => ("add", s),
        Change::Remove(s) => ("remove", s),
        Change::Restart(s) => ("restart", s),
        Change::Update(s) => ("update", s),
    };
    json!({ "server": server, "action": action })
}

/// The running state of server `name`, or a 404 naming it.
async fn running(api: &ApiState, name: &str) -> ApiResult<Arc<ServerShared>> {
    api.control
        .runtime()
        .server(name)
        .await
        .ok_or_else(|| no_server(name))
}

fn no_server(name: &str) -> ApiError {
    ApiError::not_found(format!("no server named \"{name}\""))
}

fn no_backend(name: &str, key: &str) -> ApiError {
    ApiError::not_found(format!("server \"{name}\" has no backend {key}"))
}
