//! An etcd v3 client through etcd's JSON gateway: list a key range, watch it, and write a
//! key only if it has not changed since it was read (a transaction comparing its
//! modification revision). Endpoints are tried in turn, the next one after an error,
//! and a username gets a token that is renewed after one.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::super::http_client::{Endpoint, HttpClient, Request};
use super::super::DiscoveryError;
use crate::config::EtcdParams;
use crate::tls::{client_config, ClientTlsFiles};

/// Largest message of a watch stream (its events carry the changed values).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Keys `[key, range_end)`, base64-encoded as the gateway takes them.
#[derive(Clone, Debug)]
pub struct KeyRange {
    key: String,
    range_end: Option<String>,
}

impl KeyRange {
    /// Every key starting with `prefix`: the prefix with its last byte below 0xff
    /// incremented (etcd's own rule). An empty prefix means every key, which etcd spells
    /// key = range_end = "\0".
    pub fn prefix(prefix: &str) -> KeyRange {
        let (key, end) = prefix_range(prefix.as_bytes());
        KeyRange {
            key: BASE64.encode(key),
            range_end: Some(BASE64.encode(end)),
        }
    }

    /// The one key `key`.
    pub fn key(key: &str) -> KeyRange {
        KeyRange {
            key: BASE64.encode(key),
            range_end: None,
        }
    }

    fn json(&self) -> Value {
        match &self.range_end {
            Some(end) => json!({ "key": self.key, "range_end": end }),
            None => json!({ "key": self.key }),
        }
    }
}

/// A range as read, at one store revision.
#[derive(Debug, Default)]
pub struct Listing {
    /// The store's revision when it was read.
    pub revision: i64,
    pub entries: Vec<Entry>,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// The revision of its last change.
    pub mod_revision: i64,
}

/// Why a watch ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// A key in the range changed.
    Changed,
    /// The wait ended with no change.
    WaitOver,
    /// The revision watched from was compacted away: list again.
    Compacted,
}

/// What a conditional write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the key's new modification revision.
    At(i64),
    /// The key had changed since the revision given: nothing written.
    Changed,
}

/// A client of one etcd cluster.
#[derive(Debug)]
pub struct Client {
    clients: Vec<HttpClient>,
    current: usize,
    username: Option<String>,
    password: Option<String>,
    /// Authentication token, when a username is configured.
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client of `params`' endpoints, with its credentials, TLS files and timeout
    /// (its prefix is the caller's). TLS files are loaded now, so a mistake shows at once.
    pub fn new(params: &EtcdParams) -> Result<Client, DiscoveryError> {
        if params.endpoints.is_empty() {
            return Err(DiscoveryError::Invalid("etcd_endpoints is empty".into()));
        }
        let tls = match &params.tls {
            Some(files) => Some(tls_config(files)?),
            None => None,
        };
        let mut clients = Vec::with_capacity(params.endpoints.len());
        for endpoint in &params.endpoints {
            let (host, port) = (endpoint.host.clone(), endpoint.port);
            let tls = match (&tls, endpoint.https) {
                (Some(config), _) => Some(config.clone()),
                (None, true) => Some(tls_config(&ClientTlsFiles::default())?),
                (None, false) => None,
            };
            clients.push(HttpClient::new(Endpoint::Tcp { host, port, tls }));
        }
        Ok(Client {
            clients,
            current: 0,
            username: params.username.clone(),
            password: params.password.clone(),
            token: None,
            timeout: params.timeout,
        })
    }

    /// The endpoint the next request goes to.
    pub fn endpoint(&self) -> &Endpoint {
        self.client().endpoint()
    }

    fn client(&self) -> &HttpClient {
        &self.clients[self.current % self.clients.len()]
    }

    /// After an error: the next endpoint, and a new token (it may have expired).
    fn failed<T>(&mut self, result: Result<T, DiscoveryError>) -> Result<T, DiscoveryError> {
        if result.is_err() {
            self.token = None;
            self.current = (self.current + 1) % self.clients.len();
        }
        result
    }

    /// A request with the authentication token, getting one first if needed.
    async fn request(&mut self, path: &str, body: &Value) -> Result<Request, DiscoveryError> {
        let request = Request::post_json(path, body);
        let Some(name) = self.username.clone() else {
            return Ok(request);
        };
        if self.token.is_none() {
            let password = self.password.clone().unwrap_or_default();
            let auth = Request::post_json(
                "/v3/auth/authenticate",
                &json!({ "name": name, "password": password }),
            );
            let body = self.call(auth, "etcd authentication").await?;
            let answer: AuthAnswer = parse(&body, "authentication answer")?;
            self.token = Some(answer.token);
        }
        match &self.token {
            Some(token) => request.header(hyper::header::AUTHORIZATION, token),
            None => Ok(request),
        }
    }

    /// Sends `request` and returns the body of a 2xx answer, within the timeout.
    async fn call(&self, request: Request, what: &str) -> Result<Vec<u8>, DiscoveryError> {
        let deadline = Instant::now() + self.timeout;
        self.client()
            .send(request, deadline)
            .await?
            .success_body(what)
    }

    /// Every key in `range`, with the store's revision.
    pub async fn range(&mut self, range: &KeyRange) -> Result<Listing, DiscoveryError> {
        let result = self.range_once(range).await;
        self.failed(result)
    }

    async fn range_once(&mut self, range: &KeyRange) -> Result<Listing, DiscoveryError> {
        let request = self.request("/v3/kv/range", &range.json()).await?;
        let body = self.call(request, "etcd").await?;
        let answer: RangeAnswer = parse(&body, "range answer")?;
        let entries = answer
            .kvs
            .into_iter()
            .flatten()
            .map(|kv| Entry {
                key: decode(&kv.key),
                value: decode(&kv.value),
                mod_revision: kv.mod_revision.0,
            })
            .collect();
        Ok(Listing {
            revision: answer.header.revision.0,
            entries,
        })
    }

    /// Waits until a key in `range` changes after revision `after`, or `over` comes.
    pub async fn watch(
        &mut self,
        range: &KeyRange,
        after: i64,
        over: Instant,
    ) -> Result<Woken, DiscoveryError> {
        let result = self.watch_once(range, after, over).await;
        self.failed(result)
    }

    async fn watch_once(
        &mut self,
        range: &KeyRange,
        after: i64,
        over: Instant,
    ) -> Result<Woken, DiscoveryError> {
        let mut create = range.json();
        create["start_revision"] = json!(after.saturating_add(1));
        let body = json!({ "create_request": create });
        let request = self.request("/v3/watch", &body).await?;
        let head_deadline = over.min(Instant::now() + self.timeout);
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

    /// Writes `value` at `key` if the key's modification revision is still
    /// `mod_revision` (0: the key must not exist).
    pub async fn put_if_unchanged(
        &mut self,
        key: &str,
        value: &str,
        mod_revision: i64,
    ) -> Result<Written, DiscoveryError> {
        let result = self.put_once(key, value, mod_revision).await;
        self.failed(result)
    }

    async fn put_once(
        &mut self,
        key: &str,
        value: &str,
        mod_revision: i64,
    ) -> Result<Written, DiscoveryError> {
        let key = BASE64.encode(key);
        let body = json!({
            "compare": [{
                "key": key,
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": mod_revision.to_string(),
            }],
            "success": [{ "request_put": { "key": key, "value": BASE64.encode(value) } }],
        });
        let request = self.request("/v3/kv/txn", &body).await?;
        let body = self.call(request, "etcd").await?;
        let answer: TxnAnswer = parse(&body, "transaction answer")?;
        Ok(match answer.succeeded {
            // Nothing else is in the transaction: the key's revision is the store's.
            true => Written::At(answer.header.revision.0),
            false => Written::Changed,
        })
    }
}

fn tls_config(
    files: &ClientTlsFiles,
) -> Result<std::sync::Arc<rustls::ClientConfig>, DiscoveryError> {
    client_config(files).map_err(|e| DiscoveryError::Invalid(format!("etcd TLS: {e}")))
}

/// The `[key, range_end)` of every key starting with `prefix`.
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
    #[serde(default)]
    mod_revision: Int,
}

#[derive(Debug, Deserialize)]
struct TxnAnswer {
    header: Header,
    #[serde(default)]
    succeeded: bool,
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
}
