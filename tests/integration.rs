//! Integration tests: real sockets on loopback, Sluice in-process or as a process.

mod support;

mod acme;
mod addresses;
mod api;
mod backends_fail;
mod backends_tls;
mod balance;
mod bgp;
mod client_limits;
mod config_store;
mod dashboard;
mod discovery;
mod discovery_sources;
mod failover;
mod fleet;
mod formats_yaml;
mod haproxy;
mod hardening;
mod health;
mod health_servers;
mod lifecycle;
mod limits;
mod metrics;
mod origins;
mod process;
mod proxy;
mod proxy_protocol;
mod sni;
mod tls;
mod transparent;
mod udp;
mod upgrade;
