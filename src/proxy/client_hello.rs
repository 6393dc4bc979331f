//! The TLS ClientHello of a connection Sluice does not terminate: its server name (SNI)
//! and ALPN protocols, for routing, read without consuming anything the backend needs
//! (every byte read is forwarded unchanged).
//!
//! The hello is reassembled across TCP segments and across TLS records (a client may
//! split it over several, as large post-quantum key shares make more common), within a
//! size cap. Record framing is read here; the hello's body is parsed by `tls-parser`.

use std::io;
use std::time::Duration;

use tls_parser::{
    parse_tls_extensions, parse_tls_message_handshake, SNIType, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most bytes read while looking for a whole ClientHello.
pub const MAX_HELLO_LEN: usize = 32 * 1024;
/// A TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
const HANDSHAKE_RECORD: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// The largest plaintext record fragment TLS allows.
const MAX_FRAGMENT: usize = 1 << 14;

/// What routing needs from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// The host name asked for, lower-cased, without a trailing dot.
    pub server_name: Option<String>,
    /// The application protocols offered, in the client's order.
    pub alpn: Vec<String>,
}

/// The result of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Complete(Hello),
    /// A valid beginning; more bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid(String),
}

/// Parses the start of a client's stream as TLS records carrying a ClientHello. Never
/// panics, whatever the input (see the `client_hello` fuzz target).
pub fn parse(input: &[u8]) -> Parsed {
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = input;
    loop {
        if rest.len() < RECORD_HEADER {
            return incomplete(input);
        }
        if rest[0] != HANDSHAKE_RECORD {
            return Parsed::Invalid(format!("not a TLS handshake (record type {})", rest[0]));
        }
        if rest[1] != 3 {
            return Parsed::Invalid(format!("not TLS (version {}.{})", rest[1], rest[2]));
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_FRAGMENT {
            return Parsed::Invalid(format!("a TLS record of {len} bytes"));
        }
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            return incomplete(input);
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[RECORD_HEADER + len..];
        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != CLIENT_HELLO {
            return Parsed::Invalid(format!(
                "handshake message {} is not a ClientHello",
                handshake[0]
            ));
        }
        let body = usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]);
        if body + 4 > MAX_HELLO_LEN {
            return Parsed::Invalid(format!("a ClientHello of {body} bytes"));
        }
        if handshake.len() >= body + 4 {
            return hello(&handshake[..body + 4]);
        }
    }
}

fn incomplete(input: &[u8]) -> Parsed {
    if input.len() >= MAX_HELLO_LEN {
        Parsed::Invalid(format!("no whole ClientHello in {MAX_HELLO_LEN} bytes"))
    } else {
        Parsed::Incomplete
    }
}

/// The server name and ALPN of a whole ClientHello handshake message.
fn hello(message: &[u8]) -> Parsed {
    let contents = match parse_tls_message_handshake(message) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(contents)))) => contents,
        Ok(_) => return Parsed::Invalid("not a ClientHello".into()),
        Err(e) => return Parsed::Invalid(format!("malformed ClientHello: {e}")),
    };
    let mut hello = Hello::default();
    let Some(extensions) = contents.ext else {
        return Parsed::Complete(hello);
    };
    let extensions = match parse_tls_extensions(extensions) {
        Ok((_, extensions)) => extensions,
        Err(e) => return Parsed::Invalid(format!("malformed ClientHello extensions: {e}")),
    };
    for extension in extensions {
        match extension {
            TlsExtension::SNI(names) => {
                let host = names.iter().find(|(kind, _)| *kind == SNIType::HostName);
                if let Some((_, name)) = host {
                    match host_name(name) {
                        Some(name) => hello.server_name = Some(name),
                        None => {
                            return Parsed::Invalid("a server name that is not a host name".into())
                        }
                    }
                }
            }
            TlsExtension::ALPN(protocols) => {
                hello.alpn = protocols
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
            }
            _ => {}
        }
    }
    Parsed::Complete(hello)
}

/// A DNS host name as sent in SNI: ASCII letters, digits, `-`, `_` and dots, at most 253
/// bytes; returned lower-cased without a trailing dot.
fn host_name(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?;
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then(|| name.to_ascii_lowercase())
}

/// Why a ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("{0}")]
    Invalid(String),
    #[error("no whole ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before the ClientHello ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads from `stream` (after the bytes already in `buf`) until `buf` holds a whole
/// ClientHello, within `limit` and [`MAX_HELLO_LEN`] bytes. Everything read stays in
/// `buf`, to be forwarded as it came.
pub async fn read(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Hello, HelloError> {
    let read = async {
        loop {
            if !buf.is_empty() {
                match parse(buf) {
                    Parsed::Complete(hello) => return Ok(hello),
                    Parsed::Incomplete => {}
                    Parsed::Invalid(message) => return Err(HelloError::Invalid(message)),
                }
            }
            // `parse` gives up at the cap, so this grows to a few KiB past it at most.
            buf.reserve(4096);
            if stream.read_buf(buf).await? == 0 {
                return Err(HelloError::Closed);
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(HelloError::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name` with `alpn`, as TLS records.
    pub(crate) fn client_hello(name: &str, alpn: &[&str]) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("write hello");
        out
    }

    /// The same handshake bytes re-framed into records of at most `size` bytes each.
    fn split_records(records: &[u8], size: usize) -> Vec<u8> {
        let body = &records[RECORD_HEADER..];
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(&[HANDSHAKE_RECORD, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn server_name_and_alpn() {
        let bytes = client_hello("Api.Example.COM", &["h2", "http/1.1"]);
        assert_eq!(
            parse(&bytes),
            Parsed::Complete(Hello {
                server_name: Some("api.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            })
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_records_may_be_split() {
        let bytes = client_hello("a.example", &[]);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        for size in [1, 7, 100] {
            let split = split_records(&bytes, size);
            assert!(
                matches!(parse(&split), Parsed::Complete(h) if h.server_name.as_deref() == Some("a.example"))
            );
        }
    }

    #[test]
    fn garbage_and_other_messages_are_invalid() {
        for garbage in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x02\x00\x00\x05hello",
            b"\x16\x03\x01\x00\x00",
            b"\x16\x03\x01\xff\xffxx",
            b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
            b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
        ] {
            assert!(matches!(parse(garbage), Parsed::Invalid(_)), "{garbage:?}");
        }
        // A hello announcing more than the cap is refused once its length is known.
        assert!(matches!(
            parse(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00"),
            Parsed::Invalid(_)
        ));
    }
}
