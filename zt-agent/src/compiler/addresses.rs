//! Who holds each address, and the identity and endpoint entries that follow from it.
//!
//! The identity trie is layered, strongest first: this node's own addresses are [`HOST`]; a pod
//! address has its class's identity; an ipBlock prefix has its region's. A local pod's address
//! (not the host's) is an endpoint, and its class a *subject* that policy entries are keyed by.
//! Two pods claiming one address (a stale pod, a bad status) is not an error: the last in key
//! order wins, for the trie and for the endpoint alike.
//!
//! Changes are recorded as they are made and written out by [`Addresses::flush`], which looks
//! only at the addresses and subjects touched since the last flush.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use foldhash::HashMap;
use ipnet::IpNet;
use zt_common::{endpoint::EndpointValue, identity::HOST};

use crate::{
    datapath::{DatapathState, StateDelta},
    index::ObjectKey,
};

struct Claim {
    pod: ObjectKey,
    identity: u32,
    local: bool,
}

#[derive(Default)]
pub struct Addresses {
    host: BTreeSet<IpAddr>,
    prefixes: BTreeMap<IpNet, u32>,
    /// Per address, its claims sorted by pod.
    claims: HashMap<IpAddr, Vec<Claim>>,
    /// Per identity, its local claims on addresses other than the host's.
    local: HashMap<u32, u32>,
    /// The local claim counts before this update, of identities whose count changed.
    local_before: HashMap<u32, u32>,
    /// Per endpoint address, the subject it is an endpoint of; and the reverse.
    endpoint: HashMap<IpAddr, u32>,
    endpoints_of: HashMap<u32, BTreeSet<IpAddr>>,
    touched_nets: BTreeSet<IpNet>,
    touched_addrs: BTreeSet<IpAddr>,
}

impl Addresses {
    pub fn new(host: impl IntoIterator<Item = IpAddr>) -> Self {
        let host: BTreeSet<IpAddr> = host.into_iter().collect();
        Addresses {
            touched_nets: host.iter().map(|a| IpNet::from(*a)).collect(),
            host,
            ..Default::default()
        }
    }

    /// `pod` holds `addr` as an address of identity `identity`.
    pub fn claim(&mut self, addr: IpAddr, pod: &ObjectKey, identity: u32, local: bool) {
        let claims = self.claims.entry(addr).or_default();
        let at = claims.partition_point(|c| c.pod < *pod);
        debug_assert!(claims.get(at).is_none_or(|c| c.pod != *pod));
        claims.insert(
            at,
            Claim {
                pod: pod.clone(),
                identity,
                local,
            },
        );
        if local && !self.host.contains(&addr) {
            self.count_local(identity, true);
        }
        self.touch(addr);
    }

    /// `pod` no longer holds `addr`.
    pub fn unclaim(&mut self, addr: IpAddr, pod: &ObjectKey) {
        let Some(claims) = self.claims.get_mut(&addr) else {
            return;
        };
        let Some(at) = claims.iter().position(|c| c.pod == *pod) else {
            return;
        };
        let claim = claims.remove(at);
        if claims.is_empty() {
            self.claims.remove(&addr);
        }
        if claim.local && !self.host.contains(&addr) {
            self.count_local(claim.identity, false);
        }
        self.touch(addr);
    }

    /// Replaces the ipBlock prefixes and their region identities.
    pub fn set_prefixes(&mut self, prefixes: BTreeMap<IpNet, u32>) {
        for (net, id) in &self.prefixes {
            if prefixes.get(net) != Some(id) {
                self.touched_nets.insert(*net);
            }
        }
        for net in prefixes.keys() {
            if !self.prefixes.contains_key(net) {
                self.touched_nets.insert(*net);
            }
        }
        self.prefixes = prefixes;
    }

    /// Whether an identity has local endpoints, so policy entries are keyed by it.
    pub fn is_subject(&self, identity: u32) -> bool {
        self.local.contains_key(&identity)
    }

    /// The identities that became subjects since the last call, and those that stopped being.
    pub fn take_subject_changes(&mut self) -> (Vec<u32>, Vec<u32>) {
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        for (id, before) in self.local_before.drain() {
            match (before > 0, self.local.contains_key(&id)) {
                (false, true) => gained.push(id),
                (true, false) => lost.push(id),
                _ => {}
            }
        }
        gained.sort_unstable();
        lost.sort_unstable();
        (gained, lost)
    }

    /// Adds to `delta` the identity and endpoint entries that differ from `state`: those of the
    /// addresses touched since the last flush, and the endpoints of the subjects in `revalued`,
    /// whose value changed. `values` holds every subject's endpoint value.
    pub fn flush(
        &mut self,
        values: &HashMap<u32, EndpointValue>,
        revalued: &BTreeSet<u32>,
        state: &DatapathState,
        delta: &mut StateDelta,
    ) {
        for net in std::mem::take(&mut self.touched_nets) {
            let now = self.identity(&net);
            if state.identities.get(&net).copied() != now {
                delta.identities.insert(net, now);
            }
        }
        let mut addrs = std::mem::take(&mut self.touched_addrs);
        for subject in revalued {
            addrs.extend(self.endpoints_of.get(subject).into_iter().flatten());
        }
        for addr in addrs {
            let now = self.winner(addr);
            let before = match now {
                Some(s) => self.endpoint.insert(addr, s),
                None => self.endpoint.remove(&addr),
            };
            if before != now {
                if let Some(s) = before
                    && let Some(set) = self.endpoints_of.get_mut(&s)
                {
                    set.remove(&addr);
                    if set.is_empty() {
                        self.endpoints_of.remove(&s);
                    }
                }
                if let Some(s) = now {
                    self.endpoints_of.entry(s).or_default().insert(addr);
                }
            }
            let value = now.and_then(|s| values.get(&s).copied());
            if state.endpoints.get(&addr).copied() != value {
                delta.endpoints.insert(addr, value);
            }
        }
    }

    fn identity(&self, net: &IpNet) -> Option<u32> {
        let addr = (net.prefix_len() == net.max_prefix_len()).then(|| net.addr());
        if let Some(addr) = addr {
            if self.host.contains(&addr) {
                return Some(HOST);
            }
            if let Some(claim) = self.claims.get(&addr).and_then(|c| c.last()) {
                return Some(claim.identity);
            }
        }
        self.prefixes.get(net).copied()
    }

    /// The subject an address is the endpoint of.
    fn winner(&self, addr: IpAddr) -> Option<u32> {
        if self.host.contains(&addr) {
            return None;
        }
        let claims = self.claims.get(&addr)?;
        claims.iter().rev().find(|c| c.local).map(|c| c.identity)
    }

    fn touch(&mut self, addr: IpAddr) {
        self.touched_nets.insert(IpNet::from(addr));
        self.touched_addrs.insert(addr);
    }

    fn count_local(&mut self, identity: u32, up: bool) {
        let n = self.local.get(&identity).copied().unwrap_or(0);
        self.local_before.entry(identity).or_insert(n);
        match (up, n) {
            (true, _) => {
                self.local.insert(identity, n + 1);
            }
            (false, 0 | 1) => {
                self.local.remove(&identity);
            }
            (false, _) => {
                self.local.insert(identity, n - 1);
            }
        }
    }
}
