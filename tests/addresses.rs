//! Listeners and addresses, through the binary: the local address connections, UDP
//! sessions and health checks leave from (`source`, `source=`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::support::{eventually, process, WAIT};

/// A TCP backend that answers each connection with the address it came from, and
/// remembers every such address (health checks' too).
struct Who {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for Who {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Who {
    async fn start() -> Who {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            for _ in 0..10_000 {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    return;
                };
                log.lock().expect("lock").push(peer.ip());
                tokio::spawn(async move {
                    let _ = stream
                        .write_all(format!("{}\n", peer.ip()).as_bytes())
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Who { addr, seen, task }
    }

    fn saw(&self, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().expect("address");
        self.seen.lock().expect("lock").contains(&ip)
    }
}

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
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let udp_addr = udp.local_addr().expect("address");
    let udp_task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        for _ in 0..100 {
            let Ok((_, from)) = udp.recv_from(&mut buf).await else {
                return;
            };
            let _ = udp.send_to(from.ip().to_string().as_bytes(), from).await;
        }
    });
    let toml = format!(
        "[servers.turns]\nbind = \"127.0.0.1:0\"\nsource = [\"127.0.0.51\", \"127.0.0.52\"]\n\
         healthcheck = {{ kind = \"ping\", interval = \"200ms\", timeout = \"1s\" }}\n\
         [servers.turns.discovery]\nkind = \"static\"\nstatic_list = [\"{shared}\"]\n\
         [servers.own]\nbind = \"127.0.0.1:0\"\nsource = \"127.0.0.51\"\n\
         [servers.own.discovery]\nkind = \"static\"\nstatic_list = [\"{own} source=127.0.0.53\"]\n\
         [servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nsource = \"127.0.0.54\"\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"{udp_addr}\"]\n",
        shared = shared.addr,
        own = own.addr,
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
        shared.seen.lock().expect("lock").len() > seen.len()
    })
    .await;
    assert!(!shared.saw("127.0.0.1"), "{:?}", shared.seen);

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
    udp_task.abort();
}
