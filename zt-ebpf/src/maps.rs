//! Every map the programs use, pinned by name so the agent (and a restarted agent) shares them.
//! Names and capacities come from `zt_common::names`; a kernel test checks the object declares
//! exactly those names. The one exception is `zt_scratch`, per-run memory that is never pinned
//! (see `scratch`). Keys are the word-aligned views of `keys`, byte-identical to the contract's.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use zt_common::{
    config::Config,
    conntrack::{CtValue, FragValue},
    endpoint::EndpointValue,
    identity::IdentityValue,
    names::capacity,
    policy::{PolicyKey, PolicyValue},
    reason,
};

use crate::{
    keys::{Addr32, CtKey4, CtKey6, EndpointKey, FragKey},
    scratch::Scratch,
};

#[map(name = "zt_config")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "zt_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointValue> = HashMap::pinned(capacity::ENDPOINTS, 0);

#[map(name = "zt_ident_v4")]
pub static IDENTITY_V4: LpmTrie<u32, IdentityValue> = LpmTrie::pinned(capacity::IDENTITY_V4, 0);

#[map(name = "zt_ident_v6")]
pub static IDENTITY_V6: LpmTrie<Addr32, IdentityValue> = LpmTrie::pinned(capacity::IDENTITY_V6, 0);

#[map(name = "zt_policy")]
pub static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(capacity::POLICY, 0);

#[map(name = "zt_ident_host4")]
pub static HOST_IDENTITY_V4: HashMap<u32, IdentityValue> =
    HashMap::pinned(capacity::HOST_IDENTITY_V4, 0);

#[map(name = "zt_ident_host6")]
pub static HOST_IDENTITY_V6: HashMap<Addr32, IdentityValue> =
    HashMap::pinned(capacity::HOST_IDENTITY_V6, 0);

/// Preallocated hash maps (not LRU: see `zt_common::conntrack`), expired by the agent.
#[map(name = "zt_ct4")]
pub static CONNTRACK_V4: HashMap<CtKey4, CtValue> = HashMap::pinned(capacity::CONNTRACK_V4, 0);

#[map(name = "zt_ct6")]
pub static CONNTRACK_V6: HashMap<CtKey6, CtValue> = HashMap::pinned(capacity::CONNTRACK_V6, 0);

#[map(name = "zt_frag")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(capacity::FRAGMENTS, 0);

#[map(name = "zt_counters")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);

#[map(name = "zt_events")]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS, 0);

/// Slot `ifindex % OPEN_IFS` holds `ifindex` when the interface's pod was last seen isolated in
/// neither direction (see `open`).
#[map(name = "zt_open_ifs")]
pub static OPEN_IFS: Array<u32> = Array::pinned(capacity::OPEN_IFS, 0);

/// This CPU's run memory (see `scratch`). Not pinned: it holds nothing between runs.
#[map(name = "zt_scratch")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
