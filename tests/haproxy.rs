//! HAProxy configurations run by the real binary (`sluice -c FILE.cfg`): the L4 example
//! users copy, relaying round-robin to real backends; an SNI router; and the classic
//! Redis `tcp-check` configuration in front of a real primary and replica, followed
//! through a failover.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use crate::support::process::{run_sluice, write_file, SluiceProcess};
use crate::support::resp::redis_through;
use crate::support::servers::{redis_command, start_redis};
use crate::support::tls::client_hello_in_records;
use crate::support::{
    assert_closed_without_data, connect_from, eventually, tally, who, TestBackend, WAIT,
};

/// The fixture of the L4 example, on port 0 (Sluice logs the port it gets) and in front
/// of `backends` instead of its own loopback ports.
fn seed_example(backends: &[SocketAddr]) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/configs/haproxy/valid/seed_l4.cfg"
    );
    let mut text = std::fs::read_to_string(path).expect("the seed example's fixture");
    text = text.replace("127.0.0.1:8443", "127.0.0.1:0");
    for (i, addr) in backends.iter().enumerate() {
        text = text.replace(&format!("127.0.0.1:900{}", i + 1), &addr.to_string());
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haproxy_l4_example_relays_round_robin() {
    let edges = [
        TestBackend::named("edge1").await,
        TestBackend::named("edge2").await,
        TestBackend::named("edge3").await,
    ];
    let addrs: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();
    let sluice = SluiceProcess::start_file("haproxy.cfg", &seed_example(&addrs), None).await;
    let front = sluice.server("tcp_front");
    let mut names = Vec::new();
    for _ in 0..9 {
        names.push(who(front).await);
    }
    // Each backend in turn: every round of three holds all three, in the same order.
    let counts = tally(names.clone());
    assert_eq!(counts.len(), 3, "{names:?}");
    assert!(counts.values().all(|&n| n == 3), "{names:?}");
    assert_eq!(names[0..3], names[3..6], "{names:?}");
    assert_eq!(names[3..6], names[6..9], "{names:?}");
}

#[tokio::test]
async fn sluice_check_reports_an_haproxy_file_by_line_and_directive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = write_file(
        dir.path(),
        "bad.cfg",
        "global\n    daemon\n\nfrontend web\n    bind :8080\n    mode http\n    \
         default_backend app\n\nbackend app\n    server a1 10.0.0.1:80 weight x\n",
    );
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &bad]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{bad}:6:10: frontend web: mode http: Sluice balances TCP only; write mode tcp"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{bad}:10:34: backend app: server a1: weight: expected a number 0-256, found \"x\""
        )),
        "{stderr}"
    );

    let good = write_file(
        dir.path(),
        "good.cfg",
        &seed_example(&[
            "127.0.0.1:9001".parse().expect("address"),
            "127.0.0.1:9002".parse().expect("address"),
            "127.0.0.1:9003".parse().expect("address"),
        ]),
    );
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &good]).await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("server tcp_front: tcp on 127.0.0.1:0, balance weight, 3 backend(s), ping check every 2s"), "{stdout}");
}

/// An SNI router as HAProxy users write it, in front of `api`, `apps` and `web`.
fn sni_router(api: SocketAddr, apps: SocketAddr, web: SocketAddr) -> String {
    format!(
        "defaults
    mode tcp
    timeout connect 1s

frontend tls_in
    bind 127.0.0.1:0
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    tcp-request content reject
    acl is_api req_ssl_sni -i api.example.com
    use_backend api if is_api
    use_backend apps if {{ req_ssl_sni -m end .apps.example.com }}
    default_backend web

backend api
    server api1 {api}

backend apps
    server apps1 {apps}

backend web
    server web1 {web}
"
    )
}

/// The backend a TLS client asking for `name` reaches: the name it greets with.
async fn reached_by(front: SocketAddr, name: &str) -> String {
    let mut stream = connect_from(front, None).await;
    let hello = client_hello_in_records(name, 16 * 1024);
    stream
        .write_all(&hello)
        .await
        .expect("send the ClientHello");
    let mut line = String::new();
    timeout(WAIT, BufReader::new(stream).read_line(&mut line))
        .await
        .expect("a greeting in time")
        .expect("read the greeting");
    line.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haproxy_sni_router_routes_by_server_name() {
    let api = TestBackend::named("api1").await;
    let apps = TestBackend::named("apps1").await;
    let web = TestBackend::named("web1").await;
    let config = sni_router(api.addr, apps.addr, web.addr);
    let sluice = SluiceProcess::start_file("sni.cfg", &config, None).await;
    let front = sluice.server("tls_in");
    assert_eq!(reached_by(front, "api.example.com").await, "api1");
    assert_eq!(reached_by(front, "shop.apps.example.com").await, "apps1");
    assert_eq!(reached_by(front, "www.example.com").await, "web1");
    // What is not a ClientHello is refused, as `tcp-request content reject` says.
    let mut plain = connect_from(front, None).await;
    plain
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    assert_closed_without_data(&mut plain, WAIT).await;
    assert_eq!(web.accepted(), 1, "only the TLS client reached the default");
}

/// The classic HAProxy configuration that sends clients to the Redis primary only.
fn redis_primary(primary: u16, replica: u16) -> String {
    format!(
        r"defaults
    mode tcp
    timeout connect 1s
    timeout client 1m
    timeout server 1m

listen redis
    bind 127.0.0.1:0
    option tcp-check
    tcp-check connect
    tcp-check send PING\r\n
    tcp-check expect string +PONG
    tcp-check send info\ replication\r\n
    tcp-check expect string role:master
    tcp-check send QUIT\r\n
    tcp-check expect string +OK
    server r1 127.0.0.1:{primary} check inter 200ms
    server r2 127.0.0.1:{replica} check inter 200ms
"
    )
}

/// Whether six clients in a row reach the Redis on `port`, as its master, and may write.
async fn all_reach_master(addr: SocketAddr, port: u16) -> bool {
    for i in 0..6 {
        let seen = redis_through(addr, &format!("v{i}")).await;
        if seen.port != port || seen.role != "master" || seen.write != "+OK" {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haproxy_redis_tcp_check_follows_the_primary_through_a_failover() {
    let a = start_redis(None, &[]).await;
    let a_port = a.port.to_string();
    let b = start_redis(None, &["--replicaof", "127.0.0.1", &a_port]).await;
    let sluice = SluiceProcess::start_file("redis.cfg", &redis_primary(a.port, b.port), None).await;
    let front = sluice.server("redis");
    // Both start up (as in HAProxy) until the replica fails its check three times.
    eventually("clients reach only the primary", || {
        all_reach_master(front, a.port)
    })
    .await;

    // Fail over: b becomes the primary, a its replica.
    assert_eq!(
        redis_command(b.port, &["REPLICAOF", "NO", "ONE"]).await,
        "+OK"
    );
    let b_port = b.port.to_string();
    assert_eq!(
        redis_command(a.port, &["REPLICAOF", "127.0.0.1", &b_port]).await,
        "+OK"
    );
    eventually("clients follow to the new primary", || {
        all_reach_master(front, b.port)
    })
    .await;
    assert!(redis_command(a.port, &["SET", "k", "v"])
        .await
        .starts_with("-READONLY"));
}
