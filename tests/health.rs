//! Active health checks of every kind against real servers on loopback: a check that
//! fails takes its backend out of rotation, and traffic follows when it passes again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice::balance::BalanceKind;
use sluice::config::{
    ExecSettings, HealthConfig, HealthKind, InitialStatus, ProbeExpect, ProbeProtocol,
    ProbeSettings, TlsSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn check(kind: HealthKind, timeout: Duration) -> HealthConfig {
    HealthConfig {
        kind,
        interval: Duration::from_millis(100),
        timeout,
        fails: 1,
        passes: 1,
        initial_status: InitialStatus::Healthy,
        passive_fails: 0,
    }
}

/// Waits until backend `i` has the given health.
async fn wait_health(sluice: &Sluice, i: usize, healthy: bool) {
    let shared = sluice.shared().await;
    eventually(&format!("backend {i} healthy = {healthy}"), || {
        let up = shared.pool.load().backends()[i].is_healthy();
        async move { up == healthy }
    })
    .await;
}

/// A backend answering `PING\r\n` with `+PONG` while `good` holds (`-ERR` otherwise),
/// and greeting clients that send nothing with its name.
async fn pinged(name: &'static str, good: Arc<AtomicBool>) -> TestBackend {
    TestBackend::serving(name, "127.0.0.1:0", move |mut s| {
        let good = Arc::clone(&good);
        async move {
            let mut buf = [0u8; 6];
            let read = tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut buf));
            if matches!(read.await, Ok(Ok(_))) && &buf == b"PING\r\n" {
                let reply: &[u8] = if good.load(Ordering::SeqCst) {
                    b"+PONG\r\n"
                } else {
                    b"-ERR\r\n"
                };
                let _ = s.write_all(reply).await;
            } else {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn probe_flips_a_backend_and_traffic_follows() {
    let good = Arc::new(AtomicBool::new(true));
    let a = pinged("a", Arc::clone(&good)).await;
    let b = pinged("b", Arc::new(AtomicBool::new(true))).await;
    let probe = ProbeSettings {
        protocol: ProbeProtocol::Tcp,
        send: b"PING\r\n".to_vec(),
        expect: ProbeExpect::StartsWith(b"+PONG".to_vec()),
        tls: TlsSettings::default(),
    };
    let mut server = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    server.healthcheck = check(HealthKind::Probe(probe), Duration::from_secs(1));
    let sluice = Sluice::start(server).await;
    wait_health(&sluice, 0, true).await;
    good.store(false, Ordering::SeqCst);
    wait_health(&sluice, 0, false).await;
    for _ in 0..4 {
        assert_eq!(who(sluice.addr).await, "b");
    }
    good.store(true, Ordering::SeqCst);
    wait_health(&sluice, 0, true).await;
}

/// Zombie children of this process, from `/proc`.
/// Zombie children of this test process named `name`; other tests of the binary run
/// processes of their own, which may be zombies for a moment before tokio reaps them.
fn zombie_children(name: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_default()
        };
        if field("PPid:") == me && field("State:").starts_with('Z') && field("Name:") == name {
            zombies.push(field("Name:"));
        }
    }
    zombies
}

#[tokio::test]
async fn exec_follows_output_and_kills_a_hanging_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    // One state file per backend port: the script gets the port as its second argument.
    let state = dir.path().join(format!("state-{}", a.addr.port()));
    std::fs::write(&state, "up\n").expect("state");
    let state_b = dir.path().join(format!("state-{}", b.addr.port()));
    std::fs::write(&state_b, "up\n").expect("state");
    let script = dir.path().join("exec-check.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# $1 host, $2 port\ns=$(cat {}/state-$2)\n\
             if [ \"$s\" = hang ]; then sleep 30; fi\necho \"$s\"\n",
            dir.path().display()
        ),
    )
    .expect("script");
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let exec = ExecSettings {
        command: script.display().to_string(),
        positive: "up".into(),
        negative: Some("down".into()),
    };
    let mut server = server(BalanceKind::RoundRobin, vec![a.spec(), b.spec()]);
    server.healthcheck = check(HealthKind::Exec(exec), Duration::from_millis(300));
    let sluice = Sluice::start(server).await;
    wait_health(&sluice, 0, true).await;
    std::fs::write(&state, "down\n").expect("state");
    wait_health(&sluice, 0, false).await;
    assert_eq!(who(sluice.addr).await, "b");
    std::fs::write(&state, "up\n").expect("state");
    wait_health(&sluice, 0, true).await;
    std::fs::write(&state, "hang\n").expect("state");
    wait_health(&sluice, 0, false).await;
    // A few more timeouts pass: every killed command has been reaped.
    let shared = sluice.shared().await;
    let failed = |s: &sluice::server::ServerShared| {
        s.pool.load().backends()[0]
            .state
            .stats
            .checks_failed
            .load(Ordering::Relaxed)
    };
    let before = failed(&shared);
    eventually("three more failed checks", || {
        let now = failed(&shared);
        async move { now >= before + 3 }
    })
    .await;
    std::fs::write(&state, "up\n").expect("state");
    wait_health(&sluice, 0, true).await;
    // A killed command is reaped as soon as tokio sees its exit: allow a moment.
    eventually("no zombie left by the exec check", || {
        let zombies = zombie_children("exec-check.sh");
        async move { zombies.is_empty() }
    })
    .await;
}
