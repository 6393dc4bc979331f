//! Pebble, Let's Encrypt's ACME test server (Debian package pebble), with its challenge
//! test server as the DNS, answering every name with 127.0.0.1: the challenges Pebble
//! hands out are validated against Sluice on loopback. Pebble speaks HTTPS with a
//! certificate of a test CA made here (what Sluice's `ca_path` names); the CA that signs
//! the certificates it issues is made anew at each start, and read from its management
//! interface.
//!
//! Where Pebble is not installed a test skips with a printed reason, unless
//! `SLUICE_REQUIRE_PEBBLE` is set (CI sets it): then a skip is a failure.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

use super::http::{self, Response};
use super::process::free_port;
use super::tls::Pki;
use super::WAIT;

/// Pebble and its DNS, both killed on drop, or before by [`Pebble::stop`].
pub struct Pebble {
    /// The ACME server (`/dir`).
    acme: SocketAddr,
    /// The management interface (`/roots/0`).
    management: SocketAddr,
    pebble: Child,
    challtestsrv: Child,
    /// The test CA, the certificate Pebble serves, its configuration and both logs.
    pki: Pki,
}

/// Pebble's environment: no random sleep before validating, and the same path through
/// the protocol on every run: no good nonce refused as bad, no authorization reused (a
/// renewal answers a new challenge).
const ENV: [(&str, &str); 3] = [
    ("PEBBLE_VA_NOSLEEP", "1"),
    ("PEBBLE_WFE_NONCEREJECT", "0"),
    ("PEBBLE_AUTHZREUSE", "0"),
];

/// Starts tried before giving up: a free port is free only until someone takes it.
const ATTEMPTS: usize = 3;

impl Pebble {
    /// Starts the DNS and Pebble, validating HTTP-01 challenges on 127.0.0.1:`http_port`
    /// and TLS-ALPN-01 on 127.0.0.1:`tls_port` (where Sluice answers them) and issuing
    /// certificates for `validity` (whole seconds, `certificateValidityPeriod`; notAfter
    /// is notBefore + validity - 1 s) or else for Pebble's 5 years, and returns once
    /// Pebble answers over HTTPS. `Err` only when Pebble is not installed (see
    /// [`or_skip`]); any other failure panics with the logs.
    pub async fn start(
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> Result<Pebble, String> {
        let pki = Pki::new();
        let files = pki.leaf("pebble", &["127.0.0.1", "localhost"]);
        let dir = pki.dir.path().to_owned();
        let connector = trusting(&pki.ca_path());
        let mut logs = String::new();
        for _ in 0..ATTEMPTS {
            let (dns, dns_management) = (free_port(), free_port());
            let mut challtestsrv = spawn(
                Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .arg("-dns01")
                    .arg(format!("127.0.0.1:{dns}"))
                    .arg("-management")
                    .arg(format!("127.0.0.1:{dns_management}"))
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]),
                &dir.join("challtestsrv.log"),
            )?;
            let dns_up = came_up(&mut [&mut challtestsrv], || async move {
                listens(dns).await && listens(dns_management).await
            })
            .await;
            if !dns_up {
                kill(&mut challtestsrv);
                logs = read_logs(&dir);
                continue;
            }

            let (acme, management) = (local(free_port()), local(free_port()));
            let mut config = serde_json::json!({
                "pebble": {
                    "listenAddress": acme.to_string(),
                    "managementListenAddress": management.to_string(),
                    "certificate": files.cert_path,
                    "privateKey": files.key_path,
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false,
                }
            });
            if let Some(validity) = validity {
                config["pebble"]["certificateValidityPeriod"] = validity.as_secs().into();
            }
            let config_path = dir.join("pebble.json");
            std::fs::write(&config_path, config.to_string()).expect("write pebble.json");
            let mut pebble = match spawn(
                Command::new("pebble")
                    .arg("-config")
                    .arg(&config_path)
                    .arg("-dnsserver")
                    .arg(format!("127.0.0.1:{dns}"))
                    .envs(ENV),
                &dir.join("pebble.log"),
            ) {
                Ok(pebble) => pebble,
                Err(missing) => {
                    kill(&mut challtestsrv);
                    return Err(missing);
                }
            };
            let up = came_up(&mut [&mut challtestsrv, &mut pebble], || async {
                answers(&connector, acme, "/dir").await
                    && answers(&connector, management, "/roots/0").await
            })
            .await;
            if up {
                return Ok(Pebble {
                    acme,
                    management,
                    pebble,
                    challtestsrv,
                    pki,
                });
            }
            kill(&mut pebble);
            kill(&mut challtestsrv);
            logs = read_logs(&dir);
        }
        panic!("Pebble did not start in {ATTEMPTS} attempts; the last one's logs:\n{logs}");
    }

    /// `https://127.0.0.1:PORT/dir`, Sluice's `directory_url`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The test CA that signs Pebble's own HTTPS certificate, Sluice's `ca_path`.
    pub fn https_ca_path(&self) -> PathBuf {
        self.pki.ca_path()
    }

    /// The root of the certificates Pebble issues (PEM), made at its start: what a client
    /// of Sluice trusts.
    pub async fn issuing_root_pem(&self) -> String {
        let connector = trusting(&self.pki.ca_path());
        let response = https_get(&connector, self.management, "/roots/0")
            .await
            .unwrap_or_else(|e| panic!("GET /roots/0 from Pebble: {e}\n{}", self.log()));
        assert_eq!(response.status, 200, "GET /roots/0: {}", response.body);
        response.body
    }

    /// Everything Pebble logged so far (one line per request, each validation tried).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.pki.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Kills Pebble and its DNS, as an ACME server that goes away: from then on nothing
    /// answers at [`Pebble::directory_url`].
    pub fn stop(&mut self) {
        kill(&mut self.pebble);
        kill(&mut self.challtestsrv);
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pebble, or why a test cannot have it: then it skips (prints the reason and returns
/// `None`), or fails where `SLUICE_REQUIRE_PEBBLE` says Pebble must be there.
pub fn or_skip(started: Result<Pebble, String>, test: &str) -> Option<Pebble> {
    match started {
        Ok(pebble) => Some(pebble),
        Err(reason) if std::env::var_os("SLUICE_REQUIRE_PEBBLE").is_some() => {
            panic!("{test}: Pebble is required here: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped {test}: no Pebble ({reason})");
            None
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Starts `command` with its output in `log`; `Err` if its program is not installed.
fn spawn(command: &mut Command, log: &Path) -> Result<Child, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let log = std::fs::File::create(log).expect("log file");
    let started = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn();
    match started {
        Ok(child) => Ok(child),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{program} is not installed (Debian package pebble; scripts/test installs it)"
        )),
        Err(e) => panic!("start {program}: {e}"),
    }
}

/// Kills `child` and reaps it: once this returns, its ports are closed.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_logs(dir: &Path) -> String {
    ["challtestsrv.log", "pebble.log"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            format!("--- {name}\n{text}")
        })
        .collect()
}

/// Polls `ready` every 20 ms, for at most [`WAIT`], while every one of `children` runs:
/// whether it came to hold.
async fn came_up<F, Fut>(children: &mut [&mut Child], mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if children
            .iter_mut()
            .any(|child| !matches!(child.try_wait(), Ok(None)))
        {
            return false;
        }
        if ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether something accepts connections on 127.0.0.1:`port`.
async fn listens(port: u16) -> bool {
    TcpStream::connect(local(port)).await.is_ok()
}

/// Whether `GET path` on `addr` over HTTPS, verified by `connector`, answers 200: only
/// the Pebble started with the test CA's certificate can.
async fn answers(connector: &TlsConnector, addr: SocketAddr, path: &str) -> bool {
    matches!(https_get(connector, addr, path).await, Ok(response) if response.status == 200)
}

/// `GET path` on `addr` over HTTPS, verified by `connector`, bounded by [`WAIT`].
async fn https_get(connector: &TlsConnector, addr: SocketAddr, path: &str) -> io::Result<Response> {
    timeout(WAIT, https_exchange(connector, addr, path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

async fn https_exchange(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> io::Result<Response> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector.connect(ServerName::from(addr.ip()), tcp).await?;
    http::request_on(tls, &addr.to_string(), "GET", path, &[], None).await
}

/// A TLS client trusting only the CA in the PEM file `ca`.
fn trusting(ca: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("the test CA"))
        .expect("add the test CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
