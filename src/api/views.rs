//! The JSON the API answers with: GoBetween's shapes where it has one, Sluice's own for
//! backends as resources.

use std::sync::atomic::Ordering;

use serde_json::{json, Map, Value};

use crate::backend::{clock_ms, AdminState, Backend};
use crate::config::{Protocol, ServerConfig};
use crate::proxy::state::clients::{ClientView, Limit};
use crate::proxy::state::ServerShared;
use crate::proxy::udp::{UdpDrop, UdpStats};

/// A backend as a resource: its spec, state, health (and ejection, warm-up) and
/// counters.
pub fn backend(server: &ServerShared, backend: &Backend) -> Value {
    let settings = server.settings.load();
    let now = clock_ms();
    let spec = &backend.spec;
    let stats = &backend.state.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "key": backend.key(),
        "host": spec.host,
        "port": spec.port,
        "weight": spec.weight,
        "priority": spec.priority,
        "backup": spec.backup,
        "max_connections": spec.max_connections,
        "sni": spec.sni,
        "alpn": spec.alpn,
        "source": spec.source,
        "state": state_name(spec.admin),
        "health": if backend.is_healthy() { "up" } else { "down" },
        "ejected": ejected_for(backend, now),
        "warming": warming(&settings, backend, now),
        "stats": {
            "active_connections": load(&stats.active),
            "total_connections": load(&stats.total),
            "bytes_to_backend": load(&stats.bytes_to_backend),
            "bytes_from_backend": load(&stats.bytes_from_backend),
            "bandwidth": backend.state.bandwidth(),
            "connect_failures": load(&stats.connect_failures),
            "checks_passed": load(&stats.checks_passed),
            "checks_failed": load(&stats.checks_failed),
            "ejections": load(&stats.ejections),
            "ejection_returns": load(&stats.ejection_returns),
        },
        "health_history": backend.state.health_history().iter().map(|event| json!({
            "time_ms": event.at_unix_ms,
            "up": event.up,
        })).collect::<Vec<_>>(),
    })
}

/// `null`, or the milliseconds left of the backend's ejection.
fn ejected_for(backend: &Backend, now: u64) -> Value {
    let state = &backend.state;
    if state.is_ejected() {
        json!(state.ejected_until().saturating_sub(now))
    } else {
        Value::Null
    }
}

/// `null`, or the per cent of its weight a backend warming up (`slow_start`) takes now.
fn warming(settings: &ServerConfig, backend: &Backend, now: u64) -> Value {
    let ramp = settings
        .failover
        .slow_start
        .and_then(|period| backend.state.ramp(now, period));
    match ramp {
        Some(share) if backend.is_up() => json!((share * 100.0).floor() as u64),
        _ => Value::Null,
    }
}

/// The state word of the API and dashboard (`drain` is the verb, `draining` the state).
pub fn state_name(admin: AdminState) -> &'static str {
    match admin {
        AdminState::Enabled => "enabled",
        AdminState::Disabled => "disabled",
        AdminState::Draining => "draining",
    }
}

/// `GET /servers/NAME/stats`, in GoBetween's shape: `rx` is bytes received from
/// backends, `tx` bytes sent to them; `*_second` are rates over the last second. A UDP
/// server adds `udp`, its datagram counters (connections there are sessions).
pub fn server_stats(server: &ServerShared) -> Value {
    let pool = server.pool.load();
    let settings = server.settings.load();
    let now = clock_ms();
    let mut rx_total = 0u64;
    let mut tx_total = 0u64;
    let mut rx_second = 0u64;
    let mut tx_second = 0u64;
    let backends: Vec<Value> = pool
        .backends()
        .iter()
        .map(|b| {
            let s = &b.state.stats;
            let rx = s.bytes_from_backend.load(Ordering::Relaxed);
            let tx = s.bytes_to_backend.load(Ordering::Relaxed);
            let (rx_rate, tx_rate) = b.state.rates();
            rx_total += rx;
            tx_total += tx;
            rx_second += rx_rate;
            tx_second += tx_rate;
            json!({
                "host": b.spec.host,
                "port": b.spec.port.to_string(),
                "priority": b.spec.priority,
                "weight": b.spec.weight,
                "sni": b.spec.sni.clone().unwrap_or_default(),
                "ejected": ejected_for(b, now),
                "warming": warming(&settings, b, now),
                "stats": {
                    "live": b.is_up(),
                    "total_connections": s.total.load(Ordering::Relaxed),
                    "active_connections": s.active.load(Ordering::Relaxed),
                    "rx": rx,
                    "tx": tx,
                    "rx_second": rx_rate,
                    "tx_second": tx_rate,
                },
            })
        })
        .collect();
    let failover = &server.failover;
    let counted = &failover.stats;
    let mut stats = json!({
        "active_connections": server.stats.active.load(Ordering::Relaxed),
        "failover": {
            "all_down": failover.all_down(),
            "all_down_policy": settings.failover.all_down.name(),
            "all_down_transitions": counted.all_down.load(Ordering::Relaxed),
            "panicking_tiers": failover.panicking_tiers(),
            "tier_panics": counted.panics.load(Ordering::Relaxed),
            "ejections_refused": counted.ejections_refused.load(Ordering::Relaxed),
            "closed_on_down": counted.closed_on_down.load(Ordering::Relaxed),
        },
        "rx_total": rx_total,
        "tx_total": tx_total,
        "rx_second": rx_second,
        "tx_second": tx_second,
        "backends": backends,
    });
    if settings.protocol == Protocol::Udp {
        stats["udp"] = udp_stats(&server.stats.udp);
    }
    if !settings.announce.prefixes.is_empty() {
        let prefixes: Vec<String> = settings
            .announce
            .prefixes
            .iter()
            .map(ToString::to_string)
            .collect();
        stats["announce"] = json!({
            "prefixes": prefixes,
            "min_healthy": settings.announce.min_healthy,
            "announced": server.announced.load(Ordering::Relaxed),
        });
    }
    stats
}

fn udp_stats(udp: &UdpStats) -> Value {
    let dropped: Map<String, Value> = UdpDrop::ALL
        .into_iter()
        .map(|reason| (reason.as_str().to_owned(), udp.dropped(reason).into()))
        .collect();
    json!({
        "datagrams_from_clients": udp.from_clients.load(Ordering::Relaxed),
        "datagrams_to_clients": udp.to_clients.load(Ordering::Relaxed),
        "dropped": dropped,
        "sessions_evicted": {
            "no_descriptor": udp.sessions_evicted.load(Ordering::Relaxed),
        },
    })
}

/// A tracked client: its address (or network), connections open now, recent rate of new
/// connections per second, the limit holding it, if any, and how long it is still
/// blocked for flooding.
pub fn client(client: &ClientView) -> Value {
    json!({
        "client": client.client.to_string(),
        "open": client.open,
        "rate": (client.rate * 100.0).round() / 100.0,
        "limited": client.limited.map(Limit::key),
        "blocked_seconds": client.blocked_for.map(|left| (left.as_secs_f64() * 10.0).ceil() / 10.0),
    })
}
