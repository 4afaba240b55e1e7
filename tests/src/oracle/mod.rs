//! The oracle: a deliberately simple NetworkPolicy evaluator written straight from the
//! Kubernetes API reference, sharing no code with the compiler. It answers one question —
//! may a new connection go from `src` to `dst` on this port and protocol — by walking the raw
//! k8s-openapi objects every time.
//!
//! Where the spec leaves room or input is invalid, it follows the choices documented in
//! README.md, section Semantics: an invalid peer or port matches nothing, a policy with an invalid
//! podSelector selects its whole namespace and allows nothing, host-network and finished pods are
//! not pods for policy, a named port matches only a destination pod that has it.

pub mod arbitrary;
pub mod build;
pub mod compiled;

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

/// A rule's peers (`from` / `to`) and ports, as written.
type RawRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

/// A new connection from `src` to `dst` to `port` over `protocol` (`"TCP"`, `"UDP"`, `"SCTP"`,
/// or anything else for a protocol without ports).
pub fn allowed(cluster: &Cluster, src: IpAddr, dst: IpAddr, port: u16, protocol: &str) -> bool {
    let src_pod = pod_with_ip(cluster, src);
    let dst_pod = pod_with_ip(cluster, dst);
    let egress_ok = match src_pod {
        None => true,
        Some(pod) => direction_allows(
            cluster, pod, "Egress", src_pod, dst, dst_pod, port, protocol,
        ),
    };
    let ingress_ok = match dst_pod {
        None => true,
        Some(pod) => direction_allows(
            cluster, pod, "Ingress", src_pod, src, dst_pod, port, protocol,
        ),
    };
    egress_ok && ingress_ok
}

/// Every address that belongs to a pod for policy purposes.
pub fn pod_addresses(cluster: &Cluster) -> Vec<IpAddr> {
    cluster
        .pods
        .iter()
        .filter(|p| is_policy_pod(p))
        .flat_map(pod_ips)
        .collect()
}

fn is_policy_pod(pod: &Pod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    !host_network && phase != "Succeeded" && phase != "Failed"
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return vec![];
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.clone())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.clone());
    }
    ips.iter().filter_map(|s| s.parse().ok()).collect()
}

fn pod_with_ip(cluster: &Cluster, ip: IpAddr) -> Option<&Pod> {
    cluster
        .pods
        .iter()
        .filter(|p| is_policy_pod(p))
        .find(|p| pod_ips(p).contains(&ip))
}

fn namespace_of(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

fn namespace_labels(cluster: &Cluster, name: &str) -> BTreeMap<String, String> {
    let mut labels = cluster
        .namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels
        .entry("kubernetes.io/metadata.name".to_string())
        .or_insert_with(|| name.to_string());
    labels
}

/// Whether `pod` may send (Egress) or receive (Ingress) this connection; `peer_ip` is the other
/// end, `dst_pod` the destination pod (for named ports).
#[allow(clippy::too_many_arguments)]
fn direction_allows(
    cluster: &Cluster,
    pod: &Pod,
    direction: &str,
    src_pod: Option<&Pod>,
    peer_ip: IpAddr,
    dst_pod: Option<&Pod>,
    port: u16,
    protocol: &str,
) -> bool {
    let peer_pod = if direction == "Ingress" {
        src_pod
    } else {
        dst_pod
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut isolated = false;
    for policy in &cluster.policies {
        if policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
            != namespace_of(pod)
        {
            continue;
        }
        let spec = policy.spec.clone().unwrap_or_default();
        let selector_valid =
            selector_matches(&spec.pod_selector.clone().unwrap_or_default(), &labels);
        if selector_valid == Some(false) {
            continue;
        }
        let types = match spec.policy_types.clone() {
            Some(t) if !t.is_empty() => t,
            _ => {
                let mut t = vec!["Ingress".to_string()];
                if !spec.egress.clone().unwrap_or_default().is_empty() {
                    t.push("Egress".to_string());
                }
                t
            }
        };
        if !types.iter().any(|t| t == direction) {
            continue;
        }
        isolated = true;
        if selector_valid.is_none() {
            continue; // invalid podSelector: isolates, allows nothing
        }
        let rules: Vec<RawRule> = if direction == "Ingress" {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect()
        };
        let policy_ns = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        for (peers, ports) in rules {
            let peer_ok = match peers {
                None => true,
                Some(peers) if peers.is_empty() => true,
                Some(peers) => peers
                    .iter()
                    .any(|p| peer_matches(cluster, &policy_ns, p, peer_ip, peer_pod)),
            };
            let port_ok = match ports {
                None => true,
                Some(ports) if ports.is_empty() => true,
                Some(ports) => ports
                    .iter()
                    .any(|p| port_matches(p, port, protocol, dst_pod)),
            };
            if peer_ok && port_ok {
                return true;
            }
        }
    }
    !isolated
}

fn peer_matches(
    cluster: &Cluster,
    policy_ns: &str,
    peer: &NetworkPolicyPeer,
    ip: IpAddr,
    pod: Option<&Pod>,
) -> bool {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return false;
        }
        return ip_block_contains(block, ip);
    }
    let Some(pod) = pod else { return false };
    let ns_ok = match &peer.namespace_selector {
        None => {
            if peer.pod_selector.is_none() {
                return false;
            }
            namespace_of(pod) == policy_ns
        }
        Some(sel) => {
            selector_matches(sel, &namespace_labels(cluster, &namespace_of(pod))) == Some(true)
        }
    };
    let pod_ok = match &peer.pod_selector {
        None => true,
        Some(sel) => {
            selector_matches(sel, &pod.metadata.labels.clone().unwrap_or_default()) == Some(true)
        }
    };
    // An invalid selector anywhere in the peer makes the whole peer match nothing.
    let valid = peer
        .namespace_selector
        .as_ref()
        .is_none_or(|s| selector_matches(s, &BTreeMap::new()).is_some())
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| selector_matches(s, &BTreeMap::new()).is_some());
    valid && ns_ok && pod_ok
}

/// `Some(matches)`, or `None` for an invalid selector.
fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Option<bool> {
    let mut result = true;
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            result = false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" if !values.is_empty() => value.is_some_and(|v| values.contains(v)),
            "NotIn" if !values.is_empty() => value.is_none_or(|v| !values.contains(v)),
            "Exists" if values.is_empty() => value.is_some(),
            "DoesNotExist" if values.is_empty() => value.is_none(),
            _ => return None,
        };
        if !ok {
            result = false;
        }
    }
    Some(result)
}

/// Parses `a.b.c.d/n` or `v6/n` by hand, the bits compared one by one.
fn cidr_contains(cidr: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let (a, b, width) = match (addr, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        (IpAddr::V4(_), _) if len <= 32 => return Some(false),
        (IpAddr::V6(_), _) if len <= 128 => return Some(false),
        _ => return None,
    };
    if len > width {
        return None;
    }
    Some((0..len).all(|bit| (a >> (width - 1 - bit)) & 1 == (b >> (width - 1 - bit)) & 1))
}

fn ip_block_contains(block: &IPBlock, ip: IpAddr) -> bool {
    let Some(inside) = cidr_contains(&block.cidr, ip) else {
        return false;
    };
    let mut excluded = false;
    for e in block.except.iter().flatten() {
        // An except that is invalid or not inside the cidr makes the whole block invalid.
        if !except_is_inside(&block.cidr, e) {
            return false;
        }
        if cidr_contains(e, ip) == Some(true) {
            excluded = true;
        }
    }
    inside && !excluded
}

fn except_is_inside(cidr: &str, except: &str) -> bool {
    let parts = |s: &str| -> Option<(IpAddr, u32)> {
        let (a, l) = s.split_once('/')?;
        Some((a.parse().ok()?, l.parse().ok()?))
    };
    let (Some((_, cidr_len)), Some((except_addr, except_len))) = (parts(cidr), parts(except))
    else {
        return false;
    };
    cidr_contains(except, except_addr).is_some()
        && except_len >= cidr_len
        && cidr_contains(cidr, except_addr) == Some(true)
}

fn port_matches(p: &NetworkPolicyPort, port: u16, protocol: &str, dst_pod: Option<&Pod>) -> bool {
    let want = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
    if !matches!(want.as_str(), "TCP" | "UDP" | "SCTP") || want != protocol {
        return false;
    }
    let port = port as i32;
    match (&p.port, p.end_port) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(IntOrString::Int(n)), None) => (1..=65535).contains(n) && *n == port,
        (Some(IntOrString::Int(n)), Some(end)) => {
            (1..=65535).contains(n)
                && (1..=65535).contains(&end)
                && *n <= end
                && *n <= port
                && port <= end
        }
        (Some(IntOrString::String(_)), Some(_)) => false,
        (Some(IntOrString::String(name)), None) => {
            let Some(pod) = dst_pod else { return false };
            let spec = pod.spec.clone().unwrap_or_default();
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| {
                    c.ports.iter().flatten().any(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.clone().unwrap_or_else(|| "TCP".into()) == protocol
                            && cp.container_port == port
                    })
                })
        }
    }
}
