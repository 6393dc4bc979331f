//! `kind = "exec"`: a command (no shell) that prints one backend per line in the backend
//! line grammar and exits 0.
//!
//! The command runs in its own process group. When it runs out of time, or the fetch is
//! abandoned, the whole group is killed (a shell script's children too) and the command
//! is reaped, so no process outlives its fetch and none is left a zombie.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::list::{parse_lines, MAX_LIST_BYTES};
use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::ExecParams;

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
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DiscoveryError::Invalid(format!("cannot run {program}: {e}")))?;
        let mut running = Running(Some(child));
        let finished = tokio::time::timeout(self.timeout, running.finish()).await;
        let (status, stdout, stderr) = match finished {
            Ok(result) => result?,
            // `running` is dropped on return: the group is killed and reaped.
            Err(_) => return Err(DiscoveryError::Timeout),
        };
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            return Err(DiscoveryError::Invalid(format!(
                "{program} exited with {status}: {}",
                stderr.trim()
            )));
        }
        let text = String::from_utf8(stdout)
            .map_err(|_| DiscoveryError::Invalid(format!("{program} printed non-UTF-8 text")))?;
        parse_lines(&text, &format!("output of {program}"))
    }
}

impl Source for ExecSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(self.run())
    }
}

/// A command until it is reaped; dropped earlier, it kills the command's process group
/// and leaves the reaping to a task.
struct Running(Option<Child>);

impl Running {
    async fn finish(
        &mut self,
    ) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), DiscoveryError> {
        let Some(child) = self.0.as_mut() else {
            return Err(DiscoveryError::Invalid("the command is gone".into()));
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (out, err) = tokio::join!(
            read_capped(stdout, MAX_LIST_BYTES),
            read_capped(stderr, MAX_STDERR)
        );
        let out = out?;
        let status = child.wait().await?;
        // Reaped: nothing left to kill.
        self.0 = None;
        Ok((status, out, err.unwrap_or_default()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = child.start_kill();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// Reads `pipe` to its end, failing past `max` bytes (standard error is cut there
/// instead, it only feeds a message).
async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    max: usize,
) -> Result<Vec<u8>, DiscoveryError> {
    let Some(pipe) = pipe else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX) + 1;
    pipe.take(limit).read_to_end(&mut out).await?;
    if out.len() > max {
        if max == MAX_STDERR {
            out.truncate(max);
            return Ok(out);
        }
        return Err(DiscoveryError::Invalid(format!(
            "the command printed more than {max} bytes"
        )));
    }
    Ok(out)
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
    async fn a_hung_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let mut s = source(&script, Duration::from_secs(1));
        assert!(matches!(s.fetch().await, Err(DiscoveryError::Timeout)));
        let pid = std::fs::read_to_string(&pid_file).expect("pid file");
        let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
        // Killed processes disappear (or linger as zombies of init) within moments.
        let mut gone = false;
        for _ in 0..500 {
            let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the command's child survived its timeout");
    }
}
