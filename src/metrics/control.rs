//! The control side's families: certificates obtained over ACME, and BGP (which servers
//! are announced, each neighbour's session). Read from snapshots taken as the scrape
//! began.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::family::{family, Meta, Value};
use crate::acme::CertificateStatus;
use crate::bgp::NeighborStatus;

/// `sluice_server_announced`: each server with `announce` prefixes, and whether they
/// are announced now.
pub(super) fn announced(e: &mut DescriptorEncoder, servers: Vec<(&str, bool)>) -> fmt::Result {
    if servers.is_empty() {
        return Ok(());
    }
    let meta = Meta::gauge(
        "sluice_server_announced",
        "1 while the server's announce prefixes are announced by BGP (it has \
         announce_min_healthy live backends), else 0.",
    );
    let samples = servers
        .into_iter()
        .map(|(name, up)| ([("server", name)], Value::Gauge(u64::from(up))));
    family(e, meta, samples)
}

/// Each BGP session: established or not, sessions established, prefixes announced.
pub(super) fn bgp(e: &mut DescriptorEncoder, neighbors: &[NeighborStatus]) -> fmt::Result {
    if neighbors.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = neighbors.iter().map(|n| n.neighbor.to_string()).collect();
    let established = Meta::gauge(
        "sluice_bgp_session_established",
        "1 while the BGP session with the neighbour is established, else 0.",
    );
    let samples = neighbors.iter().zip(&names).map(|(n, name)| {
        let up = u64::from(n.state == "established");
        ([("neighbor", name.as_str())], Value::Gauge(up))
    });
    family(e, established, samples)?;
    let sessions = Meta::counter(
        "sluice_bgp_sessions_established",
        "BGP sessions established with the neighbour since start.",
    );
    let samples = neighbors
        .iter()
        .zip(&names)
        .map(|(n, name)| ([("neighbor", name.as_str())], Value::Counter(n.established)));
    family(e, sessions, samples)?;
    let announced = Meta::gauge(
        "sluice_bgp_announced_prefixes",
        "Prefixes announced to the neighbour now.",
    );
    let samples = neighbors.iter().zip(&names).map(|(n, name)| {
        let count = u64::try_from(n.announced.len()).unwrap_or(u64::MAX);
        ([("neighbor", name.as_str())], Value::Gauge(count))
    });
    family(e, announced, samples)
}

/// The ACME certificates' families, labelled by server and name.
pub(super) fn certificates(
    e: &mut DescriptorEncoder,
    certificates: &[CertificateStatus],
) -> fmt::Result {
    if certificates.is_empty() {
        return Ok(());
    }
    let expiry = Meta::gauge(
        "sluice_tls_certificate_expiry",
        "Seconds left before the certificate obtained for the name expires (0: expired).",
    )
    .unit(Unit::Seconds);
    let samples = certificates.iter().filter_map(|c| {
        let left = u64::try_from(c.expires_in_seconds?).unwrap_or(0);
        let labels = [("server", c.server.as_str()), ("name", c.name.as_str())];
        Some((labels, Value::Gauge(left)))
    });
    family(e, expiry, samples)?;
    let events = Meta::counter(
        "sluice_acme_events",
        "What happened to the certificate of each name: issued, renewed, failed (an \
         order), cached (taken from the cache at start).",
    );
    let samples = certificates.iter().flat_map(|c| {
        c.events.iter().map(move |(event, count)| {
            let labels = [
                ("server", c.server.as_str()),
                ("name", c.name.as_str()),
                ("event", *event),
            ];
            (labels, Value::Counter(*count))
        })
    });
    family(e, events, samples)
}
