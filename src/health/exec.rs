//! `kind = "exec"` (GoBetween's): run `exec_command HOST PORT`; its output says whether
//! the backend is healthy.
//!
//! The command runs in its own process group, so that at the timeout it is killed with
//! everything it started, and it is always waited for: no zombie is left behind.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::ExecSettings;

/// Output of each stream kept for the comparison and the log; the rest is read and
/// dropped, so a chatty command never blocks on a full pipe.
const OUTPUT_CAP: usize = 4096;

/// Time past the timeout to kill the command and wait for it.
const REAP_GRACE: Duration = Duration::from_secs(2);

pub struct ExecCheck {
    settings: ExecSettings,
    timeout: Duration,
}

impl ExecCheck {
    /// `timeout` is the check's: the command is killed when it runs out.
    pub fn new(settings: ExecSettings, timeout: Duration) -> ExecCheck {
        ExecCheck { settings, timeout }
    }

    async fn run(&self, backend: &Backend) -> Result<(ExitStatus, String, String), CheckError> {
        let mut child = Command::new(&self.settings.command)
            .arg(&backend.spec.host)
            .arg(backend.spec.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // Last resort should this future be dropped before it reaps the child.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                CheckError::Unhealthy(format!("cannot run {}: {e}", self.settings.command))
            })?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = async {
            let (out, err, status) =
                tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
            (out, err, status)
        };
        match tokio::time::timeout(self.timeout, finished).await {
            Ok((out, err, status)) => Ok((status?, out, err)),
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // The group shares the command's pid; it may be gone already.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                // Kills (if still needed) and waits: the child is reaped here.
                let _ = child.kill().await;
                Err(CheckError::Unhealthy(format!(
                    "{} did not finish within {:?}; killed",
                    self.settings.command, self.timeout
                )))
            }
        }
    }
}

impl HealthCheck for ExecCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            let (status, out, err) = self.run(backend).await?;
            let output = out.trim();
            let describe = |what: &str| {
                CheckError::Unhealthy(format!(
                    "{what}; stdout: {:?}; stderr: {:?}",
                    output,
                    err.trim()
                ))
            };
            if !status.success() {
                return Err(describe(&format!(
                    "{} exited with {status}",
                    self.settings.command
                )));
            }
            if output == self.settings.positive {
                Ok(())
            } else if self.settings.negative.as_deref() == Some(output) {
                Err(describe("negative output"))
            } else {
                Err(describe("unexpected output"))
            }
        })
    }

    fn cleanup_grace(&self) -> Duration {
        REAP_GRACE
    }
}

/// Reads `stream` to its end, keeping the first [`OUTPUT_CAP`] bytes as text.
async fn read_capped<R: AsyncRead + Unpin>(stream: Option<R>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    // Ends at EOF or an error; the caller's timeout bounds it in time.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}
