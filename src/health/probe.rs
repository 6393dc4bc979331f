//! `kind = "probe"` (GoBetween's): send `probe_send` over TCP, UDP or TLS and read a
//! fixed number of bytes back: as many as `probe_recv` has (`starts_with`), or
//! `probe_recv_len` to match against the `probe_recv` regular expression (`regexp`).

use regex::bytes::Regex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::TlsClient;
use super::{tcp, udp, BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::{escape, ProbeExpect, ProbeProtocol, ProbeSettings, ProxyVersion};

enum Expect {
    StartsWith(Vec<u8>),
    Regexp(Regex, usize),
}

impl Expect {
    fn len(&self) -> usize {
        match self {
            Expect::StartsWith(bytes) => bytes.len(),
            Expect::Regexp(_, len) => *len,
        }
    }

    fn verify(&self, reply: &[u8]) -> Result<(), CheckError> {
        let ok = match self {
            Expect::StartsWith(bytes) => reply.starts_with(bytes),
            Expect::Regexp(re, len) => reply.len() >= *len && re.is_match(&reply[..*len]),
        };
        if ok {
            return Ok(());
        }
        let wanted = match self {
            Expect::StartsWith(bytes) => format!("\"{}\"", escape(bytes)),
            Expect::Regexp(re, _) => format!("/{}/", re.as_str()),
        };
        Err(CheckError::Unhealthy(format!(
            "reply \"{}\" does not match {wanted}",
            escape(reply)
        )))
    }
}

pub struct ProbeCheck {
    protocol: ProbeProtocol,
    send: Vec<u8>,
    expect: Expect,
    tls: Option<TlsClient>,
    /// The PROXY header version the server sends its backends (over TCP and TLS).
    proxy: Option<ProxyVersion>,
}

impl ProbeCheck {
    pub fn new(
        settings: &ProbeSettings,
        proxy: Option<ProxyVersion>,
    ) -> Result<ProbeCheck, String> {
        let expect = match &settings.expect {
            ProbeExpect::StartsWith(bytes) => Expect::StartsWith(bytes.clone()),
            ProbeExpect::Regexp { pattern, len } => {
                Expect::Regexp(pattern.regex().clone(), *len as usize)
            }
        };
        let tls = match settings.protocol {
            ProbeProtocol::Tls => Some(TlsClient::new(&settings.tls)?),
            _ => None,
        };
        Ok(ProbeCheck {
            protocol: settings.protocol,
            send: settings.send.clone(),
            expect,
            tls,
            proxy,
        })
    }

    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) -> Result<Vec<u8>, CheckError> {
        stream.write_all(&self.send).await?;
        stream.flush().await?;
        let mut reply = vec![0u8; self.expect.len()];
        let mut got = 0;
        while got < reply.len() {
            let n = stream.read(&mut reply[got..]).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        reply.truncate(got);
        Ok(reply)
    }
}

impl HealthCheck for ProbeCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            let reply = match (self.protocol, &self.tls) {
                (ProbeProtocol::Udp, _) => udp::exchange(backend, &self.send).await?,
                (ProbeProtocol::Tls, Some(tls)) => {
                    self.converse(tls.connect(backend, self.proxy).await?)
                        .await?
                }
                _ => {
                    self.converse(tcp::connect(backend, self.proxy).await?)
                        .await?
                }
            };
            self.expect.verify(&reply)
        })
    }
}
