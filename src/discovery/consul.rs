//! Backends from Consul's health API: the instances of one service, optionally only
//! those passing their checks, with a tag, in a datacenter.
//!
//! Blocking queries: after the first answer, each request carries the `X-Consul-Index`
//! of the previous one and `wait`, and Consul holds it until the service changes or
//! `wait` passes, so a change is seen at once without polling. Following Consul's rules
//! for clients, an index lower than the one before (a restored snapshot, a new leader)
//! starts again without blocking, an index of 0 counts as 1, and requests are spaced by
//! at least [`MIN_SPACING`] so a misbehaving server cannot make us spin.
//!
//! Each entry becomes one backend:
//! - address: `Service.Address`, or `Node.Address` when the service has none (as
//!   GoBetween does); port: `Service.Port`;
//! - weight: `Service.Weights.Passing` (Consul's default is 1);
//! - priority: service meta `priority` (a whole number; default 1);
//! - sni: service meta `sni`, or else a tag `sni=NAME` (GoBetween's convention).
//!
//! An entry that cannot be a backend (no address, port 0, a `priority` that is not a
//! number) is left out with a warning naming it, so one bad registration does not take
//! the whole service down; an answer that is not Consul's JSON is an error.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::http_client::{self, Endpoint, HttpClient, Request};
use super::list::distinct;
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::tls::client_config;

pub use crate::config::registries::{
    ConsulAgent, ConsulParams, CONSUL_DEFAULT_PORT as DEFAULT_PORT,
    CONSUL_DEFAULT_TIMEOUT as DEFAULT_TIMEOUT, CONSUL_DEFAULT_WAIT as DEFAULT_WAIT,
};

/// The longest `wait` used: with jitter and `timeout` on top, a fetch still ends well
/// before the runner's [`WATCH_LIMIT`](super::WATCH_LIMIT).
pub const MAX_WAIT: Duration = Duration::from_secs(super::WATCH_LIMIT.as_secs() * 3 / 4);

/// The least time between the starts of two requests.
pub const MIN_SPACING: Duration = Duration::from_millis(200);

/// A Consul service as a discovery source.
pub struct ConsulSource {
    params: ConsulParams,
    client: HttpClient,
    /// `X-Consul-Index` of the last answer; 0 asks without blocking.
    index: u64,
    last_start: Option<Instant>,
}

impl std::fmt::Debug for ConsulSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSource")
            .field("endpoint", self.client.endpoint())
            .field("service", &self.params.service_name)
            .field("index", &self.index)
            .finish()
    }
}

impl ConsulSource {
    /// Checks the parameters and loads the TLS files, so a mistake shows at start.
    pub fn new(mut params: ConsulParams) -> Result<Self, DiscoveryError> {
        if params.timeout.is_zero() {
            params.timeout = DEFAULT_TIMEOUT;
        }
        // Consul takes whole seconds here; the deadline must cover what it is sent.
        if !params.wait.is_zero() {
            params.wait = Duration::from_secs(params.wait.min(MAX_WAIT).as_secs().max(1));
        }
        let (host, port) = (params.host.host.clone(), params.host.port);
        if params.service_name.is_empty() {
            return Err(DiscoveryError::Invalid(
                "consul_service_name is empty".into(),
            ));
        }
        let tls = match &params.tls {
            Some(files) => Some(
                client_config(files)
                    .map_err(|e| DiscoveryError::Invalid(format!("consul TLS: {e}")))?,
            ),
            None => None,
        };
        Ok(ConsulSource {
            client: HttpClient::new(Endpoint::Tcp { host, port, tls }),
            params,
            index: 0,
            last_start: None,
        })
    }

    /// The index the next request sends (0: it does not block).
    pub fn index(&self) -> u64 {
        self.index
    }

    fn request(&self) -> Result<Request, DiscoveryError> {
        let p = &self.params;
        let mut query = Vec::new();
        if p.passing_only {
            query.push("passing=1".to_owned());
        }
        if let Some(tag) = &p.service_tag {
            query.push(format!("tag={}", http_client::encode(tag)));
        }
        if let Some(dc) = &p.datacenter {
            query.push(format!("dc={}", http_client::encode(dc)));
        }
        if self.blocking() {
            query.push(format!("index={}", self.index));
            query.push(format!("wait={}s", p.wait.as_secs()));
        }
        let mut path = format!(
            "/v1/health/service/{}",
            http_client::encode(&p.service_name)
        );
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let mut request = Request::get(path);
        if let Some(user) = &p.auth_username {
            use base64::Engine;
            let password = p.auth_password.as_deref().unwrap_or("");
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header(
                hyper::header::AUTHORIZATION,
                &format!("Basic {credentials}"),
            )?;
        }
        if let Some(token) = &p.acl_token {
            request = request.header(
                hyper::header::HeaderName::from_static("x-consul-token"),
                token,
            )?;
        }
        Ok(request)
    }

    fn blocking(&self) -> bool {
        self.index > 0 && !self.params.wait.is_zero()
    }

    async fn fetch_now(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        if let Some(last) = self.last_start {
            tokio::time::sleep_until(last + MIN_SPACING).await;
        }
        self.last_start = Some(Instant::now());
        let mut budget = self.params.timeout;
        if self.blocking() {
            budget += self.params.wait + self.params.wait / 16;
        }
        let result = self.exchange(Instant::now() + budget).await;
        if result.is_err() {
            // The next answer must come at once: after an error the runner may have
            // emptied the list (failpolicy setempty), and a blocking query would keep it
            // empty until the service next changes.
            self.index = 0;
        }
        result
    }

    async fn exchange(&mut self, deadline: Instant) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let response = self.client.send(self.request()?, deadline).await?;
        let index = response
            .header("x-consul-index")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let body = response.success_body("Consul")?;
        let entries: Vec<Entry> = crate::bounded_json::from_slice(&body).map_err(|e| {
            DiscoveryError::Invalid(format!("Consul's answer is not a list of services: {e}"))
        })?;
        self.index = next_index(self.index, index);
        Ok(distinct(
            entries
                .iter()
                .filter_map(|entry| match entry.backend() {
                    Ok(spec) => Some(spec),
                    Err(why) => {
                        tracing::warn!(
                            service = %self.params.service_name,
                            instance = %entry.service.id,
                            node = %entry.node.node,
                            "Consul instance left out: {why}"
                        );
                        None
                    }
                })
                .collect(),
        ))
    }
}

/// The index to send next, by Consul's rules for blocking clients.
fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

impl Source for ConsulSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.fetch_now())
    }

    fn watches(&self) -> bool {
        !self.params.wait.is_zero()
    }
}

/// One entry of `/v1/health/service/NAME`; only the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    node: Node,
    service: Service,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default, rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: i64,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<HashMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default)]
    passing: i64,
}

impl Entry {
    fn backend(&self) -> Result<BackendSpec, String> {
        let s = &self.service;
        let host = if s.address.is_empty() {
            &self.node.address
        } else {
            &s.address
        };
        if host.is_empty() {
            return Err("neither the service nor its node has an address".into());
        }
        let port = u16::try_from(s.port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("port {} is not 1 to 65535", s.port))?;
        let mut spec = BackendSpec::new(host.as_str(), port);
        if let Some(weights) = &s.weights {
            spec.weight = u32::try_from(weights.passing).unwrap_or(1).max(1);
        }
        let meta = s.meta.as_ref();
        if let Some(priority) = meta.and_then(|m| m.get("priority")) {
            spec.priority = priority
                .trim()
                .parse()
                .map_err(|_| format!("meta priority \"{priority}\" is not a whole number"))?;
        }
        let tag_sni = s
            .tags
            .iter()
            .flatten()
            .filter_map(|t| t.strip_prefix("sni="))
            .next_back();
        spec.sni = meta
            .and_then(|m| m.get("sni"))
            .map(String::as_str)
            .or(tag_sni)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(json: &str) -> Vec<Result<BackendSpec, String>> {
        let entries: Vec<Entry> = serde_json::from_str(json).expect("json");
        entries.iter().map(Entry::backend).collect()
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 10), 10);
        assert_eq!(next_index(10, 10), 10);
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 3), 0, "went backwards: start again");
        assert_eq!(next_index(0, 0), 1, "0 counts as 1");
    }

    #[test]
    fn maps_entries() {
        let got = entries(
            r#"[
              {"Node": {"Node": "n1", "Address": "10.0.0.1"},
               "Service": {"ID": "a", "Service": "web", "Address": "", "Port": 80,
                           "Tags": ["x", "sni=tag.example"], "Weights": {"Passing": 3, "Warning": 1}}},
              {"Node": {"Node": "n2", "Address": "10.0.0.2"},
               "Service": {"ID": "b", "Address": "10.1.0.2", "Port": 81,
                           "Meta": {"sni": "meta.example", "priority": "2"}, "Tags": ["sni=t"]}},
              {"Node": {"Node": "n3", "Address": ""},
               "Service": {"ID": "c", "Address": "", "Port": 82}},
              {"Node": {"Node": "n4", "Address": "10.0.0.4"},
               "Service": {"ID": "d", "Port": 0}},
              {"Node": {"Node": "n5", "Address": "10.0.0.5"},
               "Service": {"ID": "e", "Port": 85, "Meta": {"priority": "high"}}}
            ]"#,
        );
        let a = got[0].as_ref().expect("a");
        assert_eq!((a.host.as_str(), a.port, a.weight), ("10.0.0.1", 80, 3));
        assert_eq!(a.sni.as_deref(), Some("tag.example"));
        let b = got[1].as_ref().expect("b");
        assert_eq!((b.host.as_str(), b.priority), ("10.1.0.2", 2));
        assert_eq!(b.sni.as_deref(), Some("meta.example"));
        assert!(got[2].as_ref().unwrap_err().contains("address"));
        assert!(got[3].as_ref().unwrap_err().contains("port 0"));
        assert!(got[4].as_ref().unwrap_err().contains("priority"));
    }

    fn agent(text: &str) -> ConsulAgent {
        ConsulAgent::parse(text).expect("agent")
    }

    #[test]
    fn request_carries_the_options() {
        let mut params = ConsulParams::new(agent("127.0.0.1:8500"), "web api");
        params.service_tag = Some("v1&x".into());
        params.passing_only = true;
        params.datacenter = Some("dc2".into());
        params.wait = Duration::from_secs(30);
        let mut source = ConsulSource::new(params).expect("source");
        let first = source.request().expect("request");
        assert_eq!(
            first.path,
            "/v1/health/service/web%20api?passing=1&tag=v1%26x&dc=dc2"
        );
        source.index = 42;
        let next = source.request().expect("request");
        assert!(next.path.ends_with("&index=42&wait=30s"), "{}", next.path);
        source.params.wait = Duration::ZERO;
        assert!(!source.watches());
        let polled = source.request().expect("request");
        assert!(!polled.path.contains("index="), "{}", polled.path);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(ConsulAgent::parse("h:0").is_err());
        assert!(ConsulAgent::parse("http://h:8500").is_err());
        assert!(ConsulSource::new(ConsulParams::new(agent("h"), "")).is_err());
        let mut params = ConsulParams::new(agent("h"), "web");
        assert_eq!(
            (params.host.host.as_str(), params.host.port),
            ("h", DEFAULT_PORT)
        );
        params.acl_token = Some("bad\ntoken".into());
        let source = ConsulSource::new(params).expect("source");
        assert!(source.request().is_err());
    }
}
