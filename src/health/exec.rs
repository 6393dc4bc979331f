//! `kind = "exec"` (GoBetween's): run `exec_command HOST PORT`; its output says whether
//! the backend is healthy.
//!
//! The command runs through [`crate::process`]: killed with everything it started at the
//! timeout, always reaped.

use std::time::Duration;

use tokio::process::Command;

use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::ExecSettings;
use crate::process;

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

    async fn run(&self, backend: &Backend) -> Result<process::Output, CheckError> {
        let mut command = Command::new(&self.settings.command);
        command
            .arg(&backend.spec.host)
            .arg(backend.spec.port.to_string());
        process::run(command, self.timeout, OUTPUT_CAP, OUTPUT_CAP)
            .await
            .map_err(|e| CheckError::Unhealthy(e.to_string()))
    }
}

impl HealthCheck for ExecCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            let out = self.run(backend).await?;
            let (status, stdout) = (out.status, String::from_utf8_lossy(&out.stdout));
            let stderr = String::from_utf8_lossy(&out.stderr);
            let output = stdout.trim();
            let describe = |what: &str| {
                CheckError::Unhealthy(format!(
                    "{what}; stdout: {:?}; stderr: {:?}",
                    output,
                    stderr.trim()
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
