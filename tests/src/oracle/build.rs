//! Small builders for clusters in tests: `mk_ns`, `mk_pod`, `mk_policy` and their parts.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus},
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
            NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

/// A rule: peers (`from` / `to`) and ports, `None` meaning the field is absent.
pub type Rule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn meta(ns: Option<&str>, name: &str, l: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: (!l.is_empty()).then(|| labels(l)),
        ..Default::default()
    }
}

pub fn mk_ns(name: &str, l: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(None, name, l),
        ..Default::default()
    }
}

/// A running pod on `node-a` with one container carrying `ports` as (name, protocol, number).
pub fn mk_pod(
    ns: &str,
    name: &str,
    l: &[(&str, &str)],
    ips: &[&str],
    ports: &[(&str, &str, i32)],
) -> Pod {
    Pod {
        metadata: meta(Some(ns), name, l),
        spec: Some(PodSpec {
            node_name: Some("node-a".into()),
            containers: vec![Container {
                name: "main".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, port)| ContainerPort {
                            name: Some(n.to_string()),
                            protocol: Some(p.to_string()),
                            container_port: *port,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().map(|ip| ip.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            ..Default::default()
        }),
    }
}

pub fn on_node(mut pod: Pod, node: &str) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.into());
    }
    pod
}

pub fn mk_policy(
    ns: &str,
    name: &str,
    pod_selector: LabelSelector,
    types: Option<&[&str]>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            ingress: ingress.map(|rules| {
                rules
                    .into_iter()
                    .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                    .collect()
            }),
            egress: egress.map(|rules| {
                rules
                    .into_iter()
                    .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                    .collect()
            }),
        }),
    }
}

pub fn sel(l: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: (!l.is_empty()).then(|| labels(l)),
        match_expressions: None,
    }
}

pub fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

pub fn sel_expr(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(exprs),
    }
}

pub fn peer_pods(
    namespaces: Option<LabelSelector>,
    pods: Option<LabelSelector>,
) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: namespaces,
        pod_selector: pods,
        ip_block: None,
    }
}

pub fn peer_block(cidr: &str, except: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.into(),
            except: (!except.is_empty()).then(|| except.iter().map(|e| e.to_string()).collect()),
        }),
        ..Default::default()
    }
}

pub fn port(protocol: Option<&str>, port: Option<i32>, end_port: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: protocol.map(Into::into),
        port: port.map(IntOrString::Int),
        end_port,
    }
}

pub fn named(protocol: Option<&str>, name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: protocol.map(Into::into),
        port: Some(IntOrString::String(name.into())),
        end_port: None,
    }
}
