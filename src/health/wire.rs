//! What the checks that speak a backend's own protocol (Redis, MySQL, PostgreSQL) share:
//! connecting, reading framed replies under a size cap, and picking fields out of a
//! frame without indexing past its end.
//!
//! Sizes are bounded here; time is bounded by the caller's timeout around the whole
//! check, so nothing below waits on its own clock.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::CheckError;

pub(super) use super::tcp::connect;

/// A protocol violation: the backend answered, but not in its protocol.
pub(super) fn malformed(what: impl std::fmt::Display) -> CheckError {
    CheckError::Unhealthy(format!("malformed reply: {what}"))
}

/// What a frame parser returns for the front of a buffer: a whole frame and how many
/// bytes it took, `None` when more bytes are needed, or an error for bytes that can
/// never become a valid frame.
pub(super) type Parsed<T> = Result<Option<(T, usize)>, CheckError>;

/// Bytes asked of the socket per read.
const CHUNK: usize = 4096;

/// A connection that reads whole frames, holding at most `frame_max` unparsed bytes and
/// reading at most `total_max` bytes over its life.
pub(super) struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    frame_max: usize,
    /// Bytes that may still be read: a backend that streams valid but endless frames
    /// is cut off too, not only one that sends one huge frame.
    budget: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(stream: S, frame_max: usize, total_max: usize) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
            frame_max,
            budget: total_max,
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), CheckError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame, as `parse` cuts it from the bytes received.
    pub(super) async fn next<T>(
        &mut self,
        parse: impl Fn(&[u8]) -> Parsed<T>,
    ) -> Result<T, CheckError> {
        loop {
            if let Some((frame, used)) = parse(&self.buf)? {
                self.buf.drain(..used.min(self.buf.len()));
                return Ok(frame);
            }
            if self.buf.len() >= self.frame_max {
                return Err(malformed(format!(
                    "a reply longer than {} bytes",
                    self.frame_max
                )));
            }
            if self.budget == 0 {
                return Err(malformed("the backend sent more than a check reads"));
            }
            let room = (self.frame_max - self.buf.len())
                .min(CHUNK)
                .min(self.budget);
            let start = self.buf.len();
            self.buf.resize(start + room, 0);
            let read = self.stream.read(&mut self.buf[start..]).await;
            let n = *read.as_ref().unwrap_or(&0);
            self.buf.truncate(start + n);
            read?;
            if n == 0 {
                let what = if self.buf.is_empty() {
                    "the backend closed the connection"
                } else {
                    "the backend closed the connection in the middle of a reply"
                };
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, what).into());
            }
            self.budget -= n;
        }
    }
}

/// Reads fields from a frame's payload; running past its end is an error, never a panic.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CheckError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| malformed("a truncated field"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self) -> Result<u8, CheckError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Bytes up to the next NUL, which is consumed but not returned.
    pub(super) fn cstr(&mut self) -> Result<&'a [u8], CheckError> {
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("a string without its terminating NUL"))?;
        self.pos += len + 1;
        Ok(&rest[..len])
    }

    /// Everything not read yet.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Lowercase hexadecimal, for the known vectors in tests.
#[cfg(test)]
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of one length byte and that many bytes, for exercising `Conn`.
    fn short_frame(buf: &[u8]) -> Parsed<Vec<u8>> {
        let Some(&len) = buf.first() else {
            return Ok(None);
        };
        let end = 1 + usize::from(len);
        Ok((buf.len() >= end).then(|| (buf[1..end].to_vec(), end)))
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_sharing_a_read_are_cut_right() {
        let (client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in [&b"\x03a"[..], b"b", b"c\x02de\x01", b"f"] {
                server.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            server
        });
        let mut conn = Conn::new(client, 1024, 1024);
        assert_eq!(conn.next(short_frame).await.expect("first"), b"abc");
        assert_eq!(conn.next(short_frame).await.expect("second"), b"de");
        assert_eq!(conn.next(short_frame).await.expect("third"), b"f");
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn eof_mid_frame_is_an_error() {
        let (client, mut server) = tokio::io::duplex(64);
        server.write_all(b"\x05ab").await.expect("write");
        drop(server);
        let mut conn = Conn::new(client, 1024, 1024);
        let err = conn.next(short_frame).await.expect_err("truncated");
        assert!(err.to_string().contains("middle of a reply"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_is_an_error() {
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(&[200; 201]).await.expect("write");
        let mut conn = Conn::new(client, 16, 1024);
        let err = conn.next(short_frame).await.expect_err("too long");
        assert!(err.to_string().contains("longer than 16"), "{err}");
    }

    #[tokio::test]
    async fn endless_small_frames_run_out_of_budget() {
        let (client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move { while server.write_all(b"\x01x").await.is_ok() {} });
        let mut conn = Conn::new(client, 16, 100);
        let mut frames = 0;
        let err = loop {
            match conn.next(short_frame).await {
                Ok(_) => frames += 1,
                Err(e) => break e,
            }
        };
        assert!(frames <= 50, "{frames}");
        assert!(err.to_string().contains("more than a check reads"), "{err}");
        drop(conn);
        writer.await.expect("writer");
    }

    #[test]
    fn cursor_never_reads_past_the_end() {
        let mut c = Cursor::new(b"ab\0c");
        assert_eq!(c.cstr().expect("cstr"), b"ab");
        assert!(c.take(2).is_err());
        assert!(c.array::<4>().is_err());
        assert_eq!(c.u8().expect("u8"), b'c');
        assert!(c.is_empty());
        assert!(c.u8().is_err());
        assert!(c.cstr().is_err());
        assert!(Cursor::new(b"").take(usize::MAX).is_err());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
    }
}
