//! Hand-built packets for kernel tests: Ethernet, IPv4 (with options) or IPv6 (with extension
//! headers), fragments, and TCP, UDP, SCTP, ICMP or ICMPv6 — whole or truncated.
//!
//! ```
//! use zt_tests::packet::Packet;
//! let bytes = Packet::tcp("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap())
//!     .payload(10)
//!     .build();
//! assert_eq!(bytes.len(), 14 + 20 + 20 + 10);
//! ```
//!
//! L4 checksums are left zero: the datapath never looks at them, and BPF_PROG_TEST_RUN does not
//! check them. The IPv4 header checksum is filled in.

use std::net::{IpAddr, SocketAddr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// The transport part of a packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by the address family): type, code, then 4 bytes (identifier and
    /// sequence for echo), then `body` (the quoted packet for an error).
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    /// Any other protocol number, with these header bytes.
    Other {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers to put in front of the L4 header (the fragment header is separate:
/// see [`Packet::fragment`]).
#[derive(Clone, Copy, Debug)]
pub struct ExtHeader {
    /// `IPPROTO_HOPOPTS`, `IPPROTO_ROUTING` or `IPPROTO_DSTOPTS`.
    pub kind: u8,
    /// The header's length field: the header is `(len + 1) * 8` bytes.
    pub len: u8,
}

#[derive(Clone, Copy, Debug)]
struct Fragment {
    id: u32,
    /// In bytes; must be a multiple of 8.
    offset: u16,
    more: bool,
}

/// A packet under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    payload: usize,
    ipv4_options: Vec<u8>,
    ext: Vec<ExtHeader>,
    fragment: Option<Fragment>,
    ethertype: Option<u16>,
    truncate: Option<usize>,
}

impl Packet {
    fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Self {
            src,
            dst,
            l4,
            payload: 0,
            ipv4_options: Vec::new(),
            ext: Vec::new(),
            fragment: None,
            ethertype: None,
            truncate: None,
        }
    }

    /// A TCP SYN.
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::tcp_flags(src, dst, TCP_SYN)
    }

    pub fn tcp_flags(src: SocketAddr, dst: SocketAddr, flags: u8) -> Self {
        let l4 = L4::Tcp {
            sport: src.port(),
            dport: dst.port(),
            flags,
        };
        Self::new(src.ip(), dst.ip(), l4)
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(
            src.ip(),
            dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
            },
        )
    }

    pub fn sctp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(
            src.ip(),
            dst.ip(),
            L4::Sctp {
                sport: src.port(),
                dport: dst.port(),
            },
        )
    }

    /// ICMP or ICMPv6 echo request (`reply == false`) or reply.
    pub fn icmp_echo(src: IpAddr, dst: IpAddr, id: u16, reply: bool) -> Self {
        let ty = match (src.is_ipv4(), reply) {
            (true, false) => 8,
            (true, true) => 0,
            (false, false) => 128,
            (false, true) => 129,
        };
        let [a, b] = id.to_be_bytes();
        Self::icmp(src, dst, ty, 0, [a, b, 0, 1], Vec::new())
    }

    /// Any ICMP / ICMPv6 message.
    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], body: Vec<u8>) -> Self {
        Self::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code,
                rest,
                body,
            },
        )
    }

    /// An ICMP error (destination unreachable, port unreachable code) or ICMPv6 destination
    /// unreachable, quoting `quoted` (its IP header and first bytes, as routers do).
    pub fn icmp_error(src: IpAddr, dst: IpAddr, quoted: &Packet) -> Self {
        let (ty, code) = if src.is_ipv4() { (3, 3) } else { (1, 4) };
        let mut q = quoted.build();
        q.drain(..14);
        q.truncate(if src.is_ipv4() {
            28 + quoted.ipv4_options.len()
        } else {
            48
        });
        Self::icmp(src, dst, ty, code, [0; 4], q)
    }

    /// A packet of another IP protocol carrying `bytes` as its header.
    pub fn other(src: IpAddr, dst: IpAddr, protocol: u8, bytes: Vec<u8>) -> Self {
        Self::new(src, dst, L4::Other { protocol, bytes })
    }

    /// Appends `n` payload bytes after the L4 header.
    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    /// IPv4 options (padded to a multiple of 4 with end-of-options bytes).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        assert!(self.src.is_ipv4());
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        self
    }

    /// An IPv6 extension header, in order, before any fragment header.
    pub fn ext_header(mut self, kind: u8, len: u8) -> Self {
        assert!(self.src.is_ipv6());
        self.ext.push(ExtHeader { kind, len });
        self
    }

    /// Makes this a fragment: `offset` in bytes (a multiple of 8). A fragment with offset > 0
    /// carries no L4 header, only payload.
    pub fn fragment(mut self, id: u32, offset: u16, more: bool) -> Self {
        assert_eq!(offset % 8, 0);
        self.fragment = Some(Fragment { id, offset, more });
        self
    }

    /// Overrides the Ethernet type (e.g. ARP, or a VLAN tag).
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = Some(ethertype);
        self
    }

    /// Cuts the built frame to `len` bytes.
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    fn protocol(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
            L4::Icmp { .. } if self.src.is_ipv4() => 1,
            L4::Icmp { .. } => 58,
            L4::Other { protocol, .. } => *protocol,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push(5 << 4); // data offset
                b.push(*flags);
                b.extend_from_slice(&65535u16.to_be_bytes());
                b.extend_from_slice(&[0; 4]); // checksum, urgent
            }
            L4::Udp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                b.extend_from_slice(&[0; 2]);
            }
            L4::Sctp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&[0; 8]); // verification tag, checksum
            }
            L4::Icmp {
                ty,
                code,
                rest,
                body,
            } => {
                b.extend_from_slice(&[*ty, *code, 0, 0]);
                b.extend_from_slice(rest);
                b.extend_from_slice(body);
            }
            L4::Other { bytes, .. } => b.extend_from_slice(bytes),
        }
        b
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut upper = Vec::new();
        if self.fragment.is_none_or(|f| f.offset == 0) {
            upper = self.l4_bytes();
        }
        upper.extend((0..self.payload).map(|i| i as u8));

        let mut frame = Vec::with_capacity(64 + upper.len());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        let ethertype = self.ethertype.unwrap_or(if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        });
        frame.extend_from_slice(&ethertype.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let hlen = 20 + self.ipv4_options.len();
                let (id, frag) = match self.fragment {
                    Some(f) => (
                        f.id as u16,
                        (f.offset / 8) | if f.more { 0x2000 } else { 0 },
                    ),
                    None => (0x1234, 0x4000), // DF
                };
                let mut ip = Vec::with_capacity(hlen);
                ip.push(0x40 | (hlen / 4) as u8);
                ip.push(0);
                ip.extend_from_slice(&((hlen + upper.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&id.to_be_bytes());
                ip.extend_from_slice(&frag.to_be_bytes());
                ip.push(64);
                ip.push(self.protocol());
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let sum = checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ext = Vec::new();
                let mut kinds: Vec<u8> = self.ext.iter().map(|e| e.kind).collect();
                if self.fragment.is_some() {
                    kinds.push(IPPROTO_FRAGMENT);
                }
                kinds.push(self.protocol());
                for (i, e) in self.ext.iter().enumerate() {
                    let len = (e.len as usize + 1) * 8;
                    let mut h = vec![0u8; len];
                    h[0] = kinds[i + 1];
                    h[1] = e.len;
                    if len > 2 {
                        h[2] = 1; // PadN option covering the rest
                        h[3] = (len - 4) as u8;
                    }
                    ext.extend_from_slice(&h);
                }
                if let Some(f) = self.fragment {
                    ext.push(self.protocol());
                    ext.push(0);
                    ext.extend_from_slice(&(f.offset | u16::from(f.more)).to_be_bytes());
                    ext.extend_from_slice(&f.id.to_be_bytes());
                }
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&((ext.len() + upper.len()) as u16).to_be_bytes());
                frame.push(kinds[0]);
                frame.push(64);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
                frame.extend_from_slice(&ext);
            }
            _ => unreachable!("checked in new"),
        }
        frame.extend_from_slice(&upper);
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        frame
    }
}

/// The Internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = Packet::udp(
            "10.1.2.3:5".parse().unwrap(),
            "10.3.2.1:53".parse().unwrap(),
        )
        .build();
        assert_eq!(checksum(&p[14..34]), 0);
        assert_eq!(&p[14 + 20..14 + 24], &[0, 5, 0, 53]);
    }

    #[test]
    fn ipv6_extension_chain_links_next_headers() {
        let p = Packet::tcp(
            "[fd00::1]:1000".parse().unwrap(),
            "[fd00::2]:80".parse().unwrap(),
        )
        .ext_header(IPPROTO_HOPOPTS, 0)
        .ext_header(IPPROTO_DSTOPTS, 1)
        .fragment(7, 0, true)
        .build();
        assert_eq!(p[14 + 6], IPPROTO_HOPOPTS);
        let ext = 14 + 40;
        assert_eq!(p[ext], IPPROTO_DSTOPTS);
        assert_eq!(p[ext + 8], IPPROTO_FRAGMENT);
        assert_eq!(p[ext + 8 + 16], 6);
        assert_eq!(&p[ext + 32..ext + 36], &[0x03, 0xe8, 0, 80]);
    }

    #[test]
    fn later_fragment_has_no_l4_header() {
        let p = Packet::udp("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap())
            .fragment(9, 16, false)
            .payload(8)
            .build();
        assert_eq!(p.len(), 14 + 20 + 8);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 2);
    }
}
