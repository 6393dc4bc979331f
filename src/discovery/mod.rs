//! Service discovery: where a server's backends come from when they are not a static
//! list. A [`Source`] answers "which backends are there now"; the runner (one task per
//! server) calls it, applies `timeout` and `failpolicy`, and hands each new list to the
//! server, which rebuilds its pool exactly as a reload does: new backends join, removed
//! ones get no new connections and their open connections drain.

use std::future::Future;
use std::io;
use std::pin::Pin;

use crate::backend::BackendSpec;

pub mod consul;
pub mod dns;
pub mod docker;
pub mod etcd;
pub mod exec;
pub mod file;
pub mod http;
pub mod http_client;
pub mod json;
pub mod json_backend;
pub mod list;
pub mod plaintext;
mod runner;
pub mod srv;

pub use runner::{build, run, Apply, RETRY_WAIT, WATCH_LIMIT};

/// A boxed future, the return type of [`Source::fetch`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a source gave no list this time.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The source answered with something that is not a backend list (bad JSON, an HTTP
    /// error status, a line that does not parse); the text says what and where.
    #[error("{0}")]
    Invalid(String),
}

/// One kind of discovery source.
pub trait Source: Send {
    /// The backends now. A polling source answers at once and is called again after
    /// `interval`; a watching source ([`Source::watches`]) may wait for a change (a Consul
    /// blocking query, an etcd watch) up to its own wait time, and is called again at once.
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>>;

    /// Whether `fetch` waits for changes itself rather than being polled.
    fn watches(&self) -> bool {
        false
    }

    /// For a polling source whose answer says how long it holds (a DNS TTL): when to
    /// fetch again after a success, instead of `interval`.
    fn next_fetch(&self) -> Option<std::time::Duration> {
        None
    }
}
