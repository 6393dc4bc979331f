//! `server NAME ADDRESS [OPTIONS]` and `default-server [OPTIONS]`: the options a line
//! sets, over those of `default-server`.

use std::path::PathBuf;
use std::time::Duration;

use super::sections::Proxy;
use super::values;
use super::words::{nearest, Line, Word};
use super::Ctx;
use crate::backend::BackendSpec;
use crate::config::ProxyVersion;

/// A server line's options; `None` is "not set here".
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ServerOptions {
    pub check: Option<bool>,
    pub inter: Option<Duration>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
    /// `init-state`: whether the server starts down.
    pub starts_down: Option<bool>,
    pub weight: Option<u32>,
    pub backup: Option<bool>,
    pub maxconn: Option<u32>,
    pub send_proxy: Option<Option<ProxyVersion>>,
    pub disabled: Option<bool>,
    pub ssl: Option<bool>,
    /// `verify required` (`Some(true)`) or `verify none`.
    pub verify: Option<bool>,
    pub ca_file: Option<PathBuf>,
    /// `sni str(NAME)`.
    pub sni: Option<String>,
    pub slowstart: Option<Duration>,
    /// `on-marked-down shutdown-sessions`.
    pub shutdown_on_down: Option<bool>,
}

impl ServerOptions {
    /// These options over `defaults`.
    pub fn over(&self, defaults: &ServerOptions) -> ServerOptions {
        ServerOptions {
            check: self.check.or(defaults.check),
            inter: self.inter.or(defaults.inter),
            fall: self.fall.or(defaults.fall),
            rise: self.rise.or(defaults.rise),
            starts_down: self.starts_down.or(defaults.starts_down),
            weight: self.weight.or(defaults.weight),
            backup: self.backup.or(defaults.backup),
            maxconn: self.maxconn.or(defaults.maxconn),
            send_proxy: self.send_proxy.or(defaults.send_proxy),
            disabled: self.disabled.or(defaults.disabled),
            ssl: self.ssl.or(defaults.ssl),
            verify: self.verify.or(defaults.verify),
            ca_file: self.ca_file.clone().or_else(|| defaults.ca_file.clone()),
            sni: self.sni.clone().or_else(|| defaults.sni.clone()),
            slowstart: self.slowstart.or(defaults.slowstart),
            shutdown_on_down: self.shutdown_on_down.or(defaults.shutdown_on_down),
        }
    }
}

/// One `server` line.
#[derive(Clone, Debug)]
pub(super) struct ServerLine {
    pub name: String,
    pub at: usize,
    pub spec: BackendSpec,
    /// Its options over the proxy's `default-server`.
    pub options: ServerOptions,
    /// Every option on the line read.
    pub complete: bool,
}

/// Options Sluice has no counterpart for, with why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("port", "Sluice checks a backend on its own address"),
    ("addr", "Sluice checks a backend on its own address"),
    ("agent-check", "Sluice has no agent checks"),
    ("track", "each backend is checked on its own"),
    (
        "observe",
        "Sluice's passive health is not configurable from HAProxy's file",
    ),
    (
        "resolvers",
        "Sluice resolves a backend's host name when it connects",
    ),
    (
        "init-addr",
        "Sluice resolves a backend's host name when it connects",
    ),
    (
        "crt",
        "a client certificate is [servers.NAME.backends_tls] cert_path and key_path",
    ),
    (
        "check-ssl",
        "Sluice's check speaks TLS by its kind, not per server",
    ),
    ("check-send-proxy", "Sluice's checks send no PROXY header"),
    ("cookie", "cookies have no meaning at layer 4"),
    ("fastinter", "Sluice checks at one interval"),
    ("downinter", "Sluice checks at one interval"),
    ("id", "Sluice names a backend by its address"),
    (
        "maxqueue",
        "Sluice does not queue; a backend at maxconn takes no new connection",
    ),
];

/// Every option this reader knows, for "did you mean".
const KNOWN: &[&str] = &[
    "check",
    "no-check",
    "inter",
    "fall",
    "rise",
    "init-state",
    "weight",
    "backup",
    "no-backup",
    "maxconn",
    "send-proxy",
    "send-proxy-v2",
    "no-send-proxy",
    "disabled",
    "enabled",
    "ssl",
    "no-ssl",
    "verify",
    "ca-file",
    "sni",
    "slowstart",
    "on-marked-down",
];

/// A `server` line of `proxy`.
pub(super) fn server(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let title = proxy.title();
    let [name, address, options @ ..] = line.args(1) else {
        ctx.error(
            line.at(),
            format!("{title}: server: expected server NAME ADDRESS:PORT [OPTIONS]"),
        );
        return;
    };
    let context = format!("{title}: server {}", name.text);
    if let Some(other) = proxy.servers.iter().find(|s| s.name == name.text) {
        let (line, _) = ctx.src.position(other.at);
        ctx.error(
            name.at,
            format!("{context}: a server of this name is on line {line}"),
        );
        proxy.broken = true;
    }
    let spec = match values::server_address(&address.text) {
        Ok(spec) => spec,
        Err(e) => {
            ctx.error(address.at, format!("{context}: {e}"));
            proxy.broken = true;
            return;
        }
    };
    let mut own = ServerOptions::default();
    let complete = self::options(ctx, &context, &mut own, options);
    proxy.broken |= !complete;
    // Kept even if an option failed, so that the lines after it are checked against it.
    proxy.servers.push(ServerLine {
        name: name.text.clone(),
        at: line.at(),
        spec,
        options: own.over(&proxy.settings.default_server),
        complete,
    });
}

/// Reads `words` into `options`; whether every one read.
pub(super) fn options(
    ctx: &mut Ctx<'_>,
    context: &str,
    options: &mut ServerOptions,
    words: &[Word],
) -> bool {
    let mut ok = true;
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let option = word.text.as_str();
        let value = words.get(i + 1);
        let mut fail = |ctx: &mut Ctx<'_>, at: usize, message: String| {
            ctx.error(at, format!("{context}: {option}: {message}"));
            ok = false;
        };
        // Options with a value take the next word.
        let takes_value = matches!(
            option,
            "inter"
                | "fall"
                | "rise"
                | "weight"
                | "maxconn"
                | "verify"
                | "ca-file"
                | "sni"
                | "init-state"
                | "slowstart"
                | "on-marked-down"
        );
        if takes_value && value.is_none() {
            fail(ctx, word.at, "expected a value after it".to_owned());
            break;
        }
        let text = value.map_or("", |v| v.text.as_str());
        let at = value.map_or(word.at, |v| v.at);
        let set = |ctx: &mut Ctx<'_>, result: Result<(), String>| -> bool {
            match result {
                Ok(()) => true,
                Err(e) => {
                    ctx.error(at, format!("{context}: {option}: {e}"));
                    false
                }
            }
        };
        let done = match option {
            "check" => put(&mut options.check, true),
            "no-check" => put(&mut options.check, false),
            "inter" => values::time(text).and_then(|d| {
                if d.is_zero() {
                    Err("must be greater than 0".to_owned())
                } else {
                    put(&mut options.inter, d)
                }
            }),
            "fall" => values::number(text, 1, 1000).map(|n| options.fall = Some(n)),
            "rise" => values::number(text, 1, 1000).map(|n| options.rise = Some(n)),
            "init-state" => match text {
                "up" | "fully-up" => put(&mut options.starts_down, false),
                "down" | "fully-down" => put(&mut options.starts_down, true),
                "none" => {
                    options.starts_down = None;
                    Ok(())
                }
                _ => Err(format!(
                    "expected up, fully-up, down or fully-down, found \"{text}\""
                )),
            },
            "weight" => values::number(text, 0, 256).map(|n| options.weight = Some(n)),
            "maxconn" => values::number(text, 0, u32::MAX).map(|n| options.maxconn = Some(n)),
            "backup" => put(&mut options.backup, true),
            "no-backup" => put(&mut options.backup, false),
            "send-proxy" => put(&mut options.send_proxy, Some(ProxyVersion::V1)),
            "send-proxy-v2" => put(&mut options.send_proxy, Some(ProxyVersion::V2)),
            "no-send-proxy" | "no-send-proxy-v2" => put(&mut options.send_proxy, None),
            "disabled" => put(&mut options.disabled, true),
            "enabled" => put(&mut options.disabled, false),
            "ssl" => put(&mut options.ssl, true),
            "no-ssl" => put(&mut options.ssl, false),
            "verify" => match text {
                "none" => put(&mut options.verify, false),
                "required" => put(&mut options.verify, true),
                _ => Err(format!("expected none or required, found \"{text}\"")),
            },
            "ca-file" => put(&mut options.ca_file, PathBuf::from(text)),
            "slowstart" => values::time(text).and_then(|d| put(&mut options.slowstart, d)),
            "on-marked-down" => match text {
                "shutdown-sessions" => put(&mut options.shutdown_on_down, true),
                "shutdown-backup-sessions" => Err(
                    "shutdown-backup-sessions is not supported; Sluice closes the down \
                     server's own connections (shutdown-sessions)"
                        .to_owned(),
                ),
                _ => Err(format!("expected shutdown-sessions, found \"{text}\"")),
            },
            "sni" => match text.strip_prefix("str(").and_then(|t| t.strip_suffix(')')) {
                Some(name) if rustls_pki_types::ServerName::try_from(name).is_ok() => {
                    put(&mut options.sni, name.to_owned())
                }
                Some(name) => Err(format!("\"{name}\" is not a host name or IP address")),
                _ => Err(format!(
                    "expected str(NAME), found \"{text}\"; Sluice sends one fixed name \
                     (or each backend's host)"
                )),
            },
            _ => {
                let message = match UNSUPPORTED.iter().find(|(k, _)| *k == option) {
                    Some((_, why)) => format!("not supported; {why}"),
                    None => match nearest(option, KNOWN) {
                        Some(near) => format!("unknown option (did you mean \"{near}\"?)"),
                        None => format!("unknown option; expected one of {}", KNOWN.join(", ")),
                    },
                };
                fail(ctx, word.at, message);
                // Its value, if any, is not known: stop at the first unknown option.
                break;
            }
        };
        if !set(ctx, done) {
            ok = false;
        }
        i += if takes_value { 2 } else { 1 };
    }
    ok
}

/// Sets an option.
fn put<T>(slot: &mut Option<T>, value: T) -> Result<(), String> {
    *slot = Some(value);
    Ok(())
}
