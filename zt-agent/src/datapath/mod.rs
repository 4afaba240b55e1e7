//! The datapath as the agent sees it: the kernel object, the desired contents of its maps, and
//! the ordered writes that move the maps from one state to another without a gap.

pub mod model;
pub mod plan;
pub mod state;

pub use plan::{MapWrite, Op, plan};
pub use state::{DatapathState, StateDelta};

/// The kernel object built from `zt-ebpf`, embedded at compile time (see `build.rs`).
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zt"))
}
