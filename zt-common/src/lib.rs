//! The contract between zt's kernel programs (`zt-ebpf`) and its agent (`zt-agent`).
//!
//! Every type here is a BPF map key or value, laid out `#[repr(C)]` with explicit padding and a
//! compile-time size assert, so both sides of the kernel boundary agree byte for byte. No `bool`,
//! `Option` or Rust enum appears in a map type: the kernel does not know their layout.
//!
//! Maps that serve both families store addresses in 16 bytes, IPv4 IPv4-mapped (`::ffff:a.b.c.d`):
//! endpoints, fragments, events. The maps looked up on every packet have one map per family, so an
//! IPv4 key carries 4-byte addresses: conntrack (`zt_ct4` / `zt_ct6`) and host identities
//! (`zt_ident_host4` / `zt_ident_host6`). Ports in conntrack and fragment keys are in network byte
//! order (as they sit in the packet); the port in a [`policy::PolicyKey`] is in host byte order
//! because it is masked by prefix.
//!
//! The datapath's decision procedure is written down once, in [`policy`]'s module docs; the kernel
//! program and the agent's userspace model both implement exactly that list.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod endpoint;
pub mod event;
pub mod identity;
pub mod names;
pub mod policy;
pub mod reason;

/// An address as every map stores it: IPv6, or IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// Builds the IPv4-mapped form of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Traffic direction, always relative to the local endpoint (the pod whose interface the program
/// sits on): ingress is traffic *to* the pod, egress traffic *from* it.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// IP protocol numbers the datapath understands.
pub mod proto {
    /// In a [`crate::policy::PolicyKey`]: any protocol (a rule without `ports`).
    pub const ANY: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// The map form of an address: IPv6 as is, IPv4 IPv4-mapped.
pub const fn addr_from_ip(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a map entry names: IPv4-mapped addresses come back as IPv4.
pub const fn ip_from_addr(addr: Addr) -> core::net::IpAddr {
    let v6 = core::net::Ipv6Addr::from_octets(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => core::net::IpAddr::V4(v4),
        None => core::net::IpAddr::V6(v6),
    }
}

/// Implements `aya::Pod` (userspace only) for plain-old-data map types.
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: every listed type is `#[repr(C)]`, `Copy`, made only of integers and byte
            // arrays, with all padding explicit, so any bit pattern is a valid value.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use user_pod;

/// Fails the build when a map type's size drifts from what the other side of the kernel expects.
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
    };
}
pub(crate) use assert_size;
