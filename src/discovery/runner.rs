//! The discovery runner: one task per server with a dynamic kind. It calls the source,
//! bounds each call by `timeout`, applies `failpolicy`, and hands every list that differs
//! from the last one to the server.
//!
//! Rules, in the order they apply:
//! - a fetch that fails or runs out of time keeps the last list under `keeplast` and
//!   empties the server under `setempty`, then is retried after [`RETRY_WAIT`] (or
//!   `interval`, when shorter);
//! - a fetch that succeeds with no backends empties the server whatever `failpolicy`
//!   says: the source answered, and its answer is "none";
//! - after a success, the next fetch follows after `interval`, after the source's own
//!   [`Source::next_fetch`] (a DNS TTL), or at once for a watching source; with
//!   `interval = "0"` and neither, the first success is the last fetch (GoBetween's
//!   meaning of "0").

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::{DiscoveryCommon, DiscoveryConfig, FailPolicy};

/// Wait after a failed fetch (GoBetween's), unless `interval` is shorter.
pub const RETRY_WAIT: Duration = Duration::from_secs(2);

/// A watching source waits for a change itself; the runner gives it up to this much
/// beyond `timeout` before counting it as hung. Its own wait must stay below this.
pub const WATCH_LIMIT: Duration = Duration::from_secs(300);

/// Least time between two calls of a watching source, so one that answers at once
/// every time cannot spin.
const WATCH_FLOOR: Duration = Duration::from_millis(50);

/// Hands a discovered list to the server (which rebuilds its pool from it).
pub type Apply = Arc<dyn Fn(Vec<BackendSpec>) -> BoxFuture<'static, ()> + Send + Sync>;

/// The source of a dynamic kind with its shared settings; `None` for `static`.
pub fn build(config: &DiscoveryConfig) -> Option<(Box<dyn Source>, DiscoveryCommon)> {
    let source: Box<dyn Source> = match config {
        DiscoveryConfig::Static { .. } => return None,
        DiscoveryConfig::Srv { params, .. } => Box::new(super::srv::SrvSource::new(params)),
        DiscoveryConfig::Dns { params, common } => {
            Box::new(super::dns::DnsSource::new(params, common.interval))
        }
        DiscoveryConfig::Json { params, .. } => Box::new(super::json::JsonSource::new(params)),
        DiscoveryConfig::Plaintext { params, .. } => {
            Box::new(super::plaintext::PlaintextSource::new(params))
        }
        DiscoveryConfig::Exec { params, common } => {
            Box::new(super::exec::ExecSource::new(params, common.timeout))
        }
        DiscoveryConfig::File { params, common } => {
            Box::new(super::file::FileSource::new(params, common.interval))
        }
        DiscoveryConfig::Consul { params, .. } => {
            or_broken(super::consul::ConsulSource::new(params.clone()))
        }
        DiscoveryConfig::Etcd { params, .. } => {
            or_broken(super::etcd::EtcdSource::new(params.clone()))
        }
        DiscoveryConfig::Docker { params, .. } => {
            or_broken(super::docker::DockerSource::new(params.clone()))
        }
    };
    let common = config.common().cloned().unwrap_or_default();
    Some((source, common))
}

/// The source, or one that fails every fetch with the reason it could not be made (an
/// unreadable TLS file): `failpolicy` applies and the reason is logged at each retry.
fn or_broken<S: Source + 'static>(made: Result<S, DiscoveryError>) -> Box<dyn Source> {
    match made {
        Ok(source) => Box::new(source),
        Err(e) => Box::new(Broken(e.to_string())),
    }
}

struct Broken(String);

impl Source for Broken {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        let reason = self.0.clone();
        Box::pin(async move { Err(DiscoveryError::Invalid(reason)) })
    }
}

/// Runs `source` for `server` until `stop` is cancelled (or, with `interval = "0"`, until
/// its first success), handing each new list to `apply`.
pub async fn run(
    server: String,
    mut source: Box<dyn Source>,
    common: DiscoveryCommon,
    apply: Apply,
    stop: CancellationToken,
) {
    let mut applied: Option<Vec<BackendSpec>> = None;
    // Bounded in time by `stop`, which the server cancels when it stops or changes kind.
    loop {
        let limit = if source.watches() {
            common.timeout + WATCH_LIMIT
        } else {
            common.timeout
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(limit, source.fetch()) => {
                r.unwrap_or(Err(DiscoveryError::Timeout))
            }
        };
        let wait = match result {
            Ok(list) => {
                let list = without_duplicates(&server, list);
                if applied.as_ref() != Some(&list) {
                    if list.is_empty() {
                        warn!(server, "discovery found no backends");
                    } else {
                        info!(
                            server,
                            backends = list.len(),
                            "discovered a new backend list"
                        );
                    }
                    apply(list.clone()).await;
                    applied = Some(list);
                } else {
                    debug!(server, "discovered backends unchanged");
                }
                if source.watches() {
                    WATCH_FLOOR
                } else if let Some(next) = source.next_fetch() {
                    next
                } else if common.interval.is_zero() {
                    return;
                } else {
                    common.interval
                }
            }
            Err(e) => {
                let empty = Some(Vec::new());
                match common.failpolicy {
                    FailPolicy::SetEmpty if applied != empty => {
                        warn!(server, error = %e, "discovery failed; setempty: no backends until it works again");
                        apply(Vec::new()).await;
                        applied = empty;
                    }
                    _ => warn!(server, error = %e, "discovery failed; keeping the last backends"),
                }
                retry_wait(common.interval)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn retry_wait(interval: Duration) -> Duration {
    if interval.is_zero() {
        RETRY_WAIT
    } else {
        interval.min(RETRY_WAIT)
    }
}

/// `list` with later entries of an already listed `host:port` dropped: a source that
/// lists a backend twice (two SRV records to one target) means it once.
fn without_duplicates(server: &str, list: Vec<BackendSpec>) -> Vec<BackendSpec> {
    let before = list.len();
    let out = super::list::distinct(list);
    if out.len() < before {
        debug!(
            server,
            dropped = before - out.len(),
            "discovery listed backends twice"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// Answers from a script, then hangs.
    struct Scripted(VecDeque<Result<Vec<BackendSpec>, DiscoveryError>>);

    impl Source for Scripted {
        fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
            let next = self.0.pop_front();
            Box::pin(async move {
                match next {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn list(ports: &[u16]) -> Vec<BackendSpec> {
        ports
            .iter()
            .map(|&p| BackendSpec::new("127.0.0.1", p))
            .collect()
    }

    /// The lists `run` applies for `script`, once `expected` of them have been applied.
    async fn applied(
        script: Vec<Result<Vec<BackendSpec>, DiscoveryError>>,
        failpolicy: FailPolicy,
        expected: usize,
    ) -> Vec<Vec<u16>> {
        let seen: Arc<Mutex<Vec<Vec<u16>>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let apply: Apply = Arc::new(move |specs: Vec<BackendSpec>| {
            let ports = specs.iter().map(|s| s.port).collect();
            sink.lock().expect("lock").push(ports);
            Box::pin(async {})
        });
        let common = DiscoveryCommon {
            interval: Duration::from_millis(1),
            timeout: Duration::from_millis(50),
            failpolicy,
        };
        let stop = CancellationToken::new();
        let runner = tokio::spawn(run(
            "t".into(),
            Box::new(Scripted(script.into())),
            common,
            apply,
            stop.clone(),
        ));
        // Bounded: 500 rounds of 20 ms.
        for _ in 0..500 {
            if seen.lock().expect("lock").len() >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        runner.await.expect("runner");
        let seen = seen.lock().expect("lock").clone();
        seen
    }

    fn failed() -> Result<Vec<BackendSpec>, DiscoveryError> {
        Err(DiscoveryError::Invalid("down".into()))
    }

    #[tokio::test]
    async fn keeplast_keeps_and_setempty_empties() {
        let script = || {
            vec![
                Ok(list(&[1, 2])),
                failed(),
                Ok(list(&[1, 2])),
                Ok(list(&[2])),
            ]
        };
        assert_eq!(
            applied(script(), FailPolicy::KeepLast, 2).await,
            vec![vec![1, 2], vec![2]]
        );
        assert_eq!(
            applied(script(), FailPolicy::SetEmpty, 5).await,
            vec![vec![1, 2], vec![], vec![1, 2], vec![2], vec![]]
        );
    }

    #[tokio::test]
    async fn an_empty_answer_empties_even_under_keeplast() {
        let script = vec![Ok(list(&[1])), Ok(vec![]), Ok(list(&[1, 1, 3]))];
        assert_eq!(
            applied(script, FailPolicy::KeepLast, 3).await,
            vec![vec![1], vec![], vec![1, 3]]
        );
    }
}
