//! Header parsing: Ethernet, IPv4 (with options), IPv6 (through hop-by-hop, routing,
//! destination-options, fragment and AH headers), then TCP, UDP, SCTP, ICMP and ICMPv6.
//!
//! Pure reading: no map access. Fragment bookkeeping happens in `frag`, decisions in `decide`.
//! Every read is bounds-checked against `data_end` right before it (direct packet access, no
//! helper calls). Offsets are clamped to [`MAX_L4_OFFSET`] so the verifier can bound them.

use aya_ebpf::programs::TcContext;
use zt_common::proto;

use crate::{
    keys::{Addr32, copy_addr, ipv4_mapped, is_ipv4_mapped},
    packet::{Packet, Tuple, class, frag, ptr_at, tcp},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Headers ending beyond this offset are treated as malformed (fail closed). Far more than any
/// legitimate IPv6 extension header chain in front of an L4 header needs.
const MAX_L4_OFFSET: usize = 512;
/// How many IPv6 extension headers are walked before giving up (malformed).
const MAX_EXT_HEADERS: usize = 6;
/// Bytes `bpf_skb_pull_data` is asked to make linear when headers are not (capped at the
/// packet's length).
pub const PULL_LEN: u32 = (MAX_L4_OFFSET + 64) as u32;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

pub enum ParseError {
    /// Not IPv4 or IPv6 (step 1).
    NotIp,
    /// Truncated, inconsistent or unsupported headers (step 2).
    Malformed,
    /// A header ends past the linear data but within the packet: pull and retry.
    NotLinear,
}

/// Parses the packet into `pkt`. Tries once more after `bpf_skb_pull_data` when the headers are
/// not all in the linear area (rare on veth: off the hot path).
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ParseError> {
    match parse_linear(ctx, pkt) {
        Err(ParseError::NotLinear) => {
            let len = ctx.len();
            let want = if len < PULL_LEN { len } else { PULL_LEN };
            if ctx.pull_data(want).is_err() {
                return Err(ParseError::Malformed);
            }
            match parse_linear(ctx, pkt) {
                Err(ParseError::NotLinear) => Err(ParseError::Malformed),
                other => other,
            }
        }
        other => other,
    }
}

/// What a failed bounds check means: truncated if the packet really ends there, otherwise the
/// header is merely outside the linear area.
#[inline(always)]
fn short(ctx: &TcContext) -> ParseError {
    if (ctx.len() as usize) > ctx.data_end() - ctx.data() {
        ParseError::NotLinear
    } else {
        ParseError::Malformed
    }
}

#[inline(always)]
fn be16(x: u16) -> u16 {
    u16::from_be(x)
}

// A BPF subprogram, not inlined: `parse` calls it twice and each inlined copy would take its own
// share of the 512-byte stack.
#[inline(never)]
fn parse_linear(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ParseError> {
    let ethertype = ptr_at::<u16>(ctx, 12).ok_or_else(|| short(ctx))?;
    // SAFETY: (for every dereference of a header pointer in this module) `ptr_at` checked the
    // header lies within the linear packet data.
    match be16(unsafe { *ethertype }) {
        ETH_P_IP => parse_ipv4(ctx, pkt),
        ETH_P_IPV6 => parse_ipv6(ctx, pkt),
        // A tagged frame could carry IP past the policy: refuse it rather than call it non-IP.
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::Malformed),
        _ => Err(ParseError::NotIp),
    }
}

/// IPv4 header fields the datapath needs: bytes 0..20.
#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    src: u32,
    dst: u32,
}

const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ParseError> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or_else(|| short(ctx))?;
    let ip = unsafe { &*ip };
    if ip.ver_ihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let hlen = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if hlen < 20 || (be16(ip.tot_len) as usize) < hlen {
        return Err(ParseError::Malformed);
    }
    pkt.tuple.src = ipv4_mapped(ip.src);
    pkt.tuple.dst = ipv4_mapped(ip.dst);
    pkt.tuple.protocol = ip.protocol;
    let frag_off = be16(ip.frag_off);
    if frag_off & (IP_MF | IP_OFFSET) != 0 {
        pkt.frag_id = be16(ip.id) as u32;
        if frag_off & IP_OFFSET != 0 {
            pkt.frag = frag::LATER;
            return Ok(());
        }
        pkt.frag = frag::FIRST;
    }
    parse_l4(ctx, pkt, ETH_HLEN + hlen, false)
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: u8,
    tc_flow: [u8; 3],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: Addr32,
    dst: Addr32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: u16,
    id: u32,
}

/// The first two bytes of a hop-by-hop, routing, destination-options or AH header.
#[derive(Clone, Copy)]
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ParseError> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or_else(|| short(ctx))?;
    let ip = unsafe { &*ip };
    if ip.ver_tc_flow >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    // IPv4-mapped addresses never appear on the wire (RFC 4291 §2.5.5.2); the maps key IPv4
    // that way, so accepting them here would let a peer borrow an IPv4 pod's identity.
    if is_ipv4_mapped(&ip.src) || is_ipv4_mapped(&ip.dst) {
        return Err(ParseError::Malformed);
    }
    pkt.tuple.src = copy_addr(&ip.src);
    pkt.tuple.dst = copy_addr(&ip.dst);
    let mut next = ip.next_header;
    let mut off = ETH_HLEN + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let hdr = ptr_at::<Ipv6ExtHdr>(ctx, off).ok_or_else(|| short(ctx))?;
                let hdr = unsafe { *hdr };
                let len = if next == IPPROTO_AH {
                    (hdr.len as usize + 2) * 4
                } else {
                    (hdr.len as usize + 1) * 8
                };
                next = hdr.next_header;
                off += len;
                if off > MAX_L4_OFFSET {
                    return Err(ParseError::Malformed);
                }
            }
            IPPROTO_FRAGMENT => {
                let fh = ptr_at::<Ipv6FragHdr>(ctx, off).ok_or_else(|| short(ctx))?;
                let fh = unsafe { *fh };
                let offset_flags = be16(fh.offset_flags);
                next = fh.next_header;
                off += 8;
                // An atomic fragment (offset 0, M clear) is a whole datagram (RFC 6946).
                if offset_flags != 0 {
                    pkt.frag_id = u32::from_be(fh.id);
                    if offset_flags & 0xfff8 != 0 {
                        pkt.tuple.protocol = next;
                        pkt.frag = frag::LATER;
                        return Ok(());
                    }
                    pkt.frag = frag::FIRST;
                }
            }
            _ => {
                pkt.tuple.protocol = next;
                return parse_l4(ctx, pkt, off, true);
            }
        }
    }
    Err(ParseError::Malformed)
}

const ICMP_ECHOREPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_REDIRECT: u8 = 5;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const NDP_FIRST: u8 = 133;
const NDP_LAST: u8 = 137;

/// ICMP / ICMPv6 header: type, code, checksum, then identifier and sequence for echo.
#[derive(Clone, Copy)]
#[repr(C)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: u16,
    id: u16,
    seq: u16,
}

/// The ports at the start of TCP, UDP and SCTP headers.
#[derive(Clone, Copy)]
#[repr(C)]
struct Ports {
    sport: u16,
    dport: u16,
}

/// Fixed header sizes that must be present in full.
const TCP_HLEN: usize = 20;
/// TCP flag bits (header byte 13).
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const UDP_HLEN: usize = 8;
const SCTP_HLEN: usize = 12;

#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Packet, off: usize, v6: bool) -> Result<(), ParseError> {
    if off > MAX_L4_OFFSET {
        return Err(ParseError::Malformed);
    }
    match pkt.tuple.protocol {
        proto::TCP => {
            // The whole fixed header must be there; byte 12 holds the data offset.
            let h = ptr_at::<[u8; TCP_HLEN]>(ctx, off).ok_or_else(|| short(ctx))?;
            if unsafe { (*h)[12] } >> 4 < 5 {
                return Err(ParseError::Malformed);
            }
            let flags = unsafe { (*h)[13] };
            pkt.tcp = (flags & (TCP_SYN | TCP_ACK) == TCP_SYN) as u8 * tcp::OPEN
                | (flags & (TCP_FIN | TCP_RST) != 0) as u8 * tcp::CLOSE;
            set_ports(&mut pkt.tuple, h.cast());
        }
        proto::UDP => {
            let h = ptr_at::<[u8; UDP_HLEN]>(ctx, off).ok_or_else(|| short(ctx))?;
            set_ports(&mut pkt.tuple, h.cast());
        }
        proto::SCTP => {
            // Common header: ports, verification tag, checksum.
            let h = ptr_at::<[u8; SCTP_HLEN]>(ctx, off).ok_or_else(|| short(ctx))?;
            set_ports(&mut pkt.tuple, h.cast());
        }
        proto::ICMP if !v6 => {
            let h = ptr_at::<IcmpHdr>(ctx, off).ok_or_else(|| short(ctx))?;
            let h = unsafe { *h };
            match h.ty {
                ICMP_ECHO | ICMP_ECHOREPLY => echo_ports(&mut pkt.tuple, h.id),
                ICMP_DEST_UNREACH | ICMP_SOURCE_QUENCH | ICMP_REDIRECT | ICMP_TIME_EXCEEDED
                | ICMP_PARAMETERPROB => {
                    pkt.class = class::ICMP_ERROR;
                    if pkt.frag == frag::NONE {
                        pkt.quoted_valid = quoted_ipv4(ctx, &mut pkt.quoted, off + 8) as u8;
                    }
                }
                _ => {}
            }
        }
        proto::ICMPV6 if v6 => {
            let h = ptr_at::<IcmpHdr>(ctx, off).ok_or_else(|| short(ctx))?;
            let h = unsafe { *h };
            match h.ty {
                ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => echo_ports(&mut pkt.tuple, h.id),
                ICMPV6_DEST_UNREACH..=ICMPV6_PARAMPROB => {
                    pkt.class = class::ICMP_ERROR;
                    if pkt.frag == frag::NONE {
                        pkt.quoted_valid = quoted_ipv6(ctx, &mut pkt.quoted, off + 8) as u8;
                    }
                }
                NDP_FIRST..=NDP_LAST => pkt.class = class::NDP,
                _ => {}
            }
        }
        // Any other protocol: matched by protocol alone (policy port 0), no ports.
        _ => {}
    }
    Ok(())
}

/// Copies the ports of a header `ptr_at` checked to be in the packet.
#[inline(always)]
fn set_ports(t: &mut Tuple, p: *const Ports) {
    let p = unsafe { *p };
    t.sport = p.sport;
    t.dport = p.dport;
}

/// ICMP echo flows use the identifier as both ports.
#[inline(always)]
fn echo_ports(t: &mut Tuple, id: u16) {
    t.sport = id;
    t.dport = id;
}

/// The tuple of the IPv4 packet an ICMP error quotes (its header and at least 8 L4 bytes).
/// `false` when the quote is too short or not IPv4: the error then cannot be related to a flow.
#[inline(always)]
fn quoted_ipv4(ctx: &TcContext, q: &mut Tuple, off: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, off) else {
        return false;
    };
    let ip = unsafe { &*ip };
    if ip.ver_ihl >> 4 != 4 {
        return false;
    }
    let hlen = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if hlen < 20 {
        return false;
    }
    q.src = ipv4_mapped(ip.src);
    q.dst = ipv4_mapped(ip.dst);
    q.protocol = ip.protocol;
    quoted_ports(ctx, q, off + hlen, proto::ICMP, ICMP_ECHO)
}

#[inline(always)]
fn quoted_ipv6(ctx: &TcContext, q: &mut Tuple, off: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
        return false;
    };
    let ip = unsafe { &*ip };
    if ip.ver_tc_flow >> 4 != 6 {
        return false;
    }
    q.src = copy_addr(&ip.src);
    q.dst = copy_addr(&ip.dst);
    q.protocol = ip.next_header;
    quoted_ports(ctx, q, off + 40, proto::ICMPV6, ICMPV6_ECHO_REQUEST)
}

#[inline(always)]
fn quoted_ports(ctx: &TcContext, q: &mut Tuple, off: usize, icmp: u8, echo: u8) -> bool {
    if off > MAX_L4_OFFSET {
        return false;
    }
    // The 8 L4 bytes every ICMP error quotes: ports for TCP, UDP and SCTP, the echo header for
    // ICMP.
    let Some(h) = ptr_at::<IcmpHdr>(ctx, off) else {
        return false;
    };
    match q.protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            set_ports(q, h.cast());
            true
        }
        // Only an echo request can be the cause of an error a local endpoint receives.
        p if p == icmp && unsafe { (*h).ty } == echo => {
            echo_ports(q, unsafe { (*h).id });
            true
        }
        _ => false,
    }
}
