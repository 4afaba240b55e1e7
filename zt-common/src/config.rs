//! The datapath's global knobs: one entry of an array map, written by the agent.

use crate::{assert_size, user_pod};

/// `zt_config[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bumped by the agent whenever a change may revoke access. A conntrack entry admitted under an
    /// older revision is re-checked against policy before it is trusted again.
    pub policy_revision: u32,
    /// Which verdicts publish an event: a set of [`event_mask`] bits.
    pub event_mask: u32,
    /// A set of [`flags`] bits.
    pub flags: u32,
    /// The conntrack clock: seconds the agent has been running, summed over its restarts (it
    /// stands still while no agent runs). The datapath stamps it into every conntrack entry a
    /// packet uses (`CtValue::seen`); the agent expires entries idle for longer than their
    /// timeout on this clock (see [`crate::conntrack::expired`]).
    pub clock: u32,
}
assert_size!(Config, 16);
user_pod!(Config);

pub mod event_mask {
    pub const DENIED: u32 = 1 << 0;
    pub const NEW_FLOW: u32 = 1 << 1;
    pub const AUDITED: u32 = 1 << 2;
    pub const ALL: u32 = DENIED | NEW_FLOW | AUDITED;
}

pub mod flags {
    /// A packet on an attached interface whose local address is no known endpoint is dropped
    /// (`reason::DROP_UNKNOWN_ENDPOINT`) instead of passed. The safe default.
    pub const FAIL_CLOSED: u32 = 1 << 0;
}
