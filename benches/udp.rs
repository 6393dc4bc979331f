//! UDP requests and responses through Sluice on loopback, in-process: 256 clients each
//! send one datagram and read its echo, per iteration. Within long-lived sessions (the
//! steady state of game or streaming traffic), and with a new session per request
//! (`max_responses = 1`, as for DNS), so the difference is what opening and closing 256
//! sessions costs (a socket each, its connect, its event-loop registration, its task).
//!
//! `cargo bench --bench udp -- --quick`

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;
use sluice::config::{Config, DiscoveryConfig, Protocol, ServerConfig, UdpConfig};
use sluice::runtime::Runtime;

/// Clients per iteration.
const CLIENTS: usize = 256;

fn server(backend: SocketAddr, max_responses: Option<u32>) -> ServerConfig {
    ServerConfig {
        protocol: Protocol::Udp,
        balance: BalanceKind::RoundRobin,
        client_idle_timeout: Some(Duration::from_secs(30)),
        connect_attempts: 1,
        udp: UdpConfig {
            max_requests: None,
            max_responses,
        },
        ..ServerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            DiscoveryConfig::Static {
                backends: vec![BackendSpec::new("127.0.0.1", backend.port())].into(),
            },
        )
    }
}

fn round_trips(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // An echo backend on its own thread.
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind backend");
    let backend_addr = backend.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..len], from);
        }
    });
    let mut group = c.benchmark_group("udp_round_trip");
    for (name, max_responses) in [("same_session", None), ("session_per_request", Some(1))] {
        let config = Config {
            servers: [("bench".to_owned(), server(backend_addr, max_responses))]
                .into_iter()
                .collect(),
            ..Config::default()
        };
        let runtime = rt
            .block_on(Runtime::start_with_workers(config, 1))
            .expect("start sluice");
        let addr = rt.block_on(runtime.local_addrs())["bench"];
        let clients: Vec<std::net::UdpSocket> = (0..CLIENTS)
            .map(|_| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                socket
            })
            .collect();
        let mut buf = [0u8; 2048];
        group.throughput(criterion::Throughput::Elements(CLIENTS as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for client in &clients {
                    client.send_to(b"0123456789abcdef", addr).expect("send");
                }
                for client in &clients {
                    client.recv(&mut buf).expect("reply");
                }
            })
        });
        rt.block_on(runtime.shutdown(Duration::from_secs(5), std::future::pending()));
    }
    group.finish();
}

criterion_group!(benches, round_trips);
criterion_main!(benches);
