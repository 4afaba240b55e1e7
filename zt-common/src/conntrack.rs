//! Connection tracking: hash maps of flows admitted by policy, one per address family.
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
//!
//! The maps are preallocated hash maps, not LRU maps: an insert (`BPF_NOEXIST`) takes a free
//! element without the LRU's lists and locks, and nothing is ever evicted behind a live flow's
//! back. The datapath marks every entry a packet uses with the conntrack clock
//! ([`crate::config::Config::clock`]) through the lookup pointer (never by an update), and the
//! agent deletes entries idle for longer than their [`timeout`] in periodic sweeps
//! ([`expired`]). A full map admits no new flow (`reason::DROP_CT_FULL`), never a silent allow;
//! established flows keep their entries and pass.

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
    /// [`crate::config::Config::clock`] when a packet last used the entry.
    pub seen: u32,
}
assert_size!(CtValue, 16);
user_pod!(CtValue);

pub mod flags {
    /// Admitted only because the endpoint is in audit mode.
    pub const AUDITED: u32 = 1 << 0;
    /// A reply passed on this entry: the flow is two-way.
    pub const REPLIED: u32 = 1 << 1;
    /// A TCP segment with FIN or RST passed on this entry: the connection is closing.
    pub const CLOSING: u32 = 1 << 2;
}

/// Idle timeouts, in seconds of the conntrack clock: an entry no packet used for longer is
/// deleted by the agent's next sweep.
pub mod timeout {
    /// A flow no reply has passed on yet (a SYN or a first datagram nobody answered).
    pub const UNREPLIED: u32 = 60;
    /// A TCP connection that saw a FIN or an RST.
    pub const CLOSING: u32 = 10;
    /// An established TCP connection (as Cilium's default).
    pub const TCP: u32 = 21_600;
    /// A two-way flow of any other protocol (UDP, SCTP, ICMP echo).
    pub const OTHER: u32 = 120;
}

/// The idle timeout of an entry of `protocol` with `value`'s flags.
pub const fn timeout_of(protocol: u8, value: &CtValue) -> u32 {
    if value.flags & flags::REPLIED == 0 {
        timeout::UNREPLIED
    } else if protocol != crate::proto::TCP {
        timeout::OTHER
    } else if value.flags & flags::CLOSING != 0 {
        timeout::CLOSING
    } else {
        timeout::TCP
    }
}

/// Whether an entry of `protocol` last used at `value.seen` is past its timeout at `clock`.
/// The clock only moves forward (wrapping after 136 years of agent time), so the age is the
/// wrapping difference; an entry stamped *after* `clock` was read (the clock moved on while a
/// sweep ran) has a "negative" age and is fresh.
pub const fn expired(protocol: u8, value: &CtValue, clock: u32) -> bool {
    let age = clock.wrapping_sub(value.seen);
    age <= i32::MAX as u32 && age > timeout_of(protocol, value)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn value(flags: u32, seen: u32) -> CtValue {
        CtValue {
            revision: 1,
            flags,
            ifindex: 3,
            seen,
        }
    }

    #[test]
    fn timeouts_follow_the_flow_state() {
        let replied = flags::REPLIED;
        let cases = [
            (proto::TCP, 0, timeout::UNREPLIED),
            (proto::UDP, 0, timeout::UNREPLIED),
            (proto::TCP, replied, timeout::TCP),
            (proto::TCP, replied | flags::CLOSING, timeout::CLOSING),
            (proto::TCP, flags::CLOSING, timeout::UNREPLIED),
            (proto::UDP, replied, timeout::OTHER),
            (proto::ICMP, replied | flags::AUDITED, timeout::OTHER),
        ];
        for (protocol, f, want) in cases {
            assert_eq!(
                timeout_of(protocol, &value(f, 0)),
                want,
                "{protocol} {f:#b}"
            );
        }
    }

    #[test]
    fn expired_only_past_the_timeout() {
        let v = value(flags::REPLIED, 1000);
        assert!(!expired(proto::UDP, &v, 1000));
        assert!(!expired(proto::UDP, &v, 1000 + timeout::OTHER));
        assert!(expired(proto::UDP, &v, 1001 + timeout::OTHER));
        // Stamped after the sweep read the clock.
        assert!(!expired(proto::UDP, &value(0, 1001), 1000));
        assert!(!expired(proto::UDP, &value(0, 1000 + timeout::TCP), 1000));
        // Across the clock's wrap.
        assert!(!expired(
            proto::UDP,
            &value(flags::REPLIED, u32::MAX - 5),
            10
        ));
        assert!(expired(
            proto::UDP,
            &value(0, u32::MAX - 5),
            timeout::UNREPLIED
        ));
    }
}
