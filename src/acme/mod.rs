//! Certificates from an ACME server (RFC 8555) for the `acme_hosts` of TLS servers,
//! obtained at start and renewed before they expire, without a restart or a dropped
//! connection.
//!
//! One task per name keeps its certificate: at start it takes the cached one if it is
//! still valid, orders one otherwise, then sleeps until two thirds of the certificate's
//! lifetime have passed and renews it; a failure is retried with a growing back-off
//! while the previous certificate (if any) goes on serving. A new certificate is put in
//! the runtime's [`Obtained`] store, which every TLS server's resolver reads on each
//! handshake, and written to the cache. The API can renew at once ([`Acme::renew`]).
//! Until a name has its first certificate its server listens (TLS-ALPN-01 needs the
//! listener up) and a handshake asking for it falls back to the server's files, or
//! fails when it has none.
//!
//! - `order`: one order, its challenge answered and withdrawn;
//! - `schedule`: when a name is ordered next (its renewal point, the back-off after a
//!   failure, bounded by the serving certificate's expiry);
//! - `responder`: the HTTP-01 responder on `http_bind`;
//! - `account`: the ACME account, from the cache or made (and cached);
//! - `cache`: the cache directory's files (the account and each name's certificate).

mod account;
mod cache;
mod order;
mod responder;
mod schedule;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use instant_acme::Account;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{AcmeChallenge, AcmeConfig, Config};
use crate::tls::obtained::{certified_key, Obtained};

use schedule::{unix_now, State};

/// The longest one order may take, validation and issuance included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// What happened to a name's certificate, counted per name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Its first certificate was obtained.
    Issued,
    /// A certificate replaced an earlier one.
    Renewed,
    /// An order failed.
    Failed,
    /// A certificate was taken from the cache at start.
    Cached,
}

impl Event {
    pub const ALL: [Event; 4] = [Event::Issued, Event::Renewed, Event::Failed, Event::Cached];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Issued => "issued",
            Event::Renewed => "renewed",
            Event::Failed => "failed",
            Event::Cached => "cached",
        }
    }
}

/// A name's certificate as the API and metrics show it.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateStatus {
    pub server: String,
    pub name: String,
    /// Validity, in seconds since the Unix epoch; `None` until it has a certificate.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub expires_in_seconds: Option<i64>,
    /// The certificate's serial number, in hexadecimal.
    pub serial: Option<String>,
    /// Why the last order failed, until one succeeds.
    pub last_error: Option<String>,
    /// Events by [`Event::as_str`].
    pub events: BTreeMap<&'static str, u64>,
}

/// The certificates of `acme_hosts`, kept by one task per name.
pub struct Acme {
    config: ArcSwapOption<AcmeConfig>,
    obtained: Arc<Obtained>,
    tokens: order::Tokens,
    /// Each name followed, by name.
    names: Mutex<BTreeMap<String, Arc<Name>>>,
    /// The account, made (or read from the cache) at the first order.
    account: tokio::sync::Mutex<Option<Account>>,
    /// The HTTP-01 responder's stop, and where it listens.
    responder: Mutex<Option<(String, CancellationToken)>>,
    /// Cancelled at shutdown: every task here ends.
    stop: CancellationToken,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("names", &lock(&self.names).len())
            .finish()
    }
}

/// One name and its certificate.
struct Name {
    name: String,
    server: String,
    state: Mutex<State>,
    /// Held while ordering, so the task and the API never order the same name at once.
    ordering: tokio::sync::Mutex<()>,
    /// Wakes the name's task to look again when its next renewal is (after the API
    /// renewed it).
    wake: Notify,
    stop: CancellationToken,
    events: [AtomicU64; 4],
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Name {
    fn count(&self, event: Event) {
        self.events[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// When its task should order next.
    fn next_order(&self) -> Instant {
        lock(&self.state).next_order()
    }
}

impl Acme {
    /// The certificates of `config`'s servers (none until [`Acme::apply`]); every task
    /// ends when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Arc<Acme> {
        // The ACME client's HTTPS (hyper-rustls) takes the process's default provider;
        // ring is the one everything here uses. Already set (by a test): kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(Acme {
            config: ArcSwapOption::empty(),
            obtained: Arc::new(Obtained::default()),
            tokens: Arc::default(),
            names: Mutex::new(BTreeMap::new()),
            account: tokio::sync::Mutex::new(None),
            responder: Mutex::new(None),
            stop,
        })
    }

    /// The certificates obtained, which TLS servers serve from.
    pub fn obtained(&self) -> &Arc<Obtained> {
        &self.obtained
    }

    /// Follows `config`: its `[acme]` settings, and the `acme_hosts` of each of its
    /// servers. A name no longer listed stops being renewed and served; a new one is
    /// taken from the cache now (so the server serves it from its first client) and
    /// ordered if it has no valid certificate there.
    pub async fn apply(self: &Arc<Self>, config: &Config) {
        let before = self.config.load_full();
        if before.as_deref() != config.acme.as_ref() {
            let account_changed = before.as_ref().is_none_or(|b| {
                config.acme.as_ref().is_none_or(|a| {
                    (&a.directory_url, &a.email, &a.ca_path, &a.cache_dir)
                        != (&b.directory_url, &b.email, &b.ca_path, &b.cache_dir)
                })
            });
            if account_changed {
                *self.account.lock().await = None;
            }
            self.config.store(config.acme.clone().map(Arc::new));
            self.follow_responder(config.acme.as_ref()).await;
        }
        let wanted: Vec<(&str, &str)> = match &config.acme {
            None => Vec::new(),
            Some(_) => config
                .servers
                .iter()
                .filter_map(|(server, settings)| Some((server, settings.tls.as_ref()?)))
                .flat_map(|(server, tls)| {
                    tls.acme_hosts
                        .iter()
                        .map(move |name| (server.as_str(), name.as_str()))
                })
                .collect(),
        };
        let mut started = Vec::new();
        {
            let mut names = lock(&self.names);
            names.retain(|name, followed| {
                let kept = wanted.contains(&(followed.server.as_str(), name.as_str()));
                if !kept {
                    followed.stop.cancel();
                    self.obtained.remove_certificate(name);
                    info!(server = %followed.server, name, "ACME name no longer listed");
                }
                kept
            });
            for &(server, name) in &wanted {
                if names.contains_key(name) {
                    continue;
                }
                let followed = Arc::new(Name {
                    name: name.to_owned(),
                    server: server.to_owned(),
                    state: Mutex::new(State::default()),
                    ordering: tokio::sync::Mutex::new(()),
                    wake: Notify::new(),
                    stop: self.stop.child_token(),
                    events: Default::default(),
                });
                names.insert(name.to_owned(), Arc::clone(&followed));
                started.push(followed);
            }
        }
        // A change of directory or challenge applies to the next order of each name;
        // their tasks look again.
        if before.as_deref() != config.acme.as_ref() {
            for followed in lock(&self.names).values() {
                followed.wake.notify_one();
            }
        }
        for followed in started {
            self.take_cached(&followed);
            tokio::spawn(Arc::clone(self).keep(followed));
        }
    }

    /// Every name's certificate, by server and name.
    pub fn status(&self) -> Vec<CertificateStatus> {
        let names: Vec<Arc<Name>> = lock(&self.names).values().cloned().collect();
        let now = unix_now();
        let mut all: Vec<CertificateStatus> = names
            .iter()
            .map(|followed| {
                let state = lock(&followed.state);
                CertificateStatus {
                    server: followed.server.clone(),
                    name: followed.name.clone(),
                    not_before: state.validity.map(|(before, _)| before),
                    not_after: state.validity.map(|(_, after)| after),
                    expires_in_seconds: state.validity.map(|(_, after)| after - now),
                    serial: state.serial.clone(),
                    last_error: state.last_error.clone(),
                    events: Event::ALL
                        .iter()
                        .map(|e| {
                            (
                                e.as_str(),
                                followed.events[*e as usize].load(Ordering::Relaxed),
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.server, &a.name).cmp(&(&b.server, &b.name)));
        all
    }

    /// Whether `name` is one of the `acme_hosts` followed.
    pub fn follows(&self, name: &str) -> bool {
        lock(&self.names).contains_key(&name.to_ascii_lowercase())
    }

    /// Orders a new certificate now for `name` (every name when `None`); answers once
    /// done, with the names renewed and why the others failed. An unknown name fails.
    pub async fn renew(&self, name: Option<&str>) -> (Vec<String>, BTreeMap<String, String>) {
        let chosen: Vec<Arc<Name>> = {
            let names = lock(&self.names);
            match name {
                Some(name) => names
                    .get(&name.to_ascii_lowercase())
                    .cloned()
                    .into_iter()
                    .collect(),
                None => names.values().cloned().collect(),
            }
        };
        let (mut renewed, mut failed) = (Vec::new(), BTreeMap::new());
        if let (Some(name), true) = (name, chosen.is_empty()) {
            failed.insert(name.to_owned(), "not one of the acme_hosts".to_owned());
        }
        for followed in chosen {
            match self.order(&followed).await {
                Ok(()) => renewed.push(followed.name.clone()),
                Err(e) => {
                    failed.insert(followed.name.clone(), e);
                }
            }
            followed.wake.notify_one();
        }
        (renewed, failed)
    }

    /// Keeps `followed`'s certificate until its stop: orders when due, retries after a
    /// failure, looks again when woken.
    async fn keep(self: Arc<Self>, followed: Arc<Name>) {
        loop {
            let next = followed.next_order();
            tokio::select! {
                biased;
                () = followed.stop.cancelled() => return,
                () = followed.wake.notified() => continue,
                () = tokio::time::sleep_until(next) => {}
            }
            if self.config.load().is_none() {
                return;
            }
            let _ = self.order(&followed).await;
        }
    }

    /// Takes `followed`'s certificate from the cache if one is there and has not
    /// expired (one due for renewal serves until it is renewed).
    fn take_cached(&self, followed: &Name) {
        let Some(config) = self.config.load_full() else {
            return;
        };
        let path = cache::certificate_path(&config.cache_dir, &followed.name);
        let text = match cache::read(&path) {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => {
                warn!(name = %followed.name, path = %path.display(), error = %e, "cannot read the cached certificate; ordering a new one");
                return;
            }
        };
        let Some((chain, key)) = cache::split(&text) else {
            warn!(name = %followed.name, path = %path.display(), "the cached certificate is incomplete; ordering a new one");
            return;
        };
        match self.install(followed, &chain, &key) {
            Ok((_, not_after)) if not_after > unix_now() => {
                followed.count(Event::Cached);
                let days = (not_after - unix_now()) / 86_400;
                info!(server = %followed.server, name = %followed.name, expires_in_days = days, "ACME certificate taken from the cache");
            }
            Ok(_) => {
                // Expired: not served; the task orders a new one at once.
                self.obtained.remove_certificate(&followed.name);
                lock(&followed.state).validity = None;
                info!(name = %followed.name, "the cached certificate has expired; ordering a new one");
            }
            Err(e) => {
                warn!(name = %followed.name, path = %path.display(), error = %e, "cannot use the cached certificate; ordering a new one");
            }
        }
    }

    /// Serves `chain` and `key` for `followed` and records their validity.
    fn install(&self, followed: &Name, chain: &str, key: &str) -> Result<(i64, i64), String> {
        let certified = certified_key(chain, key)?;
        let leaf = certified
            .end_entity_cert()
            .map_err(|e| format!("certificate: {e}"))?;
        let validity = crate::tls::cert::validity(leaf)
            .ok_or_else(|| "certificate: its validity cannot be read".to_owned())?;
        let serial = crate::tls::cert::serial(leaf).map(hex);
        self.obtained
            .set_certificate(&followed.name, Arc::new(certified));
        let mut state = lock(&followed.state);
        state.validity = Some(validity);
        state.serial = serial;
        Ok(validity)
    }

    /// Orders a certificate for `followed` now (after any order of it in progress);
    /// on success it is served and cached, on failure the previous one stays and the
    /// next attempt is set after a back-off.
    async fn order(&self, followed: &Name) -> Result<(), String> {
        let _ordering = followed.ordering.lock().await;
        let Some(config) = self.config.load_full() else {
            return Err("no [acme] section".to_owned());
        };
        let had = lock(&followed.state).validity.is_some();
        let result = tokio::time::timeout(ORDER_TIMEOUT, self.obtain(&config, followed)).await;
        let result =
            result.unwrap_or_else(|_| Err(format!("no certificate within {ORDER_TIMEOUT:?}")));
        match result {
            Ok((not_before, not_after)) => {
                lock(&followed.state).succeeded();
                followed.count(if had { Event::Renewed } else { Event::Issued });
                let lifetime_days = (not_after - not_before) / 86_400;
                let expires_in = humantime::format_duration(Duration::from_secs(
                    u64::try_from(not_after - unix_now()).unwrap_or(0),
                ));
                info!(
                    server = %followed.server,
                    name = %followed.name,
                    lifetime_days,
                    %expires_in,
                    "{}",
                    if had { "ACME certificate renewed" } else { "ACME certificate issued" }
                );
                Ok(())
            }
            Err(e) => {
                let retry_in = lock(&followed.state).failed(e.clone());
                followed.count(Event::Failed);
                let serving = if had {
                    "the previous certificate serves on"
                } else {
                    "no certificate yet"
                };
                warn!(
                    server = %followed.server,
                    name = %followed.name,
                    error = %e,
                    retry_in = %humantime::format_duration(retry_in),
                    "ACME order failed; {serving}"
                );
                Err(e)
            }
        }
    }

    /// One order, its certificate served and cached; its validity.
    async fn obtain(&self, config: &AcmeConfig, followed: &Name) -> Result<(i64, i64), String> {
        let account = self.account(config).await?;
        let answers = order::Answers {
            tokens: &self.tokens,
            obtained: &self.obtained,
        };
        let issued = order::obtain(&account, &followed.name, config.challenge, &answers).await?;
        let validity = self.install(followed, &issued.chain_pem, &issued.key_pem)?;
        let path = cache::certificate_path(&config.cache_dir, &followed.name);
        let text = format!("{}{}", issued.key_pem, issued.chain_pem);
        if let Err(e) = cache::write_private(&path, text.as_bytes()) {
            // Served all the same; only a restart would need to order again.
            error!(name = %followed.name, path = %path.display(), error = %e, "cannot cache the ACME certificate");
        }
        Ok(validity)
    }

    /// The account: the one made already, else the cached or a new one
    /// ([`account::open`]).
    async fn account(&self, config: &AcmeConfig) -> Result<Account, String> {
        let mut account = self.account.lock().await;
        if let Some(account) = &*account {
            return Ok(account.clone());
        }
        let made = account::open(config).await?;
        *account = Some(made.clone());
        Ok(made)
    }

    /// Starts, moves or stops the HTTP-01 responder as `config` asks.
    async fn follow_responder(&self, config: Option<&AcmeConfig>) {
        let wanted = config
            .filter(|c| c.challenge == AcmeChallenge::Http01)
            .map(|c| c.http_bind.to_string());
        {
            let mut running = lock(&self.responder);
            if running.as_ref().map(|(bind, _)| bind) == wanted.as_ref() {
                return;
            }
            if let Some((_, stop)) = running.take() {
                stop.cancel();
            }
        }
        let Some(bind) = wanted else { return };
        match tokio::net::TcpListener::bind(&bind).await {
            Ok(listener) => {
                let stop = self.stop.child_token();
                tokio::spawn(responder::serve(
                    listener,
                    Arc::clone(&self.tokens),
                    stop.clone(),
                ));
                *lock(&self.responder) = Some((bind, stop));
            }
            Err(e) => {
                error!(bind, error = %e, "cannot listen for ACME HTTP-01 challenges; orders will fail");
            }
        }
    }
}

/// Bytes as lower-case hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_written_in_hex() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
    }
}
