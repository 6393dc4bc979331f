//! How each strategy spreads clients through a real Sluice, and how tiers, backups,
//! per-backend caps and IPv6 take part.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;

use crate::support::*;

/// Three named backends `a`, `b`, `c`.
async fn abc() -> [TestBackend; 3] {
    [
        TestBackend::named("a").await,
        TestBackend::named("b").await,
        TestBackend::named("c").await,
    ]
}

fn specs(backends: &[TestBackend]) -> Vec<BackendSpec> {
    backends.iter().map(TestBackend::spec).collect()
}

/// `n` sequential connections from the same client, tallied by backend.
async fn sequential(lb: &Sluice, n: usize) -> BTreeMap<String, usize> {
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        names.push(who(lb.addr).await);
    }
    tally(names)
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
}

#[tokio::test]
async fn roundrobin_rotates_exactly() {
    let backends = abc().await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, specs(&backends))).await;
    let got = sequential(&lb, 30).await;
    assert_eq!(got, counts(&[("a", 10), ("b", 10), ("c", 10)]));
}

#[tokio::test]
async fn weight_splits_exactly_by_weight() {
    let backends = abc().await;
    let mut list = specs(&backends);
    list[0].weight = 5;
    let lb = Sluice::start(server(BalanceKind::Weight, list)).await;
    let got = sequential(&lb, 70).await;
    assert_eq!(got, counts(&[("a", 50), ("b", 10), ("c", 10)]));
}

#[tokio::test]
async fn reloaded_weights_take_effect_exactly() {
    let backends = abc().await;
    let mut cfg = server(BalanceKind::Weight, specs(&backends[..2]));
    let lb = Sluice::start(cfg.clone()).await;
    assert_eq!(sequential(&lb, 10).await, counts(&[("a", 5), ("b", 5)]));
    let mut list = specs(&backends[..2]);
    list[1].weight = 3;
    cfg.discovery = sluice::config::DiscoveryConfig::Static {
        backends: list.into(),
    };
    lb.runtime.apply(config(cfg)).await.expect("reload");
    assert_eq!(sequential(&lb, 40).await, counts(&[("a", 10), ("b", 30)]));
}

#[tokio::test]
async fn leastconn_prefers_the_backend_with_fewer_open_connections() {
    let backends = abc().await;
    let lb = Sluice::start(server(BalanceKind::LeastConn, specs(&backends))).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(hello(lb.addr, None).await);
    }
    let spread = tally(held.iter().map(|(name, _)| name.clone()));
    assert_eq!(spread, counts(&[("a", 2), ("b", 2), ("c", 2)]));

    // Close both connections to b: it now has the fewest, so it takes the next two.
    held.retain(|(name, _)| name != "b");
    eventually("Sluice sees b's connections closed", || async {
        lb.active(1).await == 0
    })
    .await;
    for _ in 0..2 {
        let (name, stream) = hello(lb.addr, None).await;
        assert_eq!(name, "b");
        held.push((name, stream));
    }
}

/// Every backend gets some of 60 connections from 60 distinct clients.
async fn assert_spreads_over_all(kind: BalanceKind) {
    let backends = abc().await;
    let lb = Sluice::start(server(kind, specs(&backends))).await;
    let got = tally(who_for_each(lb.addr, &client_ips(60)).await);
    assert_eq!(got.len(), 3, "{kind}: {got:?}");
    assert_eq!(got.values().sum::<usize>(), 60);
}

#[tokio::test]
async fn p2c_random_and_iphash_spread_over_every_backend() {
    for kind in [BalanceKind::P2c, BalanceKind::Random, BalanceKind::IpHash] {
        assert_spreads_over_all(kind).await;
    }
}

#[tokio::test]
async fn hashing_strategies_keep_each_client_on_its_backend() {
    let clients = client_ips(40);
    for kind in [
        BalanceKind::IpHash,
        BalanceKind::IpHash1,
        BalanceKind::Maglev,
    ] {
        let backends = abc().await;
        let lb = Sluice::start(server(kind, specs(&backends))).await;
        let first = who_for_each(lb.addr, &clients).await;
        for _ in 0..2 {
            assert_eq!(who_for_each(lb.addr, &clients).await, first, "{kind}");
        }
        assert!(
            tally(first).len() > 1,
            "{kind} sends every client to one backend"
        );
    }
}

#[tokio::test]
async fn a_load_bound_spreads_a_busy_client_and_then_takes_it_home() {
    for kind in [
        BalanceKind::IpHash,
        BalanceKind::IpHash1,
        BalanceKind::Maglev,
    ] {
        let backends = abc().await;
        let mut cfg = server(kind, specs(&backends));
        cfg.hash_balance_factor = Some(100);
        let lb = Sluice::start(cfg).await;
        let home = who(lb.addr).await;
        let idle = || async { lb.active(0).await + lb.active(1).await + lb.active(2).await == 0 };
        eventually("Sluice sees the connection closed", idle).await;
        // Nine connections held open by one client: 100 % of the mean is three each.
        let mut held = Vec::new();
        for _ in 0..9 {
            held.push(hello(lb.addr, None).await);
        }
        let spread = tally(held.iter().map(|(name, _)| name.clone()));
        assert_eq!(spread, counts(&[("a", 3), ("b", 3), ("c", 3)]), "{kind}");
        assert_eq!(
            held[0].0, home,
            "{kind}: the first went to the client's own"
        );
        // Once they close, its connections go to its own backend again.
        drop(held);
        eventually("Sluice sees the connections closed", idle).await;
        for _ in 0..3 {
            assert_eq!(who(lb.addr).await, home, "{kind}");
            eventually("Sluice sees the connection closed", idle).await;
        }
    }
}

/// With one backend down, only its clients move; when it returns, they come back.
async fn assert_minimal_disruption(kind: BalanceKind) {
    let backends = [
        TestBackend::named("a").await,
        TestBackend::named("b").await,
        TestBackend::named("c").await,
        TestBackend::named("d").await,
    ];
    let lb = Sluice::start(server(kind, specs(&backends))).await;
    let clients = client_ips(200);
    let before = who_for_each(lb.addr, &clients).await;
    let on_b = before.iter().filter(|n| *n == "b").count();
    assert!(on_b > 0, "{kind}: no client on b");

    lb.set_healthy(1, false).await;
    let during = who_for_each(lb.addr, &clients).await;
    for ((client, was), now) in clients.iter().zip(&before).zip(&during) {
        if was == "b" {
            assert_ne!(now, "b", "{kind}: {client} still sent to the down backend");
        } else {
            assert_eq!(now, was, "{kind}: {client} moved though its backend is up");
        }
    }

    lb.set_healthy(1, true).await;
    assert_eq!(who_for_each(lb.addr, &clients).await, before, "{kind}");
}

#[tokio::test]
async fn iphash1_moves_only_the_clients_of_a_down_backend() {
    assert_minimal_disruption(BalanceKind::IpHash1).await;
}

#[tokio::test]
async fn maglev_moves_only_the_clients_of_a_down_backend() {
    assert_minimal_disruption(BalanceKind::Maglev).await;
}

#[tokio::test]
async fn lowest_priority_tier_wins_and_backups_take_over_last() {
    let backends = abc().await;
    let mut list = specs(&backends);
    list[0].priority = 1;
    list[1].priority = 2;
    list[2].backup = true;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, list)).await;
    assert_eq!(sequential(&lb, 4).await, counts(&[("a", 4)]));

    lb.set_healthy(0, false).await;
    assert_eq!(sequential(&lb, 4).await, counts(&[("b", 4)]));

    lb.set_healthy(1, false).await;
    assert_eq!(
        sequential(&lb, 4).await,
        counts(&[("c", 4)]),
        "backup takes over"
    );

    lb.set_healthy(1, true).await;
    assert_eq!(
        sequential(&lb, 4).await,
        counts(&[("b", 4)]),
        "backup gives back"
    );
    lb.set_healthy(0, true).await;
    assert_eq!(sequential(&lb, 4).await, counts(&[("a", 4)]));
}

#[tokio::test]
async fn backup_takes_over_when_health_checks_fail_and_gives_back() {
    let mut primary = TestBackend::named_on("primary", "127.0.0.61:0").await;
    let backup = TestBackend::named("backup").await;
    let mut backup_spec = backup.spec();
    backup_spec.backup = true;
    let mut cfg = server(BalanceKind::RoundRobin, vec![primary.spec(), backup_spec]);
    cfg.healthcheck = ping_check(std::time::Duration::from_millis(100), 2, 2);
    let lb = Sluice::start(cfg).await;
    assert_eq!(sequential(&lb, 3).await, counts(&[("primary", 3)]));

    primary.stop().await;
    let shared = lb.shared().await;
    eventually("primary goes down", || async {
        !shared.pool.load().backends()[0].is_healthy()
    })
    .await;
    assert_eq!(sequential(&lb, 3).await, counts(&[("backup", 3)]));

    primary.restart().await;
    eventually("primary comes back", || async {
        shared.pool.load().backends()[0].is_healthy()
    })
    .await;
    assert_eq!(sequential(&lb, 3).await, counts(&[("primary", 3)]));
}

#[tokio::test]
async fn capped_backend_overflows_to_the_next() {
    let backends = abc().await;
    let mut list = specs(&backends[..2]);
    list[0].max_connections = Some(2);
    list[1].priority = 2;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, list)).await;
    let mut held = vec![hello(lb.addr, None).await, hello(lb.addr, None).await];
    assert!(held.iter().all(|(name, _)| name == "a"));
    let (name, third) = hello(lb.addr, None).await;
    assert_eq!(name, "b", "a is full");
    drop(third);

    held.pop();
    eventually("a has a free slot", || async { lb.active(0).await < 2 }).await;
    assert_eq!(hello(lb.addr, None).await.0, "a");
}

#[tokio::test]
async fn capped_backend_in_the_same_tier_is_skipped_while_full() {
    let backends = abc().await;
    let mut list = specs(&backends[..2]);
    list[0].max_connections = Some(1);
    let lb = Sluice::start(server(BalanceKind::RoundRobin, list)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(hello(lb.addr, None).await);
    }
    let got = tally(held.iter().map(|(name, _)| name.clone()));
    assert_eq!(got, counts(&[("a", 1), ("b", 4)]));
}

#[tokio::test]
async fn ipv6_listener_and_backends() {
    let a = TestBackend::named_on("a6", "[::1]:0").await;
    let b = TestBackend::named_on("b6", "[::1]:0").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    cfg.bind = "[::1]:0".parse().unwrap();
    let lb = Sluice::start(cfg).await;
    assert!(lb.addr.is_ipv6());
    assert_eq!(
        lb.shared().await.pool.load().backends()[0].key(),
        a.addr.to_string()
    );
    let got = sequential(&lb, 6).await;
    assert_eq!(got, counts(&[("a6", 3), ("b6", 3)]));
    let source: IpAddr = "::1".parse().unwrap();
    assert!(who_from(lb.addr, Some(source)).await.ends_with('6'));
}
