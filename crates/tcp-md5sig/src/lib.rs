//! RFC 2385 TCP MD5 signatures on a socket: Linux's `TCP_MD5SIG` option, which BGP
//! sessions protected by a password need and which neither `socket2`, `nix` nor
//! `rustix` wraps. Sluice itself forbids unsafe code; the one `setsockopt` call it needs
//! lives here, on a structure built and checked in safe code.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

/// The longest key the kernel takes.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    /// A `struct sockaddr_storage`: the peer the key is for.
    addr: SockaddrStorage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: i32,
    key: [u8; MAX_KEY_LEN],
}

/// 128 bytes, aligned as `struct sockaddr_storage` is.
#[repr(C, align(8))]
struct SockaddrStorage([u8; 128]);

/// Signs every segment of `socket`'s connections with `peer` using `key` (and drops
/// unsigned segments from it). Set it before connecting (or, on a listening socket,
/// before the peer connects). An empty `key` removes the peer's key.
pub fn set(socket: &impl AsFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP MD5 key is at most {MAX_KEY_LEN} bytes"),
        ));
    }
    let mut sig = TcpMd5Sig {
        addr: SockaddrStorage([0; 128]),
        flags: 0,
        prefix_len: 0,
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // struct sockaddr_in / sockaddr_in6: the family in native order, then port 0 and,
    // for IPv6, the flow info, all zero; then the address.
    match peer {
        IpAddr::V4(v4) => {
            let family = (libc::AF_INET as u16).to_ne_bytes();
            sig.addr.0[..2].copy_from_slice(&family);
            sig.addr.0[4..8].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            let family = (libc::AF_INET6 as u16).to_ne_bytes();
            sig.addr.0[..2].copy_from_slice(&family);
            sig.addr.0[8..24].copy_from_slice(&v6.octets());
        }
    }
    let fd = socket.as_fd().as_raw_fd();
    // SAFETY: `sig` is a `struct tcp_md5sig` laid out as the kernel's (repr(C), the
    // fields of <linux/tcp.h> in order), fully initialised, and lives across the call;
    // the length passed is its size. `fd` is borrowed from a live socket.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structure_has_the_kernels_size() {
        // 128 (address) + 1 + 1 + 2 + 4 + 80.
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn a_key_is_set_on_a_socket_and_a_long_one_refused() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        set(&socket, "127.0.0.2".parse().expect("ip"), b"secret").expect("set");
        let long = [b'k'; MAX_KEY_LEN + 1];
        let error = set(&socket, "127.0.0.2".parse().expect("ip"), &long).expect_err("long");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
