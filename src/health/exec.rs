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
            // Past the cap the output is not known whole: it cannot be the positive one.
            if out.stdout_truncated {
                Err(describe("unexpected output (longer than 4 KiB)"))
            } else if output == self.settings.positive {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendSpec;

    #[tokio::test]
    async fn output_past_the_cap_is_never_the_positive_one() {
        let dir = tempfile::tempdir().expect("dir");
        let script = dir.path().join("check.sh");
        // "ok", then padding the cap cuts before the word that makes it unhealthy.
        let body = format!(
            "#!/bin/sh\nprintf 'ok'\nprintf '%{}s' ''\necho down\n",
            OUTPUT_CAP
        );
        std::fs::write(&script, body).expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let check = ExecCheck::new(
            ExecSettings {
                command: script.to_string_lossy().into_owned(),
                positive: "ok".into(),
                negative: None,
            },
            Duration::from_secs(5),
        );
        let backend = Backend::new(BackendSpec::new("127.0.0.1", 1), true);
        let err = check.check(&backend).await.expect_err("not healthy");
        assert!(err.to_string().contains("unexpected output"), "{err}");
    }
}
