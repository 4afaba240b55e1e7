//! Identity allocation: pod address classes, CIDR regions, and the indexes peers resolve through.
//!
//! Numbers are stable while their class exists and are never reused in the update that freed them
//! (allocation is monotonic until the range is exhausted), so an identity never changes meaning
//! while entries for its old meaning may still be in the maps.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use zt_common::identity::{FIRST_CIDR, FIRST_POD, WORLD};

use super::{
    Warning,
    policy::{Block, Peer, Policy, Port},
    ports::protocol_number,
};
use crate::index::{Index, Labels, NAMESPACE_NAME_LABEL};

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

pub struct Pod {
    pub node_name: Option<String>,
    pub addresses: Vec<(IpAddr, u32)>,
}

/// The identities of one update and the indexes to resolve peers with.
#[derive(Default)]
pub struct World {
    /// Trie prefixes from ipBlocks (pod addresses not included).
    pub prefixes: BTreeMap<IpNet, u32>,
    pub addresses: Vec<(IpAddr, u32)>,
    pub pods: Vec<Pod>,
    pub classes: HashMap<u32, PodClass>,
    pub classes_by_namespace: HashMap<String, Vec<u32>>,
    pub namespace_labels: BTreeMap<String, Labels>,
    /// Every identity (pod or CIDR) inside each block.
    pub block_members: HashMap<Block, Vec<u32>>,
    pub named: HashMap<(String, u8), Vec<(u32, u16)>>,
}

impl World {
    /// Pod identities that have a port `name` for `protocol`, with its number.
    pub fn named_port_holders(
        &self,
        name: &str,
        protocol: u8,
    ) -> impl Iterator<Item = (u32, u16)> + '_ {
        self.named
            .get(&(name.to_string(), protocol))
            .into_iter()
            .flatten()
            .copied()
    }
}

#[derive(Default)]
pub struct Classes {
    pods: HashMap<PodClass, u32>,
    cidrs: HashMap<Vec<Block>, u32>,
    next_pod: Option<u32>,
    next_cidr: Option<u32>,
}

/// Every distinct valid ipBlock of the policies, sorted.
pub fn blocks<'a>(policies: impl Iterator<Item = &'a Policy>) -> Vec<Block> {
    let mut set = BTreeSet::new();
    for p in policies {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in rule.peers.iter().flatten() {
                if let Peer::Block(b) = peer {
                    set.insert(b.clone());
                }
            }
        }
    }
    set.into_iter().collect()
}

/// Every port name the policies refer to.
pub fn port_names<'a>(policies: impl Iterator<Item = &'a Policy>) -> HashSet<String> {
    let mut set = HashSet::new();
    for p in policies {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for port in rule.ports.iter().flatten() {
                if let Port::Named(_, n) = port {
                    set.insert(n.clone());
                }
            }
        }
    }
    set
}

impl Classes {
    pub fn build(
        &mut self,
        index: &Index,
        blocks: &[Block],
        port_names: &HashSet<String>,
        warnings: &mut Vec<Warning>,
    ) -> World {
        let mut world = World::default();
        for (name, ns) in &index.namespaces {
            world
                .namespace_labels
                .insert(name.clone(), ns.labels.clone());
        }
        let mut used_pods: HashMap<PodClass, u32> = HashMap::new();
        for ((ns, name), info) in &index.pods {
            if info.host_network {
                continue;
            }
            let object = || format!("pod {ns}/{name}");
            for bad in &info.bad_ips {
                warnings.push(Warning {
                    object: object(),
                    message: format!("invalid pod IP {bad:?} skipped"),
                });
            }
            world
                .namespace_labels
                .entry(ns.clone())
                .or_insert_with(|| Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())]));
            let mut ports = Vec::new();
            for p in info
                .named_ports
                .iter()
                .filter(|p| port_names.contains(&p.name))
            {
                let protocol = protocol_number(&p.protocol);
                let number = u16::try_from(p.port).ok().filter(|n| *n != 0);
                match (protocol, number) {
                    (Some(protocol), Some(number)) => {
                        ports.push((p.name.clone(), protocol, number))
                    }
                    _ => warnings.push(Warning {
                        object: object(),
                        message: format!(
                            "container port {:?} ({} {}) invalid, skipped",
                            p.name, p.protocol, p.port
                        ),
                    }),
                }
            }
            let mut pod = Pod {
                node_name: info.node_name.clone(),
                addresses: Vec::new(),
            };
            for ip in &info.ips {
                let class = PodClass {
                    namespace: ns.clone(),
                    labels: info.labels.clone(),
                    ports: ports.clone(),
                    blocks: blocks.iter().filter(|b| b.contains(ip)).cloned().collect(),
                };
                let id = match used_pods.get(&class) {
                    Some(id) => *id,
                    None => {
                        let id = match self.pods.get(&class) {
                            Some(id) => *id,
                            None => alloc(
                                &mut self.next_pod,
                                FIRST_POD,
                                FIRST_CIDR,
                                [&self.pods, &used_pods],
                            ),
                        };
                        used_pods.insert(class.clone(), id);
                        world
                            .classes_by_namespace
                            .entry(ns.clone())
                            .or_default()
                            .push(id);
                        for (n, p, number) in &class.ports {
                            world
                                .named
                                .entry((n.clone(), *p))
                                .or_default()
                                .push((id, *number));
                        }
                        for b in &class.blocks {
                            world.block_members.entry(b.clone()).or_default().push(id);
                        }
                        world.classes.insert(id, class);
                        id
                    }
                };
                pod.addresses.push((*ip, id));
                world.addresses.push((*ip, id));
            }
            world.pods.push(pod);
        }
        self.pods = used_pods;

        let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
        for b in blocks {
            prefixes.insert(b.net);
            prefixes.extend(b.except.iter().copied());
        }
        let mut used_cidrs: HashMap<Vec<Block>, u32> = HashMap::new();
        for prefix in prefixes {
            // The blocks containing the addresses this prefix is the longest match for: longer
            // prefixes inside it are their own regions, so containment of the prefix decides.
            let set: Vec<Block> = blocks
                .iter()
                .filter(|b| {
                    b.net.contains(&prefix) && !b.except.iter().any(|e| e.contains(&prefix))
                })
                .cloned()
                .collect();
            if set.is_empty() {
                world.prefixes.insert(prefix, WORLD);
                continue;
            }
            let id = match used_cidrs.get(&set) {
                Some(id) => *id,
                None => {
                    let id = match self.cidrs.get(&set) {
                        Some(id) => *id,
                        None => alloc(
                            &mut self.next_cidr,
                            FIRST_CIDR,
                            u32::MAX,
                            [&self.cidrs, &used_cidrs],
                        ),
                    };
                    for b in &set {
                        world.block_members.entry(b.clone()).or_default().push(id);
                    }
                    used_cidrs.insert(set, id);
                    id
                }
            };
            world.prefixes.insert(prefix, id);
        }
        self.cidrs = used_cidrs;
        for members in world.block_members.values_mut() {
            members.sort_unstable();
        }
        world
    }
}

/// The next number in `first..limit`; once the range is spent, the lowest one not in use.
/// The range holds 2^24 pod identities, more than distinct addresses a cluster can have, so
/// the search always finds one; should it not, the last number is shared (never a panic).
fn alloc<K>(next: &mut Option<u32>, first: u32, limit: u32, in_use: [&HashMap<K, u32>; 2]) -> u32 {
    let n = next.unwrap_or(first);
    if n < limit {
        *next = Some(n + 1);
        return n;
    }
    let used: HashSet<u32> = in_use.iter().flat_map(|m| m.values().copied()).collect();
    (first..limit)
        .find(|id| !used.contains(id))
        .unwrap_or(limit - 1)
}
