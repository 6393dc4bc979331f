//! The one way running state is changed from outside: a reload from the file (SIGHUP,
//! `POST /reload`, a change in etcd) or an edit of the running configuration (the admin
//! API). Both end in [`Runtime::apply`], as start-up does; an edit is validated as a
//! file would be, and with `[api] persist = true` written back to the file atomically,
//! or, for a configuration kept in etcd, always written back there.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::dump::{self, Secrets};
use crate::config::{self, Config, ConfigErrors};
use crate::origin::etcd::StoreError;
use crate::origin::Origin;
use crate::reload::Change;
use crate::runtime::{BindError, Runtime};

/// Why a change was not applied. Nothing changed in any case but `Persist`, where the
/// change runs but the file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no configuration file to reload (started without one)")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the change is running, but the configuration file was not written: {0}")]
    Persist(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Sluice is shutting down: no more changes are applied")]
    ShuttingDown,
}

/// Serialises changes and knows where the configuration lives.
pub struct Control {
    runtime: Arc<Runtime>,
    /// Where the configuration is read from on reload; `None` for one built from flags.
    origin: Option<Origin>,
    /// Held across read-modify-apply-persist, so two API edits never lose each other.
    edit: Mutex<()>,
}

impl Control {
    pub fn new(runtime: Arc<Runtime>, origin: Option<Origin>) -> Self {
        Control {
            runtime,
            origin,
            edit: Mutex::new(()),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The configuration's file, if it is read from one.
    pub fn config_path(&self) -> Option<&Path> {
        self.origin.as_ref().and_then(Origin::file)
    }

    /// Where the configuration is read from, if anywhere.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// A change accepted during the shutdown grace period would never take effect (a
    /// new server would not accept): say so instead.
    fn refuse_when_stopping(&self) -> Result<(), ControlError> {
        if self.runtime.is_stopping() {
            return Err(ControlError::ShuttingDown);
        }
        Ok(())
    }

    /// Holds off every change (reloads, API edits) for as long as the guard lives: a
    /// binary upgrade hands over the configuration as it is.
    pub async fn exclusive(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ControlError> {
        let edit = self.edit.lock().await;
        self.refuse_when_stopping()?;
        Ok(edit)
    }

    /// Re-reads the configuration file and applies it.
    pub async fn reload(&self) -> Result<Vec<Change>, ControlError> {
        let _edit = self.edit.lock().await;
        self.refuse_when_stopping()?;
        let origin = self.origin.as_ref().ok_or(ControlError::NoFile)?;
        crate::service::reloading();
        let reloaded = self.reload_from(origin).await;
        crate::service::ready();
        reloaded
    }

    /// Reads the configuration in etcd again and applies it if it changed: a reload the
    /// service manager did not ask for, so it is not told of it.
    async fn apply_store_change(&self) -> Result<Vec<Change>, ControlError> {
        let _edit = self.edit.lock().await;
        self.refuse_when_stopping()?;
        let origin = self.origin.as_ref().ok_or(ControlError::NoFile)?;
        self.reload_from(origin).await
    }

    /// The reload itself, with the edit lock held.
    async fn reload_from(&self, origin: &Origin) -> Result<Vec<Change>, ControlError> {
        let loaded = origin.load().await.map_err(|errors| {
            for e in &errors.0 {
                error!("{e}");
            }
            error!(from = %origin, "configuration not reloaded: still running the previous one");
            ControlError::Invalid(errors)
        })?;
        let store = origin.store();
        if store.is_some_and(|store| store.read_is_running()) {
            debug!(from = %origin, "the configuration in etcd is the one running");
            return Ok(Vec::new());
        }
        info!(from = %origin, "reloading the configuration");
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        let running = self.runtime.config().await;
        if running.api != loaded.config.api || running.metrics != loaded.config.metrics {
            warn!("[api] or [metrics] changed: those take effect at the next start");
        }
        if running.logging != loaded.config.logging {
            warn!("[logging] changed: it takes effect at the next start");
        }
        let changes = self.runtime.apply(loaded.config).await.inspect_err(|e| {
            error!("reload failed: {e}");
        })?;
        if let Some(store) = store {
            store.mark_running();
        }
        // Certificate files may have been renewed under an unchanged configuration.
        self.runtime.reload_tls().await;
        info!(changes = changes.len(), "configuration reloaded");
        Ok(changes)
    }

    /// Applies `edit` to a copy of the running configuration, the typed model itself. The
    /// result is checked by the rules the file reader checks last ([`config::validate`]:
    /// bind conflicts, static lists) before anything changes; what `edit` puts in was
    /// checked when it was read (a server body is read as a file's server is). `edit`'s
    /// own error (a missing or conflicting name) is returned as is.
    pub async fn edit<T, E>(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<T, E>,
    ) -> Result<Result<T, E>, ControlError> {
        let _edit = self.edit.lock().await;
        self.refuse_when_stopping()?;
        let mut config = self.runtime.config().await;
        let value = match edit(&mut config) {
            Ok(value) => value,
            Err(e) => return Ok(Err(e)),
        };
        config::validate(&config, Path::new("(the changed configuration)"))
            .map_err(ControlError::Invalid)?;
        let persist = config.api.as_ref().is_some_and(|api| api.persist);
        // Written out before it applies, so a configuration that cannot be written is
        // refused without any change.
        let text = match (persist, self.config_path()) {
            (true, Some(path)) => Some((path, file_text(&config)?)),
            _ => None,
        };
        if let Some(store) = self.origin.as_ref().and_then(Origin::store) {
            // Applied here first (a listener that cannot bind refuses it), then written
            // for every node, or undone.
            if let Some(why) = store.unreachable() {
                return Err(StoreError::Unreachable(why).into());
            }
            let previous = self.runtime.config().await;
            self.runtime.apply(config.clone()).await?;
            if let Err(e) = store.write(&config).await {
                warn!("edit not written to etcd, so undone here: {e}");
                if let Err(undo) = self.runtime.apply(previous).await {
                    error!("cannot undo the edit: {undo}");
                }
                return Err(e.into());
            }
            return Ok(Ok(value));
        }
        self.runtime.apply(config).await?;
        if let Some((path, text)) = text {
            write_atomically(path, &text)
                .map_err(|e| ControlError::Persist(format!("{}: {e}", path.display())))?;
            info!(file = %path.display(), "configuration written");
        }
        Ok(Ok(value))
    }
}

/// How long one watch of etcd waits before it is opened again.
const STORE_WATCH: Duration = Duration::from_secs(60);
/// Retries while etcd cannot be reached: from the first to the last, doubling.
const STORE_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

impl Control {
    /// Follows a configuration kept in etcd until `stop`: each change there is read and
    /// applied as a reload is. While etcd cannot be reached the running configuration
    /// stays (the store says so) and etcd is asked again, from every 0.5 s to every 10 s.
    pub async fn follow_store(self: Arc<Self>, stop: CancellationToken) {
        let Some(store) = self.origin.as_ref().and_then(Origin::store).cloned() else {
            return;
        };
        let mut retry = STORE_RETRY.0;
        loop {
            let woken = tokio::select! {
                _ = stop.cancelled() => return,
                woken = store.wait_for_change(STORE_WATCH) => woken,
            };
            match woken {
                Ok(false) => continue,
                Ok(true) => retry = STORE_RETRY.0,
                Err(_) => {
                    // The store said it is unreachable; ask again after a while.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(STORE_RETRY.1);
                    continue;
                }
            }
            // Other errors are logged by the reload; the running configuration stays.
            if let Err(ControlError::ShuttingDown) = self.apply_store_change().await {
                return;
            }
        }
    }
}

/// `config` as the text `persist` writes.
fn file_text(config: &Config) -> Result<String, ControlError> {
    dump::to_toml(config, Secrets::Keep)
        .map_err(|e| ControlError::Persist(format!("cannot write the configuration: {e}")))
}

/// Writes `text` beside `path` and renames it over `path`: a reader (or a crash) sees the
/// old file or the new one, never half of one.
///
/// The temporary file has an unpredictable name, is created exclusively (never through
/// a link someone planted) and readable by the owner only until it takes the old file's
/// permissions. A `path` that is a symbolic link is followed, so the link stays a link
/// and its target is what changes.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.unwrap_or_else(|| "sluice".into())))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    if let Ok(meta) = std::fs::metadata(&target) {
        file.as_file().set_permissions(meta.permissions())?;
    }
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(&target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "old").expect("write");
        write_atomically(&path, "new").expect("atomic write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sluice.toml")]);
    }

    #[test]
    fn atomic_write_keeps_the_mode_follows_a_link_and_ignores_planted_files() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real.toml");
        std::fs::write(&real, "old").expect("write");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let link = dir.path().join("sluice.toml");
        symlink(&real, &link).expect("symlink");
        // What the old, predictable temporary name would have written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        let planted = dir
            .path()
            .join(format!(".real.toml.{}.tmp", std::process::id()));
        symlink(&victim, &planted).expect("symlink");

        write_atomically(&link, "new").expect("atomic write");
        assert!(std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&real).expect("read"), "new");
        let mode = std::fs::metadata(&real).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
    }
}
