//! The real binary with real `dig` (Debian package bind9-dnsutils), which asks every
//! query from a new source port: a dead backend's refusals end their sessions at once
//! and mark it down, and under a lowered descriptor limit, sessions of a backend that
//! never answers give way to new clients. Counters are read from `/metrics`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::process::{bound, spawn_logged, SluiceProcess};
use crate::support::servers::Dnsmasq;
use crate::support::udp::{client, UdpBackend, UdpStreamer};
use crate::support::{eventually, http, WAIT};

/// A UDP port nothing listens on (bound, then released).
fn dead_udp_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address")
}

/// `[servers.NAME]`: UDP on a port of its own (port 0: a port picked beforehand could be
/// bound by another test's Sluice meanwhile, and with `SO_REUSEPORT` the two would
/// silently share its datagrams), round robin over `backends`, then `extra`
/// lines.
fn udp_server(name: &str, backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{b} weight=1\""))
        .collect();
    format!(
        "[servers.{name}]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         balance = \"roundrobin\"\n{extra}\n\
         [servers.{name}.discovery]\nkind = \"static\"\nstatic_list = [{}]\n\n",
        list.join(", ")
    )
}

/// The start of a configuration: metrics on a port of its own, and a server `stream` in
/// front of `echo` for a client to stream through.
fn preamble(echo: SocketAddr) -> String {
    format!(
        "shutdown_timeout = \"1s\"\n\n[metrics]\nenabled = true\nbind = \"127.0.0.1:0\"\n\n{}",
        udp_server("stream", &[echo], "client_idle_timeout = \"30s\"")
    )
}

/// `dig` asking `server` once for `name`'s A record, answer only.
fn dig(server: SocketAddr, name: &str) -> Child {
    Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, "A"])
        .args(["+short", "+tries=1", "+timeout=5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run dig (Debian package bind9-dnsutils; scripts/test installs it)")
}

/// What `dig` printed, once it succeeded.
async fn answer(dig: Child) -> String {
    let out = tokio::time::timeout(WAIT, dig.wait_with_output())
        .await
        .expect("dig finished in time")
        .expect("dig ran");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "dig failed: {stdout}");
    stdout
}

/// The value of the sample `name{labels…}` in an exposition (labels in any order).
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    exposition.lines().find_map(|line| {
        let (head, value) = line.rsplit_once(' ')?;
        let (metric, rest) = head.split_once('{')?;
        let inner = rest.strip_suffix('}')?;
        let matches = metric == name
            && labels
                .iter()
                .all(|(k, v)| inner.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if matches {
            value.parse().ok()
        } else {
            None
        }
    })
}

async fn scrape(metrics: SocketAddr) -> String {
    http::get(metrics, "/metrics").await.body
}

/// Reads one sample now; panics if it is missing.
async fn read(metrics: SocketAddr, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = scrape(metrics).await;
    sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

#[tokio::test]
async fn dig_through_the_binary_loses_only_the_queries_that_mark_a_dead_backend_down() {
    const PASSIVE_FAILS: u64 = 2;
    const QUERIES: usize = 12;
    let dns = Dnsmasq::start(&["--host-record=alpha.sluice.test,192.0.2.10".to_owned()]).await;
    let dead = dead_udp_port();
    let echo = UdpBackend::named("echo").await;
    // The check, run hourly, does not move either backend during the test.
    let health = format!(
        "[servers.dns.healthcheck]\nkind = \"udp\"\ninterval = \"1h\"\ntimeout = \"1s\"\n\
         passive_fails = {PASSIVE_FAILS}\n\
         udp_send = '\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x01'\n"
    );
    let toml = format!(
        "{}{}[servers.dns.udp]\nmax_responses = 1\n\n{health}",
        preamble(echo.addr),
        udp_server("dns", &[dns.addr, dead], ""),
    );
    let sluice = SluiceProcess::start(&toml).await;
    let metrics = sluice.metrics();
    let listen = sluice.server("dns");
    let stream = sluice.server("stream");
    let streamer = UdpStreamer::start(stream, 3, Duration::from_millis(2)).await;
    eventually("the stream flows", || async { streamer.verified() > 0 }).await;
    let dead_key = dead.to_string();
    let dead_labels = [("server", "dns"), ("backend", dead_key.as_str())];
    let failures = "sluice_backend_connect_failures_total";
    let mut lost = Vec::new();
    for i in 0..QUERIES {
        let before = read(metrics, failures, &dead_labels).await;
        let query = dig(listen, "alpha.sluice.test");
        // Its answer, or the dead backend counting the refusal that ended its session
        // (then dig, which would wait for its timeout, is stopped).
        let refused = async {
            while read(metrics, failures, &dead_labels).await == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            printed = answer(query) => assert_eq!(printed, "192.0.2.10", "query {i}"),
            () = refused => lost.push(i),
        }
        eventually("the query's session closed", || async {
            let text = scrape(metrics).await;
            sample(&text, "sluice_connections_active", &[("server", "dns")]) == Some(0)
        })
        .await;
    }
    assert_eq!(lost.len() as u64, PASSIVE_FAILS, "lost: {lost:?}");
    assert!(
        lost.iter().all(|&i| i < 2 * PASSIVE_FAILS as usize),
        "{lost:?}"
    );
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, failures, &dead_labels), Some(PASSIVE_FAILS));
    assert_eq!(
        sample(&text, "sluice_backend_up", &dead_labels),
        Some(0),
        "{text}"
    );
    let live_key = dns.addr.to_string();
    let live_labels = [("server", "dns"), ("backend", live_key.as_str())];
    assert_eq!(sample(&text, "sluice_backend_up", &live_labels), Some(1));
    assert_eq!(sample(&text, failures, &live_labels), Some(0));
    let log = sluice.log();
    assert!(
        log.contains("backend marked down after consecutive connect failures"),
        "{log}"
    );
    assert!(streamer.finish().await.expect("the stream kept flowing") > 0);
}

#[tokio::test]
async fn under_a_low_descriptor_limit_the_binary_answers_new_clients_past_silent_sessions() {
    // 512 descriptors: a budget of 256 UDP sessions (half is kept in reserve). Three
    // times that many one-shot clients of a backend that never answers, then dig
    // through another server: answered at once, each new session taking the descriptor
    // of the oldest silent one. Sockets really close: no datagram is ever dropped for
    // want of a descriptor, the kernel's limit included.
    const NOFILE: u64 = 512;
    const BUDGET: usize = 256;
    const FILLERS: usize = 3 * BUDGET;
    let dns = Dnsmasq::start(&["--host-record=beta.sluice.test,192.0.2.11".to_owned()]).await;
    let silent = UdpBackend::start("silent", "127.0.0.1:0", 0).await;
    let echo = UdpBackend::named("echo").await;
    let one_answer = "[servers.NAME.udp]\nmax_responses = 1\n\n";
    let toml = format!(
        "{}{}{}{}{}",
        preamble(echo.addr),
        udp_server("dns", &[dns.addr], ""),
        one_answer.replace("NAME", "dns"),
        udp_server("silent", &[silent.addr], ""),
        one_answer.replace("NAME", "silent"),
    );
    let sluice = SluiceProcess::start_file("sluice.toml", &toml, Some(NOFILE)).await;
    let metrics = sluice.metrics();
    let log = sluice.log();
    assert!(
        log.contains(&format!("limit={NOFILE}")) && log.contains(&format!("udp_sessions={BUDGET}")),
        "{log}"
    );
    let listen = sluice.server("dns");
    let quiet = sluice.server("silent");
    let stream = sluice.server("stream");
    let streamer = UdpStreamer::start(stream, 5, Duration::from_millis(2)).await;
    eventually("the stream flows", || async { streamer.verified() > 0 }).await;

    // In waves, so the listening sockets' receive queues never overflow (the kernel
    // caps their size at net.core.rmem_max for an unprivileged process).
    let mut fillers = Vec::with_capacity(FILLERS);
    for wave in 0..FILLERS / 64 {
        for i in 0..64 {
            let socket = client("127.0.0.1:0").await;
            socket
                .send_to(format!("filler {wave}.{i}").as_bytes(), quiet)
                .await
                .expect("send");
            fillers.push(socket);
        }
        let sent = fillers.len();
        eventually("the wave reached the silent backend", || async {
            silent.received() == sent
        })
        .await;
    }
    let evicted = |server: &'static str| async move {
        let labels = [("server", server), ("reason", "no_descriptor")];
        read(metrics, "sluice_udp_sessions_evicted_total", &labels).await
    };
    // The stream's session holds one descriptor of the budget.
    let filled = (FILLERS - (BUDGET - 1)) as u64;
    eventually("the oldest silent sessions evicted", || async {
        evicted("silent").await == filled
    })
    .await;
    for i in 0..5 {
        let printed = answer(dig(listen, "beta.sluice.test")).await;
        assert_eq!(printed, "192.0.2.11", "query {i}");
    }
    assert!(
        evicted("silent").await > filled,
        "the digs took descriptors"
    );
    assert_eq!(evicted("dns").await, 0);
    assert_eq!(evicted("stream").await, 0);
    let text = scrape(metrics).await;
    for server in ["silent", "dns", "stream"] {
        let labels = [("server", server), ("reason", "no_descriptor")];
        assert_eq!(
            sample(&text, "sluice_udp_dropped_total", &labels),
            Some(0),
            "{server}: {text}"
        );
    }
    assert!(
        streamer
            .finish()
            .await
            .expect("the stream kept its session")
            > 0
    );
    drop(fillers);
}

#[tokio::test]
async fn the_issue_s_quick_mode_command_ends_each_refused_session_at_once() {
    // `sluice udp … --max-responses 1` has no health check, so passive health is off
    // and round robin keeps sending every other new session to the dead backend: that
    // query is lost (dig would ask again after its timeout), but its session ends as
    // the ICMP report arrives, logged as backend_error, instead of after 60 s.
    const QUERIES: usize = 6;
    let dns = Dnsmasq::start(&["--host-record=gamma.sluice.test,192.0.2.12".to_owned()]).await;
    let dead = dead_udp_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("sluice.log");
    let targets = format!("{},{dead}", dns.addr);
    let _sluice = spawn_logged(
        &[
            "udp",
            "--listen",
            "127.0.0.1:0",
            "--targets",
            &targets,
            "--max-responses",
            "1",
            "--threads",
            "2",
        ],
        &log_path,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let listen = bound(log, "udp").await;
    let refusals = || log().matches("reason=\"backend_error\"").count();
    let (mut answered, mut lost) = (0, 0);
    for i in 0..QUERIES {
        let before = refusals();
        let query = dig(listen, "gamma.sluice.test");
        let refused = async {
            while refusals() == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            printed = answer(query) => {
                assert_eq!(printed, "192.0.2.12", "query {i}");
                answered += 1;
            }
            () = refused => lost += 1,
        }
    }
    assert_eq!((answered, lost), (QUERIES / 2, QUERIES / 2), "{}", log());
    let log = log();
    let dead_sessions = log
        .lines()
        .filter(|line| line.contains(&format!("backend=\"{dead}\"")))
        .collect::<Vec<_>>();
    assert_eq!(dead_sessions.len(), QUERIES / 2, "{log}");
    assert!(
        dead_sessions
            .iter()
            .all(|line| line.contains("reason=\"backend_error\"")),
        "{log}"
    );
}
