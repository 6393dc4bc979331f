//! BIRD (Debian's `bird2`) as the router of the BGP tests: started with a configuration
//! of the test's, asked with `birdc` what it holds, stopped when dropped. Tests skip
//! with a printed reason where BIRD is not installed (`SLUICE_REQUIRE_BIRD` makes that
//! a failure).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running BIRD.
pub struct Bird {
    dir: tempfile::TempDir,
    child: Child,
}

impl Bird {
    /// BIRD with `config` (its whole configuration); `Err` when it is not installed.
    pub async fn start(config: &str) -> Result<Bird, String> {
        Self::start_in(None, config).await
    }

    /// As [`Bird::start`], inside network namespace `netns` when given.
    pub async fn start_in(netns: Option<&str>, config: &str) -> Result<Bird, String> {
        if Command::new("bird").arg("--version").output().is_err() {
            return Err("no `bird` (Debian package bird2)".to_owned());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let conf = dir.path().join("bird.conf");
        std::fs::write(&conf, config).map_err(|e| e.to_string())?;
        let mut command = match netns {
            Some(netns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", netns, "bird"]);
                ip
            }
            None => Command::new("bird"),
        };
        let child = command
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.path().join("ctl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting bird: {e}"))?;
        let bird = Bird { dir, child };
        for _ in 0..100 {
            if bird
                .ask("show status")
                .is_ok_and(|s| s.contains("Daemon is up"))
            {
                return Ok(bird);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("bird did not come up within 5 s");
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl")
    }

    /// `birdc` `command`'s output.
    pub fn ask(&self, command: &str) -> Result<String, String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(command.split_whitespace())
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The prefixes of protocol `protocol`'s routes.
    pub fn routes(&self, protocol: &str) -> Vec<String> {
        let out = self
            .ask(&format!("show route protocol {protocol}"))
            .unwrap_or_default();
        out.lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|first| first.contains('/'))
            .map(str::to_owned)
            .collect()
    }

    /// The state of BGP protocol `protocol` (`Established`, `Active`, …).
    pub fn bgp_state(&self, protocol: &str) -> String {
        let out = self
            .ask(&format!("show protocols all {protocol}"))
            .unwrap_or_default();
        out.lines()
            .find_map(|line| line.trim().strip_prefix("BGP state:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Some(bird)`, or `None` after printing why the test skips (a failure when
/// `SLUICE_REQUIRE_BIRD` is set, as CI does).
pub fn or_skip(made: Result<Bird, String>, test: &str) -> Option<Bird> {
    match made {
        Ok(bird) => Some(bird),
        Err(why) if std::env::var_os("SLUICE_REQUIRE_BIRD").is_some() => {
            panic!("{test}: BIRD is required here: {why}")
        }
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            None
        }
    }
}
