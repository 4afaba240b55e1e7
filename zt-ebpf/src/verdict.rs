//! The one exit every packet takes: count the reason, publish the event the config asks for,
//! and turn the verdict into a TC action. No drop without a reason, no reason without a count.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use zt_common::{
    config::{Config, event_mask},
    event::kind,
    reason,
};

use crate::{
    keys::{Event, copy_addr},
    maps::{COUNTERS, EVENTS},
    packet::Packet,
};

/// A decision and what its event reports. Lives in the run's scratch slot (see `scratch`), zeroed
/// at the start of the run.
#[repr(C)]
pub struct Verdict {
    pub reason: u8,
    pub direction: u8,
    /// `event::kind::NEW_FLOW` or `AUDITED` for an allow that publishes one, else 0. Drops always
    /// publish `DENIED` (subject to the mask).
    pub event: u8,
    pub local_identity: u32,
    pub peer_identity: u32,
    pub policy_ref: u32,
}

impl Verdict {
    /// The decision's reason (its last step).
    #[inline(always)]
    pub fn set(&mut self, reason: u8) {
        self.reason = reason;
    }
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The exit of a run that could not even hold a packet: count `reason` and drop, no event (there
/// is no tuple to report).
#[inline(always)]
pub fn fail_closed(reason: u8) -> i32 {
    count(reason);
    TC_ACT_SHOT
}

#[inline(always)]
fn count(reason: u8) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it concurrently.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn finish(ctx: &TcContext, cfg: &Config, pkt: &Packet, v: &Verdict) -> i32 {
    count(v.reason);
    let drop = reason::is_drop(v.reason);
    let (kind, bit) = if drop {
        (kind::DENIED, event_mask::DENIED)
    } else if v.event == kind::NEW_FLOW {
        (kind::NEW_FLOW, event_mask::NEW_FLOW)
    } else if v.event == kind::AUDITED {
        (kind::AUDITED, event_mask::AUDITED)
    } else {
        (0, 0)
    };
    if cfg.event_mask & bit != 0 {
        publish(ctx, pkt, v, kind);
    }
    if drop { TC_ACT_SHOT } else { TC_ACT_OK }
}

#[inline(always)]
fn publish(ctx: &TcContext, pkt: &Packet, v: &Verdict, kind: u8) {
    // A full ring buffer loses the event, never the verdict or its count.
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        // Field by field into the reserved slot: building an `Event` first would cost 56 bytes
        // of the 512-byte stack.
        let e = entry.as_mut_ptr();
        // SAFETY: `e` points to a reserved, exclusively owned `Event`-sized slot; every field is
        // written before submit.
        unsafe {
            (*e).src = copy_addr(&pkt.tuple.src);
            (*e).dst = copy_addr(&pkt.tuple.dst);
            (*e).sport = u16::from_be(pkt.tuple.sport);
            (*e).dport = u16::from_be(pkt.tuple.dport);
            (*e).protocol = pkt.tuple.protocol;
            (*e).direction = v.direction;
            (*e).kind = kind;
            (*e).reason = v.reason;
            (*e).local_identity = v.local_identity;
            (*e).peer_identity = v.peer_identity;
            (*e).policy_ref = v.policy_ref;
            (*e).ifindex = ifindex(ctx);
        }
        entry.submit(0);
    }
}
