//! The control plane attacked and misused, against the real binary: deep JSON, requests
//! a web page can make, connection floods, swapped listeners, changes during shutdown.
//! Through each, a proxied stream runs and is checked byte for byte at the end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::data::EchoStreamer;
use crate::support::http::{get, request, Response};
use crate::support::process::*;
use crate::support::*;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `sluice.toml`: `[servers.test]` in front of `backend`, and `[api]` with `api_keys`,
/// each on a port of its own.
fn with_api(backend: SocketAddr, api_keys: &str) -> String {
    format!(
        "{}\n[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n{api_keys}\n",
        toml_config(&[backend], "5s")
    )
}

/// A running Sluice with its API, an echo backend, and a stream flowing through it.
struct Target {
    sluice: SluiceProcess,
    api: SocketAddr,
    backend: TestBackend,
    streamer: EchoStreamer,
}

impl Target {
    async fn start(api_keys: &str) -> Target {
        Self::start_with(api_keys, None).await
    }

    async fn start_with(api_keys: &str, descriptors: Option<u64>) -> Target {
        let backend = TestBackend::echo().await;
        let text = with_api(backend.addr, api_keys);
        let sluice = SluiceProcess::start_file("sluice.toml", &text, descriptors).await;
        Self::streaming(sluice, backend).await
    }

    async fn streaming(sluice: SluiceProcess, backend: TestBackend) -> Target {
        let api = sluice.api();
        let streamer = EchoStreamer::start(sluice.addr, 7, 1024, Duration::from_millis(5)).await;
        Target {
            sluice,
            api,
            backend,
            streamer,
        }
    }

    /// The stream came back whole and Sluice still runs.
    async fn finish(mut self) {
        let verified = self
            .streamer
            .finish()
            .await
            .unwrap_or_else(|e| panic!("proxied stream: {e}\n{}", self.sluice.log()));
        assert!(verified > 0);
        let running = self.sluice.child.try_wait().expect("wait").is_none();
        assert!(running, "sluice died:\n{}", self.sluice.log());
    }
}

/// One message through a new connection to `addr`, to an echo backend and back.
async fn echo_round_trip(addr: SocketAddr) {
    round_trip(&mut connect_from(addr, None).await).await;
}

/// One message through `stream`, to an echo backend and back.
async fn round_trip(stream: &mut TcpStream) {
    stream.write_all(b"round trip").await.expect("write");
    let mut echoed = [0u8; 10];
    tokio::time::timeout(WAIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"round trip");
}

fn deep_arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn deep_objects(depth: usize) -> String {
    "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth)
}

fn assert_refused(response: &Response, status: u16, text: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert!(response.body.contains(text), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_bodies_and_files_are_errors_not_crashes() {
    let backend = TestBackend::echo().await;
    let json = format!(
        r#"{{"shutdown_timeout": "5s",
  "api": {{"enabled": true, "bind": "127.0.0.1:0"}},
  "servers": {{"test": {{"bind": "127.0.0.1:0", "protocol": "tcp",
    "discovery": {{"kind": "static", "static_list": ["{}"]}}}}}}}}"#,
        backend.addr
    );
    let sluice = SluiceProcess::start_file("sluice.json", &json, None).await;
    let t = Target::streaming(sluice, backend).await;
    let backend_path = format!("/servers/test/backends/{}", t.backend.addr);

    // About 40 KB nested 20 000 deep: the size that overflowed the stack.
    for body in [deep_arrays(20_000), deep_objects(8_000)] {
        for (method, path) in [
            ("POST", "/servers/deep"),
            ("PUT", "/servers/test"),
            ("PATCH", backend_path.as_str()),
        ] {
            let response = request(t.api, method, path, &[], Some(&body)).await;
            assert_refused(&response, 400, "nested deeper than 64 levels");
        }
    }
    // Where: a server body names its line and column, backend options the byte.
    let arrays = deep_arrays(20_000);
    let response = request(t.api, "PUT", "/servers/test", &[], Some(&arrays)).await;
    assert_refused(&response, 400, "(line 1, column 63 of the body)");
    let response = request(t.api, "PATCH", &backend_path, &[], Some(&arrays)).await;
    assert_refused(&response, 400, "(at byte 64)");

    // The same depth in the configuration file: reloads keep the running configuration.
    let deep_file = format!("{{\"servers\": {}}}", deep_arrays(20_000));
    t.sluice.rewrite(&deep_file);
    t.sluice.signal("HUP");
    eventually("the SIGHUP reload is refused", || async {
        t.sluice.log().contains("not reloaded")
    })
    .await;
    assert!(t.sluice.log().contains("nested deeper than 64 levels"));
    let response = request(t.api, "POST", "/reload", &[], None).await;
    assert_refused(&response, 400, "nested deeper than 64 levels");
    echo_round_trip(t.sluice.addr).await;

    // A body over the limit is refused from its announced length, before it is read.
    let mut big = TcpStream::connect(t.api).await.expect("connect");
    let head = format!(
        "PUT /servers/test HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{{",
        t.api,
        2 * 1024 * 1024
    );
    big.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(WAIT, big.read_exact(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert_eq!(
        &answer,
        b"HTTP/1.1 413",
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let (status, _, stderr) =
        run_sluice(&["check", "-c", t.sluice.config.to_str().expect("path")]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.ends_with("sluice.json:1:76: nested deeper than 64 levels\n"),
        "{stderr}"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drive_the_api_nor_start_programs() {
    let t = Target::start("").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran");
    let evil = serde_json::json!({
        "bind": "127.0.0.1:0",
        "discovery": {"kind": "exec", "exec_command": ["/usr/bin/touch", marker]},
    })
    .to_string();
    let api_host = t.api.to_string();

    // A "simple" request from a page behind a rebound name: no preflight would stop it.
    let simple = [
        ("Host", "rebind.evil.example:8888"),
        ("Origin", "http://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let response = request(t.api, "POST", "/servers/evil", &simple, Some(&evil)).await;
    assert_refused(&response, 403, "does not answer to the host name");
    // The same page on the API's own address still sends its own origin.
    let cross = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let response = request(t.api, "POST", "/servers/evil", &cross, Some(&evil)).await;
    assert_refused(
        &response,
        403,
        "cross-origin request from http://evil.example",
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let response = request(t.api, "POST", "/servers/evil", &form, Some(&evil)).await;
    assert_refused(&response, 415, "Content-Type: application/json");
    let text = [("Content-Type", "text/plain")];
    let response = request(t.api, "POST", "/reload", &text, None).await;
    assert_refused(&response, 415, "Content-Type: application/json");
    // A local user with curl: the right type, but no program through the API.
    let response = request(t.api, "POST", "/servers/evil", &[], Some(&evil)).await;
    assert_refused(&response, 403, "[api] allow_exec");
    assert_eq!(response.json()["field"], "discovery.kind");

    // DNS rebinding cannot read either.
    let rebound = [("Host", "rebind.evil.example")];
    let response = request(t.api, "GET", "/dump", &rebound, None).await;
    assert_refused(&response, 403, "does not answer to the host name");
    let localhost = [("Host", "localhost")];
    assert_eq!(
        request(t.api, "GET", "/dump", &localhost, None)
            .await
            .status,
        200
    );
    assert_eq!(get(t.api, "/servers/evil").await.status, 404);
    assert!(!marker.exists(), "the command ran");

    // The dashboard's own requests: same origin, JSON.
    let same = [("Origin", format!("http://{api_host}"))];
    let same: Vec<(&str, &str)> = same.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let harmless = format!(
        "{{\"bind\": \"127.0.0.1:0\", \"discovery\": {{\"kind\": \"static\", \"static_list\": [\"{}\"]}}}}",
        t.backend.addr
    );
    let response = request(t.api, "POST", "/servers/ok", &same, Some(&harmless)).await;
    assert_eq!(response.status, 200, "{response:?}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_the_api_needs_allow_exec() {
    let t = Target::start("allow_exec = true").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let list = dir.path().join("backends");
    std::fs::write(&list, format!("{}\n", t.backend.addr)).expect("write list");
    let body = serde_json::json!({
        "bind": "127.0.0.1:0",
        "discovery": {"kind": "exec", "exec_command": ["/bin/cat", list]},
    })
    .to_string();
    let response = request(t.api, "POST", "/servers/listed", &[], Some(&body)).await;
    assert_eq!(response.status, 200, "{response:?}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_true_never_lends_the_browsers_credentials() {
    let t = Target::start("cors = true\nbearer_token = \"t0k\"").await;
    let preflight = [
        ("Origin", "http://tool.example"),
        ("Access-Control-Request-Method", "PATCH"),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ),
    ];
    let response = request(t.api, "OPTIONS", "/servers/test", &preflight, None).await;
    assert!(response.status < 300, "{response:?}");
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(response.header("access-control-allow-credentials"), None);
    // The page's own token works; the scheme in any case (RFC 7235).
    let with_token = [
        ("Origin", "http://tool.example"),
        ("Authorization", "bearer t0k"),
    ];
    let response = request(t.api, "GET", "/servers", &with_token, None).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("access-control-allow-credentials"), None);
    t.finish().await;

    let t = Target::start("cors = [\"https://admin.example\"]").await;
    let listed = [
        ("Origin", "https://admin.example"),
        ("Access-Control-Request-Method", "DELETE"),
    ];
    let response = request(t.api, "OPTIONS", "/servers/test", &listed, None).await;
    assert!(response.status < 300, "{response:?}");
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    assert_eq!(
        response.header("access-control-allow-credentials"),
        Some("true")
    );
    let other = [
        ("Origin", "https://other.example"),
        ("Access-Control-Request-Method", "DELETE"),
    ];
    let response = request(t.api, "OPTIONS", "/servers/test", &other, None).await;
    assert_refused(
        &response,
        403,
        "cross-origin request from https://other.example",
    );
    t.finish().await;
}

/// Reads from `stream` until it closes (or errs); `false` if it is still open after
/// `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_floods_neither_starve_the_data_plane_nor_hold_the_api() {
    // Room for this test's own 2 200 sockets.
    let _ = sluice::descriptors::raise_limit();
    let t = Target::start_with("bearer_token = \"t0k\"", Some(2048)).await;
    let auth = [("Authorization", "Bearer t0k")];

    // More silent connections than Sluice has descriptors.
    let mut silent = Vec::new();
    for _ in 0..2148 {
        match TcpStream::connect(t.api).await {
            Ok(stream) => silent.push(stream),
            Err(e) => panic!("connect {}: {e}", silent.len()),
        }
    }
    // Past the cap (64), a connection is closed as soon as it is accepted.
    let last = silent.last_mut().expect("connections");
    assert!(
        closed_within(last, Duration::from_secs(2)).await,
        "a connection past the cap was kept"
    );
    // Slow-loris clients: a byte of a request head every half second.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(t.api).await.expect("connect");
        stream.write_all(b"G").await.expect("write");
        slow.push(stream);
    }
    // The data path works meanwhile: new connections, and the stream runs on.
    for _ in 0..50 {
        echo_round_trip(t.sluice.addr).await;
    }
    let dribble = async {
        for _ in 0..30 {
            for stream in &mut slow {
                let _ = stream.write_all(b"E").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let closed = async {
        let mut all = true;
        for stream in &mut silent[..64] {
            all &= closed_within(stream, Duration::from_secs(15)).await;
        }
        all
    };
    let (_, silent_closed) = tokio::join!(dribble, closed);
    assert!(silent_closed, "silent API connections were not closed");
    for stream in &mut slow {
        assert!(
            closed_within(stream, Duration::from_secs(1)).await,
            "a slow-loris connection is still open"
        );
    }
    // Held connections gone, the API answers again whatever the flood left queued.
    drop(silent);
    eventually("the API answers again", || async {
        request(t.api, "GET", "/ping", &auth, None).await.status == 200
    })
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_api_connection_that_goes_quiet_is_closed() {
    let t = Target::start("").await;
    let mut kept = TcpStream::connect(t.api).await.expect("connect");
    let head = format!("GET /ping HTTP/1.1\r\nHost: {}\r\n\r\n", t.api);
    kept.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 15];
    tokio::time::timeout(WAIT, kept.read_exact(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert_eq!(&answer, b"HTTP/1.1 200 OK");
    // The header timeout (10 s) also runs between requests.
    assert!(
        closed_within(&mut kept, Duration::from_secs(15)).await,
        "an idle kept-alive connection stayed open"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_take_credentials_and_refuse_foreign_hosts() {
    let backend = TestBackend::echo().await;
    let text = format!(
        "{}\n[metrics]\nenabled = true\nbind = \"127.0.0.1:0\"\nbearer_token = \"scrape\"\n",
        toml_config(&[backend.addr], "5s")
    );
    let sluice = SluiceProcess::start(&text).await;
    let metrics = sluice.metrics();
    assert_eq!(get(metrics, "/metrics").await.status, 401);
    let auth = [("Authorization", "Bearer scrape")];
    let response = request(metrics, "GET", "/metrics", &auth, None).await;
    assert_eq!(response.status, 200);
    assert!(response.body.contains("sluice_"));
    let rebound = [("Authorization", "Bearer scrape"), ("Host", "evil.example")];
    assert_eq!(
        request(metrics, "GET", "/metrics", &rebound, None)
            .await
            .status,
        403
    );
    drop(sluice);

    let dir = tempfile::tempdir().expect("temp dir");
    let public = format!(
        "{}\n[metrics]\nenabled = true\nbind = \"0.0.0.0:9284\"\n",
        toml_config(&[backend.addr], "5s")
    );
    let file = write_file(dir.path(), "public.toml", &public);
    let (status, _, stderr) = run_sluice(&["check", "-c", &file]).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(
            "metrics.bind: the metrics endpoint would listen on 0.0.0.0:9284, beyond this host, \
             with no authentication; add [metrics.basic_auth] or bearer_token, or set \
             insecure_public = true"
        ),
        "{stderr}"
    );
}

/// Two servers, each in front of its own named backend, on ports `first` and `second`
/// (0: one of its own), and the API on a port of its own.
fn two_servers(first: (u16, SocketAddr), second: (u16, SocketAddr)) -> String {
    let server = |name: &str, (port, backend): (u16, SocketAddr)| {
        format!(
            "[servers.{name}]\nbind = \"127.0.0.1:{port}\"\n[servers.{name}.discovery]\n\
             kind = \"static\"\nstatic_list = [\"{backend}\"]\n"
        )
    };
    format!(
        "shutdown_timeout = \"5s\"\n[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n{}{}",
        server("one", first),
        server("two", second)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_swapping_ports_on_every_reload_reset_nothing() {
    let (a, b) = (TestBackend::named("a").await, TestBackend::named("b").await);
    // Each server takes a port of its own; the reloads then swap those two ports, which
    // Sluice holds throughout, so no other test can take one in between.
    let sluice = SluiceProcess::start(&two_servers((0, a.addr), (0, b.addr))).await;
    let api = sluice.api();
    let (p, q) = (sluice.server("one").port(), sluice.server("two").port());
    // Opened before the restarts, used after: a restarted server's connections go on.
    let (_, mut held) = hello(local(q), None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut probes = Vec::new();
    for i in 0..4u16 {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let addr = local(if i % 2 == 0 { p } else { q });
        probes.push(tokio::spawn(async move {
            // Bounded: 20 000 probes at most.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let greeted = async {
                    let mut stream = TcpStream::connect(addr).await?;
                    let mut name = [0u8; 2];
                    stream.read_exact(&mut name).await?;
                    Ok::<_, std::io::Error>(name)
                };
                match tokio::time::timeout(WAIT, greeted).await {
                    Ok(Ok(name)) if &name == b"a\n" || &name == b"b\n" => {
                        served.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for round in 0..100 {
        let (first, second) = if round % 2 == 0 { (q, p) } else { (p, q) };
        sluice.rewrite(&two_servers((first, a.addr), (second, b.addr)));
        let response = request(api, "POST", "/reload", &[], None).await;
        assert_eq!(response.status, 200, "round {round}: {response:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for probe in probes {
        probe.await.expect("probe task");
    }
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(served > 100, "only {served} probes served");
    assert_eq!(failed, 0, "{failed} of {} probes failed", served + failed);
    round_trip(&mut held).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_changes_and_a_second_signal_stops_at_once() {
    let backend = TestBackend::echo().await;
    let text = with_api(backend.addr, "").replace("\"5s\"", "\"60s\"");
    let mut sluice = SluiceProcess::start(&text).await;
    let api = sluice.api();
    let mut held = connect_from(sluice.addr, None).await;

    sluice.signal("TERM");
    eventually("shutdown begins", || async {
        sluice.log().contains("shutting down")
    })
    .await;
    let late = r#"{"bind": "127.0.0.1:0", "discovery": {"kind": "static", "static_list": ["127.0.0.1:1"]}}"#;
    let response = request(api, "POST", "/servers/late", &[], Some(late)).await;
    assert_refused(&response, 503, "shutting down");
    let response = request(api, "POST", "/reload", &[], None).await;
    assert_refused(&response, 503, "shutting down");
    // The open connection still relays during the grace period.
    round_trip(&mut held).await;

    sluice.signal("TERM");
    let status = sluice.exit(Duration::from_secs(8)).await;
    assert!(status.success(), "{status}:\n{}", sluice.log());
    assert!(sluice.log().contains("asked again to stop"));
}

#[tokio::test]
async fn check_names_what_is_unsafe_or_unreadable_in_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = "bind = \"127.0.0.1:3000\"\n[servers.web.discovery]\nkind = \"static\"\n\
                  static_list = [\"127.0.0.1:1\"]\n";
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "names.toml",
            format!("[servers.\"evil\\u202Etxt\"]\n{}", server.replace("web", "\"evil\\u202Etxt\""))
                .into_bytes(),
            "a server name must not hold control or invisible formatting characters (found U+202E)",
        ),
        (
            "token.toml",
            format!("[api]\nenabled = true\nbearer_token = \" \"\n[servers.web]\n{server}").into_bytes(),
            "token.toml:3:1: api.bearer_token: must not be blank",
        ),
        (
            "latin1.toml",
            [b"[servers.web]\n".as_slice(), b"# caf\xe9\n", server.as_bytes()].concat(),
            "latin1.toml:2:6: the file is not UTF-8 text: byte 0xe9 here",
        ),
        (
            "clear.toml",
            format!(
                "[api]\nenabled = true\nbind = \"0.0.0.0:0\"\nbearer_token = \"t\"\n[servers.web]\n{server}"
            )
            .into_bytes(),
            "clear.toml:3:1: warning: api.bind: the API listens on 0.0.0.0:0, beyond this host, over plain HTTP",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let (_, stdout, stderr) = run_sluice(&["check", "-c", path.to_str().expect("path")]).await;
        let relative = stderr.replace(&format!("{}/", dir.path().display()), "");
        assert!(relative.contains(expected), "{name}: {relative}{stdout}");
    }

    // A reader that goes away before the summary is written: no abort.
    let path = dir.path().join("clear.toml");
    let mut child = tokio::process::Command::new(BIN)
        .args(["check", "-c", path.to_str().expect("path")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_discovery_urls_are_redacted() {
    let t = Target::start("persist = true").await;
    let body = serde_json::json!({
        "bind": "127.0.0.1:0",
        "discovery": {
            "kind": "json",
            "json_endpoint": "http://127.0.0.1:1/list?token=s3cret&dc=eu",
        },
    })
    .to_string();
    let response = request(t.api, "POST", "/servers/sd", &[], Some(&body)).await;
    assert_eq!(response.status, 200, "{response:?}");
    for path in ["/dump", "/dump?format=json", "/servers", "/servers/sd"] {
        let shown = get(t.api, path).await.body;
        assert!(!shown.contains("s3cret"), "{path}: {shown}");
        assert!(
            shown.contains("token=<redacted>&dc=<redacted>"),
            "{path}: {shown}"
        );
    }
    // A body copied from GET and sent back keeps the real URL (the file shows it).
    let copied = get(t.api, "/servers/sd").await.body;
    let response = request(t.api, "PUT", "/servers/sd", &[], Some(&copied)).await;
    assert_eq!(response.status, 200, "{response:?}");
    let file = std::fs::read_to_string(&t.sluice.config).expect("config");
    assert!(
        file.contains("http://127.0.0.1:1/list?token=s3cret&dc=eu"),
        "{file}"
    );
    assert!(!file.contains("<redacted>"), "{file}");
    t.finish().await;
}
