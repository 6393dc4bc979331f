//! Where the configuration comes from: a file, in the format `--format` names or its
//! extension and shape say, an `http(s)://` URL answering it (GoBetween's `from-url`),
//! or keys in etcd a fleet shares ([`etcd`]). It is read at start and again at every
//! reload (SIGHUP, `POST /reload`, and for etcd, every change there).

pub mod etcd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, ConfigError, ConfigErrors, Loaded, Requested, Url};
use crate::discovery::http::Fetcher;
use etcd::EtcdStore;

/// How long fetching a configuration from a URL may take, connection to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A configuration's source.
#[derive(Clone, Debug)]
pub enum Origin {
    File {
        path: PathBuf,
        format: Option<Requested>,
    },
    Url {
        url: Url,
        format: Option<Requested>,
    },
    /// A fleet's configuration in etcd, followed as it changes; API edits are written
    /// back to it.
    Etcd(Arc<EtcdStore>),
}

impl Origin {
    /// Reads the configuration, checked as at start. From a URL, relative file paths in
    /// it are kept as written (taken from the working directory), and the format is
    /// told by the URL's path and the answer's shape unless `format` names it.
    pub async fn load(&self) -> Result<Loaded, ConfigErrors> {
        match self {
            Origin::File { path, format } => config::load_as(path, *format),
            Origin::Url { url, format } => {
                let named = PathBuf::from(url.to_string());
                let failed = |message: String| ConfigError {
                    path: named.clone(),
                    line: 0,
                    col: 0,
                    message,
                };
                let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
                let text = Fetcher::new(url.clone(), None)
                    .get(deadline)
                    .await
                    .map_err(|e| failed(format!("cannot fetch the configuration: {e}")))?;
                let by_path = Path::new(url.target.split('?').next().unwrap_or_default());
                let format = match format {
                    Some(requested) => requested.format(&text),
                    None => config::Format::detect(by_path, &text),
                };
                let loaded = config::read(&text, &named, None, format)?;
                if loaded.config.api.as_ref().is_some_and(|api| api.persist) {
                    let message = "api.persist: a configuration fetched from a URL cannot be \
                                   written back; turn persist off, or run from a file";
                    return Err(failed(message.to_owned()).into());
                }
                Ok(loaded)
            }
            Origin::Etcd(store) => store.read().await,
        }
    }

    /// The etcd store, when the configuration is kept in one.
    pub fn store(&self) -> Option<&Arc<EtcdStore>> {
        match self {
            Origin::Etcd(store) => Some(store),
            _ => None,
        }
    }

    /// The file, when the configuration is one: the place `persist` writes to and
    /// relative paths of API edits are taken from.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File { path, .. } => Some(path),
            Origin::Url { .. } | Origin::Etcd(_) => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, .. } => write!(f, "{}", path.display()),
            Origin::Url { url, .. } => write!(f, "{url}"),
            Origin::Etcd(store) => write!(f, "{store}"),
        }
    }
}
