//! zt's kernel programs: a TC classifier pair for the host side of each pod's interface, and a
//! parse-only baseline for benchmarks.
//!
//! One concern per module, composed by `decide` in the order of the decision procedure written
//! in `zt_common::policy`: `parse` (headers) → `frag` → `open` (pods no policy selects) →
//! `conntrack` (fast path) → endpoint → `conntrack` (stale and related entries) → `policy`
//! (`identity` inside) → `verdict` (the single exit: counter, event, TC action).
#![no_std]
#![no_main]

mod bench;
mod conntrack;
mod decide;
mod family;
mod frag;
mod identity;
mod keys;
mod maps;
mod open;
mod packet;
mod parse;
mod policy;
mod scratch;
mod verdict;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use zt_common::{direction, reason};

use crate::maps::CONFIG;

/// Attached at TC *ingress* of the pod's host-side interface: sees what the pod sends, so it
/// enforces the pod's egress.
#[classifier]
pub fn zt_from_pod(ctx: TcContext) -> i32 {
    try_classify(&ctx, direction::EGRESS)
}

/// Attached at TC *egress* of the pod's host-side interface: sees what the pod receives, so it
/// enforces the pod's ingress.
#[classifier]
pub fn zt_to_pod(ctx: TcContext) -> i32 {
    try_classify(&ctx, direction::INGRESS)
}

/// Parses like the real programs and passes everything: the floor of `cargo xtask bench
/// datapath`. Never attached by the agent.
#[classifier]
pub fn zt_baseline(ctx: TcContext) -> i32 {
    // The packet in its scratch slot, as the real programs have it.
    if let Some(s) = scratch::get() {
        let pkt = &mut s.pkt;
        let _ = parse::parse(&ctx, pkt);
        // Keep the parse result observable so the compiler cannot drop the parsing.
        // SAFETY: a volatile read of this CPU's initialised scratch slot.
        let _ = unsafe { core::ptr::read_volatile(&pkt.tuple.dport) };
    }
    TC_ACT_OK
}

/// `zt_to_pod` on a packet whose source port is first advanced by one: in BPF_PROG_TEST_RUN's
/// repeat mode every run is a new flow (see `bench`). For `cargo xtask bench datapath`; never
/// attached by the agent.
#[classifier]
pub fn zt_bench_flow(ctx: TcContext) -> i32 {
    bench::next_source_port(&ctx);
    try_classify(&ctx, direction::INGRESS)
}

#[inline(always)]
fn try_classify(ctx: &TcContext, dir: u8) -> i32 {
    let Some(s) = scratch::get() else {
        return verdict::fail_closed(reason::DROP_INTERNAL);
    };
    if let Some(c) = CONFIG.get_ptr(0) {
        // SAFETY: a map value pointer returned by the kernel, and this run's scratch slot.
        unsafe { keys::copy_words(&mut s.cfg, c) };
    }
    decide::decide(ctx, dir, s);
    verdict::finish(ctx, &s.cfg, &s.pkt, &s.verdict)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
