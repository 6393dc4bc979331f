//! `kind = "http"` and `"https"`: one HTTP/1.1 request, written by hand, per check. The
//! status must be one of `http_status`; the body, when `http_body` or
//! `http_body_regexp` is set, must contain or match it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::TlsClient;
use super::{tcp, BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::{HttpSettings, ProxyVersion};

/// The most of a response read: enough for a health endpoint's status and body.
const MAX_RESPONSE: usize = 64 * 1024;

pub struct HttpCheck {
    settings: HttpSettings,
    tls: Option<TlsClient>,
    /// The PROXY header version the server sends its backends.
    proxy: Option<ProxyVersion>,
}

impl HttpCheck {
    pub fn new(settings: &HttpSettings, proxy: Option<ProxyVersion>) -> Result<HttpCheck, String> {
        let tls = match &settings.tls {
            Some(tls) => Some(TlsClient::new(tls)?),
            None => None,
        };
        Ok(HttpCheck {
            settings: settings.clone(),
            tls,
            proxy,
        })
    }

    fn wants_body(&self) -> bool {
        self.settings.body.is_some() || self.settings.body_regexp.is_some()
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        backend: &Backend,
    ) -> Result<(), CheckError> {
        let host = self.settings.host.as_deref().unwrap_or(backend.key());
        let request = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-health-check\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n",
            self.settings.method, self.settings.path
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let response = self.read_response(&mut stream).await?;
        self.verify(&response)
    }

    /// Reads until the headers end (and the body too, when it is checked): to EOF, the
    /// announced length, or [`MAX_RESPONSE`].
    async fn read_response<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<Vec<u8>, CheckError> {
        let mut response = Vec::with_capacity(4096);
        let mut buf = [0u8; 8192];
        while response.len() < MAX_RESPONSE {
            let room = (MAX_RESPONSE - response.len()).min(buf.len());
            let n = match stream.read(&mut buf[..room]).await {
                Ok(n) => n,
                // A TLS peer that closes without close_notify: what came is what counts.
                Err(_) if !response.is_empty() => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if let Some(head_end) = find(&response, b"\r\n\r\n") {
                if !self.wants_body() {
                    break;
                }
                let head = String::from_utf8_lossy(&response[..head_end]);
                if let Some(len) =
                    header(&head, "content-length").and_then(|v| v.parse::<usize>().ok())
                {
                    if response.len() >= (head_end + 4).saturating_add(len) {
                        break;
                    }
                }
            }
        }
        Ok(response)
    }

    fn verify(&self, response: &[u8]) -> Result<(), CheckError> {
        // A response cut before its headers end (or with headers past the cap) is not a
        // healthy answer, whatever its status line says.
        let Some(head_end) = find(response, b"\r\n\r\n") else {
            return Err(CheckError::Unhealthy(
                "the response ended before its headers did".into(),
            ));
        };
        let head = String::from_utf8_lossy(&response[..head_end]);
        let status_line = head.lines().next().unwrap_or_default();
        let mut words = status_line.split(' ');
        let status = match (words.next(), words.next()) {
            (Some(version), Some(code))
                if version.starts_with("HTTP/1.")
                    && code.len() == 3
                    && code.bytes().all(|b| b.is_ascii_digit()) =>
            {
                code.parse::<u16>().ok()
            }
            _ => None,
        }
        .ok_or_else(|| {
            CheckError::Unhealthy(format!(
                "not an HTTP response: {:?}",
                status_line.chars().take(80).collect::<String>()
            ))
        })?;
        if !self
            .settings
            .status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
        {
            return Err(CheckError::Unhealthy(format!(
                "status {status} not accepted ({})",
                status_line.trim()
            )));
        }
        if !self.wants_body() {
            return Ok(());
        }
        let raw = &response[head_end + 4..];
        let body = if header(&head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            unchunk(raw)
        } else {
            raw.to_vec()
        };
        let body = String::from_utf8_lossy(&body);
        if let Some(needle) = &self.settings.body {
            if !body.contains(needle.as_str()) {
                return Err(CheckError::Unhealthy(format!(
                    "body does not contain {needle:?}"
                )));
            }
        }
        if let Some(re) = &self.settings.body_regexp {
            if !re.regex().is_match(&body) {
                return Err(CheckError::Unhealthy(format!(
                    "body does not match /{}/",
                    re.as_str()
                )));
            }
        }
        Ok(())
    }
}

impl HealthCheck for HttpCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            match &self.tls {
                Some(tls) => {
                    let stream = tls.connect(backend, self.proxy).await?;
                    self.exchange(stream, backend).await
                }
                None => {
                    let stream = tcp::connect(backend, self.proxy).await?;
                    self.exchange(stream, backend).await
                }
            }
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (lower-case) in `head`.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A chunked body decoded, as far as it is complete.
fn unchunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    // Each round consumes at least one chunk header: bounded by the input's length.
    while let Some(line_end) = find(rest, b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        let data = &rest[line_end + 2..];
        if size == 0 || data.len() < size {
            body.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        body.extend_from_slice(&data[..size]);
        rest = data[size..].strip_prefix(b"\r\n").unwrap_or(&data[size..]);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            unchunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(unchunk(b"zz\r\n"), b"");
        assert_eq!(unchunk(b"10\r\nshort"), b"short");
    }

    fn body_check(needle: &str) -> HttpCheck {
        HttpCheck::new(
            &HttpSettings {
                tls: None,
                method: "GET".into(),
                path: "/".into(),
                host: None,
                status: vec![(200, 299)],
                body: Some(needle.into()),
                body_regexp: None,
            },
            None,
        )
        .expect("check")
    }

    #[tokio::test]
    async fn a_huge_content_length_does_not_overflow() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nup";
        let check = body_check("up");
        let response = check.read_response(&mut &wire[..]).await.expect("read");
        assert_eq!(response, wire);
        check.verify(&response).expect("passes");
    }

    #[tokio::test]
    async fn no_more_than_max_response_is_read() {
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut body = vec![b'a'; MAX_RESPONSE - head.len()];
        body.extend_from_slice(b"NEEDLE");
        body.extend_from_slice(&[b'a'; 10_000]);
        // The head arrives alone, so the later reads do not end on the cap.
        let mut stream = (&head[..]).chain(&body[..]);
        let check = body_check("NEEDLE");
        let response = check.read_response(&mut stream).await.expect("read");
        assert_eq!(response.len(), MAX_RESPONSE);
        assert!(check.verify(&response).is_err());
    }

    #[test]
    fn only_a_whole_head_with_a_well_formed_status_passes() {
        let check = body_check("up");
        check.verify(b"HTTP/1.1 200 OK\r\n\r\nup").expect("whole");
        check
            .verify(b"HTTP/1.0 200\r\n\r\nup")
            .expect("no reason phrase");
        for broken in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.1 2001 OK\r\n\r\nup",
            b"HTTP/1.1 20x OK\r\n\r\nup",
            b"HTTP/2 200 OK\r\n\r\nup",
        ] {
            assert!(
                check.verify(broken).is_err(),
                "{:?}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked";
        assert_eq!(header(head, "content-length"), Some("5"));
        assert_eq!(header(head, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(head, "host"), None);
    }
}
