//! The datapath's policy decision in userspace: steps 6–9 of the procedure in
//! `zt_common::policy`, over a [`DatapathState`], with the same keys the kernel program builds.
//! Conntrack (steps 5 and 8) is out of scope: this answers "is a new flow allowed".

use std::net::IpAddr;

use ipnet::IpNet;
use zt_common::{
    direction,
    endpoint::flags,
    identity::{ANY, HOST, WORLD},
    policy::{PolicyKey, tuple},
    proto, reason,
};

use super::DatapathState;

/// One packet as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// `direction::INGRESS` (to the pod) or `direction::EGRESS` (from the pod).
    pub direction: u8,
    /// The pod's address: source on egress, destination on ingress.
    pub local: IpAddr,
    pub peer: IpAddr,
    pub protocol: u8,
    /// Destination port (ignored for protocols without ports).
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// A `zt_common::reason` code.
    pub reason: u8,
    /// The allowing entry's policy, for `ALLOW_POLICY`.
    pub policy_ref: Option<u32>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !reason::is_drop(self.reason)
    }
}

/// Steps 6, 7 and 9 for a new flow; `fail_closed` is `config::flags::FAIL_CLOSED`.
pub fn decide(state: &DatapathState, fail_closed: bool, packet: &Packet) -> Verdict {
    let verdict = |reason| Verdict {
        reason,
        policy_ref: None,
    };
    let Some(endpoint) = state.endpoints.get(&packet.local) else {
        return verdict(if fail_closed {
            reason::DROP_UNKNOWN_ENDPOINT
        } else {
            reason::ALLOW_UNKNOWN_ENDPOINT
        });
    };
    let (isolated, tuples, drop) = if packet.direction == direction::EGRESS {
        (
            endpoint.flags & flags::EGRESS_ISOLATED,
            endpoint.egress_tuples,
            reason::DROP_POLICY_EGRESS,
        )
    } else {
        (
            endpoint.flags & flags::INGRESS_ISOLATED,
            endpoint.ingress_tuples,
            reason::DROP_POLICY_INGRESS,
        )
    };
    if isolated == 0 {
        return verdict(reason::ALLOW_NOT_ISOLATED);
    }
    let peer = peer_identity(state, packet.peer);
    if peer == HOST {
        return verdict(reason::ALLOW_HOST);
    }
    for slot_bit in 0..64u32 {
        if tuples & (1u64 << slot_bit) == 0 {
            continue;
        }
        let key = lookup_key(endpoint.identity, peer, packet, slot_bit);
        if let Some(value) = state.policy.get(&key) {
            return Verdict {
                reason: reason::ALLOW_POLICY,
                policy_ref: Some(value.policy_ref),
            };
        }
    }
    if endpoint.flags & flags::AUDIT != 0 {
        return verdict(reason::ALLOW_AUDIT);
    }
    verdict(drop)
}

/// The key step 7 looks up for tuple slot bit `slot_bit` (0..64) of `subject`, towards `peer`
/// (an identity): the peer or `ANY`, the port masked to the slot's prefix.
pub fn lookup_key(subject: u32, peer: u32, packet: &Packet, slot_bit: u32) -> PolicyKey {
    let port = match packet.protocol {
        proto::TCP | proto::UDP | proto::SCTP => packet.port,
        _ => 0,
    };
    let any_peer = slot_bit >= tuple::ANY_PEER;
    let slot = slot_bit % tuple::ANY_PEER;
    let (port, protocol) = if slot == tuple::ANY_PROTOCOL {
        (0, proto::ANY)
    } else {
        (tuple::mask_port(port, slot), packet.protocol)
    };
    PolicyKey {
        subject,
        peer: if any_peer { ANY } else { peer },
        port,
        protocol,
        tuple: tuple::key_byte(packet.direction, slot),
    }
}

/// Longest-prefix match of `addr` in the identity tries, else `WORLD`.
pub fn peer_identity(state: &DatapathState, addr: IpAddr) -> u32 {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (0..=max)
        .rev()
        .find_map(|len| {
            IpNet::new(addr, len)
                .ok()
                .and_then(|net| state.identities.get(&net.trunc()))
                .copied()
        })
        .unwrap_or(WORLD)
}
