//! Listeners and addresses, through the binary: the local address connections, UDP
//! sessions and health checks leave from (`source`, `source=`).

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::support::who::{Who, WhoUdp};
use crate::support::{eventually, process, WAIT};

/// The address the backend behind `server` saw this connection come from.
async fn seen_through(server: SocketAddr) -> String {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let mut text = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
        .await
        .expect("answered in time")
        .expect("read");
    text.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_sessions_and_checks_leave_from_the_configured_sources() {
    let shared = Who::start().await;
    let own = Who::start().await;
    let udp = WhoUdp::start().await;
    let toml = format!(
        "[servers.turns]\nbind = \"127.0.0.1:0\"\nsource = [\"127.0.0.51\", \"127.0.0.52\"]\n\
         healthcheck = {{ kind = \"ping\", interval = \"200ms\", timeout = \"1s\" }}\n\
         [servers.turns.discovery]\nkind = \"static\"\nstatic_list = [\"{shared}\"]\n\
         [servers.own]\nbind = \"127.0.0.1:0\"\nsource = \"127.0.0.51\"\n\
         [servers.own.discovery]\nkind = \"static\"\nstatic_list = [\"{own} source=127.0.0.53\"]\n\
         [servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nsource = \"127.0.0.54\"\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"{udp}\"]\n",
        shared = shared.addr,
        own = own.addr,
        udp = udp.addr,
    );
    let sluice = process::SluiceProcess::start(&toml).await;

    // In turn: both sources within a few connections.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(seen_through(sluice.server("turns")).await);
    }
    assert!(
        seen.iter()
            .all(|ip| ip == "127.0.0.51" || ip == "127.0.0.52"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|ip| ip == "127.0.0.51"), "{seen:?}");
    assert!(seen.iter().any(|ip| ip == "127.0.0.52"), "{seen:?}");
    // The health checks leave from the sources too, and from nowhere else.
    eventually("a health check reaches the backend", || async {
        shared.seen().len() > seen.len()
    })
    .await;
    assert!(!shared.saw("127.0.0.1"), "{:?}", shared.seen());

    // A backend's own source= wins over the server's.
    assert_eq!(seen_through(sluice.server("own")).await, "127.0.0.53");

    // A UDP session leaves from the server's source.
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client
        .send_to(b"who", sluice.server("dns"))
        .await
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("answered in time")
        .expect("receive");
    assert_eq!(&buf[..n], b"127.0.0.54");
}
