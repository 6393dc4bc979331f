//! Host names in backend lists: resolved when a pool is built, then refreshed when their
//! DNS TTL runs out — never on each dial.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backend::Backend;
use crate::pool::Pool;
use crate::tasks::Tasks;

/// Longest a lookup may take before the previous addresses are kept.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on the refresh interval, whatever the TTL says.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// Refresh interval when the TTL is unknown (system resolver) or a lookup failed.
const FALLBACK_REFRESH: Duration = Duration::from_secs(30);

fn resolver() -> Option<&'static TokioResolver> {
    static RESOLVER: OnceLock<Option<TokioResolver>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| match TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(e) => {
                warn!(error = %e, "no DNS configuration; using the system resolver");
                None
            }
        })
        .as_ref()
}

/// Resolves `host`, returning its addresses and how long they may be cached. Falls back
/// to the system resolver (which also reads /etc/hosts and nsswitch) when DNS fails.
pub async fn lookup(host: &str, port: u16) -> Option<(Vec<SocketAddr>, Duration)> {
    if let Some(resolver) = resolver() {
        if let Ok(Ok(found)) = timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host)).await {
            let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            if !addrs.is_empty() {
                let ttl = found
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                return Some((addrs, ttl.clamp(MIN_REFRESH, MAX_REFRESH)));
            }
        }
    }
    match timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(found)) => {
            let addrs: Vec<SocketAddr> = found.collect();
            (!addrs.is_empty()).then_some((addrs, FALLBACK_REFRESH))
        }
        _ => None,
    }
}

/// Whether its host is a name (not an IP literal), to be resolved and kept fresh.
pub fn needs_resolving(backend: &Backend) -> bool {
    backend.spec.host.parse::<IpAddr>().is_err()
}

/// Resolves every not-yet-resolved host name of `pool` before it takes traffic.
pub async fn resolve_now(pool: &Pool) {
    let mut lookups = JoinSet::new();
    for backend in pool.backends() {
        if needs_resolving(backend) && backend.addrs().is_empty() {
            let backend = Arc::clone(backend);
            lookups.spawn(async move {
                match lookup(&backend.spec.host, backend.spec.port).await {
                    Some((addrs, _)) => backend.set_addrs(&addrs),
                    None => warn!(backend = backend.key(), "host name did not resolve"),
                }
            });
        }
    }
    while lookups.join_next().await.is_some() {}
}

/// Keeps the host name of `backend` fresh, on `tasks`, until `stop` is cancelled (see
/// [`needs_resolving`]: an IP literal needs no task).
pub fn spawn_refresh(
    server: &str,
    backend: &Arc<Backend>,
    tasks: &Tasks,
    stop: &CancellationToken,
) {
    let backend = Arc::clone(backend);
    let server = server.to_owned();
    tasks.spawn(stop, async move {
        let mut next = Instant::now() + FALLBACK_REFRESH;
        loop {
            tokio::time::sleep_until(next).await;
            match lookup(&backend.spec.host, backend.spec.port).await {
                Some((addrs, ttl)) => {
                    if backend.addrs()[..] != addrs[..] {
                        debug!(server, backend = backend.key(), ?addrs, "addresses changed");
                        backend.set_addrs(&addrs);
                    }
                    next = Instant::now() + ttl;
                }
                None => {
                    warn!(
                        server,
                        backend = backend.key(),
                        "re-resolving failed; keeping the last addresses"
                    );
                    next = Instant::now() + FALLBACK_REFRESH;
                }
            }
        }
    });
}
