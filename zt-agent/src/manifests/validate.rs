//! The API server's validation (`pkg/apis/{core,networking}/validation`) for every field zt reads:
//! what `kubectl apply` would refuse, a folder of manifests refuses too, so that a typo is an
//! error and never a different policy.
//!
//! Covered: object names and namespaces, labels and annotation keys; Pods' containers, their
//! ports (number, protocol, name, names unique in the pod), `status.phase` and the pod
//! addresses; NetworkPolicies' `policyTypes`, peers (at least one selector or an ipBlock, an
//! ipBlock alone), ipBlocks (CIDRs, `except` strictly inside `cidr`), ports (protocol, number or
//! name, `endPort`) and label selectors (keys, values, operators and their values). Fields zt
//! does not read (`image`, resources, probes…) are checked only for their shape (decoding and
//! unknown fields, [`super::strict`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Container, Namespace, Pod},
        networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{strict::FieldPath, syntax};

/// What is wrong, and where.
pub type Problems = Vec<(FieldPath, String)>;

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn root() -> FieldPath {
    FieldPath::default()
}

pub fn namespace(ns: &Namespace) -> Problems {
    let mut out = Problems::new();
    meta(&ns.metadata, syntax::dns_label, false, &mut out);
    out
}

pub fn pod(pod: &Pod) -> Problems {
    let mut out = Problems::new();
    meta(&pod.metadata, syntax::dns_subdomain, true, &mut out);
    let at = root().key("spec");
    match &pod.spec {
        None => out.push((at, "required".into())),
        Some(spec) => {
            if spec.containers.is_empty() {
                out.push((
                    at.key("containers"),
                    "required: at least one container".into(),
                ));
            }
            let mut port_names = BTreeSet::new();
            let mut container_names = BTreeSet::new();
            let lists = [
                ("containers", Some(&spec.containers)),
                ("initContainers", spec.init_containers.as_ref()),
            ];
            for (list, containers) in lists {
                for (i, c) in containers.into_iter().flatten().enumerate() {
                    let at = at.key(list).index(i);
                    if let Some(why) = syntax::dns_label(&c.name) {
                        out.push((at.key("name"), why));
                    } else if !container_names.insert(c.name.clone()) {
                        out.push((
                            at.key("name"),
                            format!("duplicate container name {:?}", c.name),
                        ));
                    }
                    container_ports(c, &at, &mut port_names, &mut out);
                }
            }
        }
    }
    if let Some(status) = &pod.status {
        let at = root().key("status");
        if let Some(phase) = &status.phase {
            const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];
            if !PHASES.contains(&phase.as_str()) {
                out.push((at.key("phase"), not_supported(phase, &PHASES)));
            }
        }
        let mut first = None;
        if let Some(ip) = &status.pod_ip {
            first = ip_address(ip, &at.key("podIP"), &mut out);
        }
        let mut families = BTreeSet::new();
        for (i, pod_ip) in status.pod_ips.iter().flatten().enumerate() {
            let at = at.key("podIPs").index(i).key("ip");
            let Some(ip) = ip_address(&pod_ip.ip, &at, &mut out) else {
                continue;
            };
            if i == 0 && first.is_some_and(|f| f != ip) {
                out.push((at.clone(), "must equal status.podIP".into()));
            }
            if !families.insert(ip.is_ipv4()) {
                out.push((at, "at most one address per IP family".into()));
            }
        }
    }
    out
}

fn container_ports(
    c: &Container,
    at: &FieldPath,
    names: &mut BTreeSet<String>,
    out: &mut Problems,
) {
    for (j, port) in c.ports.iter().flatten().enumerate() {
        let at = at.key("ports").index(j);
        if !(1..=65535).contains(&port.container_port) {
            out.push((
                at.key("containerPort"),
                format!("{} must be between 1 and 65535", port.container_port),
            ));
        }
        protocol(port.protocol.as_deref(), &at, out);
        if let Some(name) = &port.name {
            if let Some(why) = syntax::port_name(name) {
                out.push((at.key("name"), why));
            } else if !names.insert(name.clone()) {
                out.push((
                    at.key("name"),
                    format!("duplicate port name {name:?} in the pod"),
                ));
            }
        }
    }
}

pub fn network_policy(p: &NetworkPolicy) -> Problems {
    let mut out = Problems::new();
    meta(&p.metadata, syntax::dns_subdomain, true, &mut out);
    let Some(spec) = &p.spec else { return out };
    let at = root().key("spec");
    if let Some(selector) = &spec.pod_selector {
        label_selector(selector, &at.key("podSelector"), &mut out);
    }
    if let Some(types) = &spec.policy_types {
        const TYPES: [&str; 2] = ["Ingress", "Egress"];
        if types.len() > TYPES.len() {
            out.push((at.key("policyTypes"), "at most 2 values".into()));
        }
        for (i, t) in types.iter().enumerate() {
            if !TYPES.contains(&t.as_str()) {
                out.push((at.key("policyTypes").index(i), not_supported(t, &TYPES)));
            }
        }
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let at = at.key("ingress").index(i);
        rule_parts(
            rule.from.as_deref(),
            "from",
            rule.ports.as_deref(),
            &at,
            &mut out,
        );
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let at = at.key("egress").index(i);
        rule_parts(
            rule.to.as_deref(),
            "to",
            rule.ports.as_deref(),
            &at,
            &mut out,
        );
    }
    out
}

fn rule_parts(
    peers: Option<&[NetworkPolicyPeer]>,
    peers_key: &str,
    ports: Option<&[NetworkPolicyPort]>,
    at: &FieldPath,
    out: &mut Problems,
) {
    for (i, port) in ports.into_iter().flatten().enumerate() {
        policy_port(port, &at.key("ports").index(i), out);
    }
    for (i, peer) in peers.into_iter().flatten().enumerate() {
        policy_peer(peer, &at.key(peers_key).index(i), out);
    }
}

fn policy_port(port: &NetworkPolicyPort, at: &FieldPath, out: &mut Problems) {
    protocol(port.protocol.as_deref(), at, out);
    let number = match &port.port {
        Some(IntOrString::Int(n)) => {
            if !(1..=65535).contains(n) {
                out.push((at.key("port"), format!("{n} must be between 1 and 65535")));
            }
            Some(*n)
        }
        Some(IntOrString::String(name)) => {
            if let Some(why) = syntax::port_name(name) {
                out.push((at.key("port"), why));
            }
            None
        }
        None => None,
    };
    if let Some(end) = port.end_port {
        let at = at.key("endPort");
        match (&port.port, number) {
            (None, _) => out.push((at, "may not be given without port".into())),
            (Some(_), None) => out.push((at, "may not be given with a named port".into())),
            (Some(_), Some(start)) if end < start => {
                out.push((at, format!("{end} must not be below port {start}")));
            }
            (Some(_), Some(_)) if end > 65535 => {
                out.push((at, format!("{end} must be between 1 and 65535")));
            }
            _ => {}
        }
    }
}

fn policy_peer(peer: &NetworkPolicyPeer, at: &FieldPath, out: &mut Problems) {
    let selectors = [
        ("podSelector", peer.pod_selector.as_ref()),
        ("namespaceSelector", peer.namespace_selector.as_ref()),
    ];
    let mut given = 0;
    for (key, selector) in selectors {
        if let Some(selector) = selector {
            given += 1;
            label_selector(selector, &at.key(key), out);
        }
    }
    match &peer.ip_block {
        Some(block) if given > 0 => {
            out.push((
                at.key("ipBlock"),
                "may not be combined with podSelector or namespaceSelector".into(),
            ));
            ip_block(block, &at.key("ipBlock"), out);
        }
        Some(block) => ip_block(block, &at.key("ipBlock"), out),
        None if given == 0 => out.push((
            at.clone(),
            "must specify a peer (podSelector, namespaceSelector or ipBlock)".into(),
        )),
        None => {}
    }
}

fn ip_block(block: &IPBlock, at: &FieldPath, out: &mut Problems) {
    let Some(net) = cidr(&block.cidr, &at.key("cidr"), out) else {
        return;
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let at = at.key("except").index(i);
        let Some(hole) = cidr(except, &at, out) else {
            continue;
        };
        if !(net.contains(&hole.network()) && hole.prefix_len() > net.prefix_len()) {
            out.push((
                at,
                format!("{except:?} must be a strict subset of {:?}", block.cidr),
            ));
        }
    }
}

/// A CIDR as the API server parses it (host bits allowed).
fn cidr(text: &str, at: &FieldPath, out: &mut Problems) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) => Some(net.trunc()),
        Err(_) => {
            out.push((
                at.clone(),
                format!("{text:?} is not a CIDR (like 10.0.0.0/8)"),
            ));
            None
        }
    }
}

fn ip_address(text: &str, at: &FieldPath, out: &mut Problems) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            out.push((at.clone(), format!("{text:?} is not an IP address")));
            None
        }
    }
}

fn label_selector(selector: &LabelSelector, at: &FieldPath, out: &mut Problems) {
    labels(selector.match_labels.as_ref(), &at.key("matchLabels"), out);
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = at.key("matchExpressions").index(i);
        if let Some(why) = syntax::qualified_name(&e.key) {
            out.push((at.key("key"), why));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push((
                at.key("values"),
                format!("must be non-empty when operator is {}", e.operator),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push((
                at.key("values"),
                format!("must be empty when operator is {}", e.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => out.push((
                at.key("operator"),
                not_supported(other, &["In", "NotIn", "Exists", "DoesNotExist"]),
            )),
        }
        for (j, v) in values.iter().enumerate() {
            if let Some(why) = syntax::label_value(v) {
                out.push((at.key("values").index(j), why));
            }
        }
    }
}

fn labels(labels: Option<&BTreeMap<String, String>>, at: &FieldPath, out: &mut Problems) {
    for (k, v) in labels.into_iter().flatten() {
        if let Some(why) = syntax::qualified_name(k) {
            out.push((at.key(k), why));
        } else if let Some(why) = syntax::label_value(v) {
            out.push((at.key(k), why));
        }
    }
}

fn meta(
    meta: &ObjectMeta,
    name_format: fn(&str) -> Option<String>,
    namespaced: bool,
    out: &mut Problems,
) {
    let at = root().key("metadata");
    match meta.name.as_deref() {
        None | Some("") => out.push((at.key("name"), "required".into())),
        Some(name) => {
            if let Some(why) = name_format(name) {
                out.push((at.key("name"), why));
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|_| namespaced)
        && let Some(why) = syntax::dns_label(ns)
    {
        out.push((at.key("namespace"), why));
    }
    labels(meta.labels.as_ref(), &at.key("labels"), out);
    for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
        if let Some(why) = syntax::qualified_name(k) {
            out.push((at.key("annotations").key(k), why));
        }
    }
}

/// A `protocol` field, if given: TCP, UDP or SCTP.
fn protocol(protocol: Option<&str>, at: &FieldPath, out: &mut Problems) {
    if let Some(p) = protocol
        && !PROTOCOLS.contains(&p)
    {
        out.push((at.key("protocol"), not_supported(p, &PROTOCOLS)));
    }
}

fn not_supported(value: &str, supported: &[&str]) -> String {
    format!(
        "unsupported value {value:?} (supported: {})",
        supported.join(", ")
    )
}
