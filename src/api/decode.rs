//! Request bodies into typed values: a server in the configuration's JSON schema,
//! backend options, secrets a body copied from `GET` carries redacted. Everything here
//! is pure (no running state), so the fuzz target `api_body` drives it directly.

use std::path::Path as FilePath;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use super::ApiError;
use crate::backend::{AdminState, BackendSpec};
use crate::bounded_json;
use crate::config::dump::{self, Secrets};
use crate::config::{self, ConfigErrors, ServerConfig};

type ApiResult<T> = Result<T, ApiError>;

/// Backend options of a POST or PATCH body, every key checked.
#[derive(Default)]
pub struct BackendOptions {
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    pub max_connections: Option<Option<u32>>,
    pub backup: Option<bool>,
    pub sni: Option<Option<String>>,
    pub alpn: Option<Option<String>>,
    pub state: Option<AdminState>,
    pub source: Option<Option<std::net::IpAddr>>,
    /// With `state = drain`: close the connections still open after this long.
    pub deadline: Option<Duration>,
    /// With `state = disabled`: close its connections now (`backend_down`).
    pub close: bool,
}

impl BackendOptions {
    pub fn from_body(body: &[u8], required: bool) -> ApiResult<Self> {
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
        let value: Value = bounded_json::from_slice(body).map_err(|e| {
            let message = match e {
                bounded_json::Error::TooDeep(e) => format!("body refused: {e} (at byte {})", e.at),
                bounded_json::Error::Syntax(e) => format!("body is not JSON: {e}"),
            };
            ApiError::new(StatusCode::BAD_REQUEST, message)
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
                    let backup = v
                        .as_bool()
                        .ok_or_else(|| bad(field, "expected true or false".into()))?;
                    options.backup = Some(backup);
                }
                "sni" => {
                    let sni = match v {
                        Value::Null => None,
                        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                            Some(s.clone())
                        }
                        _ => return Err(bad(field, "expected a host name or null".into())),
                    };
                    options.sni = Some(sni);
                }
                "alpn" => {
                    let alpn = match v {
                        Value::Null => None,
                        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                            Some(s.clone())
                        }
                        _ => return Err(bad(field, "expected a protocol name or null".into())),
                    };
                    options.alpn = Some(alpn);
                }
                "state" => {
                    let state = v.as_str().ok_or_else(|| {
                        bad(
                            field,
                            "expected \"enabled\", \"disabled\" or \"drain\"".into(),
                        )
                    })?;
                    options.state = Some(state.parse().map_err(|e: String| bad(field, e))?);
                }
                "source" => {
                    let source = match v {
                        Value::Null => None,
                        Value::String(s) => Some(
                            config::static_list::source_address(s).map_err(|e| bad(field, e))?,
                        ),
                        _ => return Err(bad(field, "expected an IP address or null".into())),
                    };
                    options.source = Some(source);
                }
                "deadline" => {
                    let text = v
                        .as_str()
                        .ok_or_else(|| bad(field, "expected a duration such as \"30s\"".into()))?;
                    options.deadline =
                        Some(config::parse_duration(text).map_err(|e| bad(field, e))?);
                }
                "close" => {
                    options.close = v
                        .as_bool()
                        .ok_or_else(|| bad(field, "expected true or false".into()))?;
                }
                other => {
                    let known = config::BACKEND_OPTIONS.join(", ");
                    return Err(bad(
                        other,
                        format!("unknown field \"{other}\"; expected {known}, deadline or close"),
                    ));
                }
            }
        }
        if options.close && options.state != Some(AdminState::Disabled) {
            return Err(bad(
                "close",
                "close goes with \"state\": \"disabled\"; a drain closes with a deadline".into(),
            ));
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

    pub fn apply(&self, spec: &mut BackendSpec) {
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
        if let Some(source) = self.source {
            spec.source = source;
        }
    }
}

/// `body` with every `"<redacted>"` string, and every URL redacted as the dump redacts
/// it, replaced by the value at the same place in `old`; a body that is not JSON is passed through for the parser to report.
pub fn restore_secrets(body: &[u8], old: &Value) -> ApiResult<Vec<u8>> {
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

/// A server from a request body in the configuration's JSON schema, checked exactly as
/// the file's `[servers.NAME]` would be. Relative file paths are taken from the directory
/// of `config_file` as the file's own are (what `persist` writes then reads back the
/// same); without a file they are kept as written.
pub fn parse_server(
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
        let mut error = config_error(StatusCode::BAD_REQUEST, &errors, &prefix);
        // An error of the JSON itself names no key: say where in the body it is (the
        // body starts after the wrapper on the first line).
        if let (None, Some(first)) = (&error.field, errors.0.first()) {
            let wrapper = "{\"servers\": {".len() + quoted.chars().count() + ": ".len();
            let col = match first.line {
                1 => first.col.saturating_sub(wrapper),
                _ => first.col,
            };
            if first.line > 0 {
                error.message = format!(
                    "{} (line {}, column {col} of the body)",
                    error.message, first.line
                );
            }
        }
        error
    })?;
    loaded
        .config
        .servers
        .remove(name)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "body must be a JSON object"))
}

/// The first configuration error as an API error, its key path as `field`.
pub(super) fn config_error(status: StatusCode, errors: &ConfigErrors, strip: &str) -> ApiError {
    let Some(first) = errors.0.first() else {
        return ApiError::new(status, "invalid configuration");
    };
    let (field, message) = match first.message.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (Some(path), message),
        _ => (None, first.message.as_str()),
    };
    let field = field.map(|f| f.strip_prefix(strip).unwrap_or(f).to_owned());
    ApiError {
        status: conflict_or(status, message),
        message: message.to_owned(),
        field,
    }
}

/// 409 for a message about an address another server listens on, else `status`.
pub(super) fn conflict_or(status: StatusCode, message: &str) -> StatusCode {
    if message.contains("is already used by") || message.contains("overlaps") {
        StatusCode::CONFLICT
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API takes every option a backend line takes, under the same name, and no
    /// other (besides its own `deadline` and `close`): the names are declared once, in
    /// [`config::BACKEND_OPTIONS`].
    #[test]
    fn backend_bodies_take_the_declared_options() {
        let sample = |name: &str| match name {
            "weight" | "priority" | "max_connections" => "2",
            "backup" => "true",
            "sni" => "\"a.example\"",
            "alpn" => "\"h2\"",
            "state" => "\"disabled\"",
            "source" => "\"127.0.0.9\"",
            other => panic!("the API body does not take the backend option {other}"),
        };
        let mut spec = BackendSpec::new("b", 1);
        for name in config::BACKEND_OPTIONS {
            let body = format!("{{\"{name}\": {}}}", sample(name));
            let options = BackendOptions::from_body(body.as_bytes(), true)
                .unwrap_or_else(|e| panic!("{name}: {}", e.message));
            options.apply(&mut spec);
        }
        let line: BackendSpec = spec.to_string().parse().expect("the line reads back");
        assert_eq!(line, spec);
        assert!(spec.backup && spec.weight == 2 && spec.admin == AdminState::Disabled);
        let unknown = BackendOptions::from_body(b"{\"colour\": 1}", true)
            .err()
            .expect("an unknown option");
        let expected = format!(
            "unknown field \"colour\"; expected {}, deadline or close",
            config::BACKEND_OPTIONS.join(", ")
        );
        assert_eq!(unknown.message, expected);
    }
}
