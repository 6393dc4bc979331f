//! The `global` section: what Sluice takes from it (`maxconn`, `hard-stop-after`,
//! `ca-base`, `ssl-server-verify`), what it does its own way (a warning saying how), and
//! what it does not have (an error).

use std::path::PathBuf;
use std::time::Duration;

use super::values;
use super::words::{nearest, Line};
use super::Ctx;

/// What `global` says that Sluice uses.
#[derive(Clone, Debug, Default)]
pub(super) struct Global {
    /// `maxconn`: each frontend's limit unless it sets its own.
    pub maxconn: Option<u32>,
    /// `hard-stop-after`: how long a stop waits for connections to end.
    pub hard_stop_after: Option<Duration>,
    /// `ca-base`: where a relative `ca-file` is.
    pub ca_base: Option<PathBuf>,
    /// `ssl-server-verify none` (`Some(false)`) or `required`.
    pub verify: Option<bool>,
}

/// What `global` directives Sluice does its own way say about it.
const ELSEWHERE: &[(&str, &str)] = &[
    (
        "log",
        "Sluice logs through [logging] (or RUST_LOG), one access-log line per connection",
    ),
    ("log-tag", "Sluice logs through [logging] (or RUST_LOG)"),
    (
        "log-send-hostname",
        "Sluice logs through [logging] (or RUST_LOG)",
    ),
    (
        "nbthread",
        "Sluice's worker threads are set on its command line: --threads N",
    ),
    (
        "stats",
        "Sluice's statistics are its API ([api]) and Prometheus endpoint ([metrics])",
    ),
    (
        "user",
        "Sluice runs as the user that starts it (User= in a systemd unit)",
    ),
    (
        "group",
        "Sluice runs as the group that starts it (Group= in a systemd unit)",
    ),
    (
        "uid",
        "Sluice runs as the user that starts it (User= in a systemd unit)",
    ),
    (
        "gid",
        "Sluice runs as the group that starts it (Group= in a systemd unit)",
    ),
    (
        "daemon",
        "Sluice stays in the foreground; run it under a service manager",
    ),
    (
        "master-worker",
        "Sluice is one process; SIGHUP reloads its configuration",
    ),
    (
        "chroot",
        "Sluice does not chroot itself (RootDirectory= in a systemd unit)",
    ),
    (
        "pidfile",
        "Sluice writes its pid file when started with -p FILE (sluice -p /run/sluice.pid -c ...)",
    ),
    (
        "ulimit-n",
        "Sluice uses the descriptor limit it is started with (LimitNOFILE=)",
    ),
    (
        "spread-checks",
        "Sluice spreads its checks on its own (a jittered schedule)",
    ),
    ("description", "Sluice keeps no description"),
    ("node", "Sluice keeps no node name"),
    (
        "tune.ssl.default-dh-param",
        "rustls uses no finite-field Diffie-Hellman",
    ),
    (
        "ssl-default-bind-ciphers",
        "Sluice terminates no TLS in an HAProxy file",
    ),
    (
        "ssl-default-bind-ciphersuites",
        "Sluice terminates no TLS in an HAProxy file",
    ),
    (
        "ssl-default-bind-options",
        "Sluice terminates no TLS in an HAProxy file",
    ),
    (
        "ssl-default-server-ciphers",
        "Sluice speaks TLS 1.2 and 1.3 to servers with rustls' cipher suites",
    ),
    (
        "ssl-default-server-ciphersuites",
        "Sluice speaks TLS 1.2 and 1.3 to servers with rustls' cipher suites",
    ),
    (
        "ssl-default-server-options",
        "Sluice speaks TLS 1.2 and 1.3 to servers with rustls' cipher suites",
    ),
];

/// What Sluice takes from `global`.
const TAKEN: &[&str] = &["maxconn", "hard-stop-after", "ca-base", "ssl-server-verify"];

/// One line of `global`.
pub(super) fn line(ctx: &mut Ctx<'_>, global: &mut Global, line: &Line) {
    let keyword = line.keyword();
    if TAKEN.contains(&keyword) {
        let [value] = line.args(1) else {
            ctx.error(line.at(), format!("global: {keyword}: expected one value"));
            return;
        };
        let text = value.text.as_str();
        let set = match keyword {
            "maxconn" => values::number(text, 1, u32::MAX).map(|n| global.maxconn = Some(n)),
            "hard-stop-after" => values::time(text).map(|d| global.hard_stop_after = Some(d)),
            "ca-base" => {
                global.ca_base = Some(PathBuf::from(text));
                Ok(())
            }
            _ => match text {
                "none" | "required" => {
                    global.verify = Some(text == "required");
                    Ok(())
                }
                _ => Err(format!("expected none or required, found \"{text}\"")),
            },
        };
        if let Err(e) = set {
            ctx.error(value.at, format!("global: {keyword}: {e}"));
        }
        if keyword == "maxconn" {
            let message = "global: maxconn: taken as the limit of each frontend without its \
                           own maxconn; Sluice has no process-wide connection limit";
            ctx.warn(line.at(), message);
        }
        return;
    }
    if let Some((_, instead)) = ELSEWHERE.iter().find(|(k, _)| *k == keyword) {
        ctx.warn(line.at(), format!("global: {keyword}: ignored; {instead}"));
        return;
    }
    let mut known: Vec<&str> = ELSEWHERE.iter().map(|(k, _)| *k).collect();
    known.extend(TAKEN);
    let hint = nearest(keyword, &known)
        .map(|near| format!(" (did you mean \"{near}\"?)"))
        .unwrap_or_default();
    let message = format!("global: {keyword}: not supported by Sluice{hint}");
    ctx.error(line.at(), message);
}
