//! The one way running state is changed from outside: a reload from the file (SIGHUP,
//! `POST /reload`) or an edit of the running configuration (the admin API). Both end in
//! [`Runtime::apply`], as start-up does; an edit is validated as a file would be, and
//! with `[api] persist = true` written back to the file atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::config::dump::{self, Secrets};
use crate::config::{self, Config, ConfigErrors};
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
    #[error("Sluice is shutting down: no more changes are applied")]
    ShuttingDown,
}

/// Serialises changes and knows where the configuration lives.
pub struct Control {
    runtime: Arc<Runtime>,
    path: Option<PathBuf>,
    /// Held across read-modify-apply-persist, so two API edits never lose each other.
    edit: Mutex<()>,
}

impl Control {
    pub fn new(runtime: Arc<Runtime>, path: Option<PathBuf>) -> Self {
        Control {
            runtime,
            path,
            edit: Mutex::new(()),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A change accepted during the shutdown grace period would never take effect (a
    /// new server would not accept): say so instead.
    fn refuse_when_stopping(&self) -> Result<(), ControlError> {
        if self.runtime.is_stopping() {
            return Err(ControlError::ShuttingDown);
        }
        Ok(())
    }

    /// Re-reads the configuration file and applies it.
    pub async fn reload(&self) -> Result<Vec<Change>, ControlError> {
        let _edit = self.edit.lock().await;
        self.refuse_when_stopping()?;
        let path = self.path.as_deref().ok_or(ControlError::NoFile)?;
        info!(file = %path.display(), "reloading the configuration");
        let loaded = config::load(path).map_err(|errors| {
            for e in &errors.0 {
                error!("{e}");
            }
            error!("configuration not reloaded: still running the previous one");
            ControlError::Invalid(errors)
        })?;
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
        // Certificate files may have been renewed under an unchanged configuration.
        self.runtime.reload_tls().await;
        info!(changes = changes.len(), "configuration reloaded");
        Ok(changes)
    }

    /// Applies `edit` to a copy of the running configuration. The result is validated as
    /// a file would be (bind conflicts included) before anything changes; `edit`'s own
    /// error (a missing or conflicting name) is returned as is.
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
        let text = dump::to_toml(&config, Secrets::Keep)
            .map_err(|e| ControlError::Persist(format!("cannot write the configuration: {e}")))?;
        let checked = config::parse(&text, Path::new("(the changed configuration)"))
            .map_err(ControlError::Invalid)?
            .config;
        self.runtime.apply(checked).await?;
        let persist = config.api.as_ref().is_some_and(|api| api.persist);
        if let (true, Some(path)) = (persist, &self.path) {
            write_atomically(path, &text)
                .map_err(|e| ControlError::Persist(format!("{}: {e}", path.display())))?;
            info!(file = %path.display(), "configuration written");
        }
        Ok(Ok(value))
    }
}

/// Writes `text` beside `path` and renames it over `path`: a reader (or a crash) sees the
/// old file or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_else(|| "sluice".into()),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&temp, meta.permissions())?;
        }
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
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
}
