//! The control socket (`--control-socket PATH`): a Unix socket, readable and writable by
//! its owner only, that `sluice upgrade` asks for an upgrade on. One request a
//! connection, one JSON line each way:
//!
//! ```text
//! → {"binary":"/usr/local/bin/sluice","timeout_ms":30000}
//! ← {"upgraded":{"pid":4242}}          or          {"error":"the new process cannot start: …"}
//! ```

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Request;

/// The longest request line read.
const MAX_REQUEST: u64 = 4096;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to a request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Upgraded { pid: u32 },
    Error(String),
}

/// A request and where its answer goes.
pub type Asked = (Request, oneshot::Sender<Answer>);

/// The control socket at `path`: the one passed by the process this one replaces, or a
/// new one. A socket file no process answers on (left by a crash) is replaced; one a
/// running process answers on is an error.
pub fn listen(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(passed) = crate::listener::passed::take_unix(path) {
        return Ok(passed);
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a running process answers on it (is another Sluice running?)",
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => info!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket until `stop`: each request goes to `asked`, which answers.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    asked: mpsc::Sender<Asked>,
    stop: CancellationToken,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the control socket");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let asked = asked.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, asked).await {
                debug!(error = %e, "control socket: request failed");
            }
        });
    }
}

async fn respond(stream: tokio::net::UnixStream, asked: mpsc::Sender<Asked>) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Answer::Error(format!("not a request: {e}")),
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            if asked.send((request, reply)).await.is_err() {
                Answer::Error("Sluice is shutting down".to_owned())
            } else {
                answer
                    .await
                    .unwrap_or_else(|_| Answer::Error("Sluice is shutting down".to_owned()))
            }
        }
    };
    let mut text = serde_json::to_string(&answer).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// `sluice upgrade`: asks the Sluice listening on `path` to upgrade, and waits for the
/// answer (for up to the request's timeout and a little more).
pub fn ask(path: &Path, request: &Request) -> anyhow::Result<Answer> {
    use anyhow::Context;
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach Sluice on its control socket {}",
            path.display()
        )
    })?;
    let timeout = request
        .timeout_ms
        .map_or(super::DEFAULT_TIMEOUT, Duration::from_millis);
    stream.set_read_timeout(Some(timeout + Duration::from_secs(30)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut line)
        .context("no answer on the control socket")?;
    serde_json::from_str(line.trim()).with_context(|| format!("not an answer: {}", line.trim()))
}
