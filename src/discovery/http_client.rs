//! A small HTTP/1.1 client for discovery sources that speak HTTP (Consul, etcd's gateway,
//! Docker), over TCP, TLS or a unix socket.
//!
//! One connection per request: discovery asks rarely, and a fresh connection never finds
//! a keep-alive connection the server closed in between. Every read is bounded: the whole
//! exchange by a deadline, a body by [`MAX_BODY`], a streamed message by its caller's cap.

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{timeout_at, Instant};
use tokio_util::task::AbortOnDropHandle;

use super::DiscoveryError;

/// Largest response body read into memory. A discovery answer listing thousands of
/// backends is well below it; anything larger is a misconfigured endpoint.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where the server is.
#[derive(Clone)]
pub enum Endpoint {
    Tcp {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        port: u16,
        /// `Some` for HTTPS.
        tls: Option<Arc<rustls::ClientConfig>>,
    },
    Unix(PathBuf),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port, tls } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                write!(f, "{scheme}://{}", authority(host, *port))
            }
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One request: method, path with its query, extra headers and an optional body.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Self {
        Request {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A POST with a JSON body.
    pub fn post_json(path: impl Into<String>, body: &serde_json::Value) -> Self {
        Request {
            method: Method::POST,
            path: path.into(),
            headers: vec![(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: Some(body.to_string().into_bytes()),
        }
    }

    /// Adds a header; a value that cannot be a header (a control character in a token
    /// from the configuration) is an error rather than a silently dropped header.
    pub fn header(mut self, name: HeaderName, value: &str) -> Result<Self, DiscoveryError> {
        let value = HeaderValue::from_str(value).map_err(|_| {
            DiscoveryError::Invalid(format!("the value of header {name} is not valid"))
        })?;
        self.headers.push((name, value));
        Ok(self)
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body when the status is 2xx; otherwise an error with the status and the start
    /// of the body, which is where servers explain themselves.
    pub fn success_body(self, what: &str) -> Result<Vec<u8>, DiscoveryError> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.trim().chars().take(200).collect();
        Err(DiscoveryError::Invalid(format!(
            "{what} answered HTTP {}: {text}",
            self.status
        )))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response whose body is read piece by piece (a watch stream).
pub struct Streaming {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    pending: Vec<u8>,
    // Drives the connection; aborted when the stream is dropped, which closes it.
    _connection: AbortOnDropHandle<()>,
}

impl Streaming {
    /// The next newline-terminated message (without the newline), `None` at the end of
    /// the stream. A message longer than `max` is an error, so a server that never sends
    /// a newline cannot make us buffer without end.
    pub async fn next_line(
        &mut self,
        max: usize,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, DiscoveryError> {
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=at).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.pending.len() > max {
                return Err(DiscoveryError::Invalid(format!(
                    "a streamed message is longer than {max} bytes"
                )));
            }
            let frame = timeout_at(deadline, self.body.frame())
                .await
                .map_err(|_| DiscoveryError::Timeout)?;
            match frame {
                None if self.pending.is_empty() => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.pending))),
                Some(Err(e)) => return Err(http_error(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// An HTTP client for one server.
#[derive(Clone, Debug)]
pub struct HttpClient {
    endpoint: Endpoint,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl HttpClient {
    pub fn new(endpoint: Endpoint) -> Self {
        HttpClient { endpoint }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `request` and reads the whole response, all before `deadline`.
    pub async fn send(
        &self,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, DiscoveryError> {
        let mut streaming = self.open(request, deadline).await?;
        let mut body = Vec::new();
        loop {
            let frame = timeout_at(deadline, streaming.body.frame())
                .await
                .map_err(|_| DiscoveryError::Timeout)?;
            match frame {
                None => break,
                Some(Err(e)) => return Err(http_error(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if body.len() + data.len() > MAX_BODY {
                            return Err(DiscoveryError::Invalid(format!(
                                "{:?} sent a response larger than {MAX_BODY} bytes",
                                self.endpoint
                            )));
                        }
                        body.extend_from_slice(&data);
                    }
                }
            }
        }
        Ok(Response {
            status: streaming.status,
            headers: std::mem::take(&mut streaming.headers),
            body,
        })
    }

    /// Sends `request` and returns once the response head has arrived (before
    /// `deadline`); the body is read through [`Streaming::next_line`].
    pub async fn open(
        &self,
        request: Request,
        deadline: Instant,
    ) -> Result<Streaming, DiscoveryError> {
        timeout_at(deadline, self.open_unbounded(request))
            .await
            .map_err(|_| DiscoveryError::Timeout)?
    }

    async fn open_unbounded(&self, request: Request) -> Result<Streaming, DiscoveryError> {
        let (io, host_header): (Box<dyn Io>, String) = match &self.endpoint {
            Endpoint::Tcp { host, port, tls } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                // Requests are small and answers awaited: Nagle would only add delay.
                tcp.set_nodelay(true)?;
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(config) => {
                        let name = ServerName::try_from(host.clone()).map_err(|_| {
                            DiscoveryError::Invalid(format!(
                                "\"{host}\" is not a valid TLS server name"
                            ))
                        })?;
                        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                        Box::new(connector.connect(name, tcp).await?)
                    }
                };
                (io, authority(host, *port))
            }
            // Docker's daemon wants a Host header but does not look at it.
            Endpoint::Unix(path) => (
                Box::new(UnixStream::connect(path).await?),
                "localhost".into(),
            ),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http_error)?;
        let connection = AbortOnDropHandle::new(tokio::spawn(async move {
            // Its errors surface through the request or the body, which the caller sees.
            let _ = connection.await;
        }));

        let mut builder = hyper::Request::builder()
            .method(request.method)
            .uri(request.path.as_str())
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::CONNECTION, "close");
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let body = Full::new(Bytes::from(request.body.unwrap_or_default()));
        let http_request = builder.body(body).map_err(|e| {
            DiscoveryError::Invalid(format!("cannot build the request {}: {e}", request.path))
        })?;
        let response = sender
            .send_request(http_request)
            .await
            .map_err(http_error)?;
        let (head, body) = response.into_parts();
        Ok(Streaming {
            status: head.status.as_u16(),
            headers: head.headers,
            body,
            pending: Vec::new(),
            _connection: connection,
        })
    }
}

fn http_error(e: hyper::Error) -> DiscoveryError {
    DiscoveryError::Io(std::io::Error::other(e))
}

/// Percent-encodes `text` for a path segment or a query value: everything but RFC
/// 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("web api/v1?x=1&y"), "web%20api%2Fv1%3Fx%3D1%26y");
        assert_eq!(encode("a-b.c_d~e"), "a-b.c_d~e");
    }
}
