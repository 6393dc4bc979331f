//! `kind = "pgsql"`: a PostgreSQL server accepts a login (protocol 3) and becomes ready
//! for queries; optionally it also answers `SELECT 1`.
//!
//! Authentication: none (trust), cleartext, MD5 and SCRAM-SHA-256 (without channel
//! binding, as the check does not use TLS). The `postgres-protocol` crate computes the
//! MD5 answer, runs the SCRAM client and encodes and decodes the messages; this module
//! bounds what is read and decides what the server's answers mean.

use std::io;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorResponseBody, Header, Message};
use postgres_protocol::message::frontend;

use super::wire::{connect, malformed, Conn, Parsed};
use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::ProxyVersion;

/// Passes when the server accepts the login and reports ready for queries (and, with
/// `query`, returns a row for `SELECT 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgsqlCheck {
    pub user: String,
    /// Needed unless the server trusts the user.
    pub password: Option<String>,
    /// The database to connect to; the server's default (the user's name) if `None`.
    pub database: Option<String>,
    /// Also run `SELECT 1`, which a server that accepts logins but cannot run queries
    /// (out of shared memory, a broken catalog) fails.
    pub query: bool,
    /// No credentials configured: the start-up exchange alone is the check. A server
    /// that answers it, even with a request for a password, is up.
    pub startup_only: bool,
    /// The PROXY header version the server sends its backends; checks send it too.
    pub proxy: Option<ProxyVersion>,
}

impl Default for PgsqlCheck {
    fn default() -> Self {
        PgsqlCheck {
            user: "postgres".to_owned(),
            password: None,
            database: None,
            query: false,
            startup_only: false,
            proxy: None,
        }
    }
}

/// The largest message read: errors and parameter statuses are far smaller.
const MAX_MESSAGE: usize = 16 * 1024;

/// Everything read over one check.
const MAX_READ: usize = 16 * MAX_MESSAGE;

/// Messages read in one phase (login, start-up, query) before giving up on its end.
const MAX_MESSAGES: usize = 64;

/// The most PBKDF2 rounds computed for SCRAM: PostgreSQL uses 4096 unless configured
/// otherwise; far more only burns the checker's CPU.
const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

/// How the authentication phase ended.
#[derive(Debug, PartialEq, Eq)]
enum Login {
    Done,
    PasswordAsked,
}

impl HealthCheck for PgsqlCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(self.run(backend))
    }
}

impl PgsqlCheck {
    async fn run(&self, backend: &Backend) -> Result<(), CheckError> {
        let mut conn = Conn::new(connect(backend, self.proxy).await?, MAX_MESSAGE, MAX_READ);
        let mut params = vec![("user", self.user.as_str())];
        if let Some(db) = &self.database {
            params.push(("database", db));
        }
        // Shows in pg_stat_activity and the server's log, so the checks can be told apart.
        params.push(("application_name", "sluice-health-check"));
        send(&mut conn, |buf| frontend::startup_message(params, buf)).await?;
        if self.authenticate(&mut conn).await? == Login::PasswordAsked {
            return Ok(()); // `startup_only`: the server answered the start-up exchange
        }
        wait_ready(&mut conn).await?;
        if self.query {
            select_one(&mut conn).await?;
        }
        // The check has passed; a lost Terminate only leaves the server to notice the
        // close.
        let _ = send(&mut conn, |buf| {
            frontend::terminate(buf);
            Ok(())
        })
        .await;
        Ok(())
    }

    fn password(&self) -> Result<&[u8], CheckError> {
        self.password.as_deref().map(str::as_bytes).ok_or_else(|| {
            CheckError::Unhealthy("the server asks for a password and none is configured".into())
        })
    }

    /// Answers the server's authentication requests until AuthenticationOk (or, with
    /// `startup_only`, until the server asks for a password).
    async fn authenticate(&self, conn: &mut Conn) -> Result<Login, CheckError> {
        let mut scram: Option<ScramSha256> = None;
        for _ in 0..MAX_MESSAGES {
            let (tag, msg) = conn.next(parse_message).await?;
            let Some(msg) = msg else {
                continue; // NegotiateProtocolVersion: none are asked for, so nothing to adjust
            };
            if self.startup_only
                && matches!(
                    msg,
                    Message::AuthenticationCleartextPassword
                        | Message::AuthenticationMd5Password(_)
                        | Message::AuthenticationSasl(_)
                )
            {
                return Ok(Login::PasswordAsked);
            }
            match msg {
                Message::ErrorResponse(body) => {
                    return Err(CheckError::Unhealthy(error_text(&body)))
                }
                Message::NoticeResponse(_) => {}
                Message::AuthenticationOk => return Ok(Login::Done),
                Message::AuthenticationCleartextPassword => {
                    let password = self.password()?;
                    send(conn, |buf| frontend::password_message(password, buf)).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(self.user.as_bytes(), self.password()?, body.salt());
                    send(conn, |buf| frontend::password_message(hash.as_bytes(), buf)).await?;
                }
                Message::AuthenticationSasl(body) => {
                    let offered: Vec<&str> = body.mechanisms().collect().map_err(malformed)?;
                    if !offered.contains(&SCRAM_SHA_256) {
                        return Err(CheckError::Unhealthy(format!(
                            "the server offers SASL mechanisms {} but not {SCRAM_SHA_256}",
                            offered.join(", ")
                        )));
                    }
                    let client = ScramSha256::new(self.password()?, ChannelBinding::unsupported());
                    send(conn, |buf| {
                        frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), buf)
                    })
                    .await?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let mut client = scram
                        .take()
                        .ok_or_else(|| malformed("SASL continue before SASL start"))?;
                    check_iterations(body.data())?;
                    // PBKDF2 runs on a blocking thread: thousands of HMAC rounds are too
                    // long for an event loop.
                    let client = tokio::task::spawn_blocking(move || {
                        client.update(body.data()).map(|()| client)
                    })
                    .await
                    .map_err(|e| {
                        CheckError::Unhealthy(format!("SCRAM key derivation failed: {e}"))
                    })?
                    .map_err(|e| malformed(format!("SCRAM: {e}")))?;
                    send(conn, |buf| frontend::sasl_response(client.message(), buf)).await?;
                    scram = Some(client);
                }
                // The server proves it knows the password too; a server that does not is
                // not the database it claims to be.
                Message::AuthenticationSaslFinal(body) => scram
                    .as_mut()
                    .ok_or_else(|| malformed("SASL final before SASL start"))?
                    .finish(body.data())
                    .map_err(|e| {
                        CheckError::Unhealthy(format!("the server's SCRAM proof fails: {e}"))
                    })?,
                _ => return Err(unexpected(tag)),
            }
        }
        Err(malformed("a login that does not end"))
    }
}

/// Reads parameter statuses and the like until ReadyForQuery.
async fn wait_ready(conn: &mut Conn) -> Result<(), CheckError> {
    for _ in 0..MAX_MESSAGES {
        match conn.next(parse_message).await? {
            (_, Some(Message::ReadyForQuery(_))) => return Ok(()),
            (_, Some(Message::ErrorResponse(body))) => {
                return Err(CheckError::Unhealthy(error_text(&body)))
            }
            (
                _,
                Some(
                    Message::ParameterStatus(_)
                    | Message::BackendKeyData(_)
                    | Message::NoticeResponse(_),
                ),
            ) => {}
            (tag, _) => return Err(unexpected(tag)),
        }
    }
    Err(malformed("a start-up that does not end"))
}

/// Runs `SELECT 1` as a simple query; it must return a row and complete.
async fn select_one(conn: &mut Conn) -> Result<(), CheckError> {
    send(conn, |buf| frontend::query("SELECT 1", buf)).await?;
    let (mut rows, mut complete) = (0, false);
    for _ in 0..MAX_MESSAGES {
        match conn.next(parse_message).await? {
            (
                _,
                Some(
                    Message::RowDescription(_)
                    | Message::NoticeResponse(_)
                    | Message::ParameterStatus(_),
                ),
            ) => {}
            (_, Some(Message::DataRow(_))) => rows += 1,
            (_, Some(Message::CommandComplete(_))) => complete = true,
            (_, Some(Message::ErrorResponse(body))) => {
                return Err(CheckError::Unhealthy(format!(
                    "SELECT 1 failed: {}",
                    error_text(&body)
                )))
            }
            (_, Some(Message::ReadyForQuery(_))) if complete && rows > 0 => return Ok(()),
            (_, Some(Message::ReadyForQuery(_))) => {
                return Err(malformed("SELECT 1 returned no row"))
            }
            (tag, _) => return Err(unexpected(tag)),
        }
    }
    Err(malformed("a query that does not end"))
}

fn unexpected(tag: u8) -> CheckError {
    malformed(format!("an unexpected message {:?}", char::from(tag)))
}

/// Sends one message as `encode`, a `postgres-protocol` frontend function, writes it.
async fn send(
    conn: &mut Conn,
    encode: impl FnOnce(&mut BytesMut) -> io::Result<()>,
) -> Result<(), CheckError> {
    let mut buf = BytesMut::new();
    encode(&mut buf)?;
    conn.send(&buf).await
}

/// One backend message, its type byte and, as `postgres-protocol` decodes it, its content:
/// `None` for NegotiateProtocolVersion, which the crate does not decode. Authentication
/// methods the check does not speak are refused here, by number.
fn parse_message(buf: &[u8]) -> Parsed<(u8, Option<Message>)> {
    let Some(header) = Header::parse(buf).map_err(malformed)? else {
        return Ok(None);
    };
    // The header's length counts itself, not the type byte; it is at least 4.
    let len = 1 + header.len() as usize;
    if len > MAX_MESSAGE {
        return Err(malformed(format!("a message of {} bytes", header.len())));
    }
    let Some(frame) = buf.get(..len) else {
        return Ok(None);
    };
    let tag = header.tag();
    if let (b'R', Some(&[a, b, c, d])) = (tag, frame.get(5..9)) {
        let code = u32::from_be_bytes([a, b, c, d]);
        if !matches!(code, 0 | 3 | 5 | 10..=12) {
            return Err(CheckError::Unhealthy(format!(
                "the server asks for authentication method {code}, which this check does not \
                 speak"
            )));
        }
    }
    let msg = match tag {
        b'v' => None,
        _ => Message::parse(&mut BytesMut::from(frame)).map_err(malformed)?,
    };
    Ok(Some(((tag, msg), len)))
}

/// `SEVERITY: message` from an ErrorResponse.
fn error_text(body: &ErrorResponseBody) -> String {
    let (mut severity, mut text) = (None, None);
    let mut fields = body.fields();
    // A field cut short ends the list; the fields before it still count.
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            // V is never localised; S may be.
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            b'M' => text = Some(value),
            _ => {}
        }
    }
    let text = text.unwrap_or_else(|| "error without a message".to_owned());
    match severity {
        Some(s) => format!("{s}: {text}"),
        None => text,
    }
}

/// Refuses an iteration count in the server's first SCRAM message above what the check
/// computes, before the crate starts on it. A missing or unreadable one is left to the
/// crate, which refuses the message.
fn check_iterations(server_first: &[u8]) -> Result<(), CheckError> {
    let iterations = server_first
        .split(|&b| b == b',')
        .find_map(|attr| attr.strip_prefix(b"i="))
        .and_then(|i| std::str::from_utf8(i).ok()?.parse::<u32>().ok());
    match iterations {
        Some(0) => Err(malformed("a SCRAM iteration count of 0")),
        Some(i) if i > MAX_SCRAM_ITERATIONS => Err(CheckError::Unhealthy(format!(
            "SCRAM iteration count {i} is above the {MAX_SCRAM_ITERATIONS} this check computes"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::backend::BackendSpec;

    /// A backend message with its type byte and length.
    fn backend_msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn auth(code: u32, data: &[u8]) -> Vec<u8> {
        backend_msg(b'R', &[&code.to_be_bytes()[..], data].concat())
    }

    /// What a server stores for RFC 7677's example user (password "pencil"): the salt
    /// and, from 4096 rounds, the stored and server keys.
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const STORED_KEY: &str = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
    const SERVER_KEY: &str = "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    fn hmac(key: &str, data: &str) -> Vec<u8> {
        let key = BASE64.decode(key).expect("base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The server's side of SCRAM (RFC 5802): checks the client's proof against the
    /// stored key and returns the server's signature, or `None` for a wrong proof.
    fn server_verify(
        client_first_bare: &str,
        server_first: &str,
        client_final: &str,
    ) -> Option<Vec<u8>> {
        let (without_proof, proof) = client_final.split_once(",p=")?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_key: Vec<u8> = BASE64
            .decode(proof)
            .ok()?
            .iter()
            .zip(hmac(STORED_KEY, &auth_message))
            .map(|(p, s)| p ^ s)
            .collect();
        (BASE64.encode(Sha256::digest(client_key)) == STORED_KEY)
            .then(|| hmac(SERVER_KEY, &auth_message))
    }

    #[test]
    fn the_fake_servers_scram_passes_rfc_7677s_exchange() {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_first = format!("r={nonce},s={SALT},i=4096");
        let client_final =
            format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let signature = server_verify(
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            &server_first,
            &client_final,
        )
        .expect("the RFC's proof");
        assert_eq!(
            BASE64.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let forged = client_final.replace("p=dHzb", "p=dHzc");
        assert!(server_verify("n=user,r=rOprNGfwEbeRWgbNEkqO", &server_first, &forged).is_none());
    }

    /// How the fake server departs from a good PostgreSQL.
    #[derive(Clone, Copy)]
    enum Fake {
        Good,
        WrongSignature,
        Iterations(u32),
        TooManyClients,
    }

    /// One frontend message's body, after its type byte if `tagged`; `None` once the
    /// client has hung up.
    async fn read_msg(s: &mut TcpStream, tagged: bool) -> Option<Vec<u8>> {
        if tagged {
            s.read_u8().await.ok()?;
        }
        let len = s.read_u32().await.ok()? as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    /// Runs a check with `password` against a server that answers as PostgreSQL does for
    /// RFC 7677's user, but for `fake`; also tells whether the server took the client's
    /// SCRAM proof.
    async fn against_fake(password: &str, fake: Fake) -> (Result<(), CheckError>, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            read_msg(&mut s, false).await.expect("StartupMessage");
            let refuse =
                |text: &str| backend_msg(b'E', format!("SFATAL\0VFATAL\0M{text}\0\0").as_bytes());
            if let Fake::TooManyClients = fake {
                s.write_all(&refuse("sorry, too many clients already"))
                    .await
                    .expect("write");
                return false;
            }
            s.write_all(&auth(10, b"SCRAM-SHA-256\0\0"))
                .await
                .expect("write");
            let first = read_msg(&mut s, true).await.expect("SASLInitialResponse");
            let first = first.strip_prefix(b"SCRAM-SHA-256\0").expect("mechanism");
            let first = String::from_utf8(first[4..].to_vec()).expect("UTF-8");
            let bare = first.strip_prefix("n,,").expect("no channel binding");
            let client_nonce = bare.strip_prefix("n=,r=").expect("nonce");
            let iterations = if let Fake::Iterations(i) = fake {
                i
            } else {
                4096
            };
            let server_first =
                format!("r={client_nonce}3rfcNHYJY1ZVvWVs7j,s={SALT},i={iterations}");
            s.write_all(&auth(11, server_first.as_bytes()))
                .await
                .expect("write");
            let Some(last) = read_msg(&mut s, true).await else {
                return false;
            };
            let client_final = String::from_utf8(last).expect("UTF-8");
            let Some(mut signature) = server_verify(bare, &server_first, &client_final) else {
                let text = "password authentication failed for user \"postgres\"";
                s.write_all(&refuse(text)).await.expect("write");
                return false;
            };
            if let Fake::WrongSignature = fake {
                signature[0] ^= 1;
            }
            let mut reply = auth(12, format!("v={}", BASE64.encode(signature)).as_bytes());
            reply.extend(auth(0, b""));
            reply.extend(backend_msg(b'Z', b"I"));
            s.write_all(&reply).await.expect("write");
            true
        });
        let check = PgsqlCheck {
            password: Some(password.to_owned()),
            ..PgsqlCheck::default()
        };
        let backend = Backend::new(BackendSpec::new("127.0.0.1", port), true);
        let result = check.check(&backend).await;
        (result, server.await.expect("fake server"))
    }

    fn unhealthy(result: Result<(), CheckError>) -> String {
        match result {
            Err(CheckError::Unhealthy(m)) => m,
            other => panic!("expected Unhealthy, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn scram_proves_the_password_to_a_server_holding_rfc_7677s_keys() {
        let (result, verified) = against_fake("pencil", Fake::Good).await;
        result.expect("login");
        assert!(verified);
        let (result, verified) = against_fake("pen", Fake::Good).await;
        assert!(!verified);
        assert_eq!(
            unhealthy(result),
            "FATAL: password authentication failed for user \"postgres\""
        );
    }

    #[tokio::test]
    async fn a_server_that_cannot_prove_the_password_fails() {
        let (result, verified) = against_fake("pencil", Fake::WrongSignature).await;
        assert!(verified);
        let text = unhealthy(result);
        assert!(text.starts_with("the server's SCRAM proof fails"), "{text}");
    }

    #[tokio::test]
    async fn iteration_counts_are_bounded_before_any_are_computed() {
        let (result, _) = against_fake("pencil", Fake::Iterations(4_000_000_000)).await;
        assert!(unhealthy(result).contains("above the 1000000"));
        let (result, _) = against_fake("pencil", Fake::Iterations(0)).await;
        assert!(unhealthy(result).contains("iteration count of 0"));
    }

    #[tokio::test]
    async fn an_error_at_start_up_says_why() {
        let (result, _) = against_fake("pencil", Fake::TooManyClients).await;
        assert_eq!(unhealthy(result), "FATAL: sorry, too many clients already");
    }

    #[test]
    fn messages_split_anywhere_are_whole_only_at_the_end() {
        let mut wire = backend_msg(b'S', b"server_version\x0015.1\x00");
        wire.extend(backend_msg(b'Z', b"I"));
        let first = 1 + 4 + 20;
        for cut in 0..first {
            assert!(matches!(parse_message(&wire[..cut]), Ok(None)), "{cut}");
        }
        let ((tag, msg), used) = parse_message(&wire).expect("ok").expect("whole");
        assert_eq!((tag, used), (b'S', first));
        assert!(matches!(msg, Some(Message::ParameterStatus(_))));
        let ((_, msg), _) = parse_message(&wire[used..]).expect("ok").expect("whole");
        assert!(matches!(msg, Some(Message::ReadyForQuery(_))));
    }

    #[test]
    fn bad_lengths_and_unknown_methods_are_errors() {
        assert!(parse_message(b"E\0\0\0\x03").is_err());
        assert!(parse_message(b"E\x7f\xff\xff\xff").is_err());
        assert!(parse_message(b"E\0\x01\0\0").is_err());
        // GSSAPI: decoded by the crate, not spoken here.
        match parse_message(&auth(7, b"")) {
            Err(CheckError::Unhealthy(m)) => assert!(m.contains("method 7"), "{m}"),
            _ => panic!("GSSAPI accepted"),
        }
        let ((tag, msg), _) = parse_message(&backend_msg(b'v', b"\0\0\0\0\0\0\0\0"))
            .expect("ok")
            .expect("whole");
        assert!(tag == b'v' && msg.is_none());
    }

    #[test]
    fn error_text_prefers_the_unlocalised_severity() {
        let text = |body: &[u8]| match parse_message(&backend_msg(b'E', body)) {
            Ok(Some(((_, Some(Message::ErrorResponse(body))), _))) => error_text(&body),
            _ => panic!("not an ErrorResponse"),
        };
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        assert_eq!(
            text(body),
            "FATAL: password authentication failed for user \"x\""
        );
        assert_eq!(text(b"Mtruncated"), "error without a message");
        assert_eq!(text(b""), "error without a message");
    }
}
