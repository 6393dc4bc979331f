//! Changing a running Sluice: in-process reloads and graceful shutdown. No established
//! connection is ever cut by a change; only the shutdown grace period ends them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::balance::BalanceKind;
use sluice::config::{Config, ServerConfig};
use sluice::proxy::state::ServerShared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::data::EchoStreamer;
use crate::support::*;

/// Bytes relayed to all backends of `server` so far.
fn relayed(server: &ServerShared) -> u64 {
    server
        .pool
        .load()
        .backends()
        .iter()
        .map(|b| b.state.stats.bytes_to_backend.load(Ordering::Relaxed))
        .sum()
}

/// Waits until at least `more` further bytes have been relayed: traffic is flowing.
async fn flowing(lb: &Sluice, more: u64) {
    let shared = lb.shared().await;
    let start = relayed(&shared);
    eventually("bytes keep flowing", || async {
        relayed(&shared) >= start + more
    })
    .await;
}

/// Sends `ping` and expects it echoed: the connection still works both ways.
async fn still_echoes(stream: &mut TcpStream) {
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf, b"ping");
}

/// Half-closes and expects the backend to finish cleanly.
async fn finishes(mut stream: TcpStream) {
    stream.shutdown().await.unwrap();
    assert!(read_to_end(&mut stream).await.is_empty());
}

/// One change to a server's configuration.
type Step<'a> = Box<dyn Fn(&mut ServerConfig) + 'a>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_lose_no_byte_of_100_streaming_connections() {
    let a = TestBackend::echo().await;
    let b = TestBackend::echo().await;
    let c = TestBackend::echo().await;
    let first = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    let lb = Sluice::start(first.clone()).await;
    let mut streamers = Vec::new();
    for seed in 0..100 {
        streamers.push(EchoStreamer::start(lb.addr, seed, 4096, Duration::from_millis(10)).await);
    }
    let steps: Vec<Step> = vec![
        Box::new(|cfg| cfg.discovery = discovery(vec![a.spec(), b.spec(), c.spec()])),
        Box::new(|cfg| cfg.discovery = discovery(vec![b.spec(), c.spec()])),
        Box::new(|cfg| {
            cfg.balance = BalanceKind::LeastConn;
            cfg.max_connections = Some(1000);
            cfg.client_idle_timeout = Some(Duration::from_secs(30));
        }),
        Box::new(|_| {}),
    ];
    let mut cfg = first;
    for step in &steps {
        flowing(&lb, 200 * 1024).await;
        step(&mut cfg);
        lb.runtime.apply(config(cfg.clone())).await.expect("reload");
    }
    flowing(&lb, 200 * 1024).await;
    assert_eq!(
        lb.runtime.local_addrs().await["test"],
        lb.addr,
        "same listener"
    );

    let a_before = a.accepted();
    let late: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(connect_from(lb.addr, None).await);
        }
        v
    };
    for (i, s) in streamers.into_iter().enumerate() {
        let verified = s
            .finish()
            .await
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert!(verified > 0);
    }
    for s in late {
        finishes(s).await;
    }
    assert_eq!(
        a.accepted(),
        a_before,
        "the removed backend gets no new connection"
    );
    assert!(c.accepted() > 0, "the added backend takes connections");
}

fn discovery(backends: Vec<sluice::backend::BackendSpec>) -> sluice::config::DiscoveryConfig {
    sluice::config::DiscoveryConfig::Static {
        backends: backends.into(),
    }
}

#[tokio::test]
async fn removed_backend_keeps_its_connections_while_new_ones_go_elsewhere() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let c = TestBackend::named("c").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    let lb = Sluice::start(cfg.clone()).await;
    let mut on_a = None;
    for _ in 0..2 {
        let (name, stream) = hello(lb.addr, None).await;
        if name == "a" {
            on_a = Some(stream);
        }
    }
    let mut on_a = on_a.expect("one of two round-robin connections goes to a");

    cfg.discovery = discovery(vec![b.spec(), c.spec()]);
    lb.runtime.apply(config(cfg)).await.expect("reload");
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(who(lb.addr).await);
    }
    assert_eq!(tally(names).keys().collect::<Vec<_>>(), ["b", "c"]);
    still_echoes(&mut on_a).await;
    finishes(on_a).await;
}

fn two_servers(test: ServerConfig, other: Option<ServerConfig>) -> Config {
    let mut cfg = config(test);
    if let Some(other) = other {
        cfg.servers.insert("other".into(), other);
    }
    cfg
}

#[tokio::test]
async fn removed_server_stops_accepting_but_its_connections_finish() {
    let a = TestBackend::named("a").await;
    let test = server(BalanceKind::RoundRobin, vec![a.spec()]);
    let lb = Sluice::start_config(two_servers(test.clone(), Some(test.clone()))).await;
    let other = lb.runtime.local_addrs().await["other"];
    let (_, mut held) = hello(other, None).await;

    lb.runtime
        .apply(two_servers(test, None))
        .await
        .expect("reload");
    assert!(refused(other).await, "the removed server still accepts");
    assert!(lb.runtime.server("other").await.is_none());
    assert_eq!(who(lb.addr).await, "a", "the remaining server is untouched");
    still_echoes(&mut held).await;
    finishes(held).await;
}

#[tokio::test]
async fn changed_bind_moves_the_listener() {
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    let lb = Sluice::start(cfg.clone()).await;
    let (_, mut held) = hello(lb.addr, None).await;

    cfg.bind = "127.0.0.2:0".parse().unwrap();
    lb.runtime.apply(config(cfg)).await.expect("reload");
    let moved = lb.runtime.local_addrs().await["test"];
    assert_eq!(moved.ip().to_string(), "127.0.0.2");
    assert_eq!(who(moved).await, "a");
    assert!(refused(lb.addr).await, "the old address still accepts");
    still_echoes(&mut held).await;
    finishes(held).await;
}

#[tokio::test]
async fn shutdown_lets_a_connection_finish_within_the_grace_period() {
    let a = TestBackend::named("a").await;
    let lb = Arc::new(Sluice::start(server(BalanceKind::RoundRobin, vec![a.spec()])).await);
    let (_, mut held) = hello(lb.addr, None).await;
    let started = Instant::now();
    let shutdown = {
        let lb = Arc::clone(&lb);
        tokio::spawn(async move {
            lb.runtime
                .shutdown(Duration::from_secs(5), std::future::pending())
                .await
        })
    };
    eventually("new connections are refused", || refused(lb.addr)).await;
    still_echoes(&mut held).await;
    finishes(held).await;
    let clean = tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returns")
        .unwrap();
    assert!(clean, "every connection finished in time");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait out the grace"
    );
}

#[tokio::test]
async fn shutdown_closes_a_connection_that_outlives_the_grace_period() {
    let a = TestBackend::named("a").await;
    let lb = Sluice::start(server(BalanceKind::RoundRobin, vec![a.spec()])).await;
    let (_, mut held) = hello(lb.addr, None).await;
    let started = Instant::now();
    let clean = lb
        .runtime
        .shutdown(Duration::from_millis(300), std::future::pending())
        .await;
    assert!(!clean, "the grace period ran out");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(read_until_closed(&mut held, Duration::from_secs(1))
        .await
        .is_empty());
}

#[tokio::test]
async fn shutdown_grace_also_bounds_connections_still_connecting() {
    let (_hole, addr, _fillers) = black_hole().await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![spec_of(addr)]);
    cfg.backend_connection_timeout = Some(Duration::from_secs(30));
    let lb = Sluice::start(cfg).await;
    let mut s = connect_from(lb.addr, None).await;
    eventually("Sluice is dialing the backend", || async {
        lb.active(0).await == 1
    })
    .await;
    let started = Instant::now();
    assert!(
        !lb.runtime
            .shutdown(Duration::from_millis(300), std::future::pending())
            .await
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert_closed_without_data(&mut s, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn reload_that_cannot_bind_changes_nothing() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    let lb = Sluice::start(cfg.clone()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut moved = server(BalanceKind::RoundRobin, vec![b.spec()]);
    moved.bind = taken.local_addr().unwrap().into();
    let mut next = two_servers(cfg.clone(), Some(server(BalanceKind::RoundRobin, vec![])));
    next.servers.insert("test".into(), moved);
    assert!(lb.runtime.apply(next).await.is_err(), "address in use");
    assert_eq!(lb.runtime.config().await.servers["test"], cfg);
    assert!(
        lb.runtime.server("other").await.is_none(),
        "nothing half-applied"
    );
    assert_eq!(who(lb.addr).await, "a");
}

#[tokio::test]
async fn reloaded_access_rules_apply_to_new_clients_only() {
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    let lb = Sluice::start(cfg.clone()).await;
    let client: std::net::IpAddr = "127.0.5.5".parse().unwrap();
    let (_, mut held) = hello(lb.addr, Some(client)).await;

    cfg.access = Some(sluice::acl::Acl {
        default: sluice::acl::Action::Allow,
        rules: vec!["deny 127.0.5.0/24".parse().unwrap()],
    });
    lb.runtime.apply(config(cfg)).await.expect("reload");
    let mut denied = connect_from(lb.addr, Some(client)).await;
    assert_closed_without_data(&mut denied, Duration::from_secs(1)).await;
    assert_eq!(who(lb.addr).await, "a", "other clients still served");
    still_echoes(&mut held).await;
    finishes(held).await;
}

/// A `bind` host name is kept by validation and resolved when its server starts: one that
/// resolves is listened on; one that does not keeps the server from starting, and the
/// error names the server and the name. A running configuration is left as it was.
#[tokio::test]
async fn a_bind_host_name_is_resolved_when_its_server_starts() {
    let a = TestBackend::named("a").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![a.spec()]);
    cfg.bind = "localhost:0".parse().expect("a host name");
    let lb = Sluice::start(cfg.clone()).await;
    let addr = lb.runtime.local_addrs().await["test"];
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(who(addr).await, "a");

    cfg.bind = "no-such-host.invalid:0".parse().expect("a host name");
    let error = lb
        .runtime
        .apply(config(cfg.clone()))
        .await
        .expect_err("a name that does not resolve");
    let expected = "server test: cannot resolve \"no-such-host.invalid\" in bind \
                    \"no-such-host.invalid:0\": ";
    assert!(error.to_string().starts_with(expected), "{error}");
    assert_eq!(who(addr).await, "a", "the running server is untouched");
    let error = sluice::runtime::Runtime::start_with_workers(config(cfg), 1)
        .await
        .err()
        .expect("nothing starts");
    assert!(error.to_string().starts_with(expected), "{error}");
}
