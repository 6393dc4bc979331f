//! The real `sluice` binary, run with a TOML file in a temporary directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use sluice::config::Config;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::{eventually, WAIT};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A port that was free a moment ago (bound to port 0, then released). Another test can
/// take it meanwhile: only for servers that cannot report the port they bound (see
/// `servers.rs`, which retries on another port), or for a file only checked.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A port free a moment ago and below the kernel's ephemeral range, for a server another
/// program starts and that cannot be told to retry (BIRD): no outgoing connection of a
/// parallel test is given it as its local port meanwhile, which would make that
/// program's bind fail. Each call tries the next port of this process's own stretch.
pub fn server_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    // From 10 000 up to the range: a stretch that starts where this process's id says.
    let span = low.saturating_sub(10_000).max(1);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span.min(1_000) {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(10_000 + offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// The address server `name` logged once listening (`listening server="NAME" bind=…`),
/// from its first such line.
pub fn logged_server(log: &str, name: &str) -> Option<SocketAddr> {
    let mark = format!("listening server=\"{name}\" bind=");
    let (_, rest) = log.split_once(&mark)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The address in the `url=` of the first line holding `message` (`admin API listening`,
/// `metrics endpoint listening`).
pub fn logged_url(log: &str, message: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(message))?;
    let (_, url) = line.split_once(" url=")?;
    let url = url.split_whitespace().next()?;
    let (_, rest) = url.split_once("://")?;
    rest.split('/').next()?.parse().ok()
}

/// Waits, for at most [`WAIT`], until `log()` names where server `name` listens; for a
/// process started without a file (`sluice udp`, `sluice tcp`), whose server is named
/// after the mode.
pub async fn bound(log: impl Fn() -> String, name: &str) -> SocketAddr {
    eventually(&format!("server {name} listens"), || async {
        logged_server(&log(), name).is_some()
    })
    .await;
    logged_server(&log(), name).expect("a logged address")
}

/// `[servers.test]` on a port of its own (port 0), round-robin over `backends`, as TOML.
pub fn toml_config(backends: &[SocketAddr], shutdown_timeout: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{b} weight=1\""))
        .collect();
    format!(
        r#"shutdown_timeout = "{shutdown_timeout}"

[logging]
level = "info"

[servers.test]
bind = "127.0.0.1:0"
protocol = "tcp"
balance = "roundrobin"

  [servers.test.discovery]
  kind = "static"
  static_list = [{}]
"#,
        list.join(", ")
    )
}

/// A running `sluice run -c FILE`; killed on drop if still running. Its servers, API
/// and metrics endpoint bind port 0 in the file (or any port), and the addresses they got
/// are read from its log: a port picked beforehand could be taken by another test first.
pub struct SluiceProcess {
    pub child: Child,
    /// Where server `test` listens; without one, the first server by name.
    pub addr: SocketAddr,
    pub config: PathBuf,
    servers: BTreeMap<String, SocketAddr>,
    api: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    log: PathBuf,
    _dir: TempDir,
}

/// What Sluice is started under.
enum Wrap {
    None,
    /// A shell that limits its open files to this many.
    Descriptors(u64),
    /// `ip netns exec` into this namespace.
    Netns(String),
}

/// How long a start may take on a loaded machine before the test gives up.
const START_WAIT: Duration = Duration::from_secs(60);

impl SluiceProcess {
    /// Writes `toml` to a file, starts Sluice on it and waits until it listens.
    pub async fn start(toml: &str) -> SluiceProcess {
        Self::start_file("sluice.toml", toml, None).await
    }

    /// Writes `text` to `file_name` (its extension and shape pick the format), starts Sluice on
    /// it, with at most `descriptors` open files when given, and waits until its log
    /// names the address of every server and of the API and metrics endpoint if enabled.
    pub async fn start_file(
        file_name: &str,
        text: &str,
        descriptors: Option<u64>,
    ) -> SluiceProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join(file_name);
        std::fs::write(&config, text).expect("write config");
        let expected = match sluice::config::load(&config) {
            Ok(loaded) => loaded.config,
            Err(e) => panic!("the test's configuration is invalid: {e}\n{text}"),
        };
        let args = ["run".into(), "-c".into(), config.clone().into_os_string()];
        let wrap = descriptors.map_or(Wrap::None, Wrap::Descriptors);
        Self::launch(dir, config, &args, &expected, wrap).await
    }

    /// Starts `sluice ARGS…` with its log in `dir` (kept until the process is dropped)
    /// and waits until it listens on everything `expected` (the configuration the
    /// arguments lead it to) binds. `config` is the file [`Self::rewrite`] writes.
    pub async fn start_args(
        dir: TempDir,
        config: PathBuf,
        args: &[std::ffi::OsString],
        expected: &Config,
    ) -> SluiceProcess {
        Self::launch(dir, config, args, expected, Wrap::None).await
    }

    /// As [`Self::start`], inside the network namespace `netns`.
    pub async fn start_in_netns(netns: &str, toml: &str) -> SluiceProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, toml).expect("write config");
        let expected = match sluice::config::load(&config) {
            Ok(loaded) => loaded.config,
            Err(e) => panic!("the test's configuration is invalid: {e}\n{toml}"),
        };
        let args = ["run".into(), "-c".into(), config.clone().into_os_string()];
        Self::launch(dir, config, &args, &expected, Wrap::Netns(netns.to_owned())).await
    }

    /// As [`Self::start_args`], inside the network namespace `netns`.
    pub async fn start_args_in_netns(
        netns: &str,
        args: &[std::ffi::OsString],
        expected: &Config,
    ) -> SluiceProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("unused.toml");
        Self::launch(dir, config, args, expected, Wrap::Netns(netns.to_owned())).await
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn launch(
        dir: TempDir,
        config: PathBuf,
        args: &[std::ffi::OsString],
        expected: &Config,
        wrap: Wrap,
    ) -> SluiceProcess {
        let log = dir.path().join("sluice.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        // The limit is set by the shell that then becomes Sluice: `ulimit -n` sets both
        // the soft and the hard limit, so Sluice cannot raise it.
        let mut command = match wrap {
            Wrap::Descriptors(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            Wrap::Netns(name) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", &name, BIN]);
                ip
            }
            Wrap::None => Command::new(BIN),
        };
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sluice");
        let mut process = SluiceProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            config,
            servers: BTreeMap::new(),
            api: None,
            metrics: None,
            log,
            _dir: dir,
        };
        process.wait_ready(expected).await;
        process
    }

    /// Bounded: reads the log until it names every address `expected` binds. Each line
    /// is written once the socket is bound and listening.
    async fn wait_ready(&mut self, expected: &Config) {
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let log = self.log();
            let servers: Option<BTreeMap<String, SocketAddr>> = expected
                .servers
                .keys()
                .map(|name| Some((name.clone(), logged_server(&log, name)?)))
                .collect();
            let api = logged_url(&log, "admin API listening");
            let metrics = logged_url(&log, "metrics endpoint listening");
            if let Some(servers) = servers {
                if api.is_some() == expected.api.is_some()
                    && metrics.is_some() == expected.metrics.is_some()
                {
                    self.addr = servers
                        .get("test")
                        .or_else(|| servers.values().next())
                        .copied()
                        .unwrap_or(self.addr);
                    (self.servers, self.api, self.metrics) = (servers, api, metrics);
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited with {status} before listening:\n{log}");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("sluice did not listen within {START_WAIT:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where server `name` listens (as logged at start-up).
    pub fn server(&self, name: &str) -> SocketAddr {
        match self.servers.get(name) {
            Some(addr) => *addr,
            None => panic!("no server {name} at start-up:\n{}", self.log()),
        }
    }

    /// Where the admin API listens.
    pub fn api(&self) -> SocketAddr {
        self.api
            .unwrap_or_else(|| panic!("no admin API:\n{}", self.log()))
    }

    /// Where the metrics endpoint listens.
    pub fn metrics(&self) -> SocketAddr {
        self.metrics
            .unwrap_or_else(|| panic!("no metrics endpoint:\n{}", self.log()))
    }

    /// Replaces the configuration file.
    pub fn rewrite(&self, toml: &str) {
        std::fs::write(&self.config, toml).expect("rewrite config");
    }

    /// Sends `signal` (`HUP`, `TERM`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("sluice still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Everything Sluice logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, for at most `within`.
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for sluice"),
            Err(_) => panic!("sluice still running after {within:?}:\n{}", self.log()),
        }
    }
}

/// Starts `sluice ARGS…` with its output going to `log_path`; killed on drop.
pub fn spawn_logged(args: &[&str], log_path: &Path) -> Child {
    let log_file = std::fs::File::create(log_path).expect("log file");
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice")
}

/// Runs `sluice ARGS…` to completion; returns its status, stdout and stderr.
pub async fn run_sluice(args: &[&str]) -> (ExitStatus, String, String) {
    run_sluice_in(Path::new("."), args).await
}

/// As [`run_sluice`], in the working directory `cwd`.
pub async fn run_sluice_in(cwd: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(cwd);
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("sluice finished in time")
        .expect("run sluice");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `name` in `dir` and returns its path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_str().expect("utf-8 path").to_owned()
}

/// `sluice ARGS…` started as a service manager starts it: `NOTIFY_SOCKET` names a
/// datagram socket the test reads, `env` is set besides; its output goes to
/// `sluice.log` in `dir`. Killed on drop.
pub struct Notified {
    pub child: Child,
    pub log: PathBuf,
    socket: tokio::net::UnixDatagram,
}

impl Notified {
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Notified {
        let notify = dir.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&notify).expect("bind the notify socket");
        let log = dir.join("sluice.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env("NOTIFY_SOCKET", &notify)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sluice");
        Notified { child, log, socket }
    }

    /// The next notification, or a panic if none comes in time.
    pub async fn next(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.socket.recv(&mut buf))
            .await
            .expect("a notification in time")
            .expect("receive");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Notifications until one contains `wanted` (watchdog pings come in between).
    pub async fn until(&self, wanted: &str) -> String {
        for _ in 0..100 {
            let message = self.next().await;
            if message.contains(wanted) {
                return message;
            }
        }
        panic!("no notification with {wanted}");
    }
}
