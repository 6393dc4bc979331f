//! Basic and bearer-token authentication of the API and metrics endpoints, compared in
//! constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::config::BasicAuth;

/// The credentials an endpoint accepts; none configured means every request is let in
/// (which configuration allows only on a loopback address, or with `insecure_public`).
pub struct Auth {
    basic: Option<(Vec<u8>, Vec<u8>)>,
    bearer: Option<Vec<u8>>,
}

impl Auth {
    pub fn new(basic: Option<&BasicAuth>, bearer: Option<&str>) -> Self {
        Auth {
            basic: basic.map(|b| (b.login.as_bytes().to_vec(), b.password.as_bytes().to_vec())),
            bearer: bearer.map(|t| t.as_bytes().to_vec()),
        }
    }

    fn open(&self) -> bool {
        self.basic.is_none() && self.bearer.is_none()
    }

    /// Whether an `Authorization` header value carries accepted credentials. The scheme
    /// is matched in any case, as RFC 7235 says.
    fn accepts(&self, header: &[u8]) -> bool {
        let Some(space) = header.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, given) = (&header[..space], header[space..].trim_ascii_start());
        if let (Some(token), true) = (&self.bearer, scheme.eq_ignore_ascii_case(b"bearer")) {
            return bool::from(given.ct_eq(token));
        }
        let (Some((login, password)), true) = (&self.basic, scheme.eq_ignore_ascii_case(b"basic"))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(given) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        let (given_login, given_password) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both compared, always: which half was wrong must not show in the timing.
        let login_ok = given_login.ct_eq(login);
        let password_ok = given_password.ct_eq(password);
        bool::from(login_ok & password_ok)
    }
}

/// Lets a request through only with accepted credentials; otherwise 401 with a
/// challenge naming the scheme to use.
pub async fn require(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if auth.open() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if given.is_some_and(|h| auth.accepts(h)) {
        return next.run(request).await;
    }
    let message = if given.is_some() {
        "wrong credentials"
    } else {
        "authentication required"
    };
    let body = serde_json::json!({ "error": message, "field": null });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    let challenge = if auth.basic.is_some() {
        "Basic realm=\"sluice\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"sluice\""
    };
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(basic: bool, bearer: bool) -> Auth {
        let login = BasicAuth {
            login: "admin".into(),
            password: "pa:ss".into(),
        };
        Auth::new(basic.then_some(&login), bearer.then_some("tok"))
    }

    fn basic(credentials: &str) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn basic_and_bearer_credentials() {
        let a = auth(true, true);
        assert!(a.accepts(&basic("admin:pa:ss")));
        assert!(!a.accepts(&basic("admin:pa")));
        assert!(!a.accepts(&basic("root:pa:ss")));
        assert!(!a.accepts(&basic("admin")));
        assert!(!a.accepts(b"Basic !!!"));
        assert!(a.accepts(b"Bearer tok"));
        assert!(!a.accepts(b"Bearer tok2"));
        assert!(!a.accepts(b"tok"));
        // RFC 7235: the scheme is case-insensitive.
        assert!(a.accepts(b"bearer tok"));
        assert!(a.accepts(b"BEARER tok"));
        let lower = basic("admin:pa:ss");
        assert!(a.accepts(&[b"basic".as_slice(), &lower[5..]].concat()));
        let only_basic = auth(true, false);
        assert!(!only_basic.accepts(b"Bearer tok"));
        assert!(auth(false, false).open());
    }
}
