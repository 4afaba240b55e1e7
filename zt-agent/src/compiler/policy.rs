//! NetworkPolicy specs validated into the normalized form the compiler works from.
//!
//! Invalid parts are dropped with a warning, always towards denying: an invalid peer or port is
//! left out of its rule but a rule whose every peer (or port) is invalid matches nothing — it
//! never becomes the "all" an empty list means. A policy whose `podSelector` is invalid still
//! isolates every pod of its namespace, and grants nothing.

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{ports::protocol_number, selector::Selector};

/// An `ipBlock`: the addresses in `net` and in none of `except`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl Block {
    pub fn contains(&self, addr: &std::net::IpAddr) -> bool {
        self.net.contains(addr) && !self.except.iter().any(|e| e.contains(addr))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Namespaces {
    /// The policy's own namespace (a peer with only a `podSelector`).
    Own,
    Matching(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    Block(Block),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// Every port of a protocol.
    Protocol(u8),
    Range(u8, u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(u8, String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol.
    pub ports: Option<Vec<Port>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `None` when the selector is invalid: the policy then isolates its whole namespace.
    pub selector: Option<Selector>,
    /// `Some` when the policy isolates ingress; the rules allowed.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// Normalizes a spec; every problem is reported through `warn`.
pub fn parse(spec: &NetworkPolicySpec, warn: &mut dyn FnMut(String)) -> Policy {
    let selector = match Selector::parse(&spec.pod_selector.clone().unwrap_or_default()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn(format!(
                "podSelector: {e}; isolating every pod of the namespace, allowing nothing"
            ));
            None
        }
    };
    let (mut ingress, mut egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress = true;
            egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => warn(format!("policyTypes: unknown type {other:?} ignored")),
                }
            }
        }
    }
    let ingress = ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    &format!("ingress[{i}]"),
                    r.from.as_deref(),
                    r.ports.as_deref(),
                    warn,
                )
            })
            .collect()
    });
    let egress = egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    &format!("egress[{i}]"),
                    r.to.as_deref(),
                    r.ports.as_deref(),
                    warn,
                )
            })
            .collect()
    });
    Policy {
        selector,
        ingress,
        egress,
    }
}

fn rule(
    at: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    warn: &mut dyn FnMut(String),
) -> Rule {
    let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
        peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                peer(p)
                    .map_err(|e| warn(format!("{at} peer {i}: {e}; skipped")))
                    .ok()
            })
            .collect()
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|ports| {
        ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                port(p)
                    .map_err(|e| warn(format!("{at} port {i}: {e}; skipped")))
                    .ok()
            })
            .collect()
    });
    Rule { peers, ports }
}

fn peer(peer: &NetworkPolicyPeer) -> Result<Peer, String> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(block), None, None) => ip_block(block).map(Peer::Block),
        (Some(_), _, _) => Err("ipBlock cannot be combined with selectors".into()),
        (None, None, None) => Err("no selector and no ipBlock".into()),
        (None, ns, pods) => {
            let namespaces = match ns {
                None => Namespaces::Own,
                Some(s) => Namespaces::Matching(
                    Selector::parse(s).map_err(|e| format!("namespaceSelector: {e}"))?,
                ),
            };
            let pods = Selector::parse(&pods.clone().unwrap_or_default())
                .map_err(|e| format!("podSelector: {e}"))?;
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn ip_block(block: &IPBlock) -> Result<Block, String> {
    let net = parse_net(&block.cidr)?;
    let mut except = Vec::new();
    for e in block.except.iter().flatten() {
        let e = parse_net(e)?;
        if !net.contains(&e) {
            return Err(format!("ipBlock except {e} is not inside {net}"));
        }
        except.push(e);
    }
    except.sort();
    except.dedup();
    Ok(Block { net, except })
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("invalid CIDR {s:?}"))
}

fn port(port: &NetworkPolicyPort) -> Result<Port, String> {
    let name = port.protocol.as_deref().unwrap_or("TCP");
    let protocol = protocol_number(name).ok_or_else(|| format!("unknown protocol {name:?}"))?;
    let number = |n: i32| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("port {n} out of range"))
    };
    match (&port.port, port.end_port) {
        (None, None) => Ok(Port::Protocol(protocol)),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(IntOrString::Int(p)), end) => {
            let lo = number(*p)?;
            let hi = match end {
                None => lo,
                Some(e) => number(e)?,
            };
            if hi < lo {
                return Err(format!("endPort {hi} below port {lo}"));
            }
            Ok(Port::Range(protocol, lo, hi))
        }
        (Some(IntOrString::String(_)), Some(_)) => Err("endPort with a named port".into()),
        (Some(IntOrString::String(n)), None) if n.is_empty() => Err("empty port name".into()),
        (Some(IntOrString::String(n)), None) => Ok(Port::Named(protocol, n.clone())),
    }
}
