//! A configuration kept in etcd (`sluice from-etcd ENDPOINTS --key PREFIX`), shared by a
//! fleet of nodes.
//!
//! Under the prefix, `PREFIX/config` is the configuration every node runs, and
//! `PREFIX/nodes/NAME`, when present, holds one node's own `[bgp]`, `[api]` and
//! `[metrics]` (its router id and neighbours differ from its peers'), which replace the
//! shared ones on that node. Both are read in one request, at one store revision.
//!
//! Every node watches the prefix and reloads when either of its keys changes. An API
//! edit is written back to `PREFIX/config` (as Sluice's TOML, the node's own sections
//! left out) only if that key has not changed since the configuration running here was
//! read from it, so two nodes' edits never overwrite each other. A node that cannot reach
//! etcd keeps running what it has, says so (its log, and `configStore` in the API's
//! `GET /`), and follows etcd again once it answers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::dump::{self, Secrets};
use crate::config::{
    self, ApiConfig, BgpConfig, Config, ConfigError, ConfigErrors, EtcdParams, Format, Loaded,
    MetricsConfig, Requested,
};
use crate::discovery::etcd::client::{Client, Entry, KeyRange, Listing, Woken, Written};
use crate::discovery::DiscoveryError;

/// The key under the prefix holding the shared configuration.
const SHARED: &str = "config";
/// The folder under the prefix holding each node's own sections.
const NODES: &str = "nodes/";

/// Why an edit could not be written to etcd.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the configuration in etcd changed since this node read it (another node's edit, \
         or a new configuration): nothing was changed; try again once it is applied"
    )]
    Changed,
    #[error("etcd cannot be reached, so nothing was changed: {0}")]
    Unreachable(String),
    #[error("cannot write the configuration: {0}")]
    Write(String),
}

/// The modification revisions of the two keys a node runs (0: no such key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Revisions {
    shared: i64,
    node: i64,
}

/// The shared configuration's own node sections, written back in place of this node's.
#[derive(Clone, Debug, Default)]
struct SharedSections {
    bgp: Option<BgpConfig>,
    api: Option<ApiConfig>,
    metrics: Option<MetricsConfig>,
}

#[derive(Debug)]
struct State {
    /// Of the last read.
    read: Revisions,
    /// Of the configuration running (what an edit is based on).
    running: Revisions,
    /// The store revision watched from: that of the last listing.
    watched: Option<i64>,
    shared: SharedSections,
    reachable: bool,
    /// When `reachable` last changed.
    since: SystemTime,
    last_error: Option<String>,
}

/// What `GET /` says about the store.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node: Option<String>,
    pub reachable: bool,
    /// Since when it has been (un)reachable, RFC 3339.
    pub since: String,
    pub last_error: Option<String>,
    /// The modification revision of `PREFIX/config` running here.
    pub revision: i64,
}

/// The configuration's place in etcd, and what this node last read from it.
#[derive(Debug)]
pub struct EtcdStore {
    /// Reads and writes.
    client: tokio::sync::Mutex<Client>,
    /// The watch, which waits: on a client of its own so writes never wait behind it.
    watcher: tokio::sync::Mutex<Client>,
    endpoints: Vec<String>,
    /// Ends with `/`.
    prefix: String,
    node: Option<String>,
    range: KeyRange,
    format: Option<Requested>,
    state: Mutex<State>,
}

impl EtcdStore {
    /// The store at `params`' endpoints (with their credentials and TLS files), under
    /// `params.prefix`, for the node named `node`.
    pub fn new(
        mut params: EtcdParams,
        node: Option<String>,
        format: Option<Requested>,
    ) -> Result<EtcdStore, DiscoveryError> {
        if !params.prefix.ends_with('/') {
            params.prefix.push('/');
        }
        if params.timeout.is_zero() {
            params.timeout = config::registries::ETCD_DEFAULT_TIMEOUT;
        }
        Ok(EtcdStore {
            client: tokio::sync::Mutex::new(Client::new(&params)?),
            watcher: tokio::sync::Mutex::new(Client::new(&params)?),
            endpoints: params.endpoints.iter().map(ToString::to_string).collect(),
            range: KeyRange::prefix(&params.prefix),
            prefix: params.prefix,
            node: node.filter(|n| !n.is_empty()),
            format,
            state: Mutex::new(State {
                read: Revisions::default(),
                running: Revisions::default(),
                watched: None,
                shared: SharedSections::default(),
                reachable: true,
                since: SystemTime::now(),
                last_error: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn shared_key(&self) -> String {
        format!("{}{SHARED}", self.prefix)
    }

    fn node_key(&self) -> Option<String> {
        self.node
            .as_ref()
            .map(|node| format!("{}{NODES}{node}", self.prefix))
    }

    /// How errors name a key: `etcd:KEY`.
    fn named(key: &str) -> PathBuf {
        PathBuf::from(format!("etcd:{key}"))
    }

    /// Reads the configuration this node runs, checked as a file is: the shared one with
    /// this node's own sections in place.
    pub async fn read(&self) -> Result<Loaded, ConfigErrors> {
        let listing = self.list().await.map_err(|e| {
            error_at(
                &Self::named(&self.shared_key()),
                format!("cannot read the configuration from etcd: {e}"),
            )
        })?;
        let shared_key = self.shared_key();
        let node_key = self.node_key();
        let find = |key: &str| listing.entries.iter().find(|e| e.key == key);
        let Some(shared) = find(&shared_key) else {
            let message = format!(
                "etcd has no key {shared_key}: put the configuration there \
                 (etcdctl put {shared_key} < sluice.toml)"
            );
            return Err(error_at(&Self::named(&shared_key), message));
        };
        let node = node_key.as_deref().and_then(find);
        // Seen, even if it cannot be run: the watch waits for the next change.
        self.state().read = Revisions {
            shared: shared.mod_revision,
            node: node.map_or(0, |n| n.mod_revision),
        };
        let mut loaded = self.parse(shared)?;
        let sections = SharedSections {
            bgp: loaded.config.bgp.clone(),
            api: loaded.config.api.clone(),
            metrics: loaded.config.metrics.clone(),
        };
        if let Some(node) = node {
            let own = self.parse(node)?;
            own_sections_only(&own.config, &Self::named(&node.key))?;
            let config = &mut loaded.config;
            if own.config.bgp.is_some() {
                config.bgp = own.config.bgp;
            }
            if own.config.api.is_some() {
                config.api = own.config.api;
            }
            if own.config.metrics.is_some() {
                config.metrics = own.config.metrics;
            }
            // A node's key has no servers by design: the reader's warning about it is moot.
            let about_servers = |w: &config::Warning| w.message.starts_with("servers: ");
            loaded
                .warnings
                .extend(own.warnings.into_iter().filter(|w| !about_servers(w)));
        }
        // The parts together, as a file is checked whole.
        let named = Self::named(node.map_or(&shared.key, |node| &node.key));
        config::validate(&loaded.config, &named)?;
        self.state().shared = sections;
        Ok(loaded)
    }

    /// One key's value read as a part of a configuration (the rules between sections are
    /// checked once the parts are together), in the format asked for or told by its
    /// shape.
    fn parse(&self, entry: &Entry) -> Result<Loaded, ConfigErrors> {
        let format = match self.format {
            Some(requested) => requested.format(&entry.value),
            None => Format::detect(Path::new(""), &entry.value),
        };
        config::read_part(&entry.value, &Self::named(&entry.key), None, format)
    }

    /// Lists the prefix, noting whether etcd answered.
    async fn list(&self) -> Result<Listing, DiscoveryError> {
        let listed = self.client.lock().await.range(&self.range).await;
        match &listed {
            Ok(listing) => {
                self.answered();
                let mut state = self.state();
                state.watched = Some(state.watched.unwrap_or(0).max(listing.revision));
            }
            Err(e) => self.lost(e),
        }
        listed
    }

    /// The configuration last read now runs.
    pub fn mark_running(&self) {
        let mut state = self.state();
        state.running = state.read;
    }

    /// Whether what was last read is what runs (nothing to apply).
    pub fn read_is_running(&self) -> bool {
        let state = self.state();
        state.read == state.running
    }

    /// Writes `config` (an edit of the one running) to `PREFIX/config` if that key has
    /// not changed since the running configuration was read from it; this node's own
    /// sections are left out (the shared ones written instead).
    pub async fn write(&self, config: &Config) -> Result<(), StoreError> {
        if self
            .format
            .is_some_and(|f| f != Requested::Exactly(Format::Toml))
        {
            return Err(StoreError::Write(
                "an edit is written back as Sluice's TOML, and this node reads etcd in \
                 another format (--format): run it without --format"
                    .into(),
            ));
        }
        let (running, sections) = {
            let state = self.state();
            (state.running, state.shared.clone())
        };
        let mut shared = config.clone();
        shared.bgp = sections.bgp;
        shared.api = sections.api;
        shared.metrics = sections.metrics;
        let text =
            dump::to_toml(&shared, Secrets::Keep).map_err(|e| StoreError::Write(e.to_string()))?;
        let key = self.shared_key();
        let written = self
            .client
            .lock()
            .await
            .put_if_unchanged(&key, &text, running.shared)
            .await;
        match written {
            Ok(Written::At(revision)) => {
                self.answered();
                let mut state = self.state();
                state.running.shared = revision;
                state.read = state.running;
                info!(key, revision, "configuration written to etcd");
                Ok(())
            }
            Ok(Written::Changed) => {
                self.answered();
                Err(StoreError::Changed)
            }
            Err(e) => {
                self.lost(&e);
                Err(StoreError::Unreachable(e.to_string()))
            }
        }
    }

    /// Waits up to `wait` for a change under the prefix; `Ok(true)` when there may be one
    /// to read. After a change or while etcd is unreachable, the prefix is listed first,
    /// and whether this node's keys differ from those last read says if something
    /// changed meanwhile.
    pub async fn wait_for_change(&self, wait: Duration) -> Result<bool, DiscoveryError> {
        let (reachable, watched, seen) = {
            let state = self.state();
            (state.reachable, state.watched, state.read)
        };
        let watched = match (reachable, watched) {
            (true, Some(watched)) => watched,
            _ => {
                let listing = self.list().await?;
                if self.revisions_in(&listing) != seen {
                    return Ok(true);
                }
                listing.revision
            }
        };
        let over = Instant::now() + wait;
        let woken = self
            .watcher
            .lock()
            .await
            .watch(&self.range, watched, over)
            .await;
        match woken {
            Ok(Woken::WaitOver) => Ok(false),
            Ok(Woken::Changed | Woken::Compacted) => {
                // Watch again from what the reload lists, not from here.
                self.state().watched = None;
                Ok(true)
            }
            Err(e) => {
                self.lost(&e);
                Err(e)
            }
        }
    }

    fn revisions_in(&self, listing: &Listing) -> Revisions {
        let revision = |key: Option<String>| {
            key.and_then(|key| listing.entries.iter().find(|e| e.key == key))
                .map_or(0, |e| e.mod_revision)
        };
        Revisions {
            shared: revision(Some(self.shared_key())),
            node: revision(self.node_key()),
        }
    }

    fn answered(&self) {
        let mut state = self.state();
        state.last_error = None;
        if !state.reachable {
            state.reachable = true;
            state.since = SystemTime::now();
            info!(prefix = %self.prefix, "etcd answers again: following its configuration");
        }
    }

    fn lost(&self, error: &DiscoveryError) {
        let mut state = self.state();
        state.last_error = Some(error.to_string());
        if state.reachable {
            state.reachable = false;
            state.since = SystemTime::now();
            state.watched = None;
            warn!(
                prefix = %self.prefix,
                %error,
                "etcd cannot be reached: keeping the running configuration until it answers"
            );
        }
    }

    /// Why etcd is taken to be unreachable (its last error), when it did not answer the
    /// last request.
    pub fn unreachable(&self) -> Option<String> {
        let state = self.state();
        match state.reachable {
            true => None,
            false => Some(state.last_error.clone().unwrap_or_default()),
        }
    }

    pub fn status(&self) -> StoreStatus {
        let state = self.state();
        StoreStatus {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            node: self.node.clone(),
            reachable: state.reachable,
            since: humantime::format_rfc3339_seconds(state.since).to_string(),
            last_error: state.last_error.clone(),
            revision: state.running.shared,
        }
    }
}

impl std::fmt::Display for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd {} {}", self.endpoints.join(","), self.prefix)
    }
}

/// A node's key may set only the sections that differ between nodes.
fn own_sections_only(own: &Config, named: &Path) -> Result<(), ConfigErrors> {
    let default = Config::default();
    let mut found = Vec::new();
    if !own.servers.is_empty() {
        found.push("servers");
    }
    if own.acme.is_some() {
        found.push("[acme]");
    }
    if own.logging != default.logging {
        found.push("[logging]");
    }
    if own.shutdown_timeout != default.shutdown_timeout {
        found.push("shutdown_timeout");
    }
    if found.is_empty() {
        return Ok(());
    }
    let message = format!(
        "a node's key sets only [bgp], [api] and [metrics]; {} belong in the shared \
         configuration",
        found.join(", ")
    );
    Err(error_at(named, message))
}

fn error_at(path: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message,
    }])
}
