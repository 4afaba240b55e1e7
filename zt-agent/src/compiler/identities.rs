//! Identity allocation: pod address classes and CIDR regions, each numbered while it is in use.
//!
//! A pod address's identity is its [`PodClass`]; a trie prefix from an ipBlock gets the identity
//! of its *region*, the set of blocks its longest-match addresses belong to. Both are counted:
//! an identity lives while some address or prefix has it. Numbers are stable while their class
//! exists and are never reused in the update that freed them (allocation is monotonic until the
//! range is exhausted, and an update acquires every class it needs before it releases any), so an
//! identity never changes meaning while entries for its old meaning may still be in the maps.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    hash::Hash,
    net::IpAddr,
};

use foldhash::HashMap;
use ipnet::IpNet;
use zt_common::identity::{FIRST_CIDR, FIRST_POD};

use super::{Warning, policy::Block, ports::protocol_number};
use crate::index::{Labels, PodInfo};

/// What makes a pod address distinct for policy: two addresses with equal classes are treated
/// alike by every predicate, so they may share an identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodClass {
    pub namespace: String,
    pub labels: Labels,
    /// (name, protocol, port) of the named ports some policy refers to.
    pub ports: Vec<(String, u8, u16)>,
    /// The ipBlocks containing the address.
    pub blocks: Vec<Block>,
}

impl PodClass {
    pub fn port_numbers<'a>(
        &'a self,
        name: &'a str,
        protocol: u8,
    ) -> impl Iterator<Item = u16> + 'a {
        self.ports
            .iter()
            .filter(move |(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

/// What an identity stands for.
#[derive(Clone, Copy, Debug)]
pub enum Class<'a> {
    Pod(&'a PodClass),
    /// A CIDR region: the blocks its addresses belong to.
    Cidr(&'a [Block]),
}

/// The classes of a pod's addresses, and what was wrong with the pod.
///
/// Only the named ports in `port_names` (those some policy refers to) are part of a class, and
/// only they are validated: a bad port nobody refers to is nobody's business.
pub fn classify(
    namespace: &str,
    info: &PodInfo,
    port_names: &BTreeMap<String, u32>,
    blocks: &BTreeMap<Block, u32>,
    object: &str,
) -> (Vec<(IpAddr, PodClass)>, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut warn = |message: String| {
        warnings.push(Warning {
            object: object.to_string(),
            message,
        })
    };
    for bad in &info.bad_ips {
        warn(format!("invalid pod IP {bad:?} skipped"));
    }
    let mut ports = Vec::new();
    for p in info
        .named_ports
        .iter()
        .filter(|p| port_names.contains_key(&p.name))
    {
        let protocol = protocol_number(&p.protocol);
        let number = u16::try_from(p.port).ok().filter(|n| *n != 0);
        match (protocol, number) {
            (Some(protocol), Some(number)) => ports.push((p.name.clone(), protocol, number)),
            _ => warn(format!(
                "container port {:?} ({} {}) invalid, skipped",
                p.name, p.protocol, p.port
            )),
        }
    }
    let classes = info
        .ips
        .iter()
        .map(|ip| {
            let class = PodClass {
                namespace: namespace.to_string(),
                labels: info.labels.clone(),
                ports: ports.clone(),
                blocks: blocks.keys().filter(|b| b.contains(ip)).cloned().collect(),
            };
            (*ip, class)
        })
        .collect();
    (classes, warnings)
}

/// Every trie prefix of `blocks` (each cidr and except) with its region: the blocks containing
/// the addresses the prefix is the longest match for. Longer prefixes inside it are their own
/// regions, so containment of the prefix decides. An empty region is the world.
pub fn regions<'a>(blocks: impl Iterator<Item = &'a Block> + Clone) -> BTreeMap<IpNet, Vec<Block>> {
    let prefixes: BTreeSet<IpNet> = blocks
        .clone()
        .flat_map(|b| std::iter::once(b.net).chain(b.except.iter().copied()))
        .collect();
    prefixes
        .into_iter()
        .map(|prefix| {
            let region = blocks
                .clone()
                .filter(|b| {
                    b.net.contains(&prefix) && !b.except.iter().any(|e| e.contains(&prefix))
                })
                .cloned()
                .collect();
            (prefix, region)
        })
        .collect()
}

/// Identities of one kind, counted by their users.
pub struct Table<K> {
    ids: HashMap<K, u32>,
    live: HashMap<u32, (K, u32)>,
    /// Released in this update: still resolvable (entries for them are being retracted) and not
    /// reusable until [`Table::end_update`].
    freed: HashMap<u32, K>,
    next: Option<u32>,
    first: u32,
    limit: u32,
}

impl<K: Clone + Eq + Hash> Table<K> {
    fn new(first: u32, limit: u32) -> Self {
        Table {
            ids: HashMap::default(),
            live: HashMap::default(),
            freed: HashMap::default(),
            next: None,
            first,
            limit,
        }
    }

    /// One more user of `class`; `true` when it is new (it was not live).
    pub fn acquire(&mut self, class: &K) -> (u32, bool) {
        if let Some(id) = self.ids.get(class) {
            self.live.get_mut(id).expect("ids and live agree").1 += 1;
            return (*id, false);
        }
        let id = self.alloc();
        self.ids.insert(class.clone(), id);
        self.live.insert(id, (class.clone(), 1));
        (id, true)
    }

    /// One user less of `id`; `true` when that was the last one.
    pub fn release(&mut self, id: u32) -> bool {
        let Some((_, users)) = self.live.get_mut(&id) else {
            debug_assert!(false, "release of identity {id}, which is not live");
            return false;
        };
        *users -= 1;
        if *users > 0 {
            return false;
        }
        let (class, _) = self.live.remove(&id).expect("just seen");
        self.ids.remove(&class);
        self.freed.insert(id, class);
        true
    }

    /// A live class, or one freed in this update.
    pub fn get(&self, id: u32) -> Option<&K> {
        self.live
            .get(&id)
            .map(|(k, _)| k)
            .or_else(|| self.freed.get(&id))
    }

    /// Forgets the classes freed in this update.
    pub fn end_update(&mut self) {
        self.freed.clear();
    }

    /// The next number in `first..limit`; once the range is spent, the lowest one not in use.
    /// The pod range holds 2^24 identities, more than distinct addresses a cluster can have, so
    /// the search always finds one; should it not, the last number is shared (never a panic).
    fn alloc(&mut self) -> u32 {
        let n = self.next.unwrap_or(self.first);
        if n < self.limit {
            self.next = Some(n + 1);
            return n;
        }
        let used: HashSet<u32> = self.live.keys().chain(self.freed.keys()).copied().collect();
        (self.first..self.limit)
            .find(|id| !used.contains(id))
            .unwrap_or(self.limit - 1)
    }
}

/// Every identity in use: pod classes (with an index by namespace) and CIDR regions.
pub struct Classes {
    pub pods: Table<PodClass>,
    pub cidrs: Table<Vec<Block>>,
    /// Live pod class identities per namespace.
    by_namespace: HashMap<String, BTreeSet<u32>>,
}

impl Default for Classes {
    fn default() -> Self {
        Classes {
            pods: Table::new(FIRST_POD, FIRST_CIDR),
            cidrs: Table::new(FIRST_CIDR, u32::MAX),
            by_namespace: HashMap::default(),
        }
    }
}

impl Classes {
    pub fn get(&self, id: u32) -> Option<Class<'_>> {
        if id >= FIRST_CIDR {
            self.cidrs.get(id).map(|b| Class::Cidr(b))
        } else {
            self.pods.get(id).map(Class::Pod)
        }
    }

    /// A pod class by identity; `None` for anything else.
    pub fn pod(&self, id: u32) -> Option<&PodClass> {
        match self.get(id) {
            Some(Class::Pod(c)) => Some(c),
            _ => None,
        }
    }

    /// Live pod classes of a namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = u32> + '_ {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Namespaces with live pod classes.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_namespace.keys().map(String::as_str)
    }

    /// Every live pod class and CIDR region.
    pub fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.pods.live.keys().chain(self.cidrs.live.keys()).copied()
    }

    /// Files a new pod class under its namespace.
    pub fn index(&mut self, id: u32) {
        if let Some(class) = self.pods.get(id) {
            let ns = class.namespace.clone();
            self.by_namespace.entry(ns).or_default().insert(id);
        }
    }

    /// Takes a freed pod class out of the namespace index.
    pub fn unindex(&mut self, id: u32) {
        let Some(class) = self.pods.get(id) else {
            return;
        };
        if let Some(ids) = self.by_namespace.get_mut(&class.namespace) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_namespace.remove(&class.namespace);
            }
        }
    }

    pub fn end_update(&mut self) {
        self.pods.end_update();
        self.cidrs.end_update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_while_used_and_not_reused_after() {
        let mut t: Table<&str> = Table::new(10, 13);
        assert_eq!(t.acquire(&"a"), (10, true));
        assert_eq!(t.acquire(&"a"), (10, false));
        assert_eq!(t.acquire(&"b"), (11, true));
        assert!(!t.release(10));
        assert!(t.release(10));
        // Freed in this update: still resolvable, and a new class gets a new number.
        assert_eq!(t.get(10), Some(&"a"));
        assert_eq!(t.acquire(&"c"), (12, true));
        t.end_update();
        assert_eq!(t.get(10), None);
        // The range is spent: the lowest free number.
        assert_eq!(t.acquire(&"d"), (10, true));
    }

    #[test]
    fn a_prefix_belongs_to_the_blocks_that_contain_it_and_not_their_excepts() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let wide = Block {
            net: net("10.0.0.0/8"),
            except: vec![net("10.1.0.0/16")],
        };
        let narrow = Block {
            net: net("10.0.0.0/16"),
            except: vec![],
        };
        let r = regions([&wide, &narrow].into_iter());
        assert_eq!(r[&net("10.0.0.0/8")], vec![wide.clone()]);
        assert_eq!(r[&net("10.1.0.0/16")], vec![]);
        assert_eq!(r[&net("10.0.0.0/16")], vec![wide, narrow]);
    }
}
