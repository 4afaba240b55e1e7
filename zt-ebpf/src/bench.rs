//! Benchmark support, never attached by the agent: a new flow on every run of
//! BPF_PROG_TEST_RUN's repeat mode.
//!
//! Repeat mode runs one packet many times on the same buffer. `zt_bench_flow` first advances the
//! packet's TCP/UDP source port by one in place, so each run is a flow the previous runs did not
//! have: `cargo xtask bench datapath` measures real conntrack inserts on warm program caches (it
//! removes the flows a call inserted before the next call, so the map's fill is held).

use aya_ebpf::programs::TcContext;

use crate::packet::ptr_at;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;

/// Adds one to the source port of an IPv4 (any IHL) or IPv6 (no extension headers) TCP/UDP
/// packet. Anything else is left as it is.
#[inline(always)]
pub fn next_source_port(ctx: &TcContext) {
    let Some(ethertype) = ptr_at::<[u8; 2]>(ctx, 12) else {
        return;
    };
    // SAFETY: bounds-checked packet pointers (see `ptr_at`).
    let off = match u16::from_be_bytes(unsafe { *ethertype }) {
        ETH_P_IP => match ptr_at::<u8>(ctx, ETH_HLEN) {
            Some(v) => ETH_HLEN + ((unsafe { *v } & 0x0f) as usize) * 4,
            None => return,
        },
        ETH_P_IPV6 => ETH_HLEN + IPV6_HLEN,
        _ => return,
    };
    if off > ETH_HLEN + 60 {
        return;
    }
    if let Some(p) = ptr_at::<[u8; 2]>(ctx, off) {
        let p = p as *mut [u8; 2];
        // SAFETY: as above; a TC program may write its packet's linear data.
        unsafe { *p = u16::from_be_bytes(*p).wrapping_add(1).to_be_bytes() };
    }
}
