//! Connection tracking: an LRU map of flows admitted by policy.
//!
//! A flow is recorded once, as the tuple of its first packet, the direction, relative to the
//! local endpoint, it was admitted in, and the interface it was admitted on. Packets of the same
//! flow match `(tuple, D, ifindex)`; replies match `(reversed tuple, !D, ifindex)`. Including the
//! direction in the key matters on a node where both ends are local pods: the sender's egress
//! admission must not stand in for the receiver's ingress check. Including the interface makes a
//! hit prove that the packet arrived where the flow was admitted, so an entry of the current
//! policy revision can allow without looking the endpoint up again (decision procedure step 5
//! in [`crate::policy`]).

use crate::{Addr, assert_size, user_pod};

/// `zt_ct` key. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
    /// The interface the flow was admitted on (the packet's `ifindex` at the hook).
    pub ifindex: u32,
}
assert_size!(CtKey, 44);
user_pod!(CtKey);

/// `zt_ct` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `config.policy_revision` when the flow was last checked against policy.
    pub revision: u32,
    /// A set of [`flags`] bits.
    pub flags: u32,
}
assert_size!(CtValue, 8);
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
