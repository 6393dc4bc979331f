//! HAProxy's PROXY protocol, v1 (text) and v2 (binary): the header a trusted front
//! sends before a connection's first byte, and the one Sluice sends its backends.
//!
//! Parsing is the `ppp` crate's; this module bounds it in size and time, keeps the bytes
//! that came after the header, and turns the header into addresses.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2;
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyVersion;

/// The longest header accepted. A v1 header is at most 107 bytes; v2 headers carry TLVs
/// (a TLS summary, an ID) that fronts keep to a few hundred bytes.
pub const MAX_HEADER_LEN: usize = 4096;

/// What a front's header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client; `None` when the header gives none (v1 `UNKNOWN`, v2 `LOCAL` such as
    /// the front's own health check, or a Unix socket): the front's address stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to at the front.
    pub destination: Option<SocketAddr>,
}

/// The result of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes.
    Complete { len: usize, origin: Origin },
    /// A valid beginning; more bytes are needed.
    Incomplete,
    /// Not a PROXY header, or a malformed one.
    Invalid(String),
}

/// Parses the start of `input` as a v1 or v2 header. Never panics, whatever the input
/// (see the `proxy_header` fuzz target).
pub fn parse(input: &[u8]) -> Parsed {
    let header = HeaderResult::parse(input);
    if header.is_incomplete() {
        return if input.len() >= MAX_HEADER_LEN {
            Parsed::Invalid(format!("header longer than {MAX_HEADER_LEN} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    let (len, origin) = match header {
        HeaderResult::V1(Ok(header)) => (header.header.len(), v1_origin(&header.addresses)),
        HeaderResult::V2(Ok(header)) => (header.len(), v2_origin(&header)),
        HeaderResult::V1(Err(e)) => return Parsed::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => return Parsed::Invalid(format!("PROXY v2: {e}")),
    };
    if len > MAX_HEADER_LEN {
        return Parsed::Invalid(format!("header longer than {MAX_HEADER_LEN} bytes"));
    }
    Parsed::Complete { len, origin }
}

fn v1_origin(addresses: &ppp::v1::Addresses) -> Origin {
    match addresses {
        ppp::v1::Addresses::Tcp4(a) => Origin {
            source: Some((a.source_address, a.source_port).into()),
            destination: Some((a.destination_address, a.destination_port).into()),
        },
        ppp::v1::Addresses::Tcp6(a) => Origin {
            source: Some((a.source_address, a.source_port).into()),
            destination: Some((a.destination_address, a.destination_port).into()),
        },
        ppp::v1::Addresses::Unknown => Origin {
            source: None,
            destination: None,
        },
    }
}

fn v2_origin(header: &v2::Header<'_>) -> Origin {
    let none = Origin {
        source: None,
        destination: None,
    };
    if header.command == v2::Command::Local {
        return none;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Origin {
            source: Some((a.source_address, a.source_port).into()),
            destination: Some((a.destination_address, a.destination_port).into()),
        },
        v2::Addresses::IPv6(a) => Origin {
            source: Some((a.source_address, a.source_port).into()),
            destination: Some((a.destination_address, a.destination_port).into()),
        },
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => none,
    }
}

/// Why a front's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("{0}")]
    Invalid(String),
    #[error("no complete header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before the header ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A front's header as read, and the bytes that followed it in the same reads (they
/// belong to the client's stream and go to the backend first).
#[derive(Debug)]
pub struct Received {
    pub origin: Origin,
    pub early: Vec<u8>,
}

/// Reads a whole header from `stream` within `limit`, however it is split across
/// segments (a front that dribbles it byte by byte included), and at most
/// [`MAX_HEADER_LEN`] bytes of it.
pub async fn read_header(stream: &mut TcpStream, limit: Duration) -> Result<Received, HeaderError> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve((buf.len() * 2).min(MAX_HEADER_LEN + 1) - buf.len());
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(HeaderError::Closed);
            }
            match parse(&buf) {
                Parsed::Complete { len, origin } => {
                    let early = buf.split_off(len);
                    return Ok(Received { origin, early });
                }
                Parsed::Incomplete if buf.len() <= MAX_HEADER_LEN => {}
                Parsed::Incomplete => {
                    let message = format!("header longer than {MAX_HEADER_LEN} bytes");
                    return Err(HeaderError::Invalid(message));
                }
                Parsed::Invalid(message) => return Err(HeaderError::Invalid(message)),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(HeaderError::Timeout(limit)))
}

/// The header Sluice sends a backend for a client at `source` that connected to
/// `destination`. The protocol wants one family for both: an IPv4 address beside an
/// IPv6 one is given as IPv4-mapped IPv6.
pub fn encode(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    encode_with(version, source, destination, None)
}

/// What a v2 header says of a TLS connection Sluice terminated (v1 has no room for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (`PP2_TYPE_AUTHORITY`).
    pub server_name: Option<String>,
    /// The protocol agreed by ALPN (`PP2_TYPE_ALPN`).
    pub alpn: Option<Vec<u8>>,
    /// E.g. `TLSv1.3` (`PP2_SUBTYPE_SSL_VERSION`).
    pub version: String,
    /// The cipher suite's IANA name (`PP2_SUBTYPE_SSL_CIPHER`).
    pub cipher: String,
    /// The client presented a certificate, and it was verified.
    pub client_certificate: bool,
}

/// PROXY v2 TLV types and `PP2_TYPE_SSL` client flags and subtypes.
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// Like [`encode`], with the TLS details of a terminated connection in a v2 header.
pub fn encode_with(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    tls: Option<&TlsInfo>,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => {
            let builder = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (source, destination),
            );
            let built = match tls {
                None => builder.build(),
                Some(tls) => with_tls(builder, tls).and_then(v2::Builder::build),
            };
            // Writing to a growing buffer fails only past the 64 KiB a header can say;
            // a LOCAL header (no addresses) is the protocol's own fallback.
            built.unwrap_or_else(|_| local_v2())
        }
    }
}

/// The header of a connection Sluice opens on its own, a health check: v1 `UNKNOWN`,
/// v2 `LOCAL` with no addresses. The protocol prescribes these for connections no
/// client made; nginx and HAProxy accept them and take the connection's own addresses.
pub fn encode_local(version: ProxyVersion) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::Unknown.to_string().into_bytes(),
        ProxyVersion::V2 => local_v2(),
    }
}

/// A v2 `LOCAL` header: no addresses (`AF_UNSPEC`), no TLVs.
fn local_v2() -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    // Only a payload past 64 KiB fails to build, and this one has none: the same
    // 16 bytes, written out.
    .unwrap_or_else(|_| {
        let mut local = v2::PROTOCOL_PREFIX.to_vec();
        local.extend([0x20, 0x00, 0x00, 0x00]);
        local
    })
}

fn with_tls(mut builder: v2::Builder, tls: &TlsInfo) -> io::Result<v2::Builder> {
    if let Some(alpn) = &tls.alpn {
        builder = builder.write_tlv(PP2_TYPE_ALPN, alpn)?;
    }
    if let Some(name) = &tls.server_name {
        builder = builder.write_tlv(PP2_TYPE_AUTHORITY, name.as_bytes())?;
    }
    let mut ssl = Vec::with_capacity(32);
    let flags = PP2_CLIENT_SSL
        | if tls.client_certificate {
            PP2_CLIENT_CERT_CONN
        } else {
            0
        };
    ssl.push(flags);
    // `verify`: 0 when the client's certificate (if any) was verified, which a
    // handshake that completed guarantees.
    ssl.extend_from_slice(&0u32.to_be_bytes());
    for (kind, value) in [
        (PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes()),
        (PP2_SUBTYPE_SSL_CIPHER, tls.cipher.as_bytes()),
    ] {
        let len = u16::try_from(value.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        ssl.push(kind);
        ssl.extend_from_slice(&len.to_be_bytes());
        ssl.extend_from_slice(value);
    }
    builder.write_tlv(PP2_TYPE_SSL, &ssl)
}

/// IPv4-mapped IPv6 addresses as IPv4; then, if one address is IPv4 and the other
/// IPv6, the IPv4 one as IPv4-mapped IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let mapped = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (mapped(a), mapped(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_and_v2_round_trip() {
        let (client, front) = (addr("192.0.2.7:40000"), addr("198.51.100.1:443"));
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let mut bytes = encode(version, client, front);
            let len = bytes.len();
            bytes.extend_from_slice(b"hello");
            let Parsed::Complete {
                len: parsed,
                origin,
            } = parse(&bytes)
            else {
                panic!("{version:?}: {:?}", parse(&bytes));
            };
            assert_eq!(parsed, len);
            assert_eq!(origin.source, Some(client));
            assert_eq!(origin.destination, Some(front));
        }
        let v6 = encode(
            ProxyVersion::V2,
            addr("[2001:db8::7]:1"),
            addr("[2001:db8::1]:2"),
        );
        assert!(matches!(parse(&v6), Parsed::Complete { .. }));
    }

    #[test]
    fn v2_carries_the_tls_details() {
        let tls = TlsInfo {
            server_name: Some("a.example".into()),
            alpn: Some(b"h2".to_vec()),
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_certificate: true,
        };
        let bytes = encode_with(
            ProxyVersion::V2,
            addr("192.0.2.7:1"),
            addr("192.0.2.8:2"),
            Some(&tls),
        );
        let header = v2::Header::try_from(&bytes[..]).expect("v2 header");
        let tlvs: Vec<(u8, Vec<u8>)> = header
            .tlvs()
            .map(|t| {
                let t = t.expect("tlv");
                (t.kind, t.value.to_vec())
            })
            .collect();
        assert_eq!(tlvs[0], (PP2_TYPE_ALPN, b"h2".to_vec()));
        assert_eq!(tlvs[1], (PP2_TYPE_AUTHORITY, b"a.example".to_vec()));
        let (kind, ssl) = &tlvs[2];
        assert_eq!(*kind, PP2_TYPE_SSL);
        assert_eq!(ssl[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0]);
        assert_eq!(&ssl[5..8], &[PP2_SUBTYPE_SSL_VERSION, 0, 7]);
        assert_eq!(&ssl[8..15], b"TLSv1.3");
        // v1 has no room for it.
        let v1 = encode_with(
            ProxyVersion::V1,
            addr("192.0.2.7:1"),
            addr("192.0.2.8:2"),
            Some(&tls),
        );
        assert_eq!(
            v1,
            encode(ProxyVersion::V1, addr("192.0.2.7:1"), addr("192.0.2.8:2"))
        );
    }

    #[test]
    fn mixed_families() {
        let (client, front) = (addr("192.0.2.7:40000"), addr("[2001:db8::1]:443"));
        assert_eq!(
            encode(ProxyVersion::V1, client, front),
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 40000 443\r\n"
        );
        let Parsed::Complete { origin, .. } = parse(&encode(ProxyVersion::V2, client, front))
        else {
            panic!("v2 header");
        };
        assert_eq!(origin.source, Some(addr("[::ffff:192.0.2.7]:40000")));
        // A v4-mapped client of a dual-stack listener is sent as plain IPv4.
        let mapped = addr("[::ffff:192.0.2.7]:40000");
        let v1 = encode(ProxyVersion::V1, mapped, addr("198.51.100.1:443"));
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n");
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        let whole = encode(ProxyVersion::V2, addr("192.0.2.7:1"), addr("192.0.2.8:2"));
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 192.0.2"), Parsed::Incomplete);
        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 not an address at all\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(matches!(parse(garbage), Parsed::Invalid(_)), "{garbage:?}");
        }
    }

    #[test]
    fn local_and_unknown_give_no_client() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nrest"),
            Parsed::Complete {
                len: 15,
                origin: Origin {
                    source: None,
                    destination: None
                }
            }
        );
        let mut local = v2::PROTOCOL_PREFIX.to_vec();
        local.extend([0x20, 0x00, 0x00, 0x00]);
        assert!(matches!(
            parse(&local),
            Parsed::Complete { len: 16, origin } if origin.source.is_none()
        ));
    }

    #[test]
    fn local_headers_are_unknown_and_local_and_parse_back() {
        assert_eq!(encode_local(ProxyVersion::V1), b"PROXY UNKNOWN\r\n");
        let v2 = encode_local(ProxyVersion::V2);
        let mut expected = v2::PROTOCOL_PREFIX.to_vec();
        // Version 2, LOCAL; AF_UNSPEC, UNSPEC; no address or TLV bytes.
        expected.extend([0x20, 0x00, 0x00, 0x00]);
        assert_eq!(v2, expected);
        let header = v2::Header::try_from(&v2[..]).expect("v2 header");
        assert_eq!(header.command, v2::Command::Local);
        assert_eq!(header.addresses, v2::Addresses::Unspecified);
        assert_eq!(header.tlvs().count(), 0);
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let mut bytes = encode_local(version);
            let len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                parse(&bytes),
                Parsed::Complete {
                    len,
                    origin: Origin {
                        source: None,
                        destination: None
                    }
                },
                "{version:?}"
            );
        }
    }

    #[test]
    fn an_oversized_v2_header_is_refused_once_its_length_is_known() {
        let mut huge = v2::PROTOCOL_PREFIX.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        huge.extend([0u8; 12]);
        huge.resize(MAX_HEADER_LEN + 1, 0);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
    }
}
