//! Active health checks of every kind against real servers on loopback: a check that
//! fails takes its backend out of rotation, and traffic follows when it passes again.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;
use sluice::config::{
    ExecSettings, HealthConfig, HealthKind, HttpSettings, InitialStatus, ProbeExpect,
    ProbeProtocol, ProbeScript, ProbeSettings, TextRegex, TlsFiles, TlsSettings, UdpSettings,
    DEFAULT_HTTP_STATUS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::support::servers::FileServer;
use crate::support::{self, *};

fn check(kind: HealthKind, timeout: Duration) -> HealthConfig {
    HealthConfig {
        kind,
        interval: Duration::from_millis(100),
        timeout,
        fails: 1,
        passes: 1,
        initial_status: InitialStatus::Healthy,
        passive_fails: 0,
    }
}

/// Waits until backend `i` has the given health.
async fn wait_health(sluice: &Sluice, i: usize, healthy: bool) {
    let shared = sluice.shared().await;
    eventually(&format!("backend {i} healthy = {healthy}"), || {
        let up = shared.pool.load().backends()[i].is_healthy();
        async move { up == healthy }
    })
    .await;
}

/// A backend answering `PING\r\n` with `+PONG` while `good` holds (`-ERR` otherwise),
/// and greeting clients that send nothing with its name.
async fn pinged(name: &'static str, good: Arc<AtomicBool>) -> TestBackend {
    TestBackend::serving(name, "127.0.0.1:0", move |mut s| {
        let good = Arc::clone(&good);
        async move {
            let mut buf = [0u8; 6];
            let read = tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut buf));
            if matches!(read.await, Ok(Ok(_))) && &buf == b"PING\r\n" {
                let reply: &[u8] = if good.load(Ordering::SeqCst) {
                    b"+PONG\r\n"
                } else {
                    b"-ERR\r\n"
                };
                let _ = s.write_all(reply).await;
            } else {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn probe_flips_a_backend_and_traffic_follows() {
    let good = Arc::new(AtomicBool::new(true));
    let a = pinged("a", Arc::clone(&good)).await;
    let b = pinged("b", Arc::new(AtomicBool::new(true))).await;
    let probe = ProbeSettings {
        protocol: ProbeProtocol::Tcp,
        script: ProbeScript::Exchange {
            send: b"PING\r\n".to_vec(),
            expect: ProbeExpect::StartsWith(b"+PONG".to_vec()),
        },
        tls: TlsSettings::default(),
    };
    let mut server = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    server.healthcheck = check(HealthKind::Probe(probe), Duration::from_secs(1));
    let sluice = Sluice::start(server).await;
    wait_health(&sluice, 0, true).await;
    good.store(false, Ordering::SeqCst);
    wait_health(&sluice, 0, false).await;
    for _ in 0..4 {
        assert_eq!(who(sluice.addr).await, "b");
    }
    good.store(true, Ordering::SeqCst);
    wait_health(&sluice, 0, true).await;
}

/// Zombie children of this process, from `/proc`.
/// Zombie children of this test process named `name`; other tests of the binary run
/// processes of their own, which may be zombies for a moment before tokio reaps them.
fn zombie_children(name: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_default()
        };
        if field("PPid:") == me && field("State:").starts_with('Z') && field("Name:") == name {
            zombies.push(field("Name:"));
        }
    }
    zombies
}

#[tokio::test]
async fn exec_follows_output_and_kills_a_hanging_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    // One state file per backend port: the script gets the port as its second argument.
    let state = dir.path().join(format!("state-{}", a.addr.port()));
    std::fs::write(&state, "up\n").expect("state");
    let state_b = dir.path().join(format!("state-{}", b.addr.port()));
    std::fs::write(&state_b, "up\n").expect("state");
    let script = dir.path().join("exec-check.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# $1 host, $2 port\ns=$(cat {}/state-$2)\n\
             if [ \"$s\" = hang ]; then sleep 30; fi\necho \"$s\"\n",
            dir.path().display()
        ),
    )
    .expect("script");
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let exec = ExecSettings {
        command: script.display().to_string(),
        positive: "up".into(),
        negative: Some("down".into()),
    };
    let mut server = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    server.healthcheck = check(HealthKind::Exec(exec), Duration::from_millis(300));
    let sluice = Sluice::start(server).await;
    wait_health(&sluice, 0, true).await;
    std::fs::write(&state, "down\n").expect("state");
    wait_health(&sluice, 0, false).await;
    assert_eq!(who(sluice.addr).await, "b");
    std::fs::write(&state, "up\n").expect("state");
    wait_health(&sluice, 0, true).await;
    std::fs::write(&state, "hang\n").expect("state");
    wait_health(&sluice, 0, false).await;
    // A few more timeouts pass: every killed command has been reaped.
    let shared = sluice.shared().await;
    let failed = |s: &sluice::proxy::state::ServerShared| {
        s.pool.load().backends()[0]
            .state
            .stats
            .checks_failed
            .load(Ordering::Relaxed)
    };
    let before = failed(&shared);
    eventually("three more failed checks", || {
        let now = failed(&shared);
        async move { now >= before + 3 }
    })
    .await;
    std::fs::write(&state, "up\n").expect("state");
    wait_health(&sluice, 0, true).await;
    // A killed command is reaped as soon as tokio sees its exit: allow a moment.
    eventually("no zombie left by the exec check", || {
        let zombies = zombie_children("exec-check.sh");
        async move { zombies.is_empty() }
    })
    .await;
}

/// Sluice round-robin over `backends`, checking them with `kind` every 100 ms; backends
/// start `initial`, so a test waiting for the other state sees the check decide.
async fn checked(
    backends: Vec<BackendSpec>,
    kind: HealthKind,
    timeout: Duration,
    initial: InitialStatus,
) -> Sluice {
    let mut server = server(BalanceKind::RoundRobin, backends);
    server.healthcheck = HealthConfig {
        initial_status: initial,
        ..check(kind, timeout)
    };
    Sluice::start(server).await
}

/// An `http` check of `path` accepting 2xx, with no body condition.
fn http_get(path: &str) -> HttpSettings {
    HttpSettings {
        tls: None,
        method: "GET".into(),
        path: path.into(),
        host: None,
        status: vec![DEFAULT_HTTP_STATUS],
        body: None,
        body_regexp: None,
    }
}

/// Asserts that every connection reaches the backend named `name`.
async fn all_go_to(sluice: &Sluice, name: &str) {
    for _ in 0..4 {
        assert_eq!(who(sluice.addr).await, name);
    }
}

/// Asserts that Sluice, its only backend down, closes a client connection unanswered.
async fn turned_away(sluice: &Sluice) {
    let mut client = connect_from(sluice.addr, None).await;
    assert_closed_without_data(&mut client, WAIT).await;
}

/// Asserts that an HTTP request through Sluice reaches nginx and gets `body`.
async fn served(sluice: &Sluice, path: &str, body: &str) {
    let response = support::http::get(sluice.addr, path).await;
    assert_eq!((response.status, response.body.as_str()), (200, body));
}

/// nginx whose default server serves its directory, answers `/teapot` with 418, and
/// `/vhost` with 404, unless asked for the host `health.test`.
async fn nginx() -> FileServer {
    FileServer::start_with(|addr, root| {
        format!(
            "server {{ listen {addr} default_server; root {root};\n\
             location = /teapot {{ return 418 \"short and stout\\n\"; }}\n\
             location = /vhost {{ return 404; }} }}\n\
             server {{ listen {addr}; server_name health.test;\n\
             location = /vhost {{ return 200 \"vhost ok\\n\"; }} }}"
        )
    })
    .await
}

#[tokio::test]
async fn http_follows_what_nginx_serves() {
    let web = nginx().await;
    web.write("health", "status: ok\n");
    let backends = || vec![spec_of(web.addr)];
    let timeout = Duration::from_secs(1);
    let contains = HttpSettings {
        body: Some("ok".into()),
        ..http_get("/health")
    };
    let matches = HttpSettings {
        body_regexp: Some(TextRegex::parse(r"^status: (ok|fine)\b").expect("a valid regex")),
        ..http_get("/health")
    };
    let (by_body, by_regexp) = tokio::join!(
        checked(
            backends(),
            HealthKind::Http(contains),
            timeout,
            InitialStatus::Unhealthy
        ),
        checked(
            backends(),
            HealthKind::Http(matches),
            timeout,
            InitialStatus::Unhealthy
        ),
    );
    wait_health(&by_body, 0, true).await;
    wait_health(&by_regexp, 0, true).await;
    served(&by_body, "/health", "status: ok\n").await;

    // 404: both down, and no traffic goes to nginx.
    web.remove("health");
    wait_health(&by_body, 0, false).await;
    wait_health(&by_regexp, 0, false).await;
    turned_away(&by_body).await;
    web.write("health", "status: ok\n");
    wait_health(&by_body, 0, true).await;
    wait_health(&by_regexp, 0, true).await;
    served(&by_regexp, "/health", "status: ok\n").await;

    // 200, but a body one of them does not accept.
    web.write("health", "status: fine\n");
    wait_health(&by_body, 0, false).await;
    turned_away(&by_body).await;
    wait_health(&by_regexp, 0, true).await;
    served(&by_regexp, "/health", "status: fine\n").await;
    web.write("health", "status: okay\n");
    wait_health(&by_body, 0, true).await;
    wait_health(&by_regexp, 0, false).await;
    web.write("health", "status: ok\n");
    wait_health(&by_regexp, 0, true).await;
}

#[tokio::test]
async fn http_status_ranges_and_host_header() {
    let web = nginx().await;
    let timeout = Duration::from_secs(1);
    let start = |settings: HttpSettings, initial| {
        checked(
            vec![spec_of(web.addr)],
            HealthKind::Http(settings),
            timeout,
            initial,
        )
    };
    let (teapot_rejected, teapot_accepted, vhost, no_vhost) = tokio::join!(
        start(http_get("/teapot"), InitialStatus::Healthy),
        start(
            HttpSettings {
                status: vec![(200, 204), (410, 420)],
                ..http_get("/teapot")
            },
            InitialStatus::Unhealthy
        ),
        start(
            HttpSettings {
                host: Some("health.test".into()),
                body: Some("vhost ok".into()),
                ..http_get("/vhost")
            },
            InitialStatus::Unhealthy
        ),
        start(http_get("/vhost"), InitialStatus::Healthy),
    );
    wait_health(&teapot_rejected, 0, false).await;
    wait_health(&teapot_accepted, 0, true).await;
    wait_health(&vhost, 0, true).await;
    wait_health(&no_vhost, 0, false).await;
}

/// A self-signed certificate for `localhost` expiring at the start of the day `days`
/// from now, written with its key into `dir`.
fn certificate(dir: &Path, name: &str, days: u64) -> TlsFiles {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / 86_400;
    let (year, month, day) = civil_from_days(today + days);
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let files = TlsFiles {
        cert_path: dir.join(format!("{name}.pem")),
        key_path: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&files.key_path, key.serialize_pem()).expect("write key");
    files
}

/// The calendar date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (i32, u8, u8) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

fn tls_settings(server_name: Option<&str>, ca: Option<&Path>, skip_verify: bool) -> TlsSettings {
    TlsSettings {
        server_name: server_name.map(str::to_owned),
        skip_verify,
        ca_path: ca.map(Path::to_path_buf),
    }
}

#[tokio::test]
async fn https_against_nginx_verifies_its_certificate() {
    let certs = tempfile::tempdir().expect("temp dir");
    let files = certificate(certs.path(), "nginx", 365);
    let (cert, key) = (files.cert_path.clone(), files.key_path.clone());
    let web = FileServer::start_with(move |addr, root| {
        format!(
            "server {{ listen {addr} ssl; root {root};\n\
             ssl_certificate {}; ssl_certificate_key {}; }}",
            cert.display(),
            key.display()
        )
    })
    .await;
    web.write("health", "ok\n");
    let https = |tls: TlsSettings| {
        HealthKind::Http(HttpSettings {
            tls: Some(tls),
            body: Some("ok".into()),
            ..http_get("/health")
        })
    };
    let timeout = Duration::from_secs(1);
    let ca = Some(files.cert_path.as_path());
    let (unverified, untrusted, trusted, misnamed) = tokio::join!(
        checked(
            vec![spec_of(web.addr)],
            https(tls_settings(None, None, true)),
            timeout,
            InitialStatus::Unhealthy
        ),
        checked(
            vec![spec_of(web.addr)],
            https(tls_settings(Some("localhost"), None, false)),
            timeout,
            InitialStatus::Healthy
        ),
        checked(
            vec![spec_of(web.addr)],
            https(tls_settings(Some("localhost"), ca, false)),
            timeout,
            InitialStatus::Unhealthy
        ),
        checked(
            vec![spec_of(web.addr)],
            https(tls_settings(Some("other.test"), ca, false)),
            timeout,
            InitialStatus::Healthy
        ),
    );
    wait_health(&unverified, 0, true).await;
    wait_health(&untrusted, 0, false).await;
    wait_health(&trusted, 0, true).await;
    wait_health(&misnamed, 0, false).await;
    // Over TLS too, what nginx serves decides.
    web.remove("health");
    wait_health(&unverified, 0, false).await;
    wait_health(&trusted, 0, false).await;
    turned_away(&unverified).await;
    web.write("health", "ok\n");
    wait_health(&unverified, 0, true).await;
    wait_health(&trusted, 0, true).await;
}

/// A TLS backend presenting `files`; after the handshake it answers
/// `\x16HELLO\r\n` with `+OK v1.2` while `good` holds (`-ERR` otherwise).
async fn tls_backend(files: &TlsFiles, good: Arc<AtomicBool>) -> TestBackend {
    let config = sluice::tls::server_config(files, &[]).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    TestBackend::serving("tls", "127.0.0.1:0", move |stream| {
        let (acceptor, good) = (acceptor.clone(), Arc::clone(&good));
        async move {
            let Ok(Ok(mut tls)) = tokio::time::timeout(WAIT, acceptor.accept(stream)).await else {
                return;
            };
            let mut buf = [0u8; 8];
            let read = tokio::time::timeout(Duration::from_millis(500), tls.read_exact(&mut buf));
            if matches!(read.await, Ok(Ok(_))) && &buf == b"\x16HELLO\r\n" {
                let reply: &[u8] = if good.load(Ordering::SeqCst) {
                    b"+OK v1.2\r\n"
                } else {
                    b"-ERR down\r\n"
                };
                let _ = tls.write_all(reply).await;
                let _ = tls.shutdown().await;
            }
        }
    })
    .await
}

/// Everything logged on this thread while the guard lives (the test's runtime is
/// single-threaded, so that is everything its checks log).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        logs.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self) -> Vec<String> {
        let logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&logs)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn tls_check_passes_and_warns_of_a_certificate_expiring_soon() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let certs = tempfile::tempdir().expect("temp dir");
    let files = certificate(certs.path(), "soon", 3);
    let mut backend = tls_backend(&files, Arc::new(AtomicBool::new(true))).await;
    let ca = Some(files.cert_path.as_path());
    let timeout = Duration::from_secs(1);
    let (verified, misnamed) = tokio::join!(
        checked(
            vec![backend.spec()],
            HealthKind::Tls(tls_settings(Some("localhost"), ca, false)),
            timeout,
            InitialStatus::Unhealthy
        ),
        checked(
            vec![backend.spec()],
            HealthKind::Tls(tls_settings(Some("wrong.test"), ca, false)),
            timeout,
            InitialStatus::Healthy
        ),
    );
    wait_health(&verified, 0, true).await;
    wait_health(&misnamed, 0, false).await;
    let key = backend.addr.to_string();
    eventually("a warning about the expiry naming the backend", || {
        let warned = logs.lines().iter().any(|l| {
            l.contains("WARN") && l.contains("expires within 14 days") && l.contains(&key)
        });
        async move { warned }
    })
    .await;
    // Once per certificate, however many checks pass.
    let shared = verified.shared().await;
    let passed = || {
        shared.pool.load().backends()[0]
            .state
            .stats
            .checks_passed
            .load(Ordering::Relaxed)
    };
    let before = passed();
    eventually("three more passed checks", || {
        let now = passed();
        async move { now >= before + 3 }
    })
    .await;
    let warnings = logs
        .lines()
        .iter()
        .filter(|l| l.contains("expires within 14 days") && l.contains(&key))
        .count();
    assert_eq!(warnings, 1, "{:#?}", logs.lines());
    // No handshake, no pass.
    backend.stop().await;
    wait_health(&verified, 0, false).await;
    turned_away(&verified).await;
    backend.restart().await;
    wait_health(&verified, 0, true).await;
}

const UDP_REPLY: u8 = 0;
const UDP_WRONG: u8 = 1;
const UDP_SILENT: u8 = 2;

/// A UDP server answering datagrams that start with `request` with `reply` (or
/// something else, or nothing, as `mode` says).
struct UdpResponder {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    request: Arc<[u8]>,
    reply: Arc<[u8]>,
    task: Option<JoinHandle<()>>,
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl UdpResponder {
    fn bind(addr: SocketAddr, request: &[u8], reply: &[u8]) -> std::io::Result<UdpResponder> {
        let mut responder = UdpResponder {
            addr,
            mode: Arc::new(AtomicU8::new(UDP_REPLY)),
            request: request.into(),
            reply: reply.into(),
            task: None,
        };
        responder.listen()?;
        Ok(responder)
    }

    fn listen(&mut self) -> std::io::Result<()> {
        let socket = std::net::UdpSocket::bind(self.addr)?;
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(socket)?;
        let (mode, request, reply) = (
            Arc::clone(&self.mode),
            Arc::clone(&self.request),
            Arc::clone(&self.reply),
        );
        self.task = Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            // Bounded in count; in time by the test's runtime.
            for _ in 0..100_000 {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let answer: &[u8] = match mode.load(Ordering::SeqCst) {
                    UDP_REPLY if buf[..n].starts_with(&request) => &reply,
                    UDP_SILENT => continue,
                    _ => b"NOPE",
                };
                let _ = socket.send_to(answer, from).await;
            }
        }));
        Ok(())
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Closes the socket: datagrams to the port are refused (ICMP).
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        self.listen().expect("bind the UDP port again");
    }
}

/// A TCP backend named `name` and a UDP responder on the same port number.
async fn tcp_and_udp(name: &str, request: &[u8], reply: &[u8]) -> (TestBackend, UdpResponder) {
    for _ in 0..10 {
        let tcp = TestBackend::named(name).await;
        if let Ok(udp) = UdpResponder::bind(tcp.addr, request, reply) {
            return (tcp, udp);
        }
    }
    panic!("no port free for both TCP and UDP");
}

#[tokio::test]
async fn udp_check_follows_the_replies() {
    let (a, mut udp) = tcp_and_udp("a", b"PING", b"PONG").await;
    let (b, _b_udp) = tcp_and_udp("b", b"PING", b"PONG").await;
    let settings = UdpSettings {
        send: b"PING".to_vec(),
        recv: Some(b"PONG".to_vec()),
    };
    let sluice = checked(
        vec![a.spec(), b.spec()],
        HealthKind::Udp(settings),
        Duration::from_millis(300),
        InitialStatus::Unhealthy,
    )
    .await;
    wait_health(&sluice, 0, true).await;
    // A reply that does not start with udp_recv.
    udp.set(UDP_WRONG);
    wait_health(&sluice, 0, false).await;
    all_go_to(&sluice, "b").await;
    udp.set(UDP_REPLY);
    wait_health(&sluice, 0, true).await;
    // No reply within the timeout.
    udp.set(UDP_SILENT);
    wait_health(&sluice, 0, false).await;
    udp.set(UDP_REPLY);
    wait_health(&sluice, 0, true).await;
    // Nothing listening on the port.
    udp.stop().await;
    wait_health(&sluice, 0, false).await;
    all_go_to(&sluice, "b").await;
    udp.restart().await;
    wait_health(&sluice, 0, true).await;
}

/// The health check of `[servers.test.healthcheck]` holding `keys`, read the way a
/// configuration file is (so escapes are decoded by the loader).
fn healthcheck_from_toml(keys: &str) -> HealthConfig {
    let text = format!(
        "[servers.test]\nbind = \"127.0.0.1:0\"\n\
         [servers.test.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:1\"]\n\
         [servers.test.healthcheck]\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
         passive_fails = 0\n{keys}\n"
    );
    match sluice::config::parse(&text, Path::new("health.toml")) {
        Ok(mut loaded) => {
            loaded
                .config
                .servers
                .remove("test")
                .expect("server test")
                .healthcheck
        }
        Err(e) => panic!("{e}\n{text}"),
    }
}

async fn probed(backends: Vec<BackendSpec>, health: HealthConfig) -> Sluice {
    let mut server = server(BalanceKind::RoundRobin, backends);
    server.healthcheck = HealthConfig {
        initial_status: InitialStatus::Unhealthy,
        ..health
    };
    Sluice::start(server).await
}

#[tokio::test]
async fn probe_over_udp_and_tls() {
    let (a, udp) = tcp_and_udp("a", b"\x00\x01PING", b"\x00\x01PONG\xff").await;
    let (b, _b_udp) = tcp_and_udp("b", b"\x00\x01PING", b"\x00\x01PONG\xff").await;
    let certs = tempfile::tempdir().expect("temp dir");
    let files = certificate(certs.path(), "probe", 365);
    let good = Arc::new(AtomicBool::new(true));
    let tls = tls_backend(&files, Arc::clone(&good)).await;
    // TOML literal strings: the loader decodes the escapes.
    let over_udp = healthcheck_from_toml(
        r"kind = 'probe'
          probe_protocol = 'udp'
          probe_send = '\x00\x01PING'
          probe_strategy = 'starts_with'
          probe_recv = '\x00\x01PONG\xff'",
    );
    let over_tls = healthcheck_from_toml(&format!(
        r"kind = 'probe'
          probe_protocol = 'tls'
          probe_send = '\x16HELLO\r\n'
          probe_strategy = 'regexp'
          probe_recv = '^\+OK v[0-9]+\.[0-9]+'
          probe_recv_len = 8
          tls_server_name = 'localhost'
          tls_ca_path = '{}'",
        files.cert_path.display()
    ));
    assert!(matches!(
        &over_udp.kind,
        HealthKind::Probe(ProbeSettings {
            protocol: ProbeProtocol::Udp,
            script: ProbeScript::Exchange { send, .. },
            ..
        }) if send == b"\x00\x01PING"
    ));
    let (udp_sluice, tls_sluice) = tokio::join!(
        probed(vec![a.spec(), b.spec()], over_udp),
        probed(vec![tls.spec()], over_tls),
    );
    wait_health(&udp_sluice, 0, true).await;
    wait_health(&tls_sluice, 0, true).await;
    udp.set(UDP_WRONG);
    good.store(false, Ordering::SeqCst);
    wait_health(&udp_sluice, 0, false).await;
    wait_health(&tls_sluice, 0, false).await;
    all_go_to(&udp_sluice, "b").await;
    turned_away(&tls_sluice).await;
    udp.set(UDP_REPLY);
    good.store(true, Ordering::SeqCst);
    wait_health(&udp_sluice, 0, true).await;
    wait_health(&tls_sluice, 0, true).await;
}
