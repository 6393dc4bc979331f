//! `kind = "pgsql"`: a PostgreSQL server accepts a login (protocol 3) and becomes ready
//! for queries; optionally it also answers `SELECT 1`.
//!
//! Authentication: none (trust), cleartext, MD5 and SCRAM-SHA-256 (without channel
//! binding, as the check does not use TLS).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::wire::{connect, hex, malformed, Conn, Cursor, Parsed};
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

/// Protocol 3.0.
const PROTOCOL_VERSION: u32 = 196_608;

/// The most PBKDF2 rounds computed for SCRAM: PostgreSQL uses 4096 unless configured
/// otherwise; far more only burns the checker's CPU.
const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

const SCRAM: &str = "SCRAM-SHA-256";

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
        conn.send(&startup(&self.user, self.database.as_deref()))
            .await?;
        if self.authenticate(&mut conn).await? == Login::PasswordAsked {
            return Ok(()); // `startup_only`: the server answered the start-up exchange
        }
        wait_ready(&mut conn).await?;
        if self.query {
            select_one(&mut conn).await?;
        }
        // The check has passed; a lost Terminate only leaves the server to notice the
        // close.
        let _ = conn.send(&message(b'X', &[])).await;
        Ok(())
    }

    fn password(&self) -> Result<&str, CheckError> {
        self.password.as_deref().ok_or_else(|| {
            CheckError::Unhealthy("the server asks for a password and none is configured".into())
        })
    }

    /// Answers the server's authentication requests until AuthenticationOk (or, with
    /// `startup_only`, until the server asks for a password).
    async fn authenticate(&self, conn: &mut Conn) -> Result<Login, CheckError> {
        let mut scram: Option<ScramClient> = None;
        for _ in 0..MAX_MESSAGES {
            let msg = conn.next(parse_message).await?;
            match msg.tag {
                b'E' => return Err(CheckError::Unhealthy(error_text(&msg.body))),
                // NoticeResponse; NegotiateProtocolVersion (a minor version or option
                // the server does not know: none are sent, so nothing to adjust).
                b'N' | b'v' => continue,
                b'R' => {}
                other => return Err(unexpected(other)),
            }
            let mut c = Cursor::new(&msg.body);
            let code = u32::from_be_bytes(c.array()?);
            if self.startup_only && matches!(code, 3 | 5 | 10) {
                return Ok(Login::PasswordAsked);
            }
            match code {
                0 => return Ok(Login::Done),
                3 => {
                    let mut body = self.password()?.as_bytes().to_vec();
                    body.push(0);
                    conn.send(&message(b'p', &body)).await?;
                }
                5 => {
                    let salt: [u8; 4] = c.array()?;
                    let mut body = md5_password(&self.user, self.password()?, &salt).into_bytes();
                    body.push(0);
                    conn.send(&message(b'p', &body)).await?;
                }
                10 => {
                    let mut offered = Vec::new();
                    loop {
                        let name = c.cstr()?;
                        if name.is_empty() {
                            break;
                        }
                        offered.push(String::from_utf8_lossy(name).into_owned());
                    }
                    if !offered.iter().any(|m| m == SCRAM) {
                        return Err(CheckError::Unhealthy(format!(
                            "the server offers SASL mechanisms {} but not {SCRAM}",
                            offered.join(", ")
                        )));
                    }
                    let client = ScramClient::new(self.password()?, &nonce());
                    let first = client.first_message();
                    let mut body = SCRAM.as_bytes().to_vec();
                    body.push(0);
                    // Lengths here are of short strings built above.
                    body.extend_from_slice(&(first.len() as u32).to_be_bytes());
                    body.extend_from_slice(first.as_bytes());
                    conn.send(&message(b'p', &body)).await?;
                    scram = Some(client);
                }
                11 => {
                    let client = scram
                        .take()
                        .ok_or_else(|| malformed("SASL continue before SASL start"))?;
                    let server_first = String::from_utf8_lossy(c.rest()).into_owned();
                    let client = client.absorb_server_first(server_first).await?;
                    conn.send(&message(b'p', client.final_message()?.as_bytes()))
                        .await?;
                    scram = Some(client);
                }
                12 => {
                    let client = scram
                        .as_ref()
                        .ok_or_else(|| malformed("SASL final before SASL start"))?;
                    client.verify_server_final(&String::from_utf8_lossy(c.rest()))?;
                }
                other => {
                    return Err(CheckError::Unhealthy(format!(
                        "the server asks for authentication method {other}, which this \
                         check does not speak"
                    )))
                }
            }
        }
        Err(malformed("a login that does not end"))
    }
}

/// Reads parameter statuses and the like until ReadyForQuery.
async fn wait_ready(conn: &mut Conn) -> Result<(), CheckError> {
    for _ in 0..MAX_MESSAGES {
        let msg = conn.next(parse_message).await?;
        match msg.tag {
            b'Z' => return Ok(()),
            b'E' => return Err(CheckError::Unhealthy(error_text(&msg.body))),
            // ParameterStatus, BackendKeyData, NoticeResponse.
            b'S' | b'K' | b'N' => {}
            other => return Err(unexpected(other)),
        }
    }
    Err(malformed("a start-up that does not end"))
}

/// Runs `SELECT 1` as a simple query; it must return a row and complete.
async fn select_one(conn: &mut Conn) -> Result<(), CheckError> {
    conn.send(&message(b'Q', b"SELECT 1\0")).await?;
    let (mut rows, mut complete) = (0, false);
    for _ in 0..MAX_MESSAGES {
        let msg = conn.next(parse_message).await?;
        match msg.tag {
            b'T' | b'N' | b'S' => {}
            b'D' => rows += 1,
            b'C' => complete = true,
            b'E' => {
                return Err(CheckError::Unhealthy(format!(
                    "SELECT 1 failed: {}",
                    error_text(&msg.body)
                )))
            }
            b'Z' if complete && rows > 0 => return Ok(()),
            b'Z' => return Err(malformed("SELECT 1 returned no row")),
            other => return Err(unexpected(other)),
        }
    }
    Err(malformed("a query that does not end"))
}

fn unexpected(tag: u8) -> CheckError {
    malformed(format!("an unexpected message {:?}", char::from(tag)))
}

/// One backend message: its type byte and body.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    tag: u8,
    body: Vec<u8>,
}

fn parse_message(buf: &[u8]) -> Parsed<Message> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len < 4 {
        return Err(malformed(format!("a message length of {len}")));
    }
    if len > MAX_MESSAGE - 1 {
        return Err(malformed(format!("a message of {len} bytes")));
    }
    let Some(body) = buf.get(5..1 + len) else {
        return Ok(None);
    };
    Ok(Some((
        Message {
            tag: header[0],
            body: body.to_vec(),
        },
        1 + len,
    )))
}

/// A message with its type byte and length.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    // Every body sent here is a short string.
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The StartupMessage, which has no type byte.
fn startup(user: &str, database: Option<&str>) -> Vec<u8> {
    let mut body = PROTOCOL_VERSION.to_be_bytes().to_vec();
    let mut param = |key: &str, value: &str| {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    };
    param("user", user);
    if let Some(db) = database {
        param("database", db);
    }
    // Shows in pg_stat_activity and the server's log, so the checks can be told apart.
    param("application_name", "sluice-health-check");
    body.push(0);
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// `SEVERITY: message` from an ErrorResponse.
fn error_text(body: &[u8]) -> String {
    let mut c = Cursor::new(body);
    let (mut severity, mut text) = (None, None);
    while let Ok(code) = c.u8() {
        if code == 0 {
            break;
        }
        let Ok(value) = c.cstr() else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match code {
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

/// `md5` + hex(md5(hex(md5(password + user)) + salt)).
fn md5_password(user: &str, password: &str, salt: &[u8; 4]) -> String {
    let inner = hex(&Md5::new()
        .chain_update(password)
        .chain_update(user)
        .finalize());
    let outer = Md5::new().chain_update(inner).chain_update(salt).finalize();
    format!("md5{}", hex(&outer))
}

/// A fresh client nonce: printable, and never holding the `,` that separates SCRAM
/// attributes.
fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::rng().fill(&mut raw);
    BASE64.encode(raw)
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Result<[u8; 32], CheckError> {
    let mut mac = HmacSha256::new_from_slice(key)
        .map_err(|_| CheckError::Unhealthy("HMAC key rejected".into()))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

/// The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677).
#[derive(Clone)]
struct ScramClient {
    password: String,
    /// `n=USER,r=NONCE`: PostgreSQL takes the user from the start-up message and wants
    /// this one empty.
    first_bare: String,
    client_nonce: String,
    /// Set once the server's first message is read.
    exchange: Option<Exchange>,
}

#[derive(Clone)]
struct Exchange {
    client_final: String,
    server_signature: [u8; 32],
}

impl ScramClient {
    fn new(password: &str, client_nonce: &str) -> Self {
        Self::with_user(password, "", client_nonce)
    }

    fn with_user(password: &str, user: &str, client_nonce: &str) -> Self {
        ScramClient {
            password: password.to_owned(),
            first_bare: format!("n={user},r={client_nonce}"),
            client_nonce: client_nonce.to_owned(),
            exchange: None,
        }
    }

    /// `n,,` says: no channel binding, none supported.
    fn first_message(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// Reads `r=NONCE,s=SALT,i=ITERATIONS` and derives the proof. PBKDF2 runs on a
    /// blocking thread: thousands of HMAC rounds are too long for an event loop.
    async fn absorb_server_first(mut self, server_first: String) -> Result<Self, CheckError> {
        let (nonce, salt, iterations) = parse_server_first(&server_first, &self.client_nonce)?;
        let password = self.password.clone();
        let salted = tokio::task::spawn_blocking(move || {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut out);
            out
        })
        .await
        .map_err(|e| CheckError::Unhealthy(format!("SCRAM key derivation failed: {e}")))?;
        self.exchange = Some(self.derive(&salted, &server_first, &nonce)?);
        Ok(self)
    }

    fn derive(
        &self,
        salted: &[u8; 32],
        server_first: &str,
        nonce: &str,
    ) -> Result<Exchange, CheckError> {
        let client_key = hmac(salted, b"Client Key")?;
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        // biws = base64("n,,"): the channel binding header sent in the first message.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(salted, b"Server Key")?;
        Ok(Exchange {
            client_final: format!("{without_proof},p={}", BASE64.encode(proof)),
            server_signature: hmac(&server_key, auth_message.as_bytes())?,
        })
    }

    fn final_message(&self) -> Result<&str, CheckError> {
        self.exchange
            .as_ref()
            .map(|e| e.client_final.as_str())
            .ok_or_else(|| malformed("SCRAM out of order"))
    }

    /// The server proves it knows the password too; a server that does not is not the
    /// database it claims to be.
    fn verify_server_final(&self, server_final: &str) -> Result<(), CheckError> {
        let exchange = self
            .exchange
            .as_ref()
            .ok_or_else(|| malformed("SCRAM out of order"))?;
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(CheckError::Unhealthy(format!("SCRAM failed: {e}")));
        }
        let signature = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or_else(|| malformed("SCRAM final message without a signature"))?;
        if signature != exchange.server_signature {
            return Err(CheckError::Unhealthy(
                "the server's SCRAM signature is wrong".into(),
            ));
        }
        Ok(())
    }
}

/// Nonce, salt and iteration count from the server's first SCRAM message.
fn parse_server_first(msg: &str, client_nonce: &str) -> Result<(String, Vec<u8>, u32), CheckError> {
    let (mut nonce, mut salt, mut iterations) = (None, None, None);
    for attr in msg.split(',') {
        match attr.split_at_checked(2) {
            Some(("r=", v)) => nonce = Some(v.to_owned()),
            Some(("s=", v)) => salt = BASE64.decode(v).ok(),
            Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
            Some(("m=", _)) => return Err(malformed("a mandatory SCRAM extension")),
            _ => {}
        }
    }
    let nonce = nonce
        .filter(|n| n.len() > client_nonce.len() && n.starts_with(client_nonce))
        .ok_or_else(|| malformed("a SCRAM nonce that does not extend ours"))?;
    let salt = salt.ok_or_else(|| malformed("a SCRAM message without a salt"))?;
    let iterations = iterations
        .filter(|&i| i > 0)
        .ok_or_else(|| malformed("a SCRAM message without an iteration count"))?;
    if iterations > MAX_SCRAM_ITERATIONS {
        return Err(CheckError::Unhealthy(format!(
            "SCRAM iteration count {iterations} is above the {MAX_SCRAM_ITERATIONS} this \
             check computes"
        )));
    }
    Ok((nonce, salt, iterations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scram_matches_rfc_7677() {
        let client = ScramClient::with_user("pencil", "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.first_message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client = client
            .absorb_server_first(server_first.to_owned())
            .await
            .expect("server first");
        assert_eq!(
            client.final_message().expect("final"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("server signature");
        assert!(client
            .verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
        assert!(client.verify_server_final("e=invalid-proof").is_err());
    }

    #[test]
    fn server_first_must_extend_our_nonce_and_stay_bounded() {
        assert!(parse_server_first("r=abc,s=AAAA,i=1", "abc").is_err());
        assert!(parse_server_first("r=xyz1,s=AAAA,i=1", "abc").is_err());
        assert!(parse_server_first("r=abc1,s=AAAA", "abc").is_err());
        assert!(parse_server_first("r=abc1,s=AAAA,i=0", "abc").is_err());
        assert!(parse_server_first("r=abc1,s=AAAA,i=4000000000", "abc").is_err());
        assert!(parse_server_first("m=x,r=abc1,s=AAAA,i=1", "abc").is_err());
        assert!(parse_server_first("r=abc1,s=AAAA,i=1", "abc").is_ok());
        assert!(parse_server_first("r=é,s=AAAA", "abc").is_err());
    }

    #[test]
    fn md5_password_matches_postgres() {
        // pg_authid stores md5(password || user) for password "pw", user "sluice_md5".
        assert_eq!(
            hex(&Md5::new()
                .chain_update("pw")
                .chain_update("sluice_md5")
                .finalize()),
            "f9fca728f3dd6200909942dd6b0d0c6c"
        );
        let answer = md5_password("sluice_md5", "pw", b"abcd");
        assert_eq!(answer.len(), 35);
        assert!(answer.starts_with("md5"));
    }

    #[test]
    fn messages_split_anywhere_are_whole_only_at_the_end() {
        let mut wire = message(b'S', b"server_version\x0015.1\x00");
        wire.extend(message(b'Z', b"I"));
        let first = 1 + 4 + 20;
        for cut in 0..first {
            assert!(matches!(parse_message(&wire[..cut]), Ok(None)), "{cut}");
        }
        let (m, used) = parse_message(&wire).expect("ok").expect("whole");
        assert_eq!((m.tag, used), (b'S', first));
        let (m, _) = parse_message(&wire[used..]).expect("ok").expect("whole");
        assert_eq!((m.tag, m.body), (b'Z', b"I".to_vec()));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(parse_message(b"E\0\0\0\x03").is_err());
        assert!(parse_message(b"E\x7f\xff\xff\xff").is_err());
        assert!(parse_message(b"E\0\x01\0\0").is_err());
    }

    #[test]
    fn error_text_prefers_the_unlocalised_severity() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        assert_eq!(
            error_text(body),
            "FATAL: password authentication failed for user \"x\""
        );
        assert_eq!(error_text(b"Mtruncated"), "error without a message");
        assert_eq!(error_text(b""), "error without a message");
    }

    #[test]
    fn startup_lists_user_and_database() {
        let s = startup("u", Some("d"));
        assert_eq!(
            u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize,
            s.len()
        );
        assert_eq!(&s[4..8], &PROTOCOL_VERSION.to_be_bytes());
        assert!(s.ends_with(b"sluice-health-check\0\0"));
        let text = String::from_utf8_lossy(&s[8..]);
        assert!(text.contains("user\0u\0database\0d\0"), "{text:?}");
    }

    #[test]
    fn nonces_have_no_commas() {
        let n = nonce();
        assert_eq!(n.len(), 24);
        assert!(!n.contains(','));
    }
}
