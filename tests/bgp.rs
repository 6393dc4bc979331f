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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::support::bird::{self, Bird};
use crate::support::process::free_port;
use crate::support::*;

/// BIRD in AS 64500 listening on 127.0.0.1:`port` for a speaker of AS 64512 on
/// 127.0.0.2 (a neighbour not on a shared subnet: `multihop`).
fn router(port: u16) -> String {
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
    };
    let task = tokio::spawn(session::run(
        local,
        peer,
        watching,
        Arc::clone(&status),
        stop.clone(),
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
    let port = free_port();
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
    let port = free_port();
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
