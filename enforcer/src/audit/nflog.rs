//! NFLOG over netlink, without libnetfilter_log: a raw `AF_NETLINK` /
//! `NETLINK_NETFILTER` socket bound to one log group ([`NflogSocket`]), and a pure
//! decoder of what it receives ([`parse_datagram`]).
//!
//! The socket asks for copy-packet mode with a small copy range (headers only),
//! lets the kernel batch up to [`QUEUE_THRESHOLD`] packets per datagram (flushed
//! after [`FLUSH_TIMEOUT_CS`] hundredths of a second at the latest: one wake-up
//! per batch instead of per packet), and has a large receive buffer. When the
//! reader falls behind anyway the kernel drops messages and the next `recv` fails
//! with `ENOBUFS` ([`RecvError::Overrun`]): the caller records a gap.
//!
//! Wire format (`linux/netfilter/nfnetlink_log.h`): each message is a netlink
//! header (host byte order), a `nfgenmsg` (family, version, group in network
//! order) and attributes (`nla_len`, `nla_type`, value, 4-byte aligned) whose
//! values are in network byte order.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use thiserror::Error;

use super::packet::{decode, PacketInfo};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULA_CFG_FLAGS: u16 = 6;
const NFULNL_CFG_F_SEQ: u16 = 1;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_UNBIND: u8 = 2;
const NFULNL_COPY_PACKET: u8 = 2;

const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_SEQ: u16 = 12;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Packets per datagram the kernel may queue before sending.
pub const QUEUE_THRESHOLD: u32 = 64;
/// Longest a queued packet waits, in hundredths of a second.
pub const FLUSH_TIMEOUT_CS: u32 = 5;
/// Bytes of each packet copied: IPv6 with a few extension headers and the ports.
pub const COPY_RANGE: u32 = 128;

/// One logged packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The `--nflog-prefix`: the rule's short id.
    pub prefix: String,
    pub packet: PacketInfo,
    /// When the kernel saw it (only when the packet carries a timestamp).
    pub timestamp_ms: Option<i64>,
    /// The group's message counter: a jump is the number of messages the kernel
    /// dropped (buffer overrun).
    pub seq: Option<u32>,
}

/// What one netlink message held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Record(LogRecord),
    /// A message that could not be decoded (counted and skipped).
    Malformed(String),
    /// An NFLOG message whose sequence number was read but not the rest (counted and
    /// skipped like `Malformed`; its number is no loss of the kernel's).
    Unreadable {
        seq: u32,
        reason: String,
    },
    /// An acknowledgement or error of a config request (0: success, else -errno).
    Ack(i32),
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Decodes every message of a datagram, in order. A message whose length makes
/// no sense ends the datagram (its end cannot be known): one `Malformed`.
pub fn parse_datagram(buf: &[u8], out: &mut impl FnMut(Parsed)) {
    let mut offset = 0;
    while offset + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(kind)) = (ne_u32(buf, offset), ne_u16(buf, offset + 4)) else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || offset + len > buf.len() {
            out(Parsed::Malformed(format!(
                "netlink message length {len} at offset {offset} of a {}-byte datagram",
                buf.len()
            )));
            return;
        }
        let msg = &buf[offset..offset + len];
        match kind {
            NLMSG_NOOP | NLMSG_DONE => {}
            NLMSG_ERROR => match msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4) {
                Some(code) => out(Parsed::Ack(i32::from_ne_bytes([
                    code[0], code[1], code[2], code[3],
                ]))),
                None => out(Parsed::Malformed("short netlink error message".into())),
            },
            k if k == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET => out(parse_packet(msg)),
            other => out(Parsed::Malformed(format!(
                "unexpected netlink message type {other:#x}"
            ))),
        }
        offset += align4(len);
    }
    if offset < buf.len() {
        out(Parsed::Malformed(format!(
            "{} trailing bytes after the last netlink message",
            buf.len() - offset
        )));
    }
}

/// One `NFULNL_MSG_PACKET` message (netlink header included).
fn parse_packet(msg: &[u8]) -> Parsed {
    let Some(mut attrs) = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..) else {
        return Parsed::Malformed("NFLOG message without its nfgenmsg header".into());
    };
    let mut prefix = None;
    let mut payload = None;
    let mut timestamp_ms = None;
    let mut seq = None;
    while attrs.len() >= 4 {
        let (Some(len), Some(kind)) = (ne_u16(attrs, 0), ne_u16(attrs, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || len > attrs.len() {
            return bad(
                seq,
                format!(
                    "NFLOG attribute length {len} with {} bytes left",
                    attrs.len()
                ),
            );
        }
        let value = &attrs[4..len];
        match kind & 0x3fff {
            NFULA_PREFIX => {
                let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                match std::str::from_utf8(&value[..end]) {
                    Ok(s) => prefix = Some(s.to_string()),
                    Err(_) => return bad(seq, "NFLOG prefix is not UTF-8".into()),
                }
            }
            NFULA_PAYLOAD => payload = Some(value),
            NFULA_SEQ if value.len() >= 4 => {
                seq = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
            }
            NFULA_TIMESTAMP if value.len() >= 16 => {
                let sec = u64::from_be_bytes(value[0..8].try_into().unwrap_or_default());
                let usec = u64::from_be_bytes(value[8..16].try_into().unwrap_or_default());
                timestamp_ms =
                    i64::try_from(sec.saturating_mul(1000).saturating_add(usec / 1000)).ok();
            }
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    let Some(prefix) = prefix else {
        return bad(seq, "NFLOG message without a prefix".into());
    };
    let Some(payload) = payload else {
        return bad(seq, format!("NFLOG message {prefix} without a payload"));
    };
    match decode(payload) {
        Ok(packet) => Parsed::Record(LogRecord {
            prefix,
            packet,
            timestamp_ms,
            seq,
        }),
        Err(e) => bad(seq, format!("NFLOG message {prefix}: {e}")),
    }
}

/// A message that could not be decoded, with its sequence number when that was read.
fn bad(seq: Option<u32>, reason: String) -> Parsed {
    match seq {
        Some(seq) => Parsed::Unreadable { seq, reason },
        None => Parsed::Malformed(reason),
    }
}

/// Errors of the socket.
#[derive(Debug, Error)]
pub enum NflogError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("NFLOG group {group}: {what}: {source}")]
    Config {
        group: u16,
        what: &'static str,
        source: io::Error,
    },
}

/// Why a `recv` returned nothing.
#[derive(Debug)]
pub enum RecvError {
    /// The receive timeout passed.
    Timeout,
    /// ENOBUFS: the kernel dropped messages it could not queue.
    Overrun,
    Io(io::Error),
}

/// A netlink socket bound to one NFLOG group, in the network namespace of the
/// thread that opened it.
#[derive(Debug)]
pub struct NflogSocket {
    fd: OwnedFd,
    group: u16,
}

impl NflogSocket {
    /// Opens the socket and binds `group` in copy-packet mode. `timeout` bounds each
    /// `recv` (so a reader can notice it should stop).
    pub fn bind(group: u16, timeout: Duration) -> Result<Self, NflogError> {
        // SAFETY: plain socket(2); the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NflogError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; we set the family.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NflogError::Socket(io::Error::last_os_error()));
        }
        let sock = NflogSocket { fd, group };
        // A large buffer absorbs bursts (FORCE: above rmem_max, we are root; the
        // plain option is the fallback).
        let size: libc::c_int = 8 << 20;
        if sock
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .is_err()
        {
            let _ = sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NflogError::Socket(io::Error::last_os_error()));
        }
        sock.config("bind", &attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]))?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        sock.config("copy mode", &attr(NFULA_CFG_MODE, &mode))?;
        sock.config(
            "queue threshold",
            &attr(NFULA_CFG_QTHRESH, &QUEUE_THRESHOLD.to_be_bytes()),
        )?;
        sock.config(
            "flush timeout",
            &attr(NFULA_CFG_TIMEOUT, &FLUSH_TIMEOUT_CS.to_be_bytes()),
        )?;
        sock.config(
            "sequence numbers",
            &attr(NFULA_CFG_FLAGS, &NFULNL_CFG_F_SEQ.to_be_bytes()),
        )?;
        sock.config(
            "buffer size",
            &attr(NFULA_CFG_NLBUFSIZ, &(64u32 << 10).to_be_bytes()),
        )?;
        Ok(sock)
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: value is a valid c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sends one config request for our group and waits for its acknowledgement
    /// (log messages that arrive meanwhile are dropped: nothing is logged yet
    /// for a fresh binding, and later changes come after the start).
    fn config(&self, what: &'static str, attrs: &[u8]) -> Result<(), NflogError> {
        let err = |source| NflogError::Config {
            group: self.group,
            what,
            source,
        };
        self.send_to_kernel(&config_message(self.group, attrs))
            .map_err(err)?;
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            let n = match self.recv(&mut buf) {
                Ok(n) => n,
                Err(RecvError::Io(e)) => return Err(err(e)),
                Err(RecvError::Timeout) => {
                    return Err(err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no acknowledgement",
                    )))
                }
                Err(RecvError::Overrun) => continue,
            };
            let mut ack = None;
            parse_datagram(&buf[..n], &mut |p| {
                if let Parsed::Ack(code) = p {
                    ack = Some(code);
                }
            });
            match ack {
                Some(0) => return Ok(()),
                Some(code) => return Err(err(io::Error::from_raw_os_error(-code))),
                None => continue,
            }
        }
        Err(err(io::Error::other("no acknowledgement")))
    }

    /// Sets the socket's receive buffer (the kernel doubles it for its bookkeeping).
    /// The reader keeps the 8 MiB `bind` asks for; a small one makes overruns happen
    /// (tests).
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
    }

    /// Sends one netlink message to the kernel.
    fn send_to_kernel(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer of the given length; the kernel's address is zeroed.
        let rc = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::addr_of!(kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one datagram (possibly several messages).
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        // SAFETY: buf is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS) => Err(RecvError::Overrun),
            Some(libc::EAGAIN) | Some(libc::EINTR) => Err(RecvError::Timeout),
            _ => Err(RecvError::Io(e)),
        }
    }
}

impl Drop for NflogSocket {
    fn drop(&mut self) {
        // Unbind so the group is free at once for the next reader; errors are moot.
        let msg = config_message(self.group, &attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_UNBIND]));
        let _ = self.send_to_kernel(&msg);
    }
}

/// One netlink attribute, padded.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(align4(len));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(len), 0);
    out
}

/// A config request for `group` carrying `attrs`.
fn config_message(group: u16, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // seq
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    out.push(libc::AF_UNSPEC as u8);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(attrs);
    out
}

/// Builds an NFLOG packet message as the kernel sends it (tests and benches).
pub fn packet_message(prefix: &str, payload: &[u8], family: u8, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend(attr(1, &[0x08, 0x00, 3, 0])); // NFULA_PACKET_HDR: hw proto, hook
    attrs.extend(attr(NFULA_SEQ, &seq.to_be_bytes()));
    let mut p = prefix.as_bytes().to_vec();
    p.push(0);
    attrs.extend(attr(NFULA_PREFIX, &p));
    attrs.extend(attr(NFULA_PAYLOAD, payload));
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&100u16.to_be_bytes());
    out.extend_from_slice(&attrs);
    out.resize(align4(out.len()), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::packet::tests::{v4_tcp_syn, v6_udp};

    fn parse(buf: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        parse_datagram(buf, &mut |p| out.push(p));
        out
    }

    #[test]
    fn decodes_a_batch_of_messages() {
        let mut buf = packet_message("PabcR0I", &v4_tcp_syn(), 2, 1);
        buf.extend(packet_message("TdefDE-0123", &v6_udp(), 10, 2));
        let out = parse(&buf);
        assert_eq!(out.len(), 2, "{out:?}");
        match (&out[0], &out[1]) {
            (Parsed::Record(a), Parsed::Record(b)) => {
                assert_eq!(a.prefix, "PabcR0I");
                assert_eq!(a.packet.dst_port, Some(80));
                assert_eq!(b.prefix, "TdefDE-0123");
                assert_eq!(b.packet.dst_port, Some(53));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_messages_are_reported_and_the_rest_decoded() {
        // A message whose payload is cut inside the IP header, between two good ones.
        let good = packet_message("PabcR0I", &v4_tcp_syn(), 2, 1);
        let cut = packet_message("PbadR1I", &v4_tcp_syn()[..10], 2, 2);
        let mut buf = good.clone();
        buf.extend(&cut);
        buf.extend(&good);
        let out = parse(&buf);
        assert_eq!(out.len(), 3);
        assert!(matches!(out[0], Parsed::Record(_)));
        assert!(
            matches!(&out[1], Parsed::Unreadable { seq: 2, reason } if reason.contains("PbadR1I")),
            "{out:?}"
        );
        assert!(matches!(out[2], Parsed::Record(_)));
        // Without a prefix.
        let mut noprefix = good.clone();
        // Overwrite the prefix attribute's type with an unknown one.
        let at = NLMSG_HDRLEN + NFGENMSG_LEN + 8 + 8 + 2;
        noprefix[at..at + 2].copy_from_slice(&99u16.to_ne_bytes());
        assert!(
            matches!(&parse(&noprefix)[0], Parsed::Unreadable { reason, .. } if reason.contains("prefix"))
        );
        // An attribute longer than the message.
        let mut longattr = good.clone();
        let at = NLMSG_HDRLEN + NFGENMSG_LEN;
        longattr[at..at + 2].copy_from_slice(&999u16.to_ne_bytes());
        assert!(matches!(parse(&longattr)[0], Parsed::Malformed(_)));
        // (the length of the first attribute is broken: the sequence number after it is unread)
        // A netlink length beyond the datagram: one Malformed, nothing else.
        let truncated = &good[..good.len() - 8];
        let out = parse(truncated);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Parsed::Malformed(_)));
        // Every truncation of a good batch: no panic, and whole messages before the cut decode.
        let mut two = good.clone();
        two.extend(&good);
        for len in 0..=two.len() {
            let out = parse(&two[..len]);
            let records = out
                .iter()
                .filter(|p| matches!(p, Parsed::Record(_)))
                .count();
            assert_eq!(records, len / good.len(), "{len}");
        }
    }

    proptest::proptest! {
        /// Any bytes, and any corruption of a good batch: decoded or reported, never a
        /// panic, and the messages before the damage still decoded.
        #[test]
        fn arbitrary_and_corrupted_datagrams_never_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            at in 0usize..2000,
            byte in proptest::prelude::any::<u8>(),
            cut in 0usize..2000,
        ) {
            parse_datagram(&noise, &mut |_| {});
            let mut good = packet_message("PabcR0I", &v4_tcp_syn(), 2, 1);
            let first_len = good.len();
            good.extend(packet_message("TdefDE-0123", &v6_udp(), 10, 2));
            let at = at % good.len();
            good[at] = byte;
            good.truncate(cut.max(1).min(good.len()));
            let mut first = None;
            parse_datagram(&good, &mut |p| {
                if first.is_none() {
                    first = Some(p);
                }
            });
            if at >= first_len && good.len() >= first_len {
                proptest::prop_assert!(matches!(first, Some(Parsed::Record(_))), "{first:?}");
            }
        }
    }

    #[test]
    fn acks_are_read() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&(-16i32).to_ne_bytes());
        msg.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&msg), vec![Parsed::Ack(-16)]);
    }
}
