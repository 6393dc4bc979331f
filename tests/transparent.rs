//! Transparent proxying through the binary: in network namespaces the test creates
//! (client, balancer, backend; see `support::netns`), a backend's `accept()` and
//! `recv_from()` see the client's own address; without CAP_NET_ADMIN a transparent
//! server refuses to start, saying why.

use std::io::Read;
use std::time::Duration;

use crate::support::eventually;
use crate::support::netns::{
    or_skip, Netns, Triangle, BACKEND_IP, BALANCER_BACKEND_SIDE, BALANCER_CLIENT_SIDE, CLIENT_IP,
};
use crate::support::process::{self, SluiceProcess};
use crate::support::who::{Who, WhoUdp};

/// The balancer's routing for transparent sockets, exactly as the README shows it: the
/// backends' replies to a client belong to a transparent socket, and are delivered to
/// it instead of being forwarded to the client.
fn divert_replies(balancer: &Netns) -> Result<(), String> {
    balancer.exec("nft", &["add", "table", "ip", "sluice"])?;
    balancer.exec(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "sluice",
            "divert",
            "{ type filter hook prerouting priority mangle; }",
        ],
    )?;
    balancer.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "sluice",
            "divert",
            "meta",
            "l4proto",
            "{ tcp, udp }",
            "socket",
            "transparent",
            "1",
            "meta",
            "mark",
            "set",
            "1",
            "accept",
        ],
    )?;
    balancer.ip(&["rule", "add", "fwmark", "1", "lookup", "100"])?;
    balancer.ip(&[
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_transparent_the_backend_sees_the_clients_own_address() {
    let made = Triangle::create().and_then(|t| divert_replies(&t.balancer).map(|()| t));
    let Some(net) = or_skip(made, "transparent") else {
        return;
    };
    // The backend's sockets, made inside its namespace.
    let (tcp, udp) = net
        .backend
        .inside(|| -> std::io::Result<_> {
            let tcp = std::net::TcpListener::bind((BACKEND_IP, 7000))?;
            let udp = std::net::UdpSocket::bind((BACKEND_IP, 7001))?;
            Ok((tcp, udp))
        })
        .expect("the backend's namespace")
        .expect("the backend's sockets");
    let (tcp, _udp) = (Who::serve(tcp), WhoUdp::serve(udp));
    let toml = format!(
        "[servers.tcp]\nbind = \"{BALANCER_CLIENT_SIDE}:6000\"\ntransparent = true\n\
         [servers.tcp.discovery]\nkind = \"static\"\nstatic_list = [\"{BACKEND_IP}:7000\"]\n\
         [servers.udp]\nbind = \"{BALANCER_CLIENT_SIDE}:6001\"\nprotocol = \"udp\"\n\
         [servers.udp.udp]\ntransparent = true\n\
         [servers.udp.discovery]\nkind = \"static\"\nstatic_list = [\"{BACKEND_IP}:7001\"]\n"
    );
    let sluice = SluiceProcess::start_in_netns(&net.balancer.name, &toml).await;
    let (tcp_at, udp_at) = (sluice.server("tcp"), sluice.server("udp"));

    // The client's sockets, inside its namespace; blocking, each wait bounded.
    let answers = tokio::task::block_in_place(|| {
        net.client
            .inside(move || -> std::io::Result<(String, String)> {
                let patience = Some(Duration::from_secs(10));
                let mut stream =
                    std::net::TcpStream::connect_timeout(&tcp_at, Duration::from_secs(10))?;
                stream.set_read_timeout(patience)?;
                let mut line = String::new();
                stream.read_to_string(&mut line)?;
                let socket = std::net::UdpSocket::bind((CLIENT_IP, 0))?;
                socket.set_read_timeout(patience)?;
                socket.send_to(b"who", udp_at)?;
                let mut buf = [0u8; 64];
                let n = socket.recv(&mut buf)?;
                Ok((
                    line.trim().to_owned(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ))
            })
    });
    let (tcp_answer, udp_answer) = answers
        .expect("the client's namespace")
        .unwrap_or_else(|e| panic!("through the balancer: {e}\n{}", sluice.log()));
    assert_eq!(tcp_answer, CLIENT_IP, "{}", sluice.log());
    assert_eq!(udp_answer, CLIENT_IP, "{}", sluice.log());
    assert_eq!(
        tcp.seen(),
        [CLIENT_IP.parse::<std::net::IpAddr>().expect("address")]
    );
}

/// Without CAP_NET_ADMIN and CAP_NET_RAW (dropped by `setpriv` where the test runs as
/// root), a transparent server does not start, and says what it needs.
#[tokio::test]
async fn without_cap_net_admin_a_transparent_server_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = process::free_port();
    let config = process::write_file(
        dir.path(),
        "sluice.toml",
        &format!(
            "[servers.t]\nbind = \"127.0.0.1:{port}\"\ntransparent = true\n\
             [servers.t.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n"
        ),
    );
    let as_root = nix::unistd::Uid::effective().is_root();
    let mut command = if as_root {
        let mut setpriv = tokio::process::Command::new("setpriv");
        // IP_TRANSPARENT is allowed with either capability.
        let drop = "-net_admin,-net_raw";
        setpriv.args(["--inh-caps", drop, "--bounding-set", drop, process::BIN]);
        setpriv
    } else {
        tokio::process::Command::new(process::BIN)
    };
    let out = tokio::time::timeout(
        crate::support::WAIT,
        command
            .args(["run", "-c", &config])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "server t: transparent = true needs IP_TRANSPARENT, which this process may not use"
        ) && stderr.contains("give it CAP_NET_ADMIN"),
        "{stderr}"
    );
}

/// A TPROXY rule on the balancer steering the TCP connections `matching` selects to
/// `to`, beside the divert rule for the connections it intercepted.
fn steer(balancer: &Netns, matching: &[&str], to: &str) -> Result<(), String> {
    divert_replies(balancer)?;
    // First in the chain: a datagram to where an intercepted client was going must be
    // steered to the listener, not to the socket its replies leave from.
    let mut rule = vec!["insert", "rule", "ip", "sluice", "divert"];
    rule.extend_from_slice(matching);
    rule.extend_from_slice(&["tproxy", "to", to, "meta", "mark", "set", "1", "accept"]);
    balancer.exec("nft", &rule)
}

/// The namespaces with `matching` connections steered to `to`, or `None` when the
/// test skips (see [`or_skip`]).
fn steered(matching: &[&str], to: &str, test: &str) -> Option<Triangle> {
    let made = Triangle::create().and_then(|t| steer(&t.balancer, matching, to).map(|()| t));
    or_skip(made, test)
}

/// A backend in its namespace answering each connection with the address it came from.
fn who_answers(net: &Triangle) -> Who {
    let tcp = net
        .backend
        .inside(|| std::net::TcpListener::bind((BACKEND_IP, 7000)))
        .expect("the backend's namespace")
        .expect("the backend's socket");
    Who::serve(tcp)
}

/// What the client, in its namespace, reads from a connection to `to`.
fn client_reads(net: &Triangle, to: &'static str) -> Result<std::io::Result<String>, String> {
    tokio::task::block_in_place(|| {
        net.client.inside(move || -> std::io::Result<String> {
            let to: std::net::SocketAddr = to.parse().expect("address");
            let mut stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut line = String::new();
            stream.read_to_string(&mut line)?;
            Ok(line.trim().to_owned())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepting_server_serves_connections_to_any_destination_steered_to_it() {
    let to = format!("{BALANCER_CLIENT_SIDE}:6100");
    let nowhere = [
        "ip",
        "daddr",
        "{ 198.51.100.7, 198.51.100.8 }",
        "tcp",
        "dport",
        "80",
    ];
    let Some(net) = steered(&nowhere, &to, "intercept") else {
        return;
    };
    let _backend = who_answers(&net);
    let toml = format!(
        "[servers.sidecar]\nbind = \"{to}\"\nintercept = true\n\
         [servers.sidecar.access]\ndefault = \"allow\"\nrules = [\"deny 0.0.0.0/0 to 198.51.100.8\"]\n\
         [servers.sidecar.discovery]\nkind = \"static\"\nstatic_list = [\"{BACKEND_IP}:7000\"]\n"
    );
    let sluice = SluiceProcess::start_in_netns(&net.balancer.name, &toml).await;
    let answer = client_reads(&net, "198.51.100.7:80")
        .expect("the client's namespace")
        .unwrap_or_else(|e| panic!("to 198.51.100.7:80: {e}\n{}", sluice.log()));
    // Served by the server's backend, which sees the balancer (not transparent).
    assert_eq!(answer, BALANCER_BACKEND_SIDE, "{}", sluice.log());
    eventually("the access log names the destination", || async {
        sluice.log().contains("destination=198.51.100.7:80")
    })
    .await;
    // The access rules see where a client was going: 198.51.100.8 is refused.
    let refused = client_reads(&net, "198.51.100.8:80").expect("the client's namespace");
    assert!(
        !matches!(&refused, Ok(answer) if !answer.is_empty()),
        "{refused:?}\n{}",
        sluice.log()
    );
    eventually("the refusal is logged with its destination", || async {
        let log = sluice.log();
        log.lines()
            .any(|l| l.contains("acl_denied") && l.contains("destination=198.51.100.8:80"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_destination_reaches_the_address_the_client_dialled() {
    let to = format!("{BALANCER_CLIENT_SIDE}:6101");
    let from_client = ["ip", "saddr", CLIENT_IP, "tcp", "dport", "7000"];
    let Some(net) = steered(&from_client, &to, "original_destination") else {
        return;
    };
    let _backend = who_answers(&net);
    let toml = format!(
        "[servers.sidecar]\nbind = \"{to}\"\nintercept = true\nbalance = \"original_destination\"\n"
    );
    let sluice = SluiceProcess::start_in_netns(&net.balancer.name, &toml).await;
    // The client dials the backend itself; the balancer takes the connection and makes
    // its own to the same address.
    let answer = client_reads(&net, "10.77.2.2:7000")
        .expect("the client's namespace")
        .unwrap_or_else(|e| panic!("to 10.77.2.2:7000: {e}\n{}", sluice.log()));
    assert_eq!(answer, BALANCER_BACKEND_SIDE, "{}", sluice.log());
    eventually(
        "the access log names the backend and the destination",
        || async {
            let log = sluice.log();
            log.contains("destination=10.77.2.2:7000") && log.contains("backend=\"10.77.2.2:7000\"")
        },
    )
    .await;
}

/// What the client, in its namespace, gets back for a datagram to `to` on a socket
/// connected there: only a reply from `to` itself is let through.
fn client_asks(net: &Triangle, to: &'static str) -> Result<std::io::Result<String>, String> {
    tokio::task::block_in_place(|| {
        net.client.inside(move || -> std::io::Result<String> {
            let socket = std::net::UdpSocket::bind((CLIENT_IP, 0))?;
            socket.connect(to)?;
            socket.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut answers = Vec::new();
            // Twice: the second datagram goes through the session the first opened.
            for _ in 0..2 {
                socket.send(b"who")?;
                let mut buf = [0u8; 64];
                let n = socket.recv(&mut buf)?;
                answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            Ok(answers.join(" "))
        })
    })
}

/// A UDP backend in its namespace answering each datagram with the address it came from.
fn who_answers_udp(net: &Triangle) -> WhoUdp {
    let udp = net
        .backend
        .inside(|| std::net::UdpSocket::bind((BACKEND_IP, 7001)))
        .expect("the backend's namespace")
        .expect("the backend's socket");
    WhoUdp::serve(udp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepting_udp_server_answers_from_where_the_client_was_going() {
    let to = format!("{BALANCER_CLIENT_SIDE}:6200");
    let nowhere = ["ip", "daddr", "198.51.100.7", "udp", "dport", "53"];
    let Some(net) = steered(&nowhere, &to, "intercept udp") else {
        return;
    };
    let _backend = who_answers_udp(&net);
    let toml = format!(
        "[servers.dns]\nbind = \"{to}\"\nprotocol = \"udp\"\nintercept = true\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"{BACKEND_IP}:7001\"]\n"
    );
    let sluice = SluiceProcess::start_in_netns(&net.balancer.name, &toml).await;
    let answers = client_asks(&net, "198.51.100.7:53")
        .expect("the client's namespace")
        .unwrap_or_else(|e| panic!("to 198.51.100.7:53: {e}\n{}", sluice.log()));
    // Relayed by the server's backend, which sees the balancer, and answered from
    // 198.51.100.7:53 (the client's connected socket takes nothing else).
    let expected = format!("{BALANCER_BACKEND_SIDE} {BALANCER_BACKEND_SIDE}");
    assert_eq!(answers, expected, "{}", sluice.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_original_destination_reaches_the_address_the_client_sent_to() {
    let to = format!("{BALANCER_CLIENT_SIDE}:6201");
    let from_client = ["ip", "saddr", CLIENT_IP, "udp", "dport", "7001"];
    let Some(net) = steered(&from_client, &to, "original_destination udp") else {
        return;
    };
    let _backend = who_answers_udp(&net);
    let toml = format!(
        "[servers.sidecar]\nbind = \"{to}\"\nprotocol = \"udp\"\nintercept = true\n\
         balance = \"original_destination\"\n"
    );
    let sluice = SluiceProcess::start_in_netns(&net.balancer.name, &toml).await;
    let answers = client_asks(&net, "10.77.2.2:7001")
        .expect("the client's namespace")
        .unwrap_or_else(|e| panic!("to 10.77.2.2:7001: {e}\n{}", sluice.log()));
    let expected = format!("{BALANCER_BACKEND_SIDE} {BALANCER_BACKEND_SIDE}");
    assert_eq!(answers, expected, "{}", sluice.log());
}

/// A backend in the backend's namespace on `port` answering each connection with
/// `name`, whatever it is sent.
fn named_backend(net: &Triangle, port: u16, name: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = net
        .backend
        .inside(move || std::net::TcpListener::bind((BACKEND_IP, port)))
        .expect("the backend's namespace")
        .expect("the backend's socket");
    listener.set_nonblocking(true).expect("non-blocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("register");
    tokio::spawn(async move {
        for _ in 0..10 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, name.as_bytes()).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepted_connection_is_routed_by_its_server_name() {
    let to = format!("{BALANCER_CLIENT_SIDE}:6102");
    let nowhere = ["ip", "daddr", "198.51.100.7", "tcp", "dport", "443"];
    let Some(net) = steered(&nowhere, &to, "intercept sni") else {
        return;
    };
    let backends = [
        named_backend(&net, 7010, "a"),
        named_backend(&net, 7011, "b"),
    ];
    let toml = format!(
        "[servers.tls]\nbind = \"{to}\"\nintercept = true\n\
         sni = {{ unexpected_hostname_strategy = \"reject\" }}\n\
         [servers.tls.discovery]\nkind = \"static\"\n\
         static_list = [\"{BACKEND_IP}:7010 sni=a.example\", \"{BACKEND_IP}:7011 sni=b.example\"]\n"
    );
    let sluice = SluiceProcess::start_in_netns(&net.balancer.name, &toml).await;
    for (name, expected) in [("a.example", "a"), ("b.example", "b"), ("c.example", "")] {
        let hello = crate::support::tls::client_hello_in_records(name, 16_384);
        let answer = tokio::task::block_in_place(|| {
            net.client.inside(move || -> std::io::Result<String> {
                use std::io::Write;
                let to: std::net::SocketAddr = "198.51.100.7:443".parse().expect("address");
                let mut stream =
                    std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream.write_all(&hello)?;
                let mut answer = [0u8; 1];
                let n = stream.read(&mut answer).or_else(|e| {
                    // A refusal may reset: nothing was answered.
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        Ok(0)
                    } else {
                        Err(e)
                    }
                })?;
                Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
            })
        })
        .expect("the client's namespace")
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", sluice.log()));
        assert_eq!(answer, expected, "{name}\n{}", sluice.log());
    }
    for task in backends {
        task.abort();
    }
}
