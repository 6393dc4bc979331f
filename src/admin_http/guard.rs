//! What a browser could be made to send, refused before credentials are even looked at.
//!
//! A web page can make the browser send requests to a loopback API (a form or a
//! "simple" `fetch`), and a DNS name the attacker controls can be pointed at 127.0.0.1
//! so that the page and the API look like one origin (DNS rebinding). So:
//! - the `Host` a request names must be an IP address (which cannot be rebound),
//!   `localhost`, or one of `allowed_hosts`;
//! - an `Origin` other than the API's own is refused unless CORS allows it;
//! - a request that changes something carries its body as `application/json`, a type
//!   no form and no simple request can send without the browser asking first (CORS
//!   preflight), and a body-less one may carry no other type.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The names and origins one endpoint accepts.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Host names besides IP addresses and `localhost`, lower case; `"*"` allows any.
    pub allowed_hosts: Vec<String>,
    /// Other origins a browser may call from; `None` allows every origin.
    pub origins: Option<Vec<String>>,
    /// Which configuration section to name in messages (`api`, `metrics`).
    pub section: &'static str,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    Host(String),
    Origin(String),
    ContentType(String),
}

impl Guard {
    /// Checks one request's method and headers.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Rejection> {
        let host = headers
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()));
        if let Some(host) = &host {
            if !self.host_allowed(host) {
                return Err(Rejection::Host(host.to_string()));
            }
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            if !self.origin_allowed(&origin, host.as_deref()) {
                return Err(Rejection::Origin(origin.into_owned()));
            }
        }
        if changes_state(method) {
            check_content_type(headers)?;
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed == "*" || allowed == name)
    }

    /// Same origin (its host and port are the request's `Host`) or allowed by CORS.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.to_ascii_lowercase();
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = matches!((authority, host), (Some(a), Some(h)) if a == h.to_ascii_lowercase());
        same || self
            .origins
            .as_ref()
            .is_none_or(|origins| origins.contains(&origin))
    }

    fn reject(&self, rejection: Rejection) -> Response {
        let section = self.section;
        let (status, message) = match rejection {
            Rejection::Host(host) => (
                StatusCode::FORBIDDEN,
                format!(
                    "this endpoint does not answer to the host name \"{host}\" (a page \
                     could have pointed that name here); use an IP address or localhost, \
                     or add the name to [{section}] allowed_hosts"
                ),
            ),
            Rejection::Origin(origin) => (
                StatusCode::FORBIDDEN,
                format!(
                    "cross-origin request from {origin} refused; to allow it, list the \
                     origin in [{section}] cors"
                ),
            ),
            Rejection::ContentType(found) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a change must be sent as Content-Type: application/json (found \
                     {found}); with curl, add -H 'Content-Type: application/json'"
                ),
            ),
        };
        let body = json!({ "error": message, "field": null });
        (status, axum::Json(body)).into_response()
    }
}

/// The middleware: refuses what [`Guard::check`] refuses.
pub async fn require(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(rejection) => guard.reject(rejection),
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A body must be JSON; a request without one may name no other type.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let content_type = headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0");
    match content_type {
        Some(value) if is_json(value) => Ok(()),
        Some(value) => Err(Rejection::ContentType(format!(
            "\"{}\"",
            String::from_utf8_lossy(value)
        ))),
        None if has_body => Err(Rejection::ContentType("none".to_owned())),
        None => Ok(()),
    }
}

/// `application/json`, with parameters such as `; charset=utf-8`, in any case.
fn is_json(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
}

/// The host of a `Host` value: without its port, IPv6 without brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn guard() -> Guard {
        Guard {
            allowed_hosts: vec!["lb1.example.com".into()],
            origins: Some(vec!["https://admin.example.com".into()]),
            section: "api",
        }
    }

    #[test]
    fn host_names_other_than_addresses_and_listed_ones_are_refused() {
        let g = guard();
        for ok in [
            "127.0.0.1:8888",
            "[::1]:8888",
            "localhost:8888",
            "LOCALHOST",
            "localhost.",
            "lb1.example.com:8888",
            "10.0.0.1",
        ] {
            assert_eq!(
                g.check(&Method::GET, &headers(&[("host", ok)])),
                Ok(()),
                "{ok}"
            );
        }
        let bad = headers(&[("host", "rebind.evil.example:8888")]);
        assert_eq!(
            g.check(&Method::GET, &bad),
            Err(Rejection::Host("rebind.evil.example:8888".into()))
        );
        let any = Guard {
            allowed_hosts: vec!["*".into()],
            ..guard()
        };
        assert_eq!(any.check(&Method::GET, &bad), Ok(()));
    }

    #[test]
    fn foreign_origins_are_refused_unless_listed() {
        let g = guard();
        let same = headers(&[
            ("host", "127.0.0.1:8888"),
            ("origin", "http://127.0.0.1:8888"),
        ]);
        assert_eq!(g.check(&Method::GET, &same), Ok(()));
        let listed = headers(&[
            ("host", "127.0.0.1:8888"),
            ("origin", "https://admin.example.com"),
        ]);
        assert_eq!(g.check(&Method::GET, &listed), Ok(()));
        let evil = headers(&[
            ("host", "127.0.0.1:8888"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            g.check(&Method::GET, &evil),
            Err(Rejection::Origin("http://evil.example".into()))
        );
        let null = headers(&[("host", "127.0.0.1:8888"), ("origin", "null")]);
        assert!(g.check(&Method::GET, &null).is_err());
        let any = Guard {
            origins: None,
            ..guard()
        };
        assert_eq!(any.check(&Method::GET, &evil), Ok(()));
    }

    #[test]
    fn changes_need_a_json_body_or_none() {
        let g = guard();
        let json = headers(&[
            ("content-type", "Application/JSON; charset=utf-8"),
            ("content-length", "2"),
        ]);
        assert_eq!(g.check(&Method::POST, &json), Ok(()));
        let text = headers(&[("content-type", "text/plain"), ("content-length", "2")]);
        assert!(matches!(
            g.check(&Method::POST, &text),
            Err(Rejection::ContentType(_))
        ));
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        assert!(g.check(&Method::DELETE, &form).is_err());
        let untyped = headers(&[("content-length", "2")]);
        assert!(g.check(&Method::PUT, &untyped).is_err());
        assert_eq!(
            g.check(&Method::POST, &headers(&[("content-length", "0")])),
            Ok(())
        );
        assert_eq!(g.check(&Method::DELETE, &HeaderMap::new()), Ok(()));
        assert_eq!(g.check(&Method::GET, &text), Ok(()));
    }
}
