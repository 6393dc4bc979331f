//! Backends from etcd v3: every key under a prefix is one backend, read through etcd's
//! JSON gateway (`/v3/kv/range`, `/v3/watch`), so no gRPC stack is needed.
//!
//! A value is either a backend line of the `static_list` grammar
//! (`10.0.0.5:8080 weight=2`) or a JSON object:
//! `{"host": "10.0.0.5", "port": 8080, "weight": 2, "priority": 1, "max_connections": 0,
//! "sni": "a.example", "backup": false, "state": "enabled"}` (only `host` and `port`
//! required). With `dsn_json_path` (GoBetween's `etcd_dsn_json_path`), a JSON value is
//! instead searched at that dotted path (`db.dsn`; a number indexes an array) for a URL
//! such as `postgres://user@10.0.0.5:5432/db`, whose host and port make the backend. An
//! empty value is skipped; a value that is none of these is skipped with a warning
//! naming its key, so one bad key does not take the others down.
//!
//! The first fetch lists the prefix and remembers the store revision. Each later fetch
//! opens a watch from the revision after it and returns, with a fresh listing, as soon as
//! a key under the prefix changes, or after `wait` without change; the listing, not the
//! events, is the answer, so nothing can be missed or applied twice. A watch whose
//! revision was compacted away lists again at once.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::http_client::{Endpoint, HttpClient, Request};
use super::json_backend::JsonFields;
use super::list::distinct;
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::JsonPath;
use crate::tls::{client_config, ClientTlsFiles};

pub use crate::config::registries::{
    EtcdEndpoint, EtcdParams, ETCD_DEFAULT_PORT as DEFAULT_PORT,
    ETCD_DEFAULT_TIMEOUT as DEFAULT_TIMEOUT, ETCD_DEFAULT_WAIT as DEFAULT_WAIT,
};

/// The longest `wait` used: with jitter and `timeout` on top, a fetch still ends well
/// before the runner's [`WATCH_LIMIT`](super::WATCH_LIMIT).
pub const MAX_WAIT: Duration = Duration::from_secs(super::WATCH_LIMIT.as_secs() * 3 / 4);

/// Largest message of a watch stream (its events carry the changed values).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// A key prefix in etcd as a discovery source.
#[derive(Debug)]
pub struct EtcdSource {
    params: EtcdParams,
    clients: Vec<HttpClient>,
    current: usize,
    /// Store revision of the last listing; `None` lists at once.
    revision: Option<i64>,
    /// Authentication token, when a username is configured.
    token: Option<String>,
    key: String,
    range_end: String,
}

/// Why a watch ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    Changed,
    WaitOver,
    Compacted,
}

impl EtcdSource {
    /// Checks the parameters and loads the TLS files, so a mistake shows at start.
    pub fn new(mut params: EtcdParams) -> Result<Self, DiscoveryError> {
        if params.timeout.is_zero() {
            params.timeout = DEFAULT_TIMEOUT;
        }
        params.wait = params.wait.min(MAX_WAIT);
        if params.endpoints.is_empty() {
            return Err(DiscoveryError::Invalid("etcd_endpoints is empty".into()));
        }
        let tls = match &params.tls {
            Some(files) => Some(
                client_config(files)
                    .map_err(|e| DiscoveryError::Invalid(format!("etcd TLS: {e}")))?,
            ),
            None => None,
        };
        let mut clients = Vec::with_capacity(params.endpoints.len());
        for endpoint in &params.endpoints {
            let (host, port) = (endpoint.host.clone(), endpoint.port);
            let tls = match (&tls, endpoint.https) {
                (Some(config), _) => Some(config.clone()),
                (None, true) => Some(
                    client_config(&ClientTlsFiles::default())
                        .map_err(|e| DiscoveryError::Invalid(format!("etcd TLS: {e}")))?,
                ),
                (None, false) => None,
            };
            clients.push(HttpClient::new(Endpoint::Tcp { host, port, tls }));
        }
        let (key, range_end) = prefix_range(params.prefix.as_bytes());
        Ok(EtcdSource {
            params,
            clients,
            current: 0,
            revision: None,
            token: None,
            key: BASE64.encode(key),
            range_end: BASE64.encode(range_end),
        })
    }

    fn client(&self) -> &HttpClient {
        &self.clients[self.current % self.clients.len()]
    }

    async fn fetch_now(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let result = self.wait_and_list().await;
        if result.is_err() {
            // Start afresh on the next endpoint: list at once (the runner may have
            // emptied the list) and authenticate again (the token may have expired).
            self.revision = None;
            self.token = None;
            self.current = (self.current + 1) % self.clients.len();
        }
        result
    }

    async fn wait_and_list(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        if let Some(revision) = self.revision.filter(|_| self.watches()) {
            let woken = self.watch(revision).await?;
            tracing::debug!(prefix = %self.params.prefix, ?woken, "etcd watch ended");
        }
        self.list().await
    }

    /// A request with the authentication token, getting one first if needed.
    async fn request(&mut self, path: &str, body: &Value) -> Result<Request, DiscoveryError> {
        let request = Request::post_json(path, body);
        let Some(name) = self.params.username.clone() else {
            return Ok(request);
        };
        if self.token.is_none() {
            let password = self.params.password.clone().unwrap_or_default();
            let deadline = Instant::now() + self.params.timeout;
            let auth = Request::post_json(
                "/v3/auth/authenticate",
                &json!({ "name": name, "password": password }),
            );
            let body = self
                .client()
                .send(auth, deadline)
                .await?
                .success_body("etcd authentication")?;
            let answer: AuthAnswer = parse(&body, "authentication answer")?;
            self.token = Some(answer.token);
        }
        match &self.token {
            Some(token) => request.header(hyper::header::AUTHORIZATION, token),
            None => Ok(request),
        }
    }

    async fn list(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let body = json!({ "key": self.key, "range_end": self.range_end });
        let request = self.request("/v3/kv/range", &body).await?;
        let deadline = Instant::now() + self.params.timeout;
        let body = self
            .client()
            .send(request, deadline)
            .await?
            .success_body("etcd")?;
        let answer: RangeAnswer = parse(&body, "range answer")?;
        let mut specs = Vec::new();
        for kv in answer.kvs.iter().flatten() {
            let key = decode(&kv.key);
            match backend(&decode(&kv.value), self.params.dsn_json_path.as_ref()) {
                Ok(Some(spec)) => specs.push(spec),
                Ok(None) => {}
                Err(why) => tracing::warn!(key = %key, "etcd key left out: {why}"),
            }
        }
        self.revision = Some(answer.header.revision.0);
        Ok(distinct(specs))
    }

    /// Waits until a key under the prefix changes after `revision`, or `wait` passes.
    async fn watch(&mut self, revision: i64) -> Result<Woken, DiscoveryError> {
        let over = Instant::now() + self.params.wait;
        let body = json!({ "create_request": {
            "key": self.key,
            "range_end": self.range_end,
            "start_revision": revision.saturating_add(1),
        }});
        let request = self.request("/v3/watch", &body).await?;
        let head_deadline = over.min(Instant::now() + self.params.timeout);
        let mut stream = self.client().open(request, head_deadline).await?;
        if !(200..300).contains(&stream.status) {
            return Err(DiscoveryError::Invalid(format!(
                "etcd answered the watch with HTTP {}",
                stream.status
            )));
        }
        loop {
            let line = match stream.next_line(MAX_MESSAGE, over).await {
                Err(DiscoveryError::Timeout) => return Ok(Woken::WaitOver),
                Err(e) => return Err(e),
                Ok(None) => {
                    return Err(DiscoveryError::Invalid(
                        "etcd closed the watch stream".into(),
                    ))
                }
                Ok(Some(line)) => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: WatchMessage = parse(&line, "watch message")?;
            if let Some(error) = message.error {
                return Err(DiscoveryError::Invalid(format!(
                    "etcd watch error: {}",
                    error.message
                )));
            }
            let Some(result) = message.result else {
                continue;
            };
            if result.compact_revision.0 > 0 {
                return Ok(Woken::Compacted);
            }
            if result.canceled {
                return Err(DiscoveryError::Invalid(format!(
                    "etcd cancelled the watch: {}",
                    result.cancel_reason
                )));
            }
            if !result.events.unwrap_or_default().is_empty() {
                return Ok(Woken::Changed);
            }
        }
    }
}

impl Source for EtcdSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.fetch_now())
    }

    fn watches(&self) -> bool {
        !self.params.wait.is_zero()
    }
}

/// The `[key, range_end)` of every key starting with `prefix`: the prefix with its last
/// byte below 0xff incremented (etcd's own rule). An empty prefix means every key,
/// which etcd spells key = range_end = "\0".
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    (prefix.to_vec(), vec![0])
}

fn decode(b64: &str) -> String {
    match BASE64.decode(b64) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, DiscoveryError> {
    crate::bounded_json::from_slice(bytes)
        .map_err(|e| DiscoveryError::Invalid(format!("etcd sent a bad {what}: {e}")))
}

/// The backend in one value; `None` for an empty value.
fn backend(value: &str, dsn_json_path: Option<&JsonPath>) -> Result<Option<BackendSpec>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if !value.starts_with('{') {
        return value.parse().map(Some);
    }
    let json: Value =
        crate::bounded_json::from_slice(value.as_bytes()).map_err(|e| format!("bad JSON: {e}"))?;
    if let Some(path) = dsn_json_path {
        let dsn = path
            .get(&json)
            .ok_or_else(|| format!("nothing at \"{path}\""))?
            .as_str()
            .ok_or_else(|| format!("the value at \"{path}\" is not a string"))?;
        return dsn_backend(dsn).map(Some);
    }
    let mut fields = JsonFields::named();
    fields.state = Some(JsonPath::key("state"));
    fields.backend(&json).map(Some)
}

/// Host and port of a URL `scheme://[userinfo@]host:port[/…]`.
fn dsn_backend(dsn: &str) -> Result<BackendSpec, String> {
    let (_, rest) = dsn
        .split_once("://")
        .ok_or_else(|| format!("\"{dsn}\" is not a URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.parse().map_err(|e| format!("URL \"{dsn}\": {e}"))
}

/// etcd's JSON encodes 64-bit integers as strings; this takes either form.
#[derive(Debug, Default)]
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_i64()
                .map(Int)
                .ok_or_else(|| serde::de::Error::custom("not a 64-bit integer")),
            Value::String(s) => s.parse().map(Int).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom("expected an integer")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    #[serde(default)]
    revision: Int,
}

#[derive(Debug, Deserialize)]
struct RangeAnswer {
    header: Header,
    #[serde(default)]
    kvs: Option<Vec<KeyValue>>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct AuthAnswer {
    token: String,
}

#[derive(Debug, Deserialize)]
struct WatchMessage {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<GatewayError>,
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    compact_revision: Int,
    #[serde(default)]
    events: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct GatewayError {
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AdminState;

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            prefix_range(b"/svc/"),
            (b"/svc/".to_vec(), b"/svc0".to_vec())
        );
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff"), (b"\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn values() {
        let line = backend("10.0.0.1:80 weight=2 backup", None)
            .expect("line")
            .expect("some");
        assert_eq!((line.weight, line.backup), (2, true));
        let obj = backend(
            r#"{"host": "::1", "port": 81, "priority": 2, "sni": "a.example", "state": "drain", "extra": 1}"#,
            None,
        )
        .expect("json")
        .expect("some");
        assert_eq!(obj.key(), "[::1]:81");
        assert_eq!(obj.priority, 2);
        assert_eq!(obj.sni.as_deref(), Some("a.example"));
        assert_eq!(obj.admin, AdminState::Draining);
        let dsn = backend(
            r#"{"conn": {"urls": ["x", "postgres://u:p@db.internal:5432/app?x=1"]}}"#,
            Some(&JsonPath::dsn("conn.urls.1")),
        )
        .expect("dsn")
        .expect("some");
        assert_eq!(dsn.key(), "db.internal:5432");
        assert_eq!(backend("  ", None), Ok(None));
        for (bad, path) in [
            ("10.0.0.1", None),
            ("10.0.0.1:80 weight=0", None),
            (r#"{"host": "h", "port": 0}"#, None),
            (r#"{"host": "h", "port": 1, "weight": 0}"#, None),
            (r#"{"host": "bad host", "port": 1}"#, None),
            (r#"{"port": 1}"#, None),
            (r#"{"a": "b"}"#, Some("c")),
            (r#"{"a": "no url"}"#, Some("a")),
        ] {
            let path = path.map(JsonPath::dsn);
            assert!(backend(bad, path.as_ref()).is_err(), "{bad}");
        }
    }

    fn endpoint(text: &str) -> EtcdEndpoint {
        EtcdEndpoint::parse(text).expect("endpoint")
    }

    #[tokio::test]
    async fn a_revision_at_the_end_of_its_range_does_not_overflow() {
        // The revision comes from etcd's answer; nothing listens on port 1.
        let mut source =
            EtcdSource::new(EtcdParams::new(endpoint("127.0.0.1:1"), "/x/")).expect("ok");
        source.revision = Some(i64::MAX);
        assert!(source.fetch().await.is_err());
    }

    #[test]
    fn endpoints() {
        let source = EtcdSource::new(EtcdParams::new(endpoint("http://127.0.0.1:2379/"), "/x/"))
            .expect("ok");
        assert_eq!(
            format!("{:?}", source.client().endpoint()),
            "http://127.0.0.1:2379"
        );
        let source =
            EtcdSource::new(EtcdParams::new(endpoint("etcd.internal"), "/x/")).expect("ok");
        assert_eq!(
            format!("{:?}", source.client().endpoint()),
            "http://etcd.internal:2379"
        );
        assert!(EtcdEndpoint::parse("unix:///x").is_err());
        let mut params = EtcdParams::new(endpoint("h"), "/x/");
        params.endpoints.clear();
        assert!(EtcdSource::new(params).is_err());
    }
}
