//! The filter that drops blocked clients' connection requests (`client_flood_block`)
//! on a listening socket, before the kernel answers them: a classic BPF socket filter
//! (`SO_ATTACH_FILTER`, which needs no privilege), rebuilt from the server's block list
//! whenever it changes.
//!
//! The kernel runs a listening socket's filter on every segment addressed to it, with
//! the packet's data at the TCP header and its IP header at `SKF_NET_OFF`. The program
//! keeps everything but a bare SYN (a segment with SYN set and ACK clear: a new
//! connection request), then compares the source address under each block's prefix
//! mask. A dropped SYN is as if lost: the client's kernel retries it after a second or
//! more, and nothing is spent on it here. Accepted sockets inherit the filter; they
//! never receive a bare SYN, so it keeps all of their segments.

use std::io;

use ipnet::IpNet;
use libc::{
    BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MEM, BPF_MISC,
    BPF_RET, BPF_ST, BPF_TAX, BPF_TXA, BPF_W, SKF_NET_OFF,
};
use socket2::{SockFilter, SockRef};

/// What a filter returns to keep a segment whole, and to drop it.
const KEEP: u32 = u32::MAX;
const DROP: u32 = 0;
/// The TCP header's flags byte, and the flags that tell a bare SYN.
const TCP_FLAGS: u32 = 13;
const SYN: u32 = 0x02;
const SYN_ACK: u32 = 0x12;
/// Where the IP header's fields are, past the network-header base.
const IP_VERSION: u32 = 0;
const IPV4_SOURCE: u32 = 12;
const IPV6_SOURCE: u32 = 8;

/// The network-header base as a load offset (the kernel reads it as a negative `i32`).
fn net(offset: u32) -> u32 {
    (SKF_NET_OFF as u32).wrapping_add(offset)
}

fn op(code: u32, k: u32) -> SockFilter {
    SockFilter::new(code as u16, 0, 0, k)
}

fn jump(code: u32, k: u32, if_true: u8, if_false: u8) -> SockFilter {
    SockFilter::new(code as u16, if_true, if_false, k)
}

/// The program that drops bare SYNs from `blocked` and keeps everything else; `None`
/// when nothing is blocked (the socket is then left without a filter).
pub fn program(blocked: &[IpNet]) -> Option<Vec<SockFilter>> {
    if blocked.is_empty() {
        return None;
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for block in blocked {
        match block {
            IpNet::V4(net) => v4_block(&mut v4, net.network().into(), net.netmask().into()),
            IpNet::V6(net) => v6_block(&mut v6, net.network().octets(), net.prefix_len()),
        }
    }
    let mut program = vec![
        op(BPF_LD | BPF_B | BPF_ABS, TCP_FLAGS),
        op(BPF_ALU | BPF_AND | BPF_K, SYN_ACK),
        jump(BPF_JMP | BPF_JEQ | BPF_K, SYN, 1, 0),
        op(BPF_RET | BPF_K, KEEP),
        op(BPF_LD | BPF_B | BPF_ABS, net(IP_VERSION)),
        op(BPF_ALU | BPF_AND | BPF_K, 0xf0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x40, 1, 0),
    ];
    // Past the IPv4 part: its address load, its blocks and its closing KEEP.
    let v4_len = 2 + v4.len() + 1;
    program.push(op(BPF_JMP | BPF_JA, v4_len as u32));
    program.push(op(BPF_LD | BPF_W | BPF_ABS, net(IPV4_SOURCE)));
    program.push(op(BPF_MISC | BPF_TAX, 0));
    program.extend(v4);
    program.push(op(BPF_RET | BPF_K, KEEP));
    // IPv6: the source's four words into scratch memory, then the blocks.
    for word in 0..4 {
        program.push(op(BPF_LD | BPF_W | BPF_ABS, net(IPV6_SOURCE + 4 * word)));
        program.push(op(BPF_ST, word));
    }
    program.extend(v6);
    program.push(op(BPF_RET | BPF_K, KEEP));
    Some(program)
}

/// An IPv4 block: the address (in X) under the mask, against the network.
fn v4_block(program: &mut Vec<SockFilter>, network: u32, mask: u32) {
    program.extend([
        op(BPF_MISC | BPF_TXA, 0),
        op(BPF_ALU | BPF_AND | BPF_K, mask),
        jump(BPF_JMP | BPF_JEQ | BPF_K, network, 0, 1),
        op(BPF_RET | BPF_K, DROP),
    ]);
}

/// An IPv6 block: each word of the address the prefix covers (in scratch memory) under
/// its mask, against the network's; any mismatch skips to the next block.
fn v6_block(program: &mut Vec<SockFilter>, network: [u8; 16], prefix: u8) {
    let words = u32::from(prefix).div_ceil(32);
    for word in 0..words {
        let bits = (u32::from(prefix) - 32 * word).min(32);
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        let start = 4 * word as usize;
        let value = u32::from_be_bytes([
            network[start],
            network[start + 1],
            network[start + 2],
            network[start + 3],
        ]);
        // After this word's comparison: three instructions per word left, then DROP.
        let rest = 3 * (words - word - 1) + 1;
        program.extend([
            op(BPF_LD | BPF_MEM, word),
            op(BPF_ALU | BPF_AND | BPF_K, mask),
            jump(BPF_JMP | BPF_JEQ | BPF_K, value & mask, 0, rest as u8),
        ]);
    }
    program.push(op(BPF_RET | BPF_K, DROP));
}

/// Puts `blocked`'s filter on a listening socket, or takes the filter off when nothing
/// is blocked.
pub fn apply(socket: SockRef<'_>, blocked: &[IpNet]) -> io::Result<()> {
    match program(blocked) {
        Some(program) => socket.attach_filter(&program),
        None => match socket.detach_filter() {
            // ENOENT: there was none.
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr, TcpListener};
    use std::time::Duration;

    use socket2::{Domain, Socket, Type};

    use super::*;

    /// Whether a connection from `from` to `to` completes its handshake within a short
    /// wait (a dropped SYN is retried only after a second).
    fn connects(from: IpAddr, to: SocketAddr) -> bool {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::new(from, 0).into()).expect("bind");
        socket
            .connect_timeout(&to.into(), Duration::from_millis(400))
            .is_ok()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn blocked_sources_cannot_connect_and_the_others_can() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let blocked = nets(&["127.0.0.2/32", "127.0.1.0/24", "2001:db8::/64"]);
        apply(SockRef::from(&listener), &blocked).expect("attach");
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert!(!connects(ip("127.0.0.2"), addr));
        assert!(!connects(ip("127.0.1.9"), addr));
        assert!(connects(ip("127.0.0.3"), addr));
        assert!(connects(ip("127.0.2.9"), addr));
        apply(SockRef::from(&listener), &[]).expect("detach");
        assert!(connects(ip("127.0.0.2"), addr));
        // Detaching twice is no error.
        apply(SockRef::from(&listener), &[]).expect("detach again");
    }

    #[test]
    fn ipv6_blocks_compare_under_their_prefix() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback on this machine
        };
        let addr = listener.local_addr().expect("address");
        let loopback = IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
        for (list, open) in [
            (&["::1/128"][..], false),
            (&["::/64"][..], false),
            (&["::/0"][..], false),
            (&["::2/128", "2001:db8::/32", "127.0.0.1/32"][..], true),
            (&["::1:0:0:0:0/80"][..], true),
        ] {
            apply(SockRef::from(&listener), &nets(list)).expect("attach");
            assert_eq!(connects(loopback, addr), open, "{list:?}");
        }
    }

    #[test]
    fn an_established_connection_keeps_flowing_when_its_client_is_blocked() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (mut accepted, _) = listener.accept().expect("accept");
        // A connection whose handshake ended just after its client was blocked gets
        // the filter that names it: only bare SYNs are dropped.
        apply(SockRef::from(&accepted), &nets(&["127.0.0.1/32"])).expect("attach");
        client.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        accepted
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        accepted.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn the_largest_list_fits_a_socket_filter() {
        let blocked: Vec<IpNet> = (0..crate::proxy::state::clients::blocks::MAX_BLOCKED)
            .map(|i| format!("2001:db8:{i:x}::/128").parse().expect("net"))
            .collect();
        let program = program(&blocked).expect("a program");
        // The kernel's BPF_MAXINSNS.
        assert!(program.len() <= 4096, "{}", program.len());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        apply(SockRef::from(&listener), &blocked).expect("the kernel takes it");
    }
}
