//! Policy entries and the decision procedure both sides implement.
//!
//! # Key layout
//!
//! `zt_policy` is a hash map of [`PolicyKey`] → [`PolicyValue`]. NetworkPolicy only allows, so an
//! entry is an allow; a miss is a deny for an isolated direction. The key is
//! `(subject, peer, port, protocol, tuple)`:
//! - `subject` is the *identity* of the local endpoint, not the endpoint itself, so pods that share an
//!   identity share their entries and entries grow with identities, never with pods × policies;
//! - `peer` is the peer's identity, or [`crate::identity::ANY`] for a rule that allows any peer;
//! - `port`, in host byte order, is the destination port masked to its top `prefix` bits, so an
//!   `endPort` range is a handful of aligned blocks (at most 2 per bit of width), never one entry
//!   per port; `prefix == 16` is one port, `prefix == 0` every port of `protocol`;
//! - `protocol` is the IP protocol, or [`crate::proto::ANY`] for a rule without `ports` (then `port`
//!   and `prefix` are 0);
//! - `tuple` packs the direction (bit 7) and the prefix length (bits 0..=4).
//!
//! A lookup must try every (peer kind, prefix) combination that may hold entries. Trying all 36
//! would be slow, so each endpoint carries, per direction, a `u64` set of the *tuple slots* its
//! identity has entries in (see [`tuple`]); the datapath tries only those. The common case — one
//! exact port from specific peers — is one hash lookup.
//!
//! # Decision procedure (the kernel program and the agent's model implement exactly this)
//!
//! For a packet on the host side of a pod's interface, direction `D` (from-pod hook: egress,
//! to-pod hook: ingress), local address `L` (source on egress, destination on ingress), peer
//! address `P`:
//! 1. Not IPv4 or IPv6 → allow (`ALLOW_NON_IP`): ARP and friends are not NetworkPolicy's business.
//! 2. Truncated or malformed IP or L4 header → drop (`DROP_MALFORMED`). So are VLAN-tagged
//!    frames, IPv6 packets with IPv4-mapped addresses (they would borrow an IPv4 pod's identity),
//!    and IPv6 extension-header chains longer than 6 headers or ending past byte 512.
//! 3. A non-first IP fragment takes its ports from `zt_frag`, recorded by its first fragment
//!    (keyed by addresses, fragment id and protocol); no record → drop (`DROP_FRAGMENT_UNKNOWN`).
//! 4. ICMPv6 neighbour discovery (types 133–137) → allow (`ALLOW_NDP`): IPv6 cannot work without it.
//!    (The kernel may take steps 6–7 before step 5 on an interface whose pod it last found open,
//!    the open-interface hint of `zt-ebpf/src/open.rs`: an open endpoint allows at step 7 whatever
//!    step 5 would find, so the order changes no verdict; any other outcome takes steps 5–10.)
//! 5. Conntrack fast path, one flow entry per direction, valid on the interface it was admitted on
//!    (see [`crate::conntrack`]): `(tuple, D)` present for this ifindex → established; `(reversed
//!    tuple, !D)` present for this ifindex → reply. A TCP SYN (SYN set, ACK clear) skips this
//!    step and step 8: it opens a connection, so it is always a new flow, decided by policy (a
//!    retransmitted SYN is decided again, under the policy of the moment; a simultaneous open,
//!    where both ends send a bare SYN, is two new flows). If the entry's revision is the current `config.policy_revision`,
//!    allow (`ALLOW_CT_ESTABLISHED` / `ALLOW_CT_REPLY`) without steps 6–7. This is the decision
//!    steps 6–8 would reach: the entry was admitted or re-checked under the current revision on
//!    this interface after steps 6–7 passed for the same local address (the packet's tuple is the
//!    entry's, or its reverse, and `D` or `!D` names the same local end), and every change to
//!    `zt_endpoints` bumps the revision. A stale entry is kept for step 8. Every entry a packet
//!    passes on is stamped with `config.clock` (and flagged `REPLIED` on a reply, `CLOSING` on a
//!    TCP FIN or RST) through the lookup pointer; the agent deletes entries idle past their
//!    timeout ([`crate::conntrack::expired`]).
//! 6. `zt_endpoints[L]` missing → allow or drop by `config::flags::FAIL_CLOSED`
//!    (`ALLOW_UNKNOWN_ENDPOINT` / `DROP_UNKNOWN_ENDPOINT`); its `ifindex` set and not the packet's
//!    interface → drop (`DROP_SPOOFED`).
//! 7. Endpoint isolated in neither direction → allow (`ALLOW_NOT_ISOLATED`), no conntrack.
//! 8. Conntrack, slow path:
//!    a. the stale entry step 5 found; else, for an ICMP error, the entry of the packet it quotes,
//!    `(quoted tuple, !D)` present for this ifindex → related.
//!    b. If the entry's revision is the current `config.policy_revision`, allow
//!    (`ALLOW_CT_RELATED`).
//!    c. Otherwise re-run step 9 for the flow as it was admitted (its key's tuple and direction):
//!    still allowed → refresh the revision and allow (`ALLOW_CT_ESTABLISHED` / `ALLOW_CT_REPLY` /
//!    `ALLOW_CT_RELATED`); denied → delete the entry and drop (`DROP_REVOKED`), or in audit mode
//!    refresh it, flag it `AUDITED` and allow (`ALLOW_AUDIT`) with an `AUDITED` event.
//! 9. Policy, for direction `D`:
//!    a. `D` not isolated for the endpoint → allow (`ALLOW_NOT_ISOLATED`);
//!    b. peer identity = longest-prefix match of `P` in the family's trie, else `WORLD`;
//!    `HOST` → allow (`ALLOW_HOST`);
//!    c. for each slot in the endpoint's tuple set for `D`, look up the key built from
//!    (subject, peer or ANY, masked destination port or 0, protocol or ANY, D | prefix);
//!    any hit → allow (`ALLOW_POLICY`, the entry's `policy_ref` in the event);
//!    d. no hit → drop (`DROP_POLICY_INGRESS` / `DROP_POLICY_EGRESS`), or, for an endpoint in
//!    audit mode, allow (`ALLOW_AUDIT`) with an `AUDITED` event.
//! 10. A new flow allowed in step 9 (9a and 9b included, so replies into an isolated direction
//!     pass; 9d in audit mode flagged `AUDITED`) is recorded in conntrack as `(tuple, D)` on this
//!     ifindex with the current revision and clock (inserted with `BPF_NOEXIST`; an entry of that
//!     key is overwritten in place), and publishes a `NEW_FLOW` event (`AUDITED` for step 9d).
//!     A full conntrack map cannot record it: drop (`DROP_CT_FULL`), never an untracked allow.
//!
//! The policy port is the packet's destination port for TCP, UDP and SCTP and 0 for every other
//! protocol; ICMP echo flows use the echo identifier as both conntrack ports.

use crate::{assert_size, user_pod};

/// `zt_policy` key. Field order is chosen so the struct has no implicit padding; the order does
/// not matter for a hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub subject: u32,
    pub peer: u32,
    pub port: u16,
    pub protocol: u8,
    pub tuple: u8,
}
assert_size!(PolicyKey, 12);
user_pod!(PolicyKey);

/// `zt_policy` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Which policy allowed it: an index the agent resolves to `namespace/name` for events.
    pub policy_ref: u32,
}
assert_size!(PolicyValue, 4);
user_pod!(PolicyValue);

/// Tuple slots: the (peer kind, port prefix) combinations a key can be built with.
///
/// Slot `0..=16` = specific peer with that port prefix length, [`ANY_PROTOCOL`] = specific peer,
/// any protocol. The same slots offset by [`ANY_PEER`] are the any-peer variants.
pub mod tuple {
    /// Slot of a rule without ports (any protocol, any port).
    pub const ANY_PROTOCOL: u32 = 17;
    /// Offset of the any-peer slots.
    pub const ANY_PEER: u32 = 32;
    /// Bit 7 of `PolicyKey::tuple`: egress.
    pub const EGRESS_BIT: u8 = 0x80;

    /// The endpoint tuple-set bit for a slot.
    #[inline(always)]
    pub const fn bit(any_peer: bool, slot: u32) -> u64 {
        1u64 << (slot + if any_peer { ANY_PEER } else { 0 })
    }

    /// `PolicyKey::tuple` for a direction and a slot (the any-protocol slot has prefix 0).
    #[inline(always)]
    pub const fn key_byte(direction: u8, slot: u32) -> u8 {
        let prefix = if slot == ANY_PROTOCOL { 0 } else { slot as u8 };
        if direction == crate::direction::EGRESS {
            EGRESS_BIT | prefix
        } else {
            prefix
        }
    }

    /// The destination port masked to its top `prefix` bits.
    #[inline(always)]
    pub const fn mask_port(port: u16, prefix: u32) -> u16 {
        if prefix == 0 {
            0
        } else {
            port & (0xffffu16 << (16 - prefix))
        }
    }
}
