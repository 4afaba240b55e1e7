//! Per-CPU scratch memory: the packet being decided, the config it is decided under, the verdict
//! being built and step 9's endpoint, query and decision live in `zt_scratch`, not on the stack.
//!
//! A BPF program has 512 bytes of stack for all its frames together (the main program plus each
//! BPF-to-BPF call on the deepest path), and the verifier rejects a program past that. The
//! parsed [`Packet`] is the largest value of a run and is needed from parsing to the verdict, so
//! it sits in the one slot of a per-CPU array instead, with the run's copy of `zt_config` (read
//! once per run, so every step sees the same revision) and the verdict: held in registers, their
//! fields would be spilled to the stack across helper calls. Looking up a constant index of an array
//! map is inlined by the verifier into a bounds check and an address computation, so the slot
//! costs about what a stack address does.
//!
//! One run at a time uses a CPU's slot: TC programs run with bottom halves disabled, so another
//! TC run cannot interrupt this one on the same CPU. Each run zeroes the slot first, so nothing
//! carries over from the previous packet. The map is not pinned: it holds no state between runs,
//! so every load of the object may have its own, and its shape never blocks an upgrade.

use zt_common::{config::Config, endpoint::EndpointValue};

use crate::{
    keys,
    maps::SCRATCH,
    packet::Packet,
    policy::{Decision, Query},
    verdict::Verdict,
};

/// One run's memory.
#[repr(C, align(8))]
pub struct Scratch {
    pub pkt: Packet,
    pub cfg: Config,
    pub verdict: Verdict,
    /// The local endpoint (step 6), copied: the agent may update it while the packet is decided.
    pub ep: EndpointValue,
    /// Step 9's question and answer (`Family::evaluate` takes them by pointer).
    pub query: Query,
    pub decision: Decision,
}

/// This CPU's [`Scratch`], zeroed. `None` cannot happen (index 0 of a one-entry array) but the
/// verifier needs the check.
#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, used by one program run at a time (see above),
    // suitably aligned and fully written by `zero_in_place` before it is read.
    Some(unsafe { keys::zero_in_place(p) })
}
