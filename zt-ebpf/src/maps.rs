//! Every map the programs use, pinned by name so the agent (and a restarted agent) shares them.
//! Names and capacities come from `zt_common::names`; a kernel test checks the object declares
//! exactly those names. Keys are the word-aligned views of `keys`, byte-identical to the contract's.

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

use crate::keys::{Addr32, CtKey, EndpointKey, FragKey};

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

#[map(name = "zt_ct")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map(name = "zt_frag")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(capacity::FRAGMENTS, 0);

#[map(name = "zt_counters")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);

#[map(name = "zt_events")]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS, 0);
