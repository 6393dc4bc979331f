//! What a server refuses or cuts: access rules, its connection limit, idle connections
//! and backends that never answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice::acl::{Acl, Action};
use sluice::balance::BalanceKind;
use sluice::config::ServerConfig;
use sluice::proxy::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn acl(default: Action, rules: &[&str]) -> Option<Acl> {
    Some(Acl {
        default,
        rules: rules.iter().map(|r| r.parse().expect("rule")).collect(),
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Whether a client from `source` is served (gets the greeting) or closed without data.
async fn served(addr: SocketAddr, source: &str) -> bool {
    let mut s = connect_from(addr, Some(ip(source))).await;
    let mut buf = [0u8; 1];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(1)) => true,
        Ok(Ok(_)) | Ok(Err(_)) => false,
        Err(_) => panic!("{source}: neither served nor closed"),
    }
}

#[tokio::test]
async fn acl_allows_and_denies_by_address_and_cidr_first_match_wins() {
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    cfg.access = acl(
        Action::Deny,
        &[
            "allow 127.0.9.5",
            "deny 127.0.9.0/24",
            "allow 127.0.0.0/16",
            "deny 127.0.0.0/8",
        ],
    );
    let lb = Sluice::start(cfg).await;
    assert!(
        served(lb.addr, "127.0.9.5").await,
        "exact allow before the deny"
    );
    assert!(!served(lb.addr, "127.0.9.6").await, "denied by CIDR");
    assert!(served(lb.addr, "127.0.3.3").await, "allowed by the /16");
    assert!(!served(lb.addr, "127.3.0.1").await, "denied by the /8");
    let shared = lb.shared().await;
    assert_eq!(shared.stats.refused(CloseReason::AclDenied), 2);
    // The served clients hung up; their connections end a moment later. A slot held by
    // a refusal would keep the count above 0 for good.
    eventually("refusals hold no slot", || {
        let active = shared.stats.active.load(Ordering::Relaxed);
        async move { active == 0 }
    })
    .await;
}

#[tokio::test]
async fn acl_default_applies_when_no_rule_matches() {
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    cfg.access = acl(Action::Allow, &["deny 127.0.7.0/24"]);
    let lb = Sluice::start(cfg).await;
    assert!(served(lb.addr, "127.0.8.1").await);
    assert!(!served(lb.addr, "127.0.7.200").await);
    assert_eq!(a.accepted(), 1, "a denied client never reaches a backend");
}

#[tokio::test]
async fn acl_matches_ipv6_clients() {
    let a = TestBackend::named_on("a", "[::1]:0").await;
    for (default, rules, allowed) in [
        (Action::Allow, &["deny ::1"][..], false),
        (Action::Deny, &["allow ::1/128"][..], true),
        (Action::Allow, &["deny ::/0"][..], false),
        (
            Action::Deny,
            &["allow 127.0.0.0/8", "allow fe80::/10"][..],
            false,
        ),
    ] {
        let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
        cfg.bind = "[::1]:0".parse().unwrap();
        cfg.access = acl(default, rules);
        let lb = Sluice::start(cfg).await;
        assert_eq!(served(lb.addr, "::1").await, allowed, "{rules:?}");
        let refused = lb.shared().await.stats.refused(CloseReason::AclDenied);
        assert_eq!(refused, u64::from(!allowed), "{rules:?}");
    }
}

#[tokio::test]
async fn server_max_connections_closes_the_excess_at_once() {
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    cfg.max_connections = Some(2);
    let lb = Sluice::start(cfg).await;
    let mut held = vec![hello(lb.addr, None).await, hello(lb.addr, None).await];
    let mut excess = connect_from(lb.addr, None).await;
    assert_closed_without_data(&mut excess, Duration::from_secs(1)).await;
    let shared = lb.shared().await;
    assert_eq!(shared.stats.refused(CloseReason::MaxConnections), 1);
    assert_eq!(a.accepted(), 2);

    held.pop();
    eventually("a slot frees up", || async {
        shared.stats.active.load(Ordering::Relaxed) < 2
    })
    .await;
    assert_eq!(hello(lb.addr, None).await.0, "a");
}

fn idle_server(backends: Vec<sluice::backend::BackendSpec>) -> ServerConfig {
    let mut cfg = server(BalanceKind::RoundRobin, backends);
    cfg.client_idle_timeout = Some(Duration::from_millis(300));
    cfg
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let a = TestBackend::named("a").await;
    let lb = Sluice::start(idle_server(vec![a.spec()])).await;
    let (_, mut s) = hello(lb.addr, None).await;
    let idle_since = Instant::now();
    assert_closed_without_data(&mut s, Duration::from_secs(3)).await;
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(250),
        "closed after only {idle:?}"
    );
}

#[tokio::test]
async fn slow_one_way_download_outlives_the_idle_timeout() {
    // One chunk every 100 ms for 1.5 s: the client never sends, yet the connection is
    // never idle for the 1 s timeout. Ten times the pace, so that a loaded machine
    // stalling the backend cannot pass for idleness (the exact timing is checked with
    // paused time in `proxy::copy`'s tests).
    const CHUNKS: u8 = 15;
    let slow = TestBackend::serving("slow", "127.0.0.1:0", |mut s| async move {
        for i in 0..CHUNKS {
            if s.write_all(&[i; 100]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let mut cfg = idle_server(vec![slow.spec()]);
    cfg.client_idle_timeout = Some(Duration::from_secs(1));
    let lb = Sluice::start(cfg).await;
    let mut s = connect_from(lb.addr, None).await;
    let started = Instant::now();
    let got = read_to_end(&mut s).await;
    let want: Vec<u8> = (0..CHUNKS).flat_map(|i| [i; 100]).collect();
    assert_eq!(got, want);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "longer than the timeout"
    );
}

#[tokio::test]
async fn connect_timeout_closes_the_client() {
    let (_hole, addr, _fillers) = black_hole().await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![spec_of(addr)]);
    cfg.backend_connection_timeout = Some(Duration::from_millis(300));
    cfg.connect_attempts = 1;
    let lb = Sluice::start(cfg).await;
    let started = Instant::now();
    let mut s = connect_from(lb.addr, None).await;
    assert_closed_without_data(&mut s, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after only {took:?}"
    );
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.refused(CloseReason::ConnectFailed), 1);
}

#[tokio::test]
async fn connect_timeout_retries_on_another_backend() {
    let (_hole, addr, _fillers) = black_hole().await;
    let live = TestBackend::named("live").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![spec_of(addr), live.spec()]);
    cfg.backend_connection_timeout = Some(Duration::from_millis(300));
    cfg.connect_attempts = 2;
    let lb = Sluice::start(cfg).await;
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(who(lb.addr).await, "live");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
