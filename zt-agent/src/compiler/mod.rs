//! Pure compiler: cluster state ─▶ desired datapath state.
//!
//! [`Compiler::update`] compiles the whole [`Index`] into a [`DatapathState`] and returns the
//! difference from its previous output. Identity numbers and policy refs are kept stable across
//! updates, so a change to one pod or one policy touches only the entries it affects.
//!
//! Identities (see README.md, section Semantics): a pod address gets the identity of its class —
//! (namespace, labels, the named ports policies refer to, the ipBlocks containing the address) —
//! so two addresses share an identity only when every policy predicate treats them alike. Every
//! ipBlock cidr and except prefix is in the trie; the identity of a prefix is the set of blocks its
//! longest-match region belongs to.

mod identities;
pub mod policy;
pub mod ports;
pub mod selector;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use zt_common::{
    direction,
    endpoint::{EndpointValue, flags},
    identity::{ANY, HOST},
    policy::{PolicyKey, PolicyValue, tuple},
    proto,
};

use self::{
    identities::{Classes, PodClass},
    policy::{Namespaces, Peer, Policy, Port, Rule},
};
use crate::{
    datapath::{DatapathState, StateDelta},
    index::Index,
};

/// Which pods are this agent's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Locality {
    /// Every pod with an address (tests, single-node labs).
    #[default]
    All,
    /// Pods whose `spec.nodeName` is this node.
    Node(String),
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub local: Locality,
    /// This node's addresses: the `HOST` identity.
    pub host_addrs: Vec<IpAddr>,
    /// Every endpoint in audit mode: denies are reported, not enforced.
    pub audit: bool,
}

/// Bad input that was skipped; the rest of the object is enforced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Warning {
    /// `kind namespace/name`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

#[derive(Default)]
pub struct Compiler {
    options: Options,
    state: DatapathState,
    classes: Classes,
    policy_refs: HashMap<String, u32>,
    policy_names: HashMap<u32, String>,
    warnings: Vec<Warning>,
    skipped: u64,
    /// The last output's policy entries per subject identity, sorted by key.
    entries: Entries,
    /// Per subject: the inputs its entries were compiled from, and its endpoint value.
    cache: HashMap<u32, (SubjectInputs, EndpointValue)>,
    /// The named-port holders the cache was built against.
    named: HashMap<(String, u8), Vec<(u32, u16)>>,
}

#[derive(PartialEq)]
struct SubjectInputs {
    policies: Vec<(u32, Policy)>,
    peers: Vec<Option<Vec<u32>>>,
}

type Entries = BTreeMap<u32, Vec<(PolicyKey, PolicyValue)>>;

/// Adds to `delta` what turns the sorted entry list `old` into `new`.
fn diff_sorted(
    old: &[(PolicyKey, PolicyValue)],
    new: &[(PolicyKey, PolicyValue)],
    delta: &mut BTreeMap<PolicyKey, Option<PolicyValue>>,
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some((ok, ov)), Some((nk, nv))) if ok == nk => {
                if ov != nv {
                    delta.insert(*nk, Some(*nv));
                }
                i += 1;
                j += 1;
            }
            (Some((ok, _)), Some((nk, _))) if ok < nk => {
                delta.insert(*ok, None);
                i += 1;
            }
            (Some((ok, _)), None) => {
                delta.insert(*ok, None);
                i += 1;
            }
            (_, Some((nk, nv))) => {
                delta.insert(*nk, Some(*nv));
                j += 1;
            }
            (None, None) => break,
        }
    }
}

impl Compiler {
    pub fn new(options: Options) -> Self {
        Compiler {
            options,
            ..Default::default()
        }
    }

    /// The state after the last update.
    pub fn state(&self) -> &DatapathState {
        &self.state
    }

    /// `namespace/name` of the policy behind a `PolicyValue::policy_ref`.
    pub fn policy_name(&self, policy_ref: u32) -> Option<&str> {
        self.policy_names.get(&policy_ref).map(String::as_str)
    }

    /// What the last update skipped.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Warnings that appeared, summed over every update (a warning that persists counts once).
    pub fn skipped_total(&self) -> u64 {
        self.skipped
    }

    /// Compiles `index` and returns what changed since the previous update.
    pub fn update(&mut self, index: &Index) -> StateDelta {
        let (desired, entries, reused, warnings) = self.compile(index);
        let old_entries = std::mem::take(&mut self.entries);
        // Entries of different subjects are disjoint (the subject is in the key), so only the
        // subjects whose entry list changed are diffed.
        let policy = std::mem::take(&mut self.state.policy);
        let mut delta = self.state.diff(&desired);
        self.state = desired;
        self.state.policy = policy;
        let empty = Vec::new();
        let subjects: BTreeSet<u32> = entries.keys().chain(old_entries.keys()).copied().collect();
        for subject in subjects.into_iter().filter(|s| !reused.contains(s)) {
            let old = old_entries.get(&subject).unwrap_or(&empty);
            let new = entries.get(&subject).unwrap_or(&empty);
            if old != new {
                diff_sorted(old, new, &mut delta.policy);
            }
        }
        for (key, value) in &delta.policy {
            match value {
                Some(v) => self.state.policy.insert(*key, *v),
                None => self.state.policy.remove(key),
            };
        }
        self.entries = entries;
        let old: HashSet<&Warning> = self.warnings.iter().collect();
        for w in warnings.iter().filter(|w| !old.contains(w)) {
            tracing::warn!(object = %w.object, "{}", w.message);
            self.skipped += 1;
        }
        self.warnings = warnings;
        delta
    }

    /// The desired endpoints and identities, the policy entries per subject, the warnings.
    /// Subjects whose inputs did not change reuse their previous entries, which are moved out of
    /// `self.entries` and listed in the returned set.
    fn compile(&mut self, index: &Index) -> (DatapathState, Entries, HashSet<u32>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let mut policies: Vec<(String, u32, Policy)> = Vec::with_capacity(index.policies.len());
        for ((ns, name), info) in &index.policies {
            let object = format!("networkpolicy {ns}/{name}");
            let parsed = policy::parse(&info.spec, &mut |message| {
                warnings.push(Warning {
                    object: object.clone(),
                    message,
                })
            });
            let policy_ref = self.policy_ref(ns, name);
            policies.push((ns.clone(), policy_ref, parsed));
        }

        let blocks = identities::blocks(policies.iter().map(|(_, _, p)| p));
        let port_names = identities::port_names(policies.iter().map(|(_, _, p)| p));
        let world = self
            .classes
            .build(index, &blocks, &port_names, &mut warnings);

        let host: HashSet<IpAddr> = self.options.host_addrs.iter().copied().collect();
        let mut state = DatapathState::default();
        for (net, id) in &world.prefixes {
            state.identities.insert(*net, *id);
        }
        for (addr, id) in &world.addresses {
            state.identities.insert(IpNet::from(*addr), *id);
        }
        for addr in &host {
            state.identities.insert(IpNet::from(*addr), HOST);
        }

        let local: Vec<(IpAddr, u32)> = world
            .pods
            .iter()
            .filter(|p| match &self.options.local {
                Locality::All => true,
                Locality::Node(n) => p.node_name.as_deref() == Some(n.as_str()),
            })
            .flat_map(|p| p.addresses.iter().copied())
            .filter(|(addr, _)| !host.contains(addr))
            .collect();

        let mut resolver = Resolver {
            world: &world,
            cache: HashMap::new(),
        };
        let mut subjects: BTreeMap<u32, EndpointValue> = BTreeMap::new();
        let mut subject_entries: Entries = BTreeMap::new();
        let mut reused: HashSet<u32> = HashSet::new();
        let mut cache = HashMap::new();
        if world.named != self.named {
            self.cache.clear();
            self.named = world.named.clone();
        }
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (ns, _, _)) in policies.iter().enumerate() {
            by_namespace.entry(ns.as_str()).or_default().push(i);
        }
        for (_, id) in &local {
            if subjects.contains_key(id) {
                continue;
            }
            let class = &world.classes[id];
            let mut value = EndpointValue {
                identity: *id,
                ..Default::default()
            };
            let selecting: Vec<usize> = by_namespace
                .get(class.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| {
                    policies[i]
                        .2
                        .selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&class.labels))
                })
                .collect();
            // Everything the subject's entries depend on besides its own class: the selecting
            // policies and their rules' peer sets (and, through `named_changed`, the named ports).
            let inputs = SubjectInputs {
                policies: selecting
                    .iter()
                    .map(|&i| (policies[i].1, policies[i].2.clone()))
                    .collect(),
                peers: selecting
                    .iter()
                    .flat_map(|&i| {
                        let (ns, _, p) = &policies[i];
                        let ingress = p
                            .ingress
                            .iter()
                            .flatten()
                            .enumerate()
                            .map(move |(r, rule)| (i, direction::INGRESS, r, ns, rule));
                        let egress = p
                            .egress
                            .iter()
                            .flatten()
                            .enumerate()
                            .map(move |(r, rule)| (i, direction::EGRESS, r, ns, rule));
                        ingress.chain(egress)
                    })
                    .map(|(i, dir, r, ns, rule)| resolver.peers(ns, (i, dir, r), rule))
                    .collect(),
            };
            if let Some((cached, value)) = self.cache.get(id)
                && *cached == inputs
                && let Some(entries) = self.entries.remove(id)
            {
                subject_entries.insert(*id, entries);
                subjects.insert(*id, *value);
                reused.insert(*id);
                cache.insert(*id, (inputs, *value));
                continue;
            }
            let mut entries = Vec::new();
            for &i in &selecting {
                let (ns, policy_ref, p) = &policies[i];
                for (dir, rules) in [
                    (direction::INGRESS, &p.ingress),
                    (direction::EGRESS, &p.egress),
                ] {
                    let Some(rules) = rules else { continue };
                    value.flags |= if dir == direction::INGRESS {
                        flags::INGRESS_ISOLATED
                    } else {
                        flags::EGRESS_ISOLATED
                    };
                    // An invalid podSelector isolates the namespace but grants nothing.
                    let rules = if p.selector.is_some() {
                        rules.as_slice()
                    } else {
                        &[]
                    };
                    for (r, rule) in rules.iter().enumerate() {
                        let peers = resolver.peers(ns, (i, dir, r), rule);
                        let tuples = emit(
                            &mut entries,
                            &world,
                            *id,
                            class,
                            dir,
                            *policy_ref,
                            peers.as_deref(),
                            rule,
                        );
                        if dir == direction::INGRESS {
                            value.ingress_tuples |= tuples;
                        } else {
                            value.egress_tuples |= tuples;
                        }
                    }
                }
            }
            if self.options.audit {
                value.flags |= flags::AUDIT;
            }
            // Sorted by key then ref: the first of equal keys carries the lowest ref.
            entries.sort_unstable_by_key(|(k, v)| (*k, v.policy_ref));
            entries.dedup_by_key(|(k, _)| *k);
            subject_entries.insert(*id, entries);
            subjects.insert(*id, value);
            cache.insert(*id, (inputs, value));
        }
        for (addr, id) in local {
            state.endpoints.insert(addr, subjects[&id]);
        }
        self.cache = cache;
        (state, subject_entries, reused, warnings)
    }

    fn policy_ref(&mut self, ns: &str, name: &str) -> u32 {
        let full = format!("{ns}/{name}");
        if let Some(r) = self.policy_refs.get(&full) {
            return *r;
        }
        let r = self.policy_refs.len() as u32 + 1;
        self.policy_refs.insert(full.clone(), r);
        self.policy_names.insert(r, full);
        r
    }
}

/// Peer identity sets per rule, computed once per update however many subjects share the rule.
struct Resolver<'a> {
    world: &'a identities::World,
    cache: HashMap<(usize, u8, usize), Option<Vec<u32>>>,
}

impl Resolver<'_> {
    fn peers(&mut self, ns: &str, at: (usize, u8, usize), rule: &Rule) -> Option<Vec<u32>> {
        let world = self.world;
        self.cache
            .entry(at)
            .or_insert_with(|| {
                let peers = rule.peers.as_ref()?;
                let mut ids: Vec<u32> = peers.iter().flat_map(|p| world.peer_ids(ns, p)).collect();
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            })
            .clone()
    }
}

/// Appends one rule's entries for `subject`; returns the tuple bits they use.
#[allow(clippy::too_many_arguments)]
fn emit(
    out: &mut Vec<(PolicyKey, PolicyValue)>,
    world: &identities::World,
    subject: u32,
    class: &PodClass,
    dir: u8,
    policy_ref: u32,
    peers: Option<&[u32]>,
    rule: &Rule,
) -> u64 {
    let mut bits = 0u64;
    let mut put = |peer: u32, port: u16, protocol: u8, slot: u32| {
        let key = PolicyKey {
            subject,
            peer,
            port,
            protocol,
            tuple: tuple::key_byte(dir, slot),
        };
        out.push((key, PolicyValue { policy_ref }));
        bits |= tuple::bit(peer == ANY, slot);
    };
    let all_peers = [ANY];
    let peer_list = peers.unwrap_or(&all_peers);
    let Some(ports) = &rule.ports else {
        for peer in peer_list {
            put(*peer, 0, proto::ANY, tuple::ANY_PROTOCOL);
        }
        return bits;
    };
    for port in ports {
        match port {
            Port::Protocol(p) => peer_list.iter().for_each(|peer| put(*peer, 0, *p, 0)),
            Port::Range(p, lo, hi) => {
                for (base, prefix) in ports::range_blocks(*lo, *hi) {
                    peer_list
                        .iter()
                        .for_each(|peer| put(*peer, base, *p, prefix));
                }
            }
            Port::Named(p, name) if dir == direction::INGRESS => {
                for number in class.port_numbers(name, *p) {
                    peer_list.iter().for_each(|peer| put(*peer, number, *p, 16));
                }
            }
            Port::Named(p, name) => match peers {
                None => {
                    for (peer, number) in world.named_port_holders(name, *p) {
                        put(peer, number, *p, 16);
                    }
                }
                Some(peers) => {
                    for peer in peers {
                        let Some(dest) = world.classes.get(peer) else {
                            continue;
                        };
                        for number in dest.port_numbers(name, *p) {
                            put(*peer, number, *p, 16);
                        }
                    }
                }
            },
        }
    }
    bits
}

impl identities::World {
    fn peer_ids(&self, policy_ns: &str, peer: &Peer) -> Vec<u32> {
        match peer {
            Peer::Block(block) => self.block_members.get(block).cloned().unwrap_or_default(),
            Peer::Pods { namespaces, pods } => {
                let matching: Vec<&str> = match namespaces {
                    Namespaces::Own => vec![policy_ns],
                    Namespaces::Matching(sel) => self
                        .namespace_labels
                        .iter()
                        .filter(|(_, labels)| sel.matches(labels))
                        .map(|(n, _)| n.as_str())
                        .collect(),
                };
                matching
                    .into_iter()
                    .flat_map(|ns| self.classes_by_namespace.get(ns).into_iter().flatten())
                    .filter(|id| pods.matches(&self.classes[id].labels))
                    .copied()
                    .collect()
            }
        }
    }
}
