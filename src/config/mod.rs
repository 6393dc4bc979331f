//! Configuration: GoBetween's TOML (or JSON) schema, loaded in two stages.
//!
//! The raw file is read into serde mirror types that keep positions, then checked and
//! turned into the validated types below. Runtime code only ever sees validated types:
//! every default is filled in, every name resolved, every duration parsed. Every problem
//! found is reported, each as `FILE:LINE:COL: message`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::acl::Acl;
use crate::backend::BackendSpec;
use crate::balance::BalanceKind;

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub logging: LoggingConfig,
    /// How long SIGTERM waits for connections to finish before closing them.
    pub shutdown_timeout: Duration,
    /// Servers by name.
    pub servers: BTreeMap<String, ServerConfig>,
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggingConfig {
    /// A `tracing` filter directive such as `info` or `sluice=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    pub output: LogOutput,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Text,
            output: LogOutput::Stderr,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// The protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
}

/// One `[servers.NAME]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub balance: BalanceKind,
    /// Concurrent client connections; `None` is unlimited.
    pub max_connections: Option<u32>,
    /// Close a connection idle (no byte either way) this long; `None` is never.
    pub client_idle_timeout: Option<Duration>,
    /// Same, configured from the backend's side; the shorter of the two applies.
    pub backend_idle_timeout: Option<Duration>,
    /// Give up connecting to a backend after this long; `None` leaves it to the OS.
    pub backend_connection_timeout: Option<Duration>,
    /// Backends tried for one client before giving up (at least 1).
    pub connect_attempts: u32,
    pub discovery: DiscoveryConfig,
    pub healthcheck: HealthConfig,
    /// `None` allows everyone.
    pub access: Option<Acl>,
}

/// `[servers.NAME.discovery]`.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscoveryConfig {
    /// `kind = "static"`: the `static_list`.
    Static { backends: Vec<BackendSpec> },
}

/// `[servers.NAME.healthcheck]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a healthy backend down.
    pub fails: u32,
    /// Consecutive passes that mark a down backend up.
    pub passes: u32,
    pub initial_status: InitialStatus,
    /// Consecutive connect failures on client connections that mark a backend down until
    /// the active check passes again; 0 disables passive health.
    pub passive_fails: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fails: 1,
            passes: 1,
            initial_status: InitialStatus::Healthy,
            passive_fails: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthKind {
    None,
    /// TCP connect.
    Ping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialStatus {
    Healthy,
    Unhealthy,
}
