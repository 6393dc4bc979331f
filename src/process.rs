//! Running an outside command (exec health checks, exec discovery) so that it never
//! outlives its caller: it gets its own process group, the whole group is killed at the
//! deadline or when the caller gives up, and the command is always reaped, so no zombie
//! is left behind. Output is read up to a cap; the rest is read and dropped, so a chatty
//! command never blocks on a full pipe.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// The first bytes of standard output, up to the cap.
    pub stdout: Vec<u8>,
    /// Standard output went past the cap (the rest was dropped).
    pub stdout_truncated: bool,
    /// The first bytes of standard error, up to the cap.
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} did not finish within {timeout:?}; killed")]
    Timeout { program: String, timeout: Duration },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Runs `command` (its stdin closed, its output piped) for at most `timeout`.
pub async fn run(
    mut command: Command,
    timeout: Duration,
    stdout_cap: usize,
    stderr_cap: usize,
) -> Result<Output, RunError> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut running = Running(Some(child));
    match tokio::time::timeout(timeout, running.finish(stdout_cap, stderr_cap)).await {
        Ok(output) => output,
        // `running` is dropped on return: the group is killed and the command reaped.
        Err(_) => Err(RunError::Timeout { program, timeout }),
    }
}

/// A command until it is reaped; dropped earlier, it kills the command's process group
/// and leaves the reaping to a task.
struct Running(Option<Child>);

impl Running {
    async fn finish(&mut self, stdout_cap: usize, stderr_cap: usize) -> Result<Output, RunError> {
        let Some(child) = self.0.as_mut() else {
            return Err(RunError::Io(io::Error::other("the command is gone")));
        };
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let ((stdout, stdout_truncated), (stderr, _)) = tokio::join!(
            read_capped(stdout, stdout_cap),
            read_capped(stderr, stderr_cap)
        );
        let status = child.wait().await?;
        self.0 = None; // reaped: nothing left to kill
        Ok(Output {
            status,
            stdout,
            stdout_truncated,
            stderr,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        // The group shares the command's pid; it may be gone already.
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

/// Reads `pipe` to its end: the first `cap` bytes, and whether there was more.
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 4096];
    // Ends at EOF or an error; the caller's timeout bounds it in time.
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        truncated |= n > room;
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script);
        command
    }

    #[tokio::test]
    async fn output_is_capped_and_the_rest_drained() {
        let out = run(
            sh("printf abcdef; printf xyz >&2; exit 3"),
            Duration::from_secs(5),
            4,
            100,
        )
        .await
        .expect("ran");
        assert_eq!(
            (out.stdout.as_slice(), out.stdout_truncated),
            (&b"abcd"[..], true)
        );
        assert_eq!(out.stderr, b"xyz");
        assert_eq!(out.status.code(), Some(3));
        // Far more than a pipe holds: read and dropped, the command is not blocked.
        let out = run(
            sh("head -c 1000000 /dev/zero"),
            Duration::from_secs(5),
            10,
            10,
        )
        .await
        .expect("ran");
        assert!(out.status.success() && out.stdout_truncated);
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let err = run(sh(&script), Duration::from_millis(500), 100, 100)
            .await
            .expect_err("timed out");
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
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

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let err = run(
            Command::new("/nonexistent/cmd"),
            Duration::from_secs(1),
            1,
            1,
        )
        .await
        .expect_err("no such program");
        assert!(err.to_string().contains("/nonexistent/cmd"), "{err}");
    }
}
