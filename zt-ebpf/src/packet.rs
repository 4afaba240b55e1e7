//! What the parser extracts from a packet, and bounds-checked direct packet access.

use aya_ebpf::programs::TcContext;

use crate::keys::Addr32;

/// A flow tuple. Ports in network byte order, as in the packet (and in `zt_ct` keys).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tuple {
    pub src: Addr32,
    pub dst: Addr32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// `Packet::class` (0: an ordinary packet).
pub mod class {
    /// ICMP / ICMPv6 error: `Packet::quoted` may hold the tuple of the packet it reports on.
    pub const ICMP_ERROR: u8 = 1;
    /// ICMPv6 neighbour discovery (types 133–137).
    pub const NDP: u8 = 2;
}

/// `Packet::tcp`.
pub mod tcp {
    /// SYN set and ACK clear: the opening packet of a connection.
    pub const OPEN: u8 = 1 << 0;
    /// FIN or RST set: the connection is closing.
    pub const CLOSE: u8 = 1 << 1;
}

/// `Packet::frag`.
pub mod frag {
    pub const NONE: u8 = 0;
    /// Offset 0, more fragments follow: carries the L4 header.
    pub const FIRST: u8 = 1;
    /// Offset > 0: no L4 header, ports come from `zt_frag`.
    pub const LATER: u8 = 2;
}

#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Packet {
    pub tuple: Tuple,
    /// For an ICMP error: the quoted packet's tuple, when `quoted_valid != 0`.
    pub quoted: Tuple,
    pub quoted_valid: u8,
    pub class: u8,
    pub frag: u8,
    /// For a TCP segment, a set of [`tcp`] bits.
    pub tcp: u8,
    /// IPv4 identification (zero-extended) or the IPv6 fragment header's, when `frag != NONE`.
    pub frag_id: u32,
}

/// A pointer to `T` at `off` bytes into the linear packet data, or `None` past its end.
///
/// Header types are read in place through this pointer. They may sit at addresses that are not
/// a multiple of their alignment; packet loads of any alignment are fine on the architectures
/// the verifier does not run in strict-alignment mode for (x86-64, arm64).
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}
