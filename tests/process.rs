//! The real binary: SIGHUP reloads, SIGTERM drains, `sluice check` reports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::data::EchoStreamer;
use crate::support::process::*;
use crate::support::*;
use crate::support::{http, process};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Opens and closes `n` connections through `addr`, letting each reach its backend.
async fn probe(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let mut s = connect_from(addr, None).await;
        tokio::io::AsyncWriteExt::shutdown(&mut s).await.unwrap();
        assert!(read_to_end(&mut s).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_losing_a_byte_and_keeps_serving_on_a_bad_file() {
    let a = TestBackend::echo().await;
    let b = TestBackend::echo().await;
    let c = TestBackend::echo().await;
    let mut sluice = SluiceProcess::start(&toml_config(&[a.addr, b.addr], "5s")).await;
    let mut streamers = Vec::new();
    for seed in 0..100 {
        streamers
            .push(EchoStreamer::start(sluice.addr, seed, 4096, Duration::from_millis(10)).await);
    }

    // Valid: the new backend list takes effect for new connections.
    sluice.rewrite(&toml_config(&[b.addr, c.addr], "5s"));
    sluice.signal("HUP");
    eventually("the new backend list takes effect", || async {
        probe(sluice.addr, 1).await;
        c.accepted() > 0
    })
    .await;
    let a_before = a.accepted();
    probe(sluice.addr, 6).await;
    assert_eq!(
        a.accepted(),
        a_before,
        "the removed backend gets no new connection"
    );

    // Invalid: errors are logged and the previous configuration keeps serving.
    sluice.rewrite("[servers.test]\nbind = \"127.0.0.1:1\"\nbalanse = \"roundrobin\"\n");
    sluice.signal("HUP");
    eventually("the bad file is reported", || async {
        sluice.log().contains("not reloaded")
    })
    .await;
    let log = sluice.log();
    assert!(
        log.contains("sluice.toml:3:1"),
        "error with its position:\n{log}"
    );
    let (b_before, c_before) = (b.accepted(), c.accepted());
    probe(sluice.addr, 6).await;
    assert_eq!(b.accepted() + c.accepted(), b_before + c_before + 6);
    assert_eq!(a.accepted(), a_before);

    for (i, s) in streamers.into_iter().enumerate() {
        let verified = s
            .finish()
            .await
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert!(verified > 0);
    }
    assert!(sluice.child.try_wait().unwrap().is_none(), "still running");
}

#[tokio::test]
async fn sigterm_drains_open_connections_then_exits_zero() {
    let a = TestBackend::named("a").await;
    let mut sluice = SluiceProcess::start(&toml_config(&[a.addr], "5s")).await;
    let (_, mut held) = hello(sluice.addr, None).await;

    let started = Instant::now();
    sluice.signal("TERM");
    eventually("new connections are refused", || refused(sluice.addr)).await;
    // The open connection still works both ways.
    tokio::io::AsyncWriteExt::write_all(&mut held, b"ping")
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut held, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
    assert!(
        sluice.child.try_wait().unwrap().is_none(),
        "waits for the connection"
    );
    tokio::io::AsyncWriteExt::shutdown(&mut held).await.unwrap();
    assert!(read_to_end(&mut held).await.is_empty());

    let status = sluice.exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}:\n{}", sluice.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit before the grace ran out"
    );
}

#[tokio::test]
async fn sigterm_closes_what_outlives_shutdown_timeout() {
    let a = TestBackend::named("a").await;
    let mut sluice = SluiceProcess::start(&toml_config(&[a.addr], "300ms")).await;
    let (_, mut held) = hello(sluice.addr, None).await;
    let started = Instant::now();
    sluice.signal("TERM");
    assert!(read_until_closed(&mut held, Duration::from_secs(3))
        .await
        .is_empty());
    let status = sluice.exit(Duration::from_secs(3)).await;
    assert!(status.success(), "{status}:\n{}", sluice.log());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "closed after only {took:?}"
    );
}

#[tokio::test]
async fn check_reports_each_error_with_its_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(
        dir.path(),
        "bad.toml",
        "[servers.x]\nbind = \"127.0.0.1:1\"\nbalanse = \"roundrobin\"\n\n  [servers.x.discovery]\n  kind = \"static\"\n  static_list = [\"127.0.0.1:2 weight=zero\"]\n",
    );
    let (status, _, stderr) = run_sluice(&["check", "-c", &bad]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{bad}:3:1: ")), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&bad)).collect();
    assert!(lines.len() >= 2, "every error reported: {stderr}");
    for line in lines {
        let rest = &line[bad.len()..];
        let mut parts = rest.splitn(4, ':');
        assert_eq!(parts.next(), Some(""), "{line}");
        let line_no: u32 = parts.next().unwrap().parse().expect("line number");
        let col: u32 = parts.next().unwrap().parse().expect("column");
        assert!(line_no >= 1 && col >= 1, "{line}");
        assert!(parts.next().is_some_and(|m| !m.trim().is_empty()), "{line}");
    }
}

#[tokio::test]
async fn check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(
        dir.path(),
        "good.toml",
        &toml_config(&[local(8000), local(8001)], "5s"),
    );
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &good]).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
}

/// `sluice check -c /etc/sluice/sluice.toml` and `cd /etc/sluice && sluice check -c
/// sluice.toml` find the same files: relative paths are taken from the file's directory.
#[tokio::test]
async fn check_takes_relative_paths_from_the_files_directory_not_the_working_one() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    let elsewhere = root.path().join("elsewhere");
    for dir in [&conf, &conf.join("certs"), &elsewhere] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    write_file(&conf.join("certs"), "web.pem", &cert.cert.pem());
    write_file(
        &conf.join("certs"),
        "web.key",
        &cert.signing_key.serialize_pem(),
    );
    let server = |key: &str| {
        format!(
            "[servers.web]\nbind = \"127.0.0.1:{}\"\nprotocol = \"tls\"\n\
             discovery = {{ kind = \"static\", static_list = [\"127.0.0.1:1\"] }}\n\
             [servers.web.tls]\ncert_path = \"certs/web.pem\"\nkey_path = \"{key}\"\n",
            8443
        )
    };
    let good = write_file(&conf, "sluice.toml", &server("./certs/web.key"));
    for (cwd, path) in [(&elsewhere, good.as_str()), (&conf, "sluice.toml")] {
        let (status, stdout, stderr) = run_sluice_in(cwd, &["check", "-c", path]).await;
        assert_eq!(status.code(), Some(0), "in {cwd:?}: {stdout}{stderr}");
    }

    let bad = write_file(&conf, "bad.toml", &server("certs/missing.key"));
    let (status, _, stderr) = run_sluice_in(&elsewhere, &["check", "-c", &bad]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let missing = conf.join("certs/missing.key");
    let expected = format!(
        "{bad}:7:1: servers.web.tls.key_path: {}: cannot read the private key",
        missing.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[tokio::test]
async fn demo_turns_on_the_api_and_dashboard_and_prints_their_address() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(process::BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let find_url = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.strip_prefix("Dashboard: http://") {
                return rest.split('/').next().map(str::to_owned);
            }
        }
        None
    };
    let api = tokio::time::timeout(WAIT, find_url)
        .await
        .expect("demo printed its dashboard in time")
        .expect("a dashboard line");
    let api: std::net::SocketAddr = api.parse().expect("dashboard address");
    let backends = http::get(api, "/servers/demo/backends").await;
    assert_eq!(backends.status, 200, "{}", backends.body);
    assert_eq!(backends.json().as_array().map(Vec::len), Some(3));
    let page = http::get(api, "/ui").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    child.kill().await.expect("stop the demo");
}

#[tokio::test]
async fn udp_quick_mode_balances_datagrams_and_stops_on_sigterm() {
    use crate::support::udp::{ask, client, UdpBackend};
    let a = UdpBackend::named("a").await;
    let b = UdpBackend::named("b").await;
    let targets = format!("{},{}", a.addr, b.addr);
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("sluice.log");
    let mut child = spawn_logged(
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
    let socket = client("127.0.0.1:0").await;
    let first = ask(&socket, listen, b"first", 5).await.expect("a reply");
    let mut names = std::collections::BTreeSet::from([first.backend]);
    for i in 0..6 {
        let payload = format!("datagram {i}");
        let reply = ask(&socket, listen, payload.as_bytes(), 5)
            .await
            .expect("a reply");
        assert_eq!(reply.echoed, payload.as_bytes());
        names.insert(reply.backend);
    }
    assert_eq!(names.len(), 2, "round robin over both: {names:?}");
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exited in time")
        .expect("exit status");
    assert!(status.success(), "{status}");
}

/// The access-log lines (at the default level) of server `name`, closed for `reason`.
fn access_lines(log: &str, name: &str, reason: &str) -> Vec<String> {
    let (server, reason) = (format!("server=\"{name}\""), format!("reason=\"{reason}\""));
    log.lines()
        .filter(|l| l.contains("connection closed") && l.contains(&server) && l.contains(&reason))
        .map(str::to_owned)
        .collect()
}

/// A connection closed before its bytes were relayed says why in its one access-log
/// line, at the default level: a name SNI routing rejects, backends all disabled or
/// draining, a backend refusing the connection (named). Meanwhile a stream through
/// another server is relayed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_says_why_in_its_access_log_line() {
    use crate::support::tls::client_hello_in_records;
    use tokio::io::AsyncWriteExt;
    let echo = TestBackend::echo().await;
    let closed = dead_addr();
    let toml = format!(
        r#"
[logging]
level = "info"

[servers.test]
bind = "127.0.0.1:0"
discovery = {{ kind = "static", static_list = ["{echo}"] }}

[servers.sni]
bind = "127.0.0.1:0"
discovery = {{ kind = "static", static_list = ["{echo} sni=a.sluice.test"] }}
sni = {{ unexpected_hostname_strategy = "reject" }}

[servers.out]
bind = "127.0.0.1:0"
discovery = {{ kind = "static", static_list = ["{echo} state=disabled", "{closed} state=drain"] }}

[servers.refusing]
bind = "127.0.0.1:0"
discovery = {{ kind = "static", static_list = ["{closed}"] }}
"#,
        echo = echo.addr,
    );
    let sluice = SluiceProcess::start(&toml).await;
    let streamer = EchoStreamer::start(sluice.addr, 5, 4096, Duration::from_millis(5)).await;
    streamer.wait_echoed(4096).await;

    let mut rejected = connect_from(sluice.server("sni"), None).await;
    rejected
        .write_all(&client_hello_in_records("b.sluice.test", 16_000))
        .await
        .unwrap();
    assert_closed_without_data(&mut rejected, WAIT).await;
    for name in ["out", "refusing"] {
        let mut refused = connect_from(sluice.server(name), None).await;
        assert_closed_without_data(&mut refused, WAIT).await;
    }
    eventually("three refusals logged", || async {
        let log = sluice.log();
        !access_lines(&log, "sni", "sni_rejected").is_empty()
            && !access_lines(&log, "out", "no_backend").is_empty()
            && !access_lines(&log, "refusing", "connect_failed").is_empty()
    })
    .await;
    let log = sluice.log();
    let said = |name, reason, words: &[&str]| {
        let lines = access_lines(&log, name, reason);
        assert_eq!(lines.len(), 1, "one line per refused connection:\n{log}");
        for w in words {
            assert!(lines[0].contains(w), "{w:?} in {}", lines[0]);
        }
    };
    said(
        "sni",
        "sni_rejected",
        &[
            "backend=\"-\"",
            "no backend is tagged for the server name b.sluice.test",
        ],
    );
    said(
        "out",
        "no_backend",
        &["no backend available among 2 backends (2 disabled or draining)"],
    );
    said(
        "refusing",
        "connect_failed",
        &[
            &format!("backend=\"{closed}\""),
            &format!("connect failed: {closed}: Connection refused"),
        ],
    );
    let verified = streamer.finish().await.expect("the stream came back whole");
    assert!(verified >= 4096);
}

/// `sluice check` warns of a `mysql` check without a user (the server counts each check
/// as an aborted connection), not of one with a user.
#[tokio::test]
async fn check_warns_of_a_mysql_check_without_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, user: &str| {
        let text = format!(
            "[servers.db]\nbind = \"127.0.0.1:{}\"\n\
             discovery = {{ kind = \"static\", static_list = [\"127.0.0.1:3306\"] }}\n\
             healthcheck = {{ kind = \"mysql\"{user} }}\n",
            3000
        );
        write_file(dir.path(), name, &text)
    };
    let without = file("without.toml", "");
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &without]).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    let expected = format!(
        "{without}:4:17: warning: servers.db.healthcheck.kind: \"mysql\" without mysql_user \
         reads the server's greeting and hangs up: MySQL and MariaDB count every such check \
         as an aborted connection"
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(
        stderr.contains("CREATE USER 'sluice_check'@'SLUICE_ADDRESS'"),
        "{stderr}"
    );
    let with = file("with.toml", ", mysql_user = \"sluice_check\"");
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &with]).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stderr, "", "no warning with a user");
}

/// `sluice udp --help` lists only the flags `udp` takes: no `--health-interval` (a TCP
/// check) or `--connect-timeout`; `sluice tcp` has them.
#[tokio::test]
async fn udp_help_lists_only_what_udp_takes() {
    let (status, udp_help, _) = run_sluice(&["udp", "--help"]).await;
    assert!(status.success());
    for flag in [
        "--listen",
        "--targets",
        "--max-responses",
        "--session-timeout",
    ] {
        assert!(udp_help.contains(flag), "{flag} in:\n{udp_help}");
    }
    let (status, tcp_help, _) = run_sluice(&["tcp", "--help"]).await;
    assert!(status.success());
    for flag in ["--health-interval", "--connect-timeout"] {
        assert!(!udp_help.contains(flag), "{flag} in:\n{udp_help}");
        assert!(tcp_help.contains(flag), "{flag} not in:\n{tcp_help}");
    }
    let (status, _, stderr) = run_sluice(&[
        "udp",
        "--listen",
        "127.0.0.1:1",
        "--targets",
        "127.0.0.1:2",
        "--health-interval",
        "5s",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unexpected argument '--health-interval'"),
        "{stderr}"
    );
}

/// `sluice check` summarises each backend with every tag of its line: `sni=`, `alpn=`,
/// `backup`, `state=` as well as weight, priority and max_connections.
#[tokio::test]
async fn check_summarises_every_tag_of_a_backend() {
    let dir = tempfile::tempdir().unwrap();
    let port = 8443;
    let file = write_file(
        dir.path(),
        "sni.toml",
        &format!(
            "[servers.https]\nbind = \"127.0.0.1:{port}\"\nbalance = \"roundrobin\"\n\
             sni = {{ unexpected_hostname_strategy = \"reject\" }}\n\
             discovery = {{ kind = \"static\", static_list = [\
             \"127.0.0.1:8443 weight=2 sni=a.sluice.test alpn=h2\", \
             \"127.0.0.1:8444 sni=*.b.sluice.test backup state=drain max_connections=10\"] }}\n"
        ),
    );
    let (status, stdout, stderr) = run_sluice(&["check", "-c", &file]).await;
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    let expected = [
        format!(
            "server https: tcp on 127.0.0.1:{port}, balance roundrobin, 2 backend(s), \
             no health check"
        ),
        "  127.0.0.1:8443 weight=2 priority=1 sni=a.sluice.test alpn=h2".to_owned(),
        "  127.0.0.1:8444 weight=1 priority=1 max_connections=10 sni=*.b.sluice.test backup \
         state=drain"
            .to_owned(),
        format!("{file}: OK"),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn systemd_hears_ready_reloading_stopping_and_the_watchdog() {
    let backend = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_file(
        dir.path(),
        "sluice.toml",
        &format!(
            "[servers.test]\nbind = \"127.0.0.1:0\"\n\
             [servers.test.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
            backend.addr
        ),
    );
    let args = ["run", "-c", &config];
    let mut sluice = Notified::spawn(dir.path(), &args, &[("WATCHDOG_USEC", "200000")]);
    let ready = sluice.until("READY=1").await;
    // Ready means listening: the log names the server's address by then.
    let listening = std::fs::read_to_string(&sluice.log).expect("log");
    assert!(
        logged_server(&listening, "test").is_some(),
        "{ready}\n{listening}"
    );
    sluice.until("WATCHDOG=1").await;

    let pid = sluice.child.id().expect("running").to_string();
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    kill("HUP");
    let reloading = sluice.until("RELOADING=1").await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    sluice.until("READY=1").await;
    kill("TERM");
    sluice.until("STOPPING=1").await;
    let status = tokio::time::timeout(WAIT, sluice.child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success());
}

/// Starts Sluice the way systemd's socket activation does: listening sockets on fds 3
/// and 4, `LISTEN_FDS=2`, `LISTEN_FDNAMES` and `LISTEN_PID` naming the process (python3
/// sets them up, then execs Sluice, so the pid is right). The configuration binds the
/// first socket's address; the second is named after a server that binds port 0.
#[tokio::test]
async fn a_listener_passed_by_the_service_manager_is_used() {
    let backend = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, port_file, log) = (
        dir.path().join("sluice.toml"),
        dir.path().join("port"),
        dir.path().join("sluice.log"),
    );
    let script = r#"
import os, socket, sys
binary, config, port_file, backend = sys.argv[1:5]
sockets = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    sockets.append(s)
port, named = (s.getsockname()[1] for s in sockets)
with open(config, "w") as f:
    for server, bind in (("test", f"127.0.0.1:{port}"), ("named", "127.0.0.1:0")):
        f.write(f'[servers.{server}]\nbind = "{bind}"\n'
                f'[servers.{server}.discovery]\nkind = "static"\nstatic_list = ["{backend}"]\n')
fds = [os.dup(s.fileno()) for s in sockets]
for target, fd in zip((3, 4), fds):
    os.dup2(fd, target)
    os.set_inheritable(target, True)
os.environ["LISTEN_FDS"] = "2"
os.environ["LISTEN_FDNAMES"] = "unknown:named"
os.environ["LISTEN_PID"] = str(os.getpid())
with open(port_file, "w") as f:
    f.write(f"{port} {named}")
os.execv(binary, [binary, "run", "-c", config])
"#;
    let log_file = std::fs::File::create(&log).expect("log file");
    let _child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([
            BIN,
            config.to_str().expect("path"),
            port_file.to_str().expect("path"),
        ])
        .arg(backend.addr.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("sluice listens on the passed socket", || async {
        read_log().contains("listening sockets passed by the service manager")
            && logged_server(&read_log(), "test").is_some()
    })
    .await;
    let ports: Vec<u16> = std::fs::read_to_string(&port_file)
        .expect("ports")
        .split_whitespace()
        .map(|p| p.parse().expect("a port"))
        .collect();
    let (port, named) = (ports[0], ports[1]);
    assert_eq!(
        logged_server(&read_log(), "named").map(|a| a.port()),
        Some(named),
        "the socket named after the server"
    );
    // Had Sluice bound the address itself, it would have found it taken, and exited.
    let (name, _) = hello(SocketAddr::from(([127, 0, 0, 1], port)), None).await;
    assert_eq!(name, "a", "{}", read_log());
}

#[tokio::test]
async fn version_manual_and_completions_come_from_the_binary() {
    let (status, stdout, _) = run_sluice(&["--version"]).await;
    assert!(status.success());
    let expected = format!(
        "sluice {} (commit {}, built {})\n",
        env!("CARGO_PKG_VERSION"),
        env!("SLUICE_COMMIT"),
        env!("SLUICE_BUILD_DATE")
    );
    assert_eq!(stdout, expected);
    let (status, page, _) = run_sluice(&["man"]).await;
    assert!(status.success());
    assert!(page.contains(".TH sluice 1"), "{page}");
    for subcommand in ["upgrade", "check", "convert", "completions"] {
        assert!(page.contains(subcommand), "the page names {subcommand}");
    }
    for (shell, mark) in [
        ("bash", "complete -F _sluice"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let (status, script, _) = run_sluice(&["completions", shell]).await;
        assert!(status.success(), "{shell}");
        assert!(script.contains(mark), "{shell}: {script}");
    }
    let (status, _, stderr) = run_sluice(&["completions", "tcsh"]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
}

#[tokio::test]
async fn health_asks_the_api_for_ready_or_connects_to_each_server() {
    let backend = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    // With an API: its /ready decides.
    let api_port = free_port();
    let with_api = format!(
        "{}\n[api]\nenabled = true\nbind = \"127.0.0.1:{api_port}\"\nbearer_token = \"secret\"\n",
        toml_config(&[backend.addr], "1s")
    );
    let file = write_file(dir.path(), "api.toml", &with_api);
    let (status, _, stderr) = run_sluice(&["health", "-c", &file]).await;
    assert_eq!(status.code(), Some(1), "nothing runs yet");
    assert!(
        stderr.contains("not healthy") && stderr.contains("/ready"),
        "{stderr}"
    );
    let sluice = SluiceProcess::start(&with_api).await;
    let (status, stdout, stderr) = run_sluice(&["health", "-c", &file]).await;
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("ready"), "{stdout}");
    // Its only backend disabled: not ready, and it says which server.
    let path = format!("/servers/test/backends/{}", backend.addr);
    let auth = [("Authorization", "Bearer secret")];
    let patched = http::request(
        sluice.api(),
        "PATCH",
        &path,
        &auth,
        Some(r#"{"state":"disabled"}"#),
    );
    assert_eq!(patched.await.status, 200);
    let (status, _, stderr) = run_sluice(&["health", "-c", &file]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("503") && stderr.contains("\"test\""),
        "{stderr}"
    );
    drop(sluice);

    // Without an API: every TCP server's address must accept connections.
    let port = free_port();
    let plain =
        toml_config(&[backend.addr], "1s").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let file = write_file(dir.path(), "plain.toml", &plain);
    let (status, _, stderr) = run_sluice(&["health", "-c", &file, "--timeout", "1s"]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!("server test: cannot connect to 127.0.0.1:{port}")),
        "{stderr}"
    );
    let _sluice = SluiceProcess::start(&plain).await;
    let (status, stdout, stderr) = run_sluice(&["health", "-c", &file]).await;
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "1 listening address(es) accept connections\n");
}
