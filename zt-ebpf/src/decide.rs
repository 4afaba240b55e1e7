//! The decision procedure of `zt_common::policy`, steps 1–10, for one packet in one direction.
//! Each step is a call into the module that owns the concern; this file only sequences them.

use core::mem::MaybeUninit;

use aya_ebpf::programs::TcContext;
use zt_common::{
    config::{Config, flags as cfg_flags},
    conntrack::flags as ct_flags,
    direction,
    endpoint::flags as ep_flags,
    event::kind,
    reason,
};

use crate::{
    conntrack::{self, Hit},
    family::{Family, V4, V6},
    frag,
    keys::{EndpointKey, copy_addr, is_ipv4_mapped, zero},
    maps::ENDPOINTS,
    packet::{self, Packet, class},
    parse::{self, ParseError},
    policy::{Decision, Query},
    verdict::{Verdict, ifindex},
};

#[inline(always)]
pub fn decide(ctx: &TcContext, cfg: &Config, dir: u8, pkt: &mut Packet) -> Verdict {
    let v = Verdict::new(dir);
    // Steps 1 and 2.
    match parse::parse(ctx, pkt) {
        Ok(()) => {}
        Err(ParseError::NotIp) => return v.with(reason::ALLOW_NON_IP),
        Err(_) => return v.with(reason::DROP_MALFORMED),
    }
    // Step 3.
    if pkt.frag == packet::frag::LATER {
        if !frag::resolve_later(pkt) {
            return v.with(reason::DROP_FRAGMENT_UNKNOWN);
        }
    } else if pkt.frag == packet::frag::FIRST {
        frag::record_first(pkt);
    }
    // Step 4.
    if pkt.class == class::NDP {
        return v.with(reason::ALLOW_NDP);
    }
    let ifindex = ifindex(ctx);
    if is_ipv4_mapped(&pkt.tuple.src) {
        flow::<V4>(cfg, dir, ifindex, pkt, v)
    } else {
        flow::<V6>(cfg, dir, ifindex, pkt, v)
    }
}

/// Steps 5–10, for one address family.
#[inline(always)]
fn flow<F: Family>(cfg: &Config, dir: u8, ifindex: u32, pkt: &Packet, mut v: Verdict) -> Verdict {
    // Step 5: an up-to-date entry for this flow on this interface allows on its own. A TCP SYN
    // opens a connection, so it is a new flow by definition and goes straight to policy.
    let hit = if pkt.tcp_syn != 0 {
        None
    } else {
        conntrack::lookup::<F>(pkt, dir, ifindex)
    };
    if let Some(h) = &hit {
        // SAFETY: a map value pointer returned by the kernel, valid for this program run.
        if unsafe { (*h.entry).revision } == cfg.policy_revision {
            return v.with(h.reason);
        }
    }
    // Step 6.
    let local = if dir == direction::EGRESS {
        pkt.tuple.src
    } else {
        pkt.tuple.dst
    };
    let ep = match ENDPOINTS.get_ptr(&EndpointKey { addr: local }) {
        // SAFETY: a map value pointer returned by the kernel, valid for this program run.
        Some(p) => unsafe { *p },
        None if cfg.flags & cfg_flags::FAIL_CLOSED != 0 => {
            return v.with(reason::DROP_UNKNOWN_ENDPOINT);
        }
        None => return v.with(reason::ALLOW_UNKNOWN_ENDPOINT),
    };
    v.local_identity = ep.identity;
    if ep.ifindex != 0 && ep.ifindex != ifindex {
        return v.with(reason::DROP_SPOOFED);
    }
    // Step 7.
    if ep.flags & (ep_flags::INGRESS_ISOLATED | ep_flags::EGRESS_ISOLATED) == 0 {
        return v.with(reason::ALLOW_NOT_ISOLATED);
    }
    let audit = ep.flags & ep_flags::AUDIT != 0;
    let revision = cfg.policy_revision;

    // Step 8.
    let hit = match hit {
        Some(h) => Some(h),
        None => conntrack::related::<F>(pkt, dir, ifindex),
    };
    if let Some(Hit {
        flow,
        entry,
        reason: ct_reason,
    }) = hit
    {
        // SAFETY: (here and below) a map value pointer returned by the kernel, valid for this run.
        if unsafe { (*entry).revision } == revision {
            return v.with(ct_reason);
        }
        // 8c: re-check the flow as it was admitted.
        let q = Query {
            peer: copy_addr(if flow.direction() == direction::EGRESS {
                flow.dst()
            } else {
                flow.src()
            }),
            dport: flow.dport(),
            protocol: flow.protocol(),
            direction: flow.direction(),
        };
        let mut d = MaybeUninit::<Decision>::uninit();
        let d = zero(&mut d);
        F::evaluate(&ep, &q, d);
        v.peer_identity = d.peer_identity;
        v.policy_ref = d.policy_ref;
        if d.allow != 0 {
            unsafe { (*entry).revision = revision };
            return v.with(ct_reason);
        }
        if audit {
            unsafe {
                (*entry).revision = revision;
                (*entry).flags |= ct_flags::AUDITED;
            }
            v.event = kind::AUDITED;
            return v.with(reason::ALLOW_AUDIT);
        }
        flow.forget::<F>();
        return v.with(reason::DROP_REVOKED);
    }

    // Step 9 for a new flow.
    let q = Query {
        peer: if dir == direction::EGRESS {
            pkt.tuple.dst
        } else {
            pkt.tuple.src
        },
        dport: pkt.tuple.dport,
        protocol: pkt.tuple.protocol,
        direction: dir,
    };
    let mut d = MaybeUninit::<Decision>::uninit();
    let d = zero(&mut d);
    F::evaluate(&ep, &q, d);
    v.peer_identity = d.peer_identity;
    v.policy_ref = d.policy_ref;
    let (allow, ct_flags, event) = if d.allow != 0 {
        (d.allow, 0, kind::NEW_FLOW)
    } else if audit {
        (reason::ALLOW_AUDIT, ct_flags::AUDITED, kind::AUDITED)
    } else if dir == direction::EGRESS {
        return v.with(reason::DROP_POLICY_EGRESS);
    } else {
        return v.with(reason::DROP_POLICY_INGRESS);
    };
    // Step 10.
    conntrack::admit::<F>(pkt, dir, ifindex, revision, ct_flags);
    v.event = event;
    v.with(allow)
}
