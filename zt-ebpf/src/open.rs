//! The open-interface hint: lets packets of pods no policy selects skip conntrack.
//!
//! A pod isolated in neither direction is allowed at step 7, after the endpoint lookup; by the
//! decision procedure's order its packets would first pay both conntrack lookups of step 5, both
//! misses (no flow of such a pod is ever recorded). `zt_open_ifs[ifindex % OPEN_IFS]` remembers
//! the interfaces on which step 7 last found an open endpoint; on those, the endpoint is looked up
//! first, and an open endpoint on this interface allows at once.
//!
//! It is a hint, never a verdict: the datapath learns it from the endpoints it reads, nothing
//! else writes it, and a stale or colliding slot only costs time. Reordering steps 5 and 6–7
//! cannot change a verdict: an up-to-date conntrack hit allows, and so does an open endpoint
//! (conntrack entries of an endpoint that became open are stale, since every endpoint change
//! bumps the policy revision, and step 7 allows before they are looked at). When the hinted
//! endpoint turns out missing, spoofed or isolated, the packet takes the full procedure.

use zt_common::{endpoint::flags, names::capacity};

use crate::maps::OPEN_IFS;

/// Whether `ifindex` last showed an open endpoint. Costs one inlined array load.
#[inline(always)]
pub fn hinted(ifindex: u32) -> bool {
    matches!(OPEN_IFS.get(ifindex % capacity::OPEN_IFS), Some(&slot) if slot == ifindex)
}

/// Whether an endpoint with `ep_flags` found on `ifindex` is open (isolated in neither
/// direction) there.
#[inline(always)]
pub fn is_open(ep_flags: u32) -> bool {
    ep_flags & (flags::INGRESS_ISOLATED | flags::EGRESS_ISOLATED) == 0
}

/// Records what step 7 found for an endpoint on `ifindex`; writes only on a change.
#[inline(always)]
pub fn learn(ifindex: u32, open: bool) {
    if ifindex == 0 {
        return;
    }
    if let Some(slot) = OPEN_IFS.get_ptr_mut(ifindex % capacity::OPEN_IFS) {
        // SAFETY: a map value pointer returned by the kernel, valid for this program run. A
        // concurrent writer can only leave another (still harmless) hint.
        unsafe {
            if open && *slot != ifindex {
                *slot = ifindex;
            } else if !open && *slot == ifindex {
                *slot = 0;
            }
        }
    }
}
