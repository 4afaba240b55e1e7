//! Local endpoints: the pods on this node whose interfaces carry the program pair.

use crate::{Addr, assert_size, user_pod};

/// `zt_endpoints` key: one of the pod's addresses (IPv4-mapped for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: Addr,
}
assert_size!(EndpointKey, 16);
user_pod!(EndpointKey);

/// `zt_endpoints` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// The pod's identity: the `subject` of its policy entries.
    pub identity: u32,
    /// A set of [`flags`] bits.
    pub flags: u32,
    /// The host-side interface the pod's packets must arrive on; 0 = not checked. A packet whose
    /// local address names an endpoint of another interface is dropped as spoofed.
    pub ifindex: u32,
    pub _pad: u32,
    /// Which policy-key tuples exist for this identity's ingress (see [`crate::policy::tuple`]).
    pub ingress_tuples: u64,
    /// Same for egress.
    pub egress_tuples: u64,
}
assert_size!(EndpointValue, 32);
user_pod!(EndpointValue);

pub mod flags {
    /// Some policy selects the pod for ingress: ingress is default-deny.
    pub const INGRESS_ISOLATED: u32 = 1 << 0;
    /// Some policy selects the pod for egress: egress is default-deny.
    pub const EGRESS_ISOLATED: u32 = 1 << 1;
    /// Audit mode: a deny becomes an allow plus an `AUDITED` event.
    pub const AUDIT: u32 = 1 << 2;
}
