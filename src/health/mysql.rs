//! `kind = "mysql"`: a MySQL or MariaDB server greets with a protocol-10 handshake and,
//! with a login configured, accepts it and answers `SELECT 1`.
//!
//! Logins use `mysql_native_password` (MariaDB's default), or the fast path of
//! `caching_sha2_password` (MySQL 8's default), which works once the server has cached
//! the user's password; its full path needs TLS or RSA and is reported as unsupported.

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::wire::{connect, malformed, Conn, Cursor, Parsed};
use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::ProxyVersion;

/// Passes when the server greets (and, with a login, accepts it and runs `SELECT 1`).
///
/// Without a login the check reads the greeting and hangs up. MySQL counts such aborted
/// handshakes against `max_connect_errors` and may block the checker's host after many
/// of them; a login avoids that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqlCheck {
    /// `(user, password)`; an empty password logs in without one.
    pub login: Option<(String, String)>,
    /// The PROXY header version the server sends its backends; checks send it too.
    pub proxy: Option<ProxyVersion>,
}

/// The largest packet read: a greeting, an error or one row of `SELECT 1` is far less.
const MAX_PACKET: usize = 16 * 1024;

/// Everything read over one check.
const MAX_READ: usize = 8 * MAX_PACKET;

/// Packets read after sending the query, before giving up on its end.
const MAX_RESULT_PACKETS: usize = 32;

/// Authentication round trips (plugin switches, "more data") before giving up.
const MAX_AUTH_STEPS: usize = 4;

const CLIENT_LONG_PASSWORD: u32 = 0x0001;
const CLIENT_PROTOCOL_41: u32 = 0x0200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;

const NATIVE: &str = "mysql_native_password";
const CACHING_SHA2: &str = "caching_sha2_password";

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;

impl HealthCheck for MysqlCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(self.run(backend))
    }
}

impl MysqlCheck {
    async fn run(&self, backend: &Backend) -> Result<(), CheckError> {
        let mut conn = Conn::new(connect(backend, self.proxy).await?, MAX_PACKET, MAX_READ);
        let hello = conn.next(parse_packet).await?;
        let greeting = parse_greeting(&hello.payload)?;
        let Some((user, password)) = &self.login else {
            return Ok(());
        };
        login(&mut conn, &greeting, hello.seq, user, password).await?;
        query(&mut conn).await?;
        // The check has passed; a lost QUIT only leaves the server to notice the close.
        let _ = conn.send(&packet(0, &[COM_QUIT])).await;
        Ok(())
    }
}

/// Logs in, answering the server's plugin switches.
async fn login(
    conn: &mut Conn,
    greeting: &Greeting,
    greeting_seq: u8,
    user: &str,
    password: &str,
) -> Result<(), CheckError> {
    if greeting.capabilities & CLIENT_PROTOCOL_41 == 0
        || greeting.capabilities & CLIENT_SECURE_CONNECTION == 0
    {
        return Err(CheckError::Unhealthy(
            "server predates the MySQL 4.1 protocol".into(),
        ));
    }
    // Start with the server's default plugin when it is one we speak; otherwise with
    // mysql_native_password, and the server asks to switch if the user needs another.
    let plugin = match greeting.plugin.as_deref() {
        Some(CACHING_SHA2) => CACHING_SHA2,
        _ => NATIVE,
    };
    let auth = scramble(plugin, password.as_bytes(), &greeting.nonce)?;
    let response = handshake_response(greeting.capabilities, user, &auth, plugin);
    let mut seq = greeting_seq.wrapping_add(1);
    conn.send(&packet(seq, &response)).await?;
    let mut plugin = plugin;
    for _ in 0..MAX_AUTH_STEPS {
        let reply = conn.next(parse_packet).await?;
        seq = reply.seq;
        match reply.payload.first() {
            Some(0x00) => return Ok(()),
            Some(0xff) => {
                return Err(CheckError::Unhealthy(format!(
                    "login refused: {}",
                    error_text(&reply.payload)
                )))
            }
            Some(0xfe) => {
                let (name, nonce) = parse_auth_switch(&reply.payload)?;
                plugin = match name.as_str() {
                    NATIVE => NATIVE,
                    CACHING_SHA2 => CACHING_SHA2,
                    _ => {
                        return Err(CheckError::Unhealthy(format!(
                            "the user needs authentication plugin {name}, which this check does not speak"
                        )))
                    }
                };
                let auth = scramble(plugin, password.as_bytes(), &nonce)?;
                seq = seq.wrapping_add(1);
                conn.send(&packet(seq, &auth)).await?;
            }
            // AuthMoreData: caching_sha2_password says whether its cache had the user.
            Some(0x01) if plugin == CACHING_SHA2 => match reply.payload.get(1) {
                // Fast authentication succeeded; the OK packet follows.
                Some(0x03) => {}
                Some(0x04) => {
                    return Err(CheckError::Unhealthy(
                        "caching_sha2_password wants full authentication (TLS or RSA), \
                         which this check does not do; it succeeds once the server has \
                         cached the user's password from another client's login"
                            .into(),
                    ))
                }
                _ => return Err(malformed("caching_sha2_password step")),
            },
            _ => return Err(malformed("an unexpected packet during login")),
        }
    }
    Err(malformed("a login that does not end"))
}

/// Runs `SELECT 1` and reads its whole result set, which must hold a row.
async fn query(conn: &mut Conn) -> Result<(), CheckError> {
    let mut body = vec![COM_QUERY];
    body.extend_from_slice(b"SELECT 1");
    conn.send(&packet(0, &body)).await?;
    let first = conn.next(parse_packet).await?;
    match first.payload.first() {
        Some(0xff) => {
            return Err(CheckError::Unhealthy(format!(
                "SELECT 1 failed: {}",
                error_text(&first.payload)
            )))
        }
        Some(0x00) | None => return Err(malformed("SELECT 1 without a result set")),
        Some(_) => {}
    }
    // Without CLIENT_DEPRECATE_EOF: column definitions, EOF, rows, EOF.
    let mut eofs = 0;
    let mut rows = 0;
    for _ in 0..MAX_RESULT_PACKETS {
        let p = conn.next(parse_packet).await?;
        match p.payload.first() {
            Some(0xff) => {
                return Err(CheckError::Unhealthy(format!(
                    "SELECT 1 failed: {}",
                    error_text(&p.payload)
                )))
            }
            Some(0xfe) if p.payload.len() < 9 => {
                eofs += 1;
                if eofs == 2 {
                    return if rows > 0 {
                        Ok(())
                    } else {
                        Err(malformed("SELECT 1 returned no row"))
                    };
                }
            }
            _ if eofs == 1 => rows += 1,
            _ => {}
        }
    }
    Err(malformed("a result set that does not end"))
}

/// One packet: its sequence number and payload.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    seq: u8,
    payload: Vec<u8>,
}

fn parse_packet(buf: &[u8]) -> Parsed<Packet> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    // Also refuses 0xffffff, the marker of a payload split over several packets, which
    // nothing a check asks for needs.
    if len > MAX_PACKET - 4 {
        return Err(malformed(format!("a packet of {len} bytes")));
    }
    let Some(payload) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((
        Packet {
            seq: header[3],
            payload: payload.to_vec(),
        },
        4 + len,
    )))
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    // Every payload sent here is small; the length fits the 3 bytes with room to spare.
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// What the login needs from the server's greeting.
#[derive(Debug, PartialEq, Eq)]
struct Greeting {
    capabilities: u32,
    /// The 20-byte scramble the password is hashed with.
    nonce: Vec<u8>,
    /// The server's default authentication plugin.
    plugin: Option<String>,
}

/// Parses the greeting: a protocol-10 handshake, or an error packet a server sends
/// instead of one (too many connections, host blocked).
fn parse_greeting(payload: &[u8]) -> Result<Greeting, CheckError> {
    let mut c = Cursor::new(payload);
    match c.u8()? {
        10 => {}
        0xff => return Err(CheckError::Unhealthy(error_text(payload))),
        v => {
            return Err(CheckError::Unhealthy(format!(
                "unsupported protocol version {v}"
            )))
        }
    }
    let _server_version = c.cstr()?;
    let _connection_id = c.take(4)?;
    let mut nonce = c.take(8)?.to_vec();
    let _filler = c.u8()?;
    let low = c.array::<2>()?;
    let mut capabilities = u32::from(u16::from_le_bytes(low));
    if c.is_empty() {
        return Ok(Greeting {
            capabilities,
            nonce,
            plugin: None,
        });
    }
    let _charset = c.u8()?;
    let _status = c.take(2)?;
    let high = c.array::<2>()?;
    capabilities |= u32::from(u16::from_le_bytes(high)) << 16;
    let auth_data_len = usize::from(c.u8()?);
    let _reserved = c.take(10)?;
    if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        // The second part is at least 13 bytes, the last of them a NUL.
        let part2 = c.take(auth_data_len.saturating_sub(8).max(13))?;
        let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
        nonce.extend_from_slice(part2);
    }
    let plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 && !c.is_empty() {
        // Some servers omit the plugin name's terminating NUL.
        let rest = c.rest();
        let name = rest.strip_suffix(&[0]).unwrap_or(rest);
        Some(String::from_utf8_lossy(name).into_owned())
    } else {
        None
    };
    Ok(Greeting {
        capabilities,
        nonce,
        plugin,
    })
}

/// `HandshakeResponse41` without a database.
fn handshake_response(server_caps: u32, user: &str, auth: &[u8], plugin: &str) -> Vec<u8> {
    let wanted = CLIENT_LONG_PASSWORD
        | CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | (server_caps & CLIENT_PLUGIN_AUTH);
    let mut out = Vec::with_capacity(64 + user.len());
    out.extend_from_slice(&wanted.to_le_bytes());
    out.extend_from_slice(&(MAX_PACKET as u32).to_le_bytes());
    out.push(33); // utf8_general_ci: known to every server since 4.1
    out.extend_from_slice(&[0; 23]);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    // Scrambles are 20 or 32 bytes: the one-byte length always fits.
    out.push(auth.len() as u8);
    out.extend_from_slice(auth);
    if wanted & CLIENT_PLUGIN_AUTH != 0 {
        out.extend_from_slice(plugin.as_bytes());
        out.push(0);
    }
    out
}

/// `AuthSwitchRequest`: the plugin the server wants and its new nonce.
fn parse_auth_switch(payload: &[u8]) -> Result<(String, Vec<u8>), CheckError> {
    let mut c = Cursor::new(payload);
    let _marker = c.u8()?;
    if c.is_empty() {
        // The pre-4.1 switch to mysql_old_password, whose hash is long broken.
        return Err(CheckError::Unhealthy(
            "the server asks for mysql_old_password, which this check does not speak".into(),
        ));
    }
    let name = String::from_utf8_lossy(c.cstr()?).into_owned();
    let rest = c.rest();
    let nonce = rest.strip_suffix(&[0]).unwrap_or(rest).to_vec();
    Ok((name, nonce))
}

/// The password proof for `plugin` over the server's `nonce`.
fn scramble(plugin: &str, password: &[u8], nonce: &[u8]) -> Result<Vec<u8>, CheckError> {
    if password.is_empty() {
        return Ok(Vec::new());
    }
    if nonce.len() < 20 {
        return Err(malformed(format!("a scramble of {} bytes", nonce.len())));
    }
    let nonce = &nonce[..20];
    Ok(match plugin {
        CACHING_SHA2 => {
            // SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)
            let h1 = Sha256::digest(password);
            let h2 = Sha256::digest(h1);
            let h3 = Sha256::new()
                .chain_update(h2)
                .chain_update(nonce)
                .finalize();
            h1.iter().zip(h3).map(|(a, b)| a ^ b).collect()
        }
        _ => {
            // SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))
            let h1 = Sha1::digest(password);
            let h2 = Sha1::digest(h1);
            let h3 = Sha1::new().chain_update(nonce).chain_update(h2).finalize();
            h1.iter().zip(h3).map(|(a, b)| a ^ b).collect()
        }
    })
}

/// `error CODE: message` from an ERR packet, with or without its SQL state.
fn error_text(payload: &[u8]) -> String {
    let mut c = Cursor::new(payload);
    let _marker = c.u8();
    let code = c.array::<2>().map(u16::from_le_bytes).unwrap_or(0);
    let mut rest = c.rest();
    if rest.first() == Some(&b'#') && rest.len() >= 6 {
        rest = &rest[6..];
    }
    format!("error {code}: {}", String::from_utf8_lossy(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MariaDB 10.11 greeting as sent on the wire.
    fn mariadb_greeting() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"5.5.5-10.11.19-MariaDB\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&0xf7feu16.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&0x81bfu16.to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[0x1d, 0, 0, 0]);
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        packet(0, &p)
    }

    #[test]
    fn parses_a_greeting_split_anywhere() {
        let wire = mariadb_greeting();
        for cut in 0..wire.len() {
            assert!(matches!(parse_packet(&wire[..cut]), Ok(None)), "{cut}");
        }
        let (p, used) = parse_packet(&wire).expect("ok").expect("whole");
        assert_eq!(used, wire.len());
        let g = parse_greeting(&p.payload).expect("greeting");
        assert_eq!(g.nonce, b"abcdefghijklmnopqrst");
        assert_eq!(g.plugin.as_deref(), Some(NATIVE));
        assert_ne!(g.capabilities & CLIENT_PLUGIN_AUTH, 0);
    }

    #[test]
    fn a_truncated_greeting_is_an_error_not_a_panic() {
        let wire = mariadb_greeting();
        let payload = &wire[4..];
        for cut in 1..payload.len() - 22 {
            let _ = parse_greeting(&payload[..cut]);
        }
        assert!(parse_greeting(&payload[..20]).is_err());
        assert!(parse_greeting(&[]).is_err());
    }

    #[test]
    fn an_oversized_packet_is_refused_from_its_header() {
        assert!(parse_packet(&[0xff, 0xff, 0xff, 0]).is_err());
        assert!(parse_packet(&[0x00, 0x40, 0x00, 0]).is_err());
    }

    #[test]
    fn an_error_greeting_says_why() {
        // Too many connections, as sent before any handshake: no SQL state.
        let mut p = vec![0xff, 0x10, 0x04];
        p.extend_from_slice(b"Too many connections");
        match parse_greeting(&p) {
            Err(CheckError::Unhealthy(m)) => assert_eq!(m, "error 1040: Too many connections"),
            other => panic!("{other:?}"),
        }
        let mut p = vec![0xff, 0x15, 0x04, b'#'];
        p.extend_from_slice(b"28000Access denied");
        assert_eq!(error_text(&p), "error 1045: Access denied");
        assert_eq!(error_text(&[0xff]), "error 0: ");
    }

    #[test]
    fn native_password_scramble_matches_a_known_vector() {
        let out = scramble(NATIVE, b"kingshard", b"@jx=d_3z42;sS$YrS)p|").expect("scramble");
        assert_eq!(
            super::super::wire::hex(&out),
            "fbc71db5ac3d7b51048d1a1d88c1677f34bcca11"
        );
        assert!(scramble(NATIVE, b"", b"short").expect("empty").is_empty());
        assert!(scramble(NATIVE, b"pw", b"short").is_err());
    }

    #[test]
    fn caching_sha2_scramble_matches_a_known_vector() {
        let nonce = [
            10, 47, 74, 111, 75, 73, 34, 48, 88, 76, 114, 74, 37, 13, 3, 80, 82, 2, 23, 21,
        ];
        let out = scramble(CACHING_SHA2, b"secret", &nonce).expect("scramble");
        assert_eq!(
            super::super::wire::hex(&out),
            "f490e76f66d9d86665ce54d98c78d0acfe2fb0b08b423da807144873d30b312c"
        );
    }

    #[test]
    fn auth_switch_names_the_plugin() {
        let mut p = vec![0xfe];
        p.extend_from_slice(b"client_ed25519\0");
        p.extend_from_slice(&[1; 32]);
        let (name, nonce) = parse_auth_switch(&p).expect("switch");
        assert_eq!(name, "client_ed25519");
        assert_eq!(nonce.len(), 32);
        assert!(parse_auth_switch(&[0xfe]).is_err());
        assert!(parse_auth_switch(&[0xfe, b'x']).is_err());
    }

    #[test]
    fn handshake_response_layout() {
        let r = handshake_response(0xffff_ffff, "u", &[9; 20], NATIVE);
        assert_eq!(r.len(), 4 + 4 + 1 + 23 + 2 + 1 + 20 + NATIVE.len() + 1);
        assert_eq!(&r[32..34], b"u\0");
        assert_eq!(r[34], 20);
        assert!(r.ends_with(b"mysql_native_password\0"));
    }
}
