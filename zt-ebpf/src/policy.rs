//! Policy evaluation for one direction of one endpoint (decision procedure step 9a–c).

use zt_common::{
    direction,
    endpoint::{EndpointValue, flags as ep_flags},
    identity::{ANY, HOST},
    policy::{PolicyKey, tuple},
    proto, reason,
};

use crate::{
    family::{Family, V4, V6},
    identity,
    keys::Addr32,
    maps::POLICY,
};

/// The outcome of step 9 before audit mode is applied.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Decision {
    pub peer_identity: u32,
    pub policy_ref: u32,
    /// `ALLOW_NOT_ISOLATED`, `ALLOW_HOST`, `ALLOW_POLICY`, or 0 for no match (step 9d).
    pub allow: u8,
    pub _pad: [u8; 3],
}

/// A flow to evaluate: as admitted in `direction`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Query {
    pub peer: Addr32,
    /// Destination port, network byte order (as in the packet).
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
}

// Step 9 is a *global* BPF function per family, reached through `Family::evaluate` (exported by
// name, see `build.rs`, so its BTF linkage is global). The verifier checks a global function once, on its own, for any argument,
// instead of once per distinct caller state as it does a static subprogram; with the 18-slot
// lookup loop inside, that is the difference between ~94k and ~780k verifier steps per program
// (the limit is 1M). The price: arguments are checked for null, and the return is a scalar.

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn zt_evaluate_v4(
    ep: *const EndpointValue,
    q: *const Query,
    d: *mut Decision,
) -> u32 {
    // SAFETY: null or pointers to the caller's initialised stack values.
    if let (Some(ep), Some(q), Some(d)) = unsafe { (ep.as_ref(), q.as_ref(), d.as_mut()) } {
        lookup::<V4>(ep, q, d);
    }
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn zt_evaluate_v6(
    ep: *const EndpointValue,
    q: *const Query,
    d: *mut Decision,
) -> u32 {
    // SAFETY: as for IPv4.
    if let (Some(ep), Some(q), Some(d)) = unsafe { (ep.as_ref(), q.as_ref(), d.as_mut()) } {
        lookup::<V6>(ep, q, d);
    }
    0
}

#[inline(always)]
fn lookup<F: Family>(ep: &EndpointValue, q: &Query, d: &mut Decision) {
    let (dir, protocol, dport, peer) = (q.direction, q.protocol, q.dport, &q.peer);
    let (isolated, mut slots) = if dir == direction::EGRESS {
        (ep.flags & ep_flags::EGRESS_ISOLATED, ep.egress_tuples)
    } else {
        (ep.flags & ep_flags::INGRESS_ISOLATED, ep.ingress_tuples)
    };
    if isolated == 0 {
        d.allow = reason::ALLOW_NOT_ISOLATED;
        return;
    }
    let peer_identity = identity::lookup::<F>(peer);
    d.peer_identity = peer_identity;
    if peer_identity == HOST {
        d.allow = reason::ALLOW_HOST;
        return;
    }
    let port = match protocol {
        proto::TCP | proto::UDP | proto::SCTP => u16::from_be(dport),
        _ => 0,
    };
    // Slot by slot in a fixed order: a constant bound and a constant slot per iteration keep the
    // verifier's work linear (a find-first-set loop multiplies its states).
    for slot in 0..=tuple::ANY_PROTOCOL {
        if slots == 0 {
            break;
        }
        let specific = tuple::bit(false, slot);
        let any = tuple::bit(true, slot);
        if slots & (specific | any) == 0 {
            continue;
        }
        let mut key = PolicyKey {
            subject: ep.identity,
            peer: peer_identity,
            port: if slot == tuple::ANY_PROTOCOL {
                0
            } else {
                tuple::mask_port(port, slot)
            },
            protocol: if slot == tuple::ANY_PROTOCOL {
                proto::ANY
            } else {
                protocol
            },
            tuple: tuple::key_byte(dir, slot),
        };
        if slots & specific != 0 && hit(&key, d) {
            return;
        }
        key.peer = ANY;
        if slots & any != 0 && hit(&key, d) {
            return;
        }
        slots &= !(specific | any);
    }
}

#[inline(always)]
fn hit(key: &PolicyKey, d: &mut Decision) -> bool {
    match POLICY.get_ptr(key) {
        Some(v) => {
            d.allow = reason::ALLOW_POLICY;
            // SAFETY: a map value pointer returned by the kernel, valid for this program run.
            d.policy_ref = unsafe { (*v).policy_ref };
            true
        }
        None => false,
    }
}
