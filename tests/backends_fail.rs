//! When backends fail: the all-down policy, the panic threshold, slow start, outlier
//! ejection and `close_on_down`, with real backends stopped and started under load.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::{clock_ms, Backend};
use sluice::balance::BalanceKind;
use sluice::config::failover::{AllDown, OutlierConfig};
use sluice::config::{ExecSettings, HealthConfig, HealthKind, InitialStatus};
use sluice::proxy::state::ServerShared;
use sluice::proxy::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::data::Prng;
use crate::support::http::request;
use crate::support::process::SluiceProcess;
use crate::support::*;

/// An `exec` check every 100 ms whose verdict for a backend is whether the file
/// `up-PORT` exists in `dir`: the check marks backends down while they still serve,
/// as a check of something the data path does not need would.
fn flag_check(dir: &Path) -> HealthConfig {
    let script = dir.join("check");
    let text = format!(
        "#!/bin/sh\nif [ -e '{}/up-'\"$2\" ]; then echo up; else echo down; fi\n",
        dir.display()
    );
    std::fs::write(&script, text).expect("check script");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&script, mode).expect("chmod");
    HealthConfig {
        kind: HealthKind::Exec(ExecSettings {
            command: script.display().to_string(),
            positive: "up".into(),
            negative: Some("down".into()),
        }),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        fails: 1,
        passes: 1,
        initial_status: InitialStatus::Healthy,
        passive_fails: 0,
    }
}

fn set_flag(dir: &Path, backend: &TestBackend, up: bool) {
    let flag = dir.join(format!("up-{}", backend.addr.port()));
    if up {
        std::fs::write(flag, "").expect("flag");
    } else {
        let _ = std::fs::remove_file(flag);
    }
}

fn backend_of(shared: &ServerShared, addr: std::net::SocketAddr) -> Arc<Backend> {
    let key = addr.to_string();
    let pool = shared.pool.load();
    let found = pool.backends().iter().find(|b| b.key() == key).cloned();
    found.expect("backend in the pool")
}

async fn wait_health(shared: &ServerShared, backend: &TestBackend, up: bool) {
    let b = backend_of(shared, backend.addr);
    let what = format!("{} {}", backend.name, if up { "up" } else { "down" });
    eventually(&what, || async { b.is_healthy() == up }).await;
}

/// `n` clients in turn, `parallel` at a time: the backend each one reached, or
/// `None` for a client closed without a greeting.
async fn clients(addr: std::net::SocketAddr, n: usize, parallel: usize) -> Vec<Option<String>> {
    let mut names = Vec::with_capacity(n);
    for _ in 0..n.div_ceil(parallel) {
        let batch = (0..parallel).map(|_| async move {
            let mut stream = connect_from(addr, None).await;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(Ok(1)) = tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
                if byte[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).into_owned());
                }
                line.push(byte[0]);
            }
            None
        });
        names.extend(futures::future::join_all(batch).await);
    }
    names.truncate(n);
    names
}

#[tokio::test]
async fn all_down_closes_or_sends_to_any_or_to_the_last_up_as_configured() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    for policy in [AllDown::Close, AllDown::Any, AllDown::Last] {
        let dir = tempfile::tempdir().expect("dir");
        set_flag(dir.path(), &a, true);
        set_flag(dir.path(), &b, true);
        let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
        cfg.healthcheck = flag_check(dir.path());
        cfg.failover.all_down = policy;
        let lb = Sluice::start(cfg).await;
        let shared = lb.shared().await;
        let seen: BTreeSet<_> = clients(lb.addr, 20, 5).await.into_iter().collect();
        assert_eq!(
            seen,
            ["a", "b"].map(|n| Some(n.to_owned())).into(),
            "{policy}"
        );

        // b goes down, then (more than a check round later) a: a was up last.
        set_flag(dir.path(), &b, false);
        wait_health(&shared, &b, false).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        set_flag(dir.path(), &a, false);
        wait_health(&shared, &a, false).await;
        eventually("all down noticed", || async { shared.failover.all_down() }).await;

        let reached = clients(lb.addr, 40, 10).await;
        let tally = tally(reached.iter().map(|r| r.clone().unwrap_or_default()));
        match policy {
            AllDown::Close => {
                assert!(reached.iter().all(Option::is_none), "{policy}: {tally:?}");
                assert_eq!(shared.stats.refused(CloseReason::NoBackend), 40);
            }
            AllDown::Any => {
                assert_eq!(tally.get("a"), Some(&20), "{policy}: {tally:?}");
                assert_eq!(tally.get("b"), Some(&20), "{policy}: {tally:?}");
            }
            AllDown::Last => assert_eq!(tally.get("a"), Some(&40), "{policy}: {tally:?}"),
        }
        let counted = &shared.failover.stats;
        assert_eq!(counted.all_down.load(Ordering::Relaxed), 1, "{policy}");

        // One backend back: the state ends, clients go to it alone.
        set_flag(dir.path(), &b, true);
        wait_health(&shared, &b, true).await;
        eventually("all down over", || async { !shared.failover.all_down() }).await;
        let reached = clients(lb.addr, 10, 5).await;
        assert!(
            reached.iter().all(|r| r.as_deref() == Some("b")),
            "{policy}: {reached:?}"
        );
        lb.runtime
            .shutdown(Duration::ZERO, std::future::ready(()))
            .await;
    }
}

#[tokio::test]
async fn a_tier_below_min_healthy_percent_counts_all_its_backends_as_up() {
    let dir = tempfile::tempdir().expect("dir");
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let backend = TestBackend::named(name).await;
        set_flag(dir.path(), &backend, true);
        backends.push(backend);
    }
    let mut cfg = server(
        BalanceKind::RoundRobin,
        backends.iter().map(TestBackend::spec).collect(),
    );
    cfg.healthcheck = flag_check(dir.path());
    cfg.failover.min_healthy_percent = Some(50);
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;

    // Two of four down: 50 % up, not below the threshold; the two up take everything.
    for backend in &backends[..2] {
        set_flag(dir.path(), backend, false);
        wait_health(&shared, backend, false).await;
    }
    let reached = tally(clients(lb.addr, 40, 10).await.into_iter().flatten());
    assert_eq!(reached.keys().collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(shared.failover.panicking_tiers(), 0);

    // Three of four down: 25 %, the tier panics and all four share the clients.
    set_flag(dir.path(), &backends[2], false);
    wait_health(&shared, &backends[2], false).await;
    eventually("the tier panics", || async {
        shared.failover.panicking_tiers() == 1
    })
    .await;
    let reached = tally(clients(lb.addr, 40, 10).await.into_iter().flatten());
    assert_eq!(
        reached.values().copied().collect::<Vec<_>>(),
        [10; 4],
        "{reached:?}"
    );

    // Back to two: the panic ends, logged and counted once.
    set_flag(dir.path(), &backends[2], true);
    wait_health(&shared, &backends[2], true).await;
    eventually("the panic ends", || async {
        shared.failover.panicking_tiers() == 0
    })
    .await;
    let reached = tally(clients(lb.addr, 40, 10).await.into_iter().flatten());
    assert_eq!(reached.keys().collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(shared.failover.stats.panics.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_backend_that_comes_back_ramps_up_to_its_share() {
    let a = TestBackend::named("a").await;
    let mut b = TestBackend::named("b").await;
    let period = Duration::from_secs(8);
    let mut cfg = server(BalanceKind::Weight, vec![a.spec(), b.spec()]);
    cfg.healthcheck = ping_check(Duration::from_millis(100), 1, 1);
    cfg.failover.slow_start = Some(period);
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let back = backend_of(&shared, b.addr);
    // At start-up no backend warms up.
    assert_eq!(back.state.ramp(clock_ms(), period), None);

    // b stops, its check marks it down; it starts again, and comes back up.
    b.stop().await;
    wait_health(&shared, &b, false).await;
    b.restart().await;
    wait_health(&shared, &b, true).await;
    let ramp = || back.state.ramp(clock_ms(), period).unwrap_or(1.0);
    // Its share of 1 000 clients at three points of the ramp: near the start, past the
    // middle, after the end. Passed over with probability 1 - ramp, its share lies
    // between ramp × ½ (its slot goes to the next backend) and ramp / (1 + ramp) (a
    // new draw), for the ramp at the batch's start and end.
    for wait_for in [0.0, 0.5, 1.0] {
        eventually("the ramp", || async { ramp() >= wait_for }).await;
        let from = ramp();
        let reached = clients(lb.addr, 1000, 25).await;
        let to = ramp();
        let share = reached.iter().filter(|r| r.as_deref() == Some("b")).count() as f64 / 1000.0;
        assert!(reached.iter().all(Option::is_some), "every client served");
        let (low, high) = (from / 2.0 - 0.05, to / (1.0 + to) + 0.05);
        assert!(
            (low..=high).contains(&share),
            "share {share} at ramp {from:.2}..{to:.2}, expected {low:.2}..{high:.2}"
        );
        if wait_for == 1.0 {
            assert!((0.45..=0.55).contains(&share), "full share: {share}");
        }
    }
}

#[tokio::test]
async fn ejections_grow_and_never_take_more_than_the_tier_allows() {
    let mut a = TestBackend::named("a").await;
    let mut b = TestBackend::named("b").await;
    let c = TestBackend::named("c").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec(), c.spec()]);
    cfg.connect_attempts = 3;
    cfg.failover.outlier = Some(OutlierConfig {
        consecutive_failures: 2,
        eject_on_reset: false,
        ejection_time: Duration::from_millis(500),
        max_ejection_time: Duration::from_secs(2),
        max_ejection_percent: 34,
    });
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let out = backend_of(&shared, a.addr);

    a.stop().await;
    // Each ejection: clients until a is out, then how long it is out for.
    for (i, expected) in [500, 1000, 2000, 2000].into_iter().enumerate() {
        eventually("a ejected", || async {
            let reached = clients(lb.addr, 3, 3).await;
            assert!(
                reached.iter().all(Option::is_some),
                "clients served: {reached:?}"
            );
            out.state.is_ejected()
        })
        .await;
        let left = out.state.ejected_until().saturating_sub(clock_ms());
        assert!(
            left <= expected && left + 200 >= expected,
            "ejected for {left} ms, expected {expected}"
        );
        // While it is out (2 s), b fails too: a third of the tier is out already.
        if i == 2 {
            b.stop().await;
            let reached = clients(lb.addr, 12, 3).await;
            assert!(
                reached.iter().all(|r| r.as_deref() == Some("c")),
                "{reached:?}"
            );
            assert!(!backend_of(&shared, b.addr).state.is_ejected());
            assert!(
                shared
                    .failover
                    .stats
                    .ejections_refused
                    .load(Ordering::Relaxed)
                    > 0
            );
            b.restart().await;
        }
        eventually("a returns", || async { !out.state.is_ejected() }).await;
    }
    assert_eq!(out.state.stats.ejections.load(Ordering::Relaxed), 4);
    assert_eq!(out.state.stats.ejection_returns.load(Ordering::Relaxed), 4);

    // Back for real: once its ejection ends, it takes clients again.
    a.restart().await;
    eventually("a serves again", || async {
        clients(lb.addr, 6, 3)
            .await
            .iter()
            .any(|r| r.as_deref() == Some("a"))
    })
    .await;
    assert_eq!(shared.stats.refused(CloseReason::ConnectFailed), 0);
}

/// Connects through `addr` and returns the backend's name with the stream.
async fn open(addr: std::net::SocketAddr) -> (String, TcpStream) {
    hello(addr, None).await
}

/// Sends `round` bytes and reads them back: `Ok` when every byte came back in order.
async fn echo_round(stream: &mut TcpStream, round: u64) -> Result<(), String> {
    let mut prng = Prng::new(round);
    let mut sent = vec![0u8; 4096];
    prng.fill(&mut sent);
    stream.write_all(&sent).await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; sent.len()];
    match tokio::time::timeout(WAIT, stream.read_exact(&mut back)).await {
        Ok(Ok(_)) if back == sent => Ok(()),
        Ok(Ok(_)) => Err("bytes differ".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("stalled".into()),
    }
}

/// How the backend `a` of [`close_on_down_closes_exactly_the_down_backends_connections`]
/// is marked down.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Down {
    /// It stops listening: its check fails.
    Check,
    /// It stops listening: new clients fail to connect to it, and it is ejected.
    Ejection,
    /// Discovery no longer lists it.
    Discovery,
}

#[tokio::test]
async fn close_on_down_closes_exactly_the_down_backends_connections() {
    let cases = [
        (Down::Check, true),
        (Down::Check, false),
        (Down::Ejection, true),
        (Down::Discovery, true),
    ];
    for (how, close_on_down) in cases {
        let case = format!("{how:?}, close_on_down = {close_on_down}");
        let mut a = TestBackend::named("a").await;
        let b = TestBackend::named("b").await;
        let dir = tempfile::tempdir().expect("dir");
        let list = dir.path().join("backends.txt");
        std::fs::write(&list, format!("{}\n{}\n", a.addr, b.addr)).expect("list");
        let discovery = match how {
            Down::Discovery => format!(
                "kind = \"file\"\nfile_path = \"{}\"\ninterval = \"50ms\"",
                list.display()
            ),
            _ => format!(
                "kind = \"static\"\nstatic_list = [\"{}\", \"{}\"]",
                a.addr, b.addr
            ),
        };
        let detect = match how {
            Down::Check => {
                "[servers.test.healthcheck]\nkind = \"ping\"\ninterval = \"100ms\"\n\
                            timeout = \"50ms\"\npassive_fails = 0"
            }
            Down::Ejection => {
                "[servers.test.outlier]\nconsecutive_failures = 1\n\
                               max_ejection_percent = 50"
            }
            Down::Discovery => "",
        };
        let text = format!(
            "[servers.test]\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n\
             backend_connection_timeout = \"2s\"\nclose_on_down = {close_on_down}\n\
             [servers.test.discovery]\n{discovery}\n{detect}\n"
        );
        let loaded = sluice::config::parse(&text, Path::new("down.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let lb = Sluice::start_config(loaded.config).await;
        let shared = lb.shared().await;
        eventually("both backends in the pool", || async {
            shared.pool.load().backends().len() == 2
        })
        .await;
        let mut streams = Vec::new();
        for _ in 0..6 {
            streams.push(open(lb.addr).await);
        }
        for (round, (_, stream)) in streams.iter_mut().enumerate() {
            echo_round(stream, round as u64).await.expect("echo before");
        }

        // a goes down; its established connections would still work.
        let gone = backend_of(&shared, a.addr);
        match how {
            Down::Check => {
                a.stop().await;
                wait_health(&shared, &a, false).await;
            }
            Down::Ejection => {
                a.stop().await;
                eventually("a ejected", || async {
                    let reached = clients(lb.addr, 2, 2).await;
                    assert!(reached.iter().all(|r| r.as_deref() == Some("b")), "{case}");
                    gone.state.is_ejected()
                })
                .await;
            }
            Down::Discovery => {
                std::fs::write(&list, format!("{}\n", b.addr)).expect("list");
                eventually("a no longer discovered", || async {
                    shared.pool.load().backends().len() == 1
                })
                .await;
            }
        }
        if close_on_down {
            let what = format!("{case}: a's connections closed");
            eventually(&what, || async {
                shared.failover.stats.closed_on_down.load(Ordering::Relaxed) == 3
            })
            .await;
        } else {
            // Time enough for a wrong close to show.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for (i, (name, stream)) in streams.iter_mut().enumerate() {
            let result = echo_round(stream, 100 + i as u64).await;
            match (name.as_str(), close_on_down) {
                ("a", true) => assert!(result.is_err(), "{case}: a's connection {i} was closed"),
                _ => result.unwrap_or_else(|e| panic!("{case}: {name} connection {i}: {e}")),
            }
        }
        let closed = shared.failover.stats.closed_on_down.load(Ordering::Relaxed);
        assert_eq!(closed, if close_on_down { 3 } else { 0 }, "{case}");
        eventually("a's connections released", || async {
            gone.active() == if close_on_down { 0 } else { 3 }
        })
        .await;
        // b's connections keep every byte to the end.
        for (i, (name, mut stream)) in streams.into_iter().enumerate() {
            if name == "b" {
                for round in 0..5 {
                    echo_round(&mut stream, 1000 + round)
                        .await
                        .expect("b echoes");
                }
                stream.shutdown().await.expect("half-close");
                let rest = read_until_closed(&mut stream, WAIT).await;
                assert!(
                    rest.is_empty(),
                    "{case}: b connection {i}: {} extra bytes",
                    rest.len()
                );
            }
        }
        lb.runtime
            .shutdown(Duration::ZERO, std::future::ready(()))
            .await;
    }
}

#[tokio::test]
async fn close_on_down_ends_the_udp_sessions_of_a_down_backend_at_once() {
    use crate::support::udp::{ask, client, UdpBackend};
    use sluice::config::{Protocol, UdpConfig};
    for close_on_down in [true, false] {
        let a = UdpBackend::named("a").await;
        let b = UdpBackend::named("b").await;
        let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
        cfg.protocol = Protocol::Udp;
        cfg.udp = UdpConfig::default();
        cfg.client_idle_timeout = Some(Duration::from_secs(30));
        cfg.failover.close_on_down = close_on_down;
        let lb = Sluice::start(cfg).await;
        let shared = lb.shared().await;
        let (one, two) = (client("127.0.0.1:0").await, client("127.0.0.1:0").await);
        let first = ask(&one, lb.addr, b"one", 3).await.expect("one answered");
        let second = ask(&two, lb.addr, b"two", 3).await.expect("two answered");
        let (on_a, on_b) = if first.backend == "a" {
            (&one, (&two, second))
        } else {
            (&two, (&one, first))
        };
        let down = backend_of(&shared, a.addr);
        down.set_healthy(false);
        if close_on_down {
            eventually("a's session ended", || async { down.active() == 0 }).await;
            let counted = shared.failover.stats.closed_on_down.load(Ordering::Relaxed);
            assert_eq!(counted, 1);
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(down.active(), 1, "without close_on_down the session waits");
        }
        // b's session is untouched: the same session (source port) answers.
        let (socket, before) = on_b;
        let again = ask(socket, lb.addr, b"again", 3).await.expect("b answers");
        assert_eq!((again.backend.as_str(), again.port), ("b", before.port));
        // a's client moves to b with its next datagram, either way.
        let moved = ask(on_a, lb.addr, b"moved", 3)
            .await
            .expect("moved answered");
        assert_eq!(moved.backend, "b");
        eventually("a's session gone", || async { down.active() == 0 }).await;
    }
}

#[tokio::test]
async fn the_binary_closes_a_backend_disabled_with_close_and_shows_its_warm_up() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let toml = format!(
        r#"[logging]
level = "info"

[api]
enabled = true
bind = "127.0.0.1:0"

[servers.web]
bind = "127.0.0.1:0"
balance = "roundrobin"
slow_start = "60s"

  [servers.web.discovery]
  kind = "static"
  static_list = ["{}", "{}"]
"#,
        a.addr, b.addr
    );
    let lb = SluiceProcess::start(&toml).await;
    let (api, web) = (lb.api(), lb.server("web"));
    let mut streams = [open(web).await, open(web).await];
    streams.sort_by(|x, y| x.0.cmp(&y.0));
    let names: Vec<&str> = streams.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b"]);

    let path = format!("/servers/web/backends/{}", b.addr);
    let json = [("Content-Type", "application/json")];
    let body = r#"{"state": "disabled", "close": true}"#;
    let answer = request(api, "PATCH", &path, &json, Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, on_b) = &mut streams[1];
    let rest = read_until_closed(on_b, WAIT).await;
    assert!(rest.is_empty(), "b's connection closed without more bytes");
    let (_, on_a) = &mut streams[0];
    echo_round(on_a, 7).await.expect("a's connection untouched");
    eventually("the access log says why", || async {
        lb.log().lines().any(|l| {
            l.contains("connection closed")
                && l.contains(&format!("backend=\"{}\"", b.addr))
                && l.contains("reason=\"backend_down\"")
        })
    })
    .await;

    // Enabled again: it warms up, and the API says how far.
    let body = r#"{"state": "enabled"}"#;
    let answer = request(api, "PATCH", &path, &json, Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let shown = request(api, "GET", &path, &[], None).await.json();
    let warming = shown["warming"].as_u64().expect("warming while it ramps");
    assert!((1..=10).contains(&warming), "{shown}");
    let stats = request(api, "GET", "/servers/web/stats", &[], None)
        .await
        .json();
    assert_eq!(stats["failover"]["all_down"], false, "{stats}");
    assert_eq!(stats["failover"]["all_down_policy"], "close", "{stats}");

    // close goes with a disable only.
    let body = r#"{"state": "drain", "close": true}"#;
    let answer = request(api, "PATCH", &path, &json, Some(body)).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
}

#[tokio::test]
async fn an_ejected_backend_returns_at_once_when_its_check_passes() {
    let mut a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    cfg.healthcheck = ping_check(Duration::from_millis(100), 1, 1);
    cfg.failover.outlier = Some(OutlierConfig {
        consecutive_failures: 1,
        ejection_time: Duration::from_secs(60),
        max_ejection_time: Duration::from_secs(60),
        ..OutlierConfig::default()
    });
    let lb = Sluice::start(cfg).await;
    let shared = lb.shared().await;
    let out = backend_of(&shared, a.addr);
    a.stop().await;
    eventually("a ejected", || async {
        clients(lb.addr, 2, 2).await;
        out.state.is_ejected()
    })
    .await;
    assert!(out.state.ejected_until().saturating_sub(clock_ms()) > 50_000);
    a.restart().await;
    eventually("a back long before its minute is up", || async {
        !out.state.is_ejected() && out.is_up()
    })
    .await;
    assert_eq!(out.state.stats.ejection_returns.load(Ordering::Relaxed), 1);
    eventually("a serves again", || async {
        clients(lb.addr, 4, 2)
            .await
            .iter()
            .any(|r| r.as_deref() == Some("a"))
    })
    .await;
}
