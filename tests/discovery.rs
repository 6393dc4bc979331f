//! Discovery against real sources: DNS (dnsmasq), HTTP (nginx), commands and files.
//! A discovered change must behave as a reload: new backends join, removed ones get no
//! new connections and their open connections carry on.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;

use crate::support::data::EchoStreamer;
use crate::support::servers::{Dnsmasq, FileServer};
use crate::support::{
    assert_closed_without_data, connect_from, eventually, who, Sluice, TestBackend,
};

/// `[servers.test]` on a free loopback port with `discovery` as its discovery section.
fn config(discovery: &str) -> Config {
    let text = format!(
        "[servers.test]\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n\
         backend_connection_timeout = \"2s\"\n\
         [servers.test.discovery]\n{discovery}\n"
    );
    match sluice::config::parse(&text, Path::new("discovery.toml")) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("{e}\n{text}"),
    }
}

/// Names of the backends answering, over enough connections to see each of `expected`.
async fn names(addr: SocketAddr, rounds: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..rounds {
        seen.insert(who(addr).await);
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Waits until the backends answering are exactly `expected`.
async fn serves(s: &Sluice, expected: &[&str]) {
    let expected = set(expected);
    let what = format!("serving {expected:?}");
    let count = expected.len() * 3;
    eventually(&what, || {
        let expected = expected.clone();
        async move {
            let shared = s.shared().await;
            let pool = shared.pool.load();
            if pool.backends().len() != expected.len() {
                return false;
            }
            names(s.addr, count).await == expected
        }
    })
    .await;
}

/// `[::1]`-free, port-carrying records pointing two SRV targets at loopback backends.
fn srv_records(backends: &[(&str, &TestBackend)]) -> Vec<String> {
    let mut records = Vec::new();
    for (target, backend) in backends {
        records.push(format!(
            "--srv-host=_web._tcp.sluice.test,{target}.sluice.test,{},1,10",
            backend.addr.port()
        ));
        records.push(format!("--host-record={target}.sluice.test,127.0.0.1"));
    }
    records
}

async fn srv_follows_dns(protocol: &str) {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let mut dns = Dnsmasq::start(&srv_records(&[("a", &a), ("b", &b)])).await;
    let s = Sluice::start_config(config(&format!(
        "kind = \"srv\"\nsrv_lookup_server = \"{}\"\n\
         srv_lookup_pattern = \"_web._tcp.sluice.test.\"\nsrv_dns_protocol = \"{protocol}\"\n\
         interval = \"100ms\"",
        dns.addr
    )))
    .await;
    serves(&s, &["a", "b"]).await;
    dns.restart(&srv_records(&[("b", &b)])).await;
    serves(&s, &["b"]).await;
}

#[tokio::test]
async fn srv_over_udp_follows_the_records() {
    srv_follows_dns("udp").await;
}

#[tokio::test]
async fn srv_over_tcp_follows_the_records() {
    srv_follows_dns("tcp").await;
}

#[tokio::test]
async fn dns_follows_a_records_by_ttl() {
    let a = TestBackend::named_on("a", "127.0.0.1:0").await;
    let port = a.addr.port();
    let b = TestBackend::named_on("b", &format!("127.0.0.2:{port}")).await;
    let mut dns = Dnsmasq::start(&["--host-record=svc.sluice.test,127.0.0.1".to_owned()]).await;
    let s = Sluice::start_config(config(&format!(
        "kind = \"dns\"\ndns_hostname = \"svc.sluice.test\"\ndns_port = {port}\n\
         dns_server = \"{}\"",
        dns.addr
    )))
    .await;
    serves(&s, &["a"]).await;
    dns.restart(&["--host-record=svc.sluice.test,127.0.0.2".to_owned()])
        .await;
    // dnsmasq answers with a TTL of 1 s: the change is seen at the next refresh.
    serves(&s, &["b"]).await;
    drop(b);
}

#[tokio::test]
async fn json_over_http_with_gobetween_patterns() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let web = FileServer::start().await;
    let element = |backend: &TestBackend| {
        format!(
            "{{\"addr\": {{\"ip\": \"127.0.0.1\"}}, \"ports\": [\"{}\"], \"w\": 2}}",
            backend.addr.port()
        )
    };
    web.write("list.json", &format!("[{}, {}]", element(&a), element(&b)));
    let s = Sluice::start_config(config(&format!(
        "kind = \"json\"\njson_endpoint = \"{}\"\njson_host_pattern = \"addr.ip\"\n\
         json_port_pattern = \"ports.[0]\"\njson_weight_pattern = \"w\"\ninterval = \"100ms\"",
        web.url("list.json")
    )))
    .await;
    serves(&s, &["a", "b"]).await;
    let pool = s.shared().await.pool.load_full();
    assert!(pool.backends().iter().all(|b| b.spec.weight == 2));
    web.write("list.json", &format!("[{}]", element(&a)));
    serves(&s, &["a"]).await;
}

#[tokio::test]
async fn plaintext_over_http_with_a_regex() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let web = FileServer::start().await;
    let line = |backend: &TestBackend| format!("127.0.0.1 port {}\n", backend.addr.port());
    web.write("list.txt", &format!("{}garbage\n{}", line(&a), line(&b)));
    let s = Sluice::start_config(config(&format!(
        "kind = \"plaintext\"\nplaintext_endpoint = \"{}\"\n\
         plaintext_regex_pattern = '^(?P<host>\\S+) port (?P<port>\\d+)$'\ninterval = \"100ms\"",
        web.url("list.txt")
    )))
    .await;
    serves(&s, &["a", "b"]).await;
    web.write("list.txt", &line(&b));
    serves(&s, &["b"]).await;
}

/// `(host:port, max_connections, backup)` of each backend in server `test`'s pool.
async fn pool_specs(s: &Sluice) -> Vec<(String, Option<u32>, bool)> {
    let pool = s.shared().await.pool.load_full();
    let mut specs: Vec<_> = pool
        .backends()
        .iter()
        .map(|b| (b.key().to_owned(), b.spec.max_connections, b.spec.backup))
        .collect();
    specs.sort();
    specs
}

/// Waits until server `test`'s pool holds exactly `expected`.
async fn has_specs(s: &Sluice, mut expected: Vec<(String, Option<u32>, bool)>) {
    expected.sort();
    let what = format!("a pool of {expected:?}");
    eventually(&what, || {
        let expected = expected.clone();
        async move { pool_specs(s).await == expected }
    })
    .await;
}

#[tokio::test]
async fn json_and_plaintext_carry_max_connections_and_backup() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let web = FileServer::start().await;
    let list = serde_json::json!([
        {"host": "127.0.0.1", "port": a.addr.port(),
         "limits": {"conns": 5}, "role": {"standby": "false"}},
        {"host": "127.0.0.1", "port": b.addr.port().to_string(),
         "limits": {"conns": "2"}, "role": {"standby": 1}},
    ]);
    web.write("list.json", &list.to_string());
    web.write(
        "list.txt",
        &format!(
            "127.0.0.1 {} cap=3 standby=0\n127.0.0.1 {} cap=0 standby=true\n",
            a.addr.port(),
            b.addr.port()
        ),
    );
    let json = Sluice::start_config(config(&format!(
        "kind = \"json\"\njson_endpoint = \"{}\"\n\
         json_max_connections_pattern = \"limits.conns\"\njson_backup_pattern = \"role.standby\"",
        web.url("list.json")
    )))
    .await;
    let plaintext = Sluice::start_config(config(&format!(
        "kind = \"plaintext\"\nplaintext_endpoint = \"{}\"\n\
         plaintext_regex_pattern = '^(?P<host>\\S+) (?P<port>\\d+) cap=(?P<max_connections>\\d+) \
         standby=(?P<backup>\\S+)$'",
        web.url("list.txt")
    )))
    .await;
    has_specs(
        &json,
        vec![
            (a.addr.to_string(), Some(5), false),
            (b.addr.to_string(), Some(2), true),
        ],
    )
    .await;
    has_specs(
        &plaintext,
        vec![
            (a.addr.to_string(), Some(3), false),
            (b.addr.to_string(), None, true),
        ],
    )
    .await;
    // The backup flag is the pool's: while a is up, b gets no traffic.
    assert_eq!(names(json.addr, 4).await, set(&["a"]));
    assert_eq!(names(plaintext.addr, 4).await, set(&["a"]));
}

/// nginx serving over HTTPS with a self-signed certificate for 127.0.0.1, which is
/// written to `dir` as the CA file to trust.
async fn https_file_server(dir: &Path) -> (FileServer, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write certificate");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let (c, k) = (cert_path.clone(), key_path);
    let web = FileServer::start_with(move |addr, root| {
        format!(
            "server {{ listen {addr} ssl; root {root};\n\
             ssl_certificate {}; ssl_certificate_key {}; }}",
            c.display(),
            k.display()
        )
    })
    .await;
    (web, cert_path)
}

#[tokio::test]
async fn https_endpoints_trust_the_given_ca_only() {
    // The runtime is single-threaded: this captures the discovery runners' warnings.
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("sluice.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(Arc::new(log))
            .with_ansi(false)
            .finish(),
    );
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let (web, ca) = https_file_server(dir.path()).await;
    let element = |backend: &TestBackend| {
        format!(
            "{{\"host\": \"127.0.0.1\", \"port\": {}}}",
            backend.addr.port()
        )
    };
    web.write("list.json", &format!("[{}, {}]", element(&a), element(&b)));
    web.write("list.txt", &format!("{}\n{}\n", a.addr, b.addr));
    let url = |name: &str| format!("https://{}/{name}", web.addr);
    let discovery = |kind: &str, name: &str, ca: Option<&Path>| {
        let mut text = format!(
            "kind = \"{kind}\"\n{kind}_endpoint = \"{}\"\ninterval = \"100ms\"\n",
            url(name)
        );
        if let Some(ca) = ca {
            text.push_str(&format!("{kind}_tls_cacert_path = \"{}\"\n", ca.display()));
        }
        config(&text)
    };
    let json = Sluice::start_config(discovery("json", "list.json", Some(&ca))).await;
    let plaintext = Sluice::start_config(discovery("plaintext", "list.txt", Some(&ca))).await;
    let untrusted = Sluice::start_config(discovery("json", "list.json", None)).await;
    serves(&json, &["a", "b"]).await;
    serves(&plaintext, &["a", "b"]).await;
    web.write("list.json", &format!("[{}]", element(&b)));
    serves(&json, &["b"]).await;
    // Without the CA the certificate is not trusted and every fetch fails. A discovered
    // server starts with no backend, and keeplast has no earlier list to keep.
    eventually(
        "a failed fetch logged for the untrusted certificate",
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let failed = text.lines().any(|l| {
                l.contains("WARN") && l.contains("discovery failed") && l.contains("certificate")
            });
            async move { failed }
        },
    )
    .await;
    assert!(untrusted.shared().await.pool.load().backends().is_empty());
    let mut client = connect_from(untrusted.addr, None).await;
    assert_closed_without_data(&mut client, Duration::from_secs(5)).await;
}

/// A script for `exec` that prints `list`, fails or hangs as the file `mode` says, and
/// counts its runs in `runs`.
struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    fn new(list: &str) -> Script {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let script = format!(
            "#!/bin/sh\necho run >> {d}/runs\ncase $(cat {d}/mode) in\n\
             ok) cat {d}/list ;;\nfail) echo broken >&2; exit 1 ;;\nhang) exec sleep 30 ;;\nesac\n"
        );
        std::fs::write(dir.path().join("run.sh"), script).expect("script");
        let script = Script { dir };
        script.set("list", list);
        script.set("mode", "ok");
        script
    }

    fn set(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write");
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn discovery(&self, failpolicy: &str) -> String {
        format!(
            "kind = \"exec\"\nexec_command = [\"/bin/sh\", \"{}\"]\ninterval = \"50ms\"\n\
             timeout = \"300ms\"\nfailpolicy = \"{failpolicy}\"",
            self.dir.path().join("run.sh").display()
        )
    }

    /// Waits until the script has run `n` more times than `from`.
    async fn ran(&self, from: usize, n: usize) {
        eventually("the command ran again", || async move {
            self.runs() >= from + n
        })
        .await;
    }
}

#[tokio::test]
async fn exec_discovery_follows_the_command() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let script = Script::new(&format!("{} weight=3\n{}\n", a.addr, b.addr));
    let s = Sluice::start_config(config(&script.discovery("keeplast"))).await;
    serves(&s, &["a", "b"]).await;
    script.set("list", &format!("{}\n", b.addr));
    serves(&s, &["b"]).await;
}

#[tokio::test]
async fn keeplast_survives_a_failing_and_a_hanging_source() {
    let a = TestBackend::named("a").await;
    let script = Script::new(&format!("{}\n", a.addr));
    let s = Sluice::start_config(config(&script.discovery("keeplast"))).await;
    serves(&s, &["a"]).await;
    for mode in ["fail", "hang"] {
        script.set("mode", mode);
        // Two runs after the switch: at least one whole run failed or timed out.
        script.ran(script.runs(), 2).await;
        assert_eq!(who(s.addr).await, "a", "after a {mode} source");
    }
    script.set("mode", "ok");
}

#[tokio::test]
async fn setempty_empties_on_a_failing_and_a_hanging_source() {
    let a = TestBackend::named("a").await;
    let script = Script::new(&format!("{}\n", a.addr));
    let s = Sluice::start_config(config(&script.discovery("setempty"))).await;
    for mode in ["fail", "hang"] {
        serves(&s, &["a"]).await;
        script.set("mode", mode);
        eventually("the server has no backend", || async {
            s.shared().await.pool.load().backends().is_empty()
        })
        .await;
        let mut client = connect_from(s.addr, None).await;
        assert_closed_without_data(&mut client, Duration::from_secs(5)).await;
        script.set("mode", "ok");
    }
    serves(&s, &["a"]).await;
}

#[tokio::test]
async fn file_discovery_changes_lose_no_streamed_byte() {
    let a = TestBackend::echo().await;
    let b = TestBackend::echo().await;
    let c = TestBackend::echo().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let list = dir.path().join("backends.txt");
    std::fs::write(&list, format!("{}\n{}\n", a.addr, b.addr)).expect("write list");
    let s = Sluice::start_config(config(&format!(
        "kind = \"file\"\nfile_path = \"{}\"\ninterval = \"50ms\"",
        list.display()
    )))
    .await;
    let pool_is = |expected: Vec<SocketAddr>| {
        let s = &s;
        async move {
            let keys: BTreeSet<String> = s
                .shared()
                .await
                .pool
                .load()
                .backends()
                .iter()
                .map(|b| b.key().to_owned())
                .collect();
            keys == expected.iter().map(ToString::to_string).collect()
        }
    };
    eventually("a and b discovered", || pool_is(vec![a.addr, b.addr])).await;
    let mut streamers = Vec::new();
    for seed in 0..100u64 {
        streamers.push(EchoStreamer::start(s.addr, seed, 4096, Duration::from_millis(10)).await);
    }
    eventually("every stream reached a backend", || async {
        a.accepted() > 0 && b.accepted() > 0 && a.accepted() + b.accepted() == 100
    })
    .await;
    // JSON this time: c joins, a leaves.
    std::fs::write(
        &list,
        format!(
            "[\"{}\", {{\"host\": \"127.0.0.1\", \"port\": {}}}]",
            b.addr,
            c.addr.port()
        ),
    )
    .expect("rewrite list");
    eventually("b and c discovered", || pool_is(vec![b.addr, c.addr])).await;
    let before_a = a.accepted();
    for seed in 100..120u64 {
        streamers.push(EchoStreamer::start(s.addr, seed, 4096, Duration::from_millis(10)).await);
    }
    eventually("c takes new connections", || async { c.accepted() > 0 }).await;
    assert_eq!(
        a.accepted(),
        before_a,
        "a removed backend got a new connection"
    );
    for streamer in streamers {
        let verified = streamer.finish().await.expect("every byte came back");
        assert!(verified > 0);
    }
}

#[tokio::test]
async fn a_discovered_server_refuses_backend_edits() {
    use crate::support::http;
    let a = TestBackend::named("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let list = dir.path().join("backends.txt");
    std::fs::write(&list, format!("{}\n", a.addr)).expect("write list");
    let text = format!(
        "[servers.test]\nbind = \"127.0.0.1:0\"\n\
         [servers.test.discovery]\nkind = \"file\"\nfile_path = \"{}\"\n",
        list.display()
    );
    let config = sluice::config::parse(&text, Path::new("api.toml"))
        .expect("valid")
        .config;
    let runtime = std::sync::Arc::new(
        sluice::runtime::Runtime::start(config)
            .await
            .expect("start"),
    );
    let control = std::sync::Arc::new(sluice::control::Control::new(runtime, None));
    let api = sluice::config::ApiConfig::plain("127.0.0.1:0".parse().expect("address"));
    let api_addr = sluice::cli::start_api(api, control)
        .await
        .expect("start the API");
    let response = http::request(
        api_addr,
        "POST",
        "/servers/test/backends/127.0.0.1:1",
        &[],
        None,
    )
    .await;
    assert_eq!(response.status, 409, "{}", response.body);
    assert!(
        response.body.contains("come from discovery"),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn etcd_discovery_is_wired_to_the_server() {
    use crate::support::servers::Etcd;
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let etcd = Etcd::start().await;
    etcd.put("/web/a", &a.addr.to_string()).await;
    let s = Sluice::start_config(config(&format!(
        "kind = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"/web/\"",
        etcd.url()
    )))
    .await;
    serves(&s, &["a"]).await;
    etcd.put("/web/b", &format!("{} weight=2", b.addr)).await;
    serves(&s, &["a", "b"]).await;
    etcd.delete("/web/a").await;
    serves(&s, &["b"]).await;
}

#[tokio::test]
async fn reloads_switch_between_static_and_discovered_backends() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let list = dir.path().join("backends.txt");
    std::fs::write(&list, format!("{}\n", a.addr)).expect("write list");
    let file_kind = format!(
        "kind = \"file\"\nfile_path = \"{}\"\ninterval = \"50ms\"",
        list.display()
    );
    let s = Sluice::start_config(config(&file_kind)).await;
    serves(&s, &["a"]).await;
    // Settings change, discovery kept: the discovered backends stay, with their state.
    let state = s.shared().await.pool.load().backends()[0].state.clone();
    let mut changed = config(&file_kind);
    changed
        .servers
        .get_mut("test")
        .expect("test")
        .connect_attempts = 2;
    s.runtime.apply(changed).await.expect("reload");
    let pool = s.shared().await.pool.load_full();
    assert_eq!(pool.backends().len(), 1);
    assert!(std::sync::Arc::ptr_eq(&pool.backends()[0].state, &state));
    // To a static list: the runner stops, and its next list must not come back. A
    // witness server reads the same file on the same interval: once it has seen two
    // changes of the file, a runner still reading it would have seen the first.
    let mut fixed = config(&format!(
        "kind = \"static\"\nstatic_list = [\"{}\"]",
        b.addr
    ));
    let witness = config(&file_kind).servers.remove("test").expect("server");
    fixed.servers.insert("witness".to_owned(), witness);
    s.runtime.apply(fixed).await.expect("reload");
    serves(&s, &["b"]).await;
    let witness = s.runtime.server("witness").await.expect("witness");
    let witnessed = |n: usize| {
        let witness = Arc::clone(&witness);
        async move { witness.pool.load().backends().len() == n }
    };
    let c = TestBackend::named("c").await;
    std::fs::write(&list, format!("{}\n{}\n", a.addr, b.addr)).expect("rewrite list");
    eventually("the witness sees a and b", || witnessed(2)).await;
    std::fs::write(&list, format!("{}\n{}\n{}\n", a.addr, b.addr, c.addr)).expect("rewrite");
    eventually("the witness sees a, b and c", || witnessed(3)).await;
    assert_eq!(s.shared().await.pool.load().backends().len(), 1);
    assert_eq!(names(s.addr, 4).await, set(&["b"]));
    std::fs::write(&list, format!("{}\n{}\n", a.addr, b.addr)).expect("rewrite list");
    // And back to discovery.
    let again = config(&file_kind);
    s.runtime.apply(again).await.expect("reload");
    serves(&s, &["a", "b"]).await;
}
