//! `GET /metrics`: a known amount of traffic, refusals and failures, then exact counts
//! read back over HTTP from the Prometheus text.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::acl::{Acl, Action};
use sluice::backend::AdminState;
use sluice::balance::BalanceKind;
use sluice::config::{ApiConfig, Config, Protocol, ServerConfig, UdpConfig};
use sluice::control::Control;
use sluice::proxy::udp::UdpDrop;
use sluice::runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::support::*;

/// Echo clients served one after the other.
const CLIENTS: u64 = 5;
/// Bytes each client sends (and gets back).
const K: usize = 1_000;

/// Sluice in-process with its metrics served on a loopback port.
struct Served {
    runtime: Arc<Runtime>,
    metrics: SocketAddr,
}

impl Served {
    async fn start(config: Config) -> Served {
        init_tracing();
        let runtime = Arc::new(Runtime::start(config).await.expect("start sluice"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics = listener.local_addr().expect("metrics address");
        let config = sluice::config::MetricsConfig::plain(metrics.into());
        tokio::spawn(sluice::metrics::serve(
            listener,
            config,
            Arc::clone(&runtime),
            tokio_util::sync::CancellationToken::new(),
        ));
        Served { runtime, metrics }
    }

    async fn addr(&self, server: &str) -> SocketAddr {
        self.runtime.local_addrs().await[server]
    }

    /// Waits until `server` has no connection left, so every counter of the connections
    /// it served is final.
    async fn settled(&self, server: &str) {
        let shared = self.runtime.server(server).await.expect("server");
        eventually(&format!("{server} has no open connection"), || async {
            shared.stats.active.load(Ordering::Relaxed) == 0
        })
        .await;
    }

    async fn scrape(&self) -> Exposition {
        let response = http::get(self.metrics, "/metrics").await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some(sluice::metrics::CONTENT_TYPE)
        );
        Exposition::parse(&response.body)
    }
}

type Labels = BTreeMap<String, String>;

/// Samples of a scrape by name and label set.
#[derive(Debug)]
struct Exposition {
    samples: HashMap<String, Vec<(Labels, f64)>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
        let mut samples: HashMap<String, Vec<_>> = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, Labels::new()),
            };
            samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Exposition { samples }
    }

    /// The value of the sample `name{labels}`, if there is one.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .get(name)?
            .iter()
            .find(|(l, _)| *l == wanted)
            .map(|(_, v)| *v)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?} in {:#?}",
                self.samples.get(name)
            )
        })
    }

    /// Asserts the exact value of `name{labels}`.
    fn expect(&self, name: &str, labels: &[(&str, &str)], want: u64) {
        assert_eq!(self.get(name, labels), want as f64, "{name}{labels:?}");
    }
}

/// `a="x",b="y"`: the label values Sluice writes here need no unescaping.
fn parse_labels(text: &str) -> Labels {
    text.split("\",")
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label {pair:?}"));
            (key.to_owned(), value.trim_end_matches('"').to_owned())
        })
        .collect()
}

/// Two distinct addresses nothing listens on.
fn two_dead_addrs() -> (SocketAddr, SocketAddr) {
    let first = dead_addr();
    loop {
        let second = dead_addr();
        if second != first {
            return (first, second);
        }
    }
}

/// Sends `K` bytes, then reads them back (the backend echoes).
async fn round_trip(stream: &mut TcpStream) {
    let sent = vec![7u8; K];
    stream.write_all(&sent).await.expect("send");
    let mut back = vec![0u8; K];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, sent);
}

/// Half-closes and expects the backend's end of stream with nothing more.
async fn finish(mut stream: TcpStream) {
    stream.shutdown().await.expect("half-close");
    assert!(read_to_end(&mut stream).await.is_empty());
}

#[tokio::test]
async fn counters_match_the_traffic_exactly() {
    let echo = TestBackend::echo().await;
    let echo_key = echo.addr.to_string();
    let mut test = server(BalanceKind::RoundRobin, vec![echo.spec()]);
    test.max_connections = Some(2);
    test.access = Some(Acl {
        default: Action::Allow,
        rules: vec!["deny 127.0.0.99".parse().expect("rule")],
    });
    let (dead_a, dead_b) = two_dead_addrs();
    let dead = server(
        BalanceKind::RoundRobin,
        vec![spec_of(dead_a), spec_of(dead_b)],
    );
    let (_hole, hole, _fillers) = black_hole().await;
    let mut slow = server(BalanceKind::RoundRobin, vec![spec_of(hole)]);
    slow.backend_connection_timeout = Some(Duration::from_millis(200));
    slow.connect_attempts = 1;
    let mut cfg = config(test);
    cfg.servers.insert("dead".to_owned(), dead);
    cfg.servers.insert("slow".to_owned(), slow);
    let lb = Served::start(cfg.clone()).await;
    let addr = lb.addr("test").await;

    // Served one at a time, so none meets the connection limit.
    for _ in 0..CLIENTS {
        let mut client = connect_from(addr, None).await;
        round_trip(&mut client).await;
        finish(client).await;
        lb.settled("test").await;
    }
    // Two held open fill the limit; a third is refused.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = connect_from(addr, None).await;
        round_trip(&mut client).await;
        held.push(client);
    }
    let mut excess = connect_from(addr, None).await;
    assert_closed_without_data(&mut excess, WAIT).await;
    for client in held {
        finish(client).await;
    }
    lb.settled("test").await;
    let mut denied = connect_from(addr, Some("127.0.0.99".parse().expect("ip"))).await;
    assert_closed_without_data(&mut denied, WAIT).await;

    // Both dead backends are dialled once (the second dial is a retry), then the
    // client is closed; with both taken out of rotation the next finds no backend.
    let dead_addr = lb.addr("dead").await;
    let mut client = connect_from(dead_addr, None).await;
    assert_closed_without_data(&mut client, WAIT).await;
    lb.settled("dead").await;
    let (mut disabled, mut draining) = (spec_of(dead_a), spec_of(dead_b));
    disabled.admin = AdminState::Disabled;
    draining.admin = AdminState::Draining;
    let out_of_rotation = server(BalanceKind::RoundRobin, vec![disabled, draining]);
    cfg.servers.insert("dead".to_owned(), out_of_rotation);
    lb.runtime.apply(cfg).await.expect("reload");
    let mut client = connect_from(dead_addr, None).await;
    assert_closed_without_data(&mut client, WAIT).await;
    lb.settled("dead").await;

    let mut client = connect_from(lb.addr("slow").await, None).await;
    assert_closed_without_data(&mut client, WAIT).await;
    lb.settled("slow").await;
    lb.settled("test").await;

    let m = lb.scrape().await;
    let test = [("server", "test")];
    m.expect("sluice_connections_accepted_total", &test, CLIENTS + 4);
    for (reason, n) in [
        ("acl", 1),
        ("max_connections", 1),
        ("no_backend", 0),
        ("connect_failed", 0),
    ] {
        let labels = [("server", "test"), ("reason", reason)];
        m.expect("sluice_connections_refused_total", &labels, n);
    }
    m.expect("sluice_connect_retries_total", &test, 0);
    m.expect("sluice_connections_active", &test, 0);
    m.expect("sluice_backends", &test, 1);

    let relayed = CLIENTS + 2;
    let bytes = relayed * K as u64;
    let b = [("server", "test"), ("backend", echo_key.as_str())];
    m.expect("sluice_backend_sent_bytes_total", &b, bytes);
    m.expect("sluice_backend_received_bytes_total", &b, bytes);
    m.expect("sluice_backend_connect_failures_total", &b, 0);
    m.expect("sluice_backend_connect_timeouts_total", &b, 0);
    m.expect("sluice_backend_connections_active", &b, 0);
    m.expect("sluice_backend_up", &b, 1);
    for histogram in [
        "sluice_backend_connect_duration_seconds",
        "sluice_connection_duration_seconds",
    ] {
        m.expect(&format!("{histogram}_count"), &b, relayed);
        let inf = [b[0], b[1], ("le", "+Inf")];
        m.expect(&format!("{histogram}_bucket"), &inf, relayed);
        assert!(m.get(&format!("{histogram}_sum"), &b) > 0.0, "{histogram}");
        assert_cumulative(&m, &format!("{histogram}_bucket"), &b);
    }
    for (result, n) in [("pass", 0), ("fail", 0)] {
        let labels = [b[0], b[1], ("result", result)];
        m.expect("sluice_health_checks_total", &labels, n);
    }
    assert_state(&m, &b, "up");

    let dead = [("server", "dead")];
    m.expect("sluice_connections_accepted_total", &dead, 2);
    for (reason, n) in [
        ("acl", 0),
        ("max_connections", 0),
        ("no_backend", 1),
        ("connect_failed", 1),
    ] {
        let labels = [("server", "dead"), ("reason", reason)];
        m.expect("sluice_connections_refused_total", &labels, n);
    }
    m.expect("sluice_connect_retries_total", &dead, 1);
    m.expect("sluice_backends", &dead, 2);
    for (backend, state) in [(dead_a, "disabled"), (dead_b, "draining")] {
        let key = backend.to_string();
        let b = [("server", "dead"), ("backend", key.as_str())];
        m.expect("sluice_backend_connect_failures_total", &b, 1);
        m.expect("sluice_backend_connect_timeouts_total", &b, 0);
        m.expect("sluice_backend_connect_duration_seconds_count", &b, 0);
        m.expect("sluice_connection_duration_seconds_count", &b, 0);
        m.expect("sluice_backend_sent_bytes_total", &b, 0);
        // Taken out of rotation, not unhealthy.
        m.expect("sluice_backend_up", &b, 1);
        assert_state(&m, &b, state);
    }

    let slow = [("server", "slow")];
    let hole_key = hole.to_string();
    let b = [("server", "slow"), ("backend", hole_key.as_str())];
    m.expect("sluice_connections_accepted_total", &slow, 1);
    m.expect(
        "sluice_connections_refused_total",
        &[("server", "slow"), ("reason", "connect_failed")],
        1,
    );
    m.expect("sluice_connect_retries_total", &slow, 0);
    m.expect("sluice_backend_connect_failures_total", &b, 1);
    m.expect("sluice_backend_connect_timeouts_total", &b, 1);
    m.expect("sluice_backend_connect_duration_seconds_count", &b, 0);

    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("SLUICE_COMMIT")),
        ("build_date", env!("SLUICE_BUILD_DATE")),
    ];
    m.expect("sluice_build_info", &build, 1);
}

#[tokio::test]
async fn health_checks_are_counted_by_result() {
    let live = TestBackend::named("live").await;
    let gone = dead_addr();
    let mut cfg = server(BalanceKind::RoundRobin, vec![live.spec(), spec_of(gone)]);
    cfg.healthcheck = ping_check(Duration::from_millis(20), 1, 1);
    let lb = Served::start(config(cfg)).await;
    let shared = lb.runtime.server("test").await.expect("server");
    let pool = shared.pool.load_full();
    eventually("a pass and a failure", || async {
        let live = &pool.backends()[0].state.stats;
        let gone = &pool.backends()[1];
        live.checks_passed.load(Ordering::Relaxed) > 0 && !gone.is_healthy()
    })
    .await;

    let m = lb.scrape().await;
    let live_key = live.addr.to_string();
    let gone_key = gone.to_string();
    let check = |backend: &str, result: &str| {
        m.get(
            "sluice_health_checks_total",
            &[("server", "test"), ("backend", backend), ("result", result)],
        )
    };
    assert!(check(&live_key, "pass") >= 1.0);
    assert_eq!(check(&live_key, "fail"), 0.0);
    assert_eq!(check(&gone_key, "pass"), 0.0);
    assert!(check(&gone_key, "fail") >= 1.0);
    let b = [("server", "test"), ("backend", gone_key.as_str())];
    m.expect("sluice_backend_up", &b, 0);
    assert_state(&m, &b, "down");
    // Healthy at start (no initial_status), down after its first failure: one transition;
    // the live one never changed.
    m.expect("sluice_backend_health_transitions_total", &b, 1);
    let l = [("server", "test"), ("backend", live_key.as_str())];
    m.expect("sluice_backend_health_transitions_total", &l, 0);
}

#[tokio::test]
async fn counters_follow_backends_across_reloads() {
    let a = TestBackend::echo().await;
    let b = TestBackend::echo().await;
    let (a_key, b_key) = (a.addr.to_string(), b.addr.to_string());
    let lb = Served::start(config(server(BalanceKind::RoundRobin, vec![a.spec()]))).await;
    let mut client = connect_from(lb.addr("test").await, None).await;
    round_trip(&mut client).await;
    finish(client).await;
    lb.settled("test").await;

    let both = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    lb.runtime.apply(config(both)).await.expect("reload");
    let m = lb.scrape().await;
    let sent = |key: &str| {
        m.find(
            "sluice_backend_sent_bytes_total",
            &[("server", "test"), ("backend", key)],
        )
    };
    assert_eq!(sent(&a_key), Some(K as f64), "a kept its counters");
    assert_eq!(sent(&b_key), Some(0.0));
    m.expect("sluice_backends", &[("server", "test")], 2);

    let only_b = server(BalanceKind::RoundRobin, vec![b.spec()]);
    lb.runtime.apply(config(only_b)).await.expect("reload");
    let m = lb.scrape().await;
    let labels = [("server", "test"), ("backend", a_key.as_str())];
    assert_eq!(
        m.find("sluice_backend_up", &labels),
        None,
        "a removed backend leaves the output"
    );
    m.expect("sluice_backends", &[("server", "test")], 1);
    m.expect(
        "sluice_connections_accepted_total",
        &[("server", "test")],
        1,
    );
}

/// A UDP backend that echoes each datagram back, `limit` of them at most.
#[tokio::test]
async fn a_scope_chooses_the_families_of_the_exposition() {
    let backend = TestBackend::named("a").await;
    let served = Served::start(config(server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
    )))
    .await;
    let full = http::get(served.metrics, "/metrics").await;
    assert!(full.body.contains("sluice_backend_up{"), "{}", full.body);
    let servers = http::get(served.metrics, "/metrics?scope=process&scope=server").await;
    assert_eq!(servers.status, 200);
    assert!(servers.body.contains("sluice_connections_accepted_total{"));
    assert!(servers.body.contains("sluice_build_info{"));
    assert!(
        !servers.body.contains("sluice_backend_"),
        "{}",
        servers.body
    );
    Exposition::parse(&servers.body);
    let wrong = http::get(served.metrics, "/metrics?scope=backends").await;
    assert_eq!(wrong.status, 400);
    assert!(
        wrong.body.contains("unknown scope \"backends\""),
        "{}",
        wrong.body
    );
}

async fn udp_echo(limit: usize) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP echo");
    let addr = socket.local_addr().expect("echo address");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        for _ in 0..limit {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

#[tokio::test]
async fn udp_datagrams_are_counted_and_each_reply_ends_its_session() {
    const DATAGRAMS: u64 = 3;
    const LEN: usize = 10;
    let echo = udp_echo(DATAGRAMS as usize).await;
    let echo_key = echo.to_string();
    let udp = ServerConfig {
        protocol: Protocol::Udp,
        udp: UdpConfig {
            max_requests: None,
            max_responses: Some(1),
        },
        proxy_protocol: Default::default(),
        sni: None,
        tls: None,
        backends_tls: None,
        ..server(BalanceKind::RoundRobin, vec![spec_of(echo)])
    };
    let mut cfg = config(udp);
    // A TCP server beside it has no UDP samples and no `udp` in its stats.
    let tcp = server(BalanceKind::RoundRobin, vec![spec_of(dead_addr())]);
    cfg.servers.insert("tcp".to_owned(), tcp);
    let lb = Served::start(cfg).await;
    let control = Arc::new(Control::new(Arc::clone(&lb.runtime), None));
    let api = ApiConfig::plain("127.0.0.1:0".parse().expect("address"));
    let api = sluice::cli::start_api(api, control)
        .await
        .expect("start the API");

    // One client, one datagram at a time: each reply ends its session (max_responses),
    // so the next datagram opens a new one.
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    client
        .connect(lb.addr("test").await)
        .await
        .expect("connect client");
    for i in 0..DATAGRAMS {
        let sent = format!("datagram {i}");
        assert_eq!(sent.len(), LEN);
        client.send(sent.as_bytes()).await.expect("send");
        let mut buf = [0u8; 64];
        let len = timeout(WAIT, client.recv(&mut buf))
            .await
            .expect("reply in time")
            .expect("reply");
        assert_eq!(&buf[..len], sent.as_bytes());
    }
    lb.settled("test").await;

    let m = lb.scrape().await;
    let test = [("server", "test")];
    for direction in ["from_clients", "to_clients"] {
        let labels = [("server", "test"), ("direction", direction)];
        m.expect("sluice_udp_datagrams_total", &labels, DATAGRAMS);
    }
    for reason in UdpDrop::ALL {
        let labels = [("server", "test"), ("reason", reason.as_str())];
        m.expect("sluice_udp_dropped_total", &labels, 0);
    }
    let evicted = [("server", "test"), ("reason", "no_descriptor")];
    m.expect("sluice_udp_sessions_evicted_total", &evicted, 0);
    m.expect("sluice_connections_accepted_total", &test, DATAGRAMS);
    m.expect("sluice_connections_active", &test, 0);
    let b = [("server", "test"), ("backend", echo_key.as_str())];
    let bytes = DATAGRAMS * LEN as u64;
    m.expect("sluice_backend_sent_bytes_total", &b, bytes);
    m.expect("sluice_backend_received_bytes_total", &b, bytes);
    m.expect("sluice_connection_duration_seconds_count", &b, DATAGRAMS);
    for family in [
        "sluice_udp_datagrams_total",
        "sluice_udp_dropped_total",
        "sluice_udp_sessions_evicted_total",
    ] {
        let tcp_samples = m.samples[family]
            .iter()
            .filter(|(labels, _)| labels["server"] == "tcp")
            .count();
        assert_eq!(tcp_samples, 0, "{family} lists the TCP server");
    }

    let stats = http::get(api, "/servers/test/stats").await.json();
    let dropped: serde_json::Map<_, _> = UdpDrop::ALL
        .iter()
        .map(|reason| (reason.as_str().to_owned(), json!(0)))
        .collect();
    assert_eq!(
        stats["udp"],
        json!({
            "datagrams_from_clients": DATAGRAMS,
            "datagrams_to_clients": DATAGRAMS,
            "dropped": dropped,
            "sessions_evicted": { "no_descriptor": 0 },
        }),
        "{stats}"
    );
    assert_eq!(stats["active_connections"], json!(0), "{stats}");
    assert_eq!(
        stats["backends"][0]["stats"]["total_connections"],
        json!(DATAGRAMS)
    );
    assert_eq!(stats["tx_total"], json!(bytes));
    assert_eq!(stats["rx_total"], json!(bytes));
    let tcp_stats = http::get(api, "/servers/tcp/stats").await.json();
    assert!(tcp_stats.get("udp").is_none(), "{tcp_stats}");
}

/// Exactly one of the four `state` samples of a backend is 1: `want`.
fn assert_state(m: &Exposition, backend: &[(&str, &str); 2], want: &str) {
    for state in ["up", "down", "draining", "disabled"] {
        let labels = [backend[0], backend[1], ("state", state)];
        let expected = u64::from(state == want);
        m.expect("sluice_backend_state", &labels, expected);
    }
}

/// Bucket counts never decrease as the bound grows.
fn assert_cumulative(m: &Exposition, name: &str, backend: &[(&str, &str); 2]) {
    let mut buckets: Vec<(f64, f64)> = m.samples[name]
        .iter()
        .filter(|(labels, _)| {
            backend
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(labels, value)| {
            let le = &labels["le"];
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le")
            };
            (bound, *value)
        })
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    assert!(buckets.len() > 1, "{name}: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} not cumulative: {buckets:?}"
    );
}
