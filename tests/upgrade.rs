//! Binary upgrade through the real binary: `sluice upgrade` and SIGUSR2 under load, the
//! state that carries over, and upgrades that fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::data::EchoStreamer;
use crate::support::http;
use crate::support::process::*;
use crate::support::udp::{self, UdpBackend, UdpStreamer};
use crate::support::*;

/// A Sluice started with a control socket and a pid file. The process serving is the one
/// the pid file names: after an upgrade, no longer the child the test started. Whatever
/// serves at the end is killed.
struct Upgradable {
    process: SluiceProcess,
    control: PathBuf,
    pidfile: PathBuf,
    _dir: tempfile::TempDir,
}

impl Upgradable {
    async fn start(toml: &str) -> Upgradable {
        let dir = tempfile::tempdir().expect("temp dir");
        let control = dir.path().join("control.sock");
        let pidfile = dir.path().join("sluice.pid");
        let run = tempfile::tempdir().expect("temp dir");
        let config = run.path().join("sluice.toml");
        std::fs::write(&config, toml).expect("write config");
        let expected = sluice::config::load(&config)
            .unwrap_or_else(|e| panic!("the test's configuration is invalid: {e}"))
            .config;
        let args = [
            "run".into(),
            "-c".into(),
            config.clone().into_os_string(),
            "--control-socket".into(),
            control.clone().into_os_string(),
            "-p".into(),
            pidfile.clone().into_os_string(),
        ];
        let process = SluiceProcess::start_args(run, config, &args, &expected).await;
        Upgradable {
            process,
            control,
            pidfile,
            _dir: dir,
        }
    }

    /// The pid the pid file names.
    fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Runs `sluice upgrade` with `extra` arguments: its status, output and errors.
    async fn upgrade(&self, extra: &[&str]) -> (std::process::ExitStatus, String, String) {
        let control = self.control.to_string_lossy().into_owned();
        let mut args = vec!["upgrade", "--control-socket", &control];
        args.extend_from_slice(extra);
        run_sluice(&args).await
    }

    /// Waits until the pid file names another process than `pid`, and returns it.
    async fn replaced(&self, pid: u32) -> u32 {
        eventually("the pid file names the new process", || async {
            let now = self.pid();
            now != 0 && now != pid
        })
        .await;
        self.pid()
    }
}

impl Drop for Upgradable {
    fn drop(&mut self) {
        let pid = self.pid();
        let ours = self.process.child.id();
        if pid != 0 && Some(pid) != ours {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// New connections one after another, each sending a line and reading it back, until
/// told to stop: how many worked and what went wrong with the others.
struct Connector {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Connector {
    fn start(addr: SocketAddr) -> Connector {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (halt, done) = (Arc::clone(&stop), Arc::clone(&ok));
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: a minute at most, whoever forgets to stop it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for n in 0u64.. {
                if halt.load(Ordering::SeqCst) || tokio::time::Instant::now() > deadline {
                    break;
                }
                match tokio::time::timeout(WAIT, one_exchange(addr, n)).await {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Err(e)) => failures.push(format!("connection {n}: {e}")),
                    Err(_) => failures.push(format!("connection {n}: no echo in time")),
                }
            }
            failures
        });
        Connector { stop, ok, task }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.expect("connector");
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

async fn one_exchange(addr: SocketAddr, n: u64) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let line = format!("connection {n}\n");
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await?;
    if back != line.as_bytes() {
        return Err(std::io::Error::other(format!(
            "{} bytes came back",
            back.len()
        )));
    }
    Ok(())
}

/// Two servers on port 0, TCP over `tcp` (`weights` beside them) and UDP over `udp`,
/// with the API and metrics endpoint.
fn config_with_udp(tcp: &[SocketAddr], weights: &[u32], udp: &[SocketAddr]) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let weighted = tcp
        .iter()
        .zip(weights)
        .map(|(a, w)| format!("\"{a} weight={w}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"shutdown_timeout = "20s"

[api]
enabled = true
bind = "127.0.0.1:0"

[metrics]
enabled = true
bind = "127.0.0.1:0"

[servers.test]
bind = "127.0.0.1:0"
protocol = "tcp"
balance = "weight"
  [servers.test.discovery]
  kind = "static"
  static_list = [{weighted}]

[servers.dns]
bind = "127.0.0.1:0"
protocol = "udp"
balance = "roundrobin"
  [servers.dns.discovery]
  kind = "static"
  static_list = [{}]
"#,
        list(udp)
    )
}

/// The shorter version of `scripts/bench-reload`: streams, new connections and UDP
/// flows through reloads and both kinds of upgrade, nothing refused, cut or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_and_upgrades_under_load_refuse_nothing_and_lose_nothing() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let c = TestBackend::echo().await;
    let (u, v) = (UdpBackend::named("u").await, UdpBackend::named("v").await);
    let udp = [u.addr, v.addr];
    let mut sluice = Upgradable::start(&config_with_udp(&[a.addr, b.addr], &[1, 1], &udp)).await;
    let (tcp, dns) = (sluice.process.server("test"), sluice.process.server("dns"));
    let (api, metrics) = (sluice.process.api(), sluice.process.metrics());
    let first = sluice.pid();

    let mut streamers = Vec::new();
    for seed in 0..40 {
        streamers.push(EchoStreamer::start(tcp, seed, 4096, Duration::from_millis(10)).await);
    }
    let mut datagrams = Vec::new();
    for seed in 0..8 {
        datagrams.push(UdpStreamer::start(dns, seed, Duration::from_millis(5)).await);
    }
    let connector = Connector::start(tcp);
    eventually("new connections flow", || async { connector.ok() > 20 }).await;

    // `sluice upgrade`: the same binary again.
    let (status, stdout, stderr) = sluice.upgrade(&[]).await;
    assert!(
        status.success(),
        "{stdout}{stderr}\n{}",
        sluice.process.log()
    );
    let second = sluice.replaced(first).await;
    assert!(stdout.contains(&format!("pid {second}")), "{stdout}");
    let before = connector.ok();
    eventually("new connections flow through the new process", || async {
        connector.ok() > before + 20
    })
    .await;

    // Reloads of the new process: a backend added, weights changed, the backend removed.
    let steps: [(&[SocketAddr], &[u32]); 3] = [
        (&[a.addr, b.addr, c.addr], &[1, 1, 1]),
        (&[a.addr, b.addr, c.addr], &[3, 1, 2]),
        (&[a.addr, b.addr], &[1, 1]),
    ];
    for round in 0..3 {
        for (step, (tcp, weights)) in steps.iter().enumerate() {
            sluice.process.rewrite(&config_with_udp(tcp, weights, &udp));
            let reloaded = sluice
                .process
                .log()
                .matches("configuration reloaded")
                .count();
            let hup = std::process::Command::new("kill")
                .args(["-HUP", &second.to_string()])
                .status()
                .expect("kill");
            assert!(hup.success());
            eventually(&format!("reload {round}.{step} done"), || async {
                sluice
                    .process
                    .log()
                    .matches("configuration reloaded")
                    .count()
                    > reloaded
            })
            .await;
        }
    }
    assert!(c.accepted() > 0, "the added backend took connections");

    // SIGUSR2 on the new process does the same as `sluice upgrade`.
    let kill = std::process::Command::new("kill")
        .args(["-USR2", &second.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let third = sluice.replaced(second).await;
    let before = connector.ok();
    eventually("new connections flow through the third process", || async {
        connector.ok() > before + 20
    })
    .await;

    // Every byte of every connection and every datagram came back, every new connection
    // worked, and each UDP client kept its session (its backend saw one source port).
    let (made, failures) = connector.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {made}: {failures:?}",
        failures.len()
    );
    for streamer in streamers {
        streamer
            .finish()
            .await
            .expect("a stream intact across upgrades");
    }
    for streamer in datagrams {
        let verified = streamer
            .finish()
            .await
            .expect("datagrams intact across upgrades");
        assert!(verified > 0);
    }
    // The API and metrics endpoint answer where they did.
    assert_eq!(http::get(api, "/ping").await.status, 200);
    assert_eq!(http::get(metrics, "/metrics").await.status, 200);
    // The processes replaced drain and exit; the last one serves.
    let status = sluice.process.exit(WAIT * 3).await;
    assert!(status.success(), "{}", sluice.process.log());
    eventually("the second process exits", || async { !alive(second) }).await;
    assert!(alive(third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_state_carries_over() {
    let (a, c) = (TestBackend::named("a").await, TestBackend::named("c").await);
    let dead = dead_addr();
    let (u, v) = (UdpBackend::named("u").await, UdpBackend::named("v").await);
    let toml = format!(
        r#"[api]
enabled = true
bind = "127.0.0.1:0"

[servers.test]
bind = "127.0.0.1:0"
protocol = "tcp"
balance = "roundrobin"
  [servers.test.discovery]
  kind = "static"
  static_list = ["{}", "{}", "{}"]
  [servers.test.healthcheck]
  kind = "ping"
  interval = "300ms"
  timeout = "200ms"
  fails = 1
  passes = 1

[servers.dns]
bind = "127.0.0.1:0"
protocol = "udp"
balance = "roundrobin"
  [servers.dns.discovery]
  kind = "static"
  static_list = ["{}", "{}"]
"#,
        a.addr, dead, c.addr, u.addr, v.addr
    );
    let sluice = Upgradable::start(&toml).await;
    let (api, dns) = (sluice.process.api(), sluice.process.server("dns"));
    let backend = |view: &Value, key: &str| {
        view.as_array()
            .and_then(|all| all.iter().find(|b| b["key"] == key).cloned())
            .unwrap_or(Value::Null)
    };
    eventually("the dead backend is down", || async {
        let view = http::get(api, "/servers/test/backends").await.json();
        backend(&view, &dead.to_string())["health"] == "down"
    })
    .await;
    // Disabled through the API, not written to the file.
    let path = format!("/servers/test/backends/{}", c.addr);
    let patched = http::request(api, "PATCH", &path, &[], Some(r#"{"state":"disabled"}"#)).await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    // UDP clients, alternating over the two backends.
    let mut clients = Vec::new();
    for n in 0..4u8 {
        let socket = udp::client("127.0.0.1:0").await;
        let reply = udp::ask(&socket, dns, &[n], 3).await.expect("a reply");
        clients.push((socket, reply));
    }

    let first = sluice.pid();
    let (status, stdout, stderr) = sluice.upgrade(&[]).await;
    assert!(status.success(), "{stdout}{stderr}");
    sluice.replaced(first).await;

    // At once, before any check of the new process could have run: no flap.
    let view = http::get(api, "/servers/test/backends").await.json();
    assert_eq!(
        backend(&view, &dead.to_string())["health"],
        "down",
        "{view}"
    );
    assert_eq!(
        backend(&view, &c.addr.to_string())["state"],
        "disabled",
        "{view}"
    );
    // The clients of the second backend first: a fresh round robin would start them on
    // the first. Each keeps its session: same backend, same source port.
    for index in [1, 3, 0, 2] {
        let (socket, before) = &clients[index];
        let reply = udp::ask(socket, dns, &[index as u8, 1], 3)
            .await
            .expect("a reply");
        assert_eq!(
            (&reply.backend, reply.port),
            (&before.backend, before.port),
            "client {index}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_running_process_serving() {
    let a = TestBackend::echo().await;
    let sluice = Upgradable::start(&toml_config(&[a.addr], "5s")).await;
    let addr = sluice.process.server("test");
    let pid = sluice.pid();
    let dir = tempfile::tempdir().expect("temp dir");
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        let mut perms = std::fs::metadata(&path).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).expect("chmod");
        path.to_string_lossy().into_owned()
    };
    let crash = script("crash", "kill -9 $$");
    let hang = script("hang", "exec sleep 30");
    let good = std::fs::read_to_string(&sluice.process.config).expect("config");

    // A file the new process cannot read.
    sluice.process.rewrite(&format!("{good}\nbalanse = [\n"));
    let (status, _, stderr) = sluice.upgrade(&[]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start") && stderr.contains("sluice.toml:"),
        "{stderr}"
    );
    sluice.process.rewrite(&good);
    // A binary that exits, one that crashes, one that never answers.
    let cases: [(&[&str], &str); 3] = [
        (&["--binary", "/bin/false"], "exit status 1"),
        (&["--binary", &crash], "killed by signal 9"),
        (
            &["--binary", &hang, "--timeout", "1s"],
            "not ready within 1s",
        ),
    ];
    for (args, reason) in cases {
        let (status, _, stderr) = sluice.upgrade(args).await;
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(stderr.contains("serves on unchanged"), "{stderr}");
    }
    // Nothing changed: the same process serves, named by the pid file.
    assert_eq!(sluice.pid(), pid);
    one_exchange(addr, 1).await.expect("still serving");
    // And it can still be upgraded.
    let (status, stdout, stderr) = sluice.upgrade(&[]).await;
    assert!(status.success(), "{stdout}{stderr}");
    sluice.replaced(pid).await;
    one_exchange(addr, 2)
        .await
        .expect("serving after the upgrade");
}

#[tokio::test]
async fn upgrade_needs_a_control_socket_and_a_second_run_is_refused() {
    let (status, _, stderr) = run_sluice(&["upgrade"]).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--control-socket"), "{stderr}");
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("none.sock").to_string_lossy().into_owned();
    let (status, _, stderr) = run_sluice(&["upgrade", "--control-socket", &missing]).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot reach Sluice"), "{stderr}");

    // A second Sluice on the same control socket is refused.
    let a = TestBackend::echo().await;
    let sluice = Upgradable::start(&toml_config(&[a.addr], "5s")).await;
    let control = sluice.control.to_string_lossy().into_owned();
    let other = write_file(dir.path(), "other.toml", &toml_config(&[a.addr], "5s"));
    let (status, _, stderr) =
        run_sluice(&["run", "-c", &other, "--control-socket", &control]).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("another Sluice"), "{stderr}");
}

#[tokio::test]
async fn systemd_hears_the_new_main_pid_and_its_ready() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_file(
        dir.path(),
        "sluice.toml",
        &toml_config(&[backend.addr], "5s"),
    );
    let control = dir.path().join("control.sock");
    let control = control.to_string_lossy().into_owned();
    let args = ["run", "-c", &config, "--control-socket", &control];
    let mut sluice = Notified::spawn(dir.path(), &args, &[]);
    sluice.until("READY=1").await;
    let (status, stdout, stderr) = run_sluice(&["upgrade", "--control-socket", &control]).await;
    assert!(status.success(), "{stdout}{stderr}");
    let new: u32 = stdout
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    // The old process names the new main process; then the new one says it is ready.
    sluice.until(&format!("MAINPID={new}")).await;
    sluice.until("READY=1").await;
    let status = tokio::time::timeout(WAIT, sluice.child.wait())
        .await
        .expect("the old process exits in time")
        .expect("wait");
    assert!(status.success());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status();
}

/// BIRD's line for protocol `sluice`: its state and since when it holds it.
fn bgp_protocol_line(router: &crate::support::bird::Bird) -> String {
    router
        .ask("show protocols sluice")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("sluice"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_the_bgp_session_and_its_routes() {
    use crate::bgp::{announcing, holds, router};
    use crate::support::bird::{self, Bird};
    let test = "an_upgrade_keeps_the_bgp_session_and_its_routes";
    let port = server_port();
    let Some(router) = bird::or_skip(Bird::start(&router(port)).await, test) else {
        return;
    };
    let router = Arc::new(router);
    let backend = TestBackend::echo().await;
    let sluice = Upgradable::start(&announcing(port, backend.addr)).await;
    eventually("announced", || async { holds(&router) }).await;
    eventually("established", || async {
        bgp_protocol_line(&router).contains("Established")
    })
    .await;
    let session = bgp_protocol_line(&router);

    // The route is looked at every 10 ms through the whole upgrade.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (router, watching) = (Arc::clone(&router), Arc::clone(&watching));
        std::thread::spawn(move || {
            let mut missing = 0;
            for _ in 0..6_000 {
                if !watching.load(Ordering::Relaxed) {
                    break;
                }
                if !holds(&router) {
                    missing += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            missing
        })
    };
    let old = sluice.pid();
    let (status, stdout, stderr) = sluice.upgrade(&[]).await;
    assert!(
        status.success(),
        "{stdout}{stderr}\n{}",
        sluice.process.log()
    );
    let new = sluice.replaced(old).await;
    eventually("the old process is gone", || async { !alive(old) }).await;
    // A little longer than a hold time: the new process keeps the session alive.
    tokio::time::sleep(Duration::from_secs(4)).await;
    watching.store(false, Ordering::Relaxed);
    let missing = watcher.join().expect("watcher");
    assert_eq!(missing, 0, "the route was missing {missing} times");
    assert_eq!(
        bgp_protocol_line(&router),
        session,
        "the router's session went on unbroken"
    );
    assert!(
        sluice
            .process
            .log()
            .contains("BGP session handed over to the new process"),
        "{}",
        sluice.process.log()
    );

    // The session is the new process's own: SIGTERM there withdraws the route.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status();
    eventually("withdrawn by the new process's SIGTERM", || async {
        !holds(&router)
    })
    .await;
}
