//! `[servers.NAME.healthcheck]` as the checks see it: the settings every kind shares and
//! each kind's own settings type, each serializing under its keys in the file; how
//! escapes in probe strings are written. A reader fills them from a file
//! (GoBetween's: `gobetween::health`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::{secrets, write_as, BytesRegex, TextRegex};

/// `[servers.NAME.healthcheck]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// `kind`, with the keys of its settings beside it.
    #[serde(flatten)]
    pub kind: HealthKind,
    #[serde(serialize_with = "write_as::duration")]
    pub interval: Duration,
    #[serde(serialize_with = "write_as::duration")]
    pub timeout: Duration,
    /// Consecutive failures that mark a healthy backend down.
    pub fails: u32,
    /// Consecutive passes that mark a down backend up.
    pub passes: u32,
    pub initial_status: InitialStatus,
    /// Consecutive connect failures on client connections that mark a backend down until
    /// the active check passes again; 0 disables passive health.
    pub passive_fails: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fails: 1,
            passes: 1,
            initial_status: InitialStatus::Healthy,
            passive_fails: 3,
        }
    }
}

/// What an active check does, with the settings of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    None,
    /// TCP connect.
    Ping,
    /// GoBetween's `probe`: send bytes, expect bytes back.
    Probe(ProbeSettings),
    /// GoBetween's `exec`: a command's output says.
    Exec(ExecSettings),
    /// An HTTP request (`http`), or over TLS (`https`, when `tls` is set).
    Http(HttpSettings),
    /// A TLS handshake.
    Tls(TlsSettings),
    /// A datagram answered.
    Udp(UdpSettings),
    Redis(RedisSettings),
    Mysql(MysqlSettings),
    Pgsql(PgsqlSettings),
}

/// `[servers.NAME.healthcheck]` as written: without a check, `kind = "none"` alone.
pub(crate) fn section<S: Serializer>(
    health: &HealthConfig,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct KindOnly<'a> {
        #[serde(flatten)]
        kind: &'a HealthKind,
    }
    match health.kind {
        HealthKind::None => KindOnly { kind: &health.kind }.serialize(serializer),
        _ => health.serialize(serializer),
    }
}

impl Serialize for HealthKind {
    /// `kind` and the keys of its settings, with the `tls_*` keys where TLS is spoken.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.name();
        match self {
            HealthKind::None | HealthKind::Ping => tagged(kind, &NoSettings {}, None, serializer),
            HealthKind::Probe(probe) => {
                let tls = (probe.protocol == ProbeProtocol::Tls).then_some(&probe.tls);
                tagged(kind, probe, tls, serializer)
            }
            HealthKind::Exec(exec) => tagged(kind, exec, None, serializer),
            HealthKind::Http(http) => tagged(kind, http, http.tls.as_ref(), serializer),
            HealthKind::Tls(tls) => tagged(kind, &NoSettings {}, Some(tls), serializer),
            HealthKind::Udp(udp) => tagged(kind, udp, None, serializer),
            HealthKind::Redis(redis) => tagged(kind, redis, None, serializer),
            HealthKind::Mysql(mysql) => tagged(kind, mysql, None, serializer),
            HealthKind::Pgsql(pgsql) => tagged(kind, pgsql, None, serializer),
        }
    }
}

/// The settings of a kind that has none of its own.
#[derive(Serialize)]
struct NoSettings {}

/// `kind`, the keys of `settings` and those of `tls`, side by side.
fn tagged<S: Serializer, T: Serialize>(
    kind: &str,
    settings: &T,
    tls: Option<&TlsSettings>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Tagged<'a, T> {
        kind: &'a str,
        #[serde(flatten)]
        settings: &'a T,
        #[serde(flatten)]
        tls: Option<&'a TlsSettings>,
    }
    Tagged {
        kind,
        settings,
        tls,
    }
    .serialize(serializer)
}

impl HealthKind {
    /// The `kind` value that configures it.
    pub fn name(&self) -> &'static str {
        match self {
            HealthKind::None => "none",
            HealthKind::Ping => "ping",
            HealthKind::Probe(_) => "probe",
            HealthKind::Exec(_) => "exec",
            HealthKind::Http(h) if h.tls.is_some() => "https",
            HealthKind::Http(_) => "http",
            HealthKind::Tls(_) => "tls",
            HealthKind::Udp(_) => "udp",
            HealthKind::Redis(_) => "redis",
            HealthKind::Mysql(_) => "mysql",
            HealthKind::Pgsql(_) => "pgsql",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialStatus {
    Healthy,
    Unhealthy,
}

/// `kind = "probe"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeSettings {
    #[serde(rename = "probe_protocol")]
    pub protocol: ProbeProtocol,
    /// What is said and what must come back.
    #[serde(flatten)]
    pub script: ProbeScript,
    /// For `probe_protocol = "tls"` (written beside the others by [`HealthKind`]).
    #[serde(skip)]
    pub tls: TlsSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProtocol {
    Tcp,
    Udp,
    Tls,
}

/// A probe's conversation with the backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ProbeScript {
    /// `probe_send`, then one reply of a known length (`probe_recv`, `probe_recv_len`)
    /// checked against `expect`; over TCP, UDP or TLS.
    Exchange {
        /// `probe_send`, escapes decoded.
        #[serde(rename = "probe_send", serialize_with = "write_as::escaped")]
        send: Vec<u8>,
        #[serde(flatten)]
        expect: ProbeExpect,
    },
    /// `probe_steps`: sends and expectations in turn over one connection (TCP or TLS),
    /// as HAProxy's `tcp-check send`/`expect` sequences and Samaritan's `atcp` actions.
    Steps {
        #[serde(rename = "probe_steps")]
        steps: Vec<ProbeStep>,
    },
}

/// One step of `probe_steps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ProbeStep {
    /// `{ send = "..." }`: these bytes (escapes decoded) are written.
    #[serde(rename = "send", serialize_with = "write_as::escaped")]
    Send(Vec<u8>),
    /// `{ expect = "..." }`: bytes are read until those received since the last
    /// expectation contain these (escapes decoded), at most [`MAX_RECV_LEN`] of them.
    #[serde(rename = "expect", serialize_with = "write_as::escaped")]
    Contains(Vec<u8>),
    /// `{ expect_regexp = "..." }`: bytes are read until those received since the last
    /// expectation match the expression, at most [`MAX_RECV_LEN`] of them.
    #[serde(rename = "expect_regexp")]
    Matches(BytesRegex),
}

/// What a probe's reply must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeExpect {
    /// `probe_strategy = "starts_with"`: the reply begins with these bytes (`probe_recv`,
    /// escapes decoded).
    StartsWith(Vec<u8>),
    /// `probe_strategy = "regexp"`: the first `len` bytes of the reply match `pattern`.
    Regexp { pattern: BytesRegex, len: u32 },
}

impl Serialize for ProbeExpect {
    /// `probe_strategy`, and `probe_recv` (with `probe_recv_len`) as it reads them.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(tag = "probe_strategy", rename_all = "snake_case")]
        enum Written<'a> {
            StartsWith {
                #[serde(rename = "probe_recv", serialize_with = "write_as::escaped")]
                recv: &'a [u8],
            },
            Regexp {
                #[serde(rename = "probe_recv")]
                pattern: &'a BytesRegex,
                #[serde(rename = "probe_recv_len")]
                len: u32,
            },
        }
        match self {
            ProbeExpect::StartsWith(recv) => Written::StartsWith { recv },
            ProbeExpect::Regexp { pattern, len } => Written::Regexp { pattern, len: *len },
        }
        .serialize(serializer)
    }
}

/// `kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecSettings {
    /// Run with the backend's host and port as its two arguments, without a shell. A
    /// relative path with a `/` is already taken from the configuration's directory; a
    /// bare name is looked up in `PATH`.
    #[serde(rename = "exec_command")]
    pub command: String,
    /// Output (trimmed) meaning healthy.
    #[serde(rename = "exec_expected_positive_output")]
    pub positive: String,
    /// Output (trimmed) meaning unhealthy; any other output is a failure too, logged as
    /// unexpected.
    #[serde(
        rename = "exec_expected_negative_output",
        skip_serializing_if = "Option::is_none"
    )]
    pub negative: Option<String>,
}

/// `kind = "http"` and `"https"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpSettings {
    /// `Some` for `https` (written beside the others by [`HealthKind`]).
    #[serde(skip)]
    pub tls: Option<TlsSettings>,
    #[serde(rename = "http_method")]
    pub method: String,
    #[serde(rename = "http_path")]
    pub path: String,
    /// The `Host` header; `None` sends the backend's `host:port`.
    #[serde(rename = "http_host", skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Accepted status codes, as inclusive ranges.
    #[serde(rename = "http_status", serialize_with = "status_ranges")]
    pub status: Vec<(u16, u16)>,
    /// A substring the body must contain.
    #[serde(rename = "http_body", skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A regular expression the body must match.
    #[serde(rename = "http_body_regexp", skip_serializing_if = "Option::is_none")]
    pub body_regexp: Option<TextRegex>,
}

/// Status ranges as `http_status` reads them: `"200"`, `"200-299"`.
fn status_ranges<S: Serializer>(ranges: &[(u16, u16)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ranges.iter().map(|&(lo, hi)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    }))
}

/// Accepted HTTP status codes by default.
pub const DEFAULT_HTTP_STATUS: (u16, u16) = (200, 299);

/// The most bytes a probe or a check reads from a reply.
pub const MAX_RECV_LEN: u32 = 64 * 1024;

/// `kind = "tls"`, and the TLS side of `https` and `probe_protocol = "tls"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    /// SNI and the name the certificate must carry; `None` uses the backend's `sni=` tag
    /// when it is one name, else its host.
    #[serde(rename = "tls_server_name", skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate (the handshake must still succeed).
    #[serde(rename = "tls_skip_verify")]
    pub skip_verify: bool,
    /// PEM file of trusted roots; `None` uses the system's bundle.
    #[serde(
        rename = "tls_ca_path",
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::optional_path"
    )]
    pub ca_path: Option<PathBuf>,
}

/// `kind = "udp"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UdpSettings {
    /// The datagram sent, escapes decoded.
    #[serde(rename = "udp_send", serialize_with = "write_as::escaped")]
    pub send: Vec<u8>,
    /// What the reply must begin with; `None` accepts any reply.
    #[serde(
        rename = "udp_recv",
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::optional_escaped"
    )]
    pub recv: Option<Vec<u8>>,
}

/// `kind = "redis"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedisSettings {
    #[serde(rename = "redis_user", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "redis_password",
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub password: Option<String>,
    #[serde(rename = "redis_role")]
    pub role: RedisRole,
}

/// The replication role a Redis backend must have to pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisRole {
    Master,
    #[default]
    Any,
}

/// `kind = "mysql"`: without a user, the server's greeting is enough; with one, a login
/// and `SELECT 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MysqlSettings {
    #[serde(rename = "mysql_user", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "mysql_password",
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub password: Option<String>,
}

/// `kind = "pgsql"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PgsqlSettings {
    #[serde(rename = "pgsql_user", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "pgsql_password",
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub password: Option<String>,
    #[serde(rename = "pgsql_database", skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// Decodes `\n \r \t \0 \\ \" \' \xNN` (GoBetween's `probe_send` syntax).
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let decoded = match bytes.next() {
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(b'\\') => b'\\',
            Some(b'"') => b'"',
            Some(b'\'') => b'\'',
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let digits = match hex {
                    // `from_str_radix` alone would take a sign: `\x+f`.
                    [Some(h), Some(l)] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        std::str::from_utf8(&[h, l])
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok())
                    }
                    _ => None,
                };
                digits.ok_or_else(|| "\\x must be followed by two hex digits".to_owned())?
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape \\{}; use \\n \\r \\t \\0 \\\\ \\\" or \\xNN",
                    char::from(other).escape_default()
                ))
            }
            None => return Err("ends with a lone backslash".to_owned()),
        };
        out.push(decoded);
    }
    Ok(out)
}

/// Bytes as a string [`unescape`] reads back exactly: printable ASCII as it is, the rest
/// escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b' '..=b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        assert_eq!(
            unescape(r"PING\r\n\x00\xfF\\").expect("valid"),
            b"PING\r\n\x00\xff\\"
        );
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unescape(&escape(&all)).expect("valid"), all);
        assert!(unescape(r"\q").is_err());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape("a\\").is_err());
    }

    #[test]
    fn hex_escapes_take_digits_only() {
        assert!(unescape(r"\x+f").is_err());
        assert!(unescape(r"\x-1").is_err());
        assert_eq!(unescape(r"\x0A").expect("valid"), b"\n");
    }
}
