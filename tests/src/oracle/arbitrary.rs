//! Proptest strategies for random clusters mixing every NetworkPolicy feature and some bad
//! input, over a small label and address space so that selectors, blocks and ports collide often.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};
use proptest::{prelude::*, sample::subsequence};

use super::{
    Cluster,
    build::{Rule, expr, mk_ns, mk_pod, mk_policy, named, on_node, peer_block, peer_pods, port},
};

const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];
pub const EXTERNAL: [&str; 6] = [
    "10.0.2.9",
    "10.0.1.200",
    "192.168.1.5",
    "8.8.8.8",
    "fd00::99",
    "fd00:1::1",
];
pub const PORTS: [u16; 6] = [53, 80, 81, 5353, 8080, 8083];
pub const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn label_set(
    keys: &'static [(&'static str, &'static [&'static str])],
) -> impl Strategy<Value = Vec<(String, String)>> {
    let per_key: Vec<_> = keys
        .iter()
        .map(|(k, vs)| {
            proptest::option::of(proptest::sample::select(*vs))
                .prop_map(move |v| v.map(|v| (k.to_string(), v.to_string())))
        })
        .collect();
    per_key.prop_map(|v| v.into_iter().flatten().collect())
}

const POD_LABELS: &[(&str, &[&str])] = &[("app", &["web", "db"]), ("tier", &["x", "y"])];
const NS_LABELS: &[(&str, &[&str])] = &[
    ("team", &["a", "b"]),
    ("kubernetes.io/metadata.name", &["ns-a", "ns-b"]),
];

fn requirement(
    keys: &'static [(&'static str, &'static [&'static str])],
) -> impl Strategy<Value = LabelSelectorRequirement> {
    let keys: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    let values: Vec<&str> = POD_LABELS
        .iter()
        .chain(NS_LABELS)
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    (
        proptest::sample::select(keys),
        prop_oneof![
            10 => Just("In"), 10 => Just("NotIn"), 6 => Just("Exists"), 6 => Just("DoesNotExist"), 1 => Just("Bogus")
        ],
        subsequence(values, 0..=2),
    )
        .prop_map(|(k, op, vs)| {
            // Values only where the operator takes them, except now and then (bad input).
            let vs = match op {
                "Exists" | "DoesNotExist" if vs.len() < 2 => vec![],
                "In" | "NotIn" if vs.is_empty() => vec!["web"],
                _ => vs,
            };
            expr(k, op, &vs)
        })
}

fn selector(
    keys: &'static [(&'static str, &'static [&'static str])],
) -> impl Strategy<Value = LabelSelector> {
    (
        label_set(keys),
        proptest::collection::vec(requirement(keys), 0..=2),
    )
        .prop_map(|(labels, exprs)| LabelSelector {
            match_labels: (!labels.is_empty()).then(|| labels.into_iter().collect()),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        })
}

const CIDRS: &[&str] = &[
    "10.0.0.0/16",
    "10.0.1.0/24",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "fd00::/64",
    "fd00::/120",
    "10.0.0.3/32",
    "192.168.0.0/16",
    "10.0.0.0/33",
];
const EXCEPTS: &[&str] = &[
    "10.0.1.0/25",
    "10.0.0.2/32",
    "fd00::2/128",
    "10.0.1.128/26",
    "192.168.1.0/24",
    "fd00::/126",
];

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    let block = (
        proptest::sample::select(CIDRS),
        subsequence(EXCEPTS, 0..=2),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(cidr, except, keep_bad)| {
            let net: Option<IpNet> = cidr.parse().ok();
            let except: Vec<&str> = except
                .into_iter()
                .filter(|e| {
                    keep_bad || net.is_some_and(|n| n.contains(&e.parse::<IpNet>().unwrap()))
                })
                .collect();
            peer_block(cidr, &except)
        });
    prop_oneof![
        4 => selector(POD_LABELS).prop_map(|p| peer_pods(None, Some(p))),
        3 => selector(NS_LABELS).prop_map(|n| peer_pods(Some(n), None)),
        3 => (selector(NS_LABELS), selector(POD_LABELS)).prop_map(|(n, p)| peer_pods(Some(n), Some(p))),
        4 => block,
        1 => Just(peer_pods(None, None)),
    ]
}

fn policy_port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = prop_oneof![
        4 => Just(None), 3 => Just(Some("TCP")), 3 => Just(Some("UDP")), 2 => Just(Some("SCTP")), 1 => Just(Some("ICMP"))
    ];
    let number = proptest::sample::select(vec![53, 80, 8080, 5353, 0]);
    let end =
        prop_oneof![6 => Just(None), 2 => Just(Some(3)), 1 => Just(Some(100)), 1 => Just(Some(-1))];
    prop_oneof![
        5 => (protocol.clone(), number, end).prop_map(|(p, n, e)| port(p, Some(n), e.map(|d| n + d))),
        3 => (protocol.clone(), proptest::sample::select(vec!["http", "dns", "web", "missing"])).prop_map(|(p, n)| named(p, n)),
        1 => protocol.prop_map(|p| port(p, None, None)),
    ]
}

fn list<T: std::fmt::Debug + Clone>(
    item: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Vec<T>>> {
    prop_oneof![3 => Just(None), 1 => Just(Some(vec![])), 6 => proptest::collection::vec(item, 1..=2).prop_map(Some)]
}

fn rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop_oneof![
        1 => Just(None),
        4 => proptest::collection::vec((list(peer()), list(policy_port())), 0..=2).prop_map(Some),
    ]
}

pub fn cluster() -> impl Strategy<Value = Cluster> {
    let namespaces = (
        proptest::collection::vec(label_set(&[("team", &["a", "b"])]), 3),
        proptest::bool::weighted(0.15),
    );
    let pod = (
        0..NAMESPACES.len(),
        label_set(POD_LABELS),
        proptest::bool::ANY,
        proptest::option::of(proptest::sample::select(vec![80, 8080])),
        proptest::option::of(proptest::sample::select(vec![
            ("UDP", 53),
            ("UDP", 5353),
            ("TCP", 53),
        ])),
        proptest::option::of(proptest::sample::select(vec![("SCTP", 80), ("TCP", 81)])),
        proptest::bool::ANY,
    );
    let policy = (
        0..NAMESPACES.len(),
        selector(POD_LABELS),
        prop_oneof![
            3 => Just(None), 1 => Just(Some(vec![])), 2 => Just(Some(vec!["Ingress"])), 2 => Just(Some(vec!["Egress"])),
            2 => Just(Some(vec!["Ingress", "Egress"])), 1 => Just(Some(vec!["Sideways"])),
        ],
        rules(),
        rules(),
    );
    (
        namespaces,
        proptest::collection::vec(pod, 1..=6),
        proptest::collection::vec(policy, 0..=4),
    )
        .prop_map(|((ns_labels, drop_last_ns), pods, policies)| {
            let mut cluster = Cluster::default();
            for (i, (name, l)) in NAMESPACES.iter().zip(&ns_labels).enumerate() {
                if drop_last_ns && i == NAMESPACES.len() - 1 {
                    continue;
                }
                let l: Vec<(&str, &str)> =
                    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                cluster.namespaces.push(mk_ns(name, &l));
            }
            for (i, (ns, l, dual, http, dns, web, node_b)) in pods.into_iter().enumerate() {
                let v4 = format!("10.0.{}.{}", i % 2, i + 1);
                let v6 = format!("fd00::{}", i + 1);
                let ips: Vec<&str> = if dual { vec![&v4, &v6] } else { vec![&v4] };
                let mut ports = vec![];
                ports.extend(http.map(|n| ("http", "TCP", n)));
                ports.extend(dns.map(|(p, n)| ("dns", p, n)));
                ports.extend(web.map(|(p, n)| ("web", p, n)));
                let l: Vec<(&str, &str)> =
                    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let pod = mk_pod(NAMESPACES[ns], &format!("pod-{i}"), &l, &ips, &ports);
                cluster
                    .pods
                    .push(if node_b { on_node(pod, "node-b") } else { pod });
            }
            for (i, (ns, sel, types, ingress, egress)) in policies.into_iter().enumerate() {
                let types: Option<Vec<&str>> = types;
                cluster.policies.push(mk_policy(
                    NAMESPACES[ns],
                    &format!("policy-{i}"),
                    sel,
                    types.as_deref(),
                    ingress,
                    egress,
                ));
            }
            cluster
        })
}

/// Every probe of a cluster: ordered pairs of distinct same-family addresses (pods and
/// outsiders) × ports × protocols, plus ICMP.
pub fn probes(cluster: &Cluster) -> Vec<(IpAddr, IpAddr, u16, &'static str)> {
    let mut addrs: Vec<IpAddr> = super::pod_addresses(cluster);
    addrs.extend(
        EXTERNAL
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("valid literal")),
    );
    let mut out = vec![];
    for src in &addrs {
        for dst in addrs
            .iter()
            .filter(|d| *d != src && d.is_ipv4() == src.is_ipv4())
        {
            for port in PORTS {
                for protocol in PROTOCOLS {
                    out.push((*src, *dst, port, protocol));
                }
            }
            out.push((*src, *dst, 0, "ICMP"));
        }
    }
    out
}

/// Proptest's configuration: `PROPTEST_CASES` cases when set, else `default`.
pub fn cases(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config::with_cases(cases)
}
