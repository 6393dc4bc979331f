//! Real third-party servers started for a test, each on free loopback ports with its data
//! in a temporary directory, stopped when dropped.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::process::free_port;
use super::{http, WAIT};

mod databases;
pub use databases::*;

/// A single-member etcd (the Debian `etcd-server` package), killed on drop.
pub struct Etcd {
    /// Client address; its JSON gateway answers under `/v3/`.
    pub addr: SocketAddr,
    peer: String,
    child: Child,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd and returns once it answers. Free ports are only free until someone
    /// takes them, so a start that loses that race is tried again on new ports.
    pub async fn start() -> Etcd {
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("client address");
            let peer = format!("http://127.0.0.1:{}", free_port());
            match Self::spawn(addr, &peer, dir.path()).await {
                Ok(child) => {
                    return Etcd {
                        addr,
                        peer,
                        child,
                        dir,
                    }
                }
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start; its log:\n{last_log}");
    }

    /// Starts etcd on its ports again, on the same data (after [`Self::stop`]).
    pub async fn restart(&mut self) {
        match Self::spawn(self.addr, &self.peer, self.dir.path()).await {
            Ok(child) => self.child = child,
            Err(log) => panic!("etcd did not start again; its log:\n{log}"),
        }
    }

    /// Runs etcd with its data in `dir` until it answers; its log when it does not.
    async fn spawn(addr: SocketAddr, peer: &str, dir: &std::path::Path) -> Result<Child, String> {
        let client = format!("http://{addr}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("log file");
        let mut child = Command::new("etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start etcd (Debian package etcd-server; scripts/test installs it)");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if TcpStream::connect(addr).await.is_ok() {
                let health = http::get(addr, "/health").await;
                if health.status == 200 && health.body.contains("true") {
                    return Ok(child);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
        Err(std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default())
    }

    /// `http://127.0.0.1:PORT`, as a client is configured.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets `key` to `value` through the gateway.
    pub async fn put(&self, key: &str, value: &str) {
        let body = serde_json::json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
        self.call("/v3/kv/put", &body).await;
    }

    /// The value at `key`, if there is one.
    pub async fn get(&self, key: &str) -> Option<String> {
        let answer = self
            .call(
                "/v3/kv/range",
                &serde_json::json!({ "key": BASE64.encode(key) }),
            )
            .await;
        let value = answer["kvs"][0]["value"].as_str()?;
        let bytes = BASE64.decode(value).expect("base64 from etcd");
        Some(String::from_utf8(bytes).expect("UTF-8 value"))
    }

    /// Deletes `key` through the gateway.
    pub async fn delete(&self, key: &str) {
        let body = serde_json::json!({ "key": BASE64.encode(key) });
        self.call("/v3/kv/deleterange", &body).await;
    }

    /// Discards the history before the current revision.
    pub async fn compact(&self) {
        let status = self
            .call("/v3/kv/range", &serde_json::json!({ "key": "AA==" }))
            .await;
        let revision = status["header"]["revision"].clone();
        self.call(
            "/v3/kv/compaction",
            &serde_json::json!({ "revision": revision, "physical": true }),
        )
        .await;
    }

    async fn call(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let response = http::request(self.addr, "POST", path, &[], Some(&body.to_string())).await;
        assert_eq!(response.status, 200, "etcd {path}: {}", response.body);
        response.json()
    }

    /// The directory holding etcd's data and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops etcd now (its data stays until drop).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// dnsmasq (Debian `dnsmasq-base`) answering from its command line only, on a free
/// loopback port over UDP and TCP; killed on drop.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (options such as `--srv-host=…`, `--host-record=…`)
    /// and returns once it answers over TCP.
    pub async fn start(records: &[String]) -> Dnsmasq {
        let mut dir = tempfile::tempdir().expect("temp dir");
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let mut server = Dnsmasq {
                addr,
                child: None,
                dir,
            };
            if server.spawn(records).await {
                return server;
            }
            last_log = server.log();
            dir = server.take_dir();
        }
        panic!("dnsmasq did not start; its log:\n{last_log}");
    }

    /// Stops dnsmasq and starts it again on the same port with other `records`.
    pub async fn restart(&mut self, records: &[String]) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        assert!(
            self.spawn(records).await,
            "dnsmasq did not restart:\n{}",
            self.log()
        );
    }

    async fn spawn(&mut self, records: &[String]) -> bool {
        let log = std::fs::File::create(self.dir.path().join("dnsmasq.log")).expect("log file");
        let mut child = Command::new("/usr/sbin/dnsmasq")
            .arg("--no-daemon")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--port={}", self.addr.port()))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--local-ttl=1")
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .args(records)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start dnsmasq (Debian package dnsmasq-base; scripts/test installs it)");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect(self.addr).await.is_ok() {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill().await;
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    fn take_dir(self) -> TempDir {
        self.dir
    }
}

/// nginx (Debian `nginx`) serving the files of a temporary directory over HTTP on a free
/// loopback port, in the foreground; killed on drop.
pub struct FileServer {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl FileServer {
    pub async fn start() -> FileServer {
        Self::start_with(|addr, root| format!("server {{ listen {addr}; root {root}; }}")).await
    }

    /// Starts nginx with the `server` blocks `servers(addr, root)` returns (given the
    /// address to listen on and the served directory) in place of the plain one.
    pub async fn start_with(servers: impl Fn(SocketAddr, &str) -> String) -> FileServer {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("www")).expect("www dir");
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let d = dir.path().display();
            let servers = servers(addr, &format!("{d}/www"));
            let conf = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n\
                 proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n\
                 scgi_temp_path {d}/tmp;\n  default_type text/plain;\n\
                 {servers}\n}}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
            let mut child = Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start nginx (Debian package nginx; scripts/test installs it)");
            let deadline = tokio::time::Instant::now() + WAIT;
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(addr).await.is_ok() {
                    return FileServer { addr, child, dir };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill().await;
            last_log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start; its log:\n{last_log}");
    }

    /// Writes `text` to `name` in the served directory (atomically: nginx never serves a
    /// half-written file).
    pub fn write(&self, name: &str, text: &str) {
        let www = self.dir.path().join("www");
        let temp = www.join(format!(".{name}.tmp"));
        std::fs::write(&temp, text).expect("write served file");
        std::fs::rename(&temp, www.join(name)).expect("rename served file");
    }

    /// Removes `name` from the served directory: nginx answers 404 for it.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join("www").join(name)).expect("remove served file");
    }

    /// `http://ADDR/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Stops nginx now: fetches from it fail.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
