//! `kind = "exec"`: a command (no shell) that prints one backend per line in the backend
//! line grammar and exits 0.
//!
//! The command runs through [`crate::process`]: when it runs out of time, or the fetch
//! is abandoned, its whole process group is killed and it is reaped.

use std::time::Duration;

use tokio::process::Command;

use super::list::{parse_lines, MAX_LIST_BYTES};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::ExecParams;
use crate::process;

/// Bytes of standard error kept for the message when the command fails.
const MAX_STDERR: usize = 2048;

/// The `exec` source.
pub struct ExecSource {
    command: Vec<String>,
    timeout: Duration,
}

impl ExecSource {
    pub fn new(params: &ExecParams, timeout: Duration) -> Self {
        ExecSource {
            command: params.command.clone(),
            timeout,
        }
    }

    async fn run(&self) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(DiscoveryError::Invalid("exec_command is empty".into()));
        };
        let mut command = Command::new(program);
        command.args(args);
        let out = match process::run(command, self.timeout, MAX_LIST_BYTES, MAX_STDERR).await {
            Ok(out) => out,
            Err(process::RunError::Timeout { .. }) => return Err(DiscoveryError::Timeout),
            Err(e) => return Err(DiscoveryError::Invalid(e.to_string())),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(DiscoveryError::Invalid(format!(
                "{program} exited with {}: {}",
                out.status,
                stderr.trim()
            )));
        }
        if out.stdout_truncated {
            return Err(DiscoveryError::Invalid(format!(
                "{program} printed more than {MAX_LIST_BYTES} bytes"
            )));
        }
        let text = String::from_utf8(out.stdout)
            .map_err(|_| DiscoveryError::Invalid(format!("{program} printed non-UTF-8 text")))?;
        parse_lines(&text, &format!("output of {program}"))
    }
}

impl Source for ExecSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.run())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(script: &str, timeout: Duration) -> ExecSource {
        let params = ExecParams {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        };
        ExecSource::new(&params, timeout)
    }

    #[tokio::test]
    async fn prints_backends() {
        let mut s = source(
            "echo '127.0.0.1:80 weight=2'; echo '[::1]:81'",
            Duration::from_secs(5),
        );
        let specs = s.fetch().await.expect("list");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].weight, 2);
    }

    #[tokio::test]
    async fn failures_are_explained() {
        let mut s = source("echo broken >&2; exit 3", Duration::from_secs(5));
        let err = s.fetch().await.expect_err("exit 3").to_string();
        assert!(err.contains("broken") && err.contains('3'), "{err}");
        let mut s = source("echo nonsense", Duration::from_secs(5));
        assert!(s.fetch().await.is_err());
    }

    #[tokio::test]
    async fn a_hung_command_times_out() {
        let mut s = source("sleep 30", Duration::from_millis(300));
        assert!(matches!(s.fetch().await, Err(DiscoveryError::Timeout)));
    }
}
