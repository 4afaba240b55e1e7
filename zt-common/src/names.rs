//! Names of the kernel objects, as the ELF object declares them and as they are pinned.
//!
//! Kernel object names are limited to 15 bytes (`BPF_OBJ_NAME_LEN`), hence the short forms.

/// Where the agent pins maps and links so enforcement survives its restarts.
pub const PIN_ROOT: &str = "/sys/fs/bpf/zt";

/// TC program on the host side of a pod's interface, ingress hook: sees what the pod *sends*
/// (the pod's egress).
pub const PROG_FROM_POD: &str = "zt_from_pod";
/// TC program on the host side of a pod's interface, egress hook: sees what the pod *receives*
/// (the pod's ingress).
pub const PROG_TO_POD: &str = "zt_to_pod";
/// A classifier that only parses and passes: the floor for `cargo xtask bench datapath`.
pub const PROG_BASELINE: &str = "zt_baseline";
/// `zt_to_pod` with the packet's source port advanced by one first, so every run of
/// BPF_PROG_TEST_RUN's repeat mode is a new flow: benchmarks only, never attached.
pub const PROG_BENCH_FLOW: &str = "zt_bench_flow";

pub const MAP_CONFIG: &str = "zt_config";
pub const MAP_ENDPOINTS: &str = "zt_endpoints";
pub const MAP_IDENTITY_V4: &str = "zt_ident_v4";
pub const MAP_IDENTITY_V6: &str = "zt_ident_v6";
pub const MAP_HOST_IDENTITY_V4: &str = "zt_ident_host4";
pub const MAP_HOST_IDENTITY_V6: &str = "zt_ident_host6";
pub const MAP_POLICY: &str = "zt_policy";
pub const MAP_CONNTRACK_V4: &str = "zt_ct4";
pub const MAP_CONNTRACK_V6: &str = "zt_ct6";
pub const MAP_FRAGMENTS: &str = "zt_frag";
pub const MAP_COUNTERS: &str = "zt_counters";
pub const MAP_EVENTS: &str = "zt_events";
pub const MAP_OPEN_IFS: &str = "zt_open_ifs";
/// Per-CPU scratch memory of one program run (the packet being decided). The one map that is not
/// pinned: it holds nothing between runs, so each load of the object has its own.
pub const MAP_SCRATCH: &str = "zt_scratch";

/// Every map the agent pins, so a restarted agent can adopt them.
pub const PINNED_MAPS: [&str; 13] = [
    MAP_CONFIG,
    MAP_ENDPOINTS,
    MAP_IDENTITY_V4,
    MAP_IDENTITY_V6,
    MAP_HOST_IDENTITY_V4,
    MAP_HOST_IDENTITY_V6,
    MAP_POLICY,
    MAP_CONNTRACK_V4,
    MAP_CONNTRACK_V6,
    MAP_FRAGMENTS,
    MAP_COUNTERS,
    MAP_EVENTS,
    MAP_OPEN_IFS,
];

/// Map capacities. The agent refuses to compile a state that does not fit (it never truncates).
pub mod capacity {
    pub const ENDPOINTS: u32 = 4096;
    /// Prefix tries: ipBlock CIDRs and their `except` holes (not preallocated: capacity costs
    /// nothing until used; it stays as it was when pods lived here too, so pinned tries are reused).
    pub const IDENTITY_V4: u32 = 262_144;
    pub const IDENTITY_V6: u32 = 262_144;
    /// Single addresses (pods, this node).
    pub const HOST_IDENTITY_V4: u32 = 262_144;
    pub const HOST_IDENTITY_V6: u32 = 262_144;
    pub const POLICY: u32 = 1_048_576;
    pub const CONNTRACK_V4: u32 = 262_144;
    pub const CONNTRACK_V6: u32 = 131_072;
    pub const FRAGMENTS: u32 = 8192;
    /// Ring buffer bytes (a power of two, a multiple of the page size).
    pub const EVENTS: u32 = 1 << 20;
    /// Slots of the open-interface hint (`ifindex % OPEN_IFS`): more than a node has pods.
    pub const OPEN_IFS: u32 = 4096;
}
