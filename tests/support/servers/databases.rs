//! Redis, MariaDB and PostgreSQL from Debian's packages, for the database health checks.
//!
//! Each server runs under a small `sh` guardian that reads a pipe from the test process.
//! When the pipe closes — the handle is dropped, or the test process ends however it
//! ends — the guardian stops the server and removes its directory. That is what stops
//! the shared instances too: they live in statics, which are never dropped.
//!
//! Everything here blocks (process start-up, waits); the async wrappers run it on a
//! blocking thread so a test's runtime keeps going.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::process::free_port;
use crate::support::WAIT;

/// Stops the server (`$2` is the signal) once standard input ends, escalating to SIGKILL
/// after ten seconds, then removes the directory `$1` unless told `keep` (a start that
/// is retried on another port keeps its data directory).
const GUARDIAN: &str = r#"dir=$1; sig=$2; shift 2
"$@" >"$dir/server.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$dir/server.pid"
read -r order || true
kill "-$sig" "$pid" 2>/dev/null
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL "$pid" 2>/dev/null
wait "$pid"
[ "$order" = keep ] || rm -rf "$dir"
"#;

/// A server process on `127.0.0.1:port`, stopped (and its directory removed) on drop.
pub struct Daemon {
    pub port: u16,
    dir: PathBuf,
    guardian: Child,
    /// Closing it tells the guardian to stop the server.
    pipe: Option<ChildStdin>,
}

/// Who runs a server: the current user, or another one (PostgreSQL refuses root).
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl Daemon {
    /// Runs `program args…` under a guardian and waits until `port` accepts.
    fn spawn(
        dir: &Path,
        port: u16,
        signal: &str,
        run_as: Option<RunAs>,
        program: &str,
        args: &[String],
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(GUARDIAN)
            .arg("guardian")
            .arg(dir)
            .arg(signal)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let mut guardian = cmd.spawn().map_err(|e| format!("start {program}: {e}"))?;
        let pipe = guardian.stdin.take();
        let daemon = Daemon {
            port,
            dir: dir.to_owned(),
            guardian,
            pipe,
        };
        match daemon.wait_listening(program) {
            Ok(()) => Ok(daemon),
            Err(e) => {
                daemon.abandon();
                Err(e)
            }
        }
    }

    /// Stops a server that failed to start, keeping its directory for another try.
    fn abandon(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"keep\n");
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.guardian.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_listening(&self, program: &str) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if !self.server_alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{program} did not listen on {addr}; its log:\n{}",
            self.log()
        ))
    }

    /// Whether the server process is still there (until its pid file exists, assume so).
    fn server_alive(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("server.pid")) {
            Ok(pid) => Path::new("/proc").join(pid.trim()).exists(),
            Err(_) => true,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server and waits until it is gone, for at most [`WAIT`].
    pub async fn stop(mut self) {
        drop(self.pipe.take());
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.guardian.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server on port {} did not stop", self.port);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.pipe.take());
    }
}

/// A fresh temporary directory that outlives its `TempDir` handle: the guardian removes
/// it. Owned by `run_as` when given, so that user's server can write there.
fn server_dir(run_as: Option<RunAs>) -> Result<PathBuf, String> {
    let dir = tempfile::tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    if let Some(user) = run_as {
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    Ok(dir)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a set-up command to its end, for at most [`WAIT`]; its output on failure.
fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("{what}: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("{what}: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + WAIT;
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what}: {status}\n{}", output())),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: did not finish\n{}", output()));
            }
        }
    }
}

/// Tries `start` on up to three free ports: a port is free only until someone takes it.
fn on_free_port<T>(mut start: impl FnMut(u16) -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        match start(free_port()) {
            Ok(t) => return t,
            Err(e) => last = e,
        }
    }
    panic!("{last}");
}

// ---- Redis ----------------------------------------------------------------------------

/// `redis-server` on `port` (a free one if `None`) with `extra` arguments (such as
/// `--requirepass`, `--replicaof`), without persistence.
pub async fn start_redis(port: Option<u16>, extra: &[&str]) -> Daemon {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || match port {
        Some(port) => redis_on(port, &extra).unwrap_or_else(|e| panic!("{e}")),
        None => on_free_port(|port| redis_on(port, &extra)),
    })
    .await
    .expect("start redis")
}

fn redis_on(port: u16, extra: &[String]) -> Result<Daemon, String> {
    let dir = server_dir(None)?;
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    args.extend(extra.iter().cloned());
    Daemon::spawn(&dir, port, "TERM", None, "/usr/bin/redis-server", &args).inspect_err(|_| {
        // Nothing in it is worth another try: the next one takes a new directory.
        let _ = std::fs::remove_dir_all(&dir);
    })
}

/// Sends one command to the Redis on `port` (no password) and returns its first reply
/// line.
pub async fn redis_command(port: u16, args: &[&str]) -> String {
    let mut wire = format!("*{}\r\n", args.len());
    for arg in args {
        wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    tokio::task::spawn_blocking(move || {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).expect("connect to redis for a command");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.write_all(wire.as_bytes()).expect("send command");
        let mut line = String::new();
        // Capped, so a runaway reply cannot fill memory.
        BufReader::new(std::io::Read::take(stream, 64 * 1024))
            .read_line(&mut line)
            .expect("read reply");
        line.trim_end().to_owned()
    })
    .await
    .expect("redis command")
}

// ---- MariaDB --------------------------------------------------------------------------

/// Users of the shared MariaDB, all allowed from 127.0.0.1.
pub const MARIADB_USER: (&str, &str) = ("sluice", "mysql-pw");
/// A user whose authentication plugin (ed25519) the health check does not speak.
pub const MARIADB_ED25519_USER: (&str, &str) = ("sluice_ed", "ed-pw");

/// One MariaDB for the whole test binary, started on first use.
pub async fn shared_mariadb() -> &'static Daemon {
    static SERVER: OnceLock<Result<Daemon, String>> = OnceLock::new();
    let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(start_mariadb))
        .await
        .expect("start mariadb");
    server.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

fn start_mariadb() -> Result<Daemon, String> {
    let root = running_as_root();
    let dir = server_dir(None)?;
    let data = dir.join("data");
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--innodb-log-file-size=4M");
    if root {
        install.arg("--user=root");
    }
    run(&mut install, "mariadb-install-db")?;
    let socket = dir.join("sock");
    let daemon = on_free_port_result(|port| {
        let mut args = vec![
            "--no-defaults".to_owned(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", socket.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            // Users are matched by address only: no reverse lookups of 127.0.0.1.
            "--skip-name-resolve".to_owned(),
            "--innodb-log-file-size=4M".to_owned(),
            format!("--pid-file={}", dir.join("mariadb.pid").display()),
            format!("--tmpdir={}", dir.display()),
        ];
        if root {
            args.push("--user=root".to_owned());
        }
        Daemon::spawn(&dir, port, "TERM", None, "/usr/sbin/mariadbd", &args)
    })?;
    let (user, password) = MARIADB_USER;
    let (ed_user, ed_password) = MARIADB_ED25519_USER;
    let sql = format!(
        "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; \
         INSTALL SONAME 'auth_ed25519'; \
         CREATE USER '{ed_user}'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('{ed_password}');"
    );
    run(
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .arg("--user=root")
            .arg("-e")
            .arg(sql),
        "create MariaDB users",
    )
    .map_err(|e| format!("{e}\nserver log:\n{}", daemon.log()))?;
    Ok(daemon)
}

/// A global status counter of the shared MariaDB (`Aborted_connects`), asked as root
/// over its socket.
pub async fn mariadb_status(counter: &str) -> u64 {
    let socket = shared_mariadb().await.dir.join("sock");
    let query = format!("SHOW GLOBAL STATUS LIKE '{counter}'");
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args([
                "--user=root",
                "--batch",
                "--skip-column-names",
                "-e",
                &query,
            ])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("mariadb answered in time")
    .expect("run mariadb");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{counter}: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Like [`on_free_port`], for a start that may fail for good after three tries.
fn on_free_port_result<T>(mut start: impl FnMut(u16) -> Result<T, String>) -> Result<T, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match start(free_port()) {
            Ok(t) => return Ok(t),
            Err(e) => last = e,
        }
    }
    Err(last)
}

// ---- PostgreSQL -----------------------------------------------------------------------

/// Users of the shared PostgreSQL, by how they log in over TCP.
pub const PG_SCRAM_USER: (&str, &str) = ("postgres", "pg-scram-pw");
pub const PG_MD5_USER: (&str, &str) = ("sluice_md5", "pg-md5-pw");
pub const PG_CLEARTEXT_USER: (&str, &str) = ("sluice_clear", "pg-clear-pw");
/// Trusted: logs in without a password.
pub const PG_TRUST_USER: &str = "sluice_trust";

/// One PostgreSQL for the whole test binary, started on first use.
pub async fn shared_postgres() -> &'static Daemon {
    static SERVER: OnceLock<Result<Daemon, String>> = OnceLock::new();
    let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(start_postgres))
        .await
        .expect("start postgres");
    server.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// The newest installed PostgreSQL's binaries (Debian keeps each major version apart).
fn postgres_bin() -> Result<PathBuf, String> {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .map_err(|e| format!("{}: {e} (Debian package postgresql)", base.display()))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL server installed".to_owned())
}

/// `nobody` when running as root (PostgreSQL refuses to run as root).
fn postgres_user() -> Result<Option<RunAs>, String> {
    if !running_as_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    let nobody = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next() != Some("nobody") {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(RunAs { uid, gid })
    });
    nobody
        .map(Some)
        .ok_or_else(|| "no user nobody to run PostgreSQL as".to_owned())
}

fn start_postgres() -> Result<Daemon, String> {
    let bin = postgres_bin()?;
    let run_as = postgres_user()?;
    let dir = server_dir(run_as)?;
    let data = dir.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
        ])
        .args(["-E", "UTF8", "--locale=C"]);
    if let Some(user) = run_as {
        initdb.uid(user.uid).gid(user.gid);
    }
    run(&mut initdb, "initdb")?;
    // Local (socket) logins are trusted for the set-up below; TCP logins are what the
    // checks exercise. `md5` also accepts users whose password is stored as SCRAM, with
    // SCRAM.
    let hba = format!(
        "local all all trust\n\
         host all {PG_TRUST_USER} 127.0.0.1/32 trust\n\
         host all {} 127.0.0.1/32 password\n\
         host all all 127.0.0.1/32 md5\n",
        PG_CLEARTEXT_USER.0
    );
    std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    let daemon = on_free_port_result(|port| {
        let args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.display().to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-c".into(),
            "password_encryption=scram-sha-256".into(),
            "-c".into(),
            "fsync=off".into(),
        ];
        // SIGINT: a fast shutdown, which does not wait for clients to leave.
        let postgres = bin.join("postgres").display().to_string();
        Daemon::spawn(&dir, port, "INT", run_as, &postgres, &args)
    })?;
    let (scram_user, scram_password) = PG_SCRAM_USER;
    let (md5_user, md5_password) = PG_MD5_USER;
    let (clear_user, clear_password) = PG_CLEARTEXT_USER;
    let statements = [
        format!("ALTER USER {scram_user} PASSWORD '{scram_password}'"),
        format!("CREATE USER {clear_user} PASSWORD '{clear_password}'"),
        format!("CREATE USER {PG_TRUST_USER}"),
        "SET password_encryption = 'md5'".to_owned(),
        format!("CREATE USER {md5_user} PASSWORD '{md5_password}'"),
    ];
    // The server listens a moment before it accepts logins: retry, bounded.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut psql = Command::new(bin.join("psql"));
        psql.arg("-h")
            .arg(&dir)
            .arg("-p")
            .arg(daemon.port.to_string())
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
            ]);
        for sql in &statements {
            psql.arg("-c").arg(sql);
        }
        match run(&mut psql, "create PostgreSQL users") {
            Ok(()) => return Ok(daemon),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{e}\nserver log:\n{}", daemon.log()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
