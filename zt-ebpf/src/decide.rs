//! The decision procedure of `zt_common::policy`, steps 1–10, for one packet in one direction.
//! Each step is a call into the module that owns the concern; this file only sequences them.

use aya_ebpf::programs::TcContext;
use zt_common::{
    config::{Config, flags as cfg_flags},
    conntrack::flags as ct_flags,
    direction,
    endpoint::{EndpointValue, flags as ep_flags},
    event::kind,
    reason,
};

use crate::{
    conntrack::{self, Hit},
    family::{Family, V4, V6},
    frag,
    keys::{EndpointKey, copy_addr, copy_words, is_ipv4_mapped},
    maps::ENDPOINTS,
    open,
    packet::{self, Packet, class, tcp},
    parse::{self, ParseError},
    policy::{Decision, Query},
    scratch::Scratch,
    verdict::{Verdict, ifindex},
};

#[inline(always)]
pub fn decide(ctx: &TcContext, dir: u8, s: &mut Scratch) {
    let Scratch {
        pkt,
        cfg,
        verdict: v,
        ep,
        query,
        decision,
    } = s;
    let (pkt, cfg) = (pkt, &*cfg);
    v.direction = dir;
    // Steps 1 and 2.
    match parse::parse(ctx, pkt) {
        Ok(()) => {}
        Err(ParseError::NotIp) => return v.set(reason::ALLOW_NON_IP),
        Err(_) => return v.set(reason::DROP_MALFORMED),
    }
    // Step 3.
    if pkt.frag == packet::frag::LATER {
        if !frag::resolve_later(pkt) {
            return v.set(reason::DROP_FRAGMENT_UNKNOWN);
        }
    } else if pkt.frag == packet::frag::FIRST {
        frag::record_first(pkt);
    }
    // Step 4.
    if pkt.class == class::NDP {
        return v.set(reason::ALLOW_NDP);
    }
    let ifindex = ifindex(ctx);
    let w = Work {
        ep,
        query,
        decision,
    };
    if is_ipv4_mapped(&pkt.tuple.src) {
        flow::<V4>(cfg, dir, ifindex, pkt, v, w)
    } else {
        flow::<V6>(cfg, dir, ifindex, pkt, v, w)
    }
}

/// The scratch values steps 6–10 fill in (see `scratch`).
struct Work<'s> {
    ep: &'s mut EndpointValue,
    query: &'s mut Query,
    decision: &'s mut Decision,
}

/// Steps 5–10, for one address family.
#[inline(always)]
fn flow<F: Family>(
    cfg: &Config,
    dir: u8,
    ifindex: u32,
    pkt: &Packet,
    v: &mut Verdict,
    w: Work<'_>,
) {
    let Work {
        ep,
        query: q,
        decision: d,
    } = w;
    let local = if dir == direction::EGRESS {
        pkt.tuple.src
    } else {
        pkt.tuple.dst
    };
    // Steps 6–7 first on an interface whose pod was open (see `open`): no conntrack for it.
    if open::hinted(ifindex) {
        if let Some(p) = ENDPOINTS.get_ptr(&EndpointKey { addr: local }) {
            // SAFETY: a map value pointer returned by the kernel, valid for this program run.
            let (ep_if, ep_fl) = unsafe { ((*p).ifindex, (*p).flags) };
            if (ep_if == 0 || ep_if == ifindex) && open::is_open(ep_fl) {
                // SAFETY: as above.
                v.local_identity = unsafe { (*p).identity };
                return v.set(reason::ALLOW_NOT_ISOLATED);
            }
        }
    }
    // Step 5: an up-to-date entry for this flow on this interface allows on its own. A TCP SYN
    // opens a connection, so it is a new flow by definition and goes straight to policy.
    let hit = if pkt.tcp & tcp::OPEN != 0 {
        None
    } else {
        conntrack::lookup::<F>(pkt, dir, ifindex)
    };
    if let Some(h) = &hit {
        // SAFETY: a map value pointer returned by the kernel, valid for this program run.
        if unsafe { (*h.entry).revision } == cfg.policy_revision {
            conntrack::touch(h.entry, h.reason, pkt, cfg.clock);
            return v.set(h.reason);
        }
    }
    // Step 6.
    // Copied: the agent may update the entry while the packet is decided.
    match ENDPOINTS.get_ptr(&EndpointKey { addr: local }) {
        // SAFETY: a map value pointer returned by the kernel, valid for this program run, and
        // this run's scratch slot.
        Some(p) => unsafe { copy_words(ep, p) },
        None if cfg.flags & cfg_flags::FAIL_CLOSED != 0 => {
            return v.set(reason::DROP_UNKNOWN_ENDPOINT);
        }
        None => return v.set(reason::ALLOW_UNKNOWN_ENDPOINT),
    };
    v.local_identity = ep.identity;
    if ep.ifindex != 0 && ep.ifindex != ifindex {
        return v.set(reason::DROP_SPOOFED);
    }
    // Step 7.
    let is_open = open::is_open(ep.flags);
    open::learn(ifindex, is_open);
    if is_open {
        return v.set(reason::ALLOW_NOT_ISOLATED);
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
            conntrack::touch(entry, ct_reason, pkt, cfg.clock);
            return v.set(ct_reason);
        }
        // 8c: re-check the flow as it was admitted.
        q.peer = copy_addr(if flow.direction() == direction::EGRESS {
            flow.dst()
        } else {
            flow.src()
        });
        q.dport = flow.dport();
        q.protocol = flow.protocol();
        q.direction = flow.direction();
        F::evaluate(ep, q, d);
        v.peer_identity = d.peer_identity;
        v.policy_ref = d.policy_ref;
        if d.allow != 0 {
            unsafe { (*entry).revision = revision };
            conntrack::touch(entry, ct_reason, pkt, cfg.clock);
            return v.set(ct_reason);
        }
        if audit {
            unsafe {
                (*entry).revision = revision;
                (*entry).flags |= ct_flags::AUDITED;
            }
            conntrack::touch(entry, ct_reason, pkt, cfg.clock);
            v.event = kind::AUDITED;
            return v.set(reason::ALLOW_AUDIT);
        }
        flow.forget::<F>();
        return v.set(reason::DROP_REVOKED);
    }

    // Step 9 for a new flow.
    q.peer = copy_addr(if dir == direction::EGRESS {
        &pkt.tuple.dst
    } else {
        &pkt.tuple.src
    });
    q.dport = pkt.tuple.dport;
    q.protocol = pkt.tuple.protocol;
    q.direction = dir;
    F::evaluate(ep, q, d);
    v.peer_identity = d.peer_identity;
    v.policy_ref = d.policy_ref;
    let (allow, ct_flags, event) = if d.allow != 0 {
        (d.allow, 0, kind::NEW_FLOW)
    } else if audit {
        (reason::ALLOW_AUDIT, ct_flags::AUDITED, kind::AUDITED)
    } else if dir == direction::EGRESS {
        return v.set(reason::DROP_POLICY_EGRESS);
    } else {
        return v.set(reason::DROP_POLICY_INGRESS);
    };
    // Step 10. A flow conntrack cannot record does not start: its replies could not pass.
    if !conntrack::admit::<F>(pkt, dir, ifindex, revision, ct_flags, cfg.clock) {
        return v.set(reason::DROP_CT_FULL);
    }
    v.event = event;
    v.set(allow)
}
