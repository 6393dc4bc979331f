//! The admin API against a running Sluice: round trips, errors with the right status and
//! field, authentication, changes while traffic flows, reloads and persistence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use sluice::balance::BalanceKind;
use sluice::config::{ApiConfig, BasicAuth, Config, Cors};
use sluice::control::Control;
use sluice::origin::Origin;
use sluice::runtime::Runtime;

use crate::support::data::EchoStreamer;
use crate::support::http::{get, request};
use crate::support::*;

/// Sluice with its API, both on loopback ports.
struct WithApi {
    runtime: Arc<Runtime>,
    api: SocketAddr,
    addr: SocketAddr,
}

fn api_config() -> ApiConfig {
    ApiConfig::plain("127.0.0.1:0".parse().expect("address"))
}

async fn start(config: Config, api: ApiConfig, file: Option<PathBuf>) -> WithApi {
    init_tracing();
    let runtime = Arc::new(Runtime::start(config).await.expect("start sluice"));
    let addr = runtime.local_addrs().await["test"];
    let origin = file.map(|path| Origin::File { path, format: None });
    let control = Arc::new(Control::new(Arc::clone(&runtime), origin));
    let api = sluice::cli::start_api(api, control)
        .await
        .expect("start the API");
    WithApi { runtime, api, addr }
}

async fn two_backends() -> (TestBackend, TestBackend, WithApi) {
    let (a, b) = (TestBackend::named("a").await, TestBackend::named("b").await);
    let server = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    let sluice = start(config(server), api_config(), None).await;
    (a, b, sluice)
}

async fn send(api: SocketAddr, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = (!body.is_null()).then(|| body.to_string());
    let response = request(api, method, path, &[], body.as_deref()).await;
    let value = if response.body.is_empty() {
        Value::Null
    } else {
        response.json()
    };
    (response.status, value)
}

#[tokio::test]
async fn gobetween_endpoints_answer_in_its_shapes() {
    let (a, _b, s) = two_backends().await;
    let ping = get(s.api, "/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "pong"));
    let root = get(s.api, "/").await.json();
    assert_eq!(root["pid"], json!(std::process::id()));
    assert!(root["uptime"].is_string() && root["version"].is_string());

    let servers = get(s.api, "/servers").await.json();
    assert_eq!(servers["test"]["balance"], "roundrobin");
    assert_eq!(servers["test"]["bind"], "127.0.0.1:0"); // as configured
    let static_list = &servers["test"]["discovery"]["static_list"];
    assert_eq!(static_list[0], a.spec().key());
    assert_eq!(get(s.api, "/servers/test").await.json(), servers["test"]);

    // Known traffic, then the stats: 4 connections, 5 bytes each way through an echo.
    for _ in 0..4 {
        let (_, mut stream) = hello(s.addr, None).await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"12345")
            .await
            .expect("write");
        let mut echoed = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut echoed)
            .await
            .expect("echo");
    }
    // Counters move as the relay writes, a moment after the client may read: wait for
    // the connections to be over before reading them.
    eventually("the connections are over", || async {
        get(s.api, "/servers/test/stats").await.json()["active_connections"] == json!(0)
    })
    .await;
    let stats = get(s.api, "/servers/test/stats").await.json();
    let backends = stats["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    let total: u64 = backends
        .iter()
        .map(|b| b["stats"]["total_connections"].as_u64().expect("total"))
        .sum();
    assert_eq!(total, 4);
    assert_eq!(stats["tx_total"], json!(4 * 5));
    // Each backend greets with its name and a newline ("a\n"), then echoes the 5 bytes.
    assert_eq!(stats["rx_total"], json!(4 * (2 + 5)));
    assert_eq!(backends[0]["port"], json!(a.spec().port.to_string()));
    assert_eq!(backends[0]["stats"]["live"], json!(true));
}

#[tokio::test]
async fn unknown_names_are_404_and_bad_bodies_400_with_the_field() {
    let (a, _b, s) = two_backends().await;
    let key = a.spec().key();
    for path in [
        "/servers/nope",
        "/servers/nope/stats",
        "/servers/nope/backends",
        "/servers/test/backends/127.0.0.1:1",
        "/no/such/endpoint",
    ] {
        let response = get(s.api, path).await;
        assert_eq!(response.status, 404, "{path}: {}", response.body);
        assert!(response.json()["error"].is_string());
    }
    let (status, _) = send(s.api, "DELETE", "/servers/nope", Value::Null).await;
    assert_eq!(status, 404);
    let (status, _) = send(
        s.api,
        "PATCH",
        "/servers/test/backends/127.0.0.1:1",
        json!({"weight": 2}),
    )
    .await;
    assert_eq!(status, 404);

    let patch = format!("/servers/test/backends/{key}");
    for (body, field) in [
        (json!({"weight": 0}), "weight"),
        (json!({"state": "off"}), "state"),
        (json!({"wieght": 3}), "wieght"),
        (json!({"max_connections": -1}), "max_connections"),
    ] {
        let (status, error) = send(s.api, "PATCH", &patch, body.clone()).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (400, Some(field)),
            "{body}: {error}"
        );
    }
    let response = request(s.api, "PATCH", &patch, &[], Some("{not json")).await;
    assert_eq!(response.status, 400);

    let bad_server = json!({"bind": "127.0.0.1:0", "balance": "fastest",
        "discovery": {"kind": "static", "static_list": ["127.0.0.1:9"]}});
    let (status, error) = send(s.api, "POST", "/servers/other", bad_server).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (400, Some("balance")),
        "{error}"
    );
    let response = get(s.api, "/dump?format=yaml").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["field"], "format");
}

/// Server `test` in front of `a`, with the API, its port named in its configuration as a
/// file would name it (the server, already listening there, keeps its sockets).
async fn on_its_own_port(a: &TestBackend) -> WithApi {
    let mut server = server(BalanceKind::RoundRobin, vec![a.spec()]);
    let s = start(config(server.clone()), api_config(), None).await;
    server.bind = s.addr.into();
    s.runtime
        .apply(config(server))
        .await
        .expect("name the port");
    s
}

#[tokio::test]
async fn conflicts_are_409() {
    let a = TestBackend::named("a").await;
    let s = on_its_own_port(&a).await;
    let server = json!({"bind": "127.0.0.1:0",
        "discovery": {"kind": "static", "static_list": [a.spec().key()]}});
    let (status, _) = send(s.api, "POST", "/servers/test", server).await;
    assert_eq!(status, 409);
    let same_bind = json!({"bind": s.addr.to_string(),
        "discovery": {"kind": "static", "static_list": [a.spec().key()]}});
    let (status, error) = send(s.api, "POST", "/servers/other", same_bind).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (409, Some("bind")),
        "{error}"
    );
    let path = format!("/servers/test/backends/{}", a.spec().key());
    let (status, _) = send(s.api, "POST", &path, Value::Null).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn servers_and_backends_are_created_changed_and_deleted() {
    let (a, b, s) = two_backends().await;
    let c = TestBackend::named("c").await;
    let new_server = json!({"bind": "127.0.0.1:0", "balance": "leastconn",
        "discovery": {"kind": "static", "static_list": [c.spec().key()]}});
    let (status, created) = send(s.api, "POST", "/servers/other", new_server).await;
    assert_eq!(
        (status, created["balance"].as_str()),
        (200, Some("leastconn"))
    );
    let other = s.runtime.local_addrs().await["other"];
    assert_eq!(who(other).await, "c");

    // PUT changes it in place: same listener, new backend, and a connection open
    // across the change keeps working.
    let (name, mut open) = hello(other, None).await;
    assert_eq!(name, "c");
    let changed = json!({"bind": "127.0.0.1:0", "balance": "leastconn",
        "discovery": {"kind": "static", "static_list": [a.spec().key()]}});
    let (status, _) = send(s.api, "PUT", "/servers/other", changed).await;
    assert_eq!(status, 200);
    assert_eq!(s.runtime.local_addrs().await["other"], other);
    assert_eq!(who(other).await, "a");
    tokio::io::AsyncWriteExt::write_all(&mut open, b"across")
        .await
        .expect("write");
    let mut echoed = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut open, &mut echoed)
        .await
        .expect("echo");
    assert_eq!(&echoed, b"across");
    let (status, _) = send(s.api, "DELETE", "/servers/other", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(get(s.api, "/servers/other").await.status, 404);

    // Backends as resources.
    let path = format!("/servers/test/backends/{}", c.spec().key());
    let (status, added) = send(s.api, "POST", &path, json!({"weight": 3})).await;
    assert_eq!(
        (status, added["weight"].as_u64()),
        (200, Some(3)),
        "{added}"
    );
    // Round robin ignores weights: the new backend takes its third.
    let names = tally(who_for_each(s.addr, &client_ips(30)).await);
    assert_eq!(
        (names["a"], names["b"], names["c"]),
        (10, 10, 10),
        "{names:?}"
    );
    assert_eq!(get(s.api, &path).await.json()["weight"], json!(3));
    let (status, _) = send(s.api, "DELETE", &path, Value::Null).await;
    assert_eq!(status, 200);
    let backends = get(s.api, "/servers/test/backends").await.json();
    assert_eq!(backends.as_array().map(Vec::len), Some(2));
    let _ = (a, b);
}

#[tokio::test]
async fn draining_keeps_open_connections_and_sends_new_ones_elsewhere() {
    let (a, _b, s) = two_backends().await;
    // Round robin: the first client lands on a.
    let (name, mut open) = hello(s.addr, None).await;
    assert_eq!(name, "a");
    let path = format!("/servers/test/backends/{}", a.spec().key());
    let (status, backend) = send(s.api, "PATCH", &path, json!({"state": "drain"})).await;
    assert_eq!(
        (status, backend["state"].as_str()),
        (200, Some("draining")),
        "{backend}"
    );
    for _ in 0..6 {
        assert_eq!(who(s.addr).await, "b");
    }
    // The open connection still works both ways.
    tokio::io::AsyncWriteExt::write_all(&mut open, b"still here")
        .await
        .expect("write");
    let mut echoed = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut open, &mut echoed)
        .await
        .expect("echo");
    assert_eq!(&echoed, b"still here");
    let listed = get(s.api, &path).await.json();
    assert_eq!(listed["stats"]["active_connections"], json!(1));
    let (status, _) = send(s.api, "PATCH", &path, json!({"state": "enabled"})).await;
    assert_eq!(status, 200);
    let names = tally(who_for_each(s.addr, &client_ips(4)).await);
    assert_eq!(names.get("a"), Some(&2), "{names:?}");
}

#[tokio::test]
async fn changes_while_traffic_flows_lose_nothing() {
    let echo = TestBackend::echo().await;
    let other = TestBackend::echo().await;
    let server = server(BalanceKind::RoundRobin, vec![echo.spec(), other.spec()]);
    let s = start(config(server), api_config(), None).await;
    let mut streams = Vec::new();
    for seed in 0..40 {
        streams.push(EchoStreamer::start(s.addr, seed, 4096, Duration::from_millis(2)).await);
    }
    let echo_path = format!("/servers/test/backends/{}", echo.spec().key());
    let extra = TestBackend::echo().await;
    let extra_path = format!("/servers/test/backends/{}", extra.spec().key());
    for round in 0..10u64 {
        let (status, _) = send(s.api, "PATCH", &echo_path, json!({"weight": round + 1})).await;
        assert_eq!(status, 200);
        let (status, _) = send(s.api, "POST", &extra_path, Value::Null).await;
        assert_eq!(status, 200);
        let (status, _) = send(s.api, "DELETE", &extra_path, Value::Null).await;
        assert_eq!(status, 200);
    }
    let (status, _) = send(s.api, "PATCH", &echo_path, json!({"state": "drain"})).await;
    assert_eq!(status, 200);
    for streamer in streams {
        let verified = streamer.finish().await.expect("every byte echoed in order");
        assert!(verified > 0);
    }
}

#[tokio::test]
async fn authentication_is_required_when_configured() {
    let backend = TestBackend::named("a").await;
    let mut api = api_config();
    api.basic_auth = Some(BasicAuth {
        login: "admin".into(),
        password: "s3cret".into(),
    });
    api.bearer_token = Some("tok-123".into());
    let mut config = config(server(BalanceKind::RoundRobin, vec![backend.spec()]));
    config.api = Some(api.clone());
    let s = start(config, api, None).await;
    let missing = get(s.api, "/servers").await;
    assert_eq!(missing.status, 401);
    // The dashboard page holds no data: it loads without credentials, its API calls do not.
    assert_eq!(get(s.api, "/ui").await.status, 200);
    assert!(missing
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Basic")));
    let wrong = base64::engine::general_purpose::STANDARD.encode("admin:guess");
    let response = request(
        s.api,
        "GET",
        "/servers",
        &[("Authorization", &format!("Basic {wrong}"))],
        None,
    )
    .await;
    assert_eq!(response.status, 401);
    let right = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
    let response = request(
        s.api,
        "GET",
        "/servers",
        &[("Authorization", &format!("Basic {right}"))],
        None,
    )
    .await;
    assert_eq!(response.status, 200);
    let response = request(
        s.api,
        "GET",
        "/servers",
        &[("Authorization", "Bearer tok-123")],
        None,
    )
    .await;
    assert_eq!(response.status, 200);
    let response = request(
        s.api,
        "GET",
        "/servers",
        &[("Authorization", "Bearer tok-12")],
        None,
    )
    .await;
    assert_eq!(response.status, 401);
    // The probes need none, and say nothing else.
    let ping = get(s.api, "/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "pong"));
    let ready = get(s.api, "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json(), json!({ "ready": true }));
    // The dump never shows the secrets.
    let dump = request(
        s.api,
        "GET",
        "/dump?format=json",
        &[("Authorization", "Bearer tok-123")],
        None,
    )
    .await;
    assert_eq!(dump.status, 200);
    assert!(
        !dump.body.contains("s3cret") && !dump.body.contains("tok-123"),
        "{}",
        dump.body
    );
    assert_eq!(dump.json()["api"]["basic_auth"]["password"], "<redacted>");
}

#[tokio::test]
async fn reload_and_persist_go_through_the_file() {
    let (a, b) = (TestBackend::named("a").await, TestBackend::named("b").await);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sluice.toml");
    let text = |backends: &str| {
        format!(
            "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\npersist = true\n\
             [servers.test]\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n\
             [servers.test.discovery]\nkind = \"static\"\nstatic_list = [{backends}]\n"
        )
    };
    std::fs::write(&file, text(&format!("\"{}\"", a.spec().key()))).expect("write config");
    let loaded = sluice::config::load(&file).expect("valid config");
    let api = loaded.config.api.clone().expect("api");
    let s = start(loaded.config, api, Some(file.clone())).await;
    assert_eq!(who(s.addr).await, "a");

    // POST /reload reads the file again.
    std::fs::write(&file, text(&format!("\"{}\"", b.spec().key()))).expect("rewrite");
    let (status, result) = send(s.api, "POST", "/reload", Value::Null).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["changes"],
        json!([{"server": "test", "action": "update"}])
    );
    assert_eq!(who(s.addr).await, "b");

    // An invalid file: 400 with the errors; the running config stays.
    let invalid =
        text(&format!("\"{}\"", b.spec().key())).replace("balance = \"roundrobin\"", "balance = 3");
    std::fs::write(&file, invalid).expect("rewrite");
    let (status, error) = send(s.api, "POST", "/reload", Value::Null).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (400, Some("servers.test.balance")),
        "{error}"
    );
    assert_eq!(who(s.addr).await, "b");

    // With persist = true an API change is written back and survives a restart.
    std::fs::write(&file, text(&format!("\"{}\"", b.spec().key()))).expect("rewrite");
    let path = format!("/servers/test/backends/{}", b.spec().key());
    let (status, _) = send(
        s.api,
        "PATCH",
        &path,
        json!({"weight": 7, "state": "drain"}),
    )
    .await;
    assert_eq!(status, 200);
    let reloaded = sluice::config::load(&file).expect("the written file is valid");
    let backends = reloaded.config.servers["test"]
        .discovery
        .static_backends()
        .expect("a static list");
    assert_eq!(backends[0].weight, 7);
    assert_eq!(backends[0].admin, sluice::backend::AdminState::Draining);
    assert_eq!(reloaded.config.api.map(|a| a.persist), Some(true));
}

/// A server sent to the API takes its relative paths from the configuration file's
/// directory, as the file's own do, and `persist` writes them absolute.
#[tokio::test]
async fn api_servers_take_relative_paths_from_the_files_directory() {
    let a = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sluice.toml");
    let text = format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\npersist = true\n\
         [servers.test]\nbind = \"127.0.0.1:0\"\n\
         discovery = {{ kind = \"static\", static_list = [\"{}\"] }}\n",
        a.spec().key()
    );
    std::fs::write(&file, text).expect("write config");
    let loaded = sluice::config::load(&file).expect("valid config");
    let api = loaded.config.api.clone().expect("api");
    let s = start(loaded.config, api, Some(file.clone())).await;

    let body = json!({
        "bind": "127.0.0.1:0",
        "discovery": {"kind": "file", "file_path": "backends.txt"},
    });
    let (status, view) = send(s.api, "POST", "/servers/listed", body).await;
    assert_eq!(status, 200, "{view}");
    let absolute = dir.path().join("backends.txt").display().to_string();
    assert_eq!(view["discovery"]["file_path"], json!(absolute));
    let written = std::fs::read_to_string(&file).expect("read the written file");
    assert!(
        written.contains(&format!("file_path = \"{absolute}\"")),
        "{written}"
    );
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let (_a, _b, s) = two_backends().await;
    let response = get(s.api, "/openapi.json").await;
    assert_eq!(response.status, 200);
    let doc = response.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    for (path, expected) in sluice::api::ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not described"));
        let mut described: Vec<&str> = methods
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        let mut expected = expected.to_vec();
        described.sort_unstable();
        expected.sort_unstable();
        assert_eq!(described, expected, "methods of {path}");
    }
    let routes: Vec<&str> = sluice::api::ROUTES.iter().map(|(p, _)| *p).collect();
    for path in paths.keys() {
        assert!(
            routes.contains(&path.as_str()),
            "{path} is described but not routed"
        );
    }
}

#[tokio::test]
async fn a_drain_deadline_closes_what_is_still_open_then() {
    let (a, _b, s) = two_backends().await;
    let (name, mut on_a) = hello(s.addr, None).await;
    assert_eq!(name, "a");
    let (name, mut on_b) = hello(s.addr, None).await;
    assert_eq!(name, "b");
    let path = format!("/servers/test/backends/{}", a.spec().key());
    let (status, error) = send(s.api, "PATCH", &path, json!({"deadline": "1s"})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("deadline")));
    let body = json!({"state": "drain", "deadline": "300ms"});
    let (status, _) = send(s.api, "PATCH", &path, body).await;
    assert_eq!(status, 200);
    // The connection to a is closed by the deadline; the one to b is untouched.
    let rest = read_until_closed(&mut on_a, WAIT).await;
    assert!(rest.is_empty(), "{rest:?}");
    tokio::io::AsyncWriteExt::write_all(&mut on_b, b"ok")
        .await
        .expect("write");
    let mut echoed = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut on_b, &mut echoed)
        .await
        .expect("echo");
    assert_eq!(&echoed, b"ok");
    // Still draining afterwards, and new clients go to b.
    assert_eq!(get(s.api, &path).await.json()["state"], "draining");
    assert_eq!(who(s.addr).await, "b");
}

#[tokio::test]
async fn https_when_api_tls_is_set() {
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let mut api = api_config();
    api.tls = Some(sluice::config::TlsFiles {
        cert_path,
        key_path,
    });
    let s = start(
        config(server(BalanceKind::RoundRobin, vec![backend.spec()])),
        api,
        None,
    )
    .await;

    // A client speaking plain HTTP to the HTTPS port is closed; it does not stall others.
    let plain = tokio::time::timeout(WAIT, async {
        let mut stream = tokio::net::TcpStream::connect(s.api)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    });
    assert!(!String::from_utf8_lossy(&plain.await.expect("closed in time")).contains("pong"));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test certificate");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(s.api)
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        tls.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        let _ = tls.read_to_string(&mut response).await;
        response
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answered in time");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("pong"), "{response}");
}

#[tokio::test]
async fn cors_answers_other_origins_only_when_enabled() {
    let backend = TestBackend::named("a").await;
    let origin = [("Origin", "http://dashboard.example")];
    let closed = start(
        config(server(BalanceKind::RoundRobin, vec![backend.spec()])),
        api_config(),
        None,
    )
    .await;
    let response = request(closed.api, "GET", "/servers", &origin, None).await;
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(response.header("access-control-allow-origin"), None);

    let mut api = api_config();
    api.cors = Cors::AnyOrigin;
    let open = start(
        config(server(BalanceKind::RoundRobin, vec![backend.spec()])),
        api,
        None,
    )
    .await;
    let response = request(open.api, "GET", "/servers", &origin, None).await;
    assert_eq!(response.status, 200);
    assert!(response.header("access-control-allow-origin").is_some());
    let preflight = [
        ("Origin", "http://dashboard.example"),
        ("Access-Control-Request-Method", "PATCH"),
    ];
    let response = request(
        open.api,
        "OPTIONS",
        "/servers/test/backends/x:1",
        &preflight,
        None,
    )
    .await;
    assert!(response.status < 300, "{response:?}");
    assert!(
        response
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("PATCH") || m == "*"),
        "{response:?}"
    );
}

#[tokio::test]
async fn a_later_state_change_cancels_an_earlier_drain_deadline() {
    let (a, b, s) = two_backends().await;
    let (name, mut on_a) = hello(s.addr, None).await;
    assert_eq!(name, "a");
    let (name, mut on_b) = hello(s.addr, None).await;
    assert_eq!(name, "b");
    let path = format!("/servers/test/backends/{}", a.spec().key());
    let body = json!({"state": "drain", "deadline": "200ms"});
    assert_eq!(send(s.api, "PATCH", &path, body).await.0, 200);
    // Drained again, now without a deadline: the first deadline no longer applies.
    assert_eq!(
        send(s.api, "PATCH", &path, json!({"state": "drain"}))
            .await
            .0,
        200
    );
    // A witness: b drained afterwards with a longer deadline. Once that one has closed
    // b's connection, a's first deadline would long have closed a's.
    let b_path = format!("/servers/test/backends/{}", b.spec().key());
    let body = json!({"state": "drain", "deadline": "400ms"});
    assert_eq!(send(s.api, "PATCH", &b_path, body).await.0, 200);
    let rest = read_until_closed(&mut on_b, WAIT).await;
    assert!(rest.is_empty(), "{rest:?}");
    tokio::io::AsyncWriteExt::write_all(&mut on_a, b"alive")
        .await
        .expect("write");
    let mut echoed = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut on_a, &mut echoed)
        .await
        .expect("still open");
    assert_eq!(&echoed, b"alive");
}

/// An edit is held to the rules of a file: a server keeps at least one backend.
#[tokio::test]
async fn the_last_backend_of_a_server_cannot_be_deleted() {
    let (a, b, s) = two_backends().await;
    let path = format!("/servers/test/backends/{}", a.spec().key());
    let (status, _) = send(s.api, "DELETE", &path, Value::Null).await;
    assert_eq!(status, 200);
    let path = format!("/servers/test/backends/{}", b.spec().key());
    let (status, error) = send(s.api, "DELETE", &path, Value::Null).await;
    assert_eq!(
        (status, error["field"].as_str(), error["error"].as_str()),
        (
            400,
            Some("servers.test.discovery.static_list"),
            Some("empty; a server needs at least one backend")
        ),
        "{error}"
    );
    let backends = get(s.api, "/servers/test/backends").await.json();
    assert_eq!(backends.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_server_with_a_bind_list_is_created_and_its_ranges_checked() {
    let a = TestBackend::named("a").await;
    let s = on_its_own_port(&a).await;
    let listed = json!({"bind": ["127.0.0.1:0", "127.0.0.1:0"],
        "discovery": {"kind": "static", "static_list": [a.spec().key()]}});
    let (status, created) = send(s.api, "POST", "/servers/two", listed).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["bind"], json!(["127.0.0.1:0", "127.0.0.1:0"]));
    let shown = get(s.api, "/servers/two").await.json();
    assert_eq!(
        shown["bind"],
        json!(["127.0.0.1:0", "127.0.0.1:0"]),
        "{shown}"
    );
    // A range over the port another server listens on is refused, naming both.
    let port = s.addr.port();
    let range = format!("127.0.0.1:{}-{}", port.saturating_sub(1).max(1), port);
    let overlapping = json!({"bind": [range],
        "discovery": {"kind": "static", "static_list": [a.spec().key()]}});
    let (status, error) = send(s.api, "POST", "/servers/three", overlapping).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (409, Some("bind")),
        "{error}"
    );
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains(&s.addr.to_string())),
        "{error}"
    );
}

#[tokio::test]
async fn ready_names_the_servers_without_a_live_backend() {
    let (a, b) = (TestBackend::named("a").await, TestBackend::named("b").await);
    let mut api = api_config();
    api.bearer_token = Some("tok".into());
    let mut config = config(server(BalanceKind::RoundRobin, vec![a.spec()]));
    config.servers.insert(
        "other".into(),
        server(BalanceKind::RoundRobin, vec![b.spec()]),
    );
    config.api = Some(api.clone());
    let s = start(config, api, None).await;
    assert_eq!(get(s.api, "/ready").await.status, 200);

    // One server's only backend down, the other's disabled: both named, in order.
    let test = s.runtime.server("test").await.expect("server test");
    test.pool.load().backends()[0].set_healthy(false);
    let auth = [("Authorization", "Bearer tok")];
    let path = format!("/servers/other/backends/{}", b.spec().key());
    let patched = request(
        s.api,
        "PATCH",
        &path,
        &auth,
        Some(r#"{"state":"disabled"}"#),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let ready = get(s.api, "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json(),
        json!({ "ready": false, "servers_without_backends": ["other", "test"] })
    );
    test.pool.load().backends()[0].set_healthy(true);
    let ready = get(s.api, "/ready").await;
    assert_eq!(
        ready.json(),
        json!({ "ready": false, "servers_without_backends": ["other"] })
    );
}
