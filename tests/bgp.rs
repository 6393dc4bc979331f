//! BGP sessions with a real router (BIRD on loopback): a session comes up, the routes
//! the speaker is told to announce appear in the router's table with our AS on the path,
//! a withdrawal takes them out, a stopped session says so (Cease) and the router drops
//! its routes at once, and a router that goes away is reconnected to.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use sluice::bgp::session::{self, Local, Peer, State, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::support::bird::{self, Bird};
use crate::support::process::{server_port, SluiceProcess};
use crate::support::*;

/// BIRD in AS 64500 listening on 127.0.0.1:`port` for a speaker of AS 64512 on
/// 127.0.0.2 (a neighbour not on a shared subnet: `multihop`).
pub(crate) fn router(port: u16) -> String {
    format!(
        "router id 192.0.2.1;\n\
         protocol device {{}}\n\
         protocol bgp sluice {{\n\
           local 127.0.0.1 port {port} as 64500;\n\
           neighbor 127.0.0.2 as 64512;\n\
           multihop;\n\
           passive on;\n\
           hold time 3;\n\
           ipv4 {{ import all; export none; }};\n\
         }}\n"
    )
}

fn nets(list: &[&str]) -> Arc<BTreeSet<IpNet>> {
    Arc::new(list.iter().map(|n| n.parse().expect("a prefix")).collect())
}

struct Speaker {
    routes: watch::Sender<Arc<BTreeSet<IpNet>>>,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn speak(port: u16, announce: &[&str]) -> Speaker {
    speak_keyed(port, announce, None)
}

/// As [`speak`], signing the session's segments with `password` (TCP MD5) when given.
fn speak_keyed(port: u16, announce: &[&str], password: Option<&str>) -> Speaker {
    let (routes, watching) = watch::channel(nets(announce));
    let status = Arc::new(Mutex::new(Status::default()));
    let stop = CancellationToken::new();
    let local = Local {
        asn: 64512,
        router_id: "192.0.2.2".parse().expect("router id"),
    };
    let peer = Peer {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        remote_as: 64500,
        hold_time: Duration::from_secs(3),
        local_address: Some("127.0.0.2".parse().expect("address")),
        password: password.map(str::to_owned),
    };
    let task = tokio::spawn(session::run(
        local,
        peer,
        watching,
        Arc::clone(&status),
        stop.clone(),
        // No binary upgrade here: nothing asks the session to hand itself over.
        tokio::sync::mpsc::channel(1).1,
        None,
    ));
    Speaker {
        routes,
        status,
        stop,
        task,
    }
}

impl Speaker {
    fn state(&self) -> State {
        self.status.lock().expect("status").state
    }
}

#[tokio::test]
async fn routes_are_announced_withdrawn_and_dropped_when_the_session_stops() {
    let test = "routes_are_announced_withdrawn_and_dropped_when_the_session_stops";
    let port = server_port();
    let Some(router) = bird::or_skip(Bird::start(&router(port)).await, test) else {
        return;
    };
    let speaker = speak(port, &["198.18.100.1/32", "198.18.101.0/24"]);
    eventually("the session is established on both sides", || async {
        speaker.state() == State::Established && router.bgp_state("sluice") == "Established"
    })
    .await;
    eventually("both routes in the router's table", || async {
        let routes = router.routes("sluice");
        routes.contains(&"198.18.100.1/32".to_owned())
            && routes.contains(&"198.18.101.0/24".to_owned())
    })
    .await;
    let detail = router.ask("show route 198.18.100.1/32 all").expect("birdc");
    assert!(detail.contains("BGP.as_path: 64512"), "{detail}");

    // One withdrawn, one added.
    speaker
        .routes
        .send(nets(&["198.18.101.0/24", "198.18.102.7/32"]))
        .expect("speaker listens");
    eventually("the router follows the change", || async {
        let routes = router.routes("sluice");
        !routes.contains(&"198.18.100.1/32".to_owned())
            && routes.contains(&"198.18.102.7/32".to_owned())
            && routes.contains(&"198.18.101.0/24".to_owned())
    })
    .await;

    // Stopped: the router hears a Cease and drops every route at once.
    speaker.stop.cancel();
    tokio::time::timeout(WAIT, speaker.task)
        .await
        .expect("the session ends in time")
        .expect("no panic");
    eventually("no route left", || async {
        router.routes("sluice").is_empty()
    })
    .await;
    let state = router.ask("show protocols all sluice").expect("birdc");
    assert!(state.contains("Administrative shutdown"), "{state}");
}

#[tokio::test]
async fn a_router_that_restarts_is_connected_to_again() {
    let test = "a_router_that_restarts_is_connected_to_again";
    let port = server_port();
    let Some(first) = bird::or_skip(Bird::start(&router(port)).await, test) else {
        return;
    };
    let speaker = speak(port, &["198.18.100.1/32"]);
    eventually("established", || async {
        speaker.state() == State::Established
    })
    .await;
    drop(first);
    eventually("the session is down", || async {
        speaker.state() != State::Established
    })
    .await;
    let second = Bird::start(&router(port)).await.expect("bird again");
    eventually("established again, the route announced again", || async {
        second.routes("sluice") == ["198.18.100.1/32"]
    })
    .await;
    let status = speaker.status.lock().expect("status").clone();
    assert!(status.established >= 2, "{status:?}");
    assert!(status
        .announced
        .contains(&"198.18.100.1/32".parse().expect("net")));
    speaker.stop.cancel();
}

/// Sluice (the binary) in AS 64512 announcing server `web`'s 198.18.100.1/32 to the
/// router on 127.0.0.1:`port` while its backend passes a ping check every 200 ms.
pub(crate) fn announcing(port: u16, backend: SocketAddr) -> String {
    format!(
        r#"shutdown_timeout = "30s"

[bgp]
local_as = 64512
router_id = "192.0.2.2"
hold_time = "3s"

  [[bgp.neighbors]]
  address = "127.0.0.1"
  port = {port}
  remote_as = 64500
  local_address = "127.0.0.2"

[servers.web]
bind = "127.0.0.1:0"
announce = ["198.18.100.1/32"]

  [servers.web.discovery]
  kind = "static"
  static_list = ["{backend}"]

  [servers.web.healthcheck]
  kind = "ping"
  interval = "200ms"
  timeout = "200ms"
  fails = 1
  passes = 1
"#
    )
}

pub(crate) const SERVICE: &str = "198.18.100.1/32";

pub(crate) fn holds(router: &Bird) -> bool {
    router.routes("sluice").contains(&SERVICE.to_owned())
}

#[tokio::test]
async fn a_server_is_announced_while_its_backends_live_and_withdrawn_first_on_sigterm() {
    let test = "a_server_is_announced_while_its_backends_live_and_withdrawn_first_on_sigterm";
    let port = server_port();
    let Some(router) = bird::or_skip(Bird::start(&router(port)).await, test) else {
        return;
    };
    let mut backend = TestBackend::echo().await;
    let mut sluice = SluiceProcess::start(&announcing(port, backend.addr)).await;
    eventually("announced while the backend lives", || async {
        holds(&router)
    })
    .await;

    // Every backend failing withdraws it within the check interval (and a second).
    backend.stop().await;
    let failed = std::time::Instant::now();
    eventually("withdrawn once the backend fails", || async {
        !holds(&router)
    })
    .await;
    let took = failed.elapsed();
    assert!(
        took < Duration::from_millis(1_400),
        "withdrawn after {took:?}"
    );
    backend.restart().await;
    eventually("announced again on recovery", || async { holds(&router) }).await;

    // SIGTERM: withdrawn while a connection still drains, and before the listener
    // closes; the connection finishes.
    let mut open = tokio::net::TcpStream::connect(sluice.addr)
        .await
        .expect("a client");
    open.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.expect("echo");
    sluice.signal("TERM");
    eventually("withdrawn on SIGTERM", || async { !holds(&router) }).await;
    assert!(
        sluice.child.try_wait().expect("wait").is_none(),
        "still draining the open connection"
    );
    open.write_all(b"during")
        .await
        .expect("write while draining");
    open.read_exact(&mut buf)
        .await
        .expect("echo while draining");
    assert_eq!(&buf, b"during");
    drop(open);
    let status = sluice.exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", sluice.log());
    let log = sluice.log();
    let withdrawn = log
        .find("withdrawing the announced routes")
        .expect("logged");
    let draining = log.find("shutting down").expect("logged");
    assert!(
        withdrawn < draining,
        "routes withdrawn before the drain began:\n{log}"
    );
}

#[tokio::test]
async fn a_killed_node_is_withdrawn_at_once() {
    let test = "a_killed_node_is_withdrawn_at_once";
    let port = server_port();
    let Some(router) = bird::or_skip(Bird::start(&router(port)).await, test) else {
        return;
    };
    let backend = TestBackend::echo().await;
    let mut sluice = SluiceProcess::start(&announcing(port, backend.addr)).await;
    eventually("announced", || async { holds(&router) }).await;
    sluice.signal("KILL");
    let killed = std::time::Instant::now();
    let _ = sluice.exit(WAIT).await;
    eventually("withdrawn once the process is gone", || async {
        !holds(&router)
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(1), "withdrawn after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_prefix_is_announced_over_an_ipv6_session() {
    use crate::support::netns::{or_skip, Netns};
    let test = "an_ipv6_prefix_is_announced_over_an_ipv6_session";
    let made = Netns::create("v6").and_then(|ns| {
        for addr in ["fd00:78::1/64", "fd00:78::2/64"] {
            ns.ip(&["-6", "addr", "add", addr, "dev", "lo", "nodad"])?;
        }
        Ok(ns)
    });
    let Some(ns) = or_skip(made, test) else {
        return;
    };
    let config = "router id 192.0.2.1;\n\
                  protocol device {}\n\
                  protocol bgp sluice {\n\
                    local fd00:78::1 as 64500;\n\
                    neighbor fd00:78::2 as 64512;\n\
                    multihop;\n\
                    passive on;\n\
                    hold time 3;\n\
                    ipv6 { import all; export none; };\n\
                  }\n";
    let Some(router) = bird::or_skip(Bird::start_in(Some(&ns.name), config).await, test) else {
        return;
    };
    let sluice = SluiceProcess::start_in_netns(
        &ns.name,
        r#"[bgp]
local_as = 64512
router_id = "192.0.2.2"
hold_time = "3s"

  [[bgp.neighbors]]
  address = "fd00:78::1"
  remote_as = 64500
  local_address = "fd00:78::2"

[servers.web]
bind = "[fd00:78::2]:8080"
announce = ["2001:db8:100::1/128"]

  [servers.web.discovery]
  kind = "static"
  static_list = ["[fd00:78::2]:9"]
"#,
    )
    .await;
    eventually("the IPv6 prefix in the router's table", || async {
        router.routes("sluice") == ["2001:db8:100::1/128"]
    })
    .await;
    let detail = router
        .ask("show route 2001:db8:100::1/128 all")
        .expect("birdc");
    assert!(detail.contains("BGP.as_path: 64512"), "{detail}");
    assert!(
        detail.contains("BGP.next_hop: fd00:78::2"),
        "our address is the next hop:\n{detail}\n{}",
        sluice.log()
    );
    sluice.signal("TERM");
    eventually("withdrawn on SIGTERM", || async {
        router.routes("sluice").is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_session_signed_with_the_routers_password_comes_up_and_a_wrong_one_does_not() {
    let test = "a_session_signed_with_the_routers_password_comes_up_and_a_wrong_one_does_not";
    let port = server_port();
    let config = router(port).replace("multihop;", "multihop;\n  password \"s3cret\";");
    let Some(router) = bird::or_skip(Bird::start(&config).await, test) else {
        return;
    };
    let wrong = speak_keyed(port, &["198.18.100.1/32"], Some("guess"));
    eventually("the wrongly signed connection gives up", || async {
        wrong.status.lock().expect("status").last_error.is_some()
    })
    .await;
    let error = wrong.status.lock().expect("status").last_error.clone();
    assert_ne!(router.bgp_state("sluice"), "Established", "{error:?}");
    wrong.stop.cancel();
    let _ = wrong.task.await;

    let right = speak_keyed(port, &["198.18.100.1/32"], Some("s3cret"));
    eventually(
        "the signed session is established, the route held",
        || async {
            right.state() == State::Established && router.routes("sluice") == ["198.18.100.1/32"]
        },
    )
    .await;
}
