//! Verdict events published to the `zt_events` ring buffer, so a person can ask why a packet was
//! dropped. Userspace stamps the time when it reads them (keeping a helper call off the packet path).

use crate::{Addr, assert_size, user_pod};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub src: Addr,
    pub dst: Addr,
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub protocol: u8,
    /// [`crate::direction`] relative to the local endpoint.
    pub direction: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`crate::reason`].
    pub reason: u8,
    /// Identity of the local endpoint (0 when unknown).
    pub local_identity: u32,
    /// Identity of the peer (0 when not looked up).
    pub peer_identity: u32,
    /// The policy that allowed it (`PolicyValue::policy_ref`), 0 otherwise.
    pub policy_ref: u32,
    pub ifindex: u32,
}
assert_size!(Event, 56);
user_pod!(Event);

pub mod kind {
    pub const DENIED: u8 = 1;
    pub const NEW_FLOW: u8 = 2;
    pub const AUDITED: u8 = 3;
}
