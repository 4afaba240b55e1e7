//! Peer identity: longest-prefix match in the family's trie, `WORLD` when nothing covers the
//! address (decision procedure step 9b).

use aya_ebpf::maps::lpm_trie::Key;
use zt_common::identity::WORLD;

use crate::{
    keys::{Addr32, Lpm4, Lpm6, is_ipv4_mapped},
    maps::{IDENTITY_V4, IDENTITY_V6},
};

#[inline(always)]
pub fn lookup(addr: &Addr32) -> u32 {
    let hit = if is_ipv4_mapped(addr) {
        let key = Lpm4 {
            prefix_len: 32,
            data: addr[3],
        };
        // SAFETY: `Lpm4` has the layout of the packed `Key<u32>` (asserted in `keys`), with
        // stricter alignment.
        IDENTITY_V4.get(unsafe { &*(&key as *const Lpm4).cast::<Key<u32>>() })
    } else {
        let key = Lpm6 {
            prefix_len: 128,
            data: *addr,
        };
        // SAFETY: as above, for `Key<Addr32>`.
        IDENTITY_V6.get(unsafe { &*(&key as *const Lpm6).cast::<Key<Addr32>>() })
    };
    match hit {
        Some(v) => v.identity,
        None => WORLD,
    }
}
