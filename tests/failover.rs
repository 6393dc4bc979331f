//! Backends that fail: connect retries, no backend at all, passive and active health.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::backend::Backend;
use sluice::balance::BalanceKind;
use sluice::proxy::CloseReason;

use crate::support::*;

#[tokio::test]
async fn refused_connect_is_retried_on_another_backend() {
    let live = TestBackend::named("live").await;
    let mut cfg = server(
        BalanceKind::RoundRobin,
        vec![spec_of(dead_addr()), live.spec()],
    );
    cfg.connect_attempts = 2;
    let lb = Sluice::start(cfg).await;
    for _ in 0..20 {
        assert_eq!(who(lb.addr).await, "live");
    }
    let shared = lb.shared().await;
    let pool = shared.pool.load();
    let dead = &pool.backends()[0];
    assert!(dead.state.stats.connect_failures.load(Ordering::Relaxed) >= 9);
    assert_eq!(shared.stats.refused(CloseReason::ConnectFailed), 0);
}

#[tokio::test]
async fn client_is_closed_at_once_when_every_backend_refuses() {
    let mut cfg = server(
        BalanceKind::RoundRobin,
        vec![spec_of(dead_addr()), spec_of(dead_addr())],
    );
    cfg.connect_attempts = 2;
    let lb = Sluice::start(cfg).await;
    for _ in 0..3 {
        let started = Instant::now();
        let mut s = connect_from(lb.addr, None).await;
        assert_closed_without_data(&mut s, Duration::from_secs(1)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let shared = lb.shared().await;
    assert_eq!(shared.stats.refused(CloseReason::ConnectFailed), 3);
    eventually("no slot or backend count leaks", || async {
        shared.stats.active.load(Ordering::Relaxed) == 0
            && shared
                .pool
                .load()
                .backends()
                .iter()
                .all(|b| b.active() == 0)
    })
    .await;
}

#[tokio::test]
async fn client_is_closed_at_once_when_every_backend_is_down() {
    let a = TestBackend::named("a").await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![a.spec()])).await;
    lb.set_healthy(0, false).await;
    let mut s = connect_from(lb.addr, None).await;
    assert_closed_without_data(&mut s, Duration::from_secs(1)).await;
    assert_eq!(lb.shared().await.stats.refused(CloseReason::NoBackend), 1);
    assert_eq!(a.accepted(), 0);

    lb.set_healthy(0, true).await;
    assert_eq!(who(lb.addr).await, "a");
}

#[tokio::test]
async fn consecutive_connect_failures_mark_a_backend_down() {
    let live = TestBackend::named("live").await;
    let mut cfg = server(
        BalanceKind::RoundRobin,
        vec![spec_of(dead_addr()), live.spec()],
    );
    cfg.connect_attempts = 2;
    // An active check must be configured for passive health to apply; this one is too
    // slow and too tolerant to be what marks the backend down.
    cfg.healthcheck = ping_check(Duration::from_secs(60), 1000, 1);
    cfg.healthcheck.passive_fails = 3;
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let pool = shared.pool.load_full();
    let dead: &Arc<Backend> = &pool.backends()[0];
    let failures = || dead.state.stats.connect_failures.load(Ordering::Relaxed);

    for _ in 0..6 {
        assert_eq!(who(lb.addr).await, "live");
    }
    assert!(!dead.is_healthy(), "down after 3 connect failures");
    assert_eq!(failures(), 3);
    for _ in 0..10 {
        assert_eq!(who(lb.addr).await, "live");
    }
    assert_eq!(failures(), 3, "no client was sent to the down backend");
}

#[tokio::test]
async fn without_an_active_check_connect_failures_do_not_mark_down() {
    let live = TestBackend::named("live").await;
    let mut cfg = server(
        BalanceKind::RoundRobin,
        vec![spec_of(dead_addr()), live.spec()],
    );
    cfg.connect_attempts = 2;
    let lb = Sluice::start(cfg).await;
    for _ in 0..10 {
        assert_eq!(who(lb.addr).await, "live");
    }
    // Nothing would ever bring it back up, so it must stay up.
    assert!(lb.shared().await.pool.load().backends()[0].is_healthy());
}

/// Samples `backend` every 5 ms until its health is `want`; returns the checks that
/// failed and passed (since the given baselines) when the change was first seen.
async fn checks_until(backend: &Backend, want: bool, failed0: u64, passed0: u64) -> (u64, u64) {
    let stats = &backend.state.stats;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if backend.is_healthy() == want {
            return (
                stats.checks_failed.load(Ordering::SeqCst) - failed0,
                stats.checks_passed.load(Ordering::SeqCst) - passed0,
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("backend never became healthy={want}");
}

#[tokio::test]
async fn active_check_counts_exactly_fails_then_passes() {
    const FAILS: u64 = 3;
    const PASSES: u64 = 2;
    let mut flaky = TestBackend::named_on("flaky", "127.0.0.71:0").await;
    let steady = TestBackend::named("steady").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![flaky.spec(), steady.spec()]);
    cfg.healthcheck = ping_check(Duration::from_millis(100), FAILS as u32, PASSES as u32);
    cfg.connect_attempts = 1;
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let pool = shared.pool.load_full();
    let backend = &pool.backends()[0];
    let stats = &backend.state.stats;
    eventually("a first check passes", || async {
        stats.checks_passed.load(Ordering::SeqCst) > 0
    })
    .await;

    let failed0 = stats.checks_failed.load(Ordering::SeqCst);
    flaky.stop().await;
    let (failed, _) = checks_until(backend, false, failed0, 0).await;
    assert_eq!(failed, FAILS, "down after exactly `fails` failed checks");

    // While it is down, every client goes to the other backend without a failed dial.
    let dials = stats.connect_failures.load(Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(who(lb.addr).await, "steady");
    }
    assert_eq!(stats.connect_failures.load(Ordering::SeqCst), dials);

    let passed0 = stats.checks_passed.load(Ordering::SeqCst);
    flaky.restart().await;
    let (_, passed) = checks_until(backend, true, 0, passed0).await;
    assert_eq!(passed, PASSES, "up after exactly `passes` passed checks");
    let got = tally([who(lb.addr).await, who(lb.addr).await]);
    assert_eq!(got.get("flaky"), Some(&1), "back in rotation: {got:?}");
}

#[tokio::test]
async fn initially_unhealthy_backend_waits_for_its_checks() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    // Two passes needed, 1 s apart (± 10 %): no backend can be up before ~0.9 s.
    cfg.healthcheck = ping_check(Duration::from_secs(1), 1, 2);
    cfg.healthcheck.initial_status = sluice::config::InitialStatus::Unhealthy;
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let pool = shared.pool.load_full();
    assert!(pool.backends().iter().all(|b| !b.is_healthy()));
    let mut s = connect_from(lb.addr, None).await;
    assert_closed_without_data(&mut s, Duration::from_millis(500)).await;
    eventually("both backends pass their checks", || async {
        pool.backends().iter().all(|b| b.is_healthy())
    })
    .await;
    let got = tally([who(lb.addr).await, who(lb.addr).await]);
    assert_eq!(got.len(), 2);
}

/// Passive health marks a backend down from outside the check task; coming back must
/// still take `passes` passes in a row, not one pass on top of an old streak.
#[tokio::test]
async fn backend_marked_down_outside_the_checks_needs_passes_to_come_back() {
    const PASSES: u64 = 3;
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    cfg.healthcheck = ping_check(Duration::from_millis(100), 1, PASSES as u32);
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let pool = shared.pool.load_full();
    let backend = &pool.backends()[0];
    let stats = &backend.state.stats;
    eventually("an up streak longer than `passes`", || async {
        stats.checks_passed.load(Ordering::SeqCst) > PASSES
    })
    .await;

    // What passive health does after `passive_fails` refused connects.
    let passed0 = stats.checks_passed.load(Ordering::SeqCst);
    backend.set_healthy(false);
    let (_, passed) = checks_until(backend, true, 0, passed0).await;
    assert_eq!(passed, PASSES, "up after exactly `passes` passes");
}
