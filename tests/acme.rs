//! ACME certificates from a real ACME server, Pebble, through the binary: a certificate
//! per name of `acme_hosts`, obtained through TLS-ALPN-01 on the server's own listener or
//! HTTP-01 on `http_bind`, then served and verified up to Pebble's root; renewed on
//! demand (`POST /acme/renew`) without closing an open stream, and by itself at two
//! thirds of a short lifetime; taken from the cache after a restart, with no new order;
//! and still served while the ACME server is gone. Without Pebble installed these tests
//! skip (see `support::pebble`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

use crate::support::data::EchoStreamer;
use crate::support::http;
use crate::support::pebble::{self, Pebble};
use crate::support::process::{free_port, SluiceProcess};
use crate::support::*;

const A: &str = "a.sluice.test";
const B: &str = "b.sluice.test";

/// How long a first certificate may take on a loaded machine: an account, an order, its
/// challenge answered and validated, the order finalized.
const ISSUE_WAIT: Duration = Duration::from_secs(30);

/// Pebble, an echo backend, and the ports and cache directory Sluice is given, for one
/// test.
struct Acme {
    pebble: Pebble,
    backend: TestBackend,
    /// Where server `web` listens: Pebble validates TLS-ALPN-01 there.
    web: SocketAddr,
    /// `http_bind`: Pebble validates HTTP-01 there.
    http: SocketAddr,
    /// `cache_dir`, the same across the restarts of a test.
    cache: TempDir,
}

impl Acme {
    /// `None` (the test skips) where Pebble is not installed. Pebble is told the ports
    /// before Sluice takes them.
    async fn start(test: &str, validity: Option<Duration>) -> Option<Acme> {
        let web = local(free_port());
        let http = loop {
            let port = free_port();
            if port != web.port() {
                break local(port);
            }
        };
        let pebble = pebble::or_skip(Pebble::start(http.port(), web.port(), validity).await, test)?;
        Some(Acme {
            pebble,
            backend: TestBackend::echo().await,
            web,
            http,
            cache: tempfile::tempdir().expect("temp dir"),
        })
    }

    /// Server `web` terminating TLS for `names` with certificates obtained from Pebble
    /// through `challenge`, in front of the echo backend; the API and metrics on ports of
    /// their own.
    fn toml(&self, challenge: &str, names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
        let http_bind = if challenge == "http-01" {
            format!("http_bind = \"{}\"\n", self.http)
        } else {
            String::new()
        };
        format!(
            r#"[logging]
level = "info"

[api]
enabled = true
bind = "127.0.0.1:0"

[metrics]
enabled = true
bind = "127.0.0.1:0"

[acme]
challenge = "{challenge}"
{http_bind}cache_dir = "{cache}"
directory_url = "{directory}"
email = "ops@example.test"
ca_path = "{ca}"

[servers.web]
bind = "{web}"
protocol = "tls"

  [servers.web.discovery]
  kind = "static"
  static_list = ["{backend}"]

  [servers.web.tls]
  acme_hosts = [{names}]
"#,
            cache = self.cache.path().display(),
            directory = self.pebble.directory_url(),
            ca = self.pebble.https_ca_path().display(),
            web = self.web,
            backend = self.backend.addr,
            names = names.join(", "),
        )
    }

    async fn sluice(&self, challenge: &str, names: &[&str]) -> SluiceProcess {
        SluiceProcess::start(&self.toml(challenge, names)).await
    }

    /// A TLS client trusting only the root of the certificates Pebble issues, resuming no
    /// session.
    async fn client(&self) -> TlsConnector {
        let root = self.pebble.issuing_root_pem().await;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root.as_bytes()).expect("Pebble's root"))
            .expect("trust Pebble's root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        // Every handshake in full: a resumed session shows the certificate it began with.
        let mut config = config;
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }

    /// Waits, for at most [`ISSUE_WAIT`], until `name` is served (see [`served`]); the
    /// serial of its certificate.
    async fn served_in_time(
        &self,
        sluice: &SluiceProcess,
        name: &str,
        client: &TlsConnector,
    ) -> String {
        let deadline = Instant::now() + ISSUE_WAIT;
        loop {
            match served(self.web, name, client).await {
                Ok(serial) => return serial,
                Err(e) if Instant::now() >= deadline => panic!(
                    "{name} not served within {ISSUE_WAIT:?}: {e}\n--- sluice\n{}\n--- pebble\n{}",
                    sluice.log(),
                    self.pebble.log()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("a DNS name")
}

/// A TLS session to `addr` asking for `name`, its certificate verified by `client`, and
/// `ping` echoed through it by the backend: the serial of the certificate presented.
async fn served(addr: SocketAddr, name: &str, client: &TlsConnector) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = timeout(WAIT, client.connect(server_name(name), tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let serial = match tls.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => serial_of(leaf),
        _ => return Err("no certificate".to_owned()),
    };
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    let mut echoed = Vec::new();
    timeout(WAIT, tls.read_to_end(&mut echoed))
        .await
        .map_err(|_| "echo timed out".to_owned())?
        .map_err(|e| format!("echo: {e}"))?;
    if echoed != b"ping" {
        return Err(format!("echoed {:?}", String::from_utf8_lossy(&echoed)));
    }
    Ok(serial)
}

/// The serial number of `cert`, as [`normalized`] writes it.
fn serial_of(cert: &CertificateDer<'_>) -> String {
    let cert = webpki::EndEntityCert::try_from(cert).expect("an X.509 certificate");
    let hex: String = cert.serial().iter().map(|b| format!("{b:02x}")).collect();
    normalized(&hex)
}

/// A serial number in hex, lower case, without separators or leading zeros: the API's
/// `serial` compares equal however it pads.
fn normalized(serial: &str) -> String {
    serial
        .to_ascii_lowercase()
        .replace(':', "")
        .trim_start_matches('0')
        .to_owned()
}

/// `GET /acme`: the entry of `name`.
async fn acme_entry(sluice: &SluiceProcess, name: &str) -> Value {
    let response = http::get(sluice.api(), "/acme").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let json = response.json();
    let entries = json["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no list of certificates: {json}"));
    let entry = entries.iter().find(|entry| entry["name"] == name).cloned();
    let entry = entry.unwrap_or_else(|| panic!("no {name} in {json}"));
    assert_eq!(entry["server"], "web", "{entry}");
    entry
}

/// The value of the sample `name{labels…}` of Sluice's metrics (labels in any order).
async fn metric(sluice: &SluiceProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = http::get(sluice.metrics(), "/metrics").await.body;
    text.lines().find_map(|line| {
        let (head, value) = line.rsplit_once(' ')?;
        let (metric, rest) = head.split_once('{')?;
        let inner = rest.strip_suffix('}')?;
        let matches = metric == name
            && labels
                .iter()
                .all(|(k, v)| inner.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if matches {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// `sluice_acme_events_total` of server `web`, name `name`, `event`: 0 if not counted yet.
async fn events(sluice: &SluiceProcess, name: &str, event: &str) -> u64 {
    let labels = [("server", "web"), ("name", name), ("event", event)];
    metric(sluice, "sluice_acme_events_total", &labels)
        .await
        .map_or(0, |count| count as u64)
}

/// The files under `dir`, by path relative to it, after asserting that each is readable
/// and writable by its owner only (0600).
fn private_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(current) = dirs.pop() {
        for entry in std::fs::read_dir(&current).expect("read the cache") {
            let path = entry.expect("an entry of the cache").path();
            let meta = std::fs::metadata(&path).expect("stat");
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}: mode {mode:o}", path.display());
            let relative = path.strip_prefix(dir).expect("under the cache");
            files.push(relative.display().to_string());
        }
    }
    files.sort();
    files
}

/// What every test checks of a name just served: `GET /acme` shows that certificate and
/// no error, the expiry metric counts down from its end, and one `issued` event.
async fn check_issued(sluice: &SluiceProcess, name: &str, serial: &str) {
    let entry = acme_entry(sluice, name).await;
    assert_eq!(
        entry["serial"].as_str().map(normalized).as_deref(),
        Some(serial),
        "{entry}"
    );
    assert!(entry["last_error"].is_null(), "{entry}");
    let not_before = entry["not_before"].as_i64().expect("not_before");
    let not_after = entry["not_after"].as_i64().expect("not_after");
    assert!(not_before < not_after, "{entry}");
    assert!(
        entry["expires_in_seconds"]
            .as_i64()
            .is_some_and(|left| left > 0),
        "{entry}"
    );
    let expiry = [("server", "web"), ("name", name)];
    let left = metric(sluice, "sluice_tls_certificate_expiry_seconds", &expiry).await;
    assert!(left.is_some_and(|left| left > 0.0), "{name}: {left:?}");
    assert_eq!(events(sluice, name, "issued").await, 1, "{name}");
}

/// Sluice with names A and B proven by `challenge`: each served with a certificate of
/// its own, verified, shown by the API and counted as issued.
async fn both_names_served(acme: &Acme, challenge: &str) -> (SluiceProcess, TlsConnector) {
    let sluice = acme.sluice(challenge, &[A, B]).await;
    let client = acme.client().await;
    let a = acme.served_in_time(&sluice, A, &client).await;
    let b = acme.served_in_time(&sluice, B, &client).await;
    assert_ne!(a, b, "a certificate per name");
    check_issued(&sluice, A, &a).await;
    check_issued(&sluice, B, &b).await;
    (sluice, client)
}

#[tokio::test]
async fn tls_alpn_01_certificate_is_obtained_and_served() {
    let test = "tls_alpn_01_certificate_is_obtained_and_served";
    let Some(acme) = Acme::start(test, None).await else {
        return;
    };
    let (_sluice, client) = both_names_served(&acme, "tls-alpn-01").await;
    // A name of neither has nothing that verifies.
    assert!(served(acme.web, "c.sluice.test", &client).await.is_err());
}

#[tokio::test]
async fn http_01_certificate_is_obtained_and_served() {
    let test = "http_01_certificate_is_obtained_and_served";
    let Some(acme) = Acme::start(test, None).await else {
        return;
    };
    let _served = both_names_served(&acme, "http-01").await;
    // Pebble asked `http_bind`, which serves nothing but challenges.
    let log = acme.pebble.log();
    for name in [A, B] {
        let asked = format!(
            "validate w/ HTTP: http://{name}:{}/.well-known/acme-challenge/",
            acme.http.port()
        );
        assert!(log.contains(&asked), "{asked}:\n{log}");
    }
    for path in ["/", "/.well-known/acme-challenge/no-such-token"] {
        if let Ok(response) = http::try_request(acme.http, "GET", path, &[], None).await {
            assert_eq!(response.status, 404, "{path}: {}", response.body);
        }
    }
}

#[tokio::test]
async fn renewal_swaps_the_certificate_without_closing_a_stream() {
    let test = "renewal_swaps_the_certificate_without_closing_a_stream";
    let Some(acme) = Acme::start(test, None).await else {
        return;
    };
    let sluice = acme.sluice("tls-alpn-01", &[A]).await;
    let client = acme.client().await;
    let first = acme.served_in_time(&sluice, A, &client).await;

    let tcp = TcpStream::connect(acme.web).await.expect("connect");
    let tls = timeout(WAIT, client.connect(server_name(A), tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (r, w) = tokio::io::split(tls);
    let streamer = EchoStreamer::over(r, w, 7, 4096, Duration::from_millis(10));
    streamer.wait_echoed(64 * 1024).await;

    let renew = http::request(sluice.api(), "POST", "/acme/renew", &[], None).await;
    assert_eq!(renew.status, 200, "{}\n{}", renew.body, sluice.log());
    let answer = renew.json();
    assert_eq!(answer["renewed"], json!([A]), "{answer}");
    assert_eq!(answer["failed"], json!({}), "{answer}");

    let second = served(acme.web, A, &client)
        .await
        .expect("served once renewed");
    assert_ne!(second, first, "a new certificate once renewed");
    let entry = acme_entry(&sluice, A).await;
    assert_eq!(
        entry["serial"].as_str().map(normalized).as_deref(),
        Some(second.as_str()),
        "{entry}"
    );
    assert_eq!(events(&sluice, A, "renewed").await, 1);

    // The stream opened on the old certificate carries on, and every byte comes back.
    let echoed = streamer.echoed();
    streamer.wait_echoed(echoed + 64 * 1024).await;
    let verified = streamer
        .finish()
        .await
        .expect("every byte of the open stream echoed");
    assert!(verified > echoed, "{verified} <= {echoed}");
}

#[tokio::test]
async fn a_restart_reuses_the_cache_without_a_new_order() {
    let test = "a_restart_reuses_the_cache_without_a_new_order";
    let Some(mut acme) = Acme::start(test, None).await else {
        return;
    };
    let toml = acme.toml("tls-alpn-01", &[A]);
    let mut sluice = SluiceProcess::start(&toml).await;
    let client = acme.client().await;
    let first = acme.served_in_time(&sluice, A, &client).await;
    let cached = private_files(acme.cache.path());
    assert!(cached.iter().any(|file| file.starts_with(A)), "{cached:?}");
    sluice.signal("TERM");
    let status = sluice.exit(WAIT).await;
    assert!(status.success(), "{status}:\n{}", sluice.log());
    drop(sluice);

    // No ACME server from here on: whatever is served comes from the cache.
    acme.pebble.stop();
    let sluice = SluiceProcess::start(&toml).await;
    let again = acme.served_in_time(&sluice, A, &client).await;
    assert_eq!(again, first, "the cached certificate");
    assert_eq!(events(&sluice, A, "cached").await, 1);
    assert_eq!(events(&sluice, A, "issued").await, 0);
    let entry = acme_entry(&sluice, A).await;
    assert!(entry["last_error"].is_null(), "{entry}");
    assert_eq!(
        entry["serial"].as_str().map(normalized).as_deref(),
        Some(first.as_str()),
        "{entry}"
    );
}

#[tokio::test]
async fn a_failing_acme_server_leaves_the_old_certificate_serving() {
    let test = "a_failing_acme_server_leaves_the_old_certificate_serving";
    let Some(mut acme) = Acme::start(test, None).await else {
        return;
    };
    let sluice = acme.sluice("tls-alpn-01", &[A]).await;
    let client = acme.client().await;
    let first = acme.served_in_time(&sluice, A, &client).await;
    let before = acme_entry(&sluice, A).await;

    acme.pebble.stop();
    let path = format!("/acme/renew?name={A}");
    let renew = http::request(sluice.api(), "POST", &path, &[], None).await;
    assert_eq!(renew.status, 502, "{}", renew.body);
    let answer = renew.json();
    assert_eq!(answer["renewed"], json!([]), "{answer}");
    assert!(
        answer["failed"][A].as_str().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );

    let unknown = http::request(
        sluice.api(),
        "POST",
        "/acme/renew?name=c.sluice.test",
        &[],
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    let still = served(acme.web, A, &client)
        .await
        .expect("served while the ACME server is gone");
    assert_eq!(still, first, "the old certificate");
    assert!(events(&sluice, A, "failed").await >= 1);
    let entry = acme_entry(&sluice, A).await;
    assert!(
        entry["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{entry}"
    );
    assert_eq!(entry["serial"], before["serial"], "{entry}");
    assert_eq!(entry["not_after"], before["not_after"], "{entry}");
}

/// Pebble's `certificateValidityPeriod` here: its certificates last 29 s (notAfter is
/// notBefore + 30 s - 1 s), so Sluice renews each some 19 s after it was issued.
const SHORT_LIFETIME: Duration = Duration::from_secs(30);

#[tokio::test]
async fn short_lived_certificates_renew_by_themselves() {
    let test = "short_lived_certificates_renew_by_themselves";
    let Some(acme) = Acme::start(test, Some(SHORT_LIFETIME)).await else {
        return;
    };
    let sluice = acme.sluice("tls-alpn-01", &[A]).await;
    let client = acme.client().await;
    let first = acme.served_in_time(&sluice, A, &client).await;
    let entry = acme_entry(&sluice, A).await;
    let not_before = entry["not_before"].as_i64().expect("not_before");
    let not_after = entry["not_after"].as_i64().expect("not_after");
    assert!(
        not_after - not_before < 30,
        "Pebble's short lifetime: {entry}"
    );

    // Renewed some 19 s after it was issued; a failed attempt is retried within half the
    // time left, so even then the new one serves before the old one expires.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match served(acme.web, A, &client).await {
            Ok(serial) if serial != first => break,
            outcome if Instant::now() >= deadline => panic!(
                "no renewed certificate served within 40 s (last: {outcome:?}); {}\n\
                 --- sluice\n{}\n--- pebble\n{}",
                acme_entry(&sluice, A).await,
                sluice.log(),
                acme.pebble.log()
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(events(&sluice, A, "renewed").await >= 1);
    assert_eq!(events(&sluice, A, "issued").await, 1);
    let entry = acme_entry(&sluice, A).await;
    assert!(entry["last_error"].is_null(), "{entry}");
}

/// The name a TLS session to `addr` asked for, verified by `client`: the greeting of the
/// backend it reached.
async fn greeted_by(addr: SocketAddr, name: &str, client: &TlsConnector) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = timeout(WAIT, client.connect(server_name(name), tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let mut greeting = Vec::new();
    while !greeting.ends_with(b"\n") && greeting.len() < 64 {
        let byte = timeout(WAIT, tls.read_u8())
            .await
            .map_err(|_| "greeting timed out".to_owned())?
            .map_err(|e| format!("greeting: {e}"))?;
        greeting.push(byte);
    }
    Ok(String::from_utf8_lossy(&greeting).trim_end().to_owned())
}

#[tokio::test]
async fn acme_hosts_with_sni_send_each_name_to_its_backends() {
    let test = "acme_hosts_with_sni_send_each_name_to_its_backends";
    let Some(acme) = Acme::start(test, None).await else {
        return;
    };
    let (for_a, for_b) = (
        TestBackend::named("for-a").await,
        TestBackend::named("for-b").await,
    );
    let toml = acme.toml("tls-alpn-01", &[A, B]).replace(
        &format!("static_list = [\"{}\"]", acme.backend.addr),
        &format!(
            "static_list = [\"{} sni={A}\", \"{} sni={B}\"]\n\n  \
             [servers.web.sni]\n  unexpected_hostname_strategy = \"reject\"",
            for_a.addr, for_b.addr
        ),
    );
    let sluice = SluiceProcess::start(&toml).await;
    let client = acme.client().await;
    for (name, backend) in [(A, "for-a"), (B, "for-b")] {
        let deadline = Instant::now() + ISSUE_WAIT;
        loop {
            match greeted_by(acme.web, name, &client).await {
                Ok(greeting) => {
                    assert_eq!(greeting, backend, "{name} goes to its own backend");
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "{name} not served within {ISSUE_WAIT:?}: {e}\n{}",
                        sluice.log()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    // Each name, several times, always to its own backend.
    for _ in 0..5 {
        assert_eq!(
            greeted_by(acme.web, A, &client).await.as_deref(),
            Ok("for-a")
        );
        assert_eq!(
            greeted_by(acme.web, B, &client).await.as_deref(),
            Ok("for-b")
        );
    }
}
