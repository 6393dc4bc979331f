//! Discovery sources against their servers: a real etcd; Consul and Docker played by
//! in-test HTTP servers that replay the responses their API documentation shows (neither
//! can be installed here), including Consul's blocking queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice::backend::{AdminState, BackendSpec};
use sluice::discovery::consul::{ConsulAgent, ConsulParams, ConsulSource};
use sluice::discovery::docker::{DockerParams, DockerSource, DockerUrl};
use sluice::discovery::etcd::{EtcdEndpoint, EtcdParams, EtcdSource};
use sluice::discovery::{DiscoveryError, Source};
use sluice::tls::ClientTlsFiles;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::task::AbortOnDropHandle;

use crate::support::servers::Etcd;
use crate::support::{eventually, WAIT};

fn agent(text: &str) -> ConsulAgent {
    ConsulAgent::parse(text).expect("consul_host")
}

fn docker_url(text: &str) -> DockerUrl {
    DockerUrl::parse(text).expect("docker_endpoint")
}

fn endpoint(text: &str) -> EtcdEndpoint {
    EtcdEndpoint::parse(text).expect("etcd endpoint")
}

/// `host:port` of each backend, sorted.
fn keys(specs: &[BackendSpec]) -> Vec<String> {
    let mut keys: Vec<String> = specs.iter().map(BackendSpec::key).collect();
    keys.sort();
    keys
}

async fn fetch(source: &mut dyn Source) -> Result<Vec<BackendSpec>, DiscoveryError> {
    crate::support::init_tracing();
    timeout(WAIT, source.fetch()).await.expect("fetch in time")
}

// ---------------------------------------------------------------------------------
// A hand-written HTTP/1.1 server: one request per connection, as the sources send.

/// A request as the fake servers saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

/// Reads a request head (the sources send GETs without a body).
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Seen> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return None;
        }
        match timeout(WAIT, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Seen {
        path: percent_decode(path),
        query,
        headers,
    })
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, extra: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Consul

/// What the fake agent answers now.
#[derive(Clone, Debug)]
struct ConsulState {
    index: u64,
    status: u16,
    body: String,
}

/// A Consul agent's `/v1/health/service/NAME`, with blocking queries: a request whose
/// `index` equals the current one is held until the index changes or `wait` passes.
struct FakeConsul {
    addr: std::net::SocketAddr,
    state: watch::Sender<ConsulState>,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: AbortOnDropHandle<()>,
}

impl FakeConsul {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (state, _) = watch::channel(ConsulState {
            index: 1,
            status: 200,
            body: "[]".into(),
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (states, log) = (state.clone(), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (rx, log, tls) = (states.subscribe(), Arc::clone(&log), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => consul_exchange(tcp, rx, log).await,
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                consul_exchange(stream, rx, log).await;
                            }
                        }
                    }
                });
            }
        });
        FakeConsul {
            addr,
            state,
            seen,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn set(&self, index: u64, status: u16, body: &str) {
        self.state.send_replace(ConsulState {
            index,
            status,
            body: body.to_owned(),
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn consul_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut state: watch::Receiver<ConsulState>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    seen.lock().expect("lock").push(request.clone());
    if let Some(index) = request.query.get("index") {
        let index: u64 = index.parse().expect("numeric index");
        let wait = request
            .query
            .get("wait")
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|s| s.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        // Consul's rule: hold while nothing changed since `index`, at most `wait`.
        let _ = timeout(wait, state.wait_for(|s| s.index != index)).await;
    }
    let now = state.borrow().clone();
    let extra = format!(
        "X-Consul-Index: {}\r\nX-Consul-Knownleader: true\r\n",
        now.index
    );
    respond(&mut stream, now.status, &extra, &now.body).await;
}

/// Two instances as in Consul's API documentation of `/health/service/:service`: the
/// first with its own address, weights and meta; the second with an empty service
/// address, which means the node's address.
const CONSUL_TWO: &str = r#"[
  {
    "Node": {"ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "foobar",
             "Address": "10.1.10.12", "Datacenter": "dc1",
             "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
             "Meta": {"instance_type": "t2.medium"}},
    "Service": {"ID": "redis", "Service": "redis", "Tags": ["primary", "sni=tag.example"],
                "Address": "10.1.10.13", "Meta": {"redis_version": "4.0", "priority": "2", "sni": "redis.example"},
                "Port": 8000, "Weights": {"Passing": 10, "Warning": 1},
                "Namespace": "default"},
    "Checks": [{"Node": "foobar", "CheckID": "service:redis", "Name": "Service 'redis' check",
                "Status": "passing", "ServiceID": "redis", "ServiceName": "redis"}]
  },
  {
    "Node": {"ID": "5c2a4b1e", "Node": "baz", "Address": "10.1.10.14", "Datacenter": "dc1"},
    "Service": {"ID": "redis-2", "Service": "redis", "Tags": ["sni=tag.example"], "Address": "",
                "Port": 8001, "Weights": {"Passing": 1, "Warning": 1}},
    "Checks": []
  }
]"#;

const CONSUL_THREE: &str = r#"[
  {"Node": {"Node": "foobar", "Address": "10.1.10.12"},
   "Service": {"ID": "redis", "Service": "redis", "Address": "10.1.10.13", "Port": 8000}},
  {"Node": {"Node": "baz", "Address": "10.1.10.14"},
   "Service": {"ID": "redis-2", "Service": "redis", "Address": "", "Port": 8001}},
  {"Node": {"Node": "qux", "Address": "10.1.10.15"},
   "Service": {"ID": "redis-3", "Service": "redis", "Address": "10.1.10.16", "Port": 8002}}
]"#;

#[tokio::test]
async fn consul_blocking_queries_follow_the_index() {
    let consul = FakeConsul::start(None).await;
    consul.set(10, 200, CONSUL_TWO);
    let mut params = ConsulParams::new(agent(&consul.addr.to_string()), "redis");
    params.service_tag = Some("primary".into());
    params.passing_only = true;
    params.datacenter = Some("dc1".into());
    params.auth_username = Some("user".into());
    params.auth_password = Some("pass".into());
    params.acl_token = Some("secret-token".into());
    params.wait = Duration::from_secs(30);
    let mut source = ConsulSource::new(params).expect("source");
    assert!(source.watches());

    let first = fetch(&mut source).await.expect("first fetch");
    assert_eq!(keys(&first), ["10.1.10.13:8000", "10.1.10.14:8001"]);
    let redis = &first[0];
    assert_eq!((redis.weight, redis.priority), (10, 2));
    assert_eq!(
        redis.sni.as_deref(),
        Some("redis.example"),
        "meta wins over tags"
    );
    assert_eq!(first[1].sni.as_deref(), Some("tag.example"));

    let seen = consul.seen();
    let request = &seen[0];
    assert_eq!(request.path, "/v1/health/service/redis");
    assert_eq!(request.query.get("passing").map(String::as_str), Some("1"));
    assert_eq!(
        request.query.get("tag").map(String::as_str),
        Some("primary")
    );
    assert_eq!(request.query.get("dc").map(String::as_str), Some("dc1"));
    assert!(
        !request.query.contains_key("index"),
        "the first query does not block"
    );
    assert_eq!(request.headers["x-consul-token"], "secret-token");
    assert_eq!(request.headers["authorization"], "Basic dXNlcjpwYXNz");

    // The next fetch sends the index back and is held until the service changes.
    let blocked = tokio::spawn(async move {
        let list = fetch(&mut source).await;
        (source, list)
    });
    eventually("a blocking query with index 10", || {
        let seen = consul.seen();
        async move {
            seen.iter().any(|r| {
                r.query.get("index").map(String::as_str) == Some("10")
                    && r.query.get("wait").map(String::as_str) == Some("30s")
            })
        }
    })
    .await;
    assert!(!blocked.is_finished(), "held while the index stays 10");
    consul.set(11, 200, CONSUL_THREE);
    let (mut source, second) = blocked.await.expect("task");
    assert_eq!(
        keys(&second.expect("second fetch")),
        ["10.1.10.13:8000", "10.1.10.14:8001", "10.1.10.16:8002"]
    );
    assert_eq!(source.index(), 11);

    // An index lower than before (a restored snapshot) starts again without blocking.
    consul.set(5, 200, CONSUL_TWO);
    let third = fetch(&mut source).await.expect("third fetch");
    assert_eq!(keys(&third), ["10.1.10.13:8000", "10.1.10.14:8001"]);
    assert_eq!(source.index(), 0, "reset after the index went backwards");
    let fourth = fetch(&mut source).await.expect("fourth fetch");
    assert_eq!(keys(&fourth), keys(&third));
    let seen = consul.seen();
    assert_eq!(seen[2].query.get("index").map(String::as_str), Some("11"));
    assert!(!seen[3].query.contains_key("index"), "{:?}", seen[3]);
    assert_eq!(source.index(), 5);

    // An error answer is an error, and the query after it does not block.
    consul.set(6, 500, "rpc error: No cluster leader");
    let err = fetch(&mut source).await.expect_err("HTTP 500");
    assert!(err.to_string().contains("500"), "{err}");
    assert!(err.to_string().contains("No cluster leader"), "{err}");
    consul.set(7, 200, "{\"not\": \"a list\"}");
    let err = fetch(&mut source).await.expect_err("not a list");
    assert!(matches!(err, DiscoveryError::Invalid(_)), "{err}");
    consul.set(8, 200, CONSUL_THREE);
    assert_eq!(fetch(&mut source).await.expect("recovered").len(), 3);
    let seen = consul.seen();
    assert!(!seen[seen.len() - 1].query.contains_key("index"));
}

#[tokio::test]
async fn consul_over_tls_verifies_the_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let files = sluice::config::TlsFiles {
        cert_path: dir.path().join("agent.pem"),
        key_path: dir.path().join("agent.key"),
    };
    std::fs::write(&files.cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&files.key_path, cert.signing_key.serialize_pem()).expect("write key");
    let server = sluice::tls::server_config(&files, &[]).expect("server config");
    let consul = FakeConsul::start(Some(server)).await;
    consul.set(3, 200, CONSUL_TWO);

    let mut params =
        ConsulParams::new(agent(&format!("localhost:{}", consul.addr.port())), "redis");
    params.tls = Some(ClientTlsFiles {
        cacert_path: Some(files.cert_path.clone()),
        ..ClientTlsFiles::default()
    });
    let mut source = ConsulSource::new(params.clone()).expect("source");
    assert_eq!(fetch(&mut source).await.expect("over TLS").len(), 2);

    // Another CA does not vouch for the agent's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).expect("write");
    params.tls = Some(ClientTlsFiles {
        cacert_path: Some(other_path),
        ..ClientTlsFiles::default()
    });
    let mut untrusting = ConsulSource::new(params.clone()).expect("source");
    fetch(&mut untrusting).await.expect_err("unknown CA");

    // A certificate without its key is refused when the source is made.
    params.tls = Some(ClientTlsFiles {
        cert_path: Some(files.cert_path.clone()),
        key_path: None,
        cacert_path: Some(files.cert_path),
    });
    let err = ConsulSource::new(params).expect_err("half a pair");
    assert!(err.to_string().contains("both or neither"), "{err}");
}

// ---------------------------------------------------------------------------------
// Docker

/// `GET /containers/json` as in the Docker Engine API documentation: a container
/// published on IPv4 and IPv6 (both all-interfaces), one bound to one address with an
/// `sni` label, one exposing the port without publishing it, one whose host comes
/// from its environment, and a UDP port of the same number.
const DOCKER_CONTAINERS: &str = r#"[
  {"Id": "8dfafdbc3a40", "Names": ["/boring_feynman"], "Image": "ubuntu:latest",
   "Command": "echo 1", "Created": 1367854155, "State": "running", "Status": "Up 2 hours",
   "Ports": [{"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"},
             {"IP": "::", "PrivatePort": 8080, "PublicPort": 32768, "Type": "tcp"},
             {"PrivatePort": 2222, "Type": "tcp"}],
   "Labels": {"app": "web"}, "SizeRw": 12288, "SizeRootFs": 0},
  {"Id": "9cd87474be90", "Names": ["/coolName"], "State": "running",
   "Ports": [{"IP": "10.0.0.7", "PrivatePort": 8080, "PublicPort": 32769, "Type": "tcp"},
             {"IP": "10.0.0.7", "PrivatePort": 8080, "PublicPort": 32770, "Type": "udp"}],
   "Labels": {"app": "web", "sni": "api.example"}},
  {"Id": "3176a2479c92", "Names": ["/sleepy_dog"], "State": "running",
   "Ports": [{"PrivatePort": 8080, "Type": "tcp"}], "Labels": {"app": "web"}},
  {"Id": "4cb07b47f9fb", "Names": ["/running_cat"], "State": "running",
   "Ports": [{"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 32771, "Type": "tcp"}],
   "Labels": {"app": "web"}, "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.5"}}}}
]"#;

/// `GET /containers/ID/json`, reduced to what discovery reads.
fn docker_inspect(id: &str) -> String {
    let env = if id == "4cb07b47f9fb" {
        r#"["PATH=/usr/bin", "PUBLIC_HOST=192.168.1.5"]"#
    } else {
        r#"["PATH=/usr/bin", "PUBLIC_HOST="]"#
    };
    format!(
        r#"{{"Id": "{id}", "Config": {{"Hostname": "x", "Env": {env}}}, "State": {{"Running": true}}}}"#
    )
}

/// Where a fake Docker daemon listens: its unix socket, or TCP as with `tcp://`.
enum DockerListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A Docker daemon answering the two requests discovery makes.
async fn fake_docker(listener: DockerListener) -> (Arc<Mutex<Vec<Seen>>>, AbortOnDropHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let log = Arc::clone(&log);
            match &listener {
                DockerListener::Unix(l) => match l.accept().await {
                    Ok((stream, _)) => drop(tokio::spawn(docker_answer(stream, log))),
                    Err(_) => return,
                },
                DockerListener::Tcp(l) => match l.accept().await {
                    Ok((stream, _)) => drop(tokio::spawn(docker_answer(stream, log))),
                    Err(_) => return,
                },
            }
        }
    });
    (seen, AbortOnDropHandle::new(task))
}

async fn docker_answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    log.lock().expect("lock").push(request.clone());
    let inspected = request
        .path
        .strip_prefix("/containers/")
        .and_then(|p| p.strip_suffix("/json"));
    match (request.path.as_str(), inspected) {
        ("/containers/json", _) => respond(&mut stream, 200, "", DOCKER_CONTAINERS).await,
        (_, Some(id)) => respond(&mut stream, 200, "", &docker_inspect(id)).await,
        _ => {
            let body = r#"{"message": "page not found"}"#;
            respond(&mut stream, 404, "", body).await;
        }
    }
}

#[tokio::test]
async fn docker_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (seen, _daemon) = fake_docker(DockerListener::Tcp(listener)).await;
    let mut params = DockerParams::new(8080);
    params.endpoint = docker_url(&format!("tcp://{addr}"));
    params.container_label = Some("app=web".into());
    let mut source = DockerSource::new(params).expect("source");
    let list = fetch(&mut source).await.expect("containers");
    // Unbound ports are reached at the endpoint's host, here 127.0.0.1.
    assert_eq!(
        keys(&list),
        ["10.0.0.7:32769", "127.0.0.1:32768", "127.0.0.1:32771"]
    );
    assert_eq!(seen.lock().expect("lock")[0].path, "/containers/json");
}

#[tokio::test]
async fn docker_maps_published_ports_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind unix socket");
    let (seen, _daemon) = fake_docker(DockerListener::Unix(listener)).await;

    let mut params = DockerParams::new(8080);
    params.endpoint = docker_url(&format!("unix://{}", socket.display()));
    params.container_label = Some("app=web".into());
    let mut source = DockerSource::new(params.clone()).expect("source");
    assert!(!source.watches());
    let list = fetch(&mut source).await.expect("containers");
    assert_eq!(
        keys(&list),
        ["10.0.0.7:32769", "127.0.0.1:32768", "127.0.0.1:32771"]
    );
    let api = list.iter().find(|s| s.port == 32769).expect("api");
    assert_eq!(api.sni.as_deref(), Some("api.example"));
    assert!(list.iter().all(|s| s.weight == 1 && s.priority == 1));
    assert!(list.iter().all(|s| s.admin == AdminState::Enabled));
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1, "no inspection without a host variable");
        let filters: serde_json::Value =
            serde_json::from_str(&seen[0].query["filters"]).expect("filters are JSON");
        assert_eq!(filters, serde_json::json!({ "label": ["app=web"] }));
    }

    // With a host variable, a container that sets it is reached there.
    params.container_host_env_var = Some("PUBLIC_HOST".into());
    let mut source = DockerSource::new(params).expect("source");
    let list = fetch(&mut source).await.expect("containers");
    assert_eq!(
        keys(&list),
        ["10.0.0.7:32769", "127.0.0.1:32768", "192.168.1.5:32771"]
    );

    // Nothing listens: an I/O error, not a panic or an empty list.
    let mut params = DockerParams::new(8080);
    params.endpoint = docker_url(&format!(
        "unix://{}",
        dir.path().join("absent.sock").display()
    ));
    let mut source = DockerSource::new(params).expect("source");
    let err = fetch(&mut source).await.expect_err("no daemon");
    assert!(matches!(err, DiscoveryError::Io(_)), "{err}");
}

// ---------------------------------------------------------------------------------
// etcd

#[tokio::test]
async fn etcd_lists_a_prefix_and_wakes_on_changes() {
    let etcd = Etcd::start().await;
    etcd.put("/sluice/web/a", "127.0.0.1:8001 weight=3").await;
    etcd.put(
        "/sluice/web/b",
        r#"{"host": "127.0.0.1", "port": 8002, "priority": 2, "sni": "b.example"}"#,
    )
    .await;
    etcd.put("/sluice/web/broken", "not a backend").await;
    etcd.put("/sluice/webby", "127.0.0.1:9999").await;
    etcd.put("/other/x", "127.0.0.1:9998").await;

    let mut params = EtcdParams::new(endpoint(&etcd.url()), "/sluice/web/");
    params.wait = Duration::from_secs(30);
    let mut source = EtcdSource::new(params).expect("source");
    assert!(source.watches());
    let first = fetch(&mut source).await.expect("list");
    assert_eq!(keys(&first), ["127.0.0.1:8001", "127.0.0.1:8002"]);
    assert_eq!(first[0].weight, 3);
    assert_eq!(
        (first[1].priority, first[1].sni.as_deref()),
        (2, Some("b.example"))
    );

    // A put under the prefix ends the watch, and the new list comes back.
    let watching = tokio::spawn(async move {
        let list = fetch(&mut source).await;
        (source, list)
    });
    etcd.put("/sluice/web/c", "127.0.0.1:8003 backup").await;
    let (mut source, second) = watching.await.expect("task");
    let second = second.expect("after a put");
    assert_eq!(
        keys(&second),
        ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    );
    assert!(second.iter().any(|s| s.port == 8003 && s.backup));

    // A delete ends it too; a change outside the prefix is not listed.
    let watching = tokio::spawn(async move {
        let list = fetch(&mut source).await;
        (source, list)
    });
    etcd.put("/sluice/webby", "127.0.0.1:9997").await;
    etcd.delete("/sluice/web/a").await;
    let (mut source, third) = watching.await.expect("task");
    assert_eq!(
        keys(&third.expect("after a delete")),
        ["127.0.0.1:8002", "127.0.0.1:8003"]
    );

    // Changes made while nobody watched are not missed: the next watch starts from
    // the revision of the last list, even when that revision is compacted away.
    etcd.put("/sluice/web/d", "127.0.0.1:8004").await;
    etcd.put("/other/y", "127.0.0.1:9996").await;
    etcd.compact().await;
    let fourth = fetch(&mut source).await.expect("after compaction");
    assert_eq!(
        keys(&fourth),
        ["127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]
    );
}

#[tokio::test]
async fn etcd_with_authentication_and_a_lost_server() {
    let mut etcd = Etcd::start().await;
    etcd.put("/auth/a", "127.0.0.1:8101").await;
    for (path, body) in [
        ("/v3/auth/role/add", serde_json::json!({ "name": "root" })),
        (
            "/v3/auth/user/add",
            serde_json::json!({ "name": "root", "password": "hunter2" }),
        ),
        (
            "/v3/auth/user/grant",
            serde_json::json!({ "user": "root", "role": "root" }),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ] {
        let response =
            crate::support::http::request(etcd.addr, "POST", path, &[], Some(&body.to_string()))
                .await;
        assert_eq!(response.status, 200, "{path}: {}", response.body);
    }

    let mut params = EtcdParams::new(endpoint(&etcd.url()), "/auth/");
    let mut anonymous = EtcdSource::new(params.clone()).expect("source");
    fetch(&mut anonymous).await.expect_err("auth is on");

    params.username = Some("root".into());
    params.password = Some("hunter2".into());
    params.timeout = Duration::from_secs(2);
    let mut source = EtcdSource::new(params).expect("source");
    assert_eq!(
        keys(&fetch(&mut source).await.expect("authenticated")),
        ["127.0.0.1:8101"]
    );

    // With nothing changing, a fetch returns the same list once `wait` has passed.
    let mut params = EtcdParams::new(endpoint(&etcd.url()), "/auth/");
    params.username = Some("root".into());
    params.password = Some("hunter2".into());
    params.wait = Duration::from_millis(300);
    let mut short = EtcdSource::new(params).expect("source");
    let listed = fetch(&mut short).await.expect("list");
    assert_eq!(fetch(&mut short).await.expect("after the wait"), listed);

    // The server goes away in the middle of a watch: an error, in bounded time.
    let watching = tokio::spawn(async move { fetch(&mut source).await });
    tokio::task::yield_now().await;
    etcd.stop().await;
    watching.await.expect("task").expect_err("etcd is gone");
}
