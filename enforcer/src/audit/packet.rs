//! The network and transport headers of a logged packet: IPv4/IPv6 with TCP, UDP,
//! SCTP, ICMP or ICMPv6. Pure; every length is checked, nothing panics on short
//! or malformed input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// What the audit log keeps of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (after IPv6 extension headers).
    pub protocol: u8,
    /// TCP/UDP/SCTP source port; ICMP type.
    pub src_port: Option<u16>,
    /// TCP/UDP/SCTP destination port; ICMP code.
    pub dst_port: Option<u16>,
}

impl PacketInfo {
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`, or the number.
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            PROTO_TCP => "tcp".into(),
            PROTO_UDP => "udp".into(),
            PROTO_SCTP => "sctp".into(),
            PROTO_ICMP => "icmp".into(),
            PROTO_ICMPV6 => "icmpv6".into(),
            n => n.to_string(),
        }
    }

    /// Whether the protocol has ports (ICMP has type and code instead).
    pub fn has_ports(&self) -> bool {
        matches!(self.protocol, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Why a payload could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty payload")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("{what} truncated: {have} of {need} bytes")]
    Truncated {
        what: &'static str,
        have: usize,
        need: usize,
    },
    #[error("IPv4 header length {0} is below 20 bytes")]
    HeaderLength(usize),
}

fn need(what: &'static str, data: &[u8], len: usize) -> Result<(), PacketError> {
    if data.len() < len {
        Err(PacketError::Truncated {
            what,
            have: data.len(),
            need: len,
        })
    } else {
        Ok(())
    }
}

fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Decodes a packet that starts at its IP header. The transport header may be
/// cut off (the copy range is small, or a fragment carries none): the addresses
/// are kept and the ports left out; a cut IP header is an error.
pub fn decode(data: &[u8]) -> Result<PacketInfo, PacketError> {
    let first = *data.first().ok_or(PacketError::Empty)?;
    match first >> 4 {
        4 => decode_v4(data),
        6 => decode_v6(data),
        v => Err(PacketError::Version(v)),
    }
}

fn decode_v4(data: &[u8]) -> Result<PacketInfo, PacketError> {
    need("IPv4 header", data, 20)?;
    let ihl = usize::from(data[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(PacketError::HeaderLength(ihl));
    }
    need("IPv4 options", data, ihl)?;
    let protocol = data[9];
    let src = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
    let dst = Ipv4Addr::new(data[16], data[17], data[18], data[19]);
    // A non-first fragment has no transport header.
    let fragment_offset = be16(data, 6) & 0x1fff;
    let (src_port, dst_port) = if fragment_offset == 0 {
        transport(protocol, &data[ihl..])
    } else {
        (None, None)
    };
    Ok(PacketInfo {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        protocol,
        src_port,
        dst_port,
    })
}

fn decode_v6(data: &[u8]) -> Result<PacketInfo, PacketError> {
    need("IPv6 header", data, 40)?;
    let addr = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    let src = addr(8);
    let dst = addr(24);
    let mut next = data[6];
    let mut offset = 40;
    let mut ports = (None, None);
    // Extension headers, bounded (a loop of them cannot keep us here).
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units after the first 8.
            0 | 43 | 60 => {
                if data.len() < offset + 2 {
                    break;
                }
                next = data[offset];
                offset += (usize::from(data[offset + 1]) + 1) * 8;
            }
            // Fragment: 8 bytes; only the first fragment carries the transport header.
            44 => {
                if data.len() < offset + 8 {
                    break;
                }
                let first = be16(data, offset + 2) & 0xfff8 == 0;
                next = data[offset];
                offset += 8;
                if !first {
                    return Ok(PacketInfo {
                        src: IpAddr::V6(src),
                        dst: IpAddr::V6(dst),
                        protocol: next,
                        src_port: None,
                        dst_port: None,
                    });
                }
            }
            _ => {
                if let Some(rest) = data.get(offset..) {
                    ports = transport(next, rest);
                }
                break;
            }
        }
    }
    Ok(PacketInfo {
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        protocol: next,
        src_port: ports.0,
        dst_port: ports.1,
    })
}

/// Ports (TCP, UDP, SCTP: the first four bytes alike) or ICMP type and code.
fn transport(protocol: u8, data: &[u8]) -> (Option<u16>, Option<u16>) {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP if data.len() >= 4 => {
            (Some(be16(data, 0)), Some(be16(data, 2)))
        }
        PROTO_ICMP | PROTO_ICMPV6 if data.len() >= 2 => {
            (Some(u16::from(data[0])), Some(u16::from(data[1])))
        }
        _ => (None, None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 TCP SYN 10.0.0.1:40000 → 10.0.0.2:80, as iptables logs it.
    pub fn v4_tcp_syn() -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2,
        ];
        p.extend_from_slice(&[
            0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
        ]);
        p
    }

    /// An IPv6 UDP datagram fd00::1:5353 → fd00::2:53.
    pub fn v6_udp() -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64];
        p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().expect("ip").octets());
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().expect("ip").octets());
        p.extend_from_slice(&[0x14, 0xe9, 0x00, 0x35, 0, 8, 0, 0]);
        p
    }

    #[test]
    fn decodes_ipv4_tcp() {
        let info = decode(&v4_tcp_syn()).expect("decodes");
        assert_eq!(info.src, "10.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(info.dst, "10.0.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(info.protocol_name(), "tcp");
        assert_eq!((info.src_port, info.dst_port), (Some(40000), Some(80)));
    }

    #[test]
    fn decodes_ipv6_udp_after_extension_header() {
        let info = decode(&v6_udp()).expect("decodes");
        assert_eq!((info.src_port, info.dst_port), (Some(5353), Some(53)));
        assert_eq!(info.protocol_name(), "udp");
        // The same datagram behind a destination-options header (8 bytes).
        let mut p = v6_udp();
        p[6] = 60;
        let mut ext = vec![PROTO_UDP, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&p[40..]);
        p.truncate(40);
        p.extend_from_slice(&ext);
        let info = decode(&p).expect("decodes");
        assert_eq!(info.protocol, PROTO_UDP);
        assert_eq!(info.dst_port, Some(53));
    }

    #[test]
    fn decodes_icmp_sctp_and_icmpv6() {
        let mut p = v4_tcp_syn();
        p.truncate(20);
        p[9] = PROTO_ICMP;
        p.extend_from_slice(&[8, 0, 0, 0]);
        let info = decode(&p).expect("decodes");
        assert_eq!(
            (info.protocol_name().as_str(), info.src_port, info.dst_port),
            ("icmp", Some(8), Some(0))
        );
        p[9] = PROTO_SCTP;
        p.truncate(20);
        p.extend_from_slice(&[0x30, 0x39, 0x0b, 0xb8]);
        let info = decode(&p).expect("decodes");
        assert_eq!(
            (info.protocol_name().as_str(), info.dst_port),
            ("sctp", Some(3000))
        );
        let mut q = v6_udp();
        q[6] = PROTO_ICMPV6;
        q.truncate(40);
        q.extend_from_slice(&[128, 0, 0, 0]);
        let info = decode(&q).expect("decodes");
        assert_eq!(
            (info.protocol_name().as_str(), info.src_port),
            ("icmpv6", Some(128))
        );
    }

    #[test]
    fn truncated_and_malformed_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(PacketError::Empty));
        assert_eq!(decode(&[0x55; 40]), Err(PacketError::Version(5)));
        let syn = v4_tcp_syn();
        for len in 1..20 {
            assert!(
                matches!(decode(&syn[..len]), Err(PacketError::Truncated { .. })),
                "{len}"
            );
        }
        // IHL below 5 words.
        let mut bad = syn.clone();
        bad[0] = 0x44;
        assert_eq!(decode(&bad), Err(PacketError::HeaderLength(16)));
        // IHL beyond the data.
        let mut bad = syn[..20].to_vec();
        bad[0] = 0x4f;
        assert!(matches!(decode(&bad), Err(PacketError::Truncated { .. })));
        // A cut transport header keeps the addresses, drops the ports.
        let info = decode(&syn[..22]).expect("decodes");
        assert_eq!((info.src_port, info.dst_port), (None, None));
        let v6 = v6_udp();
        for len in 1..40 {
            assert!(decode(&v6[..len]).is_err(), "{len}");
        }
        // A looping chain of extension headers ends.
        let mut lo = v6_udp();
        lo[6] = 0;
        lo.truncate(40);
        for _ in 0..20 {
            lo.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert!(decode(&lo).is_ok());
        // Every prefix of every sample decodes or errors, never panics.
        for sample in [syn, v6] {
            for len in 0..=sample.len() {
                let _ = decode(&sample[..len]);
            }
        }
    }
}
