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

/// `count` consecutive ports, free for TCP and UDP on 127.0.0.1 a moment ago.
fn free_ports(count: u16) -> u16 {
    for _ in 0..50 {
        let base = process::free_port();
        if base.checked_add(count).is_none() {
            continue;
        }
        let free = (base..base + count).all(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}

/// A TCP and a UDP backend on `ip:port` answering with their own address, so a test
/// sees which backend and which port a connection or datagram reached.
fn where_am_i(ip: &str, port: u16) -> Vec<tokio::task::JoinHandle<()>> {
    let tcp = std::net::TcpListener::bind((ip, port)).expect("bind");
    tcp.set_nonblocking(true).expect("non-blocking");
    let tcp = tokio::net::TcpListener::from_std(tcp).expect("register");
    let udp = std::net::UdpSocket::bind((ip, port)).expect("bind");
    udp.set_nonblocking(true).expect("non-blocking");
    let udp = UdpSocket::from_std(udp).expect("register");
    vec![
        tokio::spawn(async move {
            for _ in 0..100 {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    return;
                };
                let here = stream
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, here.as_bytes()).await;
            }
        }),
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..100 {
                let Ok((_, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let here = udp.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = udp.send_to(here.as_bytes(), from).await;
            }
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_binds_and_a_port_range_are_one_server_reaching_the_dialled_port() {
    let base = free_ports(3);
    let mut backends = Vec::new();
    for ip in ["127.0.0.71", "127.0.0.72"] {
        for port in base..base + 3 {
            backends.extend(where_am_i(ip, port));
        }
    }
    let (range, last) = (format!("127.0.0.1:{base}-{}", base + 1), base + 2);
    let servers = |name: &str, protocol: &str| {
        format!(
            "[servers.{name}]\nbind = [\"{range}\", \"127.0.0.1:{last}\"]\nprotocol = \"{protocol}\"\n\
             balance = \"iphash\"\nbackend_port = \"same\"\n\
             [servers.{name}.discovery]\nkind = \"static\"\n\
             static_list = [\"127.0.0.71:{base}\", \"127.0.0.72:{base}\"]\n"
        )
    };
    let toml = format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n{}{}\
         [servers.single]\nbind = \"127.0.0.1:0\"\n\
         [servers.single.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.71:{base}\"]\n",
        servers("multi", "tcp"),
        servers("dns", "udp")
    );
    let sluice = process::SluiceProcess::start(&toml).await;

    // One client reaches one backend (iphash over one pool), on the port it dialled.
    let mut hosts = Vec::new();
    for port in base..base + 3 {
        let dialled = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream =
            crate::support::connect_from(dialled, Some("127.0.0.5".parse().expect("ip"))).await;
        let mut here = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut here))
            .await
            .expect("answered in time")
            .expect("read");
        let here: SocketAddr = here.parse().unwrap_or_else(|_| panic!("{here:?}"));
        assert_eq!(here.port(), port, "{}", sluice.log());
        hosts.push(here.ip());

        let client = UdpSocket::bind("127.0.0.5:0").await.expect("bind");
        client.send_to(b"where", dialled).await.expect("send");
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("answered in time")
            .expect("receive");
        let there: SocketAddr = String::from_utf8_lossy(&buf[..n]).parse().expect("address");
        assert_eq!(there.port(), port);
        hosts.push(there.ip());
    }
    hosts.dedup();
    assert_eq!(
        hosts.len(),
        1,
        "one backend for one client on every port: {hosts:?}"
    );

    // The access log and the metrics say which listener took each.
    let second = format!("127.0.0.1:{}", base + 1);
    eventually("the access log names the listener", || async {
        sluice.log().contains(&format!("destination={second}"))
    })
    .await;
    let metrics = crate::support::http::get(sluice.api(), "/metrics")
        .await
        .body;
    for server in ["multi", "dns"] {
        let line = format!(
            "sluice_listener_accepted_total{{server=\"{server}\",listener=\"{second}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    // A lone listener's count is its server's.
    let single = sluice.server("single");
    let mut stream = TcpStream::connect(single).await.expect("connect");
    let mut here = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut here))
        .await
        .expect("answered in time")
        .expect("read");
    let metrics = crate::support::http::get(sluice.api(), "/metrics")
        .await
        .body;
    let line =
        format!("sluice_listener_accepted_total{{server=\"single\",listener=\"{single}\"}} 1");
    assert!(metrics.contains(&line), "{line}\n{metrics}");
    // The dump writes the list as it was written.
    let dump = crate::support::http::get(sluice.api(), "/dump?format=toml")
        .await
        .body;
    assert!(
        dump.contains(&format!("bind = [\"{range}\", \"127.0.0.1:{last}\"]")),
        "{dump}"
    );
    for task in backends {
        task.abort();
    }
}

/// Whether a connection to `addr` is served (the backend's line read) within a moment.
async fn served_at(addr: SocketAddr) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut text = String::new();
    matches!(
        tokio::time::timeout(WAIT, stream.read_to_string(&mut text)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_bind_list_and_keeps_the_address_it_still_lists() {
    let backend = Who::start().await;
    let base = free_ports(3);
    let [a, b, c] = [0, 1, 2].map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)));
    let config = |binds: [SocketAddr; 2]| {
        format!(
            "[servers.moving]\nbind = [\"{}\", \"{}\"]\n\
             [servers.moving.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
            binds[0], binds[1], backend.addr
        )
    };
    let sluice = process::SluiceProcess::start(&config([a, b])).await;
    assert!(served_at(a).await && served_at(b).await);
    // A client queued on b while the reload runs is served by the new listener.
    let waiting = TcpStream::connect(b).await.expect("connect");
    sluice.rewrite(&config([b, c]));
    sluice.signal("HUP");
    eventually("the new list listens", || async { served_at(c).await }).await;
    eventually("the dropped address is closed", || async {
        TcpStream::connect(a).await.is_err()
    })
    .await;
    assert!(served_at(b).await);
    let mut waiting = waiting;
    let mut text = String::new();
    tokio::time::timeout(WAIT, waiting.read_to_string(&mut text))
        .await
        .expect("answered in time")
        .expect("read");
    assert_eq!(text.trim(), "127.0.0.1", "{}", sluice.log());
}

#[tokio::test]
async fn an_address_of_the_list_that_cannot_be_bound_is_named_and_nothing_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_at = taken.local_addr().expect("address");
    let free = process::free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = process::write_file(
        dir.path(),
        "sluice.toml",
        &format!(
            "[servers.both]\nbind = [\"127.0.0.1:{free}\", \"{taken_at}\"]\n\
             [servers.both.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n"
        ),
    );
    let (status, _, stderr) = process::run_sluice(&["run", "-c", &config]).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("server both: cannot listen on {taken_at}")),
        "{stderr}"
    );
    // Nothing was left listening on the address that could be bound.
    assert!(TcpStream::connect(("127.0.0.1", free)).await.is_err());
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sluice_over_the_ports_of_a_running_one_refuses_to_start() {
    let backend = Who::start().await;
    let port = process::free_port();
    let udp_port = process::free_port();
    let toml = format!(
        "[servers.first]\nbind = \"127.0.0.1:{port}\"\n\
         [servers.first.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n\
         [servers.dns]\nbind = \"127.0.0.1:{udp_port}\"\nprotocol = \"udp\"\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n",
        backend.addr
    );
    let running = process::SluiceProcess::start(&toml).await;
    for (name, what) in [("first", "tcp"), ("dns", "udp")] {
        let dir = tempfile::tempdir().expect("temp dir");
        // The second takes the running one's address for this protocol only.
        let mine = if what == "tcp" {
            format!(
                "[servers.{name}]\nbind = \"127.0.0.1:{port}\"\n\
                 [servers.{name}.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n"
            )
        } else {
            format!(
                "[servers.{name}]\nbind = \"127.0.0.1:{udp_port}\"\nprotocol = \"udp\"\n\
                 [servers.{name}.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n"
            )
        };
        let config = process::write_file(dir.path(), "second.toml", &mine);
        let (status, _, stderr) =
            tokio::time::timeout(WAIT, process::run_sluice(&["run", "-c", &config]))
                .await
                .unwrap_or_else(|_| panic!("{what}: the second Sluice started beside the first"));
        assert!(!status.success(), "{what}: {stderr}");
        assert!(
            stderr
                .contains("the address is in use by another process (is another Sluice running?)"),
            "{what}: {stderr}"
        );
    }
    // The first serves on, alone.
    assert_eq!(seen_through(running.server("first")).await, "127.0.0.1");
}
