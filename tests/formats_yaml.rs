//! Samaritan's and Mixctl's files, and Mixctl's command line, run by the real binary
//! in front of real loopback backends.

use std::net::SocketAddr;

use crate::support::process::*;
use crate::support::*;

/// The article's `samaritan.yaml`, on loopback: its backends are `backends`, and it
/// listens on a port of its own.
fn samaritan_yaml(backends: [SocketAddr; 3]) -> String {
    format!(
        r#"servers:
  - name: tcp-lb
    listen: "127.0.0.1:0"
    protocol: tcp
    backends:
      - address: "{}"
        weight: 3
      - address: "{}"
        weight: 1
      - address: "{}"
        weight: 2
    health_check:
      interval: 10s
      timeout: 3s
      type: tcp
    load_balance: leastconn
"#,
        backends[0], backends[1], backends[2]
    )
}

#[tokio::test]
async fn the_article_samaritan_file_relays_by_least_connections_and_weight() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let c = TestBackend::named("c").await;
    let yaml = samaritan_yaml([a.addr, b.addr, c.addr]);
    let sluice = SluiceProcess::start_file("samaritan.yaml", &yaml, None).await;
    let addr = sluice.server("tcp-lb");
    // Held open, six connections spread as the weights do: fewest active per weight.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(hello(addr, None).await);
    }
    let names = tally(held.iter().map(|(name, _)| name.clone()));
    assert_eq!(
        names,
        [("a".into(), 3), ("b".into(), 1), ("c".into(), 2)].into()
    );
    // Each one relays.
    for (_, stream) in &mut held {
        tokio::io::AsyncWriteExt::shutdown(stream).await.unwrap();
        assert!(read_to_end(stream).await.is_empty());
    }
}

#[tokio::test]
async fn samaritan_own_static_services_file_relays_and_keeps_a_backup_aside() {
    let main = TestBackend::named("main").await;
    let backup = TestBackend::named("backup").await;
    let endpoint = |addr: SocketAddr| format!("{{ ip: {}, port: {} }}", addr.ip(), addr.port());
    let yaml = format!(
        r#"admin:
  bind: {{ ip: 127.0.0.1, port: 12345 }}
static_services:
  - name: tcp-demo
    config:
      listener: {{ address: {{ ip: 127.0.0.1, port: 0 }} }}
      protocol: TCP
    endpoints:
      - address: {}
      - address: {}
        type: BACKUP
"#,
        endpoint(main.addr),
        endpoint(backup.addr)
    );
    let sluice = SluiceProcess::start_file("samaritan.yaml", &yaml, None).await;
    let addr = sluice.server("tcp-demo");
    for _ in 0..4 {
        assert_eq!(who(addr).await, "main");
    }
    assert!(
        sluice.log().contains("warning: admin: not read"),
        "{}",
        sluice.log()
    );
}

#[tokio::test]
async fn a_mixctl_rules_file_runs_one_server_per_rule() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let ssh = TestBackend::named("ssh").await;
    let rules = format!(
        "version: 0.1\n\nrules:\n\
         - name: k3s\n  from: 127.0.0.1:0\n  to:\n    - {}\n    - {}\n\n\
         - name: remap-local-ssh-port\n  from: 127.0.0.1:0\n  to:\n    - {}\n",
        a.addr, b.addr, ssh.addr
    );
    let sluice = SluiceProcess::start_file("rules.yaml", &rules, None).await;
    assert_eq!(who(sluice.server("remap-local-ssh-port")).await, "ssh");
    // Mixctl picks at random: both targets are reached, and only they.
    let k3s = sluice.server("k3s");
    let mut names = std::collections::BTreeSet::new();
    // Bounded in count: missing one of two in 100 fair draws is a 1-in-2^99 chance.
    for _ in 0..100 {
        names.insert(who(k3s).await);
        if names.len() == 2 {
            break;
        }
    }
    assert_eq!(names, ["a".to_owned(), "b".to_owned()].into());
}

#[tokio::test]
async fn the_article_mixctl_command_line_relays_three_to_one() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("sluice.log");
    // The article's line, on loopback targets; port 0 picks a free port, read from the
    // log (--port listens on every interface).
    let targets = format!("--targets={}:3,{}:1", a.addr, b.addr);
    let _child = spawn_logged(
        &["tcp", "--port=0", &targets, "--health-check-interval=5s"],
        &log_path,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let bound = bound(log, "tcp").await;
    assert!(bound.ip().is_unspecified(), "{bound}");
    let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    let mut names = Vec::new();
    for _ in 0..8 {
        names.push(who(addr).await);
    }
    assert_eq!(tally(names), [("a".into(), 6), ("b".into(), 2)].into());
}
