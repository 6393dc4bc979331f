//! `kind = "redis"`: the backend answers `PING` over RESP, after `AUTH` when a password
//! is configured and, if asked, reports itself the replication master.

use super::wire::{connect, malformed, Conn, Parsed};
use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::ProxyVersion;

/// What a Redis backend must be to pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisRole {
    /// Any server that answers `PING`.
    #[default]
    Any,
    /// Only the replication master (`role:master` in `INFO replication`), so that a
    /// server taking writes never sends them to a read-only replica.
    Master,
}

/// Passes when the backend authenticates (if a password is set), answers `PING` with
/// `PONG`, and has the wanted [`RedisRole`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisCheck {
    /// Sent with `AUTH`; without it no `AUTH` is sent.
    pub password: Option<String>,
    /// ACL user for `AUTH user password` (Redis 6+); used only with a password.
    pub user: Option<String>,
    pub role: RedisRole,
    /// The PROXY header version the server sends its backends; checks send it too.
    pub proxy: Option<ProxyVersion>,
}

/// The largest reply read. `INFO replication` is the longest one asked for: about 100
/// bytes per replica.
const MAX_REPLY: usize = 64 * 1024;

/// Everything read over one check.
const MAX_READ: usize = 4 * MAX_REPLY;

impl HealthCheck for RedisCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(self.run(backend))
    }
}

impl RedisCheck {
    async fn run(&self, backend: &Backend) -> Result<(), CheckError> {
        let mut conn = Conn::new(connect(backend, self.proxy).await?, MAX_REPLY, MAX_READ);
        // Every command goes out in one write and the replies are read in order: one
        // round trip, and a failed AUTH is still reported as such, before PING's NOAUTH.
        let mut out = Vec::new();
        if let Some(password) = &self.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &self.user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            out.extend(command(&args));
        }
        out.extend(command(&[b"PING"]));
        if self.role == RedisRole::Master {
            out.extend(command(&[b"INFO", b"replication"]));
        }
        conn.send(&out).await?;

        if self.password.is_some() {
            expect_status("AUTH", conn.next(parse_reply).await?, "OK")?;
        }
        expect_status("PING", conn.next(parse_reply).await?, "PONG")?;
        if self.role == RedisRole::Master {
            let info = match conn.next(parse_reply).await? {
                Reply::Bulk(Some(info)) => info,
                other => return Err(unexpected("INFO", other)),
            };
            let role = info_field(&info, "role")
                .ok_or_else(|| malformed("INFO replication without a role"))?;
            if role != "master" {
                return Err(CheckError::Unhealthy(format!("role is {role}")));
            }
        }
        Ok(())
    }
}

/// One RESP2 reply. Arrays are never asked for, so they are not parsed.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
}

/// A command as a RESP array of bulk strings, so arguments may hold any byte.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).into_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        // An endless line is ended by the connection's size cap.
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..eol].split_first() else {
        return Err(malformed("an empty line"));
    };
    let after = eol + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let reply = match kind {
        b'+' => Reply::Status(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Integer(parse_int(line)?),
        b'$' => {
            let len = parse_int(line)?;
            if len == -1 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= MAX_REPLY)
                .ok_or_else(|| malformed(format!("a bulk string of length {len}")))?;
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(malformed("a bulk string longer than its length"));
            }
            return Ok(Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)));
        }
        b'*' => return Err(malformed("an array where none was expected")),
        other => {
            return Err(malformed(format!(
                "a reply starting with {:?}",
                char::from(other)
            )))
        }
    };
    Ok(Some((reply, after)))
}

fn parse_int(line: &[u8]) -> Result<i64, CheckError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("a bad integer"))
}

fn expect_status(cmd: &str, reply: Reply, want: &str) -> Result<(), CheckError> {
    match reply {
        Reply::Status(s) if s == want => Ok(()),
        other => Err(unexpected(cmd, other)),
    }
}

/// An error reply carries Redis's own words (`WRONGPASS …`, `NOAUTH …`, `LOADING …`).
fn unexpected(cmd: &str, reply: Reply) -> CheckError {
    CheckError::Unhealthy(match reply {
        Reply::Error(e) => format!("{cmd}: {e}"),
        Reply::Status(s) => format!("{cmd}: unexpected reply +{s}"),
        Reply::Integer(i) => format!("{cmd}: unexpected reply :{i}"),
        Reply::Bulk(_) => format!("{cmd}: unexpected bulk reply"),
    })
}

/// The value of `name:value` in an `INFO` section.
fn info_field(info: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(info).lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Reply {
        match parse_reply(bytes) {
            Ok(Some((reply, used))) => {
                assert_eq!(used, bytes.len());
                reply
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&[b"AUTH", b"a b\r\n"]),
            b"*2\r\n$4\r\nAUTH\r\n$5\r\na b\r\n\r\n"
        );
    }

    #[test]
    fn parses_each_reply_kind() {
        assert_eq!(parse_all(b"+PONG\r\n"), Reply::Status("PONG".into()));
        assert_eq!(
            parse_all(b"-WRONGPASS invalid\r\n"),
            Reply::Error("WRONGPASS invalid".into())
        );
        assert_eq!(parse_all(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(parse_all(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(parse_all(b"$0\r\n\r\n"), Reply::Bulk(Some(vec![])));
        // A bulk string may hold CRLF: its length, not a line end, ends it.
        assert_eq!(
            parse_all(b"$4\r\na\r\nb\r\n"),
            Reply::Bulk(Some(b"a\r\nb".to_vec()))
        );
    }

    #[test]
    fn every_prefix_asks_for_more_and_the_rest_stays() {
        let whole = b"$17\r\n# Replication\r\nro\r\n+OK\r\n";
        let first = 24;
        for cut in 0..first {
            assert!(
                matches!(parse_reply(&whole[..cut]), Ok(None)),
                "prefix of {cut} bytes"
            );
        }
        let (reply, used) = parse_reply(whole).expect("ok").expect("whole");
        assert_eq!(used, first);
        assert_eq!(reply, Reply::Bulk(Some(b"# Replication\r\nro".to_vec())));
        assert_eq!(parse_all(&whole[used..]), Reply::Status("OK".into()));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"\r\n"[..],
            b"!x\r\n",
            b"*1\r\n$1\r\na\r\n",
            b":x\r\n",
            b"$-2\r\n",
            b"$99999999999\r\n",
            b"$1\r\nabc\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_the_role_in_info() {
        let info = b"# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n";
        assert_eq!(info_field(info, "role").as_deref(), Some("slave"));
        assert_eq!(info_field(info, "nope"), None);
    }
}
