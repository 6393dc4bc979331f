//! Configuration: one typed model, and a reader onto it for each file format.
//!
//! [`Config`] and the types below are the model: runtime code only ever sees them, with
//! every default filled in, every name resolved, every duration parsed. A reader turns
//! a file's text into a `Config`, reporting every problem it finds, each as
//! `FILE:LINE:COL: message`. [`load`] and [`read`] pick the reader by the file's
//! [`Format`].
//!
//! - `gobetween`: the reader of GoBetween's schema, Sluice's own, in TOML or JSON
//!   ([`load`], [`parse`], [`parse_in`]).
//! - `samaritan`, `mixctl`: the readers of Samaritan's YAML and of Mixctl's rules file;
//!   `yaml`: YAML text into a tree with positions, and the getters both read it with.
//! - `format`: which reader a file is read with ([`Format`], `--format`); `load`: reading
//!   a file (bounded, UTF-8) and handing it to its reader ([`Loaded`]).
//! - `haproxy`: the reader of HAProxy's `global`, `defaults`, `frontend`, `backend` and
//!   `listen` sections (`mode tcp`), each frontend becoming one server with its binds.
//! - `discovery`: `[discovery]`, where a server's backends come from, each kind with its
//!   own parameters; `registries`: Consul's, etcd's and Docker's, and their endpoints.
//! - `health`: `[healthcheck]`, every kind with its own settings type.
//! - `admin`: `[api]` and `[metrics]`, the control side's endpoints; `acme`: `[acme]`,
//!   where the certificates of a TLS server's `acme_hosts` come from; `bgp`: `[bgp]`, the
//!   neighbours service addresses are announced to, and each server's `announce`.
//! - TLS (`[tls]`, `[backends_tls]`, a registry's TLS files): the types are
//!   [`crate::tls`]'s settings, re-exported here; the model holds them.
//! - `failover`: what a server does when backends fail (all-down policy, slow start,
//!   outlier ejection, closing a down backend's connections).
//! - `limits`: client protection (per-client connection caps and rates, UDP datagram
//!   and byte rates, bandwidth per connection), with its rate grammars.
//! - `duration`, `static_list`, `bind`: the value grammars (`"1h30m"`, backend lines,
//!   where a server listens); `address`, `json_path`, `patterns`: the values discovery is
//!   configured with (`host:port`, URLs, JSON paths, regular expressions), parsed once
//!   and shown as written (`written`).
//! - `checks`: the rules checked on a whole typed configuration ([`validate`]), by every
//!   reader and by the API's edits.
//! - `error`: [`ConfigError`], [`ConfigErrors`], [`Warning`], and positions in a file.
//! - `dump`: a `Config` written back in GoBetween's schema (the API's `/dump`, `persist`):
//!   the types here derive `Serialize` under the file's keys; `write_as`: how typed values
//!   are written; `secrets`: what is redacted.
//!
//! The model imports no reader; this module re-exports the readers' entry points.

#[macro_use]
mod written;

mod acme;
mod address;
mod admin;
mod bgp;
mod bind;
mod checks;
mod discovery;
pub mod dump;
mod duration;
mod error;
pub mod failover;
mod format;
mod gobetween;
mod haproxy;
mod health;
mod json_path;
pub mod limits;
mod load;
pub(super) mod mixctl;
mod patterns;
pub mod registries;
mod samaritan;
mod secrets;
pub mod static_list;
pub use static_list::BACKEND_OPTIONS;
#[cfg(test)]
mod tests;
mod write_as;
mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::acl::Acl;
use crate::balance::BalanceKind;

pub use crate::tls::{
    BackendsTls, ClientAuth, ClientTlsFiles, TlsFiles, TlsTermination, TlsVersion,
};
pub use acme::{
    AcmeChallenge, AcmeConfig, DEFAULT_ACME_CACHE_DIR, DEFAULT_ACME_HTTP_BIND,
    LETS_ENCRYPT_DIRECTORY,
};
pub use address::{port_number, split_host_port, Url};
pub use admin::{
    ApiConfig, BasicAuth, Cors, MetricsConfig, DEFAULT_API_BIND, DEFAULT_API_MAX_CONNECTIONS,
    DEFAULT_METRICS_BIND,
};
pub use bgp::{Announce, BgpConfig, BgpNeighbor, BGP_PORT, DEFAULT_BGP_HOLD_TIME};
pub use bind::{resolve_names, Bind, BindRange, Binds};
pub(crate) use checks::typed as typed_checks;
pub use checks::validate;
pub use discovery::{
    BackendList, DiscoveryCommon, DiscoveryConfig, DnsParams, DnsProtocol, ExecParams, FailPolicy,
    FileParams, JsonParams, PlaintextParams, SrvParams, DEFAULT_DISCOVERY_TIMEOUT,
};
pub use duration::{parse_duration, parse_timeout};
pub use error::{ConfigError, ConfigErrors, Warning};
pub use format::{Format, Requested};
pub use gobetween::{parse, parse_in};
pub use health::{
    escape, unescape, ExecSettings, HealthConfig, HealthKind, HttpSettings, InitialStatus,
    MysqlSettings, PgsqlSettings, ProbeExpect, ProbeProtocol, ProbeScript, ProbeSettings,
    ProbeStep, RedisRole, RedisSettings, TlsSettings, UdpSettings, DEFAULT_HTTP_STATUS,
    MAX_RECV_LEN,
};
pub use json_path::JsonPath;
pub use limits::ClientLimits;
pub use load::{config_dir, load, load_as, read, read_part, Loaded};
pub use mixctl::target as parse_target;
pub use patterns::{BytesRegex, LinePattern, TextRegex};
pub use registries::{ConsulParams, DockerParams, EtcdParams};

/// A whole, validated configuration; it serializes as GoBetween's schema with every
/// default spelled out (see [`dump`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub logging: LoggingConfig,
    /// `[api]`: the REST API and dashboard; `None` when not enabled.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "dump::enabled"
    )]
    pub api: Option<ApiConfig>,
    /// `[metrics]`: the Prometheus endpoint; `None` when not enabled.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "dump::enabled"
    )]
    pub metrics: Option<MetricsConfig>,
    /// `[acme]`: certificates obtained for `acme_hosts`; `None` when not configured.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "dump::enabled"
    )]
    pub acme: Option<AcmeConfig>,
    /// `[bgp]`: the neighbours servers' `announce` prefixes go to; `None` when not
    /// configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpConfig>,
    /// How long SIGTERM waits for connections to finish before closing them.
    #[serde(serialize_with = "write_as::duration")]
    pub shutdown_timeout: Duration,
    /// Servers by name.
    #[serde(serialize_with = "dump::servers")]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// How long SIGTERM waits for connections by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Config {
    /// No servers, no API, no metrics; the default logging and shutdown timeout.
    fn default() -> Self {
        Config {
            logging: LoggingConfig::default(),
            api: None,
            metrics: None,
            acme: None,
            bgp: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            servers: BTreeMap::new(),
        }
    }
}

/// `[logging]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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

impl Serialize for LogOutput {
    /// `stdout`, `stderr` or the file's path.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LogOutput::Stdout => serializer.serialize_str("stdout"),
            LogOutput::Stderr => serializer.serialize_str("stderr"),
            LogOutput::File(path) => write_as::path(path, serializer),
        }
    }
}

/// Backends a client's connection is tried on unless `connect_attempts` says otherwise.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;

/// The protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// TCP with TLS terminated by Sluice (`[servers.NAME.tls]`).
    Tls,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Tls => "tls",
        }
    }
}

/// The PROXY protocol on one server: sent to its backends, accepted from its fronts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyProtocol {
    /// `[servers.NAME.proxy_protocol] version`: a header sent to backends first.
    #[serde(
        rename = "proxy_protocol",
        skip_serializing_if = "Option::is_none",
        serialize_with = "proxy_protocol_section"
    )]
    pub send: Option<ProxyVersion>,
    /// `[servers.NAME.accept_proxy_protocol]`: a header expected from trusted fronts.
    #[serde(
        rename = "accept_proxy_protocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub accept: Option<AcceptProxy>,
}

/// `[servers.NAME.proxy_protocol]`, whose one key is the version sent.
fn proxy_protocol_section<S: Serializer>(
    send: &Option<ProxyVersion>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Section {
        version: ProxyVersion,
    }
    send.map(|version| Section { version })
        .serialize(serializer)
}

/// A PROXY protocol version: 1 (text) or 2 (binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProxyVersion {
    #[serde(rename = "1")]
    V1,
    #[serde(rename = "2")]
    V2,
}

impl ProxyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "1",
            ProxyVersion::V2 => "2",
        }
    }
}

/// `[servers.NAME.accept_proxy_protocol]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcceptProxy {
    /// Fronts allowed to connect; they must open with a PROXY header (v1 or v2), whose
    /// client address then stands for the connection. Anyone else is refused.
    #[serde(serialize_with = "write_as::each_shown")]
    pub from: Vec<ipnet::IpNet>,
    /// How long a front has to send the whole header.
    #[serde(serialize_with = "write_as::duration")]
    pub timeout: Duration,
}

/// How long a front has to send its PROXY header by default.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to complete a TLS handshake by default.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[servers.NAME.sni]`: route TLS connections by the server name of their ClientHello,
/// without terminating them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SniConfig {
    /// How long a client has to send its whole ClientHello.
    #[serde(serialize_with = "write_as::duration")]
    pub read_timeout: Duration,
    #[serde(rename = "hostname_matching_strategy")]
    pub matching: HostnameMatching,
    #[serde(rename = "unexpected_hostname_strategy")]
    pub unexpected: UnexpectedHostname,
}

/// How a backend's `sni=` tag is compared with a client's server name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostnameMatching {
    /// The same name, case aside; `*.example.com` matches one label in front.
    Exact,
    /// The tag is a regular expression that must match the whole name.
    Regexp,
}

/// Where a client goes whose server name no backend is tagged for (or who sent none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnexpectedHostname {
    /// To the backends without an `sni=` tag.
    Default,
    /// Nowhere: the connection is closed.
    Reject,
    /// To any backend.
    Any,
}

/// How long a client has to send its ClientHello by default.
pub const DEFAULT_SNI_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// `[servers.NAME.udp]`: when a UDP session ends besides its idle timeouts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UdpConfig {
    /// End the session after this many client datagrams. `Some(1)` without
    /// `max_responses` forwards each datagram on its own and relays no reply
    /// (fire-and-forget, as for syslog).
    #[serde(serialize_with = "write_as::zero_if_none")]
    pub max_requests: Option<u32>,
    /// End the session after this many backend datagrams for each client datagram (DNS:
    /// 1): one request, one answer; a client with several requests in flight on one
    /// port gets every answer before its session ends. With `max_requests` too, the
    /// session ends once it has taken them all and each has had its answers.
    #[serde(serialize_with = "write_as::zero_if_none")]
    pub max_responses: Option<u32>,
}

impl UdpConfig {
    /// Each datagram goes out on its own and no reply is awaited.
    pub fn fire_and_forget(&self) -> bool {
        self.max_requests == Some(1) && self.max_responses.is_none()
    }
}

/// `backend_port`: which port of a backend a connection goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendPort {
    /// The backend's own (`host:port` in its line).
    #[default]
    Own,
    /// The port the client dialled (with a port range: 5000-5010 to the same ports).
    Same,
}

impl BackendPort {
    pub fn is_own(&self) -> bool {
        *self == BackendPort::Own
    }
}

/// One `[servers.NAME]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerConfig {
    /// Addresses (or host names resolved when the server starts), each with a port or a
    /// range of ports.
    pub bind: Binds,
    pub protocol: Protocol,
    #[serde(serialize_with = "write_as::shown")]
    pub balance: BalanceKind,
    /// A hash strategy keeps each backend within this many per cent of its share of
    /// the tier's mean load (HAProxy's `hash-balance-factor`); `None`: unbounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_balance_factor: Option<u32>,
    /// Concurrent client connections (UDP: sessions); `None` is unlimited.
    #[serde(serialize_with = "write_as::zero_if_none")]
    pub max_connections: Option<u32>,
    /// Close a connection idle (no byte either way) this long; `None` is never.
    #[serde(serialize_with = "write_as::timeout")]
    pub client_idle_timeout: Option<Duration>,
    /// Same, configured from the backend's side; the shorter of the two applies.
    #[serde(serialize_with = "write_as::timeout")]
    pub backend_idle_timeout: Option<Duration>,
    /// Give up connecting to a backend after this long; `None` leaves it to the OS.
    #[serde(serialize_with = "write_as::timeout")]
    pub backend_connection_timeout: Option<Duration>,
    /// Backends tried for one client before giving up (at least 1).
    pub connect_attempts: u32,
    /// Local addresses connections, UDP sessions and checks to the backends leave from,
    /// used in turn (a backend's own `source=` comes first); empty: the kernel picks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<std::net::IpAddr>,
    /// Connections and UDP sessions to the backends leave from the client's own
    /// address (`IP_TRANSPARENT`), so the backends see the real client.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transparent: bool,
    /// The listening sockets take connections (UDP: datagrams) a TPROXY rule steers to
    /// them for any destination (`IP_TRANSPARENT`); each one's original destination is
    /// its local address, logged with it and sent on in a PROXY header (UDP: replies
    /// leave from it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intercept: bool,
    /// The port connections go to on a backend: its own, or (`"same"`, for a port range)
    /// the one the client dialled.
    #[serde(skip_serializing_if = "BackendPort::is_own")]
    pub backend_port: BackendPort,
    /// Not written when empty (a server with `balance = "original_destination"`, the
    /// only kind allowed none).
    #[serde(skip_serializing_if = "DiscoveryConfig::is_empty_list")]
    pub discovery: DiscoveryConfig,
    #[serde(serialize_with = "health::section")]
    pub healthcheck: HealthConfig,
    /// `None` allows everyone.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::written_access"
    )]
    pub access: Option<Acl>,
    /// Session limits of a UDP server (all unset for TCP); `dump` writes them beside
    /// the others for UDP servers only.
    #[serde(skip)]
    pub udp: UdpConfig,
    /// The PROXY protocol towards backends and from fronts (TCP only).
    #[serde(flatten)]
    pub proxy_protocol: ProxyProtocol,
    /// Routing by TLS server name (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<SniConfig>,
    /// TLS termination (`protocol = "tls"` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsTermination>,
    /// TLS towards the backends (TCP and TLS servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends_tls: Option<BackendsTls>,
    /// Client protection: per-client and per-server limits (flat keys, all off by
    /// default).
    #[serde(flatten)]
    pub limits: ClientLimits,
    /// When backends fail: all-down policy, slow start, outlier ejection (flat keys and
    /// the `outlier` section, all off by default).
    #[serde(flatten)]
    pub failover: failover::Failover,
    /// Service addresses announced by BGP while it has enough live backends.
    #[serde(flatten)]
    pub announce: Announce,
}

impl ServerConfig {
    /// A TCP server on `bind` in front of `discovery`, everything else as a file that
    /// names only those two keys gets it: weighted balancing, no connection limit, no
    /// timeouts, 3 connect attempts, no health check, no TLS, PROXY header or access rules.
    pub fn new(bind: SocketAddr, discovery: DiscoveryConfig) -> Self {
        ServerConfig {
            bind: Binds::from(bind),
            protocol: Protocol::Tcp,
            balance: BalanceKind::Weight,
            hash_balance_factor: None,
            max_connections: None,
            client_idle_timeout: None,
            backend_idle_timeout: None,
            backend_connection_timeout: None,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
            source: Vec::new(),
            transparent: false,
            intercept: false,
            backend_port: BackendPort::Own,
            discovery,
            healthcheck: HealthConfig::default(),
            access: None,
            udp: UdpConfig::default(),
            proxy_protocol: ProxyProtocol::default(),
            sni: None,
            tls: None,
            backends_tls: None,
            limits: ClientLimits::default(),
            failover: failover::Failover::default(),
            announce: Announce::default(),
        }
    }
}
