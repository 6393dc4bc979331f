//! A failed TLS handshake, with a backend or a client, in words for the log and the
//! health checks.
//!
//! rustls prints part of its errors with Rust's debug formatting (`invalid peer
//! certificate: Other(OtherError(CaUsedAsEndEntity))`, `received fatal alert:
//! HandshakeFailure`), which tells an operator little: each case is said here instead.

use std::fmt::Debug;
use std::io;
use std::time::{Duration, UNIX_EPOCH};

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::UnixTime;

/// The other end of a handshake: a backend Sluice connects to, or a client of a
/// `protocol = "tls"` server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Backend,
    Client,
}

impl Peer {
    fn noun(self) -> &'static str {
        match self {
            Peer::Backend => "backend",
            Peer::Client => "client",
        }
    }
}

/// Why a handshake with `peer` failed: the rustls error inside `error` in words, or the
/// I/O error itself.
pub fn handshake_error(error: &io::Error, peer: Peer) -> String {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return tls_error(tls, peer);
    }
    match (error.kind(), peer) {
        (io::ErrorKind::UnexpectedEof, Peer::Backend) => "the backend closed the connection \
             during the handshake (does it speak TLS on this port?)"
            .to_owned(),
        (io::ErrorKind::UnexpectedEof, Peer::Client) => {
            "the client closed the connection during the handshake".to_owned()
        }
        _ => error.to_string(),
    }
}

/// A rustls error of a handshake with `peer`, in words.
pub fn tls_error(error: &rustls::Error, peer: Peer) -> String {
    let who = peer.noun();
    match error {
        rustls::Error::InvalidCertificate(e) => {
            format!("the {who}'s certificate {}", certificate(e, peer))
        }
        rustls::Error::NoCertificatesPresented => {
            format!("the {who} presented no certificate")
        }
        rustls::Error::AlertReceived(alert) => {
            let hint = match (alert, peer) {
                (
                    AlertDescription::CertificateRequired
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA,
                    Peer::Backend,
                ) => {
                    " (does it want a client certificate that Sluice does not have, or not trust it?)"
                }
                (
                    AlertDescription::BadCertificate
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::UnknownCA,
                    Peer::Client,
                ) => " (does it not trust Sluice's certificate for the name it asked for?)",
                (AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion, _) => {
                    " (no TLS version or cipher suite in common?)"
                }
                _ => "",
            };
            format!(
                "the {who} refused the handshake with the alert \"{}\"{hint}",
                words(alert)
            )
        }
        rustls::Error::PeerIncompatible(why) => {
            format!("the {who} and Sluice have no TLS in common: {}", words(why))
        }
        rustls::Error::PeerMisbehaved(why) => {
            format!("the {who} broke the TLS protocol: {}", words(why))
        }
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("the {who} does not speak TLS ({error})")
        }
        other => other.to_string(),
    }
}

/// What is wrong with the certificate of `peer`, following "the PEER's certificate".
fn certificate(error: &CertificateError, peer: Peer) -> String {
    match error {
        CertificateError::BadEncoding => "is not a well-formed X.509 certificate".into(),
        CertificateError::Expired => "has expired".into(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired at {} (it is now {})",
            date(*not_after),
            date(*time)
        ),
        CertificateError::NotValidYet => "is not valid yet (is the clock right?)".into(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "is not valid before {} (it is now {}; is the clock right?)",
            date(*not_before),
            date(*time)
        ),
        CertificateError::Revoked => "has been revoked".into(),
        CertificateError::UnhandledCriticalExtension => {
            "has a critical extension that cannot be processed".into()
        }
        CertificateError::UnknownIssuer => match peer {
            Peer::Backend => "is not signed by a trusted CA (the configured CA file, or the \
                 system's store without one)"
                .into(),
            Peer::Client => "is not signed by a CA of client_ca_path".into(),
        },
        CertificateError::UnknownRevocationStatus
        | CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            "cannot be checked for revocation".into()
        }
        CertificateError::BadSignature => "carries a signature that does not verify".into(),
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "is signed with an algorithm that is not supported".into()
        }
        CertificateError::NotValidForName => "is not valid for the name asked for".into(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = match presented.as_slice() {
                [] => "no name at all".to_owned(),
                names => names.iter().map(|n| name(n)).collect::<Vec<_>>().join(", "),
            };
            format!(
                "is not valid for {}: it names {names} (set the name to verify, \
                 server_name or tls_server_name, or give the backend a certificate for \
                 that name)",
                expected.to_str()
            )
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            purpose(peer).into()
        }
        CertificateError::ApplicationVerificationFailure => "was refused".into(),
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(e) => pki(e, peer),
            None => format!("is refused: {}", other.0),
        },
        other => format!("is refused: {}", words(other)),
    }
}

/// The certificate of `peer` is not meant for its side of the handshake.
fn purpose(peer: Peer) -> &'static str {
    match peer {
        Peer::Backend => "is not meant for a TLS server (its extended key usage)",
        Peer::Client => "is not meant for a TLS client (its extended key usage)",
    }
}

/// The webpki errors rustls passes on as they are, about the certificate of `peer`.
fn pki(error: &webpki::Error, peer: Peer) -> String {
    match error {
        webpki::Error::CaUsedAsEndEntity => match peer {
            Peer::Backend => "is a CA certificate used as an end-entity: put this very \
                 certificate in the configured CA file to trust it as itself, or give the \
                 backend a certificate signed by that CA"
                .into(),
            Peer::Client => "is a CA certificate used as an end-entity: give the client a \
                 certificate signed by a CA of client_ca_path"
                .into(),
        },
        webpki::Error::EndEntityUsedAsCa => {
            "chain has a certificate that is not a CA's signing another".into()
        }
        webpki::Error::PathLenConstraintViolated => {
            "chain is longer than one of its CAs allows".into()
        }
        webpki::Error::NameConstraintViolation => {
            "names a host one of its CAs may not sign for".into()
        }
        webpki::Error::RequiredEkuNotFoundContext(_) => purpose(peer).into(),
        webpki::Error::UnsupportedCertVersion => "is not an X.509 version 3 certificate".into(),
        webpki::Error::UnsupportedCriticalExtension => {
            "has a critical extension that cannot be processed".into()
        }
        webpki::Error::MaximumPathDepthExceeded
        | webpki::Error::MaximumPathBuildCallsExceeded
        | webpki::Error::MaximumSignatureChecksExceeded => {
            "chain is too long or too tangled to verify".into()
        }
        other => format!("is refused: {}", words(other)),
    }
}

/// A name of a certificate as webpki gives it (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`), as written in a configuration.
fn name(presented: &str) -> &str {
    for (open, close) in [
        ("DnsName(\"", "\")"),
        ("IpAddress(", ")"),
        ("UniformResourceIdentifier(\"", "\")"),
    ] {
        if let Some(inner) = presented
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
        {
            return inner;
        }
    }
    presented
}

/// A time as an RFC 3339 date, to the second.
fn date(time: UnixTime) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(time.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A value's debug name (`HandshakeFailure`, `UnknownCA`) as lower-case words
/// (`handshake failure`, `unknown CA`): for the cases without a sentence of their own.
fn words(value: impl Debug) -> String {
    let name = format!("{value:?}");
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        let starts_word = c.is_ascii_uppercase()
            && match previous {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
        if starts_word {
            out.push(' ');
        }
        out.push(c);
    }
    // Acronyms (`CA`, `SCT`) stay as they are; other words go to lower case.
    out.split(' ')
        .map(|word| {
            let letters = word.chars().filter(char::is_ascii_alphabetic).count();
            let capitals = word.chars().filter(char::is_ascii_uppercase).count();
            if letters > 1 && capitals == letters {
                word.to_owned()
            } else {
                word.to_ascii_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn debug_names_become_words() {
        assert_eq!(
            words(AlertDescription::HandshakeFailure),
            "handshake failure"
        );
        assert_eq!(words(AlertDescription::UnknownCA), "unknown CA");
        assert_eq!(
            words(webpki::Error::CaUsedAsEndEntity),
            "ca used as end entity"
        );
    }

    #[test]
    fn no_failure_reads_as_debug_output() {
        let other = |e: webpki::Error| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        };
        let cases = [
            (
                other(webpki::Error::CaUsedAsEndEntity),
                "the backend's certificate is a CA certificate used as an end-entity: ",
            ),
            (
                CertificateError::UnknownIssuer.into(),
                "the backend's certificate is not signed by a trusted CA",
            ),
            (
                CertificateError::ExpiredContext {
                    time: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
                    not_after: UnixTime::since_unix_epoch(Duration::from_secs(1_600_000_000)),
                }
                .into(),
                "the backend's certificate expired at 2020-09-13T12:26:40Z (it is now \
                 2023-11-14T22:13:20Z)",
            ),
            (
                CertificateError::NotValidForNameContext {
                    expected: rustls_pki_types::ServerName::try_from("db.example").expect("name"),
                    presented: vec![
                        "DnsName(\"localhost\")".into(),
                        "IpAddress(127.0.0.1)".into(),
                    ],
                }
                .into(),
                "the backend's certificate is not valid for db.example: it names localhost, \
                 127.0.0.1 (",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
                "the backend refused the handshake with the alert \"handshake failure\"",
            ),
        ];
        for (error, expected) in cases {
            let said = tls_error(&error, Peer::Backend);
            assert!(said.starts_with(expected), "{said}");
            assert!(!said.contains("Other("), "{said}");
        }
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            other(webpki::Error::CaUsedAsEndEntity),
        );
        assert!(
            handshake_error(&io, Peer::Backend).contains("CA certificate used as an end-entity")
        );
        let client = tls_error(&CertificateError::UnknownIssuer.into(), Peer::Client);
        assert_eq!(
            client,
            "the client's certificate is not signed by a CA of client_ca_path"
        );
    }
}
