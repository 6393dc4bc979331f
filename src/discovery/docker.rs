//! Backends from the Docker Engine API: the running containers (optionally those with a
//! label) that publish a given private port, as GoBetween finds them.
//!
//! `GET /containers/json?filters={"label":["LABEL"]}` lists the containers; each port
//! entry whose `PrivatePort` is the configured one and that is published (`PublicPort`)
//! over TCP becomes the backend `HOST:PublicPort`, where HOST is, in order:
//! 1. the value of the container's environment variable `container_host_env_var`, if
//!    set and non-empty (read with `GET /containers/ID/json`);
//! 2. the port's `IP`, unless it is an all-interfaces address (`0.0.0.0`, `::`);
//! 3. the endpoint's host for a `tcp://` endpoint, or `127.0.0.1` for a unix socket
//!    (the daemon, hence the published port, is on this machine).
//!
//! A container label `sni` gives the backend's SNI name, as in GoBetween. A port
//! published on both IPv4 and IPv6 is one backend. Docker is polled: `watches()` is
//! false.

use serde::Deserialize;
use tokio::time::Instant;

use super::http_client::{self, Endpoint, HttpClient, Request};
use super::list::distinct;
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::registries::DockerEndpoint;
use crate::tls::client_config;

pub use crate::config::registries::{
    DockerParams, DockerUrl, DOCKER_DEFAULT_ENDPOINT as DEFAULT_ENDPOINT,
    DOCKER_DEFAULT_TIMEOUT as DEFAULT_TIMEOUT,
};

/// A Docker daemon as a discovery source.
#[derive(Debug)]
pub struct DockerSource {
    params: DockerParams,
    client: HttpClient,
    /// Host for ports published on all interfaces (rule 3 above).
    fallback_host: String,
}

impl DockerSource {
    /// Checks the parameters and loads the TLS files, so a mistake shows at start.
    pub fn new(mut params: DockerParams) -> Result<Self, DiscoveryError> {
        if params.timeout.is_zero() {
            params.timeout = DEFAULT_TIMEOUT;
        }
        let invalid = |e: String| DiscoveryError::Invalid(format!("docker_endpoint: {e}"));
        if params.container_private_port == 0 {
            return Err(DiscoveryError::Invalid(
                "docker_container_private_port must be 1 to 65535".into(),
            ));
        }
        let endpoint = params
            .endpoint
            .endpoint(params.tls.is_some())
            .map_err(invalid)?;
        let (endpoint, fallback_host) = match endpoint {
            DockerEndpoint::Unix(path) => (Endpoint::Unix(path), "127.0.0.1".to_owned()),
            DockerEndpoint::Tcp {
                host,
                port,
                tls_wanted,
            } => {
                let files = params.tls.clone().unwrap_or_default();
                let tls = if tls_wanted {
                    Some(
                        client_config(&files)
                            .map_err(|e| DiscoveryError::Invalid(format!("docker TLS: {e}")))?,
                    )
                } else {
                    None
                };
                let endpoint = Endpoint::Tcp {
                    host: host.clone(),
                    port,
                    tls,
                };
                (endpoint, host)
            }
        };
        Ok(DockerSource {
            params,
            client: HttpClient::new(endpoint),
            fallback_host,
        })
    }

    fn list_path(&self) -> String {
        match &self.params.container_label {
            Some(label) => {
                let filters = serde_json::json!({ "label": [label] });
                format!(
                    "/containers/json?filters={}",
                    http_client::encode(&filters.to_string())
                )
            }
            None => "/containers/json".to_owned(),
        }
    }

    async fn fetch_now(&self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let deadline = Instant::now() + self.params.timeout;
        let body = self
            .client
            .send(Request::get(self.list_path()), deadline)
            .await?
            .success_body("Docker")?;
        let containers: Vec<Container> = crate::bounded_json::from_slice(&body).map_err(|e| {
            DiscoveryError::Invalid(format!("Docker's answer is not a list of containers: {e}"))
        })?;
        let mut specs = Vec::new();
        for container in &containers {
            let ports = container.ports.iter().flatten().filter(|p| {
                p.private_port == self.params.container_private_port
                    && p.kind.as_deref().unwrap_or("tcp") == "tcp"
            });
            let mut env_host: Option<Option<String>> = None;
            for port in ports {
                let Some(public) = port.public_port.filter(|&p| p > 0) else {
                    continue;
                };
                if env_host.is_none() {
                    env_host = Some(self.host_from_env(container, deadline).await);
                }
                let host = match env_host.clone().flatten() {
                    Some(host) => host,
                    None => match port.ip.as_deref() {
                        Some(ip) if !matches!(ip, "" | "0.0.0.0" | "::") => ip.to_owned(),
                        _ => self.fallback_host.clone(),
                    },
                };
                let mut spec = BackendSpec::new(host, public);
                spec.sni = container
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("sni"))
                    .filter(|s| !s.is_empty())
                    .cloned();
                specs.push(spec);
            }
        }
        Ok(distinct(specs))
    }

    /// The host named by the container's environment variable, if configured and set.
    /// An inspection that fails falls back to the port's address, as GoBetween does,
    /// with a warning.
    async fn host_from_env(&self, container: &Container, deadline: Instant) -> Option<String> {
        let var = self.params.container_host_env_var.as_deref()?;
        let path = format!("/containers/{}/json", http_client::encode(&container.id));
        let inspected = async {
            let body = self
                .client
                .send(Request::get(path), deadline)
                .await?
                .success_body("Docker")?;
            crate::bounded_json::from_slice::<Inspect>(&body)
                .map_err(|e| DiscoveryError::Invalid(format!("bad container description: {e}")))
        };
        match inspected.await {
            Ok(inspect) => inspect
                .config
                .and_then(|c| c.env)
                .into_iter()
                .flatten()
                .find_map(|entry| {
                    let (name, value) = entry.split_once('=')?;
                    (name == var && !value.is_empty()).then(|| value.to_owned())
                }),
            Err(e) => {
                tracing::warn!(container = %container.id, "cannot inspect the container: {e}");
                None
            }
        }
    }
}

impl Source for DockerSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.fetch_now())
    }
}

/// One container of `/containers/json`; only the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    #[serde(default)]
    id: String,
    #[serde(default)]
    ports: Option<Vec<Port>>,
    #[serde(default)]
    labels: Option<std::collections::HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Port {
    #[serde(default, rename = "IP")]
    ip: Option<String>,
    private_port: u16,
    #[serde(default)]
    public_port: Option<u16>,
    #[serde(default, rename = "Type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    #[serde(default)]
    config: Option<InspectConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientTlsFiles;

    #[test]
    fn endpoints() {
        let source = |endpoint: &str| {
            let mut params = DockerParams::new(80);
            params.endpoint = DockerUrl::parse(endpoint).map_err(DiscoveryError::Invalid)?;
            DockerSource::new(params)
        };
        let unix = source("unix:///run/docker.sock").expect("unix");
        assert_eq!(unix.fallback_host, "127.0.0.1");
        assert_eq!(
            format!("{:?}", unix.client.endpoint()),
            "unix:///run/docker.sock"
        );
        let tcp = source("tcp://docker.internal:2375").expect("tcp");
        assert_eq!(tcp.fallback_host, "docker.internal");
        assert_eq!(
            format!(
                "{:?}",
                source("tcp://10.0.0.9").expect("tcp").client.endpoint()
            ),
            "http://10.0.0.9:2375"
        );
        assert!(source("docker.sock").is_err());
        assert!(source("ftp://h:1").is_err());
        assert!(source("unix://").is_err());
        let mut params = DockerParams::new(80);
        params.tls = Some(ClientTlsFiles::default());
        assert!(DockerSource::new(params).is_err(), "TLS over a unix socket");
        assert!(DockerSource::new(DockerParams::new(0)).is_err());
    }

    #[test]
    fn label_filter_is_encoded() {
        let mut params = DockerParams::new(80);
        params.container_label = Some("app=web".into());
        let source = DockerSource::new(params).expect("source");
        assert_eq!(
            source.list_path(),
            "/containers/json?filters=%7B%22label%22%3A%5B%22app%3Dweb%22%5D%7D"
        );
    }
}
