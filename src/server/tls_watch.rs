//! A TLS server's certificates and keys loaded again when their files change.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::ServerConfig;
use crate::proxy::state::ServerShared;

/// How often the certificate and key files of TLS servers are looked at.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Loads a TLS server's certificates again when one of its files changes (size or
/// modification time), so a renewed certificate is served without a reload. A server
/// without TLS files costs one settings load per poll.
pub(super) async fn watch(shared: Arc<ServerShared>, stop: CancellationToken) {
    let mut last = files_state(&shared.settings.load());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let settings = shared.settings.load_full();
        let now = files_state(&settings);
        if now != last {
            if !now.is_empty() && !last.is_empty() {
                info!(server = %shared.name, "TLS files changed; loading them again");
                shared.reload_tls(&settings);
            }
            last = now;
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
