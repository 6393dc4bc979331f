//! `-p FILE`: the process id written where service managers and scripts look for it.
//!
//! A file naming a live process means a Sluice already runs with it: starting is refused,
//! so two balancers never silently share the same ports. A file left by a process that
//! is gone (a crash, a power cut) is taken over. The file is removed when the process
//! ends, if it still names this process.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The pid file of this process, removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's id to `path`, unless the file names another live process
    /// (but `replacing`, the process a binary upgrade takes over from).
    pub fn create(path: &Path, replacing: Option<u32>) -> anyhow::Result<PidFile> {
        let pid = std::process::id();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let other =
                    live_pid(&text).filter(|&other| other != pid && Some(other) != replacing);
                if let Some(other) = other {
                    bail!(
                        "{}: a process with pid {other} is running (another Sluice?); stop it \
                         or remove the file",
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
        let mut file = std::fs::File::create(path)
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        writeln!(file, "{pid}")
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a file another process has taken over since stays.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>().ok() == Some(self.pid));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The pid the file's text names, if that process is alive. A text that is no pid names
/// no live process.
fn live_pid(text: &str) -> Option<u32> {
    let pid: i32 = text.trim().parse().ok().filter(|&pid| pid > 0)?;
    // Signal 0 asks whether the process exists; EPERM means it does, as another user's.
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => u32::try_from(pid).ok(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_pid_refuses_a_stale_one_is_taken_over_and_the_file_goes_at_the_end() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("sluice.pid");
        // PID 1 is always alive.
        std::fs::write(&path, "1\n").expect("write");
        let err = PidFile::create(&path, None).expect_err("pid 1 is alive");
        assert!(err.to_string().contains("pid 1 is running"), "{err}");
        // A child that has exited and been reaped names no process.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let gone = child.id();
        child.wait().expect("wait");
        for stale in [format!("{gone}\n"), "not a pid".to_owned(), String::new()] {
            std::fs::write(&path, stale).expect("write");
            let pidfile = PidFile::create(&path, None).expect("a stale file is taken over");
            let written = std::fs::read_to_string(&path).expect("read");
            assert_eq!(written, format!("{}\n", std::process::id()));
            drop(pidfile);
            assert!(!path.exists(), "removed at the end");
        }
    }
}
