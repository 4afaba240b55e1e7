//! Conntrack lookups and admissions (decision procedure steps 5, 8a and 10).
//!
//! A flow is keyed by the tuple of its first packet, the direction it was admitted in and the
//! interface it was admitted on; see `zt_common::conntrack` for why.

use core::mem::MaybeUninit;

use zt_common::{conntrack::CtValue, reason};

use crate::{
    keys::CtKey,
    maps::CONNTRACK,
    packet::{Packet, Tuple, class},
};

/// A conntrack hit: the entry, and the reason an up-to-date entry allows with.
pub type Hit = (*mut CtValue, u8);

/// The key of the flow `t` admitted in `dir` on `ifindex`. Every byte is written, padding
/// included, so the key needs no zeroing first.
#[inline(always)]
fn key_of(t: &Tuple, dir: u8, ifindex: u32) -> CtKey {
    CtKey {
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        protocol: t.protocol,
        direction: dir,
        _pad: 0,
        ifindex,
    }
}

/// Step 5: the packet's own flow, then the flow it replies to. Writes `key`; on a hit it holds
/// the entry's key (the flow as it was admitted).
#[inline(always)]
pub fn lookup<'k>(
    pkt: &Packet,
    dir: u8,
    ifindex: u32,
    key: &'k mut MaybeUninit<CtKey>,
) -> (&'k mut CtKey, Option<Hit>) {
    let key = key.write(key_of(&pkt.tuple, dir, ifindex));
    if let Some(v) = CONNTRACK.get_ptr_mut(&*key) {
        return (key, Some((v, reason::ALLOW_CT_ESTABLISHED)));
    }
    let t = &pkt.tuple;
    key.src = t.dst;
    key.dst = t.src;
    key.sport = t.dport;
    key.dport = t.sport;
    key.direction = dir ^ 1;
    if let Some(v) = CONNTRACK.get_ptr_mut(&*key) {
        return (key, Some((v, reason::ALLOW_CT_REPLY)));
    }
    (key, None)
}

/// Step 8a for an ICMP error: the flow of the packet it quotes, admitted in the other
/// direction on this interface. On a hit, `key` holds the entry's key.
#[inline(always)]
pub fn related(pkt: &Packet, dir: u8, ifindex: u32, key: &mut CtKey) -> Option<Hit> {
    if pkt.class != class::ICMP_ERROR || pkt.quoted_valid == 0 {
        return None;
    }
    *key = key_of(&pkt.quoted, dir ^ 1, ifindex);
    CONNTRACK
        .get_ptr_mut(&*key)
        .map(|v| (v, reason::ALLOW_CT_RELATED))
}

/// Step 10: records a new flow. A full LRU evicts its least recently used flow.
#[inline(always)]
pub fn admit(t: &Tuple, dir: u8, ifindex: u32, revision: u32, flags: u32) {
    let _ = CONNTRACK.insert(&key_of(t, dir, ifindex), &CtValue { revision, flags }, 0);
}

/// Step 8c: a revoked flow is forgotten, so its next packet is a new flow again.
#[inline(always)]
pub fn forget(key: &CtKey) {
    let _ = CONNTRACK.remove(key);
}
