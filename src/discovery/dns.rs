//! `kind = "dns"`: the A and AAAA records of one host name, each a backend on one port,
//! fetched again when their TTL runs out. Also the DNS exchange `srv` uses: one query to
//! one named server over UDP or TCP, with every section of the answer kept (the
//! resolver's cache drops the additional section that SRV answers carry addresses in).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{BoxFuture, DiscoveryError, Source};
use crate::backend::BackendSpec;
use crate::config::{DnsParams, DnsProtocol};

/// Bounds on the refresh interval, whatever a TTL says.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// Largest UDP answer asked for (EDNS); a larger one comes truncated and is asked again
/// over TCP.
const UDP_PAYLOAD: u16 = 4096;
/// Datagrams read while waiting for the one answering our query id.
const MAX_STRAY_DATAGRAMS: usize = 16;

/// The `dns` source.
pub struct DnsSource {
    params: DnsParams,
    /// `interval`, when set, caps the TTL-driven refresh.
    interval: Duration,
    /// When the last answer goes stale.
    ttl: Duration,
}

impl DnsSource {
    pub fn new(params: &DnsParams, interval: Duration) -> Self {
        DnsSource {
            params: params.clone(),
            interval,
            ttl: MIN_REFRESH,
        }
    }

    async fn addresses(&self) -> Result<(Vec<IpAddr>, Duration), DiscoveryError> {
        let host = &self.params.hostname;
        let Some(server) = self.params.server else {
            // The system's resolver (what host names in static lists use).
            return match crate::resolve::lookup(host, self.params.port).await {
                Some((addrs, ttl)) => Ok((addrs.iter().map(SocketAddr::ip).collect(), ttl)),
                None => Err(DiscoveryError::Invalid(format!("{host} did not resolve"))),
            };
        };
        let name = fqdn(host)?;
        let mut ips = Vec::new();
        let mut ttl = MAX_REFRESH;
        let mut failure = None;
        for rtype in [RecordType::A, RecordType::AAAA] {
            let answer = match exchange(server, self.params.protocol, &name, rtype).await {
                Ok(answer) => answer,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            for record in answer.answers() {
                if let Some(ip) = address_of(record) {
                    ips.push(ip);
                    ttl = ttl.min(Duration::from_secs(u64::from(record.ttl())));
                }
            }
        }
        // Some servers refuse the record type they have nothing for (dnsmasq refuses
        // AAAA without an upstream): addresses of the other type are the answer. With
        // none at all, the failure is.
        match failure {
            Some(e) if ips.is_empty() => Err(e),
            _ => Ok((ips, ttl)),
        }
    }
}

impl Source for DnsSource {
    fn fetch(&mut self) -> BoxFuture<'_, Result<Vec<BackendSpec>, DiscoveryError>> {
        Box::pin(async move {
            let (mut ips, ttl) = self.addresses().await?;
            self.ttl = ttl;
            // Sorted, so that the same records in another order are the same list.
            ips.sort();
            ips.dedup();
            let port = self.params.port;
            Ok(ips
                .into_iter()
                .map(|ip| BackendSpec::new(ip.to_string(), port))
                .collect())
        })
    }

    fn next_fetch(&self) -> Option<Duration> {
        let mut next = self.ttl.clamp(MIN_REFRESH, MAX_REFRESH);
        if !self.interval.is_zero() {
            next = next.min(self.interval);
        }
        Some(next)
    }
}

/// `text` as an absolute DNS name (a name in the configuration is never searched).
pub(crate) fn fqdn(text: &str) -> Result<Name, DiscoveryError> {
    let mut name = Name::from_ascii(text)
        .map_err(|e| DiscoveryError::Invalid(format!("\"{text}\" is not a DNS name: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// The address of an A or AAAA record.
pub(crate) fn address_of(record: &Record) -> Option<IpAddr> {
    match record.data() {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// Asks `server` for the `rtype` records of `name`. A truncated UDP answer is asked again
/// over TCP. "No such name" is an answer (with no records); other failures are errors.
pub(crate) async fn exchange(
    server: SocketAddr,
    protocol: DnsProtocol,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, DiscoveryError> {
    let id: u16 = rand::random();
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    query.set_edns(edns);
    let bytes = query
        .to_vec()
        .map_err(|e| DiscoveryError::Invalid(format!("cannot encode the query: {e}")))?;
    let mut answer = match protocol {
        DnsProtocol::Udp => over_udp(server, id, &bytes).await?,
        DnsProtocol::Tcp => over_tcp(server, &bytes).await?,
    };
    if answer.truncated() && protocol == DnsProtocol::Udp {
        answer = over_tcp(server, &bytes).await?;
    }
    if answer.id() != id {
        return Err(DiscoveryError::Invalid(format!(
            "{server} answered another query"
        )));
    }
    match answer.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer),
        code => Err(DiscoveryError::Invalid(format!(
            "{server} answered {code} for {name} {rtype}"
        ))),
    }
}

fn decode(bytes: &[u8], server: SocketAddr) -> Result<Message, DiscoveryError> {
    Message::from_vec(bytes)
        .map_err(|e| DiscoveryError::Invalid(format!("{server} sent a malformed answer: {e}")))
}

async fn over_udp(server: SocketAddr, id: u16, query: &[u8]) -> Result<Message, DiscoveryError> {
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(UDP_PAYLOAD)];
    // A connected socket only hears from `server`; a late answer to an earlier query
    // (another id) is skipped.
    for _ in 0..MAX_STRAY_DATAGRAMS {
        let n = socket.recv(&mut buf).await?;
        let message = decode(&buf[..n], server)?;
        if message.id() == id {
            return Ok(message);
        }
    }
    Err(DiscoveryError::Invalid(format!(
        "{server} sent only answers to other queries"
    )))
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> Result<Message, DiscoveryError> {
    let mut stream = TcpStream::connect(server).await?;
    let len =
        u16::try_from(query.len()).map_err(|_| DiscoveryError::Invalid("query too long".into()))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    decode(&buf, server)
}
