//! `kind = "file"`: backends in a file, re-read when it changes. The file is a JSON
//! array (of backend lines or objects) when its first non-blank character is `[`, else
//! one backend per line in the backend line grammar (`#` starts a comment line).
//!
//! A change is seen by polling the file's modification time and size every second, or
//! every `interval` when that is shorter and not zero; an unchanged file is not read
//! again.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::list::{parse_json, parse_lines, MAX_LIST_BYTES};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::FileParams;

/// How often the file is looked at, unless `interval` is shorter (and not zero).
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// The `file` source.
pub struct FileSource {
    path: PathBuf,
    poll: Duration,
    /// Modification time and size of the file last read, with what it held.
    last: Option<(SystemTime, u64, Vec<BackendSpec>)>,
}

impl FileSource {
    pub fn new(params: &FileParams, interval: Duration) -> Self {
        FileSource {
            path: params.path.clone(),
            poll: if interval.is_zero() {
                DEFAULT_POLL
            } else {
                interval.min(DEFAULT_POLL)
            },
            last: None,
        }
    }

    async fn read(&mut self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let what = self.path.display().to_string();
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| DiscoveryError::Invalid(format!("{what}: {e}")))?;
        // A FIFO or device would block a thread on open or read with no end in sight.
        if !meta.is_file() {
            return Err(DiscoveryError::Invalid(format!(
                "{what}: not a regular file"
            )));
        }
        let modified = meta.modified()?;
        if let Some((time, len, specs)) = &self.last {
            if *time == modified && *len == meta.len() {
                return Ok(specs.clone());
            }
        }
        if meta.len() > MAX_LIST_BYTES as u64 {
            return Err(DiscoveryError::Invalid(format!(
                "{what}: larger than {MAX_LIST_BYTES} bytes"
            )));
        }
        self.last = None;
        // The size above can be stale (a file still being written): the read itself is
        // capped too.
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| DiscoveryError::Invalid(format!("{what}: {e}")))?;
        let bytes = read_capped(file, &what).await?;
        let text = String::from_utf8(bytes)
            .map_err(|_| DiscoveryError::Invalid(format!("{what}: not UTF-8 text")))?;
        let specs = if text.trim_start().starts_with('[') {
            parse_json(&text, &what)?
        } else {
            parse_lines(&text, &what)?
        };
        self.last = Some((modified, meta.len(), specs.clone()));
        Ok(specs)
    }
}

impl Source for FileSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.read())
    }

    fn next_fetch(&self) -> Option<Duration> {
        Some(self.poll)
    }
}

/// All of `reader`, or an error past [`MAX_LIST_BYTES`].
async fn read_capped<R: AsyncRead + Unpin>(
    reader: R,
    what: &str,
) -> Result<Vec<u8>, DiscoveryError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_LIST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| DiscoveryError::Invalid(format!("{what}: {e}")))?;
    if bytes.len() > MAX_LIST_BYTES {
        return Err(DiscoveryError::Invalid(format!(
            "{what}: larger than {MAX_LIST_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_lines_and_json_and_sees_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("backends");
        std::fs::write(&path, "127.0.0.1:80\n").expect("write");
        let params = FileParams { path: path.clone() };
        let mut source = FileSource::new(&params, Duration::ZERO);
        assert_eq!(source.fetch().await.expect("lines").len(), 1);
        std::fs::write(
            &path,
            r#"["127.0.0.1:80", {"host": "127.0.0.1", "port": 81}]"#,
        )
        .expect("rewrite");
        assert_eq!(source.fetch().await.expect("json").len(), 2);
        std::fs::write(&path, "oops\n").expect("rewrite");
        assert!(source.fetch().await.is_err());
        std::fs::remove_file(&path).expect("remove");
        assert!(source.fetch().await.is_err());
    }

    #[test]
    fn polls_every_second_or_a_shorter_interval() {
        let params = FileParams {
            path: PathBuf::from("/nonexistent"),
        };
        let poll = |interval| FileSource::new(&params, interval).next_fetch();
        assert_eq!(poll(Duration::ZERO), Some(DEFAULT_POLL));
        assert_eq!(poll(Duration::from_secs(60)), Some(DEFAULT_POLL));
        let short = Duration::from_millis(200);
        assert_eq!(poll(short), Some(short));
    }

    #[tokio::test]
    async fn reads_are_capped() {
        let big = vec![b'#'; MAX_LIST_BYTES + 1];
        let err = read_capped(&big[..], "x")
            .await
            .expect_err("larger than the cap");
        assert!(err.to_string().contains("larger than"), "{err}");
        let exact = vec![b'#'; MAX_LIST_BYTES];
        assert_eq!(
            read_capped(&exact[..], "x").await.expect("fits").len(),
            MAX_LIST_BYTES
        );
    }

    #[tokio::test]
    async fn a_pipe_is_refused_without_blocking() {
        // No writer: opening it for reading would block a thread for good.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let mut source = FileSource::new(&FileParams { path }, Duration::ZERO);
        let fetched = tokio::time::timeout(Duration::from_secs(5), source.fetch()).await;
        let err = fetched.expect("answered at once").expect_err("not a file");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
