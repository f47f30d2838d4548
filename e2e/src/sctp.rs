//! SCTP without kernel SCTP sockets: the association's first two packets (INIT,
//! INIT ACK) over raw IP sockets, for kernels built without `CONFIG_IP_SCTP`.
//!
//! Only used when asked (`--sctp-raw`). The packets are real SCTP on the wire,
//! with the CRC32c checksum conntrack verifies, so policies (`-p sctp --dport`),
//! conntrack's SCTP tracking (INIT is NEW, INIT ACK is its reply) and drops apply to
//! them exactly as to a kernel association's handshake. A probe is allowed when the
//! INIT ACK comes back, denied when nothing does before the timeout, and a lab
//! error when an ABORT comes back.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::probe::Outcome;

const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
const ABORT: u8 = 6;

static CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82f6_3b78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC32c (Castagnoli), as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Fills in the checksum of an SCTP packet (common header + chunks).
fn seal(packet: &mut [u8]) {
    packet[8..12].copy_from_slice(&[0; 4]);
    let crc = crc32c(packet);
    // The checksum goes on the wire least significant byte first (RFC 9260, Appendix A).
    packet[8..12].copy_from_slice(&crc.to_le_bytes());
}

fn header(src: u16, dst: u16, vtag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&src.to_be_bytes());
    p.extend_from_slice(&dst.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

/// INIT / INIT ACK body: initiate tag, a_rwnd, streams, initial TSN.
fn init_body(p: &mut Vec<u8>, tag: u32) {
    p.extend_from_slice(&tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes());
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&tag.wrapping_add(1).to_be_bytes());
}

pub fn build_init(src: u16, dst: u16, tag: u32) -> Vec<u8> {
    let mut p = header(src, dst, 0);
    p.extend_from_slice(&[INIT, 0]);
    p.extend_from_slice(&20u16.to_be_bytes());
    init_body(&mut p, tag);
    seal(&mut p);
    p
}

pub fn build_init_ack(src: u16, dst: u16, peer_tag: u32, tag: u32) -> Vec<u8> {
    let mut p = header(src, dst, peer_tag);
    p.extend_from_slice(&[INIT_ACK, 0]);
    // 20 bytes of chunk, then a State Cookie parameter (type 7) of 4 + 8 bytes.
    p.extend_from_slice(&32u16.to_be_bytes());
    init_body(&mut p, tag);
    p.extend_from_slice(&7u16.to_be_bytes());
    p.extend_from_slice(&12u16.to_be_bytes());
    p.extend_from_slice(b"palisade");
    seal(&mut p);
    p
}

/// The parts of an SCTP packet the lab looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: u16,
    pub dst: u16,
    pub vtag: u32,
    pub chunk: u8,
    /// The initiate tag of an INIT or INIT ACK.
    pub initiate_tag: Option<u32>,
}

pub fn parse(p: &[u8]) -> Option<Parsed> {
    if p.len() < 16 {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let chunk = p[12];
    let initiate_tag = (matches!(chunk, INIT | INIT_ACK) && p.len() >= 20).then(|| u32_at(16));
    Some(Parsed {
        src: u16_at(0),
        dst: u16_at(2),
        vtag: u32_at(4),
        chunk,
        initiate_tag,
    })
}

/// A raw SCTP socket of one family (non-blocking, close-on-exec).
pub fn raw_socket(v6: bool) -> std::io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Receives one packet: its SCTP part (IPv4 raw sockets include the IP header)
/// and the sender's address.
fn recv(fd: libc::c_int, buf: &mut [u8], v6: bool) -> Option<(usize, usize, IpAddr)> {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: recvfrom(2) into buffers we own, with their sizes.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
            &mut from as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n <= 0 {
        return None;
    }
    let n = n as usize;
    let ip = if v6 {
        // SAFETY: the kernel filled an AF_INET6 address into the storage.
        let sin6 =
            unsafe { *(&from as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
        IpAddr::from(sin6.sin6_addr.s6_addr)
    } else {
        // SAFETY: the kernel filled an AF_INET address into the storage.
        let sin = unsafe { *(&from as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
        IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
    };
    let start = if v6 {
        0
    } else {
        ((buf.first()? & 0x0f) as usize) * 4
    };
    (start < n).then_some((start, n, ip))
}

fn send(fd: libc::c_int, packet: &[u8], to: IpAddr) {
    let addr = crate::sock::RawAddr::new(SocketAddr::new(to, 0));
    // SAFETY: sendto(2) from a slice we own to a valid address.
    unsafe {
        libc::sendto(
            fd,
            packet.as_ptr() as *const libc::c_void,
            packet.len(),
            0,
            addr.ptr(),
            addr.socklen(),
        );
    }
}

/// The server side: answers every INIT to a served port with an INIT ACK.
pub fn respond(fd: libc::c_int, v6: bool, ports: &BTreeSet<u16>, buf: &mut [u8]) {
    for _ in 0..256 {
        let Some((start, end, from)) = recv(fd, buf, v6) else {
            return;
        };
        let Some(p) = parse(&buf[start..end]) else {
            continue;
        };
        if p.chunk != INIT || p.vtag != 0 || !ports.contains(&p.dst) {
            continue;
        }
        let Some(peer_tag) = p.initiate_tag else {
            continue;
        };
        let tag = (peer_tag.rotate_left(13) ^ 0x5a5a_5a5a) | 1;
        send(fd, &build_init_ack(p.dst, p.src, peer_tag, tag), from);
    }
}

fn random_u32() -> u32 {
    let mut x = [0u8; 4];
    // SAFETY: getrandom(2) into a local buffer of its size.
    let n = unsafe { libc::getrandom(x.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    if n == 4 {
        u32::from_ne_bytes(x)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        t ^ std::process::id().rotate_left(16)
    }
}

/// The client side: sends an INIT, waits for the INIT ACK.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Outcome {
    let v6 = addr.is_ipv6();
    let fd = match raw_socket(v6) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Error(format!("raw SCTP socket: {e}")),
    };
    let raw = fd.as_raw_fd();
    let tag = random_u32() | 1;
    let src_port = 32768 + (random_u32() % 28000) as u16;
    let init = build_init(src_port, addr.port(), tag);
    let deadline = Instant::now() + timeout;
    send(raw, &init, addr.ip());
    let mut buf = [0u8; 2048];
    loop {
        match crate::sock::wait(raw, libc::POLLIN, deadline) {
            Ok(true) => {}
            Ok(false) => return Outcome::Denied,
            Err(e) => return Outcome::Error(format!("sctp {addr}: {e}")),
        }
        for _ in 0..256 {
            let Some((start, end, from)) = recv(raw, &mut buf, v6) else {
                break;
            };
            if from != addr.ip() {
                continue;
            }
            let Some(p) = parse(&buf[start..end]) else {
                continue;
            };
            if p.src != addr.port() || p.dst != src_port || p.vtag != tag {
                continue;
            }
            match p.chunk {
                INIT_ACK => return Outcome::Allowed,
                ABORT => return Outcome::Error(format!("sctp {addr}: ABORT (refused)")),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_and_init_ack_parse_back() {
        let init = build_init(40000, 80, 0xdead_beef);
        let p = parse(&init).expect("parses");
        assert_eq!((p.src, p.dst, p.vtag, p.chunk), (40000, 80, 0, INIT));
        assert_eq!(p.initiate_tag, Some(0xdead_beef));
        let ack = build_init_ack(80, 40000, 0xdead_beef, 7);
        let p = parse(&ack).expect("parses");
        assert_eq!(
            (p.src, p.dst, p.vtag, p.chunk),
            (80, 40000, 0xdead_beef, INIT_ACK)
        );
        assert_eq!(p.initiate_tag, Some(7));
        // The checksum covers the packet with a zero checksum field.
        let mut copy = ack.clone();
        copy[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(crc32c(&copy).to_le_bytes(), ack[8..12]);
    }
}
