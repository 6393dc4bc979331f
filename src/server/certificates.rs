//! A TLS server's certificates and keys: the one task that loads them.
//!
//! Every load goes through the server's certificate task: the first one when the server
//! starts, one for each settings change, one for each explicit reload (`SIGHUP`,
//! `POST /reload`), and one whenever a file changes under it (size or modification
//! time, looked at every [`POLL`]), so a renewed certificate is served without a reload.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::ServerConfig;
use crate::proxy::state::ServerShared;
use crate::tasks::Tasks;

/// How often the certificate and key files of TLS servers are looked at.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks the certificate task to load the files of these settings, and says when it has.
type Request = (Arc<ServerConfig>, oneshot::Sender<()>);

/// The way to a server's certificate task.
pub(super) struct Certificates {
    requests: mpsc::Sender<Request>,
}

impl Certificates {
    /// Starts the certificate task of `shared` on `tasks` (until `stop`), and returns
    /// once it has loaded the files of `settings`.
    pub(super) async fn start(
        shared: Arc<ServerShared>,
        settings: Arc<ServerConfig>,
        tasks: &Tasks,
        stop: &CancellationToken,
    ) -> Self {
        let (requests, asked) = mpsc::channel(1);
        tasks.spawn(stop, watch(shared, asked));
        let certificates = Certificates { requests };
        certificates.load(settings).await;
        certificates
    }

    /// Loads the files of `settings` into new TLS configurations and waits until they
    /// are in place (a file that cannot be loaded keeps the current configuration).
    /// Does nothing once the server is stopping.
    pub(super) async fn load(&self, settings: Arc<ServerConfig>) {
        let (done, loaded) = oneshot::channel();
        if self.requests.send((settings, done)).await.is_ok() {
            let _ = loaded.await;
        }
    }
}

/// Loads what it is asked to, and loads a server's certificates again when one of its
/// files changes. A server without TLS files costs one settings load per poll.
async fn watch(shared: Arc<ServerShared>, mut asked: mpsc::Receiver<Request>) {
    let mut last = files_state(&shared.settings.load());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = asked.recv() => {
                let Some((settings, done)) = request else { return };
                shared.load_tls(&settings);
                let _ = done.send(());
            }
            _ = tick.tick() => {
                let settings = shared.settings.load_full();
                let now = files_state(&settings);
                if now != last {
                    if !now.is_empty() && !last.is_empty() {
                        info!(server = %shared.name, "TLS files changed; loading them again");
                        shared.load_tls(&settings);
                    }
                    last = now;
                }
            }
        }
    }
}

/// Each TLS file of `settings` with its size and modification time (`None` when it
/// cannot be read).
fn files_state(
    settings: &ServerConfig,
) -> Vec<(std::path::PathBuf, Option<(std::time::SystemTime, u64)>)> {
    let mut paths = Vec::new();
    if let Some(tls) = &settings.tls {
        for files in &tls.certificates {
            paths.push(files.cert_path.clone());
            paths.push(files.key_path.clone());
        }
        paths.extend(tls.client_ca_path.clone());
    }
    if let Some(backends) = &settings.backends_tls {
        paths.extend(backends.root_ca_cert_path.clone());
        if let Some(files) = &backends.identity {
            paths.push(files.cert_path.clone());
            paths.push(files.key_path.clone());
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let state = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path, state)
        })
        .collect()
}
