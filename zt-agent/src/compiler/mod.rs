//! Pure compiler: cluster state ─▶ desired datapath state, incrementally.
//!
//! [`Compiler::update`] brings its output in line with an [`Index`] and returns the difference
//! from its previous output. The work is proportional to what changed, not to the cluster:
//!
//! ```text
//!  Index ─▶ inputs      which namespaces, pods, policies changed (pointer compare per object)
//!          ─▶ policy     changed policies parsed again; the rest stay parsed
//!          ─▶ identities changed pods classified again; classes and CIDR regions counted
//!          ─▶ selections peer selections updated from identities that came and went
//!          ─▶ emit       the keys a rule grants a subject towards one peer
//!          ─▶ entries    grants counted per key; the keys whose value changed
//!          ─▶ addresses  identity trie and endpoints of the addresses that changed
//! ```
//!
//! The output is always the sum, over every subject (an identity with local endpoints), every
//! policy selecting it, every rule of the policy and every identity the rule's peers select, of
//! the keys [`emit::keys`] gives. An update keeps that sum true by retracting and adding terms
//! in an order where each step sees a consistent state:
//! 1. changed and deleted policies are retracted (with the identities they were granted for);
//! 2. changed pods, and pods whose class depends on a changed ipBlock or port name, are
//!    classified again — every class they need is acquired before any is released, so a number
//!    freed in this update is not reused in it;
//! 3. subjects that lost their last local endpoint are retracted;
//! 4. identities that went away leave their selections, retracting their keys;
//! 5. relabelled namespaces move their identities in or out of namespace-selector selections;
//! 6. new identities join their selections, adding keys for existing subjects;
//! 7. new subjects get every policy selecting them;
//! 8. changed and new policies are added;
//! 9. endpoint values follow from the subjects' policies and tuple slots.
//!
//! Identity numbers and policy refs are stable across updates, so a change to one pod or one
//! policy touches only the entries it affects; the result equals a full compile of the same
//! index (the differential tests check this after random edits).
//!
//! Identities (see README.md, section Semantics): a pod address gets the identity of its class —
//! (namespace, labels, the named ports policies refer to, the ipBlocks containing the address) —
//! so two addresses share an identity only when every policy predicate treats them alike. Every
//! ipBlock cidr and except prefix is in the trie; the identity of a prefix is the set of blocks its
//! longest-match region belongs to.

mod addresses;
mod emit;
mod entries;
mod identities;
mod inputs;
pub mod policy;
pub mod ports;
mod selections;
pub mod selector;
pub mod trace;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    net::IpAddr,
};

use foldhash::HashMap;
use zt_common::{
    direction,
    endpoint::{EndpointValue, flags},
    identity::WORLD,
    policy::PolicyKey,
};

use self::{
    addresses::Addresses,
    emit::Peer as EmitPeer,
    entries::Entries,
    identities::Classes,
    inputs::Snapshot,
    policy::{Block, Policy, Port, Rule},
    selections::{Event, NamespaceLabels, SelectionId, Selections, Selects, User},
};
use crate::{
    datapath::{DatapathState, StateDelta},
    index::{Index, ObjectKey},
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

/// A policy in force: parsed, with the selections its rules use and the subjects it selects.
struct Active {
    namespace: String,
    policy: Policy,
    uses: Vec<(SelectionId, User)>,
    subjects: BTreeSet<u32>,
}

impl Active {
    fn rule(&self, dir: u8, rule: usize) -> &Rule {
        let rules = if dir == direction::INGRESS {
            &self.policy.ingress
        } else {
            &self.policy.egress
        };
        &rules.as_ref().expect("a user of a rule that exists")[rule]
    }

    /// Rules that grant something, with their direction: none when the podSelector is invalid
    /// (the policy then isolates its namespace and allows nothing).
    fn rules(&self) -> impl Iterator<Item = (u8, usize, &Rule)> {
        let granting = self.policy.selector.is_some();
        [
            (direction::INGRESS, &self.policy.ingress),
            (direction::EGRESS, &self.policy.egress),
        ]
        .into_iter()
        .filter(move |_| granting)
        .flat_map(|(dir, rules)| {
            rules
                .iter()
                .flatten()
                .enumerate()
                .map(move |(r, rule)| (dir, r, rule))
        })
    }

    fn selects(&self, class: &identities::PodClass) -> bool {
        class.namespace == self.namespace
            && self
                .policy
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&class.labels))
    }
}

/// Where a pod's addresses went.
#[derive(Default)]
struct PodAddresses {
    addresses: Vec<(IpAddr, u32)>,
    local: bool,
}

/// Which kind of object a warning is about; policies sort first.
const POLICY: u8 = 0;
const POD: u8 = 1;

#[derive(Default)]
pub struct Compiler {
    options: Options,
    state: DatapathState,
    inputs: Snapshot,
    policy_refs: HashMap<ObjectKey, u32>,
    policy_names: HashMap<u32, String>,
    /// Policies in force, by ref, and their refs per namespace.
    policies: HashMap<u32, Active>,
    policies_by_namespace: HashMap<String, BTreeSet<u32>>,
    /// How many policies name each ipBlock and each port name: identities depend on these.
    blocks: BTreeMap<Block, u32>,
    port_names: BTreeMap<String, u32>,
    pods: HashMap<ObjectKey, PodAddresses>,
    classes: Classes,
    /// The CIDR region identities of the current ipBlocks, one per trie prefix.
    regions: Vec<u32>,
    selections: Selections,
    entries: Entries,
    addresses: Addresses,
    /// Per subject, the refs of the policies selecting it, and its endpoint value.
    subjects: HashMap<u32, BTreeSet<u32>>,
    values: HashMap<u32, EndpointValue>,
    object_warnings: BTreeMap<(u8, ObjectKey), Vec<Warning>>,
    warnings: Vec<Warning>,
    skipped: u64,
}

/// What an update found changed, beyond the index's own objects.
#[derive(Default)]
struct Work {
    /// ipBlocks and port names that appeared or went away (or both).
    blocks: BTreeSet<Block>,
    port_names: BTreeSet<String>,
    /// Subjects whose policies or tuple slots may have changed.
    subjects: BTreeSet<u32>,
    /// Identities that appeared and went away.
    added: Vec<u32>,
    removed: Vec<u32>,
    warnings_changed: bool,
}

impl Compiler {
    pub fn new(options: Options) -> Self {
        Compiler {
            addresses: Addresses::new(options.host_addrs.iter().copied()),
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

    /// Compiles what changed in `index` since the previous update and returns what changed in
    /// the output (see the module docs for the steps).
    pub fn update(&mut self, index: &Index) -> StateDelta {
        let changes = self.inputs.update(index);
        let mut work = Work::default();

        // 1. Policies out; the new versions parsed, their ipBlocks and port names counted.
        let mut incoming = Vec::new();
        for change in &changes.policies {
            let policy_ref = self.policy_ref(&change.key);
            if change.old.is_some() {
                self.retract_policy(policy_ref, &mut work);
            }
            let mut warnings = Vec::new();
            if let Some(info) = &change.new {
                let (ns, name) = &change.key;
                let object = format!("networkpolicy {ns}/{name}");
                let parsed = policy::parse(&info.spec, &mut |message| {
                    warnings.push(Warning {
                        object: object.clone(),
                        message,
                    })
                });
                self.count_names(&parsed, true, &mut work);
                incoming.push((policy_ref, ns.clone(), parsed));
            }
            self.set_warnings((POLICY, change.key.clone()), warnings, &mut work);
        }

        // 2. Identities.
        self.classify(&changes, &mut work);
        let (gained, lost) = self.addresses.take_subject_changes();

        // 3. Subjects out.
        for subject in lost {
            for policy_ref in self.subjects.remove(&subject).unwrap_or_default() {
                self.grant_all(subject, policy_ref, false);
                if let Some(p) = self.policies.get_mut(&policy_ref) {
                    p.subjects.remove(&subject);
                }
            }
            work.subjects.insert(subject);
        }

        // 4–6. Identities leave and join selections.
        let mut events = Vec::new();
        for &id in &work.removed {
            if let Some(class) = self.classes.get(id) {
                self.selections.identity_removed(id, class, &mut events);
            }
        }
        self.grant_events(&events);
        for &id in &work.removed {
            self.classes.unindex(id);
        }
        let labels = NamespaceLabels(self.inputs.namespaces());
        let mut relabelled = Vec::new();
        for change in &changes.namespaces {
            let ns = &change.key;
            self.selections
                .namespace_relabelled(ns, &self.classes, &labels, &mut relabelled);
        }
        for &id in &work.added {
            self.classes.index(id);
        }
        let mut events = Vec::new();
        for &id in &work.added {
            if let Some(class) = self.classes.get(id) {
                self.selections
                    .identity_added(id, class, &labels, &mut events);
            }
        }
        self.grant_events(&relabelled);
        self.grant_events(&events);

        // 7. New subjects.
        for subject in gained {
            let Some(class) = self.classes.pod(subject) else {
                continue;
            };
            let selecting: Vec<u32> = self
                .policies_by_namespace
                .get(&class.namespace)
                .into_iter()
                .flatten()
                .copied()
                .filter(|r| self.policies[r].selects(class))
                .collect();
            for policy_ref in &selecting {
                self.policies
                    .get_mut(policy_ref)
                    .expect("listed")
                    .subjects
                    .insert(subject);
                self.grant_all(subject, *policy_ref, true);
            }
            self.subjects
                .insert(subject, selecting.into_iter().collect());
            work.subjects.insert(subject);
        }

        // 8. Policies in.
        for (policy_ref, namespace, parsed) in incoming {
            self.activate(policy_ref, namespace, parsed, &mut work);
        }

        // 9. Endpoint values, then the output.
        work.subjects.extend(self.entries.take_subjects());
        let mut revalued = BTreeSet::new();
        for subject in work.subjects {
            let Some(policies) = self.subjects.get(&subject) else {
                self.values.remove(&subject);
                continue;
            };
            let value = self.value(subject, policies);
            if self.values.insert(subject, value) != Some(value) {
                revalued.insert(subject);
            }
        }
        let mut delta = StateDelta {
            policy: self.entries.take_delta(&self.state.policy),
            ..Default::default()
        };
        self.addresses
            .flush(&self.values, &revalued, &self.state, &mut delta);
        self.state.apply(&delta);
        self.classes.end_update();
        if work.warnings_changed {
            self.publish_warnings();
        }
        delta
    }

    /// Takes a policy out of force: its grants, its selections, its ipBlocks and port names.
    fn retract_policy(&mut self, policy_ref: u32, work: &mut Work) {
        let Some(active) = self.policies.get(&policy_ref) else {
            return;
        };
        for subject in active.subjects.clone() {
            self.grant_all(subject, policy_ref, false);
            if let Some(policies) = self.subjects.get_mut(&subject) {
                policies.remove(&policy_ref);
            }
            work.subjects.insert(subject);
        }
        let active = self.policies.remove(&policy_ref).expect("just seen");
        for (selection, user) in &active.uses {
            self.selections.release(*selection, *user);
        }
        if let Some(refs) = self.policies_by_namespace.get_mut(&active.namespace) {
            refs.remove(&policy_ref);
            if refs.is_empty() {
                self.policies_by_namespace.remove(&active.namespace);
            }
        }
        self.count_names(&active.policy, false, work);
    }

    /// Puts a parsed policy in force: its selections, its subjects, their grants.
    fn activate(&mut self, policy_ref: u32, namespace: String, policy: Policy, work: &mut Work) {
        let mut active = Active {
            namespace,
            policy,
            uses: Vec::new(),
            subjects: BTreeSet::new(),
        };
        let labels = NamespaceLabels(self.inputs.namespaces());
        let mut uses = Vec::new();
        for (dir, r, rule) in active.rules() {
            match &rule.peers {
                Some(peers) => {
                    for peer in peers {
                        uses.push((Selects::peer(&active.namespace, peer), dir, r, None));
                    }
                }
                None if dir == direction::EGRESS => {
                    for (i, port) in rule.ports.iter().flatten().enumerate() {
                        if let Port::Named(protocol, name) = port {
                            uses.push((
                                Selects::PortHolders(name.clone(), *protocol),
                                dir,
                                r,
                                Some(i),
                            ));
                        }
                    }
                }
                None => {}
            }
        }
        for (key, dir, rule, port) in uses {
            let user = User {
                policy: policy_ref,
                dir,
                rule,
                port,
            };
            let selection = self.selections.acquire(key, user, &self.classes, &labels);
            active.uses.push((selection, user));
        }
        active.subjects = self
            .classes
            .in_namespace(&active.namespace)
            .filter(|id| self.addresses.is_subject(*id))
            .filter(|id| self.classes.pod(*id).is_some_and(|c| active.selects(c)))
            .collect();
        self.policies_by_namespace
            .entry(active.namespace.clone())
            .or_default()
            .insert(policy_ref);
        let subjects = active.subjects.clone();
        self.policies.insert(policy_ref, active);
        for subject in subjects {
            self.subjects.entry(subject).or_default().insert(policy_ref);
            self.grant_all(subject, policy_ref, true);
            work.subjects.insert(subject);
        }
    }

    /// Counts (or uncounts) the ipBlocks and port names of a policy, noting those that appear or
    /// go away.
    fn count_names(&mut self, policy: &Policy, add: bool, work: &mut Work) {
        let rules = policy.ingress.iter().chain(policy.egress.iter()).flatten();
        for rule in rules {
            for peer in rule.peers.iter().flatten() {
                if let policy::Peer::Block(b) = peer
                    && count(&mut self.blocks, b, add)
                {
                    work.blocks.insert(b.clone());
                }
            }
            for port in rule.ports.iter().flatten() {
                if let Port::Named(_, name) = port
                    && count(&mut self.port_names, name, add)
                {
                    work.port_names.insert(name.clone());
                }
            }
        }
    }

    /// Classifies the addresses of changed pods, and of pods whose classes depend on an ipBlock
    /// or port name that appeared or went away; recomputes the CIDR regions when ipBlocks did.
    fn classify(&mut self, changes: &inputs::Changes, work: &mut Work) {
        let mut pods: BTreeSet<ObjectKey> = changes.pods.iter().map(|c| c.key.clone()).collect();
        if !work.blocks.is_empty() || !work.port_names.is_empty() {
            for (key, info) in self.inputs.pods() {
                let named = || {
                    info.named_ports
                        .iter()
                        .any(|p| work.port_names.contains(&p.name))
                };
                let blocked = || {
                    info.ips
                        .iter()
                        .any(|ip| work.blocks.iter().any(|b| b.net.contains(ip)))
                };
                if named() || blocked() {
                    pods.insert(key.clone());
                }
            }
        }

        // Acquire every class first, then release the old ones.
        let mut placed = Vec::with_capacity(pods.len());
        for key in pods {
            let mut now = PodAddresses::default();
            let mut warnings = Vec::new();
            if let Some(info) = self.inputs.pods().get(&key)
                && !info.host_network
            {
                let (ns, name) = &key;
                let (classes, w) = identities::classify(
                    ns,
                    info,
                    &self.port_names,
                    &self.blocks,
                    &format!("pod {ns}/{name}"),
                );
                warnings = w;
                now.local = match &self.options.local {
                    Locality::All => true,
                    Locality::Node(n) => info.node_name.as_deref() == Some(n.as_str()),
                };
                for (addr, class) in classes {
                    let (id, new) = self.classes.pods.acquire(&class);
                    if new {
                        work.added.push(id);
                    }
                    now.addresses.push((addr, id));
                }
            }
            self.set_warnings((POD, key.clone()), warnings, work);
            placed.push((key, now));
        }
        if !work.blocks.is_empty() {
            self.place_regions(work);
        }
        for (key, now) in placed {
            let before = self.pods.remove(&key).unwrap_or_default();
            for (addr, id) in &before.addresses {
                self.addresses.unclaim(*addr, &key);
                if self.classes.pods.release(*id) {
                    work.removed.push(*id);
                }
            }
            for (addr, id) in &now.addresses {
                self.addresses.claim(*addr, &key, *id, now.local);
            }
            if !now.addresses.is_empty() {
                self.pods.insert(key, now);
            }
        }
    }

    /// Numbers the CIDR regions of the current ipBlocks and puts their prefixes in the trie.
    fn place_regions(&mut self, work: &mut Work) {
        let mut prefixes = BTreeMap::new();
        let mut ids = Vec::new();
        for (prefix, region) in identities::regions(self.blocks.keys()) {
            if region.is_empty() {
                prefixes.insert(prefix, WORLD);
                continue;
            }
            let (id, new) = self.classes.cidrs.acquire(&region);
            if new {
                work.added.push(id);
            }
            ids.push(id);
            prefixes.insert(prefix, id);
        }
        for id in std::mem::replace(&mut self.regions, ids) {
            if self.classes.cidrs.release(id) {
                work.removed.push(id);
            }
        }
        self.addresses.set_prefixes(prefixes);
    }

    /// Adds (or retracts) everything policy `policy_ref` grants `subject`.
    fn grant_all(&mut self, subject: u32, policy_ref: u32, add: bool) {
        let (Some(active), Some(class)) =
            (self.policies.get(&policy_ref), self.classes.pod(subject))
        else {
            return;
        };
        let mut keys = Vec::new();
        for (dir, _, rule) in active.rules().filter(|(_, _, r)| r.peers.is_none()) {
            emit::keys(subject, class, dir, rule, None, EmitPeer::Any, &mut keys);
        }
        for (selection, user) in &active.uses {
            let rule = active.rule(user.dir, user.rule);
            for &peer in self.selections.ids(*selection) {
                let Some(peer_class) = self.classes.get(peer) else {
                    continue;
                };
                let peer = EmitPeer::Identity(peer, peer_class);
                emit::keys(subject, class, user.dir, rule, user.port, peer, &mut keys);
            }
        }
        grant(&mut self.entries, &keys, policy_ref, add);
    }

    /// Adds (or retracts) what selections gaining (or losing) identities means for the subjects
    /// of the rules that use them.
    fn grant_events(&mut self, events: &[Event]) {
        for &(selection, peer, add) in events {
            let Some(peer_class) = self.classes.get(peer) else {
                continue;
            };
            for user in self.selections.users(selection).to_vec() {
                let Some(active) = self.policies.get(&user.policy) else {
                    continue;
                };
                let rule = active.rule(user.dir, user.rule);
                let mut keys = Vec::new();
                for &subject in &active.subjects {
                    let Some(class) = self.classes.pod(subject) else {
                        continue;
                    };
                    let peer = EmitPeer::Identity(peer, peer_class);
                    emit::keys(subject, class, user.dir, rule, user.port, peer, &mut keys);
                }
                grant(&mut self.entries, &keys, user.policy, add);
            }
        }
    }

    /// A subject's endpoint value: isolated in a direction when a selecting policy covers it,
    /// with the tuple slots its keys use.
    fn value(&self, subject: u32, policies: &BTreeSet<u32>) -> EndpointValue {
        let mut value = EndpointValue {
            identity: subject,
            ..Default::default()
        };
        for p in policies.iter().filter_map(|r| self.policies.get(r)) {
            if p.policy.ingress.is_some() {
                value.flags |= flags::INGRESS_ISOLATED;
            }
            if p.policy.egress.is_some() {
                value.flags |= flags::EGRESS_ISOLATED;
            }
        }
        if self.options.audit {
            value.flags |= flags::AUDIT;
        }
        (value.ingress_tuples, value.egress_tuples) = self.entries.tuples(subject);
        value
    }

    fn set_warnings(&mut self, object: (u8, ObjectKey), warnings: Vec<Warning>, work: &mut Work) {
        let before = if warnings.is_empty() {
            self.object_warnings.remove(&object)
        } else {
            self.object_warnings.insert(object, warnings.clone())
        };
        if before.unwrap_or_default() != warnings {
            work.warnings_changed = true;
        }
    }

    /// Lists the warnings of every object; logs and counts those that are new.
    fn publish_warnings(&mut self) {
        let warnings: Vec<Warning> = self.object_warnings.values().flatten().cloned().collect();
        let old: HashSet<&Warning> = self.warnings.iter().collect();
        for w in warnings.iter().filter(|w| !old.contains(w)) {
            tracing::warn!(object = %w.object, "{}", w.message);
            self.skipped += 1;
        }
        self.warnings = warnings;
    }

    fn policy_ref(&mut self, key: &ObjectKey) -> u32 {
        if let Some(r) = self.policy_refs.get(key) {
            return *r;
        }
        let r = self.policy_refs.len() as u32 + 1;
        self.policy_refs.insert(key.clone(), r);
        self.policy_names.insert(r, format!("{}/{}", key.0, key.1));
        r
    }
}

fn grant(entries: &mut Entries, keys: &[PolicyKey], policy_ref: u32, add: bool) {
    for key in keys {
        if add {
            entries.add(*key, policy_ref);
        } else {
            entries.remove(*key, policy_ref);
        }
    }
}

/// Counts one use more (or less) of `key`; `true` when it appeared or went away.
fn count<K: Ord + Clone>(map: &mut BTreeMap<K, u32>, key: &K, add: bool) -> bool {
    let n = map.get(key).copied().unwrap_or(0);
    let next = if add { n + 1 } else { n.saturating_sub(1) };
    if next == 0 {
        map.remove(key);
    } else {
        map.insert(key.clone(), next);
    }
    (n == 0) != (next == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_reports_appearance_and_disappearance() {
        let mut m = BTreeMap::new();
        let k = "http".to_string();
        assert!(count(&mut m, &k, true));
        assert!(!count(&mut m, &k, true));
        assert!(!count(&mut m, &k, false));
        assert!(count(&mut m, &k, false));
        assert!(m.is_empty());
    }
}
