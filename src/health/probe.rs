//! `kind = "probe"`: a conversation with the backend over TCP, UDP or TLS.
//!
//! - GoBetween's exchange: send `probe_send` and read a fixed number of bytes back: as
//!   many as `probe_recv` has (`starts_with`), or `probe_recv_len` to match against the
//!   `probe_recv` regular expression (`regexp`).
//! - `probe_steps` (HAProxy's `tcp-check` sequences): sends and expectations in turn over
//!   one connection; an expectation reads until what arrived since the one before it
//!   contains its bytes or matches its expression, the backend closes, or
//!   [`MAX_RECV_LEN`] bytes came without a match. The caller bounds the whole check by
//!   its timeout.

use regex::bytes::Regex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::TlsClient;
use super::{tcp, udp, BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::{
    escape, ProbeExpect, ProbeProtocol, ProbeScript, ProbeSettings, ProbeStep, ProxyVersion,
    MAX_RECV_LEN,
};

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
    script: Script,
    tls: Option<TlsClient>,
    /// The PROXY header version the server sends its backends (over TCP and TLS).
    proxy: Option<ProxyVersion>,
}

enum Script {
    Exchange { send: Vec<u8>, expect: Expect },
    Steps(Vec<ProbeStep>),
}

impl ProbeCheck {
    pub fn new(
        settings: &ProbeSettings,
        proxy: Option<ProxyVersion>,
    ) -> Result<ProbeCheck, String> {
        let script = match &settings.script {
            ProbeScript::Exchange { send, expect } => {
                let expect = match expect {
                    ProbeExpect::StartsWith(bytes) => Expect::StartsWith(bytes.clone()),
                    ProbeExpect::Regexp { pattern, len } => {
                        Expect::Regexp(pattern.regex().clone(), *len as usize)
                    }
                };
                Script::Exchange {
                    send: send.clone(),
                    expect,
                }
            }
            ProbeScript::Steps { steps } => Script::Steps(steps.clone()),
        };
        let tls = match settings.protocol {
            ProbeProtocol::Tls => Some(TlsClient::new(&settings.tls)?),
            _ => None,
        };
        Ok(ProbeCheck {
            protocol: settings.protocol,
            script,
            tls,
            proxy,
        })
    }

    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) -> Result<(), CheckError> {
        match &self.script {
            Script::Exchange { send, expect } => {
                stream.write_all(send).await?;
                stream.flush().await?;
                let mut reply = vec![0u8; expect.len()];
                let mut got = 0;
                while got < reply.len() {
                    let n = stream.read(&mut reply[got..]).await?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                reply.truncate(got);
                expect.verify(&reply)
            }
            Script::Steps(steps) => run_steps(steps, &mut stream).await,
        }
    }
}

/// Runs `probe_steps` on one connection: the first expectation not met fails the check,
/// naming its step and what arrived.
async fn run_steps<S: AsyncRead + AsyncWrite + Unpin>(
    steps: &[ProbeStep],
    stream: &mut S,
) -> Result<(), CheckError> {
    let mut received = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let met = |received: &[u8]| match step {
            ProbeStep::Send(_) => true,
            ProbeStep::Contains(bytes) => received.windows(bytes.len()).any(|w| w == bytes),
            ProbeStep::Matches(pattern) => pattern.regex().is_match(received),
        };
        if let ProbeStep::Send(bytes) = step {
            stream.write_all(bytes).await?;
            stream.flush().await?;
            continue;
        }
        let mut chunk = [0u8; 4096];
        loop {
            if met(&received) {
                break;
            }
            let room = (MAX_RECV_LEN as usize).saturating_sub(received.len());
            let n = match room.min(chunk.len()) {
                0 => 0,
                want => stream.read(&mut chunk[..want]).await?,
            };
            if n == 0 {
                let wanted = match step {
                    ProbeStep::Matches(pattern) => format!("/{}/", pattern.regex().as_str()),
                    ProbeStep::Contains(bytes) | ProbeStep::Send(bytes) => {
                        format!("\"{}\"", escape(bytes))
                    }
                };
                return Err(CheckError::Unhealthy(format!(
                    "step {}: reply \"{}\" does not contain {wanted}",
                    i + 1,
                    escape(&received)
                )));
            }
            received.extend_from_slice(&chunk[..n]);
        }
        // The next expectation looks at what arrives after this one was met.
        received.clear();
    }
    Ok(())
}

impl HealthCheck for ProbeCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            match (self.protocol, &self.tls, &self.script) {
                (ProbeProtocol::Udp, _, Script::Exchange { send, expect }) => {
                    expect.verify(&udp::exchange(backend, send).await?)
                }
                (ProbeProtocol::Tls, Some(tls), _) => {
                    self.converse(tls.connect(backend, self.proxy).await?).await
                }
                _ => {
                    self.converse(tcp::connect(backend, self.proxy).await?)
                        .await
                }
            }
        })
    }
}
