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
//! The gateway client itself ([`client`]) is shared with the configuration kept in etcd.
//!
//! The first fetch lists the prefix and remembers the store revision. Each later fetch
//! opens a watch from the revision after it and returns, with a fresh listing, as soon as
//! a key under the prefix changes, or after `wait` without change; the listing, not the
//! events, is the answer, so nothing can be missed or applied twice. A watch whose
//! revision was compacted away lists again at once.

pub mod client;

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::json_backend::JsonFields;
use super::list::distinct;
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::JsonPath;
use client::{Client, KeyRange};

pub use crate::config::registries::{
    EtcdEndpoint, EtcdParams, ETCD_DEFAULT_PORT as DEFAULT_PORT,
    ETCD_DEFAULT_TIMEOUT as DEFAULT_TIMEOUT, ETCD_DEFAULT_WAIT as DEFAULT_WAIT,
};

/// The longest `wait` used: with jitter and `timeout` on top, a fetch still ends well
/// before the runner's [`WATCH_LIMIT`](super::WATCH_LIMIT).
pub const MAX_WAIT: Duration = Duration::from_secs(super::WATCH_LIMIT.as_secs() * 3 / 4);

/// A key prefix in etcd as a discovery source.
#[derive(Debug)]
pub struct EtcdSource {
    params: EtcdParams,
    client: Client,
    /// Store revision of the last listing; `None` lists at once.
    revision: Option<i64>,
    range: KeyRange,
}

impl EtcdSource {
    /// Checks the parameters and loads the TLS files, so a mistake shows at start.
    pub fn new(mut params: EtcdParams) -> Result<Self, DiscoveryError> {
        if params.timeout.is_zero() {
            params.timeout = DEFAULT_TIMEOUT;
        }
        params.wait = params.wait.min(MAX_WAIT);
        let client = Client::new(&params)?;
        let range = KeyRange::prefix(&params.prefix);
        Ok(EtcdSource {
            params,
            client,
            revision: None,
            range,
        })
    }

    async fn fetch_now(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let result = self.wait_and_list().await;
        if result.is_err() {
            // List at once next time: the runner may have emptied the list.
            self.revision = None;
        }
        result
    }

    async fn wait_and_list(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        if let Some(revision) = self.revision.filter(|_| self.watches()) {
            let over = Instant::now() + self.params.wait;
            let woken = self.client.watch(&self.range, revision, over).await?;
            tracing::debug!(prefix = %self.params.prefix, ?woken, "etcd watch ended");
        }
        self.list().await
    }

    async fn list(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let listing = self.client.range(&self.range).await?;
        let mut specs = Vec::new();
        for entry in &listing.entries {
            match backend(&entry.value, self.params.dsn_json_path.as_ref()) {
                Ok(Some(spec)) => specs.push(spec),
                Ok(None) => {}
                Err(why) => tracing::warn!(key = %entry.key, "etcd key left out: {why}"),
            }
        }
        self.revision = Some(listing.revision);
        Ok(distinct(specs))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AdminState;

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
            format!("{:?}", source.client.endpoint()),
            "http://127.0.0.1:2379"
        );
        let source =
            EtcdSource::new(EtcdParams::new(endpoint("etcd.internal"), "/x/")).expect("ok");
        assert_eq!(
            format!("{:?}", source.client.endpoint()),
            "http://etcd.internal:2379"
        );
        assert!(EtcdEndpoint::parse("unix:///x").is_err());
        let mut params = EtcdParams::new(endpoint("h"), "/x/");
        params.endpoints.clear();
        assert!(EtcdSource::new(params).is_err());
    }
}
