//! What a UDP server counts beyond its sessions.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::clients::Limit;

/// Why a datagram was dropped; the `reason` label of `sluice_udp_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpDrop {
    /// The socket's send buffer was full.
    QueueFull,
    /// The listening socket's receive queue was full (counted by the kernel, reported
    /// with the next datagram read).
    ReceiveQueueFull,
    /// Too large for the other side's address family (EMSGSIZE).
    TooBig,
    /// UDP sessions hold their whole share of file descriptors.
    NoDescriptor,
    /// The backend answered with ICMP port unreachable: nothing listens there.
    BackendRefused,
    /// Any other send error.
    SendError,
    /// Its client sent more datagrams than `datagram_rate_per_client` lets through.
    DatagramRate,
    /// Its client sent more bytes than `byte_rate_per_client` lets through.
    ByteRate,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 8] = [
        UdpDrop::QueueFull,
        UdpDrop::ReceiveQueueFull,
        UdpDrop::TooBig,
        UdpDrop::NoDescriptor,
        UdpDrop::BackendRefused,
        UdpDrop::SendError,
        UdpDrop::DatagramRate,
        UdpDrop::ByteRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UdpDrop::QueueFull => "queue_full",
            UdpDrop::ReceiveQueueFull => "receive_queue_full",
            UdpDrop::TooBig => "too_big",
            UdpDrop::NoDescriptor => "no_descriptor",
            UdpDrop::BackendRefused => "backend_refused",
            UdpDrop::SendError => "send_error",
            UdpDrop::DatagramRate => "datagram_rate",
            UdpDrop::ByteRate => "byte_rate",
        }
    }

    /// The drop a datagram rate's refusal counts as.
    pub(crate) fn from_limit(limit: Limit) -> UdpDrop {
        match limit {
            Limit::ByteRate => UdpDrop::ByteRate,
            _ => UdpDrop::DatagramRate,
        }
    }

    pub(crate) fn of(e: &io::Error) -> UdpDrop {
        match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::WouldBlock => UdpDrop::QueueFull,
            Some(libc::ENOBUFS) => UdpDrop::QueueFull,
            Some(libc::EMSGSIZE) => UdpDrop::TooBig,
            Some(libc::ECONNREFUSED) => UdpDrop::BackendRefused,
            _ => UdpDrop::SendError,
        }
    }
}

/// Datagram counters of one UDP server. Sessions are counted as connections
/// (`accepted`, `active`), and datagrams refused by the ACL, the session cap or for want
/// of a backend in the server's `refused_*` and `no_backend` counters.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub from_clients: AtomicU64,
    pub to_clients: AtomicU64,
    dropped: [AtomicU64; UdpDrop::ALL.len()],
    /// Sessions whose backend had never answered, ended to give their descriptor to a
    /// new session when the budget was used up (`reason="no_descriptor"`).
    pub sessions_evicted: AtomicU64,
}

impl UdpStats {
    pub fn dropped(&self, reason: UdpDrop) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn drop_many(&self, reason: UdpDrop, count: u64) {
        self.dropped[reason as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn drop_one(&self, reason: UdpDrop) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}
