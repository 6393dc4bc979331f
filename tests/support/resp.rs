//! A Redis client of a few lines, for tests that reach Redis through Sluice.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{connect_from, WAIT};

/// Sends one Redis command and returns its reply: a status, error or integer line with
/// its type byte (`+OK`, `-READONLY …`), or a bulk string's contents.
pub async fn resp_call(stream: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut wire = format!("*{}\r\n", args.len());
    for arg in args {
        wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let reply = async {
        stream.get_mut().write_all(wire.as_bytes()).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let line = line.trim_end().to_owned();
        let Some(len) = line.strip_prefix('$') else {
            return Ok::<_, std::io::Error>(line);
        };
        let len: usize = len.parse().expect("bulk length");
        assert!(len <= 64 * 1024, "bulk reply of {len} bytes");
        let mut body = vec![0; len + 2];
        stream.read_exact(&mut body).await?;
        body.truncate(len);
        Ok(String::from_utf8(body).expect("utf-8 reply"))
    };
    timeout(WAIT, reply)
        .await
        .expect("redis reply in time")
        .expect("redis reply")
}

/// What a client connecting through Sluice finds: the Redis it reached and whether it
/// takes a write.
pub struct RedisSeen {
    pub port: u16,
    pub role: String,
    pub write: String,
}

pub async fn redis_through(addr: SocketAddr, value: &str) -> RedisSeen {
    let mut stream = BufReader::new(connect_from(addr, None).await);
    let info = resp_call(&mut stream, &["INFO"]).await;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in INFO:\n{info}"))
            .trim()
            .to_owned()
    };
    RedisSeen {
        port: field("tcp_port").parse().expect("tcp_port"),
        role: field("role"),
        write: resp_call(&mut stream, &["SET", "sluice:through", value]).await,
    }
}
