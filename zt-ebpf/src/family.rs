//! What differs between IPv4 and IPv6 past parsing: the conntrack map and its key, and the host
//! identity map and prefix trie.
//!
//! The decision procedure is generic over [`Family`] and instantiated once per family, chosen once
//! per packet. Branching on the family inside each lookup instead would let the verifier combine
//! every IPv4 branch with every IPv6 one; two straight copies keep its work linear.

use aya_ebpf::maps::{HashMap, lpm_trie::Key};
use zt_common::{conntrack::CtValue, endpoint::EndpointValue, identity::IdentityValue};

use crate::{
    keys::{Addr32, CtKey4, CtKey6, Lpm4, Lpm6, copy_addr},
    maps::{
        CONNTRACK_V4, CONNTRACK_V6, HOST_IDENTITY_V4, HOST_IDENTITY_V6, IDENTITY_V4, IDENTITY_V6,
    },
    policy::{Decision, Query},
};

/// A conntrack key's fields; addresses in the packet's `Addr32` form.
pub struct CtFields<'a> {
    pub src: &'a Addr32,
    pub dst: &'a Addr32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
}

pub trait Family {
    type CtKey: 'static;

    fn conntrack() -> &'static HashMap<Self::CtKey, CtValue>;

    fn ct_key(f: &CtFields) -> Self::CtKey;

    /// The address's own entry in the host map, else its longest prefix in the trie.
    fn identity(addr: &Addr32) -> Option<&'static IdentityValue>;

    /// Step 9 (see `policy`).
    fn evaluate(ep: &EndpointValue, q: &Query, d: &mut Decision);
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type CtKey = CtKey4;

    #[inline(always)]
    fn conntrack() -> &'static HashMap<CtKey4, CtValue> {
        &CONNTRACK_V4
    }

    #[inline(always)]
    fn ct_key(f: &CtFields) -> CtKey4 {
        CtKey4 {
            src: f.src[3],
            dst: f.dst[3],
            sport: f.sport,
            dport: f.dport,
            protocol: f.protocol,
            direction: f.direction,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn identity(addr: &Addr32) -> Option<&'static IdentityValue> {
        // SAFETY: a shared reference to a map value, valid for this program run.
        if let Some(v) = unsafe { HOST_IDENTITY_V4.get(&addr[3]) } {
            return Some(v);
        }
        let key = Lpm4 {
            prefix_len: 32,
            data: addr[3],
        };
        // SAFETY: `Lpm4` has the layout of the packed `Key<u32>` (asserted in `keys`), with
        // stricter alignment.
        IDENTITY_V4.get(unsafe { &*(&key as *const Lpm4).cast::<Key<u32>>() })
    }

    #[inline(always)]
    fn evaluate(ep: &EndpointValue, q: &Query, d: &mut Decision) {
        crate::policy::zt_evaluate_v4(ep, q, d);
    }
}

impl Family for V6 {
    type CtKey = CtKey6;

    #[inline(always)]
    fn conntrack() -> &'static HashMap<CtKey6, CtValue> {
        &CONNTRACK_V6
    }

    #[inline(always)]
    fn ct_key(f: &CtFields) -> CtKey6 {
        CtKey6 {
            src: copy_addr(f.src),
            dst: copy_addr(f.dst),
            sport: f.sport,
            dport: f.dport,
            protocol: f.protocol,
            direction: f.direction,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn identity(addr: &Addr32) -> Option<&'static IdentityValue> {
        // SAFETY: as for IPv4.
        if let Some(v) = unsafe { HOST_IDENTITY_V6.get(addr) } {
            return Some(v);
        }
        let key = Lpm6 {
            prefix_len: 128,
            data: copy_addr(addr),
        };
        // SAFETY: as for IPv4, for `Key<Addr32>`.
        IDENTITY_V6.get(unsafe { &*(&key as *const Lpm6).cast::<Key<Addr32>>() })
    }

    #[inline(always)]
    fn evaluate(ep: &EndpointValue, q: &Query, d: &mut Decision) {
        crate::policy::zt_evaluate_v6(ep, q, d);
    }
}
