//! A fleet's configuration kept in a real etcd (`sluice from-etcd`), through the binary:
//! two nodes on loopback (each server binds port 0, so each node has its own port; their
//! APIs are each node's own key) follow one configuration, apply a change written to etcd, and apply
//! an edit made through either node's API; a node that loses etcd keeps what it runs,
//! says so, and follows etcd again when it is back.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use sluice::config::registries::EtcdEndpoint;
use sluice::config::EtcdParams;
use sluice::discovery::etcd::client::{Client, Written};

use crate::support::http;
use crate::support::process::*;
use crate::support::servers::Etcd;
use crate::support::*;

const PREFIX: &str = "/fleet/";

/// The shared configuration: server `test` in front of `backend`, on a port each node
/// picks.
fn shared(backend: SocketAddr) -> String {
    format!(
        "[servers.test]\nbind = \"127.0.0.1:0\"\n\
         [servers.test.discovery]\nkind = \"static\"\nstatic_list = [\"{backend}\"]\n"
    )
}

/// A node's own key: its API.
fn node_api(port: u16) -> String {
    format!("[api]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n")
}

/// Starts `sluice from-etcd` as node `node`, once its server and API listen.
async fn start_node(etcd: &Etcd, node: &str, shared: &str, own: &str) -> SluiceProcess {
    let expected = sluice::config::parse(&format!("{own}{shared}"), Path::new("x.toml"))
        .expect("valid")
        .config;
    let dir = tempfile::tempdir().expect("temp dir");
    let unused = dir.path().join("unused.toml");
    let args: Vec<OsString> = ["from-etcd", &etcd.url(), "--key", PREFIX, "--node", node]
        .iter()
        .map(OsString::from)
        .collect();
    SluiceProcess::start_args(dir, unused, &args, &expected).await
}

/// The keys of server `test`'s backends, and the state of `key` among them, by the API.
async fn backends(api: SocketAddr) -> Vec<(String, String)> {
    let answer = http::get(api, "/servers/test/backends").await;
    answer
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let key = b["key"].as_str().unwrap_or_default().to_owned();
            let state = b["state"].as_str().unwrap_or_default().to_owned();
            (key, state)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_follow_one_configuration_and_share_each_api_edit() {
    let etcd = Etcd::start().await;
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let first = shared(a.addr);
    etcd.put(&format!("{PREFIX}config"), &first).await;
    let apis = [free_port(), free_port()];
    for (n, api) in apis.iter().enumerate() {
        let key = format!("{PREFIX}nodes/n{}", n + 1);
        etcd.put(&key, &node_api(*api)).await;
    }
    let n1 = start_node(&etcd, "n1", &first, &node_api(apis[0])).await;
    let n2 = start_node(&etcd, "n2", &first, &node_api(apis[1])).await;
    assert_eq!(who(n1.server("test")).await, "a");
    let root = http::get(n1.api(), "/").await.json();
    assert_eq!(root["configStore"]["reachable"], true, "{root}");
    assert_eq!(root["configStore"]["node"], "n1", "{root}");

    // A change written to etcd reaches both nodes.
    let second = shared(b.addr);
    etcd.put(&format!("{PREFIX}config"), &second).await;
    let b_key = b.addr.to_string();
    for node in [&n1, &n2] {
        eventually(
            "each node runs the configuration etcd holds now",
            || async { backends(node.api()).await == [(b_key.clone(), "enabled".to_owned())] },
        )
        .await;
    }
    assert_eq!(who(n1.server("test")).await, "b");

    // A drain through node 1's API is written to etcd and applies on node 2 as well.
    let path = format!("/servers/test/backends/{b_key}");
    let body = r#"{"state": "drain"}"#;
    let headers = [("Content-Type", "application/json")];
    let answer = http::request(n1.api(), "PATCH", &path, &headers, Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    eventually("node 2 drains the backend too", || async {
        backends(n2.api()).await == [(b_key.clone(), "draining".to_owned())]
    })
    .await;
    let stored = etcd.get(&format!("{PREFIX}config")).await.expect("config");
    assert!(stored.contains("drain"), "{stored}");
    assert!(
        !stored.contains("[api]"),
        "a node's own sections stay its own: {stored}"
    );
    // Node 1 applied its own edit once, without reloading it back from etcd.
    assert_eq!(
        n1.log().matches("configuration reloaded").count(),
        1,
        "{}",
        n1.log()
    );

    // A configuration that cannot run leaves both nodes on theirs, and says where.
    etcd.put(&format!("{PREFIX}config"), "[servers.test]\nbind = 1\n")
        .await;
    eventually("the bad configuration is reported", || async {
        n2.log().contains("etcd:/fleet/config:2")
    })
    .await;
    assert_eq!(
        backends(n2.api()).await,
        [(b_key.clone(), "draining".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_etcd_keeps_its_configuration_and_says_so() {
    let mut etcd = Etcd::start().await;
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let api = free_port();
    let first = format!("{}{}", node_api(api), shared(a.addr));
    etcd.put(&format!("{PREFIX}config"), &first).await;
    let node = start_node(&etcd, "n1", &first, "").await;

    etcd.stop().await;
    eventually("the node says etcd is lost", || async {
        http::get(node.api(), "/").await.json()["configStore"]["reachable"] == false
    })
    .await;
    assert!(node
        .log()
        .contains("etcd cannot be reached: keeping the running configuration"));
    assert_eq!(who(node.server("test")).await, "a");
    // An edit cannot reach the other nodes: refused, nothing changed.
    let path = format!("/servers/test/backends/{}", a.addr);
    let headers = [("Content-Type", "application/json")];
    let answer = http::request(
        node.api(),
        "PATCH",
        &path,
        &headers,
        Some(r#"{"weight": 3}"#),
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(backends(node.api()).await.len(), 1);

    // etcd back, and a change made there: the node follows it again.
    etcd.restart().await;
    etcd.put(
        &format!("{PREFIX}config"),
        &format!("{}{}", node_api(api), shared(b.addr)),
    )
    .await;
    eventually("the node follows etcd again", || async {
        who(node.server("test")).await == "b"
    })
    .await;
    let root = http::get(node.api(), "/").await.json();
    assert_eq!(root["configStore"]["reachable"], true, "{root}");
    assert!(node.log().contains("etcd answers again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_etcd_names_what_is_missing_or_misplaced() {
    let etcd = Etcd::start().await;
    let url = etcd.url();
    let (status, _, err) = run_sluice(&["from-etcd", &url, "--key", "/none", "--node", "x"]).await;
    assert!(!status.success());
    assert!(
        err.contains("etcd:/none/config: etcd has no key /none/config"),
        "{err}"
    );

    etcd.put("/p/config", &shared("127.0.0.1:1".parse().expect("addr")))
        .await;
    etcd.put("/p/nodes/x", "shutdown_timeout = \"1s\"\n").await;
    let (status, _, err) = run_sluice(&["from-etcd", &url, "--key", "/p/", "--node", "x"]).await;
    assert!(!status.success());
    assert!(
        err.contains(
            "etcd:/p/nodes/x: a node's key sets only [bgp], [api] and [metrics]; \
             shutdown_timeout belong in the shared configuration"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_write_based_on_an_old_revision_changes_nothing() {
    let etcd = Etcd::start().await;
    let endpoint = EtcdEndpoint::parse(&etcd.url()).expect("endpoint");
    let mut client = Client::new(&EtcdParams::new(endpoint, "/k")).expect("client");
    let Written::At(first) = client.put_if_unchanged("/k", "one", 0).await.expect("put") else {
        panic!("a new key is written");
    };
    assert_eq!(
        client.put_if_unchanged("/k", "two", 0).await.expect("put"),
        Written::Changed
    );
    assert!(matches!(
        client
            .put_if_unchanged("/k", "two", first)
            .await
            .expect("put"),
        Written::At(_)
    ));
    assert_eq!(etcd.get("/k").await.as_deref(), Some("two"));
}
