//! `[servers.NAME.healthcheck]` as the checks see it: the settings every kind shares and
//! each kind's own settings type; how escapes in probe strings are written. The reader
//! that fills them from a file is `health_reader`.

use std::path::PathBuf;
use std::time::Duration;

use super::{BytesRegex, TextRegex};

/// `[servers.NAME.healthcheck]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialStatus {
    Healthy,
    Unhealthy,
}

/// `kind = "probe"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    pub protocol: ProbeProtocol,
    /// `probe_send`, escapes decoded.
    pub send: Vec<u8>,
    pub expect: ProbeExpect,
    /// For `probe_protocol = "tls"`.
    pub tls: TlsSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
    Tls,
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

/// `kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSettings {
    /// Run with the backend's host and port as its two arguments, without a shell. A
    /// relative path with a `/` is already taken from the configuration's directory; a
    /// bare name is looked up in `PATH`.
    pub command: String,
    /// Output (trimmed) meaning healthy.
    pub positive: String,
    /// Output (trimmed) meaning unhealthy; any other output is a failure too, logged as
    /// unexpected.
    pub negative: Option<String>,
}

/// `kind = "http"` and `"https"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// `Some` for `https`.
    pub tls: Option<TlsSettings>,
    pub method: String,
    pub path: String,
    /// The `Host` header; `None` sends the backend's `host:port`.
    pub host: Option<String>,
    /// Accepted status codes, as inclusive ranges.
    pub status: Vec<(u16, u16)>,
    /// A substring the body must contain.
    pub body: Option<String>,
    /// A regular expression the body must match.
    pub body_regexp: Option<TextRegex>,
}

/// Accepted HTTP status codes by default.
pub const DEFAULT_HTTP_STATUS: (u16, u16) = (200, 299);

/// The most bytes a probe or a check reads from a reply.
pub const MAX_RECV_LEN: u32 = 64 * 1024;

/// `kind = "tls"`, and the TLS side of `https` and `probe_protocol = "tls"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// SNI and the name the certificate must carry; `None` uses the backend's `sni=` tag
    /// when it is one name, else its host.
    pub server_name: Option<String>,
    /// Accept any certificate (the handshake must still succeed).
    pub skip_verify: bool,
    /// PEM file of trusted roots; `None` uses the system's bundle.
    pub ca_path: Option<PathBuf>,
}

/// `kind = "udp"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSettings {
    /// The datagram sent, escapes decoded.
    pub send: Vec<u8>,
    /// What the reply must begin with; `None` accepts any reply.
    pub recv: Option<Vec<u8>>,
}

/// `kind = "redis"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisSettings {
    pub user: Option<String>,
    pub password: Option<String>,
    pub role: RedisRole,
}

/// The replication role a Redis backend must have to pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisRole {
    Master,
    #[default]
    Any,
}

/// `kind = "mysql"`: without a user, the server's greeting is enough; with one, a login
/// and `SELECT 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MysqlSettings {
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `kind = "pgsql"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgsqlSettings {
    pub user: Option<String>,
    pub password: Option<String>,
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
