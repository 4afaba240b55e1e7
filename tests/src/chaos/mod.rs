//! Faults a node really sees, under continuous traffic (`cargo xtask chaos`; quick versions in
//! `tests/tests/chaos.rs`, run by `cargo xtask test`):
//!
//! ```text
//!  node ─ a lab node namespace, pods a (servers) b (allowed) c (denied), the real agent
//!  traffic ─ established TCP/UDP echoes, new connections (lost?), denied attempts (leaked?)
//!  cases ─ restart (SIGKILL at random moments), iface_churn (pods come and go), churn (policy
//!          updates that must not move a verdict, memory before and after), maps_full (more
//!          policy entries than zt_policy holds: nothing opens, everything recovers)
//! ```

pub mod cases;
pub mod node;
pub mod traffic;

use std::{collections::BTreeMap, path::Path, time::Duration};

pub use cases::Figures;

/// How long and how often each case runs.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub restarts: u32,
    pub iface_rounds: u32,
    pub churn_per_minute: u32,
    pub churn_for: Duration,
    /// Remote pods and ports of the policy that overflows `zt_policy` (1,048,576 entries).
    pub full_pods: u32,
    pub full_ports: u32,
}

impl Scale {
    /// The issue's figures: 20 kills, 500 pods, 1,000 updates a minute for five minutes.
    pub const FULL: Self = Self {
        restarts: 20,
        iface_rounds: 500,
        churn_per_minute: 1000,
        churn_for: Duration::from_secs(300),
        full_pods: 1100,
        full_ports: 1000,
    };
    /// What `cargo xtask test` runs: the same faults, a minute in all.
    pub const QUICK: Self = Self {
        restarts: 5,
        iface_rounds: 15,
        churn_per_minute: 1000,
        churn_for: Duration::from_secs(15),
        full_pods: 1100,
        full_ports: 1000,
    };
}

/// Runs every case, in order; a case that cannot run is an error.
pub fn run_all(agent: &Path, scale: Scale) -> anyhow::Result<BTreeMap<&'static str, Figures>> {
    let mut out = BTreeMap::new();
    out.insert("restart", cases::restart(agent, scale.restarts, 0xc4a05)?);
    out.insert(
        "iface_churn",
        cases::iface_churn(agent, scale.iface_rounds)?,
    );
    out.insert(
        "churn",
        cases::churn(agent, scale.churn_per_minute, scale.churn_for)?,
    );
    out.insert(
        "maps_full",
        cases::maps_full(agent, scale.full_pods, scale.full_ports)?,
    );
    Ok(out)
}
