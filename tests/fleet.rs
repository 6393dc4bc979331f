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

use std::io::Read;
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

/// Node `n`'s configuration: maglev over the three backends, listed in an order of its
/// own, announced while one of them lives.
fn node_config(n: usize) -> String {
    let mut order: Vec<String> = BACKENDS.iter().map(|b| format!("\"{b}:7000\"")).collect();
    order.rotate_left(n);
    format!(
        r#"[bgp]
local_as = 64512
router_id = "10.78.{n}.2"
hold_time = "3s"

  [[bgp.neighbors]]
  address = "10.78.{n}.1"
  remote_as = 64500
  local_address = "10.78.{n}.2"

[servers.web]
bind = "{SERVICE}:80"
balance = "maglev"
announce = ["{SERVICE}/32"]

  [servers.web.discovery]
  kind = "static"
  static_list = [{order}]

  [servers.web.healthcheck]
  kind = "ping"
  interval = "200ms"
  timeout = "200ms"
"#,
        order = order.join(", ")
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
                let mut stream: std::net::TcpStream = socket.into();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                let mut name = String::new();
                stream
                    .read_to_string(&mut name)
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

/// Three backends in their namespace, each greeting with its address and closing.
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
                    let _ = stream.write_all(format!("{name}\n").as_bytes());
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_one_address_and_keeps_each_client_on_its_backend() {
    let test = "a_fleet_shares_one_address_and_keeps_each_client_on_its_backend";
    let Some(net) = or_skip(fleet(), test) else {
        return;
    };
    let Some(_router) = bird::or_skip(
        Bird::start_in(Some(&net.router.name), &router_config()).await,
        test,
    ) else {
        return;
    };
    let _backends = serve_backends(&net.backends);
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
