//! The web dashboard: one static page that polls the REST API of the same origin.
//!
//! The assets are compiled into the binary so the dashboard works offline and always
//! matches the API it ships with. They hold no data, only code that asks the API, so
//! they can be served before any authentication: the page itself then asks for a token
//! when the API wants one.

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The page runs only its own script and style and talks only to its own origin, so an
/// injected script or a framing site gets nothing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`, `/ui/`, `/ui/app.js` and `/ui/style.css`; merged into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

async fn index() -> impl IntoResponse {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        )],
        asset("text/html; charset=utf-8", INDEX_HTML),
    )
}

/// `no-cache` rather than a long lifetime: after an upgrade the browser revalidates and
/// never runs an old script against a newer API.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Status line, lower-cased headers and body of one answer.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    async fn serve() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            axum::serve(listener, router::<()>())
                .await
                .expect("serve the dashboard");
        });
        addr
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut raw),
        )
        .await
        .expect("answer in time")
        .expect("read answer");
        let text = String::from_utf8(raw).expect("utf-8 answer");
        let (head, body) = text.split_once("\r\n\r\n").expect("end of head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn serves_each_asset_with_its_type_and_no_cache() {
        let addr = serve().await;
        for (path, content_type, body) in [
            ("/ui", "text/html; charset=utf-8", INDEX_HTML),
            ("/ui/", "text/html; charset=utf-8", INDEX_HTML),
            ("/ui/app.js", "text/javascript; charset=utf-8", APP_JS),
            ("/ui/style.css", "text/css; charset=utf-8", STYLE_CSS),
        ] {
            let answer = request(addr, "GET", path).await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
            assert_eq!(answer.header("cache-control"), Some("no-cache"), "{path}");
            assert_eq!(answer.body, body, "{path}");
        }
        let page = request(addr, "GET", "/ui").await;
        let csp = page
            .header("content-security-policy")
            .expect("CSP on the page");
        assert!(csp.contains("script-src 'self'"), "{csp}");

        let head = request(addr, "HEAD", "/ui/app.js").await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(request(addr, "GET", "/ui/missing.js").await.status, 404);
        assert_eq!(request(addr, "POST", "/ui").await.status, 405);
    }

    #[test]
    fn the_page_loads_only_routed_assets_and_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for outside in ["http://", "https://", "//fonts.", "@import", "url("] {
                assert!(!text.contains(outside), "{name} refers to {outside}");
            }
        }
        assert!(INDEX_HTML.contains(r#"src="/ui/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/ui/style.css""#));
        // The policy forbids inline code: every script and style must come from a file.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style="));
        let handlers = INDEX_HTML.match_indices(" on").filter(|(at, _)| {
            let rest = &INDEX_HTML[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "inline event handler in index.html");
    }

    #[test]
    fn the_assets_stay_small() {
        let total = INDEX_HTML.len() + APP_JS.len() + STYLE_CSS.len();
        assert!(total < 40 * 1024, "dashboard assets are {total} bytes");
    }
}
