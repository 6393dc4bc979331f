//! The metrics themselves: every family read from the servers' and backends' live
//! atomics at scrape time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::acme::CertificateStatus;
use crate::backend::{AdminState, Backend};
use crate::bgp::NeighborStatus;
use crate::config::Protocol;
use crate::pool::Pool;
use crate::proxy::state::ServerShared;
use crate::proxy::udp::UdpDrop;
use crate::proxy::CloseReason;

use super::control;
use super::family::{family, Meta, Value};
use super::scope::Scope;

/// The servers of one scrape, each with the pool and protocol it had when the scrape
/// began, so that every family lists the same backends even if a reload lands meanwhile.
pub(super) struct Scrape {
    servers: Vec<ServerView>,
    /// The certificates of `acme_hosts`, as the scrape began.
    certificates: Vec<CertificateStatus>,
    /// The BGP sessions, as the scrape began.
    neighbors: Vec<NeighborStatus>,
    scope: Scope,
}

struct ServerView {
    name: String,
    shared: Arc<ServerShared>,
    pool: Arc<Pool>,
    protocol: Protocol,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.servers.iter().map(|s| &s.name))
            .finish()
    }
}

impl Scrape {
    pub(super) fn new(servers: Vec<(String, Arc<ServerShared>)>, scope: Scope) -> Self {
        let servers = servers
            .into_iter()
            .map(|(name, shared)| ServerView {
                pool: shared.pool.load_full(),
                protocol: shared.settings.load().protocol,
                name,
                shared,
            })
            .collect();
        Scrape {
            servers,
            certificates: Vec::new(),
            neighbors: Vec::new(),
            scope,
        }
    }

    /// With the BGP sessions (families labelled by neighbour).
    pub(super) fn with_neighbors(mut self, neighbors: Vec<NeighborStatus>) -> Self {
        self.neighbors = neighbors;
        self
    }

    /// With the certificates obtained over ACME (families labelled by server and name).
    pub(super) fn with_certificates(mut self, certificates: Vec<CertificateStatus>) -> Self {
        self.certificates = certificates;
        self
    }

    /// Each server's pool as this scrape saw it, for the per-backend families
    /// (`backends.rs`).
    pub(super) fn pools(&self) -> Vec<(String, Arc<Pool>)> {
        self.servers
            .iter()
            .map(|server| (server.name.clone(), Arc::clone(&server.pool)))
            .collect()
    }

    fn udp_servers(&self) -> impl Iterator<Item = &ServerView> {
        self.servers.iter().filter(|s| s.protocol == Protocol::Udp)
    }

    /// A family labelled by `server` alone.
    fn per_server(
        &self,
        encoder: &mut DescriptorEncoder,
        meta: Meta,
        value: impl Fn(&ServerView) -> Value,
    ) -> fmt::Result {
        let samples = self
            .servers
            .iter()
            .map(|s| ([("server", s.name.as_str())], value(s)));
        family(encoder, meta, samples)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        if self.scope.servers {
            self.encode_servers(e)?;
            control::certificates(e, &self.certificates)?;
            let announcing = self.servers.iter().filter_map(|s| {
                let announces = !s.shared.settings.load().announce.prefixes.is_empty();
                announces.then(|| (s.name.as_str(), s.shared.announced.load(Ordering::Relaxed)))
            });
            control::announced(e, announcing.collect())?;
            control::bgp(e, &self.neighbors)?;
        }
        if self.scope.process {
            let mut build = e.encode_descriptor(
                "sluice_build",
                "The running version of Sluice.",
                None,
                MetricType::Info,
            )?;
            build.encode_info(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("SLUICE_COMMIT")),
                ("build_date", env!("SLUICE_BUILD_DATE")),
            ])?;
        }
        Ok(())
    }
}

impl Scrape {
    /// The families labelled by server (listeners, UDP included).
    fn encode_servers(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        self.per_server(
            e,
            Meta::counter(
                "sluice_connections_accepted",
                "Client connections accepted, including those refused right after.",
            ),
            |s| Value::Counter(read(&s.shared.stats.accepted)),
        )?;
        let refused = self.servers.iter().flat_map(|s| {
            CloseReason::ALL.iter().filter_map(|&reason| {
                let label = reason.refusal_label()?;
                Some((
                    [("server", s.name.as_str()), ("reason", label)],
                    Value::Counter(s.shared.stats.refused(reason)),
                ))
            })
        });
        family(
            e,
            Meta::counter(
                "sluice_connections_refused",
                "Client connections closed without reaching a backend, by reason.",
            ),
            refused,
        )?;
        self.per_server(
            e,
            Meta::counter(
                "sluice_connect_retries",
                "Backend dials beyond the first for one client.",
            ),
            |s| Value::Counter(read(&s.shared.stats.connect_retries)),
        )?;
        self.per_server(
            e,
            Meta::gauge(
                "sluice_server_all_down",
                "1 while no backend of the server is up (all_down says where clients go).",
            ),
            |s| Value::Gauge(u64::from(s.shared.failover.all_down())),
        )?;
        self.per_server(
            e,
            Meta::counter(
                "sluice_server_all_down_transitions",
                "Times the server found no backend up.",
            ),
            |s| Value::Counter(read(&s.shared.failover.stats.all_down)),
        )?;
        self.per_server(
            e,
            Meta::gauge(
                "sluice_server_panicking_tiers",
                "Tiers below min_healthy_percent now, whose backends all count as up.",
            ),
            |s| Value::Gauge(s.shared.failover.panicking_tiers()),
        )?;
        self.per_server(
            e,
            Meta::counter(
                "sluice_server_tier_panics",
                "Times a tier fell below min_healthy_percent.",
            ),
            |s| Value::Counter(read(&s.shared.failover.stats.panics)),
        )?;
        self.per_server(
            e,
            Meta::counter(
                "sluice_server_ejections_refused",
                "Ejections not made because max_ejection_percent of the tier was out already.",
            ),
            |s| Value::Counter(read(&s.shared.failover.stats.ejections_refused)),
        )?;
        self.per_server(
            e,
            Meta::counter(
                "sluice_server_closed_on_down",
                "Connections closed because their backend was marked down (close_on_down).",
            ),
            |s| Value::Counter(read(&s.shared.failover.stats.closed_on_down)),
        )?;
        self.per_server(
            e,
            Meta::counter(
                "sluice_source_exhausted",
                "Source addresses (source) that had no port left for a backend and were passed over.",
            ),
            |s| Value::Counter(read(&s.shared.stats.sources_exhausted)),
        )?;
        self.per_server(
            e,
            Meta::gauge(
                "sluice_connections_active",
                "Client connections open now, including those still connecting.",
            ),
            |s| Value::Gauge(read(&s.shared.stats.active)),
        )?;
        self.per_server(
            e,
            Meta::gauge("sluice_backends", "Backends configured for the server."),
            |s| Value::Gauge(s.pool.backends().len() as u64),
        )?;
        self.per_server(
            e,
            Meta::gauge(
                "sluice_clients_tracked",
                "Clients client protection tracks now (at most client_table_size).",
            ),
            |s| Value::Gauge(s.shared.clients.tracked() as u64),
        )?;
        self.per_server(
            e,
            Meta::gauge(
                "sluice_clients_blocked",
                "Clients whose new connections are dropped before accept for flooding (client_flood_block).",
            ),
            |s| {
                let now = tokio::time::Instant::now();
                Value::Gauge(s.shared.clients.blocks.count(now) as u64)
            },
        )?;
        let listeners: Vec<(&str, String, u64)> = self
            .servers
            .iter()
            .flat_map(|s| {
                s.shared.listeners.iter().map(|l| {
                    (
                        s.name.as_str(),
                        l.addr.to_string(),
                        s.shared.listener_accepted(l),
                    )
                })
            })
            .collect();
        family(
            e,
            Meta::counter(
                "sluice_listener_accepted",
                "Connections (UDP: datagrams from clients) each listening address of a server took.",
            ),
            listeners.iter().map(|(server, listener, accepted)| {
                (
                    [("server", *server), ("listener", listener.as_str())],
                    Value::Counter(*accepted),
                )
            }),
        )?;
        let datagrams = self.udp_servers().flat_map(|s| {
            let udp = &s.shared.stats.udp;
            [
                ("from_clients", &udp.from_clients),
                ("to_clients", &udp.to_clients),
            ]
            .map(|(direction, counter)| {
                (
                    [("server", s.name.as_str()), ("direction", direction)],
                    Value::Counter(read(counter)),
                )
            })
        });
        family(
            e,
            Meta::counter(
                "sluice_udp_datagrams",
                "Datagrams of a UDP server: received from clients (refused and dropped ones \
                 included), and relayed back to them.",
            ),
            datagrams,
        )?;
        let dropped = self.udp_servers().flat_map(|s| {
            UdpDrop::ALL.map(|reason| {
                (
                    [("server", s.name.as_str()), ("reason", reason.as_str())],
                    Value::Counter(s.shared.stats.udp.dropped(reason)),
                )
            })
        });
        family(
            e,
            Meta::counter(
                "sluice_udp_dropped",
                "Datagrams a UDP server dropped, either way, by reason.",
            ),
            dropped,
        )?;
        let evicted = self.udp_servers().map(|s| {
            (
                [("server", s.name.as_str()), ("reason", "no_descriptor")],
                Value::Counter(read(&s.shared.stats.udp.sessions_evicted)),
            )
        });
        family(
            e,
            Meta::counter(
                "sluice_udp_sessions_evicted",
                "UDP sessions ended early to give their descriptor to a new one, by reason \
                 (no_descriptor: the budget was used up; the oldest sessions whose backend \
                 never answered go first).",
            ),
            evicted,
        )
    }
}

/// An operator's choice wins over health: a disabled backend is "disabled" whether or
/// not it would pass its checks.
pub(super) fn state(backend: &Backend) -> &'static str {
    match backend.admin_state() {
        AdminState::Disabled => "disabled",
        AdminState::Draining => "draining",
        AdminState::Enabled if !backend.is_healthy() => "down",
        AdminState::Enabled if backend.state.is_ejected() => "ejected",
        AdminState::Enabled => "up",
    }
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole exposition of no servers for `scope`.
    fn encode(scope: Scope) -> String {
        let mut out = String::new();
        super::super::render(&mut out, Vec::new(), Vec::new(), Vec::new(), scope).expect("encode");
        out
    }

    #[test]
    fn no_servers_gives_descriptors_and_the_build_info() {
        let out = encode(Scope::ALL);
        assert!(out.contains("# TYPE sluice_connections_accepted counter\n"));
        assert!(out.contains("# TYPE sluice_backend_sent_bytes counter\n"));
        assert!(out.contains("# UNIT sluice_backend_sent_bytes bytes\n"));
        assert!(out.contains("# TYPE sluice_connection_duration_seconds histogram\n"));
        assert!(out.contains("# TYPE sluice_udp_datagrams counter\n"));
        assert!(out.contains("# TYPE sluice_udp_dropped counter\n"));
        assert!(out.contains("# TYPE sluice_udp_sessions_evicted counter\n"));
        assert!(out.contains(&format!(
            "sluice_build_info{{version=\"{}\",commit=\"{}\",build_date=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            env!("SLUICE_COMMIT"),
            env!("SLUICE_BUILD_DATE"),
        )));
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn a_scope_writes_its_families_only() {
        let only = |query| encode(Scope::from_query(query).unwrap());
        let servers = only(Some("scope=server"));
        assert!(servers.contains("# TYPE sluice_connections_accepted counter\n"));
        assert!(!servers.contains("sluice_backend_"), "{servers}");
        assert!(!servers.contains("sluice_build"));
        let two = only(Some("scope=backend&scope=process"));
        assert!(two.contains("# TYPE sluice_backend_up gauge\n"));
        assert!(two.contains("sluice_build_info"));
        assert!(!two.contains("sluice_connections_accepted"));
        assert_eq!(only(Some("scope=*")), only(None));
        assert_eq!(only(Some("scope=")), "# EOF\n");
    }
}
