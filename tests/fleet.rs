//! A fleet: two Sluice nodes behind one service address, each announcing it by BGP to a
//! router (BIRD, ECMP with `merge paths`), in network namespaces the test creates:
//!
//! ```text
//!   client 10.78.9.x ── router ──┬── node1 10.78.1.2 ──┐
//!                                └── node2 10.78.2.2 ──┴── backends 10.78.100.1-3
//! ```
//!
//! The router holds one next hop per node; every client address reaches the same
//! backend whichever node its connection lands on (the nodes list the backends in
//! different orders); a killed node's route is gone within a second and its clients
//! keep their backends through the other.
//!
//! With the configuration in etcd (in the router's namespace): a change written there
//! and a drain through one node's API reach both nodes; a node whose backends all fail
//! withdraws its route within the check interval and a second, and announces it again
//! on recovery; SIGTERM withdraws the route before the node drains, and no new
//! connection reaches it afterwards.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::bird::{self, Bird};
use crate::support::netns::{link, or_skip, Netns};
use crate::support::process::SluiceProcess;
use crate::support::*;

const SERVICE: &str = "198.18.100.1";
const BACKENDS: [&str; 3] = ["10.78.100.1", "10.78.100.2", "10.78.100.3"];
const CLIENTS: u8 = 30;

struct Fleet {
    router: Netns,
    nodes: [Netns; 2],
    backends: Netns,
    client: Netns,
}

fn fleet() -> Result<Fleet, String> {
    let router = Netns::create("r")?;
    let nodes = [Netns::create("n")?, Netns::create("n")?];
    let backends = Netns::create("b")?;
    let client = Netns::create("c")?;
    link(&client, "10.78.9.2/24", &router, "10.78.9.1/24")?;
    for i in 1..=CLIENTS {
        client.ip(&[
            "addr",
            "add",
            &format!("10.78.9.{}/32", 100 + i),
            "dev",
            "lo",
        ])?;
    }
    client.ip(&["route", "add", "default", "via", "10.78.9.1"])?;
    router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    router.exec("sysctl", &["-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
    for (i, node) in nodes.iter().enumerate() {
        let n = i + 1;
        link(
            node,
            &format!("10.78.{n}.2/24"),
            &router,
            &format!("10.78.{n}.1/24"),
        )?;
        link(
            node,
            &format!("10.78.1{n}.1/24"),
            &backends,
            &format!("10.78.1{n}.2/24"),
        )?;
        node.ip(&["addr", "add", &format!("{SERVICE}/32"), "dev", "lo"])?;
        node.ip(&["route", "add", "default", "via", &format!("10.78.{n}.1")])?;
        node.ip(&[
            "route",
            "add",
            "10.78.100.0/24",
            "via",
            &format!("10.78.1{n}.2"),
        ])?;
    }
    for backend in BACKENDS {
        backends.ip(&["addr", "add", &format!("{backend}/32"), "dev", "lo"])?;
    }
    Ok(Fleet {
        router,
        nodes,
        backends,
        client,
    })
}

fn router_config() -> String {
    let mut config = "router id 10.78.0.1;\nprotocol device {}\n\
                      protocol kernel { ipv4 { export all; }; merge paths yes; }\n"
        .to_owned();
    for n in 1..=2 {
        config.push_str(&format!(
            "protocol bgp node{n} {{ local 10.78.{n}.1 as 64500; neighbor 10.78.{n}.2 as 64512; \
             hold time 3; ipv4 {{ import all; export none; }}; }}\n"
        ));
    }
    config
}

/// Node `n`'s configuration: [`shared_config`] with the backends listed in an order of
/// its own, and its own BGP session.
fn node_config(n: usize) -> String {
    let mut order = BACKENDS.to_vec();
    order.rotate_left(n);
    format!("{}{}", shared_config(&order), bgp_section(n))
}

/// Node `n`'s BGP session with the router.
fn bgp_section(n: usize) -> String {
    format!(
        r#"
[bgp]
local_as = 64512
router_id = "10.78.{n}.2"
hold_time = "3s"

  [[bgp.neighbors]]
  address = "10.78.{n}.1"
  remote_as = 64500
  local_address = "10.78.{n}.2"
"#
    )
}

/// The router's next hops for the service address.
fn next_hops(router: &Netns) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", &router.name, "route", "show", SERVICE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect()
}

/// The backend each client address reaches (three connections each, which ECMP may
/// send through either node: they must agree).
fn backends_of_clients(client: &Netns) -> Result<Vec<(IpAddr, String)>, String> {
    client.inside(|| -> Result<Vec<(IpAddr, String)>, String> {
        let service: SocketAddr = format!("{SERVICE}:80").parse().expect("address");
        let mut seen = Vec::new();
        for i in 1..=CLIENTS {
            let source: IpAddr = format!("10.78.9.{}", 100 + i).parse().expect("address");
            let mut names = Vec::new();
            for _ in 0..3 {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .map_err(|e| e.to_string())?;
                socket
                    .bind(&SocketAddr::new(source, 0).into())
                    .map_err(|e| e.to_string())?;
                socket
                    .connect_timeout(&service.into(), Duration::from_secs(5))
                    .map_err(|e| format!("{source}: {e}"))?;
                let stream: std::net::TcpStream = socket.into();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                let mut name = String::new();
                BufReader::new(stream)
                    .read_line(&mut name)
                    .map_err(|e| format!("{source}: {e}"))?;
                names.push(name.trim().to_owned());
            }
            names.dedup();
            if names.len() != 1 {
                return Err(format!("{source} reached {names:?}"));
            }
            seen.push((source, names.remove(0)));
        }
        Ok(seen)
    })?
}

/// Three backends in their namespace, each greeting with its address and holding the
/// connection until the client closes it (a thread each, for at most a minute).
fn serve_backends(ns: &Netns) -> Vec<std::thread::JoinHandle<()>> {
    let listeners = ns
        .inside(|| -> std::io::Result<Vec<std::net::TcpListener>> {
            BACKENDS
                .iter()
                .map(|b| std::net::TcpListener::bind((*b, 7000)))
                .collect()
        })
        .expect("the backends' namespace")
        .expect("the backends' sockets");
    listeners
        .into_iter()
        .zip(BACKENDS)
        .map(|(listener, name)| {
            std::thread::spawn(move || {
                use std::io::Write;
                for mut stream in listener.incoming().take(10_000).flatten() {
                    std::thread::spawn(move || {
                        let _ = stream.write_all(format!("{name}\n").as_bytes());
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                        let _ = stream.read(&mut [0; 64]);
                    });
                }
            })
        })
        .collect()
}

/// The fleet's namespaces, the router's BIRD and the backends, running; `None` (with
/// the reason printed) without root or BIRD.
async fn running_fleet(test: &str) -> Option<(Fleet, Bird, Vec<std::thread::JoinHandle<()>>)> {
    let net = or_skip(fleet(), test)?;
    let router = Bird::start_in(Some(&net.router.name), &router_config()).await;
    let router = bird::or_skip(router, test)?;
    let backends = serve_backends(&net.backends);
    Some((net, router, backends))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_one_address_and_keeps_each_client_on_its_backend() {
    let test = "a_fleet_shares_one_address_and_keeps_each_client_on_its_backend";
    let Some((net, _router, _backends)) = running_fleet(test).await else {
        return;
    };
    let mut node1 = SluiceProcess::start_in_netns(&net.nodes[0].name, &node_config(1)).await;
    let _node2 = SluiceProcess::start_in_netns(&net.nodes[1].name, &node_config(2)).await;

    eventually("one next hop per node", || async {
        next_hops(&net.router).len() == 2
    })
    .await;
    let before = tokio::task::block_in_place(|| backends_of_clients(&net.client))
        .unwrap_or_else(|e| panic!("{e}\n--- node1\n{}", node1.log()));
    let used: std::collections::BTreeSet<&str> = before.iter().map(|(_, b)| b.as_str()).collect();
    assert!(
        used.len() > 1,
        "clients spread over the backends: {before:?}"
    );

    // A node killed: its route is gone within a second, and every client keeps its
    // backend through the other node.
    node1.signal("KILL");
    let killed = Instant::now();
    let _ = node1.exit(WAIT).await;
    eventually("one next hop left", || async {
        next_hops(&net.router) == ["10.78.2.2"]
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(1), "withdrawn after {took:?}");
    let after = tokio::task::block_in_place(|| backends_of_clients(&net.client))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before, after, "each client keeps its backend");
}

/// etcd in the router's namespace, answering the nodes on their links; killed on drop.
struct RouterEtcd {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

const ETCD: &str = "http://10.78.1.1:2379";

impl RouterEtcd {
    async fn start(router: &Netns) -> Result<RouterEtcd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let child = router
            .command("etcd")
            .arg("--name=router")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg("--listen-client-urls=http://10.78.1.1:2379,http://10.78.2.1:2379")
            .arg(format!("--advertise-client-urls={ETCD}"))
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-cluster=router=http://127.0.0.1:2380")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        let etcd = RouterEtcd {
            _child: child,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let health = ["--endpoints", ETCD, "endpoint", "health"];
            if router.exec("etcdctl", &health).is_ok() {
                return Ok(etcd);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("etcd did not answer in the router's namespace".into())
    }

    fn put(&self, router: &Netns, key: &str, value: &str) {
        router
            .exec("etcdctl", &["--endpoints", ETCD, "put", key, value])
            .expect("etcdctl put");
    }
}

/// What every node runs: maglev over `backends` (port 7000), announced while one lives,
/// a long drain.
fn shared_config(backends: &[&str]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}:7000\"")).collect();
    format!(
        r#"shutdown_timeout = "30s"

[servers.web]
bind = "{SERVICE}:80"
balance = "maglev"
announce = ["{SERVICE}/32"]

  [servers.web.discovery]
  kind = "static"
  static_list = [{list}]

  [servers.web.healthcheck]
  kind = "ping"
  interval = "200ms"
  timeout = "200ms"
"#,
        list = list.join(", ")
    )
}

/// Node `n`'s own key: its BGP session and its API (on its own loopback).
fn node_own(n: usize) -> String {
    format!(
        "{}\n[api]\nenabled = true\nbind = \"127.0.0.1:9000\"\n",
        bgp_section(n)
    )
}

async fn start_from_etcd(ns: &Netns, n: usize) -> SluiceProcess {
    let text = format!("{}{}", shared_config(&BACKENDS), node_own(n));
    let expected = sluice::config::parse(&text, std::path::Path::new("x.toml"))
        .expect("valid")
        .config;
    let node = format!("n{n}");
    let args: Vec<std::ffi::OsString> = ["from-etcd", ETCD, "--key", "/fleet/", "--node", &node]
        .iter()
        .map(Into::into)
        .collect();
    SluiceProcess::start_args_in_netns(&ns.name, &args, &expected).await
}

/// `METHOD PATH` with a JSON `body` on the API of the node in `ns`: status and body.
fn api_in(ns: &Netns, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    ns.inside(move || -> Result<(u16, String), String> {
        use std::io::Write;
        let api: SocketAddr = "127.0.0.1:9000".parse().expect("address");
        let mut stream = std::net::TcpStream::connect_timeout(&api, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {answer:?}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    })?
}

/// Each backend of server `web` on the node in `ns` with its state, by its API.
fn backend_states(ns: &Netns) -> Vec<(String, String)> {
    let Ok((200, body)) = api_in(ns, "GET", "/servers/web/backends", "") else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let key = b["key"].as_str().unwrap_or_default().to_owned();
            (key, b["state"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The connections open through the node in `ns`, by its API.
fn open_on(ns: &Netns) -> u64 {
    let Ok((200, body)) = api_in(ns, "GET", "/servers/web/backends", "") else {
        return 0;
    };
    let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["stats"]["active_connections"].as_u64())
        .sum()
}

/// One connection from each client address, held open (each has read its greeting).
fn hold_connections(client: &Netns) -> Vec<std::net::TcpStream> {
    client
        .inside(|| {
            let service: SocketAddr = format!("{SERVICE}:80").parse().expect("address");
            (1..=CLIENTS)
                .filter_map(|i| {
                    let source: IpAddr = format!("10.78.9.{}", 100 + i).parse().ok()?;
                    let socket =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .ok()?;
                    socket.bind(&SocketAddr::new(source, 0).into()).ok()?;
                    socket
                        .connect_timeout(&service.into(), Duration::from_secs(5))
                        .ok()?;
                    let stream: std::net::TcpStream = socket.into();
                    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                    let mut line = String::new();
                    BufReader::new(&stream).read_line(&mut line).ok()?;
                    Some(stream)
                })
                .collect()
        })
        .expect("the client's namespace")
}

/// How many connections the node has logged as finished.
fn finished(node: &SluiceProcess) -> usize {
    node.log().matches("connection closed").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_etcd_and_leaves_the_route_before_it_drains() {
    let test = "a_fleet_follows_etcd_and_leaves_the_route_before_it_drains";
    let Some((net, _router, _backends)) = running_fleet(test).await else {
        return;
    };
    let etcd = RouterEtcd::start(&net.router).await.expect("etcd");
    etcd.put(&net.router, "/fleet/config", &shared_config(&BACKENDS));
    for n in 1..=2 {
        etcd.put(&net.router, &format!("/fleet/nodes/n{n}"), &node_own(n));
    }
    let mut node1 = start_from_etcd(&net.nodes[0], 1).await;
    let node2 = start_from_etcd(&net.nodes[1], 2).await;
    eventually("one next hop per node", || async {
        next_hops(&net.router).len() == 2
    })
    .await;

    // A change written to etcd reaches every node.
    etcd.put(&net.router, "/fleet/config", &shared_config(&BACKENDS[..2]));
    let two: Vec<String> = BACKENDS[..2].iter().map(|b| format!("{b}:7000")).collect();
    for node in &net.nodes {
        eventually("each node runs the two backends etcd lists now", || async {
            let keys: Vec<String> = backend_states(node).into_iter().map(|(k, _)| k).collect();
            keys == two
        })
        .await;
    }
    let clients = tokio::task::block_in_place(|| backends_of_clients(&net.client))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(clients.iter().all(|(_, b)| b != BACKENDS[2]), "{clients:?}");

    // A drain through node 1's API applies on node 2, and on every connection after it.
    let first = format!("/servers/web/backends/{}:7000", BACKENDS[0]);
    let drained = api_in(&net.nodes[0], "PATCH", &first, r#"{"state": "drain"}"#);
    assert!(
        matches!(drained, Ok((200, _))),
        "{drained:?}\n{}",
        node1.log()
    );
    eventually("node 2 drains the backend too", || async {
        backend_states(&net.nodes[1]).contains(&(two[0].clone(), "draining".to_owned()))
    })
    .await;
    let clients = tokio::task::block_in_place(|| backends_of_clients(&net.client))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(clients.iter().all(|(_, b)| b == BACKENDS[1]), "{clients:?}");

    // Every backend failing on node 1 (its route to them gone, so each check fails at
    // once) withdraws its route within the check interval and a second; it returns on
    // recovery.
    let backends_route = ["route", "del", "10.78.100.0/24", "via", "10.78.11.2"];
    net.nodes[0]
        .ip(&backends_route)
        .expect("cut node 1 from its backends");
    let cut = Instant::now();
    eventually("node 1's route withdrawn", || async {
        next_hops(&net.router) == ["10.78.2.2"]
    })
    .await;
    let took = cut.elapsed();
    assert!(
        took < Duration::from_millis(1_200),
        "withdrawn after {took:?}"
    );
    let mut restore = backends_route;
    restore[1] = "add";
    net.nodes[0].ip(&restore).expect("node 1's backends back");
    eventually("node 1's route back", || async {
        next_hops(&net.router).len() == 2
    })
    .await;

    // SIGTERM: node 1's route leaves first, and while it drains, no new connection
    // reaches it.
    let held = tokio::task::block_in_place(|| hold_connections(&net.client));
    assert_eq!(held.len(), usize::from(CLIENTS));
    assert!(open_on(&net.nodes[0]) > 0, "node 1 holds some of them");
    node1.signal("TERM");
    eventually("node 1's route withdrawn on SIGTERM", || async {
        next_hops(&net.router) == ["10.78.2.2"]
    })
    .await;
    assert!(node1.running(), "node 1 drains after its route is gone");
    let before = finished(&node1);
    let clients = tokio::task::block_in_place(|| backends_of_clients(&net.client))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(clients.len(), usize::from(CLIENTS));
    assert!(node1.running(), "node 1 still drains what it holds");
    assert_eq!(finished(&node1), before, "no new connection reached node 1");
    // The router now sends the held connections' packets to node 2, which resets them
    // (a moved flow cannot survive: README, "Announcing by BGP"); node 1 would wait out
    // its shutdown_timeout for them, so a second SIGTERM ends it.
    drop(held);
    node1.signal("TERM");
    let status = node1.exit(WAIT).await;
    assert!(status.success(), "{}", node1.log());
    drop(node2);
}
