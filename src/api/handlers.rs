//! One function per route. Reads come from the running state; every change is an edit
//! of the running configuration through [`Control`](crate::control::Control).

use std::path::Path as FilePath;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

use super::{views, ApiError, ApiState, OPENAPI};
use crate::backend::{AdminState, Backend, BackendSpec};
use crate::bounded_json;
use crate::config::dump::{self, Secrets};
use crate::config::{self, Config, ConfigErrors, DiscoveryConfig, HealthKind, ServerConfig};
use crate::control::ControlError;
use crate::reload::Change;

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
        "configPath": api.control.config_path().map(|p| p.display().to_string()),
    }))
}

pub async fn ping() -> &'static str {
    "pong"
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
    let server = api
        .control
        .runtime()
        .server(&name)
        .await
        .ok_or_else(|| no_server(&name))?;
    Ok(Json(views::server_stats(&server)))
}

pub async fn list_backends(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let server = api
        .control
        .runtime()
        .server(&name)
        .await
        .ok_or_else(|| no_server(&name))?;
    let pool = server.pool.load();
    Ok(Json(
        pool.backends().iter().map(|b| views::backend(b)).collect(),
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
    if options.deadline.is_some() {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "deadline",
            "a new backend has no connections to close; PATCH takes a deadline",
        ));
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
        let change = match find_backend(&api, &name, &key).await {
            Some(backend) => backend.state.note_admin_change(),
            None => 0,
        };
        if let Some(deadline) = options.deadline {
            let api = api.clone();
            let (name, key) = (name.clone(), key.clone());
            tokio::spawn(cut_after(api, name, key, deadline, change));
        }
    }
    backend_view(&api, &name, &key).await
}

/// Closes the connections still open to a backend `deadline` after it was drained,
/// unless its admin state has changed since (`change` is that drain's number).
async fn cut_after(api: ApiState, name: String, key: String, deadline: Duration, change: u64) {
    tokio::time::sleep(deadline).await;
    let Some(backend) = find_backend(&api, &name, &key).await else {
        return;
    };
    if backend.admin_state() == AdminState::Draining && backend.state.admin_changes() == change {
        info!(
            server = name,
            backend = key,
            open = backend.active(),
            "drain deadline passed: closing the backend's connections"
        );
        backend.state.cut_connections();
    }
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

/// Backend options of a POST or PATCH body, every key checked.
#[derive(Default)]
struct BackendOptions {
    weight: Option<u32>,
    priority: Option<u32>,
    max_connections: Option<Option<u32>>,
    backup: Option<bool>,
    sni: Option<Option<String>>,
    alpn: Option<Option<String>>,
    state: Option<AdminState>,
    /// With `state = drain`: close the connections still open after this long.
    deadline: Option<Duration>,
}

impl BackendOptions {
    fn from_body(body: &[u8], required: bool) -> ApiResult<Self> {
        let bad =
            |field: &str, message: String| ApiError::field(StatusCode::BAD_REQUEST, field, message);
        if body.iter().all(u8::is_ascii_whitespace) {
            if required {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "empty body; expected a JSON object such as {\"weight\": 2}",
                ));
            }
            return Ok(BackendOptions::default());
        }
        let value: Value = bounded_json::from_slice(body, usize::MAX).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}"))
        })?;
        let Value::Object(fields) = value else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body must be a JSON object",
            ));
        };
        let mut options = BackendOptions::default();
        let number = |field: &str, v: &Value, min: u64| -> ApiResult<u32> {
            v.as_u64()
                .filter(|&n| n >= min)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    bad(
                        field,
                        format!("expected a whole number from {min} to 4294967295"),
                    )
                })
        };
        for (field, v) in &fields {
            match field.as_str() {
                "weight" => options.weight = Some(number(field, v, 1)?),
                "priority" => options.priority = Some(number(field, v, 0)?),
                "max_connections" => {
                    options.max_connections = Some(Some(number(field, v, 0)?).filter(|&n| n > 0));
                }
                "backup" => {
                    let backup = v.as_bool().ok_or_else(|| bad(field, "expected true or false".into()))?;
                    options.backup = Some(backup);
                }
                "sni" => {
                    let sni = match v {
                        Value::Null => None,
                        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => Some(s.clone()),
                        _ => return Err(bad(field, "expected a host name or null".into())),
                    };
                    options.sni = Some(sni);
                }
                "alpn" => {
                    let alpn = match v {
                        Value::Null => None,
                        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => Some(s.clone()),
                        _ => return Err(bad(field, "expected a protocol name or null".into())),
                    };
                    options.alpn = Some(alpn);
                }
                "state" => {
                    let state = v.as_str().ok_or_else(|| bad(field, "expected \"enabled\", \"disabled\" or \"drain\"".into()))?;
                    options.state = Some(state.parse().map_err(|e: String| bad(field, e))?);
                }
                "deadline" => {
                    let text = v.as_str().ok_or_else(|| bad(field, "expected a duration such as \"30s\"".into()))?;
                    options.deadline = Some(config::parse_duration(text).map_err(|e| bad(field, e))?);
                }
                other => {
                    return Err(bad(
                        other,
                        format!("unknown field \"{other}\"; expected weight, priority, max_connections, backup, sni, alpn, state or deadline"),
                    ))
                }
            }
        }
        if options.deadline.is_some() && options.state != Some(AdminState::Draining) {
            return Err(bad(
                "deadline",
                "a deadline goes with \"state\": \"drain\"".into(),
            ));
        }
        if required && fields.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "nothing to change: the object is empty",
            ));
        }
        Ok(options)
    }

    fn apply(&self, spec: &mut BackendSpec) {
        if let Some(weight) = self.weight {
            spec.weight = weight;
        }
        if let Some(priority) = self.priority {
            spec.priority = priority;
        }
        if let Some(max) = self.max_connections {
            spec.max_connections = max;
        }
        if let Some(backup) = self.backup {
            spec.backup = backup;
        }
        if let Some(sni) = &self.sni {
            spec.sni.clone_from(sni);
        }
        if let Some(alpn) = &self.alpn {
            spec.alpn.clone_from(alpn);
        }
        if let Some(state) = self.state {
            spec.admin = state;
        }
    }
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
    Ok(Json(views::backend(backend)))
}

/// `body` with every `"<redacted>"` string, and every URL redacted as the dump redacts
/// it, replaced by the value at the same place in `old`; a body that is not JSON is passed through for the parser to report.
fn restore_secrets(body: &[u8], old: &Value) -> ApiResult<Vec<u8>> {
    fn walk(new: &mut Value, old: &Value) {
        match (new, old) {
            (Value::String(s), Value::String(o))
                if s == dump::REDACTED
                    || (s.contains(dump::REDACTED) && *s == dump::url(o, Secrets::Redact)) =>
            {
                s.clone_from(o)
            }
            (Value::Object(n), Value::Object(o)) => {
                for (key, value) in n.iter_mut() {
                    if let Some(old) = o.get(key) {
                        walk(value, old);
                    }
                }
            }
            (Value::Array(n), Value::Array(o)) => {
                for (value, old) in n.iter_mut().zip(o) {
                    walk(value, old);
                }
            }
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return Ok(body.to_vec());
    };
    walk(&mut value, old);
    serde_json::to_vec(&value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
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
    let clash = config.servers.iter().find(|(other, s)| {
        other.as_str() != name
            && server.bind.port() != 0
            && s.bind.port() == server.bind.port()
            && (s.bind.ip() == server.bind.ip()
                || s.bind.ip().is_unspecified()
                || server.bind.ip().is_unspecified())
    });
    match clash {
        Some((other, s)) => Err(ApiError::field(
            StatusCode::CONFLICT,
            "bind",
            format!(
                "address {} is already used by server \"{other}\" ({})",
                server.bind, s.bind
            ),
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
        DiscoveryConfig::Static { backends } => Ok(backends),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "backends of this server come from discovery",
        )),
    }
}

/// A server from a request body in the configuration's JSON schema, checked exactly as
/// the file's `[servers.NAME]` would be. Relative file paths are taken from the directory
/// of `config_file` as the file's own are (what `persist` writes then reads back the
/// same); without a file they are kept as written.
fn parse_server(
    name: &str,
    body: &[u8],
    config_file: Option<&FilePath>,
) -> ApiResult<ServerConfig> {
    let body = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "body is not UTF-8"))?;
    if body.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty body; expected the server as a JSON object",
        ));
    }
    let quoted = serde_json::to_string(name).unwrap_or_default();
    let text = format!("{{\"servers\": {{{quoted}: {body}\n}}}}");
    let dir = config_file
        .map(config::config_dir)
        .transpose()
        .map_err(|e| {
            let message = format!("cannot tell the configuration's directory: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
        })?;
    let request = FilePath::new("request.json");
    let mut loaded = config::parse_in(&text, request, dir.as_deref()).map_err(|errors| {
        let prefix = format!("servers.{name}.");
        config_error(StatusCode::BAD_REQUEST, &errors, &prefix)
    })?;
    loaded
        .config
        .servers
        .remove(name)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "body must be a JSON object"))
}

/// The first configuration error as an API error, its key path as `field`.
fn config_error(status: StatusCode, errors: &ConfigErrors, strip: &str) -> ApiError {
    let Some(first) = errors.0.first() else {
        return ApiError::new(status, "invalid configuration");
    };
    let (field, message) = match first.message.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (Some(path), message),
        _ => (None, first.message.as_str()),
    };
    let field = field.map(|f| f.strip_prefix(strip).unwrap_or(f).to_owned());
    let status = if message.contains("is already used by") || message.contains("overlaps") {
        StatusCode::CONFLICT
    } else {
        status
    };
    ApiError {
        status,
        message: message.to_owned(),
        field,
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
        ControlError::Bind(_) | ControlError::Persist(_) => {
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

fn no_server(name: &str) -> ApiError {
    ApiError::not_found(format!("no server named \"{name}\""))
}

fn no_backend(name: &str, key: &str) -> ApiError {
    ApiError::not_found(format!("server \"{name}\" has no backend {key}"))
}
