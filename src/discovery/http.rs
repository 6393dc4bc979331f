//! `kind = "json"` and `kind = "plaintext"`: a backend list fetched with an HTTP GET,
//! over `http://` or `https://` (verified against `KIND_tls_cacert_path`, else the
//! system's trust store).
//!
//! - `json`: the body is a JSON array; in each element GoBetween's patterns
//!   (`json_host_pattern`, … default `host`, `port`, `weight`, `priority`) are paths
//!   such as `address.ip` or `ports.[0]`. `host` and `port` are required (the port may be
//!   a string); a missing `weight` or `priority` takes the default 1; `sni` is read only
//!   with `json_sni_pattern`. Sluice's own `json_max_connections_pattern` (default
//!   `max_connections`: a number or a string of digits) and `json_backup_pattern`
//!   (default `backup`: `true`/`false`, `1`/`0`, or those as strings) are read when an
//!   element has them; any other value there fails the fetch rather than guess.
//! - `plaintext`: one backend per line. Without `plaintext_regex_pattern` a line is in
//!   the backend line grammar; with it, the regex's named groups `host`, `port` and
//!   optional `weight`, `priority`, `sni`, `max_connections`, `backup` give the fields
//!   (a `backup` group that matches marks a backup unless it reads `false` or `0`).
//!   As in GoBetween, a line that does not match is skipped with a warning.

use std::path::PathBuf;
use std::sync::Arc;

use regex::Regex;
use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use super::http_client::{Endpoint, HttpClient, Request};
use super::list::{address, port};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::{JsonParams, PlaintextParams};
use crate::tls::{client_config, ClientTlsFiles};

/// An `http://` or `https://` URL, split as a request needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("\"{text}\" is not an http:// or https:// URL"));
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(format!("\"{text}\": user names in URLs are not supported"));
        }
        if target.contains(char::is_whitespace) {
            return Err(format!("\"{text}\": spaces must be escaped (%20)"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = super::http_client::split_host_port(authority, Some(default_port))
            .map_err(|e| format!("\"{text}\": {e}"))?;
        Ok(Url {
            https,
            host,
            port,
            target,
        })
    }
}

/// Where an endpoint's client comes from: built at the first fetch, so a missing trust
/// store is a fetch error (and `failpolicy` applies) rather than a crash.
struct Fetcher {
    url: Url,
    cacert_path: Option<PathBuf>,
    client: Option<HttpClient>,
}

impl Fetcher {
    fn new(endpoint: &str, cacert_path: Option<PathBuf>) -> Self {
        // The configuration checked the URL; an unparsable one fails every fetch.
        let url = Url::parse(endpoint).unwrap_or(Url {
            https: false,
            host: String::new(),
            port: 0,
            target: endpoint.to_owned(),
        });
        Fetcher {
            url,
            cacert_path,
            client: None,
        }
    }

    async fn get(&mut self, deadline: Instant) -> Result<String, DiscoveryError> {
        if self.url.port == 0 {
            return Err(DiscoveryError::Invalid(format!(
                "\"{}\" is not a URL",
                self.url.target
            )));
        }
        let client = match &self.client {
            Some(client) => client,
            None => {
                let tls = if self.url.https {
                    let files = ClientTlsFiles {
                        cacert_path: self.cacert_path.clone(),
                        ..ClientTlsFiles::default()
                    };
                    let config = client_config(&files)
                        .map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
                    Some(Arc::clone(&config))
                } else {
                    None
                };
                self.client.insert(HttpClient::new(Endpoint::Tcp {
                    host: self.url.host.clone(),
                    port: self.url.port,
                    tls,
                }))
            }
        };
        let request = Request::get(self.url.target.clone());
        let what = format!("{:?}", client.endpoint());
        let body = client.send(request, deadline).await?.success_body(&what)?;
        String::from_utf8(body)
            .map_err(|_| DiscoveryError::Invalid(format!("{what} sent a body that is not UTF-8")))
    }
}

/// Deadline of one request; the runner's `timeout` bounds the fetch as a whole.
fn deadline() -> Instant {
    Instant::now() + std::time::Duration::from_secs(3600)
}

/// A path into a JSON value: keys and `[N]` indexes separated by dots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        for part in text.split('.') {
            // `ports[0]` is `ports` then `[0]`.
            let (key, mut indexes) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                steps.push(Step::Key(key.to_owned()));
            }
            while !indexes.is_empty() {
                let index = indexes
                    .strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| (n, rest)));
                let Some((n, rest)) = index else {
                    return Err(format!("\"{text}\": bad index in \"{part}\""));
                };
                steps.push(Step::Index(n));
                indexes = rest;
            }
            if key.is_empty() && !part.starts_with('[') {
                return Err(format!("\"{text}\" has an empty step"));
            }
        }
        Ok(JsonPath(steps))
    }

    fn find<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for step in &self.0 {
            value = match step {
                Step::Key(key) => value.get(key)?,
                Step::Index(i) => value.get(i)?,
            };
        }
        (!value.is_null()).then_some(value)
    }
}

/// The `json` source.
pub struct JsonSource {
    fetcher: Fetcher,
    host: JsonPath,
    port: JsonPath,
    weight: JsonPath,
    priority: JsonPath,
    max_connections: JsonPath,
    backup: JsonPath,
    sni: Option<JsonPath>,
}

impl JsonSource {
    pub fn new(params: &JsonParams) -> Self {
        // The configuration checked every pattern; one that fails here matches nothing.
        let path = |p: &str| JsonPath::parse(p).unwrap_or(JsonPath(vec![Step::Key(p.into())]));
        JsonSource {
            fetcher: Fetcher::new(&params.endpoint, params.cacert_path.clone()),
            host: path(&params.host_pattern),
            port: path(&params.port_pattern),
            weight: path(&params.weight_pattern),
            priority: path(&params.priority_pattern),
            max_connections: path(&params.max_connections_pattern),
            backup: path(&params.backup_pattern),
            sni: params.sni_pattern.as_deref().map(path),
        }
    }

    /// The backends of a fetched body.
    pub fn backends(&self, body: &str) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let invalid = |e: String| DiscoveryError::Invalid(format!("JSON discovery: {e}"));
        let value: Value = super::json(body.as_bytes()).map_err(|e| invalid(format!("{e}")))?;
        let Value::Array(items) = value else {
            return Err(invalid("expected a JSON array".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.backend(item)
                    .map_err(|e| invalid(format!("element {i}: {e}")))
            })
            .collect()
    }

    fn backend(&self, item: &Value) -> Result<BackendSpec, String> {
        let host = match self.host.find(item) {
            Some(Value::String(host)) => host,
            Some(_) => return Err("the host is not a string".into()),
            None => return Err("no host".into()),
        };
        let port = port(self.port.find(item).ok_or("no port")?)?;
        let mut line = address(host, port);
        // As GoBetween: a weight or priority that is not a number is left at its default.
        if let Some(w) = self.weight.find(item).and_then(Value::as_i64) {
            line.push_str(&format!(" weight={w}"));
        }
        if let Some(p) = self.priority.find(item).and_then(Value::as_f64) {
            line.push_str(&format!(" priority={}", p as i64));
        }
        if let Some(Value::String(sni)) = self.sni.as_ref().and_then(|p| p.find(item)) {
            // A name with a space would add fields of its own to the line.
            if sni.contains(char::is_whitespace) {
                return Err(format!("sni \"{sni}\" contains a space"));
            }
            line.push_str(&format!(" sni={sni}"));
        }
        match self.max_connections.find(item) {
            None => {}
            Some(Value::Number(n)) if n.is_u64() => {
                line.push_str(&format!(" max_connections={n}"));
            }
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                line.push_str(&format!(" max_connections={s}"));
            }
            Some(other) => return Err(format!("max_connections {other} is not a number")),
        }
        if let Some(value) = self.backup.find(item) {
            if json_flag(value)
                .ok_or_else(|| format!("backup {value} is not true, false, 1 or 0"))?
            {
                line.push_str(" backup");
            }
        }
        line.parse()
    }
}

/// A JSON yes/no as registries write it: a boolean, `1`/`0`, or either as a string.
fn json_flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

impl Source for JsonSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(async move {
            let body = self.fetcher.get(deadline()).await?;
            self.backends(&body)
        })
    }
}

/// A `plaintext_regex_pattern`: a regex with at least the named groups `host` and `port`.
#[derive(Clone, Debug)]
pub struct LinePattern(Regex);

impl LinePattern {
    pub fn parse(text: &str) -> Result<LinePattern, String> {
        let regex = Regex::new(text).map_err(|e| {
            // The regex crate explains over several lines; its last one says what is wrong.
            let text = e.to_string();
            let why = text
                .lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            format!("not a valid regex: {why}")
        })?;
        for group in ["host", "port"] {
            if !regex.capture_names().flatten().any(|n| n == group) {
                return Err(format!("the regex needs a named group (?P<{group}>...)"));
            }
        }
        Ok(LinePattern(regex))
    }

    /// The backend of one line, `None` when the line does not match.
    pub fn backend(&self, line: &str) -> Option<Result<BackendSpec, String>> {
        let caps = self.0.captures(line)?;
        let group = |name: &str| {
            caps.name(name)
                .map(|m| m.as_str())
                .filter(|s| !s.is_empty())
        };
        let (Some(host), Some(port_text)) = (group("host"), group("port")) else {
            return Some(Err("no host or port".into()));
        };
        let port = match port(&Value::String(port_text.to_owned())) {
            Ok(port) => port,
            Err(e) => return Some(Err(e)),
        };
        let mut line = address(host, port);
        for key in ["weight", "priority", "max_connections", "sni"] {
            if let Some(value) = group(key) {
                // A value with a space would add fields of its own to the line.
                if value.contains(char::is_whitespace) {
                    return Some(Err(format!("{key} \"{value}\" contains a space")));
                }
                line.push_str(&format!(" {key}={value}"));
            }
        }
        // A flag group such as `(?P<backup> backup)?` means yes by matching; a group
        // catching a value lets a list say no explicitly.
        if group("backup").is_some_and(|v| !matches!(v.trim(), "false" | "0")) {
            line.push_str(" backup");
        }
        Some(line.parse())
    }
}

/// The `plaintext` source.
pub struct PlaintextSource {
    fetcher: Fetcher,
    pattern: Option<LinePattern>,
}

impl PlaintextSource {
    pub fn new(params: &PlaintextParams) -> Self {
        PlaintextSource {
            fetcher: Fetcher::new(&params.endpoint, params.cacert_path.clone()),
            pattern: params
                .pattern
                .as_deref()
                .and_then(|p| LinePattern::parse(p).ok()),
        }
    }

    /// The backends of a fetched body; lines that do not parse are skipped and logged.
    pub fn backends(&self, body: &str) -> Vec<BackendSpec> {
        let mut out = Vec::new();
        for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let parsed = match &self.pattern {
                Some(pattern) => pattern
                    .backend(line)
                    .unwrap_or_else(|| Err("does not match plaintext_regex_pattern".into())),
                None if line.starts_with('#') => continue,
                None => line.parse::<BackendSpec>(),
            };
            match parsed {
                Ok(spec) => out.push(spec),
                Err(e) => warn!(line, error = %e, "plaintext discovery: line skipped"),
            }
        }
        out
    }
}

impl Source for PlaintextSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(async move {
            let body = self.fetcher.get(deadline()).await?;
            Ok(self.backends(&body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = Url::parse("https://[::1]:8443/v1/list?x=1").expect("url");
        assert_eq!(
            (url.https, url.host.as_str(), url.port),
            (true, "::1", 8443)
        );
        assert_eq!(url.target, "/v1/list?x=1");
        let url = Url::parse("http://example.com").expect("url");
        assert_eq!((url.port, url.target.as_str()), (80, "/"));
        assert_eq!(Url::parse("http://h?q").expect("url").target, "/?q");
        for bad in [
            "ftp://h/",
            "h:80",
            "http://u@h/",
            "http://:80/",
            "http://h:x/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    fn params(patterns: [&str; 4], sni: Option<&str>) -> JsonParams {
        JsonParams {
            endpoint: "http://127.0.0.1/".into(),
            host_pattern: patterns[0].into(),
            port_pattern: patterns[1].into(),
            weight_pattern: patterns[2].into(),
            priority_pattern: patterns[3].into(),
            max_connections_pattern: "max_connections".into(),
            backup_pattern: "backup".into(),
            sni_pattern: sni.map(Into::into),
            cacert_path: None,
        }
    }

    #[test]
    fn json_max_connections_and_backup() {
        let source = JsonSource::new(&JsonParams {
            max_connections_pattern: "limits.conns".into(),
            backup_pattern: "role.[0]".into(),
            ..params(["host", "port", "weight", "priority"], None)
        });
        let specs = source
            .backends(
                r#"[{"host": "a", "port": 1, "limits": {"conns": 5}, "role": [true]},
                    {"host": "b", "port": 2, "limits": {"conns": "7"}, "role": ["1"]},
                    {"host": "c", "port": 3, "role": [0]},
                    {"host": "d", "port": 4, "role": ["false"]},
                    {"host": "e", "port": 5, "max_connections": 9, "backup": true}]"#,
            )
            .expect("valid");
        let got: Vec<(Option<u32>, bool)> = specs
            .iter()
            .map(|s| (s.max_connections, s.backup))
            .collect();
        assert_eq!(
            got,
            [
                (Some(5), true),
                (Some(7), true),
                (None, false),
                (None, false),
                (None, false)
            ]
        );
        for bad in [
            r#"[{"host": "a", "port": 1, "role": ["yes"]}]"#,
            r#"[{"host": "a", "port": 1, "role": [2]}]"#,
            r#"[{"host": "a", "port": 1, "limits": {"conns": -1}}]"#,
            r#"[{"host": "a", "port": 1, "limits": {"conns": "5 backup"}}]"#,
        ] {
            assert!(source.backends(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_patterns_as_gobetween() {
        let source = JsonSource::new(&params(["host", "port", "weight", "priority"], None));
        let specs = source
            .backends(
                r#"[{"host": "10.0.0.1", "port": "80", "weight": 3, "priority": 2.0},
                         {"host": "::1", "port": 81, "weight": "heavy", "backup": true}]"#,
            )
            .expect("valid");
        assert_eq!(specs[0].key(), "10.0.0.1:80");
        assert_eq!((specs[0].weight, specs[0].priority), (3, 2));
        assert_eq!((specs[1].weight, specs[1].priority), (1, 1));
        assert!(specs[1].backup);
        let nested = JsonSource::new(&params(
            ["addr.ip", "ports.[0]", "w", "meta.prio"],
            Some("names[1]"),
        ));
        let specs = nested
            .backends(
                r#"[{"addr": {"ip": "h"}, "ports": [90], "meta": {"prio": 4},
                           "names": ["x", "s.example"]}]"#,
            )
            .expect("valid");
        assert_eq!(specs[0].key(), "h:90");
        assert_eq!(specs[0].priority, 4);
        assert_eq!(specs[0].sni.as_deref(), Some("s.example"));
        let sni = JsonSource::new(&params(["host", "port", "weight", "priority"], Some("sni")));
        let injected = r#"[{"host": "h", "port": 1, "sni": "s.example backup weight=9"}]"#;
        assert!(sni.backends(injected).is_err(), "{injected}");
        for bad in [
            r#"{"host": "h"}"#,
            r#"[{"port": 1}]"#,
            r#"[{"host": "h"}]"#,
            "nope",
        ] {
            assert!(source.backends(bad).is_err(), "{bad}");
        }
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[x]").is_err());
    }

    #[test]
    fn plaintext_lines_and_patterns() {
        let plain = PlaintextSource::new(&PlaintextParams {
            endpoint: "http://h/".into(),
            pattern: None,
            cacert_path: None,
        });
        let specs = plain.backends("127.0.0.1:80 weight=2\n\n# c\nbad line\n[::1]:81\n");
        assert_eq!(specs.len(), 2);
        let pattern = r"^(?P<host>\S+) (?P<port>\d+)(?: w(?P<weight>\d+))?(?P<backup> b)?$";
        let source = PlaintextSource::new(&PlaintextParams {
            endpoint: "http://h/".into(),
            pattern: Some(pattern.into()),
            cacert_path: None,
        });
        let specs = source.backends("10.0.0.1 80 w5\n10.0.0.2 81 b\nno match\n");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].weight, 5);
        assert!(specs[1].backup);
        let pattern =
            r"^(?P<host>\S+):(?P<port>\d+) max=(?P<max_connections>\S+) backup=(?P<backup>\S+)$";
        let source = PlaintextSource::new(&PlaintextParams {
            endpoint: "http://h/".into(),
            pattern: Some(pattern.into()),
            cacert_path: None,
        });
        let specs = source.backends(
            "a:1 max=3 backup=true\nb:2 max=0 backup=0\nc:3 max=x backup=1\nd:4 max=4 backup=false\n",
        );
        let got: Vec<(String, Option<u32>, bool)> = specs
            .iter()
            .map(|s| (s.key().to_owned(), s.max_connections, s.backup))
            .collect();
        assert_eq!(
            got,
            [
                ("a:1".to_owned(), Some(3), true),
                ("b:2".to_owned(), None, false),
                ("d:4".to_owned(), Some(4), false)
            ]
        );
        assert!(LinePattern::parse("(?P<host>.*)").is_err());
        assert!(LinePattern::parse("(").is_err());
    }
}
