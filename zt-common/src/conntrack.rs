//! Connection tracking: LRU maps of flows admitted by policy, one per address family.
//!
//! A flow is recorded once, as the tuple of its first packet and the direction, relative to the
//! local endpoint, it was admitted in. Packets of the same flow match `(tuple, D)`; replies match
//! `(reversed tuple, !D)`. Including the direction in the key matters on a node where both ends
//! are local pods: the sender's egress admission must not stand in for the receiver's ingress
//! check. The value records the interface the flow was admitted on, and an entry only counts on
//! that interface, so a hit proves the packet arrived where the flow was admitted and an entry of
//! the current policy revision can allow without looking the endpoint up again (decision
//! procedure step 5 in [`crate::policy`]).
//!
//! IPv4 flows live in `zt_ct4` under a 16-byte key, IPv6 flows in `zt_ct6` under a 40-byte one:
//! the key is hashed and compared on every packet, and the established-flow fast path is
//! dominated by that lookup.

use crate::{Addr, assert_size, user_pod};

/// `zt_ct4` key. Addresses as in the packet (network byte order), ports too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
assert_size!(CtKey4, 16);
user_pod!(CtKey4);

/// `zt_ct6` key. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
assert_size!(CtKey6, 40);
user_pod!(CtKey6);

/// `zt_ct4` and `zt_ct6` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `config.policy_revision` when the flow was last checked against policy.
    pub revision: u32,
    /// A set of [`flags`] bits.
    pub flags: u32,
    /// The interface the flow was admitted on (the packet's `ifindex` at the hook). On any other
    /// interface the entry does not exist.
    pub ifindex: u32,
    pub _pad: u32,
}
assert_size!(CtValue, 16);
user_pod!(CtValue);

pub mod flags {
    /// Admitted only because the endpoint is in audit mode.
    pub const AUDITED: u32 = 1 << 0;
}

/// `zt_frag` key: identifies the fragments of one datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 identification (zero-extended) or IPv6 fragment-header identification.
    pub id: u32,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
assert_size!(FragKey, 40);
user_pod!(FragKey);

/// `zt_frag` value: the L4 ports the first fragment carried (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
}
assert_size!(FragValue, 4);
user_pod!(FragValue);
