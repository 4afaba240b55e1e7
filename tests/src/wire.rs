//! An independent reading of a frame, written from the RFCs (791, 8200, 792, 4443, 4861) and not
//! from the datapath's parser: what a correct enforcer must police in it. The packet fuzzer
//! judges every verdict of the kernel programs against this reading.
//!
//! It is lenient where the datapath may be strict (a TCP header needs only its ports here):
//! a stricter datapath drops more, which is never a hole. Anything this reading cannot make
//! sense of is [`Frame::Malformed`], and the datapath may not allow it by policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH_HLEN: usize = 14;

/// A flow's identity as policy and conntrack see it. For ICMP `sport` is the echo id (0 for
/// other types) and `dport` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Flow {
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
}

/// A fragment's identity: the packets of one datagram share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub protocol: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// An ethertype that is neither IP nor a VLAN tag (ARP, LLDP, …).
    NonIp,
    /// An 802.1Q / 802.1ad tagged frame: IP may hide behind the tag.
    Vlan,
    /// Truncated or inconsistent headers.
    Malformed,
    /// An IP packet.
    Ip(Ip),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Set when the packet is a fragment; `first` when it is the one at offset 0.
    pub fragment: Option<(FragmentKey, bool)>,
    pub l4: L4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// Ports (TCP, UDP, SCTP).
    Ports { sport: u16, dport: u16 },
    /// ICMP / ICMPv6, with the flow an error message quotes.
    Icmp {
        ty: u8,
        id: u16,
        quoted: Option<Flow>,
    },
    /// No transport header here: a later fragment, or a protocol without ports.
    None,
    /// The transport header is cut short.
    Truncated,
}

impl Ip {
    /// The flow, when this packet carries everything policy needs (not a later fragment, and
    /// its transport header complete for protocols with ports).
    pub fn flow(&self) -> Option<Flow> {
        let (sport, dport) = match &self.l4 {
            L4::Ports { sport, dport } => (*sport, *dport),
            L4::Icmp { id, .. } => (*id, 0),
            L4::None if !has_ports(self.protocol) => (0, 0),
            _ => return None,
        };
        Some(Flow {
            src: self.src,
            dst: self.dst,
            protocol: self.protocol,
            sport,
            dport,
        })
    }

    pub fn is_later_fragment(&self) -> bool {
        matches!(self.fragment, Some((_, false)))
    }
}

pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

/// The addresses of an IP frame's fixed header, however malformed the rest.
pub fn addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let ip = frame.get(ETH_HLEN..)?;
    match be16(frame, 12)? {
        0x0800 if ip.len() >= 20 => Some((
            IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
            IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        )),
        0x86dd if ip.len() >= 40 => {
            let addr = |at: usize| {
                let octets: [u8; 16] = ip[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Some((addr(8), addr(24)))
        }
        _ => None,
    }
}

/// Reads an Ethernet frame.
pub fn read(frame: &[u8]) -> Frame {
    let Some(ethertype) = be16(frame, 12) else {
        return Frame::Malformed;
    };
    let ip = &frame[ETH_HLEN..];
    match ethertype {
        0x0800 => ipv4(ip, true).map_or(Frame::Malformed, Frame::Ip),
        0x86dd => ipv6(ip, true).map_or(Frame::Malformed, Frame::Ip),
        0x8100 | 0x88a8 => Frame::Vlan,
        _ => Frame::NonIp,
    }
}

fn ipv4(p: &[u8], outer: bool) -> Option<Ip> {
    let first = *p.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || p.len() < ihl {
        return None;
    }
    // The transport header is read from the bytes that are there. A total length that disagrees
    // (BIG TCP writes 0; a forged one overshoots) is the IP stack's to drop after the TC hook:
    // an enforcer judges the packet on its bytes, never on a length it cannot trust.
    let end = p.len();
    let frag = be16(p, 6)?;
    let (more, offset) = (frag & 0x2000 != 0, frag & 0x1fff);
    let protocol = p[9];
    let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
    let fragment = (more || offset != 0).then(|| {
        let key = FragmentKey {
            src,
            dst,
            id: u32::from(be16(p, 4).unwrap_or(0)),
            protocol,
        };
        (key, offset == 0)
    });
    let l4 = if offset != 0 {
        L4::None
    } else {
        transport(protocol, &p[ihl..end], outer, true)
    };
    Some(Ip {
        src,
        dst,
        protocol,
        fragment,
        l4,
    })
}

fn ipv6(p: &[u8], outer: bool) -> Option<Ip> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    // As for IPv4, the payload length is not trusted (0 with a jumbo option, BIG TCP).
    let end = p.len();
    let addr = |at: usize| {
        let octets: [u8; 16] = p[at..at + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let (src, dst) = (addr(8), addr(24));
    let (mut next, mut at) = (p[6], 40);
    let mut fragment = None;
    loop {
        match next {
            // Hop-by-hop, routing, destination options: (length + 1) × 8 bytes.
            0 | 43 | 60 => {
                let len = (usize::from(*p.get(at + 1)?) + 1) * 8;
                next = *p.get(at)?;
                at += len;
            }
            // Authentication header: (length + 2) × 4 bytes.
            51 => {
                let len = (usize::from(*p.get(at + 1)?) + 2) * 4;
                next = *p.get(at)?;
                at += len;
            }
            44 => {
                let hdr = p.get(at..at + 8)?;
                let off_flags = u16::from_be_bytes([hdr[2], hdr[3]]);
                let id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                let offset = off_flags >> 3;
                next = hdr[0];
                at += 8;
                fragment = Some((
                    FragmentKey {
                        src,
                        dst,
                        id,
                        protocol: next,
                    },
                    offset == 0,
                ));
                if offset != 0 {
                    return Some(Ip {
                        src,
                        dst,
                        protocol: next,
                        fragment,
                        l4: L4::None,
                    });
                }
            }
            _ => break,
        }
        if at > end {
            return None;
        }
    }
    let l4 = transport(next, &p[at..end], outer, false);
    Some(Ip {
        src,
        dst,
        protocol: next,
        fragment,
        l4,
    })
}

fn transport(protocol: u8, l4: &[u8], outer: bool, v4: bool) -> L4 {
    match protocol {
        6 | 17 | 132 => match (be16(l4, 0), be16(l4, 2)) {
            (Some(sport), Some(dport)) => L4::Ports { sport, dport },
            _ => L4::Truncated,
        },
        1 if v4 => icmp(l4, outer, &[3, 4, 5, 11, 12], &[8, 0], ipv4),
        58 if !v4 => icmp(l4, outer, &[1, 2, 3, 4], &[128, 129], ipv6),
        _ => L4::None,
    }
}

fn icmp(
    l4: &[u8],
    outer: bool,
    errors: &[u8],
    echoes: &[u8],
    inner: fn(&[u8], bool) -> Option<Ip>,
) -> L4 {
    let Some(&ty) = l4.first() else {
        return L4::Truncated;
    };
    if l4.len() < 8 {
        return L4::Truncated;
    }
    let id = if echoes.contains(&ty) {
        be16(l4, 4).unwrap_or(0)
    } else {
        0
    };
    // Errors quote the offending packet after the 8-byte ICMP header; never nested.
    let quoted = (outer && errors.contains(&ty))
        .then(|| inner(&l4[8..], false))
        .flatten()
        .and_then(|ip| ip.flow());
    L4::Icmp { ty, id, quoted }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::packet::Packet;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_what_the_builder_writes() {
        let tcp = Packet::tcp(sa("10.0.0.1:1000"), sa("10.0.0.2:80")).build();
        let Frame::Ip(ip) = read(&tcp) else {
            panic!("{:?}", read(&tcp))
        };
        assert_eq!(
            ip.l4,
            L4::Ports {
                sport: 1000,
                dport: 80
            }
        );
        let v6 = Packet::udp(sa("[fd00::1]:53"), sa("[fd00::2]:5353"))
            .ext_header(0, 0)
            .ext_header(60, 1)
            .build();
        let Frame::Ip(ip) = read(&v6) else { panic!() };
        assert_eq!(ip.protocol, 17);
        assert_eq!(ip.flow().unwrap().dport, 5353);
    }

    #[test]
    fn errors_name_the_quoted_flow() {
        let quoted = Packet::tcp(sa("10.0.0.2:80"), sa("10.0.0.1:1000"));
        let err = Packet::icmp_error(
            "10.0.0.9".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            &quoted,
        )
        .build();
        let Frame::Ip(ip) = read(&err) else { panic!() };
        let L4::Icmp { quoted, .. } = ip.l4 else {
            panic!()
        };
        assert_eq!(quoted.unwrap().dport, 1000);
    }

    #[test]
    fn cut_frames_are_never_flows() {
        let tcp = Packet::tcp(sa("10.0.0.1:1000"), sa("10.0.0.2:80"));
        let full = tcp.build().len();
        // Up to the end of the ports: any shorter frame reads as no flow.
        for len in 0..full.min(14 + 20 + 4) {
            let frame = tcp.clone().truncate(len).build();
            if let Frame::Ip(ip) = read(&frame) {
                assert!(ip.flow().is_none(), "{len}: {ip:?}");
            }
        }
    }
}
