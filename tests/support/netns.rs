//! Network namespaces a test creates and always removes: a client, a balancer and a
//! backend joined by veth pairs, with addresses that exist only inside them and no route
//! from them to anywhere else.
//!
//! Creating namespaces needs root (CAP_SYS_ADMIN) and `ip` (iproute2); where they are
//! missing a test skips with a printed reason, unless `SLUICE_REQUIRE_NETNS` is set
//! (CI sets it, and runs as root): then a skip is a failure.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One namespace, deleted (with the veth ends inside it) when dropped.
pub struct Netns {
    pub name: String,
}

/// Distinguishes the namespaces of one test process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Runs `program args…`, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A new, empty namespace with its loopback up.
    pub fn create(role: &str) -> Result<Netns, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("sluice-{}-{role}{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip ARGS…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `PROGRAM ARGS…` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs inside the namespace (for a long-lived process).
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `make` on a thread that has entered the namespace: the sockets it opens
    /// belong to the namespace for good, wherever they are used afterwards.
    pub fn inside<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("{path:?}: {e}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path:?}: {e}"))?;
            Ok(make())
        })
        .join()
        .map_err(|_| "the namespace's thread panicked".to_owned())?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Joins `a` and `b` with a veth pair, `a_addr` and `b_addr` (CIDR) on its ends.
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<(), String> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Interface names are at most 15 bytes; created at the root, then moved.
    let (a_if, b_if) = (
        format!("sla{n}-{}", std::process::id() % 10_000),
        format!("slb{n}-{}", std::process::id() % 10_000),
    );
    run(
        "ip",
        &[
            "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
            &b.name,
        ],
    )?;
    a.ip(&["addr", "add", a_addr, "dev", &a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", &b_if])?;
    a.ip(&["link", "set", &a_if, "up"])?;
    b.ip(&["link", "set", &b_if, "up"])?;
    Ok(())
}

/// The client, balancer and backend namespaces of a transparent-proxy test:
/// client 10.77.1.2 — 10.77.1.1 balancer 10.77.2.1 — 10.77.2.2 backend, the client and
/// backend routing everything through the balancer, which forwards.
pub struct Triangle {
    pub client: Netns,
    pub balancer: Netns,
    pub backend: Netns,
}

pub const CLIENT_IP: &str = "10.77.1.2";
pub const BALANCER_CLIENT_SIDE: &str = "10.77.1.1";
pub const BALANCER_BACKEND_SIDE: &str = "10.77.2.1";
pub const BACKEND_IP: &str = "10.77.2.2";

impl Triangle {
    pub fn create() -> Result<Triangle, String> {
        let client = Netns::create("c")?;
        let balancer = Netns::create("l")?;
        let backend = Netns::create("b")?;
        link(&client, "10.77.1.2/24", &balancer, "10.77.1.1/24")?;
        link(&balancer, "10.77.2.1/24", &backend, "10.77.2.2/24")?;
        client.ip(&["route", "add", "default", "via", BALANCER_CLIENT_SIDE])?;
        backend.ip(&["route", "add", "default", "via", BALANCER_BACKEND_SIDE])?;
        balancer.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Triangle {
            client,
            balancer,
            backend,
        })
    }
}

/// The namespaces, or why a test cannot have them: then it skips (prints the reason and
/// returns `None`), or fails where `SLUICE_REQUIRE_NETNS` says they must work.
pub fn or_skip<T>(made: Result<T, String>, test: &str) -> Option<T> {
    match made {
        Ok(made) => Some(made),
        Err(reason) if std::env::var_os("SLUICE_REQUIRE_NETNS").is_some() => {
            panic!("{test}: network namespaces are required here: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped {test}: no network namespaces ({reason})");
            None
        }
    }
}
