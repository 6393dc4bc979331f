//! Sluice: a Layer 4 (TCP/UDP) load balancer.
//!
//! Module map, in reading order; a module imports only those below it (the lifecycle
//! above the data path, the state the data path reads below it):
//! - [`cli`]: the command line (`run`, `from-file`, `from-url`, `check`, `convert`,
//!   `tcp`, `udp`, `upgrade`, `demo`); [`demo`]: the demo's backends; [`logging`]: the
//!   log subscriber; [`signals`]: SIGHUP, SIGUSR2, SIGTERM, SIGINT; [`pidfile`]: `-p FILE`;
//!   [`service`]: the service manager's notifications (systemd's `Type=notify`).
//! - [`runtime`]: every running server; the one place runtime state changes.
//! - [`upgrade`]: binary upgrade: a new process takes every listening socket and the
//!   run-time state; the control socket `sluice upgrade` talks to.
//! - [`control`]: reloads and API edits, both ending in `Runtime::apply`.
//! - [`origin`]: where the configuration is read from: a file in any format, a URL, or
//!   etcd (a fleet's configuration, followed as it changes).
//! - [`reload`]: what changes between two configurations, as a list of changes.
//! - [`api`]: the admin REST API and dashboard.
//! - [`workers`]: the data-path threads, one event loop and listener per core.
//! - [`server`]: one configured server while it runs: its listeners, pool rebuilder,
//!   health checks and discovery.
//! - [`acme`]: certificates for the `acme_hosts` of TLS servers, obtained and renewed
//!   over ACME, served from a store every TLS server reads.
//! - [`bgp`]: BGP sessions with routers, announcing service addresses.
//! - [`listener`]: binding (or taking the sockets systemd or an upgrade passed), the
//!   accept loop, and the filter that drops blocked clients' connection requests in the
//!   kernel.
//! - [`proxy`]: the life of one connection (admit → prelude → connect → relay →
//!   finish): the ACL and connection limit, TLS termination, SNI routing, the PROXY
//!   protocol, UDP sessions; and the state of a server its connections read.
//! - [`descriptors`]: the descriptor limit and the UDP sessions' share of it.
//! - [`failover`]: when backends fail: outlier ejection (passive health included), the
//!   tiers' panic threshold and all-down state, closing a down backend's connections.
//! - [`pool`]: a server's backends split into priority tiers, each with its strategy.
//! - [`balance`]: the balancing strategies.
//! - [`backend`]: one backend's spec and live state.
//! - [`histogram`]: lock-free duration histograms the data path observes into.
//! - [`resolve`]: backend host names to addresses, kept fresh.
//! - [`tasks`]: background tasks tracked so they end with the server that started them.
//! - [`health`]: active health checking.
//! - [`outbound`]: connections towards backends, and the local address they leave from.
//! - [`discovery`]: backends from DNS, files, commands, Consul, etcd, Docker.
//! - [`metrics`]: Prometheus metrics, read from the live counters at scrape time.
//! - [`admin_http`]: how the API and metrics endpoints are served and guarded: limits,
//!   timeouts, host and origin checks, credentials.
//! - [`config`]: the configuration's typed model, and a reader onto it for each format
//!   (GoBetween's TOML or JSON, Samaritan's and Mixctl's YAML, HAProxy's), every error at
//!   `FILE:LINE:COL`.
//! - [`bounded_json`]: JSON from outside checked for size and depth before parsing.
//! - [`acl`]: allow/deny rules by address.
//! - [`tls`]: certificates and keys into rustls configurations.
//! - [`process`]: outside commands, bounded in time and output, never left behind.

#![forbid(unsafe_code)]

pub mod acl;
pub mod acme;
pub mod admin_http;
pub mod api;
pub mod backend;
pub mod balance;
pub mod bgp;
pub mod bounded_json;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod descriptors;
pub mod discovery;
pub mod failover;
pub mod health;
pub mod histogram;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod outbound;
pub mod pidfile;
pub mod pool;
pub mod process;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod runtime;
pub mod server;
pub mod service;
pub mod signals;
pub mod tasks;
pub mod tls;
pub mod upgrade;
pub mod workers;
