//! IP fragments (decision procedure step 3).
//!
//! The first fragment carries the L4 header: its ports are recorded in `zt_frag` under
//! (addresses, fragment id, protocol). A later fragment has no L4 header and takes the recorded
//! ports, so it gets exactly the verdict a whole packet of its flow would get (conntrack hit,
//! policy). No record — the first fragment never passed here, came later, or was evicted — means
//! the fragment cannot be attributed to a flow: it is dropped (`DROP_FRAGMENT_UNKNOWN`). Entries
//! age out through the LRU; they are not deleted on the last fragment because fragments may
//! arrive out of order.

use zt_common::conntrack::FragValue;

use crate::{
    keys::{FragKey, copy_addr},
    maps::FRAGMENTS,
    packet::Packet,
};

#[inline(always)]
fn key(pkt: &Packet) -> FragKey {
    FragKey {
        src: copy_addr(&pkt.tuple.src),
        dst: copy_addr(&pkt.tuple.dst),
        id: pkt.frag_id,
        protocol: pkt.tuple.protocol,
        _pad0: 0,
        _pad1: 0,
    }
}

/// Records the ports of a first fragment. A full map only evicts old entries (LRU).
#[inline(always)]
pub fn record_first(pkt: &Packet) {
    let value = FragValue {
        sport: pkt.tuple.sport,
        dport: pkt.tuple.dport,
    };
    let _ = FRAGMENTS.insert(&key(pkt), &value, 0);
}

/// Fills in a later fragment's ports; `false` when no first fragment was seen.
#[inline(always)]
pub fn resolve_later(pkt: &mut Packet) -> bool {
    match FRAGMENTS.get_ptr(&key(pkt)) {
        Some(v) => {
            // SAFETY: a map value pointer returned by the kernel, valid for this program run.
            let v = unsafe { *v };
            pkt.tuple.sport = v.sport;
            pkt.tuple.dport = v.dport;
            true
        }
        None => false,
    }
}
