//! Conntrack lookups and admissions (decision procedure steps 7a and 9).
//!
//! A flow is keyed by the tuple of its first packet and the direction it was admitted in; see
//! `zt_common::conntrack` for why the direction is part of the key.

use zt_common::{conntrack::CtValue, reason};

use crate::{
    keys::CtKey,
    maps::CONNTRACK,
    packet::{Packet, Tuple, class},
};

#[inline(always)]
fn fill(key: &mut CtKey, t: &Tuple, dir: u8) {
    key.src = t.src;
    key.dst = t.dst;
    key.sport = t.sport;
    key.dport = t.dport;
    key.protocol = t.protocol;
    key.direction = dir;
    key._pad = 0;
}

/// Step 7a. On a hit, `key` holds the entry's key (the flow as it was admitted) and the result
/// carries the entry and the reason an up-to-date entry allows with.
#[inline(always)]
pub fn lookup(pkt: &Packet, dir: u8, key: &mut CtKey) -> Option<(*mut CtValue, u8)> {
    fill(key, &pkt.tuple, dir);
    if let Some(v) = CONNTRACK.get_ptr_mut(&*key) {
        return Some((v, reason::ALLOW_CT_ESTABLISHED));
    }
    let t = &pkt.tuple;
    key.src = t.dst;
    key.dst = t.src;
    key.sport = t.dport;
    key.dport = t.sport;
    key.direction = dir ^ 1;
    if let Some(v) = CONNTRACK.get_ptr_mut(&*key) {
        return Some((v, reason::ALLOW_CT_REPLY));
    }
    if pkt.class == class::ICMP_ERROR && pkt.quoted_valid != 0 {
        fill(key, &pkt.quoted, dir ^ 1);
        if let Some(v) = CONNTRACK.get_ptr_mut(&*key) {
            return Some((v, reason::ALLOW_CT_RELATED));
        }
    }
    None
}

/// Step 9: records a new flow. A full LRU evicts its least recently used flow.
#[inline(always)]
pub fn admit(t: &Tuple, dir: u8, revision: u32, flags: u32) {
    let key = CtKey {
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        protocol: t.protocol,
        direction: dir,
        _pad: 0,
    };
    let _ = CONNTRACK.insert(&key, &CtValue { revision, flags }, 0);
}

/// Step 7c: a revoked flow is forgotten, so its next packet is a new flow again.
#[inline(always)]
pub fn forget(key: &CtKey) {
    let _ = CONNTRACK.remove(key);
}
