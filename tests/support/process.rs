//! The real `sluice` binary, run with a TOML file in a temporary directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::WAIT;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `[servers.test]` listening on `port`, round-robin over `backends`, as TOML.
pub fn toml_config(port: u16, backends: &[SocketAddr], shutdown_timeout: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{b} weight=1\""))
        .collect();
    format!(
        r#"shutdown_timeout = "{shutdown_timeout}"

[logging]
level = "info"

[servers.test]
bind = "127.0.0.1:{port}"
protocol = "tcp"
balance = "roundrobin"

  [servers.test.discovery]
  kind = "static"
  static_list = [{}]
"#,
        list.join(", ")
    )
}

/// A running `sluice run -c FILE`; killed on drop if still running.
pub struct SluiceProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl SluiceProcess {
    /// Writes `toml` to a file, starts Sluice on it and waits until `addr` accepts.
    pub async fn start(toml: &str, addr: SocketAddr) -> SluiceProcess {
        Self::start_limited(toml, addr, None).await
    }

    /// Like [`SluiceProcess::start`], under a descriptor limit of `nofile` (soft and
    /// hard, so Sluice cannot raise it) when given.
    pub async fn start_limited(toml: &str, addr: SocketAddr, nofile: Option<u64>) -> SluiceProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = dir.path().join("sluice.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = match nofile {
            None => Command::new(BIN),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "ulimit -n \"$0\" && exec \"$@\""])
                    .arg(limit.to_string())
                    .arg(BIN);
                sh
            }
        };
        let child = command
            .arg("run")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sluice");
        let mut process = SluiceProcess {
            child,
            addr,
            config,
            log,
            _dir: dir,
        };
        process.wait_ready().await;
        process
    }

    /// Bounded connect loop: returns once the listener accepts.
    async fn wait_ready(&mut self) {
        for _ in 0..500 {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(self.addr))
                    .await
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sluice did not listen on {}:\n{}", self.addr, self.log());
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
